//! The key catalogue in Redis: one JSON document per key (secret sealed with the master
//! key, as in SQLite) in one hash, freezes in another, a generation counter, and a
//! stream of operator changes; every change is one compare-and-set script that also
//! announces it on `<prefix>:changes`.
//!
//! Each replica keeps the whole catalogue decrypted in memory ([`crate::keys::KeyCache`])
//! and reloads it when a change is announced, and once a second when the generation moved
//! without an announcement reaching it (a dropped subscription). Trades and withdrawals
//! are refused when the catalogue could not be confirmed for five seconds.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use futures_util::StreamExt;
use keyguard_policy::authorize::Freezes;
use keyguard_policy::key::{Credential, KeyRecord, KeyStatus, Secret, WithdrawAddress};
use keyguard_policy::limits::ClientNet;
use keyguard_policy::{Scopes, UnixMillis};
use redis::Script;
use serde::{Deserialize, Serialize};

use super::RedisStore;
use crate::keys::{KeyCache, Snapshot};
use crate::secrets::MasterKey;
use crate::store::{AddressSummary, FreezeScope, KeySummary, NewCredential, NewKey};

/// A key as stored in Redis.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct KeyDoc {
    /// Internal id.
    pub key_id: String,
    /// The API key string clients send.
    pub api_key: String,
    /// Owning account.
    pub account: String,
    /// Label.
    pub label: String,
    /// Scopes (`read,trade`).
    pub scopes: String,
    /// Allowlist CIDRs.
    pub allow_ips: Vec<String>,
    /// Networks trusted since creation.
    pub trusted_ips: Vec<String>,
    /// Withdrawal addresses.
    pub withdraw_addresses: Vec<AddrDoc>,
    /// `active` / `suspended` / `revoked`.
    pub status: String,
    /// Why the status last changed.
    pub status_reason: Option<String>,
    /// Created (ms).
    pub created_at: UnixMillis,
    /// Last change (ms).
    pub updated_at: UnixMillis,
    /// Expiry (ms).
    pub expires_at: Option<UnixMillis>,
    /// `hmac` or `ed25519`.
    pub cred_kind: String,
    /// The secret, sealed with the master key (AES-256-GCM), base64.
    pub cred_sealed: Option<String>,
    /// An Ed25519 public key, base64.
    pub cred_public: Option<String>,
    /// A canary key.
    pub canary: bool,
    /// Last use as recorded by reactivation (the scripts keep the live one).
    pub last_used_at: Option<UnixMillis>,
}

impl KeyDoc {
    /// A document for a new key, its secret sealed.
    pub fn new(master: &MasterKey, key: &NewKey, now: UnixMillis) -> anyhow::Result<KeyDoc> {
        let (kind, sealed, public) = match &key.credential {
            NewCredential::Hmac(secret) => (
                "hmac",
                Some(B64.encode(master.seal(&key.key_id, secret)?)),
                None,
            ),
            NewCredential::Ed25519(pk) => ("ed25519", None, Some(B64.encode(pk))),
        };
        Ok(KeyDoc {
            key_id: key.key_id.clone(),
            api_key: key.api_key.clone(),
            account: key.account.clone(),
            label: key.label.clone(),
            scopes: key.scopes.to_string(),
            allow_ips: key.allow_ips.iter().map(|n| n.to_string()).collect(),
            trusted_ips: key.trusted_ips.iter().map(|n| n.to_string()).collect(),
            withdraw_addresses: key
                .withdraw_addresses
                .iter()
                .map(|(asset, address)| AddrDoc {
                    asset: asset.clone(),
                    address: address.clone(),
                    added_at: now,
                })
                .collect(),
            status: KeyStatus::Active.as_str().to_owned(),
            status_reason: None,
            created_at: now,
            updated_at: now,
            expires_at: key.expires_at,
            cred_kind: kind.to_owned(),
            cred_sealed: sealed,
            cred_public: public,
            canary: key.canary,
            last_used_at: None,
        })
    }

    fn nets(&self, what: &str, list: &[String]) -> anyhow::Result<Vec<ipnet::IpNet>> {
        list.iter()
            .map(|s| keyguard_policy::key::parse_allow_ip(s).map_err(anyhow::Error::msg))
            .collect::<anyhow::Result<Vec<_>>>()
            .with_context(|| format!("key {}: bad {what}", self.key_id))
    }

