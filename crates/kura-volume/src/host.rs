//! Hosting volumes: what a serving process runs — the NBD server, the control socket, the
//! volume engine and the holds on every served volume — started and stopped as one.
//!
//! Both `kura volume serve` and the daemon (`kura serve --nbd-listen`) host volumes
//! through [`Host`], so there is one way to serve them and one order to stop in:
//!
//! 1. **Start.** Every volume allowed (all, or the ones named) is held before anything is
//!    served: resize, delete and other servers are refused from now on, client or not. A
//!    named volume that cannot be held, or any volume held by another process, fails the
//!    start (a volume half-served by two processes would have two sets of change tracking);
//!    a volume that is merely unusable is left out with a warning.
//! 2. **Run.** The NBD server accepts connections on its own thread; the control socket
//!    answers pair operations and background backups; a watcher holds, once a second,
//!    volumes created since the start, and turns the cancel token into a stop.
//! 3. **Stop** ([`Host::stop`], or the cancel token, or dropping the host): the accept loop
//!    is woken by a connection to itself; background backups are cancelled and given a
//!    moment to put their dirty bits back ([`Engine::stop`]); the control socket closes;
//!    then every volume is closed cleanly — clients still connected have their further
//!    changes refused — so its change tracking stays trusted.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use kura_repo::backup::CancelToken;

use crate::control;
use crate::engine::{Engine, RepoOpener};
use crate::error::{Error, Result};
use crate::store::VolumeStore;

/// How long a stopping host waits for its background backups to end by themselves.
pub const STOP_GRACE: Duration = Duration::from_millis(500);

/// A running volume host (see the module docs).
pub struct Host {
    store: VolumeStore,
    engine: Arc<Engine>,
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    nbd: Option<JoinHandle<std::io::Result<()>>>,
    control: Option<JoinHandle<()>>,
    watcher: Option<JoinHandle<()>>,
    served: Vec<String>,
}

impl Host {
    /// Hold the volumes `only` names (all when `None`), start the control socket and serve
    /// them over NBD on `listener`. Background backups open repositories through `opener`;
    /// `cancel` stops the host (a signal handler's token) and cancels its backups.
    pub fn start(
        store: VolumeStore,
        listener: TcpListener,
        only: Option<Vec<String>>,
        opener: Option<Arc<dyn RepoOpener>>,
        cancel: CancelToken,
    ) -> Result<Host> {
        let io = |what: &str| {
            let what = what.to_string();
            move |source| Error::Io { what, source }
        };
        if let Some(names) = &only {
            for v in names {
                store.info(v)?; // name them wrong and hear it now, not from a client
            }
        }
        let addr = listener
            .local_addr()
            .map_err(io("the NBD listener's address"))?;
        let failed = match store.hold_all(only.as_deref()) {
            Ok(f) => f,
            Err(e) => {
                close(&store);
                return Err(e);
            }
        };
        for (name, e) in failed {
            if only.is_some() || matches!(e, Error::InUse(_)) {
                close(&store);
                // The error as it was (its kind decides the exit code); it names the volume.
                tracing::debug!("volume {name} cannot be served: {e}");
                return Err(e);
            }
            tracing::warn!("volume {name} is not served: {e}");
        }
        let exports = store.exports(only.clone());
        let served = exports.list().into_iter().map(|(n, _)| n).collect();
        let stop = Arc::new(AtomicBool::new(false));
        let engine = Engine::new(store.clone(), opener, cancel.clone());
        let control = match control::listen(Arc::clone(&engine), Arc::clone(&stop)) {
            Ok(c) => c,
            Err(e) => {
                close(&store);
                return Err(e);
            }
        };
        let mut host = Host {
            store: store.clone(),
            engine,
            addr,
            stop: Arc::clone(&stop),
            nbd: None,
            control: Some(control),
            watcher: None,
            served,
        };
        let s = Arc::clone(&stop);
        let nbd = std::thread::Builder::new()
            .name("kura-nbd".into())
            .spawn(move || {
                kura_nbd::serve(listener, exports, kura_nbd::ServerOptions::default(), s)
            })
            .map_err(io("start the NBD server"))?;
        host.nbd = Some(nbd);
        // The watcher: a cancelled token stops the host; meanwhile, every second, the
        // volumes created since the start are held.
        let s = Arc::clone(&stop);
        let watcher = std::thread::Builder::new()
            .name("kura-volume-hold".into())
            .spawn(move || {
                let mut tick = 0u32;
                while !cancel.is_cancelled() && !s.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(100));
                    tick += 1;
                    if tick.is_multiple_of(10) && !cancel.is_cancelled() {
                        match store.hold_all(only.as_deref()) {
                            Ok(failed) => failed.iter().for_each(|(n, e)| {
                                tracing::debug!("volume {n}: not held: {e}");
                            }),
                            Err(e) => tracing::debug!("listing volumes to hold: {e}"),
                        }
                    }
                }
                wake(&s, addr);
            })
            .map_err(io("start the volume watcher"))?;
        host.watcher = Some(watcher);
        Ok(host)
    }

    /// The address the NBD server listens on (`nbd://ADDR/NAME`).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The volumes served at the start.
    pub fn served(&self) -> &[String] {
        &self.served
    }

    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    pub fn store(&self) -> &VolumeStore {
        &self.store
    }

    /// Whether the host stopped or is stopping.
    pub fn stopping(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    /// Serve until the host is stopped (its cancel token, or [`stop`](Self::stop) from
    /// another thread), then close everything (module docs, step 3). The NBD server's own
    /// failure, if it failed.
    pub fn wait(mut self) -> Result<()> {
        let served = match self.nbd.take().map(JoinHandle::join) {
            Some(Ok(r)) => r.map_err(|source| Error::Io {
                what: format!("serve on {}", self.addr),
                source,
            }),
            Some(Err(_)) => Err(Error::Invalid("the NBD server thread panicked".into())),
            None => Ok(()),
        };
        let closed = self.close_all();
        served.and(closed)
    }

    /// Stop now and close everything (module docs, step 3).
    pub fn stop(self) -> Result<()> {
        wake(&self.stop, self.addr);
        self.wait()
    }

    fn close_all(&mut self) -> Result<()> {
        wake(&self.stop, self.addr);
        if let Some(n) = self.nbd.take() {
            let _ = n.join();
        }
        // Background backups were cancelled with the server: let them put their dirty bits
        // back and end their sessions before the volumes close; one stuck on a target that
        // stopped answering is given up on after a moment, its bits put back all the same.
        self.engine.stop(STOP_GRACE);
        if let Some(c) = self.control.take() {
            let _ = c.join();
        }
        if let Some(w) = self.watcher.take() {
            let _ = w.join();
        }
        // Clients may still be connected: refuse their further changes and close every
        // volume cleanly, so its change tracking stays trusted.
        self.store.shutdown()
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        if (self.nbd.is_some() || self.control.is_some())
            && let Err(e) = self.close_all()
        {
            tracing::error!("closing the served volumes: {e}");
        }
    }
}

/// Set `stop` and wake the accept loop with a connection to itself.
fn wake(stop: &AtomicBool, addr: SocketAddr) {
    if !stop.swap(true, Ordering::SeqCst) {
        let _ = TcpStream::connect_timeout(&addr, Duration::from_secs(1));
    }
}

/// Close what a host that failed to start holds.
fn close(store: &VolumeStore) {
    if let Err(e) = store.shutdown() {
        tracing::error!("closing the volumes held: {e}");
    }
}
