//! Reloading the config on SIGHUP: the file is read and validated exactly as `serve` and
//! `check-config` do ([`validate`]); only when everything in it is valid is anything
//! swapped, so an invalid file keeps the running config whole. Connections and requests
//! under way finish with what they started with: each swapped part is an `Arc` taken
//! per handshake or per connection.
//!
//! Swapped on reload: the listeners' certificates and keys (`[tls.listen]`,
//! `[tls.admin]`), the upstream's CA and client certificate (`[tls.upstream]`, for new
//! upstream connections), `[overload]` and `[http2]`. Every other changed setting is
//! named in the log as needing a restart, and keeps its running value.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use keyguard_config::{Config, ConfigError};

use crate::server::{self, tls, Frontend};
use crate::upstream::Upstream;

/// Reload results, for the metrics registry.
#[derive(Debug, Default)]
pub struct ReloadStats {
    /// Reloads that validated and were applied.
    pub ok: AtomicU64,
    /// Reloads refused because the file was unreadable or invalid (the old config stays).
    pub failed: AtomicU64,
}

/// Everything of a config that can fail to load beyond the file itself, built ahead so a
/// reload fails before it swaps anything.
pub struct Prepared {
    /// The exchange-facing listener's TLS.
    pub listen_tls: Option<Arc<rustls::ServerConfig>>,
    /// The admin listener's TLS.
    pub admin_tls: Option<Arc<rustls::ServerConfig>>,
    /// The upstream's TLS client, for an `https://` upstream.
    pub upstream_tls: Option<Arc<rustls::ClientConfig>>,
}

/// Reads every certificate and key the config names, as `serve`, a reload and
/// `check-config` all do; errors name file, line and key.
pub fn validate(cfg: &Config) -> Result<Prepared, ConfigError> {
    let listen_tls = cfg
        .tls
        .listen
        .as_ref()
        .map(|id| tls::server_config(id, server::listener_alpn(&cfg.http2)))
        .transpose()?;
    let admin_tls = cfg
        .tls
        .admin
        .as_ref()
        .map(|id| tls::server_config(id, &[tls::ALPN_HTTP1]))
        .transpose()?;
    let https = cfg
        .server
        .upstream
        .as_ref()
        .is_some_and(|u| u.scheme() == &http::uri::Scheme::HTTPS);
    let upstream_tls = if https {
        Some(tls::client_config(&cfg.tls.upstream, &cfg.path)?)
    } else {
        None
    };
    Ok(Prepared {
        listen_tls,
        admin_tls,
        upstream_tls,
    })
}

/// What a reload swaps.
pub struct Reloader {
    /// Reads the file again with the command line's flags applied.
    pub load: Box<dyn Fn() -> anyhow::Result<Config> + Send + Sync>,
    /// The config running now.
    pub running: parking_lot::Mutex<Config>,
    /// The exchange-facing listener's swappable parts.
    pub front: Arc<Frontend>,
    /// The admin listener's certificate, when it has TLS.
    pub admin_tls: Option<Arc<tls::Acceptor>>,
    /// The upstream (its TLS client is swapped).
    pub upstream: Arc<Upstream>,
    /// Counters.
    pub stats: Arc<ReloadStats>,
}

impl Reloader {
    /// Reloads once, logging the outcome; `Err` carries the reason the old config stays.
    pub fn reload(&self) -> anyhow::Result<()> {
        let result = self.try_reload();
        match &result {
            Ok(()) => {
                self.stats.ok.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                self.stats.failed.fetch_add(1, Ordering::Relaxed);
                tracing::error!(error = %format!("{e:#}"), "config reload failed; the running config stays");
            }
        }
        result
    }

