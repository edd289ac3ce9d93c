//! Who is logged in, on Redis: web UI accounts, web sessions, the session signing key,
//! spent SSO `jti`s and admin API tokens, shared by every replica's admin listener. This
//! file only stores and fetches; the checks (Argon2, TOTP, lockout policy, JWTs) stay in
//! [`crate::accounts`], [`crate::admin::sessions`], [`crate::admin::sso`] and
//! [`crate::admin::tokens`], the same code the embedded store runs.
//!
//! Every check-and-update is one script (`acct_*.lua`, `sess_*.lua`, `tok_*.lua`), so two
//! replicas racing see one winner: a failed password on replica A counts on B, a TOTP step
//! accepted on A is refused on B, a recovery code is spent once.
//!
//! # Keys and their bounds
//! `<acct>` is the account's slot base ([`RedisStore::account_base`]); `{cat}` keys share
//! the catalogue's slot, so token changes and their admin events are one script.
//! - `<acct>:void`: never written; refused logins of unknown, disabled or locked names
//!   run the failure script against it, so they cost what a counted failure costs.
//! - `<acct>:acct` (hash): the account — PHC hash, disabled, sealed TOTP secret (and a
//!   pending one), last accepted step, failures in a row, locked-until, session epoch,
//!   times. No TTL: one per account an operator created. Scripts never create it for a
//!   name that does not exist, so logins with made-up names write nothing.
//! - `<acct>:rc` (set): SHA-256 of the unused recovery codes; at most ten, replaced at
//!   each enrolment.
//! - `<acct>:s:<sid>` (hash): one web session; expires (`PEXPIREAT`) with the session, and
//!   renewal moves that expiry but never past the absolute limit.
//! - `{cat}:adm:accounts` (set): the account names, for listing; one per account.
//! - `{cat}:adm:session_key` (string): the sessions' signing key, sealed with the master
//!   key; exactly one, made by whichever replica starts first (`SET NX`).
//! - `{cat}:adm:jti:<sha256 of jti>` (string): a spent SSO token id, `PX` until the token
//!   would have expired (at most five minutes).
//! - `{cat}:adm:tok:<id>` (hash) and `{cat}:adm:tokens` (set): admin API tokens, stored as
//!   a hash of the secret; one per token an operator created (revoked ones stay, listed
//!   as revoked, as in SQLite).
//! - Admin events go to the catalogue's stream `{cat}:events` (`MAXLEN ~ 100000`), which
//!   every replica copies into its audit log.

use anyhow::Context;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use keyguard_policy::UnixMillis;
use redis::Script;

use super::{RedisStore, StoreError};
use crate::secrets::MasterKey;

/// An account as stored.
#[derive(Debug, Clone)]
pub struct AccountDoc {
    /// Argon2id PHC string.
    pub password_hash: String,
    /// Logins refused.
    pub disabled: bool,
    /// The TOTP secret, sealed (`None`: TOTP off).
    pub totp_sealed: Option<Vec<u8>>,
    /// An enrolment in progress, sealed.
    pub totp_pending: Option<Vec<u8>>,
    /// The step of the last accepted code.
    pub totp_last_step: u64,
    /// Locked until (ms).
    pub locked_until: UnixMillis,
    /// When the password was last set (ms).
    pub password_set_at: UnixMillis,
    /// Created (ms).
    pub created_at: UnixMillis,
}

