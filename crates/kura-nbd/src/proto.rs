//! The NBD wire format (fixed newstyle negotiation, simple and structured replies), as
//! specified in the NBD project's `doc/proto.md`. Pure encoding and decoding, no I/O, so
//! the parsers can be fed arbitrary bytes (see the property tests below).
//!
//! Every length a peer sends is checked against a limit before anything is allocated: a
//! hostile or broken client gets an error reply or a closed connection, never a panic or an
//! unbounded allocation.

use std::fmt;

pub const NBDMAGIC: u64 = 0x4e42_444d_4147_4943; // "NBDMAGIC"
pub const IHAVEOPT: u64 = 0x4948_4156_454f_5054; // "IHAVEOPT"
pub const REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
pub const STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;

// Handshake flags (server) and client flags.
pub const FLAG_FIXED_NEWSTYLE: u16 = 1;
pub const FLAG_NO_ZEROES: u16 = 2;
pub const CLIENT_FIXED_NEWSTYLE: u32 = 1;
pub const CLIENT_NO_ZEROES: u32 = 2;

// Options.
pub const OPT_EXPORT_NAME: u32 = 1;
pub const OPT_ABORT: u32 = 2;
pub const OPT_LIST: u32 = 3;
pub const OPT_STARTTLS: u32 = 5;
pub const OPT_INFO: u32 = 6;
pub const OPT_GO: u32 = 7;
pub const OPT_STRUCTURED_REPLY: u32 = 8;
pub const OPT_LIST_META_CONTEXT: u32 = 9;
pub const OPT_SET_META_CONTEXT: u32 = 10;

// Option replies.
pub const REP_ACK: u32 = 1;
pub const REP_SERVER: u32 = 2;
pub const REP_INFO: u32 = 3;
pub const REP_META_CONTEXT: u32 = 4;
pub const REP_ERR_UNSUP: u32 = (1 << 31) + 1;
pub const REP_ERR_POLICY: u32 = (1 << 31) + 2;
pub const REP_ERR_INVALID: u32 = (1 << 31) + 3;
pub const REP_ERR_UNKNOWN: u32 = (1 << 31) + 6;
pub const REP_ERR_TOO_BIG: u32 = (1 << 31) + 9;

// Info types.
pub const INFO_EXPORT: u16 = 0;
pub const INFO_NAME: u16 = 1;
pub const INFO_DESCRIPTION: u16 = 2;
pub const INFO_BLOCK_SIZE: u16 = 3;

// Transmission flags.
pub const TF_HAS_FLAGS: u16 = 1;
pub const TF_READ_ONLY: u16 = 1 << 1;
pub const TF_SEND_FLUSH: u16 = 1 << 2;
pub const TF_SEND_FUA: u16 = 1 << 3;
pub const TF_SEND_TRIM: u16 = 1 << 5;
pub const TF_SEND_WRITE_ZEROES: u16 = 1 << 6;
pub const TF_SEND_DF: u16 = 1 << 7;
pub const TF_CAN_MULTI_CONN: u16 = 1 << 8;
pub const TF_SEND_FAST_ZERO: u16 = 1 << 11;

// Commands and their flags.
pub const CMD_READ: u16 = 0;
pub const CMD_WRITE: u16 = 1;
pub const CMD_DISC: u16 = 2;
pub const CMD_FLUSH: u16 = 3;
pub const CMD_TRIM: u16 = 4;
pub const CMD_CACHE: u16 = 5;
pub const CMD_WRITE_ZEROES: u16 = 6;
pub const CMD_BLOCK_STATUS: u16 = 7;
pub const CMD_FLAG_FUA: u16 = 1;
pub const CMD_FLAG_NO_HOLE: u16 = 1 << 1;
pub const CMD_FLAG_DF: u16 = 1 << 2;
pub const CMD_FLAG_REQ_ONE: u16 = 1 << 3;
pub const CMD_FLAG_FAST_ZERO: u16 = 1 << 4;

// Structured reply chunk types and flags.
pub const REPLY_FLAG_DONE: u16 = 1;
pub const REPLY_TYPE_NONE: u16 = 0;
pub const REPLY_TYPE_OFFSET_DATA: u16 = 1;
pub const REPLY_TYPE_BLOCK_STATUS: u16 = 5;
pub const REPLY_TYPE_ERROR: u16 = (1 << 15) + 1;

// base:allocation and dirty-bitmap status bits.
pub const STATE_HOLE: u32 = 1;
pub const STATE_ZERO: u32 = 2;
pub const STATE_DIRTY: u32 = 1;

