//! The scenarios: who sends what, from where, with which keys.
//!
//! A scenario is planned in two steps: [`plan`] lists the keys to provision (accounts,
//! scopes, allowlists, withdrawal addresses), then [`Plan::actors`] builds the clients
//! once the gateway has issued the keys. Source addresses are loopback addresses, one
//! block per population, so every population is a distinct set of client IPs:
//!
//! | block | who |
//! | --- | --- |
//! | 127.1.x.y | `trader`: legitimate traders, one address per account |
//! | 127.2.x.y | `zaif-owner`: owners of the zaif-2018 keys |
//! | 127.66.0.1-4 | `zaif-attacker`: the four hosting-company IPs |
//! | 127.77.x.y | `stuffer`: random and guessed keys, bad signatures |
//! | 127.88.x.y | `flooder`: one stolen key from many IPs; its owner at 127.88.255.1 |
//! | 127.67.1.x, 127.3.0.x | `canary-owner`: owners in a shared cloud range, and owners without allowlist |
//! | 127.67.66.1-4 | `canary-attacker`: inside the same cloud range, holding real and canary keys |
//!
//! Owners use their keys first (a key without an allowlist learns its owner's IP on first
//! use); every attacker waits until each owner has had an answer.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::str::FromStr;
use std::sync::Arc;

use keyguard_policy::DialectKind;

use crate::harness::KeySpec;
use crate::runner::{ActorSpec, Pace, Script, Source, Tag};
use crate::workload::{guessed_key, random_token, withdraw_asset, Auth, KeyMaterial, Op, Planned};

/// A scenario name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScenarioName {
    /// Traders only.
    Legit,
    /// The January 2018 Zaif incident, replayed.
    Zaif2018,
    /// Random and guessed keys, bad signatures.
    Stuffing,
    /// One key from many IPs, far over its limits.
    Flood,
    /// Traders plus every attack at once.
    Mixed,
    /// A leaked set of real and canary keys, used from the attacker's networks.
    Canary,
}

impl ScenarioName {
    /// The command-line name.
    pub const fn as_str(self) -> &'static str {
        match self {
            ScenarioName::Legit => "legit",
            ScenarioName::Zaif2018 => "zaif-2018",
            ScenarioName::Stuffing => "stuffing",
            ScenarioName::Flood => "flood",
            ScenarioName::Mixed => "mixed",
            ScenarioName::Canary => "canary",
        }
    }
}

impl fmt::Display for ScenarioName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ScenarioName {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "legit" => ScenarioName::Legit,
            "zaif-2018" | "zaif2018" => ScenarioName::Zaif2018,
            "stuffing" => ScenarioName::Stuffing,
            "flood" => ScenarioName::Flood,
            "mixed" => ScenarioName::Mixed,
            "canary" => ScenarioName::Canary,
            _ => {
                return Err(format!(
                    "unknown scenario {s:?} (expected legit, zaif-2018, stuffing, flood, mixed or canary)"
                ))
            }
        })
    }
}

/// Open loop at a total rate, or closed loop with a number of attack clients.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Load {
    /// Requests per second in total; traders keep their own pace, attackers share the
    /// rest.
    Rate(f64),
    /// Attack clients (or, in `legit`, traders) sending as fast as answers come back.
    Concurrency(usize),
}

impl fmt::Display for Load {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Load::Rate(r) => write!(f, "open loop, {r:.0} req/s"),
            Load::Concurrency(c) => write!(f, "closed loop, {c} concurrent clients"),
        }
    }
}

/// Knobs of a scenario.
#[derive(Debug, Clone)]
pub struct Params {
    /// The dialect.
    pub dialect: DialectKind,
    /// The load.
    pub load: Load,
    /// Traders (default: 20 in `mixed`; in `legit`, enough for the rate).
    pub traders: Option<usize>,
    /// Requests per second of one trader (a busy trading bot; well inside per-key limits).
    pub trader_rate: f64,
}

impl Params {
    /// Defaults for `dialect` and `load`.
    pub fn new(dialect: DialectKind, load: Load) -> Params {
        Params {
            dialect,
            load,
            traders: None,
            trader_rate: 2.0,
        }
    }
}

