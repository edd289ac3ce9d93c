//! Rate limits, velocity windows, anomaly rules, shadow mode, alerts and freezes (issue 3)
//! through the real `keyguard` binary: real sockets, loopback client addresses, and the
//! upstream's record as the verdict (a refused request never reaches it).
//!
//! Client addresses: 127.0.0.2 is in the allowlist of allowlisted test keys, 127.0.0.3 is
//! "another IP"; keys without an allowlist are used from 127.0.2.x.
//!
//! Nothing here asserts on timing: where state propagates (CLI changes, durable
//! suspensions, the audit log, webhook deliveries) the test polls with a deadline of
//! [`PROPAGATE`].

mod utils;

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use serde_json::Value;
use utils::scenarios::{expect_denied_from, expect_passed_from, setup_env, Setup};
use utils::*;

/// How long state may take to reach a running gateway (the CLI contract is one second).
const PROPAGATE: Duration = Duration::from_secs(2);

/// Keys without an allowlist: their owner's address, and other addresses.
const IP_A: Ipv4Addr = Ipv4Addr::new(127, 0, 2, 1);
const IP_B: Ipv4Addr = Ipv4Addr::new(127, 0, 2, 2);
const IP_C: Ipv4Addr = Ipv4Addr::new(127, 0, 2, 3);

const DAY_MS: i64 = 86_400_000;

// ---------------------------------------------------------------------------------------
// Helpers local to this file
// ---------------------------------------------------------------------------------------

/// A TOML value written inline, e.g. `{ count = 1, per = "1m", burst = 2 }`.
fn inline(value: &str) -> toml::Value {
    let t: toml::Table = format!("v = {value}")
        .parse()
        .unwrap_or_else(|e| panic!("{value} is not a TOML value: {e}"));
    t["v"].clone()
}

/// Replaces every `[[velocity.rule]]` with the rules in `text` (written as `[[rule]]`).
fn velocity_rules(cfg: &mut toml::Table, text: &str) {
    let t: toml::Table = text.parse().expect("velocity rules are TOML");
    set(cfg, "velocity.rule", t["rule"].clone());
}

/// One withdraw rule: at most 1 (any asset, summed per asset) per key per hour, and per-key
/// withdraw rate limits high enough that only the velocity window can refuse.
fn one_btc_an_hour(cfg: &mut toml::Table) {
    velocity_rules(
        cfg,
        r#"
        [[rule]]
        kind = "withdraw"
        subject = "key"
        asset = "*"
        window = "1h"
        max_amount = "1"
        "#,
    );
    no_withdraw_rate_limit(cfg);
}

