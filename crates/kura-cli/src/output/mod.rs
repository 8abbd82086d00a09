//! Human and JSON renderings of listings. Pure functions of their input, so snapshot tests
//! (insta) pin the formats.

pub mod catalog;

use kura_repo::snapshot::{Content, SnapshotEntry};
use kura_repo::tree::{Node, NodeKind};
use kura_repo::util::Timestamp;
use serde_json::{Value, json};

/// `1.5 GiB`-style sizes.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.2} {}", UNITS[u])
    }
}

fn local(t: chrono::DateTime<chrono::Utc>) -> String {
    t.with_timezone(&chrono::Local)
        .format("%Y-%m-%d %H:%M:%S")
        .to_string()
}

/// Local time `YYYY-MM-DD HH:MM:SS`.
pub fn local_time(t: Timestamp) -> String {
    t.to_chrono().map(local).unwrap_or_else(|| t.to_rfc3339())
}

/// Local time `YYYY-MM-DD HH:MM:SS` of milliseconds since the epoch (the catalog's times).
pub fn local_ms(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(local)
        .unwrap_or_else(|| ms.to_string())
}

/// RFC 3339 (UTC, milliseconds) of milliseconds since the epoch, for JSON.
pub fn rfc3339_ms(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_else(|| ms.to_string())
}

/// A plain text table: columns padded to their widest cell.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(c.chars().count());
            }
        }
    }
    let line = |cells: Vec<&str>| -> String {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<w$}  ", w = widths[i]));
            }
        }
        s.trim_end().to_string()
    };
    let mut out = line(header.to_vec());
    out.push('\n');
    out.push_str(&"-".repeat(widths.iter().sum::<usize>() + 2 * (widths.len().saturating_sub(1))));
    out.push('\n');
    for r in rows {
        out.push_str(&line(r.iter().map(String::as_str).collect()));
        out.push('\n');
    }
    out
}

pub fn snapshot_table(snaps: &[SnapshotEntry], time: impl Fn(Timestamp) -> String) -> String {
    let rows: Vec<Vec<String>> = snaps
        .iter()
        .map(|s| {
            let sn = &s.snapshot;
            vec![
                s.id.short(),
                time(sn.time),
                sn.host.clone(),
                sn.tags.join(","),
                if sn.is_image() { "image" } else { "files" }.to_string(),
                bytes(sn.summary.total_bytes),
                sn.paths_lossy().join(" "),
            ]
        })
        .collect();
    let mut out = table(
        &["ID", "Time", "Host", "Tags", "Kind", "Size", "Paths"],
        &rows,
    );
    out.push_str(&format!("{} snapshot(s)\n", snaps.len()));
    out
}

pub fn snapshot_json(s: &SnapshotEntry) -> Value {
    let sn = &s.snapshot;
    let mut v = json!({
        "id": s.id.to_hex(),
        "short_id": s.id.short(),
        "time": sn.time.to_rfc3339(),
        "host": sn.host,
        "username": sn.username,
        "paths": sn.paths_lossy(),
        "tags": sn.tags,
        "parent": sn.parent.map(|p| p.to_hex()),
        "kind": if sn.is_image() { "image" } else { "files" },
        "summary": summary_json(&sn.summary),
    });
    match &sn.content {
        Content::Tree { root } => v["tree"] = json!(root.to_hex()),
        Content::Image(i) => {
            v["image"] = json!({
                "source": String::from_utf8_lossy(&i.source),
                "size": i.size,
                "chunk_size": i.chunk_size,
                "device": i.device,
            })
        }
    }
    v
}

/// A snapshot's summary as reports carry it.
pub fn backup_summary(s: &kura_repo::snapshot::Summary) -> kura_types::BackupSummary {
    kura_types::BackupSummary {
        backup_start: s.backup_start.to_rfc3339(),
        backup_end: s.backup_end.to_rfc3339(),
        files_new: s.files_new,
        files_changed: s.files_changed,
        files_unmodified: s.files_unmodified,
        dirs: s.dirs,
        other_entries: s.other_entries,
        total_bytes: s.total_bytes,
        bytes_read: s.bytes_read,
        data_blobs_new: s.data_blobs_new,
        tree_blobs_new: s.tree_blobs_new,
        bytes_added_raw: s.bytes_added_raw,
        bytes_added: s.bytes_added,
        warnings: s.warnings,
        files_changed_while_read: s.files_changed_while_read,
    }
}

pub fn summary_json(s: &kura_repo::snapshot::Summary) -> Value {
    json!(backup_summary(s))
}

