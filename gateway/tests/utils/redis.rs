//! Real `redis-server` processes for the distributed-mode tests: a single node (with an
//! append-only file, so a restart keeps the catalogue) and a Redis Cluster of three masters
//! with a replica each, created with `redis-cli --cluster create`, all on free loopback
//! ports. `.ci/run` installs redis-server and redis-tools when they are missing.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::free_port;

/// Whether `redis-server` and `redis-cli` are installed. Without them a test skips, saying
/// so — except in CI (`CI` set), where `.ci/run` installs them and a skip would hide a
/// missing install step.
pub fn available(test: &str) -> bool {
    let have = |bin: &str| {
        Command::new(bin)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if have("redis-server") && have("redis-cli") {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "{test}: redis-server/redis-cli are not installed (.ci/run installs them)"
    );
    eprintln!("{test}: SKIPPED: redis-server/redis-cli not installed (apt-get install redis-server redis-tools)");
    false
}

/// One `redis-server`.
pub struct RedisServer {
    pub port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts a server in `dir` (its own subdirectory) on a free port.
    pub fn start(dir: &Path) -> RedisServer {
        let port = free_port();
        let mut s = RedisServer {
            port,
            dir: dir.join(format!("redis-{port}")),
            child: None,
        };
        std::fs::create_dir_all(&s.dir).expect("redis dir");
        s.spawn(&[]);
        s
    }

    /// Starts a cluster-enabled node.
    fn start_cluster_node(dir: &Path) -> RedisServer {
        let port = free_port();
        let mut s = RedisServer {
            port,
            dir: dir.join(format!("redis-{port}")),
            child: None,
        };
        std::fs::create_dir_all(&s.dir).expect("redis dir");
        s.spawn(&[
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            "nodes.conf",
            "--cluster-node-timeout",
            "1000",
            // A replica promotes itself however long ago it last heard from its master:
            // the test's nodes are minutes old, and the check would only delay it.
            "--cluster-replica-validity-factor",
            "0",
        ]);
        s
    }

    fn spawn(&mut self, extra: &[&str]) {
        let log = std::fs::File::create(self.dir.join("redis.log")).expect("redis log");
        let port = self.port.to_string();
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port,
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--protected-mode",
                "no",
            ])
            .args(extra)
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (apt-get install redis-server)");
        self.child = Some(child);
        self.wait_ready();
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.cli(&["PING"]).is_some_and(|o| o.trim() == "PONG") {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("redis-server on {} did not start", self.port);
    }

    /// `redis-cli -p PORT ARGS`, its output, or `None` if it failed.
    pub fn cli(&self, args: &[&str]) -> Option<String> {
        let out = Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(args)
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// SIGKILL.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port and data (after [`RedisServer::kill`]).
    pub fn restart(&mut self) {
        self.kill();
        self.spawn(&[]);
    }

    /// `INFO memory` used_memory, bytes.
    pub fn used_memory(&self) -> u64 {
        let info = self.cli(&["INFO", "memory"]).unwrap_or_default();
        info.lines()
            .find_map(|l| l.strip_prefix("used_memory:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A Redis Cluster: three masters, a replica each.
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts six nodes and joins them with `redis-cli --cluster create`.
    pub fn start(dir: &Path) -> RedisCluster {
        let nodes: Vec<RedisServer> = (0..6)
            .map(|_| RedisServer::start_cluster_node(dir))
            .collect();
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let out = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .output()
            .expect("redis-cli must be installed (apt-get install redis-tools)");
        assert!(
            out.status.success(),
            "cluster create failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let c = RedisCluster { nodes };
        c.wait_ok();
        c
    }

    /// Waits until every live node says `cluster_state:ok`.
    pub fn wait_ok(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            let all_ok = self.nodes.iter().filter(|n| n.child.is_some()).all(|n| {
                n.cli(&["CLUSTER", "INFO"])
                    .is_some_and(|i| i.contains("cluster_state:ok"))
            });
            if all_ok {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("the cluster did not reach cluster_state:ok");
    }

    /// Seed URLs of every node.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }

    /// The node serving `key`'s slot as master.
    pub fn master_of(&mut self, key: &str) -> &mut RedisServer {
        let slot: u16 = self.nodes[0]
            .cli(&["CLUSTER", "KEYSLOT", key])
            .and_then(|s| s.trim().parse().ok())
            .expect("keyslot");
        let shards = self.nodes[0].cli(&["CLUSTER", "SLOTS"]).expect("slots");
        // `CLUSTER SLOTS` in redis-cli's plain output: start, end, master ip, port, id, …
        let lines: Vec<&str> = shards.lines().map(str::trim).collect();
        let mut i = 0;
        while i + 3 < lines.len() {
            if let (Ok(start), Ok(end)) = (lines[i].parse::<u16>(), lines[i + 1].parse::<u16>()) {
                if (start..=end).contains(&slot) {
                    let port: u16 = lines[i + 3].parse().expect("port");
                    return self
                        .nodes
                        .iter_mut()
                        .find(|n| n.port == port)
                        .expect("master is one of ours");
                }
            }
            i += 1;
        }
        panic!("no master for slot {slot}");
    }
}

/// `[store]` for one `redis-server` at `url`, with a per-call timeout generous enough for
/// a loaded CI machine.
pub fn single_store(url: &str, timeout: &str) -> toml::Table {
    let mut t = toml::Table::new();
    t.insert("kind".into(), "redis".into());
    t.insert("url".into(), url.into());
    t.insert("timeout".into(), timeout.into());
    t
}

/// A replica's environment: the Zaif example with `store`, the master key file shared
/// by every replica made with the same `shared_dir`, its own data dir, then `tweak`.
pub fn replica_env(
    shared_dir: &Path,
    store: &toml::Table,
    tweak: impl FnOnce(&mut toml::Table),
) -> super::Env {
    let master = shared_dir.join("master.key");
    super::Env::new(super::Dialect::Zaif, |cfg| {
        super::set(cfg, "store", toml::Value::Table(store.clone()));
        super::set(
            cfg,
            "secrets.master_key_file",
            master.to_string_lossy().into_owned(),
        );
        tweak(cfg);
    })
}

/// `[store]` for a Redis Cluster seeded with `urls`.
pub fn cluster_store(urls: &[String], timeout: &str) -> toml::Table {
    let mut t = toml::Table::new();
    t.insert("kind".into(), "redis".into());
    t.insert(
        "cluster".into(),
        toml::Value::Array(urls.iter().map(|u| u.clone().into()).collect()),
    );
    t.insert("timeout".into(), timeout.into());
    t
}
