//! Exchange API dialects: how each exchange names the key, signs the request and
//! protects against replays, checked over the exact bytes that arrived.
//!
//! # Layout
//! - this module: the shared pipeline ([`parse`] → [`verify`] → [`check_freshness`]),
//!   the body and query placement rules, and the client side ([`sign_request`]).
//! - `zaif`, `binance`, `kraken`, `coincheck`: where each exchange puts its key,
//!   signature and freshness proof, and how its reference client (ccxt) signs.
//!
//! # Server side
//! [`parse`] runs the strict parsers ([`crate::parse`]) in a fixed order — method, target,
//! path, headers, content type, parameters, credentials — so the first problem found is
//! the one reported. It decodes the signature and assembles the signed payload but checks
//! nothing cryptographic: [`verify`] needs the key record, which the gateway looks up
//! from [`Credentials::api_key`]. Placement rules:
//! - only `GET`, `POST`, `PUT`, `DELETE` are parsed ([`Deny::MethodNotAllowed`]);
//! - a `GET`/`DELETE` with a non-empty body is a [`Deny::InvalidParameter`]: its
//!   parameters belong in the query, and a body nobody reads could still reach the exchange;
//! - Zaif, Kraken and Coincheck `POST`/`PUT` carry no query string at all, not even a
//!   bare `?` ([`Deny::InvalidParameter`]): Zaif's and Kraken's signatures cover only the
//!   body, and ccxt's Coincheck never sends one;
//! - Coincheck requests must carry the `Host` of the configured public base URL
//!   ([`Deny::InvalidTarget`]): the signature covers the full URL, rebuilt from it;
//! - a `Content-Type`, when present, must be one the dialect uses, even on an empty body
//!   (form for all four, JSON for Kraken); a non-empty body needs one
//!   ([`Deny::UnsupportedMediaType`]);
//! - a `_method` parameter (any spelling a lenient parser reads as it: case, NFKC,
//!   whitespace, `_method[]`) in the query, form or top-level JSON body is a
//!   [`Deny::MethodOverride`];
//! - names are unique across query and body under the readings of
//!   [`crate::parse::names`] ([`Deny::DuplicateParameter`]), and a name with an
//!   invisible character is a [`Deny::InvalidParameter`];
//! - no auth header at all gives `credentials: None`. A key header without its
//!   signature is [`Deny::InvalidSignature`]; a signature header without its key is
//!   [`Deny::MissingCredentials`].
//!
//! # Client side
//! [`sign_request`] and [`public_request`] build requests byte for byte as ccxt 4.5
//! does, for the load generator and the gateway's tests.

use std::borrow::Cow;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use http::Method;
use ring::signature::KeyPair as _;
use ring::{hmac, signature};

use crate::decimal::Decimal;
use crate::key::Credential;
use crate::params::{ParamSource, ParamValue, Params};
use crate::parse::{self, MediaType};
use crate::time::UnixMillis;
use crate::{Deny, UnknownName};

mod binance;
mod coincheck;
mod kraken;
mod zaif;

/// Which exchange API the gateway fronts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DialectKind {
    /// Zaif `tapi`: form body with `method` and decimal `nonce`; `Key`/`Sign` headers.
    Zaif,
    /// Binance: `X-MBX-APIKEY`; `signature` over query + body; `timestamp`/`recvWindow`.
    Binance,
    /// Kraken: `API-Key`/`API-Sign` over path + SHA-256(nonce + body); u64 nonce.
    Kraken,
    /// Coincheck: `ACCESS-KEY`/`ACCESS-NONCE`/`ACCESS-SIGNATURE` over nonce + full URL +
    /// body; decimal integer nonce.
    Coincheck,
}

impl DialectKind {
    /// The lower-case name used in config.
    pub const fn as_str(self) -> &'static str {
        match self {
            DialectKind::Zaif => "zaif",
            DialectKind::Binance => "binance",
            DialectKind::Kraken => "kraken",
            DialectKind::Coincheck => "coincheck",
        }
    }

    /// Lower-case names of the headers that carry credentials: never forwarded.
    pub const fn auth_headers(self) -> &'static [&'static str] {
        match self {
            DialectKind::Zaif => &["key", "sign"],
            DialectKind::Binance => &["x-mbx-apikey"],
            DialectKind::Kraken => &["api-key", "api-sign"],
            DialectKind::Coincheck => &["access-key", "access-nonce", "access-signature"],
        }
    }

    /// The body field that selects the action on a shared path (Zaif's `method`).
    pub const fn selector_field(self) -> Option<&'static str> {
        match self {
            DialectKind::Zaif => Some("method"),
            _ => None,
        }
    }
}

