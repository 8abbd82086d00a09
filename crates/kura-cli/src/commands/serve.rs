//! `kura serve`: the daemon (`kura_daemon`), with this binary's way of running a job, and —
//! with `--nbd-listen` — the volume engine hosted in the same process (`kura_volume::Host`,
//! as `kura volume serve` hosts it), whose volumes the daemon backs up by their policies.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result};
use kura_catalog::{Catalog, JobDef};
use kura_daemon::scheduler::{self, SchedulerOptions};
use kura_daemon::server::{self, Tls};
use kura_daemon::{Daemon, DaemonOptions, JobRunner, RunError, Task};
use kura_manager::{RunMode, run_job};
use kura_repo::backend::BackendOptions;
use kura_repo::backup::BackupOptions;

use crate::App;
use crate::cli_daemon::ServeArgs;
use crate::exit::{self, UsageError};

/// Where the API listens when neither `--listen` nor `[daemon] listen` says.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8787";

/// Runs jobs for the daemon the way `kura job run` does, with the daemon's environment
/// (password, target options, `[backup]` settings), each run reporting to its task.
struct Runner {
    catalog: Arc<Catalog>,
    backend: BackendOptions,
    backup: BackupOptions,
    password: Vec<u8>,
    /// The daemon's traffic limits, shared by all its runs.
    traffic: Arc<crate::traffic::Traffic>,
    /// The notification hook (`[daemon] notify`): tape jobs' mount requests go there too.
    notify: Option<String>,
}

/// A tape job's events: lines in its task's log, and mount requests to the notification
/// hook (`KURA_EVENT=mount-request`).
struct TaskEvents<'a> {
    task: &'a Task,
    job: String,
    notify: Option<String>,
}

impl kura_manager::tape::TapeEvents for TaskEvents<'_> {
    fn mount_request(&self, library: &str, message: &str) {
        self.task
            .log(format!("mount request ({library}): {message}"));
        kura_daemon::notify::send(
            self.notify.as_deref(),
            kura_daemon::notify::Event {
                event: "mount-request",
                job: self.job.clone(),
                task: self.task.id().to_string(),
                reason: format!("{library}: {message}"),
                ..Default::default()
            },
        );
    }
    fn mount_satisfied(&self, library: &str) {
        self.task
            .log(format!("mount request ({library}) satisfied"));
    }
    fn note(&self, message: &str) {
        self.task.log(message);
    }
}

impl Runner {
    /// A tape job's run, reported to its task.
    fn run_tape(
        &self,
        def: &JobDef,
        tape: &kura_types::TapeJob,
        task: &Task,
    ) -> std::result::Result<(), RunError> {
        let cancel = task.cancel_token();
        let events = TaskEvents {
            task,
            job: def.name.clone(),
            notify: self.notify.clone(),
        };
        let open = |url: &str| {
            let b = kura_repo::backend::open(url, &self.backend)
                .map_err(|e| kura_manager::Error::Invalid(format!("open target {url}: {e}")))?;
            Ok(if self.traffic.is_empty() {
                b
            } else {
                self.traffic.wrap(url, b, Some(&cancel))
            })
        };
        task.log(format!(
            "job {}: copying {} of the repository on {} to tape ({})",
            def.name,
            if tape.all {
                "every snapshot"
            } else {
                "the newest snapshot"
            },
            def.object,
            tape.libraries.join(", ")
        ));
        let (report, moved) = crate::commands::tape::run_tape_job(
            &self.catalog,
            def,
            tape,
            &open,
            &self.password,
            &events,
            &cancel,
        )
        .map_err(|e| RunError::Failed(format!("{e:#}")))?;
        for l in &report.libraries {
            match &l.error {
                None => task.log(format!(
                    "{}: {} copied, {} already on media set {}; tapes {}",
                    l.library,
                    l.copied.len(),
                    l.already.len(),
                    &l.media_set[..8.min(l.media_set.len())],
                    l.stats.tapes.join(" ")
                )),
                Some(e) => task.log(format!("{}: failed: {e}", l.library)),
            }
        }
        if !moved.is_empty() {
            task.log(format!("moved {} snapshot(s) to tape", moved.len()));
        }
        match report.libraries.iter().find_map(|l| l.error.clone()) {
            Some(e) if report.libraries.iter().all(|l| l.error.is_some()) => {
                Err(RunError::Failed(e))
            }
            _ => Ok(()),
        }
    }
}

