//! The traders' pages: login (password, then code), the key list, creating a key, one
//! key's settings (allowlist, withdrawal addresses, scopes, pending changes, status),
//! TOTP enrolment. Server-rendered, no JavaScript anywhere.
//!
//! Each handler checks the session (and on POST the form's CSRF token), runs its store
//! work on a blocking thread, and answers with a page or a redirect (POST → redirect →
//! GET, so a reload never repeats a change). Additions to a key need the password again
//! (and a fresh code when TOTP is on): an open session alone cannot widen a key.

#![allow(
    clippy::result_large_err,
    reason = "the error side is the page sent back, built once per request; boxing it buys nothing"
)]

mod pages;

use std::net::SocketAddr;
use std::sync::Arc;

use askama::Template;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use ipnet::IpNet;
use keyguard_policy::key::{canonical_ip, parse_allow_ip};
use keyguard_policy::{DialectKind, KeyStatus, Scope, Scopes, UnixMillis};
use serde::Deserialize;

use super::sessions::{set_cookies, Session, Stage, LOGIN_COOKIE, PENDING_COOKIE, SESSION_COOKIE};
use super::AdminState;
use crate::accounts::{ct_eq, PasswordOk};
use crate::admin::keys as keystore;
use crate::store::edit::{Change, EditError, Outcome, Requester};
use crate::store::{self, now_ms, NewCredential, NewKey};
use pages::*;

type St = State<Arc<AdminState>>;

/// The page routes.
pub fn routes() -> Router<Arc<AdminState>> {
    Router::new()
        .route("/", get(|| async { Redirect::to("/keys") }))
        .route("/static/app.css", get(stylesheet))
        .route("/login", get(login_form).post(login))
        .route("/login/code", get(code_form).post(code))
        .route("/logout", post(logout))
        .route("/sso", get(sso_login))
        .route("/keys", get(key_list))
        .route("/keys/new", get(new_key_form).post(create_key))
        .route("/keys/{id}", get(key_page))
        .route("/keys/{id}/allow/add", post(allow_add))
        .route("/keys/{id}/allow/remove", post(allow_remove))
        .route("/keys/{id}/scopes", post(scopes))
        .route("/keys/{id}/address/add", post(address_add))
        .route("/keys/{id}/address/remove", post(address_remove))
        .route("/keys/{id}/pending/cancel", post(pending_cancel))
        .route("/keys/{id}/status", post(status))
        .route("/keys/{id}/revoke", get(revoke_confirm).post(revoke))
        .route("/account/totp", get(totp_form).post(totp_confirm))
        .route("/activity", get(account_activity))
        .route("/keys/{id}/activity", get(key_activity))
        .route("/keys/{id}/allow/lock", post(allow_lock))
}

async fn stylesheet() -> Response {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        include_str!("../../../templates/app.css"),
    )
        .into_response()
}

/// An HTML error page (also used by the origin check).
pub fn error_page(status: StatusCode, message: &str) -> Response {
    let page = ErrorPage {
        message: message.to_owned(),
        account: None,
        csrf: String::new(),
    };
    (status, render(&page)).into_response()
}

fn render(t: &impl Template) -> Response {
    match t.render() {
        Ok(html) => Html(html).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "template failed");
            (StatusCode::INTERNAL_SERVER_ERROR, "template error").into_response()
        }
    }
}

/// Runs store work off the async workers (SQLite and Argon2 block).
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, Response> {
    tokio::task::spawn_blocking(f).await.map_err(|_| {
        error_page(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Something went wrong on our side.",
        )
    })
}

/// The response of a blocking handler body, whichever way it ended.
fn flat(r: Result<Result<Response, Response>, Response>) -> Response {
    match r {
        Ok(Ok(resp)) | Ok(Err(resp)) | Err(resp) => resp,
    }
}

fn internal(e: impl std::fmt::Display) -> Response {
    tracing::error!(error = %e, "admin request failed");
    error_page(
        StatusCode::INTERNAL_SERVER_ERROR,
        "Something went wrong on our side; nothing was changed.",
    )
}

fn with_cookies(mut resp: Response, cookies: impl IntoIterator<Item = HeaderValue>) -> Response {
    set_cookies(resp.headers_mut(), cookies);
    resp
}

/// The full session, or a redirect to the login page. Call on a blocking thread.
fn full_session(st: &AdminState, headers: &HeaderMap) -> Result<Session, Response> {
    st.session(headers, Stage::Full, now_ms())
        .map_err(internal)?
        .ok_or_else(|| Redirect::to("/login").into_response())
}

/// The full session and a matching CSRF token, or a refusal.
fn posted_session(st: &AdminState, headers: &HeaderMap, csrf: &str) -> Result<Session, Response> {
    let s = full_session(st, headers)?;
    if !ct_eq(s.csrf.as_bytes(), csrf.as_bytes()) {
        return Err(error_page(StatusCode::FORBIDDEN, "This form has expired or was not sent from your Keyguard session. Reload the page and try again."));
    }
    Ok(s)
}

fn client_net(addr: SocketAddr) -> IpNet {
    let ip = canonical_ip(addr.ip());
    match ip {
        std::net::IpAddr::V4(_) => IpNet::from(ip),
        // One IPv6 host's addresses change within its /64.
        std::net::IpAddr::V6(v6) => ipnet::Ipv6Net::new(v6, 64)
            .map(|n| IpNet::V6(n.trunc()))
            .unwrap_or(IpNet::from(ip)),
    }
}

