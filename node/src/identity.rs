//! A node's identity on disk: its id, its Ed25519 key (whose public half the topology file
//! pins), and the network's desensitization key (shared by every node of one network, so
//! person tokens join across counties).
//!
//! Files in the node directory: `node.toml` (id, public key), `node.key` and `network.key`
//! (32 secret bytes each, hex, mode 0600 on Unix). Secrets are never logged.

use std::path::{Path, PathBuf};

use protocol::{DesensitizeKey, NodeId, NodeKey, PublicKey};

#[derive(Debug)]
pub struct Identity {
    pub id: NodeId,
    pub key: NodeKey,
    pub network_key: DesensitizeKey,
}

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("{path}: cannot read: {source}; run `credit-node init --id ID --dir DIR` first")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: cannot write: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Malformed { path: PathBuf, message: String },
    #[error(
        "{path} already exists: this directory already holds node {existing}; use another --dir"
    )]
    Exists { path: PathBuf, existing: String },
    #[error("cannot draw random bytes from the operating system: {0}")]
    Random(String),
}

#[derive(serde::Serialize, serde::Deserialize)]
struct NodeFile {
    id: String,
    public_key: String,
}

impl Identity {
    /// Creates a new identity in `dir`. `network_key` is the network's shared key (the
    /// provincial operator hands it out); `None` draws a new one, for the first node of a network.
    pub fn create(
        dir: &Path,
        id: NodeId,
        network_key: Option<[u8; 32]>,
    ) -> Result<Identity, IdentityError> {
        let node_file = dir.join("node.toml");
        if let Ok(existing) = std::fs::read_to_string(&node_file) {
            return Err(IdentityError::Exists {
                path: node_file,
                existing: existing.lines().next().unwrap_or("").to_owned(),
            });
        }
        std::fs::create_dir_all(dir).map_err(|source| IdentityError::Write {
            path: dir.to_owned(),
            source,
        })?;
        let key = NodeKey::from_seed(random32()?);
        let network = match network_key {
            Some(k) => k,
            None => random32()?,
        };
        write_secret(&dir.join("node.key"), &key.seed())?;
        write_secret(&dir.join("network.key"), &network)?;
        let text = toml::to_string(&NodeFile {
            id: id.to_string(),
            public_key: key.public().to_hex(),
        })
        .expect("plain strings serialize");
        std::fs::write(&node_file, text).map_err(|source| IdentityError::Write {
            path: node_file,
            source,
        })?;
        Ok(Identity {
            id,
            key,
            network_key: DesensitizeKey(network),
        })
    }

    pub fn load(dir: &Path) -> Result<Identity, IdentityError> {
        let node_file = dir.join("node.toml");
        let text = read(&node_file)?;
        let parsed: NodeFile = toml::from_str(&text).map_err(|e| IdentityError::Malformed {
            path: node_file.clone(),
            message: e.to_string(),
        })?;
        let id = NodeId::parse(&parsed.id).map_err(|e| IdentityError::Malformed {
            path: node_file.clone(),
            message: e.to_string(),
        })?;
        let key = NodeKey::from_seed(read_secret(&dir.join("node.key"))?);
        if key.public().to_hex() != parsed.public_key {
            return Err(IdentityError::Malformed {
                path: node_file,
                message: "public_key does not match node.key: restore the matching pair".into(),
            });
        }
        let network_key = DesensitizeKey(read_secret(&dir.join("network.key"))?);
        Ok(Identity {
            id,
            key,
            network_key,
        })
    }

    pub fn public(&self) -> PublicKey {
        self.key.public()
    }

    /// Gives the node in `dir` a new key (rotation, or after a compromise): the old secret is
    /// kept beside it as `node.key.old-<unix ms>` (mode 0600, for the record; the node never
    /// uses it again), the new one written, `node.toml` updated. Returns the old public key
    /// and the new identity. The network key is unchanged.
    pub fn rekey(dir: &Path, now_ms: u64) -> Result<(PublicKey, Identity), IdentityError> {
        let old = Identity::load(dir)?;
        let key_path = dir.join("node.key");
        let kept = dir.join(format!("node.key.old-{now_ms}"));
        write_secret(&kept, &old.key.seed())?;
        let key = NodeKey::from_seed(random32()?);
        let fresh = dir.join("node.key.new");
        let _ = std::fs::remove_file(&fresh);
        write_secret(&fresh, &key.seed())?;
        std::fs::rename(&fresh, &key_path).map_err(|source| IdentityError::Write {
            path: key_path.clone(),
            source,
        })?;
        let node_file = dir.join("node.toml");
        let text = toml::to_string(&NodeFile {
            id: old.id.to_string(),
            public_key: key.public().to_hex(),
        })
        .expect("plain strings serialize");
        std::fs::write(&node_file, text).map_err(|source| IdentityError::Write {
            path: node_file,
            source,
        })?;
        Ok((
            old.key.public(),
            Identity {
                id: old.id,
                key,
                network_key: old.network_key,
            },
        ))
    }
}

pub fn random32() -> Result<[u8; 32], IdentityError> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| IdentityError::Random(e.to_string()))?;
    Ok(bytes)
}

fn read(path: &Path) -> Result<String, IdentityError> {
    std::fs::read_to_string(path).map_err(|source| IdentityError::Read {
        path: path.to_owned(),
        source,
    })
}

pub fn read_secret(path: &Path) -> Result<[u8; 32], IdentityError> {
    let text = read(path)?;
    protocol::ids::parse_hex32(text.trim()).ok_or_else(|| IdentityError::Malformed {
        path: path.to_owned(),
        message: "expected 64 hexadecimal characters".into(),
    })
}

fn write_secret(path: &Path, secret: &[u8; 32]) -> Result<(), IdentityError> {
    let write_error = |source| IdentityError::Write {
        path: path.to_owned(),
        source,
    };
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path).map_err(write_error)?;
    std::io::Write::write_all(&mut file, protocol::ids::hex(secret).as_bytes())
        .map_err(write_error)?;
    file.sync_all().map_err(write_error)
}
