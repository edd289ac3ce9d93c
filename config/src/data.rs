//! `[secrets]`, `[assertion]` and `[audit]`: the files the gateway keeps in its data
//! directory, and how long identity assertions live.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::de::{Bounded, Dur, EnvVarName, FromTomlStr, Name, Parsed};
use crate::error::{ConfigError, Source};

/// A file in the data directory. A relative name is kept alongside the resolved path, so
/// moving the data directory (`--data-dir`) moves the file with it; an absolute name stays
/// where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataFile {
    configured: PathBuf,
    path: PathBuf,
}

impl DataFile {
    fn new(configured: String, data_dir: &Path) -> Self {
        let configured = PathBuf::from(configured);
        DataFile {
            path: data_dir.join(&configured),
            configured,
        }
    }

    /// The path to open: the configured name resolved against the data directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The name as written in the config file.
    pub fn configured(&self) -> &Path {
        &self.configured
    }

    /// Re-resolves the configured name against a new data directory.
    pub(crate) fn rebase(&mut self, data_dir: &Path) {
        self.path = data_dir.join(&self.configured);
    }
}

// A DataFile is used wherever a path is: `File::open(&cfg.audit.path)`, `&cfg.audit.path`
// passed as `&Path`.
impl std::ops::Deref for DataFile {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.path
    }
}

impl AsRef<Path> for DataFile {
    fn as_ref(&self) -> &Path {
        &self.path
    }
}

/// The validated `[secrets]` section: where the master key that encrypts API secrets at
/// rest comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretsConfig {
    /// The master key file (created on first use by the gateway).
    pub master_key_file: DataFile,
    /// An environment variable that, when set, holds the master key as 64 hex digits and
    /// wins over the file (for deployments that inject secrets through the environment).
    pub master_key_env: String,
}

/// The validated `[assertion]` section: the identity assertion sent upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AssertionConfig {
    /// How assertions are signed.
    pub alg: AssertionAlg,
    /// Lifetime of each assertion (`exp - iat`) in seconds: 1 to 30, so a leaked one is
    /// short-lived.
    pub ttl_secs: u64,
    /// The signing key file (created on first use by the gateway): 32 random bytes for
    /// HS256 (`assertion-hs256.key` unless set), an Ed25519 PKCS#8 document for EdDSA
    /// (`assertion.key` unless set, the name it has always had).
    pub key_file: DataFile,
}

/// The JWT algorithm of the identity assertion (DESIGN §3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AssertionAlg {
    /// HMAC-SHA256 under a 256-bit key shared with the exchange: about a microsecond.
    #[default]
    Hs256,
    /// Ed25519: the exchange holds only a public key, at about 23 µs of CPU a request.
    EdDsa,
}

impl AssertionAlg {
    /// The JOSE `alg` name.
    pub const fn as_str(self) -> &'static str {
        match self {
            AssertionAlg::Hs256 => "HS256",
            AssertionAlg::EdDsa => "EdDSA",
        }
    }
}

impl FromTomlStr for AssertionAlg {
    fn from_toml_str(s: &str) -> Result<Self, String> {
        match s {
            "HS256" => Ok(AssertionAlg::Hs256),
            "EdDSA" => Ok(AssertionAlg::EdDsa),
            _ => Err(format!(
                "unknown algorithm {s:?} (expected \"HS256\" or \"EdDSA\")"
            )),
        }
    }
}

/// The validated `[audit]` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditConfig {
    /// The JSON Lines audit log.
    pub path: DataFile,
    /// How often written lines are forced to disk (`fdatasync`): what a power cut can take.
    pub fsync_interval: Duration,
    /// The current file is rotated once it is this large (bytes); 0: never by size.
    pub rotate_bytes: u64,
    /// The current file is rotated once it is this old.
    pub rotate_interval: Duration,
    /// Rotated files kept (the oldest beyond this are deleted); 0 keeps all.
    pub max_files: usize,
    /// How long a request waits for its line to be written, and how long one write may
    /// take before the log counts as stalled (trades and withdrawals are then refused).
    pub write_timeout: Duration,
    /// Lines that may wait for the writer; beyond this, lines are dropped and counted.
    pub queue_lines: usize,
    /// Refusals before authentication written one line each per client network and
    /// second; beyond this they are counted in one `summary` line per network, code and
    /// second.
    pub preauth_lines_per_sec: u32,
}

/// `[secrets]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawSecrets {
    master_key_file: Parsed<Name>,
    master_key_env: Parsed<EnvVarName>,
}

