//! The one error type of this crate: what was wrong with a schedule or time frame text.

/// A schedule, calendar event or time frame that could not be parsed.
///
/// Every message names the offending part, the whole input and what was expected there,
/// e.g. `invalid hour "25" in "mon 25:00": expected 0..23`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// Nothing (or only white space) was given.
    #[error("empty {what}: expected {expected}")]
    Empty {
        /// What was being parsed ("schedule", "calendar event", "time frame").
        what: &'static str,
        /// An example of what is accepted.
        expected: &'static str,
    },
    /// One part of the input is not what its place expects.
    #[error("invalid {what} \"{value}\" in \"{input}\": expected {expected}")]
    Invalid {
        /// The part's role ("hour", "weekday", "date", "time zone", …).
        what: &'static str,
        /// The offending text.
        value: String,
        /// The whole input.
        input: String,
        /// What is accepted in this place.
        expected: String,
    },
    /// A cron expression the cron parser refused.
    #[error("invalid cron expression \"{input}\": {reason}")]
    Cron {
        /// The whole input.
        input: String,
        /// The cron parser's reason.
        reason: String,
    },
}

impl Error {
    pub(crate) fn invalid(
        what: &'static str,
        value: &str,
        input: &str,
        expected: impl Into<String>,
    ) -> Self {
        Error::Invalid {
            what,
            value: value.to_string(),
            input: input.to_string(),
            expected: expected.into(),
        }
    }
}

/// What this crate's parsers return.
pub type Result<T> = std::result::Result<T, Error>;
