//! Wiring: turns a validated [`Config`] into a running gateway.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use keyguard_config::Config;
use keyguard_policy::SystemClock;
use tokio::net::TcpListener;

use crate::activity::Activity;
use crate::alerts::{Alert, AlertSettings, Alerts};
use crate::assertion::AssertionSigner;
use crate::audit::{timestamp, AdminAudit, AuditLine, AuditSettings, AuditSink};
use crate::keys::KeyCache;
use crate::proxy::Shared;
use crate::proxy::{Gateway, RequestIds};
use crate::reload::{ReloadStats, Reloader};
use crate::replay::ReplayGuard;
use crate::secrets::MasterKey;
use crate::server::overload::Overload;
use crate::server::{bind_workers, serve, ConnLimits, Frontend};
use crate::store::redis::admit::{Scripts, SharedRules};
use crate::store::redis::RedisStore;
use crate::store::writer::StoreWriter;
use crate::store::{self, Store};
use crate::upstream::pool::Pool;
use crate::upstream::Upstream;
use keyguard_policy::anomaly::{Anomaly, MemoryIpHistory};
use keyguard_policy::limits::RateLimits;
use keyguard_policy::velocity::MemoryVelocity;

/// Starts everything and serves until SIGINT/SIGTERM; on SIGHUP, reloads the config
/// with `reload` (the file read again, the command line's flags applied).
pub async fn run(
    cfg: Config,
    reload: Box<dyn Fn() -> anyhow::Result<Config> + Send + Sync>,
) -> anyhow::Result<()> {
    let s = &cfg.server;
    if cfg.overload.raise_open_files {
        crate::server::overload::raise_open_files();
    }
    let prepared = crate::reload::validate(&cfg)?;
    let store = Store::open(&s.data_dir)?;
    let _serving = lock_data_dir(&s.data_dir)?;
    let master = Arc::new(MasterKey::load_or_create(
        &cfg.secrets.master_key_env,
        cfg.secrets.master_key_file.path(),
    )?);
    let redis = match &cfg.store {
        keyguard_config::StoreConfig::Embedded => None,
        keyguard_config::StoreConfig::Redis(rc) => Some(RedisStore::new(rc)?),
    };
    let keys = Arc::new(match &redis {
        None => KeyCache::load(&store, &master)?,
        Some(r) => {
            // The catalogue must be readable to start: without keys nothing works.
            let snap = r
                .snapshot(&master)
                .await
                .context("loading the key catalogue from redis")?;
            let cache = KeyCache::from_snapshot(snap);
            cache.confirm();
            cache
        }
    });
    let conn = store.connect()?;
    let nonces = store::load_nonces(&conn)?;
    let clock = Arc::new(SystemClock);
    let started_at = keyguard_policy::Clock::now_ms(&*clock);
    // Only entries young enough to fall inside the longest window can still count.
    let horizon = cfg
        .velocity
        .rules
        .iter()
        .map(|r| r.window_ms)
        .max()
        .unwrap_or(0);
    let (ledger, max_id) = store::load_velocity(&conn, started_at.saturating_sub(horizon))?;
    let velocity = MemoryVelocity::restore(&cfg.velocity, ledger, max_id)
        .map_err(|e| anyhow::anyhow!("velocity rules: {e}"))?;
    let max_per_key = cfg
        .anomaly
        .new_ip
        .as_ref()
        .map(|r| r.max_per_key)
        .unwrap_or(64);
    let history = MemoryIpHistory::restore(max_per_key, store::load_learned_ips(&conn)?);
    let anomaly = Anomaly::in_memory(cfg.anomaly.clone(), history);
    let limits = RateLimits::new(&cfg.limits).map_err(|e| anyhow::anyhow!("rate limits: {e}"))?;
    drop(conn);
    let writer = StoreWriter::start(store.connect()?);
    let alerts = Alerts::start(AlertSettings {
        url: cfg
            .alerts
            .webhook_url
            .as_deref()
            .map(str::parse)
            .transpose()
            .map_err(|e| anyhow::anyhow!("alerts.webhook_url: {e}"))?,
        timeout: cfg.alerts.timeout,
        max_retries: cfg.alerts.max_retries,
        queue: cfg.alerts.queue,
    });
    let signer = AssertionSigner::load_or_create(
        cfg.assertion.alg,
        cfg.assertion.key_file.path(),
        cfg.assertion.ttl_secs,
    )?;
    crate::metrics::metrics().set_dialect(cfg.dialect.kind.as_str());
    let (audit, audit_handle) = AuditSink::start_with(AuditSettings::from_config(
        &cfg.audit,
        cfg.dialect.kind.as_str(),
    ))?;
    tokio::spawn(audit.clone().watch(audit_alert(alerts.clone())));
    let upstream_uri = cfg.require_upstream()?.uri();
    let upstream = Arc::new(Upstream::new(
        &upstream_uri,
        prepared
            .upstream_tls
            .map(|c| Arc::new(crate::server::tls::Connector::new(c))),
        Duration::from_millis(s.upstream_connect_timeout_ms),
        Duration::from_millis(s.upstream_response_timeout_ms),
        s.upstream_max_idle_per_worker,
    )?);
    let gateway = Arc::new(Gateway {
        policy: arc_swap::ArcSwap::from_pointee(crate::reload::policy(&cfg)),
        keys: keys.clone(),
        replay: ReplayGuard::open(
            &s.data_dir,
            nonces,
            writer.clone(),
            started_at,
            cfg.audit.write_timeout,
        )?,
        limits,
        velocity,
        anomaly,
        activity: Activity::default(),
        suspended_by_rules: Default::default(),
        writer,
        alerts,
        signer,
        audit,
        upstream: upstream.clone(),
        clock,
        ids: RequestIds::new()?,
        shared: match (&redis, &cfg.store) {
            (Some(r), keyguard_config::StoreConfig::Redis(rc)) => Some(Shared {
                store: r.clone(),
                scripts: Arc::new(Scripts::default()),
                rules: Arc::new(SharedRules {
                    anomaly: cfg.anomaly.clone(),
                    limits: cfg.limits.clone(),
                    velocity: cfg.velocity.clone(),
                }),
                read_when_unavailable: rc.read_when_unavailable,
                local_reads: governor::RateLimiter::direct(governor::Quota::per_second(
                    std::num::NonZeroU32::new(rc.local_read_rate.max(1)).expect("at least 1"),
                )),
            }),
            _ => None,
        },
    });
    let resumed = Arc::downgrade(&gateway);
    let on_reload = move |snap: &crate::keys::Snapshot| {
        if let Some(gw) = resumed.upgrade() {
            gw.notice_resumed_keys(snap);
        }
    };
    if let Some(r) = &redis {
        // Every replica, admin listener or not: any replica's pages show them all.
        crate::admin::activity::start_redis(
            r.clone(),
            crate::admin::activity::Retention::from_config(&cfg),
        )?;
        tokio::spawn(crate::store::redis::catalog::refresh_loop(
            r.clone(),
            keys.clone(),
            master.clone(),
            on_reload,
        ));
        tokio::spawn(redis_admin_audit_loop(
            r.clone(),
            s.data_dir.join("redis-admin-cursor"),
            Arc::downgrade(&gateway),
        ));
    } else {
        tokio::spawn(
            keys.clone()
                .refresh_loop(store.clone(), master.clone(), on_reload),
        );
    }
    if redis.is_none() {
        let (store, weak) = (store.clone(), Arc::downgrade(&gateway));
        std::thread::Builder::new()
            .name("keyguard-admin-events".into())
            .spawn(move || admin_audit_loop(store, weak))?;
    }
    tokio::spawn(sweep_loop(Arc::downgrade(&gateway)));
    tokio::spawn(assertion_key_loop(Arc::downgrade(&gateway)));
    let admin_tls = prepared
        .admin_tls
        .map(|c| Arc::new(crate::server::tls::Acceptor::new(c)));
    if let Some(addr) = s.admin_listen {
        crate::admin::start(
            addr,
            &cfg,
            &store,
            &master,
            &keys,
            redis.clone(),
            admin_tls.clone(),
            gateway.alerts.clone(),
        )
        .await?;
    }

    let workers = s
        .workers
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let listeners =
        bind_workers(s.listen, workers).with_context(|| format!("binding {}", s.listen))?;
    tracing::info!(
        listen = %listeners[0].local_addr()?,
        upstream = %upstream_uri,
        dialect = cfg.dialect.kind.as_str(),
        assertion = cfg.assertion.alg.as_str(),
        tls = cfg.tls.listen.is_some(),
        http2 = cfg.http2.enabled,
        workers,
        keys = keys.snapshot().len(),
        "keyguard serving"
    );
    let limits = ConnLimits {
        max_connections: s.max_connections,
        header_read_timeout: Duration::from_millis(s.header_read_timeout_ms),
        max_header_bytes: s.max_header_bytes,
        drain_timeout: crate::cli::DRAIN_TIMEOUT,
    };
    let front = Arc::new(Frontend {
        tls: prepared.listen_tls.map(crate::server::tls::Acceptor::new),
        http2: arc_swap::ArcSwap::from_pointee(cfg.http2.clone()),
        overload: Overload::new(&cfg.overload),
    });
    let reloader = Arc::new(Reloader {
        load: reload,
        running: parking_lot::Mutex::new(cfg.clone()),
        front: front.clone(),
        admin_tls,
        upstream: upstream.clone(),
        gateway: Arc::downgrade(&gateway),
        stats: Arc::new(ReloadStats::default()),
    });
    if cfg.reload.watch_files {
        tokio::spawn(crate::reload::watch_files(reloader.clone()));
    }
    tokio::spawn(crate::reload::on_sighup(reloader));
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let permits = Arc::new(tokio::sync::Semaphore::new(s.max_connections));
    let mut threads = Vec::with_capacity(listeners.len());
    for (i, listener) in listeners.into_iter().enumerate() {
        let (gateway, upstream, permits, front) = (
            gateway.clone(),
            upstream.clone(),
            permits.clone(),
            front.clone(),
        );
        let mut stopped = stopped.clone();
        threads.push(
            std::thread::Builder::new()
                .name(format!("keyguard-w{i}"))
                .spawn(move || -> anyhow::Result<()> {
                    // One single-threaded runtime per worker: a request is accepted,
                    // checked, forwarded and answered on this thread, with no hand-off
                    // to another core (shared state is shared through locks instead).
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()?;
                    rt.block_on(async move {
                        if let Some(sh) = &gateway.shared {
                            // Connect this worker's Redis connection before the first
                            // request needs it, so that one does not pay for the handshake.
                            let store = sh.store.clone();
                            tokio::spawn(async move {
                                if let Err(e) = store.conn().await {
                                    tracing::warn!(error = %e, "redis not reachable yet; requests fail closed until it is");
                                }
                            });
                        }
                        let listener = TcpListener::from_std(listener)?;
                        let shutdown = async move {
                            let _ = stopped.wait_for(|s| *s).await;
                        };
                        serve(
                            listener,
                            gateway,
                            Pool::new(upstream),
                            permits,
                            limits,
                            front,
                            shutdown,
                        )
                        .await
                    })
                })?,
        );
    }
    drop(gateway);
    shutdown_signal().await;
    tracing::info!("shutting down: draining connections");
    let _ = stop.send(true);
    tokio::task::spawn_blocking(move || {
        for t in threads {
            match t.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::error!(error = %format!("{e:#}"), "worker failed"),
                Err(_) => tracing::error!("worker panicked"),
            }
        }
    })
    .await?;
    tokio::task::spawn_blocking(move || audit_handle.join()).await?;
    tracing::info!("stopped");
    Ok(())
}

