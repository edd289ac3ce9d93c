//! Anomaly rules: the patterns of a leaked key in use, stopped even for keys without an IP
//! allowlist. The January 2018 Zaif abuse used ~100 long-unused keys from 4 hosting IPs;
//! each rule below cuts off one part of that pattern:
//!
//! | rule | deny code | what it stops |
//! | --- | --- | --- |
//! | [`DormantRule`] | `key_dormant` | a key unused for N days (or never used within M days of its creation) trades or withdraws before its owner reactivates it |
//! | [`NewIpRule`] | `new_ip_probation` | a key without allowlist trades or withdraws from a network first seen minutes ago |
//! | [`ManyIpsRule`] | `too_many_ips` | a key used from more than K networks in a window: suspended |
//! | [`SharedIpRule`] | `ip_blocked` | a network presenting more than K keys or accounts in a window: blocked for a while |
//! | [`AuthFailureRule`] | `ip_banned` | a network sending more than K bad signatures or unknown keys: banned for a while |
//! | [`CanaryRule`] | `canary`, then `ip_blocked` | a leaked key set: one planted canary key used, and the network is blocked for every key, every key it used recently back on probation |
//!
//! Every rule can run in shadow mode: it is evaluated and its state kept exactly as when
//! enforced, but its verdict is [`Verdict::WouldDeny`] and the request passes (no
//! suspension either), so operators can roll rules out by reading the audit log first.
//!
//! # Where the gateway calls it
//! - [`Anomaly::check_client`] before authentication, after the IP rate limit: bans and
//!   blocks in force.
//! - [`Anomaly::auth_failed`] when a signature fails or the key is unknown.
//! - [`Anomaly::check_request`] after authentication and classification, before
//!   authorization, so keys count towards "one IP, many keys" even when authorization
//!   then refuses them.
//! - [`Anomaly::canary_used`] when a canary key's signature verified (never before: an
//!   unsigned probe naming a canary must not trip it, or anyone who guessed one canary
//!   key string could block a network at will).
//!
//! IPv6 clients are tracked per /64 ([`ClientNet`]) throughout.
//!
//! # State
//! Windowed counters, bans and blocks live behind [`AnomalyStore`] (memory or Redis);
//! known networks per key behind [`IpHistory`] (durable: memory plus write-through to the
//! database). A store error fails closed for `trade` and `withdraw`
//! ([`Deny::StateUnavailable`]) and open for reads and pre-auth checks: a read cannot
//! move funds, and every private request still has to pass authentication.

use std::net::IpAddr;

use ipnet::IpNet;

use crate::action::Action;
use crate::key::KeyRecord;
use crate::limits::ClientNet;
use crate::time::UnixMillis;
use crate::Deny;

mod history;
mod store;
mod table;

pub use history::{IpHistory, LearnedIp, MemoryIpHistory, Sighting, FORGOTTEN};
pub use store::{AnomalyStore, MemoryAnomalyStore, Standing};

const MINUTE: u64 = 60 * 1000;
const HOUR: u64 = 60 * MINUTE;
const DAY: u64 = 24 * HOUR;

/// The outcome of a rule, or of all of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing against the request.
    Allow,
    /// Refuse it.
    Deny(Deny),
    /// A rule in shadow mode would have refused it: let it pass, audit `would_deny`.
    WouldDeny(Deny),
}

impl Verdict {
    fn of(deny: Deny, shadow: bool) -> Verdict {
        if shadow {
            Verdict::WouldDeny(deny)
        } else {
            Verdict::Deny(deny)
        }
    }

    /// `Err` only for [`Verdict::Deny`]: whether the request goes on.
    pub fn result(self) -> Result<(), Deny> {
        match self {
            Verdict::Deny(d) => Err(d),
            Verdict::Allow | Verdict::WouldDeny(_) => Ok(()),
        }
    }

    /// The deny code, enforced or not.
    pub fn deny(self) -> Option<Deny> {
        match self {
            Verdict::Allow => None,
            Verdict::Deny(d) | Verdict::WouldDeny(d) => Some(d),
        }
    }

