//! Health probe of a target: what the manager's health checks and `kura target probe` call.
//!
//! Reachability and round-trip latency (a HEAD of an object that does not exist: one request,
//! no data), then a write, read-back-and-compare and delete of a probe object, and free space
//! where the backend can tell. The first failure stops the probe and is reported with its
//! class.

use std::time::Instant;

use bytes::Bytes;

use crate::{Backend, BackendError, ErrorKind, FileKind};

/// What a probe found. Times are milliseconds.
#[derive(Debug, Clone, Default)]
pub struct ProbeReport {
    pub location: String,
    pub reachable: bool,
    pub latency_ms: Option<f64>,
    /// A kura repository (config file) is present.
    pub repository: Option<bool>,
    pub write_ms: Option<f64>,
    pub read_ms: Option<f64>,
    pub delete_ms: Option<f64>,
    /// The probe object read back equal to what was written.
    pub verified: bool,
    pub probe_bytes: usize,
    pub free_bytes: Option<u64>,
    /// The failure that stopped the probe.
    pub error: Option<(ErrorKind, String)>,
}

impl ProbeReport {
    /// Everything worked.
    pub fn ok(&self) -> bool {
        self.error.is_none() && self.verified
    }
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1000.0
}

/// Probe `b` with an object of `size` bytes.
pub fn probe(b: &dyn Backend, size: usize) -> ProbeReport {
    let mut r = ProbeReport {
        location: b.location(),
        probe_bytes: size,
        ..Default::default()
    };
    let fail = |r: &mut ProbeReport, e: BackendError| {
        r.error = Some((e.kind(), e.to_string()));
    };
    let mut rnd = [0u8; 8];
    let _ = getrandom::fill(&mut rnd);
    let name = format!("probe-{}", hex::encode(rnd));

    let t = Instant::now();
    match b.stat(FileKind::Probe, &format!("{name}-absent")) {
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Ok(_) => {}
        Err(e) => {
            return {
                fail(&mut r, e);
                r
            };
        }
    }
    r.reachable = true;
    r.latency_ms = Some(ms(t));
    match b.exists(FileKind::Config, "config") {
        Ok(v) => r.repository = Some(v),
        Err(e) => {
            return {
                fail(&mut r, e);
                r
            };
        }
    }

    let mut data = vec![0u8; size];
    let _ = getrandom::fill(&mut data);
    let data = Bytes::from(data);
    let t = Instant::now();
    if let Err(e) = b.put(FileKind::Probe, &name, data.clone()) {
        fail(&mut r, e);
        return r;
    }
    r.write_ms = Some(ms(t));
    let t = Instant::now();
    match b.get(FileKind::Probe, &name) {
        Ok(back) => {
            r.read_ms = Some(ms(t));
            r.verified = back == data;
            if !r.verified {
                r.error = Some((
                    ErrorKind::Corrupt,
                    "probe object read back different".into(),
                ));
            }
        }
        Err(e) => fail(&mut r, e),
    }
    let t = Instant::now();
    match b.delete(FileKind::Probe, &name) {
        Ok(()) => r.delete_ms = Some(ms(t)),
        Err(e) if r.error.is_none() => fail(&mut r, e),
        Err(_) => {}
    }
    match b.free_space() {
        Ok(f) => r.free_bytes = f,
        Err(e) if r.error.is_none() => fail(&mut r, e),
        Err(_) => {}
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_of_a_local_directory() {
        let d = tempfile::tempdir().unwrap();
        let b = crate::LocalBackend::new(d.path());
        let r = probe(&b, 4096);
        assert!(r.ok(), "{r:?}");
        assert_eq!(r.repository, Some(false));
        assert!(r.free_bytes.unwrap() > 0);
        assert!(r.write_ms.is_some() && r.read_ms.is_some() && r.delete_ms.is_some());
        // Nothing left behind.
        assert_eq!(b.list(FileKind::Probe).unwrap(), vec![]);
        let missing = crate::LocalBackend::new(d.path().join("no/such/dir/at/all"));
        let r = probe(&missing, 16);
        // A missing directory (an unmounted NAS) is unhealthy, and nothing is created there.
        assert!(!r.ok(), "{r:?}");
        assert!(r.error.as_ref().unwrap().1.contains("missing"), "{r:?}");
        assert!(!d.path().join("no").exists());
        // A new target one level below an existing directory (added before `init`) probes
        // healthy, as `init` there would work.
        let fresh = crate::LocalBackend::new(d.path().join("fresh"));
        let r = probe(&fresh, 16);
        assert!(r.ok(), "{r:?}");
    }
}
