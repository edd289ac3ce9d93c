//! End to end with a real client: unmodified ccxt → the `keyguard` gateway → the mock
//! exchange, once per dialect.
//!
//! The test starts the mock (`keyguard-loadtest upstream`) and the gateway on loopback,
//! creates two keys with the gateway's CLI and runs `tests/ccxt/e2e.py`, which trades,
//! withdraws and gets denied through ccxt from source addresses 127.0.0.2 and 127.0.0.3.
//! The script checks what ccxt saw; this file then checks what the exchange saw: the
//! mock's ledger must hold exactly the allowed requests, each stamped with the key,
//! account and client IP the gateway asserted, and the mock must have refused nothing
//! (every forwarded request carried a valid assertion).
//!
//! Requirements: `python3` (or `$KEYGUARD_E2E_PYTHON`) with ccxt 4.5.90, installed with
//! pip when missing (the test fails, never skips, when it cannot be had), and the
//! `keyguard` binary next to this crate's, built here when missing or older than the
//! gateway's sources.

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use keyguard_loadtest::harness::{self, workspace_root, ChildGuard, Output};
use keyguard_loadtest::{Ledger, LedgerEntry, Stats};
use keyguard_policy::DialectKind;
use serde_json::json;

/// The account both test keys belong to.
const ACCOUNT: &str = "e2e-trader";
/// The source address both keys are allowlisted for.
const ALLOWED_IP: &str = "127.0.0.2";
/// A loopback address outside every allowlist.
const OTHER_IP: &str = "127.0.0.3";
/// The one withdrawal destination the full key may use.
const WITHDRAW_ADDRESS: &str = "bc1qkeyguarde2eallowlisteddestination7x";
/// The ccxt version the dialects were written against.
const CCXT_VERSION: &str = "4.5.90";

const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(300);
const BUILD_TIMEOUT: Duration = Duration::from_secs(1200);

#[test]
fn ccxt_zaif_through_the_gateway() {
    run_dialect(&ZAIF);
}

#[test]
fn ccxt_binance_through_the_gateway() {
    run_dialect(&BINANCE);
}

#[test]
fn ccxt_kraken_through_the_gateway() {
    run_dialect(&KRAKEN);
}

/// Issue 10 item 9: ccxt's kraken `withdraw()` names the destination by its withdrawal
/// key and sends no address when given none. The key allows `XXBT:key=keyguard-e2e`;
/// a withdrawal to another withdrawal key is refused with `address_not_allowed`.
#[test]
fn ccxt_kraken_withdraws_by_withdrawal_key() {
    run_dialect_with(&KRAKEN, WithdrawBy::KrakenKey);
}

#[test]
fn ccxt_coincheck_through_the_gateway() {
    run_dialect(&COINCHECK);
}

/// Which key a ledger line was executed for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum KeyName {
    Full,
    ReadOnly,
}

/// What one dialect's run must leave in the ledger.
struct Expectation {
    dialect: &'static str,
    /// The asset as the exchange names it in the withdraw request (for `--withdraw-address`).
    withdraw_asset: &'static str,
    /// (key, method, endpoint, action) → how many times; nothing else may appear.
    executed: &'static [(KeyName, &'static str, &'static str, &'static str, usize)],
}

use KeyName::{Full, ReadOnly};

// Zaif's private API is one path; the endpoint is "/tapi <method field>".
const ZAIF: Expectation = Expectation {
    dialect: "zaif",
    withdraw_asset: "btc",
    executed: &[
        (Full, "POST", "/tapi get_info", "read", 1),
        (Full, "POST", "/tapi trade", "trade", 1),
        (Full, "POST", "/tapi active_orders", "read", 1),
        (Full, "POST", "/tapi cancel_order", "trade", 1),
        (Full, "POST", "/tapi withdraw", "withdraw", 1),
        (ReadOnly, "POST", "/tapi get_info", "read", 1),
        (ReadOnly, "POST", "/tapi active_orders", "read", 1),
    ],
};

