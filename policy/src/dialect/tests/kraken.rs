//! Kraken: the API docs' example, ccxt vectors (form and JSON), nonce text handling.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use ring::{digest, hmac as rhmac};

use super::*;

const KIND: DialectKind = DialectKind::Kraken;
/// From Kraken's "Authentication" docs; ccxt's vectors use it too.
const SECRET: &str =
    "kQH5HW/8p1uGOVjbgWA7FunAmGO8lsSUXNsu3eow76sz84Q18fWxnyRzBHCd3pd5nE9qa99HAZtuZuj6F1huXg==";

fn key() -> ClientKey<'static> {
    ClientKey::Hmac {
        api_key: "kraken-api-key",
        secret: SECRET.as_bytes(),
    }
}

/// An independent signer for hand-built bodies (JSON numbers, odd nonces).
fn api_sign(path: &str, nonce: &str, body: &str) -> String {
    let mut message = path.as_bytes().to_vec();
    message.extend_from_slice(
        digest::digest(&digest::SHA256, format!("{nonce}{body}").as_bytes()).as_ref(),
    );
    let key = rhmac::Key::new(rhmac::HMAC_SHA512, &STANDARD.decode(SECRET).unwrap());
    STANDARD.encode(rhmac::sign(&key, &message).as_ref())
}

fn json_req(body: &str, nonce: &str) -> ClientRequest {
    ccxt(
        Method::POST,
        "/0/private/AddOrder",
        &[
            ("API-Key", "kraken-api-key"),
            ("API-Sign", &api_sign("/0/private/AddOrder", nonce, body)),
            ("Content-Type", "application/json"),
        ],
        body,
    )
}

#[test]
fn docs_example() {
    let req = sign_request(
        KIND,
        &key(),
        Method::POST,
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
    )
    .unwrap();
    assert_eq!(
        req.body,
        b"nonce=1616492376594&ordertype=limit&pair=XBTUSD&price=37500&type=buy&volume=1.25"
    );
    assert_eq!(
        req.headers[1],
        (
            "API-Sign".to_owned(),
            "4/dpxb3iT4tp/ZCVEwSnEsLxx0bqyhLpdfOpc6fn7OR8+UClSV5n9E6aSS8MPtnRfp32bAb0nmbRn6H8ndwLUQ==".to_owned()
        )
    );
    let parsed = authenticate(KIND, &req, &hmac(SECRET)).unwrap();
    assert_eq!(
        parsed.credentials.unwrap().replay,
        Replay::Nonce(Decimal::from(1_616_492_376_594u64))
    );
}

#[test]
fn sign_request_matches_ccxt() {
    let form = sign_request(
        KIND,
        &key(),
        Method::POST,
        "/0/private/AddOrder",
        &[
            ("pair", "XBTUSD"),
            ("type", "buy"),
            ("ordertype", "limit"),
            ("price", "37500"),
            ("volume", "1.25"),
            ("close[ordertype]", "limit"),
        ],
        "1763812345123",
        false,
    )
    .unwrap();
    assert_eq!(
        form,
        ccxt(
            Method::POST,
            "/0/private/AddOrder",
            &[
                ("API-Key", "kraken-api-key"),
                ("API-Sign", "yWlfh7kHuyB2kRj0dVqEtgi1j9AJwa4bSh0RAs+3TPRDvPPxtx8h9prTFhBrsAa8G+9MfnqXooY35xeFElBCDw=="),
                ("Content-Type", "application/x-www-form-urlencoded"),
            ],
            "nonce=1763812345123&pair=XBTUSD&type=buy&ordertype=limit&price=37500&volume=1.25&close[ordertype]=limit",
        )
    );

    let json = sign_request(
        KIND,
        &key(),
        Method::POST,
        "/0/private/AddOrder",
        &[
            ("pair", "XBTUSD"),
            ("type", "buy"),
            ("ordertype", "limit"),
            ("price", "+5%"),
            ("volume", "1.25"),
        ],
        "1763812345123",
        true,
    )
    .unwrap();
    assert_eq!(
        json,
        ccxt(
            Method::POST,
            "/0/private/AddOrder",
            &[
                ("API-Key", "kraken-api-key"),
                ("API-Sign", "nzbj+ONpk8P6uJ58qybNQsot1OQLhJE5ZmUocxQHk6IeHu5huBDQCFw2bJi6JmgrC8DRFzEr8Xt7YyVW3oI/pA=="),
                ("Content-Type", "application/json"),
            ],
            r#"{"nonce":"1763812345123","pair":"XBTUSD","type":"buy","ordertype":"limit","price":"+5%","volume":"1.25"}"#,
        )
    );

    let withdraw = sign_request(
        KIND,
        &key(),
        Method::POST,
        "/0/private/Withdraw",
        &[("asset", "XBT"), ("key", "my key"), ("amount", "0.5")],
        "1763812345123",
        false,
    )
    .unwrap();
    assert_eq!(
        withdraw.body,
        b"nonce=1763812345123&asset=XBT&key=my%20key&amount=0.5"
    );
    assert_eq!(
        withdraw.headers[1].1,
        "SDNXuOg7tZxWj3HYYERaTRrmJDXUBhEvRPjb4wD7OBTN3HFVvtiVSKHtECSbLEv169tBxbZg5IeqDXbdXsGhmQ=="
    );

    for req in [&form, &json, &withdraw] {
        let parsed = authenticate(KIND, req, &hmac(SECRET)).unwrap();
        assert_eq!(
            parsed.credentials.unwrap().replay,
            Replay::Nonce(Decimal::from(1_763_812_345_123u64))
        );
    }
    let parsed = authenticate(KIND, &json, &hmac(SECRET)).unwrap();
    assert_eq!(parsed.body_kind, BodyKind::Json);
    assert_eq!(
        parsed.params.get("price"),
        Some(&ParamValue::Json(crate::JsonValue::String("+5%".into())))
    );
    let parsed = authenticate(KIND, &form, &hmac(SECRET)).unwrap();
    assert_eq!(parsed.params.text("close[ordertype]"), Ok(Some("limit")));
}

