//! Editing keys after creation: allowlist entries, withdrawal addresses and scopes.
//!
//! Widening is slow, narrowing is instant (DESIGN.md §6). A change that lets a key do more
//! — a new scope, a new network, a new withdrawal address, or removing the last allowlist
//! entry (which opens the key to every network) — becomes a *pending change* that applies
//! after its cool-down, unless an operator applies it at once (`--now`, audited). Removing
//! and narrowing apply in the same transaction. Adding the first entry to an empty
//! allowlist is narrowing (from "any network" to one) and applies at once.
//!
//! Pending changes are applied by the running gateway ([`apply_due`], called from the key
//! refresher), re-checked against the key as it is then: a change that has become
//! invalid meanwhile (the key was revoked, its allowlist emptied under a withdraw scope)
//! is rejected, not forced through.
//!
//! Every request, application, cancellation and rejection is an admin event, so it
//! reaches the audit log and the alert webhook.

use ipnet::IpNet;
use keyguard_policy::{Scope, Scopes, UnixMillis};
use rusqlite::{params, Connection, OptionalExtension, Transaction};

use super::{bump_generation, parse_nets, record_admin_event};

/// One edit of a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Allow a network.
    AddIp(IpNet),
    /// Stop allowing a network.
    RemoveIp(IpNet),
    /// Grant a scope.
    AddScope(Scope),
    /// Take a scope away.
    RemoveScope(Scope),
    /// Allow a withdrawal destination (asset lower-case).
    AddAddress {
        /// Asset.
        asset: String,
        /// Address, compared exactly.
        address: String,
    },
    /// Remove a withdrawal destination.
    RemoveAddress {
        /// Asset.
        asset: String,
        /// Address.
        address: String,
    },
}

impl Change {
    /// An address change from `ASSET:ADDRESS` (the CLI's form).
    pub fn parse_address(spec: &str, add: bool) -> Result<Change, EditError> {
        let (asset, address) = spec
            .split_once(':')
            .map(|(a, b)| (a.trim(), b.trim()))
            .filter(|(a, b)| !a.is_empty() && !b.is_empty())
            .ok_or_else(|| EditError::Invalid(format!("{spec:?}: expected ASSET:ADDRESS")))?;
        Change::address(asset, address, add)
    }

    /// An address change, validated: printable ASCII without spaces, at most 200 bytes.
    pub fn address(asset: &str, address: &str, add: bool) -> Result<Change, EditError> {
        let (asset, address) = (asset.trim().to_ascii_lowercase(), address.trim().to_owned());
        let ok_asset = !asset.is_empty()
            && asset.len() <= 20
            && asset
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !ok_asset {
            return Err(EditError::Invalid(format!(
                "asset {asset:?}: expected letters and digits, like btc"
            )));
        }
        let ok_address = !address.is_empty()
            && address.len() <= 200
            && address.bytes().all(|b| b.is_ascii_graphic());
        if !ok_address {
            return Err(EditError::Invalid(
                "the address must be 1 to 200 printable characters without spaces".into(),
            ));
        }
        // `key=NAME[,address=ADDRESS]` names an exchange-side withdrawal key (Kraken):
        // refuse one the policy could not read, rather than store an entry that allows
        // nothing.
        if add {
            keyguard_policy::key::Destination::parse(&address).map_err(EditError::Invalid)?;
        }
        Ok(if add {
            Change::AddAddress { asset, address }
        } else {
            Change::RemoveAddress { asset, address }
        })
    }

    pub(crate) fn stored(&self) -> (&'static str, String) {
        match self {
            Change::AddIp(n) => ("add_ip", n.to_string()),
            Change::RemoveIp(n) => ("remove_ip", n.to_string()),
            Change::AddScope(s) => ("add_scope", s.as_str().to_owned()),
            Change::RemoveScope(s) => ("remove_scope", s.as_str().to_owned()),
            Change::AddAddress { asset, address } => ("add_address", format!("{asset}:{address}")),
            Change::RemoveAddress { asset, address } => {
                ("remove_address", format!("{asset}:{address}"))
            }
        }
    }