// ccxt loads Binance's coin list (a signed read) with the markets whenever it has a key.
const BINANCE: Expectation = Expectation {
    dialect: "binance",
    withdraw_asset: "BTC",
    executed: &[
        (Full, "GET", "/sapi/v1/capital/config/getall", "read", 1),
        (Full, "GET", "/api/v3/account", "read", 1),
        (Full, "POST", "/api/v3/order", "trade", 1),
        (Full, "GET", "/api/v3/openOrders", "read", 1),
        (Full, "DELETE", "/api/v3/order", "trade", 1),
        (
            Full,
            "POST",
            "/sapi/v1/capital/withdraw/apply",
            "withdraw",
            1,
        ),
        (ReadOnly, "GET", "/sapi/v1/capital/config/getall", "read", 1),
        (ReadOnly, "GET", "/api/v3/account", "read", 1),
        (ReadOnly, "GET", "/api/v3/openOrders", "read", 1),
    ],
};

const KRAKEN: Expectation = Expectation {
    dialect: "kraken",
    withdraw_asset: "XXBT",
    executed: &[
        (Full, "POST", "/0/private/BalanceEx", "read", 1),
        (Full, "POST", "/0/private/AddOrder", "trade", 1),
        (Full, "POST", "/0/private/OpenOrders", "read", 1),
        (Full, "POST", "/0/private/CancelOrder", "trade", 1),
        (Full, "POST", "/0/private/Withdraw", "withdraw", 1),
        (ReadOnly, "POST", "/0/private/BalanceEx", "read", 1),
        (ReadOnly, "POST", "/0/private/OpenOrders", "read", 1),
    ],
};

// ccxt's coincheck has no withdraw(): the script calls `private_post_send_money`. Order
// ids are in the cancel path; the ledger check names the endpoint with `{id}`.
const COINCHECK: Expectation = Expectation {
    dialect: "coincheck",
    withdraw_asset: "btc",
    executed: &[
        (Full, "GET", "/api/accounts/balance", "read", 1),
        (Full, "POST", "/api/exchange/orders", "trade", 1),
        (Full, "GET", "/api/exchange/orders/opens", "read", 1),
        (Full, "DELETE", "/api/exchange/orders/{id}", "trade", 1),
        (Full, "POST", "/api/send_money", "withdraw", 1),
        (ReadOnly, "GET", "/api/accounts/balance", "read", 1),
        (ReadOnly, "GET", "/api/exchange/orders/opens", "read", 1),
    ],
};

/// A key as `keyguard keys create --json` prints it.
#[derive(Debug, Clone, serde::Deserialize)]
struct CreatedKey {
    key_id: String,
    api_key: String,
    secret: String,
}

/// How the full key's withdrawal names its destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WithdrawBy {
    /// The allowlisted address, as every dialect sends it.
    Address,
    /// Kraken's withdrawal key alone (`key=keyguard-e2e`), no address.
    KrakenKey,
}

/// The Kraken withdrawal key the full key may withdraw to in [`WithdrawBy::KrakenKey`].
const KRAKEN_WITHDRAW_KEY: &str = "keyguard-e2e";

fn run_dialect(expect: &Expectation) {
    run_dialect_with(expect, WithdrawBy::Address)
}

