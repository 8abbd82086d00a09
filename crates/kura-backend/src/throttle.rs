//! Traffic control: shared rate limits on the bytes sent to and read from targets.
//!
//! A [`Limiter`] is one limit (bytes per second), shared through an `Arc` by every stream
//! that uses it: all the calls charged to one limiter together get no more than its rate.
//! [`crate::Throttled`] charges a backend's uploads and downloads to its limiters.
//!
//! # The bucket
//! A token bucket that may go into debt, served first come, first served:
//! - a request for `n` bytes *reserves* them at once (the bucket's balance drops by `n`,
//!   possibly below zero) and then waits until the clock has paid its place in the queue;
//!   so requests go in the order they asked, each after everything reserved before it — a
//!   stream cannot starve another, and one large object never needs a bucket its size;
//! - the balance grows at the rate and holds at most one second's worth (the *burst*): an
//!   idle limit lets one second's worth go at once, never more. A whole object is charged
//!   before it is sent (after it is read, for whole-file reads whose size is not known
//!   before), so over any span longer than an object's transfer the rate holds; a single
//!   object itself goes at the link's speed once its turn has come.
//! - Waiting holds no lock (a condition variable releases it), and a waiter wakes when its
//!   turn comes, when the rate changes (then everyone recomputes), or at the next edge of
//!   the limiter's time frames.
//!
//! # Rates that change
//! A [`RateSchedule`] picks the rate by the wall clock: the first rule whose time frame
//! holds the current instant, else its default (`None`: unlimited). The limiter looks at the
//! wall clock when a time frame may change (and at least once a minute, in case the clock
//! was set), so a change applies to the requests waiting then too: a limit that ends lets
//! its waiters go at once, a new one makes them wait at the new rate. When a limit starts
//! its bucket is full.
//!
//! # Deadlines
//! The wait happens *before* the wrapped backend's call, so a throttled wait never counts
//! against the operation deadline ([`crate::RetryPolicy`]): the deadline clock of an
//! operation starts when it is sent. Group backends (mirror, fail-over) see a member that
//! waits for its limit as slow on purpose, not stalled ([`crate::Backend::pacing`]).

use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use kura_schedule::Timeframe;

/// How often a waiter that may be aborted looks whether it is
/// ([`Limiter::acquire_unless`]).
pub const ABORT_POLL: Duration = Duration::from_millis(100);

/// The longest a waiter sleeps before it looks at the wall clock again (a clock that was
/// set may have moved a time frame's edge).
const RECHECK: Duration = Duration::from_secs(60);

/// Parse a rate: `10MiB/s`, `512KiB/s`, `1G/s`, `64K` (`/s` may be left out), a bare number
/// of KiB per second (`1024` = 1 MiB/s, as restic's `--limit-upload`), or `0` / `unlimited`
/// for no limit (`Ok(None)`). The size is kura's one size grammar ([`kura_types::ByteSize`]:
/// `K` = `KiB` = 1024, `KB` = 1000). The one place rates are parsed.
pub fn parse_rate(text: &str) -> Result<Option<u64>, String> {
    let s = text.trim();
    let bad = || {
        format!(
            "invalid rate {text:?}: expected a size per second such as 10MiB/s or 512KiB/s, \
             a number of KiB/s, or 0 / unlimited"
        )
    };
    if s.eq_ignore_ascii_case("unlimited") || s == "0" {
        return Ok(None);
    }
    let size = s.strip_suffix("/s").unwrap_or(s).trim_end();
    let bytes = if !size.is_empty() && size.bytes().all(|b| b.is_ascii_digit()) {
        let kib: u64 = size.parse().map_err(|_| bad())?;
        kib.checked_mul(1024).ok_or_else(bad)?
    } else {
        kura_types::ByteSize::parse(size)
            .map_err(|_| bad())?
            .bytes()
    };
    if bytes == 0 {
        return Ok(None);
    }
    Ok(Some(bytes))
}

