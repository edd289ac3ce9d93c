//! `[store]`: where shared state lives — the embedded SQLite store (the default), or
//! Redis (one node, or a Redis Cluster) shared by several gateway replicas.
//!
//! ```toml
//! [store]
//! kind = "redis"                  # "embedded" (default) or "redis"
//! url = "redis://10.0.0.5:6379/0" # or rediss:// for TLS; no credentials in the file
//! # cluster = ["redis://10.0.0.5:7000", "redis://10.0.0.6:7000"]  # instead of url
//! password_env = "KEYGUARD_REDIS_PASSWORD"  # the password, from this environment variable
//! username_env = "KEYGUARD_REDIS_USERNAME"  # optional ACL user name
//! timeout = "50ms"                # each Redis call; past it the call counts as failed
//! read_when_unavailable = "deny"  # or "local": reads pass under a per-replica limit
//! local_read_rate = 100           # reads per second per replica while Redis is down
//! prefix = "kg"                   # every Redis key starts with it
//! ```

use serde::Deserialize;
use toml::Spanned;

use crate::de::{Bounded, Dur, SECOND_MS};
use crate::error::{ConfigError, Source};

/// The validated `[store]` section.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum StoreConfig {
    /// SQLite in the data dir, in-process limits (one gateway per data dir).
    #[default]
    Embedded,
    /// Redis shared by every replica.
    Redis(RedisConfig),
}

/// How to reach Redis and what to do without it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisConfig {
    /// One node (`redis://` or `rediss://`), or the seed nodes of a cluster.
    pub target: RedisTarget,
    /// Environment variable holding the password (never in the file).
    pub password_env: Option<String>,
    /// Environment variable holding the ACL user name.
    pub username_env: Option<String>,
    /// Deadline of each call (ms).
    pub timeout_ms: u64,
    /// What reads do while Redis cannot be reached.
    pub read_when_unavailable: ReadWhenUnavailable,
    /// Reads per second one replica lets through on its own while Redis is down
    /// ([`ReadWhenUnavailable::Local`]).
    pub local_read_rate: u32,
    /// The prefix of every key Keyguard writes.
    pub prefix: String,
}

/// A single node or a cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedisTarget {
    /// One server.
    Single(String),
    /// Seed nodes of a Redis Cluster.
    Cluster(Vec<String>),
}

/// `read_when_unavailable`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReadWhenUnavailable {
    /// Refuse reads too (503 `state_unavailable`).
    Deny,
    /// Let reads through under a per-replica rate, audited as such.
    Local,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
enum Kind {
    #[default]
    Embedded,
    Redis,
}

/// `[store]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawStore {
    kind: Kind,
    url: Option<Spanned<String>>,
    cluster: Option<Spanned<Vec<String>>>,
    password_env: Option<String>,
    username_env: Option<String>,
    timeout: Dur<1, { 10 * SECOND_MS }>,
    read_when_unavailable: ReadWhenUnavailable,
    local_read_rate: Bounded<1, 1_000_000>,
    prefix: Spanned<String>,
}

impl Default for RawStore {
    fn default() -> Self {
        RawStore {
            kind: Kind::Embedded,
            url: None,
            cluster: None,
            password_env: None,
            username_env: None,
            timeout: Dur(50),
            read_when_unavailable: ReadWhenUnavailable::Deny,
            local_read_rate: Bounded(100),
            prefix: Spanned::new(0..0, "kg".to_owned()),
        }
    }
}

/// Checks one Redis URL: scheme, host, and no credentials in the file.
fn check_url(url: &str) -> Result<(), String> {
    let rest = url
        .strip_prefix("redis://")
        .or_else(|| url.strip_prefix("rediss://"))
        .ok_or_else(|| format!("{url:?} must start with redis:// or rediss://"))?;
    let authority = rest.split('/').next().unwrap_or("");
    if authority.contains('@') {
        return Err(
            "credentials do not belong in the file: set password_env (and username_env)".into(),
        );
    }
    if authority.is_empty() {
        return Err(format!("{url:?} names no host"));
    }
    Ok(())
}

impl RawStore {
    pub(crate) fn resolve(self, src: &Source<'_>) -> Result<StoreConfig, ConfigError> {
        let at = |span: std::ops::Range<usize>, key: &str, msg: String| {
            if span.is_empty() {
                src.error(Some(format!("store.{key}")), msg)
            } else {
                src.error_at(span, format!("store.{key}"), msg)
            }
        };
        if self.kind == Kind::Embedded {
            if let Some(url) = &self.url {
                return Err(at(
                    url.span(),
                    "url",
                    "url is set but kind is \"embedded\": set kind = \"redis\"".into(),
                ));
            }
            if let Some(nodes) = &self.cluster {
                return Err(at(
                    nodes.span(),
                    "cluster",
                    "cluster is set but kind is \"embedded\": set kind = \"redis\"".into(),
                ));
            }
            return Ok(StoreConfig::Embedded);
        }
        let target = match (self.url, self.cluster) {
            (Some(url), None) => {
                check_url(url.get_ref()).map_err(|m| at(url.span(), "url", m))?;
                RedisTarget::Single(url.into_inner())
            }
            (None, Some(nodes)) => {
                if nodes.get_ref().is_empty() {
                    return Err(at(nodes.span(), "cluster", "name at least one node".into()));
                }
                for n in nodes.get_ref() {
                    check_url(n).map_err(|m| at(nodes.span(), "cluster", m))?;
                }
                RedisTarget::Cluster(nodes.into_inner())
            }
            (Some(_), Some(nodes)) => {
                return Err(at(
                    nodes.span(),
                    "cluster",
                    "set url or cluster, not both".into(),
                ));
            }
            (None, None) => {
                return Err(at(
                    0..0,
                    "url",
                    "kind = \"redis\" needs url (one node) or cluster (seed nodes)".into(),
                ));
            }
        };
        let prefix = self.prefix.get_ref();
        let valid_prefix = !prefix.is_empty()
            && prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !valid_prefix {
            return Err(at(
                self.prefix.span(),
                "prefix",
                format!("{prefix:?}: use letters, digits, '-' or '_'"),
            ));
        }
        Ok(StoreConfig::Redis(RedisConfig {
            target,
            password_env: self.password_env,
            username_env: self.username_env,
            timeout_ms: self.timeout.ms(),
            read_when_unavailable: self.read_when_unavailable,
            local_read_rate: self.local_read_rate.0 as u32,
            prefix: self.prefix.into_inner(),
        }))
    }
}
