//! Target URLs: where a repository lives, and how to reach it.
//!
//! - a path (`/srv/backup`, `backups/here`) or `file:///srv/backup`: a local directory;
//! - `s3://BUCKET/PREFIX?endpoint=…&region=…&path-style=true&timeout=30s`: an S3-compatible
//!   bucket (AWS S3, Ceph RGW, Garage, MinIO, SeaweedFS). Credentials come from the usual AWS
//!   environment variables and the shared credentials/config files; the query string can set
//!   `endpoint`, `region`, `path-style`, `allow-http`, `timeout` (operation deadline,
//!   retries included) and `connect-timeout`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::retry::{RetryPolicy, parse_duration};
use crate::s3::{S3Backend, S3Config};
use crate::{Backend, BackendError, ErrorKind, LocalBackend, Result};

/// How backends behave under faults; shared by every target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackendOptions {
    /// Deadline and backoff of each operation.
    pub policy: RetryPolicy,
    /// How long to wait for a connection (object stores).
    pub connect_timeout: Duration,
    /// Objects larger than this are uploaded in parts (object stores).
    pub multipart_threshold: usize,
    /// Part size of multipart uploads.
    pub part_size: usize,
}

impl Default for BackendOptions {
    fn default() -> Self {
        BackendOptions {
            policy: RetryPolicy::default(),
            connect_timeout: Duration::from_secs(5),
            multipart_threshold: 8 << 20,
            part_size: 8 << 20,
        }
    }
}

/// A parsed target URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Local(PathBuf),
    S3(S3Config),
}

fn bad(url: &str, why: impl Into<String>) -> BackendError {
    BackendError::new(ErrorKind::Other, "parse", url, "target URL", why)
}

fn percent_decode(s: &str) -> String {
    let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2]))
        {
            out.push(h * 16 + l);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn parse_bool(url: &str, key: &str, v: &str) -> Result<bool> {
    match v {
        "true" | "1" | "yes" | "" => Ok(true),
        "false" | "0" | "no" => Ok(false),
        _ => Err(bad(url, format!("{key} must be true or false, not {v:?}"))),
    }
}

impl Target {
    pub fn parse(url: &str) -> Result<Target> {
        if url.is_empty() {
            return Err(bad(url, "empty"));
        }
        if let Some(path) = url.strip_prefix("file://") {
            if !path.starts_with('/') {
                return Err(bad(
                    url,
                    "file:// URLs need an absolute path (file:///srv/backup)",
                ));
            }
            return Ok(Target::Local(PathBuf::from(percent_decode(path))));
        }
        let Some(rest) = url.strip_prefix("s3://") else {
            if let Some((scheme, _)) = url.split_once("://") {
                return Err(bad(
                    url,
                    format!(
                        "unsupported scheme {scheme:?}: use a path, file:///path or s3://bucket/prefix"
                    ),
                ));
            }
            return Ok(Target::Local(PathBuf::from(url)));
        };
        let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (bucket, prefix) = path.split_once('/').unwrap_or((path, ""));
        if bucket.is_empty() {
            return Err(bad(url, "no bucket (s3://BUCKET/PREFIX)"));
        }
        let mut cfg = S3Config {
            bucket: bucket.to_string(),
            prefix: prefix.trim_matches('/').to_string(),
            ..S3Config::default()
        };
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let v = percent_decode(v);
            match k {
                "endpoint" => cfg.endpoint = Some(v),
                "region" => cfg.region = Some(v),
                "path-style" | "path_style" => cfg.path_style = Some(parse_bool(url, k, &v)?),
                "allow-http" | "allow_http" => cfg.allow_http = Some(parse_bool(url, k, &v)?),
                "timeout" => {
                    cfg.timeout = Some(
                        parse_duration(&v).ok_or_else(|| bad(url, format!("bad timeout {v:?}")))?,
                    )
                }
                "connect-timeout" | "connect_timeout" => {
                    cfg.connect_timeout = Some(
                        parse_duration(&v)
                            .ok_or_else(|| bad(url, format!("bad connect-timeout {v:?}")))?,
                    )
                }
                "multipart-threshold" | "multipart_threshold" => {
                    cfg.multipart_threshold = Some(
                        parse_size(&v)
                            .ok_or_else(|| bad(url, format!("bad multipart-threshold {v:?}")))?,
                    )
                }
                "part-size" | "part_size" => {
                    cfg.part_size = Some(
                        parse_size(&v).ok_or_else(|| bad(url, format!("bad part-size {v:?}")))?,
                    )
                }
                other => {
                    return Err(bad(
                        url,
                        format!(
                            "unknown option {other:?} (known: endpoint, region, path-style, \\
                             allow-http, timeout, connect-timeout, multipart-threshold, part-size)"
                        ),
                    ));
                }
            }
        }
        Ok(Target::S3(cfg))
    }

    /// Whether two targets name the same place: local paths after resolving symlinks (a path
    /// that cannot be resolved is compared as written), S3 locations field by field (so the
    /// order of query options or a trailing `/` does not matter).
    pub fn same_place(&self, other: &Target) -> bool {
        match (self, other) {
            (Target::Local(a), Target::Local(b)) => {
                let real = |p: &PathBuf| std::fs::canonicalize(p).unwrap_or_else(|_| p.clone());
                real(a) == real(b)
            }
            (a, b) => a == b,
        }
    }
}