impl std::str::FromStr for DialectKind {
    type Err = UnknownName;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "zaif" => Ok(DialectKind::Zaif),
            "binance" => Ok(DialectKind::Binance),
            "kraken" => Ok(DialectKind::Kraken),
            "coincheck" => Ok(DialectKind::Coincheck),
            _ => Err(UnknownName),
        }
    }
}

/// Per-dialect options from config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DialectConfig {
    /// The dialect.
    pub kind: DialectKind,
    /// Binance: receive window when the request names none (ms).
    pub recv_window_default_ms: u64,
    /// Binance: the largest receive window a request may ask for (ms).
    pub recv_window_max_ms: u64,
    /// Binance: how far ahead of our clock a timestamp may be (ms).
    pub future_tolerance_ms: u64,
    /// Coincheck: the URL clients call the gateway at, `scheme://authority` without a
    /// trailing `/` (e.g. `https://api.exchange.example`). Signatures cover the full
    /// URL, so it is rebuilt from this, and requests for another `Host` are refused.
    pub public_base_url: Option<String>,
}

impl DialectConfig {
    /// The exchange's documented defaults.
    pub fn new(kind: DialectKind) -> Self {
        DialectConfig {
            kind,
            recv_window_default_ms: 5_000,
            recv_window_max_ms: 60_000,
            future_tolerance_ms: 1_000,
            public_base_url: None,
        }
    }
}

/// How a request proves it is fresh.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Replay {
    /// A nonce that must be strictly greater than the key's previous one (Zaif decimal,
    /// Kraken u64 — both compared as exact decimals).
    Nonce(Decimal),
    /// A timestamp inside a receive window; `fingerprint` (SHA-256 of the signature)
    /// must not be seen twice while the window is open.
    Timestamp {
        /// The request's `timestamp` (ms).
        at_ms: UnixMillis,
        /// The window it asked for, already capped.
        recv_window_ms: u64,
        /// SHA-256 of the signature bytes.
        fingerprint: [u8; 32],
    },
}

/// What a private request claims about who signed it; not yet verified. Borrows from
/// the request where it can: the key header, and the signed bytes when they are one
/// contiguous part of it (Zaif's body, most Binance requests).
///
/// `Debug` leaves the signature and signed bytes out: a logged signature is a replayable
/// request for as long as its window is open.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials<'a> {
    /// The API key as presented.
    pub api_key: Cow<'a, str>,
    /// Freshness proof.
    pub replay: Replay,
    /// The signature as decoded from the request (hex/base64 already decoded).
    signature: Signature,
    /// The exact bytes the dialect signs (Binance: query + body without `signature`;
    /// Zaif: body; Kraken: path ‖ SHA-256(nonce ‖ body)).
    signed_payload: Cow<'a, [u8]>,
}

/// A decoded signature: every dialect's tag or signature is 32 or 64 bytes, so it lives
/// inline rather than in its own allocation.
#[derive(Clone, PartialEq, Eq)]
struct Signature {
    bytes: [u8; Signature::MAX],
    len: u8,
}

impl Signature {
    /// HMAC-SHA512 tags and Ed25519 signatures.
    const MAX: usize = 64;

    fn as_slice(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

/// Only the length: a signature is a replayable request while its window is open.
impl std::fmt::Debug for Signature {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Signature(<redacted>, {} bytes)", self.len)
    }
}

impl Credentials<'_> {
    /// The same credentials owning everything they borrowed.
    pub fn into_owned(self) -> Credentials<'static> {
        Credentials {
            api_key: Cow::Owned(self.api_key.into_owned()),
            replay: self.replay,
            signature: self.signature,
            signed_payload: Cow::Owned(self.signed_payload.into_owned()),
        }
    }
}

