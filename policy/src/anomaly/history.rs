//! Which networks each key is known to be used from, and since when each may trade.
//!
//! Unlike the windowed counters this is durable state: forgetting it on a restart would
//! make the next network of every key its "first ever" one and trust it at once. The
//! gateway writes each learned network through ([`LearnedIp`]) and restores the history
//! on start.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use ipnet::IpNet;

use crate::limits::ClientNet;
use crate::time::UnixMillis;
use crate::Deny;

/// The `usable_from` of a network that is no longer known for its key (a canary was
/// used from it): it stays in the list, so the key's next network is never mistaken for
/// its first (trust on first use), but its next sighting starts probation afresh.
/// `i64::MAX` so that the database stores it unchanged.
pub const FORGOTTEN: UnixMillis = i64::MAX as UnixMillis;

/// One known network of a key, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LearnedIp {
    /// The key's id.
    pub key_id: String,
    /// The network: an IPv4 /32 or an IPv6 /64 ([`ClientNet::to_net`]).
    pub net: IpNet,
    /// When the key was first seen from it.
    pub first_seen: UnixMillis,
    /// From when trades and withdrawals from it are allowed.
    pub usable_from: UnixMillis,
}

/// What [`IpHistory::observe`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sighting {
    /// When the key was first seen from this network.
    pub first_seen: UnixMillis,
    /// From when trades and withdrawals from it are allowed.
    pub usable_from: UnixMillis,
    /// The network was learned by this call (persist it).
    pub learned: bool,
}

/// Durable known-network history per key.
pub trait IpHistory: Send + Sync {
    /// Looks `net` up for `key_id`, learning it if new: usable after `probation_ms`, or at
    /// once if `trust_first` and the key was never seen from anywhere (trust on first
    /// use, DESIGN.md §6). `trust_first` is false for keys that trust a network from
    /// their creation: their first use from elsewhere is not a first use.
    fn sight(
        &self,
        key_id: &str,
        net: ClientNet,
        now: UnixMillis,
        probation_ms: u64,
        trust_first: bool,
    ) -> Result<Sighting, Deny>;

    /// [`IpHistory::sight`] with trust on first use.
    fn observe(
        &self,
        key_id: &str,
        net: ClientNet,
        now: UnixMillis,
        probation_ms: u64,
    ) -> Result<Sighting, Deny> {
        self.sight(key_id, net, now, probation_ms, true)
    }

    /// Forgets `net` as known for every key seen from it at or after `since` (a canary
    /// was used from it): their next use from it is a new network's, on probation.
    /// Returns the records to persist (`usable_from` = [`FORGOTTEN`]).
    fn forget_network(&self, net: ClientNet, since: UnixMillis) -> Result<Vec<LearnedIp>, Deny>;
}

#[derive(Debug, Clone, Copy)]
struct Known {
    net: ClientNet,
    first_seen: UnixMillis,
    usable_from: UnixMillis,
    last_seen: UnixMillis,
    /// Restored from storage and not seen since: `last_seen` is only the first sighting
    /// (the database keeps no later one), so the canary lookback counts it as recent.
    restored: bool,
}

const SHARDS: usize = 16;

/// Known networks by key id.
type KeyNets = HashMap<String, Vec<Known>>;

/// The in-process [`IpHistory`]. Keys are authenticated, so the map is bounded by the key
/// store; each key keeps at most `max_per_key` networks, forgetting the least recently
/// seen first (a forgotten network is new again, so forgetting only ever adds probation).
#[derive(Debug)]
pub struct MemoryIpHistory {
    shards: Box<[Mutex<KeyNets>]>,
    max_per_key: usize,
}

impl MemoryIpHistory {
    /// An empty history keeping at most `max_per_key` networks a key (at least 1).
    pub fn new(max_per_key: usize) -> Self {
        MemoryIpHistory {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            max_per_key: max_per_key.max(1),
        }
    }

    /// A history rebuilt from stored records.
    pub fn restore(max_per_key: usize, records: impl IntoIterator<Item = LearnedIp>) -> Self {
        let history = MemoryIpHistory::new(max_per_key);
        for r in records {
            let Some(net) = ClientNet::from_net(r.net) else {
                continue;
            };
            let mut shard = history.shard(&r.key_id);
            let list = shard.entry(r.key_id).or_default();
            history.insert(
                list,
                Known {
                    net,
                    first_seen: r.first_seen,
                    usable_from: r.usable_from,
                    last_seen: r.first_seen,
                    restored: true,
                },
            );
        }
        history
    }

