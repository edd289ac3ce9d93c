//! The key operations of the web UI and the admin API, on whichever store this gateway
//! runs: the embedded SQLite store, or the Redis catalogue shared by every replica
//! ([`crate::store::redis::catalog`], [`crate::store::redis::pending`],
//! [`crate::store::redis::activity`]). The handlers call these and never ask which.
//!
//! The handlers run on blocking threads ([`tokio::task::spawn_blocking`]), so the Redis
//! calls are driven from there with the runtime's handle; each blocking thread keeps its
//! own connection while it lives.

use ipnet::IpNet;
use keyguard_policy::key::KeyStatus;
use keyguard_policy::UnixMillis;

use super::activity::{self, Filter, Row};
use super::AdminState;
use crate::store::edit::{self, Change, Cooldowns, EditError, Outcome, PendingChange, Requester};
use crate::store::{self, now_ms, KeySummary, NewKey};

/// Runs one Redis operation from a handler's blocking thread.
fn wait<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Handle::current().block_on(f)
}

/// Every key (with due pending changes applied first on the embedded store; on Redis the
/// replicas' refreshers apply them).
pub fn list(st: &AdminState) -> anyhow::Result<Vec<KeySummary>> {
    match &st.redis {
        Some(r) => wait(r.list_keys(None)),
        None => {
            let mut conn = st.store.connect()?;
            edit::apply_due(&mut conn, now_ms())?;
            store::list_keys(&conn, None)
        }
    }
}

/// One key, or `None`.
pub fn get(st: &AdminState, key_id: &str) -> anyhow::Result<Option<KeySummary>> {
    Ok(list(st)?.into_iter().find(|k| k.key_id == key_id))
}

/// The keys of `account`.
pub fn of_account(st: &AdminState, account: &str) -> anyhow::Result<Vec<KeySummary>> {
    Ok(list(st)?
        .into_iter()
        .filter(|k| k.account == account)
        .collect())
}

/// The catalogue's generation (what [`crate::keys::KeyCache::caught_up`] waits for).
pub fn generation(st: &AdminState) -> Option<i64> {
    match &st.redis {
        Some(r) => wait(r.generation()).ok(),
        None => st
            .store
            .connect()
            .ok()
            .and_then(|c| store::keys_generation(&c).ok()),
    }
}

/// Waits until this replica's key snapshot holds every write made so far (the generation
/// is read on a blocking thread: on Redis it is a call, and [`wait`] cannot run on the
/// runtime's own threads). Never fails: a snapshot that does not catch up in time is
/// logged, and the write has happened anyway.
pub async fn caught_up(st: &std::sync::Arc<AdminState>) {
    let st2 = st.clone();
    let generation = tokio::task::spawn_blocking(move || generation(&st2))
        .await
        .ok()
        .flatten();
    if let Some(g) = generation {
        if !st.keys.caught_up(g).await {
            tracing::warn!(
                generation = g,
                "key snapshot did not catch up with an admin write in time"
            );
        }
    }
}

/// Stores a new key, recording `actor` and `reason` as its creation event.
pub fn insert(st: &AdminState, key: &NewKey, actor: &str, reason: &str) -> anyhow::Result<()> {
    match &st.redis {
        Some(r) => wait(r.insert_key_by(&st.master, key, actor, reason)),
        None => {
            let mut conn = st.store.connect()?;
            store::insert_key(&mut conn, &st.master, key)?;
            // The key exists either way; a lost event is logged by the store.
            let _ = store::record_admin_event(&conn, actor, "key_create", &key.key_id, reason);
            Ok(())
        }
    }
}

/// Suspends, resumes or revokes a key.
pub fn set_status(
    st: &AdminState,
    key_id: &str,
    status: KeyStatus,
    actor: &str,
    reason: &str,
) -> anyhow::Result<()> {
    match &st.redis {
        Some(r) => wait(r.set_status(key_id, status, actor, reason)),
        None => {
            let mut conn = st.store.connect()?;
            store::set_status(&mut conn, key_id, status, actor, reason)
        }
    }
}

/// Makes a dormant key usable again.
pub fn reactivate(st: &AdminState, key_id: &str, actor: &str, reason: &str) -> anyhow::Result<()> {
    match &st.redis {
        Some(r) => wait(r.reactivate(key_id, actor, reason)),
        None => {
            let mut conn = st.store.connect()?;
            store::reactivate(&mut conn, key_id, actor, reason)
        }
    }
}

/// [`edit::widens`].
pub fn widens(st: &AdminState, key_id: &str, change: &Change) -> Result<bool, EditError> {
    match &st.redis {
        Some(r) => wait(r.edit_widens(key_id, change)),
        None => {
            let mut conn = st.store.connect()?;
            edit::widens(&mut conn, key_id, change)
        }
    }
}

