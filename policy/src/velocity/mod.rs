//! The velocity ledger: exact sliding-window sums of withdrawals and orders per key and per
//! account, reserved atomically before a request is forwarded.
//!
//! # Semantics
//! - A [`VelocityRule`] limits the amount and/or count of one [`LedgerKind`] (withdrawals,
//!   or orders valued at price × quantity) per [`SubjectKind`] (each key, or each account
//!   over all its keys) and per asset over a sliding window. Asset `*` ([`AssetMatch::Any`])
//!   applies to every asset, each counted separately (amounts of different assets are
//!   never added up); rules naming an asset replace the `*` rules of the same kind and
//!   subject for that asset.
//! - An entry made at `at` counts while `now < at + window`.
//! - [`VelocityStore::reserve`] checks every applicable rule of the key *and* the account
//!   and records the entry in one atomic step, so concurrent requests cannot together pass
//!   a limit each would pass alone. Splitting a withdrawal into many small ones changes
//!   nothing: the window holds a sum.
//! - [`VelocityStore::release`] gives the capacity back; the gateway calls it only when the
//!   upstream answered with a definitive failure. A timeout or a crash leaves the entry
//!   reserved, i.e. spent: we cannot know the exchange did not execute it.
//!   [`VelocityStore::commit`] marks it executed and changes no sum.
//!
//! # Memory and persistence
//! [`MemoryVelocity`] keeps, per (subject, kind, asset), the entries of the longest window
//! and a running sum per window, so a reservation costs O(rules), not O(entries). Entries
//! older than the longest window are dropped as buckets are touched and by
//! [`MemoryVelocity::sweep`]. The gateway persists the ledger by writing each
//! [`LedgerRecord`] (see [`MemoryVelocity::record`]) and rebuilds it on start with
//! [`MemoryVelocity::restore`].

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::action::Action;
use crate::decimal::Decimal;
use crate::key::KeyRecord;
use crate::route::{Classified, RouteSpec};
use crate::time::UnixMillis;
use crate::{Deny, UnknownName};

/// What a ledger entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LedgerKind {
    /// A withdrawal; its amount is the amount withdrawn.
    Withdraw,
    /// An order; its amount is the notional (price × quantity, in the quote asset).
    Order,
}

impl LedgerKind {
    /// The lower-case name used in config and storage.
    pub const fn as_str(self) -> &'static str {
        match self {
            LedgerKind::Withdraw => "withdraw",
            LedgerKind::Order => "order",
        }
    }

    /// The deny code when a rule of this kind refuses a reservation.
    pub const fn deny(self) -> Deny {
        match self {
            LedgerKind::Withdraw => Deny::WithdrawLimit,
            LedgerKind::Order => Deny::OrderLimit,
        }
    }
}

impl FromStr for LedgerKind {
    type Err = UnknownName;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "withdraw" => Ok(LedgerKind::Withdraw),
            "order" => Ok(LedgerKind::Order),
            _ => Err(UnknownName),
        }
    }
}

/// Whose activity a rule sums.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SubjectKind {
    /// Each key on its own.
    Key,
    /// Each account, all its keys together.
    Account,
}

impl SubjectKind {
    /// The lower-case name used in config and storage.
    pub const fn as_str(self) -> &'static str {
        match self {
            SubjectKind::Key => "key",
            SubjectKind::Account => "account",
        }
    }
}

impl FromStr for SubjectKind {
    type Err = UnknownName;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "key" => Ok(SubjectKind::Key),
            "account" => Ok(SubjectKind::Account),
            _ => Err(UnknownName),
        }
    }
}

/// Which assets a rule applies to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum AssetMatch {
    /// `*`: every asset, each summed separately.
    Any,
    /// One asset (lower-case, as the route table extracts it: `btc`, `btc_jpy`).
    Exact(String),
}

impl FromStr for AssetMatch {
    type Err = std::convert::Infallible;
    /// `*` is any asset; anything else names one (lower-cased).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "*" => AssetMatch::Any,
            asset => AssetMatch::Exact(asset.to_ascii_lowercase()),
        })
    }
}

