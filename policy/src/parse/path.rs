//! The request path, accepted only when it is already canonical.
//!
//! The rule is deliberately simpler than "normalize, then match": a path is accepted only
//! if no normalization could change it, so the path the route table classifies, the path
//! Kraken's signature covers and the path the exchange routes are the same bytes.
//! Concretely, every [`Deny::InvalidPath`]:
//! - it must be non-empty and start with `/` (no `*`, no authority-form);
//! - no percent-escapes at all. None of the fronted APIs (Zaif, Binance, Kraken) puts an
//!   escape in a path, and refusing them removes encoded separators (`%2f %5c %3b`),
//!   encoded dots (`%2e`), `%00`, double encoding (`%252e`) and non-UTF-8 in one rule;
//! - no `.` or `..` segment and no empty segment inside the path (`//`); a trailing `/`
//!   is a different route, not a normalization, so it is left to the route table;
//! - only RFC 3986 `pchar` bytes other than `%` and `;`: letters, digits, `-._~`,
//!   `!$&'()*+,=:@` and `/`. That rules out `;` path parameters, a raw `\`, spaces,
//!   control bytes and raw non-ASCII (which the `http` crate lets through).

use crate::Deny;

/// Checks that `raw` (the path exactly as received, before any decoding) is canonical
/// and returns it; the returned path is what the route table matches.
pub fn normalize_path(raw: &str) -> Result<&str, Deny> {
    if !raw.starts_with('/') {
        return Err(Deny::InvalidPath);
    }
    if !raw.bytes().all(is_path_byte) {
        return Err(Deny::InvalidPath);
    }
    // A byte-pair scan: `str::contains` sets up a substring searcher, costlier than
    // the whole check for a short path.
    if raw.as_bytes().windows(2).any(|w| w == b"//") {
        return Err(Deny::InvalidPath);
    }
    if raw[1..].split('/').any(|seg| seg == "." || seg == "..") {
        return Err(Deny::InvalidPath);
    }
    Ok(raw)
}

fn is_path_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'/' | b'-'
                | b'.'
                | b'_'
                | b'~'
                | b'!'
                | b'$'
                | b'&'
                | b'\''
                | b'('
                | b')'
                | b'*'
                | b'+'
                | b','
                | b'='
                | b':'
                | b'@'
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_canonical_paths() {
        for ok in [
            "/",
            "/tapi",
            "/api/1/ticker/btc_jpy",
            "/api/v3/order",
            "/0/private/AddOrder",
            "/sapi/v1/capital/withdraw/apply",
            "/a/.b/c..d/...",
            "/tapi/",
        ] {
            assert_eq!(normalize_path(ok), Ok(ok), "{ok:?}");
        }
    }

    #[test]
    fn refuses_everything_that_could_normalize() {
        for bad in [
            "",
            "tapi",
            "*",
            "/.",
            "/..",
            "/./tapi",
            "/api/../tapi",
            "/api/1/..",
            "/api/%2e%2e/tapi",
            "/api/%2E%2E/tapi",
            "/api/%2e%2E/tapi",
            "/api/.%2e/tapi",
            "/%2e/tapi",
            "/api%2ftapi",
            "/api%2Ftapi",
            "/api%5ctapi",
            "/api%5Ctapi",
            "/tapi%3bx=1",
            "/tapi%3Bx=1",
            "/tapi%00",
            "/tapi%252e",
            "/tapi%25",
            "/t%61pi",
            "/t%ffpi",
            "//tapi",
            "/api//tapi",
            "/tapi;jsessionid=1",
            "/api\\tapi",
            "/tapi\u{0}",
            "/tapi\r\n",
            "/tapi\t",
            "/ta pi",
            "/t\u{e9}pi",
            "/t\u{7f}pi",
            "/a\"b",
            "/a{b}",
            "/a|b",
        ] {
            assert_eq!(normalize_path(bad), Err(Deny::InvalidPath), "{bad:?}");
        }
    }
}
