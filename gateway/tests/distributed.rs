//! Distributed mode (issue 12) against real servers: three `keyguard serve` replicas
//! sharing one real `redis-server`, and a real three-master Redis Cluster. Requests are
//! spread round-robin over the replicas; the recording origin is the verdict (a refused
//! request never reaches it).
//!
//! Times are measured and printed (revocation propagation, fail-closed latency); the
//! assertions use the contract's bounds with slack for a loaded 2-core CI machine.

mod utils;

use std::time::{Duration, Instant};

use utils::redis::{RedisCluster, RedisServer};
use utils::*;

/// A config for replica `i` of a set sharing `store` (TOML for `[store]`) and one master
/// key file, each with its own data dir.
fn replica_env(
    shared_dir: &std::path::Path,
    store: toml::Table,
    tweak: impl Fn(&mut toml::Table),
) -> Env {
    let master = shared_dir.join("master.key");
    Env::new(Dialect::Zaif, |cfg| {
        set(cfg, "store", toml::Value::Table(store.clone()));
        set(
            cfg,
            "secrets.master_key_file",
            master.to_string_lossy().into_owned(),
        );
        tweak(cfg);
    })
}

fn single(url: &str) -> toml::Table {
    let mut t = toml::Table::new();
    t.insert("kind".into(), "redis".into());
    t.insert("url".into(), url.into());
    t.insert("timeout".into(), "50ms".into());
    t
}

fn cluster(urls: &[String]) -> toml::Table {
    let mut t = toml::Table::new();
    t.insert("kind".into(), "redis".into());
    t.insert(
        "cluster".into(),
        toml::Value::Array(urls.iter().map(|u| u.clone().into()).collect()),
    );
    t.insert("timeout".into(), "200ms".into());
    t
}

/// Three replicas in front of one origin.
struct Replicas {
    gws: Vec<Gateway>,
    envs: Vec<Env>,
    origin: Origin,
}

impl Replicas {
    async fn start(
        shared: &std::path::Path,
        store: toml::Table,
        tweak: impl Fn(&mut toml::Table),
    ) -> Replicas {
        let envs: Vec<Env> = (0..3)
            .map(|_| replica_env(shared, store.clone(), &tweak))
            .collect();
        let origin = Origin::start().await;
        let mut gws = Vec::new();
        for e in &envs {
            gws.push(e.start(origin.addr).await);
        }
        Replicas { gws, envs, origin }
    }

    fn gw(&self, i: usize) -> &Gateway {
        &self.gws[i % self.gws.len()]
    }
}

fn withdraw_rule(cfg: &mut toml::Table, max_count: i64) {
    let t: toml::Table = format!(
        r#"
        [[rule]]
        kind = "withdraw"
        subject = "key"
        asset = "*"
        window = "1h"
        max_count = {max_count}
        "#
    )
    .parse()
    .unwrap();
    set(cfg, "velocity.rule", t["rule"].clone());
    // Only the velocity window may refuse here.
    set(
        cfg,
        "limits.tiers.default.withdraw",
        inline("{ count = 1000, per = \"1s\" }"),
    );
    set(
        cfg,
        "limits.tiers.default.key",
        inline("{ count = 1000, per = \"1s\" }"),
    );
    set(
        cfg,
        "limits.tiers.default.account",
        inline("{ count = 1000, per = \"1s\" }"),
    );
}

/// For tests that are not about the failure policy: the off-path counts they wait for
/// (failed authentications) are dropped, by design, when Redis does not answer within the
/// timeout, and a loaded 2-core CI machine running the suite's replicas in parallel can
/// delay a call past 50 ms.
fn patient(cfg: &mut toml::Table) {
    set(cfg, "store.timeout", "1s");
}

