//! The admin listener's handlers over HTTP against the real binary: no page without a
//! session, CSRF and origin checks, session expiry, renewal and revocation, lockout, TOTP
//! step reuse, re-authentication for widening, and the pipeline seeing changes at once.

mod utils;

use std::net::SocketAddr;
use std::time::Duration;

use utils::admin::{account, ed25519, sid, sso_token, totp_code, Client, Page};
use utils::*;

const PASSWORD: &str = "correct horse battery";

struct Admin {
    addr: SocketAddr,
    gw: Gateway,
    env: Env,
    _origin: Origin,
}

/// The CSRF token of `c`'s session (from a form every session can open).
async fn session_csrf(c: &mut Client) -> String {
    c.get("/keys/new").await.field("csrf")
}

async fn start(tweak: impl FnOnce(&mut toml::Table)) -> Admin {
    let env = Env::new(Dialect::Zaif, tweak);
    account(&env, &["create"], "alice", PASSWORD);
    let origin = Origin::start().await;
    let (gw, addr) = env.start_with_admin(origin.addr).await;
    Admin {
        addr,
        gw,
        env,
        _origin: origin,
    }
}

fn db(env: &Env) -> rusqlite::Connection {
    rusqlite::Connection::open(env.data.join("keyguard.db")).unwrap()
}

