//! Strict parsing through the real gateway: every ambiguous request is refused with its
//! code, and the upstream never sees it. Each test ends with a control request that the
//! same gateway forwards, so a refusal cannot come from a broken setup.
//!
//! What hyper itself refuses before the gateway's code runs (observed with hyper 1.12: a
//! bare `400` with an empty body, so no error code or request id for the client; the
//! audit log still gets one `malformed_request` line, see the last section; the tests
//! accept any refusal there, as long as nothing is forwarded): NUL, bare CR and DEL in
//! header values, obs-fold continuation lines, conflicting `Content-Length`s, and raw
//! non-ASCII bytes in the request target. A raw `\` in the target passes hyper and is
//! refused by the path rule. hyper *normalizes* (so the gateway's own
//! rules for these never fire) `Content-Length` with `Transfer-Encoding` (CL dropped,
//! connection closed after the response) and repeated identical `Content-Length`s (folded
//! into one); the tests check the upstream still sees one unambiguous request. A bare LF ends a header line in hyper's parser, so it splits the value
//! into a second header (the test injects a second `Key` that way and expects a refusal).
//! HTAB and obs-text (0x80-0xFF) pass hyper; the gateway refuses HTAB everywhere and
//! non-printable bytes in credential headers.

mod utils;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use utils::scenarios::{expect_denied, expect_forwarded, setup, setup_env, Setup};
use utils::*;

/// A gateway for `d` with one read,trade,withdraw key, and that key.
async fn full(d: Dialect) -> (Setup, TestKey) {
    let s = setup(d, &[KeySpec::full(d)]).await;
    let k = s.key().clone();
    (s, k)
}

/// [`full`] with `tweak` applied to the config.
async fn full_with(d: Dialect, tweak: impl FnOnce(&mut toml::Table)) -> (Setup, TestKey) {
    let s = setup_env(Env::new(d, tweak), &[KeySpec::full(d)]).await;
    let k = s.key().clone();
    (s, k)
}

/// Sends exact bytes and asserts the request was refused (an error status, or the
/// connection closed without a response) and not forwarded. Returns the response, if any.
async fn refused_raw(s: &Setup, raw: &[u8], what: &str) -> Option<Resp> {
    let before = s.origin.count();
    let r = s.gw.send_bytes(ALLOWED_IP, raw).await;
    if let Ok(resp) = &r {
        assert!(
            resp.status >= 400,
            "{what}: expected a refusal, got {} {:?}",
            resp.status,
            resp.text()
        );
    }
    s.origin.assert_unchanged(before, what);
    r.ok()
}

/// `req` rendered as the exact bytes sent to the gateway (for byte-level malformations
/// the request builder cannot express, applied to these bytes afterwards).
fn bytes_of(s: &Setup, req: &Req) -> Vec<u8> {
    req.to_bytes(&s.gw.addr.to_string())
}

fn replace_bytes(hay: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    let i = hay
        .windows(from.len())
        .position(|w| w == from)
        .expect("pattern present");
    let mut out = hay[..i].to_vec();
    out.extend_from_slice(to);
    out.extend_from_slice(&hay[i + from.len()..]);
    out
}

// ---------------------------------------------------------------------------------------
// Paths
// ---------------------------------------------------------------------------------------