impl std::fmt::Debug for Credentials<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("api_key", &self.api_key)
            .field("replay", &self.replay)
            .field("signature", &"<redacted>")
            .field("signed_payload_len", &self.signed_payload.len())
            .finish()
    }
}

/// What kind of body the request had.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    /// No body.
    Empty,
    /// `application/x-www-form-urlencoded`.
    Form,
    /// `application/json`.
    Json,
}

/// A request that passed strict parsing. It borrows from the request it was parsed from
/// (path, parameter names and values, key, signed bytes), so parsing a typical order
/// allocates almost nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedRequest<'a> {
    /// The method.
    pub method: Method,
    /// The normalized path (what routes match against; equal to the received path, since
    /// anything that would normalize differently is rejected).
    pub path: Cow<'a, str>,
    /// Query and body parameters, names unique.
    pub params: Params<'a>,
    /// The body's kind.
    pub body_kind: BodyKind,
    /// Present when the request carries the dialect's auth headers.
    pub credentials: Option<Credentials<'a>>,
}

impl ParsedRequest<'_> {
    /// The same request owning everything it borrowed, to keep it past the request.
    pub fn into_owned(self) -> ParsedRequest<'static> {
        ParsedRequest {
            method: self.method,
            path: Cow::Owned(self.path.into_owned()),
            params: self.params.into_owned(),
            body_kind: self.body_kind,
            credentials: self.credentials.map(Credentials::into_owned),
        }
    }
}

/// Parses and strictly validates a request for `cfg.kind` (path, headers, content type,
/// parameters, credentials). Everything that is rejected here is never forwarded.
///
/// `body` is the whole buffered body; the signature covers exactly these bytes.
pub fn parse<'a>(
    cfg: &DialectConfig,
    parts: &'a http::request::Parts,
    body: &'a [u8],
) -> Result<ParsedRequest<'a>, Deny> {
    let kind = cfg.kind;
    let method = match parts.method {
        Method::GET | Method::POST | Method::PUT | Method::DELETE => parts.method.clone(),
        _ => return Err(Deny::MethodNotAllowed),
    };
    parse::check_target(&parts.uri, &parts.headers)?;
    if kind == DialectKind::Coincheck {
        coincheck::check_host(cfg, &parts.headers)?;
    }
    let path = parse::normalize_path(parts.uri.path())?;
    let headers = parse::scan_headers(&parts.headers, kind.auth_headers(), body.len())?;
    let body_kind = body_kind(kind, &method, headers.content_type, body)?;
    let query = parts.uri.query();
    if query.is_some() && !kind.query_allowed(&method) {
        return Err(Deny::InvalidParameter);
    }

    let mut params = Params::new();
    params.extend_urlencoded(query.unwrap_or("").as_bytes(), ParamSource::Query)?;
    match body_kind {
        BodyKind::Empty => {}
        BodyKind::Form => params.extend_urlencoded(body, ParamSource::Body)?,
        BodyKind::Json => {
            for (name, value) in parse::parse_json_object(body)? {
                params.insert(Cow::Owned(name), ParamValue::Json(value), ParamSource::Body)?;
            }
        }
    }
    if params.any_reads_as("_method") {
        return Err(Deny::MethodOverride);
    }

    let received = Received {
        cfg,
        path,
        query: query.unwrap_or(""),
        query_present: query.is_some(),
        body,
        headers: &parts.headers,
        auth: headers.auth,
        params: &params,
    };
    let credentials = match kind {
        DialectKind::Zaif => zaif::credentials(&received)?,
        DialectKind::Binance => binance::credentials(&received)?,
        DialectKind::Kraken => kraken::credentials(&received)?,
        DialectKind::Coincheck => coincheck::credentials(&received)?,
    };
    Ok(ParsedRequest {
        method,
        path: Cow::Borrowed(path),
        params,
        body_kind,
        credentials,
    })
}

impl DialectKind {
    /// Whether a request with this method may carry a query string.
    fn query_allowed(self, method: &Method) -> bool {
        match self {
            DialectKind::Binance => true,
            DialectKind::Zaif | DialectKind::Kraken | DialectKind::Coincheck => {
                *method == Method::GET || *method == Method::DELETE
            }
        }
    }

