//! One-command backups of served volumes (seed 003's AUTO mode): freeze, answer "accepted",
//! copy in the background, then thaw.
//!
//! [`Engine::backup`] opens the repository first (a wrong password or an unreachable target
//! fails before anything is frozen), then freezes the volume under its exclusive change lock
//! — by splitting its mirror pair when it is a duplex primary, otherwise by starting a
//! copy-before-write [`Session`] with a working volume from the pool — and returns the new
//! job's status as soon as the frozen image exists. A background thread backs the frozen
//! image up (incrementally when the dirty bitmap allows: the bits taken at the freeze say
//! what to read, and a session marks everything else "not needed"), writes the volume's
//! backup record, and then resyncs the pair or ends the session. Jobs are kept, with their
//! progress, for [`Engine::jobs`].
//!
//! The repository's backup chain follows the freeze: its bits go with the frozen image and
//! that chain starts afresh at the freeze (the other repositories' chains keep theirs); a
//! failed backup puts them back, a successful one makes the chain relative to the new
//! snapshot ([`crate::chains::Frozen`]).
//!
//! One job per volume at a time: a second request while one runs (frozen, copying, or
//! thawing) is refused. Besides there being one frozen image to copy, this is what lets the
//! parent snapshot be looked up *before* the freeze: a chain's base changes only when a job
//! ends, so nothing can change between the lookup and the freeze. The lookup reads the
//! repository (a round trip to a remote target), and hosts wait while the change lock is
//! held, so it must not happen under the lock.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use kura_repo::IndexedRepo;
use kura_repo::backup::{BackupOptions, CancelToken, ImageReader, ImageSource, backup};
use kura_repo::lock::{RepoLock, Shared};
use kura_types::Extent;

use crate::areas::AreaBackup;
use crate::backup::Plan;
use crate::chains::Frozen;
use crate::error::{Error, Result};
use crate::export::VolumeExport;
use crate::job::{Job, JobProgress, now};
pub use crate::job::{JobState, JobStatus};
use crate::pair::{Claim, Pair, PairState, Use, list};
use crate::records::RecordArea;
use crate::restore::{VolumeRestore, image_of, prepare, restore_into};
use crate::session::{Session, SessionSource};
use crate::store::VolumeStore;

/// The nice value of background backup threads (19 is the lowest priority).
const BACKUP_NICE: libc::c_int = 19;

/// How a served volume is frozen for a backup (one home: the policy table names it too).
pub use kura_types::Freeze;

/// A repository opened for a background backup, under a shared lock.
pub struct Opened {
    pub repo: IndexedRepo,
    pub lock: RepoLock<Shared>,
    pub options: BackupOptions,
}

/// A repository a client asks the engine to open: where, its password, the client's own
/// deadline of each storage operation (its `--timeout`; `None`: the server's own), and the
/// traffic route whose limits pace it besides the target's own (a policy's `route`; the
/// target's catalog name in `route_target`, for rules naming targets by name).
/// Deliberately not `Debug`: it carries the password.
#[derive(Clone)]
pub struct RepoAccess {
    pub url: String,
    pub password: Vec<u8>,
    pub deadline: Option<Duration>,
    pub route: Option<String>,
    pub route_target: Option<String>,
}

impl RepoAccess {
    pub fn new(url: String, password: Vec<u8>, timeout_ms: Option<u64>) -> RepoAccess {
        RepoAccess {
            url,
            password,
            deadline: timeout_ms.map(Duration::from_millis),
            route: None,
            route_target: None,
        }
    }
}

/// Opens repositories for the engine (the CLI knows targets, credentials and options).
/// Errors stay typed, so a client's exit code says what went wrong (unreachable, wrong
/// password, locked, …) as when it opens a repository itself.
///
/// `cancel` is the work's cancellation: uploads the opened repository's backend is still
/// holding back for a traffic limit give up when it is cancelled.
pub trait RepoOpener: Send + Sync {
    fn open(&self, access: &RepoAccess, cancel: &CancelToken) -> kura_repo::Result<Opened>;
}

/// A split pair's secondary as a backup reads it.
struct SecondarySource(Arc<Pair>);

