//! The `keyguard` command line, black-box: config checking with file:line:key errors,
//! key provisioning rules, the assertion public key.

mod utils;

use utils::*;

fn example_text(d: Dialect) -> String {
    std::fs::read_to_string(d.example_path()).expect("example config")
}

/// 1-based line of the first line containing `needle` at or after line `from`.
fn line_of(text: &str, needle: &str, from: usize) -> usize {
    text.lines()
        .enumerate()
        .skip(from.saturating_sub(1))
        .find(|(_, l)| l.contains(needle))
        .map(|(i, _)| i + 1)
        .unwrap_or_else(|| panic!("{needle} not in config"))
}

#[test]
fn check_config_accepts_the_examples() {
    for d in [Dialect::Zaif, Dialect::Binance, Dialect::Kraken] {
        let env = Env::with_config_text(d, &example_text(d));
        let run = env.run(&["check-config", "--config", env.config.to_str().unwrap()]);
        assert!(run.status.success(), "{d:?}: {run:?}");
        assert!(run.stdout.contains("ok"), "{d:?}: {run:?}");
    }
}

/// Runs check-config on `text` and asserts failure naming `file:line` and `key`.
#[track_caller]
fn assert_config_error(d: Dialect, text: &str, line: usize, key: &str) {
    let env = Env::with_config_text(d, text);
    let run = env.run(&["check-config", "--config", env.config.to_str().unwrap()]);
    assert!(!run.status.success(), "bad config accepted: {run:?}");
    let out = format!("{}{}", run.stderr, run.stdout);
    let at = format!("keyguard.toml:{line}");
    assert!(out.contains(&at), "expected {at} in {out:?}");
    assert!(out.contains(key), "expected key {key} in {out:?}");
}