    /// Whether the dialect sends bodies of this media type.
    fn uses(self, media: MediaType) -> bool {
        match media {
            MediaType::Form => true,
            MediaType::Json => self == DialectKind::Kraken,
        }
    }
}

fn body_kind(
    kind: DialectKind,
    method: &Method,
    content_type: Option<&http::HeaderValue>,
    body: &[u8],
) -> Result<BodyKind, Deny> {
    let media = parse::media_type_of(content_type)?;
    if media.is_some_and(|m| !kind.uses(m)) {
        return Err(Deny::UnsupportedMediaType);
    }
    if body.is_empty() {
        return Ok(BodyKind::Empty);
    }
    if *method == Method::GET || *method == Method::DELETE {
        return Err(Deny::InvalidParameter);
    }
    match media {
        None => Err(Deny::UnsupportedMediaType),
        Some(MediaType::Form) => Ok(BodyKind::Form),
        Some(MediaType::Json) => Ok(BodyKind::Json),
    }
}

/// What a dialect's credential parser gets to look at: the request after the shared
/// rules passed. `'a` is the request's own lifetime, which the credentials may borrow;
/// `'r` is this parse's (config and parameter list).
struct Received<'r, 'a> {
    cfg: &'r DialectConfig,
    /// The canonical path, exactly as received.
    path: &'a str,
    /// The raw query string without `?` (empty when there is none).
    query: &'a str,
    /// Whether the target had a `?` at all (Coincheck signs the URL as sent).
    query_present: bool,
    body: &'a [u8],
    headers: &'a http::HeaderMap,
    /// The credential headers' values, as [`parse::scan_headers`] found them (in the
    /// order of [`DialectKind::auth_headers`]).
    auth: [Option<&'a http::HeaderValue>; parse::headers::MAX_AUTH_HEADERS],
    params: &'r Params<'a>,
}

impl<'r, 'a> Received<'r, 'a> {
    /// A parameter with where it came from.
    fn param(&self, name: &str) -> Option<(&'r ParamValue<'a>, ParamSource)> {
        self.params
            .iter()
            .find(|(n, _, _)| *n == name)
            .map(|(_, v, s)| (v, s))
    }

    /// The single value of credential header `name` as text ([`parse::auth_value`]).
    fn auth(&self, name: &str) -> Result<Option<&'a str>, Deny> {
        let kind = self.cfg.kind;
        match kind.auth_headers().iter().position(|a| *a == name) {
            Some(i) if i < self.auth.len() => parse::auth_text(self.auth[i]),
            _ => parse::auth_value(self.headers, name),
        }
    }

    /// The key and signature headers of a two-header dialect (Zaif, Kraken): `None` when
    /// neither is present.
    fn key_and_signature(
        &self,
        key_header: &str,
        sign_header: &str,
    ) -> Result<Option<(&'a str, &'a str)>, Deny> {
        let key = self.auth(key_header)?;
        let sign = self.auth(sign_header)?;
        match (key, sign) {
            (None, None) => Ok(None),
            (None, Some(_)) => Err(Deny::MissingCredentials),
            (Some(_), None) => Err(Deny::InvalidSignature),
            (Some(key), Some(sign)) => Ok(Some((key, sign))),
        }
    }
}

/// Decodes a hex signature of exactly `bytes` bytes, either case.
///
/// A table lookup per digit pair rather than `hex::decode`: its per-character iterator
/// was a tenth of a Zaif parse (perf on `piece/zaif/parse`).
fn decode_hex_signature(text: &str, bytes: usize) -> Result<Signature, Deny> {
    const INVALID: u8 = 0xff;
    const VALUES: [u8; 256] = {
        let mut t = [INVALID; 256];
        let mut i = 0;
        while i < 10 {
            t[b'0' as usize + i] = i as u8;
            i += 1;
        }
        let mut i = 0;
        while i < 6 {
            t[b'a' as usize + i] = 10 + i as u8;
            t[b'A' as usize + i] = 10 + i as u8;
            i += 1;
        }
        t
    };
    if text.len() != bytes * 2 || bytes > Signature::MAX {
        return Err(Deny::InvalidSignature);
    }
    let mut out = Signature {
        bytes: [0; Signature::MAX],
        len: bytes as u8,
    };
    let mut bad = 0u8;
    for (byte, pair) in out.bytes.iter_mut().zip(text.as_bytes().chunks_exact(2)) {
        let (hi, lo) = (VALUES[usize::from(pair[0])], VALUES[usize::from(pair[1])]);
        // Both halves are < 16 when valid, so one OR over all of them says whether any
        // digit was not hex, without a branch per digit.
        bad |= hi | lo;
        *byte = hi << 4 | (lo & 0x0f);
    }
    if bad & 0xf0 != 0 {
        return Err(Deny::InvalidSignature);
    }
    Ok(out)
}

