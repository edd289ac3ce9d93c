//! The audit writer thread: the only code that touches the audit file, so a full,
//! failing or stalled disk holds up this thread and never a runtime worker.
//!
//! Lines arrive over a bounded queue; each batch is appended with as few `write(2)`s as
//! the kernel allows, then every line in it is acknowledged (see
//! [`super::AuditSink::record`]). A write that fails (disk full, I/O error) is cut back
//! to its last whole line and retried until it succeeds, while the log counts as
//! unavailable; lines that do not fit in the queue meanwhile are dropped and counted.
//! `fdatasync` runs every `fsync_interval` on this thread too, and rotation happens here
//! between batches, so the current file only ever holds whole lines.

use std::fs::File;
use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use super::rotate::{self, RotatePolicy};
use super::summary::{Summaries, Summary};
use crate::metrics::metrics;

/// Largest batch handed to one `write(2)`.
const MAX_BATCH_BYTES: usize = 1 << 20;
/// How often a failed write is retried.
const RETRY_EVERY: Duration = Duration::from_millis(200);

/// Tells a waiting request (or the admin-events thread) that its line is in the kernel
/// (`true`) or that writing it failed for now (`false`; it stays queued).
pub(crate) enum Ack {
    /// The requests of one worker's turn.
    Batch(Arc<crate::batch::Completion>),
    /// A plain thread.
    Blocking(mpsc::SyncSender<bool>),
}

impl Ack {
    fn send(self, ok: bool) {
        match self {
            Ack::Batch(done) => done.finish(ok),
            Ack::Blocking(tx) => {
                let _ = tx.try_send(ok);
            }
        }
    }
}

/// Queued lines: one, or a worker's batch.
pub(crate) struct Job {
    /// Whole lines, each ending in a newline.
    pub(crate) line: Vec<u8>,
    /// How many (for the queue gauge).
    pub(crate) lines: usize,
    pub(crate) ack: Option<Ack>,
}

/// Whether the log takes lines, as the request path sees it: the last write did not
/// fail, and no write or sync has been running for longer than the stall limit.
pub(crate) struct Health {
    epoch: Instant,
    failing: AtomicBool,
    /// Milliseconds since `epoch` (plus one) when the current write or sync began; 0
    /// while the writer is not in the kernel.
    busy_since: AtomicU64,
    stall_ms: u64,
    /// Set at shutdown.
    pub(crate) stop: AtomicBool,
}

impl Health {
    pub(crate) fn new(stall: Duration) -> Health {
        Health {
            epoch: Instant::now(),
            failing: AtomicBool::new(false),
            busy_since: AtomicU64::new(0),
            stall_ms: stall.as_millis().max(1) as u64,
            stop: AtomicBool::new(false),
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64 + 1
    }

    /// Whether trades and withdrawals may go on.
    pub(crate) fn available(&self) -> bool {
        if self.failing.load(Ordering::Acquire) {
            return false;
        }
        let since = self.busy_since.load(Ordering::Acquire);
        since == 0 || self.now_ms().saturating_sub(since) < self.stall_ms
    }

    fn busy<T>(&self, f: impl FnOnce() -> T) -> T {
        self.busy_since.store(self.now_ms(), Ordering::Release);
        let out = f();
        self.busy_since.store(0, Ordering::Release);
        out
    }
}

/// How the writer was configured.
pub(crate) struct WriterSettings {
    pub(crate) path: PathBuf,
    pub(crate) fsync_interval: Duration,
    pub(crate) rotate: RotatePolicy,
    pub(crate) dialect: &'static str,
}

pub(crate) struct Writer {
    s: WriterSettings,
    rx: mpsc::Receiver<Job>,
    health: Arc<Health>,
    summaries: Arc<Summaries>,
    file: Option<File>,
    /// Bytes of whole lines in `file`: where a failed write is cut back to.
    len: u64,
    opened: SystemTime,
    /// A failed write could not be cut back: the file may end in a fragment, so it is
    /// rotated out before anything more is written.
    broken: bool,
    dirty: bool,
    last_sync: Instant,
    pending: Vec<u8>,
    /// Each waiting line's end offset in `pending`, with its acknowledgement.
    acks: Vec<(usize, Ack)>,
    /// Ends of the queued jobs in `pending`, with their line counts, for the queue gauge.
    queued_ends: Vec<(usize, usize)>,
    last_error_log: Option<Instant>,
    summary_buf: Vec<Summary>,
}

impl Writer {
    /// Opens the file (failing start-up if it cannot be opened at all).
    pub(crate) fn open(
        s: WriterSettings,
        rx: mpsc::Receiver<Job>,
        health: Arc<Health>,
        summaries: Arc<Summaries>,
    ) -> io::Result<Writer> {
        let (file, len) = rotate::open_append(&s.path)?;
        let opened = file
            .metadata()
            .and_then(|m| m.created().or_else(|_| m.modified()))
            .unwrap_or_else(|_| SystemTime::now());
        Ok(Writer {
            s,
            rx,
            health,
            summaries,
            file: Some(file),
            len,
            opened: if len == 0 { SystemTime::now() } else { opened },
            broken: false,
            dirty: false,
            last_sync: Instant::now(),
            pending: Vec::with_capacity(64 * 1024),
            acks: Vec::new(),
            queued_ends: Vec::new(),
            last_error_log: None,
            summary_buf: Vec::new(),
        })
    }

