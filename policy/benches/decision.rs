//! The cost of one policy decision with in-memory stores, whole and piece by piece:
//! parse + verify a signed Zaif or Binance order, classify it, authorize it, check the
//! rate limits, reserve its velocity, run the anomaly rules.
//!
//! The allocator is mimalloc, as in the gateway binary.
//!
//! `cargo bench -p keyguard-policy -- --quick` runs it in well under two minutes. The
//! two-thread cases run two decisions at once (two traders, two accounts) and report the
//! wall time of the pair, so perfect scaling shows as the single-thread time.

// criterion_group!/criterion_main! generate undocumented public items.
#![allow(missing_docs)]

use std::hint::black_box;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use http::Method;

use keyguard_policy::anomaly::{Anomaly, AnomalyConfig, AnomalyRequest, MemoryIpHistory};
use keyguard_policy::authorize::{authorize, AccessRequest, AuthorizeConfig, Freezes};
use keyguard_policy::decimal::parse_decimal;
use keyguard_policy::dialect::{self, ClientKey, DialectConfig, DialectKind};
use keyguard_policy::limits::{Rate, RateLimitConfig, RateLimits, RateTier};
use keyguard_policy::route::FieldMap;
use keyguard_policy::velocity::{
    AssetMatch, LedgerKind, MemoryVelocity, Reservation, SubjectKind, VelocityConfig, VelocityRule,
    VelocityStore,
};
use keyguard_policy::{Action, Credential, KeyRecord, KeyStatus, RouteSpec, RouteTable, Secret};

/// The gateway's allocator (see `gateway/src/main.rs`), so the bench measures a decision
/// as the gateway makes it.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const SECRET: &[u8] = b"bench-secret-0123456789abcdef";
const NOW: u64 = 1_763_812_345_123;

/// One signed request as the gateway receives it.
struct Signed {
    cfg: DialectConfig,
    table: RouteTable,
    parts: http::request::Parts,
    body: Vec<u8>,
}

fn route(
    method: Method,
    path: &str,
    select: Option<&str>,
    action: Action,
    f: [Option<&str>; 3],
) -> RouteSpec {
    RouteSpec {
        method,
        path: path.into(),
        select: select.map(Into::into),
        action,
        fields: FieldMap {
            asset: f[0].map(Into::into),
            price: f[1].map(Into::into),
            quantity: f[2].map(Into::into),
            ..FieldMap::default()
        },
    }
}

fn signed(kind: DialectKind, api_key: &str) -> Signed {
    let client = ClientKey::Hmac {
        api_key,
        secret: SECRET,
    };
    let (routes, req) = match kind {
        DialectKind::Zaif => {
            let post = || Method::POST;
            let routes = vec![
                route(post(), "/tapi", Some("get_info2"), Action::Read, [None; 3]),
                route(
                    post(),
                    "/tapi",
                    Some("active_orders"),
                    Action::Read,
                    [None; 3],
                ),
                route(
                    post(),
                    "/tapi",
                    Some("cancel_order"),
                    Action::Trade,
                    [None; 3],
                ),
                route(
                    post(),
                    "/tapi",
                    Some("trade"),
                    Action::Trade,
                    [Some("currency_pair"), Some("price"), Some("amount")],
                ),
            ];
            let req = dialect::sign_request(
                kind,
                &client,
                Method::POST,
                "/tapi",
                &[
                    ("method", "trade"),
                    ("currency_pair", "btc_jpy"),
                    ("action", "bid"),
                    ("price", "5000000"),
                    ("amount", "0.001"),
                ],
                "1763812345.12300000",
                false,
            )
            .unwrap();
            (routes, req)
        }
        DialectKind::Binance => {
            let routes = vec![
                route(
                    Method::GET,
                    "/api/v3/account",
                    None,
                    Action::Read,
                    [None; 3],
                ),
                route(
                    Method::GET,
                    "/api/v3/openOrders",
                    None,
                    Action::Read,
                    [None; 3],
                ),
                route(
                    Method::DELETE,
                    "/api/v3/order",
                    None,
                    Action::Trade,
                    [None; 3],
                ),
                route(
                    Method::POST,
                    "/api/v3/order",
                    None,
                    Action::Trade,
                    [Some("symbol"), Some("price"), Some("quantity")],
                ),
            ];
            let req = dialect::sign_request(
                kind,
                &client,
                Method::POST,
                "/api/v3/order",
                &[
                    ("symbol", "BTCUSDT"),
                    ("side", "BUY"),
                    ("type", "LIMIT"),
                    ("timeInForce", "GTC"),
                    ("quantity", "0.001"),
                    ("price", "95000"),
                    ("recvWindow", "5000"),
                ],
                &NOW.to_string(),
                false,
            )
            .unwrap();
            (routes, req)
        }
        DialectKind::Kraken | DialectKind::Coincheck => unreachable!("not benched"),
    };
    let (mut parts, body) = req.to_http().unwrap().into_parts();
    parts
        .headers
        .insert(http::header::HOST, "gateway.test".parse().unwrap());
    parts
        .headers
        .insert(http::header::CONTENT_LENGTH, body.len().into());
    Signed {
        cfg: DialectConfig::new(kind),
        table: RouteTable::new(kind, routes).unwrap(),
        parts,
        body,
    }
}

