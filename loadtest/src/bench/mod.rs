//! `bench`: the same closed-loop workload, side by side in one run, for each dialect,
//! against (a) the mock exchange directly, (b) nginx as a plain `proxy_pass` reverse proxy
//! with upstream keep-alive, (c) Keyguard signing its identity assertions with HS256,
//! (d) Keyguard with EdDSA assertions, (e) Keyguard (HS256) on a local `redis-server`
//! (distributed mode, one replica; the keys moved there with `keyguard migrate`).
//!
//! The workload is a signed private read (Zaif `get_info2`, Binance `account`, Kraken
//! `Balance`) from `concurrency` clients, each with its own key, its own loopback address
//! and one keep-alive connection. The mock runs in bench mode (`upstream --bench`): it
//! executes every request without asking for an assertion, so it does exactly the same
//! work behind each target and the differences are the proxies' own cost. Targets
//! alternate within each round, so a slow minute of the shared machine hits all of them;
//! each metric is the median over the rounds.
//!
//! Then, per dialect: an open-loop run at half of nginx's maximum rate against direct,
//! nginx and Keyguard HS256 (latency when the machine is not saturated), and
//! (`--stuffing-check`) Keyguard's resident memory through a long stuffing run with a
//! million distinct keys and client IPs, on the embedded store and on Redis (there with
//! `redis-server`'s `used_memory` too).
//!
//! # Layout
//! - this file: options, the dialect and target lists, the run from start to report.
//! - `runs`: one dialect's processes (mock, nginx, gateways), the rounds, CPU accounting
//!   and the half-rate run.
//! - [`results`]: what was measured, in the shape of `bench.json`; medians, ratios and the
//!   targets (goals) judged from them.
//! - `format`: the text table, the Markdown table (`bench.md`, for the README) and the
//!   HTML report (`bench.html`).
//! - `nginx`: nginx as a plain reverse proxy in a temporary prefix.
//! - `memory`: the stuffing check, on either store, and the probe that samples
//!   `redis-server`'s memory.

mod format;
mod memory;
mod nginx;
pub mod results;
mod runs;

use std::path::PathBuf;
use std::time::Duration;

use keyguard_policy::DialectKind;
use serde::{Deserialize, Serialize};

use crate::harness::{self, Tools};
pub use results::{BenchReport, DialectResult, Goal, HalfRate, Measure, MemoryCheck, TargetResult};

/// Every dialect `--dialect all` measures, in report order. A new dialect is one line here
/// (its example config, workload and mock come with the dialect itself).
pub const DIALECTS: &[DialectKind] = &[
    DialectKind::Zaif,
    DialectKind::Binance,
    DialectKind::Kraken,
    DialectKind::Coincheck,
];

/// `--dialect`'s value: the dialects to measure, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DialectList(pub Vec<DialectKind>);

/// `--dialect`: `all`, one name, or a comma-separated list.
pub fn parse_dialects(s: &str) -> Result<DialectList, String> {
    let mut out: Vec<DialectKind> = Vec::new();
    for part in s.split(',').map(str::trim) {
        let named = if part == "all" {
            DIALECTS.to_vec()
        } else {
            vec![crate::app::parse_dialect(part).map_err(|e| format!("{e}, or all"))?]
        };
        for d in named {
            if !out.contains(&d) {
                out.push(d);
            }
        }
    }
    if out.is_empty() {
        return Err("no dialect given".into());
    }
    Ok(DialectList(out))
}

/// One thing the load is sent to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum TargetKind {
    /// (a) the mock exchange directly.
    Direct,
    /// (b) nginx `proxy_pass`.
    Nginx,
    /// (c) Keyguard, `[assertion] alg = "HS256"`.
    Hs256,
    /// (d) Keyguard, `[assertion] alg = "EdDSA"`.
    Eddsa,
    /// (e) Keyguard with the Redis store.
    Redis,
    /// (f) three Keyguard replicas sharing one Redis, the clients spread over them.
    #[value(name = "redis-3")]
    #[serde(rename = "redis-3")]
    Redis3,
}

impl TargetKind {
    /// All of them, in report order.
    pub const ALL: [TargetKind; 6] = [
        TargetKind::Direct,
        TargetKind::Nginx,
        TargetKind::Hs256,
        TargetKind::Eddsa,
        TargetKind::Redis,
        TargetKind::Redis3,
    ];

    /// The name in `bench.json`.
    pub const fn name(self) -> &'static str {
        match self {
            TargetKind::Direct => "direct",
            TargetKind::Nginx => "nginx",
            TargetKind::Hs256 => "keyguard-hs256",
            TargetKind::Eddsa => "keyguard-eddsa",
            TargetKind::Redis => "keyguard-redis",
            TargetKind::Redis3 => "keyguard-redis-3",
        }
    }

    /// The row label.
    pub const fn description(self) -> &'static str {
        match self {
            TargetKind::Direct => "(a) mock exchange directly",
            TargetKind::Nginx => "(b) nginx proxy_pass",
            TargetKind::Hs256 => "(c) Keyguard, HS256",
            TargetKind::Eddsa => "(d) Keyguard, EdDSA",
            TargetKind::Redis => "(e) Keyguard, Redis",
            TargetKind::Redis3 => "(f) Keyguard, Redis, 3 replicas",
        }
    }

    /// The assertion algorithm a Keyguard target is configured with.
    pub const fn alg(self) -> Option<&'static str> {
        match self {
            TargetKind::Hs256 => Some("HS256"),
            TargetKind::Eddsa => Some("EdDSA"),
            TargetKind::Redis | TargetKind::Redis3 => Some("HS256"),
            _ => None,
        }
    }

    /// Whether it keeps its state in Redis.
    pub const fn on_redis(self) -> bool {
        matches!(self, TargetKind::Redis | TargetKind::Redis3)
    }

    /// How many gateway processes serve it.
    pub const fn replicas(self) -> usize {
        match self {
            TargetKind::Redis3 => 3,
            _ => 1,
        }
    }

    /// Why this target cannot run on this machine, if it cannot.
    pub fn unavailable(self) -> Option<&'static str> {
        match self {
            TargetKind::Redis | TargetKind::Redis3 if !redis_installed() => {
                Some("skipped: redis-server is not installed (apt-get install redis-server)")
            }
            _ => None,
        }
    }
}