    fn scopes(&self) -> anyhow::Result<Scopes> {
        self.scopes
            .parse()
            .map_err(|_| anyhow::anyhow!("key {}: bad scopes {:?}", self.key_id, self.scopes))
    }

    fn status(&self) -> anyhow::Result<KeyStatus> {
        self.status
            .parse()
            .map_err(|_| anyhow::anyhow!("key {}: bad status {:?}", self.key_id, self.status))
    }

    /// The record the pipeline uses, with its credential opened.
    pub fn to_record(&self, master: &MasterKey) -> anyhow::Result<KeyRecord> {
        let credential = match self.cred_kind.as_str() {
            "hmac" => {
                let sealed = B64
                    .decode(self.cred_sealed.as_deref().unwrap_or_default())
                    .with_context(|| format!("key {}: bad sealed secret", self.key_id))?;
                Credential::Hmac(Secret::new(master.open(&self.key_id, &sealed)?))
            }
            "ed25519" => {
                let pk: [u8; 32] = B64
                    .decode(self.cred_public.as_deref().unwrap_or_default())
                    .ok()
                    .and_then(|p| p.try_into().ok())
                    .ok_or_else(|| anyhow::anyhow!("key {}: bad public key", self.key_id))?;
                Credential::Ed25519(pk)
            }
            other => bail!("key {}: unknown credential kind {other:?}", self.key_id),
        };
        Ok(KeyRecord {
            key_id: self.key_id.clone(),
            api_key: self.api_key.clone(),
            account: self.account.clone(),
            label: self.label.clone(),
            scopes: self.scopes()?,
            allow_ips: self.nets("allow_ips", &self.allow_ips)?,
            withdraw_addresses: self
                .withdraw_addresses
                .iter()
                .map(|a| WithdrawAddress {
                    asset: a.asset.clone(),
                    address: a.address.clone(),
                    added_at: a.added_at,
                })
                .collect(),
            trusted_ips: self.nets("trusted_ips", &self.trusted_ips)?,
            created_at: self.created_at,
            expires_at: self.expires_at,
            status: self.status()?,
            credential,
            canary: self.canary,
        })
    }

    /// As the CLI lists it.
    pub fn to_summary(&self) -> anyhow::Result<KeySummary> {
        Ok(KeySummary {
            key_id: self.key_id.clone(),
            account: self.account.clone(),
            label: self.label.clone(),
            scopes: self.scopes()?.names(),
            allow_ips: self.allow_ips.clone(),
            trusted_ips: self.trusted_ips.clone(),
            withdraw_addresses: self
                .withdraw_addresses
                .iter()
                .map(|a| AddressSummary {
                    asset: a.asset.clone(),
                    address: a.address.clone(),
                    added_at: a.added_at,
                })
                .collect(),
            status: self.status()?.as_str(),
            status_reason: self.status_reason.clone(),
            credential: self.cred_kind.clone(),
            created_at: self.created_at,
            expires_at: self.expires_at,
            canary: self.canary,
            last_used_at: self.last_used_at,
        })
    }
}

/// A withdrawal address as stored.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AddrDoc {
    /// Asset.
    pub asset: String,
    /// Address.
    pub address: String,
    /// When it was added (ms).
    pub added_at: UnixMillis,
}

/// A freeze as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct FreezeDoc {
    reason: String,
    actor: String,
    created_at: UnixMillis,
}

/// One operator change, as the CLI recorded it (the gateway copies it to its audit log).
#[derive(Debug, Clone)]
pub struct AdminEventRec {
    /// Stream id (ordering and the replica's cursor).
    pub id: String,
    /// When (ms).
    pub ts: UnixMillis,
    /// Who.
    pub actor: String,
    /// What.
    pub action: String,
    /// On what.
    pub target: String,
    /// Why.
    pub reason: String,
}

fn put_script() -> Script {
    Script::new(include_str!("cat_put.lua"))
}

