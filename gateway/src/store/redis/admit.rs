//! The per-request script: what the pipeline asks Redis before forwarding, encoded for
//! `admit.lua`, and its answer decoded into the pipeline's terms. The rules' thresholds
//! come from the same config as the in-process store; the rule *order* and semantics
//! follow `keyguard_policy::anomaly::Anomaly::check_request`, rates, replay and velocity
//! as the embedded pipeline applies them.

use keyguard_policy::anomaly::{AnomalyConfig, LearnedIp};
use keyguard_policy::decimal::Decimal;
use keyguard_policy::dialect::Replay;
use keyguard_policy::limits::{ClientNet, LimitKind, Rate, RateLimitConfig, RateLimited};
use keyguard_policy::velocity::{LedgerKind, Reservation, SubjectKind, VelocityConfig};
use keyguard_policy::{Action, Deny, KeyRecord, UnixMillis};
use redis::Script;

use super::{RedisStore, StoreError};

/// Digits of the fixed-width amounts the script adds: 30 before the point, 18 after.
const AMOUNT_INT: usize = 30;
const AMOUNT_FRAC: usize = 18;
/// Fixed-width nonces compare as strings: 30 digits before the point, 28 after.
const NONCE_INT: usize = 30;
const NONCE_FRAC: usize = 28;

/// The rules the script applies, from the validated config.
#[derive(Debug, Clone)]
pub struct SharedRules {
    /// Anomaly rules.
    pub anomaly: AnomalyConfig,
    /// Rate limits.
    pub limits: RateLimitConfig,
    /// Velocity rules.
    pub velocity: VelocityConfig,
}

/// One request as the script needs it.
pub struct AdmitRequest<'a> {
    /// The key that signed it (signature verified).
    pub key: &'a KeyRecord,
    /// The client's network.
    pub net: ClientNet,
    /// The client IP (for exemptions and trusted networks).
    pub client_ip: std::net::IpAddr,
    /// Its action.
    pub action: Action,
    /// `false`: the local checks already refused it; record the sightings only.
    pub authorized: bool,
    /// The freshness proof to consume.
    pub replay: Option<&'a Replay>,
    /// What it would add to the velocity ledger.
    pub reservation: Option<Reservation<'a>>,
    /// The key's last use as the catalogue has it (reactivation sets it).
    pub stored_last_used: Option<UnixMillis>,
}

/// A velocity entry to give back if the upstream definitively refuses.
#[derive(Debug, Clone)]
pub struct Settle {
    account_base: String,
    member: String,
    buckets: Vec<String>,
}

/// The script's decision.
#[derive(Debug, Default)]
pub struct Admitted {
    /// The enforced refusal, if any.
    pub deny: Option<Deny>,
    /// A rate limit's details when `deny` is `rate_limited`.
    pub rate_limited: Option<RateLimited>,
    /// A shadow rule that would have refused.
    pub would_deny: Option<Deny>,
    /// Suspend the key (many-IPs rule, enforced).
    pub suspend: bool,
    /// A network learned for the key.
    pub learned: Option<LearnedIp>,
    /// The velocity entry made.
    pub settle: Option<Settle>,
}

/// The (key, network) pairs whose sightings this replica had `admit.lua` record lately.
///
/// A key's clients mostly come back from where they were: rewriting the same sighting on
/// every request is about a third of the script's Redis commands and tells the shared-IP and
/// many-IPs rules nothing new. A pair seen again within [`RecentSightings::REFRESH_MS`]
/// (or 1/20 of the shorter window) is therefore not recorded again by this replica: its
/// time in the window sets can be that much early, so it may leave a window that much
/// before it should. A pair never seen is always recorded at once, so a burst from new
/// networks or new keys is counted as it happens.
///
/// A fixed table of tagged timestamps (128 KiB, no lock): a collision only makes a pair
/// look unseen, which costs a recording, never a missed one.
pub struct RecentSightings {
    slots: Box<[std::sync::atomic::AtomicU64]>,
    hasher: std::collections::hash_map::RandomState,
}

