//! Replay protection state.
//!
//! Nonce dialects (Zaif, Kraken): the last accepted nonce per key lives in memory, in the
//! nonce journal and in SQLite. The in-memory check decides; under the same lock the nonce
//! is appended to the journal ([`NonceJournal`]) before the request may be forwarded, so a
//! nonce the exchange saw is never accepted again, even after a crash. Once a second a
//! checkpoint copies the newest nonce per key to SQLite and drops the journal files it
//! covered, so the journal stays small and start-up reads little.
//!
//! Timestamp dialect (Binance): signatures seen inside their receive window are kept in
//! memory. Instead of persisting them, a restarted gateway refuses timestamps older than
//! its start, which closes the window in which a forgotten signature could be replayed.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Weak};
use std::time::Duration;

use anyhow::Context;
use keyguard_policy::decimal::Decimal;
use keyguard_policy::dialect::Replay;
use keyguard_policy::{Deny, UnixMillis};
use parking_lot::Mutex;

use crate::batch::{Completion, Joined, Slot};
use crate::store::journal::{check_key_id, Entries, JournalWriter, NonceJournal};
use crate::store::writer::{StoreWriter, WriteOp};

thread_local! {
    /// The nonces accepted on this worker in its current turn (see [`crate::batch`]).
    static JOURNAL_BATCH: Slot<Entries> = Slot::default();
}

/// How often accepted nonces are copied from the journal to SQLite.
const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);

/// Upper bound on remembered signatures; beyond it the oldest are dropped early, which
/// can only make the gateway refuse more (stale timestamps) — see [`SeenSignatures`].
const MAX_SEEN: usize = 1_000_000;

/// Replay state for one gateway process.
pub struct ReplayGuard {
    nonces: Arc<Mutex<Nonces>>,
    seen: Mutex<SeenSignatures>,
    started_at: UnixMillis,
    /// How long a request waits for its nonce's line (`audit.write_timeout`: the journal
    /// sits on the same data disk as the audit log).
    write_timeout: Duration,
}

/// Accepted nonces and where they are recorded.
struct Nonces {
    /// The last accepted nonce of every key.
    last: HashMap<String, Decimal>,
    journal: JournalWriter,
    /// Accepted since the last checkpoint: in the journal, not yet in SQLite.
    unsaved: HashMap<String, Decimal>,
    /// A checkpoint that failed closed the journal files up to this number; the next one
    /// retries without closing another, so an unavailable store does not add a file a
    /// second.
    retry_through: Option<u64>,
}

impl ReplayGuard {
    /// Starts from the nonces in the store and those journaled in `data_dir` after the
    /// last checkpoint, and starts the journal's writer and the checkpoint thread (both
    /// end with the guard).
    pub fn open(
        data_dir: &Path,
        stored: HashMap<String, Decimal>,
        writer: StoreWriter,
        started_at: UnixMillis,
        write_timeout: Duration,
    ) -> anyhow::Result<Self> {
        let (journal, journaled) = NonceJournal::open(data_dir)?;
        Self::with_journal(
            data_dir,
            journal,
            journaled,
            stored,
            writer,
            started_at,
            write_timeout,
        )
    }

    fn with_journal(
        data_dir: &Path,
        journal: NonceJournal,
        journaled: HashMap<String, Decimal>,
        stored: HashMap<String, Decimal>,
        writer: StoreWriter,
        started_at: UnixMillis,
        write_timeout: Duration,
    ) -> anyhow::Result<Self> {
        let journal = JournalWriter::start(journal).context("starting the nonce journal")?;
        let mut last = stored;
        for (key_id, nonce) in &journaled {
            raise(&mut last, key_id, *nonce);
        }
        let nonces = Arc::new(Mutex::new(Nonces {
            last,
            journal,
            // What the journal holds is not known to be in SQLite: the first checkpoint
            // saves it and only then deletes the old files.
            unsaved: journaled,
            retry_through: None,
        }));
        let weak = Arc::downgrade(&nonces);
        let dir = data_dir.to_owned();
        std::thread::Builder::new()
            .name("keyguard-nonce-checkpoint".into())
            .spawn(move || checkpoint_loop(&weak, &writer, &dir, write_timeout))
            .context("starting the nonce checkpoint thread")?;
        Ok(ReplayGuard {
            nonces,
            seen: Mutex::new(SeenSignatures::default()),
            started_at,
            write_timeout,
        })
    }

