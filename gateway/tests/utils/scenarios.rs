//! Scenarios every dialect must pass, written once and run by `zaif.rs`, `binance.rs`
//! and `kraken.rs`. Each starts its own gateway, origin and data directory.

use std::time::Duration;

use super::*;

/// A running gateway in front of a recording origin, with keys provisioned.
/// Fields drop in order: the gateway first (its log is printed from the temp dir on
/// panic), the temp dir last.
pub struct Setup {
    pub gw: Gateway,
    pub origin: Origin,
    pub env: Env,
    pub jwks: String,
    pub keys: Vec<TestKey>,
}

impl Setup {
    pub fn key(&self) -> &TestKey {
        &self.keys[0]
    }

    /// Kills the gateway (SIGKILL, no graceful shutdown) and starts a new one on the same
    /// config and data directory, in front of the same origin.
    pub async fn restart(&mut self) {
        self.gw.kill();
        self.gw = self.env.start(self.origin.addr).await;
    }
}

/// Provisions `specs` (before start), starts origin and gateway.
pub async fn setup_env(env: Env, specs: &[KeySpec]) -> Setup {
    let keys = specs.iter().map(|s| env.create_key(s)).collect();
    let origin = Origin::start().await;
    let gw = env.start(origin.addr).await;
    let jwks = env.assertion_jwks();
    Setup {
        env,
        origin,
        gw,
        jwks,
        keys,
    }
}

/// [`setup_env`] with the example config (cool-down off) and `specs`.
pub async fn setup(dialect: Dialect, specs: &[KeySpec]) -> Setup {
    setup_env(Env::new(dialect, |_| {}), specs).await
}

/// Defines, in a dialect's test file, one test per scenario below for the dialect `$d`:
/// `dialect_scenarios!(Dialect::Zaif);`. The test names are the ones `zaif.rs`,
/// `binance.rs` and `kraken.rs` have always used, so every dialect runs the same list.
#[macro_export]
macro_rules! dialect_scenarios {
    ($d:expr) => {
        $crate::dialect_scenarios! {
            @tests $d;
            read_trade_withdraw_forwarded_with_assertion => allowed_actions_forwarded,
            scope_missing_not_forwarded => scope_missing,
            ip_not_allowed_not_forwarded => ip_not_allowed,
            bad_signature_not_forwarded => bad_signature,
            unknown_key_not_forwarded => unknown_key,
            unknown_endpoint_not_forwarded => unknown_endpoint,
            withdraw_address_not_allowed => address_not_allowed,
            withdraw_address_cooldown_with_default_config => address_cooldown,
            suspend_resume_revoke_via_cli_while_running => suspend_resume_revoke,
            public_endpoint_forwarded_without_assertion => public_forwarded,
            missing_credentials_not_forwarded => missing_credentials,
            withdraw_facts_checked => withdraw_facts_checked,
        }
    };
    (@tests $d:expr; $($test:ident => $scenario:ident,)*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $test() {
                $crate::utils::scenarios::$scenario($d).await;
            }
        )*
    };
}

/// Sends `req` from the allowed IP, expects the origin's answer, and returns the one
/// request the origin recorded for it, checked against `key` and `action`.
pub async fn expect_forwarded(s: &Setup, req: &Req, key: &TestKey, action: &str) -> Recorded {
    let before = s.origin.count();
    let resp = s.gw.request(req).await;
    resp.assert_forwarded_ok();
    let rec = s.origin.one_since(before);
    check_forwarded(s.env.dialect, &s.jwks, &rec, key, action);
    // The exact bytes signed are the bytes forwarded.
    assert_eq!(rec.method, req.method);
    assert_eq!(rec.target, req.target, "path and query forwarded unchanged");
    assert_eq!(
        String::from_utf8_lossy(&rec.body),
        String::from_utf8_lossy(&req.body),
        "body forwarded unchanged"
    );
    assert_eq!(
        rec.header("x-forwarded-for").as_deref(),
        Some("127.0.0.2"),
        "the gateway states the client IP"
    );
    assert!(
        resp.header("x-origin-hop").is_none(),
        "a header the origin nominated in Connection reached the client"
    );
    assert_eq!(resp.header("x-origin"), Some("mock"));
    assert_eq!(
        rec.header("host"),
        Some(s.origin.addr.to_string()),
        "Host names the upstream, not the gateway"
    );
    rec
}

