//! Black-box harness for the real `keyguard` binary.
//!
//! # Layout
//! - [`Env`]: a temp directory holding one test's config file and data dir, and the CLI
//!   (`keys create`, `suspend`, `assertion-key`, ...) run against it.
//! - [`Gateway`]: a running `keyguard serve` child process, killed on drop.
//! - [`Origin`]: a mock upstream on `127.0.0.1:0` that records every request it receives
//!   and answers `200` JSON, or a status scripted per request ([`Origin::answer_next`]);
//!   [`silent_origin`] never answers; [`dead_origin`] refuses.
//! - [`Req`] / [`Resp`]: a hand-written HTTP/1.1 client over a TCP socket bound to a
//!   chosen source address (`127.0.0.2` allowed, `127.0.0.3` not), so malformed requests
//!   are sent byte for byte.
//! - [`sign`]: independent HMAC signers (ring) for the three dialects, pinned by
//!   known-answer tests; [`zaif`], [`binance`], [`kraken`]: request builders.
//! - [`redis`]: real `redis-server` processes and a Redis Cluster for distributed mode.
//! - [`admin`]: a browser-like client of the admin listener, TOTP codes, SSO tokens.
//! - [`tls`]: test certificates (rcgen, made per test), HTTPS and HTTP/2 clients, and a
//!   raw HTTP/2 frame writer for the flood tests.
//! - [`verify_assertion`]: checks `X-Keyguard-Assertion` with `jsonwebtoken` and the PEM
//!   printed by `keyguard assertion-key`.
//!
//! Every wait is a poll with a deadline; nothing sleeps to assert.

#![allow(dead_code)]

pub mod admin;
pub mod redis;
pub mod scenarios;
pub mod tls;

use std::collections::VecDeque;
use std::convert::Infallible;
use std::io::Read as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket};
use tokio::task::JoinHandle;

/// The keyguard binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_keyguard");

/// Client address inside every test key's allowlist.
pub const ALLOWED_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
/// Client address outside every test key's allowlist.
pub const OTHER_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 3);
/// The withdrawal address registered on withdraw keys.
pub const WITHDRAW_ADDR: &str = "1KeyguardTestAddrxxxxxxxxxxxxxxxx";
/// An address registered nowhere.
pub const OTHER_ADDR: &str = "1NotAllowlistedAddrxxxxxxxxxxxxxx";

/// Upper bound for any single network exchange in a test.
pub const IO_TIMEOUT: Duration = Duration::from_secs(15);
/// Upper bound for the gateway to come up.
const START_TIMEOUT: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------------------
// Dialects and config
// ---------------------------------------------------------------------------------------

/// The three dialects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Zaif,
    Binance,
    Kraken,
}

impl Dialect {
    pub fn name(self) -> &'static str {
        match self {
            Dialect::Zaif => "zaif",
            Dialect::Binance => "binance",
            Dialect::Kraken => "kraken",
        }
    }

    /// The example config shipped in `config/examples/`.
    pub fn example_path(self) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../config/examples")
            .join(format!("{}.toml", self.name()))
    }

    /// The asset code a withdraw key is registered for (as the request names it).
    pub fn withdraw_asset(self) -> &'static str {
        match self {
            Dialect::Zaif => "btc",
            Dialect::Binance => "BTC",
            Dialect::Kraken => "XBT",
        }
    }
}

/// One test's files: a config and a data directory inside a fresh temp dir.
pub struct Env {
    pub dir: tempfile::TempDir,
    pub dialect: Dialect,
    pub config: PathBuf,
    pub data: PathBuf,
}