    /// Keeps the more severe of two verdicts: an enforced deny over a would-deny over
    /// allow; between equals, the first.
    fn or(self, other: Verdict) -> Verdict {
        match (self, other) {
            (Verdict::Deny(_), _) => self,
            (_, Verdict::Deny(_)) => other,
            (Verdict::WouldDeny(_), _) => self,
            _ => other,
        }
    }
}

/// A key unused for `after_ms` may read, but not trade or withdraw, until reactivated.
/// A key never used at all is dormant much sooner, `first_use_within_ms` after its
/// creation (DESIGN.md §6): a forgotten, never-used key that leaks later must not hand
/// trust on first use to whoever found it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DormantRule {
    /// Inactivity after which a key is dormant (default 90 days).
    pub after_ms: u64,
    /// How long a never-used key stays usable after its creation (default 7 days).
    pub first_use_within_ms: u64,
    /// Report instead of enforcing.
    pub shadow: bool,
}

impl Default for DormantRule {
    fn default() -> Self {
        DormantRule {
            after_ms: 90 * DAY,
            first_use_within_ms: 7 * DAY,
            shadow: false,
        }
    }
}

/// For keys without an allowlist, trade and withdraw wait `probation_ms` after a network
/// is first seen (the key's very first network is trusted at once).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewIpRule {
    /// The probation (default 60 minutes).
    pub probation_ms: u64,
    /// Networks remembered per key.
    pub max_per_key: usize,
    /// Report instead of enforcing.
    pub shadow: bool,
}

impl Default for NewIpRule {
    fn default() -> Self {
        NewIpRule {
            probation_ms: 60 * MINUTE,
            max_per_key: 64,
            shadow: false,
        }
    }
}

/// A key seen from more than `max_ips` networks inside `window_ms` is suspended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManyIpsRule {
    /// Distinct networks allowed inside the window (default 5).
    pub max_ips: usize,
    /// The window (default 1 hour).
    pub window_ms: u64,
    /// Apply to keys with an allowlist too (default no: their networks are already bounded
    /// by the operator, and a large NAT pool would trip the rule).
    pub include_allowlisted: bool,
    /// Report instead of enforcing.
    pub shadow: bool,
}

impl Default for ManyIpsRule {
    fn default() -> Self {
        ManyIpsRule {
            max_ips: 5,
            window_ms: HOUR,
            include_allowlisted: false,
            shadow: false,
        }
    }
}

/// A network presenting more than `max_keys` keys or `max_accounts` accounts inside
/// `window_ms` is blocked for `block_ms` (the Zaif pattern: many stolen keys, few IPs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedIpRule {
    /// Distinct keys allowed inside the window (default 5).
    pub max_keys: usize,
    /// Distinct accounts allowed inside the window (default 3).
    pub max_accounts: usize,
    /// The window (default 1 hour).
    pub window_ms: u64,
    /// How long a block lasts (default 1 hour).
    pub block_ms: u64,
    /// Networks never blocked by this rule (an office NAT with many traders).
    pub exempt: Vec<IpNet>,
    /// Report instead of enforcing.
    pub shadow: bool,
}

impl Default for SharedIpRule {
    fn default() -> Self {
        SharedIpRule {
            max_keys: 5,
            max_accounts: 3,
            window_ms: HOUR,
            block_ms: HOUR,
            exempt: Vec::new(),
            shadow: false,
        }
    }
}

/// A network with more than `max_failures` failed authentications (bad signature,
/// unknown key) inside `window_ms` is banned for `ban_ms`, checked before authentication.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthFailureRule {
    /// Failures allowed inside the window (default 10).
    pub max_failures: u32,
    /// The window (default 1 minute).
    pub window_ms: u64,
    /// How long a ban lasts (default 15 minutes).
    pub ban_ms: u64,
    /// Report instead of enforcing.
    pub shadow: bool,
}

impl Default for AuthFailureRule {
    fn default() -> Self {
        AuthFailureRule {
            max_failures: 10,
            window_ms: MINUTE,
            ban_ms: 15 * MINUTE,
            shadow: false,
        }
    }
}

/// What a canary key's use does: the client network is blocked for every key for
/// `block_ms`, and every key seen from it within the last `lookback_ms` must wait out
/// new-IP probation there again (the leaked set loses its value at once). A canary is
/// never forwarded, whatever this says; the rule has no shadow mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CanaryRule {
    /// How long the network stays blocked (default 24 hours).
    pub block_ms: u64,
    /// Keys seen from the network this recently go back on probation (default 24 hours).
    pub lookback_ms: u64,
}

