//! A sharded, capped map for per-client state, with the same behaviour at the cap as the
//! rate limiters: keys it has no room for share one overflow entry per shard.
//!
//! Unauthenticated clients choose their own keys (any IPv6 /64), so the tables they can
//! write to must not grow with them. At the cap a newcomer's state is its shard's
//! overflow entry: a flood of new addresses is counted, banned and blocked together (fail
//! closed for the flood), while every tracked client keeps its own entry. Entries leave
//! only through [`Table::sweep`], when nothing in them matters any more.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Mutex, MutexGuard};

const SHARDS: usize = 16;

#[derive(Debug, Default)]
struct Shard<K, V> {
    map: HashMap<K, V>,
    overflow: V,
}

/// See the module docs.
#[derive(Debug)]
pub(crate) struct Table<K, V> {
    shards: Box<[Mutex<Shard<K, V>>]>,
    per_shard: usize,
    hasher: std::collections::hash_map::RandomState,
}

impl<K: Hash + Eq, V: Default> Table<K, V> {
    /// A table of at most `cap` entries (rounded up to a multiple of the shard count).
    pub(crate) fn new(cap: usize) -> Self {
        Table {
            shards: (0..SHARDS)
                .map(|_| {
                    Mutex::new(Shard {
                        map: HashMap::new(),
                        overflow: V::default(),
                    })
                })
                .collect(),
            per_shard: cap.div_ceil(SHARDS).max(1),
            hasher: Default::default(),
        }
    }

    fn shard<Q: Hash + ?Sized>(&self, key: &Q) -> MutexGuard<'_, Shard<K, V>> {
        use std::hash::BuildHasher;
        let i = (self.hasher.hash_one(key) as usize) % SHARDS;
        // A poisoned shard holds plain counters; keep using them rather than fail every
        // later request.
        self.shards[i].lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `f` on the key's entry, creating it if there is room, else on the overflow.
    pub(crate) fn with<Q, R>(&self, key: &Q, f: impl FnOnce(&mut V) -> R) -> R
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        let mut guard = self.shard(key);
        let shard = &mut *guard;
        if let Some(v) = shard.map.get_mut(key) {
            return f(v);
        }
        if shard.map.len() >= self.per_shard {
            return f(&mut shard.overflow);
        }
        f(shard.map.entry(key.to_owned()).or_default())
    }

    /// Runs `f` on the key's entry, creating it if there is room; `None` at the cap, for
    /// state that must never be shared (what would be a suspension of innocent keys).
    pub(crate) fn with_own<Q, R>(&self, key: &Q, f: impl FnOnce(&mut V) -> R) -> Option<R>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        let mut guard = self.shard(key);
        let shard = &mut *guard;
        if let Some(v) = shard.map.get_mut(key) {
            return Some(f(v));
        }
        if shard.map.len() >= self.per_shard {
            return None;
        }
        Some(f(shard.map.entry(key.to_owned()).or_default()))
    }

    /// Runs `f` on the key's entry if it has one — or on the overflow when the shard is
    /// full, since that is where the key's state went — without creating anything.
    pub(crate) fn peek<Q, R>(&self, key: &Q, f: impl FnOnce(&V) -> R) -> Option<R>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let guard = self.shard(key);
        match guard.map.get(key) {
            Some(v) => Some(f(v)),
            None if guard.map.len() >= self.per_shard => Some(f(&guard.overflow)),
            None => None,
        }
    }

    /// Keeps the entries for which `keep` says so (it may also tidy them), resets the
    /// overflow entries `keep` rejects, and releases memory. Returns the entries left.
    pub(crate) fn sweep(&self, mut keep: impl FnMut(&mut V) -> bool) -> usize {
        let mut left = 0;
        for s in self.shards.iter() {
            let mut guard = s.lock().unwrap_or_else(|e| e.into_inner());
            let shard = &mut *guard;
            shard.map.retain(|_, v| keep(v));
            shard.map.shrink_to_fit();
            if !keep(&mut shard.overflow) {
                shard.overflow = V::default();
            }
            left += shard.map.len();
        }
        left
    }

    /// Drops the key's own entry (not the overflow, which others share).
    pub(crate) fn remove<Q>(&self, key: &Q)
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.shard(key).map.remove(key);
    }

    /// Entries over all shards.
    pub(crate) fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).map.len())
            .sum()
    }
}