/// Output of one CLI run.
#[derive(Debug)]
pub struct CliRun {
    pub status: std::process::ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl CliRun {
    fn from_output(o: Output) -> CliRun {
        CliRun {
            status: o.status,
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }

    #[track_caller]
    pub fn ok(self) -> CliRun {
        assert!(
            self.status.success(),
            "keyguard failed ({}):\nstdout: {}\nstderr: {}",
            self.status,
            self.stdout,
            self.stderr
        );
        self
    }
}

/// A key as `keys create --json` printed it.
#[derive(Debug, Clone)]
pub struct TestKey {
    pub key_id: String,
    pub api_key: String,
    pub secret: String,
    pub account: String,
}

impl TestKey {
    /// A key the gateway never sees (`kg_kat`, account `kat`), for the signers'
    /// known-answer tests.
    pub fn kat(api_key: &str, secret: &str) -> TestKey {
        TestKey {
            key_id: "kg_kat".into(),
            api_key: api_key.into(),
            secret: secret.into(),
            account: "kat".into(),
        }
    }
}

/// What to provision.
#[derive(Debug, Clone)]
pub struct KeySpec {
    pub account: String,
    pub scopes: String,
    pub allow_ips: Vec<String>,
    pub withdraw_addresses: Vec<String>,
}

impl KeySpec {
    /// read,trade,withdraw from 127.0.0.2 to [`WITHDRAW_ADDR`].
    pub fn full(dialect: Dialect) -> KeySpec {
        KeySpec {
            account: "acct-full".into(),
            scopes: "read,trade,withdraw".into(),
            allow_ips: vec![format!("{ALLOWED_IP}/32")],
            withdraw_addresses: vec![format!(
                "{}:{WITHDRAW_ADDR}",
                dialect.withdraw_asset().to_ascii_lowercase()
            )],
        }
    }

    /// Just `scopes`, from 127.0.0.2.
    pub fn scopes(scopes: &str) -> KeySpec {
        KeySpec {
            account: format!("acct-{}", scopes.replace(',', "-")),
            scopes: scopes.into(),
            allow_ips: vec![format!("{ALLOWED_IP}/32")],
            withdraw_addresses: vec![],
        }
    }
}

/// Sets `table.path = value`, creating intermediate tables.
pub fn set(table: &mut toml::Table, path: &str, value: impl Into<toml::Value>) {
    let mut parts: Vec<&str> = path.split('.').collect();
    let last = parts.pop().expect("non-empty path");
    let mut t = table;
    for p in parts {
        t = t
            .entry(p)
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
            .as_table_mut()
            .unwrap_or_else(|| panic!("{p} is not a table"));
    }
    t.insert(last.to_owned(), value.into());
}

impl Env {
    /// A test environment from the dialect's example config, with the withdrawal address
    /// cool-down disabled, and then `tweak` applied.
    pub fn new(dialect: Dialect, tweak: impl FnOnce(&mut toml::Table)) -> Env {
        Env::from_example(dialect, |cfg| {
            set(cfg, "withdraw.address_cooldown_secs", 0);
            tweak(cfg);
        })
    }

    /// A test environment from the example config with only `tweak` applied (the
    /// cool-down keeps the example's value).
    pub fn from_example(dialect: Dialect, tweak: impl FnOnce(&mut toml::Table)) -> Env {
        let example = dialect.example_path();
        let text = std::fs::read_to_string(&example)
            .unwrap_or_else(|e| panic!("reading {}: {e}", example.display()));
        let mut cfg: toml::Table = text
            .parse()
            .unwrap_or_else(|e| panic!("{} is not TOML: {e}", example.display()));
        let dir = tempfile::Builder::new()
            .prefix("keyguard-it-")
            .tempdir()
            .expect("tempdir");
        let data = dir.path().join("data");
        set(
            &mut cfg,
            "server.data_dir",
            data.to_string_lossy().into_owned(),
        );
        // Quick failures in tests: a never-answering upstream must not hold a test for 10 s.
        set(&mut cfg, "server.upstream_connect_timeout_ms", 2_000);
        set(&mut cfg, "server.upstream_response_timeout_ms", 5_000);
        // `.ci/run` runs the suite once with the default (a worker per core) and once with
        // KEYGUARD_TEST_WORKERS=1; the concurrency tests must hold either way.
        if let Ok(n) = std::env::var("KEYGUARD_TEST_WORKERS") {
            let n: i64 = n.parse().expect("KEYGUARD_TEST_WORKERS is a number");
            set(&mut cfg, "server.workers", n);
        }
        tweak(&mut cfg);
        let config = dir.path().join("keyguard.toml");
        std::fs::write(&config, toml::to_string(&cfg).expect("serialize config"))
            .expect("write config");
        Env {
            dir,
            dialect,
            config,
            data,
        }
    }

    /// An environment whose config file is exactly `text` (for config-error tests).
    pub fn with_config_text(dialect: Dialect, text: &str) -> Env {
        let dir = tempfile::Builder::new()
            .prefix("keyguard-it-")
            .tempdir()
            .expect("tempdir");
        let data = dir.path().join("data");
        let config = dir.path().join("keyguard.toml");
        std::fs::write(&config, text).expect("write config");
        Env {
            dir,
            dialect,
            config,
            data,
        }
    }

    /// Runs `keyguard ARGS` (blocking; safe inside a multi-thread runtime).
    pub fn run(&self, args: &[&str]) -> CliRun {
        let go = || {
            let mut child = Command::new(BIN)
                .args(args)
                .env_remove("KEYGUARD_MASTER_KEY")
                .env("RUST_LOG", "warn")
                .env("NO_COLOR", "1")
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn keyguard");
            // Bounded: a CLI command that hangs fails the test instead of the whole run.
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                if child.try_wait().expect("wait").is_some() {
                    break;
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("keyguard {args:?} did not finish within 60 s");
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            CliRun::from_output(child.wait_with_output().expect("output"))
        };
        match tokio::runtime::Handle::try_current() {
            Ok(_) => tokio::task::block_in_place(go),
            Err(_) => go(),
        }
    }

    fn cfg_args(&self) -> Vec<String> {
        vec![
            "--config".into(),
            self.config.to_string_lossy().into_owned(),
            "--data-dir".into(),
            self.data.to_string_lossy().into_owned(),
        ]
    }

    /// Runs `keyguard <sub...> --config F --data-dir D <rest...>`.
    pub fn run_with_store(&self, sub: &[&str], rest: &[&str]) -> CliRun {
        let cfg = self.cfg_args();
        let mut args: Vec<&str> = sub.to_vec();
        args.extend(cfg.iter().map(String::as_str));
        args.extend_from_slice(rest);
        self.run(&args)
    }

    /// `keys create ... --json`, without checking success.
    pub fn try_create_key(&self, spec: &KeySpec) -> CliRun {
        let mut rest: Vec<String> = vec![
            "--account".into(),
            spec.account.clone(),
            "--scopes".into(),
            spec.scopes.clone(),
            "--json".into(),
        ];
        for ip in &spec.allow_ips {
            rest.push("--allow-ip".into());
            rest.push(ip.clone());
        }
        for a in &spec.withdraw_addresses {
            rest.push("--withdraw-address".into());
            rest.push(a.clone());
        }
        let rest: Vec<&str> = rest.iter().map(String::as_str).collect();
        self.run_with_store(&["keys", "create"], &rest)
    }

    /// `keys create ... --json`, parsed.
    #[track_caller]
    pub fn create_key(&self, spec: &KeySpec) -> TestKey {
        let run = self.try_create_key(spec).ok();
        let line = run
            .stdout
            .lines()
            .find(|l| l.trim_start().starts_with('{'))
            .unwrap_or_else(|| panic!("no JSON in keys create output: {}", run.stdout));
        let v: Value = serde_json::from_str(line).expect("keys create --json is JSON");
        let s = |k: &str| {
            v[k].as_str()
                .unwrap_or_else(|| panic!("keys create --json: missing {k}: {v}"))
                .to_owned()
        };
        TestKey {
            key_id: s("key_id"),
            api_key: s("api_key"),
            secret: s("secret"),
            account: spec.account.clone(),
        }
    }

    /// `keys suspend|resume|revoke KEY_ID`.
    #[track_caller]
    pub fn set_key_status(&self, verb: &str, key: &TestKey) {
        self.run_with_store(&["keys", verb], &[&key.key_id]).ok();
    }

    /// `keyguard assertion-key`: the JWKS the upstream verifies assertions with.
    #[track_caller]
    pub fn assertion_jwks(&self) -> String {
        let run = self.run_with_store(&["assertion-key"], &[]).ok();
        assert!(
            run.stdout.contains("\"keys\""),
            "assertion-key printed {:?}",
            run.stdout
        );
        run.stdout
    }

    /// Starts `keyguard serve` forwarding to `upstream`, and waits until it accepts.
    pub async fn start(&self, upstream: SocketAddr) -> Gateway {
        self.start_with_upstream(&format!("http://{upstream}"))
            .await
    }

    /// Starts `keyguard serve --upstream URL`.
    pub async fn start_with_upstream(&self, upstream: &str) -> Gateway {
        self.start_with_args(upstream, &[]).await
    }

    /// Starts `keyguard serve` forwarding to `upstream` with the admin listener on a free
    /// loopback port; returns the gateway and that port's address.
    pub async fn start_with_admin(&self, upstream: SocketAddr) -> (Gateway, SocketAddr) {
        let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let gw = self
            .start_with_args(
                &format!("http://{upstream}"),
                &["--admin-listen".into(), admin.to_string()],
            )
            .await;
        (gw, admin)
    }

    /// Starts `keyguard serve --upstream URL EXTRA...` (e.g. `--admin-listen ADDR`).
    ///
    /// The gateway listens on port 0 and the port is read from its `keyguard serving`
    /// line: a port picked here and released could be picked by another test's gateway
    /// too, and with `SO_REUSEPORT` both would bind it and share its connections.
    pub async fn start_with_args(&self, upstream: &str, extra: &[String]) -> Gateway {
        let mut last_log = String::new();
        // An `--admin-listen` port from `free_port` can still be taken in between; such a
        // start is retried.
        for attempt in 0..5 {
            let log = self.dir.path().join(format!("gateway-{attempt}.log"));
            let log_file = std::fs::File::create(&log).expect("create log");
            let mut args = vec!["serve".to_owned()];
            args.extend(self.cfg_args());
            args.extend([
                "--listen".into(),
                "127.0.0.1:0".into(),
                "--upstream".into(),
                upstream.to_owned(),
            ]);
            args.extend(extra.iter().cloned());
            let child = Command::new(BIN)
                .args(&args)
                .env_remove("KEYGUARD_MASTER_KEY")
                .env("RUST_LOG", "info")
                .env("NO_COLOR", "1")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log_file)
                .spawn()
                .expect("spawn keyguard serve");
            let mut gw = Gateway {
                child: Some(child),
                addr: SocketAddr::from(([127, 0, 0, 1], 0)),
                log,
            };
            match gw.wait_ready().await {
                Ok(()) => return gw,
                Err(exited) => {
                    last_log = gw.log();
                    drop(gw);
                    let port_taken = last_log.contains("binding")
                        || last_log.contains("in use")
                        || last_log.contains("AddrInUse");
                    if !(exited && port_taken) {
                        break;
                    }
                }
            }
        }
        panic!("keyguard serve did not start; its log:\n{last_log}");
    }
}

/// The address in a `keyguard serving` log line, text (`listen=ADDR`) or JSON
/// (`"listen":"ADDR"`).
pub fn serving_addr(log: &str) -> Option<SocketAddr> {
    let line = log.lines().find(|l| l.contains("keyguard serving"))?;
    let rest = line
        .split_once("listen=")
        .or_else(|| line.split_once("\"listen\":\""))?
        .1;
    let end = rest
        .find(|c: char| c.is_whitespace() || c == '"')
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

/// A port free right now on 127.0.0.1.
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind :0");
    l.local_addr().expect("local addr").port()
}

/// A running `keyguard serve`; killed when dropped.
pub struct Gateway {
    child: Option<Child>,
    pub addr: SocketAddr,
    log: PathBuf,
}

impl Gateway {
    /// Ok once this process says where it serves (its `keyguard serving` line, written
    /// after every listener is bound; that sets `addr`) and the port accepts; Err(true) if
    /// the process exited, Err(false) on timeout.
    async fn wait_ready(&mut self) -> Result<(), bool> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(child) = self.child.as_mut() {
                if child.try_wait().expect("try_wait").is_some() {
                    return Err(true);
                }
            }
            match serving_addr(&self.log()) {
                Some(addr) => self.addr = addr,
                None => {
                    if Instant::now() > deadline {
                        return Err(false);
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            }
            if let Ok(Ok(_)) = tokio::time::timeout(
                Duration::from_millis(500),
                tokio::net::TcpStream::connect(self.addr),
            )
            .await
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(false);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The process's resident memory now (`VmRSS`), in KiB.
    pub fn rss_kib(&self) -> u64 {
        let pid = self.child.as_ref().expect("gateway running").id();
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .expect("reading /proc/<pid>/status")
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS in /proc/<pid>/status")
    }

    /// The gateway's stderr so far.
    pub fn log(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.log) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }

    /// Sends `req` from `src` and reads one response.
    pub async fn send(&self, src: Ipv4Addr, req: &Req) -> Result<Resp, String> {
        send_raw(self.addr, src, &req.to_bytes(&self.addr.to_string())).await
    }

    /// Sends `req` from [`ALLOWED_IP`] and expects a response.
    pub async fn request(&self, req: &Req) -> Resp {
        self.request_from(ALLOWED_IP, req).await
    }

    /// Sends `req` from `src` and expects a response.
    pub async fn request_from(&self, src: Ipv4Addr, req: &Req) -> Resp {
        match self.send(src, req).await {
            Ok(r) => r,
            Err(e) => panic!(
                "no response to {:?}: {e}\n--- gateway log ---\n{}",
                String::from_utf8_lossy(&req.to_bytes("gw")),
                self.log()
            ),
        }
    }

    /// Sends exact bytes from `src`.
    pub async fn send_bytes(&self, src: Ipv4Addr, raw: &[u8]) -> Result<Resp, String> {
        send_raw(self.addr, src, raw).await
    }

    /// Stops the gateway (SIGKILL) and waits for it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends `signal` (`HUP`, `TERM`, …) to the gateway process.
    pub fn signal(&self, signal: &str) {
        let child = self.child.as_ref().expect("gateway running");
        let sent = Command::new("kill")
            .args([&format!("-{signal}"), &child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(sent.success(), "kill -{signal} failed");
    }

    /// Sends SIGTERM (graceful shutdown) and waits up to `timeout` for the process to
    /// exit; `None` if it is still running then (it is killed by `Drop` later).
    pub fn terminate(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let child = self.child.as_mut()?;
        let sent = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(sent.success(), "kill -TERM failed");
        let deadline = std::time::Instant::now() + timeout;
        while std::time::Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!("--- keyguard serve log ({}) ---\n{}", self.addr, self.log());
        }
    }
}

// ---------------------------------------------------------------------------------------
// Mock origin
// ---------------------------------------------------------------------------------------

/// One request as the upstream received it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    /// Path and query, exactly as on the request line.
    pub target: String,
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Vec<u8>,
}

impl Recorded {
    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or("")
    }

    pub fn query(&self) -> Option<&str> {
        self.target.split_once('?').map(|(_, q)| q)
    }

    /// All values of header `name` (case-insensitive).
    pub fn header_all(&self, name: &str) -> Vec<String> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
            .collect()
    }

    /// The single value of header `name`.
    pub fn header(&self, name: &str) -> Option<String> {
        let all = self.header_all(name);
        assert!(all.len() <= 1, "header {name} repeated upstream: {all:?}");
        all.into_iter().next()
    }

    pub fn has_header(&self, name: &str) -> bool {
        !self.header_all(name).is_empty()
    }
}

/// A recording upstream answering `200 {"success":1,...}`, or a status scripted with
/// [`Origin::answer_next`].
pub struct Origin {
    pub addr: SocketAddr,
    records: Arc<Mutex<Vec<Recorded>>>,
    script: Arc<Mutex<VecDeque<u16>>>,
    task: JoinHandle<()>,
}

/// The origin's answer to one request: the next scripted status with
/// `{"success":0,"error":"scripted <status>"}`, or `200 {"success":1,...}`.
fn origin_answer(script: &Mutex<VecDeque<u16>>) -> (u16, Bytes) {
    match script.lock().unwrap().pop_front() {
        Some(status) => (
            status,
            Bytes::from(format!(r#"{{"success":0,"error":"scripted {status}"}}"#)),
        ),
        None => (
            200,
            Bytes::from_static(br#"{"success":1,"return":{"origin":"mock"}}"#),
        ),
    }
}

impl Origin {
    pub async fn start() -> Origin {
        Origin::start_with_tls(None).await
    }

    /// An origin that speaks TLS with `tls` (HTTP/1.1), e.g. one that requires a client
    /// certificate.
    pub async fn start_with_tls(tls: Option<tokio_rustls::TlsAcceptor>) -> Origin {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind origin");
        let addr = listener.local_addr().expect("origin addr");
        let records: Arc<Mutex<Vec<Recorded>>> = Arc::default();
        let script: Arc<Mutex<VecDeque<u16>>> = Arc::default();
        let (recs, scr) = (records.clone(), script.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (recs, scr, tls) = (recs.clone(), scr.clone(), tls.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |req: hyper::Request<Incoming>| {
                        let (recs, scr) = (recs.clone(), scr.clone());
                        async move {
                            let (parts, body) = req.into_parts();
                            let body = body
                                .collect()
                                .await
                                .map(|c| c.to_bytes().to_vec())
                                .unwrap_or_default();
                            let rec = Recorded {
                                method: parts.method.to_string(),
                                target: parts
                                    .uri
                                    .path_and_query()
                                    .map(|p| p.as_str().to_owned())
                                    .unwrap_or_default(),
                                headers: parts
                                    .headers
                                    .iter()
                                    .map(|(n, v)| (n.as_str().to_owned(), v.as_bytes().to_vec()))
                                    .collect(),
                                body,
                            };
                            recs.lock().unwrap().push(rec);
                            let (status, body) = origin_answer(&scr);
                            let resp = hyper::Response::builder()
                                .status(status)
                                .header("content-type", "application/json")
                                // A hop-by-hop header nominated by the origin: the gateway
                                // must not pass it on to the client.
                                .header("connection", "x-origin-hop")
                                .header("x-origin-hop", "1")
                                .header("x-origin", "mock")
                                .body(Full::new(body))
                                .expect("response");
                            Ok::<_, Infallible>(resp)
                        }
                    });
                    match tls {
                        None => {
                            let _ = http1::Builder::new()
                                .serve_connection(TokioIo::new(stream), svc)
                                .await;
                        }
                        Some(tls) => {
                            // A refused handshake (no or wrong client certificate) just
                            // ends the connection: the gateway sees a failed connect.
                            if let Ok(stream) = tls.accept(stream).await {
                                let _ = http1::Builder::new()
                                    .serve_connection(TokioIo::new(stream), svc)
                                    .await;
                            }
                        }
                    }
                });
            }
        });
        Origin {
            addr,
            records,
            script,
            task,
        }
    }

