//! The January 2018 Zaif incident, replayed against the real gateway with the example
//! config (`config/examples/zaif.toml`, unchanged but for ports and data dir).
//!
//! Then: 102 old API keys (created 2014-2016, many long unused, most without an IP
//! allowlist) were used from 4 hosting-company IPs for 37 withdrawals on 10 accounts and
//! 137 orders on 15 accounts. Here: 102 keys created "three years ago" — 10 with the
//! withdraw scope and an allowlist, 92 without an allowlist, 62 of those dormant for over
//! a year — their owners trading (and withdrawing to their own addresses) from their own
//! loopback IPs before, and after, an attacker uses every key from 4 other loopback IPs.
//!
//! Verdict from the upstream's record: not one attacker order or withdrawal reaches the
//! exchange; every owner request does; and the audit log explains every refusal.

mod utils;

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::time::Duration;

use utils::*;

const KEYS: usize = 102;
const WITH_WITHDRAW: usize = 10;
/// Keys `ACTIVE_UNTIL..KEYS` are dormant: nobody has used them for over a year.
const ACTIVE_UNTIL: usize = 40;
const ATTACKER_IPS: [Ipv4Addr; 4] = [
    Ipv4Addr::new(127, 0, 9, 1),
    Ipv4Addr::new(127, 0, 9, 2),
    Ipv4Addr::new(127, 0, 9, 3),
    Ipv4Addr::new(127, 0, 9, 4),
];
const ATTACKER_ADDR: &str = "1AttackerDropAddressxxxxxxxxxxxxx";
const DAY_MS: u64 = 86_400_000;

struct Victim {
    key: TestKey,
    owner_ip: Ipv4Addr,
    owner_addr: String,
    withdraw: bool,
    dormant: bool,
}

fn owner_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 1, (i + 1) as u8)
}

/// Gives the store the history the real keys had: created years ago, withdrawal
/// addresses registered long past their cool-down, active keys used yesterday, dormant
/// ones not for over a year.
fn backdate(env: &Env, victims: &[Victim]) {
    let db = rusqlite::Connection::open(env.data.join("keyguard.db")).expect("open store");
    let now = now_ms() as i64;
    let day = DAY_MS as i64;
    db.execute("UPDATE keys SET created_at = ?1", [now - 3 * 365 * day])
        .expect("backdate keys");
    db.execute(
        "UPDATE withdraw_addresses SET added_at = ?1",
        [now - 2 * 365 * day],
    )
    .expect("backdate addresses");
    for v in victims {
        let last_used = if v.dormant {
            now - 400 * day
        } else {
            now - day
        };
        db.execute(
            "UPDATE keys SET last_used_at = ?2 WHERE key_id = ?1",
            rusqlite::params![v.key.key_id, last_used],
        )
        .expect("set last use");
    }
}

async fn owner_session(gws: &[Gateway], v: &Victim) {
    // Spread over the replicas like a round-robin load balancer.
    let gw = |n: usize| &gws[n % gws.len()];
    if v.dormant {
        return;
    }
    let read = gw(0).request_from(v.owner_ip, &zaif::read(&v.key)).await;
    read.assert_forwarded_ok();
    let trade = gw(1).request_from(v.owner_ip, &zaif::trade(&v.key)).await;
    trade.assert_forwarded_ok();
    if v.withdraw {
        let w = gw(2)
            .request_from(v.owner_ip, &zaif::withdraw(&v.key, &v.owner_addr))
            .await;
        w.assert_forwarded_ok();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zaif_2018_pattern_is_stopped_and_owners_are_served() {
    let codes = replay(|_| {}, 0).await;
    // The shared-IP rule (many keys, few IPs) blocks each attacker IP within a few keys.
    assert!(codes.contains_key("ip_blocked"), "{codes:?}");
}

/// Defence in depth: with the shared-IP rule off, dormancy, new-IP probation and the
/// allowlists still stop every order and withdrawal on their own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zaif_2018_pattern_is_stopped_without_the_shared_ip_rule() {
    let codes = replay(|cfg| set(cfg, "anomaly.shared_ip.enabled", false), 0).await;
    for code in ["key_dormant", "new_ip_probation", "ip_not_allowed"] {
        assert!(codes.contains_key(code), "{code} missing: {codes:?}");
    }
    assert!(!codes.contains_key("ip_blocked"), "{codes:?}");
}

/// Distributed mode (issue 12): the same incident spread round-robin over three replicas
/// sharing one real `redis-server`. The keys and their history are made in an embedded
/// store and moved with `keyguard migrate`, as an exchange adopting replicas would.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn zaif_2018_pattern_is_stopped_across_three_replicas_on_redis() {
    if !utils::redis::available("zaif_2018_pattern_is_stopped_across_three_replicas_on_redis") {
        return;
    }
    let codes = replay(|_| {}, 3).await;
    assert!(codes.contains_key("ip_blocked"), "{codes:?}");
}

