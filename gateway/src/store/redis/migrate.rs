//! `keyguard migrate --from DATA_DIR --to redis://…`: copies an embedded store into Redis
//! — keys (secrets stay sealed under the same master key), freezes, nonces, the velocity
//! ledger still inside its windows, learned networks, and the admin listener's web UI
//! accounts (with TOTP, lockout and unused recovery codes) and API tokens (hashed). Web
//! sessions are not copied: users log in again. It refuses a target that already holds
//! a catalogue unless forced.

use anyhow::{bail, Context};
use keyguard_policy::velocity::{EntryState, VelocityConfig};
use rusqlite::Connection;

use super::catalog::{AddrDoc, KeyDoc};
use super::RedisStore;
use crate::store;

/// What was copied.
#[derive(Debug, Default, serde::Serialize)]
pub struct Migrated {
    /// Keys.
    pub keys: usize,
    /// Freezes.
    pub freezes: usize,
    /// Nonces.
    pub nonces: usize,
    /// Velocity entries.
    pub ledger: usize,
    /// Learned networks.
    pub learned: usize,
    /// Web UI accounts.
    pub accounts: usize,
    /// Admin API tokens.
    pub tokens: usize,
}

/// Copies the web UI accounts and admin API tokens.
async fn admin_logins(
    conn: &Connection,
    target: &RedisStore,
    out: &mut Migrated,
) -> anyhow::Result<()> {
    use super::auth::{AccountDoc, TokenDoc};
    type Row = (String, AccountDoc, u64);
    let rows: Vec<Row> = {
        let mut stmt = conn.prepare(
            "SELECT name, password_hash, disabled, totp_sealed, totp_pending, totp_last_step,
                    failed_logins, locked_until, password_set_at, created_at
             FROM accounts ORDER BY name",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                AccountDoc {
                    password_hash: r.get(1)?,
                    disabled: r.get::<_, i64>(2)? != 0,
                    totp_sealed: r.get(3)?,
                    totp_pending: r.get(4)?,
                    totp_last_step: r.get::<_, i64>(5)? as u64,
                    locked_until: r.get::<_, i64>(7)? as u64,
                    password_set_at: r.get::<_, i64>(8)? as u64,
                    created_at: r.get::<_, i64>(9)? as u64,
                },
                r.get::<_, i64>(6)? as u64,
            ))
        })?;
        rows.collect::<Result<_, _>>()?
    };
    for (name, doc, failed) in rows {
        let codes: Vec<String> = {
            let mut stmt = conn.prepare(
                "SELECT code_hash FROM recovery_codes WHERE account = ?1 AND used_at IS NULL",
            )?;
            let rows = stmt.query_map([&name], |r| r.get(0))?;
            rows.collect::<Result<_, _>>()?
        };
        target.import_account(&name, &doc, failed, &codes).await?;
        out.accounts += 1;
    }
    let tokens: Vec<TokenDoc> = {
        let mut stmt =
            conn.prepare("SELECT id, hash, scopes, label, created_at, revoked FROM api_tokens")?;
        let rows = stmt.query_map([], |r| {
            Ok(TokenDoc {
                id: r.get(0)?,
                hash: r.get(1)?,
                scopes: r.get(2)?,
                label: r.get(3)?,
                created_at: r.get::<_, i64>(4)? as u64,
                revoked: r.get::<_, i64>(5)? != 0,
            })
        })?;
        rows.collect::<Result<_, _>>()?
    };
    for t in &tokens {
        target.import_token(t).await?;
        out.tokens += 1;
    }
    Ok(())
}

