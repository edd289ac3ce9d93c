//! Web sessions: a short-lived JWT in an `HttpOnly; SameSite=Strict` cookie, backed by a
//! row in the store so that logout, a password change or disabling the account ends it
//! at once (a JWT alone cannot be taken back).
//!
//! Two kinds of token, two cookies: `kg_pending` after a correct password when a TOTP
//! code is still owed (stage `totp`: it opens nothing but the code form), and
//! `kg_session` for a full session. Each step issues a new session id, so an id seen
//! before login (or before the code) is worthless after it. Each session has its own
//! CSRF token, required in every form; the login form, before any session exists, uses
//! a signed double-submit token instead ([`Sessions::login_token`]).
//!
//! On Redis (`*_on` methods) the row is a hash that expires with the session, tagged
//! with the account's session epoch, and the signing key is one all replicas share, so a
//! cookie issued by one replica works on every other and a logout on one ends it on all.

use std::path::Path;

use axum::http::header::{COOKIE, SET_COOKIE};
use axum::http::{HeaderMap, HeaderValue};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use keyguard_policy::UnixMillis;
use rusqlite::{params, Connection, OptionalExtension};

use crate::accounts::ct_eq;
use crate::secrets::random_bytes;
use crate::store::redis::RedisStore;

/// The full-session cookie.
pub const SESSION_COOKIE: &str = "kg_session";
/// The password-done, code-pending cookie.
pub const PENDING_COOKIE: &str = "kg_pending";
/// The login form's pre-session CSRF cookie.
pub const LOGIN_COOKIE: &str = "kg_login";
/// How long a TOTP-pending token lives.
const PENDING_TTL_MS: u64 = 5 * 60 * 1000;
/// How long a login form's token lives.
const LOGIN_TOKEN_TTL_MS: u64 = 30 * 60 * 1000;

/// What stage a session is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Password accepted, code owed.
    Totp,
    /// Logged in.
    Full,
}

impl Stage {
    fn as_str(self) -> &'static str {
        match self {
            Stage::Totp => "totp",
            Stage::Full => "full",
        }
    }
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Claims {
    /// Session id (the row).
    sid: String,
    /// Account.
    sub: String,
    /// Stage (`totp`/`full`): a pending token is never accepted as a full one.
    stg: String,
    /// Expiry (s).
    exp: u64,
    /// Issued (s).
    iat: u64,
}

/// A session that passed every check.
#[derive(Debug, Clone)]
pub struct Session {
    /// Session id.
    pub id: String,
    /// The account.
    pub account: String,
    /// Its CSRF token.
    pub csrf: String,
    /// Set when the token was renewed: send this `Set-Cookie`.
    pub renewed: Option<HeaderValue>,
}

/// Session tunables.
#[derive(Debug, Clone, Copy)]
pub struct SessionTimes {
    /// Token lifetime, renewed while used.
    pub ttl_ms: u64,
    /// Absolute limit from login.
    pub max_ms: u64,
}

/// Issues and checks session tokens.
pub struct Sessions {
    enc: EncodingKey,
    dec: DecodingKey,
    login_key: ring::hmac::Key,
    times: SessionTimes,
    /// Adds `Secure` to cookies (the listener serves TLS).
    secure: bool,
}

fn rand_id() -> anyhow::Result<String> {
    Ok(hex::encode(random_bytes::<32>()?))
}

impl Sessions {
    /// Loads (creating on first start) the signing key in `data_dir/admin_session.key`.
    pub fn load_or_create(
        data_dir: &Path,
        times: SessionTimes,
        secure: bool,
    ) -> anyhow::Result<Sessions> {
        let path = data_dir.join("admin_session.key");
        let key = match std::fs::read(&path) {
            Ok(k) if k.len() == 32 => {
                crate::secrets::check_private(&path)?;
                k
            }
            Ok(_) => anyhow::bail!("{}: expected 32 bytes", path.display()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let k = random_bytes::<32>()?.to_vec();
                crate::secrets::write_private(&path, &k)?;
                k
            }
            Err(e) => {
                return Err(anyhow::Error::new(e).context(format!("reading {}", path.display())))
            }
        };
        Ok(Sessions::from_key(&key, times, secure))
    }