#[test]
fn tampering_path_body_or_signature_fails() {
    let req = sign_request(
        KIND,
        &key(),
        Method::POST,
        "/0/private/Withdraw",
        &[("asset", "XBT"), ("key", "mine"), ("amount", "0.5")],
        "1763812345123",
        false,
    )
    .unwrap();
    assert!(authenticate(KIND, &req, &hmac(SECRET)).is_ok());
    for at in [0, 6, req.body.len() - 1] {
        assert_eq!(
            authenticate(KIND, &tampered_body(&req, at), &hmac(SECRET)).err(),
            Some(Deny::InvalidSignature),
            "byte {at}"
        );
    }
    let mut moved = req.clone();
    moved.path_and_query = "/0/private/WithdrawStatus".into();
    assert_eq!(
        authenticate(KIND, &moved, &hmac(SECRET)).err(),
        Some(Deny::InvalidSignature)
    );
    let sign = req.headers[1].1.clone();
    let flipped = format!(
        "{}{}",
        if sign.starts_with('A') { "B" } else { "A" },
        &sign[1..]
    );
    assert_eq!(
        authenticate(
            KIND,
            &with_header(&req, "API-Sign", &flipped),
            &hmac(SECRET)
        )
        .err(),
        Some(Deny::InvalidSignature)
    );
    for bad in [&sign[..86], "not-base64!", "AAAA"] {
        assert_eq!(
            parse_client(KIND, &with_header(&req, "API-Sign", bad)).err(),
            Some(Deny::InvalidSignature),
            "{bad}"
        );
    }
}

#[test]
fn stored_secret_that_is_not_base64_fails_closed() {
    let req = sign_request(
        KIND,
        &key(),
        Method::POST,
        "/0/private/Balance",
        &[],
        "1",
        false,
    )
    .unwrap();
    let parsed = parse_client(KIND, &req).unwrap();
    let creds = parsed.credentials.as_ref().unwrap();
    for secret in ["not base64!!", "", "\u{e9}"] {
        assert_eq!(
            verify(&cfg(KIND), creds, &hmac(secret)),
            Err(Deny::InvalidSignature)
        );
    }
    // Unpadded copies of the secret still work.
    assert_eq!(
        verify(&cfg(KIND), creds, &hmac(SECRET.trim_end_matches('='))),
        Ok(())
    );
    assert_eq!(
        sign_request(
            KIND,
            &ClientKey::Hmac {
                api_key: "k",
                secret: b"!!"
            },
            Method::POST,
            "/0/private/Balance",
            &[],
            "1",
            false
        ),
        Err(SignError::BadSecret)
    );
    assert_eq!(
        verify(&cfg(KIND), creds, &Credential::Ed25519([1; 32])),
        Err(Deny::InvalidSignature)
    );
}

