//! Each dialect's request parsing and authentication (headers, parameters, credentials,
//! signature decoding, freshness): never panics on any request the HTTP layer can carry.
//!
//! Input layout: byte 0 picks the dialect and the method; the rest is split at `\n` into
//! the request target, the `Content-Type`, then the dialect's auth header values in
//! order (`Key`/`Sign`, `X-MBX-APIKEY`, `API-Key`/`API-Sign`, Coincheck's three), and the
//! remainder is the body.
#![no_main]

use http::Method;
use keyguard_policy::dialect::{self, DialectConfig, DialectKind};
use keyguard_policy::{Credential, Secret};
use libfuzzer_sys::fuzz_target;

const KINDS: [DialectKind; 4] = [
    DialectKind::Zaif,
    DialectKind::Binance,
    DialectKind::Kraken,
    DialectKind::Coincheck,
];

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let kind = KINDS[usize::from(selector & 3)];
    let method = [Method::GET, Method::POST, Method::PUT, Method::DELETE]
        [usize::from(selector >> 2 & 3)]
    .clone();
    let auth = kind.auth_headers();
    let mut pieces = rest.splitn(2 + auth.len() + 1, |b| *b == b'\n');
    let target = pieces.next().unwrap_or_default();
    let content_type = pieces.next().unwrap_or_default();
    let mut builder = http::Request::builder()
        .method(method)
        .uri(target)
        .header(http::header::HOST, "gateway.test");
    if !content_type.is_empty() {
        builder = builder.header(http::header::CONTENT_TYPE, content_type);
    }
    for name in auth {
        match pieces.next() {
            Some(value) if !value.is_empty() => builder = builder.header(*name, value),
            _ => {}
        }
    }
    let body = pieces.next().unwrap_or_default();
    if !body.is_empty() {
        builder = builder.header(http::header::CONTENT_LENGTH, body.len());
    }
    let Ok(request) = builder.body(()) else {
        return;
    };
    let (parts, ()) = request.into_parts();
    let mut cfg = DialectConfig::new(kind);
    cfg.public_base_url = Some("http://gateway.test".to_owned());
    let Ok(parsed) = dialect::parse(&cfg, &parts, body) else {
        return;
    };
    if let Some(creds) = &parsed.credentials {
        // Kraken secrets are base64; the others any bytes.
        let secret = Credential::Hmac(Secret::new(b"c2VjcmV0".to_vec()));
        assert!(
            dialect::verify(&cfg, creds, &secret).is_err(),
            "a forged signature verified"
        );
        let _ = dialect::check_freshness(&cfg, &creds.replay, 1_763_812_345_123);
    }
});
