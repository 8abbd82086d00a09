//! One module per subcommand.

pub mod backup;
pub mod backups;
pub mod catalog_sync;
pub mod check;
pub mod dump;
pub mod forget;
pub mod heal;
pub mod init;
pub mod job;
pub mod jobrun;
pub mod key;
pub mod ls;
pub mod pair;
pub mod policy;
pub mod prune;
pub mod repair;
pub mod resource;
pub mod restore;
pub mod serve;
pub mod serve_ops;
pub mod snapshots;
pub mod target;
pub mod task;
pub mod token;
pub mod unlock;
pub mod volume;