fn key(id: &str, api_key: &str, account: &str) -> KeyRecord {
    KeyRecord {
        key_id: id.into(),
        api_key: api_key.into(),
        account: account.into(),
        label: String::new(),
        scopes: "read,trade".parse().unwrap(),
        // No allowlist: every anomaly rule applies.
        allow_ips: Vec::new(),
        withdraw_addresses: Vec::new(),
        trusted_ips: Vec::new(),
        created_at: NOW - 1000,
        expires_at: None,
        status: KeyStatus::Active,
        credential: Credential::Hmac(Secret::new(SECRET.to_vec())),
        canary: false,
    }
}

/// The stores of a gateway: limits high enough never to refuse, a velocity rule that
/// applies to every order, every anomaly rule on.
struct Stores {
    limits: RateLimits,
    velocity: MemoryVelocity,
    anomaly: Anomaly,
    /// Advances 1 ms per decision so the one-minute velocity window keeps draining.
    clock: AtomicU64,
}

fn stores() -> Stores {
    let fast = || Some(Rate::per_second(1_000_000_000).unwrap());
    let tier = RateTier {
        key: fast(),
        account: fast(),
        read: fast(),
        trade: fast(),
        withdraw: fast(),
    };
    let limits = RateLimitConfig {
        ip: fast(),
        tiers: [("default".to_owned(), tier)].into(),
        ..RateLimitConfig::default()
    };
    let rule = |subject| VelocityRule {
        kind: LedgerKind::Order,
        subject,
        asset: AssetMatch::Any,
        window_ms: 60_000,
        max_amount: Some(parse_decimal("1000000000000000").unwrap()),
        max_count: Some(u64::MAX),
    };
    Stores {
        limits: RateLimits::new(&limits).unwrap(),
        velocity: MemoryVelocity::new(&VelocityConfig {
            rules: vec![rule(SubjectKind::Key), rule(SubjectKind::Account)],
        })
        .unwrap(),
        anomaly: Anomaly::in_memory(AnomalyConfig::default(), MemoryIpHistory::new(64)),
        clock: AtomicU64::new(NOW),
    }
}

/// One full decision, as the gateway pipeline runs it.
fn decide(s: &Signed, stores: &Stores, key: &KeyRecord, client: IpAddr) {
    let now = stores.clock.fetch_add(1, Ordering::Relaxed);
    stores.limits.check_ip(client).unwrap();
    assert!(stores.anomaly.check_client(client, now).result().is_ok());
    let parsed = dialect::parse(&s.cfg, &s.parts, &s.body).unwrap();
    let creds = parsed.credentials.as_ref().unwrap();
    assert_eq!(creds.api_key, key.api_key);
    dialect::verify(&s.cfg, creds, &key.credential).unwrap();
    let classified = s.table.classify(&parsed).unwrap();
    let anomaly = stores.anomaly.check_request(&AnomalyRequest {
        key,
        action: classified.action,
        client_ip: client,
        last_used: Some(now - 1),
        now,
    });
    anomaly.verdict.result().unwrap();
    let access = AccessRequest {
        action: classified.action,
        facts: &classified.facts,
        client_ip: client,
        now,
    };
    authorize(
        &AuthorizeConfig::default(),
        key,
        &access,
        &Freezes::default(),
    )
    .unwrap();
    stores.limits.check_key(key, classified.action).unwrap();
    let route = &s.table.routes()[classified.route];
    let reservation = Reservation::for_request(route, &classified, key).unwrap();
    let id = stores.velocity.reserve(&reservation, now).unwrap();
    stores.velocity.commit(id).unwrap();
    black_box(id);
    sweep_now_and_then(stores, now);
}

/// The gateway sweeps every few seconds; at one decision per simulated millisecond this
/// is about once a minute of traffic, its cost spread over the decisions it follows.
fn sweep_now_and_then(stores: &Stores, now: u64) {
    if now.is_multiple_of(65_536) {
        stores.velocity.sweep(now);
        stores.anomaly.sweep(now);
        stores.limits.sweep();
    }
}

