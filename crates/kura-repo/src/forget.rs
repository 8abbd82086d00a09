//! `kura forget`: which snapshots a retention policy keeps.
//!
//! Snapshots are grouped by host and paths (a policy applies per backup "series"), then the
//! rules are applied newest first, with restic's semantics so that operators can reuse their
//! policies: `--keep-last n` keeps the n newest; `--keep-daily n` keeps the newest snapshot of
//! each of the n most recent days that have one (likewise hourly, weekly, monthly, yearly);
//! `--keep-within d` keeps everything taken within d before the group's newest snapshot, d
//! a [`CalendarSpan`] moved back on the calendar of the time zone given (`1y6m` is one year
//! and six calendar months, as in restic);
//! `--keep-tag t` keeps snapshots tagged t. A snapshot kept by any rule is kept. Forgetting
//! only deletes snapshot manifests; `prune` frees the data nobody references any more.

use chrono::{DateTime, Datelike, TimeZone, Timelike};
use serde::Serialize;

use kura_backend::{ErrorKind, FileKind};
use kura_types::CalendarSpan;

use crate::error::Result;
use crate::id::Id;
use crate::lock::RepoLock;
use crate::repo::Repository;
use crate::snapshot::SnapshotEntry;

/// A retention policy. All zero/empty = no policy.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeepPolicy {
    pub last: u32,
    pub hourly: u32,
    pub daily: u32,
    pub weekly: u32,
    pub monthly: u32,
    pub yearly: u32,
    /// Keep everything taken at most this long before the newest snapshot of the group.
    pub within: Option<CalendarSpan>,
    pub tags: Vec<String>,
}

impl KeepPolicy {
    pub fn is_empty(&self) -> bool {
        *self == KeepPolicy::default()
    }
}

/// The decision for one snapshot.
#[derive(Debug, Clone, Serialize)]
pub struct Decision {
    pub id: String,
    pub time: String,
    pub keep: bool,
    /// Rules that keep it (empty when removed).
    pub reasons: Vec<String>,
}

/// One group (host + paths) and its decisions, newest first.
#[derive(Debug, Clone, Serialize)]
pub struct Group {
    pub host: String,
    pub paths: Vec<String>,
    pub decisions: Vec<Decision>,
}

type BucketFn<Tz> = fn(&DateTime<Tz>) -> i64;

/// Apply `policy` to `snaps` with calendar buckets in time zone `tz`.
pub fn apply_policy<Tz: TimeZone>(
    snaps: &[SnapshotEntry],
    policy: &KeepPolicy,
    tz: &Tz,
) -> Vec<Group> {
    let mut groups: Vec<(String, Vec<String>, Vec<&SnapshotEntry>)> = Vec::new();
    for s in snaps {
        let paths = s.snapshot.paths_lossy();
        match groups
            .iter_mut()
            .find(|(h, p, _)| *h == s.snapshot.host && *p == paths)
        {
            Some(g) => g.2.push(s),
            None => groups.push((s.snapshot.host.clone(), paths, vec![s])),
        }
    }
    let rules: [(&str, u32, BucketFn<Tz>); 5] = [
        ("hourly", policy.hourly, |t| {
            t.year() as i64 * 1_000_000 + t.ordinal() as i64 * 100 + t.hour() as i64
        }),
        ("daily", policy.daily, |t| {
            t.year() as i64 * 1000 + t.ordinal() as i64
        }),
        ("weekly", policy.weekly, |t| {
            let w = t.iso_week();
            w.year() as i64 * 100 + w.week() as i64
        }),
        ("monthly", policy.monthly, |t| {
            t.year() as i64 * 100 + t.month() as i64
        }),
        ("yearly", policy.yearly, |t| t.year() as i64),
    ];
    let mut out = Vec::new();
    for (host, paths, mut list) in groups {
        list.sort_by(|a, b| b.snapshot.time.cmp(&a.snapshot.time).then(b.id.cmp(&a.id)));
        let newest = list.first().and_then(|s| s.snapshot.time.to_chrono());
        // The oldest time `within` keeps: on the local calendar, or where that has no such
        // time (a clock change), on UTC's.
        let cutoff = policy.within.zip(newest).map(|(w, t)| {
            w.before(&t.with_timezone(tz))
                .map(|l| l.timestamp())
                .or_else(|| w.before(&t).map(|u| u.timestamp()))
                .unwrap_or(i64::MIN)
        });
        let mut last_bucket: [Option<i64>; 5] = [None; 5];
        let mut counts = [0u32; 5];
        let mut decisions = Vec::new();
        for (i, s) in list.iter().enumerate() {
            let mut reasons = Vec::new();
            if (i as u32) < policy.last {
                reasons.push("last".to_string());
            }
            if let Some(c) = cutoff
                && s.snapshot.time.0 >= c
            {
                reasons.push("within".to_string());
            }
            if s.snapshot.tags.iter().any(|t| policy.tags.contains(t)) {
                reasons.push("tag".to_string());
            }
            if let Some(t) = s.snapshot.time.to_chrono() {
                let local = t.with_timezone(tz);
                for (k, (name, n, bucket)) in rules.iter().enumerate() {
                    let b = bucket(&local);
                    if counts[k] < *n && last_bucket[k] != Some(b) {
                        last_bucket[k] = Some(b);
                        counts[k] += 1;
                        reasons.push(name.to_string());
                    }
                }
            }
            decisions.push(Decision {
                id: s.id.to_hex(),
                time: s.snapshot.time.to_rfc3339(),
                keep: !reasons.is_empty(),
                reasons,
            });
        }
        out.push(Group {
            host,
            paths,
            decisions,
        });
    }
    out
}

