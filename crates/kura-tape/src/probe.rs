//! Probing a library (seed 004's storage device asks whether its target is disk-type or
//! tape-type before it writes): is its changer reachable, what does it hold, and does each
//! tape loaded in a free drive carry the label its barcode says.

use std::time::Instant;

use crate::label;
use crate::library::{Library, LibrarySpec};

/// A loaded tape's label check.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LoadedTape {
    pub drive: u32,
    pub barcode: String,
    /// The label read from the tape (`None`: blank, or not read because the drive is in use).
    pub label: Option<String>,
    /// The label names the barcode.
    pub verified: bool,
    /// Why it was not checked or did not match.
    pub note: Option<String>,
}

/// What a probe of a library found.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct LibraryProbe {
    /// `tape` (always: what tells a library from a disk-type target).
    pub kind: &'static str,
    /// `virtual` or `scsi`.
    pub library: &'static str,
    pub drives: u32,
    pub slots: u32,
    /// Tapes in slots and drives.
    pub tapes: u32,
    pub loaded: Vec<LoadedTape>,
    /// How long the changer took to answer.
    pub changer_ms: Option<f64>,
    /// Why the library is unusable (`None`: it answered).
    pub error: Option<String>,
}

impl LibraryProbe {
    pub fn ok(&self) -> bool {
        self.error.is_none()
    }
}

/// Probe `lib`: its changer's status (bounded by the changer's own timeout) and the label of
/// every tape sitting in a drive no process holds.
pub fn probe(lib: &Library) -> LibraryProbe {
    let mut p = LibraryProbe {
        kind: "tape",
        library: match lib.spec() {
            LibrarySpec::Virtual(_) => "virtual",
            LibrarySpec::Scsi { .. } => "scsi",
        },
        drives: lib.drive_count(),
        slots: 0,
        tapes: 0,
        loaded: Vec::new(),
        changer_ms: None,
        error: None,
    };
    let started = Instant::now();
    let status = match lib.changer().and_then(|mut c| c.status()) {
        Ok(s) => s,
        Err(e) => {
            p.error = Some(e.to_string());
            return p;
        }
    };
    p.changer_ms = Some(started.elapsed().as_secs_f64() * 1000.0);
    p.slots = status.slots.len() as u32;
    p.tapes = status.slots.iter().filter(|s| s.barcode.is_some()).count() as u32
        + status.drives.iter().filter(|d| d.barcode.is_some()).count() as u32;
    for d in &status.drives {
        let Some(barcode) = d.barcode.clone() else {
            continue;
        };
        let mut t = LoadedTape {
            drive: d.drive,
            barcode: barcode.clone(),
            label: None,
            verified: false,
            note: None,
        };
        match lib.drive(d.drive) {
            Err(e) => t.note = Some(format!("not read: {e}")),
            Ok(mut drive) => match label::read_label(drive.as_mut()) {
                Ok(Some(l)) => {
                    t.verified = l.label == barcode;
                    if !t.verified {
                        t.note = Some(format!(
                            "the tape with barcode {barcode} is labelled {}",
                            l.label
                        ));
                    }
                    t.label = Some(l.label);
                }
                Ok(None) => t.note = Some("not labelled".into()),
                Err(e) => t.note = Some(format!("label not readable: {e}")),
            },
        }
        p.loaded.push(t);
    }
    p
}
