//! The `kura` command. A thin layer over `kura-repo`: parse arguments, find the repository
//! and password, call the library, print results, map errors to exit codes (see `exit.rs`
//! and README.md).

mod cli;
mod cli_daemon;
mod cli_tape;
mod cli_volume;
mod commands;
mod config;
mod exit;
mod output;
mod password;
mod progress;
mod traffic;

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Parser;
use kura_repo::backend::{Backend, BackendOptions, MirrorBackend, MirrorOptions};
use kura_repo::backup::CancelToken;
use kura_repo::{IndexedRepo, Repository};

use cli::{Cli, Command, GlobalArgs};
use config::ConfigFile;
use exit::UsageError;

/// What every command gets.
#[derive(Clone)]
pub struct App {
    pub global: GlobalArgs,
    pub config: ConfigFile,
    pub cancel: CancelToken,
    /// Set by [`App::backend`] when `--mirror` is given.
    pub mirror: std::sync::OnceLock<Arc<MirrorBackend>>,
    /// Traffic limits, shared by every stream of the process (`traffic.rs`).
    pub traffic: Arc<traffic::Traffic>,
}

impl App {
    pub fn repo_location(&self) -> Result<String> {
        self.global
            .repo
            .clone()
            .or_else(|| self.config.repository.repo.clone())
            .ok_or_else(|| {
                UsageError(
                    "no repository given: use --repo, KURA_REPOSITORY or the config file".into(),
                )
                .into()
            })
    }

    /// The deadline of each storage operation this invocation asks for (`--timeout`, else
    /// `[repository] timeout`); `None`: the default.
    pub fn timeout(&self) -> Result<Option<std::time::Duration>> {
        match (self.global.timeout, self.config.repository.timeout) {
            (Some(t), _) => Ok(Some(t.std())),
            (None, Some(t)) if t.is_zero() => Err(UsageError(
                "the config file's [repository] timeout must be longer than zero".into(),
            )
            .into()),
            (None, t) => Ok(t.map(kura_types::Duration::std)),
        }
    }

    /// The time zone of schedules that name none: `flag` (`kura serve --timezone`), else
    /// `[daemon] timezone`, else UTC.
    pub fn schedule_zone(&self, flag: Option<&str>) -> Result<kura_schedule::Tz> {
        let text = flag
            .map(str::to_string)
            .or_else(|| self.config.daemon.timezone.clone())
            .unwrap_or_else(|| "UTC".into());
        text.parse().map_err(|_| {
            UsageError(format!(
                "invalid time zone {text:?}: use an IANA name such as Europe/Berlin or UTC"
            ))
            .into()
        })
    }

    /// Deadline and fault behaviour of storage operations (`--timeout`, `[repository] timeout`).
    pub fn backend_options(&self) -> Result<BackendOptions> {
        let mut opts = BackendOptions::default();
        if let Some(d) = self.timeout()? {
            opts.policy.deadline = d;
        }
        Ok(opts)
    }

    pub fn backend_for(&self, url: &str) -> Result<Arc<dyn Backend>> {
        let opts = self.backend_options()?;
        let b =
            kura_repo::backend::open(url, &opts).with_context(|| format!("open target {url}"))?;
        Ok(self.throttled(url, b))
    }

    /// `backend` (opened from `url`) charged to the traffic limits that apply to it.
    pub fn throttled(&self, url: &str, backend: Arc<dyn Backend>) -> Arc<dyn Backend> {
        if self.traffic.is_empty() {
            return backend;
        }
        self.resolve_traffic_names();
        self.traffic.wrap(url, backend, Some(&self.cancel))
    }

    /// Look the catalog target names traffic rules use up (once, and only if they use any).
    pub fn resolve_traffic_names(&self) {
        if self.traffic.names_targets() {
            self.traffic.resolve(|| self.target_urls());
        }
    }

