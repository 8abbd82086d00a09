//! A client of a running daemon's REST API: what the `kura` command uses when a daemon is
//! configured (`KURA_DAEMON` and `KURA_TOKEN`, or `[daemon] url` and `token_file`), so
//! that work it starts runs *in* the daemon — a task the daemon tracks, logs and can
//! cancel — rather than beside it.
//!
//! Blocking (reqwest's blocking client): the CLI is not async. Answers are read into the
//! same types the API serves ([`TaskInfo`], [`JobView`]), never as JSON by key; an API error
//! comes back as [`ClientError::Api`] with its stable code.

use std::time::Duration;

use serde::de::DeserializeOwned;

use crate::TaskInfo;
use crate::api::{ErrorBody, JobView};

/// Why a request to the daemon failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The daemon could not be reached (not running, wrong address, TLS refused).
    #[error("the daemon at {url} cannot be reached: {why}")]
    Unreachable { url: String, why: String },
    /// The daemon answered with an error (its stable code, see [`crate::Error::code`]).
    #[error("the daemon refused: {message} ({code})")]
    Api {
        status: u16,
        code: String,
        message: String,
    },
    /// The daemon answered something this client does not understand (another version).
    #[error("the daemon's answer to {what} is not understood: {why}")]
    Decode { what: String, why: String },
    #[error("{0}")]
    Invalid(String),
}

impl ClientError {
    /// The stable code of an API error (`not_found`, `conflict`, …), if it is one.
    pub fn code(&self) -> Option<&str> {
        match self {
            ClientError::Api { code, .. } => Some(code),
            _ => None,
        }
    }
}

pub type Result<T> = std::result::Result<T, ClientError>;

/// A daemon's API at `base` (`http://127.0.0.1:8787`), with a bearer token.
pub struct Client {
    base: String,
    token: String,
    http: reqwest::blocking::Client,
}

impl Client {
    pub fn new(base: &str, token: &str) -> Result<Client> {
        let base = base.trim_end_matches('/').to_string();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(ClientError::Invalid(format!(
                "daemon URL {base:?}: expected http://HOST:PORT or https://HOST:PORT"
            )));
        }
        if token.trim().is_empty() {
            return Err(ClientError::Invalid("the API token is empty".into()));
        }
        let http = reqwest::blocking::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| ClientError::Invalid(format!("HTTP client: {e}")))?;
        Ok(Client {
            base,
            token: token.trim().to_string(),
            http,
        })
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    fn send(
        &self,
        what: &str,
        rb: reqwest::blocking::RequestBuilder,
    ) -> Result<reqwest::blocking::Response> {
        let r = rb
            .bearer_auth(&self.token)
            .send()
            .map_err(|e| ClientError::Unreachable {
                url: self.base.clone(),
                // The error names the URL, never the token (it is in a header).
                why: format!("{what}: {e}"),
            })?;
        let status = r.status();
        if status.is_success() {
            return Ok(r);
        }
        let text = r.text().unwrap_or_default();
        Err(match serde_json::from_str::<ErrorBody>(&text) {
            Ok(b) => ClientError::Api {
                status: status.as_u16(),
                code: b.error.code,
                message: b.error.message,
            },
            Err(_) => ClientError::Api {
                status: status.as_u16(),
                code: "internal".into(),
                message: format!("{what}: HTTP {status}"),
            },
        })
    }

    fn json<T: DeserializeOwned>(
        &self,
        what: &str,
        rb: reqwest::blocking::RequestBuilder,
    ) -> Result<T> {
        let text = self
            .send(what, rb)?
            .text()
            .map_err(|e| ClientError::Unreachable {
                url: self.base.clone(),
                why: format!("{what}: {e}"),
            })?;
        serde_json::from_str(&text).map_err(|e| ClientError::Decode {
            what: what.into(),
            why: e.to_string(),
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}/api/v1/{path}", self.base)
    }

    /// Start a run of job `name` now: its task.
    pub fn run_job(&self, name: &str) -> Result<TaskInfo> {
        let what = format!("run job {name}");
        self.json(
            &what,
            self.http.post(self.url(&format!("jobs/{}/run", seg(name)))),
        )
    }

    pub fn jobs(&self) -> Result<Vec<JobView>> {
        self.json("list jobs", self.http.get(self.url("jobs")))
    }

    pub fn task(&self, id: &str) -> Result<TaskInfo> {
        self.json(
            &format!("task {id}"),
            self.http.get(self.url(&format!("tasks/{}", seg(id)))),
        )
    }

    /// Tasks, newest first, filtered by `state`, `kind`, `subject` where given.
    pub fn tasks(&self, filter: &[(&str, &str)]) -> Result<Vec<TaskInfo>> {
        let mut q = url::form_urlencoded::Serializer::new(String::new());
        q.extend_pairs(filter);
        let q = q.finish();
        let url = if q.is_empty() {
            self.url("tasks")
        } else {
            format!("{}?{q}", self.url("tasks"))
        };
        self.json("list tasks", self.http.get(url))
    }

    /// The task's log as written so far.
    /// The task's log lines from line `from` on (0-based).
    pub fn log(&self, id: &str, from: usize) -> Result<Vec<String>> {
        let page: crate::api::LogLines = self.json(
            &format!("log of task {id}"),
            self.http
                .get(self.url(&format!("tasks/{}/log?from={from}", seg(id)))),
        )?;
        Ok(page.lines)
    }

    pub fn cancel(&self, id: &str) -> Result<TaskInfo> {
        self.json(
            &format!("cancel task {id}"),
            self.http
                .post(self.url(&format!("tasks/{}/cancel", seg(id)))),
        )
    }

    /// Wait for task `id` to end, giving each new log line to `line` as it appears
    /// (polled every `every`); its final record. `stop` is asked between polls: when it
    /// says so, the task is cancelled (Ctrl-C on the client cancels the work).
    pub fn wait(
        &self,
        id: &str,
        every: Duration,
        mut line: impl FnMut(&str),
        stop: impl Fn() -> bool,
    ) -> Result<TaskInfo> {
        let mut seen = 0usize;
        let mut cancelled = false;
        loop {
            let info = self.task(id)?;
            let lines = self.log(id, seen)?;
            for l in &lines {
                line(l);
            }
            seen += lines.len();
            if info.state != crate::TaskState::Running {
                return Ok(info);
            }
            if !cancelled && stop() {
                self.cancel(id)?;
                cancelled = true;
            }
            std::thread::sleep(every);
        }
    }
}

/// A path segment, percent-encoded.
fn seg(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}
