//! Key edits on Redis: the rules of [`crate::store::edit`] (narrowing at once, widening
//! after a cool-down, re-checked when due) applied to the catalogue's documents.
//!
//! Pending changes live in the catalogue's slot (`<prefix>:{cat}:pending*`), beside the
//! documents they change, so that one script can claim a due change, apply it to the
//! key's document (compare-and-set), record the admin event and announce the change: in
//! a Redis Cluster too, exactly one replica applies each change, and a replica dying
//! half-way leaves either nothing done or everything done. Every replica's key refresher
//! runs [`RedisStore::apply_due`] once a second; the replicas that lose the claim write
//! nothing.
//!
//! # Keys and bounds
//! - `{cat}:pending` (hash, id → record): at most [`MAX_PENDING_PER_KEY`] per key in the
//!   catalogue; an entry is deleted when it is applied, cancelled or rejected, so none
//!   outlives its cool-down by more than a refresh.
//! - `{cat}:pending:due` (sorted set, id by effective time): the same ids.
//! - `{cat}:pending:k:<key id>` (sorted set of ids): the same ids, per key, for the cap;
//!   Redis drops it with its last member.
//! - `{cat}:pending:seq`: the id counter (one integer).

use ipnet::IpNet;
use keyguard_policy::key::parse_allow_ip;
use keyguard_policy::UnixMillis;
use redis::Script;
use serde::{Deserialize, Serialize};

use super::catalog::{AddrDoc, KeyDoc};
use super::{safe_name, RedisStore};
use crate::store::edit::{
    classify_with, contradicted, Change, Cooldowns, Current, EditError, Outcome, PendingChange,
    Requester,
};

/// Most changes that may wait on one key at a time: the pending records stay bounded by
/// the catalogue, whatever a script or a careless operator asks for.
pub const MAX_PENDING_PER_KEY: usize = 32;

/// How often a compare-and-set is retried when another writer changed the key first.
const RETRIES: usize = 10;

/// A pending change as stored (its id is the hash field).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct PendingDoc {
    key_id: String,
    account: String,
    kind: String,
    value: String,
    requested_at: UnixMillis,
    effective_at: UnixMillis,
    actor: String,
    reason: String,
}

impl PendingDoc {
    fn to_change(&self, id: i64) -> PendingChange {
        let description = Change::from_stored(&self.kind, &self.value)
            .map(|c| c.describe())
            .unwrap_or_else(|| format!("{} {}", self.kind, self.value));
        PendingChange {
            id,
            key_id: self.key_id.clone(),
            account: self.account.clone(),
            kind: self.kind.clone(),
            value: self.value.clone(),
            description,
            requested_at: self.requested_at,
            effective_at: self.effective_at,
            actor: self.actor.clone(),
            reason: self.reason.clone(),
        }
    }

    fn is(&self, change: &Change) -> bool {
        let (kind, value) = change.stored();
        self.kind == kind && self.value == value
    }
}

/// An event the decide script records: actor, action, reason.
type Event<'a> = (&'a str, &'a str, &'a str);

/// One call of `pend_decide.lua`.
struct Decision<'a> {
    key_id: &'a str,
    /// The document the rules were checked against, and what replaces it.
    doc: Option<(&'a str, &'a KeyDoc)>,
    /// The pending change to delete, and whether it must still be there (a claim).
    pending: Option<(i64, bool)>,
    event: Option<Event<'a>>,
    /// Recorded only when the pending change was deleted by this call.
    on_removed: Option<Event<'a>>,
}

#[derive(Debug, PartialEq, Eq)]
enum Decided {
    Ok,
    /// The key's document changed since it was read.
    Conflict,
    /// The pending change was already decided (by another replica or operator).
    Gone,
}

fn store_err(e: impl Into<anyhow::Error>) -> EditError {
    EditError::Store(e.into())
}

/// Every compare-and-set retry lost to a concurrent change of the key.
fn kept_changing(key_id: &str) -> EditError {
    store_err(anyhow::anyhow!(
        "key {key_id} kept changing under us; try again"
    ))
}

/// The editable state the rules read, from a document.
fn current(doc: &KeyDoc) -> Result<Current, EditError> {
    Ok(Current {
        account: doc.account.clone(),
        status: doc.status.clone(),
        scopes: doc.scopes.parse().map_err(|_| {
            store_err(anyhow::anyhow!(
                "key {}: bad scopes {:?}",
                doc.key_id,
                doc.scopes
            ))
        })?,
        allow: allow_nets(doc)?,
    })
}

