//! The same login checks as [`super::Accounts`]'s, with the accounts in Redis
//! ([`crate::store::redis::auth`]) so that every replica's admin listener shares them:
//! the failure count and lockout, the last accepted TOTP step and the recovery codes are
//! each changed by one script, so a failure on one replica counts on all and a code
//! accepted on one is refused on all. Argon2 still runs once per password step whether
//! the account exists or not.

use keyguard_policy::UnixMillis;

use super::{
    check_name, check_new_password, enrolment, hash_password, hash_recovery, verify_password,
    AccountSummary, Accounts, Enrolment, LoginFailed, PasswordOk, MAX_LOCKOUT_MS,
};
use crate::store::redis::auth::AccountChange;
use crate::store::redis::RedisStore;

impl Accounts {
    async fn failed_on(&self, r: &RedisStore, name: &str, now: UnixMillis) {
        match r
            .account_failed(
                name,
                now,
                self.lockout.after,
                self.lockout.base_ms,
                MAX_LOCKOUT_MS,
                Accounts::lockout_detail,
            )
            .await
        {
            Ok((n, locked)) if locked > now => {
                self.alert_lockout(name, &Accounts::lockout_detail(n, locked - now));
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "a failed login could not be counted")
            }
        }
    }

    /// Step one on Redis: the password. Always runs one Argon2 verification.
    pub async fn check_password_on(
        &self,
        r: &RedisStore,
        name: &str,
        password: &str,
        now: UnixMillis,
    ) -> Result<PasswordOk, LoginFailed> {
        let found = r.account(name).await.map_err(|_| LoginFailed)?;
        let hash = found
            .as_ref()
            .map_or(self.dummy_hash.as_str(), |a| a.password_hash.as_str());
        let good = verify_password(hash, password);
        // Every refusal makes one script call: an uncounted one (unknown, disabled,
        // locked) costs what a counted one does.
        let Some(a) = found.filter(|a| !a.disabled && a.locked_until <= now) else {
            let _ = r.account_failed_nowhere(name).await;
            return Err(LoginFailed);
        };
        if !good {
            self.failed_on(r, name, now).await;
            return Err(LoginFailed);
        }
        if a.totp_sealed.is_some() {
            return Ok(PasswordOk::NeedTotp);
        }
        let reset = AccountChange {
            set: vec![("failed", "0".into())],
            ..AccountChange::default()
        };
        let _ = r.update_account(name, reset).await;
        Ok(PasswordOk::Done)
    }

    /// Step two on Redis: a TOTP code (each step accepted once, on whichever replica) or
    /// an unused recovery code (spent once).
    pub async fn check_second_factor_on(
        &self,
        r: &RedisStore,
        name: &str,
        code: &str,
        now: UnixMillis,
    ) -> Result<(), LoginFailed> {
        let a = r
            .account(name)
            .await
            .map_err(|_| LoginFailed)?
            .ok_or(LoginFailed)?;
        if a.disabled || a.locked_until > now {
            return Err(LoginFailed);
        }
        let ok = match self.totp_step(name, a.totp_sealed.as_deref(), code, now) {
            // The script checks the step again: two replicas racing with one code, one wins.
            Some(step) if step > a.totp_last_step => r
                .account_accept_step(name, step, now)
                .await
                .unwrap_or(false),
            Some(_) => false,
            None => r
                .account_spend_code(name, &hash_recovery(code))
                .await
                .unwrap_or(false),
        };
        if ok {
            Ok(())
        } else {
            self.failed_on(r, name, now).await;
            Err(LoginFailed)
        }
    }

    /// Re-authentication on Redis (see [`Accounts::reauthenticate`]).
    pub async fn reauthenticate_on(
        &self,
        r: &RedisStore,
        name: &str,
        password: &str,
        code: &str,
        now: UnixMillis,
    ) -> Result<(), LoginFailed> {
        match self.check_password_on(r, name, password, now).await? {
            PasswordOk::Done => Ok(()),
            PasswordOk::NeedTotp => self.check_second_factor_on(r, name, code, now).await,
        }
    }

    /// Starts (or restarts) TOTP enrolment on Redis.
    pub async fn begin_enrolment_on(
        &self,
        r: &RedisStore,
        name: &str,
    ) -> anyhow::Result<Enrolment> {
        use base64::Engine as _;
        let secret: [u8; 20] = crate::secrets::random_bytes()?;
        let sealed = self.master.seal(&format!("totp:{name}"), &secret)?;
        let change = AccountChange {
            set: vec![(
                "totp_pending",
                base64::engine::general_purpose::STANDARD.encode(sealed),
            )],
            ..AccountChange::default()
        };
        anyhow::ensure!(r.update_account(name, change).await?, "no account {name}");
        enrolment(secret.to_vec(), name)
    }

    /// The enrolment in progress on Redis.
    pub async fn pending_enrolment_on(
        &self,
        r: &RedisStore,
        name: &str,
    ) -> anyhow::Result<Option<Enrolment>> {
        match r.account(name).await?.and_then(|a| a.totp_pending) {
            Some(s) => Ok(Some(enrolment(
                self.master.open(&format!("totp:{name}"), &s)?,
                name,
            )?)),
            None => Ok(None),
        }
    }

    /// Confirms enrolment on Redis (see [`Accounts::confirm_enrolment`]).
    pub async fn confirm_enrolment_on(
        &self,
        r: &RedisStore,
        name: &str,
        code: &str,
        now: UnixMillis,
    ) -> anyhow::Result<Option<Vec<String>>> {
        let Some(pending) = r.account(name).await?.and_then(|a| a.totp_pending) else {
            return Ok(None);
        };
        let Some(step) = self.totp_step(name, Some(&pending), code, now) else {
            return Ok(None);
        };
        let codes = super::new_recovery_codes()?;
        let hashes: Vec<String> = codes.iter().map(|c| hash_recovery(c)).collect();
        if r.account_enable_totp(name, &pending, step, &hashes).await? {
            Ok(Some(codes))
        } else {
            Ok(None)
        }
    }
}

