//! The ledger: one JSON line per request the mock exchange executed.
//!
//! Tests read it to learn what actually reached the exchange, so every line is flushed
//! before the response goes out: once a client has seen a response, the line is on disk.

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::path::Path;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

/// One executed request, with the identity the gateway asserted for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerEntry {
    /// When the mock executed it, in Unix milliseconds.
    pub ts: u64,
    /// HTTP method as received.
    pub method: String,
    /// Request path as received (no query).
    pub path: String,
    /// Raw query string, empty when there was none.
    pub query: String,
    /// Request body as text (lossy UTF-8; the exchanges here only send text bodies).
    pub body: String,
    /// The asserted account (`sub`).
    pub account: String,
    /// The asserted key id (`kid`).
    pub key_id: String,
    /// The asserted action (`act`).
    pub action: String,
    /// The asserted client IP (`cip`).
    pub client_ip: String,
    /// The asserted request id (`jti`).
    pub request_id: String,
}

/// An append-only JSON Lines file of [`LedgerEntry`]s.
///
/// Writes are synchronous under a mutex: a line is a few hundred bytes, and doing the
/// write before answering is what makes "the client saw a response" imply "the line exists".
#[derive(Debug)]
pub struct Ledger {
    file: Mutex<File>,
}

impl Ledger {
    /// Opens (creating if needed) the ledger at `path` for appending.
    pub fn open(path: &Path) -> io::Result<Self> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        Ok(Ledger {
            file: Mutex::new(file),
        })
    }

    /// Appends one entry and flushes it.
    pub fn append(&self, entry: &LedgerEntry) -> io::Result<()> {
        let mut line = serde_json::to_vec(entry).map_err(io::Error::other)?;
        line.push(b'\n');
        let mut file = self.file.lock();
        // One write_all per line: with O_APPEND the line lands whole even if another
        // process appends to the same file.
        file.write_all(&line)?;
        file.flush()
    }

    /// Reads every entry of the ledger at `path`, in order.
    pub fn read_all(path: &Path) -> io::Result<Vec<LedgerEntry>> {
        Ledger::read_from(path, 0)
    }

    /// The ledger's current length in bytes (0 when it does not exist yet): pass it to
    /// [`Ledger::read_from`] later to read only what was appended in between.
    pub fn end_offset(path: &Path) -> u64 {
        std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
    }

    /// Reads the entries that start at byte `offset` or later, in order.
    pub fn read_from(path: &Path, offset: u64) -> io::Result<Vec<LedgerEntry>> {
        use std::io::{Seek as _, SeekFrom};
        let mut file = File::open(path)?;
        file.seek(SeekFrom::Start(offset))?;
        let reader = BufReader::new(file);
        let mut entries = Vec::new();
        for line in reader.lines() {
            let line = line?;
            if line.trim().is_empty() {
                continue;
            }
            let entry = serde_json::from_str(&line)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
            entries.push(entry);
        }
        Ok(entries)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appended_entries_read_back_in_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("ledger.jsonl");
        let ledger = Ledger::open(&path).expect("open");
        let mut entry = LedgerEntry {
            ts: 1,
            method: "POST".into(),
            path: "/tapi".into(),
            query: String::new(),
            body: "method=get_info&nonce=1".into(),
            account: "acct".into(),
            key_id: "k1".into(),
            action: "read".into(),
            client_ip: "127.0.0.2".into(),
            request_id: "r1".into(),
        };
        ledger.append(&entry).expect("append");
        entry.ts = 2;
        entry.request_id = "r2".into();
        ledger.append(&entry).expect("append");
        let read = Ledger::read_all(&path).expect("read");
        assert_eq!(read.len(), 2);
        assert_eq!(read[0].request_id, "r1");
        assert_eq!(read[1], entry);
    }
}
