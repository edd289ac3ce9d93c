//! The request pipeline (DESIGN.md §2), one readable function: [`Gateway::process`].
//! Each stage either passes the request on or returns a [`Deny`]; [`Gateway::handle`]
//! turns the outcome into a response and one audit event.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{request, Request, Response, Uri};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use ipnet::IpNet;
use keyguard_policy::anomaly::{Anomaly, AnomalyRequest, Verdict};
use keyguard_policy::authorize::{authorize, key_usable, AccessRequest, AuthorizeConfig};
use keyguard_policy::client_ip::client_ip;
use keyguard_policy::dialect::{self, DialectConfig};
use keyguard_policy::key::canonical_ip;
use keyguard_policy::limits::RateLimits;
use keyguard_policy::velocity::{
    EntryState, MemoryVelocity, Reservation, ReservationId, VelocityStore,
};
use keyguard_policy::{Action, Clock, Deny, KeyRecord, RouteTable};
use tower_http::timeout::TimeoutBody;

use crate::activity::Activity;
use crate::alerts::{Alert, Alerts};
use crate::assertion::{AssertionSigner, Claims};
use crate::audit::{timestamp, AuditEvent, AuditSink};
use crate::keys::KeyCache;
use crate::replay::ReplayGuard;
use crate::respond::{deny_response, Refusal};
use crate::store::writer::{StoreWriter, WriteOp};
use crate::upstream::pool::{Pool, SendError};
use crate::upstream::{copy_end_to_end, strip_hop_by_hop, Upstream};

/// Response body type of the gateway: upstream bodies are streamed, errors are complete.
pub type Body = BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

/// The header that carries the identity assertion to the upstream.
pub const ASSERTION_HEADER: &str = "x-keyguard-assertion";

/// Limits of the request-reading stage.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimits {
    /// Largest body accepted (bytes).
    pub max_bytes: usize,
    /// Time allowed for the whole body to arrive.
    pub read_timeout: Duration,
}

/// The stateless part of the pipeline's configuration: swapped whole by a reload
/// (`crate::reload`), while each request keeps the one it started with.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Dialect options. Its kind never changes on a reload (restart-only).
    pub dialect: DialectConfig,
    /// Endpoint classification.
    pub routes: RouteTable,
    /// Authorization tunables.
    pub authz: AuthorizeConfig,
    /// Proxies whose forwarding headers are believed.
    pub trusted_proxies: Vec<IpNet>,
    /// Request-body limits.
    pub body_limits: BodyLimits,
}

/// Everything the pipeline needs, shared by all connections.
pub struct Gateway {
    /// Dialect, routes, authorization tunables, trusted proxies, body limits.
    pub policy: arc_swap::ArcSwap<Policy>,
    /// Key snapshot.
    pub keys: Arc<KeyCache>,
    /// Nonces and seen signatures.
    pub replay: ReplayGuard,
    /// Signs identity assertions.
    pub signer: AssertionSigner,
    /// Audit log.
    pub audit: AuditSink,
    /// The exchange (each worker has its own connections to it).
    pub upstream: Arc<Upstream>,
    /// Rate limits (GCRA per IP, key, account and action).
    pub limits: RateLimits,
    /// Velocity windows (withdrawal and order amounts and counts).
    pub velocity: MemoryVelocity,
    /// Anomaly rules (dormant keys, new IPs, many IPs, shared IPs, auth failures).
    pub anomaly: Anomaly,
    /// When keys were last used.
    pub activity: Activity,
    /// Keys this process suspended (anomaly rules), with when: resumed ones get their
    /// anomaly state reset (see [`Gateway::notice_resumed_keys`]).
    pub suspended_by_rules: parking_lot::Mutex<std::collections::HashMap<String, u64>>,
    /// Durable state changes off the request path.
    pub writer: StoreWriter,
    /// The operator's webhook.
    pub alerts: Alerts,
    /// Wall clock (injectable for tests).
    pub clock: Arc<dyn Clock>,
    /// Request id generator.
    pub ids: RequestIds,
    /// Distributed mode: the state every replica shares in Redis. `None`: embedded.
    pub shared: Option<Shared>,
}

/// The distributed store as the pipeline uses it.
pub struct Shared {
    /// Redis.
    pub store: Arc<crate::store::redis::RedisStore>,
    /// The scripts.
    pub scripts: Arc<crate::store::redis::admit::Scripts>,
    /// The rules the scripts apply.
    pub rules: Arc<crate::store::redis::admit::SharedRules>,
    /// What reads do while Redis is unavailable.
    pub read_when_unavailable: keyguard_config::ReadWhenUnavailable,
    /// The per-replica budget of reads let through while Redis is unavailable.
    pub local_reads: governor::DefaultDirectRateLimiter,
}

/// What the pipeline learned about a request, for the audit event.
struct RequestCtx {
    request_id: RequestId,
    client_ip: IpAddr,
    /// `client_ip` as text, formatted once for the audit line, the assertion and the
    /// forwarded header.
    client_ip_text: IpText,
    key: Option<Arc<KeyRecord>>,
    action: Option<Action>,
    /// Set once every check passed and the request went to the upstream.
    forwarded: bool,
    /// A rule in shadow mode would have refused the request with this reason.
    would_deny: Option<Deny>,
    /// The upstream connection failed before the request was sent.
    not_sent: bool,
    /// The request declares a body that has not been read (yet).
    body_unread: bool,
    /// The key's signature checked out: from here on a refusal always gets its own audit
    /// line (refusals before it may be folded into a summary in a flood).
    authenticated: bool,
}

