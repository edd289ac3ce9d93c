//! Zaif: ccxt vectors, round trips, nonce and signature handling.

use super::*;
use crate::decimal::parse_decimal;

const KIND: DialectKind = DialectKind::Zaif;
const SECRET: &str = "zaif-secret-0123456789";

fn key() -> ClientKey<'static> {
    ClientKey::Hmac {
        api_key: "zaif-api-key",
        secret: SECRET.as_bytes(),
    }
}

/// `ccxt.zaif().sign('trade', ['private'], 'POST', {...})` with the nonce pinned.
fn ccxt_trade() -> ClientRequest {
    ccxt(
        Method::POST,
        "/tapi",
        &[
            ("Content-Type", "application/x-www-form-urlencoded"),
            ("Key", "zaif-api-key"),
            ("Sign", "9bbd58311b57fb9518a8d27017462d33ef132ade39d69b56451083061b59271f536eb0d7deee04d99fdc2eb48ab60f76330d8069dd7df0f85b26849668d919a3"),
        ],
        "method=trade&nonce=1763812345.12300000&currency_pair=btc_jpy&action=bid&price=5000000&amount=0.001",
    )
}

#[test]
fn sign_request_matches_ccxt() {
    let ours = sign_request(
        KIND,
        &key(),
        Method::POST,
        "/tapi",
        &[
            ("method", "trade"),
            ("currency_pair", "btc_jpy"),
            ("action", "bid"),
            ("price", "5000000"),
            ("amount", "0.001"),
        ],
        "1763812345.12300000",
        false,
    )
    .unwrap();
    assert_eq!(ours, ccxt_trade());

    // Quoting of a free-text field, as Python's urlencode does it.
    let withdraw = sign_request(
        KIND,
        &key(),
        Method::POST,
        "/tapi",
        &[
            ("method", "withdraw"),
            ("currency", "btc"),
            ("address", "1A1zP1eP5QGefi2DMPTfTL5SLmv7DivfNa"),
            ("amount", "0.5"),
            ("message", "a b/c"),
        ],
        "1763812345.12300000",
        false,
    )
    .unwrap();
    assert_eq!(
        withdraw.body,
        b"method=withdraw&nonce=1763812345.12300000&currency=btc&address=1A1zP1eP5QGefi2DMPTfTL5SLmv7DivfNa&amount=0.5&message=a%20b%2Fc"
    );
    assert_eq!(
        withdraw.headers[2].1,
        "b34f4cb82c1cc644ce7327f7540569db4b3c7e19235a2783a232e6fe51dc6afe07ba37a14b861567e6352a4c6bea26ac7f735a73f78eedafdb165c42eadd3a68"
    );
}

#[test]
fn ccxt_request_parses_and_verifies() {
    let parsed = authenticate(KIND, &ccxt_trade(), &hmac(SECRET)).unwrap();
    assert_eq!(parsed.method, Method::POST);
    assert_eq!(parsed.path, "/tapi");
    assert_eq!(parsed.body_kind, BodyKind::Form);
    assert_eq!(parsed.params.text("method"), Ok(Some("trade")));
    assert_eq!(parsed.params.text("amount"), Ok(Some("0.001")));
    let creds = parsed.credentials.unwrap();
    assert_eq!(creds.api_key, "zaif-api-key");
    assert_eq!(
        creds.replay,
        Replay::Nonce(parse_decimal("1763812345.123").unwrap())
    );
    assert_eq!(
        check_freshness(&cfg(KIND), &creds.replay, 0),
        Ok(()),
        "nonces are ordered by the store, not the clock"
    );
}

#[test]
fn any_flipped_byte_fails() {
    let req = ccxt_trade();
    for at in [0, 20, req.body.len() - 1] {
        assert_eq!(
            authenticate(KIND, &tampered_body(&req, at), &hmac(SECRET)).err(),
            Some(Deny::InvalidSignature),
            "byte {at}"
        );
    }
    let sign = &req.headers[2].1;
    let flipped = format!(
        "{}{}",
        if sign.starts_with('9') { "8" } else { "9" },
        &sign[1..]
    );
    assert_eq!(
        authenticate(KIND, &with_header(&req, "Sign", &flipped), &hmac(SECRET)).err(),
        Some(Deny::InvalidSignature)
    );
    assert_eq!(
        authenticate(KIND, &req, &hmac("other-secret")).err(),
        Some(Deny::InvalidSignature)
    );
}