    /// Marks `net` known and usable now for `key_id` (the network a key was created from
    /// in the web UI); returns the record to persist.
    pub fn trust(&self, key_id: &str, net: ClientNet, now: UnixMillis) -> LearnedIp {
        let mut shard = self.shard(key_id);
        let list = shard.entry(key_id.to_owned()).or_default();
        let known = match list.iter_mut().find(|k| k.net == net) {
            Some(k) => {
                k.usable_from = if k.usable_from == FORGOTTEN {
                    now
                } else {
                    k.usable_from.min(now)
                };
                k.last_seen = k.last_seen.max(now);
                k.restored = false;
                *k
            }
            None => {
                let k = Known {
                    net,
                    first_seen: now,
                    usable_from: now,
                    last_seen: now,
                    restored: false,
                };
                self.insert(list, k);
                k
            }
        };
        LearnedIp {
            key_id: key_id.to_owned(),
            net: net.to_net(),
            first_seen: known.first_seen,
            usable_from: known.usable_from,
        }
    }

    /// Forgets a key (deleted or revoked keys).
    pub fn forget(&self, key_id: &str) {
        self.shard(key_id).remove(key_id);
    }

    /// Every known network, for persistence.
    pub fn export(&self) -> Vec<LearnedIp> {
        let mut out: Vec<LearnedIp> = self
            .shards
            .iter()
            .flat_map(|s| {
                let shard = s.lock().unwrap_or_else(|e| e.into_inner());
                shard
                    .iter()
                    .flat_map(|(key_id, list)| {
                        list.iter().map(|k| LearnedIp {
                            key_id: key_id.clone(),
                            net: k.net.to_net(),
                            first_seen: k.first_seen,
                            usable_from: k.usable_from,
                        })
                    })
                    .collect::<Vec<_>>()
            })
            .collect();
        out.sort_by(|a, b| (&a.key_id, a.first_seen, a.net).cmp(&(&b.key_id, b.first_seen, b.net)));
        out
    }

    fn shard(&self, key_id: &str) -> MutexGuard<'_, KeyNets> {
        let h = key_id.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
        self.shards[(h as usize) % SHARDS]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    fn insert(&self, list: &mut Vec<Known>, known: Known) {
        if let Some(existing) = list.iter_mut().find(|k| k.net == known.net) {
            *existing = known;
            return;
        }
        if list.len() >= self.max_per_key {
            if let Some(stalest) = list
                .iter()
                .enumerate()
                .min_by_key(|(_, k)| k.last_seen)
                .map(|(i, _)| i)
            {
                list.swap_remove(stalest);
            }
        }
        list.push(known);
    }
}

impl IpHistory for MemoryIpHistory {
    fn sight(
        &self,
        key_id: &str,
        net: ClientNet,
        now: UnixMillis,
        probation_ms: u64,
        trust_first: bool,
    ) -> Result<Sighting, Deny> {
        let mut shard = self.shard(key_id);
        if let Some(list) = shard.get_mut(key_id) {
            if let Some(k) = list.iter_mut().find(|k| k.net == net) {
                k.last_seen = k.last_seen.max(now);
                k.restored = false;
                if k.usable_from == FORGOTTEN {
                    // Forgotten after a canary: seen "for the first time" again, with
                    // the key's other networks still known, so on probation.
                    k.first_seen = now;
                    k.usable_from = now.saturating_add(probation_ms);
                    return Ok(Sighting {
                        first_seen: k.first_seen,
                        usable_from: k.usable_from,
                        learned: true,
                    });
                }
                return Ok(Sighting {
                    first_seen: k.first_seen,
                    usable_from: k.usable_from,
                    learned: false,
                });
            }
        }
        let list = shard.entry(key_id.to_owned()).or_default();
        // Trust on first use: the key's very first network is known at once.
        let usable_from = if list.is_empty() && trust_first {
            now
        } else {
            now.saturating_add(probation_ms)
        };
        self.insert(
            list,
            Known {
                net,
                first_seen: now,
                usable_from,
                last_seen: now,
                restored: false,
            },
        );
        Ok(Sighting {
            first_seen: now,
            usable_from,
            learned: true,
        })
    }

    fn forget_network(&self, net: ClientNet, since: UnixMillis) -> Result<Vec<LearnedIp>, Deny> {
        let mut out = Vec::new();
        for shard in self.shards.iter() {
            let mut shard = shard.lock().unwrap_or_else(|e| e.into_inner());
            for (key_id, list) in shard.iter_mut() {
                for k in list.iter_mut() {
                    let recent = k.last_seen >= since || k.restored;
                    if k.net == net && recent && k.usable_from != FORGOTTEN {
                        k.usable_from = FORGOTTEN;
                        out.push(LearnedIp {
                            key_id: key_id.clone(),
                            net: net.to_net(),
                            first_seen: k.first_seen,
                            usable_from: FORGOTTEN,
                        });
                    }
                }
            }
        }
        out.sort_by(|a, b| a.key_id.cmp(&b.key_id));
        Ok(out)
    }
}
