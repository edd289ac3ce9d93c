//! The embedded store: one SQLite file in the data dir holding keys, nonces and freezes.
//!
//! Reads for the hot path come from in-memory snapshots ([`crate::keys::KeyCache`]);
//! SQLite is written by the CLI (rarely) and by one writer thread that group-commits
//! velocity reservations, nonce checkpoints and the rest ([`writer::StoreWriter`]), so
//! durability costs one commit per batch, not per request. Accepted nonces reach the
//! [`journal`] first, with one append per request.

pub mod edit;
pub mod journal;
pub mod redis;
pub mod writer;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use keyguard_policy::anomaly::LearnedIp;
use keyguard_policy::authorize::Freezes;
use keyguard_policy::decimal::{parse_decimal, Decimal};
use keyguard_policy::key::{Credential, KeyRecord, KeyStatus, Secret, WithdrawAddress};
use keyguard_policy::velocity::LedgerRecord;
use keyguard_policy::{Scopes, UnixMillis};
use rusqlite::{params, Connection, OptionalExtension};

use crate::secrets::MasterKey;

/// 2: `keys.canary`, `keys.trusted_ips` and the `pending_changes` table (canary keys, key
/// editing).
const SCHEMA_VERSION: i64 = 2;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS keys (
    key_id        TEXT PRIMARY KEY,
    api_key       TEXT NOT NULL UNIQUE,
    account       TEXT NOT NULL,
    label         TEXT NOT NULL,
    scopes        TEXT NOT NULL,
    allow_ips     TEXT NOT NULL,
    status        TEXT NOT NULL,
    status_reason TEXT,
    created_at    INTEGER NOT NULL,
    updated_at    INTEGER NOT NULL,
    expires_at    INTEGER,
    cred_kind     TEXT NOT NULL,
    cred_sealed   BLOB,
    cred_public   BLOB,
    last_used_at  INTEGER,
    canary        INTEGER NOT NULL DEFAULT 0,
    trusted_ips   TEXT NOT NULL DEFAULT '[]'
);
CREATE INDEX IF NOT EXISTS keys_account ON keys(account);
CREATE TABLE IF NOT EXISTS withdraw_addresses (
    key_id   TEXT NOT NULL REFERENCES keys(key_id),
    asset    TEXT NOT NULL,
    address  TEXT NOT NULL,
    added_at INTEGER NOT NULL,
    PRIMARY KEY (key_id, asset, address)
);
CREATE TABLE IF NOT EXISTS nonces (
    key_id TEXT PRIMARY KEY,
    nonce  TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS freezes (
    scope      TEXT NOT NULL,
    target     TEXT NOT NULL,
    reason     TEXT NOT NULL,
    actor      TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (scope, target)
);
CREATE TABLE IF NOT EXISTS velocity_ledger (
    id      INTEGER PRIMARY KEY,
    key_id  TEXT NOT NULL,
    account TEXT NOT NULL,
    asset   TEXT NOT NULL,
    kind    TEXT NOT NULL,
    amount  TEXT,
    at      INTEGER NOT NULL,
    state   TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS velocity_at ON velocity_ledger(at);
CREATE TABLE IF NOT EXISTS learned_ips (
    key_id      TEXT NOT NULL,
    net         TEXT NOT NULL,
    first_seen  INTEGER NOT NULL,
    usable_from INTEGER NOT NULL,
    PRIMARY KEY (key_id, net)
);
CREATE TABLE IF NOT EXISTS pending_changes (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    key_id       TEXT NOT NULL REFERENCES keys(key_id),
    kind         TEXT NOT NULL,
    value        TEXT NOT NULL,
    requested_at INTEGER NOT NULL,
    effective_at INTEGER NOT NULL,
    actor        TEXT NOT NULL,
    reason       TEXT NOT NULL,
    state        TEXT NOT NULL,
    decided_at   INTEGER,
    note         TEXT
);
CREATE INDEX IF NOT EXISTS pending_due ON pending_changes(state, effective_at);
CREATE INDEX IF NOT EXISTS pending_key ON pending_changes(key_id, state);
CREATE TABLE IF NOT EXISTS admin_events (
    id       INTEGER PRIMARY KEY AUTOINCREMENT,
    ts       INTEGER NOT NULL,
    actor    TEXT NOT NULL,
    action   TEXT NOT NULL,
    target   TEXT NOT NULL,
    reason   TEXT NOT NULL,
    audited  INTEGER NOT NULL DEFAULT 0
);
";

/// The durable store in a data directory.
#[derive(Debug, Clone)]
pub struct Store {
    path: PathBuf,
}

/// How a new key proves requests.
pub enum NewCredential {
    /// A shared secret (sealed before it is stored).
    Hmac(Vec<u8>),
    /// An Ed25519 public key (Binance).
    Ed25519([u8; 32]),
}

/// A key to create.
pub struct NewKey {
    /// Internal id.
    pub key_id: String,
    /// The API key string clients send.
    pub api_key: String,
    /// Owning account.
    pub account: String,
    /// Label.
    pub label: String,
    /// Scopes.
    pub scopes: Scopes,
    /// Allowlist.
    pub allow_ips: Vec<ipnet::IpNet>,
    /// Networks trusted from creation (the creator's, `--trust-ip`).
    pub trusted_ips: Vec<ipnet::IpNet>,
    /// Withdrawal addresses as (asset, address).
    pub withdraw_addresses: Vec<(String, String)>,
    /// Expiry.
    pub expires_at: Option<UnixMillis>,
    /// Credential.
    pub credential: NewCredential,
    /// A canary key (never forwarded; its use raises the alarm).
    pub canary: bool,
}

/// A key as listed by the CLI: everything but the credential.
#[derive(Debug, Clone, serde::Serialize)]
pub struct KeySummary {
    /// Internal id.
    pub key_id: String,
    /// Owning account.
    pub account: String,
    /// Label.
    pub label: String,
    /// Scope names.
    pub scopes: Vec<&'static str>,
    /// Allowlist CIDRs.
    pub allow_ips: Vec<String>,
    /// Networks trusted since creation.
    pub trusted_ips: Vec<String>,
    /// Withdrawal addresses.
    pub withdraw_addresses: Vec<AddressSummary>,
    /// Status name.
    pub status: &'static str,
    /// Why the status was last changed.
    pub status_reason: Option<String>,
    /// Credential kind (`hmac`/`ed25519`).
    pub credential: String,
    /// Creation time (ms).
    pub created_at: UnixMillis,
    /// Expiry (ms).
    pub expires_at: Option<UnixMillis>,
    /// A canary key: shown to operators only (the CLI and admin views), never to clients.
    pub canary: bool,
    /// Last use as stored (at most a minute behind; `None`: never used).
    pub last_used_at: Option<UnixMillis>,
}

/// A withdrawal address in a listing.
#[derive(Debug, Clone, serde::Serialize)]
pub struct AddressSummary {
    /// Asset.
    pub asset: String,
    /// Address.
    pub address: String,
    /// When it was added (ms).
    pub added_at: UnixMillis,
}

/// Now, in Unix milliseconds.
pub fn now_ms() -> UnixMillis {
    use keyguard_policy::Clock;
    keyguard_policy::SystemClock.now_ms()
}

impl Store {
    /// Opens (creating if needed) `keyguard.db` in `data_dir` and brings its schema up to date.
    pub fn open(data_dir: &Path) -> anyhow::Result<Store> {
        std::fs::create_dir_all(data_dir)
            .with_context(|| format!("creating data dir {}", data_dir.display()))?;
        let store = Store {
            path: data_dir.join("keyguard.db"),
        };
        let conn = store.connect()?;
        conn.execute_batch(SCHEMA).context("creating schema")?;
        conn.execute_batch(crate::accounts::SCHEMA)
            .context("creating account tables")?;
        conn.execute_batch(crate::admin::activity::SCHEMA)
            .context("creating the activity table")?;
        conn.execute_batch(crate::admin::tokens::SCHEMA)
            .context("creating the API token table")?;
        let version: Option<i64> = conn
            .query_row("SELECT v FROM meta WHERE k = 'schema_version'", [], |r| {
                r.get::<_, String>(0)
            })
            .optional()?
            .map(|v| v.parse().unwrap_or(0));
        match version {
            None => {
                conn.execute(
                    "INSERT INTO meta (k, v) VALUES ('schema_version', ?1), ('keys_generation', '0')",
                    params![SCHEMA_VERSION.to_string()],
                )?;
            }
            Some(SCHEMA_VERSION) => {}
            // New tables come from SCHEMA above (CREATE IF NOT EXISTS); columns need ALTER.
            // Version 1 had no canary keys: every existing key is a real one.
            Some(1) => {
                let tx = conn.unchecked_transaction()?;
                tx.execute_batch(
                    "ALTER TABLE keys ADD COLUMN canary INTEGER NOT NULL DEFAULT 0;
                     ALTER TABLE keys ADD COLUMN trusted_ips TEXT NOT NULL DEFAULT '[]';
                     UPDATE meta SET v = '2' WHERE k = 'schema_version';",
                )
                .context("migrating the store to schema version 2")?;
                tx.commit()?;
            }
            Some(v) => bail!(
                "{} has schema version {v}; this keyguard understands {SCHEMA_VERSION}",
                store.path.display()
            ),
        }
        Ok(store)
    }

    /// A new connection with the pragmas every user of the file needs.
    pub fn connect(&self) -> anyhow::Result<Connection> {
        let conn = Connection::open(&self.path)
            .with_context(|| format!("opening {}", self.path.display()))?;
        // WAL lets the CLI write while the gateway reads; NORMAL sync in WAL mode survives
        // a process crash (the case we promise) without an fsync per commit.
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.busy_timeout(Duration::from_secs(5))?;
        Ok(conn)
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Bumps the counter that running gateways poll to notice key changes.
pub(crate) fn bump_generation(conn: &Connection) -> anyhow::Result<()> {
    conn.execute(
        "UPDATE meta SET v = CAST(CAST(v AS INTEGER) + 1 AS TEXT) WHERE k = 'keys_generation'",
        [],
    )?;
    Ok(())
}

/// The key-change counter (see [`bump_generation`]).
pub fn keys_generation(conn: &Connection) -> anyhow::Result<i64> {
    let v: String = conn.query_row("SELECT v FROM meta WHERE k = 'keys_generation'", [], |r| {
        r.get(0)
    })?;
    Ok(v.parse().unwrap_or(0))
}

/// Stores a new key, sealing its secret.
pub fn insert_key(conn: &mut Connection, master: &MasterKey, key: &NewKey) -> anyhow::Result<()> {
    let now = now_ms();
    let (kind, sealed, public): (&str, Option<Vec<u8>>, Option<Vec<u8>>) = match &key.credential {
        NewCredential::Hmac(secret) => ("hmac", Some(master.seal(&key.key_id, secret)?), None),
        NewCredential::Ed25519(pk) => ("ed25519", None, Some(pk.to_vec())),
    };
    let allow: Vec<String> = key.allow_ips.iter().map(|n| n.to_string()).collect();
    let trusted: Vec<String> = key.trusted_ips.iter().map(|n| n.to_string()).collect();
    let tx = conn.transaction()?;
    tx.execute(
        "INSERT INTO keys (key_id, api_key, account, label, scopes, allow_ips, status, created_at,
                           updated_at, expires_at, cred_kind, cred_sealed, cred_public, canary,
                           trusted_ips)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'active', ?7, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
        params![
            key.key_id,
            key.api_key,
            key.account,
            key.label,
            key.scopes.to_string(),
            serde_json::to_string(&allow)?,
            now as i64,
            key.expires_at.map(|e| e as i64),
            kind,
            sealed,
            public,
            key.canary,
            serde_json::to_string(&trusted)?
        ],
    )?;
    for (asset, address) in &key.withdraw_addresses {
        tx.execute(
            "INSERT INTO withdraw_addresses (key_id, asset, address, added_at) VALUES (?1, ?2, ?3, ?4)",
            params![key.key_id, asset, address, now as i64],
        )?;
    }
    bump_generation(&tx)?;
    tx.commit()?;
    Ok(())
}

/// Changes a key's status. Revoked is final: a revoked key cannot be resumed.
pub fn set_status(
    conn: &mut Connection,
    key_id: &str,
    status: KeyStatus,
    actor: &str,
    reason: &str,
) -> anyhow::Result<()> {
    // Immediate: this reads, then writes; a deferred transaction whose read snapshot is
    // older than the running gateway's last commit cannot upgrade and fails at once with
    // SQLITE_BUSY, without waiting out the busy timeout.
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let current: Option<String> = tx
        .query_row("SELECT status FROM keys WHERE key_id = ?1", [key_id], |r| {
            r.get(0)
        })
        .optional()?;
    match current.as_deref() {
        None => bail!("no key with id {key_id}"),
        Some("revoked") if status != KeyStatus::Revoked => {
            bail!("key {key_id} is revoked; revocation cannot be undone")
        }
        _ => {}
    }
    tx.execute(
        "UPDATE keys SET status = ?2, status_reason = ?3, updated_at = ?4 WHERE key_id = ?1",
        params![key_id, status.as_str(), reason, now_ms() as i64],
    )?;
    let action = match status {
        KeyStatus::Active => "key_resume",
        KeyStatus::Suspended => "key_suspend",
        KeyStatus::Revoked => "key_revoke",
    };
    record_admin_event(&tx, actor, action, key_id, reason)?;
    bump_generation(&tx)?;
    tx.commit()?;
    Ok(())
}

/// What a withdrawal freeze covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FreezeScope {
    /// Every withdrawal.
    Global,
    /// One asset (lower-case).
    Asset(String),
    /// One account.
    Account(String),
}

impl FreezeScope {
    pub(crate) fn parts(&self) -> (&'static str, &str) {
        match self {
            FreezeScope::Global => ("global", "*"),
            FreezeScope::Asset(a) => ("asset", a),
            FreezeScope::Account(a) => ("account", a),
        }
    }
}

/// Freezes or unfreezes withdrawals; recorded as an admin event in the same transaction.
/// Returns whether anything changed (freezing twice, or unfreezing what was not frozen,
/// is reported rather than silently accepted).
pub fn set_freeze(
    conn: &mut Connection,
    scope: &FreezeScope,
    frozen: bool,
    actor: &str,
    reason: &str,
) -> anyhow::Result<bool> {
    let (kind, target) = scope.parts();
    let tx = conn.transaction()?;
    let changed = if frozen {
        tx.execute(
            "INSERT OR IGNORE INTO freezes (scope, target, reason, actor, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![kind, target, reason, actor, now_ms() as i64],
        )?
    } else {
        tx.execute(
            "DELETE FROM freezes WHERE scope = ?1 AND target = ?2",
            params![kind, target],
        )?
    };
    if changed > 0 {
        let action = if frozen { "freeze" } else { "unfreeze" };
        record_admin_event(&tx, actor, action, &format!("{kind}:{target}"), reason)?;
        bump_generation(&tx)?;
    }
    tx.commit()?;
    Ok(changed > 0)
}

/// A change made by an operator, for the audit log.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct AdminEvent {
    /// Row id; events are audited in id order.
    pub id: i64,
    /// When (ms).
    pub ts: UnixMillis,
    /// Who made the change.
    pub actor: String,
    /// What (`freeze`, `unfreeze`, `key_suspend`, ...).
    pub action: String,
    /// What it applied to (`asset:btc`, a key id, ...).
    pub target: String,
    /// Why.
    pub reason: String,
}

/// Records an operator's change; the running gateway copies it into the audit log.
pub fn record_admin_event(
    conn: &Connection,
    actor: &str,
    action: &str,
    target: &str,
    reason: &str,
) -> anyhow::Result<()> {
    conn.execute(
        "INSERT INTO admin_events (ts, actor, action, target, reason) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![now_ms() as i64, actor, action, target, reason],
    )?;
    Ok(())
}

/// Makes a dormant key usable again: its last use becomes now (DESIGN.md: dormant keys
/// may read but not trade or withdraw until their owner reactivates them).
pub fn reactivate(
    conn: &mut Connection,
    key_id: &str,
    actor: &str,
    reason: &str,
) -> anyhow::Result<()> {
    let tx = conn.transaction()?;
    let n = tx.execute(
        "UPDATE keys SET last_used_at = ?2, updated_at = ?2 WHERE key_id = ?1",
        params![key_id, now_ms() as i64],
    )?;
    if n == 0 {
        bail!("no key with id {key_id}");
    }
    record_admin_event(&tx, actor, "key_reactivate", key_id, reason)?;
    bump_generation(&tx)?;
    tx.commit()?;
    Ok(())
}

/// Per key: when it was last used (as recorded behind the hot path; reactivation sets it)
/// and when its record, status included, last changed.
pub fn load_key_times(
    conn: &Connection,
) -> anyhow::Result<HashMap<String, (Option<UnixMillis>, UnixMillis)>> {
    let mut stmt = conn.prepare("SELECT key_id, last_used_at, updated_at FROM keys")?;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            (
                r.get::<_, Option<i64>>(1)?.map(|t| t as u64),
                r.get::<_, i64>(2)? as u64,
            ),
        ))
    })?;
    Ok(rows.collect::<Result<HashMap<_, _>, _>>()?)
}

