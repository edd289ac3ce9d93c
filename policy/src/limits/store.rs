//! The keyed GCRA state behind every limiter: governor's algorithm over a map with a hard
//! cap on entries.
//!
//! governor's own keyed stores grow with every new key until `retain_recent()` runs
//! (governor issue #171). Between two sweeps a flood of random IPv6 /64s would still grow
//! them without bound, so this store stops inserting at `cap` and lets every key it has no
//! room for share one *overflow* cell. At the cap the flood is therefore limited as if it
//! came from one client — it fails closed for the newcomers — while every client already
//! in the map keeps its own state. Nothing is ever evicted early: eviction would hand a
//! flooding client (or one of its victims) a fresh burst each time its entry was pushed out.

use std::hash::Hash;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use dashmap::mapref::entry::Entry;
use dashmap::DashMap;
use governor::nanos::Nanos;
use governor::state::keyed::ShrinkableKeyedStateStore;
use governor::state::StateStore;

/// A keyed GCRA state store with at most `cap` entries plus one shared overflow cell.
///
/// Each cell is the theoretical arrival time in nanoseconds since the limiter started;
/// `0` means "never used", as in governor's own `InMemoryState`.
#[derive(Debug)]
pub struct BoundedState<K: Hash + Eq> {
    map: DashMap<K, AtomicU64>,
    /// Entries in `map`, kept here because `DashMap::len` locks every shard.
    len: AtomicUsize,
    cap: usize,
    overflow: AtomicU64,
    /// Shared with the owner: governor gives no access to its store once built.
    overflow_hits: Arc<AtomicU64>,
}

impl<K: Hash + Eq + Clone> BoundedState<K> {
    /// An empty store that holds at most `cap` keys (at least one).
    pub fn new(cap: usize) -> Self {
        BoundedState {
            map: DashMap::new(),
            len: AtomicUsize::new(0),
            cap: cap.max(1),
            overflow: AtomicU64::new(0),
            overflow_hits: Arc::new(AtomicU64::new(0)),
        }
    }

    /// The counter of decisions made on the shared overflow cell; keep a clone before
    /// handing the store to governor, which gives no access to it afterwards.
    pub fn overflow_counter(&self) -> Arc<AtomicU64> {
        Arc::clone(&self.overflow_hits)
    }

    /// Claims one of the `cap` places, or says there is none left.
    fn claim_place(&self) -> bool {
        let mut current = self.len.load(Ordering::Relaxed);
        loop {
            if current >= self.cap {
                return false;
            }
            match self.len.compare_exchange_weak(
                current,
                current + 1,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => return true,
                Err(now) => current = now,
            }
        }
    }
}

/// governor's compare-and-swap loop over one cell (`InMemoryState::measure_and_replace_one`
/// is crate-private, so it is repeated here).
fn measure<T, F, E>(cell: &AtomicU64, f: F) -> Result<T, E>
where
    F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
{
    let read = |v: u64| (v != 0).then(|| Nanos::from(v));
    let mut prev = cell.load(Ordering::Acquire);
    let mut decision = f(read(prev));
    while let Ok((result, next)) = decision {
        match cell.compare_exchange_weak(prev, next.into(), Ordering::Release, Ordering::Relaxed) {
            Ok(_) => return Ok(result),
            Err(actual) => prev = actual,
        }
        decision = f(read(prev));
    }
    decision.map(|(result, _)| result)
}

impl<K: Hash + Eq + Clone> StateStore for BoundedState<K> {
    type Key = K;

    fn measure_and_replace<T, F, E>(&self, key: &K, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        // Fast path: a key we already track takes a shard read lock and one CAS.
        if let Some(cell) = self.map.get(key) {
            return measure(cell.value(), f);
        }
        if !self.claim_place() {
            self.overflow_hits.fetch_add(1, Ordering::Relaxed);
            return measure(&self.overflow, f);
        }
        match self.map.entry(key.clone()) {
            Entry::Occupied(cell) => {
                // Another thread inserted it first; give our place back.
                self.len.fetch_sub(1, Ordering::AcqRel);
                measure(cell.get(), f)
            }
            Entry::Vacant(slot) => {
                let cell = slot.insert(AtomicU64::new(0));
                measure(cell.value(), f)
            }
        }
    }
}

impl<K: Hash + Eq + Clone> ShrinkableKeyedStateStore<K> for BoundedState<K> {
    fn retain_recent(&self, drop_below: Nanos) {
        let drop_below: u64 = drop_below.into();
        let mut removed = 0usize;
        self.map.retain(|_, cell| {
            let keep = cell.load(Ordering::Relaxed) > drop_below;
            removed += usize::from(!keep);
            keep
        });
        self.len.fetch_sub(removed, Ordering::AcqRel);
        // A stale overflow cell is indistinguishable from a fresh one; resetting it keeps
        // the CAS values small and the Debug output honest.
        // compare_exchange, so a decision made meanwhile is never overwritten.
        let overflow = self.overflow.load(Ordering::Relaxed);
        if overflow <= drop_below {
            let _ =
                self.overflow
                    .compare_exchange(overflow, 0, Ordering::AcqRel, Ordering::Relaxed);
        }
    }

    fn shrink_to_fit(&self) {
        self.map.shrink_to_fit();
    }

    fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
