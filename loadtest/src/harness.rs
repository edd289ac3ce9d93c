//! Starting the real programs: the `keyguard` binary (CLI and `serve`), the mock exchange
//! (`keyguard-loadtest upstream`) and, for the bench, nginx. Every child is killed when
//! its guard drops, so a failed run never leaves a gateway behind.
//!
//! Ports are picked by binding `127.0.0.1:0` and releasing it; the mock prints the address
//! it bound, and a gateway that lost its port to someone else is retried on a new one.

use std::fs::{self, File};
use std::io::{BufRead as _, BufReader, Read as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context as _};
use keyguard_policy::DialectKind;

use crate::workload::KeyMaterial;

const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);
const BUILD_TIMEOUT: Duration = Duration::from_secs(1800);

/// The workspace this crate was built from (for example configs and `cargo build`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_owned)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// The binaries a self-contained run needs.
#[derive(Debug, Clone)]
pub struct Tools {
    /// `keyguard`.
    pub keyguard: PathBuf,
    /// `keyguard-loadtest` (for the mock exchange child).
    pub loadtest: PathBuf,
}

impl Tools {
    /// `keyguard` next to `loadtest` (the same cargo profile directory), built with cargo
    /// when it is missing or older than the gateway's sources.
    pub fn locate(loadtest: &Path) -> anyhow::Result<Tools> {
        let loadtest = loadtest.to_owned();
        let mut dir = loadtest
            .parent()
            .context("keyguard-loadtest has no directory")?
            .to_owned();
        // Test binaries live in target/<profile>/deps.
        if dir.file_name().is_some_and(|n| n == "deps") {
            dir.pop();
        }
        let keyguard = dir.join(format!("keyguard{}", std::env::consts::EXE_SUFFIX));
        ensure_built(&keyguard, &dir)?;
        Ok(Tools { keyguard, loadtest })
    }
}

fn ensure_built(bin: &Path, profile_dir: &Path) -> anyhow::Result<()> {
    let built = fs::metadata(bin).and_then(|m| m.modified()).ok();
    let root = workspace_root();
    let newest_source = ["gateway/src", "config/src", "policy/src", "Cargo.lock"]
        .iter()
        .filter_map(|p| newest_mtime(&root.join(p)))
        .max();
    let fresh = match (built, newest_source) {
        (Some(b), Some(s)) => b >= s,
        (Some(_), None) => true,
        (None, _) => false,
    };
    if fresh {
        return Ok(());
    }
    if newest_source.is_none() {
        bail!(
            "no keyguard binary at {} and no workspace to build it from",
            bin.display()
        );
    }
    let release = profile_dir.file_name().is_some_and(|n| n == "release");
    eprintln!(
        "building keyguard ({}, {} profile)",
        if built.is_some() { "stale" } else { "missing" },
        if release { "release" } else { "dev" }
    );
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "-p", "keyguard", "--bin", "keyguard"])
        .current_dir(&root);
    if release {
        cmd.arg("--release");
    }
    let out = run_with_timeout(&mut cmd, BUILD_TIMEOUT)?;
    if !out.status.success() {
        bail!(
            "`cargo build -p keyguard` failed ({}):\n{}",
            out.status,
            out.stderr
        );
    }
    if !bin.is_file() {
        bail!("cargo built keyguard, but not at {}", bin.display());
    }
    Ok(())
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

/// Output of a finished command.
#[derive(Debug)]
pub struct Output {
    /// Exit status.
    pub status: ExitStatus,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

/// Runs `cmd` to completion within `timeout`, killing it if it overruns.
pub fn run_with_timeout(cmd: &mut Command, timeout: Duration) -> anyhow::Result<Output> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {cmd:?}"))?;
    // Drain both pipes on threads: a child blocked on a full pipe would never exit.
    let drain = |pipe: Option<Box<dyn std::io::Read + Send>>| {
        thread::spawn(move || {
            let mut text = String::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_string(&mut text);
            }
            text
        })
    };
    let stdout = drain(child.stdout.take().map(|p| Box::new(p) as _));
    let stderr = drain(child.stderr.take().map(|p| Box::new(p) as _));
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "{cmd:?} did not finish within {timeout:?}:\n{}\n{}",
                stdout.join().unwrap_or_default(),
                stderr.join().unwrap_or_default()
            );
        }
        thread::sleep(Duration::from_millis(5));
    };
    Ok(Output {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    })
}

