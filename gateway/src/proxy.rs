//! The request pipeline (DESIGN.md §2), one readable function: [`Gateway::process`].
//! Each stage either passes the request on or returns a [`Deny`]; [`Gateway::handle`]
//! turns the outcome into a response and one audit event.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{request, Request, Response, Uri};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
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
use crate::assertion::{sha256_b64url, AssertionSigner, Claims};
use crate::audit::{timestamp, AuditEvent, AuditSink};
use crate::keys::KeyCache;
use crate::replay::ReplayGuard;
use crate::respond::{deny_response, Refusal};
use crate::store::writer::{StoreWriter, WriteOp};

/// Response body type of the gateway: upstream bodies are streamed, errors are complete.
pub type Body = BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

/// The header that carries the identity assertion to the upstream.
pub const ASSERTION_HEADER: &str = "x-keyguard-assertion";

/// Headers that describe one hop, never the request (RFC 9110 §7.6.1), plus the
/// non-standard ones proxies still see.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Where and how requests are forwarded.
pub struct Upstream {
    client: Client<HttpConnector, Full<Bytes>>,
    scheme: http::uri::Scheme,
    authority: http::uri::Authority,
    response_timeout: Duration,
}

impl Upstream {
    /// A pooled keep-alive client for `base` (`http://host:port`).
    pub fn new(
        base: &Uri,
        connect_timeout: Duration,
        response_timeout: Duration,
    ) -> anyhow::Result<Upstream> {
        let scheme = base
            .scheme()
            .cloned()
            .ok_or_else(|| anyhow::anyhow!("upstream {base} has no scheme"))?;
        if scheme != http::uri::Scheme::HTTP {
            anyhow::bail!("upstream {base}: only http:// is supported so far");
        }
        let authority = base
            .authority()
            .cloned()
            .ok_or_else(|| anyhow::anyhow!("upstream {base} has no host"))?;
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(connect_timeout));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(256)
            .build(connector);
        Ok(Upstream {
            client,
            scheme,
            authority,
            response_timeout,
        })
    }
}

/// Limits of the request-reading stage.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimits {
    /// Largest body accepted (bytes).
    pub max_bytes: usize,
    /// Time allowed for the whole body to arrive.
    pub read_timeout: Duration,
}

/// Everything the pipeline needs, shared by all connections.
pub struct Gateway {
    /// Dialect options.
    pub dialect: DialectConfig,
    /// Endpoint classification.
    pub routes: RouteTable,
    /// Authorization tunables.
    pub authz: AuthorizeConfig,
    /// Proxies whose forwarding headers are believed.
    pub trusted_proxies: Vec<IpNet>,
    /// Request-body limits.
    pub body_limits: BodyLimits,
    /// Key snapshot.
    pub keys: Arc<KeyCache>,
    /// Nonces and seen signatures.
    pub replay: ReplayGuard,
    /// Signs identity assertions.
    pub signer: AssertionSigner,
    /// Audit log.
    pub audit: AuditSink,
    /// The exchange.
    pub upstream: Upstream,
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
}

/// What the pipeline learned about a request, for the audit event.
struct RequestCtx {
    request_id: String,
    client_ip: IpAddr,
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
}

impl Gateway {
    /// Serves one request: decide, forward or refuse, audit.
    pub async fn handle(
        self: Arc<Self>,
        peer: SocketAddr,
        req: Request<Incoming>,
    ) -> Result<Response<Body>, Infallible> {
        let started = Instant::now();
        let arrived = SystemTime::now();
        let method = req.method().to_string();
        let path = truncate(req.uri().path(), 256);
        let mut ctx = RequestCtx {
            request_id: self.ids.next(),
            client_ip: canonical_ip(peer.ip()),
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
        };
        let outcome = self.process(&mut ctx, peer, req).await;
        let (resp, code) = match outcome {
            Ok(resp) => (resp, ctx.would_deny.map(Deny::code)),
            Err(refusal) => {
                let mut resp = deny_response(&refusal, &ctx.request_id, self.dialect.kind);
                if ctx.body_unread {
                    // Refused before its body was read (pre-auth limits, oversized or slow
                    // bodies): close rather than let hyper drain a body nobody wants, which
                    // a flooder could make arbitrarily long, and which would look like the
                    // start of a new request to the accept stage's stall detection.
                    resp.headers_mut()
                        .insert(header::CONNECTION, HeaderValue::from_static("close"));
                }
                (resp, Some(refusal.deny.code()))
            }
        };
        let decision = match (ctx.forwarded, ctx.would_deny) {
            (true, Some(_)) => "would_deny",
            (true, None) => "allow",
            (false, _) => "deny",
        };
        self.audit.record(AuditEvent {
            ts: timestamp(arrived),
            request_id: ctx.request_id,
            key_id: ctx.key.as_ref().map(|k| k.key_id.clone()),
            account: ctx.key.as_ref().map(|k| k.account.clone()),
            client_ip: ctx.client_ip.to_string(),
            dialect: self.dialect.kind.as_str(),
            action: ctx.action.map(Action::as_str),
            decision,
            code,
            status: resp.status().as_u16(),
            latency_us: started.elapsed().as_micros() as u64,
            method,
            path,
        });
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
        self.audit.record(AuditEvent {
            ts: timestamp(arrived_at),
            request_id: self.ids.next(),
            key_id: None,
            account: None,
            client_ip: canonical_ip(peer.ip()).to_string(),
            dialect: self.dialect.kind.as_str(),
            action: None,
            decision: "deny",
            code: Some(deny.code()),
            status,
            latency_us: waited.as_micros() as u64,
            method: String::new(),
            path: String::new(),
        });
    }

