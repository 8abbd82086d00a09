//! A small NBD client: enough to write an image into any NBD export (qemu-nbd,
//! qemu-storage-daemon, nbdkit, kura's own server). Fixed newstyle negotiation with `GO`
//! (falling back to `EXPORT_NAME` for old servers), simple replies, one request at a time;
//! `WRITE`, `WRITE_ZEROES` (or writes of zeros when the export cannot), `FLUSH`, `DISC`.
//!
//! No crate fits: the `nbd` crate offers only Read/Write/Seek over an export (no zeroing, no
//! flags), and libnbd needs its C library at build time.
//!
//! Addresses: `nbd://HOST[:PORT][/EXPORT]` (port 10809 by default, the default export when
//! none is named) and `nbd+unix:///EXPORT?socket=PATH`, as qemu and libnbd write them.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;

use crate::proto::{self, Request};

/// What a client operation failed on.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("NBD address {0:?}: use nbd://HOST[:PORT][/EXPORT] or nbd+unix:///EXPORT?socket=PATH")]
    Address(String),
    #[error("NBD {what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("NBD server: {0}")]
    Protocol(String),
    #[error("NBD server refused {what}: error {errno} ({})", io::Error::from_raw_os_error(*errno as i32))]
    Refused { what: String, errno: u32 },
}

type Result<T> = std::result::Result<T, ClientError>;

/// Where an export is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Address {
    Tcp {
        host: String,
        port: u16,
        export: String,
    },
    Unix {
        socket: String,
        export: String,
    },
}

impl Address {
    /// Parse an `nbd://` or `nbd+unix://` URL.
    pub fn parse(url: &str) -> Result<Address> {
        let bad = || ClientError::Address(url.to_string());
        if let Some(rest) = url.strip_prefix("nbd+unix://") {
            let (path, query) = rest.split_once('?').ok_or_else(bad)?;
            let export = path.trim_start_matches('/').to_string();
            let socket = query
                .split('&')
                .find_map(|kv| kv.strip_prefix("socket="))
                .filter(|s| !s.is_empty())
                .ok_or_else(bad)?;
            return Ok(Address::Unix {
                socket: socket.to_string(),
                export,
            });
        }
        let rest = url.strip_prefix("nbd://").ok_or_else(bad)?;
        let (hostport, export) = rest.split_once('/').unwrap_or((rest, ""));
        if hostport.is_empty() || export.len() > proto::MAX_NAME {
            return Err(bad());
        }
        let (host, port) = match hostport.rsplit_once(':') {
            // [v6]:port or host:port
            Some((h, p)) if !h.ends_with(':') => (h, p.parse().map_err(|_| bad())?),
            _ => (hostport, 10809),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        Ok(Address::Tcp {
            host: host.to_string(),
            port,
            export: export.to_string(),
        })
    }

    pub fn export(&self) -> &str {
        match self {
            Address::Tcp { export, .. } | Address::Unix { export, .. } => export,
        }
    }
}

trait Stream: Read + Write + Send {}
impl<T: Read + Write + Send> Stream for T {}

/// A connection to one export, in transmission.
pub struct Client {
    s: Box<dyn Stream>,
    size: u64,
    flags: u16,
    cookie: u64,
    url: String,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("url", &self.url)
            .field("size", &self.size)
            .field("flags", &self.flags)
            .finish()
    }
}

/// The largest write sent in one request (servers must accept 32 MiB; qemu's limit too).
const MAX_WRITE: usize = 32 << 20;
/// The largest zeroing asked in one request (lengths are 32-bit).
const MAX_ZERO: u64 = 1 << 30;

fn read_exact(s: &mut dyn Stream, buf: &mut [u8], what: &str) -> Result<()> {
    s.read_exact(buf).map_err(|source| ClientError::Io {
        what: what.to_string(),
        source,
    })
}

fn be64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_be_bytes(a)
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

impl Client {
    /// Connect to the export at `url` and negotiate.
    pub fn connect(url: &str) -> Result<Client> {
        let addr = Address::parse(url)?;
        let io = |what: &str| {
            let what = format!("{what} {url}");
            move |source| ClientError::Io { what, source }
        };
        let s: Box<dyn Stream> = match &addr {
            Address::Tcp { host, port, .. } => {
                let t = TcpStream::connect((host.as_str(), *port)).map_err(io("connect to"))?;
                t.set_nodelay(true).map_err(io("connect to"))?;
                Box::new(t)
            }
            Address::Unix { socket, .. } => {
                Box::new(UnixStream::connect(socket).map_err(io("connect to"))?)
            }
        };
        let mut c = Client {
            s,
            size: 0,
            flags: 0,
            cookie: 1,
            url: url.to_string(),
        };
        c.negotiate(addr.export())?;
        Ok(c)
    }

    fn send(&mut self, bytes: &[u8], what: &str) -> Result<()> {
        self.s.write_all(bytes).map_err(|source| ClientError::Io {
            what: what.to_string(),
            source,
        })
    }

