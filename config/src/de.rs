//! Value types that check themselves while they are read. An error raised inside a
//! value's `Deserialize` gets the value's span from toml and its key path from
//! serde_path_to_error for free, so checks that need only the value itself live here
//! rather than in a later pass.

use std::fmt;
use std::marker::PhantomData;
use std::net::SocketAddr;

use http::Method;
use ipnet::IpNet;
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
        s.parse()
            .map_err(|_| format!("unknown dialect {s:?} (expected zaif, binance or kraken)"))
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
