//! Gathering the durable appends of one scheduler turn into one hand-off.
//!
//! The audit line and the Zaif/Kraken nonce line are written by threads of their own, so
//! a stalled disk holds those threads and never a runtime worker. Handing each line over
//! on its own costs a wake-up of the writer thread and a context switch per request,
//! which under load was a large share of a request's CPU. Instead, the lines produced on
//! one worker while its ready tasks run are gathered in that worker's [`Slot`]: the first
//! request to add one (the leader) yields once, so every other ready task runs and adds
//! its line, then hands the whole batch over; each request waits for the one
//! [`Completion`] of its batch, with its own deadline.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::Notify;

// The state starts at 0: not written yet.
const WRITTEN: u8 = 1;
const FAILED: u8 = 2;

/// The outcome of one batch, announced by the writer thread to every request in it.
#[derive(Default)]
pub struct Completion {
    state: AtomicU8,
    notify: Notify,
}

impl Completion {
    /// A batch not yet written.
    pub fn new() -> Arc<Completion> {
        Arc::new(Completion::default())
    }

    /// Called once by the writer: the batch is in the kernel (`true`) or is not.
    pub fn finish(&self, written: bool) {
        let state = if written { WRITTEN } else { FAILED };
        self.state.store(state, Ordering::Release);
        self.notify.notify_waiters();
    }

    /// Whether the batch was written; waits until the writer says.
    pub async fn wait(&self) -> bool {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            // Registered before the state is read, so a `finish` in between is not missed.
            notified.as_mut().enable();
            match self.state.load(Ordering::Acquire) {
                WRITTEN => return true,
                FAILED => return false,
                _ => notified.await,
            }
        }
    }
}

/// What a request got by adding to a batch.
pub enum Joined<T> {
    /// It opened the batch: it must call [`Leader::close`] and hand the items over.
    Leader(Leader<T>),
    /// The batch was open already; its leader hands it over.
    Member(Arc<Completion>),
}

/// The request that opened a batch.
pub struct Leader<T> {
    slot: Arc<Mutex<Option<Open<T>>>>,
    done: Arc<Completion>,
}

impl<T> Leader<T> {
    /// Lets every task that is ready on this worker run (and add to the batch), then
    /// closes the batch (later additions open the next one) and hands its items over.
    ///
    /// If the request is dropped meanwhile (its client went away), the batch is still
    /// closed and handed over, from the drop: the others in it are waiting for it, and a
    /// batch left open would take every later line on this worker with it.
    pub async fn close(self, hand_off: impl FnOnce(T, &Arc<Completion>)) -> Arc<Completion> {
        let mut closing = Closing {
            slot: self.slot,
            done: self.done,
            hand_off: Some(hand_off),
        };
        tokio::task::yield_now().await;
        closing.finish();
        closing.done.clone()
    }
}

struct Closing<T, F: FnOnce(T, &Arc<Completion>)> {
    slot: Arc<Mutex<Option<Open<T>>>>,
    done: Arc<Completion>,
    hand_off: Option<F>,
}

impl<T, F: FnOnce(T, &Arc<Completion>)> Closing<T, F> {
    fn finish(&mut self) {
        let Some(hand_off) = self.hand_off.take() else {
            return;
        };
        let open = self.slot.lock().take();
        if let Some(open) = open {
            hand_off(open.items, &self.done);
        }
    }
}

impl<T, F: FnOnce(T, &Arc<Completion>)> Drop for Closing<T, F> {
    fn drop(&mut self) {
        self.finish();
    }
}

struct Open<T> {
    /// Whose batch it is (the address of the sink's shared state): a process with two
    /// sinks, as in tests, must not write one's lines through the other.
    owner: usize,
    items: T,
    done: Arc<Completion>,
}

/// One worker thread's open batch (held in a `thread_local!`). Behind a lock only because
/// a leader on a work-stealing runtime may resume on another thread after its yield; it
/// then still closes the batch it opened.
pub struct Slot<T>(Arc<Mutex<Option<Open<T>>>>);

impl<T> Default for Slot<T> {
    fn default() -> Self {
        Slot(Arc::new(Mutex::new(None)))
    }
}