impl Default for CanaryRule {
    fn default() -> Self {
        CanaryRule {
            block_ms: DAY,
            lookback_ms: DAY,
        }
    }
}

/// What [`Anomaly::canary_used`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CanaryTrip {
    /// The network is blocked for every key until then.
    pub blocked_until: UnixMillis,
    /// Networks no longer known for their keys: persist them (their `usable_from` is
    /// [`FORGOTTEN`], so a restart does not bring the trust back).
    pub forgotten: Vec<LearnedIp>,
}

/// The anomaly rules; `None` turns a rule off.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnomalyConfig {
    /// Dormant keys.
    pub dormant: Option<DormantRule>,
    /// New-IP probation.
    pub new_ip: Option<NewIpRule>,
    /// One key, many networks.
    pub many_ips: Option<ManyIpsRule>,
    /// One network, many keys.
    pub shared_ip: Option<SharedIpRule>,
    /// Failed authentications.
    pub auth_failures: Option<AuthFailureRule>,
    /// Canary keys (always on: a canary is never forwarded).
    pub canary: CanaryRule,
    /// The most entries each in-memory table holds (see [`MemoryAnomalyStore`]).
    pub max_entries: usize,
}

impl Default for AnomalyConfig {
    /// Every rule on, enforced, with its defaults.
    fn default() -> Self {
        AnomalyConfig {
            dormant: Some(DormantRule::default()),
            new_ip: Some(NewIpRule::default()),
            many_ips: Some(ManyIpsRule::default()),
            shared_ip: Some(SharedIpRule::default()),
            auth_failures: Some(AuthFailureRule::default()),
            canary: CanaryRule::default(),
            max_entries: 100_000,
        }
    }
}

/// Why the gateway must suspend a key (durably, then alert the owner).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SuspendReason {
    /// Used from too many networks ([`ManyIpsRule`]).
    TooManyIps,
}

impl SuspendReason {
    /// The reason as recorded with the suspension and in the audit log.
    pub const fn as_str(self) -> &'static str {
        match self {
            SuspendReason::TooManyIps => "too_many_ips",
        }
    }
}

/// An authenticated, classified request as the rules see it.
#[derive(Debug, Clone, Copy)]
pub struct AnomalyRequest<'a> {
    /// The key that signed it.
    pub key: &'a KeyRecord,
    /// Its action.
    pub action: Action,
    /// The client IP.
    pub client_ip: IpAddr,
    /// The key's last use as the gateway recorded it (see [`AnomalyDecision::touch`]);
    /// `None` if never used, in which case dormancy counts from its creation.
    pub last_used: Option<UnixMillis>,
    /// Now.
    pub now: UnixMillis,
}

/// The rules' decision on one request, and what the gateway must do about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnomalyDecision {
    /// Allow, deny or would-deny.
    pub verdict: Verdict,
    /// Suspend the key now (enforced [`ManyIpsRule`]).
    pub suspend: Option<SuspendReason>,
    /// If the request is forwarded, record it as the key's last use. `false` for reads by
    /// a dormant key: otherwise one read would wake the key and let the next request trade.
    pub touch: bool,
    /// A network learned for the key: persist it ([`IpHistory`] is durable state).
    pub learned: Option<LearnedIp>,
}

/// Whether `key` is dormant at `now`: unused (by the gateway's record of use) for at
/// least `rule.after_ms`, or never used and created at least `rule.first_use_within_ms`
/// ago. Reactivation records a use, so a reactivated never-used key gets the long rule.
pub fn is_dormant(
    rule: &DormantRule,
    key: &KeyRecord,
    last_used: Option<UnixMillis>,
    now: UnixMillis,
) -> bool {
    match last_used {
        // A last use before creation (bad data) counts as the creation itself.
        Some(used) => now >= used.max(key.created_at).saturating_add(rule.after_ms),
        None => {
            now >= key
                .created_at
                .saturating_add(rule.first_use_within_ms.min(rule.after_ms))
        }
    }
}

