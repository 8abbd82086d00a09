//! A run's [`JobSpec`] from a job's typed settings: the one place a job definition (or an
//! ad-hoc `kura backup --redundancy`) becomes a run, for `kura job run` and the daemon alike.

use std::path::PathBuf;
use std::time::Duration;

use kura_catalog::{JobDef, Mode};
use kura_repo::backup::BackupOptions;
use kura_types::JobSettings;

use crate::hooks::Hook;
use crate::run::{JobSpec, RunMode};
use crate::{Error, Result};

/// The lease timings of a run: how long its allocations live without renewal, how often
/// they are renewed (a dead manager's targets return to the pool within a lease), and how
/// long the check before securing waits for a target to answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timings {
    pub lease: Duration,
    pub renew_every: Duration,
    pub check_within: Duration,
}

impl Default for Timings {
    fn default() -> Self {
        Timings {
            lease: Duration::from_secs(45),
            renew_every: Duration::from_secs(10),
            check_within: Duration::from_secs(5),
        }
    }
}

impl Timings {
    /// The defaults, changed by `KURA_LEASE`, `KURA_LEASE_RENEW` and `KURA_CHECK_WITHIN`
    /// (e.g. `5s`: tests and slow catalogs).
    pub fn from_env() -> Result<Timings> {
        let d = Timings::default();
        let env = |name: &str, default: Duration| -> Result<Duration> {
            match std::env::var(name) {
                Ok(v) => kura_types::Duration::parse_positive(&v)
                    .map(kura_types::Duration::std)
                    .map_err(|e| Error::Invalid(format!("{name}: {e}"))),
                Err(_) => Ok(default),
            }
        };
        let t = Timings {
            lease: env("KURA_LEASE", d.lease)?,
            renew_every: env("KURA_LEASE_RENEW", d.renew_every)?,
            check_within: env("KURA_CHECK_WITHIN", d.check_within)?,
        };
        if t.renew_every >= t.lease {
            return Err(Error::Invalid(format!(
                "KURA_LEASE_RENEW ({:?}) must be shorter than KURA_LEASE ({:?})",
                t.renew_every, t.lease
            )));
        }
        Ok(t)
    }
}

/// What a run of `sources` onto `redundancy` targets in `mode` with settings `s` does;
/// `job` is the job's number and name (0 and `None` for an ad-hoc backup).
pub fn spec(
    job: (i64, Option<String>),
    object: String,
    sources: Vec<PathBuf>,
    (redundancy, mode): (usize, Mode),
    s: &JobSettings,
    backup: BackupOptions,
    t: Timings,
) -> JobSpec {
    let hook = |cmd: &Option<String>| {
        cmd.clone().map(|command| Hook {
            command,
            timeout: s.hook_timeout.std(),
        })
    };
    JobSpec {
        job: job.0,
        job_name: job.1,
        object,
        sources,
        redundancy,
        mode: match mode {
            Mode::Mirror => RunMode::Mirror {
                quorum: s.quorum,
                stall_timeout: s.stall_timeout.std(),
            },
            Mode::Failover => RunMode::Failover {
                extent_bytes: s.extent_size.bytes(),
                extent_timeout: s.extent_timeout.std(),
                unreachable_for: s.unreachable_timeout.std(),
            },
        },
        targets: (!s.targets.is_empty()).then(|| s.targets.clone()),
        lease: t.lease,
        renew_every: t.renew_every,
        check_within: t.check_within,
        pre: hook(&s.pre),
        post: hook(&s.post),
        backup,
        route: None,
        secure_by: None,
        control: None,
    }
}

/// A job definition as a run: its object is its one source path.
pub fn for_job(def: &JobDef, backup: BackupOptions, t: Timings) -> JobSpec {
    spec(
        (def.id, Some(def.name.clone())),
        def.object.clone(),
        vec![PathBuf::from(&def.object)],
        (def.redundancy as usize, def.mode),
        &def.settings,
        backup,
        t,
    )
}
