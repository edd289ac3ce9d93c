//! The admin listener: the traders' web UI, health endpoints. Never on the exchange-facing
//! port (DESIGN.md §5); axum here only, the request path stays hand-written hyper.
//!
//! # Layout
//! - [`activity`]: the per-key activity table, fed from the audit path off the request path.
//! - [`auth`]: who is logged in (sessions, login steps, SSO, bearer tokens), one method
//!   per question whichever store holds the answer.
//! - [`keys`]: the key operations the pages and the API call, on the embedded store or on
//!   the Redis catalogue, whichever this gateway runs.
//! - [`api`]: the JSON admin API under `/api/` (bearer tokens, OpenAPI document).
//! - [`tokens`]: the API's bearer tokens, stored hashed.
//! - [`sso`]: sessions from the exchange's own login (a signed JWT, single use).
//! - [`sessions`]: JWT session cookies backed by session rows, CSRF tokens, login tokens.
//! - [`ui`]: the server-rendered pages (askama templates in `gateway/templates/`), one
//!   handler per form, each calling one function of the store.
//! - this file: shared state, the router, and the layers every response passes: security
//!   headers on everything, and the same-origin check on every POST.
//!
//! Who is logged in (accounts, sessions, SSO, API tokens) lives where the gateway's
//! store does: SQLite, or with `[store] kind = "redis"` Redis, shared by every replica
//! ([`auth`] picks). Writes go to the same store as the CLI's; after each one the handler waits for
//! the gateway's key snapshot to hold it ([`crate::keys::KeyCache::caught_up`]), so a
//! change made here applies to the next exchange request.

