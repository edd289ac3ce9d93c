//! Replay protection state.
//!
//! Nonce dialects (Zaif, Kraken): the last accepted nonce per key lives in memory and in
//! SQLite. The in-memory check decides; the durable write is queued under the same lock
//! (so writes reach the store in nonce order) and awaited before forwarding, so a nonce
//! the exchange saw is never accepted again, even after a crash.
//!
//! Timestamp dialect (Binance): signatures seen inside their receive window are kept in
//! memory. Instead of persisting them, a restarted gateway refuses timestamps older than
//! its start, which closes the window in which a forgotten signature could be replayed.

use std::collections::HashMap;

use keyguard_policy::decimal::Decimal;
use keyguard_policy::dialect::Replay;
use keyguard_policy::{Deny, UnixMillis};
use parking_lot::Mutex;

use crate::store::writer::{StoreWriter, WriteOp};

/// Upper bound on remembered signatures; beyond it the oldest are dropped early, which
/// can only make the gateway refuse more (stale timestamps) — see [`SeenSignatures`].
const MAX_SEEN: usize = 1_000_000;

/// Replay state for one gateway process.
pub struct ReplayGuard {
    nonces: Mutex<HashMap<String, Decimal>>,
    seen: Mutex<SeenSignatures>,
    writer: StoreWriter,
    started_at: UnixMillis,
}

impl ReplayGuard {
    /// Starts from the nonces already in the store.
    pub fn new(
        nonces: HashMap<String, Decimal>,
        writer: StoreWriter,
        started_at: UnixMillis,
    ) -> Self {
        ReplayGuard {
            nonces: Mutex::new(nonces),
            seen: Mutex::new(SeenSignatures::default()),
            writer,
            started_at,
        }
    }

    /// Accepts `proof` for `key_id` once, durably. Fails closed: if the store cannot
    /// record the nonce, the request is refused with 503.
    pub async fn accept(&self, key_id: &str, proof: &Replay, now: UnixMillis) -> Result<(), Deny> {
        match proof {
            Replay::Nonce(nonce) => {
                let committed = {
                    let mut nonces = self.nonces.lock();
                    if nonces.get(key_id).is_some_and(|last| nonce <= last) {
                        return Err(Deny::InvalidNonce);
                    }
                    nonces.insert(key_id.to_owned(), *nonce);
                    self.writer.submit(WriteOp::Nonce {
                        key_id: key_id.to_owned(),
                        nonce: *nonce,
                    })
                };
                match committed.await {
                    Ok(Ok(())) => Ok(()),
                    _ => Err(Deny::StateUnavailable),
                }
            }
            Replay::Timestamp {
                at_ms,
                recv_window_ms,
                fingerprint,
            } => {
                if *at_ms < self.started_at {
                    return Err(Deny::StaleTimestamp);
                }
                let expires = at_ms.saturating_add(*recv_window_ms).max(now);
                self.seen.lock().insert(*fingerprint, expires, now)
            }
        }
    }
}

/// Signatures seen while their window is open, with expiry.
#[derive(Default)]
struct SeenSignatures {
    map: HashMap<[u8; 32], UnixMillis>,
    last_sweep: UnixMillis,
}

impl SeenSignatures {
    fn insert(&mut self, fp: [u8; 32], expires: UnixMillis, now: UnixMillis) -> Result<(), Deny> {
        if now.saturating_sub(self.last_sweep) >= 1_000 || self.map.len() >= MAX_SEEN {
            self.map.retain(|_, exp| *exp > now);
            self.last_sweep = now;
        }
        if self.map.get(&fp).is_some_and(|exp| *exp > now) {
            return Err(Deny::Replay);
        }
        if self.map.len() >= MAX_SEEN {
            // Every entry is still live and we are full: refusing is the safe answer.
            return Err(Deny::StateUnavailable);
        }
        self.map.insert(fp, expires);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keyguard_policy::decimal::parse_decimal;

    fn guard(dir: &std::path::Path) -> ReplayGuard {
        let store = crate::store::Store::open(dir).unwrap();
        ReplayGuard::new(
            HashMap::new(),
            StoreWriter::start(store.connect().unwrap()),
            1_000,
        )
    }

    #[tokio::test]
    async fn nonces_strictly_increase_and_persist() {
        let dir = tempfile::tempdir().unwrap();
        let g = guard(dir.path());
        let n = |s: &str| Replay::Nonce(parse_decimal(s).unwrap());
        assert_eq!(g.accept("k", &n("10.5"), 0).await, Ok(()));
        assert_eq!(g.accept("k", &n("10.5"), 0).await, Err(Deny::InvalidNonce));
        assert_eq!(g.accept("k", &n("10.49"), 0).await, Err(Deny::InvalidNonce));
        assert_eq!(g.accept("k", &n("10.51"), 0).await, Ok(()));
        assert_eq!(g.accept("other", &n("1"), 0).await, Ok(()));
        let store = crate::store::Store::open(dir.path()).unwrap();
        let stored = crate::store::load_nonces(&store.connect().unwrap()).unwrap();
        assert_eq!(stored["k"], parse_decimal("10.51").unwrap());
        // A restarted gateway starts from the stored nonce.
        let g2 = ReplayGuard::new(stored, StoreWriter::start(store.connect().unwrap()), 0);
        assert_eq!(
            g2.accept("k", &n("10.51"), 0).await,
            Err(Deny::InvalidNonce)
        );
    }

    #[tokio::test]
    async fn signatures_seen_once_per_window() {
        let dir = tempfile::tempdir().unwrap();
        let g = guard(dir.path());
        let ts = |at: u64, fp: u8| Replay::Timestamp {
            at_ms: at,
            recv_window_ms: 5_000,
            fingerprint: [fp; 32],
        };
        assert_eq!(g.accept("k", &ts(2_000, 1), 2_100).await, Ok(()));
        assert_eq!(g.accept("k", &ts(2_000, 1), 3_000).await, Err(Deny::Replay));
        assert_eq!(g.accept("k", &ts(2_000, 2), 3_000).await, Ok(()));
        // Signed before this process started: refused, we cannot know it was not used.
        assert_eq!(
            g.accept("k", &ts(999, 3), 2_000).await,
            Err(Deny::StaleTimestamp)
        );
    }
}