    /// Sessions signed under `key` (the file's, or the one all replicas share in Redis,
    /// [`RedisStore::session_signing_key`]).
    pub fn from_key(key: &[u8], times: SessionTimes, secure: bool) -> Sessions {
        // Separate keys for sessions and login-form tokens, derived from the one key.
        let derive = |label: &[u8]| {
            let k = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key);
            ring::hmac::sign(&k, label).as_ref().to_vec()
        };
        let jwt_key = derive(b"keyguard admin session jwt");
        Sessions {
            enc: EncodingKey::from_secret(&jwt_key),
            dec: DecodingKey::from_secret(&jwt_key),
            login_key: ring::hmac::Key::new(
                ring::hmac::HMAC_SHA256,
                &derive(b"keyguard login form"),
            ),
            times,
            secure,
        }
    }

    fn cookie(&self, name: &str, value: &str, max_age_s: u64) -> HeaderValue {
        let secure = if self.secure { "; Secure" } else { "" };
        HeaderValue::from_str(&format!(
            "{name}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age_s}{secure}"
        ))
        .expect("cookie characters are ASCII")
    }

    /// A `Set-Cookie` that deletes `name`.
    pub fn clear(&self, name: &str) -> HeaderValue {
        self.cookie(name, "", 0)
    }

    fn token(
        &self,
        sid: &str,
        account: &str,
        stage: Stage,
        exp_ms: u64,
        now: UnixMillis,
    ) -> anyhow::Result<String> {
        let claims = Claims {
            sid: sid.to_owned(),
            sub: account.to_owned(),
            stg: stage.as_str().to_owned(),
            exp: exp_ms / 1000,
            iat: now / 1000,
        };
        Ok(jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &self.enc,
        )?)
    }

    /// Starts a session at `stage` with a fresh id, ending `replacing` (the pending
    /// session it follows) in the same transaction. Returns the `Set-Cookie`.
    pub fn start(
        &self,
        conn: &mut Connection,
        account: &str,
        stage: Stage,
        replacing: Option<&str>,
        client_ip: &str,
        now: UnixMillis,
    ) -> anyhow::Result<HeaderValue> {
        let sid = rand_id()?;
        let csrf = rand_id()?;
        let ttl = match stage {
            Stage::Totp => PENDING_TTL_MS,
            Stage::Full => self.times.ttl_ms,
        };
        let max_until = match stage {
            Stage::Totp => now + PENDING_TTL_MS,
            Stage::Full => now + self.times.max_ms,
        };
        let tx = conn.transaction()?;
        if let Some(old) = replacing {
            tx.execute("UPDATE sessions SET revoked = 1 WHERE id = ?1", [old])?;
        }
        tx.execute(
            "INSERT INTO sessions (id, account, stage, csrf, created_at, expires_at, max_until, client_ip)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![sid, account, stage.as_str(), csrf, now as i64, (now + ttl) as i64, max_until as i64, client_ip],
        )?;
        // Bounded table: sessions long over are dropped as new ones start.
        tx.execute(
            "DELETE FROM sessions WHERE max_until < ?1",
            [(now.saturating_sub(24 * 60 * 60 * 1000)) as i64],
        )?;
        tx.commit()?;
        let token = self.token(&sid, account, stage, now + ttl, now)?;
        let name = match stage {
            Stage::Totp => PENDING_COOKIE,
            Stage::Full => SESSION_COOKIE,
        };
        Ok(self.cookie(name, &token, ttl / 1000))
    }

    /// The verified claims of the cookie for `stage`.
    fn claims(&self, headers: &HeaderMap, stage: Stage) -> Option<Claims> {
        let name = match stage {
            Stage::Totp => PENDING_COOKIE,
            Stage::Full => SESSION_COOKIE,
        };
        let token = cookie_value(headers, name)?;
        let mut v = Validation::new(Algorithm::HS256);
        v.leeway = 0;
        v.set_required_spec_claims(&["exp"]);
        let claims = jsonwebtoken::decode::<Claims>(&token, &self.dec, &v)
            .ok()?
            .claims;
        (claims.stg == stage.as_str()).then_some(claims)
    }

    /// Checks the cookie for `stage`: a valid token, its row present, not revoked, not
    /// past its expiry or absolute limit, same stage. Renews a full session past half
    /// its lifetime.
    pub fn check(
        &self,
        conn: &Connection,
        headers: &HeaderMap,
        stage: Stage,
        now: UnixMillis,
    ) -> Option<Session> {
        let claims = self.claims(headers, stage)?;
        let (account, stg, csrf, expires_at, max_until, revoked): (String, String, String, i64, i64, i64) = conn
            .query_row(
                "SELECT account, stage, csrf, expires_at, max_until, revoked FROM sessions WHERE id = ?1",
                [&claims.sid],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?)),
            )
            .optional()
            .ok()??;
        let now_i = now as i64;
        if revoked != 0
            || stg != stage.as_str()
            || account != claims.sub
            || expires_at <= now_i
            || max_until <= now_i
        {
            return None;
        }
        // The account may have been disabled since.
        let disabled: i64 = conn
            .query_row(
                "SELECT disabled FROM accounts WHERE name = ?1",
                [&account],
                |r| r.get(0),
            )
            .optional()
            .ok()??;
        if disabled != 0 {
            return None;
        }
        let mut renewed = None;
        if stage == Stage::Full && (expires_at as u64).saturating_sub(now) < self.times.ttl_ms / 2 {
            let new_exp = (now + self.times.ttl_ms).min(max_until as u64);
            if conn
                .execute(
                    "UPDATE sessions SET expires_at = ?2 WHERE id = ?1",
                    params![claims.sid, new_exp as i64],
                )
                .is_ok()
            {
                if let Ok(t) = self.token(&claims.sid, &account, stage, new_exp, now) {
                    renewed = Some(self.cookie(SESSION_COOKIE, &t, (new_exp - now) / 1000));
                }
            }
        }
        Some(Session {
            id: claims.sid,
            account,
            csrf,
            renewed,
        })
    }

    /// [`Sessions::start`] with the row in Redis, where it expires with the session;
    /// `None` when the account is gone or disabled.
    pub async fn start_on(
        &self,
        r: &RedisStore,
        account: &str,
        stage: Stage,
        replacing: Option<&str>,
        client_ip: &str,
        now: UnixMillis,
    ) -> anyhow::Result<Option<HeaderValue>> {
        let sid = rand_id()?;
        let csrf = rand_id()?;
        let (ttl, max_until) = match stage {
            Stage::Totp => (PENDING_TTL_MS, now + PENDING_TTL_MS),
            Stage::Full => (self.times.ttl_ms, now + self.times.max_ms),
        };
        let expires_at = (now + ttl).min(max_until);
        if !r
            .start_session(
                account,
                &sid,
                stage.as_str(),
                &csrf,
                now,
                expires_at,
                max_until,
                client_ip,
                replacing,
            )
            .await?
        {
            return Ok(None);
        }
        let token = self.token(&sid, account, stage, expires_at, now)?;
        let name = match stage {
            Stage::Totp => PENDING_COOKIE,
            Stage::Full => SESSION_COOKIE,
        };
        Ok(Some(self.cookie(name, &token, ttl / 1000)))
    }

    /// [`Sessions::check`] against the row in Redis: a logout, password change, disable
    /// or TOTP reset on any replica is seen here at once.
    pub async fn check_on(
        &self,
        r: &RedisStore,
        headers: &HeaderMap,
        stage: Stage,
        now: UnixMillis,
    ) -> anyhow::Result<Option<Session>> {
        let Some(claims) = self.claims(headers, stage) else {
            return Ok(None);
        };
        let Some(row) = r
            .check_session(
                &claims.sub,
                &claims.sid,
                stage.as_str(),
                now,
                self.times.ttl_ms,
                stage == Stage::Full,
            )
            .await?
        else {
            return Ok(None);
        };
        let mut renewed = None;
        if row.renewed {
            if let Ok(t) = self.token(&claims.sid, &claims.sub, stage, row.expires_at, now) {
                renewed = Some(self.cookie(
                    SESSION_COOKIE,
                    &t,
                    row.expires_at.saturating_sub(now) / 1000,
                ));
            }
        }
        Ok(Some(Session {
            id: claims.sid,
            account: claims.sub,
            csrf: row.csrf,
            renewed,
        }))
    }

    /// Ends one session in Redis.
    pub async fn end_on(&self, r: &RedisStore, s: &Session) -> anyhow::Result<()> {
        r.end_session(&s.account, &s.id).await
    }

    /// Ends one session.
    pub fn end(&self, conn: &Connection, sid: &str) -> rusqlite::Result<()> {
        conn.execute("UPDATE sessions SET revoked = 1 WHERE id = ?1", [sid])?;
        Ok(())
    }

    /// A fresh login-form token: `nonce.expiry.mac`, set as a cookie and put in the form.
    pub fn login_token(&self, now: UnixMillis) -> anyhow::Result<(String, HeaderValue)> {
        let nonce = hex::encode(random_bytes::<16>()?);
        let exp = now + LOGIN_TOKEN_TTL_MS;
        let body = format!("{nonce}.{exp}");
        let mac = hex::encode(ring::hmac::sign(&self.login_key, body.as_bytes()).as_ref());
        let token = format!("{body}.{mac}");
        let cookie = self.cookie(LOGIN_COOKIE, &token, LOGIN_TOKEN_TTL_MS / 1000);
        Ok((token, cookie))
    }

    /// Whether the form's login token is ours, unexpired and the same as the cookie's.
    pub fn check_login_token(
        &self,
        headers: &HeaderMap,
        form_token: &str,
        now: UnixMillis,
    ) -> bool {
        let Some(cookie) = cookie_value(headers, LOGIN_COOKIE) else {
            return false;
        };
        if !ct_eq(cookie.as_bytes(), form_token.as_bytes()) {
            return false;
        }
        let mut parts = form_token.rsplitn(2, '.');
        let (Some(mac), Some(body)) = (parts.next(), parts.next()) else {
            return false;
        };
        let Ok(mac) = hex::decode(mac) else {
            return false;
        };
        if ring::hmac::verify(&self.login_key, body.as_bytes(), &mac).is_err() {
            return false;
        }
        body.split_once('.')
            .and_then(|(_, exp)| exp.parse::<u64>().ok())
            .is_some_and(|exp| exp > now)
    }
}

/// The value of cookie `name`, if sent exactly once (two cookies of one name, one
/// planted by a sibling subdomain, are refused rather than guessed between).
pub fn cookie_value(headers: &HeaderMap, name: &str) -> Option<String> {
    let mut found = None;
    for h in headers.get_all(COOKIE) {
        let Ok(s) = h.to_str() else { continue };
        for part in s.split(';') {
            if let Some((k, v)) = part.trim().split_once('=') {
                if k == name {
                    if found.is_some() {
                        return None;
                    }
                    found = Some(v.to_owned());
                }
            }
        }
    }
    found
}

/// Adds `Set-Cookie` values to response headers.
pub fn set_cookies(headers: &mut HeaderMap, cookies: impl IntoIterator<Item = HeaderValue>) {
    for c in cookies {
        headers.append(SET_COOKIE, c);
    }
}
