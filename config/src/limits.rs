//! `[limits]`: the policy's [`RateLimitConfig`] — a pre-authentication limit per client
//! network, and per-key tiers of limits per key, account and action class.
//!
//! ```toml
//! [limits]
//! ip = { count = 50, per = "1s", burst = 100 }
//! default_tier = "default"
//! [limits.tiers.default]
//! key = { count = 10, per = "1s", burst = 20 }
//! withdraw = { count = 5, per = "1m" }
//! [limits.key_tiers]
//! kg_0123456789abcdef = "pro"
//! ```

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use keyguard_policy::limits::{Rate, RateLimitConfig, RateTier};
use serde::Deserialize;
use toml::Spanned;

use crate::de::{Bounded, Dur, DAY_MS};
use crate::error::{ConfigError, Source};

/// `[limits]` as written. Absent, there are no limits at all
/// ([`RateLimitConfig::default`]).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawLimits {
    #[serde(default)]
    ip: Option<Spanned<RawRate>>,
    #[serde(default)]
    default_tier: Option<Spanned<String>>,
    #[serde(default)]
    max_entries: Option<Bounded<1, 100_000_000>>,
    #[serde(default)]
    tiers: BTreeMap<String, RawTier>,
    #[serde(default)]
    key_tiers: BTreeMap<String, Spanned<String>>,
}

/// One `[limits.tiers.NAME]` table; an absent key means no limit of that kind.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTier {
    #[serde(default)]
    key: Option<Spanned<RawRate>>,
    #[serde(default)]
    account: Option<Spanned<RawRate>>,
    #[serde(default)]
    read: Option<Spanned<RawRate>>,
    #[serde(default)]
    trade: Option<Spanned<RawRate>>,
    #[serde(default)]
    withdraw: Option<Spanned<RawRate>>,
}

/// `{ count = 10, per = "1s", burst = 20 }`: `count` requests per `per`, bursts of
/// `burst` (default `count`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRate {
    count: Bounded<1, { u32::MAX as u64 }>,
    per: Dur<1, { 7 * DAY_MS }>,
    #[serde(default)]
    burst: Option<Bounded<1, { u32::MAX as u64 }>>,
}

/// Whether `id` looks like a key id as `keys create` prints it. A typo here would silently
/// leave the key in the default tier, so at least the shape is checked.
fn is_key_id(id: &str) -> bool {
    id.len() > 3
        && id.starts_with("kg_")
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

impl RawRate {
    fn resolve(rate: Spanned<RawRate>, src: &Source<'_>, key: &str) -> Result<Rate, ConfigError> {
        let span = rate.span();
        let r = rate.into_inner();
        let count = u32::try_from(r.count.0).expect("bounded to u32");
        let burst = r.burst.map(|b| u32::try_from(b.0).expect("bounded to u32"));
        Rate::new(count, Duration::from_millis(r.per.ms()), burst)
            .map_err(|e| src.error_at(span, key, e.to_string()))
    }
}

fn rate(
    rate: Option<Spanned<RawRate>>,
    src: &Source<'_>,
    key: impl FnOnce() -> String,
) -> Result<Option<Rate>, ConfigError> {
    rate.map(|r| RawRate::resolve(r, src, &key())).transpose()
}

/// The name a tier table is referred to by in key paths (`limits.tiers.pro.key`).
fn tier_path(name: &str) -> String {
    if !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        format!("limits.tiers.{name}")
    } else {
        format!("limits.tiers.{name:?}")
    }
}

impl RawLimits {
    pub(crate) fn resolve(self, src: &Source<'_>) -> Result<RateLimitConfig, ConfigError> {
        let defaults = RateLimitConfig::default();
        let mut tiers = BTreeMap::new();
        let any_tiers = !self.tiers.is_empty();
        for (name, t) in self.tiers {
            let path = tier_path(&name);
            let tier = RateTier {
                key: rate(t.key, src, || format!("{path}.key"))?,
                account: rate(t.account, src, || format!("{path}.account"))?,
                read: rate(t.read, src, || format!("{path}.read"))?,
                trade: rate(t.trade, src, || format!("{path}.trade"))?,
                withdraw: rate(t.withdraw, src, || format!("{path}.withdraw"))?,
            };
            tiers.insert(name, tier);
        }
        let default_tier = match self.default_tier {
            Some(name) => {
                if !tiers.contains_key(name.get_ref()) {
                    return Err(src.error_at(
                        name.span(),
                        "limits.default_tier",
                        unknown_tier(name.get_ref(), &tiers),
                    ));
                }
                name.into_inner()
            }
            None => {
                let name = defaults.default_tier.clone();
                if !tiers.contains_key(&name) {
                    // Tiers without the default one would leave every other key unlimited
                    // without a word; with no tiers at all, only the IP limit is wanted.
                    // Like a missing key, this has no line of its own.
                    if any_tiers {
                        return Err(src.error(
                            Some("limits.default_tier".to_owned()),
                            format!(
                                "no tier `{name}` for keys without a tier of their own: add [limits.tiers.{name}] or set default_tier"
                            ),
                        ));
                    }
                    tiers.insert(name.clone(), RateTier::default());
                }
                name
            }
        };
        let mut key_tiers = HashMap::with_capacity(self.key_tiers.len());
        for (id, tier) in self.key_tiers {
            if !is_key_id(&id) {
                return Err(src.error_at(
                    tier.span(),
                    format!("limits.key_tiers.{id}"),
                    format!("{id:?} is not a key id (expected the `kg_…` id that `keyguard keys list` shows)"),
                ));
            }
            if !tiers.contains_key(tier.get_ref()) {
                return Err(src.error_at(
                    tier.span(),
                    format!("limits.key_tiers.{id}"),
                    unknown_tier(tier.get_ref(), &tiers),
                ));
            }
            key_tiers.insert(id, tier.into_inner());
        }
        Ok(RateLimitConfig {
            ip: rate(self.ip, src, || "limits.ip".to_owned())?,
            tiers,
            default_tier,
            key_tiers,
            max_entries: self.max_entries.map_or(defaults.max_entries, |m| {
                usize::try_from(m.0).unwrap_or(usize::MAX)
            }),
        })
    }
}

fn unknown_tier(name: &str, tiers: &BTreeMap<String, RateTier>) -> String {
    let known: Vec<_> = tiers.keys().map(|t| format!("`{t}`")).collect();
    format!(
        "unknown tier `{name}` (defined: {})",
        if known.is_empty() {
            "none".to_owned()
        } else {
            known.join(", ")
        }
    )
}
