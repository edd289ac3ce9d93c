//! Kraken dialect through the real gateway: every action, every refusal, nonces, form
//! and JSON bodies.

mod utils;

use utils::scenarios::{expect_denied, expect_forwarded, setup};
use utils::*;

const D: Dialect = Dialect::Kraken;

// The scenarios every dialect must pass (utils/scenarios.rs), one test each.
dialect_scenarios!(D);

const DOC_SECRET: &str =
    "kQH5HW/8p1uGOVjbgWA7FunAmGO8lsSUXNsu3eow76sz84Q18fWxnyRzBHCd3pd5nE9qa99HAZtuZuj6F1huXg==";
const DOC_BODY: &str =
    "nonce=1616492376594&ordertype=limit&pair=XBTUSD&price=37500&type=buy&volume=1.25";
const DOC_SIGN: &str =
    "4/dpxb3iT4tp/ZCVEwSnEsLxx0bqyhLpdfOpc6fn7OR8+UClSV5n9E6aSS8MPtnRfp32bAb0nmbRn6H8ndwLUQ==";

/// Kraken's documented example (REST authentication): both signers must reproduce it.
#[test]
fn known_answer_signature() {
    assert_eq!(
        sign::kraken(
            DOC_SECRET,
            "/0/private/AddOrder",
            "1616492376594",
            DOC_BODY.as_bytes()
        ),
        DOC_SIGN
    );
    let key = TestKey::kat("kat-api-key", DOC_SECRET);
    let req = policy_signed(
        D,
        &key,
        "POST",
        "/0/private/AddOrder",
        &[
            ("ordertype", "limit"),
            ("pair", "XBTUSD"),
            ("price", "37500"),
            ("type", "buy"),
            ("volume", "1.25"),
        ],
        "1616492376594",
        false,
    );
    assert_eq!(req.target, "/0/private/AddOrder");
    assert_eq!(String::from_utf8_lossy(&req.body), DOC_BODY);
    assert_eq!(req.header_value("API-Sign").as_deref(), Some(DOC_SIGN));
    assert_eq!(req.header_value("API-Key").as_deref(), Some("kat-api-key"));
}

/// Requests built and signed without the policy crate (form and JSON) are accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn independently_signed_requests_forwarded() {
    let s = setup(D, &[KeySpec::full(D)]).await;
    let k = s.key().clone();
    let n = next_nonce().to_string();
    let body = format!("nonce={n}&ordertype=limit&pair=XBTUSD&price=37500&type=buy&volume=1.25");
    let form = kraken::signed_form(&k, kraken::TRADE_PATH, &n, &body);
    expect_forwarded(&s, &form, &k, "trade").await;

    let n = next_nonce().to_string();
    let body = format!(
        r#"{{"nonce":"{n}","asset":"XBT","key":"test-wallet","amount":"0.001","address":"{WITHDRAW_ADDR}"}}"#
    );
    let json = kraken::signed_json(&k, kraken::WITHDRAW_PATH, &n, &body);
    expect_forwarded(&s, &json, &k, "withdraw").await;

    // A JSON number nonce and a number amount.
    let n = next_nonce().to_string();
    let body = format!(
        r#"{{"nonce":{n},"ordertype":"limit","type":"sell","volume":0.5,"pair":"XBTUSD","price":"40000"}}"#
    );
    let json = kraken::signed_json(&k, kraken::TRADE_PATH, &n, &body);
    expect_forwarded(&s, &json, &k, "trade").await;
}

/// JSON bodies from the policy signer (what ccxt sends for some calls).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_bodies_forwarded() {
    let s = setup(D, &[KeySpec::full(D)]).await;
    let k = s.key().clone();
    let trade = kraken::call_with(&k, kraken::TRADE_PATH, kraken::TRADE_PARAMS, true);
    assert_eq!(
        trade.header_value("Content-Type").as_deref(),
        Some("application/json")
    );
    expect_forwarded(&s, &trade, &k, "trade").await;
    let read = kraken::call_with(&k, kraken::READ_PATH, &[], true);
    expect_forwarded(&s, &read, &k, "read").await;
}

/// Nonces strictly increase per key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_or_lower_nonce_refused() {
    let s = setup(D, &[KeySpec::full(D)]).await;
    let k = s.key().clone();
    let first = kraken::read(&k);
    expect_forwarded(&s, &first, &k, "read").await;
    expect_denied(&s, &first, 401, "invalid_nonce").await;

    let n = next_nonce();
    let sent = kraken::signed_form(&k, kraken::READ_PATH, &n.to_string(), &format!("nonce={n}"));
    expect_forwarded(&s, &sent, &k, "read").await;
    let lower = kraken::signed_form(
        &k,
        kraken::READ_PATH,
        &(n - 1).to_string(),
        &format!("nonce={}", n - 1),
    );
    expect_denied(&s, &lower, 401, "invalid_nonce").await;
    // The same nonce on another endpoint.
    let same = kraken::signed_form(
        &k,
        kraken::TRADE_PATH,
        &n.to_string(),
        &format!("nonce={n}&ordertype=market&type=buy&volume=1&pair=XBTUSD"),
    );
    expect_denied(&s, &same, 401, "invalid_nonce").await;
    // Kraken nonces are unsigned integers.
    for bad in ["abc", "1.5", "-1", "99999999999999999999999"] {
        let req = kraken::signed_form(&k, kraken::READ_PATH, bad, &format!("nonce={bad}"));
        expect_denied(&s, &req, 401, "invalid_nonce").await;
    }
}

/// The signature covers the path: a request signed for Balance is refused on another
/// read path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signature_bound_to_path() {
    let s = setup(D, &[KeySpec::full(D)]).await;
    let k = s.key().clone();
    let req = kraken::read(&k).target("/0/private/TradeBalance");
    expect_denied(&s, &req, 401, "invalid_signature").await;
}
