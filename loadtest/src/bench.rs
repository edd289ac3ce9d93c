//! `bench`: the same closed-loop workload, side by side in one run, against
//! (a) the mock exchange directly, (b) nginx as a plain `proxy_pass` reverse proxy with
//! upstream keep-alive, (c) Keyguard with the embedded store, (d) Keyguard with Redis
//! (not yet available).
//!
//! The workload is a signed private read (Zaif `get_info2`, Binance `account`, Kraken
//! `Balance`) from `concurrency` clients, each with its own key, its own loopback address
//! and one keep-alive connection. The mock runs in bench mode (`upstream --bench`): it
//! executes every request without asking for an assertion, so it does exactly the same
//! work behind each target and the differences are the proxies' own cost. Targets
//! alternate within each round; the median round is reported.
//!
//! Then: the p50 Keyguard adds over the direct upstream in an open-loop run at half of
//! Keyguard's measured maximum, and (`--stuffing-check`) Keyguard's resident memory
//! through a long stuffing run with a million distinct keys and client IPs.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use keyguard_policy::DialectKind;
use serde::{Deserialize, Serialize};

use crate::client::Target;
use crate::harness::{self, ChildGuard, KeySpec, KeyguardCli, Tools};
use crate::report::{esc, fmt_us, page};
use crate::runner::{self, ActorSpec, AddressPool, Pace, RunData, RunOptions, Script, Source, Tag};
use crate::scenario::{loopback, Repeat};
use crate::workload::{random_token, Auth, KeyMaterial, Op, Planned};

/// What `bench` does.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Binaries (Keyguard should be a release build).
    pub tools: Tools,
    /// Dialect.
    pub dialect: DialectKind,
    /// Closed-loop clients.
    pub concurrency: usize,
    /// Measured time per target and round.
    pub duration: Duration,
    /// Rounds.
    pub rounds: usize,
    /// Run the memory check.
    pub stuffing_check: bool,
    /// Its duration.
    pub stuffing_duration: Duration,
    /// Where to write bench.json / bench.html.
    pub out_dir: PathBuf,
}

/// One measurement of one target.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Measure {
    /// Requests completed per second.
    pub rps: f64,
    /// 2xx answers per second.
    pub ok_rps: f64,
    /// Median latency (µs).
    pub p50_us: u64,
    /// 99th percentile (µs).
    pub p99_us: u64,
    /// 99.9th percentile (µs).
    pub p999_us: u64,
    /// Requests completed.
    pub requests: u64,
    /// Answers that were not 2xx (or no answer), by status.
    pub non_2xx: BTreeMap<String, u64>,
    /// CPU time per request (µs) of each process involved: `generator` (this load
    /// generator), `exchange` (the mock), `proxy` (nginx with its workers, or Keyguard).
    pub cpu_us_per_request: BTreeMap<String, f64>,
}

impl Measure {
    fn of(data: &RunData) -> Measure {
        let mut statuses = BTreeMap::new();
        let mut requests = 0;
        let mut ok = 0;
        for c in data.by_tag.values() {
            requests += c.requests;
            ok += c.ok();
            for (s, n) in &c.statuses {
                if !s.starts_with('2') {
                    *statuses.entry(s.clone()).or_default() += n;
                }
            }
        }
        let secs = data.elapsed.as_secs_f64().max(1e-9);
        let l = data.latency.summary();
        Measure {
            rps: requests as f64 / secs,
            ok_rps: ok as f64 / secs,
            p50_us: l.p50_us,
            p99_us: l.p99_us,
            p999_us: l.p999_us,
            requests,
            non_2xx: statuses,
            cpu_us_per_request: BTreeMap::new(),
        }
    }
}

/// Processes whose CPU time a measurement attributes.
struct CpuProbe {
    procs: Vec<(&'static str, u32)>,
}

impl CpuProbe {
    fn sample(&self) -> Vec<u64> {
        self.procs
            .iter()
            // The generator's children are the mock and the proxies: count only its own
            // time; nginx's workers are children of its master.
            .map(|(name, pid)| harness::cpu_us(*pid, *name == "proxy"))
            .collect()
    }

