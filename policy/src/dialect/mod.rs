//! Exchange API dialects: how each exchange names the key, signs the request and
//! protects against replays. INTERFACE SKELETON — bodies are filled in by the dialect work.

use http::Method;

use crate::decimal::Decimal;
use crate::key::Credential;
use crate::params::Params;
use crate::time::UnixMillis;
use crate::{Deny, UnknownName};

/// Which exchange API the gateway fronts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DialectKind {
    /// Zaif `tapi`: form body with `method` and decimal `nonce`; `Key`/`Sign` headers.
    Zaif,
    /// Binance: `X-MBX-APIKEY`; `signature` over query + body; `timestamp`/`recvWindow`.
    Binance,
    /// Kraken: `API-Key`/`API-Sign` over path + SHA-256(nonce + body); u64 nonce.
    Kraken,
}

impl DialectKind {
    /// The lower-case name used in config.
    pub const fn as_str(self) -> &'static str {
        match self {
            DialectKind::Zaif => "zaif",
            DialectKind::Binance => "binance",
            DialectKind::Kraken => "kraken",
        }
    }

    /// Lower-case names of the headers that carry credentials: never forwarded.
    pub const fn auth_headers(self) -> &'static [&'static str] {
        match self {
            DialectKind::Zaif => &["key", "sign"],
            DialectKind::Binance => &["x-mbx-apikey"],
            DialectKind::Kraken => &["api-key", "api-sign"],
        }
    }

    /// The body field that selects the action on a shared path (Zaif's `method`).
    pub const fn selector_field(self) -> Option<&'static str> {
        match self {
            DialectKind::Zaif => Some("method"),
            _ => None,
        }
    }
}

impl std::str::FromStr for DialectKind {
    type Err = UnknownName;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "zaif" => Ok(DialectKind::Zaif),
            "binance" => Ok(DialectKind::Binance),
            "kraken" => Ok(DialectKind::Kraken),
            _ => Err(UnknownName),
        }
    }
}

/// Per-dialect options from config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DialectConfig {
    /// The dialect.
    pub kind: DialectKind,
    /// Binance: receive window when the request names none (ms).
    pub recv_window_default_ms: u64,
    /// Binance: the largest receive window a request may ask for (ms).
    pub recv_window_max_ms: u64,
    /// Binance: how far ahead of our clock a timestamp may be (ms).
    pub future_tolerance_ms: u64,
}

impl DialectConfig {
    /// The exchange's documented defaults.
    pub fn new(kind: DialectKind) -> Self {
        DialectConfig {
            kind,
            recv_window_default_ms: 5_000,
            recv_window_max_ms: 60_000,
            future_tolerance_ms: 1_000,
        }
    }
}

/// How a request proves it is fresh.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Replay {
    /// A nonce that must be strictly greater than the key's previous one (Zaif decimal,
    /// Kraken u64 — both compared as exact decimals).
    Nonce(Decimal),
    /// A timestamp inside a receive window; `fingerprint` (SHA-256 of the signature)
    /// must not be seen twice while the window is open.
    Timestamp {
        /// The request's `timestamp` (ms).
        at_ms: UnixMillis,
        /// The window it asked for, already capped.
        recv_window_ms: u64,
        /// SHA-256 of the signature bytes.
        fingerprint: [u8; 32],
    },
}

/// What a private request claims about who signed it; not yet verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The API key as presented.
    pub api_key: String,
    /// Freshness proof.
    pub replay: Replay,
    /// The signature as decoded from the request (hex/base64 already decoded).
    signature: Vec<u8>,
    /// The exact bytes the dialect signs (Binance: query + body without `signature`;
    /// Zaif: body; Kraken: path ‖ SHA-256(nonce ‖ body)).
    signed_payload: Vec<u8>,
}

/// What kind of body the request had.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    /// No body.
    Empty,
    /// `application/x-www-form-urlencoded`.
    Form,
    /// `application/json`.
    Json,
}

/// A request that passed strict parsing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedRequest {
    /// The method.
    pub method: Method,
    /// The normalized path (what routes match against; equal to the received path, since
    /// anything that would normalize differently is rejected).
    pub path: String,
    /// Query and body parameters, names unique.
    pub params: Params,
    /// The body's kind.
    pub body_kind: BodyKind,
    /// Present when the request carries the dialect's auth headers.
    pub credentials: Option<Credentials>,
}

/// Parses and strictly validates a request for `cfg.kind` (path, headers, content type,
/// parameters, credentials). Everything that is rejected here is never forwarded.
pub fn parse(
    cfg: &DialectConfig,
    parts: &http::request::Parts,
    body: &[u8],
) -> Result<ParsedRequest, Deny> {
    let _ = (cfg, parts, body);
    Err(Deny::InvalidParameter)
}

/// Verifies the request's signature against the key's credential in constant time.
pub fn verify(
    cfg: &DialectConfig,
    creds: &Credentials,
    credential: &Credential,
) -> Result<(), Deny> {
    let _ = (cfg, creds, credential);
    Err(Deny::InvalidSignature)
}

/// Checks a timestamp-style proof against `now` (nonce proofs always pass here; their
/// ordering is checked against the store).
pub fn check_freshness(cfg: &DialectConfig, replay: &Replay, now: UnixMillis) -> Result<(), Deny> {
    let _ = (cfg, replay, now);
    Err(Deny::StaleTimestamp)
}
