//! Value types that check themselves while they are read. An error raised inside a
//! value's `Deserialize` gets the value's span from toml and its key path from
//! serde_path_to_error for free, so checks that need only the value itself live here
//! rather than in a later pass.

use std::fmt;
use std::marker::PhantomData;
use std::net::SocketAddr;
use std::time::Duration;

use http::Method;
use ipnet::IpNet;
use keyguard_policy::decimal::{parse_decimal, Decimal};
use keyguard_policy::velocity::{AssetMatch, LedgerKind, SubjectKind};
use keyguard_policy::{Action, DialectKind};
use serde::de::{Deserializer, Error as _, Visitor};
use serde::Deserialize;

/// How a type is parsed from a TOML string, with a message that says what was expected.
pub(crate) trait FromTomlStr: Sized {
    fn from_toml_str(s: &str) -> Result<Self, String>;
}

/// A `T` read from a TOML string by its [`FromTomlStr`] rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Parsed<T>(pub T);

impl<'de, T: FromTomlStr> Deserialize<'de> for Parsed<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // A visitor rather than `String::deserialize`, so a number where a string belongs
        // gets serde's "invalid type: integer `5`, expected a string".
        struct V<T>(PhantomData<T>);
        impl<T: FromTomlStr> Visitor<'_> for V<T> {
            type Value = Parsed<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Self::Value, E> {
                T::from_toml_str(s).map(Parsed).map_err(E::custom)
            }
        }
        d.deserialize_str(V(PhantomData))
    }
}

/// An integer in `MIN..=MAX`. The bounds catch unit mistakes (seconds written as
/// milliseconds) and values that would break the server rather than tune it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Bounded<const MIN: u64, const MAX: u64>(pub u64);

impl<'de, const MIN: u64, const MAX: u64> Deserialize<'de> for Bounded<MIN, MAX> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = u64::deserialize(d)?;
        if (MIN..=MAX).contains(&v) {
            Ok(Bounded(v))
        } else {
            Err(D::Error::custom(format!(
                "{v} is out of range (expected {MIN} to {MAX})"
            )))
        }
    }
}

/// A non-empty string without surrounding whitespace (which is always a typo in a file
/// name or a field name, and invisible in the file).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Name(pub String);

impl FromTomlStr for Name {
    fn from_toml_str(s: &str) -> Result<Self, String> {
        if s.is_empty() {
            Err("must not be empty".to_owned())
        } else if s.trim() != s {
            Err(format!("{s:?} has leading or trailing whitespace"))
        } else {
            Ok(Name(s.to_owned()))
        }
    }
}

/// A POSIX environment variable name (`KEYGUARD_MASTER_KEY`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct EnvVarName(pub String);

impl FromTomlStr for EnvVarName {
    fn from_toml_str(s: &str) -> Result<Self, String> {
        let valid = s.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
            && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if valid {
            Ok(EnvVarName(s.to_owned()))
        } else {
            Err(format!(
                "{s:?} is not an environment variable name (letters, digits and `_`, not starting with a digit)"
            ))
        }
    }
}

impl FromTomlStr for SocketAddr {
    fn from_toml_str(s: &str) -> Result<Self, String> {
        // Only literal addresses: a host name would be resolved at some unknown moment,
        // and the gateway should listen exactly where the file says.
        s.parse().map_err(|_| {
            format!("invalid socket address {s:?} (expected IP:port, e.g. 127.0.0.1:8080 or [::1]:8080)")
        })
    }
}

impl FromTomlStr for IpNet {
    fn from_toml_str(s: &str) -> Result<Self, String> {
        keyguard_policy::key::parse_allow_ip(s)
    }
}

impl FromTomlStr for Action {
    fn from_toml_str(s: &str) -> Result<Self, String> {
        s.parse()
            .map_err(|_| format!("unknown action {s:?} (expected public, read, trade or withdraw)"))
    }
}

impl FromTomlStr for DialectKind {
    fn from_toml_str(s: &str) -> Result<Self, String> {
        s.parse().map_err(|_| {
            format!("unknown dialect {s:?} (expected zaif, binance, kraken or coincheck)")
        })
    }
}

impl FromTomlStr for Method {
    fn from_toml_str(s: &str) -> Result<Self, String> {
        // The exchanges' APIs use these four; anything else (PATCH, lower case, extension
        // methods) in a route is a typo.
        match s {
            "GET" => Ok(Method::GET),
            "POST" => Ok(Method::POST),
            "PUT" => Ok(Method::PUT),
            "DELETE" => Ok(Method::DELETE),
            _ => Err(format!(
                "unsupported method {s:?} (expected GET, POST, PUT or DELETE)"
            )),
        }
    }
}

pub(crate) const SECOND_MS: u64 = 1000;
pub(crate) const MINUTE_MS: u64 = 60 * SECOND_MS;
pub(crate) const HOUR_MS: u64 = 60 * MINUTE_MS;
pub(crate) const DAY_MS: u64 = 24 * HOUR_MS;
/// A year: the longest window, ban or period any section accepts.
pub(crate) const YEAR_MS: u64 = 365 * DAY_MS;