    /// The change a stored `kind` and `value` name (`None` when unreadable).
    pub(crate) fn from_stored(kind: &str, value: &str) -> Option<Change> {
        Some(match kind {
            "add_ip" => Change::AddIp(value.parse().ok()?),
            "remove_ip" => Change::RemoveIp(value.parse().ok()?),
            "add_scope" => Change::AddScope(value.parse().ok()?),
            "remove_scope" => Change::RemoveScope(value.parse().ok()?),
            "add_address" | "remove_address" => {
                let (asset, address) = value.split_once(':')?;
                let (asset, address) = (asset.to_owned(), address.to_owned());
                if kind == "add_address" {
                    Change::AddAddress { asset, address }
                } else {
                    Change::RemoveAddress { asset, address }
                }
            }
            _ => return None,
        })
    }

    /// In plain words, for the audit log, the CLI and the UI.
    pub fn describe(&self) -> String {
        match self {
            Change::AddIp(n) => format!("allow network {n}"),
            Change::RemoveIp(n) => format!("remove network {n}"),
            Change::AddScope(s) => format!("grant scope {}", s.as_str()),
            Change::RemoveScope(s) => format!("remove scope {}", s.as_str()),
            Change::AddAddress { asset, address } => {
                format!(
                    "allow {} withdrawals to {address}",
                    asset.to_ascii_uppercase()
                )
            }
            Change::RemoveAddress { asset, address } => {
                format!("remove {} address {address}", asset.to_ascii_uppercase())
            }
        }
    }

    /// Stable machine name of the kind of change (`add_ip`, `remove_scope`, …).
    pub fn kind(&self) -> &'static str {
        self.stored().0
    }

    /// The value (`10.0.0.0/8`, `trade`, `btc:bc1q…`).
    pub fn value(&self) -> String {
        self.stored().1
    }
}

/// How long each kind of widening waits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cooldowns {
    /// New scopes and networks (`[admin] widen_cooldown`).
    pub widen_ms: u64,
    /// New withdrawal addresses (`[withdraw] address_cooldown_secs`).
    pub address_ms: u64,
}

impl Cooldowns {
    /// How long `change` waits when it widens.
    pub fn wait(&self, change: &Change) -> u64 {
        match change {
            Change::AddAddress { .. } => self.address_ms,
            _ => self.widen_ms,
        }
    }
}

/// Who asks for a change and why (recorded in the audit log).
#[derive(Debug, Clone, Copy)]
pub struct Requester<'a> {
    /// Operator or account name (`web:alice`, `$USER`).
    pub actor: &'a str,
    /// Why.
    pub reason: &'a str,
    /// Skip the cool-down of a widening change (operators only; audited as such).
    pub now: bool,
}

/// What a requested change did.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Outcome {
    /// Applied in this transaction.
    Applied,
    /// Waits until `effective_at` (pending change `id`).
    Pending {
        /// Pending change id.
        id: i64,
        /// When it applies (ms).
        effective_at: UnixMillis,
    },
    /// Nothing to do: the key already is that way.
    Unchanged,
}

/// Why a change was refused. Each has a stable code for the admin API.
#[derive(Debug, thiserror::Error)]
pub enum EditError {
    /// No such key (or not the caller's).
    #[error("no key with id {0}")]
    NoSuchKey(String),
    /// Revoked keys are final.
    #[error("key {0} is revoked; a revoked key cannot be edited")]
    Revoked(String),
    /// A withdraw key must keep an allowlist.
    #[error("a key with the withdraw scope needs at least one allowed network: a leaked withdraw key must not work from anywhere")]
    WithdrawNeedsAllowlist,
    /// Removing the last scope.
    #[error("a key needs at least one scope; suspend or revoke it instead")]
    LastScope,
    /// Addresses without the withdraw scope.
    #[error(
        "the key has no withdraw scope (granted or pending), so it takes no withdrawal addresses"
    )]
    NeedsWithdrawScope,
    /// Removing something the key does not have.
    #[error("{0}: the key has no such entry")]
    NotPresent(String),
    /// No such pending change.
    #[error("no pending change {0}")]
    NoSuchChange(i64),
    /// Bad input.
    #[error("{0}")]
    Invalid(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] anyhow::Error),
}