/// A changed account, for [`RedisStore::update_account`].
#[derive(Debug, Default)]
pub struct AccountChange<'a> {
    /// Fields to set.
    pub set: Vec<(&'static str, String)>,
    /// Fields to delete.
    pub delete: Vec<&'static str>,
    /// End every session of the account.
    pub end_sessions: bool,
    /// Drop the recovery codes.
    pub drop_codes: bool,
    /// The admin event to record: (actor, action, reason).
    pub event: Option<(&'a str, &'a str, &'a str)>,
}

/// A session as stored.
#[derive(Debug, Clone)]
pub struct SessionRow {
    /// Its CSRF token.
    pub csrf: String,
    /// Its expiry after the check (ms).
    pub expires_at: UnixMillis,
    /// Whether the check renewed it.
    pub renewed: bool,
}

/// A token as stored.
#[derive(Debug, Clone)]
pub struct TokenDoc {
    /// Id.
    pub id: String,
    /// SHA-256 of the secret, hex.
    pub hash: String,
    /// Scopes (`admin:read,admin:write`).
    pub scopes: String,
    /// Label.
    pub label: String,
    /// Created (ms).
    pub created_at: UnixMillis,
    /// Revoked.
    pub revoked: bool,
}

fn script(src: &'static str) -> Script {
    Script::new(src)
}

fn sealed_field(v: Option<&String>) -> anyhow::Result<Option<Vec<u8>>> {
    v.filter(|s| !s.is_empty())
        .map(|s| B64.decode(s).context("bad sealed TOTP secret"))
        .transpose()
}

fn num(v: Option<&String>) -> u64 {
    v.and_then(|s| s.parse().ok()).unwrap_or(0)
}

/// What a context string seals the session signing key under.
const SESSION_KEY_CONTEXT: &str = "admin session key";

impl RedisStore {
    /// `<prefix>:{cat}:adm:<name>`: the admin side's own keys in the catalogue's slot.
    pub fn adm_key(&self, name: &str) -> String {
        self.cat_key(&format!("adm:{name}"))
    }

    fn acct_key(&self, name: &str) -> String {
        format!("{}:acct", self.account_base(name))
    }

    fn codes_key(&self, name: &str) -> String {
        format!("{}:rc", self.account_base(name))
    }

    fn session_key_of(&self, account: &str, sid: &str) -> String {
        format!("{}:s:{sid}", self.account_base(account))
    }

    async fn run_script<T: redis::FromRedisValue>(
        &self,
        inv: &redis::ScriptInvocation<'_>,
    ) -> Result<T, StoreError> {
        let mut c = self.conn().await?;
        self.deadline(inv.invoke_async(&mut c)).await
    }

    /// Records an operator or login event in the stream every replica audits.
    pub async fn record_admin_event(
        &self,
        actor: &str,
        action: &str,
        target: &str,
        reason: &str,
    ) -> Result<(), StoreError> {
        self.query::<String>(
            redis::cmd("XADD")
                .arg(self.cat_key("events"))
                .arg("MAXLEN")
                .arg("~")
                .arg(100_000)
                .arg("*")
                .arg("ts")
                .arg(crate::store::now_ms())
                .arg("actor")
                .arg(actor)
                .arg("action")
                .arg(action)
                .arg("target")
                .arg(target)
                .arg("reason")
                .arg(reason),
        )
        .await?;
        Ok(())
    }

    // -----------------------------------------------------------------------------------
    // Accounts
    // -----------------------------------------------------------------------------------

    /// Creates an account; `false` when the name is taken.
    pub async fn create_account(
        &self,
        name: &str,
        password_hash: &str,
        now: UnixMillis,
        actor: &str,
    ) -> anyhow::Result<bool> {
        let s = script(include_str!("acct_create.lua"));
        let mut inv = s.prepare_invoke();
        inv.key(self.acct_key(name));
        for (f, v) in [
            ("password_hash", password_hash.to_owned()),
            ("disabled", "0".to_owned()),
            ("totp_last_step", "0".to_owned()),
            ("failed", "0".to_owned()),
            ("locked_until", "0".to_owned()),
            ("epoch", "0".to_owned()),
            ("password_set_at", now.to_string()),
            ("created_at", now.to_string()),
        ] {
            inv.arg(f).arg(v);
        }
        let created: i64 = self.run_script(&inv).await?;
        if created == 0 {
            return Ok(false);
        }
        // The index lives in another slot than the account (a cluster refuses one script
        // over both); a name listed late is harmless, a name never listed would only be
        // missing from `accounts list`.
        self.query::<i64>(redis::cmd("SADD").arg(self.adm_key("accounts")).arg(name))
            .await?;
        self.record_admin_event(actor, "account_create", name, "created")
            .await?;
        Ok(true)
    }

    /// One account, or `None`.
    pub async fn account(&self, name: &str) -> anyhow::Result<Option<AccountDoc>> {
        let h: std::collections::HashMap<String, String> = self
            .query(redis::cmd("HGETALL").arg(self.acct_key(name)))
            .await?;
        if h.is_empty() {
            return Ok(None);
        }
        let password_hash = h
            .get("password_hash")
            .cloned()
            .ok_or_else(|| anyhow::anyhow!("account {name}: no password hash"))?;
        Ok(Some(AccountDoc {
            password_hash,
            disabled: h.get("disabled").map(String::as_str) != Some("0"),
            totp_sealed: sealed_field(h.get("totp_sealed"))?,
            totp_pending: sealed_field(h.get("totp_pending"))?,
            totp_last_step: num(h.get("totp_last_step")),
            locked_until: num(h.get("locked_until")),
            password_set_at: num(h.get("password_set_at")),
            created_at: num(h.get("created_at")),
        }))
    }

    /// Every account's name, sorted.
    pub async fn account_names(&self) -> anyhow::Result<Vec<String>> {
        let mut names: Vec<String> = self
            .query(redis::cmd("SMEMBERS").arg(self.adm_key("accounts")))
            .await?;
        names.sort();
        Ok(names)
    }

    /// Counts a failed login step; returns `(failures in a row, locked until or 0)`, and
    /// records a lockout as an admin event (`detail` says what the lockout is recorded
    /// as, from the failures and the lock's length).
    pub async fn account_failed(
        &self,
        name: &str,
        now: UnixMillis,
        after: u32,
        base_ms: u64,
        max_ms: u64,
        detail: impl Fn(u64, u64) -> String,
    ) -> anyhow::Result<(u64, UnixMillis)> {
        let s = script(include_str!("acct_fail.lua"));
        let mut inv = s.prepare_invoke();
        inv.key(self.acct_key(name))
            .arg(now)
            .arg(after)
            .arg(base_ms)
            .arg(max_ms);
        let (n, locked): (u64, u64) = self.run_script(&inv).await?;
        if locked > now {
            self.record_admin_event("keyguard", "account_locked", name, &detail(n, locked - now))
                .await?;
        }
        Ok((n, locked))
    }

    /// The same script call as [`RedisStore::account_failed`] against a key that never
    /// exists (the script writes only existing accounts), so a refused login of an
    /// unknown, disabled or locked name costs the round trip a counted failure costs.
    pub async fn account_failed_nowhere(&self, name: &str) -> anyhow::Result<()> {
        let s = script(include_str!("acct_fail.lua"));
        let mut inv = s.prepare_invoke();
        inv.key(format!("{}:void", self.account_base(name)))
            .arg(0)
            .arg(1)
            .arg(0)
            .arg(0);
        let (n, _): (u64, u64) = self.run_script(&inv).await?;
        anyhow::ensure!(n == 0, "{}:void exists", self.account_base(name));
        Ok(())
    }

    /// Accepts a TOTP step if newer than the last accepted one (see `acct_totp.lua`).
    pub async fn account_accept_step(
        &self,
        name: &str,
        step: u64,
        now: UnixMillis,
    ) -> anyhow::Result<bool> {
        let s = script(include_str!("acct_totp.lua"));
        let mut inv = s.prepare_invoke();
        inv.key(self.acct_key(name)).arg(step).arg(now);
        let ok: i64 = self.run_script(&inv).await?;
        Ok(ok == 1)
    }

    /// Spends a recovery code (by its hash): `true` once.
    pub async fn account_spend_code(&self, name: &str, code_hash: &str) -> anyhow::Result<bool> {
        let n: i64 = self
            .query(redis::cmd("SREM").arg(self.codes_key(name)).arg(code_hash))
            .await?;
        Ok(n == 1)
    }

    /// Changes an existing account; `false` when there is none.
    pub async fn update_account(
        &self,
        name: &str,
        change: AccountChange<'_>,
    ) -> anyhow::Result<bool> {
        let s = script(include_str!("acct_update.lua"));
        let mut inv = s.prepare_invoke();
        inv.key(self.acct_key(name))
            .key(self.codes_key(name))
            .arg(if change.end_sessions { "1" } else { "0" })
            .arg(if change.drop_codes { "1" } else { "0" })
            .arg(change.delete.len());
        for f in &change.delete {
            inv.arg(*f);
        }
        for (f, v) in &change.set {
            inv.arg(*f).arg(v);
        }
        let changed: i64 = self.run_script(&inv).await?;
        if changed == 0 {
            return Ok(false);
        }
        if let Some((actor, action, reason)) = change.event {
            self.record_admin_event(actor, action, name, reason).await?;
        }
        Ok(true)
    }

    /// Turns TOTP on with `pending` (the sealed secret the code was checked against) and
    /// stores the recovery codes' hashes; `false` when the enrolment changed meanwhile.
    pub async fn account_enable_totp(
        &self,
        name: &str,
        pending: &[u8],
        step: u64,
        code_hashes: &[String],
    ) -> anyhow::Result<bool> {
        let s = script(include_str!("acct_enrol.lua"));
        let mut inv = s.prepare_invoke();
        inv.key(self.acct_key(name))
            .key(self.codes_key(name))
            .arg(B64.encode(pending))
            .arg(step);
        for h in code_hashes {
            inv.arg(h);
        }
        let ok: i64 = self.run_script(&inv).await?;
        if ok == 1 {
            self.record_admin_event(&format!("web:{name}"), "totp_enabled", name, "enrolled")
                .await?;
        }
        Ok(ok == 1)
    }

    // -----------------------------------------------------------------------------------
    // Sessions
    // -----------------------------------------------------------------------------------

    /// Stores a new session of `account` (ending `replacing`); `false` when the account is
    /// gone or disabled.
    #[allow(clippy::too_many_arguments, reason = "one session row's columns")]
    pub async fn start_session(
        &self,
        account: &str,
        sid: &str,
        stage: &str,
        csrf: &str,
        now: UnixMillis,
        expires_at: UnixMillis,
        max_until: UnixMillis,
        client_ip: &str,
        replacing: Option<&str>,
    ) -> anyhow::Result<bool> {
        let s = script(include_str!("sess_start.lua"));
        let mut inv = s.prepare_invoke();
        inv.key(self.session_key_of(account, sid))
            .key(self.acct_key(account));
        if let Some(old) = replacing {
            inv.key(self.session_key_of(account, old));
        }
        inv.arg(stage)
            .arg(csrf)
            .arg(now)
            .arg(expires_at)
            .arg(max_until)
            .arg(client_ip);
        let ok: i64 = self.run_script(&inv).await?;
        Ok(ok == 1)
    }

    /// Checks (and, with `renew_ttl`, renews past half its life) a session.
    pub async fn check_session(
        &self,
        account: &str,
        sid: &str,
        stage: &str,
        now: UnixMillis,
        ttl_ms: u64,
        renew: bool,
    ) -> anyhow::Result<Option<SessionRow>> {
        let s = script(include_str!("sess_check.lua"));
        let mut inv = s.prepare_invoke();
        inv.key(self.session_key_of(account, sid))
            .key(self.acct_key(account))
            .arg(stage)
            .arg(now)
            .arg(ttl_ms)
            .arg(if renew { "1" } else { "0" });
        let r: Option<(String, u64, i64)> = self.run_script(&inv).await?;
        Ok(r.map(|(csrf, expires_at, renewed)| SessionRow {
            csrf,
            expires_at,
            renewed: renewed == 1,
        }))
    }

    /// Ends one session.
    pub async fn end_session(&self, account: &str, sid: &str) -> anyhow::Result<()> {
        self.query::<i64>(redis::cmd("DEL").arg(self.session_key_of(account, sid)))
            .await?;
        Ok(())
    }

    /// The sessions' signing key every replica shares: made (sealed with `master`) by the
    /// first replica to ask, read by the rest.
    pub async fn session_signing_key(&self, master: &MasterKey) -> anyhow::Result<Vec<u8>> {
        let key = self.adm_key("session_key");
        let fresh = crate::secrets::random_bytes::<32>()?;
        let sealed = B64.encode(master.seal(SESSION_KEY_CONTEXT, &fresh)?);
        self.query::<Option<String>>(redis::cmd("SET").arg(&key).arg(sealed).arg("NX"))
            .await?;
        let stored: Option<String> = self.query(redis::cmd("GET").arg(&key)).await?;
        let stored = stored.ok_or_else(|| anyhow::anyhow!("{key} vanished after SET NX"))?;
        let raw = B64
            .decode(stored)
            .with_context(|| format!("{key}: not base64"))?;
        let k = master
            .open(SESSION_KEY_CONTEXT, &raw)
            .with_context(|| format!("{key}: sealed under another master key"))?;
        anyhow::ensure!(k.len() == 32, "{key}: expected 32 bytes");
        Ok(k)
    }

    // -----------------------------------------------------------------------------------
    // SSO
    // -----------------------------------------------------------------------------------

    /// Spends an SSO token id until `until_ms` (when the token expires anyway): `true`
    /// the first time, on whichever replica.
    pub async fn spend_jti(
        &self,
        jti: &str,
        until_ms: UnixMillis,
        now: UnixMillis,
    ) -> anyhow::Result<bool> {
        // Hashed: a jti is up to 128 bytes of anything; the key stays short and plain.
        let id = hex::encode(ring::digest::digest(&ring::digest::SHA256, jti.as_bytes()));
        let px = until_ms.saturating_sub(now).max(1);
        let set: Option<String> = self
            .query(
                redis::cmd("SET")
                    .arg(self.adm_key(&format!("jti:{id}")))
                    .arg(1)
                    .arg("NX")
                    .arg("PX")
                    .arg(px),
            )
            .await?;
        Ok(set.is_some())
    }

    // -----------------------------------------------------------------------------------
    // API tokens
    // -----------------------------------------------------------------------------------

    /// Stores a token (its hash) and records the event; `false` when the id is taken.
    pub async fn create_token(
        &self,
        id: &str,
        hash: &str,
        scopes: &str,
        label: &str,
        actor: &str,
    ) -> anyhow::Result<bool> {
        let s = script(include_str!("tok_create.lua"));
        let mut inv = s.prepare_invoke();
        inv.key(self.adm_key(&format!("tok:{id}")))
            .key(self.adm_key("tokens"))
            .key(self.cat_key("events"))
            .arg(id)
            .arg(hash)
            .arg(scopes)
            .arg(label)
            .arg(crate::store::now_ms())
            .arg(actor);
        let ok: i64 = self.run_script(&inv).await?;
        Ok(ok == 1)
    }

    /// Revokes an active token and records the event; `false` when none was active.
    pub async fn revoke_token(&self, id: &str, actor: &str) -> anyhow::Result<bool> {
        let s = script(include_str!("tok_revoke.lua"));
        let mut inv = s.prepare_invoke();
        inv.key(self.adm_key(&format!("tok:{id}")))
            .key(self.cat_key("events"))
            .arg(crate::store::now_ms())
            .arg(actor)
            .arg(id);
        let ok: i64 = self.run_script(&inv).await?;
        Ok(ok == 1)
    }

    /// One token, or `None`.
    pub async fn token(&self, id: &str) -> anyhow::Result<Option<TokenDoc>> {
        let h: std::collections::HashMap<String, String> = self
            .query(redis::cmd("HGETALL").arg(self.adm_key(&format!("tok:{id}"))))
            .await?;
        if h.is_empty() {
            return Ok(None);
        }
        let get = |k: &str| h.get(k).cloned().unwrap_or_default();
        Ok(Some(TokenDoc {
            id: id.to_owned(),
            hash: get("hash"),
            scopes: get("scopes"),
            label: get("label"),
            created_at: num(h.get("created_at")),
            // Anything but an explicit "0" counts as revoked: fail closed.
            revoked: h.get("revoked").map(String::as_str) != Some("0"),
        }))
    }

    /// Every token, oldest first.
    pub async fn tokens(&self) -> anyhow::Result<Vec<TokenDoc>> {
        let ids: Vec<String> = self
            .query(redis::cmd("SMEMBERS").arg(self.adm_key("tokens")))
            .await?;
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(t) = self.token(&id).await? {
                out.push(t);
            }
        }
        out.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        Ok(out)
    }

    // -----------------------------------------------------------------------------------
    // Migration
    // -----------------------------------------------------------------------------------

    /// Writes `doc` (with its failure count and unused recovery codes' hashes) as it was
    /// in the embedded store, replacing whatever account of that name Redis held; its
    /// sessions are not copied (the users log in again).
    pub async fn import_account(
        &self,
        name: &str,
        doc: &AccountDoc,
        failed: u64,
        code_hashes: &[String],
    ) -> anyhow::Result<()> {
        let mut fields = vec![
            ("password_hash", doc.password_hash.clone()),
            ("disabled", if doc.disabled { "1" } else { "0" }.to_owned()),
            ("totp_last_step", doc.totp_last_step.to_string()),
            ("failed", failed.to_string()),
            ("locked_until", doc.locked_until.to_string()),
            ("epoch", "0".to_owned()),
            ("password_set_at", doc.password_set_at.to_string()),
            ("created_at", doc.created_at.to_string()),
        ];
        if let Some(s) = &doc.totp_sealed {
            fields.push(("totp_sealed", B64.encode(s)));
        }
        if let Some(s) = &doc.totp_pending {
            fields.push(("totp_pending", B64.encode(s)));
        }
        let mut pipe = redis::pipe();
        pipe.atomic()
            .del(self.acct_key(name))
            .del(self.codes_key(name))
            .hset_multiple(self.acct_key(name), &fields);
        if !code_hashes.is_empty() {
            pipe.sadd(self.codes_key(name), code_hashes);
        }
        let mut c = self.conn().await?;
        self.deadline(pipe.query_async::<()>(&mut c)).await?;
        self.query::<i64>(redis::cmd("SADD").arg(self.adm_key("accounts")).arg(name))
            .await?;
        Ok(())
    }

    /// Writes a token as it was in the embedded store (its hash; revoked ones too).
    pub async fn import_token(&self, t: &TokenDoc) -> anyhow::Result<()> {
        let key = self.adm_key(&format!("tok:{}", t.id));
        let mut pipe = redis::pipe();
        pipe.atomic()
            .del(&key)
            .hset_multiple(
                &key,
                &[
                    ("hash", t.hash.clone()),
                    ("scopes", t.scopes.clone()),
                    ("label", t.label.clone()),
                    ("created_at", t.created_at.to_string()),
                    ("revoked", if t.revoked { "1" } else { "0" }.to_owned()),
                ],
            )
            .sadd(self.adm_key("tokens"), &t.id);
        let mut c = self.conn().await?;
        self.deadline(pipe.query_async::<()>(&mut c)).await?;
        Ok(())
    }
}