pub mod activity;
pub mod api;
pub mod auth;
pub mod keys;
pub mod sessions;
pub mod sso;
pub mod tokens;
pub mod ui;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::header::{self, HeaderName};
use axum::http::{HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use keyguard_config::Config;
use tokio::net::TcpListener;

use crate::accounts::{Accounts, Lockout};
use crate::keys::KeyCache;
use crate::secrets::MasterKey;
use crate::store::redis::RedisStore;
use crate::store::Store;

/// What every admin handler shares.
pub struct AdminState {
    /// The store (same file as the gateway's).
    pub store: Store,
    /// Seals secrets of keys created here.
    pub master: Arc<MasterKey>,
    /// The gateway's key snapshot (to wait for writes to load).
    pub keys: Arc<KeyCache>,
    /// Login checks.
    pub accounts: Accounts,
    /// Session tokens.
    pub sessions: sessions::Sessions,
    /// Single sign-on, when `[admin.sso]` is configured.
    pub sso: Option<sso::Sso>,
    /// The config (dialect, cool-downs, admin tunables).
    pub cfg: Config,
    /// The shared store when `[store] kind = "redis"`: then accounts, sessions, tokens,
    /// key edits, pending changes and activity live there, so every replica's admin
    /// listener sees the same state.
    pub redis: Option<Arc<RedisStore>>,
}

impl AdminState {
    /// State for `cfg`, sharing the gateway's key cache and master key. On Redis the
    /// sessions' signing key is the one every replica shares (made by the first).
    pub async fn new(
        cfg: Config,
        store: Store,
        master: Arc<MasterKey>,
        keys: Arc<KeyCache>,
        redis: Option<Arc<RedisStore>>,
        alerts: Option<crate::alerts::Alerts>,
    ) -> anyhow::Result<AdminState> {
        let a = &cfg.admin;
        let times = sessions::SessionTimes {
            ttl_ms: a.session_ttl_ms,
            max_ms: a.session_max_ms,
        };
        // Cookies are `Secure` when this listener serves TLS; over plain HTTP a browser
        // would drop them.
        let secure = cfg.tls.admin.is_some();
        let sessions = match &redis {
            // A key file per data dir would differ per replica: a cookie from one would
            // be refused by the next.
            Some(r) => sessions::Sessions::from_key(
                &r.session_signing_key(&master)
                    .await
                    .map_err(|e| e.context("the admin sessions' signing key in redis"))?,
                times,
                secure,
            ),
            None => sessions::Sessions::load_or_create(&cfg.server.data_dir, times, secure)?,
        };
        Ok(AdminState {
            accounts: {
                let accounts = Accounts::new(
                    master.clone(),
                    Lockout {
                        after: a.lockout_after,
                        base_ms: a.lockout_base_ms,
                    },
                )?;
                match alerts {
                    Some(alerts) => accounts.with_alerts(alerts),
                    None => accounts,
                }
            },
            sessions,
            sso: cfg.admin.sso.as_ref().map(sso::Sso::load).transpose()?,
            store,
            master,
            keys,
            cfg,
            redis,
        })
    }
}

/// Every route of the admin listener.
pub fn router(state: Arc<AdminState>) -> Router {
    Router::new()
        .merge(ui::routes())
        .merge(api::routes())
        .fallback(not_found)
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        // Outermost first: headers go on every response, errors and redirects included;
        // the origin check runs before any handler sees a POST.
        .layer(axum::middleware::from_fn(same_origin_posts))
        .layer(axum::middleware::from_fn(security_headers))
        .with_state(state)
}

/// Binds `addr` and serves the admin listener in the background until the process ends.
// Each argument is one of the gateway's shared parts, passed through as it is.
#[allow(clippy::too_many_arguments)]
pub async fn start(
    addr: SocketAddr,
    cfg: &Config,
    store: &Store,
    master: &Arc<MasterKey>,
    keys: &Arc<KeyCache>,
    redis: Option<Arc<RedisStore>>,
    tls: Option<Arc<crate::server::tls::Acceptor>>,
    alerts: crate::alerts::Alerts,
) -> anyhow::Result<()> {
    use anyhow::Context;
    anyhow::ensure!(
        addr != cfg.server.listen,
        "server.admin_listen must differ from server.listen: the admin UI never shares the exchange-facing port"
    );
    let state = Arc::new(
        AdminState::new(
            cfg.clone(),
            store.clone(),
            master.clone(),
            keys.clone(),
            redis,
            Some(alerts),
        )
        .await?,
    );
    // On Redis every replica's writer already runs (started by `app::run`).
    if state.redis.is_none() {
        activity::start(store.connect()?, activity::Retention::from_config(cfg))?;
    }
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the admin listener {addr}"))?;
    tracing::info!(admin_listen = %listener.local_addr()?, tls = tls.is_some(), "admin listener serving");
    tokio::spawn(async move {
        let served = match tls {
            Some(tls) => serve_tls(listener, state, tls).await,
            None => serve(listener, state).await,
        };
        if let Err(e) = served {
            tracing::error!(error = %format!("{e:#}"), "admin listener stopped");
        }
    });
    Ok(())
}

/// Serves the admin listener over TLS until the process ends. Each handshake runs in its
/// own task, bounded in time, so a client that never finishes one delays nobody.
pub async fn serve_tls(
    listener: TcpListener,
    state: Arc<AdminState>,
    tls: Arc<crate::server::tls::Acceptor>,
) -> anyhow::Result<()> {
    let app = router(state);
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "admin accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let acceptor = tls.current();
        // Handlers read the peer as `ConnectInfo`, which axum's own server would set.
        let svc = app
            .clone()
            .layer(axum::Extension(axum::extract::ConnectInfo(peer)));
        tokio::spawn(async move {
            let stream = match tokio::time::timeout(
                Duration::from_secs(10),
                acceptor.accept(stream),
            )
            .await
            {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, %peer, "admin TLS handshake failed");
                    return;
                }
                Err(_) => return,
            };
            let svc = hyper_util::service::TowerToHyperService::new(svc);
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                .await
            {
                tracing::debug!(error = %e, %peer, "admin connection ended with error");
            }
        });
    }
}

/// Serves the admin listener until the process ends.
pub async fn serve(listener: TcpListener, state: Arc<AdminState>) -> anyhow::Result<()> {
    let app = router(state).into_make_service_with_connect_info::<SocketAddr>();
    axum::serve(listener, app).await?;
    Ok(())
}

async fn not_found(uri: axum::http::Uri) -> Response {
    if uri.path().starts_with("/api/") {
        api::not_found()
    } else {
        ui::error_page(StatusCode::NOT_FOUND, "There is no such page.")
    }
}

