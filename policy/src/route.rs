//! The route table: which endpoint a request hits, what [`Action`] that is, and the facts
//! (asset, amount, address, price, quantity) the rest of the policy reads from it.
//! Anything not in the table is denied: an endpoint the operator forgot to classify is
//! never forwarded by accident.
//!
//! # Path templates
//! A path segment written `{name}` matches any one non-empty segment (public market data:
//! `/api/1/ticker/{pair}`). A segment written `{name:shape}` matches one canonical segment
//! of that shape and nothing else, so a template cannot swallow a sibling endpoint
//! (`/api/exchange/orders/{id:digits}` never matches `/api/exchange/orders/opens`):
//! - `digits`: a decimal integer without sign or leading zeros, 1 to 20 digits;
//! - `token`: 1 to 64 of `A-Z a-z 0-9 _ -`.
//!
//! Routes that need a key (read, trade, withdraw) must give every template segment a
//! shape ([`RouteError::UnshapedSegment`]): what a private endpoint acts on is part of
//! its classification.

use http::Method;

use crate::action::Action;
use crate::decimal::Decimal;
use crate::dialect::{DialectKind, ParsedRequest};
use crate::params::ParamValue;
use crate::Deny;

/// Names of the request parameters that carry each fact for one endpoint.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldMap {
    /// The asset or symbol (`currency`, `coin`, `asset`, `symbol`).
    pub asset: Option<String>,
    /// The amount moved (withdrawals).
    pub amount: Option<String>,
    /// The withdrawal destination.
    pub address: Option<String>,
    /// The exchange-side withdrawal key naming the destination (Kraken's `key`).
    pub withdraw_key: Option<String>,
    /// An order's limit price.
    pub price: Option<String>,
    /// An order's quantity.
    pub quantity: Option<String>,
}

/// One endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteSpec {
    /// The HTTP method.
    pub method: Method,
    /// The path; a segment written `{name}` matches any one non-empty segment, and
    /// `{name:shape}` one segment of that shape (see the module docs).
    pub path: String,
    /// For dialects with a selector field (Zaif `method`), the value that picks this route.
    pub select: Option<String>,
    /// What the endpoint does.
    pub action: Action,
    /// Where its facts are.
    pub fields: FieldMap,
}

/// The facts of one classified request, as exact values.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Facts {
    /// Asset or symbol, lower-cased.
    pub asset: Option<String>,
    /// Amount.
    pub amount: Option<Decimal>,
    /// Destination address, exactly as sent.
    pub address: Option<String>,
    /// Destination withdrawal key (Kraken's `key`), exactly as sent.
    pub withdraw_key: Option<String>,
    /// Price.
    pub price: Option<Decimal>,
    /// Quantity.
    pub quantity: Option<Decimal>,
}

/// A request matched to its route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Classified {
    /// Index of the route in the table (stable for the table's lifetime; for metrics).
    pub route: usize,
    /// The action.
    pub action: Action,
    /// The facts.
    pub facts: Facts,
}

/// Errors in a route table that config validation reports.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// Two routes match the same requests.
    #[error("route {0} duplicates route {1} (same method, path and selector)")]
    Duplicate(usize, usize),
    /// A withdraw route must name where its asset, amount and destination (an address,
    /// a withdrawal key or both) are.
    #[error("route {0} is a withdraw route but does not map `{1}`")]
    WithdrawFieldMissing(usize, &'static str),
    /// Zaif routes on a selector path need a selector value, and other dialects must not use one.
    #[error("route {0}: {1}")]
    Selector(usize, &'static str),
    /// Paths must be absolute and canonical.
    #[error(
        "route {0}: path `{1}` must start with `/` and contain no empty, `.` or `..` segments"
    )]
    BadPath(usize, String),
    /// A `{name:shape}` segment names a shape that does not exist, or is malformed.
    #[error("route {0}: segment `{1}` is not `{{name}}` or `{{name:digits|token}}`")]
    BadSegment(usize, String),
    /// A private route's template segment has no shape.
    #[error(
        "route {0}: segment `{1}` of a private route must declare its shape, e.g. `{{id:digits}}`"
    )]
    UnshapedSegment(usize, String),
}

