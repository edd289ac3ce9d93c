//! The mock exchange: a hyper 1.x server answering one exchange's REST API.
//!
//! Every request goes through [`MockExchange::respond`]:
//! 1. `GET /__mock/stats` answers the counters (test tooling, not an exchange endpoint).
//! 2. The dialect's router names the endpoint: public, private (with the action it
//!    performs), or unknown (404 in the exchange's error shape).
//! 3. Private endpoints need a valid identity assertion whose `act` and `scp` fit the
//!    endpoint; otherwise 401, counted as refused, never executed.
//! 4. An accepted private request is written to the [`Ledger`] *before* it runs, then
//!    runs against the in-memory order book.

use std::convert::Infallible;
use std::fmt;
use std::io;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Body;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use keyguard_policy::Action;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::net::TcpListener;

use crate::ledger::{Ledger, LedgerEntry};

pub mod assertion;
mod binance;
mod book;
mod coincheck;
mod kraken;
mod params;
#[cfg(test)]
mod testkit;
#[cfg(test)]
mod tests;
mod zaif;

use assertion::{AssertionClaims, AssertionError, AssertionVerifier, BoundRequest};
use book::Book;
use params::Params;

/// The header carrying the gateway's identity assertion.
pub const ASSERTION_HEADER: &str = "x-keyguard-assertion";

/// The path of the counters endpoint.
pub const STATS_PATH: &str = "/__mock/stats";

/// Bodies above this are refused before routing; exchange request bodies are tiny, and the
/// gateway's own limit (64 KiB by default) is well below it.
const MAX_BODY_BYTES: usize = 1 << 20;

/// Which exchange the mock imitates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// Zaif: public `GET /api/1/...`, private `POST /tapi` with a `method` form field.
    Zaif,
    /// Binance spot: `/api/v3/...` and wallet `/sapi/v1/...`.
    Binance,
    /// Kraken: `GET /0/public/<Method>`, `POST /0/private/<Method>`.
    Kraken,
    /// Coincheck: `/api/...` by method and path (`DELETE /api/exchange/orders/<id>`).
    Coincheck,
}

impl Dialect {
    /// The lower-case name used on the command line and in configs.
    pub const fn as_str(self) -> &'static str {
        match self {
            Dialect::Zaif => "zaif",
            Dialect::Binance => "binance",
            Dialect::Kraken => "kraken",
            Dialect::Coincheck => "coincheck",
        }
    }
}

impl fmt::Display for Dialect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A dialect name that is not `zaif`, `binance`, `kraken` or `coincheck`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown dialect {0:?} (expected zaif, binance, kraken or coincheck)")]
pub struct UnknownDialect(String);

impl FromStr for Dialect {
    type Err = UnknownDialect;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "zaif" => Ok(Dialect::Zaif),
            "binance" => Ok(Dialect::Binance),
            "kraken" => Ok(Dialect::Kraken),
            "coincheck" => Ok(Dialect::Coincheck),
            other => Err(UnknownDialect(other.to_owned())),
        }
    }
}

/// Counters served at [`STATS_PATH`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// Private requests that carried a valid assertion and were executed (and ledgered).
    pub executed: u64,
    /// Private requests refused for a missing or invalid assertion.
    pub refused: u64,
    /// Public market-data requests answered.
    pub public: u64,
    /// Requests for endpoints the mock does not know.
    pub not_found: u64,
}

#[derive(Debug, Default)]
struct Counters {
    executed: AtomicU64,
    refused: AtomicU64,
    public: AtomicU64,
    not_found: AtomicU64,
}

impl Counters {
    fn snapshot(&self) -> Stats {
        Stats {
            executed: self.executed.load(Ordering::Relaxed),
            refused: self.refused.load(Ordering::Relaxed),
            public: self.public.load(Ordering::Relaxed),
            not_found: self.not_found.load(Ordering::Relaxed),
        }
    }
}

/// A received request with its body buffered and parameters parsed.
#[derive(Debug)]
pub(crate) struct MockRequest {
    pub(crate) method: Method,
    pub(crate) path: String,
    pub(crate) query: String,
    pub(crate) body: Bytes,
    pub(crate) params: Params,
}

/// A JSON response.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Reply {
    pub(crate) status: StatusCode,
    pub(crate) body: Value,
}

impl Reply {
    pub(crate) fn ok(body: Value) -> Reply {
        Reply {
            status: StatusCode::OK,
            body,
        }
    }

    pub(crate) fn with_status(status: StatusCode, body: Value) -> Reply {
        Reply { status, body }
    }
}

