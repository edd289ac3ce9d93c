//! Web UI accounts: Argon2id passwords, TOTP second factor with single-use recovery codes,
//! and lockout with exponential backoff.
//!
//! An account is named like the `account` of the keys it owns. Login is two steps,
//! password then code; both answer every failure with the one [`LoginFailed`] and take
//! the same time whether the account exists, is disabled or locked (an Argon2 verification
//! always runs), so the login form tells an attacker nothing about which names exist.
//!
//! TOTP (RFC 6238, SHA-1, 6 digits, 30 s, one step of skew either way): the secret is
//! sealed with the master key; the step of the last accepted code is stored and a code of
//! that step or an earlier one is refused, so an observed code cannot be replayed.

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use keyguard_policy::UnixMillis;
use rusqlite::{params, Connection, OptionalExtension};

use crate::secrets::{random_bytes, MasterKey};

/// Tables of this module (created by [`crate::store::Store::open`]).
pub(crate) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS accounts (
    name            TEXT PRIMARY KEY,
    password_hash   TEXT NOT NULL,
    disabled        INTEGER NOT NULL DEFAULT 0,
    totp_sealed     BLOB,
    totp_pending    BLOB,
    totp_last_step  INTEGER NOT NULL DEFAULT 0,
    failed_logins   INTEGER NOT NULL DEFAULT 0,
    locked_until    INTEGER NOT NULL DEFAULT 0,
    password_set_at INTEGER NOT NULL,
    created_at      INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS sessions (
    id         TEXT PRIMARY KEY,
    account    TEXT NOT NULL,
    stage      TEXT NOT NULL,
    csrf       TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    max_until  INTEGER NOT NULL,
    revoked    INTEGER NOT NULL DEFAULT 0,
    client_ip  TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS sessions_account ON sessions(account);
CREATE TABLE IF NOT EXISTS sso_jti (
    jti TEXT PRIMARY KEY,
    exp INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS recovery_codes (
    account   TEXT NOT NULL REFERENCES accounts(name),
    code_hash TEXT NOT NULL,
    used_at   INTEGER,
    PRIMARY KEY (account, code_hash)
);
";

/// The shortest password accepted.
pub const MIN_PASSWORD_LEN: usize = 12;
/// TOTP step (seconds).
const STEP_SECS: u64 = 30;
/// Recovery codes handed out at enrolment.
const RECOVERY_CODES: usize = 10;
/// The longest lockout.
const MAX_LOCKOUT_MS: u64 = 24 * 60 * 60 * 1000;

/// The one answer to every failed login step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("wrong name, password or code, or the account is locked for a while")]
pub struct LoginFailed;

/// Lockout tunables (`[admin] lockout_after`, `lockout_base`).
#[derive(Debug, Clone, Copy)]
pub struct Lockout {
    /// Failures in a row before the first lockout.
    pub after: u32,
    /// The first lockout; each further failure doubles it.
    pub base_ms: u64,
}

/// What the password step leads to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PasswordOk {
    /// Logged in (no TOTP enrolled).
    Done,
    /// A code is needed next.
    NeedTotp,
}

/// An account as listed.
#[derive(Debug, Clone, serde::Serialize)]
pub struct AccountSummary {
    /// Name (the keys' `account`).
    pub name: String,
    /// Whether logins are refused.
    pub disabled: bool,
    /// Whether TOTP is enabled.
    pub totp: bool,
    /// Locked until (ms; 0 or past: not locked).
    pub locked_until: UnixMillis,
    /// When the password was last set (ms).
    pub password_set_at: UnixMillis,
    /// Created (ms).
    pub created_at: UnixMillis,
}

/// A TOTP enrolment in progress: shown to the user once, enabled by a valid code.
#[derive(Debug, Clone)]
pub struct Enrolment {
    /// The secret, base32 (to type in by hand).
    pub secret_base32: String,
    /// The `otpauth://` URL the QR code carries.
    pub url: String,
    /// The QR code as an SVG document.
    pub qr_svg: String,
}

fn hasher() -> Argon2<'static> {
    // Argon2id with the RustCrypto defaults (19 MiB, 2 passes, 1 lane): OWASP's minimum.
    Argon2::default()
}

/// Hashes `password` (Argon2id, random salt, PHC string).
pub fn hash_password(password: &str) -> anyhow::Result<String> {
    let salt_bytes: [u8; 16] = random_bytes()?;
    let salt = SaltString::encode_b64(&salt_bytes).map_err(|e| anyhow::anyhow!("salt: {e}"))?;
    Ok(hasher()
        .hash_password(password.as_bytes(), &salt)
        .map_err(|e| anyhow::anyhow!("hashing: {e}"))?
        .to_string())
}

#[cfg(test)]
thread_local! {
    /// Argon2 verifications run on this thread, with their PHC parameter strings.
    static VERIFIED: std::cell::RefCell<Vec<String>> = const { std::cell::RefCell::new(Vec::new()) };
}

fn verify_password(hash: &str, password: &str) -> bool {
    #[cfg(test)]
    VERIFIED.with(|v| {
        let params: Vec<&str> = hash.split('$').take(4).collect();
        v.borrow_mut().push(params.join("$"));
    });
    PasswordHash::new(hash)
        .map(|h| hasher().verify_password(password.as_bytes(), &h).is_ok())
        .unwrap_or(false)
}

/// Checks a new password: long enough, not all one character, no control characters.
pub fn check_new_password(password: &str) -> Result<(), String> {
    if password.chars().count() < MIN_PASSWORD_LEN {
        return Err(format!(
            "a password needs at least {MIN_PASSWORD_LEN} characters"
        ));
    }
    if password.chars().any(char::is_control) {
        return Err("a password cannot contain control characters (newlines, tabs)".into());
    }
    let first = password.chars().next();
    if password.chars().all(|c| Some(c) == first) {
        return Err("a password cannot be one character repeated".into());
    }
    Ok(())
}

/// Checks an account name: what keys' `account` fields use.
pub fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'@'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "account name {name:?}: 1 to 64 of letters, digits, - _ . @"
        ))
    }
}