/// What one template segment matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    /// Any non-empty segment.
    Any,
    /// A canonical decimal integer.
    Digits,
    /// `[A-Za-z0-9_-]{1,64}`.
    Token,
}

impl Shape {
    fn matches(self, seg: &str) -> bool {
        let b = seg.as_bytes();
        match self {
            Shape::Any => !b.is_empty(),
            Shape::Digits => {
                (1..=20).contains(&b.len())
                    && b.iter().all(u8::is_ascii_digit)
                    && !(b.len() > 1 && b[0] == b'0')
            }
            Shape::Token => {
                (1..=64).contains(&b.len())
                    && b.iter()
                        .all(|c| c.is_ascii_alphanumeric() || *c == b'_' || *c == b'-')
            }
        }
    }
}

/// A pattern segment: `Ok(None)` for a literal, `Ok(Some(shape))` for a template,
/// `Err(())` for a malformed template.
fn segment_shape(seg: &str) -> Result<Option<Shape>, ()> {
    let Some(inner) = seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')) else {
        return if seg.contains(['{', '}']) {
            Err(())
        } else {
            Ok(None)
        };
    };
    let (name, shape) = match inner.split_once(':') {
        Some((name, "digits")) => (name, Shape::Digits),
        Some((name, "token")) => (name, Shape::Token),
        Some(_) => return Err(()),
        None => (inner, Shape::Any),
    };
    let name_ok = !name.is_empty() && name.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_');
    if name_ok {
        Ok(Some(shape))
    } else {
        Err(())
    }
}

/// All endpoints of one dialect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteTable {
    kind: DialectKind,
    routes: Vec<RouteSpec>,
}

impl RouteTable {
    /// Builds a table, refusing ambiguous or incomplete routes.
    pub fn new(kind: DialectKind, routes: Vec<RouteSpec>) -> Result<Self, RouteError> {
        for (i, r) in routes.iter().enumerate() {
            let segs_ok = r.path.starts_with('/')
                && r.path[1..]
                    .split('/')
                    .all(|s| !s.is_empty() && s != "." && s != "..");
            if !segs_ok {
                return Err(RouteError::BadPath(i, r.path.clone()));
            }
            for seg in r.path[1..].split('/') {
                match segment_shape(seg) {
                    Err(()) => return Err(RouteError::BadSegment(i, seg.to_owned())),
                    Ok(Some(Shape::Any)) if r.action != Action::Public => {
                        return Err(RouteError::UnshapedSegment(i, seg.to_owned()));
                    }
                    Ok(_) => {}
                }
            }
            if r.action == Action::Withdraw {
                for (name, f) in [("asset", &r.fields.asset), ("amount", &r.fields.amount)] {
                    if f.is_none() {
                        return Err(RouteError::WithdrawFieldMissing(i, name));
                    }
                }
                if r.fields.address.is_none() && r.fields.withdraw_key.is_none() {
                    return Err(RouteError::WithdrawFieldMissing(i, "address"));
                }
            }
            if r.select.is_some() && kind.selector_field().is_none() {
                return Err(RouteError::Selector(
                    i,
                    "this dialect has no selector field",
                ));
            }
            // Without a selector value, a private Zaif route would match every `method`:
            // a `read` route on /tapi would classify withdrawals as reads.
            if r.select.is_none() && kind.selector_field().is_some() && r.action != Action::Public {
                return Err(RouteError::Selector(
                    i,
                    "private routes of this dialect must name their `select` value",
                ));
            }
            if let Some(j) = routes[..i]
                .iter()
                .position(|o| o.method == r.method && o.path == r.path && o.select == r.select)
            {
                return Err(RouteError::Duplicate(i, j));
            }
        }
        Ok(RouteTable { kind, routes })
    }

    /// The dialect the table is for.
    pub fn kind(&self) -> DialectKind {
        self.kind
    }

    /// The routes.
    pub fn routes(&self) -> &[RouteSpec] {
        &self.routes
    }

