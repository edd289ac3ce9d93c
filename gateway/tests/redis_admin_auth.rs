//! The admin listener's logins on Redis (issue 12, item 1), against the real binary: two
//! replicas A and B on one real `redis-server`, each with its own data dir and its own
//! `--admin-listen`. Whatever one replica decides about who is logged in, the other
//! sees at once: sessions, logouts, lockouts, spent TOTP steps and recovery codes, API
//! tokens and SSO token ids. Every key the admin side leaves in Redis expires or belongs
//! to the documented bounded set.

mod utils;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use utils::admin::{account, ed25519, enrol, sid, sso_token, totp_code, Client, Page};
use utils::redis::{cluster_store, replica_env, single_store, RedisCluster, RedisServer};
use utils::*;

const PASSWORD: &str = "correct horse battery";

/// Two replicas with admin listeners on one Redis.
struct Pair {
    redis: RedisServer,
    /// A cluster instead, when the test runs on one (`redis` is then unused and idle).
    _cluster: Option<RedisCluster>,
    envs: Vec<Env>,
    admins: Vec<SocketAddr>,
    gws: Vec<Gateway>,
    _origin: Origin,
    _dir: tempfile::TempDir,
}

impl Pair {
    async fn start(tweak: impl Fn(&mut toml::Table)) -> Pair {
        // Generous: this checks sharing, not the fail-closed latency.
        let dir = tempfile::tempdir().unwrap();
        let redis = RedisServer::start(dir.path());
        Pair::start_on(dir, redis, |r| single_store(&r.url(), "2s"), None, tweak).await
    }

    /// Replicas sharing the master key in `dir`, on the store `store` names (given the
    /// single server), or on `cluster`.
    async fn start_on(
        dir: tempfile::TempDir,
        redis: RedisServer,
        store: impl FnOnce(&RedisServer) -> toml::Table,
        cluster: Option<RedisCluster>,
        tweak: impl Fn(&mut toml::Table),
    ) -> Pair {
        let store = store(&redis);
        let envs: Vec<Env> = (0..2)
            .map(|_| replica_env(dir.path(), &store, &tweak))
            .collect();
        let origin = Origin::start().await;
        let mut gws = Vec::new();
        let mut admins = Vec::new();
        for e in &envs {
            let (gw, addr) = e.start_with_admin(origin.addr).await;
            gws.push(gw);
            admins.push(addr);
        }
        Pair {
            redis,
            _cluster: cluster,
            envs,
            admins,
            gws,
            _origin: origin,
            _dir: dir,
        }
    }

    fn a(&self) -> SocketAddr {
        self.admins[0]
    }

    fn b(&self) -> SocketAddr {
        self.admins[1]
    }

    /// Every key in Redis.
    fn keys(&self) -> Vec<String> {
        self.redis
            .cli(&["--scan"])
            .expect("redis-cli --scan")
            .lines()
            .map(str::to_owned)
            .filter(|l| !l.is_empty())
            .collect()
    }

    /// A key's remaining life in ms (-1: none, -2: gone).
    fn pttl(&self, key: &str) -> i64 {
        self.redis
            .cli(&["PTTL", key])
            .expect("PTTL")
            .trim()
            .parse()
            .unwrap()
    }
}

fn now_secs() -> u64 {
    now_ms() / 1000
}

/// Whether the cookie jar of `c` is a full session on its listener.
async fn logged_in(c: &mut Client) -> bool {
    let p = c.get("/keys").await;
    match (p.status, p.location()) {
        (200, _) => true,
        (303, "/login") => false,
        _ => panic!("unexpected answer to /keys: {p:?}"),
    }
}

async fn logout(c: &mut Client) {
    let csrf = c.get("/keys/new").await.field("csrf");
    let p = c.post("/logout", &[("csrf", &csrf)]).await;
    assert_eq!(p.location(), "/login", "{p:?}");
}