impl RedisStore {
    async fn put_doc(
        &self,
        expected: Option<&str>,
        doc: &KeyDoc,
        new_api_key: bool,
        event: Option<(&str, &str, &str)>,
    ) -> anyhow::Result<&'static str> {
        let json = serde_json::to_string(doc)?;
        let (actor, action, reason) = event.unwrap_or(("", "", ""));
        let script = put_script();
        let mut inv = script.prepare_invoke();
        inv.key(self.cat_key("docs"))
            .key(self.cat_key("gen"))
            .key(self.cat_key("events"))
            .key(self.cat_key("api"))
            .arg(&doc.key_id)
            .arg(expected.unwrap_or(""))
            .arg(&json)
            .arg(if new_api_key {
                doc.api_key.as_str()
            } else {
                ""
            })
            .arg(actor)
            .arg(action)
            .arg(&doc.key_id)
            .arg(reason)
            .arg(self.changes_channel());
        let mut c = self.conn().await?;
        let r: String = self.deadline(inv.invoke_async(&mut c)).await?;
        Ok(match r.as_str() {
            "ok" => "ok",
            "conflict" => "conflict",
            "duplicate" => "duplicate",
            other => bail!("unexpected catalogue reply {other:?}"),
        })
    }

    /// Stores a new key.
    pub async fn insert_key(&self, master: &MasterKey, key: &NewKey) -> anyhow::Result<()> {
        let doc = KeyDoc::new(master, key, crate::store::now_ms())?;
        match self.put_doc(None, &doc, true, None).await? {
            "ok" => Ok(()),
            "duplicate" => bail!("api key already in use"),
            _ => bail!("a key with id {} already exists", key.key_id),
        }
    }

    /// Stores a new key and records who made it (an admin event, as the web UI's keys are).
    pub async fn insert_key_by(
        &self,
        master: &MasterKey,
        key: &NewKey,
        actor: &str,
        reason: &str,
    ) -> anyhow::Result<()> {
        let doc = KeyDoc::new(master, key, crate::store::now_ms())?;
        match self
            .put_doc(None, &doc, true, Some((actor, "key_create", reason)))
            .await?
        {
            "ok" => Ok(()),
            "duplicate" => bail!("api key already in use"),
            _ => bail!("a key with id {} already exists", key.key_id),
        }
    }

    /// Every key document, with its raw JSON (for compare-and-set).
    pub async fn docs(&self) -> anyhow::Result<Vec<(KeyDoc, String)>> {
        let raw: Vec<(String, String)> = self
            .query(redis::cmd("HGETALL").arg(self.cat_key("docs")))
            .await?;
        let mut out = Vec::with_capacity(raw.len());
        for (id, json) in raw {
            let doc: KeyDoc =
                serde_json::from_str(&json).with_context(|| format!("key {id}: bad document"))?;
            out.push((doc, json));
        }
        out.sort_by(|a, b| (a.0.created_at, &a.0.key_id).cmp(&(b.0.created_at, &b.0.key_id)));
        Ok(out)
    }

    async fn doc(&self, key_id: &str) -> anyhow::Result<(KeyDoc, String)> {
        let json: Option<String> = self
            .query(redis::cmd("HGET").arg(self.cat_key("docs")).arg(key_id))
            .await?;
        let json = json.ok_or_else(|| anyhow::anyhow!("no key with id {key_id}"))?;
        let doc =
            serde_json::from_str(&json).with_context(|| format!("key {key_id}: bad document"))?;
        Ok((doc, json))
    }

    /// Applies `change` to one key's document, retrying when another writer was first.
    pub async fn update_key(
        &self,
        key_id: &str,
        actor: &str,
        action: &str,
        reason: &str,
        change: impl Fn(&mut KeyDoc) -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        for _ in 0..10 {
            let (mut doc, json) = self.doc(key_id).await?;
            change(&mut doc)?;
            doc.updated_at = crate::store::now_ms().max(doc.updated_at + 1);
            if self
                .put_doc(Some(&json), &doc, false, Some((actor, action, reason)))
                .await?
                == "ok"
            {
                return Ok(());
            }
        }
        bail!("key {key_id} kept changing under us; try again")
    }

    /// Changes a key's status (revocation is final), as `store::set_status` does.
    pub async fn set_status(
        &self,
        key_id: &str,
        status: KeyStatus,
        actor: &str,
        reason: &str,
    ) -> anyhow::Result<()> {
        let action = match status {
            KeyStatus::Active => "key_resume",
            KeyStatus::Suspended => "key_suspend",
            KeyStatus::Revoked => "key_revoke",
        };
        self.update_key(key_id, actor, action, reason, |doc| {
            if doc.status == "revoked" && status != KeyStatus::Revoked {
                bail!("key {key_id} is revoked; revocation cannot be undone");
            }
            doc.status = status.as_str().to_owned();
            doc.status_reason = Some(reason.to_owned());
            Ok(())
        })
        .await
    }

    /// Makes a dormant key usable again: its last use becomes now.
    pub async fn reactivate(&self, key_id: &str, actor: &str, reason: &str) -> anyhow::Result<()> {
        let now = crate::store::now_ms();
        self.update_key(key_id, actor, "key_reactivate", reason, |doc| {
            doc.last_used_at = Some(now);
            Ok(())
        })
        .await?;
        // The scripts read the live last use first.
        let (doc, _) = self.doc(key_id).await?;
        let lu = format!("{}:lu:{key_id}", self.account_base(&doc.account));
        self.query::<()>(redis::cmd("SET").arg(lu).arg(now)).await?;
        Ok(())
    }

    /// Freezes or unfreezes withdrawals; whether anything changed.
    pub async fn set_freeze(
        &self,
        scope: &FreezeScope,
        frozen: bool,
        actor: &str,
        reason: &str,
    ) -> anyhow::Result<bool> {
        let (kind, target) = scope.parts();
        let doc = serde_json::to_string(&FreezeDoc {
            reason: reason.to_owned(),
            actor: actor.to_owned(),
            created_at: crate::store::now_ms(),
        })?;
        let script = Script::new(include_str!("cat_freeze.lua"));
        let mut inv = script.prepare_invoke();
        inv.key(self.cat_key("freezes"))
            .key(self.cat_key("gen"))
            .key(self.cat_key("events"))
            .arg(format!("{kind}:{target}"))
            .arg(if frozen { "1" } else { "0" })
            .arg(doc)
            .arg(actor)
            .arg(reason)
            .arg(self.changes_channel());
        let mut c = self.conn().await?;
        let changed: i64 = self.deadline(inv.invoke_async(&mut c)).await?;
        Ok(changed > 0)
    }

    /// The freezes in force.
    pub async fn freezes(&self) -> anyhow::Result<Freezes> {
        let raw: Vec<(String, String)> = self
            .query(redis::cmd("HGETALL").arg(self.cat_key("freezes")))
            .await?;
        let mut f = Freezes::default();
        for (scope, _) in raw {
            match scope.split_once(':') {
                Some(("global", _)) => f.global = true,
                Some(("asset", a)) => f.assets.push(a.to_owned()),
                Some(("account", a)) => f.accounts.push(a.to_owned()),
                _ => bail!("unknown freeze {scope:?}"),
            }
        }
        Ok(f)
    }

    /// The generation counter of the catalogue.
    pub async fn generation(&self) -> anyhow::Result<i64> {
        let g: Option<i64> = self
            .query(redis::cmd("GET").arg(self.cat_key("gen")))
            .await?;
        Ok(g.unwrap_or(0))
    }

    /// Lists keys (all, or one).
    pub async fn list_keys(&self, key_id: Option<&str>) -> anyhow::Result<Vec<KeySummary>> {
        let docs = self.docs().await?;
        let list: Vec<KeySummary> = docs
            .iter()
            .filter(|(d, _)| key_id.is_none_or(|id| d.key_id == id))
            .map(|(d, _)| d.to_summary())
            .collect::<anyhow::Result<_>>()?;
        if let (Some(id), true) = (key_id, list.is_empty()) {
            bail!("no key with id {id}");
        }
        Ok(list)
    }

    /// The whole catalogue, decrypted. A document that cannot be opened is skipped and
    /// logged (that key is unusable, the safe direction).
    pub async fn snapshot(&self, master: &MasterKey) -> anyhow::Result<Snapshot> {
        // Generation first: a change racing with the read is seen again next time.
        let generation = self.generation().await?;
        let docs = self.docs().await?;
        let freezes = self.freezes().await?;
        let mut keys = Vec::with_capacity(docs.len());
        for (doc, _) in docs {
            match doc.to_record(master) {
                Ok(k) => keys.push((k, doc.last_used_at, doc.updated_at)),
                Err(e) => tracing::error!(error = %format!("{e:#}"), "key skipped"),
            }
        }
        Ok(Snapshot::build(keys, freezes, generation))
    }

    /// Operator changes after stream id `after` (`0` for all), oldest first.
    pub async fn admin_events(&self, after: &str) -> anyhow::Result<Vec<AdminEventRec>> {
        let raw: Vec<(String, Vec<(String, String)>)> = self
            .query(
                redis::cmd("XRANGE")
                    .arg(self.cat_key("events"))
                    .arg(format!("({after}"))
                    .arg("+")
                    .arg("COUNT")
                    .arg(1000),
            )
            .await?;
        Ok(raw
            .into_iter()
            .map(|(id, fields)| {
                let get = |k: &str| {
                    fields
                        .iter()
                        .find(|(f, _)| f == k)
                        .map(|(_, v)| v.clone())
                        .unwrap_or_default()
                };
                AdminEventRec {
                    ts: get("ts").parse().unwrap_or(0),
                    actor: get("actor"),
                    action: get("action"),
                    target: get("target"),
                    reason: get("reason"),
                    id,
                }
            })
            .collect())
    }
}

