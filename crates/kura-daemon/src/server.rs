//! Serving the API: plain HTTP on loopback only, or HTTPS (rustls) anywhere.
//!
//! Without TLS the daemon refuses any address but a loopback one: tokens and passwords must
//! not cross a network in clear. With `--tls-cert`/`--tls-key` it serves those; with
//! `--tls-self-signed` it makes (once, kept in the state directory) a self-signed
//! certificate and prints its SHA-256 fingerprint for clients to pin.
//!
//! Stopping (the `stop` flag, set on SIGINT/SIGTERM): no new connections; requests in
//! flight get [`DRAIN`] to finish; running tasks are cancelled and given [`TASK_GRACE`] to
//! end cleanly (each leaves its repository consistent: a cancelled backup writes no
//! snapshot); tasks still running after that are recorded as failed by the next start.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sha2::Digest;

use crate::{Daemon, Error, Result};

/// How long requests in flight may take once the daemon stops.
pub const DRAIN: Duration = Duration::from_secs(5);
/// How long cancelled tasks get to end.
pub const TASK_GRACE: Duration = Duration::from_secs(20);

/// How the API is served.
#[derive(Debug, Clone)]
pub enum Tls {
    /// Plain HTTP: loopback addresses only.
    None,
    /// PEM files.
    Files { cert: PathBuf, key: PathBuf },
    /// A self-signed certificate kept in this directory (made if missing).
    SelfSigned { dir: PathBuf },
}

/// What a started server tells its caller (and the user).
#[derive(Debug, Clone)]
pub struct Listening {
    /// `http://ADDR` or `https://ADDR`.
    pub url: String,
    /// The certificate's SHA-256 fingerprint (`AA:BB:…`), with TLS.
    pub fingerprint: Option<String>,
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let what = what.into();
    move |source| Error::Io { what, source }
}

/// The certificate and key files of a self-signed certificate in `dir` (made if missing).
fn self_signed(dir: &Path) -> Result<(PathBuf, PathBuf)> {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    if cert.exists() && key.exists() {
        return Ok((cert, key));
    }
    std::fs::create_dir_all(dir).map_err(io(format!("create {}", dir.display())))?;
    let host = hostname();
    let names = vec![host, "localhost".to_string()];
    let made = rcgen::generate_simple_self_signed(names)
        .map_err(|e| Error::Internal(format!("make a self-signed certificate: {e}")))?;
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&key)
            .map_err(io(format!("write {}", key.display())))?;
        f.write_all(made.signing_key.serialize_pem().as_bytes())
            .map_err(io(format!("write {}", key.display())))?;
    }
    std::fs::write(&cert, made.cert.pem()).map_err(io(format!("write {}", cert.display())))?;
    Ok((cert, key))
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// The SHA-256 fingerprint of the first certificate in a PEM file.
fn fingerprint(cert_pem: &Path) -> Result<String> {
    let text = std::fs::read_to_string(cert_pem)
        .map_err(io(format!("read the certificate {}", cert_pem.display())))?;
    let der = pem_first_der(&text).ok_or_else(|| {
        Error::Invalid(format!("{}: no PEM certificate in it", cert_pem.display()))
    })?;
    let d = sha2::Sha256::digest(&der);
    Ok(d.iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":"))
}

fn pem_first_der(text: &str) -> Option<Vec<u8>> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    CertificateDer::pem_slice_iter(text.as_bytes())
        .next()?
        .ok()
        .map(|c| c.to_vec())
}

/// Serve the API on `listen` until `stop`; `ready` is called once it listens. Blocking: it
/// runs its own tokio runtime.
pub fn serve(
    daemon: Arc<Daemon>,
    listen: SocketAddr,
    tls: Tls,
    stop: Arc<AtomicBool>,
    ready: impl FnOnce(&Listening),
) -> Result<()> {
    if matches!(tls, Tls::None) && !listen.ip().is_loopback() {
        return Err(Error::Invalid(format!(
            "{listen} is not a loopback address: without TLS the daemon listens on loopback \
             only (give --tls-cert and --tls-key, or --tls-self-signed)"
        )));
    }
    let files = match &tls {
        Tls::None => None,
        Tls::Files { cert, key } => Some((cert.clone(), key.clone())),
        Tls::SelfSigned { dir } => Some(self_signed(dir)?),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("kura-api")
        .build()
        .map_err(io("start the API runtime"))?;
    let listener =
        std::net::TcpListener::bind(listen).map_err(io(format!("listen on {listen}")))?;
    listener
        .set_nonblocking(true)
        .map_err(io(format!("listen on {listen}")))?;
    let addr = listener
        .local_addr()
        .map_err(io("read the bound address"))?;
    let app = crate::api::router(Arc::clone(&daemon));
    let handle = axum_server::Handle::new();
    {
        let (stop, handle) = (Arc::clone(&stop), handle.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(100));
            }
            handle.graceful_shutdown(Some(DRAIN));
        });
    }
    let served = rt.block_on(async {
        match files {
            None => {
                ready(&Listening {
                    url: format!("http://{addr}"),
                    fingerprint: None,
                });
                axum_server::from_tcp(listener)
                    .map_err(io(format!("serve on {addr}")))?
                    .handle(handle)
                    .serve(app.into_make_service())
                    .await
                    .map_err(io(format!("serve on {addr}")))
            }
            Some((cert, key)) => {
                let _ = rustls::crypto::ring::default_provider().install_default();
                let config = axum_server::tls_rustls::RustlsConfig::from_pem_file(&cert, &key)
                    .await
                    .map_err(|e| {
                        Error::Invalid(format!(
                            "TLS certificate {} / key {}: {e}",
                            cert.display(),
                            key.display()
                        ))
                    })?;
                ready(&Listening {
                    url: format!("https://{addr}"),
                    fingerprint: Some(fingerprint(&cert)?),
                });
                axum_server::from_tcp_rustls(listener, config)
                    .map_err(io(format!("serve on {addr}")))?
                    .handle(handle)
                    .serve(app.into_make_service())
                    .await
                    .map_err(io(format!("serve on {addr}")))
            }
        }
    });
    // Cancel what runs, and give it a moment to end cleanly.
    daemon.tasks.cancel_all();
    let until = std::time::Instant::now() + TASK_GRACE;
    while !daemon.tasks.running().is_empty() && std::time::Instant::now() < until {
        std::thread::sleep(Duration::from_millis(100));
    }
    rt.shutdown_timeout(Duration::from_secs(1));
    served
}
