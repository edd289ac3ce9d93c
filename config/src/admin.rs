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
//!
//! [admin.sso]                 # single sign-on from the exchange's own login
//! public_key_file = "exchange-sso.pem"   # the exchange's public key (PEM), relative to this file
//! algorithm = "EdDSA"         # or RS256, ES256
//! audience = "keyguard"       # the JWT's `aud` must be this
//! issuer = "https://exchange.example"    # optional: the JWT's `iss` must be this
//! ```

use std::path::{Path, PathBuf};

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
    /// Single sign-on from the exchange, when configured.
    pub sso: Option<SsoConfig>,
}

/// `[admin.sso]`: the exchange signs a short JWT naming the account; Keyguard opens a
/// session for it without asking for a password.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SsoConfig {
    /// The exchange's public key, PEM.
    pub public_key_file: PathBuf,
    /// `EdDSA`, `RS256` or `ES256`.
    pub algorithm: String,
    /// Required `aud`.
    pub audience: String,
    /// Required `iss`, if set.
    pub issuer: Option<String>,
}

/// `[admin.sso]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSso {
    public_key_file: String,
    #[serde(default = "default_alg")]
    algorithm: Alg,
    audience: String,
    issuer: Option<String>,
}

fn default_alg() -> Alg {
    Alg::EdDSA
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[allow(clippy::upper_case_acronyms)]
enum Alg {
    EdDSA,
    RS256,
    ES256,
}

impl Default for AdminConfig {
    fn default() -> Self {
        RawAdmin::default().resolve(Path::new(""))
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
    sso: Option<RawSso>,
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
            sso: None,
        }
    }
}

impl RawAdmin {
    pub(crate) fn resolve(self, config_dir: &Path) -> AdminConfig {
        AdminConfig {
            widen_cooldown_ms: self.widen_cooldown.ms(),
            session_ttl_ms: self.session_ttl.ms(),
            session_max_ms: self.session_max.ms().max(self.session_ttl.ms()),
            activity_retention_ms: self.activity_retention.ms(),
            activity_max_rows: self.activity_max_rows.0,
            lockout_after: self.lockout_after.0 as u32,
            lockout_base_ms: self.lockout_base.ms(),
            sso: self.sso.map(|s| SsoConfig {
                public_key_file: config_dir.join(s.public_key_file),
                algorithm: format!("{:?}", s.algorithm),
                audience: s.audience,
                issuer: s.issuer,
            }),
        }
    }
}
