//! Keyguard's configuration: one TOML file, read strictly and turned into the values the
//! gateway runs on — listeners and limits, file locations, and the policy's
//! [`RouteTable`] and [`DialectConfig`].
//!
//! Strict because a config mistake in a security gateway must fail loudly: every table
//! denies unknown keys (a misspelt limit never silently falls back to its default), and
//! every error names file, line and key:
//!
//! ```text
//! config/examples/zaif.toml:14: route[3].action: unknown action "wthdraw" (expected public, read, trade or withdraw)
//! ```
//!
//! # Layout
//! - `error`: [`ConfigError`], and turning toml's byte spans and serde's key paths into
//!   `file:line: key:`.
//! - `de`: value types that validate themselves while being read (addresses, CIDRs,
//!   bounded integers, names), so their errors carry span and key path for free.
//! - `server`: `[server]` — listeners, [`Upstream`], data directory, connection limits.
//! - `data`: `[secrets]`, `[assertion]`, `[audit]` — [`DataFile`]s in the data directory.
//! - `withdraw`: `[withdraw]` — the policy's [`AuthorizeConfig`].
//! - `dialect`: `[dialect]` — the policy's [`DialectConfig`].
//! - `route`: `[[route]]` — the policy's [`RouteTable`], with its errors located.
//! - `limits`: `[limits]` — the policy's [`RateLimitConfig`]: IP limit, tiers, key tiers.
//! - `velocity`: `[[velocity.rule]]` — the policy's [`VelocityConfig`].
//! - `anomaly`: `[anomaly]` — the policy's [`AnomalyConfig`], every rule on by default.
//! - `alerts`: `[alerts]` — [`AlertsConfig`], the alert webhook.
//! - `canary`: `[canary]` — the reaction to a canary key's use (`anomaly.canary`).
//! - `admin`: `[admin]` — [`AdminConfig`]: widening cool-down, sessions, activity, lockout.
//! - `tls`: `[tls.listen]`, `[tls.admin]`, `[tls.upstream]` — [`TlsConfig`]: certificate
//!   and CA paths, located for the gateway's errors when it reads them.
//! - `overload`: `[overload]` and `[http2]` — [`OverloadConfig`], [`Http2Config`].
//! - `reload`: `[reload]` — [`ReloadConfig`]: reloading on file changes too.
//!
//! Durations are strings with one unit (`500ms`, `30s`, `5m`, `1h`, `90d`) and amounts are
//! decimal strings (`"2.5"`), read exactly; both are parsed in `de`.
//!
//! Each section is a `Raw…` struct (the file as written, `deny_unknown_fields`) with a
//! `resolve` step into its public type. A new section (`[limits]`, `[velocity]`, …) is a
//! new module of that shape, one field in `ConfigFile` and one in [`Config`].

#![forbid(unsafe_code)]

mod admin;
mod alerts;
mod anomaly;
mod canary;
mod data;
mod de;
mod dialect;
mod error;
mod limits;
mod overload;
mod reload;
mod route;
mod server;
mod store;
mod tls;
mod velocity;
mod withdraw;

use std::path::{Path, PathBuf};

use keyguard_policy::anomaly::AnomalyConfig;
use keyguard_policy::authorize::AuthorizeConfig;
use keyguard_policy::limits::RateLimitConfig;
use keyguard_policy::velocity::VelocityConfig;
use keyguard_policy::{DialectConfig, RouteTable};
use serde::Deserialize;
use toml::Spanned;

pub use admin::{AdminConfig, SsoConfig};
pub use alerts::AlertsConfig;
pub use data::{AssertionAlg, AssertionConfig, AuditConfig, DataFile, SecretsConfig};
pub use error::ConfigError;
pub use overload::{Http2Config, OverloadConfig};
pub use reload::ReloadConfig;
pub use server::{InvalidUpstream, ServerConfig, Upstream};
pub use store::{ReadWhenUnavailable, RedisConfig, RedisTarget, StoreConfig};
pub use tls::{ConfigPath, TlsConfig, TlsIdentity, UpstreamTls};

use error::{error_without_line, Source};

/// A loaded and validated configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The file it was loaded from, as named (errors and logs show it this way).
    pub path: PathBuf,
    /// `[server]`.
    pub server: ServerConfig,
    /// `[secrets]`.
    pub secrets: SecretsConfig,
    /// `[assertion]`.
    pub assertion: AssertionConfig,
    /// `[audit]`.
    pub audit: AuditConfig,
    /// `[withdraw]`, as the policy's authorization tunables.
    pub withdraw: AuthorizeConfig,
    /// `[dialect]`.
    pub dialect: DialectConfig,
    /// All `[[route]]` tables, validated for the dialect.
    pub routes: RouteTable,
    /// `[limits]`; without it, no rate limits ([`RateLimitConfig::default`]).
    pub limits: RateLimitConfig,
    /// The `[[velocity.rule]]` tables, validated; without them, no velocity limits.
    pub velocity: VelocityConfig,
    /// `[anomaly]`; every rule not turned off is on, with the policy's defaults.
    pub anomaly: AnomalyConfig,
    /// `[alerts]`; without a `webhook_url`, no alerts are sent.
    pub alerts: AlertsConfig,
    /// `[admin]`: the web UI and admin API.
    pub admin: AdminConfig,
    /// `[store]`: embedded (default) or Redis.
    pub store: StoreConfig,
    /// `[tls.*]`: certificates of the listeners, trust for an `https://` upstream.
    pub tls: TlsConfig,
    /// `[overload]`: load shedding and per-network connection caps.
    pub overload: OverloadConfig,
    /// `[http2]`: HTTP/2 on the exchange-facing listener.
    pub http2: Http2Config,
    /// `[reload]`: reloading on file changes.
    pub reload: ReloadConfig,
}

