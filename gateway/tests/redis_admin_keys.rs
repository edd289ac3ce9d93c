//! Key edits on Redis (issue 12, item 1) against a real `redis-server` and three
//! `keyguard serve` replicas sharing it, driven through the CLI as an operator would:
//! narrowing reaches every replica at once, widening waits in Redis, is listed and
//! cancelled from any process, and is applied by exactly one replica when due —
//! re-checked against the key as it is then.

mod utils;

use std::time::{Duration, Instant};

use serde_json::Value;
use utils::redis::RedisServer;
use utils::*;

/// Three replicas in front of one origin, sharing `redis` and one master key.
struct Replicas {
    gws: Vec<Gateway>,
    envs: Vec<Env>,
    /// Admin listeners, when started with them.
    admins: Vec<std::net::SocketAddr>,
    _origin: Origin,
}

impl Replicas {
    async fn start(shared: &std::path::Path, redis: &RedisServer, widen: &str) -> Replicas {
        Replicas::start_with(shared, redis, widen, false).await
    }

    async fn start_with(
        shared: &std::path::Path,
        redis: &RedisServer,
        widen: &str,
        admin: bool,
    ) -> Replicas {
        let master = shared.join("master.key");
        let envs: Vec<Env> = (0..3)
            .map(|_| {
                Env::new(Dialect::Zaif, |cfg| {
                    let mut store = toml::Table::new();
                    store.insert("kind".into(), "redis".into());
                    store.insert("url".into(), redis.url().into());
                    // Generous: a missed deadline would fail closed, which is not tested here.
                    store.insert("timeout".into(), "2s".into());
                    set(cfg, "store", toml::Value::Table(store));
                    set(
                        cfg,
                        "secrets.master_key_file",
                        master.to_string_lossy().into_owned(),
                    );
                    set(cfg, "admin.widen_cooldown", widen);
                    set(cfg, "withdraw.address_cooldown_secs", 2);
                    let audit = shared.join(format!("audit-{}.log", free_port()));
                    set(cfg, "audit.path", audit.to_string_lossy().into_owned());
                })
            })
            .collect();
        let origin = Origin::start().await;
        let mut gws = Vec::new();
        let mut admins = Vec::new();
        for e in &envs {
            if admin {
                let (gw, addr) = e.start_with_admin(origin.addr).await;
                gws.push(gw);
                admins.push(addr);
            } else {
                gws.push(e.start(origin.addr).await);
            }
        }
        Replicas {
            gws,
            envs,
            admins,
            _origin: origin,
        }
    }

