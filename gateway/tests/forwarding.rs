//! What the upstream receives, and what happens when it misbehaves: hop-by-hop and
//! client-nominated headers stripped, forged identity headers dropped, 502/504 mapping,
//! one audit event per request.

mod utils;

use std::sync::atomic::Ordering;
use std::time::Duration;

use utils::scenarios::{expect_denied, expect_forwarded, setup, setup_env};
use utils::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_and_connection_nominated_headers_stripped() {
    let d = Dialect::Zaif;
    let s = setup(d, &[KeySpec::full(d)]).await;
    let k = s.key().clone();
    let req = zaif::read(&k)
        .header("Connection", "keep-alive, X-Foo, x-bar")
        .header("X-Foo", "1")
        .header("X-Bar", "2")
        .header("Keep-Alive", "timeout=5")
        .header("Proxy-Connection", "keep-alive")
        .header("Proxy-Authorization", "Basic Zm9vOmJhcg==")
        .header("TE", "trailers")
        .header("Trailer", "X-Checksum")
        .header("X-End-To-End", "kept")
        .header("User-Agent", "keyguard-it/1.0");
    let rec = expect_forwarded(&s, &req, &k, "read").await;
    for h in [
        "x-foo",
        "x-bar",
        "keep-alive",
        "proxy-connection",
        "proxy-authorization",
        "te",
        "trailer",
    ] {
        assert!(!rec.has_header(h), "{h} reached the upstream: {rec:#?}");
    }
    for c in rec.header_all("connection") {
        assert!(
            !c.to_ascii_lowercase().contains("x-foo"),
            "client's Connection list forwarded: {c}"
        );
    }
    assert_eq!(rec.header("x-end-to-end").as_deref(), Some("kept"));
    assert_eq!(rec.header("user-agent").as_deref(), Some("keyguard-it/1.0"));
    assert_eq!(
        rec.header("content-type").as_deref(),
        Some("application/x-www-form-urlencoded")
    );

    // Nominating our own header must not strip the assertion we add.
    let req = zaif::read(&k).header("Connection", "X-Keyguard-Assertion, close");
    expect_forwarded(&s, &req, &k, "read").await;
}

