//! Hostile input never panics `parse`, and anything `sign_request` builds verifies.

use proptest::prelude::*;

use super::*;
use crate::parse::names::same_parameter;

/// A name an exchange could use, including each dialect's own fields.
fn base_name() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z]{1,10}",
        Just("amount".to_owned()),
        Just("address".to_owned()),
        Just("price".to_owned()),
        Just("nonce".to_owned()),
        Just("timestamp".to_owned()),
        Just("signature".to_owned()),
        Just("method".to_owned()),
        Just("pair".to_owned()),
    ]
}

/// A spelling of `base` that a lenient server reads as `base` (see `parse::names`):
/// `(transform, position, whitespace)` picks how.
fn twin_of(base: &str, transform: u8, at: usize, ws: char) -> String {
    let chars: Vec<char> = base.chars().collect();
    let i = at % chars.len();
    let map_at = |f: &dyn Fn(char) -> char| -> String {
        chars
            .iter()
            .enumerate()
            .map(|(j, c)| if j == i { f(*c) } else { *c })
            .collect()
    };
    match transform % 8 {
        // ASCII case: one letter upper-cased, or the whole name.
        0 => map_at(&|c| c.to_ascii_uppercase()),
        1 => base.to_ascii_uppercase(),
        // NFKC: fullwidth forms, mathematical bold letters.
        2 => chars
            .iter()
            .map(|c| char::from_u32(*c as u32 - 0x21 + 0xFF01).unwrap())
            .collect(),
        3 => map_at(&|c| char::from_u32(0x1D41A + (c as u32 - 'a' as u32)).unwrap()),
        // Whitespace around the name.
        4 => format!("{base}{ws}"),
        5 => format!("{ws}{base}"),
        // PHP array suffixes.
        6 => format!("{base}[]"),
        _ => format!("{base}[{}]", at % 100),
    }
}

/// Whitespace an upstream could trim from around a name.
fn whitespace() -> impl Strategy<Value = char> {
    prop_oneof![
        Just(' '),
        Just('\u{A0}'),
        Just('\u{2003}'),
        Just('\u{3000}'),
        Just('\u{202F}'),
    ]
}

/// Characters that render as nothing.
fn invisible() -> impl Strategy<Value = char> {
    prop_oneof![
        Just('\u{200B}'),
        Just('\u{200C}'),
        Just('\u{200D}'),
        Just('\u{2060}'),
        Just('\u{FEFF}'),
        Just('\u{00AD}'),
        Just('\u{202E}'),
        Just('\u{2066}'),
        Just('\u{FE0F}'),
        Just('\u{E0061}'),
    ]
}

/// Signs `params` as `kind`'s reference client would send them (Kraken as form or JSON).
fn signed_with(kind: DialectKind, json: bool, params: &[(&str, &str)]) -> ClientRequest {
    let secret = "c2VjcmV0";
    let key = ClientKey::Hmac {
        api_key: "k",
        secret: secret.as_bytes(),
    };
    let (path, method) = match kind {
        DialectKind::Zaif => ("/tapi", Method::POST),
        DialectKind::Binance => ("/api/v3/order", Method::POST),
        DialectKind::Kraken => ("/0/private/Withdraw", Method::POST),
        DialectKind::Coincheck => ("/api/send_money", Method::POST),
    };
    match kind {
        DialectKind::Coincheck => {
            sign_coincheck(&key, BASE_URL, method, path, params, "7").unwrap()
        }
        _ => sign_request(
            kind,
            &key,
            method,
            path,
            params,
            "7",
            json && kind == DialectKind::Kraken,
        )
        .unwrap(),
    }
}

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
        let mut seen: Vec<&str> = Vec::new();
        let params: Vec<(&str, &str)> = params
            .iter()
            .filter(|(n, _)| {
                // `nonce`/`timestamp`/`signature` are added by sign_request (in any
                // spelling they would be twins), and a `_method` field is refused by design.
                let taken = ["nonce", "timestamp", "signature", "recvWindow", "_method"]
                    .iter()
                    .chain(&seen)
                    .any(|t| same_parameter(t, n));
                if !taken {
                    seen.push(n);
                }
                !taken
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

    /// Item 8 of issue 10: a name and its twin under any lenient reading are refused in
    /// every dialect (form, query, JSON), with the twin before or after the original.
    #[test]
    fn twins_are_refused_in_every_dialect(
        kind in any_kind(),
        json in proptest::bool::ANY,
        base in base_name(),
        transform in 0u8..8,
        at in 0usize..64,
        ws in whitespace(),
        twin_first in proptest::bool::ANY,
    ) {
        let twin = twin_of(&base, transform, at, ws);
        prop_assert!(same_parameter(&base, &twin), "{base:?} {twin:?}");
        let mut params = vec![("currency", "btc"), (base.as_str(), "1"), (twin.as_str(), "1000")];
        if twin_first {
            params.swap(1, 2);
        }
        let req = signed_with(kind, json, &params);
        let got = parse_client(kind, &req);
        let want = if json && kind == DialectKind::Kraken {
            Deny::InvalidJson
        } else {
            Deny::DuplicateParameter
        };
        prop_assert_eq!(got.as_ref().err(), Some(&want), "{:?}", req);
    }

    /// A name with an invisible character is refused on its own, twin or not.
    #[test]
    fn invisible_names_are_refused_in_every_dialect(
        kind in any_kind(),
        json in proptest::bool::ANY,
        base in "[a-z]{1,10}",
        c in invisible(),
        at in 0usize..11,
    ) {
        let mut name: Vec<char> = base.chars().collect();
        name.insert(at.min(name.len()), c);
        let name: String = name.into_iter().collect();
        let req = signed_with(kind, json, &[("currency", "btc"), (name.as_str(), "1")]);
        let want = if json && kind == DialectKind::Kraken {
            Deny::InvalidJson
        } else {
            Deny::InvalidParameter
        };
        prop_assert_eq!(parse_client(kind, &req).err(), Some(want), "{:?}", req);
    }
}
