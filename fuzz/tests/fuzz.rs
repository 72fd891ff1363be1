//! Every fuzz target, on stable, bounded in time: a fixed sequence of mutated inputs per
//! target (a few seconds each). `FUZZ_SECONDS=300 cargo test -p credit-fuzz --release --test
//! fuzz` runs each for five minutes; `FUZZ_SEED` picks another sequence; `FUZZ_REPLAY=FILE`
//! replays a finding (see the runner's documentation and ARCHITECTURE.md, "Fuzzing").

use credit_fuzz::runner::{check, write_corpus};
use credit_fuzz::targets::{all, by_name};

#[global_allocator]
static ALLOC: credit_fuzz::alloc::Counting = credit_fuzz::alloc::Counting;

macro_rules! fuzz_targets {
    ($($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                let report = check(&by_name(stringify!($name)));
                assert!(report.executions > 0);
                assert!(credit_fuzz::alloc::installed(), "the counting allocator is installed");
            }
        )*

        #[test]
        fn every_target_has_a_test() {
            let mut tested = vec![$(stringify!($name)),*];
            let mut targets: Vec<&str> = all().iter().map(|t| t.name).collect();
            tested.sort_unstable();
            targets.sort_unstable();
            assert_eq!(tested, targets);
        }
    };
}

fuzz_targets!(
    wire_frame,
    batch,
    manifest,
    progress,
    reconcile,
    reconcile_sets,
    ingest,
    topology,
);

/// Every seed is accepted by its own target (a seed that is refused starts nowhere deep), and
/// `FUZZ_WRITE_CORPUS=1` writes them as the committed corpus.
#[test]
fn corpus() {
    let write = std::env::var_os("FUZZ_WRITE_CORPUS").is_some();
    for target in all() {
        let seeds = (target.seeds)();
        assert!(!seeds.is_empty(), "{} has seeds", target.name);
        let accepted = seeds
            .iter()
            .filter(|seed| (target.run)(seed) == credit_fuzz::runner::Verdict::Accepted)
            .count();
        // The topology seeds include the checker's files of refused topologies on purpose.
        if target.name != "topology" {
            assert_eq!(accepted, seeds.len(), "{}: seeds refused", target.name);
        } else {
            assert!(accepted >= 1, "the shipped topology parses");
        }
        if write {
            let written = write_corpus(&target);
            eprintln!("{}: wrote {written} seeds", target.name);
        }
    }
}