impl JobRunner for Runner {
    fn run(
        &self,
        def: &JobDef,
        task: &Task,
        start_by: Option<std::time::Instant>,
    ) -> std::result::Result<(), RunError> {
        if let Some(tape) = &def.settings.tape {
            return self.run_tape(def, tape, task);
        }
        let cancel = task.cancel_token();
        let route = self.traffic.route(Some(cancel.clone()));
        let mut job = crate::commands::jobrun::job_spec(def, self.backup.clone(), route)
            .map_err(|e| format!("{e:#}"))?;
        job.secure_by = start_by;
        job.control = Some(task.run_control());
        let unreachable_for = match job.mode {
            RunMode::Failover {
                unreachable_for, ..
            } => Some(unreachable_for),
            RunMode::Mirror { .. } => None,
        };
        let uploaded = task.upload_counter();
        let open = |url: &str| {
            let mut o = self.backend;
            o.policy.unreachable_for = unreachable_for;
            let b = kura_repo::backend::open(url, &o)
                .map_err(|e| kura_manager::Error::Invalid(format!("open target {url}: {e}")))?;
            let b = if self.traffic.is_empty() {
                b
            } else {
                self.traffic.wrap(url, b, Some(&cancel))
            };
            // The task reports what its targets acknowledged (and predicts from it).
            let counted: Arc<dyn kura_repo::backend::Backend> =
                Arc::new(kura_repo::backend::Counted::new(b, Arc::clone(&uploaded)));
            Ok(counted)
        };
        task.log(format!(
            "job {}: backing up {} onto {} target(s)",
            def.name, job.object, job.redundancy
        ));
        let report = run_job(&self.catalog, &job, &open, &self.password, task, &cancel).map_err(
            |e| match e {
                kura_manager::Error::NotStarted(why) => RunError::NotStarted(why),
                e => RunError::Failed(e.to_string()),
            },
        )?;
        task.log(format!(
            "process {}, backup {}, snapshot {}",
            report.process,
            report.backup,
            report.outcome.id.to_hex()
        ));
        for (t, why) in &report.skipped {
            task.log(format!("target {t} was passed over: {why}"));
        }
        for c in report.copies.iter().filter(|c| c.dropped.is_some()) {
            task.log(format!(
                "stream {} on {} was dropped: {}",
                c.stream,
                c.target,
                c.dropped.as_deref().unwrap_or("")
            ));
        }
        match &report.post_error {
            Some(e) => Err(RunError::Failed(format!("post hook: {e}"))),
            None => Ok(()),
        }
    }
}

fn state_dir(a: &ServeArgs, app: &App) -> Result<PathBuf> {
    if let Some(d) = a
        .state_dir
        .clone()
        .or_else(|| app.config.daemon.state_dir.clone())
    {
        return Ok(d);
    }
    let base = std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))
        .ok_or_else(|| UsageError("no home directory: give --state-dir".into()))?;
    Ok(base.join("kura"))
}

/// A claim timing from the environment (`KURA_CLAIM_LEASE`, `KURA_CLAIM_RENEW`: tests).
fn env_duration(name: &str, default: std::time::Duration) -> Result<std::time::Duration> {
    match std::env::var(name) {
        Ok(v) => kura_types::Duration::parse_positive(&v)
            .map(kura_types::Duration::std)
            .map_err(|e| UsageError(format!("{name}: {e}")).into()),
        Err(_) => Ok(default),
    }
}

