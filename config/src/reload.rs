//! `[reload]`: whether the gateway also reloads when its files change, not only on
//! SIGHUP.

use serde::Deserialize;

/// The validated `[reload]` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReloadConfig {
    /// Reload when the config file or a certificate or key it names changes (checked
    /// once a second with `stat`; an invalid file mid-edit is refused and counted, and
    /// the next save is tried again).
    pub watch_files: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawReload {
    watch_files: bool,
}

impl Default for RawReload {
    fn default() -> Self {
        RawReload { watch_files: true }
    }
}

impl RawReload {
    pub(crate) fn resolve(self) -> ReloadConfig {
        ReloadConfig {
            watch_files: self.watch_files,
        }
    }
}
