//! TLS and HTTP/2 through the real binary: HTTPS on the exchange-facing and admin
//! listeners, HTTPS to the upstream with a configured CA and a client certificate, HTTP/2
//! over ALPN and prior knowledge classified exactly as HTTP/1, and the HTTP/2 floods
//! refused. Certificates are made in each test (rcgen); nothing private is committed.

mod utils;

use std::net::Ipv4Addr;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use utils::scenarios::{setup_env, Setup};
use utils::tls::{raw, send_tls, tls_client_config, Pki, H2};
use utils::*;

/// `[tls.listen]` with a certificate for 127.0.0.1 from a fresh CA in the env's dir.
fn with_listener_tls(cfg: &mut toml::Table, pki: &Pki) {
    let leaf = pki.issue("gateway", &["127.0.0.1", "localhost"], false);
    set(
        cfg,
        "tls.listen.cert_file",
        leaf.cert.to_string_lossy().into_owned(),
    );
    set(
        cfg,
        "tls.listen.key_file",
        leaf.key.to_string_lossy().into_owned(),
    );
}

fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("keyguard-tls-")
        .tempdir()
        .expect("tempdir")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_listener_serves_https_and_refuses_plain_http() {
    let certs = tempdir();
    let pki = Pki::new(certs.path(), "listen");
    let d = Dialect::Zaif;
    let env = Env::new(d, |c| with_listener_tls(c, &pki));
    let k = env.create_key(&KeySpec::full(d));
    let origin = Origin::start().await;
    let (gw, admin) = env.start_with_admin(origin.addr).await;
    let jwks = env.assertion_jwks();
    let s = Setup {
        gw,
        origin,
        env,
        jwks,
        keys: vec![k.clone()],
    };
    let cfg = tls_client_config(&pki, &[b"http/1.1"]);
    let raw_req = zaif::read(&k).to_bytes(&s.gw.addr.to_string());
    let resp = send_tls(s.gw.addr, ALLOWED_IP, cfg.clone(), &raw_req)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", s.gw.log()));
    resp.assert_forwarded_ok();
    // Refusals come back over TLS with their code, like over plain HTTP.
    let resp = send_tls(s.gw.addr, OTHER_IP, cfg, &zaif::read(&k).to_bytes("gw"))
        .await
        .unwrap();
    resp.assert_error(403, "ip_not_allowed");
    // Plain HTTP on the TLS port gets no HTTP answer.
    let before = s.origin.count();
    let plain = s.gw.send(ALLOWED_IP, &zaif::read(&k)).await;
    assert!(
        plain.is_err(),
        "plain HTTP answered on the TLS port: {plain:?}"
    );
    s.origin
        .assert_unchanged(before, "plain HTTP on the TLS port");
    // A client that does not trust the gateway's CA cannot connect.
    let other = Pki::new(certs.path(), "other");
    let r = send_tls(
        s.gw.addr,
        ALLOWED_IP,
        tls_client_config(&other, &[b"http/1.1"]),
        &zaif::read(&k).to_bytes("gw"),
    )
    .await;
    assert!(r.is_err(), "a certificate from another CA verified: {r:?}");
    // Both failed handshakes are counted.
    let get = b"GET /metrics HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n";
    let counted = eventually(Duration::from_secs(10), || async {
        send_raw(admin, Ipv4Addr::LOCALHOST, get)
            .await
            .is_ok_and(|r| {
                r.text().lines().any(|l| {
                    l.strip_prefix("keyguard_tls_handshake_failures_total ")
                        .and_then(|v| v.parse::<f64>().ok())
                        .is_some_and(|v| v >= 2.0)
                })
            })
    })
    .await;
    assert!(
        counted,
        "keyguard_tls_handshake_failures_total did not reach 2"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_certificate_is_a_located_config_error() {
    let certs = tempdir();
    let bogus = certs.path().join("bogus.pem");
    std::fs::write(&bogus, "not a certificate\n").unwrap();
    let env = Env::new(Dialect::Zaif, |c| {
        set(
            c,
            "tls.listen.cert_file",
            bogus.to_string_lossy().into_owned(),
        );
        set(
            c,
            "tls.listen.key_file",
            bogus.to_string_lossy().into_owned(),
        );
    });
    let run = env.run(&["check-config", "--config", env.config.to_str().unwrap()]);
    assert!(
        !run.status.success(),
        "check-config accepted a bogus certificate"
    );
    assert!(
        run.stderr.contains("keyguard.toml:") && run.stderr.contains("tls.listen.cert_file"),
        "error does not name file, line and key: {}",
        run.stderr
    );
    let run = env.run(&["check-config", "--config", env.config.to_str().unwrap()]);
    assert!(
        run.stderr.contains("holds no certificate"),
        "{}",
        run.stderr
    );
}

/// An origin over TLS that requires a client certificate from `client_ca`.
async fn mtls_origin(dir: &std::path::Path) -> (Origin, Pki, Pki) {
    let server_ca = Pki::new(dir, "exchange");
    let client_ca = Pki::new(dir, "gateway-clients");
    let leaf = server_ca.issue("exchange", &["127.0.0.1"], false);
    let origin =
        Origin::start_with_tls(Some(utils::tls::server_acceptor(&leaf, Some(&client_ca)))).await;
    (origin, server_ca, client_ca)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_upstream_with_a_configured_ca_and_a_client_certificate() {
    let certs = tempdir();
    let (origin, server_ca, client_ca) = mtls_origin(certs.path()).await;
    let client = client_ca.issue("gw-client", &["keyguard"], true);
    let d = Dialect::Zaif;
    let env = Env::new(d, |c| {
        set(
            c,
            "tls.upstream.ca_file",
            server_ca.ca_file.to_string_lossy().into_owned(),
        );
        set(
            c,
            "tls.upstream.client_cert_file",
            client.cert.to_string_lossy().into_owned(),
        );
        set(
            c,
            "tls.upstream.client_key_file",
            client.key.to_string_lossy().into_owned(),
        );
    });
    let k = env.create_key(&KeySpec::full(d));
    let gw = env
        .start_with_upstream(&format!("https://{}", origin.addr))
        .await;
    let before = origin.count();
    gw.request(&zaif::read(&k)).await.assert_forwarded_ok();
    let rec = origin.one_since(before);
    assert!(rec.has_header("x-keyguard-assertion"));
    assert_eq!(rec.header("host"), Some(origin.addr.to_string()));
    drop(gw);

    // Without the client certificate the exchange refuses the gateway: 502, never sent.
    let env = Env::new(d, |c| {
        set(
            c,
            "tls.upstream.ca_file",
            server_ca.ca_file.to_string_lossy().into_owned(),
        );
    });
    let k = env.create_key(&KeySpec::full(d));
    let gw = env
        .start_with_upstream(&format!("https://{}", origin.addr))
        .await;
    let before = origin.count();
    gw.request(&zaif::read(&k))
        .await
        .assert_error(502, "upstream_unavailable");
    origin.assert_unchanged(before, "a gateway without its client certificate");
    drop(gw);

    // With the system roots (no ca_file), the test CA is not trusted: 502 as well.
    let env = Env::new(d, |c| {
        set(
            c,
            "tls.upstream.client_cert_file",
            client.cert.to_string_lossy().into_owned(),
        );
        set(
            c,
            "tls.upstream.client_key_file",
            client.key.to_string_lossy().into_owned(),
        );
    });
    let k = env.create_key(&KeySpec::full(d));
    let gw = env
        .start_with_upstream(&format!("https://{}", origin.addr))
        .await;
    gw.request(&zaif::read(&k))
        .await
        .assert_error(502, "upstream_unavailable");
    assert!(
        gw.log().contains("TLS handshake"),
        "the log says why: {}",
        gw.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_listener_serves_https() {
    let certs = tempdir();
    let pki = Pki::new(certs.path(), "admin");
    let leaf = pki.issue("admin", &["127.0.0.1"], false);
    let env = Env::new(Dialect::Zaif, |c| {
        set(
            c,
            "tls.admin.cert_file",
            leaf.cert.to_string_lossy().into_owned(),
        );
        set(
            c,
            "tls.admin.key_file",
            leaf.key.to_string_lossy().into_owned(),
        );
    });
    let origin = Origin::start().await;
    let (_gw, admin) = env.start_with_admin(origin.addr).await;
    let cfg = tls_client_config(&pki, &[b"http/1.1"]);
    let get = b"GET /healthz HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n";
    let mut resp = None;
    // The admin listener binds before the exchange-facing one, but poll to be safe.
    for _ in 0..100 {
        if let Ok(r) = send_tls(admin, Ipv4Addr::LOCALHOST, cfg.clone(), get).await {
            resp = Some(r);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let resp = resp.expect("admin listener answers over TLS");
    assert_eq!((resp.status, resp.text().as_str()), (200, "ok\n"));
    let plain = send_raw(admin, Ipv4Addr::LOCALHOST, get).await;
    assert!(
        plain.is_err(),
        "plain HTTP answered on the admin TLS port: {plain:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_over_alpn_and_over_prior_knowledge() {
    let certs = tempdir();
    let pki = Pki::new(certs.path(), "h2");
    let d = Dialect::Zaif;
    let s = setup_env(
        Env::new(d, |c| with_listener_tls(c, &pki)),
        &[KeySpec::full(d)],
    )
    .await;
    let k = s.key().clone();
    let mut h2 = H2::tls(s.gw.addr, ALLOWED_IP, &pki)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", s.gw.log()));
    let before = s.origin.count();
    // Several requests on one connection, the assertion made for each.
    for _ in 0..3 {
        h2.send(&zaif::read(&k))
            .await
            .unwrap()
            .assert_forwarded_ok();
    }
    let rec = s.origin.records()[before].clone();
    let claims = verify_assertion(&s.jwks, &rec);
    assert_eq!(claims["act"], "read");
    assert_eq!(rec.header("host"), Some(s.origin.addr.to_string()));
    h2.send(&zaif::read(&k).target("/tapi/../tapi"))
        .await
        .unwrap()
        .assert_error(400, "invalid_path");
    drop(s);

    // Cleartext with prior knowledge, when configured.
    let s = setup_env(
        Env::new(d, |c| set(c, "http2.prior_knowledge", true)),
        &[KeySpec::full(d)],
    )
    .await;
    let k = s.key().clone();
    let mut h2 = H2::cleartext(s.gw.addr, ALLOWED_IP).await.unwrap();
    h2.send(&zaif::read(&k))
        .await
        .unwrap()
        .assert_forwarded_ok();
    // HTTP/1 still works on the same port.
    s.gw.request(&zaif::read(&k)).await.assert_forwarded_ok();
    drop(s);

    // Without it, an HTTP/2 preface on the cleartext port is refused.
    let s = setup_env(Env::new(d, |_| {}), &[KeySpec::full(d)]).await;
    let k = s.key().clone();
    let refused = match H2::cleartext(s.gw.addr, ALLOWED_IP).await {
        Ok(mut h2) => h2.send(&zaif::read(&k)).await.is_err(),
        Err(_) => true,
    };
    assert!(
        refused,
        "prior-knowledge HTTP/2 served although not configured"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_h2c_is_refused() {
    let d = Dialect::Zaif;
    let s = setup_env(Env::new(d, |_| {}), &[KeySpec::full(d)]).await;
    let k = s.key().clone();
    let before = s.origin.count();
    let req = zaif::read(&k)
        .header("Connection", "Upgrade, HTTP2-Settings")
        .header("Upgrade", "h2c")
        .header("HTTP2-Settings", "AAMAAABkAAQAAP__");
    s.gw.request(&req).await.assert_error(400, "invalid_header");
    let req = zaif::read(&k).header("Upgrade", "websocket");
    s.gw.request(&req).await.assert_error(400, "invalid_header");
    s.origin.assert_unchanged(before, "upgrade requests");
    s.gw.request(&zaif::read(&k)).await.assert_forwarded_ok();
}

/// The parsing corpus: requests the strict parser must refuse (each with its code) and
/// requests it must forward, for three dialects. Built fresh per call so signed requests
/// carry fresh nonces and timestamps.
fn corpus(d: Dialect, k: &TestKey, gw: &str) -> Vec<(String, Req)> {
    let mut out: Vec<(String, Req)> = Vec::new();
    let mut add = |what: &str, r: Req| out.push((format!("{}: {what}", d.name()), r));
    let read = read_req(d, k);
    let path = read.target.clone();
    add("read", read_req(d, k));
    add("trade", trade_req(d, k));
    add("withdraw", withdraw_req(d, k, WITHDRAW_ADDR));
    add(
        "withdraw to another address",
        withdraw_req(d, k, OTHER_ADDR),
    );
    for (what, target) in [
        ("dot segment", format!("{path}/../x")),
        ("encoded dot segment", format!("{path}/%2e%2e/x")),
        ("double slash", format!("/{path}")),
        ("encoded slash", path.replacen('/', "/%2F", 2)),
        ("encoded backslash", format!("{path}%5c")),
        ("path parameter", format!("{path};x=1")),
        ("encoded NUL", format!("{path}%00")),
        ("non-UTF-8", format!("{path}%ff")),
        ("double encoding", format!("{path}%252e")),
        ("unknown endpoint", "/not/an/endpoint".to_owned()),
    ] {
        add(what, read_req(d, k).target(&target));
    }
    add(
        "absolute form for another host",
        read_req(d, k).target(&format!("http://evil.example{path}")),
    );
    add(
        "absolute form for this host",
        read_req(d, k).target(&format!("http://{gw}{path}")),
    );
    add(
        "method override header",
        read_req(d, k).header("X-HTTP-Method-Override", "DELETE"),
    );
    add("HTAB in a header", read_req(d, k).header("X-Note", "a\tb"));
    add(
        "text/plain body",
        read_req(d, k).replace_header("Content-Type", "text/plain"),
    );
    add(
        "body over the limit",
        read_req(d, k).body(vec![b'a'; 70_000]),
    );
    add(
        "unsupported method",
        Req {
            method: "PATCH".into(),
            ..read_req(d, k)
        },
    );
    let auth = client_auth_headers(d)[0];
    let key_value = read_req(d, k).header_value(auth);
    if let Some(v) = key_value {
        add("duplicate auth header", read_req(d, k).header(auth, &v));
        add(
            "underscore twin of an auth header",
            read_req(d, k).header(&auth.replace('-', "_"), &v),
        );
    }
    let r = read_req(d, k);
    let bad_sig = match client_auth_headers(d).get(1) {
        Some(sig) => r.replace_header(sig, "00"),
        // Binance signs in the query: `…&signature=<hex>` last.
        None => {
            let cut = r.target.find("signature=").expect("signature in query");
            let target = format!("{}signature=00", &r.target[..cut]);
            r.target(&target)
        }
    };
    add("bad signature", bad_sig);
    match d {
        Dialect::Zaif => {
            add(
                "duplicate form key",
                zaif::signed(
                    k,
                    &zaif::body("get_info2", &next_nonce().to_string(), &[("nonce", "1")]),
                ),
            );
            add(
                "_method parameter",
                zaif::signed(
                    k,
                    &zaif::body(
                        "get_info2",
                        &next_nonce().to_string(),
                        &[("_method", "DELETE")],
                    ),
                ),
            );
        }
        Dialect::Binance => {
            let ts = now_ms().to_string();
            add(
                "duplicate query key",
                binance::signed_in_query(
                    k,
                    "GET",
                    "/api/v3/account",
                    &format!("timestamp={ts}&timestamp={ts}"),
                ),
            );
            add(
                "semicolon separator",
                binance::signed_in_query(
                    k,
                    "GET",
                    "/api/v3/account",
                    &format!("timestamp={ts};x=1"),
                ),
            );
        }
        Dialect::Kraken => {
            let n = next_nonce().to_string();
            add(
                "duplicate JSON key",
                kraken::signed_json(
                    k,
                    "/0/private/Balance",
                    &n,
                    &format!("{{\"nonce\":\"{n}\",\"nonce\":\"{n}\"}}"),
                ),
            );
            let n = next_nonce().to_string();
            add(
                "JSON with a non-standard number",
                kraken::signed_json(
                    k,
                    "/0/private/Balance",
                    &n,
                    &format!("{{\"nonce\":\"{n}\",\"x\":01}}"),
                ),
            );
        }
    }
    out
}

fn outcome(r: &Result<Resp, String>) -> (u16, Option<String>) {
    match r {
        Ok(resp) => (resp.status, resp.code()),
        Err(_) => (0, None),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_classifies_the_parsing_corpus_exactly_like_http1() {
    let certs = tempdir();
    for d in [Dialect::Zaif, Dialect::Binance, Dialect::Kraken] {
        let pki = Pki::new(certs.path(), d.name());
        // Limits and bans off: the corpus is sent twice and must meet the same gateway.
        let env = Env::new(d, |c| {
            with_listener_tls(c, &pki);
            c.remove("limits");
            set(c, "anomaly.auth_failures.enabled", false);
        });
        let s: Setup = setup_env(env, &[KeySpec::full(d)]).await;
        let k = s.key().clone();
        let gw = s.gw.addr.to_string();
        let h1_cfg = tls_client_config(&pki, &[b"http/1.1"]);
        let mut h2 = H2::tls(s.gw.addr, ALLOWED_IP, &pki).await.unwrap();
        let n = corpus(d, &k, &gw).len();
        let mut compared = 0;
        let mut codes = std::collections::BTreeSet::new();
        for i in 0..n {
            // Each request is built just before it is sent, so nonces keep increasing.
            let (what, r1) = corpus(d, &k, &gw).swap_remove(i);
            let r1 = &r1;
            let before = s.origin.count();
            let over_h1 = send_tls(s.gw.addr, ALLOWED_IP, h1_cfg.clone(), &r1.to_bytes(&gw)).await;
            let forwarded_h1 = s.origin.count() - before;
            let (_, r2) = corpus(d, &k, &gw).swap_remove(i);
            let before = s.origin.count();
            let over_h2 = h2.send(&r2).await;
            let forwarded_h2 = s.origin.count() - before;
            if over_h2.is_err() {
                // A stream error ends nothing else, but start clean for the next case.
                h2 = H2::tls(s.gw.addr, ALLOWED_IP, &pki).await.unwrap();
            }
            assert_eq!(
                (outcome(&over_h1), forwarded_h1),
                (outcome(&over_h2), forwarded_h2),
                "{what}: HTTP/1 and HTTP/2 disagree\nh1: {over_h1:?}\nh2: {over_h2:?}"
            );
            codes.insert(outcome(&over_h1).1);
            compared += 1;
        }
        // The corpus exercises many rules, not one refusal over and over.
        assert!(codes.len() >= 8, "{}: only {codes:?}", d.name());
        assert_eq!(compared, n);
        // The corpus is not all refusals: the controls were forwarded.
        let forwarded = s.origin.count();
        assert!(forwarded >= 6, "{}: only {forwarded} forwarded", d.name());
    }
}

/// A cleartext prior-knowledge connection, preface and empty SETTINGS sent.
async fn raw_h2(s: &Setup) -> tokio::net::TcpStream {
    let mut c = tokio::net::TcpStream::connect(s.gw.addr).await.unwrap();
    c.write_all(raw::PREFACE).await.unwrap();
    c.write_all(&raw::frame(raw::SETTINGS, 0, 0, &[]))
        .await
        .unwrap();
    c
}

async fn h2_setup(tweak: impl FnOnce(&mut toml::Table)) -> Setup {
    let d = Dialect::Zaif;
    setup_env(
        Env::new(d, |c| {
            set(c, "http2.prior_knowledge", true);
            c.remove("limits");
            tweak(c);
        }),
        &[KeySpec::full(d)],
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_connection_specific_headers_and_control_bytes_are_refused() {
    let s = h2_setup(|_| {}).await;
    let auth = s.gw.addr.to_string();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "connection",
            raw::get("/api/1/ticker/btc_jpy", &auth, &[(b"connection", b"close")]),
        ),
        (
            "transfer-encoding",
            raw::get(
                "/api/1/ticker/btc_jpy",
                &auth,
                &[(b"transfer-encoding", b"chunked")],
            ),
        ),
        (
            "upgrade",
            raw::get("/api/1/ticker/btc_jpy", &auth, &[(b"upgrade", b"h2c")]),
        ),
        (
            "te: gzip",
            raw::get("/api/1/ticker/btc_jpy", &auth, &[(b"te", b"gzip")]),
        ),
        (
            "CR LF in a value",
            raw::get("/api/1/ticker/btc_jpy", &auth, &[(b"x-a", b"1\r\nKey: x")]),
        ),
        (
            "NUL in a value",
            raw::get("/api/1/ticker/btc_jpy", &auth, &[(b"x-a", b"1\x002")]),
        ),
        (
            "CR LF in :path",
            raw::get("/api/1/ticker/btc_jpy\r\nx", &auth, &[]),
        ),
        (
            "uppercase name",
            raw::get("/api/1/ticker/btc_jpy", &auth, &[(b"X-Upper", b"1")]),
        ),
    ];
    for (what, block) in cases {
        let before = s.origin.count();
        let mut c = raw_h2(&s).await;
        c.write_all(&raw::frame(
            raw::HEADERS,
            raw::END_HEADERS | raw::END_STREAM,
            1,
            &block,
        ))
        .await
        .unwrap();
        let (frames, closed) = raw::read_frames(&mut c, Duration::from_secs(10), |f| {
            matches!(f.0, raw::RST_STREAM | raw::GOAWAY | raw::HEADERS)
                && f.2 <= 1
                && f.0 != raw::SETTINGS
        })
        .await;
        let last = frames.last();
        let refused = closed
            || last.is_some_and(|f| {
                f.0 == raw::GOAWAY
                    || (f.0 == raw::RST_STREAM && raw::error_code(f) == Some(raw::PROTOCOL_ERROR))
                    // A response HEADERS frame: an error status (hpack static 400 = 0x8c).
                    || (f.0 == raw::HEADERS && f.3.first() == Some(&0x8c))
            });
        assert!(refused, "{what}: not refused: {frames:?}");
        s.origin.assert_unchanged(before, what);
    }
    // The same request without the forbidden field is answered.
    let before = s.origin.count();
    let mut c = raw_h2(&s).await;
    c.write_all(&raw::frame(
        raw::HEADERS,
        raw::END_HEADERS | raw::END_STREAM,
        1,
        &raw::get("/api/1/ticker/btc_jpy", &auth, &[]),
    ))
    .await
    .unwrap();
    let (frames, _) = raw::read_frames(&mut c, Duration::from_secs(10), |f| {
        f.0 == raw::DATA && f.1 & raw::END_STREAM != 0
    })
    .await;
    assert!(
        frames.iter().any(|f| f.0 == raw::HEADERS && f.2 == 1),
        "{frames:?}"
    );
    assert_eq!(
        s.origin.count(),
        before + 1,
        "the control request was forwarded"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_rapid_reset_closes_the_connection() {
    let s = h2_setup(|_| {}).await;
    let auth = s.gw.addr.to_string();
    let mut c = raw_h2(&s).await;
    // CVE-2023-44487: open a stream and cancel it at once, over and over, in one write.
    let mut flood = Vec::new();
    for i in 0..2000u32 {
        let id = 2 * i + 1;
        flood.extend(raw::frame(
            raw::HEADERS,
            raw::END_HEADERS | raw::END_STREAM,
            id,
            &raw::get("/api/1/ticker/btc_jpy", &auth, &[]),
        ));
        flood.extend(raw::frame(
            raw::RST_STREAM,
            0,
            id,
            &raw::CANCEL.to_be_bytes(),
        ));
    }
    let _ = c.write_all(&flood).await;
    let (frames, closed) =
        raw::read_frames(&mut c, Duration::from_secs(10), |f| f.0 == raw::GOAWAY).await;
    let goaway = frames.iter().find(|f| f.0 == raw::GOAWAY);
    assert!(
        goaway.is_some_and(|f| raw::error_code(f) == Some(raw::ENHANCE_YOUR_CALM)),
        "expected GOAWAY ENHANCE_YOUR_CALM, got closed={closed} {:?}",
        frames
            .iter()
            .map(|f| (f.0, raw::error_code(f)))
            .collect::<Vec<_>>()
    );
    assert!(s.origin.count() < 2000, "every reset stream was forwarded");
    // Other clients are still served.
    let k = s.key().clone();
    s.gw.request(&zaif::read(&k)).await.assert_forwarded_ok();
}

/// A SETTINGS flood from a client that never reads: h2 acknowledges each SETTINGS before
/// it reads the next frame, so once the unread acks fill the socket the gateway stops
/// reading that connection. The flood's cost is bounded by what the socket buffers hold:
/// memory stays flat, and other clients are served meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_settings_flood_is_held_back_and_costs_no_memory() {
    let s = h2_setup(|_| {}).await;
    let k = s.key().clone();
    s.gw.request(&zaif::read(&k)).await.assert_forwarded_ok();
    let before = s.gw.rss_kib();
    let mut c = raw_h2(&s).await;
    // SETTINGS_ENABLE_PUSH = 0, valid every time; up to 4 million frames, 60 MB (here the
    // gateway stopped reading after about 11 MB: what the socket buffers hold of acks).
    let one = raw::frame(raw::SETTINGS, 0, 0, &[0, 2, 0, 0, 0, 0]);
    let chunk: Vec<u8> = one
        .iter()
        .copied()
        .cycle()
        .take(one.len() * 10_000)
        .collect();
    let flood = tokio::spawn(async move {
        let mut sent = 0usize;
        for _ in 0..400 {
            match tokio::time::timeout(Duration::from_secs(3), c.write_all(&chunk)).await {
                Ok(Ok(())) => sent += chunk.len(),
                // Held back (no progress for 3 s: the gateway stopped reading) or cut
                // off: either bounds it.
                Ok(Err(_)) | Err(_) => return (sent, false),
            }
        }
        (sent, true)
    });
    // While the flood runs, another client is answered.
    for _ in 0..5 {
        s.gw.request(&zaif::read(&k)).await.assert_forwarded_ok();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (sent, all_taken) = flood.await.unwrap();
    let after = s.gw.rss_kib();
    assert!(
        after < before + 32 * 1024,
        "RSS grew from {before} KiB to {after} KiB under a SETTINGS flood of {sent} bytes"
    );
    assert!(
        !all_taken,
        "the gateway read all {sent} bytes of SETTINGS without acknowledging being read"
    );
    s.gw.request(&zaif::read(&k)).await.assert_forwarded_ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_continuation_flood_and_oversized_headers_are_cut_off() {
    let s = h2_setup(|_| {}).await;
    let auth = s.gw.addr.to_string();
    // A header block that never ends: HEADERS without END_HEADERS, then CONTINUATION
    // frames of a few bytes each.
    let mut c = raw_h2(&s).await;
    let first = raw::get("/api/1/ticker/btc_jpy", &auth, &[]);
    let mut flood = raw::frame(raw::HEADERS, raw::END_STREAM, 1, &first);
    let filler = raw::hpack(&[(b"x-f", b"0123456789")]);
    for _ in 0..20_000 {
        flood.extend(raw::frame(raw::CONTINUATION, 0, 1, &filler));
    }
    let _ = c.write_all(&flood).await;
    let (frames, closed) =
        raw::read_frames(&mut c, Duration::from_secs(10), |f| f.0 == raw::GOAWAY).await;
    assert!(
        closed || frames.iter().any(|f| f.0 == raw::GOAWAY),
        "CONTINUATION flood not cut off: {:?}",
        frames.iter().map(|f| f.0).collect::<Vec<_>>()
    );

    // One header list over server.max_header_bytes (16 KiB) in a single block.
    let mut c = raw_h2(&s).await;
    let big = vec![b'a'; 40_000];
    let block = raw::get("/api/1/ticker/btc_jpy", &auth, &[(b"x-big", &big)]);
    // Within the default 16 KiB frame size: split over HEADERS and CONTINUATIONs.
    let chunks: Vec<&[u8]> = block.chunks(16_000).collect();
    for (i, chunk) in chunks.iter().enumerate() {
        let last = i + 1 == chunks.len();
        let (kind, flags) = if i == 0 {
            (
                raw::HEADERS,
                raw::END_STREAM | if last { raw::END_HEADERS } else { 0 },
            )
        } else {
            (raw::CONTINUATION, if last { raw::END_HEADERS } else { 0 })
        };
        let _ = c.write_all(&raw::frame(kind, flags, 1, chunk)).await;
    }
    let (frames, closed) = raw::read_frames(&mut c, Duration::from_secs(10), |f| {
        matches!(f.0, raw::GOAWAY | raw::RST_STREAM | raw::HEADERS)
    })
    .await;
    let refused = closed
        || frames.iter().any(|f| {
            f.0 == raw::GOAWAY
                || f.0 == raw::RST_STREAM
                // 431 is not in HPACK's static table: a literal status, never 200 (0x88).
                || (f.0 == raw::HEADERS && f.3.first() != Some(&0x88))
        });
    assert!(refused, "oversized header list accepted: {frames:?}");
    assert_eq!(s.origin.count(), 0, "nothing reached the upstream");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_streams_beyond_the_limit_are_refused() {
    let s = h2_setup(|c| set(c, "http2.max_concurrent_streams", 2)).await;
    let auth = s.gw.addr.to_string();
    let mut c = raw_h2(&s).await;
    // The server announces the limit...
    let (frames, _) = raw::read_frames(&mut c, Duration::from_secs(10), |f| {
        f.0 == raw::SETTINGS && f.1 & 1 == 0
    })
    .await;
    let settings = &frames.last().expect("server SETTINGS").3;
    let announced = settings
        .chunks(6)
        .find(|p| p[..2] == [0, 3])
        .map(|p| u32::from_be_bytes([p[2], p[3], p[4], p[5]]));
    assert_eq!(announced, Some(2), "SETTINGS_MAX_CONCURRENT_STREAMS");
    // ...and refuses a third open stream (POSTs whose bodies never come).
    let post = raw::hpack(&[
        (b":method", b"POST"),
        (b":scheme", b"http"),
        (b":path", b"/tapi"),
        (b":authority", auth.as_bytes()),
        (b"content-type", b"application/x-www-form-urlencoded"),
    ]);
    for id in [1u32, 3, 5] {
        c.write_all(&raw::frame(raw::HEADERS, raw::END_HEADERS, id, &post))
            .await
            .unwrap();
    }
    let (frames, _) = raw::read_frames(&mut c, Duration::from_secs(10), |f| {
        f.0 == raw::RST_STREAM && f.2 == 5
    })
    .await;
    let reset = frames.iter().find(|f| f.0 == raw::RST_STREAM && f.2 == 5);
    assert!(
        reset.is_some_and(|f| matches!(
            raw::error_code(f),
            Some(raw::REFUSED_STREAM | raw::PROTOCOL_ERROR)
        )),
        "third stream not refused: {:?}",
        frames
            .iter()
            .map(|f| (f.0, f.2, raw::error_code(f)))
            .collect::<Vec<_>>()
    );
}