// ---------------------------------------------------------------------------------------
// Login
// ---------------------------------------------------------------------------------------

async fn login_form(State(st): St) -> Response {
    login_page(&st, None, StatusCode::OK)
}

fn login_page(st: &AdminState, error: Option<&str>, status: StatusCode) -> Response {
    match st.sessions.login_token(now_ms()) {
        Ok((token, cookie)) => {
            let page = LoginPage {
                token,
                error: error.map(str::to_owned),
                account: None,
                csrf: String::new(),
            };
            with_cookies((status, render(&page)).into_response(), [cookie])
        }
        Err(e) => internal(e),
    }
}

#[derive(Deserialize)]
struct LoginForm {
    name: String,
    password: String,
    token: String,
}

const LOGIN_FAILED: &str = "Wrong name or password, or the account is locked for a while. Check and try again in a minute.";

async fn login(
    State(st): St,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Form(f): Form<LoginForm>,
) -> Response {
    if !st.sessions.check_login_token(&headers, &f.token, now_ms()) {
        return login_page(
            &st,
            Some("The login form expired. Please try again."),
            StatusCode::FORBIDDEN,
        );
    }
    let st2 = st.clone();
    let result = blocking(move || -> anyhow::Result<Option<HeaderValue>> {
        let now = now_ms();
        let ip = addr.ip().to_string();
        let stage = match st2.check_password(f.name.trim(), &f.password, now) {
            Ok(PasswordOk::Done) => Stage::Full,
            Ok(PasswordOk::NeedTotp) => Stage::Totp,
            Err(_) => return Ok(None),
        };
        st2.start_session(f.name.trim(), stage, None, &ip, now)
    })
    .await;
    match result {
        Ok(Ok(Some(cookie))) => {
            let to = if cookie.to_str().unwrap_or("").starts_with(PENDING_COOKIE) {
                "/login/code"
            } else {
                "/keys"
            };
            with_cookies(
                Redirect::to(to).into_response(),
                [cookie, st.sessions.clear(LOGIN_COOKIE)],
            )
        }
        Ok(Ok(None)) => login_page(&st, Some(LOGIN_FAILED), StatusCode::UNAUTHORIZED),
        Ok(Err(e)) => internal(e),
        Err(r) => r,
    }
}

async fn code_form(State(st): St, headers: HeaderMap) -> Response {
    let st2 = st.clone();
    let r = blocking(move || st2.session(&headers, Stage::Totp, now_ms())).await;
    match r {
        Ok(Ok(Some(s))) => render(&CodePage {
            csrf: s.csrf,
            error: None,
            account: None,
        }),
        Ok(Ok(None)) => Redirect::to("/login").into_response(),
        Ok(Err(e)) => internal(e),
        Err(r) => r,
    }
}

#[derive(Deserialize)]
struct CodeForm {
    code: String,
    csrf: String,
}

async fn code(
    State(st): St,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Form(f): Form<CodeForm>,
) -> Response {
    let st2 = st.clone();
    let result = blocking(
        move || -> anyhow::Result<Result<HeaderValue, Option<String>>> {
            let now = now_ms();
            let Some(pending) = st2.session(&headers, Stage::Totp, now)? else {
                return Ok(Err(None));
            };
            if !ct_eq(pending.csrf.as_bytes(), f.csrf.as_bytes()) {
                return Ok(Err(None));
            }
            match st2.check_second_factor(&pending.account, &f.code, now) {
                // A fresh id again: the pending session's id is dead from here on.
                Ok(()) => Ok(st2
                    .start_session(
                        &pending.account,
                        Stage::Full,
                        Some(&pending.id),
                        &addr.ip().to_string(),
                        now,
                    )?
                    .ok_or(None)),
                Err(_) => Ok(Err(Some(pending.csrf))),
            }
        },
    )
    .await;
    match result {
        Ok(Ok(Ok(cookie))) => with_cookies(Redirect::to("/keys").into_response(), [cookie, st.sessions.clear(PENDING_COOKIE)]),
        Ok(Ok(Err(Some(csrf)))) => (
            StatusCode::UNAUTHORIZED,
            render(&CodePage {
                csrf,
                error: Some("That code was not accepted (wrong, already used, or the account is locked for a while). Wait for the next code and try again.".into()),
                account: None,
            }),
        )
            .into_response(),
        Ok(Ok(Err(None))) => Redirect::to("/login").into_response(),
        Ok(Err(e)) => internal(e),
        Err(r) => r,
    }
}

#[derive(Deserialize)]
struct SsoQuery {
    token: String,
}

/// A session from the exchange's signed token. Answered with a page that moves on to
/// `/keys` itself: the browser arrives here from the exchange's site, and a redirect in
/// that same navigation would not carry our `SameSite=Strict` cookie.
async fn sso_login(
    State(st): St,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    Query(q): Query<SsoQuery>,
) -> Response {
    let st2 = st.clone();
    let r = blocking(move || -> anyhow::Result<Option<HeaderValue>> {
        let now = now_ms();
        let Some(account) = st2.sso_account(&q.token, now)? else {
            return Ok(None);
        };
        if st2.account(&account)?.is_none_or(|a| a.disabled) {
            return Ok(None);
        }
        let Some(cookie) =
            st2.start_session(&account, Stage::Full, None, &addr.ip().to_string(), now)?
        else {
            return Ok(None);
        };
        st2.login_event(
            &format!("web:{account}"),
            "sso_login",
            &account,
            "signed in through the exchange",
        )?;
        Ok(Some(cookie))
    })
    .await;
    match r {
        Ok(Ok(Some(cookie))) => with_cookies(render(&SsoPage { account: None, csrf: String::new() }), [cookie]),
        Ok(Ok(None)) => error_page(StatusCode::UNAUTHORIZED, "This sign-in link is not valid (expired, already used, or not for this Keyguard). Sign in again from the exchange."),
        Ok(Err(e)) => internal(e),
        Err(r) => r,
    }
}

