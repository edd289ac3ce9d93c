//! The single writer thread. Requests that must be durable before they are forwarded
//! (a nonce advance) queue an operation here and wait for its commit; the thread commits
//! everything queued so far in one transaction, so a burst of N requests costs one
//! commit, not N.

use std::sync::mpsc;
use std::thread;

use keyguard_policy::anomaly::LearnedIp;
use keyguard_policy::decimal::Decimal;
use keyguard_policy::velocity::LedgerRecord;
use keyguard_policy::UnixMillis;
use rusqlite::{params, Connection};
use tokio::sync::oneshot;

/// A durable change.
#[derive(Debug)]
pub enum WriteOp {
    /// Record the last accepted nonce of a key.
    Nonce {
        /// Key id.
        key_id: String,
        /// The nonce.
        nonce: Decimal,
    },
    /// Insert or update a velocity ledger entry.
    Velocity(LedgerRecord),
    /// Remember a network a key was seen from.
    LearnedIp(LearnedIp),
    /// A key was used (only ever moves forward).
    Touch {
        /// Key id.
        key_id: String,
        /// When.
        at: UnixMillis,
    },
    /// An anomaly rule suspended a key.
    Suspend {
        /// Key id.
        key_id: String,
        /// Why (the rule's code).
        reason: String,
        /// When the rule decided; a key an operator changed since then is left alone,
        /// so a resume always wins over a suspension decided before it.
        decided_at: UnixMillis,
    },
}

type Job = (WriteOp, Option<oneshot::Sender<Result<(), String>>>);

/// Handle to the writer thread; cheap to clone.
#[derive(Clone)]
pub struct StoreWriter {
    tx: mpsc::Sender<Job>,
}

impl StoreWriter {
    /// Starts the writer on `conn`. The thread ends when every handle is dropped,
    /// after committing what was queued.
    pub fn start(conn: Connection) -> StoreWriter {
        let (tx, rx) = mpsc::channel::<Job>();
        thread::Builder::new()
            .name("keyguard-store-writer".into())
            .spawn(move || run(conn, rx))
            .expect("spawning the store writer thread");
        StoreWriter { tx }
    }

    /// Queues `op` without waiting for it: for state whose loss in a crash only makes the
    /// gateway stricter or costs a log line (learned networks, last use).
    pub fn submit_detached(&self, op: WriteOp) {
        if self.tx.send((op, None)).is_err() {
            tracing::error!("store writer stopped; a state change was not recorded");
        }
    }

    /// Queues `op` and returns a receiver that resolves once it is committed. Queuing
    /// never blocks, so callers may do it while holding a lock that orders their writes.
    pub fn submit(&self, op: WriteOp) -> oneshot::Receiver<Result<(), String>> {
        let (done, wait) = oneshot::channel();
        if let Err(mpsc::SendError((_, Some(done)))) = self.tx.send((op, Some(done))) {
            let _ = done.send(Err("store writer stopped".into()));
        }
        wait
    }
}

fn run(mut conn: Connection, rx: mpsc::Receiver<Job>) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        // Everything that queued up while the previous commit ran goes into this one.
        while batch.len() < 4096 {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let started = std::time::Instant::now();
        let result = apply(&mut conn, &batch).map_err(|e| format!("{e:#}"));
        let m = crate::metrics::metrics();
        m.store_commit_duration.observe(started.elapsed());
        if let Err(e) = &result {
            m.store_commit_errors.inc();
            tracing::error!(error = %e, ops = batch.len(), "store commit failed");
        }
        for (_, done) in batch {
            if let Some(done) = done {
                let _ = done.send(result.clone());
            }
        }
    }
}

fn apply(conn: &mut Connection, batch: &[Job]) -> anyhow::Result<()> {
    let tx = conn.transaction()?;
    {
        let mut nonce_stmt = tx.prepare_cached(
            "INSERT INTO nonces (key_id, nonce) VALUES (?1, ?2)
             ON CONFLICT(key_id) DO UPDATE SET nonce = excluded.nonce",
        )?;
        for (op, _) in batch {
            match op {
                WriteOp::Nonce { key_id, nonce } => {
                    nonce_stmt.execute(params![key_id, nonce.to_string()])?;
                }
                WriteOp::Velocity(r) => {
                    tx.prepare_cached(
                        "INSERT INTO velocity_ledger (id, key_id, account, asset, kind, amount, at, state)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
                         ON CONFLICT(id) DO UPDATE SET state = excluded.state",
                    )?
                    .execute(params![
                        r.id as i64,
                        r.key_id,
                        r.account,
                        r.asset,
                        r.kind.as_str(),
                        r.amount.map(|a| a.to_string()),
                        r.at as i64,
                        r.state.as_str()
                    ])?;
                }
                WriteOp::LearnedIp(l) => {
                    tx.prepare_cached(
                        // An upsert: a network forgotten after a canary (or relearned after
                        // that) replaces what was stored, or a restart would restore trust.
                        "INSERT INTO learned_ips (key_id, net, first_seen, usable_from)
                         VALUES (?1, ?2, ?3, ?4)
                         ON CONFLICT (key_id, net) DO UPDATE
                         SET first_seen = excluded.first_seen, usable_from = excluded.usable_from",
                    )?
                    .execute(params![
                        l.key_id,
                        l.net.to_string(),
                        l.first_seen as i64,
                        l.usable_from as i64
                    ])?;
                }
                WriteOp::Touch { key_id, at } => {
                    tx.prepare_cached(
                        "UPDATE keys SET last_used_at = ?2
                         WHERE key_id = ?1 AND (last_used_at IS NULL OR last_used_at < ?2)",
                    )?
                    .execute(params![key_id, *at as i64])?;
                }
                WriteOp::Suspend {
                    key_id,
                    reason,
                    decided_at,
                } => {
                    let n = tx
                        .prepare_cached(
                            "UPDATE keys SET status = 'suspended', status_reason = ?2, updated_at = ?3
                             WHERE key_id = ?1 AND status = 'active' AND updated_at <= ?4",
                        )?
                        .execute(params![
                            key_id,
                            reason,
                            crate::store::now_ms() as i64,
                            *decided_at as i64
                        ])?;
                    if n > 0 {
                        crate::store::record_admin_event(
                            &tx,
                            "keyguard",
                            "key_suspend",
                            key_id,
                            reason,
                        )?;
                        crate::store::bump_generation(&tx)?;
                    }
                }
            }
        }
    }
    tx.commit()?;
    Ok(())
}
