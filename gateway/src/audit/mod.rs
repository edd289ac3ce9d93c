//! The audit log: one JSON line per request, written before the response is released, so
//! an answered request always has its line (see [`AuditSink`]). Secrets, signatures,
//! tokens and query strings are never part of an event.
//!
//! # Layout
//! - this file: the line types ([`AuditEvent`], [`AdminAudit`]) and [`AuditSink`], the
//!   request path's handle.
//! - [`writer`]: the writer thread: batches, retries, `fdatasync`, availability.
//! - [`rotate`]: rotation by size and age, and pruning of old files.
//! - [`summary`]: per-network budgets that fold floods of pre-auth refusals into
//!   `"kind":"summary"` lines.

pub mod rotate;
pub mod summary;
mod writer;

use std::cell::RefCell;
use std::net::IpAddr;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use parking_lot::Mutex;
use serde::Serialize;

use crate::batch::{Joined, Slot};
use crate::json::Object;

/// One request's outcome. Borrowed from the request's context: it is written straight
/// into the log line, never kept.
#[derive(Debug, Clone, Copy)]
pub struct AuditEvent<'a> {
    /// When the request arrived (written as RFC 3339 with milliseconds, UTC).
    pub ts: SystemTime,
    /// Request id (also in the error body and the assertion's `jti`).
    pub request_id: &'a str,
    /// Key id, once the key is known.
    pub key_id: Option<&'a str>,
    /// Account, once the key is known.
    pub account: Option<&'a str>,
    /// Client IP.
    pub client_ip: &'a str,
    /// Dialect name.
    pub dialect: &'static str,
    /// Classified action, once known.
    pub action: Option<&'static str>,
    /// `allow`, `deny` or `would_deny`.
    pub decision: &'static str,
    /// The deny code, or for allowed requests `null`.
    pub code: Option<&'static str>,
    /// HTTP status returned to the client (0: none was).
    pub status: u16,
    /// Time from arrival to response headers (µs).
    pub latency_us: u64,
    /// HTTP method.
    pub method: &'a str,
    /// Request path (truncated to 256 bytes; never the query, which may hold signatures).
    pub path: &'a str,
}

impl AuditEvent<'_> {
    /// Appends the event as one JSON object (no newline).
    pub fn write_json(&self, buf: &mut Vec<u8>) {
        let mut o = Object::new(buf);
        o.raw_with("ts", |b| push_timestamp(b, self.ts))
            .str("request_id", self.request_id)
            .opt_str("key_id", self.key_id)
            .opt_str("account", self.account)
            .str("client_ip", self.client_ip)
            .str("dialect", self.dialect)
            .opt_str("action", self.action)
            .str("decision", self.decision)
            .opt_str("code", self.code)
            .u64("status", u64::from(self.status))
            .u64("latency_us", self.latency_us)
            .str("method", self.method)
            .str("path", self.path);
        o.end();
    }
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
#[derive(Debug, Clone)]
pub enum AuditLine<'a> {
    /// A request's outcome.
    Request(AuditEvent<'a>),
    /// An operator's change.
    Admin(AdminAudit),
}

/// RFC 3339 with milliseconds, UTC.
pub fn timestamp(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

thread_local! {
    /// The formatted second of the last timestamp written on this thread: requests in the
    /// same second share everything up to the milliseconds.
    static SECOND: RefCell<(u64, [u8; 19])> = const { RefCell::new((u64::MAX, [0; 19])) };
}

/// Appends `t` as a JSON string, RFC 3339 with milliseconds, UTC, exactly as
/// [`timestamp`] formats it.
pub fn push_timestamp(buf: &mut Vec<u8>, t: SystemTime) {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let (secs, millis) = (since.as_secs(), since.subsec_millis());
    SECOND.with_borrow_mut(|(cached, text)| {
        if *cached != secs {
            let full = humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(secs))
                .to_string();
            // "YYYY-MM-DDTHH:MM:SSZ": keep all but the zone.
            text.copy_from_slice(&full.as_bytes()[..19]);
            *cached = secs;
        }
        buf.push(b'"');
        buf.extend_from_slice(&text[..]);
        buf.push(b'.');
        buf.push(b'0' + (millis / 100) as u8);
        buf.push(b'0' + (millis / 10 % 10) as u8);
        buf.push(b'0' + (millis % 10) as u8);
        buf.extend_from_slice(b"Z\"");
    });
}

