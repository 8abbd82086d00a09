//! Prometheus metrics at `/metrics` (text exposition format), through `prometheus-client`.
//!
//! Per job: when it last succeeded, how long its last run took, how many bytes it moved,
//! and runs by result; its running or next run's predicted finish and window end (set by
//! the window watcher for running runs, at each scrape for the others), the overruns it
//! was warned of before they happened and those that happened (`at-window-end finish`). Per daemon: tasks by state, whether the catalog answers. Metric
//! names follow Prometheus conventions (`_seconds`, `_bytes`, `_total`, `_timestamp_seconds`).

use std::sync::Mutex;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::tasks::{TaskInfo, TaskState};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct JobLabel {
    job: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct JobResult {
    job: String,
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResourceLabel {
    kind: String,
    resource: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: String,
}

/// The daemon's metrics. Job metrics are updated as runs end; the rest at each scrape.
pub struct Metrics {
    registry: Mutex<Registry>,
    last_success: Family<JobLabel, Gauge<f64, std::sync::atomic::AtomicU64>>,
    last_duration: Family<JobLabel, Gauge<f64, std::sync::atomic::AtomicU64>>,
    last_bytes: Family<JobLabel, Gauge>,
    runs: Family<JobResult, Counter>,
    predicted_finish: Family<JobLabel, Gauge<f64, std::sync::atomic::AtomicU64>>,
    window_end: Family<JobLabel, Gauge<f64, std::sync::atomic::AtomicU64>>,
    overrun_warnings: Family<JobLabel, Counter>,
    targets_dropped: Family<JobLabel, Counter>,
    overruns: Family<JobLabel, Counter>,
    tasks: Family<StateLabel, Gauge>,
    catalog_up: Gauge,
    resource_usable: Family<ResourceLabel, Gauge>,
    resource_in_use: Family<ResourceLabel, Gauge>,
    resource_errors: Family<ResourceLabel, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut r = Registry::with_prefix("kura");
        let m = Metrics {
            registry: Mutex::new(Registry::default()),
            last_success: Family::default(),
            last_duration: Family::default(),
            last_bytes: Family::default(),
            runs: Family::default(),
            predicted_finish: Family::default(),
            window_end: Family::default(),
            overrun_warnings: Family::default(),
            targets_dropped: Family::default(),
            overruns: Family::default(),
            tasks: Family::default(),
            catalog_up: Gauge::default(),
            resource_usable: Family::default(),
            resource_in_use: Family::default(),
            resource_errors: Family::default(),
        };
        r.register(
            "job_last_success_timestamp_seconds",
            "When the job's last successful run ended (Unix time)",
            m.last_success.clone(),
        );
        r.register(
            "job_last_duration_seconds",
            "How long the job's last run took",
            m.last_duration.clone(),
        );
        r.register(
            "job_last_bytes",
            "Bytes the job's last run read",
            m.last_bytes.clone(),
        );
        r.register("job_runs", "Job runs by result", m.runs.clone());
        r.register(
            "job_predicted_finish_seconds",
            "When the job's running (or else next) run is predicted to finish (Unix time)",
            m.predicted_finish.clone(),
        );
        r.register(
            "job_window_end_seconds",
            "When the job's running (or else next) run's window or max-run ends (Unix time)",
            m.window_end.clone(),
        );
        r.register(
            "job_overrun_warnings",
            "Runs of the job predicted, while they ran, to overrun their window",
            m.overrun_warnings.clone(),
        );
        r.register(
            "job_targets_dropped",
            "Mirror targets dropped from the job's runs because they alone would have made \
             the run overrun its window",
            m.targets_dropped.clone(),
        );
        r.register(
            "job_window_overruns",
            "Runs of the job that ran past their window's end (at-window-end finish)",
            m.overruns.clone(),
        );
        r.register(
            "tasks",
            "Tasks kept by this daemon, by state",
            m.tasks.clone(),
        );
        r.register(
            "catalog_up",
            "Whether the catalog answered at the last scrape (1) or not (0)",
            m.catalog_up.clone(),
        );
        r.register(
            "resource_usable",
            "Whether the resource (target, medium, worker, path) is usable now: enabled and \
             healthy (1) or not (0)",
            m.resource_usable.clone(),
        );
        r.register(
            "resource_in_use",
            "Streams of runs holding the resource now",
            m.resource_in_use.clone(),
        );
        r.register(
            "resource_errors",
            "Errors recorded against the resource since its last success (its health)",
            m.resource_errors.clone(),
        );
        *m.registry.lock().unwrap_or_else(|p| p.into_inner()) = r;
        m
    }
}

impl Metrics {
    /// A job run ended (its task's final record).
    pub fn job_ended(&self, job: &str, task: &TaskInfo, took: Duration) {
        let l = JobLabel { job: job.into() };
        self.last_duration.get_or_create(&l).set(took.as_secs_f64());
        self.last_bytes
            .get_or_create(&l)
            .set(i64::try_from(task.bytes_done).unwrap_or(i64::MAX));
        if task.state == TaskState::Succeeded {
            let now = chrono::Utc::now().timestamp_millis() as f64 / 1000.0;
            self.last_success.get_or_create(&l).set(now);
        }
        self.runs
            .get_or_create(&JobResult {
                job: job.into(),
                result: task.state.as_str().into(),
            })
            .inc();
    }

    /// Register a metric of another module (named without the `kura_` prefix, which the
    /// registry adds).
    pub fn register(
        &self,
        name: &str,
        help: &str,
        metric: impl prometheus_client::registry::Metric,
    ) {
        self.registry
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .register(name, help, metric);
    }

    /// The inventory as the catalog has it now: each resource's health and use.
    pub fn resources(&self, rs: &[kura_catalog::Resource]) {
        self.resource_usable.clear();
        self.resource_in_use.clear();
        self.resource_errors.clear();
        for r in rs {
            let l = ResourceLabel {
                kind: r.kind.as_str().into(),
                resource: r.name.clone(),
            };
            let usable = r.enabled && r.healthy;
            self.resource_usable
                .get_or_create(&l)
                .set(i64::from(usable));
            self.resource_in_use
                .get_or_create(&l)
                .set(i64::try_from(r.allocations.len()).unwrap_or(i64::MAX));
            self.resource_errors.get_or_create(&l).set(r.errors);
        }
    }

    /// A job's outlook: its predicted finish and window end (a series is removed when
    /// there is none).
    pub fn outlook(
        &self,
        job: &str,
        predicted_finish: Option<chrono::DateTime<chrono::Utc>>,
        window_end: Option<chrono::DateTime<chrono::Utc>>,
    ) {
        let l = JobLabel { job: job.into() };
        for (family, t) in [
            (&self.predicted_finish, predicted_finish),
            (&self.window_end, window_end),
        ] {
            match t {
                Some(t) => {
                    family
                        .get_or_create(&l)
                        .set(t.timestamp_millis() as f64 / 1000.0);
                }
                None => {
                    family.remove(&l);
                }
            }
        }
    }

    /// A run of `job` was predicted to overrun its window.
    pub fn overrun_warning(&self, job: &str) {
        self.overrun_warnings
            .get_or_create(&JobLabel { job: job.into() })
            .inc();
    }

    /// A run of `job` dropped a mirror target that alone would have made it overrun.
    pub fn target_dropped(&self, job: &str) {
        self.targets_dropped
            .get_or_create(&JobLabel { job: job.into() })
            .inc();
    }

    /// A run of `job` ran past its window's end.
    pub fn window_overrun(&self, job: &str) {
        self.overruns
            .get_or_create(&JobLabel { job: job.into() })
            .inc();
    }

    /// The text exposition, after setting the scrape-time gauges.
    pub fn render(
        &self,
        tasks: &std::collections::BTreeMap<TaskState, u64>,
        catalog_up: bool,
    ) -> String {
        for s in TaskState::ALL {
            self.tasks
                .get_or_create(&StateLabel {
                    state: s.as_str().into(),
                })
                .set(i64::try_from(tasks.get(&s).copied().unwrap_or(0)).unwrap_or(i64::MAX));
        }
        self.catalog_up.set(i64::from(catalog_up));
        let mut out = String::new();
        let r = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &r) {
            tracing::error!("encoding metrics: {e}");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_runs_show_up_in_the_exposition() {
        let m = Metrics::default();
        let t = TaskInfo {
            id: "x".into(),
            kind: "job-run".into(),
            subject: "nightly".into(),
            state: TaskState::Succeeded,
            started_by: "schedule".into(),
            started: String::new(),
            finished: None,
            bytes_total: None,
            bytes_done: 4096,
            items_done: 1,
            bytes_uploaded: 0,
            bytes_new: 0,
            bytes_stored: 0,
            error: None,
            predicted_finish: None,
            window_end: None,
            overrun: None,
        };
        m.job_ended("nightly", &t, Duration::from_millis(1500));
        let at = chrono::DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        m.outlook("nightly", Some(at), Some(at));
        m.overrun_warning("nightly");
        let text = m.render(&Default::default(), true);
        assert!(
            text.contains("kura_job_predicted_finish_seconds{job=\"nightly\"} 1700000000"),
            "{text}"
        );
        assert!(
            text.contains("kura_job_window_end_seconds{job=\"nightly\"} 1700000000"),
            "{text}"
        );
        assert!(
            text.contains("kura_job_overrun_warnings_total{job=\"nightly\"} 1"),
            "{text}"
        );
        m.outlook("nightly", None, None);
        let text = m.render(&Default::default(), true);
        assert!(
            !text.contains("kura_job_predicted_finish_seconds{"),
            "{text}"
        );
        assert!(
            text.contains("kura_job_last_duration_seconds{job=\"nightly\"} 1.5"),
            "{text}"
        );
        assert!(
            text.contains("kura_job_last_bytes{job=\"nightly\"} 4096"),
            "{text}"
        );
        assert!(
            text.contains("kura_job_runs_total{job=\"nightly\",result=\"succeeded\"} 1"),
            "{text}"
        );
        assert!(text.contains("kura_tasks{state=\"running\"} 0"), "{text}");
        assert!(text.contains("kura_catalog_up 1"), "{text}");
        assert!(
            text.contains("kura_job_last_success_timestamp_seconds{job=\"nightly\"}"),
            "{text}"
        );
    }
}
