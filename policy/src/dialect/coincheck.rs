//! Coincheck: `ACCESS-KEY`, `ACCESS-NONCE` (a decimal integer that grows with every
//! request) and `ACCESS-SIGNATURE` = hex HMAC-SHA256(secret, nonce ‖ URL ‖ body), where
//! the URL is the full one the client called: scheme, host, path and query.
//!
//! The gateway never sees the scheme, and the host only as the client's `Host` header, so
//! it rebuilds the URL from the configured public base URL
//! ([`DialectConfig::public_base_url`]) and refuses a request whose `Host` names anything
//! else ([`Deny::InvalidTarget`]): a request signed for another host (a test gateway, a
//! phishing proxy, the real exchange) then cannot verify here, and one signed here cannot
//! be replayed against a different deployment that shares the key.

use std::borrow::Cow;

use http::header::HOST;
use http::Method;
use ring::hmac;

use super::{ClientKey, ClientRequest, Credentials, DialectConfig, Received, Replay, SignError};
use crate::decimal::Decimal;
use crate::parse;
use crate::Deny;

/// HMAC-SHA256 tags are 32 bytes, sent as 64 hex digits.
const SIGNATURE_LEN: usize = 32;
/// Coincheck documents its nonce maximum as 9223372036854775807 (i64): 19 digits.
const MAX_NONCE_DIGITS: usize = 19;

/// The `Host` a request must carry: the authority of the public base URL, compared
/// without regard to ASCII case (host names are case-insensitive; the port is not
/// defaulted, since a client that wrote `:443` signed a URL with `:443` in it).
pub(super) fn check_host(cfg: &DialectConfig, headers: &http::HeaderMap) -> Result<(), Deny> {
    let Some(base) = cfg.public_base_url.as_deref() else {
        // A Coincheck gateway without a base URL cannot verify anything; config refuses
        // to build one, and this keeps a hand-built config failing closed.
        return Err(Deny::InvalidTarget);
    };
    let authority = base
        .split_once("://")
        .map_or(base, |(_, rest)| rest)
        .split('/')
        .next()
        .unwrap_or("");
    let mut hosts = headers.get_all(HOST).iter();
    match (hosts.next(), hosts.next()) {
        (Some(host), None) if host.as_bytes().eq_ignore_ascii_case(authority.as_bytes()) => Ok(()),
        _ => Err(Deny::InvalidTarget),
    }
}

pub(super) fn credentials<'a>(rx: &Received<'_, 'a>) -> Result<Option<Credentials<'a>>, Deny> {
    let key = rx.auth("access-key")?;
    let nonce = rx.auth("access-nonce")?;
    let sign = rx.auth("access-signature")?;
    let (api_key, sign) = match (key, sign) {
        (None, None) if nonce.is_none() => return Ok(None),
        (None, _) => return Err(Deny::MissingCredentials),
        (Some(_), None) => return Err(Deny::InvalidSignature),
        (Some(key), Some(sign)) => (key, sign),
    };
    let signature = super::decode_hex_signature(sign, SIGNATURE_LEN)?;
    let nonce_text = nonce.ok_or(Deny::InvalidNonce)?;
    let nonce = parse_nonce(nonce_text)?;
    let base = rx
        .cfg
        .public_base_url
        .as_deref()
        .ok_or(Deny::InvalidTarget)?;
    let query = rx.query_present.then_some(rx.query);
    Ok(Some(Credentials {
        api_key: Cow::Borrowed(api_key),
        replay: Replay::Nonce(Decimal::from(nonce)),
        signature,
        signed_payload: Cow::Owned(signed_payload(nonce_text, base, rx.path, query, rx.body)),
    }))
}

/// A positive decimal integer of at most 19 digits, no sign, no leading zeros (the
/// signature covers the text, and `007` would journal as `7`), at most `i64::MAX`.
fn parse_nonce(text: &str) -> Result<u64, Deny> {
    let canonical = !text.is_empty()
        && text.len() <= MAX_NONCE_DIGITS
        && text.bytes().all(|b| b.is_ascii_digit())
        && !(text.len() > 1 && text.starts_with('0'));
    if !canonical {
        return Err(Deny::InvalidNonce);
    }
    match text.parse::<u64>() {
        Ok(n) if n > 0 && n <= i64::MAX as u64 => Ok(n),
        _ => Err(Deny::InvalidNonce),
    }
}

/// `nonce ‖ base ‖ path ‖ ?query ‖ body`, the bytes Coincheck signs.
fn signed_payload(
    nonce: &str,
    base: &str,
    path: &str,
    query: Option<&str>,
    body: &[u8],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(
        nonce.len() + base.len() + path.len() + query.map_or(0, |q| q.len() + 1) + body.len(),
    );
    out.extend_from_slice(nonce.as_bytes());
    out.extend_from_slice(base.as_bytes());
    out.extend_from_slice(path.as_bytes());
    if let Some(q) = query {
        out.push(b'?');
        out.extend_from_slice(q.as_bytes());
    }
    out.extend_from_slice(body);
    out
}

/// Signs like ccxt 4.5's `coincheck.sign()`: parameters sorted by name; for `GET` in the
/// query (`base + path + ?query` is signed), otherwise as a form body (`base + path +
/// body` is signed); `Content-Type` form on every private request, even bodiless ones.
pub(super) fn sign(
    key: &ClientKey<'_>,
    base_url: &str,
    method: Method,
    path: &str,
    params: &[(&str, &str)],
    nonce: &str,
) -> Result<ClientRequest, SignError> {
    let ClientKey::Hmac { api_key, secret } = *key else {
        return Err(SignError::UnsupportedKey("coincheck"));
    };
    let mut sorted: Vec<(&str, &str)> = params.to_vec();
    sorted.sort_by(|a, b| a.0.cmp(b.0));
    let encoded = parse::urlencode(sorted, b"");
    let (path_and_query, body) = if method == Method::GET && !encoded.is_empty() {
        (format!("{path}?{encoded}"), String::new())
    } else if method == Method::GET {
        (path.to_owned(), String::new())
    } else {
        (path.to_owned(), encoded)
    };
    let base = base_url.trim_end_matches('/');
    let message = format!("{nonce}{base}{path_and_query}{body}");
    let tag = hmac::sign(
        &hmac::Key::new(hmac::HMAC_SHA256, secret),
        message.as_bytes(),
    );
    Ok(ClientRequest {
        method,
        path_and_query,
        headers: vec![
            (
                "Content-Type".to_owned(),
                "application/x-www-form-urlencoded".to_owned(),
            ),
            ("ACCESS-KEY".to_owned(), api_key.to_owned()),
            ("ACCESS-NONCE".to_owned(), nonce.to_owned()),
            ("ACCESS-SIGNATURE".to_owned(), hex::encode(tag.as_ref())),
        ],
        body: body.into_bytes(),
    })
}
