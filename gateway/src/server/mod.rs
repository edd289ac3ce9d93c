//! Accepting connections: the outermost stage of the pipeline. Limits here protect
//! everything behind them: a connection cap (excess clients wait in the kernel backlog),
//! a header read timeout and header size cap (slowloris, header floods), and graceful
//! shutdown that lets in-flight requests finish and their audit events reach the file.
//!
//! Requests that hyper's HTTP/1 parser refuses never reach the pipeline; hyper answers
//! them itself (see [`refused_request`]) and the connection ends with an error, which is
//! turned into the request's audit line here, so that they too are logged with a code.

pub mod http2;
pub mod overload;
pub mod tls;
mod watch;

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use http::Request;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use keyguard_config::Http2Config;
use keyguard_policy::Deny;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch as signal, Semaphore};

use crate::proxy::Gateway;
use crate::respond::Refusal;
use crate::upstream::pool::Pool;
use overload::Overload;
use watch::Watched;

/// Connection-level limits.
#[derive(Debug, Clone, Copy)]
pub struct ConnLimits {
    /// Simultaneous connections.
    pub max_connections: usize,
    /// Time allowed for a request's headers to arrive, and for a TLS handshake; also how
    /// long an idle connection stays open.
    pub header_read_timeout: Duration,
    /// Largest request head (bytes); for HTTP/2 the largest header list.
    pub max_header_bytes: usize,
    /// How long shutdown waits for in-flight requests.
    pub drain_timeout: Duration,
}

/// What the exchange-facing listener needs besides the pipeline, shared by every
/// worker; the parts a reload may change are swapped in place.
pub struct Frontend {
    /// TLS, when `[tls.listen]` is set (whether TLS is on cannot change without a
    /// restart; its certificate can).
    pub tls: Option<tls::Acceptor>,
    /// `[http2]`.
    pub http2: ArcSwap<Http2Config>,
    /// In-flight and per-network limits.
    pub overload: Arc<Overload>,
}

/// ALPN offered by the exchange-facing listener.
pub fn listener_alpn(http2: &Http2Config) -> &'static [&'static [u8]] {
    if http2.enabled {
        &[tls::ALPN_H2, tls::ALPN_HTTP1]
    } else {
        &[tls::ALPN_HTTP1]
    }
}

/// Binds `n` listening sockets to `addr` with `SO_REUSEPORT`, one per worker, so the
/// kernel spreads new connections over the workers and each accepts on its own thread.
///
/// `SO_REUSEPORT` would also let a second process of the same user bind the same port and
/// take a share of the connections, silently; so a given address is first bound without
/// it, which fails if anyone already listens there. With port 0 the kernel picks a port
/// nobody uses for the first socket, and the others join it: no probe, and so no moment
/// in which another process could pick the same port (the log's `keyguard serving` line
/// says which one it is).
pub fn bind_workers(addr: SocketAddr, n: usize) -> io::Result<Vec<std::net::TcpListener>> {
    let reuse_port_socket = |addr: SocketAddr| -> io::Result<std::net::TcpListener> {
        let socket = socket2::Socket::new(
            socket2::Domain::for_address(addr),
            socket2::Type::STREAM,
            Some(socket2::Protocol::TCP),
        )?;
        socket.set_reuse_address(true)?;
        socket.set_reuse_port(true)?;
        socket.set_nonblocking(true)?;
        socket.bind(&addr.into())?;
        socket.listen(1024)?;
        Ok(socket.into())
    };
    let mut listeners = Vec::with_capacity(n.max(1));
    let addr = if addr.port() == 0 {
        let first = reuse_port_socket(addr)?;
        let bound = first.local_addr()?;
        listeners.push(first);
        bound
    } else {
        drop(std::net::TcpListener::bind(addr)?);
        addr
    };
    while listeners.len() < n.max(1) {
        listeners.push(reuse_port_socket(addr)?);
    }
    Ok(listeners)
}

