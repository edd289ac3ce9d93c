//! Who is logged in, whichever store holds it: one method per question the handlers ask
//! (the session of a request, a login step, an enrolment, an SSO token, a bearer token),
//! answered from the embedded SQLite store or, with `[store] kind = "redis"`, from Redis,
//! where every replica's admin listener sees the same accounts, sessions and tokens.
//!
//! The handlers run their store work on blocking threads (SQLite and Argon2 block), so
//! these methods are synchronous; on Redis they drive the async calls from that blocking
//! thread on the listener's runtime. Call them only from such a thread (the handlers'
//! `blocking`), never from an async task: that would block the runtime.

use std::future::Future;

use axum::http::{HeaderMap, HeaderValue};
use keyguard_policy::UnixMillis;

use super::sessions::{Session, Stage};
use super::tokens::{self, TokenScopes};
use super::AdminState;
use crate::accounts::{self, AccountSummary, Enrolment, LoginFailed, PasswordOk};

/// Runs `f` to completion from a blocking thread of the runtime.
fn wait<F: Future>(f: F) -> F::Output {
    tokio::runtime::Handle::current().block_on(f)
}

impl AdminState {
    /// The session of `stage` the request's cookie names, if it is live. A store that
    /// does not answer is an error (the caller refuses), not an absent session.
    pub fn session(
        &self,
        headers: &HeaderMap,
        stage: Stage,
        now: UnixMillis,
    ) -> anyhow::Result<Option<Session>> {
        match &self.redis {
            Some(r) => wait(self.sessions.check_on(r, headers, stage, now)),
            None => {
                let conn = self.store.connect()?;
                Ok(self.sessions.check(&conn, headers, stage, now))
            }
        }
    }

    /// Starts a session at `stage` (ending `replacing`); its `Set-Cookie`, or `None` when
    /// the account cannot log in (gone or disabled meanwhile).
    pub fn start_session(
        &self,
        account: &str,
        stage: Stage,
        replacing: Option<&str>,
        client_ip: &str,
        now: UnixMillis,
    ) -> anyhow::Result<Option<HeaderValue>> {
        match &self.redis {
            Some(r) => wait(
                self.sessions
                    .start_on(r, account, stage, replacing, client_ip, now),
            ),
            None => {
                let mut conn = self.store.connect()?;
                self.sessions
                    .start(&mut conn, account, stage, replacing, client_ip, now)
                    .map(Some)
            }
        }
    }

    /// Ends one session (logout).
    pub fn end_session(&self, s: &Session) -> anyhow::Result<()> {
        match &self.redis {
            Some(r) => wait(self.sessions.end_on(r, s)),
            None => Ok(self.sessions.end(&self.store.connect()?, &s.id)?),
        }
    }

    /// Login step one (see [`accounts::Accounts::check_password`]).
    pub fn check_password(
        &self,
        name: &str,
        password: &str,
        now: UnixMillis,
    ) -> Result<PasswordOk, LoginFailed> {
        match &self.redis {
            Some(r) => wait(self.accounts.check_password_on(r, name, password, now)),
            None => {
                let conn = self.store.connect().map_err(|_| LoginFailed)?;
                self.accounts.check_password(&conn, name, password, now)
            }
        }
    }

    /// Login step two (see [`accounts::Accounts::check_second_factor`]).
    pub fn check_second_factor(
        &self,
        name: &str,
        code: &str,
        now: UnixMillis,
    ) -> Result<(), LoginFailed> {
        match &self.redis {
            Some(r) => wait(self.accounts.check_second_factor_on(r, name, code, now)),
            None => {
                let conn = self.store.connect().map_err(|_| LoginFailed)?;
                self.accounts.check_second_factor(&conn, name, code, now)
            }
        }
    }

