//! QUIC with mutual TLS where each side is pinned by the topology file.
//!
//! Each node's certificate is self-signed with its Ed25519 identity key. A node dialing its
//! parent accepts the server only if the certificate's key is the one pinned for the parent;
//! a node accepting a connection accepts the client only if its key is pinned for a node the
//! current topology lets connect (its children). The key is read with a real X.509 parser
//! (webpki), and the TLS handshake signature is checked against that same key.
//!
//! Traps avoided (CRATES.md 3, 4, 6): TLS session resumption is disabled on clients and
//! servers send no tickets, so a re-keyed or removed peer can never resume its way in; refusal
//! by the server shows on the client's first stream operation, which callers must expect; the
//! ring provider is passed explicitly everywhere.

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use protocol::{NodeId, NodeKey, PublicKey};
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use topology::Topology;

/// The ALPN protocol name of the credit sync protocol.
pub const ALPN: &[u8] = b"credit-sync/1";
/// The name every node presents and expects; identity comes from the pinned key, not names.
const SERVER_NAME: &str = "credit-node";
pub const KEEP_ALIVE: Duration = Duration::from_secs(2);
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// Batch streams a peer may have open at once.
pub const STREAMS_MAX: u32 = 32;

/// The topology a running node acts on; replaced whole on reload.
pub type SharedTopology = Arc<RwLock<Arc<Topology>>>;

pub fn current(topology: &SharedTopology) -> Arc<Topology> {
    topology
        .read()
        .expect("topology lock is never poisoned")
        .clone()
}

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("cannot make the node certificate: {0}")]
    Certificate(String),
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    #[error("QUIC configuration: {0}")]
    Quic(String),
    #[error("cannot listen on {addr}: {source}; is another node using that port?")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The node's self-signed certificate and private key, made from its identity key.
pub fn certificate(
    key: &NodeKey,
) -> Result<(CertificateDer<'static>, PrivateKeyDer<'static>), TransportError> {
    use ed25519_dalek::pkcs8::EncodePrivateKey;
    let signing = ed25519_dalek::SigningKey::from_bytes(&key.seed());
    let pkcs8 = signing
        .to_pkcs8_der()
        .map_err(|e| TransportError::Certificate(e.to_string()))?;
    let der = PrivatePkcs8KeyDer::from(pkcs8.as_bytes().to_vec());
    let pair =
        rcgen::KeyPair::try_from(&der).map_err(|e| TransportError::Certificate(e.to_string()))?;
    let params = rcgen::CertificateParams::new(vec![SERVER_NAME.to_owned()])
        .map_err(|e| TransportError::Certificate(e.to_string()))?;
    let cert = params
        .self_signed(&pair)
        .map_err(|e| TransportError::Certificate(e.to_string()))?;
    Ok((cert.der().clone(), PrivateKeyDer::Pkcs8(der)))
}

/// The Ed25519 key of a certificate, read with webpki's X.509 parser.
pub fn certificate_key(cert: &CertificateDer<'_>) -> Option<PublicKey> {
    // DER of an Ed25519 SubjectPublicKeyInfo: SEQUENCE { SEQUENCE { OID 1.3.101.112 }, BIT STRING }.
    const ED25519_SPKI_PREFIX: [u8; 12] = [
        0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
    ];
    let parsed = webpki::EndEntityCert::try_from(cert).ok()?;
    let spki = parsed.subject_public_key_info();
    let bytes: &[u8] = spki.as_ref();
    let key = bytes.strip_prefix(&ED25519_SPKI_PREFIX[..])?;
    Some(PublicKey(key.try_into().ok()?))
}

fn verify_signature(
    message: &[u8],
    cert: &CertificateDer<'_>,
    dss: &DigitallySignedStruct,
) -> Result<HandshakeSignatureValid, rustls::Error> {
    rustls::crypto::verify_tls13_signature(
        message,
        cert,
        dss,
        &provider().signature_verification_algorithms,
    )
}

/// Client side: the server must hold the key pinned for the node we dial.
#[derive(Debug)]
struct PinnedServer {
    node: NodeId,
    key: PublicKey,
}

impl ServerCertVerifier for PinnedServer {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match certificate_key(end_entity) {
            Some(key) if key == self.key => Ok(ServerCertVerified::assertion()),
            Some(key) => {
                tracing::warn!(peer = %self.node, presented = %key, pinned = %self.key, "refused server: key is not the one pinned in the topology");
                Err(rustls::Error::General(format!(
                    "server key {key} is not the key pinned for {} in the topology",
                    self.node
                )))
            }
            None => Err(rustls::Error::General(
                "server certificate has no Ed25519 key".into(),
            )),
        }
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General("TLS 1.2 is not used".into()))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }
}

/// Which keys may connect to this node: decided against the current topology at every
/// handshake, so a reload takes effect for the next connection.
pub trait PeerPolicy: Send + Sync + std::fmt::Debug {
    /// The node a client key belongs to, if it may connect to us.
    fn allowed_client(&self, key: &PublicKey) -> Option<NodeId>;
}

