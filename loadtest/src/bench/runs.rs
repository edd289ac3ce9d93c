//! One dialect's bench: its processes, the alternating rounds, CPU accounting per process
//! and the open-loop run at half of nginx's maximum.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use keyguard_policy::DialectKind;

use super::results::{median, ratio, DialectResult, HalfRate, Measure, TargetResult};
use super::{bench_limits, gateway_settings, nginx, BenchOptions, TargetKind};
use crate::client::Target;
use crate::harness::{self, ChildGuard, KeySpec, KeyguardCli};
use crate::report::fmt_us;
use crate::runner::{self, ActorSpec, Pace, RunOptions, Source, Tag};
use crate::scenario::{loopback, Repeat};
use crate::stats::Latency;
use crate::workload::{KeyMaterial, Op};

/// A target while it is being measured.
struct Live {
    kind: TargetKind,
    /// Where the clients send (several: replicas, client `i` to the `i mod n`-th);
    /// empty: skipped (the reason is in `result`).
    urls: Vec<String>,
    /// The proxy's processes and whether their children count (nginx's workers do).
    proxy: Vec<(u32, bool)>,
    /// The `redis-server` it keeps its state in.
    redis: Option<u32>,
    result: TargetResult,
    /// Every round's latencies, for the percentile curve.
    latency: Latency,
}

impl Live {
    fn new(kind: TargetKind) -> Live {
        Live {
            kind,
            urls: Vec::new(),
            proxy: Vec::new(),
            redis: None,
            result: TargetResult {
                name: kind.name().to_owned(),
                description: kind.description().to_owned(),
                alg: kind.alg().map(str::to_owned),
                ..TargetResult::default()
            },
            latency: Latency::default(),
        }
    }

    fn skip(&mut self, why: String) {
        eprintln!("{}: {why}", self.result.description);
        self.result.skipped = Some(why);
    }
}

/// Processes whose CPU time a measurement attributes.
struct CpuProbe {
    procs: Vec<(&'static str, u32, bool)>,
}

impl CpuProbe {
    fn new(exchange: u32, proxy: &[(u32, bool)], redis: Option<u32>) -> CpuProbe {
        // The generator's children are the mock and the proxies: count only its own time.
        let mut procs = vec![
            ("generator", std::process::id(), false),
            ("exchange", exchange, false),
        ];
        // Replicas of one target add up: their CPU is what the target costs.
        procs.extend(
            proxy
                .iter()
                .map(|&(pid, children)| ("proxy", pid, children)),
        );
        procs.extend(redis.map(|pid| ("redis", pid, false)));
        CpuProbe { procs }
    }

    fn sample(&self) -> Vec<u64> {
        self.procs
            .iter()
            .map(|(_, pid, children)| harness::cpu_us(*pid, *children))
            .collect()
    }

