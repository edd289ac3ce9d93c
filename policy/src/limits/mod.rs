//! Rate limits: keyed GCRA limiters (governor) per client network before authentication,
//! and per key, per account and per action class after it.
//!
//! # Why governor, and why in process
//! GCRA keeps one 64-bit timestamp per key and decides with one compare-and-swap, so the
//! pre-auth check costs far less than the HMAC it protects. governor's state store is
//! synchronous, so a shared (Redis) limiter cannot sit behind it; in the distributed
//! setup each replica limits on its own and the shared counters that must be exact —
//! velocity, bans — have their own traits ([`crate::velocity`], [`crate::anomaly`]).
//!
//! # Bounded memory
//! Every limiter's keyed state lives in a [`BoundedState`] with a hard cap
//! ([`RateLimitConfig::max_entries`]). [`RateLimits::sweep`], which the gateway calls
//! periodically, drops entries indistinguishable from a fresh bucket (governor's
//! `retain_recent`) and returns their memory (`shrink_to_fit`). Between sweeps a flood of
//! new keys (random IPv6 /64s, say) fills the map up to the cap; past it, newcomers share
//! one overflow bucket, i.e. they are limited together as if they were one client (fail
//! closed for the flood), while clients already tracked keep their own buckets. Nothing is
//! evicted early, so a flood can neither grow memory nor reset anyone's bucket.
//!
//! # Keys of the buckets
//! IPv4 clients are limited per address, IPv6 clients per /64 ([`ClientNet`]): one host
//! usually gets a whole /64, so per-address buckets would give it 2^64 of them.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use governor::clock::{Clock as GovernorClock, DefaultClock};
use governor::middleware::NoOpMiddleware;
use governor::{Quota, RateLimiter};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use crate::action::Action;
use crate::key::{canonical_ip, KeyRecord};
use crate::Deny;

pub mod headers;
mod store;

pub use store::BoundedState;

/// The network a client is limited and tracked as: an IPv4 address, or the /64 an IPv6
/// address is in. IPv4-mapped IPv6 addresses count as their IPv4 address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ClientNet {
    /// One IPv4 address.
    V4(Ipv4Addr),
    /// The upper 64 bits of an IPv6 address.
    V6(u64),
}

impl ClientNet {
    /// The network `ip` belongs to.
    pub fn of(ip: IpAddr) -> ClientNet {
        match canonical_ip(ip) {
            IpAddr::V4(v4) => ClientNet::V4(v4),
            IpAddr::V6(v6) => ClientNet::V6((u128::from(v6) >> 64) as u64),
        }
    }

    /// As a CIDR (`192.0.2.1/32`, `2001:db8::/64`), for storage and display.
    pub fn to_net(self) -> IpNet {
        match self {
            ClientNet::V4(v4) => IpNet::V4(Ipv4Net::from(v4)),
            ClientNet::V6(prefix) => {
                let addr = Ipv6Addr::from(u128::from(prefix) << 64);
                IpNet::V6(Ipv6Net::new(addr, 64).expect("64 is a valid IPv6 prefix length"))
            }
        }
    }

    /// Parses what [`ClientNet::to_net`] prints: an IPv4 /32 or an IPv6 /64 (a bare address
    /// is taken as its network). Other prefix lengths are refused.
    pub fn from_net(net: IpNet) -> Option<ClientNet> {
        match net {
            IpNet::V4(v4) if v4.prefix_len() == 32 => Some(ClientNet::of(IpAddr::V4(v4.addr()))),
            IpNet::V6(v6) if v6.prefix_len() == 64 || v6.prefix_len() == 128 => {
                Some(ClientNet::of(IpAddr::V6(v6.addr())))
            }
            _ => None,
        }
    }
}

impl fmt::Display for ClientNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientNet::V4(v4) => v4.fmt(f),
            ClientNet::V6(_) => self.to_net().fmt(f),
        }
    }
}

/// A rate: `count` requests per `per`, with bursts of up to `burst` requests.
///
/// As a GCRA quota: one request is replenished every `per / count`, and a full bucket holds
/// `burst`. With the default `burst = count` it is exactly "`count` per `per`".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    count: NonZeroU32,
    per: Duration,
    burst: NonZeroU32,
}

