//! Hot reload through the real binary: SIGHUP (and a changed file) swaps the policy, the
//! certificates and the limits at once; a request under way finishes on the config it
//! started with; an invalid file keeps the running config and logs the located error;
//! settings that need a restart are named.

mod utils;

use std::time::Duration;

use tokio::io::AsyncWriteExt;
use utils::scenarios::{setup_env, Setup};
use utils::tls::{send_tls, tls_client_config, Pki};
use utils::*;

/// Rewrites the running gateway's config file with `tweak` applied.
fn rewrite(env: &Env, tweak: impl FnOnce(&mut toml::Table)) {
    let text = std::fs::read_to_string(&env.config).unwrap();
    let mut cfg: toml::Table = text.parse().unwrap();
    tweak(&mut cfg);
    // Write-then-rename: the file watcher never sees a half-written file.
    let tmp = env.config.with_extension("tmp");
    std::fs::write(&tmp, toml::to_string(&cfg).unwrap()).unwrap();
    std::fs::rename(&tmp, &env.config).unwrap();
}

/// Waits until the log has `n` lines containing `what`.
async fn logged(s: &Setup, what: &str, n: usize) -> String {
    let mut log = String::new();
    let ok = eventually(Duration::from_secs(15), || {
        log = s.gw.log();
        let count = log.matches(what).count();
        async move { count >= n }
    })
    .await;
    assert!(ok, "{what:?} not logged {n} time(s):\n{log}");
    log
}

