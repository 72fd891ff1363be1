//! The node's real QUIC + TLS transport over turmoil's simulated UDP.
//!
//! [`TurmoilUdpSocket`] adapts `turmoil::net::UdpSocket` to `quinn::AsyncUdpSocket` (quinn
//! 0.11.12), so `node::transport::endpoint_with_socket` runs unchanged inside a turmoil host;
//! [`node_endpoint`] does that for a node from its key, peer policy and seed. What it
//! guarantees: datagrams pass through whole and in the order turmoil delivers them, one
//! datagram per transmit (no GSO/GRO), no ECN; like a real UDP socket, a send that cannot be
//! routed is dropped, not reported. Nothing here reads the OS clock or randomness: time is
//! turmoil's (tokio's paused clock for QUIC timers, the simulation's epoch plus elapsed time
//! for TLS), randomness comes from the node's seed, so the same seed replays the same bytes.

use std::fmt;
use std::future::Future;
use std::io::{self, IoSliceMut};
use std::net::{Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use node::transport::{self, PeerPolicy, TransportError, TransportSeams};
use protocol::NodeKey;
use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, UdpPoller};

use crate::trace::Trace;

type Readable = Pin<Box<dyn Future<Output = io::Result<()>> + Send>>;

/// A turmoil UDP socket that quinn can drive. Must be made, used and dropped inside a turmoil
/// host (its sends go through the simulated world of the host that runs them).
pub struct TurmoilUdpSocket {
    socket: Arc<turmoil::net::UdpSocket>,
    /// The wait for the next datagram, kept across `poll_recv` calls (turmoil's socket only
    /// offers an async `readable`).
    readable: Mutex<Option<Readable>>,
    trace: Option<Trace>,
}

impl TurmoilUdpSocket {
    /// Binds `addr` on the current turmoil host (`0.0.0.0:port`; port 0 picks one).
    pub async fn bind(addr: SocketAddr) -> io::Result<TurmoilUdpSocket> {
        Ok(TurmoilUdpSocket::new(
            turmoil::net::UdpSocket::bind(addr).await?,
        ))
    }

    pub fn new(socket: turmoil::net::UdpSocket) -> TurmoilUdpSocket {
        TurmoilUdpSocket {
            socket: Arc::new(socket),
            readable: Mutex::new(None),
            trace: None,
        }
    }

    /// Records every datagram sent and received (with its simulated time) in `trace`.
    pub fn with_trace(mut self, trace: Trace) -> TurmoilUdpSocket {
        self.trace = Some(trace);
        self
    }

    fn record(&self, what: &str, peer: SocketAddr, bytes: &[u8]) {
        if let Some(trace) = &self.trace {
            let local = self.socket.local_addr().map(|a| a.port()).unwrap_or(0);
            trace.record(
                &format!("udp {what} :{local} {peer} {}", bytes.len()),
                bytes,
            );
        }
    }
}

impl fmt::Debug for TurmoilUdpSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TurmoilUdpSocket")
            .field("socket", &self.socket)
            .finish_non_exhaustive()
    }
}

/// turmoil's UDP has no send buffer to fill: a socket is always writable.
#[derive(Debug)]
struct AlwaysWritable;

impl UdpPoller for AlwaysWritable {
    fn poll_writable(self: Pin<&mut Self>, _cx: &mut Context) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl AsyncUdpSocket for TurmoilUdpSocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        Box::pin(AlwaysWritable)
    }

    fn try_send(&self, transmit: &Transmit) -> io::Result<()> {
        // `max_transmit_segments` is 1, so this is one datagram; split anyway if not.
        let size = transmit
            .segment_size
            .unwrap_or(transmit.contents.len())
            .max(1);
        if !turmoil::in_simulation() {
            // The simulation is being torn down: the packet is lost, as on a dead host.
            return Ok(());
        }
        for datagram in transmit.contents.chunks(size) {
            self.record("send", transmit.destination, datagram);
            if let Err(error) = self.socket.try_send_to(datagram, transmit.destination) {
                // As quinn-udp does on a real socket: errors other than WouldBlock (turmoil
                // gives ConnectionRefused for an unknown host) are left to QUIC's loss
                // recovery and timeouts.
                tracing::debug!(destination = %transmit.destination, %error, "simulated UDP send dropped");
            }
        }
        Ok(())
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        let mut readable = self.readable.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            let mut received = 0;
            while received < bufs.len().min(meta.len()) {
                match self.socket.try_recv_from(&mut bufs[received]) {
                    Ok((len, from)) => {
                        self.record("recv", from, &bufs[received][..len]);
                        // Default, then fields: RecvMeta grows fields across releases.
                        let m = &mut meta[received];
                        *m = RecvMeta::default();
                        m.addr = from;
                        m.len = len;
                        m.stride = len;
                        received += 1;
                    }
                    // Empty, or the pending `readable` holds the queue: wait below.
                    Err(error) if error.kind() == io::ErrorKind::WouldBlock => break,
                    Err(error) => return Poll::Ready(Err(error)),
                }
            }
            if received > 0 {
                return Poll::Ready(Ok(received));
            }
            let wait = readable.get_or_insert_with(|| {
                let socket = self.socket.clone();
                Box::pin(async move { socket.readable().await })
            });
            match wait.as_mut().poll(cx) {
                Poll::Ready(result) => {
                    *readable = None;
                    result?;
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    fn may_fragment(&self) -> bool {
        // As on Linux, where quinn-udp sets "don't fragment" (so quinn runs MTU discovery).
        false
    }
}

/// A node's endpoint on a turmoil host, with the seams its client configs must use too.
#[derive(Debug)]
pub struct SimEndpoint {
    pub endpoint: quinn::Endpoint,
    /// Seeded randomness and the simulation's clock; dial with
    /// `transport::connect_with(.., &seams)` so dials draw from the same seeded streams.
    pub seams: TransportSeams,
}

/// A node endpoint listening on `port` of the current turmoil host: the node's real QUIC and
/// pinned mutual TLS (`transport::endpoint_with_socket`), accepting clients under `policy`,
/// with every random byte from `seed` and TLS time from the simulation's epoch plus elapsed
/// time. Must be called inside a turmoil host or client.
pub async fn node_endpoint(
    port: u16,
    key: &NodeKey,
    policy: Arc<dyn PeerPolicy>,
    seed: [u8; 32],
    trace: Option<Trace>,
) -> Result<SimEndpoint, TransportError> {
    let addr = SocketAddr::from((Ipv4Addr::UNSPECIFIED, port));
    let mut socket = TurmoilUdpSocket::bind(addr)
        .await
        .map_err(|source| TransportError::Bind { addr, source })?;
    if let Some(trace) = trace {
        socket = socket.with_trace(trace);
    }
    let seams = TransportSeams::seeded(seed, turmoil::since_epoch);
    // turmoil runs each host on a tokio runtime with paused time, and quinn's tokio runtime
    // reads tokio's clock: QUIC timers run on simulated time.
    let endpoint = transport::endpoint_with_socket(
        Arc::new(socket),
        Arc::new(quinn::TokioRuntime),
        key,
        policy,
        &seams,
    )?;
    Ok(SimEndpoint { endpoint, seams })
}
