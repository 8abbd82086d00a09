//! `kura backups`: the catalog's backups with their copies (targets) and sections;
//! `kura catalog rebuild`: re-enter them from the records on the targets.

use anyhow::Result;
use serde_json::{Value, json};

use anyhow::Context;
use kura_catalog::Kind;
use kura_repo::Repository;

use crate::cli::{BackupsArgs, CatalogCommand};
use crate::exit::UsageError;
use crate::output::{local_ms, rfc3339_ms, table};
use crate::{App, exit};

pub fn run(app: &App, a: BackupsArgs) -> Result<i32> {
    if let Some(crate::cli::BackupsCommand::Forget(f)) = a.command {
        return super::catalog_sync::forget_backup(app, f.backup);
    }
    let cat = app.catalog()?;
    let backups = cat.backups(a.object.as_deref())?;
    let mut rows = Vec::new();
    let mut out = Vec::new();
    for b in &backups {
        let extents = cat.extents(b.id)?;
        let targets = placement(&extents);
        rows.push(vec![
            b.id.to_string(),
            b.object.clone(),
            local_ms(b.data_time),
            b.state.as_str().to_string(),
            b.run.map_or("-".into(), |r| r.to_string()),
            targets,
        ]);
        out.push(json!({
            "backup": b.id,
            "object": b.object,
            "process": b.run,
            "started": rfc3339_ms(b.started),
            "ended": b.ended.map(rfc3339_ms),
            "data_time": rfc3339_ms(b.data_time),
            "state": b.state.as_str(),
            "extents": extents.iter().map(|e| json!({
                "stream": e.stream, "seq": e.seq,
                "source_offset": e.source_offset, "source_length": e.source_length,
                "target": e.target, "medium": e.medium,
                "position": e.position, "size": e.size,
            })).collect::<Vec<Value>>(),
        }));
    }
    if app.global.json {
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        print!(
            "{}",
            table(
                &[
                    "Backup",
                    "Object",
                    "Data time",
                    "State",
                    "Process",
                    "Copies / sections"
                ],
                &rows
            )
        );
        println!("{} backup(s)", backups.len());
    }
    Ok(exit::OK)
}

