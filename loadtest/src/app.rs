//! `run` and `demo`: plan a scenario, provision its keys, drive the traffic, judge it from
//! the exchange's ledger, write the reports.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use keyguard_policy::DialectKind;

use crate::client::Target;
use crate::harness::{KeyguardCli, Stack, Tools};
use crate::ledger::Ledger;
use crate::report::Report;
use crate::runner::{self, RunOptions};
use crate::scenario::{self, Load, Params, ScenarioName};
use crate::verdict;
use crate::workload::KeyMaterial;

/// Where the gateway under test comes from.
#[derive(Debug, Clone)]
pub enum GatewayUnderTest {
    /// Start the mock exchange and a gateway (embedded store) in a temporary directory.
    SelfContained {
        /// The binaries.
        tools: Tools,
    },
    /// A gateway (and mock exchange) already running.
    Running {
        /// The gateway's URL.
        url: String,
        /// The CLI for its config and data dir (keys are provisioned through it).
        cli: KeyguardCli,
        /// The mock exchange's ledger, for the verdict.
        ledger: Option<PathBuf>,
    },
}

/// One `run`.
#[derive(Debug, Clone)]
pub struct RunRequest {
    /// The scenario.
    pub scenario: ScenarioName,
    /// Its parameters.
    pub params: Params,
    /// How long to send.
    pub duration: Duration,
    /// Where.
    pub gateway: GatewayUnderTest,
    /// Where to write `report.json` and `report.html`.
    pub out_dir: PathBuf,
    /// Progress bar on a terminal.
    pub progress: bool,
    /// Random seed.
    pub seed: u64,
}

/// What a run produced.
#[derive(Debug)]
pub struct RunResult {
    /// The report.
    pub report: Report,
    /// `report.json`.
    pub json: PathBuf,
    /// `report.html`.
    pub html: PathBuf,
}

/// Runs one scenario end to end.
pub async fn run(req: RunRequest) -> anyhow::Result<RunResult> {
    let plan = scenario::plan(req.scenario, req.params.clone());
    match &req.gateway {
        GatewayUnderTest::SelfContained { tools } => {
            let mut stack = Stack::prepare(tools, req.params.dialect)?;
            eprintln!("provisioning {} keys", plan.keys.len());
            let keys = stack.cli.create_keys(&plan.keys)?;
            let mut notes = vec![format!(
                "self-contained: mock exchange and gateway (embedded store, config/examples/{}.toml) \
                 in a temporary directory, removed afterwards",
                req.params.dialect.as_str()
            )];
            match stack.backdate(&keys, &plan.dormant) {
                Ok(()) => notes.push(format!(
                    "key history: every key created 3 years ago (withdrawal addresses 2 years ago); \
                     {} keys last used 400 days ago (dormant), the others yesterday — written to the \
                     embedded store before the gateway started",
                    plan.dormant.len()
                )),
                Err(e) => notes.push(format!(
                    "could not give the keys a history ({e:#}): all keys are brand new to the gateway"
                )),
            }
            let addr = stack.start_gateway(&|cfg| plan.tweak_config(cfg))?;
            if plan.name == ScenarioName::Canary {
                notes.push(
                    "canary: the shared-IP rule is off for this run (the attacker spreads the set so \
                     that no network presents many keys): the canaries alone decide"
                        .into(),
                );
            }
            let ledger = stack.ledger.clone();
            let config = stack.cli.config.clone();
            let url = format!("http://{addr}");
            let result = judge_run(&req, &plan, &keys, &url, Some(&ledger), &config, notes).await;
            if result.is_err() {
                eprintln!("--- gateway log ---\n{}", stack.gateway_log());
            }
            result
        }
        GatewayUnderTest::Running { url, cli, ledger } => {
            eprintln!(
                "provisioning {} keys through {}",
                plan.keys.len(),
                cli.config.display()
            );
            let keys = cli.create_keys(&plan.keys)?;
            // Key changes reach a running gateway within a second.
            tokio::time::sleep(Duration::from_millis(1_500)).await;
            let mut notes = Vec::new();
            if !plan.dormant.is_empty() {
                notes.push(format!(
                    "{} keys stand for keys unused for years, but a running gateway's keys cannot be \
                     backdated (`keys create` makes new keys): it sees them as new, not dormant",
                    plan.dormant.len()
                ));
            }
            judge_run(
                &req,
                &plan,
                &keys,
                url,
                ledger.as_deref(),
                &cli.config,
                notes,
            )
            .await
        }
    }
}

async fn judge_run(
    req: &RunRequest,
    plan: &scenario::Plan,
    keys: &[Arc<KeyMaterial>],
    url: &str,
    ledger: Option<&Path>,
    config: &Path,
    mut notes: Vec<String>,
) -> anyhow::Result<RunResult> {
    let dialect = req.params.dialect;
    notes.extend(gateway_notes(config));
    let offset = ledger.map_or(0, Ledger::end_offset);
    let actors = plan.actors(keys);
    eprintln!(
        "running {} ({}) for {:?}: {} clients, {}",
        req.scenario,
        dialect.as_str(),
        req.duration,
        actors.len(),
        req.params.load
    );
    let opts = RunOptions {
        dialect,
        target: Target::parse(url)?,
        spread: Vec::new(),
        duration: req.duration,
        keep_records: true,
        progress: req.progress,
        seed: req.seed,
    };
    let data = runner::run(actors, &opts).await;
    let mut report = Report::from_run(
        req.scenario.as_str(),
        dialect.as_str(),
        url,
        &req.params.load.to_string(),
        req.duration.as_secs_f64(),
        &data,
    );
    if let Some(path) = ledger {
        let lines = Ledger::read_from(path, offset)
            .with_context(|| format!("reading the ledger {}", path.display()))?;
        let mut v = verdict::judge(&data.sent, keys, &lines);
        if !plan.canaries.is_empty() {
            verdict::judge_canary(&mut v, &data.sent, &lines, &plan.canaries);
            notes.extend(canary_notes(v.canary.as_ref()));
        }
        report.verdict = Some(v);
    } else {
        notes.push("no --ledger given: the verdict needs the mock exchange's ledger".into());
    }
    report.notes = notes;
    let (json, html) = report.write(&req.out_dir)?;
    Ok(RunResult { report, json, html })
}

