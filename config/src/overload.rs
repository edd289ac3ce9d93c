//! `[overload]` and `[http2]`: shedding load before queues grow, capping what one client
//! network may hold open, and the HTTP/2 limits that stop the known floods.

use serde::Deserialize;

use crate::de::Bounded;

/// The validated `[overload]` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverloadConfig {
    /// Requests being processed at once, over all workers; one more is answered at once
    /// with 503 `overloaded` and `Retry-After`, before its body is read or any HMAC is
    /// computed, so a burst costs the gateway almost nothing and queues never build.
    pub max_in_flight: usize,
    /// The `Retry-After` of a shed request, in seconds.
    pub retry_after_secs: u64,
    /// Connections one client network may hold open at once; one more is closed at accept
    /// (audited as `too_many_connections`), so one network cannot take the whole
    /// `server.max_connections`.
    pub max_connections_per_network: usize,
    /// IPv4 prefix length that makes a network (32: each address is its own).
    pub ipv4_prefix: u8,
    /// IPv6 prefix length that makes a network (64: a typical customer allocation).
    pub ipv6_prefix: u8,
    /// Raise the open-files soft limit to the hard limit at start.
    pub raise_open_files: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawOverload {
    max_in_flight: Bounded<1, 1_000_000>,
    retry_after_secs: Bounded<1, 3600>,
    max_connections_per_network: Bounded<1, 1_000_000>,
    ipv4_prefix: Bounded<8, 32>,
    ipv6_prefix: Bounded<16, 128>,
    raise_open_files: bool,
}

impl Default for RawOverload {
    fn default() -> Self {
        RawOverload {
            max_in_flight: Bounded(1024),
            retry_after_secs: Bounded(1),
            max_connections_per_network: Bounded(256),
            ipv4_prefix: Bounded(32),
            ipv6_prefix: Bounded(64),
            raise_open_files: true,
        }
    }
}

impl RawOverload {
    pub(crate) fn resolve(self) -> OverloadConfig {
        OverloadConfig {
            max_in_flight: self.max_in_flight.0 as usize,
            retry_after_secs: self.retry_after_secs.0,
            max_connections_per_network: self.max_connections_per_network.0 as usize,
            // Bounded above by 128, so they fit.
            ipv4_prefix: self.ipv4_prefix.0 as u8,
            ipv6_prefix: self.ipv6_prefix.0 as u8,
            raise_open_files: self.raise_open_files,
        }
    }
}

/// The validated `[http2]` section (the exchange-facing listener). The header list cap is
/// `server.max_header_bytes`, the same as for HTTP/1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Http2Config {
    /// Offer `h2` in TLS ALPN.
    pub enabled: bool,
    /// On a listener without TLS, accept HTTP/2 from clients that start with its preface
    /// ("prior knowledge", RFC 9113 §3.3). `Upgrade: h2c` is never honoured.
    pub prior_knowledge: bool,
    /// Streams one connection may have open at once (SETTINGS_MAX_CONCURRENT_STREAMS).
    pub max_concurrent_streams: u32,
    /// Streams a client may open and reset before the gateway accepts them; past it the
    /// connection is closed with ENHANCE_YOUR_CALM (rapid reset, CVE-2023-44487).
    pub max_pending_accept_reset_streams: usize,
    /// Streams the gateway may reset for a client's protocol errors before it closes the
    /// connection (the MadeYouReset variant of rapid reset).
    pub max_local_error_reset_streams: usize,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawHttp2 {
    enabled: bool,
    prior_knowledge: bool,
    max_concurrent_streams: Bounded<1, 1000>,
    max_pending_accept_reset_streams: Bounded<1, 10_000>,
    max_local_error_reset_streams: Bounded<1, 10_000>,
}

impl Default for RawHttp2 {
    fn default() -> Self {
        RawHttp2 {
            enabled: true,
            prior_knowledge: false,
            max_concurrent_streams: Bounded(100),
            max_pending_accept_reset_streams: Bounded(20),
            max_local_error_reset_streams: Bounded(64),
        }
    }
}

impl RawHttp2 {
    pub(crate) fn resolve(self) -> Http2Config {
        Http2Config {
            enabled: self.enabled,
            prior_knowledge: self.prior_knowledge,
            max_concurrent_streams: self.max_concurrent_streams.0 as u32,
            max_pending_accept_reset_streams: self.max_pending_accept_reset_streams.0 as usize,
            max_local_error_reset_streams: self.max_local_error_reset_streams.0 as usize,
        }
    }
}
