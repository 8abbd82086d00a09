//! Image backup: a regular file (with `--image`) or a block device, cut into fixed 4 MiB
//! chunks at aligned offsets. Readers take chunk numbers from a shared counter and `pread`
//! them, so both cores hash while the saver compresses; all-zero chunks are recorded as the
//! zero id and never stored. With changed-block tracking ([`Reuse`]), chunks that did not
//! change since the parent image are taken from its fixed index without being read.

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, FileTypeExt, OpenOptionsExt};
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use serde_bytes::ByteBuf;

use super::saver::Saver;
use super::{BackupOptions, CancelToken};
use crate::chunker::{FIXED_CHUNK_SIZE, is_zero};
use crate::error::{Error, Result};
use crate::format::BlobType;
use crate::id::Id;
use crate::image::{FixedIndexPiece, PIECE_ENTRIES};
use crate::progress::Progress;
use crate::snapshot::{ImageInfo, Summary};

/// Whether `path` is backed up as an image: block devices always, regular files with
/// `--image`.
pub(super) fn is_image_source(path: &Path, image_flag: bool) -> Result<bool> {
    let md =
        std::fs::metadata(path).map_err(|e| Error::io(format!("source {}", path.display()), e))?;
    let ft = md.file_type();
    if ft.is_block_device() {
        return Ok(true);
    }
    if image_flag {
        if ft.is_file() {
            return Ok(true);
        }
        return Err(Error::InvalidInput(format!(
            "--image needs a regular file or block device; {} is neither",
            path.display()
        )));
    }
    Ok(false)
}

/// True when `[off, off+len)` of a regular file is entirely a hole (`SEEK_DATA` finds no data
/// before its end). File systems without hole reporting say "data everywhere", which is safe.
fn is_hole(f: &File, off: u64, len: u64) -> bool {
    use std::os::fd::AsRawFd;
    let Ok(start) = libc::off_t::try_from(off) else {
        return false;
    };
    // SAFETY: lseek on a valid descriptor; pread is positional, so moving the offset is harmless.
    let next = unsafe { libc::lseek(f.as_raw_fd(), start, libc::SEEK_DATA) };
    if next < 0 {
        // ENXIO: no data at or after `off` at all.
        return std::io::Error::last_os_error().raw_os_error() == Some(libc::ENXIO);
    }
    next as u64 >= off + len
}

/// What an incremental image backup takes from its parent: the parent's geometry and fixed
/// index, and the byte ranges that changed since it.
pub(super) struct Reuse {
    pub parent_size: u64,
    pub parent_chunk: u32,
    pub ids: Vec<Id>,
    pub changed: Vec<(u64, u64)>,
}

impl Reuse {
    /// Per chunk of an image of `size` bytes: the parent's id when the chunk did not change.
    fn kept(&self, size: u64) -> Result<Vec<Option<Id>>> {
        let cs = FIXED_CHUNK_SIZE as u64;
        if self.parent_size != size || self.parent_chunk as u64 != cs {
            return Err(Error::InvalidInput(format!(
                "the parent image is {} bytes in {}-byte chunks, this one {size} in {cs}: \
                 changed ranges do not apply",
                self.parent_size, self.parent_chunk
            )));
        }
        let mut kept: Vec<Option<Id>> = self.ids.iter().copied().map(Some).collect();
        for &(off, len) in &self.changed {
            if len == 0 || kept.is_empty() {
                continue;
            }
            let first = off / cs;
            let last = (off.saturating_add(len) - 1) / cs;
            for n in first..=last.min(kept.len() as u64 - 1) {
                kept[n as usize] = None;
            }
        }
        Ok(kept)
    }
}

/// Open an image source without blocking (a FIFO or tape device named by mistake must not
/// hang the open) and check through the descriptor that it is a regular file or a block
/// device before anything is read; blocking mode is then restored.
fn open_image(path: &Path) -> std::io::Result<File> {
    let flags = libc::O_NONBLOCK | libc::O_NOCTTY;
    let f = OpenOptions::new()
        .read(true)
        .custom_flags(flags | libc::O_NOATIME)
        .open(path)
        .or_else(|_| OpenOptions::new().read(true).custom_flags(flags).open(path))?;
    let ft = f.metadata()?.file_type();
    if !(ft.is_file() || ft.is_block_device()) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a regular file or block device; not read",
        ));
    }
    super::source::set_blocking(&f)?;
    Ok(f)
}

