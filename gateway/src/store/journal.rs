//! The nonce journal: an append-only file of accepted nonces, written before a request is
//! forwarded.
//!
//! One `write(2)` of a short line per request puts the nonce in the kernel, which survives
//! a crash of the gateway. That is the durability class SQLite gives us in WAL mode with
//! `synchronous=NORMAL`, without a round trip through the writer thread for every request.
//! A checkpoint ([`crate::replay`]) copies the newest nonce per key into SQLite, then
//! deletes the journal files it covered. At start-up every file still present is read
//! back, so a nonce the exchange saw is never accepted again.
//!
//! Files are `nonces-<seq>.journal` in the data dir; each line is `<key id> <nonce>\n`.
//!
//! The file is written by its own thread ([`JournalWriter`]), never by a runtime worker:
//! a stalled disk can hold a `write(2)` for as long as it likes, and on a worker that would
//! stop every connection the worker serves. Requests wait for the acknowledgement with a
//! deadline instead, and while a write is stuck past it they are refused at once. Appends
//! queued together go out in one `write(2)`, so a burst costs one system call.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use keyguard_policy::decimal::{parse_decimal, Decimal};

use crate::batch::Completion;

const PREFIX: &str = "nonces-";
const SUFFIX: &str = ".journal";

/// The journal file being appended to.
pub struct NonceJournal {
    dir: PathBuf,
    file: File,
    seq: u64,
    /// Bytes of whole lines in `file`: where a failed append is cut back to.
    len: u64,
    /// A failed append could not be cut back; nothing more may be appended to this file
    /// (a fragment would merge with the next line) until [`NonceJournal::rotate`].
    broken: bool,
    line: Vec<u8>,
}

impl NonceJournal {
    /// Reads every journal file in `dir` (the newest nonce per key across all of them)
    /// and starts a new file after the last one. Earlier files stay until a checkpoint
    /// covers them.
    pub fn open(dir: &Path) -> anyhow::Result<(NonceJournal, HashMap<String, Decimal>)> {
        let mut newest: HashMap<String, Decimal> = HashMap::new();
        let mut last_seq = 0;
        for (seq, path) in journal_files(dir)? {
            last_seq = last_seq.max(seq);
            let text =
                std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
            for (key_id, nonce) in parse(&path, &text)? {
                let slot = newest.entry(key_id).or_insert(nonce);
                if nonce > *slot {
                    *slot = nonce;
                }
            }
        }
        if newest.is_empty() {
            // Only empty files (or a torn, never-acknowledged line): nothing to keep, and
            // leaving them would add one file per start.
            NonceJournal::remove_through(dir, last_seq)?;
        }
        let seq = last_seq + 1;
        let file = create(dir, seq)?;
        let journal = NonceJournal {
            dir: dir.to_owned(),
            file,
            seq,
            len: 0,
            broken: false,
            line: Vec::with_capacity(96),
        };
        Ok((journal, newest))
    }

    /// A journal appending to `file` (a test stands in a disk that stops).
    #[cfg(test)]
    pub fn on_file(dir: &Path, file: File) -> NonceJournal {
        NonceJournal {
            dir: dir.to_owned(),
            file,
            seq: 1,
            len: 0,
            broken: false,
            line: Vec::new(),
        }
    }

    /// Appends one accepted nonce. Returns once the line is in the kernel.
    pub fn append(&mut self, key_id: &str, nonce: &Decimal) -> io::Result<()> {
        check_key_id(key_id)?;
        self.append_batch([(key_id, nonce)])
    }