/// One velocity limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VelocityRule {
    /// Withdrawals or orders.
    pub kind: LedgerKind,
    /// Per key or per account.
    pub subject: SubjectKind,
    /// Which assets.
    pub asset: AssetMatch,
    /// The sliding window (ms).
    pub window_ms: u64,
    /// The most amount (withdrawals) or notional (orders) inside the window.
    pub max_amount: Option<Decimal>,
    /// The most entries inside the window.
    pub max_count: Option<u64>,
}

/// All velocity limits.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VelocityConfig {
    /// The rules; all that apply to a request must pass.
    pub rules: Vec<VelocityRule>,
}

/// A velocity rule that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VelocityConfigError {
    /// A window of zero length limits nothing.
    #[error("velocity rule {0}: the window must be longer than zero")]
    ZeroWindow(usize),
    /// Neither an amount nor a count: the rule would limit nothing.
    #[error("velocity rule {0}: set max_amount, max_count or both")]
    NoLimit(usize),
}

impl VelocityConfig {
    /// Checks every rule can limit something.
    pub fn validate(&self) -> Result<(), VelocityConfigError> {
        for (i, r) in self.rules.iter().enumerate() {
            if r.window_ms == 0 {
                return Err(VelocityConfigError::ZeroWindow(i));
            }
            if r.max_amount.is_none() && r.max_count.is_none() {
                return Err(VelocityConfigError::NoLimit(i));
            }
        }
        Ok(())
    }
}

impl VelocityConfig {
    /// The rules that apply to a reservation of `kind` on `asset` for `subject`: the rules
    /// naming the asset if there are any, else the `*` rules (the same choice as
    /// [`MemoryVelocity`]). A shared (Redis) ledger applies the same list.
    pub fn applicable(
        &self,
        kind: LedgerKind,
        subject: SubjectKind,
        asset: &str,
    ) -> Vec<&VelocityRule> {
        let of_set = || {
            self.rules
                .iter()
                .filter(move |r| r.kind == kind && r.subject == subject)
        };
        let exact: Vec<&VelocityRule> = of_set()
            .filter(|r| matches!(&r.asset, AssetMatch::Exact(a) if a == asset))
            .collect();
        if !exact.is_empty() {
            return exact;
        }
        of_set().filter(|r| r.asset == AssetMatch::Any).collect()
    }
}

/// What one request would add to the ledger.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reservation<'a> {
    /// Withdrawal or order.
    pub kind: LedgerKind,
    /// The key's id.
    pub key_id: &'a str,
    /// The key's account.
    pub account: &'a str,
    /// The asset (withdrawals) or symbol/pair (orders), lower-case; empty when the request
    /// named none.
    pub asset: &'a str,
    /// The amount or notional; `None` when the request does not say (a market order
    /// without a price). A rule with `max_amount` refuses such a request: it cannot be
    /// valued, so it cannot be shown to fit.
    pub amount: Option<Decimal>,
}

impl<'a> Reservation<'a> {
    /// What a classified request reserves, if anything: withdrawals always; `trade`
    /// requests on routes that map a price or quantity (order placement) as orders valued
    /// at price × quantity. Cancels and reads reserve nothing.
    pub fn for_request(
        route: &RouteSpec,
        classified: &'a Classified,
        key: &'a KeyRecord,
    ) -> Option<Reservation<'a>> {
        let facts = &classified.facts;
        let (kind, amount) = match classified.action {
            Action::Withdraw => (LedgerKind::Withdraw, facts.amount),
            Action::Trade if route.fields.price.is_some() || route.fields.quantity.is_some() => {
                let notional = match (facts.price, facts.quantity) {
                    (Some(p), Some(q)) => p.checked_mul(q),
                    _ => None,
                };
                (LedgerKind::Order, notional)
            }
            _ => return None,
        };
        Some(Reservation {
            kind,
            key_id: &key.key_id,
            account: &key.account,
            asset: facts.asset.as_deref().unwrap_or(""),
            amount,
        })
    }
}