impl Default for RecentSightings {
    fn default() -> Self {
        RecentSightings {
            slots: (0..Self::SLOTS)
                .map(|_| std::sync::atomic::AtomicU64::new(0))
                .collect(),
            hasher: std::collections::hash_map::RandomState::new(),
        }
    }
}

impl RecentSightings {
    /// How long a recorded sighting counts as fresh, at most.
    pub const REFRESH_MS: u64 = 1000;
    const SLOTS: usize = 1 << 14;
    /// Low bits of a slot: the time (ms, wrapping); high bits: the pair's tag.
    const TIME_BITS: u32 = 40;
    const TIME_MASK: u64 = (1 << Self::TIME_BITS) - 1;

    fn slot(&self, key_id: &str, net: ClientNet) -> (usize, u64) {
        use std::hash::{BuildHasher, Hash, Hasher};
        let mut h = self.hasher.build_hasher();
        key_id.hash(&mut h);
        net.hash(&mut h);
        let h = h.finish();
        // Tag 0 is never stored, so an empty slot matches nothing.
        ((h as usize) % Self::SLOTS, (h >> Self::TIME_BITS) | 1)
    }

    /// Whether the pair was recorded within `refresh_ms` of `now`.
    pub fn fresh(&self, key_id: &str, net: ClientNet, now: UnixMillis, refresh_ms: u64) -> bool {
        let (i, tag) = self.slot(key_id, net);
        let v = self.slots[i].load(std::sync::atomic::Ordering::Relaxed);
        v >> Self::TIME_BITS == tag
            && now.wrapping_sub(v) & Self::TIME_MASK < refresh_ms.min(Self::REFRESH_MS)
    }

    /// Notes that the pair's sightings were recorded at `now`.
    pub fn record(&self, key_id: &str, net: ClientNet, now: UnixMillis) {
        let (i, tag) = self.slot(key_id, net);
        self.slots[i].store(
            tag << Self::TIME_BITS | (now & Self::TIME_MASK),
            std::sync::atomic::Ordering::Relaxed,
        );
    }
}

/// The per-request script (run without [`Script::invoke_async`], whose per-argument
/// buffers cost more than the arguments).
const ADMIT_LUA: &str = include_str!("admit.lua");

/// The scripts, hashed once.
pub struct Scripts {
    admit: Script,
    settle: Script,
    auth_fail: Script,
    af_count: Script,
    trip: Script,
    forget: Script,
}

impl Default for Scripts {
    fn default() -> Self {
        Scripts {
            admit: Script::new(ADMIT_LUA),
            settle: Script::new(include_str!("settle.lua")),
            auth_fail: Script::new(include_str!("auth_fail.lua")),
            af_count: Script::new(include_str!("af_count.lua")),
            trip: Script::new(include_str!("trip.lua")),
            forget: Script::new(include_str!("forget.lua")),
        }
    }
}

fn flag(b: bool) -> &'static str {
    if b {
        "1"
    } else {
        "0"
    }
}

/// GCRA parameters in microseconds: the emission interval and the burst.
fn gcra(rate: &Rate) -> (u64, u32) {
    let interval = (rate.per().as_micros() / u128::from(rate.count())).max(1) as u64;
    (interval, rate.burst())
}

/// `d` as a fixed-width digit string (`int` digits, then `frac`), or `None` when it does
/// not fit exactly (negative, too large, or finer than `frac` places).
fn fixed(d: Decimal, int: usize, frac: usize, with_point: bool) -> Option<String> {
    if d.is_sign_negative() && !d.is_zero() {
        return None;
    }
    let text = d.normalize().to_string();
    let (i, f) = text.split_once('.').unwrap_or((&text, ""));
    if i.len() > int || f.len() > frac {
        return None;
    }
    let mut out = String::with_capacity(int + frac + 1);
    for _ in i.len()..int {
        out.push('0');
    }
    out.push_str(i);
    if with_point {
        out.push('.');
    }
    out.push_str(f);
    for _ in f.len()..frac {
        out.push('0');
    }
    Some(out)
}

