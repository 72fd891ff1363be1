//! Writing a batch file durably: with direct IO where the filesystem takes it, buffered where
//! it does not.
//!
//! A batch file is written once, fsynced, and read again rarely (to send it up, to answer a
//! reconciliation). Buffered, its bytes are first copied into the page cache, and on the
//! virtual machines nodes run on, filling fresh page-cache pages costs far more than the disk
//! (the kernel's `copy_folio_from_iter_atomic`): 2.9 MB written and fsynced took 34–46 ms
//! here buffered and 4–5 ms with `O_DIRECT` (`dd`, twelve files each, 2026-12-04). Direct IO
//! also keeps the batches out of the page cache that the rest of the node (sled, the index's
//! runs) lives in — what databases built for this (TigerBeetle) do throughout.
//!
//! `O_DIRECT` wants the buffer's address, the file offset and the length aligned to the
//! device's logical block: the bytes go through an aligned buffer of at most
//! [`DIRECT_CHUNK`], the last block padded with zeros, and the file is cut back to its length
//! before the fsync. A filesystem without direct IO refuses the open or the write with
//! `EINVAL`: the file is then written buffered, and the store does not try direct IO again.

use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

/// The alignment of direct writes: the buffer's address, offsets and lengths. 4096 serves
/// devices with 512-byte and with 4 KiB logical blocks.
#[cfg(target_os = "linux")]
const DIRECT_ALIGN: usize = 4096;

/// Bytes copied into the aligned buffer and written at a time (a multiple of
/// [`DIRECT_ALIGN`]): what a direct write costs in memory, whatever the batch's size.
#[cfg(target_os = "linux")]
const DIRECT_CHUNK: usize = 1 << 20;

/// How a store writes its batch files: direct IO until the filesystem refuses it once.
#[derive(Debug)]
pub struct FileWriter {
    direct: AtomicBool,
}

impl Default for FileWriter {
    fn default() -> FileWriter {
        FileWriter {
            direct: AtomicBool::new(cfg!(target_os = "linux")),
        }
    }
}

impl FileWriter {
    /// A writer that writes buffered only.
    pub fn buffered() -> FileWriter {
        FileWriter {
            direct: AtomicBool::new(false),
        }
    }

    /// Whether the next write tries direct IO.
    pub fn direct(&self) -> bool {
        self.direct.load(Ordering::Relaxed)
    }

    /// Creates (or truncates) `path`, writes `bytes` and fsyncs the file. The caller renames
    /// it into place and fsyncs the directory.
    pub fn write_synced(&self, path: &Path, bytes: &[u8]) -> std::io::Result<()> {
        #[cfg(target_os = "linux")]
        return self.write_aligned(path, bytes, DIRECT_ALIGN);
        #[cfg(not(target_os = "linux"))]
        write_buffered(path, bytes)
    }

    /// [`FileWriter::write_synced`] with direct writes aligned to `align`.
    #[cfg(target_os = "linux")]
    fn write_aligned(&self, path: &Path, bytes: &[u8], align: usize) -> std::io::Result<()> {
        if self.direct() {
            match write_direct(path, bytes, align) {
                Ok(()) => return Ok(()),
                Err(e) if refused_direct(&e) => {
                    self.direct.store(false, Ordering::Relaxed);
                    tracing::info!(path = %path.display(), error = %e, "the filesystem refuses direct IO: batch files are written through the page cache");
                }
                Err(e) => return Err(e),
            }
        }
        write_buffered(path, bytes)
    }
}

fn write_buffered(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut file = File::create(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

/// Whether `error` is a filesystem refusing direct IO (or its alignment).
#[cfg(target_os = "linux")]
fn refused_direct(error: &std::io::Error) -> bool {
    error.raw_os_error() == Some(rustix::io::Errno::INVAL.raw_os_error())
}

/// [`FileWriter::write_synced`] with `O_DIRECT`, through a buffer aligned to `align` (a
/// power of two; tests pass 1 to make the kernel refuse the alignment).
#[cfg(target_os = "linux")]
fn write_direct(path: &Path, bytes: &[u8], align: usize) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .custom_flags(rustix::fs::OFlags::DIRECT.bits() as i32)
        .open(path)?;
    write_padded_at(&file, bytes, 0, align)?;
    if !bytes.len().is_multiple_of(align) {
        file.set_len(bytes.len() as u64)?;
    }
    file.sync_all()
}

/// Writes `bytes` at `offset` (a multiple of `align`) through a buffer aligned to `align`, at
/// most [`DIRECT_CHUNK`] at a time, the last block padded with zeros: what a file with
/// direct IO takes.
#[cfg(target_os = "linux")]
fn write_padded_at(file: &File, bytes: &[u8], offset: u64, align: usize) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    debug_assert!(align.is_power_of_two() && DIRECT_CHUNK.is_multiple_of(align));
    debug_assert!(offset.is_multiple_of(align as u64));
    let padded = bytes.len().next_multiple_of(align);
    let chunk = DIRECT_CHUNK.min(padded).max(align);
    let mut buffer = vec![0u8; chunk + align];
    let start = buffer.as_ptr().align_offset(align);
    let buffer = &mut buffer[start..start + chunk];
    let mut at = offset;
    for piece in bytes.chunks(chunk) {
        let len = piece.len().next_multiple_of(align);
        buffer[..piece.len()].copy_from_slice(piece);
        buffer[piece.len()..len].fill(0);
        file.write_all_at(&buffer[..len], at)?;
        at += len as u64;
    }
    Ok(())
}