/// Keys of the zaif-2018 replay: 10 withdraw keys with allowlists, 30 active keys without,
/// 62 dormant keys without (102, as in the incident).
pub const ZAIF_WITHDRAW_KEYS: usize = 10;
/// Active keys without an allowlist, used by their owners.
pub const ZAIF_ACTIVE_KEYS: usize = 30;
/// Long-unused keys without an allowlist.
pub const ZAIF_DORMANT_KEYS: usize = 62;

/// Keys of the canary scenario: real keys allowlisted to a cloud range the attacker also
/// rents (their allowlist admits the attacker), real keys without allowlist, and canaries.
pub const CANARY_CLOUD_KEYS: usize = 6;
/// Real keys without an allowlist (their owners use them first).
pub const CANARY_OPEN_KEYS: usize = 6;
/// Canary keys in the leaked set.
pub const CANARY_KEYS: usize = 3;
/// The cloud range of the canary scenario: owners and attacker both inside it.
const CLOUD_RANGE: &str = "127.67.0.0/16";

/// What to provision and run.
pub struct Plan {
    /// The scenario.
    pub name: ScenarioName,
    /// Its parameters.
    pub params: Params,
    /// Keys to create, in order.
    pub keys: Vec<KeySpec>,
    /// Which keys are meant to be dormant (never used by their owners).
    pub dormant: Vec<usize>,
    /// Which keys are canaries (`keys create --canary`).
    pub canaries: Vec<usize>,
    parts: Vec<Part>,
}

#[derive(Debug, Clone)]
enum Part {
    /// `n` traders whose keys start at `first_key`.
    Traders { n: usize, first_key: usize },
    /// The zaif-2018 keys from `first_key`.
    Zaif { first_key: usize },
    /// Stuffing clients; `victims` are keys whose API key strings they know.
    Stuffers { victims: Vec<usize> },
    /// One flooded key.
    Flood { key: usize },
    /// The canary scenario's keys from `first_key`.
    Canary { first_key: usize },
}

impl Part {
    fn is_attack(&self) -> bool {
        !matches!(self, Part::Traders { .. })
    }
}

/// A loopback address in `block`: 127.block.(i / 250).(i % 250 + 1).
pub fn loopback(block: u8, i: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(
        127,
        block,
        (i / 250 % 256) as u8,
        (i % 250 + 1) as u8,
    ))
}

/// A legitimate withdrawal address of trader/account `i`.
fn owner_address(i: usize) -> String {
    format!("bc1qkeyguardloadtestowner{i:05}")
}

/// The attacker's destination.
const ATTACKER_ADDRESS: &str = "1HostingCoAttackerDestinationxxxx";

/// Plans `name` with `params`.
pub fn plan(name: ScenarioName, params: Params) -> Plan {
    let mut plan = Plan {
        name,
        params,
        keys: Vec::new(),
        dormant: Vec::new(),
        canaries: Vec::new(),
        parts: Vec::new(),
    };
    match name {
        ScenarioName::Legit => {
            let n = plan.params.traders.unwrap_or(match plan.params.load {
                Load::Rate(r) => ((r / plan.params.trader_rate).ceil() as usize).max(1),
                Load::Concurrency(c) => c.max(1),
            });
            plan.add_traders(n);
        }
        ScenarioName::Zaif2018 => plan.add_zaif(),
        ScenarioName::Stuffing => {
            let first = plan.keys.len();
            for i in 0..5 {
                plan.keys.push(KeySpec {
                    account: format!("stuffing-victim-{i}"),
                    scopes: "read,trade",
                    label: "stuffing victim".into(),
                    ..KeySpec::default()
                });
            }
            plan.parts.push(Part::Stuffers {
                victims: (first..first + 5).collect(),
            });
        }
        ScenarioName::Flood => plan.add_flood(),
        ScenarioName::Canary => plan.add_canary(),
        ScenarioName::Mixed => {
            let n = plan.params.traders.unwrap_or(20);
            let first = plan.keys.len();
            plan.add_traders(n);
            plan.add_zaif();
            plan.add_flood();
            // Stuffers know the traders' API key strings (not their secrets).
            plan.parts.push(Part::Stuffers {
                victims: (first..first + n).collect(),
            });
        }
    }
    plan
}

