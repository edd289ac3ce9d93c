//! Kraken: `POST /0/private/<Method>` with `API-Key` and `API-Sign` =
//! base64 HMAC-SHA512(base64decode(secret), path ‖ SHA-256(nonce ‖ body)). The body is a
//! form or JSON and carries a u64 `nonce` that must grow with every request.

use std::borrow::Cow;

use base64::engine::general_purpose::GeneralPurpose;
use base64::engine::{DecodePaddingMode, GeneralPurposeConfig};
use base64::Engine as _;
use http::Method;
use ring::{digest, hmac};

use super::{ClientKey, ClientRequest, Credentials, Received, Replay, SignError};
use crate::decimal::Decimal;
use crate::key::Secret;
use crate::params::{JsonValue, ParamSource, ParamValue};
use crate::parse;
use crate::Deny;

/// HMAC-SHA512 tags are 64 bytes.
const SIGNATURE_LEN: usize = 64;
/// u64::MAX has 20 digits.
const MAX_NONCE_DIGITS: usize = 20;

/// Secrets are stored as handed out; accept them with or without padding, since a
/// copy-pasted secret losing its `==` should not lock its owner out.
const SECRET_BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

pub(super) fn credentials<'a>(rx: &Received<'_, 'a>) -> Result<Option<Credentials<'a>>, Deny> {
    let Some((api_key, sign)) = rx.key_and_signature("api-key", "api-sign")? else {
        return Ok(None);
    };
    let signature = super::decode_base64_signature(sign, SIGNATURE_LEN)?;
    // The signature covers the nonce as the client wrote it, so that exact text (not a
    // re-rendering of the parsed number) goes into the hash.
    let nonce_text = match rx.param("nonce") {
        Some((ParamValue::Text(t), ParamSource::Body)) => t.as_ref(),
        Some((ParamValue::Json(JsonValue::String(t)), ParamSource::Body))
        | Some((ParamValue::Json(JsonValue::Number(t)), ParamSource::Body)) => t.as_str(),
        _ => return Err(Deny::InvalidNonce),
    };
    if nonce_text.is_empty()
        || nonce_text.len() > MAX_NONCE_DIGITS
        || !nonce_text.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(Deny::InvalidNonce);
    }
    let nonce: u64 = nonce_text.parse().map_err(|_| Deny::InvalidNonce)?;
    Ok(Some(Credentials {
        api_key: Cow::Borrowed(api_key),
        replay: Replay::Nonce(Decimal::from(nonce)),
        signature,
        signed_payload: Cow::Owned(signed_payload(rx.path, nonce_text, rx.body)),
    }))
}

/// `path ‖ SHA-256(nonce ‖ body)`: hashing the body here keeps the stored payload small.
fn signed_payload(path: &str, nonce: &str, body: &[u8]) -> Vec<u8> {
    let mut ctx = digest::Context::new(&digest::SHA256);
    ctx.update(nonce.as_bytes());
    ctx.update(body);
    let mut payload = Vec::with_capacity(path.len() + 32);
    payload.extend_from_slice(path.as_bytes());
    payload.extend_from_slice(ctx.finish().as_ref());
    payload
}

/// The HMAC key behind a stored Kraken secret; `None` if the secret is not base64.
pub(super) fn decode_secret(secret: &[u8]) -> Option<Secret> {
    decode_secret_bytes(secret).map(Secret::new)
}

/// [`decode_secret`] as plain bytes, for [`Secret::hmac_key`].
pub(super) fn decode_secret_bytes(secret: &[u8]) -> Option<Vec<u8>> {
    SECRET_BASE64.decode(secret).ok()
}

pub(super) fn sign(
    key: &ClientKey<'_>,
    method: Method,
    path: &str,
    params: &[(&str, &str)],
    nonce: &str,
    json_body: bool,
) -> Result<ClientRequest, SignError> {
    let ClientKey::Hmac { api_key, secret } = *key else {
        return Err(SignError::UnsupportedKey("kraken"));
    };
    let hmac_key = decode_secret(secret).ok_or(SignError::BadSecret)?;
    let ordered = std::iter::once(("nonce", nonce))
        .chain(params.iter().copied().filter(|(n, _)| *n != "nonce"));
    let (body, content_type) = if json_body {
        let mut out = String::from("{");
        for (i, (name, value)) in ordered.enumerate() {
            if i > 0 {
                out.push(',');
            }
            parse::json::write_json_string(&mut out, name);
            out.push(':');
            parse::json::write_json_string(&mut out, value);
        }
        out.push('}');
        (out, "application/json")
    } else {
        (
            parse::urlencode(ordered, b"[]"),
            "application/x-www-form-urlencoded",
        )
    };
    let payload = signed_payload(path, nonce, body.as_bytes());
    let tag = hmac::sign(
        &hmac::Key::new(hmac::HMAC_SHA512, hmac_key.expose()),
        &payload,
    );
    use base64::engine::general_purpose::STANDARD;
    Ok(ClientRequest {
        method,
        path_and_query: path.to_owned(),
        headers: vec![
            ("API-Key".to_owned(), api_key.to_owned()),
            ("API-Sign".to_owned(), STANDARD.encode(tag.as_ref())),
            ("Content-Type".to_owned(), content_type.to_owned()),
        ],
        body: body.into_bytes(),
    })
}
