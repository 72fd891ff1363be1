//! The stable fuzzer's mutations: havoc in the manner of AFL and libFuzzer (bit flips,
//! interesting bytes, inserted and deleted runs, copies within the input and from other
//! inputs), plus two kinds that reach deep into these inputs: bincode's varint markers with
//! boundary values (length and count fields are varints), and per-target dictionary tokens
//! and whole-line edits for the text inputs (CSV, TOML).
//!
//! There is no coverage feedback on stable; what stands in for it is the seed corpus of
//! valid encodings (so mutations start deep inside each format) and the pool: an input a
//! target *accepts* joins the pool and is mutated further.

use sample::Rng;

/// Bytes that sit at boundaries of the formats read here: bincode's varint markers (251 =
/// u16, 252 = u32, 253 = u64, 254 = u128 follows), sign and high bits, CSV and TOML syntax.
const INTERESTING_BYTES: &[u8] = &[
    0, 1, 2, 0x7f, 0x80, 0x81, 0xff, 250, 251, 252, 253, 254, b'0', b'9', b'\n', b'\r', b',', b'"',
    b'=', b'[', b']', b'\\', b'-', b'.',
];

/// Integers at boundaries of bincode's fields, to write as varints.
const INTERESTING_VALUES: &[u64] = &[
    0,
    1,
    250,
    251,
    255,
    256,
    0x7fff,
    0xffff,
    0x1_0000,
    1 << 20,
    64 * 1024 * 1024,
    64 * 1024 * 1024 + 1,
    0x7fff_ffff,
    0xffff_ffff,
    1 << 32,
    u64::MAX >> 1,
    u64::MAX,
];

/// `value` as bincode's varint, minimal or not (`width` 0 for minimal).
fn varint(value: u64, width: u64) -> Vec<u8> {
    match width {
        0 if value < 251 => vec![value as u8],
        0 | 1 if value <= 0xffff => [vec![251], (value as u16).to_le_bytes().to_vec()].concat(),
        0..=2 if value <= 0xffff_ffff => {
            [vec![252], (value as u32).to_le_bytes().to_vec()].concat()
        }
        _ => [vec![253], value.to_le_bytes().to_vec()].concat(),
    }
}

/// A random range of `len` bytes: start and length, at most `max` long, never empty unless
/// `len` is 0.
fn range(rng: &mut Rng, len: usize, max: usize) -> (usize, usize) {
    if len == 0 {
        return (0, 0);
    }
    let start = rng.below(len as u64) as usize;
    let most = (len - start).min(max).max(1);
    (start, 1 + rng.below(most as u64) as usize)
}

/// Positions of line starts in `input` (0 and after every `\n`).
fn line_starts(input: &[u8]) -> Vec<usize> {
    std::iter::once(0)
        .chain(
            input
                .iter()
                .enumerate()
                .filter(|(_, b)| **b == b'\n')
                .map(|(i, _)| i + 1),
        )
        .filter(|&i| i < input.len())
        .collect()
}

/// The line that starts at `starts[index]`, with its `\n`.
fn line(input: &[u8], starts: &[usize], index: usize) -> (usize, usize) {
    let start = starts[index];
    let end = starts.get(index + 1).copied().unwrap_or(input.len());
    (start, end)
}