impl Plan {
    fn add_traders(&mut self, n: usize) {
        let (_, asset) = withdraw_asset(self.params.dialect);
        let first_key = self.keys.len();
        for i in 0..n {
            let ip = loopback(1, i);
            // A third may withdraw (allowlist required); a third trade from an allowlist;
            // a third rely on trust on first use.
            let spec = match i % 3 {
                0 => KeySpec {
                    account: format!("trader-{i:04}"),
                    scopes: "read,trade,withdraw",
                    allow_ips: vec![format!("{ip}/32")],
                    withdraw_addresses: vec![format!("{asset}:{}", owner_address(i))],
                    label: "loadtest trader (withdraw, allowlist)".into(),
                    canary: false,
                },
                1 => KeySpec {
                    account: format!("trader-{i:04}"),
                    scopes: "read,trade",
                    allow_ips: vec![format!("{ip}/32")],
                    label: "loadtest trader (allowlist)".into(),
                    ..KeySpec::default()
                },
                _ => KeySpec {
                    account: format!("trader-{i:04}"),
                    scopes: "read,trade",
                    label: "loadtest trader (trust on first use)".into(),
                    ..KeySpec::default()
                },
            };
            self.keys.push(spec);
        }
        self.parts.push(Part::Traders { n, first_key });
    }

    fn add_zaif(&mut self) {
        let (_, asset) = withdraw_asset(self.params.dialect);
        let first_key = self.keys.len();
        // Accounts: one per withdraw key, two keys each for the others.
        for i in 0..ZAIF_WITHDRAW_KEYS {
            let account = zaif_account(i);
            self.keys.push(KeySpec {
                account: format!("zaif-{account:02}"),
                scopes: "read,trade,withdraw",
                allow_ips: vec![format!("{}/32", loopback(2, account))],
                withdraw_addresses: vec![format!("{asset}:{}", owner_address(1000 + account))],
                label: "zaif-2018 withdraw key (allowlist)".into(),
                canary: false,
            });
        }
        for i in ZAIF_WITHDRAW_KEYS..ZAIF_WITHDRAW_KEYS + ZAIF_ACTIVE_KEYS + ZAIF_DORMANT_KEYS {
            let account = zaif_account(i);
            let dormant = i >= ZAIF_WITHDRAW_KEYS + ZAIF_ACTIVE_KEYS;
            if dormant {
                self.dormant.push(first_key + i);
            }
            self.keys.push(KeySpec {
                account: format!("zaif-{account:02}"),
                scopes: "read,trade",
                label: if dormant {
                    "zaif-2018 old key, unused for years (no allowlist)".into()
                } else {
                    "zaif-2018 active key (no allowlist)".into()
                },
                ..KeySpec::default()
            });
        }
        self.parts.push(Part::Zaif { first_key });
    }

    fn add_flood(&mut self) {
        let key = self.keys.len();
        self.keys.push(KeySpec {
            account: "flood-victim".into(),
            scopes: "read,trade",
            label: "flooded key (no allowlist)".into(),
            ..KeySpec::default()
        });
        self.parts.push(Part::Flood { key });
    }