    fn per_request(&self, before: &[u64], after: &[u64], requests: u64) -> BTreeMap<String, f64> {
        self.procs
            .iter()
            .zip(before.iter().zip(after))
            .map(|((name, _), (b, a))| {
                (
                    (*name).to_owned(),
                    a.saturating_sub(*b) as f64 / requests.max(1) as f64,
                )
            })
            .collect()
    }
}

/// One target's results.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TargetResult {
    /// `direct`, `nginx`, `keyguard-embedded`, `keyguard-redis`.
    pub name: String,
    /// What it is.
    pub description: String,
    /// Why it did not run.
    pub skipped: Option<String>,
    /// Every round.
    pub rounds: Vec<Measure>,
    /// Median of each metric over the rounds.
    pub median: Measure,
}

/// The p50 added at half of Keyguard's maximum rate.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct HalfRate {
    /// The open-loop rate (req/s): half of Keyguard's closed-loop median.
    pub rate: f64,
    /// Direct.
    pub direct: Measure,
    /// Keyguard.
    pub keyguard: Measure,
    /// Keyguard p50 minus direct p50 (µs); target ≤ 150.
    pub p50_added_us: i64,
    /// nginx at the same rate, when installed: what a plain proxy hop adds on this
    /// machine, so Keyguard's own share can be read off.
    #[serde(default)]
    pub nginx: Option<Measure>,
}

/// Memory through the stuffing run.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct MemoryCheck {
    /// Seconds of stuffing.
    pub duration_s: f64,
    /// Requests sent.
    pub requests: u64,
    /// Distinct random API keys presented (one per request).
    pub distinct_keys: u64,
    /// Distinct real source addresses used (new TCP connection each).
    pub distinct_source_ips: u64,
    /// Requests with a random client IP in `X-Forwarded-For` from the trusted 127.0.0.1
    /// (drawn from 4M IPv4 addresses or 2^32 IPv6 /64s: nearly all distinct).
    pub distinct_forwarded_ips: u64,
    /// VmRSS right after start (KiB).
    pub rss_start_kib: u64,
    /// VmRSS after a short warm-up, before the run (KiB).
    pub rss_before_kib: u64,
    /// Highest VmRSS sampled during the run (KiB).
    pub rss_peak_kib: u64,
    /// VmRSS after the run (KiB).
    pub rss_after_kib: u64,
    /// Peak minus before (MiB); target < 50.
    pub growth_mib: f64,
    /// Responses by status.
    pub statuses: BTreeMap<String, u64>,
    /// Deny codes.
    pub deny_codes: BTreeMap<String, u64>,
    /// Responses by client kind (fresh source address / forwarded).
    pub by_role: BTreeMap<String, crate::runner::Counts>,
    /// How the million distinct IPs were produced.
    pub method: String,
}

/// Everything `bench` measured.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct BenchReport {
    /// `nproc`.
    pub cpus: usize,
    /// CPU model from /proc/cpuinfo.
    pub cpu_model: String,
    /// Dialect.
    pub dialect: String,
    /// Closed-loop clients.
    pub concurrency: usize,
    /// Seconds per target and round.
    pub duration_s: f64,
    /// Rounds.
    pub rounds: usize,
    /// The targets, in order (a) .. (d).
    pub targets: Vec<TargetResult>,
    /// The p50 added at half load.
    pub half_rate: Option<HalfRate>,
    /// The memory check.
    pub memory: Option<MemoryCheck>,
    /// Context.
    pub notes: Vec<String>,
}

