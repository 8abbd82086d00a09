use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};
use kura_repo::browse;

use crate::cli::DumpArgs;
use crate::exit::UsageError;
use crate::{App, exit};

pub fn run(app: &App, a: DumpArgs) -> Result<i32> {
    let repo = app.open_indexed()?;
    let snap = repo.find_snapshot(&a.snapshot)?;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::with_capacity(1 << 20, stdout.lock());
    if snap.snapshot.is_image() {
        super::ls::refuse_path_in_image(&snap, a.path.as_deref())?;
        browse::dump_image(&repo, &snap, &mut out)
            .with_context(|| format!("dump image snapshot {}", snap.id.short()))?;
    } else {
        let path = a
            .path
            .ok_or_else(|| UsageError("dump needs a PATH inside a file-tree snapshot".into()))?;
        let abs = Path::new("/").join(&path);
        let node = browse::find_node(&repo, &snap, &abs)?;
        browse::dump_file(&repo, &node, &mut out)
            .with_context(|| format!("dump {} from snapshot {}", abs.display(), snap.id.short()))?;
    }
    out.flush()?;
    Ok(exit::OK)
}
