//! `[admin]`: the admin listener's web UI and API — how long widening changes wait, how
//! long sessions live, how long per-key activity is kept, and login lockout.
//!
//! ```toml
//! [admin]
//! widen_cooldown = "24h"      # a new IP/CIDR or scope waits this long (addresses: [withdraw])
//! session_ttl = "15m"         # a session cookie's lifetime; renewed while in use
//! session_max = "12h"         # a session ends this long after login, in use or not
//! activity_retention = "30d"  # per-key activity kept for the activity pages
//! activity_max_rows = 1000000 # and never more rows than this
//! lockout_after = 5           # failed logins before an account is locked
//! lockout_base = "30s"        # first lockout; doubles with each further failure
//! ```

use serde::Deserialize;

use crate::de::{Bounded, Dur, DAY_MS, HOUR_MS, MINUTE_MS, SECOND_MS, YEAR_MS};

/// The validated `[admin]` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminConfig {
    /// How long adding an IP/CIDR or a scope to a key waits before it applies (DESIGN.md
    /// §6: widening is slow). Withdrawal addresses wait `[withdraw] address_cooldown_secs`.
    pub widen_cooldown_ms: u64,
    /// Lifetime of a session token; renewed while the session is used.
    pub session_ttl_ms: u64,
    /// Absolute lifetime of a session from login.
    pub session_max_ms: u64,
    /// How long activity rows are kept.
    pub activity_retention_ms: u64,
    /// The most activity rows kept (oldest dropped first).
    pub activity_max_rows: u64,
    /// Failed logins in a row before an account is locked.
    pub lockout_after: u32,
    /// The first lockout; each further failure doubles it (up to a day).
    pub lockout_base_ms: u64,
}

impl Default for AdminConfig {
    fn default() -> Self {
        RawAdmin::default().resolve()
    }
}

/// `[admin]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawAdmin {
    // 0 is allowed: test setups want widening to apply on the next refresh.
    widen_cooldown: Dur<0, YEAR_MS>,
    session_ttl: Dur<{ 10 * SECOND_MS }, { 12 * HOUR_MS }>,
    session_max: Dur<{ MINUTE_MS }, { 30 * DAY_MS }>,
    activity_retention: Dur<{ HOUR_MS }, YEAR_MS>,
    activity_max_rows: Bounded<1000, 1_000_000_000>,
    lockout_after: Bounded<1, 100>,
    lockout_base: Dur<100, { HOUR_MS }>,
}

impl Default for RawAdmin {
    fn default() -> Self {
        RawAdmin {
            widen_cooldown: Dur(DAY_MS),
            session_ttl: Dur(15 * MINUTE_MS),
            session_max: Dur(12 * HOUR_MS),
            activity_retention: Dur(30 * DAY_MS),
            activity_max_rows: Bounded(1_000_000),
            lockout_after: Bounded(5),
            lockout_base: Dur(30 * SECOND_MS),
        }
    }
}

impl RawAdmin {
    pub(crate) fn resolve(self) -> AdminConfig {
        AdminConfig {
            widen_cooldown_ms: self.widen_cooldown.ms(),
            session_ttl_ms: self.session_ttl.ms(),
            session_max_ms: self.session_max.ms().max(self.session_ttl.ms()),
            activity_retention_ms: self.activity_retention.ms(),
            activity_max_rows: self.activity_max_rows.0,
            lockout_after: self.lockout_after.0 as u32,
            lockout_base_ms: self.lockout_base.ms(),
        }
    }
}
