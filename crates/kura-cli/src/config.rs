//! The TOML configuration file. Every key is optional; command-line flags win over it.
//!
//! ```toml
//! [repository]
//! repo = "/srv/backup/kura"
//! password_file = "/etc/kura/password"
//! timeout = "60s"          # deadline of each storage operation, retries included
//!
//! [backup]
//! exclude = ["*.tmp", "/home/*/.cache"]
//! one_file_system = true
//! compression = 3
//! read_concurrency = 2
//! memory_mib = 64
//! tags = ["nightly"]
//!
//! [restore]
//! threads = 4
//!
//! [catalog]
//! url = "postgres://kura@db.example/kura"   # default: $XDG_DATA_HOME/kura/catalog.db
//!
//! [volumes]
//! dir = "/srv/kura/volumes"                 # default: $XDG_DATA_HOME/kura/volumes
//!
//! [[traffic]]                               # traffic control (see traffic.rs), repeatable
//! target = "s3-east"                        # a catalog target name, or a target URL prefix
//! path = "wan"                              # optional: a catalog path resource
//! upload = "10MiB/s"                        # and/or download
//! timeframe = "mon..fri 08:00-18:00"        # optional: one or a list
//! ```

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::Deserialize;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    #[serde(default)]
    pub repository: RepositorySection,
    #[serde(default)]
    pub backup: BackupSection,
    #[serde(default)]
    pub restore: RestoreSection,
    #[serde(default)]
    pub catalog: CatalogSection,
    #[serde(default)]
    pub volumes: VolumesSection,
    /// Traffic control rules, in order.
    #[serde(default)]
    pub traffic: Vec<crate::traffic::TrafficRule>,
    #[serde(default)]
    pub daemon: DaemonSection,
}

/// `kura serve` settings (its flags win).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DaemonSection {
    /// Address of the API, e.g. "127.0.0.1:8787".
    pub listen: Option<String>,
    /// Where tasks and their logs live.
    pub state_dir: Option<PathBuf>,
    /// The daemon's name in claims and logs.
    pub name: Option<String>,
    /// Time zone of schedules that name none (IANA name).
    pub timezone: Option<String>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    #[serde(default)]
    pub tls_self_signed: bool,
    /// The daemon commands talk to (`http://127.0.0.1:8787`): `kura job run` and `kura task`
    /// go through its API (`KURA_DAEMON` wins; empty: none).
    pub url: Option<String>,
    /// A file holding the API token for `url` (`KURA_TOKEN` wins).
    pub token_file: Option<PathBuf>,
    /// Restores started through the API may write only inside this directory.
    pub restore_root: Option<PathBuf>,
    /// Host the volume engine too: serve the volumes over NBD on this address and run
    /// their backup policies.
    pub nbd_listen: Option<String>,
    /// A command (run with `sh -c`) told of window events: a predicted overrun, a run
    /// cancelled at or before its window's end, an overrun, a missed start. The event is in
    /// its environment (`KURA_EVENT`, `KURA_JOB`, …; see the README).
    pub notify: Option<String>,
    /// How often every target is probed and its health recorded (default 5m; "0s": never).
    pub health_every: Option<kura_types::Duration>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumesSection {
    /// The volume engine's data directory.
    pub dir: Option<PathBuf>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CatalogSection {
    /// A SQLite file path (`sqlite://` optional) or `postgres://…`.
    pub url: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RepositorySection {
    pub repo: Option<String>,
    pub password_file: Option<PathBuf>,
    /// Deadline of each storage operation, e.g. "60s" (parsed as it is read: a bad one is an
    /// error naming the key).
    pub timeout: Option<kura_types::Duration>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackupSection {
    #[serde(default)]
    pub exclude: Vec<String>,
    pub one_file_system: Option<bool>,
    pub compression: Option<i32>,
    pub read_concurrency: Option<usize>,
    pub memory_mib: Option<usize>,
    #[serde(default)]
    pub tags: Vec<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestoreSection {
    pub threads: Option<usize>,
}

impl ConfigFile {
    /// Load `explicit`, or the default location if it exists, or an empty config.
    pub fn load(explicit: Option<&Path>) -> Result<ConfigFile> {
        let path = match explicit {
            Some(p) => p.to_path_buf(),
            None => match default_path() {
                Some(p) if p.exists() => p,
                _ => return Ok(ConfigFile::default()),
            },
        };
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("read config file {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("config file {}", path.display()))
    }

    pub fn parse(text: &str) -> Result<ConfigFile> {
        Ok(toml::from_str(text)?)
    }
}

fn default_path() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
    Some(base.join("kura").join("config.toml"))
}

/// The volume engine's default data directory: `$XDG_DATA_HOME/kura/volumes`.
pub fn default_volumes() -> Option<PathBuf> {
    default_catalog().and_then(|c| c.parent().map(|d| d.join("volumes")))
}

/// The embedded catalog's default file: `$XDG_DATA_HOME/kura/catalog.db`
/// (`~/.local/share/kura/catalog.db`).
pub fn default_catalog() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))?;
    Some(base.join("kura").join("catalog.db"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_all_sections() {
        let c = ConfigFile::parse(
            r#"
            [repository]
            repo = "/srv/r"
            [backup]
            exclude = ["*.tmp"]
            compression = 5
            [restore]
            threads = 8
            [catalog]
            url = "postgres://kura@db/kura"
            [[traffic]]
            target = "s3-east"
            upload = "10MiB/s"
            timeframe = ["mon..fri 08:00-18:00", "sat 10:00-12:00"]
            [[traffic]]
            path = "wan"
            download = "1024"
            timeframe = "22:00-06:00 UTC"
            "#,
        )
        .unwrap();
        assert_eq!(c.repository.repo.as_deref(), Some("/srv/r"));
        assert_eq!(c.backup.exclude, vec!["*.tmp"]);
        assert_eq!(c.backup.compression, Some(5));
        assert_eq!(c.restore.threads, Some(8));
        assert_eq!(c.catalog.url.as_deref(), Some("postgres://kura@db/kura"));
        assert_eq!(c.traffic.len(), 2);
        assert_eq!(c.traffic[0].target.as_deref(), Some("s3-east"));
        assert_eq!(c.traffic[1].download.as_deref(), Some("1024"));
    }

    #[test]
    fn durations_are_parsed_as_read() {
        let c = ConfigFile::parse("[repository]\ntimeout = \"1m30s\"\n").unwrap();
        assert_eq!(
            c.repository.timeout,
            Some(kura_types::Duration::from_secs(90))
        );
        let e = ConfigFile::parse("[repository]\ntimeout = \"soon\"\n").unwrap_err();
        let msg = format!("{e:#}");
        assert!(
            msg.contains("timeout") && msg.contains("invalid duration \"soon\""),
            "{msg}"
        );
    }

    #[test]
    fn unknown_keys_are_errors() {
        let e = ConfigFile::parse("[backup]\nexlude = []\n").unwrap_err();
        assert!(format!("{e:#}").contains("exlude"), "{e:#}");
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(
            std::env::var("KURA_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(256)
        ))]
        /// Any text, TOML-shaped or not, parses or is refused; it never panics.
        #[test]
        fn parse_never_panics(text in "(\\[[a-z]{1,10}\\]\n)?([a-z_]{1,12} = [ -~]{0,20}\n){0,4}[ -~\n]{0,40}") {
            let _ = ConfigFile::parse(&text);
        }
    }
}
