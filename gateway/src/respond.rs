//! The one place that turns a [`Deny`] into an HTTP response. Every stage returns a
//! reason; nothing else builds error bodies, so codes and shapes cannot drift apart.

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use keyguard_policy::Deny;

use crate::proxy::Body;

/// The JSON error response for `deny`.
pub fn deny_response(deny: Deny, request_id: &str) -> Response<Body> {
    let body = serde_json::json!({
        "error": {
            "code": deny.code(),
            "message": deny.message(),
            "request_id": request_id,
        }
    });
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
    resp
}

/// A complete body.
pub fn full(data: impl Into<Bytes>) -> Body {
    Full::new(data.into())
        .map_err(|never| match never {})
        .boxed()
}