/// Per-key withdraw rate limits high enough (1000 a second) never to refuse.
fn no_withdraw_rate_limit(cfg: &mut toml::Table) {
    set(
        cfg,
        "limits.tiers.default.withdraw",
        inline(r#"{ count = 1000, per = "1s" }"#),
    );
}

/// `read = { count = 1, per = "1m", burst = 2 }` per key.
fn one_read_a_minute_burst_2(cfg: &mut toml::Table) {
    set(
        cfg,
        "limits.tiers.default.read",
        inline(r#"{ count = 1, per = "1m", burst = 2 }"#),
    );
}

/// A no-allowlist key with read and trade scopes.
fn open_key(account: &str) -> KeySpec {
    KeySpec {
        account: account.into(),
        scopes: "read,trade".into(),
        allow_ips: vec![],
        withdraw_addresses: vec![],
    }
}

/// One satoshi, the smallest btc amount.
const SAT: &str = "0.00000001";

/// A Zaif withdrawal of `amount` btc to the key's registered address.
fn withdraw(key: &TestKey, amount: &str) -> Req {
    zaif::call(
        key,
        "withdraw",
        &[
            ("currency", "btc"),
            ("address", WITHDRAW_ADDR),
            ("amount", amount),
        ],
    )
}

/// A Zaif read body signed with the wrong secret.
fn badly_signed_read(key: &TestKey) -> Req {
    let mut wrong = key.clone();
    wrong.secret = format!("{}x", key.secret);
    zaif::signed(
        &wrong,
        &zaif::body("get_info2", &next_nonce().to_string(), &[]),
    )
}

/// A key the gateway has never heard of.
fn unknown_key() -> TestKey {
    TestKey {
        key_id: "kg_0000000000000000".into(),
        api_key: "UnknownApiKeyUnknownApiKeyUnknownApiKeyUnknownApiKeyUnknownApiK".into(),
        secret: "UnknownSecret".into(),
        account: "nobody".into(),
    }
}

/// A request to a public Zaif endpoint (no key at all).
fn public_ticker() -> Req {
    Req::new("GET", "/api/1/ticker/btc_jpy")
}

/// A Zaif read without `Key`/`Sign` headers.
fn unsigned_read() -> Req {
    Req::new("POST", zaif::PATH)
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body(zaif::body("get_info2", &next_nonce().to_string(), &[]))
}

/// Sends fresh requests from `make` until `done` holds for a response or [`PROPAGATE`]
/// has passed; returns the last response.
async fn poll_request(
    gw: &Gateway,
    src: Ipv4Addr,
    mut make: impl FnMut() -> Req,
    done: impl Fn(&Resp) -> bool,
) -> Resp {
    let deadline = Instant::now() + PROPAGATE;
    loop {
        let resp = gw.request_from(src, &make()).await;
        if done(&resp) || Instant::now() > deadline {
            return resp;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Evaluates `f` until it returns `Some` or [`PROPAGATE`] has passed.
async fn poll<T>(mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + PROPAGATE;
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

/// Every line of the audit log so far (request lines and `kind: admin` lines).
fn audit_lines(env: &Env) -> Vec<Value> {
    std::fs::read_to_string(env.data.join("audit.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("audit line {l:?}: {e}")))
        .collect()
}

/// The first audit line matching `pred`, polled; panics naming `what` (and printing the
/// log) if none has appeared within [`PROPAGATE`].
async fn audit_line(env: &Env, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    poll(|| audit_lines(env).into_iter().find(|l| pred(l)))
        .await
        .unwrap_or_else(|| panic!("no audit line for {what}: {:#?}", audit_lines(env)))
}

fn is_admin(l: &Value) -> bool {
    l["kind"] == "admin"
}

/// `keyguard keys show KEY_ID`, parsed.
fn keys_show(env: &Env, key: &TestKey) -> Value {
    let run = env.run_with_store(&["keys", "show"], &[&key.key_id]).ok();
    serde_json::from_str(&run.stdout)
        .unwrap_or_else(|e| panic!("keys show is not JSON ({e}): {}", run.stdout))
}

/// Makes `key` look created and last used `days` ago (before the gateway starts).
fn backdate(env: &Env, key: &TestKey, days: i64) {
    let db = rusqlite::Connection::open(env.data.join("keyguard.db")).expect("open store");
    let at = now_ms() as i64 - days * DAY_MS;
    let n = db
        .execute(
            "UPDATE keys SET created_at = ?2, last_used_at = ?2 WHERE key_id = ?1",
            rusqlite::params![key.key_id, at],
        )
        .expect("backdate key");
    assert_eq!(n, 1, "key {} in the store", key.key_id);
}

/// The velocity ledger as stored: (id, key_id, amount, state).
fn ledger_rows(env: &Env) -> Vec<(i64, String, Option<String>, String)> {
    let db = rusqlite::Connection::open(env.data.join("keyguard.db")).expect("open store");
    let mut stmt = db
        .prepare("SELECT id, key_id, amount, state FROM velocity_ledger ORDER BY id")
        .expect("prepare");
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .expect("query ledger")
        .collect::<Result<_, _>>()
        .expect("ledger rows")
}

/// Velocity ledger rows still `reserved` (their settlement not yet written).
fn reserved_rows(env: &Env) -> i64 {
    let db = rusqlite::Connection::open(env.data.join("keyguard.db")).expect("open store");
    db.query_row(
        "SELECT COUNT(*) FROM velocity_ledger WHERE state = 'reserved'",
        [],
        |r| r.get(0),
    )
    .expect("count reserved rows")
}

/// The alerts a webhook received, as JSON.
fn alerts(hook: &Origin) -> Vec<Value> {
    hook.records()
        .iter()
        .map(|r| {
            assert_eq!(r.method, "POST", "alerts are POSTed");
            assert!(
                r.header("content-type")
                    .is_some_and(|c| c.starts_with("application/json")),
                "alert content-type: {r:?}"
            );
            serde_json::from_slice(&r.body).unwrap_or_else(|e| {
                panic!(
                    "alert body is not JSON ({e}): {}",
                    String::from_utf8_lossy(&r.body)
                )
            })
        })
        .collect()
}

/// The first alert the webhook received with `event` (and `code`, if given), polled;
/// panics if none has arrived within [`PROPAGATE`].
async fn alert(hook: &Origin, event: &str, code: Option<&str>) -> Value {
    let wanted = |a: &Value| a["event"] == event && code.is_none_or(|c| a["code"] == c);
    poll(|| alerts(hook).into_iter().find(wanted))
        .await
        .unwrap_or_else(|| panic!("no {event} alert (code {code:?}): {:#?}", alerts(hook)))
}

/// Parses `"name";k1=v1;k2=v2` (one Structured Field List item with Integer params).
fn sf_item(value: &str) -> (String, Vec<(String, u64)>) {
    let mut parts = value.split(';');
    let name = parts.next().unwrap_or_default();
    assert!(
        name.len() >= 2 && name.starts_with('"') && name.ends_with('"'),
        "the policy name is an sf-string: {value:?}"
    );
    let params = parts
        .map(|p| {
            let (k, v) = p
                .split_once('=')
                .unwrap_or_else(|| panic!("parameter {p:?} in {value:?}"));
            let v: u64 = v
                .parse()
                .unwrap_or_else(|_| panic!("integer parameter {p:?} in {value:?}"));
            (k.to_owned(), v)
        })
        .collect();
    (name[1..name.len() - 1].to_owned(), params)
}

/// Checks a 429's `Retry-After`, `RateLimit-Policy` and `RateLimit` headers name the
/// limit `name` with quota `q` and window `w` (draft-ietf-httpapi-ratelimit-headers-10),
/// and returns `Retry-After`.
#[track_caller]
fn check_429_headers(resp: &Resp, name: &str, q: u64, w: u64) -> u64 {
    resp.assert_error(429, "rate_limited");
    let retry: u64 = resp
        .header("retry-after")
        .unwrap_or_else(|| panic!("429 without Retry-After: {:?}", resp.headers))
        .parse()
        .unwrap_or_else(|_| panic!("Retry-After is not delay-seconds: {:?}", resp.headers));
    assert!(retry >= 1, "Retry-After {retry}");
    let policy = resp
        .header("ratelimit-policy")
        .unwrap_or_else(|| panic!("429 without RateLimit-Policy: {:?}", resp.headers));
    assert_eq!(
        policy,
        format!("\"{name}\";q={q};w={w}"),
        "RateLimit-Policy"
    );
    let now = resp
        .header("ratelimit")
        .unwrap_or_else(|| panic!("429 without RateLimit: {:?}", resp.headers));
    assert_eq!(now, format!("\"{name}\";r=0;t={retry}"), "RateLimit");
    // The same values read as structured fields.
    let (pname, pparams) = sf_item(policy);
    assert_eq!(pname, name);
    assert_eq!(pparams, [("q".to_owned(), q), ("w".to_owned(), w)]);
    let (rname, rparams) = sf_item(now);
    assert_eq!(rname, name);
    assert_eq!(rparams, [("r".to_owned(), 0), ("t".to_owned(), retry)]);
    retry
}

// ---------------------------------------------------------------------------------------
// 1. Rate limits
// ---------------------------------------------------------------------------------------

/// `read = { count = 1, per = "1m", burst = 2 }`: two reads pass, the third is a 429
/// naming the `read` policy (quota 2 per 120 s: a full bucket of 2 refills in 2 minutes)
/// and is not forwarded; other action classes of the same key are unaffected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_key_read_limit_429_with_ratelimit_headers() {
    let env = Env::new(Dialect::Zaif, one_read_a_minute_burst_2);
    let key = env.create_key(&KeySpec::scopes("read,trade"));
    let other = env.create_key(&KeySpec {
        account: "acct-other".into(),
        ..KeySpec::scopes("read")
    });
    let s = setup_env(env, &[]).await;

    expect_passed_from(&s, ALLOWED_IP, &zaif::read(&key)).await;
    expect_passed_from(&s, ALLOWED_IP, &zaif::read(&key)).await;
    let resp = expect_denied_from(&s, ALLOWED_IP, &zaif::read(&key), 429, "rate_limited").await;
    let retry = check_429_headers(&resp, "read", 2, 120);
    assert!(
        retry <= 60,
        "one read per minute: the next is due within 60 s, Retry-After {retry}"
    );
    // Still limited; the refused read spent nothing upstream.
    expect_denied_from(&s, ALLOWED_IP, &zaif::read(&key), 429, "rate_limited").await;
    // The limit is per action class and per key.
    expect_passed_from(&s, ALLOWED_IP, &zaif::trade(&key)).await;
    expect_passed_from(&s, ALLOWED_IP, &zaif::read(&other)).await;
}

/// The same per-key read limit in the Binance dialect: same 429 and headers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_key_read_limit_429_binance() {
    let env = Env::new(Dialect::Binance, one_read_a_minute_burst_2);
    let key = env.create_key(&KeySpec::scopes("read"));
    let s = setup_env(env, &[]).await;

    expect_passed_from(&s, ALLOWED_IP, &binance::read(&key)).await;
    expect_passed_from(&s, ALLOWED_IP, &binance::read(&key)).await;
    let resp = expect_denied_from(&s, ALLOWED_IP, &binance::read(&key), 429, "rate_limited").await;
    check_429_headers(&resp, "read", 2, 120);
}

/// `limits.ip = { count = 1, per = "1m", burst = 3 }`: an IP sending unknown keys or no
/// key at all is limited after 3 requests, before any signature work — from then on even a
/// validly signed request, a bad signature and a public request from it get the `ip` 429 —
/// while another IP is unaffected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_ip_limit_before_authentication() {
    let env = Env::new(Dialect::Zaif, |cfg| {
        set(
            cfg,
            "limits.ip",
            inline(r#"{ count = 1, per = "1m", burst = 3 }"#),
        );
    });
    let key = env.create_key(&KeySpec {
        account: "acct-ip".into(),
        scopes: "read".into(),
        allow_ips: vec![format!("{ALLOWED_IP}/32"), format!("{OTHER_IP}/32")],
        withdraw_addresses: vec![],
    });
    let s = setup_env(env, &[]).await;
    let flood = OTHER_IP;

    expect_denied_from(&s, flood, &zaif::read(&unknown_key()), 401, "unknown_key").await;
    expect_denied_from(&s, flood, &unsigned_read(), 401, "missing_credentials").await;
    expect_denied_from(&s, flood, &zaif::read(&unknown_key()), 401, "unknown_key").await;
    // Past the burst: refused before the key is even looked up.
    let resp =
        expect_denied_from(&s, flood, &zaif::read(&unknown_key()), 429, "rate_limited").await;
    let retry = check_429_headers(&resp, "ip", 3, 180);
    assert!(retry <= 60, "Retry-After {retry}");
    let resp = expect_denied_from(&s, flood, &unsigned_read(), 429, "rate_limited").await;
    check_429_headers(&resp, "ip", 3, 180);
    // Before signature work: a bad signature is not even checked, a good one not honoured.
    let resp = expect_denied_from(&s, flood, &badly_signed_read(&key), 429, "rate_limited").await;
    check_429_headers(&resp, "ip", 3, 180);
    expect_denied_from(&s, flood, &zaif::read(&key), 429, "rate_limited").await;
    // Public endpoints are limited by this alone.
    expect_denied_from(&s, flood, &public_ticker(), 429, "rate_limited").await;

    // Another IP has its own bucket.
    expect_passed_from(&s, ALLOWED_IP, &zaif::read(&key)).await;
    expect_passed_from(&s, ALLOWED_IP, &zaif::read(&key)).await;
}

// ---------------------------------------------------------------------------------------
// 2. Velocity
// ---------------------------------------------------------------------------------------

/// `max_amount = "1"` per key per hour: 0.4 + 0.4 pass, a third 0.4 is refused; splitting
/// the rest into small amounts gets exactly up to the limit and no further; ten 0.1 from a
/// fresh key pass and the eleventh (or a single satoshi) does not; and after the gateway is
/// killed and restarted on the same data dir the ledger still holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn withdraw_velocity_window_survives_restart() {
    let env = Env::new(Dialect::Zaif, one_btc_an_hour);
    let a = env.create_key(&KeySpec {
        account: "acct-a".into(),
        ..KeySpec::full(Dialect::Zaif)
    });
    let b = env.create_key(&KeySpec {
        account: "acct-b".into(),
        ..KeySpec::full(Dialect::Zaif)
    });
    let mut s = setup_env(env, &[]).await;

    expect_passed_from(&s, ALLOWED_IP, &withdraw(&a, "0.4")).await;
    expect_passed_from(&s, ALLOWED_IP, &withdraw(&a, "0.4")).await;
    expect_denied_from(&s, ALLOWED_IP, &withdraw(&a, "0.4"), 403, "withdraw_limit").await;
    // What is left (0.2) in small pieces, and not a satoshi more.
    expect_passed_from(&s, ALLOWED_IP, &withdraw(&a, "0.1")).await;
    expect_passed_from(&s, ALLOWED_IP, &withdraw(&a, "0.1")).await;
    expect_denied_from(&s, ALLOWED_IP, &withdraw(&a, "0.1"), 403, "withdraw_limit").await;
    expect_denied_from(&s, ALLOWED_IP, &withdraw(&a, SAT), 403, "withdraw_limit").await;

    // Splitting from the start: ten 0.1 make the limit, the eleventh is refused.
    for _ in 0..10 {
        expect_passed_from(&s, ALLOWED_IP, &withdraw(&b, "0.1")).await;
    }
    expect_denied_from(&s, ALLOWED_IP, &withdraw(&b, "0.1"), 403, "withdraw_limit").await;
    let forwarded = s
        .origin
        .records()
        .iter()
        .filter(|r| String::from_utf8_lossy(&r.body).contains("method=withdraw"))
        .count();
    assert_eq!(forwarded, 14, "4 withdrawals of key a, 10 of key b");

    // Kill (no graceful shutdown) and start again on the same data dir.
    s.restart().await;
    expect_denied_from(&s, ALLOWED_IP, &withdraw(&a, "0.4"), 403, "withdraw_limit").await;
    expect_denied_from(&s, ALLOWED_IP, &withdraw(&a, SAT), 403, "withdraw_limit").await;
    expect_denied_from(&s, ALLOWED_IP, &withdraw(&b, "0.1"), 403, "withdraw_limit").await;
    // The restarted gateway serves everything else.
    expect_passed_from(&s, ALLOWED_IP, &zaif::read(&a)).await;
}

/// A withdrawal the exchange answers with a 4xx did not happen: its reservation is
/// released, and stays released across a restart. A 5xx may have executed: it counts as
/// spent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_4xx_releases_the_reservation_5xx_does_not() {
    let env = Env::new(Dialect::Zaif, one_btc_an_hour);
    let a = env.create_key(&KeySpec::full(Dialect::Zaif));
    let b = env.create_key(&KeySpec {
        account: "acct-b".into(),
        ..KeySpec::full(Dialect::Zaif)
    });
    let mut s = setup_env(env, &[]).await;

    // Key a: 0.4 spent; 0.4 refused by the exchange (400) and released; so 0.4 more fits
    // (0.8), and 0.3 does not (1.1).
    expect_passed_from(&s, ALLOWED_IP, &withdraw(&a, "0.4")).await;
    s.origin.answer_next(400);
    let before = s.origin.count();
    let resp = s.gw.request(&withdraw(&a, "0.4")).await;
    assert_eq!(
        resp.status,
        400,
        "the exchange's 400 is passed on: {}",
        resp.text()
    );
    assert_eq!(
        s.origin.count(),
        before + 1,
        "the 400 withdrawal was forwarded"
    );
    expect_passed_from(&s, ALLOWED_IP, &withdraw(&a, "0.4")).await;
    expect_denied_from(&s, ALLOWED_IP, &withdraw(&a, "0.3"), 403, "withdraw_limit").await;

    // Key b: a 500 may have moved the funds, so it counts: 0.4 + 0.4 (500) + 0.2 = 1.0.
    expect_passed_from(&s, ALLOWED_IP, &withdraw(&b, "0.4")).await;
    s.origin.answer_next(500);
    let resp = s.gw.request(&withdraw(&b, "0.4")).await;
    assert_eq!(
        resp.status,
        500,
        "the exchange's 500 is passed on: {}",
        resp.text()
    );
    expect_denied_from(&s, ALLOWED_IP, &withdraw(&b, "0.4"), 403, "withdraw_limit").await;
    expect_passed_from(&s, ALLOWED_IP, &withdraw(&b, "0.2")).await;

    // Give the settlements (written off the request path) time to reach the store, then
    // kill and restart on the same data dir.
    let settled = poll(|| (reserved_rows(&s.env) == 0).then_some(())).await;
    let rows = ledger_rows(&s.env);
    assert!(
        settled.is_some(),
        "settlements never reached the store: {rows:?}"
    );
    s.restart().await;
    // Key a spent 0.8: 0.2 is left after the restart as before it.
    let before = s.origin.count();
    let resp = s.gw.request(&withdraw(&a, "0.2")).await;
    assert_eq!(
        resp.status,
        200,
        "after a restart the withdrawal the exchange refused (400) counts again: key a \
         has 0.8 of 1 spent, yet 0.2 more is refused: {}\nledger before the restart \
         (id, key, amount, state): {rows:#?}",
        resp.text()
    );
    resp.assert_forwarded_ok();
    assert_eq!(s.origin.count(), before + 1);
    expect_denied_from(&s, ALLOWED_IP, &withdraw(&a, SAT), 403, "withdraw_limit").await;
    expect_denied_from(&s, ALLOWED_IP, &withdraw(&b, SAT), 403, "withdraw_limit").await;
}

/// Trades with no `order` velocity rule configured (only a withdraw rule) are not limited
/// by velocity at all: they are forwarded, not refused as if state were unavailable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trades_pass_when_no_velocity_rule_covers_them() {
    let env = Env::new(Dialect::Zaif, one_btc_an_hour);
    let key = env.create_key(&KeySpec::full(Dialect::Zaif));
    let s = setup_env(env, &[]).await;

    expect_passed_from(&s, ALLOWED_IP, &zaif::read(&key)).await;
    expect_passed_from(&s, ALLOWED_IP, &withdraw(&key, "0.1")).await;
    expect_passed_from(&s, ALLOWED_IP, &zaif::trade(&key)).await;
}

/// A withdrawal of an asset no velocity rule names (rules for btc only) is forwarded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn withdrawals_of_assets_without_a_velocity_rule_pass() {
    const ETH_ADDR: &str = "0xKeyguardTestEthAddressxxxxxxxxxxxxxxxxx";
    let env = Env::new(Dialect::Zaif, |cfg| {
        velocity_rules(
            cfg,
            r#"
            [[rule]]
            kind = "withdraw"
            subject = "key"
            asset = "btc"
            window = "1h"
            max_amount = "1"

            [[rule]]
            kind = "order"
            subject = "key"
            asset = "*"
            window = "1m"
            max_count = 1000
            "#,
        );
    });
    let key = env.create_key(&KeySpec {
        withdraw_addresses: vec![format!("btc:{WITHDRAW_ADDR}"), format!("eth:{ETH_ADDR}")],
        ..KeySpec::full(Dialect::Zaif)
    });
    let s = setup_env(env, &[]).await;

    expect_passed_from(&s, ALLOWED_IP, &withdraw(&key, "0.1")).await;
    let eth = zaif::call(
        &key,
        "withdraw",
        &[("currency", "eth"), ("address", ETH_ADDR), ("amount", "5")],
    );
    expect_passed_from(&s, ALLOWED_IP, &eth).await;
}

// ---------------------------------------------------------------------------------------
// 3. Dormant keys
// ---------------------------------------------------------------------------------------

/// A key unused for 400 days may read but not trade; a read does not wake it; `keys
/// reactivate` does, on the running gateway.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dormant_key_reads_but_trades_only_after_reactivation() {
    let env = Env::new(Dialect::Zaif, |_| {});
    let key = env.create_key(&KeySpec::scopes("read,trade"));
    let fresh = env.create_key(&KeySpec {
        account: "acct-fresh".into(),
        ..KeySpec::scopes("read,trade")
    });
    backdate(&env, &key, 400);
    let s = setup_env(env, &[]).await;

    expect_denied_from(&s, ALLOWED_IP, &zaif::trade(&key), 403, "key_dormant").await;
    expect_passed_from(&s, ALLOWED_IP, &zaif::read(&key)).await;
    // The read did not make the key look used.
    expect_denied_from(&s, ALLOWED_IP, &zaif::trade(&key), 403, "key_dormant").await;
    expect_passed_from(&s, ALLOWED_IP, &zaif::read(&key)).await;
    expect_denied_from(&s, ALLOWED_IP, &zaif::trade(&key), 403, "key_dormant").await;
    // A key created today is not dormant.
    expect_passed_from(&s, ALLOWED_IP, &zaif::trade(&fresh)).await;

    s.env
        .run_with_store(
            &["keys", "reactivate"],
            &[&key.key_id, "--reason", "owner asked", "--actor", "support"],
        )
        .ok();
    let before = s.origin.count();
    let resp = poll_request(&s.gw, ALLOWED_IP, || zaif::trade(&key), |r| r.status == 200).await;
    resp.assert_forwarded_ok();
    assert_eq!(
        s.origin.count(),
        before + 1,
        "only the trade that passed reached the upstream"
    );
    expect_passed_from(&s, ALLOWED_IP, &zaif::trade(&key)).await;
}

// ---------------------------------------------------------------------------------------
// 4-5. New IP probation, enforced and in shadow mode
// ---------------------------------------------------------------------------------------

/// A key without allowlist: its first IP is trusted at once; a second IP may read but not
/// trade during the probation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_ip_probation_for_keys_without_allowlist() {
    let env = Env::new(Dialect::Zaif, |_| {});
    let key = env.create_key(&open_key("acct-open"));
    let s = setup_env(env, &[]).await;

    expect_passed_from(&s, IP_A, &zaif::trade(&key)).await;
    expect_denied_from(&s, IP_B, &zaif::trade(&key), 403, "new_ip_probation").await;
    expect_passed_from(&s, IP_B, &zaif::read(&key)).await;
    // Reading from it does not end the probation.
    expect_denied_from(&s, IP_B, &zaif::trade(&key), 403, "new_ip_probation").await;
    // The owner's IP keeps working.
    expect_passed_from(&s, IP_A, &zaif::trade(&key)).await;
    assert!(
        s.origin
            .records()
            .iter()
            .filter(|r| r.header("x-forwarded-for").as_deref() == Some("127.0.2.2"))
            .all(|r| !String::from_utf8_lossy(&r.body).contains("method=trade")),
        "a probation trade reached the upstream"
    );
}

