//! One worker's connections to the exchange.
//!
//! Each worker thread (a `current_thread` runtime) owns a [`Pool`]: idle HTTP/1
//! connections (over TLS for an `https://` upstream) made with `hyper::client::conn::http1`, whose connection tasks run on that
//! same runtime. A request takes an idle connection (or opens one), and the response body
//! ([`PooledBody`]) puts it back once the client has been sent the whole body, which is
//! the only point where an HTTP/1 connection is known to be clean for the next request.
//! A body dropped half-way closes its connection instead.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use tokio::net::TcpStream;

use super::Upstream;

type Sender = SendRequest<Full<Bytes>>;

/// Why a request got no response.
#[derive(Debug)]
pub enum SendError {
    /// The request was definitely not sent (no connection could be opened, or the
    /// connection refused it before a byte was written): it cannot have executed.
    NotSent(String),
    /// The exchange did not answer within the response timeout. It may have executed.
    Timeout,
    /// The connection failed after the request was (perhaps partly) written. It may have
    /// executed.
    Failed(hyper::Error),
}

/// A worker's idle connections to the upstream.
pub struct Pool {
    upstream: Arc<Upstream>,
    idle: Mutex<Vec<Sender>>,
}

impl Pool {
    /// An empty pool for `upstream`.
    pub fn new(upstream: Arc<Upstream>) -> Arc<Pool> {
        Arc::new(Pool {
            idle: Mutex::new(Vec::with_capacity(upstream.max_idle_per_worker.min(1024))),
            upstream,
        })
    }

    /// Sends `req` and waits for the response head (bounded by the response timeout).
    /// A request refused by a pooled connection that had gone stale (the exchange closed
    /// it while idle) before anything was written is retried once on a new connection.
    pub async fn send(
        self: &Arc<Self>,
        mut req: Request<Full<Bytes>>,
    ) -> Result<Response<PooledBody>, SendError> {
        loop {
            let (mut sender, reused) = match self.take_idle() {
                Some(s) => (s, true),
                None => (self.connect().await?, false),
            };
            let sent =
                tokio::time::timeout(self.upstream.response_timeout, sender.try_send_request(req))
                    .await;
            match sent {
                // Dropping the send future closes that connection, as it must: the
                // response may still arrive on it.
                Err(_) => return Err(SendError::Timeout),
                Ok(Ok(resp)) => {
                    return Ok(resp.map(|body| PooledBody {
                        inner: body,
                        back: Some((sender, self.clone())),
                    }))
                }
                Ok(Err(mut e)) => match e.take_message() {
                    Some(unsent) if reused => req = unsent,
                    Some(_) => return Err(SendError::NotSent(e.into_error().to_string())),
                    None => return Err(SendError::Failed(e.into_error())),
                },
            }
        }
    }

    fn take_idle(&self) -> Option<Sender> {
        let mut idle = self.idle.lock();
        // Most recently used first: it is the likeliest to be warm and still open.
        while let Some(s) = idle.pop() {
            if s.is_ready() {
                return Some(s);
            }
            // Closed (or, which `put` rules out, busy): let it go.
        }
        None
    }

    fn put(self: Arc<Self>, sender: Sender) {
        if sender.is_closed() {
            return;
        }
        if sender.is_ready() {
            self.keep(sender);
            return;
        }
        // The body's last frame arrived before the connection task marked itself ready
        // for the next request; it will in a moment, on this same thread.
        let mut sender = sender;
        tokio::spawn(async move {
            if sender.ready().await.is_ok() {
                self.keep(sender);
            }
        });
    }

    /// Adds a ready connection to the idle list, unless the list is full.
    fn keep(&self, sender: Sender) {
        let mut idle = self.idle.lock();
        if idle.len() < self.upstream.max_idle_per_worker {
            idle.push(sender);
        }
    }

    async fn connect(&self) -> Result<Sender, SendError> {
        let up = &self.upstream;
        let stream = tokio::time::timeout(
            up.connect_timeout,
            TcpStream::connect(up.authority.as_str()),
        )
        .await
        .map_err(|_| SendError::NotSent("connect timed out".into()))?
        .map_err(|e| SendError::NotSent(format!("connect: {e}")))?;
        let _ = stream.set_nodelay(true);
        match &up.tls {
            None => handshake(stream).await,
            Some(tls) => {
                // The TLS handshake shares the connect timeout: both are "opening a
                // connection", and a request that fails here was certainly not sent.
                let stream = tokio::time::timeout(
                    up.connect_timeout,
                    tls.connector
                        .current()
                        .connect(tls.server_name.clone(), stream),
                )
                .await
                .map_err(|_| SendError::NotSent("TLS handshake timed out".into()))?
                .map_err(|e| SendError::NotSent(format!("TLS handshake: {e}")))?;
                handshake(stream).await
            }
        }
    }
}

async fn handshake<IO>(io: IO) -> Result<Sender, SendError>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let (sender, conn) = http1::Builder::new()
        .handshake(TokioIo::new(io))
        .await
        .map_err(|e| SendError::NotSent(format!("handshake: {e}")))?;
    // The connection task runs on this worker's runtime, like the request itself.
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "upstream connection ended with an error");
        }
    });
    Ok(sender)
}

/// A response body from the upstream that returns its connection to the pool once it has
/// been read to the end.
pub struct PooledBody {
    inner: Incoming,
    back: Option<(Sender, Arc<Pool>)>,
}

impl PooledBody {
    fn release(&mut self) {
        if let Some((sender, pool)) = self.back.take() {
            pool.put(sender);
        }
    }
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(None) = polled {
            self.release();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for PooledBody {
    fn drop(&mut self) {
        // hyper does not poll a body that says it has ended (an empty one, say); anything
        // else dropped before its end leaves unread bytes on the connection.
        if self.inner.is_end_stream() {
            self.release();
        }
    }
}
