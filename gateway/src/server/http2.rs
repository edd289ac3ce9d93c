//! HTTP/2 on the exchange-facing listener, held to the same rules as HTTP/1.
//!
//! - **Same request, same decision**: [`check_request`] turns an HTTP/2 request into its
//!   HTTP/1 twin before the pipeline sees it — `:authority` becomes `Host` (a `Host`
//!   that disagrees with it is `invalid_target`), the target becomes origin-form — so
//!   `:path` is normalized and checked by the very same code. h2 itself resets a stream
//!   that carries connection-specific headers (`Connection`, `Keep-Alive`,
//!   `Proxy-Connection`, `Transfer-Encoding`, `Upgrade`, `TE` other than `trailers`) or
//!   CR, LF or NUL in a field (RFC 9113 §8.2); should one get through, it is refused here
//!   as `invalid_header`. On either version an `Upgrade` request (`h2c`, websockets) is
//!   refused: the gateway never switches protocols.
//! - **Floods** ([`builder`]): rapid reset (CVE-2023-44487) is capped by
//!   `max_pending_accept_reset_streams` and, for resets the gateway itself sends,
//!   `max_local_error_reset_streams`, past which h2 closes the connection with
//!   ENHANCE_YOUR_CALM; CONTINUATION floods by h2's cap on CONTINUATION frames per header
//!   block, derived from the header list cap (`server.max_header_bytes`, also announced
//!   as SETTINGS_MAX_HEADER_LIST_SIZE); stream floods by `max_concurrent_streams`;
//!   SETTINGS floods by h2, which stops reading while a SETTINGS ack is pending. The
//!   gateway-wide in-flight limit (`overload`) bounds everything that gets past these.
//! - **Idle connections** (`server::drive`): HTTP/1 closes a connection idle for
//!   `header_read_timeout_ms`; an HTTP/2 connection that received nothing for as long
//!   is shut down gracefully (GOAWAY; streams still being answered finish), so idle
//!   sockets cannot pile up.

use std::time::Duration;

use http::header::{self, HeaderValue};
use http::{Request, Uri, Version};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use keyguard_config::Http2Config;
use keyguard_policy::Deny;
use tokio::net::TcpStream;

use super::ConnLimits;

