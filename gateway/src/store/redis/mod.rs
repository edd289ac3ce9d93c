//! The distributed store: state shared by every gateway replica in Redis (one node or a
//! Redis Cluster), so a leaked key gains nothing by spreading its requests over them.
//!
//! # Layout
//! - this file: connections (one per worker thread, each call under a deadline), the
//!   names of Redis keys, and the bans/blocks cache the pre-auth stage reads.
//! - [`admit`]: the one script per request (`admit.lua`): bans, blocks, the network's
//!   rate, shared-IP and many-IPs sightings, dormancy, new-network probation, per-key
//!   rates, the nonce or seen signature, and the velocity reservation; beside it the
//!   off-path scripts: auth failures, velocity settlement, the canary's block and its
//!   "back on probation" (`forget.lua`).
//! - [`catalog`]: key records and freezes as JSON documents, the per-replica key cache
//!   fed by pub/sub with a periodic full check, and the operator commands on them.
//! - [`activity`]: per-key activity for the pages, one stream per account.
//! - [`pending`]: key edits (narrowing at once, widening after its cool-down, applied
//!   by exactly one replica when due), in the catalogue's slot.
//! - [`migrate`]: `keyguard migrate`, from an embedded data dir into Redis.
//! - [`auth`]: the admin listener's logins: accounts, sessions, SSO `jti`s, API tokens.
//!
//! # Slots
//! Everything of one account shares the hash tag `{a:<account>}` and everything of one
//! client network `{n:<network>}`, so on one node the whole request is one script, and
//! in a cluster it is at most two calls sent at once (the account's part and the
//! network's part live on different nodes). The catalogue index and freezes are small
//! and live under `<prefix>:{cat}:*` (one slot).
//!
//! # Bounded memory
//! Keys per client network (bans, shared-IP sets, rate cells, auth failures) carry a TTL;
//! per-key state (nonce, history, last use) exists only for keys in the catalogue and
//! each is bounded (history: `max_per_key` networks; sightings: `max_ips + 1`); signature
//! and velocity entries expire with their window. Pending key edits are capped per key
//! and deleted when decided ([`pending`]); activity streams are trimmed by count and age
//! and expire with the retention ([`activity`]).
//!
//! Auth-failure records are also bounded in number, like the embedded store's table:
//! once more networks failed within the window than `anomaly.max_entries` (counted with
//! a HyperLogLog per window, `<prefix>:{af}:hll:<epoch>`), a network without a record of
//! its own counts towards one of [`OVERFLOW_SHARDS`] shared overflow records
//! (`{n:~o<shard>}`), and while that overflow is banned every untracked network of its
//! shard is refused (`admit.lua`, ARGV 8): a flood from ever new addresses is banned
//! together instead of growing Redis.

pub mod activity;
pub mod admit;
pub mod auth;
pub mod catalog;
pub mod migrate;
pub mod pending;

use std::cell::RefCell;
use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use keyguard_config::{RedisConfig, RedisTarget};
use keyguard_policy::anomaly::Standing;
use keyguard_policy::limits::ClientNet;
use keyguard_policy::UnixMillis;
use parking_lot::Mutex;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, IntoConnectionInfo, Pipeline, RedisFuture, Value};

/// Why a Redis call gave no answer: the caller fails closed (trade, withdraw) or follows
/// `read_when_unavailable` (reads).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No answer within the configured timeout.
    #[error("redis did not answer within {0:?}")]
    Timeout(Duration),
    /// Connecting or the call failed.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// The answer did not have the expected shape (a script or version mismatch).
    #[error("redis: unexpected reply: {0}")]
    Reply(String),
}