#[derive(Deserialize)]
struct CsrfForm {
    csrf: String,
}

async fn logout(State(st): St, headers: HeaderMap, Form(f): Form<CsrfForm>) -> Response {
    let st2 = st.clone();
    let r = blocking(move || -> Result<(), Response> {
        let s = posted_session(&st2, &headers, &f.csrf)?;
        st2.end_session(&s).map_err(internal)
    })
    .await;
    match r {
        Ok(Ok(())) | Ok(Err(_)) => with_cookies(
            Redirect::to("/login").into_response(),
            [st.sessions.clear(SESSION_COOKIE)],
        ),
        Err(r) => r,
    }
}

// ---------------------------------------------------------------------------------------
// Keys
// ---------------------------------------------------------------------------------------

fn dormant(st: &AdminState, k: &store::KeySummary, now: UnixMillis) -> bool {
    let Some(rule) = &st.cfg.anomaly.dormant else {
        return false;
    };
    let used = st
        .keys
        .snapshot()
        .by_key_id(&k.key_id)
        .map(|t| t.last_used)
        .unwrap_or(k.last_used_at)
        .or(k.last_used_at);
    match used {
        Some(u) => now >= u.max(k.created_at).saturating_add(rule.after_ms),
        None => {
            now >= k
                .created_at
                .saturating_add(rule.first_use_within_ms.min(rule.after_ms))
        }
    }
}

fn key_view(st: &AdminState, k: &store::KeySummary, now: UnixMillis) -> KeyView {
    KeyView {
        key_id: k.key_id.clone(),
        label: if k.label.is_empty() {
            "(no label)".into()
        } else {
            k.label.clone()
        },
        scopes: k.scopes.join(", "),
        allow_summary: match k.allow_ips.len() {
            0 => "any network".into(),
            1..=2 => k.allow_ips.join(", "),
            n => format!("{}, {} and {} more", k.allow_ips[0], k.allow_ips[1], n - 2),
        },
        open: k.allow_ips.is_empty(),
        created: date_text(k.created_at),
        last_used: k
            .last_used_at
            .map(|t| ago_text(t, now))
            .unwrap_or_else(|| "never".into()),
        expires: k
            .expires_at
            .map(date_text)
            .unwrap_or_else(|| "never".into()),
        status: k.status.to_owned(),
        dormant: k.status == "active" && dormant(st, k, now),
    }
}

fn own_keys(st: &AdminState, account: &str) -> anyhow::Result<Vec<store::KeySummary>> {
    keystore::of_account(st, account)
}

#[derive(Deserialize)]
struct Notice {
    notice: Option<String>,
}

async fn key_list(State(st): St, headers: HeaderMap, Query(q): Query<Notice>) -> Response {
    let st2 = st.clone();
    let r = blocking(move || -> Result<Response, Response> {
        let s = full_session(&st2, &headers)?;
        let keys = own_keys(&st2, &s.account).map_err(internal)?;
        // From the store that holds the accounts (Redis when the gateway runs on it).
        let totp = totp_on(&st2, &s.account)?;
        let now = now_ms();
        let page = KeysPage {
            keys: keys.iter().map(|k| key_view(&st2, k, now)).collect(),
            account: Some(s.account.clone()),
            csrf: s.csrf.clone(),
            totp,
            notice: q.notice.as_deref().and_then(notice_text).map(str::to_owned),
        };
        Ok(with_cookies(render(&page), s.renewed))
    })
    .await;
    flat(r)
}

async fn new_key_form(State(st): St, headers: HeaderMap) -> Response {
    let st2 = st.clone();
    let r = blocking(move || -> Result<Response, Response> {
        let s = full_session(&st2, &headers)?;
        Ok(render(&NewKeyPage {
            account: Some(s.account),
            csrf: s.csrf,
            error: None,
            binance: st2.cfg.dialect.kind == DialectKind::Binance,
            label: String::new(),
            allow: String::new(),
            read: true,
            trade: false,
            withdraw: false,
            public_key: String::new(),
        }))
    })
    .await;
    flat(r)
}

#[derive(Deserialize)]
struct NewKeyForm {
    csrf: String,
    label: String,
    #[serde(default)]
    allow: String,
    scope_read: Option<String>,
    scope_trade: Option<String>,
    scope_withdraw: Option<String>,
    #[serde(default)]
    public_key: String,
}

/// Parses one network per line (or comma-separated), naming the first bad one.
fn parse_nets(text: &str) -> Result<Vec<IpNet>, String> {
    let mut out = Vec::new();
    for item in text
        .split(['\n', ','])
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        let net = parse_allow_ip(item)?;
        if !out.contains(&net) {
            out.push(net);
        }
    }
    Ok(out)
}