    /// Finds the route for a parsed request and extracts its facts.
    ///
    /// 404 when no route has the path, 405 when the path exists for other methods only.
    /// On a selector path, a missing or unknown selector value is a 404 as well.
    pub fn classify(&self, req: &ParsedRequest) -> Result<Classified, Deny> {
        let mut path_known = false;
        let mut selector_value: Option<Option<&str>> = None;
        for (i, r) in self.routes.iter().enumerate() {
            if !path_matches(&r.path, &req.path) {
                continue;
            }
            path_known = true;
            if r.method != req.method {
                continue;
            }
            if let Some(want) = &r.select {
                let field = self.kind.selector_field().ok_or(Deny::UnknownEndpoint)?;
                let got = match selector_value {
                    Some(v) => v,
                    None => {
                        let v = req.params.field_text(field)?;
                        selector_value = Some(v);
                        v
                    }
                };
                if got != Some(want.as_str()) {
                    continue;
                }
            }
            let facts = extract_facts(&r.fields, req)?;
            return Ok(Classified {
                route: i,
                action: r.action,
                facts,
            });
        }
        if path_known
            && !self
                .routes
                .iter()
                .any(|r| r.method == req.method && path_matches(&r.path, &req.path))
        {
            Err(Deny::MethodNotAllowed)
        } else {
            Err(Deny::UnknownEndpoint)
        }
    }
}

fn path_matches(pattern: &str, path: &str) -> bool {
    if !pattern.contains('{') {
        return pattern == path;
    }
    let mut p = pattern.split('/');
    let mut q = path.split('/');
    loop {
        match (p.next(), q.next()) {
            (None, None) => return true,
            (Some(ps), Some(qs)) => {
                // Patterns were validated when the table was built.
                let ok = match segment_shape(ps) {
                    Ok(Some(shape)) => shape.matches(qs),
                    _ => ps == qs,
                };
                if !ok {
                    return false;
                }
            }
            _ => return false,
        }
    }
}

