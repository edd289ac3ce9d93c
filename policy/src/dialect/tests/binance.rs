//! Binance: the API docs' HMAC examples, ccxt vectors (HMAC and Ed25519), signature
//! placement, timestamps and receive windows.

use ring::digest;

use super::*;

const KIND: DialectKind = DialectKind::Binance;

/// From Binance's "SIGNED endpoint examples for POST /api/v3/order".
const DOC_API_KEY: &str = "vmPUZE6mv9SD5VNHk4HlWFsOr6aKE2zvsw0MuIgwCIPy6utIco14y7Ju91duEh8A";
const DOC_SECRET: &str = "NhqPtmdSJYdKjVHjA7PZj4Mge3R5YNiP1e3UZjInClVN65XAbvqqM6A7H5fATj0j";
const DOC_PARAMS: &str = "symbol=LTCBTC&side=BUY&type=LIMIT&timeInForce=GTC&quantity=1&price=0.1&recvWindow=5000&timestamp=1499827319559";
const DOC_SIGNATURE: &str = "c8db56825ae71d6d79447849e617115f4a920fa2acdcab2b053c4b2838bd6b71";
const DOC_TS: u64 = 1_499_827_319_559;

const CCXT_SECRET: &str = "binance-secret-0123456789";
const CCXT_TS: u64 = 1_763_812_345_123;

/// The Ed25519 key ccxt signed with: seed 00 01 .. 1f, as PKCS#8 v1 DER (what
/// `cryptography` writes for `PrivateFormat.PKCS8`).
const ED_PKCS8_HEX: &str = "302e020100300506032b657004220420000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
const ED_PUBLIC_HEX: &str = "03a107bff3ce10be1d70dd18e74bc09967e4d6309ba50d5f1ddc8664125531b8";

fn doc_headers() -> Vec<(&'static str, &'static str)> {
    vec![
        ("X-MBX-APIKEY", DOC_API_KEY),
        ("Content-Type", "application/x-www-form-urlencoded"),
    ]
}

fn hmac_key() -> ClientKey<'static> {
    ClientKey::Hmac {
        api_key: "binance-api-key",
        secret: CCXT_SECRET.as_bytes(),
    }
}

fn ed_public() -> [u8; 32] {
    hex::decode(ED_PUBLIC_HEX).unwrap().try_into().unwrap()
}

fn fresh(parsed: &ParsedRequest, now: u64) -> Result<(), Deny> {
    check_freshness(
        &cfg(KIND),
        &parsed.credentials.as_ref().unwrap().replay,
        now,
    )
}

#[test]
fn docs_example_1_query_string() {
    let req = ccxt(
        Method::POST,
        &format!("/api/v3/order?{DOC_PARAMS}&signature={DOC_SIGNATURE}"),
        &[("X-MBX-APIKEY", DOC_API_KEY)],
        "",
    );
    let parsed = authenticate(KIND, &req, &hmac(DOC_SECRET)).unwrap();
    let creds = parsed.credentials.as_ref().unwrap();
    assert_eq!(creds.api_key, DOC_API_KEY);
    assert_eq!(
        creds.replay,
        Replay::Timestamp {
            at_ms: DOC_TS,
            recv_window_ms: 5000,
            fingerprint: digest::digest(&digest::SHA256, &hex::decode(DOC_SIGNATURE).unwrap())
                .as_ref()
                .try_into()
                .unwrap(),
        }
    );
    assert_eq!(
        parsed
            .params
            .iter()
            .find(|(n, _, _)| *n == "symbol")
            .unwrap()
            .2,
        ParamSource::Query
    );
}

#[test]
fn docs_example_2_body() {
    let req = ccxt(
        Method::POST,
        "/api/v3/order",
        &doc_headers(),
        &format!("{DOC_PARAMS}&signature={DOC_SIGNATURE}"),
    );
    let parsed = authenticate(KIND, &req, &hmac(DOC_SECRET)).unwrap();
    assert_eq!(parsed.body_kind, BodyKind::Form);
    assert_eq!(
        parsed
            .params
            .iter()
            .find(|(n, _, _)| *n == "price")
            .unwrap()
            .2,
        ParamSource::Body
    );
}