async fn create_key(
    State(st): St,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Form(f): Form<NewKeyForm>,
) -> Response {
    let st2 = st.clone();
    let r = blocking(move || -> Result<Response, Response> {
        let s = posted_session(&st2, &headers, &f.csrf)?;
        let binance = st2.cfg.dialect.kind == DialectKind::Binance;
        let scopes: Scopes = [
            (f.scope_read.is_some(), Scope::Read),
            (f.scope_trade.is_some(), Scope::Trade),
            (f.scope_withdraw.is_some(), Scope::Withdraw),
        ]
        .into_iter()
        .filter(|(on, _)| *on)
        .map(|(_, s)| s)
        .collect();
        let again = |error: String| {
            (
                StatusCode::BAD_REQUEST,
                render(&NewKeyPage {
                    account: Some(s.account.clone()),
                    csrf: s.csrf.clone(),
                    error: Some(error),
                    binance,
                    label: f.label.clone(),
                    allow: f.allow.clone(),
                    read: scopes.contains(Scope::Read),
                    trade: scopes.contains(Scope::Trade),
                    withdraw: scopes.contains(Scope::Withdraw),
                    public_key: f.public_key.clone(),
                }),
            )
                .into_response()
        };
        let label = f.label.trim();
        if label.chars().count() > 64 || label.chars().any(char::is_control) {
            return Ok(again("The label can have at most 64 characters, on one line.".into()));
        }
        if scopes.is_empty() {
            return Ok(again("Choose at least one permission.".into()));
        }
        let allow = match parse_nets(&f.allow) {
            Ok(a) => a,
            Err(e) => return Ok(again(format!("Allowed networks: {e}."))),
        };
        if scopes.contains(Scope::Withdraw) && allow.is_empty() {
            return Ok(again("A key that can withdraw needs at least one allowed network, so that a leaked key cannot withdraw from anywhere.".into()));
        }
        let (credential, secret) = if binance && !f.public_key.trim().is_empty() {
            match crate::cli::parse_public_key(&f.public_key) {
                Ok(pk) => (NewCredential::Ed25519(pk), None),
                Err(e) => return Ok(again(format!("Public key: {e:#}."))),
            }
        } else {
            let secret = match st2.cfg.dialect.kind {
                DialectKind::Kraken => {
                    use base64::Engine;
                    base64::engine::general_purpose::STANDARD.encode(crate::secrets::random_bytes::<64>().map_err(internal)?)
                }
                _ => crate::cli::random_alnum(64).map_err(internal)?,
            };
            (NewCredential::Hmac(secret.as_bytes().to_vec()), Some(secret))
        };
        let key_id = format!("kg_{}", hex::encode(crate::secrets::random_bytes::<8>().map_err(internal)?));
        let api_key = crate::cli::random_alnum(64).map_err(internal)?;
        keystore::insert(
            &st2,
            &NewKey {
                key_id: key_id.clone(),
                api_key: api_key.clone(),
                account: s.account.clone(),
                label: label.to_owned(),
                scopes,
                allow_ips: allow,
                // DESIGN §6: a key made in the web UI trusts its creator's network.
                trusted_ips: vec![client_net(addr)],
                withdraw_addresses: vec![],
                expires_at: None,
                credential,
                canary: false,
            },
            &format!("web:{}", s.account),
            "created in the web UI",
        )
        .map_err(internal)?;
        Ok(render(&CreatedPage {
            account: Some(s.account),
            csrf: s.csrf,
            key_id,
            api_key,
            secret,
        }))
    })
    .await;
    let resp = flat(r);
    keystore::caught_up(&st).await;
    resp
}

fn notice_text(code: &str) -> Option<&'static str> {
    Some(match code {
        "applied" => "Done: the change is in force.",
        "pending" => "Requested: the change takes effect after its cool-down (see Pending changes). You can cancel it until then.",
        "unchanged" => "Nothing to change: the key already is that way.",
        "cancelled" => "The pending change was cancelled.",
        "suspended" => "The key is suspended: every request with it is refused until you resume it.",
        "resumed" => "The key is active again.",
        "reactivated" => "The key is usable for trades and withdrawals again.",
        "revoked" => "The key is revoked for good.",
        "totp_on" => "Two-factor login is already on. To move it to a new phone, log in with a recovery code and ask your operator to reset it.",
        _ => return None,
    })
}

async fn key_page(
    State(st): St,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(q): Query<Notice>,
) -> Response {
    let st2 = st.clone();
    let r = blocking(move || -> Result<Response, Response> {
        let s = full_session(&st2, &headers)?;
        detail(
            &st2,
            &s,
            &id,
            q.notice.as_deref().and_then(notice_text).map(str::to_owned),
            None,
            StatusCode::OK,
        )
    })
    .await;
    flat(r)
}