/// Why a [`Rate`] cannot be built.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RateError {
    /// `count` or `burst` is zero: use no limit instead (an absent rate).
    #[error("a rate needs a count and burst of at least 1")]
    Zero,
    /// `per / count` is shorter than a nanosecond.
    #[error("the period is too short for the count")]
    TooFast,
}

impl Rate {
    /// `count` requests per `per`, bursts of `burst` (default: `count`).
    pub fn new(count: u32, per: Duration, burst: Option<u32>) -> Result<Rate, RateError> {
        let count = NonZeroU32::new(count).ok_or(RateError::Zero)?;
        let burst = match burst {
            Some(b) => NonZeroU32::new(b).ok_or(RateError::Zero)?,
            None => count,
        };
        if (per / count.get()).is_zero() {
            return Err(RateError::TooFast);
        }
        Ok(Rate { count, per, burst })
    }

    /// `count` requests per second.
    pub fn per_second(count: u32) -> Result<Rate, RateError> {
        Rate::new(count, Duration::from_secs(1), None)
    }

    /// `count` requests per minute.
    pub fn per_minute(count: u32) -> Result<Rate, RateError> {
        Rate::new(count, Duration::from_secs(60), None)
    }

    /// The same rate with another burst size.
    pub fn with_burst(self, burst: u32) -> Result<Rate, RateError> {
        Rate::new(self.count.get(), self.per, Some(burst))
    }

    /// Requests per period.
    pub fn count(&self) -> u32 {
        self.count.get()
    }

    /// The period.
    pub fn per(&self) -> Duration {
        self.per
    }

    /// The largest burst.
    pub fn burst(&self) -> u32 {
        self.burst.get()
    }

    fn quota(&self) -> Quota {
        Quota::with_period(self.per / self.count.get())
            .expect("checked non-zero in Rate::new")
            .allow_burst(self.burst)
    }

    /// The policy as the headers describe it: `burst` requests (`q`) per the time a full
    /// bucket takes to refill (`w`, whole seconds, rounded up, at least 1).
    pub fn policy(&self) -> (u32, u64) {
        let refill = (self.per / self.count.get()).as_nanos() * u128::from(self.burst.get());
        let secs = refill.div_ceil(1_000_000_000).max(1);
        (self.burst.get(), u64::try_from(secs).unwrap_or(u64::MAX))
    }
}

/// The per-key limits of one tier. `None` means no limit of that kind.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RateTier {
    /// All requests of one key.
    pub key: Option<Rate>,
    /// All requests of one account (all its keys in this tier together).
    pub account: Option<Rate>,
    /// `read` requests of one key.
    pub read: Option<Rate>,
    /// `trade` requests of one key.
    pub trade: Option<Rate>,
    /// `withdraw` requests of one key.
    pub withdraw: Option<Rate>,
}

/// Rate limit settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimitConfig {
    /// Per client network (IPv4 address or IPv6 /64), before authentication. Public
    /// endpoints are limited by this alone.
    pub ip: Option<Rate>,
    /// Tiers by name.
    pub tiers: BTreeMap<String, RateTier>,
    /// The tier of keys not named in `key_tiers`; must be in `tiers`.
    pub default_tier: String,
    /// Per-key overrides: key id → tier name (each must be in `tiers`).
    pub key_tiers: HashMap<String, String>,
    /// The most entries one limiter holds; see the module docs for what happens past it.
    pub max_entries: usize,
}

impl RateLimitConfig {
    /// The per-key limits a request of `action` by `key_id` (of `account`) must pass, in
    /// the order the in-process limiter checks them, each with the subject it counts
    /// (the key id, or the account). A shared (Redis) limiter applies the same list.
    pub fn key_rates<'a>(
        &'a self,
        key_id: &'a str,
        account: &'a str,
        action: Action,
    ) -> impl Iterator<Item = (LimitKind, Rate, &'a str)> + 'a {
        let tier_name = self.key_tiers.get(key_id).unwrap_or(&self.default_tier);
        let tier = self.tiers.get(tier_name);
        let class = tier.and_then(|t| match action {
            Action::Public => None,
            Action::Read => t.read.map(|r| (LimitKind::Read, r)),
            Action::Trade => t.trade.map(|r| (LimitKind::Trade, r)),
            Action::Withdraw => t.withdraw.map(|r| (LimitKind::Withdraw, r)),
        });
        let public = action == Action::Public;
        let key = tier.and_then(|t| t.key).filter(|_| !public);
        let acct = tier.and_then(|t| t.account).filter(|_| !public);
        class
            .map(|(k, r)| (k, r, key_id))
            .into_iter()
            .chain(key.map(|r| (LimitKind::Key, r, key_id)))
            .chain(acct.map(|r| (LimitKind::Account, r, account)))
    }
}