/// Claims `data_dir` for this process until the returned file is dropped (the kernel
/// releases the lock when the process dies, however it dies). Two gateways on one data
/// dir would each trust their own in-memory nonces and delete each other's nonce journal
/// files, so a replay could pass; the second one refuses to start instead.
fn lock_data_dir(data_dir: &std::path::Path) -> anyhow::Result<std::fs::File> {
    let path = data_dir.join("serve.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => anyhow::bail!(
            "another keyguard serve is using the data dir {} (it holds {})",
            data_dir.display(),
            path.display()
        ),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(e).with_context(|| format!("locking {}", path.display()))
        }
    }
}

/// Copies operator changes recorded by the CLI into the audit log, so the log has one
/// writer and a change made while no gateway ran is still logged by the next one. A plain
/// thread keeps one SQLite connection for its whole life instead of opening one per poll.
/// It holds the gateway weakly, so it ends with the gateway instead of keeping its stores
/// and upstream client alive after shutdown.
fn admin_audit_loop(store: Store, gateway: std::sync::Weak<Gateway>) {
    let mut conn = None;
    loop {
        std::thread::sleep(crate::keys::REFRESH_INTERVAL);
        let Some(gw) = gateway.upgrade() else { return };
        let (audit, alerts) = (&gw.audit, &gw.alerts);
        let c = match conn.take() {
            Some(c) => c,
            None => match store.connect() {
                Ok(c) => c,
                Err(e) => {
                    tracing::error!(error = %format!("{e:#}"), "admin events: cannot open the store");
                    continue;
                }
            },
        };
        let events = match store::unaudited_admin_events(&c) {
            Ok(e) => e,
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), "reading admin events failed");
                continue;
            }
        };
        if events.is_empty() {
            conn = Some(c);
            continue;
        }
        // Marked audited only up to the last line the log took: the rest is retried on
        // the next poll (a full disk must not lose an operator's change).
        let mut last = None;
        for e in events {
            let id = e.id;
            let ts = timestamp(std::time::UNIX_EPOCH + Duration::from_millis(e.ts));
            if let Some(a) = admin_alert(&ts, &e.action, &e.target, &e.actor, &e.reason) {
                alerts.send(a);
            }
            let written = audit.record_line(&AuditLine::Admin(AdminAudit {
                ts,
                kind: "admin",
                actor: e.actor,
                action: e.action,
                target: e.target,
                reason: e.reason,
            }));
            if !written {
                tracing::error!("admin event not written to the audit log yet; retrying");
                break;
            }
            last = Some(id);
        }
        let Some(last) = last else {
            conn = Some(c);
            continue;
        };
        if let Err(e) = store::mark_admin_events_audited(&c, last) {
            tracing::error!(error = %format!("{e:#}"), "marking admin events audited failed; they may be logged twice");
        }
        conn = Some(c);
    }
}

