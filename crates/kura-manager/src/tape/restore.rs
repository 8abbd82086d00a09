//! Restoring a backup from tape.