impl From<rusqlite::Error> for EditError {
    fn from(e: rusqlite::Error) -> Self {
        EditError::Store(e.into())
    }
}

impl EditError {
    /// The stable code (admin API error bodies).
    pub fn code(&self) -> &'static str {
        match self {
            EditError::NoSuchKey(_) => "key_not_found",
            EditError::Revoked(_) => "key_revoked",
            EditError::WithdrawNeedsAllowlist => "withdraw_needs_allowlist",
            EditError::LastScope => "last_scope",
            EditError::NeedsWithdrawScope => "needs_withdraw_scope",
            EditError::NotPresent(_) => "not_present",
            EditError::NoSuchChange(_) => "change_not_found",
            EditError::Invalid(_) => "invalid_input",
            EditError::Store(_) => "store_error",
        }
    }
}

/// A key's editable state as the rules see it, whichever store holds it (read inside the
/// transaction here, from the catalogue document on Redis).
pub(crate) struct Current {
    pub(crate) account: String,
    pub(crate) status: String,
    pub(crate) scopes: Scopes,
    pub(crate) allow: Vec<IpNet>,
}

fn current(tx: &Transaction<'_>, key_id: &str) -> Result<Current, EditError> {
    let row: Option<(String, String, String, String)> = tx
        .query_row(
            "SELECT account, status, scopes, allow_ips FROM keys WHERE key_id = ?1",
            [key_id],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )
        .optional()?;
    let (account, status, scopes, allow) =
        row.ok_or_else(|| EditError::NoSuchKey(key_id.to_owned()))?;
    Ok(Current {
        account,
        status,
        scopes: scopes
            .parse()
            .map_err(|_| anyhow::anyhow!("key {key_id}: bad scopes {scopes:?}"))?,
        allow: parse_nets(key_id, "allow_ips", &allow)?,
    })
}

fn covered(allow: &[IpNet], net: &IpNet) -> bool {
    allow.iter().any(|a| a.contains(net))
}

fn has_address(
    tx: &Transaction<'_>,
    key_id: &str,
    asset: &str,
    address: &str,
) -> rusqlite::Result<bool> {
    tx.query_row(
        "SELECT 1 FROM withdraw_addresses WHERE key_id = ?1 AND asset = ?2 AND address = ?3",
        params![key_id, asset, address],
        |_| Ok(()),
    )
    .optional()
    .map(|r| r.is_some())
}

fn pending_id(
    tx: &Transaction<'_>,
    key_id: &str,
    change: &Change,
) -> rusqlite::Result<Option<(i64, i64)>> {
    let (kind, value) = change.stored();
    tx.query_row(
        "SELECT id, effective_at FROM pending_changes
         WHERE key_id = ?1 AND kind = ?2 AND value = ?3 AND state = 'pending'",
        params![key_id, kind, value],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )
    .optional()
}

/// Whether `change` widens the key as it is now. `Err` for changes that are refused
/// whatever the timing; `Ok(None)` for changes that change nothing.
fn classify(
    tx: &Transaction<'_>,
    key_id: &str,
    cur: &Current,
    change: &Change,
) -> Result<Option<bool>, EditError> {
    classify_with(
        cur,
        change,
        |asset, address| Ok(has_address(tx, key_id, asset, address)?),
        |c| Ok(pending_id(tx, key_id, c)?.is_some()),
    )
}