/// The alert an operator change raises, if any: freezes, suspensions, and every widening
/// (DESIGN §6: an owner hears of one they did not ask for while it still waits).
fn admin_alert(ts: &str, action: &str, target: &str, actor: &str, reason: &str) -> Option<Alert> {
    let event = match action {
        "freeze" => "withdrawals_frozen",
        "key_suspend" => "key_suspended",
        "widen_requested" => "key_widening_requested",
        "widen_now" => "key_widened_now",
        _ => return None,
    };
    Some(Alert {
        ts: ts.to_owned(),
        event: event.into(),
        code: action.to_owned(),
        key_id: (action != "freeze").then(|| target.to_owned()),
        account: None,
        client_ip: None,
        detail: format!("{target} by {actor}: {reason}"),
        ..Alert::default()
    })
}

/// Distributed mode: copies the operator changes recorded in Redis into this replica's
/// audit log, each once: the stream id of the last one copied is kept in `cursor` in the
/// data dir, so a restarted replica goes on where it stopped (and a new one logs the
/// stream from the start).
async fn redis_admin_audit_loop(
    store: Arc<RedisStore>,
    cursor: std::path::PathBuf,
    gateway: std::sync::Weak<Gateway>,
) {
    let mut last = std::fs::read_to_string(&cursor)
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "0".to_owned());
    let mut ticker = tokio::time::interval(crate::keys::REFRESH_INTERVAL);
    loop {
        ticker.tick().await;
        let Some(gw) = gateway.upgrade() else { return };
        let events = match store.admin_events(&last).await {
            Ok(e) => e,
            Err(e) => {
                tracing::debug!(error = %format!("{e:#}"), "reading admin events from redis failed");
                continue;
            }
        };
        let mut newest = None;
        for e in events {
            let id = e.id.clone();
            let ts = timestamp(std::time::UNIX_EPOCH + Duration::from_millis(e.ts));
            // Every replica reads the stream, so each sends its own alert (the webhook
            // may hear of one change from several replicas).
            if let Some(a) = admin_alert(&ts, &e.action, &e.target, &e.actor, &e.reason) {
                gw.alerts.send(a);
            }
            let written = gw.audit.record_line(&AuditLine::Admin(AdminAudit {
                ts,
                kind: "admin",
                actor: e.actor,
                action: e.action,
                target: e.target,
                reason: e.reason,
            }));
            // The cursor passes only lines the audit log took (a full disk must not lose
            // an operator change); the rest are read again on the next tick.
            if !written {
                tracing::error!("admin event not written to the audit log yet; retrying");
                break;
            }
            newest = Some(id);
        }
        let Some(newest) = newest else { continue };
        if let Err(e) = std::fs::write(&cursor, &newest) {
            tracing::error!(error = %e, "saving the admin event cursor failed; events may be logged twice");
        }
        last = newest;
    }
}