#[test]
fn docs_example_3_query_and_body_concatenate_without_separator() {
    let req = ccxt(
        Method::POST,
        "/api/v3/order?symbol=LTCBTC&side=BUY&type=LIMIT&timeInForce=GTC",
        &doc_headers(),
        "quantity=1&price=0.1&recvWindow=5000&timestamp=1499827319559&signature=0fd168b8ddb4876a0358a8d14d0c9f3da0e9b20c5d52b2a00fcf7d1c602f9a77",
    );
    assert!(authenticate(KIND, &req, &hmac(DOC_SECRET)).is_ok());
    // Signed with a `&` between the parts instead: not what Binance signs.
    let wrong = ClientRequest {
        body: format!("quantity=1&price=0.1&recvWindow=5000&timestamp=1499827319559&signature={DOC_SIGNATURE}").into_bytes(),
        ..req
    };
    assert_eq!(
        authenticate(KIND, &wrong, &hmac(DOC_SECRET)).err(),
        Some(Deny::InvalidSignature)
    );
}

#[test]
fn signature_in_query_covers_the_body_too() {
    let body = "symbol=LTCBTC&timestamp=1499827319559";
    let tag = ring::hmac::sign(
        &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, DOC_SECRET.as_bytes()),
        body.as_bytes(),
    );
    let req = ccxt(
        Method::POST,
        &format!("/api/v3/order?signature={}", hex::encode(tag.as_ref())),
        &doc_headers(),
        body,
    );
    assert!(authenticate(KIND, &req, &hmac(DOC_SECRET)).is_ok());
    let mut changed = req.clone();
    changed.body = b"symbol=LTCBTC&timestamp=1499827319550".to_vec();
    assert_eq!(
        authenticate(KIND, &changed, &hmac(DOC_SECRET)).err(),
        Some(Deny::InvalidSignature)
    );
}