async fn started(tweak: impl FnOnce(&mut toml::Table)) -> (Setup, TestKey) {
    let d = Dialect::Zaif;
    let s = setup_env(
        Env::new(d, |c| {
            c.remove("limits");
            set(c, "reload.watch_files", false);
            tweak(c);
        }),
        &[KeySpec::full(d)],
    )
    .await;
    let k = s.key().clone();
    (s, k)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_swaps_the_policy_and_a_request_under_way_keeps_the_old_one() {
    let (s, k) = started(|_| {}).await;
    s.gw.request(&zaif::read(&k)).await.assert_forwarded_ok();

    // A request whose head is in but whose body is not: it started on the old config.
    let slow = zaif::read(&k);
    let raw = slow.to_bytes(&s.gw.addr.to_string());
    let split = raw.len() - slow.body.len();
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind((ALLOWED_IP, 0).into()).unwrap();
    let mut stream = sock.connect(s.gw.addr).await.unwrap();
    stream.write_all(&raw[..split]).await.unwrap();
    stream.flush().await.unwrap();

    // Bodies over 16 bytes are now refused, and trades no longer classified.
    rewrite(&s.env, |c| {
        set(c, "server.max_body_bytes", 16);
    });
    s.gw.signal("HUP");
    let log = logged(&s, "config reloaded", 1).await;
    assert!(!log.contains("restart_needed"), "{log}");
    s.gw.request(&zaif::read(&k))
        .await
        .assert_error(413, "body_too_large");

    // The one under way finishes on the config it started with.
    stream.write_all(&raw[split..]).await.unwrap();
    let resp = read_response(&mut stream).await.unwrap();
    resp.assert_forwarded_ok();

    // State survives the reload: the key's nonce sequence goes on (a replayed nonce is
    // still refused once the limit is back).
    rewrite(&s.env, |c| set(c, "server.max_body_bytes", 65_536));
    s.gw.signal("HUP");
    logged(&s, "config reloaded", 2).await;
    let replayed = zaif::signed(&k, &zaif::body("get_info2", "1", &[]));
    s.gw.request(&replayed)
        .await
        .assert_error(401, "invalid_nonce");
    s.gw.request(&zaif::read(&k)).await.assert_forwarded_ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_file_keeps_the_running_config_and_logs_where() {
    let (s, k) = started(|_| {}).await;
    // A value out of range: the whole file is refused, including the valid change.
    rewrite(&s.env, |c| {
        set(c, "server.max_body_bytes", 16);
        set(c, "overload.max_in_flight", 0);
    });
    s.gw.signal("HUP");
    let log = logged(&s, "config reload failed", 1).await;
    assert!(
        log.contains("keyguard.toml:") && log.contains("overload.max_in_flight"),
        "the error names file, line and key:\n{log}"
    );
    s.gw.request(&zaif::read(&k)).await.assert_forwarded_ok();

    // A certificate that does not parse is refused the same way.
    let bogus = s.env.dir.path().join("bogus.pem");
    std::fs::write(&bogus, "garbage\n").unwrap();
    rewrite(&s.env, |c| {
        set(c, "overload.max_in_flight", 1024);
        set(
            c,
            "tls.upstream.ca_file",
            bogus.to_string_lossy().into_owned(),
        );
        set(c, "server.upstream", "https://127.0.0.1:9");
    });
    s.gw.signal("HUP");
    let log = logged(&s, "config reload failed", 2).await;
    assert!(log.contains("tls.upstream.ca_file"), "{log}");
    s.gw.request(&zaif::read(&k)).await.assert_forwarded_ok();

    // `check-config` says the same about the same file.
    let run = s
        .env
        .run(&["check-config", "--config", s.env.config.to_str().unwrap()]);
    assert!(!run.status.success());
    assert!(
        run.stderr.contains("tls.upstream.ca_file"),
        "{}",
        run.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_that_need_a_restart_are_named_and_keep_their_values() {
    let (s, k) = started(|_| {}).await;
    rewrite(&s.env, |c| {
        set(c, "server.workers", 3);
        set(c, "limits.ip.count", 1);
        set(c, "limits.ip.per", "1h");
        set(c, "withdraw.address_cooldown_secs", 7);
    });
    s.gw.signal("HUP");
    let log = logged(&s, "restart_needed", 1).await;
    let line = log.lines().find(|l| l.contains("restart_needed")).unwrap();
    assert!(
        line.contains("server.workers") && line.contains("limits"),
        "{line}"
    );
    assert!(!line.contains("withdraw"), "withdraw is reloadable: {line}");
    // The restart-only limit was not applied: many requests still pass.
    for _ in 0..3 {
        s.gw.request(&zaif::read(&k)).await.assert_forwarded_ok();
    }
}

/// The leaf certificate the gateway presents in a new handshake.
async fn served_cert(s: &Setup, cfg: std::sync::Arc<rustls::ClientConfig>) -> Vec<u8> {
    let tls = utils::tls::tls_connect(s.gw.addr, ALLOWED_IP, cfg, "127.0.0.1")
        .await
        .unwrap();
    tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_file_reloads_without_a_signal_and_certificates_swap() {
    let certs = tempfile::tempdir().unwrap();
    let pki = Pki::new(certs.path(), "reload");
    let first = pki.issue("first", &["127.0.0.1"], false);
    let (s, k) = started(|c| {
        set(c, "reload.watch_files", true);
        set(
            c,
            "tls.listen.cert_file",
            first.cert.to_string_lossy().into_owned(),
        );
        set(
            c,
            "tls.listen.key_file",
            first.key.to_string_lossy().into_owned(),
        );
    })
    .await;
    let cfg = tls_client_config(&pki, &[b"http/1.1"]);
    let pem = |p: &std::path::Path| {
        use rustls::pki_types::pem::PemObject;
        rustls::pki_types::CertificateDer::from_pem_file(p)
            .unwrap()
            .to_vec()
    };
    assert_eq!(served_cert(&s, cfg.clone()).await, pem(&first.cert));

    // Rotate the certificate in place (same paths), as an ACME client would: no SIGHUP.
    let second = pki.issue("second", &["127.0.0.1"], false);
    std::fs::copy(&second.key, &first.key).unwrap();
    std::fs::copy(&second.cert, &first.cert).unwrap();
    logged(&s, "config reloaded", 1).await;
    assert_eq!(served_cert(&s, cfg.clone()).await, pem(&second.cert));
    let raw = zaif::read(&k).to_bytes(&s.gw.addr.to_string());
    send_tls(s.gw.addr, ALLOWED_IP, cfg, &raw)
        .await
        .unwrap()
        .assert_forwarded_ok();
}
