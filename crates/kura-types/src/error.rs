//! Errors of the parsers and of typed configuration.

/// A size, duration or calendar span that does not parse: names the text, what is wrong
/// with it, and the form expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {what} {text:?}: {why}; expected {expected}")]
pub struct ParseError {
    /// `size`, `duration`.
    pub what: &'static str,
    pub text: String,
    pub why: String,
    /// Examples of the grammar.
    pub expected: &'static str,
}

/// A stored or submitted configuration (job settings, a resource's configuration) that does
/// not fit its type: names whose it is, the field, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Whose configuration: `job nightly`, `target t1`.
    pub owner: String,
    /// The field at fault (`hook_timeout`, `targets[2]`), when one is.
    pub field: Option<String>,
    pub why: String,
}

impl ConfigError {
    pub fn new(owner: impl Into<String>, field: Option<&str>, why: impl Into<String>) -> Self {
        ConfigError {
            owner: owner.into(),
            field: field.map(str::to_string),
            why: why.into(),
        }
    }
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.field {
            Some(field) => write!(f, "{}: field {field:?}: {}", self.owner, self.why),
            None => write!(f, "{}: {}", self.owner, self.why),
        }
    }
}

impl std::error::Error for ConfigError {}