/// A connection to one node (reconnecting by itself) or to a cluster (following slot
/// moves and failovers by itself).
#[derive(Clone)]
pub enum Conn {
    /// One node.
    Single(ConnectionManager),
    /// A cluster.
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

enum Client {
    Single(Box<redis::Client>),
    Cluster(Box<ClusterClient>),
}

static NEXT_STORE_ID: AtomicU64 = AtomicU64::new(1);

thread_local! {
    /// Each worker thread's own connection per store: a worker's runtime drives its own
    /// connection, so a request never waits for another thread.
    static CONNS: RefCell<HashMap<u64, Conn>> = RefCell::new(HashMap::new());
}

/// Redis as the shared store of several replicas.
pub struct RedisStore {
    id: u64,
    client: Client,
    prefix: String,
    timeout: Duration,
    /// Bans and blocks this replica knows of (from script replies and pub/sub), for the
    /// pre-auth stage, which must not cost a round trip.
    standing: Mutex<HashMap<ClientNet, Standing>>,
    /// Ban ends of the auth-failure overflow records, by shard (from replies and
    /// pub/sub, like `standing`).
    overflow_bans: [AtomicU64; OVERFLOW_SHARDS],
    /// Sightings this replica recorded lately (see [`admit::RecentSightings`]).
    recent: admit::RecentSightings,
    cfg: RedisConfig,
    /// Itself, for work spawned off the request path.
    this: std::sync::Weak<RedisStore>,
}

/// Most networks whose bans the pre-auth cache holds; past it new bans are still
/// enforced by the script, only not before authentication.
const MAX_CACHED_STANDINGS: usize = 100_000;

/// Shared overflow records of auth failures (see "Bounded memory" above): a flood is
/// banned per shard, so one shard's ban does not refuse every untracked network at once.
pub const OVERFLOW_SHARDS: usize = 16;

/// The overflow shard of `net`: the same on every replica (a fixed hash, not a seeded one).
pub fn overflow_shard(net: ClientNet) -> usize {
    let v = match net {
        ClientNet::V4(a) => u64::from(u32::from(a)),
        ClientNet::V6(p) => p ^ (1 << 63),
    };
    (v.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 60) as usize % OVERFLOW_SHARDS
}

/// The network name of an overflow record: `~o<shard>`, which no address parses as.
pub fn overflow_name(shard: usize) -> String {
    format!("~o{shard}")
}

fn now_ms() -> UnixMillis {
    use keyguard_policy::time::Clock as _;
    keyguard_policy::time::SystemClock.now_ms()
}

fn env_secret(var: &Option<String>, what: &str) -> anyhow::Result<Option<String>> {
    match var {
        None => Ok(None),
        Some(name) => match std::env::var(name) {
            Ok(v) => Ok(Some(v)),
            Err(_) => anyhow::bail!("[store] {what}_env names {name}, which is not set"),
        },
    }
}

/// One node's connection settings, with the credentials from the environment.
fn node_info(
    url: &str,
    password: &Option<String>,
    username: &Option<String>,
) -> anyhow::Result<redis::ConnectionInfo> {
    let info = url.into_connection_info()?;
    let mut settings = info.redis_settings().clone();
    if let Some(p) = password {
        settings = settings.set_password(p);
    }
    if let Some(u) = username {
        settings = settings.set_username(u);
    }
    Ok(info.set_redis_settings(settings))
}

impl RedisStore {
    /// A store for `cfg`; connects lazily (per thread), so a gateway starts, and fails
    /// closed, while Redis is down.
    pub fn new(cfg: &RedisConfig) -> anyhow::Result<std::sync::Arc<RedisStore>> {
        let password = env_secret(&cfg.password_env, "password")?;
        let username = env_secret(&cfg.username_env, "username")?;
        let timeout = Duration::from_millis(cfg.timeout_ms);
        let client = match &cfg.target {
            RedisTarget::Single(url) => Client::Single(Box::new(redis::Client::open(node_info(
                url, &password, &username,
            )?)?)),
            RedisTarget::Cluster(nodes) => {
                let mut b = ClusterClient::builder(nodes.iter().map(String::as_str))
                    .connection_timeout(timeout)
                    .response_timeout(timeout)
                    .retries(1);
                if let Some(p) = &password {
                    b = b.password(p);
                }
                if let Some(u) = &username {
                    b = b.username(u);
                }
                Client::Cluster(Box::new(b.build()?))
            }
        };
        Ok(std::sync::Arc::new_cyclic(|this| RedisStore {
            id: NEXT_STORE_ID.fetch_add(1, Ordering::Relaxed),
            client,
            prefix: cfg.prefix.clone(),
            timeout,
            standing: Mutex::new(HashMap::new()),
            overflow_bans: Default::default(),
            recent: Default::default(),
            cfg: cfg.clone(),
            this: this.clone(),
        }))
    }

