//! Editing keys from the CLI against a running gateway, black-box: widening waits out
//! its cool-down, narrowing applies at once, `--now` is audited, `--trust-ip` makes the
//! first other network a new one.

mod utils;

use std::time::{Duration, Instant};

use utils::scenarios::{expect_denied_from, setup_env, Setup};
use utils::*;

const D: Dialect = Dialect::Zaif;
const THIRD_IP: std::net::Ipv4Addr = std::net::Ipv4Addr::new(127, 0, 0, 4);

/// A gateway whose widening cool-down is `cooldown`.
async fn start(cooldown: &str, specs: &[KeySpec]) -> Setup {
    let cooldown = cooldown.to_owned();
    let env = Env::new(D, move |cfg| set(cfg, "admin.widen_cooldown", cooldown));
    setup_env(env, specs).await
}

fn edit(s: &Setup, key: &TestKey, args: &[&str]) -> CliRun {
    let mut rest = vec![key.key_id.as_str()];
    rest.extend_from_slice(args);
    s.env.run_with_store(&["keys", "edit"], &rest)
}

/// Sends fresh requests built by `req` from `src` until one is forwarded (status 200),
/// or panics after `within`.
async fn forwarded_within(
    s: &Setup,
    src: std::net::Ipv4Addr,
    within: Duration,
    req: impl Fn() -> Req,
) -> Duration {
    let start = Instant::now();
    loop {
        let resp = s.gw.request_from(src, &req()).await;
        if resp.status == 200 {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < within,
            "still refused after {within:?}: {} {}",
            resp.status,
            resp.text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Sends fresh requests until one is refused with `code`, or panics after `within`.
async fn refused_within(
    s: &Setup,
    src: std::net::Ipv4Addr,
    within: Duration,
    code: &str,
    req: impl Fn() -> Req,
) {
    let start = Instant::now();
    loop {
        let resp = s.gw.request_from(src, &req()).await;
        if resp.code().as_deref() == Some(code) {
            return;
        }
        assert!(
            start.elapsed() < within,
            "not refused with {code} after {within:?}: {}",
            resp.status
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_network_waits_and_a_removed_one_is_refused_at_once() {
    let s = start("3s", &[KeySpec::scopes("read,trade")]).await;
    let k = s.key().clone();
    expect_denied_from(&s, OTHER_IP, &zaif::read(&k), 403, "ip_not_allowed").await;

    let asked = Instant::now();
    let run = edit(&s, &k, &["--add-ip", &OTHER_IP.to_string()]).ok();
    assert!(run.stderr.contains("pending #"), "{run:?}");
    // Well inside the cool-down: still refused, though the CLI wrote the change.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    expect_denied_from(&s, OTHER_IP, &zaif::read(&k), 403, "ip_not_allowed").await;
    let pending = s.env.run_with_store(&["keys", "pending"], &["--json"]).ok();
    let list: serde_json::Value = serde_json::from_str(&pending.stdout).unwrap();
    assert_eq!(list[0]["value"], "127.0.0.3/32", "{list}");
    // After it: forwarded, without anyone touching the key again.
    forwarded_within(&s, OTHER_IP, Duration::from_secs(10), || zaif::read(&k)).await;
    assert!(
        asked.elapsed() >= Duration::from_secs(3),
        "applied before its cool-down"
    );

    // Narrowing: the original network goes at once (within the CLI's one-second contract).
    let removed = Instant::now();
    edit(&s, &k, &["--remove-ip", &format!("{ALLOWED_IP}/32")]).ok();
    refused_within(
        &s,
        ALLOWED_IP,
        Duration::from_secs(1),
        "ip_not_allowed",
        || zaif::read(&k),
    )
    .await;
    assert!(removed.elapsed() < Duration::from_secs(2));
    // The remaining network still works.
    forwarded_within(&s, OTHER_IP, Duration::from_secs(1), || zaif::read(&k)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scopes_widen_after_the_cooldown_and_narrow_at_once() {
    let s = start("2s", &[KeySpec::scopes("read")]).await;
    let k = s.key().clone();
    edit(&s, &k, &["--add-scope", "trade"]).ok();
    expect_denied_from(&s, ALLOWED_IP, &zaif::trade(&k), 403, "scope_missing").await;
    forwarded_within(&s, ALLOWED_IP, Duration::from_secs(10), || zaif::trade(&k)).await;
    edit(&s, &k, &["--remove-scope", "trade"]).ok();
    refused_within(
        &s,
        ALLOWED_IP,
        Duration::from_secs(1),
        "scope_missing",
        || zaif::trade(&k),
    )
    .await;
    // The last scope cannot go: that is what suspend and revoke are for.
    let run = edit(&s, &k, &["--remove-scope", "read"]);
    assert!(
        !run.status.success() && run.stderr.contains("suspend or revoke"),
        "{run:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn now_skips_the_cooldown_only_with_a_reason_and_is_audited() {
    let s = start("1h", &[KeySpec::scopes("read")]).await;
    let k = s.key().clone();
    let run = edit(&s, &k, &["--add-ip", &THIRD_IP.to_string(), "--now"]);
    assert!(
        !run.status.success() && run.stderr.contains("--reason"),
        "{run:?}"
    );
    edit(
        &s,
        &k,
        &[
            "--add-ip",
            &THIRD_IP.to_string(),
            "--now",
            "--actor",
            "oncall-bob",
            "--reason",
            "ticket 42",
        ],
    )
    .ok();
    forwarded_within(&s, THIRD_IP, Duration::from_secs(1), || zaif::read(&k)).await;

    // A pending change can be cancelled; it never applies.
    let run = edit(&s, &k, &["--add-ip", &OTHER_IP.to_string(), "--json"]).ok();
    let out: serde_json::Value = serde_json::from_str(run.stdout.trim()).unwrap();
    let id = out[0]["outcome"]["id"].as_i64().expect("pending id");
    s.env
        .run_with_store(
            &["keys", "cancel"],
            &[&id.to_string(), "--reason", "not mine"],
        )
        .ok();
    let pending = s.env.run_with_store(&["keys", "pending"], &["--json"]).ok();
    assert_eq!(pending.stdout.trim(), "[]");

    // Both reach the audit log with who and why (the gateway copies admin events).
    let audit = s.env.data.join("audit.jsonl");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let text = std::fs::read_to_string(&audit).unwrap_or_default();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        let now = lines.iter().find(|l| l["action"] == "widen_now");
        let cancelled = lines.iter().find(|l| l["action"] == "widen_cancelled");
        if let (Some(now), Some(cancelled)) = (now, cancelled) {
            assert_eq!(now["actor"], "oncall-bob");
            assert!(
                now["reason"].as_str().unwrap().contains("ticket 42"),
                "{now}"
            );
            assert!(
                now["reason"].as_str().unwrap().contains("127.0.0.4/32"),
                "{now}"
            );
            assert!(
                cancelled["reason"].as_str().unwrap().contains("not mine"),
                "{cancelled}"
            );
            assert!(lines.iter().any(|l| l["action"] == "widen_requested"));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "admin events not audited:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trusted_network_makes_the_first_other_network_wait() {
    // Keys without an allowlist: the new-IP rule applies (probation 60m in the example).
    let env = Env::new(D, |_| {});
    let mut rest = vec!["--account", "acct-t", "--scopes", "read,trade", "--json"];
    rest.extend(["--trust-ip", "127.0.0.2/32"]);
    let trusted = env.run_with_store(&["keys", "create"], &rest).ok();
    let plain = env
        .run_with_store(
            &["keys", "create"],
            &["--account", "acct-p", "--scopes", "read,trade", "--json"],
        )
        .ok();
    let parse = |run: &CliRun, account: &str| {
        let v: serde_json::Value = serde_json::from_str(run.stdout.trim()).unwrap();
        TestKey {
            key_id: v["key_id"].as_str().unwrap().into(),
            api_key: v["api_key"].as_str().unwrap().into(),
            secret: v["secret"].as_str().unwrap().into(),
            account: account.into(),
        }
    };
    let (trusted, plain) = (parse(&trusted, "acct-t"), parse(&plain, "acct-p"));
    let show = env
        .run_with_store(&["keys", "show"], &[&trusted.key_id])
        .ok();
    assert!(
        show.stdout
            .contains("\"trusted_ips\": [\n    \"127.0.0.2/32\""),
        "{}",
        show.stdout
    );
    let s = setup_env(env, &[]).await;
    // Without --trust-ip the first network anyone uses is trusted on first use ...
    assert_eq!(
        s.gw.request_from(OTHER_IP, &zaif::trade(&plain))
            .await
            .status,
        200
    );
    // ... with it, a stranger's first use is a new network on probation,
    expect_denied_from(
        &s,
        OTHER_IP,
        &zaif::trade(&trusted),
        403,
        "new_ip_probation",
    )
    .await;
    // while the owner's network trades at once.
    assert_eq!(
        s.gw.request_from(ALLOWED_IP, &zaif::trade(&trusted))
            .await
            .status,
        200
    );
}
