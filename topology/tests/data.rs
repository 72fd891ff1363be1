//! Data-driven tests, in the style of rust-analyzer's: every input is a file, every expected
//! output is the file next to it.
//!
//! * `tests/data/check/NAME.toml` → `NAME.txt`: `ok`, or every problem `Topology::parse`
//!   reports, one per line.
//! * `tests/data/plan/CASE/{old.toml,new.toml}` → `CASE/expected.txt`: the plan as its
//!   `Display` prints it, or the refusal; if a file does not parse, its problems.
//!
//! In the inputs `KEYn` (n = 1 to 40) stands for the public key of `NodeKey::from_seed([n; 32])`;
//! in the outputs the key (or its 16-character prefix in plan steps) is written back as `KEYn`.
//! Keep one key per line in inputs, so that columns after it stay as the file shows them.
//!
//! Run with `UPDATE_EXPECT=1` to write the outputs the code produces now; the files that
//! changed are printed, so review them with `git diff`.

use std::io::Write;
use std::path::{Path, PathBuf};

use protocol::{NodeKey, PublicKey};
use topology::{Topology, plan};

const KEYS: u8 = 40;

fn key(n: u8) -> PublicKey {
    NodeKey::from_seed([n; 32]).public()
}

fn with_keys(text: &str) -> String {
    let mut text = text.to_owned();
    for n in (1..=KEYS).rev() {
        text = text.replace(&format!("KEY{n}"), &key(n).to_hex());
    }
    text
}

fn without_keys(text: &str) -> String {
    let mut text = text.to_owned();
    for n in 1..=KEYS {
        let hex = key(n).to_hex();
        text = text.replace(&hex, &format!("KEY{n}"));
        text = text.replace(&format!("{}…", &hex[..16]), &format!("KEY{n}…"));
    }
    text
}

fn parse(path: &Path) -> Result<Topology, String> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    Topology::parse(&with_keys(&text)).map_err(|errors| {
        errors
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n")
    })
}

fn check_output(path: &Path) -> String {
    match parse(path) {
        Ok(_) => "ok".to_owned(),
        Err(errors) => errors,
    }
}

fn plan_output(dir: &Path) -> String {
    let old = match parse(&dir.join("old.toml")) {
        Ok(old) => old,
        Err(errors) => return format!("old.toml is not valid:\n{errors}"),
    };
    let new = match parse(&dir.join("new.toml")) {
        Ok(new) => new,
        Err(errors) => return format!("new.toml is not valid:\n{errors}"),
    };
    match plan(&old, &new) {
        Ok(plan) => plan.to_string(),
        Err(refusal) => refusal.to_string(),
    }
}

fn data_dir(kind: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(kind)
}

fn sorted_entries(dir: &Path) -> Vec<PathBuf> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .collect();
    entries.sort();
    entries
}

/// Compares (or, with UPDATE_EXPECT=1, rewrites) one expected file; returns a failure text.
fn expect(path: &Path, actual: &str) -> Option<String> {
    let actual = format!("{}\n", without_keys(actual));
    let expected = std::fs::read_to_string(path).ok();
    if expected.as_deref() == Some(actual.as_str()) {
        return None;
    }
    if std::env::var("UPDATE_EXPECT").is_ok_and(|v| v == "1") {
        std::fs::write(path, &actual).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        // Straight to stderr: the test harness captures `eprintln!` of passing tests.
        let _ = writeln!(std::io::stderr(), "updated {}", path.display());
        return None;
    }
    Some(match expected {
        None => format!(
            "{} is missing; run with UPDATE_EXPECT=1 to write it. Actual:\n{actual}",
            path.display()
        ),
        Some(expected) => format!(
            "{} differs (run with UPDATE_EXPECT=1 to accept the actual output):\n--- expected\n{expected}--- actual\n{actual}",
            path.display()
        ),
    })
}

fn report(failures: Vec<String>) {
    assert!(
        failures.is_empty(),
        "{} case(s) failed:\n\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}

#[test]
fn check() {
    let mut failures = Vec::new();
    let mut cases = 0;
    for path in sorted_entries(&data_dir("check")) {
        if path.extension().is_some_and(|ext| ext == "toml") {
            cases += 1;
            failures.extend(expect(&path.with_extension("txt"), &check_output(&path)));
        } else if path.extension().is_some_and(|ext| ext == "txt")
            && !path.with_extension("toml").exists()
        {
            failures.push(format!("{} has no .toml next to it", path.display()));
        }
    }
    assert!(cases >= 20, "the check cases are found: {cases}");
    report(failures);
}

#[test]
fn plans() {
    let mut failures = Vec::new();
    let mut cases = 0;
    for dir in sorted_entries(&data_dir("plan")) {
        assert!(dir.is_dir(), "{} is not a case directory", dir.display());
        cases += 1;
        failures.extend(expect(&dir.join("expected.txt"), &plan_output(&dir)));
    }
    assert!(cases >= 10, "the plan cases are found: {cases}");
    report(failures);
}

/// Every valid input renders to text that parses back to the same topology.
#[test]
fn valid_inputs_round_trip_through_render() {
    let mut inputs: Vec<PathBuf> = sorted_entries(&data_dir("check"))
        .into_iter()
        .filter(|path| path.extension().is_some_and(|ext| ext == "toml"))
        .collect();
    for dir in sorted_entries(&data_dir("plan")) {
        inputs.push(dir.join("old.toml"));
        inputs.push(dir.join("new.toml"));
    }
    let mut valid = 0;
    for path in inputs {
        if let Ok(topology) = parse(&path) {
            valid += 1;
            let text = topology.render();
            assert_eq!(
                Topology::parse(&text).as_ref(),
                Ok(&topology),
                "{}",
                path.display()
            );
        }
    }
    assert!(valid >= 20, "{valid}");
}