/// The rules of [`classify`], free of the store: `has_address` says whether the key
/// holds a withdrawal address, `pending` whether a change waits on it. The Redis store
/// ([`super::redis::pending`]) applies the same rules to its documents.
pub(crate) fn classify_with(
    cur: &Current,
    change: &Change,
    has_address: impl Fn(&str, &str) -> Result<bool, EditError>,
    pending: impl Fn(&Change) -> Result<bool, EditError>,
) -> Result<Option<bool>, EditError> {
    Ok(Some(match change {
        Change::AddIp(net) => {
            if cur.allow.contains(net) {
                return Ok(None);
            }
            // From "any network" to one, or inside a network already allowed: narrower or equal.
            !(cur.allow.is_empty() || covered(&cur.allow, net))
        }
        Change::RemoveIp(net) => {
            if !cur.allow.contains(net) {
                return Err(EditError::NotPresent(net.to_string()));
            }
            let last = cur.allow.len() == 1;
            if last && cur.scopes.contains(Scope::Withdraw) {
                return Err(EditError::WithdrawNeedsAllowlist);
            }
            // The last entry gone means every network: the widest change there is.
            last
        }
        Change::AddScope(scope) => {
            if cur.scopes.contains(*scope) {
                return Ok(None);
            }
            if *scope == Scope::Withdraw && cur.allow.is_empty() {
                return Err(EditError::WithdrawNeedsAllowlist);
            }
            true
        }
        Change::RemoveScope(scope) => {
            if !cur.scopes.contains(*scope) {
                return Err(EditError::NotPresent(scope.as_str().to_owned()));
            }
            if cur.scopes.iter().all(|s| s == *scope) {
                return Err(EditError::LastScope);
            }
            false
        }
        Change::AddAddress { asset, address } => {
            if has_address(asset, address)? {
                return Ok(None);
            }
            let withdraw_pending = pending(&Change::AddScope(Scope::Withdraw))?;
            if !cur.scopes.contains(Scope::Withdraw) && !withdraw_pending {
                return Err(EditError::NeedsWithdrawScope);
            }
            true
        }
        Change::RemoveAddress { asset, address } => {
            let pending = pending(&Change::AddAddress {
                asset: asset.clone(),
                address: address.clone(),
            })?;
            if !has_address(asset, address)? && !pending {
                return Err(EditError::NotPresent(format!("{asset}:{address}")));
            }
            false
        }
    }))
}

fn write_allow(
    tx: &Transaction<'_>,
    key_id: &str,
    allow: &[IpNet],
    now: UnixMillis,
) -> rusqlite::Result<()> {
    let list: Vec<String> = allow.iter().map(|n| n.to_string()).collect();
    tx.execute(
        "UPDATE keys SET allow_ips = ?2, updated_at = ?3 WHERE key_id = ?1",
        params![
            key_id,
            serde_json::to_string(&list).unwrap_or_else(|_| "[]".into()),
            now as i64
        ],
    )?;
    Ok(())
}

/// Applies `change` to the key's row. `requested_at` dates a new address: the
/// authorization step refuses it until `requested_at + address cool-down`, which for a
/// pending address is exactly when it is applied; `--now` passes a time one cool-down ago.
fn apply(
    tx: &Transaction<'_>,
    key_id: &str,
    cur: &Current,
    change: &Change,
    address_added_at: UnixMillis,
    now: UnixMillis,
) -> rusqlite::Result<()> {
    match change {
        Change::AddIp(net) => {
            let mut allow = cur.allow.clone();
            if !allow.contains(net) {
                allow.push(*net);
            }
            write_allow(tx, key_id, &allow, now)?;
        }
        Change::RemoveIp(net) => {
            let allow: Vec<IpNet> = cur.allow.iter().filter(|n| *n != net).copied().collect();
            write_allow(tx, key_id, &allow, now)?;
        }
        Change::AddScope(s) | Change::RemoveScope(s) => {
            let scopes = if matches!(change, Change::AddScope(_)) {
                cur.scopes.with(*s)
            } else {
                cur.scopes.iter().filter(|x| x != s).collect()
            };
            tx.execute(
                "UPDATE keys SET scopes = ?2, updated_at = ?3 WHERE key_id = ?1",
                params![key_id, scopes.to_string(), now as i64],
            )?;
        }
        Change::AddAddress { asset, address } => {
            tx.execute(
                "INSERT OR IGNORE INTO withdraw_addresses (key_id, asset, address, added_at)
                 VALUES (?1, ?2, ?3, ?4)",
                params![key_id, asset, address, address_added_at as i64],
            )?;
            tx.execute(
                "UPDATE keys SET updated_at = ?2 WHERE key_id = ?1",
                params![key_id, now as i64],
            )?;
        }
        Change::RemoveAddress { asset, address } => {
            tx.execute(
                "DELETE FROM withdraw_addresses WHERE key_id = ?1 AND asset = ?2 AND address = ?3",
                params![key_id, asset, address],
            )?;
            tx.execute(
                "UPDATE keys SET updated_at = ?2 WHERE key_id = ?1",
                params![key_id, now as i64],
            )?;
        }
    }
    Ok(())
}

