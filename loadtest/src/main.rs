//! `keyguard-loadtest`: Keyguard's test bench binary.
//!
//! - `upstream` runs the mock exchange that the gateway forwards to. It prints
//!   `listening on ADDR` once it accepts connections, so callers can pass `--listen
//!   127.0.0.1:0` and read the port back instead of racing for a free one.
//! - `run` replays a scenario against a gateway (self-contained, or one already running)
//!   and judges it from the exchange's ledger.
//! - `bench` compares, per dialect, the mock exchange direct, behind nginx and behind
//!   Keyguard with HS256 and with EdDSA assertions.
//! - `demo` is `run --scenario mixed` for 20 s, self-contained.

#![forbid(unsafe_code)]

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use keyguard_loadtest::app::{self, GatewayUnderTest, RunRequest};
use keyguard_loadtest::harness::{KeyguardCli, Tools};
use keyguard_loadtest::scenario::{Params, ScenarioName};
use keyguard_loadtest::{bench, mock, AssertionVerifier, Dialect, Ledger, MockExchange};
use keyguard_policy::DialectKind;

/// Keyguard's mock exchange, attack replays and benchmarks.
#[derive(Debug, Parser)]
#[command(name = "keyguard-loadtest", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a mock exchange that verifies the gateway's identity assertions and records
    /// every executed request in a JSON Lines ledger.
    Upstream {
        /// Which exchange to imitate: zaif, binance or kraken.
        #[arg(long)]
        dialect: Dialect,
        /// Address to listen on; port 0 picks a free port (printed on stdout).
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: SocketAddr,
        /// The gateway's assertion keys: the JWKS printed by `keyguard assertion-key` (re-read
        /// when a token names an unknown key, so rotations are followed), or an Ed25519 SPKI
        /// PEM from `keyguard assertion-key --pem`.
        #[arg(long, required_unless_present = "bench")]
        assertion_key: Option<PathBuf>,
        /// JSON Lines file that receives one line per executed request (appended).
        #[arg(long, required_unless_present = "bench")]
        ledger: Option<PathBuf>,
        /// Benchmark mode: execute every request without checking assertions and keep
        /// no ledger (so a proxy that adds none can be measured against the same work).
        #[arg(long, conflicts_with_all = ["assertion_key", "ledger"])]
        bench: bool,
    },
    /// Replay a scenario against a gateway and judge it from the exchange's ledger.
    Run(RunArgs),
    /// Requests/s and latency: the mock exchange direct, behind nginx, behind Keyguard.
    Bench(BenchArgs),
    /// The one-command demo: mock exchange + gateway, `mixed` for 20 s, verdict.
    Demo {
        /// Dialect.
        #[arg(long, default_value = "zaif", value_parser = app::parse_dialect)]
        dialect: DialectKind,
        /// How long to send.
        #[arg(long, default_value = "20s", value_parser = app::parse_duration)]
        duration: Duration,
        /// Total rate (open loop).
        #[arg(long, default_value = "300/s", value_parser = app::parse_rate)]
        rate: f64,
        /// Where to write the reports.
        #[arg(long)]
        out_dir: Option<PathBuf>,
    },
}

#[derive(Debug, Args)]
struct RunArgs {
    /// legit, zaif-2018, stuffing, flood or mixed.
    #[arg(long)]
    scenario: ScenarioName,
    /// Dialect of the gateway.
    #[arg(long, default_value = "zaif", value_parser = app::parse_dialect)]
    dialect: DialectKind,
    /// Open loop: total requests per second (e.g. 300/s). Default 300/s.
    #[arg(long, value_parser = app::parse_rate, conflicts_with = "concurrency")]
    rate: Option<f64>,
    /// Closed loop: this many attack clients (in `legit`: traders) at full speed.
    #[arg(long)]
    concurrency: Option<usize>,
    /// How long to send (e.g. 20s, 2m).
    #[arg(long, default_value = "20s", value_parser = app::parse_duration)]
    duration: Duration,
    /// A running gateway's URL; without it, a mock exchange and a gateway are started.
    #[arg(long, requires_all = ["config", "data_dir"])]
    gateway: Option<String>,
    /// The running gateway's config (keys are provisioned with `keyguard keys create`).
    #[arg(long)]
    config: Option<PathBuf>,
    /// The running gateway's data dir.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// The running mock exchange's ledger (for the verdict).
    #[arg(long)]
    ledger: Option<PathBuf>,
    /// The keyguard binary (default: next to this one, built if missing).
    #[arg(long)]
    keyguard: Option<PathBuf>,
    /// Number of traders (default: 20 in mixed; in legit, enough for the rate).
    #[arg(long)]
    traders: Option<usize>,
    /// Requests per second of one trader.
    #[arg(long, default_value_t = 2.0)]
    trader_rate: f64,
    /// Where to write report.json and report.html (default: target/loadtest-reports/...).
    #[arg(long)]
    out_dir: Option<PathBuf>,
    /// Random seed.
    #[arg(long, default_value_t = 2018)]
    seed: u64,
}

