//! A network of real `credit-node` processes on loopback, each with its own directory, store
//! and port: what the live demo runs and what the end-to-end tests drive. Processes are
//! killed when the cluster is dropped, so nothing is left running.
//!
//! Waiting is always on a condition with a deadline ([`wait_until`]), never a bare sleep.
//!
//! Scaffolding, not part of the node library (a node never runs a cluster): a crate of its
//! own that the binary's `demo` and the end-to-end tests depend on. Like the binary's edge, it
//! reports errors with `anyhow` and context; a failure here ends a demo or a test.

use std::collections::BTreeMap;
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use protocol::{NodeId, PublicKey};
use serde_json::Value;
use topology::{LegacyLink, Node as TopologyNode, Role, Schedule, Topology};

/// How long to wait for a node to come up.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How often conditions are re-checked.
const POLL: Duration = Duration::from_millis(50);

/// Polls `check` until it returns `true`, or fails after `timeout` naming `what`.
pub fn wait_until(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> anyhow::Result<bool>,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    let mut last_error = None;
    loop {
        match check() {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            Err(e) => last_error = Some(e),
        }
        if Instant::now() >= deadline {
            bail!(
                "timed out after {timeout:?} waiting for {what}{}",
                last_error
                    .map(|e| format!(" (last error: {e:#})"))
                    .unwrap_or_default()
            );
        }
        std::thread::sleep(POLL);
    }
}

/// One node of the cluster.
#[derive(Debug)]
pub struct Member {
    pub id: NodeId,
    pub name: String,
    pub role: Role,
    pub parent: Option<NodeId>,
    pub dir: PathBuf,
    pub address: SocketAddr,
    pub public_key: PublicKey,
    /// Whether the topology file lists this node (a node can be created before it is added).
    pub in_topology: bool,
    /// Shifts the node's wall clock (see `runtime::CLOCK_OFFSET_ENV`) from its next start.
    pub clock_offset_ms: Option<i64>,
    /// A command the node is started under, e.g. `["prlimit", "--nofile=512:512", "--"]`
    /// (empty: the binary itself). The binary and its arguments follow it.
    pub wrapper: Vec<std::ffi::OsString>,
    process: Option<Child>,
}

#[derive(Debug)]
pub struct Cluster {
    binary: PathBuf,
    root: PathBuf,
    pub topology_path: PathBuf,
    pub version: u64,
    pub members: BTreeMap<NodeId, Member>,
    /// Legacy direct links to the national platform, by node.
    pub legacy_links: BTreeMap<NodeId, LegacyLink>,
    /// The reporting schedules written into the topology file.
    pub schedules: Vec<Schedule>,
    /// Key history and security assessments written into the topology file.
    pub admissions: topology::Admissions,
}

/// A free UDP port on 127.0.0.1 (bound and released; the node binds it right after).
fn free_udp_port() -> anyhow::Result<SocketAddr> {
    Ok(UdpSocket::bind("127.0.0.1:0")?.local_addr()?)
}

/// The smallest whole chain (id, name, parent): the national platform, Guangdong, Jieyang
/// and one of its counties, 普宁.
pub const PUNING_CHAIN: &[(&str, &str, Option<&str>)] = &[
    ("000000", "全国中小企业融资综合信用服务平台", None),
    ("440000", "广东省", Some("000000")),
    ("445200", "揭阳市", Some("440000")),
    ("445281", "普宁市", Some("445200")),
];

impl Cluster {
    /// Creates the identities of `nodes` (id, name, parent) under `root`, sharing one network
    /// key, and writes the topology file.
    pub fn create(
        binary: &Path,
        root: &Path,
        nodes: &[(&str, &str, Option<&str>)],
    ) -> anyhow::Result<Cluster> {
        let mut cluster = Cluster::init(binary, root, nodes)?;
        cluster.write_topology()?;
        Ok(cluster)
    }

