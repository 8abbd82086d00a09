//! The server: fixed newstyle negotiation, then transmission with several requests in flight
//! per connection (a reader thread, worker threads, one writer lock), any number of
//! connections at once (a thread each).

use std::io::{self, BufReader, BufWriter, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use crossbeam_channel::bounded;

use crate::export::{Export, Exports, Runs};
use crate::proto::*;

/// Tuning of a server.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// Requests of one connection executed at once.
    pub workers: usize,
    /// Payload bytes (read and write data) in flight per connection at most.
    pub inflight_bytes: usize,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            workers: 4,
            inflight_bytes: 64 << 20,
        }
    }
}

/// Accept connections until `stop` is set (checked between connections; set it and connect
/// once to wake the loop), serving each in its own thread.
pub fn serve(
    listener: TcpListener,
    exports: Arc<dyn Exports>,
    opts: ServerOptions,
    stop: Arc<AtomicBool>,
) -> io::Result<()> {
    for conn in listener.incoming() {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let stream = match conn {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("nbd: accept: {e}");
                continue;
            }
        };
        let (exports, opts) = (Arc::clone(&exports), opts.clone());
        let peer = stream
            .peer_addr()
            .map_or_else(|_| "?".to_string(), |a| a.to_string());
        std::thread::Builder::new()
            .name("nbd-conn".into())
            .spawn(move || match handle(stream, exports.as_ref(), &opts) {
                Ok(()) => tracing::debug!("nbd: {peer} disconnected"),
                Err(e) => tracing::info!("nbd: {peer}: {e}"),
            })?;
    }
    Ok(())
}

/// Why a connection ended early.
#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("protocol error: {0}")]
    Protocol(#[from] ProtocolError),
}

/// What negotiation agreed on.
#[derive(Default)]
struct Agreed {
    structured: bool,
    no_zeroes: bool,
    /// Export the metadata contexts were set for, and the contexts (id = index + 1).
    meta: Option<(String, Vec<String>)>,
}

/// Serve one connection: negotiate, then transmit until the client disconnects.
pub fn handle(
    stream: TcpStream,
    exports: &dyn Exports,
    opts: &ServerOptions,
) -> Result<(), ConnError> {
    stream.set_nodelay(true)?;
    let r = BufReader::with_capacity(256 << 10, stream.try_clone()?);
    let w = BufWriter::with_capacity(256 << 10, stream);
    handle_streams(r, w, exports, opts)
}

/// [`handle`] over any byte streams (the fuzz tests feed arbitrary bytes through it).
pub fn handle_streams<R: Read, W: Write + Send>(
    mut r: R,
    mut w: W,
    exports: &dyn Exports,
    opts: &ServerOptions,
) -> Result<(), ConnError> {
    w.write_all(&NBDMAGIC.to_be_bytes())?;
    w.write_all(&IHAVEOPT.to_be_bytes())?;
    w.write_all(&(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).to_be_bytes())?;
    w.flush()?;
    let mut cf = [0u8; 4];
    r.read_exact(&mut cf)?;
    let client = u32::from_be_bytes(cf);
    if client & !(CLIENT_FIXED_NEWSTYLE | CLIENT_NO_ZEROES) != 0 {
        return Err(ProtocolError(format!("unknown client flags {client:#x}")).into());
    }
    let mut agreed = Agreed {
        no_zeroes: client & CLIENT_NO_ZEROES != 0,
        ..Agreed::default()
    };
    let Some((name, export)) = negotiate(&mut r, &mut w, exports, &mut agreed)? else {
        return Ok(()); // aborted
    };
    let contexts = match &agreed.meta {
        Some((n, c)) if *n == name => c.clone(),
        _ => Vec::new(),
    };
    transmit(r, w, export, agreed.structured, contexts, opts)
}

fn reply(w: &mut impl Write, opt: u32, ty: u32, payload: &[u8]) -> io::Result<()> {
    w.write_all(&option_reply(opt, ty, payload))
}