/// Appends lines to the audit log. Cheap to clone.
///
/// Lines go to the writer thread ([`writer`]); [`AuditSink::record`] waits until its line
/// is in the kernel before the request's response is released, so a gateway crash never
/// loses the line of an answered request, and the writer's `fdatasync` every
/// `audit.fsync_interval` bounds what a power cut can take. The wait is bounded by
/// `audit.write_timeout`: a full or stalled disk delays answers by at most that, never
/// blocks a worker, and makes [`AuditSink::available`] false, which refuses trades and
/// withdrawals (`audit_unavailable`) until the writer succeeds again. While the log is
/// unavailable requests do not wait at all: their lines queue (up to
/// `audit.queue_lines`, then are dropped and counted) and reads go on.
#[derive(Clone)]
pub struct AuditSink {
    shared: Arc<Shared>,
}

struct Shared {
    tx: mpsc::SyncSender<writer::Job>,
    health: Arc<writer::Health>,
    summaries: Arc<summary::Summaries>,
    write_timeout: Duration,
    last_drop_log: Mutex<Option<std::time::Instant>>,
}

/// Everything the audit writer needs from the config.
#[derive(Debug, Clone)]
pub struct AuditSettings {
    /// The log file.
    pub path: std::path::PathBuf,
    /// How often written lines are forced to disk.
    pub fsync_interval: Duration,
    /// Rotation by size and age, and how many rotated files to keep.
    pub rotate: rotate::RotatePolicy,
    /// How long a request waits for its line, and how long one write may take before
    /// the log counts as stalled.
    pub write_timeout: Duration,
    /// Lines that may wait for the writer.
    pub queue_lines: usize,
    /// Own lines per client network and second for refusals before authentication.
    pub preauth_lines_per_sec: u32,
    /// The dialect, for summary lines.
    pub dialect: &'static str,
}

impl AuditSettings {
    /// From the `[audit]` section.
    pub fn from_config(cfg: &keyguard_config::AuditConfig, dialect: &'static str) -> Self {
        AuditSettings {
            path: cfg.path.path().to_owned(),
            fsync_interval: cfg.fsync_interval,
            rotate: rotate::RotatePolicy {
                max_bytes: cfg.rotate_bytes,
                max_age: cfg.rotate_interval,
                keep: cfg.max_files,
            },
            write_timeout: cfg.write_timeout,
            queue_lines: cfg.queue_lines,
            preauth_lines_per_sec: cfg.preauth_lines_per_sec,
            dialect,
        }
    }

    /// Defaults for `path` (tests).
    pub fn at(path: &Path) -> Self {
        AuditSettings {
            path: path.to_owned(),
            fsync_interval: Duration::from_secs(1),
            rotate: rotate::RotatePolicy {
                max_bytes: 0,
                max_age: Duration::from_secs(86_400),
                keep: 0,
            },
            write_timeout: Duration::from_secs(2),
            queue_lines: 65_536,
            preauth_lines_per_sec: 20,
            dialect: "zaif",
        }
    }
}

/// Stops the writer at shutdown, after a final `fsync`.
pub struct AuditHandle {
    health: Arc<writer::Health>,
    thread: thread::JoinHandle<()>,
}

/// How long shutdown waits for the writer to finish (a stalled disk may never let it).
const JOIN_TIMEOUT: Duration = Duration::from_secs(10);

impl AuditHandle {
    /// Writes what is queued, syncs the log to disk and stops the writer; gives up after
    /// 10 s on a disk that does not answer.
    pub fn join(self) {
        self.health.stop.store(true, Ordering::Release);
        let deadline = std::time::Instant::now() + JOIN_TIMEOUT;
        while !self.thread.is_finished() {
            if std::time::Instant::now() > deadline {
                tracing::error!("audit writer did not finish within 10 s (stalled disk?); queued lines are lost");
                return;
            }
            thread::sleep(Duration::from_millis(10));
        }
        let _ = self.thread.join();
    }
}

impl AuditSink {
    /// Opens `path` for appending and starts the writer, with default settings.
    pub fn start(path: &Path) -> anyhow::Result<(AuditSink, AuditHandle)> {
        AuditSink::start_with(AuditSettings::at(path))
    }