/// The client cannot speak for the gateway: its `X-Keyguard-*`, forwarding and request-id
/// headers never reach the upstream; ours do, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_identity_headers_not_forwarded() {
    for d in [Dialect::Zaif, Dialect::Binance, Dialect::Kraken] {
        let s = setup(d, &[KeySpec::full(d)]).await;
        let k = s.key().clone();
        let forged_token = "eyJhbGciOiJub25lIn0.eyJraWQiOiJrZ19hZG1pbiJ9.";
        let req = withdraw_req(d, &k, WITHDRAW_ADDR)
            .header("X-Keyguard-Assertion", forged_token)
            .header("x-keyguard-assertion", "second-forgery")
            .header("X-Keyguard-Key-Id", "kg_admin")
            .header("X-Forwarded-For", "6.6.6.6")
            .header("X-Real-IP", "6.6.6.6")
            .header("X-Forwarded-Host", "evil.example")
            .header("Forwarded", "for=6.6.6.6;proto=https")
            .header("X-Forwarded-Proto", "https")
            .header("X-Request-Id", "client-chosen-id");
        let before = s.origin.count();
        let resp = s.gw.request(&req).await;
        resp.assert_forwarded_ok();
        let rec = s.origin.one_since(before);
        // check_forwarded verifies the single assertion with the gateway's public key.
        let claims = check_forwarded(d, &s.jwks, &rec, &k, "withdraw");
        let sent = rec.header_all("x-keyguard-assertion");
        assert!(
            !sent
                .iter()
                .any(|t| t == forged_token || t == "second-forgery"),
            "{d:?}: forged assertion forwarded"
        );
        assert!(!rec.has_header("x-keyguard-key-id"), "{d:?}: {rec:#?}");
        assert!(!rec.has_header("x-real-ip"), "{d:?}: {rec:#?}");
        assert!(!rec.has_header("x-forwarded-host"), "{d:?}: {rec:#?}");
        assert!(!rec.has_header("forwarded"), "{d:?}: {rec:#?}");
        assert!(!rec.has_header("x-forwarded-proto"), "{d:?}: {rec:#?}");
        assert_eq!(rec.header_all("x-forwarded-for"), ["127.0.0.2"], "{d:?}");
        let rid = rec.header("x-request-id").expect("x-request-id upstream");
        assert_ne!(rid, "client-chosen-id");
        assert_eq!(claims["jti"], rid.as_str(), "jti is the request id");
        assert_eq!(resp.header("x-request-id"), Some(rid.as_str()));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_down_is_502() {
    for d in [Dialect::Zaif, Dialect::Binance, Dialect::Kraken] {
        let env = Env::new(d, |_| {});
        let k = env.create_key(&KeySpec::full(d));
        let gw = env.start(dead_origin()).await;
        let r = gw.request(&read_req(d, &k)).await;
        r.assert_error(502, "upstream_unavailable");
        let r = gw.request(&withdraw_req(d, &k, WITHDRAW_ADDR)).await;
        r.assert_error(502, "upstream_unavailable");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_that_never_answers_is_504() {
    let d = Dialect::Kraken;
    let env = Env::new(d, |cfg| {
        set(cfg, "server.upstream_response_timeout_ms", 300)
    });
    let k = env.create_key(&KeySpec::full(d));
    let (addr, accepted, task) = silent_origin().await;
    let gw = env.start(addr).await;
    let r = gw.request(&read_req(d, &k)).await;
    r.assert_error(504, "upstream_timeout");
    assert!(
        accepted.load(Ordering::SeqCst) >= 1,
        "the gateway never connected"
    );
    // A public request times out the same way.
    let r = gw.request(&Req::new("GET", "/0/public/Time")).await;
    r.assert_error(504, "upstream_timeout");
    task.abort();
}

/// An upstream that sends its response head and part of the body, then stalls: the
/// gateway gives up after the response timeout and aborts the client's connection, so
/// the client sees a truncated response instead of waiting for as long as it will.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_stalling_mid_body_is_cut_off() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let d = Dialect::Kraken;
    let env = Env::new(d, |cfg| {
        set(cfg, "server.upstream_response_timeout_ms", 300)
    });
    let k = env.create_key(&KeySpec::full(d));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let origin = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((mut s, _)) = listener.accept().await {
            let mut buf = vec![0u8; 65536];
            let _ = s.read(&mut buf).await;
            let _ = s
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"error\":[],")
                .await;
            held.push(s);
        }
    });
    let gw = env.start(addr).await;
    let got = gw.send(ALLOWED_IP, &read_req(d, &k)).await;
    let e = got.expect_err("a truncated body must not read as a response");
    assert_eq!(
        e, "closed inside body",
        "the gateway kept the connection open: {e}"
    );
    origin.abort();
}