    /// Accepts `proof` for `key_id` once, durably. Fails closed: if the journal cannot
    /// record the nonce within the write timeout, the request is refused with 503.
    pub async fn accept(&self, key_id: &str, proof: &Replay, now: UnixMillis) -> Result<(), Deny> {
        match proof {
            Replay::Nonce(nonce) => {
                let owner = Arc::as_ptr(&self.nonces) as usize;
                let joined = {
                    let mut nonces = self.nonces.lock();
                    let n = &mut *nonces;
                    if n.journal.stalled(self.write_timeout) {
                        // Waiting would only time out; refuse before the nonce is burnt.
                        crate::metrics::metrics().nonce_journal_failures.inc();
                        return Err(Deny::StateUnavailable);
                    }
                    if n.last.get(key_id).is_some_and(|last| nonce <= last) {
                        return Err(Deny::InvalidNonce);
                    }
                    if check_key_id(key_id).is_err() {
                        return Err(Deny::StateUnavailable);
                    }
                    // Remembered before it is written: if the write fails the nonce is
                    // burnt, which can only refuse a client's retry, never accept a replay.
                    set(&mut n.last, key_id, *nonce);
                    // Unsaved from now on, not from the acknowledgement: a checkpoint that
                    // runs before the line is written closes the file the line would have
                    // gone to, and must put the nonce in SQLite before it deletes it.
                    set(&mut n.unsaved, key_id, *nonce);
                    let mut entry = Some((key_id.to_owned(), *nonce));
                    let joined =
                        JOURNAL_BATCH.with(|slot| slot.join(owner, |b| b.extend(entry.take())));
                    match (joined, entry) {
                        (Some(joined), _) => joined,
                        (None, entry) => {
                            // Another guard's batch is open on this thread (tests only).
                            let done = Completion::new();
                            n.journal.append(entry.into_iter().collect(), done.clone());
                            Joined::Member(done)
                        }
                    }
                };
                // The nonces of this worker's turn go to the journal together.
                let done = match joined {
                    Joined::Member(done) => done,
                    Joined::Leader(leader) => {
                        leader
                            .close(|entries, done| {
                                self.nonces.lock().journal.append(entries, done.clone());
                            })
                            .await
                    }
                };
                match tokio::time::timeout(self.write_timeout, done.wait()).await {
                    Ok(true) => return Ok(()),
                    // The writer logged why.
                    Ok(false) => {}
                    Err(_) => tracing::error!(
                        timeout = ?self.write_timeout,
                        "nonce journal write not acknowledged in time (stalled disk?); nonce-dialect requests are refused while it lasts"
                    ),
                }
                crate::metrics::metrics().nonce_journal_failures.inc();
                Err(Deny::StateUnavailable)
            }
            Replay::Timestamp {
                at_ms,
                recv_window_ms,
                fingerprint,
            } => {
                if *at_ms < self.started_at {
                    return Err(Deny::StaleTimestamp);
                }
                let expires = at_ms.saturating_add(*recv_window_ms).max(now);
                self.seen.lock().insert(*fingerprint, expires, now)
            }
        }
    }
}

/// `map[key_id] = nonce`, without allocating the key when it is there already (the usual
/// case on the request path).
fn set(map: &mut HashMap<String, Decimal>, key_id: &str, nonce: Decimal) {
    match map.get_mut(key_id) {
        Some(n) => *n = nonce,
        None => {
            map.insert(key_id.to_owned(), nonce);
        }
    }
}

fn raise(map: &mut HashMap<String, Decimal>, key_id: &str, nonce: Decimal) {
    match map.get_mut(key_id) {
        Some(n) if *n >= nonce => {}
        Some(n) => *n = nonce,
        None => {
            map.insert(key_id.to_owned(), nonce);
        }
    }
}

/// Checkpoints once a second until the guard is dropped.
fn checkpoint_loop(
    nonces: &Weak<Mutex<Nonces>>,
    writer: &StoreWriter,
    dir: &Path,
    write_timeout: Duration,
) {
    loop {
        std::thread::sleep(CHECKPOINT_EVERY);
        let Some(nonces) = nonces.upgrade() else {
            return;
        };
        if let Err(e) = checkpoint(&nonces, writer, dir, write_timeout) {
            tracing::error!(error = %format!("{e:#}"), "nonce checkpoint failed; the journal keeps the nonces");
        }
    }
}

