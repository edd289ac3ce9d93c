//! `application/x-www-form-urlencoded`, strictly: one way to write each parameter list,
//! so the gateway and the exchange cannot disagree about what a query or form body says.
//!
//! The rules, each a [`Deny::InvalidParameter`] unless noted:
//! - pieces are separated by `&` only; a raw `;` anywhere is refused, because some
//!   servers still split on it and would see parameters we did not;
//! - every piece is `name=value` with a non-empty name (`a` alone and `=b` are refused),
//!   and empty pieces (`a=1&&b=2`, a trailing `&`) are refused;
//! - `+` means space and `%XX` must be two hex digits; the decoded bytes must be UTF-8
//!   without control characters (a `%00` could truncate a name in a C parser upstream);
//! - raw bytes must be printable ASCII or space: raw non-ASCII text has no agreed charset;
//! - a name that appears twice (compared after decoding) is a [`Deny::DuplicateParameter`].
//!
//! The encoding side ([`quote`], [`urlencode`]) reproduces Python's
//! `urllib.parse.quote`/`urlencode(quote_via=quote)`, which is what ccxt signs.

use std::borrow::Cow;

use crate::Deny;

/// One decoded `name=value` piece, borrowing from the raw text unless it had something
/// to decode.
pub type Pair<'a> = (Cow<'a, str>, Cow<'a, str>);

/// Parses a query string (without `?`) or a form body into `(name, value)` pairs in
/// arrival order, with unique names.
pub fn parse_urlencoded(raw: &[u8]) -> Result<Vec<Pair<'_>>, Deny> {
    let mut pairs: Vec<Pair<'_>> = Vec::with_capacity(count_pieces(raw));
    for_each_pair(raw, |name, value, _| {
        // Requests carry a handful of parameters; a linear scan is cheaper than hashing.
        // A flood of thousands is bounded by the body limit and refused on the first repeat.
        if pairs.iter().any(|(n, _)| *n == name) {
            return Err(Deny::DuplicateParameter);
        }
        pairs.push((name, value));
        Ok(())
    })?;
    Ok(pairs)
}

/// How many `name=value` pieces `raw` holds if it parses: one more than its `&`s.
pub(crate) fn count_pieces(raw: &[u8]) -> usize {
    if raw.is_empty() {
        0
    } else {
        raw.iter().filter(|b| **b == b'&').count() + 1
    }
}

/// The splitting and decoding of [`parse_urlencoded`] without its duplicate check: `f`
/// gets each decoded pair in order, and whether the name is made of `[A-Za-z0-9_-]`
/// only (see [`crate::parse::names`]), and may refuse it (the caller checks duplicates
/// against what it keeps, so no second list is built).
pub(crate) fn for_each_pair<'a>(
    raw: &'a [u8],
    mut f: impl FnMut(Cow<'a, str>, Cow<'a, str>, bool) -> Result<(), Deny>,
) -> Result<(), Deny> {
    if raw.is_empty() {
        return Ok(());
    }
    // One UTF-8 check for the whole text, so that the components with nothing to decode
    // (nearly all) are borrowed as they are. Text that is not UTF-8 is refused anyway
    // (raw bytes must be printable ASCII), but only when its piece is reached, so it
    // takes the component-by-component path.
    let text = std::str::from_utf8(raw).ok();
    // Piece by piece, each finished (and maybe refused) before anything after it is
    // looked at, as a split-then-decode loop would. The searches and the byte-class
    // folds are separate tight loops (one fused loop measured slower).
    let find = |from: usize, to: usize, needle: u8| -> Option<usize> {
        raw[from..to]
            .iter()
            .position(|b| *b == needle)
            .map(|p| from + p)
    };
    let classes = |from: usize, to: usize| {
        raw[from..to]
            .iter()
            .fold(0u8, |c, b| c | CLASS[usize::from(*b)])
    };
    let mut start = 0;
    loop {
        let end = find(start, raw.len(), b'&').unwrap_or(raw.len());
        let eq = find(start, end, b'=').ok_or(Deny::InvalidParameter)?;
        if eq == start {
            return Err(Deny::InvalidParameter);
        }
        let class = classes(start, eq);
        let name = component(raw, text, start, eq, class & NOT_PLAIN == 0)?;
        let value_plain = classes(eq + 1, end) & NOT_PLAIN == 0;
        let value = component(raw, text, eq + 1, end, value_plain)?;
        f(name, value, class & NOT_SIMPLE_NAME == 0)?;
        if end == raw.len() {
            return Ok(());
        }
        start = end + 1;
    }
}

