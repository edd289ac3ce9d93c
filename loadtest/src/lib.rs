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

#![forbid(unsafe_code)]

pub mod ledger;
pub mod mock;

pub use ledger::{Ledger, LedgerEntry};
pub use mock::assertion::{AssertionClaims, AssertionError, AssertionVerifier, BoundRequest};
pub use mock::{Dialect, MockExchange, Stats};
