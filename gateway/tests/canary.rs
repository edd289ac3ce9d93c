//! Canary keys (issue 11) through the real `keyguard` binary: a canary's correctly signed
//! use is refused exactly like a real key outside its allowlist, audited as `canary`,
//! alerted at once, and blocks the client network for every key while the owners keep
//! working from their own networks.
//!
//! Addresses: the owner is 127.0.4.1, the attacker 127.0.4.9, a prober 127.0.4.20. The
//! shared-IP rule is off, so the block seen here is the canary's alone; new-IP probation
//! is 1 s so the attacker can earn trust on a victim key before the canary goes off, and
//! the block lasts a few seconds so the test can watch it end.

mod utils;

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use serde_json::Value;
use utils::scenarios::{expect_denied_from, expect_passed_from, setup_env};
use utils::*;

const OWNER: Ipv4Addr = Ipv4Addr::new(127, 0, 4, 1);
const ATTACKER: Ipv4Addr = Ipv4Addr::new(127, 0, 4, 9);
const PROBER: Ipv4Addr = Ipv4Addr::new(127, 0, 4, 20);
/// How long state may take to show up (audit line, webhook, store).
const PROPAGATE: Duration = Duration::from_secs(3);
/// The canary block of this test's config.
const BLOCK: Duration = Duration::from_secs(6);