/// A child process killed (and reaped) when the guard drops.
#[derive(Debug)]
pub struct ChildGuard {
    child: Child,
    log: PathBuf,
}

impl ChildGuard {
    /// Starts `cmd` with stderr (and stdout unless the caller piped it) to `dir/name.log`.
    pub fn spawn(name: &str, cmd: &mut Command, dir: &Path) -> anyhow::Result<ChildGuard> {
        let log = dir.join(format!("{name}.log"));
        let file = File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let child = cmd
            .stdin(Stdio::null())
            .stderr(Stdio::from(file))
            .spawn()
            .with_context(|| format!("starting {name} ({cmd:?})"))?;
        Ok(ChildGuard { child, log })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The child's log so far (its last 20 000 bytes).
    pub fn log(&self) -> String {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let start = text.len().saturating_sub(20_000);
        let start = (start..text.len())
            .find(|i| text.is_char_boundary(*i))
            .unwrap_or(text.len());
        text[start..].to_owned()
    }

    /// The exit status if it has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Resident memory (VmRSS) in KiB, from /proc.
    pub fn rss_kib(&self) -> Option<u64> {
        rss_kib(self.pid())
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if self.exited().is_none() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// VmRSS of process `pid` in KiB (Linux).
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

/// CPU time (user + system) of process `pid`, with `children` also of its direct
/// children (nginx's workers), in microseconds, from /proc (clock ticks of 10 ms on Linux).
pub fn cpu_us(pid: u32, children: bool) -> u64 {
    const US_PER_TICK: u64 = 10_000;
    let ticks = |stat: &str| -> Option<(u32, u64)> {
        // Fields after the command name, which is in parentheses and may hold spaces.
        let rest = &stat[stat.rfind(')')? + 2..];
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ppid = f.get(1)?.parse().ok()?;
        let utime: u64 = f.get(11)?.parse().ok()?;
        let stime: u64 = f.get(12)?.parse().ok()?;
        Some((ppid, utime + stime))
    };
    let own = fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| ticks(&s))
        .map_or(0, |(_, t)| t);
    if !children {
        return own * US_PER_TICK;
    }
    let children: u64 = fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .filter_map(|e| fs::read_to_string(e.path().join("stat")).ok())
        .filter_map(|s| ticks(&s))
        .filter(|(ppid, _)| *ppid == pid)
        .map(|(_, t)| t)
        .sum();
    (own + children) * US_PER_TICK
}

/// A port that was free a moment ago.
pub fn free_addr() -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?)
}

/// What to provision.
#[derive(Debug, Clone, Default)]
pub struct KeySpec {
    /// Account.
    pub account: String,
    /// `read`, `read,trade`, `read,trade,withdraw`.
    pub scopes: &'static str,
    /// `--allow-ip` values.
    pub allow_ips: Vec<String>,
    /// `--withdraw-address ASSET:ADDR` values.
    pub withdraw_addresses: Vec<String>,
    /// Label.
    pub label: String,
    /// `--canary`: a key planted to be found, never to be used.
    pub canary: bool,
}

/// The `keyguard` CLI against one config and data dir.
#[derive(Debug, Clone)]
pub struct KeyguardCli {
    /// The binary.
    pub bin: PathBuf,
    /// `--config`.
    pub config: PathBuf,
    /// `--data-dir`.
    pub data_dir: PathBuf,
}