    fn negotiate(&mut self, export: &str) -> Result<()> {
        let mut hello = [0u8; 18];
        read_exact(&mut *self.s, &mut hello, "handshake")?;
        if be64(&hello[0..]) != proto::NBDMAGIC || be64(&hello[8..]) != proto::IHAVEOPT {
            return Err(ClientError::Protocol(
                "not a newstyle NBD server (old-style servers are not supported)".into(),
            ));
        }
        let hflags = u16::from_be_bytes([hello[16], hello[17]]);
        if hflags & proto::FLAG_FIXED_NEWSTYLE == 0 {
            return Err(ClientError::Protocol(
                "the server does not speak fixed newstyle negotiation".into(),
            ));
        }
        let no_zeroes = hflags & proto::FLAG_NO_ZEROES != 0;
        let mut cflags = proto::CLIENT_FIXED_NEWSTYLE;
        if no_zeroes {
            cflags |= proto::CLIENT_NO_ZEROES;
        }
        self.send(&cflags.to_be_bytes(), "handshake")?;
        // GO: name, no information requests (the export's size and flags always come).
        let mut payload = (export.len() as u32).to_be_bytes().to_vec();
        payload.extend_from_slice(export.as_bytes());
        payload.extend_from_slice(&0u16.to_be_bytes());
        self.option(proto::OPT_GO, &payload)?;
        let mut got_export = false;
        loop {
            let (reply, data) = self.option_reply(proto::OPT_GO)?;
            match reply {
                proto::REP_ACK => break,
                // INFO_EXPORT: size and transmission flags (other information is skipped).
                proto::REP_INFO
                    if data.len() >= 12 && u16::from_be_bytes([data[0], data[1]]) == 0 =>
                {
                    self.size = be64(&data[2..]);
                    self.flags = u16::from_be_bytes([data[10], data[11]]);
                    got_export = true;
                }
                proto::REP_ERR_UNSUP => return self.export_name(export, no_zeroes),
                r if r & (1 << 31) != 0 => {
                    let msg = String::from_utf8_lossy(&data).into_owned();
                    return Err(ClientError::Protocol(match r {
                        proto::REP_ERR_UNKNOWN => format!("no export {export:?} ({msg})"),
                        _ => format!("export {export:?} refused: {msg} (reply {r:#x})"),
                    }));
                }
                _ => {}
            }
        }
        if !got_export {
            return Err(ClientError::Protocol(
                "the server did not say the export's size".into(),
            ));
        }
        Ok(())
    }

    /// The old way in (servers without `GO`): `EXPORT_NAME` has no error reply.
    fn export_name(&mut self, export: &str, no_zeroes: bool) -> Result<()> {
        self.option(proto::OPT_EXPORT_NAME, export.as_bytes())?;
        let mut b = vec![0u8; if no_zeroes { 10 } else { 134 }];
        read_exact(&mut *self.s, &mut b, "export")?;
        self.size = be64(&b);
        self.flags = u16::from_be_bytes([b[8], b[9]]);
        Ok(())
    }

    fn option(&mut self, opt: u32, payload: &[u8]) -> Result<()> {
        let mut b = proto::IHAVEOPT.to_be_bytes().to_vec();
        b.extend_from_slice(&opt.to_be_bytes());
        b.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        b.extend_from_slice(payload);
        self.send(&b, "option")
    }

    fn option_reply(&mut self, opt: u32) -> Result<(u32, Vec<u8>)> {
        let mut h = [0u8; 20];
        read_exact(&mut *self.s, &mut h, "option reply")?;
        if be64(&h) != proto::REPLY_MAGIC || be32(&h[8..]) != opt {
            return Err(ClientError::Protocol("malformed option reply".into()));
        }
        let (reply, len) = (be32(&h[12..]), be32(&h[16..]));
        if len > proto::MAX_OPTION_LEN {
            return Err(ClientError::Protocol(format!(
                "option reply of {len} bytes"
            )));
        }
        let mut data = vec![0u8; len as usize];
        read_exact(&mut *self.s, &mut data, "option reply")?;
        Ok((reply, data))
    }