/// Decodes a padded standard base64 signature of exactly `bytes` bytes.
fn decode_base64_signature(text: &str, bytes: usize) -> Result<Signature, Deny> {
    // Room for a few bytes more than the longest signature, so that a slightly too long
    // one decodes and is refused for its length rather than for the buffer's.
    let mut buf = [0u8; Signature::MAX + 8];
    let len = BASE64
        .decode_slice(text.as_bytes(), &mut buf)
        .map_err(|_| Deny::InvalidSignature)?;
    if len != bytes || bytes > Signature::MAX {
        return Err(Deny::InvalidSignature);
    }
    let mut out = Signature {
        bytes: [0; Signature::MAX],
        len: bytes as u8,
    };
    out.bytes[..len].copy_from_slice(&buf[..len]);
    Ok(out)
}

/// Verifies the request's signature against the key's credential in constant time.
///
/// Zaif: HMAC-SHA512 with the secret bytes. Binance and Coincheck: HMAC-SHA256 with the secret bytes,
/// or Ed25519 with the registered public key. Kraken: HMAC-SHA512 with the base64-decoded
/// secret (a secret that is not base64 fails as [`Deny::InvalidSignature`]). A credential
/// of a kind the dialect does not use never verifies.
pub fn verify(
    cfg: &DialectConfig,
    creds: &Credentials,
    credential: &Credential,
) -> Result<(), Deny> {
    let payload: &[u8] = &creds.signed_payload;
    let signature = creds.signature.as_slice();
    match (cfg.kind, credential) {
        (DialectKind::Zaif, Credential::Hmac(secret)) => {
            hmac_verify(secret.hmac_key(hmac::HMAC_SHA512, None), payload, signature)
        }
        (DialectKind::Binance, Credential::Hmac(secret)) => {
            hmac_verify(secret.hmac_key(hmac::HMAC_SHA256, None), payload, signature)
        }
        (DialectKind::Binance, Credential::Ed25519(public_key)) => {
            signature::UnparsedPublicKey::new(&signature::ED25519, public_key)
                .verify(payload, signature)
                .map_err(|_| Deny::InvalidSignature)
        }
        (DialectKind::Kraken, Credential::Hmac(secret)) => hmac_verify(
            secret.hmac_key(hmac::HMAC_SHA512, Some(kraken::decode_secret_bytes)),
            payload,
            signature,
        ),
        (DialectKind::Coincheck, Credential::Hmac(secret)) => {
            hmac_verify(secret.hmac_key(hmac::HMAC_SHA256, None), payload, signature)
        }
        (
            DialectKind::Zaif | DialectKind::Kraken | DialectKind::Coincheck,
            Credential::Ed25519(_),
        ) => Err(Deny::InvalidSignature),
    }
}

fn hmac_verify(key: Option<hmac::Key>, payload: &[u8], tag: &[u8]) -> Result<(), Deny> {
    let key = key.ok_or(Deny::InvalidSignature)?;
    // ring compares the tags in constant time; a tag of the wrong length simply fails.
    hmac::verify(&key, payload, tag).map_err(|_| Deny::InvalidSignature)
}

/// Checks a timestamp-style proof against `now` (nonce proofs always pass here; their
/// ordering is checked against the store).
///
/// A timestamp more than `future_tolerance_ms` ahead of `now`, or more than its receive
/// window behind, is [`Deny::StaleTimestamp`]; so is a window above the configured
/// maximum, which [`parse`] already refuses and is re-checked here for proofs built by
/// other code.
pub fn check_freshness(cfg: &DialectConfig, replay: &Replay, now: UnixMillis) -> Result<(), Deny> {
    match *replay {
        Replay::Nonce(_) => Ok(()),
        Replay::Timestamp {
            at_ms,
            recv_window_ms,
            ..
        } => {
            if recv_window_ms > cfg.recv_window_max_ms
                || at_ms > now.saturating_add(cfg.future_tolerance_ms)
                || now.saturating_sub(at_ms) > recv_window_ms
            {
                Err(Deny::StaleTimestamp)
            } else {
                Ok(())
            }
        }
    }
}