impl<T: Default> Slot<T> {
    /// Adds to `owner`'s open batch, or opens one; `None` (nothing added) while another
    /// owner's batch is open on this thread.
    pub fn join(&self, owner: usize, add: impl FnOnce(&mut T)) -> Option<Joined<T>> {
        let mut open = self.0.lock();
        if let Some(batch) = open.as_mut() {
            if batch.owner != owner {
                return None;
            }
            add(&mut batch.items);
            return Some(Joined::Member(batch.done.clone()));
        }
        let mut items = T::default();
        add(&mut items);
        let done = Completion::new();
        *open = Some(Open {
            owner,
            items,
            done: done.clone(),
        });
        Some(Joined::Leader(Leader {
            slot: self.0.clone(),
            done,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;
    use std::rc::Rc;

    thread_local! {
        static SLOT: Slot<Vec<u32>> = Slot::default();
    }

    /// Requests that are ready in the same turn share one batch and one completion.
    #[tokio::test(flavor = "current_thread")]
    async fn one_turn_one_batch() {
        let handed: Rc<RefCell<Vec<Vec<u32>>>> = Rc::default();
        let local = tokio::task::LocalSet::new();
        let results = local
            .run_until(async {
                let mut tasks = Vec::new();
                for i in 0..5u32 {
                    let handed = handed.clone();
                    tasks.push(tokio::task::spawn_local(async move {
                        let joined = SLOT.with(|s| s.join(1, |v| v.push(i))).unwrap();
                        let done = match joined {
                            Joined::Leader(leader) => {
                                leader
                                    .close(|items, done| {
                                        handed.borrow_mut().push(items);
                                        // The writer thread's part.
                                        let finisher = done.clone();
                                        std::thread::spawn(move || finisher.finish(true));
                                    })
                                    .await
                            }
                            Joined::Member(done) => done,
                        };
                        done.wait().await
                    }));
                }
                let mut out = Vec::new();
                for t in tasks {
                    out.push(t.await.unwrap());
                }
                out
            })
            .await;
        assert_eq!(results, [true; 5]);
        assert_eq!(*handed.borrow(), [vec![0, 1, 2, 3, 4]]);
        // The next addition opens a new batch.
        assert!(matches!(
            SLOT.with(|s| s.join(1, |v| v.push(9))),
            Some(Joined::Leader(_))
        ));
        // Another owner's lines never join it.
        assert!(SLOT.with(|s| s.join(2, |v| v.push(10))).is_none());
    }

    /// A leader dropped while it yields (its client went away) still hands the batch
    /// over, so the requests in it are answered and the next line opens a new batch.
    #[tokio::test(flavor = "current_thread")]
    async fn a_dropped_leader_still_hands_its_batch_over() {
        thread_local! {
            static S: Slot<Vec<u32>> = Slot::default();
        }
        let handed: Rc<RefCell<Vec<Vec<u32>>>> = Rc::default();
        let local = tokio::task::LocalSet::new();
        local
            .run_until(async {
                let h = handed.clone();
                let leader = tokio::task::spawn_local(async move {
                    let Some(Joined::Leader(l)) = S.with(|s| s.join(7, |v| v.push(1))) else {
                        panic!("the first line leads");
                    };
                    l.close(|items, done| {
                        h.borrow_mut().push(items);
                        done.finish(true);
                    })
                    .await;
                    unreachable!("aborted during its yield");
                });
                // Let the leader run up to its yield, and a member join.
                tokio::task::yield_now().await;
                let Some(Joined::Member(done)) = S.with(|s| s.join(7, |v| v.push(2))) else {
                    panic!("the second line joins the open batch");
                };
                leader.abort();
                let _ = leader.await;
                let waited = tokio::time::timeout(std::time::Duration::from_secs(5), done.wait());
                assert_eq!(
                    waited.await,
                    Ok(true),
                    "the member's batch was never handed over"
                );
            })
            .await;
        assert_eq!(*handed.borrow(), [vec![1, 2]]);
        assert!(matches!(
            S.with(|s| s.join(7, |v| v.push(3))),
            Some(Joined::Leader(_))
        ));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_failed_batch_fails_every_waiter() {
        let done = Completion::new();
        let (a, b) = (done.clone(), done.clone());
        let waiters = tokio::spawn(async move { (a.wait().await, b.wait().await) });
        tokio::task::yield_now().await;
        done.finish(false);
        assert_eq!(waiters.await.unwrap(), (false, false));
    }
}
