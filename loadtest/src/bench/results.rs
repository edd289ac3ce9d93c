//! What `bench` measured, in the shape written to `bench.json`, and the targets (goals)
//! judged from it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::runner::RunData;

/// One measurement of one target.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Measure {
    /// Requests completed per second.
    pub rps: f64,
    /// 2xx answers per second (what the ratios compare).
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
    /// Throughput, latency and statuses of one run (CPU is filled in by the caller).
    pub fn of(data: &RunData) -> Measure {
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

    /// CPU µs per request of one process (`proxy`, `generator`, `exchange`).
    pub fn cpu(&self, process: &str) -> Option<f64> {
        self.cpu_us_per_request.get(process).copied()
    }
}

/// One target's results in one dialect.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TargetResult {
    /// `direct`, `nginx`, `keyguard-hs256`, `keyguard-eddsa`, `keyguard-redis`.
    pub name: String,
    /// What it is.
    pub description: String,
    /// The assertion algorithm (Keyguard targets).
    pub alg: Option<String>,
    /// Why it did not run.
    pub skipped: Option<String>,
    /// Every round.
    pub rounds: Vec<Measure>,
    /// Median of each metric over the rounds.
    pub median: Measure,
    /// Latency by percentile over all rounds together: (quantile, µs).
    pub latency_curve: Vec<(f64, u64)>,
}

/// The open-loop run at half of nginx's maximum rate.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct HalfRate {
    /// The open-loop rate (req/s).
    pub rate: f64,
    /// Whose maximum it is half of: `nginx`, or `keyguard-hs256` when nginx did not run.
    pub half_of: String,
    /// Direct.
    pub direct: Measure,
    /// nginx at the same rate, when it ran.
    pub nginx: Option<Measure>,
    /// Keyguard HS256 at the same rate.
    pub keyguard: Measure,
    /// Keyguard p50 ÷ nginx p50; target ≤ 1.25.
    pub p50_ratio_to_nginx: Option<f64>,
    /// Keyguard p50 minus direct p50 (µs).
    pub p50_added_over_direct_us: i64,
}

/// Everything measured for one dialect.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DialectResult {
    /// `zaif`, `binance`, `kraken`.
    pub dialect: String,
    /// The targets, (a) .. (e).
    pub targets: Vec<TargetResult>,
    /// The half-rate run.
    pub half_rate: Option<HalfRate>,
}

impl DialectResult {
    /// The median of a target that ran.
    pub fn measured(&self, name: &str) -> Option<&Measure> {
        self.targets
            .iter()
            .find(|t| t.name == name && t.skipped.is_none())
            .map(|t| &t.median)
    }
}

/// Memory through the stuffing run.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct MemoryCheck {
    /// Dialect of the gateway.
    pub dialect: String,
    /// Where the gateway kept its state: `embedded` or `redis`.
    #[serde(default = "embedded")]
    pub store: String,
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
    /// `redis-server`'s memory and keys (Redis mode).
    #[serde(default)]
    pub redis: Option<RedisMemory>,
    /// How the million distinct IPs were produced.
    pub method: String,
}

fn embedded() -> String {
    "embedded".to_owned()
}

impl MemoryCheck {
    /// Distinct client addresses per second of stuffing (source and forwarded).
    pub fn networks_per_s(&self) -> f64 {
        (self.distinct_source_ips + self.distinct_forwarded_ips) as f64 / self.duration_s.max(1e-9)
    }

    /// Networks whose auth failures Redis still holds at the end: those of the last
    /// window (all of them when the run is shorter than the window).
    pub fn live_networks(&self) -> Option<f64> {
        let r = self.redis.as_ref()?;
        let window_s = r.window_ms as f64 / 1000.0;
        Some(self.networks_per_s() * window_s.min(self.duration_s))
    }
}