#[test]
fn signature_hex_case_and_length() {
    let req = ccxt_trade();
    let sign = req.headers[2].1.clone();
    let upper = with_header(&req, "Sign", &sign.to_ascii_uppercase());
    assert!(authenticate(KIND, &upper, &hmac(SECRET)).is_ok());
    for bad in [
        &sign[..126],
        &format!("{sign}00"),
        &format!("{}zz", &sign[..126]),
        "",
    ] {
        // An empty header counts as absent: a key with no signature, refused all the same.
        let r = with_header(&req, "Sign", bad);
        assert_eq!(
            parse_client(KIND, &r).err(),
            Some(Deny::InvalidSignature),
            "{bad:?}"
        );
    }
}

#[test]
fn missing_pieces() {
    let req = ccxt_trade();
    let without = |name: &str| {
        let mut r = req.clone();
        r.headers.retain(|(n, _)| n != name);
        r
    };
    assert_eq!(
        parse_client(KIND, &without("Sign")).err(),
        Some(Deny::InvalidSignature)
    );
    assert_eq!(
        parse_client(KIND, &without("Key")).err(),
        Some(Deny::MissingCredentials)
    );
    let neither = {
        let mut r = without("Key");
        r.headers.retain(|(n, _)| n != "Sign");
        r
    };
    assert_eq!(parse_client(KIND, &neither).unwrap().credentials, None);

    for body in [
        "method=get_info",
        "method=get_info&nonce=",
        "method=get_info&nonce=abc",
        "method=get_info&nonce=-1",
        "method=get_info&nonce=1.",
        "method=get_info&nonce=.5",
        "method=get_info&nonce=%2B1",
        "method=get_info&nonce=1e28",
        "method=get_info&nonce=1E5",
        "method=get_info&nonce=123456789012345678901",
        "method=get_info&nonce=1.123456789",
    ] {
        let mut r = req.clone();
        r.body = body.as_bytes().to_vec();
        assert_eq!(
            parse_client(KIND, &r).err(),
            Some(Deny::InvalidNonce),
            "{body}"
        );
    }
}

#[test]
fn integer_and_decimal_nonces_compare_exactly() {
    for (nonce, want) in [
        ("1763812345", "1763812345"),
        ("1763812345.00000001", "1763812345.00000001"),
        ("1763812345.10000000", "1763812345.1"),
    ] {
        let req = sign_request(
            KIND,
            &key(),
            Method::POST,
            "/tapi",
            &[("method", "get_info2")],
            nonce,
            false,
        )
        .unwrap();
        let creds = authenticate(KIND, &req, &hmac(SECRET))
            .unwrap()
            .credentials
            .unwrap();
        assert_eq!(creds.replay, Replay::Nonce(parse_decimal(want).unwrap()));
    }
}

/// What the journal writes (the nonce's text) must parse back to the same nonce, at the
/// widest shapes `parse_nonce` accepts.
#[test]
fn accepted_nonces_round_trip_through_their_text() {
    for text in [
        "0",
        "18446744073709551615",
        "99999999999999999999.99999999",
        "00000000000000000001.00000001",
        "1763812345.12300000",
    ] {
        let n = crate::dialect::zaif::parse_nonce(text).unwrap();
        assert_eq!(parse_decimal(&n.to_string()), Ok(n), "{text}");
    }
}

#[test]
fn no_query_on_tapi() {
    let mut req = ccxt_trade();
    req.path_and_query = "/tapi?method=withdraw".into();
    assert_eq!(parse_client(KIND, &req).err(), Some(Deny::InvalidParameter));
    req.path_and_query = "/tapi?".into();
    assert_eq!(parse_client(KIND, &req).err(), Some(Deny::InvalidParameter));
}

#[test]
fn public_requests_carry_nothing() {
    let req = public_request(KIND, Method::GET, "/api/1/ticker/btc_jpy", &[]);
    assert_eq!(req.path_and_query, "/api/1/ticker/btc_jpy");
    let parsed = parse_client(KIND, &req).unwrap();
    assert_eq!(parsed.credentials, None);
    assert_eq!(parsed.body_kind, BodyKind::Empty);
    assert!(parsed.params.is_empty());
}

#[test]
fn ed25519_is_not_a_zaif_key() {
    let ed = ClientKey::Ed25519 {
        api_key: "k",
        pkcs8: &[7; 32],
    };
    assert_eq!(
        sign_request(KIND, &ed, Method::POST, "/tapi", &[], "1", false),
        Err(SignError::UnsupportedKey("zaif"))
    );
    assert_eq!(
        sign_request(KIND, &key(), Method::POST, "/tapi", &[], "1", true),
        Err(SignError::UnsupportedBody("zaif"))
    );
    let parsed = parse_client(KIND, &ccxt_trade()).unwrap();
    assert_eq!(
        verify(
            &cfg(KIND),
            parsed.credentials.as_ref().unwrap(),
            &Credential::Ed25519([0; 32])
        ),
        Err(Deny::InvalidSignature)
    );
}