    /// Appends lines for nonces whose key ids passed [`check_key_id`], in one `write(2)`.
    pub fn append_batch<'a>(
        &mut self,
        entries: impl IntoIterator<Item = (&'a str, &'a Decimal)>,
    ) -> io::Result<()> {
        if self.broken {
            return Err(io::Error::other("nonce journal needs a new file"));
        }
        self.line.clear();
        for (key_id, nonce) in entries {
            writeln!(self.line, "{key_id} {nonce}")?;
        }
        // One write call: a crash of the process leaves every line whole or absent (a
        // power cut can tear the last one, which start-up skips).
        match (&self.file).write_all(&self.line) {
            Ok(()) => {
                self.len += self.line.len() as u64;
                Ok(())
            }
            Err(e) => {
                // A short write (disk full, file size limit) leaves a fragment that the next
                // line would complete into a line for another key. Cut it off; if that
                // fails too, stop using the file.
                if self.file.set_len(self.len).is_err() {
                    self.broken = true;
                }
                Err(e)
            }
        }
    }

    /// Starts a new file and returns the sequence number of the one it closed: every line
    /// appended so far is in a file numbered at most that.
    pub fn rotate(&mut self) -> io::Result<u64> {
        let file =
            create(&self.dir, self.seq + 1).map_err(|e| io::Error::other(format!("{e:#}")))?;
        self.file = file;
        self.seq += 1;
        self.len = 0;
        self.broken = false;
        Ok(self.seq - 1)
    }

    /// Deletes the files numbered at most `seq`, once what they hold is in SQLite.
    pub fn remove_through(dir: &Path, seq: u64) -> anyhow::Result<()> {
        for (s, path) in journal_files(dir)? {
            if s <= seq {
                std::fs::remove_file(&path)
                    .with_context(|| format!("removing {}", path.display()))?;
            }
        }
        Ok(())
    }
}

/// Key ids are generated without whitespace; one with it would corrupt the file.
pub fn check_key_id(key_id: &str) -> io::Result<()> {
    if key_id.is_empty() || key_id.bytes().any(|b| b.is_ascii_whitespace()) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "key id with whitespace",
        ));
    }
    Ok(())
}

/// Accepted nonces to append, each with a key id that passed [`check_key_id`].
pub type Entries = Vec<(String, Decimal)>;

enum Cmd {
    Append {
        entries: Entries,
        done: Arc<Completion>,
    },
    Rotate(mpsc::SyncSender<io::Result<u64>>),
}

/// The handle to the journal's writer thread. The thread ends, after what was queued,
/// when the handle is dropped.
pub struct JournalWriter {
    tx: mpsc::Sender<Cmd>,
    /// When the write in progress began (ms since [`epoch`], plus one), 0 when none is.
    busy_since: Arc<AtomicU64>,
}

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn now_ms() -> u64 {
    u64::try_from(epoch().elapsed().as_millis()).unwrap_or(u64::MAX)
}

impl JournalWriter {
    /// Moves `journal` to a thread of its own.
    pub fn start(journal: NonceJournal) -> io::Result<JournalWriter> {
        let (tx, rx) = mpsc::channel();
        let busy_since = Arc::new(AtomicU64::new(0));
        let busy = busy_since.clone();
        epoch();
        std::thread::Builder::new()
            .name("keyguard-nonce-journal".into())
            .spawn(move || write_loop(journal, &rx, &busy))?;
        Ok(JournalWriter { tx, busy_since })
    }

    /// Whether a write has been in progress for longer than `limit`: the disk is stalled,
    /// and a request that waited for its line would only time out.
    pub fn stalled(&self, limit: Duration) -> bool {
        let since = self.busy_since.load(Ordering::Acquire);
        since != 0 && now_ms().saturating_sub(since - 1) > limit.as_millis() as u64
    }

    /// Queues `entries`; `done` is finished once they are in the kernel (or failed).
    /// Queuing never blocks.
    pub fn append(&self, entries: Entries, done: Arc<Completion>) {
        if let Err(mpsc::SendError(Cmd::Append { done, .. })) =
            self.tx.send(Cmd::Append { entries, done })
        {
            done.finish(false);
        }
    }

    /// Asks for a new file. The answer (the sequence number of the closed file, which
    /// holds every line queued before this call) comes on the receiver.
    pub fn rotate(&self) -> io::Result<mpsc::Receiver<io::Result<u64>>> {
        let (reply, rotated) = mpsc::sync_channel(1);
        self.tx
            .send(Cmd::Rotate(reply))
            .map_err(|_| io::Error::other("nonce journal writer stopped"))?;
        Ok(rotated)
    }
}

