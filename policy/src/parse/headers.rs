//! Header rules that hold for every dialect: no smuggling vectors, no method overrides,
//! exactly one copy of each credential header, and only the body formats a dialect uses.

use http::header::{CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE, TRANSFER_ENCODING};
use http::{HeaderMap, HeaderValue};

use crate::Deny;

/// Headers some frameworks honour to swap the method after the gateway classified it.
pub const METHOD_OVERRIDE_HEADERS: &[&str] = &[
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
];

/// Checks the headers of a request whose dialect sends credentials in `auth_headers`
/// (lower-case names) and whose buffered body is `body_len` bytes long.
///
/// - a control byte (CR, LF, NUL, TAB, DEL, ...) in any value: [`Deny::InvalidHeader`];
/// - a method-override header, also spelt with `_` for `-`: [`Deny::MethodOverride`];
/// - an auth header repeated or holding a `,` (a folded list), or an "underscore twin"
///   such as `X_MBX_APIKEY` that CGI-style servers would merge with the real one:
///   [`Deny::InvalidHeader`];
/// - both `Content-Length` and `Transfer-Encoding`, several `Content-Length`s, one that
///   is not the buffered length, or several `Content-Type`s: [`Deny::InvalidHeader`];
/// - a `Content-Encoding` other than `identity`: [`Deny::UnsupportedMediaType`], since a
///   compressed body would be signed as one thing and read as another.
pub fn check_headers(
    headers: &HeaderMap,
    auth_headers: &[&str],
    body_len: usize,
) -> Result<(), Deny> {
    for (name, value) in headers {
        if value.as_bytes().iter().any(|b| *b < 0x20 || *b == 0x7f) {
            return Err(Deny::InvalidHeader);
        }
        let name = name.as_str();
        if METHOD_OVERRIDE_HEADERS
            .iter()
            .any(|m| same_with_underscores(name, m))
        {
            return Err(Deny::MethodOverride);
        }
        if name.contains('_') && auth_headers.iter().any(|a| same_with_underscores(name, a)) {
            return Err(Deny::InvalidHeader);
        }
    }
    for auth in auth_headers {
        let mut values = headers.get_all(*auth).iter();
        if let Some(v) = values.next() {
            if values.next().is_some() || v.as_bytes().contains(&b',') {
                return Err(Deny::InvalidHeader);
            }
        }
    }
    let lengths: Vec<&HeaderValue> = headers.get_all(CONTENT_LENGTH).iter().collect();
    if !lengths.is_empty() && headers.contains_key(TRANSFER_ENCODING) {
        return Err(Deny::InvalidHeader);
    }
    match lengths.as_slice() {
        [] => {}
        [one] => {
            let s = one.to_str().map_err(|_| Deny::InvalidHeader)?;
            if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
                return Err(Deny::InvalidHeader);
            }
            if s.parse::<usize>().ok() != Some(body_len) {
                return Err(Deny::InvalidHeader);
            }
        }
        _ => return Err(Deny::InvalidHeader),
    }
    if headers.get_all(CONTENT_TYPE).iter().count() > 1 {
        return Err(Deny::InvalidHeader);
    }
    for coding in headers.get_all(CONTENT_ENCODING) {
        if !coding.as_bytes().eq_ignore_ascii_case(b"identity") {
            return Err(Deny::UnsupportedMediaType);
        }
    }
    Ok(())
}

/// Whether header `name` equals `canonical` once `_` is read as `-` (ASCII case-insensitive).
fn same_with_underscores(name: &str, canonical: &str) -> bool {
    name.len() == canonical.len()
        && name
            .bytes()
            .zip(canonical.bytes())
            .all(|(a, b)| (if a == b'_' { b'-' } else { a }).eq_ignore_ascii_case(&b))
}

/// The single value of credential header `name` as text: absent is `None`; a value that
/// is empty is treated as absent; anything but printable ASCII is [`Deny::InvalidHeader`].
/// Call after [`check_headers`], which already refused repeats.
pub fn auth_value<'a>(headers: &'a HeaderMap, name: &str) -> Result<Option<&'a str>, Deny> {
    match headers.get(name) {
        None => Ok(None),
        Some(v) => {
            let bytes = v.as_bytes();
            if bytes.is_empty() {
                return Ok(None);
            }
            if !bytes.iter().all(|b| (0x21..=0x7e).contains(b)) {
                return Err(Deny::InvalidHeader);
            }
            v.to_str().map(Some).map_err(|_| Deny::InvalidHeader)
        }
    }
}

/// The body formats the dialects use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MediaType {
    /// `application/x-www-form-urlencoded`
    Form,
    /// `application/json`
    Json,
}

