//! The exchange side of the gateway: building the forwarded request and sending it over
//! connections that belong to the worker thread serving the client.
//!
//! # Layout
//! - [`Upstream`]: where requests go, over TLS or not, and the timeouts that apply
//!   (shared; only its TLS client is swapped on reload).
//! - [`pool`]: each worker's own HTTP/1 connections to the exchange ([`pool::Pool`]),
//!   driven on that worker's runtime, and the response body that gives its connection
//!   back when it has been read to the end.
//! - header hygiene: what of the client's request is forwarded ([`copy_end_to_end`]) and
//!   what of the exchange's response is not ([`strip_hop_by_hop`]).
//!
//! hyper-util's pooled `Client` runs every upstream connection as a task of its own and
//! hands each request to it over a channel; on a multi-threaded runtime that task often
//! runs on the other core, so a request crossed threads twice. Here the connection
//! belongs to the worker, so accept, check, forward and respond stay on one thread.

pub mod pool;

use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;

use crate::server::tls::Connector;

use http::header::{self, HeaderMap, HeaderName};
use http::Uri;

/// Headers that describe one hop, never the request (RFC 9110 §7.6.1), plus the
/// non-standard ones proxies still see.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Where and how requests are forwarded.
#[derive(Debug, Clone)]
pub struct Upstream {
    /// Host and port.
    pub authority: http::uri::Authority,
    /// For an `https://` upstream: the TLS client and the name its certificate must
    /// carry (the URL's host, a DNS name or an IP address).
    pub tls: Option<UpstreamTls>,
    /// The `Host` header value sent upstream.
    pub host: http::HeaderValue,
    /// Time allowed to open a connection (→ 502).
    pub connect_timeout: Duration,
    /// Time allowed for the response head, and for each wait between body frames.
    pub response_timeout: Duration,
    /// Idle connections each worker keeps.
    pub max_idle_per_worker: usize,
}

/// TLS to the upstream.
#[derive(Debug, Clone)]
pub struct UpstreamTls {
    /// The client configuration (trust, client certificate), swapped on reload.
    pub connector: Arc<Connector>,
    /// The name verified against the exchange's certificate.
    pub server_name: ServerName<'static>,
}

impl Upstream {
    /// The upstream at `base` (`http://host:port`, or `https://host:port` with
    /// `connector`).
    pub fn new(
        base: &Uri,
        connector: Option<Arc<Connector>>,
        connect_timeout: Duration,
        response_timeout: Duration,
        max_idle_per_worker: usize,
    ) -> anyhow::Result<Upstream> {
        let scheme = base
            .scheme()
            .cloned()
            .ok_or_else(|| anyhow::anyhow!("upstream {base} has no scheme"))?;
        let authority = base
            .authority()
            .cloned()
            .ok_or_else(|| anyhow::anyhow!("upstream {base} has no host"))?;
        let tls = if scheme == http::uri::Scheme::HTTPS {
            let connector = connector
                .ok_or_else(|| anyhow::anyhow!("upstream {base}: https needs a TLS client"))?;
            let host = authority.host();
            let host = host
                .strip_prefix('[')
                .and_then(|h| h.strip_suffix(']'))
                .unwrap_or(host);
            let server_name = ServerName::try_from(host.to_owned()).map_err(|e| {
                anyhow::anyhow!("upstream {base}: {host:?} is not a TLS server name: {e}")
            })?;
            Some(UpstreamTls {
                connector,
                server_name,
            })
        } else if scheme == http::uri::Scheme::HTTP {
            None
        } else {
            anyhow::bail!("upstream {base}: only http:// and https:// are supported");
        };
        let host = http::HeaderValue::from_str(authority.as_str())?;
        Ok(Upstream {
            authority,
            tls,
            host,
            connect_timeout,
            response_timeout,
            max_idle_per_worker,
        })
    }
}

/// Copies the headers that describe the request itself. Dropped: hop-by-hop headers and
/// any the client nominated in `Connection` (else `Connection: x-keyguard-assertion`
/// could make a proxy strip ours), the client's credentials (the exchange trusts the
/// assertion, not them), anything claiming to come from us, forwarding headers (we set
/// our own), and Host/Content-Length (recomputed for the upstream request).
pub fn copy_end_to_end(from: &HeaderMap, to: &mut HeaderMap, auth_headers: &[&str]) {
    let nominated = nominated(from);
    for (name, value) in from {
        let n = name.as_str();
        let dropped = HOP_BY_HOP.contains(&n)
            || nominated.iter().any(|x| x == name)
            || auth_headers.contains(&n)
            || n.starts_with("x-keyguard-")
            || n == "host"
            || n == "content-length"
            || n == "forwarded"
            || n == "x-forwarded-for"
            || n == "x-forwarded-host"
            || n == "x-forwarded-proto"
            || n == "x-real-ip"
            || n == "x-request-id";
        if !dropped {
            to.append(name.clone(), value.clone());
        }
    }
}

/// Removes hop-by-hop headers (and those the `Connection` header nominates) from a
/// response before it goes back to the client.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    for n in nominated(headers) {
        headers.remove(n);
    }
    for n in HOP_BY_HOP {
        headers.remove(*n);
    }
}

/// The headers a `Connection` header names as hop-by-hop (RFC 9110 §7.6.1).
fn nominated(headers: &HeaderMap) -> Vec<HeaderName> {
    let mut out = Vec::new();
    for v in headers.get_all(header::CONNECTION) {
        let Ok(v) = v.to_str() else { continue };
        for s in v.split(',') {
            let s = s.trim();
            // `keep-alive` and `close` are the common values and hop-by-hop anyway.
            if s.eq_ignore_ascii_case("keep-alive") || s.eq_ignore_ascii_case("close") {
                continue;
            }
            if let Ok(n) = HeaderName::from_bytes(s.as_bytes()) {
                out.push(n);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn end_to_end_headers_only() {
        let mut from = HeaderMap::new();
        for (k, v) in [
            ("connection", "keep-alive, x-secret-hop"),
            ("x-secret-hop", "1"),
            ("keep-alive", "timeout=5"),
            ("key", "apikey"),
            ("sign", "deadbeef"),
            ("x-keyguard-assertion", "forged"),
            ("x-forwarded-for", "6.6.6.6"),
            ("host", "exchange.example"),
            ("content-type", "application/x-www-form-urlencoded"),
            ("user-agent", "ccxt"),
        ] {
            from.append(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        let mut to = HeaderMap::new();
        copy_end_to_end(&from, &mut to, &["key", "sign"]);
        let names: Vec<&str> = to.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, vec!["content-type", "user-agent"]);
    }

    #[test]
    fn nominated_headers_are_stripped_from_responses() {
        let mut h = HeaderMap::new();
        h.append(
            header::CONNECTION,
            HeaderValue::from_static("Keep-Alive, X-Hop"),
        );
        h.append(
            HeaderName::from_static("x-hop"),
            HeaderValue::from_static("1"),
        );
        h.append(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        strip_hop_by_hop(&mut h);
        let names: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, vec!["content-type"]);
    }
}
