//! Windowed observations behind the anomaly rules: failures and bans per client network,
//! keys per network and blocks, networks per key.
//!
//! The store is a mechanism: each call gets the rule it serves, so the thresholds live in
//! one config and a Redis implementation passes them to its Lua scripts unchanged.

use std::collections::hash_map::RandomState;
use std::collections::VecDeque;
use std::hash::BuildHasher;

use super::table::Table;
use super::{AuthFailureRule, ManyIpsRule, SharedIpRule};
use crate::limits::ClientNet;
use crate::time::UnixMillis;
use crate::Deny;

/// Bans and blocks in force for a client network.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Standing {
    /// Banned for failed authentications until then (exclusive), if in the future.
    pub banned_until: Option<UnixMillis>,
    /// Blocked for presenting many keys until then (exclusive), if in the future.
    pub blocked_until: Option<UnixMillis>,
    /// Blocked because a canary key was used from it, until then (exclusive), if in the
    /// future. Kept apart from `blocked_until`: it applies even with the shared-IP rule
    /// off or in shadow mode.
    pub tripped_until: Option<UnixMillis>,
}

impl Standing {
    /// Neither banned nor blocked.
    pub const CLEAR: Standing = Standing {
        banned_until: None,
        blocked_until: None,
        tripped_until: None,
    };
}

/// Shared state of the anomaly rules: in memory here ([`MemoryAnomalyStore`]), in Redis for
/// several replicas, so an attacker gains nothing by spreading over them. Errors mean the
/// state is unavailable ([`Deny::StateUnavailable`]); callers decide how to fail.
pub trait AnomalyStore: Send + Sync {
    /// The bans and blocks in force for `net` at `now`.
    fn standing(&self, net: ClientNet, now: UnixMillis) -> Result<Standing, Deny>;

    /// Records a failed authentication from `net`; bans `net` for `rule.ban_ms` once more
    /// than `rule.max_failures` fall inside `rule.window_ms`.
    fn auth_failure(
        &self,
        net: ClientNet,
        now: UnixMillis,
        rule: &AuthFailureRule,
    ) -> Result<Standing, Deny>;

    /// Records `net` presenting `key_id` of `account`; blocks `net` for `rule.block_ms` once
    /// it presented more than `rule.max_keys` keys or `rule.max_accounts` accounts inside
    /// `rule.window_ms`.
    fn key_presented(
        &self,
        net: ClientNet,
        key_id: &str,
        account: &str,
        now: UnixMillis,
        rule: &SharedIpRule,
    ) -> Result<Standing, Deny>;

    /// Records `key_id` used from `net`; returns how many distinct networks used it inside
    /// `rule.window_ms` (counting at most `rule.max_ips + 1`), or 0 if the store cannot
    /// track the key (its table is full: keys never share state, since the outcome is a
    /// suspension).
    fn key_seen_from(
        &self,
        key_id: &str,
        net: ClientNet,
        now: UnixMillis,
        rule: &ManyIpsRule,
    ) -> Result<usize, Deny>;

    /// Forgets the networks `key_id` was seen from, when an operator resumes the key after
    /// a many-IPs suspension: otherwise the count that suspended it would suspend it again
    /// on its next request.
    fn forget_key(&self, key_id: &str) -> Result<(), Deny>;

    /// Blocks `net` for every key until `until` (a canary key was used from it); an
    /// existing, longer block stays.
    fn trip(&self, net: ClientNet, until: UnixMillis) -> Result<(), Deny>;
}

/// Recent failed authentications of one network.
#[derive(Debug, Default)]
struct Failures {
    /// Times of the most recent failures, oldest first; at most `max_failures + 1`.
    times: VecDeque<UnixMillis>,
    banned_until: UnixMillis,
    /// The longest window any rule used on it, for sweeping.
    window_ms: u64,
}

/// What one network presented recently.
#[derive(Debug, Default)]
struct Presented {
    /// (hash of key id, last seen); at most `max_keys + 1`.
    keys: Vec<(u64, UnixMillis)>,
    /// (hash of account, last seen); at most `max_accounts + 1`.
    accounts: Vec<(u64, UnixMillis)>,
    blocked_until: UnixMillis,
    /// Canary block (see [`Standing::tripped_until`]).
    tripped_until: UnixMillis,
    window_ms: u64,
}

/// Where one key was used from recently.
#[derive(Debug, Default)]
struct SeenFrom {
    /// (network, last seen); at most `max_ips + 1`.
    nets: Vec<(ClientNet, UnixMillis)>,
    window_ms: u64,
}

/// Drops ids whose last sighting left the window, then records `id` at `now`, keeping at
/// most `max + 1` (more would not change any decision); returns the count inside the window.
fn sighting<T: PartialEq + Copy>(
    seen: &mut Vec<(T, UnixMillis)>,
    id: T,
    now: UnixMillis,
    window_ms: u64,
    max: usize,
) -> usize {
    seen.retain(|(_, at)| at.saturating_add(window_ms) > now);
    if let Some(entry) = seen.iter_mut().find(|(x, _)| *x == id) {
        entry.1 = entry.1.max(now);
    } else if seen.len() <= max {
        seen.push((id, now));
    }
    seen.len()
}

/// The in-process [`AnomalyStore`]: three capped tables and a random-keyed hash of key ids and accounts, so per-network
/// sets hold 8-byte hashes instead of strings.
///
/// At the cap, networks the failure and key tables have no room for share an overflow
/// entry per shard: a flood of new addresses is banned or blocked together (fail closed
/// for the flood) while tracked clients keep their own state. The per-key table only
/// holds authenticated keys, so it is bounded by the key store; at its cap new keys are
/// not tracked (a shared entry would suspend innocent keys).
#[derive(Debug)]
pub struct MemoryAnomalyStore {
    failures: Table<ClientNet, Failures>,
    presented: Table<ClientNet, Presented>,
    seen_from: Table<String, SeenFrom>,
    ids: RandomState,
}