/// What a private handler runs with: the request, the asserted account and the book.
pub(crate) struct Ctx<'a> {
    pub(crate) req: &'a MockRequest,
    pub(crate) account: &'a str,
    pub(crate) book: &'a mut Book,
    pub(crate) now_ms: u64,
}

/// A dialect router's verdict on a request.
pub(crate) enum Endpoint {
    /// Market data: answered without an assertion.
    Public(fn(&MockRequest, u64) -> Reply),
    /// Account endpoint performing `action`; needs a valid assertion for that action.
    Private {
        action: Action,
        handler: fn(&mut Ctx<'_>) -> Reply,
    },
    /// Not an endpoint of this exchange.
    Unknown,
}

/// The mock exchange: one dialect, one assertion key, one ledger, one order book.
///
/// A *bench* mock ([`MockExchange::unverified`]) has neither: it executes every private
/// request as account `bench`, so a benchmark can send the very same requests to it
/// directly, through a plain reverse proxy and through Keyguard, and the exchange does
/// the same work in all three. It proves nothing about what the gateway let through.
#[derive(Debug)]
pub struct MockExchange {
    dialect: Dialect,
    verifier: Option<AssertionVerifier>,
    ledger: Option<Ledger>,
    book: Mutex<Book>,
    counters: Counters,
}

impl MockExchange {
    /// A mock of `dialect` that trusts assertions verified by `verifier` and records
    /// executed requests in `ledger`.
    pub fn new(dialect: Dialect, verifier: AssertionVerifier, ledger: Ledger) -> Self {
        MockExchange {
            dialect,
            verifier: Some(verifier),
            ledger: Some(ledger),
            book: Mutex::new(Book::default()),
            counters: Counters::default(),
        }
    }

    /// A bench mock: no assertion checks, no ledger (see the type's docs).
    pub fn unverified(dialect: Dialect) -> Self {
        MockExchange {
            dialect,
            verifier: None,
            ledger: None,
            book: Mutex::new(Book::default()),
            counters: Counters::default(),
        }
    }

    /// The dialect this mock speaks.
    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    /// The current counters.
    pub fn stats(&self) -> Stats {
        self.counters.snapshot()
    }