fn write_loop(mut journal: NonceJournal, rx: &mpsc::Receiver<Cmd>, busy_since: &AtomicU64) {
    let mut entries: Entries = Vec::new();
    let mut waiting: Vec<Arc<Completion>> = Vec::new();
    let mut next = None;
    let mut last_error_log = None;
    loop {
        let cmd = match next.take() {
            Some(cmd) => cmd,
            None => match rx.recv() {
                Ok(cmd) => cmd,
                Err(_) => return,
            },
        };
        match cmd {
            Cmd::Rotate(reply) => {
                busy_since.store(now_ms() + 1, Ordering::Release);
                let _ = reply.send(journal.rotate());
            }
            Cmd::Append {
                entries: first,
                done,
            } => {
                entries.extend(first);
                waiting.push(done);
                // Everything queued meanwhile goes into the same write, up to a rotation,
                // which must come after the lines queued before it.
                while entries.len() < 4096 {
                    match rx.try_recv() {
                        Ok(Cmd::Append {
                            entries: more,
                            done,
                        }) => {
                            entries.extend(more);
                            waiting.push(done);
                        }
                        Ok(other) => {
                            next = Some(other);
                            break;
                        }
                        Err(_) => break,
                    }
                }
                busy_since.store(now_ms() + 1, Ordering::Release);
                let result = journal.append_batch(entries.iter().map(|(k, n)| (k.as_str(), n)));
                if let Err(e) = &result {
                    // Once, then every 10 s: a full disk must not also fill the log.
                    if last_error_log.is_none_or(|t: Instant| t.elapsed() > Duration::from_secs(10))
                    {
                        tracing::error!(error = %e, "nonce journal write failed; nonce-dialect requests are refused until one succeeds");
                        last_error_log = Some(Instant::now());
                    }
                }
                let written = result.is_ok();
                entries.clear();
                for done in waiting.drain(..) {
                    done.finish(written);
                }
            }
        }
        busy_since.store(0, Ordering::Release);
    }
}

fn create(dir: &Path, seq: u64) -> anyhow::Result<File> {
    let path = dir.join(format!("{PREFIX}{seq:020}{SUFFIX}"));
    OpenOptions::new()
        .create_new(true)
        .append(true)
        .open(&path)
        .with_context(|| format!("creating nonce journal {}", path.display()))
}

/// The journal files in `dir`, oldest first.
fn journal_files(dir: &Path) -> anyhow::Result<Vec<(u64, PathBuf)>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(seq) = name
            .to_str()
            .and_then(|n| n.strip_prefix(PREFIX))
            .and_then(|n| n.strip_suffix(SUFFIX))
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        files.push((seq, entry.path()));
    }
    files.sort();
    Ok(files)
}

