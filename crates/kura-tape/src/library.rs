//! A library: one changer and its drives, named by a URL (a target's URL in the inventory,
//! marked `sequential`).
//!
//! | URL | library |
//! |---|---|
//! | `vlib:///path/to/dir` | the file-backed virtual library in that directory ([`crate::vlib`]) |
//! | `tape:///dev/sg3?drive=/dev/nst0&drive=/dev/nst1` | a SCSI library: its changer (through `mtx`) and its drives, in the changer's drive order; optional `mtx=/usr/sbin/mtx`, `timeout=SECONDS` (each changer command, default 300) |

use std::path::PathBuf;
use std::time::Duration;

use crate::drive::{Changer, Drive};
use crate::{Error, Result};

/// Where a library is and what it is made of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LibrarySpec {
    Virtual(PathBuf),
    Scsi {
        changer: PathBuf,
        drives: Vec<PathBuf>,
        mtx: PathBuf,
        timeout: Duration,
    },
}

impl LibrarySpec {
    /// Is this URL a library's (rather than a repository's)?
    pub fn is_library_url(url: &str) -> bool {
        url.starts_with("vlib://") || url.starts_with("tape://")
    }

    /// The one parser of library URLs.
    pub fn parse(url: &str) -> Result<LibrarySpec> {
        let bad = |why: &str| {
            Error::Invalid(format!(
                "library URL {url:?}: {why} (expected vlib:///DIR or \
                 tape:///dev/sgN?drive=/dev/nstM[&drive=…])"
            ))
        };
        if let Some(path) = url.strip_prefix("vlib://") {
            if !path.starts_with('/') || path.contains('?') {
                return Err(bad(
                    "the directory must be an absolute path, with no options",
                ));
            }
            return Ok(LibrarySpec::Virtual(PathBuf::from(path)));
        }
        let Some(rest) = url.strip_prefix("tape://") else {
            return Err(bad("unknown scheme"));
        };
        let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
        if !path.starts_with('/') {
            return Err(bad("the changer must be an absolute device path"));
        }
        let mut drives = Vec::new();
        let mut mtx = PathBuf::from("mtx");
        let mut timeout = Duration::from_secs(300);
        for kv in query.split('&').filter(|s| !s.is_empty()) {
            let (k, v) = kv
                .split_once('=')
                .ok_or_else(|| bad("an option without '='"))?;
            match k {
                "drive" if v.starts_with('/') => drives.push(PathBuf::from(v)),
                "mtx" => mtx = PathBuf::from(v),
                "timeout" => {
                    let s: u64 = v.parse().map_err(|_| bad("timeout is whole seconds"))?;
                    if s == 0 {
                        return Err(bad("timeout must be at least 1 second"));
                    }
                    timeout = Duration::from_secs(s);
                }
                _ => return Err(bad(&format!("option {k:?}"))),
            }
        }
        if drives.is_empty() {
            return Err(bad("no drive"));
        }
        Ok(LibrarySpec::Scsi {
            changer: PathBuf::from(path),
            drives,
            mtx,
            timeout,
        })
    }

    pub fn open(&self) -> Result<Library> {
        Ok(Library {
            spec: self.clone(),
            vlib: match self {
                LibrarySpec::Virtual(dir) => Some(crate::vlib::VirtualLibrary::open(dir)?),
                LibrarySpec::Scsi { .. } => None,
            },
        })
    }
}

/// An open library: make its changer and open its drives.
#[derive(Debug, Clone)]
pub struct Library {
    spec: LibrarySpec,
    /// Opened (its `library.json` read) when the spec is virtual.
    vlib: Option<crate::vlib::VirtualLibrary>,
}

impl Library {
    pub fn spec(&self) -> &LibrarySpec {
        &self.spec
    }

    /// The virtual library, when this is one (import, export, the shelf).
    pub fn virtual_library(&self) -> Option<&crate::vlib::VirtualLibrary> {
        self.vlib.as_ref()
    }

    pub fn drive_count(&self) -> u32 {
        match (&self.vlib, &self.spec) {
            (Some(v), _) => v.config().drives,
            (None, LibrarySpec::Scsi { drives, .. }) => drives.len() as u32,
            (None, LibrarySpec::Virtual(_)) => 0,
        }
    }

    pub fn changer(&self) -> Result<Box<dyn Changer>> {
        match (&self.vlib, &self.spec) {
            (Some(v), _) => Ok(Box::new(v.changer())),
            (
                None,
                LibrarySpec::Scsi {
                    changer,
                    mtx,
                    timeout,
                    ..
                },
            ) => Ok(Box::new(crate::mtx::MtxChanger::new(
                changer.clone(),
                mtx.clone(),
                *timeout,
            ))),
            (None, LibrarySpec::Virtual(d)) => Err(Error::Invalid(format!(
                "{}: virtual library not opened",
                d.display()
            ))),
        }
    }

    /// Open drive `n` (numbered as the changer numbers them, from 0).
    pub fn drive(&self, n: u32) -> Result<Box<dyn Drive>> {
        match (&self.vlib, &self.spec) {
            (Some(v), _) => Ok(Box::new(v.drive(n)?)),
            (None, LibrarySpec::Scsi { drives, .. }) => {
                let path = drives.get(n as usize).ok_or_else(|| {
                    Error::Invalid(format!("drive {n}: the library has {}", drives.len()))
                })?;
                Ok(Box::new(crate::scsi::ScsiDrive::open(path)?))
            }
            (None, LibrarySpec::Virtual(d)) => Err(Error::Invalid(format!(
                "{}: virtual library not opened",
                d.display()
            ))),
        }
    }
}