#[test]
fn sign_request_matches_ccxt_hmac() {
    let post = sign_request(
        KIND,
        &hmac_key(),
        Method::POST,
        "/api/v3/order",
        &[
            ("symbol", "BTCUSDT"),
            ("side", "BUY"),
            ("type", "LIMIT"),
            ("timeInForce", "GTC"),
            ("quantity", "0.001"),
            ("price", "50000.5"),
            ("newClientOrderId", "x-TKT5PX2Fa01d8d70363defd152fac7"),
            ("recvWindow", "10000"),
        ],
        "1763812345123",
        false,
    )
    .unwrap();
    assert_eq!(
        post,
        ccxt(
            Method::POST,
            "/api/v3/order",
            &[
                ("X-MBX-APIKEY", "binance-api-key"),
                ("Content-Type", "application/x-www-form-urlencoded"),
            ],
            "timestamp=1763812345123&symbol=BTCUSDT&side=BUY&type=LIMIT&timeInForce=GTC&quantity=0.001&price=50000.5&newClientOrderId=x-TKT5PX2Fa01d8d70363defd152fac7&recvWindow=10000&signature=4fb5c15d829a55d362ecf5f5b4b97fb7ee059e31d7991737c2d8a8d43a392d8d",
        )
    );

    let get = sign_request(
        KIND,
        &hmac_key(),
        Method::GET,
        "/api/v3/account",
        &[("recvWindow", "10000")],
        "1763812345123",
        false,
    )
    .unwrap();
    assert_eq!(
        get,
        ccxt(
            Method::GET,
            "/api/v3/account?timestamp=1763812345123&recvWindow=10000&signature=57576c272750711b1a09d90f9bac2ec606897b6877fcbd2f1fb76f3578c569c1",
            &[("X-MBX-APIKEY", "binance-api-key")],
            "",
        )
    );

    let delete = sign_request(
        KIND,
        &hmac_key(),
        Method::DELETE,
        "/api/v3/order",
        &[
            ("symbol", "BTCUSDT"),
            ("orderId", "42"),
            ("recvWindow", "10000"),
        ],
        "1763812345123",
        false,
    )
    .unwrap();
    assert_eq!(
        delete.path_and_query,
        "/api/v3/order?timestamp=1763812345123&symbol=BTCUSDT&orderId=42&recvWindow=10000&signature=bb7828c5ef508a22a81afc81bac5517d7d4629f27fdda92b6997487cbc2a6994"
    );

    for req in [&post, &get, &delete] {
        let parsed = authenticate(KIND, req, &hmac(CCXT_SECRET)).unwrap();
        assert_eq!(fresh(&parsed, CCXT_TS), Ok(()));
        match parsed.credentials.unwrap().replay {
            Replay::Timestamp { recv_window_ms, .. } => assert_eq!(recv_window_ms, 10_000),
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn withdraw_is_raw_encoded_like_ccxt() {
    // ccxt's rawencode branch leaves the space in `my wallet` unescaped.
    let req = sign_request(
        KIND,
        &hmac_key(),
        Method::POST,
        "/sapi/v1/capital/withdraw/apply",
        &[
            ("coin", "USDT"),
            ("address", "TXYZ"),
            ("amount", "10.5"),
            ("network", "TRX"),
            ("name", "my wallet"),
            ("recvWindow", "10000"),
        ],
        "1763812345123",
        false,
    )
    .unwrap();
    assert_eq!(
        req.body,
        b"timestamp=1763812345123&coin=USDT&address=TXYZ&amount=10.5&network=TRX&name=my wallet&recvWindow=10000&signature=a78d39a3d2fb4540a3e5440b27a574a7d0fe53cd2b431c484ce0306919d4ab09"
    );
    let parsed = authenticate(KIND, &req, &hmac(CCXT_SECRET)).unwrap();
    assert_eq!(parsed.params.text("name"), Ok(Some("my wallet")));
}

#[test]
fn ed25519_matches_ccxt() {
    let pkcs8 = hex::decode(ED_PKCS8_HEX).unwrap();
    assert_eq!(ed25519_public_key(&pkcs8), Ok(ed_public()));
    let seed: Vec<u8> = (0u8..32).collect();
    assert_eq!(ed25519_public_key(&seed), Ok(ed_public()));
    assert_eq!(ed25519_public_key(b"nope"), Err(SignError::BadPrivateKey));

    for private in [&pkcs8[..], &seed[..]] {
        let key = ClientKey::Ed25519 {
            api_key: "binance-ed-key",
            pkcs8: private,
        };
        let post = sign_request(
            KIND,
            &key,
            Method::POST,
            "/api/v3/order",
            &[
                ("symbol", "BTCUSDT"),
                ("side", "SELL"),
                ("type", "MARKET"),
                ("quantity", "1"),
                ("newClientOrderId", "x-TKT5PX2F65245f6b49eeaf80b2e3d4"),
                ("recvWindow", "10000"),
            ],
            "1763812345123",
            false,
        )
        .unwrap();
        assert_eq!(
            post.body,
            b"timestamp=1763812345123&symbol=BTCUSDT&side=SELL&type=MARKET&quantity=1&newClientOrderId=x-TKT5PX2F65245f6b49eeaf80b2e3d4&recvWindow=10000&signature=M0hvNgEBSLnbc%2BHtMmvYEGgsjiCYlOvtzpxErVeSgmnhXLD5erWgvqF3lkwPUvPzbjzbiI3jrab1eaPKB2S1Dg%3D%3D"
        );
        let get = sign_request(
            KIND,
            &key,
            Method::GET,
            "/api/v3/openOrders",
            &[("symbol", "BTCUSDT"), ("recvWindow", "10000")],
            "1763812345123",
            false,
        )
        .unwrap();
        assert_eq!(
            get.path_and_query,
            "/api/v3/openOrders?timestamp=1763812345123&symbol=BTCUSDT&recvWindow=10000&signature=6RzMkdC1BwDkCieJcCNWxX03G0MCp0MK60xkKzO1U1eC7YixvAhNikmiM0QvVTZKMwYeZfLE7qDALxACATjDCQ%3D%3D"
        );
        for req in [&post, &get] {
            let parsed = authenticate(KIND, req, &Credential::Ed25519(ed_public())).unwrap();
            assert_eq!(fresh(&parsed, CCXT_TS + 10_000), Ok(()));
            // An HMAC key never accepts an Ed25519 signature, whatever the secret.
            let creds = parsed.credentials.as_ref().unwrap();
            assert_eq!(
                verify(&cfg(KIND), creds, &hmac(CCXT_SECRET)),
                Err(Deny::InvalidSignature)
            );
        }
    }
}

#[test]
fn ed25519_round_trip_and_tampering() {
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = ring::signature::Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
    let public = Credential::Ed25519(ed25519_public_key(pkcs8.as_ref()).unwrap());
    let key = ClientKey::Ed25519 {
        api_key: "ed",
        pkcs8: pkcs8.as_ref(),
    };
    let req = sign_request(
        KIND,
        &key,
        Method::POST,
        "/sapi/v1/capital/withdraw/apply",
        &[("coin", "BTC"), ("address", "bc1qxyz"), ("amount", "0.01")],
        "1763812345123",
        false,
    )
    .unwrap();
    assert!(authenticate(KIND, &req, &public).is_ok());
    assert_eq!(
        authenticate(KIND, &tampered_body(&req, 40), &public).err(),
        Some(Deny::InvalidSignature)
    );
    let other = Credential::Ed25519(ed_public());
    assert_eq!(
        authenticate(KIND, &req, &other).err(),
        Some(Deny::InvalidSignature)
    );
    // A raw `+` (not percent-encoded) is still base64, not a space.
    let raw_plus = String::from_utf8(req.body.clone())
        .unwrap()
        .replace("%2B", "+")
        .replace("%2F", "/");
    let mut r = req.clone();
    r.body = raw_plus.into_bytes();
    assert!(authenticate(KIND, &r, &public).is_ok());
}

#[test]
fn hmac_round_trip_and_tampering() {
    let req = sign_request(
        KIND,
        &hmac_key(),
        Method::POST,
        "/api/v3/order",
        &[("symbol", "BTCUSDT"), ("quantity", "1")],
        "1763812345123",
        false,
    )
    .unwrap();
    for at in [0, 10, 30] {
        assert_eq!(
            authenticate(KIND, &tampered_body(&req, at), &hmac(CCXT_SECRET)).err(),
            Some(Deny::InvalidSignature),
            "byte {at}"
        );
    }
    // Upper-case hex is the same signature, and the same replay fingerprint.
    let text = String::from_utf8(req.body.clone()).unwrap();
    let (head, sig) = text.rsplit_once("signature=").unwrap();
    let mut upper = req.clone();
    upper.body = format!("{head}signature={}", sig.to_ascii_uppercase()).into_bytes();
    let a = authenticate(KIND, &req, &hmac(CCXT_SECRET)).unwrap();
    let b = authenticate(KIND, &upper, &hmac(CCXT_SECRET)).unwrap();
    assert_eq!(a.credentials.unwrap().replay, b.credentials.unwrap().replay);
    // An Ed25519 key never accepts an HMAC tag.
    let parsed = parse_client(KIND, &req).unwrap();
    assert_eq!(
        verify(
            &cfg(KIND),
            parsed.credentials.as_ref().unwrap(),
            &Credential::Ed25519(ed_public())
        ),
        Err(Deny::InvalidSignature)
    );
}

fn body_req(body: &str) -> ClientRequest {
    ccxt(Method::POST, "/api/v3/order", &doc_headers(), body)
}

#[test]
fn signature_placement() {
    let ts = "timestamp=1499827319559";
    let cases: &[(&str, &str, Deny)] = &[
        ("", ts, Deny::InvalidSignature),
        (
            "",
            &format!("signature={DOC_SIGNATURE}&{ts}"),
            Deny::InvalidSignature,
        ),
        (
            "",
            &format!("a=1&signature={DOC_SIGNATURE}&{ts}"),
            Deny::InvalidSignature,
        ),
        (
            "",
            &format!("{ts}&%73ignature={DOC_SIGNATURE}"),
            Deny::InvalidSignature,
        ),
        (
            "",
            &format!("{ts}&signature={DOC_SIGNATURE}&signature={DOC_SIGNATURE}"),
            Deny::DuplicateParameter,
        ),
        (
            &format!("signature={DOC_SIGNATURE}"),
            &format!("{ts}&signature={DOC_SIGNATURE}"),
            Deny::DuplicateParameter,
        ),
        ("", &format!("{ts}&signature="), Deny::InvalidSignature),
        (
            "",
            &format!("{ts}&signature={}", &DOC_SIGNATURE[..62]),
            Deny::InvalidSignature,
        ),
        (
            "",
            &format!("{ts}&signature={DOC_SIGNATURE}00"),
            Deny::InvalidSignature,
        ),
        (
            "",
            &format!("{ts}&signature={}zz", &DOC_SIGNATURE[..62]),
            Deny::InvalidSignature,
        ),
        ("", &format!("{ts}&signature=%zz"), Deny::InvalidParameter),
        (
            "",
            &format!("{ts}&signature=not+base64"),
            Deny::InvalidSignature,
        ),
    ];
    for (query, body, want) in cases {
        let mut req = body_req(body);
        if !query.is_empty() {
            req.path_and_query = format!("/api/v3/order?{query}");
        }
        assert_eq!(
            parse_client(KIND, &req).err(),
            Some(*want),
            "{query:?} {body:?}"
        );
    }
}

#[test]
fn timestamps() {
    let sig = format!("signature={DOC_SIGNATURE}");
    for body in [
        format!("symbol=X&{sig}"),
        format!("timestamp=&{sig}"),
        format!("timestamp=1.5e12&{sig}"),
        format!("timestamp=-1&{sig}"),
        format!("timestamp=+1&{sig}"),
        format!("timestamp=99999999999999999999&{sig}"),
        format!("timestamp=%201&{sig}"),
    ] {
        assert_eq!(
            parse_client(KIND, &body_req(&body)).err(),
            Some(Deny::StaleTimestamp),
            "{body}"
        );
    }
    for body in [
        format!("timestamp=1&recvWindow=60001&{sig}"),
        format!("timestamp=1&recvWindow=5e3&{sig}"),
        format!("timestamp=1&recvWindow=&{sig}"),
        format!("timestamp=1&recvWindow=6000.5&{sig}"),
    ] {
        assert_eq!(
            parse_client(KIND, &body_req(&body)).err(),
            Some(Deny::InvalidParameter),
            "{body}"
        );
    }
    let max = parse_client(
        KIND,
        &body_req(&format!("timestamp=1&recvWindow=60000&{sig}")),
    );
    assert!(max.is_ok());
}

#[test]
fn freshness_window() {
    let c = cfg(KIND);
    let at = |at_ms: u64, recv_window_ms: u64| Replay::Timestamp {
        at_ms,
        recv_window_ms,
        fingerprint: [0; 32],
    };
    let now = 1_700_000_000_000;
    assert_eq!(check_freshness(&c, &at(now, 5000), now), Ok(()));
    assert_eq!(check_freshness(&c, &at(now - 5000, 5000), now), Ok(()));
    assert_eq!(
        check_freshness(&c, &at(now - 5001, 5000), now),
        Err(Deny::StaleTimestamp)
    );
    assert_eq!(check_freshness(&c, &at(now + 1000, 5000), now), Ok(()));
    assert_eq!(
        check_freshness(&c, &at(now + 1001, 5000), now),
        Err(Deny::StaleTimestamp)
    );
    assert_eq!(check_freshness(&c, &at(now - 59_000, 60_000), now), Ok(()));
    assert_eq!(
        check_freshness(&c, &at(now, 60_001), now),
        Err(Deny::StaleTimestamp)
    );
    assert_eq!(
        check_freshness(&c, &at(u64::MAX, 5000), 0),
        Err(Deny::StaleTimestamp)
    );
    assert_eq!(
        check_freshness(&c, &at(0, 5000), u64::MAX),
        Err(Deny::StaleTimestamp)
    );
    let tight = DialectConfig {
        future_tolerance_ms: 0,
        recv_window_default_ms: 100,
        ..DialectConfig::new(KIND)
    };
    assert_eq!(
        check_freshness(&tight, &at(now + 1, 5000), now),
        Err(Deny::StaleTimestamp)
    );

    // The default window applies when the request names none.
    let req = body_req(&format!("timestamp={DOC_TS}&signature={DOC_SIGNATURE}"));
    let (parts, body) = from_client(&req);
    let parsed = parse(&tight, &parts, &body).unwrap();
    match parsed.credentials.unwrap().replay {
        Replay::Timestamp { recv_window_ms, .. } => assert_eq!(recv_window_ms, 100),
        other => panic!("{other:?}"),
    }
}

#[test]
fn key_header_without_signature_is_refused() {
    // historicalTrades and userDataStream carry only the key; the gateway cannot
    // authenticate them, so a present key header always needs a signature.
    let req = ccxt(
        Method::GET,
        "/api/v3/historicalTrades?symbol=BTCUSDT",
        &[("X-MBX-APIKEY", "k")],
        "",
    );
    assert_eq!(parse_client(KIND, &req).err(), Some(Deny::InvalidSignature));
}

#[test]
fn public_requests() {
    let req = public_request(
        KIND,
        Method::GET,
        "/api/v3/depth",
        &[("symbol", "BTCUSDT"), ("limit", "5")],
    );
    assert_eq!(req.path_and_query, "/api/v3/depth?symbol=BTCUSDT&limit=5");
    let parsed = parse_client(KIND, &req).unwrap();
    assert_eq!(parsed.credentials, None);
    assert_eq!(parsed.params.text("limit"), Ok(Some("5")));
    // A signature without the key header is not a credential.
    let unsigned = ccxt(
        Method::GET,
        &format!("/api/v3/depth?timestamp=1&signature={DOC_SIGNATURE}"),
        &[],
        "",
    );
    assert_eq!(parse_client(KIND, &unsigned).unwrap().credentials, None);
}

#[test]
fn query_and_body_names_are_unique_together() {
    let req = ccxt(
        Method::POST,
        "/api/v3/order?symbol=A",
        &doc_headers(),
        &format!("symbol=B&timestamp=1&signature={DOC_SIGNATURE}"),
    );
    assert_eq!(
        parse_client(KIND, &req).err(),
        Some(Deny::DuplicateParameter)
    );
}
