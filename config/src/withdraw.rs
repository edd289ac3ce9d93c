//! `[withdraw]`: tunables of the authorization step for withdrawals.

use keyguard_policy::authorize::AuthorizeConfig;
use serde::Deserialize;

use crate::de::Bounded;

/// A year: longer than any sensible cool-down, short enough that `* 1000` cannot overflow.
const MAX_COOLDOWN_SECS: u64 = 365 * 24 * 60 * 60;

/// `[withdraw]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawWithdraw {
    // 0 is allowed: it disables the cool-down, which test setups want.
    address_cooldown_secs: Bounded<0, MAX_COOLDOWN_SECS>,
}

impl Default for RawWithdraw {
    fn default() -> Self {
        RawWithdraw {
            address_cooldown_secs: Bounded(24 * 60 * 60),
        }
    }
}

impl RawWithdraw {
    #[allow(
        clippy::needless_update,
        reason = "fields the policy adds later keep their defaults until the file names them"
    )]
    pub(crate) fn resolve(self) -> AuthorizeConfig {
        AuthorizeConfig {
            address_cooldown_ms: self.address_cooldown_secs.0 * 1000,
            ..AuthorizeConfig::default()
        }
    }
}
