//! One module per subcommand.

pub mod backup;
pub mod check;
pub mod dump;
pub mod init;
pub mod key;
pub mod ls;
pub mod restore;
pub mod snapshots;
pub mod unlock;