impl Default for RawSecrets {
    fn default() -> Self {
        RawSecrets {
            master_key_file: Parsed(Name("master.key".to_owned())),
            master_key_env: Parsed(EnvVarName("KEYGUARD_MASTER_KEY".to_owned())),
        }
    }
}

impl RawSecrets {
    pub(crate) fn resolve(self, data_dir: &Path) -> SecretsConfig {
        SecretsConfig {
            master_key_file: DataFile::new(self.master_key_file.0 .0, data_dir),
            master_key_env: self.master_key_env.0 .0,
        }
    }
}

/// `[assertion]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawAssertion {
    alg: Parsed<AssertionAlg>,
    // The design caps `exp` at 30 s; 0 would make every assertion expired on arrival.
    ttl_secs: Bounded<1, 30>,
    // The default depends on `alg`, so that switching algorithms never reads one kind of
    // key file as the other (and a data dir from before HS256 keeps its Ed25519 key).
    key_file: Option<Parsed<Name>>,
}

impl Default for RawAssertion {
    fn default() -> Self {
        RawAssertion {
            alg: Parsed(AssertionAlg::default()),
            ttl_secs: Bounded(30),
            key_file: None,
        }
    }
}

impl RawAssertion {
    pub(crate) fn resolve(self, data_dir: &Path) -> AssertionConfig {
        let alg = self.alg.0;
        let key_file = match self.key_file {
            Some(Parsed(Name(n))) => n,
            None => match alg {
                AssertionAlg::Hs256 => "assertion-hs256.key".to_owned(),
                AssertionAlg::EdDsa => "assertion.key".to_owned(),
            },
        };
        AssertionConfig {
            alg,
            ttl_secs: self.ttl_secs.0,
            key_file: DataFile::new(key_file, data_dir),
        }
    }
}

/// `[audit]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawAudit {
    path: Parsed<Name>,
    // Up to a minute: longer would let a power cut take more than operators expect of an
    // audit log; below 10 ms the syncs alone would saturate a slow disk.
    fsync_interval: Dur<10, { 60 * SECOND_MS }>,
    // 0 disables size rotation; a file under 64 KiB would rotate many times a second
    // under load.
    rotate_bytes: Option<toml::Spanned<u64>>,
    rotate_interval: Dur<{ 60 * SECOND_MS }, { 366 * DAY_MS }>,
    max_files: Bounded<0, 100_000>,
    write_timeout: Dur<10, { 60 * SECOND_MS }>,
    queue_lines: Bounded<16, 10_000_000>,
    preauth_lines_per_sec: Bounded<1, 1_000_000>,
}

const SECOND_MS: u64 = 1_000;
const DAY_MS: u64 = 86_400 * SECOND_MS;

impl Default for RawAudit {
    fn default() -> Self {
        RawAudit {
            path: Parsed(Name("audit.jsonl".to_owned())),
            fsync_interval: Dur(SECOND_MS),
            rotate_bytes: None,
            rotate_interval: Dur(DAY_MS),
            max_files: Bounded(30),
            write_timeout: Dur(2 * SECOND_MS),
            queue_lines: Bounded(65_536),
            preauth_lines_per_sec: Bounded(20),
        }
    }
}

impl RawAudit {
    pub(crate) fn resolve(
        self,
        src: &Source<'_>,
        data_dir: &Path,
    ) -> Result<AuditConfig, ConfigError> {
        let rotate_bytes = match &self.rotate_bytes {
            None => 256 << 20,
            Some(b) if *b.get_ref() != 0 && *b.get_ref() < 64 << 10 => {
                return Err(src.error_at(
                    b.span(),
                    "audit.rotate_bytes",
                    format!(
                        "{} is below 64 KiB (65536): the log would rotate many times a \
                         second under load; use 0 to rotate by time only",
                        b.get_ref()
                    ),
                ));
            }
            Some(b) => *b.get_ref(),
        };
        Ok(AuditConfig {
            path: DataFile::new(self.path.0 .0, data_dir),
            fsync_interval: self.fsync_interval.duration(),
            rotate_bytes,
            rotate_interval: self.rotate_interval.duration(),
            max_files: self.max_files.0 as usize,
            write_timeout: self.write_timeout.duration(),
            queue_lines: self.queue_lines.0 as usize,
            preauth_lines_per_sec: self.preauth_lines_per_sec.0 as u32,
        })
    }
}
