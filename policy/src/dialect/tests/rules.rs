//! The strict-parsing rules as `parse` applies them, one dialect-neutral request at a time.

use super::*;

const FORM: (&str, &str) = ("Content-Type", "application/x-www-form-urlencoded");

fn run(
    kind: DialectKind,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Result<ParsedRequest<'static>, Deny> {
    let parts = received(method, target, headers, body.as_bytes());
    parse(&cfg(kind), &parts, body.as_bytes()).map(ParsedRequest::into_owned)
}

fn deny(
    kind: DialectKind,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Deny {
    run(kind, method, target, headers, body).expect_err(target)
}

const ALL: [DialectKind; 3] = [DialectKind::Zaif, DialectKind::Binance, DialectKind::Kraken];

#[test]
fn only_four_methods() {
    for method in ["PATCH", "OPTIONS", "HEAD", "TRACE", "CONNECT", "PROPFIND"] {
        for kind in ALL {
            let target = if method == "CONNECT" {
                "gateway.test:443"
            } else {
                "/tapi"
            };
            assert_eq!(
                deny(kind, method, target, &[], ""),
                Deny::MethodNotAllowed,
                "{method}"
            );
        }
    }
    for method in ["GET", "POST", "PUT", "DELETE"] {
        assert!(
            run(DialectKind::Binance, method, "/api/v3/time", &[], "").is_ok(),
            "{method}"
        );
    }
}

#[test]
fn paths() {
    for target in [
        "/api/../tapi",
        "/./tapi",
        "/api/%2e%2e/tapi",
        "/api/%2E%2e/tapi",
        "/api/.%2E/tapi",
        "/api%2ftapi",
        "/api%5Ctapi",
        "/tapi%3bx",
        "/tapi%00",
        "/tapi%252e%252e",
        "//tapi",
        "/api//1",
        "/tapi;jsessionid=x",
        "/api\\tapi",
        "/t%C3%A9",
        "/t%ff",
        "/a\u{e9}",
        "/a{b}",
    ] {
        for kind in ALL {
            assert_eq!(
                deny(kind, "GET", target, &[], ""),
                Deny::InvalidPath,
                "{target}"
            );
        }
    }
    let parsed = run(DialectKind::Zaif, "GET", "/api/1/ticker/btc_jpy", &[], "").unwrap();
    assert_eq!(parsed.path, "/api/1/ticker/btc_jpy");
}

#[test]
fn targets() {
    let kind = DialectKind::Binance;
    assert!(run(kind, "GET", "http://gateway.test/api/v3/time", &[], "").is_ok());
    assert!(run(kind, "GET", "http://GATEWAY.test:80/api/v3/time", &[], "").is_ok());
    assert_eq!(
        deny(kind, "GET", "http://evil.test/api/v3/time", &[], ""),
        Deny::InvalidTarget
    );
    assert_eq!(
        deny(kind, "GET", "http://gateway.test:8080/api/v3/time", &[], ""),
        Deny::InvalidTarget
    );
    assert_eq!(
        deny(
            kind,
            "GET",
            "/api/v3/time",
            &[("Host", "gateway.test"), ("Host", "evil.test")],
            ""
        ),
        Deny::InvalidTarget
    );
}

#[test]
fn method_overrides() {
    for name in [
        "X-HTTP-Method-Override",
        "X-HTTP-Method",
        "X-Method-Override",
        "x_http_method_override",
    ] {
        for kind in ALL {
            assert_eq!(
                deny(kind, "POST", "/x", &[(name, "DELETE")], ""),
                Deny::MethodOverride,
                "{name}"
            );
        }
    }
    assert_eq!(
        deny(DialectKind::Binance, "GET", "/x?_method=DELETE", &[], ""),
        Deny::MethodOverride
    );
    assert_eq!(
        deny(DialectKind::Binance, "GET", "/x?_METHOD=DELETE", &[], ""),
        Deny::MethodOverride
    );
    assert_eq!(
        deny(
            DialectKind::Zaif,
            "POST",
            "/tapi",
            &[FORM],
            "method=get_info&_method=GET"
        ),
        Deny::MethodOverride
    );
    assert_eq!(
        deny(DialectKind::Zaif, "POST", "/tapi", &[FORM], "%5Fmethod=GET"),
        Deny::MethodOverride
    );
}

#[test]
fn auth_headers() {
    let cases: &[(DialectKind, &[(&str, &str)])] = &[
        (DialectKind::Zaif, &[("Key", "a"), ("Key", "a")]),
        (DialectKind::Zaif, &[("Sign", "a,b")]),
        (
            DialectKind::Binance,
            &[("X-MBX-APIKEY", "a"), ("X-MBX-APIKEY", "b")],
        ),
        (DialectKind::Binance, &[("X-MBX-APIKEY", "a,b")]),
        (DialectKind::Binance, &[("X_MBX_APIKEY", "a")]),
        (
            DialectKind::Binance,
            &[("x_mbx_apikey", "a"), ("X-MBX-APIKEY", "a")],
        ),
        (DialectKind::Kraken, &[("API_Sign", "a")]),
        (DialectKind::Kraken, &[("API_KEY", "a")]),
        (DialectKind::Kraken, &[("API-Key", "a"), ("api-key", "a")]),
        (DialectKind::Kraken, &[("API-Key", "a b")]),
    ];
    for (kind, headers) in cases {
        assert_eq!(
            deny(*kind, "GET", "/x", headers, ""),
            Deny::InvalidHeader,
            "{kind:?} {headers:?}"
        );
    }
}

#[test]
fn header_values_and_framing() {
    for kind in ALL {
        assert_eq!(
            deny(kind, "GET", "/x", &[("User-Agent", "a\tb")], ""),
            Deny::InvalidHeader
        );
        assert_eq!(
            deny(
                kind,
                "POST",
                "/x",
                &[
                    FORM,
                    ("Content-Length", "3"),
                    ("Transfer-Encoding", "chunked")
                ],
                "a=1"
            ),
            Deny::InvalidHeader
        );
        assert_eq!(
            deny(kind, "POST", "/x", &[FORM, ("Content-Length", "4")], "a=1"),
            Deny::InvalidHeader
        );
        assert_eq!(
            deny(
                kind,
                "POST",
                "/x",
                &[FORM, ("Content-Encoding", "gzip")],
                "a=1"
            ),
            Deny::UnsupportedMediaType
        );
    }
}

#[test]
fn query_and_form_strictness() {
    let kind = DialectKind::Binance;
    for target in [
        "/x?a=1;b=2",
        "/x?a",
        "/x?=1",
        "/x?a=1&&b=2",
        "/x?a=%zz",
        "/x?a=%ff",
        "/x?a=%00",
    ] {
        assert_eq!(
            deny(kind, "GET", target, &[], ""),
            Deny::InvalidParameter,
            "{target}"
        );
    }
    assert_eq!(
        deny(kind, "GET", "/x?a=1&a=2", &[], ""),
        Deny::DuplicateParameter
    );
    assert_eq!(
        deny(kind, "GET", "/x?a=1&%61=2", &[], ""),
        Deny::DuplicateParameter
    );
    assert_eq!(
        deny(kind, "POST", "/x?a=1", &[FORM], "a=2"),
        Deny::DuplicateParameter
    );
    assert_eq!(
        deny(kind, "POST", "/x", &[FORM], "a=1;b=2"),
        Deny::InvalidParameter
    );
    assert_eq!(
        deny(kind, "POST", "/x", &[FORM], "b=1&b=1"),
        Deny::DuplicateParameter
    );

    let parsed = run(kind, "PUT", "/x?a=b+c", &[FORM], "d=%2F").unwrap();
    let all: Vec<_> = parsed
        .params
        .iter()
        .map(|(n, v, s)| (n.to_owned(), v.as_text().unwrap().to_owned(), s))
        .collect();
    assert_eq!(
        all,
        vec![
            ("a".to_owned(), "b c".to_owned(), ParamSource::Query),
            ("d".to_owned(), "/".to_owned(), ParamSource::Body),
        ]
    );
}

#[test]
fn query_placement_per_dialect() {
    // Zaif and Kraken sign only the body, so their POSTs carry no query at all.
    for kind in [DialectKind::Zaif, DialectKind::Kraken] {
        assert_eq!(
            deny(kind, "POST", "/x?a=1", &[FORM], "b=1"),
            Deny::InvalidParameter
        );
        assert_eq!(deny(kind, "POST", "/x?", &[], ""), Deny::InvalidParameter);
        assert!(run(kind, "GET", "/x?a=1", &[], "").is_ok());
    }
    assert!(run(DialectKind::Binance, "POST", "/x?a=1", &[FORM], "b=1").is_ok());
}

#[test]
fn content_types() {
    for kind in ALL {
        assert_eq!(
            deny(kind, "POST", "/x", &[], "a=1"),
            Deny::UnsupportedMediaType
        );
        for ct in [
            "text/plain",
            "multipart/form-data; boundary=x",
            "application/x-www-form-urlencoded; charset=latin1",
        ] {
            assert_eq!(
                deny(kind, "POST", "/x", &[("Content-Type", ct)], "a=1"),
                Deny::UnsupportedMediaType,
                "{ct}"
            );
        }
        let ok = run(
            kind,
            "POST",
            "/x",
            &[(
                "Content-Type",
                "Application/X-WWW-Form-Urlencoded; Charset=UTF-8",
            )],
            "a=1",
        )
        .unwrap();
        assert_eq!(ok.body_kind, BodyKind::Form);
        // An empty body with the dialect's content type is fine (ccxt sends that).
        let empty = run(kind, "POST", "/x", &[FORM], "").unwrap();
        assert_eq!(empty.body_kind, BodyKind::Empty);
    }
    for kind in [DialectKind::Zaif, DialectKind::Binance] {
        let json = [("Content-Type", "application/json")];
        assert_eq!(
            deny(kind, "POST", "/x", &json, "{}"),
            Deny::UnsupportedMediaType
        );
        assert_eq!(
            deny(kind, "POST", "/x", &json, ""),
            Deny::UnsupportedMediaType
        );
    }
    let json = run(
        DialectKind::Kraken,
        "POST",
        "/x",
        &[("Content-Type", "application/json; charset=utf-8")],
        r#"{"a":{"b":[1]}}"#,
    )
    .unwrap();
    assert_eq!(json.body_kind, BodyKind::Json);
}

#[test]
fn get_and_delete_have_no_body() {
    for kind in ALL {
        for method in ["GET", "DELETE"] {
            assert_eq!(
                deny(kind, method, "/x", &[FORM], "a=1"),
                Deny::InvalidParameter,
                "{method}"
            );
        }
    }
}

#[test]
fn no_auth_headers_means_no_credentials() {
    for kind in ALL {
        let parsed = run(kind, "POST", "/x", &[FORM], "nonce=1&timestamp=1").unwrap();
        assert_eq!(parsed.credentials, None);
    }
}