    /// The catalog's targets by name, for traffic rules naming them: only from a catalog
    /// that was given or already exists (a rule does not create one).
    fn target_urls(&self) -> std::collections::HashMap<String, String> {
        let given = self.global.catalog.is_some() || self.config.catalog.url.is_some();
        if !given && !config::default_catalog().is_some_and(|p| p.exists()) {
            tracing::warn!(
                "[[traffic]] rules name targets, but there is no catalog to find them in"
            );
            return Default::default();
        }
        let resources = self
            .catalog()
            .and_then(|c| c.resources().map_err(anyhow::Error::from));
        match resources {
            Ok(rs) => rs
                .into_iter()
                .filter(|r| r.kind == kura_catalog::Kind::Target)
                .filter_map(|r| {
                    let url = r.config.target()?.url.clone();
                    Some((r.name, url))
                })
                .collect(),
            Err(e) => {
                tracing::warn!(
                    "[[traffic]] rules name targets, but the catalog cannot be read ({e:#}): \
                     those rules are not applied"
                );
                Default::default()
            }
        }
    }

    /// A target URL as a backend, for `kura_manager`'s callbacks (jobs, restore, heal);
    /// with `unreachable_for`, an unreachable target is given up on that soon (fail-over
    /// runs).
    pub fn manager_backend(
        &self,
        url: &str,
        unreachable_for: Option<std::time::Duration>,
    ) -> kura_manager::Result<Arc<dyn Backend>> {
        let invalid = |e: anyhow::Error| kura_manager::Error::Invalid(format!("{e:#}"));
        let mut opts = self.backend_options().map_err(invalid)?;
        opts.policy.unreachable_for = unreachable_for;
        let b = kura_repo::backend::open(url, &opts)
            .with_context(|| format!("open target {url}"))
            .map_err(invalid)?;
        Ok(self.throttled(url, b))
    }

    /// For job runs: each secured stream charged to the traffic rules of its path too.
    pub fn route(&self) -> Option<kura_manager::Route> {
        self.traffic.route(Some(self.cancel.clone()))
    }

    /// The repository's backend: one target, or with `--mirror` a [`MirrorBackend`] over the
    /// repository and the mirrors (kept for [`App::mirror_status`]).
    pub fn backend(&self) -> Result<Arc<dyn Backend>> {
        let first = self.backend_for(&self.repo_location()?)?;
        if self.global.mirrors.is_empty() {
            return Ok(first);
        }
        let mut members = vec![first];
        for url in &self.global.mirrors {
            members.push(self.backend_for(url)?);
        }
        let stall = self.global.stall_timeout.std();
        if self.global.quorum == 0 || self.global.quorum > members.len() {
            return Err(UsageError(format!(
                "--quorum {} must be between 1 and the number of targets ({})",
                self.global.quorum,
                members.len()
            ))
            .into());
        }
        let mirror = Arc::new(MirrorBackend::new(
            members,
            MirrorOptions {
                quorum: self.global.quorum,
                stall_timeout: stall,
                ..MirrorOptions::default()
            },
        )?);
        let _ = self.mirror.set(Arc::clone(&mirror));
        Ok(mirror)
    }

    /// Each mirror target's outcome (empty without `--mirror`).
    pub fn mirror_status(&self) -> Vec<kura_repo::backend::MemberStatus> {
        self.mirror.get().map(|m| m.status()).unwrap_or_default()
    }

    /// With `--mirror`: every target must hold the same repository (see `kura_repo::group`).
    fn check_group(&self) -> Result<()> {
        match self.mirror.get() {
            Some(m) => Ok(kura_repo::group::verify(m)?),
            None => Ok(()),
        }
    }

    pub fn password_file(&self) -> Option<std::path::PathBuf> {
        self.global
            .password_file
            .clone()
            .or_else(|| self.config.repository.password_file.clone())
    }

