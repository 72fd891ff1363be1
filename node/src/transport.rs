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
//!
//! **Seams for simulation.** Where randomness and wall-clock time come from is a
//! [`TransportSeams`] value. The production functions ([`server_config`], [`client_config`],
//! [`endpoint`], [`connect`]) use [`TransportSeams::os`] and nothing else: ring's OS randomness,
//! the system clock, quinn's own random keys. [`TransportSeams::seeded`] is reachable only
//! through the explicit `*_with` constructors ([`server_config_with`], [`client_config_with`],
//! [`endpoint_with_socket`], [`connect_with`]): every random byte QUIC and TLS use (TLS randoms,
//! X25519 ephemeral keys, connection ids, reset and token keys, quinn's endpoint rng) is then
//! drawn from BLAKE3 streams derived from one seed, and wall-clock time comes from a clock
//! function, so a node's real QUIC + TLS stack runs over a simulated network (turmoil) and
//! replays bit for bit. [`endpoint_with_socket`] takes any `quinn::AsyncUdpSocket` and
//! `quinn::Runtime`; QUIC timers follow the runtime's clock (tokio's, paused under turmoil).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use curve25519_dalek::montgomery::MontgomeryPoint;
use protocol::{NodeId, NodeKey, PublicKey};
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{
    ActiveKeyExchange, CryptoProvider, GetRandomFailed, SecureRandom, SharedSecret,
    SupportedKxGroup,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::time_provider::{DefaultTimeProvider, TimeProvider};
use rustls::{DigitallySignedStruct, DistinguishedName, NamedGroup, SignatureScheme};
use topology::Topology;

/// The ALPN protocol name of the credit sync protocol.
pub const ALPN: &[u8] = b"credit-sync/1";
/// The name every node presents and expects; identity comes from the pinned key, not names.
const SERVER_NAME: &str = "credit-node";
pub const KEEP_ALIVE: Duration = Duration::from_secs(2);
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// Batch streams a child may have open at once on its connection: the sender keeps at most
/// its window (8) of batches in flight, so more would only be more unread data to hold.
pub const STREAMS_MAX: u32 = 8;
/// Bytes a peer may send on one stream ahead of what this node has read. It bounds what QUIC
/// holds for a stream the runtime has not started reading (a batch stream waiting for the
/// byte budget): at most [`STREAMS_MAX`] batch streams and the control stream, so per
/// connection at most 9 MiB of unread stream data — below [`RECEIVE_WINDOW`], so batch
/// streams left unread never take the control stream's share of the connection's window.
/// One window a round trip is ~33 MB/s a stream at 30 ms, 8 streams ~260 MB/s; a hop
/// verifies ~50 MB/s.
pub const STREAM_RECEIVE_WINDOW: u32 = 1024 * 1024;
/// Bytes a peer may send on the whole connection ahead of what this node has read (a
/// backstop: the stream windows already bound it at 9 MiB).
pub const RECEIVE_WINDOW: u32 = 12 * 1024 * 1024;
/// Bytes QUIC buffers for sending on one connection (the receiver lets at most
/// [`RECEIVE_WINDOW`] be in flight, so more would only be held longer).
pub const SEND_WINDOW: u64 = 16 * 1024 * 1024;

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
    #[error("cannot make a QUIC endpoint on the given socket: {0}")]
    Socket(std::io::Error),
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Where QUIC and TLS take their randomness and wall-clock time from.
///
/// [`TransportSeams::os`] (also the `Default`) is production: ring's OS randomness, the system
/// clock, and quinn's own randomly keyed configs. [`TransportSeams::seeded`] is for
/// deterministic simulation only: every random byte comes from BLAKE3 output streams derived
/// from the seed, and wall-clock time from the given clock function. Clones share the streams,
/// so the several configs built for one endpoint (its server config, a client config per dial)
/// keep drawing fresh bytes from one stream; the draws happen in the order the (deterministic)
/// simulation makes them.
#[derive(Clone, Default)]
pub struct TransportSeams {
    seeded: Option<Seeded>,
}

#[derive(Clone)]
struct Seeded {
    seed: [u8; 32],
    /// TLS randomness and X25519 ephemeral keys. rustls takes these as `&'static`, so one is
    /// leaked per [`TransportSeams::seeded`] call (a few hundred bytes per simulated endpoint).
    tls: &'static SeededTls,
    /// Connection ids: every generator quinn makes from the endpoint config, and the initial
    /// destination ids of client configs.
    cids: Arc<SeededStream>,
    clock: Arc<SimClock>,
}

// BLAKE3 key-derivation contexts, one per use of the seed.
const SEED_TLS: &str = "credit-network/sim/tls-random/v1";
const SEED_CIDS: &str = "credit-network/sim/quic-cids/v1";
const SEED_QUIC_RNG: &str = "credit-network/sim/quic-endpoint-rng/v1";
const SEED_RESET_KEY: &str = "credit-network/sim/quic-reset-key/v1";
const SEED_TOKEN_KEY: &str = "credit-network/sim/quic-token-key/v1";

impl TransportSeams {
    /// OS randomness and the system clock: what every production path uses.
    pub fn os() -> Self {
        Self::default()
    }

    /// Deterministic randomness from `seed` and wall-clock time from `wall_clock` (the time
    /// since the Unix epoch; `None` if it cannot be told). For simulation only: two endpoints
    /// must not share a seed, and the same seed replays the same bytes.
    pub fn seeded(
        seed: [u8; 32],
        wall_clock: impl Fn() -> Option<Duration> + Send + Sync + 'static,
    ) -> Self {
        let tls: &'static SeededTls = Box::leak(Box::new(SeededTls {
            stream: SeededStream::new(SEED_TLS, &seed),
        }));
        Self {
            seeded: Some(Seeded {
                seed,
                tls,
                cids: Arc::new(SeededStream::new(SEED_CIDS, &seed)),
                clock: Arc::new(SimClock {
                    now: Box::new(wall_clock),
                }),
            }),
        }
    }

    /// The seed, if these seams are seeded.
    pub fn seed(&self) -> Option<[u8; 32]> {
        self.seeded.as_ref().map(|s| s.seed)
    }

    /// The seed of quinn's endpoint rng (`EndpointConfig::rng_seed`), if seeded.
    pub fn rng_seed(&self) -> Option<[u8; 32]> {
        self.seeded
            .as_ref()
            .map(|s| blake3::derive_key(SEED_QUIC_RNG, &s.seed))
    }

    /// The rustls crypto provider: ring, with the seeded randomness and X25519 if seeded.
    pub fn crypto_provider(&self) -> Arc<CryptoProvider> {
        let mut provider = rustls::crypto::ring::default_provider();
        if let Some(seeded) = &self.seeded {
            provider.secure_random = seeded.tls;
            provider.kx_groups = vec![seeded.tls];
        }
        Arc::new(provider)
    }

    /// The rustls time provider: the system clock, or the seeded seams' clock.
    pub fn time_provider(&self) -> Arc<dyn TimeProvider> {
        match &self.seeded {
            Some(seeded) => seeded.clock.clone(),
            None => Arc::new(DefaultTimeProvider),
        }
    }
}