impl KeyguardCli {
    /// `keyguard ARGS... --config F --data-dir D`.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.bin);
        cmd.args(args)
            .arg("--config")
            .arg(&self.config)
            .arg("--data-dir")
            .arg(&self.data_dir)
            .env("RUST_LOG", "warn")
            .env("NO_COLOR", "1");
        cmd
    }

    /// Runs a subcommand to completion and returns its stdout.
    pub fn run(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = run_with_timeout(&mut self.command(args), COMMAND_TIMEOUT)?;
        if !out.status.success() {
            bail!(
                "keyguard {} failed ({}):\n{}{}",
                args.join(" "),
                out.status,
                out.stdout,
                out.stderr
            );
        }
        Ok(out.stdout)
    }

    /// `keyguard assertion-key`: the JWKS the exchange verifies assertions with.
    pub fn assertion_jwks(&self) -> anyhow::Result<String> {
        let jwks = self.run(&["assertion-key"])?;
        if !jwks.contains("\"keys\"") {
            bail!("`keyguard assertion-key` printed no JWKS:\n{jwks}");
        }
        Ok(jwks)
    }

    /// `keys create --json` for each spec, in order; `index` of each key is its position
    /// in the returned list.
    pub fn create_keys(&self, specs: &[KeySpec]) -> anyhow::Result<Vec<Arc<KeyMaterial>>> {
        let mut keys = Vec::with_capacity(specs.len());
        for (index, spec) in specs.iter().enumerate() {
            let mut args: Vec<&str> = vec![
                "keys",
                "create",
                "--account",
                &spec.account,
                "--scopes",
                spec.scopes,
                "--label",
                &spec.label,
                "--json",
            ];
            for ip in &spec.allow_ips {
                args.extend(["--allow-ip", ip]);
            }
            for a in &spec.withdraw_addresses {
                args.extend(["--withdraw-address", a]);
            }
            if spec.canary {
                args.push("--canary");
            }
            let stdout = self.run(&args)?;
            let line = stdout
                .lines()
                .find(|l| l.trim_start().starts_with('{'))
                .with_context(|| format!("keys create --json printed no JSON: {stdout}"))?;
            let v: serde_json::Value = serde_json::from_str(line)?;
            let field = |k: &str| -> anyhow::Result<String> {
                v[k].as_str()
                    .map(str::to_owned)
                    .with_context(|| format!("keys create --json: no {k} in {line}"))
            };
            keys.push(Arc::new(KeyMaterial::new(
                index,
                field("key_id")?,
                field("api_key")?,
                field("secret")?,
                spec.account.clone(),
            )));
        }
        Ok(keys)
    }
}