fn now_secs() -> u64 {
    now_ms() / 1000
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_page_without_a_session_and_strict_headers_everywhere() {
    let a = start(|_| {}).await;
    let mut c = Client::new(a.addr);
    for path in [
        "/keys",
        "/keys/new",
        "/keys/kg_x",
        "/keys/kg_x/activity",
        "/activity",
        "/account/totp",
    ] {
        let p = c.get(path).await;
        assert_eq!((p.status, p.location()), (303, "/login"), "{path}");
    }
    let p = c
        .post(
            "/keys/new",
            &[("csrf", "x"), ("label", "l"), ("scope_read", "on")],
        )
        .await;
    assert_eq!(p.status, 303, "{p:?}");
    c.jar.insert(
        "kg_session".into(),
        "eyJhbGciOiJIUzI1NiJ9.eyJzaWQiOiJ4In0.forged".into(),
    );
    assert_eq!(c.get("/keys").await.status, 303, "forged token");
    let p = c.get("/login").await;
    assert!(p
        .header("content-security-policy")
        .unwrap()
        .contains("default-src 'none'"));
    assert!(p
        .header("content-security-policy")
        .unwrap()
        .contains("frame-ancestors 'none'"));
    assert_eq!(p.header("x-frame-options"), Some("DENY"));
    assert_eq!(p.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(p.header("cache-control"), Some("no-store"));
    let cookie = p
        .headers
        .iter()
        .find(|(k, _)| k == "set-cookie")
        .unwrap()
        .1
        .clone();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    assert_eq!(c.get("/healthz").await.status, 200);
    let ready = c.get("/readyz").await;
    assert_eq!(ready.status, 200, "{}", ready.body);
    // The admin pages are not on the exchange-facing port.
    let mut exchange = Client::new(a.gw.addr);
    assert_ne!(exchange.get("/login").await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn csrf_tokens_and_origin_are_checked_on_every_post() {
    let a = start(|_| {}).await;
    let mut c = Client::new(a.addr);
    // The login form's own token: without it (or with another one) no login.
    let p = c
        .post(
            "/login",
            &[
                ("name", "alice"),
                ("password", PASSWORD),
                ("token", "forged"),
            ],
        )
        .await;
    assert_eq!(p.status, 403);
    assert_eq!(c.login("alice", PASSWORD).await.location(), "/keys");
    let csrf = session_csrf(&mut c).await;
    let good = [
        ("csrf", csrf.as_str()),
        ("label", "bot"),
        ("scope_read", "on"),
    ];
    let p = c
        .post(
            "/keys/new",
            &[("csrf", "wrong"), ("label", "bot"), ("scope_read", "on")],
        )
        .await;
    assert_eq!(p.status, 403, "wrong CSRF token");
    let body = utils::form(&good);
    let p = c
        .raw(
            "POST",
            "/keys/new",
            &body,
            &[("Origin", "http://evil.example")],
        )
        .await;
    assert_eq!(p.status, 403, "foreign Origin");
    let p = c
        .raw(
            "POST",
            "/keys/new",
            &body,
            &[("Sec-Fetch-Site", "cross-site")],
        )
        .await;
    assert_eq!(p.status, 403, "cross-site fetch");
    let p = c
        .raw("POST", "/keys/new", &body, &[("Origin", "null")])
        .await;
    assert_eq!(p.status, 403, "opaque origin");
    // Another session's token is not this session's.
    let mut other = Client::new(a.addr);
    other.login("alice", PASSWORD).await;
    let theirs = session_csrf(&mut other).await;
    let p = c
        .post(
            "/keys/new",
            &[
                ("csrf", theirs.as_str()),
                ("label", "bot"),
                ("scope_read", "on"),
            ],
        )
        .await;
    assert_eq!(p.status, 403);
    let keys = a.env.run_with_store(&["keys", "list"], &["--json"]).ok();
    assert_eq!(keys.stdout.trim(), "[]", "nothing was created");
    let p = c.post("/keys/new", &good).await;
    assert_eq!(p.status, 200);
    assert!(p.body.contains("Key created"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_expire_renew_and_are_revoked_by_logout_and_password_change() {
    let a = start(|_| {}).await;
    let mut c = Client::new(a.addr);
    c.login("alice", PASSWORD).await;
    let token = c.jar["kg_session"].clone();
    assert_eq!(c.get("/keys").await.status, 200);

    // Renewal: a session past half its lifetime gets a fresh token, same session.
    let now = now_ms() as i64;
    db(&a.env)
        .execute("UPDATE sessions SET expires_at = ?1", [now + 60_000])
        .unwrap();
    let p = c.get("/keys").await;
    let renewed = p
        .cookies()
        .get("kg_session")
        .cloned()
        .expect("renewed cookie");
    assert_eq!(sid(&renewed), sid(&token));
    // Expiry: the row's time is what counts, whatever the token says.
    db(&a.env)
        .execute("UPDATE sessions SET expires_at = ?1", [now - 1])
        .unwrap();
    assert_eq!(c.get("/keys").await.location(), "/login");

    // Logout ends it at once, even for a copy of the cookie.
    c.jar.clear();
    c.login("alice", PASSWORD).await;
    let copy = c.jar["kg_session"].clone();
    let csrf = session_csrf(&mut c).await;
    c.post("/logout", &[("csrf", &csrf)]).await;
    let mut thief = Client::new(a.addr);
    thief.jar.insert("kg_session".into(), copy);
    assert_eq!(thief.get("/keys").await.location(), "/login");

    // So does a password change, and disabling the account.
    c.login("alice", PASSWORD).await;
    assert_eq!(c.get("/keys").await.status, 200);
    account(
        &a.env,
        &["reset-password"],
        "alice",
        "another long password",
    );
    assert_eq!(c.get("/keys").await.location(), "/login");
    c.login("alice", "another long password").await;
    assert_eq!(c.get("/keys").await.status, 200);
    a.env
        .run_with_store(&["accounts", "disable"], &["alice"])
        .ok();
    assert_eq!(c.get("/keys").await.location(), "/login");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lockout_answers_like_a_wrong_password_and_unknown_names_alike() {
    let hook = Origin::start().await;
    let url = format!("http://{}/keyguard", hook.addr);
    let a = start(|cfg| {
        set(cfg, "admin.lockout_after", 3);
        set(cfg, "admin.lockout_base", "1h");
        set(cfg, "alerts.webhook_url", url.clone());
    })
    .await;
    let mut c = Client::new(a.addr);
    let unknown = c.login("nobody", PASSWORD).await;
    assert_eq!(unknown.status, 401);
    for _ in 0..3 {
        assert_eq!(c.login("alice", "wrong password!").await.status, 401);
    }
    let locked = c.login("alice", PASSWORD).await;
    assert_eq!(locked.status, 401, "locked: the right password is refused");
    let msg = |p: &Page| {
        p.body
            .split("role=\"alert\">")
            .nth(1)
            .unwrap()
            .split('<')
            .next()
            .unwrap()
            .to_owned()
    };
    assert_eq!(msg(&locked), msg(&unknown), "one generic message");
    let list = a.env.run_with_store(&["accounts", "list"], &[]).ok();
    assert!(list.stdout.contains("locked"), "{list:?}");
    // Someone is guessing the trader's password: the operator hears of it once, with
    // the account and nothing that was typed.
    let alerts = || hook.bodies_containing("\"account_locked\"");
    assert!(
        eventually(Duration::from_secs(3), || async { !alerts().is_empty() }).await,
        "no lockout alert"
    );
    let sent = alerts();
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert!(sent[0].contains("\"account\":\"alice\""), "{sent:?}");
    assert!(!sent[0].contains("wrong password"), "{sent:?}");
    // An operator's password reset lifts it.
    account(
        &a.env,
        &["reset-password"],
        "alice",
        "another long password",
    );
    assert_eq!(
        c.login("alice", "another long password").await.location(),
        "/keys"
    );
}

/// Enrols TOTP for the logged-in client; returns the secret and the step used.
async fn enrol(c: &mut Client) -> (String, u64) {
    let (secret, step, _) = utils::admin::enrol(c).await;
    (secret, step)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn totp_pending_is_not_a_session_ids_change_and_steps_are_single_use() {
    let a = start(|_| {}).await;
    let mut c = Client::new(a.addr);
    c.login("alice", PASSWORD).await;
    let (secret, step) = enrol(&mut c).await;
    // No re-enrolment from a session: the second factor cannot be swapped.
    assert_eq!(
        c.get("/account/totp").await.location(),
        "/keys?notice=totp_on"
    );
    let first_sid = sid(&c.jar["kg_session"]);
    c.jar.clear();

    let p = c.login("alice", PASSWORD).await;
    assert_eq!(p.location(), "/login/code");
    let pending = c.jar["kg_pending"].clone();
    assert!(!c.jar.contains_key("kg_session") || c.jar["kg_session"].is_empty());
    // The pending token opens nothing, not even when presented as a session.
    assert_eq!(c.get("/keys").await.location(), "/login");
    let mut sneaky = Client::new(a.addr);
    sneaky.jar.insert("kg_session".into(), pending.clone());
    assert_eq!(sneaky.get("/keys").await.location(), "/login");

    let form = c.get("/login/code").await;
    let csrf = form.field("csrf");
    // The enrolment's step is spent.
    let p = c
        .post(
            "/login/code",
            &[("csrf", &csrf), ("code", &totp_code(&secret, step * 30))],
        )
        .await;
    assert_eq!(p.status, 401, "a used step is refused");
    let next = totp_code(&secret, (step + 1) * 30);
    let p = c
        .post("/login/code", &[("csrf", &csrf), ("code", &next)])
        .await;
    assert_eq!(p.location(), "/keys", "{p:?}");
    let full = c.jar["kg_session"].clone();
    assert_ne!(sid(&full), sid(&pending), "a fresh id after the code");
    assert_ne!(sid(&full), first_sid);
    assert_eq!(c.get("/keys").await.status, 200);
    // The pending session ended with the code.
    let mut replay = Client::new(a.addr);
    replay.jar.insert("kg_pending".into(), pending);
    assert_eq!(replay.get("/login/code").await.location(), "/login");

    // The same code again (another login) is refused.
    let mut again = Client::new(a.addr);
    again.login("alice", PASSWORD).await;
    let csrf = again.get("/login/code").await.field("csrf");
    let p = again
        .post("/login/code", &[("csrf", &csrf), ("code", &next)])
        .await;
    assert_eq!(p.status, 401, "replayed code");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn widening_asks_for_the_password_again_and_narrowing_reaches_the_pipeline_at_once() {
    let a = start(|cfg| set(cfg, "admin.widen_cooldown", "1h")).await;
    let key = a.env.create_key(&KeySpec {
        account: "alice".into(),
        ..KeySpec::scopes("read,trade")
    });
    let mut c = Client::new(a.addr);
    c.login("alice", PASSWORD).await;
    let page = c.get(&format!("/keys/{}", key.key_id)).await;
    assert!(page.body.contains("127.0.0.2/32"));
    let csrf = page.field("csrf");
    let path = format!("/keys/{}/allow/add", key.key_id);
    let p = c
        .post(
            &path,
            &[("csrf", &csrf), ("net", "127.0.0.3"), ("password", "")],
        )
        .await;
    assert_eq!(p.status, 401);
    assert!(p.body.contains("needs your password"), "{}", p.body);
    let p = c
        .post(
            &path,
            &[
                ("csrf", &csrf),
                ("net", "127.0.0.3"),
                ("password", "wrong password!"),
            ],
        )
        .await;
    assert_eq!(p.status, 401);
    let p = c
        .post(
            &path,
            &[
                ("csrf", &csrf),
                ("net", "127.0.0.3"),
                ("password", PASSWORD),
            ],
        )
        .await;
    assert_eq!(p.location(), format!("/keys/{}?notice=pending", key.key_id));
    let page = c.get(&format!("/keys/{}", key.key_id)).await;
    assert!(
        page.body.contains("Pending changes") && page.body.contains("allow network 127.0.0.3/32"),
        "{}",
        page.body
    );
    a.gw.request_from(OTHER_IP, &zaif::read(&key))
        .await
        .assert_error(403, "ip_not_allowed");

    // Cancel it: gone, and still refused.
    let id: i64 = db(&a.env)
        .query_row("SELECT id FROM pending_changes", [], |r| r.get(0))
        .unwrap();
    let p = c
        .post(
            &format!("/keys/{}/pending/cancel", key.key_id),
            &[("csrf", &csrf), ("change", &id.to_string())],
        )
        .await;
    assert_eq!(
        p.location(),
        format!("/keys/{}?notice=cancelled", key.key_id)
    );
    assert!(!c
        .get(&format!("/keys/{}", key.key_id))
        .await
        .body
        .contains("Pending changes"));

    // Narrowing: no password, and the very next exchange request sees it.
    let p = c
        .post(
            &format!("/keys/{}/scopes", key.key_id),
            &[("csrf", &csrf), ("scope_read", "on")],
        )
        .await;
    assert_eq!(p.location(), format!("/keys/{}?notice=applied", key.key_id));
    a.gw.request_from(ALLOWED_IP, &zaif::trade(&key))
        .await
        .assert_error(403, "scope_missing");
    let p = c
        .post(
            &format!("/keys/{}/status", key.key_id),
            &[("csrf", &csrf), ("action", "suspend")],
        )
        .await;
    assert_eq!(
        p.location(),
        format!("/keys/{}?notice=suspended", key.key_id)
    );
    a.gw.request_from(ALLOWED_IP, &zaif::read(&key))
        .await
        .assert_error(403, "key_suspended");

    // Revoking needs the confirmation page's typed key id.
    let p = c
        .post(
            &format!("/keys/{}/revoke", key.key_id),
            &[("csrf", &csrf), ("confirm", "nope")],
        )
        .await;
    assert_eq!(p.status, 400);
    let p = c
        .post(
            &format!("/keys/{}/revoke", key.key_id),
            &[("csrf", &csrf), ("confirm", &key.key_id)],
        )
        .await;
    assert_eq!(p.location(), format!("/keys/{}?notice=revoked", key.key_id));
    a.gw.request_from(ALLOWED_IP, &zaif::read(&key))
        .await
        .assert_error(403, "key_revoked");

    // Another account's keys do not exist for alice.
    let other = a.env.create_key(&KeySpec::scopes("read"));
    assert_eq!(c.get(&format!("/keys/{}", other.key_id)).await.status, 404);
    let p = c
        .post(
            &format!("/keys/{}/status", other.key_id),
            &[("csrf", &csrf), ("action", "suspend")],
        )
        .await;
    assert_eq!(p.status, 404);
}

fn token(env: &Env, scopes: &str) -> String {
    env.run_with_store(&["tokens", "create"], &["--scopes", scopes])
        .ok()
        .stdout
        .trim()
        .to_owned()
}

async fn api(
    c: &mut Client,
    method: &str,
    path: &str,
    token: &str,
    json: Option<serde_json::Value>,
) -> (u16, serde_json::Value) {
    let auth = format!("Bearer {token}");
    let body = json.map(|j| j.to_string()).unwrap_or_default();
    let p = c
        .raw(
            method,
            path,
            &body,
            &[
                ("Authorization", &auth),
                ("Content-Type", "application/json"),
            ],
        )
        .await;
    let v = serde_json::from_str(&p.body).unwrap_or(serde_json::Value::Null);
    (p.status, v)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_needs_a_token_with_the_right_scope_and_follows_the_widening_rules() {
    let a = start(|cfg| set(cfg, "admin.widen_cooldown", "1h")).await;
    let key = a.env.create_key(&KeySpec::scopes("read,trade"));
    let mut c = Client::new(a.addr);
    let p = c.get("/api/keys").await;
    assert_eq!(p.status, 401);
    assert_eq!(p.header("www-authenticate"), Some("Bearer"));
    let v: serde_json::Value = serde_json::from_str(&p.body).unwrap();
    assert_eq!(v["error"]["code"], "unauthorized");
    // A session cookie is not a token.
    c.login("alice", PASSWORD).await;
    assert_eq!(c.get("/api/keys").await.status, 401);
    c.jar.clear();

    let read = token(&a.env, "admin:read");
    let write = token(&a.env, "admin:write");
    assert!(read.starts_with("kgt_"));
    let (status, keys) = api(&mut c, "GET", "/api/keys", &read, None).await;
    assert_eq!(status, 200);
    assert_eq!(keys[0]["key_id"], key.key_id.as_str());
    let changes = format!("/api/keys/{}/changes", key.key_id);
    let add = serde_json::json!({"change": "add_ip", "value": "127.0.0.3"});
    let (status, v) = api(&mut c, "POST", &changes, &read, Some(add.clone())).await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (403, Some("token_scope_missing"))
    );

    let (status, v) = api(&mut c, "POST", &changes, &write, Some(add)).await;
    assert_eq!(
        (status, v["result"].as_str()),
        (200, Some("pending")),
        "{v}"
    );
    let id = v["id"].as_i64().unwrap();
    let (_, pending) = api(&mut c, "GET", "/api/pending", &read, None).await;
    assert_eq!(pending[0]["id"], id);
    let (status, v) = api(
        &mut c,
        "POST",
        &changes,
        &write,
        Some(serde_json::json!({"change": "add_ip", "value": "127.0.0.4", "now": true})),
    )
    .await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (400, Some("invalid_input")),
        "now needs a reason"
    );
    let (status, v) = api(
        &mut c,
        "POST",
        &changes,
        &write,
        Some(serde_json::json!({"change": "remove_scope", "value": "trade"})),
    )
    .await;
    assert_eq!((status, v["result"].as_str()), (200, Some("applied")));
    a.gw.request_from(ALLOWED_IP, &zaif::trade(&key))
        .await
        .assert_error(403, "scope_missing");
    let (status, v) = api(
        &mut c,
        "POST",
        &changes,
        &write,
        Some(serde_json::json!({"change": "remove_scope", "value": "read"})),
    )
    .await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (422, Some("last_scope"))
    );
    let (status, _) = api(
        &mut c,
        "DELETE",
        &format!("/api/pending/{id}"),
        &write,
        None,
    )
    .await;
    assert_eq!(status, 200);
    let (_, pending) = api(&mut c, "GET", "/api/pending", &read, None).await;
    assert_eq!(pending, serde_json::json!([]));
    let (status, v) = api(&mut c, "POST", "/api/freezes", &write, Some(serde_json::json!({"scope": "asset", "target": "BTC", "frozen": true, "reason": "incident"}))).await;
    assert_eq!((status, v["assets"][0].as_str()), (200, Some("btc")));
    // Without a token a bad body is still just unauthorized.
    let p = c
        .raw(
            "POST",
            &changes,
            "not json",
            &[("Content-Type", "application/json")],
        )
        .await;
    assert_eq!(p.status, 401);
    let (status, v) = api(&mut c, "GET", "/api/nope", &read, None).await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (404, Some("not_found"))
    );

    // Every documented operation is served (the router's own 404 never answers it).
    let (_, doc) = api(&mut c, "GET", "/api/openapi.json", &read, None).await;
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"));
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            let real = path
                .replace("{key_id}", &key.key_id)
                .replace("{change_id}", "999999");
            let body = (method == "post").then(|| serde_json::json!({}));
            let p = c
                .raw(
                    &method.to_uppercase(),
                    &real,
                    &body.map(|b| b.to_string()).unwrap_or_default(),
                    &[
                        ("Authorization", &format!("Bearer {write}")),
                        ("Content-Type", "application/json"),
                    ],
                )
                .await;
            let v: serde_json::Value =
                serde_json::from_str(&p.body).unwrap_or(serde_json::Value::Null);
            assert!(
                p.status != 405 && v["error"]["code"] != "not_found",
                "{method} {path}: {} {}",
                p.status,
                p.body
            );
        }
    }

    // A revoked token stops at once.
    let id = read
        .trim_start_matches("kgt_")
        .split('_')
        .next()
        .unwrap()
        .to_owned();
    a.env.run_with_store(&["tokens", "revoke"], &[&id]).ok();
    let (status, _) = api(&mut c, "GET", "/api/keys", &read, None).await;
    assert_eq!(status, 401);
    let list = a.env.run_with_store(&["tokens", "list"], &[]).ok();
    assert!(!list.stdout.contains(&read[12..]), "no secrets in listings");
}

/// An Ed25519 key pair: (PKCS#8 DER for signing, SPKI PEM for the config).

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sso_tokens_from_the_exchange_open_a_session_once() {
    let (signer, pem) = ed25519();
    let (other_signer, _) = ed25519();
    let dir = tempfile::tempdir().unwrap();
    let pem_path = dir.path().join("exchange.pem");
    std::fs::write(&pem_path, pem).unwrap();
    let p = pem_path.to_string_lossy().into_owned();
    let a = start(move |cfg| {
        set(cfg, "admin.sso.public_key_file", p);
        set(cfg, "admin.sso.audience", "keyguard");
        set(cfg, "admin.sso.issuer", "https://exchange.example");
    })
    .await;
    let now = now_secs();
    let claims = |sub: &str, aud: &str, exp: u64, jti: &str| serde_json::json!({"sub": sub, "aud": aud, "iss": "https://exchange.example", "iat": now, "exp": exp, "jti": jti});
    let mut c = Client::new(a.addr);
    let good = sso_token(&signer, claims("alice", "keyguard", now + 120, "j1"));
    let p = c.get(&format!("/sso?token={good}")).await;
    assert_eq!(p.status, 200, "{}", p.body);
    assert!(p.body.contains("url=/keys"));
    assert_eq!(
        c.get("/keys").await.status,
        200,
        "a full session, no password"
    );
    // Single use: the same token again opens nothing.
    let mut replay = Client::new(a.addr);
    assert_eq!(replay.get(&format!("/sso?token={good}")).await.status, 401);
    assert_eq!(replay.get("/keys").await.status, 303);
    for (why, token) in [
        (
            "wrong audience",
            sso_token(&signer, claims("alice", "someone-else", now + 120, "j2")),
        ),
        (
            "lives longer than 5 min",
            sso_token(&signer, claims("alice", "keyguard", now + 600, "j3")),
        ),
        (
            "expired",
            sso_token(&signer, claims("alice", "keyguard", now - 1, "j4")),
        ),
        (
            "another key",
            sso_token(&other_signer, claims("alice", "keyguard", now + 120, "j5")),
        ),
        (
            "unknown account",
            sso_token(&signer, claims("mallory", "keyguard", now + 120, "j6")),
        ),
        (
            "no jti",
            sso_token(
                &signer,
                serde_json::json!({"sub": "alice", "aud": "keyguard", "iss": "https://exchange.example", "exp": now + 120}),
            ),
        ),
    ] {
        let mut c = Client::new(a.addr);
        assert_eq!(
            c.get(&format!("/sso?token={token}")).await.status,
            401,
            "{why}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creating_a_key_validates_networks_and_trusts_the_creators_network() {
    let a = start(|_| {}).await;
    let mut c = Client::new(a.addr);
    c.login("alice", PASSWORD).await;
    let csrf = session_csrf(&mut c).await;
    let create = |allow: &'static str, withdraw: bool| {
        let mut f = vec![
            ("csrf", csrf.clone()),
            ("label", "bot".to_owned()),
            ("scope_read", "on".to_owned()),
            ("allow", allow.to_owned()),
        ];
        if withdraw {
            f.push(("scope_withdraw", "on".to_owned()));
        }
        f
    };
    let p = post_owned(&mut c, create("10.0.0.1/8", false)).await;
    assert_eq!(p.status, 400);
    assert!(p.body.contains("host bits"), "{}", p.body);
    let p = post_owned(&mut c, create("not-an-ip", false)).await;
    assert!(
        p.status == 400 && p.body.contains("not an IP address"),
        "{}",
        p.body
    );
    let p = post_owned(&mut c, create("", true)).await;
    assert!(
        p.status == 400 && p.body.contains("needs at least one allowed network"),
        "{}",
        p.body
    );
    let p = post_owned(&mut c, create("2001:db8::/48\n203.0.113.7", true)).await;
    assert!(
        p.status == 200 && p.body.contains("Key created"),
        "{}",
        p.body
    );

    let t = token(&a.env, "admin:read");
    let (_, keys) = api(&mut c, "GET", "/api/keys", &t, None).await;
    assert_eq!(
        keys[0]["allow_ips"],
        serde_json::json!(["2001:db8::/48", "203.0.113.7/32"])
    );
    assert_eq!(keys[0]["scopes"], serde_json::json!(["read", "withdraw"]));
    assert_eq!(
        keys[0]["trusted_ips"],
        serde_json::json!(["127.0.0.1/32"]),
        "the creator's network"
    );
    assert_eq!(keys[0]["account"], "alice");
}

async fn post_owned(c: &mut Client, f: Vec<(&'static str, String)>) -> Page {
    let pairs: Vec<(&str, &str)> = f.iter().map(|(k, v)| (*k, v.as_str())).collect();
    c.post("/keys/new", &pairs).await
}
