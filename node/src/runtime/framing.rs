//! Framing: control frames are read with their length checked against
//! [`wire::FRAME_BYTES_MAX`] before a buffer is made, into a bounded queue; a batch stream's
//! one frame is read only once its declared length is charged to the node's byte budget for
//! batch streams ([`BatchBudget`], which also counts frames: [`RECEIVES_MAX`]) and to its
//! link's share, and within read deadlines, so no child — and no number of children — can
//! make this node hold more than the budget in batch frames, and a stalled stream is stopped
//! rather than held.

use std::sync::Arc;
use std::time::Duration;

use protocol::wire::{self, Message};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::time::Instant;

/// Control frames buffered from a peer before the reader waits.
pub(super) const CONTROL_QUEUE: usize = 64;

/// Reads control frames into a bounded channel; ends on error or end of stream (a frame that
/// does not decode is passed on as an error, and ends the reader).
pub(super) fn spawn_reader(mut recv: quinn::RecvStream, tx: mpsc::Sender<Result<Message, String>>) {
    tokio::spawn(async move {
        let mut header = [0u8; wire::FRAME_HEADER_BYTES];
        loop {
            if recv.read_exact(&mut header).await.is_err() {
                return;
            }
            let result = match wire::payload_length(header, wire::FRAME_BYTES_MAX) {
                Err(e) => Err(e.to_string()),
                Ok(length) => {
                    let mut payload = vec![0u8; length];
                    match recv.read_exact(&mut payload).await {
                        Err(_) => return,
                        Ok(()) => wire::decode_payload(&payload).map_err(|e| e.to_string()),
                    }
                }
            };
            let fatal = result.is_err();
            if tx.send(result).await.is_err() || fatal {
                return;
            }
        }
    });
}

/// Writes the core's frames for one link to its control stream, in order; closes the
/// connection if the stream fails. Ends when the link is unregistered.
pub(super) async fn writer(
    mut send: quinn::SendStream,
    mut frames: mpsc::UnboundedReceiver<Message>,
    connection: quinn::Connection,
) {
    while let Some(message) = frames.recv().await {
        if let Err(e) = send.write_all(&message.encode()).await {
            connection.close(1u32.into(), format!("control stream: {e}").as_bytes());
            return;
        }
    }
}

/// No byte of a batch stream for this long (its header, the next bytes of its frame, or its
/// end after the frame): the stream is stopped and the child offers the batch again.
pub(super) const BATCH_STALL: Duration = Duration::from_secs(10);
/// The slowest a link may deliver the batch frames it is sending.
pub(super) const BATCH_RATE_MIN_BYTES_PER_S: u64 = 256 * 1024;
/// How long a batch frame may take once its reading starts, whatever its size: a link's
/// share lets at most one largest frame's bytes be read at once, so a link that delivers at
/// least [`BATCH_RATE_MIN_BYTES_PER_S`] (2 Mbit/s) brings every frame in within this,
/// however its batches are sized and however many are read side by side (10 s + 64 MiB at
/// 256 KiB/s: 266 s). A child that trickles its bytes holds its share no longer than that.
pub(super) const BATCH_FRAME_DEADLINE: Duration = Duration::from_secs(
    BATCH_STALL.as_secs() + wire::BATCH_FRAME_BYTES_MAX as u64 / BATCH_RATE_MIN_BYTES_PER_S,
);
/// What a batch frame of `n` payload bytes is charged while it is read and handled: its
/// buffer, and as much again for decoding it. A batch frame is decoded in place (its buffer
/// becomes the batch's bytes), but anything else a child puts on a batch stream is decoded
/// into a copy before it is refused; half the charge comes back once the frame is decoded.
const fn charge(payload_bytes: usize) -> usize {
    2 * payload_bytes
}
/// The most one link may hold charged at once: one largest batch frame. Half the budget, so
/// one child can never hold all of it.
pub(super) const LINK_SHARE_BYTES: usize = charge(wire::BATCH_FRAME_BYTES_MAX);
/// The node-wide budget for batch streams being read, over all links: two largest frames,
/// each charged twice (256 MiB + 16 KiB). Batch frame bytes this node holds from the network, in buffers and
/// decoded batches not yet handled by the core, never exceed it (QUIC's own buffers are
/// bounded per connection by the transport's receive windows).
pub(super) const BATCH_BUDGET_BYTES: usize = 2 * LINK_SHARE_BYTES;
/// Batch frames read, or read and waiting for the core, at once over all links: twice a
/// link's read slots, so one child holds at most half of them (as with the bytes), and
/// further streams wait unread inside QUIC's windows (≤ 1 MiB each). The core handles one
/// batch at a time (~20 MB/s measured here), so a few read ahead keep it fed. Before this
/// cap every link read its 4 ahead and only the bytes bounded them: measured, a province
/// receiving 3.3 MB batches from 21 cities at once peaked at 777–843 MiB RSS, 579–606 MiB
/// with it.
pub(super) const RECEIVES_MAX: usize = 2 * super::links::RECEIVES_PER_LINK;
/// The application error code a batch stream is stopped with.
const STREAM_STOPPED: u32 = 1;