/// `redis-server` through the stuffing run: `INFO memory`'s `used_memory` and `DBSIZE`,
/// sampled every 250 ms.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RedisMemory {
    /// After the warm-up, before the run (bytes).
    pub used_memory_before: u64,
    /// Highest sampled during the run (bytes).
    pub used_memory_peak: u64,
    /// One second after the run (bytes).
    pub used_memory_after: u64,
    /// Keys before the run.
    pub keys_before: u64,
    /// Most keys sampled during the run.
    pub keys_peak: u64,
    /// Keys one second after the run.
    pub keys_after: u64,
    /// Peak minus before (MiB); target < 64.
    pub growth_mib: f64,
    /// Growth ÷ keys added by the peak: what one tracked client network costs (bytes).
    pub bytes_per_key: Option<f64>,
    /// How long an auth failure is remembered (`anomaly.auth_failures.window`, ms): what
    /// a network's key lives, so what bounds the growth at a given rate of new networks.
    pub window_ms: u64,
}

/// One target of the issue, judged from the numbers.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Goal {
    /// The dialect it is about (`None`: the whole run).
    pub dialect: Option<String>,
    /// What is compared, e.g. `HS256 req/s ÷ nginx req/s`.
    pub what: String,
    /// The measured value (`None` when a side of it did not run).
    pub value: Option<f64>,
    /// `≥ 0.80`, `≤ 1.25`, `< 50 MiB`.
    pub target: String,
    /// Met, missed, or not measurable.
    pub met: Option<bool>,
}

impl Goal {
    fn at_least(dialect: &str, what: &str, value: Option<f64>, min: f64) -> Goal {
        Goal {
            dialect: Some(dialect.to_owned()),
            what: what.to_owned(),
            value,
            target: format!("≥ {min:.2}"),
            met: value.map(|v| v >= min),
        }
    }

    fn at_most(dialect: &str, what: &str, value: Option<f64>, max: f64) -> Goal {
        Goal {
            dialect: Some(dialect.to_owned()),
            what: what.to_owned(),
            value,
            target: format!("≤ {max:.2}"),
            met: value.map(|v| v <= max),
        }
    }

    /// `met`, `MISSED` or `not measured`.
    pub fn verdict(&self) -> &'static str {
        match self.met {
            Some(true) => "met",
            Some(false) => "MISSED",
            None => "not measured",
        }
    }
}

/// The issue's targets: per dialect HS256 ≥ 0.8× nginx's req/s with p99 ≤ 1.25× nginx's,
/// EdDSA ≥ 0.5× nginx's req/s, and at half of nginx's maximum HS256's p50 ≤ 1.25×
/// nginx's; on a single local Redis ≥ 0.7× the embedded store's req/s; the memory
/// check's VmRSS growth < 50 MiB on either store and, on Redis, `used_memory` growth
/// < 64 MiB. When the embedded check ran but the Redis one did not (no redis-server),
/// the Redis goals are listed as not measured.
pub fn goals(
    dialects: &[DialectResult],
    memory: Option<&MemoryCheck>,
    memory_redis: Option<&MemoryCheck>,
) -> Vec<Goal> {
    let mut out = Vec::new();
    for d in dialects {
        let nginx = d.measured("nginx");
        let vs_nginx = |name: &str, f: fn(&Measure) -> f64| {
            d.measured(name)
                .zip(nginx)
                .and_then(|(m, n)| ratio(f(m), f(n)))
        };
        out.push(Goal::at_least(
            &d.dialect,
            "HS256 req/s ÷ nginx req/s",
            vs_nginx("keyguard-hs256", |m| m.ok_rps),
            0.8,
        ));
        out.push(Goal::at_most(
            &d.dialect,
            "HS256 p99 ÷ nginx p99",
            vs_nginx("keyguard-hs256", |m| m.p99_us as f64),
            1.25,
        ));
        out.push(Goal::at_least(
            &d.dialect,
            "EdDSA req/s ÷ nginx req/s",
            vs_nginx("keyguard-eddsa", |m| m.ok_rps),
            0.5,
        ));
        out.push(Goal::at_most(
            &d.dialect,
            "HS256 p50 ÷ nginx p50 at half of nginx's maximum (open loop)",
            d.half_rate.as_ref().and_then(|h| h.p50_ratio_to_nginx),
            1.25,
        ));
        // Distributed mode's target: a single local Redis at 0.7x the embedded store.
        out.push(Goal::at_least(
            &d.dialect,
            "Redis req/s ÷ embedded (HS256) req/s",
            d.measured("keyguard-redis")
                .zip(d.measured("keyguard-hs256"))
                .and_then(|(r, e)| ratio(r.ok_rps, e.ok_rps)),
            0.7,
        ));
    }
    let below = |what: String, value: Option<f64>, max: f64| Goal {
        dialect: None,
        what,
        value,
        target: format!("< {max:.0} MiB"),
        met: value.map(|v| v < max),
    };
    if let Some(m) = memory {
        out.push(below(
            format!(
                "VmRSS growth through {:.0} s of stuffing (MiB)",
                m.duration_s
            ),
            Some(m.growth_mib),
            50.0,
        ));
    }
    if memory.is_some() || memory_redis.is_some() {
        let secs = memory_redis.or(memory).map_or(0.0, |m| m.duration_s);
        out.push(below(
            format!("Redis mode: gateway VmRSS growth through {secs:.0} s of stuffing (MiB)"),
            memory_redis.map(|m| m.growth_mib),
            50.0,
        ));
        out.push(below(
            format!("Redis used_memory growth through {secs:.0} s of stuffing (MiB)"),
            memory_redis
                .and_then(|m| m.redis.as_ref())
                .map(|r| r.growth_mib),
            64.0,
        ));
    }
    out
}