/// The key a client signs with.
#[derive(Clone, Copy)]
pub enum ClientKey<'a> {
    /// A shared secret, exactly as the exchange handed it out (Kraken: the base64 text).
    Hmac {
        /// The API key sent in the key header.
        api_key: &'a str,
        /// The secret.
        secret: &'a [u8],
    },
    /// A Binance Ed25519 key: PKCS#8 v1 or v2 DER, or the raw 32-byte seed (ccxt accepts
    /// both a PEM private key and raw private bytes).
    Ed25519 {
        /// The API key sent in `X-MBX-APIKEY`.
        api_key: &'a str,
        /// The private key.
        pkcs8: &'a [u8],
    },
}

impl std::fmt::Debug for ClientKey<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (kind, api_key) = match self {
            ClientKey::Hmac { api_key, .. } => ("Hmac", api_key),
            ClientKey::Ed25519 { api_key, .. } => ("Ed25519", api_key),
        };
        write!(f, "{kind} {{ api_key: {api_key:?}, <redacted> }}")
    }
}

impl ClientKey<'_> {
    fn api_key(&self) -> &str {
        match self {
            ClientKey::Hmac { api_key, .. } | ClientKey::Ed25519 { api_key, .. } => api_key,
        }
    }
}

/// A request as a client sends it: everything but the scheme and authority.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientRequest {
    /// The method.
    pub method: Method,
    /// Path plus `?query` when there is one.
    pub path_and_query: String,
    /// Headers in the order the reference client sets them (no `Host`, no
    /// `Content-Length`: the HTTP client adds those).
    pub headers: Vec<(String, String)>,
    /// The body (empty when none).
    pub body: Vec<u8>,
}

impl ClientRequest {
    /// The request as an `http::Request` with an origin-form URI; add `Host` (or use an
    /// absolute URI) before sending.
    pub fn to_http(&self) -> Result<http::Request<Vec<u8>>, http::Error> {
        let mut builder = http::Request::builder()
            .method(self.method.clone())
            .uri(self.path_and_query.as_str());
        for (name, value) in &self.headers {
            builder = builder.header(name.as_str(), value.as_str());
        }
        builder.body(self.body.clone())
    }
}

