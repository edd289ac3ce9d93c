//! Per-key activity for the traders' pages: a bounded, indexed SQLite table fed from the
//! audit path, so a page view never scans the audit log.
//!
//! The request path only offers each audit event to a bounded channel ([`tap`], a
//! `try_send`: a full channel drops the row and counts it, the request never waits); one
//! thread inserts them in batches and enforces retention (`[admin] activity_retention`,
//! `activity_max_rows`). In distributed mode the rows go to Redis instead ([`start_redis`],
//! [`crate::store::redis::activity`]). Requests without a known key (unknown keys, malformed requests)
//! are not about any trader's key and are not kept here; the audit log has them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TryRecvError};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use keyguard_policy::UnixMillis;
use rusqlite::{params, Connection};

use crate::audit::AuditEvent;
use crate::store::now_ms;
use crate::store::redis::RedisStore;

/// The table and its indexes (created by [`crate::store::Store::open`]).
pub(crate) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS key_activity (
    id         INTEGER PRIMARY KEY,
    ts         INTEGER NOT NULL,
    key_id     TEXT NOT NULL,
    account    TEXT NOT NULL,
    client_ip  TEXT NOT NULL,
    action     TEXT,
    decision   TEXT NOT NULL,
    code       TEXT,
    status     INTEGER NOT NULL,
    request_id TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS key_activity_key ON key_activity(key_id, id);
CREATE INDEX IF NOT EXISTS key_activity_account ON key_activity(account, id);
CREATE INDEX IF NOT EXISTS key_activity_ts ON key_activity(ts);
";

/// Rows waiting for the writer; past this they are dropped (and counted).
const QUEUE: usize = 8192;
/// Rows per insert transaction.
const BATCH: usize = 512;

/// One request of one key.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Row {
    /// Row id (pagination cursor).
    pub id: i64,
    /// When (ms).
    pub ts: UnixMillis,
    /// Key id.
    pub key_id: String,
    /// Account.
    pub account: String,
    /// Client IP.
    pub client_ip: String,
    /// Classified action, if it got that far.
    pub action: Option<String>,
    /// `allow`, `deny` or `would_deny`.
    pub decision: String,
    /// Deny code.
    pub code: Option<String>,
    /// HTTP status returned.
    pub status: u16,
    /// Request id (in the client's error body too).
    pub request_id: String,
}

struct Tap {
    tx: SyncSender<Row>,
    dropped: AtomicU64,
}

static TAP: OnceLock<Tap> = OnceLock::new();

/// Offers one audit event to the activity writer, if one runs. Never blocks.
pub fn tap(event: &AuditEvent<'_>) {
    let (Some(tap), Some(key_id), Some(account)) = (TAP.get(), event.key_id, event.account) else {
        return;
    };
    let row = Row {
        id: 0,
        ts: now_ms(),
        key_id: key_id.to_owned(),
        account: account.to_owned(),
        client_ip: event.client_ip.to_owned(),
        action: event.action.map(str::to_owned),
        decision: event.decision.to_owned(),
        code: event.code.map(str::to_owned),
        status: event.status,
        request_id: event.request_id.to_owned(),
    };
    if tap.tx.try_send(row).is_err() {
        tap.dropped.fetch_add(1, Ordering::Relaxed);
    }
}

/// Rows dropped because the writer fell behind.
pub fn dropped() -> u64 {
    TAP.get().map_or(0, |t| t.dropped.load(Ordering::Relaxed))
}

/// Retention of the table.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    /// Rows older than this are deleted.
    pub max_age_ms: u64,
    /// At most this many rows are kept.
    pub max_rows: u64,
}

/// The tap's channel, installed once per process: the receiver for the writer that
/// installed it, `None` when one already runs.
fn install() -> Option<Receiver<Row>> {
    let (tx, rx) = sync_channel(QUEUE);
    TAP.set(Tap {
        tx,
        dropped: AtomicU64::new(0),
    })
    .is_ok()
    .then_some(rx)
}

impl Retention {
    /// `[admin] activity_retention` and `activity_max_rows`.
    pub fn from_config(cfg: &keyguard_config::Config) -> Retention {
        Retention {
            max_age_ms: cfg.admin.activity_retention_ms,
            max_rows: cfg.admin.activity_max_rows,
        }
    }
}

/// Starts the writer thread on `conn` (once per process; later calls do nothing).
pub fn start(conn: Connection, retention: Retention) -> anyhow::Result<()> {
    let Some(rx) = install() else { return Ok(()) };
    std::thread::Builder::new()
        .name("keyguard-activity".into())
        .spawn(move || writer(conn, rx, retention))?;
    Ok(())
}