fn allow_nets(doc: &KeyDoc) -> Result<Vec<IpNet>, EditError> {
    doc.allow_ips
        .iter()
        .map(|s| parse_allow_ip(s))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| store_err(anyhow::anyhow!("key {}: bad allow_ips: {e}", doc.key_id)))
}

fn has_address(doc: &KeyDoc, asset: &str, address: &str) -> bool {
    doc.withdraw_addresses
        .iter()
        .any(|a| a.asset == asset && a.address == address)
}

/// Whether `change` widens `doc` (`classify` of the embedded store, on a document).
fn classify(
    doc: &KeyDoc,
    cur: &Current,
    pending: &[(i64, PendingDoc)],
    change: &Change,
) -> Result<Option<bool>, EditError> {
    classify_with(
        cur,
        change,
        |asset, address| Ok(has_address(doc, asset, address)),
        |c| Ok(pending.iter().any(|(_, p)| p.is(c))),
    )
}

/// `doc` with `change` applied (the embedded store's `apply`, on a document).
fn applied(
    doc: &KeyDoc,
    change: &Change,
    address_added_at: UnixMillis,
    now: UnixMillis,
) -> Result<KeyDoc, EditError> {
    let mut doc = doc.clone();
    match change {
        Change::AddIp(net) => {
            if !allow_nets(&doc)?.contains(net) {
                doc.allow_ips.push(net.to_string());
            }
        }
        Change::RemoveIp(net) => {
            let keep: Vec<String> = allow_nets(&doc)?
                .iter()
                .filter(|n| *n != net)
                .map(|n| n.to_string())
                .collect();
            doc.allow_ips = keep;
        }
        Change::AddScope(s) | Change::RemoveScope(s) => {
            let cur = current(&doc)?;
            let scopes = if matches!(change, Change::AddScope(_)) {
                cur.scopes.with(*s)
            } else {
                cur.scopes.iter().filter(|x| x != s).collect()
            };
            doc.scopes = scopes.to_string();
        }
        Change::AddAddress { asset, address } => {
            if !has_address(&doc, asset, address) {
                doc.withdraw_addresses.push(AddrDoc {
                    asset: asset.clone(),
                    address: address.clone(),
                    added_at: address_added_at,
                });
            }
        }
        Change::RemoveAddress { asset, address } => doc
            .withdraw_addresses
            .retain(|a| !(a.asset == *asset && a.address == *address)),
    }
    doc.updated_at = now.max(doc.updated_at + 1);
    Ok(doc)
}

fn effective_text(ms: UnixMillis) -> String {
    crate::audit::timestamp(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms))
}

impl RedisStore {
    fn key_pending_set(&self, key_id: &str) -> String {
        self.cat_key(&format!("pending:k:{}", safe_name(key_id)))
    }

    /// A key's document and its raw JSON (for compare-and-set); `None` when there is none.
    async fn doc_of(&self, key_id: &str) -> Result<Option<(KeyDoc, String)>, EditError> {
        let json: Option<String> = self
            .query(redis::cmd("HGET").arg(self.cat_key("docs")).arg(key_id))
            .await
            .map_err(store_err)?;
        json.map(|json| {
            serde_json::from_str(&json)
                .map(|doc| (doc, json))
                .map_err(|e| store_err(anyhow::anyhow!("key {key_id}: bad document: {e}")))
        })
        .transpose()
    }

    /// A key's document and raw JSON, or [`EditError::NoSuchKey`].
    async fn doc_required(&self, key_id: &str) -> Result<(KeyDoc, String), EditError> {
        self.doc_of(key_id)
            .await?
            .ok_or_else(|| EditError::NoSuchKey(key_id.to_owned()))
    }