    /// Answers one HTTP request.
    pub async fn handle<B>(&self, request: Request<B>) -> Response<Full<Bytes>>
    where
        B: Body,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let (parts, body) = request.into_parts();
        let body = match Limited::new(body, MAX_BODY_BYTES).collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(e) => {
                return into_response(Reply::with_status(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    json!({"error": format!("body unreadable or above {MAX_BODY_BYTES} bytes: {e}")}),
                ));
            }
        };
        let content_type = parts
            .headers
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok());
        let query = parts.uri.query().unwrap_or("").to_owned();
        let params = Params::from_request(&query, content_type, &body);
        let request = MockRequest {
            method: parts.method,
            path: parts.uri.path().to_owned(),
            query,
            body,
            params,
        };
        into_response(self.respond(&request, &parts.headers, now_ms()))
    }

    /// The routing and trust decision for one buffered request (see the module docs).
    pub(crate) fn respond(&self, req: &MockRequest, headers: &HeaderMap, now_ms: u64) -> Reply {
        if req.method == Method::GET && req.path == STATS_PATH {
            return Reply::ok(json!(self.stats()));
        }
        match self.route(req) {
            Endpoint::Unknown => {
                self.counters.not_found.fetch_add(1, Ordering::Relaxed);
                self.not_found(req)
            }
            Endpoint::Public(handler) => {
                self.counters.public.fetch_add(1, Ordering::Relaxed);
                handler(req, now_ms)
            }
            Endpoint::Private { action, handler } => {
                let Some(verifier) = &self.verifier else {
                    self.counters.executed.fetch_add(1, Ordering::Relaxed);
                    let mut book = self.book.lock();
                    return handler(&mut Ctx {
                        req,
                        account: "bench",
                        book: &mut book,
                        now_ms,
                    });
                };
                let claims = match self.authorize(verifier, req, headers, action, now_ms / 1000) {
                    Ok(claims) => claims,
                    Err(e) => {
                        self.counters.refused.fetch_add(1, Ordering::Relaxed);
                        eprintln!(
                            "mock {}: refused {} {}: {} ({e})",
                            self.dialect,
                            req.method,
                            req.path,
                            e.code()
                        );
                        return self.refused(&e);
                    }
                };
                let entry = LedgerEntry {
                    ts: now_ms,
                    method: req.method.as_str().to_owned(),
                    path: req.path.clone(),
                    query: req.query.clone(),
                    body: String::from_utf8_lossy(&req.body).into_owned(),
                    account: claims.sub.clone(),
                    key_id: claims.kid,
                    action: claims.act,
                    client_ip: claims.cip,
                    request_id: claims.jti,
                };
                // An execution the ledger cannot show would make tests lie: refuse to run
                // what cannot be recorded.
                if let Some(Err(e)) = self.ledger.as_ref().map(|l| l.append(&entry)) {
                    eprintln!("mock {}: ledger write failed: {e}", self.dialect);
                    return Reply::with_status(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        json!({"error": "ledger write failed"}),
                    );
                }
                self.counters.executed.fetch_add(1, Ordering::Relaxed);
                let mut book = self.book.lock();
                handler(&mut Ctx {
                    req,
                    account: &claims.sub,
                    book: &mut book,
                    now_ms,
                })
            }
        }
    }

    /// Verifies the assertion and that it grants this endpoint's action.
    fn authorize(
        &self,
        verifier: &AssertionVerifier,
        req: &MockRequest,
        headers: &HeaderMap,
        action: Action,
        now_secs: u64,
    ) -> Result<AssertionClaims, AssertionError> {
        let mut values = headers.get_all(ASSERTION_HEADER).iter();
        let token = match (values.next(), values.next()) {
            (Some(value), None) => value.to_str().map_err(|_| AssertionError::Missing)?,
            // Two assertions would let a proxy in between pick one; refuse the ambiguity.
            (Some(_), Some(_)) => {
                return Err(AssertionError::Malformed("repeated header".into()));
            }
            (None, _) => return Err(AssertionError::Missing),
        };
        let claims = verifier.verify(
            token,
            BoundRequest {
                method: req.method.as_str(),
                path: &req.path,
                body: &req.body,
            },
            now_secs,
        )?;
        // The exchange knows what its own endpoints do: a gateway that classified a
        // withdrawal as a read must not get it executed.
        if claims.act != action.as_str() {
            return Err(AssertionError::ActionMismatch {
                asserted: claims.act,
                endpoint: action.as_str(),
            });
        }
        if !claims.scp.iter().any(|s| s == action.as_str()) {
            return Err(AssertionError::ScopeMissing(action.as_str()));
        }
        Ok(claims)
    }

    fn route(&self, req: &MockRequest) -> Endpoint {
        match self.dialect {
            Dialect::Zaif => zaif::route(req),
            Dialect::Binance => binance::route(req),
            Dialect::Kraken => kraken::route(req),
            Dialect::Coincheck => coincheck::route(req),
        }
    }

    fn refused(&self, error: &AssertionError) -> Reply {
        match self.dialect {
            Dialect::Zaif => zaif::refused(error),
            Dialect::Binance => binance::refused(error),
            Dialect::Kraken => kraken::refused(error),
            Dialect::Coincheck => coincheck::refused(error),
        }
    }

    fn not_found(&self, req: &MockRequest) -> Reply {
        match self.dialect {
            Dialect::Zaif => zaif::not_found(req),
            Dialect::Binance => binance::not_found(req),
            Dialect::Kraken => kraken::not_found(req),
            Dialect::Coincheck => coincheck::not_found(req),
        }
    }
}

fn into_response(reply: Reply) -> Response<Full<Bytes>> {
    let body = Bytes::from(reply.body.to_string());
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = reply.status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// Wall-clock Unix milliseconds.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Serves `exchange` on `listener` until the process ends: HTTP/1.1 with keep-alive, one
/// task per connection.
pub async fn serve(listener: TcpListener, exchange: Arc<MockExchange>) -> io::Result<()> {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _peer)) => stream,
            Err(e) => {
                // Usually EMFILE under load: back off instead of spinning, keep serving.
                eprintln!("mock {}: accept failed: {e}", exchange.dialect);
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // Responses are small and request/response is strictly alternating: Nagle would
        // only add latency to benchmarks.
        let _ = stream.set_nodelay(true);
        let exchange = Arc::clone(&exchange);
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let exchange = Arc::clone(&exchange);
                async move { Ok::<_, Infallible>(exchange.handle(request).await) }
            });
            // A client closing mid-request is its own business; nothing to report.
            let _ = http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// A decimal string as a JSON number (null if it is not one). Exchange payloads carry amounts as numbers (Zaif) or as
/// decimal strings (Binance, Kraken); the mock keeps the client's string and converts here.
pub(crate) fn json_number(text: &str) -> Value {
    text.parse::<f64>()
        .ok()
        .and_then(serde_json::Number::from_f64)
        .map_or(Value::Null, Value::Number)
}

/// A deterministic 64-bit scramble (splitmix64) for exchange-looking ids.
pub(crate) fn scramble(seq: u64) -> u64 {
    let mut z = seq.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}