/// Applies one random mutation to `input`, drawing material from `others` (the pool) and
/// `dictionary`; keeps it at most `max_len` bytes.
pub fn mutate_once(
    rng: &mut Rng,
    input: &mut Vec<u8>,
    others: &[Vec<u8>],
    dictionary: &[&[u8]],
    max_len: usize,
) {
    let len = input.len();
    match rng.below(20) {
        // Bit flip.
        0 | 1 if len > 0 => {
            let at = rng.below(len as u64) as usize;
            input[at] ^= 1 << rng.below(8);
        }
        // A random byte.
        2 if len > 0 => {
            let at = rng.below(len as u64) as usize;
            input[at] = rng.next_u64() as u8;
        }
        // An interesting byte.
        3 | 4 if len > 0 => {
            let at = rng.below(len as u64) as usize;
            input[at] = INTERESTING_BYTES[rng.below(INTERESTING_BYTES.len() as u64) as usize];
        }
        // Small arithmetic on a byte (a count or length off by a little).
        5 if len > 0 => {
            let at = rng.below(len as u64) as usize;
            let delta = 1 + rng.below(8) as u8;
            input[at] = if rng.coin() {
                input[at].wrapping_add(delta)
            } else {
                input[at].wrapping_sub(delta)
            };
        }
        // Insert random bytes.
        6 => {
            let at = rng.below(len as u64 + 1) as usize;
            let count = 1 + rng.below(16) as usize;
            let bytes: Vec<u8> = (0..count).map(|_| rng.next_u64() as u8).collect();
            input.splice(at..at, bytes);
        }
        // Delete a run.
        7 | 8 if len > 0 => {
            let most = if rng.coin() { 4 } else { 256 };
            let (start, count) = range(rng, len, most);
            input.drain(start..start + count);
        }
        // Duplicate a run in place or elsewhere.
        9 if len > 0 => {
            let (start, count) = range(rng, len, 64);
            let chunk = input[start..start + count].to_vec();
            let at = rng.below(len as u64 + 1) as usize;
            input.splice(at..at, chunk);
        }
        // A varint with a boundary value, minimal or not, over or into the input.
        10 | 11 => {
            let value = INTERESTING_VALUES[rng.below(INTERESTING_VALUES.len() as u64) as usize];
            let bytes = varint(value, rng.below(4));
            let at = rng.below(len as u64 + 1) as usize;
            if rng.coin() && at < len {
                let end = (at + bytes.len()).min(len);
                input.splice(at..end, bytes);
            } else {
                input.splice(at..at, bytes);
            }
        }
        // A dictionary token, inserted or written over.
        12 | 13 if !dictionary.is_empty() => {
            let token = dictionary[rng.below(dictionary.len() as u64) as usize];
            let at = rng.below(len as u64 + 1) as usize;
            if rng.coin() && at < len {
                let end = (at + token.len()).min(len);
                input.splice(at..end, token.iter().copied());
            } else {
                input.splice(at..at, token.iter().copied());
            }
        }
        // Copy a run from another input over this one (crossover).
        14 if !others.is_empty() => {
            let other = &others[rng.below(others.len() as u64) as usize];
            if !other.is_empty() && len > 0 {
                let (from, count) = range(rng, other.len(), 128);
                let at = rng.below(len as u64) as usize;
                let end = (at + count).min(len);
                input.splice(at..end, other[from..from + count].iter().copied());
            }
        }
        // Splice: this input's head, another's tail.
        15 if !others.is_empty() => {
            let other = &others[rng.below(others.len() as u64) as usize];
            let cut = rng.below(len as u64 + 1) as usize;
            let from = rng.below(other.len() as u64 + 1) as usize;
            input.truncate(cut);
            input.extend_from_slice(&other[from..]);
        }
        // Truncate.
        16 if len > 0 => {
            input.truncate(rng.below(len as u64) as usize);
        }
        // Whole lines: delete, duplicate or swap (text formats).
        17..=19 => {
            let starts = line_starts(input);
            if starts.len() >= 2 {
                let a = line(input, &starts, rng.below(starts.len() as u64) as usize);
                let b = line(input, &starts, rng.below(starts.len() as u64) as usize);
                match rng.below(3) {
                    0 => {
                        input.drain(a.0..a.1);
                    }
                    1 => {
                        let copy = input[a.0..a.1].to_vec();
                        input.splice(b.0..b.0, copy);
                    }
                    _ if a.1 <= b.0 => {
                        let (first, second) = (input[a.0..a.1].to_vec(), input[b.0..b.1].to_vec());
                        input.splice(b.0..b.1, first);
                        input.splice(a.0..a.1, second);
                    }
                    _ => {}
                }
            }
        }
        // The guard of the arm drawn did not hold (an empty input): append a byte.
        _ => input.push(rng.next_u64() as u8),
    }
    input.truncate(max_len);
}

/// Applies a stack of 1, 2, 4 or 8 mutations.
pub fn mutate(
    rng: &mut Rng,
    input: &mut Vec<u8>,
    others: &[Vec<u8>],
    dictionary: &[&[u8]],
    max_len: usize,
) {
    for _ in 0..1u32 << rng.below(4) {
        mutate_once(rng, input, others, dictionary, max_len);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_are_bincodes() {
        assert_eq!(varint(5, 0), [5]);
        assert_eq!(varint(5, 1), [251, 5, 0]);
        assert_eq!(varint(300, 0), [251, 44, 1]);
        assert_eq!(varint(70_000, 0), [252, 0x70, 0x11, 1, 0]);
        assert_eq!(varint(1 << 32, 0)[0], 253);
    }

    #[test]
    fn mutations_stay_within_the_length_and_change_something() {
        let mut rng = Rng::new(1);
        let others = vec![b"other input\nwith lines\n".to_vec()];
        let mut changed = 0;
        for _ in 0..10_000 {
            let mut input = b"a,b,c\n1,2,3\n4,5,6\n".to_vec();
            mutate(&mut rng, &mut input, &others, &[b"[[node]]"], 32);
            assert!(input.len() <= 32);
            changed += usize::from(input != b"a,b,c\n1,2,3\n4,5,6\n");
        }
        assert!(changed > 9_000, "{changed} of 10000 changed");
    }
}