/// A nonce as the script stores and compares it.
pub(crate) fn fixed_nonce(n: Decimal) -> Option<String> {
    fixed(n, NONCE_INT, NONCE_FRAC, true)
}

/// A ledger entry copied from the embedded store, as a bucket member.
pub(crate) fn ledger_member(id: u64, amount: Option<Decimal>) -> Option<String> {
    let amount = match amount {
        None => "0".repeat(AMOUNT_INT + AMOUNT_FRAC),
        Some(a) => fixed(a, AMOUNT_INT, AMOUNT_FRAC, false)?,
    };
    Some(format!("m{id}:{amount}"))
}

/// The bucket name part of an asset.
pub(crate) fn asset_key(asset: &str) -> String {
    asset_name(asset)
}

/// Assets come from the request: only plain names are used as they are.
fn asset_name(asset: &str) -> String {
    if asset.is_empty() {
        return "-".to_owned();
    }
    super::safe_name(asset)
}

impl RedisStore {
    /// Runs the request's checks and updates in Redis: one call on a single node, two
    /// concurrent calls (network part, account part) in a cluster.
    pub async fn admit(
        &self,
        scripts: &Scripts,
        rules: &SharedRules,
        req: &AdmitRequest<'_>,
    ) -> Result<Admitted, StoreError> {
        let key = req.key;
        let ip = keyguard_policy::key::canonical_ip(req.client_ip);
        let moves = matches!(req.action, Action::Trade | Action::Withdraw);
        let no_allowlist = key.allow_ips.is_empty();
        let a = &rules.anomaly;

        // ARGV after the first (see admit.lua): one value each, "-" for a section off.
        // Written straight into one command buffer: a request's ~40 arguments as owned
        // strings cost the gateway more than the script's reply does.
        // On one node one call; in a cluster the network part and the account part each
        // go to their own node, and a call may only name keys of one slot, so each part
        // gets its own base twice. Every argument after `parts` is the same for both.
        let account_base = self.account_base(&key.account);
        let net_base = self.net_base(req.net);
        let parts: &[(&str, &String, &String)] = if self.is_cluster() {
            &[
                ("net", &net_base, &net_base),
                ("acct", &account_base, &account_base),
            ]
        } else {
            &[("both", &account_base, &net_base)]
        };
        let mut cmds: Vec<redis::Cmd> = parts
            .iter()
            .map(|(part, k1, k2)| {
                let mut cmd = redis::Cmd::with_capacity(54, 640);
                cmd.arg("EVALSHA")
                    .arg(scripts.admit.get_hash())
                    .arg(2)
                    .arg(*k1)
                    .arg(*k2)
                    .arg(*part);
                cmd
            })
            .collect();
        macro_rules! push {
            ($v:expr $(,)?) => {{
                let v = $v;
                for cmd in &mut cmds {
                    cmd.arg(&v);
                }
            }};
        }
        let off = "-";
        push!(&key.key_id);
        push!(&key.account);
        push!(req.net.to_string());
        push!(flag(req.authorized));
        push!(flag(moves));
        push!(a.auth_failures.as_ref().map_or(off, |r| flag(r.shadow)));
        push!(match &a.auth_failures {
            Some(r) if self.overflow_banned(req.net) => flag(r.shadow),
            _ => off,
        });
        // The sightings' windows: the shorter bounds how stale a skipped one may be.
        let sighting_window = [
            a.shared_ip.as_ref().map(|r| r.window_ms),
            a.many_ips.as_ref().map(|r| r.window_ms),
        ]
        .into_iter()
        .flatten()
        .min();
        let now = super::now_ms();
        let fresh =
            sighting_window.is_some_and(|w| self.recent.fresh(&key.key_id, req.net, now, w / 20));
        push!(flag(fresh));
        match a
            .shared_ip
            .as_ref()
            .filter(|r| !r.exempt.iter().any(|n| n.contains(&ip)))
        {
            None => push!(off),
            Some(r) => {
                push!(r.window_ms);
                push!(r.max_keys);
                push!(r.max_accounts);
                push!(r.block_ms);
                push!(flag(r.shadow));
            }
        }
        match &rules.limits.ip {
            None => push!(off),
            Some(r) => {
                let (i, b) = gcra(r);
                push!(i);
                push!(b);
            }
        }
        match a
            .many_ips
            .as_ref()
            .filter(|r| no_allowlist || r.include_allowlisted)
        {
            None => push!(off),
            Some(r) => {
                push!(r.window_ms);
                push!(r.max_ips);
                push!(flag(r.shadow));
            }
        }
        match &a.dormant {
            None => push!(off),
            Some(r) => {
                push!(r.after_ms);
                push!(r.first_use_within_ms);
                push!(key.created_at);
                push!(req
                    .stored_last_used
                    .map_or_else(|| off.to_owned(), |t| t.to_string()));
                push!(flag(r.shadow));
            }
        }
        let trusted = key.trusted_ips.iter().any(|n| n.contains(&ip));
        match a.new_ip.as_ref().filter(|_| no_allowlist && !trusted) {
            None => push!(off),
            Some(r) => {
                push!(r.probation_ms);
                push!(flag(key.trusted_ips.is_empty()));
                push!(r.max_per_key.max(1));
                push!(flag(r.shadow));
            }
        }
        let mut limits_used: Vec<(LimitKind, Rate)> = Vec::new();
        let mut rates = Vec::new();
        for (kind, rate, _) in rules
            .limits
            .key_rates(&key.key_id, &key.account, req.action)
        {
            let scope = if kind == LimitKind::Account {
                ""
            } else {
                &key.key_id
            };
            rates.push((format!("{}:{scope}", kind.as_str()), gcra(&rate)));
            limits_used.push((kind, rate));
        }
        if rates.is_empty() {
            push!(off);
        } else {
            push!(rates.len());
            for (field, (interval, burst)) in &rates {
                push!(field);
                push!(*interval);
                push!(*burst);
            }
        }
        match req.replay {
            None => push!(off),
            Some(Replay::Nonce(n)) => match fixed(*n, NONCE_INT, NONCE_FRAC, true) {
                Some(s) => {
                    push!("n");
                    push!(&s);
                }
                None => return Ok(deny(Deny::InvalidNonce)),
            },
            Some(Replay::Timestamp {
                at_ms,
                recv_window_ms,
                fingerprint,
            }) => {
                push!("s");
                push!(hex::encode(fingerprint));
                push!(at_ms.saturating_add(*recv_window_ms));
            }
        }
        let mut buckets = Vec::new();
        let mut member: Option<String> = None;
        let velocity = req.reservation.as_ref().map(|r| {
            (
                r,
                rules.velocity.applicable(r.kind, SubjectKind::Key, r.asset),
                rules
                    .velocity
                    .applicable(r.kind, SubjectKind::Account, r.asset),
            )
        });
        match velocity {
            Some((r, key_rules, acct_rules)) if !key_rules.is_empty() || !acct_rules.is_empty() => {
                let amount = match r.amount {
                    None => None,
                    Some(d) => match fixed(d, AMOUNT_INT, AMOUNT_FRAC, false) {
                        Some(s) => Some(s),
                        // An amount the ledger cannot add exactly cannot be shown to fit.
                        None => return Ok(deny(r.kind.deny())),
                    },
                };
                let kind = r.kind.as_str();
                let asset = asset_name(r.asset);
                let longest = key_rules
                    .iter()
                    .chain(&acct_rules)
                    .map(|v| v.window_ms)
                    .max()
                    .unwrap_or(1);
                let entry_id = entry_id()?;
                let zeros = || "0".repeat(AMOUNT_INT + AMOUNT_FRAC);
                member = Some(format!(
                    "{entry_id}:{}",
                    amount.clone().unwrap_or_else(zeros)
                ));
                push!(kind);
                push!(&asset);
                push!(amount.as_deref().unwrap_or(off));
                push!(longest);
                push!(&entry_id);
                let lists = [(false, &key_rules), (true, &acct_rules)];
                push!(lists.iter().filter(|(_, l)| !l.is_empty()).count());
                for (account_wide, list) in lists {
                    if list.is_empty() {
                        continue;
                    }
                    let bucket = format!(
                        ":vel:{kind}:{asset}:{}",
                        if account_wide { "" } else { &key.key_id }
                    );
                    push!(&bucket);
                    buckets.push(bucket);
                    push!(list.len());
                    for v in list.iter() {
                        push!(v.window_ms);
                        push!(v.max_amount.map_or_else(
                            || off.to_owned(),
                            |m| {
                                fixed(m, AMOUNT_INT, AMOUNT_FRAC, false)
                                    .unwrap_or_else(|| "9".repeat(AMOUNT_INT + AMOUNT_FRAC))
                            }
                        ));
                        match v.max_count {
                            Some(c) => push!(c),
                            None => push!(off),
                        }
                    }
                }
            }
            _ => push!(off),
        }
        let reply = self
            .admit_call(scripts, &cmds, &account_base, &buckets)
            .await;
        if reply.is_err() {
            if let Some(member) = member {
                // The reply was lost: the entry may or may not have been made. The request
                // is refused either way, so whatever was reserved is given back.
                let s = Settle {
                    account_base: account_base.clone(),
                    member,
                    buckets: buckets.clone(),
                };
                self.release_later(scripts, s);
            }
        }
        let reply = reply?;
        if let Some(r) = rules.limits.ip {
            limits_used.push((LimitKind::Ip, r));
        }
        let out = self.decode(reply, req, &limits_used, account_base, buckets)?;
        // Allowed: every sighting of the request was recorded (a refusal may have come
        // before them).
        if out.deny.is_none() && sighting_window.is_some() && !fresh {
            self.recent.record(&key.key_id, req.net, now);
        }
        Ok(out)
    }