/// The velocity ledger, for restoring the in-memory one at start. Released entries and
/// entries older than `since` are left out: they can no longer count against a window.
pub fn load_velocity(
    conn: &Connection,
    since: UnixMillis,
) -> anyhow::Result<(Vec<LedgerRecord>, u64)> {
    let max_id: Option<i64> =
        conn.query_row("SELECT MAX(id) FROM velocity_ledger", [], |r| r.get(0))?;
    let mut stmt = conn.prepare(
        "SELECT id, key_id, account, asset, kind, amount, at, state FROM velocity_ledger
         WHERE at >= ?1 AND state != 'released' ORDER BY at, id",
    )?;
    let rows = stmt.query_map([since as i64], |r| {
        Ok((
            r.get::<_, i64>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, String>(3)?,
            r.get::<_, String>(4)?,
            r.get::<_, Option<String>>(5)?,
            r.get::<_, i64>(6)?,
            r.get::<_, String>(7)?,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (id, key_id, account, asset, kind, amount, at, state) = row?;
        out.push(LedgerRecord {
            id: id as u64,
            key_id,
            account,
            asset,
            kind: kind
                .parse()
                .map_err(|_| anyhow::anyhow!("ledger {id}: bad kind {kind:?}"))?,
            amount: amount
                .map(|a| {
                    parse_decimal(&a).map_err(|_| anyhow::anyhow!("ledger {id}: bad amount {a:?}"))
                })
                .transpose()?,
            at: at as u64,
            state: state
                .parse()
                .map_err(|_| anyhow::anyhow!("ledger {id}: bad state {state:?}"))?,
        });
    }
    Ok((out, max_id.unwrap_or(0) as u64))
}

/// Networks each key was seen from (trust on first use and new-IP probation).
pub fn load_learned_ips(conn: &Connection) -> anyhow::Result<Vec<LearnedIp>> {
    let mut stmt = conn.prepare("SELECT key_id, net, first_seen, usable_from FROM learned_ips")?;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, i64>(2)?,
            r.get::<_, i64>(3)?,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (key_id, net, first_seen, usable_from) = row?;
        out.push(LearnedIp {
            net: net
                .parse()
                .map_err(|_| anyhow::anyhow!("key {key_id}: bad learned net {net:?}"))?,
            key_id,
            first_seen: first_seen as u64,
            usable_from: usable_from as u64,
        });
    }
    Ok(out)
}

/// Admin events not yet copied to the audit log, oldest first. Events made while no
/// gateway ran are picked up by the next one to start.
pub fn unaudited_admin_events(conn: &Connection) -> anyhow::Result<Vec<AdminEvent>> {
    let mut stmt = conn.prepare(
        "SELECT id, ts, actor, action, target, reason FROM admin_events
         WHERE audited = 0 ORDER BY id LIMIT 1000",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok(AdminEvent {
            id: r.get(0)?,
            ts: r.get::<_, i64>(1)? as u64,
            actor: r.get(2)?,
            action: r.get(3)?,
            target: r.get(4)?,
            reason: r.get(5)?,
        })
    })?;
    Ok(rows.collect::<Result<Vec<_>, _>>()?)
}

