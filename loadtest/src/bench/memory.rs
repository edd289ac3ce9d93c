//! The memory check (`--stuffing-check`): Keyguard's resident memory through a long run of
//! credential stuffing with a new random key on every request and (nearly) every request
//! from a new client IP, which is what would grow an unbounded table.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use keyguard_policy::DialectKind;

use super::results::MemoryCheck;
use super::runs::run_opts;
use super::{gateway_settings, BenchOptions};
use crate::harness::{self, KeyguardCli};
use crate::runner::{self, ActorSpec, AddressPool, Pace, Script, Source, Tag};
use crate::workload::{random_token, Auth, Op, Planned};

/// Random API keys only, from rotating source addresses or with a random
/// `X-Forwarded-For`.
struct RandomKeys {
    forwarded: Option<Arc<AtomicU64>>,
}

impl Script for RandomKeys {
    fn next(&mut self, rng: &mut fastrand::Rng) -> Option<Planned> {
        let forwarded_for = self.forwarded.as_ref().map(|n| {
            n.fetch_add(1, Ordering::Relaxed);
            if rng.bool() {
                // A random address of 100.64.0.0/10 (shared address space, 4M
                // addresses); header text only, nothing is sent there.
                let v = 0x6440_0000u32 | rng.u32(..0x40_0000);
                Ipv4Addr::from(v).to_string()
            } else {
                // A random /64 inside 2001:db8::/32 (documentation prefix).
                format!(
                    "2001:db8:{:x}:{:x}::{:x}",
                    rng.u16(..),
                    rng.u16(..),
                    rng.u16(1..)
                )
            }
        });
        Some(Planned {
            op: Op::Balance,
            auth: Some(Auth::Forged(random_token(rng, 64))),
            forwarded_for,
        })
    }
}

/// Keyguard (HS256, with `--workers` when given) in front of its own mock exchange, fed
/// random keys from ever new client IPs; its VmRSS is sampled throughout.
pub(super) async fn stuffing_check(
    opts: &BenchOptions,
    dialect: DialectKind,
    sdir: &Path,
) -> anyhow::Result<MemoryCheck> {
    let data_dir = sdir.join("data");
    std::fs::create_dir_all(&data_dir)?;
    let cli = KeyguardCli {
        bin: opts.tools.keyguard.clone(),
        config: sdir.join("keyguard.toml"),
        data_dir,
    };
    let (_mock, mock_addr) = harness::start_mock(
        &opts.tools.loadtest,
        dialect,
        None,
        None,
        sdir,
        "mock-stuffing",
    )?;
    let mock_url = format!("http://{mock_addr}");
    // Trust 127.0.0.1 as a proxy: its X-Forwarded-For names the client.
    let trust = |doc: &mut toml::Table| {
        harness::set(
            doc,
            "server.trusted_proxies",
            toml::Value::Array(vec![toml::Value::String("127.0.0.1/32".into())]),
        );
        gateway_settings(doc, "HS256", opts.workers);
    };
    let (gateway, addr) = harness::start_gateway(&cli, dialect, &mock_url, sdir, &trust)?;
    let pid = gateway.pid();
    let url = format!("http://{addr}");
    let rss_start = harness::rss_kib(pid).unwrap_or(0);

    let forwarded = Arc::new(AtomicU64::new(0));
    // 127.100.0.1 .. 127.199.255.255: 6.5 million source addresses.
    let pool = Arc::new(AddressPool::new(
        Ipv4Addr::new(127, 100, 0, 1),
        100 * 65_536 - 1,
    ));
    let actors = |pool: &Arc<AddressPool>, forwarded: &Arc<AtomicU64>| {
        let mut actors = Vec::new();
        for _ in 0..opts.concurrency / 2 {
            actors.push(ActorSpec {
                role: "stuffer-fresh-ip",
                tag: Tag::Attack,
                source: Source::Rotating {
                    pool: Arc::clone(pool),
                    per_address: 2,
                },
                pace: Pace::Max,
                script: Box::new(RandomKeys { forwarded: None }),
                ready_after: 0,
                waits_ready: false,
            });
        }
        for _ in 0..opts.concurrency - opts.concurrency / 2 {
            actors.push(ActorSpec {
                role: "stuffer-forwarded",
                tag: Tag::Attack,
                source: Source::Fixed(IpAddr::V4(Ipv4Addr::LOCALHOST)),
                pace: Pace::Max,
                script: Box::new(RandomKeys {
                    forwarded: Some(Arc::clone(forwarded)),
                }),
                ready_after: 0,
                waits_ready: false,
            });
        }
        actors
    };
    eprintln!("stuffing check: warm-up");
    let warm_pool = Arc::new(AddressPool::new(Ipv4Addr::new(127, 99, 0, 1), 65_000));
    let warm_fwd = Arc::new(AtomicU64::new(0));
    let _ = runner::run(
        actors(&warm_pool, &warm_fwd),
        &run_opts(dialect, std::slice::from_ref(&url), Duration::from_secs(3)),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_before = harness::rss_kib(pid).unwrap_or(0);

    let peak = Arc::new(AtomicU64::new(rss_before));
    let sampler = {
        let peak = Arc::clone(&peak);
        tokio::spawn(async move {
            loop {
                if let Some(r) = harness::rss_kib(pid) {
                    peak.fetch_max(r, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        })
    };
    eprintln!(
        "stuffing check: {:?} of random keys from fresh source IPs and forwarded IPs",
        opts.stuffing_duration
    );
    let mut o = run_opts(dialect, std::slice::from_ref(&url), opts.stuffing_duration);
    o.progress = true;
    let data = runner::run(actors(&pool, &forwarded), &o).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    sampler.abort();
    let rss_after = harness::rss_kib(pid).unwrap_or(0);
    peak.fetch_max(rss_after, Ordering::Relaxed);
    let rss_peak = peak.load(Ordering::Relaxed);
    let mut statuses = BTreeMap::new();
    let mut codes = BTreeMap::new();
    let mut requests = 0;
    for c in data.by_tag.values() {
        requests += c.requests;
        for (k, v) in &c.statuses {
            *statuses.entry(k.clone()).or_default() += v;
        }
        for (k, v) in &c.deny_codes {
            *codes.entry(k.clone()).or_default() += v;
        }
    }
    drop(gateway);
    let distinct_source_ips = pool.distinct_used();
    Ok(MemoryCheck {
        dialect: dialect.as_str().to_owned(),
        duration_s: data.elapsed.as_secs_f64(),
        requests,
        distinct_keys: requests,
        distinct_source_ips,
        distinct_forwarded_ips: forwarded.load(Ordering::Relaxed),
        rss_start_kib: rss_start,
        rss_before_kib: rss_before,
        rss_peak_kib: rss_peak,
        rss_after_kib: rss_after,
        growth_mib: (rss_peak.saturating_sub(rss_before)) as f64 / 1024.0,
        statuses,
        deny_codes: codes,
        by_role: data.by_role.clone(),
        method: format!(
            "every request presents a new random 64-character API key. Half the clients connect from a new \
             loopback source address (127.100.0.0-127.199.255.255) every 2 requests — a real TCP connection \
             per address; {distinct_source_ips} distinct addresses were practical in the time, limited by \
             connection setup on this machine. The other half send from 127.0.0.1, which this gateway's config \
             trusts as a proxy (server.trusted_proxies = [\"127.0.0.1/32\"]), with a random X-Forwarded-For \
             client (IPv4 in 100.64.0.0/10, or an IPv6 address in a random /64 of 2001:db8::/32), so the \
             gateway tracks each as a different client IP."
        ),
    })
}