/// The same with `anomaly.new_ip.shadow = true`: the trade from the new IP is forwarded and
/// the audit log records what the rule would have done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_ip_probation_in_shadow_mode_forwards_and_audits_would_deny() {
    let env = Env::new(Dialect::Zaif, |cfg| set(cfg, "anomaly.new_ip.shadow", true));
    let key = env.create_key(&open_key("acct-open"));
    let s = setup_env(env, &[]).await;

    expect_passed_from(&s, IP_A, &zaif::trade(&key)).await;
    let before = s.origin.count();
    let resp = s.gw.request_from(IP_B, &zaif::trade(&key)).await;
    resp.assert_forwarded_ok();
    let rec = s.origin.one_since(before);
    assert_eq!(rec.header("x-forwarded-for").as_deref(), Some("127.0.2.2"));
    assert!(String::from_utf8_lossy(&rec.body).contains("method=trade"));

    let line = audit_line(&s.env, "the shadow trade", |l| {
        !is_admin(l) && l["client_ip"] == "127.0.2.2" && l["action"] == "trade"
    })
    .await;
    assert_eq!(line["decision"], "would_deny", "{line}");
    assert_eq!(line["code"], "new_ip_probation", "{line}");
    assert_eq!(line["status"], 200, "{line}");
    assert_eq!(line["key_id"], key.key_id.as_str(), "{line}");
    let first = audit_line(&s.env, "the first trade", |l| {
        !is_admin(l) && l["client_ip"] == "127.0.2.1" && l["action"] == "trade"
    })
    .await;
    assert_eq!(first["decision"], "allow", "{first}");
    assert!(first["code"].is_null(), "{first}");
}

