//! A one-shot slot for one file's read result, between a reader and the assembler.
//!
//! Why not a channel: the walker keeps one pending result per file of a directory until the
//! whole directory is assembled, so a directory of 100 000 new files holds 100 000 of them at
//! once. A bounded crossbeam channel costs several hundred bytes (cache-padded head and tail,
//! waker lists); this slot is one small allocation. Dropping the sending half without a value
//! (a reader that stopped, a job never taken) wakes the receiver with "abandoned", as a
//! disconnected channel would.

use std::sync::{Arc, Condvar, Mutex};

enum State<T> {
    Pending,
    Done(T),
    Abandoned,
}

struct Slot<T> {
    state: Mutex<State<T>>,
    ready: Condvar,
}

/// The sending half; dropped unsent, it abandons the slot.
pub(super) struct SlotTx<T>(Option<Arc<Slot<T>>>);

/// The receiving half.
pub(super) struct SlotRx<T>(Arc<Slot<T>>);

pub(super) fn slot<T>() -> (SlotTx<T>, SlotRx<T>) {
    let s = Arc::new(Slot {
        state: Mutex::new(State::Pending),
        ready: Condvar::new(),
    });
    (SlotTx(Some(s.clone())), SlotRx(s))
}

impl<T> SlotTx<T> {
    pub(super) fn send(mut self, v: T) {
        if let Some(s) = self.0.take() {
            s.set(State::Done(v));
        }
    }
}

impl<T> Drop for SlotTx<T> {
    fn drop(&mut self) {
        if let Some(s) = self.0.take() {
            s.set(State::Abandoned);
        }
    }
}

impl<T> Slot<T> {
    fn set(&self, v: State<T>) {
        // A poisoned lock means a panicking thread; the value is still delivered.
        let mut g = self.state.lock().unwrap_or_else(|p| p.into_inner());
        *g = v;
        drop(g);
        self.ready.notify_one();
    }
}

impl<T> SlotRx<T> {
    /// Wait for the value; `None` if the sender was dropped without one.
    pub(super) fn recv(self) -> Option<T> {
        let mut g = self.0.state.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            match std::mem::replace(&mut *g, State::Abandoned) {
                State::Pending => {
                    *g = State::Pending;
                    g = self.0.ready.wait(g).unwrap_or_else(|p| p.into_inner());
                }
                State::Done(v) => return Some(v),
                State::Abandoned => return None,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delivers_across_threads_and_reports_abandonment() {
        let (tx, rx) = slot();
        let h = std::thread::spawn(move || tx.send(42));
        assert_eq!(rx.recv(), Some(42));
        h.join().unwrap();
        let (tx, rx) = slot::<u32>();
        let h = std::thread::spawn(move || drop(tx));
        assert_eq!(rx.recv(), None);
        h.join().unwrap();
        // Smaller than the channel it replaces.
        assert!(std::mem::size_of::<Slot<(Vec<u8>, u64)>>() <= 96);
    }
}
