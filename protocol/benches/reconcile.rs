//! Set reconciliation at scale: two sets of `BENCH_N` (1,000,000) ids a side differing by
//! d = 0, 1, 100 and 10,000 ids (half only in the initiator's set, half only in the
//! responder's), reconciled in memory by `protocol::reconcile` on one thread.
//!
//! For each d the table gives the round trips, the bytes both ways, the longest message, the
//! time to build both sessions (sorting and sealing two million items) and the time of the
//! exchange itself (both sides' work, one after the other, no network), beside the bytes of
//! sending every id (n × 32) and the target `2 KiB × (d + 1) × log16(n)`, and whether the
//! target is met. Every run checks that `have` and `need` are exactly the planted
//! differences.
//!
//! Items: SplitMix64 ids (seeded, so every run is the same) under timestamps 0..16 (period
//! ordinals, so many items share one). A plain `main` (harness = false); arguments cargo passes
//! are ignored. `BENCH_N` overrides n.
//!
//! Run: `cargo bench -p credit-protocol --bench reconcile`.

#![allow(clippy::print_stdout)]

use std::time::Instant;

use protocol::reconcile::{FRAME_LIMIT, Initiator, Item, ROUNDS_MAX, Responder, Step};

const DIFFERENCES: [usize; 4] = [0, 1, 100, 10_000];
const TIMESTAMPS: u64 = 16;
const SEED: u64 = 0x5eed_2026;

struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn item(&mut self) -> Item {
        let mut id = [0u8; 32];
        for chunk in id.chunks_exact_mut(8) {
            chunk.copy_from_slice(&self.next().to_le_bytes());
        }
        (self.next() % TIMESTAMPS, id)
    }
}

struct Run {
    a_len: usize,
    b_len: usize,
    rounds: u32,
    bytes: u64,
    message_max: usize,
    setup_ms: f64,
    exchange_ms: f64,
}

/// Sets of about `n` items a side: `n - d.div_ceil(2)` shared, `d / 2` only in the initiator's,
/// `d.div_ceil(2)` only in the responder's.
fn run(n: usize, d: usize) -> Run {
    let mut rng = SplitMix64(SEED ^ d as u64);
    let a_only_len = d / 2;
    let b_only_len = d - a_only_len;
    let shared_len = n - b_only_len;
    let mut a: Vec<Item> = Vec::with_capacity(shared_len + a_only_len);
    let mut b: Vec<Item> = Vec::with_capacity(shared_len + b_only_len);
    for _ in 0..shared_len {
        let item = rng.item();
        a.push(item);
        b.push(item);
    }
    let mut a_only: Vec<[u8; 32]> = (0..a_only_len)
        .map(|_| rng.item())
        .map(|(_, id)| id)
        .collect();
    let mut b_only: Vec<[u8; 32]> = Vec::with_capacity(b_only_len);
    for _ in 0..b_only_len {
        let item = rng.item();
        b_only.push(item.1);
        b.push(item);
    }
    // Timestamps of the initiator-only items: drawn again so that they interleave.
    let mut stamps = SplitMix64(SEED.rotate_left(17) ^ d as u64);
    a.extend(a_only.iter().map(|&id| (stamps.next() % TIMESTAMPS, id)));
    a_only.sort_unstable();
    b_only.sort_unstable();
    let (a_len, b_len) = (a.len(), b.len());

    let started = Instant::now();
    let mut initiator = Initiator::new(a);
    let mut responder = Responder::new(b);
    let setup_ms = started.elapsed().as_secs_f64() * 1e3;

    let started = Instant::now();
    let mut message = initiator.start().expect("start");
    let mut message_max = message.len();
    let mut bytes = 0u64;
    loop {
        bytes += message.len() as u64;
        let reply = responder.handle(&message).expect("responder");
        bytes += reply.len() as u64;
        message_max = message_max.max(reply.len());
        match initiator.handle(&reply).expect("initiator") {
            Step::Send(next) => {
                message_max = message_max.max(next.len());
                message = next;
            }
            Step::Done => break,
        }
    }
    let exchange_ms = started.elapsed().as_secs_f64() * 1e3;

    let outcome = initiator.finish();
    assert!(outcome.complete);
    assert_eq!(
        outcome.have, a_only,
        "have is not the initiator-only ids (d = {d})"
    );
    assert_eq!(
        outcome.need, b_only,
        "need is not the responder-only ids (d = {d})"
    );
    assert_eq!(outcome.bytes_sent + outcome.bytes_received, bytes);
    Run {
        a_len,
        b_len,
        rounds: outcome.rounds,
        bytes,
        message_max,
        setup_ms,
        exchange_ms,
    }
}

fn main() {
    let n: usize = std::env::var("BENCH_N")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(1_000_000);
    let log16_n = (n as f64).ln() / 16f64.ln();
    let all_ids_bytes = n as u64 * 32;
    println!(
        "set reconciliation (negentropy v1): n = {n} ids a side, frame limit {FRAME_LIMIT} B, \
         round cap {ROUNDS_MAX}, log16(n) = {log16_n:.2}"
    );
    println!(
        "{:>6} {:>9} {:>9} {:>6} {:>12} {:>8} {:>9} {:>11} {:>14} {:>12} {:>4}",
        "d",
        "|a|",
        "|b|",
        "rounds",
        "bytes",
        "msg max",
        "setup ms",
        "exchange ms",
        "all ids (n×32)",
        "target",
        "met"
    );
    for d in DIFFERENCES {
        let run = run(n, d);
        let target = 2048.0 * (d as f64 + 1.0) * log16_n;
        println!(
            "{:>6} {:>9} {:>9} {:>6} {:>12} {:>8} {:>9.0} {:>11.1} {:>14} {:>12.0} {:>4}",
            d,
            run.a_len,
            run.b_len,
            run.rounds,
            run.bytes,
            run.message_max,
            run.setup_ms,
            run.exchange_ms,
            all_ids_bytes,
            target,
            if (run.bytes as f64) <= target {
                "yes"
            } else {
                "NO"
            }
        );
    }
}
