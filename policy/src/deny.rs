//! Why a request was refused: one small enum, one stable code per reason.
//!
//! The gateway turns a [`Deny`] into an HTTP response in exactly one place; every
//! stage of the pipeline only returns the reason. Codes are part of the wire contract
//! (clients and the audit log match on them), so they never change once released.

use std::fmt;

/// A reason to refuse a request. `Copy` and allocation-free so the hot path can return it
/// cheaply; details that would help an attacker (which byte of a signature was wrong)
/// deliberately stay out of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Deny {
    // --- accept: the HTTP/1 parser refused the request head (400 / 408 / 414 / 431) ---
    // hyper answers these itself, before the pipeline runs: the audit log carries the
    // code, the client gets hyper's bare response (or none, see each variant).
    /// The request line or header section is not valid HTTP/1.1: NUL or bare CR in a
    /// header value, obs-fold, conflicting `Content-Length`s, a malformed method, target
    /// or version, an HTTP/2 preface on the HTTP/1 port.
    MalformedRequest,
    /// The request target is longer than the HTTP parser accepts (64 KiB); only reachable
    /// when `server.max_header_bytes` is larger than that.
    UriTooLong,
    /// The request head is larger than `server.max_header_bytes`, or has too many headers.
    HeadersTooLarge,
    /// The request head did not arrive within the header read timeout (slowloris). The
    /// connection is closed without a response.
    HeaderTimeout,

    // --- strict parsing (400 / 405 / 413 / 415) ---
    /// The path is not in canonical form (dot segments, encoded separators, `//`, ...).
    InvalidPath,
    /// The request target or Host header does not match what we serve.
    InvalidTarget,
    /// A header is malformed, duplicated where it must be unique, or forbidden.
    InvalidHeader,
    /// A method-override header or parameter (`X-HTTP-Method-Override`, `_method`).
    MethodOverride,
    /// A query or form parameter is malformed (bad percent-encoding, `;` separator, not UTF-8).
    InvalidParameter,
    /// The same parameter name appears twice (in one place, or in query and body).
    DuplicateParameter,
    /// The JSON body is not strict RFC 8259 JSON, has duplicate keys, or a field has the wrong type.
    InvalidJson,
    /// A field the policy reads (amount, price, ...) is missing or not a valid exact decimal.
    InvalidField,
    /// The HTTP method is not one the endpoint accepts.
    MethodNotAllowed,
    /// The body is larger than the configured limit.
    BodyTooLarge,
    /// The body did not arrive within the body read timeout (slowloris).
    BodyTimeout,
    /// The content type is not one the dialect uses.
    UnsupportedMediaType,
    /// The endpoint is not in the route table: default deny.
    UnknownEndpoint,

    // --- authentication (401) ---
    /// No API key was presented to a private endpoint.
    MissingCredentials,
    /// The API key is not known.
    UnknownKey,
    /// The signature does not verify over the received bytes.
    InvalidSignature,
    /// The nonce is missing, malformed, or not strictly greater than the last one used.
    InvalidNonce,
    /// The timestamp is missing, outside its receive window, or too far ahead.
    StaleTimestamp,
    /// The same signed request was seen before inside its validity window.
    Replay,

    // --- authorization (403) ---
    /// The key is suspended by its owner, an operator, or an anomaly rule.
    KeySuspended,
    /// The key was revoked.
    KeyRevoked,
    /// The key is past its expiry.
    KeyExpired,
    /// The key lacks the scope the action needs.
    ScopeMissing,
    /// The client IP is not in the key's allowlist.
    IpNotAllowed,
    /// Withdrawals need a key with a non-empty IP allowlist.
    AllowlistRequired,
    /// The withdrawal address is not on the key's allowlist for this asset.
    AddressNotAllowed,
    /// The withdrawal address was added too recently to be used.
    AddressCooldown,
    /// Withdrawals are frozen (globally, for the asset, or for the account).
    WithdrawalsFrozen,

    // --- velocity and anomaly rules (403) ---
    /// The withdrawal would pass a velocity limit (amount or count in a window).
    WithdrawLimit,
    /// The order would pass a velocity limit (count or notional in a window).
    OrderLimit,
    /// The key was unused for too long: it may read, but trading and withdrawing wait
    /// until its owner reactivates it.
    KeyDormant,
    /// The client IP is new for this key (no allowlist): trading and withdrawing from it
    /// wait out a probation period.
    NewIpProbation,
    /// The key was used from too many networks in a short time and has been suspended.
    TooManyIps,
    /// The client IP presented too many different keys or accounts and is blocked for a while.
    IpBlocked,
    /// The client IP sent too many bad signatures or unknown keys and is banned for a while.
    IpBanned,
    /// A canary key (one planted to be found, never to be used) signed this request
    /// correctly: its secret leaked. Audited under this code; the client is told
    /// [`Deny::IpNotAllowed`] ([`Deny::as_told_to_client`]) so it learns nothing.
    Canary,

    // --- limits (429) ---
    /// A rate limit was exceeded.
    RateLimited,

    // --- upstream and state (502 / 503 / 504) ---
    /// The upstream could not be reached or answered with garbage.
    UpstreamUnavailable,
    /// The upstream did not answer in time.
    UpstreamTimeout,
    /// State needed for a safe decision is unavailable: fail closed.
    StateUnavailable,
    /// The audit log cannot take lines (disk full, stalled or failing): trades and
    /// withdrawals fail closed, because they must not happen without a record.
    AuditUnavailable,

    // --- overload (503) ---
    /// The gateway is at its in-flight request limit (`overload.max_in_flight`): the
    /// request was shed before any work, with `Retry-After`.
    Overloaded,
    /// The client's network already holds `overload.max_connections_per_network`
    /// connections; the new one was closed at accept without an answer.
    TooManyConnections,
}

