//! End-to-end tests of the `credit-node` binary live in `tests/`; this library only finds
//! (and if needed builds) the binary they run.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

/// The `credit-node` binary of this workspace, built once per test process with the same
/// profile as the tests.
pub fn binary() -> PathBuf {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY
        .get_or_init(|| {
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let status = Command::new(cargo)
                .args([
                    "build",
                    "--quiet",
                    "-p",
                    "credit-cli",
                    "--bin",
                    "credit-node",
                ])
                .current_dir(env!("CARGO_MANIFEST_DIR"))
                .status()
                .expect("run cargo build");
            assert!(status.success(), "building credit-node failed");
            let target = std::env::var("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
            let binary = target.join("debug").join("credit-node");
            assert!(
                binary.exists(),
                "{} not found after building",
                binary.display()
            );
            binary
        })
        .clone()
}