fn detail(
    st: &AdminState,
    s: &Session,
    key_id: &str,
    notice: Option<String>,
    error: Option<String>,
    status: StatusCode,
) -> Result<Response, Response> {
    let keys = own_keys(st, &s.account).map_err(internal)?;
    let Some(k) = keys.iter().find(|k| k.key_id == key_id) else {
        return Err(error_page(
            StatusCode::NOT_FOUND,
            "There is no such key in your account.",
        ));
    };
    let now = now_ms();
    let pending = keystore::pending(st, Some(key_id), Some(&s.account)).map_err(internal)?;
    let totp = totp_on(st, &s.account)?;
    let cool = st.cfg.withdraw.address_cooldown_ms;
    let banners = foreign_banners(st, Some(key_id), &s.account, now)?;
    let used = keystore::allowed_ips(st, &s.account, key_id, now.saturating_sub(30 * DAY_MS))
        .map_err(internal)?;
    let page = KeyPage {
        banners,
        used_nets: used,
        account: Some(s.account.clone()),
        csrf: s.csrf.clone(),
        k: key_view(st, k, now),
        allow: k.allow_ips.clone(),
        addresses: k
            .withdraw_addresses
            .iter()
            .map(|a| {
                let usable = a.added_at.saturating_add(cool);
                AddrView {
                    asset: a.asset.to_ascii_uppercase(),
                    asset_raw: a.asset.clone(),
                    address: a.address.clone(),
                    usable: if usable <= now {
                        "usable now".into()
                    } else {
                        format!(
                            "usable from {} ({})",
                            date_text(usable),
                            until_text(usable, now)
                        )
                    },
                }
            })
            .collect(),
        pending: pending
            .iter()
            .map(|p| PendingView {
                id: p.id,
                description: p.description.clone(),
                effective: format!(
                    "{} ({})",
                    date_text(p.effective_at),
                    until_text(p.effective_at, now)
                ),
                actor: p.actor.clone(),
            })
            .collect(),
        read: k.scopes.contains(&"read"),
        trade: k.scopes.contains(&"trade"),
        withdraw: k.scopes.contains(&"withdraw"),
        totp,
        notice,
        error,
        widen_wait: duration_text(st.cfg.admin.widen_cooldown_ms),
        address_wait: duration_text(cool),
    };
    Ok(with_cookies(
        (status, render(&page)).into_response(),
        s.renewed.clone(),
    ))
}

/// Re-authentication fields of every form that may widen a key.
#[derive(Deserialize)]
struct Reauth {
    #[serde(default)]
    password: String,
    #[serde(default)]
    code: String,
}

const REAUTH_FAILED: &str = "Adding to a key needs your password (and a new code from your authenticator app when two-factor login is on). It was not accepted; if you just used a code, wait for the next one.";

fn reauth(st: &AdminState, s: &Session, r: &Reauth) -> bool {
    st.reauthenticate(&s.account, &r.password, &r.code, now_ms())
        .is_ok()
}

fn requester<'a>(actor: &'a str) -> Requester<'a> {
    Requester {
        actor,
        reason: "web UI",
        now: false,
    }
}

fn outcome_code(outcomes: &[Outcome]) -> &'static str {
    if outcomes
        .iter()
        .any(|o| matches!(o, Outcome::Pending { .. }))
    {
        "pending"
    } else if outcomes.contains(&Outcome::Applied) {
        "applied"
    } else {
        "unchanged"
    }
}

fn edit_error(
    st: &AdminState,
    s: &Session,
    key_id: &str,
    e: EditError,
) -> Result<Response, Response> {
    match e {
        EditError::Store(e) => Err(internal(format!("{e:#}"))),
        EditError::NoSuchKey(_) => Err(error_page(
            StatusCode::NOT_FOUND,
            "There is no such key in your account.",
        )),
        other => detail(
            st,
            s,
            key_id,
            None,
            Some(other.to_string()),
            StatusCode::BAD_REQUEST,
        ),
    }
}

/// Applies `changes` in order for the session's account; widening ones only after
/// re-authentication (when `reauth` is given and any change could widen).
fn apply_changes(
    st: &AdminState,
    s: &Session,
    key_id: &str,
    changes: &[Change],
    auth: Option<&Reauth>,
) -> Result<Response, Response> {
    let actor = format!("web:{}", s.account);
    let mut outcomes = Vec::new();
    let mut authed = false;
    for c in changes {
        // Asked per change, against the key as the earlier ones left it: the second
        // network added to an open key widens what the first one narrowed.
        let widening = match keystore::widens(st, key_id, c) {
            Ok(w) => w,
            Err(e) => return edit_error(st, s, key_id, e),
        };
        if widening && !authed {
            match auth {
                Some(r) if reauth(st, s, r) => authed = true,
                _ => {
                    return detail(
                        st,
                        s,
                        key_id,
                        None,
                        Some(REAUTH_FAILED.into()),
                        StatusCode::UNAUTHORIZED,
                    )
                }
            }
        }
        match keystore::request(st, key_id, Some(&s.account), c, requester(&actor)) {
            Ok(o) => outcomes.push(o),
            Err(e) => return edit_error(st, s, key_id, e),
        }
    }
    Ok(Redirect::to(&format!(
        "/keys/{key_id}?notice={}",
        outcome_code(&outcomes)
    ))
    .into_response())
}

async fn after_write(
    st: &Arc<AdminState>,
    r: Result<Result<Response, Response>, Response>,
) -> Response {
    let resp = flat(r);
    keystore::caught_up(st).await;
    resp
}

#[derive(Deserialize)]
struct NetForm {
    csrf: String,
    net: String,
    #[serde(flatten)]
    auth: Reauth,
}

async fn allow_add(
    State(st): St,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(f): Form<NetForm>,
) -> Response {
    let st2 = st.clone();
    let r = blocking(move || {
        let s = posted_session(&st2, &headers, &f.csrf)?;
        let nets = match parse_nets(&f.net) {
            Ok(n) if !n.is_empty() => n,
            Ok(_) => {
                return detail(
                    &st2,
                    &s,
                    &id,
                    None,
                    Some("Enter an IP address or a network such as 203.0.113.0/24.".into()),
                    StatusCode::BAD_REQUEST,
                )
            }
            Err(e) => {
                return detail(
                    &st2,
                    &s,
                    &id,
                    None,
                    Some(format!("{e}.")),
                    StatusCode::BAD_REQUEST,
                )
            }
        };
        let changes: Vec<Change> = nets.into_iter().map(Change::AddIp).collect();
        apply_changes(&st2, &s, &id, &changes, Some(&f.auth))
    })
    .await;
    after_write(&st, r).await
}