/// A rate for messages: `10 MiB/s`, `512 KiB/s`, `100 B/s`, `unlimited`.
pub fn format_rate(rate: Option<u64>) -> String {
    let Some(r) = rate else {
        return "unlimited".into();
    };
    for (shift, unit) in [(30, "GiB"), (20, "MiB"), (10, "KiB")] {
        if r >= 1 << shift {
            let v = r as f64 / (1u64 << shift) as f64;
            return if r % (1 << shift) == 0 {
                format!("{} {unit}/s", r >> shift)
            } else {
                format!("{v:.1} {unit}/s")
            };
        }
    }
    format!("{r} B/s")
}

/// Which rate applies when: the first rule whose time frame holds the instant, else the
/// default. A fixed rate is a schedule without rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateSchedule {
    rules: Vec<(Timeframe, Option<u64>)>,
    otherwise: Option<u64>,
}

impl RateSchedule {
    /// Always `rate` (`None`: unlimited).
    pub fn fixed(rate: Option<u64>) -> RateSchedule {
        RateSchedule {
            rules: Vec::new(),
            otherwise: rate,
        }
    }

    /// `rate` while `during` holds, unlimited otherwise.
    pub fn during(rate: Option<u64>, during: Timeframe) -> RateSchedule {
        RateSchedule {
            rules: vec![(during, rate)],
            otherwise: None,
        }
    }

    /// Add a rule after the existing ones (earlier rules win where time frames overlap).
    pub fn and(mut self, during: Timeframe, rate: Option<u64>) -> RateSchedule {
        self.rules.push((during, rate));
        self
    }

    /// The rate when no rule's time frame holds.
    pub fn otherwise(mut self, rate: Option<u64>) -> RateSchedule {
        self.otherwise = rate;
        self
    }

    /// The rate at `t`, and when it may next change (`None`: never).
    pub fn rate_at(&self, t: DateTime<Utc>) -> (Option<u64>, Option<DateTime<Utc>>) {
        let rate = self
            .rules
            .iter()
            .find(|(tf, _)| tf.contains(t))
            .map_or(self.otherwise, |(_, r)| *r);
        let next = self
            .rules
            .iter()
            .filter_map(|(tf, _)| tf.next_change_after(t))
            .min();
        (rate, next)
    }
}

/// The bucket's arithmetic, on instants given to it (tests drive it with made-up ones).
///
/// Counts are cumulative bytes: `due` is everything reserved so far, `paid` what the clock
/// has paid for so far. The balance is `paid - due` and never exceeds the burst; a request
/// may go once `paid` reaches the `due` it left behind (its *ticket*).
#[derive(Debug, Clone)]
pub(crate) struct Bucket {
    rate: Option<u64>,
    due: f64,
    paid: f64,
    at: Instant,
}

impl Bucket {
    pub(crate) fn new(rate: Option<u64>, now: Instant) -> Bucket {
        let mut b = Bucket {
            rate: None,
            due: 0.0,
            paid: 0.0,
            at: now,
        };
        b.set_rate(rate, now);
        b
    }

    /// The burst: one second's worth of the rate.
    fn burst(rate: u64) -> f64 {
        rate as f64
    }

    /// Bring `paid` up to `now` at the current rate.
    fn advance(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.at).as_secs_f64();
        self.at = self.at.max(now);
        match self.rate {
            None => self.paid = self.paid.max(self.due),
            Some(r) => self.paid = (self.paid + r as f64 * dt).min(self.due + Self::burst(r)),
        }
    }

    pub(crate) fn rate(&self) -> Option<u64> {
        self.rate
    }

    /// Change the rate from `now` on. Bytes reserved before are paid at the new rate from
    /// now (none are owed once unlimited); a limit that starts starts with a full bucket.
    pub(crate) fn set_rate(&mut self, rate: Option<u64>, now: Instant) {
        self.advance(now);
        if let Some(r) = rate {
            if self.rate.is_none() {
                self.paid = self.due + Self::burst(r);
            }
            self.paid = self.paid.min(self.due + Self::burst(r));
        }
        self.rate = rate;
        self.advance(now);
    }

    /// Reserve `n` bytes; the ticket to wait for.
    pub(crate) fn reserve(&mut self, n: u64, now: Instant) -> f64 {
        self.advance(now);
        self.due += n as f64;
        self.due
    }

    /// Give back `n` bytes reserved but not sent (a waiter that gave up): everyone behind
    /// it moves up by as much.
    pub(crate) fn refund(&mut self, n: u64, now: Instant) {
        self.advance(now);
        if let Some(r) = self.rate {
            self.paid = (self.paid + n as f64).min(self.due + Self::burst(r));
        }
    }

    /// How long the holder of `ticket` still has to wait at the current rate (`None`: go).
    pub(crate) fn wait(&mut self, ticket: f64, now: Instant) -> Option<Duration> {
        self.advance(now);
        if self.paid >= ticket {
            return None;
        }
        let r = self.rate? as f64;
        // At least a microsecond: rounding must not make a waiter spin.
        Some(Duration::from_secs_f64(
            ((ticket - self.paid) / r).max(1e-6),
        ))
    }
}