// ---------------------------------------------------------------------------------------
// 6. Many IPs
// ---------------------------------------------------------------------------------------

fn many_ips_env(tweak: impl FnOnce(&mut toml::Table)) -> Env {
    Env::new(Dialect::Zaif, |cfg| {
        set(cfg, "anomaly.many_ips.max_ips", 2);
        tweak(cfg);
    })
}

/// Reads from IP_A and IP_B pass; from IP_C the read is refused `too_many_ips`.
async fn trip_many_ips(s: &Setup, key: &TestKey) {
    expect_passed_from(s, IP_A, &zaif::read(key)).await;
    expect_passed_from(s, IP_B, &zaif::read(key)).await;
    expect_denied_from(s, IP_C, &zaif::read(key), 403, "too_many_ips").await;
}

/// A gateway as [`many_ips_env`] sets it up, alerting to a recording webhook, with one
/// no-allowlist key (`acct-open`): the webhook, the setup and the key.
async fn many_ips_with_webhook() -> (Origin, Setup, TestKey) {
    let hook = Origin::start().await;
    let url = format!("http://{}/keyguard", hook.addr);
    let env = many_ips_env(|cfg| set(cfg, "alerts.webhook_url", url));
    let key = env.create_key(&open_key("acct-open"));
    let s = setup_env(env, &[]).await;
    (hook, s, key)
}