    pub fn open(&self) -> Result<Repository> {
        let backend = self.backend()?;
        self.check_group()?;
        let password = password::get(self.password_file().as_deref())?;
        let loc = backend.location();
        Repository::open(backend, &password).with_context(|| format!("open repository {loc}"))
    }

    pub fn open_indexed(&self) -> Result<IndexedRepo> {
        let repo = self.open()?;
        let loc = repo.location();
        repo.load_index()
            .with_context(|| format!("load index of {loc}"))
    }

    /// The catalog: `--catalog`, KURA_CATALOG, `[catalog] url`, or the embedded default
    /// file. An embedded (SQLite) catalog is a single machine's: it registers the machine
    /// itself as worker and path, so the user only adds targets.
    pub fn catalog(&self) -> Result<kura_catalog::Catalog> {
        let url = match self
            .global
            .catalog
            .clone()
            .or_else(|| self.config.catalog.url.clone())
        {
            Some(u) => u,
            None => {
                let path = config::default_catalog().ok_or_else(|| {
                    UsageError("no catalog given and no home directory: use --catalog".into())
                })?;
                if let Some(dir) = path.parent() {
                    use std::os::unix::fs::DirBuilderExt;
                    // New directories private (the catalog names every target and job).
                    std::fs::DirBuilder::new()
                        .recursive(true)
                        .mode(0o700)
                        .create(dir)
                        .with_context(|| format!("create catalog directory {}", dir.display()))?;
                }
                path.to_string_lossy().into_owned()
            }
        };
        let catalog = kura_catalog::Catalog::open(&url).context("open catalog")?;
        // A dead manager's holdings must not look alive in what we show or change.
        catalog.reclaim().context("reclaim expired leases")?;
        catalog
            .prune_events(kura_catalog::EVENT_RETENTION)
            .context("prune old catalog events")?;
        if catalog.is_embedded() {
            catalog
                .ensure_local(LOCAL_SLOTS)
                .context("register this machine in the catalog")?;
        }
        Ok(catalog)
    }

    pub fn bar(&self) -> progress::Bar {
        progress::Bar::new(self.global.quiet, self.global.json)
    }

    /// Print to stdout unless quiet (JSON is printed regardless).
    pub fn say(&self, msg: impl AsRef<str>) {
        if !self.global.quiet {
            println!("{}", msg.as_ref());
        }
    }
}

/// Streams the local worker and path of an embedded catalog serve at once.
pub const LOCAL_SLOTS: i64 = 64;

