//! Repository groups: the targets of a mirrored (or, later, fail-over) job hold one
//! repository — the same sealed config file and key files, written once by `init` through a
//! [`MirrorBackend`] — so a chunk has the same id, and a pack the same bytes, on each.
//!
//! A target that holds a *different* repository must never join: packs encrypted with one
//! master key are unreadable under another's config. [`verify`] compares the members' config
//! files byte for byte before anything is written.

use kura_backend::{FileKind, MirrorBackend};

use crate::error::{Error, Result};

/// A member's location and what reading its config file gave.
pub type ConfigAnswer = (String, kura_backend::Result<Vec<u8>>);

/// Check that every live member holds the same repository. A member that cannot be read
/// (stalled, unreachable) is dropped with the reason — the mirror's quorum decides later
/// whether the job can go on; one holding another repository, or none, is an error.
pub fn verify(mirror: &MirrorBackend) -> Result<()> {
    let members = mirror.members();
    let (indices, answers): (Vec<usize>, Vec<ConfigAnswer>) = mirror
        .get_each(FileKind::Config, "config")
        .into_iter()
        .map(|(i, a)| (i, (members[i].location(), a)))
        .unzip();
    for (j, why) in compare(&answers)? {
        mirror.drop_member(indices[j], &format!("at open: {why}"));
    }
    Ok(())
}

/// Compare the config files read from a group's members (location, what the read gave):
/// a member holding another repository, or none, is an error. Returns the positions in
/// `answers` that could not be read, with the reason: the caller drops or fails them.
pub fn compare(
    answers: &[(String, kura_backend::Result<Vec<u8>>)],
) -> Result<Vec<(usize, String)>> {
    let mut reference: Option<(&str, &[u8])> = None;
    let mut unreadable = Vec::new();
    for (j, (loc, answer)) in answers.iter().enumerate() {
        match answer {
            Ok(bytes) => match reference {
                None => reference = Some((loc, bytes)),
                Some((first, r)) if r != bytes.as_slice() => {
                    return Err(Error::NotAGroup(format!(
                        "{loc} does not hold the same repository as {first}: the targets of \
                         a job must form a group (create them together with kura init --mirror)"
                    )));
                }
                Some(_) => {}
            },
            Err(e) if e.kind() == kura_backend::ErrorKind::NotFound => {
                return Err(Error::NotAGroup(format!(
                    "{loc} holds no repository: create the group's targets together with \
                     kura init --mirror"
                )));
            }
            Err(e) => unreadable.push((j, e.to_string())),
        }
    }
    Ok(unreadable)
}