/// Polls `keys show` until the key is suspended; returns the last listing.
async fn wait_suspended(env: &Env, key: &TestKey) -> Value {
    let mut last = Value::Null;
    let found = poll(|| {
        last = keys_show(env, key);
        (last["status"] == "suspended").then_some(())
    })
    .await;
    assert!(found.is_some(), "key not suspended: {last:#}");
    last
}

/// A key without allowlist read from 3 IPs with `max_ips = 2`: refused `too_many_ips` and
/// durably suspended (CLI listing, admin audit line by `keyguard`), and then its owner gets
/// `key_suspended` from the original IP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_ips_suspends_the_key() {
    let env = many_ips_env(|_| {});
    let key = env.create_key(&open_key("acct-open"));
    let bystander = env.create_key(&open_key("acct-bystander"));
    let s = setup_env(env, &[]).await;

    trip_many_ips(&s, &key).await;

    let shown = wait_suspended(&s.env, &key).await;
    assert_eq!(shown["status_reason"], "too_many_ips", "{shown:#}");
    let admin = audit_line(&s.env, "the suspension (admin)", |l| {
        is_admin(l) && l["action"] == "key_suspend" && l["target"] == key.key_id.as_str()
    })
    .await;
    assert_eq!(admin["actor"], "keyguard", "{admin}");
    assert_eq!(admin["reason"], "too_many_ips", "{admin}");
    assert!(
        admin["ts"].as_str().is_some_and(|t| !t.is_empty()),
        "{admin}"
    );
    let deny = audit_line(&s.env, "the refused read", |l| {
        !is_admin(l) && l["client_ip"] == "127.0.2.3" && l["decision"] == "deny"
    })
    .await;
    assert_eq!(deny["code"], "too_many_ips", "{deny}");

    // Other keys are unaffected, from any of those IPs.
    expect_passed_from(&s, IP_C, &zaif::read(&bystander)).await;

    // The suspended key explains itself to its owner (DESIGN.md §6).
    let before = s.origin.count();
    let resp = poll_request(
        &s.gw,
        IP_A,
        || zaif::read(&key),
        |r| r.code().as_deref() == Some("key_suspended"),
    )
    .await;
    resp.assert_error(403, "key_suspended");
    s.origin.assert_unchanged(before, "key_suspended");
}