/// `raw[from..to]` decoded as [`decode_component`] does, borrowed from `text` (`raw`
/// as a `str`, when it is UTF-8) without a second check when the walk found it `plain`.
fn component<'a>(
    raw: &'a [u8],
    text: Option<&'a str>,
    from: usize,
    to: usize,
    plain: bool,
) -> Result<Cow<'a, str>, Deny> {
    match text.and_then(|t| t.get(from..to)) {
        Some(t) if plain => Ok(Cow::Borrowed(t)),
        _ => decode_component(&raw[from..to], true),
    }
}

/// [`CLASS`] bit: the byte does not stand for itself in a name or value (an escape `%`
/// or `+`, the refused `;`, anything but printable ASCII and space).
const NOT_PLAIN: u8 = 1;
/// [`CLASS`] bit: the byte is not one of `[A-Za-z0-9_-]`, the names whose lenient
/// readings are the name itself ([`crate::parse::names`]).
const NOT_SIMPLE_NAME: u8 = 2;

/// What each byte is, as [`NOT_PLAIN`] and [`NOT_SIMPLE_NAME`] bits.
const CLASS: [u8; 256] = {
    let mut t = [NOT_PLAIN | NOT_SIMPLE_NAME; 256];
    let mut b = 0usize;
    while b < 256 {
        let c = b as u8;
        let plain = c >= 0x20 && c <= 0x7e && !matches!(c, b'%' | b'+' | b';');
        let simple = c.is_ascii_alphanumeric() || c == b'_' || c == b'-';
        t[b] = (if plain { 0 } else { NOT_PLAIN }) | (if simple { 0 } else { NOT_SIMPLE_NAME });
        b += 1;
    }
    t
};

/// Decodes one name or value: `%XX` escapes (either hex case), `+` as space when
/// `plus_as_space` (form semantics), and refuses anything [`parse_urlencoded`] refuses.
/// Text with nothing to decode is borrowed.
pub fn decode_component(raw: &[u8], plus_as_space: bool) -> Result<Cow<'_, str>, Deny> {
    // Most names and values (method names, numbers, hex, base64 without padding) have
    // nothing to decode: printable ASCII is valid UTF-8 without control characters, so it
    // is borrowed as it is, with no second pass.
    if raw.iter().all(|b| CLASS[usize::from(*b)] & NOT_PLAIN == 0) {
        // Printable ASCII is UTF-8, so this never fails.
        return std::str::from_utf8(raw)
            .map(Cow::Borrowed)
            .map_err(|_| Deny::InvalidParameter);
    }
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        let b = raw[i];
        match b {
            b'%' => {
                let hi = raw.get(i + 1).and_then(|h| hex_val(*h));
                let lo = raw.get(i + 2).and_then(|h| hex_val(*h));
                match (hi, lo) {
                    (Some(hi), Some(lo)) => out.push(hi << 4 | lo),
                    _ => return Err(Deny::InvalidParameter),
                }
                i += 3;
                continue;
            }
            b'+' if plus_as_space => out.push(b' '),
            b';' => return Err(Deny::InvalidParameter),
            0x20..=0x7e => out.push(b),
            _ => return Err(Deny::InvalidParameter),
        }
        i += 1;
    }
    let s = String::from_utf8(out).map_err(|_| Deny::InvalidParameter)?;
    if s.chars().any(char::is_control) {
        return Err(Deny::InvalidParameter);
    }
    Ok(Cow::Owned(s))
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Python's `urllib.parse.quote(s, safe=...)`: unreserved characters (`A-Z a-z 0-9 _ . - ~`)
/// and the bytes in `safe` stay, everything else becomes `%XX` (upper-case) per UTF-8 byte.
pub fn quote(s: &str, safe: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = String::with_capacity(s.len());
    for &b in s.as_bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-' | b'~') || safe.contains(&b)
        {
            out.push(b as char);
        } else {
            out.push('%');
            out.push(HEX[usize::from(b >> 4)] as char);
            out.push(HEX[usize::from(b & 0xf)] as char);
        }
    }
    out
}