impl MemoryAnomalyStore {
    /// A store whose tables hold at most `max_entries` entries each.
    pub fn new(max_entries: usize) -> Self {
        MemoryAnomalyStore {
            failures: Table::new(max_entries),
            presented: Table::new(max_entries),
            seen_from: Table::new(max_entries),
            ids: RandomState::new(),
        }
    }

    /// Drops everything no rule can see any more (windows empty, bans and blocks over) and
    /// releases the memory; the gateway calls it periodically. Returns the entries left.
    pub fn sweep(&self, now: UnixMillis) -> usize {
        let failures = self.failures.sweep(|f| {
            f.times.retain(|at| at.saturating_add(f.window_ms) > now);
            !f.times.is_empty() || f.banned_until > now
        });
        let presented = self.presented.sweep(|p| {
            let w = p.window_ms;
            p.keys.retain(|(_, at)| at.saturating_add(w) > now);
            p.accounts.retain(|(_, at)| at.saturating_add(w) > now);
            !p.keys.is_empty()
                || !p.accounts.is_empty()
                || p.blocked_until > now
                || p.tripped_until > now
        });
        let seen_from = self.seen_from.sweep(|s| {
            let w = s.window_ms;
            s.nets.retain(|(_, at)| at.saturating_add(w) > now);
            !s.nets.is_empty()
        });
        failures + presented + seen_from
    }

    fn banned_until(&self, net: ClientNet, now: UnixMillis) -> Option<UnixMillis> {
        self.failures
            .peek(&net, |f| future(f.banned_until, now))
            .flatten()
    }

    /// Entries over all tables, for metrics.
    pub fn len(&self) -> usize {
        self.failures.len() + self.presented.len() + self.seen_from.len()
    }

    /// Whether nothing is tracked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn future(until: UnixMillis, now: UnixMillis) -> Option<UnixMillis> {
    (until > now).then_some(until)
}

impl AnomalyStore for MemoryAnomalyStore {
    fn standing(&self, net: ClientNet, now: UnixMillis) -> Result<Standing, Deny> {
        // One look per table (each look hashes the network twice: shard, then entry).
        let (blocked_until, tripped_until) = self
            .presented
            .peek(&net, |p| {
                (future(p.blocked_until, now), future(p.tripped_until, now))
            })
            .unwrap_or_default();
        Ok(Standing {
            banned_until: self.banned_until(net, now),
            blocked_until,
            tripped_until,
        })
    }

    fn auth_failure(
        &self,
        net: ClientNet,
        now: UnixMillis,
        rule: &AuthFailureRule,
    ) -> Result<Standing, Deny> {
        let banned_until = self.failures.with(&net, |f| {
            f.window_ms = f.window_ms.max(rule.window_ms);
            f.times.retain(|at| at.saturating_add(rule.window_ms) > now);
            f.times.push_back(now);
            while f.times.len() > rule.max_failures as usize + 1 {
                f.times.pop_front();
            }
            if f.times.len() > rule.max_failures as usize {
                f.banned_until = f.banned_until.max(now.saturating_add(rule.ban_ms));
            }
            future(f.banned_until, now)
        });
        Ok(Standing {
            banned_until,
            ..self.standing(net, now)?
        })
    }

    fn key_presented(
        &self,
        net: ClientNet,
        key_id: &str,
        account: &str,
        now: UnixMillis,
        rule: &SharedIpRule,
    ) -> Result<Standing, Deny> {
        let key = self.ids.hash_one(key_id);
        let account = self.ids.hash_one(account);
        let (blocked_until, tripped_until) = self.presented.with(&net, |p| {
            p.window_ms = p.window_ms.max(rule.window_ms);
            let keys = sighting(&mut p.keys, key, now, rule.window_ms, rule.max_keys);
            let accounts = sighting(
                &mut p.accounts,
                account,
                now,
                rule.window_ms,
                rule.max_accounts,
            );
            if keys > rule.max_keys || accounts > rule.max_accounts {
                p.blocked_until = p.blocked_until.max(now.saturating_add(rule.block_ms));
            }
            // The entry `standing` would read: read it here, under the same lock.
            (future(p.blocked_until, now), future(p.tripped_until, now))
        });
        Ok(Standing {
            banned_until: self.banned_until(net, now),
            blocked_until,
            tripped_until,
        })
    }

    fn key_seen_from(
        &self,
        key_id: &str,
        net: ClientNet,
        now: UnixMillis,
        rule: &ManyIpsRule,
    ) -> Result<usize, Deny> {
        Ok(self
            .seen_from
            .with_own(key_id, |s| {
                s.window_ms = s.window_ms.max(rule.window_ms);
                sighting(&mut s.nets, net, now, rule.window_ms, rule.max_ips)
            })
            .unwrap_or(0))
    }

    fn forget_key(&self, key_id: &str) -> Result<(), Deny> {
        self.seen_from.remove(key_id);
        Ok(())
    }

    fn trip(&self, net: ClientNet, until: UnixMillis) -> Result<(), Deny> {
        // At the table's cap the network shares the overflow entry: the whole overflow
        // is blocked then, failing closed like the other blocks.
        self.presented.with(&net, |p| {
            p.tripped_until = p.tripped_until.max(until);
        });
        Ok(())
    }
}