/// The suspension is durable: after a restart (in-memory anomaly state gone) the key is
/// still refused `key_suspended`, from any IP, until an operator resumes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_ips_suspension_survives_restart_until_resumed() {
    let env = many_ips_env(|_| {});
    let key = env.create_key(&open_key("acct-open"));
    let mut s = setup_env(env, &[]).await;

    trip_many_ips(&s, &key).await;
    wait_suspended(&s.env, &key).await;

    s.restart().await;
    expect_denied_from(&s, IP_A, &zaif::read(&key), 403, "key_suspended").await;
    expect_denied_from(&s, IP_A, &zaif::trade(&key), 403, "key_suspended").await;

    s.env.set_key_status("resume", &key);
    let resp = poll_request(&s.gw, IP_A, || zaif::read(&key), |r| r.status == 200).await;
    resp.assert_forwarded_ok();
}

/// An operator resuming a key suspended for too many IPs makes it usable again on the
/// running gateway: the sightings that led to the suspension do not suspend it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resumed_key_is_usable_without_a_restart() {
    let env = many_ips_env(|_| {});
    let key = env.create_key(&open_key("acct-open"));
    let s = setup_env(env, &[]).await;

    trip_many_ips(&s, &key).await;
    wait_suspended(&s.env, &key).await;
    s.env.set_key_status("resume", &key);
    assert_eq!(keys_show(&s.env, &key)["status"], "active");

    let resp = poll_request(&s.gw, IP_A, || zaif::read(&key), |r| r.status == 200).await;
    assert_eq!(
        resp.status,
        200,
        "the owner's read after `keys resume`: {}",
        resp.text()
    );
    resp.assert_forwarded_ok();
    let shown = keys_show(&s.env, &key);
    assert_eq!(shown["status"], "active", "suspended again: {shown:#}");
}