// Errors (errno values, as the protocol fixes them).
pub const EPERM: u32 = 1;
pub const EIO: u32 = 5;
pub const ENOMEM: u32 = 12;
pub const EINVAL: u32 = 22;
pub const ENOSPC: u32 = 28;
pub const EOVERFLOW: u32 = 75;
pub const ENOTSUP: u32 = 95;
pub const ESHUTDOWN: u32 = 108;

/// Longest option payload accepted (names are at most 4096 bytes; a few queries besides).
pub const MAX_OPTION_LEN: u32 = 64 * 1024;
/// Largest read or write payload (what the server advertises as its maximum block size).
pub const MAX_PAYLOAD: u32 = 32 << 20;
/// Longest export name or metadata context query.
pub const MAX_NAME: usize = 4096;

/// A protocol violation: the connection cannot go on (its framing is lost or the peer is
/// hostile), so the server closes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtocolError(pub String);

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ProtocolError {}

fn bad(msg: impl Into<String>) -> ProtocolError {
    ProtocolError(msg.into())
}

/// A bounds-checked reader over an option payload.
pub struct Cursor<'a> {
    buf: &'a [u8],
}

impl<'a> Cursor<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Cursor { buf }
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    pub fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.buf.len() < n {
            return None;
        }
        let (a, b) = self.buf.split_at(n);
        self.buf = b;
        Some(a)
    }

    pub fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }

    pub fn u32(&mut self) -> Option<u32> {
        self.take(4)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// A u32-length-prefixed string of at most [`MAX_NAME`] bytes.
    pub fn string(&mut self) -> Option<String> {
        let n = self.u32()? as usize;
        if n > MAX_NAME {
            return None;
        }
        let b = self.take(n)?;
        String::from_utf8(b.to_vec()).ok()
    }
}

/// The header of an option request: (option, payload length).
pub fn parse_option_header(b: &[u8; 16]) -> Result<(u32, u32), ProtocolError> {
    let magic = u64::from_be_bytes(b[0..8].try_into().unwrap_or_default());
    if magic != IHAVEOPT {
        return Err(bad(format!("option without IHAVEOPT magic ({magic:#x})")));
    }
    let opt = u32::from_be_bytes([b[8], b[9], b[10], b[11]]);
    let len = u32::from_be_bytes([b[12], b[13], b[14], b[15]]);
    if len > MAX_OPTION_LEN {
        return Err(bad(format!(
            "option {opt} payload of {len} bytes is too long"
        )));
    }
    Ok((opt, len))
}

/// NBD_OPT_INFO / NBD_OPT_GO payload: export name and requested info types.
pub fn parse_info_request(payload: &[u8]) -> Option<(String, Vec<u16>)> {
    let mut c = Cursor::new(payload);
    let name = c.string()?;
    let n = c.u16()? as usize;
    let mut infos = Vec::with_capacity(n.min(16));
    for _ in 0..n {
        infos.push(c.u16()?);
    }
    c.is_empty().then_some((name, infos))
}

/// NBD_OPT_LIST_META_CONTEXT / NBD_OPT_SET_META_CONTEXT payload: export name and queries.
pub fn parse_meta_request(payload: &[u8]) -> Option<(String, Vec<String>)> {
    let mut c = Cursor::new(payload);
    let name = c.string()?;
    let n = c.u32()? as usize;
    if n > 256 {
        return None;
    }
    let mut queries = Vec::with_capacity(n);
    for _ in 0..n {
        queries.push(c.string()?);
    }
    c.is_empty().then_some((name, queries))
}

/// An option reply header and payload.
pub fn option_reply(opt: u32, reply: u32, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(20 + payload.len());
    v.extend_from_slice(&REPLY_MAGIC.to_be_bytes());
    v.extend_from_slice(&opt.to_be_bytes());
    v.extend_from_slice(&reply.to_be_bytes());
    v.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    v.extend_from_slice(payload);
    v
}

/// A transmission request (the 28-byte header; a write's payload follows it on the wire).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    pub flags: u16,
    pub ty: u16,
    pub cookie: u64,
    pub offset: u64,
    pub length: u32,
}

pub fn parse_request(b: &[u8; 28]) -> Result<Request, ProtocolError> {
    let magic = u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    if magic != REQUEST_MAGIC {
        return Err(bad(format!("request without its magic ({magic:#x})")));
    }
    let r = Request {
        flags: u16::from_be_bytes([b[4], b[5]]),
        ty: u16::from_be_bytes([b[6], b[7]]),
        cookie: u64::from_be_bytes(b[8..16].try_into().unwrap_or_default()),
        offset: u64::from_be_bytes(b[16..24].try_into().unwrap_or_default()),
        length: u32::from_be_bytes([b[24], b[25], b[26], b[27]]),
    };
    // A write's payload is on the wire: if it is too big to accept, the framing cannot be
    // kept without reading it all, so the connection ends.
    if r.ty == CMD_WRITE && r.length > MAX_PAYLOAD {
        return Err(bad(format!(
            "write of {} bytes exceeds the {} byte maximum",
            r.length, MAX_PAYLOAD
        )));
    }
    Ok(r)
}