/// Copies the nonces accepted since the last checkpoint to SQLite, then deletes the
/// journal files that held them. Appends go on meanwhile, into a fresh file.
fn checkpoint(
    nonces: &Mutex<Nonces>,
    writer: &StoreWriter,
    dir: &Path,
    write_timeout: Duration,
) -> anyhow::Result<()> {
    // The rotation is asked for under the lock, so every nonce taken here was queued
    // before it and is in a file numbered at most the closed one; the answer is waited
    // for without the lock, which requests need.
    let (batch, closed) = {
        let mut n = nonces.lock();
        let closed = match n.retry_through {
            Some(closed) => Ok(closed),
            None if n.unsaved.is_empty() => return Ok(()),
            None => Err(n.journal.rotate()?),
        };
        (std::mem::take(&mut n.unsaved), closed)
    };
    let closed = match closed {
        Ok(closed) => closed,
        Err(rotated) => match rotated.recv_timeout(write_timeout.max(CHECKPOINT_EVERY)) {
            Ok(Ok(closed)) => closed,
            failed => {
                let mut n = nonces.lock();
                for (key_id, nonce) in batch {
                    raise(&mut n.unsaved, &key_id, nonce);
                }
                match failed {
                    Ok(Err(e)) => return Err(e).context("starting a new nonce journal file"),
                    _ => anyhow::bail!("the nonce journal did not start a new file in time"),
                }
            }
        },
    };
    let commits: Vec<_> = batch
        .iter()
        .map(|(key_id, nonce)| {
            writer.submit(WriteOp::Nonce {
                key_id: key_id.clone(),
                nonce: *nonce,
            })
        })
        .collect();
    let saved = commits
        .into_iter()
        .all(|c| matches!(c.blocking_recv(), Ok(Ok(()))));
    if !saved {
        // The closed files stay; the next successful checkpoint saves these too and
        // only then deletes them.
        let mut n = nonces.lock();
        for (key_id, nonce) in batch {
            raise(&mut n.unsaved, &key_id, nonce);
        }
        n.retry_through = Some(closed);
        anyhow::bail!("the store did not commit the nonces");
    }
    NonceJournal::remove_through(dir, closed)?;
    // Only now: had the removal failed, the next checkpoint would retry it.
    nonces.lock().retry_through = None;
    Ok(())
}

/// Signatures seen while their window is open, with expiry.
#[derive(Default)]
struct SeenSignatures {
    map: HashMap<[u8; 32], UnixMillis>,
    last_sweep: UnixMillis,
}