/// The file's top level as written. Every section but `[dialect]` has defaults.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    #[serde(default)]
    server: server::RawServer,
    #[serde(default)]
    secrets: data::RawSecrets,
    #[serde(default)]
    assertion: data::RawAssertion,
    #[serde(default)]
    audit: data::RawAudit,
    #[serde(default)]
    withdraw: withdraw::RawWithdraw,
    dialect: dialect::RawDialect,
    #[serde(default)]
    route: Vec<Spanned<route::RawRoute>>,
    #[serde(default)]
    limits: Option<limits::RawLimits>,
    #[serde(default)]
    velocity: velocity::RawVelocity,
    #[serde(default)]
    anomaly: anomaly::RawAnomaly,
    #[serde(default)]
    alerts: alerts::RawAlerts,
    #[serde(default)]
    canary: canary::RawCanary,
    #[serde(default)]
    admin: admin::RawAdmin,
    #[serde(default)]
    store: store::RawStore,
    #[serde(default)]
    tls: tls::RawTls,
    #[serde(default)]
    overload: overload::RawOverload,
    #[serde(default)]
    http2: overload::RawHttp2,
    #[serde(default)]
    reload: reload::RawReload,
}

impl Config {
    /// Reads and validates the file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| error_without_line(path, None, format!("cannot read: {e}")))?;
        Config::parse(&text, path)
    }

    /// Validates `text` as if read from `path`. Relative paths in it resolve against
    /// `path`'s directory, so they point next to the config file wherever the gateway is
    /// started from (the results are themselves relative when `path` is).
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let src = Source::new(path, text);
        let file: ConfigFile = serde_path_to_error::deserialize(toml::Deserializer::new(text))
            .map_err(|e| src.toml_error(e))?;
        let config_dir = path.parent().unwrap_or(Path::new(""));
        let server = file.server.resolve(&src, config_dir)?;
        let data_dir = server.data_dir.clone();
        let dialect = file.dialect.resolve(&src)?;
        let routes = route::build(&src, dialect.kind, file.route)?;
        let limits = match file.limits {
            Some(raw) => raw.resolve(&src)?,
            None => RateLimitConfig::default(),
        };
        let velocity = file.velocity.resolve(&src)?;
        let tls = file.tls.resolve(&src, path, config_dir)?;
        let mut anomaly = file.anomaly.resolve();
        anomaly.canary = file.canary.resolve();
        Ok(Config {
            path: path.to_path_buf(),
            secrets: file.secrets.resolve(&data_dir),
            assertion: file.assertion.resolve(&data_dir),
            audit: file.audit.resolve(&src, &data_dir)?,
            withdraw: file.withdraw.resolve(),
            server,
            dialect,
            routes,
            limits,
            velocity,
            anomaly,
            alerts: file.alerts.resolve(),
            admin: file.admin.resolve(config_dir),
            store: file.store.resolve(&src)?,
            tls,
            overload: file.overload.resolve(),
            http2: file.http2.resolve(),
            reload: file.reload.resolve(),
        })
    }

    /// Sets the upstream (`--upstream` wins over the file), with the same checks as in
    /// the file.
    pub fn set_upstream(&mut self, url: &str) -> Result<(), InvalidUpstream> {
        self.server.upstream = Some(url.parse()?);
        Ok(())
    }

    /// Moves the data directory (`--data-dir` wins over the file) and re-resolves the files
    /// configured relative to it; files configured with absolute paths stay put. A
    /// relative `dir` is kept as given: relative to the working directory, like any path
    /// on a command line.
    pub fn set_data_dir(&mut self, dir: impl Into<PathBuf>) {
        self.server.data_dir = dir.into();
        let dir = &self.server.data_dir;
        // Every DataFile must be listed here, or it would stay in the old directory.
        for file in [
            &mut self.secrets.master_key_file,
            &mut self.assertion.key_file,
            &mut self.audit.path,
        ] {
            file.rebase(dir);
        }
    }

    /// The upstream, which `serve` cannot run without but the file may leave to
    /// `--upstream`.
    pub fn require_upstream(&self) -> Result<&Upstream, ConfigError> {
        self.server.upstream.as_ref().ok_or_else(|| {
            error_without_line(
                &self.path,
                Some("server.upstream".to_owned()),
                "no upstream: set it in [server] or pass --upstream",
            )
        })
    }
}

#[cfg(test)]
mod tests;
