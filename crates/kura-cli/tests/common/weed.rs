//! Private SeaweedFS instances for tests that kill, stop or starve their S3 server. The
//! binary comes from `KURA_TEST_WEED` (set by scripts/test.sh) or `weed` on PATH.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const ACCESS_KEY: &str = "kuratest";
pub const SECRET_KEY: &str = "kuratestsecret";
pub const BUCKET: &str = "kura-test";

fn weed_bin() -> String {
    std::env::var("KURA_TEST_WEED").unwrap_or_else(|_| "weed".to_string())
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One weed process and how to start it again.
struct Proc {
    args: Vec<String>,
    child: Option<Child>,
    log: PathBuf,
}

impl Proc {
    fn start(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(weed_bin())
            .args(&self.args)
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "start {} (set KURA_TEST_WEED or run scripts/test.sh): {e}",
                    weed_bin()
                )
            });
        self.child = Some(child);
    }

    fn signal(&self, sig: i32) {
        if let Some(c) = &self.child {
            unsafe { libc::kill(c.id() as i32, sig) };
        }
    }

    /// The last lines of this process's log, for failure messages.
    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(8)..].join("\n")
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            // A stopped process must be continued to die promptly.
            unsafe { libc::kill(c.id() as i32, libc::SIGCONT) };
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A SeaweedFS deployment: a single `weed server`, or a cluster of separate processes.
pub struct Weed {
    procs: Vec<Proc>,
    s3_port: u16,
    /// Index of the process serving S3 (killed/stopped by the fault tests).
    s3_proc: usize,
    /// Indexes of the volume server processes.
    volumes: Vec<usize>,
    pub dir: PathBuf,
}

fn write_identities(dir: &Path) -> PathBuf {
    let p = dir.join("s3.json");
    std::fs::write(
        &p,
        format!(
            r#"{{"identities":[{{"name":"kura","credentials":[{{"accessKey":"{ACCESS_KEY}","secretKey":"{SECRET_KEY}"}}],"actions":["Admin","Read","Write","List","Tagging"]}}]}}"#
        ),
    )
    .unwrap();
    p
}

fn s(v: impl ToString) -> String {
    v.to_string()
}

impl Weed {
    /// All components in one `weed server` process. Ports are picked free but released before
    /// weed binds them, so another process can take one in between; a server that exits
    /// before it answers is started again on fresh ports (up to three times).
    pub fn single(dir: &Path) -> Weed {
        let mut last = String::new();
        for _ in 0..3 {
            let _ = std::fs::remove_dir_all(dir.join("data"));
            let mut w = Weed::single_once(dir);
            match w.ready() {
                Ok(()) => return w,
                Err(e) => {
                    last = e;
                    drop(w);
                }
            }
        }
        panic!("SeaweedFS did not come up (three tries): {last}");
    }

    fn single_once(dir: &Path) -> Weed {
        std::fs::create_dir_all(dir.join("data")).unwrap();
        let ids = write_identities(dir);
        let (mp, mg, vp, vg, fp, fg, sp, sg) = (
            free_port(),
            free_port(),
            free_port(),
            free_port(),
            free_port(),
            free_port(),
            free_port(),
            free_port(),
        );
        let args = vec![
            s("server"),
            format!("-dir={}", dir.join("data").display()),
            s("-ip=127.0.0.1"),
            s("-ip.bind=127.0.0.1"),
            format!("-master.port={mp}"),
            format!("-master.port.grpc={mg}"),
            s("-master.volumeSizeLimitMB=64"),
            format!("-volume.port={vp}"),
            format!("-volume.port.grpc={vg}"),
            s("-volume.max=0"),
            s("-filer"),
            format!("-filer.port={fp}"),
            format!("-filer.port.grpc={fg}"),
            s("-s3"),
            format!("-s3.port={sp}"),
            format!("-s3.port.grpc={sg}"),
            s("-s3.port.iceberg=0"),
            s("-s3.port.lance=0"),
            format!("-s3.config={}", ids.display()),
        ];
        let mut w = Weed {
            procs: vec![Proc {
                args,
                child: None,
                log: dir.join("weed.log"),
            }],
            s3_port: sp,
            s3_proc: 0,
            volumes: vec![0],
            dir: dir.to_path_buf(),
        };
        w.procs[0].start();
        w
    }