/// Alerts (and logs) when the audit log stops or starts taking lines again.
fn audit_alert(alerts: Alerts) -> impl Fn(bool) {
    move |available| {
        let (event, detail) = if available {
            (
                "audit_recovered",
                "the audit log takes lines again; trades and withdrawals resume",
            )
        } else {
            (
                "audit_unavailable",
                "the audit log cannot be written (disk full, failing or stalled); trades and withdrawals are refused",
            )
        };
        if available {
            tracing::warn!("{detail}");
        } else {
            tracing::error!("{detail}");
        }
        alerts.send(Alert {
            ts: timestamp(std::time::SystemTime::now()),
            event: event.into(),
            code: "audit_unavailable".into(),
            detail: detail.into(),
            ..Alert::default()
        });
    }
}

/// Evicts idle rate-limit, velocity and anomaly state so memory stays bounded however
/// many keys and addresses a flood brings.
async fn sweep_loop(gateway: std::sync::Weak<Gateway>) {
    let mut ticker = tokio::time::interval(Duration::from_secs(5));
    loop {
        ticker.tick().await;
        let Some(gw) = gateway.upgrade() else { return };
        let now = keyguard_policy::Clock::now_ms(&*gw.clock);
        let m = crate::metrics::metrics();
        m.limiter_entries.set(gw.limits.sweep() as i64);
        m.velocity_entries.set(gw.velocity.sweep(now) as i64);
        m.anomaly_entries.set(gw.anomaly.sweep(now) as i64);
        m.key_cache_keys.set(gw.keys.snapshot().len() as i64);
        if let Some(sh) = &gw.shared {
            sh.store.sweep(now);
        }
    }
}

/// Picks up a rotated assertion key (`keyguard assertion-key --rotate`) within half a
/// second: one `stat` of the key file per tick.
async fn assertion_key_loop(gateway: std::sync::Weak<Gateway>) {
    let mut ticker = tokio::time::interval(Duration::from_millis(500));
    loop {
        ticker.tick().await;
        let Some(gw) = gateway.upgrade() else { return };
        if let Err(e) = gw.signer.reload_if_changed() {
            tracing::error!(error = %format!("{e:#}"), "assertion key file changed but cannot be read; still signing with the old key");
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
