//! Reading request parameters from the query string and the body.
//!
//! Lenient on purpose: rejecting ambiguous requests is the gateway's job, and the mock
//! must answer whatever the gateway lets through so the ledger shows it. The first value
//! of a repeated name wins.

use percent_encoding::percent_decode_str;

/// Parameter names and values in the order received: query first, then body.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Params(Vec<(String, String)>);

impl Params {
    /// Parses `query` and a `body` of `content_type` (form, JSON object, or ignored).
    pub(crate) fn from_request(query: &str, content_type: Option<&str>, body: &[u8]) -> Params {
        let mut params = Params::default();
        params.extend_form(query);
        let is_json = content_type.is_some_and(|ct| ct.contains("json"))
            || (content_type.is_none() && body.first() == Some(&b'{'));
        if is_json {
            params.extend_json(body);
        } else if let Ok(text) = std::str::from_utf8(body) {
            params.extend_form(text);
        }
        params
    }

    fn extend_form(&mut self, text: &str) {
        for pair in text.split('&').filter(|p| !p.is_empty()) {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            self.0
                .push((decode_component(name), decode_component(value)));
        }
    }

    fn extend_json(&mut self, body: &[u8]) {
        let Ok(serde_json::Value::Object(map)) = serde_json::from_slice(body) else {
            return;
        };
        for (name, value) in map {
            let text = match value {
                serde_json::Value::String(s) => s,
                other => other.to_string(),
            };
            self.0.push((name, text));
        }
    }

    /// The first value of `name`, if present and non-empty.
    pub(crate) fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .filter(|v| !v.is_empty())
    }
}

/// Form decoding: `+` is a space, then percent-decoding (lossy on invalid UTF-8).
fn decode_component(raw: &str) -> String {
    let spaced = raw.replace('+', " ");
    percent_decode_str(&spaced).decode_utf8_lossy().into_owned()
}

/// Parses a positive decimal amount; the mock only needs "is this a sane number".
pub(crate) fn positive_decimal(text: Option<&str>) -> Option<f64> {
    let value: f64 = text?.trim().parse().ok()?;
    (value.is_finite() && value > 0.0).then_some(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_query_then_form_body() {
        let p = Params::from_request(
            "symbol=BTCUSDT&timestamp=1",
            Some("application/x-www-form-urlencoded"),
            b"address=bc1q%2Bx+y&amount=0.5&symbol=ETHBTC",
        );
        assert_eq!(p.get("symbol"), Some("BTCUSDT"));
        assert_eq!(p.get("address"), Some("bc1q+x y"));
        assert_eq!(p.get("amount"), Some("0.5"));
        assert_eq!(p.get("missing"), None);
    }

    #[test]
    fn reads_json_bodies_as_text_values() {
        let p = Params::from_request(
            "",
            Some("application/json"),
            br#"{"nonce":"17","volume":0.5,"pair":"XBTUSD"}"#,
        );
        assert_eq!(p.get("nonce"), Some("17"));
        assert_eq!(p.get("volume"), Some("0.5"));
        assert_eq!(p.get("pair"), Some("XBTUSD"));
    }

    #[test]
    fn positive_decimals_only() {
        assert_eq!(positive_decimal(Some("0.25")), Some(0.25));
        assert_eq!(positive_decimal(Some("0")), None);
        assert_eq!(positive_decimal(Some("-1")), None);
        assert_eq!(positive_decimal(Some("NaN")), None);
        assert_eq!(positive_decimal(None), None);
    }
}