/// Sends `req` from `src`, expects the origin's answer, and returns the one request the
/// origin recorded for it. Unlike [`expect_forwarded`] it checks neither the assertion nor
/// the forwarded bytes: for tests about whether a request passes at all (limits, anomaly
/// rules), from any client address.
pub async fn expect_passed_from(s: &Setup, src: std::net::Ipv4Addr, req: &Req) -> Recorded {
    let before = s.origin.count();
    let resp = s.gw.request_from(src, req).await;
    resp.assert_forwarded_ok();
    s.origin.one_since(before)
}

/// Sends `req` from `src`, expects the error `status`/`code`, and that nothing reached the
/// origin.
pub async fn expect_denied_from(
    s: &Setup,
    src: std::net::Ipv4Addr,
    req: &Req,
    status: u16,
    code: &str,
) -> Resp {
    let before = s.origin.count();
    let resp = s.gw.request_from(src, req).await;
    resp.assert_error(status, code);
    s.origin.assert_unchanged(before, code);
    resp
}

pub async fn expect_denied(s: &Setup, req: &Req, status: u16, code: &str) -> Resp {
    expect_denied_from(s, ALLOWED_IP, req, status, code).await
}

/// Read, trade and withdraw with a key holding all three scopes: forwarded once each,
/// credentials stripped, a verifying assertion naming the right action.
pub async fn allowed_actions_forwarded(d: Dialect) {
    let s = setup(d, &[KeySpec::full(d)]).await;
    let k = s.key().clone();
    expect_forwarded(&s, &read_req(d, &k), &k, "read").await;
    expect_forwarded(&s, &trade_req(d, &k), &k, "trade").await;
    let rec = expect_forwarded(&s, &withdraw_req(d, &k, WITHDRAW_ADDR), &k, "withdraw").await;
    let claims = verify_assertion(&s.jwks, &rec);
    let scp: Vec<&str> = claims["scp"]
        .as_array()
        .map(|a| a.iter().filter_map(|v| v.as_str()).collect())
        .unwrap_or_default();
    assert_eq!(scp, ["read", "trade", "withdraw"], "scp: {claims}");
    assert_eq!(s.origin.count(), 3);
}

/// A key without the scope an action needs is refused and nothing is forwarded.
pub async fn scope_missing(d: Dialect) {
    let s = setup(d, &[KeySpec::scopes("read"), KeySpec::scopes("trade")]).await;
    let (read_only, trade_only) = (s.keys[0].clone(), s.keys[1].clone());
    expect_denied(&s, &trade_req(d, &read_only), 403, "scope_missing").await;
    expect_denied(
        &s,
        &withdraw_req(d, &read_only, WITHDRAW_ADDR),
        403,
        "scope_missing",
    )
    .await;
    expect_denied(&s, &read_req(d, &trade_only), 403, "scope_missing").await;
    // The scopes they do hold still work.
    expect_forwarded(&s, &read_req(d, &read_only), &read_only, "read").await;
    expect_forwarded(&s, &trade_req(d, &trade_only), &trade_only, "trade").await;
}

/// A source IP outside the key's allowlist is refused, also when it claims another IP in
/// `X-Forwarded-For` (no trusted proxies are configured).
pub async fn ip_not_allowed(d: Dialect) {
    let s = setup(d, &[KeySpec::full(d)]).await;
    let k = s.key().clone();
    expect_denied_from(&s, OTHER_IP, &read_req(d, &k), 403, "ip_not_allowed").await;
    expect_denied_from(
        &s,
        OTHER_IP,
        &withdraw_req(d, &k, WITHDRAW_ADDR),
        403,
        "ip_not_allowed",
    )
    .await;
    let spoofed = read_req(d, &k).header("X-Forwarded-For", ALLOWED_IP.to_string());
    expect_denied_from(&s, OTHER_IP, &spoofed, 403, "ip_not_allowed").await;
    let spoofed = read_req(d, &k).header("Forwarded", format!("for={ALLOWED_IP}"));
    expect_denied_from(&s, OTHER_IP, &spoofed, 403, "ip_not_allowed").await;
    // Same key from the allowed address: forwarded.
    expect_forwarded(&s, &read_req(d, &k), &k, "read").await;
}