/// Where a backup is, for the listing: `t1,t2` for whole copies; `t1§0-2,t2§3` for the
/// sections of a fail-over backup (`t3§-` holds only the manifest).
fn placement(extents: &[kura_catalog::Extent]) -> String {
    use kura_manager::Position;
    let mut by_target: std::collections::BTreeMap<&str, (bool, Vec<i64>)> = Default::default();
    for e in extents {
        let entry = by_target.entry(&e.target).or_default();
        match e.position.parse::<Position>() {
            Ok(Position::Section { index, .. }) if !index.is_empty() => entry.1.push(e.seq),
            Ok(Position::Section { .. }) => {}
            _ => entry.0 = true,
        }
    }
    by_target
        .into_iter()
        .map(|(t, (whole, seqs))| {
            if whole {
                t.to_string()
            } else if seqs.is_empty() {
                format!("{t}\u{a7}-")
            } else {
                format!("{t}\u{a7}{}", ranges(&seqs))
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// `0,1,2,5` → `0-2.5`.
fn ranges(seqs: &[i64]) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < seqs.len() {
        let mut j = i;
        while j + 1 < seqs.len() && seqs[j + 1] == seqs[j] + 1 {
            j += 1;
        }
        out.push(if i == j {
            seqs[i].to_string()
        } else {
            format!("{}-{}", seqs[i], seqs[j])
        });
        i = j + 1;
    }
    out.join(".")
}

/// Re-enter volume backups from the volumes' backup records
/// ([`kura_manager::rebuild::import_volume_backups`]).
fn volume_records(
    app: &App,
    cat: &kura_catalog::Catalog,
    dir: &crate::cli_volume::VolumeDirArgs,
) -> Result<kura_manager::rebuild::Rebuilt> {
    let st = crate::commands::volume::store(app, dir)?;
    let mut records = Vec::new();
    for v in st.list()? {
        let name = &v.meta.name;
        for r in st.records(name)? {
            let time_ms = chrono::DateTime::parse_from_rfc3339(&r.time)
                .map(|t| t.timestamp_millis())
                .with_context(|| format!("volume {name}: record time {:?}", r.time))?;
            records.push(kura_manager::rebuild::VolumeBackup {
                volume: name.clone(),
                time_ms,
                size: r.size,
                repository: r.repository.clone(),
                snapshot: r.backup.clone(),
                area: r.area.as_ref().map(|a| (a.offset, a.length)),
            });
        }
    }
    Ok(kura_manager::rebuild::import_volume_backups(cat, &records)?)
}

/// `kura catalog rebuild --from TARGET… [--volumes]`.
pub fn catalog(app: &App, c: CatalogCommand) -> Result<i32> {
    let a = match c {
        CatalogCommand::Rebuild(a) => a,
        CatalogCommand::Verify(v) => return super::catalog_sync::verify(app, v.fix),
    };
    if let Some(lib) = &a.from_media {
        return super::tape::rebuild_media(app, lib);
    }
    let cat = app.catalog()?;
    // Volume records need no repository password; targets do.
    let password = if a.from.is_empty() {
        Vec::new()
    } else {
        crate::password::get(app.password_file().as_deref())?
    };
    let mut total = kura_manager::rebuild::Rebuilt::default();
    for name in &a.from {
        let t = cat.resource(name)?;
        if t.kind != Kind::Target {
            return Err(
                UsageError(format!("{name} is a {}, not a target", t.kind.as_str())).into(),
            );
        }
        let url = t.target_url()?;
        let repo = Repository::open(app.backend_for(url)?, &password)
            .with_context(|| format!("open repository on target {name}"))?;
        let r = kura_manager::rebuild::rebuild_from(&cat, &repo, name)
            .with_context(|| format!("rebuild from the records on target {name}"))?;
        total.merge(r);
    }
    if a.volumes {
        let r = volume_records(app, &cat, &a.dir)?;
        total.merge(r);
    }
    let (records, imported, known, left_out) = (
        total.records,
        total.imported,
        total.already_known,
        total.unknown_targets,
    );
    if app.global.json {
        println!(
            "{}",
            json!({
                "records": records,
                "imported": imported,
                "already_known": known,
                "unknown_targets": left_out,
            })
        );
    } else {
        app.say(format!(
            "read {records} record(s): {imported} backup(s) re-entered, {known} already known"
        ));
    }
    if !left_out.is_empty() {
        eprintln!(
            "warning: copies on targets not in this catalog were left out: {} (add them with \
             kura resource add target, then rebuild again)",
            left_out.join(", ")
        );
    }
    Ok(exit::OK)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kura_catalog::Extent;

    fn ext(seq: i64, target: &str, position: String) -> Extent {
        Extent {
            stream: 0,
            seq,
            source_offset: 0,
            source_length: 0,
            target: target.into(),
            medium: format!("{target}.medium"),
            position,
            size: 0,
        }
    }

    #[test]
    fn placement_shows_copies_and_section_ranges() {
        let snap = "ab".repeat(32);
        let idx = |i: u8| format!("{snap}:{}", format!("{i:02x}").repeat(32));
        let copies = [ext(0, "nas", snap.clone()), ext(0, "s3", snap.clone())];
        assert_eq!(placement(&copies), "nas,s3");
        let sectioned = [
            ext(0, "s3", idx(0)),
            ext(1, "s3", idx(1)),
            ext(2, "s3", idx(2)),
            ext(3, "nas", idx(3)),
            ext(5, "nas", idx(5)),
            ext(6, "tape", format!("{snap}:")),
        ];
        assert_eq!(placement(&sectioned), "nas§3.5,s3§0-2,tape§-");
    }
}
