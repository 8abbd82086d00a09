//! Barcodes: the one grammar of barcode lists (`A01,A02`, `SSC001..SSC008`), and what a
//! barcode may be — a plain name, since the virtual library names tape files by it.

use crate::{Error, Result};

/// Barcodes are file names here: letters, digits, `-`, `_`, 1 to 32 of them.
pub fn check_barcode(b: &str) -> Result<()> {
    if b.is_empty()
        || b.len() > 32
        || !b
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
    {
        return Err(Error::Invalid(format!(
            "barcode {b:?}: expected 1 to 32 letters, digits, '-' or '_'"
        )));
    }
    Ok(())
}

/// The one parser of barcode lists: `A01,A02,B7` or a sequence `SSC001..SSC008` (the same
/// prefix, numbers of the same width), or both (`SSC001..SSC003,X9`).
pub fn parse_barcodes(text: &str) -> Result<Vec<String>> {
    let mut out: Vec<String> = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        if let Some((a, b)) = part.split_once("..") {
            let split = |s: &str| {
                let digits = s.len() - s.trim_end_matches(|c: char| c.is_ascii_digit()).len();
                let (p, n) = s.split_at(s.len() - digits);
                (p.to_string(), n.to_string())
            };
            let ((pa, na), (pb, nb)) = (split(a), split(b));
            let bad = || {
                Error::Invalid(format!(
                    "barcode sequence {part:?}: expected PREFIX001..PREFIX009 (same prefix, \
                     numbers of the same width, first ≤ last)"
                ))
            };
            if pa != pb || na.is_empty() || na.len() != nb.len() {
                return Err(bad());
            }
            let (x, y): (u64, u64) = (
                na.parse().map_err(|_| bad())?,
                nb.parse().map_err(|_| bad())?,
            );
            if x > y || y - x >= 10_000 {
                return Err(bad());
            }
            for n in x..=y {
                out.push(format!("{pa}{n:0w$}", w = na.len()));
            }
        } else {
            out.push(part.to_string());
        }
    }
    for b in &out {
        check_barcode(b)?;
    }
    let mut seen = std::collections::HashSet::new();
    if let Some(d) = out.iter().find(|b| !seen.insert(b.as_str())) {
        return Err(Error::Invalid(format!("barcode {d} given twice")));
    }
    Ok(out)
}