pub fn run(app: &App, a: ServeArgs) -> Result<i32> {
    let d = &app.config.daemon;
    let listen_text = a
        .listen
        .clone()
        .or_else(|| d.listen.clone())
        .unwrap_or_else(|| DEFAULT_LISTEN.into());
    let listen = SocketAddr::from_str(&listen_text).map_err(|e| {
        UsageError(format!(
            "invalid --listen {listen_text:?}: {e} (use e.g. 127.0.0.1:8787)"
        ))
    })?;
    let zone = app.schedule_zone(a.timezone.as_deref())?;
    let state_dir = state_dir(&a, app)?;
    let tls = match (
        a.tls_cert.clone().or_else(|| d.tls_cert.clone()),
        a.tls_key.clone().or_else(|| d.tls_key.clone()),
        a.tls_self_signed || d.tls_self_signed,
    ) {
        (Some(cert), Some(key), _) => Tls::Files { cert, key },
        (Some(_), None, _) | (None, Some(_), _) => {
            return Err(UsageError("give both --tls-cert and --tls-key".into()).into());
        }
        (None, None, true) => Tls::SelfSigned {
            dir: state_dir.join("tls"),
        },
        (None, None, false) => Tls::None,
    };
    if matches!(tls, Tls::None) && !listen.ip().is_loopback() {
        // Before anything is created: the library refuses it too.
        return Err(UsageError(format!(
            "{listen} is not a loopback address: without TLS the daemon listens on loopback \
             only (give --tls-cert and --tls-key, or --tls-self-signed)"
        ))
        .into());
    }
    let name = a
        .name
        .clone()
        .or_else(|| d.name.clone())
        .unwrap_or_else(|| {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_string())
                .unwrap_or_else(|_| "kura".into());
            format!("{host}-{}", std::process::id())
        });
    let mut sched = SchedulerOptions::new(zone);
    sched.lease = env_duration("KURA_CLAIM_LEASE", scheduler::LEASE)?;
    sched.renew = env_duration("KURA_CLAIM_RENEW", scheduler::RENEW)?;
    if sched.renew >= sched.lease {
        return Err(
            UsageError("KURA_CLAIM_RENEW must be shorter than KURA_CLAIM_LEASE".into()).into(),
        );
    }
    let nbd_listen = a.nbd_listen.clone().or_else(|| d.nbd_listen.clone());
    let nbd_listener = match &nbd_listen {
        Some(addr) => {
            let store = crate::commands::volume::store(app, &a.dir)?;
            let l = std::net::TcpListener::bind(addr).map_err(|e| {
                UsageError(format!(
                    "--nbd-listen {addr:?}: {e} (use e.g. 127.0.0.1:10809)"
                ))
            })?;
            Some((store, l))
        }
        None => None,
    };
    let catalog = Arc::new(app.catalog()?);
    let password = crate::password::get(app.password_file().as_deref())?;
    let ops = super::serve_ops::Ops {
        app: app.clone(),
        catalog: Arc::clone(&catalog),
        password: password.clone(),
    };
    let runner = Runner {
        catalog: Arc::clone(&catalog),
        backend: app.backend_options()?,
        backup: crate::commands::backup::from_config(app),
        password: password.clone(),
        traffic: {
            app.resolve_traffic_names();
            Arc::clone(&app.traffic)
        },
        notify: d.notify.clone(),
    };
    let daemon = Daemon::with_operations(
        catalog,
        Arc::new(runner),
        Arc::new(ops),
        DaemonOptions {
            state_dir: state_dir.clone(),
            name: name.clone(),
            zone,
            restore_root: a.restore_root.clone().or_else(|| d.restore_root.clone()),
            notify: d.notify.clone(),
        },
    )
    .with_context(|| format!("start the daemon in {}", state_dir.display()))?;
    // The volume engine, hosted here: its volumes held and served from now until the
    // daemon stops; their policies run by the policy runner below.
    let host = match nbd_listener {
        Some((store, listener)) => {
            let opener = crate::commands::volume::Opener::new(app)?;
            let host = kura_volume::Host::start(
                store,
                listener,
                None,
                Some(Arc::new(opener)),
                app.cancel.clone(),
            )
            .context("host the volume engine")?;
            let env = crate::commands::policy::Env::new(app, password)?;
            daemon.host_volumes(Arc::clone(host.engine()), Arc::new(env))?;
            Some(host)
        }
        None => None,
    };
    let nbd_url = host.as_ref().map(|h| format!("nbd://{}", h.addr()));
    let stop = Arc::new(AtomicBool::new(false));
    {
        // SIGINT/SIGTERM cancel the app's token; the daemon stops on it.
        let (stop, cancel) = (Arc::clone(&stop), app.cancel.clone());
        std::thread::spawn(move || {
            while !cancel.is_cancelled() {
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            stop.store(true, Ordering::SeqCst);
        });
    }
    {
        // Runs started through the API have windows too (`max-run`): always watched.
        let (daemon, stop) = (Arc::clone(&daemon), Arc::clone(&stop));
        std::thread::Builder::new()
            .name("kura-windows".into())
            .spawn(move || kura_daemon::window::run(daemon, stop))
            .context("start the window watcher")?;
    }
    let health_every = d
        .health_every
        .map_or(kura_daemon::health::EVERY, |e| e.std());
    if !health_every.is_zero() {
        let (daemon, stop) = (Arc::clone(&daemon), Arc::clone(&stop));
        std::thread::Builder::new()
            .name("kura-health".into())
            .spawn(move || kura_daemon::health::run(daemon, health_every, stop))
            .context("start the health sweep")?;
    }
    if !a.no_scheduler {
        if host.is_some() {
            let (daemon, stop, o) = (Arc::clone(&daemon), Arc::clone(&stop), sched.clone());
            std::thread::Builder::new()
                .name("kura-policies".into())
                .spawn(move || kura_daemon::policies::runner::run(daemon, o, stop))
                .context("start the policy runner")?;
        }
        let (daemon, stop) = (Arc::clone(&daemon), Arc::clone(&stop));
        std::thread::Builder::new()
            .name("kura-scheduler".into())
            .spawn(move || scheduler::run(daemon, sched, stop))
            .context("start the scheduler")?;
    }
    let quiet = app.global.quiet;
    let served = server::serve(daemon, listen, tls, stop, |l| {
        // The URL first, alone on stdout: scripts and tests read it (port 0 picks one);
        // the volumes' NBD URL on the next line when it hosts them.
        println!("{}", l.url);
        if let Some(nbd) = &nbd_url {
            println!("{nbd}");
        }
        if !quiet {
            eprintln!("kura daemon {name} serving {}/api/v1/", l.url);
            if let (Some(nbd), Some(h)) = (&nbd_url, &host) {
                eprintln!(
                    "serving {} volume(s) on {nbd}/NAME: {}",
                    h.served().len(),
                    h.served().join(", ")
                );
            }
            if let Some(f) = &l.fingerprint {
                eprintln!("TLS certificate SHA-256 fingerprint: {f}");
            }
        }
    })
    .with_context(|| format!("serve the API on {listen}"));
    // Stopped: background backups put their bits back and every volume closes cleanly.
    if let Some(h) = host {
        h.stop().context("close the served volumes")?;
    }
    served?;
    Ok(exit::OK)
}