impl std::fmt::Debug for TransportSeams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.seeded {
            None => f.write_str("TransportSeams::os"),
            Some(seeded) => write!(
                f,
                "TransportSeams::seeded({})",
                blake3::Hash::from_bytes(seeded.seed).to_hex()
            ),
        }
    }
}

/// A deterministic byte stream: BLAKE3's extendable output, keyed from a seed and a context.
struct SeededStream(Mutex<blake3::OutputReader>);

impl SeededStream {
    fn new(context: &str, seed: &[u8; 32]) -> Self {
        let mut hasher = blake3::Hasher::new_derive_key(context);
        hasher.update(seed);
        Self(Mutex::new(hasher.finalize_xof()))
    }

    fn fill(&self, buf: &mut [u8]) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .fill(buf);
    }

    fn array<const N: usize>(&self) -> [u8; N] {
        let mut out = [0; N];
        self.fill(&mut out);
        out
    }
}

impl std::fmt::Debug for SeededStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SeededStream")
    }
}

/// Seeded TLS randomness, and X25519 whose ephemeral keys come from it (ring's key exchange
/// draws its keys from the OS, bypassing the provider's `secure_random`).
#[derive(Debug)]
struct SeededTls {
    stream: SeededStream,
}

impl SecureRandom for SeededTls {
    fn fill(&self, buf: &mut [u8]) -> Result<(), GetRandomFailed> {
        self.stream.fill(buf);
        Ok(())
    }
}

impl SupportedKxGroup for SeededTls {
    fn start(&self) -> Result<Box<dyn ActiveKeyExchange>, rustls::Error> {
        let private = self.stream.array::<32>();
        let public = MontgomeryPoint::mul_base_clamped(private).to_bytes();
        Ok(Box::new(SeededX25519 { private, public }))
    }

    fn name(&self) -> NamedGroup {
        NamedGroup::X25519
    }
}

/// One X25519 exchange (RFC 7748) with a seeded private key.
struct SeededX25519 {
    private: [u8; 32],
    public: [u8; 32],
}

