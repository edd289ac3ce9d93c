//! Dialect tests: known answers from the exchanges' docs and from ccxt 4.5.90's own
//! `sign()` (nonces pinned, output copied verbatim), round trips through
//! [`sign_request`] → [`parse`] → [`verify`], and every strict-parsing rule as seen
//! through [`parse`].

use http::header::{CONTENT_LENGTH, HOST};
use http::{HeaderValue, Method};

use super::*;
use crate::key::Secret;

mod binance;
mod coincheck;
mod kraken;
mod props;
mod rules;
mod zaif;

/// A request as it reaches `parse`: origin-form target, the headers given, `Host` and
/// `Content-Length` added the way an HTTP client adds them.
pub(super) fn received(
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> http::request::Parts {
    let mut builder = http::Request::builder().method(method).uri(target);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    let (mut parts, ()) = builder.body(()).unwrap().into_parts();
    if !parts.headers.contains_key(HOST) {
        parts
            .headers
            .insert(HOST, HeaderValue::from_static("gateway.test"));
    }
    if !body.is_empty() && !parts.headers.contains_key(CONTENT_LENGTH) {
        parts.headers.insert(CONTENT_LENGTH, body.len().into());
    }
    parts
}

/// A client request as the gateway receives it.
pub(super) fn from_client(req: &ClientRequest) -> (http::request::Parts, Vec<u8>) {
    let headers: Vec<(&str, &str)> = req
        .headers
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    let parts = received(
        req.method.as_str(),
        &req.path_and_query,
        &headers,
        &req.body,
    );
    (parts, req.body.clone())
}

/// The public base URL of the Coincheck tests: what [`received`]'s `Host` names.
pub(super) const BASE_URL: &str = "http://gateway.test";

pub(super) fn cfg(kind: DialectKind) -> DialectConfig {
    let mut cfg = DialectConfig::new(kind);
    if kind == DialectKind::Coincheck {
        cfg.public_base_url = Some(BASE_URL.to_owned());
    }
    cfg
}

pub(super) fn hmac(secret: &str) -> Credential {
    Credential::Hmac(Secret::new(secret.as_bytes().to_vec()))
}

pub(super) fn parse_client(
    kind: DialectKind,
    req: &ClientRequest,
) -> Result<ParsedRequest<'static>, Deny> {
    let (parts, body) = from_client(req);
    parse(&cfg(kind), &parts, &body).map(ParsedRequest::into_owned)
}

/// Parses and verifies; the parsed request on success.
pub(super) fn authenticate(
    kind: DialectKind,
    req: &ClientRequest,
    credential: &Credential,
) -> Result<ParsedRequest<'static>, Deny> {
    let parsed = parse_client(kind, req)?;
    let creds = parsed
        .credentials
        .as_ref()
        .ok_or(Deny::MissingCredentials)?;
    verify(&cfg(kind), creds, credential)?;
    Ok(parsed)
}

/// A request the way ccxt's `sign()` returned it.
pub(super) fn ccxt(
    method: Method,
    path_and_query: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> ClientRequest {
    ClientRequest {
        method,
        path_and_query: path_and_query.to_owned(),
        headers: headers
            .iter()
            .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
            .collect(),
        body: body.as_bytes().to_vec(),
    }
}

/// Changes the first digit at or after `at` in the body (another digit), so the request
/// still parses and only the signature can notice.
pub(super) fn tampered_body(req: &ClientRequest, at: usize) -> ClientRequest {
    let mut t = req.clone();
    let i = (at..t.body.len())
        .find(|i| t.body[*i].is_ascii_digit())
        .expect("a digit to change");
    t.body[i] = b'0' + (t.body[i] - b'0' + 1) % 10;
    t
}

/// Replaces one header's value.
pub(super) fn with_header(req: &ClientRequest, name: &str, value: &str) -> ClientRequest {
    let mut t = req.clone();
    for (n, v) in t.headers.iter_mut() {
        if n.eq_ignore_ascii_case(name) {
            *v = value.to_owned();
        }
    }
    t
}

#[test]
fn dialect_names_round_trip() {
    for kind in [
        DialectKind::Zaif,
        DialectKind::Binance,
        DialectKind::Kraken,
        DialectKind::Coincheck,
    ] {
        assert_eq!(kind.as_str().parse::<DialectKind>(), Ok(kind));
    }
    assert!("Binance".parse::<DialectKind>().is_err());
}

#[test]
fn credentials_debug_hides_the_signature() {
    let key = ClientKey::Hmac {
        api_key: "k",
        secret: b"s",
    };
    let req = sign_request(
        DialectKind::Zaif,
        &key,
        Method::POST,
        "/tapi",
        &[("method", "get_info")],
        "1",
        false,
    )
    .unwrap();
    let parsed = parse_client(DialectKind::Zaif, &req).unwrap();
    let debug = format!("{:?}", parsed.credentials.unwrap());
    let sign = &req.headers[2].1;
    assert!(!debug.contains(sign.as_str()), "{debug}");
    assert!(debug.contains("<redacted>"));
    let debug = format!("{key:?}");
    assert!(!debug.contains("secret: [115]") && debug.contains("<redacted>"));
}

#[test]
fn hex_signatures_decode_exactly() {
    assert_eq!(
        decode_hex_signature("00aF9b", 3).map(|s| s.as_slice().to_vec()),
        Ok(vec![0x00, 0xaf, 0x9b])
    );
    assert_eq!(
        decode_hex_signature(&hex::encode([0xde, 0xad, 0xbe, 0xef]), 4)
            .map(|s| s.as_slice().to_vec()),
        Ok(vec![0xde, 0xad, 0xbe, 0xef])
    );
    for bad in [
        "00aF9",
        "00aF9bc",
        "0g0000",
        "+00000",
        " 00000",
        "\u{e9}0000",
    ] {
        assert_eq!(
            decode_hex_signature(bad, 3).map(|s| s.as_slice().to_vec()),
            Err(Deny::InvalidSignature),
            "{bad:?}"
        );
    }
}
