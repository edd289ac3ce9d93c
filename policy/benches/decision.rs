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

mod support;

use std::hint::black_box;
use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};

use keyguard_policy::anomaly::AnomalyRequest;
use keyguard_policy::authorize::{authorize, AccessRequest, AuthorizeConfig, Freezes};
use keyguard_policy::dialect::{self, DialectKind};
use keyguard_policy::velocity::{Reservation, VelocityStore};
use keyguard_policy::{Action, KeyRecord};
use support::{decide, key, signed, stores, sweep_now_and_then, Signed, NOW};

/// The gateway's allocator (see `gateway/src/main.rs`), so the bench measures a decision
/// as the gateway makes it.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
