//! The memory check (`--stuffing-check`): Keyguard's resident memory through a long run of
//! credential stuffing with a new random key on every request and (nearly) every request
//! from a new client IP, which is what would grow an unbounded table. The same run goes
//! once against the embedded store and, when `redis-server` is installed, once against
//! Keyguard on Redis, where `redis-server`'s `used_memory` and key count are sampled too:
//! every unknown key is an auth failure of its client network, and what Redis keeps per
//! network is what such a flood grows.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;

use keyguard_policy::DialectKind;

use super::results::{MemoryCheck, RedisMemory};
use super::runs::{run_opts, start_redis};
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

/// Where the gateway under the stuffing check keeps its state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Store {
    /// The embedded store (the default).
    Embedded,
    /// A `redis-server` of its own, started like the bench's Redis target.
    Redis,
}

impl Store {
    /// The name in `bench.json`.
    const fn name(self) -> &'static str {
        match self {
            Store::Embedded => "embedded",
            Store::Redis => "redis",
        }
    }
}

/// Keyguard (HS256, with `--workers` when given) on `store`, in front of its own mock
/// exchange, fed random keys from ever new client IPs; its VmRSS is sampled throughout,
/// and on Redis also `redis-server`'s `used_memory` and `DBSIZE`.
pub(super) async fn stuffing_check(
    opts: &BenchOptions,
    dialect: DialectKind,
    sdir: &Path,
    store: Store,
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
    // Dropped (stopped) after the gateway, which is declared later.
    let redis = match store {
        Store::Embedded => None,
        Store::Redis => Some(start_redis(sdir)?),
    };
    let redis_url = redis.as_ref().map(|(_, url)| url.clone());
    // Trust 127.0.0.1 as a proxy: its X-Forwarded-For names the client.
    let trust = |doc: &mut toml::Table| {
        harness::set(
            doc,
            "server.trusted_proxies",
            toml::Value::Array(vec![toml::Value::String("127.0.0.1/32".into())]),
        );
        gateway_settings(doc, "HS256", opts.workers);
        if let Some(url) = &redis_url {
            harness::set(doc, "store.kind", "redis");
            harness::set(doc, "store.url", url.clone());
        }
    };
    let (gateway, addr) = harness::start_gateway(&cli, dialect, &mock_url, sdir, &trust)?;
    let pid = gateway.pid();
    let url = format!("http://{addr}");
    let rss_start = harness::rss_kib(pid).unwrap_or(0);
    let mut probe = match &redis_url {
        Some(u) => Some(RedisProbe::connect(redis_addr(u)?)?),
        None => None,
    };

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
    eprintln!("stuffing check ({}): warm-up", store.name());
    let warm_pool = Arc::new(AddressPool::new(Ipv4Addr::new(127, 99, 0, 1), 65_000));
    let warm_fwd = Arc::new(AtomicU64::new(0));
    let _ = runner::run(
        actors(&warm_pool, &warm_fwd),
        &run_opts(dialect, std::slice::from_ref(&url), Duration::from_secs(3)),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_before = harness::rss_kib(pid).unwrap_or(0);
    // The warm-up's networks are still within their window: they are part of "before",
    // as an earlier minute of traffic would be.
    let redis_before = probe.as_mut().map(RedisProbe::sample).transpose()?;

    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let mut peak = Peaks {
                rss_kib: rss_before,
                redis: redis_before,
            };
            while !stop.load(Ordering::Relaxed) {
                peak.add(harness::rss_kib(pid), probe.as_mut());
                std::thread::sleep(Duration::from_millis(250));
            }
            (peak, probe)
        })
    };
    eprintln!(
        "stuffing check ({}): {:?} of random keys from fresh source IPs and forwarded IPs",
        store.name(),
        opts.stuffing_duration
    );
    let mut o = run_opts(dialect, std::slice::from_ref(&url), opts.stuffing_duration);
    o.progress = true;
    let data = runner::run(actors(&pool, &forwarded), &o).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    let (mut peak, mut probe) = sampler
        .join()
        .map_err(|_| anyhow::anyhow!("the memory sampler panicked"))?;
    let rss_after = harness::rss_kib(pid).unwrap_or(0);
    let redis_after = probe.as_mut().map(RedisProbe::sample).transpose()?;
    peak.add(Some(rss_after), None);
    if let (Some(p), Some(a)) = (&mut peak.redis, redis_after) {
        p.max(a);
    }
    let rss_peak = peak.rss_kib;
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
    let window_ms = auth_failure_window_ms(&cli.config)?;
    drop(gateway);
    drop(redis);
    let distinct_source_ips = pool.distinct_used();
    let redis = match (redis_before, peak.redis, redis_after) {
        (Some(before), Some(peak), Some(after)) => {
            Some(redis_memory(before, peak, after, window_ms))
        }
        _ => None,
    };
    Ok(MemoryCheck {
        dialect: dialect.as_str().to_owned(),
        store: store.name().to_owned(),
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
        redis,
        method: format!(
            "every request presents a new random 64-character API key. Half the clients connect from a new \
             loopback source address (127.100.0.0-127.199.255.255) every 2 requests — a real TCP connection \
             per address; {distinct_source_ips} distinct addresses were practical in the time, limited by \
             connection setup on this machine. The other half send from 127.0.0.1, which this gateway's config \
             trusts as a proxy (server.trusted_proxies = [\"127.0.0.1/32\"]), with a random X-Forwarded-For \
             client (IPv4 in 100.64.0.0/10, or an IPv6 address in a random /64 of 2001:db8::/32), so the \
             gateway tracks each as a different client IP.{}",
            match store {
                Store::Embedded => String::new(),
                Store::Redis => format!(
                    " Keyguard keeps its state in its own redis-server (started like the bench's Redis \
                     target); each unknown key counts as an auth failure of the client network, kept \
                     {} s (anomaly.auth_failures.window).",
                    window_ms / 1000
                ),
            }
        ),
    })
}