/// The units a duration may be written in, longest first (so `90d`, not `2160h`, is how
/// bounds are shown).
const UNITS: [(&str, u64); 5] = [
    ("d", DAY_MS),
    ("h", HOUR_MS),
    ("m", MINUTE_MS),
    ("s", SECOND_MS),
    ("ms", 1),
];

/// Parses a duration as the config writes them: a whole number and one unit, `500ms`,
/// `30s`, `5m`, `1h`, `90d`. No fractions, spaces, signs or compound forms (`1h30m`): one
/// obvious spelling per value, in milliseconds.
pub(crate) fn parse_duration_ms(s: &str) -> Result<u64, String> {
    let bad = || {
        format!("invalid duration {s:?} (expected a whole number and a unit: 500ms, 30s, 5m, 1h or 90d)")
    };
    let split = s.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
    let (digits, unit) = s.split_at(split);
    if digits.is_empty() {
        return Err(bad());
    }
    let scale = UNITS
        .iter()
        .find(|(name, _)| *name == unit)
        .map(|(_, scale)| *scale)
        .ok_or_else(bad)?;
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(scale))
        .ok_or_else(|| format!("duration {s:?} is too long"))
}

/// `ms` in the largest unit that divides it: `90d`, `1500ms`.
pub(crate) fn format_ms(ms: u64) -> String {
    let (unit, scale) = UNITS
        .iter()
        .find(|(_, scale)| ms / scale * scale == ms)
        .copied()
        .unwrap_or(("ms", 1));
    format!("{}{unit}", ms / scale)
}

/// A duration string (see [`parse_duration_ms`]) in `MIN_MS..=MAX_MS`. Every duration is
/// bounded: zero would disable a window or ban by accident, and a huge one is a unit typo.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Dur<const MIN_MS: u64, const MAX_MS: u64>(pub u64);

impl<const MIN_MS: u64, const MAX_MS: u64> Dur<MIN_MS, MAX_MS> {
    /// In milliseconds.
    pub(crate) fn ms(self) -> u64 {
        self.0
    }

    pub(crate) fn duration(self) -> Duration {
        Duration::from_millis(self.0)
    }
}

impl<const MIN_MS: u64, const MAX_MS: u64> FromTomlStr for Dur<MIN_MS, MAX_MS> {
    fn from_toml_str(s: &str) -> Result<Self, String> {
        let ms = parse_duration_ms(s)?;
        if (MIN_MS..=MAX_MS).contains(&ms) {
            Ok(Dur(ms))
        } else {
            Err(format!(
                "duration {s:?} is out of range (expected {} to {})",
                format_ms(MIN_MS),
                format_ms(MAX_MS)
            ))
        }
    }
}

impl<'de, const MIN_MS: u64, const MAX_MS: u64> Deserialize<'de> for Dur<MIN_MS, MAX_MS> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Parsed::<Self>::deserialize(d).map(|p| p.0)
    }
}

/// An amount greater than zero, written as a string (`"2.5"`) so it is read exactly: a TOML
/// float would already be rounded when we saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Amount(pub Decimal);

impl FromTomlStr for Amount {
    fn from_toml_str(s: &str) -> Result<Self, String> {
        let d = parse_decimal(s).map_err(|_| {
            format!("invalid amount {s:?} (expected a decimal string such as \"2.5\" or \"1000\")")
        })?;
        if d.is_zero() {
            return Err(format!(
                "amount {s:?} must be greater than zero (to forbid withdrawals, freeze them or drop the scope)"
            ));
        }
        Ok(Amount(d))
    }
}

impl<'de> Deserialize<'de> for Amount {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // A visitor of our own, so `max_amount = 2.5` says why floats are refused.
        struct V;
        impl Visitor<'_> for V {
            type Value = Amount;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a decimal string such as \"2.5\"")
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Amount, E> {
                Amount::from_toml_str(s).map_err(E::custom)
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Amount, E> {
                Err(E::custom(format!(
                    "write the amount as a string (\"{v}\"): a TOML float is not exact"
                )))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Amount, E> {
                Err(E::custom(format!(
                    "write the amount as a string (\"{v}\"), as every amount is"
                )))
            }
        }
        d.deserialize_any(V)
    }
}

impl FromTomlStr for LedgerKind {
    fn from_toml_str(s: &str) -> Result<Self, String> {
        s.parse()
            .map_err(|_| format!("unknown ledger kind {s:?} (expected withdraw or order)"))
    }
}

impl FromTomlStr for SubjectKind {
    fn from_toml_str(s: &str) -> Result<Self, String> {
        s.parse()
            .map_err(|_| format!("unknown subject {s:?} (expected key or account)"))
    }
}

impl FromTomlStr for AssetMatch {
    fn from_toml_str(s: &str) -> Result<Self, String> {
        // Assets are compared with what routes extract (`btc`, `btc_jpy`): an empty or
        // padded name could never match, so the rule would silently limit nothing.
        if s.is_empty() || s.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(format!(
                "invalid asset {s:?} (expected \"*\" or an asset name such as \"btc\")"
            ));
        }
        let Ok(asset) = s.parse();
        Ok(asset)
    }
}