impl RequestCtx {
    fn set_client_ip(&mut self, ip: IpAddr) {
        if ip != self.client_ip {
            self.client_ip = ip;
            self.client_ip_text = IpText::new(ip);
        }
    }
}

impl Gateway {
    /// Serves one request: decide, forward or refuse, audit.
    pub async fn handle(
        self: Arc<Self>,
        pool: Arc<Pool>,
        peer: SocketAddr,
        req: Request<Incoming>,
    ) -> Result<Response<Body>, Infallible> {
        let started = Instant::now();
        let arrived = SystemTime::now();
        // One policy for the whole request, even if a reload swaps it meanwhile.
        let policy = self.policy.load_full();
        let p = &*policy;
        // Both are cheap to clone (an enum, a shared buffer), and `process` takes the
        // request; the audit line needs them afterwards.
        let method = req.method().clone();
        let uri = req.uri().clone();
        let peer_ip = canonical_ip(peer.ip());
        let mut ctx = RequestCtx {
            request_id: self.ids.next(),
            client_ip: peer_ip,
            client_ip_text: IpText::new(peer_ip),
            key: None,
            action: None,
            forwarded: false,
            would_deny: None,
            not_sent: false,
            body_unread: req.headers().contains_key(header::TRANSFER_ENCODING)
                || req
                    .headers()
                    .get(header::CONTENT_LENGTH)
                    .is_some_and(|v| v.as_bytes() != b"0"),
            authenticated: false,
        };
        let outcome = self.process(p, &mut ctx, &pool, peer, req).await;
        let (resp, deny) = match outcome {
            Ok(resp) => (resp, ctx.would_deny),
            Err(refusal) => {
                let mut resp = deny_response(&refusal, ctx.request_id.as_str(), p.dialect.kind);
                if ctx.body_unread {
                    // Refused before its body was read (pre-auth limits, oversized or slow
                    // bodies): close rather than let hyper drain a body nobody wants, which
                    // a flooder could make arbitrarily long, and which would look like the
                    // start of a new request to the accept stage's stall detection.
                    resp.headers_mut()
                        .insert(header::CONNECTION, HeaderValue::from_static("close"));
                }
                (resp, Some(refusal.deny))
            }
        };
        let decision = match (ctx.forwarded, ctx.would_deny) {
            (true, Some(_)) => "would_deny",
            (true, None) => "allow",
            (false, _) => "deny",
        };
        let latency = started.elapsed();
        crate::metrics::metrics().request(ctx.action, decision, deny, latency);
        let pre_auth = (!ctx.forwarded && !ctx.authenticated).then_some(ctx.client_ip);
        let event = AuditEvent {
            ts: arrived,
            request_id: ctx.request_id.as_str(),
            key_id: ctx.key.as_deref().map(|k| k.key_id.as_str()),
            account: ctx.key.as_deref().map(|k| k.account.as_str()),
            client_ip: ctx.client_ip_text.as_str(),
            dialect: p.dialect.kind.as_str(),
            action: ctx.action.map(Action::as_str),
            decision,
            code: deny.map(Deny::code),
            status: resp.status().as_u16(),
            latency_us: latency.as_micros() as u64,
            method: method.as_str(),
            path: truncate(uri.path(), 256),
        };
        self.audit.record(event, pre_auth).await;
        Ok(resp)
    }

    /// Audits a request that hyper refused before [`Gateway::handle`] could run (the
    /// accept stage, see `server::refused_request`): one `deny` line, in the same shape as
    /// a request's, with what is known. `arrived` is when the request's first byte came
    /// in; `status` is what hyper answered, 0 when it closed the connection without an
    /// answer. The client IP is the socket peer even behind a trusted proxy (the headers
    /// that would name the client were never parsed); method and path are empty.
    pub fn audit_rejected_connection(
        &self,
        peer: SocketAddr,
        arrived: Instant,
        deny: Deny,
        status: u16,
    ) {
        let waited = arrived.elapsed();
        let arrived_at = SystemTime::now()
            .checked_sub(waited)
            .unwrap_or_else(SystemTime::now);
        crate::metrics::metrics().request(None, "deny", Some(deny), waited);
        let ip = canonical_ip(peer.ip());
        let (request_id, ip_text) = (self.ids.next(), IpText::new(ip));
        let event = AuditEvent {
            ts: arrived_at,
            request_id: request_id.as_str(),
            key_id: None,
            account: None,
            client_ip: ip_text.as_str(),
            dialect: self.policy.load().dialect.kind.as_str(),
            action: None,
            decision: "deny",
            code: Some(deny.code()),
            status,
            latency_us: waited.as_micros() as u64,
            method: "",
            path: "",
        };
        self.audit.record_detached(event, Some(ip));
    }