impl ImageSource for SecondarySource {
    fn size(&self) -> u64 {
        kura_nbd::Export::size(&self.0.secondary)
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        kura_nbd::Export::read_at(&self.0.secondary, offset, buf)
    }
}

/// What a job backs up, and how it thaws.
enum Kind {
    /// The whole volume, frozen by a session or a split: the chain's bits taken at the
    /// freeze (`frozen`, moved into the job when it starts), the session (likewise) or the
    /// claim on the split secondary (given up for the resync that ends the job).
    Volume {
        plan: Plan,
        source: Arc<dyn ImageSource>,
        frozen: Option<Frozen>,
        session: Option<Arc<Session>>,
        claim: Option<Claim>,
    },
    /// A split area, read from the secondary; it stays split.
    Area(AreaBackup),
}

/// A volume's claim on its one job at a time; released when dropped (the job's end, or an
/// error before it started).
struct Busy {
    engine: Arc<Engine>,
    volume: String,
}

impl Busy {
    fn take(engine: &Arc<Engine>, volume: &str) -> Result<Busy> {
        let mut busy = engine.busy.lock().unwrap_or_else(|p| p.into_inner());
        engine.not_stopping()?;
        if !busy.insert(volume.to_string()) {
            return Err(Error::InUse(format!(
                "volume {volume:?} is in use: a backup job of it is already running, or a \
                 restore into it (kura volume jobs)"
            )));
        }
        Ok(Busy {
            engine: Arc::clone(engine),
            volume: volume.to_string(),
        })
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        let mut busy = self.engine.busy.lock().unwrap_or_else(|p| p.into_inner());
        busy.remove(&self.volume);
    }
}

/// The volume engine of a serving process: its store, and the backups it runs.
pub struct Engine {
    store: VolumeStore,
    opener: Option<Arc<dyn RepoOpener>>,
    cancel: CancelToken,
    jobs: Mutex<Vec<Arc<Job>>>,
    /// Volumes with a job in progress (see the module docs: one at a time).
    busy: Mutex<std::collections::HashSet<String>>,
    next: AtomicU64,
    /// Signalled when a job ends.
    ended: (Mutex<()>, Condvar),
    /// Set by [`stop`](Self::stop): no new job starts.
    stopping: AtomicBool,
}

impl Engine {
    pub fn new(
        store: VolumeStore,
        opener: Option<Arc<dyn RepoOpener>>,
        cancel: CancelToken,
    ) -> Arc<Engine> {
        Arc::new(Engine {
            store,
            opener,
            cancel,
            jobs: Mutex::default(),
            busy: Mutex::default(),
            next: AtomicU64::new(1),
            ended: (Mutex::new(()), Condvar::new()),
            stopping: AtomicBool::new(false),
        })
    }

    /// Refused once [`stop`](Self::stop) began.
    fn not_stopping(&self) -> Result<()> {
        if self.stopping.load(Ordering::SeqCst) {
            return Err(Error::InUse(
                "the volume server is stopping: no new backup or restore starts".into(),
            ));
        }
        Ok(())
    }

    pub fn store(&self) -> &VolumeStore {
        &self.store
    }

    pub fn jobs(&self) -> Vec<JobStatus> {
        let jobs = self.jobs.lock().unwrap_or_else(|p| p.into_inner());
        jobs.iter().map(|j| j.snapshot()).collect()
    }

    pub fn job(&self, id: u64) -> Result<JobStatus> {
        self.jobs()
            .into_iter()
            .find(|j| j.id == id)
            .ok_or_else(|| Error::Invalid(format!("no backup job {id}")))
    }

    /// Cancel backup job `id`: its copy stops at its next block, no snapshot is made, and
    /// the changes it was to copy stay marked for the next backup (its chain's bits go
    /// back, as for any failed backup). A job that already ended is left as it is.
    pub fn cancel_job(&self, id: u64) -> Result<()> {
        let jobs = self.jobs.lock().unwrap_or_else(|p| p.into_inner());
        let job = jobs
            .iter()
            .find(|j| j.snapshot().id == id)
            .ok_or_else(|| Error::Invalid(format!("no backup job {id}")))?;
        job.cancel.cancel();
        Ok(())
    }

