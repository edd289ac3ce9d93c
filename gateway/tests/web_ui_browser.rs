//! The traders' web UI in real headless Chromium (driven through chromedriver), once with
//! JavaScript and once without: log in with TOTP, create a key, restrict it to one IP,
//! watch a request from another loopback IP be refused on the activity page. Screenshots
//! go to `target/screenshots/`.
//!
//! Browser tests run one at a time (a lock below) and skip, saying so, only where
//! Chromium or chromedriver is not installed (`.ci/run` installs them).

mod utils;

use std::os::unix::process::CommandExt as _;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use utils::*;

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const PASSWORD: &str = "correct horse battery";

static ONE_BROWSER_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

struct Browser {
    client: Client,
    driver: Child,
    _profile: tempfile::TempDir,
}

impl Drop for Browser {
    fn drop(&mut self) {
        // chromedriver runs in a process group of its own, and the Chromium it starts
        // joins it; killing only chromedriver left every browser of the run behind
        // (dozens of idle Chromium processes eating CPU after the suite). Kill the group.
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.driver.id())])
            .status();
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

async fn browser(javascript: bool) -> Option<Browser> {
    for bin in [CHROMIUM, CHROMEDRIVER] {
        if !std::path::Path::new(bin).exists() {
            eprintln!("SKIPPED: {bin} is not installed (apt-get install chromium chromium-driver; .ci/run does this)");
            return None;
        }
    }
    let port = free_port();
    let driver = Command::new(CHROMEDRIVER)
        .process_group(0)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start chromedriver");
    let profile = tempfile::tempdir().unwrap();
    let mut args = vec![
        "--headless".to_owned(),
        "--no-sandbox".into(),
        "--disable-gpu".into(),
        "--disable-quic".into(),
        "--no-first-run".into(),
        "--disable-background-networking".into(),
        "--disable-component-update".into(),
        "--disable-sync".into(),
        "--window-size=1280,1000".into(),
        format!("--user-data-dir={}", profile.path().display()),
    ];
    if !javascript {
        args.push("--blink-settings=scriptEnabled=false".into());
    }
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        serde_json::json!({
            "binary": CHROMIUM,
            "args": args,
            "prefs": if javascript { serde_json::json!({}) } else {
                serde_json::json!({"profile.managed_default_content_settings.javascript": 2})
            },
        }),
    );
    let url = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(20);
    let client = loop {
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        match ClientBuilder::new(connector)
            .capabilities(caps.clone())
            .connect(&url)
            .await
        {
            Ok(c) => break c,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("chromedriver did not start a session: {e}"),
        }
    };
    Some(Browser {
        client,
        driver,
        _profile: profile,
    })
}

fn screenshot_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn shot(c: &Client, name: &str) {
    let png = c.screenshot().await.expect("screenshot");
    std::fs::write(screenshot_dir().join(format!("{name}.png")), png).unwrap();
}

async fn fill(c: &Client, css: &str, text: &str) {
    let e = c
        .find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css}: {e}"));
    e.clear().await.unwrap();
    e.send_keys(text).await.unwrap();
}

