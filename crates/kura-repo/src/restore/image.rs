//! Image restore: to a regular file (zero chunks become holes) or a block device (zero chunks
//! are written as zeros, since a device is not known to read back zeros). A file is written
//! under a temporary name and renamed into place when whole, like every restored file.

use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::at::Dir;
use super::fetch::{BlobJob, Sink, fetch_all};
use super::files::partial_name;
use super::{Damaged, RestoreOptions, RestoreOutcome};
use crate::backup::CancelToken;
use crate::error::{Error, Result};
use crate::format::BlobType;
use crate::id::Id;
use crate::image::FixedIndexPiece;
use crate::progress::Progress;
use crate::repo::IndexedRepo;
use crate::snapshot::ImageInfo;

/// The fixed index of an image, validated against the snapshot.
pub(crate) fn load_fixed_index(repo: &IndexedRepo, info: &ImageInfo) -> Result<Vec<Id>> {
    let chunks = info.size.div_ceil(info.chunk_size.max(1) as u64);
    let mut ids = Vec::new();
    for p in &info.pieces {
        let what = format!("fixed index piece {p}");
        let piece = FixedIndexPiece::decode(&repo.read_blob(BlobType::Tree, p)?, &what)?;
        if piece.first != ids.len() as u64
            || piece.size != info.size
            || piece.chunk_size != info.chunk_size
        {
            return Err(Error::corrupt(what, "does not match the snapshot"));
        }
        ids.extend(piece.ids);
    }
    if ids.len() as u64 != chunks {
        return Err(Error::corrupt(
            "image fixed index",
            format!("{} entries for {} chunks", ids.len(), chunks),
        ));
    }
    Ok(ids)
}

/// Where an image goes.
enum Dest {
    /// A block device: written in place (it has no other inode to protect), flushed at the end.
    Device(File),
    /// A regular file, written as `NAME.kura-partial` in `dir` and renamed over `NAME` when
    /// whole (an existing file there — or a symlink, or a hard link to a file elsewhere — is
    /// replaced, never written through).
    File {
        dir: Dir,
        name: OsString,
        tmp: OsString,
        file: File,
    },
}

/// Decide where the image goes. A directory target gets the image under its source's name
/// (a symlink of that name is replaced, not followed); a file target's last component is
/// followed only when it leads to a block device.
fn open_dest(info: &ImageInfo, target: &Path) -> Result<(Dest, PathBuf)> {
    let ctx =
        |what: &str, p: &Path, e| Error::io(format!("image target {what} {}", p.display()), e);
    let (dir, name) = match std::fs::metadata(target) {
        Ok(m) if m.file_type().is_block_device() => {
            // Non-blocking, so a FIFO swapped in cannot hang the open.
            let f = OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(target)
                .map_err(|e| ctx("device", target, e))?;
            // What was opened is what is written: the path may have been swapped between
            // the check above and the open (a symlink pointed at a regular file elsewhere).
            let opened = f.metadata().map_err(|e| ctx("device", target, e))?;
            if !opened.file_type().is_block_device() || opened.rdev() != m.rdev() {
                return Err(Error::InvalidInput(format!(
                    "image target {} changed while it was opened (no longer the block device \
                     it was); nothing was written",
                    target.display()
                )));
            }
            rustix::fs::fcntl_setfl(&f, rustix::fs::OFlags::empty())
                .map_err(|e| ctx("device", target, e.into()))?;
            return Ok((Dest::Device(f), target.to_path_buf()));
        }
        Ok(m) if m.is_dir() => {
            let src = Path::new(std::ffi::OsStr::from_bytes(&info.source));
            let name = src
                .file_name()
                .map(|n| n.to_os_string())
                .unwrap_or_else(|| "image".into());
            (
                Dir::open_target(target).map_err(|e| ctx("directory", target, e))?,
                name,
            )
        }
        _ => {
            if std::fs::symlink_metadata(target).is_ok_and(|m| m.file_type().is_symlink()) {
                return Err(Error::InvalidInput(format!(
                    "image target {} is a symlink to something that is not a block device; \
                     give the path it points to",
                    target.display()
                )));
            }
            let name = target.file_name().ok_or_else(|| {
                Error::InvalidInput(format!("image target {} names no file", target.display()))
            })?;
            let parent = match target.parent() {
                Some(p) if !p.as_os_str().is_empty() => p,
                _ => Path::new("."),
            };
            let dir = Dir::open_target(parent).map_err(|e| ctx("directory", parent, e))?;
            (dir, name.to_os_string())
        }
    };
    let path = target.join(&name);
    let path = if target.is_dir() {
        path
    } else {
        target.to_path_buf()
    };
    // A block device already there (not a symlink to one) is written in place.
    if let Some(e) = dir.entry(&name).map_err(|e| ctx("", &path, e))? {
        if e.kind == rustix::fs::FileType::BlockDevice {
            let f = dir
                .open_device(&name, e.ident)
                .map_err(|e| ctx("device", &path, e))?;
            return Ok((Dest::Device(f), path));
        }
        if e.is_dir() {
            return Err(Error::InvalidInput(format!(
                "image target {} is a directory",
                path.display()
            )));
        }
    }
    let tmp = partial_name(name.as_bytes(), None);
    dir.unlink(&tmp).map_err(|e| ctx("", &path, e))?;
    let (file, _) = dir.create_file(&tmp).map_err(|e| ctx("", &path, e))?;
    Ok((
        Dest::File {
            dir,
            name,
            tmp,
            file,
        },
        path,
    ))
}