    /// Runs an `EVALSHA` of `admit.lua`, loading the script first if this Redis does not
    /// have it (a restart, a failover, `SCRIPT FLUSH`).
    async fn eval_admit(
        &self,
        cmd: &redis::Cmd,
        conn: &mut super::Conn,
    ) -> Result<Vec<String>, StoreError> {
        // One deadline for the whole exchange, as `Script::invoke_async` had.
        self.deadline(async {
            match cmd.query_async::<Vec<String>>(conn).await {
                Err(e)
                    if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) =>
                {
                    let mut load = redis::cmd("SCRIPT");
                    load.arg("LOAD").arg(ADMIT_LUA);
                    load.query_async::<String>(conn).await?;
                    cmd.query_async::<Vec<String>>(conn).await
                }
                other => other,
            }
        })
        .await
    }

    async fn admit_call(
        &self,
        scripts: &Scripts,
        cmds: &[redis::Cmd],
        account_base: &str,
        buckets: &[String],
    ) -> Result<Vec<String>, StoreError> {
        Ok(if self.is_cluster() {
            // The two parts live on different nodes: ask both at once. The network part
            // decides first (as it does on one node); if it refuses, what the account
            // part reserved is given back.
            let [net_inv, acct_inv] = cmds else {
                return Err(StoreError::Reply("a cluster call has two parts".into()));
            };
            let (mut c1, mut c2) = (self.conn().await?, self.conn().await?);
            let (net, acct) = tokio::join!(
                self.eval_admit(net_inv, &mut c1),
                self.eval_admit(acct_inv, &mut c2)
            );
            let (net, acct) = (net?, acct?);
            if net.first().map(String::as_str) != Some("ok") {
                if let Some(member) = acct.get(5).filter(|m| !m.is_empty()) {
                    let s = Settle {
                        account_base: account_base.to_owned(),
                        member: member.clone(),
                        buckets: buckets.to_vec(),
                    };
                    self.release_later(scripts, s);
                }
                net
            } else {
                merge(net, acct)
            }
        } else {
            let mut c = self.conn().await?;
            self.eval_admit(&cmds[0], &mut c).await?
        })
    }

    /// Gives an entry back off the request path, retrying for a few seconds (Redis may be
    /// the reason the reply was lost).
    fn release_later(&self, scripts: &Scripts, s: Settle) {
        let Some(me) = self.this.upgrade() else {
            return;
        };
        let script = scripts.settle.clone();
        tokio::spawn(async move {
            for attempt in 0..10u64 {
                let mut inv = script.prepare_invoke();
                inv.key(&s.account_base).arg(&s.member);
                for b in &s.buckets {
                    inv.arg(b);
                }
                let done = async {
                    let mut c = me.conn().await?;
                    me.deadline(inv.invoke_async::<i64>(&mut c)).await
                }
                .await;
                if done.is_ok() {
                    return;
                }
                tokio::time::sleep(std::time::Duration::from_millis(100 * (attempt + 1))).await;
            }
            tracing::error!(
                "a velocity entry whose reply was lost could not be given back; it stays spent"
            );
        });
    }

    fn decode(
        &self,
        reply: Vec<String>,
        req: &AdmitRequest<'_>,
        limits_used: &[(LimitKind, Rate)],
        account_base: String,
        buckets: Vec<String>,
    ) -> Result<Admitted, StoreError> {
        let [status, would, suspend, learned, detail, member]: [String; 6] = reply
            .try_into()
            .map_err(|r: Vec<String>| StoreError::Reply(format!("{} fields", r.len())))?;
        let mut out = Admitted {
            would_deny: (!would.is_empty()).then(|| code_to_deny(&would)).flatten(),
            suspend: suspend == "1",
            ..Admitted::default()
        };
        if let Some((first, usable)) = learned.split_once(',') {
            let parse = |s: &str| {
                s.parse::<u64>()
                    .map_err(|_| StoreError::Reply(learned.clone()))
            };
            out.learned = Some(LearnedIp {
                key_id: req.key.key_id.clone(),
                net: req.net.to_net(),
                first_seen: parse(first)?,
                usable_from: parse(usable)?,
            });
        }
        if !member.is_empty() {
            out.settle = Some(Settle {
                account_base,
                member,
                buckets,
            });
        }
        if status == "ok" {
            return Ok(out);
        }
        let deny = code_to_deny(&status).ok_or_else(|| StoreError::Reply(status.clone()))?;
        if deny == Deny::RateLimited {
            let (kind, wait) = detail
                .split_once(',')
                .ok_or_else(|| StoreError::Reply(detail.clone()))?;
            let wait_ms: u64 = wait
                .parse()
                .map_err(|_| StoreError::Reply(detail.clone()))?;
            let (kind, rate) = limits_used
                .iter()
                .find(|(k, _)| k.as_str() == kind)
                .ok_or_else(|| StoreError::Reply(detail.clone()))?;
            let (quota, window_secs) = rate.policy();
            out.rate_limited = Some(RateLimited {
                kind: *kind,
                quota,
                window_secs,
                wait_ms,
            });
        }
        out.deny = Some(deny);
        Ok(out)
    }

    /// Gives a velocity entry back (a definitive upstream failure).
    pub async fn release(&self, scripts: &Scripts, s: &Settle) -> Result<(), StoreError> {
        let mut inv = scripts.settle.prepare_invoke();
        inv.key(&s.account_base).arg(&s.member);
        for b in &s.buckets {
            inv.arg(b);
        }
        let mut c = self.conn().await?;
        self.deadline(inv.invoke_async::<i64>(&mut c)).await?;
        Ok(())
    }

    /// Counts a failed authentication from `net`; returns the ban's end when this very
    /// failure banned the network (so the ban is alerted once, by one replica).
    ///
    /// Past `max_entries` failing networks per window, a network without a record of its
    /// own is counted on its shard's overflow record instead (see the module docs of
    /// [`super`]); then the returned ban is the overflow's, alerted once too.
    pub async fn auth_failed(
        &self,
        scripts: &Scripts,
        rules: &AnomalyConfig,
        net: ClientNet,
    ) -> Result<Option<UnixMillis>, StoreError> {
        let Some(rule) = &rules.auth_failures else {
            return Ok(None);
        };
        let overflow_banned = self.overflow_banned(net);
        // While the overflow is banned, a network without a record stays without one: no
        // need to count it again.
        let may_create = !overflow_banned && {
            let mut inv = scripts.af_count.prepare_invoke();
            inv.key(format!("{}:{{af}}", self.prefix))
                .arg(rule.window_ms)
                .arg(net.to_string())
                .arg(rules.max_entries);
            let mut c = self.conn().await?;
            self.deadline(inv.invoke_async::<u8>(&mut c)).await? == 0
        };
        let (until, new_ban, counted) = self
            .count_failure(
                scripts,
                rule,
                &self.net_base(net),
                &net.to_string(),
                may_create,
            )
            .await?;
        if until > 0 {
            self.remember_standing(net, "banned", until);
        }
        if counted || overflow_banned {
            return Ok(new_ban.then_some(until));
        }
        let name = super::overflow_name(super::overflow_shard(net));
        let (until, new_ban, _) = self
            .count_failure(scripts, rule, &self.net_base(&name), &name, true)
            .await?;
        if until > 0 {
            self.remember_overflow_ban(&name, until);
        }
        Ok(new_ban.then_some(until))
    }

    /// One failure on the record at `base` (`auth_fail.lua`): the ban's end or 0, whether
    /// this failure started it, and whether it was counted (`false`: no record, and
    /// `may_create` was false).
    async fn count_failure(
        &self,
        scripts: &Scripts,
        rule: &keyguard_policy::anomaly::AuthFailureRule,
        base: &str,
        name: &str,
        may_create: bool,
    ) -> Result<(u64, bool, bool), StoreError> {
        let mut inv = scripts.auth_fail.prepare_invoke();
        inv.key(base)
            .arg(rule.window_ms)
            .arg(rule.max_failures)
            .arg(rule.ban_ms)
            .arg(name)
            .arg(flag(may_create));
        let mut c = self.conn().await?;
        let (until, new_ban, counted): (u64, u8, u8) =
            self.deadline(inv.invoke_async(&mut c)).await?;
        Ok((until, new_ban == 1, counted == 1))
    }

    /// Blocks `net` for every key until `until` (a canary was used from it).
    pub async fn trip(
        &self,
        scripts: &Scripts,
        net: ClientNet,
        until: UnixMillis,
    ) -> Result<(), StoreError> {
        self.remember_standing(net, "tripped", until);
        let mut inv = scripts.trip.prepare_invoke();
        inv.key(self.net_base(net)).arg(until).arg(net.to_string());
        let mut c = self.conn().await?;
        self.deadline(inv.invoke_async::<u64>(&mut c)).await?;
        Ok(())
    }

    /// Keys that signed a request from `net` at or after `since`, from the network's
    /// shared-IP set (`None` when that rule is off: the set is not kept).
    pub async fn seen_from(
        &self,
        rules: &SharedRules,
        net: ClientNet,
        since: UnixMillis,
    ) -> Result<Option<Vec<String>>, StoreError> {
        if rules.anomaly.shared_ip.is_none() {
            return Ok(None);
        }
        let mut cmd = redis::cmd("ZRANGEBYSCORE");
        cmd.arg(format!("{}:pk", self.net_base(net)))
            .arg(since)
            .arg("+inf");
        self.query(&cmd).await.map(Some)
    }

    /// Forgets `net` as known for `key_id` of `account` if it was seen from there at or
    /// after `since` (a canary was used from it): its next use from `net` is on new-IP
    /// probation. Returns whether it was forgotten.
    pub async fn forget_network(
        &self,
        scripts: &Scripts,
        account: &str,
        key_id: &str,
        net: ClientNet,
        since: UnixMillis,
    ) -> Result<bool, StoreError> {
        let mut inv = scripts.forget.prepare_invoke();
        inv.key(format!("{}:hist:{key_id}", self.account_base(account)))
            .arg(net.to_string())
            .arg(since);
        let mut c = self.conn().await?;
        let n: u8 = self.deadline(inv.invoke_async(&mut c)).await?;
        Ok(n == 1)
    }
}

