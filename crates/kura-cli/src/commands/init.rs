use anyhow::{Context, Result};
use kura_repo::chunker::ChunkerParams;
use kura_repo::crypto::KdfParams;
use kura_repo::{InitOptions, Repository};
use serde_json::json;

use crate::cli::InitArgs;
use crate::{App, exit, password};

pub fn run(app: &App, a: InitArgs) -> Result<i32> {
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