    /// Opens the log and starts the writer.
    pub fn start_with(settings: AuditSettings) -> anyhow::Result<(AuditSink, AuditHandle)> {
        let path = settings.path.clone();
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let (tx, rx) = mpsc::sync_channel(settings.queue_lines);
        let health = Arc::new(writer::Health::new(settings.write_timeout));
        let summaries = Arc::new(summary::Summaries::new(settings.preauth_lines_per_sec));
        let w = writer::Writer::open(
            writer::WriterSettings {
                path: path.clone(),
                fsync_interval: settings.fsync_interval,
                rotate: settings.rotate,
                dialect: settings.dialect,
            },
            rx,
            health.clone(),
            summaries.clone(),
        )
        .with_context(|| format!("opening audit log {}", path.display()))?;
        let thread = thread::Builder::new()
            .name("keyguard-audit".into())
            .spawn(move || w.run())?;
        let shared = Arc::new(Shared {
            tx,
            health: health.clone(),
            summaries,
            write_timeout: settings.write_timeout,
            last_drop_log: Mutex::new(None),
        });
        Ok((AuditSink { shared }, AuditHandle { health, thread }))
    }

    /// Whether the log takes lines: false after a failed write (until one succeeds) and
    /// while a write or sync has taken longer than `audit.write_timeout`. Trades and
    /// withdrawals are refused while it is false.
    pub fn available(&self) -> bool {
        self.shared.health.available()
    }

    /// `audit.write_timeout`: how long a request waits for the data disk, for its audit
    /// line and for any other state that must be durable before it is forwarded.
    pub fn write_timeout(&self) -> Duration {
        self.shared.write_timeout
    }

    /// Appends a request event and returns once it is written (or after
    /// `audit.write_timeout`, or at once while the log is unavailable).
    ///
    /// `pre_auth` is the client's IP when the request was refused before it was
    /// authenticated: such lines are subject to the per-network budget (see [`summary`]).
    pub async fn record(&self, event: AuditEvent<'_>, pre_auth: Option<IpAddr>) {
        crate::admin::activity::tap(&event);
        if let (Some(ip), Some(code)) = (pre_auth, event.code) {
            if !self.shared.summaries.admit(ip, code, event.ts) {
                return;
            }
        }
        if !self.available() {
            self.enqueue(serialize(&AuditLine::Request(event)), 1, None);
            return;
        }
        // The lines of this worker's turn go to the writer together (see `crate::batch`).
        let owner = Arc::as_ptr(&self.shared) as usize;
        let joined = BATCH.with(|slot| {
            slot.join(owner, |batch: &mut LineBatch| {
                event.write_json(&mut batch.bytes);
                batch.bytes.push(b'\n');
                batch.lines += 1;
            })
        });
        let done = match joined {
            Some(Joined::Member(done)) => done,
            Some(Joined::Leader(leader)) => {
                leader
                    .close(|batch: LineBatch, done| {
                        let ack = writer::Ack::Batch(done.clone());
                        if !self.enqueue(batch.bytes, batch.lines, Some(ack)) {
                            done.finish(false);
                        }
                    })
                    .await
            }
            None => {
                // Another sink's batch is open on this thread (only in tests): alone.
                let done = crate::batch::Completion::new();
                let line = serialize(&AuditLine::Request(event));
                if !self.enqueue(line, 1, Some(writer::Ack::Batch(done.clone()))) {
                    return;
                }
                done
            }
        };
        match tokio::time::timeout(self.shared.write_timeout, done.wait()).await {
            Ok(true) => {}
            // Failed: the writer has marked the log unavailable already.
            Ok(false) => {}
            Err(_) => {
                crate::metrics::metrics().audit_ack_timeouts.inc();
            }
        }
    }

    /// Queues a request event without waiting (refusals hyper made before a request ran:
    /// there is no response left to hold back).
    pub fn record_detached(&self, event: AuditEvent<'_>, pre_auth: Option<IpAddr>) {
        crate::admin::activity::tap(&event);
        if let (Some(ip), Some(code)) = (pre_auth, event.code) {
            if !self.shared.summaries.admit(ip, code, event.ts) {
                return;
            }
        }
        self.enqueue(serialize(&AuditLine::Request(event)), 1, None);
    }