/// Marks events up to `up_to` as written to the audit log.
pub fn mark_admin_events_audited(conn: &Connection, up_to: i64) -> anyhow::Result<()> {
    conn.execute(
        "UPDATE admin_events SET audited = 1 WHERE audited = 0 AND id <= ?1",
        [up_to],
    )?;
    Ok(())
}

struct KeyRow {
    key_id: String,
    api_key: String,
    account: String,
    label: String,
    scopes: String,
    allow_ips: String,
    status: String,
    status_reason: Option<String>,
    created_at: i64,
    expires_at: Option<i64>,
    cred_kind: String,
    cred_sealed: Option<Vec<u8>>,
    cred_public: Option<Vec<u8>>,
    canary: bool,
    trusted_ips: String,
    last_used_at: Option<i64>,
}

fn key_rows(conn: &Connection, key_id: Option<&str>) -> anyhow::Result<Vec<KeyRow>> {
    let sql = "SELECT key_id, api_key, account, label, scopes, allow_ips, status, status_reason,
                      created_at, expires_at, cred_kind, cred_sealed, cred_public, canary,
                      trusted_ips, last_used_at
               FROM keys WHERE ?1 IS NULL OR key_id = ?1 ORDER BY created_at, key_id";
    let mut stmt = conn.prepare(sql)?;
    let rows = stmt
        .query_map([key_id], |r| {
            Ok(KeyRow {
                key_id: r.get(0)?,
                api_key: r.get(1)?,
                account: r.get(2)?,
                label: r.get(3)?,
                scopes: r.get(4)?,
                allow_ips: r.get(5)?,
                status: r.get(6)?,
                status_reason: r.get(7)?,
                created_at: r.get(8)?,
                expires_at: r.get(9)?,
                cred_kind: r.get(10)?,
                cred_sealed: r.get(11)?,
                cred_public: r.get(12)?,
                canary: r.get(13)?,
                trusted_ips: r.get(14)?,
                last_used_at: r.get(15)?,
            })
        })?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rows)
}

