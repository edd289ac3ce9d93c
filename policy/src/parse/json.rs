//! A small strict RFC 8259 JSON parser: exactly the grammar, nothing a lenient parser
//! would guess at, so the gateway and the exchange read a body the same way.
//!
//! Refused with [`Deny::InvalidJson`]: duplicate object keys (compared after unescaping
//! and under the lenient readings of [`crate::parse::names`], since which of two values
//! "wins" differs between parsers), keys with invisible characters, `NaN`/`Infinity`, hex,
//! leading `+` or zeros, `.5`/`5.`, trailing commas, comments, single quotes, lone
//! surrogate escapes, raw control characters in strings, invalid UTF-8, a byte-order
//! mark, trailing garbage, and nesting deeper than [`MAX_DEPTH`]. Numbers keep their exact
//! source text ([`JsonValue::Number`]) so an amount never passes through a float.

use crate::params::JsonValue;
use crate::parse::names::NameForms;
use crate::Deny;

/// The deepest nesting accepted (a top-level object is depth 1). Exchange bodies are
/// two or three levels deep; the limit keeps recursion bounded on hostile input.
pub const MAX_DEPTH: usize = 32;

/// Parses one JSON text of any type.
pub fn parse_json(input: &[u8]) -> Result<JsonValue, Deny> {
    // Validating UTF-8 once up front lets the parser copy string bytes verbatim and
    // rejects raw (CESU-8 style) surrogates with the rest of the invalid encodings.
    std::str::from_utf8(input).map_err(|_| Deny::InvalidJson)?;
    let mut p = Parser { input, pos: 0 };
    p.skip_ws();
    let value = p.value(0)?;
    p.skip_ws();
    if p.pos != input.len() {
        return Err(Deny::InvalidJson);
    }
    Ok(value)
}

/// Parses a request body, which must be a JSON object; returns its members in order.
pub fn parse_json_object(input: &[u8]) -> Result<Vec<(String, JsonValue)>, Deny> {
    match parse_json(input)? {
        JsonValue::Object(members) => Ok(members),
        _ => Err(Deny::InvalidJson),
    }
}