#[test]
fn check_config_reports_file_line_and_key() {
    let d = Dialect::Zaif;
    let text = example_text(d);

    // A misspelt action in the withdraw route.
    let withdraw_select = line_of(&text, "select = \"withdraw\"", 1);
    let action_line = line_of(&text, "action = \"withdraw\"", withdraw_select);
    let route_index = text
        .lines()
        .take(action_line)
        .filter(|l| l.trim_start().starts_with("[[route]]"))
        .count()
        - 1;
    let bad: String = text
        .lines()
        .enumerate()
        .map(|(i, l)| {
            if i + 1 == action_line {
                "action = \"wthdraw\"".to_owned()
            } else {
                l.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    assert_config_error(
        d,
        &bad,
        action_line,
        &format!("route[{route_index}].action"),
    );

    // A value of the wrong type.
    let line = line_of(&text, "max_body_bytes = 65536", 1);
    let bad = text.replace("max_body_bytes = 65536", "max_body_bytes = \"big\"");
    assert_config_error(d, &bad, line, "server.max_body_bytes");

    // An address that is not one.
    let line = line_of(&text, "listen = \"127.0.0.1:8080\"", 1);
    let bad = text.replace("listen = \"127.0.0.1:8080\"", "listen = \"localhost-ish\"");
    assert_config_error(d, &bad, line, "server.listen");

    // A CIDR that is not one.
    let line = line_of(&text, "trusted_proxies = []", 1);
    let bad = text.replace(
        "trusted_proxies = []",
        "trusted_proxies = [\"10.0.0.0/99\"]",
    );
    assert_config_error(d, &bad, line, "server.trusted_proxies");

    // A misspelt key is not silently ignored.
    let line = line_of(&text, "max_body_bytes = 65536", 1);
    let bad = text.replace("max_body_bytes = 65536", "max_body_byte = 65536");
    assert_config_error(d, &bad, line, "max_body_byte");

    // A receive-window option on a nonce dialect.
    let line = line_of(&text, "kind = \"zaif\"", 1);
    let bad = text.replace(
        "kind = \"zaif\"",
        "kind = \"zaif\"\nrecv_window_max_ms = 5000",
    );
    assert_config_error(d, &bad, line + 1, "dialect.recv_window_max_ms");
}

#[test]
fn serve_with_a_bad_config_exits_non_zero() {
    let d = Dialect::Kraken;
    let bad = example_text(d).replace("kind = \"kraken\"", "kind = \"krakken\"");
    let env = Env::with_config_text(d, &bad);
    let run = env.run_with_store(&["serve"], &["--listen", "127.0.0.1:0"]);
    assert!(!run.status.success(), "{run:?}");
    assert!(run.stderr.contains("keyguard.toml:"), "{run:?}");
}

#[test]
fn withdraw_scope_needs_an_ip_allowlist() {
    let d = Dialect::Zaif;
    let env = Env::new(d, |_| {});
    let spec = KeySpec {
        account: "acct".into(),
        scopes: "read,trade,withdraw".into(),
        allow_ips: vec![],
        withdraw_addresses: vec![format!("btc:{WITHDRAW_ADDR}")],
    };
    let run = env.try_create_key(&spec);
    assert!(
        !run.status.success(),
        "withdraw key without --allow-ip created: {run:?}"
    );
    assert!(run.stderr.contains("allow-ip"), "{run:?}");
    assert!(!run.stdout.contains("secret"), "{run:?}");
    // Nothing was stored.
    let list = env.run_with_store(&["keys", "list"], &["--json"]).ok();
    let keys: serde_json::Value =
        serde_json::from_str(list.stdout.trim()).expect("keys list --json");
    assert_eq!(keys.as_array().map(Vec::len), Some(0), "{keys}");

    // The same key without withdraw needs no allowlist.
    let ok = KeySpec {
        scopes: "read,trade".into(),
        withdraw_addresses: vec![],
        ..spec.clone()
    };
    env.create_key(&ok);
    // A withdrawal address on a key without the withdraw scope is refused too.
    let bad = KeySpec {
        scopes: "read".into(),
        allow_ips: vec!["127.0.0.2/32".into()],
        ..spec
    };
    let run = env.try_create_key(&bad);
    assert!(!run.status.success(), "{run:?}");
}

#[test]
fn keys_create_rejects_malformed_input() {
    let env = Env::new(Dialect::Binance, |_| {});
    for (scopes, ip, addr) in [
        ("read,admin", "127.0.0.2/32", None),
        ("", "127.0.0.2/32", None),
        ("read", "127.0.0.1/8", None),
        ("read", "not-an-ip", None),
        ("withdraw", "127.0.0.2/32", Some("no-colon")),
    ] {
        let spec = KeySpec {
            account: "acct".into(),
            scopes: scopes.into(),
            allow_ips: vec![ip.into()],
            withdraw_addresses: addr.map(|a| vec![a.to_owned()]).unwrap_or_default(),
        };
        let run = env.try_create_key(&spec);
        assert!(!run.status.success(), "{scopes} {ip} {addr:?}: {run:?}");
    }
}

#[test]
fn keys_list_and_show_never_print_secrets() {
    let d = Dialect::Kraken;
    let env = Env::new(d, |_| {});
    let k = env.create_key(&KeySpec::full(d));
    let list = env.run_with_store(&["keys", "list"], &["--json"]).ok();
    let show = env.run_with_store(&["keys", "show"], &[&k.key_id]).ok();
    let plain = env.run_with_store(&["keys", "list"], &[]).ok();
    for run in [&list, &show, &plain] {
        assert!(run.stdout.contains(&k.key_id), "{run:?}");
        assert!(!run.stdout.contains(&k.secret), "secret printed: {run:?}");
        assert!(!run.stderr.contains(&k.secret), "secret printed: {run:?}");
    }
}

#[test]
fn assertion_key_is_a_stable_jwks_and_ed25519_keys_print_as_pem() {
    let env = Env::new(Dialect::Zaif, |_| {});
    let jwks = env.assertion_jwks();
    let set: jsonwebtoken::jwk::JwkSet = serde_json::from_str(&jwks).expect("a JWKS");
    assert_eq!(set.keys.len(), 1, "{jwks}");
    let jwk = &set.keys[0];
    assert_eq!(
        jwk.common.key_algorithm,
        Some(jsonwebtoken::jwk::KeyAlgorithm::HS256),
        "HS256 by default: {jwks}"
    );
    assert!(jwk
        .common
        .key_id
        .as_deref()
        .is_some_and(|k| k.starts_with("hs-")));
    jsonwebtoken::DecodingKey::from_jwk(jwk).expect("jsonwebtoken reads it");
    assert_eq!(
        env.assertion_jwks(),
        jwks,
        "the key is generated once and kept"
    );
    let other = Env::new(Dialect::Zaif, |_| {});
    assert_ne!(
        other.assertion_jwks(),
        jwks,
        "another data dir has another key"
    );
    // --pem is only for Ed25519: an HMAC key has no public half.
    let run = env.run_with_store(&["assertion-key"], &["--pem"]);
    assert!(!run.status.success(), "{run:?}");
    assert!(run.stderr.contains("EdDSA"), "{run:?}");

    let ed = Env::new(Dialect::Zaif, |doc| {
        utils::set(doc, "assertion.alg", "EdDSA")
    });
    let pem = ed
        .run_with_store(&["assertion-key"], &["--pem"])
        .ok()
        .stdout;
    assert!(pem.starts_with("-----BEGIN PUBLIC KEY-----"), "{pem}");
    assert!(!pem.contains("PRIVATE"), "{pem}");
    jsonwebtoken::DecodingKey::from_ed_pem(pem.as_bytes()).expect("jsonwebtoken reads it");
    let set: jsonwebtoken::jwk::JwkSet =
        serde_json::from_str(&ed.assertion_jwks()).expect("a JWKS");
    assert_eq!(
        set.keys[0].common.key_algorithm,
        Some(jsonwebtoken::jwk::KeyAlgorithm::EdDSA)
    );
}

#[test]
fn assertion_key_rotation_keeps_the_old_key_published_and_is_audited() {
    let env = Env::new(Dialect::Zaif, |_| {});
    let before: serde_json::Value = serde_json::from_str(&env.assertion_jwks()).unwrap();
    let old_kid = before["keys"][0]["kid"].as_str().unwrap().to_owned();
    let run = env
        .run_with_store(&["assertion-key"], &["--rotate", "--reason", "yearly"])
        .ok();
    let after: serde_json::Value = serde_json::from_str(&run.stdout).expect("prints the JWKS");
    let kids: Vec<&str> = after["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap())
        .collect();
    assert_eq!(kids.len(), 2, "{after}");
    assert_ne!(kids[0], old_kid, "a new current key");
    assert_eq!(kids[1], old_kid, "the previous key stays for one TTL");
    assert!(run.stderr.contains("rotated"), "{run:?}");
}
