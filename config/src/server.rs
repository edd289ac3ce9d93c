//! `[server]`: where the gateway listens, where it forwards to, where it keeps its files,
//! and the limits that protect the listener itself.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use http::uri::{Authority, Scheme};
use ipnet::IpNet;
use serde::Deserialize;
use toml::Spanned;

use crate::de::{Bounded, FromTomlStr, Name, Parsed};
use crate::error::{ConfigError, Source};

/// The validated `[server]` section. Fields are named and measured as the keys in the
/// file are. Command-line flags that need no checking (`--listen`, `--admin-listen`) are
/// applied by assigning the fields; see [`Config::set_upstream`](crate::Config::set_upstream)
/// and [`Config::set_data_dir`](crate::Config::set_data_dir) for the others.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    /// The exchange-facing listener.
    pub listen: SocketAddr,
    /// The admin listener (web UI, admin API, health, metrics), if enabled. The file may
    /// not put it on [`listen`](Self::listen): admin endpoints must not be reachable where
    /// clients send exchange traffic (a flag that makes them clash fails at bind).
    pub admin_listen: Option<SocketAddr>,
    /// The exchange API requests are forwarded to. Optional in the file because `serve
    /// --upstream` may supply it; see [`Config::require_upstream`](crate::Config::require_upstream).
    pub upstream: Option<Upstream>,
    /// The data directory, resolved against the config file's directory (or as given on
    /// the command line).
    pub data_dir: PathBuf,
    /// Proxies whose `X-Forwarded-For` is believed when finding the client IP.
    pub trusted_proxies: Vec<IpNet>,
    /// Largest request body buffered (the signature covers the whole body).
    pub max_body_bytes: usize,
    /// Largest request head (request line and headers).
    pub max_header_bytes: usize,
    /// Most client connections open at once.
    pub max_connections: usize,
    /// Time allowed to receive the request head, in ms (slowloris). It also closes a
    /// keep-alive connection left idle that long: hyper re-arms the same timer between
    /// requests, so a separate, longer idle timeout could never take effect.
    pub header_read_timeout_ms: u64,
    /// Time allowed to receive the body once the head is in, in ms.
    pub body_read_timeout_ms: u64,
    /// Time allowed to connect to the upstream, in ms.
    pub upstream_connect_timeout_ms: u64,
    /// Time allowed for the upstream's response head, and for each wait between pieces of
    /// its body, in ms.
    pub upstream_response_timeout_ms: u64,
    /// Worker threads, each with its own runtime, listener (`SO_REUSEPORT`) and upstream
    /// connections, so a request never changes threads. `None`: one per available core.
    pub workers: Option<usize>,
    /// Idle upstream connections each worker keeps open for reuse.
    pub upstream_max_idle_per_worker: usize,
}

/// An upstream base URL: `http://host[:port]` or `https://host[:port]`, nothing after the authority, because each
/// request is forwarded with its own path and query.
///
/// Parsed with [`FromStr`] (which `--upstream` uses too), so every upstream the gateway
/// sees has passed the same checks.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Upstream {
    scheme: Scheme,
    authority: Authority,
}

impl Upstream {
    /// The scheme (`http` or `https`).
    pub fn scheme(&self) -> &Scheme {
        &self.scheme
    }

    /// Host and optional port, e.g. `127.0.0.1:9000`.
    pub fn authority(&self) -> &Authority {
        &self.authority
    }

    /// The base as a URI, `http://host:port/`.
    pub fn uri(&self) -> http::Uri {
        http::Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query("/")
            .build()
            .expect("scheme and authority were validated when parsed")
    }
}

impl fmt::Display for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}", self.scheme, self.authority)
    }
}

/// Why a string is not an [`Upstream`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid upstream {url:?}: {reason}")]
pub struct InvalidUpstream {
    url: String,
    reason: &'static str,
}

impl FromStr for Upstream {
    type Err = InvalidUpstream;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let fail = |reason| InvalidUpstream {
            url: s.to_owned(),
            reason,
        };
        // http::Uri drops a fragment silently; refuse it instead of guessing.
        if s.contains('#') {
            return Err(fail("must not have a fragment"));
        }
        let uri: http::Uri = s
            .parse()
            .map_err(|_| fail("not a URL (expected http://host:port)"))?;
        let scheme = match uri.scheme_str() {
            Some("http") => Scheme::HTTP,
            Some("https") => Scheme::HTTPS,
            _ => return Err(fail("must start with http:// or https://")),
        };
        let authority = uri
            .authority()
            .ok_or_else(|| fail("must name a host"))?
            .clone();
        if authority.as_str().contains('@') {
            return Err(fail("must not contain user information (`user@`)"));
        }
        let host = authority.host();
        if host.is_empty() {
            return Err(fail("must name a host"));
        }
        // `http::Uri` accepts `host:` and `host:99999` (with no port); we do not.
        let port = &authority.as_str()[host.len()..];
        if !port.is_empty() && !matches!(authority.port_u16(), Some(1..)) {
            return Err(fail("port must be between 1 and 65535"));
        }
        if uri.path() != "/" || uri.query().is_some() {
            return Err(fail(
                "must not have a path or query (requests are forwarded with their own)",
            ));
        }
        Ok(Upstream { scheme, authority })
    }
}