impl ActiveKeyExchange for SeededX25519 {
    fn complete(self: Box<Self>, peer_pub_key: &[u8]) -> Result<SharedSecret, rustls::Error> {
        let invalid = || rustls::Error::from(rustls::PeerMisbehaved::InvalidKeyShare);
        let peer: [u8; 32] = peer_pub_key.try_into().map_err(|_| invalid())?;
        let shared = MontgomeryPoint(peer).mul_clamped(self.private).to_bytes();
        // A low-order peer point gives the all-zero secret; refuse it as ring does.
        if shared == [0; 32] {
            return Err(invalid());
        }
        Ok(SharedSecret::from(&shared[..]))
    }

    fn pub_key(&self) -> &[u8] {
        &self.public
    }

    fn group(&self) -> NamedGroup {
        NamedGroup::X25519
    }
}

/// Seeded 8-byte connection ids (quinn's default generators draw from the OS).
struct SeededCids {
    stream: Arc<SeededStream>,
}

impl quinn::ConnectionIdGenerator for SeededCids {
    fn generate_cid(&mut self) -> quinn::ConnectionId {
        quinn::ConnectionId::new(&self.stream.array::<8>())
    }

    fn cid_len(&self) -> usize {
        8
    }

    fn cid_lifetime(&self) -> Option<Duration> {
        None
    }
}

/// Wall-clock time from a function, for rustls and for quinn's token timestamps.
struct SimClock {
    now: Box<dyn Fn() -> Option<Duration> + Send + Sync>,
}

impl std::fmt::Debug for SimClock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SimClock")
    }
}

impl TimeProvider for SimClock {
    fn current_time(&self) -> Option<UnixTime> {
        (self.now)().map(UnixTime::since_unix_epoch)
    }
}

impl quinn::TimeSource for SimClock {
    fn now(&self) -> SystemTime {
        let since_epoch = (self.now)().unwrap_or_else(|| {
            tracing::warn!("simulated clock has no time here; using the Unix epoch");
            Duration::ZERO
        });
        UNIX_EPOCH + since_epoch
    }
}

/// The QUIC endpoint configuration: quinn's defaults, or, if seeded, the same with the
/// endpoint rng, the stateless-reset key and the connection-id generator drawn from the seed.
pub fn endpoint_config(seams: &TransportSeams) -> quinn::EndpointConfig {
    let Some(seeded) = &seams.seeded else {
        return quinn::EndpointConfig::default();
    };
    let reset_key = ring::hmac::Key::new(
        ring::hmac::HMAC_SHA256,
        &blake3::derive_key(SEED_RESET_KEY, &seeded.seed),
    );
    let mut config = quinn::EndpointConfig::new(Arc::new(reset_key));
    config.rng_seed(seams.rng_seed());
    let cids = seeded.cids.clone();
    config.cid_generator(move || {
        Box::new(SeededCids {
            stream: cids.clone(),
        })
    });
    config
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

/// Which end of a link a transport config is for: it decides which streams the peer may open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// The parent: a child opens one control stream and a batch stream per batch.
    Accepting,
    /// The child: the parent opens no stream (it answers on the child's control stream).
    Dialing,
}

fn transport_config(end: End) -> Arc<quinn::TransportConfig> {
    let mut config = quinn::TransportConfig::default();
    config.keep_alive_interval(Some(KEEP_ALIVE));
    config.max_idle_timeout(Some(
        IDLE_TIMEOUT
            .try_into()
            .expect("10 s is a valid idle timeout"),
    ));
    let (uni, bidi) = match end {
        End::Accepting => (STREAMS_MAX, 1u32),
        End::Dialing => (0, 0),
    };
    config.max_concurrent_uni_streams(uni.into());
    config.max_concurrent_bidi_streams(bidi.into());
    // What a peer can make this node hold in QUIC's buffers: see the constants.
    config.stream_receive_window(STREAM_RECEIVE_WINDOW.into());
    config.receive_window(RECEIVE_WINDOW.into());
    config.send_window(SEND_WINDOW);
    Arc::new(config)
}

/// The server side: listens for children.
pub fn server_config(
    key: &NodeKey,
    policy: Arc<dyn PeerPolicy>,
) -> Result<quinn::ServerConfig, TransportError> {
    server_config_with(key, policy, &TransportSeams::os())
}

