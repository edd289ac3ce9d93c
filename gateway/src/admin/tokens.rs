//! Bearer tokens for the admin API: `kgt_<id>_<secret>`, shown once at creation and stored
//! as the SHA-256 of the secret (the secret is 32 random bytes, so a fast hash is enough:
//! there is nothing to brute-force). Scopes: `admin:read`, `admin:write`.
//!
//! The `*_on` functions keep them in Redis instead (see [`crate::store::redis::auth`]),
//! so a token made or revoked through any replica's store holds on all of them at once.

use rusqlite::{params, Connection, OptionalExtension};

use crate::accounts::ct_eq;
use crate::secrets::random_bytes;
use crate::store::redis::RedisStore;

/// The table (created by [`crate::store::Store::open`]).
pub(crate) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS api_tokens (
    id         TEXT PRIMARY KEY,
    hash       TEXT NOT NULL,
    scopes     TEXT NOT NULL,
    label      TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    revoked    INTEGER NOT NULL DEFAULT 0
);
";

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TokenScopes {
    /// `admin:read`: list and show.
    pub read: bool,
    /// `admin:write`: change keys, pending changes, freezes.
    pub write: bool,
}

impl std::str::FromStr for TokenScopes {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let mut out = TokenScopes::default();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            match part {
                "admin:read" => out.read = true,
                "admin:write" => out.write = true,
                other => {
                    return Err(format!(
                        "unknown token scope {other:?} (expected admin:read, admin:write)"
                    ))
                }
            }
        }
        if !out.read && !out.write {
            return Err("a token needs at least one scope: admin:read, admin:write".into());
        }
        Ok(out)
    }
}

impl std::fmt::Display for TokenScopes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut parts = Vec::new();
        if self.read {
            parts.push("admin:read");
        }
        if self.write {
            parts.push("admin:write");
        }
        f.write_str(&parts.join(","))
    }
}

fn hash(secret: &str) -> String {
    hex::encode(ring::digest::digest(
        &ring::digest::SHA256,
        secret.as_bytes(),
    ))
}

/// Creates a token; returns `(id, token)`. The token is not stored and cannot be shown again.
pub fn create(
    conn: &Connection,
    scopes: TokenScopes,
    label: &str,
    actor: &str,
) -> anyhow::Result<(String, String)> {
    let id = hex::encode(random_bytes::<6>()?);
    let secret = hex::encode(random_bytes::<32>()?);
    conn.execute(
        "INSERT INTO api_tokens (id, hash, scopes, label, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![
            id,
            hash(&secret),
            scopes.to_string(),
            label,
            crate::store::now_ms() as i64
        ],
    )?;
    crate::store::record_admin_event(
        conn,
        actor,
        "token_create",
        &id,
        &format!("{scopes} {label}"),
    )?;
    Ok((id.clone(), format!("kgt_{id}_{secret}")))
}

/// Revokes a token at once.
pub fn revoke(conn: &Connection, id: &str, actor: &str) -> anyhow::Result<()> {
    let n = conn.execute(
        "UPDATE api_tokens SET revoked = 1 WHERE id = ?1 AND revoked = 0",
        [id],
    )?;
    anyhow::ensure!(n == 1, "no active token {id}");
    crate::store::record_admin_event(conn, actor, "token_revoke", id, "revoked")?;
    Ok(())
}

/// A token as listed (never its secret or hash).
#[derive(Debug, Clone, serde::Serialize)]
pub struct TokenSummary {
    /// Id.
    pub id: String,
    /// Scopes.
    pub scopes: String,
    /// Label.
    pub label: String,
    /// Created (ms).
    pub created_at: u64,
    /// Revoked.
    pub revoked: bool,
}

/// Every token.
pub fn list(conn: &Connection) -> anyhow::Result<Vec<TokenSummary>> {
    let mut stmt = conn.prepare(
        "SELECT id, scopes, label, created_at, revoked FROM api_tokens ORDER BY created_at",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok(TokenSummary {
            id: r.get(0)?,
            scopes: r.get(1)?,
            label: r.get(2)?,
            created_at: r.get::<_, i64>(3)? as u64,
            revoked: r.get::<_, i64>(4)? != 0,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// The scopes of a presented token (`None`: unknown, malformed or revoked); and its id.
pub fn verify(conn: &Connection, token: &str) -> Option<(String, TokenScopes)> {
    let rest = token.strip_prefix("kgt_")?;
    let (id, secret) = rest.split_once('_')?;
    let (stored, scopes, revoked): (String, String, i64) = conn
        .query_row(
            "SELECT hash, scopes, revoked FROM api_tokens WHERE id = ?1",
            [id],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .optional()
        .ok()??;
    if revoked != 0 || !ct_eq(stored.as_bytes(), hash(secret).as_bytes()) {
        return None;
    }
    Some((id.to_owned(), scopes.parse().ok()?))
}

/// [`create`] on Redis.
pub async fn create_on(
    r: &RedisStore,
    scopes: TokenScopes,
    label: &str,
    actor: &str,
) -> anyhow::Result<(String, String)> {
    let id = hex::encode(random_bytes::<6>()?);
    let secret = hex::encode(random_bytes::<32>()?);
    anyhow::ensure!(
        r.create_token(&id, &hash(&secret), &scopes.to_string(), label, actor)
            .await?,
        "token id {id} already taken; try again"
    );
    Ok((id.clone(), format!("kgt_{id}_{secret}")))
}

/// [`revoke`] on Redis: refused on every replica from the next request on.
pub async fn revoke_on(r: &RedisStore, id: &str, actor: &str) -> anyhow::Result<()> {
    anyhow::ensure!(r.revoke_token(id, actor).await?, "no active token {id}");
    Ok(())
}

/// [`list`] on Redis.
pub async fn list_on(r: &RedisStore) -> anyhow::Result<Vec<TokenSummary>> {
    Ok(r.tokens()
        .await?
        .into_iter()
        .map(|t| TokenSummary {
            id: t.id,
            scopes: t.scopes,
            label: t.label,
            created_at: t.created_at,
            revoked: t.revoked,
        })
        .collect())
}

/// [`verify`] on Redis; a store error is an error (the caller refuses), not a `None`.
pub async fn verify_on(
    r: &RedisStore,
    token: &str,
) -> anyhow::Result<Option<(String, TokenScopes)>> {
    let Some((id, secret)) = token
        .strip_prefix("kgt_")
        .and_then(|rest| rest.split_once('_'))
    else {
        return Ok(None);
    };
    // Ids are 12 hex digits; anything else is not looked up (nor put into a key name).
    if id.len() != 12 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Ok(None);
    }
    let Some(t) = r.token(id).await? else {
        return Ok(None);
    };
    if t.revoked || !ct_eq(t.hash.as_bytes(), hash(secret).as_bytes()) {
        return Ok(None);
    }
    Ok(t.scopes.parse().ok().map(|s| (id.to_owned(), s)))
}