#[derive(Debug, Args)]
struct BenchArgs {
    /// Dialects: zaif, binance, kraken, a comma-separated list, or all.
    #[arg(long, default_value = "all", value_parser = bench::parse_dialects)]
    dialect: bench::DialectList,
    /// Targets to measure, comma-separated (the others are reported as not selected).
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "direct,nginx,hs256,eddsa,redis,redis-3"
    )]
    targets: Vec<bench::TargetKind>,
    /// Closed-loop clients (one key and one connection each).
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Measured time per target and round.
    #[arg(long, default_value = "5s", value_parser = app::parse_duration)]
    duration: Duration,
    /// Rounds (targets alternate within each round; each metric is the median of the rounds).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Unmeasured load per target before the first round.
    #[arg(long, default_value = "2s", value_parser = app::parse_duration)]
    warmup: Duration,
    /// `server.workers` of the Keyguard targets (default: the gateway's own default).
    #[arg(long)]
    workers: Option<usize>,
    /// Skip the open-loop run at half of nginx's maximum rate.
    #[arg(long)]
    no_half_rate: bool,
    /// Also measure Keyguard's memory through a 60 s stuffing run with a million
    /// distinct keys and client IPs.
    #[arg(long)]
    stuffing_check: bool,
    /// Duration of the stuffing check.
    #[arg(long, default_value = "60s", value_parser = app::parse_duration)]
    stuffing_duration: Duration,
    /// Where to write bench.json, bench.md and bench.html (default: target/loadtest-reports/...).
    #[arg(long)]
    out_dir: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Upstream {
            dialect,
            listen,
            assertion_key,
            ledger,
            bench,
        } => upstream(dialect, listen, assertion_key, ledger, bench).await,
        Command::Run(args) => run(args).await,
        Command::Bench(args) => {
            let tools = Tools::locate(&std::env::current_exe()?)?;
            let out_dir = args
                .out_dir
                .unwrap_or_else(|| app::default_out_dir("bench"));
            bench::run(bench::BenchOptions {
                tools,
                dialects: args.dialect.0,
                targets: args.targets,
                concurrency: args.concurrency.max(1),
                duration: args.duration,
                rounds: args.rounds.max(1),
                warmup: args.warmup,
                workers: args.workers,
                half_rate: !args.no_half_rate,
                stuffing_check: args.stuffing_check,
                stuffing_duration: args.stuffing_duration,
                out_dir,
                command: std::env::args().collect::<Vec<_>>().join(" "),
            })
            .await
        }
        Command::Demo {
            dialect,
            duration,
            rate,
            out_dir,
        } => {
            let tools = Tools::locate(&std::env::current_exe()?)?;
            let result = app::run(RunRequest {
                scenario: ScenarioName::Mixed,
                params: Params::new(dialect, app::load_of(Some(rate), None)),
                duration,
                gateway: GatewayUnderTest::SelfContained { tools },
                out_dir: out_dir.unwrap_or_else(|| app::default_out_dir("demo")),
                progress: true,
                seed: 2018,
            })
            .await?;
            print_result(&result);
            Ok(())
        }
    }
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    let keyguard_tools = || -> anyhow::Result<Tools> {
        let mut tools = Tools::locate(&std::env::current_exe()?)?;
        if let Some(k) = &args.keyguard {
            tools.keyguard = k.clone();
        }
        Ok(tools)
    };
    let gateway = match &args.gateway {
        None => GatewayUnderTest::SelfContained {
            tools: keyguard_tools()?,
        },
        Some(url) => {
            let keyguard = match &args.keyguard {
                Some(k) => k.clone(),
                None => keyguard_tools()?.keyguard,
            };
            GatewayUnderTest::Running {
                url: url.clone(),
                cli: KeyguardCli {
                    bin: keyguard,
                    config: args
                        .config
                        .clone()
                        .context("--config is required with --gateway")?,
                    data_dir: args
                        .data_dir
                        .clone()
                        .context("--data-dir is required with --gateway")?,
                },
                ledger: args.ledger.clone(),
            }
        }
    };
    let mut params = Params::new(args.dialect, app::load_of(args.rate, args.concurrency));
    params.traders = args.traders;
    params.trader_rate = args.trader_rate;
    let result = app::run(RunRequest {
        scenario: args.scenario,
        params,
        duration: args.duration,
        gateway,
        out_dir: args
            .out_dir
            .clone()
            .unwrap_or_else(|| app::default_out_dir(args.scenario.as_str())),
        progress: true,
        seed: args.seed,
    })
    .await?;
    print_result(&result);
    Ok(())
}

fn print_result(result: &app::RunResult) {
    println!("{}", result.report.table());
    println!("report: {}", result.html.display());
    println!("json:   {}", result.json.display());
}

async fn upstream(
    dialect: Dialect,
    listen: SocketAddr,
    assertion_key: Option<PathBuf>,
    ledger: Option<PathBuf>,
    bench: bool,
) -> anyhow::Result<()> {
    let exchange = if bench {
        MockExchange::unverified(dialect)
    } else {
        let (Some(assertion_key), Some(ledger)) = (assertion_key, ledger) else {
            anyhow::bail!("--assertion-key and --ledger are required (or --bench)");
        };
        let verifier = AssertionVerifier::from_file(&assertion_key).map_err(anyhow::Error::msg)?;
        let ledger = Ledger::open(&ledger)
            .with_context(|| format!("opening ledger {}", ledger.display()))?;
        MockExchange::new(dialect, verifier, ledger)
    };
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    let local = listener.local_addr()?;
    let exchange = Arc::new(exchange);
    {
        let mut stdout = std::io::stdout().lock();
        writeln!(
            stdout,
            "keyguard-loadtest upstream ({dialect}{}) listening on {local}",
            if bench { ", bench mode" } else { "" }
        )?;
        stdout.flush()?;
    }
    tokio::select! {
        result = mock::serve(listener, exchange) => result.context("serving"),
        _ = tokio::signal::ctrl_c() => Ok(()),
    }
}
