use anyhow::{Context, Result};
use kura_repo::chunker::ChunkerParams;
use kura_repo::crypto::KdfParams;
use kura_repo::{InitOptions, Repository};
use serde_json::json;

use crate::cli::InitArgs;
use crate::{App, exit, password};

pub fn run(app: &App, a: InitArgs) -> Result<i32> {
    if !app.global.mirrors.is_empty()
        && let Some(code) = join_group(app)?
    {
        return Ok(code);
    }
    let backend = app.backend()?;
    let loc = backend.location();
    let password = password::new(app.password_file().as_deref(), "KURA_PASSWORD")?;
    let mut kdf = KdfParams::default();
    if let Some(m) = a.kdf_memory_kib {
        kdf.memory_kib = m;
        kdf.iterations = 1;
    }
    let opts = InitOptions {
        chunker: ChunkerParams {
            min: a.chunk_min,
            avg: a.chunk_avg,
            max: a.chunk_max,
        },
        compression: a.compression,
        pack_size: a.pack_size_mib.saturating_mul(1024 * 1024),
        kdf,
    };
    let repo = Repository::init(backend, &password, &opts)
        .with_context(|| format!("create repository at {loc}"))?;
    record_group(app, &repo)?;
    if app.global.json {
        println!(
            "{}",
            json!({"id": repo.config().id.to_hex(), "location": loc})
        );
    } else {
        app.say(format!(
            "created kura repository {} at {loc}\n\n\
             Keep the password safe: without it the data cannot be read.",
            repo.config().id.short()
        ));
    }
    Ok(exit::OK)
}

/// `init --mirror` where some locations already hold the group's repository: the others
/// join it — each gets the group's config file and a copy of its key files, byte for byte —
/// and the existing members are left alone. Refused when a location holds another
/// repository. `None` when no location holds one yet (a plain group `init`).
fn join_group(app: &App) -> Result<Option<i32>> {
    use kura_repo::backend::{ErrorKind, FileKind};
    let mut urls = vec![app.repo_location()?];
    urls.extend(app.global.mirrors.iter().cloned());
    let mut members = Vec::new();
    for u in &urls {
        let b = app.backend_for(u)?;
        let config = match b.get(FileKind::Config, "config") {
            Ok(c) => Some(c),
            Err(e) if e.kind() == ErrorKind::NotFound => None,
            Err(e) => return Err(e).with_context(|| format!("read the config of {u}")),
        };
        members.push((u.clone(), b, config));
    }
    let Some((first, source, config)) = members
        .iter()
        .find_map(|(u, b, c)| c.as_ref().map(|c| (u.clone(), b.clone(), c.clone())))
    else {
        return Ok(None);
    };
    for (u, _, c) in &members {
        if c.as_ref().is_some_and(|c| c != &config) {
            return Err(kura_repo::Error::NotAGroup(format!(
                "{u} holds another repository than {first}: a group's members hold one \
                 repository (empty the location or choose another)"
            ))
            .into());
        }
    }
    // The password must open the group: a member is only added by someone who may read it.
    let password = password::get(app.password_file().as_deref())?;
    let repo = Repository::open(std::sync::Arc::clone(&source), &password)
        .with_context(|| format!("open the group's repository at {first}"))?;
    let keys: Vec<(String, Vec<u8>)> = source
        .list(FileKind::Key)?
        .into_iter()
        .map(|k| Ok((k.name.clone(), source.get(FileKind::Key, &k.name)?)))
        .collect::<kura_repo::backend::Result<_>>()
        .with_context(|| format!("read the key files of {first}"))?;
    let mut joined = Vec::new();
    for (u, b, c) in &members {
        if c.is_some() {
            continue;
        }
        b.create().with_context(|| format!("create {u}"))?;
        // Keys before the config: a location with a config is a repository, and one must
        // never be found without a key.
        for (name, bytes) in &keys {
            b.put(FileKind::Key, name, bytes.clone().into())
                .with_context(|| format!("copy key file {name} to {u}"))?;
        }
        b.put(FileKind::Config, "config", config.clone().into())
            .with_context(|| format!("write the config to {u}"))?;
        repo.member(std::sync::Arc::clone(b))
            .with_context(|| format!("check the new member {u}"))?;
        joined.push(u.clone());
    }
    record_group(app, &repo)?;
    if app.global.json {
        println!(
            "{}",
            json!({"id": repo.config().id.to_hex(), "location": first, "joined": joined})
        );
    } else if joined.is_empty() {
        app.say(format!(
            "every location already holds repository {}",
            repo.config().id.short()
        ));
    } else {
        app.say(format!(
            "{} joined the group of kura repository {} at {first}",
            joined.join(", "),
            repo.config().id.short()
        ));
    }
    Ok(Some(exit::OK))
}

/// Record, for catalog targets at these locations, which repository they hold (securing
/// checks it before each run). Only with a catalog the user has.
fn record_group(app: &App, repo: &Repository) -> Result<()> {
    use kura_repo::backend::FileKind;
    let Some(cat) = super::catalog_sync::existing_catalog(app)? else {
        return Ok(());
    };
    let config = repo.backend().get(FileKind::Config, "config")?;
    let id = kura_manager::fit::repository_id(&config);
    let mut urls = vec![app.repo_location()?];
    urls.extend(app.global.mirrors.iter().cloned());
    for u in &urls {
        for name in kura_manager::sync::targets_at(&cat, u, &super::catalog_sync::same)? {
            cat.set_target_repository(&name, &id)?;
        }
    }
    Ok(())
}