/// Clicks and waits until the click has loaded a new page (the old one's body is gone).
async fn click(c: &Client, css: &str) {
    let old = c.find(Locator::Css("body")).await.unwrap();
    c.find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css}: {e}"))
        .click()
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while old.text().await.is_ok() {
        assert!(Instant::now() < deadline, "clicking {css} loaded no page");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn body(c: &Client) -> String {
    c.find(Locator::Css("body"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

fn totp(secret_b32: &str, at_secs: u64) -> String {
    let secret = totp_rs::Secret::Encoded(secret_b32.replace(' ', ""))
        .to_bytes()
        .unwrap();
    totp_rs::TOTP::new(
        totp_rs::Algorithm::SHA1,
        6,
        1,
        30,
        secret,
        None,
        "alice".into(),
    )
    .unwrap()
    .generate(at_secs)
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// The full flow; `tag` prefixes the screenshots.
async fn trader_flow(javascript: bool, tag: &str) {
    let _one = ONE_BROWSER_AT_A_TIME.lock().await;
    let Some(b) = browser(javascript).await else {
        return;
    };
    let c = &b.client;

    let env = Env::new(Dialect::Zaif, |cfg| set(cfg, "admin.widen_cooldown", "1h"));
    utils::admin::account(&env, &["create"], "alice", PASSWORD);
    let origin = Origin::start().await;
    let (gw, admin) = env.start_with_admin(origin.addr).await;
    let base = format!("http://{admin}");

    // Log in with the password; no TOTP yet.
    c.goto(&format!("{base}/keys")).await.unwrap();
    assert!(
        c.current_url().await.unwrap().path().ends_with("/login"),
        "an unauthenticated page sends to login"
    );
    shot(c, &format!("{tag}-login")).await;
    fill(c, "#name", "alice").await;
    fill(c, "#password", PASSWORD).await;
    click(c, "form[action='/login'] button").await;
    let page = body(c).await;
    assert!(page.contains("API keys"), "{page}");

    // Enrol TOTP: QR code and secret, enabled by a valid code.
    c.goto(&format!("{base}/account/totp")).await.unwrap();
    assert!(
        c.find(Locator::Css(".qr svg")).await.is_ok(),
        "QR code shown inline"
    );
    shot(c, &format!("{tag}-totp")).await;
    let secret = c
        .find(Locator::Css("code.secret"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let enrolled_at = now_secs();
    fill(c, "#code", &totp(&secret, enrolled_at)).await;
    click(c, "form[action='/account/totp'] button").await;
    let page = body(c).await;
    assert!(page.contains("Two-factor login is on"), "{page}");
    assert_eq!(
        c.find_all(Locator::Css("ul.codes li")).await.unwrap().len(),
        10
    );
    shot(c, &format!("{tag}-recovery")).await;

    // Log out, log in again: password, then a code of a later step (the enrolment's
    // step is spent).
    click(c, "form[action='/logout'] button").await;
    fill(c, "#name", "alice").await;
    fill(c, "#password", PASSWORD).await;
    click(c, "form[action='/login'] button").await;
    assert!(c
        .current_url()
        .await
        .unwrap()
        .path()
        .ends_with("/login/code"));
    shot(c, &format!("{tag}-code")).await;
    while now_secs() / 30 == enrolled_at / 30 {
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    fill(c, "#code", &totp(&secret, now_secs())).await;
    click(c, "form[action='/login/code'] button").await;
    assert!(
        c.current_url().await.unwrap().path().ends_with("/keys"),
        "logged in with TOTP"
    );

    // Create a key (read + trade, no allowlist yet): the secret is shown once.
    c.goto(&format!("{base}/keys/new")).await.unwrap();
    fill(c, "#label", "trading bot").await;
    shot(c, &format!("{tag}-new-key")).await;
    c.find(Locator::Css("input[name=scope_trade]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    click(c, "form[action='/keys/new'] button").await;
    let codes = c.find_all(Locator::Css("dd code")).await.unwrap();
    let key_id = codes[0].text().await.unwrap();
    let api_key = codes[1].text().await.unwrap();
    let secret_key = codes[2].text().await.unwrap();
    assert!(body(c).await.contains("shown only once"));
    shot(c, &format!("{tag}-created")).await;
    let key = TestKey {
        key_id: key_id.clone(),
        api_key,
        secret: secret_key,
        account: "alice".into(),
    };

    // The list warns about the unrestricted key.
    c.goto(&format!("{base}/keys")).await.unwrap();
    assert!(body(c).await.contains("Not restricted"));
    shot(c, &format!("{tag}-keys-open")).await;

    // Restrict it to one IP: narrowing, at once, no password needed.
    c.goto(&format!("{base}/keys/{key_id}")).await.unwrap();
    fill(c, "#allowlist input[name=net]", "127.0.0.2").await;
    click(c, "#allowlist form.row button").await;
    let page = body(c).await;
    assert!(page.contains("Done: the change is in force"), "{page}");
    assert!(page.contains("127.0.0.2/32"));

    // The gateway has it: the allowed IP is forwarded, another loopback IP refused.
    assert_eq!(
        gw.request_from(ALLOWED_IP, &zaif::read(&key)).await.status,
        200
    );
    let refused = gw.request_from(OTHER_IP, &zaif::read(&key)).await;
    refused.assert_error(403, "ip_not_allowed");

    // The key page and its activity say so.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        c.goto(&format!("{base}/keys/{key_id}/activity"))
            .await
            .unwrap();
        let page = body(c).await;
        if page.contains("ip_not_allowed") {
            assert!(page.contains("127.0.0.3"), "{page}");
            assert!(
                page.contains("not allowed to be used from"),
                "plain-language explanation: {page}"
            );
            assert!(page.contains("was tried from 127.0.0.3"), "banner: {page}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "refusal not on the activity page: {page}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    shot(c, &format!("{tag}-activity")).await;
    click(c, "a[href$='activity?decision=deny']").await;
    assert!(
        c.find_all(Locator::Css("table.activity .badge.active"))
            .await
            .unwrap()
            .is_empty(),
        "only refusals shown"
    );
    assert!(!c
        .find_all(Locator::Css("table.activity tr.denied"))
        .await
        .unwrap()
        .is_empty());

    c.goto(&format!("{base}/keys/{key_id}")).await.unwrap();
    assert!(body(c).await.contains("was tried from 127.0.0.3"));
    shot(c, &format!("{tag}-key")).await;
    c.goto(&format!("{base}/keys")).await.unwrap();
    shot(c, &format!("{tag}-keys")).await;

    c.goto(&format!("{base}/keys/{key_id}/revoke"))
        .await
        .unwrap();
    assert!(body(c).await.contains("Type the key id to confirm"));
    shot(c, &format!("{tag}-revoke")).await;

    // Phone width.
    c.set_window_size(390, 844).await.unwrap();
    shot(c, &format!("{tag}-keys-phone")).await;
    c.goto(&format!("{base}/keys/{key_id}/activity"))
        .await
        .unwrap();
    shot(c, &format!("{tag}-activity-phone")).await;
    c.goto(&format!("{base}/keys/{key_id}")).await.unwrap();
    shot(c, &format!("{tag}-key-phone")).await;
    drop(gw);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trader_logs_in_restricts_a_key_and_sees_a_foreign_ip_refused() {
    trader_flow(true, "js").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_flow_works_without_javascript() {
    trader_flow(false, "nojs").await;
}
