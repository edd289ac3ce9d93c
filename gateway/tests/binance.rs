//! Binance dialect through the real gateway: every action, every refusal, timestamps,
//! seen-signature replay protection and Ed25519 keys.

mod utils;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use utils::scenarios::{expect_denied, expect_forwarded, setup, setup_env};
use utils::*;

const D: Dialect = Dialect::Binance;

// The scenarios every dialect must pass (utils/scenarios.rs), one test each.
dialect_scenarios!(D);

const DOC_SECRET: &str = "NhqPtmdSJYdKjVHjA7PZj4Mge3R5YNiP1e3UZjInClVN65XAbvqqM6A7H5fATj0j";

/// Binance's documented example (SIGNED endpoint security, HMAC): query string and
/// signature as published; plus the policy signer's ordering (timestamp first), computed
/// with `openssl dgst -sha256 -hmac`.
#[test]
fn known_answer_signature() {
    let doc_query = "symbol=LTCBTC&side=BUY&type=LIMIT&timeInForce=GTC&quantity=1&price=0.1&recvWindow=5000&timestamp=1499827319559";
    assert_eq!(
        sign::binance(DOC_SECRET, doc_query, ""),
        "c8db56825ae71d6d79447849e617115f4a920fa2acdcab2b053c4b2838bd6b71"
    );
    // The same bytes split between query and body sign the same (query ‖ body).
    let (q, b) = doc_query.split_at(40);
    assert_eq!(
        sign::binance(DOC_SECRET, q, b),
        "c8db56825ae71d6d79447849e617115f4a920fa2acdcab2b053c4b2838bd6b71"
    );

    let key = TestKey::kat(
        "vmPUZE6mv9SD5VNHk4HlWFsOr6aKE2zvsw0MuIgwCIPy6utIco14y7Ju91duEh8A",
        DOC_SECRET,
    );
    let req = policy_signed(
        D,
        &key,
        "GET",
        "/api/v3/order",
        &[
            ("symbol", "LTCBTC"),
            ("side", "BUY"),
            ("type", "LIMIT"),
            ("timeInForce", "GTC"),
            ("quantity", "1"),
            ("price", "0.1"),
            ("recvWindow", "5000"),
        ],
        "1499827319559",
        false,
    );
    assert_eq!(
        req.target,
        "/api/v3/order?timestamp=1499827319559&symbol=LTCBTC&side=BUY&type=LIMIT&timeInForce=GTC&quantity=1&price=0.1&recvWindow=5000&signature=5a484279109ab3b53ae7130ddba8398d810dedb0cb385220f46cce24c8033ef7"
    );
    assert_eq!(
        req.header_value("X-MBX-APIKEY").as_deref(),
        Some(key.api_key.as_str())
    );
}

/// Requests built and signed without the policy crate are accepted, with the signature
/// in the query, in the body, and with parameters split between both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn independently_signed_requests_forwarded() {
    let s = setup(D, &[KeySpec::full(D)]).await;
    let k = s.key().clone();

    // GET, timestamp last like Binance's own documentation.
    let query = format!("recvWindow=5000&timestamp={}", now_ms());
    let get = binance::signed_in_query(&k, "GET", binance::READ_PATH, &query);
    expect_forwarded(&s, &get, &k, "read").await;

    // POST, everything in the body.
    let body = binance::sign_query(
        &k,
        &format!("symbol=BTCUSDT&side=SELL&type=LIMIT&timeInForce=GTC&quantity=0.5&price=31000&timestamp={}", now_ms()),
        "",
    );
    let post = binance::keyed(&k, "POST", binance::TRADE_PATH)
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body(body);
    expect_forwarded(&s, &post, &k, "trade").await;

    // POST, parameters in the query, signature over query ‖ body at the end of the body.
    let query = "symbol=BTCUSDT&side=BUY&type=LIMIT";
    let body_unsigned = format!(
        "timeInForce=GTC&quantity=0.2&price=29000&timestamp={}",
        now_ms()
    );
    let split = binance::signed_split(&k, binance::TRADE_PATH, query, &body_unsigned);
    let rec = expect_forwarded(&s, &split, &k, "trade").await;
    assert_eq!(rec.query(), Some(query));

    // DELETE with a query string.
    let query = format!("symbol=BTCUSDT&orderId=42&timestamp={}", now_ms());
    let del = binance::signed_in_query(&k, "DELETE", binance::TRADE_PATH, &query);
    expect_forwarded(&s, &del, &k, "trade").await;
}

/// The same signed request twice inside its window: the second is a replay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_signature_refused() {
    let s = setup(D, &[KeySpec::full(D)]).await;
    let k = s.key().clone();
    let req = binance::trade(&k);
    expect_forwarded(&s, &req, &k, "trade").await;
    expect_denied(&s, &req, 401, "replay").await;
    let w = binance::withdraw(&k, WITHDRAW_ADDR);
    expect_forwarded(&s, &w, &k, "withdraw").await;
    expect_denied(&s, &w, 401, "replay").await;

    // The same signature written differently is the same signature: upper-case hex.
    let read = binance::read(&k);
    expect_forwarded(&s, &read, &k, "read").await;
    let (pre, sig) = read.target.rsplit_once("signature=").unwrap();
    let upper = read
        .clone()
        .target(&format!("{pre}signature={}", sig.to_ascii_uppercase()));
    expect_denied(&s, &upper, 401, "replay").await;
    // Percent-encoded hex digits.
    let encoded: String = sig.chars().map(|c| format!("%{:02X}", c as u32)).collect();
    let enc = read.clone().target(&format!("{pre}signature={encoded}"));
    expect_denied(&s, &enc, 401, "replay").await;

    // The signed bytes moved from the body to the query: still the same signature.
    let t = binance::trade(&k);
    expect_forwarded(&s, &t, &k, "trade").await;
    let signed = String::from_utf8_lossy(&t.body);
    let moved = binance::keyed(&k, "POST", &format!("{}?{signed}", binance::TRADE_PATH));
    expect_denied(&s, &moved, 401, "replay").await;
}