/// Flips one character of the signature wherever the dialect carries it.
pub fn corrupt_signature(d: Dialect, req: &Req) -> Req {
    fn flip(s: &str) -> String {
        let mut c: Vec<char> = s.chars().collect();
        let i = c.len() / 2;
        c[i] = if c[i] == 'a' { 'b' } else { 'a' };
        c.into_iter().collect()
    }
    match d {
        Dialect::Zaif => {
            let sig = req.header_value("Sign").expect("Sign");
            req.clone().replace_header("Sign", flip(&sig))
        }
        Dialect::Kraken => {
            let sig = req.header_value("API-Sign").expect("API-Sign");
            req.clone().replace_header("API-Sign", flip(&sig))
        }
        Dialect::Binance => {
            let mut r = req.clone();
            if let Some((path, q)) = req.target.split_once('?') {
                if let Some((pre, sig)) = q.rsplit_once("signature=") {
                    r.target = format!("{path}?{pre}signature={}", flip(sig));
                    return r;
                }
            }
            let body = String::from_utf8(req.body.clone()).expect("utf-8 body");
            let (pre, sig) = body.rsplit_once("signature=").expect("signature in body");
            r.body = format!("{pre}signature={}", flip(sig)).into_bytes();
            r
        }
    }
}

/// Replaces `from` by `to` in the body (or query, for a GET), keeping the signature.
pub fn tamper(req: &Req, from: &str, to: &str) -> Req {
    let mut r = req.clone();
    if req.method == "GET" {
        assert!(r.target.contains(from), "{from} not in {}", r.target);
        r.target = r.target.replacen(from, to, 1);
    } else {
        let body = String::from_utf8(req.body.clone()).expect("utf-8 body");
        assert!(body.contains(from), "{from} not in {body}");
        r.body = body.replacen(from, to, 1).into_bytes();
    }
    r
}

/// A wrong signature, or a right signature over different bytes: 401, not forwarded.
pub async fn bad_signature(d: Dialect) {
    let s = setup(d, &[KeySpec::full(d)]).await;
    let k = s.key().clone();
    expect_denied(
        &s,
        &corrupt_signature(d, &read_req(d, &k)),
        401,
        "invalid_signature",
    )
    .await;
    // Signed for one amount, sent with another.
    let w = withdraw_req(d, &k, WITHDRAW_ADDR);
    expect_denied(&s, &tamper(&w, "0.001", "0.101"), 401, "invalid_signature").await;
    // Signed with another key's secret.
    let mut wrong = k.clone();
    wrong.secret = match d {
        // Kraken secrets are base64.
        Dialect::Kraken => STANDARD.encode([7u8; 64]),
        _ => "x".repeat(64),
    };
    let forged = read_req(d, &wrong);
    expect_denied(&s, &forged, 401, "invalid_signature").await;
    // The untouched request still goes through.
    expect_forwarded(&s, &read_req(d, &k), &k, "read").await;
}

/// An API key the gateway does not know: 401, not forwarded.
pub async fn unknown_key(d: Dialect) {
    let s = setup(d, &[KeySpec::full(d)]).await;
    let mut k = s.key().clone();
    k.api_key = "UnknownKey0123456789UnknownKey0123456789UnknownKey0123456789abcd".into();
    expect_denied(&s, &read_req(d, &k), 401, "unknown_key").await;
}

/// Withdrawal to an address not on the key's list: 403, not forwarded.
pub async fn address_not_allowed(d: Dialect) {
    let s = setup(d, &[KeySpec::full(d)]).await;
    let k = s.key().clone();
    expect_denied(
        &s,
        &withdraw_req(d, &k, OTHER_ADDR),
        403,
        "address_not_allowed",
    )
    .await;
    // Case and whitespace variants of the allowed address are other addresses.
    let upper = WITHDRAW_ADDR.to_ascii_uppercase();
    expect_denied(&s, &withdraw_req(d, &k, &upper), 403, "address_not_allowed").await;
    let padded = format!("{WITHDRAW_ADDR} ");
    expect_denied(
        &s,
        &withdraw_req(d, &k, &padded),
        403,
        "address_not_allowed",
    )
    .await;
    expect_forwarded(&s, &withdraw_req(d, &k, WITHDRAW_ADDR), &k, "withdraw").await;
}

/// With the example's default cool-down (a day), a freshly registered address is refused.
pub async fn address_cooldown(d: Dialect) {
    let env = Env::from_example(d, |_| {});
    let s = setup_env(env, &[KeySpec::full(d)]).await;
    let k = s.key().clone();
    expect_denied(
        &s,
        &withdraw_req(d, &k, WITHDRAW_ADDR),
        403,
        "address_cooldown",
    )
    .await;
    // Other actions are not affected by the cool-down.
    expect_forwarded(&s, &read_req(d, &k), &k, "read").await;
}

