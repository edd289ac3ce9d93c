//! The hot-path view of the store: every key, decrypted, in a map swapped atomically.
//! A background task polls the store's key-change counter so a key created, suspended or
//! revoked from the CLI applies to the running gateway within the poll interval; it also
//! applies pending widening changes whose cool-down has passed. The admin listener, in
//! the same process, reloads at once after each write ([`KeyCache::reload_now`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use keyguard_policy::authorize::Freezes;
use keyguard_policy::{KeyRecord, UnixMillis};

use crate::secrets::MasterKey;
use crate::store::{self, Store};

/// How often running gateways look for key changes. The contract is "within one second".
pub const REFRESH_INTERVAL: Duration = Duration::from_millis(250);

/// How long the snapshot may go unconfirmed before trades and withdrawals are refused: a
/// suspension or freeze made since then might not be loaded.
pub const STALE_AFTER: Duration = Duration::from_secs(5);

/// One consistent snapshot of keys and freezes.
#[derive(Default)]
pub struct Snapshot {
    by_api_key: HashMap<String, Arc<KeyRecord>>,
    /// Withdrawal freezes in force.
    pub freezes: Freezes,
    by_key_id: HashMap<String, KeyTimes>,
    generation: i64,
}

/// A key with the times the store keeps beside its record.
pub struct KeyTimes {
    /// The key.
    pub key: Arc<KeyRecord>,
    /// When it was last used, as stored (reactivation sets it to the time it ran).
    pub last_used: Option<UnixMillis>,
    /// When its record, status included, last changed.
    pub changed_at: UnixMillis,
}

impl Snapshot {
    /// The key presented as `api_key`.
    pub fn get(&self, api_key: &str) -> Option<&Arc<KeyRecord>> {
        self.by_api_key.get(api_key)
    }

    /// The key with id `key_id`, with its stored times.
    pub fn by_key_id(&self, key_id: &str) -> Option<&KeyTimes> {
        self.by_key_id.get(key_id)
    }

    /// How many keys are loaded.
    pub fn len(&self) -> usize {
        self.by_api_key.len()
    }

    /// Whether no key is loaded.
    pub fn is_empty(&self) -> bool {
        self.by_api_key.is_empty()
    }
}

/// Shared, atomically replaced key snapshot.
pub struct KeyCache {
    current: ArcSwap<Snapshot>,
    /// Wakes the refresher before its next tick (a write from the admin listener).
    wake: tokio::sync::Notify,
    /// The generation of the snapshot in force, for [`KeyCache::caught_up`].
    loaded: tokio::sync::watch::Sender<i64>,
    started: Instant,
    /// Milliseconds after `started` of the last successful look at the store.
    confirmed_ms: AtomicU64,
}

impl Snapshot {
    /// A snapshot of `keys` (each with its last use and last change) and `freezes`;
    /// `generation` orders snapshots of one source.
    pub fn build(
        keys: Vec<(KeyRecord, Option<UnixMillis>, UnixMillis)>,
        freezes: Freezes,
        generation: i64,
    ) -> Snapshot {
        let mut by_key_id = HashMap::with_capacity(keys.len());
        let mut by_api_key = HashMap::with_capacity(keys.len());
        for (k, last_used, changed_at) in keys {
            let k = Arc::new(k);
            by_api_key.insert(k.api_key.clone(), k.clone());
            by_key_id.insert(
                k.key_id.clone(),
                KeyTimes {
                    key: k,
                    last_used,
                    changed_at,
                },
            );
        }
        Snapshot {
            by_api_key,
            freezes,
            by_key_id,
            generation,
        }
    }

    /// Its generation.
    pub fn generation(&self) -> i64 {
        self.generation
    }

    /// Every key with its times.
    pub fn entries(&self) -> impl Iterator<Item = &KeyTimes> {
        self.by_key_id.values()
    }
}

impl KeyCache {
    /// A cache holding `snap` (the distributed store loads its own first snapshot).
    pub fn from_snapshot(snap: Snapshot) -> KeyCache {
        KeyCache {
            loaded: tokio::sync::watch::Sender::new(snap.generation),
            wake: tokio::sync::Notify::new(),
            current: ArcSwap::from_pointee(snap),
            started: Instant::now(),
            confirmed_ms: AtomicU64::new(0),
        }
    }

    /// Puts `snap` in force and confirms it as current.
    pub fn install(&self, snap: Snapshot) {
        let generation = snap.generation;
        self.current.store(Arc::new(snap));
        self.confirm();
        self.loaded.send_replace(generation);
    }

    /// Loads the first snapshot; failing here stops startup (no keys means nothing works).
    pub fn load(store: &Store, master: &MasterKey) -> anyhow::Result<KeyCache> {
        let conn = store.connect()?;
        let snap = read_snapshot(&conn, master)?;
        Ok(KeyCache {
            loaded: tokio::sync::watch::Sender::new(snap.generation),
            wake: tokio::sync::Notify::new(),
            current: ArcSwap::from_pointee(snap),
            started: Instant::now(),
            confirmed_ms: AtomicU64::new(0),
        })
    }