/// Timestamps older than the receive window, or more than a second ahead, are stale.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_and_future_timestamps_refused() {
    let s = setup(D, &[KeySpec::full(D)]).await;
    let ready_at = now_ms();
    let k = s.key().clone();
    let now = now_ms();
    // Default window 5000 ms.
    let old = binance::read_at(&k, &[], now - 30_000);
    expect_denied(&s, &old, 401, "stale_timestamp").await;
    // Outside an explicit window too.
    let old = binance::read_at(&k, &[("recvWindow", "10000")], now - 30_000);
    expect_denied(&s, &old, 401, "stale_timestamp").await;
    // Ahead of the gateway's clock by more than the 1 s tolerance.
    let ahead = binance::read_at(&k, &[], now_ms() + 10_000);
    expect_denied(&s, &ahead, 401, "stale_timestamp").await;
    let ahead = binance::call(
        &k,
        "POST",
        binance::TRADE_PATH,
        &[
            ("symbol", "BTCUSDT"),
            ("side", "BUY"),
            ("type", "MARKET"),
            ("quantity", "1"),
        ],
        now_ms() + 5_000,
    );
    expect_denied(&s, &ahead, 401, "stale_timestamp").await;
    // No timestamp at all.
    let none = binance::signed_in_query(&k, "GET", binance::READ_PATH, "recvWindow=5000");
    expect_denied(&s, &none, 401, "stale_timestamp").await;
    // A window larger than Binance's maximum is a malformed parameter.
    let wide = binance::read_at(&k, &[("recvWindow", "600000")], now_ms());
    expect_denied(&s, &wide, 400, "invalid_parameter").await;
    // Control: slightly ahead is tolerated.
    let ok = binance::read_at(&k, &[], now_ms() + 300);
    expect_forwarded(&s, &ok, &k, "read").await;

    // A larger window admits an older timestamp. The gateway refuses timestamps from
    // before its own start (it cannot know whether they were used), so the timestamp is
    // taken after start-up and the test waits until it is older than the default window.
    let ts = ready_at;
    while now_ms() < ts + 5_500 {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let default_window = binance::read_at(&k, &[], ts);
    expect_denied(&s, &default_window, 401, "stale_timestamp").await;
    let wide = binance::read_at(&k, &[("recvWindow", "10000")], ts);
    expect_forwarded(&s, &wide, &k, "read").await;
}

/// Timestamps from before the gateway started are refused even inside their window: the
/// seen-signature cache is in memory, so a restarted gateway cannot tell whether they
/// were already used.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timestamps_from_before_start_refused() {
    let env = Env::new(D, |_| {});
    let k = env.create_key(&KeySpec::full(D));
    let before_start = now_ms();
    let early = binance::read_at(&k, &[("recvWindow", "60000")], before_start);
    let s = setup_env(env, &[]).await;
    expect_denied(&s, &early, 401, "stale_timestamp").await;
}

/// A key registered with an Ed25519 public key: requests signed with the private key
/// are forwarded; the same request with an HMAC signature is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ed25519_key_forwarded() {
    use keyguard_policy::dialect::{ed25519_public_key, sign_request, ClientKey};
    use ring::signature::Ed25519KeyPair;

    let env = Env::new(D, |_| {});
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new()).unwrap();
    let public = ed25519_public_key(pkcs8.as_ref()).unwrap();
    let run = env
        .run_with_store(
            &["keys", "create"],
            &[
                "--account",
                "acct-ed",
                "--scopes",
                "read,trade",
                "--allow-ip",
                "127.0.0.2/32",
                "--public-key",
                &STANDARD.encode(public),
                "--json",
            ],
        )
        .ok();
    let v: serde_json::Value = serde_json::from_str(run.stdout.trim()).expect("json");
    let key = TestKey {
        key_id: v["key_id"].as_str().unwrap().into(),
        api_key: v["api_key"].as_str().unwrap().into(),
        secret: String::new(),
        account: "acct-ed".into(),
    };
    assert!(
        v["secret"].is_null(),
        "no shared secret for an Ed25519 key: {v}"
    );
    let s = setup_env(env, &[]).await;
    let ck = ClientKey::Ed25519 {
        api_key: &key.api_key,
        pkcs8: pkcs8.as_ref(),
    };
    let cr = sign_request(
        keyguard_policy::DialectKind::Binance,
        &ck,
        http::Method::GET,
        binance::READ_PATH,
        &[],
        &now_ms().to_string(),
        false,
    )
    .unwrap();
    expect_forwarded(&s, &from_client_request(&cr), &key, "read").await;
    // An HMAC signature for this key does not verify.
    let mut hmac_key = key.clone();
    hmac_key.secret = "whatever".into();
    expect_denied(&s, &binance::read(&hmac_key), 401, "invalid_signature").await;
}