fn now_secs(now: UnixMillis) -> u64 {
    now / 1000
}

fn totp_for(secret: Vec<u8>, name: &str) -> anyhow::Result<totp_rs::TOTP> {
    totp_rs::TOTP::new(
        totp_rs::Algorithm::SHA1,
        6,
        1,
        STEP_SECS,
        secret,
        Some("Keyguard".to_owned()),
        name.to_owned(),
    )
    .map_err(|e| anyhow::anyhow!("totp: {e}"))
}

/// The step `code` belongs to, within one step of `now`, or `None`.
fn matching_step(totp: &totp_rs::TOTP, code: &str, now: UnixMillis) -> Option<u64> {
    let code = code.trim();
    if code.len() != 6 || !code.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let current = now_secs(now) / STEP_SECS;
    let mut found = None;
    // Every candidate is compared (constant-time each), so timing does not say which matched.
    for step in [current.saturating_sub(1), current, current + 1] {
        let expected = totp.generate(step * STEP_SECS);
        if ct_eq(expected.as_bytes(), code.as_bytes()) {
            found = Some(step);
        }
    }
    found
}

/// Equality whose time does not depend on where the inputs differ.
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn hash_recovery(code: &str) -> String {
    let normalized: String = code
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .map(|c| c.to_ascii_lowercase())
        .collect();
    hex::encode(ring::digest::digest(
        &ring::digest::SHA256,
        normalized.as_bytes(),
    ))
}

/// The account store and login checks.
pub struct Accounts {
    master: std::sync::Arc<MasterKey>,
    lockout: Lockout,
    /// Where a lockout is alerted (someone is guessing a trader's password).
    alerts: Option<crate::alerts::Alerts>,
    /// A hash of a random password, verified for unknown names so they cost the same.
    dummy_hash: String,
}

struct Row {
    password_hash: String,
    disabled: bool,
    totp_sealed: Option<Vec<u8>>,
    totp_last_step: i64,
    locked_until: i64,
}

fn row(conn: &Connection, name: &str) -> rusqlite::Result<Option<Row>> {
    conn.query_row(
        "SELECT password_hash, disabled, totp_sealed, totp_last_step, locked_until
         FROM accounts WHERE name = ?1",
        [name],
        |r| {
            Ok(Row {
                password_hash: r.get(0)?,
                disabled: r.get::<_, i64>(1)? != 0,
                totp_sealed: r.get(2)?,
                totp_last_step: r.get(3)?,
                locked_until: r.get(4)?,
            })
        },
    )
    .optional()
}

impl Accounts {
    /// Login checks sealing TOTP secrets under `master`.
    pub fn new(master: std::sync::Arc<MasterKey>, lockout: Lockout) -> anyhow::Result<Accounts> {
        let dummy: [u8; 16] = random_bytes()?;
        Ok(Accounts {
            master,
            lockout,
            alerts: None,
            dummy_hash: hash_password(&hex::encode(dummy))?,
        })
    }

    /// Alerts every lockout through `alerts`.
    pub fn with_alerts(mut self, alerts: crate::alerts::Alerts) -> Accounts {
        self.alerts = Some(alerts);
        self
    }