fn transmission_flags(e: &dyn Export) -> u16 {
    let mut f = TF_HAS_FLAGS
        | TF_SEND_FLUSH
        | TF_SEND_FUA
        | TF_SEND_TRIM
        | TF_SEND_WRITE_ZEROES
        | TF_SEND_DF
        | TF_CAN_MULTI_CONN;
    if e.read_only() {
        f |= TF_READ_ONLY;
    }
    f
}

/// An export chosen by negotiation: its name and the open export.
type Chosen = (String, Arc<dyn Export>);

/// The option phase. Returns the export chosen (None: the client aborted).
fn negotiate(
    r: &mut impl Read,
    w: &mut impl Write,
    exports: &dyn Exports,
    agreed: &mut Agreed,
) -> Result<Option<Chosen>, ConnError> {
    loop {
        let mut h = [0u8; 16];
        r.read_exact(&mut h)?;
        let (opt, len) = parse_option_header(&h)?;
        let mut payload = vec![0u8; len as usize];
        r.read_exact(&mut payload)?;
        match opt {
            OPT_EXPORT_NAME => {
                let name = String::from_utf8_lossy(&payload).into_owned();
                // No way to refuse here but closing the connection.
                let export = exports
                    .open(&name)
                    .map_err(|e| ProtocolError(format!("export {name:?}: {e}")))?;
                w.write_all(&export.size().to_be_bytes())?;
                w.write_all(&transmission_flags(export.as_ref()).to_be_bytes())?;
                if !agreed.no_zeroes {
                    w.write_all(&[0u8; 124])?;
                }
                w.flush()?;
                return Ok(Some((name, export)));
            }
            OPT_ABORT => {
                let _ = reply(w, opt, REP_ACK, &[]);
                let _ = w.flush();
                return Ok(None);
            }
            OPT_LIST => {
                if !payload.is_empty() {
                    reply(w, opt, REP_ERR_INVALID, b"LIST takes no data")?;
                } else {
                    for (name, _) in exports.list() {
                        let mut p = (name.len() as u32).to_be_bytes().to_vec();
                        p.extend_from_slice(name.as_bytes());
                        reply(w, opt, REP_SERVER, &p)?;
                    }
                    reply(w, opt, REP_ACK, &[])?;
                }
            }
            OPT_INFO | OPT_GO => {
                let Some((name, infos)) = parse_info_request(&payload) else {
                    reply(w, opt, REP_ERR_INVALID, b"malformed INFO/GO request")?;
                    w.flush()?;
                    continue;
                };
                let export = match exports.open(&name) {
                    Ok(e) => e,
                    Err(why) => {
                        reply(w, opt, REP_ERR_UNKNOWN, why.as_bytes())?;
                        w.flush()?;
                        continue;
                    }
                };
                let mut p = INFO_EXPORT.to_be_bytes().to_vec();
                p.extend_from_slice(&export.size().to_be_bytes());
                p.extend_from_slice(&transmission_flags(export.as_ref()).to_be_bytes());
                reply(w, opt, REP_INFO, &p)?;
                let mut b = INFO_BLOCK_SIZE.to_be_bytes().to_vec();
                for v in [1u32, 4096, MAX_PAYLOAD] {
                    b.extend_from_slice(&v.to_be_bytes());
                }
                reply(w, opt, REP_INFO, &b)?;
                if infos.contains(&INFO_NAME) {
                    let mut n = INFO_NAME.to_be_bytes().to_vec();
                    n.extend_from_slice(name.as_bytes());
                    reply(w, opt, REP_INFO, &n)?;
                }
                if infos.contains(&INFO_DESCRIPTION)
                    && let Some((_, d)) = exports.list().into_iter().find(|(n, _)| *n == name)
                {
                    let mut n = INFO_DESCRIPTION.to_be_bytes().to_vec();
                    n.extend_from_slice(&d.as_bytes()[..d.len().min(4096)]);
                    reply(w, opt, REP_INFO, &n)?;
                }
                reply(w, opt, REP_ACK, &[])?;
                w.flush()?;
                if opt == OPT_GO {
                    return Ok(Some((name, export)));
                }
            }
            OPT_STRUCTURED_REPLY => {
                if !payload.is_empty() || agreed.structured {
                    reply(w, opt, REP_ERR_INVALID, b"structured replies already on")?;
                } else {
                    agreed.structured = true;
                    reply(w, opt, REP_ACK, &[])?;
                }
            }
            OPT_LIST_META_CONTEXT | OPT_SET_META_CONTEXT => {
                meta_context(w, opt, &payload, exports, agreed)?;
            }
            OPT_STARTTLS => {
                reply(
                    w,
                    opt,
                    REP_ERR_POLICY,
                    b"no TLS: serve on loopback, or tunnel the connection",
                )?;
            }
            _ => reply(w, opt, REP_ERR_UNSUP, b"option not supported")?,
        }
        w.flush()?;
    }
}