// ---------------------------------------------------------------------------------------
// 7. One IP, many keys
// ---------------------------------------------------------------------------------------

/// `max_keys = 2`: an IP presenting a third key is blocked, for every key, while the keys
/// keep working from another IP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_ip_presenting_many_keys_is_blocked() {
    let env = Env::new(Dialect::Zaif, |cfg| {
        set(cfg, "anomaly.shared_ip.max_keys", 2);
        set(cfg, "anomaly.shared_ip.max_accounts", 100);
    });
    let keys: Vec<TestKey> = (0..3)
        .map(|i| env.create_key(&open_key(&format!("acct-{i}"))))
        .collect();
    let s = setup_env(env, &[]).await;
    let shared = OTHER_IP;

    expect_passed_from(&s, shared, &zaif::read(&keys[0])).await;
    expect_passed_from(&s, shared, &zaif::read(&keys[1])).await;
    expect_denied_from(&s, shared, &zaif::read(&keys[2]), 403, "ip_blocked").await;
    for k in &keys {
        expect_denied_from(&s, shared, &zaif::read(k), 403, "ip_blocked").await;
        expect_denied_from(&s, shared, &zaif::trade(k), 403, "ip_blocked").await;
    }
    // Blocked before authentication: even an unknown key gets the block.
    expect_denied_from(&s, shared, &zaif::read(&unknown_key()), 403, "ip_blocked").await;

    // Other IPs are unaffected (each within the limit of 2 keys).
    expect_passed_from(&s, ALLOWED_IP, &zaif::read(&keys[0])).await;
    expect_passed_from(&s, ALLOWED_IP, &zaif::read(&keys[1])).await;
    expect_passed_from(&s, IP_A, &zaif::read(&keys[2])).await;
    expect_passed_from(&s, IP_A, &zaif::trade(&keys[2])).await;
}

// ---------------------------------------------------------------------------------------
// 8. Signature failures
// ---------------------------------------------------------------------------------------

/// `max_failures = 3`: three bad signatures are tolerated, the fourth bans the IP, which
/// then gets `ip_banned` even with a valid key; another IP is unaffected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_bad_signatures_ban_the_ip() {
    let env = Env::new(Dialect::Zaif, |cfg| {
        set(cfg, "anomaly.auth_failures.max_failures", 3);
    });
    let key = env.create_key(&open_key("acct-open"));
    let s = setup_env(env, &[]).await;
    let attacker = OTHER_IP;
    // The owner's IP is the key's first (trusted) one.
    expect_passed_from(&s, ALLOWED_IP, &zaif::trade(&key)).await;

    for _ in 0..3 {
        expect_denied_from(
            &s,
            attacker,
            &badly_signed_read(&key),
            401,
            "invalid_signature",
        )
        .await;
    }
    // At the threshold, not past it: still served.
    expect_passed_from(&s, attacker, &zaif::read(&key)).await;
    // One more failure (an unknown key counts too) bans the IP; that request is refused
    // for its own reason.
    expect_denied_from(
        &s,
        attacker,
        &zaif::read(&unknown_key()),
        401,
        "unknown_key",
    )
    .await;
    expect_denied_from(&s, attacker, &zaif::read(&key), 403, "ip_banned").await;
    expect_denied_from(&s, attacker, &badly_signed_read(&key), 403, "ip_banned").await;
    expect_denied_from(&s, attacker, &public_ticker(), 403, "ip_banned").await;

    expect_passed_from(&s, ALLOWED_IP, &zaif::read(&key)).await;
    expect_passed_from(&s, ALLOWED_IP, &zaif::trade(&key)).await;
}

// ---------------------------------------------------------------------------------------
// 9. Alerts
// ---------------------------------------------------------------------------------------

/// A many-IPs suspension and `keyguard freeze --asset btc` each reach the webhook as JSON.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_for_suspension_and_freeze_reach_the_webhook() {
    let (hook, s, key) = many_ips_with_webhook().await;

    trip_many_ips(&s, &key).await;
    let suspended = alert(&hook, "key_suspended", Some("too_many_ips")).await;
    assert_eq!(suspended["key_id"], key.key_id.as_str(), "{suspended}");
    assert_eq!(suspended["account"], "acct-open", "{suspended}");
    assert_eq!(suspended["client_ip"], "127.0.2.3", "{suspended}");
    assert!(
        suspended["ts"].as_str().is_some_and(|t| t.contains('T')),
        "RFC 3339 ts: {suspended}"
    );
    assert!(suspended["detail"].is_string(), "{suspended}");
    // The durable suspension (an admin event by `keyguard`) is alerted as well.
    let admin = alert(&hook, "key_suspended", Some("key_suspend")).await;
    assert_eq!(admin["key_id"], key.key_id.as_str(), "{admin}");
    let detail = admin["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains("keyguard") && detail.contains("too_many_ips"),
        "{admin}"
    );

    s.env
        .run_with_store(
            &["freeze"],
            &["--asset", "btc", "--reason", "drill", "--actor", "ops"],
        )
        .ok();
    let frozen = alert(&hook, "withdrawals_frozen", None).await;
    assert_eq!(frozen["code"], "freeze", "{frozen}");
    assert!(frozen["key_id"].is_null(), "{frozen}");
    let detail = frozen["detail"].as_str().unwrap_or_default();
    for part in ["asset:btc", "ops", "drill"] {
        assert!(
            detail.contains(part),
            "{part} missing from the detail: {frozen}"
        );
    }
    assert!(
        frozen["ts"].as_str().is_some_and(|t| t.contains('T')),
        "{frozen}"
    );
}