    /// The settings it was made from.
    pub fn config(&self) -> &RedisConfig {
        &self.cfg
    }

    /// The deadline of each call.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// This thread's connection, made on first use.
    pub async fn conn(&self) -> Result<Conn, StoreError> {
        if let Some(c) = CONNS.with(|m| m.borrow().get(&self.id).cloned()) {
            return Ok(c);
        }
        let c = match tokio::time::timeout(self.timeout, self.connect()).await {
            Ok(c) => c?,
            Err(_) => return Err(StoreError::Timeout(self.timeout)),
        };
        CONNS.with(|m| m.borrow_mut().insert(self.id, c.clone()));
        Ok(c)
    }

    /// A new connection, not cached (pub/sub and one-off CLI use).
    pub async fn connect(&self) -> Result<Conn, StoreError> {
        Ok(match &self.client {
            Client::Single(c) => {
                let cfg = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(self.timeout))
                    .set_response_timeout(Some(self.timeout))
                    .set_number_of_retries(2)
                    .set_max_delay(Duration::from_millis(200));
                Conn::Single(c.get_connection_manager_with_config(cfg).await?)
            }
            Client::Cluster(c) => Conn::Cluster(c.get_async_connection().await?),
        })
    }

    /// A plain client for SUBSCRIBE on a single node; `None` for a cluster, whose
    /// subscriber connects to a seed node itself ([`catalog::events_loop`]).
    pub(crate) fn pubsub_client(&self) -> anyhow::Result<redis::Client> {
        match (&self.client, &self.cfg.target) {
            (Client::Single(c), _) => Ok((**c).clone()),
            (Client::Cluster(_), RedisTarget::Cluster(nodes)) => {
                let password = env_secret(&self.cfg.password_env, "password")?;
                let username = env_secret(&self.cfg.username_env, "username")?;
                // A PUBLISH reaches the subscribers of every node of a cluster, so any
                // one node will do; the loop moves on to the next when one fails.
                let n = NEXT_STORE_ID.fetch_add(1, Ordering::Relaxed) as usize % nodes.len();
                Ok(redis::Client::open(node_info(
                    &nodes[n], &password, &username,
                )?)?)
            }
            (Client::Cluster(_), RedisTarget::Single(_)) => unreachable!("built from the target"),
        }
    }

    /// Runs `f` under the store's deadline. After a timeout or a connection-level error
    /// this thread's connection is dropped, so the next call connects afresh (and, in a
    /// cluster, reads the slot map anew: after a failover the old one names a dead
    /// master). Errors Redis itself answered with keep the connection.
    pub async fn deadline<T>(
        &self,
        f: impl Future<Output = Result<T, redis::RedisError>>,
    ) -> Result<T, StoreError> {
        let started = std::time::Instant::now();
        let result = tokio::time::timeout(self.timeout, f).await;
        let m = crate::metrics::metrics();
        m.redis_call_duration.observe(started.elapsed());
        if !matches!(result, Ok(Ok(_))) {
            m.redis_call_errors.inc();
        }
        match result {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => {
                if e.is_io_error()
                    || e.is_connection_dropped()
                    || e.is_connection_refusal()
                    || e.is_timeout()
                    || e.is_cluster_error()
                {
                    self.forget_conn();
                }
                Err(e.into())
            }
            Err(_) => {
                self.forget_conn();
                Err(StoreError::Timeout(self.timeout))
            }
        }
    }

    fn forget_conn(&self) {
        CONNS.with(|m| m.borrow_mut().remove(&self.id));
    }

    /// One command on this thread's connection, under the deadline.
    pub async fn query<T: redis::FromRedisValue>(&self, cmd: &Cmd) -> Result<T, StoreError> {
        let mut c = self.conn().await?;
        self.deadline(cmd.query_async(&mut c)).await
    }

    /// Whether this is a cluster (network and account parts run as separate calls).
    pub fn is_cluster(&self) -> bool {
        matches!(self.client, Client::Cluster(_))
    }