/// Every request, allowed or denied, becomes one audit line with the documented fields,
/// and no secret, signature or token is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_log_one_event_per_request_without_secrets() {
    let d = Dialect::Zaif;
    let s = setup(d, &[KeySpec::full(d)]).await;
    let k = s.key().clone();
    let ok = zaif::read(&k);
    let sign = ok.header_value("Sign").unwrap();
    let rec = expect_forwarded(&s, &ok, &k, "read").await;
    let token = rec.header("x-keyguard-assertion").unwrap();
    let denied = zaif::withdraw(&k, OTHER_ADDR);
    let resp = expect_denied(&s, &denied, 403, "address_not_allowed").await;
    let denied_id = resp.error_object().unwrap()["request_id"]
        .as_str()
        .unwrap()
        .to_owned();

    let path = s.env.data.join("audit.jsonl");
    let mut lines: Vec<serde_json::Value> = Vec::new();
    let mut text = String::new();
    let found = eventually(Duration::from_secs(5), || {
        text = std::fs::read_to_string(&path).unwrap_or_default();
        let n = text.lines().count();
        async move { n >= 2 }
    })
    .await;
    assert!(found, "audit log has {:?} after 5 s", text);
    for l in text.lines() {
        lines.push(serde_json::from_str(l).expect("audit line is JSON"));
    }
    assert_eq!(lines.len(), 2, "one line per request: {text}");
    for field in [
        "ts",
        "request_id",
        "key_id",
        "account",
        "client_ip",
        "dialect",
        "action",
        "decision",
        "code",
        "status",
        "latency_us",
    ] {
        assert!(
            lines[0].get(field).is_some(),
            "audit field {field} missing: {}",
            lines[0]
        );
    }
    assert_eq!(lines[0]["decision"], "allow");
    assert_eq!(lines[0]["status"], 200);
    assert_eq!(lines[0]["key_id"], k.key_id.as_str());
    assert_eq!(lines[0]["client_ip"], "127.0.0.2");
    assert_eq!(lines[0]["dialect"], "zaif");
    assert_eq!(lines[0]["action"], "read");
    assert_eq!(lines[1]["decision"], "deny");
    assert_eq!(lines[1]["code"], "address_not_allowed");
    assert_eq!(lines[1]["status"], 403);
    assert_eq!(lines[1]["request_id"], denied_id.as_str());
    for secret in [k.secret.as_str(), sign.as_str(), token.as_str()] {
        assert!(
            !text.contains(secret),
            "audit log leaks a secret/signature/token"
        );
    }
}

/// A public endpoint on a gateway with no keys at all still works, and the key cache
/// picks up a key created while the gateway runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_created_while_running_is_picked_up() {
    let d = Dialect::Binance;
    let s = setup_env(Env::new(d, |_| {}), &[]).await;
    let k = s.env.create_key(&KeySpec::full(d));
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    loop {
        let r = s.gw.request(&binance::read(&k)).await;
        if r.status == 200 || std::time::Instant::now() > deadline {
            assert_eq!(r.status, 200, "new key not loaded: {}", r.text());
            break;
        }
        assert_eq!(r.code().as_deref(), Some("unknown_key"), "{}", r.text());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Behind a trusted proxy the client is the rightmost untrusted `X-Forwarded-For` hop;
/// the header is ignored from anyone else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_ip_through_a_trusted_proxy() {
    let d = Dialect::Kraken;
    let env = Env::new(d, |cfg| {
        set(
            cfg,
            "server.trusted_proxies",
            vec![format!("{OTHER_IP}/32")],
        );
    });
    let s = setup_env(env, &[KeySpec::full(d)]).await;
    let k = s.key().clone();
    // The proxy (127.0.0.3) forwards for the allowed client.
    let req = kraken::read(&k).header("X-Forwarded-For", ALLOWED_IP.to_string());
    let before = s.origin.count();
    let resp = s.gw.request_from(OTHER_IP, &req).await;
    resp.assert_forwarded_ok();
    let rec = s.origin.one_since(before);
    let claims = check_forwarded(d, &s.jwks, &rec, &k, "read");
    assert_eq!(claims["cip"], "127.0.0.2");
    assert_eq!(rec.header_all("x-forwarded-for"), ["127.0.0.2"]);
    // A client prepending the allowed IP itself: the rightmost untrusted hop decides.
    let req = kraken::read(&k).header("X-Forwarded-For", format!("{ALLOWED_IP}, 127.0.0.9"));
    scenarios::expect_denied_from(&s, OTHER_IP, &req, 403, "ip_not_allowed").await;
    // The proxy itself, without a header, is not the allowed client.
    scenarios::expect_denied_from(&s, OTHER_IP, &kraken::read(&k), 403, "ip_not_allowed").await;
    // A malformed hop is refused, not guessed around.
    let req = kraken::read(&k).header("X-Forwarded-For", "not-an-ip");
    scenarios::expect_denied_from(&s, OTHER_IP, &req, 400, "invalid_header").await;
}