async fn allow_remove(
    State(st): St,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(f): Form<NetForm>,
) -> Response {
    let st2 = st.clone();
    let r = blocking(move || {
        let s = posted_session(&st2, &headers, &f.csrf)?;
        let net = match parse_allow_ip(&f.net) {
            Ok(n) => n,
            Err(e) => {
                return detail(
                    &st2,
                    &s,
                    &id,
                    None,
                    Some(format!("{e}.")),
                    StatusCode::BAD_REQUEST,
                )
            }
        };
        // Removing the last entry opens the key to every network: that is widening.
        apply_changes(&st2, &s, &id, &[Change::RemoveIp(net)], Some(&f.auth))
    })
    .await;
    after_write(&st, r).await
}

#[derive(Deserialize)]
struct ScopesForm {
    csrf: String,
    scope_read: Option<String>,
    scope_trade: Option<String>,
    scope_withdraw: Option<String>,
    #[serde(flatten)]
    auth: Reauth,
}

async fn scopes(
    State(st): St,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(f): Form<ScopesForm>,
) -> Response {
    let st2 = st.clone();
    let r = blocking(move || {
        let s = posted_session(&st2, &headers, &f.csrf)?;
        let keys = own_keys(&st2, &s.account).map_err(internal)?;
        let Some(k) = keys.iter().find(|k| k.key_id == id) else {
            return Err(error_page(
                StatusCode::NOT_FOUND,
                "There is no such key in your account.",
            ));
        };
        let want = [
            (Scope::Read, f.scope_read.is_some()),
            (Scope::Trade, f.scope_trade.is_some()),
            (Scope::Withdraw, f.scope_withdraw.is_some()),
        ];
        let mut adds = Vec::new();
        let mut removes = Vec::new();
        for (scope, on) in want {
            let has = k.scopes.contains(&scope.as_str());
            if on && !has {
                adds.push(Change::AddScope(scope));
            } else if !on && has {
                removes.push(Change::RemoveScope(scope));
            }
        }
        // Grants first: "read → trade" must not pass through "no scope at all".
        adds.extend(removes);
        apply_changes(&st2, &s, &id, &adds, Some(&f.auth))
    })
    .await;
    after_write(&st, r).await
}

#[derive(Deserialize)]
struct AddressForm {
    csrf: String,
    asset: String,
    address: String,
    #[serde(flatten)]
    auth: Reauth,
}

async fn address_add(
    State(st): St,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(f): Form<AddressForm>,
) -> Response {
    address_change(st, headers, id, f, true).await
}

async fn address_remove(
    State(st): St,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(f): Form<AddressForm>,
) -> Response {
    address_change(st, headers, id, f, false).await
}

async fn address_change(
    st: Arc<AdminState>,
    headers: HeaderMap,
    id: String,
    f: AddressForm,
    add: bool,
) -> Response {
    let st2 = st.clone();
    let r = blocking(move || {
        let s = posted_session(&st2, &headers, &f.csrf)?;
        match Change::address(&f.asset, &f.address, add) {
            Ok(c) => apply_changes(&st2, &s, &id, &[c], Some(&f.auth)),
            Err(e) => detail(
                &st2,
                &s,
                &id,
                None,
                Some(e.to_string()),
                StatusCode::BAD_REQUEST,
            ),
        }
    })
    .await;
    after_write(&st, r).await
}

#[derive(Deserialize)]
struct CancelForm {
    csrf: String,
    change: i64,
}

async fn pending_cancel(
    State(st): St,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(f): Form<CancelForm>,
) -> Response {
    let st2 = st.clone();
    let r = blocking(move || {
        let s = posted_session(&st2, &headers, &f.csrf)?;
        match keystore::cancel(
            &st2,
            f.change,
            Some(&s.account),
            &format!("web:{}", s.account),
            "cancelled in the web UI",
        ) {
            Ok(p) if p.key_id == id => {
                Ok(Redirect::to(&format!("/keys/{id}?notice=cancelled")).into_response())
            }
            Ok(p) => {
                Ok(Redirect::to(&format!("/keys/{}?notice=cancelled", p.key_id)).into_response())
            }
            Err(e) => edit_error(&st2, &s, &id, e),
        }
    })
    .await;
    after_write(&st, r).await
}

#[derive(Deserialize)]
struct StatusForm {
    csrf: String,
    action: String,
}

fn owns(st: &AdminState, account: &str, key_id: &str) -> Result<store::KeySummary, Response> {
    own_keys(st, account)
        .map_err(internal)?
        .into_iter()
        .find(|k| k.key_id == key_id)
        .ok_or_else(|| {
            error_page(
                StatusCode::NOT_FOUND,
                "There is no such key in your account.",
            )
        })
}

