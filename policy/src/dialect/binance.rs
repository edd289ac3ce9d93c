//! Binance: `X-MBX-APIKEY` names the key; the `signature` parameter signs
//! `totalParams` = the query string (without `?`) directly followed by the body, minus the
//! `&signature=…` piece. HMAC keys sign with hex HMAC-SHA256, Ed25519 keys with a base64
//! signature (percent-encoded in the request). `timestamp` and `recvWindow` bound the
//! request in time; the signature's hash guards against replays inside that window.

use std::borrow::Cow;

use http::Method;
use ring::{digest, hmac};

use super::{ClientKey, ClientRequest, Credentials, Received, Replay, SignError};
use crate::params::ParamSource;
use crate::parse;
use crate::parse::urlencoded::decode_component;
use crate::Deny;

const SIGNATURE_PARAM: &[u8] = b"signature=";
/// HMAC-SHA256 tags: 32 bytes as 64 hex digits.
const HMAC_LEN: usize = 32;
/// Ed25519 signatures: 64 bytes as 88 base64 characters.
const ED25519_LEN: usize = 64;
/// Longest digit string accepted for `timestamp`/`recvWindow`; anything longer cannot
/// be a millisecond count and is not worth parsing.
const MAX_DIGITS: usize = 19;

pub(super) fn credentials<'a>(rx: &Received<'_, 'a>) -> Result<Option<Credentials<'a>>, Deny> {
    let Some(api_key) = rx.auth("x-mbx-apikey")? else {
        return Ok(None);
    };
    let source = match rx.param("signature") {
        Some((_, source)) => source,
        None => return Err(Deny::InvalidSignature),
    };
    let query = rx.query.as_bytes();
    // Strict parsing already made names unique, so the only question left is whether the
    // one `signature` is the last piece of its part, written plainly. Anything else
    // (first, in the middle, `%73ignature=`) would make "the bytes before it" ambiguous.
    let signed_part = match source {
        ParamSource::Query => query,
        ParamSource::Body => rx.body,
    };
    let (before, value) = split_last_signature(signed_part)?;
    // ccxt puts everything in one part, so the signed bytes are usually a slice of the
    // request; only a request with both a query and a body needs them joined.
    let (first, second) = match source {
        ParamSource::Query => (before, rx.body),
        ParamSource::Body => (query, before),
    };
    let payload: Cow<'a, [u8]> = if second.is_empty() {
        Cow::Borrowed(first)
    } else if first.is_empty() {
        Cow::Borrowed(second)
    } else {
        Cow::Owned([first, second].concat())
    };
    let signature = decode_signature(value)?;

    let at_ms = match rx.params.field_text("timestamp") {
        Ok(Some(text)) => digits(text).ok_or(Deny::StaleTimestamp)?,
        _ => return Err(Deny::StaleTimestamp),
    };
    let recv_window_ms = match rx.params.field_text("recvWindow")? {
        None => rx.cfg.recv_window_default_ms,
        Some(text) => digits(text).ok_or(Deny::InvalidParameter)?,
    };
    // Binance answers an oversized window with a parameter error (-1131), not an
    // authentication one; so do we.
    if recv_window_ms > rx.cfg.recv_window_max_ms {
        return Err(Deny::InvalidParameter);
    }
    let fingerprint: [u8; 32] = digest::digest(&digest::SHA256, signature.as_slice())
        .as_ref()
        .try_into()
        .map_err(|_| Deny::InvalidSignature)?;
    Ok(Some(Credentials {
        api_key: Cow::Borrowed(api_key),
        replay: Replay::Timestamp {
            at_ms,
            recv_window_ms,
            fingerprint,
        },
        signature,
        signed_payload: payload,
    }))
}

/// Splits `part` into the bytes before `&signature=` (or nothing, when `signature=`
/// starts the part) and the raw signature value.
fn split_last_signature(part: &[u8]) -> Result<(&[u8], &[u8]), Deny> {
    let (before, last) = match part.iter().rposition(|b| *b == b'&') {
        Some(i) => (&part[..i], &part[i + 1..]),
        None => (&part[..0], part),
    };
    let value = last
        .strip_prefix(SIGNATURE_PARAM)
        .ok_or(Deny::InvalidSignature)?;
    Ok((before, value))
}

/// Hex (HMAC) or base64 (Ed25519), told apart by length: 64 hex digits are only 48 bytes
/// as base64, so the two never overlap. The key record decides later which one must
/// verify. Only percent-escapes are decoded: a raw `+` is base64, not a space.
fn decode_signature(raw: &[u8]) -> Result<super::Signature, Deny> {
    let text = decode_component(raw, false).map_err(|_| Deny::InvalidSignature)?;
    if text.len() == HMAC_LEN * 2 {
        super::decode_hex_signature(&text, HMAC_LEN)
    } else {
        super::decode_base64_signature(&text, ED25519_LEN)
    }
}

fn digits(text: &str) -> Option<u64> {
    if text.is_empty() || text.len() > MAX_DIGITS || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// Whether ccxt sends this path's parameters unquoted (its `rawencode` branch).
fn ccxt_raw_encodes(path: &str) -> bool {
    path.ends_with("/batchOrders")
        || path.ends_with("/capital/withdraw/apply")
        || path.contains("sub-account")
        || path.contains("staking")
        || path.contains("simple-earn")
}

pub(super) fn sign(
    key: &ClientKey<'_>,
    method: Method,
    path: &str,
    params: &[(&str, &str)],
    timestamp: &str,
) -> Result<ClientRequest, SignError> {
    let ordered = std::iter::once(("timestamp", timestamp)).chain(
        params
            .iter()
            .copied()
            .filter(|(n, _)| *n != "timestamp" && *n != "signature"),
    );
    let mut query = if ccxt_raw_encodes(path) {
        ordered
            .map(|(n, v)| format!("{n}={v}"))
            .collect::<Vec<_>>()
            .join("&")
    } else {
        parse::urlencode(ordered, b"")
    };
    let signature = match *key {
        ClientKey::Hmac { secret, .. } => {
            let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, secret), query.as_bytes());
            hex::encode(tag.as_ref())
        }
        ClientKey::Ed25519 { pkcs8, .. } => {
            use base64::Engine as _;
            let pair = super::ed25519_key_pair(pkcs8)?;
            let b64 = base64::engine::general_purpose::STANDARD.encode(pair.sign(query.as_bytes()));
            // ccxt's encode_uri_component: JavaScript's encodeURIComponent safe set.
            parse::quote(&b64, b"~()*!.'")
        }
    };
    query.push_str("&signature=");
    query.push_str(&signature);
    let mut headers = vec![("X-MBX-APIKEY".to_owned(), key.api_key().to_owned())];
    let (path_and_query, body) = if method == Method::GET || method == Method::DELETE {
        (format!("{path}?{query}"), Vec::new())
    } else {
        headers.push((
            "Content-Type".to_owned(),
            "application/x-www-form-urlencoded".to_owned(),
        ));
        (path.to_owned(), query.into_bytes())
    };
    Ok(ClientRequest {
        method,
        path_and_query,
        headers,
        body,
    })
}