/// How often a replica checks the generation when no announcement came.
const FULL_CHECK_EVERY: Duration = Duration::from_secs(1);

/// Keeps `cache` current: reloads on every announced change and whenever the generation
/// moved, confirms it each second (applying the key edits that came due first), and feeds bans and blocks announced by any replica
/// into the pre-auth cache. Never returns; errors are logged and retried, and the
/// snapshot in force stays (trades and withdrawals stop once it is five seconds old).
pub async fn refresh_loop(
    store: Arc<RedisStore>,
    cache: Arc<KeyCache>,
    master: Arc<MasterKey>,
    on_reload: impl Fn(&Snapshot) + Send + 'static,
) {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(64);
    tokio::spawn(events_loop(store.clone(), tx));
    let mut ticker = tokio::time::interval(FULL_CHECK_EVERY);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let announced = tokio::select! {
            _ = ticker.tick() => false,
            m = rx.recv() => m.is_some(),
        };
        if !announced {
            // Every replica tries; the claim in the script lets exactly one apply each.
            if let Err(e) = store.apply_due(crate::store::now_ms()).await {
                tracing::warn!(error = %format!("{e:#}"), "applying due key changes failed");
            }
        }
        let current = cache.snapshot().generation();
        let result = async {
            if !announced && store.generation().await? == current {
                return anyhow::Ok(None);
            }
            Ok(Some(store.snapshot(&master).await?))
        }
        .await;
        match result {
            Ok(None) => cache.confirm(),
            Ok(Some(snap)) => {
                on_reload(&snap);
                if snap.generation() != current {
                    tracing::info!(
                        keys = snap.len(),
                        generation = snap.generation(),
                        "keys reloaded"
                    );
                }
                cache.install(snap);
            }
            Err(e) => tracing::error!(error = %format!("{e:#}"), "key refresh from redis failed"),
        }
    }
}