    fn add_canary(&mut self) {
        let (_, asset) = withdraw_asset(self.params.dialect);
        let first_key = self.keys.len();
        for i in 0..CANARY_CLOUD_KEYS {
            self.keys.push(KeySpec {
                account: format!("cloud-{i:02}"),
                scopes: "read,trade,withdraw",
                allow_ips: vec![CLOUD_RANGE.into()],
                withdraw_addresses: vec![format!("{asset}:{}", owner_address(2000 + i))],
                label: "bot in a shared cloud range (allowlist 127.67.0.0/16)".into(),
                canary: false,
            });
        }
        for i in 0..CANARY_OPEN_KEYS {
            self.keys.push(KeySpec {
                account: format!("open-{i:02}"),
                scopes: "read,trade",
                label: "key without allowlist".into(),
                ..KeySpec::default()
            });
        }
        for i in 0..CANARY_KEYS {
            self.canaries.push(self.keys.len());
            // Made to look like the rest: an account, an allowlist, withdraw rights.
            self.keys.push(KeySpec {
                account: format!("cloud-{:02}", CANARY_CLOUD_KEYS + i),
                scopes: "read,trade,withdraw",
                allow_ips: vec!["10.67.0.0/16".into()],
                label: format!("canary {i}: planted in the ops wiki"),
                canary: true,
                ..KeySpec::default()
            });
        }
        self.parts.push(Part::Canary { first_key });
    }

    /// What the scenario needs from the gateway's config beyond the example's, applied
    /// to self-contained runs. `canary` turns the shared-IP rule off: its attacker is
    /// taken to spread the set so that no network presents many keys, so the canaries
    /// alone decide what the set is worth.
    pub fn tweak_config(&self, cfg: &mut toml::Table) {
        if self.name == ScenarioName::Canary {
            crate::harness::set(cfg, "anomaly.shared_ip.enabled", false);
        }
    }