    /// Stop with the server: refuse new jobs, cancel the running ones and give them
    /// `grace` to end (a cancelled copy ends at its next block); then give up on those still
    /// running — stuck on a target that stopped answering, say — by putting their chains'
    /// bits back now, so that closing the volumes leaves their change tracking trusted and
    /// the next backup reads what the lost one would have. Their threads may still be
    /// blocked; they touch nothing more (a snapshot one of them commits meanwhile is
    /// simply not its chain's base). Returns the jobs given up on.
    pub fn stop(&self, grace: Duration) -> Vec<u64> {
        self.stopping.store(true, Ordering::SeqCst);
        self.cancel.cancel();
        for job in self.jobs.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            job.cancel.cancel();
        }
        let until = Instant::now() + grace;
        let running = || -> Vec<Arc<Job>> {
            let jobs = self.jobs.lock().unwrap_or_else(|p| p.into_inner());
            jobs.iter()
                .filter(|j| j.snapshot().state == JobState::Running)
                .cloned()
                .collect()
        };
        {
            let (m, cv) = &self.ended;
            let mut g = m.lock().unwrap_or_else(|p| p.into_inner());
            while !running().is_empty() && Instant::now() < until {
                let left = until.saturating_duration_since(Instant::now());
                g = cv
                    .wait_timeout(g, left.min(Duration::from_millis(50)))
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
            }
        }
        let mut given_up = Vec::new();
        for job in running() {
            let frozen = {
                let mut slot = job.frozen.lock().unwrap_or_else(|p| p.into_inner());
                job.abandoned.store(true, Ordering::SeqCst);
                slot.take()
            };
            let mut st = job.status.lock().unwrap_or_else(|p| p.into_inner());
            let mut why = String::from(
                "interrupted: the server stopped before the backup finished; the changes it \
                 was to copy stay marked for the next backup",
            );
            if let Some(f) = frozen {
                let put_back = match job.export.upgrade() {
                    Some(export) => export.chains().thaw_failed(f),
                    None => Err(Error::Invalid("its volume is no longer open".into())),
                };
                if let Err(e) = put_back {
                    why = format!("interrupted; putting its changes back failed: {e}");
                }
            }
            if st.freeze == Freeze::Split && st.area.is_none() {
                why.push_str(&format!(
                    "; the pair of {} stays split (kura pair resync {})",
                    st.volume, st.volume
                ));
            }
            tracing::warn!("volume {}: backup job {}: {why}", st.volume, st.id);
            st.state = JobState::Failed;
            st.finished = Some(now());
            st.error = Some(why);
            st.failure = Some(kura_repo::Failure::Interrupted);
            given_up.push(st.id);
        }
        given_up
    }

    /// Freeze `volume`, start backing it up to `repository` in the background, and return
    /// the job as accepted (the frozen image exists). With `area`, back up that part of a
    /// split area of its pair's secondary instead ([`crate::areas`]): frozen already, at
    /// the area's split time.
    pub fn backup(
        self: &Arc<Self>,
        volume: &str,
        freeze: Freeze,
        area: Option<Extent>,
        access: &RepoAccess,
    ) -> Result<JobStatus> {
        let repository = access.url.as_str();
        let opener = self.opener.as_ref().ok_or_else(|| {
            Error::Invalid("this server cannot open repositories for backups".into())
        })?;
        let meta = self.store.meta(volume)?;
        if area.is_some() && freeze == Freeze::Session {
            return Err(Error::Invalid(
                "an area is backed up from its split (kura pair split --area); a session \
                 backs up the whole volume"
                    .into(),
            ));
        }
        let busy = Busy::take(self, volume)?;
        // The job's cancellation, from the start: the repository's uploads answer to it.
        let cancel = CancelToken::new();
        // Fail before freezing anything: the repository first.
        let opened = opener.open(access, &cancel)?;
        // The server may have begun to stop while the repository opened: freeze nothing.
        self.not_stopping()?;
        let export = self.store.open_export(volume)?;
        if let Some(e) = area {
            let a = crate::areas::prepare(&export, e)?;
            return self.start(
                volume,
                Freeze::Split,
                repository,
                export,
                opened,
                Kind::Area(a),
                busy,
                cancel,
            );
        }
        // Outside the change lock (module docs): only this job can change the chain before
        // the freeze.
        let repo_id = opened.repo.config().id;
        let parent = Plan::parent(export.chains(), repo_id, &opened.repo);
        let pair = export.pair();
        let freeze = match (freeze, &pair) {
            (Freeze::Auto, Some(p)) if p.config().state == PairState::Duplex => Freeze::Split,
            (Freeze::Auto, _) => Freeze::Session,
            (Freeze::Split, None) => {
                return Err(Error::Invalid(format!(
                    "{volume} has no mirror pair to split (kura pair create)"
                )));
            }
            (Freeze::Split, Some(p)) if p.config().state == PairState::Split => {
                let c = p.config();
                return Err(Error::Invalid(if c.areas.is_empty() {
                    format!(
                        "the pair of {volume} is already split (since {}): resync it first, or \
                         back up its frozen secondary with --area 0:{}",
                        c.since, meta.size
                    )
                } else {
                    format!(
                        "areas of the pair of {volume} are split at their own times ({}): a \
                         whole-volume image of the secondary would mix them. Back up each area \
                         with --area, or the whole volume with --freeze session",
                        list(&c.areas)
                    )
                }));
            }
            (f, _) => f,
        };
        let work = match freeze {
            Freeze::Session => Some(self.store.claim_work(meta.size)?),
            _ => None,
        };
        // The freeze: nothing in flight, the image and the chain's bits taken at one instant.
        // Deciding the plan there does no I/O.
        let plan_for = |frozen: &Frozen| -> Result<Plan> {
            Ok(Plan::decide(parent.clone(), meta.size, frozen))
        };
        let (source, session, plan, frozen, claim): (Arc<dyn ImageSource>, _, Plan, _, _) =
            match (work, &pair) {
                (Some(work), _) => {
                    let mut plan = None;
                    let (s, frozen) = export.begin_session(work, repo_id, |frozen| {
                        let p = plan_for(frozen)?;
                        let reads = p.reads().map(<[_]>::to_vec);
                        plan = Some(p);
                        Ok(reads)
                    })?;
                    let plan = plan.ok_or_else(|| Error::Invalid("no plan".into()))?;
                    let volume: Arc<dyn kura_nbd::Export> = Arc::clone(&export) as _;
                    let src = SessionSource::new(volume, Arc::clone(&s));
                    (Arc::new(src), Some(s), plan, frozen, None)
                }
                (None, Some(p)) => {
                    let g = export.exclusive()?;
                    let frozen = export.freeze_chain(repo_id, &g);
                    let plan = match plan_for(&frozen).and_then(|plan| {
                        self.store.split_locked(&export, p, Vec::new(), &g)?;
                        Ok(plan)
                    }) {
                        Ok(plan) => plan,
                        Err(e) => {
                            export.chains().thaw_failed(frozen)?;
                            return Err(e);
                        }
                    };
                    drop(g);
                    // No resync under the backup: it is this job's, once the copy is done.
                    let claim = match p.claim(0, meta.size, Use::Backup) {
                        Ok(c) => c,
                        Err(e) => {
                            export.chains().thaw_failed(frozen)?;
                            return Err(e);
                        }
                    };
                    let src = SecondarySource(Arc::clone(p));
                    (Arc::new(src), None, plan, frozen, Some(claim))
                }
                (None, None) => {
                    return Err(Error::Invalid(format!("{volume}: nothing to freeze with")));
                }
            };
        let kind = Kind::Volume {
            plan,
            source,
            frozen: Some(frozen),
            session,
            claim,
        };
        self.start(
            volume, freeze, repository, export, opened, kind, busy, cancel,
        )
    }

    /// Register the job of a frozen image and start copying it in the background.
    #[allow(clippy::too_many_arguments)]
    fn start(
        self: &Arc<Self>,
        volume: &str,
        freeze: Freeze,
        repository: &str,
        export: Arc<VolumeExport>,
        opened: Opened,
        kind: Kind,
        busy: Busy,
        cancel: CancelToken,
    ) -> Result<JobStatus> {
        let mut kind = kind;
        let (total, incremental, full_reason, session, frozen, area) = match &mut kind {
            // The job holds the session and the frozen bits from here on (its last hold on
            // the session goes when it thaws).
            Kind::Volume {
                plan,
                session,
                frozen,
                ..
            } => (
                kura_nbd::Export::size(&*export),
                plan.reads().is_some(),
                plan.full_reason.clone(),
                session.take(),
                frozen.take(),
                None,
            ),
            Kind::Area(a) => (
                a.length,
                false,
                None,
                None,
                None,
                Some(RecordArea {
                    offset: a.offset,
                    length: a.length,
                    split: a.area.split.clone(),
                }),
            ),
        };
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let job = Arc::new(Job {
            status: Mutex::new(JobStatus {
                id,
                volume: volume.into(),
                freeze,
                state: JobState::Running,
                repository: repository.to_string(),
                started: now(),
                finished: None,
                bytes_total: total,
                bytes_done: 0,
                incremental,
                full_reason,
                snapshot: None,
                error: None,
                failure: None,
                work_volume: session.as_ref().map(|s| s.work_volume().to_string()),
                session: None,
                resync: None,
                area,
            }),
            done: AtomicU64::new(0),
            total: AtomicU64::new(0),
            session: Mutex::new(session),
            export: Arc::downgrade(&export),
            frozen: Mutex::new(frozen),
            abandoned: AtomicBool::new(false),
            cancel,
        });
        self.jobs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Arc::clone(&job));
        let accepted = job.snapshot();
        let engine = Arc::clone(self);
        let volume = volume.to_string();
        let spawned = std::thread::Builder::new()
            .name(format!("kura-volume-backup-{id}"))
            .spawn(move || {
                engine.run(&job, &volume, &export, opened, kind, busy);
            });
        if let Err(e) = spawned {
            return Err(Error::Io {
                what: "start the backup thread".into(),
                source: e,
            });
        }
        Ok(accepted)
    }

    /// Restore `snapshot` of `repository` into `volume` (created if missing) through this
    /// server's write path, refused while a client is connected unless `force` (see
    /// [`crate::restore`]); answers when it ends. Excludes backup jobs of the volume.
    pub fn restore(
        self: &Arc<Self>,
        volume: &str,
        access: &RepoAccess,
        snapshot: &str,
        force: bool,
        threads: Option<usize>,
    ) -> Result<VolumeRestore> {
        let opener = self.opener.as_ref().ok_or_else(|| {
            Error::Invalid("this server cannot open repositories for restores".into())
        })?;
        let busy = Busy::take(self, volume)?;
        let opened = opener.open(access, &self.cancel)?;
        let snap = opened.repo.find_snapshot(snapshot)?;
        let created = prepare(&self.store, volume, image_of(&snap)?.size, false)?;
        let export = self.store.open_export(volume)?;
        let threads = threads
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get().min(8)));
        let r = restore_into(
            &self.store,
            &export,
            &opened.repo,
            &opened.lock,
            &snap,
            force,
            threads,
            &kura_repo::progress::NoProgress,
            &self.cancel,
        );
        drop(busy);
        let mut r = r?;
        r.created = created;
        r.served = true;
        if r.damaged.is_empty() {
            tracing::info!("volume {volume}: restored snapshot {}", snap.id.short());
        } else {
            tracing::error!(
                "volume {volume}: restore of snapshot {} incomplete: {} damaged blob(s)",
                snap.id.short(),
                r.damaged.len()
            );
        }
        Ok(r)
    }

    #[allow(clippy::too_many_arguments)]
    fn run(
        &self,
        job: &Arc<Job>,
        volume: &str,
        export: &Arc<VolumeExport>,
        opened: Opened,
        kind: Kind,
        busy: Busy,
    ) {
        // Host I/O first: the backup's threads (this one and the readers, encoders and
        // uploaders it starts, which inherit it) yield the CPU to the server's. A frozen
        // image can wait; the hosts writing to the volume should not.
        // SAFETY: setpriority on the calling thread (who = 0) only changes its nice value.
        if unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, BACKUP_NICE) } != 0 {
            tracing::debug!(
                "backup job: lowering its priority: {}",
                std::io::Error::last_os_error()
            );
        }
        let o = match &kind {
            Kind::Volume { plan, source, .. } => {
                let mut o = plan.options(&opened.options);
                o.image_source = Some(ImageReader(Arc::clone(source)));
                o
            }
            Kind::Area(a) => a.options(&opened.options),
        };
        // A job added while the engine stopped, after `stop` cancelled the others.
        if self.cancel.is_cancelled() {
            job.cancel.cancel();
        }
        let progress = JobProgress(Arc::clone(job));
        let result = backup(
            &opened.repo,
            &opened.lock,
            &[self.store.raw(volume)],
            &o,
            &progress,
            &job.cancel,
        )
        .map_err(Error::from)
        .and_then(|outcome| {
            let meta = self.store.meta(volume)?;
            let repository = job
                .status
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .repository
                .clone();
            let record = match &kind {
                Kind::Volume { plan, .. } => {
                    plan.record(&meta, &repository, &opened.repo, &outcome)
                }
                Kind::Area(a) => a.record(&meta, &repository, &opened.repo, &outcome),
            };
            self.store.add_record(volume, &record)?;
            Ok(outcome)
        });
        drop(opened);
        // The options hold the frozen image's reader and with it the session: let go of it
        // here, so that ending the session below really returns the working volume to the
        // pool (emptied) before anyone is told the job ended. (Without this, a client that
        // saw "succeeded" could still find the working volume claimed and holding copies.)
        drop(o);
        let frozen = {
            let mut slot = job.frozen.lock().unwrap_or_else(|p| p.into_inner());
            if job.abandoned.load(Ordering::SeqCst) {
                // The server stopped without this job (`stop`): its bits are back and its
                // volume is closed. Touch nothing more.
                return;
            }
            slot.take()
        };
        let session = job.session.lock().unwrap_or_else(|p| p.into_inner()).take();
        let mut resync = None;
        let mut thaw_error = None;
        match kind {
            Kind::Volume { claim, source, .. } => {
                drop(source);
                let thawed = match (&result, frozen) {
                    (Ok(outcome), Some(frozen)) => export.chains().thaw_done(&frozen, outcome.id),
                    (Err(_), Some(frozen)) => export.chains().thaw_failed(frozen),
                    (_, None) => Ok(()),
                };
                thaw_error = thawed.err().map(|e| e.to_string());
                // Thaw the image: end the session (its working volume returns to the pool)
                // or resync the pair back to duplex.
                if let Some(s) = &session {
                    if let Err(e) = export.end_session() {
                        thaw_error = Some(e.to_string());
                    }
                    let stats = s.stats();
                    job.status.lock().unwrap_or_else(|p| p.into_inner()).session = Some(stats);
                } else {
                    drop(claim);
                    match self.store.resync(export) {
                        Ok(r) => resync = Some(r),
                        Err(e) => thaw_error = Some(format!("resync after the backup: {e}")),
                    }
                }
            }
            // The area stays split (its owner resyncs it); only the claim goes. The volume's
            // chains were never touched.
            Kind::Area(a) => drop(a),
        }
        // The last hold on the session: its working volume is emptied and back in the pool.
        drop(session);
        // Thawed: the next job of this volume may start. Released before the final state is
        // shown, so a client that sees this job end can start the next at once.
        drop(busy);
        {
            let mut st = job.status.lock().unwrap_or_else(|p| p.into_inner());
            st.finished = Some(now());
            st.bytes_done = job.done.load(Ordering::Relaxed);
            st.resync = resync;
            match result {
                Ok(outcome) => {
                    st.state = JobState::Succeeded;
                    st.snapshot = Some(outcome.id.to_hex());
                    st.error = thaw_error;
                }
                Err(e) => {
                    st.state = JobState::Failed;
                    st.failure = Some(e.failure());
                    st.error = Some(match thaw_error {
                        Some(t) => format!("{e}; {t}"),
                        None => e.to_string(),
                    });
                }
            }
            match st.state {
                JobState::Succeeded => tracing::info!(
                    "volume {volume}: backup job {} done: snapshot {}",
                    st.id,
                    st.snapshot.clone().unwrap_or_default()
                ),
                _ => tracing::error!(
                    "volume {volume}: backup job {} failed: {}",
                    st.id,
                    st.error.clone().unwrap_or_default()
                ),
            }
        }
        let (m, cv) = &self.ended;
        let _g = m.lock().unwrap_or_else(|p| p.into_inner());
        cv.notify_all();
    }
}