/// Appending to a file whole blocks at a time with direct IO, where its filesystem takes it:
/// for a log written once and rarely read (ingestion's key log), whose bytes would otherwise
/// fill the page cache.
#[derive(Debug, Default)]
pub struct DirectAppend {
    on: bool,
}

impl DirectAppend {
    /// The size of the blocks [`DirectAppend::write_at`] takes.
    pub const BLOCK: usize = 4096;

    /// Turns direct IO on for `file` if its filesystem takes it (else writes stay buffered).
    pub fn start(file: &File) -> DirectAppend {
        DirectAppend {
            on: set_direct(file, true),
        }
    }

    /// Whether writes are direct.
    pub fn on(&self) -> bool {
        self.on
    }

    /// Writes the whole blocks at the start of `bytes` at `offset` (a multiple of
    /// [`DirectAppend::BLOCK`]) with direct IO; returns how many bytes that was (perhaps
    /// none), or `None` when direct IO is off: the caller writes them buffered. A refused
    /// write turns it off.
    pub fn write_at(
        &mut self,
        file: &File,
        bytes: &[u8],
        offset: u64,
    ) -> std::io::Result<Option<usize>> {
        #[cfg(target_os = "linux")]
        if self.on {
            let whole = bytes.len() / Self::BLOCK * Self::BLOCK;
            match write_padded_at(file, &bytes[..whole], offset, Self::BLOCK) {
                Ok(()) => return Ok(Some(whole)),
                Err(e) if refused_direct(&e) => self.stop(file),
                Err(e) => return Err(e),
            }
        }
        let _ = (file, bytes, offset);
        Ok(None)
    }

    /// Turns direct IO off (before the file is read at places not aligned to a block).
    pub fn stop(&mut self, file: &File) {
        if self.on {
            set_direct(file, false);
            self.on = false;
        }
    }
}

/// Sets or clears `O_DIRECT` on an open file; whether it is now as asked.
fn set_direct(file: &File, on: bool) -> bool {
    #[cfg(target_os = "linux")]
    {
        use rustix::fs::{OFlags, fcntl_getfl, fcntl_setfl};
        let Ok(flags) = fcntl_getfl(file) else {
            return false;
        };
        let flags = if on {
            flags | OFlags::DIRECT
        } else {
            flags - OFlags::DIRECT
        };
        fcntl_setfl(file, flags).is_ok()
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = file;
        !on
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lengths around the alignment and the chunk, and a batch's size.
    const LENGTHS: [usize; 10] = [
        0,
        1,
        4095,
        4096,
        4097,
        (1 << 20) - 1,
        1 << 20,
        (1 << 20) + 1,
        3 * (1 << 20) + 4096 + 17,
        2_969_600,
    ];

    fn bytes(len: usize) -> Vec<u8> {
        (0..len).map(|n| (n * 131 + n / 4096) as u8).collect()
    }

    #[test]
    fn a_file_holds_exactly_its_bytes_either_way() {
        let dir = tempfile::tempdir().unwrap();
        for (name, writer) in [
            ("direct", FileWriter::default()),
            ("buffered", FileWriter::buffered()),
        ] {
            for len in LENGTHS {
                let path = dir.path().join(format!("{name}-{len}"));
                // A longer file there before: the write replaces it whole.
                std::fs::write(&path, vec![0xAA; len + 5000]).unwrap();
                let expected = bytes(len);
                writer.write_synced(&path, &expected).unwrap();
                let got = std::fs::read(&path).unwrap();
                assert_eq!(got.len(), len, "{name}, {len} bytes: length");
                assert!(got == expected, "{name}, {len} bytes: content differs");
            }
        }
    }

    /// A direct write the filesystem refuses (here: a buffer and length not aligned to the
    /// block, which ext4 and xfs refuse with `EINVAL`) is written buffered, and the writer
    /// writes buffered from then on.
    #[cfg(target_os = "linux")]
    #[test]
    fn a_refused_direct_write_is_written_buffered() {
        let dir = tempfile::tempdir().unwrap();
        let expected = bytes(10_001);
        let probe = dir.path().join("probe");
        let refused = match write_direct(&probe, &expected, 1) {
            Err(e) if refused_direct(&e) => true,
            Err(e) => panic!("{e}"),
            // Some filesystems (tmpfs, btrfs) take any alignment.
            Ok(()) => false,
        };
        let writer = FileWriter::default();
        assert!(writer.direct());
        let path = dir.path().join("unaligned");
        writer.write_aligned(&path, &expected, 1).unwrap();
        assert!(std::fs::read(&path).unwrap() == expected);
        assert_eq!(writer.direct(), !refused, "refused: {refused}");
        // Aligned, a writer that fell back stays buffered and still writes.
        writer.write_synced(&path, &bytes(7)).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), bytes(7));
    }
}
