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
    scan_headers(headers, auth_headers, body_len).map(|_| ())
}

/// How many credential headers [`scan_headers`] keeps track of (every dialect has at
/// most three).
pub const MAX_AUTH_HEADERS: usize = 4;

/// What [`scan_headers`] found on its way, so that nothing looks a header up again.
#[derive(Debug, Clone, Copy)]
pub struct HeaderScan<'h> {
    /// The one `Content-Type`, if any.
    pub content_type: Option<&'h HeaderValue>,
    /// The one value of each credential header, in the order they were asked for
    /// (the first [`MAX_AUTH_HEADERS`] of them).
    pub auth: [Option<&'h HeaderValue>; MAX_AUTH_HEADERS],
}

/// [`check_headers`] in one walk over the headers, returning the `Content-Type` and
/// credential values it passed. The errors are exactly those of the rules in
/// [`check_headers`]' list, and in that order: a header that fails a per-header rule
/// (control byte, method override, underscore twin) is reported as the walk reaches it;
/// the rules about repeats and framing are checked after the walk, one after the other.
pub fn scan_headers<'h>(
    headers: &'h HeaderMap,
    auth_headers: &[&str],
    body_len: usize,
) -> Result<HeaderScan<'h>, Deny> {
    let mut scan = HeaderScan {
        content_type: None,
        auth: [None; MAX_AUTH_HEADERS],
    };
    let mut auth_repeated = false;
    let mut content_types = 0usize;
    let mut length: Option<&HeaderValue> = None;
    let mut lengths = 0usize;
    let mut transfer_encoding = false;
    let mut foreign_coding = false;
    for (name, value) in headers {
        // Without an early exit the loop vectorizes: signatures make values long.
        let control = value
            .as_bytes()
            .iter()
            .fold(false, |seen, b| seen | (*b < 0x20) | (*b == 0x7f));
        if control {
            return Err(Deny::InvalidHeader);
        }
        // Well-known names compare as a tag, without looking at text.
        if name == CONTENT_LENGTH {
            lengths += 1;
            length = length.or(Some(value));
        }
        if name == CONTENT_TYPE {
            content_types += 1;
            scan.content_type = scan.content_type.or(Some(value));
        }
        if name == TRANSFER_ENCODING {
            transfer_encoding = true;
        }
        if name == CONTENT_ENCODING {
            foreign_coding |= !value.as_bytes().eq_ignore_ascii_case(b"identity");
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
        if let Some(i) = auth_headers
            .iter()
            .position(|a| a.eq_ignore_ascii_case(name))
        {
            match scan.auth.get_mut(i) {
                Some(slot @ None) => *slot = Some(value),
                Some(Some(_)) => auth_repeated = true,
                None => {}
            }
        }
    }
    if auth_repeated
        || scan
            .auth
            .iter()
            .flatten()
            .any(|v| v.as_bytes().contains(&b','))
    {
        return Err(Deny::InvalidHeader);
    }
    // Past the tracked ones (no dialect has that many), look the rest up.
    for auth in auth_headers.iter().skip(MAX_AUTH_HEADERS) {
        let mut values = headers.get_all(*auth).iter();
        if let Some(v) = values.next() {
            if values.next().is_some() || v.as_bytes().contains(&b',') {
                return Err(Deny::InvalidHeader);
            }
        }
    }
    if lengths > 0 && transfer_encoding {
        return Err(Deny::InvalidHeader);
    }
    match (lengths, length) {
        (0, _) | (_, None) => {}
        (1, Some(one)) => {
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
    if content_types > 1 {
        return Err(Deny::InvalidHeader);
    }
    if foreign_coding {
        return Err(Deny::UnsupportedMediaType);
    }
    Ok(scan)
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
    auth_text(headers.get(name))
}

/// [`auth_value`] of a value already found (by [`scan_headers`]).
pub fn auth_text(value: Option<&HeaderValue>) -> Result<Option<&str>, Deny> {
    match value {
        None => Ok(None),
        Some(v) => {
            let bytes = v.as_bytes();
            if bytes.is_empty() {
                return Ok(None);
            }
            // One branch-free pass (signatures are long), then the text: printable ASCII
            // is UTF-8, which `from_utf8` confirms word by word.
            let outside = bytes
                .iter()
                .fold(false, |seen, b| seen | !(0x21..=0x7e).contains(b));
            if outside {
                return Err(Deny::InvalidHeader);
            }
            std::str::from_utf8(bytes)
                .map(Some)
                .map_err(|_| Deny::InvalidHeader)
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
    media_type_of(headers.get(CONTENT_TYPE))
}

/// [`media_type`] of a `Content-Type` value already found (by [`scan_headers`]).
pub fn media_type_of(value: Option<&HeaderValue>) -> Result<Option<MediaType>, Deny> {
    let Some(value) = value else {
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
    fn one_walk_finds_what_the_lookups_found() {
        let h = map(&[
            ("api-sign", b"s=="),
            ("content-type", b"application/x-www-form-urlencoded"),
            ("api-key", b"k"),
            ("content-length", b"3"),
        ]);
        let scan = scan_headers(&h, KRAKEN, 3).unwrap();
        assert_eq!(scan.auth[0].map(|v| v.as_bytes()), Some(&b"k"[..]));
        assert_eq!(scan.auth[1].map(|v| v.as_bytes()), Some(&b"s=="[..]));
        assert_eq!(scan.auth[2], None);
        assert_eq!(media_type_of(scan.content_type), media_type(&h));
        assert_eq!(auth_text(scan.auth[0]), auth_value(&h, "api-key"));
        // The order of errors is the old order of checks: the framing rules after the
        // credential repeats, the content coding last.
        let h = map(&[("content-encoding", b"gzip"), ("content-length", b"9")]);
        assert_eq!(check_headers(&h, KRAKEN, 3), Err(Deny::InvalidHeader));
        let h = map(&[
            ("content-length", b"9"),
            ("api-key", b"a"),
            ("api-key", b"b"),
        ]);
        assert_eq!(check_headers(&h, KRAKEN, 3), Err(Deny::InvalidHeader));
        let h = map(&[("x-a", b"a\tb"), ("x-http-method", b"GET")]);
        assert_eq!(check_headers(&h, KRAKEN, 0), Err(Deny::InvalidHeader));
        let h = map(&[("x-http-method", b"GET"), ("x-a", b"a\tb")]);
        assert_eq!(check_headers(&h, KRAKEN, 0), Err(Deny::MethodOverride));
        // More credential headers than are tracked are still checked for repeats.
        let many = ["a", "b", "c", "d", "e"];
        let h = map(&[("e", b"1"), ("e", b"2")]);
        assert_eq!(check_headers(&h, &many, 0), Err(Deny::InvalidHeader));
        assert_eq!(check_headers(&map(&[("e", b"1")]), &many, 0), Ok(()));
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