/// Appends `s` as a JSON string literal, escaped the way ccxt's serializer (orjson) does:
/// only `"`, `\` and control characters below U+0020; everything else stays as UTF-8.
pub fn write_json_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => {
                out.push_str(&format!("\\u{:04x}", c as u32));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

struct Parser<'a> {
    input: &'a [u8],
    pos: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<u8> {
        self.input.get(self.pos).copied()
    }

    fn skip_ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.pos += 1;
        }
    }

    fn expect(&mut self, b: u8) -> Result<(), Deny> {
        if self.peek() == Some(b) {
            self.pos += 1;
            Ok(())
        } else {
            Err(Deny::InvalidJson)
        }
    }

    fn value(&mut self, depth: usize) -> Result<JsonValue, Deny> {
        match self.peek().ok_or(Deny::InvalidJson)? {
            b'{' => self.object(depth + 1),
            b'[' => self.array(depth + 1),
            b'"' => self.string().map(JsonValue::String),
            b't' => self.literal(b"true", JsonValue::Bool(true)),
            b'f' => self.literal(b"false", JsonValue::Bool(false)),
            b'n' => self.literal(b"null", JsonValue::Null),
            b'-' | b'0'..=b'9' => self.number(),
            _ => Err(Deny::InvalidJson),
        }
    }

    fn literal(&mut self, word: &[u8], value: JsonValue) -> Result<JsonValue, Deny> {
        if self.input[self.pos..].starts_with(word) {
            self.pos += word.len();
            Ok(value)
        } else {
            Err(Deny::InvalidJson)
        }
    }

    fn object(&mut self, depth: usize) -> Result<JsonValue, Deny> {
        if depth > MAX_DEPTH {
            return Err(Deny::InvalidJson);
        }
        self.expect(b'{')?;
        let mut members: Vec<(String, JsonValue)> = Vec::new();
        let mut forms: Vec<NameForms> = Vec::new();
        self.skip_ws();
        if self.peek() == Some(b'}') {
            self.pos += 1;
            return Ok(JsonValue::Object(members));
        }
        loop {
            self.skip_ws();
            if self.peek() != Some(b'"') {
                return Err(Deny::InvalidJson);
            }
            let key = self.string()?;
            forms.push(NameForms::of(&key).ok_or(Deny::InvalidJson)?);
            self.skip_ws();
            self.expect(b':')?;
            self.skip_ws();
            let value = self.value(depth)?;
            members.push((key, value));
            self.skip_ws();
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b'}') => {
                    self.pos += 1;
                    break;
                }
                _ => return Err(Deny::InvalidJson),
            }
        }
        if has_duplicate_keys(&members, &forms) {
            return Err(Deny::InvalidJson);
        }
        Ok(JsonValue::Object(members))
    }

    fn array(&mut self, depth: usize) -> Result<JsonValue, Deny> {
        if depth > MAX_DEPTH {
            return Err(Deny::InvalidJson);
        }
        self.expect(b'[')?;
        let mut items = Vec::new();
        self.skip_ws();
        if self.peek() == Some(b']') {
            self.pos += 1;
            return Ok(JsonValue::Array(items));
        }
        loop {
            self.skip_ws();
            items.push(self.value(depth)?);
            self.skip_ws();
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b']') => {
                    self.pos += 1;
                    return Ok(JsonValue::Array(items));
                }
                _ => return Err(Deny::InvalidJson),
            }
        }
    }

    fn number(&mut self) -> Result<JsonValue, Deny> {
        let start = self.pos;
        if self.peek() == Some(b'-') {
            self.pos += 1;
        }
        match self.peek() {
            Some(b'0') => {
                self.pos += 1;
                if self.peek().is_some_and(|b| b.is_ascii_digit()) {
                    return Err(Deny::InvalidJson);
                }
            }
            Some(b'1'..=b'9') => self.digits(),
            _ => return Err(Deny::InvalidJson),
        }
        if self.peek() == Some(b'.') {
            self.pos += 1;
            if !self.peek().is_some_and(|b| b.is_ascii_digit()) {
                return Err(Deny::InvalidJson);
            }
            self.digits();
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.pos += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.pos += 1;
            }
            if !self.peek().is_some_and(|b| b.is_ascii_digit()) {
                return Err(Deny::InvalidJson);
            }
            self.digits();
        }
        let text =
            std::str::from_utf8(&self.input[start..self.pos]).map_err(|_| Deny::InvalidJson)?;
        Ok(JsonValue::Number(text.to_owned()))
    }

    fn digits(&mut self) {
        while self.peek().is_some_and(|b| b.is_ascii_digit()) {
            self.pos += 1;
        }
    }

    fn string(&mut self) -> Result<String, Deny> {
        self.expect(b'"')?;
        let mut out: Vec<u8> = Vec::new();
        loop {
            let b = self.peek().ok_or(Deny::InvalidJson)?;
            self.pos += 1;
            match b {
                b'"' => break,
                b'\\' => {
                    let e = self.peek().ok_or(Deny::InvalidJson)?;
                    self.pos += 1;
                    match e {
                        b'"' => out.push(b'"'),
                        b'\\' => out.push(b'\\'),
                        b'/' => out.push(b'/'),
                        b'b' => out.push(0x08),
                        b'f' => out.push(0x0c),
                        b'n' => out.push(b'\n'),
                        b'r' => out.push(b'\r'),
                        b't' => out.push(b'\t'),
                        b'u' => {
                            let c = self.unicode_escape()?;
                            let mut buf = [0u8; 4];
                            out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                        }
                        _ => return Err(Deny::InvalidJson),
                    }
                }
                0x00..=0x1f => return Err(Deny::InvalidJson),
                _ => out.push(b),
            }
        }
        String::from_utf8(out).map_err(|_| Deny::InvalidJson)
    }

    /// After `\u`: one escape, or a high/low surrogate pair; a lone half is refused
    /// because it has no UTF-8 form and parsers disagree on what to substitute.
    fn unicode_escape(&mut self) -> Result<char, Deny> {
        let first = self.hex4()?;
        let code = match first {
            0xd800..=0xdbff => {
                if !self.input[self.pos..].starts_with(b"\\u") {
                    return Err(Deny::InvalidJson);
                }
                self.pos += 2;
                let second = self.hex4()?;
                if !(0xdc00..=0xdfff).contains(&second) {
                    return Err(Deny::InvalidJson);
                }
                0x10000 + ((first - 0xd800) << 10) + (second - 0xdc00)
            }
            0xdc00..=0xdfff => return Err(Deny::InvalidJson),
            c => c,
        };
        char::from_u32(code).ok_or(Deny::InvalidJson)
    }

    fn hex4(&mut self) -> Result<u32, Deny> {
        let digits = self
            .input
            .get(self.pos..self.pos + 4)
            .ok_or(Deny::InvalidJson)?;
        let mut v = 0u32;
        for &d in digits {
            let n = (d as char).to_digit(16).ok_or(Deny::InvalidJson)?;
            v = v << 4 | n;
        }
        self.pos += 4;
        Ok(v)
    }
}

