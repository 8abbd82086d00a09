//! kura's NBD server: how the volume engine serves volumes to hosts (issue 6).
//!
//! NBD (the Network Block Device protocol, `doc/proto.md` of the NBD project) is what
//! qemu, the Linux kernel client and libnbd speak. We implement the server ourselves: no Rust
//! crate implements the server side with structured replies and metadata contexts, and the
//! volume engine must see every write (to track dirty blocks and copy blocks before they are
//! overwritten), so the server is a thin protocol layer over an [`Export`] trait the engine
//! implements.
//!
//! A small client ([`client`]) is here too: what restoring an image into any NBD export
//! needs (negotiation with `GO`, `WRITE`, `WRITE_ZEROES`, `FLUSH`), one request at a time.
//!
//! # What is spoken
//! - Fixed newstyle negotiation with `NBD_FLAG_NO_ZEROES`; options `EXPORT_NAME`, `ABORT`,
//!   `LIST`, `INFO`, `GO`, `STRUCTURED_REPLY`, `LIST_META_CONTEXT`, `SET_META_CONTEXT`
//!   (`STARTTLS` is refused by policy: serve on loopback or through a tunnel). `INFO`/`GO`
//!   answer with the export's size and flags and its block sizes (1 / 4096 / 32 MiB).
//! - Commands `READ`, `WRITE` (with `FUA`), `FLUSH`, `TRIM`, `WRITE_ZEROES` (`NO_HOLE`),
//!   `CACHE` (a no-op), `BLOCK_STATUS` for `base:allocation` and any context the export adds
//!   (the volume engine's dirty bitmap), `DISC`. Simple replies, or structured replies once
//!   negotiated.
//! - Several requests in flight per connection (replies may come out of order, as the
//!   protocol allows), several connections at once; `CAN_MULTI_CONN` is advertised because a
//!   flush on any connection makes every completed write durable.
//!
//! # Hostile input
//! Every length a client sends is checked before anything is allocated (option payloads ≤
//! 64 KiB, names ≤ 4096 bytes, writes ≤ 32 MiB), and payload bytes in flight per connection
//! are bounded. A malformed option gets an error reply; a request whose framing cannot be
//! trusted (bad magic, oversized write) closes the connection. Requests beyond the end of the
//! export, unknown commands or flags get `EINVAL` (writes: `ENOSPC`); writes to a read-only
//! export `EPERM`. Nothing a client sends can panic the server: the parsers are property-tested
//! on arbitrary bytes.

pub mod client;
pub mod export;
pub mod proto;
pub mod server;

pub use client::{Client, ClientError};
pub use export::{Export, Exports, FileExport, Runs};
pub use server::{ConnError, ServerOptions, handle, handle_streams, serve};
