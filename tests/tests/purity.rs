//! The pure crates stay pure: `protocol` and `topology` must not depend (normal dependencies)
//! on tokio, quinn, sled or any other IO runtime, so that the same code runs in production and
//! in deterministic simulation. The node library holds no demo or test scaffolding and no
//! `anyhow`: those live in `cluster`, `sample` and the binary.

use std::process::Command;

/// The packages in `package`'s tree of normal dependencies, `depth` levels down (all: `None`).
fn normal_dependencies_to(package: &str, depth: Option<u32>) -> Vec<String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let depth = depth.map(|d| d.to_string());
    let output = Command::new(cargo)
        .args([
            "tree", "-p", package, "-e", "normal", "--prefix", "none", "--format", "{p}",
        ])
        .args(depth.iter().flat_map(|d| ["--depth", d.as_str()]))
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

fn normal_dependencies(package: &str) -> Vec<String> {
    normal_dependencies_to(package, None)
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

#[test]
fn the_node_library_holds_no_scaffolding_and_no_anyhow() {
    let deps = normal_dependencies("credit-node");
    assert!(
        deps.iter().any(|d| d == "quinn"),
        "the tree is read: {deps:?}"
    );
    for scaffolding in ["credit-cluster", "credit-sample"] {
        assert!(
            !deps.iter().any(|d| d == scaffolding),
            "the node library depends on {scaffolding} (demo and test scaffolding): {deps:?}"
        );
    }
    let direct = normal_dependencies_to("credit-node", Some(1));
    assert!(
        !direct.iter().any(|d| d == "anyhow"),
        "the node library depends on anyhow; its modules return thiserror enums: {direct:?}"
    );
}