/// A body that stops arriving (slowloris) is refused once the body read timeout passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_body_times_out() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let d = Dialect::Zaif;
    let env = Env::new(d, |cfg| set(cfg, "server.body_read_timeout_ms", 300));
    let s = setup_env(env, &[KeySpec::full(d)]).await;
    let k = s.key().clone();
    let req = zaif::read(&k);
    let raw = req.to_bytes(&s.gw.addr.to_string());
    // Everything but the last 5 bytes of the body; the connection stays open.
    let partial = &raw[..raw.len() - 5];
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind(std::net::SocketAddr::new(ALLOWED_IP.into(), 0))
        .unwrap();
    let mut stream = sock.connect(s.gw.addr).await.unwrap();
    stream.write_all(partial).await.unwrap();
    let mut got = Vec::new();
    let read = tokio::time::timeout(IO_TIMEOUT, async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    got.extend_from_slice(&buf[..n]);
                    if got.windows(4).any(|w| w == b"\r\n\r\n") && got.ends_with(b"}}") {
                        break;
                    }
                }
            }
        }
    })
    .await;
    assert!(
        read.is_ok(),
        "no answer to a stalled body within {IO_TIMEOUT:?}"
    );
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("\"body_timeout\""), "{text}");
    assert_eq!(s.origin.count(), 0);
}

/// Nonces survive a crash: a request the upstream saw cannot be replayed after the
/// gateway is killed (SIGKILL) and restarted on the same data directory. A Binance
/// signature from before the restart is refused as well.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_protection_survives_a_crash() {
    for d in [Dialect::Zaif, Dialect::Kraken, Dialect::Binance] {
        let env = Env::new(d, |_| {});
        let k = env.create_key(&KeySpec::full(d));
        let origin = Origin::start().await;
        let mut gw = env.start(origin.addr).await;
        let req = read_req(d, &k);
        gw.request(&req).await.assert_forwarded_ok();
        gw.kill();
        let gw = env.start(origin.addr).await;
        let resp = gw.request(&req).await;
        let want = match d {
            Dialect::Binance => "stale_timestamp",
            _ => "invalid_nonce",
        };
        resp.assert_error(401, want);
        assert_eq!(origin.count(), 1, "{d:?}: replay after restart forwarded");
        // Fresh requests still work.
        gw.request(&read_req(d, &k)).await.assert_forwarded_ok();
    }
}

/// The same signed request sent many times at once is forwarded exactly once: the
/// nonce / seen-signature check is atomic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_replays_forwarded_exactly_once() {
    for d in [Dialect::Zaif, Dialect::Binance, Dialect::Kraken] {
        let s = setup(d, &[KeySpec::full(d)]).await;
        let k = s.key().clone();
        let req = withdraw_req(d, &k, WITHDRAW_ADDR);
        let sends = (0..16).map(|_| s.gw.request(&req));
        let resps = futures_join_all(sends).await;
        let ok = resps.iter().filter(|r| r.status == 200).count();
        let want = if d == Dialect::Binance {
            "replay"
        } else {
            "invalid_nonce"
        };
        // The example config allows 5 withdrawals a minute per key, so some copies are
        // refused by the rate limit before the replay check; the rest must be replays.
        let mut replays = 0;
        for r in resps.iter().filter(|r| r.status != 200) {
            if r.status == 429 {
                r.assert_error(429, "rate_limited");
            } else {
                r.assert_error(401, want);
                replays += 1;
            }
        }
        assert!(replays > 0, "{d:?}: the replay check was never reached");
        assert_eq!(ok, 1, "{d:?}: {ok} of 16 identical requests forwarded");
        assert_eq!(s.origin.count(), 1, "{d:?}");
    }
}