struct State {
    bucket: Bucket,
    /// When to look at the wall clock again for the schedule.
    recheck: Instant,
}

/// One shared limit (see the module docs). Create it once and hand clones of its `Arc` to
/// every stream it limits.
pub struct Limiter {
    name: String,
    schedule: Mutex<RateSchedule>,
    st: Mutex<State>,
    cv: Condvar,
}

impl std::fmt::Debug for Limiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limiter")
            .field("name", &self.name)
            .field("rate", &self.rate())
            .finish()
    }
}

impl Limiter {
    /// A limit named `name` (for logs, e.g. "upload limit of [[traffic]] rule 1").
    pub fn new(name: impl Into<String>, schedule: RateSchedule) -> Limiter {
        let now = Instant::now();
        let (rate, recheck) = Self::consult(&schedule, now);
        Limiter {
            name: name.into(),
            schedule: Mutex::new(schedule),
            st: Mutex::new(State {
                bucket: Bucket::new(rate, now),
                recheck,
            }),
            cv: Condvar::new(),
        }
    }

    /// A fixed limit (`None`: unlimited).
    pub fn fixed(name: impl Into<String>, rate: Option<u64>) -> Limiter {
        Self::new(name, RateSchedule::fixed(rate))
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The rate in force now (`None`: unlimited).
    pub fn rate(&self) -> Option<u64> {
        let mut st = self.lock();
        self.refresh(&mut st, Instant::now());
        st.bucket.rate()
    }

    /// Replace the schedule (e.g. a configuration reloaded); waiters recompute at once.
    pub fn set_schedule(&self, schedule: RateSchedule) {
        *self.schedule.lock().unwrap_or_else(|p| p.into_inner()) = schedule;
        let mut st = self.lock();
        st.recheck = Instant::now();
        self.refresh(&mut st, Instant::now());
        self.cv.notify_all();
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Only arithmetic runs under the lock; a poisoned state is still consistent.
        self.st.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The schedule's rate now, and when to look again.
    fn consult(schedule: &RateSchedule, now: Instant) -> (Option<u64>, Instant) {
        let wall = Utc::now();
        let (rate, next) = schedule.rate_at(wall);
        let until_change = next
            .and_then(|n| (n - wall).to_std().ok())
            .unwrap_or(RECHECK);
        (rate, now + until_change.min(RECHECK))
    }

    /// Apply the schedule if it is time to look at it again; wakes every waiter when the
    /// rate changed.
    fn refresh(&self, st: &mut State, now: Instant) {
        if now < st.recheck {
            return;
        }
        let schedule = self.schedule.lock().unwrap_or_else(|p| p.into_inner());
        let (rate, recheck) = Self::consult(&schedule, now);
        drop(schedule);
        st.recheck = recheck;
        if rate != st.bucket.rate() {
            tracing::info!("{}: now {}", self.name, format_rate(rate));
            st.bucket.set_rate(rate, now);
            self.cv.notify_all();
        }
    }

    /// Charge `n` bytes and wait for their turn (see the module docs). Returns how long it
    /// waited.
    pub fn acquire(&self, n: u64) -> Duration {
        self.acquire_unless(n, &|| false).unwrap_or_default()
    }

    /// [`acquire`](Self::acquire), giving up when `abort()` says so (looked at every
    /// [`ABORT_POLL`]): `None` then, and its bytes are given back (the waiters behind it
    /// move up: bytes never sent must not slow anyone).
    pub fn acquire_unless(&self, n: u64, abort: &dyn Fn() -> bool) -> Option<Duration> {
        let start = Instant::now();
        let mut st = self.lock();
        self.refresh(&mut st, start);
        if st.bucket.rate().is_none() {
            // Unlimited: nothing to count.
            return Some(Duration::ZERO);
        }
        let ticket = st.bucket.reserve(n, start);
        loop {
            let now = Instant::now();
            self.refresh(&mut st, now);
            let Some(wait) = st.bucket.wait(ticket, now) else {
                return Some(now.saturating_duration_since(start));
            };
            if abort() {
                st.bucket.refund(n, now);
                self.cv.notify_all();
                return None;
            }
            let wait = wait
                .min(st.recheck.saturating_duration_since(now))
                .min(ABORT_POLL);
            st = self
                .cv
                .wait_timeout(st, wait.max(Duration::from_micros(1)))
                .map(|(g, _)| g)
                .unwrap_or_else(|p| p.into_inner().0);
        }
    }

    /// Charge `n` bytes without waiting: they delay the requests after them. For small
    /// writes whose timeliness matters more than the limit (lock refreshes).
    pub fn charge(&self, n: u64) {
        let now = Instant::now();
        let mut st = self.lock();
        self.refresh(&mut st, now);
        if st.bucket.rate().is_some() {
            st.bucket.reserve(n, now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use kura_schedule::Tz;

    const MIB: u64 = 1 << 20;

    #[test]
    fn rates() {
        assert_eq!(parse_rate("10MiB/s"), Ok(Some(10 * MIB)));
        assert_eq!(parse_rate("10 MiB/s"), Ok(Some(10 * MIB)));
        assert_eq!(parse_rate("512KiB/s"), Ok(Some(512 << 10)));
        assert_eq!(parse_rate("4M"), Ok(Some(4 * MIB)));
        assert_eq!(parse_rate("1G/s"), Ok(Some(1 << 30)));
        assert_eq!(parse_rate("100B/s"), Ok(Some(100)));
        // restic's unit: a bare number is KiB/s.
        assert_eq!(parse_rate("1024"), Ok(Some(MIB)));
        assert_eq!(parse_rate(" 0 "), Ok(None));
        assert_eq!(parse_rate("unlimited"), Ok(None));
        // The one size grammar: SI units are powers of 1000.
        assert_eq!(parse_rate("10MB/s"), Ok(Some(10_000_000)));
        assert_eq!(parse_rate("1.5MiB/s"), Ok(Some(1536 << 10)));
        for bad in [
            "",
            "fast",
            "/s",
            "-1",
            "0.5B/s",
            "10MiB/h",
            "99999999999999999999",
        ] {
            let e = parse_rate(bad).unwrap_err();
            assert!(e.contains("invalid rate"), "{bad}: {e}");
        }
        assert_eq!(format_rate(Some(10 * MIB)), "10 MiB/s");
        assert_eq!(format_rate(Some(1536 << 10)), "1.5 MiB/s");
        assert_eq!(format_rate(Some(100)), "100 B/s");
        assert_eq!(format_rate(None), "unlimited");
    }

    #[test]
    fn an_idle_bucket_lets_one_second_go_and_then_the_rate_holds() {
        let t0 = Instant::now();
        let mut b = Bucket::new(Some(MIB), t0);
        // One second's worth goes at once.
        let t = b.reserve(MIB, t0);
        assert_eq!(b.wait(t, t0), None);
        // The next MiB waits a second, the one after two (first come, first served).
        let t1 = b.reserve(MIB, t0);
        let t2 = b.reserve(MIB, t0);
        let w1 = b.wait(t1, t0).unwrap();
        let w2 = b.wait(t2, t0).unwrap();
        assert!((w1.as_secs_f64() - 1.0).abs() < 1e-6, "{w1:?}");
        assert!((w2.as_secs_f64() - 2.0).abs() < 1e-6, "{w2:?}");
        assert_eq!(b.wait(t1, t0 + Duration::from_secs(1)), None);
        assert!(b.wait(t2, t0 + Duration::from_secs(1)).is_some());
        assert_eq!(b.wait(t2, t0 + Duration::from_secs(2)), None);
        // Idle for a minute: still only one second's worth of credit.
        let later = t0 + Duration::from_secs(62);
        let t3 = b.reserve(MIB, later);
        assert_eq!(b.wait(t3, later), None);
        let t4 = b.reserve(MIB / 2, later);
        let w4 = b.wait(t4, later).unwrap();
        assert!((w4.as_secs_f64() - 0.5).abs() < 1e-6, "{w4:?}");
    }

    #[test]
    fn an_object_larger_than_the_burst_waits_for_what_exceeds_the_credit() {
        let t0 = Instant::now();
        let mut b = Bucket::new(Some(4 * MIB), t0);
        let t = b.reserve(16 * MIB, t0);
        let w = b.wait(t, t0).unwrap();
        assert!((w.as_secs_f64() - 3.0).abs() < 1e-6, "{w:?}");
        // Whoever comes next waits behind it.
        let t2 = b.reserve(4 * MIB, t0 + Duration::from_secs(1));
        let w2 = b.wait(t2, t0 + Duration::from_secs(1)).unwrap();
        assert!((w2.as_secs_f64() - 3.0).abs() < 1e-6, "{w2:?}");
    }

    #[test]
    fn total_throughput_of_many_streams_is_the_rate() {
        // Ten streams asking in turn for 64 KiB pieces of 1 MiB/s for a simulated minute:
        // together they get 60 s × 1 MiB/s plus the burst, each its share.
        let t0 = Instant::now();
        let mut b = Bucket::new(Some(MIB), t0);
        let mut now = t0;
        let mut got = [0u64; 10];
        let mut tickets: Vec<(usize, f64)> =
            (0..10).map(|s| (s, b.reserve(64 << 10, now))).collect();
        let end = t0 + Duration::from_secs(60);
        while now < end {
            let (s, ticket) = tickets.remove(0);
            if let Some(w) = b.wait(ticket, now) {
                now += w;
            }
            got[s] += 64 << 10;
            tickets.push((s, b.reserve(64 << 10, now)));
        }
        let total: u64 = got.iter().sum();
        assert!(total <= 61 * MIB + (64 << 10), "{total}");
        assert!(total >= 60 * MIB, "{total}");
        let (min, max) = (got.iter().min().unwrap(), got.iter().max().unwrap());
        assert!(max - min <= 64 << 10, "unfair: {got:?}");
    }

    #[test]
    fn a_rate_change_applies_to_waiters_and_a_new_limit_starts_full() {
        let t0 = Instant::now();
        let mut b = Bucket::new(Some(MIB), t0);
        let _ = b.reserve(MIB, t0);
        let t = b.reserve(10 * MIB, t0);
        assert!(b.wait(t, t0).unwrap() > Duration::from_secs(9));
        // Ten times the rate: a tenth of the wait.
        b.set_rate(Some(10 * MIB), t0);
        let w = b.wait(t, t0).unwrap();
        assert!((w.as_secs_f64() - 1.0).abs() < 1e-6, "{w:?}");
        // Unlimited: go now, and nothing is owed afterwards.
        b.set_rate(None, t0);
        assert_eq!(b.wait(t, t0), None);
        let t2 = b.reserve(100 * MIB, t0);
        assert_eq!(b.wait(t2, t0), None);
        // Limited again: a full bucket, then the rate.
        b.set_rate(Some(MIB), t0);
        let t3 = b.reserve(MIB, t0);
        assert_eq!(b.wait(t3, t0), None);
        let t4 = b.reserve(MIB, t0);
        assert!(b.wait(t4, t0).is_some());
    }

    #[test]
    fn a_clock_going_back_pays_nothing_and_breaks_nothing() {
        let t0 = Instant::now() + Duration::from_secs(10);
        let mut b = Bucket::new(Some(MIB), t0);
        let _ = b.reserve(MIB, t0);
        let t = b.reserve(MIB, t0);
        // An earlier instant (threads read the clock before taking the lock) pays nothing.
        let w = b.wait(t, t0 - Duration::from_secs(5)).unwrap();
        assert!((w.as_secs_f64() - 1.0).abs() < 1e-6, "{w:?}");
    }

    fn utc(h: u32, m: u32) -> DateTime<Utc> {
        // 2024-01-08 is a Monday.
        Utc.with_ymd_and_hms(2024, 1, 8, h, m, 0).unwrap()
    }

    #[test]
    fn schedules_pick_the_rate_by_the_wall_clock() {
        let office = Timeframe::parse("mon..fri 08:00-18:00", Tz::UTC).unwrap();
        let night = Timeframe::parse("22:00-06:00", Tz::UTC).unwrap();
        let s = RateSchedule::during(Some(MIB), office.clone());
        assert_eq!(s.rate_at(utc(9, 0)), (Some(MIB), Some(utc(18, 0))));
        assert_eq!(s.rate_at(utc(7, 0)), (None, Some(utc(8, 0))));
        let s = RateSchedule::fixed(Some(8 * MIB))
            .and(office, Some(MIB))
            .and(night, None);
        assert_eq!(s.rate_at(utc(12, 0)).0, Some(MIB));
        assert_eq!(s.rate_at(utc(23, 0)).0, None);
        assert_eq!(s.rate_at(utc(20, 0)), (Some(8 * MIB), Some(utc(22, 0))));
        assert_eq!(
            RateSchedule::fixed(Some(MIB)).rate_at(utc(1, 0)),
            (Some(MIB), None)
        );
    }

    #[test]
    fn limiter_threads_share_the_rate() {
        // Real time, kept short: 3 threads × 8 × 512 KiB = 12 MiB through 8 MiB/s, whose
        // burst lets the first 8 MiB go at once.
        let l = std::sync::Arc::new(Limiter::fixed("test", Some(8 * MIB)));
        let start = Instant::now();
        let threads: Vec<_> = (0..3)
            .map(|_| {
                let l = std::sync::Arc::clone(&l);
                std::thread::spawn(move || {
                    for _ in 0..8 {
                        l.acquire(MIB / 2);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        // 12 MiB at 8 MiB/s with 8 MiB of burst: at least 0.5 s.
        let took = start.elapsed();
        assert!(took >= Duration::from_millis(480), "{took:?}");
        assert!(took < Duration::from_secs(5), "{took:?}");
    }

    #[test]
    fn a_waiter_is_let_go_when_its_time_frame_ends() {
        // 1 KiB/s in a window that ends in two seconds, unlimited after: a MiB that would
        // wait 17 minutes goes when the window closes.
        let clock = |d: i64| (Utc::now() + chrono::TimeDelta::seconds(d)).format("%H:%M:%S");
        let text = format!("{}-{} UTC", clock(-3600), clock(2));
        let window = Timeframe::parse(&text, Tz::UTC).unwrap();
        let l = Limiter::new("test", RateSchedule::during(Some(1024), window));
        assert_eq!(l.rate(), Some(1024));
        let t = Instant::now();
        l.acquire(MIB);
        let took = t.elapsed();
        assert!(took >= Duration::from_millis(900), "{took:?}");
        assert!(took < Duration::from_secs(5), "{took:?}");
        assert_eq!(l.rate(), None);
    }

    #[test]
    fn lifting_a_limit_releases_its_waiters_at_once() {
        let l = std::sync::Arc::new(Limiter::fixed("test", Some(1024)));
        l.acquire(1024);
        let waiter = {
            let l = std::sync::Arc::clone(&l);
            std::thread::spawn(move || l.acquire(MIB)) // 1024 s at 1 KiB/s
        };
        std::thread::sleep(Duration::from_millis(100));
        let t = Instant::now();
        l.set_schedule(RateSchedule::fixed(None));
        let waited = waiter.join().unwrap();
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
        assert!(waited >= Duration::from_millis(90), "{waited:?}");
        assert_eq!(l.rate(), None);
        assert_eq!(l.acquire(100 * MIB), Duration::ZERO);
    }
}
