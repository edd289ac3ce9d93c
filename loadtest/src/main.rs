//! `keyguard-loadtest`: Keyguard's test bench binary.
//!
//! `upstream` runs the mock exchange that the gateway forwards to. It prints
//! `listening on ADDR` once it accepts connections, so callers can pass `--listen
//! 127.0.0.1:0` and read the port back instead of racing for a free one.

#![forbid(unsafe_code)]

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use keyguard_loadtest::{mock, AssertionVerifier, Dialect, Ledger, MockExchange};

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
        /// The gateway's assertion public key (SPKI PEM, from `keyguard assertion-key`).
        #[arg(long)]
        assertion_key: PathBuf,
        /// JSON Lines file that receives one line per executed request (appended).
        #[arg(long)]
        ledger: PathBuf,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Upstream {
            dialect,
            listen,
            assertion_key,
            ledger,
        } => upstream(dialect, listen, &assertion_key, &ledger).await,
    }
}

async fn upstream(
    dialect: Dialect,
    listen: SocketAddr,
    assertion_key: &std::path::Path,
    ledger: &std::path::Path,
) -> anyhow::Result<()> {
    let pem = std::fs::read(assertion_key)
        .with_context(|| format!("reading assertion key {}", assertion_key.display()))?;
    let verifier = AssertionVerifier::from_pem(&pem)
        .with_context(|| format!("{} is not an Ed25519 SPKI PEM key", assertion_key.display()))?;
    let ledger =
        Ledger::open(ledger).with_context(|| format!("opening ledger {}", ledger.display()))?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    let local = listener.local_addr()?;
    let exchange = Arc::new(MockExchange::new(dialect, verifier, ledger));
    {
        let mut stdout = std::io::stdout().lock();
        writeln!(
            stdout,
            "keyguard-loadtest upstream ({dialect}) listening on {local}"
        )?;
        stdout.flush()?;
    }
    tokio::select! {
        result = mock::serve(listener, exchange) => result.context("serving"),
        _ = tokio::signal::ctrl_c() => Ok(()),
    }
}
