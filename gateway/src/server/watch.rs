//! The client's byte flow, watched to tell a stalled request from an idle connection.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The client's socket, watched for where the client is in a request. hyper reports a
/// header read timeout the same way whether the client stalled halfway through a request
/// head (slowloris, a refusal to audit) or left an idle keep-alive connection open
/// (nothing to audit), and says nothing about when a refused request began; the byte flow
/// tells both. Known blind spot: a request head that arrived in the same read as the
/// previous request and then stalls looks idle, so its timeout is not audited.
pub(super) struct Watched<IO> {
    io: IO,
    watch: Arc<RequestWatch>,
}

/// What [`Watched`] saw, shared with the task that awaits the connection.
pub(super) struct RequestWatch {
    accepted: Instant,
    /// Bytes arrived since the last response bytes were written: a request is under way.
    pending: AtomicBool,
    /// When the first byte of the latest request arrived (µs after `accepted`).
    arrived_us: AtomicU64,
    /// When bytes last arrived (µs after `accepted`): an HTTP/2 connection with no
    /// stream open and nothing read for the idle timeout is closed.
    last_read_us: AtomicU64,
}

impl<IO> Watched<IO> {
    pub(super) fn new(io: IO) -> (Watched<IO>, Arc<RequestWatch>) {
        let watch = Arc::new(RequestWatch {
            accepted: Instant::now(),
            pending: AtomicBool::new(false),
            arrived_us: AtomicU64::new(0),
            last_read_us: AtomicU64::new(0),
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
        let now_us = self.accepted.elapsed().as_micros() as u64;
        self.last_read_us.store(now_us, Ordering::Relaxed);
        if !self.pending.load(Ordering::Relaxed) {
            self.pending.store(true, Ordering::Relaxed);
            self.arrived_us.store(now_us, Ordering::Relaxed);
        }
    }

    fn wrote(&self) {
        self.pending.store(false, Ordering::Relaxed);
    }

    /// Part of a request arrived and has not been answered.
    pub(super) fn mid_request(&self) -> bool {
        self.pending.load(Ordering::Relaxed)
    }

    /// How long since bytes last arrived.
    pub(super) fn read_idle(&self) -> Duration {
        let last = Duration::from_micros(self.last_read_us.load(Ordering::Relaxed));
        self.accepted.elapsed().saturating_sub(last)
    }

    /// When the latest request began to arrive.
    pub(super) fn request_arrived(&self) -> Instant {
        self.accepted + Duration::from_micros(self.arrived_us.load(Ordering::Relaxed))
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Watched<IO> {
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

impl<IO: AsyncWrite + Unpin> AsyncWrite for Watched<IO> {
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