    /// What a lockout after `failures` failed login steps in a row, for `lock_ms`, is
    /// recorded and alerted as (the actor is Keyguard itself: whoever typed the passwords
    /// is unknown).
    pub(crate) fn lockout_detail(failures: u64, lock_ms: u64) -> String {
        format!(
            "{failures} failed login steps in a row; locked for {} s",
            lock_ms.div_ceil(1000)
        )
    }

    /// Sends the lockout alert, when alerts are configured.
    pub(crate) fn alert_lockout(&self, name: &str, detail: &str) {
        if let Some(alerts) = &self.alerts {
            alerts.send(crate::alerts::Alert {
                ts: crate::audit::timestamp(std::time::SystemTime::now()),
                event: "account_locked".into(),
                code: "account_locked".into(),
                account: Some(name.to_owned()),
                detail: detail.to_owned(),
                ..Default::default()
            });
        }
    }

    fn failed(&self, conn: &Connection, name: &str, now: UnixMillis) -> rusqlite::Result<()> {
        let failures: Option<i64> = conn
            .query_row(
                "UPDATE accounts SET failed_logins = failed_logins + 1 WHERE name = ?1
                 RETURNING failed_logins",
                [name],
                |r| r.get(0),
            )
            .optional()?;
        if let Some(n) = failures {
            let n = n as u64;
            if n >= u64::from(self.lockout.after) {
                let doublings = (n - u64::from(self.lockout.after)).min(20) as u32;
                let lock = self
                    .lockout
                    .base_ms
                    .saturating_mul(1u64 << doublings)
                    .min(MAX_LOCKOUT_MS);
                conn.execute(
                    "UPDATE accounts SET locked_until = ?2 WHERE name = ?1",
                    params![name, now.saturating_add(lock) as i64],
                )?;
                let detail = Self::lockout_detail(n, lock);
                // The lock holds whether or not its record could be written.
                if let Err(e) = crate::store::record_admin_event(
                    conn,
                    "keyguard",
                    "account_locked",
                    name,
                    &detail,
                ) {
                    tracing::warn!(error = %format!("{e:#}"), "a lockout could not be recorded");
                }
                self.alert_lockout(name, &detail);
            }
        }
        Ok(())
    }

    /// Step one: the password. Always runs one Argon2 verification.
    pub fn check_password(
        &self,
        conn: &Connection,
        name: &str,
        password: &str,
        now: UnixMillis,
    ) -> Result<PasswordOk, LoginFailed> {
        let found = row(conn, name).map_err(|_| LoginFailed)?;
        let hash = found
            .as_ref()
            .map_or(self.dummy_hash.as_str(), |r| r.password_hash.as_str());
        let good = verify_password(hash, password);
        let Some(r) = found else {
            return Err(LoginFailed);
        };
        if r.disabled || r.locked_until as u64 > now {
            return Err(LoginFailed);
        }
        if !good {
            let _ = self.failed(conn, name, now);
            return Err(LoginFailed);
        }
        if r.totp_sealed.is_some() {
            Ok(PasswordOk::NeedTotp)
        } else {
            let _ = conn.execute(
                "UPDATE accounts SET failed_logins = 0 WHERE name = ?1",
                [name],
            );
            Ok(PasswordOk::Done)
        }
    }

    /// Step two: a TOTP code (each step accepted once) or an unused recovery code.
    pub fn check_second_factor(
        &self,
        conn: &Connection,
        name: &str,
        code: &str,
        now: UnixMillis,
    ) -> Result<(), LoginFailed> {
        let r = row(conn, name)
            .map_err(|_| LoginFailed)?
            .ok_or(LoginFailed)?;
        if r.disabled || r.locked_until as u64 > now {
            return Err(LoginFailed);
        }
        let ok = match self.totp_step(name, r.totp_sealed.as_deref(), code, now) {
            Some(step) if step as i64 > r.totp_last_step => conn
                .execute(
                    // The guard in SQL too: two logins racing with one code, one wins.
                    "UPDATE accounts SET totp_last_step = ?2, failed_logins = 0
                     WHERE name = ?1 AND totp_last_step < ?2",
                    params![name, step as i64],
                )
                .map(|n| n == 1)
                .unwrap_or(false),
            Some(_) => false,
            None => self.use_recovery_code(conn, name, code, now),
        };
        if ok {
            Ok(())
        } else {
            let _ = self.failed(conn, name, now);
            Err(LoginFailed)
        }
    }

    fn totp_step(
        &self,
        name: &str,
        sealed: Option<&[u8]>,
        code: &str,
        now: UnixMillis,
    ) -> Option<u64> {
        let secret = self.master.open(&format!("totp:{name}"), sealed?).ok()?;
        let totp = totp_for(secret, name).ok()?;
        matching_step(&totp, code, now)
    }