/// A cluster's two replies as one: the network part allowed; the account part decides,
/// and a shadow verdict of either is kept.
fn merge(net: Vec<String>, mut acct: Vec<String>) -> Vec<String> {
    if acct.len() == 6 && acct[1].is_empty() {
        if let Some(w) = net.get(1) {
            acct[1] = w.clone();
        }
    }
    acct
}

/// A random id for a velocity entry.
fn entry_id() -> Result<String, StoreError> {
    let mut b = [0u8; 12];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b)
        .map_err(|_| StoreError::Reply("no randomness for an entry id".into()))?;
    Ok(hex::encode(b))
}

fn deny(d: Deny) -> Admitted {
    Admitted {
        deny: Some(d),
        ..Admitted::default()
    }
}

/// The deny codes the scripts return.
fn code_to_deny(code: &str) -> Option<Deny> {
    Some(match code {
        "ip_blocked" => Deny::IpBlocked,
        "ip_banned" => Deny::IpBanned,
        "rate_limited" => Deny::RateLimited,
        "too_many_ips" => Deny::TooManyIps,
        "key_dormant" => Deny::KeyDormant,
        "new_ip_probation" => Deny::NewIpProbation,
        "invalid_nonce" => Deny::InvalidNonce,
        "replay" => Deny::Replay,
        "withdraw_limit" => LedgerKind::Withdraw.deny(),
        "order_limit" => LedgerKind::Order.deny(),
        "invalid_field" => Deny::InvalidField,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use keyguard_policy::decimal::parse_decimal;

    #[test]
    fn fixed_width_numbers_compare_and_add_as_strings() {
        let f = |s: &str| fixed(parse_decimal(s).unwrap(), 30, 18, false).unwrap();
        assert_eq!(f("1.5").len(), 48);
        assert!(f("9.99") < f("10"));
        assert!(f("0.000000000000000001") > f("0"));
        assert_eq!(
            fixed(
                parse_decimal("0.0000000000000000001").unwrap(),
                30,
                18,
                false
            ),
            None
        );
        let n = |s: &str| fixed(parse_decimal(s).unwrap(), 30, 28, true).unwrap();
        assert!(n("1733000000.5") > n("1733000000"));
        assert!(n("99") < n("100"));
        assert_eq!(n("100"), n("100.000"));
    }

    #[test]
    fn a_sighting_is_fresh_for_at_most_a_second_and_only_for_its_own_pair() {
        let r = RecentSightings::default();
        let net = ClientNet::V4(std::net::Ipv4Addr::new(192, 0, 2, 1));
        let other = ClientNet::V4(std::net::Ipv4Addr::new(192, 0, 2, 2));
        let t = 1_796_000_000_000;
        assert!(!r.fresh("k1", net, t, 5_000), "never recorded");
        r.record("k1", net, t);
        assert!(r.fresh("k1", net, t + 999, 5_000));
        assert!(
            !r.fresh("k1", net, t + 1_000, 5_000),
            "capped at REFRESH_MS"
        );
        assert!(r.fresh("k1", net, t + 99, 100));
        assert!(
            !r.fresh("k1", net, t + 100, 100),
            "a short window's 1/20 rules"
        );
        assert!(!r.fresh("k1", net, t, 0), "no refresh: never fresh");
        assert!(!r.fresh("k2", net, t + 1, 5_000), "another key");
        assert!(!r.fresh("k1", other, t + 1, 5_000), "another network");
        // A clock that went back is not a fresh sighting from the future.
        assert!(!r.fresh("k1", net, t - 10, 5_000));
    }

    #[test]
    fn every_script_code_is_a_deny_code() {
        for code in [
            "ip_blocked",
            "ip_banned",
            "rate_limited",
            "too_many_ips",
            "key_dormant",
            "new_ip_probation",
            "invalid_nonce",
            "replay",
            "withdraw_limit",
            "order_limit",
            "invalid_field",
        ] {
            assert_eq!(code_to_deny(code).map(Deny::code), Some(code));
        }
    }
}