async fn status(
    State(st): St,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(f): Form<StatusForm>,
) -> Response {
    let st2 = st.clone();
    let r = blocking(move || {
        let s = posted_session(&st2, &headers, &f.csrf)?;
        let k = owns(&st2, &s.account, &id)?;
        let actor = format!("web:{}", s.account);
        let done = match (f.action.as_str(), k.status) {
            ("suspend", "active") => keystore::set_status(
                &st2,
                &id,
                KeyStatus::Suspended,
                &actor,
                "suspended in the web UI",
            )
            .map(|_| "suspended"),
            ("resume", "suspended") => keystore::set_status(
                &st2,
                &id,
                KeyStatus::Active,
                &actor,
                "resumed in the web UI",
            )
            .map(|_| "resumed"),
            ("reactivate", "active") => {
                keystore::reactivate(&st2, &id, &actor, "reactivated in the web UI")
                    .map(|_| "reactivated")
            }
            _ => {
                return detail(
                    &st2,
                    &s,
                    &id,
                    None,
                    Some("That is not possible for this key in its current state.".into()),
                    StatusCode::BAD_REQUEST,
                )
            }
        };
        match done {
            Ok(n) => Ok(Redirect::to(&format!("/keys/{id}?notice={n}")).into_response()),
            Err(e) => Err(internal(format!("{e:#}"))),
        }
    })
    .await;
    after_write(&st, r).await
}

async fn revoke_confirm(State(st): St, headers: HeaderMap, Path(id): Path<String>) -> Response {
    let st2 = st.clone();
    let r = blocking(move || {
        let s = full_session(&st2, &headers)?;
        let k = owns(&st2, &s.account, &id)?;
        Ok::<_, Response>(render(&RevokePage {
            account: Some(s.account.clone()),
            csrf: s.csrf.clone(),
            key_id: k.key_id,
            label: k.label,
        }))
    })
    .await;
    flat(r)
}

#[derive(Deserialize)]
struct RevokeForm {
    csrf: String,
    confirm: String,
}

async fn revoke(
    State(st): St,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(f): Form<RevokeForm>,
) -> Response {
    let st2 = st.clone();
    let r = blocking(move || {
        let s = posted_session(&st2, &headers, &f.csrf)?;
        let k = owns(&st2, &s.account, &id)?;
        if f.confirm.trim() != k.key_id {
            return detail(
                &st2,
                &s,
                &id,
                None,
                Some("Revocation not confirmed: type the key id exactly.".into()),
                StatusCode::BAD_REQUEST,
            );
        }
        keystore::set_status(
            &st2,
            &id,
            KeyStatus::Revoked,
            &format!("web:{}", s.account),
            "revoked in the web UI",
        )
        .map_err(|e| internal(format!("{e:#}")))?;
        Ok(Redirect::to(&format!("/keys/{id}?notice=revoked")).into_response())
    })
    .await;
    after_write(&st, r).await
}

// ---------------------------------------------------------------------------------------
// Activity
// ---------------------------------------------------------------------------------------

const PAGE_ROWS: usize = 50;
const DAY_MS: u64 = 24 * 60 * 60 * 1000;

#[derive(Deserialize)]
struct ActivityQuery {
    decision: Option<String>,
    before: Option<i64>,
}

async fn account_activity(
    State(st): St,
    headers: HeaderMap,
    Query(q): Query<ActivityQuery>,
) -> Response {
    let st2 = st.clone();
    flat(
        blocking(move || {
            let s = full_session(&st2, &headers)?;
            activity_page(&st2, &s, None, q)
        })
        .await,
    )
}

async fn key_activity(
    State(st): St,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(q): Query<ActivityQuery>,
) -> Response {
    let st2 = st.clone();
    flat(
        blocking(move || {
            let s = full_session(&st2, &headers)?;
            let k = owns(&st2, &s.account, &id)?;
            activity_page(&st2, &s, Some(k), q)
        })
        .await,
    )
}

/// Banner lines: networks a key was refused from for not being allowed there.
fn foreign_banners(
    st: &AdminState,
    key_id: Option<&str>,
    account: &str,
    now: UnixMillis,
) -> Result<Vec<String>, Response> {
    let tries = keystore::foreign_attempts(st, key_id, account, now.saturating_sub(7 * DAY_MS))
        .map_err(internal)?;
    Ok(tries
        .into_iter()
        .map(|(key, ip, n, last)| {
            let times = if n == 1 { "once".to_owned() } else { format!("{n} times") };
            let which = if key_id.is_some() { "This key".to_owned() } else { format!("Key {key}") };
            format!("{which} was tried from {ip}, a network it is not allowed from or has never been used from ({times}, last {}). If that was not you, suspend or revoke the key.", ago_text(last, now))
        })
        .collect())
}