/// Parses one file. A last line without its newline is a write that never completed (its
/// request was not forwarded) and is skipped; any other bad line stops the start-up, since
/// guessing could accept a replay.
fn parse(path: &Path, text: &[u8]) -> anyhow::Result<Vec<(String, Decimal)>> {
    let complete = match text.iter().rposition(|&b| b == b'\n') {
        Some(end) => &text[..=end],
        None => &text[..0],
    };
    if complete.len() < text.len() {
        tracing::warn!(file = %path.display(), "ignoring an incomplete last line in the nonce journal");
    }
    let mut out = Vec::new();
    for (i, line) in complete.split(|&b| b == b'\n').enumerate() {
        if line.is_empty() {
            continue;
        }
        let entry = std::str::from_utf8(line).ok().and_then(|l| {
            let (key_id, nonce) = l.split_once(' ')?;
            Some((key_id.to_owned(), parse_decimal(nonce).ok()?))
        });
        match entry {
            Some(e) if !e.0.is_empty() => out.push(e),
            _ => bail!(
                "{}:{}: corrupt nonce journal line; refusing to start without knowing \
                 which nonces were used",
                path.display(),
                i + 1
            ),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> Decimal {
        parse_decimal(s).unwrap()
    }

    #[test]
    fn reopening_reads_the_newest_nonce_per_key_across_files() {
        let dir = tempfile::tempdir().unwrap();
        let (mut j, found) = NonceJournal::open(dir.path()).unwrap();
        assert!(found.is_empty());
        j.append("kg_a", &n("5")).unwrap();
        j.append("kg_a", &n("7.25")).unwrap();
        assert_eq!(j.rotate().unwrap(), 1);
        j.append("kg_b", &n("1")).unwrap();
        j.append("kg_a", &n("8")).unwrap();
        drop(j);
        let (mut j, found) = NonceJournal::open(dir.path()).unwrap();
        assert_eq!(found.len(), 2);
        assert_eq!(found["kg_a"], n("8"));
        assert_eq!(found["kg_b"], n("1"));
        // The new file comes after both old ones; removing through the closed one leaves
        // only the file in use.
        let closed = j.rotate().unwrap();
        assert_eq!(closed, 3);
        NonceJournal::remove_through(dir.path(), closed).unwrap();
        assert_eq!(journal_files(dir.path()).unwrap().len(), 1);
        assert!(NonceJournal::open(dir.path()).unwrap().1.is_empty());
    }

    #[test]
    fn starting_over_empty_files_does_not_pile_them_up() {
        let dir = tempfile::tempdir().unwrap();
        for _ in 0..3 {
            drop(NonceJournal::open(dir.path()).unwrap());
        }
        assert_eq!(journal_files(dir.path()).unwrap().len(), 1);
    }

    /// A write that fails halfway must not leave a fragment the next line completes into
    /// an entry for another key (`kg_akg_a 3`), which would let `kg_a`'s nonce 3 be
    /// replayed after a restart. The test re-runs itself in a child under a 512-byte file
    /// size limit (`ulimit -f 1`, SIGXFSZ ignored), so the kernel really cuts a write short.
    #[test]
    fn a_short_write_is_cut_off() {
        const CHILD: &str = "KEYGUARD_JOURNAL_SHORT_WRITE_DIR";
        if let Ok(dir) = std::env::var(CHILD) {
            let (mut j, _) = NonceJournal::open(Path::new(&dir)).unwrap();
            for i in 1..1000u64 {
                if j.append("kg_aaaa", &Decimal::from(i)).is_err() {
                    let on_disk = j.file.metadata().unwrap().len();
                    assert_eq!(on_disk, j.len, "a fragment was left behind");
                    assert!(j.len > 400, "failed early, not at the size limit");
                    return;
                }
            }
            panic!("the file size limit never applied");
        }
        let dir = tempfile::tempdir().unwrap();
        let child = std::process::Command::new("sh")
            .arg("-c")
            .arg("trap '' XFSZ; ulimit -f 1; exec \"$0\" store::journal::tests::a_short_write_is_cut_off --exact --test-threads=1 --quiet")
            .arg(std::env::current_exe().unwrap())
            .env(CHILD, dir.path())
            .output()
            .unwrap();
        assert!(
            child.status.success(),
            "child: {}\n{}",
            String::from_utf8_lossy(&child.stdout),
            String::from_utf8_lossy(&child.stderr)
        );
        let (_, found) = NonceJournal::open(dir.path()).unwrap();
        assert_eq!(found.keys().collect::<Vec<_>>(), ["kg_aaaa"]);
    }

    #[test]
    fn whitespace_in_a_key_id_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (mut j, _) = NonceJournal::open(dir.path()).unwrap();
        assert!(j.append("kg a", &n("1")).is_err());
        assert!(j.append("kg\na", &n("1")).is_err());
        assert!(j.append("", &n("1")).is_err());
    }

    #[test]
    fn a_torn_last_line_is_skipped_but_a_corrupt_line_stops_the_start() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("nonces-00000000000000000001.journal");
        std::fs::write(&p, "kg_a 5\nkg_a 6\nkg_a 9").unwrap();
        let (_, found) = NonceJournal::open(dir.path()).unwrap();
        assert_eq!(found["kg_a"], n("6"));

        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("nonces-00000000000000000001.journal");
        std::fs::write(&p, "kg_a 5\nkg_a x\nkg_a 9\n").unwrap();
        let err = format!("{:#}", NonceJournal::open(dir.path()).err().unwrap());
        assert!(
            err.contains("nonces-00000000000000000001.journal:2:"),
            "{err}"
        );
    }
}
