//! The hot-path view of the store: every key, decrypted, in a map swapped atomically.
//! A background task polls the store's key-change counter so a key created, suspended or
//! revoked from the CLI applies to the running gateway within the poll interval.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use keyguard_policy::authorize::Freezes;
use keyguard_policy::{KeyRecord, UnixMillis};

use crate::secrets::MasterKey;
use crate::store::{self, Store};

/// How often running gateways look for key changes. The contract is "within one second".
pub const REFRESH_INTERVAL: Duration = Duration::from_millis(250);

/// One consistent snapshot of keys and freezes.
#[derive(Default)]
pub struct Snapshot {
    by_api_key: HashMap<String, Arc<KeyRecord>>,
    /// Withdrawal freezes in force.
    pub freezes: Freezes,
    last_used: HashMap<String, UnixMillis>,
    /// key id → (key, when its status last changed)
    by_key_id: HashMap<String, (Arc<KeyRecord>, UnixMillis)>,
    generation: i64,
}

impl Snapshot {
    /// The key presented as `api_key`.
    pub fn get(&self, api_key: &str) -> Option<&Arc<KeyRecord>> {
        self.by_api_key.get(api_key)
    }

    /// When the key was last used, as stored (reactivation sets it to the time it ran).
    pub fn last_used(&self, key_id: &str) -> Option<UnixMillis> {
        self.last_used.get(key_id).copied()
    }

    /// The key with id `key_id` and when its status last changed.
    pub fn by_key_id(&self, key_id: &str) -> Option<&(Arc<KeyRecord>, UnixMillis)> {
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
}

impl KeyCache {
    /// Loads the first snapshot; failing here stops startup (no keys means nothing works).
    pub fn load(store: &Store, master: &MasterKey) -> anyhow::Result<KeyCache> {
        let conn = store.connect()?;
        let snap = read_snapshot(&conn, master)?;
        Ok(KeyCache {
            current: ArcSwap::from_pointee(snap),
        })
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
            ticker.tick().await;
            let store = store.clone();
            let master = master.clone();
            let seen = self.current.load().generation;
            let taken = conn.take();
            let result = tokio::task::spawn_blocking(move || {
                let c = match taken {
                    Some(c) => c,
                    None => store.connect()?,
                };
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
                    if let Some(snap) = snap {
                        on_reload(&snap);
                        tracing::info!(
                            keys = snap.len(),
                            generation = snap.generation,
                            "keys reloaded"
                        );
                        self.current.store(Arc::new(snap));
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
    let last_used = store::load_last_used(conn)?;
    let changed = store::load_status_times(conn)?;
    let keys: Vec<Arc<KeyRecord>> = keys.into_iter().map(Arc::new).collect();
    Ok(Snapshot {
        last_used,
        by_key_id: keys
            .iter()
            .map(|k| {
                let at = changed.get(&k.key_id).copied().unwrap_or(0);
                (k.key_id.clone(), (k.clone(), at))
            })
            .collect(),
        by_api_key: keys.into_iter().map(|k| (k.api_key.clone(), k)).collect(),
        freezes,
        generation,
    })
}