/// [`edit::request`].
pub fn request(
    st: &AdminState,
    key_id: &str,
    owner: Option<&str>,
    change: &Change,
    who: Requester<'_>,
) -> Result<Outcome, EditError> {
    let cool = cooldowns(st);
    match &st.redis {
        Some(r) => wait(r.request_edit(key_id, owner, change, cool, who, now_ms())),
        None => {
            let mut conn = st.store.connect()?;
            edit::request(&mut conn, key_id, owner, change, cool, who, now_ms())
        }
    }
}

/// [`edit::set_allowlist`].
pub fn set_allowlist(
    st: &AdminState,
    key_id: &str,
    owner: Option<&str>,
    nets: &[IpNet],
    who: Requester<'_>,
) -> Result<Vec<(Change, Outcome)>, EditError> {
    let cool = cooldowns(st);
    match &st.redis {
        Some(r) => wait(r.set_allowlist(key_id, owner, nets, cool, who, now_ms())),
        None => {
            let mut conn = st.store.connect()?;
            edit::set_allowlist(&mut conn, key_id, owner, nets, cool, who, now_ms())
        }
    }
}

/// [`edit::list_pending`] (due changes applied first on the embedded store).
pub fn pending(
    st: &AdminState,
    key_id: Option<&str>,
    account: Option<&str>,
) -> anyhow::Result<Vec<PendingChange>> {
    match &st.redis {
        Some(r) => wait(r.list_pending(key_id, account)),
        None => {
            let mut conn = st.store.connect()?;
            edit::apply_due(&mut conn, now_ms())?;
            edit::list_pending(&conn, key_id, account)
        }
    }
}

/// [`edit::cancel`].
pub fn cancel(
    st: &AdminState,
    id: i64,
    owner: Option<&str>,
    actor: &str,
    reason: &str,
) -> Result<PendingChange, EditError> {
    match &st.redis {
        Some(r) => wait(r.cancel_pending(id, owner, actor, reason)),
        None => {
            let mut conn = st.store.connect()?;
            edit::cancel(&mut conn, id, owner, actor, reason, now_ms())
        }
    }
}

fn cooldowns(st: &AdminState) -> Cooldowns {
    crate::cli::cooldowns(&st.cfg)
}

/// [`activity::query`]. On Redis each account has its own stream: without an account,
/// the key's account is read, and without either, every account's newest rows are merged.
pub fn activity_rows(st: &AdminState, f: &Filter<'_>, limit: usize) -> anyhow::Result<Vec<Row>> {
    let Some(r) = &st.redis else {
        let conn = st.store.connect()?;
        return Ok(activity::query(&conn, f, limit)?);
    };
    let accounts: Vec<String> = match (f.account, f.key_id) {
        (Some(a), _) => vec![a.to_owned()],
        (None, Some(k)) => match get(st, k)? {
            Some(key) => vec![key.account],
            None => return Ok(Vec::new()),
        },
        (None, None) => {
            let mut all: Vec<String> = list(st)?.into_iter().map(|k| k.account).collect();
            all.sort();
            all.dedup();
            all
        }
    };
    let mut rows = Vec::new();
    for a in &accounts {
        rows.extend(wait(r.activity_query(a, f, limit))?);
    }
    rows.sort_by_key(|r| std::cmp::Reverse(r.id));
    rows.truncate(limit);
    Ok(rows)
}

/// [`activity::foreign_attempts`].
pub fn foreign_attempts(
    st: &AdminState,
    key_id: Option<&str>,
    account: &str,
    since: UnixMillis,
) -> anyhow::Result<Vec<(String, String, u64, UnixMillis)>> {
    match &st.redis {
        Some(r) => wait(r.activity_foreign_attempts(key_id, account, since)),
        None => {
            let conn = st.store.connect()?;
            Ok(activity::foreign_attempts(&conn, key_id, account, since)?)
        }
    }
}

/// [`activity::allowed_ips`] of `key_id`, a key of `account`.
pub fn allowed_ips(
    st: &AdminState,
    account: &str,
    key_id: &str,
    since: UnixMillis,
) -> anyhow::Result<Vec<String>> {
    match &st.redis {
        Some(r) => wait(r.activity_allowed_ips(account, key_id, since)),
        None => {
            let conn = st.store.connect()?;
            Ok(activity::allowed_ips(&conn, key_id, since)?)
        }
    }
}

/// The withdrawal freezes in force.
pub fn freezes(st: &AdminState) -> anyhow::Result<keyguard_policy::authorize::Freezes> {
    match &st.redis {
        Some(r) => wait(r.freezes()),
        None => store::load_freezes(&st.store.connect()?),
    }
}

/// Freezes or unfreezes withdrawals; whether anything changed.
pub fn set_freeze(
    st: &AdminState,
    scope: &store::FreezeScope,
    frozen: bool,
    actor: &str,
    reason: &str,
) -> anyhow::Result<bool> {
    match &st.redis {
        Some(r) => wait(r.set_freeze(scope, frozen, actor, reason)),
        None => store::set_freeze(&mut st.store.connect()?, scope, frozen, actor, reason),
    }
}
