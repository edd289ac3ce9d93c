//! Keyguard's pure decisions about one request: who signed it, what it does, whether the
//! key may do that from here. No sockets, no databases: everything it needs is passed in,
//! including the clock, so every rule is testable in isolation.
//!
//! # Layout
//! - [`deny`]: the [`Deny`] reasons with their stable codes and HTTP statuses.
//! - [`action`]: [`Action`] classes and key [`Scopes`].
//! - [`params`]: parameter values after strict parsing ([`Params`], [`JsonValue`]).
//! - [`parse`]: strict parsers for paths, query/form strings, JSON and headers.
//! - [`dialect`]: Zaif, Binance and Kraken signing, verification and replay proofs.
//! - [`route`]: the [`RouteTable`] that classifies a request and extracts its facts.
//! - [`key`]: [`KeyRecord`]s, credentials and allowlist parsing.
//! - [`authorize`]: status, expiry, scope, IP and withdrawal-address checks.
//! - [`client_ip`]: the client address behind trusted proxies.
//! - [`limits`]: GCRA rate limits per client network, key, account and action class.
//! - [`velocity`]: exact sliding-window sums of withdrawals and orders, reserved atomically.
//! - [`anomaly`]: rules against leaked keys (dormant key, new IP, many IPs, one IP with
//!   many keys, signature failures), each with a shadow mode.
//! - [`decimal`]: exact decimal parsing for money and nonces.
//! - [`time`]: the injectable [`Clock`].

#![forbid(unsafe_code)]

pub mod action;
pub mod anomaly;
pub mod authorize;
pub mod client_ip;
pub mod decimal;
pub mod deny;
pub mod dialect;
pub mod key;
pub mod limits;
pub mod params;
pub mod parse;
pub mod route;
pub mod time;
pub mod velocity;

pub use action::{Action, Scope, Scopes, UnknownName};
pub use deny::Deny;
pub use dialect::{DialectConfig, DialectKind, ParsedRequest};
pub use key::{Credential, KeyRecord, KeyStatus, Secret, WithdrawAddress};
pub use params::{JsonValue, ParamValue, Params};
pub use route::{Classified, Facts, RouteSpec, RouteTable};
pub use time::{Clock, ManualClock, SystemClock, UnixMillis};