/// Suspend, resume and revoke through the CLI while the gateway runs.
pub async fn suspend_resume_revoke(d: Dialect) {
    let s = setup(d, &[KeySpec::full(d)]).await;
    let k = s.key().clone();
    expect_forwarded(&s, &read_req(d, &k), &k, "read").await;

    s.env.set_key_status("suspend", &k);
    let code = poll_code(&s, d, &k, "key_suspended").await;
    assert_eq!(
        code.as_deref(),
        Some("key_suspended"),
        "suspension not applied"
    );
    expect_denied(&s, &read_req(d, &k), 403, "key_suspended").await;
    expect_denied(
        &s,
        &withdraw_req(d, &k, WITHDRAW_ADDR),
        403,
        "key_suspended",
    )
    .await;

    s.env.set_key_status("resume", &k);
    let code = poll_code(&s, d, &k, "").await;
    assert_eq!(code, None, "resume not applied");
    expect_forwarded(&s, &read_req(d, &k), &k, "read").await;

    s.env.set_key_status("revoke", &k);
    let code = poll_code(&s, d, &k, "key_revoked").await;
    assert_eq!(
        code.as_deref(),
        Some("key_revoked"),
        "revocation not applied"
    );
    expect_denied(&s, &trade_req(d, &k), 403, "key_revoked").await;
}

