//! `[[route]]`: the endpoint table, built into the policy's [`RouteTable`]. Errors the
//! table finds come back as route indices; this module turns them into lines.

use std::ops::Range;

use http::Method;
use keyguard_policy::route::{FieldMap, RouteError};
use keyguard_policy::{Action, DialectKind, RouteSpec, RouteTable};
use serde::Deserialize;
use toml::Spanned;

use crate::de::{Name, Parsed};
use crate::error::{ConfigError, Source};

/// One `[[route]]` table as written. `path` and `select` are spanned because the checks
/// on them need the whole table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRoute {
    method: Parsed<Method>,
    path: Spanned<String>,
    #[serde(default)]
    select: Option<Spanned<String>>,
    action: Parsed<Action>,
    #[serde(default)]
    asset: Option<Parsed<Name>>,
    #[serde(default)]
    amount: Option<Parsed<Name>>,
    #[serde(default)]
    address: Option<Parsed<Name>>,
    #[serde(default)]
    withdraw_key: Option<Parsed<Name>>,
    #[serde(default)]
    price: Option<Parsed<Name>>,
    #[serde(default)]
    quantity: Option<Parsed<Name>>,
}

/// Where each route sits in the file.
struct Spans {
    table: Range<usize>,
    path: Range<usize>,
    select: Option<Range<usize>>,
}

/// Builds the route table for `kind`.
pub(crate) fn build(
    src: &Source<'_>,
    kind: DialectKind,
    raw: Vec<Spanned<RawRoute>>,
) -> Result<RouteTable, ConfigError> {
    if raw.is_empty() {
        // Unknown endpoints are denied, so a table without routes would deny everything.
        return Err(src.error(
            Some("route".to_owned()),
            "no routes: add at least one [[route]] table",
        ));
    }
    let mut spans = Vec::with_capacity(raw.len());
    let mut specs = Vec::with_capacity(raw.len());
    for route in raw {
        let table = route.span();
        let r = route.into_inner();
        spans.push(Spans {
            table,
            path: r.path.span(),
            select: r.select.as_ref().map(Spanned::span),
        });
        let name = |f: Option<Parsed<Name>>| f.map(|n| n.0 .0);
        specs.push(RouteSpec {
            method: r.method.0,
            path: r.path.into_inner(),
            select: r.select.map(Spanned::into_inner),
            action: r.action.0,
            fields: FieldMap {
                asset: name(r.asset),
                amount: name(r.amount),
                address: name(r.address),
                withdraw_key: name(r.withdraw_key),
                price: name(r.price),
                quantity: name(r.quantity),
            },
        });
    }
    for (i, (spec, at)) in specs.iter().zip(&spans).enumerate() {
        check_path(src, i, spec, at)?;
    }
    if let Some(field) = kind.selector_field() {
        check_selectors(src, kind, field, &specs, &spans)?;
    }
    RouteTable::new(kind, specs).map_err(|e| locate(src, &spans, e))
}

/// Refuses characters a normalized request path never contains, so such a route could
/// never match (and the operator would wonder why requests are denied).
fn check_path(src: &Source<'_>, i: usize, spec: &RouteSpec, at: &Spans) -> Result<(), ConfigError> {
    let bad = spec
        .path
        .chars()
        .find(|c| matches!(c, '?' | '#' | '%' | '\\') || c.is_whitespace() || c.is_control());
    match bad {
        Some(c) => Err(src.error_at(
            at.path.clone(),
            format!("route[{i}].path"),
            format!(
                "path `{}` contains {c:?}; routes match the decoded path alone, without a query",
                spec.path
            ),
        )),
        None => Ok(()),
    }
}

/// On a dialect that picks the endpoint by a body field (Zaif's `method`), a private route
/// without `select` would match every value of that field — a `read` route on `/tapi`
/// would classify `withdraw` requests as reads. The policy's table does not refuse that,
/// so the config does.
fn check_selectors(
    src: &Source<'_>,
    kind: DialectKind,
    field: &str,
    specs: &[RouteSpec],
    spans: &[Spans],
) -> Result<(), ConfigError> {
    for (i, spec) in specs.iter().enumerate() {
        if spec.select.is_some() {
            continue;
        }
        let selected_sibling = specs
            .iter()
            .position(|o| o.select.is_some() && o.method == spec.method && o.path == spec.path);
        let problem = match selected_sibling {
            Some(j) => format!(
                "route[{j}] selects on this method and path, so this route needs `select` too, or it would match every other `{field}` value"
            ),
            None if spec.action != Action::Public => format!(
                "{} routes pick the endpoint by the `{field}` form field; a {} route without `select` would match every `{field}`, withdraw included",
                kind.as_str(),
                spec.action
            ),
            None => continue,
        };
        return Err(src.error_at(
            spans[i].table.clone(),
            format!("route[{i}].select"),
            problem,
        ));
    }
    Ok(())
}

/// Points a [`RouteError`] at the route's line.
fn locate(src: &Source<'_>, spans: &[Spans], err: RouteError) -> ConfigError {
    match err {
        RouteError::Duplicate(i, j) => src.error_at(
            spans[i].table.clone(),
            format!("route[{i}]"),
            format!(
                "duplicates route[{j}] (line {}): same method, path and select",
                src.line(spans[j].table.start)
            ),
        ),
        RouteError::WithdrawFieldMissing(i, "address") => src.error_at(
            spans[i].table.clone(),
            format!("route[{i}]"),
            "a withdraw route must name the request field that holds the address (`address = \"...\"`), the exchange-side withdrawal key (`withdraw_key = \"...\"`, Kraken's `key`) or both, so withdrawals can be checked against the key's allowed destinations",
        ),
        RouteError::WithdrawFieldMissing(i, field) => src.error_at(
            spans[i].table.clone(),
            format!("route[{i}]"),
            format!(
                "a withdraw route must name the request field that holds the {field} (`{field} = \"...\"`), so withdrawals can be checked against the key's addresses and limits"
            ),
        ),
        RouteError::Selector(i, why) => src.error_at(
            spans[i].select.clone().unwrap_or(spans[i].table.clone()),
            format!("route[{i}].select"),
            why,
        ),
        RouteError::BadSegment(i, seg) => src.error_at(
            spans[i].path.clone(),
            format!("route[{i}].path"),
            format!("segment `{seg}` must be a literal, `{{name}}`, `{{name:digits}}` or `{{name:token}}`"),
        ),
        RouteError::UnshapedSegment(i, seg) => src.error_at(
            spans[i].path.clone(),
            format!("route[{i}].path"),
            format!(
                "segment `{seg}` of a private route must declare its shape (`{{id:digits}}` or `{{id:token}}`), so it matches one canonical segment and never a sibling endpoint"
            ),
        ),
        RouteError::BadPath(i, path) => src.error_at(
            spans[i].path.clone(),
            format!("route[{i}].path"),
            format!("path `{path}` must start with `/` and contain no empty, `.` or `..` segments"),
        ),
    }
}
