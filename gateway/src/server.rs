//! Accepting connections: the outermost stage of the pipeline. Limits here protect
//! everything behind them: a connection cap (excess clients wait in the kernel backlog),
//! a header read timeout and header size cap (slowloris, header floods), and graceful
//! shutdown that lets in-flight requests finish and their audit events reach the file.
//!
//! Requests that hyper's HTTP/1 parser refuses never reach the pipeline; hyper answers
//! them itself (see [`refused_request`]) and the connection ends with an error, which is
//! turned into the request's audit line here, so that they too are logged with a code.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use keyguard_policy::Deny;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use crate::proxy::Gateway;
use crate::upstream::pool::Pool;

/// Connection-level limits.
#[derive(Debug, Clone, Copy)]
pub struct ConnLimits {
    /// Simultaneous connections.
    pub max_connections: usize,
    /// Time allowed for a request's headers to arrive.
    pub header_read_timeout: Duration,
    /// Largest request head (bytes).
    pub max_header_bytes: usize,
    /// How long shutdown waits for in-flight requests.
    pub drain_timeout: Duration,
}

/// Binds `n` listening sockets to `addr` with `SO_REUSEPORT`, one per worker, so the
/// kernel spreads new connections over the workers and each accepts on its own thread.
///
/// `SO_REUSEPORT` would also let a second process of the same user bind the same port and
/// take a share of the connections, silently; so the address is first bound without it,
/// which fails if anyone already listens there. With port 0 the first socket's port is
/// used for the others.
pub fn bind_workers(addr: SocketAddr, n: usize) -> io::Result<Vec<std::net::TcpListener>> {
    let probe = std::net::TcpListener::bind(addr)?;
    let addr = probe.local_addr()?;
    drop(probe);
    (0..n.max(1))
        .map(|_| {
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
        })
        .collect()
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
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let graceful = GracefulShutdown::new();
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .keep_alive(true)
        .header_read_timeout(limits.header_read_timeout)
        .max_header_size(limits.max_header_bytes)
        .max_headers(100);
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
        let _ = stream.set_nodelay(true);
        let (gw, pool) = (gateway.clone(), pool.clone());
        let svc = service_fn(move |req| gw.clone().handle(pool.clone(), peer, req));
        let (io, watch) = Watched::new(stream);
        let conn = graceful.watch(builder.serve_connection(TokioIo::new(io), svc));
        let gw = gateway.clone();
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                match refused_request(&e, watch.mid_request()) {
                    Some((deny, status)) => {
                        gw.audit_rejected_connection(peer, watch.request_arrived(), deny, status)
                    }
                    None => tracing::debug!(error = %e, %peer, "connection ended with error"),
                }
            }
            drop(permit);
        });
    }
    if tokio::time::timeout(limits.drain_timeout, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("drain timed out; closing remaining connections");
    }
    Ok(())
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

/// The client's socket, watched for where the client is in a request. hyper reports a
/// header read timeout the same way whether the client stalled halfway through a request
/// head (slowloris, a refusal to audit) or left an idle keep-alive connection open
/// (nothing to audit), and says nothing about when a refused request began; the byte flow
/// tells both. Known blind spot: a request head that arrived in the same read as the
/// previous request and then stalls looks idle, so its timeout is not audited.
struct Watched {
    io: TcpStream,
    watch: Arc<RequestWatch>,
}

/// What [`Watched`] saw, shared with the task that awaits the connection.
struct RequestWatch {
    accepted: Instant,
    /// Bytes arrived since the last response bytes were written: a request is under way.
    pending: AtomicBool,
    /// When the first byte of the latest request arrived (µs after `accepted`).
    arrived_us: AtomicU64,
}

impl Watched {
    fn new(io: TcpStream) -> (Watched, Arc<RequestWatch>) {
        let watch = Arc::new(RequestWatch {
            accepted: Instant::now(),
            pending: AtomicBool::new(false),
            arrived_us: AtomicU64::new(0),
        });
        (
            Watched {
                io,
                watch: watch.clone(),
            },
            watch,
        )
    }
}

impl RequestWatch {
    // One task polls the connection and reads these after it ends, so relaxed suffices.
    fn read(&self) {
        if !self.pending.load(Ordering::Relaxed) {
            self.pending.store(true, Ordering::Relaxed);
            let us = self.accepted.elapsed().as_micros() as u64;
            self.arrived_us.store(us, Ordering::Relaxed);
        }
    }

    fn wrote(&self) {
        self.pending.store(false, Ordering::Relaxed);
    }

    /// Part of a request arrived and has not been answered.
    fn mid_request(&self) -> bool {
        self.pending.load(Ordering::Relaxed)
    }

    /// When the latest request began to arrive.
    fn request_arrived(&self) -> Instant {
        self.accepted + Duration::from_micros(self.arrived_us.load(Ordering::Relaxed))
    }
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.watch.read();
        }
        polled
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.watch.wrote();
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.watch.wrote();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