/// Python's `urllib.parse.urlencode(pairs, quote_via=quote, safe=...)`: `name=value`
/// joined by `&`, both quoted with [`quote`], in the given order.
pub fn urlencode<'a, I>(pairs: I, safe: &[u8]) -> String
where
    I: IntoIterator<Item = (&'a str, &'a str)>,
{
    let mut out = String::new();
    for (name, value) in pairs {
        if !out.is_empty() {
            out.push('&');
        }
        out.push_str(&quote(name, safe));
        out.push('=');
        out.push_str(&quote(value, safe));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(raw: &str) -> Result<Vec<(String, String)>, Deny> {
        parse_urlencoded(raw.as_bytes()).map(|p| {
            p.into_iter()
                .map(|(n, v)| (n.into_owned(), v.into_owned()))
                .collect()
        })
    }

    #[test]
    fn decodes_plus_and_escapes() {
        assert_eq!(
            pairs("a=b+c&d=%2Fe%2f&f=").unwrap(),
            vec![
                ("a".into(), "b c".into()),
                ("d".into(), "/e/".into()),
                ("f".into(), String::new())
            ]
        );
        assert_eq!(pairs("").unwrap(), vec![]);
        assert_eq!(pairs("close[type]=limit").unwrap()[0].0, "close[type]");
        assert_eq!(pairs("x=%E3%81%82").unwrap()[0].1, "あ");
        // Standard parsers split at the first `=`, so a raw `=` in a value is unambiguous.
        assert_eq!(pairs("a=b=c").unwrap()[0].1, "b=c");
    }

    #[test]
    fn refuses_ambiguous_forms() {
        for bad in [
            "a=1;b=2", "a=1&b=2;", "a", "a=1&b", "=1", "a=1&&b=2", "a=1&", "&a=1", "a=%", "a=%4",
            "a=%zz", "a=%ff", "a=%C3", "a=%00", "a=%0a", "a=%7f", "a\x01=1", "a=\x7f", "a=\t",
        ] {
            assert_eq!(pairs(bad), Err(Deny::InvalidParameter), "{bad:?}");
        }
        assert_eq!(pairs("a=\u{e9}"), Err(Deny::InvalidParameter));
    }

    #[test]
    fn duplicate_names_after_decoding() {
        assert_eq!(pairs("a=1&a=2"), Err(Deny::DuplicateParameter));
        assert_eq!(pairs("a=1&%61=2"), Err(Deny::DuplicateParameter));
        assert_eq!(pairs("a b=1&a+b=2"), Err(Deny::DuplicateParameter));
        assert!(pairs("a=1&A=2").is_ok());
    }

    #[test]
    fn quotes_like_python() {
        // urllib.parse.quote('a b/c~d.e_f-g+h&i=j;k', safe='') in CPython 3.11
        assert_eq!(
            quote("a b/c~d.e_f-g+h&i=j;k", b""),
            "a%20b%2Fc~d.e_f-g%2Bh%26i%3Dj%3Bk"
        );
        assert_eq!(quote("あ", b""), "%E3%81%82");
        assert_eq!(quote("close[type]", b"[]"), "close[type]");
        assert_eq!(
            urlencode([("method", "get_info"), ("nonce", "1.5")], b""),
            "method=get_info&nonce=1.5"
        );
    }
}