    /// The clients, once `keys` (in [`Plan::keys`] order) are provisioned.
    pub fn actors(&self, keys: &[Arc<KeyMaterial>]) -> Vec<ActorSpec> {
        let attack_parts = self.parts.iter().filter(|p| p.is_attack()).count();
        let traders: usize = self
            .parts
            .iter()
            .map(|p| match p {
                Part::Traders { n, .. } => *n,
                Part::Zaif { .. } => zaif_owner_accounts(),
                Part::Canary { .. } => CANARY_CLOUD_KEYS + CANARY_OPEN_KEYS,
                _ => 0,
            })
            .sum();
        let legit_closed =
            self.name == ScenarioName::Legit && matches!(self.params.load, Load::Concurrency(_));
        let trader_pace = if legit_closed {
            Pace::Max
        } else {
            Pace::rate(self.params.trader_rate)
        };
        // Attack clients per part, and the rate each part shares (None: closed loop).
        let (attack_clients, part_rate) = match self.params.load {
            Load::Concurrency(c) => ((c / attack_parts.max(1)).max(1), None),
            Load::Rate(r) => {
                let left = (r - traders as f64 * self.params.trader_rate).max(0.0);
                let per_part = (left / attack_parts.max(1) as f64).max(4.0);
                // One client sends at most ~500 req/s at sub-millisecond latencies.
                (((per_part / 500.0).ceil() as usize).max(4), Some(per_part))
            }
        };
        let attack_pace = |clients: usize| match part_rate {
            Some(rate) => Pace::rate(rate / clients.max(1) as f64),
            None => Pace::Max,
        };
        let mut actors = Vec::new();
        for part in &self.parts {
            match part {
                Part::Traders { n, first_key } => {
                    for i in 0..*n {
                        let key = Arc::clone(&keys[first_key + i]);
                        let withdraw = (i % 3 == 0).then(|| owner_address(i));
                        actors.push(ActorSpec {
                            role: "trader",
                            tag: Tag::Legit,
                            source: Source::Fixed(loopback(1, i)),
                            pace: trader_pace,
                            script: Box::new(TraderScript::new(vec![key], withdraw)),
                            ready_after: 1,
                            waits_ready: false,
                        });
                    }
                }
                Part::Zaif { first_key } => {
                    let all: Vec<Arc<KeyMaterial>> = keys[*first_key
                        ..first_key + ZAIF_WITHDRAW_KEYS + ZAIF_ACTIVE_KEYS + ZAIF_DORMANT_KEYS]
                        .to_vec();
                    // Owners of the withdraw keys and of the active keys; dormant keys'
                    // owners stopped using them long ago.
                    for account in 0..zaif_owner_accounts() {
                        let owned: Vec<Arc<KeyMaterial>> = (0..ZAIF_WITHDRAW_KEYS
                            + ZAIF_ACTIVE_KEYS)
                            .filter(|i| zaif_account(*i) == account)
                            .map(|i| Arc::clone(&all[i]))
                            .collect();
                        let withdraw =
                            (account < ZAIF_WITHDRAW_KEYS).then(|| owner_address(1000 + account));
                        let ready_after = owned.len();
                        actors.push(ActorSpec {
                            role: "zaif-owner",
                            tag: Tag::Legit,
                            source: Source::Fixed(loopback(2, account)),
                            pace: Pace::rate(self.params.trader_rate),
                            script: Box::new(TraderScript::new(owned, withdraw)),
                            ready_after,
                            waits_ready: false,
                        });
                    }
                    for c in 0..attack_clients {
                        let ip = IpAddr::V4(Ipv4Addr::new(127, 66, 0, (c % 4 + 1) as u8));
                        actors.push(ActorSpec {
                            role: "zaif-attacker",
                            tag: Tag::Attack,
                            source: Source::Fixed(ip),
                            pace: attack_pace(attack_clients),
                            script: Box::new(ZaifAttacker::new(all.clone(), c as u64)),
                            ready_after: 0,
                            waits_ready: true,
                        });
                    }
                }
                Part::Stuffers { victims } => {
                    let known: Vec<String> =
                        victims.iter().map(|i| keys[*i].api_key.clone()).collect();
                    let victims: Vec<Arc<KeyMaterial>> =
                        victims.iter().map(|i| Arc::clone(&keys[*i])).collect();
                    let clients = attack_clients.max(8);
                    for c in 0..clients {
                        actors.push(ActorSpec {
                            role: "stuffer",
                            tag: Tag::Attack,
                            source: Source::Fixed(loopback(77, c)),
                            pace: attack_pace(clients),
                            script: Box::new(Stuffer {
                                known: known.clone(),
                                victims: victims.clone(),
                                forwarded_for: None,
                            }),
                            ready_after: 0,
                            waits_ready: true,
                        });
                    }
                }
                Part::Canary { first_key } => {
                    let all = &keys[*first_key
                        ..first_key + CANARY_CLOUD_KEYS + CANARY_OPEN_KEYS + CANARY_KEYS];
                    for (i, key) in all[..CANARY_CLOUD_KEYS + CANARY_OPEN_KEYS]
                        .iter()
                        .enumerate()
                    {
                        let (source, withdraw) = if i < CANARY_CLOUD_KEYS {
                            (
                                IpAddr::V4(Ipv4Addr::new(127, 67, 1, (i + 1) as u8)),
                                Some(owner_address(2000 + i)),
                            )
                        } else {
                            (IpAddr::V4(Ipv4Addr::new(127, 3, 0, (i + 1) as u8)), None)
                        };
                        actors.push(ActorSpec {
                            role: "canary-owner",
                            tag: Tag::Legit,
                            source: Source::Fixed(source),
                            pace: Pace::rate(self.params.trader_rate),
                            script: Box::new(TraderScript::new(vec![Arc::clone(key)], withdraw)),
                            ready_after: 1,
                            waits_ready: false,
                        });
                    }
                    for c in 0..attack_clients {
                        let ip = IpAddr::V4(Ipv4Addr::new(127, 67, 66, (c % 4 + 1) as u8));
                        actors.push(ActorSpec {
                            role: "canary-attacker",
                            tag: Tag::Attack,
                            source: Source::Fixed(ip),
                            pace: attack_pace(attack_clients),
                            // The 2018 pattern: every key in turn, withdraw, order, read.
                            script: Box::new(ZaifAttacker::new(all.to_vec(), 0x5eed + c as u64)),
                            ready_after: 0,
                            waits_ready: true,
                        });
                    }
                }
                Part::Flood { key } => {
                    let key = &keys[*key];
                    actors.push(ActorSpec {
                        role: "flood-owner",
                        tag: Tag::Legit,
                        source: Source::Fixed(IpAddr::V4(Ipv4Addr::new(127, 88, 255, 1))),
                        pace: Pace::rate(1.0),
                        script: Box::new(Once(Some(Planned::signed(Op::Balance, key)))),
                        ready_after: 1,
                        waits_ready: false,
                    });
                    // Many IPs: at least 32, one client each.
                    let clients = attack_clients.max(32);
                    for c in 0..clients {
                        actors.push(ActorSpec {
                            role: "flooder",
                            tag: Tag::Attack,
                            source: Source::Fixed(loopback(88, c)),
                            pace: attack_pace(clients),
                            script: Box::new(Flooder {
                                key: Arc::clone(key),
                            }),
                            ready_after: 0,
                            waits_ready: true,
                        });
                    }
                }
            }
        }
        actors
    }
}