/// A byte size: `8388608`, `512K`/`512KiB`, `8M`/`8MiB`, `1G`/`1GiB` (binary units).
pub fn parse_size(s: &str) -> Option<usize> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let n: usize = s[..split].parse().ok()?;
    let shift = match s[split..].trim() {
        "" | "B" => 0,
        "K" | "KiB" | "k" => 10,
        "M" | "MiB" => 20,
        "G" | "GiB" => 30,
        _ => return None,
    };
    n.checked_mul(1 << shift).filter(|&v| v > 0)
}

/// Open the backend a URL names.
pub fn open(url: &str, opts: &BackendOptions) -> Result<Arc<dyn Backend>> {
    match Target::parse(url)? {
        Target::Local(p) => Ok(Arc::new(LocalBackend::with_policy(p, opts.policy))),
        Target::S3(cfg) => Ok(Arc::new(S3Backend::new(cfg, opts)?)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_place() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("repo");
        std::fs::create_dir(&real).unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let t = |s: &str| Target::parse(s).unwrap();
        let (real, link) = (real.display().to_string(), link.display().to_string());
        assert!(t(&real).same_place(&t(&link)));
        assert!(t(&format!("file://{real}/")).same_place(&t(&link)));
        assert!(!t(&real).same_place(&t(&dir.path().display().to_string())));
        assert!(
            t("s3://b/p/?endpoint=http://h:1&region=r")
                .same_place(&t("s3://b/p?region=r&endpoint=http://h:1"))
        );
        assert!(!t("s3://b/p?endpoint=http://h:1").same_place(&t("s3://b/p?endpoint=http://h:2")));
        assert!(!t("s3://b/p").same_place(&t(&real)));
    }

    #[test]
    fn local_forms() {
        assert_eq!(
            Target::parse("/srv/b").unwrap(),
            Target::Local("/srv/b".into())
        );
        assert_eq!(
            Target::parse("rel/dir").unwrap(),
            Target::Local("rel/dir".into())
        );
        assert_eq!(
            Target::parse("file:///srv/with%20space").unwrap(),
            Target::Local("/srv/with space".into())
        );
        assert!(Target::parse("file://relative").is_err());
        assert!(Target::parse("").is_err());
        assert!(
            Target::parse("ftp://x/y")
                .unwrap_err()
                .to_string()
                .contains("unsupported scheme")
        );
        // Malformed escapes and multi-byte characters pass through, never panic.
        assert_eq!(
            Target::parse("file:///a%zz%é%").unwrap(),
            Target::Local("/a%zz%é%".into())
        );
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("8388608"), Some(8 << 20));
        assert_eq!(parse_size("512K"), Some(512 << 10));
        assert_eq!(parse_size("8MiB"), Some(8 << 20));
        assert_eq!(parse_size("1G"), Some(1 << 30));
        for bad in ["", "M", "0", "8 X", "-1", "99999999999999999999G"] {
            assert_eq!(parse_size(bad), None, "{bad}");
        }
    }

    #[test]
    fn s3_forms() {
        let Target::S3(c) = Target::parse(
            "s3://backups/prod/db?endpoint=http://127.0.0.1:8333&region=eu-1&path-style=true&timeout=2m&connect-timeout=1500ms",
        )
        .unwrap() else {
            panic!()
        };
        assert_eq!(c.bucket, "backups");
        assert_eq!(c.prefix, "prod/db");
        assert_eq!(c.endpoint.as_deref(), Some("http://127.0.0.1:8333"));
        assert_eq!(c.region.as_deref(), Some("eu-1"));
        assert_eq!(c.path_style, Some(true));
        assert_eq!(c.timeout, Some(Duration::from_secs(120)));
        assert_eq!(c.connect_timeout, Some(Duration::from_millis(1500)));
        assert_eq!(c.location(), "s3://backups/prod/db");
        let Target::S3(c) = Target::parse("s3://b").unwrap() else {
            panic!()
        };
        assert_eq!((c.bucket.as_str(), c.prefix.as_str()), ("b", ""));
        let Target::S3(c) =
            Target::parse("s3://b?multipart-threshold=64MiB&part-size=16M").unwrap()
        else {
            panic!()
        };
        assert_eq!(c.multipart_threshold, Some(64 << 20));
        assert_eq!(c.part_size, Some(16 << 20));
        for bad in [
            "s3://",
            "s3:///x",
            "s3://b/p?nope=1",
            "s3://b?timeout=soon",
            "s3://b?path-style=maybe",
            "s3://b?part-size=8X",
            "s3://b?multipart-threshold=0",
        ] {
            assert!(Target::parse(bad).is_err(), "{bad}");
        }
    }
}