pub(super) fn restore_image(
    repo: &IndexedRepo,
    info: &ImageInfo,
    target: &Path,
    opts: &RestoreOptions,
    progress: &dyn Progress,
    cancel: &CancelToken,
) -> Result<RestoreOutcome> {
    let ids = load_fixed_index(repo, info)?;
    let (dest, path) = open_dest(info, target)?;
    let ctx = |e| Error::io(format!("image target {}", path.display()), e);
    let (mut f, is_device) = match &dest {
        Dest::Device(f) => (f.try_clone().map_err(ctx)?, true),
        Dest::File { file, .. } => (file.try_clone().map_err(ctx)?, false),
    };
    if is_device {
        let dev_size = f.seek(SeekFrom::End(0)).map_err(ctx)?;
        if dev_size < info.size {
            return Err(Error::InvalidInput(format!(
                "device {} has {dev_size} bytes, the image needs {}",
                path.display(),
                info.size
            )));
        }
    } else {
        f.set_len(info.size).map_err(ctx)?;
    }
    progress.start("restore", Some(info.size));
    let cs = info.chunk_size as u64;
    let mut jobs: std::collections::HashMap<Id, Vec<(u32, u64)>> = Default::default();
    let mut zero_chunks = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        let off = i as u64 * cs;
        if id.is_zero() {
            zero_chunks.push(off);
        } else {
            jobs.entry(*id).or_default().push((0, off));
        }
    }
    if is_device {
        let zeros = vec![0u8; cs as usize];
        for off in zero_chunks {
            cancel.check()?;
            let len = cs.min(info.size - off) as usize;
            f.write_all_at(&zeros[..len], off).map_err(ctx)?;
            progress.advance(len as u64, 0);
        }
    }
    let sink = ImageSink {
        file: &f,
        sparse: !is_device,
        damaged: Mutex::new(Vec::new()),
    };
    let jobs = jobs
        .into_iter()
        .map(|(id, dests)| BlobJob { id, dests })
        .collect();
    fetch_all(repo, jobs, &sink, opts.threads, progress, cancel)?;
    if is_device {
        // A device is reported restored only once its cache is flushed (as `dd conv=fsync`);
        // files, like every restored file tree, are left to the page cache.
        f.sync_all().map_err(ctx)?;
    }
    progress.finish();
    let damaged = sink.damaged.into_inner().unwrap_or_default();
    let mut outcome = RestoreOutcome {
        bytes: info.size,
        ..Default::default()
    };
    if let Dest::File { dir, name, tmp, .. } = &dest {
        if damaged.is_empty() {
            dir.rename(tmp, name).map_err(ctx)?;
        } else {
            outcome
                .partial
                .push(path.with_file_name(tmp).display().to_string());
        }
    }
    if damaged.is_empty() {
        outcome.files = 1;
    }
    for reason in damaged {
        outcome.damaged.push(Damaged {
            path: path.display().to_string(),
            reason,
        });
    }
    Ok(outcome)
}

struct ImageSink<'a> {
    file: &'a File,
    /// A fresh regular file: zero blocks may stay holes. (A device must get every byte.)
    sparse: bool,
    damaged: Mutex<Vec<String>>,
}

impl Sink for ImageSink<'_> {
    fn write(&self, _dest: u32, offset: u64, data: &[u8]) -> std::io::Result<()> {
        if self.sparse {
            super::fetch::write_sparse(self.file, offset, data)
        } else {
            self.file.write_all_at(data, offset)
        }
    }

    fn damaged(&self, _dest: u32, reason: String) {
        if let Ok(mut d) = self.damaged.lock() {
            d.push(reason);
        }
    }
}

/// Something an image is restored into other than a path: a volume through its engine's
/// write path, an NBD export. Called from several threads at once.
pub trait ImageTarget: Sync {
    /// Its size in bytes (at least the image's; bytes past the image are left alone).
    fn size(&self) -> u64;
    /// Write `data` at `offset`.
    fn write_at(&self, offset: u64, data: &[u8]) -> std::io::Result<()>;
    /// Make `[offset, offset + len)` read as zeros without sending or writing zero bytes
    /// where the target can (a punched hole, NBD `WRITE_ZEROES`).
    fn write_zeroes(&self, offset: u64, len: u64) -> std::io::Result<()>;
    /// Make everything written durable.
    fn flush(&self) -> std::io::Result<()>;
}