    /// Waits until every replica answers a read with `key` from `src` with `status`;
    /// the time until the last one did.
    async fn all_answer(&self, key: &TestKey, src: std::net::Ipv4Addr, status: u16) -> Duration {
        let started = Instant::now();
        let mut tasks = Vec::new();
        for gw in &self.gws {
            let (addr, key) = (gw.addr, key.clone());
            tasks.push(tokio::spawn(async move {
                let t0 = Instant::now();
                loop {
                    let req = zaif::read(&key);
                    let got = send_raw(addr, src, &req.to_bytes(&addr.to_string()))
                        .await
                        .map(|r| r.status)
                        .unwrap_or(0);
                    if got == status {
                        return Some(t0.elapsed());
                    }
                    if t0.elapsed() > Duration::from_secs(10) {
                        return None;
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }));
        }
        for (i, t) in tasks.into_iter().enumerate() {
            assert!(
                t.await.unwrap().is_some(),
                "replica {i} never answered {status} from {src}\n{}",
                self.gws[i].log()
            );
        }
        started.elapsed()
    }
}

fn key_spec(scopes: &str, allow: &[&str]) -> KeySpec {
    KeySpec {
        account: "acct-edit".into(),
        scopes: scopes.into(),
        allow_ips: allow.iter().map(|s| s.to_string()).collect(),
        withdraw_addresses: vec![],
    }
}

/// `keys edit KEY ARGS --json`: the outcome of each change.
#[track_caller]
fn edit(env: &Env, key: &TestKey, args: &[&str]) -> Vec<Value> {
    let mut rest = vec![key.key_id.as_str(), "--json"];
    rest.extend_from_slice(args);
    let run = env.run_with_store(&["keys", "edit"], &rest).ok();
    let v: Value = serde_json::from_str(run.stdout.trim()).expect("keys edit --json");
    v.as_array().expect("an array").clone()
}

/// `keys pending --json`.
#[track_caller]
fn pending(env: &Env) -> Vec<Value> {
    let run = env.run_with_store(&["keys", "pending"], &["--json"]).ok();
    let v: Value = serde_json::from_str(run.stdout.trim()).expect("keys pending --json");
    v.as_array().expect("an array").clone()
}

/// The admin events recorded in Redis: (action, target, reason).
fn admin_events(redis: &RedisServer) -> Vec<(String, String, String)> {
    let raw = redis
        .cli(&["XRANGE", "kg:{cat}:events", "-", "+"])
        .expect("XRANGE");
    // redis-cli prints an entry as its id and then field and value on alternate lines;
    // every event has the same five fields (ts, actor, action, target, reason).
    let lines: Vec<&str> = raw.lines().collect();
    lines
        .chunks(11)
        .filter(|c| c.len() == 11)
        .map(|c| {
            let get = |k: &str| {
                c[1..]
                    .chunks(2)
                    .find(|p| p[0] == k)
                    .map(|p| p[1].to_owned())
                    .unwrap_or_default()
            };
            (get("action"), get("target"), get("reason"))
        })
        .collect()
}

fn events_of(redis: &RedisServer, action: &str, prefix: &str) -> usize {
    admin_events(redis)
        .iter()
        .filter(|(a, _, r)| a == action && r.starts_with(prefix))
        .count()
}

/// Every Redis key matching `pattern`.
fn scan(redis: &RedisServer, pattern: &str) -> Vec<String> {
    redis
        .cli(&["--scan", "--pattern", pattern])
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .filter(|l| !l.is_empty())
        .collect()
}

fn cli_int(redis: &RedisServer, args: &[&str]) -> i64 {
    let out = redis.cli(args).expect("redis-cli");
    out.trim()
        .parse()
        .unwrap_or_else(|_| panic!("{args:?}: {out:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn narrowing_edit_denies_the_key_on_every_replica_at_once() {
    if !utils::redis::available("narrowing_edit_denies_the_key_on_every_replica_at_once") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let redis = RedisServer::start(dir.path());
    let r = Replicas::start(dir.path(), &redis, "1h").await;
    let other = format!("{OTHER_IP}/32");
    let key = r.envs[0].create_key(&key_spec("read", &[&format!("{ALLOWED_IP}/32"), &other]));
    r.all_answer(&key, ALLOWED_IP, 200).await;

    let started = Instant::now();
    let out = edit(
        &r.envs[1],
        &key,
        &["--remove-ip", &format!("{ALLOWED_IP}/32")],
    );
    let cli_done = started.elapsed();
    assert_eq!(out[0]["outcome"]["result"], "applied", "{out:?}");
    let denied_after = r.all_answer(&key, ALLOWED_IP, 403).await;
    println!("narrowing: CLI took {cli_done:?}; denied on all 3 replicas {denied_after:?} after it returned");
    assert!(
        denied_after <= Duration::from_millis(100),
        "a narrowing edit took {denied_after:?} to reach every replica"
    );
    // The rest of the allowlist still works everywhere.
    r.all_answer(&key, OTHER_IP, 200).await;
    assert_eq!(
        events_of(&redis, "narrow", "remove network 127.0.0.2/32"),
        1
    );
    assert!(pending(&r.envs[2]).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn widening_waits_is_cancellable_from_anywhere_and_applies_once_across_replicas() {
    if !utils::redis::available("widening_waits_is_cancellable_from_anywhere_and_applies_once") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let redis = RedisServer::start(dir.path());
    let r = Replicas::start(dir.path(), &redis, "4s").await;
    let key = r.envs[0].create_key(&key_spec("read", &[&format!("{ALLOWED_IP}/32")]));
    r.all_answer(&key, ALLOWED_IP, 200).await;

    let other = format!("{OTHER_IP}/32");
    let asked = Instant::now();
    let out = edit(
        &r.envs[0],
        &key,
        &["--add-ip", &other, "--add-ip", "127.0.0.4/32"],
    );
    assert_eq!(out[0]["outcome"]["result"], "pending", "{out:?}");
    assert_eq!(out[1]["outcome"]["result"], "pending", "{out:?}");
    let id = out[0]["outcome"]["id"].as_i64().unwrap();
    let doomed = out[1]["outcome"]["id"].as_i64().unwrap();
    assert_ne!(id, doomed);
    // Asking again neither duplicates nor restarts the wait.
    let again = edit(&r.envs[2], &key, &["--add-ip", &other]);
    assert_eq!(again[0]["outcome"]["id"].as_i64(), Some(id));
    assert_eq!(
        again[0]["outcome"]["effective_at"],
        out[0]["outcome"]["effective_at"]
    );

    // Listed from another process, and not in force yet anywhere.
    let listed = pending(&r.envs[1]);
    let ids: Vec<i64> = listed.iter().filter_map(|p| p["id"].as_i64()).collect();
    assert_eq!(ids, vec![id, doomed], "{listed:?}");
    assert_eq!(listed[0]["key_id"], key.key_id.as_str());
    for gw in &r.gws {
        let resp = gw.request_from(OTHER_IP, &zaif::read(&key)).await;
        assert_eq!(
            resp.status,
            403,
            "pending change already in force: {}",
            resp.text()
        );
    }

    // Cancelled from a third process; gone for everyone, and cannot be cancelled twice.
    r.envs[2]
        .run_with_store(
            &["keys", "cancel"],
            &[&doomed.to_string(), "--reason", "not needed"],
        )
        .ok();
    let twice = r.envs[1].run_with_store(&["keys", "cancel"], &[&doomed.to_string()]);
    assert!(!twice.status.success(), "cancelled twice: {twice:?}");
    let ids: Vec<i64> = pending(&r.envs[0])
        .iter()
        .filter_map(|p| p["id"].as_i64())
        .collect();
    assert_eq!(ids, vec![id]);
    assert_eq!(
        events_of(&redis, "widen_cancelled", &format!("#{doomed} ")),
        1
    );

    // Due after 4 s: every replica's refresher races for it; exactly one applies it.
    r.all_answer(&key, OTHER_IP, 200).await;
    let took = asked.elapsed();
    println!(
        "widening: in force on all 3 replicas {took:?} after it was asked for (cool-down 4 s)"
    );
    assert!(
        took >= Duration::from_secs(4),
        "applied before its cool-down: {took:?}"
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        events_of(&redis, "widen_applied", &format!("#{id} ")),
        1,
        "{:?}",
        admin_events(&redis)
    );
    assert_eq!(events_of(&redis, "widen_requested", &format!("#{id} ")), 1);
    // The cancelled one never applied.
    for gw in &r.gws {
        let resp = gw
            .request_from(std::net::Ipv4Addr::new(127, 0, 0, 4), &zaif::read(&key))
            .await;
        assert_eq!(
            resp.status,
            403,
            "a cancelled change applied: {}",
            resp.text()
        );
    }
    let shown = r.envs[1]
        .run_with_store(&["keys", "show"], &[&key.key_id])
        .ok();
    let shown: Value = serde_json::from_str(&shown.stdout).unwrap();
    assert_eq!(
        shown["allow_ips"],
        serde_json::json!([format!("{ALLOWED_IP}/32"), other])
    );
    assert!(pending(&r.envs[2]).is_empty());
    // Decided changes leave nothing behind in Redis.
    assert_eq!(cli_int(&redis, &["HLEN", "kg:{cat}:pending"]), 0);
    assert_eq!(cli_int(&redis, &["ZCARD", "kg:{cat}:pending:due"]), 0);
    assert!(scan(&redis, "kg:{cat}:pending:k:*").is_empty());
    // Each replica copied the one event into its own audit log, once.
    for (i, gw) in r.gws.iter().enumerate() {
        let path = audit_path(&r.envs[i]);
        let prefix = format!("#{id} ");
        assert!(
            eventually(Duration::from_secs(3), || async {
                let audit = std::fs::read_to_string(&path).unwrap_or_default();
                audit
                    .lines()
                    .filter(|l| l.contains("\"widen_applied\"") && l.contains(&prefix))
                    .count()
                    == 1
            })
            .await,
            "replica {i}'s audit log does not hold the application exactly once: {}\n{}",
            std::fs::read_to_string(&path).unwrap_or_default(),
            gw.log()
        );
    }
}

/// The audit log `Replicas::start` gave `env`.
fn audit_path(env: &Env) -> std::path::PathBuf {
    let cfg: toml::Table = std::fs::read_to_string(&env.config)
        .unwrap()
        .parse()
        .unwrap();
    cfg["audit"]["path"].as_str().unwrap().into()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_pending_change_made_invalid_meanwhile_is_rejected() {
    if !utils::redis::available("a_pending_change_made_invalid_meanwhile_is_rejected") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let redis = RedisServer::start(dir.path());
    let r = Replicas::start(dir.path(), &redis, "1h").await;
    let key = r.envs[0].create_key(&key_spec("read,trade", &[&format!("{ALLOWED_IP}/32")]));
    // A new address needs the withdraw scope, granted or pending: the grant waits 1 h,
    // the address 2 s.
    let out = edit(
        &r.envs[0],
        &key,
        &[
            "--add-scope",
            "withdraw",
            "--add-address",
            "btc:bc1qkeyguardtest",
        ],
    );
    let grant = out[0]["outcome"]["id"].as_i64().expect("grant pending");
    let address = out[1]["outcome"]["id"].as_i64().expect("address pending");
    // The grant is withdrawn before the address comes due: the address must not apply.
    r.envs[1]
        .run_with_store(&["keys", "cancel"], &[&grant.to_string()])
        .ok();
    let prefix = format!("#{address} ");
    assert!(
        eventually(Duration::from_secs(8), || async {
            events_of(&redis, "widen_rejected", &prefix) == 1
        })
        .await,
        "the address change was not rejected: {:?}",
        admin_events(&redis)
    );
    let (_, target, reason) = admin_events(&redis)
        .into_iter()
        .find(|(a, _, r)| a == "widen_rejected" && r.starts_with(&prefix))
        .unwrap();
    assert_eq!(target, key.key_id);
    assert!(reason.contains("no withdraw scope"), "{reason}");
    assert_eq!(events_of(&redis, "widen_applied", &prefix), 0);
    let shown = r.envs[2]
        .run_with_store(&["keys", "show"], &[&key.key_id])
        .ok();
    let shown: Value = serde_json::from_str(&shown.stdout).unwrap();
    assert_eq!(shown["withdraw_addresses"], serde_json::json!([]));
    assert_eq!(shown["scopes"], serde_json::json!(["read", "trade"]));
    assert!(pending(&r.envs[0]).is_empty());

    // A revoked key takes no edits at all, narrowing or widening.
    r.envs[0].set_key_status("revoke", &key);
    let refused =
        r.envs[1].run_with_store(&["keys", "edit"], &[&key.key_id, "--remove-scope", "trade"]);
    assert!(!refused.status.success());
    assert!(refused.stderr.contains("revoked"), "{}", refused.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pending_changes_are_capped_per_key_and_kept_in_the_catalogue_slot() {
    if !utils::redis::available("pending_changes_are_capped_per_key") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let redis = RedisServer::start(dir.path());
    // No gateway: the CLI alone queues, lists and cancels (nothing comes due in 1 h).
    let env = Env::new(Dialect::Zaif, |cfg| {
        let mut store = toml::Table::new();
        store.insert("kind".into(), "redis".into());
        store.insert("url".into(), redis.url().into());
        set(cfg, "store", toml::Value::Table(store));
        set(cfg, "admin.widen_cooldown", "1h");
    });
    let key = env.create_key(&key_spec("read,withdraw", &[&format!("{ALLOWED_IP}/32")]));
    let nets: Vec<String> = (0..31).map(|i| format!("10.9.{i}.0/24")).collect();
    let mut args = vec!["--add-address", "btc:bc1qcapped"];
    for n in &nets {
        args.push("--add-ip");
        args.push(n.as_str());
    }
    let out = edit(&env, &key, &args);
    assert!(
        out.iter().all(|o| o["outcome"]["result"] == "pending"),
        "{out:?}"
    );
    let address = out
        .iter()
        .find(|o| o["change"] == "add_address")
        .and_then(|o| o["outcome"]["id"].as_i64())
        .unwrap();
    let over = env.run_with_store(
        &["keys", "edit"],
        &[&key.key_id, "--add-ip", "10.10.0.0/24"],
    );
    assert!(!over.status.success(), "a 33rd pending change was taken");
    assert!(
        over.stderr.contains("32 pending changes"),
        "{}",
        over.stderr
    );
    assert_eq!(pending(&env).len(), 32);

    // Everything pending lives in the catalogue's slot, and only there.
    let mut keys = scan(&redis, "*pending*");
    keys.sort();
    let per_key = format!("kg:{{cat}}:pending:k:{}", key.key_id);
    let mut expected = vec![
        "kg:{cat}:pending".to_owned(),
        "kg:{cat}:pending:due".to_owned(),
        per_key.clone(),
        "kg:{cat}:pending:seq".to_owned(),
    ];
    expected.sort();
    assert_eq!(keys, expected);
    assert_eq!(cli_int(&redis, &["HLEN", "kg:{cat}:pending"]), 32);
    assert_eq!(cli_int(&redis, &["ZCARD", &per_key]), 32);
    assert_eq!(cli_int(&redis, &["ZCARD", "kg:{cat}:pending:due"]), 32);

    // Removing the pending address is narrowing: it withdraws the request at once.
    let removed = edit(&env, &key, &["--remove-address", "btc:bc1qcapped"]);
    assert_eq!(removed[0]["outcome"]["result"], "applied", "{removed:?}");
    assert_eq!(pending(&env).len(), 31);
    assert_eq!(
        events_of(
            &redis,
            "widen_cancelled",
            &format!("#{address} allow BTC withdrawals to bc1qcapped: contradicted")
        ),
        1,
        "{:?}",
        admin_events(&redis)
    );
    for p in pending(&env) {
        let id = p["id"].as_i64().unwrap().to_string();
        env.run_with_store(&["keys", "cancel"], &[&id]).ok();
    }
    assert_eq!(cli_int(&redis, &["HLEN", "kg:{cat}:pending"]), 0);
    assert_eq!(cli_int(&redis, &["EXISTS", &per_key]), 0);
    assert_eq!(cli_int(&redis, &["ZCARD", "kg:{cat}:pending:due"]), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn activity_served_by_one_replica_is_read_from_redis_by_any_process() {
    if !utils::redis::available("activity_served_by_one_replica_is_read_from_redis") {
        return;
    }
    use keyguard::admin::activity::{Filter, Retention};
    let dir = tempfile::tempdir().unwrap();
    let redis = RedisServer::start(dir.path());
    let r = Replicas::start(dir.path(), &redis, "1h").await;
    let key = r.envs[0].create_key(&key_spec("read", &[&format!("{ALLOWED_IP}/32")]));
    r.all_answer(&key, ALLOWED_IP, 200).await;
    // The rows of the requests above are stamped when their audit event is recorded,
    // which may be just after the answer: let them pass before the cut.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let since = keyguard::store::now_ms();
    // Replica B serves three reads, replica C refuses one from a network not allowed.
    for _ in 0..3 {
        let resp = r.gws[1].request_from(ALLOWED_IP, &zaif::read(&key)).await;
        assert_eq!(resp.status, 200, "{}", resp.text());
    }
    let refused = r.gws[2].request_from(OTHER_IP, &zaif::read(&key)).await;
    assert_eq!(refused.status, 403, "{}", refused.text());

    // Read as replica A's pages do: through the store, from another process.
    let cfg = keyguard_config::Config::load(&r.envs[0].config).unwrap();
    let keyguard_config::StoreConfig::Redis(rc) = &cfg.store else {
        panic!("not on redis")
    };
    let store = keyguard::store::redis::RedisStore::new(rc).unwrap();
    let filter = Filter {
        key_id: Some(&key.key_id),
        account: Some(&key.account),
        ..Filter::default()
    };
    // The writer batches off the request path: the rows arrive within a few pauses.
    let deadline = Instant::now() + Duration::from_secs(3);
    let rows = loop {
        let rows = store
            .activity_query(&key.account, &filter, 100)
            .await
            .unwrap();
        if rows.iter().filter(|r| r.ts >= since).count() >= 4 || Instant::now() > deadline {
            break rows;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let arrived = rows.iter().filter(|r| r.ts >= since).count() >= 4;
    assert!(arrived, "rows never reached redis: {rows:?}");
    let fresh: Vec<_> = rows.iter().filter(|r| r.ts >= since).collect();
    assert_eq!(
        fresh.iter().filter(|r| r.decision == "allow").count(),
        3,
        "{fresh:?}"
    );
    let denied = fresh
        .iter()
        .find(|r| r.decision == "deny")
        .expect("the refusal");
    assert_eq!(denied.client_ip, OTHER_IP.to_string());
    assert_eq!(denied.code.as_deref(), Some("ip_not_allowed"));
    assert_eq!(denied.status, 403);
    assert!(
        rows.windows(2).all(|w| w[0].id > w[1].id),
        "rows are not newest first"
    );
    // Pagination: the rows before the newest one are the rest.
    let older = store
        .activity_query(
            &key.account,
            &Filter {
                before: Some(rows[0].id),
                ..filter.clone()
            },
            100,
        )
        .await
        .unwrap();
    assert_eq!(older, rows[1..].to_vec());
    let only_denied = store
        .activity_query(
            &key.account,
            &Filter {
                decision: Some("deny"),
                ..filter.clone()
            },
            100,
        )
        .await
        .unwrap();
    assert!(only_denied.iter().all(|r| r.decision == "deny") && !only_denied.is_empty());

    let foreign = store
        .activity_foreign_attempts(Some(&key.key_id), &key.account, since)
        .await
        .unwrap();
    assert_eq!(foreign.len(), 1, "{foreign:?}");
    assert_eq!(foreign[0].0, key.key_id);
    assert_eq!(foreign[0].1, OTHER_IP.to_string());
    assert_eq!(foreign[0].2, 1);
    let used = store
        .activity_allowed_ips(&key.account, &key.key_id, since)
        .await
        .unwrap();
    assert_eq!(used, vec![ALLOWED_IP.to_string()]);

    // The stream expires with the retention and is trimmed to its row bound.
    let stream = format!("kg:{{a:{}}}:activity", key.account);
    let ttl = cli_int(&redis, &["PTTL", &stream]);
    assert!(
        ttl > 0 && ttl <= cfg.admin.activity_retention_ms as i64,
        "activity stream TTL {ttl} ms"
    );
    let retention = Retention {
        max_age_ms: cfg.admin.activity_retention_ms,
        max_rows: 1000,
    };
    let filler: Vec<_> = (0..3000)
        .map(|i| keyguard::admin::activity::Row {
            request_id: format!("fill-{i}"),
            ..rows[0].clone()
        })
        .collect();
    for chunk in filler.chunks(500) {
        store
            .append_activity(chunk, retention, keyguard::store::now_ms())
            .await
            .unwrap();
    }
    let len = cli_int(&redis, &["XLEN", &stream]);
    // `MAXLEN ~` trims whole stream nodes (100 entries by default): close to the bound.
    assert!(
        (1000..=1100).contains(&len),
        "stream holds {len} rows, bound 1000"
    );
    for k in scan(&redis, "kg:*activity*") {
        assert!(cli_int(&redis, &["PTTL", &k]) > 0, "{k} has no TTL");
    }
}

/// One admin API call (HTTP/1.1, `Connection: close`): status and JSON body.
async fn api(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    token: &str,
    body: Option<Value>,
) -> (u16, Value) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .expect("admin listener");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(IO_TIMEOUT, s.read_to_end(&mut raw))
        .await
        .expect("admin answer in time")
        .unwrap();
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").expect("a response");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status");
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

/// `tokens create`: the admin API's bearer tokens are kept per replica (its data dir).
fn token(env: &Env, scopes: &str) -> String {
    env.run_with_store(&["tokens", "create"], &["--scopes", scopes])
        .ok()
        .stdout
        .trim()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_admin_api_of_any_replica_edits_and_reads_the_shared_catalogue() {
    if !utils::redis::available("the_admin_api_of_any_replica_edits_and_reads_the_shared_catalogue")
    {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let redis = RedisServer::start(dir.path());
    let r = Replicas::start_with(dir.path(), &redis, "1h", true).await;
    let tokens: Vec<String> = r.envs.iter().map(|e| token(e, "admin:write")).collect();
    let key = r.envs[0].create_key(&key_spec("read", &[&format!("{ALLOWED_IP}/32")]));
    r.all_answer(&key, ALLOWED_IP, 200).await;

    // Widening through replica A's API waits; replica B's API lists it and cancels it.
    let changes = format!("/api/keys/{}/changes", key.key_id);
    let add = serde_json::json!({"change": "add_ip", "value": format!("{OTHER_IP}/32")});
    let (status, v) = api(r.admins[0], "POST", &changes, &tokens[0], Some(add)).await;
    assert_eq!(
        (status, v["result"].as_str()),
        (200, Some("pending")),
        "{v}"
    );
    let id = v["id"].as_i64().unwrap();
    let (status, listed) = api(r.admins[1], "GET", "/api/pending", &tokens[1], None).await;
    assert_eq!(status, 200, "{listed}");
    assert_eq!(listed[0]["id"].as_i64(), Some(id), "{listed}");
    let (status, v) = api(
        r.admins[1],
        "DELETE",
        &format!("/api/pending/{id}"),
        &tokens[1],
        None,
    )
    .await;
    assert_eq!(status, 200, "{v}");
    let (_, listed) = api(r.admins[2], "GET", "/api/pending", &tokens[2], None).await;
    assert_eq!(listed, serde_json::json!([]));
    let (status, v) = api(
        r.admins[0],
        "DELETE",
        &format!("/api/pending/{id}"),
        &tokens[0],
        None,
    )
    .await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (404, Some("change_not_found")),
        "{v}"
    );

    // Requests served by replica C show in replica A's activity (rows of the earlier
    // requests are stamped by then).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let since = keyguard::store::now_ms();
    for _ in 0..2 {
        assert_eq!(
            r.gws[2]
                .request_from(ALLOWED_IP, &zaif::read(&key))
                .await
                .status,
            200
        );
    }
    let path = format!("/api/activity?key_id={}", key.key_id);
    let deadline = Instant::now() + Duration::from_secs(3);
    let fresh = loop {
        let (status, rows) = api(r.admins[0], "GET", &path, &tokens[0], None).await;
        assert_eq!(status, 200, "{rows}");
        let fresh = rows
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["ts"].as_u64().unwrap_or(0) >= since)
            .count();
        if fresh >= 2 || Instant::now() > deadline {
            break fresh;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(
        fresh, 2,
        "replica C's requests are not in replica A's activity"
    );

    // Suspending through replica B's API: B refuses at once (it waited for its cache),
    // every replica soon after.
    let (status, v) = api(
        r.admins[1],
        "POST",
        &format!("/api/keys/{}/status", key.key_id),
        &tokens[1],
        Some(serde_json::json!({"status": "suspended", "reason": "test"})),
    )
    .await;
    assert_eq!(
        (status, v["status"].as_str()),
        (200, Some("suspended")),
        "{v}"
    );
    let resp = r.gws[1].request_from(ALLOWED_IP, &zaif::read(&key)).await;
    assert_eq!(resp.status, 403, "{}", resp.text());
    let took = r.all_answer(&key, ALLOWED_IP, 403).await;
    assert!(
        took <= Duration::from_millis(100),
        "suspension took {took:?}"
    );
    // Through the catalogue: the CLI sees it too.
    let shown = r.envs[2]
        .run_with_store(&["keys", "show"], &[&key.key_id])
        .ok();
    let shown: Value = serde_json::from_str(&shown.stdout).unwrap();
    assert_eq!(shown["status"], "suspended");

    // Freezes go through the catalogue as well.
    let (status, v) = api(
        r.admins[2],
        "POST",
        "/api/freezes",
        &tokens[2],
        Some(serde_json::json!({"scope": "global", "frozen": true, "reason": "test"})),
    )
    .await;
    assert_eq!((status, v["global"].as_bool()), (200, Some(true)), "{v}");
    let (_, v) = api(r.admins[0], "GET", "/api/freezes", &tokens[0], None).await;
    assert_eq!(v["global"].as_bool(), Some(true), "{v}");
    assert_eq!(events_of(&redis, "freeze", ""), 1);
}

/// On a Redis Cluster the accounts' streams live on different nodes: one replica's batch
/// of rows for several accounts still reaches every account's stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn activity_of_several_accounts_reaches_their_streams_on_a_cluster() {
    if !utils::redis::available("activity_of_several_accounts_reaches_their_streams_on_a_cluster") {
        return;
    }
    use keyguard::admin::activity::Filter;
    let dir = tempfile::tempdir().unwrap();
    let cluster = utils::redis::RedisCluster::start(dir.path());
    let store = utils::redis::cluster_store(&cluster.urls(), "2s");
    // Six accounts from one address would trip the shared-IP rule, which is not tested here.
    let env = utils::redis::replica_env(dir.path(), &store, |cfg| {
        set(cfg, "anomaly.shared_ip.enabled", false)
    });
    let origin = Origin::start().await;
    let gw = env.start(origin.addr).await;
    // Accounts whose streams hash to different slots (and so, with three masters, mostly
    // to different nodes).
    let keys: Vec<TestKey> = (0..6)
        .map(|i| {
            env.create_key(&KeySpec {
                account: format!("acct-{i}"),
                ..key_spec("read", &[&format!("{ALLOWED_IP}/32")])
            })
        })
        .collect();
    for k in &keys {
        assert!(
            eventually(Duration::from_secs(3), || async {
                gw.request_from(ALLOWED_IP, &zaif::read(k)).await.status == 200
            })
            .await
        );
    }
    // Requests of all accounts at once, so the writer's batches mix them (one key's own
    // requests in order: its nonces must increase).
    let sent = futures_util::future::join_all(keys.iter().map(|k| async {
        let mut statuses = Vec::new();
        for _ in 0..3 {
            statuses.push(gw.request_from(ALLOWED_IP, &zaif::read(k)).await.status);
        }
        statuses
    }))
    .await;
    assert!(sent.iter().flatten().all(|s| *s == 200), "{sent:?}");
    let cfg = keyguard_config::Config::load(&env.config).unwrap();
    let keyguard_config::StoreConfig::Redis(rc) = &cfg.store else {
        panic!("not on redis")
    };
    let reader = keyguard::store::redis::RedisStore::new(rc).unwrap();
    for k in &keys {
        let filter = Filter {
            key_id: Some(&k.key_id),
            account: Some(&k.account),
            ..Filter::default()
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let rows = reader
                .activity_query(&k.account, &filter, 100)
                .await
                .unwrap();
            if rows.len() >= 4 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{}: {} rows in its stream: {rows:?}",
                k.account,
                rows.len()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