    /// Appends any line from a plain thread and waits until it is written; `false` if it
    /// was not within `audit.write_timeout` (it may still be written later).
    pub fn record_line(&self, line: &AuditLine<'_>) -> bool {
        let (tx, rx) = mpsc::sync_channel(1);
        if !self.enqueue(serialize(line), 1, Some(writer::Ack::Blocking(tx))) {
            return false;
        }
        matches!(rx.recv_timeout(self.shared.write_timeout), Ok(true))
    }

    /// Watches availability and calls `changed(available)` on every change (within
    /// 200 ms), keeping the `keyguard_audit_available` gauge in step. Runs until the
    /// sink's writer stops.
    pub async fn watch(self, changed: impl Fn(bool)) {
        let mut was = true;
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        loop {
            tick.tick().await;
            if self.shared.health.stop.load(Ordering::Acquire) {
                return;
            }
            let now = self.available();
            if now != was {
                was = now;
                crate::metrics::metrics()
                    .audit_available
                    .set(i64::from(now));
                changed(now);
            }
        }
    }

    /// Queues `bytes`, which hold `lines` whole lines.
    fn enqueue(&self, bytes: Vec<u8>, lines: usize, ack: Option<writer::Ack>) -> bool {
        let m = crate::metrics::metrics();
        // Counted before the send: the writer may write (and subtract) it at once.
        m.audit_queue_lines.inc_by(lines as i64);
        match self.shared.tx.try_send(writer::Job {
            line: bytes,
            lines,
            ack,
        }) {
            Ok(()) => true,
            Err(_) => {
                m.audit_queue_lines.dec_by(lines as i64);
                m.audit_dropped_lines.inc_by(lines as u64);
                let mut last = self.shared.last_drop_log.lock();
                if last.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
                    *last = Some(std::time::Instant::now());
                    tracing::error!(
                        "audit queue full (the disk is failing or stalled): lines are dropped; see keyguard_audit_dropped_lines_total"
                    );
                }
                false
            }
        }
    }
}

/// The request lines of one worker's turn.
#[derive(Default)]
struct LineBatch {
    bytes: Vec<u8>,
    lines: usize,
}

thread_local! {
    static BATCH: Slot<LineBatch> = Slot::default();
}