/// The node-wide budget for batch streams being read: [`BATCH_BUDGET_BYTES`], and
/// [`RECEIVES_MAX`] frames (semaphores, fair: the first to ask is the first served).
#[derive(Debug, Clone)]
pub(super) struct BatchBudget {
    bytes: Arc<Semaphore>,
    frames: Arc<Semaphore>,
}

impl BatchBudget {
    pub(super) fn new() -> Self {
        BatchBudget {
            bytes: Arc::new(Semaphore::new(BATCH_BUDGET_BYTES)),
            frames: Arc::new(Semaphore::new(RECEIVES_MAX)),
        }
    }
}

/// One link's share of the budget: how many bytes it may hold charged at once.
#[derive(Debug, Clone)]
pub(super) struct LinkShare(Arc<Semaphore>);

impl LinkShare {
    pub(super) fn new() -> Self {
        LinkShare(Arc::new(Semaphore::new(LINK_SHARE_BYTES)))
    }
}

/// Bytes charged to the link's share and to the node's budget, and one of the node's
/// [`RECEIVES_MAX`] frames; given back when dropped.
#[derive(Debug)]
pub(super) struct Charge {
    link: OwnedSemaphorePermit,
    _frame: OwnedSemaphorePermit,
    node: OwnedSemaphorePermit,
}

impl Charge {
    async fn take(bytes: usize, link: &LinkShare, node: &BatchBudget) -> Charge {
        let permits = u32::try_from(bytes).expect("a charge is at most two batch frames");
        // The link's share first: a link's streams queue behind each other there, so what one
        // link waits for in the node's queues never exceeds its share (nor its read slots).
        let link = link.0.clone().acquire_many_owned(permits).await;
        let frame = node.frames.clone().acquire_owned().await;
        let node = node.bytes.clone().acquire_many_owned(permits).await;
        Charge {
            link: link.expect("the link's share is never closed"),
            _frame: frame.expect("the budget is never closed"),
            node: node.expect("the budget is never closed"),
        }
    }

    /// Gives back `bytes` of the charge.
    fn release(&mut self, bytes: usize) {
        drop(self.link.split(bytes));
        drop(self.node.split(bytes));
    }
}

