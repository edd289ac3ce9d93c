//! Keyguard, the gateway: everything with I/O around the pure decisions of
//! `keyguard-policy`.
//!
//! # Layout
//! - [`cli`]: the `keyguard` command line.
//! - [`admin`]: the admin listener: traders' web UI, health endpoints.
//! - [`accounts`]: web UI logins: Argon2id passwords, TOTP, recovery codes, lockout.
//! - [`activity`]: when keys were last used (dormant-key rule).
//! - [`alerts`]: the operator's webhook, off the request path.
//! - [`app`]: wiring a validated config into a running gateway.
//! - [`server`]: accepting connections: TLS, HTTP/1 and HTTP/2, overload limits,
//!   graceful shutdown.
//! - [`reload`]: SIGHUP: validate the config file again and swap what can be swapped.
//! - [`proxy`]: the request pipeline ([`proxy::Gateway::process`]) and forwarding.
//! - [`upstream`]: each worker's own connections to the exchange, and header hygiene.
//! - [`respond`]: the one place a `Deny` becomes an HTTP response.
//! - [`assertion`]: the `X-Keyguard-Assertion` JWT for the upstream.
//! - [`json`]: the small JSON writer for the per-request audit line and claims.
//! - [`keys`]: the in-memory key snapshot and its refresher.
//! - [`replay`]: nonce and seen-signature state.
//! - [`store`]: the embedded SQLite store and its group-commit writer.
//! - [`secrets`]: the master key and AES-256-GCM sealing of API secrets.
//! - [`audit`]: the JSONL audit log: writer thread, rotation, flood summaries.
//! - [`batch`]: one hand-off per worker turn for the lines writer threads append.
//! - [`metrics`]: Prometheus metrics for the admin listener's `/metrics`.

#![forbid(unsafe_code)]

pub mod accounts;
pub mod activity;
pub mod admin;
pub mod alerts;
pub mod app;
pub mod assertion;
pub mod audit;
pub mod batch;
pub mod cli;
pub mod json;
pub mod keys;
pub mod metrics;
pub mod proxy;
pub mod reload;
pub mod replay;
pub mod respond;
pub mod secrets;
pub mod server;
pub mod store;
pub mod upstream;