impl Default for RateLimitConfig {
    /// One empty `default` tier (no per-key limits), no IP limit, 100 000 entries a limiter.
    fn default() -> Self {
        RateLimitConfig {
            ip: None,
            tiers: BTreeMap::from([("default".to_owned(), RateTier::default())]),
            default_tier: "default".to_owned(),
            key_tiers: HashMap::new(),
            max_entries: 100_000,
        }
    }
}

/// A rate limit configuration that names a tier it does not define.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitsConfigError {
    /// `default_tier` or a `key_tiers` value is not a tier.
    #[error("unknown rate limit tier `{0}`")]
    UnknownTier(String),
}

/// Which limit refused a request; its name is the policy name in the headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LimitKind {
    /// Per client network, before authentication.
    Ip,
    /// Per key.
    Key,
    /// Per account.
    Account,
    /// Per key, `read` actions.
    Read,
    /// Per key, `trade` actions.
    Trade,
    /// Per key, `withdraw` actions.
    Withdraw,
}

impl LimitKind {
    /// The policy name used in `RateLimit-Policy` / `RateLimit` and metrics.
    pub const fn as_str(self) -> &'static str {
        match self {
            LimitKind::Ip => "ip",
            LimitKind::Key => "key",
            LimitKind::Account => "account",
            LimitKind::Read => "read",
            LimitKind::Trade => "trade",
            LimitKind::Withdraw => "withdraw",
        }
    }
}

/// A request refused by a rate limit: everything the 429 needs, `Copy` and allocation-free.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimited {
    /// The limit that refused it.
    pub kind: LimitKind,
    /// Its quota (`q`): requests per window.
    pub quota: u32,
    /// Its window (`w`) in seconds.
    pub window_secs: u64,
    /// How long until one more request would conform, in milliseconds (rounded up).
    pub wait_ms: u64,
}

impl RateLimited {
    /// `Retry-After` in seconds: the wait rounded up, at least 1.
    pub fn retry_after_secs(&self) -> u64 {
        headers::retry_after_secs(self.wait_ms)
    }

    /// The `RateLimit-Policy` header value, e.g. `"key";q=10;w=1`.
    pub fn policy_header(&self) -> String {
        headers::ratelimit_policy(self.kind.as_str(), self.quota, self.window_secs)
    }

    /// The `RateLimit` header value, e.g. `"key";r=0;t=1`; `t` equals `Retry-After`.
    pub fn header(&self) -> String {
        headers::ratelimit(self.kind.as_str(), 0, self.retry_after_secs())
    }
}

impl fmt::Display for RateLimited {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} rate limit ({} per {} s) exceeded; retry in {} ms",
            self.kind.as_str(),
            self.quota,
            self.window_secs,
            self.wait_ms
        )
    }
}

impl std::error::Error for RateLimited {}

impl From<RateLimited> for Deny {
    fn from(_: RateLimited) -> Deny {
        Deny::RateLimited
    }
}

type GcraLimiter<K, C> =
    RateLimiter<K, BoundedState<K>, C, NoOpMiddleware<<C as GovernorClock>::Instant>>;

/// One keyed limiter and what its 429 says about it.
struct Keyed<K: std::hash::Hash + Eq + Clone, C: GovernorClock> {
    kind: LimitKind,
    quota: u32,
    window_secs: u64,
    limiter: GcraLimiter<K, C>,
    overflow_hits: Arc<AtomicU64>,
}