/// Why a batch stream was not read; the stream is stopped and the child offers the batch
/// again.
#[derive(Debug, thiserror::Error)]
pub(super) enum BatchStreamError {
    #[error(
        "no byte of {what} for {} s: stream stopped (the child offers the batch again)",
        BATCH_STALL.as_secs()
    )]
    Stalled { what: &'static str },
    #[error(
        "a batch frame of {length} bytes was not in after {} s (the link delivered less than {} KiB/s): stream stopped",
        BATCH_FRAME_DEADLINE.as_secs(),
        BATCH_RATE_MIN_BYTES_PER_S / 1024
    )]
    TooSlow { length: usize },
    #[error("reading a batch stream: {0}")]
    Read(#[from] quinn::ReadError),
    #[error("batch stream ended inside its frame")]
    Ended,
    #[error("bad batch frame: {0}")]
    Frame(#[from] wire::FrameError),
    #[error("a batch stream must carry exactly one Batch or Forwarded frame ({0})")]
    NotOneFrame(&'static str),
}

/// A batch read from its stream, still charged to the budget until dropped.
#[derive(Debug)]
pub(super) struct ReadBatch {
    pub(super) batch: protocol::SignedBatch,
    pub(super) first_receipt: Option<wire::SignedReceipt>,
    pub(super) charge: Charge,
}

/// Reads one batch stream's single `Batch` or `Forwarded` frame: the header (checked against
/// [`wire::BATCH_FRAME_BYTES_MAX`]), then — once the frame is charged to the link's share and
/// the node's budget — the payload, within the read deadlines; the stream must end right
/// after the frame. On error the stream is stopped.
pub(super) async fn read_batch(
    mut stream: quinn::RecvStream,
    share: &LinkShare,
    budget: &BatchBudget,
) -> Result<ReadBatch, BatchStreamError> {
    let result = read_batch_frame(&mut stream, share, budget).await;
    if result.is_err() {
        // Tells the sender at once; the stream's flow-control credit comes back with it.
        let _ = stream.stop(STREAM_STOPPED.into());
    }
    result
}

async fn read_batch_frame(
    stream: &mut quinn::RecvStream,
    share: &LinkShare,
    budget: &BatchBudget,
) -> Result<ReadBatch, BatchStreamError> {
    let mut header = [0u8; wire::FRAME_HEADER_BYTES];
    read_full(stream, &mut header, None, "the frame header").await?;
    let length = wire::payload_length(header, wire::BATCH_FRAME_BYTES_MAX)?;
    let mut charge = Charge::take(charge(length), share, budget).await;
    // Zeroed memory is mapped lazily: a frame declared large and never sent costs nothing
    // but its charge.
    let mut payload = vec![0u8; length];
    read_full(
        stream,
        &mut payload,
        Some(Instant::now() + BATCH_FRAME_DEADLINE),
        "the frame",
    )
    .await?;
    // The frame must be the stream's last byte.
    let mut extra = [0u8; 1];
    match tokio::time::timeout(BATCH_STALL, stream.read(&mut extra)).await {
        Err(_) => {
            return Err(BatchStreamError::Stalled {
                what: "the end of the stream",
            });
        }
        Ok(Err(e)) => return Err(e.into()),
        Ok(Ok(Some(_))) => return Err(BatchStreamError::NotOneFrame("bytes after the frame")),
        Ok(Ok(None)) => {}
    }
    // Decoded in place: a batch's bytes stay in the buffer they were read into.
    let message = wire::decode_batch_payload(payload);
    charge.release(length);
    match message? {
        Message::Batch(batch) => Ok(ReadBatch {
            batch,
            first_receipt: None,
            charge,
        }),
        Message::Forwarded {
            batch,
            first_receipt,
        } => Ok(ReadBatch {
            batch,
            first_receipt: Some(*first_receipt),
            charge,
        }),
        _ => Err(BatchStreamError::NotOneFrame("another kind of frame")),
    }
}

/// Fills `buffer` from the stream: each read must bring bytes within [`BATCH_STALL`], and the
/// whole must be in by `deadline` if there is one.
async fn read_full(
    stream: &mut quinn::RecvStream,
    buffer: &mut [u8],
    deadline: Option<Instant>,
    what: &'static str,
) -> Result<(), BatchStreamError> {
    let mut filled = 0;
    while filled < buffer.len() {
        let stall = Instant::now() + BATCH_STALL;
        let until = deadline.map_or(stall, |d| d.min(stall));
        let read = tokio::time::timeout_at(until, stream.read(&mut buffer[filled..]));
        match read.await {
            Ok(Ok(Some(n))) => filled += n,
            Ok(Ok(None)) => return Err(BatchStreamError::Ended),
            Ok(Err(e)) => return Err(e.into()),
            Err(_) if deadline.is_some_and(|d| d <= stall) => {
                return Err(BatchStreamError::TooSlow {
                    length: buffer.len(),
                });
            }
            Err(_) => return Err(BatchStreamError::Stalled { what }),
        }
    }
    Ok(())
}
