//! The server fed arbitrary bytes: after the client flags, random option traffic; after a
//! valid negotiation, random requests (with structured replies on or off). Whatever comes, the
//! server answers or closes the connection — it never panics, and a connection's end is
//! reported as an error value.

use std::io::Cursor;
use std::sync::Arc;

use kura_nbd::proto::*;
use kura_nbd::{Export, Exports, FileExport, ServerOptions, handle_streams};
use proptest::prelude::*;

struct One(Arc<dyn Export>);

impl Exports for One {
    fn list(&self) -> Vec<(String, String)> {
        vec![("v".into(), "test".into())]
    }
    fn open(&self, name: &str) -> Result<Arc<dyn Export>, String> {
        if name == "v" {
            Ok(Arc::clone(&self.0))
        } else {
            Err(format!("no export {name:?}"))
        }
    }
}

fn export() -> (tempfile::NamedTempFile, One) {
    let f = tempfile::NamedTempFile::new().unwrap();
    f.as_file().set_len(1 << 20).unwrap();
    let e = FileExport::new(f.reopen().unwrap(), false).unwrap();
    (f, One(Arc::new(e)))
}

fn option(opt: u32, payload: &[u8]) -> Vec<u8> {
    let mut v = IHAVEOPT.to_be_bytes().to_vec();
    v.extend_from_slice(&opt.to_be_bytes());
    v.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    v.extend_from_slice(payload);
    v
}

/// Client flags, optionally structured replies and base:allocation, then GO to "v".
fn negotiation(structured: bool) -> Vec<u8> {
    let mut v = (CLIENT_FIXED_NEWSTYLE | CLIENT_NO_ZEROES)
        .to_be_bytes()
        .to_vec();
    if structured {
        v.extend(option(OPT_STRUCTURED_REPLY, &[]));
        let mut p = 1u32.to_be_bytes().to_vec();
        p.push(b'v');
        p.extend_from_slice(&1u32.to_be_bytes());
        p.extend_from_slice(&15u32.to_be_bytes());
        p.extend_from_slice(b"base:allocation");
        v.extend(option(OPT_SET_META_CONTEXT, &p));
    }
    let mut go = 1u32.to_be_bytes().to_vec();
    go.push(b'v');
    go.extend_from_slice(&0u16.to_be_bytes());
    v.extend(option(OPT_GO, &go));
    v
}

fn run(input: Vec<u8>, exports: &One) -> Vec<u8> {
    run_with(input, exports, &ServerOptions::default())
}

fn run_with(input: Vec<u8>, exports: &One, opts: &ServerOptions) -> Vec<u8> {
    let mut out = Vec::new();
    let _ = handle_streams(Cursor::new(input), &mut out, exports, opts);
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn random_option_traffic(opts in prop::collection::vec((0u32..12, prop::collection::vec(any::<u8>(), 0..64)), 0..6), tail in prop::collection::vec(any::<u8>(), 0..64)) {
        let (_f, e) = export();
        let mut input = CLIENT_FIXED_NEWSTYLE.to_be_bytes().to_vec();
        for (o, p) in &opts {
            input.extend(option(*o, p));
        }
        input.extend(tail);
        let out = run(input, &e);
        prop_assert!(out.starts_with(&NBDMAGIC.to_be_bytes()));
    }

    #[test]
    fn random_requests(structured: bool, reqs in prop::collection::vec((any::<u16>(), 0u16..10, any::<u64>(), 0u64..(2 << 20), 0u32..(1 << 21)), 0..8)) {
        let (_f, e) = export();
        let mut input = negotiation(structured);
        for (flags, ty, cookie, offset, length) in &reqs {
            let r = Request { flags: *flags, ty: *ty, cookie: *cookie, offset: *offset, length: *length };
            input.extend_from_slice(&encode_request(&r));
            if *ty == CMD_WRITE {
                input.extend(std::iter::repeat_n(0xa5u8, (*length as usize).min(1 << 21)));
            }
        }
        run(input, &e);
    }

    #[test]
    fn arbitrary_bytes_after_negotiation(structured: bool, junk in prop::collection::vec(any::<u8>(), 0..256)) {
        let (_f, e) = export();
        let mut input = negotiation(structured);
        input.extend(junk);
        run(input, &e);
    }
}

#[test]
fn a_write_then_read_round_trips_and_out_of_range_is_einval() {
    let (_f, e) = export();
    let mut input = negotiation(false);
    let w = Request {
        flags: CMD_FLAG_FUA,
        ty: CMD_WRITE,
        cookie: 7,
        offset: 4096,
        length: 8,
    };
    input.extend_from_slice(&encode_request(&w));
    input.extend_from_slice(b"kuradata");
    let r = Request {
        flags: 0,
        ty: CMD_READ,
        cookie: 8,
        offset: 4096,
        length: 8,
    };
    input.extend_from_slice(&encode_request(&r));
    let bad = Request {
        flags: 0,
        ty: CMD_READ,
        cookie: 9,
        offset: (1 << 20) - 4,
        length: 8,
    };
    input.extend_from_slice(&encode_request(&bad));
    // One worker: requests run in the order sent (with more, a client must wait for a
    // write's reply before reading it back, as the protocol says).
    let opts = ServerOptions {
        workers: 1,
        ..ServerOptions::default()
    };
    let out = run_with(input, &e, &opts);
    // Replies may come in any order: find each by cookie.
    let find = |cookie: u64| {
        out.windows(16)
            .position(|w| {
                w[0..4] == SIMPLE_REPLY_MAGIC.to_be_bytes() && w[8..16] == cookie.to_be_bytes()
            })
            .map(|i| {
                (
                    u32::from_be_bytes(out[i + 4..i + 8].try_into().unwrap()),
                    i + 16,
                )
            })
    };
    assert_eq!(find(7).map(|r| r.0), Some(0));
    let (err, at) = find(8).unwrap();
    assert_eq!(err, 0);
    assert_eq!(&out[at..at + 8], b"kuradata");
    assert_eq!(find(9).map(|r| r.0), Some(EINVAL));
}