/// Polls all futures concurrently (no extra dependency for `join_all`).
async fn futures_join_all<F: std::future::Future>(futs: impl Iterator<Item = F>) -> Vec<F::Output> {
    let mut set = Vec::new();
    for f in futs {
        set.push(Box::pin(f));
    }
    let mut out: Vec<Option<F::Output>> = set.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (i, f) in set.iter_mut().enumerate() {
            if out[i].is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => out[i] = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    out.into_iter().map(|o| o.expect("ready")).collect()
}

/// Headers that never finish arriving (slowloris) do not hold a connection forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_headers_time_out() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let d = Dialect::Zaif;
    let env = Env::new(d, |cfg| set(cfg, "server.header_read_timeout_ms", 300));
    let s = setup_env(env, &[]).await;
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind(std::net::SocketAddr::new(ALLOWED_IP.into(), 0))
        .unwrap();
    let mut stream = sock.connect(s.gw.addr).await.unwrap();
    stream
        .write_all(b"POST /tapi HTTP/1.1\r\nHost: x\r\nX-Slow: 1")
        .await
        .unwrap();
    let mut got = Vec::new();
    let closed = tokio::time::timeout(IO_TIMEOUT, stream.read_to_end(&mut got)).await;
    assert!(
        closed.is_ok(),
        "connection with stalled headers still open after {IO_TIMEOUT:?}"
    );
    let text = String::from_utf8_lossy(&got);
    assert!(
        text.is_empty() || text.starts_with("HTTP/1.1 408"),
        "{text}"
    );
    assert_eq!(s.origin.count(), 0);
}

/// Binance carries its signature in the query string: the audit log must not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_log_keeps_no_query_or_signature() {
    let d = Dialect::Binance;
    let s = setup(d, &[KeySpec::full(d)]).await;
    let k = s.key().clone();
    let ok = binance::read(&k);
    expect_forwarded(&s, &ok, &k, "read").await;
    let bad = scenarios::corrupt_signature(d, &binance::read(&k));
    expect_denied(&s, &bad, 401, "invalid_signature").await;
    let path = s.env.data.join("audit.jsonl");
    let mut text = String::new();
    let found = eventually(Duration::from_secs(5), || {
        text = std::fs::read_to_string(&path).unwrap_or_default();
        let n = text.lines().count();
        async move { n >= 2 }
    })
    .await;
    assert!(found, "audit log has {text:?} after 5 s");
    for req in [&ok, &bad] {
        let (_, query) = req.target.split_once('?').unwrap();
        let sig = query.rsplit_once("signature=").unwrap().1;
        assert!(!text.contains(sig), "signature in the audit log: {text}");
        assert!(
            !text.contains(query),
            "query string in the audit log: {text}"
        );
    }
    assert!(!text.contains(&k.secret));
    let first: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert_eq!(first["decision"], "allow");
    let second: serde_json::Value = serde_json::from_str(text.lines().nth(1).unwrap()).unwrap();
    assert_eq!(second["code"], "invalid_signature");
    assert_eq!(
        second["key_id"],
        k.key_id.as_str(),
        "the key is known even when the signature fails"
    );
}

/// SIGTERM drains and exits (nothing may keep the audit queue open), and the audit line of
/// a request answered before the signal is in the file afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_exits_and_keeps_audit_lines() {
    let d = Dialect::Zaif;
    let s = setup(d, &[KeySpec::full(d)]).await;
    let k = s.key().clone();
    let mut gw = s.gw;
    gw.request(&read_req(d, &k)).await.assert_forwarded_ok();
    // Let the admin-event poller and the key refresher run at least once.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let status = gw
        .terminate(Duration::from_secs(15))
        .expect("keyguard did not exit within 15 s of SIGTERM");
    assert!(status.success(), "exit status {status}");
    let audit = std::fs::read_to_string(s.env.data.join("audit.jsonl")).expect("audit log");
    let requests: Vec<serde_json::Value> = audit
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .filter(|v: &serde_json::Value| v.get("kind").is_none())
        .collect();
    assert_eq!(requests.len(), 1, "{audit}");
    assert_eq!(requests[0]["decision"], "allow");
}

