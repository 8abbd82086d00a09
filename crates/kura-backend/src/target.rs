//! Target URLs: where a repository lives, and how to reach it.
//!
//! - a path (`/srv/backup`, `backups/here`) or `file:///srv/backup`: a local directory;
//! - `s3://BUCKET/PREFIX?endpoint=…&region=…&path-style=true&timeout=30s`: an S3-compatible
//!   bucket (AWS S3, Ceph RGW, Garage, MinIO, SeaweedFS). Credentials come from the usual AWS
//!   environment variables and the shared credentials/config files; the query string can set
//!   `endpoint`, `region`, `path-style`, `allow-http`, `timeout` (operation deadline,
//!   retries included) and `connect-timeout` (durations: `30s`, `2m`, see
//!   [`kura_types::Duration`]), `multipart-threshold` and `part-size` (sizes: `8MiB`, see
//!   [`kura_types::ByteSize`]).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use kura_types::{ByteSize, Duration as Span};

use crate::retry::RetryPolicy;
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
    BackendError::new(ErrorKind::Invalid, "parse", url, "target URL", why)
}

/// Check an S3 endpoint before any library sees it: `http(s)://HOST[:PORT][/]`, printable
/// ASCII, no credentials, path, query or fragment. The S3 client concatenates the endpoint
/// into request URLs as written and panics on what it cannot parse, so anything it might
/// mis-handle is refused here, with a message, as a usage error.
pub fn check_endpoint(endpoint: &str) -> std::result::Result<(), String> {
    let why = |w: &str| {
        Err(format!(
            "bad endpoint {endpoint:?}: {w} (e.g. http://host:8333)"
        ))
    };
    if endpoint.is_empty() {
        return why("empty");
    }
    if !endpoint.bytes().all(|b| b.is_ascii_graphic()) {
        return why("only printable ASCII without spaces is allowed");
    }
    let Some((scheme, rest)) = endpoint.split_once("://") else {
        return why("not a URL");
    };
    if scheme != "http" && scheme != "https" {
        return why("the scheme must be http or https");
    }
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    if authority.is_empty() {
        return why("no host");
    }
    if authority.contains(['/', '?', '#', '@', '\\']) {
        return why("give only scheme, host and port: no path, query, fragment or user");
    }
    let url = match url::Url::parse(endpoint) {
        Ok(u) => u,
        Err(e) => return why(&e.to_string()),
    };
    if url.host_str().is_none_or(str::is_empty) {
        return why("no host");
    }
    if url.port() == Some(0) {
        return why("port 0");
    }
    // An explicit port must be a number the URL parser understood (it drops the default).
    let host_port = authority.rsplit_once(']').map_or(authority, |(_, p)| p);
    if let Some((_, port)) = host_port.rsplit_once(':')
        && (port.is_empty() || port.parse::<u16>().is_err())
    {
        return why("the port must be a number from 1 to 65535");
    }
    Ok(())
}

/// Bucket names: what S3-compatible stores accept in a host name or path segment.
pub(crate) fn check_bucket(bucket: &str) -> std::result::Result<(), String> {
    let ok = !bucket.is_empty()
        && bucket.len() <= 255
        && bucket
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        && !bucket.starts_with(['.', '-']);
    if ok {
        Ok(())
    } else {
        Err(format!(
            "bad bucket {bucket:?}: use letters, digits, '.', '-' and '_' (s3://BUCKET/PREFIX)"
        ))
    }
}

/// Regions appear in host names (`s3.REGION.amazonaws.com`).
pub(crate) fn check_region(region: &str) -> std::result::Result<(), String> {
    let ok = !region.is_empty()
        && region.len() <= 64
        && region
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "bad region {region:?}: use letters, digits, '-' and '_' (e.g. eu-west-1)"
        ))
    }
}

/// Prefix segments become object key segments: none may be empty, `.` or `..`, or hold
/// control characters.
fn check_prefix(prefix: &str) -> std::result::Result<(), String> {
    if prefix.is_empty() {
        return Ok(());
    }
    for seg in prefix.split('/') {
        if seg.is_empty() || seg == "." || seg == ".." || seg.chars().any(char::is_control) {
            return Err(format!(
                "bad prefix {prefix:?}: segments must be non-empty, not '.' or '..', without \
                 control characters"
            ));
        }
    }
    Ok(())
}

/// `%XX` escapes decoded to the bytes they name (a malformed escape stays as written).
fn percent_decode_bytes(s: &str) -> Vec<u8> {
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
    out
}