    fn use_recovery_code(
        &self,
        conn: &Connection,
        name: &str,
        code: &str,
        now: UnixMillis,
    ) -> bool {
        conn.execute(
            "UPDATE recovery_codes SET used_at = ?3
             WHERE account = ?1 AND code_hash = ?2 AND used_at IS NULL",
            params![name, hash_recovery(code), now as i64],
        )
        .map(|n| n == 1)
        .unwrap_or(false)
    }

    /// Re-authentication for a widening change in an open session: the password, and a
    /// fresh code when TOTP is enrolled. Failures count towards lockout.
    pub fn reauthenticate(
        &self,
        conn: &Connection,
        name: &str,
        password: &str,
        code: &str,
        now: UnixMillis,
    ) -> Result<(), LoginFailed> {
        match self.check_password(conn, name, password, now)? {
            PasswordOk::Done => Ok(()),
            PasswordOk::NeedTotp => self.check_second_factor(conn, name, code, now),
        }
    }

    /// Starts (or restarts) TOTP enrolment: a new secret, kept pending until confirmed.
    pub fn begin_enrolment(&self, conn: &Connection, name: &str) -> anyhow::Result<Enrolment> {
        let secret: [u8; 20] = random_bytes()?;
        let sealed = self.master.seal(&format!("totp:{name}"), &secret)?;
        let n = conn.execute(
            "UPDATE accounts SET totp_pending = ?2 WHERE name = ?1",
            params![name, sealed],
        )?;
        anyhow::ensure!(n == 1, "no account {name}");
        enrolment(secret.to_vec(), name)
    }

    /// The enrolment in progress, to show it again (a reload of the page).
    pub fn pending_enrolment(
        &self,
        conn: &Connection,
        name: &str,
    ) -> anyhow::Result<Option<Enrolment>> {
        let sealed: Option<Vec<u8>> = conn
            .query_row(
                "SELECT totp_pending FROM accounts WHERE name = ?1",
                [name],
                |r| r.get(0),
            )
            .optional()?
            .flatten();
        match sealed {
            Some(s) => Ok(Some(enrolment(
                self.master.open(&format!("totp:{name}"), &s)?,
                name,
            )?)),
            None => Ok(None),
        }
    }

    /// Confirms enrolment with a valid code from the new secret: TOTP is enabled and fresh
    /// recovery codes are returned (shown once; stored hashed). `None` if the code is wrong.
    pub fn confirm_enrolment(
        &self,
        conn: &mut Connection,
        name: &str,
        code: &str,
        now: UnixMillis,
    ) -> anyhow::Result<Option<Vec<String>>> {
        let sealed: Option<Vec<u8>> = conn
            .query_row(
                "SELECT totp_pending FROM accounts WHERE name = ?1",
                [name],
                |r| r.get(0),
            )
            .optional()?
            .flatten();
        let Some(step) = self.totp_step(name, sealed.as_deref(), code, now) else {
            return Ok(None);
        };
        let codes = new_recovery_codes()?;
        let tx = conn.transaction()?;
        tx.execute(
            "UPDATE accounts SET totp_sealed = totp_pending, totp_pending = NULL, totp_last_step = ?2
             WHERE name = ?1",
            params![name, step as i64],
        )?;
        tx.execute("DELETE FROM recovery_codes WHERE account = ?1", [name])?;
        for c in &codes {
            tx.execute(
                "INSERT INTO recovery_codes (account, code_hash) VALUES (?1, ?2)",
                params![name, hash_recovery(c)],
            )?;
        }
        crate::store::record_admin_event(
            &tx,
            &format!("web:{name}"),
            "totp_enabled",
            name,
            "enrolled",
        )?;
        tx.commit()?;
        Ok(Some(codes))
    }
}

/// Fresh recovery codes (`abcde-12345`), shown once.
fn new_recovery_codes() -> anyhow::Result<Vec<String>> {
    (0..RECOVERY_CODES)
        .map(|_| {
            let raw = crate::cli::random_alnum(10)?.to_ascii_lowercase();
            Ok(format!("{}-{}", &raw[..5], &raw[5..]))
        })
        .collect()
}

fn enrolment(secret: Vec<u8>, name: &str) -> anyhow::Result<Enrolment> {
    let totp = totp_for(secret, name)?;
    let url = totp.get_url();
    let qr = qrcode::QrCode::new(url.as_bytes()).map_err(|e| anyhow::anyhow!("qr: {e}"))?;
    let qr_svg = qr
        .render::<qrcode::render::svg::Color<'_>>()
        .min_dimensions(200, 200)
        .quiet_zone(true)
        .build();
    Ok(Enrolment {
        secret_base32: totp.get_secret_base32(),
        url,
        qr_svg,
    })
}