    /// Every pending change (all of them, or one key's), with its id.
    async fn pending_docs(&self, key_id: Option<&str>) -> anyhow::Result<Vec<(i64, PendingDoc)>> {
        let raw: Vec<(String, String)> = match key_id {
            None => {
                self.query(redis::cmd("HGETALL").arg(self.cat_key("pending")))
                    .await?
            }
            Some(k) => {
                let ids: Vec<String> = self
                    .query(
                        redis::cmd("ZRANGE")
                            .arg(self.key_pending_set(k))
                            .arg(0)
                            .arg(-1),
                    )
                    .await?;
                if ids.is_empty() {
                    return Ok(Vec::new());
                }
                let docs: Vec<Option<String>> = self
                    .query(redis::cmd("HMGET").arg(self.cat_key("pending")).arg(&ids))
                    .await?;
                ids.into_iter()
                    .zip(docs)
                    .filter_map(|(id, d)| Some((id, d?)))
                    .collect()
            }
        };
        let mut out = Vec::with_capacity(raw.len());
        for (id, json) in raw {
            let id: i64 = id
                .parse()
                .map_err(|_| anyhow::anyhow!("pending change {id:?}: bad id"))?;
            let doc: PendingDoc = serde_json::from_str(&json)
                .map_err(|e| anyhow::anyhow!("pending change {id}: bad record: {e}"))?;
            out.push((id, doc));
        }
        out.sort_by_key(|(id, p)| (p.effective_at, *id));
        Ok(out)
    }

    async fn decide(&self, d: Decision<'_>) -> Result<Decided, EditError> {
        let new_json = match d.doc {
            Some((_, doc)) => serde_json::to_string(doc).map_err(store_err)?,
            None => String::new(),
        };
        let (pending_id, required) = match d.pending {
            Some((id, required)) => (id.to_string(), required),
            None => (String::new(), false),
        };
        let (a1, e1, r1) = d.event.unwrap_or(("", "", ""));
        let (a2, e2, r2) = d.on_removed.unwrap_or(("", "", ""));
        let script = Script::new(include_str!("pend_decide.lua"));
        let mut inv = script.prepare_invoke();
        inv.key(self.cat_key("docs"))
            .key(self.cat_key("gen"))
            .key(self.cat_key("events"))
            .key(self.cat_key("pending"))
            .key(self.cat_key("pending:due"))
            .key(self.key_pending_set(d.key_id))
            .arg(d.key_id)
            .arg(d.doc.map(|(old, _)| old).unwrap_or(""))
            .arg(new_json)
            .arg(pending_id)
            .arg(if required { "1" } else { "0" })
            .arg(self.changes_channel())
            .arg(a1)
            .arg(e1)
            .arg(r1)
            .arg(a2)
            .arg(e2)
            .arg(r2);
        let mut c = self.conn().await.map_err(store_err)?;
        let r: String = self
            .deadline(inv.invoke_async(&mut c))
            .await
            .map_err(store_err)?;
        match r.as_str() {
            "ok" => Ok(Decided::Ok),
            "conflict" => Ok(Decided::Conflict),
            "gone" => Ok(Decided::Gone),
            other => Err(store_err(anyhow::anyhow!(
                "unexpected pending-change reply {other:?}"
            ))),
        }
    }

    /// Requests `change` on `key_id`, as [`crate::store::edit::request`] does on the
    /// embedded store: a narrowing change applies at once through the catalogue, a
    /// widening one waits in Redis for its cool-down (or applies at once with `who.now`).
    pub async fn request_edit(
        &self,
        key_id: &str,
        owner: Option<&str>,
        change: &Change,
        cool: Cooldowns,
        who: Requester<'_>,
        now: UnixMillis,
    ) -> Result<Outcome, EditError> {
        for _ in 0..RETRIES {
            let (doc, json) = self.doc_required(key_id).await?;
            if owner.is_some_and(|o| o != doc.account) {
                return Err(EditError::NoSuchKey(key_id.to_owned()));
            }
            if doc.status == "revoked" {
                return Err(EditError::Revoked(key_id.to_owned()));
            }
            let pending = self.pending_docs(Some(key_id)).await?;
            let cur = current(&doc)?;
            let Some(widens) = classify(&doc, &cur, &pending, change)? else {
                return Ok(Outcome::Unchanged);
            };
            let what = change.describe();
            let existing = pending.iter().find(|(_, p)| p.is(change));
            let decided = if !widens {
                let new = applied(&doc, change, now, now)?;
                let undone = contradicted(change).and_then(|o| {
                    pending
                        .iter()
                        .find(|(_, p)| p.is(&o))
                        .map(|(id, p)| (*id, p))
                });
                let narrow = format!("{what}: {}", who.reason);
                let cancelled = undone.map(|(id, p)| {
                    format!(
                        "#{id} {}: contradicted by a later removal",
                        p.to_change(id).description
                    )
                });
                self.decide(Decision {
                    key_id,
                    doc: Some((&json, &new)),
                    pending: undone.map(|(id, _)| (id, false)),
                    event: Some((who.actor, "narrow", &narrow)),
                    on_removed: cancelled
                        .as_deref()
                        .map(|c| (who.actor, "widen_cancelled", c)),
                })
                .await?
            } else if let (Some((id, p)), false) = (existing, who.now) {
                // Asking twice does not restart (or shorten) the wait.
                return Ok(Outcome::Pending {
                    id: *id,
                    effective_at: p.effective_at,
                });
            } else if who.now {
                let new = applied(&doc, change, now.saturating_sub(cool.address_ms), now)?;
                let text = format!("{what} (skipping the cool-down): {}", who.reason);
                self.decide(Decision {
                    key_id,
                    doc: Some((&json, &new)),
                    pending: existing.map(|(id, _)| (*id, false)),
                    event: Some((who.actor, "widen_now", &text)),
                    on_removed: None,
                })
                .await?
            } else {
                match self
                    .queue((&doc, &json), change, cool.wait(change), who, now, false)
                    .await?
                {
                    Some(outcome) => return Ok(outcome),
                    None => Decided::Conflict,
                }
            };
            if decided == Decided::Ok {
                return Ok(Outcome::Applied);
            }
        }
        Err(kept_changing(key_id))
    }