/// The client connection preface of HTTP/2 (RFC 9113 §3.4).
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Whether a cleartext connection begins with the HTTP/2 preface (prior knowledge),
/// looked at without consuming it. Waits at most `timeout` for enough bytes to tell.
pub async fn starts_with_preface(stream: &TcpStream, timeout: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut buf = [0u8; PREFACE.len()];
    loop {
        let peeked = tokio::time::timeout_at(deadline, stream.peek(&mut buf)).await;
        let n = match peeked {
            Ok(Ok(n)) => n,
            // Timed out or failed: let the HTTP/1 side report it as it always has.
            _ => return false,
        };
        if n == 0 || buf[..n] != PREFACE[..n] {
            return false;
        }
        if n == PREFACE.len() {
            return true;
        }
        // A preface split over packets: peek returns at once while those bytes are
        // waiting, so pause briefly instead of spinning on them.
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// The HTTP/2 connection settings for the exchange-facing listener.
pub fn builder(
    cfg: &Http2Config,
    limits: ConnLimits,
) -> hyper::server::conn::http2::Builder<TokioExecutor> {
    let mut b = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    b.timer(TokioTimer::new())
        .max_concurrent_streams(cfg.max_concurrent_streams)
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        .max_pending_accept_reset_streams(cfg.max_pending_accept_reset_streams)
        .max_local_error_reset_streams(cfg.max_local_error_reset_streams)
        // Small windows: request bodies are capped at 16 MiB and usually tiny, so a
        // client cannot make the gateway buffer much per stream.
        .initial_stream_window_size(256 * 1024)
        .initial_connection_window_size(1024 * 1024)
        .max_send_buf_size(256 * 1024);
    b
}

/// Connection-specific header fields (RFC 9113 §8.2.2).
const CONNECTION_SPECIFIC: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "upgrade",
];

/// The request as the pipeline must see it, or why it is refused before the pipeline.
pub fn check_request<B>(req: &mut Request<B>) -> Result<(), Deny> {
    // Never switch protocols: an `Upgrade: h2c` (or websocket) request is not served
    // as if it had not asked.
    if req.headers().contains_key(header::UPGRADE) || req.headers().contains_key("http2-settings") {
        return Err(Deny::InvalidHeader);
    }
    if req.version() != Version::HTTP_2 {
        return Ok(());
    }
    let h = req.headers();
    let forbidden = CONNECTION_SPECIFIC.iter().any(|n| h.contains_key(*n))
        || h.get_all(header::TE).iter().any(|v| v != "trailers");
    if forbidden {
        return Err(Deny::InvalidHeader);
    }
    if let Some(authority) = req.uri().authority().cloned() {
        let mut hosts = req.headers().get_all(header::HOST).iter();
        match (hosts.next(), hosts.next()) {
            (None, _) => match HeaderValue::from_str(authority.as_str()) {
                Ok(v) => {
                    req.headers_mut().insert(header::HOST, v);
                }
                Err(_) => return Err(Deny::InvalidTarget),
            },
            (Some(host), None)
                if host
                    .as_bytes()
                    .eq_ignore_ascii_case(authority.as_str().as_bytes()) => {}
            _ => return Err(Deny::InvalidTarget),
        }
    }
    // Origin-form, exactly what the HTTP/1 twin's request line carries.
    let origin = match req.uri().path_and_query() {
        Some(pq) => Uri::try_from(pq.as_str()),
        None => Uri::try_from("/"),
    };
    match origin {
        Ok(uri) => *req.uri_mut() = uri,
        Err(_) => return Err(Deny::InvalidTarget),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h2(uri: &str) -> http::request::Builder {
        Request::builder().version(Version::HTTP_2).uri(uri)
    }

    #[test]
    fn an_h2_request_becomes_its_http1_twin() {
        let mut req = h2("https://gw.example:8443/tapi?x=1").body(()).unwrap();
        check_request(&mut req).unwrap();
        assert_eq!(req.uri().to_string(), "/tapi?x=1");
        assert_eq!(req.uri().authority(), None);
        assert_eq!(req.headers()["host"], "gw.example:8443");

        let mut req = h2("https://GW.example/tapi")
            .header("host", "gw.EXAMPLE")
            .body(())
            .unwrap();
        check_request(&mut req).unwrap();
        assert_eq!(req.headers().get_all("host").iter().count(), 1);
    }

    #[test]
    fn disagreeing_hosts_and_connection_headers_are_refused() {
        let mut req = h2("https://gw.example/tapi")
            .header("host", "evil.example")
            .body(())
            .unwrap();
        assert_eq!(check_request(&mut req), Err(Deny::InvalidTarget));
        for (name, value) in [
            ("connection", "close"),
            ("keep-alive", "1"),
            ("proxy-connection", "x"),
            ("transfer-encoding", "chunked"),
            ("te", "gzip"),
        ] {
            let mut req = h2("https://gw.example/tapi")
                .header(name, value)
                .body(())
                .unwrap();
            assert_eq!(check_request(&mut req), Err(Deny::InvalidHeader), "{name}");
        }
        let mut ok = h2("https://gw.example/tapi")
            .header("te", "trailers")
            .body(())
            .unwrap();
        assert_eq!(check_request(&mut ok), Ok(()));
    }

    #[test]
    fn upgrade_is_refused_on_http1_and_plain_http1_is_untouched() {
        let mut req = Request::builder()
            .uri("/tapi")
            .header("upgrade", "h2c")
            .header("http2-settings", "AAMAAABkAAQAAP__")
            .body(())
            .unwrap();
        assert_eq!(check_request(&mut req), Err(Deny::InvalidHeader));
        let mut req = Request::builder()
            .uri("/tapi")
            .header("connection", "keep-alive")
            .body(())
            .unwrap();
        assert_eq!(check_request(&mut req), Ok(()));
        assert_eq!(req.uri(), "/tapi");
    }
}