    /// The next request not answered by an earlier scripted status is answered with
    /// `status` (body `{"success":0,"error":"scripted <status>"}`); requests with no
    /// scripted status left get the usual 200.
    pub fn answer_next(&self, status: u16) {
        self.script.lock().unwrap().push_back(status);
    }

    /// Everything received so far.
    pub fn records(&self) -> Vec<Recorded> {
        self.records.lock().unwrap().clone()
    }

    /// The bodies received so far that contain `needle` (as an alert webhook: the alerts
    /// of one event, e.g. `"\"ip_banned\""`).
    pub fn bodies_containing(&self, needle: &str) -> Vec<String> {
        self.records()
            .iter()
            .map(|r| String::from_utf8_lossy(&r.body).into_owned())
            .filter(|b| b.contains(needle))
            .collect()
    }

    pub fn count(&self) -> usize {
        self.records.lock().unwrap().len()
    }

    /// The only request received since `before` requests had been recorded.
    #[track_caller]
    pub fn one_since(&self, before: usize) -> Recorded {
        let recs = self.records();
        assert_eq!(
            recs.len(),
            before + 1,
            "expected exactly one forwarded request, upstream saw: {:#?}",
            &recs[before.min(recs.len())..]
        );
        recs[before].clone()
    }

    /// Asserts nothing reached the upstream since `before`.
    #[track_caller]
    pub fn assert_unchanged(&self, before: usize, what: &str) {
        let recs = self.records();
        assert_eq!(
            recs.len(),
            before,
            "{what}: must not be forwarded, upstream saw: {:#?}",
            &recs[before.min(recs.len())..]
        );
    }
}

