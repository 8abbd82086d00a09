//! S3-compatible object storage, through the `object_store` crate.
//!
//! Why `object_store` (over `opendal`): it is the Arrow/DataFusion project's store layer, used
//! at scale, small in surface, and strict where it matters to us — a ranged GET must come back
//! as 206 with exactly the requested bytes, or it is an error, so a misbehaving server cannot
//! hand us the wrong bytes silently. It does multipart uploads, and its retry layer can be
//! switched off so that deadlines, retries and error classes are decided in one place
//! ([`crate::retry`]) for every backend.
//!
//! The backend owns a small tokio runtime and blocks on it: the repository's pipeline is made
//! of OS threads, several of which call in concurrently.
//!
//! Layout: `<prefix>/config`, `<prefix>/keys/<id>`, `<prefix>/data/<xx>/<id>`, … exactly as on
//! disk. PUT is atomic in S3, so objects appear whole or not at all.

use std::error::Error as StdError;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::client::{HttpError, HttpErrorKind};
use object_store::path::Path as ObjPath;
use object_store::{
    ClientOptions, GetOptions, ObjectStore, ObjectStoreExt, PutPayload, RetryConfig,
};

use crate::retry::RetryPolicy;
use crate::target::BackendOptions;
use crate::{Backend, BackendError, ErrorKind, FileInfo, FileKind, Result};

/// Where and how to reach a bucket (from an `s3://` URL).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct S3Config {
    pub bucket: String,
    /// Key prefix inside the bucket, without leading or trailing `/`.
    pub prefix: String,
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub path_style: Option<bool>,
    pub allow_http: Option<bool>,
    /// Operation deadline (overrides [`BackendOptions::policy`]'s).
    pub timeout: Option<Duration>,
    pub connect_timeout: Option<Duration>,
    /// Objects larger than this go up as multipart uploads (overrides [`BackendOptions`]).
    pub multipart_threshold: Option<usize>,
    /// Part size of multipart uploads (overrides [`BackendOptions`]).
    pub part_size: Option<usize>,
}

impl S3Config {
    /// `s3://bucket/prefix`, as shown in messages.
    pub fn location(&self) -> String {
        if self.prefix.is_empty() {
            format!("s3://{}", self.bucket)
        } else {
            format!("s3://{}/{}", self.bucket, self.prefix)
        }
    }
}

/// A repository in an S3 bucket.
#[derive(Debug)]
pub struct S3Backend {
    store: Arc<AmazonS3>,
    rt: tokio::runtime::Runtime,
    cfg: S3Config,
    location: String,
    policy: RetryPolicy,
    multipart_threshold: usize,
    part_size: usize,
}