/// A narrowing change also withdraws pending widenings it contradicts: removing a scope
/// while its grant waits means the owner does not want it.
fn cancel_contradicted(
    tx: &Transaction<'_>,
    key_id: &str,
    change: &Change,
    actor: &str,
    now: UnixMillis,
) -> Result<(), EditError> {
    let Some(opposite) = contradicted(change) else {
        return Ok(());
    };
    if let Some((id, _)) = pending_id(tx, key_id, &opposite)? {
        decide(
            tx,
            id,
            "cancelled",
            Some("contradicted by a later removal"),
            now,
        )?;
        record_admin_event(
            tx,
            actor,
            "widen_cancelled",
            key_id,
            &format!(
                "#{id} {}: contradicted by a later removal",
                opposite.describe()
            ),
        )?;
    }
    Ok(())
}

/// The widening a narrowing change contradicts (removing what a pending change would
/// add), whose pending request it withdraws.
pub(crate) fn contradicted(change: &Change) -> Option<Change> {
    Some(match change {
        Change::RemoveIp(n) => Change::AddIp(*n),
        Change::RemoveScope(s) => Change::AddScope(*s),
        Change::RemoveAddress { asset, address } => Change::AddAddress {
            asset: asset.clone(),
            address: address.clone(),
        },
        _ => return None,
    })
}

fn decide(
    tx: &Transaction<'_>,
    id: i64,
    state: &str,
    note: Option<&str>,
    now: UnixMillis,
) -> rusqlite::Result<()> {
    tx.execute(
        "UPDATE pending_changes SET state = ?2, note = ?3, decided_at = ?4 WHERE id = ?1",
        params![id, state, note, now as i64],
    )?;
    Ok(())
}