/// Restore the image `info` into `target`: zero chunks (and aligned 4 KiB zero blocks inside
/// other chunks) become [`ImageTarget::write_zeroes`], everything else is written. Damaged
/// blobs are reported in the outcome (`damaged`), their ranges left as they were; the target
/// is flushed only when everything was restored.
pub fn restore_image_into(
    repo: &IndexedRepo,
    _lock: &crate::lock::RepoLock<crate::lock::Shared>,
    info: &ImageInfo,
    target: &dyn ImageTarget,
    threads: usize,
    progress: &dyn Progress,
    cancel: &CancelToken,
) -> Result<RestoreOutcome> {
    if target.size() < info.size {
        return Err(Error::InvalidInput(format!(
            "the target has {} bytes, the image needs {}",
            target.size(),
            info.size
        )));
    }
    let ids = load_fixed_index(repo, info)?;
    let ctx = |e| Error::io("image target", e);
    progress.start("restore", Some(info.size));
    let cs = info.chunk_size as u64;
    let mut jobs: std::collections::HashMap<Id, Vec<(u32, u64)>> = Default::default();
    // Runs of zero chunks, coalesced: one request each.
    let mut zero_runs: Vec<(u64, u64)> = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        let off = i as u64 * cs;
        if id.is_zero() {
            let len = cs.min(info.size - off);
            match zero_runs.last_mut() {
                Some((o, l)) if *o + *l == off => *l += len,
                _ => zero_runs.push((off, len)),
            }
        } else {
            jobs.entry(*id).or_default().push((0, off));
        }
    }
    for (off, len) in zero_runs {
        cancel.check()?;
        // Bounded requests: a whole empty terabyte is not one call.
        let mut at = off;
        while at < off + len {
            let n = (off + len - at).min(1 << 30);
            target.write_zeroes(at, n).map_err(ctx)?;
            progress.advance(n, 0);
            at += n;
        }
    }
    let sink = TargetSink {
        target,
        damaged: Mutex::new(Vec::new()),
    };
    let jobs = jobs
        .into_iter()
        .map(|(id, dests)| BlobJob { id, dests })
        .collect();
    fetch_all(repo, jobs, &sink, threads.max(1), progress, cancel)?;
    let damaged = sink.damaged.into_inner().unwrap_or_default();
    if damaged.is_empty() {
        target.flush().map_err(ctx)?;
    }
    progress.finish();
    let mut outcome = RestoreOutcome {
        bytes: info.size,
        files: u64::from(damaged.is_empty()),
        ..Default::default()
    };
    for reason in damaged {
        outcome.damaged.push(Damaged {
            path: "image".into(),
            reason,
        });
    }
    Ok(outcome)
}

struct TargetSink<'a> {
    target: &'a dyn ImageTarget,
    damaged: Mutex<Vec<String>>,
}

impl Sink for TargetSink<'_> {
    /// Aligned 4 KiB blocks of zeros go as zeroing (holes stay holes where the old content
    /// was data), the rest as writes.
    fn write(&self, _dest: u32, offset: u64, data: &[u8]) -> std::io::Result<()> {
        const BLOCK: u64 = 4096;
        let end = offset + data.len() as u64;
        fn part(data: &[u8], offset: u64, a: u64, b: u64) -> &[u8] {
            &data[(a - offset) as usize..(b - offset) as usize]
        }
        let slice = |a: u64, b: u64| part(data, offset, a, b);
        // (start, zero?) of the current run.
        let mut run: Option<(u64, bool)> = None;
        let mut pos = offset;
        while pos < end {
            let next = ((pos / BLOCK) + 1) * BLOCK;
            let next = next.min(end);
            let full = pos.is_multiple_of(BLOCK) && next - pos == BLOCK;
            let zero = full && crate::chunker::is_zero(slice(pos, next));
            match run {
                Some((s, z)) if z != zero => {
                    if z {
                        self.target.write_zeroes(s, pos - s)?;
                    } else {
                        self.target.write_at(s, slice(s, pos))?;
                    }
                    run = Some((pos, zero));
                }
                None => run = Some((pos, zero)),
                _ => {}
            }
            pos = next;
        }
        if let Some((s, z)) = run {
            if z {
                self.target.write_zeroes(s, end - s)?;
            } else {
                self.target.write_at(s, slice(s, end))?;
            }
        }
        Ok(())
    }

    fn damaged(&self, _dest: u32, reason: String) {
        if let Ok(mut d) = self.damaged.lock() {
            d.push(reason);
        }
    }
}