fn meta_context(
    w: &mut impl Write,
    opt: u32,
    payload: &[u8],
    exports: &dyn Exports,
    agreed: &mut Agreed,
) -> Result<(), ConnError> {
    if opt == OPT_SET_META_CONTEXT && !agreed.structured {
        reply(
            w,
            opt,
            REP_ERR_INVALID,
            b"negotiate structured replies first",
        )?;
        return Ok(());
    }
    let Some((name, queries)) = parse_meta_request(payload) else {
        reply(
            w,
            opt,
            REP_ERR_INVALID,
            b"malformed metadata context request",
        )?;
        return Ok(());
    };
    let export = match exports.open(&name) {
        Ok(e) => e,
        Err(why) => {
            reply(w, opt, REP_ERR_UNKNOWN, why.as_bytes())?;
            return Ok(());
        }
    };
    let mut offered = vec!["base:allocation".to_string()];
    offered.extend(export.contexts());
    // A query names a context, or (LIST only) a namespace prefix ending in ':'; LIST with no
    // queries lists everything.
    let selected: Vec<String> = offered
        .iter()
        .filter(|c| {
            (opt == OPT_LIST_META_CONTEXT && queries.is_empty())
                || queries.iter().any(|q| {
                    *q == **c
                        || (opt == OPT_LIST_META_CONTEXT
                            && q.ends_with(':')
                            && c.starts_with(q.as_str()))
                })
        })
        .cloned()
        .collect();
    for c in &selected {
        let id = if opt == OPT_SET_META_CONTEXT {
            selected.iter().position(|x| x == c).unwrap_or(0) as u32 + 1
        } else {
            0
        };
        let mut p = id.to_be_bytes().to_vec();
        p.extend_from_slice(c.as_bytes());
        reply(w, opt, REP_META_CONTEXT, &p)?;
    }
    if opt == OPT_SET_META_CONTEXT {
        agreed.meta = Some((name, selected));
    }
    reply(w, opt, REP_ACK, &[])?;
    Ok(())
}

/// Bytes of payload in flight on one connection.
struct Budget {
    limit: usize,
    used: Mutex<usize>,
    cv: Condvar,
}

impl Budget {
    fn acquire(&self, n: usize) {
        let mut u = self.used.lock().unwrap_or_else(|p| p.into_inner());
        while *u > 0 && *u + n > self.limit {
            u = self.cv.wait(u).unwrap_or_else(|p| p.into_inner());
        }
        *u += n;
    }

    fn release(&self, n: usize) {
        let mut u = self.used.lock().unwrap_or_else(|p| p.into_inner());
        *u = u.saturating_sub(n);
        self.cv.notify_all();
    }
}

struct Job {
    req: Request,
    data: Vec<u8>,
}

fn errno(e: &io::Error) -> u32 {
    match e.raw_os_error() {
        Some(c)
            if [EPERM, EIO, ENOMEM, EINVAL, ENOSPC, EOVERFLOW, ENOTSUP].contains(&(c as u32)) =>
        {
            c as u32
        }
        _ if e.kind() == io::ErrorKind::Unsupported => ENOTSUP,
        _ => EIO,
    }
}