async fn poll<T>(within: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn audit_lines(env: &Env) -> Vec<Value> {
    std::fs::read_to_string(env.data.join("audit.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("audit lines are JSON"))
        .collect()
}

fn alerts(hook: &Origin) -> Vec<Value> {
    hook.records()
        .iter()
        .map(|r| serde_json::from_slice(&r.body).expect("alerts are JSON"))
        .collect()
}

/// `keys create --canary ...`, parsed.
fn create_canary(env: &Env, account: &str, label: &str, allow_ip: &str) -> TestKey {
    let run = env
        .run_with_store(
            &["keys", "create"],
            &[
                "--account",
                account,
                "--scopes",
                "read,trade,withdraw",
                "--allow-ip",
                allow_ip,
                "--label",
                label,
                "--canary",
                "--json",
            ],
        )
        .ok();
    let v: Value = serde_json::from_str(run.stdout.trim()).expect("keys create --json");
    TestKey {
        key_id: v["key_id"].as_str().unwrap().into(),
        api_key: v["api_key"].as_str().unwrap().into(),
        secret: v["secret"].as_str().unwrap().into(),
        account: account.into(),
    }
}

/// A response as the client sees it, with the one value that differs per request (the
/// request id) blanked: status, header names and values, body.
fn shape(resp: &Resp) -> (u16, Vec<(String, String)>, String) {
    let rid = resp.header("x-request-id").unwrap_or_default().to_owned();
    assert!(!rid.is_empty());
    let mut headers: Vec<(String, String)> = resp
        .headers
        .iter()
        .filter(|(n, _)| !n.eq_ignore_ascii_case("date"))
        .map(|(n, v)| (n.to_ascii_lowercase(), v.replace(&rid, "<rid>")))
        .collect();
    headers.sort();
    (resp.status, headers, resp.text().replace(&rid, "<rid>"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_use_looks_ordinary_alerts_and_blocks_the_network_for_every_key() {
    let hook = Origin::start().await;
    let url = format!("http://{}/keyguard", hook.addr);
    let env = Env::new(Dialect::Zaif, |cfg| {
        set(cfg, "alerts.webhook_url", url);
        set(cfg, "anomaly.shared_ip.enabled", false);
        set(cfg, "anomaly.new_ip.probation", "1s");
        set(cfg, "canary.block_for", format!("{}s", BLOCK.as_secs()));
        set(cfg, "canary.lookback", "1h");
    });
    // A real key without allowlist (trusted where its owner uses it first), a real key
    // whose allowlist happens to include the attacker's address, a real decoy-looking key
    // allowlisted elsewhere, and the canary, allowlisted like the decoy.
    let victim = env.create_key(&KeySpec {
        account: "acct-victim".into(),
        scopes: "read,trade".into(),
        allow_ips: vec![],
        withdraw_addresses: vec![],
    });
    let allowed = env.create_key(&KeySpec {
        account: "acct-allowed".into(),
        scopes: "read,trade,withdraw".into(),
        allow_ips: vec![format!("{OWNER}/32"), format!("{ATTACKER}/32")],
        withdraw_addresses: vec![format!("btc:{WITHDRAW_ADDR}")],
    });
    let office = env.create_key(&KeySpec {
        account: "acct-office".into(),
        scopes: "read,trade,withdraw".into(),
        allow_ips: vec!["10.9.9.0/24".into()],
        withdraw_addresses: vec![],
    });
    let canary = create_canary(&env, "acct-office", "planted in ops-wiki", "10.9.9.0/24");
    let listed = env
        .run_with_store(&["keys", "show"], &[&canary.key_id])
        .ok();
    let listed: Value = serde_json::from_str(&listed.stdout).expect("keys show is JSON");
    assert_eq!(listed["canary"], true, "{listed:#}");
    let s = setup_env(env, &[]).await;

    // Before: the owner trades; the attacker reads with the stolen victim key, waits out
    // the 1 s probation and trades too; the allowlisted key works from both.
    expect_passed_from(&s, OWNER, &zaif::trade(&victim)).await;
    expect_passed_from(&s, ATTACKER, &zaif::read(&victim)).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let before = s.origin.count();
        let resp = s.gw.request_from(ATTACKER, &zaif::trade(&victim)).await;
        if resp.status == 200 {
            assert_eq!(s.origin.count(), before + 1);
            break;
        }
        resp.assert_error(403, "new_ip_probation");
        assert!(Instant::now() < deadline, "probation never ended");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    expect_passed_from(&s, ATTACKER, &zaif::trade(&allowed)).await;

    // A probe naming the canary without its secret burns nothing.
    let mut forged = canary.clone();
    forged.secret = "not-the-secret".into();
    expect_denied_from(&s, PROBER, &zaif::trade(&forged), 401, "invalid_signature").await;
    expect_passed_from(&s, PROBER, &zaif::read(&victim)).await;
    assert!(
        alerts(&hook).iter().all(|a| a["event"] != "canary_used"),
        "{:#?}",
        alerts(&hook)
    );

    // The real key outside its allowlist, then the canary: the same reply, byte for byte
    // but the request id.
    let real = expect_denied_from(&s, ATTACKER, &zaif::trade(&office), 403, "ip_not_allowed").await;
    let before = s.origin.count();
    let tripped_at = Instant::now();
    let used = s.gw.request_from(ATTACKER, &zaif::trade(&canary)).await;
    used.assert_error(403, "ip_not_allowed");
    assert_eq!(shape(&used), shape(&real));
    s.origin.assert_unchanged(before, "the canary");

    // From the attacker's network every key is refused now, allowlist or not, before
    // anything is checked; nothing reaches the exchange.
    for (what, req) in [
        ("victim trade", zaif::trade(&victim)),
        ("victim read", zaif::read(&victim)),
        ("allowlisted trade", zaif::trade(&allowed)),
        (
            "allowlisted withdraw",
            zaif::withdraw(&allowed, WITHDRAW_ADDR),
        ),
    ] {
        let resp = expect_denied_from(&s, ATTACKER, &req, 403, "ip_blocked").await;
        assert!(
            tripped_at.elapsed() < BLOCK,
            "{what} checked too late: {resp:?}"
        );
    }
    // The owners are untouched.
    expect_passed_from(&s, OWNER, &zaif::trade(&victim)).await;
    expect_passed_from(&s, OWNER, &zaif::withdraw(&allowed, WITHDRAW_ADDR)).await;
    assert!(
        tripped_at.elapsed() < BLOCK,
        "the block checks ran too long"
    );

    // The audit line tells the truth the client did not get.
    let line = poll(PROPAGATE, || {
        audit_lines(&s.env)
            .into_iter()
            .find(|l| l["key_id"] == canary.key_id.as_str() && l["client_ip"] != PROBER.to_string())
    })
    .await
    .expect("an audit line for the canary");
    assert_eq!(line["decision"], "deny", "{line}");
    assert_eq!(line["code"], "canary", "{line}");
    assert_eq!(line["status"], 403, "{line}");
    assert_eq!(line["client_ip"], ATTACKER.to_string(), "{line}");
    assert_eq!(line["account"], "acct-office", "{line}");

    // The webhook heard at once: which canary, from where, doing what.
    let alert = poll(PROPAGATE, || {
        alerts(&hook)
            .into_iter()
            .find(|a| a["event"] == "canary_used")
    })
    .await
    .unwrap_or_else(|| panic!("no canary alert: {:#?}", alerts(&hook)));
    assert_eq!(alert["code"], "canary", "{alert}");
    assert_eq!(alert["key_id"], canary.key_id.as_str(), "{alert}");
    assert_eq!(alert["key_label"], "planted in ops-wiki", "{alert}");
    assert_eq!(alert["client_ip"], ATTACKER.to_string(), "{alert}");
    assert_eq!(
        (&alert["method"], &alert["path"]),
        (&"POST".into(), &"/tapi".into())
    );
    assert!(!alert.to_string().contains(&canary.secret), "{alert}");

    // The victim key's trust in the attacker's network is forgotten durably.
    let db = s.env.data.join("keyguard.db");
    let forgotten = poll(PROPAGATE, || {
        let conn = rusqlite::Connection::open(&db).ok()?;
        conn.query_row(
            "SELECT usable_from FROM learned_ips WHERE key_id = ?1 AND net = ?2",
            rusqlite::params![victim.key_id, format!("{ATTACKER}/32")],
            |r| r.get::<_, i64>(0),
        )
        .ok()
        .filter(|u| *u == i64::MAX)
    })
    .await;
    assert!(forgotten.is_some(), "the forgotten network was not stored");

    // When the block ends, the victim key starts over on probation from the attacker's
    // network (the request that finds the block gone is the one that relearns it), while
    // reads pass as for any new network.
    let deadline = Instant::now() + BLOCK + Duration::from_secs(10);
    let after = loop {
        let before = s.origin.count();
        let resp = s.gw.request_from(ATTACKER, &zaif::trade(&victim)).await;
        s.origin
            .assert_unchanged(before, "a trade from the attacker's network");
        if resp.code().as_deref() != Some("ip_blocked") {
            break resp;
        }
        assert!(Instant::now() < deadline, "the block never ended");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        tripped_at.elapsed() >= BLOCK - Duration::from_millis(500),
        "the block ended early"
    );
    after.assert_error(403, "new_ip_probation");
    expect_passed_from(&s, OWNER, &zaif::trade(&victim)).await;
}