    /// Whether the store was read successfully within [`STALE_AFTER`]. Moving funds on
    /// an unconfirmed snapshot could ignore a suspension or freeze: callers fail closed.
    pub fn is_fresh(&self) -> bool {
        self.confirmed_within(STALE_AFTER)
    }

    fn confirmed_within(&self, max: Duration) -> bool {
        let now = self.started.elapsed().as_millis() as u64;
        let age = now.saturating_sub(self.confirmed_ms.load(Ordering::Relaxed));
        age <= max.as_millis() as u64
    }

    /// Records that the source was read successfully just now.
    pub fn confirm(&self) {
        let now = self.started.elapsed().as_millis() as u64;
        self.confirmed_ms.store(now, Ordering::Relaxed);
    }

    /// Wakes the refresher and waits (up to two seconds) until the snapshot holds store
    /// generation `generation` or later. The admin listener calls this after each write
    /// with the generation its write produced, so its changes reach the pipeline before
    /// its response does. Returns whether they did in time.
    pub async fn caught_up(&self, generation: i64) -> bool {
        let mut rx = self.loaded.subscribe();
        self.wake.notify_one();
        let reached = async {
            loop {
                if *rx.borrow_and_update() >= generation {
                    return;
                }
                if rx.changed().await.is_err() {
                    // No refresher running (tests): nothing will load it.
                    std::future::pending::<()>().await;
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(2), reached)
            .await
            .is_ok()
    }

    /// The current snapshot (an `Arc`, so it may be held across awaits).
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// Polls the store forever, reloading when keys or freezes changed. If the store
    /// cannot be read, the last snapshot stays in force and the error is logged: keys
    /// never become more permissive because of an error, and a suspension already
    /// loaded stays loaded.
    ///
    /// `on_reload` sees every new snapshot before requests do.
    pub async fn refresh_loop(
        self: Arc<Self>,
        store: Store,
        master: Arc<MasterKey>,
        on_reload: impl Fn(&Snapshot) + Send + 'static,
    ) {
        let mut conn = None;
        let mut ticker = tokio::time::interval(REFRESH_INTERVAL);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = self.wake.notified() => {}
            }
            let store = store.clone();
            let master = master.clone();
            let seen = self.current.load().generation;
            let taken = conn.take();
            let result = tokio::task::spawn_blocking(move || {
                let mut c = match taken {
                    Some(c) => c,
                    None => store.connect()?,
                };
                // Widening changes whose cool-down has passed apply here; applying one
                // bumps the generation, so this very tick loads it.
                if let Err(e) = store::edit::apply_due(&mut c, store::now_ms()) {
                    tracing::error!(error = %format!("{e:#}"), "applying due key changes failed");
                }
                let generation = store::keys_generation(&c)?;
                let snap = if generation != seen {
                    Some(read_snapshot(&c, &master)?)
                } else {
                    None
                };
                anyhow::Ok((c, snap))
            })
            .await;
            match result {
                Ok(Ok((c, snap))) => {
                    conn = Some(c);
                    self.confirm();
                    if let Some(snap) = snap {
                        on_reload(&snap);
                        tracing::info!(
                            keys = snap.len(),
                            generation = snap.generation,
                            "keys reloaded"
                        );
                        let generation = snap.generation;
                        self.current.store(Arc::new(snap));
                        self.loaded.send_replace(generation);
                    }
                }
                Ok(Err(e)) => tracing::error!(error = %format!("{e:#}"), "key refresh failed"),
                Err(e) => tracing::error!(error = %e, "key refresh task failed"),
            }
        }
    }
}

fn read_snapshot(conn: &rusqlite::Connection, master: &MasterKey) -> anyhow::Result<Snapshot> {
    // Generation first: a change racing with the read is then seen again next tick
    // rather than missed.
    let generation = store::keys_generation(conn)?;
    let (keys, errors) = store::load_keys(conn, master)?;
    for e in errors {
        tracing::error!(error = %e, "key skipped");
    }
    let freezes = store::load_freezes(conn)?;
    let times = store::load_key_times(conn)?;
    let keys: Vec<Arc<KeyRecord>> = keys.into_iter().map(Arc::new).collect();
    Ok(Snapshot {
        by_key_id: keys
            .iter()
            .map(|k| {
                let (last_used, changed_at) = times.get(&k.key_id).copied().unwrap_or((None, 0));
                let entry = KeyTimes {
                    key: k.clone(),
                    last_used,
                    changed_at,
                };
                (k.key_id.clone(), entry)
            })
            .collect(),
        by_api_key: keys.into_iter().map(|k| (k.api_key.clone(), k)).collect(),
        freezes,
        generation,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_goes_stale_without_confirmation() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let master =
            MasterKey::load_or_create("KEYGUARD_TEST_UNSET_VAR", &dir.path().join("m.key"))
                .unwrap();
        let cache = KeyCache::load(&store, &master).unwrap();
        assert!(cache.is_fresh(), "a snapshot just loaded is current");
        std::thread::sleep(Duration::from_millis(20));
        assert!(!cache.confirmed_within(Duration::from_millis(5)));
        cache.confirm();
        assert!(cache.confirmed_within(Duration::from_millis(5)));
    }
}
