//! A short-lived cache of one serialized answer (the job list).
//!
//! `GET /api/v1/jobs` is what dashboards poll. Answering it fresh means reading every job
//! from the catalog (sqlx's SQLite driver hands rows over one by one between threads),
//! working out each job's next run and outlook, and serializing the lot: about 15 ms for a
//! thousand jobs, so a few dozen requests a second would saturate a core. The answer changes
//! rarely, so it is kept, serialized, for at most [`FRESH`] — the scheduler's own pace, so
//! a job added by another process shows up as soon as the scheduler would run it — and not
//! past the moment one of its values is due to change (the earliest next run or predicted
//! finish it shows, given as `until` by the filler). A change made through this daemon's
//! API drops it at once ([`AnswerCache::invalidate`]).
//!
//! Concurrent misses fill it once: one caller fills, and the others meanwhile get the answer
//! being replaced (a second old at most) — or, after an invalidation, wait for the new one.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::body::Bytes;

/// The longest a cached answer is served.
pub const FRESH: Duration = Duration::from_secs(1);

struct Kept {
    body: Bytes,
    until: Instant,
    generation: u64,
}

/// One cached answer.
#[derive(Default)]
pub struct AnswerCache {
    kept: Mutex<Option<Kept>>,
    /// Held by the one caller refilling it.
    filling: Mutex<()>,
    /// Bumped by every invalidation, so a fill that began before one is not kept.
    generation: Mutex<u64>,
}

impl AnswerCache {
    fn generation(&self) -> u64 {
        *self.generation.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The kept answer: fresh only, or also one past its time (`stale`), if it is of the
    /// current generation.
    fn kept(&self, stale: bool) -> Option<Bytes> {
        let kept = self.kept.lock().unwrap_or_else(|p| p.into_inner());
        kept.as_ref()
            .filter(|k| k.generation == self.generation() && (stale || Instant::now() < k.until))
            .map(|k| k.body.clone())
    }

    /// The cached answer, or `fill`'s (kept until the earlier of [`FRESH`] from now and the
    /// instant it returns). While one caller refills an answer past its time, the others
    /// get that answer rather than wait (it is at most a fill's time older); after an
    /// invalidation they wait. Blocking: call it off the async workers.
    pub fn get<E>(
        &self,
        fill: impl FnOnce() -> Result<(Bytes, Option<Instant>), E>,
    ) -> Result<Bytes, E> {
        if let Some(b) = self.kept(false) {
            return Ok(b);
        }
        let _filling = match self.filling.try_lock() {
            Ok(g) => g,
            Err(_) => {
                if let Some(b) = self.kept(true) {
                    return Ok(b);
                }
                let g = self.filling.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(b) = self.kept(false) {
                    return Ok(b);
                }
                g
            }
        };
        let generation = self.generation();
        let now = Instant::now();
        let (body, until) = fill()?;
        let fresh = now + FRESH;
        *self.kept.lock().unwrap_or_else(|p| p.into_inner()) = Some(Kept {
            body: body.clone(),
            until: until.map_or(fresh, |u| u.min(fresh)),
            generation,
        });
        Ok(body)
    }

    /// Forget the kept answer (a job was added, changed or removed here).
    pub fn invalidate(&self) {
        *self.generation.lock().unwrap_or_else(|p| p.into_inner()) += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn served_until_fresh_ends_or_invalidated() {
        let c = AnswerCache::default();
        let mut fills = 0;
        let mut get = |c: &AnswerCache| {
            c.get(|| {
                fills += 1;
                Ok::<_, ()>((Bytes::from(format!("{fills}")), None))
            })
            .unwrap()
        };
        assert_eq!(get(&c), "1");
        assert_eq!(get(&c), "1", "kept");
        c.invalidate();
        assert_eq!(get(&c), "2", "dropped by a change");
        // An answer whose value is due to change now is not kept.
        let b = c
            .get(|| Ok::<_, ()>((Bytes::from("x"), Some(Instant::now()))))
            .unwrap();
        assert_eq!(b, "2", "still the kept one");
        c.invalidate();
        let b = c
            .get(|| Ok::<_, ()>((Bytes::from("x"), Some(Instant::now()))))
            .unwrap();
        assert_eq!(b, "x");
        let b = c.get(|| Ok::<_, ()>((Bytes::from("y"), None))).unwrap();
        assert_eq!(b, "y", "the earlier `until` had passed");
    }
}