/// Runs the bench and prints/writes its report.
pub async fn run(opts: BenchOptions) -> anyhow::Result<()> {
    let dir = tempfile::Builder::new()
        .prefix("keyguard-bench-")
        .tempdir()?;
    let mut notes = Vec::new();
    if !opts
        .tools
        .keyguard
        .parent()
        .is_some_and(|p| p.ends_with("release"))
    {
        notes.push(format!(
            "keyguard is not a release build ({}): run the bench with `cargo run --release -p keyguard-loadtest -- bench`",
            opts.tools.keyguard.display()
        ));
    }

    // The exchange, in bench mode.
    let (mock, mock_addr) = harness::start_mock(
        &opts.tools.loadtest,
        opts.dialect,
        None,
        None,
        dir.path(),
        "mock-bench",
    )?;
    let mock_url = format!("http://{mock_addr}");

    // Keyguard with one key per client, each allowlisted for its client's address.
    let data_dir = dir.path().join("data");
    std::fs::create_dir_all(&data_dir)?;
    let cli = KeyguardCli {
        bin: opts.tools.keyguard.clone(),
        config: dir.path().join("keyguard.toml"),
        data_dir,
    };
    harness::write_config(
        opts.dialect,
        &cli.config,
        &cli.data_dir,
        harness::free_addr()?,
        &mock_url,
        &bench_config,
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
    let keys = cli.create_keys(&specs)?;
    let (keyguard, kg_addr) =
        harness::start_gateway(&cli, opts.dialect, &mock_url, dir.path(), &bench_config)?;
    let kg_url = format!("http://{kg_addr}");

    // nginx, if installed.
    let nginx = match start_nginx(dir.path(), mock_addr) {
        Ok(n) => Some(n),
        Err(e) => {
            eprintln!("nginx: skipped ({e})");
            notes.push(format!("nginx skipped: {e}"));
            None
        }
    };

    let mut targets: Vec<(TargetResult, Option<String>)> = vec![
        (
            TargetResult {
                name: "direct".into(),
                description: "(a) the mock exchange directly".into(),
                ..TargetResult::default()
            },
            Some(mock_url.clone()),
        ),
        (
            TargetResult {
                name: "nginx".into(),
                description: "(b) nginx proxy_pass, upstream keepalive".into(),
                skipped: nginx.is_none().then(|| "nginx is not installed".to_owned()),
                ..TargetResult::default()
            },
            nginx.as_ref().map(|(_, addr)| format!("http://{addr}")),
        ),
        (
            TargetResult {
                name: "keyguard-embedded".into(),
                description: "(c) Keyguard, embedded store, all checks on".into(),
                ..TargetResult::default()
            },
            Some(kg_url.clone()),
        ),
        (
            TargetResult {
                name: "keyguard-redis".into(),
                description: "(d) Keyguard with Redis".into(),
                skipped: Some("skipped: the Redis store has not landed".into()),
                ..TargetResult::default()
            },
            None,
        ),
    ];
    for (t, _) in &targets {
        if let Some(why) = &t.skipped {
            eprintln!("{}: {why}", t.description);
        }
    }

    let closed = |url: &str, duration: Duration| {
        let actors = bench_actors(&keys, Pace::Max);
        let opts = run_opts(opts.dialect, url, duration);
        async move { runner::run(actors, &opts).await }
    };
    // Warm every target up (connections, caches, the gateway's key cache).
    for (t, url) in &targets {
        if let Some(url) = url {
            eprintln!("warming up {}", t.name);
            let _ = closed(url, Duration::from_secs(2)).await;
        }
    }
    let generator = std::process::id();
    let probe_for = |name: &str| {
        let mut procs = vec![("generator", generator), ("exchange", mock.pid())];
        match name {
            "nginx" => procs.extend(nginx.as_ref().map(|(n, _)| ("proxy", n.pid()))),
            "keyguard-embedded" => procs.push(("proxy", keyguard.pid())),
            _ => {}
        }
        CpuProbe { procs }
    };
    for round in 0..opts.rounds {
        for (t, url) in targets.iter_mut() {
            let Some(url) = url else { continue };
            let probe = probe_for(&t.name);
            let before = probe.sample();
            let data = closed(url, opts.duration).await;
            let mut m = Measure::of(&data);
            m.cpu_us_per_request = probe.per_request(&before, &probe.sample(), m.requests);
            eprintln!(
                "round {}: {:<18} {:>8.0} req/s  p50 {:>8}  p99 {:>8}  CPU µs/request {}{}",
                round + 1,
                t.name,
                m.rps,
                fmt_us(m.p50_us),
                fmt_us(m.p99_us),
                cpu_text(&m.cpu_us_per_request),
                if m.non_2xx.is_empty() {
                    String::new()
                } else {
                    format!("  non-2xx {:?}", m.non_2xx)
                }
            );
            t.rounds.push(m);
        }
    }
    for (t, _) in targets.iter_mut() {
        t.median = median(&t.rounds);
    }

    // p50 added at half of Keyguard's maximum.
    let kg_max = targets[2].0.median.ok_rps;
    let half_rate = if kg_max > 0.0 {
        let rate = kg_max / 2.0;
        let open = |url: &str| {
            let actors = bench_actors(&keys, Pace::rate(rate / opts.concurrency as f64));
            let o = run_opts(opts.dialect, url, opts.duration);
            async move { runner::run(actors, &o).await }
        };
        eprintln!(
            "open loop at {rate:.0} req/s (half of Keyguard's maximum): direct, nginx, Keyguard"
        );
        let direct = Measure::of(&open(&mock_url).await);
        let nginx_m = match &targets[1].1 {
            Some(url) => Some(Measure::of(&open(url).await)),
            None => None,
        };
        let keyguard_m = Measure::of(&open(&kg_url).await);
        Some(HalfRate {
            rate,
            p50_added_us: keyguard_m.p50_us as i64 - direct.p50_us as i64,
            direct,
            keyguard: keyguard_m,
            nginx: nginx_m,
        })
    } else {
        None
    };
    drop(keyguard);
    drop(nginx);

    let memory = if opts.stuffing_check {
        Some(stuffing_check(&opts, &mock_url, dir.path()).await?)
    } else {
        None
    };

    let report = BenchReport {
        cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        cpu_model: cpu_model(),
        dialect: opts.dialect.as_str().to_owned(),
        concurrency: opts.concurrency,
        duration_s: opts.duration.as_secs_f64(),
        rounds: opts.rounds,
        targets: targets.into_iter().map(|(t, _)| t).collect(),
        half_rate,
        memory,
        notes,
    };
    println!("{}", report.table());
    std::fs::create_dir_all(&opts.out_dir)?;
    let json = opts.out_dir.join("bench.json");
    std::fs::write(&json, serde_json::to_vec_pretty(&report)?)?;
    let html = opts.out_dir.join("bench.html");
    std::fs::write(&html, report.html())?;
    println!("report: {}\njson:   {}", html.display(), json.display());
    Ok(())
}

/// The gateway config for benchmarks: the example config with every check on, but rate
/// limits far above the bench's load (the example allows a key 10 requests/s; the bench
/// drives each key as fast as it answers). The limiters still run on every request.
fn bench_config(doc: &mut toml::Table) {
    let high = || {
        let mut t = toml::Table::new();
        t.insert("count".into(), 1_000_000.into());
        t.insert("per".into(), "1s".into());
        toml::Value::Table(t)
    };
    harness::set(doc, "limits.ip", high());
    for class in ["key", "account", "read", "trade"] {
        harness::set(doc, &format!("limits.tiers.default.{class}"), high());
    }
}

fn run_opts(dialect: DialectKind, url: &str, duration: Duration) -> RunOptions {
    RunOptions {
        dialect,
        target: Target::parse(url).expect("bench URLs are http://host:port"),
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

/// The median of each metric over the rounds.
pub fn median(rounds: &[Measure]) -> Measure {
    if rounds.is_empty() {
        return Measure::default();
    }
    fn med<T: Copy + PartialOrd>(mut v: Vec<T>) -> T {
        v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
        v[v.len() / 2]
    }
    let mut non_2xx = BTreeMap::new();
    for r in rounds {
        for (k, v) in &r.non_2xx {
            *non_2xx.entry(k.clone()).or_default() += v;
        }
    }
    Measure {
        rps: med(rounds.iter().map(|r| r.rps).collect()),
        ok_rps: med(rounds.iter().map(|r| r.ok_rps).collect()),
        p50_us: med(rounds.iter().map(|r| r.p50_us).collect()),
        p99_us: med(rounds.iter().map(|r| r.p99_us).collect()),
        p999_us: med(rounds.iter().map(|r| r.p999_us).collect()),
        requests: rounds.iter().map(|r| r.requests).sum(),
        non_2xx,
        cpu_us_per_request: rounds[0]
            .cpu_us_per_request
            .keys()
            .map(|k| {
                let v = med(rounds
                    .iter()
                    .map(|r| r.cpu_us_per_request.get(k).copied().unwrap_or(0.0))
                    .collect());
                (k.clone(), v)
            })
            .collect(),
    }
}

fn cpu_text(cpu: &BTreeMap<String, f64>) -> String {
    cpu.iter()
        .map(|(k, v)| format!("{k} {v:.1}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `a / b`, or `None` when `b` is not a measurement.
pub fn ratio(a: f64, b: f64) -> Option<f64> {
    (b > 0.0).then(|| a / b)
}

fn fmt_ratio(r: Option<f64>) -> String {
    r.map_or_else(|| "—".to_owned(), |r| format!("{r:.2}"))
}

impl BenchReport {
    fn measured(&self, name: &str) -> Option<&Measure> {
        self.targets
            .iter()
            .find(|t| t.name == name && t.skipped.is_none())
            .map(|t| &t.median)
    }

    /// Rows: target, req/s, p50, p99, and the ratios to direct and to nginx.
    fn rows(&self) -> Vec<[String; 10]> {
        let direct = self.measured("direct").cloned();
        let nginx = self.measured("nginx").cloned();
        self.targets
            .iter()
            .map(|t| {
                if let Some(why) = &t.skipped {
                    let mut row: [String; 10] = Default::default();
                    row[0] = t.description.clone();
                    row[1] = why.clone();
                    return row;
                }
                let m = &t.median;
                let r = |base: &Option<Measure>, f: fn(&Measure) -> f64| {
                    fmt_ratio(base.as_ref().and_then(|b| ratio(f(m), f(b))))
                };
                [
                    t.description.clone(),
                    format!("{:.0}", m.ok_rps),
                    fmt_us(m.p50_us),
                    fmt_us(m.p99_us),
                    r(&direct, |x| x.ok_rps),
                    r(&nginx, |x| x.ok_rps),
                    r(&direct, |x| x.p50_us as f64),
                    r(&nginx, |x| x.p50_us as f64),
                    r(&direct, |x| x.p99_us as f64),
                    r(&nginx, |x| x.p99_us as f64),
                ]
            })
            .collect()
    }

    const HEADERS: [&'static str; 10] = [
        "target",
        "req/s",
        "p50",
        "p99",
        "req/s ÷ (a)",
        "req/s ÷ (b)",
        "p50 ÷ (a)",
        "p50 ÷ (b)",
        "p99 ÷ (a)",
        "p99 ÷ (b)",
    ];

    /// The plain-text report.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "bench: {} dialect, {} closed-loop clients, {} round(s) of {:.0} s per target, median round; {} CPUs ({})",
            self.dialect, self.concurrency, self.rounds, self.duration_s, self.cpus, self.cpu_model
        );
        let rows = self.rows();
        let _ = writeln!(
            out,
            "{:<46} {:>9} {:>9} {:>9} {:>11} {:>11} {:>9} {:>9} {:>9} {:>9}",
            Self::HEADERS[0],
            Self::HEADERS[1],
            Self::HEADERS[2],
            Self::HEADERS[3],
            Self::HEADERS[4],
            Self::HEADERS[5],
            Self::HEADERS[6],
            Self::HEADERS[7],
            Self::HEADERS[8],
            Self::HEADERS[9]
        );
        for r in rows {
            if r[2].is_empty() {
                let _ = writeln!(out, "{:<46} {}", r[0], r[1]);
                continue;
            }
            let _ = writeln!(
                out,
                "{:<46} {:>9} {:>9} {:>9} {:>11} {:>11} {:>9} {:>9} {:>9} {:>9}",
                r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8], r[9]
            );
        }
        let _ = writeln!(out, "CPU time per request (µs, median round; this machine's cores are shared by all processes):");
        for t in self.targets.iter().filter(|t| t.skipped.is_none()) {
            let _ = writeln!(
                out,
                "  {:<20} {}",
                t.name,
                cpu_text(&t.median.cpu_us_per_request)
            );
        }
        for t in &self.targets {
            if !t.median.non_2xx.is_empty() {
                let _ = writeln!(
                    out,
                    "note: {} answered non-2xx (not counted in req/s): {:?}",
                    t.name, t.median.non_2xx
                );
            }
        }
        if let Some(h) = &self.half_rate {
            let _ = writeln!(
                out,
                "\nopen loop at {:.0} req/s (half of Keyguard's maximum): p50 direct {}, Keyguard {} => added {} (target ≤ 150µs: {})",
                h.rate,
                fmt_us(h.direct.p50_us),
                fmt_us(h.keyguard.p50_us),
                fmt_signed_us(h.p50_added_us),
                if h.p50_added_us <= 150 { "met" } else { "MISSED" }
            );
            let _ = writeln!(
                out,
                "  p99 direct {}, Keyguard {}",
                fmt_us(h.direct.p99_us),
                fmt_us(h.keyguard.p99_us)
            );
            if let Some(n) = &h.nginx {
                let _ = writeln!(
                    out,
                    "  nginx at the same rate: p50 {} (adds {} over direct; Keyguard adds {} over nginx)",
                    fmt_us(n.p50_us),
                    fmt_signed_us(n.p50_us as i64 - h.direct.p50_us as i64),
                    fmt_signed_us(h.keyguard.p50_us as i64 - n.p50_us as i64)
                );
            }
        }
        if let (Some(kg), Some(ng)) = (self.measured("keyguard-embedded"), self.measured("nginx")) {
            let rps = ratio(kg.ok_rps, ng.ok_rps).unwrap_or(0.0);
            let _ = writeln!(
                out,
                "targets: Keyguard req/s ÷ nginx = {:.2} (≥ 1.0: {}); Keyguard p99 {} vs nginx {} ({})",
                rps,
                if rps >= 1.0 { "met" } else { "MISSED" },
                fmt_us(kg.p99_us),
                fmt_us(ng.p99_us),
                if kg.p99_us <= ng.p99_us { "met" } else { "MISSED" }
            );
        }
        if let Some(m) = &self.memory {
            let _ = writeln!(
                out,
                "\nmemory through {:.0} s of stuffing: {} requests, {} distinct keys, {} distinct source IPs + {} random X-Forwarded-For IPs",
                m.duration_s, m.requests, m.distinct_keys, m.distinct_source_ips, m.distinct_forwarded_ips
            );
            let _ = writeln!(
                out,
                "  VmRSS start {} MiB, before {} MiB, peak {} MiB, after {} MiB => growth {:.1} MiB (target < 50 MiB: {})",
                m.rss_start_kib / 1024,
                m.rss_before_kib / 1024,
                m.rss_peak_kib / 1024,
                m.rss_after_kib / 1024,
                m.growth_mib,
                if m.growth_mib < 50.0 { "met" } else { "MISSED" }
            );
            for (role, c) in &m.by_role {
                let _ = writeln!(
                    out,
                    "  {role}: {} requests, statuses {:?}, deny codes {:?}",
                    c.requests, c.statuses, c.deny_codes
                );
            }
            let _ = writeln!(out, "  {}", m.method);
        }
        for n in &self.notes {
            let _ = writeln!(out, "note: {n}");
        }
        out
    }

    /// A self-contained HTML page with the table and a bar chart of req/s.
    pub fn html(&self) -> String {
        let mut body = format!(
            "<h1>Keyguard bench</h1><p class=sub>{} dialect, {} closed-loop clients, {} round(s) of {:.0} s per target (median round); {} CPUs, {}</p><table><tr>",
            esc(&self.dialect), self.concurrency, self.rounds, self.duration_s, self.cpus, esc(&self.cpu_model)
        );
        for h in Self::HEADERS {
            let _ = write!(body, "<th>{}</th>", esc(h));
        }
        body.push_str("</tr>");
        for r in self.rows() {
            body.push_str("<tr>");
            if r[2].is_empty() {
                let _ = write!(
                    body,
                    "<td>{}</td><td colspan=9>{}</td>",
                    esc(&r[0]),
                    esc(&r[1])
                );
            } else {
                for c in &r {
                    let _ = write!(body, "<td>{}</td>", esc(c));
                }
            }
            body.push_str("</tr>");
        }
        body.push_str("</table>");
        let bars: BTreeMap<String, u64> = self
            .targets
            .iter()
            .filter(|t| t.skipped.is_none())
            .map(|t| (t.description.clone(), t.median.ok_rps as u64))
            .collect();
        body.push_str(&crate::report::svg::bar_chart(
            "requests/s (median round)",
            &bars,
        ));
        let text = self.table();
        let _ = write!(body, "<h2>Full output</h2><pre>{}</pre>", esc(&text));
        page("Keyguard bench", &body)
    }
}

fn fmt_signed_us(us: i64) -> String {
    if us < 0 {
        format!("-{}", fmt_us(us.unsigned_abs()))
    } else {
        fmt_us(us as u64)
    }
}

/// The first `model name` of /proc/cpuinfo.
pub fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".to_owned())
}

/// Starts nginx as a plain reverse proxy to `upstream` with a generated config in `dir`.
/// A running nginx. Dropping it stops the master with SIGTERM, which stops its workers
/// too (a SIGKILLed master would leave them behind), then reaps it.
struct Nginx(ChildGuard);

impl Nginx {
    fn pid(&self) -> u32 {
        self.0.pid()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.pid().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.0.exited().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn start_nginx(dir: &Path, upstream: SocketAddr) -> anyhow::Result<(Nginx, SocketAddr)> {
    let version = Command::new("nginx")
        .arg("-v")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if !version.is_ok_and(|s| s.success()) {
        anyhow::bail!("nginx is not installed");
    }
    let prefix = dir.join("nginx");
    std::fs::create_dir_all(prefix.join("logs"))?;
    std::fs::create_dir_all(prefix.join("tmp"))?;
    let listen = harness::free_addr()?;
    let p = prefix.display();
    let conf = format!(
        "worker_processes auto;
daemon off;
pid {p}/nginx.pid;
error_log {p}/logs/error.log warn;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    client_body_temp_path {p}/tmp/body;
    proxy_temp_path {p}/tmp/proxy;
    fastcgi_temp_path {p}/tmp/fastcgi;
    uwsgi_temp_path {p}/tmp/uwsgi;
    scgi_temp_path {p}/tmp/scgi;
    keepalive_requests 1000000;
    keepalive_timeout 60s;
    upstream exchange {{
        server {upstream};
        keepalive 256;
        keepalive_requests 1000000;
    }}
    server {{
        listen {listen};
        location / {{
            proxy_pass http://exchange;
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
        }}
    }}
}}
"
    );
    let conf_path = prefix.join("nginx.conf");
    std::fs::write(&conf_path, conf)?;
    let mut cmd = Command::new("nginx");
    cmd.arg("-p")
        .arg(&prefix)
        .arg("-c")
        .arg(&conf_path)
        .arg("-e")
        .arg(prefix.join("logs/error.log"))
        .stdout(Stdio::null());
    let mut child = ChildGuard::spawn("nginx", &mut cmd, dir)?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = child.exited() {
            anyhow::bail!("nginx exited ({status}): {}", child.log());
        }
        if TcpStream::connect_timeout(&listen, Duration::from_millis(200)).is_ok() {
            return Ok((Nginx(child), listen));
        }
        if Instant::now() > deadline {
            anyhow::bail!("nginx did not listen on {listen}: {}", child.log());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

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

async fn stuffing_check(
    opts: &BenchOptions,
    mock_url: &str,
    dir: &Path,
) -> anyhow::Result<MemoryCheck> {
    let sdir = dir.join("stuffing");
    let data_dir = sdir.join("data");
    std::fs::create_dir_all(&data_dir)?;
    let cli = KeyguardCli {
        bin: opts.tools.keyguard.clone(),
        config: sdir.join("keyguard.toml"),
        data_dir,
    };
    // Trust 127.0.0.1 as a proxy: its X-Forwarded-For names the client.
    let trust = |doc: &mut toml::Table| {
        harness::set(
            doc,
            "server.trusted_proxies",
            toml::Value::Array(vec![toml::Value::String("127.0.0.1/32".into())]),
        );
    };
    harness::write_config(
        opts.dialect,
        &cli.config,
        &cli.data_dir,
        harness::free_addr()?,
        mock_url,
        &trust,
    )?;
    let (gateway, addr) = harness::start_gateway(&cli, opts.dialect, mock_url, &sdir, &trust)?;
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
        &run_opts(opts.dialect, &url, Duration::from_secs(3)),
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
    let mut o = run_opts(opts.dialect, &url, opts.stuffing_duration);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn m(rps: f64, p50: u64, p99: u64) -> Measure {
        Measure {
            rps,
            ok_rps: rps,
            p50_us: p50,
            p99_us: p99,
            ..Measure::default()
        }
    }

    #[test]
    fn median_per_metric() {
        let med = median(&[m(100.0, 30, 900), m(300.0, 10, 100), m(200.0, 20, 500)]);
        assert_eq!(med.rps, 200.0);
        assert_eq!(med.p50_us, 20);
        assert_eq!(med.p99_us, 500);
        assert_eq!(median(&[]), Measure::default());
    }

    #[test]
    fn ratios_and_rows() {
        assert_eq!(ratio(150.0, 100.0), Some(1.5));
        assert_eq!(ratio(1.0, 0.0), None);
        let report = BenchReport {
            targets: vec![
                TargetResult {
                    name: "direct".into(),
                    description: "(a)".into(),
                    median: m(1000.0, 100, 400),
                    ..TargetResult::default()
                },
                TargetResult {
                    name: "nginx".into(),
                    description: "(b)".into(),
                    median: m(500.0, 200, 800),
                    ..TargetResult::default()
                },
                TargetResult {
                    name: "keyguard-embedded".into(),
                    description: "(c)".into(),
                    median: m(600.0, 150, 800),
                    ..TargetResult::default()
                },
                TargetResult {
                    name: "keyguard-redis".into(),
                    description: "(d)".into(),
                    skipped: Some("skipped: the Redis store has not landed".into()),
                    ..TargetResult::default()
                },
            ],
            ..BenchReport::default()
        };
        let rows = report.rows();
        assert_eq!(rows[2][4], "0.60");
        assert_eq!(rows[2][5], "1.20");
        assert_eq!(rows[2][9], "1.00");
        assert_eq!(rows[3][1], "skipped: the Redis store has not landed");
        let t = report.table();
        assert!(
            t.contains("Keyguard req/s ÷ nginx = 1.20 (≥ 1.0: met)"),
            "{t}"
        );
        assert!(report.html().contains("<svg"));
    }
}