impl S3Backend {
    pub fn new(cfg: S3Config, opts: &BackendOptions) -> Result<S3Backend> {
        let location = cfg.location();
        let err = |why: String| {
            BackendError::new(ErrorKind::Other, "configure", "bucket", &location, why)
        };
        let mut policy = opts.policy;
        if let Some(t) = cfg.timeout {
            policy.deadline = t;
        }
        let connect_timeout = cfg.connect_timeout.unwrap_or(opts.connect_timeout);
        let mut b = AmazonS3Builder::from_env().with_bucket_name(&cfg.bucket);
        let profile = crate::aws_profile::load();
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        if env("AWS_ACCESS_KEY_ID").is_none()
            && let (Some(k), Some(s)) = (&profile.access_key_id, &profile.secret_access_key)
        {
            b = b.with_access_key_id(k).with_secret_access_key(s);
            if let Some(t) = &profile.session_token {
                b = b.with_token(t);
            }
        }
        let region = cfg
            .region
            .clone()
            .or_else(|| env("AWS_REGION"))
            .or_else(|| env("AWS_DEFAULT_REGION"))
            .or(profile.region.clone())
            .unwrap_or_else(|| "us-east-1".to_string());
        b = b.with_region(&region);
        let endpoint = cfg
            .endpoint
            .clone()
            .or_else(|| env("AWS_ENDPOINT_URL_S3"))
            .or_else(|| env("AWS_ENDPOINT_URL"))
            .or_else(|| env("AWS_ENDPOINT"))
            .or(profile.endpoint_url.clone());
        // The URL's own values were checked by `Target::parse`; these may come from the
        // environment or the AWS config files, and the S3 client panics on a bad endpoint.
        let invalid = |why: String| {
            BackendError::new(ErrorKind::Invalid, "configure", "bucket", &location, why)
        };
        if let Some(e) = &endpoint {
            crate::target::check_endpoint(e).map_err(invalid)?;
            b = b.with_endpoint(e);
        }
        crate::target::check_region(&region).map_err(invalid)?;
        crate::target::check_bucket(&cfg.bucket).map_err(invalid)?;
        let allow_http = cfg.allow_http.unwrap_or_else(|| {
            endpoint
                .as_deref()
                .is_some_and(|e| e.starts_with("http://"))
        });
        // Custom endpoints (Ceph, MinIO, Garage, SeaweedFS) want path-style requests; AWS
        // itself prefers virtual-hosted ones.
        let path_style = cfg.path_style.unwrap_or(endpoint.is_some());
        b = b
            .with_allow_http(allow_http)
            .with_virtual_hosted_style_request(!path_style)
            // Every object kura writes is sealed with an AEAD and verified on read, so signing
            // a SHA-256 of each body (the default) would only spend CPU: sign the headers.
            .with_unsigned_payload(true)
            .with_client_options(
                ClientOptions::new()
                    .with_allow_http(allow_http)
                    .with_connect_timeout(connect_timeout)
                    // A backstop only: the deadline in `call` fires first and says so.
                    .with_timeout(policy.deadline + Duration::from_secs(5)),
            )
            .with_retry(RetryConfig {
                max_retries: 0,
                retry_timeout: policy.deadline,
                ..RetryConfig::default()
            });
        let store = b.build().map_err(|e| err(e.to_string()))?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("kura-s3")
            .enable_all()
            .build()
            .map_err(|e| err(format!("start runtime: {e}")))?;
        let multipart_threshold = cfg
            .multipart_threshold
            .unwrap_or(opts.multipart_threshold)
            .max(5 << 20);
        // S3 wants parts of at least 5 MiB (all but the last).
        let part_size = cfg.part_size.unwrap_or(opts.part_size).max(5 << 20);
        Ok(S3Backend {
            store: Arc::new(store),
            rt,
            cfg,
            location,
            policy,
            multipart_threshold,
            part_size,
        })
    }

    fn key(&self, kind: FileKind, name: &str) -> ObjPath {
        self.key_of(&kind.relative_path(name))
    }

    fn key_of(&self, rel: &str) -> ObjPath {
        if self.cfg.prefix.is_empty() {
            ObjPath::from(rel)
        } else {
            ObjPath::from(format!("{}/{rel}", self.cfg.prefix))
        }
    }