    /// The export's size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn read_only(&self) -> bool {
        self.flags & proto::TF_READ_ONLY != 0
    }

    /// Whether the export zeroes without data (`WRITE_ZEROES`).
    pub fn can_zero(&self) -> bool {
        self.flags & proto::TF_SEND_WRITE_ZEROES != 0
    }

    /// One request and its simple reply.
    fn request(&mut self, ty: u16, flags: u16, offset: u64, len: u32, data: &[u8]) -> Result<()> {
        let op = match ty {
            proto::CMD_WRITE => "write",
            proto::CMD_WRITE_ZEROES => "write zeroes",
            proto::CMD_FLUSH => "flush",
            _ => "request",
        };
        let what = format!("{op} of {len} bytes at {offset} on {}", self.url);
        let cookie = self.cookie;
        self.cookie += 1;
        let r = Request {
            flags,
            ty,
            cookie,
            offset,
            length: len,
        };
        let mut b = proto::encode_request(&r).to_vec();
        b.extend_from_slice(data);
        self.send(&b, &what)?;
        let mut h = [0u8; 16];
        read_exact(&mut *self.s, &mut h, &what)?;
        if be32(&h) != proto::SIMPLE_REPLY_MAGIC || be64(&h[8..]) != cookie {
            return Err(ClientError::Protocol(format!("malformed reply to {what}")));
        }
        match be32(&h[4..]) {
            0 => Ok(()),
            errno => Err(ClientError::Refused { what, errno }),
        }
    }

    /// Write `data` at `offset`.
    pub fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<()> {
        let mut at = 0;
        while at < data.len() {
            let n = (data.len() - at).min(MAX_WRITE);
            self.request(
                proto::CMD_WRITE,
                0,
                offset + at as u64,
                n as u32,
                &data[at..at + n],
            )?;
            at += n;
        }
        Ok(())
    }

    /// Make `[offset, offset + len)` read as zeros: `WRITE_ZEROES` (the server may punch a
    /// hole) where the export offers it, else written zeros.
    pub fn write_zeroes(&mut self, offset: u64, len: u64) -> Result<()> {
        if !self.can_zero() {
            let zeros = vec![0u8; len.min(MAX_WRITE as u64) as usize];
            let mut at = offset;
            while at < offset + len {
                let n = (offset + len - at).min(zeros.len() as u64) as usize;
                self.write_at(at, &zeros[..n])?;
                at += n as u64;
            }
            return Ok(());
        }
        let mut at = offset;
        while at < offset + len {
            let n = (offset + len - at).min(MAX_ZERO);
            self.request(proto::CMD_WRITE_ZEROES, 0, at, n as u32, &[])?;
            at += n;
        }
        Ok(())
    }

    /// Make every completed write durable (a no-op where the export has no cache to flush).
    pub fn flush(&mut self) -> Result<()> {
        if self.flags & proto::TF_SEND_FLUSH == 0 {
            return Ok(());
        }
        self.request(proto::CMD_FLUSH, 0, 0, 0, &[])
    }

    /// End the connection politely.
    pub fn disconnect(mut self) {
        let r = Request {
            flags: 0,
            ty: proto::CMD_DISC,
            cookie: self.cookie,
            offset: 0,
            length: 0,
        };
        let _ = self.s.write_all(&proto::encode_request(&r));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::{Export, Exports, FileExport};
    use std::sync::Arc;
    use std::sync::atomic::AtomicBool;

    #[test]
    fn addresses_parse() {
        assert_eq!(
            Address::parse("nbd://127.0.0.1:10810/vol").unwrap(),
            Address::Tcp {
                host: "127.0.0.1".into(),
                port: 10810,
                export: "vol".into()
            }
        );
        assert_eq!(
            Address::parse("nbd://host").unwrap(),
            Address::Tcp {
                host: "host".into(),
                port: 10809,
                export: String::new()
            }
        );
        assert_eq!(
            Address::parse("nbd+unix:///e?socket=/tmp/s").unwrap(),
            Address::Unix {
                socket: "/tmp/s".into(),
                export: "e".into()
            }
        );
        for bad in [
            "",
            "nbd://",
            "http://x/y",
            "nbd://h:port/x",
            "nbd+unix:///e",
        ] {
            assert!(Address::parse(bad).is_err(), "{bad}");
        }
    }

    struct One(Arc<FileExport>);
    impl Exports for One {
        fn list(&self) -> Vec<(String, String)> {
            vec![("e".into(), String::new())]
        }
        fn open(&self, name: &str) -> std::result::Result<Arc<dyn Export>, String> {
            if name == "e" {
                Ok(Arc::clone(&self.0) as Arc<dyn Export>)
            } else {
                Err("no such export".into())
            }
        }
    }

    #[test]
    fn writes_and_zeroes_reach_our_own_server() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("e.raw");
        std::fs::write(&p, vec![0xEEu8; 1 << 20]).unwrap();
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&p)
            .unwrap();
        let exp = Arc::new(FileExport::new(f, false).unwrap());
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let st = Arc::clone(&stop);
        let exports: Arc<dyn Exports> = Arc::new(One(exp));
        let server = std::thread::spawn(move || {
            let _ = crate::serve(l, exports, crate::ServerOptions::default(), st);
        });
        let url = format!("nbd://{addr}/e");
        let mut c = Client::connect(&url).unwrap();
        assert_eq!(c.size(), 1 << 20);
        assert!(c.can_zero());
        c.write_at(4096, &[7u8; 8192]).unwrap();
        c.write_zeroes(65536, 65536).unwrap();
        c.flush().unwrap();
        // Beyond the end: refused with the server's error, connection still usable.
        assert!(matches!(
            c.write_at(1 << 20, &[1u8; 512]),
            Err(ClientError::Refused { .. })
        ));
        c.flush().unwrap();
        c.disconnect();
        assert!(matches!(
            Client::connect(&format!("nbd://{addr}/nope")),
            Err(ClientError::Protocol(_))
        ));
        let got = std::fs::read(&p).unwrap();
        assert!(got[4096..12288].iter().all(|b| *b == 7));
        assert!(got[65536..131072].iter().all(|b| *b == 0));
        assert!(got[131072..].iter().all(|b| *b == 0xEE));
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let _ = std::net::TcpStream::connect(addr);
        let _ = server.join();
    }
}
