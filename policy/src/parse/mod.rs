//! Strict parsers for the parts of a request the policy reads. Each accepts only one way
//! of writing a thing, because every ambiguity (`%2e%2e`, `a=1;a=2`, a duplicate JSON key)
//! is a place where the gateway and the exchange could read the same bytes differently.
//! The dialects ([`crate::dialect`]) put them together per exchange.
//!
//! # Layout
//! - [`path`]: the request path, accepted only when already canonical.
//! - [`target`]: absolute-form targets and `Host` headers.
//! - [`headers`]: smuggling, method-override and credential-header rules; content types.
//! - [`urlencoded`]: query strings and form bodies (and Python-compatible encoding).
//! - [`json`]: a strict RFC 8259 parser that keeps numbers as text.
//! - [`names`]: when two parameter names (or JSON keys) are the same parameter to a
//!   lenient server: case, NFKC, whitespace around them, PHP folding; invisible characters.

pub mod headers;
pub mod json;
pub mod names;
pub mod path;
pub mod target;
pub mod urlencoded;

pub use headers::{
    auth_text, auth_value, check_headers, media_type, media_type_of, scan_headers, HeaderScan,
    MediaType,
};
pub use json::{parse_json, parse_json_object};
pub use path::normalize_path;
pub use target::check_target;
pub use urlencoded::{parse_urlencoded, quote, urlencode};

#[cfg(test)]
mod proptests;
