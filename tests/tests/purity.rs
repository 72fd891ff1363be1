//! The pure crates stay pure: `protocol` and `topology` must not depend (normal dependencies)
//! on tokio, quinn, sled or any other IO runtime, so that the same code runs in production and
//! in deterministic simulation.

use std::process::Command;

fn normal_dependencies(package: &str) -> Vec<String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let output = Command::new(cargo)
        .args([
            "tree", "-p", package, "-e", "normal", "--prefix", "none", "--format", "{p}",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run cargo tree");
    assert!(
        output.status.success(),
        "cargo tree failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8(output.stdout).expect("UTF-8");
    text.lines()
        .filter_map(|line| line.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

const FORBIDDEN: &[&str] = &[
    "tokio",
    "quinn",
    "quinn-proto",
    "sled",
    "rustls",
    "mio",
    "socket2",
    "turmoil",
];

#[test]
fn protocol_and_topology_have_no_io_runtime_in_their_tree() {
    for package in ["credit-protocol", "credit-topology"] {
        let deps = normal_dependencies(package);
        assert!(
            deps.iter().any(|d| d == package),
            "{package} itself is listed: {deps:?}"
        );
        assert!(
            deps.iter().any(|d| d == "blake3") || package == "credit-topology",
            "the tree is read: {deps:?}"
        );
        for forbidden in FORBIDDEN {
            assert!(
                !deps.iter().any(|d| d == forbidden),
                "{package} depends on {forbidden}: {deps:?}"
            );
        }
    }
}
