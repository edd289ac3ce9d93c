//! Reloading the config on SIGHUP: the file is read and validated exactly as `serve` and
//! `check-config` do ([`validate`]); only when everything in it is valid is anything
//! swapped, so an invalid file keeps the running config whole. Connections and requests
//! under way finish with what they started with: each swapped part is an `Arc` taken
//! per handshake or per connection.
//!
//! Swapped on reload:
//! - the pipeline's stateless policy ([`crate::proxy::Policy`]): `[dialect]` options,
//!   `[[route]]`, `[withdraw]`, `server.trusted_proxies`, `server.max_body_bytes`,
//!   `server.body_read_timeout_ms` — one `ArcSwap`, so a request sees all old or all new;
//! - the listeners' certificates and keys (`[tls.listen]`, `[tls.admin]`), the
//!   upstream's CA and client certificate (`[tls.upstream]`, for new upstream
//!   connections);
//! - `[overload]` and `[http2]` (new connections and requests).
//!
//! Restart-only, named in the log when changed and kept at their running values: the
//! listen addresses, the upstream, the data directory and files (`[secrets]`,
//! `[assertion]`, `[audit]`), workers and connection-level limits, whether a listener
//! has TLS at all, `dialect.kind` (routes are validated for it), and the stateful
//! parts — `[limits]`, `[[velocity.rule]]`, `[anomaly]` — whose live buckets, ledgers and
//! tables a rebuild would lose, `[alerts]` and `[admin]`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use keyguard_config::{Config, ConfigError};

use crate::proxy::{BodyLimits, Gateway, Policy};
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

/// The pipeline's swappable policy from `cfg`.
pub fn policy(cfg: &Config) -> Policy {
    Policy {
        dialect: cfg.dialect.clone(),
        routes: cfg.routes.clone(),
        authz: cfg.withdraw.clone(),
        trusted_proxies: cfg.server.trusted_proxies.clone(),
        body_limits: BodyLimits {
            max_bytes: cfg.server.max_body_bytes,
            read_timeout: std::time::Duration::from_millis(cfg.server.body_read_timeout_ms),
        },
    }
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
    // Built whenever it is configured, even for an http:// upstream (or one left to
    // `--upstream`), so a broken CA or client certificate is reported where it is named.
    let https = cfg
        .server
        .upstream
        .as_ref()
        .is_some_and(|u| u.scheme() == &http::uri::Scheme::HTTPS);
    let configured = cfg.tls.upstream.ca_file.is_some() || cfg.tls.upstream.client.is_some();
    let upstream_tls = if https || configured {
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
    /// The pipeline (its policy is swapped); weak, so a reload never keeps a stopping
    /// gateway alive.
    pub gateway: std::sync::Weak<Gateway>,
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
                crate::metrics::metrics().reload_ok.inc();
            }
            Err(e) => {
                self.stats.failed.fetch_add(1, Ordering::Relaxed);
                crate::metrics::metrics().reload_failed.inc();
                tracing::error!(error = %format!("{e:#}"), "config reload failed; the running config stays");
            }
        }
        result
    }

    fn try_reload(&self) -> anyhow::Result<()> {
        // Held throughout: a SIGHUP and a file change at once reload one after the other.
        let mut running = self.running.lock();
        let new = (self.load)()?;
        let prepared = validate(&new)?;
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
        if new.dialect.kind == running.dialect.kind {
            if let Some(gw) = self.gateway.upgrade() {
                gw.policy.store(Arc::new(policy(&new)));
            }
            applied.dialect = new.dialect.clone();
            applied.routes = new.routes.clone();
            applied.withdraw = new.withdraw.clone();
            applied.server.trusted_proxies = new.server.trusted_proxies.clone();
            applied.server.max_body_bytes = new.server.max_body_bytes;
            applied.server.body_read_timeout_ms = new.server.body_read_timeout_ms;
        }
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
    // Routes are validated for the dialect: with another kind, neither is applied.
    check(
        "dialect.kind (with [dialect] and [[route]])",
        old.dialect.kind != new.dialect.kind,
    );
    check("limits", old.limits != new.limits);
    check("velocity", old.velocity != new.velocity);
    check("anomaly", old.anomaly != new.anomaly);
    check("alerts", old.alerts != new.alerts);
    check("admin", old.admin != new.admin);
    check("reload", old.reload != new.reload);
    changed
}

/// The files a reload reads: the config and every certificate, key and CA it names.
fn watched_files(cfg: &Config) -> Vec<std::path::PathBuf> {
    let mut files = vec![cfg.path.clone()];
    let t = &cfg.tls;
    for id in [&t.listen, &t.admin, &t.upstream.client]
        .into_iter()
        .flatten()
    {
        files.push(id.cert_file.path.clone());
        files.push(id.key_file.path.clone());
    }
    if let Some(ca) = &t.upstream.ca_file {
        files.push(ca.path.clone());
    }
    files
}

type Stamp = Vec<Option<(std::time::SystemTime, u64)>>;

fn stamp(files: &[std::path::PathBuf]) -> Stamp {
    files
        .iter()
        .map(|f| {
            let m = std::fs::metadata(f).ok()?;
            Some((m.modified().ok()?, m.len()))
        })
        .collect()
}

/// Reloads when the config file or a file it names changes: one `stat` per file a
/// second, far cheaper than a request. A half-written file fails validation, is counted
/// and logged, and the next change is tried again.
pub async fn watch_files(reloader: Arc<Reloader>) {
    let mut files = watched_files(&reloader.running.lock());
    let mut seen = stamp(&files);
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    loop {
        tick.tick().await;
        if reloader.gateway.strong_count() == 0 {
            return;
        }
        let now = stamp(&files);
        if now == seen {
            continue;
        }
        tracing::info!("config or certificate files changed: reloading");
        // Stamped before the reload reads them: a change made while it runs differs
        // from this stamp and triggers another reload next tick.
        seen = now;
        let r = reloader.clone();
        let _ = tokio::task::spawn_blocking(move || r.reload()).await;
        let named = watched_files(&reloader.running.lock());
        if named != files {
            files = named;
            seen = stamp(&files);
        }
    }
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