/// Sends fresh reads for up to 2 s until the response's error code is `want` (`""`: a
/// forwarded 200). Returns the last code seen (`None` for a 200).
async fn poll_code(s: &Setup, d: Dialect, k: &TestKey, want: &str) -> Option<String> {
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    loop {
        let r = s.gw.request(&read_req(d, k)).await;
        let code = if r.status == 200 { None } else { r.code() };
        if code.as_deref().unwrap_or("") == want || std::time::Instant::now() > deadline {
            return code;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A signed request to an endpoint missing from the route table: 404, not forwarded.
pub async fn unknown_endpoint(d: Dialect) {
    let s = setup(d, &[KeySpec::full(d)]).await;
    let k = s.key().clone();
    let nonce = || next_nonce().to_string();
    let reqs: Vec<Req> = match d {
        Dialect::Zaif => vec![
            zaif::call(&k, "get_deposit_address_everything", &[]),
            // A real Zaif endpoint the example leaves out on purpose (futures).
            policy_signed(
                d,
                &k,
                "POST",
                "/fapi",
                &[("method", "get_info")],
                &nonce(),
                false,
            ),
            // No selector at all on the selector path.
            zaif::signed(&k, &form(&[("nonce", &nonce())])),
        ],
        Dialect::Binance => vec![
            binance::call(
                &k,
                "GET",
                "/api/v3/historicalTrades",
                &[("symbol", "BTCUSDT")],
                now_ms(),
            ),
            binance::call(
                &k,
                "POST",
                "/sapi/v1/sub-account/transfer/subToMaster",
                &[("asset", "BTC"), ("amount", "1")],
                now_ms(),
            ),
        ],
        Dialect::Kraken => vec![
            kraken::call(&k, "/0/private/AddOrderBatch", &[("pair", "XBTUSD")]),
            kraken::call(&k, "/0/private/WalletTransfer", &[("asset", "XBT")]),
        ],
    };
    for r in reqs {
        expect_denied(&s, &r, 404, "unknown_endpoint").await;
    }
}

/// A public endpoint: forwarded without credentials and without an assertion.
pub async fn public_forwarded(d: Dialect) {
    let s = setup(d, &[KeySpec::full(d)]).await;
    let target = match d {
        Dialect::Zaif => "/api/1/ticker/btc_jpy",
        Dialect::Binance => "/api/v3/depth?symbol=BTCUSDT&limit=5",
        Dialect::Kraken => "/0/public/Ticker?pair=XBTUSD",
    };
    let before = s.origin.count();
    // A forged assertion on a public request must not reach the exchange either.
    let req = Req::new("GET", target).header("X-Keyguard-Assertion", "forged.forged.forged");
    let resp = s.gw.request(&req).await;
    resp.assert_forwarded_ok();
    let rec = s.origin.one_since(before);
    assert_eq!(rec.target, target);
    assert!(
        !rec.has_header("x-keyguard-assertion"),
        "a public request carries no assertion (and never the client's): {rec:#?}"
    );

    // Credential headers on a public endpoint never reach the exchange. (The gateway
    // parses them like on any request and refuses the unsigned leftovers with a 401;
    // forwarding without them would be fine too.)
    let k = s.key().clone();
    let signed = read_req(d, &k);
    let mut req = Req::new("GET", target);
    for (n, v) in &signed.headers {
        if client_auth_headers(d).contains(&n.to_ascii_lowercase().as_str()) {
            req = req.header(n, v);
        }
    }
    let before = s.origin.count();
    let resp = s.gw.request(&req).await;
    if resp.status == 200 {
        let rec = s.origin.one_since(before);
        for h in client_auth_headers(d) {
            assert!(
                !rec.has_header(h),
                "{h} forwarded on a public request: {rec:#?}"
            );
        }
    } else {
        assert_eq!(resp.status, 401, "{}", resp.text());
        s.origin
            .assert_unchanged(before, "public request with credentials");
    }
}

/// A private endpoint without any credentials: 401, not forwarded (default deny, not
/// "public unless signed").
pub async fn missing_credentials(d: Dialect) {
    let s = setup(d, &[KeySpec::full(d)]).await;
    let k = s.key().clone();
    for req in [
        read_req(d, &k),
        trade_req(d, &k),
        withdraw_req(d, &k, WITHDRAW_ADDR),
    ] {
        let mut bare = req.clone();
        for h in client_auth_headers(d) {
            bare = bare.without_header(h);
        }
        if d == Dialect::Binance {
            // Binance's signature is a parameter and stays: the request is signed but names
            // no key, which must count as no credentials at all.
            let signed = bare.target.contains("signature=")
                || String::from_utf8_lossy(&bare.body).contains("signature=");
            assert!(signed, "the Binance request lost its signature: {bare:?}");
        }
        expect_denied(&s, &bare, 401, "missing_credentials").await;
    }
    // A signature without its key.
    if d != Dialect::Binance {
        let sig_header = client_auth_headers(d)[1];
        let req = read_req(d, &k).without_header(client_auth_headers(d)[0]);
        assert!(req.header_value(sig_header).is_some());
        expect_denied(&s, &req, 401, "missing_credentials").await;
    }
}

/// A withdrawal whose policy facts are incomplete (no address, an allowlisted address for
/// another asset): refused, not forwarded.
pub async fn withdraw_facts_checked(d: Dialect) {
    let s = setup(d, &[KeySpec::full(d)]).await;
    let k = s.key().clone();
    let (path, asset_field, amount_field, other_asset) = match d {
        Dialect::Zaif => (zaif::PATH, "currency", "amount", "eth"),
        Dialect::Binance => (binance::WITHDRAW_PATH, "coin", "amount", "ETH"),
        Dialect::Kraken => (kraken::WITHDRAW_PATH, "asset", "amount", "XETH"),
    };
    let call = |params: &[(&str, &str)]| match d {
        Dialect::Zaif => zaif::call(&k, "withdraw", params),
        Dialect::Binance => binance::call(&k, "POST", path, params, now_ms()),
        Dialect::Kraken => {
            let mut all = params.to_vec();
            all.push(("key", "test-wallet"));
            kraken::call(&k, path, &all)
        }
    };
    // No address at all. Kraken's request still names its destination by withdrawal
    // key (`test-wallet`), which this key's allowlist does not name.
    let req = call(&[(asset_field, d.withdraw_asset()), (amount_field, "0.001")]);
    match d {
        Dialect::Kraken => expect_denied(&s, &req, 403, "address_not_allowed").await,
        _ => expect_denied(&s, &req, 400, "invalid_field").await,
    };
    // No amount.
    let req = call(&[
        (asset_field, d.withdraw_asset()),
        ("address", WITHDRAW_ADDR),
    ]);
    expect_denied(&s, &req, 400, "invalid_field").await;
    // The allowlisted address, for an asset it is not allowlisted for.
    let req = call(&[
        (asset_field, other_asset),
        ("address", WITHDRAW_ADDR),
        (amount_field, "0.001"),
    ]);
    expect_denied(&s, &req, 403, "address_not_allowed").await;
    // Asset codes compare case-insensitively.
    let lower = d.withdraw_asset().to_ascii_lowercase();
    let upper = d.withdraw_asset().to_ascii_uppercase();
    for asset in [lower, upper] {
        let req = call(&[
            (asset_field, asset.as_str()),
            ("address", WITHDRAW_ADDR),
            (amount_field, "0.001"),
        ]);
        expect_forwarded(&s, &req, &k, "withdraw").await;
    }
}