/// Subscribes to the change and event channels (reconnecting forever) and passes key
/// changes to `changed`, bans and blocks to the store's pre-auth cache.
pub async fn events_loop(store: Arc<RedisStore>, changed: tokio::sync::mpsc::Sender<()>) {
    loop {
        let result = async {
            let client = store.pubsub_client()?;
            let mut pubsub = store.deadline(client.get_async_pubsub()).await?;
            pubsub.subscribe(store.changes_channel()).await?;
            pubsub.subscribe(store.events_channel()).await?;
            // Anything announced while unsubscribed: reload once now.
            let _ = changed.try_send(());
            let mut messages = pubsub.on_message();
            while let Some(msg) = messages.next().await {
                let payload: String = msg.get_payload().unwrap_or_default();
                if msg.get_channel_name() == store.changes_channel() {
                    let _ = changed.try_send(());
                    continue;
                }
                let mut words = payload.split(' ');
                if let (Some(what), Some(net), Some(until)) =
                    (words.next(), words.next(), words.next())
                {
                    if net.starts_with("~o") {
                        if let Ok(until) = until.parse::<u64>() {
                            store.remember_overflow_ban(net, until);
                        }
                        continue;
                    }
                    let net = net
                        .parse::<ipnet::IpNet>()
                        .ok()
                        .and_then(ClientNet::from_net)
                        .or_else(|| net.parse::<std::net::IpAddr>().ok().map(ClientNet::of));
                    if let (Some(net), Ok(until)) = (net, until.parse::<u64>()) {
                        store.remember_standing(net, what, until);
                    }
                }
            }
            anyhow::Ok(())
        }
        .await;
        if let Err(e) = result {
            tracing::warn!(error = %format!("{e:#}"), "redis subscription lost; reconnecting");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