/// Redis's side of the check: growth is the peak over the sample before the run, and
/// what one more key cost on average.
fn redis_memory(
    before: RedisSample,
    peak: RedisSample,
    after: RedisSample,
    window_ms: u64,
) -> RedisMemory {
    let growth = peak.used_memory.saturating_sub(before.used_memory);
    let added = peak.keys.saturating_sub(before.keys);
    RedisMemory {
        used_memory_before: before.used_memory,
        used_memory_peak: peak.used_memory,
        used_memory_after: after.used_memory,
        keys_before: before.keys,
        keys_peak: peak.keys,
        keys_after: after.keys,
        growth_mib: growth as f64 / (1024.0 * 1024.0),
        bytes_per_key: (added > 0).then(|| growth as f64 / added as f64),
        window_ms,
    }
}

/// Highest values seen by the sampler.
struct Peaks {
    rss_kib: u64,
    redis: Option<RedisSample>,
}

impl Peaks {
    fn add(&mut self, rss_kib: Option<u64>, probe: Option<&mut RedisProbe>) {
        if let Some(r) = rss_kib {
            self.rss_kib = self.rss_kib.max(r);
        }
        // A failed sample leaves the peak as it was; the samples before and after the run
        // are required, so a server that stopped answering fails the check there.
        if let (Some(peak), Some(s)) = (&mut self.redis, probe.and_then(|p| p.sample().ok())) {
            peak.max(s);
        }
    }
}

/// What `redis-server` holds at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct RedisSample {
    /// `INFO memory`'s `used_memory` (bytes allocated by Redis).
    pub used_memory: u64,
    /// `DBSIZE`.
    pub keys: u64,
}

impl RedisSample {
    /// Each field's maximum (peaks of the two need not coincide).
    fn max(&mut self, other: RedisSample) {
        self.used_memory = self.used_memory.max(other.used_memory);
        self.keys = self.keys.max(other.keys);
    }
}

/// One plain RESP connection to a `redis-server`, for `INFO memory` and `DBSIZE` (the
/// load generator does not link a Redis client for two read-only commands).
pub(super) struct RedisProbe {
    conn: BufReader<TcpStream>,
}

/// A RESP reply, as far as the probe needs one.
#[derive(Debug, PartialEq, Eq)]
enum Reply {
    Status(String),
    Int(i64),
    Bulk(Option<Vec<u8>>),
}

impl RedisProbe {
    /// Connects, with a short timeout on every read and write: a sample must not hang
    /// the check.
    pub(super) fn connect(addr: SocketAddr) -> anyhow::Result<RedisProbe> {
        let s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
            .with_context(|| format!("connecting to redis-server at {addr}"))?;
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        s.set_write_timeout(Some(Duration::from_secs(2)))?;
        Ok(RedisProbe {
            conn: BufReader::new(s),
        })
    }

    /// `used_memory` and `DBSIZE`, sent together.
    pub(super) fn sample(&mut self) -> anyhow::Result<RedisSample> {
        let mut req = resp_command(&["INFO", "memory"]);
        req.extend(resp_command(&["DBSIZE"]));
        self.conn.get_mut().write_all(&req)?;
        let info = match self.read()? {
            Reply::Bulk(Some(b)) => String::from_utf8_lossy(&b).into_owned(),
            other => anyhow::bail!("INFO memory answered {other:?}"),
        };
        let keys = match self.read()? {
            Reply::Int(n) => u64::try_from(n).unwrap_or(0),
            other => anyhow::bail!("DBSIZE answered {other:?}"),
        };
        Ok(RedisSample {
            used_memory: info_field(&info, "used_memory")
                .context("INFO memory has no used_memory")?,
            keys,
        })
    }