/// Polls `f` until it holds (a replica's audit log is written off the request path).
async fn eventually(what: &str, f: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < deadline, "{what}: not within 10 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn audit(env: &Env) -> String {
    std::fs::read_to_string(env.data.join("audit.jsonl")).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_on_one_replica_holds_on_the_other_until_ended_on_either() {
    if !utils::redis::available("a_login_on_one_replica_holds_on_the_other_until_ended_on_either") {
        return;
    }
    let p = Pair::start(|_| {}).await;
    account(&p.envs[0], &["create"], "alice", PASSWORD);
    let list = p.envs[1].run_with_store(&["accounts", "list"], &[]).ok();
    assert!(
        list.stdout.contains("alice"),
        "made through one replica's config, listed through the other's: {list:?}"
    );
    // The embedded store of either replica knows nothing of it: the account is in Redis.
    let local = rusqlite::Connection::open(p.envs[0].data.join("keyguard.db")).unwrap();
    let n: i64 = local
        .query_row("SELECT COUNT(*) FROM accounts", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 0, "the account went to Redis, not to the data dir");

    // Password on A; the cookie works on B (one signing key, one session row).
    let mut on_a = Client::new(p.a());
    assert_eq!(on_a.login("alice", PASSWORD).await.location(), "/keys");
    let mut on_b = on_a.at(p.b());
    assert!(logged_in(&mut on_b).await, "A's session cookie on B");
    assert!(logged_in(&mut on_a).await);

    // Logout on A ends it on B at once, even for a copy of the cookie.
    logout(&mut on_a).await;
    assert!(!logged_in(&mut on_b).await, "logged out on A, refused on B");

    // TOTP enrolled through B; login on A with the password, the code entered on B.
    let mut c = Client::new(p.b());
    c.login("alice", PASSWORD).await;
    let (secret, step, codes) = enrol(&mut c).await;
    let mut on_a = Client::new(p.a());
    assert_eq!(
        on_a.login("alice", PASSWORD).await.location(),
        "/login/code"
    );
    let pending = on_a.jar["kg_pending"].clone();
    let mut on_b = on_a.at(p.b());
    // The enrolment's own step is spent, on every replica.
    let used = on_b.code(&totp_code(&secret, step * 30)).await;
    assert_eq!(used.status, 401, "the enrolment's step again: {used:?}");
    let next = totp_code(&secret, (step + 1) * 30);
    let ok = on_b.code(&next).await;
    assert_eq!(ok.location(), "/keys", "{ok:?}");
    assert_ne!(sid(&on_b.jar["kg_session"]), sid(&pending));
    let mut back_on_a = on_b.at(p.a());
    assert!(logged_in(&mut back_on_a).await, "B's full session on A");
    // The pending session ended with the code, on A too.
    let mut replay = Client::new(p.a());
    replay.jar.insert("kg_pending".into(), pending);
    assert_eq!(replay.get("/login/code").await.location(), "/login");

    // The code accepted on B is refused on A (another login, same code).
    let mut again = Client::new(p.a());
    again.login("alice", PASSWORD).await;
    let p401 = again.code(&next).await;
    assert_eq!(p401.status, 401, "a step accepted on B, replayed on A");

    // A recovery code: accepted once on A, refused on B.
    let mut r1 = Client::new(p.a());
    r1.login("alice", PASSWORD).await;
    assert_eq!(r1.code(&codes[0]).await.location(), "/keys");
    let mut r2 = Client::new(p.b());
    r2.login("alice", PASSWORD).await;
    assert_eq!(r2.code(&codes[0]).await.status, 401, "recovery code reused");
    assert_eq!(r2.code(&codes[1]).await.location(), "/keys");

    // An operator's password reset ends every session on every replica; so does disabling.
    let mut s_a = r1.at(p.a());
    let mut s_b = r2.at(p.b());
    assert!(logged_in(&mut s_a).await && logged_in(&mut s_b).await);
    account(
        &p.envs[1],
        &["reset-password"],
        "alice",
        "another long password",
    );
    assert!(
        !logged_in(&mut s_a).await,
        "password reset: A's session ends"
    );
    assert!(
        !logged_in(&mut s_b).await,
        "password reset: B's session ends"
    );
    p.envs[0]
        .run_with_store(&["accounts", "reset-totp"], &["alice"])
        .ok();
    let mut c = Client::new(p.b());
    assert_eq!(
        c.login("alice", "another long password").await.location(),
        "/keys",
        "TOTP reset: the password alone logs in"
    );
    let mut c_a = c.at(p.a());
    assert!(logged_in(&mut c_a).await);
    p.envs[0]
        .run_with_store(&["accounts", "disable"], &["alice"])
        .ok();
    assert!(!logged_in(&mut c_a).await, "disabled: sessions end");
    assert!(!logged_in(&mut c).await);
    assert_eq!(c.login("alice", "another long password").await.status, 401);

    // The operator changes reach both replicas' audit logs.
    for e in &p.envs {
        eventually("account events in every replica's audit log", || {
            let log = audit(e);
            [
                "account_create",
                "totp_enabled",
                "account_password",
                "account_totp_reset",
                "account_disable",
            ]
            .iter()
            .all(|a| log.contains(&format!("\"action\":\"{a}\"")))
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_passwords_spread_over_replicas_lock_the_account_everywhere() {
    if !utils::redis::available("wrong_passwords_spread_over_replicas_lock_the_account_everywhere")
    {
        return;
    }
    let hook = Origin::start().await;
    let url = format!("http://{}/keyguard", hook.addr);
    let p = Pair::start(|cfg| {
        set(cfg, "admin.lockout_after", 3);
        set(cfg, "admin.lockout_base", "1h");
        set(cfg, "alerts.webhook_url", url.clone());
    })
    .await;
    account(&p.envs[0], &["create"], "alice", PASSWORD);
    let mut unknown = Client::new(p.a());
    let unknown = unknown.login("nobody", PASSWORD).await;
    assert_eq!(unknown.status, 401);
    // Two failures on A, one on B: three in a row, whichever replica counted them.
    for addr in [p.a(), p.b(), p.a()] {
        let mut c = Client::new(addr);
        assert_eq!(c.login("alice", "wrong password!").await.status, 401);
    }
    for addr in [p.b(), p.a()] {
        let mut c = Client::new(addr);
        let locked = c.login("alice", PASSWORD).await;
        assert_eq!(locked.status, 401, "locked: the right password is refused");
        assert!(!c.jar.contains_key("kg_session") && !c.jar.contains_key("kg_pending"));
        let msg = |p: &Page| {
            p.body
                .split("role=\"alert\">")
                .nth(1)
                .and_then(|m| m.split('<').next())
                .map(str::to_owned)
        };
        assert_eq!(msg(&locked), msg(&unknown), "one generic message");
    }
    let list = p.envs[1].run_with_store(&["accounts", "list"], &[]).ok();
    assert!(list.stdout.contains("locked"), "{list:?}");
    for e in &p.envs {
        eventually("the lockout in every replica's audit log", || {
            audit(e).contains("\"action\":\"account_locked\"")
        })
        .await;
    }
    // Alerted once, by the replica whose count locked it.
    let alerts = || hook.bodies_containing("\"account_locked\"");
    eventually("a lockout alert", || !alerts().is_empty()).await;
    std::thread::sleep(Duration::from_millis(300));
    let sent = alerts();
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert!(sent[0].contains("\"account\":\"alice\""), "{sent:?}");
    // An operator's password reset (through either replica's config) lifts it.
    account(
        &p.envs[1],
        &["reset-password"],
        "alice",
        "another long password",
    );
    let mut c = Client::new(p.a());
    assert_eq!(
        c.login("alice", "another long password").await.location(),
        "/keys"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_tokens_from_the_cli_work_on_every_replica_until_revoked() {
    if !utils::redis::available("api_tokens_from_the_cli_work_on_every_replica_until_revoked") {
        return;
    }
    let p = Pair::start(|_| {}).await;
    account(&p.envs[0], &["create"], "alice", PASSWORD);
    let made = p.envs[0]
        .run_with_store(&["tokens", "create"], &["--scopes", "admin:read"])
        .ok();
    let token = made.stdout.trim().to_owned();
    assert!(token.starts_with("kgt_"), "{made:?}");
    let id = token.split('_').nth(1).unwrap().to_owned();
    let mut on_b = Client::new(p.b());
    let mut on_a = Client::new(p.a());
    let (status, body) = on_b.api("GET", "/api/accounts", &token).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body[0]["name"], "alice", "{body}");
    assert_eq!(on_a.api("GET", "/api/accounts", &token).await.0, 200);
    // A wrong secret for a real id, and a token that never existed.
    let forged = format!("kgt_{id}_{}", "0".repeat(64));
    assert_eq!(on_b.api("GET", "/api/accounts", &forged).await.0, 401);
    assert_eq!(
        on_b.api("GET", "/api/accounts", "kgt_000000000000_00")
            .await
            .0,
        401
    );

    // Revoked through A's config: B refuses it at once.
    p.envs[0].run_with_store(&["tokens", "revoke"], &[&id]).ok();
    let (status, body) = on_b.api("GET", "/api/accounts", &token).await;
    assert_eq!(status, 401, "revoked token on B: {body}");
    assert_eq!(on_a.api("GET", "/api/accounts", &token).await.0, 401);
    let again = p.envs[1].run_with_store(&["tokens", "revoke"], &[&id]);
    assert!(!again.status.success(), "revoking twice: {again:?}");
    let list = p.envs[1].run_with_store(&["tokens", "list"], &[]).ok();
    let v: serde_json::Value = serde_json::from_str(&list.stdout).unwrap();
    assert_eq!(v[0]["id"], id.as_str());
    assert_eq!(v[0]["revoked"], true);
    assert!(!list.stdout.contains(token.split('_').nth(2).unwrap()));
    for e in &p.envs {
        eventually("token events in every replica's audit log", || {
            let log = audit(e);
            log.contains("\"action\":\"token_create\"")
                && log.contains("\"action\":\"token_revoke\"")
                && !log.contains(&token)
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sso_token_used_on_one_replica_is_refused_on_the_other() {
    if !utils::redis::available("an_sso_token_used_on_one_replica_is_refused_on_the_other") {
        return;
    }
    let (signer, pem) = ed25519();
    let pem_dir = tempfile::tempdir().unwrap();
    let pem_path = pem_dir.path().join("exchange.pem");
    std::fs::write(&pem_path, pem).unwrap();
    let pem_path = pem_path.to_string_lossy().into_owned();
    let p = Pair::start(|cfg| {
        set(cfg, "admin.sso.public_key_file", pem_path.clone());
        set(cfg, "admin.sso.audience", "keyguard");
        set(cfg, "admin.sso.issuer", "https://exchange.example");
    })
    .await;
    account(&p.envs[0], &["create"], "alice", PASSWORD);
    let now = now_secs();
    let token = sso_token(
        &signer,
        serde_json::json!({"sub": "alice", "aud": "keyguard", "iss": "https://exchange.example",
            "iat": now, "exp": now + 120, "jti": "sso-once"}),
    );
    let mut on_a = Client::new(p.a());
    let first = on_a.get(&format!("/sso?token={token}")).await;
    assert_eq!(first.status, 200, "{first:?}");
    assert!(logged_in(&mut on_a).await);
    let mut on_b = Client::new(p.b());
    assert_eq!(
        on_b.get(&format!("/sso?token={token}")).await.status,
        401,
        "the jti spent on A"
    );
    assert!(!logged_in(&mut on_b).await);
    // The spent id is kept until the token would have expired, not longer.
    let jti_keys: Vec<String> = p
        .keys()
        .into_iter()
        .filter(|k| k.contains(":jti:"))
        .collect();
    assert_eq!(jti_keys.len(), 1, "{jti_keys:?}");
    let ttl = p.pttl(&jti_keys[0]);
    assert!(ttl > 0 && ttl <= 121_000, "jti kept for {ttl} ms");
    // A different jti still works, on B.
    let other = sso_token(
        &signer,
        serde_json::json!({"sub": "alice", "aud": "keyguard", "iss": "https://exchange.example",
            "iat": now, "exp": now + 120, "jti": "sso-twice"}),
    );
    assert_eq!(on_b.get(&format!("/sso?token={other}")).await.status, 200);
    assert!(logged_in(&mut on_b).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_admin_key_in_redis_expires_or_is_in_the_bounded_set() {
    if !utils::redis::available("every_admin_key_in_redis_expires_or_is_in_the_bounded_set") {
        return;
    }
    let p = Pair::start(|cfg| {
        set(cfg, "admin.session_ttl", "10m");
        set(cfg, "admin.session_max", "1h");
    })
    .await;
    account(&p.envs[0], &["create"], "alice", PASSWORD);
    p.envs[1]
        .run_with_store(&["tokens", "create"], &["--scopes", "admin:read"])
        .ok();
    let mut c = Client::new(p.a());
    c.login("alice", PASSWORD).await;
    enrol(&mut c).await;
    let mut pending = Client::new(p.b());
    assert_eq!(
        pending.login("alice", PASSWORD).await.location(),
        "/login/code"
    );
    // A flood of logins with made-up names and wrong passwords writes nothing for them.
    for i in 0..20 {
        let mut c = Client::new(if i % 2 == 0 { p.a() } else { p.b() });
        assert_eq!(
            c.login(&format!("nobody{i}"), "wrong password!")
                .await
                .status,
            401
        );
    }
    let keys = p.keys();
    assert!(
        !keys.iter().any(|k| k.contains("nobody")),
        "unknown names left keys: {keys:?}"
    );
    let mut sessions = 0;
    for k in &keys {
        let ttl = p.pttl(k);
        // Sessions expire with the session: at most its idle lifetime (a pending one: 5 min).
        if k.contains("}:s:") {
            sessions += 1;
            assert!(ttl > 0 && ttl <= 600_000, "{k}: {ttl} ms");
            continue;
        }
        if k.contains(":jti:") {
            assert!(ttl > 0 && ttl <= 300_000, "{k}: {ttl} ms");
            continue;
        }
        // Without a TTL only the documented bounded set: one account's hash and codes,
        // the account and token indexes, each token, the one signing key; and the
        // catalogue's own (generation, stream), which the key side bounds.
        let bounded = k.ends_with(":{a:alice}:acct")
            || k.ends_with(":{a:alice}:rc")
            || k.ends_with(":{cat}:adm:accounts")
            || k.ends_with(":{cat}:adm:tokens")
            || k.ends_with(":{cat}:adm:session_key")
            || k.contains(":{cat}:adm:tok:")
            || k.ends_with(":{cat}:events")
            || k.ends_with(":{cat}:gen");
        assert!(
            bounded,
            "{k} (TTL {ttl} ms) is neither expiring nor in the bounded set"
        );
    }
    // A's full session, and B's pending one (the enrolment's session was A's too).
    assert_eq!(sessions, 2, "{keys:?}");
    let codes = p
        .redis
        .cli(&["SCARD", "kg:{a:alice}:rc"])
        .unwrap_or_default();
    assert_eq!(codes.trim(), "10", "ten recovery codes at most");
    // Ended sessions leave nothing behind.
    logout(&mut c).await;
    let left = p.keys().into_iter().filter(|k| k.contains("}:s:")).count();
    assert_eq!(left, 1, "the logged-out session's row is gone");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_totp_code_sent_to_both_replicas_at_once_logs_in_once() {
    if !utils::redis::available("one_totp_code_sent_to_both_replicas_at_once_logs_in_once") {
        return;
    }
    let p = Pair::start(|_| {}).await;
    account(&p.envs[0], &["create"], "alice", PASSWORD);
    let mut c = Client::new(p.a());
    c.login("alice", PASSWORD).await;
    let (secret, step, _) = enrol(&mut c).await;
    // Six logins waiting for a code, three on each replica, their forms loaded.
    let mut waiting = Vec::new();
    for i in 0..6 {
        let mut c = Client::new(if i % 2 == 0 { p.a() } else { p.b() });
        assert_eq!(c.login("alice", PASSWORD).await.location(), "/login/code");
        let csrf = c.get("/login/code").await.field("csrf");
        waiting.push((c, csrf));
    }
    // The same fresh code from all of them at once: the step is accepted once.
    let code = totp_code(&secret, (step + 1) * 30);
    let tasks: Vec<_> = waiting
        .into_iter()
        .map(|(mut c, csrf)| {
            let code = code.clone();
            tokio::spawn(async move {
                c.post("/login/code", &[("csrf", &csrf), ("code", &code)])
                    .await
            })
        })
        .collect();
    let mut won = 0;
    for t in tasks {
        let page = t.await.unwrap();
        match (page.status, page.location()) {
            (303, "/keys") => won += 1,
            (401, _) => {}
            other => panic!("unexpected answer {other:?}: {page:?}"),
        }
    }
    assert_eq!(won, 1, "one code, one login, across both replicas");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_down_no_session_token_or_login_is_accepted_and_all_come_back_after() {
    if !utils::redis::available(
        "with_redis_down_no_session_token_or_login_is_accepted_and_all_come_back_after",
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let redis = RedisServer::start(dir.path());
    let mut p = Pair::start_on(
        dir,
        redis,
        |r| single_store(&r.url(), "200ms"),
        None,
        |_| {},
    )
    .await;
    account(&p.envs[0], &["create"], "alice", PASSWORD);
    let token = p.envs[0]
        .run_with_store(&["tokens", "create"], &["--scopes", "admin:read"])
        .ok()
        .stdout
        .trim()
        .to_owned();
    let mut on_a = Client::new(p.a());
    assert_eq!(on_a.login("alice", PASSWORD).await.location(), "/keys");
    let mut on_b = on_a.at(p.b());
    assert!(logged_in(&mut on_b).await);

    p.redis.kill();
    // Fail closed, at once: no page for the cookie, no API call for the token, no login.
    let t0 = Instant::now();
    let page = on_b.get("/keys").await;
    assert_eq!(page.status, 500, "a session nobody can check: {page:?}");
    let (status, _) = on_b.api("GET", "/api/accounts", &token).await;
    assert_eq!(status, 500, "a token nobody can check");
    let mut fresh = Client::new(p.a());
    let login = fresh.login("alice", PASSWORD).await;
    assert_eq!(login.status, 401, "no login without the store: {login:?}");
    assert!(!fresh.jar.contains_key("kg_session"));
    // The load balancer is told too: not ready while the shared store does not answer.
    let ready = on_b.get("/readyz").await;
    assert_eq!(ready.status, 503, "{ready:?}");
    assert!(ready.body.contains("\"store\":false"), "{ready:?}");
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "answers took {:?}",
        t0.elapsed()
    );

    // Redis back (its append-only file kept the session): everything works again,
    // without restarting either replica.
    p.redis.restart();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let page = on_b.get("/keys").await;
        if page.status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "no recovery: {page:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(on_a.api("GET", "/api/accounts", &token).await.0, 200);
    let ready = on_b.get("/readyz").await;
    assert!(ready.body.contains("\"store\":true"), "{ready:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_cluster_logins_lockouts_and_tokens_are_shared_too() {
    if !utils::redis::available("on_a_cluster_logins_lockouts_and_tokens_are_shared_too") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let cluster = RedisCluster::start(dir.path());
    let store = cluster_store(&cluster.urls(), "2s");
    let idle = RedisServer::start(dir.path());
    let p = Pair::start_on(
        dir,
        idle,
        move |_| store,
        Some(cluster),
        |cfg| {
            set(cfg, "admin.lockout_after", 3);
            set(cfg, "admin.lockout_base", "1h");
        },
    )
    .await;
    // Accounts' keys and the admin-wide ones live in different slots; every script
    // touches one slot only, or the cluster would refuse it (CROSSSLOT).
    account(&p.envs[0], &["create"], "alice", PASSWORD);
    account(&p.envs[1], &["create"], "bob", PASSWORD);
    let list = p.envs[0].run_with_store(&["accounts", "list"], &[]).ok();
    assert!(
        list.stdout.contains("alice") && list.stdout.contains("bob"),
        "{list:?}"
    );
    let mut on_a = Client::new(p.a());
    assert_eq!(on_a.login("alice", PASSWORD).await.location(), "/keys");
    let (secret, step, _) = enrol(&mut on_a).await;
    let mut c = Client::new(p.b());
    assert_eq!(c.login("alice", PASSWORD).await.location(), "/login/code");
    assert_eq!(
        c.code(&totp_code(&secret, (step + 1) * 30))
            .await
            .location(),
        "/keys"
    );
    let mut c_a = c.at(p.a());
    assert!(logged_in(&mut c_a).await, "B's session on A, on a cluster");
    logout(&mut c_a).await;
    assert!(!logged_in(&mut c).await, "logged out on A, refused on B");

    for addr in [p.a(), p.b(), p.a()] {
        let mut c = Client::new(addr);
        assert_eq!(c.login("bob", "wrong password!").await.status, 401);
    }
    let mut c = Client::new(p.b());
    assert_eq!(c.login("bob", PASSWORD).await.status, 401, "bob is locked");

    let token = p.envs[1]
        .run_with_store(&["tokens", "create"], &["--scopes", "admin:read"])
        .ok()
        .stdout
        .trim()
        .to_owned();
    let id = token.split('_').nth(1).unwrap().to_owned();
    let mut api = Client::new(p.a());
    assert_eq!(api.api("GET", "/api/accounts", &token).await.0, 200);
    p.envs[0].run_with_store(&["tokens", "revoke"], &[&id]).ok();
    assert_eq!(api.api("GET", "/api/accounts", &token).await.0, 401);
    for e in &p.envs {
        eventually("cluster admin events in every replica's audit log", || {
            let log = audit(e);
            [
                "account_create",
                "account_locked",
                "token_create",
                "token_revoke",
                "totp_enabled",
            ]
            .iter()
            .all(|a| log.contains(&format!("\"action\":\"{a}\"")))
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_brings_web_accounts_totp_and_tokens_from_an_embedded_store() {
    if !utils::redis::available(
        "migrate_brings_web_accounts_totp_and_tokens_from_an_embedded_store",
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let redis = RedisServer::start(dir.path());
    // An embedded gateway whose user enrolled TOTP, with the master key the replicas share.
    let mut embedded_store = toml::Table::new();
    embedded_store.insert("kind".into(), "embedded".into());
    let embedded = replica_env(dir.path(), &embedded_store, |_| {});
    account(&embedded, &["create"], "alice", PASSWORD);
    let token = embedded
        .run_with_store(&["tokens", "create"], &["--scopes", "admin:read"])
        .ok()
        .stdout
        .trim()
        .to_owned();
    let origin = Origin::start().await;
    let (secret, step, codes) = {
        let (mut gw, addr) = embedded.start_with_admin(origin.addr).await;
        let mut c = Client::new(addr);
        c.login("alice", PASSWORD).await;
        let enrolled = enrol(&mut c).await;
        // One recovery code spent before the move stays spent after it.
        let mut r = Client::new(addr);
        r.login("alice", PASSWORD).await;
        assert_eq!(r.code(&enrolled.2[0]).await.location(), "/keys");
        gw.terminate(Duration::from_secs(5));
        enrolled
    };
    let data = embedded.data.to_string_lossy().into_owned();
    let run = embedded
        .run(&["migrate", "--from", &data, "--to", &redis.url()])
        .ok();
    assert!(
        run.stdout.contains("\"accounts\":1") && run.stdout.contains("\"tokens\":1"),
        "{}",
        run.stdout
    );
    let again = embedded.run(&["migrate", "--from", &data, "--to", &redis.url()]);
    assert!(
        !again.status.success() && again.stderr.contains("--force"),
        "{again:?}"
    );

    let p = Pair::start_on(dir, redis, |r| single_store(&r.url(), "2s"), None, |_| {}).await;
    let mut c = Client::new(p.a());
    assert_eq!(c.login("alice", PASSWORD).await.location(), "/login/code");
    // The step used at enrolment stays spent; the next one logs in, on the other replica.
    let mut on_b = c.at(p.b());
    assert_eq!(on_b.code(&totp_code(&secret, step * 30)).await.status, 401);
    assert_eq!(
        on_b.code(&totp_code(&secret, (step + 1) * 30))
            .await
            .location(),
        "/keys"
    );
    let mut r = Client::new(p.b());
    r.login("alice", PASSWORD).await;
    assert_eq!(r.code(&codes[0]).await.status, 401, "spent before the move");
    assert_eq!(r.code(&codes[1]).await.location(), "/keys");
    assert_eq!(on_b.api("GET", "/api/accounts", &token).await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_names_cost_a_login_what_wrong_passwords_do() {
    if !utils::redis::available("unknown_names_cost_a_login_what_wrong_passwords_do") {
        return;
    }
    let p = Pair::start(|cfg| set(cfg, "admin.lockout_after", 100)).await;
    account(&p.envs[0], &["create"], "alice", PASSWORD);
    // Forms loaded first: only the password step is timed.
    async fn timed(addr: SocketAddr, name: &str) -> Duration {
        let mut c = Client::new(addr);
        let token = c.get("/login").await.field("token");
        let t0 = Instant::now();
        let page = c
            .post(
                "/login",
                &[
                    ("name", name),
                    ("password", "wrong password!"),
                    ("token", &token),
                ],
            )
            .await;
        let took = t0.elapsed();
        assert_eq!(page.status, 401);
        took
    }
    let median = |mut v: Vec<Duration>| {
        v.sort();
        v[v.len() / 2]
    };
    let mut known = Vec::new();
    let mut unknown = Vec::new();
    for i in 0..15 {
        let addr = if i % 2 == 0 { p.a() } else { p.b() };
        known.push(timed(addr, "alice").await);
        unknown.push(timed(addr, &format!("nobody{i}")).await);
    }
    let (k, u) = (median(known), median(unknown));
    println!("login step: known name {k:?}, unknown name {u:?} (median of 15)");
    // Both are one Argon2 verification; skipping it for unknown names would make them
    // many times faster.
    assert!(u * 3 > k && k * 3 > u, "known {k:?} vs unknown {u:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_stops_on_sigterm_with_logins_in_flight() {
    if !utils::redis::available("a_replica_stops_on_sigterm_with_logins_in_flight") {
        return;
    }
    let mut p = Pair::start(|_| {}).await;
    account(&p.envs[0], &["create"], "alice", PASSWORD);
    let a = p.a();
    // Logins keep the listener's blocking threads busy with Argon2 and Redis calls (the
    // failing ones with a name that does not exist, so alice is never locked).
    let busy: Vec<_> = (0..6)
        .map(|i| {
            tokio::spawn(async move {
                let name = if i % 2 == 0 { "alice" } else { "nobody" };
                for _ in 0..20 {
                    let mut c = Client::new(a);
                    let login = tokio::spawn(async move { c.login(name, PASSWORD).await.status });
                    // The listener going away mid-request ends the task's loop.
                    if !matches!(
                        tokio::time::timeout(Duration::from_secs(2), login).await,
                        Ok(Ok(_))
                    ) {
                        return;
                    }
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let exited = p.gws[0].terminate(Duration::from_secs(10));
    assert!(
        exited.is_some(),
        "replica A still running 10 s after SIGTERM"
    );
    for b in busy {
        b.abort();
    }
    // B is untouched.
    let mut c = Client::new(p.b());
    assert_eq!(c.login("alice", PASSWORD).await.location(), "/keys");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn wrong_passwords_sent_to_both_replicas_at_once_are_each_counted() {
    if !utils::redis::available("wrong_passwords_sent_to_both_replicas_at_once_are_each_counted") {
        return;
    }
    let p = Pair::start(|cfg| {
        set(cfg, "admin.lockout_after", 6);
        set(cfg, "admin.lockout_base", "1h");
    })
    .await;
    account(&p.envs[0], &["create"], "alice", PASSWORD);
    // Six failures at once, three per replica: a count that lost one would stay at five.
    let mut forms = Vec::new();
    for i in 0..6 {
        let mut c = Client::new(if i % 2 == 0 { p.a() } else { p.b() });
        let token = c.get("/login").await.field("token");
        forms.push((c, token));
    }
    let tasks: Vec<_> = forms
        .into_iter()
        .map(|(mut c, token)| {
            tokio::spawn(async move {
                c.post(
                    "/login",
                    &[
                        ("name", "alice"),
                        ("password", "wrong password!"),
                        ("token", &token),
                    ],
                )
                .await
                .status
            })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap(), 401);
    }
    let mut c = Client::new(p.b());
    assert_eq!(
        c.login("alice", PASSWORD).await.status,
        401,
        "six failures counted: locked"
    );
    let count = p
        .redis
        .cli(&["HGET", "kg:{a:alice}:acct", "failed"])
        .unwrap_or_default();
    assert_eq!(count.trim(), "6", "every failure counted once");
}

/// The key pages on Redis, through the real login: what a trader does on replica A's web
/// UI is enforced by replica B's gateway at once, and B's pages show A's changes and the
/// requests B served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trader_on_one_replica_changes_what_every_replica_enforces_and_shows() {
    if !utils::redis::available(
        "a_trader_on_one_replica_changes_what_every_replica_enforces_and_shows",
    ) {
        return;
    }
    let p = Pair::start(|_| {}).await;
    account(&p.envs[0], &["create"], "alice", PASSWORD);
    let key = p.envs[0].create_key(&KeySpec {
        account: "alice".into(),
        scopes: "read".into(),
        allow_ips: vec![],
        withdraw_addresses: vec![],
    });
    let mut on_a = Client::new(p.a());
    assert_eq!(on_a.login("alice", PASSWORD).await.location(), "/keys");
    let (secret, step, _) = enrol(&mut on_a).await;
    let mut on_b = on_a.at(p.b());
    // B's page knows two-factor login is on (it is in Redis, not in B's files).
    let list = on_b.get("/keys").await;
    assert_eq!(list.status, 200, "{list:?}");
    assert!(list.body.contains(&key.key_id), "{}", list.body);
    assert!(
        !list.body.contains("Two-factor login is off"),
        "B shows two-factor as off: {}",
        list.body
    );

    // B's gateway serves the key from anywhere until the trader narrows it on A.
    let elsewhere = std::net::Ipv4Addr::new(127, 0, 9, 3);
    let gw_b = &p.gws[1];
    assert_eq!(
        gw_b.request_from(elsewhere, &zaif::read(&key)).await.status,
        200
    );
    let page = on_a.get(&format!("/keys/{}", key.key_id)).await;
    assert_eq!(page.status, 200, "{page:?}");
    let csrf = page.field("csrf");
    let added = on_a
        .post(
            &format!("/keys/{}/allow/add", key.key_id),
            &[
                ("csrf", &csrf),
                ("net", &format!("{ALLOWED_IP}/32")),
                ("password", PASSWORD),
                ("code", &totp_code(&secret, (step + 1) * 30)),
            ],
        )
        .await;
    assert_eq!(added.status, 303, "{added:?}");
    let t0 = Instant::now();
    assert!(
        utils::eventually(Duration::from_secs(2), || async {
            gw_b.request_from(elsewhere, &zaif::read(&key)).await.status == 403
        })
        .await,
        "B still serves the key outside its new allowlist"
    );
    let took = t0.elapsed();
    println!("narrowed on A's web UI, refused by B after {took:?}");
    assert!(took < Duration::from_millis(500), "{took:?}");
    let denied = gw_b.request_from(elsewhere, &zaif::read(&key)).await;
    denied.assert_error(403, "ip_not_allowed");
    assert_eq!(
        gw_b.request_from(ALLOWED_IP, &zaif::read(&key))
            .await
            .status,
        200
    );

    // B's key page shows the entry made on A; A's activity page shows what B refused.
    let on_b_page = on_b.get(&format!("/keys/{}", key.key_id)).await;
    assert!(
        on_b_page.body.contains(&format!("{ALLOWED_IP}/32")),
        "{}",
        on_b_page.body
    );
    assert!(
        utils::eventually(Duration::from_secs(3), || {
            let mut c = on_a.at(p.a());
            let id = key.key_id.clone();
            async move {
                let act = c.get(&format!("/keys/{id}/activity")).await;
                act.status == 200
                    && act.body.contains("ip_not_allowed")
                    && act.body.contains(&elsewhere.to_string())
            }
        })
        .await,
        "B's refusal is not on A's activity page"
    );

    // A widening asked for elsewhere (the CLI) waits; the trader cancels it on B's page.
    let asked = p.envs[0].run_with_store(
        &["keys", "edit"],
        &[&key.key_id, "--add-ip", "10.20.0.0/24", "--json"],
    );
    assert!(asked.status.success(), "{}", asked.stderr);
    let page = on_b.get(&format!("/keys/{}", key.key_id)).await;
    assert!(page.body.contains("10.20.0.0/24"), "{}", page.body);
    let change = page
        .body
        .split("name=\"change\" value=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .expect("a pending change with a cancel form")
        .to_owned();
    let cancelled = on_b
        .post(
            &format!("/keys/{}/pending/cancel", key.key_id),
            &[("csrf", &page.field("csrf")), ("change", &change)],
        )
        .await;
    assert_eq!(cancelled.status, 303, "{cancelled:?}");
    let pending = p.envs[1]
        .run_with_store(&["keys", "pending"], &["--json"])
        .ok();
    assert!(
        !pending.stdout.contains("10.20.0.0/24"),
        "{}",
        pending.stdout
    );

    // Suspended on B's page: A's gateway refuses the key at once.
    let page = on_b.get(&format!("/keys/{}", key.key_id)).await;
    let suspended = on_b
        .post(
            &format!("/keys/{}/status", key.key_id),
            &[("csrf", &page.field("csrf")), ("action", "suspend")],
        )
        .await;
    assert_eq!(suspended.status, 303, "{suspended:?}");
    // B's answer waits for B's own snapshot; A hears of it through pub/sub (the contract
    // is 100 ms; the bound has slack for a loaded CI machine).
    let t0 = Instant::now();
    let gw_a = &p.gws[0];
    assert!(
        utils::eventually(Duration::from_secs(2), || async {
            gw_a.request_from(ALLOWED_IP, &zaif::read(&key))
                .await
                .status
                == 403
        })
        .await,
        "A still serves the key suspended on B"
    );
    println!(
        "suspended on B's web UI, refused by A after {:?}",
        t0.elapsed()
    );
    assert!(
        t0.elapsed() < Duration::from_millis(500),
        "{:?}",
        t0.elapsed()
    );
}