fn run_dialect_with(expect: &Expectation, by: WithdrawBy) {
    let tools = tools();
    let dir = tempfile::tempdir().expect("tempdir");
    let data_dir = dir.path().join("data");
    fs::create_dir_all(&data_dir).expect("data dir");
    let config = dir.path().join("keyguard.toml");
    let ledger_path = dir.path().join("ledger.jsonl");
    let kg = Keyguard {
        bin: &tools.keyguard,
        config: &config,
        data_dir: &data_dir,
    };

    // The assertion key lives in the data dir and the mock needs its public half before
    // the gateway can name the mock as upstream: this first config only serves the CLI;
    // start_gateway rewrites it with the real addresses.
    write_config(
        expect.dialect,
        &config,
        &data_dir,
        "127.0.0.1:9".parse().expect("addr"),
        "http://127.0.0.1:9",
    );
    let jwks = kg.run(&["assertion-key"]);
    assert!(
        jwks.contains("\"keys\""),
        "`keyguard assertion-key` printed no JWKS:\n{jwks}"
    );
    let pem_path = dir.path().join("assertion.jwks");
    fs::write(&pem_path, &jwks).expect("write jwks");

    let (mock, mock_addr) = start_mock(expect.dialect, &pem_path, &ledger_path, dir.path());
    let upstream = format!("http://{mock_addr}");

    let withdraw_spec = match by {
        WithdrawBy::Address => format!("{}:{WITHDRAW_ADDRESS}", expect.withdraw_asset),
        WithdrawBy::KrakenKey => format!("{}:key={KRAKEN_WITHDRAW_KEY}", expect.withdraw_asset),
    };
    let full: CreatedKey = kg.create_key(&[
        "--scopes",
        "read,trade,withdraw",
        "--allow-ip",
        &format!("{ALLOWED_IP}/32"),
        "--withdraw-address",
        &withdraw_spec,
        "--label",
        "e2e full",
    ]);
    let read: CreatedKey = kg.create_key(&[
        "--scopes",
        "read",
        "--allow-ip",
        ALLOWED_IP,
        "--label",
        "e2e read-only",
    ]);

    let (gateway, gateway_addr) = start_gateway(&kg, expect.dialect, &upstream, dir.path());

    let script_config = json!({
        "dialect": expect.dialect,
        "gateway": format!("http://{gateway_addr}"),
        "allowed_ip": ALLOWED_IP,
        "other_ip": OTHER_IP,
        "full": {"api_key": full.api_key, "secret": full.secret},
        "read": {"api_key": read.api_key, "secret": read.secret},
        "withdraw": match by {
            WithdrawBy::Address => json!({"code": "BTC", "amount": 0.01, "address": WITHDRAW_ADDRESS}),
            WithdrawBy::KrakenKey => json!({
                "code": "BTC",
                "amount": 0.01,
                "address": null,
                "params": {"key": KRAKEN_WITHDRAW_KEY},
                "denied_params": {"key": "attacker-wallet"},
            }),
        },
    });
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/ccxt/e2e.py");
    let output = run_with_timeout(
        Command::new(&tools.python)
            .arg(&script)
            .arg(script_config.to_string()),
        SCRIPT_TIMEOUT,
    );
    if !output.status.success() {
        panic!(
            "{} e2e.py failed ({}):\n{}\n{}\n--- gateway log ---\n{}\n--- mock log ---\n{}",
            expect.dialect,
            output.status,
            output.stdout,
            output.stderr,
            gateway.log(),
            mock.log()
        );
    }

    println!("{}", output.stdout);
    let destination = match by {
        WithdrawBy::Address => WITHDRAW_ADDRESS.to_owned(),
        WithdrawBy::KrakenKey => format!("key={KRAKEN_WITHDRAW_KEY}"),
    };
    check_ledger(expect, &ledger_path, &full, &read, &destination);

    let stats = mock_stats(mock_addr);
    assert_eq!(
        stats.refused,
        0,
        "the mock refused {} forwarded request(s): the gateway sent a missing or invalid \
         assertion\n--- mock log ---\n{}",
        stats.refused,
        mock.log()
    );
    drop(gateway);
    drop(mock);
}

