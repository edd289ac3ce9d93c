//! End to end: `keyguard-loadtest run --scenario mixed` against the real gateway and the
//! mock exchange (both started by the command), for a few seconds. Checks the verdict
//! the report computed from the exchange's ledger and that the JSON and HTML reports are
//! written. No timing is asserted: only what reached the exchange.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use keyguard_loadtest::harness::{run_with_timeout, Tools};
use keyguard_loadtest::report::Report;

#[test]
fn tiny_mixed_run_is_judged_from_the_ledger() {
    let loadtest = Path::new(env!("CARGO_BIN_EXE_keyguard-loadtest"));
    // Builds `keyguard` next to us when it is missing or older than its sources.
    Tools::locate(loadtest).expect("keyguard binary");
    let out = tempfile::tempdir().expect("tempdir");
    let run = run_with_timeout(
        Command::new(loadtest)
            .args([
                "run",
                "--scenario",
                "mixed",
                "--dialect",
                "zaif",
                "--duration",
                "3s",
                "--rate",
                "150/s",
                "--traders",
                "6",
                "--out-dir",
            ])
            .arg(out.path()),
        Duration::from_secs(300),
    )
    .expect("run keyguard-loadtest");
    assert!(
        run.status.success(),
        "keyguard-loadtest run failed ({}):\n{}\n{}",
        run.status,
        run.stdout,
        run.stderr
    );
    assert!(
        run.stdout.contains("verdict from the exchange's ledger"),
        "{}",
        run.stdout
    );

    let json = std::fs::read(out.path().join("report.json")).expect("report.json written");
    let report: Report = serde_json::from_slice(&json).expect("report.json parses");
    let html =
        std::fs::read_to_string(out.path().join("report.html")).expect("report.html written");
    assert!(
        html.starts_with("<!doctype html>") && html.contains("<svg"),
        "HTML report with plots"
    );

    assert_eq!(report.scenario, "mixed");
    assert!(report.requests > 0);
    assert!(report.by_tag.contains_key("legit") && report.by_tag.contains_key("attack"));
    let v = report.verdict.expect("a verdict from the ledger");
    assert!(v.legit_sent > 0 && v.attack_sent > 0, "{v:?}");
    assert!(
        v.ledger_lines > 0,
        "owners' requests reached the exchange: {v:?}"
    );
    assert_eq!(v.legit_served + v.legit_refused, v.legit_sent, "{v:?}");
    assert_eq!(
        v.attack_funds_reached,
        v.attack_orders_reached + v.attack_withdrawals_reached,
        "{v:?}"
    );
    // The gateway's contract, judged from what the exchange executed.
    assert_eq!(
        v.attack_funds_reached, 0,
        "attack orders/withdrawals executed:\n{}",
        run.stdout
    );
    assert_eq!(
        v.legit_refused, 0,
        "legitimate requests refused:\n{}",
        run.stdout
    );
    assert_eq!(v.unmatched_ledger_lines, 0, "{v:?}");
    assert_eq!(v.executed_twice + v.identity_mismatches, 0, "{v:?}");
    assert!(v.pass, "{}", run.stdout);
}

/// `run --scenario canary` on Coincheck (the dialect that signs the full URL): every
/// attacker network that touched a canary got nothing more through, the canaries' own
/// requests never executed and were answered like any key outside its allowlist, and no
/// owner was refused.
#[test]
fn tiny_canary_run_cuts_every_tripped_network_off() {
    let loadtest = Path::new(env!("CARGO_BIN_EXE_keyguard-loadtest"));
    Tools::locate(loadtest).expect("keyguard binary");
    let out = tempfile::tempdir().expect("tempdir");
    let run = run_with_timeout(
        Command::new(loadtest)
            .args([
                "run",
                "--scenario",
                "canary",
                "--dialect",
                "coincheck",
                "--duration",
                "4s",
                "--rate",
                "100/s",
                "--out-dir",
            ])
            .arg(out.path()),
        Duration::from_secs(300),
    )
    .expect("run keyguard-loadtest");
    assert!(
        run.status.success(),
        "keyguard-loadtest run failed ({}):\n{}\n{}",
        run.status,
        run.stdout,
        run.stderr
    );
    let json = std::fs::read(out.path().join("report.json")).expect("report.json written");
    let report: Report = serde_json::from_slice(&json).expect("report.json parses");
    assert_eq!(report.scenario, "canary");
    let v = report.verdict.expect("a verdict from the ledger");
    let c = v.canary.clone().expect("the canary verdict");
    assert!(
        !c.tripped_at_ms.is_empty(),
        "no network used a canary: {c:?}"
    );
    assert_eq!(c.attacker_networks, 4, "{c:?}");
    assert_eq!(c.canary_executed, 0, "{c:?}");
    assert_eq!(c.funds_after, 0, "{}", run.stdout);
    assert_eq!(c.reads_after, 0, "{}", run.stdout);
    // What the client saw of a canary: an allowlist refusal, then the block.
    for code in c.canary_replies.keys() {
        assert!(
            code == "ip_not_allowed" || code == "ip_blocked",
            "a canary reply that stands out: {c:?}"
        );
    }
    assert_eq!(v.legit_refused, 0, "owners refused:\n{}", run.stdout);
    assert_eq!(v.unmatched_ledger_lines, 0, "{v:?}");
    assert_eq!(v.executed_twice + v.identity_mismatches, 0, "{v:?}");
    assert!(v.pass, "{}", run.stdout);
}