    /// Refuses a request before the pipeline runs (the accept stage: load shedding, a
    /// protocol switch, an HTTP/2 request with no HTTP/1 twin), with the usual error body
    /// and one `deny` audit line. The body is not read; the connection is closed after
    /// the answer when one was declared, as for any refusal before the body.
    pub fn refuse_early<B>(
        &self,
        peer: SocketAddr,
        req: Request<B>,
        refusal: Refusal,
    ) -> Response<Body> {
        let started = Instant::now();
        let request_id = self.ids.next();
        let mut resp = deny_response(
            &refusal,
            request_id.as_str(),
            self.policy.load().dialect.kind,
        );
        let body_declared = req.headers().contains_key(header::TRANSFER_ENCODING)
            || req
                .headers()
                .get(header::CONTENT_LENGTH)
                .is_some_and(|v| v.as_bytes() != b"0");
        if body_declared && req.version() < http::Version::HTTP_2 {
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        let ip = canonical_ip(peer.ip());
        let ip_text = IpText::new(ip);
        let event = AuditEvent {
            ts: SystemTime::now(),
            request_id: request_id.as_str(),
            key_id: None,
            account: None,
            client_ip: ip_text.as_str(),
            dialect: self.policy.load().dialect.kind.as_str(),
            action: None,
            decision: "deny",
            code: Some(refusal.deny.code()),
            status: resp.status().as_u16(),
            latency_us: started.elapsed().as_micros() as u64,
            method: req.method().as_str(),
            path: truncate(req.uri().path(), 256),
        };
        self.audit.record_detached(event, Some(ip));
        resp
    }

    /// The pipeline, outermost stage first.
    async fn process(
        &self,
        p: &Policy,
        ctx: &mut RequestCtx,
        pool: &Arc<Pool>,
        peer: SocketAddr,
        req: Request<Incoming>,
    ) -> Result<Response<Body>, Refusal> {
        // Who is asking: the socket peer, or the client behind a proxy we trust.
        ctx.set_client_ip(client_ip(peer.ip(), req.headers(), &p.trusted_proxies)?);

        // Pre-auth: banned or blocked networks and the per-IP rate limit are checked before
        // reading the body or computing any HMAC, so floods cannot burn CPU.
        let now = self.clock.now_ms();
        let standing = match &self.shared {
            // Bans and blocks every replica announced; the script checks them again.
            Some(sh) => self.anomaly.standing_verdict(
                sh.store
                    .cached_standing(keyguard_policy::limits::ClientNet::of(ctx.client_ip), now),
            ),
            None => self.anomaly.check_client(ctx.client_ip, now),
        };
        self.apply(ctx, standing, false)?;
        self.limits.check_ip(ctx.client_ip)?;

        // Read the whole body (bounded in size and time): the signature covers it and the
        // exact bytes verified are the bytes forwarded.
        let (parts, body) = req.into_parts();
        let body = self.read_body(p, &parts, body).await?;
        ctx.body_unread = false;

        // Strict parsing: anything ambiguous is refused before it can be misread.
        let parsed = dialect::parse(&p.dialect, &parts, &body)?;

        // Classification: unknown endpoints are denied, never forwarded.
        let classified = p.routes.classify(&parsed)?;
        ctx.action = Some(classified.action);
        if classified.action == Action::Public {
            ctx.forwarded = true;
            return self.forward(p, ctx, pool, &parts, body, None).await;
        }

        // Authentication: the key exists and signed these exact bytes, freshly. Failures
        // count towards the network's ban.
        let creds = parsed
            .credentials
            .as_ref()
            .ok_or(Deny::MissingCredentials)?;
        // One snapshot for the whole decision, so key and freezes are consistent.
        let snapshot = self.keys.snapshot();
        let Some(key) = snapshot.get(&creds.api_key).cloned() else {
            return Err(self.auth_failed(ctx, Deny::UnknownKey, now));
        };
        ctx.key = Some(key.clone());
        if let Err(deny) = dialect::verify(&p.dialect, creds, &key.credential) {
            return Err(self.auth_failed(ctx, deny, now));
        }
        ctx.authenticated = true;
        // A canary's secret leaked: refuse (as `ip_not_allowed`), alert, block the network.
        if key.canary {
            return Err(self.canary_used(ctx, &key, &parts, now));
        }
        dialect::check_freshness(&p.dialect, &creds.replay, now)?;
        key_usable(&key, now)?;

        if let Some(sh) = &self.shared {
            let route = &p.routes.routes()[classified.route];
            let (last_used, reservation) = {
                let reservation = Reservation::for_request(route, &classified, &key);
                let last_used = snapshot.by_key_id(&key.key_id).and_then(|t| t.last_used);
                (last_used, reservation)
            };
            let local = self.authorize_locally(p, ctx, &key, &classified, &snapshot, now);
            drop(snapshot);
            let settle = self
                .admit_shared(
                    sh,
                    ctx,
                    &key,
                    &classified,
                    &creds.replay,
                    reservation,
                    last_used,
                    local,
                )
                .await?;
            let assertion = self.assertion(ctx, &key, classified.action, &parts, &body, now);
            ctx.forwarded = true;
            let result = self
                .forward(p, ctx, pool, &parts, body, Some(assertion))
                .await;
            if let Some(s) = settle {
                let definitive_failure = match &result {
                    Ok(resp) => resp.status().is_client_error(),
                    Err(_) => ctx.not_sent,
                };
                if definitive_failure {
                    // Off the response path: the client has its answer either way.
                    let store = sh.store.clone();
                    let scripts = sh.scripts.clone();
                    tokio::spawn(async move {
                        if let Err(e) = store.release(&scripts, &s).await {
                            tracing::error!(error = %e, "velocity entry could not be released; it stays spent");
                        }
                    });
                }
            }
            return result;
        }

        // Anomaly rules: shared IPs, many IPs, dormancy, new-IP probation.
        let last_used = self.activity.last_used(
            &key.key_id,
            snapshot.by_key_id(&key.key_id).and_then(|t| t.last_used),
        );
        let anomaly = self.anomaly.check_request(&AnomalyRequest {
            key: &key,
            action: classified.action,
            client_ip: ctx.client_ip,
            last_used,
            now,
        });
        if let Some(learned) = anomaly.learned.clone() {
            self.writer.submit_detached(WriteOp::LearnedIp(learned));
        }
        if let Some(reason) = anomaly.suspend {
            self.suspend(ctx, &key, reason.as_str());
        }
        self.apply(ctx, anomaly.verdict, true)?;

        // Authorization: status, expiry, scope, IP allowlist, withdrawal rules, freezes.
        self.authorize_locally(p, ctx, &key, &classified, &snapshot, now)?;
        drop(snapshot);

        // Per-key, per-account and per-action rate limits.
        self.limits.check_key(&key, classified.action)?;

        // Replay: consume the nonce / signature durably, after the checks above so that
        // refused requests do not burn the owner's nonce sequence.
        self.replay.accept(&key.key_id, &creds.replay, now).await?;

        // Velocity: reserve the amount / count in every window, durably, before forwarding.
        let route = &p.routes.routes()[classified.route];
        let reservation = match Reservation::for_request(route, &classified, &key) {
            Some(r) => self.reserve(&r, now).await?,
            None => None,
        };

        // Forward with an assertion of what was allowed.
        let assertion = self.assertion(ctx, &key, classified.action, &parts, &body, now);
        ctx.forwarded = true;
        let result = self
            .forward(p, ctx, pool, &parts, body, Some(assertion))
            .await;
        if let Some(id) = reservation {
            self.settle(ctx, id, &result);
        }
        if anomaly.touch {
            if let Some(at) = self.activity.touch(&key.key_id, now) {
                self.writer.submit_detached(WriteOp::Touch {
                    key_id: key.key_id.clone(),
                    at,
                });
            }
        }
        result
    }

    /// The checks that need no shared state, the same in both stores: a snapshot known
    /// to be current and an audit log that takes lines when funds move (fail closed
    /// otherwise), then status, expiry, scope, IP allowlist, withdrawal rules and freezes.
    fn authorize_locally(
        &self,
        p: &Policy,
        ctx: &RequestCtx,
        key: &KeyRecord,
        classified: &keyguard_policy::route::Classified,
        snapshot: &crate::keys::Snapshot,
        now: u64,
    ) -> Result<(), Deny> {
        if matches!(classified.action, Action::Trade | Action::Withdraw) {
            if !self.keys.is_fresh() {
                return Err(Deny::StateUnavailable);
            }
            // Funds must not move without a record: a full, failing or stalled audit disk
            // stops trades and withdrawals (reads go on, their lines queue).
            if !self.audit.available() {
                return Err(Deny::AuditUnavailable);
            }
        }
        authorize(
            &p.authz,
            key,
            &AccessRequest {
                action: classified.action,
                facts: &classified.facts,
                client_ip: ctx.client_ip,
                now,
            },
            &snapshot.freezes,
        )
    }

    /// Distributed mode: the anomaly rules, rates, replay and velocity of one request in
    /// one Redis call (`local`: the outcome of the checks that need no shared state, which
    /// runs first; a request they refuse still records its sightings, as in the embedded
    /// pipeline). Redis unavailable: trades and withdrawals are refused at once, reads
    /// follow `read_when_unavailable`.
    #[allow(clippy::too_many_arguments)]
    async fn admit_shared(
        &self,
        sh: &Shared,
        ctx: &mut RequestCtx,
        key: &Arc<KeyRecord>,
        classified: &keyguard_policy::route::Classified,
        replay: &dialect::Replay,
        reservation: Option<Reservation<'_>>,
        last_used: Option<u64>,
        local: Result<(), Deny>,
    ) -> Result<Option<crate::store::redis::admit::Settle>, Refusal> {
        use crate::store::redis::admit::AdmitRequest;
        let moves_funds = matches!(classified.action, Action::Trade | Action::Withdraw);
        let net = keyguard_policy::limits::ClientNet::of(ctx.client_ip);
        let req = AdmitRequest {
            key,
            net,
            client_ip: ctx.client_ip,
            action: classified.action,
            authorized: local.is_ok(),
            replay: Some(replay),
            reservation,
            stored_last_used: last_used,
        };
        let admitted = match sh.store.admit(&sh.scripts, &sh.rules, &req).await {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "shared state unavailable");
                local?;
                if moves_funds {
                    return Err(Deny::StateUnavailable.into());
                }
                return match sh.read_when_unavailable {
                    keyguard_config::ReadWhenUnavailable::Deny => {
                        Err(Deny::StateUnavailable.into())
                    }
                    keyguard_config::ReadWhenUnavailable::Local => {
                        if sh.local_reads.check().is_err() {
                            return Err(Deny::StateUnavailable.into());
                        }
                        // Allowed on this replica's word alone: audited as such.
                        ctx.would_deny.get_or_insert(Deny::StateUnavailable);
                        Ok(None)
                    }
                };
            }
        };
        if let Some(w) = admitted.would_deny {
            ctx.would_deny.get_or_insert(w);
        }
        if admitted.suspend {
            self.suspend_shared(sh, ctx, key);
        }
        if let Some(deny) = admitted.deny {
            // A ban is alerted once, when it starts (as in the embedded pipeline, whose
            // refusals of an already banned network raise no alert of their own).
            if matches!(
                deny,
                Deny::IpBlocked | Deny::TooManyIps | Deny::KeyDormant | Deny::NewIpProbation
            ) {
                self.alert(ctx, "anomaly_deny", deny.code(), String::new());
            }
            if deny == Deny::IpBlocked {
                sh.store
                    .remember_standing(net, "blocked", self.clock.now_ms() + 1000);
            }
            return Err(match admitted.rate_limited {
                Some(r) => r.into(),
                None => deny.into(),
            });
        }
        local?;
        Ok(admitted.settle)
    }

    /// Suspends `key` in the shared catalogue, once per process, off the request path.
    fn suspend_shared(&self, sh: &Shared, ctx: &RequestCtx, key: &KeyRecord) {
        let now = self.clock.now_ms();
        match self.suspended_by_rules.lock().entry(key.key_id.clone()) {
            std::collections::hash_map::Entry::Occupied(_) => return,
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(now);
            }
        }
        let store = sh.store.clone();
        let key_id = key.key_id.clone();
        tokio::spawn(async move {
            if let Err(e) = store
                .set_status(
                    &key_id,
                    keyguard_policy::KeyStatus::Suspended,
                    "keyguard",
                    "too_many_ips",
                )
                .await
            {
                tracing::error!(error = %format!("{e:#}"), key_id, "could not suspend the key in redis");
            }
        });
        self.alert(
            ctx,
            "key_suspended",
            "too_many_ips",
            "suspended by an anomaly rule".into(),
        );
    }

    /// Applies an anomaly verdict: enforced denies refuse (and alert, when `alert`),
    /// shadow-mode denies are remembered for the audit log and let the request pass.
    fn apply(&self, ctx: &mut RequestCtx, verdict: Verdict, alert: bool) -> Result<(), Deny> {
        match verdict {
            Verdict::Allow => Ok(()),
            Verdict::WouldDeny(deny) => {
                ctx.would_deny.get_or_insert(deny);
                Ok(())
            }
            Verdict::Deny(deny) => {
                if alert {
                    self.alert(ctx, "anomaly_deny", deny.code(), String::new());
                }
                Err(deny)
            }
        }
    }

    /// Counts a failed authentication against the client's network; the request is
    /// refused with `deny` either way, and a ban it triggers is alerted.
    fn auth_failed(&self, ctx: &mut RequestCtx, deny: Deny, now: u64) -> Refusal {
        if let Some(sh) = &self.shared {
            // Counted in Redis off the response path; a ban reaches every replica's
            // pre-auth cache through pub/sub (and this one's at once).
            let (store, scripts) = (sh.store.clone(), sh.scripts.clone());
            let rules = sh.rules.clone();
            let net = keyguard_policy::limits::ClientNet::of(ctx.client_ip);
            // The alert is prepared now; it is sent only if this failure is the one that
            // bans the network (once per ban, whichever replica counts it).
            let alert = self.alert_for(
                ctx,
                "ip_banned",
                Deny::IpBanned.code(),
                format!("after {}", deny.code()),
            );
            let alerts = self.alerts.clone();
            tokio::spawn(async move {
                match store.auth_failed(&scripts, &rules.anomaly, net).await {
                    Ok(Some(_)) => alerts.send(alert),
                    Ok(None) => {}
                    Err(e) => tracing::warn!(error = %e, "auth failure not counted in redis"),
                }
            });
            return deny.into();
        }
        match self.anomaly.auth_failed(ctx.client_ip, now) {
            Verdict::Deny(ban) => self.alert(
                ctx,
                "ip_banned",
                ban.code(),
                format!("after {}", deny.code()),
            ),
            Verdict::WouldDeny(ban) => {
                ctx.would_deny.get_or_insert(ban);
            }
            Verdict::Allow => {}
        }
        deny.into()
    }

    /// A canary key signed this request correctly: its secret is out. Blocks the client
    /// network for every key, puts the keys it used recently back on probation there
    /// (durably), and alerts at once with the key's label and the request. The client
    /// is told `ip_not_allowed` ([`Deny::as_told_to_client`]); the audit says `canary`.
    fn canary_used(
        &self,
        ctx: &RequestCtx,
        key: &KeyRecord,
        parts: &request::Parts,
        now: u64,
    ) -> Refusal {
        if let Some(sh) = &self.shared {
            // Every replica blocks the network (through Redis and its announcement), and
            // the keys seen from it go back on probation there in Redis, where every
            // replica's new-IP rule reads them. Off the response path: the alert goes
            // out when both are done, with what was done.
            let (store, scripts, rules) = (sh.store.clone(), sh.scripts.clone(), sh.rules.clone());
            let net = keyguard_policy::limits::ClientNet::of(ctx.client_ip);
            let rule = &self.anomaly.config().canary;
            let until = now.saturating_add(rule.block_ms);
            let since = now.saturating_sub(rule.lookback_ms);
            // This replica refuses the network from its very next request, before the
            // task below has reached Redis.
            store.remember_standing(net, "tripped", until);
            let snap = self.keys.snapshot();
            let alerts = self.alerts.clone();
            let alert = Alert {
                key_label: Some(key.label.clone()),
                method: Some(parts.method.to_string()),
                path: Some(truncate(parts.uri.path(), 256).to_owned()),
                ..self.alert_for(ctx, "canary_used", Deny::Canary.code(), String::new())
            };
            tokio::spawn(async move {
                let blocked = store.trip(&scripts, net, until).await;
                if let Err(e) = &blocked {
                    tracing::error!(error = %e, "canary block not recorded in redis");
                }
                let forgotten = forget_in_redis(&store, &scripts, &rules, &snap, net, since).await;
                let detail = match (blocked, forgotten) {
                    (Ok(()), Ok(n)) => format!(
                        "canary key used: network blocked for every key until {}, {n} key(s) back on new-IP probation there",
                        timestamp(SystemTime::UNIX_EPOCH + Duration::from_millis(until))
                    ),
                    _ => "canary key used: the anomaly state could not be updated in redis".to_owned(),
                };
                alerts.send(Alert { detail, ..alert });
            });
            return Deny::Canary.into();
        }
        let detail = match self.anomaly.canary_used(ctx.client_ip, now) {
            Ok(trip) => {
                let n = trip.forgotten.len();
                for forgotten in trip.forgotten {
                    self.writer.submit_detached(WriteOp::LearnedIp(forgotten));
                }
                format!(
                    "canary key used: network blocked for every key until {}, {n} key(s) back on new-IP probation there",
                    timestamp(SystemTime::UNIX_EPOCH + Duration::from_millis(trip.blocked_until))
                )
            }
            Err(_) => "canary key used: the anomaly state could not be updated".to_owned(),
        };
        self.alerts.send(Alert {
            key_label: Some(key.label.clone()),
            method: Some(parts.method.to_string()),
            path: Some(truncate(parts.uri.path(), 256).to_owned()),
            ..self.alert_for(ctx, "canary_used", Deny::Canary.code(), detail)
        });
        Deny::Canary.into()
    }

    /// Called with every new key snapshot: a key this process suspended that is active
    /// again, with a status change after the suspension, was resumed by an operator, so
    /// the sightings that suspended it must not suspend it again. (Comparing times rather
    /// than watching for an active→suspended→active sequence also works when the
    /// suspension and the resume land between two reloads.)
    pub fn notice_resumed_keys(&self, snap: &crate::keys::Snapshot) {
        self.suspended_by_rules
            .lock()
            .retain(|key_id, suspended_at| {
                let Some(entry) = snap.by_key_id(key_id) else {
                    return false;
                };
                let resumed = entry.key.status == keyguard_policy::KeyStatus::Active
                    && entry.changed_at > *suspended_at;
                if resumed && self.anomaly.key_resumed(key_id).is_err() {
                    tracing::error!(key_id, "could not reset the resumed key's anomaly state");
                }
                !resumed
            });
    }

    /// Suspends `key` durably, once: requests that arrive before the suspension reaches
    /// the key snapshot are refused by the same rule without queuing it again.
    fn suspend(&self, ctx: &RequestCtx, key: &KeyRecord, reason: &str) {
        let now = self.clock.now_ms();
        match self.suspended_by_rules.lock().entry(key.key_id.clone()) {
            std::collections::hash_map::Entry::Occupied(_) => return,
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(now);
            }
        }
        self.writer.submit_detached(WriteOp::Suspend {
            key_id: key.key_id.clone(),
            reason: reason.to_owned(),
            decided_at: now,
        });
        self.alert(
            ctx,
            "key_suspended",
            reason,
            "suspended by an anomaly rule".into(),
        );
    }

    fn alert(&self, ctx: &RequestCtx, event: &str, code: &str, detail: String) {
        self.alerts.send(self.alert_for(ctx, event, code, detail));
    }

    fn alert_for(&self, ctx: &RequestCtx, event: &str, code: &str, detail: String) -> Alert {
        Alert {
            ts: timestamp(SystemTime::now()),
            event: event.to_owned(),
            code: code.to_owned(),
            key_id: ctx.key.as_ref().map(|k| k.key_id.clone()),
            account: ctx.key.as_ref().map(|k| k.account.clone()),
            client_ip: Some(ctx.client_ip.to_string()),
            detail,
            ..Alert::default()
        }
    }

    /// Reserves `r` in every window that covers it; `None` when no rule does.
    async fn reserve(&self, r: &Reservation<'_>, now: u64) -> Result<Option<ReservationId>, Deny> {
        let id = self.velocity.reserve(r, now)?;
        if id.is_none() {
            return Ok(None);
        }
        let record = self.velocity.record(id).ok_or(Deny::StateUnavailable)?;
        let committed = self.writer.submit(WriteOp::Velocity(record.clone()));
        match tokio::time::timeout(self.audit.write_timeout(), committed).await {
            Ok(Ok(Ok(()))) => Ok(Some(id)),
            late_or_failed => {
                // Not durable: undo in memory and fail closed.
                let _ = self.velocity.release(id);
                if late_or_failed.is_err() {
                    // A stalled disk: the entry may still be committed later, as reserved;
                    // queue its release after it, so a restart does not count it.
                    let mut released = record;
                    released.state = EntryState::Released;
                    self.writer.submit_detached(WriteOp::Velocity(released));
                }
                Err(Deny::StateUnavailable)
            }
        }
    }

    /// Settles a reservation once the upstream answered. Only a definitive failure frees
    /// the capacity: a 4xx from the exchange, or a connection that failed before the
    /// request was sent. A timeout or a 5xx may have executed, so it counts as spent.
    fn settle(
        &self,
        ctx: &RequestCtx,
        id: ReservationId,
        result: &Result<Response<Body>, Refusal>,
    ) {
        let definitive_failure = match result {
            Ok(resp) => resp.status().is_client_error(),
            Err(_) => ctx.not_sent,
        };
        // Released entries leave the in-memory ledger, so the record is taken first.
        let Some(mut record) = self.velocity.record(id) else {
            return;
        };
        let settled = if definitive_failure {
            record.state = EntryState::Released;
            self.velocity.release(id)
        } else {
            record.state = EntryState::Committed;
            self.velocity.commit(id)
        };
        if settled.is_err() {
            tracing::error!(request_id = %ctx.request_id, "velocity entry could not be settled");
        }
        self.writer.submit_detached(WriteOp::Velocity(record));
    }

    async fn read_body(
        &self,
        p: &Policy,
        parts: &request::Parts,
        body: Incoming,
    ) -> Result<Bytes, Deny> {
        let limit = p.body_limits.max_bytes;
        // Refuse an oversized declared length before reading a byte of it.
        if let Some(len) = parts.headers.get(header::CONTENT_LENGTH) {
            let len: u64 = len
                .to_str()
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or(Deny::InvalidHeader)?;
            if len > limit as u64 {
                return Err(Deny::BodyTooLarge);
            }
        }
        let collected = tokio::time::timeout(
            p.body_limits.read_timeout,
            Limited::new(body, limit).collect(),
        )
        .await
        .map_err(|_| Deny::BodyTimeout)?;
        match collected {
            Ok(c) => Ok(c.to_bytes()),
            Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(Deny::BodyTooLarge),
            Err(_) => Err(Deny::InvalidParameter),
        }
    }

    fn assertion(
        &self,
        ctx: &RequestCtx,
        key: &KeyRecord,
        action: Action,
        parts: &request::Parts,
        body: &[u8],
        now_ms: u64,
    ) -> String {
        self.signer.sign(&Claims {
            sub: &key.account,
            kid: &key.key_id,
            scp: key.scopes,
            act: action.as_str(),
            cip: ctx.client_ip_text.as_str(),
            mth: parts.method.as_str(),
            pth: parts.uri.path(),
            body,
            query: parts.uri.query(),
            iat: now_ms / 1000,
            jti: ctx.request_id.as_str(),
        })
    }

    async fn forward(
        &self,
        p: &Policy,
        ctx: &mut RequestCtx,
        pool: &Arc<Pool>,
        parts: &request::Parts,
        body: Bytes,
        assertion: Option<String>,
    ) -> Result<Response<Body>, Refusal> {
        let up = &self.upstream;
        // Origin-form: the connection already names the host.
        let path_and_query = parts
            .uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/");
        let uri = Uri::try_from(path_and_query).map_err(|_| Deny::InvalidTarget)?;
        let mut out = Request::builder()
            .method(parts.method.clone())
            .uri(uri)
            .body(Full::new(body))
            .map_err(|_| Deny::InvalidTarget)?;
        let headers = out.headers_mut();
        copy_end_to_end(&parts.headers, headers, p.dialect.kind.auth_headers());
        headers.insert(header::HOST, up.host.clone());
        if let Ok(ip) = HeaderValue::from_str(ctx.client_ip_text.as_str()) {
            headers.insert(HeaderName::from_static("x-forwarded-for"), ip);
        }
        let request_id = HeaderValue::from_str(ctx.request_id.as_str()).ok();
        if let Some(id) = &request_id {
            headers.insert(HeaderName::from_static("x-request-id"), id.clone());
        }
        if let Some(token) = assertion {
            let v = HeaderValue::from_str(&token).map_err(|_| Deny::StateUnavailable)?;
            headers.insert(HeaderName::from_static(ASSERTION_HEADER), v);
        }

        let sent_at = Instant::now();
        let sent = pool.send(out).await;
        let m = crate::metrics::metrics();
        match &sent {
            Ok(_) => m.upstream_duration.observe(sent_at.elapsed()),
            Err(SendError::Timeout) => m.upstream_error(Deny::UpstreamTimeout, true),
            Err(SendError::NotSent(_)) => m.upstream_error(Deny::UpstreamUnavailable, false),
            Err(SendError::Failed(_)) => m.upstream_error(Deny::UpstreamUnavailable, true),
        }
        let resp = match sent {
            Ok(resp) => resp,
            Err(SendError::Timeout) => return Err(Deny::UpstreamTimeout.into()),
            Err(SendError::NotSent(e)) => {
                tracing::warn!(error = %e, request_id = %ctx.request_id, "upstream request not sent");
                ctx.not_sent = true;
                return Err(Deny::UpstreamUnavailable.into());
            }
            Err(SendError::Failed(e)) => {
                tracing::warn!(error = %e, request_id = %ctx.request_id, "upstream request failed");
                return Err(Deny::UpstreamUnavailable.into());
            }
        };
        let (mut rparts, rbody) = resp.into_parts();
        // The client spoke to us, not to the upstream: answer in the client's version.
        rparts.version = parts.version;
        strip_hop_by_hop(&mut rparts.headers);
        if let Some(id) = request_id {
            rparts
                .headers
                .insert(HeaderName::from_static("x-request-id"), id);
        }
        // The response timeout also bounds each wait for the next piece of the body: an
        // upstream that stalls mid-body would otherwise hold the client's connection open
        // for as long as the client is willing to wait. hyper then aborts the connection,
        // so the client sees a truncated response, never a complete-looking one.
        Ok(Response::from_parts(
            rparts,
            TimeoutBody::new(up.response_timeout, rbody).boxed(),
        ))
    }
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// An IP address as text, formatted once into a buffer on the stack.
#[derive(Clone, Copy)]
struct IpText {
    buf: [u8; 45],
    len: u8,
}