/// The anomaly rules over their state.
#[derive(Debug)]
pub struct Anomaly<S: AnomalyStore = MemoryAnomalyStore, H: IpHistory = MemoryIpHistory> {
    cfg: AnomalyConfig,
    store: S,
    history: H,
}

impl Anomaly {
    /// The rules of `cfg` over fresh in-memory state (`history`: restore it first).
    pub fn in_memory(cfg: AnomalyConfig, history: MemoryIpHistory) -> Self {
        let store = MemoryAnomalyStore::new(cfg.max_entries);
        Anomaly::new(cfg, store, history)
    }

    /// Sweeps the in-memory tables; the gateway calls it periodically. Returns the entries
    /// left.
    pub fn sweep(&self, now: UnixMillis) -> usize {
        self.store.sweep(now)
    }
}

impl<S: AnomalyStore, H: IpHistory> Anomaly<S, H> {
    /// The rules of `cfg` over `store` and `history`.
    pub fn new(cfg: AnomalyConfig, store: S, history: H) -> Self {
        Anomaly {
            cfg,
            store,
            history,
        }
    }

    /// The rules.
    pub fn config(&self) -> &AnomalyConfig {
        &self.cfg
    }

    /// The state store.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// The network history.
    pub fn history(&self) -> &H {
        &self.history
    }

    /// An operator resumed `key_id`: its many-IPs count starts again. The networks it
    /// learned stay learned (forgetting them would hand trust-on-first-use to whoever
    /// uses the key next).
    pub fn key_resumed(&self, key_id: &str) -> Result<(), Deny> {
        self.store.forget_key(key_id)
    }

    /// Before authentication: a ban or block in force for the client's network.
    pub fn check_client(&self, ip: IpAddr, now: UnixMillis) -> Verdict {
        let Ok(standing) = self.store.standing(ClientNet::of(ip), now) else {
            return Verdict::Allow;
        };
        self.standing_verdict(standing)
    }

    /// The verdict on a client network's bans and blocks (a shared store's cache of them
    /// before authentication).
    pub fn standing_verdict(&self, standing: Standing) -> Verdict {
        // A canary's network is blocked whatever the other rules say: it is known to hold
        // a leaked key set.
        if standing.tripped_until.is_some() {
            return Verdict::Deny(Deny::IpBlocked);
        }
        let mut verdict = Verdict::Allow;
        if let (Some(_), Some(rule)) = (standing.banned_until, &self.cfg.auth_failures) {
            verdict = verdict.or(Verdict::of(Deny::IpBanned, rule.shadow));
        }
        if let (Some(_), Some(rule)) = (standing.blocked_until, &self.cfg.shared_ip) {
            verdict = verdict.or(Verdict::of(Deny::IpBlocked, rule.shadow));
        }
        verdict
    }

    /// After a failed authentication (invalid signature, unknown key) from `ip`: counts it,
    /// and returns the ban verdict if the network is now banned (the request itself is
    /// refused for its own reason either way; use this to audit and alert).
    pub fn auth_failed(&self, ip: IpAddr, now: UnixMillis) -> Verdict {
        let Some(rule) = &self.cfg.auth_failures else {
            return Verdict::Allow;
        };
        match self.store.auth_failure(ClientNet::of(ip), now, rule) {
            Ok(s) if s.banned_until.is_some() => Verdict::of(Deny::IpBanned, rule.shadow),
            _ => Verdict::Allow,
        }
    }

    /// A canary key's signature verified from `ip`: blocks the client network for every
    /// key for [`CanaryRule::block_ms`] and forgets it as known for every key seen from
    /// it within [`CanaryRule::lookback_ms`], so those keys wait out new-IP probation
    /// there again once the block ends. The request itself is refused as
    /// [`Deny::Canary`] by the caller.
    ///
    /// The block is applied even when the history cannot answer (then `Err`): a store
    /// error must not spare the network.
    pub fn canary_used(&self, ip: IpAddr, now: UnixMillis) -> Result<CanaryTrip, Deny> {
        let net = ClientNet::of(ip);
        let rule = &self.cfg.canary;
        let blocked_until = now.saturating_add(rule.block_ms);
        let blocked = self.store.trip(net, blocked_until);
        let forgotten = self
            .history
            .forget_network(net, now.saturating_sub(rule.lookback_ms))?;
        blocked?;
        Ok(CanaryTrip {
            blocked_until,
            forgotten,
        })
    }

