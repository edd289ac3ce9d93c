//! May this key do this action from this IP, now? Status, expiry, scope, allowlist,
//! withdrawal destination (an address, or an exchange-side withdrawal key: see
//! [`crate::key::Destination`]) and freezes — in that order, so the code a client sees names the
//! most fundamental problem first.

use std::net::IpAddr;

use crate::action::Action;
use crate::key::{KeyRecord, KeyStatus};
use crate::route::Facts;
use crate::time::UnixMillis;
use crate::Deny;

/// Withdrawal freezes in force, as loaded from the store.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Freezes {
    /// All withdrawals are frozen.
    pub global: bool,
    /// Frozen assets, lower-case.
    pub assets: Vec<String>,
    /// Frozen accounts.
    pub accounts: Vec<String>,
}

impl Freezes {
    /// Whether a withdrawal of `asset` by `account` is frozen.
    pub fn blocks(&self, account: &str, asset: Option<&str>) -> bool {
        self.global
            || self.accounts.iter().any(|a| a == account)
            || asset.is_some_and(|asset| self.assets.iter().any(|a| a == asset))
    }
}

/// Tunables of the authorization step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthorizeConfig {
    /// How long a newly added withdrawal address waits before it can be used (ms).
    pub address_cooldown_ms: u64,
}

impl Default for AuthorizeConfig {
    fn default() -> Self {
        AuthorizeConfig {
            address_cooldown_ms: 24 * 60 * 60 * 1000,
        }
    }
}

/// Everything about the request that authorization looks at.
#[derive(Debug, Clone, Copy)]
pub struct AccessRequest<'a> {
    /// The classified action.
    pub action: Action,
    /// Its facts.
    pub facts: &'a Facts,
    /// The client IP (already resolved through trusted proxies).
    pub client_ip: IpAddr,
    /// Now.
    pub now: UnixMillis,
}

/// Whether the key can be used at all: active and not expired. Checked before the
/// anomaly rules too, so a suspended key is refused as suspended instead of feeding (and
/// re-triggering) the rules that suspended it.
pub fn key_usable(key: &KeyRecord, now: UnixMillis) -> Result<(), Deny> {
    match key.status {
        KeyStatus::Active => {}
        KeyStatus::Suspended => return Err(Deny::KeySuspended),
        KeyStatus::Revoked => return Err(Deny::KeyRevoked),
    }
    if key.expires_at.is_some_and(|exp| now >= exp) {
        return Err(Deny::KeyExpired);
    }
    Ok(())
}

/// Decides whether `key` may perform `req`.
pub fn authorize(
    cfg: &AuthorizeConfig,
    key: &KeyRecord,
    req: &AccessRequest<'_>,
    freezes: &Freezes,
) -> Result<(), Deny> {
    key_usable(key, req.now)?;
    if let Some(scope) = req.action.required_scope() {
        if !key.scopes.contains(scope) {
            return Err(Deny::ScopeMissing);
        }
    }
    if !key.ip_allowed(req.client_ip) {
        return Err(Deny::IpNotAllowed);
    }
    if req.action == Action::Withdraw {
        // Checked at request time too: a key stored before the rule existed, or edited
        // by hand, must not withdraw from anywhere.
        if key.allow_ips.is_empty() {
            return Err(Deny::AllowlistRequired);
        }
        let asset = req.facts.asset.as_deref().ok_or(Deny::InvalidField)?;
        let address = req.facts.address.as_deref();
        let withdraw_key = req.facts.withdraw_key.as_deref();
        if (address.is_none() && withdraw_key.is_none()) || req.facts.amount.is_none() {
            return Err(Deny::InvalidField);
        }
        // Every entry that allows the destination counts, and the oldest one decides the
        // cool-down: an address listed twice (plainly and pinned to a key) is usable once
        // its first listing has waited.
        let entry = key
            .withdraw_addresses
            .iter()
            .filter(|w| w.asset == asset)
            .filter(|w| {
                w.destination()
                    .is_some_and(|d| d.allows(withdraw_key, address))
            })
            .min_by_key(|w| w.added_at)
            .ok_or(Deny::AddressNotAllowed)?;
        if req.now < entry.added_at.saturating_add(cfg.address_cooldown_ms) {
            return Err(Deny::AddressCooldown);
        }
        if freezes.blocks(&key.account, Some(asset)) {
            return Err(Deny::WithdrawalsFrozen);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
