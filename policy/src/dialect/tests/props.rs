//! Hostile input never panics `parse`, and anything `sign_request` builds verifies.

use proptest::prelude::*;

use super::*;

fn any_kind() -> impl Strategy<Value = DialectKind> {
    prop_oneof![
        Just(DialectKind::Zaif),
        Just(DialectKind::Binance),
        Just(DialectKind::Kraken),
        Just(DialectKind::Coincheck)
    ]
}

proptest! {
    #[test]
    fn parse_never_panics(
        kind in any_kind(),
        method in prop_oneof![Just("GET"), Just("POST"), Just("PUT"), Just("DELETE")],
        path in "/[a-zA-Z0-9%./;_\\-]{0,24}",
        query in proptest::option::of("[a-z0-9=&;%+_\\[\\]]{0,32}"),
        content_type in prop_oneof![
            Just(None),
            Just(Some("application/x-www-form-urlencoded")),
            Just(Some("application/json")),
        ],
        auth in proptest::bool::ANY,
        body in prop::collection::vec(any::<u8>(), 0..128),
    ) {
        let target = match &query {
            Some(q) => format!("{path}?{q}"),
            None => path.clone(),
        };
        let Ok(uri) = target.parse::<http::Uri>() else { return Ok(()) };
        let mut headers: Vec<(&str, &str)> = Vec::new();
        if let Some(ct) = content_type {
            headers.push(("Content-Type", ct));
        }
        if auth {
            for name in kind.auth_headers() {
                headers.push((name, "QUJD"));
            }
        }
        let parts = received(method, &uri.to_string(), &headers, &body);
        if let Ok(parsed) = parse(&cfg(kind), &parts, &body) {
            if let Some(creds) = &parsed.credentials {
                let _ = verify(&cfg(kind), creds, &hmac("c2VjcmV0"));
                let _ = check_freshness(&cfg(kind), &creds.replay, 0);
            }
        }
    }

    #[test]
    fn signed_requests_verify(
        kind in any_kind(),
        post in proptest::bool::ANY,
        json in proptest::bool::ANY,
        params in prop::collection::vec(("[a-zA-Z][a-zA-Z0-9_\\[\\]]{0,8}", "[ -~\u{e9}\u{3042}]{0,12}"), 0..5),
        nonce in 1u64..10_000_000_000_000_000_000,
    ) {
        let mut seen = std::collections::HashSet::new();
        let params: Vec<(&str, &str)> = params
            .iter()
            .filter(|(n, _)| {
                // `nonce`/`timestamp`/`signature` are added by sign_request, and a
                // `_method` field is refused by design.
                !["nonce", "timestamp", "signature", "recvWindow"].contains(&n.as_str())
                    && !n.eq_ignore_ascii_case("_method")
                    && seen.insert(n.clone())
            })
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect();
        let method = if post { Method::POST } else { Method::GET };
        let (path, method, json) = match kind {
            DialectKind::Zaif => ("/tapi", Method::POST, false),
            DialectKind::Binance => ("/api/v3/order", method, false),
            DialectKind::Kraken => ("/0/private/AddOrder", Method::POST, json),
            DialectKind::Coincheck => ("/api/exchange/orders", method, false),
        };
        let secret = "kQH5HW/8p1uGOVjbgWA7FunAmGO8lsSUXNsu3eow76sz84Q18fWxnyRzBHCd3pd5nE9qa99HAZtuZuj6F1huXg==";
        let key = ClientKey::Hmac { api_key: "k", secret: secret.as_bytes() };
        let req = match kind {
            DialectKind::Coincheck => {
                let nonce = nonce.min(i64::MAX as u64).to_string();
                sign_coincheck(&key, BASE_URL, method, path, &params, &nonce).unwrap()
            }
            _ => sign_request(kind, &key, method, path, &params, &nonce.to_string(), json).unwrap(),
        };
        let parsed = authenticate(kind, &req, &hmac(secret));
        prop_assert!(parsed.is_ok(), "{req:?}: {parsed:?}");
        let parsed = parsed.unwrap();
        for (name, value) in &params {
            prop_assert_eq!(parsed.params.text(name), Ok(Some(*value)));
        }
    }
}