#[test]
fn json_nonce_as_string_or_number() {
    let as_number = json_req(
        r#"{"nonce":1616492376594,"pair":"XBTUSD"}"#,
        "1616492376594",
    );
    let parsed = authenticate(KIND, &as_number, &hmac(SECRET)).unwrap();
    assert_eq!(
        parsed.credentials.unwrap().replay,
        Replay::Nonce(Decimal::from(1_616_492_376_594u64))
    );
    let max = u64::MAX.to_string();
    let biggest = json_req(&format!(r#"{{"nonce":"{max}"}}"#), &max);
    assert_eq!(
        authenticate(KIND, &biggest, &hmac(SECRET))
            .unwrap()
            .credentials
            .unwrap()
            .replay,
        Replay::Nonce(Decimal::from(u64::MAX))
    );
    // The signature is over the nonce text as sent, so leading zeros are signed as such.
    let padded = json_req(r#"{"nonce":"007"}"#, "007");
    assert!(authenticate(KIND, &padded, &hmac(SECRET)).is_ok());
    let mismatched = json_req(r#"{"nonce":"007"}"#, "7");
    assert_eq!(
        authenticate(KIND, &mismatched, &hmac(SECRET)).err(),
        Some(Deny::InvalidSignature)
    );
}

#[test]
fn bad_nonces() {
    for (body, nonce) in [
        (r#"{"pair":"XBTUSD"}"#, "1"),
        (
            r#"{"nonce":"18446744073709551616"}"#,
            "18446744073709551616",
        ),
        (r#"{"nonce":"1.5"}"#, "1.5"),
        (r#"{"nonce":1.5}"#, "1.5"),
        (r#"{"nonce":1e3}"#, "1e3"),
        (r#"{"nonce":-1}"#, "-1"),
        (r#"{"nonce":""}"#, ""),
        (r#"{"nonce":" 1"}"#, " 1"),
        (r#"{"nonce":true}"#, "true"),
        (r#"{"nonce":["1"]}"#, "1"),
        (r#"{"nonce":null}"#, "null"),
    ] {
        assert_eq!(
            parse_client(KIND, &json_req(body, nonce)).err(),
            Some(Deny::InvalidNonce),
            "{body}"
        );
    }
    let mut form = json_req("", "1");
    form.headers[2].1 = "application/x-www-form-urlencoded".into();
    for body in [
        "pair=XBTUSD",
        "nonce=",
        "nonce=0x10",
        "nonce=1%2E5",
        "nonce=%2B1",
    ] {
        form.body = body.as_bytes().to_vec();
        assert_eq!(
            parse_client(KIND, &form).err(),
            Some(Deny::InvalidNonce),
            "{body}"
        );
    }
    // A nonce in the query is not in the signed body (and private POSTs have no query).
    let mut queried = json_req(r#"{"pair":"XBTUSD"}"#, "1");
    queried.path_and_query = "/0/private/AddOrder?nonce=1".into();
    assert_eq!(
        parse_client(KIND, &queried).err(),
        Some(Deny::InvalidParameter)
    );
}

#[test]
fn json_bodies_are_strict() {
    for (body, want) in [
        (r#"{"nonce":"1","nonce":"2"}"#, Deny::InvalidJson),
        (r#"["nonce","1"]"#, Deny::InvalidJson),
        (r#"{"nonce":"1",}"#, Deny::InvalidJson),
        (r#"{"nonce":"1"} x"#, Deny::InvalidJson),
        (r#"{"nonce":"1","_method":"DELETE"}"#, Deny::MethodOverride),
    ] {
        assert_eq!(
            parse_client(KIND, &json_req(body, "1")).err(),
            Some(want),
            "{body}"
        );
    }
}

#[test]
fn partial_headers() {
    let req = json_req(r#"{"nonce":"1"}"#, "1");
    let mut no_sign = req.clone();
    no_sign.headers.retain(|(n, _)| n != "API-Sign");
    assert_eq!(
        parse_client(KIND, &no_sign).err(),
        Some(Deny::InvalidSignature)
    );
    let mut no_key = req.clone();
    no_key.headers.retain(|(n, _)| n != "API-Key");
    assert_eq!(
        parse_client(KIND, &no_key).err(),
        Some(Deny::MissingCredentials)
    );
}

#[test]
fn public_requests() {
    let req = public_request(
        KIND,
        Method::GET,
        "/0/public/Ticker",
        &[("pair", "XBTUSD"), ("x[0]", "a b")],
    );
    assert_eq!(
        req.path_and_query,
        "/0/public/Ticker?pair=XBTUSD&x[0]=a%20b"
    );
    let parsed = parse_client(KIND, &req).unwrap();
    assert_eq!(parsed.credentials, None);
    assert_eq!(parsed.params.text("x[0]"), Ok(Some("a b")));
    assert_eq!(
        sign_request(
            KIND,
            &ClientKey::Ed25519 {
                api_key: "k",
                pkcs8: &[0; 32]
            },
            Method::POST,
            "/0/private/Balance",
            &[],
            "1",
            false
        ),
        Err(SignError::UnsupportedKey("kraken"))
    );
}