    fn per_request(
        &self,
        before: &[u64],
        after: &[u64],
        requests: u64,
    ) -> std::collections::BTreeMap<String, f64> {
        let mut out = std::collections::BTreeMap::new();
        for ((name, _, _), (b, a)) in self.procs.iter().zip(before.iter().zip(after)) {
            *out.entry((*name).to_owned()).or_insert(0.0) +=
                a.saturating_sub(*b) as f64 / requests.max(1) as f64;
        }
        out
    }
}

/// Starts the dialect's mock exchange, nginx and one gateway per selected assertion
/// algorithm, runs the rounds and the half-rate run, and stops them all again.
pub(super) async fn bench_dialect(
    opts: &BenchOptions,
    dialect: DialectKind,
    dir: &Path,
    notes: &mut Vec<String>,
) -> anyhow::Result<DialectResult> {
    let (mock, mock_addr) =
        harness::start_mock(&opts.tools.loadtest, dialect, None, None, dir, "mock-bench")?;
    let mock_url = format!("http://{mock_addr}");
    let mut live: Vec<Live> = TargetKind::ALL.into_iter().map(Live::new).collect();
    // Kept alive until the end of this function: dropping a guard stops its process.
    let mut gateways: Vec<ChildGuard> = Vec::new();
    let mut nginx_proc = None;

    let selected = |k: TargetKind| opts.targets.contains(&k);
    let keyguard_kinds: Vec<TargetKind> = TargetKind::ALL
        .into_iter()
        .filter(|k| k.alg().is_some() && selected(*k))
        .collect();
    // One key per client, each allowlisted for its client's address, provisioned once and
    // copied to each gateway's data dir (one gateway per data dir), so every Keyguard
    // target serves the same keys.
    let keys: Vec<Arc<KeyMaterial>> = if let Some(first) = keyguard_kinds.first() {
        let provisioning = keyguard_cli(opts, dir, *first)?;
        harness::write_config(
            dialect,
            &provisioning.config,
            &provisioning.data_dir,
            harness::free_addr()?,
            &mock_url,
            &keyguard_tweak(*first, opts.workers),
        )?;
        let specs: Vec<KeySpec> = (0..opts.concurrency)
            .map(|i| KeySpec {
                account: format!("bench-{i:04}"),
                scopes: "read,trade",
                allow_ips: vec![format!("{}/32", loopback(10, i))],
                label: "bench".into(),
                ..KeySpec::default()
            })
            .collect();
        eprintln!("provisioning {} bench keys", specs.len());
        let keys = provisioning.create_keys(&specs)?;
        for kind in &keyguard_kinds[1..] {
            copy_dir(
                &provisioning.data_dir,
                &keyguard_cli(opts, dir, *kind)?.data_dir,
            )?;
        }
        keys
    } else {
        // Direct and nginx need signed requests too, but no gateway to know the keys.
        (0..opts.concurrency)
            .map(|i| {
                Arc::new(KeyMaterial::new(
                    i,
                    format!("bench-key-{i}"),
                    format!("bench-api-key-{i:04}"),
                    "c2VjcmV0".to_owned(),
                    format!("bench-{i:04}"),
                ))
            })
            .collect()
    };

    for t in &mut live {
        if !selected(t.kind) {
            t.skip("not selected (--targets)".to_owned());
            continue;
        }
        if let Some(why) = t.kind.unavailable() {
            t.skip(why.to_owned());
            continue;
        }
        match t.kind {
            TargetKind::Direct => t.urls = vec![mock_url.clone()],
            TargetKind::Nginx => match nginx::start(dir, mock_addr) {
                Ok((n, addr)) => {
                    t.urls = vec![format!("http://{addr}")];
                    t.proxy = vec![(n.pid(), true)];
                    nginx_proc = Some(n);
                }
                Err(e) => {
                    notes.push(format!("{}: nginx skipped: {e}", dialect.as_str()));
                    t.skip(format!("skipped: {e}"));
                }
            },
            kind => {
                let cli = keyguard_cli(opts, dir, kind)?;
                let mut tweak: Box<dyn Fn(&mut toml::Table)> =
                    Box::new(keyguard_tweak(kind, opts.workers));
                if kind.on_redis() {
                    let (redis, url) = start_redis(&dir.join(kind.name()))?;
                    // The keys provisioned in the embedded store, moved as an operator would.
                    let out = std::process::Command::new(&opts.tools.keyguard)
                        .arg("migrate")
                        .arg("--from")
                        .arg(&cli.data_dir)
                        .args(["--to", &url])
                        .output()?;
                    anyhow::ensure!(
                        out.status.success(),
                        "keyguard migrate failed: {}",
                        String::from_utf8_lossy(&out.stderr)
                    );
                    t.redis = Some(redis.pid());
                    gateways.push(redis);
                    let base = keyguard_tweak(kind, opts.workers);
                    tweak = Box::new(move |doc: &mut toml::Table| {
                        base(doc);
                        harness::set(doc, "store.kind", "redis");
                        harness::set(doc, "store.url", url.clone());
                    });
                }
                // One data dir per replica (`serve.lock`), each a copy of the first made
                // before any replica opens it: the same assertion key, as replicas of one
                // deployment share it.
                if kind.replicas() > 1 {
                    // The assertion key is made on first use: make it now, to be copied.
                    harness::write_config(
                        dialect,
                        &cli.config,
                        &cli.data_dir,
                        harness::free_addr()?,
                        &mock_url,
                        &*tweak,
                    )?;
                    cli.assertion_jwks()?;
                }
                let mut replicas = vec![(cli.clone(), dir.join(kind.name()))];
                for replica in 1..kind.replicas() {
                    let home = dir.join(format!("{}-{replica}", kind.name()));
                    let data_dir = home.join("data");
                    copy_dir(&cli.data_dir, &data_dir)?;
                    let config = home.join("keyguard.toml");
                    let bin = cli.bin.clone();
                    replicas.push((
                        KeyguardCli {
                            bin,
                            config,
                            data_dir,
                        },
                        home,
                    ));
                }
                for (cli, home) in replicas {
                    let (gw, addr) =
                        harness::start_gateway(&cli, dialect, &mock_url, &home, &*tweak)?;
                    t.urls.push(format!("http://{addr}"));
                    t.proxy.push((gw.pid(), false));
                    gateways.push(gw);
                }
            }
        }
    }

    // Warm every target up (connections, caches, the gateway's key cache).
    for t in &live {
        if !t.urls.is_empty() {
            eprintln!("warming up {}", t.result.name);
            let _ = runner::run(
                bench_actors(&keys, Pace::Max),
                &run_opts(dialect, &t.urls, opts.warmup),
            )
            .await;
        }
    }
    for round in 0..opts.rounds {
        for t in live.iter_mut() {
            if t.urls.is_empty() {
                continue;
            }
            let probe = CpuProbe::new(mock.pid(), &t.proxy, t.redis);
            let (m, latency) =
                measure(&keys, Pace::Max, dialect, &t.urls, opts.duration, &probe).await;
            eprintln!(
                "{} round {}: {:<15} {:>8.0} req/s  p50 {:>8}  p99 {:>8}  CPU µs/request {}{}",
                dialect.as_str(),
                round + 1,
                t.result.name,
                m.ok_rps,
                fmt_us(m.p50_us),
                fmt_us(m.p99_us),
                cpu_text(&m),
                if m.non_2xx.is_empty() {
                    String::new()
                } else {
                    format!("  non-2xx {:?}", m.non_2xx)
                }
            );
            t.latency.add(&latency);
            t.result.rounds.push(m);
        }
    }
    for t in live.iter_mut() {
        t.result.median = median(&t.result.rounds);
        t.result.latency_curve = t.latency.curve();
    }

    let half_rate = if opts.half_rate {
        half_rate(opts, dialect, &keys, &live, mock.pid()).await
    } else {
        None
    };
    drop(gateways);
    drop(nginx_proc);
    drop(mock);
    Ok(DialectResult {
        dialect: dialect.as_str().to_owned(),
        targets: live.into_iter().map(|t| t.result).collect(),
        half_rate,
    })
}

/// Open loop at half of nginx's closed-loop maximum (or of Keyguard HS256's, without
/// nginx): direct, nginx and Keyguard HS256 at the same rate.
async fn half_rate(
    opts: &BenchOptions,
    dialect: DialectKind,
    keys: &[Arc<KeyMaterial>],
    live: &[Live],
    exchange: u32,
) -> Option<HalfRate> {
    let find = |k: TargetKind| live.iter().find(|t| t.kind == k && !t.urls.is_empty());
    let keyguard = find(TargetKind::Hs256)?;
    let nginx = find(TargetKind::Nginx);
    let base = nginx.unwrap_or(keyguard);
    let rate = base.result.median.ok_rps / 2.0;
    if rate <= 0.0 {
        return None;
    }
    eprintln!(
        "{}: open loop at {rate:.0} req/s (half of {}'s maximum)",
        dialect.as_str(),
        base.result.name
    );
    let pace = Pace::rate(rate / keys.len().max(1) as f64);
    let at_rate = |t: &Live| {
        let probe = CpuProbe::new(exchange, &t.proxy, t.redis);
        let urls = t.urls.clone();
        async move {
            measure(keys, pace, dialect, &urls, opts.duration, &probe)
                .await
                .0
        }
    };
    let direct = match find(TargetKind::Direct) {
        Some(t) => at_rate(t).await,
        None => Measure::default(),
    };
    let nginx_m = match nginx {
        Some(t) => Some(at_rate(t).await),
        None => None,
    };
    let keyguard_m = at_rate(keyguard).await;
    Some(HalfRate {
        rate,
        half_of: base.result.name.clone(),
        p50_ratio_to_nginx: nginx_m
            .as_ref()
            .and_then(|n| ratio(keyguard_m.p50_us as f64, n.p50_us as f64)),
        p50_added_over_direct_us: keyguard_m.p50_us as i64 - direct.p50_us as i64,
        direct,
        nginx: nginx_m,
        keyguard: keyguard_m,
    })
}

/// One run with CPU accounting: the measure and its latency histogram.
async fn measure(
    keys: &[Arc<KeyMaterial>],
    pace: Pace,
    dialect: DialectKind,
    urls: &[String],
    duration: Duration,
    probe: &CpuProbe,
) -> (Measure, Latency) {
    let before = probe.sample();
    let data = runner::run(bench_actors(keys, pace), &run_opts(dialect, urls, duration)).await;
    let mut m = Measure::of(&data);
    m.cpu_us_per_request = probe.per_request(&before, &probe.sample(), m.requests);
    (m, data.latency)
}

/// The CLI for one Keyguard target's own config and data dir.
fn keyguard_cli(opts: &BenchOptions, dir: &Path, kind: TargetKind) -> anyhow::Result<KeyguardCli> {
    let home = dir.join(kind.name());
    let data_dir = home.join("data");
    std::fs::create_dir_all(&data_dir)?;
    Ok(KeyguardCli {
        bin: opts.tools.keyguard.clone(),
        config: home.join("keyguard.toml"),
        data_dir,
    })
}

fn keyguard_tweak(kind: TargetKind, workers: Option<usize>) -> impl Fn(&mut toml::Table) {
    let alg = kind.alg().unwrap_or("HS256");
    move |doc: &mut toml::Table| {
        bench_limits(doc);
        gateway_settings(doc, alg, workers);
    }
}

/// A `redis-server` for the Redis target: loopback, a free port, append-only file with
/// `everysec` (what a production setup would run), no snapshots.
pub(super) fn start_redis(dir: &Path) -> anyhow::Result<(ChildGuard, String)> {
    let rdir = dir.join("redis");
    std::fs::create_dir_all(&rdir)?;
    let port = harness::free_addr()?.port();
    let guard = ChildGuard::spawn(
        "redis",
        std::process::Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
            ])
            .args(["--appendonly", "yes", "--appendfsync", "everysec"])
            .current_dir(&rdir),
        &rdir,
    )?;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "redis-server did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok((guard, format!("redis://127.0.0.1:{port}")))
}