/// Compares the ledger with the expectation: same requests, same counts, right identity.
/// `destination` is text every forwarded withdrawal must contain (the allowed address,
/// or `key=<withdrawal key>`).
fn check_ledger(
    expect: &Expectation,
    ledger: &Path,
    full: &CreatedKey,
    read: &CreatedKey,
    destination: &str,
) {
    let entries = Ledger::read_all(ledger).expect("read ledger");
    let mut actual: BTreeMap<(KeyName, String, String, String), usize> = BTreeMap::new();
    for entry in &entries {
        let key = if entry.key_id == full.key_id {
            Full
        } else if entry.key_id == read.key_id {
            ReadOnly
        } else {
            panic!("ledger entry for an unknown key id: {entry:?}");
        };
        assert_eq!(entry.account, ACCOUNT, "wrong account asserted: {entry:?}");
        assert_eq!(
            entry.client_ip, ALLOWED_IP,
            "wrong client IP asserted (denied IPs must never reach the exchange): {entry:?}"
        );
        assert!(!entry.request_id.is_empty(), "no request id: {entry:?}");
        if entry.action == "withdraw" {
            let text = format!("{} {}", entry.query, entry.body);
            assert!(
                text.contains(destination),
                "withdrawal to a destination other than the allowlisted {destination}: {entry:?}"
            );
        }
        *actual
            .entry((
                key,
                entry.method.clone(),
                endpoint(expect.dialect, entry),
                entry.action.clone(),
            ))
            .or_default() += 1;
    }
    let expected: BTreeMap<(KeyName, String, String, String), usize> = expect
        .executed
        .iter()
        .map(|(key, method, endpoint, action, n)| {
            (
                (
                    *key,
                    (*method).to_owned(),
                    (*endpoint).to_owned(),
                    (*action).to_owned(),
                ),
                *n,
            )
        })
        .collect();
    assert_eq!(
        actual,
        expected,
        "{}: the requests that reached the exchange differ from the allowed ones \
         (left: ledger, right: expected)\nledger:\n{}",
        expect.dialect,
        entries
            .iter()
            .map(|e| format!("  {e:?}"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// The endpoint a ledger line hit: the path, plus Zaif's `method` form field; a
/// Coincheck order id in the path is written `{id}`.
fn endpoint(dialect: &str, entry: &LedgerEntry) -> String {
    if dialect == "coincheck" {
        if let Some(id) = entry.path.strip_prefix("/api/exchange/orders/") {
            if !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit()) {
                return "/api/exchange/orders/{id}".to_owned();
            }
        }
    }
    if dialect != "zaif" {
        return entry.path.clone();
    }
    let method = entry
        .body
        .split('&')
        .find_map(|pair| pair.strip_prefix("method="))
        .unwrap_or("?");
    format!("{} {method}", entry.path)
}

/// The `keyguard` binary with one config and data dir.
struct Keyguard<'a> {
    bin: &'a Path,
    config: &'a Path,
    data_dir: &'a Path,
}

impl Keyguard<'_> {
    /// `keyguard ARGS... --config F --data-dir D` (subcommand options may follow the
    /// subcommand's other arguments).
    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(self.bin);
        cmd.args(args)
            .arg("--config")
            .arg(self.config)
            .arg("--data-dir")
            .arg(self.data_dir);
        cmd
    }

    /// Runs a CLI subcommand to completion and returns its stdout.
    fn run(&self, args: &[&str]) -> String {
        let out = run_with_timeout(&mut self.command(args), COMMAND_TIMEOUT);
        assert!(
            out.status.success(),
            "keyguard {args:?} failed ({}):\n{}\n{}",
            out.status,
            out.stdout,
            out.stderr
        );
        out.stdout
    }

    fn create_key(&self, extra: &[&str]) -> CreatedKey {
        let mut args = vec!["keys", "create", "--account", ACCOUNT, "--json"];
        args.extend_from_slice(extra);
        let stdout = self.run(&args);
        serde_json::from_str(stdout.trim())
            .unwrap_or_else(|e| panic!("keys create --json printed no key ({e}):\n{stdout}"))
    }
}