/// What `bench` does.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Binaries (Keyguard should be a release build).
    pub tools: Tools,
    /// Dialects, in order.
    pub dialects: Vec<DialectKind>,
    /// Targets to measure (the others are listed as not selected).
    pub targets: Vec<TargetKind>,
    /// Closed-loop clients.
    pub concurrency: usize,
    /// Measured time per target and round.
    pub duration: Duration,
    /// Rounds.
    pub rounds: usize,
    /// Unmeasured load per target before the first round (connections, caches).
    pub warmup: Duration,
    /// `server.workers` for the Keyguard targets; the gateway's default when `None`.
    pub workers: Option<usize>,
    /// Run the open-loop run at half of nginx's maximum.
    pub half_rate: bool,
    /// Run the memory check.
    pub stuffing_check: bool,
    /// Its duration.
    pub stuffing_duration: Duration,
    /// Where to write bench.json, bench.md and bench.html.
    pub out_dir: PathBuf,
    /// The command line, for the report.
    pub command: String,
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
    let mut dialects = Vec::new();
    for dialect in &opts.dialects {
        eprintln!("=== {} ===", dialect.as_str());
        let ddir = dir.path().join(dialect.as_str());
        std::fs::create_dir_all(&ddir)?;
        dialects.push(runs::bench_dialect(&opts, *dialect, &ddir, &mut notes).await?);
    }
    let (memory, memory_redis) = if opts.stuffing_check {
        let dialect = opts.dialects.first().copied().unwrap_or(DialectKind::Zaif);
        let embedded = memory::stuffing_check(
            &opts,
            dialect,
            &dir.path().join("stuffing"),
            memory::Store::Embedded,
        )
        .await?;
        let on_redis = if redis_installed() {
            Some(
                memory::stuffing_check(
                    &opts,
                    dialect,
                    &dir.path().join("stuffing-redis"),
                    memory::Store::Redis,
                )
                .await?,
            )
        } else {
            notes.push(
                "stuffing check on Redis skipped: redis-server is not installed (apt-get install redis-server)"
                    .to_owned(),
            );
            None
        };
        (Some(embedded), on_redis)
    } else {
        (None, None)
    };
    let goals = results::goals(&dialects, memory.as_ref(), memory_redis.as_ref());
    let report = BenchReport {
        command: opts.command.clone(),
        cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        cpu_model: cpu_model(),
        memory_gib: mem_total_gib(),
        nginx_version: nginx::version(),
        concurrency: opts.concurrency,
        duration_s: opts.duration.as_secs_f64(),
        rounds: opts.rounds,
        workers: opts.workers,
        dialects,
        goals,
        memory,
        memory_redis,
        notes,
    };
    println!("{}", report.table());
    let (json, md, html) = report.write(&opts.out_dir)?;
    println!(
        "report: {}\njson:   {}\nmd:     {}",
        html.display(),
        json.display(),
        md.display()
    );
    Ok(())
}

/// The gateway config for benchmarks: the example config with every check on, but rate
/// limits far above the bench's load (the example allows a key 10 requests/s; the bench
/// drives each key as fast as it answers). The limiters still run on every request.
fn bench_limits(doc: &mut toml::Table) {
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

/// `[assertion] alg` and, when given, `[server] workers` (else the gateway's default:
/// one worker per core).
fn gateway_settings(doc: &mut toml::Table, alg: &str, workers: Option<usize>) {
    harness::set(doc, "assertion.alg", alg.to_owned());
    if let Some(w) = workers {
        harness::set(doc, "server.workers", i64::try_from(w).unwrap_or(i64::MAX));
    }
}

/// Whether `redis-server` can be started.
fn redis_installed() -> bool {
    std::process::Command::new("redis-server")
        .arg("--version")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
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

/// `MemTotal` of /proc/meminfo in GiB (0 when unknown).
fn mem_total_gib() -> f64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|kib| kib.parse::<f64>().ok())
        })
        .map_or(0.0, |kib| kib / (1024.0 * 1024.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dialect_lists() {
        assert_eq!(parse_dialects("all").unwrap().0, DIALECTS.to_vec());
        assert_eq!(
            parse_dialects("kraken").unwrap().0,
            vec![DialectKind::Kraken]
        );
        assert_eq!(
            parse_dialects("zaif,binance,zaif").unwrap().0,
            vec![DialectKind::Zaif, DialectKind::Binance]
        );
        let err = parse_dialects("ftx").unwrap_err();
        assert!(err.contains("or all"), "{err}");
    }

    #[test]
    fn gateway_settings_set_alg_and_only_given_workers() {
        let mut doc = toml::Table::new();
        gateway_settings(&mut doc, "EdDSA", None);
        assert_eq!(doc["assertion"]["alg"].as_str(), Some("EdDSA"));
        assert!(doc.get("server").is_none());
        gateway_settings(&mut doc, "HS256", Some(2));
        assert_eq!(doc["assertion"]["alg"].as_str(), Some("HS256"));
        assert_eq!(doc["server"]["workers"].as_integer(), Some(2));
    }
}