/// Names one reservation for [`VelocityStore::commit`] / [`VelocityStore::release`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ReservationId(u64);

impl ReservationId {
    /// Nothing was reserved (no rule applied); commit and release ignore it.
    pub const NONE: ReservationId = ReservationId(0);

    /// The id as stored.
    pub const fn get(self) -> u64 {
        self.0
    }

    /// An id read back from storage.
    pub const fn from_raw(id: u64) -> Self {
        ReservationId(id)
    }

    /// Whether this is [`ReservationId::NONE`].
    pub const fn is_none(self) -> bool {
        self.0 == 0
    }
}

impl fmt::Display for ReservationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Where a reservation is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EntryState {
    /// Reserved, upstream answer pending (or never came: counts as spent).
    Reserved,
    /// The upstream accepted it.
    Committed,
    /// The upstream definitively refused it; it no longer counts.
    Released,
}

impl EntryState {
    /// The lower-case name used in storage.
    pub const fn as_str(self) -> &'static str {
        match self {
            EntryState::Reserved => "reserved",
            EntryState::Committed => "committed",
            EntryState::Released => "released",
        }
    }
}

impl FromStr for EntryState {
    type Err = UnknownName;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "reserved" => Ok(EntryState::Reserved),
            "committed" => Ok(EntryState::Committed),
            "released" => Ok(EntryState::Released),
            _ => Err(UnknownName),
        }
    }
}

/// One reservation as stored: it counts for its key and for its account, so one row
/// carries both (a crash can never persist half of it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerRecord {
    /// The reservation id ([`ReservationId::get`]).
    pub id: u64,
    /// The key's id.
    pub key_id: String,
    /// The account.
    pub account: String,
    /// The asset or pair, lower-case.
    pub asset: String,
    /// Withdrawal or order.
    pub kind: LedgerKind,
    /// The amount or notional, exact; `None` for an order that could not be valued.
    pub amount: Option<Decimal>,
    /// When it was reserved (the ledger's clock, see [`MemoryVelocity`]).
    pub at: UnixMillis,
    /// Its state.
    pub state: EntryState,
}

/// Shared velocity state: in memory here, a Redis implementation (atomic Lua) for the
/// distributed setup. Implementations hold the rules.
pub trait VelocityStore: Send + Sync {
    /// Checks every rule that applies to `request` for its key and its account and, if all
    /// pass, records it — atomically. [`ReservationId::NONE`] when no rule applies.
    ///
    /// Errors: [`Deny::WithdrawLimit`] / [`Deny::OrderLimit`] when a limit would be passed,
    /// [`Deny::InvalidField`] when an amount rule applies but the request has no amount,
    /// [`Deny::StateUnavailable`] when the store cannot answer (fail closed).
    fn reserve(&self, request: &Reservation<'_>, now: UnixMillis) -> Result<ReservationId, Deny>;

    /// Marks a reservation executed. Unknown (expired) ids and [`ReservationId::NONE`] are
    /// ignored.
    fn commit(&self, id: ReservationId) -> Result<(), Deny>;

    /// Gives a reservation's capacity back after a definitive upstream failure. Committed
    /// reservations stay (the exchange executed them); unknown ids are ignored.
    fn release(&self, id: ReservationId) -> Result<(), Deny>;
}

/// Shards of [`MemoryVelocity`]; a key and its account always share one (the shard is
/// chosen by account), so a reservation locks exactly one.
const SHARD_BITS: u32 = 4;
const SHARDS: usize = 1 << SHARD_BITS;

/// One rule, compiled: where its window's running sum is kept.
#[derive(Debug, Clone)]
struct CompiledRule {
    slot: usize,
    max_amount: Option<Decimal>,
    max_count: Option<u64>,
}

/// The rules of one (kind, subject).
#[derive(Debug, Clone, Default)]
struct RuleSet {
    /// Distinct windows, one running sum each in every bucket.
    windows: Vec<u64>,
    any: Vec<CompiledRule>,
    exact: HashMap<String, Vec<CompiledRule>>,
}

impl RuleSet {
    fn applicable(&self, asset: &str) -> &[CompiledRule] {
        self.exact.get(asset).unwrap_or(&self.any)
    }