    /// Creates the identities only; adjust members and legacy links, then call
    /// [`Cluster::write_topology`].
    pub fn init(
        binary: &Path,
        root: &Path,
        nodes: &[(&str, &str, Option<&str>)],
    ) -> anyhow::Result<Cluster> {
        let mut members = BTreeMap::new();
        let mut network_key: Option<PathBuf> = None;
        for (id, name, parent) in nodes {
            let id = NodeId::parse(id)?;
            let dir = root.join(id.to_string());
            let mut command = Command::new(binary);
            command
                .args(["init", "--id", &id.to_string(), "--dir"])
                .arg(&dir);
            if let Some(key) = &network_key {
                command.arg("--network-key").arg(key);
            }
            let output = command
                .output()
                .with_context(|| format!("running {}", binary.display()))?;
            if !output.status.success() {
                bail!(
                    "init {id} failed: {}",
                    String::from_utf8_lossy(&output.stderr)
                );
            }
            network_key.get_or_insert_with(|| dir.join("network.key"));
            let identity = node::identity::Identity::load(&dir)?;
            members.insert(
                id,
                Member {
                    id,
                    name: (*name).to_owned(),
                    role: Role::of_id(id),
                    parent: parent.map(NodeId::parse).transpose()?,
                    dir,
                    address: free_udp_port()?,
                    public_key: identity.public(),
                    in_topology: true,
                    clock_offset_ms: None,
                    wrapper: Vec::new(),
                    process: None,
                },
            );
        }
        Ok(Cluster {
            binary: binary.to_owned(),
            root: root.to_owned(),
            topology_path: root.join("topology.toml"),
            version: 0,
            members,
            legacy_links: BTreeMap::new(),
            schedules: Vec::new(),
            admissions: topology::Admissions::default(),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Writes the topology file from the members, with the next version number.
    pub fn write_topology(&mut self) -> anyhow::Result<()> {
        self.version += 1;
        let nodes = self
            .members
            .values()
            .filter(|m| m.in_topology)
            .map(|m| TopologyNode {
                id: m.id,
                name: m.name.clone(),
                role: m.role,
                parent: m.parent,
                address: m.address,
                public_key: m.public_key,
            })
            .collect();
        let legacy = self.legacy_links.values().cloned().collect();
        let topology = Topology::from_parts_with(
            self.version,
            nodes,
            legacy,
            Vec::new(),
            self.schedules.clone(),
            self.admissions.clone(),
        )
        .map_err(|errors| {
            anyhow::anyhow!(
                "cluster topology invalid: {}",
                errors
                    .iter()
                    .map(|e| e.to_string())
                    .collect::<Vec<_>>()
                    .join("; ")
            )
        })?;
        let tmp = self.topology_path.with_extension("tmp");
        std::fs::write(&tmp, topology.render())?;
        std::fs::rename(&tmp, &self.topology_path)?;
        Ok(())
    }

    pub fn member(&self, id: NodeId) -> &Member {
        self.members.get(&id).expect("node of this cluster")
    }

    /// Starts a node and waits until its operator API answers.
    pub fn start(&mut self, id: NodeId) -> anyhow::Result<()> {
        let member = self.members.get_mut(&id).expect("node of this cluster");
        assert!(member.process.is_none(), "{id} is already running");
        let _ = std::fs::remove_file(node::api::socket_path(&member.dir));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(member.dir.join("node.log"))?;
        let mut command = match member.wrapper.split_first() {
            Some((program, args)) => {
                let mut command = Command::new(program);
                command.args(args).arg(&self.binary);
                command
            }
            None => Command::new(&self.binary),
        };
        if let Some(offset) = member.clock_offset_ms {
            command.env(node::runtime::CLOCK_OFFSET_ENV, offset.to_string());
        }
        let child = command
            .args(["run", "--dir"])
            .arg(&member.dir)
            .arg("--topology")
            .arg(&self.topology_path)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {id}"))?;
        member.process = Some(child);
        let dir = member.dir.clone();
        wait_until(
            &format!("node {id} to answer on its API"),
            START_TIMEOUT,
            || Ok(node::api::call(&dir, &node::api::ApiRequest::Status).is_ok()),
        )
    }

    pub fn start_all(&mut self) -> anyhow::Result<()> {
        let ids: Vec<NodeId> = self.members.keys().copied().collect();
        for id in ids {
            self.start(id)?;
        }
        Ok(())
    }

    /// SIGKILL: the process dies at once, wherever it is.
    pub fn kill(&mut self, id: NodeId) -> anyhow::Result<()> {
        let member = self.members.get_mut(&id).expect("node of this cluster");
        if let Some(mut child) = member.process.take() {
            child.kill()?;
            child.wait()?;
        }
        Ok(())
    }

    /// Sends a Unix signal by name (`TERM`, `HUP`) to a running node.
    pub fn signal(&self, id: NodeId, signal: &str) -> anyhow::Result<()> {
        let member = self.member(id);
        let pid = member.process.as_ref().context("node not running")?.id();
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(pid.to_string())
            .status()?;
        if !status.success() {
            bail!("kill -{signal} {pid} failed");
        }
        Ok(())
    }

    /// The process id of a running node (of its wrapper, if it has one that does not exec).
    pub fn pid(&self, id: NodeId) -> Option<u32> {
        self.member(id).process.as_ref().map(Child::id)
    }

    /// SIGTERM and wait for a clean exit.
    pub fn stop(&mut self, id: NodeId) -> anyhow::Result<()> {
        if self.member(id).process.is_none() {
            return Ok(());
        }
        self.signal(id, "TERM")?;
        let member = self.members.get_mut(&id).expect("node of this cluster");
        let mut child = member.process.take().expect("checked above");
        let deadline = Instant::now() + Duration::from_secs(10);
        while child.try_wait()?.is_none() {
            if Instant::now() > deadline {
                child.kill()?;
                break;
            }
            std::thread::sleep(POLL);
        }
        child.wait()?;
        Ok(())
    }

    pub fn stop_all(&mut self) {
        let ids: Vec<NodeId> = self.members.keys().copied().collect();
        for id in ids {
            let _ = self.stop(id);
        }
    }

    /// Where a running node's dashboard listens (`host:port`), from its `status`.
    pub fn http_address(&self, id: NodeId) -> anyhow::Result<String> {
        let status = self.status(id)?;
        status["http"]
            .as_str()
            .map(str::to_owned)
            .with_context(|| format!("node {id} serves no dashboard (status: {status})"))
    }

    pub fn status(&self, id: NodeId) -> anyhow::Result<Value> {
        Ok(node::api::call(
            &self.member(id).dir,
            &node::api::ApiRequest::Status,
        )?)
    }

    pub fn migration(&self, id: NodeId) -> anyhow::Result<Value> {
        Ok(node::api::call(
            &self.member(id).dir,
            &node::api::ApiRequest::Migration,
        )?)
    }

    pub fn audit_log(&self, id: NodeId) -> anyhow::Result<Value> {
        Ok(node::api::call(
            &self.member(id).dir,
            &node::api::ApiRequest::AuditLog,
        )?)
    }

    pub fn batches(&self, id: NodeId) -> anyhow::Result<Value> {
        Ok(node::api::call(
            &self.member(id).dir,
            &node::api::ApiRequest::Batches,
        )?)
    }

    /// Runs `credit-node submit FILE` at a node; returns the JSON report.
    pub fn submit(
        &self,
        id: NodeId,
        file: &Path,
        category: &str,
        period: &str,
        batch_records: usize,
    ) -> anyhow::Result<Value> {
        let output = Command::new(&self.binary)
            .arg("submit")
            .arg(file)
            .args([
                "--category",
                category,
                "--period",
                period,
                "--json",
                "--batch-records",
            ])
            .arg(batch_records.to_string())
            .arg("--dir")
            .arg(&self.member(id).dir)
            .output()?;
        // Exit 1 means some rows were refused; the rest were submitted.
        if !matches!(output.status.code(), Some(0 | 1)) {
            bail!(
                "submit at {id} failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(serde_json::from_slice(&output.stdout)?)
    }

    /// Runs `credit-node rekey` at a (stopped) node — with `--compromised --since` when
    /// `revoked_since_ms` is given — records its new key and its old key's end in the
    /// members and admissions (call [`Cluster::write_topology`] next); returns the old key.
    pub fn rekey(
        &mut self,
        id: NodeId,
        revoked_since_ms: Option<u64>,
    ) -> anyhow::Result<PublicKey> {
        let dir = self.member(id).dir.clone();
        let mut command = Command::new(&self.binary);
        command.args(["rekey", "--dir"]).arg(&dir);
        if let Some(since) = revoked_since_ms {
            command
                .args(["--compromised", "--since"])
                .arg(topology::admission::rfc3339_ms(since));
        }
        let output = command.output()?;
        if !output.status.success() {
            bail!(
                "rekey {id} failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        let new_key = node::identity::Identity::load(&dir)?.public();
        if !text.contains(&new_key.to_hex()) {
            bail!("rekey {id} did not print its new key:\n{text}");
        }
        let member = self.members.get_mut(&id).expect("node of this cluster");
        let old_key = std::mem::replace(&mut member.public_key, new_key);
        // The [[old_key]] lines it printed, as the operator would paste them.
        let at = text
            .lines()
            .find_map(|line| {
                line.strip_prefix("retired_at = ")
                    .or_else(|| line.strip_prefix("revoked_at = "))
            })
            .and_then(topology::admission::parse_instant)
            .with_context(|| format!("rekey {id} printed no retired_at or revoked_at:\n{text}"))?;
        self.admissions.old_keys.push(topology::OldKey {
            node: id,
            public_key: old_key,
            end: if revoked_since_ms.is_some() {
                topology::KeyEnd::Revoked
            } else {
                topology::KeyEnd::Retired
            },
            at_ms: at,
        });
        Ok(old_key)
    }

    /// The log a node wrote so far (for failure messages).
    pub fn log(&self, id: NodeId) -> String {
        std::fs::read_to_string(self.member(id).dir.join("node.log")).unwrap_or_default()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for member in self.members.values_mut() {
            if let Some(mut child) = member.process.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}