    /// The pipeline, outermost stage first.
    async fn process(
        &self,
        ctx: &mut RequestCtx,
        peer: SocketAddr,
        req: Request<Incoming>,
    ) -> Result<Response<Body>, Refusal> {
        // Who is asking: the socket peer, or the client behind a proxy we trust.
        ctx.client_ip = client_ip(peer.ip(), req.headers(), &self.trusted_proxies)?;

        // Pre-auth: banned or blocked networks and the per-IP rate limit are checked before
        // reading the body or computing any HMAC, so floods cannot burn CPU.
        let now = self.clock.now_ms();
        self.apply(ctx, self.anomaly.check_client(ctx.client_ip, now), false)?;
        self.limits.check_ip(ctx.client_ip)?;

        // Read the whole body (bounded in size and time): the signature covers it and the
        // exact bytes verified are the bytes forwarded.
        let (parts, body) = req.into_parts();
        let body = self.read_body(&parts, body).await?;
        ctx.body_unread = false;

        // Strict parsing: anything ambiguous is refused before it can be misread.
        let parsed = dialect::parse(&self.dialect, &parts, &body)?;

        // Classification: unknown endpoints are denied, never forwarded.
        let classified = self.routes.classify(&parsed)?;
        ctx.action = Some(classified.action);
        if classified.action == Action::Public {
            ctx.forwarded = true;
            return self.forward(ctx, &parts, body, None).await;
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
        if let Err(deny) = dialect::verify(&self.dialect, creds, &key.credential) {
            return Err(self.auth_failed(ctx, deny, now));
        }
        // A canary's secret leaked: refuse (as `ip_not_allowed`), alert, block the network.
        if key.canary {
            return Err(self.canary_used(ctx, &key, &parts, now));
        }
        dialect::check_freshness(&self.dialect, &creds.replay, now)?;
        key_usable(&key, now)?;

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

        // Authorization: status, expiry, scope, IP allowlist, withdrawal rules, freezes —
        // on a snapshot known to be current when funds move (fail closed otherwise).
        if matches!(classified.action, Action::Trade | Action::Withdraw) && !self.keys.is_fresh() {
            return Err(Deny::StateUnavailable.into());
        }
        authorize(
            &self.authz,
            &key,
            &AccessRequest {
                action: classified.action,
                facts: &classified.facts,
                client_ip: ctx.client_ip,
                now,
            },
            &snapshot.freezes,
        )?;
        drop(snapshot);

        // Per-key, per-account and per-action rate limits.
        self.limits.check_key(&key, classified.action)?;

        // Replay: consume the nonce / signature durably, after the checks above so that
        // refused requests do not burn the owner's nonce sequence.
        self.replay.accept(&key.key_id, &creds.replay, now).await?;

        // Velocity: reserve the amount / count in every window, durably, before forwarding.
        let route = &self.routes.routes()[classified.route];
        let reservation = match Reservation::for_request(route, &classified, &key) {
            Some(r) => self.reserve(&r, now).await?,
            None => None,
        };

        // Forward with an assertion of what was allowed.
        let assertion = self.assertion(ctx, &key, classified.action, &parts, &body, now);
        ctx.forwarded = true;
        let result = self.forward(ctx, &parts, body, Some(assertion)).await;
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
            path: Some(truncate(parts.uri.path(), 256)),
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
        match self.writer.submit(WriteOp::Velocity(record)).await {
            Ok(Ok(())) => Ok(Some(id)),
            _ => {
                // Not durable: undo in memory and fail closed.
                let _ = self.velocity.release(id);
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

    async fn read_body(&self, parts: &request::Parts, body: Incoming) -> Result<Bytes, Deny> {
        let limit = self.body_limits.max_bytes;
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
            self.body_limits.read_timeout,
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
        let iat = now_ms / 1000;
        self.signer.sign(&Claims {
            iss: "keyguard",
            sub: &key.account,
            kid: &key.key_id,
            scp: key.scopes.names(),
            act: action.as_str(),
            cip: ctx.client_ip.to_string(),
            mth: parts.method.as_str(),
            pth: parts.uri.path(),
            bsh: sha256_b64url(body),
            qsh: parts.uri.query().map(|q| sha256_b64url(q.as_bytes())),
            iat,
            exp: iat + self.signer.ttl_secs(),
            jti: &ctx.request_id,
        })
    }

    async fn forward(
        &self,
        ctx: &mut RequestCtx,
        parts: &request::Parts,
        body: Bytes,
        assertion: Option<String>,
    ) -> Result<Response<Body>, Refusal> {
        let up = &self.upstream;
        let path_and_query = parts
            .uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/");
        let uri = Uri::builder()
            .scheme(up.scheme.clone())
            .authority(up.authority.clone())
            .path_and_query(path_and_query)
            .build()
            .map_err(|_| Deny::InvalidTarget)?;
        let mut out = Request::builder()
            .method(parts.method.clone())
            .uri(uri)
            .body(Full::new(body))
            .map_err(|_| Deny::InvalidTarget)?;
        let headers = out.headers_mut();
        copy_end_to_end(&parts.headers, headers, self.dialect.kind.auth_headers());
        if let Ok(ip) = HeaderValue::from_str(&ctx.client_ip.to_string()) {
            headers.insert(HeaderName::from_static("x-forwarded-for"), ip);
        }
        if let Ok(id) = HeaderValue::from_str(&ctx.request_id) {
            headers.insert(HeaderName::from_static("x-request-id"), id);
        }
        if let Some(token) = assertion {
            let v = HeaderValue::from_str(&token).map_err(|_| Deny::StateUnavailable)?;
            headers.insert(HeaderName::from_static(ASSERTION_HEADER), v);
        }

        let resp = match tokio::time::timeout(up.response_timeout, up.client.request(out)).await {
            Err(_) => return Err(Deny::UpstreamTimeout.into()),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, request_id = %ctx.request_id, "upstream request failed");
                ctx.not_sent = e.is_connect();
                return Err(Deny::UpstreamUnavailable.into());
            }
            Ok(Ok(resp)) => resp,
        };
        let (mut rparts, rbody) = resp.into_parts();
        // The client spoke to us, not to the upstream: answer in the client's version.
        rparts.version = parts.version;
        strip_hop_by_hop(&mut rparts.headers);
        if let Ok(id) = HeaderValue::from_str(&ctx.request_id) {
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

/// Copies the headers that describe the request itself. Dropped: hop-by-hop headers and
/// any the client nominated in `Connection` (else `Connection: x-keyguard-assertion`
/// could make a proxy strip ours), the client's credentials (the exchange trusts the
/// assertion, not them), anything claiming to come from us, forwarding headers (we set
/// our own), and Host/Content-Length (recomputed for the upstream request).
fn copy_end_to_end(from: &HeaderMap, to: &mut HeaderMap, auth_headers: &[&str]) {
    let nominated = nominated(from);
    for (name, value) in from {
        let n = name.as_str();
        let dropped = HOP_BY_HOP.contains(&n)
            || nominated.iter().any(|x| x == name)
            || auth_headers.contains(&n)
            || n.starts_with("x-keyguard-")
            || n == "host"
            || n == "content-length"
            || n == "forwarded"
            || n == "x-forwarded-for"
            || n == "x-forwarded-host"
            || n == "x-forwarded-proto"
            || n == "x-real-ip"
            || n == "x-request-id";
        if !dropped {
            to.append(name.clone(), value.clone());
        }
    }
}

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    for n in nominated(headers) {
        headers.remove(n);
    }
    for n in HOP_BY_HOP {
        headers.remove(*n);
    }
}

/// The headers a `Connection` header names as hop-by-hop (RFC 9110 §7.6.1).
fn nominated(headers: &HeaderMap) -> Vec<HeaderName> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|s| HeaderName::from_bytes(s.trim().as_bytes()).ok())
        .collect()
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
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

    /// The next id.
    pub fn next(&self) -> String {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        format!("{:08x}{:012x}", self.prefix, n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn end_to_end_headers_only() {
        let mut from = HeaderMap::new();
        for (k, v) in [
            ("connection", "keep-alive, x-secret-hop"),
            ("x-secret-hop", "1"),
            ("keep-alive", "timeout=5"),
            ("key", "apikey"),
            ("sign", "deadbeef"),
            ("x-keyguard-assertion", "forged"),
            ("x-forwarded-for", "6.6.6.6"),
            ("host", "exchange.example"),
            ("content-type", "application/x-www-form-urlencoded"),
            ("user-agent", "ccxt"),
        ] {
            from.append(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        let mut to = HeaderMap::new();
        copy_end_to_end(&from, &mut to, &["key", "sign"]);
        let names: Vec<&str> = to.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, vec!["content-type", "user-agent"]);
    }

    #[test]
    fn request_ids_unique() {
        let ids = RequestIds::new().unwrap();
        let a = ids.next();
        assert_eq!(a.len(), 20);
        assert_ne!(a, ids.next());
    }
}