    fn longest(&self) -> u64 {
        self.windows.iter().copied().max().unwrap_or(0)
    }
}

#[derive(Debug, Clone)]
struct Rules {
    /// Indexed by [`Rules::index`].
    sets: [RuleSet; 4],
    longest: u64,
}

impl Rules {
    fn index(kind: LedgerKind, subject: SubjectKind) -> usize {
        (kind as usize) * 2 + subject as usize
    }

    fn set(&self, kind: LedgerKind, subject: SubjectKind) -> &RuleSet {
        &self.sets[Rules::index(kind, subject)]
    }

    fn compile(cfg: &VelocityConfig) -> Result<Rules, VelocityConfigError> {
        cfg.validate()?;
        let mut sets: [RuleSet; 4] = Default::default();
        for r in &cfg.rules {
            let set = &mut sets[Rules::index(r.kind, r.subject)];
            let slot = match set.windows.iter().position(|w| *w == r.window_ms) {
                Some(s) => s,
                None => {
                    set.windows.push(r.window_ms);
                    set.windows.len() - 1
                }
            };
            let rule = CompiledRule {
                slot,
                max_amount: r.max_amount,
                max_count: r.max_count,
            };
            match &r.asset {
                AssetMatch::Any => set.any.push(rule),
                AssetMatch::Exact(a) => set.exact.entry(a.clone()).or_default().push(rule),
            }
        }
        let longest = sets.iter().map(RuleSet::longest).max().unwrap_or(0);
        Ok(Rules { sets, longest })
    }
}

/// The running totals of one window in one bucket.
#[derive(Debug, Clone)]
struct WindowSum {
    window_ms: u64,
    /// Position of the oldest entry still inside the window.
    start: u64,
    amount: Decimal,
    count: u64,
}

#[derive(Debug, Clone)]
struct Entry {
    at: UnixMillis,
    amount: Decimal,
    live: bool,
}

/// The entries of one (subject, kind, asset), oldest first. Positions are absolute
/// (`base` is the position of `entries[0]`) so records can point at their entries while
/// old ones are popped.
#[derive(Debug, Clone)]
struct Bucket {
    /// The asset, the same `Arc` as the map key, so that one lookup finds both.
    asset: Arc<str>,
    base: u64,
    entries: VecDeque<Entry>,
    windows: Vec<WindowSum>,
}

impl Bucket {
    fn new(asset: Arc<str>, windows: &[u64]) -> Bucket {
        Bucket {
            asset,
            base: 0,
            entries: VecDeque::new(),
            windows: windows
                .iter()
                .map(|&window_ms| WindowSum {
                    window_ms,
                    start: 0,
                    amount: Decimal::ZERO,
                    count: 0,
                })
                .collect(),
        }
    }

    /// Moves every window to `now` and drops entries no window holds any more.
    fn advance(&mut self, now: UnixMillis) {
        let end = self.base + self.entries.len() as u64;
        for w in &mut self.windows {
            while w.start < end {
                let e = &self.entries[(w.start - self.base) as usize];
                if e.at.saturating_add(w.window_ms) > now {
                    break;
                }
                if e.live {
                    w.amount -= e.amount;
                    w.count -= 1;
                }
                w.start += 1;
            }
        }
        let keep_from = self.windows.iter().map(|w| w.start).min().unwrap_or(end);
        while self.base < keep_from {
            self.entries.pop_front();
            self.base += 1;
        }
    }

    /// The window sums of `slot` (after `advance`).
    fn sums(&self, slot: usize) -> (Decimal, u64) {
        let w = &self.windows[slot];
        (w.amount, w.count)
    }

    /// Appends an entry at `at` (not older than the newest) and returns its position.
    fn push(&mut self, at: UnixMillis, amount: Decimal) -> u64 {
        self.entries.push_back(Entry {
            at,
            amount,
            live: true,
        });
        for w in &mut self.windows {
            w.amount += amount;
            w.count += 1;
        }
        self.base + self.entries.len() as u64 - 1
    }

