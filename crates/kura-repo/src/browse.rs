//! Reading snapshots without restoring them: find a path, list a subtree, stream one file.
//! Used by `kura ls` and `kura dump`.

use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use crate::error::{Error, Result};
use crate::format::BlobType;
use crate::repo::IndexedRepo;
use crate::restore::load_fixed_index;
use crate::snapshot::{Content, SnapshotEntry};
use crate::tree::{ChunkRef, Node, NodeKind};

/// The root of a file-tree snapshot as a directory node.
fn root_node(snap: &SnapshotEntry) -> Result<Node> {
    match &snap.snapshot.content {
        Content::Tree { root } => {
            let mut n = Node::new(Vec::new(), NodeKind::Dir);
            n.subtree = Some(*root);
            n.mode = 0o755;
            Ok(n)
        }
        Content::Image(_) => Err(Error::InvalidInput(format!(
            "snapshot {} is an image; it has no file tree",
            snap.id.short()
        ))),
    }
}

/// The node at `path` (absolute within the snapshot; `/` is the root).
pub fn find_node(repo: &IndexedRepo, snap: &SnapshotEntry, path: &Path) -> Result<Node> {
    let mut node = root_node(snap)?;
    for c in path.components() {
        let name = match c {
            Component::RootDir | Component::CurDir => continue,
            Component::Normal(n) => n.as_bytes(),
            _ => {
                return Err(Error::InvalidInput(format!(
                    "path {} must not contain '..'",
                    path.display()
                )));
            }
        };
        let not_found = || Error::PathNotFound {
            snapshot: snap.id.short(),
            path: path.to_path_buf(),
        };
        let sub = match (node.kind, node.subtree) {
            (NodeKind::Dir, Some(sub)) => sub,
            _ => return Err(not_found()),
        };
        let tree = repo.load_tree(&sub)?;
        node = tree
            .nodes
            .into_iter()
            .find(|n| n.name == name)
            .ok_or_else(not_found)?;
    }
    Ok(node)
}

/// Visit `node` (at `path`) and, for directories, everything below it, depth-first in name
/// order.
pub fn walk(
    repo: &IndexedRepo,
    node: &Node,
    path: &Path,
    visit: &mut dyn FnMut(&Path, &Node) -> Result<()>,
) -> Result<()> {
    visit(path, node)?;
    if let (NodeKind::Dir, Some(sub)) = (node.kind, node.subtree) {
        let tree = repo.load_tree(&sub)?;
        for child in &tree.nodes {
            let p: PathBuf = path.join(std::ffi::OsStr::from_bytes(&child.name));
            walk(repo, child, &p, visit)?;
        }
    }
    Ok(())
}

/// List `path` of a snapshot and everything below it.
pub fn list(
    repo: &IndexedRepo,
    snap: &SnapshotEntry,
    path: &Path,
    visit: &mut dyn FnMut(&Path, &Node) -> Result<()>,
) -> Result<()> {
    let node = find_node(repo, snap, path)?;
    let start = if path.as_os_str().is_empty() {
        Path::new("/")
    } else {
        path
    };
    walk(repo, &node, start, visit)
}

/// As [`list`], but a subtree below `path` whose tree cannot be read (damaged or missing)
/// is skipped and reported in `damaged` (its path and why) instead of ending the listing:
/// damage costs only the subtree it names.
pub fn list_reporting(
    repo: &IndexedRepo,
    snap: &SnapshotEntry,
    path: &Path,
    visit: &mut dyn FnMut(&Path, &Node) -> Result<()>,
    damaged: &mut Vec<(PathBuf, String)>,
) -> Result<()> {
    let node = find_node(repo, snap, path)?;
    let start = if path.as_os_str().is_empty() {
        Path::new("/")
    } else {
        path
    };
    walk_reporting(repo, &node, start, visit, damaged)
}

fn walk_reporting(
    repo: &IndexedRepo,
    node: &Node,
    path: &Path,
    visit: &mut dyn FnMut(&Path, &Node) -> Result<()>,
    damaged: &mut Vec<(PathBuf, String)>,
) -> Result<()> {
    visit(path, node)?;
    if let (NodeKind::Dir, Some(sub)) = (node.kind, node.subtree) {
        let tree = match repo.load_tree(&sub) {
            Ok(t) => t,
            Err(e) if e.is_data_damage() => {
                damaged.push((path.to_path_buf(), e.to_string()));
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        for child in &tree.nodes {
            let p: PathBuf = path.join(std::ffi::OsStr::from_bytes(&child.name));
            walk_reporting(repo, child, &p, visit, damaged)?;
        }
    }
    Ok(())
}

/// Write a file's contents (zero runs as zeros) to `out`; every blob is verified.
pub fn dump_file(repo: &IndexedRepo, node: &Node, out: &mut dyn Write) -> Result<u64> {
    if node.kind != NodeKind::File {
        return Err(Error::InvalidInput(format!(
            "{} is a {}, not a file",
            node.name_lossy(),
            node.kind.as_str()
        )));
    }
    let mut written = 0u64;
    let zeros = vec![0u8; 1 << 20];
    for c in node.content.iter().flatten() {
        match c {
            ChunkRef::Blob(id) => {
                let data = repo.read_blob(BlobType::Data, id)?;
                out.write_all(&data)
                    .map_err(|e| Error::io("write output", e))?;
                written += data.len() as u64;
            }
            &ChunkRef::Zero(mut n) => {
                written += n;
                while n > 0 {
                    let k = n.min(zeros.len() as u64) as usize;
                    out.write_all(&zeros[..k])
                        .map_err(|e| Error::io("write output", e))?;
                    n -= k as u64;
                }
            }
        }
    }
    Ok(written)
}

/// Write an image snapshot's bytes to `out`.
pub fn dump_image(repo: &IndexedRepo, snap: &SnapshotEntry, out: &mut dyn Write) -> Result<u64> {
    let Content::Image(info) = &snap.snapshot.content else {
        return Err(Error::InvalidInput(format!(
            "snapshot {} is not an image",
            snap.id.short()
        )));
    };
    let ids = load_fixed_index(repo, info)?;
    let zeros = vec![0u8; info.chunk_size as usize];
    let mut written = 0u64;
    for (i, id) in ids.iter().enumerate() {
        let len =
            (info.chunk_size as u64).min(info.size - i as u64 * info.chunk_size as u64) as usize;
        if id.is_zero() {
            out.write_all(&zeros[..len])
                .map_err(|e| Error::io("write output", e))?;
        } else {
            let data = repo.read_blob(BlobType::Data, id)?;
            if data.len() != len {
                return Err(Error::corrupt(format!("image chunk {i}"), "wrong length"));
            }
            out.write_all(&data)
                .map_err(|e| Error::io("write output", e))?;
        }
        written += len as u64;
    }
    Ok(written)
}
