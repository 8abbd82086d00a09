//! API tokens: `kura token create NAME` makes one; requests carry it as
//! `Authorization: Bearer TOKEN`.
//!
//! A token is `kura_` and 64 hex digits: 256 random bits. The catalog keeps
//! only its BLAKE3 hash (a fast hash suffices: there is nothing to guess in 256 random bits),
//! so neither a catalog dump nor a daemon's memory gives a usable token away, and every
//! daemon sharing the catalog accepts the same tokens.
//!
//! Checking a token costs a catalog query; answers are cached for [`CACHE_FOR`], so an API
//! under load queries the catalog about once per token per few seconds, and a revoked token
//! stops working within that time on every daemon. A token that fails (unknown, expired,
//! malformed) is never echoed or logged: the answer is the same 401 whatever was wrong.
//! While the catalog is unreachable, a token found valid within [`STALE_FOR`] is still
//! accepted (so its callers keep what the daemon can serve without the catalog); any other
//! gets 503 `unavailable`, never a 401 that would blame the token.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use kura_catalog::Catalog;

use crate::{Error, Result};

/// How long a token check is trusted before the catalog is asked again.
pub const CACHE_FOR: Duration = Duration::from_secs(5);
/// While the catalog cannot be asked, a token found valid this recently still is.
pub const STALE_FOR: Duration = Duration::from_secs(15 * 60);

const PREFIX: &str = "kura_";

/// A new token's secret: shown once, never stored.
pub fn generate() -> Result<String> {
    let mut b = [0u8; 32];
    getrandom::fill(&mut b).map_err(|e| Error::Internal(format!("random bytes: {e}")))?;
    Ok(format!("{PREFIX}{}", hex::encode(b)))
}

/// The hash the catalog stores for `secret`.
pub fn hash(secret: &str) -> String {
    blake3::hash(secret.as_bytes()).to_hex().to_string()
}

/// Who a request is from (its token's name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub token: String,
}

/// A token as checked: its id, name and expiry (`None`: no such token).
type Found = Option<(i64, String, Option<i64>)>;

/// Checks tokens against the catalog, with a short cache.
pub struct Tokens {
    cache: Mutex<HashMap<String, (Found, Instant)>>,
}

impl Default for Tokens {
    fn default() -> Self {
        Tokens {
            cache: Mutex::new(HashMap::new()),
        }
    }
}

impl Tokens {
    /// The caller a token belongs to, or `Unauthorized`. Blocking (asks the catalog).
    pub fn check(&self, catalog: &Catalog, secret: &str) -> Result<Caller> {
        if !secret.starts_with(PREFIX) || secret.len() > 128 {
            return Err(Error::Unauthorized);
        }
        let h = hash(secret);
        let cached = {
            let c = self.cache.lock().unwrap_or_else(|p| p.into_inner());
            c.get(&h)
                .filter(|(_, at)| at.elapsed() < CACHE_FOR)
                .map(|(v, _)| v.clone())
        };
        let found = match cached {
            Some(v) => v,
            None => {
                let t = match catalog.token_by_hash(&h) {
                    Ok(t) => t,
                    Err(e) => {
                        // The catalog is away: a token this daemon found valid not long ago
                        // still is (a revocation cannot reach it now anyway), so its callers
                        // keep the health, metrics and tasks it can serve without the
                        // catalog. Anything else waits for the catalog.
                        let c = self.cache.lock().unwrap_or_else(|p| p.into_inner());
                        match c.get(&h) {
                            Some((Some(v), at)) if at.elapsed() < STALE_FOR => {
                                return still_valid(Some(v.clone()));
                            }
                            _ => {
                                return Err(Error::Unavailable(format!("checking the token: {e}")));
                            }
                        }
                    }
                };
                let v = t.map(|t| {
                    // Best effort: when a token was last used is for operators, not for
                    // access.
                    if let Err(e) = catalog.token_used(t.id) {
                        tracing::debug!("recording a token's use: {e}");
                    }
                    (t.id, t.name, t.expires)
                });
                let mut c = self.cache.lock().unwrap_or_else(|p| p.into_inner());
                if c.len() > 10_000 {
                    c.clear(); // a flood of bad tokens must not grow this without bound
                }
                c.insert(h, (v.clone(), Instant::now()));
                v
            }
        };
        still_valid(found)
    }
}

/// The caller of a token found (`Some`: its id, name and expiry), unless it expired.
fn still_valid(found: Found) -> Result<Caller> {
    match found {
        Some((_, name, expires)) => {
            let now = chrono::Utc::now().timestamp_millis();
            if expires.is_some_and(|e| e <= now) {
                return Err(Error::Unauthorized);
            }
            Ok(Caller { token: name })
        }
        None => Err(Error::Unauthorized),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_long_random_and_checked_by_hash_only() {
        let d = tempfile::tempdir().unwrap();
        let c = Catalog::open(d.path().join("c.db").to_str().unwrap()).unwrap();
        let (a, b) = (generate().unwrap(), generate().unwrap());
        assert_ne!(a, b);
        assert_eq!(a.len(), PREFIX.len() + 64, "{a}");
        c.add_token("ops", &hash(&a), None).unwrap();
        c.add_token("old", &hash(&b), Some(1)).unwrap();
        let t = Tokens::default();
        assert_eq!(t.check(&c, &a).unwrap().token, "ops");
        assert!(
            matches!(t.check(&c, &b), Err(Error::Unauthorized)),
            "expired"
        );
        assert!(matches!(t.check(&c, "kura_nope"), Err(Error::Unauthorized)));
        assert!(matches!(t.check(&c, "Bearer x"), Err(Error::Unauthorized)));
        // Nothing in the catalog is the secret.
        let dump = std::fs::read(d.path().join("c.db")).unwrap();
        assert!(!dump.windows(a.len()).any(|w| w == a.as_bytes()));
    }
}
