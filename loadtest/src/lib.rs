//! Keyguard's test bench: a mock exchange that stands where Zaif, Binance or Kraken would
//! stand behind the gateway, and records exactly what reached it.
//!
//! The mock is deliberately strict about the one thing the gateway promises its upstream:
//! every private request carries a fresh identity assertion bound to that exact request.
//! A request the gateway should have stopped but forwarded shows up in the ledger; a request
//! the gateway forwarded without a valid assertion is refused and counted. Tests compare the
//! ledger with what a real client (ccxt) attempted, so "denied" provably means "never
//! executed".
//!
//! # Layout
//! - [`mock`]: the hyper server, request routing and per-exchange state.
//!   - [`mock::assertion`]: verification of the gateway's `X-Keyguard-Assertion` JWT,
//!     including method/path/body binding and `jti` replay protection.
//!   - `mock::zaif`, `mock::binance`, `mock::kraken`: each exchange's endpoints with
//!     responses in the real exchange's JSON shape, good enough for unmodified ccxt.
//!   - `mock::params`: lenient query/form/JSON parameter reading (the gateway is the strict
//!     one; the mock only needs the values).
//! - [`ledger`]: the append-only JSON Lines record of executed requests.
//!
//! The load generator, attack replays and benchmarks:
//! - [`workload`]: exchange operations per dialect, signed with the policy crate's
//!   `sign_request` (what real clients send), per-key nonces, ledger fingerprints.
//! - [`client`]: hyper's pooled keep-alive client bound to a loopback source address.
//! - [`runner`]: actors (one client each, legit or attack) driven open or closed loop
//!   until the deadline; HDR histograms, counts and a timeline.
//! - [`scenario`]: `legit`, `zaif-2018`, `stuffing`, `flood`, `mixed`: keys to provision
//!   and the actors that use them.
//! - [`verdict`]: the ledger matched back to the generated requests: what reached the
//!   exchange.
//! - [`report`]: the table, `report.json` and the self-contained HTML report.
//! - [`stats`]: latency histograms and the per-second timeline.
//! - [`harness`]: starting `keyguard`, the mock exchange and nginx as child processes.
//! - [`app`]: `run` and `demo`; [`bench`]: direct vs nginx vs Keyguard.

#![forbid(unsafe_code)]

pub mod app;
pub mod bench;
pub mod client;
pub mod harness;
pub mod ledger;
pub mod mock;
pub mod report;
pub mod runner;
pub mod scenario;
pub mod stats;
pub mod verdict;
pub mod workload;

pub use ledger::{Ledger, LedgerEntry};
pub use mock::assertion::{AssertionClaims, AssertionError, AssertionVerifier, BoundRequest};
pub use mock::{Dialect, MockExchange, Stats};