impl Drop for Origin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// An upstream that accepts connections and never answers. Returns its address and a
/// counter of connections accepted.
pub async fn silent_origin() -> (SocketAddr, Arc<AtomicU64>, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind silent");
    let addr = listener.local_addr().expect("addr");
    let accepted = Arc::new(AtomicU64::new(0));
    let n = accepted.clone();
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            n.fetch_add(1, Ordering::SeqCst);
            held.push(s);
        }
    });
    (addr, accepted, task)
}

/// An address where nothing listens.
pub fn dead_origin() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let a = l.local_addr().expect("addr");
    drop(l);
    a
}

// ---------------------------------------------------------------------------------------
// Raw HTTP/1.1 client
// ---------------------------------------------------------------------------------------

/// A request written by hand. `Host` and `Content-Length` are added unless disabled.
#[derive(Debug, Clone)]
pub struct Req {
    pub method: String,
    pub target: String,
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Vec<u8>,
    pub host: bool,
    pub content_length: bool,
}

impl Req {
    pub fn new(method: &str, target: &str) -> Req {
        Req {
            method: method.into(),
            target: target.into(),
            headers: Vec::new(),
            body: Vec::new(),
            host: true,
            content_length: true,
        }
    }

    /// Appends a header (raw bytes: anything, including CR/LF/NUL, is written as given).
    pub fn header(mut self, name: &str, value: impl AsRef<[u8]>) -> Req {
        self.headers.push((name.into(), value.as_ref().to_vec()));
        self
    }

