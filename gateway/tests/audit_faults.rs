//! The audit log under faults and floods, against the real binary: a full filesystem (a
//! small tmpfs the test mounts) and a stalled writer (a FIFO nobody reads) stop trades and
//! withdrawals with `audit_unavailable` while reads go on; rotation keeps every file whole
//! JSON lines; floods of pre-auth refusals become summary lines; answered requests survive
//! kill -9 under load; `/metrics` and JSON logs.

mod utils;

use std::collections::{HashMap, HashSet};
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use utils::scenarios::{expect_denied, expect_forwarded, setup_env, Setup};
use utils::*;

const WAIT: Duration = Duration::from_secs(10);

/// A tmpfs of `size` mounted at `dir` for the test's life (needs root, as CI runs).
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(dir).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "mounting a tmpfs for the full-disk test failed (the test needs root): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs(dir.to_owned())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Rate limits out of the way: these tests are about the audit log, and a 429 would
/// only change a code.
fn generous_limits(cfg: &mut toml::Table) {
    for path in [
        "limits.ip",
        "limits.tiers.default.key",
        "limits.tiers.default.account",
        "limits.tiers.default.read",
        "limits.tiers.default.trade",
    ] {
        let mut rate = toml::Table::new();
        rate.insert("count".into(), 100_000.into());
        rate.insert("per".into(), "1s".into());
        rate.insert("burst".into(), 100_000.into());
        set(cfg, path, rate);
    }
}

fn admin_args(admin: SocketAddr) -> Vec<String> {
    vec!["--admin-listen".into(), admin.to_string()]
}

async fn start_with_admin(env: Env, specs: &[KeySpec]) -> (Setup, SocketAddr) {
    let keys = specs.iter().map(|s| env.create_key(s)).collect();
    let origin = Origin::start().await;
    let (gw, admin) = env.start_with_admin(origin.addr).await;
    let jwks = env.assertion_jwks();
    (
        Setup {
            gw,
            origin,
            env,
            jwks,
            keys,
        },
        admin,
    )
}