/// Writes the dialect's example config with this run's addresses, the withdrawal address
/// cool-down off (keys are created seconds before they are used), and `tweak` applied.
pub fn write_config(
    dialect: DialectKind,
    path: &Path,
    data_dir: &Path,
    listen: SocketAddr,
    upstream: &str,
    tweak: &dyn Fn(&mut toml::Table),
) -> anyhow::Result<()> {
    let example = workspace_root()
        .join("config/examples")
        .join(format!("{}.toml", dialect.as_str()));
    let text = fs::read_to_string(&example)
        .with_context(|| format!("reading example config {}", example.display()))?;
    let mut doc: toml::Table = text
        .parse()
        .with_context(|| format!("{} is not TOML", example.display()))?;
    set(&mut doc, "server.listen", listen.to_string());
    set(&mut doc, "server.upstream", upstream.to_owned());
    set(&mut doc, "server.data_dir", data_dir.display().to_string());
    set(&mut doc, "withdraw.address_cooldown_secs", 0);
    if dialect == DialectKind::Coincheck {
        // Coincheck signs the full URL: the gateway must know the one clients call.
        set(
            &mut doc,
            "dialect.public_base_url",
            format!("http://{listen}"),
        );
    }
    tweak(&mut doc);
    fs::write(path, toml::to_string(&doc)?)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// Sets `table.a.b.c = value`, creating the tables on the way.
pub fn set(table: &mut toml::Table, path: &str, value: impl Into<toml::Value>) {
    let mut parts: Vec<&str> = path.split('.').collect();
    let Some(last) = parts.pop() else { return };
    let mut t = table;
    for p in parts {
        let entry = t
            .entry(p.to_owned())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        if !entry.is_table() {
            *entry = toml::Value::Table(toml::Table::new());
        }
        t = entry.as_table_mut().expect("made a table above");
    }
    t.insert(last.to_owned(), value.into());
}

/// Starts the mock exchange and reads back the address it bound. With `bench`, it
/// executes every request without an assertion and keeps no ledger.
pub fn start_mock(
    loadtest: &Path,
    dialect: DialectKind,
    assertion_pem: Option<&Path>,
    ledger: Option<&Path>,
    dir: &Path,
    name: &str,
) -> anyhow::Result<(ChildGuard, SocketAddr)> {
    let mut cmd = Command::new(loadtest);
    cmd.args([
        "upstream",
        "--dialect",
        dialect.as_str(),
        "--listen",
        "127.0.0.1:0",
    ]);
    match (assertion_pem, ledger) {
        (Some(pem), Some(ledger)) => {
            cmd.arg("--assertion-key")
                .arg(pem)
                .arg("--ledger")
                .arg(ledger);
        }
        _ => {
            cmd.arg("--bench");
        }
    }
    cmd.stdout(Stdio::piped());
    let mut mock = ChildGuard::spawn(name, &mut cmd, dir)?;
    let stdout = mock.child.stdout.take().context("mock stdout")?;
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let line = rx
        .recv_timeout(STARTUP_TIMEOUT)
        .map_err(|_| anyhow::anyhow!("the mock printed no address:\n{}", mock.log()))?;
    let addr = line
        .rsplit(' ')
        .next()
        .and_then(|a| a.parse().ok())
        .with_context(|| format!("no address in the mock's first line: {line:?}"))?;
    Ok((mock, addr))
}

/// Starts `keyguard serve` (config from [`write_config`] plus `tweak`) and waits until it
/// accepts connections; retried on a new port if it lost its port.
pub fn start_gateway(
    cli: &KeyguardCli,
    dialect: DialectKind,
    upstream: &str,
    dir: &Path,
    tweak: &dyn Fn(&mut toml::Table),
) -> anyhow::Result<(ChildGuard, SocketAddr)> {
    let mut last_log = String::new();
    for attempt in 0..4 {
        let listen = free_addr()?;
        write_config(dialect, &cli.config, &cli.data_dir, listen, upstream, tweak)?;
        let mut cmd = cli.command(&["serve"]);
        cmd.arg("--listen")
            .arg(listen.to_string())
            .stdout(Stdio::null());
        let mut gateway = ChildGuard::spawn(&format!("gateway-{attempt}"), &mut cmd, dir)?;
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            if let Some(status) = gateway.exited() {
                last_log = format!("keyguard serve exited ({status}):\n{}", gateway.log());
                break;
            }
            if TcpStream::connect_timeout(&listen, Duration::from_millis(200)).is_ok() {
                return Ok((gateway, listen));
            }
            if Instant::now() > deadline {
                bail!(
                    "keyguard serve did not listen on {listen} within {STARTUP_TIMEOUT:?}:\n{}",
                    gateway.log()
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
        // Only a lost port is worth another try.
        if !(last_log.contains("in use") || last_log.contains("bind")) {
            break;
        }
    }
    bail!("{last_log}")
}

/// A self-contained test bed: the mock exchange with its ledger and the gateway in front
/// of it, in a temporary directory (kept with `keep`).
pub struct Stack {
    /// The temporary directory (config, data dir, ledger, logs).
    pub dir: tempfile::TempDir,
    /// The CLI for this stack's config and data dir.
    pub cli: KeyguardCli,
    /// The mock exchange.
    pub mock: ChildGuard,
    /// Its address.
    pub mock_addr: SocketAddr,
    /// The ledger file.
    pub ledger: PathBuf,
    /// The gateway (started by [`Stack::start_gateway`]).
    pub gateway: Option<(ChildGuard, SocketAddr)>,
    /// The dialect.
    pub dialect: DialectKind,
}

impl Stack {
    /// Creates the data dir and assertion key, and starts the mock exchange. Keys are
    /// provisioned next ([`KeyguardCli::create_keys`]), then the gateway starts.
    pub fn prepare(tools: &Tools, dialect: DialectKind) -> anyhow::Result<Stack> {
        let dir = tempfile::Builder::new()
            .prefix("keyguard-loadtest-")
            .tempdir()?;
        let data_dir = dir.path().join("data");
        fs::create_dir_all(&data_dir)?;
        let cli = KeyguardCli {
            bin: tools.keyguard.clone(),
            config: dir.path().join("keyguard.toml"),
            data_dir,
        };
        // The assertion key lives in the data dir; this first config only serves the CLI.
        let placeholder: SocketAddr = "127.0.0.1:9".parse().expect("addr");
        write_config(
            dialect,
            &cli.config,
            &cli.data_dir,
            placeholder,
            "http://127.0.0.1:9",
            &|_| {},
        )?;
        let jwks = cli.assertion_jwks()?;
        let pem_path = dir.path().join("assertion.jwks");
        fs::write(&pem_path, jwks)?;
        let ledger = dir.path().join("ledger.jsonl");
        let (mock, mock_addr) = start_mock(
            &tools.loadtest,
            dialect,
            Some(&pem_path),
            Some(&ledger),
            dir.path(),
            "mock",
        )?;
        Ok(Stack {
            dir,
            cli,
            mock,
            mock_addr,
            ledger,
            gateway: None,
            dialect,
        })
    }

    /// Starts the gateway in front of the mock.
    pub fn start_gateway(
        &mut self,
        tweak: &dyn Fn(&mut toml::Table),
    ) -> anyhow::Result<SocketAddr> {
        let upstream = format!("http://{}", self.mock_addr);
        let (gw, addr) = start_gateway(&self.cli, self.dialect, &upstream, self.dir.path(), tweak)?;
        self.gateway = Some((gw, addr));
        Ok(addr)
    }

    /// Gives the keys the history real keys have, before the gateway starts: every key
    /// created three years ago with its withdrawal addresses long past their cool-down,
    /// `dormant` keys last used 400 days ago, the others yesterday. `keyguard keys create`
    /// cannot backdate, so this writes the embedded store (the gateway's SQLite file)
    /// directly, as the gateway's own zaif-2018 test does.
    pub fn backdate(&self, keys: &[Arc<KeyMaterial>], dormant: &[usize]) -> anyhow::Result<()> {
        anyhow::ensure!(self.gateway.is_none(), "backdate before the gateway starts");
        let db = rusqlite::Connection::open(self.cli.data_dir.join("keyguard.db"))
            .context("opening the gateway's store")?;
        let now = crate::workload::now_ms() as i64;
        let day: i64 = 24 * 60 * 60 * 1000;
        db.execute("UPDATE keys SET created_at = ?1", [now - 3 * 365 * day])
            .context("backdating keys")?;
        db.execute(
            "UPDATE withdraw_addresses SET added_at = ?1",
            [now - 2 * 365 * day],
        )
        .context("backdating withdrawal addresses")?;
        for key in keys {
            let last_used = if dormant.contains(&key.index) {
                now - 400 * day
            } else {
                now - day
            };
            db.execute(
                "UPDATE keys SET last_used_at = ?2 WHERE key_id = ?1",
                rusqlite::params![key.key_id, last_used],
            )
            .context("setting last use")?;
        }
        Ok(())
    }

    /// The gateway's log so far.
    pub fn gateway_log(&self) -> String {
        self.gateway
            .as_ref()
            .map(|(g, _)| g.log())
            .unwrap_or_default()
    }
}