/// Delete snapshot manifests. Any lock will do: a backup running meanwhile that chose one of
/// them as its parent still stores every blob that is no longer live (see
/// [`crate::IndexedRepo::has_live`]), and prune tolerates a snapshot vanishing while it reads.
pub fn remove_snapshots<K>(repo: &Repository, _lock: &RepoLock<K>, ids: &[Id]) -> Result<usize> {
    let mut n = 0;
    for id in ids {
        match repo.backend().delete(FileKind::Snapshot, &id.to_hex()) {
            Ok(()) => n += 1,
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::{Content, Snapshot, Summary};
    use crate::util::Timestamp;
    use proptest::prelude::*;

    fn snap(i: u8, t: i64, tags: &[&str]) -> SnapshotEntry {
        SnapshotEntry {
            id: Id([i; 32]),
            snapshot: Snapshot {
                v: 1,
                time: Timestamp(t, 0),
                host: "h".into(),
                username: "u".into(),
                paths: vec![serde_bytes::ByteBuf::from(b"/d".to_vec())],
                tags: tags.iter().map(|s| s.to_string()).collect(),
                parent: None,
                content: Content::Tree { root: Id::ZERO },
                summary: Summary::default(),
                original: None,
            },
        }
    }

    fn kept(g: &[Group]) -> Vec<String> {
        g.iter()
            .flat_map(|g| {
                g.decisions
                    .iter()
                    .filter(|d| d.keep)
                    .map(|d| d.id[..2].to_string())
            })
            .collect()
    }

    const DAY: i64 = 86400;
    // 2026-01-01T12:00:00Z
    const T0: i64 = 1_767_268_800;

    #[test]
    fn daily_keeps_newest_per_day_and_last_keeps_newest() {
        // Two snapshots a day for five days.
        let snaps: Vec<_> = (0..10u8)
            .map(|i| snap(i, T0 + (i as i64 / 2) * DAY + (i as i64 % 2) * 3600, &[]))
            .collect();
        let p = KeepPolicy {
            daily: 3,
            ..Default::default()
        };
        // Newest of each of the 3 newest days: 9, 7, 5.
        assert_eq!(
            kept(&apply_policy(&snaps, &p, &chrono::Utc)),
            vec!["09", "07", "05"]
        );
        let p = KeepPolicy {
            last: 2,
            monthly: 1,
            ..Default::default()
        };
        assert_eq!(
            kept(&apply_policy(&snaps, &p, &chrono::Utc)),
            vec!["09", "08"]
        );
        let p = KeepPolicy {
            within: Some(CalendarSpan::days(1)),
            ..Default::default()
        };
        assert_eq!(
            kept(&apply_policy(&snaps, &p, &chrono::Utc)),
            vec!["09", "08", "07"]
        );
    }

    #[test]
    fn tags_and_groups() {
        let mut other = snap(50, T0, &[]);
        other.snapshot.host = "other".into();
        let snaps = vec![snap(1, T0, &["keep"]), snap(2, T0 + 10, &[]), other];
        let p = KeepPolicy {
            last: 1,
            tags: vec!["keep".into()],
            ..Default::default()
        };
        let g = apply_policy(&snaps, &p, &chrono::Utc);
        assert_eq!(g.len(), 2);
        assert_eq!(kept(&g), vec!["02", "01", "32"]);
    }

    #[test]
    fn within_moves_by_calendar_months() {
        // 2026 (UTC): 1 January noon, 1 February at midnight, 1 March and 1 April noon.
        let months = [1_767_268_800, 1_769_904_000, 1_772_366_400, 1_775_044_800];
        let snaps: Vec<_> = months
            .iter()
            .enumerate()
            .map(|(i, t)| snap(i as u8, *t, &[]))
            .collect();
        let p = KeepPolicy {
            within: Some(CalendarSpan::parse("2m").unwrap()),
            ..Default::default()
        };
        // Two calendar months before 1 April noon is 1 February noon: that morning's
        // snapshot is not kept (60 days would have reached back to 31 January).
        assert_eq!(
            kept(&apply_policy(&snaps, &p, &chrono::Utc)),
            vec!["03", "02"]
        );
    }

    proptest! {
        #[test]
        fn policy_properties(times in proptest::collection::vec(0i64..400 * DAY, 1..40), last in 0u32..5, daily in 0u32..5, monthly in 0u32..3) {
            let snaps: Vec<_> = times.iter().enumerate().map(|(i, t)| snap(i as u8, T0 + t, &[])).collect();
            let p = KeepPolicy { last, daily, monthly, ..Default::default() };
            let g = apply_policy(&snaps, &p, &chrono::Utc);
            let decisions: Vec<&Decision> = g.iter().flat_map(|g| &g.decisions).collect();
            // Every snapshot gets exactly one decision.
            prop_assert_eq!(decisions.len(), snaps.len());
            let kept = decisions.iter().filter(|d| d.keep).count() as u32;
            prop_assert!(kept <= last + daily + monthly);
            prop_assert!(kept >= last.min(snaps.len() as u32));
            // The newest snapshot is kept by any non-empty count rule.
            if last + daily + monthly > 0 {
                prop_assert!(decisions[0].keep);
            }
        }
    }
}