/// One line's bytes, newline included.
fn serialize(line: &AuditLine<'_>) -> Vec<u8> {
    let mut buf = Vec::with_capacity(384);
    match line {
        AuditLine::Request(event) => event.write_json(&mut buf),
        // Serializing strings into a Vec cannot fail.
        AuditLine::Admin(admin) => {
            let _ = serde_json::to_writer(&mut buf, admin);
        }
    }
    buf.push(b'\n');
    buf
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(id: &str) -> AuditEvent<'_> {
        AuditEvent {
            ts: SystemTime::now(),
            request_id: id,
            key_id: Some("kg_1"),
            account: Some("alice"),
            client_ip: "127.0.0.2",
            dialect: "zaif",
            action: Some("read"),
            decision: "allow",
            code: None,
            status: 200,
            latency_us: 10,
            method: "POST",
            path: "/tapi",
        }
    }

    #[test]
    fn timestamps_match_humantime_and_lines_are_json() {
        for ms in [
            0u64,
            999,
            1_000,
            1_764_624_464_007,
            1_764_624_464_999,
            1_764_624_465_010,
        ] {
            let t = UNIX_EPOCH + Duration::from_millis(ms);
            let mut buf = Vec::new();
            push_timestamp(&mut buf, t);
            assert_eq!(
                String::from_utf8(buf).unwrap(),
                format!("\"{}\"", timestamp(t)),
                "{ms}"
            );
        }
        let mut buf = Vec::new();
        let mut e = event("r\"1");
        e.code = Some("ip_not_allowed");
        e.key_id = None;
        e.write_json(&mut buf);
        let v: serde_json::Value = serde_json::from_slice(&buf).unwrap();
        assert_eq!(v["request_id"], "r\"1");
        assert_eq!(v["key_id"], serde_json::Value::Null);
        assert_eq!(v["code"], "ip_not_allowed");
        assert_eq!(v["status"], 200);
        assert_eq!(v.as_object().unwrap().len(), 13, "{v}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn lines_are_in_the_file_when_record_returns_and_never_interleave() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let (sink, handle) = AuditSink::start(&path).unwrap();
        sink.record(event("req-0"), None).await;
        // Readable through another handle at once: acknowledged means written.
        let first = std::fs::read_to_string(&path).unwrap();
        assert_eq!(first.lines().count(), 1);
        assert!(first.contains("\"request_id\":\"req-0\""));

        let tasks: Vec<_> = (0..4)
            .map(|t| {
                let sink = sink.clone();
                tokio::spawn(async move {
                    for i in 0..500 {
                        sink.record(event(&format!("req-{}", 1 + t * 500 + i)), None)
                            .await;
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        // Every line is in the file before the writer is stopped.
        let text = std::fs::read_to_string(&path).unwrap();
        tokio::task::spawn_blocking(move || handle.join())
            .await
            .unwrap();
        let mut ids: Vec<String> = text
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).expect("whole JSON line");
                v["request_id"].as_str().unwrap().to_owned()
            })
            .collect();
        assert_eq!(ids.len(), 2001);
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), 2001, "every event exactly once");
        assert!(sink.available());
    }

    #[tokio::test]
    async fn pre_auth_floods_are_summarized_and_authenticated_lines_are_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let mut settings = AuditSettings::at(&path);
        settings.preauth_lines_per_sec = 3;
        let (sink, handle) = AuditSink::start_with(settings).unwrap();
        let ip: IpAddr = "127.0.0.2".parse().unwrap();
        let ts = SystemTime::now();
        for i in 0..50 {
            let mut e = event("x");
            e.ts = ts;
            e.decision = "deny";
            e.code = Some("rate_limited");
            let id = format!("flood-{i}");
            e.request_id = &id;
            sink.record(e, Some(ip)).await;
            let id = format!("auth-{i}");
            let mut a = event(&id);
            a.ts = ts;
            sink.record(a, None).await;
        }
        tokio::task::spawn_blocking(move || handle.join())
            .await
            .unwrap();
        let lines: Vec<serde_json::Value> = std::fs::read_to_string(&path)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let own = |p: &str| {
            lines
                .iter()
                .filter(|v| v["request_id"].as_str().is_some_and(|r| r.starts_with(p)))
                .count()
        };
        assert_eq!(own("auth-"), 50, "authenticated requests keep every line");
        assert_eq!(own("flood-"), 3, "the budget's worth of own lines");
        let summaries: Vec<_> = lines.iter().filter(|v| v["kind"] == "summary").collect();
        assert_eq!(summaries.len(), 1, "{summaries:?}");
        assert_eq!(summaries[0]["count"], 47);
        assert_eq!(summaries[0]["client_net"], "127.0.0.0/24");
        assert_eq!(summaries[0]["code"], "rate_limited");
    }

    /// A line the disk takes only part of is cut off again, so the log stays one JSON
    /// object per line. Re-runs itself in a child under a 512-byte file size limit
    /// (`ulimit -f 1`, SIGXFSZ ignored), so the kernel really cuts a write short; the
    /// requests are not held up, and the log says it is unavailable.
    #[test]
    fn a_short_write_leaves_no_fragment() {
        const CHILD: &str = "KEYGUARD_AUDIT_SHORT_WRITE_FILE";
        if let Ok(path) = std::env::var(CHILD) {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let (sink, handle) = AuditSink::start(Path::new(&path)).unwrap();
                for i in 0..20 {
                    sink.record(event(&format!("req-{i}")), None).await;
                }
                assert!(
                    !sink.available(),
                    "a failed write makes the log unavailable"
                );
                handle.join();
            });
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let child = std::process::Command::new("sh")
            .arg("-c")
            .arg("trap '' XFSZ; ulimit -f 1; exec \"$0\" audit::tests::a_short_write_leaves_no_fragment --exact --test-threads=1 --quiet")
            .arg(std::env::current_exe().unwrap())
            .env(CHILD, &path)
            .output()
            .unwrap();
        assert!(
            child.status.success(),
            "child: {}\n{}",
            String::from_utf8_lossy(&child.stdout),
            String::from_utf8_lossy(&child.stderr)
        );
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.len() > 200 && text.len() <= 512,
            "{} bytes",
            text.len()
        );
        assert!(text.ends_with('\n'), "a fragment was left: {text:?}");
        for l in text.lines() {
            serde_json::from_str::<serde_json::Value>(l).expect("whole JSON line");
        }
    }
}