async fn paths_refused(s: &Setup, targets: &[&str]) {
    let k = s.key().clone();
    for t in targets {
        let req = zaif::read(&k).target(t);
        expect_denied(s, &req, 400, "invalid_path").await;
    }
    expect_forwarded(s, &zaif::read(&k), &k, "read").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dot_segments_plain_and_encoded() {
    let (s, _) = full(Dialect::Zaif).await;
    paths_refused(
        &s,
        &[
            "/tapi/../tapi",
            "/x/../tapi",
            "/./tapi",
            "/tapi/.",
            "/tapi/..",
            "/%2e%2e/tapi",
            "/%2E%2E/tapi",
            "/.%2e/tapi",
            "/%2e/tapi",
            "/tapi/%2e",
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encoded_slash_backslash_semicolon_nul() {
    let (s, _) = full(Dialect::Zaif).await;
    paths_refused(
        &s,
        &[
            "/tapi%2f",
            "/%2ftapi",
            "/tapi%2F..%2Ftapi",
            "/tapi%5c",
            "/%5Ctapi",
            "/tapi%3bx=y",
            "/tapi%3B",
            "/tapi%00",
            "/tapi%00.json",
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encoded_slash_in_binance_and_kraken_paths() {
    let (s, k) = full(Dialect::Binance).await;
    for path in [
        "/api%2fv3/account",
        "/api/v3%2Faccount",
        "/api/v3/account%00",
    ] {
        let req = binance::call(&k, "GET", path, &[], now_ms());
        expect_denied(&s, &req, 400, "invalid_path").await;
    }
    expect_forwarded(&s, &binance::read(&k), &k, "read").await;
    drop(s);

    let (s, k) = full(Dialect::Kraken).await;
    // Signed over the odd path, so only the path rule can refuse it.
    for path in ["/0/private%2FBalance", "/0/private/%2e%2e/private/Balance"] {
        let req = kraken::call(&k, path, &[]);
        expect_denied(&s, &req, 400, "invalid_path").await;
    }
    expect_forwarded(&s, &kraken::read(&k), &k, "read").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn double_encoding() {
    let (s, _) = full(Dialect::Zaif).await;
    paths_refused(
        &s,
        &[
            "/%252e%252e/tapi",
            "/tapi%252f",
            "/%25%32%65/tapi",
            "/tapi%25",
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_segments() {
    let (s, _) = full(Dialect::Zaif).await;
    paths_refused(&s, &["//tapi", "/tapi//", "///tapi"]).await;
    // A public path too.
    let public = Req::new("GET", "/api/1//ticker/btc_jpy");
    expect_denied(&s, &public, 400, "invalid_path").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path_parameters() {
    let (s, _) = full(Dialect::Zaif).await;
    paths_refused(&s, &["/tapi;x=y", "/tapi;", "/;/tapi"]).await;
    let public = Req::new("GET", "/api/1/ticker/btc_jpy;jsessionid=1");
    expect_denied(&s, &public, 400, "invalid_path").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_utf8_paths() {
    let (s, k) = full(Dialect::Zaif).await;
    paths_refused(
        &s,
        &[
            "/tapi%ff",
            "/tapi%c3%28",
            "/%c0%ae%c0%ae/tapi",
            "/tapi%e2%82",
        ],
    )
    .await;
    // Raw bytes >= 0x80 in the target (hyper or the path rule refuses them).
    let raw = bytes_of(&s, &zaif::read(&k));
    let raw = replace_bytes(&raw, b"POST /tapi ", b"POST /tapi\xff ");
    refused_raw(&s, &raw, "raw 0xff in path").await;
    let raw = bytes_of(&s, &zaif::read(&k));
    let raw = replace_bytes(&raw, b"POST /tapi ", "POST /t\u{e4}pi ".as_bytes());
    refused_raw(&s, &raw, "raw UTF-8 in path").await;
    // A raw backslash passes hyper; the path rule refuses it.
    let req = zaif::read(&k).target("/x\\..\\tapi");
    expect_denied(&s, &req, 400, "invalid_path").await;
    let req = zaif::read(&k).target("/tapi\\");
    expect_denied(&s, &req, 400, "invalid_path").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absolute_form_authority_must_match_host() {
    let (s, k) = full(Dialect::Zaif).await;
    let gw = s.gw.addr.to_string();
    for target in [
        "http://evil.example/tapi".to_owned(),
        "http://127.0.0.1:1/tapi".to_owned(),
        format!("http://user@{gw}/tapi"),
        format!("http://127.0.0.9:{}/tapi", s.gw.addr.port()),
    ] {
        let req = zaif::read(&k).target(&target);
        expect_denied(&s, &req, 400, "invalid_target").await;
    }
    // Matching authority (case-insensitive): accepted, forwarded in origin form.
    let req = zaif::read(&k).target(&format!("http://{gw}/tapi"));
    let rec = expect_forwarded_any_target(&s, &req, &k).await;
    assert_eq!(rec.target, "/tapi");
}

async fn expect_forwarded_any_target(s: &Setup, req: &Req, k: &TestKey) -> Recorded {
    let before = s.origin.count();
    let resp = s.gw.request(req).await;
    resp.assert_forwarded_ok();
    let rec = s.origin.one_since(before);
    check_forwarded(s.env.dialect, &s.jwks, &rec, k, "read");
    rec
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_host() {
    let (s, k) = full(Dialect::Zaif).await;
    let gw = s.gw.addr.to_string();
    for host in [gw.as_str(), "evil.example"] {
        let req = zaif::read(&k).header("Host", host);
        expect_denied(&s, &req, 400, "invalid_target").await;
    }
    expect_forwarded(&s, &zaif::read(&k), &k, "read").await;
}

// ---------------------------------------------------------------------------------------
// Parameters
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_form_keys() {
    let (s, k) = full(Dialect::Zaif).await;
    let n = next_nonce();
    for body in [
        format!("method=get_info2&nonce={n}&nonce={}", n + 1),
        format!("method=get_info2&nonce={n}&nonce={n}"),
        format!("method=get_info2&method=withdraw&nonce={n}"),
        // Equal after decoding.
        format!("method=get_info2&nonce={n}&%6eonce={}", n + 1),
        format!("method=get_info2&nonce={n}&me%74hod=withdraw"),
    ] {
        expect_denied(&s, &zaif::signed(&k, &body), 400, "duplicate_parameter").await;
    }
    expect_forwarded(&s, &zaif::read(&k), &k, "read").await;
    drop(s);

    let (s, k) = full(Dialect::Kraken).await;
    let n = next_nonce().to_string();
    let body = format!("nonce={n}&asset=XBT&amount=0.001&amount=100&key=w&address={WITHDRAW_ADDR}");
    let req = kraken::signed_form(&k, kraken::WITHDRAW_PATH, &n, &body);
    expect_denied(&s, &req, 400, "duplicate_parameter").await;
    expect_forwarded(&s, &kraken::read(&k), &k, "read").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_query_keys_and_query_body_twins() {
    let (s, k) = full(Dialect::Binance).await;
    let query = format!("symbol=BTCUSDT&symbol=ETHUSDT&timestamp={}", now_ms());
    let req = binance::signed_in_query(&k, "GET", "/api/v3/openOrders", &query);
    expect_denied(&s, &req, 400, "duplicate_parameter").await;
    // The signature twice.
    let q = binance::sign_query(&k, &format!("timestamp={}", now_ms()), "");
    let sig = q.rsplit_once("signature=").unwrap().1.to_owned();
    let req = binance::keyed(
        &k,
        "GET",
        &format!("{}?{q}&signature={sig}", binance::READ_PATH),
    );
    expect_denied(&s, &req, 400, "duplicate_parameter").await;
    // The same parameter in the query and in the body.
    let query = "symbol=BTCUSDT";
    let body = format!(
        "symbol=ETHUSDT&side=BUY&type=LIMIT&timeInForce=GTC&quantity=1&price=1&timestamp={}",
        now_ms()
    );
    let req = binance::signed_split(&k, binance::TRADE_PATH, query, &body);
    expect_denied(&s, &req, 400, "duplicate_parameter").await;
    expect_forwarded(&s, &binance::read(&k), &k, "read").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn semicolon_as_parameter_separator() {
    let (s, k) = full(Dialect::Binance).await;
    let query = format!("symbol=BTCUSDT;recvWindow=60000&timestamp={}", now_ms());
    let req = binance::signed_in_query(&k, "GET", "/api/v3/openOrders", &query);
    expect_denied(&s, &req, 400, "invalid_parameter").await;
    expect_forwarded(&s, &binance::read(&k), &k, "read").await;
    drop(s);

    let (s, k) = full(Dialect::Zaif).await;
    let n = next_nonce();
    for body in [
        format!("method=get_info2;method=withdraw&nonce={n}"),
        format!("method=get_info2&nonce={n};x=1"),
    ] {
        expect_denied(&s, &zaif::signed(&k, &body), 400, "invalid_parameter").await;
    }
    expect_forwarded(&s, &zaif::read(&k), &k, "read").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_and_body_where_the_dialect_has_no_query() {
    let (s, k) = full(Dialect::Zaif).await;
    for target in ["/tapi?method=withdraw", "/tapi?", "/tapi?x=1"] {
        let req = zaif::read(&k).target(target);
        expect_denied(&s, &req, 400, "invalid_parameter").await;
    }
    expect_forwarded(&s, &zaif::read(&k), &k, "read").await;
    drop(s);

    let (s, k) = full(Dialect::Kraken).await;
    for target in ["/0/private/Balance?nonce=1", "/0/private/Balance?"] {
        let req = kraken::read(&k).target(target);
        expect_denied(&s, &req, 400, "invalid_parameter").await;
    }
    expect_forwarded(&s, &kraken::read(&k), &k, "read").await;
}

async fn kraken_json_refused(s: &Setup, path: &str, bodies: &[String], status: u16, code: &str) {
    let k = s.key().clone();
    for body in bodies {
        // The signed nonce is the first one in the body.
        let nonce = body
            .split("\"nonce\":\"")
            .nth(1)
            .and_then(|r| r.split('"').next())
            .expect("nonce in body")
            .to_owned();
        let req = kraken::signed_json(&k, path, &nonce, body);
        let before = s.origin.count();
        let resp = s.gw.request(&req).await;
        assert_eq!(
            (resp.status, resp.code().as_deref()),
            (status, Some(code)),
            "body {body}: {:?}",
            resp.text()
        );
        s.origin.assert_unchanged(before, body);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_json_keys_including_after_unescaping() {
    let (s, k) = full(Dialect::Kraken).await;
    let n = next_nonce();
    let m = n + 1;
    kraken_json_refused(
        &s,
        kraken::TRADE_PATH,
        &[
            format!(r#"{{"nonce":"{n}","nonce":"{m}","ordertype":"market","type":"buy","volume":"1","pair":"XBTUSD"}}"#),
            format!(r#"{{"nonce":"{n}","no\u006ece":"{m}","ordertype":"market","type":"buy","volume":"1","pair":"XBTUSD"}}"#),
            format!(r#"{{"nonce":"{n}","ordertype":"market","type":"buy","volume":"1","vol\u0075me":"100","pair":"XBTUSD"}}"#),
            format!(r#"{{"nonce":"{n}","ordertype":"market","type":"buy","volume":"1","pair":"XBTUSD","pair":"ETHUSD"}}"#),
        ],
        400,
        "invalid_json",
    )
    .await;
    expect_forwarded(&s, &kraken::trade(&k), &k, "trade").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_standard_json_numbers() {
    let (s, k) = full(Dialect::Kraken).await;
    let bodies: Vec<String> = ["NaN", "Infinity", "-Infinity", "0x10", "+1", "01", ".5", "1.", "1e", "--1"]
        .iter()
        .map(|v| {
            format!(
                r#"{{"nonce":"{}","ordertype":"limit","type":"buy","volume":{v},"pair":"XBTUSD","price":"1"}}"#,
                next_nonce()
            )
        })
        .collect();
    kraken_json_refused(&s, kraken::TRADE_PATH, &bodies, 400, "invalid_json").await;
    // A number somewhere the policy does not read is still parsed strictly.
    let bodies = vec![format!(
        r#"{{"nonce":"{}","ordertype":"limit","type":"buy","volume":"1","pair":"XBTUSD","price":"1","userref":NaN}}"#,
        next_nonce()
    )];
    kraken_json_refused(&s, kraken::TRADE_PATH, &bodies, 400, "invalid_json").await;
    expect_forwarded(&s, &kraken::trade(&k), &k, "trade").await;
}

/// A Kraken JSON body: a fresh nonce, then `fields` (name, raw JSON value) in order, the
/// value of `field` replaced by the raw JSON `v`.
fn kraken_json_with(fields: &[(&str, &str)], field: &str, v: &str) -> String {
    let rest: Vec<String> = fields
        .iter()
        .map(|&(k, value)| format!(r#""{k}":{}"#, if k == field { v } else { value }))
        .collect();
    format!(r#"{{"nonce":"{}",{}}}"#, next_nonce(), rest.join(","))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_json_type_for_a_policy_field() {
    let (s, k) = full(Dialect::Kraken).await;
    let trade = |field: &str, v: &str| {
        let fields = [
            ("ordertype", r#""limit""#),
            ("type", r#""buy""#),
            ("volume", r#""1""#),
            ("pair", r#""XBTUSD""#),
            ("price", r#""1""#),
        ];
        kraken_json_with(&fields, field, v)
    };
    let address = format!(r#""{WITHDRAW_ADDR}""#);
    let withdraw = |field: &str, v: &str| {
        let fields = [
            ("asset", r#""XBT""#),
            ("key", r#""w""#),
            ("amount", r#""0.001""#),
            ("address", address.as_str()),
        ];
        kraken_json_with(&fields, field, v)
    };
    kraken_json_refused(
        &s,
        kraken::TRADE_PATH,
        &[
            trade("volume", r#"{"a":1}"#),
            trade("volume", "[1]"),
            trade("price", "true"),
            trade("price", "null"),
            trade("pair", r#"{"x":"XBTUSD"}"#),
        ],
        400,
        "invalid_json",
    )
    .await;
    kraken_json_refused(
        &s,
        kraken::WITHDRAW_PATH,
        &[
            withdraw("amount", r#"{"value":"0.001"}"#),
            withdraw("amount", r#"["0.001"]"#),
            withdraw("address", format!(r#"["{WITHDRAW_ADDR}"]"#).as_str()),
            withdraw("asset", r#"{"XBT":1}"#),
        ],
        400,
        "invalid_json",
    )
    .await;
    expect_forwarded(&s, &kraken::withdraw(&k, WITHDRAW_ADDR), &k, "withdraw").await;
    drop(s);

    // Form values that are not exact decimals where the policy reads an amount.
    let (s, k) = full(Dialect::Zaif).await;
    for amount in ["abc", "-1", "0x10", "1,5", "NaN", " 1"] {
        let req = zaif::call(
            &k,
            "withdraw",
            &[
                ("currency", "btc"),
                ("address", WITHDRAW_ADDR),
                ("amount", amount),
            ],
        );
        expect_denied(&s, &req, 400, "invalid_field").await;
    }
    expect_forwarded(&s, &zaif::withdraw(&k, WITHDRAW_ADDR), &k, "withdraw").await;
}

// ---------------------------------------------------------------------------------------
// Method overrides and credential headers
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn method_override_headers() {
    let (s, k) = full(Dialect::Zaif).await;
    for name in [
        "X-HTTP-Method-Override",
        "X-HTTP-Method",
        "X-Method-Override",
        "X_HTTP_METHOD_OVERRIDE",
        "x-http-method-override",
    ] {
        let req = zaif::read(&k).header(name, "DELETE");
        expect_denied(&s, &req, 400, "method_override").await;
    }
    expect_forwarded(&s, &zaif::read(&k), &k, "read").await;
    drop(s);

    let (s, k) = full(Dialect::Binance).await;
    let req = binance::read(&k).header("X-HTTP-Method-Override", "POST");
    expect_denied(&s, &req, 400, "method_override").await;
    expect_forwarded(&s, &binance::read(&k), &k, "read").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn method_parameter() {
    let (s, k) = full(Dialect::Zaif).await;
    for name in ["_method", "_METHOD"] {
        let req = zaif::call(&k, "get_info2", &[(name, "DELETE")]);
        expect_denied(&s, &req, 400, "method_override").await;
    }
    expect_forwarded(&s, &zaif::read(&k), &k, "read").await;
    drop(s);

    let (s, k) = full(Dialect::Binance).await;
    let req = binance::read_at(&k, &[("_method", "POST")], now_ms());
    expect_denied(&s, &req, 400, "method_override").await;
    expect_forwarded(&s, &binance::read(&k), &k, "read").await;
    drop(s);

    let (s, k) = full(Dialect::Kraken).await;
    let req = kraken::call_with(&k, kraken::READ_PATH, &[("_method", "GET")], true);
    expect_denied(&s, &req, 400, "method_override").await;
    let req = kraken::call(&k, kraken::READ_PATH, &[("_Method", "GET")]);
    expect_denied(&s, &req, 400, "method_override").await;
    expect_forwarded(&s, &kraken::read(&k), &k, "read").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_or_comma_joined_auth_headers() {
    let (s, k) = full(Dialect::Zaif).await;
    let r = zaif::read(&k);
    let key = k.api_key.clone();
    let sign = r.header_value("Sign").unwrap();
    for req in [
        r.clone().header("Key", &key),
        r.clone().header("Sign", &sign),
        r.clone().replace_header("Key", format!("{key},{key}")),
        r.clone().replace_header("Key", format!("{key}, other")),
        r.clone().replace_header("Sign", format!("{sign},{sign}")),
    ] {
        expect_denied(&s, &req, 400, "invalid_header").await;
    }
    expect_forwarded(&s, &zaif::read(&k), &k, "read").await;
    drop(s);

    let (s, k) = full(Dialect::Binance).await;
    let r = binance::read(&k);
    for req in [
        r.clone().header("X-MBX-APIKEY", &k.api_key),
        r.clone().header("x-mbx-apikey", "other"),
        r.clone()
            .replace_header("X-MBX-APIKEY", format!("{},{}", k.api_key, k.api_key)),
    ] {
        expect_denied(&s, &req, 400, "invalid_header").await;
    }
    expect_forwarded(&s, &binance::read(&k), &k, "read").await;
    drop(s);

    let (s, k) = full(Dialect::Kraken).await;
    let r = kraken::read(&k);
    let sign = r.header_value("API-Sign").unwrap();
    for req in [
        r.clone().header("API-Sign", &sign),
        r.clone().header("Api-Key", &k.api_key),
    ] {
        expect_denied(&s, &req, 400, "invalid_header").await;
    }
    expect_forwarded(&s, &kraken::read(&k), &k, "read").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn underscore_twins_of_auth_headers() {
    let (s, k) = full(Dialect::Binance).await;
    let r = binance::read(&k);
    for req in [
        r.clone().header("X_MBX_APIKEY", &k.api_key),
        r.clone().header("X_MBX_APIKEY", "attacker"),
        r.clone()
            .without_header("X-MBX-APIKEY")
            .header("X_MBX_APIKEY", &k.api_key),
        r.clone().header("x-mbx_apikey", &k.api_key),
    ] {
        expect_denied(&s, &req, 400, "invalid_header").await;
    }
    expect_forwarded(&s, &binance::read(&k), &k, "read").await;
    drop(s);

    let (s, k) = full(Dialect::Kraken).await;
    let r = kraken::read(&k);
    let sign = r.header_value("API-Sign").unwrap();
    for req in [
        r.clone().header("API_Sign", &sign),
        r.clone().header("Api_Key", &k.api_key),
        r.clone()
            .without_header("API-Sign")
            .header("API_Sign", &sign),
    ] {
        expect_denied(&s, &req, 400, "invalid_header").await;
    }
    expect_forwarded(&s, &kraken::read(&k), &k, "read").await;
}

// ---------------------------------------------------------------------------------------
// Bodies
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_types_the_dialect_does_not_use() {
    let (s, k) = full(Dialect::Zaif).await;
    for ct in [
        "text/plain",
        "multipart/form-data; boundary=xyz",
        "application/json",
        "application/x-www-form-urlencoded; charset=iso-8859-1",
        "application/x-www-form-urlencoded; boundary=x",
        "application/xml",
    ] {
        let req = zaif::read(&k).replace_header("Content-Type", ct);
        expect_denied(&s, &req, 415, "unsupported_media_type").await;
    }
    // A body without any content type.
    let req = zaif::read(&k).without_header("Content-Type");
    expect_denied(&s, &req, 415, "unsupported_media_type").await;
    // A compressed body would be signed as one thing and read as another.
    let req = zaif::read(&k).header("Content-Encoding", "gzip");
    expect_denied(&s, &req, 415, "unsupported_media_type").await;
    // Two content types.
    let req = zaif::read(&k).header("Content-Type", "application/x-www-form-urlencoded");
    expect_denied(&s, &req, 400, "invalid_header").await;
    // Controls: parameters and case that mean the same type are accepted.
    let req = zaif::read(&k).replace_header(
        "Content-Type",
        "Application/X-WWW-Form-Urlencoded; charset=UTF-8",
    );
    expect_forwarded(&s, &req, &k, "read").await;
    drop(s);

    let (s, k) = full(Dialect::Binance).await;
    let req = binance::trade(&k).replace_header("Content-Type", "application/json");
    expect_denied(&s, &req, 415, "unsupported_media_type").await;
    let req = binance::trade(&k).replace_header("Content-Type", "text/plain");
    expect_denied(&s, &req, 415, "unsupported_media_type").await;
    expect_forwarded(&s, &binance::trade(&k), &k, "trade").await;
    drop(s);

    let (s, k) = full(Dialect::Kraken).await;
    for ct in [
        "text/plain",
        "multipart/form-data; boundary=a",
        "application/json; charset=utf-16",
    ] {
        let req = kraken::read(&k).replace_header("Content-Type", ct);
        expect_denied(&s, &req, 415, "unsupported_media_type").await;
    }
    expect_forwarded(&s, &kraken::read(&k), &k, "read").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_over_max_body_bytes() {
    let (s, k) = full_with(Dialect::Zaif, |cfg| set(cfg, "server.max_body_bytes", 1024)).await;
    let big = "a".repeat(2000);
    let req = zaif::call(&k, "get_info2", &[("comment", &big)]);
    expect_denied(&s, &req, 413, "body_too_large").await;
    // Chunked, with no Content-Length to refuse up front.
    let req = zaif::call(&k, "get_info2", &[("comment", &big)]);
    let raw = chunked(&s, &req, 700);
    let before = s.origin.count();
    let resp = s.gw.send_bytes(ALLOWED_IP, &raw).await.expect("a response");
    resp.assert_error(413, "body_too_large");
    s.origin.assert_unchanged(before, "chunked over limit");
    // Controls: a body under the limit, plain and chunked, is forwarded; the upstream
    // gets a Content-Length and no Transfer-Encoding.
    let small = "a".repeat(500);
    let req = zaif::call(&k, "get_info2", &[("comment", &small)]);
    expect_forwarded(&s, &req, &k, "read").await;
    let req = zaif::call(&k, "get_info2", &[("comment", &small)]);
    let before = s.origin.count();
    let resp =
        s.gw.send_bytes(ALLOWED_IP, &chunked(&s, &req, 100))
            .await
            .expect("a response");
    resp.assert_forwarded_ok();
    let rec = s.origin.one_since(before);
    assert_eq!(rec.body, req.body);
    assert!(!rec.has_header("transfer-encoding"), "{rec:#?}");
    assert_eq!(
        rec.header("content-length"),
        Some(req.body.len().to_string())
    );
}

/// `req` with its body sent as chunks of `size` bytes.
fn chunked(s: &Setup, req: &Req, size: usize) -> Vec<u8> {
    let head = req
        .clone()
        .no_content_length()
        .header("Transfer-Encoding", "chunked")
        .body(b"");
    let mut raw = bytes_of(s, &head);
    for c in req.body.chunks(size) {
        raw.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
        raw.extend_from_slice(c);
        raw.extend_from_slice(b"\r\n");
    }
    raw.extend_from_slice(b"0\r\n\r\n");
    raw
}

// ---------------------------------------------------------------------------------------
// Header bytes and framing
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cr_lf_nul_in_header_values() {
    let (s, k) = full(Dialect::Zaif).await;
    // Refused by hyper's parser: the gateway never sees them.
    for (what, value) in [
        ("NUL", &b"a\x00b"[..]),
        ("bare CR", &b"a\rb"[..]),
        ("DEL", &b"a\x7fb"[..]),
        ("CR in credential", &b"x\rKey: y"[..]),
    ] {
        let raw = bytes_of(&s, &zaif::read(&k).header("X-Note", value));
        refused_raw(&s, &raw, what).await;
    }
    // A bare LF ends the header line in hyper's parser: "X-Note: a\nKey: k" smuggles a
    // second Key header, which the gateway then refuses as a repeated credential.
    let req = zaif::read(&k).header("X-Note", format!("a\nKey: {}", k.api_key));
    expect_denied(&s, &req, 400, "invalid_header").await;
    // obs-fold continuation line.
    let raw = bytes_of(&s, &zaif::read(&k).header("X-Note", "a\r\n b"));
    refused_raw(&s, &raw, "obs-fold").await;
    // Passed by hyper, refused by the gateway: HTAB inside a value.
    let req = zaif::read(&k).header("X-Note", "a\tb");
    expect_denied(&s, &req, 400, "invalid_header").await;
    // Non-ASCII in a credential header.
    let r = zaif::read(&k);
    let mut key_bytes = k.api_key.as_bytes().to_vec();
    key_bytes.push(0xff);
    let req = r.replace_header("Key", key_bytes);
    expect_denied(&s, &req, 400, "invalid_header").await;
    expect_forwarded(&s, &zaif::read(&k), &k, "read").await;
}

/// `req` with both `Content-Length` and `Transfer-Encoding: chunked` (CL first).
fn cl_and_te(s: &Setup, req: &Req) -> Vec<u8> {
    let len = req.body.len();
    let mut raw = bytes_of(s, &req.clone().no_content_length().body(b""));
    raw = replace_bytes(
        &raw,
        b"\r\n\r\n",
        format!("\r\nContent-Length: {len}\r\nTransfer-Encoding: chunked\r\n\r\n").as_bytes(),
    );
    raw.extend_from_slice(format!("{len:x}\r\n").as_bytes());
    raw.extend_from_slice(&req.body);
    raw.extend_from_slice(b"\r\n0\r\n\r\n");
    raw
}

/// Conflicting `Content-Length`s: hyper refuses them (400) before the gateway runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflicting_content_lengths() {
    let (s, k) = full(Dialect::Zaif).await;
    let raw = bytes_of(&s, &zaif::read(&k).header("Content-Length", "1"));
    refused_raw(&s, &raw, "two different Content-Lengths").await;
    expect_forwarded(&s, &zaif::read(&k), &k, "read").await;
}

/// `Content-Length` with `Transfer-Encoding` is the classic request-smuggling shape.
/// hyper frames it by `Transfer-Encoding` alone and drops the `Content-Length` before the
/// gateway sees the request (RFC 9112 §6.1 allows that, provided the connection is closed
/// after the response), so the policy's own CL+TE rule never fires. What must hold either
/// way: the upstream sees at most that one request, with one framing of our choosing, and
/// a request pipelined behind it on the same connection is never processed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_length_with_transfer_encoding() {
    let (s, k) = full(Dialect::Zaif).await;
    let first = zaif::read(&k);
    let mut raw = cl_and_te(&s, &first);
    // A second, valid request smuggled behind the first on the same connection.
    let smuggled = zaif::trade(&k);
    raw.extend_from_slice(&bytes_of(&s, &smuggled));
    let before = s.origin.count();
    let resp = s.gw.send_bytes(ALLOWED_IP, &raw).await;
    let recs = s.origin.records();
    let after = &recs[before..];
    assert!(
        after.len() <= 1,
        "a pipelined request behind CL+TE was processed: {after:#?}"
    );
    if let Some(rec) = after.first() {
        let resp = resp.expect("a forwarded request has a response");
        assert_eq!(resp.status, 200);
        assert!(
            resp.header("connection")
                .is_some_and(|c| c.eq_ignore_ascii_case("close")),
            "the connection must be closed after a CL+TE request (RFC 9112 §6.1): {:?}",
            resp.headers
        );
        assert_eq!(rec.body, first.body, "framed by Transfer-Encoding");
        assert!(!rec.has_header("transfer-encoding"), "{rec:#?}");
        assert_eq!(
            rec.header_all("content-length"),
            [first.body.len().to_string()]
        );
    } else if let Ok(resp) = resp {
        assert!(resp.status >= 400, "{} {:?}", resp.status, resp.text());
    }
    expect_forwarded(&s, &zaif::read(&k), &k, "read").await;
}

/// The same `Content-Length` twice. hyper folds identical values into one (RFC 9110 §8.6
/// allows either that or a refusal), so the policy's several-lengths rule never fires;
/// what must hold: the upstream sees one `Content-Length` that matches the body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_identical_content_length() {
    let (s, k) = full(Dialect::Zaif).await;
    let req = zaif::read(&k);
    let raw = bytes_of(
        &s,
        &req.clone()
            .header("Content-Length", req.body.len().to_string()),
    );
    let before = s.origin.count();
    let resp = s.gw.send_bytes(ALLOWED_IP, &raw).await;
    let recs = s.origin.records();
    match &recs[before..] {
        [] => {
            if let Ok(resp) = resp {
                assert!(resp.status >= 400, "{} {:?}", resp.status, resp.text());
            }
        }
        [rec] => {
            assert_eq!(rec.body, req.body);
            assert_eq!(
                rec.header_all("content-length"),
                [req.body.len().to_string()]
            );
        }
        more => panic!("one request became several: {more:#?}"),
    }
    expect_forwarded(&s, &zaif::read(&k), &k, "read").await;
}

/// Parameter names that a common server-side form parser folds into the name of a field
/// the policy reads are duplicates in disguise. PHP's `parse_str` (Kraken's form bodies
/// are PHP-style: ccxt encodes them with `urlencode_nested` for that reason) drops leading
/// spaces from names and turns `address[]` / `address[0]` into `address`, the last one
/// winning. So `address=ALLOWED&+address=EVIL` is checked by the gateway as ALLOWED and
/// read by such a parser as EVIL; `amount=0.001&amount[]=1000` likewise for limits. The
/// gateway must refuse these like any other duplicate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parameter_name_twins_of_policy_fields() {
    for d in [Dialect::Kraken, Dialect::Zaif] {
        let (s, k) = full(d).await;
        let twins: &[(&str, &str)] = &[
            ("+address", OTHER_ADDR),
            ("%20address", OTHER_ADDR),
            ("address%5B%5D", OTHER_ADDR),
            ("address[]", OTHER_ADDR),
            ("address[0]", OTHER_ADDR),
            ("amount[]", "1000"),
            ("+amount", "1000"),
        ];
        for (name, value) in twins {
            let n = next_nonce().to_string();
            let mut body = match d {
                Dialect::Kraken => format!("nonce={n}&asset=XBT&key=w"),
                _ => format!("method=withdraw&nonce={n}&currency=btc"),
            };
            body.push_str(&format!(
                "&amount=0.001&address={WITHDRAW_ADDR}&{name}={value}"
            ));
            let req = match d {
                Dialect::Kraken => kraken::signed_form(&k, kraken::WITHDRAW_PATH, &n, &body),
                _ => zaif::signed(&k, &body),
            };
            let before = s.origin.count();
            let resp = s.gw.request(&req).await;
            assert!(
                resp.status == 400
                    && matches!(
                        resp.code().as_deref(),
                        Some("duplicate_parameter" | "invalid_parameter")
                    ),
                "{d:?}: twin `{name}` of a policy field: got {} {:?}",
                resp.status,
                resp.text()
            );
            s.origin.assert_unchanged(before, name);
        }
        expect_forwarded(&s, &withdraw_req(d, &k, WITHDRAW_ADDR), &k, "withdraw").await;
    }
}

/// Issue 10 item 8: names that a lenient exchange reads as one parameter — equal up to
/// ASCII case, under NFKC, or with whitespace around them — are duplicates, and a name
/// with an invisible character is refused outright. Each twin carries the value an
/// attacker wants executed (another address, a larger amount or quantity), signed by the
/// policy signer as ccxt would encode it, in every dialect and in Kraken's JSON bodies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lenient_reader_twins_in_every_dialect() {
    fn twins(field: &str) -> Vec<(String, &'static str)> {
        let mut capitalized = field.to_owned();
        capitalized[..1].make_ascii_uppercase();
        let fullwidth: String = field
            .chars()
            .map(|c| char::from_u32(c as u32 - 0x21 + 0xFF01).expect("fullwidth"))
            .collect();
        vec![
            (field.to_ascii_uppercase(), "duplicate_parameter"),
            (capitalized, "duplicate_parameter"),
            (fullwidth, "duplicate_parameter"),
            (format!("{field} "), "duplicate_parameter"),
            (format!("\u{3000}{field}"), "duplicate_parameter"),
            (format!("{field}\u{A0}"), "duplicate_parameter"),
            (format!("{field}\u{200B}"), "invalid_parameter"),
            (format!("\u{FEFF}{field}"), "invalid_parameter"),
            (
                format!("{}\u{2060}{}", &field[..1], &field[1..]),
                "invalid_parameter",
            ),
        ]
    }
    for d in [Dialect::Zaif, Dialect::Binance, Dialect::Kraken] {
        let (s, k) = full(d).await;
        // Binance's withdraw endpoint is one ccxt sends unquoted, so raw non-ASCII would
        // be refused for that alone: its twins go to the order endpoint instead.
        type Pairs<'a> = &'a [(&'a str, &'a str)];
        let (path, base, attacked): (&str, Vec<(&str, &str)>, Pairs) = match d {
            Dialect::Zaif => (
                zaif::PATH,
                vec![
                    ("method", "withdraw"),
                    ("currency", "btc"),
                    ("amount", "0.001"),
                    ("address", WITHDRAW_ADDR),
                ],
                &[("address", OTHER_ADDR), ("amount", "1000")],
            ),
            Dialect::Binance => (
                binance::TRADE_PATH,
                vec![
                    ("symbol", "BTCUSDT"),
                    ("side", "BUY"),
                    ("type", "LIMIT"),
                    ("timeInForce", "GTC"),
                    ("quantity", "0.001"),
                    ("price", "30000"),
                ],
                &[("quantity", "1000"), ("price", "1")],
            ),
            Dialect::Kraken => (
                kraken::WITHDRAW_PATH,
                vec![
                    ("asset", "XBT"),
                    ("key", "test-wallet"),
                    ("amount", "0.001"),
                    ("address", WITHDRAW_ADDR),
                ],
                &[("address", OTHER_ADDR), ("amount", "1000")],
            ),
        };
        let bodies: &[bool] = if d == Dialect::Kraken {
            &[false, true]
        } else {
            &[false]
        };
        for &json in bodies {
            for (field, evil) in attacked {
                for (twin, code) in twins(field) {
                    for twin_first in [false, true] {
                        let mut params = base.clone();
                        let at = if twin_first { 1 } else { params.len() };
                        params.insert(at, (twin.as_str(), evil));
                        let fresh = match d {
                            Dialect::Binance => now_ms().to_string(),
                            _ => next_nonce().to_string(),
                        };
                        let req = policy_signed(d, &k, "POST", path, &params, &fresh, json);
                        let code = if json { "invalid_json" } else { code };
                        expect_denied(&s, &req, 400, code).await;
                    }
                }
            }
        }
        // Without the twin the same request goes through.
        match d {
            Dialect::Binance => expect_forwarded(&s, &binance::trade(&k), &k, "trade").await,
            _ => expect_forwarded(&s, &withdraw_req(d, &k, WITHDRAW_ADDR), &k, "withdraw").await,
        };
    }
}

/// A policy field spelled another way and not at all as written (`AMOUNT` alone) is
/// refused: the gateway would check no amount while a case-insensitive exchange reads it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_field_only_in_another_spelling() {
    let (s, k) = full(Dialect::Binance).await;
    let req = binance::call(
        &k,
        "POST",
        binance::TRADE_PATH,
        &[
            ("symbol", "BTCUSDT"),
            ("side", "BUY"),
            ("type", "LIMIT"),
            ("timeInForce", "GTC"),
            ("QUANTITY", "1000"),
            ("price", "30000"),
        ],
        now_ms(),
    );
    expect_denied(&s, &req, 400, "invalid_parameter").await;
    let req = binance::call(
        &k,
        "GET",
        binance::READ_PATH,
        &[("RecvWindow", "60000")],
        now_ms(),
    );
    expect_denied(&s, &req, 400, "invalid_parameter").await;
    expect_forwarded(&s, &binance::read(&k), &k, "read").await;
}

/// A GET or DELETE carries its parameters in the query; a body would be an unread
/// channel to the exchange.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_on_get_or_delete() {
    let (s, k) = full(Dialect::Binance).await;
    let req = binance::read(&k)
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body("symbol=BTCUSDT");
    expect_denied(&s, &req, 400, "invalid_parameter").await;
    let del = binance::call(
        &k,
        "DELETE",
        binance::TRADE_PATH,
        &[("symbol", "BTCUSDT"), ("orderId", "1")],
        now_ms(),
    )
    .header("Content-Type", "application/x-www-form-urlencoded")
    .body("orderId=2");
    expect_denied(&s, &del, 400, "invalid_parameter").await;
    expect_forwarded(&s, &binance::read(&k), &k, "read").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn methods_outside_the_route_table() {
    let (s, k) = full(Dialect::Zaif).await;
    let mut patch = zaif::read(&k);
    patch.method = "PATCH".into();
    expect_denied(&s, &patch, 405, "method_not_allowed").await;
    // A known path with a method it is not routed for.
    let mut put = zaif::read(&k);
    put.method = "PUT".into();
    expect_denied(&s, &put, 405, "method_not_allowed").await;
    expect_forwarded(&s, &zaif::read(&k), &k, "read").await;
}

// ---------------------------------------------------------------------------------------
// What hyper refuses is still audited
// ---------------------------------------------------------------------------------------

fn audit_lines(s: &Setup) -> Vec<Value> {
    std::fs::read_to_string(s.env.data.join("audit.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("audit line is JSON"))
        .collect()
}

/// The audit lines after the first `before`, once at least one more has appeared (or 5 s
/// passed), with time for a second, unwanted one to show up.
async fn audit_lines_after(s: &Setup, before: usize) -> Vec<Value> {
    eventually(Duration::from_secs(5), || {
        let n = audit_lines(s).len();
        async move { n > before }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    audit_lines(s).split_off(before)
}

/// Forwards a read (checked as any control request) and returns its audit line: the
/// fields every request line has, which a refusal line must have as well.
async fn request_line_shape(s: &Setup, k: &TestKey) -> Value {
    let before = audit_lines(s).len();
    expect_forwarded(s, &zaif::read(k), k, "read").await;
    audit_lines_after(s, before).await.remove(0)
}

/// A request line's shape, key for key, for a refusal hyper made before the gateway's code
/// ran: nothing known but the socket peer, the reason and the status.
fn assert_refusal_line(line: &Value, shape: &Value, code: &str, status: u16, src: Ipv4Addr) {
    let keys = |v: &Value| {
        let mut k: Vec<String> = v.as_object().expect("object").keys().cloned().collect();
        k.sort();
        k
    };
    assert_eq!(
        keys(line),
        keys(shape),
        "same fields as a request line: {line}"
    );
    assert_eq!(line["decision"], "deny", "{line}");
    assert_eq!(line["code"], code, "{line}");
    assert_eq!(line["status"], status, "{line}");
    assert_eq!(line["client_ip"], src.to_string(), "{line}");
    assert_eq!(line["dialect"], "zaif", "{line}");
    for field in ["key_id", "account", "action"] {
        assert!(line[field].is_null(), "{field}: {line}");
    }
    assert_eq!(line["method"], "", "{line}");
    assert_eq!(line["path"], "", "{line}");
    assert_eq!(
        line["request_id"].as_str().map(str::len),
        Some(20),
        "{line}"
    );
    assert!(
        line["ts"].is_string() && line["latency_us"].is_u64(),
        "{line}"
    );
}

/// A connection from `src` to the gateway.
async fn connect_from(s: &Setup, src: Ipv4Addr) -> TcpStream {
    let sock = TcpSocket::new_v4().expect("socket");
    sock.bind(SocketAddr::new(IpAddr::V4(src), 0))
        .expect("bind source");
    sock.connect(s.gw.addr).await.expect("connect")
}

/// Reads one response with a `Content-Length` off a connection that stays open; its status.
async fn read_one_response(stream: &mut TcpStream) -> u16 {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map(|v| v.trim().parse().expect("content-length"))
                .expect("a content-length");
            if buf.len() >= end + 4 + len {
                assert_eq!(buf.len(), end + 4 + len, "one response only");
                return head[9..12].parse().expect("status");
            }
        }
        let n = tokio::time::timeout(IO_TIMEOUT, stream.read(&mut chunk))
            .await
            .expect("a response in time")
            .expect("read");
        assert!(n > 0, "closed before a whole response: {buf:?}");
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Reads until the gateway closes the connection; what it sent.
async fn read_until_closed(stream: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    tokio::time::timeout(IO_TIMEOUT, stream.read_to_end(&mut out))
        .await
        .expect("the gateway closes the connection")
        .expect("read");
    out
}

/// Requests hyper's parser refuses before the pipeline runs (it answers them itself, with
/// an empty body) are each audited once, with a code, hyper's status and the socket peer,
/// and never forwarded; a keep-alive connection the client closes adds no line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hyper_refusals_are_audited_once() {
    let (s, k) = full(Dialect::Zaif).await;
    let shape = request_line_shape(&s, &k).await;
    let with_note = |v: &[u8]| bytes_of(&s, &zaif::read(&k).header("X-Note", v));
    let oversized = bytes_of(&s, &zaif::read(&k).header("X-Pad", "a".repeat(20_000)));
    let mut too_many = zaif::read(&k);
    for i in 0..101 {
        too_many = too_many.header(&format!("X-N{i}"), "1");
    }
    let cases: Vec<(&str, Ipv4Addr, Vec<u8>, u16, &str)> = vec![
        (
            "NUL in a header value",
            Ipv4Addr::new(127, 0, 0, 2),
            with_note(b"a\x00b"),
            400,
            "malformed_request",
        ),
        (
            "bare CR in a header value",
            Ipv4Addr::new(127, 0, 0, 3),
            with_note(b"a\rb"),
            400,
            "malformed_request",
        ),
        (
            "obs-fold",
            Ipv4Addr::new(127, 0, 0, 4),
            with_note(b"a\r\n b"),
            400,
            "malformed_request",
        ),
        (
            "two different Content-Lengths",
            Ipv4Addr::new(127, 0, 0, 5),
            bytes_of(&s, &zaif::read(&k).header("Content-Length", "1")),
            400,
            "malformed_request",
        ),
        (
            "a TLS ClientHello on the plain-HTTP port",
            Ipv4Addr::new(127, 0, 0, 6),
            b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03\r\n\r\n".to_vec(),
            400,
            "malformed_request",
        ),
        (
            "an HTTP/2 preface (hyper answers nothing)",
            Ipv4Addr::new(127, 0, 0, 10),
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec(),
            0,
            "malformed_request",
        ),
        (
            "a header section over max_header_bytes",
            Ipv4Addr::new(127, 0, 0, 7),
            oversized,
            431,
            "headers_too_large",
        ),
        (
            "more than 100 headers",
            Ipv4Addr::new(127, 0, 0, 8),
            bytes_of(&s, &too_many),
            431,
            "headers_too_large",
        ),
    ];
    for (what, src, raw, status, code) in cases {
        let before = audit_lines(&s).len();
        let origin_before = s.origin.count();
        match s.gw.send_bytes(src, &raw).await {
            Ok(resp) => assert_eq!(resp.status, status, "{what}: {:?}", resp.text()),
            // Status 0: none was sent. With an oversized head the gateway closes with
            // unread bytes in its socket, so the kernel may reset the connection before
            // the client reads the answer.
            Err(e) => assert!(status == 0 || status == 431, "{what}: no response: {e}"),
        }
        s.origin.assert_unchanged(origin_before, what);
        let lines = audit_lines_after(&s, before).await;
        assert_eq!(lines.len(), 1, "{what}: exactly one audit line: {lines:#?}");
        assert_refusal_line(&lines[0], &shape, code, status, src);
    }

    // A keep-alive connection used twice and then closed by the client: two request lines,
    // nothing for the close. So is a connection that never sent a byte.
    let before = audit_lines(&s).len();
    let origin_before = s.origin.count();
    let mut conn = connect_from(&s, ALLOWED_IP).await;
    for _ in 0..2 {
        let raw = bytes_of(&s, &zaif::read(&k));
        conn.write_all(&raw).await.expect("write");
        assert_eq!(read_one_response(&mut conn).await, 200);
    }
    drop(conn);
    drop(connect_from(&s, ALLOWED_IP).await);
    let lines = audit_lines_after(&s, before).await;
    assert_eq!(s.origin.count(), origin_before + 2);
    assert_eq!(lines.len(), 2, "{lines:#?}");
    assert!(lines.iter().all(|l| l["decision"] == "allow"), "{lines:#?}");
    expect_forwarded(&s, &zaif::read(&k), &k, "read").await;
}

/// A request target longer than hyper's URI limit (65 534 bytes; reachable only with a
/// head limit above it) is answered 414 by hyper and audited as `uri_too_long`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uri_over_hypers_limit_is_audited() {
    let (s, k) = full_with(Dialect::Zaif, |cfg| {
        set(cfg, "server.max_header_bytes", 256 * 1024)
    })
    .await;
    let shape = request_line_shape(&s, &k).await;
    let target = format!("/tapi?{}", "a".repeat(70_000));
    let raw = bytes_of(&s, &zaif::read(&k).target(&target));
    let before = audit_lines(&s).len();
    let origin_before = s.origin.count();
    let resp = s.gw.send_bytes(OTHER_IP, &raw).await.expect("a response");
    assert_eq!(resp.status, 414);
    s.origin.assert_unchanged(origin_before, "a 70 KB target");
    let lines = audit_lines_after(&s, before).await;
    assert_eq!(lines.len(), 1, "{lines:#?}");
    assert_refusal_line(&lines[0], &shape, "uri_too_long", 414, OTHER_IP);
}

/// hyper's header read timeout closes the connection without an answer, both for a
/// client stalled halfway through a head (audited, status 0) and for an idle keep-alive
/// connection (not a refusal: no line). A client that sends part of a head and hangs up
/// went away by itself: no line either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_timeout_is_audited_only_mid_request() {
    let (s, k) = full_with(Dialect::Zaif, |cfg| {
        set(cfg, "server.header_read_timeout_ms", 500)
    })
    .await;
    let shape = request_line_shape(&s, &k).await;

    // Slowloris: half a head, then nothing.
    let src = Ipv4Addr::new(127, 0, 0, 9);
    let before = audit_lines(&s).len();
    let mut conn = connect_from(&s, src).await;
    conn.write_all(b"POST /tapi HTTP/1.1\r\nHost: gw\r\nX-Slow: 1\r\n")
        .await
        .expect("write");
    let answer = read_until_closed(&mut conn).await;
    assert!(answer.is_empty(), "hyper answers nothing: {answer:?}");
    let lines = audit_lines_after(&s, before).await;
    assert_eq!(lines.len(), 1, "{lines:#?}");
    assert_refusal_line(&lines[0], &shape, "header_timeout", 0, src);
    let waited = lines[0]["latency_us"].as_u64().unwrap();
    assert!((300_000..5_000_000).contains(&waited), "{waited} µs");

    // Idle keep-alive connection after a request, and a connection that never sent a
    // byte: the same timeout closes both, and only the request is logged.
    let before = audit_lines(&s).len();
    let mut used = connect_from(&s, ALLOWED_IP).await;
    let mut silent = connect_from(&s, ALLOWED_IP).await;
    used.write_all(&bytes_of(&s, &zaif::read(&k)))
        .await
        .expect("write");
    assert_eq!(read_one_response(&mut used).await, 200);
    assert!(read_until_closed(&mut used).await.is_empty());
    assert!(read_until_closed(&mut silent).await.is_empty());
    let lines = audit_lines_after(&s, before).await;
    assert_eq!(lines.len(), 1, "{lines:#?}");
    assert_eq!(lines[0]["decision"], "allow", "{lines:#?}");

    // Refused before its body was read (413 after 64 KiB of 200 KB), then idle: the rest
    // of the body the server reads after answering is not a new request, and must not
    // turn the idle timeout into a `header_timeout` line.
    let before = audit_lines(&s).len();
    let mut big = connect_from(&s, ALLOWED_IP).await;
    let body = format!("method=get_info2&nonce=1&pad={}", "a".repeat(200_000));
    let head = format!(
        "POST /tapi HTTP/1.1\r\nHost: gw\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    big.write_all(head.as_bytes()).await.expect("write");
    let _ = big.write_all(body.as_bytes()).await;
    assert_eq!(read_one_response(&mut big).await, 413);
    let _ = read_until_closed(&mut big).await;
    let lines = audit_lines_after(&s, before).await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let lines_later = audit_lines(&s).len() - before;
    assert_eq!((lines.len(), lines_later), (1, 1), "{:#?}", audit_lines(&s));
    assert_eq!(lines[0]["code"], "body_too_large", "{lines:#?}");

    // Half a head, then the client hangs up.
    let before = audit_lines(&s).len();
    let mut conn = connect_from(&s, src).await;
    conn.write_all(b"POST /tapi HTTP/1.1\r\nHost: gw\r\n")
        .await
        .expect("write");
    drop(conn);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(audit_lines(&s).len(), before, "{:#?}", audit_lines(&s));
}

/// A refusal that leaves the request body unread closes the connection (no draining a
/// body nobody wants); one decided after reading the body keeps it open for the next
/// request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_before_the_body_is_read_close_the_connection() {
    let (s, k) = full(Dialect::Zaif).await;
    let oversized = zaif::read(&k).body(format!("method=get_info2&pad={}", "a".repeat(70_000)));
    let r = expect_denied(&s, &oversized, 413, "body_too_large").await;
    assert_eq!(r.header("connection"), Some("close"), "{:?}", r.headers);

    let bad_sign = zaif::read(&k).replace_header("Sign", "00".repeat(64));
    let r = expect_denied(&s, &bad_sign, 401, "invalid_signature").await;
    assert_eq!(r.header("connection"), None, "{:?}", r.headers);
}