    /// Removes every header named `name` (case-insensitive).
    pub fn without_header(mut self, name: &str) -> Req {
        self.headers.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
        self
    }

    /// Replaces header `name` with one value.
    pub fn replace_header(self, name: &str, value: impl AsRef<[u8]>) -> Req {
        self.without_header(name).header(name, value)
    }

    pub fn body(mut self, body: impl AsRef<[u8]>) -> Req {
        self.body = body.as_ref().to_vec();
        self
    }

    pub fn target(mut self, target: &str) -> Req {
        self.target = target.into();
        self
    }

    pub fn no_host(mut self) -> Req {
        self.host = false;
        self
    }

    pub fn no_content_length(mut self) -> Req {
        self.content_length = false;
        self
    }

    pub fn header_value(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    }

    /// The request bytes, `host` being the value of the Host header.
    pub fn to_bytes(&self, host: &str) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(format!("{} {} HTTP/1.1\r\n", self.method, self.target).as_bytes());
        if self.host {
            out.extend_from_slice(format!("Host: {host}\r\n").as_bytes());
        }
        for (n, v) in &self.headers {
            out.extend_from_slice(n.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(v);
            out.extend_from_slice(b"\r\n");
        }
        if self.content_length && (!self.body.is_empty() || self.method != "GET") {
            out.extend_from_slice(format!("Content-Length: {}\r\n", self.body.len()).as_bytes());
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&self.body);
        out
    }
}

/// A parsed response.
#[derive(Debug, Clone)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "response body is not JSON ({e}): {} {:?}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// Keyguard's error object: `error` in the design's shape
    /// `{"error":{"code","message","request_id"}}`, or `keyguard` in the Kraken shape
    /// `{"error":["E…:…","EKeyguard:<code>"],"keyguard":{…}}` (ccxt's kraken needs
    /// `error` to be a list).
    pub fn error_object(&self) -> Option<Value> {
        let v: Value = serde_json::from_slice(&self.body).ok()?;
        match &v["error"] {
            Value::Object(_) => Some(v["error"].clone()),
            Value::Array(_) => Some(v["keyguard"].clone()),
            _ => None,
        }
    }

    /// The error code of a Keyguard error body.
    pub fn code(&self) -> Option<String> {
        self.error_object()?["code"].as_str().map(str::to_owned)
    }

    /// Asserts a Keyguard error: status, code, and the documented body shape.
    #[track_caller]
    pub fn assert_error(&self, status: u16, code: &str) {
        assert_eq!(
            (self.status, self.code().as_deref()),
            (status, Some(code)),
            "expected {status} {code}, got {} {:?}",
            self.status,
            self.text()
        );
        let v = self.json();
        if let Some(list) = v["error"].as_array() {
            // Kraken's shape: the closest native error first, then ours.
            assert_eq!(list.len(), 2, "kraken error list: {v}");
            assert!(
                list[0]
                    .as_str()
                    .is_some_and(|e| e.starts_with('E') && e.contains(':')),
                "kraken error string: {v}"
            );
            assert_eq!(list[1], format!("EKeyguard:{code}").as_str(), "{v}");
        }
        let err = self.error_object().expect("error object");
        assert!(
            err["message"].as_str().is_some_and(|m| !m.is_empty()),
            "error.message missing: {v}"
        );
        let rid = err["request_id"].as_str().unwrap_or_default();
        assert!(!rid.is_empty(), "error.request_id missing: {v}");
        assert_eq!(
            self.header("x-request-id"),
            Some(rid),
            "X-Request-Id header and error.request_id agree"
        );
        assert!(
            self.header("content-type")
                .is_some_and(|c| c.starts_with("application/json")),
            "error content-type: {:?}",
            self.header("content-type")
        );
    }

    /// Asserts the mock origin's answer came back.
    #[track_caller]
    pub fn assert_forwarded_ok(&self) {
        assert_eq!(
            self.status,
            200,
            "expected the upstream's 200, got {} {:?}",
            self.status,
            self.text()
        );
        assert_eq!(self.json()["return"]["origin"], "mock", "{}", self.text());
    }
}

/// Connects from `src` (a loopback address: on Linux 127.0.0.0/8 is all local), writes
/// `raw`, and reads one response. `Err` when the connection closed without a response.
pub async fn send_raw(gw: SocketAddr, src: Ipv4Addr, raw: &[u8]) -> Result<Resp, String> {
    let fut = async {
        let sock = TcpSocket::new_v4().map_err(|e| e.to_string())?;
        sock.bind(SocketAddr::new(IpAddr::V4(src), 0))
            .map_err(|e| format!("bind {src}: {e}"))?;
        let mut stream = sock.connect(gw).await.map_err(|e| e.to_string())?;
        // The peer may refuse and close before reading everything; a write error then is
        // not the answer we look for, the response (if any) is.
        let _ = stream.write_all(raw).await;
        let _ = stream.flush().await;
        read_response(&mut stream).await
    };
    match tokio::time::timeout(IO_TIMEOUT, fut).await {
        Ok(r) => r,
        Err(_) => Err("timed out waiting for a response".into()),
    }
}