/// Server side: the client must hold a key the policy allows.
#[derive(Debug)]
struct PinnedClients {
    policy: Arc<dyn PeerPolicy>,
}

impl ClientCertVerifier for PinnedClients {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let Some(key) = certificate_key(end_entity) else {
            tracing::warn!("refused client: certificate has no Ed25519 key");
            return Err(rustls::Error::General(
                "client certificate has no Ed25519 key".into(),
            ));
        };
        match self.policy.allowed_client(&key) {
            Some(_) => Ok(ClientCertVerified::assertion()),
            None => {
                tracing::warn!(key = %key, "refused client: key is not pinned for any node allowed to connect here");
                Err(rustls::Error::General(format!(
                    "client key {key} is not pinned in the topology"
                )))
            }
        }
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General("TLS 1.2 is not used".into()))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }
}

fn transport_config() -> Arc<quinn::TransportConfig> {
    let mut config = quinn::TransportConfig::default();
    config.keep_alive_interval(Some(KEEP_ALIVE));
    config.max_idle_timeout(Some(
        IDLE_TIMEOUT
            .try_into()
            .expect("10 s is a valid idle timeout"),
    ));
    config.max_concurrent_uni_streams(STREAMS_MAX.into());
    config.max_concurrent_bidi_streams(4u32.into());
    // Batches are up to 64 MiB: let one stream and the connection keep a large window in
    // flight on fast links.
    config.stream_receive_window((16u32 * 1024 * 1024).into());
    config.receive_window((64u32 * 1024 * 1024).into());
    config.send_window(64 * 1024 * 1024);
    Arc::new(config)
}

/// The server side: listens for children.
pub fn server_config(
    key: &NodeKey,
    policy: Arc<dyn PeerPolicy>,
) -> Result<quinn::ServerConfig, TransportError> {
    let (cert, private) = certificate(key)?;
    let mut tls = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(Arc::new(PinnedClients { policy }))
        .with_single_cert(vec![cert], private)?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    tls.send_tls13_tickets = 0;
    tls.max_early_data_size = 0;
    let crypto =
        QuicServerConfig::try_from(tls).map_err(|e| TransportError::Quic(e.to_string()))?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    config.transport_config(transport_config());
    Ok(config)
}

/// The client side: dials one pinned peer. Made afresh for every dial, with the pin current
/// at that moment; resumption is off so nothing of an earlier session is reused.
pub fn client_config(
    key: &NodeKey,
    peer: NodeId,
    peer_key: PublicKey,
) -> Result<quinn::ClientConfig, TransportError> {
    let (cert, private) = certificate(key)?;
    let mut tls = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PinnedServer {
            node: peer,
            key: peer_key,
        }))
        .with_client_auth_cert(vec![cert], private)?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    tls.resumption = rustls::client::Resumption::disabled();
    tls.enable_early_data = false;
    let crypto =
        QuicClientConfig::try_from(tls).map_err(|e| TransportError::Quic(e.to_string()))?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    config.transport_config(transport_config());
    Ok(config)
}

/// A QUIC endpoint bound to `addr` that accepts children under `policy` and can dial out.
pub fn endpoint(
    addr: SocketAddr,
    key: &NodeKey,
    policy: Arc<dyn PeerPolicy>,
) -> Result<quinn::Endpoint, TransportError> {
    quinn::Endpoint::server(server_config(key, policy)?, addr)
        .map_err(|source| TransportError::Bind { addr, source })
}

/// Connects to `peer` at `addr`, pinned to `peer_key`.
pub async fn connect(
    endpoint: &quinn::Endpoint,
    key: &NodeKey,
    peer: NodeId,
    addr: SocketAddr,
    peer_key: PublicKey,
) -> Result<quinn::Connection, String> {
    let config = client_config(key, peer, peer_key).map_err(|e| e.to_string())?;
    let connecting = endpoint
        .connect_with(config, addr, SERVER_NAME)
        .map_err(|e| e.to_string())?;
    connecting.await.map_err(|e| e.to_string())
}

/// The pinned key a connected peer proved it holds.
pub fn peer_key(connection: &quinn::Connection) -> Option<PublicKey> {
    let identity = connection.peer_identity()?;
    let certs = identity.downcast::<Vec<CertificateDer<'static>>>().ok()?;
    certificate_key(certs.first()?)
}

/// Children of this node in the current topology may connect (and, at the national platform,
/// nodes with a legacy direct link).
#[derive(Debug)]
pub struct ChildrenPolicy {
    pub me: NodeId,
    pub topology: SharedTopology,
}

impl PeerPolicy for ChildrenPolicy {
    fn allowed_client(&self, key: &PublicKey) -> Option<NodeId> {
        let topology = current(&self.topology);
        let node = topology.node_by_key(key)?;
        may_connect(&topology, self.me, node.id).then_some(node.id)
    }
}

pub use crate::core::may_connect;
