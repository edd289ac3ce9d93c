//! `[alerts]`: where the gateway reports key suspensions, freezes and anomaly denies — a
//! JSON POST to a webhook, retried with backoff off the request path.
//!
//! ```toml
//! [alerts]
//! webhook_url = "https://hooks.example.com/keyguard"
//! timeout = "2s"
//! max_retries = 5
//! queue = 1024
//! ```

use std::time::Duration;

use serde::Deserialize;

use crate::de::{Bounded, Dur, FromTomlStr, Parsed, MINUTE_MS};

/// The validated `[alerts]` section. Without a `webhook_url` no alerts are sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlertsConfig {
    /// The webhook alerts are POSTed to (`http://` or `https://`), as written.
    pub webhook_url: Option<String>,
    /// Time allowed for one delivery attempt.
    pub timeout: Duration,
    /// Retries after a failed attempt (with backoff); then the alert is dropped and
    /// counted.
    pub max_retries: u32,
    /// Alerts waiting for delivery; past it new alerts are dropped (and counted) rather
    /// than slowing requests down.
    pub queue: usize,
}

impl Default for AlertsConfig {
    fn default() -> Self {
        RawAlerts::default().resolve()
    }
}

/// `[alerts]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawAlerts {
    webhook_url: Option<Parsed<WebhookUrl>>,
    timeout: Dur<1, { 5 * MINUTE_MS }>,
    max_retries: Bounded<0, 100>,
    queue: Bounded<1, 1_000_000>,
}

impl Default for RawAlerts {
    fn default() -> Self {
        RawAlerts {
            webhook_url: None,
            timeout: Dur(2_000),
            max_retries: Bounded(5),
            queue: Bounded(1024),
        }
    }
}

impl RawAlerts {
    pub(crate) fn resolve(self) -> AlertsConfig {
        AlertsConfig {
            webhook_url: self.webhook_url.map(|u| u.0 .0),
            timeout: self.timeout.duration(),
            max_retries: u32::try_from(self.max_retries.0).expect("bounded to 100"),
            queue: usize::try_from(self.queue.0).unwrap_or(usize::MAX),
        }
    }
}

/// An absolute `http://` or `https://` URL with a host.
#[derive(Debug, Clone, PartialEq, Eq)]
struct WebhookUrl(String);

impl FromTomlStr for WebhookUrl {
    fn from_toml_str(s: &str) -> Result<Self, String> {
        let fail = |reason: &str| Err(format!("invalid webhook URL {s:?}: {reason}"));
        if s.contains('#') {
            return fail("must not have a fragment");
        }
        let Ok(uri) = s.parse::<http::Uri>() else {
            return fail("not a URL (expected http://host[:port]/path or https://…)");
        };
        if !matches!(uri.scheme_str(), Some("http" | "https")) {
            return fail("must start with http:// or https://");
        }
        let Some(authority) = uri.authority() else {
            return fail("must name a host");
        };
        if authority.as_str().contains('@') {
            // Credentials there end up in logs; webhooks carry their token in the path.
            return fail("must not contain user information (`user@`)");
        }
        let host = authority.host();
        if host.is_empty() {
            return fail("must name a host");
        }
        let port = &authority.as_str()[host.len()..];
        if !port.is_empty() && !matches!(authority.port_u16(), Some(1..)) {
            return fail("port must be between 1 and 65535");
        }
        Ok(WebhookUrl(s.to_owned()))
    }
}