fn addresses(conn: &Connection) -> anyhow::Result<HashMap<String, Vec<WithdrawAddress>>> {
    let mut stmt = conn.prepare(
        "SELECT key_id, asset, address, added_at FROM withdraw_addresses ORDER BY added_at",
    )?;
    let mut out: HashMap<String, Vec<WithdrawAddress>> = HashMap::new();
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            WithdrawAddress {
                asset: r.get(1)?,
                address: r.get(2)?,
                added_at: r.get::<_, i64>(3)? as u64,
            },
        ))
    })?;
    for row in rows {
        let (key_id, addr) = row?;
        out.entry(key_id).or_default().push(addr);
    }
    Ok(out)
}

/// A stored JSON list of networks (`allow_ips`, `trusted_ips`).
pub(crate) fn parse_nets(
    key_id: &str,
    what: &str,
    json: &str,
) -> anyhow::Result<Vec<ipnet::IpNet>> {
    let list: Vec<String> =
        serde_json::from_str(json).with_context(|| format!("key {key_id}: bad {what}"))?;
    list.iter()
        .map(|s| keyguard_policy::key::parse_allow_ip(s).map_err(anyhow::Error::msg))
        .collect::<anyhow::Result<Vec<_>>>()
        .with_context(|| format!("key {key_id}: bad {what}"))
}