/// Serves `listener` on the current worker's runtime until `shutdown` resolves, then
/// drains. Every request of every connection accepted here is handled on this thread,
/// and forwarded over this worker's own upstream connections (`pool`). `permits` is the
/// connection cap, shared by all workers.
pub async fn serve(
    listener: TcpListener,
    gateway: Arc<Gateway>,
    pool: Arc<Pool>,
    permits: Arc<Semaphore>,
    limits: ConnLimits,
    front: Arc<Frontend>,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    // Every connection holds a clone of `drained`; when the last one is gone, draining
    // is over. `stop` tells them to finish their current requests and close.
    let (drained, mut all_drained) = mpsc::channel::<()>(1);
    let (stop, stopping) = signal::channel(false);
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            _ = &mut shutdown => break,
            p = permits.clone().acquire_owned() => p?,
        };
        let (stream, peer) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        // One network must not hold every connection: past its cap, close at once,
        // before a TLS handshake or a byte of HTTP costs anything.
        let Some(slot) = front.overload.try_connection(peer.ip()) else {
            drop(stream);
            gateway.audit_rejected_connection(peer, Instant::now(), Deny::TooManyConnections, 0);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let conn = Conn {
            gateway: gateway.clone(),
            pool: pool.clone(),
            front: front.clone(),
            peer,
            limits,
            stopping: stopping.clone(),
        };
        let drained = drained.clone();
        tokio::spawn(async move {
            conn.run(stream).await;
            drop(slot);
            drop(permit);
            drop(drained);
        });
    }
    let _ = stop.send(true);
    drop(drained);
    if tokio::time::timeout(limits.drain_timeout, all_drained.recv())
        .await
        .is_err()
    {
        tracing::warn!("drain timed out; closing remaining connections");
    }
    Ok(())
}

/// One accepted connection.
struct Conn {
    gateway: Arc<Gateway>,
    pool: Arc<Pool>,
    front: Arc<Frontend>,
    peer: SocketAddr,
    limits: ConnLimits,
    stopping: signal::Receiver<bool>,
}

impl Conn {
    async fn run(self, stream: TcpStream) {
        let http2 = self.front.http2.load_full();
        let Some(acceptor) = self.front.tls.as_ref().map(tls::Acceptor::current) else {
            let h2 = http2.prior_knowledge
                && http2::starts_with_preface(&stream, self.limits.header_read_timeout).await;
            return self.serve_io(stream, h2, &http2).await;
        };
        // The handshake is bounded like a request head: a client that opens a socket
        // and never finishes its hello must not hold a connection slot.
        match tokio::time::timeout(self.limits.header_read_timeout, acceptor.accept(stream)).await {
            Ok(Ok(tls)) => {
                let h2 = tls.get_ref().1.alpn_protocol() == Some(tls::ALPN_H2);
                self.serve_io(tls, h2 && http2.enabled, &http2).await
            }
            Ok(Err(e)) => {
                crate::metrics::metrics().tls_handshake_failures.inc();
                tracing::debug!(error = %e, peer = %self.peer, "TLS handshake failed");
            }
            Err(_) => {
                crate::metrics::metrics().tls_handshake_failures.inc();
                tracing::debug!(peer = %self.peer, "TLS handshake timed out");
            }
        }
    }

    async fn serve_io<IO>(self, io: IO, h2: bool, http2: &Http2Config)
    where
        IO: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let (io, watch) = Watched::new(io);
        let (gw, pool, front, peer) = (
            self.gateway.clone(),
            self.pool.clone(),
            self.front.clone(),
            self.peer,
        );
        let svc = service_fn(move |req: Request<Incoming>| {
            let (gw, pool, front) = (gw.clone(), pool.clone(), front.clone());
            async move {
                // Shed before anything else: a request over the limit costs one atomic
                // add and a small response, never a body read or an HMAC.
                let Some(slot) = front.overload.try_request() else {
                    let refusal = Refusal::overloaded(front.overload.retry_after_secs());
                    return Ok(gw.refuse_early(peer, req, refusal));
                };
                let mut req = req;
                if let Err(deny) = http2::check_request(&mut req) {
                    return Ok(gw.refuse_early(peer, req, deny.into()));
                }
                let resp = gw.handle(pool, peer, req).await;
                drop(slot);
                resp
            }
        });
        if h2 {
            let conn = http2::builder(http2, self.limits).serve_connection(TokioIo::new(io), svc);
            let idle = Some((&*watch, self.limits.header_read_timeout));
            let close =
                |c: Pin<&mut _>| hyper::server::conn::http2::Connection::graceful_shutdown(c);
            if let Err(e) = drive(conn, close, self.stopping.clone(), idle).await {
                tracing::debug!(error = %e, peer = %self.peer, "HTTP/2 connection ended with error");
            }
            return;
        }
        let mut builder = http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .keep_alive(true)
            .header_read_timeout(self.limits.header_read_timeout)
            .max_header_size(self.limits.max_header_bytes)
            .max_headers(100);
        let conn = builder.serve_connection(TokioIo::new(io), svc);
        let close = |c: Pin<&mut _>| hyper::server::conn::http1::Connection::graceful_shutdown(c);
        if let Err(e) = drive(conn, close, self.stopping.clone(), None).await {
            match refused_request(&e, watch.mid_request()) {
                Some((deny, status)) => self.gateway.audit_rejected_connection(
                    self.peer,
                    watch.request_arrived(),
                    deny,
                    status,
                ),
                None => {
                    tracing::debug!(error = %e, peer = %self.peer, "connection ended with error")
                }
            }
        }
    }
}

