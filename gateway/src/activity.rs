//! When each key was last used, for the dormant-key rule. Kept in memory and written to
//! the store at most once a minute per key: dormancy is measured in days, so losing the
//! last minute of "last used" in a crash can only make a key look older (stricter).

use std::collections::HashMap;

use keyguard_policy::UnixMillis;
use parking_lot::Mutex;

/// How often one key's last use is written to the store.
const WRITE_EVERY_MS: u64 = 60_000;

/// Last-use times of keys.
#[derive(Default)]
pub struct Activity {
    /// key id → (last used, last written to the store)
    seen: Mutex<HashMap<String, (UnixMillis, UnixMillis)>>,
}

impl Activity {
    /// The later of the stored last use and the one seen by this process.
    pub fn last_used(&self, key_id: &str, stored: Option<UnixMillis>) -> Option<UnixMillis> {
        let mine = self.seen.lock().get(key_id).map(|(used, _)| *used);
        mine.max(stored)
    }

    /// Records a use; returns the time to write to the store when it is due.
    pub fn touch(&self, key_id: &str, now: UnixMillis) -> Option<UnixMillis> {
        let mut seen = self.seen.lock();
        let entry = seen.entry(key_id.to_owned()).or_insert((now, 0));
        entry.0 = entry.0.max(now);
        if now.saturating_sub(entry.1) >= WRITE_EVERY_MS {
            entry.1 = now;
            Some(entry.0)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn touches_are_written_at_most_once_a_minute() {
        let a = Activity::default();
        assert_eq!(a.last_used("k", Some(5)), Some(5));
        assert_eq!(a.touch("k", 100_000), Some(100_000));
        assert_eq!(a.touch("k", 100_500), None);
        assert_eq!(a.last_used("k", Some(5)), Some(100_500));
        assert_eq!(
            a.last_used("k", Some(200_000)),
            Some(200_000),
            "reactivation wins"
        );
        assert_eq!(a.touch("k", 160_000), Some(160_000));
    }
}
