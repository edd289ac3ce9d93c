//! `[[velocity.rule]]`: the policy's [`VelocityConfig`] — sliding-window limits on the
//! amount and count of withdrawals and orders, per key or per account, per asset.
//!
//! ```toml
//! [[velocity.rule]]
//! kind = "withdraw"      # withdraw | order
//! subject = "key"        # key | account
//! asset = "btc"          # "*" (default): every asset, each summed on its own
//! window = "24h"
//! max_amount = "2.5"     # a string: read exactly, never as a float
//! max_count = 10
//! ```

use keyguard_policy::velocity::{
    AssetMatch, LedgerKind, SubjectKind, VelocityConfig, VelocityConfigError, VelocityRule,
};
use serde::Deserialize;
use toml::Spanned;

use crate::de::{Amount, Bounded, Dur, Parsed, YEAR_MS};
use crate::error::{ConfigError, Source};

/// `[velocity]` as written: only its `[[velocity.rule]]` tables.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawVelocity {
    rule: Vec<Spanned<RawRule>>,
}

/// One `[[velocity.rule]]` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    kind: Parsed<LedgerKind>,
    subject: Parsed<SubjectKind>,
    #[serde(default = "any_asset")]
    asset: Parsed<AssetMatch>,
    window: Dur<1, YEAR_MS>,
    #[serde(default)]
    max_amount: Option<Amount>,
    #[serde(default)]
    max_count: Option<Bounded<1, { u64::MAX }>>,
}

fn any_asset() -> Parsed<AssetMatch> {
    Parsed(AssetMatch::Any)
}

impl RawVelocity {
    pub(crate) fn resolve(self, src: &Source<'_>) -> Result<VelocityConfig, ConfigError> {
        let spans: Vec<_> = self.rule.iter().map(Spanned::span).collect();
        let cfg = VelocityConfig {
            rules: self
                .rule
                .into_iter()
                .map(|r| {
                    let r = r.into_inner();
                    VelocityRule {
                        kind: r.kind.0,
                        subject: r.subject.0,
                        asset: r.asset.0,
                        window_ms: r.window.ms(),
                        max_amount: r.max_amount.map(|a| a.0),
                        max_count: r.max_count.map(|c| c.0),
                    }
                })
                .collect(),
        };
        cfg.validate().map_err(|e| {
            let i = match e {
                VelocityConfigError::ZeroWindow(i) | VelocityConfigError::NoLimit(i) => i,
            };
            // The policy's message starts "velocity rule {i}: "; the key path says that.
            let message = e.to_string();
            let message = message
                .split_once(": ")
                .map_or(message.as_str(), |(_, m)| m)
                .to_owned();
            src.error_at(spans[i].clone(), format!("velocity.rule[{i}]"), message)
        })?;
        Ok(cfg)
    }
}