pub async fn read_response<S: tokio::io::AsyncRead + Unpin>(
    stream: &mut S,
) -> Result<Resp, String> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = find(&buf, b"\r\n\r\n") {
            break i;
        }
        let n = match stream.read(&mut chunk).await {
            Ok(n) => n,
            Err(e) if buf.is_empty() => return Err(format!("read: {e}")),
            Err(_) => 0,
        };
        if n == 0 {
            return Err(format!(
                "connection closed without a complete response ({} bytes: {:?})",
                buf.len(),
                String::from_utf8_lossy(&buf)
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut rest = buf[head_end + 4..].to_vec();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status: u16 = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let get = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    };
    let body = if let Some(len) = get("content-length") {
        let len: usize = len.parse().map_err(|_| "bad content-length".to_owned())?;
        while rest.len() < len {
            let n = stream.read(&mut chunk).await.map_err(|e| e.to_string())?;
            if n == 0 {
                return Err("closed inside body".into());
            }
            rest.extend_from_slice(&chunk[..n]);
        }
        rest.truncate(len);
        rest
    } else if get("transfer-encoding").is_some_and(|t| t.eq_ignore_ascii_case("chunked")) {
        let mut body = Vec::new();
        loop {
            let line_end = loop {
                if let Some(i) = find(&rest, b"\r\n") {
                    break i;
                }
                let n = stream.read(&mut chunk).await.map_err(|e| e.to_string())?;
                if n == 0 {
                    return Err("closed inside chunked body".into());
                }
                rest.extend_from_slice(&chunk[..n]);
            };
            let size_text = String::from_utf8_lossy(&rest[..line_end]).into_owned();
            let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
                .map_err(|_| format!("bad chunk size {size_text:?}"))?;
            rest.drain(..line_end + 2);
            while rest.len() < size + 2 {
                let n = stream.read(&mut chunk).await.map_err(|e| e.to_string())?;
                if n == 0 {
                    if size == 0 {
                        break;
                    }
                    return Err("closed inside chunk".into());
                }
                rest.extend_from_slice(&chunk[..n]);
            }
            if size == 0 {
                break;
            }
            body.extend_from_slice(&rest[..size]);
            rest.drain(..size + 2);
        }
        body
    } else if status == 204 || status == 304 || (100..200).contains(&status) {
        Vec::new()
    } else {
        // Delimited by close.
        let mut body = rest;
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => body.extend_from_slice(&chunk[..n]),
            }
        }
        body
    };
    Ok(Resp {
        status,
        headers,
        body,
    })
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

// ---------------------------------------------------------------------------------------
// Signing (independent of the gateway) and request builders
// ---------------------------------------------------------------------------------------

/// Now in milliseconds.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as u64
}

/// A strictly increasing nonce for this test process (ms * 1000 + counter).
pub fn next_nonce() -> u64 {
    static LAST: AtomicU64 = AtomicU64::new(0);
    let candidate = now_ms() * 1000;
    let mut prev = LAST.load(Ordering::SeqCst);
    loop {
        let next = candidate.max(prev + 1);
        match LAST.compare_exchange(prev, next, Ordering::SeqCst, Ordering::SeqCst) {
            Ok(_) => return next,
            Err(p) => prev = p,
        }
    }
}