fn extract_facts(fields: &FieldMap, req: &ParsedRequest) -> Result<Facts, Deny> {
    let text = |name: &Option<String>| -> Result<Option<String>, Deny> {
        match name {
            Some(n) => Ok(req.params.field_text(n)?.map(str::to_owned)),
            None => Ok(None),
        }
    };
    let decimal = |name: &Option<String>| -> Result<Option<Decimal>, Deny> {
        match name {
            Some(n) => req.params.field(n)?.map(ParamValue::as_decimal).transpose(),
            None => Ok(None),
        }
    };
    let asset = match &fields.asset {
        Some(n) => req.params.field_text(n)?.map(str::to_ascii_lowercase),
        None => None,
    };
    Ok(Facts {
        asset,
        amount: decimal(&fields.amount)?,
        address: text(&fields.address)?,
        withdraw_key: text(&fields.withdraw_key)?,
        price: decimal(&fields.price)?,
        quantity: decimal(&fields.quantity)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(method: Method, path: &str, select: Option<&str>, action: Action) -> RouteSpec {
        RouteSpec {
            method,
            path: path.into(),
            select: select.map(Into::into),
            action,
            fields: FieldMap::default(),
        }
    }

    #[test]
    fn zaif_private_routes_need_select() {
        let bare = route(Method::POST, "/tapi", None, Action::Read);
        assert!(matches!(
            RouteTable::new(DialectKind::Zaif, vec![bare.clone()]),
            Err(RouteError::Selector(0, _))
        ));
        assert!(RouteTable::new(DialectKind::Binance, vec![bare]).is_ok());
        let public = route(Method::GET, "/api/1/ticker/{pair}", None, Action::Public);
        assert!(RouteTable::new(DialectKind::Zaif, vec![public]).is_ok());
        let dup = route(Method::GET, "/x", None, Action::Read);
        assert_eq!(
            RouteTable::new(DialectKind::Kraken, vec![dup.clone(), dup]),
            Err(RouteError::Duplicate(1, 0))
        );
        let withdraw = route(Method::POST, "/w", None, Action::Withdraw);
        assert_eq!(
            RouteTable::new(DialectKind::Kraken, vec![withdraw]),
            Err(RouteError::WithdrawFieldMissing(0, "asset"))
        );
    }

    #[test]
    fn templates_match_one_segment() {
        assert!(path_matches("/api/1/depth/{pair}", "/api/1/depth/btc_jpy"));
        assert!(!path_matches("/api/1/depth/{pair}", "/api/1/depth/"));
        assert!(!path_matches("/api/1/depth/{pair}", "/api/1/depth/a/b"));
        assert!(path_matches("/tapi", "/tapi"));
        assert!(!path_matches("/tapi", "/tapi/"));
    }

    #[test]
    fn shaped_templates_match_one_canonical_segment_of_their_shape() {
        let p = "/api/exchange/orders/{id:digits}";
        assert!(path_matches(p, "/api/exchange/orders/12345"));
        assert!(path_matches(p, "/api/exchange/orders/0"));
        for bad in [
            "/api/exchange/orders/opens",
            "/api/exchange/orders/012",
            "/api/exchange/orders/+1",
            "/api/exchange/orders/-1",
            "/api/exchange/orders/1.0",
            "/api/exchange/orders/1e3",
            "/api/exchange/orders/",
            "/api/exchange/orders/1/2",
            "/api/exchange/orders/123456789012345678901",
        ] {
            assert!(!path_matches(p, bad), "{bad}");
        }
        let t = "/api/x/{name:token}";
        assert!(path_matches(t, "/api/x/btc_jpy-2"));
        assert!(!path_matches(t, "/api/x/a.b"));
        assert!(!path_matches(t, &format!("/api/x/{}", "a".repeat(65))));
    }

    #[test]
    fn private_templates_must_declare_a_shape() {
        let untyped = route(Method::DELETE, "/api/orders/{id}", None, Action::Trade);
        assert_eq!(
            RouteTable::new(DialectKind::Coincheck, vec![untyped]),
            Err(RouteError::UnshapedSegment(0, "{id}".into()))
        );
        let typed = route(
            Method::DELETE,
            "/api/orders/{id:digits}",
            None,
            Action::Trade,
        );
        assert!(RouteTable::new(DialectKind::Coincheck, vec![typed]).is_ok());
        for bad in [
            "/api/{id:float}",
            "/api/{:digits}",
            "/api/x{id}",
            "/api/{i-d}",
        ] {
            let r = route(Method::GET, bad, None, Action::Public);
            assert!(
                matches!(
                    RouteTable::new(DialectKind::Coincheck, vec![r]),
                    Err(RouteError::BadSegment(0, _))
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn a_shaped_template_does_not_shadow_its_literal_siblings() {
        let mut cancel = route(
            Method::DELETE,
            "/api/exchange/orders/{id:digits}",
            None,
            Action::Trade,
        );
        cancel.fields = FieldMap::default();
        let table = RouteTable::new(
            DialectKind::Coincheck,
            vec![
                route(
                    Method::GET,
                    "/api/exchange/orders/{id:digits}",
                    None,
                    Action::Read,
                ),
                route(
                    Method::GET,
                    "/api/exchange/orders/opens",
                    None,
                    Action::Read,
                ),
                cancel,
            ],
        )
        .unwrap();
        let req = |method: Method, path: &str| ParsedRequest {
            method,
            path: path.to_owned().into(),
            params: crate::Params::new(),
            body_kind: crate::dialect::BodyKind::Empty,
            credentials: None,
        };
        assert_eq!(
            table
                .classify(&req(Method::GET, "/api/exchange/orders/opens"))
                .unwrap()
                .route,
            1
        );
        assert_eq!(
            table
                .classify(&req(Method::GET, "/api/exchange/orders/7"))
                .unwrap()
                .route,
            0
        );
        assert_eq!(
            table
                .classify(&req(Method::DELETE, "/api/exchange/orders/7"))
                .unwrap()
                .route,
            2
        );
        assert_eq!(
            table.classify(&req(Method::DELETE, "/api/exchange/orders/opens")),
            Err(Deny::MethodNotAllowed)
        );
        assert_eq!(
            table.classify(&req(Method::DELETE, "/api/exchange/orders/07")),
            Err(Deny::UnknownEndpoint)
        );
    }
}