    /// A master, `volumes` volume servers (each its own process and rack-mate), a filer and
    /// an S3 gateway; new volumes are replicated per `replication` (e.g. "001": one extra copy
    /// on another server).
    pub fn cluster(dir: &Path, volumes: usize, replication: &str) -> Weed {
        let ids = write_identities(dir);
        let (mp, mg) = (free_port(), free_port());
        // Peer addresses carry their gRPC port after a dot (otherwise SeaweedFS assumes +10000).
        let master = format!("127.0.0.1:{mp}.{mg}");
        let mut procs = Vec::new();
        std::fs::create_dir_all(dir.join("master")).unwrap();
        procs.push(Proc {
            args: vec![
                s("master"),
                format!("-mdir={}", dir.join("master").display()),
                s("-ip=127.0.0.1"),
                s("-ip.bind=127.0.0.1"),
                format!("-port={mp}"),
                format!("-port.grpc={mg}"),
                s("-volumeSizeLimitMB=64"),
                format!("-defaultReplication={replication}"),
            ],
            child: None,
            log: dir.join("master.log"),
        });
        let mut vol_idx = Vec::new();
        for i in 0..volumes {
            let vdir = dir.join(format!("vol{i}"));
            std::fs::create_dir_all(&vdir).unwrap();
            let (vp, vg) = (free_port(), free_port());
            vol_idx.push(procs.len());
            procs.push(Proc {
                args: vec![
                    s("volume"),
                    format!("-dir={}", vdir.display()),
                    s("-ip=127.0.0.1"),
                    s("-ip.bind=127.0.0.1"),
                    format!("-port={vp}"),
                    format!("-port.grpc={vg}"),
                    format!("-master={master}"),
                    s("-max=0"),
                    s("-rack=r1"),
                    s("-dataCenter=dc1"),
                ],
                child: None,
                log: dir.join(format!("vol{i}.log")),
            });
        }
        let (fp, fg) = (free_port(), free_port());
        let fdir = dir.join("filer");
        std::fs::create_dir_all(&fdir).unwrap();
        procs.push(Proc {
            args: vec![
                s("filer"),
                s("-ip=127.0.0.1"),
                s("-ip.bind=127.0.0.1"),
                format!("-port={fp}"),
                format!("-port.grpc={fg}"),
                format!("-master={master}"),
                format!("-defaultReplicaPlacement={replication}"),
                format!("-defaultStoreDir={}", fdir.display()),
            ],
            child: None,
            log: dir.join("filer.log"),
        });
        let (sp, sg) = (free_port(), free_port());
        let s3_proc = procs.len();
        procs.push(Proc {
            args: vec![
                s("s3"),
                format!("-filer=127.0.0.1:{fp}.{fg}"),
                s("-ip.bind=127.0.0.1"),
                format!("-port={sp}"),
                format!("-port.grpc={sg}"),
                s("-port.iceberg=0"),
                s("-port.lance=0"),
                format!("-config={}", ids.display()),
            ],
            child: None,
            log: dir.join("s3.log"),
        });
        let mut w = Weed {
            procs,
            s3_port: sp,
            s3_proc,
            volumes: vol_idx,
            dir: dir.to_path_buf(),
        };
        for p in &mut w.procs {
            p.start();
            std::thread::sleep(Duration::from_millis(300));
        }
        w.wait_ready();
        w
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.s3_port)
    }

    /// A repository URL on this server.
    pub fn location(&self, prefix: &str) -> String {
        format!("s3://{BUCKET}/{prefix}?endpoint={}", self.endpoint())
    }

    fn http_ok(&self) -> bool {
        let Ok(mut s) = TcpStream::connect_timeout(
            &format!("127.0.0.1:{}", self.s3_port).parse().unwrap(),
            Duration::from_millis(300),
        ) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        if s.write_all(b"GET / HTTP/1.0\r\n\r\n").is_err() {
            return false;
        }
        let mut buf = [0u8; 12];
        s.read_exact(&mut buf).is_ok() && buf.starts_with(b"HTTP/1.")
    }

    /// Wait until S3 answers. (No bucket to create: SeaweedFS creates it on the first upload
    /// by an admin identity, which the test identity is.)
    fn wait_ready(&mut self) {
        if let Err(e) = self.ready() {
            panic!("SeaweedFS did not come up: {e}");
        }
    }

    /// Wait until S3 answers; an error names the process that exited (with the end of its
    /// log) or the timeout.
    fn ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(90);
        while Instant::now() < deadline {
            if self.http_ok() {
                return Ok(());
            }
            for p in &mut self.procs {
                if let Some(status) = p.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                    p.child = None;
                    return Err(format!("{} exited ({status}): {}", p.args[0], p.log_tail()));
                }
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        let tails: Vec<String> = self.procs.iter().map(|p| p.log_tail()).collect();
        Err(format!(
            "no answer on S3 port {} after 90 s; logs in {}: {}",
            self.s3_port,
            self.dir.display(),
            tails.join(" | ")
        ))
    }

    /// SIGKILL the S3-serving process.
    pub fn kill_s3(&mut self) {
        let i = self.s3_proc;
        self.procs[i].kill();
    }

    /// Start the S3-serving process again (same ports, same data).
    pub fn restart_s3(&mut self) {
        let i = self.s3_proc;
        self.procs[i].start();
        self.wait_ready();
    }

    pub fn stop_s3(&self) {
        self.procs[self.s3_proc].signal(libc::SIGSTOP);
    }

    pub fn continue_s3(&self) {
        self.procs[self.s3_proc].signal(libc::SIGCONT);
    }

    /// SIGKILL volume server `i` (cluster).
    pub fn kill_volume(&mut self, i: usize) {
        let p = self.volumes[i];
        self.procs[p].kill();
    }
}

impl Drop for Weed {
    fn drop(&mut self) {
        for p in &mut self.procs {
            p.kill();
        }
    }
}