impl SeenSignatures {
    fn insert(&mut self, fp: [u8; 32], expires: UnixMillis, now: UnixMillis) -> Result<(), Deny> {
        if now.saturating_sub(self.last_sweep) >= 1_000 || self.map.len() >= MAX_SEEN {
            self.map.retain(|_, exp| *exp > now);
            self.last_sweep = now;
        }
        if self.map.get(&fp).is_some_and(|exp| *exp > now) {
            return Err(Deny::Replay);
        }
        if self.map.len() >= MAX_SEEN {
            // Every entry is still live and we are full: refusing is the safe answer.
            return Err(Deny::StateUnavailable);
        }
        self.map.insert(fp, expires);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keyguard_policy::decimal::parse_decimal;

    const T: Duration = Duration::from_secs(2);

    fn guard(dir: &std::path::Path) -> ReplayGuard {
        let store = crate::store::Store::open(dir).unwrap();
        let stored = crate::store::load_nonces(&store.connect().unwrap()).unwrap();
        ReplayGuard::open(
            dir,
            stored,
            StoreWriter::start(store.connect().unwrap()),
            1_000,
            Duration::from_secs(2),
        )
        .unwrap()
    }

    fn stored(dir: &std::path::Path) -> HashMap<String, Decimal> {
        let store = crate::store::Store::open(dir).unwrap();
        crate::store::load_nonces(&store.connect().unwrap()).unwrap()
    }

    fn journal_files(dir: &std::path::Path) -> usize {
        std::fs::read_dir(dir)
            .unwrap()
            .filter(|e| {
                let name = e.as_ref().unwrap().file_name();
                name.to_string_lossy().ends_with(".journal")
            })
            .count()
    }

    #[tokio::test]
    async fn nonces_strictly_increase_and_persist() {
        let dir = tempfile::tempdir().unwrap();
        let g = guard(dir.path());
        let n = |s: &str| Replay::Nonce(parse_decimal(s).unwrap());
        assert_eq!(g.accept("k", &n("10.5"), 0).await, Ok(()));
        assert_eq!(g.accept("k", &n("10.5"), 0).await, Err(Deny::InvalidNonce));
        assert_eq!(g.accept("k", &n("10.49"), 0).await, Err(Deny::InvalidNonce));
        assert_eq!(g.accept("k", &n("10.51"), 0).await, Ok(()));
        assert_eq!(g.accept("other", &n("1"), 0).await, Ok(()));
        // A restarted gateway (no checkpoint ran: the journal alone knows) refuses both.
        drop(g);
        let g2 = guard(dir.path());
        assert_eq!(
            g2.accept("k", &n("10.51"), 0).await,
            Err(Deny::InvalidNonce)
        );
        assert_eq!(
            g2.accept("other", &n("1"), 0).await,
            Err(Deny::InvalidNonce)
        );
        assert_eq!(g2.accept("k", &n("11"), 0).await, Ok(()));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_checkpoint_moves_nonces_to_sqlite_and_drops_the_journal() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::Store::open(dir.path()).unwrap();
        let writer = StoreWriter::start(store.connect().unwrap());
        let g = ReplayGuard::open(dir.path(), HashMap::new(), writer.clone(), 0, T).unwrap();
        let n = |s: &str| Replay::Nonce(parse_decimal(s).unwrap());
        for i in 1..=50 {
            assert_eq!(g.accept("k", &n(&i.to_string()), 0).await, Ok(()));
        }
        assert_eq!(g.accept("j", &n("7"), 0).await, Ok(()));
        assert!(
            stored(dir.path()).is_empty(),
            "nothing is in SQLite before a checkpoint"
        );
        let (nonces, path) = (g.nonces.clone(), dir.path().to_owned());
        tokio::task::spawn_blocking(move || checkpoint(&nonces, &writer, &path, T))
            .await
            .unwrap()
            .unwrap();
        let saved = stored(dir.path());
        assert_eq!(saved["k"], parse_decimal("50").unwrap());
        assert_eq!(saved["j"], parse_decimal("7").unwrap());
        // Only the fresh file is left, and it is empty.
        assert_eq!(journal_files(dir.path()), 1);
        // A later nonce goes to the new file; a restart knows both sources.
        assert_eq!(g.accept("k", &n("51"), 0).await, Ok(()));
        drop(g);
        let g2 = guard(dir.path());
        assert_eq!(g2.accept("k", &n("51"), 0).await, Err(Deny::InvalidNonce));
        assert_eq!(g2.accept("j", &n("7"), 0).await, Err(Deny::InvalidNonce));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_checkpoint_keeps_the_journal() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::Store::open(dir.path()).unwrap();
        let conn = store.connect().unwrap();
        // A store that refuses every nonce write.
        conn.execute_batch("DROP TABLE nonces").unwrap();
        let writer = StoreWriter::start(conn);
        let g = ReplayGuard::open(dir.path(), HashMap::new(), writer.clone(), 0, T).unwrap();
        let n = |s: &str| Replay::Nonce(parse_decimal(s).unwrap());
        assert_eq!(g.accept("k", &n("3"), 0).await, Ok(()));
        let run = |g: &ReplayGuard| {
            let (nonces, path, writer) = (g.nonces.clone(), dir.path().to_owned(), writer.clone());
            tokio::task::spawn_blocking(move || checkpoint(&nonces, &writer, &path, T))
        };
        assert!(run(&g).await.unwrap().is_err());
        assert_eq!(journal_files(dir.path()), 2, "the closed file is kept");
        assert_eq!(
            g.nonces.lock().unsaved.len(),
            1,
            "and its nonces stay unsaved"
        );
        // Retries close no further file while the store stays down.
        assert_eq!(g.accept("k", &n("4"), 0).await, Ok(()));
        assert!(run(&g).await.unwrap().is_err());
        assert_eq!(journal_files(dir.path()), 2);
        // A restart in this state knows both nonces.
        let (_, journaled) = NonceJournal::open(dir.path()).unwrap();
        assert_eq!(journaled["k"], parse_decimal("4").unwrap());
        // Once the store is back, one checkpoint saves everything and drops the old files.
        store
            .connect()
            .unwrap()
            .execute_batch("CREATE TABLE nonces (key_id TEXT PRIMARY KEY, nonce TEXT NOT NULL)")
            .unwrap();
        run(&g).await.unwrap().unwrap();
        assert_eq!(stored(dir.path())["k"], parse_decimal("4").unwrap());
        assert!(g.nonces.lock().retry_through.is_none());
        drop(g);
        let (_, journaled) = NonceJournal::open(dir.path()).unwrap();
        assert_eq!(journaled.get("k"), Some(&parse_decimal("4").unwrap()));
    }

    #[tokio::test]
    async fn signatures_seen_once_per_window() {
        let dir = tempfile::tempdir().unwrap();
        let g = guard(dir.path());
        let ts = |at: u64, fp: u8| Replay::Timestamp {
            at_ms: at,
            recv_window_ms: 5_000,
            fingerprint: [fp; 32],
        };
        assert_eq!(g.accept("k", &ts(2_000, 1), 2_100).await, Ok(()));
        assert_eq!(g.accept("k", &ts(2_000, 1), 3_000).await, Err(Deny::Replay));
        assert_eq!(g.accept("k", &ts(2_000, 2), 3_000).await, Ok(()));
        // Signed before this process started: refused, we cannot know it was not used.
        assert_eq!(
            g.accept("k", &ts(999, 3), 2_000).await,
            Err(Deny::StaleTimestamp)
        );
    }

    /// A journal whose `write(2)` never returns (a FIFO nobody reads, full: the kernel
    /// holds the writer like a hung disk). The request is refused after the write
    /// timeout, on a single-threaded runtime that stays free meanwhile; later requests are
    /// refused at once, without burning their nonce; once the disk moves again, nonces
    /// are accepted.
    #[tokio::test(flavor = "current_thread")]
    async fn a_stalled_journal_refuses_in_time_and_never_holds_the_worker() {
        use std::io::Read;
        use std::time::Instant;
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("stalled.fifo");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(made.success());
        // Read-write, so opening does not wait for a reader. The pipe is then filled to
        // the brim through a second, non-blocking handle (O_NONBLOCK is 0o4000 on Linux),
        // so the journal's own blocking write has no room left.
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&fifo)
            .unwrap();
        let mut drain = std::fs::File::open(&fifo).unwrap();
        let filler = {
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new()
                .write(true)
                .custom_flags(0o4000)
                .open(&fifo)
                .unwrap()
        };
        let mut filled = 0;
        while let Ok(n) = std::io::Write::write(&mut &filler, &[b'x'; 4096]) {
            filled += n;
        }
        assert!(filled >= 4096, "the pipe took nothing");
        let store = crate::store::Store::open(dir.path()).unwrap();
        let timeout = Duration::from_millis(300);
        let g = ReplayGuard::with_journal(
            dir.path(),
            NonceJournal::on_file(dir.path(), file),
            HashMap::new(),
            HashMap::new(),
            StoreWriter::start(store.connect().unwrap()),
            0,
            timeout,
        )
        .unwrap();
        let n = |s: &str| Replay::Nonce(parse_decimal(s).unwrap());
        // A timer on this same thread keeps ticking while the request waits.
        let ticks = std::rc::Rc::new(std::cell::Cell::new(0u32));
        let counter = ticks.clone();
        let local = tokio::task::LocalSet::new();
        let started = Instant::now();
        let refused = local
            .run_until(async {
                tokio::task::spawn_local(async move {
                    loop {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        counter.set(counter.get() + 1);
                    }
                });
                g.accept("k", &n("1"), 0).await
            })
            .await;
        let waited = started.elapsed();
        assert_eq!(refused, Err(Deny::StateUnavailable));
        assert!(waited >= timeout, "refused before the timeout: {waited:?}");
        assert!(waited < Duration::from_secs(2), "waited {waited:?}");
        assert!(
            ticks.get() >= 5,
            "the runtime was held: {} ticks",
            ticks.get()
        );
        // Stuck for longer than the timeout (the write began just after the first request
        // queued it): refused at once, and nonce 2 is not burnt.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let started = Instant::now();
        assert_eq!(g.accept("k", &n("2"), 0).await, Err(Deny::StateUnavailable));
        assert!(started.elapsed() < timeout, "waited for a stuck write");
        // The disk moves again: the stuck write completes and the next nonce is taken.
        let drained = std::thread::spawn(move || {
            let mut buf = vec![0u8; 1 << 16];
            let mut got = Vec::new();
            while !got.ends_with(b"k 2\n") {
                let k = drain.read(&mut buf).unwrap();
                got.extend_from_slice(&buf[..k]);
            }
            got
        });
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match g.accept("k", &n("2"), 0).await {
                Ok(()) => break,
                Err(Deny::StateUnavailable) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                other => panic!("after the stall: {other:?}"),
            }
        }
        let got = drained.join().unwrap();
        let text = String::from_utf8_lossy(&got[filled..]).into_owned();
        assert_eq!(text, "k 1\nk 2\n", "the journal after the stall");
    }
}
