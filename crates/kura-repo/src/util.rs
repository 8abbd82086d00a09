//! Small helpers shared by several modules: host/user names, timestamps.

use serde::{Deserialize, Serialize};

/// This machine's host name, or `unknown`.
pub fn hostname() -> String {
    hostname::get()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "unknown".into())
}

/// The current user's login name (from the password database), or the numeric uid.
pub fn username() -> String {
    let uid = unsafe { libc::getuid() };
    let mut buf = vec![0u8; 4096];
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: getpwuid_r writes into pwd/buf, which outlive the call; we only read pw_name
    // when it reports success.
    let rc = unsafe {
        libc::getpwuid_r(
            uid,
            &mut pwd,
            buf.as_mut_ptr().cast(),
            buf.len(),
            &mut result,
        )
    };
    if rc == 0 && !result.is_null() && !pwd.pw_name.is_null() {
        let name = unsafe { std::ffi::CStr::from_ptr(pwd.pw_name) };
        return name.to_string_lossy().into_owned();
    }
    uid.to_string()
}

/// A point in time as seconds and nanoseconds since the Unix epoch (UTC). Stored in trees and
/// snapshots as a two-element CBOR array.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
pub struct Timestamp(pub i64, pub u32);

impl Timestamp {
    pub fn now() -> Timestamp {
        let now = chrono::Utc::now();
        Timestamp(now.timestamp(), now.timestamp_subsec_nanos())
    }

    pub fn to_chrono(self) -> Option<chrono::DateTime<chrono::Utc>> {
        chrono::DateTime::from_timestamp(self.0, self.1)
    }

    /// RFC 3339 in UTC with nanoseconds, as used in JSON output.
    pub fn to_rfc3339(self) -> String {
        self.to_chrono()
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true))
            .unwrap_or_else(|| format!("@{}.{:09}", self.0, self.1))
    }
}