/// Percent-encodes like Python's `urllib.parse.quote(s, safe="")` (what ccxt signs).
pub fn quote(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `a=1&b=2` from pairs.
pub fn form(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("{}={}", quote(k), quote(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// The signature algorithms, written here from the exchanges' documentation with ring
/// only. Known-answer tests pin them; the gateway must accept what they produce.
pub mod sign {
    use super::*;
    use ring::{digest, hmac};

    /// Zaif: hex HMAC-SHA512(secret, body).
    pub fn zaif(secret: &str, body: &[u8]) -> String {
        let k = hmac::Key::new(hmac::HMAC_SHA512, secret.as_bytes());
        hex::encode(hmac::sign(&k, body).as_ref())
    }

    /// Binance: hex HMAC-SHA256(secret, query string ‖ body).
    pub fn binance(secret: &str, query: &str, body: &str) -> String {
        let k = hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes());
        let mut msg = query.as_bytes().to_vec();
        msg.extend_from_slice(body.as_bytes());
        hex::encode(hmac::sign(&k, &msg).as_ref())
    }

    /// Kraken: base64 HMAC-SHA512(base64decode(secret), path ‖ SHA256(nonce ‖ body)).
    pub fn kraken(secret_b64: &str, path: &str, nonce: &str, body: &[u8]) -> String {
        let secret = STANDARD
            .decode(secret_b64)
            .expect("kraken secret is base64");
        let mut inner = nonce.as_bytes().to_vec();
        inner.extend_from_slice(body);
        let h = digest::digest(&digest::SHA256, &inner);
        let mut msg = path.as_bytes().to_vec();
        msg.extend_from_slice(h.as_ref());
        let k = hmac::Key::new(hmac::HMAC_SHA512, &secret);
        STANDARD.encode(hmac::sign(&k, &msg).as_ref())
    }
}

/// A request signed by the policy crate's client-side signer ([`sign_request`], the code
/// the load generator uses), converted to a [`Req`].
///
/// [`sign_request`]: keyguard_policy::dialect::sign_request
pub fn policy_signed(
    dialect: Dialect,
    key: &TestKey,
    method: &str,
    path: &str,
    params: &[(&str, &str)],
    freshness: &str,
    json_body: bool,
) -> Req {
    use keyguard_policy::dialect::{sign_request, ClientKey};
    let kind = match dialect {
        Dialect::Zaif => keyguard_policy::DialectKind::Zaif,
        Dialect::Binance => keyguard_policy::DialectKind::Binance,
        Dialect::Kraken => keyguard_policy::DialectKind::Kraken,
    };
    let ck = ClientKey::Hmac {
        api_key: &key.api_key,
        secret: key.secret.as_bytes(),
    };
    let method: http::Method = method.parse().expect("method");
    let cr = sign_request(kind, &ck, method, path, params, freshness, json_body)
        .expect("policy sign_request");
    from_client_request(&cr)
}

/// A [`Req`] with the method, target, headers and body of a policy `ClientRequest`.
pub fn from_client_request(cr: &keyguard_policy::dialect::ClientRequest) -> Req {
    let mut r = Req::new(cr.method.as_str(), &cr.path_and_query);
    for (n, v) in &cr.headers {
        r = r.header(n, v);
    }
    r.body(&cr.body)
}

/// Zaif `tapi` requests.
pub mod zaif {
    use super::*;

    pub const PATH: &str = "/tapi";

    /// A form body `method=M&nonce=N&params...` (for hand-made variants).
    pub fn body(method: &str, nonce: &str, params: &[(&str, &str)]) -> String {
        let mut all = vec![("method", method), ("nonce", nonce)];
        all.extend_from_slice(params);
        form(&all)
    }

    /// `POST /tapi` with exactly `body`, signed by the independent signer.
    pub fn signed(key: &TestKey, body: &str) -> Req {
        Req::new("POST", PATH)
            .header("Content-Type", "application/x-www-form-urlencoded")
            .header("Key", &key.api_key)
            .header("Sign", sign::zaif(&key.secret, body.as_bytes()))
            .body(body)
    }

    /// A fresh call of `method` with `params`, signed by the policy signer.
    pub fn call(key: &TestKey, method: &str, params: &[(&str, &str)]) -> Req {
        let mut all = vec![("method", method)];
        all.extend_from_slice(params);
        policy_signed(
            Dialect::Zaif,
            key,
            "POST",
            PATH,
            &all,
            &next_nonce().to_string(),
            false,
        )
    }

    pub fn read(key: &TestKey) -> Req {
        call(key, "get_info2", &[])
    }

    pub fn trade(key: &TestKey) -> Req {
        call(
            key,
            "trade",
            &[
                ("currency_pair", "btc_jpy"),
                ("action", "bid"),
                ("price", "5000000"),
                ("amount", "0.01"),
            ],
        )
    }

    pub fn withdraw(key: &TestKey, address: &str) -> Req {
        call(
            key,
            "withdraw",
            &[
                ("currency", "btc"),
                ("address", address),
                ("amount", "0.001"),
            ],
        )
    }
}

/// Binance requests.
pub mod binance {
    use super::*;

    pub const READ_PATH: &str = "/api/v3/account";
    pub const TRADE_PATH: &str = "/api/v3/order";
    pub const WITHDRAW_PATH: &str = "/sapi/v1/capital/withdraw/apply";

    /// A signed request from the policy signer: query for GET/DELETE, form body otherwise.
    pub fn call(key: &TestKey, method: &str, path: &str, params: &[(&str, &str)], ts: u64) -> Req {
        policy_signed(
            Dialect::Binance,
            key,
            method,
            path,
            params,
            &ts.to_string(),
            false,
        )
    }

    /// `method target` with the API key header and nothing else, for hand-made requests
    /// that carry their signature (or none) in `target` or a body added later.
    pub fn keyed(key: &TestKey, method: &str, target: &str) -> Req {
        Req::new(method, target).header("X-MBX-APIKEY", &key.api_key)
    }

    /// `method path?query&signature=…` (over `query`, independent signer) with the key
    /// header and no body.
    pub fn signed_in_query(key: &TestKey, method: &str, path: &str, query: &str) -> Req {
        keyed(
            key,
            method,
            &format!("{path}?{}", sign_query(key, query, "")),
        )
    }

    /// A POST of the form `body` to `path?query`, with `&signature=` over `query ‖ body`
    /// appended to the body (independent signer).
    pub fn signed_split(key: &TestKey, path: &str, query: &str, body: &str) -> Req {
        let sig = sign::binance(&key.secret, query, body);
        keyed(key, "POST", &format!("{path}?{query}"))
            .header("Content-Type", "application/x-www-form-urlencoded")
            .body(format!("{body}&signature={sig}"))
    }

    /// `query` with `&signature=` over `query ‖ body` appended (independent signer).
    pub fn sign_query(key: &TestKey, query: &str, body: &str) -> String {
        format!(
            "{query}&signature={}",
            sign::binance(&key.secret, query, body)
        )
    }

    pub fn read(key: &TestKey) -> Req {
        read_at(key, &[], now_ms())
    }

    /// A read (`GET` [`READ_PATH`]) with `params` and the timestamp `ts`.
    pub fn read_at(key: &TestKey, params: &[(&str, &str)], ts: u64) -> Req {
        call(key, "GET", READ_PATH, params, ts)
    }

    pub fn trade(key: &TestKey) -> Req {
        call(
            key,
            "POST",
            TRADE_PATH,
            &[
                ("symbol", "BTCUSDT"),
                ("side", "BUY"),
                ("type", "LIMIT"),
                ("timeInForce", "GTC"),
                ("quantity", "0.01"),
                ("price", "30000"),
            ],
            now_ms(),
        )
    }

    pub fn withdraw(key: &TestKey, address: &str) -> Req {
        call(
            key,
            "POST",
            WITHDRAW_PATH,
            &[("coin", "BTC"), ("address", address), ("amount", "0.001")],
            now_ms(),
        )
    }
}

/// Kraken requests.
pub mod kraken {
    use super::*;

    pub const READ_PATH: &str = "/0/private/Balance";
    pub const TRADE_PATH: &str = "/0/private/AddOrder";
    pub const WITHDRAW_PATH: &str = "/0/private/Withdraw";

    /// A POST of exactly `body`, signed over `nonce` by the independent signer (no
    /// Content-Type set).
    pub fn signed_raw(key: &TestKey, path: &str, nonce: &str, body: &[u8]) -> Req {
        Req::new("POST", path)
            .header("API-Key", &key.api_key)
            .header("API-Sign", sign::kraken(&key.secret, path, nonce, body))
            .body(body)
    }

    /// A form POST with exactly `body`, signed over `nonce` by the independent signer.
    pub fn signed_form(key: &TestKey, path: &str, nonce: &str, body: &str) -> Req {
        signed_raw(key, path, nonce, body.as_bytes())
            .header("Content-Type", "application/x-www-form-urlencoded")
    }

    /// A JSON POST with exactly `body`, signed over `nonce` by the independent signer.
    pub fn signed_json(key: &TestKey, path: &str, nonce: &str, body: &str) -> Req {
        signed_raw(key, path, nonce, body.as_bytes()).header("Content-Type", "application/json")
    }

    /// A fresh call, signed by the policy signer (form body, or JSON with `json`).
    pub fn call_with(key: &TestKey, path: &str, params: &[(&str, &str)], json: bool) -> Req {
        policy_signed(
            Dialect::Kraken,
            key,
            "POST",
            path,
            params,
            &next_nonce().to_string(),
            json,
        )
    }

    pub fn call(key: &TestKey, path: &str, params: &[(&str, &str)]) -> Req {
        call_with(key, path, params, false)
    }

    pub fn read(key: &TestKey) -> Req {
        call(key, READ_PATH, &[])
    }

    pub const TRADE_PARAMS: &[(&str, &str)] = &[
        ("ordertype", "limit"),
        ("type", "buy"),
        ("volume", "1.25"),
        ("pair", "XBTUSD"),
        ("price", "37500"),
    ];

    pub fn trade(key: &TestKey) -> Req {
        call(key, TRADE_PATH, TRADE_PARAMS)
    }

    pub fn withdraw(key: &TestKey, address: &str) -> Req {
        call(
            key,
            WITHDRAW_PATH,
            &[
                ("asset", "XBT"),
                ("key", "test-wallet"),
                ("amount", "0.001"),
                ("address", address),
            ],
        )
    }
}

/// A read request for `key` in `dialect`.
pub fn read_req(dialect: Dialect, key: &TestKey) -> Req {
    match dialect {
        Dialect::Zaif => zaif::read(key),
        Dialect::Binance => binance::read(key),
        Dialect::Kraken => kraken::read(key),
    }
}

pub fn trade_req(dialect: Dialect, key: &TestKey) -> Req {
    match dialect {
        Dialect::Zaif => zaif::trade(key),
        Dialect::Binance => binance::trade(key),
        Dialect::Kraken => kraken::trade(key),
    }
}

pub fn withdraw_req(dialect: Dialect, key: &TestKey, address: &str) -> Req {
    match dialect {
        Dialect::Zaif => zaif::withdraw(key, address),
        Dialect::Binance => binance::withdraw(key, address),
        Dialect::Kraken => kraken::withdraw(key, address),
    }
}

// ---------------------------------------------------------------------------------------
// Assertion
// ---------------------------------------------------------------------------------------

/// base64url (no padding) SHA-256.
pub fn sha256_b64url(data: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(ring::digest::digest(&ring::digest::SHA256, data))
}

/// Verifies the `X-Keyguard-Assertion` the upstream received with `jwks` (the key its
/// header's `kid` names, under the algorithm that key declares), checks it is bound to the
/// forwarded method, path and body, and returns its claims.
#[track_caller]
pub fn verify_assertion(jwks: &str, rec: &Recorded) -> Value {
    use jsonwebtoken::jwk::JwkSet;
    use jsonwebtoken::{decode, decode_header, DecodingKey, Validation};
    let all = rec.header_all("x-keyguard-assertion");
    assert_eq!(all.len(), 1, "exactly one assertion upstream, got {all:?}");
    let token = &all[0];
    let set: JwkSet = serde_json::from_str(jwks).expect("assertion-key prints a JWKS");
    let header = decode_header(token).expect("a JWT header");
    let jwk = set
        .find(header.kid.as_deref().expect("the header names its key"))
        .unwrap_or_else(|| panic!("no key {:?} in {jwks}", header.kid));
    assert_eq!(
        jwk.common.key_algorithm.map(|a| format!("{a:?}")),
        Some(format!("{:?}", header.alg)),
        "the token's alg is the key's"
    );
    let key = DecodingKey::from_jwk(jwk).expect("a usable JWK");
    let mut v = Validation::new(header.alg);
    v.set_issuer(&["keyguard"]);
    v.set_required_spec_claims(&["exp", "iss", "sub"]);
    let data = decode::<Value>(token, &key, &v)
        .unwrap_or_else(|e| panic!("assertion does not verify: {e}: {token}"));
    let c = data.claims;
    assert_eq!(c["iss"], "keyguard");
    assert_eq!(c["mth"], rec.method.as_str(), "mth: {c}");
    assert_eq!(c["pth"], rec.path(), "pth: {c}");
    assert_eq!(
        c["bsh"],
        sha256_b64url(&rec.body),
        "bsh is the forwarded body's hash: {c}"
    );
    if let Some(q) = rec.query() {
        assert_eq!(c["qsh"], sha256_b64url(q.as_bytes()), "qsh: {c}");
    }
    let (iat, exp) = (c["iat"].as_u64(), c["exp"].as_u64());
    assert!(
        matches!((iat, exp), (Some(i), Some(e)) if e > i && e - i <= 30),
        "exp must be within 30 s of iat: {c}"
    );
    assert!(c["jti"].as_str().is_some_and(|j| !j.is_empty()), "jti: {c}");
    c
}

/// Checks a forwarded request: auth headers stripped, one valid assertion for `key`
/// and `action` from [`ALLOWED_IP`]. Returns the claims.
#[track_caller]
pub fn check_forwarded(
    dialect: Dialect,
    jwks: &str,
    rec: &Recorded,
    key: &TestKey,
    action: &str,
) -> Value {
    for h in client_auth_headers(dialect) {
        assert!(
            !rec.has_header(h),
            "client auth header {h} forwarded: {rec:#?}"
        );
    }
    let c = verify_assertion(jwks, rec);
    assert_eq!(c["sub"], key.account.as_str(), "sub: {c}");
    assert_eq!(c["kid"], key.key_id.as_str(), "kid: {c}");
    assert_eq!(c["act"], action, "act: {c}");
    assert_eq!(c["cip"], ALLOWED_IP.to_string(), "cip: {c}");
    c
}

/// The headers carrying client credentials in `dialect`.
pub fn client_auth_headers(dialect: Dialect) -> &'static [&'static str] {
    match dialect {
        Dialect::Zaif => &["key", "sign"],
        Dialect::Binance => &["x-mbx-apikey"],
        Dialect::Kraken => &["api-key", "api-sign"],
    }
}

/// Polls `f` until it returns true or `timeout` passes.
pub async fn eventually<F, Fut>(timeout: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if f().await {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