/// [`server_config`] with randomness and time from `seams`; with [`TransportSeams::os`] it is
/// exactly [`server_config`].
pub fn server_config_with(
    key: &NodeKey,
    policy: Arc<dyn PeerPolicy>,
    seams: &TransportSeams,
) -> Result<quinn::ServerConfig, TransportError> {
    let (cert, private) = certificate(key)?;
    let mut tls =
        rustls::ServerConfig::builder_with_details(seams.crypto_provider(), seams.time_provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(Arc::new(PinnedClients { policy }))
            .with_single_cert(vec![cert], private)?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    tls.send_tls13_tickets = 0;
    tls.max_early_data_size = 0;
    let crypto =
        Arc::new(QuicServerConfig::try_from(tls).map_err(|e| TransportError::Quic(e.to_string()))?);
    let mut config = match &seams.seeded {
        None => quinn::ServerConfig::with_crypto(crypto),
        Some(seeded) => {
            let token_key = ring::hkdf::Salt::new(ring::hkdf::HKDF_SHA256, &[])
                .extract(&blake3::derive_key(SEED_TOKEN_KEY, &seeded.seed));
            let mut config = quinn::ServerConfig::new(crypto, Arc::new(token_key));
            config.time_source(seeded.clock.clone());
            config
        }
    };
    config.transport_config(transport_config(End::Accepting));
    Ok(config)
}

/// The client side: dials one pinned peer. Made afresh for every dial, with the pin current
/// at that moment; resumption is off so nothing of an earlier session is reused.
pub fn client_config(
    key: &NodeKey,
    peer: NodeId,
    peer_key: PublicKey,
) -> Result<quinn::ClientConfig, TransportError> {
    client_config_with(key, peer, peer_key, &TransportSeams::os())
}

/// [`client_config`] with randomness and time from `seams`; with [`TransportSeams::os`] it is
/// exactly [`client_config`].
pub fn client_config_with(
    key: &NodeKey,
    peer: NodeId,
    peer_key: PublicKey,
    seams: &TransportSeams,
) -> Result<quinn::ClientConfig, TransportError> {
    let (cert, private) = certificate(key)?;
    let mut tls =
        rustls::ClientConfig::builder_with_details(seams.crypto_provider(), seams.time_provider())
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
    config.transport_config(transport_config(End::Dialing));
    if let Some(seeded) = &seams.seeded {
        // 20 bytes, as quinn's default provider makes them.
        let cids = seeded.cids.clone();
        config.initial_dst_cid_provider(Arc::new(move || {
            quinn::ConnectionId::new(&cids.array::<20>())
        }));
    }
    Ok(config)
}

/// A QUIC endpoint bound to `addr` that accepts children under `policy` and can dial out.
pub fn endpoint(
    addr: SocketAddr,
    key: &NodeKey,
    policy: Arc<dyn PeerPolicy>,
) -> Result<quinn::Endpoint, TransportError> {
    // What `quinn::Endpoint::server` does, through `endpoint_with_socket`.
    let bind = |source| TransportError::Bind { addr, source };
    let server = server_config(key, policy)?;
    let socket = std::net::UdpSocket::bind(addr).map_err(bind)?;
    let runtime = quinn::default_runtime()
        .ok_or_else(|| bind(std::io::Error::other("no async runtime found")))?;
    let socket = runtime.wrap_udp_socket(socket).map_err(bind)?;
    quinn::Endpoint::new_with_abstract_socket(
        endpoint_config(&TransportSeams::os()),
        Some(server),
        socket,
        runtime,
    )
    .map_err(bind)
}

/// A QUIC endpoint on any socket and runtime (e.g. a simulated network's), accepting children
/// under `policy`, with randomness and time from `seams`. QUIC timers follow
/// `runtime.now()`; under turmoil pass `quinn::TokioRuntime` (turmoil runs tokio with paused,
/// simulated time). Must be called inside that runtime.
pub fn endpoint_with_socket(
    socket: Arc<dyn quinn::AsyncUdpSocket>,
    runtime: Arc<dyn quinn::Runtime>,
    key: &NodeKey,
    policy: Arc<dyn PeerPolicy>,
    seams: &TransportSeams,
) -> Result<quinn::Endpoint, TransportError> {
    let server = server_config_with(key, policy, seams)?;
    quinn::Endpoint::new_with_abstract_socket(endpoint_config(seams), Some(server), socket, runtime)
        .map_err(TransportError::Socket)
}

/// Connects to `peer` at `addr`, pinned to `peer_key`.
pub async fn connect(
    endpoint: &quinn::Endpoint,
    key: &NodeKey,
    peer: NodeId,
    addr: SocketAddr,
    peer_key: PublicKey,
) -> Result<quinn::Connection, String> {
    connect_with(endpoint, key, peer, addr, peer_key, &TransportSeams::os()).await
}

/// [`connect`] with the client config made by [`client_config_with`] from `seams`.
///
/// Success means the handshake finished on our side; if the server refuses our certificate,
/// that shows on the first stream operation (CRATES.md trap 4).
pub async fn connect_with(
    endpoint: &quinn::Endpoint,
    key: &NodeKey,
    peer: NodeId,
    addr: SocketAddr,
    peer_key: PublicKey,
    seams: &TransportSeams,
) -> Result<quinn::Connection, String> {
    let config = client_config_with(key, peer, peer_key, seams).map_err(|e| e.to_string())?;
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