/// The transmission phase: this thread reads requests; workers execute them and write the
/// replies (in any order, as the protocol allows) under one lock.
fn transmit<R: Read, W: Write + Send>(
    mut r: R,
    w: W,
    export: Arc<dyn Export>,
    structured: bool,
    contexts: Vec<String>,
    opts: &ServerOptions,
) -> Result<(), ConnError> {
    let w = Mutex::new(w);
    let dead = AtomicBool::new(false);
    let budget = Budget {
        limit: opts.inflight_bytes.max(MAX_PAYLOAD as usize),
        used: Mutex::new(0),
        cv: Condvar::new(),
    };
    let (tx, rx) = bounded::<Job>(opts.workers.max(1) * 2);
    let ctx = Ctx {
        export: export.as_ref(),
        structured,
        contexts: &contexts,
    };
    std::thread::scope(|s| {
        for _ in 0..opts.workers.max(1) {
            let rx = rx.clone();
            let (w, dead, budget, ctx) = (&w, &dead, &budget, &ctx);
            s.spawn(move || {
                for job in rx {
                    let held = payload_len(&job.req);
                    // A bug in an export must cost one request (EIO), not the worker: a dead
                    // worker would leave the client waiting for replies forever.
                    let cookie = job.req.cookie;
                    let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        ctx.execute(&job.req, job.data)
                    }))
                    .unwrap_or_else(|_| ctx.error(cookie, EIO, "internal error"));
                    budget.release(held);
                    let mut w = w.lock().unwrap_or_else(|p| p.into_inner());
                    if w.write_all(&out).and_then(|()| w.flush()).is_err() {
                        dead.store(true, Ordering::SeqCst);
                    }
                }
            });
        }
        drop(rx);
        let result = (|| -> Result<(), ConnError> {
            loop {
                if dead.load(Ordering::SeqCst) {
                    return Ok(());
                }
                let mut h = [0u8; 28];
                match r.read_exact(&mut h) {
                    Ok(()) => {}
                    // A client that just goes away (no DISC) is not an error worth a warning.
                    Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
                    Err(e) => return Err(e.into()),
                }
                let req = parse_request(&h)?;
                if req.ty == CMD_DISC {
                    return Ok(());
                }
                budget.acquire(payload_len(&req));
                let mut data = Vec::new();
                if req.ty == CMD_WRITE {
                    data = vec![0u8; req.length as usize];
                    r.read_exact(&mut data)?;
                }
                if tx.send(Job { req, data }).is_err() {
                    return Ok(());
                }
            }
        })();
        drop(tx); // workers finish what is queued, then end
        result
    })
}

/// Payload bytes a request holds while in flight (its data in or out).
fn payload_len(req: &Request) -> usize {
    match req.ty {
        CMD_READ | CMD_WRITE => (req.length as usize).min(MAX_PAYLOAD as usize),
        _ => 0,
    }
}

struct Ctx<'a> {
    export: &'a dyn Export,
    structured: bool,
    contexts: &'a [String],
}