/// Every anomaly deny is alerted (issue 3, "Alerts"): a new-IP refusal, and the
/// many-IPs refusal even though the same request also raises `key_suspended`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_anomaly_deny_is_alerted() {
    let (hook, s, key) = many_ips_with_webhook().await;

    expect_passed_from(&s, IP_A, &zaif::trade(&key)).await;
    expect_denied_from(&s, IP_B, &zaif::trade(&key), 403, "new_ip_probation").await;
    let probation = alert(&hook, "anomaly_deny", Some("new_ip_probation")).await;
    assert_eq!(probation["key_id"], key.key_id.as_str(), "{probation}");
    assert_eq!(probation["account"], "acct-open", "{probation}");
    assert_eq!(probation["client_ip"], "127.0.2.2", "{probation}");

    expect_denied_from(&s, IP_C, &zaif::read(&key), 403, "too_many_ips").await;
    let denied = alert(&hook, "anomaly_deny", Some("too_many_ips")).await;
    assert_eq!(denied["key_id"], key.key_id.as_str(), "{denied}");
    assert_eq!(denied["client_ip"], "127.0.2.3", "{denied}");
}

/// A webhook that never answers (and one that is not listening) neither fails nor holds up
/// requests: alerts pile up behind it while requests are answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_webhook_does_not_affect_requests() {
    let (silent, accepted, _silent_task) = silent_origin().await;
    for hook in [silent, dead_origin()] {
        let env = Env::new(Dialect::Zaif, |cfg| {
            set(cfg, "alerts.webhook_url", format!("http://{hook}/keyguard"));
            set(cfg, "alerts.timeout", "5m");
            set(cfg, "alerts.max_retries", 100);
            set(cfg, "alerts.queue", 1);
        });
        let key = env.create_key(&open_key("acct-open"));
        let s = setup_env(env, &[]).await;

        expect_passed_from(&s, IP_A, &zaif::trade(&key)).await;
        // Every probation refusal is an alert; each from its own IP, so none is coalesced
        // (3 new IPs: the key stays within the many-IPs rule's 5).
        for i in 1..=3u8 {
            let ip = Ipv4Addr::new(127, 0, 3, i);
            expect_denied_from(&s, ip, &zaif::trade(&key), 403, "new_ip_probation").await;
        }
        for _ in 0..5 {
            expect_passed_from(&s, IP_A, &zaif::read(&key)).await;
            expect_passed_from(&s, IP_A, &zaif::trade(&key)).await;
        }
    }
    assert!(
        accepted.load(std::sync::atomic::Ordering::SeqCst) >= 1,
        "the silent webhook was tried"
    );
}

// ---------------------------------------------------------------------------------------
// 10. Freeze
// ---------------------------------------------------------------------------------------

/// `keyguard freeze --global` stops withdrawals on the running gateway within the
/// propagation deadline, reads go on, `unfreeze` restores withdrawals; both are in the
/// audit log with who and why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn global_freeze_and_unfreeze_on_a_running_gateway() {
    let env = Env::new(Dialect::Zaif, |cfg| {
        no_withdraw_rate_limit(cfg);
        velocity_rules(
            cfg,
            r#"
            [[rule]]
            kind = "withdraw"
            subject = "key"
            asset = "*"
            window = "1h"
            max_count = 1000

            [[rule]]
            kind = "order"
            subject = "key"
            asset = "*"
            window = "1h"
            max_count = 1000
            "#,
        );
    });
    let key = env.create_key(&KeySpec::full(Dialect::Zaif));
    let s = setup_env(env, &[]).await;

    expect_passed_from(&s, ALLOWED_IP, &zaif::withdraw(&key, WITHDRAW_ADDR)).await;

    s.env
        .run_with_store(
            &["freeze"],
            &["--global", "--reason", "incident 42", "--actor", "oncall"],
        )
        .ok();
    let resp = poll_request(
        &s.gw,
        ALLOWED_IP,
        || zaif::withdraw(&key, WITHDRAW_ADDR),
        |r| r.status != 200,
    )
    .await;
    resp.assert_error(403, "withdrawals_frozen");
    expect_denied_from(
        &s,
        ALLOWED_IP,
        &zaif::withdraw(&key, WITHDRAW_ADDR),
        403,
        "withdrawals_frozen",
    )
    .await;
    expect_passed_from(&s, ALLOWED_IP, &zaif::read(&key)).await;
    expect_passed_from(&s, ALLOWED_IP, &zaif::trade(&key)).await;

    s.env
        .run_with_store(
            &["unfreeze"],
            &["--global", "--reason", "all clear", "--actor", "lead"],
        )
        .ok();
    let before = s.origin.count();
    let resp = poll_request(
        &s.gw,
        ALLOWED_IP,
        || zaif::withdraw(&key, WITHDRAW_ADDR),
        |r| r.status == 200,
    )
    .await;
    resp.assert_forwarded_ok();
    assert_eq!(
        s.origin.count(),
        before + 1,
        "only the withdrawal that passed"
    );

    let freeze = audit_line(&s.env, "the freeze (admin)", |l| {
        is_admin(l) && l["action"] == "freeze"
    })
    .await;
    assert_eq!(freeze["actor"], "oncall", "{freeze}");
    assert_eq!(freeze["reason"], "incident 42", "{freeze}");
    assert_eq!(freeze["target"], "global:*", "{freeze}");
    let unfreeze = audit_line(&s.env, "the unfreeze (admin)", |l| {
        is_admin(l) && l["action"] == "unfreeze"
    })
    .await;
    assert_eq!(unfreeze["actor"], "lead", "{unfreeze}");
    assert_eq!(unfreeze["reason"], "all clear", "{unfreeze}");
    // The frozen withdrawals are audited as denies with the freeze's code.
    let denied = audit_line(&s.env, "a frozen withdrawal", |l| {
        !is_admin(l) && l["action"] == "withdraw" && l["decision"] == "deny"
    })
    .await;
    assert_eq!(denied["code"], "withdrawals_frozen", "{denied}");
    assert_eq!(denied["status"], 403, "{denied}");
}