fn key_docs(conn: &Connection) -> anyhow::Result<Vec<KeyDoc>> {
    let mut stmt = conn.prepare(
        "SELECT key_id, api_key, account, label, scopes, allow_ips, status, status_reason,
                created_at, updated_at, expires_at, cred_kind, cred_sealed, cred_public, canary,
                trusted_ips, last_used_at FROM keys ORDER BY created_at, key_id",
    )?;
    let b64 = |v: Option<Vec<u8>>| {
        use base64::Engine as _;
        v.map(|b| base64::engine::general_purpose::STANDARD.encode(b))
    };
    let rows = stmt.query_map([], |r| {
        Ok(KeyDoc {
            key_id: r.get(0)?,
            api_key: r.get(1)?,
            account: r.get(2)?,
            label: r.get(3)?,
            scopes: r.get(4)?,
            allow_ips: serde_json::from_str(&r.get::<_, String>(5)?).unwrap_or_default(),
            status: r.get(6)?,
            status_reason: r.get(7)?,
            created_at: r.get::<_, i64>(8)? as u64,
            updated_at: r.get::<_, i64>(9)? as u64,
            expires_at: r.get::<_, Option<i64>>(10)?.map(|t| t as u64),
            cred_kind: r.get(11)?,
            cred_sealed: b64(r.get(12)?),
            cred_public: b64(r.get(13)?),
            canary: r.get(14)?,
            trusted_ips: serde_json::from_str(&r.get::<_, String>(15)?).unwrap_or_default(),
            last_used_at: r.get::<_, Option<i64>>(16)?.map(|t| t as u64),
            withdraw_addresses: Vec::new(),
        })
    })?;
    let mut docs = rows.collect::<Result<Vec<_>, _>>()?;
    let mut stmt = conn.prepare(
        "SELECT key_id, asset, address, added_at FROM withdraw_addresses ORDER BY added_at",
    )?;
    let addrs = stmt.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            AddrDoc {
                asset: r.get(1)?,
                address: r.get(2)?,
                added_at: r.get::<_, i64>(3)? as u64,
            },
        ))
    })?;
    for a in addrs {
        let (key_id, addr) = a?;
        if let Some(d) = docs.iter_mut().find(|d| d.key_id == key_id) {
            d.withdraw_addresses.push(addr);
        }
    }
    Ok(docs)
}