/// Run `f` under `lock`, then release it ([`RepoLock::finish`](kura_repo::lock::RepoLock::finish):
/// abandoned when the target stopped answering).
pub fn with_lock<K, T>(
    lock: kura_repo::lock::RepoLock<K>,
    f: impl FnOnce(&kura_repo::lock::RepoLock<K>) -> Result<T>,
) -> Result<T> {
    let r = f(&lock);
    lock.finish(
        r.as_ref()
            .err()
            .map(|e| e.as_ref() as &(dyn std::error::Error + 'static)),
    );
    r
}

fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("KURA_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}

fn run(cli: Cli) -> Result<i32> {
    let config = ConfigFile::load(cli.global.config.as_deref())?;
    let cancel = CancelToken::new();
    {
        let cancel = cancel.clone();
        let presses = std::sync::atomic::AtomicU32::new(0);
        // First Ctrl-C (or SIGTERM, SIGHUP): stop cleanly (locks removed, no snapshot).
        // Second: exit now.
        let _ = ctrlc::set_handler(move || {
            if presses.fetch_add(1, std::sync::atomic::Ordering::SeqCst) > 0 {
                std::process::exit(exit::INTERRUPTED);
            }
            cancel.cancel();
        });
    }
    let traffic = traffic::Traffic::new(
        cli.global.limit_upload.as_deref(),
        cli.global.limit_download.as_deref(),
        &config.traffic,
        traffic::system_zone(),
    )?;
    let app = App {
        global: cli.global,
        config,
        cancel,
        mirror: std::sync::OnceLock::new(),
        traffic: Arc::new(traffic),
    };
    if !app.global.mirrors.is_empty() {
        let what = match &cli.command {
            Command::Check(_) => Some("check"),
            Command::Forget(_) => Some("forget"),
            Command::Prune(_) => Some("prune"),
            Command::Key(_) => Some("key"),
            Command::Unlock(_) => Some("unlock"),
            Command::Repair(_) => Some("repair"),
            _ => None,
        };
        if let Some(what) = what {
            // Through a mirror these would see only what every target holds (or read one
            // target only): run them on each target, which is a complete repository.
            return Err(UsageError(format!(
                "{what} works on one target at a time: run it with -r on each member of the group"
            ))
            .into());
        }
    }
    match cli.command {
        Command::Init(a) => commands::init::run(&app, a),
        Command::Backup(a) => commands::backup::run(&app, *a),
        Command::Snapshots(a) => commands::snapshots::run(&app, a),
        Command::Ls(a) => commands::ls::run(&app, a),
        Command::Restore(a) => commands::restore::run(&app, a),
        Command::Dump(a) => commands::dump::run(&app, a),
        Command::Check(a) => commands::check::run(&app, a),
        Command::Forget(a) => commands::forget::run(&app, a),
        Command::Prune(a) => commands::prune::run(&app, a),
        Command::Key(k) => commands::key::run(&app, k),
        Command::Unlock(a) => commands::unlock::run(&app, a),
        Command::Repair(r) => commands::repair::run(&app, r),
        Command::Target(t) => commands::target::run(&app, t),
        Command::Resource(r) => commands::resource::run(&app, r),
        Command::Volume(v) => commands::volume::run(&app, v),
        Command::Pair(p) => commands::pair::run(&app, p),
        Command::Job(j) => commands::job::run(&app, j),
        Command::Backups(a) => commands::backups::run(&app, a),
        Command::Catalog(c) => commands::backups::catalog(&app, c),
        Command::Heal(a) => commands::heal::run(&app, a),
        Command::Serve(a) => commands::serve::run(&app, a),
        Command::Token(t) => commands::token::run(&app, t),
        Command::Task(t) => commands::task::run(&app, t),
        Command::Policy(c) => commands::policy::run(&app, c),
        Command::Library(c) => commands::tape::library(&app, c),
        Command::Media(c) => commands::tape::media(&app, c),
        Command::Tape(c) => commands::tape::tape(&app, c),
    }
}

/// Large buffers (chunks, packs) are allocated and freed at a high rate by many threads.
/// glibc raises its mmap threshold after the first large free and then keeps such buffers in
/// per-thread arenas, which inflates peak RSS by ~50% for nothing; a fixed 1 MiB threshold
/// returns every large buffer to the kernel on free (measured: 125 → 79 MB peak RSS backing
/// up /usr/share, same wall time).
fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator tuning; called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
    }
}

/// `println!` panics when standard output is a pipe that was closed (`kura snapshots --json |
/// head -1`). Restoring SIGPIPE's default would end the process there quietly, but also on
/// any socket or pipe kura writes to without `MSG_NOSIGNAL` (NBD clients, the control socket),
/// so only that one panic is turned into a quiet exit.
fn quiet_broken_pipe() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let msg = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("");
        if msg.starts_with("failed printing to stdout") && msg.contains("Broken pipe") {
            std::process::exit(exit::BROKEN_PIPE);
        }
        default(info);
    }));
}

fn main() -> ExitCode {
    tune_allocator();
    quiet_broken_pipe();
    let cli = Cli::parse();
    init_logging(cli.global.verbose);
    let code = match run(cli) {
        Ok(code) => code,
        Err(e) => {
            let code = exit::code_for(&e);
            if code == exit::INTERRUPTED {
                eprintln!("kura: interrupted");
            } else {
                eprintln!("kura: {e:#}");
            }
            code
        }
    };
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}