/// Copies the dialect's example config with this run's addresses, and with the address
/// cool-down off so the freshly allowlisted destination is usable at once.
fn write_config(dialect: &str, path: &Path, data_dir: &Path, listen: SocketAddr, upstream: &str) {
    let example = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../config/examples")
        .join(format!("{dialect}.toml"));
    let text = fs::read_to_string(&example)
        .unwrap_or_else(|e| panic!("reading example config {}: {e}", example.display()));
    let mut doc: toml::Table = text
        .parse()
        .unwrap_or_else(|e| panic!("{} is not TOML: {e}", example.display()));
    let server = table(&mut doc, "server");
    server.insert("listen".into(), listen.to_string().into());
    server.insert("upstream".into(), upstream.into());
    server.insert("data_dir".into(), data_dir.display().to_string().into());
    table(&mut doc, "withdraw").insert("address_cooldown_secs".into(), 0.into());
    if dialect == "coincheck" {
        // Coincheck signs the full URL: the gateway must know the one ccxt calls.
        table(&mut doc, "dialect")
            .insert("public_base_url".into(), format!("http://{listen}").into());
    }
    fs::write(path, toml::to_string(&doc).expect("serialize config")).expect("write config");
}

fn table<'a>(doc: &'a mut toml::Table, name: &str) -> &'a mut toml::Table {
    let value = doc
        .entry(name.to_owned())
        .or_insert_with(|| toml::Value::Table(toml::Table::new()));
    match value {
        toml::Value::Table(t) => t,
        other => panic!("[{name}] is not a table in the example config: {other:?}"),
    }
}

/// Starts the mock (the same helper `keyguard-loadtest` uses) with the gateway's
/// assertion key and a ledger.
fn start_mock(dialect: &str, pem: &Path, ledger: &Path, dir: &Path) -> (ChildGuard, SocketAddr) {
    let kind: DialectKind = dialect.parse().expect("dialect name");
    harness::start_mock(
        Path::new(env!("CARGO_BIN_EXE_keyguard-loadtest")),
        kind,
        Some(pem),
        Some(ledger),
        dir,
        "mock",
    )
    .unwrap_or_else(|e| panic!("{e:#}"))
}

/// Starts `keyguard serve` on a free port and waits until it accepts connections. The
/// port is only known to be free when picked, so a gateway that exits at once (lost the
/// port to a concurrent test) is retried on another one.
fn start_gateway(
    kg: &Keyguard<'_>,
    dialect: &str,
    upstream: &str,
    dir: &Path,
) -> (ChildGuard, SocketAddr) {
    let mut last_log = String::new();
    for _attempt in 0..3 {
        let listen = harness::free_addr().expect("free port");
        write_config(dialect, kg.config, kg.data_dir, listen, upstream);
        let mut cmd = kg.command(&["serve"]);
        cmd.arg("--listen")
            .arg(listen.to_string())
            .arg("--upstream")
            .arg(upstream)
            .stdout(Stdio::null());
        let mut gateway = ChildGuard::spawn("gateway", &mut cmd, dir).expect("spawn gateway");
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            if let Some(status) = gateway.exited() {
                last_log = format!("keyguard serve exited ({status}):\n{}", gateway.log());
                break;
            }
            if TcpStream::connect_timeout(&listen, Duration::from_millis(200)).is_ok() {
                return (gateway, listen);
            }
            assert!(
                Instant::now() < deadline,
                "keyguard serve did not listen on {listen} within {STARTUP_TIMEOUT:?}:\n{}",
                gateway.log()
            );
            thread::sleep(Duration::from_millis(50));
        }
    }
    panic!("{last_log}");
}

/// The mock's counters, over a plain HTTP/1.1 request.
fn mock_stats(addr: SocketAddr) -> Stats {
    let mut stream = TcpStream::connect_timeout(&addr, COMMAND_TIMEOUT).expect("connect to mock");
    stream
        .set_read_timeout(Some(COMMAND_TIMEOUT))
        .expect("timeout");
    write!(
        stream,
        "GET {} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n",
        keyguard_loadtest::mock::STATS_PATH
    )
    .expect("send");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read stats");
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body)
        .unwrap_or_else(|| panic!("no HTTP body in {response:?}"));
    serde_json::from_str(body).unwrap_or_else(|e| panic!("stats body {body:?}: {e}"))
}