pub(super) fn backup_image(
    saver: &Saver<'_>,
    path: &Path,
    opts: &BackupOptions,
    reuse: Option<&Reuse>,
    progress: &dyn Progress,
    cancel: &CancelToken,
) -> Result<(ImageInfo, Summary)> {
    let ctx = |e| Error::io(format!("image source {}", path.display()), e);
    let mut f = open_image(path).map_err(ctx)?;
    let device = f.metadata().map_err(ctx)?.file_type().is_block_device();
    let through = opts.image_source.as_ref().map(|r| &r.0);
    let size = match through {
        Some(src) => src.size(),
        None => f.seek(SeekFrom::End(0)).map_err(ctx)?,
    };
    let cs = FIXED_CHUNK_SIZE as u64;
    let count = size.div_ceil(cs);
    let count_usize =
        usize::try_from(count).map_err(|_| Error::InvalidInput("image too large".into()))?;
    progress.start("backup", Some(size));
    let kept = match reuse {
        // A parent chunk only a condemned pack holds is read and stored again.
        Some(r) => r
            .kept(size)?
            .into_iter()
            .map(|k| k.filter(|id| id.is_zero() || saver.has_live(BlobType::Data, id)))
            .collect(),
        None => vec![None; count_usize],
    };
    let ids = Mutex::new(vec![Id::ZERO; count_usize]);
    let next = AtomicU64::new(0);
    let bytes_read = AtomicU64::new(0);
    let readers = opts.readers.max(1);

    std::thread::scope(|s| -> Result<()> {
        let mut handles = Vec::new();
        for i in 0..readers {
            let (f, ids, next, bytes_read, kept) = (&f, &ids, &next, &bytes_read, &kept);
            let through = through.map(|a| a.as_ref());
            handles.push(
                std::thread::Builder::new()
                    .name(format!("kura-image-read-{i}"))
                    .spawn_scoped(s, move || -> Result<()> {
                        loop {
                            cancel.check()?;
                            let n = next.fetch_add(1, Ordering::Relaxed);
                            if n >= count {
                                return Ok(());
                            }
                            let off = n * cs;
                            let len = cs.min(size - off) as usize;
                            if let Some(id) = kept[n as usize] {
                                // Unchanged since the parent: its chunk, without reading.
                                ids.lock().map_err(|_| Error::Interrupted)?[n as usize] = id;
                                progress.advance(len as u64, 0);
                                continue;
                            }
                            if through.is_none() && !device && is_hole(f, off, len as u64) {
                                // A hole in a sparse image: zeros, known without reading.
                                progress.advance(len as u64, 0);
                                continue;
                            }
                            let mut buf = saver.pool().get(len);
                            match through {
                                Some(src) => src.read_at(off, &mut buf),
                                None => f.read_exact_at(&mut buf, off),
                            }
                            .map_err(|e| {
                                Error::io(format!("read {} at offset {off}", path.display()), e)
                            })?;
                            bytes_read.fetch_add(len as u64, Ordering::Relaxed);
                            if is_zero(&buf) {
                                saver.pool().put(buf);
                            } else {
                                let (id, new) = saver.save(BlobType::Data, buf)?;
                                if new {
                                    progress.new_data(len as u64);
                                }
                                ids.lock().map_err(|_| Error::Interrupted)?[n as usize] = id;
                            }
                            progress.advance(len as u64, 0);
                        }
                    })
                    .map_err(|e| Error::io("spawn image reader", e))?,
            );
        }
        let mut first = None;
        for h in handles {
            if let Err(e) = h.join().map_err(|_| Error::Interrupted)? {
                first.get_or_insert(e);
            }
        }
        first.map_or(Ok(()), Err)
    })?;
    let ids = ids.into_inner().map_err(|_| Error::Interrupted)?;
    let mut pieces = Vec::new();
    for (i, part) in ids.chunks(PIECE_ENTRIES).enumerate() {
        let piece = FixedIndexPiece {
            size,
            chunk_size: FIXED_CHUNK_SIZE as u32,
            first: (i * PIECE_ENTRIES) as u64,
            ids: part.to_vec(),
        };
        pieces.push(saver.save(BlobType::Tree, piece.encode())?.0);
    }
    progress.finish();
    let summary = Summary {
        files_new: 1,
        total_bytes: size,
        bytes_read: bytes_read.load(Ordering::Relaxed),
        ..Summary::default()
    };
    let info = ImageInfo {
        source: ByteBuf::from(path.as_os_str().as_bytes().to_vec()),
        size,
        chunk_size: FIXED_CHUNK_SIZE as u32,
        device,
        pieces,
    };
    Ok((info, summary))
}
