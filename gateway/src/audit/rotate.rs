//! Rotation of the audit log by size and age. The writer rotates only between batches,
//! so the file at the configured path always holds whole lines: it is renamed to
//! `<name>.<UTC time>` (e.g. `audit.jsonl.20261202T001500Z`) once synced, and a new empty
//! file takes its place. Rotated files beyond `audit.max_files` are deleted, oldest first.

use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// When to rotate.
#[derive(Debug, Clone, Copy)]
pub struct RotatePolicy {
    /// Rotate once the file reaches this size (bytes); 0: never by size.
    pub max_bytes: u64,
    /// Rotate once the file is this old.
    pub max_age: Duration,
    /// Rotated files kept; 0 keeps all.
    pub keep: usize,
}

impl RotatePolicy {
    /// Whether a file of `len` bytes opened at `opened` is due.
    pub fn due(&self, len: u64, opened: SystemTime, now: SystemTime) -> bool {
        if len == 0 {
            return false;
        }
        (self.max_bytes > 0 && len >= self.max_bytes)
            || now.duration_since(opened).unwrap_or_default() >= self.max_age
    }
}

/// Opens `path` for appending (creating it), and returns it with its current length.
pub fn open_append(path: &Path) -> io::Result<(File, u64)> {
    let file = OpenOptions::new().create(true).append(true).open(path)?;
    let len = file.metadata()?.len();
    Ok((file, len))
}

/// Renames the file at `path` to its rotated name and returns that name. The caller
/// has synced it and opens a new one.
pub fn rotate_out(path: &Path, now: SystemTime) -> io::Result<PathBuf> {
    let stamp = compact_utc(now);
    let name = file_name(path);
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut target = dir.join(format!("{name}.{stamp}"));
    let mut n = 1;
    while target.exists() {
        // Two rotations in one second (a tiny rotate_bytes under load).
        target = dir.join(format!("{name}.{stamp}-{n}"));
        n += 1;
    }
    std::fs::rename(path, &target)?;
    Ok(target)
}

/// Makes the rename and the new file durable: both are entries of the directory.
pub fn sync_dir(path: &Path) -> io::Result<()> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
    File::open(dir.unwrap_or(Path::new(".")))?.sync_all()
}

/// Deletes the oldest rotated files of `path` beyond `keep` (0: keeps all).
pub fn prune(path: &Path, keep: usize) -> io::Result<usize> {
    if keep == 0 {
        return Ok(0);
    }
    let mut rotated = rotated_files(path)?;
    if rotated.len() <= keep {
        return Ok(0);
    }
    rotated.sort();
    let excess = rotated.len() - keep;
    for old in &rotated[..excess] {
        std::fs::remove_file(old)?;
    }
    Ok(excess)
}

/// The rotated files of `path`, in no particular order. Their suffix (a compact UTC
/// time) sorts by age.
pub fn rotated_files(path: &Path) -> io::Result<Vec<PathBuf>> {
    let prefix = format!("{}.", file_name(path));
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir.unwrap_or(Path::new(".")))? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(rest) = name.strip_prefix(&prefix) {
            // Only our own names: 8 digits, T, 6 digits, Z (and a -N tie breaker).
            let b = rest.as_bytes();
            if b.len() >= 16
                && b[..8].iter().all(u8::is_ascii_digit)
                && b[8] == b'T'
                && b[9..15].iter().all(u8::is_ascii_digit)
                && b[15] == b'Z'
            {
                out.push(entry.path());
            }
        }
    }
    Ok(out)
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "audit.jsonl".to_owned())
}

/// `YYYYMMDDTHHMMSSZ`: sorts by time, and has no `:` for tools that dislike them.
fn compact_utc(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    let text =
        humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(secs)).to_string();
    text.chars().filter(|c| c.is_ascii_alphanumeric()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotated_names_sort_by_time_and_pruning_keeps_the_newest() {
        assert_eq!(
            compact_utc(UNIX_EPOCH + Duration::from_secs(1_764_634_500)),
            "20251202T001500Z"
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        for (i, secs) in [1_000u64, 3_000, 2_000].into_iter().enumerate() {
            std::fs::write(&path, format!("{{\"n\":{i}}}\n")).unwrap();
            rotate_out(&path, UNIX_EPOCH + Duration::from_secs(secs)).unwrap();
        }
        std::fs::write(&path, "{}\n").unwrap();
        std::fs::write(dir.path().join("audit.jsonl.bak"), "not ours").unwrap();
        assert_eq!(rotated_files(&path).unwrap().len(), 3);
        assert_eq!(prune(&path, 2).unwrap(), 1);
        let mut left: Vec<String> = rotated_files(&path)
            .unwrap()
            .iter()
            .map(|p| std::fs::read_to_string(p).unwrap())
            .collect();
        left.sort();
        // The file rotated at t=1000 (n=0) was the oldest.
        assert_eq!(left, ["{\"n\":1}\n", "{\"n\":2}\n"]);
        assert!(path.exists() && dir.path().join("audit.jsonl.bak").exists());
    }

    #[test]
    fn due_by_size_or_age_but_never_when_empty() {
        let p = RotatePolicy {
            max_bytes: 100,
            max_age: Duration::from_secs(60),
            keep: 0,
        };
        let t = UNIX_EPOCH + Duration::from_secs(1_000);
        assert!(!p.due(0, t, t + Duration::from_secs(3600)));
        assert!(!p.due(99, t, t + Duration::from_secs(59)));
        assert!(p.due(100, t, t));
        assert!(p.due(1, t, t + Duration::from_secs(60)));
    }
}