/// Creates an account on Redis.
pub async fn create(r: &RedisStore, name: &str, password: &str, actor: &str) -> anyhow::Result<()> {
    check_name(name).map_err(anyhow::Error::msg)?;
    check_new_password(password).map_err(anyhow::Error::msg)?;
    let hash = hash_password(password)?;
    anyhow::ensure!(
        r.create_account(name, &hash, crate::store::now_ms(), actor)
            .await?,
        "account {name} already exists"
    );
    Ok(())
}

/// Sets a new password on Redis; every session of the account ends on every replica and
/// the lockout is lifted.
pub async fn set_password(
    r: &RedisStore,
    name: &str,
    password: &str,
    actor: &str,
) -> anyhow::Result<()> {
    check_new_password(password).map_err(anyhow::Error::msg)?;
    let hash = hash_password(password)?;
    let change = AccountChange {
        set: vec![
            ("password_hash", hash),
            ("password_set_at", crate::store::now_ms().to_string()),
            ("failed", "0".into()),
            ("locked_until", "0".into()),
        ],
        end_sessions: true,
        event: Some((actor, "account_password", "password set")),
        ..AccountChange::default()
    };
    anyhow::ensure!(r.update_account(name, change).await?, "no account {name}");
    Ok(())
}

/// Disables (or re-enables) logins on Redis; disabling ends every session at once.
pub async fn set_disabled(
    r: &RedisStore,
    name: &str,
    disabled: bool,
    actor: &str,
    reason: &str,
) -> anyhow::Result<()> {
    let action = if disabled {
        "account_disable"
    } else {
        "account_enable"
    };
    let change = AccountChange {
        set: vec![("disabled", if disabled { "1" } else { "0" }.into())],
        end_sessions: disabled,
        event: Some((actor, action, reason)),
        ..AccountChange::default()
    };
    anyhow::ensure!(r.update_account(name, change).await?, "no account {name}");
    Ok(())
}

/// Turns TOTP off on Redis (see [`super::reset_totp`]).
pub async fn reset_totp(
    r: &RedisStore,
    name: &str,
    actor: &str,
    reason: &str,
) -> anyhow::Result<()> {
    let change = AccountChange {
        set: vec![("totp_last_step", "0".into())],
        delete: vec!["totp_sealed", "totp_pending"],
        end_sessions: true,
        drop_codes: true,
        event: Some((actor, "account_totp_reset", reason)),
    };
    anyhow::ensure!(r.update_account(name, change).await?, "no account {name}");
    Ok(())
}

/// Every account on Redis, by name.
pub async fn list(r: &RedisStore) -> anyhow::Result<Vec<AccountSummary>> {
    let mut out = Vec::new();
    for name in r.account_names().await? {
        if let Some(a) = r.account(&name).await? {
            out.push(AccountSummary {
                name,
                disabled: a.disabled,
                totp: a.totp_sealed.is_some(),
                locked_until: a.locked_until,
                password_set_at: a.password_set_at,
                created_at: a.created_at,
            });
        }
    }
    Ok(out)
}

/// One account on Redis, or `None`.
pub async fn get(r: &RedisStore, name: &str) -> anyhow::Result<Option<AccountSummary>> {
    Ok(r.account(name).await?.map(|a| AccountSummary {
        name: name.to_owned(),
        disabled: a.disabled,
        totp: a.totp_sealed.is_some(),
        locked_until: a.locked_until,
        password_set_at: a.password_set_at,
        created_at: a.created_at,
    }))
}
