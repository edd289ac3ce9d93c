//! Wiring: turns a validated [`Config`] into a running gateway.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use keyguard_config::Config;
use keyguard_policy::SystemClock;
use tokio::net::TcpListener;

use crate::assertion::AssertionSigner;
use crate::audit::{timestamp, AdminAudit, AuditLine, AuditSink};
use crate::keys::KeyCache;
use crate::proxy::{BodyLimits, Gateway, RequestIds, Upstream};
use crate::replay::ReplayGuard;
use crate::secrets::MasterKey;
use crate::server::{serve, ConnLimits};
use crate::store::writer::StoreWriter;
use crate::store::{self, Store};

/// Starts everything and serves until SIGINT/SIGTERM.
pub async fn run(cfg: Config) -> anyhow::Result<()> {
    let s = &cfg.server;
    let store = Store::open(&s.data_dir)?;
    let master = Arc::new(MasterKey::load_or_create(
        &cfg.secrets.master_key_env,
        cfg.secrets.master_key_file.path(),
    )?);
    let keys = Arc::new(KeyCache::load(&store, &master)?);
    let nonces = store::load_nonces(&store.connect()?)?;
    let writer = StoreWriter::start(store.connect()?);
    let signer =
        AssertionSigner::load_or_create(cfg.assertion.key_file.path(), cfg.assertion.ttl_secs)?;
    let (audit, audit_handle) = AuditSink::start(cfg.audit.path.path())?;
    let upstream_uri = cfg.require_upstream()?.uri();
    let upstream = Upstream::new(
        &upstream_uri,
        Duration::from_millis(s.upstream_connect_timeout_ms),
        Duration::from_millis(s.upstream_response_timeout_ms),
    )?;
    let clock = Arc::new(SystemClock);
    let started_at = keyguard_policy::Clock::now_ms(&*clock);
    let gateway = Arc::new(Gateway {
        dialect: cfg.dialect.clone(),
        routes: cfg.routes.clone(),
        authz: cfg.withdraw.clone(),
        trusted_proxies: s.trusted_proxies.clone(),
        body_limits: BodyLimits {
            max_bytes: s.max_body_bytes,
            read_timeout: Duration::from_millis(s.body_read_timeout_ms),
        },
        keys: keys.clone(),
        replay: ReplayGuard::new(nonces, writer, started_at),
        signer,
        audit,
        upstream,
        clock,
        ids: RequestIds::new()?,
    });
    tokio::spawn(keys.clone().refresh_loop(store.clone(), master.clone()));
    tokio::spawn(admin_audit_loop(store.clone(), gateway.audit.clone()));

    let listener = TcpListener::bind(s.listen)
        .await
        .with_context(|| format!("binding {}", s.listen))?;
    tracing::info!(
        listen = %listener.local_addr()?,
        upstream = %upstream_uri,
        dialect = cfg.dialect.kind.as_str(),
        keys = keys.snapshot().len(),
        "keyguard serving"
    );
    let limits = ConnLimits {
        max_connections: s.max_connections,
        header_read_timeout: Duration::from_millis(s.header_read_timeout_ms),
        max_header_bytes: s.max_header_bytes,
        drain_timeout: crate::cli::DRAIN_TIMEOUT,
    };
    serve(listener, gateway.clone(), limits, shutdown_signal()).await?;
    // Dropping the last gateway handle closes the audit queue; the writer drains it.
    drop(gateway);
    tokio::task::spawn_blocking(move || audit_handle.join()).await?;
    tracing::info!("stopped");
    Ok(())
}

/// Copies operator changes recorded by the CLI into the audit log, so the log has one
/// writer and a change made while no gateway ran is still logged by the next one.
async fn admin_audit_loop(store: Store, audit: AuditSink) {
    let mut ticker = tokio::time::interval(crate::keys::REFRESH_INTERVAL);
    loop {
        ticker.tick().await;
        let st = store.clone();
        let events = tokio::task::spawn_blocking(move || {
            let conn = st.connect()?;
            store::unaudited_admin_events(&conn)
        })
        .await;
        let events = match events {
            Ok(Ok(e)) => e,
            Ok(Err(e)) => {
                tracing::error!(error = %format!("{e:#}"), "reading admin events failed");
                continue;
            }
            Err(_) => continue,
        };
        let Some(last) = events.last().map(|e| e.id) else {
            continue;
        };
        for e in events {
            tracing::warn!(actor = %e.actor, action = %e.action, target = %e.target, reason = %e.reason, "operator change");
            audit
                .record_line(AuditLine::Admin(AdminAudit {
                    ts: timestamp(std::time::UNIX_EPOCH + Duration::from_millis(e.ts)),
                    kind: "admin",
                    actor: e.actor,
                    action: e.action,
                    target: e.target,
                    reason: e.reason,
                }))
                .await;
        }
        let st = store.clone();
        let marked = tokio::task::spawn_blocking(move || {
            store::mark_admin_events_audited(&st.connect()?, last)
        })
        .await;
        if !matches!(marked, Ok(Ok(()))) {
            tracing::error!("marking admin events audited failed; they may be logged twice");
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(t) => t,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
