//! The audit log: one JSON line per request, written by a dedicated thread so the request
//! path only pays for a channel send. The queue is bounded and a full queue makes requests
//! wait rather than drop events: losing the record of a denied attack is worse than
//! slowing down. Secrets, signatures, tokens and query strings are never part of an event.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::Path;
use std::thread;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use serde::Serialize;
use tokio::sync::mpsc;

/// Events that may wait in memory before the writer catches up.
const QUEUE: usize = 65_536;

/// How long the writer lets a batch gather while events keep coming.
const BATCH_PAUSE: Duration = Duration::from_millis(2);

/// One request's outcome.
#[derive(Debug, Clone, Serialize)]
pub struct AuditEvent {
    /// RFC 3339 time the request arrived.
    pub ts: String,
    /// Request id (also in the error body and the assertion's `jti`).
    pub request_id: String,
    /// Key id, once the key is known.
    pub key_id: Option<String>,
    /// Account, once the key is known.
    pub account: Option<String>,
    /// Client IP.
    pub client_ip: String,
    /// Dialect name.
    pub dialect: &'static str,
    /// Classified action, once known.
    pub action: Option<&'static str>,
    /// `allow` or `deny`.
    pub decision: &'static str,
    /// The deny code, or for allowed requests `null`.
    pub code: Option<&'static str>,
    /// HTTP status returned to the client.
    pub status: u16,
    /// Time from arrival to response headers (µs).
    pub latency_us: u64,
    /// HTTP method.
    pub method: String,
    /// Request path (truncated to 256 bytes; never the query, which may hold signatures).
    pub path: String,
}

/// A change made by an operator (freeze, key suspension, ...), with who and why.
#[derive(Debug, Clone, Serialize)]
pub struct AdminAudit {
    /// RFC 3339 time of the change.
    pub ts: String,
    /// Always `admin`: tells these lines apart from request lines.
    pub kind: &'static str,
    /// Who.
    pub actor: String,
    /// What (`freeze`, `unfreeze`, `key_suspend`, `key_resume`, `key_revoke`).
    pub action: String,
    /// What it applied to.
    pub target: String,
    /// Why.
    pub reason: String,
}

/// One line of the audit log.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum AuditLine {
    /// A request's outcome.
    Request(AuditEvent),
    /// An operator's change.
    Admin(AdminAudit),
}

/// RFC 3339 with milliseconds, UTC.
pub fn timestamp(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

/// Sends events to the writer thread.
#[derive(Clone)]
pub struct AuditSink {
    tx: mpsc::Sender<AuditLine>,
}

/// Joins the writer thread at shutdown so queued events reach the file.
pub struct AuditHandle {
    thread: thread::JoinHandle<()>,
}

impl AuditHandle {
    /// Waits for the writer to drain; call after every [`AuditSink`] is dropped.
    pub fn join(self) {
        let _ = self.thread.join();
    }
}

impl AuditSink {
    /// Opens `path` for appending and starts the writer.
    pub fn start(path: &Path) -> anyhow::Result<(AuditSink, AuditHandle)> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("opening audit log {}", path.display()))?;
        let (tx, rx) = mpsc::channel(QUEUE);
        let thread = thread::Builder::new()
            .name("keyguard-audit".into())
            .spawn(move || write_loop(file, rx))?;
        Ok((AuditSink { tx }, AuditHandle { thread }))
    }

    /// Queues a request event; waits if the queue is full.
    pub async fn record(&self, event: AuditEvent) {
        self.record_line(AuditLine::Request(event)).await
    }

    /// Queues a line from a thread outside the runtime; blocks if the queue is full.
    pub fn blocking_record_line(&self, line: AuditLine) {
        let _ = self.tx.blocking_send(line);
    }

    /// Queues any line; waits if the queue is full.
    pub async fn record_line(&self, event: AuditLine) {
        if let Err(mpsc::error::TrySendError::Full(event)) = self.tx.try_send(event) {
            let _ = self.tx.send(event).await;
        }
    }
}

fn write_loop(file: File, mut rx: mpsc::Receiver<AuditLine>) {
    let mut out = BufWriter::with_capacity(256 * 1024, file);
    let mut last_sync = std::time::Instant::now();
    loop {
        let first = match rx.try_recv() {
            Ok(line) => line,
            Err(mpsc::error::TryRecvError::Empty) => match rx.blocking_recv() {
                Some(line) => line,
                None => break,
            },
            Err(mpsc::error::TryRecvError::Disconnected) => break,
        };
        let mut next = Some(first);
        while let Some(line) = next {
            if let Err(e) = serde_json::to_writer(&mut out, &line)
                .map_err(std::io::Error::from)
                .and_then(|_| out.write_all(b"\n"))
            {
                tracing::error!(error = %e, "audit write failed");
            }
            next = rx.try_recv().ok();
        }
        // Handing the batch to the OS makes it survive a process crash; fsync once a
        // second bounds what a power loss could take.
        if let Err(e) = out.flush() {
            tracing::error!(error = %e, "audit flush failed");
        }
        if last_sync.elapsed() >= Duration::from_secs(1) {
            let _ = out.get_ref().sync_data();
            last_sync = std::time::Instant::now();
        }
        // Let the next batch gather instead of parking on the queue: a parked writer
        // costs every request a futex wake-up, which under load was a visible share of
        // the gateway's CPU. An idle queue still parks (above), so idle costs nothing.
        std::thread::sleep(BATCH_PAUSE);
    }
    let _ = out.flush();
    let _ = out.get_ref().sync_all();
}
