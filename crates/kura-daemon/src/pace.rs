//! Which mirror target alone makes a run overrun its window.
//!
//! A mirror writes behind through one bounded queue per target, so the backup runs at the
//! pace of its slowest target: the others finish each write and wait for data. Their pace
//! *when busy* tells what they could do — each target's bytes written over the time it had
//! a write in flight ([`MemberStatus::busy`](kura_repo::backend::MemberStatus::busy); waits for its traffic limit
//! count as busy). If the slowest target's busy pace is well below every other's and, at
//! the next-slowest pace, the rest of the run would end by the deadline, that target alone
//! makes the run overrun: the window watcher drops it while the quorum holds (the job's
//! next run brings it up to date).
//!
//! The estimate scales the predicted time left by the ratio of the two paces — the bytes
//! left are the same for every target. It does not know the source's read speed, so it
//! is optimistic when reading would become the bottleneck; the prediction, which goes on
//! each second, then says so.

use std::time::Duration;

use chrono::{DateTime, Utc};
use kura_manager::control::Member;

/// A target must have written this much to have a pace; the slowest must also have been
/// busy this long (a fast one may well have been busy for less).
pub const MIN_BUSY: Duration = Duration::from_secs(2);
pub const MIN_BYTES: u64 = 1 << 20;
/// The slowest target's pace must be below the next one's by this factor to be the one
/// holding the run back.
pub const ALONE: f64 = 1.5;

/// The decision: drop member `index`, for `reason`.
#[derive(Debug, Clone, PartialEq)]
pub struct Drop {
    pub index: usize,
    pub target: String,
    /// When the run is predicted to finish without it.
    pub finish: DateTime<Utc>,
    pub reason: String,
}

fn pace(m: &Member) -> Option<f64> {
    let s = &m.status;
    (!s.busy.is_zero() && s.bytes >= MIN_BYTES).then(|| s.bytes as f64 / s.busy.as_secs_f64())
}

/// The target to drop, if one alone makes a run predicted to finish at `predicted`
/// overrun `deadline` (see the module docs). `members` with their `quorum`.
pub fn slowest_alone(
    members: &[Member],
    quorum: usize,
    now: DateTime<Utc>,
    predicted: DateTime<Utc>,
    deadline: DateTime<Utc>,
) -> Option<Drop> {
    if predicted <= deadline {
        return None;
    }
    let live: Vec<(usize, &Member)> = members
        .iter()
        .enumerate()
        .filter(|(_, m)| m.status.dropped.is_none())
        .collect();
    if live.len() <= quorum {
        return None;
    }
    // Every live target needs a pace: a judgement on a few seconds of one is a guess.
    let mut paces: Vec<(usize, &Member, f64)> = live
        .into_iter()
        .map(|(i, m)| pace(m).map(|p| (i, m, p)))
        .collect::<Option<_>>()?;
    paces.sort_by(|a, b| a.2.total_cmp(&b.2));
    let (index, slow, slow_pace) = paces[0];
    let next_pace = paces[1].2;
    if slow.status.busy < MIN_BUSY || next_pace < slow_pace * ALONE {
        return None;
    }
    let left = (predicted - now).to_std().ok()?;
    let without = left.mul_f64(slow_pace / next_pace);
    let finish = now + chrono::Duration::from_std(without).ok()?;
    if finish > deadline {
        return None;
    }
    let mib = |p: f64| format!("{:.1} MiB/s", p / f64::from(1 << 20));
    Some(Drop {
        index,
        target: slow.target.clone(),
        finish,
        reason: format!(
            "its pace ({}) alone would make the run overrun its window: without it (the \
             others at {} or more) the run is predicted to finish at {}; dropped while the \
             quorum ({quorum}) holds; the job's next run brings it up to date",
            mib(slow_pace),
            mib(next_pace),
            finish.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use kura_repo::backend::MemberStatus;

    fn member(name: &str, mib: u64, busy_s: u64) -> Member {
        Member {
            target: name.into(),
            status: MemberStatus {
                location: format!("/{name}"),
                dropped: None,
                files: 1,
                bytes: mib << 20,
                busy: Duration::from_secs(busy_s),
                queued: 0,
                spared: false,
            },
        }
    }

    fn t(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_000_000 + s, 0).unwrap()
    }

    #[test]
    fn the_target_holding_the_run_back_is_dropped_when_the_rest_fits() {
        // 20 s in: the slow one busy all along at 1 MiB/s, the others busy 2 s of it.
        let m = [
            member("a", 20, 2),
            member("slow", 20, 20),
            member("b", 20, 4),
        ];
        // Predicted 100 s left, 60 s allowed: at b's 5 MiB/s, 20 s left.
        let d = slowest_alone(&m, 2, t(0), t(100), t(60)).unwrap();
        assert_eq!((d.index, d.target.as_str()), (1, "slow"));
        assert_eq!(d.finish, t(20));
        assert!(d.reason.contains("1.0 MiB/s") && d.reason.contains("5.0 MiB/s"));
        assert!(d.reason.contains("quorum (2)"));
    }

    #[test]
    fn nothing_is_dropped_below_the_quorum_or_without_a_clear_culprit() {
        let m = [
            member("a", 20, 2),
            member("slow", 20, 20),
            member("b", 20, 4),
        ];
        // The quorum needs all three.
        assert_eq!(slowest_alone(&m, 3, t(0), t(100), t(60)), None);
        // On time: nothing to do.
        assert_eq!(slowest_alone(&m, 1, t(0), t(50), t(60)), None);
        // Even without it the run would overrun (at 5 MiB/s, 200 s left is 40 s: t(40)
        // is after a deadline at t(30)).
        assert_eq!(slowest_alone(&m, 1, t(0), t(200), t(30)), None);
        // Two about as slow: neither alone is the cause.
        let even = [member("a", 20, 20), member("b", 20, 16), member("c", 20, 2)];
        assert_eq!(slowest_alone(&even, 1, t(0), t(100), t(60)), None);
        // A target without a pace yet (under 1 MiB written), or a slowest one busy for
        // under 2 s: no judgement.
        let mut young = [member("a", 20, 1), member("slow", 20, 20)];
        young[0].status.bytes = 100 << 10;
        assert_eq!(slowest_alone(&young, 1, t(0), t(100), t(60)), None);
        let brief = [member("a", 20, 0), member("slow", 2, 1)];
        assert_eq!(slowest_alone(&brief, 1, t(0), t(100), t(60)), None);
        // One already dropped counts neither for the quorum nor as the next pace.
        let mut gone = m.clone();
        gone[0].status.dropped = Some("unreachable".into());
        gone[2].status.busy = Duration::from_secs(15);
        assert_eq!(slowest_alone(&gone, 1, t(0), t(100), t(60)), None);
    }
}
