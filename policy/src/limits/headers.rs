//! Header values of draft-ietf-httpapi-ratelimit-headers-10: `RateLimit-Policy` (the
//! quota, stable across responses) and `RateLimit` (what is left now).
//!
//! Both are Structured Field Lists whose items are Strings naming a policy, with Integer
//! parameters:
//! - `RateLimit-Policy: "key";q=10;w=1` — `q` quota units (requests) per window of `w`
//!   seconds (a non-zero integer: sub-second precision is not supported);
//! - `RateLimit: "key";r=0;t=2` — `r` units remaining, `t` seconds until more quota is
//!   available. A 429 also carries `Retry-After`, which must not be earlier than `t`, so
//!   both come from the same rounded-up wait.

use std::fmt::Write as _;

/// The `RateLimit-Policy` value for one policy: `"name";q=<quota>;w=<window>`.
///
/// A window of zero is written as `1`: the draft requires a non-zero `w`.
pub fn ratelimit_policy(name: &str, quota: u32, window_secs: u64) -> String {
    let mut out = sf_string(name);
    let _ = write!(out, ";q={quota};w={}", window_secs.max(1));
    out
}

/// The `RateLimit` value for one policy: `"name";r=<remaining>;t=<seconds until reset>`.
pub fn ratelimit(name: &str, remaining: u32, reset_secs: u64) -> String {
    let mut out = sf_string(name);
    let _ = write!(out, ";r={remaining};t={reset_secs}");
    out
}

/// `Retry-After` delay-seconds for a wait in milliseconds: rounded up, and at least one
/// second (a client told "0" would retry at once and be refused again).
pub fn retry_after_secs(wait_ms: u64) -> u64 {
    wait_ms.div_ceil(1000).max(1)
}

/// A Structured Field String (RFC 8941 §3.3.3): printable ASCII in double quotes with `"`
/// and `\` escaped. Other characters cannot be represented and become `?`, so a header
/// value is always valid whatever name it is given.
fn sf_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            ' '..='~' => out.push(c),
            _ => out.push('?'),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_match_the_draft_examples() {
        assert_eq!(
            ratelimit_policy("default", 100, 10),
            "\"default\";q=100;w=10"
        );
        assert_eq!(ratelimit("default", 50, 30), "\"default\";r=50;t=30");
        assert_eq!(ratelimit_policy("key", 5, 0), "\"key\";q=5;w=1");
    }

    #[test]
    fn names_are_valid_sf_strings() {
        assert_eq!(ratelimit("a\"b\\c", 0, 1), "\"a\\\"b\\\\c\";r=0;t=1");
        assert_eq!(ratelimit("tier\u{e9}\n", 0, 1), "\"tier??\";r=0;t=1");
    }

    #[test]
    fn retry_after_rounds_up() {
        assert_eq!(retry_after_secs(0), 1);
        assert_eq!(retry_after_secs(1), 1);
        assert_eq!(retry_after_secs(1000), 1);
        assert_eq!(retry_after_secs(1001), 2);
    }
}