/// Distributed mode: starts the writer that appends the rows to the accounts' streams in
/// Redis ([`crate::store::redis::activity`]), on every replica, so that each replica's
/// pages show what all of them served (once per process; later calls do nothing). While
/// Redis does not answer, each batch waits at most the store's timeout and is then
/// dropped and counted, as rows are when the channel is full; requests never wait.
pub fn start_redis(store: Arc<RedisStore>, retention: Retention) -> anyhow::Result<()> {
    let Some(rx) = install() else { return Ok(()) };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name("keyguard-activity".into())
        .spawn(move || redis_writer(&runtime, &store, rx, retention))?;
    Ok(())
}

fn redis_writer(
    runtime: &tokio::runtime::Runtime,
    store: &RedisStore,
    rx: Receiver<Row>,
    retention: Retention,
) {
    let mut last_warned: Option<Instant> = None;
    let mut batch: Vec<Row> = Vec::with_capacity(BATCH);
    loop {
        let disconnected = fill(&rx, &mut batch);
        let full = batch.len() == BATCH;
        if !batch.is_empty() {
            if let Err(e) = runtime.block_on(store.append_activity(&batch, retention, now_ms())) {
                if let Some(tap) = TAP.get() {
                    tap.dropped.fetch_add(batch.len() as u64, Ordering::Relaxed);
                }
                // One line per ten seconds of outage, not one per batch.
                if last_warned.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
                    last_warned = Some(Instant::now());
                    tracing::warn!(error = %format!("{e:#}"), rows = batch.len(), "activity rows dropped: redis did not take them");
                }
            }
            batch.clear();
        }
        if disconnected {
            return;
        }
        if !full {
            std::thread::sleep(PAUSE);
        }
    }
}

/// Moves queued rows into `batch`, up to a batch; whether the channel is closed.
fn fill(rx: &Receiver<Row>, batch: &mut Vec<Row>) -> bool {
    while batch.len() < BATCH {
        match rx.try_recv() {
            Ok(r) => batch.push(r),
            Err(TryRecvError::Empty) => return false,
            Err(TryRecvError::Disconnected) => return true,
        }
    }
    false
}

/// How long the writer waits between batches when the queue had less than a batch.
/// It sleeps rather than blocking in `recv`, so that a request offering its row never has
/// to wake this thread (a futex call and a cross-core wake-up per request otherwise).
const PAUSE: Duration = Duration::from_millis(50);

fn writer(mut conn: Connection, rx: Receiver<Row>, retention: Retention) {
    let mut last_prune = Instant::now() - Duration::from_secs(3600);
    let mut batch: Vec<Row> = Vec::with_capacity(BATCH);
    loop {
        let disconnected = fill(&rx, &mut batch);
        let full = batch.len() == BATCH;
        if !batch.is_empty() {
            if let Err(e) = insert(&mut conn, &batch) {
                tracing::error!(error = %e, rows = batch.len(), "activity rows lost");
            }
            batch.clear();
        }
        if last_prune.elapsed() >= Duration::from_secs(60) {
            last_prune = Instant::now();
            if let Err(e) = prune(&conn, retention, now_ms()) {
                tracing::error!(error = %e, "activity retention failed");
            }
        }
        if disconnected {
            return;
        }
        if !full {
            std::thread::sleep(PAUSE);
        }
    }
}

fn insert(conn: &mut Connection, rows: &[Row]) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    {
        let mut stmt = tx.prepare_cached(
            "INSERT INTO key_activity (ts, key_id, account, client_ip, action, decision, code, status, request_id)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        )?;
        for r in rows {
            stmt.execute(params![
                r.ts as i64,
                r.key_id,
                r.account,
                r.client_ip,
                r.action,
                r.decision,
                r.code,
                r.status,
                r.request_id
            ])?;
        }
    }
    tx.commit()
}

/// Deletes rows past their age, then the oldest beyond the row limit.
pub fn prune(conn: &Connection, retention: Retention, now: UnixMillis) -> rusqlite::Result<usize> {
    let mut n = conn.execute(
        "DELETE FROM key_activity WHERE ts < ?1",
        [now.saturating_sub(retention.max_age_ms) as i64],
    )?;
    n += conn.execute(
        "DELETE FROM key_activity WHERE id <= (SELECT MAX(id) FROM key_activity) - ?1",
        [retention.max_rows as i64],
    )?;
    Ok(n)
}

/// Which rows a page shows.
#[derive(Debug, Clone, Default)]
pub struct Filter<'a> {
    /// One key (else every key of `account`).
    pub key_id: Option<&'a str>,
    /// The owner; always set for traders' queries.
    pub account: Option<&'a str>,
    /// `allow`, `deny` or `would_deny`.
    pub decision: Option<&'a str>,
    /// Rows older than this id (the next page).
    pub before: Option<i64>,
}