fn inline(value: &str) -> toml::Value {
    let t: toml::Table = format!("v = {value}").parse().unwrap();
    t["v"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_share_nonces_velocity_rates_and_revocations() {
    if !utils::redis::available("replicas_share_nonces_velocity_rates_and_revocations") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let redis = RedisServer::start(dir.path());
    // A deadline a loaded CI machine cannot miss: here a missed one would refuse (fail
    // closed) and make the counts below lower than the limits, which is not what is
    // tested. The 50 ms default is tested with Redis down.
    let mut store = single(&redis.url());
    store.insert("timeout".into(), "2s".into());
    let r = Replicas::start(dir.path(), store, |cfg| {
        withdraw_rule(cfg, 5);
        set(
            cfg,
            "limits.tiers.default.read",
            inline("{ count = 20, per = \"1m\" }"),
        );
    })
    .await;
    let key = r.envs[0].create_key(&KeySpec::full(Dialect::Zaif));
    // Every replica sees a key created on any of them (pub/sub, within the second).
    for i in 0..3 {
        let gw = r.gw(i);
        assert!(
            serves(gw, &key, Duration::from_secs(2)).await,
            "replica {i} never saw the new key"
        );
    }

    // A nonce accepted by one replica is spent on all of them.
    let req = zaif::read(&key);
    let first = r.gw(0).request_from(ALLOWED_IP, &req).await;
    assert_eq!(first.status, 200, "{}\n{}", first.text(), r.gw(0).log());
    for i in 1..3 {
        let resp = r.gw(i).request_from(ALLOWED_IP, &req).await;
        assert_eq!(resp.status, 401, "replayed on replica {i}: {}", resp.text());
        assert!(resp.text().contains("invalid_nonce"), "{}", resp.text());
    }

    // Global rate: 20 reads a minute for a fresh key, however they are spread.
    let rk = r.envs[2].create_key(&KeySpec::scopes("read"));
    for i in 0..3 {
        let gw = r.gw(i);
        assert!(
            eventually(Duration::from_secs(2), || async {
                gw.log().contains("keys=2")
            })
            .await,
            "replica {i} never loaded the second key"
        );
    }
    let mut allowed = 0;
    for i in 0..60 {
        if r.gw(i)
            .request_from(ALLOWED_IP, &zaif::read(&rk))
            .await
            .status
            == 200
        {
            allowed += 1;
        }
    }
    println!("reads allowed across 3 replicas: {allowed} of a limit of 20");
    assert!(allowed <= 21, "{allowed} reads allowed, limit 20 (+5%)");
    assert!(
        allowed >= 20,
        "{allowed} reads allowed, limit 20: the limit refused early"
    );

    // Velocity: 30 concurrent withdrawals over 3 replicas, 5 may pass. Zaif nonces must
    // increase, so among concurrent requests a later nonce can overtake an earlier one;
    // a withdrawal refused for its nonce is signed again with a fresh one, so that every
    // one of the 30 reaches the velocity check.
    let before = r.origin.count();
    let mut tasks = Vec::new();
    for i in 0..30 {
        let addr = r.gw(i).addr;
        let key = key.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..50 {
                let req = zaif::withdraw(&key, WITHDRAW_ADDR);
                let resp = send_raw(addr, ALLOWED_IP, &req.to_bytes(&addr.to_string())).await;
                match resp {
                    Ok(r) if r.text().contains("invalid_nonce") => continue,
                    Ok(r) => return r.status,
                    Err(_) => return 0,
                }
            }
            0
        }));
    }
    let mut ok = 0;
    for t in tasks {
        if t.await.unwrap() == 200 {
            ok += 1;
        }
    }
    let forwarded = r.origin.count() - before;
    println!("withdrawals: {ok} answered 200, {forwarded} forwarded, limit 5");
    assert_eq!(
        forwarded, 5,
        "velocity overshoot or undershoot across replicas"
    );
    assert_eq!(ok, 5);

    // Revocation on one replica's CLI reaches all three.
    let started = Instant::now();
    r.envs[1].set_key_status("revoke", &key);
    let cli_done = started.elapsed();
    let mut last = Duration::ZERO;
    for i in 0..3 {
        let gw = r.gw(i);
        let t0 = Instant::now();
        loop {
            let resp = gw.request_from(ALLOWED_IP, &zaif::read(&key)).await;
            if resp.status == 403 {
                break;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(2),
                "replica {i} still accepts a revoked key"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        last = last.max(started.elapsed());
    }
    println!(
        "revocation: CLI returned after {cli_done:?}; refused on all 3 replicas {:?} after the CLI returned",
        last.saturating_sub(cli_done)
    );
    assert!(last.saturating_sub(cli_done) < Duration::from_secs(1));
}

/// One request to `addr` from the allowed IP; the status (0 if no answer).
/// Whether replica `gw` answers a read with `key` within `within`: a key created through
/// any replica reaches the others by pub/sub.
async fn serves(gw: &Gateway, key: &TestKey, within: Duration) -> bool {
    eventually(within, || async {
        gw.request_from(ALLOWED_IP, &zaif::read(key)).await.status == 200
    })
    .await
}

async fn send_to(addr: std::net::SocketAddr, req: &Req) -> u16 {
    send_raw(addr, ALLOWED_IP, &req.to_bytes(&addr.to_string()))
        .await
        .map(|r| r.status)
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_down_fails_closed_then_recovers_without_restarts() {
    if !utils::redis::available("redis_down_fails_closed_then_recovers_without_restarts") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut redis = RedisServer::start(dir.path());
    let r = Replicas::start(dir.path(), single(&redis.url()), |cfg| {
        withdraw_rule(cfg, 100)
    })
    .await;
    let key = r.envs[0].create_key(&KeySpec::full(Dialect::Zaif));
    assert!(serves(r.gw(2), &key, Duration::from_secs(2)).await);

    redis.kill();
    let before = r.origin.count();
    let mut worst = Duration::ZERO;
    for i in 0..6 {
        for req in [
            zaif::trade(&key),
            zaif::withdraw(&key, WITHDRAW_ADDR),
            zaif::read(&key),
        ] {
            let t0 = Instant::now();
            let resp = r.gw(i).request_from(ALLOWED_IP, &req).await;
            worst = worst.max(t0.elapsed());
            assert_eq!(resp.status, 503, "{}", resp.text());
            assert!(resp.text().contains("state_unavailable"), "{}", resp.text());
        }
    }
    println!("redis down: worst refusal took {worst:?} (timeout 50 ms)");
    // 2× the timeout is the target; the bound here leaves room for a loaded CI machine.
    assert!(worst < Duration::from_secs(1), "a refusal took {worst:?}");
    r.origin
        .assert_unchanged(before, "nothing is forwarded while redis is down");

    redis.restart();
    for i in 0..3 {
        let gw = r.gw(i);
        assert!(
            eventually(Duration::from_secs(10), || async {
                gw.request_from(ALLOWED_IP, &zaif::trade(&key)).await.status == 200
            })
            .await,
            "replica {i} did not recover after redis came back"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn local_reads_while_redis_is_down_are_audited_as_such() {
    if !utils::redis::available("local_reads_while_redis_is_down_are_audited_as_such") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut redis = RedisServer::start(dir.path());
    let mut store = single(&redis.url());
    store.insert("read_when_unavailable".into(), "local".into());
    let r = Replicas::start(dir.path(), store, |_| {}).await;
    let key = r.envs[0].create_key(&KeySpec::full(Dialect::Zaif));
    assert!(serves(r.gw(0), &key, Duration::from_secs(2)).await);
    redis.kill();
    assert_eq!(
        r.gw(0)
            .request_from(ALLOWED_IP, &zaif::read(&key))
            .await
            .status,
        200
    );
    assert_eq!(
        r.gw(0)
            .request_from(ALLOWED_IP, &zaif::trade(&key))
            .await
            .status,
        503
    );
    let audit = r.envs[0].data.join("audit.jsonl");
    assert!(
        eventually(Duration::from_secs(2), || async {
            std::fs::read_to_string(&audit)
                .unwrap_or_default()
                .lines()
                .any(|l| {
                    l.contains("\"decision\":\"would_deny\"") && l.contains("state_unavailable")
                })
        })
        .await,
        "the local read is not audited as allowed without shared state"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn migrate_copies_an_embedded_store() {
    if !utils::redis::available("migrate_copies_an_embedded_store") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let redis = RedisServer::start(dir.path());
    // An embedded gateway that used a key.
    let master = dir.path().join("master.key");
    let embedded = Env::new(Dialect::Zaif, |cfg| {
        set(
            cfg,
            "secrets.master_key_file",
            master.to_string_lossy().into_owned(),
        );
    });
    let key = embedded.create_key(&KeySpec::full(Dialect::Zaif));
    let origin = Origin::start().await;
    let used = zaif::read(&key);
    {
        let gw = embedded.start(origin.addr).await;
        assert_eq!(gw.request_from(ALLOWED_IP, &used).await.status, 200);
        // Nonces reach SQLite at the checkpoint (once a second); a graceful stop flushes.
        let mut gw = gw;
        gw.terminate(Duration::from_secs(5));
    }
    let data = embedded.data.to_string_lossy().into_owned();
    let run = embedded
        .run(&["migrate", "--from", &data, "--to", &redis.url()])
        .ok();
    assert!(run.stdout.contains("\"keys\":1"), "{}", run.stdout);
    // A second copy over a non-empty target needs --force.
    let again = embedded.run(&["migrate", "--from", &data, "--to", &redis.url()]);
    assert!(!again.status.success());
    assert!(again.stderr.contains("--force"), "{}", again.stderr);
    embedded
        .run(&["migrate", "--from", &data, "--to", &redis.url(), "--force"])
        .ok();

    let env = replica_env(dir.path(), single(&redis.url()), patient);
    let gw = env.start(origin.addr).await;
    // The nonce used before the migration stays spent; the key works with a new one.
    let resp = gw.request_from(ALLOWED_IP, &used).await;
    assert_eq!(resp.status, 401, "{}", resp.text());
    assert_eq!(
        gw.request_from(ALLOWED_IP, &zaif::read(&key)).await.status,
        200
    );
    let listed = env.run_with_store(&["keys", "list"], &["--json"]).ok();
    assert!(listed.stdout.contains(&key.key_id));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cluster_spreads_state_and_fails_closed_through_a_failover() {
    if !utils::redis::available("cluster_spreads_state_and_fails_closed_through_a_failover") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut c = RedisCluster::start(dir.path());
    let r = Replicas::start(dir.path(), cluster(&c.urls()), |cfg| withdraw_rule(cfg, 4)).await;
    let key = r.envs[0].create_key(&KeySpec::full(Dialect::Zaif));
    assert!(serves(r.gw(1), &key, Duration::from_secs(3)).await);
    // Velocity across replicas on a cluster: 12 withdrawals, 4 pass.
    let before = r.origin.count();
    let mut tasks = Vec::new();
    for i in 0..12 {
        let addr = r.gw(i).addr;
        let req = zaif::withdraw(&key, WITHDRAW_ADDR);
        tasks.push(tokio::spawn(async move { send_to(addr, &req).await }));
    }
    let mut ok = 0;
    for t in tasks {
        if t.await.unwrap() == 200 {
            ok += 1;
        }
    }
    let forwarded = r.origin.count() - before;
    println!("cluster withdrawals: {ok} answered 200, {forwarded} forwarded, limit 4");
    // Never more than the limit; a call that timed out on a loaded machine is refused
    // (fail closed) and its entry given back, so fewer is possible but not more.
    assert!(
        forwarded <= 4,
        "velocity overshoot on the cluster: {forwarded}"
    );
    assert_eq!(forwarded, ok);
    assert!(forwarded >= 1);

    // Kill the master of the account's slot: its requests fail closed, then the
    // promoted replica serves them.
    let tag = format!("kg:{{a:{}}}", key.account);
    c.master_of(&tag).kill();
    let t0 = Instant::now();
    let mut refused = 0;
    let recovered = loop {
        let resp = r.gw(0).request_from(ALLOWED_IP, &zaif::trade(&key)).await;
        match resp.status {
            200 => break true,
            503 => refused += 1,
            other => panic!("during failover: {other} {}", resp.text()),
        }
        if t0.elapsed() > Duration::from_secs(30) {
            break false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    println!(
        "failover: {refused} trades refused (503) before recovery after {:?}",
        t0.elapsed()
    );
    assert!(recovered, "no recovery after the failover");
}

/// Failed signatures spread over the replicas add up to one ban in Redis; every replica
/// then refuses the network, and the ban is alerted once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn auth_failures_on_all_replicas_ban_the_network_everywhere() {
    if !utils::redis::available("auth_failures_on_all_replicas_ban_the_network_everywhere") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let redis = RedisServer::start(dir.path());
    let hook = Origin::start().await;
    let url = format!("http://{}/keyguard", hook.addr);
    let r = Replicas::start(dir.path(), single(&redis.url()), |cfg| {
        patient(cfg);
        set(cfg, "anomaly.auth_failures.max_failures", 3);
        set(cfg, "alerts.webhook_url", url.clone());
    })
    .await;
    let key = r.envs[0].create_key(&KeySpec::full(Dialect::Zaif));
    assert!(serves(r.gw(2), &key, Duration::from_secs(2)).await);
    let attacker = std::net::Ipv4Addr::new(127, 0, 7, 7);
    let mut wrong = key.clone();
    wrong.secret = format!("{}x", key.secret);
    for i in 0..4 {
        let bad = zaif::signed(
            &wrong,
            &zaif::body("get_info2", &next_nonce().to_string(), &[]),
        );
        let resp = r.gw(i).request_from(attacker, &bad).await;
        assert_eq!(resp.status, 401, "{}", resp.text());
    }
    // Counted off the response path: every replica refuses the network shortly after.
    for i in 0..3 {
        let gw = r.gw(i);
        assert!(
            eventually(Duration::from_secs(2), || async {
                let resp = gw.request_from(attacker, &zaif::read(&key)).await;
                resp.status == 403 && resp.text().contains("ip_banned")
            })
            .await,
            "replica {i} does not refuse the banned network"
        );
    }
    assert_eq!(
        r.gw(1)
            .request_from(ALLOWED_IP, &zaif::read(&key))
            .await
            .status,
        200
    );
    assert!(
        eventually(Duration::from_secs(3), || async {
            hook.bodies_containing("\"ip_banned\"").len() == 1
        })
        .await,
        "the ban is not alerted exactly once: {:?}",
        hook.records()
            .iter()
            .map(|r| String::from_utf8_lossy(&r.body).into_owned())
            .collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_canary_on_one_replica_puts_keys_back_on_probation_on_all() {
    if !utils::redis::available("a_canary_on_one_replica_puts_keys_back_on_probation_on_all") {
        return;
    }
    const BLOCK: Duration = Duration::from_secs(2);
    // `serves` below uses the key first from ALLOWED_IP: that is where it is trusted.
    let owner = ALLOWED_IP;
    let attacker = std::net::Ipv4Addr::new(127, 0, 8, 9);
    let dir = tempfile::tempdir().unwrap();
    let redis = RedisServer::start(dir.path());
    let r = Replicas::start(dir.path(), single(&redis.url()), |cfg| {
        patient(cfg);
        set(cfg, "anomaly.new_ip.probation", "1s");
        set(cfg, "canary.block_for", format!("{}s", BLOCK.as_secs()));
        set(cfg, "canary.lookback", "1h");
    })
    .await;
    // The victim has no allowlist: trusted where its owner uses it first, on probation
    // elsewhere. The canary is allowlisted like a real office key.
    let victim = r.envs[0].create_key(&KeySpec {
        account: "acct-victim".into(),
        scopes: "read,trade".into(),
        allow_ips: vec![],
        withdraw_addresses: vec![],
    });
    let run = r.envs[0]
        .run_with_store(
            &["keys", "create"],
            &[
                "--account",
                "acct-office",
                "--scopes",
                "read,trade",
                "--allow-ip",
                "10.9.9.0/24",
                "--canary",
                "--json",
            ],
        )
        .ok();
    let v: serde_json::Value = serde_json::from_str(run.stdout.trim()).unwrap();
    let canary = TestKey {
        key_id: v["key_id"].as_str().unwrap().into(),
        api_key: v["api_key"].as_str().unwrap().into(),
        secret: v["secret"].as_str().unwrap().into(),
        account: "acct-office".into(),
    };
    for i in 0..3 {
        assert!(serves(r.gw(i), &victim, Duration::from_secs(2)).await);
    }
    assert_eq!(
        r.gw(0)
            .request_from(owner, &zaif::trade(&victim))
            .await
            .status,
        200
    );
    // The stolen key earns trust from the attacker's network on replica 1 after 1 s.
    assert_eq!(
        r.gw(1)
            .request_from(attacker, &zaif::read(&victim))
            .await
            .status,
        200
    );
    assert!(
        eventually(Duration::from_secs(5), || async {
            r.gw(2)
                .request_from(attacker, &zaif::trade(&victim))
                .await
                .status
                == 200
        })
        .await,
        "probation never ended"
    );
    // The canary goes off on replica 0.
    let used = r.gw(0).request_from(attacker, &zaif::trade(&canary)).await;
    used.assert_error(403, "ip_not_allowed");
    // Once the block ends, the victim key is on probation again from that network, on
    // every replica; its owner is unaffected.
    tokio::time::sleep(BLOCK + Duration::from_millis(300)).await;
    for i in 0..3 {
        let before = r.origin.count();
        let resp = r.gw(i).request_from(attacker, &zaif::trade(&victim)).await;
        resp.assert_error(403, "new_ip_probation");
        r.origin
            .assert_unchanged(before, "a trade from the canary's network");
    }
    assert_eq!(
        r.gw(1)
            .request_from(owner, &zaif::trade(&victim))
            .await
            .status,
        200
    );
}

/// Client networks whose auth failures have a record of their own in `redis`.
fn failure_records(redis: &RedisServer) -> Vec<String> {
    redis
        .cli(&["--scan", "--pattern", "*{n:*}:af"])
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Past `anomaly.max_entries` failing networks, a flood's new networks get no records of
/// their own: they count on their shard's shared overflow record, which the flood bans.
/// While it is banned, every replica refuses an untracked network of that shard even
/// with a valid key; networks with state of their own and other shards are unaffected.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_flood_past_the_tracked_networks_is_banned_together_without_growing_redis() {
    if !utils::redis::available(
        "a_flood_past_the_tracked_networks_is_banned_together_without_growing_redis",
    ) {
        return;
    }
    use keyguard::store::redis::overflow_shard;
    use keyguard_policy::limits::ClientNet;
    use std::net::Ipv4Addr;
    const CAP: usize = 8;
    let shard = |ip: Ipv4Addr| overflow_shard(ClientNet::of(ip.into()));
    let dir = tempfile::tempdir().unwrap();
    let redis = RedisServer::start(dir.path());
    let hook = Origin::start().await;
    let url = format!("http://{}/keyguard", hook.addr);
    let r = Replicas::start(dir.path(), single(&redis.url()), |cfg| {
        patient(cfg);
        set(cfg, "anomaly.max_entries", CAP as i64);
        set(cfg, "anomaly.auth_failures.max_failures", 3);
        set(cfg, "alerts.webhook_url", url.clone());
    })
    .await;
    // No allowlist: any network may use it, so only the overflow's ban can refuse it.
    let key = r.envs[0].create_key(&KeySpec {
        account: "acct-roaming".into(),
        scopes: "read".into(),
        allow_ips: vec![],
        withdraw_addresses: vec![],
    });
    let mut wrong = key.clone();
    wrong.secret = format!("{}x", key.secret);
    let bad = || {
        zaif::signed(
            &wrong,
            &zaif::body("get_info2", &next_nonce().to_string(), &[]),
        )
    };
    // Addresses by shard: the flood bans the shard of 127.0.10.1 (any fixed one will do).
    let pool: Vec<Ipv4Addr> = (1..=250).map(|i| Ipv4Addr::new(127, 0, 11, i)).collect();
    let banned_shard = shard(Ipv4Addr::new(127, 0, 10, 1));
    let mut same = pool.iter().copied().filter(|&ip| shard(ip) == banned_shard);
    let mut other = pool.iter().copied().filter(|&ip| shard(ip) != banned_shard);
    let (resident, outsider) = (same.next().unwrap(), other.next().unwrap());

    // A trader already working from the shard before the flood.
    assert!(serves(r.gw(0), &key, Duration::from_secs(2)).await);
    assert_eq!(
        r.gw(0)
            .request_from(resident, &zaif::read(&key))
            .await
            .status,
        200
    );
    // The tracked networks fill up (one failure each, from networks of other shards)...
    for (i, ip) in other.by_ref().take(CAP).enumerate() {
        assert_eq!(r.gw(i).request_from(ip, &bad()).await.status, 401);
        let want = i + 1;
        assert!(
            eventually(Duration::from_secs(2), || async {
                failure_records(&redis).len() >= want
            })
            .await,
            "failure {want} not recorded"
        );
    }
    // ...then a flood from new networks of that shard: more failures than the
    // rule allows one network, spread over networks that each failed once.
    let flood: Vec<Ipv4Addr> = same.by_ref().take(5).collect();
    let probes: Vec<Ipv4Addr> = same.take(3).collect();
    assert_eq!(
        (flood.len(), probes.len()),
        (5, 3),
        "the pool has eight more addresses of the shard"
    );
    for (i, ip) in flood.iter().enumerate() {
        assert_eq!(r.gw(i).request_from(*ip, &bad()).await.status, 401);
    }
    // Counted off the response path; the ban reaches every replica through pub/sub
    // within its 100 ms. A probe answered before that would give its network state of its
    // own (and so exempt it): each replica gets a fresh untracked network, once.
    let ban = format!("kg:{{n:~o{banned_shard}}}:st");
    assert!(
        eventually(Duration::from_secs(3), || async {
            redis
                .cli(&["HEXISTS", &ban, "banned"])
                .is_some_and(|o| o.trim() == "1")
        })
        .await,
        "the flood did not ban its overflow: {:?}",
        failure_records(&redis)
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    for (i, probe) in probes.iter().enumerate() {
        let resp = r.gw(i).request_from(*probe, &zaif::read(&key)).await;
        assert!(
            resp.status == 403 && resp.text().contains("ip_banned"),
            "replica {i} does not refuse untracked {probe} of the banned overflow: {} {}",
            resp.status,
            resp.text()
        );
    }
    let records = failure_records(&redis);
    let tracked = records.iter().filter(|k| !k.contains("{n:~o")).count();
    assert!(
        tracked <= CAP + 1,
        "{tracked} networks got records of their own past the cap of {CAP}: {records:?}"
    );
    assert!(
        records
            .iter()
            .any(|k| k.contains(&format!("{{n:~o{banned_shard}}}"))),
        "no overflow record for shard {banned_shard}: {records:?}"
    );
    for ip in &flood {
        assert!(
            !records.iter().any(|k| k.contains(&format!("{{n:{ip}}}"))),
            "flood network {ip} has a record of its own: {records:?}"
        );
    }
    // Networks with state of their own, and other shards, are not part of the flood.
    for i in 0..3 {
        for ip in [resident, outsider] {
            let resp = r.gw(i).request_from(ip, &zaif::read(&key)).await;
            assert_eq!(resp.status, 200, "replica {i}, {ip}: {}", resp.text());
        }
    }
    assert!(
        eventually(Duration::from_secs(3), || async {
            hook.bodies_containing("\"ip_banned\"").len() == 1
        })
        .await,
        "the overflow's ban is not alerted exactly once"
    );
}

/// The shared-IP and many-IPs rules count what every replica sees, including the
/// sightings a replica skips re-recording for a pair it recorded within the last second.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shared_ip_and_many_ips_count_the_sightings_of_all_replicas() {
    if !utils::redis::available("shared_ip_and_many_ips_count_the_sightings_of_all_replicas") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let redis = RedisServer::start(dir.path());
    let r = Replicas::start(dir.path(), single(&redis.url()), |cfg| {
        patient(cfg);
        set(cfg, "anomaly.shared_ip.enabled", true);
        set(cfg, "anomaly.shared_ip.max_keys", 3);
        set(cfg, "anomaly.shared_ip.max_accounts", 100);
        set(cfg, "anomaly.many_ips.enabled", true);
        set(cfg, "anomaly.many_ips.max_ips", 3);
    })
    .await;

    // Shared IP: three keys from one network, each on its own replica and each back
    // several times (the repeats are the sightings a replica skips), are served; the
    // fourth key, on any replica, gets the network blocked on all of them.
    let keys: Vec<TestKey> = (0..4)
        .map(|_| r.envs[0].create_key(&KeySpec::full(Dialect::Zaif)))
        .collect();
    // Known everywhere before the count starts: asked from elsewhere (refused by the
    // allowlist, not as an unknown key), so the counted network sees nothing yet.
    let elsewhere = std::net::Ipv4Addr::new(127, 0, 0, 9);
    for gw in &r.gws {
        for k in &keys {
            assert!(
                eventually(Duration::from_secs(2), || async {
                    gw.request_from(elsewhere, &zaif::read(k)).await.status == 403
                })
                .await,
                "a key does not reach every replica"
            );
        }
    }
    for round in 0..3 {
        for (i, k) in keys[..3].iter().enumerate() {
            let resp = r
                .gw(i + round)
                .request_from(ALLOWED_IP, &zaif::read(k))
                .await;
            assert_eq!(resp.status, 200, "key {i} round {round}: {}", resp.text());
        }
    }
    let resp = r
        .gw(1)
        .request_from(ALLOWED_IP, &zaif::read(&keys[3]))
        .await;
    assert_eq!(resp.status, 403, "{}", resp.text());
    assert!(resp.text().contains("ip_blocked"), "{}", resp.text());
    for i in 0..3 {
        let resp = r
            .gw(i)
            .request_from(ALLOWED_IP, &zaif::read(&keys[0]))
            .await;
        assert!(
            resp.status == 403 && resp.text().contains("ip_blocked"),
            "replica {i} serves the blocked network: {} {}",
            resp.status,
            resp.text()
        );
    }

    // Many IPs: one key without an allowlist from three networks over the three replicas,
    // each back twice, is served; a fourth network suspends it for every replica.
    let roaming = r.envs[0].create_key(&KeySpec {
        allow_ips: Vec::new(),
        account: "acct-roaming".into(),
        ..KeySpec::scopes("read")
    });
    let nets: Vec<std::net::Ipv4Addr> = (3..7)
        .map(|o| std::net::Ipv4Addr::new(127, 0, 0, o))
        .collect();
    for round in 0..2 {
        for (i, ip) in nets[..3].iter().enumerate() {
            let gw = r.gw(i + round);
            assert!(
                eventually(Duration::from_secs(2), || async {
                    gw.request_from(*ip, &zaif::read(&roaming)).await.status == 200
                })
                .await,
                "{ip} round {round} is not served"
            );
        }
    }
    let resp = r.gw(2).request_from(nets[3], &zaif::read(&roaming)).await;
    assert!(
        resp.status == 403 && resp.text().contains("too_many_ips"),
        "{} {}",
        resp.status,
        resp.text()
    );
    for i in 0..3 {
        let gw = r.gw(i);
        assert!(
            eventually(Duration::from_secs(2), || async {
                let resp = gw.request_from(nets[0], &zaif::read(&roaming)).await;
                resp.status == 403
            })
            .await,
            "replica {i} still serves the suspended key"
        );
    }
}