/// Parsed common columns of a key row.
struct RowParts {
    scopes: Scopes,
    allow_ips: Vec<ipnet::IpNet>,
    trusted_ips: Vec<ipnet::IpNet>,
    status: KeyStatus,
}

fn parse_row_common(row: &KeyRow) -> anyhow::Result<RowParts> {
    let scopes: Scopes = row
        .scopes
        .parse()
        .map_err(|_| anyhow::anyhow!("key {}: bad scopes {:?}", row.key_id, row.scopes))?;
    let status: KeyStatus = row
        .status
        .parse()
        .map_err(|_| anyhow::anyhow!("key {}: bad status {:?}", row.key_id, row.status))?;
    Ok(RowParts {
        scopes,
        allow_ips: parse_nets(&row.key_id, "allow_ips", &row.allow_ips)?,
        trusted_ips: parse_nets(&row.key_id, "trusted_ips", &row.trusted_ips)?,
        status,
    })
}

/// Loads every key with its credential opened, for the gateway's in-memory cache.
///
/// A row that cannot be decoded (wrong master key, corrupted) is skipped and reported,
/// so one bad row cannot take every other key down; the skipped key is unusable, which
/// is the safe direction.
pub fn load_keys(
    conn: &Connection,
    master: &MasterKey,
) -> anyhow::Result<(Vec<KeyRecord>, Vec<String>)> {
    let mut addrs = addresses(conn)?;
    let mut keys = Vec::new();
    let mut errors = Vec::new();
    for row in key_rows(conn, None)? {
        let decoded = (|| -> anyhow::Result<KeyRecord> {
            let RowParts {
                scopes,
                allow_ips,
                trusted_ips,
                status,
            } = parse_row_common(&row)?;
            let credential = match row.cred_kind.as_str() {
                "hmac" => {
                    let sealed = row.cred_sealed.as_deref().unwrap_or_default();
                    Credential::Hmac(Secret::new(master.open(&row.key_id, sealed)?))
                }
                "ed25519" => {
                    let pk: [u8; 32] =
                        row.cred_public
                            .as_deref()
                            .and_then(|p| p.try_into().ok())
                            .ok_or_else(|| anyhow::anyhow!("key {}: bad public key", row.key_id))?;
                    Credential::Ed25519(pk)
                }
                other => bail!("key {}: unknown credential kind {other:?}", row.key_id),
            };
            Ok(KeyRecord {
                key_id: row.key_id.clone(),
                api_key: row.api_key.clone(),
                account: row.account.clone(),
                label: row.label.clone(),
                scopes,
                allow_ips,
                withdraw_addresses: addrs.remove(&row.key_id).unwrap_or_default(),
                trusted_ips,
                created_at: row.created_at as u64,
                expires_at: row.expires_at.map(|e| e as u64),
                status,
                credential,
                canary: row.canary,
            })
        })();
        match decoded {
            Ok(k) => keys.push(k),
            Err(e) => errors.push(format!("{e:#}")),
        }
    }
    Ok((keys, errors))
}

