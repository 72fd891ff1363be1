//! A county whose store sits on a small filesystem that fills up: submits fail with a clear
//! error and the receipts coming down cannot be stored; once space is freed the same process
//! goes on by itself — the next submit succeeds and every batch reaches the city.
//!
//! The small filesystem is a tmpfs mounted over the county's store directory inside a user and
//! mount namespace of the county's process (`unshare --user --map-root-user --mount`), so no
//! privilege is needed where user namespaces are allowed. Where they are not, the test says
//! what is missing and passes without running, unless `CREDIT_TEST_REQUIRE_FULLDISK=1` (set by
//! `.ci/run`) makes it mandatory.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use cluster::{Cluster, wait_until};
use protocol::{NodeId, Period, Registry};
use serde_json::Value;

const REQUIRE_ENV: &str = "CREDIT_TEST_REQUIRE_FULLDISK";
const TIMEOUT: Duration = Duration::from_secs(60);
/// The county's store filesystem.
const STORE_FS: &str = "size=16m";

fn id(text: &str) -> NodeId {
    NodeId::parse(text).unwrap()
}

/// Whether a tmpfs can be mounted in a new user and mount namespace here; the reason if not.
fn namespaces_work(scratch: &Path) -> Result<(), String> {
    let output = Command::new("unshare")
        .args(["--user", "--map-root-user", "--mount", "--"])
        .args(["sh", "-c", "mount -t tmpfs -o size=1m tmpfs \"$0\""])
        .arg(scratch)
        .output()
        .map_err(|e| format!("cannot run unshare (util-linux): {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "cannot mount a tmpfs in a user and mount namespace: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

/// Runs `script` (with `$0` = `store`) inside the county's namespaces, where its store
/// filesystem is mounted.
fn in_county_namespace(pid: u32, store: &Path, script: &str) -> std::process::Output {
    Command::new("nsenter")
        .arg(format!("--target={pid}"))
        .args(["--user", "--mount", "--preserve-credentials", "--"])
        .args(["sh", "-c", script])
        .arg(store)
        .output()
        .unwrap()
}

/// Writes a sample export of `rows` water-fee rows for `county`; returns its path.
fn export(cluster: &Cluster, county: NodeId, rows: usize, seed: u64) -> std::path::PathBuf {
    let schema = Registry::builtin().by_name("water_fee").unwrap();
    let file = sample::sample_csv(
        schema,
        county,
        Period::parse("2022-05").unwrap(),
        rows,
        0,
        seed,
    );
    let path = cluster.root().join(format!("export-{seed}.csv"));
    std::fs::write(&path, &file.text).unwrap();
    path
}

/// `credit-node submit`, as the operator runs it.
fn submit(
    cluster: &Cluster,
    county: NodeId,
    file: &Path,
    batch_records: usize,
) -> std::process::Output {
    Command::new(credit_e2e::binary())
        .arg("submit")
        .arg(file)
        .args(["--category", "water_fee", "--period", "2022-05", "--json"])
        .arg("--batch-records")
        .arg(batch_records.to_string())
        .arg("--dir")
        .arg(&cluster.member(county).dir)
        .output()
        .unwrap()
}

fn batch_ids(report: &Value) -> Vec<String> {
    report["batches"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["id"].as_str().unwrap().to_owned())
        .collect()
}

fn held(cluster: &Cluster, node: NodeId) -> anyhow::Result<Vec<String>> {
    Ok(cluster.batches(node)?["batches"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["id"].as_str().unwrap().to_owned())
        .collect())
}

fn outbox(cluster: &Cluster, county: NodeId) -> anyhow::Result<u64> {
    Ok(cluster.status(county)?["links"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["direction"] == "up")
        .map(|l| l["outbox"].as_u64().unwrap_or(0))
        .sum())
}

#[test]
fn a_full_disk_then_freed_recovers_without_a_restart() {
    let root = tempfile::tempdir().unwrap();
    let probe = root.path().join("probe");
    std::fs::create_dir(&probe).unwrap();
    if let Err(missing) = namespaces_work(&probe) {
        assert!(
            std::env::var(REQUIRE_ENV).as_deref() != Ok("1"),
            "{REQUIRE_ENV}=1 but {missing}"
        );
        eprintln!("skipped: {missing} (set {REQUIRE_ENV}=1 to make this an error)");
        return;
    }
    let (city, county) = (id("445200"), id("445202"));
    let mut cluster = Cluster::create(
        &credit_e2e::binary(),
        root.path(),
        &[
            ("000000", "全国中小企业融资综合信用服务平台", None),
            ("440000", "广东省", Some("000000")),
            ("445200", "揭阳市", Some("440000")),
            ("445202", "榕城区", Some("445200")),
        ],
    )
    .unwrap();
    let store = cluster.member(county).dir.join("store");
    std::fs::create_dir_all(&store).unwrap();
    cluster.members.get_mut(&county).unwrap().wrapper = [
        "unshare",
        "--user",
        "--map-root-user",
        "--mount",
        "--",
        "sh",
        "-c",
        &format!("mount -t tmpfs -o {STORE_FS} tmpfs \"$0\" && exec \"$@\""),
        store.to_str().unwrap(),
    ]
    .map(Into::into)
    .to_vec();

    // The city is down: the county keeps its first batches in its outbox. Many small ones,
    // so that storing their receipts later needs new pages of sled's log.
    cluster.start(county).unwrap();
    let pid = cluster.pid(county).unwrap();
    let first = submit(&cluster, county, &export(&cluster, county, 120, 1), 3);
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let first: Vec<String> = batch_ids(&serde_json::from_slice(&first.stdout).unwrap());
    assert_eq!(first.len(), 40);

    // Fill the county's store filesystem to the last byte.
    let filled = in_county_namespace(
        pid,
        &store,
        "cat /dev/zero > \"$0/filler\" 2>/dev/null; df -k \"$0\" | tail -n 1",
    );
    let df = String::from_utf8_lossy(&filled.stdout);
    assert!(
        df.split_whitespace().nth(3) == Some("0"),
        "the store filesystem is not full: {df}"
    );

    // A submit fails, saying the disk is full and which batches were stored.
    let second_file = export(&cluster, county, 300, 2);
    let refused = submit(&cluster, county, &second_file, 100);
    let error = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "{error}");
    assert!(error.contains("the disk is full"), "{error}");
    assert!(error.contains("0 batch(es) stored durably"), "{error}");
    // Ingestion streams: it stopped at the first batch the node refused, so nothing of the
    // file after it was read or sent.
    assert!(
        error.contains("the rest of the file was not read"),
        "{error}"
    );
    let report: Value = serde_json::from_slice(&refused.stdout).unwrap();
    assert_eq!(report["submitted"].as_array().unwrap().len(), 0, "{report}");
    assert!(report["failed"]["batch"].is_string(), "{report}");
    assert_eq!(report["not_sent"].as_array().unwrap().len(), 0, "{report}");

    // The city comes up, and the county's next write fails: the audit entry of its path
    // coming up, or the receipts of the first batches if the log still had room for that
    // entry (how much room is left in sled's last log segment depends on what the first
    // submit wrote). Either way sled's log write fails; before, sled then refused every
    // write until a restart, and the store now reopens by itself once there is room.
    cluster.start(city).unwrap();
    wait_until(
        "the county to fail storing what the city sent",
        TIMEOUT,
        || Ok(cluster.log(county).contains("No space left on device")),
    )
    .unwrap();

    // Space comes back; the same process goes on.
    let freed = in_county_namespace(pid, &store, "rm \"$0/filler\"");
    assert!(freed.status.success(), "{freed:?}");
    // The store reopens at most once a second after a failed attempt: a submit in that second
    // is refused (and says so); the operator's next try goes through.
    let mut second = None;
    wait_until("a submit to succeed once space is back", TIMEOUT, || {
        let output = submit(&cluster, county, &second_file, 100);
        if output.status.success() {
            second = Some(output);
            return Ok(true);
        }
        anyhow::bail!("{}", String::from_utf8_lossy(&output.stderr))
    })
    .unwrap_or_else(|e| panic!("{e}\ncounty log:\n{}", cluster.log(county)));
    let second: Vec<String> = batch_ids(&serde_json::from_slice(&second.unwrap().stdout).unwrap());
    assert_eq!(second.len(), 3);
    wait_until(
        "every batch at the city and the county's outbox empty",
        TIMEOUT,
        || {
            let at_city = held(&cluster, city)?;
            Ok(first.iter().chain(&second).all(|b| at_city.contains(b))
                && outbox(&cluster, county)? == 0)
        },
    )
    .unwrap_or_else(|e| panic!("{e}\ncounty log:\n{}", cluster.log(county)));
    assert_eq!(
        cluster.pid(county),
        Some(pid),
        "the county was not restarted"
    );
    let audit = cluster.audit_log(county).unwrap();
    assert!(audit["ok"] == true);
    eprintln!(
        "store reopened {} time(s)",
        cluster
            .log(county)
            .matches("store reopened after a failed write")
            .count()
    );
    cluster.stop_all();
}