/// Runs the incident against the example config with `tweak` applied, on one embedded
/// gateway (`replicas` 0) or on that many replicas sharing Redis; returns the refusal
/// codes the attacker got, after checking the verdict.
async fn replay(
    tweak: impl Fn(&mut toml::Table),
    replicas: usize,
) -> std::collections::BTreeMap<String, usize> {
    let shared = tempfile::tempdir().expect("tempdir");
    let master = shared.path().join("master.key");
    let env = Env::from_example(Dialect::Zaif, |cfg| {
        set(
            cfg,
            "secrets.master_key_file",
            master.to_string_lossy().into_owned(),
        );
        tweak(cfg);
    });
    let victims: Vec<Victim> = (0..KEYS)
        .map(|i| {
            let withdraw = i < WITH_WITHDRAW;
            let owner_addr = format!("1OwnerAddress{i:03}xxxxxxxxxxxxxxxxxx");
            let spec = KeySpec {
                account: format!("victim-{i:03}"),
                scopes: if withdraw {
                    "read,trade,withdraw".into()
                } else {
                    "read,trade".into()
                },
                allow_ips: if withdraw {
                    vec![format!("{}/32", owner_ip(i))]
                } else {
                    vec![]
                },
                withdraw_addresses: if withdraw {
                    vec![format!("btc:{owner_addr}")]
                } else {
                    vec![]
                },
            };
            Victim {
                key: env.create_key(&spec),
                owner_ip: owner_ip(i),
                owner_addr,
                withdraw,
                dormant: i >= ACTIVE_UNTIL,
            }
        })
        .collect();
    backdate(&env, &victims);

    let origin = Origin::start().await;
    let mut redis = None;
    let mut replica_envs = Vec::new();
    let gws: Vec<Gateway> = if replicas == 0 {
        vec![env.start(origin.addr).await]
    } else {
        let server = utils::redis::RedisServer::start(shared.path());
        let data = env.data.to_string_lossy().into_owned();
        env.run(&[
            "migrate",
            "--from",
            &data,
            "--to",
            &server.url(),
            "--config",
            &env.config.to_string_lossy(),
        ])
        .ok();
        let mut gws = Vec::new();
        for _ in 0..replicas {
            let e = Env::from_example(Dialect::Zaif, |cfg| {
                set(
                    cfg,
                    "secrets.master_key_file",
                    master.to_string_lossy().into_owned(),
                );
                set(cfg, "store.kind", "redis");
                set(cfg, "store.url", server.url());
                set(cfg, "store.timeout", "1s");
                tweak(cfg);
            });
            gws.push(e.start(origin.addr).await);
            replica_envs.push(e);
        }
        redis = Some(server);
        gws
    };
    let audit_paths: Vec<std::path::PathBuf> = if replicas == 0 {
        vec![env.data.join("audit.jsonl")]
    } else {
        replica_envs
            .iter()
            .map(|e| e.data.join("audit.jsonl"))
            .collect()
    };

    // Owners go about their business.
    for v in &victims {
        owner_session(&gws, v).await;
    }
    let owner_requests_before = origin.count();

    // The attacker tries every stolen key from each of its 4 IPs: balance, order, withdrawal.
    let mut attack_sent = 0usize;
    let mut attack_forwarded_reads = 0usize;
    let mut turn = 0usize;
    for ip in ATTACKER_IPS {
        for v in &victims {
            for req in [
                zaif::read(&v.key),
                zaif::trade(&v.key),
                zaif::withdraw(&v.key, ATTACKER_ADDR),
            ] {
                let resp = gws[turn % gws.len()].request_from(ip, &req).await;
                turn += 1;
                attack_sent += 1;
                if resp.status == 200 {
                    attack_forwarded_reads += 1;
                } else {
                    assert!(
                        resp.code().is_some(),
                        "attacker refusal without a code: {} {}",
                        resp.status,
                        resp.text()
                    );
                }
            }
        }
    }

    // The owners keep working during the aftermath: nothing of theirs is refused.
    for v in &victims {
        owner_session(&gws, v).await;
    }

    // Verdict from what the exchange received.
    let attacker: HashSet<String> = ATTACKER_IPS.iter().map(|ip| ip.to_string()).collect();
    let mut attacker_orders = 0;
    let mut attacker_withdrawals = 0;
    let mut attacker_reads = 0;
    let mut owner_forwarded = 0;
    for rec in origin.records() {
        let ip = rec.header("x-forwarded-for").expect("client ip forwarded");
        let body = String::from_utf8_lossy(&rec.body).into_owned();
        if attacker.contains(&ip) {
            if body.contains("method=trade") {
                attacker_orders += 1;
            } else if body.contains("method=withdraw") {
                attacker_withdrawals += 1;
                assert!(!body.contains(ATTACKER_ADDR));
            } else {
                attacker_reads += 1;
            }
        } else {
            owner_forwarded += 1;
        }
    }
    assert_eq!(attacker_orders, 0, "attacker orders reached the exchange");
    assert_eq!(
        attacker_withdrawals, 0,
        "attacker withdrawals reached the exchange"
    );
    assert_eq!(attacker_reads, attack_forwarded_reads);
    let active = victims.iter().filter(|v| !v.dormant).count();
    let per_session = |v: &Victim| 2 + usize::from(v.withdraw);
    let owner_expected: usize = victims
        .iter()
        .filter(|v| !v.dormant)
        .map(per_session)
        .sum::<usize>()
        * 2;
    assert_eq!(owner_forwarded, owner_expected, "{active} active owners");
    assert_eq!(owner_requests_before, owner_expected / 2);

    // The audit log explains every refusal: a line per request, each deny with a code —
    // except refusals before authentication past the per-network line rate, which are
    // counted in one `summary` line per network, code and second (the flood guard).
    let total = owner_expected + attack_sent;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let count = |v: &serde_json::Value| match v.get("kind") {
        None => 1,
        Some(k) if k == "summary" => v["count"].as_u64().expect("summary count") as usize,
        Some(_) => 0,
    };
    let lines = loop {
        let text: String = audit_paths
            .iter()
            .map(|p| std::fs::read_to_string(p).unwrap_or_default())
            .collect();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).expect("audit line is JSON"))
            .filter(|v: &serde_json::Value| count(v) > 0)
            .collect();
        if lines.iter().map(count).sum::<usize>() >= total || std::time::Instant::now() > deadline {
            break lines;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        lines.iter().map(count).sum::<usize>(),
        total,
        "every request is accounted for"
    );
    let mut codes = std::collections::BTreeMap::<String, usize>::new();
    for l in &lines {
        if l["decision"] == "deny" {
            let code = l["code"].as_str().expect("every deny has a code");
            if l["kind"] == "summary" {
                assert_eq!(l["client_net"], "127.0.9.0/24", "{l}");
            } else {
                assert!(attacker.contains(l["client_ip"].as_str().unwrap()), "{l}");
            }
            *codes.entry(code.to_owned()).or_default() += count(l);
        }
    }
    let denied: usize = codes.values().sum();
    assert_eq!(denied, attack_sent - attack_forwarded_reads);
    // The refusals come from the rules built for this pattern.
    for code in codes.keys() {
        assert!(
            [
                "ip_not_allowed",
                "key_dormant",
                "new_ip_probation",
                "ip_blocked",
                "rate_limited"
            ]
            .contains(&code.as_str()),
            "unexpected refusal {code}: {codes:?}"
        );
    }
    drop(gws);
    drop(redis);
    eprintln!(
        "zaif-2018 ({replicas} replicas): {attack_sent} attacker requests, {attack_forwarded_reads} reads forwarded, \
         0 orders, 0 withdrawals; owners {owner_forwarded}/{owner_expected} served; refusals {codes:?}"
    );
    codes
}