    /// Re-authentication for a widening change (see
    /// [`accounts::Accounts::reauthenticate`]).
    pub fn reauthenticate(
        &self,
        name: &str,
        password: &str,
        code: &str,
        now: UnixMillis,
    ) -> Result<(), LoginFailed> {
        match &self.redis {
            Some(r) => wait(
                self.accounts
                    .reauthenticate_on(r, name, password, code, now),
            ),
            None => {
                let conn = self.store.connect().map_err(|_| LoginFailed)?;
                self.accounts
                    .reauthenticate(&conn, name, password, code, now)
            }
        }
    }

    /// One account, or `None`.
    pub fn account(&self, name: &str) -> anyhow::Result<Option<AccountSummary>> {
        match &self.redis {
            Some(r) => wait(accounts::on_redis::get(r, name)),
            None => Ok(accounts::list(&self.store.connect()?)?
                .into_iter()
                .find(|a| a.name == name)),
        }
    }

    /// Every account.
    pub fn accounts(&self) -> anyhow::Result<Vec<AccountSummary>> {
        match &self.redis {
            Some(r) => wait(accounts::on_redis::list(r)),
            None => accounts::list(&self.store.connect()?),
        }
    }

    /// The TOTP enrolment in progress, or a new one.
    pub fn enrolment(&self, name: &str) -> anyhow::Result<Enrolment> {
        match &self.redis {
            Some(r) => wait(async {
                match self.accounts.pending_enrolment_on(r, name).await? {
                    Some(e) => Ok(e),
                    None => self.accounts.begin_enrolment_on(r, name).await,
                }
            }),
            None => {
                let conn = self.store.connect()?;
                match self.accounts.pending_enrolment(&conn, name)? {
                    Some(e) => Ok(e),
                    None => self.accounts.begin_enrolment(&conn, name),
                }
            }
        }
    }

    /// The TOTP enrolment in progress.
    pub fn pending_enrolment(&self, name: &str) -> anyhow::Result<Option<Enrolment>> {
        match &self.redis {
            Some(r) => wait(self.accounts.pending_enrolment_on(r, name)),
            None => self
                .accounts
                .pending_enrolment(&self.store.connect()?, name),
        }
    }

    /// Confirms the enrolment with a code: the recovery codes, or `None` if the code is
    /// wrong.
    pub fn confirm_enrolment(
        &self,
        name: &str,
        code: &str,
        now: UnixMillis,
    ) -> anyhow::Result<Option<Vec<String>>> {
        match &self.redis {
            Some(r) => wait(self.accounts.confirm_enrolment_on(r, name, code, now)),
            None => self
                .accounts
                .confirm_enrolment(&mut self.store.connect()?, name, code, now),
        }
    }

    /// The account an unused, valid SSO token names (spending it), if SSO is configured.
    pub fn sso_account(&self, token: &str, now: UnixMillis) -> anyhow::Result<Option<String>> {
        let Some(sso) = &self.sso else {
            return Ok(None);
        };
        match &self.redis {
            Some(r) => wait(sso.verify_on(r, token, now)),
            None => Ok(sso.verify(&self.store.connect()?, token, now)),
        }
    }

    /// The id and scopes of a presented admin API token (`None`: unknown, malformed or
    /// revoked).
    pub fn bearer(&self, token: &str) -> anyhow::Result<Option<(String, TokenScopes)>> {
        match &self.redis {
            Some(r) => wait(tokens::verify_on(r, token)),
            None => Ok(tokens::verify(&self.store.connect()?, token)),
        }
    }

    /// Records a login-side event (audit log, on every replica's on Redis).
    pub fn login_event(
        &self,
        actor: &str,
        action: &str,
        target: &str,
        reason: &str,
    ) -> anyhow::Result<()> {
        match &self.redis {
            Some(r) => Ok(wait(r.record_admin_event(actor, action, target, reason))?),
            None => crate::store::record_admin_event(
                &self.store.connect()?,
                actor,
                action,
                target,
                reason,
            ),
        }
    }
}