    /// Any command, for tests.
    #[cfg(test)]
    fn call(&mut self, args: &[&str]) -> anyhow::Result<Reply> {
        self.conn.get_mut().write_all(&resp_command(args))?;
        self.read()
    }

    fn read(&mut self) -> anyhow::Result<Reply> {
        let mut line = String::new();
        self.conn.read_line(&mut line)?;
        let line = line.trim_end_matches("\r\n");
        let (kind, rest) = line.split_at(line.len().min(1));
        Ok(match kind {
            "+" => Reply::Status(rest.to_owned()),
            "-" => anyhow::bail!("redis: {rest}"),
            ":" => Reply::Int(rest.parse()?),
            "$" => {
                let len: i64 = rest.parse()?;
                if len < 0 {
                    Reply::Bulk(None)
                } else {
                    let mut b = vec![0; usize::try_from(len)? + 2];
                    self.conn.read_exact(&mut b)?;
                    b.truncate(b.len() - 2);
                    Reply::Bulk(Some(b))
                }
            }
            _ => anyhow::bail!("redis: unexpected reply line {line:?}"),
        })
    }
}

/// `args` as a RESP array of bulk strings.
fn resp_command(args: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend(format!("${}\r\n{a}\r\n", a.len()).into_bytes());
    }
    out
}

/// `name:value` of an `INFO` section, as a number.
fn info_field(info: &str, name: &str) -> Option<u64> {
    info.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .and_then(|v| v.trim().parse().ok())
}

/// `host:port` of the `redis://host:port` URL the bench's Redis target is given.
fn redis_addr(url: &str) -> anyhow::Result<SocketAddr> {
    url.strip_prefix("redis://")
        .and_then(|a| a.parse().ok())
        .with_context(|| format!("{url} is not redis://ip:port"))
}

/// `anomaly.auth_failures.window` of the gateway's config, in ms: how long one failure is
/// remembered, which bounds what a flood of fresh networks can pile up.
fn auth_failure_window_ms(config: &Path) -> anyhow::Result<u64> {
    let doc: toml::Table = std::fs::read_to_string(config)?.parse()?;
    let window = doc
        .get("anomaly")
        .and_then(|a| a.get("auth_failures"))
        .and_then(|a| a.get("window"))
        .and_then(toml::Value::as_str)
        .context("the stuffing check's config has no anomaly.auth_failures.window")?;
    let d = crate::app::parse_duration(window).map_err(anyhow::Error::msg)?;
    Ok(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn info_fields_and_urls() {
        let info =
            "# Memory\r\nused_memory:1048576\r\nused_memory_human:1.00M\r\nused_memory_rss:9\r\n";
        assert_eq!(info_field(info, "used_memory"), Some(1_048_576));
        assert_eq!(info_field(info, "used_memory_rss"), Some(9));
        assert_eq!(info_field(info, "used_memory_peak"), None);
        assert_eq!(
            redis_addr("redis://127.0.0.1:6380").unwrap(),
            "127.0.0.1:6380".parse().unwrap()
        );
        assert!(redis_addr("rediss://127.0.0.1:6380").is_err());
        assert_eq!(resp_command(&["DBSIZE"]), b"*1\r\n$6\r\nDBSIZE\r\n");
    }

    /// Against a real redis-server (skipped without one): keys written show in the
    /// sample, and a server that went away is an error, not a zero.
    #[test]
    fn probe_reads_a_real_server() {
        if !super::super::redis_installed() {
            eprintln!("probe_reads_a_real_server: SKIPPED: redis-server is not installed");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let (server, url) = start_redis(dir.path()).unwrap();
        let mut p = RedisProbe::connect(redis_addr(&url).unwrap()).unwrap();
        let empty = p.sample().unwrap();
        assert_eq!(empty.keys, 0);
        assert!(empty.used_memory > 100_000, "{empty:?}");
        let value = "x".repeat(100_000);
        for i in 0..10 {
            assert_eq!(
                p.call(&["SET", &format!("k{i}"), &value]).unwrap(),
                Reply::Status("OK".into())
            );
        }
        assert_eq!(
            p.call(&["GET", "k3"]).unwrap(),
            Reply::Bulk(Some(value.into_bytes()))
        );
        assert_eq!(p.call(&["GET", "none"]).unwrap(), Reply::Bulk(None));
        let full = p.sample().unwrap();
        assert_eq!(full.keys, 10);
        assert!(
            full.used_memory >= empty.used_memory + 1_000_000,
            "{empty:?} -> {full:?}"
        );
        drop(server);
        assert!(p.sample().is_err());
    }
}