impl<K: std::hash::Hash + Eq + Clone, C: GovernorClock> Keyed<K, C> {
    fn new(kind: LimitKind, rate: Rate, cap: usize, clock: C) -> Self {
        let (quota, window_secs) = rate.policy();
        let state = BoundedState::new(cap);
        let overflow_hits = state.overflow_counter();
        Keyed {
            kind,
            quota,
            window_secs,
            limiter: RateLimiter::new(rate.quota(), state, clock),
            overflow_hits,
        }
    }

    fn check(&self, key: &K) -> Result<(), RateLimited> {
        self.limiter.check_key(key).map_err(|not_until| {
            let wait = not_until.wait_time_from(self.limiter.clock().now());
            RateLimited {
                kind: self.kind,
                quota: self.quota,
                window_secs: self.window_secs,
                wait_ms: u64::try_from(wait.as_nanos().div_ceil(1_000_000)).unwrap_or(u64::MAX),
            }
        })
    }

    fn sweep(&self) -> usize {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
        self.limiter.len()
    }

    fn len(&self) -> usize {
        self.limiter.len()
    }

    fn overflow_hits(&self) -> u64 {
        self.overflow_hits.load(Ordering::Relaxed)
    }
}

fn keyed<K: std::hash::Hash + Eq + Clone, C: GovernorClock + Clone>(
    kind: LimitKind,
    rate: Option<Rate>,
    cap: usize,
    clock: &C,
) -> Option<Keyed<K, C>> {
    rate.map(|r| Keyed::new(kind, r, cap, clock.clone()))
}

/// The limiters of one tier.
struct TierLimiters<C: GovernorClock> {
    key: Option<Keyed<String, C>>,
    account: Option<Keyed<String, C>>,
    read: Option<Keyed<String, C>>,
    trade: Option<Keyed<String, C>>,
    withdraw: Option<Keyed<String, C>>,
}

impl<C: GovernorClock> TierLimiters<C> {
    fn all(&self) -> impl Iterator<Item = &Keyed<String, C>> {
        [
            &self.key,
            &self.account,
            &self.read,
            &self.trade,
            &self.withdraw,
        ]
        .into_iter()
        .flatten()
    }
}

/// All rate limiters of the gateway.
///
/// Generic over governor's clock so tests drive it with `FakeRelativeClock`; production
/// uses governor's monotonic default clock (wall-clock jumps must not refill buckets).
pub struct RateLimits<C: GovernorClock = DefaultClock> {
    ip: Option<Keyed<ClientNet, C>>,
    tiers: Vec<(String, TierLimiters<C>)>,
    default_tier: usize,
    key_tiers: HashMap<String, usize>,
}

impl<C: GovernorClock> fmt::Debug for RateLimits<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimits")
            .field(
                "tiers",
                &self.tiers.iter().map(|t| &t.0).collect::<Vec<_>>(),
            )
            .field("entries", &self.entries())
            .finish_non_exhaustive()
    }
}

impl RateLimits<DefaultClock> {
    /// Limiters for `cfg` on the real monotonic clock.
    pub fn new(cfg: &RateLimitConfig) -> Result<Self, LimitsConfigError> {
        RateLimits::with_clock(cfg, DefaultClock::default())
    }
}

impl<C: GovernorClock + Clone> RateLimits<C> {
    /// Limiters for `cfg` on `clock`.
    pub fn with_clock(cfg: &RateLimitConfig, clock: C) -> Result<Self, LimitsConfigError> {
        let cap = cfg.max_entries;
        let tiers: Vec<(String, TierLimiters<C>)> = cfg
            .tiers
            .iter()
            .map(|(name, t)| {
                let limiters = TierLimiters {
                    key: keyed(LimitKind::Key, t.key, cap, &clock),
                    account: keyed(LimitKind::Account, t.account, cap, &clock),
                    read: keyed(LimitKind::Read, t.read, cap, &clock),
                    trade: keyed(LimitKind::Trade, t.trade, cap, &clock),
                    withdraw: keyed(LimitKind::Withdraw, t.withdraw, cap, &clock),
                };
                (name.clone(), limiters)
            })
            .collect();
        let index = |name: &str| {
            tiers
                .iter()
                .position(|(n, _)| n == name)
                .ok_or_else(|| LimitsConfigError::UnknownTier(name.to_owned()))
        };
        let default_tier = index(&cfg.default_tier)?;
        let key_tiers = cfg
            .key_tiers
            .iter()
            .map(|(key, tier)| Ok((key.clone(), index(tier)?)))
            .collect::<Result<_, LimitsConfigError>>()?;
        Ok(RateLimits {
            ip: keyed(LimitKind::Ip, cfg.ip, cap, &clock),
            tiers,
            default_tier,
            key_tiers,
        })
    }
}

