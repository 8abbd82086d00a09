//! Hard-link groups of a tree restore: the first entry of a group is restored like any
//! file; the later ones are linked to it once it is whole (after its batch, if it is being
//! fetched), through the directories from the target down to it, each reopened by name and
//! checked to be the same directory. A group whose first entry could not be restored gets
//! no links (each is reported damaged); an entry kept by `--overwrite` is no group's first.

use std::ffi::{OsStr, OsString};
use std::sync::Arc;

use super::super::at::{Dir, Ident};
use super::TreeRestorer;
use crate::restore::files::lossy;
use crate::tree::Node;

/// Where the first restored link of a hard-link group is.
pub(super) struct Leader {
    /// Names and identities of the directories from the target down to it.
    pub(super) chain: Vec<(OsString, Ident)>,
    pub(super) name: OsString,
    pub(super) state: LeaderState,
}

pub(super) enum LeaderState {
    /// Being fetched in this batch (index into the batch's files).
    Pending(usize),
    /// Whole under its name, this inode.
    Done(Ident),
    /// Could not be restored; links to it are not made.
    Bad(String),
}

/// A hard link whose first file is still being fetched.
pub(super) struct DeferredLink {
    pub(super) dir: Arc<Dir>,
    pub(super) fresh: bool,
    pub(super) name: OsString,
    /// Its temporary name (free in the snapshot's tree).
    pub(super) tmp: OsString,
    pub(super) node: Node,
    pub(super) key: (u64, u64),
    pub(super) display: String,
}

impl TreeRestorer<'_> {
    /// Remember where the first link of a hard-link group went.
    pub(super) fn note_leader(
        &mut self,
        _dir: &Arc<Dir>,
        node: &Node,
        name: &OsStr,
        state: LeaderState,
    ) {
        if node.links <= 1 {
            return;
        }
        let chain = self.stack[1..]
            .iter()
            .filter_map(|f| f.ident.map(|i| (f.name.clone(), i)))
            .collect();
        self.hardlinks.insert(
            (node.dev, node.inode),
            Leader {
                chain,
                name: name.to_os_string(),
                state,
            },
        );
    }

    /// A later link of a hard-link group.
    pub(super) fn follower(&mut self, link: DeferredLink) {
        let Some(leader) = self.hardlinks.get(&link.key) else {
            return;
        };
        match &leader.state {
            LeaderState::Pending(_) => {
                self.batch_dirs.insert(link.dir.ident());
                self.deferred_links.push(link);
            }
            LeaderState::Bad(reason) => {
                let reason = format!(
                    "hard link to {}, which could not be restored: {reason}",
                    lossy(&leader.name)
                );
                self.damaged(link.display, reason);
            }
            LeaderState::Done(ident) => {
                let ident = *ident;
                let display = link.display.clone();
                if let Err(e) = self.make_link(&link, ident) {
                    self.error(format!("{display}: hard link: {e}"));
                }
            }
        }
    }

    pub(super) fn make_link(
        &mut self,
        link: &DeferredLink,
        leader_ident: Ident,
    ) -> std::io::Result<()> {
        let dir = &link.dir;
        if !link.fresh
            && let Some(e) = dir.entry(&link.name)?
        {
            if e.ident == leader_ident {
                self.outcome.unchanged += 1;
                self.outcome.files += 1;
                return Ok(());
            }
            if !self.replaces(&e, &link.node) {
                self.outcome.kept += 1;
                return Ok(());
            }
            if e.is_dir() {
                dir.remove_all(&link.name)?;
            }
        }
        let (chain, leader_name) = self
            .hardlinks
            .get(&link.key)
            .map(|l| (l.chain.clone(), l.name.clone()))
            .ok_or_else(|| std::io::Error::other("no first link"))?;
        // The first link's directory, from the target down, each level checked.
        let mut src = self.root.clone();
        for (n, ident) in &chain {
            src = Arc::new(src.reopen_dir(n, *ident)?);
        }
        let tmp = &link.tmp;
        if !link.fresh {
            dir.unlink(tmp)?;
        }
        dir.link_from(&src, &leader_name, tmp)?;
        if dir.entry(tmp)?.map(|e| e.ident) != Some(leader_ident) {
            dir.unlink(tmp)?;
            return Err(std::io::Error::other(
                "its first link was replaced while the restore ran",
            ));
        }
        dir.rename(tmp, &link.name)?;
        self.outcome.files += 1;
        Ok(())
    }
}