/// Why a request could not be signed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SignError {
    /// The dialect does not use this kind of key (Ed25519 is Binance only).
    #[error("{0} does not sign with this kind of key")]
    UnsupportedKey(&'static str),
    /// The dialect never sends JSON bodies (only Kraken does).
    #[error("{0} does not send JSON bodies")]
    UnsupportedBody(&'static str),
    /// The Ed25519 private key is neither PKCS#8 nor a 32-byte seed.
    #[error("the Ed25519 private key is not PKCS#8 DER or a 32-byte seed")]
    BadPrivateKey,
    /// A Kraken secret that is not base64.
    #[error("the Kraken secret is not base64")]
    BadSecret,
    /// Coincheck signs the full URL: use [`sign_coincheck`] with the base URL.
    #[error("coincheck signs the full URL: sign with sign_coincheck and the base URL")]
    NeedsBaseUrl,
}

/// Builds a signed private request exactly as ccxt 4.5 does for `kind`.
///
/// `params` are the request's own parameters in order, as strings (ccxt stringifies
/// numbers and writes booleans as `true`/`false`); `freshness` is the nonce (Zaif: decimal
/// text such as `1763812345.12300000`; Kraken: u64 digits) or the Binance `timestamp` (ms).
/// A parameter named like the freshness field or `signature` is dropped: this function
/// adds those. Where each dialect puts things:
/// - Zaif: form body `method=…&nonce=…&rest` (`method` is taken from `params`; the nonce
///   follows it, as ccxt's `extend({'method': …, 'nonce': …}, params)` orders them);
///   headers `Content-Type`, `Key`, `Sign` (lower-case hex HMAC-SHA512 of the body).
/// - Binance: `timestamp=…&params…&signature=…`, in the query for `GET`/`DELETE` and as a
///   form body otherwise. ccxt appends its default `recvWindow` after the caller's
///   parameters; pass it last in `params` to reproduce that. Values are quoted like
///   Python's `urlencode`, except on the paths where ccxt sends them raw
///   (`…/batchOrders`, `sub-account`, `…/capital/withdraw/apply`, `staking`,
///   `simple-earn`). An Ed25519 signature is base64, percent-encoded like JavaScript's
///   `encodeURIComponent`.
/// - Kraken: body `nonce=…&params…` (form, `[` `]` left unescaped like ccxt's
///   `urlencode_nested`) or, with `json_body`, `{"nonce":"…",…}` with string values;
///   headers `API-Key`, `API-Sign`, `Content-Type`. The body is sent whatever the method.
pub fn sign_request(
    kind: DialectKind,
    key: &ClientKey<'_>,
    method: Method,
    path: &str,
    params: &[(&str, &str)],
    freshness: &str,
    json_body: bool,
) -> Result<ClientRequest, SignError> {
    if json_body && kind != DialectKind::Kraken {
        return Err(SignError::UnsupportedBody(kind.as_str()));
    }
    match kind {
        DialectKind::Zaif => zaif::sign(key, method, path, params, freshness),
        DialectKind::Binance => binance::sign(key, method, path, params, freshness),
        DialectKind::Kraken => kraken::sign(key, method, path, params, freshness, json_body),
        DialectKind::Coincheck => Err(SignError::NeedsBaseUrl),
    }
}

/// Builds a signed Coincheck request exactly as ccxt 4.5 does, for a client that calls
/// the gateway at `base_url` (`scheme://authority`; the signature covers
/// `nonce + base_url + path[?query] + body`). Parameters are sorted by name; `GET` sends
/// them as the query, other methods as a form body. Headers: `Content-Type` (form, even
/// without a body), `ACCESS-KEY`, `ACCESS-NONCE`, `ACCESS-SIGNATURE` (lower-case hex).
pub fn sign_coincheck(
    key: &ClientKey<'_>,
    base_url: &str,
    method: Method,
    path: &str,
    params: &[(&str, &str)],
    nonce: &str,
) -> Result<ClientRequest, SignError> {
    coincheck::sign(key, base_url, method, path, params, nonce)
}

/// Builds an unauthenticated request the way ccxt sends public endpoints: no auth
/// headers, no body, `params` as a query string (Kraken leaves `[` `]` unescaped).
pub fn public_request(
    kind: DialectKind,
    method: Method,
    path: &str,
    params: &[(&str, &str)],
) -> ClientRequest {
    let safe: &[u8] = match kind {
        DialectKind::Kraken => b"[]",
        DialectKind::Zaif | DialectKind::Binance | DialectKind::Coincheck => b"",
    };
    let mut path_and_query = path.to_owned();
    if !params.is_empty() {
        path_and_query.push('?');
        path_and_query.push_str(&parse::urlencode(params.iter().copied(), safe));
    }
    ClientRequest {
        method,
        path_and_query,
        headers: Vec::new(),
        body: Vec::new(),
    }
}

/// The raw public key of an Ed25519 private key given as [`ClientKey::Ed25519`] accepts
/// it, for registering the key as [`Credential::Ed25519`].
pub fn ed25519_public_key(private_key: &[u8]) -> Result<[u8; 32], SignError> {
    let pair = ed25519_key_pair(private_key)?;
    pair.public_key()
        .as_ref()
        .try_into()
        .map_err(|_| SignError::BadPrivateKey)
}

fn ed25519_key_pair(private_key: &[u8]) -> Result<signature::Ed25519KeyPair, SignError> {
    if private_key.len() == 32 {
        signature::Ed25519KeyPair::from_seed_unchecked(private_key)
    } else {
        signature::Ed25519KeyPair::from_pkcs8_maybe_unchecked(private_key)
    }
    .map_err(|_| SignError::BadPrivateKey)
}

#[cfg(test)]
mod tests;