impl Ctx<'_> {
    fn error(&self, cookie: u64, errno: u32, msg: &str) -> Vec<u8> {
        if self.structured {
            error_chunk(cookie, errno, msg)
        } else {
            simple_reply(cookie, errno).to_vec()
        }
    }

    fn ok(&self, cookie: u64) -> Vec<u8> {
        if self.structured {
            chunk_header(cookie, REPLY_FLAG_DONE, REPLY_TYPE_NONE, 0).to_vec()
        } else {
            simple_reply(cookie, 0).to_vec()
        }
    }

    /// Execute one request; returns the whole reply.
    fn execute(&self, req: &Request, data: Vec<u8>) -> Vec<u8> {
        let e = self.export;
        let c = req.cookie;
        let known_flags = CMD_FLAG_FUA | CMD_FLAG_NO_HOLE | CMD_FLAG_DF | CMD_FLAG_REQ_ONE;
        if req.flags & !known_flags != 0 {
            return self.error(c, EINVAL, "unknown command flags");
        }
        let end = req.offset.checked_add(u64::from(req.length));
        let in_range = end.is_some_and(|end| end <= e.size());
        let writes = matches!(req.ty, CMD_WRITE | CMD_TRIM | CMD_WRITE_ZEROES);
        if writes && e.read_only() {
            return self.error(c, EPERM, "the export is read-only");
        }
        if matches!(
            req.ty,
            CMD_READ | CMD_WRITE | CMD_TRIM | CMD_WRITE_ZEROES | CMD_BLOCK_STATUS | CMD_CACHE
        ) && !in_range
        {
            let code = if req.ty == CMD_WRITE { ENOSPC } else { EINVAL };
            return self.error(c, code, "request beyond the end of the export");
        }
        let fua = req.flags & CMD_FLAG_FUA != 0;
        let done = |r: io::Result<()>, what: &str| match r {
            Ok(()) => self.ok(c),
            Err(err) => self.error(c, errno(&err), &format!("{what}: {err}")),
        };
        match req.ty {
            CMD_READ => {
                if req.length > MAX_PAYLOAD {
                    return self.error(c, EINVAL, "read larger than the maximum block size");
                }
                if req.length == 0 {
                    // (A data chunk must carry at least one byte.)
                    return self.ok(c);
                }
                let n = req.length as usize;
                let head = if self.structured { 20 + 8 } else { 16 };
                let mut out = vec![0u8; head + n];
                if let Err(err) = e.read_at(req.offset, &mut out[head..]) {
                    return self.error(c, errno(&err), &format!("read: {err}"));
                }
                if self.structured {
                    out[..20].copy_from_slice(&chunk_header(
                        c,
                        REPLY_FLAG_DONE,
                        REPLY_TYPE_OFFSET_DATA,
                        8 + n as u32,
                    ));
                    out[20..28].copy_from_slice(&req.offset.to_be_bytes());
                } else {
                    out[..16].copy_from_slice(&simple_reply(c, 0));
                }
                out
            }
            CMD_WRITE => done(e.write_at(req.offset, &data, fua), "write"),
            CMD_FLUSH => done(e.flush(), "flush"),
            CMD_TRIM => done(
                e.trim(req.offset, u64::from(req.length))
                    .and_then(|()| if fua { e.flush() } else { Ok(()) }),
                "trim",
            ),
            CMD_WRITE_ZEROES => done(
                e.write_zeroes(
                    req.offset,
                    u64::from(req.length),
                    req.flags & CMD_FLAG_NO_HOLE == 0,
                    fua,
                ),
                "write zeroes",
            ),
            CMD_CACHE => self.ok(c),
            CMD_BLOCK_STATUS => self.block_status(req),
            _ => self.error(c, EINVAL, "unknown command"),
        }
    }

    fn block_status(&self, req: &Request) -> Vec<u8> {
        let c = req.cookie;
        if !self.structured || self.contexts.is_empty() {
            return self.error(c, EINVAL, "no metadata context negotiated");
        }
        if req.length == 0 {
            return self.error(c, EINVAL, "empty block status request");
        }
        let mut out = Vec::new();
        for (i, name) in self.contexts.iter().enumerate() {
            let runs: io::Result<Runs> = if name == "base:allocation" {
                self.export.allocation(req.offset, req.length)
            } else {
                self.export.context_status(name, req.offset, req.length)
            };
            let mut runs = match runs {
                Ok(r) if !r.is_empty() => r,
                Ok(_) => return self.error(c, EIO, "no status for the range"),
                Err(err) => return self.error(c, errno(&err), &format!("block status: {err}")),
            };
            if req.flags & CMD_FLAG_REQ_ONE != 0 {
                runs.truncate(1);
            }
            runs.truncate(1 << 16);
            let last = i + 1 == self.contexts.len();
            let len = 4 + 8 * runs.len() as u32;
            out.extend_from_slice(&chunk_header(
                c,
                if last { REPLY_FLAG_DONE } else { 0 },
                REPLY_TYPE_BLOCK_STATUS,
                len,
            ));
            out.extend_from_slice(&(i as u32 + 1).to_be_bytes());
            for (l, f) in runs {
                out.extend_from_slice(&l.to_be_bytes());
                out.extend_from_slice(&f.to_be_bytes());
            }
        }
        out
    }
}