/// Requests `change` on `key_id`: applies a narrowing change at once, queues a widening
/// one for its cool-down (or applies it at once with `who.now`). `owner` restricts the
/// edit to keys of that account (the web UI and account-scoped API calls).
pub fn request(
    conn: &mut Connection,
    key_id: &str,
    owner: Option<&str>,
    change: &Change,
    cool: Cooldowns,
    who: Requester<'_>,
    now: UnixMillis,
) -> Result<Outcome, EditError> {
    let tx = conn.transaction()?;
    let cur = current(&tx, key_id)?;
    if owner.is_some_and(|o| o != cur.account) {
        return Err(EditError::NoSuchKey(key_id.to_owned()));
    }
    if cur.status == "revoked" {
        return Err(EditError::Revoked(key_id.to_owned()));
    }
    let Some(widens) = classify(&tx, key_id, &cur, change)? else {
        return Ok(Outcome::Unchanged);
    };
    let what = change.describe();
    let outcome = if !widens {
        apply(&tx, key_id, &cur, change, now, now)?;
        cancel_contradicted(&tx, key_id, change, who.actor, now)?;
        record_admin_event(
            &tx,
            who.actor,
            "narrow",
            key_id,
            &format!("{what}: {}", who.reason),
        )?;
        Outcome::Applied
    } else if let Some((id, effective_at)) = pending_id(&tx, key_id, change)? {
        // Asking twice does not restart (or shorten) the wait.
        if !who.now {
            return Ok(Outcome::Pending {
                id,
                effective_at: effective_at as u64,
            });
        }
        decide(
            &tx,
            id,
            "applied",
            Some("applied at once by an operator"),
            now,
        )?;
        let added_at = now.saturating_sub(cool.address_ms);
        apply(&tx, key_id, &cur, change, added_at, now)?;
        record_admin_event(
            &tx,
            who.actor,
            "widen_now",
            key_id,
            &format!("{what} (skipping the cool-down): {}", who.reason),
        )?;
        Outcome::Applied
    } else if who.now {
        let added_at = now.saturating_sub(cool.address_ms);
        apply(&tx, key_id, &cur, change, added_at, now)?;
        record_admin_event(
            &tx,
            who.actor,
            "widen_now",
            key_id,
            &format!("{what} (skipping the cool-down): {}", who.reason),
        )?;
        Outcome::Applied
    } else {
        let effective_at = now.saturating_add(cool.wait(change));
        let (kind, value) = change.stored();
        tx.execute(
            "INSERT INTO pending_changes (key_id, kind, value, requested_at, effective_at, actor, reason, state)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 'pending')",
            params![key_id, kind, value, now as i64, effective_at as i64, who.actor, who.reason],
        )?;
        let id = tx.last_insert_rowid();
        record_admin_event(
            &tx,
            who.actor,
            "widen_requested",
            key_id,
            &format!(
                "#{id} {what}, effective {}: {}",
                crate::audit::timestamp(
                    std::time::UNIX_EPOCH + std::time::Duration::from_millis(effective_at)
                ),
                who.reason
            ),
        )?;
        Outcome::Pending { id, effective_at }
    };
    if outcome == Outcome::Applied {
        bump_generation(&tx)?;
    }
    tx.commit()?;
    Ok(outcome)
}

/// Whether `change` would widen the key as it is now (`Ok(false)` also for changes that
/// change nothing or would be refused). The web UI asks for the password again only then.
pub fn widens(conn: &mut Connection, key_id: &str, change: &Change) -> Result<bool, EditError> {
    let tx = conn.transaction()?;
    let cur = current(&tx, key_id)?;
    Ok(matches!(
        classify(&tx, key_id, &cur, change),
        Ok(Some(true))
    ))
}

