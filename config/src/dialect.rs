//! `[dialect]`: which exchange API the gateway speaks, and that dialect's options.

use keyguard_policy::{DialectConfig, DialectKind};
use serde::Deserialize;
use toml::Spanned;

use crate::de::{Bounded, Parsed};
use crate::error::{ConfigError, Source};

/// Binance's own limit for `recvWindow`.
const MAX_RECV_WINDOW_MS: u64 = 60_000;

/// `[dialect]` as written. The options are spanned because whether they are allowed at
/// all depends on `kind`, which is only known once the whole table is read.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawDialect {
    kind: Parsed<DialectKind>,
    #[serde(default)]
    recv_window_default_ms: Option<Spanned<Bounded<1, MAX_RECV_WINDOW_MS>>>,
    #[serde(default)]
    recv_window_max_ms: Option<Spanned<Bounded<1, MAX_RECV_WINDOW_MS>>>,
    #[serde(default)]
    future_tolerance_ms: Option<Spanned<Bounded<0, MAX_RECV_WINDOW_MS>>>,
    #[serde(default)]
    public_base_url: Option<Spanned<String>>,
}

/// Checks a Coincheck public base URL: `http://` or `https://`, a host, an optional
/// port, nothing else. A path, query or userinfo would make the rebuilt URL differ from
/// what clients sign, so every request would fail as a bad signature.
fn base_url(text: &str) -> Result<String, String> {
    let trimmed = text.strip_suffix('/').unwrap_or(text);
    let Some((scheme, authority)) = trimmed.split_once("://") else {
        return Err(format!(
            "`{text}` is not a URL: expected https://host[:port]"
        ));
    };
    if scheme != "http" && scheme != "https" {
        return Err(format!("`{text}`: the scheme must be http or https"));
    }
    if authority.is_empty()
        || authority.contains(['/', '?', '#', '@', ' '])
        || authority.chars().any(|c| c.is_control())
    {
        return Err(format!(
            "`{text}` must be scheme://host[:port] only, without path, query or user (clients sign the full URL; the gateway appends the request's path and query)"
        ));
    }
    let uri: http::Uri = trimmed
        .parse()
        .map_err(|e| format!("`{text}` is not a valid URL: {e}"))?;
    if uri.host().is_none_or(str::is_empty) {
        return Err(format!("`{text}` has no host"));
    }
    Ok(trimmed.to_owned())
}

impl RawDialect {
    pub(crate) fn resolve(self, src: &Source<'_>) -> Result<DialectConfig, ConfigError> {
        let kind = self.kind.0;
        let mut cfg = DialectConfig::new(kind);
        match (&self.public_base_url, kind) {
            (Some(url), DialectKind::Coincheck) => {
                cfg.public_base_url = Some(
                    base_url(url.get_ref())
                        .map_err(|m| src.error_at(url.span(), "dialect.public_base_url", m))?,
                );
            }
            (Some(url), _) => {
                return Err(src.error_at(
                    url.span(),
                    "dialect.public_base_url",
                    format!(
                        "only the coincheck dialect signs the full URL ({} does not use this option)",
                        kind.as_str()
                    ),
                ));
            }
            (None, DialectKind::Coincheck) => {
                return Err(src.error(
                    Some("dialect.public_base_url".to_owned()),
                    "the coincheck dialect needs `public_base_url`, the URL clients call the gateway at (e.g. \"https://api.exchange.example\"): Coincheck signatures cover the full URL, so the gateway must know it",
                ));
            }
            (None, _) => {}
        }
        let options = [
            ("recv_window_default_ms", &self.recv_window_default_ms),
            ("recv_window_max_ms", &self.recv_window_max_ms),
        ];
        // The receive window is Binance's replay protection; the other dialects use
        // nonces, so these keys would silently do nothing there.
        if kind != DialectKind::Binance {
            let tolerance = self
                .future_tolerance_ms
                .as_ref()
                .map(|v| ("future_tolerance_ms", v.span()));
            let set = options
                .iter()
                .filter_map(|(name, v)| v.as_ref().map(|v| (*name, v.span())))
                .chain(tolerance)
                .min_by_key(|(_, span)| span.start);
            if let Some((name, span)) = set {
                return Err(src.error_at(
                    span,
                    format!("dialect.{name}"),
                    format!(
                        "only the binance dialect has this option ({} uses nonces, not a receive window)",
                        kind.as_str()
                    ),
                ));
            }
            return Ok(cfg);
        }
        if let Some(v) = &self.recv_window_default_ms {
            cfg.recv_window_default_ms = v.get_ref().0;
        }
        if let Some(v) = &self.recv_window_max_ms {
            cfg.recv_window_max_ms = v.get_ref().0;
        }
        if let Some(v) = &self.future_tolerance_ms {
            cfg.future_tolerance_ms = v.get_ref().0;
        }
        if cfg.recv_window_default_ms > cfg.recv_window_max_ms {
            let message = format!(
                "recv_window_default_ms ({}) is larger than recv_window_max_ms ({})",
                cfg.recv_window_default_ms, cfg.recv_window_max_ms
            );
            // Point at whichever of the two the file sets (the default one if both).
            let at = options
                .iter()
                .find_map(|(name, v)| v.as_ref().map(|v| (*name, v.span())));
            return Err(match at {
                Some((name, span)) => src.error_at(span, format!("dialect.{name}"), message),
                None => src.error(Some("dialect".to_owned()), message),
            });
        }
        Ok(cfg)
    }
}
