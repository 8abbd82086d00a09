//! How a scheduled job's runs are started, and when they must end: catch-up after the
//! daemon was down, overlap with a run still going, and the backup window.
//!
//! A job's window is measured from the occurrence's *scheduled* time, not from when the
//! run actually started: a run started late (resources busy, another run queued ahead)
//! has less of its window left, as an operator reading "finish within 4h of 01:00"
//! expects. `start-within` bounds how late a run may start at all; a run that cannot start
//! within it is recorded *missed* with the reason.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Occurrences that fell due while no daemon ran (or the machine slept).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "kebab-case")]
pub enum CatchUp {
    /// Record them all missed (an occurrence a tick late still runs).
    None,
    /// Run the newest of them now; record the older ones missed.
    #[default]
    One,
}

/// An occurrence that falls due while the job's previous run still goes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "kebab-case")]
pub enum Overlap {
    /// Record it skipped.
    #[default]
    Skip,
    /// Run it once the previous run ends (one at most waits; a newer one replaces it,
    /// recording the older skipped).
    Queue,
    /// Cancel the previous run and start the new one.
    CancelOlder,
}

/// What happens to a run still going when its window (`finish-within`) or its `max-run`
/// ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "kebab-case")]
pub enum WindowEnd {
    /// Cancel it: the repository stays consistent, no snapshot is made, its resources are
    /// released, and what it uploaded is reused by the next run.
    #[default]
    Cancel,
    /// Let it run on and report the overrun.
    Finish,
    /// As `Cancel`, and earlier: as soon as the daemon's prediction is confident the run
    /// cannot finish within its window, it is cancelled then, with the reason (the source
    /// and targets are freed early; the next run reuses what was uploaded either way).
    /// `Cancel` instead lets the run use its whole window, uploading as much as it can for
    /// the next run to reuse — what a first backup larger than one window needs.
    CancelEarly,
}

macro_rules! words {
    ($t:ty, $what:literal, $($v:path => $s:literal),+ $(,)?) => {
        impl $t {
            /// The word used in settings, flags and reports.
            pub fn as_str(self) -> &'static str {
                match self { $($v => $s),+ }
            }
        }
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
        impl FromStr for $t {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                match s {
                    $($s => Ok($v),)+
                    _ => Err(format!(
                        concat!("invalid ", $what, " {:?}; expected one of: {}"),
                        s,
                        [$($s),+].join(", ")
                    )),
                }
            }
        }
    };
}

words!(CatchUp, "catch-up policy", CatchUp::None => "none", CatchUp::One => "one");
words!(Overlap, "overlap policy",
    Overlap::Skip => "skip", Overlap::Queue => "queue", Overlap::CancelOlder => "cancel-older");
words!(WindowEnd, "window end action",
    WindowEnd::Cancel => "cancel", WindowEnd::Finish => "finish",
    WindowEnd::CancelEarly => "cancel-early");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_round_trip_and_bad_words_name_the_choices() {
        for o in [Overlap::Skip, Overlap::Queue, Overlap::CancelOlder] {
            assert_eq!(o.as_str().parse::<Overlap>(), Ok(o));
            assert_eq!(
                serde_json::to_string(&o).unwrap(),
                format!("\"{}\"", o.as_str())
            );
        }
        assert_eq!("none".parse::<CatchUp>(), Ok(CatchUp::None));
        assert_eq!("finish".parse::<WindowEnd>(), Ok(WindowEnd::Finish));
        assert_eq!(
            serde_json::to_string(&WindowEnd::CancelEarly).unwrap(),
            "\"cancel-early\""
        );
        let e = "sometimes".parse::<Overlap>().unwrap_err();
        assert!(e.contains("skip, queue, cancel-older"), "{e}");
    }
}
