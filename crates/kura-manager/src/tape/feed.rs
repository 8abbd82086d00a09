//! Reading packs once for every library of a tape backup: a few threads read them from the
//! repository in the order the writers want them, check each against its id (a damaged pack
//! is never copied), and keep each until every library that needs it took it — at most
//! `window` packs ahead of the slowest library, so memory stays bounded whatever the drives'
//! speeds.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use kura_backend::FileKind;
use kura_repo::backup::CancelToken;
use kura_repo::id::Id;
use kura_repo::repo::IndexedRepo;

use crate::{Error, Result};

/// Packs read ahead, in the order every writer wants them (plan order), each kept until
/// every library that needs it took it.
pub(super) struct Feed {
    order: Vec<Id>,
    pos: HashMap<Id, usize>,
    /// How many libraries need each pack.
    users: Vec<usize>,
    next: AtomicUsize,
    state: Mutex<FeedState>,
    cv: Condvar,
    window: usize,
}

/// A pack read (or why not).
type Fetched = std::result::Result<Arc<Vec<u8>>, String>;

struct FeedState {
    /// Read packs by index, with how many libraries still have to take each.
    done: HashMap<usize, (Fetched, usize)>,
    /// Per library: the index of the next pack it may take (`usize::MAX` when it stopped).
    progress: Vec<usize>,
}

impl Feed {
    /// Packs `wanted` (id, how many libraries need it), for `libraries` writers.
    pub fn new(wanted: Vec<(Id, usize)>, libraries: usize, window: usize) -> Feed {
        let pos = wanted
            .iter()
            .enumerate()
            .map(|(i, (id, _))| (*id, i))
            .collect();
        let (order, users) = wanted.into_iter().unzip();
        Feed {
            order,
            pos,
            users,
            next: AtomicUsize::new(0),
            state: Mutex::new(FeedState {
                done: HashMap::new(),
                progress: vec![0; libraries],
            }),
            cv: Condvar::new(),
            window,
        }
    }

    /// Every writer ended: the readers stop.
    pub fn release(&self) {
        self.next.store(usize::MAX / 2, Ordering::SeqCst);
        self.cv.notify_all();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, FeedState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A library stopped taking packs (finished or failed).
    pub fn stop(&self, lib: usize) {
        self.lock().progress[lib] = usize::MAX;
        self.cv.notify_all();
    }
}

impl Feed {
    /// A reader thread: read packs in order, at most `window` ahead of the slowest
    /// library still taking them.
    pub fn read(&self, repo: &IndexedRepo, cancel: &CancelToken) {
        let feed = self;
        loop {
            let i = feed.next.fetch_add(1, Ordering::SeqCst);
            if i >= feed.order.len() {
                return;
            }
            {
                let mut st = feed.lock();
                while st
                    .progress
                    .iter()
                    .min()
                    .is_some_and(|m| i >= m.saturating_add(feed.window))
                    && !cancel.is_cancelled()
                {
                    st = feed
                        .cv
                        .wait_timeout(st, std::time::Duration::from_millis(200))
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                }
                if st.progress.iter().all(|p| *p == usize::MAX) {
                    return;
                }
            }
            let id = feed.order[i];
            let got = repo
                .backend()
                .get(FileKind::Pack, &id.to_hex())
                .map_err(|e| e.to_string())
                .and_then(|b| {
                    if Id::of_file(&b) == id {
                        Ok(Arc::new(b))
                    } else {
                        Err(format!(
                            "pack {} is damaged in the repository (its contents do not match its \
                         id); run `kura check`",
                            id.short()
                        ))
                    }
                });
            feed.lock().done.insert(i, (got, feed.users[i]));
            feed.cv.notify_all();
        }
    }

    /// Take pack `id` for library `lib` (waiting for it).
    pub fn take(&self, lib: usize, id: &Id, cancel: &CancelToken) -> Result<Arc<Vec<u8>>> {
        let feed = self;
        let Some(&i) = feed.pos.get(id) else {
            return Err(Error::Invalid(format!("pack {} was not read", id.short())));
        };
        let mut st = feed.lock();
        loop {
            if cancel.is_cancelled() {
                return Err(Error::Tape(kura_tape::Error::Cancelled));
            }
            if let Some((r, left)) = st.done.get_mut(&i) {
                let r = r.clone().map_err(Error::Invalid);
                *left -= 1;
                if *left == 0 {
                    st.done.remove(&i);
                }
                st.progress[lib] = i + 1;
                feed.cv.notify_all();
                return r;
            }
            st = feed
                .cv
                .wait_timeout(st, std::time::Duration::from_millis(200))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}