/// The account of zaif-2018 key `i`: withdraw keys one account each, the others two keys
/// per account.
fn zaif_account(i: usize) -> usize {
    if i < ZAIF_WITHDRAW_KEYS {
        i
    } else {
        ZAIF_WITHDRAW_KEYS + (i - ZAIF_WITHDRAW_KEYS) / 2
    }
}

/// Accounts whose owners still use their keys (withdraw keys and active keys).
fn zaif_owner_accounts() -> usize {
    ZAIF_WITHDRAW_KEYS + ZAIF_ACTIVE_KEYS / 2
}

/// A trader: balances, open orders, market data and orders, and (with the withdraw
/// scope) a withdrawal to their own address now and then — at most two per run, well
/// inside any withdrawal velocity limit. The first request is a read: a key without an
/// allowlist learns its owner's IP from it.
pub struct TraderScript {
    keys: Vec<Arc<KeyMaterial>>,
    withdraw_to: Option<String>,
    withdrawals_left: u32,
    turn: usize,
}

impl TraderScript {
    /// A trader using `keys` in turn; `withdraw_to` when the first key may withdraw.
    pub fn new(keys: Vec<Arc<KeyMaterial>>, withdraw_to: Option<String>) -> TraderScript {
        TraderScript {
            keys,
            withdraw_to,
            withdrawals_left: 2,
            turn: 0,
        }
    }
}

impl Script for TraderScript {
    fn next(&mut self, rng: &mut fastrand::Rng) -> Option<Planned> {
        let turn = self.turn;
        self.turn += 1;
        let key = &self.keys[turn % self.keys.len()];
        // Every key's first use is a read from the owner's address.
        if turn < self.keys.len() {
            return Some(Planned::signed(Op::Balance, key));
        }
        let roll = rng.u32(0..100);
        let op = match roll {
            0..=34 => Op::Balance,
            35..=54 => Op::OpenOrders,
            55..=69 => {
                return Some(Planned {
                    op: Op::Public,
                    auth: None,
                    forwarded_for: None,
                })
            }
            70..=97 => Op::PlaceOrder,
            _ => match (&self.withdraw_to, turn % self.keys.len()) {
                // Only the first key of a withdrawing owner has the scope.
                (Some(address), 0) if self.withdrawals_left > 0 => {
                    self.withdrawals_left -= 1;
                    Op::Withdraw {
                        address: address.clone(),
                    }
                }
                _ => Op::PlaceOrder,
            },
        };
        Some(Planned::signed(op, key))
    }
}

/// The 2018 attacker: every stolen key in turn, trying a withdrawal to its own address,
/// an order and a balance read, over and over.
pub struct ZaifAttacker {
    keys: Vec<Arc<KeyMaterial>>,
    order: Vec<usize>,
    step: usize,
}

impl ZaifAttacker {
    /// An attacker with `keys`, starting at a different key per client.
    pub fn new(keys: Vec<Arc<KeyMaterial>>, seed: u64) -> ZaifAttacker {
        let mut order: Vec<usize> = (0..keys.len()).collect();
        fastrand::Rng::with_seed(seed).shuffle(&mut order);
        ZaifAttacker {
            keys,
            order,
            step: 0,
        }
    }
}

