//! [`ConfigError`] and the bookkeeping that gives every error a file, a line and a key,
//! so an operator can fix a config without reading our source.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde_path_to_error::{Path as KeyPath, Segment};

/// Why a config file was refused.
///
/// Displays as `file:line: key: message`; the line or the key is left out when there is
/// none (a file that cannot be read has neither, a syntax error has no key, a missing key
/// has no line).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The config file, as it was named to [`Config::load`](crate::Config::load).
    pub file: PathBuf,
    /// The 1-based line of the offending key or value.
    pub line: Option<usize>,
    /// The key path, e.g. `server.trusted_proxies[1]` or `route[3].action`; `[[route]]`
    /// tables count from 0, the same indices route errors and metrics use.
    pub key: Option<String>,
    /// What is wrong and, where it helps, what would be right.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if let Some(key) = &self.key {
            write!(f, ": {key}")?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for ConfigError {}

/// The text being loaded, so errors found at any stage can point into it.
pub(crate) struct Source<'a> {
    path: &'a Path,
    text: &'a str,
}

impl<'a> Source<'a> {
    pub(crate) fn new(path: &'a Path, text: &'a str) -> Self {
        Source { path, text }
    }

    /// The 1-based line holding byte `offset`.
    pub(crate) fn line(&self, offset: usize) -> usize {
        let end = offset.min(self.text.len());
        self.text.as_bytes()[..end]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
            + 1
    }

    /// An error about the value or table at `span` (a byte range of the text, as toml's
    /// spans are).
    pub(crate) fn error_at(
        &self,
        span: Range<usize>,
        key: impl Into<String>,
        message: impl Into<String>,
    ) -> ConfigError {
        ConfigError {
            file: self.path.to_path_buf(),
            line: Some(self.line(span.start)),
            key: Some(key.into()),
            message: message.into(),
        }
    }

    /// An error about something with no place in the file (a key that is missing).
    pub(crate) fn error(&self, key: Option<String>, message: impl Into<String>) -> ConfigError {
        error_without_line(self.path, key, message)
    }

    /// Converts a syntax or deserialization error: toml supplies the byte span (of the key
    /// for an unknown key, of the value for a bad value, of the table for a missing key),
    /// serde_path_to_error the key path.
    pub(crate) fn toml_error(
        &self,
        err: serde_path_to_error::Error<toml::de::Error>,
    ) -> ConfigError {
        let mut key = key_path(err.path());
        let inner = err.into_inner();
        // Syntax errors come with a second line ("expected `.`, `]]`"); keep them on one.
        let message = inner.message().trim().replace('\n', ", ");
        let mut line = inner.span().map(|s| self.line(s.start));
        // serde reports a missing key against its table: name the key itself, so the
        // message says what to add. A key missing at the top has no useful line.
        if let Some(name) = missing_field(&message) {
            line = line.filter(|_| key.is_some());
            key = Some(match key {
                Some(table) => format!("{table}.{name}"),
                None => name.to_owned(),
            });
        }
        // The file has keys, not fields.
        let message = message
            .replacen("unknown field `", "unknown key `", 1)
            .replacen("missing field `", "missing key `", 1);
        ConfigError {
            file: self.path.to_path_buf(),
            line,
            key,
            message,
        }
    }
}

/// An error with no line: unreadable files, command-line overrides, missing keys.
pub(crate) fn error_without_line(
    file: &Path,
    key: Option<String>,
    message: impl Into<String>,
) -> ConfigError {
    ConfigError {
        file: file.to_path_buf(),
        line: None,
        key,
        message: message.into(),
    }
}

/// `route[3].action` from serde_path_to_error's segments; `None` at the top level.
fn key_path(path: &KeyPath) -> Option<String> {
    let mut out = String::new();
    for segment in path.iter() {
        match segment {
            Segment::Seq { index } => out.push_str(&format!("[{index}]")),
            Segment::Map { key } | Segment::Enum { variant: key } => {
                // `toml::Spanned` is deserialized as a struct with private field names;
                // they are our plumbing, not keys the operator wrote.
                if key.starts_with("$__serde_spanned_private") {
                    continue;
                }
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(key);
            }
            Segment::Unknown => out.push_str(".?"),
        }
    }
    (!out.is_empty()).then_some(out)
}

/// The key name in serde's "missing field `name`" message.
fn missing_field(message: &str) -> Option<&str> {
    message
        .strip_prefix("missing field `")?
        .split_once('`')
        .map(|(name, _)| name)
}