/// Prometheus text exposition (see [`crate::metrics`]). Like `/healthz`, open to whoever
/// reaches the admin listener: it carries counts and sizes, never keys, accounts or IPs.
async fn metrics() -> Response {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        crate::metrics::encode(),
    )
        .into_response()
}

async fn healthz() -> &'static str {
    "ok\n"
}

/// Ready when the store answers and the upstream accepts a connection.
async fn readyz(State(st): State<Arc<AdminState>>) -> Response {
    let store = st.store.clone();
    let store_ok = tokio::task::spawn_blocking(move || {
        store
            .connect()
            .and_then(|c| Ok(c.query_row("SELECT 1", [], |r| r.get::<_, i64>(0))?))
            .is_ok()
    })
    .await
    .unwrap_or(false);
    // On Redis the shared state is what requests need: not ready while it does not
    // answer (within the store's own timeout), whatever the local files say.
    let store_ok = store_ok
        && match &st.redis {
            Some(r) => r.query::<String>(&redis::cmd("PING")).await.is_ok(),
            None => true,
        };
    let upstream_ok = match st.cfg.server.upstream.as_ref() {
        Some(u) => {
            let auth = u.authority();
            let port = auth
                .port_u16()
                .unwrap_or(if u.scheme().as_str() == "https" {
                    443
                } else {
                    80
                });
            let addr = format!("{}:{port}", auth.host());
            matches!(
                tokio::time::timeout(Duration::from_secs(1), tokio::net::TcpStream::connect(addr))
                    .await,
                Ok(Ok(_))
            )
        }
        None => false,
    };
    let fresh = st.keys.is_fresh();
    let body = serde_json::json!({
        "ready": store_ok && upstream_ok && fresh,
        "config": true,
        "store": store_ok,
        "keys_fresh": fresh,
        "upstream": upstream_ok,
    });
    let status = if store_ok && upstream_ok && fresh {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(body)).into_response()
}

/// Strict headers on every response: nothing but our own stylesheet loads, nothing
/// frames us, nothing is cached or leaks a referrer.
async fn security_headers(req: Request, next: Next) -> Response {
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    let set = |h: &mut axum::http::HeaderMap, name: HeaderName, value: &'static str| {
        h.insert(name, HeaderValue::from_static(value));
    };
    set(
        h,
        header::CONTENT_SECURITY_POLICY,
        "default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    );
    set(h, header::X_FRAME_OPTIONS, "DENY");
    set(h, header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    // Not `no-referrer`: under it browsers send `Origin: null` on our own forms, which
    // the origin check must then refuse.
    set(h, header::REFERRER_POLICY, "same-origin");
    set(h, header::CACHE_CONTROL, "no-store");
    set(
        h,
        HeaderName::from_static("cross-origin-opener-policy"),
        "same-origin",
    );
    set(
        h,
        HeaderName::from_static("cross-origin-resource-policy"),
        "same-origin",
    );
    set(
        h,
        HeaderName::from_static("permissions-policy"),
        "camera=(), microphone=(), geolocation=()",
    );
    resp
}

/// Refuses a POST that a browser says came from another site: `Sec-Fetch-Site` must be
/// `same-origin` when sent, and `Origin` must name this host when sent. Browsers send
/// both; the per-form CSRF token covers clients that send neither.
async fn same_origin_posts(req: Request, next: Next) -> Response {
    if req.method() == Method::POST && !same_origin(req.headers()) {
        return ui::error_page(StatusCode::FORBIDDEN, "This form was sent from another site, so it was refused. Open Keyguard's page and try again.");
    }
    next.run(req).await
}

fn same_origin(h: &axum::http::HeaderMap) -> bool {
    if let Some(site) = h.get("sec-fetch-site") {
        if site.as_bytes() != b"same-origin" {
            return false;
        }
    }
    if let Some(origin) = h.get(header::ORIGIN) {
        let Some(host) = h.get(header::HOST).and_then(|v| v.to_str().ok()) else {
            return false;
        };
        let origin = origin.to_str().unwrap_or("");
        // Plain HTTP on this listener (no TLS yet).
        if origin != format!("http://{host}") {
            return false;
        }
    }
    true
}
