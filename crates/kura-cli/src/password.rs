//! Where passwords come from: `KURA_PASSWORD`, `--password-file` (or `KURA_PASSWORD_FILE`, or
//! the config file), else a prompt on the terminal. Never from a command-line argument, where
//! other users could read it in the process list.

use std::io::IsTerminal;
use std::path::Path;

use anyhow::{Context, Result, bail};

fn read_file(path: &Path) -> Result<Vec<u8>> {
    let text =
        std::fs::read(path).with_context(|| format!("read password file {}", path.display()))?;
    let line = text.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if line.is_empty() {
        bail!("password file {} is empty", path.display());
    }
    Ok(line.to_vec())
}

fn prompt(msg: &str) -> Result<Vec<u8>> {
    if !std::io::stdin().is_terminal() {
        bail!("no password given: set KURA_PASSWORD, KURA_PASSWORD_FILE or --password-file");
    }
    let p = rpassword::prompt_password(msg).context("read password from the terminal")?;
    Ok(p.into_bytes())
}

/// The password of an existing repository.
pub fn get(file: Option<&Path>) -> Result<Vec<u8>> {
    if let Some(p) = std::env::var_os("KURA_PASSWORD") {
        use std::os::unix::ffi::OsStrExt;
        return Ok(p.as_bytes().to_vec());
    }
    match file {
        Some(f) => read_file(f),
        None => prompt("enter password for repository: "),
    }
}

/// A new password: from the given sources, or typed twice.
pub fn new(file: Option<&Path>, env_var: &str) -> Result<Vec<u8>> {
    if let Some(p) = std::env::var_os(env_var) {
        use std::os::unix::ffi::OsStrExt;
        return Ok(p.as_bytes().to_vec());
    }
    if let Some(f) = file {
        return read_file(f);
    }
    let a = prompt("enter new password: ")?;
    let b = prompt("enter the password again: ")?;
    if a != b {
        bail!("the passwords do not match");
    }
    if a.is_empty() {
        bail!("empty password");
    }
    Ok(a)
}