    fn try_reload(&self) -> anyhow::Result<()> {
        let new = (self.load)()?;
        let prepared = validate(&new)?;
        let mut running = self.running.lock();
        let restart = restart_only_changes(&running, &new);
        // Whether a listener speaks TLS at all is fixed at start (clients would break
        // half-way); only its certificate changes.
        if let (Some(acceptor), Some(cfg)) = (&self.front.tls, prepared.listen_tls) {
            acceptor.replace(cfg);
        }
        if let (Some(acceptor), Some(cfg)) = (&self.admin_tls, prepared.admin_tls) {
            acceptor.replace(cfg);
        }
        if let (Some(up), Some(cfg)) = (&self.upstream.tls, prepared.upstream_tls) {
            up.connector.replace(cfg);
        }
        self.front.overload.configure(&new.overload);
        self.front.http2.store(Arc::new(new.http2.clone()));
        // What was not applied keeps its running value, so the next reload compares
        // against what actually runs.
        let mut applied = running.clone();
        applied.tls = new.tls.clone();
        applied.overload = new.overload.clone();
        applied.http2 = new.http2.clone();
        *running = applied;
        if restart.is_empty() {
            tracing::info!(config = %new.path.display(), "config reloaded");
        } else {
            tracing::warn!(
                config = %new.path.display(),
                restart_needed = %restart.join(", "),
                "config reloaded; these changed settings apply only after a restart and keep their running values"
            );
        }
        Ok(())
    }
}

/// The settings that differ between `old` and `new` and that a reload does not apply.
pub fn restart_only_changes(old: &Config, new: &Config) -> Vec<&'static str> {
    let (a, b) = (&old.server, &new.server);
    let mut changed = Vec::new();
    let mut check = |name: &'static str, differs: bool| {
        if differs {
            changed.push(name);
        }
    };
    check("server.listen", a.listen != b.listen);
    check("server.admin_listen", a.admin_listen != b.admin_listen);
    check("server.upstream", a.upstream != b.upstream);
    check("server.data_dir", a.data_dir != b.data_dir);
    check("server.workers", a.workers != b.workers);
    check(
        "server.max_connections",
        a.max_connections != b.max_connections,
    );
    check(
        "server.max_header_bytes",
        a.max_header_bytes != b.max_header_bytes,
    );
    check(
        "server.header_read_timeout_ms",
        a.header_read_timeout_ms != b.header_read_timeout_ms,
    );
    check(
        "server.max_body_bytes",
        a.max_body_bytes != b.max_body_bytes,
    );
    check(
        "server.body_read_timeout_ms",
        a.body_read_timeout_ms != b.body_read_timeout_ms,
    );
    check(
        "server.upstream_connect_timeout_ms",
        a.upstream_connect_timeout_ms != b.upstream_connect_timeout_ms,
    );
    check(
        "server.upstream_response_timeout_ms",
        a.upstream_response_timeout_ms != b.upstream_response_timeout_ms,
    );
    check(
        "server.upstream_max_idle_per_worker",
        a.upstream_max_idle_per_worker != b.upstream_max_idle_per_worker,
    );
    check(
        "server.trusted_proxies",
        a.trusted_proxies != b.trusted_proxies,
    );
    check(
        "tls.listen (on or off)",
        old.tls.listen.is_some() != new.tls.listen.is_some(),
    );
    check(
        "tls.admin (on or off)",
        old.tls.admin.is_some() != new.tls.admin.is_some(),
    );
    check("secrets", old.secrets != new.secrets);
    check("assertion", old.assertion != new.assertion);
    check("audit", old.audit != new.audit);
    check("withdraw", old.withdraw != new.withdraw);
    check("dialect", old.dialect != new.dialect);
    check("route", old.routes != new.routes);
    check("limits", old.limits != new.limits);
    check("velocity", old.velocity != new.velocity);
    check("anomaly", old.anomaly != new.anomaly);
    check("alerts", old.alerts != new.alerts);
    check("admin", old.admin != new.admin);
    changed
}

/// Reloads on every SIGHUP until the process ends.
pub async fn on_sighup(reloader: Arc<Reloader>) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hup = match signal(SignalKind::hangup()) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGHUP; config reload is off");
                return;
            }
        };
        while hup.recv().await.is_some() {
            tracing::info!("SIGHUP: reloading the config");
            let r = reloader.clone();
            // Reading files and parsing certificates is blocking work.
            let _ = tokio::task::spawn_blocking(move || r.reload()).await;
        }
    }
    #[cfg(not(unix))]
    {
        let _ = reloader;
    }
}
