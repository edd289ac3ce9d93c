//! Zaif `tapi`: `POST /tapi` with a form body holding `method` and a decimal `nonce`;
//! `Key` carries the API key and `Sign` the hex HMAC-SHA512 of the exact body.

use std::borrow::Cow;

use http::Method;
use ring::hmac;

use super::{ClientKey, ClientRequest, Credentials, Received, Replay, SignError};
use crate::decimal::{parse_decimal, Decimal};
use crate::params::{ParamSource, ParamValue};
use crate::parse;
use crate::Deny;

/// HMAC-SHA512 tags are 64 bytes, sent as 128 hex digits.
const SIGNATURE_LEN: usize = 64;

pub(super) fn credentials<'a>(rx: &Received<'_, 'a>) -> Result<Option<Credentials<'a>>, Deny> {
    let Some((api_key, sign)) = rx.key_and_signature("key", "sign")? else {
        return Ok(None);
    };
    let signature = super::decode_hex_signature(sign, SIGNATURE_LEN)?;
    // The nonce must be inside the signed body: one in the query would be unsigned.
    let nonce = match rx.param("nonce") {
        Some((ParamValue::Text(text), ParamSource::Body)) => parse_nonce(text)?,
        _ => return Err(Deny::InvalidNonce),
    };
    Ok(Some(Credentials {
        api_key: Cow::Borrowed(api_key),
        replay: Replay::Nonce(nonce),
        signature,
        signed_payload: Cow::Borrowed(rx.body),
    }))
}

/// Zaif nonces are plain decimals (ccxt sends `1763812345.12300000`): digits, an optional
/// fraction, no sign or exponent, at most 20 integer and 8 fraction digits (28 in all, what
/// an exact decimal holds). Stricter than amounts on purpose: an accepted nonce is
/// journaled as text and read back at start-up, so it must come back exactly; `1e28` would
/// be stored as 29 digits that no longer parse, and one such request would keep the
/// gateway from restarting.
pub(super) fn parse_nonce(text: &str) -> Result<Decimal, Deny> {
    let (int, frac) = match text.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (text, None),
    };
    let digits = |p: &str, max: usize| {
        !p.is_empty() && p.len() <= max && p.bytes().all(|b| b.is_ascii_digit())
    };
    if !digits(int, 20) || !frac.is_none_or(|f| digits(f, 8)) {
        return Err(Deny::InvalidNonce);
    }
    parse_decimal(text).map_err(|_| Deny::InvalidNonce)
}

pub(super) fn sign(
    key: &ClientKey<'_>,
    method: Method,
    path: &str,
    params: &[(&str, &str)],
    nonce: &str,
) -> Result<ClientRequest, SignError> {
    let ClientKey::Hmac { api_key, secret } = *key else {
        return Err(SignError::UnsupportedKey("zaif"));
    };
    let mut ordered: Vec<(&str, &str)> = Vec::with_capacity(params.len() + 1);
    ordered.extend(params.iter().copied().filter(|(n, _)| *n == "method"));
    ordered.push(("nonce", nonce));
    ordered.extend(
        params
            .iter()
            .copied()
            .filter(|(n, _)| *n != "method" && *n != "nonce"),
    );
    let body = parse::urlencode(ordered, b"");
    let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA512, secret), body.as_bytes());
    Ok(ClientRequest {
        method,
        path_and_query: path.to_owned(),
        headers: vec![
            (
                "Content-Type".to_owned(),
                "application/x-www-form-urlencoded".to_owned(),
            ),
            ("Key".to_owned(), api_key.to_owned()),
            ("Sign".to_owned(), hex::encode(tag.as_ref())),
        ],
        body: body.into_bytes(),
    })
}
