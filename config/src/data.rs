//! `[secrets]`, `[assertion]` and `[audit]`: the files the gateway keeps in its data
//! directory, and how long identity assertions live.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::de::{Bounded, EnvVarName, FromTomlStr, Name, Parsed};

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
}

impl Default for RawAudit {
    fn default() -> Self {
        RawAudit {
            path: Parsed(Name("audit.jsonl".to_owned())),
        }
    }
}

impl RawAudit {
    pub(crate) fn resolve(self, data_dir: &Path) -> AuditConfig {
        AuditConfig {
            path: DataFile::new(self.path.0 .0, data_dir),
        }
    }
}