/// The admin listener's `/metrics` text.
async fn metrics(admin: SocketAddr) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        let raw = b"GET /metrics HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n";
        match send_raw(admin, std::net::Ipv4Addr::LOCALHOST, raw).await {
            Ok(r) if r.status == 200 => return r.text(),
            other if Instant::now() > deadline => panic!("GET /metrics: {:?}", other.err()),
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// The value of the series `name` (exact name with labels) in a metrics text.
fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

async fn wait_metric(admin: SocketAddr, series: &str, ok: impl Fn(f64) -> bool) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        let text = metrics(admin).await;
        if metric(&text, series).is_some_and(&ok) {
            return text;
        }
        if Instant::now() > deadline {
            panic!("{series} never got the expected value:\n{text}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn json_lines(text: &str, what: &str) -> Vec<Value> {
    text.lines()
        .map(|l| {
            serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("{what}: not a JSON line ({e}): {l:?}"))
        })
        .collect()
}

fn request_id(resp: &Resp) -> String {
    resp.header("x-request-id")
        .expect("x-request-id")
        .to_owned()
}

/// Writes until the filesystem says it is full.
fn fill(path: &Path) {
    let mut f = std::fs::File::create(path).unwrap();
    let chunk = [b'x'; 4096];
    loop {
        if let Err(e) = f.write_all(&chunk).and_then(|_| f.sync_all()) {
            assert_eq!(e.raw_os_error(), Some(28), "expected ENOSPC, got {e}");
            return;
        }
    }
}

/// Trade until one passes (the audit writer retries every 200 ms once space is back).
async fn trade_until_forwarded(s: &Setup, key: &TestKey) {
    let deadline = Instant::now() + WAIT;
    loop {
        let before = s.origin.count();
        let r = s.gw.request(&trade_req(s.env.dialect, key)).await;
        if r.status == 200 {
            s.origin.one_since(before);
            return;
        }
        r.assert_error(503, "audit_unavailable");
        assert!(
            Instant::now() < deadline,
            "trades never resumed:\n{}",
            s.gw.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A full disk under the audit log: reads are answered, trades and withdrawals get 503
/// `audit_unavailable` and never reach the exchange; the metrics and the log say so; once
/// space is back the queued lines are written and trading resumes, and the file holds
/// whole JSON lines only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_disk_stops_trades_and_withdrawals_reads_go_on() {
    let d = Dialect::Zaif;
    let tmp = tempfile::tempdir().unwrap();
    let disk = tmp.path().join("disk");
    let _mount = Tmpfs::mount(&disk, "256k");
    let audit = disk.join("audit.jsonl");
    let env = Env::new(d, |cfg| {
        set(cfg, "audit.path", audit.to_string_lossy().into_owned());
        set(cfg, "audit.write_timeout", "300ms");
        generous_limits(cfg);
    });
    let (s, admin) = start_with_admin(env, &[KeySpec::full(d)]).await;
    let k = s.key().clone();
    expect_forwarded(&s, &trade_req(d, &k), &k, "trade").await;

    fill(&disk.join("filler"));
    // tmpfs allocates whole pages: the log's last page still has room for a few lines.
    // Reads are answered while their lines can no longer be written.
    let mut read_id = None;
    for _ in 0..100 {
        let read = s.gw.request(&read_req(d, &k)).await;
        read.assert_forwarded_ok();
        let errors = metric(&metrics(admin).await, "keyguard_audit_write_errors_total");
        if errors.is_some_and(|v| v >= 1.0) {
            read_id = Some(request_id(&read));
            break;
        }
    }
    let read_id = read_id.expect("the audit log never ran out of space");
    wait_metric(admin, "keyguard_audit_available", |v| v == 0.0).await;
    let trade = expect_denied(&s, &trade_req(d, &k), 503, "audit_unavailable").await;
    let withdraw = expect_denied(
        &s,
        &withdraw_req(d, &k, WITHDRAW_ADDR),
        503,
        "audit_unavailable",
    )
    .await;
    // Reads keep going without waiting for the disk.
    s.gw.request(&read_req(d, &k)).await.assert_forwarded_ok();
    let text = metrics(admin).await;
    assert!(
        metric(&text, "keyguard_audit_write_errors_total").is_some_and(|v| v >= 1.0),
        "{text}"
    );
    assert!(
        metric(
            &text,
            "keyguard_requests_total{dialect=\"zaif\",action=\"trade\",decision=\"deny\",code=\"audit_unavailable\"}"
        ) == Some(1.0),
        "{text}"
    );
    assert!(
        s.gw.log().contains("audit log cannot be written"),
        "no alert/log line: {}",
        s.gw.log()
    );

    std::fs::remove_file(disk.join("filler")).unwrap();
    trade_until_forwarded(&s, &k).await;
    wait_metric(admin, "keyguard_audit_available", |v| v == 1.0).await;
    let lines = json_lines(&std::fs::read_to_string(&audit).unwrap(), "audit log");
    let ids: HashSet<&str> = lines
        .iter()
        .filter_map(|v| v["request_id"].as_str())
        .collect();
    for (id, what) in [
        (read_id.as_str(), "the read made while the disk was full"),
        (request_id(&trade).as_str(), "the refused trade"),
        (request_id(&withdraw).as_str(), "the refused withdrawal"),
    ] {
        assert!(ids.contains(id), "{what} ({id}) is not in the log");
    }
    assert!(
        s.gw.log().contains("audit log writable again"),
        "{}",
        s.gw.log()
    );
}

/// A full data disk (`server.data_dir` on a small tmpfs; the audit log elsewhere): a Zaif
/// request whose nonce cannot be journaled is refused with 503 `state_unavailable` and
/// never forwarded, the metric counts it; once space is back requests are forwarded again,
/// and the refused request's nonce stays spent (its replay is `invalid_nonce`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_data_disk_refuses_nonce_requests_then_recovers() {
    let d = Dialect::Zaif;
    let outside = tempfile::tempdir().unwrap();
    let audit = outside.path().join("audit.jsonl");
    let env = Env::new(d, |cfg| {
        set(cfg, "audit.path", audit.to_string_lossy().into_owned());
        set(cfg, "audit.write_timeout", "300ms");
        generous_limits(cfg);
    });
    let _mount = Tmpfs::mount(&env.data, "4m");
    let (s, admin) = start_with_admin(env, &[KeySpec::full(d)]).await;
    let k = s.key().clone();
    s.gw.request(&read_req(d, &k)).await.assert_forwarded_ok();

    fill(&s.env.data.join("filler"));
    // tmpfs allocates whole pages: the journal's last page may take a few more lines.
    let mut refused = None;
    for _ in 0..500 {
        let req = read_req(d, &k);
        let before = s.origin.count();
        let r = s.gw.request(&req).await;
        if r.status == 503 {
            r.assert_error(503, "state_unavailable");
            s.origin
                .assert_unchanged(before, "a request whose nonce was not journaled");
            refused = Some(req);
            break;
        }
        r.assert_forwarded_ok();
    }
    let refused = refused.expect("the nonce journal never ran out of space");
    let text = metrics(admin).await;
    assert!(
        metric(&text, "keyguard_nonce_journal_failures_total").is_some_and(|v| v >= 1.0),
        "{text}"
    );
    assert!(
        s.gw.log().contains("nonce journal write failed"),
        "{}",
        s.gw.log()
    );

    std::fs::remove_file(s.env.data.join("filler")).unwrap();
    s.gw.request(&read_req(d, &k)).await.assert_forwarded_ok();
    // The refused nonce was burnt, not forgotten.
    let before = s.origin.count();
    let replay = s.gw.request(&refused).await;
    assert_eq!(replay.status, 401, "{}", replay.text());
    assert!(replay.text().contains("invalid_nonce"), "{}", replay.text());
    s.origin
        .assert_unchanged(before, "the replayed refused request");
}

/// A writer stuck in `write(2)` (the log is a FIFO nobody reads, so the kernel blocks it
/// like a hung disk): requests are still answered, trades are refused once the write has
/// taken longer than `audit.write_timeout`, and everything queued comes out, in whole
/// lines, once the reader drains it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_writer_never_blocks_requests_and_stops_trades() {
    let d = Dialect::Zaif;
    let tmp = tempfile::tempdir().unwrap();
    let fifo = tmp.path().join("audit.fifo");
    let made = Command::new("mkfifo").arg(&fifo).status().expect("mkfifo");
    assert!(made.success());
    // Opening a FIFO blocks until both ends are open: the reader waits for the gateway.
    let reader = {
        let fifo = fifo.clone();
        std::thread::spawn(move || std::fs::File::open(fifo).expect("open FIFO for reading"))
    };
    let env = Env::new(d, |cfg| {
        set(cfg, "audit.path", fifo.to_string_lossy().into_owned());
        set(cfg, "audit.write_timeout", "300ms");
        generous_limits(cfg);
    });
    let (s, admin) = start_with_admin(env, &[KeySpec::full(d)]).await;
    let mut reader = reader.join().unwrap();
    let k = s.key().clone();

    // Nobody reads: the pipe (64 KiB) fills and the writer blocks inside write(2).
    let mut answered = Vec::new();
    let mut stalled = false;
    for i in 0..3_000 {
        let r = s.gw.request(&read_req(d, &k)).await;
        r.assert_forwarded_ok();
        answered.push(request_id(&r));
        if i % 25 == 24 && metric(&metrics(admin).await, "keyguard_audit_available") == Some(0.0) {
            stalled = true;
            break;
        }
    }
    assert!(stalled, "the writer never stalled:\n{}", s.gw.log());
    let refused = expect_denied(&s, &trade_req(d, &k), 503, "audit_unavailable").await;
    answered.push(request_id(&refused));

    let drained = std::thread::spawn(move || {
        let mut all = Vec::new();
        let mut buf = [0u8; 65536];
        loop {
            match reader.read(&mut buf) {
                Ok(0) | Err(_) => return all,
                Ok(n) => all.extend_from_slice(&buf[..n]),
            }
        }
    });
    trade_until_forwarded(&s, &k).await;
    let text = metrics(admin).await;
    assert!(
        metric(&text, "keyguard_audit_ack_timeouts_total").is_some_and(|v| v >= 1.0),
        "{text}"
    );
    let mut s = s;
    s.gw.terminate(Duration::from_secs(15))
        .expect("gateway exits on SIGTERM");
    let bytes = drained.join().unwrap();
    let lines = json_lines(&String::from_utf8(bytes).unwrap(), "FIFO");
    let ids: HashSet<&str> = lines
        .iter()
        .filter_map(|v| v["request_id"].as_str())
        .collect();
    for id in &answered {
        assert!(
            ids.contains(id.as_str()),
            "{id} was answered but never written"
        );
    }
}

/// Size rotation under load: every file, current and rotated, is whole JSON lines; every
/// request is in exactly one of them; only `max_files` rotated files are kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_keeps_every_file_whole_lines_and_prunes() {
    let d = Dialect::Zaif;
    let env = Env::new(d, |cfg| {
        set(cfg, "audit.rotate_bytes", 65_536);
        set(cfg, "audit.max_files", 2);
        set(cfg, "audit.preauth_lines_per_sec", 1_000_000);
        generous_limits(cfg);
    });
    let s = setup_env(env, &[KeySpec::full(d)]).await;
    let mut last = String::new();
    for i in 0..1_200 {
        let r =
            s.gw.request(&Req::new("GET", &format!("/no-such-endpoint/{i}")))
                .await;
        last = request_id(&r);
    }
    let current = s.env.data.join("audit.jsonl");
    let deadline = Instant::now() + WAIT;
    let rotated = loop {
        let mut rotated: Vec<PathBuf> = std::fs::read_dir(&s.env.data)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| {
                p.file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with("audit.jsonl.")
            })
            .collect();
        rotated.sort();
        let text = std::fs::read_to_string(&current).unwrap();
        if text.contains(&last) || Instant::now() > deadline {
            break rotated;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(rotated.len(), 2, "max_files = 2: {rotated:?}");
    let mut seen = HashMap::new();
    for file in rotated.iter().chain([&current]) {
        let text = std::fs::read_to_string(file).unwrap();
        assert!(
            text.is_empty() || text.ends_with('\n'),
            "{file:?} ends mid-line"
        );
        if file != &current {
            assert!(
                text.len() >= 65_536,
                "{file:?} rotated early: {} bytes",
                text.len()
            );
        }
        for v in json_lines(&text, &file.display().to_string()) {
            if let Some(id) = v["request_id"].as_str() {
                *seen.entry(id.to_owned()).or_insert(0) += 1;
            }
        }
    }
    assert!(
        seen.contains_key(&last),
        "the newest request is in the current file"
    );
    assert!(seen.values().all(|n| *n == 1), "a line is in two files");
    let log = s.gw.log();
    assert!(log.contains("audit log rotated"), "{log}");
    assert!(log.contains("old rotated audit files deleted"), "{log}");
}

/// A flood of unauthenticated requests from one network gets its budget of own lines per
/// second and summary lines for the rest (together, exactly the requests sent), while
/// every authenticated request from another network keeps its own line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preauth_flood_is_summarized_per_network_code_and_second() {
    let d = Dialect::Zaif;
    let env = Env::new(d, |cfg| {
        set(cfg, "audit.preauth_lines_per_sec", 5);
        generous_limits(cfg);
    });
    let (s, admin) = start_with_admin(env, &[KeySpec::full(d)]).await;
    let k = s.key().clone();
    let intruder = TestKey::kat("no-such-key", "no-such-secret");
    // 10.x would not be loopback; 127.0.1.x is another /24 than 127.0.0.2.
    let flood_ip = std::net::Ipv4Addr::new(127, 0, 1, 9);
    let mut flood = 0;
    let mut authenticated = Vec::new();
    for i in 0..300 {
        let r =
            s.gw.send(flood_ip, &zaif::read(&intruder))
                .await
                .expect("answer");
        assert!(r.status >= 400, "{}", r.status);
        flood += 1;
        if i % 10 == 0 {
            let r = s.gw.request(&read_req(d, &k)).await;
            r.assert_forwarded_ok();
            authenticated.push(request_id(&r));
        }
    }
    let path = s.env.data.join("audit.jsonl");
    let deadline = Instant::now() + WAIT;
    loop {
        let lines = json_lines(&std::fs::read_to_string(&path).unwrap(), "audit log");
        let own: Vec<&Value> = lines
            .iter()
            .filter(|v| v["client_ip"] == "127.0.1.9")
            .collect();
        let summaries: Vec<&Value> = lines.iter().filter(|v| v["kind"] == "summary").collect();
        let summarized: u64 = summaries.iter().map(|v| v["count"].as_u64().unwrap()).sum();
        if own.len() as u64 + summarized == flood {
            let mut per_second: HashMap<&str, usize> = HashMap::new();
            for v in &own {
                *per_second
                    .entry(&v["ts"].as_str().unwrap()[..19])
                    .or_default() += 1;
            }
            assert!(per_second.values().all(|n| *n <= 5), "{per_second:?}");
            assert!(summarized > 0, "a flood of 300 must be summarized");
            let mut keys = HashSet::new();
            for v in &summaries {
                assert_eq!(v["client_net"], "127.0.1.0/24");
                assert!(v["code"].is_string());
                assert!(
                    keys.insert((v["ts"].to_string(), v["code"].to_string())),
                    "two summary lines for one network, code and second: {v}"
                );
            }
            let ids: HashSet<&str> = lines
                .iter()
                .filter_map(|v| v["request_id"].as_str())
                .collect();
            for id in &authenticated {
                assert!(
                    ids.contains(id.as_str()),
                    "authenticated request {id} has no line"
                );
            }
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} own + {summarized} summarized != {flood} sent",
            own.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let text = metrics(admin).await;
    assert!(
        metric(&text, "keyguard_audit_summarized_total").is_some_and(|v| v > 0.0),
        "{text}"
    );
}

/// kill -9 while many clients are being served: every request that got an answer has its
/// line, and the file is whole lines.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn answered_requests_survive_kill_9_under_load() {
    let d = Dialect::Binance;
    // Four keys of one account: below the shared-IP rule's five keys per network.
    let specs: Vec<KeySpec> = (0..4).map(|_| KeySpec::full(d)).collect();
    let env = Env::new(d, generous_limits);
    let s = setup_env(env, &specs).await;
    let answered = std::sync::Arc::new(parking_lot::Mutex::new(Vec::new()));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut tasks = Vec::new();
    for k in s.keys.clone() {
        let (answered, stop, addr) = (answered.clone(), stop.clone(), s.gw.addr);
        tasks.push(tokio::spawn(async move {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let raw = read_req(d, &k).to_bytes(&addr.to_string());
                match send_raw(addr, ALLOWED_IP, &raw).await {
                    Ok(r) => answered.lock().push(request_id(&r)),
                    Err(_) => return,
                }
            }
        }));
    }
    // Let load build, then kill without warning while requests are in flight.
    let deadline = Instant::now() + WAIT;
    while answered.lock().len() < 300 {
        assert!(Instant::now() < deadline, "load never built up");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut s = s;
    s.gw.kill();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    let text = std::fs::read_to_string(s.env.data.join("audit.jsonl")).unwrap();
    assert!(text.ends_with('\n'), "the file ends mid-line");
    let lines = json_lines(&text, "audit log");
    let ids: HashSet<&str> = lines
        .iter()
        .filter_map(|v| v["request_id"].as_str())
        .collect();
    let answered = answered.lock();
    let missing: Vec<&String> = answered
        .iter()
        .filter(|id| !ids.contains(id.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {} answered requests have no line: {:?}",
        missing.len(),
        answered.len(),
        &missing[..missing.len().min(5)]
    );
}

/// `/metrics` on the admin listener names requests by dialect, action, decision and code,
/// with latency histograms, upstream, store and audit metrics and table sizes; logs can be
/// JSON lines.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_endpoint_and_json_logs() {
    let d = Dialect::Zaif;
    let env = Env::new(d, |_| {});
    let keys = [
        env.create_key(&KeySpec::full(d)),
        env.create_key(&KeySpec::scopes("read")),
    ];
    let origin = Origin::start().await;
    let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let mut args = admin_args(admin);
    args.extend(["--log-format".into(), "json".into()]);
    let gw = env
        .start_with_args(&format!("http://{}", origin.addr), &args)
        .await;
    gw.request(&read_req(d, &keys[0]))
        .await
        .assert_forwarded_ok();
    gw.request(&trade_req(d, &keys[1]))
        .await
        .assert_error(403, "scope_missing");
    gw.request(&Req::new("GET", "/nope")).await;

    let text = metrics(admin).await;
    for (series, want) in [
        (
            "keyguard_requests_total{dialect=\"zaif\",action=\"read\",decision=\"allow\",code=\"none\"}",
            1.0,
        ),
        (
            "keyguard_requests_total{dialect=\"zaif\",action=\"trade\",decision=\"deny\",code=\"scope_missing\"}",
            1.0,
        ),
        (
            "keyguard_request_duration_seconds_count{dialect=\"zaif\",action=\"read\"}",
            1.0,
        ),
        ("keyguard_upstream_duration_seconds_count", 1.0),
        ("keyguard_upstream_errors_total{kind=\"connect\"}", 0.0),
        ("keyguard_audit_available", 1.0),
        ("keyguard_audit_dropped_lines_total", 0.0),
        ("keyguard_audit_write_errors_total", 0.0),
        ("keyguard_config_reloads_total{result=\"failed\"}", 0.0),
        ("keyguard_key_cache_keys", 2.0),
    ] {
        assert_eq!(metric(&text, series), Some(want), "{series} in:\n{text}");
    }
    for name in [
        "keyguard_store_commit_duration_seconds_count",
        "keyguard_audit_write_duration_seconds_count",
        "keyguard_audit_queue_lines",
        "keyguard_limiter_entries",
        "keyguard_anomaly_entries",
    ] {
        assert!(metric(&text, name).is_some(), "{name} missing:\n{text}");
    }
    // The unknown endpoint is counted under no action.
    assert!(
        text.contains("action=\"none\",decision=\"deny\",code=\"unknown_endpoint\"")
            || text.contains("code=\"unknown_endpoint\""),
        "{text}"
    );
    // Every log line is one JSON object with a level and a message.
    let log = gw.log();
    let lines: Vec<Value> = json_lines(&log, "JSON log");
    assert!(
        lines
            .iter()
            .any(|v| v["message"] == "keyguard serving" && v["level"] == "INFO"),
        "{log}"
    );
}
