//! The one place that turns a [`Deny`] into an HTTP response. Every stage returns a
//! reason; nothing else builds error bodies, so codes and shapes cannot drift apart.

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use keyguard_policy::limits::RateLimited;
use keyguard_policy::{Deny, DialectKind};

use crate::proxy::Body;

/// Why a request was refused, with what a 429 needs to tell the client when to retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    /// The reason.
    pub deny: Deny,
    /// Which rate limit, when `deny` is `rate_limited`.
    pub rate: Option<RateLimited>,
}

impl From<Deny> for Refusal {
    fn from(deny: Deny) -> Self {
        Refusal { deny, rate: None }
    }
}

impl From<RateLimited> for Refusal {
    fn from(rate: RateLimited) -> Self {
        Refusal {
            deny: Deny::RateLimited,
            rate: Some(rate),
        }
    }
}

/// The JSON error response for a refusal:
/// `{"error":{"code","message","request_id"}}` (DESIGN.md §3).
///
/// Kraken clients require `error` to be a list of Kraken error strings (ccxt's kraken
/// crashes on an object instead of raising), so for that dialect the body is Kraken's
/// shape — the closest native error first, so clients raise the right exception class,
/// then `EKeyguard:<code>` — with our fields under `keyguard`.
/// A 429 also carries `Retry-After` and the IETF `RateLimit-Policy` / `RateLimit` headers
/// (draft-ietf-httpapi-ratelimit-headers-10) naming the limit that was hit.
pub fn deny_response(refusal: &Refusal, request_id: &str, dialect: DialectKind) -> Response<Body> {
    let deny = refusal.deny;
    let ours = serde_json::json!({
        "code": deny.code(),
        "message": deny.message(),
        "request_id": request_id,
    });
    let body = match dialect {
        DialectKind::Kraken => serde_json::json!({
            "error": [kraken_error(deny), format!("EKeyguard:{}", deny.code())],
            "keyguard": ours,
        }),
        _ => serde_json::json!({ "error": ours }),
    };
    let status = StatusCode::from_u16(deny.status()).unwrap_or(StatusCode::FORBIDDEN);
    let mut resp = Response::new(full(body.to_string()));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Ok(v) = HeaderValue::from_str(request_id) {
        h.insert("x-request-id", v);
    }
    if let Some(rate) = refusal.rate {
        for (name, value) in [
            (
                header::RETRY_AFTER.as_str(),
                rate.retry_after_secs().to_string(),
            ),
            ("ratelimit-policy", rate.policy_header()),
            ("ratelimit", rate.header()),
        ] {
            if let Ok(v) = HeaderValue::from_str(&value) {
                h.insert(name, v);
            }
        }
    }
    resp
}

/// A complete body.
pub fn full(data: impl Into<Bytes>) -> Body {
    Full::new(data.into())
        .map_err(|never| match never {})
        .boxed()
}

/// Kraken's own error string closest to `deny` (what ccxt and Kraken SDKs match on).
fn kraken_error(deny: Deny) -> &'static str {
    match deny {
        Deny::MissingCredentials | Deny::UnknownKey => "EAPI:Invalid key",
        Deny::InvalidSignature => "EAPI:Invalid signature",
        Deny::InvalidNonce | Deny::StaleTimestamp | Deny::Replay => "EAPI:Invalid nonce",
        Deny::RateLimited => "EAPI:Rate limit exceeded",
        Deny::UpstreamUnavailable | Deny::UpstreamTimeout | Deny::StateUnavailable => {
            "EService:Unavailable"
        }
        d if d.status() == 403 => "EGeneral:Permission denied",
        _ => "EGeneral:Invalid arguments",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn body_json(resp: Response<Body>) -> serde_json::Value {
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        serde_json::from_slice(&bytes).unwrap()
    }

    #[tokio::test]
    async fn design_shape_and_kraken_shape() {
        let r = deny_response(&Deny::IpNotAllowed.into(), "rid1", DialectKind::Zaif);
        assert_eq!(r.status(), 403);
        let v = body_json(r).await;
        assert_eq!(v["error"]["code"], "ip_not_allowed");
        assert_eq!(v["error"]["request_id"], "rid1");

        let r = deny_response(&Deny::IpNotAllowed.into(), "rid2", DialectKind::Kraken);
        assert_eq!(r.status(), 403);
        let v = body_json(r).await;
        assert_eq!(v["error"][0], "EGeneral:Permission denied");
        assert_eq!(v["error"][1], "EKeyguard:ip_not_allowed");
        assert_eq!(v["keyguard"]["code"], "ip_not_allowed");
        assert_eq!(v["keyguard"]["request_id"], "rid2");
    }

    #[test]
    fn every_deny_has_a_distinct_code_and_an_error_status() {
        let mut codes: Vec<&str> = Deny::ALL.iter().map(|d| d.code()).collect();
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), Deny::ALL.len());
        for d in Deny::ALL {
            assert!((400..600).contains(&d.status()), "{d:?}");
            assert!(!kraken_error(*d).is_empty());
        }
    }
}