/// Runs a connection to its end; on shutdown (and, with `idle`, once nothing has arrived
/// for that long) it is asked to close gracefully: requests under way finish, no new ones
/// start.
///
/// `close` is the connection's own `graceful_shutdown` (hyper's two connection types
/// share no public trait for it).
async fn drive<C, E>(
    conn: C,
    close: impl Fn(Pin<&mut C>),
    mut stopping: signal::Receiver<bool>,
    idle: Option<(&watch::RequestWatch, Duration)>,
) -> Result<(), E>
where
    C: Future<Output = Result<(), E>>,
{
    tokio::pin!(conn);
    let mut closing = false;
    let check_every = idle.map_or(Duration::from_secs(3600), |(_, d)| {
        (d / 4).max(Duration::from_millis(50))
    });
    let mut tick = tokio::time::interval(check_every);
    loop {
        tokio::select! {
            r = conn.as_mut() => return r,
            _ = stopping.wait_for(|s| *s), if !closing => {
                closing = true;
                close(conn.as_mut());
            }
            _ = tick.tick(), if idle.is_some() && !closing => {
                if let Some((watch, after)) = idle {
                    if watch.read_idle() >= after {
                        closing = true;
                        close(conn.as_mut());
                    }
                }
            }
        }
    }
}

/// The request hyper refused when a connection ends with `err`, and the status hyper
/// answered it with (0: it closed the connection without answering); `None` when the
/// connection just ended (the client hung up between or in the middle of requests, an
/// I/O error, shutdown), which is not a refusal and gets no audit line.
///
/// What hyper 1.x does, from its source (`proto/h1/conn.rs` `on_read_head_error` and
/// `on_parse_error`, `proto/h1/role.rs` `Server::on_error`): a parse error while no
/// response is under way is answered with a bare status line and headers (no body, and
/// no hook to supply one), then the connection is closed and the error returned —
/// 400 for a bad method, target, version or header (NUL, bare CR, obs-fold, conflicting
/// or invalid `Content-Length`, bad `Transfer-Encoding`), 431 for a head over
/// `max_header_size` or over `max_headers` headers (and, oddly, a `Content-Length` near
/// `u64::MAX`), 414 for a target over 65 534 bytes (reachable only when the head limit is
/// larger). An HTTP/2 preface gets no answer. The header read timeout gets no answer
/// either: hyper returns the error at once and the connection is dropped. It also fires
/// on an idle keep-alive connection, the same way, so it is a refusal only when
/// `mid_request` (bytes of a request arrived after the last response was written).
/// A client that closes mid-head gets `IncompleteMessage`: it went away, nobody refused it.
fn refused_request(err: &hyper::Error, mid_request: bool) -> Option<(Deny, u16)> {
    if err.is_parse_version_h2() {
        return Some((Deny::MalformedRequest, 0));
    }
    if err.is_parse_too_large() {
        // The predicate covers both `Parse::TooLarge` (431) and `Parse::UriTooLong` (414);
        // only the message tells them apart ("URI too long" in hyper's error.rs). The
        // parsing tests pin this against the hyper in Cargo.lock.
        if err.to_string().contains("URI") {
            return Some((Deny::UriTooLong, 414));
        }
        return Some((Deny::HeadersTooLarge, 431));
    }
    if err.is_parse() {
        // Includes `Parse::Internal` (a hyper bug, answered with nothing in release
        // builds), which no predicate tells apart; logged as 400 like the rest.
        return Some((Deny::MalformedRequest, 400));
    }
    if err.is_timeout() && mid_request {
        return Some((Deny::HeaderTimeout, 0));
    }
    None
}
