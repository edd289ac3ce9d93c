//! `[canary]`: what a canary key's use does to the network it came from (the policy's
//! [`CanaryRule`]). Canary keys themselves are made with `keyguard keys create --canary`;
//! this section only tunes the reaction, which is always on.
//!
//! ```toml
//! [canary]
//! block_for = "24h"   # the network is blocked for every key this long
//! lookback = "24h"    # keys it used this recently go back on new-IP probation
//! ```

use keyguard_policy::anomaly::CanaryRule;
use serde::Deserialize;

use crate::de::{Dur, YEAR_MS};

/// `[canary]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawCanary {
    block_for: Option<Dur<1, YEAR_MS>>,
    lookback: Option<Dur<1, YEAR_MS>>,
}

impl RawCanary {
    pub(crate) fn resolve(self) -> CanaryRule {
        let d = CanaryRule::default();
        CanaryRule {
            block_ms: self.block_for.map_or(d.block_ms, Dur::ms),
            lookback_ms: self.lookback.map_or(d.lookback_ms, Dur::ms),
        }
    }
}