    pub(crate) fn run(mut self) {
        let tick = Duration::from_millis(100).min(self.s.fsync_interval);
        let mut last_second = 0;
        loop {
            let stopping = self.health.stop.load(Ordering::Acquire);
            if self.pending.is_empty() {
                match self.rx.recv_timeout(tick) {
                    Ok(job) => self.take(job),
                    Err(mpsc::RecvTimeoutError::Timeout) => {}
                    Err(mpsc::RecvTimeoutError::Disconnected) => {
                        self.health.stop.store(true, Ordering::Release)
                    }
                }
            } else {
                // A failed batch is retried alone: the queue fills meanwhile, and what does
                // not fit is dropped and counted by the senders.
                thread::sleep(RETRY_EVERY);
            }
            // At shutdown everything queued goes out before the writer stops.
            while stopping || self.pending.len() < MAX_BATCH_BYTES {
                match self.rx.try_recv() {
                    Ok(job) => self.take(job),
                    Err(_) => break,
                }
            }
            let now = SystemTime::now();
            let second = now
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs();
            if second != last_second || stopping {
                last_second = second;
                if stopping {
                    self.summaries.take_all(&mut self.summary_buf);
                } else {
                    self.summaries.take_due(now, &mut self.summary_buf);
                }
                for s in self.summary_buf.drain(..) {
                    s.write_json(self.s.dialect, &mut self.pending);
                    self.pending.push(b'\n');
                }
            }
            if !self.pending.is_empty() {
                self.flush();
            }
            if self.pending.is_empty() && !stopping && self.s.rotate.due(self.len, self.opened, now)
            {
                self.rotate(now);
            }
            if self.dirty && (stopping || self.last_sync.elapsed() >= self.s.fsync_interval) {
                self.sync();
            }
            if stopping && (self.pending.is_empty() || self.failing()) {
                if let Some(f) = &self.file {
                    let _ = f.sync_all();
                }
                return;
            }
        }
    }

    fn failing(&self) -> bool {
        self.health.failing.load(Ordering::Acquire)
    }

    fn take(&mut self, job: Job) {
        self.pending.extend_from_slice(&job.line);
        self.queued_ends.push((self.pending.len(), job.lines));
        if let Some(ack) = job.ack {
            self.acks.push((self.pending.len(), ack));
        }
    }

    /// Appends `pending`; whatever whole lines made it are acknowledged and removed.
    fn flush(&mut self) {
        if self.broken || self.file.is_none() {
            if let Err(e) = self.reopen() {
                self.failed(&e, "audit log cannot be reopened");
                return;
            }
        }
        let Some(file) = self.file.as_ref() else {
            return;
        };
        let started = Instant::now();
        let (done, result) = self
            .health
            .busy(|| append_whole_lines(file, &self.pending, self.len));
        metrics().audit_write_duration.observe(started.elapsed());
        self.len += done as u64;
        if done > 0 {
            self.dirty = true;
            self.pending.drain(..done);
            let acked = self.acks.partition_point(|(end, _)| *end <= done);
            for (_, ack) in self.acks.drain(..acked) {
                ack.send(true);
            }
            for (end, _) in &mut self.acks {
                *end -= done;
            }
            let written = self.queued_ends.partition_point(|(end, _)| *end <= done);
            let lines: usize = self.queued_ends.drain(..written).map(|(_, n)| n).sum();
            for (end, _) in &mut self.queued_ends {
                *end -= done;
            }
            metrics().audit_queue_lines.dec_by(lines as i64);
        }
        match result {
            Ok(()) => {
                if self.health.failing.swap(false, Ordering::AcqRel) {
                    tracing::warn!("audit log writable again");
                }
            }
            Err(WriteError { error, cut_back }) => {
                if !cut_back {
                    self.broken = true;
                }
                self.failed(
                    &error,
                    "audit write failed; trades and withdrawals are refused until it succeeds",
                );
                // The waiting requests are answered now rather than at their timeout; their
                // lines stay queued and are written when the disk takes them.
                for (_, ack) in self.acks.drain(..).collect::<Vec<_>>() {
                    ack.send(false);
                }
            }
        }
    }