    /// Stops counting the entry at `pos`, if it is still here.
    fn release(&mut self, pos: u64) {
        let Some(i) = pos.checked_sub(self.base) else {
            return;
        };
        let Some(e) = self.entries.get_mut(i as usize) else {
            return;
        };
        if !e.live {
            return;
        }
        e.live = false;
        for w in &mut self.windows {
            if pos >= w.start {
                w.amount -= e.amount;
                w.count -= 1;
            }
        }
    }
}

/// Whether one more entry of `amount` fits every rule, given each rule's window sums.
fn fits(
    rules: &[CompiledRule],
    amount: Option<Decimal>,
    kind: LedgerKind,
    sums: impl Fn(usize) -> (Decimal, u64),
) -> Result<(), Deny> {
    for rule in rules {
        let (sum, count) = sums(rule.slot);
        if rule.max_count.is_some_and(|max| count >= max) {
            return Err(kind.deny());
        }
        if let Some(max) = rule.max_amount {
            let amount = amount.ok_or(Deny::InvalidField)?;
            // A sum that overflows cannot be shown to fit: refuse.
            let total = sum.checked_add(amount).ok_or(kind.deny())?;
            if total > max {
                return Err(kind.deny());
            }
        }
    }
    Ok(())
}

/// FNV-1a for the ledger's maps: their keys (key ids, accounts, assets, reservation ids)
/// come from our own key store and route table after authentication, never straight from
/// an attacker, so the DoS-resistant (and slower) SipHash buys nothing here.
#[derive(Debug, Clone, Copy)]
struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Hasher for Fnv {
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
        }
    }

    fn write_u64(&mut self, n: u64) {
        // Sequential ids: one multiply spreads them over the table.
        self.0 = (self.0 ^ n).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

type FastMap<K, V> = HashMap<K, V, BuildHasherDefault<Fnv>>;

/// A subject's buckets by kind and asset. Names are `Arc<str>` so live records share them
/// instead of allocating three strings per reservation.
#[derive(Debug)]
struct Ledger {
    /// The subject id, the same `Arc` as the map key, so that one lookup finds both.
    id: Arc<str>,
    withdraw: FastMap<Arc<str>, Bucket>,
    order: FastMap<Arc<str>, Bucket>,
}

impl Ledger {
    fn buckets(&mut self, kind: LedgerKind) -> &mut FastMap<Arc<str>, Bucket> {
        match kind {
            LedgerKind::Withdraw => &mut self.withdraw,
            LedgerKind::Order => &mut self.order,
        }
    }
}

/// A live reservation and where its entries are.
#[derive(Debug)]
struct Live {
    key_id: Arc<str>,
    account: Arc<str>,
    asset: Arc<str>,
    kind: LedgerKind,
    amount: Option<Decimal>,
    at: UnixMillis,
    state: EntryState,
    key_pos: Option<u64>,
    account_pos: Option<u64>,
}

impl Live {
    fn record(&self, id: u64) -> LedgerRecord {
        LedgerRecord {
            id,
            key_id: self.key_id.to_string(),
            account: self.account.to_string(),
            asset: self.asset.to_string(),
            kind: self.kind,
            amount: self.amount,
            at: self.at,
            state: self.state,
        }
    }
}

/// Where [`Shard::record`] put an entry, and the interned names it used.
struct Recorded {
    pos: u64,
    subject: Arc<str>,
    asset: Arc<str>,
}

#[derive(Debug, Default)]
struct Shard {
    /// The newest time this shard has seen; see [`MemoryVelocity`] on clocks going back.
    latest: UnixMillis,
    records: FastMap<u64, Live>,
    keys: FastMap<Arc<str>, Ledger>,
    accounts: FastMap<Arc<str>, Ledger>,
}

impl Shard {
    fn subjects(&mut self, subject: SubjectKind) -> &mut FastMap<Arc<str>, Ledger> {
        match subject {
            SubjectKind::Key => &mut self.keys,
            SubjectKind::Account => &mut self.accounts,
        }
    }

    /// The bucket, advanced to `now`, if it exists.
    fn existing(
        &mut self,
        subject: SubjectKind,
        id: &str,
        kind: LedgerKind,
        asset: &str,
        now: UnixMillis,
    ) -> Option<&mut Bucket> {
        let bucket = self
            .subjects(subject)
            .get_mut(id)?
            .buckets(kind)
            .get_mut(asset)?;
        bucket.advance(now);
        Some(bucket)
    }

    /// The bucket, created if needed, with the interned subject id and asset.
    fn bucket(
        &mut self,
        subject: SubjectKind,
        id: &str,
        kind: LedgerKind,
        asset: &str,
        windows: &[u64],
    ) -> (Arc<str>, Arc<str>, &mut Bucket) {
        let ledgers = self.subjects(subject);
        // One lookup when the entries exist (every request but a subject's first).
        if !ledgers.contains_key(id) {
            let id: Arc<str> = Arc::from(id);
            let ledger = Ledger {
                id: Arc::clone(&id),
                withdraw: FastMap::default(),
                order: FastMap::default(),
            };
            ledgers.insert(id, ledger);
        }
        let ledger = ledgers.get_mut(id).expect("inserted above");
        let subject_id = Arc::clone(&ledger.id);
        let buckets = ledger.buckets(kind);
        if !buckets.contains_key(asset) {
            let asset: Arc<str> = Arc::from(asset);
            buckets.insert(Arc::clone(&asset), Bucket::new(asset, windows));
        }
        let bucket = buckets.get_mut(asset).expect("inserted above");
        (subject_id, Arc::clone(&bucket.asset), bucket)
    }

    /// Checks one subject's rules; `Ok` when there are none.
    fn check(
        &mut self,
        rules: &Rules,
        subject: SubjectKind,
        id: &str,
        req: &Reservation<'_>,
        now: UnixMillis,
    ) -> Result<(), Deny> {
        let applicable = rules.set(req.kind, subject).applicable(req.asset);
        if applicable.is_empty() {
            return Ok(());
        }
        match self.existing(subject, id, req.kind, req.asset, now) {
            Some(bucket) => fits(applicable, req.amount, req.kind, |slot| bucket.sums(slot)),
            None => fits(applicable, req.amount, req.kind, |_| (Decimal::ZERO, 0)),
        }
    }

    /// Records an entry for one subject if any of its rules apply.
    #[allow(clippy::too_many_arguments)]
    fn record(
        &mut self,
        rules: &Rules,
        subject: SubjectKind,
        id: &str,
        kind: LedgerKind,
        asset: &str,
        amount: Option<Decimal>,
        at: UnixMillis,
    ) -> Option<Recorded> {
        let set = rules.set(kind, subject);
        if set.applicable(asset).is_empty() {
            return None;
        }
        let (subject, asset, bucket) = self.bucket(subject, id, kind, asset, &set.windows);
        let pos = bucket.push(at, amount.unwrap_or(Decimal::ZERO));
        Some(Recorded {
            pos,
            subject,
            asset,
        })
    }

    /// Records a reservation for its key and account; `false` if no rule applies to either.
    #[allow(clippy::too_many_arguments)]
    fn record_both(
        &mut self,
        rules: &Rules,
        id: u64,
        key_id: &str,
        account: &str,
        kind: LedgerKind,
        asset: &str,
        amount: Option<Decimal>,
        at: UnixMillis,
        state: EntryState,
    ) -> bool {
        let key = self.record(rules, SubjectKind::Key, key_id, kind, asset, amount, at);
        let acct = self.record(
            rules,
            SubjectKind::Account,
            account,
            kind,
            asset,
            amount,
            at,
        );
        let Some(asset) = key.as_ref().or(acct.as_ref()).map(|r| Arc::clone(&r.asset)) else {
            return false;
        };
        let live = Live {
            key_id: key
                .as_ref()
                .map_or_else(|| Arc::from(key_id), |r| Arc::clone(&r.subject)),
            account: acct
                .as_ref()
                .map_or_else(|| Arc::from(account), |r| Arc::clone(&r.subject)),
            asset,
            kind,
            amount,
            at,
            state,
            key_pos: key.map(|r| r.pos),
            account_pos: acct.map(|r| r.pos),
        };
        self.records.insert(id, live);
        true
    }

    /// Releases a reserved record; committed ones stay.
    fn release(&mut self, id: u64) {
        if self
            .records
            .get(&id)
            .is_none_or(|l| l.state != EntryState::Reserved)
        {
            return;
        }
        let live = self.records.remove(&id).expect("checked above");
        for (subject, sid, pos) in [
            (SubjectKind::Key, &live.key_id, live.key_pos),
            (SubjectKind::Account, &live.account, live.account_pos),
        ] {
            let Some(pos) = pos else { continue };
            if let Some(bucket) = self
                .subjects(subject)
                .get_mut(&**sid)
                .and_then(|l| l.buckets(live.kind).get_mut(&*live.asset))
            {
                bucket.release(pos);
            }
        }
    }

    fn sweep(&mut self, rules: &Rules, now: UnixMillis) {
        let now = now.max(self.latest);
        for ledgers in [&mut self.keys, &mut self.accounts] {
            ledgers.retain(|_, ledger| {
                for kind in [LedgerKind::Withdraw, LedgerKind::Order] {
                    ledger.buckets(kind).retain(|_, bucket| {
                        bucket.advance(now);
                        !bucket.entries.is_empty()
                    });
                }
                !(ledger.withdraw.is_empty() && ledger.order.is_empty())
            });
        }
        let longest = rules.longest;
        self.records
            .retain(|_, live| live.at.saturating_add(longest) > now);
    }
}

/// The in-process [`VelocityStore`]: 16 mutex-protected shards chosen by account, so a
/// reservation (key and account buckets together) takes one short lock.
///
/// Time never runs backwards inside a shard: a `now` older than one already seen is taken
/// as the newest seen. A wall clock stepping back therefore keeps entries in their windows
/// longer (stricter), never shorter.
#[derive(Debug)]
pub struct MemoryVelocity {
    rules: Rules,
    shards: Box<[Mutex<Shard>]>,
    /// The next id's sequence number; ids are `seq << SHARD_BITS | shard`.
    next_seq: AtomicU64,
}

impl MemoryVelocity {
    /// An empty ledger for `cfg`.
    pub fn new(cfg: &VelocityConfig) -> Result<Self, VelocityConfigError> {
        Ok(MemoryVelocity {
            rules: Rules::compile(cfg)?,
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            next_seq: AtomicU64::new(1),
        })
    }

    /// A ledger rebuilt from stored records (released ones are skipped), for a restart.
    ///
    /// New ids are greater than every id in `records` and than `id_floor`; pass the largest
    /// id ever stored (`SELECT MAX(id)`) if old records are kept beyond the windows, so ids
    /// never repeat.
    pub fn restore(
        cfg: &VelocityConfig,
        records: impl IntoIterator<Item = LedgerRecord>,
        id_floor: u64,
    ) -> Result<Self, VelocityConfigError> {
        let ledger = MemoryVelocity::new(cfg)?;
        let mut records: Vec<LedgerRecord> = records
            .into_iter()
            .filter(|r| r.state != EntryState::Released)
            .collect();
        // Entries must be appended oldest first.
        records.sort_by_key(|r| (r.at, r.id));
        let mut max_id = id_floor;
        for r in records {
            max_id = max_id.max(r.id);
            let mut shard = ledger.shard(shard_of(&r.account));
            shard.latest = shard.latest.max(r.at);
            shard.record_both(
                &ledger.rules,
                r.id,
                &r.key_id,
                &r.account,
                r.kind,
                &r.asset,
                r.amount,
                r.at,
                r.state,
            );
        }
        ledger
            .next_seq
            .store((max_id >> SHARD_BITS) + 1, Ordering::Relaxed);
        Ok(ledger)
    }

    /// Every live record (reserved or committed, inside the longest window), by id: what
    /// the gateway writes out to rebuild the ledger with [`MemoryVelocity::restore`].
    pub fn export(&self) -> Vec<LedgerRecord> {
        let mut out: Vec<LedgerRecord> = self
            .shards
            .iter()
            .flat_map(|s| {
                let shard = lock(s);
                shard
                    .records
                    .iter()
                    .map(|(id, l)| l.record(*id))
                    .collect::<Vec<_>>()
            })
            .collect();
        out.sort_by_key(|r| r.id);
        out
    }

    /// The record of a live reservation, for the gateway to persist after `reserve` and
    /// `commit` (a released reservation is gone: delete its row or mark it released).
    pub fn record(&self, id: ReservationId) -> Option<LedgerRecord> {
        if id.is_none() {
            return None;
        }
        self.find(id.get(), |shard| {
            shard.records.get(&id.get()).map(|l| l.record(id.get()))
        })
    }

    /// Drops entries and records older than every window and empty buckets; the gateway
    /// calls it periodically. Returns the live records left.
    pub fn sweep(&self, now: UnixMillis) -> usize {
        self.shards
            .iter()
            .map(|s| {
                let mut shard = lock(s);
                shard.sweep(&self.rules, now);
                shard.records.len()
            })
            .sum()
    }

    fn shard(&self, i: usize) -> MutexGuard<'_, Shard> {
        lock(&self.shards[i])
    }

    /// Runs `f` on the shard `id` was issued from, then (for ids restored from another
    /// layout) on the others until one answers.
    fn find<T>(&self, id: u64, mut f: impl FnMut(&mut Shard) -> Option<T>) -> Option<T> {
        let home = (id as usize) & (SHARDS - 1);
        if let Some(v) = f(&mut self.shard(home)) {
            return Some(v);
        }
        (0..SHARDS)
            .filter(|i| *i != home)
            .find_map(|i| f(&mut self.shard(i)))
    }
}