/// Up to `limit` rows, newest first.
pub fn query(conn: &Connection, f: &Filter<'_>, limit: usize) -> rusqlite::Result<Vec<Row>> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, ts, key_id, account, client_ip, action, decision, code, status, request_id
         FROM key_activity
         WHERE (?1 IS NULL OR key_id = ?1) AND (?2 IS NULL OR account = ?2)
           AND (?3 IS NULL OR decision = ?3) AND (?4 IS NULL OR id < ?4)
         ORDER BY id DESC LIMIT ?5",
    )?;
    let rows = stmt.query_map(
        params![f.key_id, f.account, f.decision, f.before, limit as i64],
        |r| {
            Ok(Row {
                id: r.get(0)?,
                ts: r.get::<_, i64>(1)? as u64,
                key_id: r.get(2)?,
                account: r.get(3)?,
                client_ip: r.get(4)?,
                action: r.get(5)?,
                decision: r.get(6)?,
                code: r.get(7)?,
                status: r.get::<_, i64>(8)? as u16,
                request_id: r.get(9)?,
            })
        },
    )?;
    rows.collect()
}

/// Client IPs a key was refused from for not being allowed there, since `since`:
/// (ip, how many times, last time), most recent first.
pub fn foreign_attempts(
    conn: &Connection,
    key_id: Option<&str>,
    account: &str,
    since: UnixMillis,
) -> rusqlite::Result<Vec<(String, String, u64, UnixMillis)>> {
    let mut stmt = conn.prepare_cached(
        "SELECT key_id, client_ip, COUNT(*), MAX(ts) FROM key_activity
         WHERE account = ?1 AND (?2 IS NULL OR key_id = ?2) AND ts >= ?3
           AND code IN ('ip_not_allowed', 'new_ip_probation')
         GROUP BY key_id, client_ip ORDER BY MAX(ts) DESC LIMIT 20",
    )?;
    let rows = stmt.query_map(params![account, key_id, since as i64], |r| {
        Ok((
            r.get(0)?,
            r.get(1)?,
            r.get::<_, i64>(2)? as u64,
            r.get::<_, i64>(3)? as u64,
        ))
    })?;
    rows.collect()
}

/// The distinct client IPs whose requests with `key_id` were allowed since `since`.
pub fn allowed_ips(
    conn: &Connection,
    key_id: &str,
    since: UnixMillis,
) -> rusqlite::Result<Vec<String>> {
    let mut stmt = conn.prepare_cached(
        "SELECT DISTINCT client_ip FROM key_activity
         WHERE key_id = ?1 AND ts >= ?2 AND decision = 'allow' ORDER BY client_ip LIMIT 64",
    )?;
    let rows = stmt.query_map(params![key_id, since as i64], |r| r.get(0))?;
    rows.collect()
}

/// A deny code in plain words, for traders.
pub fn explain(code: &str) -> &'static str {
    match code {
        "ip_not_allowed" => "The request came from a network this key is not allowed to be used from.",
        "new_ip_probation" => "The key was used from a network it has never been used from; trades and withdrawals from a new network wait a while.",
        "scope_missing" => "The key does not have the permission this request needs.",
        "key_suspended" => "The key is suspended.",
        "key_revoked" => "The key is revoked.",
        "key_expired" => "The key has expired.",
        "key_dormant" => "The key was unused for a long time (or never used since it was created), so it may only read until you reactivate it.",
        "allowlist_required" => "Withdrawals need a key restricted to allowed networks.",
        "address_not_allowed" => "The withdrawal address is not one of this key's addresses.",
        "address_cooldown" => "The withdrawal address was added recently and is still in its cool-down.",
        "withdrawals_frozen" => "Withdrawals are frozen by the operator.",
        "withdraw_limit" => "The withdrawal would exceed the key's or account's withdrawal limit for this period.",
        "order_limit" => "Too many orders in this period.",
        "too_many_ips" => "The key was used from too many networks in a short time and was suspended.",
        "ip_blocked" => "The network presented too many different keys and is blocked for a while.",
        "ip_banned" => "The network sent too many bad signatures and is banned for a while.",
        "rate_limited" => "Too many requests; the client was asked to slow down.",
        "invalid_signature" => "The request's signature did not match the key's secret.",
        "invalid_nonce" | "stale_timestamp" | "replay" => "The request was a repeat or out of date (nonce or timestamp), so it could be a replay.",
        "unknown_endpoint" => "The request asked for an endpoint Keyguard does not let through.",
        "upstream_unavailable" | "upstream_timeout" => "The exchange did not answer in time.",
        "state_unavailable" => "Keyguard could not check its limits, so it refused to be safe.",
        _ => "The request was malformed or not allowed.",
    }
}