/// Everything `bench` measured.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct BenchReport {
    /// The command line that produced it.
    pub command: String,
    /// `nproc`.
    pub cpus: usize,
    /// CPU model from /proc/cpuinfo.
    pub cpu_model: String,
    /// MemTotal (GiB).
    pub memory_gib: f64,
    /// `nginx -v`, when installed.
    pub nginx_version: Option<String>,
    /// Closed-loop clients.
    pub concurrency: usize,
    /// Seconds per target and round.
    pub duration_s: f64,
    /// Rounds.
    pub rounds: usize,
    /// `server.workers` given to the Keyguard targets (`None`: the gateway's default).
    pub workers: Option<usize>,
    /// Per dialect.
    pub dialects: Vec<DialectResult>,
    /// The issue's targets, judged.
    pub goals: Vec<Goal>,
    /// The memory check on the embedded store.
    pub memory: Option<MemoryCheck>,
    /// The memory check on Redis (when redis-server is installed).
    #[serde(default)]
    pub memory_redis: Option<MemoryCheck>,
    /// Context.
    pub notes: Vec<String>,
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

/// `a / b`, or `None` when `b` is not a measurement.
pub fn ratio(a: f64, b: f64) -> Option<f64> {
    (b > 0.0).then(|| a / b)
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn m(rps: f64, p50: u64, p99: u64) -> Measure {
        Measure {
            rps,
            ok_rps: rps,
            p50_us: p50,
            p99_us: p99,
            p999_us: p99 * 2,
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

    fn target(name: &str, median: Measure) -> TargetResult {
        TargetResult {
            name: name.into(),
            description: name.into(),
            median,
            ..TargetResult::default()
        }
    }

    #[test]
    fn goals_are_judged_per_dialect() {
        let d = DialectResult {
            dialect: "zaif".into(),
            targets: vec![
                target("direct", m(1000.0, 100, 400)),
                target("nginx", m(500.0, 200, 800)),
                target("keyguard-hs256", m(450.0, 220, 1100)),
                target("keyguard-eddsa", m(240.0, 400, 1600)),
                TargetResult {
                    skipped: Some("skipped".into()),
                    ..target("keyguard-redis", Measure::default())
                },
            ],
            half_rate: Some(HalfRate {
                p50_ratio_to_nginx: Some(1.3),
                ..HalfRate::default()
            }),
        };
        let g = goals(&[d], None, None);
        assert_eq!(g[0].value, Some(0.9));
        assert_eq!(g[0].met, Some(true));
        assert_eq!(g[1].value, Some(1.375));
        assert_eq!(g[1].met, Some(false));
        assert_eq!(g[2].value, Some(0.48));
        assert_eq!(g[2].verdict(), "MISSED");
        assert_eq!(g[3].met, Some(false));
        // Redis skipped: its goal is not measured, not missed.
        assert_eq!(g.len(), 5);
        assert_eq!((g[4].value, g[4].met), (None, None));
        let on_redis = DialectResult {
            dialect: "binance".into(),
            targets: vec![
                target("keyguard-hs256", m(1000.0, 220, 1100)),
                target("keyguard-redis", m(650.0, 300, 1500)),
            ],
            half_rate: None,
        };
        let g = goals(&[on_redis], None, None);
        assert_eq!((g[4].value, g[4].met), (Some(0.65), Some(false)));
        // Without nginx nothing can be judged, and it says so.
        let alone = DialectResult {
            dialect: "kraken".into(),
            targets: vec![target("keyguard-hs256", m(450.0, 220, 1100))],
            half_rate: None,
        };
        assert!(goals(&[alone], None, None)
            .iter()
            .all(|g| g.met.is_none() && g.verdict() == "not measured"));
    }

    fn stuffing(store: &str, growth_mib: f64, redis: Option<RedisMemory>) -> MemoryCheck {
        MemoryCheck {
            store: store.into(),
            duration_s: 60.0,
            growth_mib,
            redis,
            ..MemoryCheck::default()
        }
    }

    #[test]
    fn memory_goals_cover_both_stores() {
        let embedded = stuffing("embedded", 12.0, None);
        let redis = stuffing(
            "redis",
            55.0,
            Some(RedisMemory {
                growth_mib: 70.0,
                bytes_per_key: Some(128.0),
                ..RedisMemory::default()
            }),
        );
        let g = goals(&[], Some(&embedded), Some(&redis));
        let find = |what: &str| g.iter().find(|g| g.what.starts_with(what)).unwrap();
        let rss = find("VmRSS growth through 60 s");
        assert_eq!((rss.value, rss.met), (Some(12.0), Some(true)));
        let gw = find("Redis mode: gateway VmRSS growth through 60 s");
        assert_eq!((gw.value, gw.met), (Some(55.0), Some(false)));
        let used = find("Redis used_memory growth through 60 s of stuffing (MiB)");
        assert_eq!(
            (used.value, used.met, used.target.as_str()),
            (Some(70.0), Some(false), "< 64 MiB")
        );
        // Just under the bound is met; the bound itself is not.
        let mut r = redis.clone();
        r.redis.as_mut().unwrap().growth_mib = 63.9;
        assert_eq!(goals(&[], None, Some(&r)).last().unwrap().met, Some(true));
        r.redis.as_mut().unwrap().growth_mib = 64.0;
        assert_eq!(goals(&[], None, Some(&r)).last().unwrap().met, Some(false));
        // No redis-server: the Redis goals are there, not measured.
        let g = goals(&[], Some(&embedded), None);
        assert_eq!(g.len(), 3);
        assert!(g[1..].iter().all(|g| g.verdict() == "not measured"));
        // No stuffing check at all: no memory goals.
        assert!(goals(&[], None, None).is_empty());
        // 60 s of 5000 new networks/s within a 60 s window: 300 000 live networks.
        let mut r = redis.clone();
        r.distinct_source_ips = 100_000;
        r.distinct_forwarded_ips = 200_000;
        r.redis.as_mut().unwrap().window_ms = 60_000;
        assert_eq!(r.live_networks(), Some(300_000.0));
        // A window shorter than the run: only its share of the networks is live.
        r.redis.as_mut().unwrap().window_ms = 30_000;
        assert_eq!(r.live_networks(), Some(150_000.0));
        // Embedded: nothing in Redis.
        assert_eq!(embedded.live_networks(), None);
    }

    #[test]
    fn old_reports_without_a_store_read_as_embedded() {
        let m: MemoryCheck = serde_json::from_str(
            r#"{"dialect":"zaif","duration_s":60,"requests":1,"distinct_keys":1,
                "distinct_source_ips":1,"distinct_forwarded_ips":0,"rss_start_kib":1,
                "rss_before_kib":1,"rss_peak_kib":1,"rss_after_kib":1,"growth_mib":0,
                "statuses":{},"deny_codes":{},"by_role":{},"method":""}"#,
        )
        .unwrap();
        assert_eq!((m.store.as_str(), m.redis), ("embedded", None));
    }

    #[test]
    fn ratios() {
        assert_eq!(ratio(150.0, 100.0), Some(1.5));
        assert_eq!(ratio(1.0, 0.0), None);
    }
}