impl FromTomlStr for Upstream {
    fn from_toml_str(s: &str) -> Result<Self, String> {
        s.parse().map_err(|e: InvalidUpstream| e.to_string())
    }
}

const MIB: u64 = 1024 * 1024;
/// An hour: any longer is a unit mistake, not a timeout.
const MAX_TIMEOUT_MS: u64 = 3_600_000;

/// `[server]` as written. Absent keys take the values in [`Default`].
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawServer {
    listen: Parsed<SocketAddr>,
    admin_listen: Option<Spanned<Parsed<SocketAddr>>>,
    upstream: Option<Parsed<Upstream>>,
    data_dir: Parsed<Name>,
    trusted_proxies: Vec<Parsed<IpNet>>,
    max_body_bytes: Bounded<1, { 16 * MIB }>,
    // hyper's HTTP/1 read buffer cannot be smaller than 8 KiB (it panics), and the head
    // must fit in it.
    max_header_bytes: Bounded<8192, MIB>,
    max_connections: Bounded<1, 1_000_000>,
    header_read_timeout_ms: Bounded<1, MAX_TIMEOUT_MS>,
    body_read_timeout_ms: Bounded<1, MAX_TIMEOUT_MS>,
    upstream_connect_timeout_ms: Bounded<1, MAX_TIMEOUT_MS>,
    upstream_response_timeout_ms: Bounded<1, MAX_TIMEOUT_MS>,
    workers: Option<Bounded<1, 1024>>,
    upstream_max_idle_per_worker: Bounded<0, 65_536>,
    /// Removed (it never applied); kept only to explain that, see [`RawServer::resolve`].
    idle_timeout_ms: Option<Spanned<toml::Value>>,
}

impl Default for RawServer {
    fn default() -> Self {
        RawServer {
            listen: Parsed(SocketAddr::from(([127, 0, 0, 1], 8080))),
            admin_listen: None,
            upstream: None,
            data_dir: Parsed(Name("keyguard-data".to_owned())),
            trusted_proxies: Vec::new(),
            max_body_bytes: Bounded(64 * 1024),
            max_header_bytes: Bounded(16 * 1024),
            max_connections: Bounded(4096),
            header_read_timeout_ms: Bounded(5_000),
            body_read_timeout_ms: Bounded(10_000),
            upstream_connect_timeout_ms: Bounded(2_000),
            upstream_response_timeout_ms: Bounded(10_000),
            workers: None,
            upstream_max_idle_per_worker: Bounded(256),
            idle_timeout_ms: None,
        }
    }
}

impl RawServer {
    /// Validates what single values cannot and resolves `data_dir` against `config_dir`.
    pub(crate) fn resolve(
        self,
        src: &Source<'_>,
        config_dir: &Path,
    ) -> Result<ServerConfig, ConfigError> {
        if let Some(idle) = &self.idle_timeout_ms {
            return Err(src.error_at(
                idle.span(),
                "server.idle_timeout_ms",
                "no longer exists: it never applied, because the header read timer also runs \
                 between keep-alive requests; idle connections close after \
                 header_read_timeout_ms. Delete this line."
                    .to_owned(),
            ));
        }
        let listen = self.listen.0;
        if let Some(admin) = &self.admin_listen {
            if let Some(msg) = listeners_clash(listen, admin.get_ref().0) {
                return Err(src.error_at(admin.span(), "server.admin_listen", msg));
            }
        }
        Ok(ServerConfig {
            listen,
            admin_listen: self.admin_listen.map(|a| a.into_inner().0),
            upstream: self.upstream.map(|u| u.0),
            data_dir: config_dir.join(self.data_dir.0 .0),
            trusted_proxies: self.trusted_proxies.into_iter().map(|p| p.0).collect(),
            max_body_bytes: to_usize(self.max_body_bytes.0),
            max_header_bytes: to_usize(self.max_header_bytes.0),
            max_connections: to_usize(self.max_connections.0),
            header_read_timeout_ms: self.header_read_timeout_ms.0,
            body_read_timeout_ms: self.body_read_timeout_ms.0,
            upstream_connect_timeout_ms: self.upstream_connect_timeout_ms.0,
            upstream_response_timeout_ms: self.upstream_response_timeout_ms.0,
            workers: self.workers.map(|w| to_usize(w.0)),
            upstream_max_idle_per_worker: to_usize(self.upstream_max_idle_per_worker.0),
        })
    }
}

/// Why the admin listener cannot share the exchange-facing address, if it would.
pub(crate) fn listeners_clash(listen: SocketAddr, admin: SocketAddr) -> Option<String> {
    // Port 0 asks the OS for a fresh port each time, so two of them never clash.
    (admin == listen && admin.port() != 0)
        .then(|| format!("{admin} is also the listen address; the admin API needs its own port"))
}

fn to_usize(v: u64) -> usize {
    // Bounded values are at most 16 MiB or a million, which fit every usize we build for.
    usize::try_from(v).unwrap_or(usize::MAX)
}
