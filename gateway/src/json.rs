//! A minimal JSON writer for the two documents built on every request, the audit line and
//! the assertion's claims. Both are flat objects of strings, integers and string arrays
//! with fields known at compile time, so writing them straight into a reused buffer costs
//! a fraction of `serde_json`'s generic path (no `Serialize` dispatch, no formatter state).
//! Tests compare the output with `serde_json`'s reading of it.

/// Appends the JSON string literal for `s` (quoted, escaped per RFC 8259 §7).
pub fn push_str(buf: &mut Vec<u8>, s: &str) {
    buf.push(b'"');
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let escape: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x00..=0x1f | 0x7f => b"",
            _ => continue,
        };
        buf.extend_from_slice(&bytes[start..i]);
        if escape.is_empty() {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            buf.extend_from_slice(b"\\u00");
            buf.push(HEX[(b >> 4) as usize]);
            buf.push(HEX[(b & 0xf) as usize]);
        } else {
            buf.extend_from_slice(escape);
        }
        start = i + 1;
    }
    buf.extend_from_slice(&bytes[start..]);
    buf.push(b'"');
}

/// Appends `n` in decimal.
pub fn push_u64(buf: &mut Vec<u8>, n: u64) {
    buf.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

/// Writes one flat JSON object field by field: `{"a":1,"b":"x"}`.
pub struct Object<'a> {
    buf: &'a mut Vec<u8>,
    first: bool,
}

impl<'a> Object<'a> {
    /// Opens an object at the end of `buf`.
    pub fn new(buf: &'a mut Vec<u8>) -> Object<'a> {
        buf.push(b'{');
        Object { buf, first: true }
    }

    fn key(&mut self, key: &str) -> &mut Vec<u8> {
        if !self.first {
            self.buf.push(b',');
        }
        self.first = false;
        // Keys are compile-time names without characters that need escaping.
        self.buf.push(b'"');
        self.buf.extend_from_slice(key.as_bytes());
        self.buf.extend_from_slice(b"\":");
        self.buf
    }

    /// A string field.
    pub fn str(&mut self, key: &str, value: &str) -> &mut Self {
        let buf = self.key(key);
        push_str(buf, value);
        self
    }

    /// A string field, or `null`.
    pub fn opt_str(&mut self, key: &str, value: Option<&str>) -> &mut Self {
        match value {
            Some(v) => self.str(key, v),
            None => {
                self.key(key).extend_from_slice(b"null");
                self
            }
        }
    }

    /// A field whose value `write` appends itself (already valid JSON).
    pub fn raw_with(&mut self, key: &str, write: impl FnOnce(&mut Vec<u8>)) -> &mut Self {
        write(self.key(key));
        self
    }

    /// An integer field.
    pub fn u64(&mut self, key: &str, value: u64) -> &mut Self {
        let buf = self.key(key);
        push_u64(buf, value);
        self
    }

    /// An array of strings.
    pub fn strs<'s>(&mut self, key: &str, values: impl IntoIterator<Item = &'s str>) -> &mut Self {
        let buf = self.key(key);
        buf.push(b'[');
        for (i, v) in values.into_iter().enumerate() {
            if i > 0 {
                buf.push(b',');
            }
            push_str(buf, v);
        }
        buf.push(b']');
        self
    }

    /// Closes the object.
    pub fn end(self) {
        self.buf.push(b'}');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_round_trip_through_serde_json() {
        for s in [
            "",
            "plain",
            "quote\" back\\slash",
            "line\nfeed\r\ttab",
            "\u{0}\u{1f}\u{7f}",
            "ünïcødé ✓ 𝄞",
            "/tapi/../x",
        ] {
            let mut buf = Vec::new();
            push_str(&mut buf, s);
            let back: String = serde_json::from_slice(&buf).unwrap();
            assert_eq!(back, s);
        }
    }

    #[test]
    fn objects_are_valid_json() {
        let mut buf = Vec::new();
        let mut o = Object::new(&mut buf);
        o.str("a", "x\"y")
            .opt_str("b", None)
            .opt_str("c", Some("z"))
            .u64("n", u64::MAX)
            .strs("l", ["read", "trade"])
            .strs("e", []);
        o.end();
        let v: serde_json::Value = serde_json::from_slice(&buf).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"a":"x\"y","b":null,"c":"z","n":u64::MAX,"l":["read","trade"],"e":[]})
        );
    }
}