/// Reads `Content-Type`: `None` when absent. The type is matched case-insensitively and
/// the only parameter allowed is `charset=utf-8` (optionally quoted): any other charset
/// would change how the signed bytes decode. Anything else is
/// [`Deny::UnsupportedMediaType`].
pub fn media_type(headers: &HeaderMap) -> Result<Option<MediaType>, Deny> {
    let Some(value) = headers.get(CONTENT_TYPE) else {
        return Ok(None);
    };
    let text = value.to_str().map_err(|_| Deny::UnsupportedMediaType)?;
    let mut parts = text.split(';');
    let essence = parts.next().unwrap_or("").trim_matches([' ', '\t']);
    let kind = if essence.eq_ignore_ascii_case("application/x-www-form-urlencoded") {
        MediaType::Form
    } else if essence.eq_ignore_ascii_case("application/json") {
        MediaType::Json
    } else {
        return Err(Deny::UnsupportedMediaType);
    };
    for param in parts {
        let (name, value) = param
            .trim_matches([' ', '\t'])
            .split_once('=')
            .ok_or(Deny::UnsupportedMediaType)?;
        let value = value
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .unwrap_or(value);
        if !name.eq_ignore_ascii_case("charset") || !value.eq_ignore_ascii_case("utf-8") {
            return Err(Deny::UnsupportedMediaType);
        }
    }
    Ok(Some(kind))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &[u8])]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(n.as_bytes()).unwrap(),
                HeaderValue::from_bytes(v).unwrap(),
            );
        }
        h
    }

    const KRAKEN: &[&str] = &["api-key", "api-sign"];

    #[test]
    fn plain_headers_pass() {
        let h = map(&[
            ("api-key", b"k"),
            ("api-sign", b"s=="),
            ("content-type", b"application/x-www-form-urlencoded"),
            ("content-length", b"3"),
            ("user-agent", "python-requests/2.32 \u{e9}".as_bytes()),
            ("x-other_header", b"1"),
        ]);
        assert_eq!(check_headers(&h, KRAKEN, 3), Ok(()));
    }

    #[test]
    fn method_overrides() {
        for name in [
            "x-http-method-override",
            "x-http-method",
            "x-method-override",
            "x_http_method_override",
            "X_HTTP_Method",
        ] {
            let h = map(&[(name, b"DELETE")]);
            assert_eq!(
                check_headers(&h, KRAKEN, 0),
                Err(Deny::MethodOverride),
                "{name}"
            );
        }
    }

    #[test]
    fn auth_header_rules() {
        let cases: &[&[(&str, &[u8])]] = &[
            &[("api-key", b"a"), ("api-key", b"a")],
            &[("api-sign", b"a,b")],
            &[("api_sign", b"x")],
            &[("API_Sign", b"x")],
            &[("api_key", b"x"), ("api-key", b"x")],
        ];
        for case in cases {
            assert_eq!(
                check_headers(&map(case), KRAKEN, 0),
                Err(Deny::InvalidHeader),
                "{case:?}"
            );
        }
        let h = map(&[("x_mbx_apikey", b"x")]);
        assert_eq!(
            check_headers(&h, &["x-mbx-apikey"], 0),
            Err(Deny::InvalidHeader)
        );
        // A twin of another dialect's header is just an unknown header here.
        assert_eq!(check_headers(&h, KRAKEN, 0), Ok(()));
    }

    #[test]
    fn control_bytes_anywhere() {
        // `HeaderValue` already refuses CR, LF, NUL and DEL; TAB is the control byte it
        // lets through, and the check stays for values built by other means.
        assert_eq!(
            check_headers(&map(&[("x-any", b"a\tb")]), KRAKEN, 0),
            Err(Deny::InvalidHeader)
        );
        for v in [&b"a\x00b"[..], b"a\rb", b"a\nb", b"a\x7fb", b"a\x1bb"] {
            assert!(HeaderValue::from_bytes(v).is_err(), "{v:?}");
        }
    }

    #[test]
    fn framing_headers() {
        let both = map(&[("content-length", b"0"), ("transfer-encoding", b"chunked")]);
        assert_eq!(check_headers(&both, KRAKEN, 0), Err(Deny::InvalidHeader));
        let two = map(&[("content-length", b"3"), ("content-length", b"3")]);
        assert_eq!(check_headers(&two, KRAKEN, 3), Err(Deny::InvalidHeader));
        let wrong = map(&[("content-length", b"4")]);
        assert_eq!(check_headers(&wrong, KRAKEN, 3), Err(Deny::InvalidHeader));
        let signed = map(&[("content-length", b"+3")]);
        assert_eq!(check_headers(&signed, KRAKEN, 3), Err(Deny::InvalidHeader));
        let te = map(&[("transfer-encoding", b"chunked")]);
        assert_eq!(check_headers(&te, KRAKEN, 3), Ok(()));
        let two_ct = map(&[("content-type", b"a/b"), ("content-type", b"a/b")]);
        assert_eq!(check_headers(&two_ct, KRAKEN, 0), Err(Deny::InvalidHeader));
        let gzip = map(&[("content-encoding", b"gzip")]);
        assert_eq!(
            check_headers(&gzip, KRAKEN, 0),
            Err(Deny::UnsupportedMediaType)
        );
        let identity = map(&[("content-encoding", b"Identity")]);
        assert_eq!(check_headers(&identity, KRAKEN, 0), Ok(()));
    }

    #[test]
    fn auth_values() {
        let h = map(&[("api-key", b"abc"), ("api-sign", b""), ("key", b"a b")]);
        assert_eq!(auth_value(&h, "api-key"), Ok(Some("abc")));
        assert_eq!(auth_value(&h, "api-sign"), Ok(None));
        assert_eq!(auth_value(&h, "missing"), Ok(None));
        assert_eq!(auth_value(&h, "key"), Err(Deny::InvalidHeader));
    }

    #[test]
    fn content_types() {
        let ct = |v: &str| media_type(&map(&[("content-type", v.as_bytes())]));
        assert_eq!(
            ct("application/x-www-form-urlencoded"),
            Ok(Some(MediaType::Form))
        );
        assert_eq!(
            ct("Application/X-WWW-Form-URLEncoded; charset=UTF-8"),
            Ok(Some(MediaType::Form))
        );
        assert_eq!(
            ct("application/json;charset=\"utf-8\""),
            Ok(Some(MediaType::Json))
        );
        assert_eq!(media_type(&HeaderMap::new()), Ok(None));
        for bad in [
            "text/plain",
            "multipart/form-data; boundary=x",
            "application/json; charset=latin1",
            "application/json; boundary=x",
            "application/json;",
            "application/jsonx",
            "application/x-www-form-urlencoded, application/json",
            "",
        ] {
            assert_eq!(ct(bad), Err(Deny::UnsupportedMediaType), "{bad:?}");
        }
    }
}
