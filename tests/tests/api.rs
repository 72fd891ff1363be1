//! The operator API (a Unix socket in the node directory) keeps answering its own user through
//! a flood of idle connections, closes connections that send nothing or trickle, and refuses
//! other users.

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use cluster::{Cluster, wait_until};
use node::api::{ApiRequest, call, socket_path};
use protocol::NodeId;

/// Idle connections the flood holds open.
const FLOOD: usize = 2_000;
/// The node runs with fewer file descriptors than the flood: without a cap it would run out.
const NODE_FILES_MAX: u32 = 512;

fn national_cluster(root: &Path) -> Cluster {
    Cluster::create(
        &credit_e2e::binary(),
        root,
        &[("000000", "全国中小企业融资综合信用服务平台", None)],
    )
    .unwrap()
}

/// Raises this process's open-files limit so it can hold the flood (root may raise the hard
/// limit too).
fn raise_own_files_limit(needed: u64) {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    if limit.current.is_none_or(|c| c >= needed) {
        return;
    }
    let maximum = limit.maximum.map(|m| m.max(needed));
    let wanted = Rlimit {
        current: maximum,
        maximum,
    };
    if setrlimit(Resource::Nofile, wanted).is_err() {
        let hard = limit.maximum.unwrap_or(u64::MAX);
        assert!(
            hard >= needed,
            "this test holds {needed} open files; the hard limit is {hard}: raise it (ulimit -Hn) or run as root"
        );
        setrlimit(
            Resource::Nofile,
            Rlimit {
                current: limit.maximum,
                maximum: limit.maximum,
            },
        )
        .unwrap();
    }
}

/// Whether the node has closed this connection (end of file or reset), without blocking.
fn closed_by_node(stream: &mut UnixStream) -> bool {
    let mut byte = [0u8; 64];
    loop {
        match stream.read(&mut byte) {
            Ok(0) => return true,
            // A "busy" answer or a refusal may come before the end.
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return false,
            Err(_) => return true,
        }
    }
}

#[test]
fn two_thousand_idle_connections_leave_the_api_answering_and_are_closed() {
    raise_own_files_limit(FLOOD as u64 + 512);
    let root = tempfile::tempdir().unwrap();
    let national = NodeId::NATIONAL;
    let mut cluster = national_cluster(root.path());
    cluster.members.get_mut(&national).unwrap().wrapper = vec![
        "prlimit".into(),
        format!("--nofile={NODE_FILES_MAX}:{NODE_FILES_MAX}").into(),
        "--".into(),
    ];
    cluster.start(national).unwrap();
    let dir = cluster.member(national).dir.clone();
    let socket = socket_path(&dir);

    // A caller that sends a length and part of the request, then nothing more.
    let mut trickle = UnixStream::connect(&socket).unwrap();
    trickle.write_all(&100u32.to_be_bytes()).unwrap();
    trickle.write_all(&[0; 10]).unwrap();

    let mut flood: Vec<UnixStream> = (0..FLOOD)
        .map(|i| {
            UnixStream::connect(&socket)
                .unwrap_or_else(|e| panic!("idle connection {i} of {FLOOD}: {e}"))
        })
        .collect();

    // Every idle connection is still open on our side; the operator's command answers.
    let asked = Instant::now();
    let output = Command::new(credit_e2e::binary())
        .args(["status", "--json", "--dir"])
        .arg(&dir)
        .output()
        .unwrap();
    let answered = asked.elapsed();
    assert!(
        output.status.success(),
        "status during the flood: {}\n{}",
        String::from_utf8_lossy(&output.stderr),
        cluster.log(national)
    );
    let status: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(status["node"], "000000");
    eprintln!("status answered in {answered:?} with {FLOOD} idle connections held open");

    // Each idle connection is closed by the node: evicted for newer ones, or at the deadline
    // for the request; the trickling one at the deadline for the whole request.
    for stream in flood.iter_mut().chain([&mut trickle]) {
        stream.set_nonblocking(true).unwrap();
    }
    let mut open: Vec<UnixStream> = flood.into_iter().chain([trickle]).collect();
    let limit = node::api::REQUEST_DEADLINE * 3;
    wait_until("the node to close every idle connection", limit, || {
        open.retain_mut(|s| !closed_by_node(s));
        Ok(open.is_empty())
    })
    .unwrap_or_else(|e| panic!("{e}: {} still open", open.len()));

    // And it still answers, through the library's client too.
    assert_eq!(call(&dir, &ApiRequest::Status).unwrap()["node"], "000000");
    assert!(
        !cluster.log(national).contains("operator API did not start"),
        "{}",
        cluster.log(national)
    );
    cluster.stop_all();
}

#[test]
fn another_user_cannot_use_the_api() {
    if rustix::process::geteuid().as_raw() != 0 {
        eprintln!(
            "skipped: switching to another user to try the API needs root (this test runs as uid {})",
            rustix::process::geteuid().as_raw()
        );
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let national = NodeId::NATIONAL;
    let mut cluster = national_cluster(root.path());
    cluster.start(national).unwrap();
    let dir = cluster.member(national).dir.clone();
    let socket = socket_path(&dir);
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "socket mode {mode:o}");
    // Let user `nobody` reach the socket's directory.
    for path in [root.path(), dir.as_path()] {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o711)).unwrap();
    }
    let as_nobody = || {
        Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .arg(credit_e2e::binary())
            .args(["status", "--dir"])
            .arg(&dir)
            .output()
            .unwrap()
    };
    // The file mode keeps them out.
    let output = as_nobody();
    let error = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{error}");
    assert!(error.contains("ermission denied"), "{error}");
    // With the mode opened up by mistake, the node still refuses them by their user id.
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    let output = as_nobody();
    let error = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{error}");
    assert!(error.contains("for its own user"), "{error}");
    // Its own user still gets in.
    assert_eq!(call(&dir, &ApiRequest::Status).unwrap()["node"], "000000");
    cluster.stop_all();
}