impl Deny {
    /// The stable machine-readable code (`ip_not_allowed`, ...).
    pub const fn code(self) -> &'static str {
        match self {
            Deny::MalformedRequest => "malformed_request",
            Deny::UriTooLong => "uri_too_long",
            Deny::HeadersTooLarge => "headers_too_large",
            Deny::HeaderTimeout => "header_timeout",
            Deny::InvalidPath => "invalid_path",
            Deny::InvalidTarget => "invalid_target",
            Deny::InvalidHeader => "invalid_header",
            Deny::MethodOverride => "method_override",
            Deny::InvalidParameter => "invalid_parameter",
            Deny::DuplicateParameter => "duplicate_parameter",
            Deny::InvalidJson => "invalid_json",
            Deny::InvalidField => "invalid_field",
            Deny::MethodNotAllowed => "method_not_allowed",
            Deny::BodyTooLarge => "body_too_large",
            Deny::BodyTimeout => "body_timeout",
            Deny::UnsupportedMediaType => "unsupported_media_type",
            Deny::UnknownEndpoint => "unknown_endpoint",
            Deny::MissingCredentials => "missing_credentials",
            Deny::UnknownKey => "unknown_key",
            Deny::InvalidSignature => "invalid_signature",
            Deny::InvalidNonce => "invalid_nonce",
            Deny::StaleTimestamp => "stale_timestamp",
            Deny::Replay => "replay",
            Deny::KeySuspended => "key_suspended",
            Deny::KeyRevoked => "key_revoked",
            Deny::KeyExpired => "key_expired",
            Deny::ScopeMissing => "scope_missing",
            Deny::IpNotAllowed => "ip_not_allowed",
            Deny::AllowlistRequired => "allowlist_required",
            Deny::AddressNotAllowed => "address_not_allowed",
            Deny::AddressCooldown => "address_cooldown",
            Deny::WithdrawalsFrozen => "withdrawals_frozen",
            Deny::WithdrawLimit => "withdraw_limit",
            Deny::OrderLimit => "order_limit",
            Deny::KeyDormant => "key_dormant",
            Deny::NewIpProbation => "new_ip_probation",
            Deny::TooManyIps => "too_many_ips",
            Deny::IpBlocked => "ip_blocked",
            Deny::IpBanned => "ip_banned",
            Deny::Canary => "canary",
            Deny::RateLimited => "rate_limited",
            Deny::UpstreamUnavailable => "upstream_unavailable",
            Deny::UpstreamTimeout => "upstream_timeout",
            Deny::StateUnavailable => "state_unavailable",
            Deny::AuditUnavailable => "audit_unavailable",
            Deny::Overloaded => "overloaded",
            Deny::TooManyConnections => "too_many_connections",
        }
    }

    /// The HTTP status this reason maps to.
    pub const fn status(self) -> u16 {
        match self {
            Deny::MalformedRequest => 400,
            Deny::UriTooLong => 414,
            Deny::HeadersTooLarge => 431,
            Deny::HeaderTimeout => 408,
            Deny::InvalidPath
            | Deny::InvalidTarget
            | Deny::InvalidHeader
            | Deny::MethodOverride
            | Deny::InvalidParameter
            | Deny::DuplicateParameter
            | Deny::InvalidJson
            | Deny::InvalidField => 400,
            Deny::MethodNotAllowed => 405,
            Deny::BodyTooLarge => 413,
            Deny::BodyTimeout => 408,
            Deny::UnsupportedMediaType => 415,
            Deny::UnknownEndpoint => 404,
            Deny::MissingCredentials
            | Deny::UnknownKey
            | Deny::InvalidSignature
            | Deny::InvalidNonce
            | Deny::StaleTimestamp
            | Deny::Replay => 401,
            Deny::KeySuspended
            | Deny::KeyRevoked
            | Deny::KeyExpired
            | Deny::ScopeMissing
            | Deny::IpNotAllowed
            | Deny::AllowlistRequired
            | Deny::AddressNotAllowed
            | Deny::AddressCooldown
            | Deny::WithdrawalsFrozen
            | Deny::WithdrawLimit
            | Deny::OrderLimit
            | Deny::KeyDormant
            | Deny::NewIpProbation
            | Deny::TooManyIps
            | Deny::IpBlocked
            | Deny::IpBanned
            | Deny::Canary => 403,
            Deny::RateLimited => 429,
            Deny::UpstreamUnavailable => 502,
            Deny::AuditUnavailable => 503,
            Deny::StateUnavailable | Deny::Overloaded | Deny::TooManyConnections => 503,
            Deny::UpstreamTimeout => 504,
        }
    }

    /// A human explanation, safe to show to the client and the trader.
    pub const fn message(self) -> &'static str {
        match self {
            Deny::MalformedRequest => "the request line or headers are not valid HTTP/1.1",
            Deny::UriTooLong => "the request target is too long",
            Deny::HeadersTooLarge => "the request headers are too large or too many",
            Deny::HeaderTimeout => "the request headers did not arrive in time",
            Deny::InvalidPath => "the request path is not in canonical form",
            Deny::InvalidTarget => "the request target or Host header is not acceptable",
            Deny::InvalidHeader => "a request header is malformed, repeated or not allowed",
            Deny::MethodOverride => "method-override headers and parameters are not allowed",
            Deny::InvalidParameter => "a query or form parameter is malformed",
            Deny::DuplicateParameter => "a parameter appears more than once",
            Deny::InvalidJson => {
                "the JSON body is not strict JSON or has a field of the wrong type"
            }
            Deny::InvalidField => "a required field is missing or not a valid exact decimal",
            Deny::MethodNotAllowed => "the method is not allowed for this endpoint",
            Deny::BodyTooLarge => "the request body is too large",
            Deny::BodyTimeout => "the request body did not arrive in time",
            Deny::UnsupportedMediaType => "the content type is not used by this API",
            Deny::UnknownEndpoint => "the endpoint is not known to the gateway",
            Deny::MissingCredentials => "this endpoint needs an API key and signature",
            Deny::UnknownKey => "the API key is not known",
            Deny::InvalidSignature => "the signature does not match the request",
            Deny::InvalidNonce => "the nonce is missing or not greater than the previous one",
            Deny::StaleTimestamp => "the timestamp is outside the receive window",
            Deny::Replay => "this signed request was already used",
            Deny::KeySuspended => "the API key is suspended",
            Deny::KeyRevoked => "the API key was revoked",
            Deny::KeyExpired => "the API key has expired",
            Deny::ScopeMissing => "the API key lacks the scope for this action",
            Deny::IpNotAllowed => "the client IP is not in the key's allowlist",
            Deny::AllowlistRequired => "withdrawals need a key with an IP allowlist",
            Deny::AddressNotAllowed => "the withdrawal address is not on the key's allowlist",
            Deny::AddressCooldown => "the withdrawal address was added too recently",
            Deny::WithdrawalsFrozen => "withdrawals are frozen",
            Deny::WithdrawLimit => "the withdrawal would exceed a withdrawal limit for its window",
            Deny::OrderLimit => "the order would exceed an order limit for its window",
            Deny::KeyDormant => {
                "the API key was unused for too long; its owner must reactivate it to trade or withdraw"
            }
            Deny::NewIpProbation => {
                "this IP is new for the API key; trading and withdrawals from it are allowed after a waiting period"
            }
            Deny::TooManyIps => {
                "the API key was used from too many IP addresses and has been suspended"
            }
            Deny::IpBlocked => "this IP presented too many different API keys and is blocked for a while",
            Deny::IpBanned => {
                "this IP sent too many invalid signatures or unknown keys and is banned for a while"
            }
            Deny::Canary => "a canary key was used; its secret has leaked",
            Deny::RateLimited => "too many requests",
            Deny::UpstreamUnavailable => "the exchange could not be reached",
            Deny::UpstreamTimeout => "the exchange did not answer in time",
            Deny::StateUnavailable => "the gateway cannot make a safe decision right now",
            Deny::AuditUnavailable => {
                "the audit log cannot record this request right now; trading and withdrawals are paused"
            }
            Deny::Overloaded => "the gateway is overloaded; retry after the time in Retry-After",
            Deny::TooManyConnections => "too many connections from this network",
        }
    }

    /// The reason the client is given: the reason itself, except for [`Deny::Canary`],
    /// which answers exactly like a real key used from outside its allowlist, so whoever
    /// holds the leaked set cannot tell the canary from the real keys in it.
    pub const fn as_told_to_client(self) -> Deny {
        match self {
            Deny::Canary => Deny::IpNotAllowed,
            other => other,
        }
    }

    /// Every variant, for tests and documentation tables.
    pub const ALL: &'static [Deny] = &[
        Deny::MalformedRequest,
        Deny::UriTooLong,
        Deny::HeadersTooLarge,
        Deny::HeaderTimeout,
        Deny::InvalidPath,
        Deny::InvalidTarget,
        Deny::InvalidHeader,
        Deny::MethodOverride,
        Deny::InvalidParameter,
        Deny::DuplicateParameter,
        Deny::InvalidJson,
        Deny::InvalidField,
        Deny::MethodNotAllowed,
        Deny::BodyTooLarge,
        Deny::BodyTimeout,
        Deny::UnsupportedMediaType,
        Deny::UnknownEndpoint,
        Deny::MissingCredentials,
        Deny::UnknownKey,
        Deny::InvalidSignature,
        Deny::InvalidNonce,
        Deny::StaleTimestamp,
        Deny::Replay,
        Deny::KeySuspended,
        Deny::KeyRevoked,
        Deny::KeyExpired,
        Deny::ScopeMissing,
        Deny::IpNotAllowed,
        Deny::AllowlistRequired,
        Deny::AddressNotAllowed,
        Deny::AddressCooldown,
        Deny::WithdrawalsFrozen,
        Deny::WithdrawLimit,
        Deny::OrderLimit,
        Deny::KeyDormant,
        Deny::NewIpProbation,
        Deny::TooManyIps,
        Deny::IpBlocked,
        Deny::IpBanned,
        Deny::Canary,
        Deny::RateLimited,
        Deny::UpstreamUnavailable,
        Deny::UpstreamTimeout,
        Deny::StateUnavailable,
        Deny::AuditUnavailable,
        Deny::Overloaded,
        Deny::TooManyConnections,
    ];
}

impl fmt::Display for Deny {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code(), self.message())
    }
}

impl std::error::Error for Deny {}