fn activity_page(
    st: &AdminState,
    s: &Session,
    key: Option<store::KeySummary>,
    q: ActivityQuery,
) -> Result<Response, Response> {
    let decision = match q.decision.as_deref() {
        Some(d @ ("allow" | "deny" | "would_deny")) => Some(d),
        _ => None,
    };
    let key_id = key.as_ref().map(|k| k.key_id.as_str());
    let mut rows = keystore::activity_rows(
        st,
        &crate::admin::activity::Filter {
            key_id,
            account: Some(&s.account),
            decision,
            before: q.before,
        },
        PAGE_ROWS + 1,
    )
    .map_err(internal)?;
    let more = rows.len() > PAGE_ROWS;
    rows.truncate(PAGE_ROWS);
    let now = now_ms();
    let base = match key_id {
        Some(id) => format!("/keys/{id}/activity"),
        None => "/activity".to_owned(),
    };
    let filter = decision
        .map(|d| format!("decision={d}&"))
        .unwrap_or_default();
    let page = ActivityPage {
        account: Some(s.account.clone()),
        csrf: s.csrf.clone(),
        title: match &key {
            Some(k) => format!(
                "Activity of {}",
                if k.label.is_empty() {
                    &k.key_id
                } else {
                    &k.label
                }
            ),
            None => "Activity of all your keys".to_owned(),
        },
        key_id: key_id.map(str::to_owned),
        banners: foreign_banners(st, key_id, &s.account, now)?,
        never_used: key.as_ref().is_some_and(|k| k.last_used_at.is_none()) && rows.is_empty(),
        decision: decision.unwrap_or("").to_owned(),
        base: base.clone(),
        rows: rows
            .iter()
            .map(|r| ActivityView {
                time: date_text(r.ts),
                ago: ago_text(r.ts, now),
                key_id: r.key_id.clone(),
                client_ip: r.client_ip.clone(),
                action: r.action.clone().unwrap_or_else(|| "-".into()),
                decision: match r.decision.as_str() {
                    "allow" => "allowed",
                    "deny" => "refused",
                    _ => "would be refused",
                }
                .to_owned(),
                denied: r.decision != "allow",
                code: r.code.clone().unwrap_or_default(),
                explanation: r
                    .code
                    .as_deref()
                    .map(crate::admin::activity::explain)
                    .unwrap_or("")
                    .to_owned(),
                request_id: r.request_id.clone(),
            })
            .collect(),
        older: if more {
            rows.last()
                .map(|r| format!("{base}?{filter}before={}", r.id))
        } else {
            None
        },
    };
    Ok(with_cookies(render(&page), s.renewed.clone()))
}

#[derive(Deserialize)]
struct LockForm {
    csrf: String,
}

/// "Lock to the networks this key used in the last 30 days": every one of them passed the
/// allowlist (or there was none), so this only ever narrows and applies at once.
async fn allow_lock(
    State(st): St,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(f): Form<LockForm>,
) -> Response {
    let st2 = st.clone();
    let r = blocking(move || {
        let s = posted_session(&st2, &headers, &f.csrf)?;
        owns(&st2, &s.account, &id)?;
        let used = keystore::allowed_ips(&st2, &s.account, &id, now_ms().saturating_sub(30 * DAY_MS)).map_err(internal)?;
        let nets: Vec<IpNet> = used.iter().filter_map(|ip| parse_allow_ip(ip).ok()).collect();
        if nets.is_empty() {
            return detail(&st2, &s, &id, None, Some("This key was not used successfully in the last 30 days, so there is nothing to lock it to. Add your networks by hand.".into()), StatusCode::BAD_REQUEST);
        }
        let actor = format!("web:{}", s.account);
        match keystore::set_allowlist(&st2, &id, Some(&s.account), &nets, requester(&actor)) {
            Ok(out) => {
                let outcomes: Vec<Outcome> = out.into_iter().map(|(_, o)| o).collect();
                Ok(Redirect::to(&format!("/keys/{id}?notice={}", outcome_code(&outcomes))).into_response())
            }
            Err(e) => edit_error(&st2, &s, &id, e),
        }
    })
    .await;
    after_write(&st, r).await
}

// ---------------------------------------------------------------------------------------
// Two-factor enrolment
// ---------------------------------------------------------------------------------------

async fn totp_form(State(st): St, headers: HeaderMap) -> Response {
    let st2 = st.clone();
    let r = blocking(move || -> Result<Response, Response> {
        let s = full_session(&st2, &headers)?;
        if totp_on(&st2, &s.account)? {
            return Ok(Redirect::to("/keys?notice=totp_on").into_response());
        }
        let e = st2.enrolment(&s.account).map_err(internal)?;
        Ok(render(&TotpPage::new(
            Some(s.account.clone()),
            s.csrf.clone(),
            &e,
            None,
        )))
    })
    .await;
    flat(r)
}

fn totp_on(st: &AdminState, account: &str) -> Result<bool, Response> {
    Ok(st
        .account(account)
        .map_err(internal)?
        .is_some_and(|a| a.totp))
}

#[derive(Deserialize)]
struct TotpForm {
    csrf: String,
    code: String,
}

async fn totp_confirm(State(st): St, headers: HeaderMap, Form(f): Form<TotpForm>) -> Response {
    let st2 = st.clone();
    let r = blocking(move || -> Result<Response, Response> {
        let s = posted_session(&st2, &headers, &f.csrf)?;
        // Replacing an enabled second factor is for the operator: a stolen session must
        // not be able to swap in the thief's authenticator.
        if totp_on(&st2, &s.account)? {
            return Ok(Redirect::to("/keys?notice=totp_on").into_response());
        }
        match st2.confirm_enrolment(&s.account, &f.code, now_ms()).map_err(internal)? {
            Some(codes) => Ok(render(&RecoveryPage {
                account: Some(s.account.clone()),
                csrf: s.csrf.clone(),
                codes,
            })),
            None => {
                let e = st2
                    .pending_enrolment(&s.account)
                    .map_err(internal)?
                    .ok_or_else(|| Redirect::to("/account/totp").into_response())?;
                Ok((
                    StatusCode::BAD_REQUEST,
                    render(&TotpPage::new(Some(s.account.clone()), s.csrf.clone(), &e, Some("That code does not match. Check the clock of your phone and enter the current code.".into()))),
                )
                    .into_response())
            }
        }
    })
    .await;
    flat(r)
}