    fn failed(&mut self, error: &io::Error, what: &str) {
        metrics().audit_write_errors.inc();
        let first = !self.health.failing.swap(true, Ordering::AcqRel);
        // Once when it starts, then every 10 s: a full disk must not also fill the log.
        if first
            || self
                .last_error_log
                .is_none_or(|t| t.elapsed() > Duration::from_secs(10))
        {
            tracing::error!(error = %error, path = %self.s.path.display(), "{what}");
            self.last_error_log = Some(Instant::now());
        }
    }

    fn sync(&mut self) {
        let Some(file) = self.file.as_ref() else {
            return;
        };
        let started = Instant::now();
        let result = self.health.busy(|| file.sync_data());
        metrics().audit_fsync_duration.observe(started.elapsed());
        self.last_sync = Instant::now();
        match result {
            Ok(()) => self.dirty = false,
            Err(e) => {
                metrics().audit_fsync_errors.inc();
                if e.kind() == io::ErrorKind::InvalidInput {
                    // Not a file that can be synced (a pipe): nothing to retry.
                    self.dirty = false;
                } else {
                    tracing::error!(error = %e, "audit fsync failed");
                }
            }
        }
    }

    /// Syncs and renames the current file, then starts a new one.
    fn rotate(&mut self, now: SystemTime) {
        if let Some(f) = &self.file {
            if let Err(e) = self.health.busy(|| f.sync_all()) {
                tracing::error!(error = %e, "audit fsync before rotation failed; not rotating");
                return;
            }
        }
        self.dirty = false;
        match rotate::rotate_out(&self.s.path, now) {
            Ok(to) => {
                metrics().audit_rotations.inc();
                tracing::info!(rotated_to = %to.display(), "audit log rotated");
            }
            Err(e) => {
                tracing::error!(error = %e, "audit rotation failed; appending to the same file");
                self.opened = now;
                return;
            }
        }
        self.file = None;
        if let Err(e) = self.reopen() {
            self.failed(&e, "audit log cannot be created after rotation");
        }
        if let Err(e) = rotate::sync_dir(&self.s.path) {
            tracing::warn!(error = %e, "audit directory fsync after rotation failed");
        }
        match rotate::prune(&self.s.path, self.s.rotate.keep) {
            Ok(0) => {}
            Ok(n) => tracing::info!(deleted = n, "old rotated audit files deleted"),
            Err(e) => tracing::warn!(error = %e, "deleting old rotated audit files failed"),
        }
    }

    /// Opens the file at the path afresh (after rotation, or after a write that left a
    /// fragment, which is first moved aside so the current file stays whole lines).
    fn reopen(&mut self) -> io::Result<()> {
        if self.broken {
            let to = rotate::rotate_out(&self.s.path, SystemTime::now())?;
            tracing::error!(moved_to = %to.display(), "audit file may end in a partial line; moved aside");
            self.broken = false;
        }
        let (file, len) = rotate::open_append(&self.s.path)?;
        self.file = Some(file);
        self.len = len;
        self.opened = SystemTime::now();
        Ok(())
    }
}

struct WriteError {
    error: io::Error,
    /// Whether a partial line left by the failed write was removed again.
    cut_back: bool,
}

/// Appends `buf` (whole lines) to `file`, whose whole lines end at `len`. Returns how many
/// bytes of whole lines are now in the file; after a short write that cannot be completed
/// (disk full, file size limit) the trailing fragment is cut off again, so the next line
/// does not merge with it into one no reader can parse.
fn append_whole_lines(mut file: &File, buf: &[u8], len: u64) -> (usize, Result<(), WriteError>) {
    let mut written = 0;
    let error = loop {
        match file.write(&buf[written..]) {
            Ok(0) => break io::Error::from(io::ErrorKind::WriteZero),
            Ok(n) if written + n == buf.len() => return (buf.len(), Ok(())),
            Ok(n) => written += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => break e,
        }
    };
    let whole = buf[..written]
        .iter()
        .rposition(|b| *b == b'\n')
        .map_or(0, |i| i + 1);
    let cut_back = whole == written || file.set_len(len + whole as u64).is_ok();
    (whole, Err(WriteError { error, cut_back }))
}