/// Keys are duplicates when a lenient parser would read them as one (case, NFKC,
/// whitespace around them, PHP's folding: [`crate::parse::names`]). Small objects are
/// scanned pairwise; large ones are sorted under each reading, so a body with thousands of
/// keys costs `n log n`, not `n²`.
fn has_duplicate_keys(members: &[(String, JsonValue)], forms: &[NameForms]) -> bool {
    if members.len() <= 16 {
        return members
            .iter()
            .zip(forms)
            .enumerate()
            .any(|(i, ((k, _), f))| {
                members[..i]
                    .iter()
                    .zip(forms)
                    .any(|((o, _), g)| NameForms::same(o, g, k, f))
            });
    }
    let readings: Vec<[String; 2]> = members
        .iter()
        .zip(forms)
        .map(|((k, _), f)| f.readings(k))
        .collect();
    (0..2).any(|r| {
        let mut keys: Vec<&str> = readings.iter().map(|pair| pair[r].as_str()).collect();
        keys.sort_unstable();
        keys.windows(2).any(|w| w[0] == w[1])
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(s: &str) -> JsonValue {
        parse_json(s.as_bytes()).unwrap_or_else(|e| panic!("{s:?}: {e}"))
    }

    fn bad(s: &str) {
        assert_eq!(parse_json(s.as_bytes()), Err(Deny::InvalidJson), "{s:?}");
    }

    #[test]
    fn parses_the_grammar() {
        assert_eq!(
            ok(
                r#" {"nonce":"1616492376594","n":-0.5e+3,"a":[1,true,false,null,{}],"s":"\u00e9\ud83d\ude00\"\\\/\b\f\n\r\t"} "#
            ),
            JsonValue::Object(vec![
                ("nonce".into(), JsonValue::String("1616492376594".into())),
                ("n".into(), JsonValue::Number("-0.5e+3".into())),
                (
                    "a".into(),
                    JsonValue::Array(vec![
                        JsonValue::Number("1".into()),
                        JsonValue::Bool(true),
                        JsonValue::Bool(false),
                        JsonValue::Null,
                        JsonValue::Object(vec![]),
                    ])
                ),
                (
                    "s".into(),
                    JsonValue::String("\u{e9}\u{1f600}\"\\/\u{8}\u{c}\n\r\t".into())
                ),
            ])
        );
        assert_eq!(ok("0"), JsonValue::Number("0".into()));
        assert_eq!(ok("-0.0E5"), JsonValue::Number("-0.0E5".into()));
        assert_eq!(ok("1.10"), JsonValue::Number("1.10".into()));
        assert_eq!(ok("\"\u{e9}\""), JsonValue::String("\u{e9}".into()));
        assert_eq!(ok("[]"), JsonValue::Array(vec![]));
    }

    #[test]
    fn refuses_everything_lenient_parsers_accept() {
        for s in [
            "",
            " ",
            "{",
            "{\"a\":1,}",
            "[1,]",
            "[,1]",
            "{\"a\":1,\"a\":2}",
            "{\"a\":1,\"\\u0061\":2}",
            "{\"a\" 1}",
            "{a:1}",
            "{'a':1}",
            "NaN",
            "Infinity",
            "-Infinity",
            "0x10",
            "+1",
            "01",
            "-01",
            "00",
            ".5",
            "5.",
            "1e",
            "1e+",
            "-",
            "1.5.2",
            "tru",
            "True",
            "nul",
            "{}x",
            "{} {}",
            "[1] // c",
            "/* c */ {}",
            "\"\\ud800\"",
            "\"\\udc00\"",
            "\"\\ud800\\u0041\"",
            "\"\\ud800x\"",
            "\"\\u12\"",
            "\"\\x41\"",
            "\"\\'\"",
            "\"a\nb\"",
            "\"a\tb\"",
            "\"a\u{0}b\"",
            "\"abc",
            "\u{feff}{}",
            "\u{a0}{}",
            "{\"a\":1}\u{0}",
        ] {
            bad(s);
        }
        assert_eq!(parse_json(b"\"\xff\""), Err(Deny::InvalidJson));
        assert_eq!(parse_json(b"\"\xed\xa0\x80\""), Err(Deny::InvalidJson));
    }

    #[test]
    fn depth_is_bounded() {
        let nest = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
        assert!(parse_json(nest(MAX_DEPTH).as_bytes()).is_ok());
        bad(&nest(MAX_DEPTH + 1));
        bad(&nest(100_000));
        let objects = |n: usize| format!("{}1{}", "{\"a\":".repeat(n), "}".repeat(n));
        assert!(parse_json(objects(MAX_DEPTH).as_bytes()).is_ok());
        bad(&objects(MAX_DEPTH + 1));
    }

    #[test]
    fn many_keys_duplicates_found() {
        let mut body = String::from("{");
        for i in 0..1000 {
            body.push_str(&format!("\"k{i}\":{i},"));
        }
        body.push_str("\"k500\":0}");
        bad(&body);
    }

    #[test]
    fn request_bodies_are_objects() {
        assert_eq!(parse_json_object(b"[1]"), Err(Deny::InvalidJson));
        assert_eq!(parse_json_object(b"\"x\""), Err(Deny::InvalidJson));
        assert_eq!(parse_json_object(b"{}"), Ok(vec![]));
    }

    #[test]
    fn writes_like_orjson() {
        // orjson.dumps({"a": "\x01\x1f\x7f\"\\/\n\t\b\f\r é"}) in ccxt's Python
        let mut out = String::new();
        write_json_string(&mut out, "\u{1}\u{1f}\u{7f}\"\\/\n\t\u{8}\u{c}\r \u{e9}");
        assert_eq!(
            out,
            "\"\\u0001\\u001f\u{7f}\\\"\\\\/\\n\\t\\b\\f\\r \u{e9}\""
        );
        let back = parse_json(out.as_bytes()).unwrap();
        assert_eq!(
            back,
            JsonValue::String("\u{1}\u{1f}\u{7f}\"\\/\n\t\u{8}\u{c}\r \u{e9}".into())
        );
    }
}