impl<C: GovernorClock> RateLimits<C> {
    /// The pre-authentication check: one GCRA step on the client's network. Runs before any
    /// signature work so a flood cannot spend the gateway's CPU on HMACs.
    pub fn check_ip(&self, ip: IpAddr) -> Result<(), RateLimited> {
        match &self.ip {
            Some(limiter) => limiter.check(&ClientNet::of(ip)),
            None => Ok(()),
        }
    }

    /// The post-authentication check for an authenticated `key` doing `action`: the action
    /// class, then the key, then the account, in the key's tier.
    ///
    /// As with any sequence of GCRA checks, a request refused by a later limit has already
    /// spent a cell of the earlier ones; refused requests are meant to cost the client.
    /// `Public` actions have no per-key limit.
    pub fn check_key(&self, key: &KeyRecord, action: Action) -> Result<(), RateLimited> {
        let tier = &self.tiers[self.tier_index(&key.key_id)].1;
        let class = match action {
            Action::Public => return Ok(()),
            Action::Read => &tier.read,
            Action::Trade => &tier.trade,
            Action::Withdraw => &tier.withdraw,
        };
        if let Some(limiter) = class {
            limiter.check(&key.key_id)?;
        }
        if let Some(limiter) = &tier.key {
            limiter.check(&key.key_id)?;
        }
        if let Some(limiter) = &tier.account {
            limiter.check(&key.account)?;
        }
        Ok(())
    }

    /// The name of the tier `key_id` is limited by.
    pub fn tier_of(&self, key_id: &str) -> &str {
        &self.tiers[self.tier_index(key_id)].0
    }

    fn tier_index(&self, key_id: &str) -> usize {
        if self.key_tiers.is_empty() {
            return self.default_tier;
        }
        self.key_tiers
            .get(key_id)
            .copied()
            .unwrap_or(self.default_tier)
    }

    fn limiters(&self) -> impl Iterator<Item = LimiterRef<'_, C>> {
        self.ip.iter().map(LimiterRef::Net).chain(
            self.tiers
                .iter()
                .flat_map(|t| t.1.all().map(LimiterRef::Str)),
        )
    }

    /// Drops every bucket that is as good as fresh and returns the memory; the gateway
    /// calls this periodically (every few seconds). Returns the entries left.
    pub fn sweep(&self) -> usize {
        self.limiters().map(|l| l.sweep()).sum()
    }

    /// Entries over all limiters, for metrics.
    pub fn entries(&self) -> usize {
        self.limiters().map(|l| l.len()).sum()
    }

    /// Decisions made on the shared overflow buckets (limiters at their cap), for metrics
    /// and alerts: a non-zero rate means a flood of new clients.
    pub fn overflow_hits(&self) -> u64 {
        self.limiters().map(|l| l.overflow_hits()).sum()
    }
}

/// A limiter of either key type, so sweeps and metrics iterate them all.
enum LimiterRef<'a, C: GovernorClock> {
    Net(&'a Keyed<ClientNet, C>),
    Str(&'a Keyed<String, C>),
}

impl<C: GovernorClock> LimiterRef<'_, C> {
    fn sweep(&self) -> usize {
        match self {
            LimiterRef::Net(l) => l.sweep(),
            LimiterRef::Str(l) => l.sweep(),
        }
    }

    fn len(&self) -> usize {
        match self {
            LimiterRef::Net(l) => l.len(),
            LimiterRef::Str(l) => l.len(),
        }
    }

    fn overflow_hits(&self) -> u64 {
        match self {
            LimiterRef::Net(l) => l.overflow_hits(),
            LimiterRef::Str(l) => l.overflow_hits(),
        }
    }
}

#[cfg(test)]
mod tests;
