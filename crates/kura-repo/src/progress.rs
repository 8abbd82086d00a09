//! Progress reporting. The library reports through this trait; the CLI draws bars (indicatif)
//! on a terminal and stays quiet otherwise. Implementations must be cheap: they are called
//! from pipeline threads for every chunk.

/// Receives progress of a long operation. Every method has a no-op default.
pub trait Progress: Send + Sync {
    /// A new phase starts (`"backup"`, `"restore"`, `"check"`, …) with an expected total of
    /// bytes, if known.
    fn start(&self, _phase: &str, _total_bytes: Option<u64>) {}
    /// More work was discovered (the total grows while a tree is being walked).
    fn add_total(&self, _bytes: u64, _items: u64) {}
    /// Work done.
    fn advance(&self, _bytes: u64, _items: u64) {}
    /// A backup queued this many bytes of new data (not found in the repository) for
    /// storing: what its uploads still have to carry, before compression.
    fn new_data(&self, _raw_bytes: u64) {}
    /// This many bytes of a backup's new data (before compression) are now durable on the
    /// target. With [`Progress::new_data`] it tells how much is buffered between reading
    /// and the target, and how fast the target takes it.
    fn stored(&self, _raw_bytes: u64) {}
    /// A warning for the user (also logged).
    fn warn(&self, _msg: &str) {}
    /// The phase is over.
    fn finish(&self) {}
}

/// Reports nothing.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoProgress;

impl Progress for NoProgress {}