/// Lists keys (all, or one) without credentials.
pub fn list_keys(conn: &Connection, key_id: Option<&str>) -> anyhow::Result<Vec<KeySummary>> {
    let mut addrs = addresses(conn)?;
    key_rows(conn, key_id)?
        .into_iter()
        .map(|row| {
            let RowParts {
                scopes,
                allow_ips,
                trusted_ips,
                status,
            } = parse_row_common(&row)?;
            Ok(KeySummary {
                withdraw_addresses: addrs
                    .remove(&row.key_id)
                    .unwrap_or_default()
                    .into_iter()
                    .map(|a| AddressSummary {
                        asset: a.asset,
                        address: a.address,
                        added_at: a.added_at,
                    })
                    .collect(),
                key_id: row.key_id,
                account: row.account,
                label: row.label,
                scopes: scopes.names(),
                allow_ips: allow_ips.iter().map(|n| n.to_string()).collect(),
                trusted_ips: trusted_ips.iter().map(|n| n.to_string()).collect(),
                status: status.as_str(),
                status_reason: row.status_reason,
                credential: row.cred_kind,
                created_at: row.created_at as u64,
                expires_at: row.expires_at.map(|e| e as u64),
                canary: row.canary,
                last_used_at: row.last_used_at.map(|t| t as u64),
            })
        })
        .collect()
}

/// The last accepted nonce of every key.
pub fn load_nonces(conn: &Connection) -> anyhow::Result<HashMap<String, Decimal>> {
    let mut stmt = conn.prepare("SELECT key_id, nonce FROM nonces")?;
    let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
    let mut out = HashMap::new();
    for row in rows {
        let (key_id, nonce) = row?;
        let n = parse_decimal(&nonce).map_err(|_| {
            anyhow::anyhow!("key {key_id}: stored nonce {nonce:?} is not a decimal")
        })?;
        out.insert(key_id, n);
    }
    Ok(out)
}

/// The withdrawal freezes in force.
pub fn load_freezes(conn: &Connection) -> anyhow::Result<Freezes> {
    let mut stmt = conn.prepare("SELECT scope, target FROM freezes")?;
    let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
    let mut f = Freezes::default();
    for row in rows {
        match row? {
            (scope, _) if scope == "global" => f.global = true,
            (scope, target) if scope == "asset" => f.assets.push(target),
            (scope, target) if scope == "account" => f.accounts.push(target),
            (scope, _) => bail!("unknown freeze scope {scope:?}"),
        }
    }
    Ok(f)
}

#[cfg(test)]
mod tests;