impl Script for ZaifAttacker {
    fn next(&mut self, _rng: &mut fastrand::Rng) -> Option<Planned> {
        let step = self.step;
        self.step += 1;
        let key = &self.keys[self.order[(step / 3) % self.order.len()]];
        let op = match step % 3 {
            0 => Op::Withdraw {
                address: ATTACKER_ADDRESS.to_owned(),
            },
            1 => Op::PlaceOrder,
            _ => Op::Balance,
        };
        Some(Planned::signed(op, key))
    }
}

/// Credential stuffing: random keys, keys one character off real ones, and real keys with
/// signatures made from guessed secrets.
pub struct Stuffer {
    /// API key strings the attacker has seen (not the secrets).
    pub known: Vec<String>,
    /// The keys behind them (for signatures with a wrong secret).
    pub victims: Vec<Arc<KeyMaterial>>,
    /// Claimed client addresses to send as `X-Forwarded-For` (one per request), if any.
    pub forwarded_for: Option<fn(&mut fastrand::Rng) -> String>,
}

impl Script for Stuffer {
    fn next(&mut self, rng: &mut fastrand::Rng) -> Option<Planned> {
        let op = match rng.u32(0..3) {
            0 => Op::Balance,
            1 => Op::PlaceOrder,
            _ => Op::Withdraw {
                address: ATTACKER_ADDRESS.to_owned(),
            },
        };
        let auth = match rng.u32(0..10) {
            0..=3 => Auth::Forged(random_token(rng, 64)),
            4..=6 if !self.known.is_empty() => {
                let base = &self.known[rng.usize(..self.known.len())];
                Auth::Forged(guessed_key(rng, base))
            }
            _ if !self.victims.is_empty() => {
                Auth::BadSignature(Arc::clone(&self.victims[rng.usize(..self.victims.len())]))
            }
            _ => Auth::Forged(random_token(rng, 64)),
        };
        Some(Planned {
            op,
            auth: Some(auth),
            forwarded_for: self.forwarded_for.map(|f| f(rng)),
        })
    }
}

/// One stolen key, hammered: reads and orders.
pub struct Flooder {
    key: Arc<KeyMaterial>,
}

impl Script for Flooder {
    fn next(&mut self, rng: &mut fastrand::Rng) -> Option<Planned> {
        let op = if rng.u32(0..10) < 6 {
            Op::Balance
        } else {
            Op::PlaceOrder
        };
        Some(Planned::signed(op, &self.key))
    }
}

/// Sends one request, then stops.
pub struct Once(pub Option<Planned>);

impl Script for Once {
    fn next(&mut self, _rng: &mut fastrand::Rng) -> Option<Planned> {
        self.0.take()
    }
}

/// The same request forever, with its key (the bench workload: a signed balance read).
pub struct Repeat {
    /// The key.
    pub key: Arc<KeyMaterial>,
    /// The operation.
    pub op: Op,
}