/// A port that was free a moment ago. The gateway binds it right after; a collision
/// shows up as a clear startup failure, not a wrong result.
/// [`harness::run_with_timeout`], failing the test on a timeout or spawn error.
fn run_with_timeout(cmd: &mut Command, timeout: Duration) -> Output {
    harness::run_with_timeout(cmd, timeout).unwrap_or_else(|e| panic!("{e:#}"))
}

/// What every dialect's run needs, prepared once per test process.
struct Tools {
    keyguard: PathBuf,
    python: PathBuf,
}

fn tools() -> &'static Tools {
    static TOOLS: OnceLock<Result<Tools, String>> = OnceLock::new();
    match TOOLS.get_or_init(|| {
        Ok(Tools {
            keyguard: keyguard_binary()?,
            python: python_with_ccxt()?,
        })
    }) {
        Ok(tools) => tools,
        Err(e) => panic!("{e}"),
    }
}

/// The `keyguard` binary next to this crate's binary, built when missing or stale.
fn keyguard_binary() -> Result<PathBuf, String> {
    let ours = Path::new(env!("CARGO_BIN_EXE_keyguard-loadtest"));
    let dir = ours.parent().ok_or("keyguard-loadtest has no directory")?;
    let bin = dir.join(format!("keyguard{}", std::env::consts::EXE_SUFFIX));
    let built = fs::metadata(&bin).and_then(|m| m.modified()).ok();
    // A gateway binary older than its sources would test yesterday's gateway.
    let root = workspace_root();
    let newest_source = ["gateway/src", "config/src", "policy/src", "Cargo.lock"]
        .iter()
        .filter_map(|p| newest_mtime(&root.join(p)))
        .max();
    let fresh = matches!((built, newest_source), (Some(b), Some(s)) if b >= s)
        || (built.is_some() && newest_source.is_none());
    if !fresh {
        eprintln!(
            "building keyguard ({})",
            if built.is_some() { "stale" } else { "missing" }
        );
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
        let out = run_with_timeout(
            Command::new(cargo)
                .args(["build", "-p", "keyguard", "--bin", "keyguard"])
                .current_dir(&root),
            BUILD_TIMEOUT,
        );
        if !out.status.success() {
            return Err(format!(
                "`cargo build -p keyguard --bin keyguard` failed ({}):\n{}",
                out.status, out.stderr
            ));
        }
    }
    if bin.is_file() {
        Ok(bin)
    } else {
        Err(format!("no keyguard binary at {}", bin.display()))
    }
}

fn newest_mtime(path: &Path) -> Option<SystemTime> {
    let meta = fs::metadata(path).ok()?;
    if meta.is_file() {
        return meta.modified().ok();
    }
    fs::read_dir(path)
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|e| newest_mtime(&e.path()))
        .max()
}

/// `python3` able to `import ccxt`, installing ccxt with pip if needed.
fn python_with_ccxt() -> Result<PathBuf, String> {
    let python =
        PathBuf::from(std::env::var("KEYGUARD_E2E_PYTHON").unwrap_or_else(|_| "python3".into()));
    let probe = |python: &Path| {
        Command::new(python)
            .args(["-c", "import ccxt; print(ccxt.__version__)"])
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    };
    if let Some(version) = probe(&python) {
        if version != CCXT_VERSION {
            eprintln!(
                "note: ccxt {version} installed; the dialects were written against {CCXT_VERSION}"
            );
        }
        return Ok(python);
    }
    eprintln!("ccxt not importable; installing ccxt=={CCXT_VERSION} with pip");
    let out = run_with_timeout(
        Command::new(&python).args(["-m", "pip", "install", &format!("ccxt=={CCXT_VERSION}")]),
        BUILD_TIMEOUT,
    );
    match probe(&python) {
        Some(_) => Ok(python),
        None => Err(format!(
            "ccxt is not available to {} even after `pip install ccxt=={CCXT_VERSION}` \
             ({}):\n{}\n{}",
            python.display(),
            out.status,
            out.stdout,
            out.stderr
        )),
    }
}
