//! `[anomaly]`: the policy's [`AnomalyConfig`] — the rules that stop a leaked key even
//! without an IP allowlist.
//!
//! Secure by default: a rule whose sub-table is absent is on, enforced, with the policy's
//! defaults; every key of a sub-table is optional and defaults the same way. A rule is
//! turned off only by `enabled = false`, and rolled out safely with `shadow = true`
//! (evaluated and audited as `would_deny`, never enforced).
//!
//! ```toml
//! [anomaly.dormant]
//! after = "90d"
//! first_use_within = "7d"
//! [anomaly.shared_ip]
//! max_keys = 5
//! exempt = ["203.0.113.0/24"]
//! shadow = true
//! ```

use ipnet::IpNet;
use keyguard_policy::anomaly::{
    AnomalyConfig, AuthFailureRule, DormantRule, ManyIpsRule, NewIpRule, SharedIpRule,
};
use serde::Deserialize;

use crate::de::{Bounded, Dur, Parsed, DAY_MS, YEAR_MS};

/// Ten years: dormancy is measured in days to years.
const MAX_DORMANT_MS: u64 = 10 * YEAR_MS;
/// A generous ceiling on counts of distinct things per window.
const MAX_DISTINCT: u64 = 1_000_000;

/// `[anomaly]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawAnomaly {
    dormant: Option<RawDormant>,
    new_ip: Option<RawNewIp>,
    many_ips: Option<RawManyIps>,
    shared_ip: Option<RawSharedIp>,
    auth_failures: Option<RawAuthFailures>,
    max_entries: Option<Bounded<1, 100_000_000>>,
}

/// `[anomaly.dormant]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawDormant {
    enabled: Option<bool>,
    shadow: Option<bool>,
    after: Option<Dur<1, MAX_DORMANT_MS>>,
    first_use_within: Option<Dur<1, MAX_DORMANT_MS>>,
}

/// `[anomaly.new_ip]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawNewIp {
    enabled: Option<bool>,
    shadow: Option<bool>,
    probation: Option<Dur<1, { 30 * DAY_MS }>>,
    max_per_key: Option<Bounded<1, 100_000>>,
}

/// `[anomaly.many_ips]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawManyIps {
    enabled: Option<bool>,
    shadow: Option<bool>,
    max_ips: Option<Bounded<1, MAX_DISTINCT>>,
    window: Option<Dur<1, YEAR_MS>>,
    include_allowlisted: Option<bool>,
}

/// `[anomaly.shared_ip]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawSharedIp {
    enabled: Option<bool>,
    shadow: Option<bool>,
    max_keys: Option<Bounded<1, MAX_DISTINCT>>,
    max_accounts: Option<Bounded<1, MAX_DISTINCT>>,
    window: Option<Dur<1, YEAR_MS>>,
    block: Option<Dur<1, YEAR_MS>>,
    exempt: Option<Vec<Parsed<IpNet>>>,
}

/// `[anomaly.auth_failures]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawAuthFailures {
    enabled: Option<bool>,
    shadow: Option<bool>,
    max_failures: Option<Bounded<1, { u32::MAX as u64 }>>,
    window: Option<Dur<1, YEAR_MS>>,
    ban: Option<Dur<1, YEAR_MS>>,
}

/// The rule, unless the file turned it off.
fn on<T>(enabled: Option<bool>, rule: T) -> Option<T> {
    enabled.unwrap_or(true).then_some(rule)
}

fn count(v: Bounded<1, MAX_DISTINCT>) -> usize {
    usize::try_from(v.0).unwrap_or(usize::MAX)
}

impl RawAnomaly {
    pub(crate) fn resolve(self) -> AnomalyConfig {
        let d = AnomalyConfig::default();
        let dormant = self.dormant.unwrap_or_default();
        let new_ip = self.new_ip.unwrap_or_default();
        let many_ips = self.many_ips.unwrap_or_default();
        let shared_ip = self.shared_ip.unwrap_or_default();
        let auth = self.auth_failures.unwrap_or_default();
        let (dd, nd, md, sd, ad) = (
            DormantRule::default(),
            NewIpRule::default(),
            ManyIpsRule::default(),
            SharedIpRule::default(),
            AuthFailureRule::default(),
        );
        AnomalyConfig {
            dormant: on(
                dormant.enabled,
                DormantRule {
                    after_ms: dormant.after.map_or(dd.after_ms, Dur::ms),
                    first_use_within_ms: dormant
                        .first_use_within
                        .map_or(dd.first_use_within_ms, Dur::ms),
                    shadow: dormant.shadow.unwrap_or(dd.shadow),
                },
            ),
            new_ip: on(
                new_ip.enabled,
                NewIpRule {
                    probation_ms: new_ip.probation.map_or(nd.probation_ms, Dur::ms),
                    max_per_key: new_ip.max_per_key.map_or(nd.max_per_key, |m| {
                        usize::try_from(m.0).unwrap_or(usize::MAX)
                    }),
                    shadow: new_ip.shadow.unwrap_or(nd.shadow),
                },
            ),
            many_ips: on(
                many_ips.enabled,
                ManyIpsRule {
                    max_ips: many_ips.max_ips.map_or(md.max_ips, count),
                    window_ms: many_ips.window.map_or(md.window_ms, Dur::ms),
                    include_allowlisted: many_ips
                        .include_allowlisted
                        .unwrap_or(md.include_allowlisted),
                    shadow: many_ips.shadow.unwrap_or(md.shadow),
                },
            ),
            shared_ip: on(
                shared_ip.enabled,
                SharedIpRule {
                    max_keys: shared_ip.max_keys.map_or(sd.max_keys, count),
                    max_accounts: shared_ip.max_accounts.map_or(sd.max_accounts, count),
                    window_ms: shared_ip.window.map_or(sd.window_ms, Dur::ms),
                    block_ms: shared_ip.block.map_or(sd.block_ms, Dur::ms),
                    exempt: shared_ip
                        .exempt
                        .map_or(sd.exempt, |e| e.into_iter().map(|n| n.0).collect()),
                    shadow: shared_ip.shadow.unwrap_or(sd.shadow),
                },
            ),
            auth_failures: on(
                auth.enabled,
                AuthFailureRule {
                    max_failures: auth.max_failures.map_or(ad.max_failures, |m| {
                        u32::try_from(m.0).expect("bounded to u32")
                    }),
                    window_ms: auth.window.map_or(ad.window_ms, Dur::ms),
                    ban_ms: auth.ban.map_or(ad.ban_ms, Dur::ms),
                    shadow: auth.shadow.unwrap_or(ad.shadow),
                },
            ),
            // `[canary]` is its own section (see `canary.rs`).
            canary: d.canary,
            max_entries: self.max_entries.map_or(d.max_entries, |m| {
                usize::try_from(m.0).unwrap_or(usize::MAX)
            }),
        }
    }
}
