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
    /// When to come back, for a refusal that is not a rate limit but still temporary
    /// (`overloaded`): sent as `Retry-After`.
    pub retry_after_secs: Option<u64>,
}

impl Refusal {
    /// A shed request: `overloaded`, with when to retry.
    pub fn overloaded(retry_after_secs: u64) -> Refusal {
        Refusal {
            deny: Deny::Overloaded,
            rate: None,
            retry_after_secs: Some(retry_after_secs),
        }
    }
}

impl From<Deny> for Refusal {
    fn from(deny: Deny) -> Self {
        Refusal {
            deny,
            rate: None,
            retry_after_secs: None,
        }
    }
}

impl From<RateLimited> for Refusal {
    fn from(rate: RateLimited) -> Self {
        Refusal {
            deny: Deny::RateLimited,
            rate: Some(rate),
            retry_after_secs: None,
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
///
/// For Binance and Zaif the design's shape is kept and the exchange's own error fields are
/// added beside it for client refusals (4xx other than 408 and 429, which clients already
/// read from the status): without them ccxt falls back to the HTTP status and raises
/// `ExchangeNotAvailable` for a 403 or a 400, a network error that bots retry, so a denied
/// withdrawal would be hammered instead of reported. Binance gets `code`/`msg` from its
/// error table ([`binance_error`]); Zaif gets `"success": false`, which ccxt's zaif reads
/// as a failed call (a real Zaif says `0`; loosely-typed clients treat both alike).
/// Coincheck's own shape is `{"success": false, "error": "<text>"}`, and ccxt's coincheck
/// matches the text, so for its client refusals `error` is Coincheck's string (`invalid
/// authentication` for a 401, which ccxt raises as `AuthenticationError`; our message
/// otherwise, an `ExchangeError`) and our fields move under `keyguard`, as for Kraken.
/// A 429 also carries `Retry-After` and the IETF `RateLimit-Policy` / `RateLimit` headers
/// (draft-ietf-httpapi-ratelimit-headers-10) naming the limit that was hit.
///
/// A [`Deny::Canary`] is answered as [`Deny::as_told_to_client`] says (exactly the reply
/// of `ip_not_allowed`); only the audit log knows.
pub fn deny_response(refusal: &Refusal, request_id: &str, dialect: DialectKind) -> Response<Body> {
    let deny = refusal.deny.as_told_to_client();
    let ours = serde_json::json!({
        "code": deny.code(),
        "message": deny.message(),
        "request_id": request_id,
    });
    let client_refusal = (400..500).contains(&deny.status()) && !matches!(deny.status(), 408 | 429);
    let body = match dialect {
        DialectKind::Kraken => serde_json::json!({
            "error": [kraken_error(deny), format!("EKeyguard:{}", deny.code())],
            "keyguard": ours,
        }),
        DialectKind::Binance if client_refusal => {
            let (code, msg) = binance_error(deny);
            serde_json::json!({ "error": ours, "code": code, "msg": msg })
        }
        DialectKind::Zaif if client_refusal => {
            serde_json::json!({ "error": ours, "success": false })
        }
        DialectKind::Coincheck if client_refusal => {
            let text = if deny.status() == 401 {
                "invalid authentication"
            } else {
                deny.message()
            };
            serde_json::json!({ "success": false, "error": text, "keyguard": ours })
        }
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
    if let Some(secs) = refusal.retry_after_secs {
        h.insert(header::RETRY_AFTER, HeaderValue::from(secs));
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
        Deny::UpstreamUnavailable
        | Deny::UpstreamTimeout
        | Deny::StateUnavailable
        | Deny::AuditUnavailable => "EService:Unavailable",
        Deny::Overloaded | Deny::TooManyConnections => "EService:Unavailable",
        d if d.status() == 403 => "EGeneral:Permission denied",
        _ => "EGeneral:Invalid arguments",
    }
}

/// Binance's own error code and message closest to `deny`, from its published error
/// table, chosen so clients raise a non-retryable class (ccxt: `-1022`/`-2015` →
/// `AuthenticationError`, `-1021` → `InvalidNonce`, `-1002` → `AuthenticationError`,
/// `-1020`/`-1100` → `BadRequest`). Permission refusals use `-1002`, not Binance's usual
/// `-2015`: ccxt turns `-2015` into a retryable `DDoSProtection` once a key has worked.
fn binance_error(deny: Deny) -> (i32, &'static str) {
    match deny {
        Deny::MissingCredentials | Deny::UnknownKey => {
            (-2015, "Invalid API-key, IP, or permissions for action.")
        }
        Deny::InvalidSignature => (-1022, "Signature for this request is not valid."),
        Deny::InvalidNonce | Deny::StaleTimestamp | Deny::Replay => (
            -1021,
            "Timestamp for this request is outside of the recvWindow.",
        ),
        Deny::UnknownEndpoint | Deny::MethodNotAllowed => {
            (-1020, "This operation is not supported.")
        }
        d if d.status() == 403 => (-1002, "You are not authorized to execute this request."),
        _ => (-1100, "Illegal characters found in a parameter."),
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

    #[tokio::test]
    async fn native_fields_beside_the_design_shape_for_client_refusals_only() {
        let r = deny_response(&Deny::IpNotAllowed.into(), "rid3", DialectKind::Binance);
        assert_eq!(r.status(), 403);
        let v = body_json(r).await;
        assert_eq!(v["error"]["code"], "ip_not_allowed");
        assert_eq!(
            (v["code"].as_i64(), v["msg"].is_string()),
            (Some(-1002), true)
        );
        let v = body_json(deny_response(
            &Deny::InvalidSignature.into(),
            "r",
            DialectKind::Binance,
        ))
        .await;
        assert_eq!(v["code"], -1022);
        let v = body_json(deny_response(
            &Deny::Replay.into(),
            "r",
            DialectKind::Binance,
        ))
        .await;
        assert_eq!(v["code"], -1021);

        let v = body_json(deny_response(
            &Deny::ScopeMissing.into(),
            "r",
            DialectKind::Zaif,
        ))
        .await;
        assert_eq!(v["error"]["code"], "scope_missing");
        assert_eq!(v["success"], false);

        let v = body_json(deny_response(
            &Deny::InvalidSignature.into(),
            "r",
            DialectKind::Coincheck,
        ))
        .await;
        assert_eq!(
            (&v["success"], &v["error"], &v["keyguard"]["code"]),
            (
                &serde_json::json!(false),
                &serde_json::json!("invalid authentication"),
                &serde_json::json!("invalid_signature")
            )
        );
        let v = body_json(deny_response(
            &Deny::ScopeMissing.into(),
            "r",
            DialectKind::Coincheck,
        ))
        .await;
        assert_eq!(v["error"], Deny::ScopeMissing.message());
        assert_eq!(v["keyguard"]["code"], "scope_missing");

        // Statuses clients already act on keep the plain design shape: a 429 must stay
        // a rate limit and a 5xx a retryable outage, not a failed call.
        for d in [
            Deny::RateLimited,
            Deny::StateUnavailable,
            Deny::UpstreamTimeout,
            Deny::BodyTimeout,
        ] {
            for dialect in [
                DialectKind::Zaif,
                DialectKind::Binance,
                DialectKind::Coincheck,
            ] {
                let v = body_json(deny_response(&d.into(), "r", dialect)).await;
                let keys: Vec<&String> = v.as_object().unwrap().keys().collect();
                assert_eq!(keys, ["error"], "{d:?} {dialect:?}");
            }
        }
    }

    #[tokio::test]
    async fn a_canary_is_answered_exactly_like_ip_not_allowed() {
        for dialect in [
            DialectKind::Zaif,
            DialectKind::Binance,
            DialectKind::Kraken,
            DialectKind::Coincheck,
        ] {
            let canary = deny_response(&Deny::Canary.into(), "rid", dialect);
            let real = deny_response(&Deny::IpNotAllowed.into(), "rid", dialect);
            assert_eq!(canary.status(), real.status());
            assert_eq!(canary.headers(), real.headers());
            let (c, r) = (body_json(canary).await, body_json(real).await);
            assert_eq!(c, r, "{dialect:?}");
            assert!(!c.to_string().contains("canary"));
        }
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