/// As [`percent_decode_bytes`], as text (option values are checked as text afterwards).
fn percent_decode(s: &str) -> String {
    String::from_utf8_lossy(&percent_decode_bytes(s)).into_owned()
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
            // Bytes, not text: a path is any bytes, and an escape that is not UTF-8 must
            // name that very directory, not one with a replacement character.
            return local(url, percent_decode_bytes(path));
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
            return local(url, url.as_bytes().to_vec());
        };
        let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
        if path.contains('#') || query.contains('#') {
            return Err(bad(url, "fragments (#…) are not allowed"));
        }
        let (bucket, prefix) = path.split_once('/').unwrap_or((path, ""));
        if bucket.is_empty() {
            return Err(bad(url, "no bucket (s3://BUCKET/PREFIX)"));
        }
        check_bucket(bucket).map_err(|w| bad(url, w))?;
        let prefix = prefix.trim_matches('/');
        check_prefix(prefix).map_err(|w| bad(url, w))?;
        let mut cfg = S3Config {
            bucket: bucket.to_string(),
            prefix: prefix.to_string(),
            ..S3Config::default()
        };
        let mut seen: Vec<String> = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let v = percent_decode(v);
            let canonical = k.replace('_', "-");
            if seen.contains(&canonical) {
                return Err(bad(url, format!("option {k:?} given twice")));
            }
            seen.push(canonical);
            match k {
                "endpoint" => {
                    check_endpoint(&v).map_err(|w| bad(url, w))?;
                    cfg.endpoint = Some(v)
                }
                "region" => {
                    check_region(&v).map_err(|w| bad(url, w))?;
                    cfg.region = Some(v)
                }
                "path-style" | "path_style" => cfg.path_style = Some(parse_bool(url, k, &v)?),
                "allow-http" | "allow_http" => cfg.allow_http = Some(parse_bool(url, k, &v)?),
                "timeout" => cfg.timeout = Some(deadline(url, "timeout", &v)?),
                "connect-timeout" | "connect_timeout" => {
                    cfg.connect_timeout = Some(deadline(url, "connect-timeout", &v)?)
                }
                "multipart-threshold" | "multipart_threshold" => {
                    cfg.multipart_threshold = Some(size(url, "multipart-threshold", &v)?)
                }
                "part-size" | "part_size" => cfg.part_size = Some(size(url, "part-size", &v)?),
                other => {
                    return Err(bad(
                        url,
                        format!(
                            "unknown option {other:?} (known: endpoint, region, path-style, \
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

/// Do two target URLs name the same place ([`Target::same_place`])? URLs that do not parse
/// are compared as written.
pub fn same_url(a: &str, b: &str) -> bool {
    match (Target::parse(a), Target::parse(b)) {
        (Ok(x), Ok(y)) => x.same_place(&y),
        _ => a == b,
    }
}

/// A local directory target: any non-empty path without NUL.
fn local(url: &str, path: Vec<u8>) -> Result<Target> {
    use std::os::unix::ffi::OsStringExt;
    if path.contains(&0) {
        return Err(bad(url, "the path contains a NUL byte"));
    }
    Ok(Target::Local(PathBuf::from(std::ffi::OsString::from_vec(
        path,
    ))))
}

/// A deadline option (`timeout=30s`): the one duration grammar, longer than zero.
fn deadline(url: &str, option: &str, v: &str) -> Result<Duration> {
    Span::parse_positive(v)
        .map(Span::std)
        .map_err(|e| bad(url, format!("bad {option}: {e}")))
}

/// A size option (`part-size=8MiB`): the one size grammar, above zero.
fn size(url: &str, option: &str, v: &str) -> Result<usize> {
    let s = ByteSize::parse(v).map_err(|e| bad(url, format!("bad {option}: {e}")))?;
    match usize::try_from(s.bytes()) {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(bad(
            url,
            format!("bad {option}: {v:?} must be above zero and fit in memory"),
        )),
    }
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
        // An escape that is not UTF-8 names those bytes, not a replacement character.
        use std::os::unix::ffi::OsStrExt;
        assert_eq!(
            Target::parse("file:///srv/a%FFb").unwrap(),
            Target::Local(std::ffi::OsStr::from_bytes(b"/srv/a\xffb").into())
        );
    }

    #[test]
    fn sizes_and_deadlines() {
        let opt = |q: &str| match Target::parse(&format!("s3://b?{q}")) {
            Ok(Target::S3(c)) => Ok((c.part_size, c.timeout)),
            Ok(other) => panic!("{other:?}"),
            Err(e) => Err(e.to_string()),
        };
        assert_eq!(opt("part-size=8388608"), Ok((Some(8 << 20), None)));
        assert_eq!(opt("part-size=512K"), Ok((Some(512 << 10), None)));
        assert_eq!(opt("part_size=8MiB"), Ok((Some(8 << 20), None)));
        assert_eq!(
            opt("timeout=1m30s"),
            Ok((None, Some(Duration::from_secs(90))))
        );
        for (q, why) in [
            ("part-size=", "bad part-size: invalid size \"\""),
            ("part-size=M", "bad part-size"),
            ("part-size=0", "above zero"),
            ("part-size=8%20X", "unknown unit"),
            ("multipart-threshold=-1", "bad multipart-threshold"),
            ("part-size=99999999999999999999G", "too large"),
            ("timeout=0", "longer than zero"),
            ("timeout=soon", "bad timeout: invalid duration \"soon\""),
            ("connect-timeout=5y", "bad connect-timeout"),
        ] {
            let e = opt(q).unwrap_err();
            assert!(e.contains(why), "{q}: {e}");
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

    #[test]
    fn bad_urls_are_usage_errors_that_say_why() {
        for (url, why) in [
            ("s3://b?endpoint=notaurl", "not a URL"),
            ("s3://b?endpoint=ftp://h:1", "scheme"),
            ("s3://b?endpoint=http://", "no host"),
            ("s3://b?endpoint=http://h:99999", "port"),
            ("s3://b?endpoint=http://h:x", "port"),
            ("s3://b?endpoint=http://h:", "port"),
            ("s3://b?endpoint=http://h:0", "port 0"),
            ("s3://b?endpoint=http://u:p@h:1", "no path"),
            ("s3://b?endpoint=http://h/x", "no path"),
            ("s3://b?endpoint=http://h%20x", "printable"),
            ("s3://b?endpoint=", "empty"),
            ("s3://b?region=a/b", "bad region"),
            ("s3://b?region=", "bad region"),
            ("s3://b c", "bad bucket"),
            ("s3://b%2F/p", "bad bucket"),
            ("s3://-b", "bad bucket"),
            ("s3://b/a//c", "bad prefix"),
            ("s3://b/a/../c", "bad prefix"),
            ("s3://b/p#frag", "fragment"),
            ("s3://b?timeout=1&timeout=2", "twice"),
            ("s3://b?part_size=8M&part-size=8M", "twice"),
            ("s3://b?timeout=1000000000000000000000000", "bad timeout"),
            ("s3://b?timeout=99999999999", "bad timeout"),
            ("s3://b?timeout=0", "bad timeout"),
            ("file:///a%00b", "NUL"),
        ] {
            let e = Target::parse(url).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Invalid, "{url}");
            assert!(e.to_string().contains(why), "{url}: {e}");
        }
        for good in [
            "s3://b?endpoint=http://127.0.0.1:8333",
            "s3://b?endpoint=https://s3.example.com/",
            "s3://b?endpoint=http://[::1]:8333",
            "s3://my.bucket_1/a/b/?region=eu-west-1",
        ] {
            Target::parse(good).unwrap_or_else(|e| panic!("{good}: {e}"));
        }
    }

    #[test]
    fn s3_backend_refuses_bad_endpoints_from_anywhere() {
        // A config built by hand (not through parse) is checked again where it is used.
        let cfg = S3Config {
            bucket: "b".into(),
            endpoint: Some("notaurl".into()),
            ..S3Config::default()
        };
        let e = S3Backend::new(cfg, &BackendOptions::default()).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Invalid);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(
            std::env::var("KURA_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(512)
        ))]
        /// No input panics the parser, and whatever it accepts, the S3 client accepts too.
        #[test]
        fn parse_never_panics(url in "(s3://|file://|)[ -~]{0,60}") {
            if let Ok(Target::S3(cfg)) = Target::parse(&url) {
                let _ = S3Backend::new(cfg, &BackendOptions::default());
            }
        }

        #[test]
        fn endpoint_check_never_panics(e in "(https?://)?[ -~]{0,40}", host in "[a-z0-9.:\\[\\]-]{0,20}") {
            let _ = check_endpoint(&e);
            let _ = Target::parse(&format!("s3://b?endpoint=http://{host}"));
        }
    }
}
