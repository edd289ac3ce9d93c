//! The HTTP side of the load generator: hyper's pooled client with keep-alive, its
//! connections bound to a chosen loopback source address (on Linux every address of
//! 127.0.0.0/8 is local, so each is a real, distinct client IP to the gateway).

use std::net::IpAddr;
use std::time::Duration;

use bytes::Bytes;
use http::uri::{Authority, Scheme};
use http::{HeaderValue, Request, Uri};
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use keyguard_policy::dialect::ClientRequest;

/// A keep-alive HTTP/1.1 client whose connections come from one source address.
pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// How long one request may take before it counts as a transport error.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// A pooled client connecting from `source` (`None`: the kernel's choice).
pub fn client_from(source: Option<IpAddr>) -> HttpClient {
    let mut connector = HttpConnector::new();
    connector.set_local_address(source);
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(Duration::from_secs(5)));
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(usize::MAX)
        .build(connector)
}

/// Where requests go: `http://host:port`.
#[derive(Debug, Clone)]
pub struct Target {
    scheme: Scheme,
    authority: Authority,
}

impl Target {
    /// Parses `http://host:port` (a trailing `/` is fine).
    pub fn parse(base: &str) -> anyhow::Result<Target> {
        let uri: Uri = base.parse()?;
        let scheme = uri
            .scheme()
            .cloned()
            .ok_or_else(|| anyhow::anyhow!("{base}: no scheme"))?;
        anyhow::ensure!(scheme == Scheme::HTTP, "{base}: only http:// targets");
        let authority = uri
            .authority()
            .cloned()
            .ok_or_else(|| anyhow::anyhow!("{base}: no host"))?;
        Ok(Target { scheme, authority })
    }

    /// The base URL.
    pub fn url(&self) -> String {
        format!("{}://{}", self.scheme, self.authority)
    }
}

/// What came back for one request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outcome {
    /// The HTTP status; `None` when no response arrived.
    pub status: Option<u16>,
    /// Keyguard's deny code, from `error.code` (or Kraken's `keyguard.code`).
    pub code: Option<String>,
    /// The gateway's `X-Request-Id`.
    pub request_id: Option<String>,
    /// Why no response arrived (`timeout`, `connect`, ...).
    pub error: Option<&'static str>,
}

/// Sends `request` to `target` and reads the whole response.
pub async fn send(client: &HttpClient, target: &Target, request: &ClientRequest) -> Outcome {
    let uri = match Uri::builder()
        .scheme(target.scheme.clone())
        .authority(target.authority.clone())
        .path_and_query(request.path_and_query.as_str())
        .build()
    {
        Ok(uri) => uri,
        Err(_) => {
            return Outcome {
                error: Some("bad-uri"),
                ..Outcome::default()
            }
        }
    };
    let mut builder = Request::builder().method(request.method.clone()).uri(uri);
    for (name, value) in &request.headers {
        builder = builder.header(name.as_str(), value.as_str());
    }
    let Ok(http_request) = builder.body(Full::new(Bytes::from(request.body.clone()))) else {
        return Outcome {
            error: Some("bad-request"),
            ..Outcome::default()
        };
    };
    let exchange = async {
        let response = client.request(http_request).await.map_err(|e| {
            if e.is_connect() {
                "connect"
            } else {
                "transport"
            }
        })?;
        let (parts, body) = response.into_parts();
        // Read the body to the end: the connection goes back to the pool only then.
        let body = body.collect().await.map_err(|_| "body")?.to_bytes();
        let status = parts.status.as_u16();
        let request_id = parts
            .headers
            .get("x-request-id")
            .and_then(|v: &HeaderValue| v.to_str().ok())
            .map(str::to_owned);
        let code = if status >= 400 {
            deny_code(&body)
        } else {
            None
        };
        Ok::<_, &'static str>(Outcome {
            status: Some(status),
            code,
            request_id,
            error: None,
        })
    };
    match tokio::time::timeout(REQUEST_TIMEOUT, exchange).await {
        Ok(Ok(outcome)) => outcome,
        Ok(Err(error)) => Outcome {
            error: Some(error),
            ..Outcome::default()
        },
        Err(_) => Outcome {
            error: Some("timeout"),
            ..Outcome::default()
        },
    }
}

/// Keyguard's deny code from an error body: `{"error":{"code":…}}`, or for Kraken
/// `{"error":[…],"keyguard":{"code":…}}`. `None` for anything else (an exchange error).
pub fn deny_code(body: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let code = match &v["error"] {
        serde_json::Value::Object(e) => e.get("code"),
        _ => v.get("keyguard").and_then(|k| k.get("code")),
    }?;
    code.as_str().map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deny_codes_of_every_shape() {
        assert_eq!(
            deny_code(br#"{"error":{"code":"ip_not_allowed","message":"m","request_id":"r"}}"#)
                .as_deref(),
            Some("ip_not_allowed")
        );
        assert_eq!(
            deny_code(
                br#"{"error":["EGeneral:Permission denied","EKeyguard:key_dormant"],"keyguard":{"code":"key_dormant"}}"#
            )
            .as_deref(),
            Some("key_dormant")
        );
        assert_eq!(deny_code(br#"{"success":0,"error":"invalid key"}"#), None);
        assert_eq!(deny_code(b"not json"), None);
    }

    #[test]
    fn targets_parse() {
        let t = Target::parse("http://127.0.0.1:8080/").expect("parse");
        assert_eq!(t.url(), "http://127.0.0.1:8080");
        assert!(Target::parse("https://x").is_err());
    }
}