/// A poisoned shard only means another thread panicked mid-update of plain sums; the
/// data is still the best we have, and refusing every later request would be worse.
fn lock(m: &Mutex<Shard>) -> MutexGuard<'_, Shard> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// FNV-1a: deterministic, so a restored record lands where its id says it was issued
/// (accounts come from our own key store, not from attackers).
fn shard_of(account: &str) -> usize {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in account.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h as usize) & (SHARDS - 1)
}

impl VelocityStore for MemoryVelocity {
    fn reserve(&self, req: &Reservation<'_>, now: UnixMillis) -> Result<ReservationId, Deny> {
        let rules = &self.rules;
        let applies = |subject| {
            !rules
                .set(req.kind, subject)
                .applicable(req.asset)
                .is_empty()
        };
        if !applies(SubjectKind::Key) && !applies(SubjectKind::Account) {
            return Ok(ReservationId::NONE);
        }
        let home = shard_of(req.account);
        let mut shard = self.shard(home);
        let now = now.max(shard.latest);
        shard.latest = now;
        shard.check(rules, SubjectKind::Key, req.key_id, req, now)?;
        shard.check(rules, SubjectKind::Account, req.account, req, now)?;
        let seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
        let id = (seq << SHARD_BITS) | home as u64;
        shard.record_both(
            rules,
            id,
            req.key_id,
            req.account,
            req.kind,
            req.asset,
            req.amount,
            now,
            EntryState::Reserved,
        );
        Ok(ReservationId(id))
    }

    fn commit(&self, id: ReservationId) -> Result<(), Deny> {
        if id.is_none() {
            return Ok(());
        }
        self.find(id.get(), |shard| {
            let live = shard.records.get_mut(&id.get())?;
            live.state = EntryState::Committed;
            Some(())
        });
        Ok(())
    }

    fn release(&self, id: ReservationId) -> Result<(), Deny> {
        if id.is_none() {
            return Ok(());
        }
        self.find(id.get(), |shard| {
            shard
                .records
                .contains_key(&id.get())
                .then(|| shard.release(id.get()))
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests;