fn full_decision(c: &mut Criterion) {
    let mut group = c.benchmark_group("decision");
    for kind in [DialectKind::Zaif, DialectKind::Binance] {
        let stores = stores();
        let req = signed(kind, "ak-0");
        let k = key("kg_0", "ak-0", "acct-0");
        let client: IpAddr = "192.0.2.10".parse().unwrap();
        group.bench_function(format!("{}/1 thread", kind.as_str()), |b| {
            b.iter(|| decide(&req, &stores, &k, client))
        });

        // Two traders at once: separate keys, accounts and addresses, shared stores.
        let traders: Vec<(Signed, KeyRecord, IpAddr)> = (1..=2)
            .map(|i| {
                let api_key = format!("ak-{i}");
                (
                    signed(kind, &api_key),
                    key(&format!("kg_{i}"), &api_key, &format!("acct-{i}")),
                    format!("192.0.2.{}", 10 + i).parse().unwrap(),
                )
            })
            .collect();
        group.bench_function(format!("{}/2 threads", kind.as_str()), |b| {
            b.iter_custom(|iters| {
                let start = Instant::now();
                std::thread::scope(|scope| {
                    for (req, k, client) in &traders {
                        let stores = &stores;
                        scope.spawn(move || {
                            for _ in 0..iters {
                                decide(req, stores, k, *client);
                            }
                        });
                    }
                });
                start.elapsed()
            })
        });
    }
    group.finish();
}

fn pieces(c: &mut Criterion) {
    let mut group = c.benchmark_group("piece");
    let stores = stores();
    let client: IpAddr = "192.0.2.10".parse().unwrap();
    let k = key("kg_0", "ak-0", "acct-0");
    for kind in [DialectKind::Zaif, DialectKind::Binance] {
        let s = signed(kind, "ak-0");
        group.bench_function(format!("{}/parse", kind.as_str()), |b| {
            b.iter(|| dialect::parse(&s.cfg, &s.parts, black_box(&s.body)).unwrap())
        });
        let parsed = dialect::parse(&s.cfg, &s.parts, &s.body).unwrap();
        let creds = parsed.credentials.as_ref().unwrap();
        group.bench_function(format!("{}/verify", kind.as_str()), |b| {
            b.iter(|| dialect::verify(&s.cfg, black_box(creds), &k.credential).unwrap())
        });
        group.bench_function(format!("{}/classify", kind.as_str()), |b| {
            b.iter(|| s.table.classify(black_box(&parsed)).unwrap())
        });
    }

    let s = signed(DialectKind::Zaif, "ak-0");
    let parsed = dialect::parse(&s.cfg, &s.parts, &s.body).unwrap();
    let classified = s.table.classify(&parsed).unwrap();
    group.bench_function("authorize", |b| {
        let access = AccessRequest {
            action: classified.action,
            facts: &classified.facts,
            client_ip: client,
            now: NOW,
        };
        let cfg = AuthorizeConfig::default();
        let freezes = Freezes::default();
        b.iter(|| authorize(&cfg, black_box(&k), &access, &freezes).unwrap())
    });
    group.bench_function("limits/check_ip", |b| {
        b.iter(|| stores.limits.check_ip(black_box(client)).unwrap())
    });
    group.bench_function("limits/check_key", |b| {
        b.iter(|| {
            stores
                .limits
                .check_key(black_box(&k), Action::Trade)
                .unwrap()
        })
    });
    let route = &s.table.routes()[classified.route];
    let reservation = Reservation::for_request(route, &classified, &k).unwrap();
    group.bench_function("velocity/reserve+commit", |b| {
        b.iter(|| {
            let now = stores.clock.fetch_add(1, Ordering::Relaxed);
            let id = stores
                .velocity
                .reserve(black_box(&reservation), now)
                .unwrap();
            stores.velocity.commit(id).unwrap();
            sweep_now_and_then(&stores, now);
        })
    });
    group.bench_function("anomaly/check_client", |b| {
        b.iter(|| stores.anomaly.check_client(black_box(client), NOW))
    });
    group.bench_function("anomaly/check_request", |b| {
        b.iter(|| {
            let now = stores.clock.fetch_add(1, Ordering::Relaxed);
            stores.anomaly.check_request(&AnomalyRequest {
                key: &k,
                action: Action::Trade,
                client_ip: client,
                last_used: Some(now - 1),
                now,
            })
        })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    // Short runs: the numbers are for the README, not for catching 1 % regressions.
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(30);
    targets = full_decision, pieces
}
criterion_main!(benches);