    /// The slot base of an account's state.
    pub fn account_base(&self, account: &str) -> String {
        format!("{}:{{a:{}}}", self.prefix, safe_name(account))
    }

    /// The slot base of a client network's state (or of an overflow record, by name).
    pub fn net_base(&self, net: impl std::fmt::Display) -> String {
        format!("{}:{{n:{}}}", self.prefix, net)
    }

    /// The catalogue's keys, all in one slot: `<prefix>:{cat}:<name>`.
    pub fn cat_key(&self, name: &str) -> String {
        format!("{}:{{cat}}:{name}", self.prefix)
    }

    /// The pub/sub channel for bans and blocks (the scripts publish on it too).
    pub fn events_channel(&self) -> String {
        format!("{}:events", self.prefix)
    }

    /// The pub/sub channel for key and freeze changes.
    pub fn changes_channel(&self) -> String {
        format!("{}:changes", self.prefix)
    }

    /// The bans and blocks this replica knows of for `net`.
    pub fn cached_standing(&self, net: ClientNet, now: UnixMillis) -> Standing {
        let mut map = self.standing.lock();
        let Some(s) = map.get(&net).copied() else {
            return Standing::CLEAR;
        };
        let live = |t: Option<UnixMillis>| t.filter(|&t| t > now);
        let s = Standing {
            banned_until: live(s.banned_until),
            blocked_until: live(s.blocked_until),
            tripped_until: live(s.tripped_until),
        };
        if s == Standing::CLEAR {
            map.remove(&net);
        }
        s
    }

    /// Remembers a ban or block for the pre-auth stage (`what`: `banned`, `blocked`,
    /// `tripped`).
    pub fn remember_standing(&self, net: ClientNet, what: &str, until: UnixMillis) {
        let mut map = self.standing.lock();
        if map.len() >= MAX_CACHED_STANDINGS && !map.contains_key(&net) {
            return;
        }
        let s = map.entry(net).or_default();
        let slot = match what {
            "banned" => &mut s.banned_until,
            "blocked" => &mut s.blocked_until,
            "tripped" => &mut s.tripped_until,
            _ => return,
        };
        *slot = Some(slot.map_or(until, |t| t.max(until)));
    }

    /// Whether the overflow record of `net`'s shard is banned now, as far as this replica
    /// knows.
    pub fn overflow_banned(&self, net: ClientNet) -> bool {
        // Read on every request: the clock only when a ban was ever seen.
        let until = self.overflow_bans[overflow_shard(net)].load(Ordering::Relaxed);
        until != 0 && until > now_ms()
    }

    /// Remembers a ban of an overflow record; `name` is `~o<shard>` (anything else is
    /// ignored: this replica's announcements come back through pub/sub too).
    pub fn remember_overflow_ban(&self, name: &str, until: UnixMillis) {
        if let Some(shard) = name
            .strip_prefix("~o")
            .and_then(|n| n.parse::<usize>().ok())
            .filter(|&n| n < OVERFLOW_SHARDS)
        {
            self.overflow_bans[shard].fetch_max(until, Ordering::Relaxed);
        }
    }

    /// Drops expired bans from the cache.
    pub fn sweep(&self, now: UnixMillis) {
        self.standing.lock().retain(|_, s| {
            [s.banned_until, s.blocked_until, s.tripped_until]
                .iter()
                .any(|t| t.is_some_and(|t| t > now))
        });
    }
}

/// A name safe inside a Redis key and a hash tag: kept when it is plain, hex otherwise
/// (an account named `a}b` must not end the tag early).
pub fn safe_name(s: &str) -> String {
    let plain = !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b'@'));
    if plain {
        s.to_owned()
    } else {
        format!("~{}", hex::encode(s.as_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_cannot_escape_their_hash_tag() {
        assert_eq!(safe_name("alice"), "alice");
        assert_eq!(safe_name("a}b"), "~617d62");
        assert_eq!(safe_name("a,b"), "~612c62");
        assert_eq!(safe_name(""), "~");
        assert!(safe_name(&"x".repeat(65)).starts_with('~'));
    }
}