/// The canary verdict in words, for the report's notes.
fn canary_notes(c: Option<&verdict::CanaryVerdict>) -> Vec<String> {
    let Some(c) = c else { return Vec::new() };
    let replies: Vec<String> = c
        .canary_replies
        .iter()
        .map(|(code, n)| format!("{code} {n}"))
        .collect();
    vec![
        format!(
            "canary: {} of {} attacker networks used a canary key ({}); the gateway answered its {} canary requests {}; {} executed",
            c.tripped_at_ms.len(),
            c.attacker_networks,
            c.tripped_at_ms
                .iter()
                .map(|(net, ms)| format!("{net} at {:.1} s", *ms as f64 / 1000.0))
                .collect::<Vec<_>>()
                .join(", "),
            c.canary_requests,
            replies.join(", "),
            c.canary_executed,
        ),
        format!(
            "canary: real keys' orders and withdrawals executed for the attacker: {} before its network's first canary use, {} after (must be 0); real-key reads after: {} — {}",
            c.funds_before,
            c.funds_after,
            c.reads_after,
            if c.pass { "PASS" } else { "FAIL" }
        ),
    ]
}

/// What the gateway's config means for the verdict, said up front.
fn gateway_notes(config: &Path) -> Vec<String> {
    let mut notes = Vec::new();
    let text = std::fs::read_to_string(config).unwrap_or_default();
    let doc: toml::Table = text.parse().unwrap_or_default();
    let has = |section: &str| doc.contains_key(section);
    if !has("anomaly") {
        notes.push(
            "the gateway config has no [anomaly] section (dormant keys, new-IP probation, one IP with many keys): \
             keys without an IP allowlist are protected only by trust on first use, so attacker requests \
             through them are expected to reach the exchange until those rules are configured"
                .into(),
        );
    }
    if !has("limits") {
        notes.push("the gateway config has no [limits] section: no rate limits apply".into());
    }
    notes
}

/// The default output directory: `target/loadtest-reports/<name>-<unix time>` of the
/// workspace this binary was built in, or the current directory.
pub fn default_out_dir(name: &str) -> PathBuf {
    let stamp = crate::workload::now_ms() / 1000;
    let base = std::env::current_exe()
        .ok()
        .and_then(|exe| {
            exe.ancestors()
                .find(|a| a.file_name().is_some_and(|n| n == "target"))
                .map(Path::to_owned)
        })
        .unwrap_or_else(|| PathBuf::from("."));
    base.join("loadtest-reports")
        .join(format!("{name}-{stamp}"))
}

/// Parses `300/s`, `300`, `1.5k/s`.
pub fn parse_rate(s: &str) -> Result<f64, String> {
    let t = s.trim().trim_end_matches("/s").trim();
    let (num, mult) = match t.strip_suffix(['k', 'K']) {
        Some(n) => (n, 1000.0),
        None => (t, 1.0),
    };
    let v: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a rate (e.g. 300/s)"))?;
    if !(v > 0.0 && v.is_finite()) {
        return Err(format!("{s:?}: the rate must be positive"));
    }
    Ok(v * mult)
}

/// Parses `20s`, `2m`, `500ms`, `20`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let bad = || format!("{s:?} is not a duration (e.g. 20s, 2m, 500ms)");
    let (num, unit) = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .map_or((t, "s"), |i| (&t[..i], &t[i..]));
    let v: f64 = num.parse().map_err(|_| bad())?;
    let secs = match unit {
        "s" | "" => v,
        "ms" => v / 1000.0,
        "m" | "min" => v * 60.0,
        _ => return Err(bad()),
    };
    if !(secs > 0.0 && secs.is_finite()) {
        return Err(bad());
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Parses a dialect name.
pub fn parse_dialect(s: &str) -> Result<DialectKind, String> {
    s.parse()
        .map_err(|_| format!("unknown dialect {s:?} (expected zaif, binance, kraken or coincheck)"))
}

/// The load from `--rate`/`--concurrency` (default: 300 req/s open loop).
pub fn load_of(rate: Option<f64>, concurrency: Option<usize>) -> Load {
    match (rate, concurrency) {
        (_, Some(c)) => Load::Concurrency(c.max(1)),
        (Some(r), None) => Load::Rate(r),
        (None, None) => Load::Rate(300.0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_and_durations_parse() {
        assert_eq!(parse_rate("300/s"), Ok(300.0));
        assert_eq!(parse_rate("1.5k/s"), Ok(1500.0));
        assert!(parse_rate("0").is_err());
        assert_eq!(parse_duration("20s"), Ok(Duration::from_secs(20)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert!(parse_duration("x").is_err());
        assert!(parse_dialect("kraken").is_ok());
        assert!(parse_dialect("ftx").is_err());
    }
}