/// Copies a data dir that no process has open (files and subfolders).
fn copy_dir(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}

/// Run options for one bench run (no records kept: only counts and histograms), spread
/// over `urls` (replicas of one target; at least one).
pub(super) fn run_opts(dialect: DialectKind, urls: &[String], duration: Duration) -> RunOptions {
    let parse = |u: &String| Target::parse(u).expect("bench URLs are http://host:port");
    RunOptions {
        dialect,
        target: parse(&urls[0]),
        spread: urls[1..].iter().map(parse).collect(),
        duration,
        keep_records: false,
        progress: false,
        seed: 7,
    }
}

/// One client per key: a signed balance read, over and over, from the key's address.
fn bench_actors(keys: &[Arc<KeyMaterial>], pace: Pace) -> Vec<ActorSpec> {
    keys.iter()
        .enumerate()
        .map(|(i, key)| ActorSpec {
            role: "bench",
            tag: Tag::Legit,
            source: Source::Fixed(loopback(10, i)),
            pace,
            script: Box::new(Repeat {
                key: Arc::clone(key),
                op: Op::Balance,
            }),
            ready_after: 0,
            waits_ready: false,
        })
        .collect()
}

/// `proxy 20.1, generator 15.2, exchange 9.8`.
pub(super) fn cpu_text(m: &Measure) -> String {
    ["proxy", "redis", "generator", "exchange"]
        .iter()
        .filter_map(|k| m.cpu(k).map(|v| format!("{k} {v:.1}")))
        .collect::<Vec<_>>()
        .join(", ")
}
