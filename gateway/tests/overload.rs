//! Overload and resources through the real binary: requests past `overload.max_in_flight`
//! are shed at once with 503 `overloaded` and `Retry-After`; connections past
//! `overload.max_connections_per_network` are closed at accept; the open-files soft
//! limit is raised to the hard limit at start, and the log says so.

mod utils;

use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::Value;
use tokio::io::AsyncWriteExt;
use utils::*;

fn audit_lines(env: &Env) -> Vec<Value> {
    std::fs::read_to_string(env.data.join("audit.jsonl"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

async fn audited(env: &Env, code: &str) -> Vec<Value> {
    let mut found = Vec::new();
    eventually(Duration::from_secs(10), || {
        found = audit_lines(env)
            .into_iter()
            .filter(|l| l["code"] == code)
            .collect();
        let any = !found.is_empty();
        async move { any }
    })
    .await;
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_past_the_in_flight_limit_are_shed_with_retry_after() {
    let d = Dialect::Zaif;
    let env = Env::new(d, |c| {
        set(c, "overload.max_in_flight", 2);
        set(c, "overload.retry_after_secs", 3);
        set(c, "server.upstream_response_timeout_ms", 1_500);
        c.remove("limits");
    });
    let k = env.create_key(&KeySpec::full(d));
    // An exchange that never answers: every forwarded request stays in flight.
    let (upstream, accepted, _task) = silent_origin().await;
    let gw = env.start(upstream).await;
    let gw = std::sync::Arc::new(gw);
    let mut stuck = Vec::new();
    // One after the other: sent at once, the later nonce could arrive first and the
    // earlier one be refused as a replay instead of staying in flight.
    for i in 0..2 {
        let (gw, req) = (gw.clone(), zaif::read(&k));
        stuck.push(tokio::spawn(async move { gw.request(&req).await }));
        let arrived = eventually(Duration::from_secs(10), || {
            let n = accepted.load(Ordering::SeqCst);
            async move { n > i }
        })
        .await;
        assert!(arrived, "request {} did not reach the upstream", i + 1);
    }
    assert!(
        eventually(Duration::from_secs(10), || {
            let n = accepted.load(Ordering::SeqCst);
            async move { n >= 2 }
        })
        .await,
        "the two requests did not reach the upstream"
    );
    // The third is refused at once, before its body is read or its signature checked.
    let shed = gw.request(&zaif::read(&k)).await;
    shed.assert_error(503, "overloaded");
    assert_eq!(shed.header("retry-after"), Some("3"));
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        2,
        "the shed request was forwarded"
    );
    let lines = audited(&env, "overloaded").await;
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0]["decision"], "deny");
    assert_eq!(lines[0]["status"], 503);
    assert_eq!(lines[0]["path"], "/tapi");
    // When the stuck ones end (504), their slots are free again.
    for t in stuck {
        t.await.unwrap().assert_error(504, "upstream_timeout");
    }
    gw.request(&zaif::read(&k))
        .await
        .assert_error(504, "upstream_timeout");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_per_network_cap_are_closed_at_accept() {
    let d = Dialect::Zaif;
    let env = Env::new(d, |c| {
        set(c, "overload.max_connections_per_network", 2);
        set(c, "overload.ipv4_prefix", 32);
    });
    let k = env.create_key(&KeySpec::full(d));
    let origin = Origin::start().await;
    let gw = env.start(origin.addr).await;
    let connect_from = |ip: std::net::Ipv4Addr| async move {
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.bind((ip, 0).into()).unwrap();
        sock.connect(gw.addr).await.unwrap()
    };
    // Two connections from 127.0.0.2 take its whole share. Each is answered once before
    // the next is opened: with one listener per worker the gateway may accept connections
    // in another order than they were made, so two merely connected sockets do not yet
    // hold their slots and a third could overtake them.
    let hold = || async {
        let mut s = connect_from(ALLOWED_IP).await;
        s.write_all(&zaif::read(&k).to_bytes(&gw.addr.to_string()))
            .await
            .unwrap();
        assert_eq!(read_response(&mut s).await.unwrap().status, 200);
        s
    };
    let held_a = hold().await;
    let _held_b = hold().await;
    // ...so a third from there is closed without an answer.
    assert!(
        gw.send(ALLOWED_IP, &zaif::read(&k)).await.is_err(),
        "a third connection from the same network was served"
    );
    let lines = audited(&env, "too_many_connections").await;
    assert!(!lines.is_empty());
    assert_eq!(lines[0]["client_ip"], ALLOWED_IP.to_string());
    assert_eq!(lines[0]["status"], 0);
    // Another network is not affected.
    gw.request_from(OTHER_IP, &zaif::read(&k))
        .await
        .assert_error(403, "ip_not_allowed");
    // Closing one frees a slot.
    drop(held_a);
    assert!(
        eventually(Duration::from_secs(10), || async {
            gw.send(ALLOWED_IP, &zaif::read(&k))
                .await
                .is_ok_and(|r| r.status == 200)
        })
        .await,
        "the network's slot was not freed"
    );
}

/// Starts `keyguard serve` under `ulimit -Sn 256` and returns its pid, log and the
/// soft open-files limit the running process has.
async fn start_with_low_nofile(
    env: &Env,
    upstream: std::net::SocketAddr,
) -> (std::process::Child, String, String) {
    let log = env.dir.path().join("nofile.log");
    let cmd = format!(
        "ulimit -Sn 256 && exec '{BIN}' serve --config '{}' --data-dir '{}' --listen 127.0.0.1:0 --upstream http://{upstream}",
        env.config.display(),
        env.data.display()
    );
    let child = Command::new("sh")
        .args(["-c", &cmd])
        .env_remove("KEYGUARD_MASTER_KEY")
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("spawn");
    // The port it picked is in its "keyguard serving" line.
    let up = eventually(Duration::from_secs(30), || async {
        match serving_addr(&std::fs::read_to_string(&log).unwrap_or_default()) {
            Some(addr) => tokio::net::TcpStream::connect(addr).await.is_ok(),
            None => false,
        }
    })
    .await;
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(up, "gateway did not start: {text}");
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", child.id())).unwrap();
    let soft = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .unwrap()
        .to_owned();
    (child, text, soft)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_open_files_limit_is_raised_at_start_and_logged() {
    let hard = std::fs::read_to_string("/proc/self/limits")
        .unwrap()
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(4))
        .unwrap()
        .to_owned();
    let origin = Origin::start().await;
    let env = Env::new(Dialect::Zaif, |_| {});
    let (mut child, log, soft) = start_with_low_nofile(&env, origin.addr).await;
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(
        soft, hard,
        "soft limit not raised to the hard limit; log:\n{log}"
    );
    assert!(
        log.contains("raised the open-files limit") && log.contains("from=256"),
        "the log does not say so:\n{log}"
    );

    // Turned off, the limit stays as the operator set it.
    let env = Env::new(Dialect::Zaif, |c| {
        set(c, "overload.raise_open_files", false)
    });
    let (mut child, log, soft) = start_with_low_nofile(&env, origin.addr).await;
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(soft, "256", "{log}");
    assert!(!log.contains("raised the open-files limit"), "{log}");
}