/// Replaces the allowlist with `nets` (the "lock to the networks this key used" button):
/// one request per difference, additions first so that the list never passes through
/// empty (which would mean "any network").
pub fn set_allowlist(
    conn: &mut Connection,
    key_id: &str,
    owner: Option<&str>,
    nets: &[IpNet],
    cool: Cooldowns,
    who: Requester<'_>,
    now: UnixMillis,
) -> Result<Vec<(Change, Outcome)>, EditError> {
    let unique = unique_nets(nets)?;
    let nets = &unique[..];
    let old: Vec<IpNet> = {
        let tx = conn.transaction()?;
        let cur = current(&tx, key_id)?;
        if owner.is_some_and(|o| o != cur.account) {
            return Err(EditError::NoSuchKey(key_id.to_owned()));
        }
        if cur.status == "revoked" {
            return Err(EditError::Revoked(key_id.to_owned()));
        }
        if cur.allow.is_empty() {
            // From any network to a list of them: the whole list narrows at once.
            write_allow(&tx, key_id, nets, now)?;
            let list: Vec<String> = nets.iter().map(|n| n.to_string()).collect();
            record_admin_event(
                &tx,
                who.actor,
                "narrow",
                key_id,
                &format!("restrict to {}: {}", list.join(", "), who.reason),
            )?;
            bump_generation(&tx)?;
            tx.commit()?;
            return Ok(nets
                .iter()
                .map(|n| (Change::AddIp(*n), Outcome::Applied))
                .collect());
        }
        cur.allow
    };
    let mut out = Vec::new();
    for c in allowlist_changes(&old, nets) {
        match request(conn, key_id, owner, &c, cool, who, now) {
            Ok(o) => out.push((c, o)),
            // The new entries wait; the old last one stays until they apply, then goes.
            Err(EditError::WithdrawNeedsAllowlist) if matches!(c, Change::RemoveIp(_)) => {
                let o = queue_after_adds(conn, key_id, &c, cool, who, now)?;
                out.push((c, o));
            }
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

/// The networks of a "lock the allowlist to these" request, each once; at least one (an
/// empty list would mean "any network").
pub fn unique_nets(nets: &[IpNet]) -> Result<Vec<IpNet>, EditError> {
    let mut unique: Vec<IpNet> = Vec::with_capacity(nets.len());
    for n in nets {
        if !unique.contains(n) {
            unique.push(*n);
        }
    }
    if unique.is_empty() {
        return Err(EditError::Invalid("name at least one network".into()));
    }
    Ok(unique)
}

/// The requests that turn allowlist `old` into `new`, additions first so that the list
/// never passes through empty.
pub fn allowlist_changes(old: &[IpNet], new: &[IpNet]) -> Vec<Change> {
    new.iter()
        .filter(|n| !old.contains(n))
        .map(|n| Change::AddIp(*n))
        .chain(
            old.iter()
                .filter(|n| !new.contains(n))
                .map(|n| Change::RemoveIp(*n)),
        )
        .collect()
}

/// Queues the removal of a last allowlist entry of a withdraw key to apply together with
/// the additions queued before it (apply order is id order).
fn queue_after_adds(
    conn: &mut Connection,
    key_id: &str,
    change: &Change,
    cool: Cooldowns,
    who: Requester<'_>,
    now: UnixMillis,
) -> Result<Outcome, EditError> {
    let tx = conn.transaction()?;
    let effective_at = now.saturating_add(cool.widen_ms);
    let (kind, value) = change.stored();
    tx.execute(
        "INSERT INTO pending_changes (key_id, kind, value, requested_at, effective_at, actor, reason, state)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 'pending')",
        params![key_id, kind, value, now as i64, effective_at as i64, who.actor, who.reason],
    )?;
    let id = tx.last_insert_rowid();
    record_admin_event(
        &tx,
        who.actor,
        "widen_requested",
        key_id,
        &format!(
            "#{id} {} once the new networks apply: {}",
            change.describe(),
            who.reason
        ),
    )?;
    tx.commit()?;
    Ok(Outcome::Pending { id, effective_at })
}

/// A pending (or decided) change.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PendingChange {
    /// Id (to cancel it).
    pub id: i64,
    /// The key.
    pub key_id: String,
    /// The key's account.
    pub account: String,
    /// `add_ip`, `remove_ip`, `add_scope`, `add_address`.
    pub kind: String,
    /// The value (`10.0.0.0/8`, `trade`, `btc:bc1q…`).
    pub value: String,
    /// In plain words.
    pub description: String,
    /// When it was asked for (ms).
    pub requested_at: UnixMillis,
    /// When it applies (ms).
    pub effective_at: UnixMillis,
    /// Who asked.
    pub actor: String,
    /// Why.
    pub reason: String,
}

/// Pending changes, soonest first, of one key and/or one account.
pub fn list_pending(
    conn: &Connection,
    key_id: Option<&str>,
    account: Option<&str>,
) -> anyhow::Result<Vec<PendingChange>> {
    let mut stmt = conn.prepare(
        "SELECT p.id, p.key_id, k.account, p.kind, p.value, p.requested_at, p.effective_at, p.actor, p.reason
         FROM pending_changes p JOIN keys k ON k.key_id = p.key_id
         WHERE p.state = 'pending' AND (?1 IS NULL OR p.key_id = ?1) AND (?2 IS NULL OR k.account = ?2)
         ORDER BY p.effective_at, p.id",
    )?;
    let rows = stmt.query_map(params![key_id, account], |r| {
        Ok((
            r.get::<_, i64>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, String>(3)?,
            r.get::<_, String>(4)?,
            r.get::<_, i64>(5)?,
            r.get::<_, i64>(6)?,
            r.get::<_, String>(7)?,
            r.get::<_, String>(8)?,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (id, key_id, account, kind, value, requested_at, effective_at, actor, reason) = row?;
        let description = Change::from_stored(&kind, &value)
            .map(|c| c.describe())
            .unwrap_or_else(|| format!("{kind} {value}"));
        out.push(PendingChange {
            id,
            key_id,
            account,
            kind,
            value,
            description,
            requested_at: requested_at as u64,
            effective_at: effective_at as u64,
            actor,
            reason,
        });
    }
    Ok(out)
}

/// Cancels pending change `id` (of `owner`'s keys, when given). Cancelling is narrowing:
/// it applies at once.
pub fn cancel(
    conn: &mut Connection,
    id: i64,
    owner: Option<&str>,
    actor: &str,
    reason: &str,
    now: UnixMillis,
) -> Result<PendingChange, EditError> {
    let tx = conn.transaction()?;
    let found = list_pending(&tx, None, owner)?
        .into_iter()
        .find(|p| p.id == id)
        .ok_or(EditError::NoSuchChange(id))?;
    decide(&tx, id, "cancelled", Some(reason), now)?;
    record_admin_event(
        &tx,
        actor,
        "widen_cancelled",
        &found.key_id,
        &format!("#{id} {}: {reason}", found.description),
    )?;
    tx.commit()?;
    Ok(found)
}

/// Applies every pending change due at `now`, oldest first, each re-checked against the
/// key as it is; returns how many applied. The running gateway calls this on every key
/// refresh, so a change applies within a refresh interval of its time.
pub fn apply_due(conn: &mut Connection, now: UnixMillis) -> anyhow::Result<usize> {
    // The common case, nothing due, is one indexed lookup without a write transaction.
    let due: Option<i64> = conn
        .query_row(
            "SELECT id FROM pending_changes WHERE state = 'pending' AND effective_at <= ?1 LIMIT 1",
            [now as i64],
            |r| r.get(0),
        )
        .optional()?;
    if due.is_none() {
        return Ok(0);
    }
    let tx = conn.transaction()?;
    let rows: Vec<(i64, String, String, String, i64, String)> = {
        let mut stmt = tx.prepare(
            "SELECT id, key_id, kind, value, requested_at, actor FROM pending_changes
             WHERE state = 'pending' AND effective_at <= ?1 ORDER BY id LIMIT 1000",
        )?;
        let rows = stmt.query_map([now as i64], |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
            ))
        })?;
        rows.collect::<Result<_, _>>()?
    };
    let mut applied = 0;
    for (id, key_id, kind, value, requested_at, actor) in rows {
        let Some(change) = Change::from_stored(&kind, &value) else {
            decide(&tx, id, "rejected", Some("unreadable change"), now)?;
            continue;
        };
        let verdict = current(&tx, &key_id).and_then(|cur| {
            if cur.status == "revoked" {
                return Err(EditError::Revoked(key_id.clone()));
            }
            classify(&tx, &key_id, &cur, &change).map(|w| (cur, w))
        });
        match verdict {
            Ok((cur, Some(_))) => {
                apply(&tx, &key_id, &cur, &change, requested_at as u64, now)?;
                decide(&tx, id, "applied", None, now)?;
                record_admin_event(
                    &tx,
                    "keyguard",
                    "widen_applied",
                    &key_id,
                    &format!("#{id} {} (asked by {actor})", change.describe()),
                )?;
                applied += 1;
            }
            Ok((_, None)) => decide(&tx, id, "applied", Some("already in effect"), now)?,
            Err(EditError::Store(e)) => return Err(e),
            Err(e) => {
                let note = e.to_string();
                decide(&tx, id, "rejected", Some(&note), now)?;
                record_admin_event(
                    &tx,
                    "keyguard",
                    "widen_rejected",
                    &key_id,
                    &format!("#{id} {}: {note}", change.describe()),
                )?;
            }
        }
    }
    if applied > 0 {
        bump_generation(&tx)?;
    }
    tx.commit()?;
    Ok(applied)
}

#[cfg(test)]
#[path = "edit_tests.rs"]
mod tests;