pub fn encode_request(r: &Request) -> [u8; 28] {
    let mut b = [0u8; 28];
    b[0..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
    b[4..6].copy_from_slice(&r.flags.to_be_bytes());
    b[6..8].copy_from_slice(&r.ty.to_be_bytes());
    b[8..16].copy_from_slice(&r.cookie.to_be_bytes());
    b[16..24].copy_from_slice(&r.offset.to_be_bytes());
    b[24..28].copy_from_slice(&r.length.to_be_bytes());
    b
}

/// A simple reply header (a successful read's data follows it).
pub fn simple_reply(cookie: u64, error: u32) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[0..4].copy_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
    b[4..8].copy_from_slice(&error.to_be_bytes());
    b[8..16].copy_from_slice(&cookie.to_be_bytes());
    b
}

/// A structured reply chunk header for a payload of `len` bytes.
pub fn chunk_header(cookie: u64, flags: u16, ty: u16, len: u32) -> [u8; 20] {
    let mut b = [0u8; 20];
    b[0..4].copy_from_slice(&STRUCTURED_REPLY_MAGIC.to_be_bytes());
    b[4..6].copy_from_slice(&flags.to_be_bytes());
    b[6..8].copy_from_slice(&ty.to_be_bytes());
    b[8..16].copy_from_slice(&cookie.to_be_bytes());
    b[16..20].copy_from_slice(&len.to_be_bytes());
    b
}

/// A structured error chunk (final) with a human-readable message.
pub fn error_chunk(cookie: u64, error: u32, msg: &str) -> Vec<u8> {
    let msg = &msg.as_bytes()[..msg.len().min(4096)];
    let mut v = Vec::with_capacity(26 + msg.len());
    v.extend_from_slice(&chunk_header(
        cookie,
        REPLY_FLAG_DONE,
        REPLY_TYPE_ERROR,
        6 + msg.len() as u32,
    ));
    v.extend_from_slice(&error.to_be_bytes());
    v.extend_from_slice(&(msg.len() as u16).to_be_bytes());
    v.extend_from_slice(msg);
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn parsers_never_panic_on_arbitrary_bytes(b in prop::collection::vec(any::<u8>(), 0..600)) {
            let _ = parse_info_request(&b);
            let _ = parse_meta_request(&b);
            let mut h16 = [0u8; 16];
            let mut h28 = [0u8; 28];
            for (i, x) in b.iter().enumerate() {
                if i < 16 { h16[i] = *x; }
                if i < 28 { h28[i] = *x; }
            }
            let _ = parse_option_header(&h16);
            let _ = parse_request(&h28);
        }

        #[test]
        fn requests_round_trip(flags: u16, ty in 0u16..10, cookie: u64, offset: u64, length in 0u32..MAX_PAYLOAD) {
            let r = Request { flags, ty, cookie, offset, length };
            prop_assert_eq!(parse_request(&encode_request(&r)).unwrap(), r);
        }

        #[test]
        fn info_requests_round_trip(name in "[a-z0-9-]{0,40}", infos in prop::collection::vec(any::<u16>(), 0..8)) {
            let mut p = (name.len() as u32).to_be_bytes().to_vec();
            p.extend_from_slice(name.as_bytes());
            p.extend_from_slice(&(infos.len() as u16).to_be_bytes());
            for i in &infos { p.extend_from_slice(&i.to_be_bytes()); }
            prop_assert_eq!(parse_info_request(&p), Some((name, infos)));
        }
    }

    #[test]
    fn hostile_lengths_are_refused_before_allocating() {
        let mut h = [0u8; 16];
        h[0..8].copy_from_slice(&IHAVEOPT.to_be_bytes());
        h[12..16].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(parse_option_header(&h).is_err());
        let w = Request {
            flags: 0,
            ty: CMD_WRITE,
            cookie: 1,
            offset: 0,
            length: MAX_PAYLOAD + 1,
        };
        assert!(parse_request(&encode_request(&w)).is_err());
        // A name length far beyond the payload, or beyond MAX_NAME.
        let mut p = u32::MAX.to_be_bytes().to_vec();
        p.extend_from_slice(&[0, 0]);
        assert_eq!(parse_info_request(&p), None);
        let mut q = 0u32.to_be_bytes().to_vec();
        q.extend_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(parse_meta_request(&q), None);
    }
}
