//! Zaif `tapi` dialect through the real gateway: every action, every refusal, nonces.

mod utils;

use utils::scenarios::{expect_denied, expect_denied_from, expect_forwarded, setup};
use utils::*;

const D: Dialect = Dialect::Zaif;

// The scenarios every dialect must pass (utils/scenarios.rs), one test each.
dialect_scenarios!(D);

/// Pins both signers to a value computed outside Rust:
/// `printf %s 'method=get_info2&nonce=1700000000.123' | openssl dgst -sha512 -hmac keyguard-test-secret-zaif`.
#[test]
fn known_answer_signature() {
    const SECRET: &str = "keyguard-test-secret-zaif";
    const BODY: &str = "method=get_info2&nonce=1700000000.123";
    const SIGN: &str = "7fec9840c44102aae78d05c1ee22898a81ed04b173019ee5b744abdfed71fca3cca52558f2833e66e7664171420ff3cb5e7c0cf6b9cb672a9ec4369edcc012e2";
    assert_eq!(sign::zaif(SECRET, BODY.as_bytes()), SIGN);
    let key = TestKey::kat("kat-api-key", SECRET);
    let req = policy_signed(
        D,
        &key,
        "POST",
        "/tapi",
        &[("method", "get_info2")],
        "1700000000.123",
        false,
    );
    assert_eq!(req.target, "/tapi");
    assert_eq!(String::from_utf8_lossy(&req.body), BODY);
    assert_eq!(req.header_value("Sign").as_deref(), Some(SIGN));
    assert_eq!(req.header_value("Key").as_deref(), Some("kat-api-key"));
}

/// A request built and signed without the policy crate (the independent signer pinned
/// above) is accepted: verifier and client signer cannot share a bug unnoticed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn independently_signed_requests_forwarded() {
    let s = setup(D, &[KeySpec::full(D)]).await;
    let k = s.key().clone();
    let n = next_nonce();
    let body = format!("method=get_info2&nonce={n}");
    expect_forwarded(&s, &zaif::signed(&k, &body), &k, "read").await;
    // Decimal nonces as ccxt sends them (seconds with a fraction), strictly larger.
    let body = format!("method=get_info&nonce={n}.5");
    expect_forwarded(&s, &zaif::signed(&k, &body), &k, "read").await;
    let body = format!(
        "method=withdraw&nonce={}&currency=btc&address={WITHDRAW_ADDR}&amount=0.001",
        n + 1
    );
    expect_forwarded(&s, &zaif::signed(&k, &body), &k, "withdraw").await;
    // Upper-case hex is the same signature.
    let body = format!("method=get_info2&nonce={}", n + 2);
    let req = zaif::signed(&k, &body);
    let upper = req.header_value("Sign").unwrap().to_ascii_uppercase();
    let req = req.replace_header("Sign", upper);
    expect_forwarded(&s, &req, &k, "read").await;
}

/// A nonce must strictly increase per key; a replay of the exact request is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_or_lower_nonce_refused() {
    let s = setup(D, &[KeySpec::full(D), KeySpec::full(D)]).await;
    let (k, other) = (s.keys[0].clone(), s.keys[1].clone());
    let first = zaif::read(&k);
    expect_forwarded(&s, &first, &k, "read").await;
    expect_denied(&s, &first, 401, "invalid_nonce").await;

    let n = next_nonce();
    let newer = zaif::signed(&k, &zaif::body("get_info2", &n.to_string(), &[]));
    expect_forwarded(&s, &newer, &k, "read").await;
    // Same nonce, other method; then a lower one.
    let same = zaif::signed(&k, &zaif::body("get_info", &n.to_string(), &[]));
    expect_denied(&s, &same, 401, "invalid_nonce").await;
    let lower = zaif::signed(&k, &zaif::body("get_info2", &(n - 1).to_string(), &[]));
    expect_denied(&s, &lower, 401, "invalid_nonce").await;
    // Same value written differently is the same decimal.
    let padded = zaif::signed(&k, &zaif::body("get_info2", &format!("{n}.000"), &[]));
    expect_denied(&s, &padded, 401, "invalid_nonce").await;
    // Not a number at all.
    let junk = zaif::signed(&k, &zaif::body("get_info2", "abc", &[]));
    expect_denied(&s, &junk, 401, "invalid_nonce").await;
    // Nonces are per key: another key may use the same value.
    let theirs = zaif::signed(&other, &zaif::body("get_info2", &n.to_string(), &[]));
    expect_forwarded(&s, &theirs, &other, "read").await;
}

/// A request refused before the replay stage does not consume its nonce, so an attacker
/// cannot burn the owner's nonce sequence with requests that fail authorization.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_request_does_not_burn_nonce() {
    let s = setup(D, &[KeySpec::full(D)]).await;
    let k = s.key().clone();
    let req = zaif::read(&k);
    expect_denied_from(&s, OTHER_IP, &req, 403, "ip_not_allowed").await;
    expect_forwarded(&s, &req, &k, "read").await;
}