    /// Run one operation under the deadline, retrying transient failures. `op` builds a fresh
    /// future per attempt.
    fn call<T, F, Fut>(&self, op: &'static str, object: &str, f: F) -> Result<T>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = std::result::Result<T, object_store::Error>>,
    {
        self.policy.run(|left| {
            self.rt.block_on(async {
                match tokio::time::timeout(left, f()).await {
                    Ok(r) => r.map_err(|e| classify(op, object, &self.location, &e)),
                    Err(_) => Err(BackendError::new(
                        ErrorKind::TimedOut,
                        op,
                        object,
                        &self.location,
                        format!("no answer within {:.1} s", left.as_secs_f64()),
                    )),
                }
            })
        })
    }

    async fn put_multipart(&self, key: &ObjPath, data: &Bytes) -> object_store::Result<()> {
        let mut up = self.store.put_multipart(key).await?;
        let parts: Vec<_> = (0..data.len())
            .step_by(self.part_size)
            .map(|start| {
                let end = (start + self.part_size).min(data.len());
                up.put_part(PutPayload::from(data.slice(start..end)))
            })
            .collect();
        let uploaded = futures::future::try_join_all(parts).await;
        match uploaded {
            Ok(_) => up.complete().await.map(|_| ()),
            Err(e) => {
                let _ = up.abort().await;
                Err(e)
            }
        }
    }
}

/// Decide the class of an object_store error, from its variant, the HTTP layer's error kind,
/// OS errors and, last, the HTTP status in the message.
fn classify(
    op: &'static str,
    object: &str,
    location: &str,
    e: &object_store::Error,
) -> BackendError {
    use object_store::Error as E;
    let mut root: &(dyn StdError + 'static) = e;
    let mut http_kind = None;
    let mut io_kind = None;
    let mut cur: Option<&(dyn StdError + 'static)> = Some(e);
    while let Some(c) = cur {
        if let Some(h) = c.downcast_ref::<HttpError>() {
            http_kind.get_or_insert(h.kind());
        }
        if let Some(io) = c.downcast_ref::<std::io::Error>() {
            io_kind.get_or_insert(ErrorKind::from_io(io));
        }
        root = c;
        cur = c.source();
    }
    let text = e.to_string();
    let status = text
        .split("status code: ")
        .nth(1)
        .and_then(|s| s.get(..3))
        .and_then(|s| s.parse::<u16>().ok());
    let lower = text.to_ascii_lowercase();
    let (kind, transient) = match e {
        E::NotFound { .. } => (ErrorKind::NotFound, false),
        E::AlreadyExists { .. } | E::Precondition { .. } => (ErrorKind::AlreadyExists, false),
        E::PermissionDenied { .. } | E::Unauthenticated { .. } => {
            (ErrorKind::PermissionDenied, false)
        }
        _ => match (http_kind, io_kind, status) {
            (Some(HttpErrorKind::Connect), ..) => (ErrorKind::Unreachable, true),
            (Some(HttpErrorKind::Timeout), ..) => (ErrorKind::TimedOut, true),
            (Some(HttpErrorKind::Request | HttpErrorKind::Interrupted), ..) => {
                (ErrorKind::Unreachable, true)
            }
            (_, Some(k @ (ErrorKind::Unreachable | ErrorKind::TimedOut)), _) => (k, true),
            (_, _, Some(507)) => (ErrorKind::NoSpace, false),
            (_, _, Some(416)) => (ErrorKind::Corrupt, false),
            (_, _, Some(403 | 401)) => (ErrorKind::PermissionDenied, false),
            (_, _, Some(404)) => (ErrorKind::NotFound, false),
            (_, _, Some(429 | 500..=599)) => (ErrorKind::Other, true),
            _ if lower.contains("no space") || lower.contains("insufficient storage") => {
                (ErrorKind::NoSpace, false)
            }
            _ if lower.contains("connection refused") || lower.contains("connect error") => {
                (ErrorKind::Unreachable, true)
            }
            (Some(HttpErrorKind::Decode), ..) => (ErrorKind::Corrupt, true),
            _ => (ErrorKind::Other, false),
        },
    };
    let mut detail = root.to_string();
    if let Some(s) = status {
        detail = format!("HTTP {s}: {detail}");
    }
    if detail.len() > 300 {
        detail.truncate(300);
        detail.push('…');
    }
    BackendError::new(kind, op, object, location, detail).with_transient(transient)
}

fn name_of(meta_location: &ObjPath) -> String {
    meta_location.filename().unwrap_or_default().to_string()
}

impl Backend for S3Backend {
    fn location(&self) -> String {
        self.location.clone()
    }

    fn create(&self) -> Result<()> {
        if self.exists(FileKind::Config, "config")? {
            return Err(BackendError::repository_exists(&self.location));
        }
        // Object stores have no directories; check the bucket answers and is writable.
        let probe = self.key_of("probe/.create");
        self.call("create", "probe/.create", || {
            self.store.put(&probe, PutPayload::from_static(b"kura"))
        })?;
        self.call("create", "probe/.create", || self.store.delete(&probe))
    }

    fn put(&self, kind: FileKind, name: &str, data: Bytes) -> Result<()> {
        let key = self.key(kind, name);
        let object = kind.relative_path(name);
        if data.len() > self.multipart_threshold {
            self.call("put", &object, || self.put_multipart(&key, &data))
        } else {
            self.call("put", &object, || async {
                self.store
                    .put(&key, PutPayload::from(data.clone()))
                    .await
                    .map(|_| ())
            })
        }
    }

    fn get(&self, kind: FileKind, name: &str) -> Result<Vec<u8>> {
        let key = self.key(kind, name);
        let b = self.call("get", &kind.relative_path(name), || async {
            self.store.get(&key).await?.bytes().await
        })?;
        Ok(b.to_vec())
    }

    /// Streams the body straight into `buf`: no intermediate `Bytes` to collect and copy
    /// again, and the caller's buffer (8 MiB during a restore) is reused rather than a fresh
    /// allocation faulted in for every range.
    fn get_range_into(
        &self,
        kind: FileKind,
        name: &str,
        offset: u64,
        len: u64,
        buf: &mut Vec<u8>,
    ) -> Result<()> {
        let key = self.key(kind, name);
        let object = kind.relative_path(name);
        let range: Range<u64> = offset..offset + len;
        let cap = usize::try_from(len).unwrap_or(usize::MAX);
        // Each attempt refills the buffer from the start; attempts run one after another.
        let cell = std::cell::RefCell::new(std::mem::take(buf));
        let got = self.call("get", &object, || async {
            let mut body = self
                .store
                .get_opts(&key, GetOptions::new().with_range(Some(range.clone())))
                .await?
                .into_stream();
            let mut out = cell.take();
            out.clear();
            out.reserve(cap);
            let mut result = Ok(());
            while let Some(chunk) = body.next().await {
                match chunk {
                    Ok(c) => out.extend_from_slice(&c),
                    Err(e) => {
                        result = Err(e);
                        break;
                    }
                }
            }
            let n = out.len();
            cell.replace(out);
            result.map(|()| n)
        });
        *buf = cell.into_inner();
        let got = got?;
        if got as u64 != len {
            return Err(BackendError::new(
                ErrorKind::Corrupt,
                "get",
                object,
                &self.location,
                format!("asked for {len} bytes at {offset}, got {got}"),
            ));
        }
        Ok(())
    }

    fn list(&self, kind: FileKind) -> Result<Vec<FileInfo>> {
        if kind == FileKind::Config {
            return match self.stat(kind, "config") {
                Ok(f) => Ok(vec![f]),
                Err(e) if e.kind() == ErrorKind::NotFound => Ok(Vec::new()),
                Err(e) => Err(e),
            };
        }
        let prefix = self.key_of(kind.dir());
        let mut out: Vec<FileInfo> = self
            .call("list", kind.dir(), || {
                self.store
                    .list(Some(&prefix))
                    .map_ok(|m| FileInfo {
                        name: name_of(&m.location),
                        size: m.size,
                    })
                    .try_collect::<Vec<_>>()
            })?
            .into_iter()
            .filter(|f| !f.name.starts_with('.'))
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    fn stat(&self, kind: FileKind, name: &str) -> Result<FileInfo> {
        let key = self.key(kind, name);
        let m = self.call("stat", &kind.relative_path(name), || self.store.head(&key))?;
        Ok(FileInfo {
            name: name.to_string(),
            size: m.size,
        })
    }

    fn delete(&self, kind: FileKind, name: &str) -> Result<()> {
        let key = self.key(kind, name);
        self.call("delete", &kind.relative_path(name), || {
            self.store.delete(&key)
        })
    }
}