/// An answered request's audit line is already in the file: killing the gateway (SIGKILL,
/// no chance to flush anything) right after the last answer loses none of them, allowed
/// or denied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_lines_of_answered_requests_survive_sigkill() {
    let d = Dialect::Zaif;
    let s = setup(d, &[KeySpec::full(d)]).await;
    let k = s.key().clone();
    let mut gw = s.gw;
    let mut answered = Vec::new();
    for i in 0..40 {
        let resp = if i % 2 == 0 {
            let r = gw.request(&read_req(d, &k)).await;
            r.assert_forwarded_ok();
            r
        } else {
            let r = gw
                .request(&read_req(d, &k).replace_header("Sign", "00"))
                .await;
            r.assert_error(401, "invalid_signature");
            r
        };
        let id = resp
            .header("x-request-id")
            .expect("x-request-id")
            .to_owned();
        answered.push((id, resp.status));
    }
    gw.kill();
    let audit = std::fs::read_to_string(s.env.data.join("audit.jsonl")).expect("audit log");
    let logged: std::collections::HashMap<String, u64> = audit
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("whole JSON line"))
        .filter(|v| v.get("kind").is_none())
        .map(|v| {
            (
                v["request_id"].as_str().unwrap().to_owned(),
                v["status"].as_u64().unwrap(),
            )
        })
        .collect();
    for (id, status) in &answered {
        assert_eq!(
            logged.get(id),
            Some(&u64::from(*status)),
            "{id} missing: {audit}"
        );
    }
    assert_eq!(logged.len(), answered.len());
}

/// Two gateways on one data dir would each trust their own nonces and delete each other's
/// nonce journal, so the second refuses to start; the lock dies with the first process,
/// however it ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_gateway_on_the_same_data_dir_refuses_to_start() {
    let d = Dialect::Zaif;
    let env = Env::new(d, |_| {});
    let k = env.create_key(&KeySpec::full(d));
    let origin = Origin::start().await;
    let mut gw = env.start(origin.addr).await;
    let upstream = format!("http://{}", origin.addr);
    let second = env.run_with_store(
        &["serve"],
        &["--listen", "127.0.0.1:0", "--upstream", &upstream],
    );
    assert!(
        !second.status.success(),
        "second gateway started: {second:?}"
    );
    assert!(
        second
            .stderr
            .contains("another keyguard serve is using the data dir"),
        "{}",
        second.stderr
    );
    gw.request(&read_req(d, &k)).await.assert_forwarded_ok();
    gw.kill();
    let gw = env.start(origin.addr).await;
    gw.request(&read_req(d, &k)).await.assert_forwarded_ok();
}

/// `alg = "EdDSA"`: the same checks pass with Ed25519 assertions, verified from the JWKS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eddsa_assertions_verify_from_the_jwks() {
    for d in [Dialect::Zaif, Dialect::Binance, Dialect::Kraken] {
        let env = Env::new(d, |doc| set(doc, "assertion.alg", "EdDSA"));
        let s = setup_env(env, &[KeySpec::full(d)]).await;
        assert!(s.jwks.contains("\"OKP\""), "{}", s.jwks);
        let k = s.key().clone();
        let rec = expect_forwarded(&s, &read_req(d, &k), &k, "read").await;
        let token = &rec.header_all("x-keyguard-assertion")[0];
        let header = jsonwebtoken::decode_header(token).unwrap();
        assert_eq!(header.alg, jsonwebtoken::Algorithm::EdDSA);
    }
}

/// `assertion-key --rotate` on a running gateway: within a second it signs with the new
/// key, and the JWKS printed then verifies tokens of both the old and the new key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_assertion_key_is_used_within_a_second() {
    let d = Dialect::Binance;
    let s = setup(d, &[KeySpec::full(d)]).await;
    let k = s.key().clone();
    let kid_of = |rec: &Recorded| {
        let token = &rec.header_all("x-keyguard-assertion")[0];
        jsonwebtoken::decode_header(token).unwrap().kid.unwrap()
    };
    let before = expect_forwarded(&s, &read_req(d, &k), &k, "read").await;
    let old_kid = kid_of(&before);
    let rotated = s
        .env
        .run_with_store(&["assertion-key"], &["--rotate"])
        .ok()
        .stdout;
    let deadline = std::time::Instant::now() + Duration::from_millis(1500);
    let after = loop {
        let n = s.origin.count();
        s.gw.request(&read_req(d, &k)).await.assert_forwarded_ok();
        let rec = s.origin.one_since(n);
        if kid_of(&rec) != old_kid {
            break rec;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still signing with {old_kid} 1.5 s after the rotation"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    verify_assertion(&rotated, &after);
    verify_assertion(&rotated, &before);
}