    /// Queues a widening change; `None` when the key changed since `json` was read.
    async fn queue(
        &self,
        (doc, json): (&KeyDoc, &str),
        change: &Change,
        wait: u64,
        who: Requester<'_>,
        now: UnixMillis,
        after_adds: bool,
    ) -> Result<Option<Outcome>, EditError> {
        let effective_at = now.saturating_add(wait);
        let (kind, value) = change.stored();
        let record = serde_json::to_string(&PendingDoc {
            key_id: doc.key_id.clone(),
            account: doc.account.clone(),
            kind: kind.to_owned(),
            value: value.clone(),
            requested_at: now,
            effective_at,
            actor: who.actor.to_owned(),
            reason: who.reason.to_owned(),
        })
        .map_err(store_err)?;
        let text = if after_adds {
            format!(
                "{} once the new networks apply: {}",
                change.describe(),
                who.reason
            )
        } else {
            format!(
                "{}, effective {}: {}",
                change.describe(),
                effective_text(effective_at),
                who.reason
            )
        };
        let script = Script::new(include_str!("pend_add.lua"));
        let mut inv = script.prepare_invoke();
        inv.key(self.cat_key("docs"))
            .key(self.cat_key("pending"))
            .key(self.cat_key("pending:due"))
            .key(self.key_pending_set(&doc.key_id))
            .key(self.cat_key("pending:seq"))
            .key(self.cat_key("events"))
            .arg(&doc.key_id)
            .arg(json)
            .arg(kind)
            .arg(&value)
            .arg(record)
            .arg(effective_at)
            .arg(MAX_PENDING_PER_KEY)
            .arg(who.actor)
            .arg(text);
        let mut c = self.conn().await.map_err(store_err)?;
        let r: Vec<String> = self
            .deadline(inv.invoke_async(&mut c))
            .await
            .map_err(store_err)?;
        let num = |i: usize| -> Result<i64, EditError> {
            r.get(i)
                .and_then(|s| s.parse::<f64>().ok())
                .map(|f| f as i64)
                .ok_or_else(|| store_err(anyhow::anyhow!("unexpected queue reply {r:?}")))
        };
        match r.first().map(String::as_str) {
            Some("ok") => Ok(Some(Outcome::Pending {
                id: num(1)?,
                effective_at,
            })),
            Some("exists") => Ok(Some(Outcome::Pending {
                id: num(1)?,
                effective_at: num(2)? as u64,
            })),
            Some("full") => Err(EditError::Invalid(format!(
                "key {} already has {MAX_PENDING_PER_KEY} pending changes; cancel some first",
                doc.key_id
            ))),
            Some("conflict") => Ok(None),
            _ => Err(store_err(anyhow::anyhow!("unexpected queue reply {r:?}"))),
        }
    }