/// Copies the store in `data_dir` into `target`. `velocity` (from the config) gives the
/// ledger's windows; entries older than the longest are not copied.
pub async fn migrate(
    data_dir: &std::path::Path,
    target: &RedisStore,
    velocity: &VelocityConfig,
    force: bool,
) -> anyhow::Result<Migrated> {
    let db = data_dir.join("keyguard.db");
    if !db.exists() {
        bail!("{} has no store (keyguard.db)", data_dir.display());
    }
    let st = store::Store::open(data_dir)?;
    let conn = st.connect()?;
    let existing: i64 = target
        .query(redis::cmd("HLEN").arg(target.cat_key("docs")))
        .await
        .context("reading the target")?;
    if existing > 0 && !force {
        bail!("the target already holds {existing} key(s); pass --force to overwrite");
    }
    let logins: i64 = target
        .query(redis::cmd("SCARD").arg(target.adm_key("accounts")))
        .await
        .context("reading the target")?;
    if logins > 0 && !force {
        bail!("the target already holds {logins} web UI account(s); pass --force to overwrite");
    }
    let mut out = Migrated::default();
    let docs = key_docs(&conn)?;
    let accounts: std::collections::HashMap<String, String> = docs
        .iter()
        .map(|d| (d.key_id.clone(), d.account.clone()))
        .collect();
    for doc in &docs {
        let json = serde_json::to_string(doc)?;
        target
            .query::<()>(
                redis::cmd("HSET")
                    .arg(target.cat_key("docs"))
                    .arg(&doc.key_id)
                    .arg(json),
            )
            .await?;
        target
            .query::<()>(
                redis::cmd("HSET")
                    .arg(target.cat_key("api"))
                    .arg(&doc.api_key)
                    .arg(&doc.key_id),
            )
            .await?;
        if let Some(lu) = doc.last_used_at {
            let lu_key = format!("{}:lu:{}", target.account_base(&doc.account), doc.key_id);
            target
                .query::<()>(redis::cmd("SET").arg(lu_key).arg(lu))
                .await?;
        }
        out.keys += 1;
    }
    let freezes = {
        let mut stmt =
            conn.prepare("SELECT scope, target, reason, actor, created_at FROM freezes")?;
        let rows = stmt.query_map([], |r| {
            Ok((
                format!("{}:{}", r.get::<_, String>(0)?, r.get::<_, String>(1)?),
                serde_json::json!({"reason": r.get::<_, String>(2)?, "actor": r.get::<_, String>(3)?, "created_at": r.get::<_, i64>(4)?}).to_string(),
            ))
        })?;
        rows.collect::<Result<Vec<_>, _>>()?
    };
    for (scope, doc) in freezes {
        target
            .query::<()>(
                redis::cmd("HSET")
                    .arg(target.cat_key("freezes"))
                    .arg(scope)
                    .arg(doc),
            )
            .await?;
        out.freezes += 1;
    }
    // Nonces accepted since the last checkpoint are only in the journal.
    let mut nonces = store::load_nonces(&conn)?;
    let (_journal, journaled) = store::journal::NonceJournal::open(data_dir)?;
    for (key_id, n) in journaled {
        let e = nonces.entry(key_id).or_insert(n);
        if n > *e {
            *e = n;
        }
    }
    for (key_id, nonce) in nonces {
        let Some(account) = accounts.get(&key_id) else {
            continue;
        };
        let Some(fixed) = super::admit::fixed_nonce(nonce) else {
            bail!("key {key_id}: nonce {nonce} does not fit the shared format");
        };
        let nk = format!("{}:nonce:{key_id}", target.account_base(account));
        target
            .query::<()>(redis::cmd("SET").arg(nk).arg(fixed))
            .await?;
        out.nonces += 1;
    }
    let longest = velocity
        .rules
        .iter()
        .map(|r| r.window_ms)
        .max()
        .unwrap_or(0);
    let now = store::now_ms();
    let (ledger, _) = store::load_velocity(&conn, now.saturating_sub(longest))?;
    for rec in ledger {
        if rec.state == EntryState::Released {
            continue;
        }
        let Some(member) = super::admit::ledger_member(rec.id, rec.amount) else {
            bail!(
                "ledger entry {}: amount does not fit the shared format",
                rec.id
            );
        };
        let base = target.account_base(&rec.account);
        let asset = super::admit::asset_key(&rec.asset);
        for subject in [rec.key_id.as_str(), ""] {
            let bk = format!("{base}:vel:{}:{asset}:{subject}", rec.kind.as_str());
            target
                .query::<()>(redis::cmd("ZADD").arg(&bk).arg(rec.at).arg(&member))
                .await?;
            target
                .query::<()>(redis::cmd("PEXPIRE").arg(&bk).arg(longest.max(1)))
                .await?;
        }
        out.ledger += 1;
    }
    for l in store::load_learned_ips(&conn)? {
        let Some(account) = accounts.get(&l.key_id) else {
            continue;
        };
        let Some(net) = keyguard_policy::limits::ClientNet::from_net(l.net) else {
            continue;
        };
        let hk = format!("{}:hist:{}", target.account_base(account), l.key_id);
        // A network forgotten after a canary is "F" in Redis (forget.lua), so its next
        // sighting starts probation rather than waiting for ever.
        let usable = if l.usable_from == keyguard_policy::anomaly::FORGOTTEN {
            "F".to_owned()
        } else {
            l.usable_from.to_string()
        };
        let v = format!("{},{usable},{}", l.first_seen, l.first_seen);
        target
            .query::<()>(redis::cmd("HSET").arg(hk).arg(net.to_string()).arg(v))
            .await?;
        out.learned += 1;
    }
    admin_logins(&conn, target, &mut out).await?;
    target
        .query::<()>(redis::cmd("INCR").arg(target.cat_key("gen")))
        .await?;
    target
        .query::<()>(
            redis::cmd("PUBLISH")
                .arg(target.changes_channel())
                .arg("migrated"),
        )
        .await?;
    Ok(out)
}