    /// After authentication and classification: records the sighting and decides.
    ///
    /// Rules are applied in this order, and the first enforced deny ends the evaluation
    /// (a blocked network learns nothing for the key): one network with many keys, one
    /// key from many networks, dormancy, new-network probation. Without an enforced deny,
    /// the first would-deny is reported.
    pub fn check_request(&self, req: &AnomalyRequest<'_>) -> AnomalyDecision {
        let net = ClientNet::of(req.client_ip);
        let moves_funds = matches!(req.action, Action::Trade | Action::Withdraw);
        let no_allowlist = req.key.allow_ips.is_empty();
        let mut decision = AnomalyDecision {
            verdict: Verdict::Allow,
            suspend: None,
            touch: true,
            learned: None,
        };
        // A store that cannot answer: refuse what moves funds, let reads through.
        let unavailable = |decision: &mut AnomalyDecision| {
            if moves_funds {
                decision.verdict = decision.verdict.or(Verdict::Deny(Deny::StateUnavailable));
            }
        };

        if let Some(rule) = &self.cfg.shared_ip {
            let exempt = rule
                .exempt
                .iter()
                .any(|n| n.contains(&crate::key::canonical_ip(req.client_ip)));
            if !exempt {
                match self.store.key_presented(
                    net,
                    &req.key.key_id,
                    &req.key.account,
                    req.now,
                    rule,
                ) {
                    Ok(s) if s.blocked_until.is_some() => {
                        decision.verdict = decision
                            .verdict
                            .or(Verdict::of(Deny::IpBlocked, rule.shadow));
                    }
                    Ok(_) => {}
                    Err(_) => unavailable(&mut decision),
                }
            }
        }
        if decision.verdict.result().is_err() {
            decision.touch = false;
            return decision;
        }

        if let Some(rule) = &self.cfg.many_ips {
            if no_allowlist || rule.include_allowlisted {
                match self
                    .store
                    .key_seen_from(&req.key.key_id, net, req.now, rule)
                {
                    Ok(n) if n > rule.max_ips => {
                        decision.verdict = decision
                            .verdict
                            .or(Verdict::of(Deny::TooManyIps, rule.shadow));
                        if !rule.shadow {
                            decision.suspend = Some(SuspendReason::TooManyIps);
                        }
                    }
                    Ok(_) => {}
                    Err(_) => unavailable(&mut decision),
                }
            }
        }
        if decision.verdict.result().is_err() {
            decision.touch = false;
            return decision;
        }

        if let Some(rule) = &self.cfg.dormant {
            if is_dormant(rule, req.key, req.last_used, req.now) {
                if moves_funds {
                    decision.verdict = decision
                        .verdict
                        .or(Verdict::of(Deny::KeyDormant, rule.shadow));
                } else {
                    decision.touch = false;
                }
            }
        }

        if let Some(rule) = &self.cfg.new_ip {
            let ip = crate::key::canonical_ip(req.client_ip);
            // A network trusted at creation is known from the start; and because the key
            // then already has a known network, the first other one is on probation
            // instead of being trusted on first use.
            let trusted = req.key.trusted_ips.iter().any(|n| n.contains(&ip));
            if no_allowlist && !trusted {
                let trust_first = req.key.trusted_ips.is_empty();
                match self.history.sight(
                    &req.key.key_id,
                    net,
                    req.now,
                    rule.probation_ms,
                    trust_first,
                ) {
                    Ok(sighting) => {
                        if sighting.learned {
                            decision.learned = Some(LearnedIp {
                                key_id: req.key.key_id.clone(),
                                net: net.to_net(),
                                first_seen: sighting.first_seen,
                                usable_from: sighting.usable_from,
                            });
                        }
                        if moves_funds && req.now < sighting.usable_from {
                            decision.verdict = decision
                                .verdict
                                .or(Verdict::of(Deny::NewIpProbation, rule.shadow));
                        }
                    }
                    Err(_) => unavailable(&mut decision),
                }
            }
        }
        if decision.verdict.result().is_err() {
            decision.touch = false;
        }
        decision
    }
}

#[cfg(test)]
mod tests;