    /// Replaces the allowlist with `nets` (the "lock to the networks this key used"
    /// button), as [`crate::store::edit::set_allowlist`]: one request per difference,
    /// additions first, so that the list never passes through empty.
    pub async fn set_allowlist(
        &self,
        key_id: &str,
        owner: Option<&str>,
        nets: &[IpNet],
        cool: Cooldowns,
        who: Requester<'_>,
        now: UnixMillis,
    ) -> Result<Vec<(Change, Outcome)>, EditError> {
        let unique = crate::store::edit::unique_nets(nets)?;
        let nets = &unique[..];
        let mut old = None;
        for _ in 0..RETRIES {
            let (doc, json) = self.doc_required(key_id).await?;
            if owner.is_some_and(|o| o != doc.account) {
                return Err(EditError::NoSuchKey(key_id.to_owned()));
            }
            if doc.status == "revoked" {
                return Err(EditError::Revoked(key_id.to_owned()));
            }
            let allow = allow_nets(&doc)?;
            if !allow.is_empty() {
                old = Some(allow);
                break;
            }
            // From any network to a list of them: the whole list narrows at once.
            let mut new = doc.clone();
            new.allow_ips = nets.iter().map(|n| n.to_string()).collect();
            new.updated_at = now.max(doc.updated_at + 1);
            let text = format!("restrict to {}: {}", new.allow_ips.join(", "), who.reason);
            let decided = self
                .decide(Decision {
                    key_id,
                    doc: Some((&json, &new)),
                    pending: None,
                    event: Some((who.actor, "narrow", &text)),
                    on_removed: None,
                })
                .await?;
            if decided == Decided::Ok {
                return Ok(nets
                    .iter()
                    .map(|n| (Change::AddIp(*n), Outcome::Applied))
                    .collect());
            }
        }
        let old = old.ok_or_else(|| kept_changing(key_id))?;
        let mut out = Vec::new();
        for c in crate::store::edit::allowlist_changes(&old, nets) {
            match self.request_edit(key_id, owner, &c, cool, who, now).await {
                Ok(o) => out.push((c, o)),
                // The new entries wait; the old last one stays until they apply, then goes
                // (due changes apply in id order).
                Err(EditError::WithdrawNeedsAllowlist) if matches!(c, Change::RemoveIp(_)) => {
                    let o = self.queue_after_adds(key_id, &c, cool, who, now).await?;
                    out.push((c, o));
                }
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    async fn queue_after_adds(
        &self,
        key_id: &str,
        change: &Change,
        cool: Cooldowns,
        who: Requester<'_>,
        now: UnixMillis,
    ) -> Result<Outcome, EditError> {
        for _ in 0..RETRIES {
            let (doc, json) = self.doc_required(key_id).await?;
            if let Some(o) = self
                .queue((&doc, &json), change, cool.widen_ms, who, now, true)
                .await?
            {
                return Ok(o);
            }
        }
        Err(kept_changing(key_id))
    }

    /// Whether `change` would widen the key as it is now (the web UI asks for the
    /// password again only then), as [`crate::store::edit::widens`].
    pub async fn edit_widens(&self, key_id: &str, change: &Change) -> Result<bool, EditError> {
        let (doc, _) = self.doc_required(key_id).await?;
        let pending = self.pending_docs(Some(key_id)).await?;
        let cur = current(&doc)?;
        Ok(matches!(
            classify(&doc, &cur, &pending, change),
            Ok(Some(true))
        ))
    }

    /// Pending changes, soonest first, of one key and/or one account.
    pub async fn list_pending(
        &self,
        key_id: Option<&str>,
        account: Option<&str>,
    ) -> anyhow::Result<Vec<PendingChange>> {
        Ok(self
            .pending_docs(key_id)
            .await?
            .into_iter()
            .filter(|(_, p)| account.is_none_or(|a| p.account == a))
            .map(|(id, p)| p.to_change(id))
            .collect())
    }

    /// Cancels pending change `id` (of `owner`'s keys, when given), from any replica.
    pub async fn cancel_pending(
        &self,
        id: i64,
        owner: Option<&str>,
        actor: &str,
        reason: &str,
    ) -> Result<PendingChange, EditError> {
        let json: Option<String> = self
            .query(
                redis::cmd("HGET")
                    .arg(self.cat_key("pending"))
                    .arg(id.to_string()),
            )
            .await
            .map_err(store_err)?;
        let found = json
            .and_then(|j| serde_json::from_str::<PendingDoc>(&j).ok())
            .filter(|p| owner.is_none_or(|o| o == p.account))
            .ok_or(EditError::NoSuchChange(id))?
            .to_change(id);
        let text = format!("#{id} {}: {reason}", found.description);
        let decided = self
            .decide(Decision {
                key_id: &found.key_id,
                doc: None,
                pending: Some((id, true)),
                event: Some((actor, "widen_cancelled", &text)),
                on_removed: None,
            })
            .await?;
        match decided {
            Decided::Ok => Ok(found),
            _ => Err(EditError::NoSuchChange(id)),
        }
    }

    /// Applies every pending change due at `now`, oldest first, each re-checked against
    /// the key as it is then; returns how many this replica applied. Every replica calls
    /// it; each change is claimed by exactly one.
    pub async fn apply_due(&self, now: UnixMillis) -> anyhow::Result<usize> {
        let ids: Vec<String> = self
            .query(
                redis::cmd("ZRANGEBYSCORE")
                    .arg(self.cat_key("pending:due"))
                    .arg("-inf")
                    .arg(now)
                    .arg("LIMIT")
                    .arg(0)
                    .arg(1000),
            )
            .await?;
        if ids.is_empty() {
            return Ok(0);
        }
        let docs: Vec<Option<String>> = self
            .query(redis::cmd("HMGET").arg(self.cat_key("pending")).arg(&ids))
            .await?;
        let mut due: Vec<(i64, Option<PendingDoc>)> = ids
            .iter()
            .zip(docs)
            .filter_map(|(id, d)| {
                let id = id.parse().ok()?;
                Some((id, d.and_then(|d| serde_json::from_str(&d).ok())))
            })
            .collect();
        // Id order, as the embedded store applies them: a removal queued after additions
        // applies after them.
        due.sort_by_key(|(id, _)| *id);
        let mut applied_here = 0;
        for (id, p) in due {
            match p {
                Some(p) => {
                    if self.apply_one(id, &p, now).await.map_err(|e| match e {
                        EditError::Store(e) => e,
                        e => anyhow::anyhow!("{e}"),
                    })? {
                        applied_here += 1;
                    }
                }
                None => {
                    // Decided meanwhile, or a record nobody can read: it must not wait
                    // forever in the index.
                    let key_id = String::new();
                    self.decide(Decision {
                        key_id: &key_id,
                        doc: None,
                        pending: Some((id, false)),
                        event: None,
                        on_removed: Some((
                            "keyguard",
                            "widen_rejected",
                            &format!("#{id}: unreadable pending change"),
                        )),
                    })
                    .await
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
                }
            }
        }
        Ok(applied_here)
    }

    /// Applies (or rejects) one due change; whether this call applied it.
    async fn apply_one(&self, id: i64, p: &PendingDoc, now: UnixMillis) -> Result<bool, EditError> {
        let key_id = p.key_id.as_str();
        let Some(change) = Change::from_stored(&p.kind, &p.value) else {
            let text = format!("#{id} {} {}: unreadable change", p.kind, p.value);
            self.decide(Decision {
                key_id,
                doc: None,
                pending: Some((id, true)),
                event: Some(("keyguard", "widen_rejected", &text)),
                on_removed: None,
            })
            .await?;
            return Ok(false);
        };
        for _ in 0..RETRIES {
            let found = self.doc_of(key_id).await?;
            let pending = self.pending_docs(Some(key_id)).await?;
            let verdict = match &found {
                None => Err(EditError::NoSuchKey(key_id.to_owned())),
                Some((doc, _)) if doc.status == "revoked" => {
                    Err(EditError::Revoked(key_id.to_owned()))
                }
                Some((doc, _)) => {
                    current(doc).and_then(|cur| classify(doc, &cur, &pending, &change))
                }
            };
            let decided = match verdict {
                Ok(Some(_)) => {
                    let (doc, json) = found.as_ref().expect("a verdict needs the key");
                    let new = applied(doc, &change, p.requested_at, now)?;
                    let text = format!("#{id} {} (asked by {})", change.describe(), p.actor);
                    let d = self
                        .decide(Decision {
                            key_id,
                            doc: Some((json, &new)),
                            pending: Some((id, true)),
                            event: Some(("keyguard", "widen_applied", &text)),
                            on_removed: None,
                        })
                        .await?;
                    if d == Decided::Ok {
                        return Ok(true);
                    }
                    d
                }
                // Already in effect: nothing to apply, nothing to record.
                Ok(None) => {
                    self.decide(Decision {
                        key_id,
                        doc: None,
                        pending: Some((id, true)),
                        event: None,
                        on_removed: None,
                    })
                    .await?
                }
                Err(EditError::Store(e)) => return Err(EditError::Store(e)),
                Err(e) => {
                    let text = format!("#{id} {}: {e}", change.describe());
                    self.decide(Decision {
                        key_id,
                        doc: None,
                        pending: Some((id, true)),
                        event: Some(("keyguard", "widen_rejected", &text)),
                        on_removed: None,
                    })
                    .await?
                }
            };
            if decided != Decided::Conflict {
                return Ok(false);
            }
        }
        Err(store_err(anyhow::anyhow!(
            "pending change #{id}: key {key_id} kept changing under us"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keyguard_policy::Scope;

    fn doc(scopes: &str, allow: &[&str]) -> KeyDoc {
        KeyDoc {
            key_id: "kg_1".into(),
            api_key: "AK".into(),
            account: "alice".into(),
            label: String::new(),
            scopes: scopes.into(),
            allow_ips: allow.iter().map(|s| s.to_string()).collect(),
            trusted_ips: vec![],
            withdraw_addresses: vec![],
            status: "active".into(),
            status_reason: None,
            created_at: 1,
            updated_at: 1,
            expires_at: None,
            cred_kind: "hmac".into(),
            cred_sealed: None,
            cred_public: None,
            canary: false,
            last_used_at: None,
        }
    }

    fn class(
        d: &KeyDoc,
        pending: &[(i64, PendingDoc)],
        c: &Change,
    ) -> Result<Option<bool>, EditError> {
        classify(d, &current(d).unwrap(), pending, c)
    }

    #[test]
    fn documents_follow_the_embedded_rules() {
        let d = doc("read,withdraw", &["10.0.0.0/8"]);
        let net = |s: &str| s.parse::<IpNet>().unwrap();
        // Inside a network already allowed: narrower or equal; elsewhere: widening.
        assert_eq!(
            class(&d, &[], &Change::AddIp(net("10.1.0.0/16"))).unwrap(),
            Some(false)
        );
        assert_eq!(
            class(&d, &[], &Change::AddIp(net("192.0.2.0/24"))).unwrap(),
            Some(true)
        );
        assert_eq!(
            class(&d, &[], &Change::AddIp(net("10.0.0.0/8"))).unwrap(),
            None
        );
        assert!(matches!(
            class(&d, &[], &Change::RemoveIp(net("10.0.0.0/8"))),
            Err(EditError::WithdrawNeedsAllowlist)
        ));
        let trade = doc("read", &[]);
        assert!(matches!(
            class(&trade, &[], &Change::address("btc", "bc1qx", true).unwrap()),
            Err(EditError::NeedsWithdrawScope)
        ));
        let grant = PendingDoc {
            key_id: "kg_1".into(),
            account: "alice".into(),
            kind: "add_scope".into(),
            value: "withdraw".into(),
            requested_at: 1,
            effective_at: 2,
            actor: "op".into(),
            reason: "r".into(),
        };
        let with_allow = doc("read", &["10.0.0.0/8"]);
        assert_eq!(
            class(
                &with_allow,
                &[(1, grant)],
                &Change::address("btc", "bc1qx", true).unwrap()
            )
            .unwrap(),
            Some(true)
        );
    }

    #[test]
    fn applying_edits_the_document() {
        let d = doc("read,trade", &["10.0.0.0/8"]);
        let n: IpNet = "192.0.2.0/24".parse().unwrap();
        let added = applied(&d, &Change::AddIp(n), 5, 10).unwrap();
        assert_eq!(added.allow_ips, vec!["10.0.0.0/8", "192.0.2.0/24"]);
        assert_eq!(added.updated_at, 10);
        let removed = applied(&added, &Change::RemoveIp(n), 5, 10).unwrap();
        assert_eq!(removed.allow_ips, vec!["10.0.0.0/8"]);
        assert_eq!(removed.updated_at, 11, "updated_at always moves forward");
        let scoped = applied(&d, &Change::RemoveScope(Scope::Trade), 0, 20).unwrap();
        assert_eq!(scoped.scopes, "read");
        let addr = applied(&d, &Change::address("BTC", "bc1qx", true).unwrap(), 7, 20).unwrap();
        assert_eq!(addr.withdraw_addresses[0].asset, "btc");
        assert_eq!(addr.withdraw_addresses[0].added_at, 7);
    }
}