impl Script for Repeat {
    fn next(&mut self, _rng: &mut fastrand::Rng) -> Option<Planned> {
        Some(Planned::signed(self.op.clone(), &self.key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn provision(plan: &Plan) -> Vec<Arc<KeyMaterial>> {
        plan.keys
            .iter()
            .enumerate()
            .map(|(i, s)| {
                Arc::new(KeyMaterial::new(
                    i,
                    format!("kg_{i}"),
                    format!("api{i}"),
                    "secret".into(),
                    s.account.clone(),
                ))
            })
            .collect()
    }

    #[test]
    fn zaif_2018_has_the_incident_shape() {
        let plan = plan(
            ScenarioName::Zaif2018,
            Params::new(DialectKind::Zaif, Load::Rate(200.0)),
        );
        assert_eq!(plan.keys.len(), 102);
        let withdraw: Vec<_> = plan
            .keys
            .iter()
            .filter(|k| k.scopes.contains("withdraw"))
            .collect();
        assert_eq!(withdraw.len(), 10);
        assert!(withdraw.iter().all(|k| !k.allow_ips.is_empty()));
        assert_eq!(
            plan.keys.iter().filter(|k| k.allow_ips.is_empty()).count(),
            92
        );
        assert_eq!(plan.dormant.len(), 62);
        let actors = plan.actors(&provision(&plan));
        let attacker_ips: std::collections::BTreeSet<String> = actors
            .iter()
            .filter(|a| a.role == "zaif-attacker")
            .map(|a| match &a.source {
                Source::Fixed(ip) => ip.to_string(),
                Source::Rotating { .. } => String::new(),
            })
            .collect();
        assert_eq!(attacker_ips.len(), 4);
        // Owners and attackers never share an address.
        for a in actors.iter().filter(|a| a.tag == Tag::Legit) {
            if let Source::Fixed(ip) = &a.source {
                assert!(!attacker_ips.contains(&ip.to_string()));
            }
        }
        assert!(actors
            .iter()
            .filter(|a| a.tag == Tag::Attack)
            .all(|a| a.waits_ready));
    }

    #[test]
    fn traders_read_first_and_withdraw_at_most_twice() {
        let key = Arc::new(KeyMaterial::new(
            0,
            "k".into(),
            "a".into(),
            "s".into(),
            "acct".into(),
        ));
        let mut t = TraderScript::new(vec![key], Some("addr".into()));
        let mut rng = fastrand::Rng::with_seed(7);
        let first = t.next(&mut rng).expect("request");
        assert_eq!(first.op, Op::Balance);
        let withdrawals = (0..10_000)
            .filter_map(|_| t.next(&mut rng))
            .filter(|p| matches!(p.op, Op::Withdraw { .. }))
            .count();
        assert_eq!(withdrawals, 2);
    }

    #[test]
    fn open_loop_rate_is_shared_by_attackers() {
        let plan = plan(
            ScenarioName::Mixed,
            Params::new(DialectKind::Zaif, Load::Rate(1000.0)),
        );
        let actors = plan.actors(&provision(&plan));
        let rate: f64 = actors
            .iter()
            .map(|a| match a.pace {
                Pace::Every(d) if a.role != "flood-owner" => 1.0 / d.as_secs_f64(),
                _ => 0.0,
            })
            .sum();
        assert!((rate - 1000.0).abs() < 50.0, "{rate}");
    }

    #[test]
    fn canary_scenario_mixes_real_and_canary_keys_for_attackers_inside_the_cloud_range() {
        let plan = plan(
            ScenarioName::Canary,
            Params::new(DialectKind::Coincheck, Load::Rate(100.0)),
        );
        assert_eq!(
            plan.keys.len(),
            CANARY_CLOUD_KEYS + CANARY_OPEN_KEYS + CANARY_KEYS
        );
        assert_eq!(plan.canaries.len(), CANARY_KEYS);
        assert!(plan.canaries.iter().all(|&i| plan.keys[i].canary));
        assert_eq!(plan.keys.iter().filter(|k| k.canary).count(), CANARY_KEYS);
        let actors = plan.actors(&provision(&plan));
        let cloud = keyguard_policy::key::parse_allow_ip(CLOUD_RANGE).unwrap();
        let attackers: Vec<&ActorSpec> = actors
            .iter()
            .filter(|a| a.role == "canary-attacker")
            .collect();
        assert!(!attackers.is_empty());
        for a in &attackers {
            let Source::Fixed(ip) = a.source else {
                panic!("fixed sources")
            };
            // Inside the range the real cloud keys are allowlisted for.
            assert!(cloud.contains(&ip), "{ip}");
            assert!(a.waits_ready);
        }
        assert_eq!(
            actors.iter().filter(|a| a.role == "canary-owner").count(),
            CANARY_CLOUD_KEYS + CANARY_OPEN_KEYS
        );
        let mut cfg = toml::Table::new();
        plan.tweak_config(&mut cfg);
        assert_eq!(
            cfg["anomaly"]["shared_ip"]["enabled"],
            toml::Value::Boolean(false)
        );
    }

    #[test]
    fn loopback_blocks_do_not_overlap() {
        assert_eq!(loopback(1, 0).to_string(), "127.1.0.1");
        assert_eq!(loopback(1, 250).to_string(), "127.1.1.1");
        assert_ne!(loopback(1, 3), loopback(2, 3));
    }
}
