//! Control-stream framing: frames are read with their length checked against
//! [`wire::FRAME_BYTES_MAX`] before a buffer is made, into a bounded queue.

use protocol::wire::{self, Message};
use tokio::sync::mpsc;

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

/// The frame a batch stream carries: the batch, with the proof of its first arrival when the
/// sender did not originate it.
pub(super) fn batch_frame(
    batch: protocol::SignedBatch,
    first_receipt: Option<wire::SignedReceipt>,
) -> Vec<u8> {
    match first_receipt {
        Some(first_receipt) => Message::Forwarded {
            batch,
            first_receipt: Box::new(first_receipt),
        },
        None => Message::Batch(batch),
    }
    .encode()
}

/// Reads one batch stream (capped at a batch frame) and decodes its single `Batch` or
/// `Forwarded` frame.
pub(super) async fn read_batch(
    mut stream: quinn::RecvStream,
) -> Result<(protocol::SignedBatch, Option<wire::SignedReceipt>), String> {
    let bytes = stream
        .read_to_end(wire::FRAME_HEADER_BYTES + wire::BATCH_FRAME_BYTES_MAX)
        .await
        .map_err(|e| format!("reading a batch stream: {e}"))?;
    match wire::decode_frame(&bytes, wire::BATCH_FRAME_BYTES_MAX).map_err(|e| e.to_string())? {
        Some((Message::Batch(signed), used)) if used == bytes.len() => Ok((signed, None)),
        Some((
            Message::Forwarded {
                batch,
                first_receipt,
            },
            used,
        )) if used == bytes.len() => Ok((batch, Some(*first_receipt))),
        Some(_) => Err("a batch stream must carry exactly one Batch or Forwarded frame".into()),
        None => Err("batch stream ended inside a frame".into()),
    }
}