impl IpText {
    fn new(ip: IpAddr) -> IpText {
        use std::io::Write as _;
        let mut buf = [0u8; 45];
        let mut cursor = std::io::Cursor::new(&mut buf[..]);
        // The longest form, an IPv4-mapped IPv6 address, is 45 bytes: it always fits.
        let _ = write!(cursor, "{ip}");
        let len = cursor.position() as u8;
        IpText { buf, len }
    }

    fn as_str(&self) -> &str {
        // Display of an IpAddr writes ASCII only.
        std::str::from_utf8(&self.buf[..self.len as usize]).unwrap_or("")
    }
}

/// A request id: 20 hex digits, kept on the stack.
#[derive(Clone, Copy)]
pub struct RequestId([u8; 20]);

impl RequestId {
    /// The id as text.
    pub fn as_str(&self) -> &str {
        // Only hex digits are ever written.
        std::str::from_utf8(&self.0).unwrap_or("")
    }
}

impl std::fmt::Display for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Unique request ids: a random per-process prefix and a counter, so generating one costs
/// an atomic add instead of a call into the system RNG.
pub struct RequestIds {
    prefix: u32,
    counter: AtomicU64,
}

impl RequestIds {
    /// A generator with a random prefix.
    pub fn new() -> anyhow::Result<RequestIds> {
        let b: [u8; 4] = crate::secrets::random_bytes()?;
        Ok(RequestIds {
            prefix: u32::from_be_bytes(b),
            counter: AtomicU64::new(0),
        })
    }

