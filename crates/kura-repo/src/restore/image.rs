//! Image restore: to a regular file (zero chunks become holes) or a block device (zero chunks
//! are written as zeros, since a device is not known to read back zeros).

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, FileTypeExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::fetch::{BlobJob, Sink, fetch_all};
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

fn resolve_target(info: &ImageInfo, target: &Path) -> PathBuf {
    if target.is_dir() {
        let src = Path::new(std::ffi::OsStr::from_bytes(&info.source));
        let name = src
            .file_name()
            .map(|n| n.to_os_string())
            .unwrap_or_else(|| "image".into());
        target.join(name)
    } else {
        target.to_path_buf()
    }
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
    let path = resolve_target(info, target);
    let ctx = |e| Error::io(format!("image target {}", path.display()), e);
    let is_device = std::fs::metadata(&path)
        .map(|m| m.file_type().is_block_device())
        .unwrap_or(false);
    let mut f: File = if is_device {
        OpenOptions::new().write(true).open(&path).map_err(ctx)?
    } else {
        OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .map_err(ctx)?
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
    let mut outcome = RestoreOutcome {
        files: 1,
        bytes: info.size,
        ..Default::default()
    };
    for reason in sink.damaged.into_inner().unwrap_or_default() {
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
