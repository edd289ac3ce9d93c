//! The single writer thread. Requests that must be durable before they are forwarded
//! (a nonce advance) queue an operation here and wait for its commit; the thread commits
//! everything queued so far in one transaction, so a burst of N requests costs one
//! commit, not N.

use std::sync::mpsc;
use std::thread;

use keyguard_policy::decimal::Decimal;
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
        let result = apply(&mut conn, &batch).map_err(|e| format!("{e:#}"));
        if let Err(e) = &result {
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
            }
        }
    }
    tx.commit()?;
    Ok(())
}