    /// The next id: the prefix as 8 hex digits, then the counter as 12.
    pub fn next(&self) -> RequestId {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let mut out = [0u8; 20];
        for (i, b) in out[..8].iter_mut().enumerate() {
            *b = HEX[(self.prefix >> (28 - 4 * i) & 0xf) as usize];
        }
        for (i, b) in out[8..].iter_mut().enumerate() {
            *b = HEX[(n >> (44 - 4 * i) & 0xf) as usize];
        }
        RequestId(out)
    }
}

/// Puts every key seen from `net` since `since` back on new-IP probation there, in Redis:
/// the keys in the network's shared-IP set when that rule keeps one, else every key of
/// the catalogue (a canary is rare; each check is one small script). Returns how many.
async fn forget_in_redis(
    store: &crate::store::redis::RedisStore,
    scripts: &crate::store::redis::admit::Scripts,
    rules: &crate::store::redis::admit::SharedRules,
    snap: &crate::keys::Snapshot,
    net: keyguard_policy::limits::ClientNet,
    since: u64,
) -> Result<usize, crate::store::redis::StoreError> {
    let candidates: Vec<&KeyRecord> = match store.seen_from(rules, net, since).await? {
        Some(ids) => ids
            .iter()
            .filter_map(|id| snap.by_key_id(id).map(|e| &*e.key))
            .collect(),
        None => snap.entries().map(|e| &*e.key).collect(),
    };
    let mut n = 0;
    let mut failed = None;
    for key in candidates {
        // One failure must not spare the other keys.
        match store
            .forget_network(scripts, &key.account, &key.key_id, net, since)
            .await
        {
            Ok(true) => n += 1,
            Ok(false) => {}
            Err(e) => failed = Some(e),
        }
    }
    match failed {
        Some(e) => Err(e),
        None => Ok(n),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_unique() {
        let ids = RequestIds::new().unwrap();
        let a = ids.next();
        assert_eq!(a.as_str().len(), 20);
        assert_eq!(
            a.as_str(),
            format!("{:08x}{:012x}", ids.prefix, 0),
            "what format! wrote before"
        );
        assert_ne!(a.as_str(), ids.next().as_str());
        ids.counter.store(0xfedc_ba98_7654, Ordering::Relaxed);
        assert_eq!(
            ids.next().as_str(),
            format!("{:08x}fedcba987654", ids.prefix)
        );
    }

    #[test]
    fn ip_text_is_display() {
        for ip in [
            "127.0.0.2",
            "::1",
            "::ffff:255.255.255.255",
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(IpText::new(ip).as_str(), ip.to_string());
        }
    }
}