/// `drwxr-xr-x`-style mode string.
pub fn mode_string(kind: NodeKind, mode: u32) -> String {
    let t = match kind {
        NodeKind::File => '-',
        NodeKind::Dir => 'd',
        NodeKind::Symlink => 'l',
        NodeKind::Blockdev => 'b',
        NodeKind::Chardev => 'c',
        NodeKind::Fifo => 'p',
        NodeKind::Socket => 's',
    };
    let mut s = String::with_capacity(10);
    s.push(t);
    let bits = [
        (0o400, 'r'),
        (0o200, 'w'),
        (0o100, 'x'),
        (0o040, 'r'),
        (0o020, 'w'),
        (0o010, 'x'),
        (0o004, 'r'),
        (0o002, 'w'),
        (0o001, 'x'),
    ];
    for (i, (bit, c)) in bits.iter().enumerate() {
        let mut ch = if mode & bit != 0 { *c } else { '-' };
        let special = match i {
            2 => Some((0o4000, 's', 'S')),
            5 => Some((0o2000, 's', 'S')),
            8 => Some((0o1000, 't', 'T')),
            _ => None,
        };
        if let Some((sbit, with_x, without_x)) = special
            && mode & sbit != 0
        {
            ch = if mode & bit != 0 { with_x } else { without_x };
        }
        s.push(ch);
    }
    s
}

pub fn node_line(path: &str, n: &Node, long: bool, time: impl Fn(Timestamp) -> String) -> String {
    if !long {
        return path.to_string();
    }
    let mut line = format!(
        "{} {:>5} {:>5} {:>12} {} {}",
        mode_string(n.kind, n.mode),
        n.uid,
        n.gid,
        n.size,
        time(n.mtime),
        path
    );
    if let Some(t) = &n.target {
        line.push_str(" -> ");
        line.push_str(&String::from_utf8_lossy(t));
    }
    line
}

pub fn node_json(path: &str, n: &Node) -> Value {
    let mut v = json!({
        "path": path,
        "name": n.name_lossy(),
        "type": n.kind.as_str(),
        "mode": n.mode,
        "uid": n.uid,
        "gid": n.gid,
        "size": n.size,
        "mtime": n.mtime.to_rfc3339(),
        "ctime": n.ctime.to_rfc3339(),
        "inode": n.inode,
        "links": n.links,
    });
    if let Some(t) = &n.target {
        v["target"] = json!(String::from_utf8_lossy(t));
    }
    if !n.xattrs.is_empty() {
        v["xattrs"] = json!(
            n.xattrs
                .iter()
                .map(|x| String::from_utf8_lossy(&x.name).into_owned())
                .collect::<Vec<_>>()
        );
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use kura_repo::Id;
    use kura_repo::snapshot::{Snapshot, Summary};
    use serde_bytes::ByteBuf;

    fn sample() -> Vec<SnapshotEntry> {
        let mk = |seed: u8, t: i64, tags: Vec<String>, image: bool| SnapshotEntry {
            id: Id([seed; 32]),
            snapshot: Snapshot {
                v: 1,
                time: Timestamp(t, 0),
                host: "db1".into(),
                username: "root".into(),
                paths: vec![ByteBuf::from(b"/srv/data".to_vec())],
                tags,
                parent: None,
                content: if image {
                    Content::Image(kura_repo::snapshot::ImageInfo {
                        source: ByteBuf::from(b"/dev/sdb".to_vec()),
                        size: 8 << 30,
                        chunk_size: 4 << 20,
                        device: true,
                        pieces: vec![],
                    })
                } else {
                    Content::Tree { root: Id([9; 32]) }
                },
                summary: Summary {
                    total_bytes: 1536 * 1024 * 1024,
                    ..Default::default()
                },
                original: None,
            },
        };
        vec![
            mk(0x3f, 1_700_000_000, vec![], false),
            mk(
                0xa1,
                1_700_086_400,
                vec!["nightly".into(), "db".into()],
                true,
            ),
        ]
    }

    #[test]
    fn snapshot_table_format() {
        let t = snapshot_table(&sample(), |t| t.to_rfc3339());
        insta::assert_snapshot!(t);
    }

    #[test]
    fn snapshot_json_format() {
        let v: Vec<Value> = sample().iter().map(snapshot_json).collect();
        insta::assert_json_snapshot!(v);
    }

    #[test]
    fn modes_and_sizes() {
        assert_eq!(mode_string(NodeKind::Dir, 0o755), "drwxr-xr-x");
        assert_eq!(mode_string(NodeKind::File, 0o4755), "-rwsr-xr-x");
        assert_eq!(mode_string(NodeKind::Dir, 0o1777), "drwxrwxrwt");
        assert_eq!(mode_string(NodeKind::File, 0o2644), "-rw-r-Sr--");
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(1536), "1.50 KiB");
        assert_eq!(bytes(3 << 30), "3.00 GiB");
    }
}