/// Creates an account.
pub fn create(conn: &Connection, name: &str, password: &str, actor: &str) -> anyhow::Result<()> {
    check_name(name).map_err(anyhow::Error::msg)?;
    check_new_password(password).map_err(anyhow::Error::msg)?;
    let hash = hash_password(password)?;
    let now = crate::store::now_ms() as i64;
    let n = conn.execute(
        "INSERT OR IGNORE INTO accounts (name, password_hash, password_set_at, created_at)
         VALUES (?1, ?2, ?3, ?3)",
        params![name, hash, now],
    )?;
    anyhow::ensure!(n == 1, "account {name} already exists");
    crate::store::record_admin_event(conn, actor, "account_create", name, "created")?;
    Ok(())
}

/// Sets a new password; every session of the account ends (see [`crate::admin`]'s
/// sessions table, revoked in the same transaction) and the lockout is lifted.
pub fn set_password(
    conn: &mut Connection,
    name: &str,
    password: &str,
    actor: &str,
) -> anyhow::Result<()> {
    check_new_password(password).map_err(anyhow::Error::msg)?;
    let hash = hash_password(password)?;
    let tx = conn.transaction()?;
    let n = tx.execute(
        "UPDATE accounts SET password_hash = ?2, password_set_at = ?3, failed_logins = 0, locked_until = 0
         WHERE name = ?1",
        params![name, hash, crate::store::now_ms() as i64],
    )?;
    anyhow::ensure!(n == 1, "no account {name}");
    revoke_sessions(&tx, name)?;
    crate::store::record_admin_event(&tx, actor, "account_password", name, "password set")?;
    tx.commit()?;
    Ok(())
}

/// Disables (or re-enables) logins; disabling ends every session at once.
pub fn set_disabled(
    conn: &mut Connection,
    name: &str,
    disabled: bool,
    actor: &str,
    reason: &str,
) -> anyhow::Result<()> {
    let tx = conn.transaction()?;
    let n = tx.execute(
        "UPDATE accounts SET disabled = ?2 WHERE name = ?1",
        params![name, disabled as i64],
    )?;
    anyhow::ensure!(n == 1, "no account {name}");
    if disabled {
        revoke_sessions(&tx, name)?;
    }
    let action = if disabled {
        "account_disable"
    } else {
        "account_enable"
    };
    crate::store::record_admin_event(&tx, actor, action, name, reason)?;
    tx.commit()?;
    Ok(())
}

/// Turns TOTP off (a lost phone): the secret and recovery codes go, every session ends,
/// and the user enrols again after logging in with the password.
pub fn reset_totp(
    conn: &mut Connection,
    name: &str,
    actor: &str,
    reason: &str,
) -> anyhow::Result<()> {
    let tx = conn.transaction()?;
    let n = tx.execute(
        "UPDATE accounts SET totp_sealed = NULL, totp_pending = NULL, totp_last_step = 0 WHERE name = ?1",
        [name],
    )?;
    anyhow::ensure!(n == 1, "no account {name}");
    tx.execute("DELETE FROM recovery_codes WHERE account = ?1", [name])?;
    revoke_sessions(&tx, name)?;
    crate::store::record_admin_event(&tx, actor, "account_totp_reset", name, reason)?;
    tx.commit()?;
    Ok(())
}

/// Ends every session of `name`.
pub fn revoke_sessions(conn: &Connection, name: &str) -> rusqlite::Result<usize> {
    conn.execute(
        "UPDATE sessions SET revoked = 1 WHERE account = ?1 AND revoked = 0",
        [name],
    )
}

/// Every account.
pub fn list(conn: &Connection) -> anyhow::Result<Vec<AccountSummary>> {
    let mut stmt = conn.prepare(
        "SELECT name, disabled, totp_sealed IS NOT NULL, locked_until, password_set_at, created_at
         FROM accounts ORDER BY name",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok(AccountSummary {
            name: r.get(0)?,
            disabled: r.get::<_, i64>(1)? != 0,
            totp: r.get(2)?,
            locked_until: r.get::<_, i64>(3)? as u64,
            password_set_at: r.get::<_, i64>(4)? as u64,
            created_at: r.get::<_, i64>(5)? as u64,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

#[path = "accounts_redis.rs"]
pub mod on_redis;

#[cfg(test)]
#[path = "accounts_tests.rs"]
mod tests;
