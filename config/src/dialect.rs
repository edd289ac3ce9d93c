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
}

impl RawDialect {
    pub(crate) fn resolve(self, src: &Source<'_>) -> Result<DialectConfig, ConfigError> {
        let kind = self.kind.0;
        let mut cfg = DialectConfig::new(kind);
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
