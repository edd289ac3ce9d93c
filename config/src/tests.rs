use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use http::Method;
use keyguard_policy::dialect::{BodyKind, ParsedRequest};
use keyguard_policy::params::{ParamSource, ParamValue, Params};
use keyguard_policy::{Action, DialectKind};

use super::*;

fn example(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples")
        .join(name)
}

/// Parses `text` as `dir/keyguard.toml` and returns the error.
fn err(text: &str) -> ConfigError {
    Config::parse(text, Path::new("dir/keyguard.toml")).expect_err("config should be refused")
}

fn ok(text: &str) -> Config {
    Config::parse(text, Path::new("dir/keyguard.toml")).expect("config should load")
}

/// Asserts an error's line and key, and returns its message.
fn at(e: &ConfigError, line: usize, key: &str) -> String {
    assert_eq!((e.line, e.key.as_deref()), (Some(line), Some(key)), "{e}");
    e.message.clone()
}

const MINIMAL: &str = "\
[dialect]
kind = \"zaif\"

[[route]]
method = \"GET\"
path = \"/api/1/ticker/{pair}\"
action = \"public\"
";

// ---- the shipped examples ----------------------------------------------------------

#[test]
fn examples_load_and_validate() {
    for (name, kind) in [
        ("zaif.toml", DialectKind::Zaif),
        ("binance.toml", DialectKind::Binance),
        ("kraken.toml", DialectKind::Kraken),
    ] {
        let path = example(name);
        let cfg = Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(cfg.dialect.kind, kind);
        assert_eq!(cfg.routes.kind(), kind);
        assert_eq!(cfg.server.listen, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(
            cfg.require_upstream().unwrap().to_string(),
            "http://127.0.0.1:9000"
        );
        let examples = path.parent().unwrap();
        assert_eq!(cfg.server.data_dir, examples.join("keyguard-data"));
        assert_eq!(
            cfg.audit.path.path(),
            examples.join("keyguard-data/audit.jsonl")
        );
        for action in [
            Action::Public,
            Action::Read,
            Action::Trade,
            Action::Withdraw,
        ] {
            assert!(
                cfg.routes.routes().iter().any(|r| r.action == action),
                "{name} has no {action} route"
            );
        }
    }
}

fn request(method: Method, path: &str, params: &[(&str, &str)]) -> ParsedRequest {
    let mut p = Params::new();
    for (k, v) in params {
        p.insert(
            (*k).to_owned(),
            ParamValue::Text((*v).to_owned()),
            ParamSource::Body,
        )
        .unwrap();
    }
    ParsedRequest {
        method,
        path: path.to_owned(),
        params: p,
        body_kind: BodyKind::Form,
        credentials: None,
    }
}

/// The endpoints ccxt 4.5.90 calls for markets, currencies, balances, orders, trades,
/// deposits and withdrawals, with the action each must be classified as.
#[test]
fn examples_classify_what_ccxt_calls() {
    use Action::*;
    let zaif = Config::load(&example("zaif.toml")).unwrap();
    for (path, action) in [
        ("/api/1/currency_pairs/all", Public),
        ("/api/1/currencies/all", Public),
        ("/api/1/ticker/btc_jpy", Public),
        ("/api/1/depth/btc_jpy", Public),
        ("/api/1/trades/btc_jpy", Public),
    ] {
        let c = zaif
            .routes
            .classify(&request(Method::GET, path, &[]))
            .unwrap();
        assert_eq!(c.action, action, "zaif {path}");
    }
    for (select, action) in [
        ("get_info", Read),
        ("get_info2", Read),
        ("active_orders", Read),
        ("trade_history", Read),
        ("deposit_history", Read),
        ("withdraw_history", Read),
        ("trade", Trade),
        ("cancel_order", Trade),
        ("withdraw", Withdraw),
    ] {
        let req = request(Method::POST, "/tapi", &[("method", select), ("nonce", "1")]);
        assert_eq!(
            zaif.routes.classify(&req).unwrap().action,
            action,
            "zaif {select}"
        );
    }
    let unknown = request(Method::POST, "/tapi", &[("method", "get_positions")]);
    assert!(zaif.routes.classify(&unknown).is_err());
    let withdraw = request(
        Method::POST,
        "/tapi",
        &[
            ("method", "withdraw"),
            ("currency", "BTC"),
            ("amount", "0.5"),
            ("address", "1Addr"),
        ],
    );
    let facts = zaif.routes.classify(&withdraw).unwrap().facts;
    assert_eq!(facts.asset.as_deref(), Some("btc"));
    assert_eq!(facts.address.as_deref(), Some("1Addr"));
    assert!(facts.amount.is_some());
    let order = request(
        Method::POST,
        "/tapi",
        &[
            ("method", "trade"),
            ("currency_pair", "btc_jpy"),
            ("action", "bid"),
            ("price", "5000000"),
            ("amount", "0.01"),
        ],
    );
    let facts = zaif.routes.classify(&order).unwrap().facts;
    assert_eq!(facts.asset.as_deref(), Some("btc_jpy"));
    assert!(facts.price.is_some() && facts.quantity.is_some());

    let binance = Config::load(&example("binance.toml")).unwrap();
    for (method, path, action) in [
        (Method::GET, "/api/v3/exchangeInfo", Public),
        (Method::GET, "/api/v3/time", Public),
        (Method::GET, "/api/v3/depth", Public),
        (Method::GET, "/api/v3/aggTrades", Public),
        (Method::GET, "/api/v3/klines", Public),
        (Method::GET, "/api/v3/ticker/24hr", Public),
        (Method::GET, "/sapi/v1/capital/config/getall", Read),
        (Method::GET, "/sapi/v1/margin/allPairs", Read),
        (Method::GET, "/sapi/v1/margin/isolated/allPairs", Read),
        (Method::GET, "/api/v3/account", Read),
        (Method::GET, "/api/v3/order", Read),
        (Method::GET, "/api/v3/openOrders", Read),
        (Method::GET, "/api/v3/allOrders", Read),
        (Method::GET, "/api/v3/myTrades", Read),
        (Method::GET, "/sapi/v1/capital/deposit/hisrec", Read),
        (Method::GET, "/sapi/v1/capital/withdraw/history", Read),
        (Method::POST, "/api/v3/order", Trade),
        (Method::DELETE, "/api/v3/order", Trade),
        (Method::DELETE, "/api/v3/openOrders", Trade),
        (Method::POST, "/sapi/v1/capital/withdraw/apply", Withdraw),
    ] {
        let c = binance.routes.classify(&request(method.clone(), path, &[]));
        assert_eq!(c.unwrap().action, action, "binance {method} {path}");
    }
    let withdraw = request(
        Method::POST,
        "/sapi/v1/capital/withdraw/apply",
        &[("coin", "USDT"), ("amount", "10"), ("address", "0xabc")],
    );
    let facts = binance.routes.classify(&withdraw).unwrap().facts;
    assert_eq!(facts.asset.as_deref(), Some("usdt"));
    assert_eq!(facts.address.as_deref(), Some("0xabc"));

    let kraken = Config::load(&example("kraken.toml")).unwrap();
    for (method, path, action) in [
        (Method::GET, "/0/public/Time", Public),
        (Method::GET, "/0/public/Assets", Public),
        (Method::GET, "/0/public/AssetPairs", Public),
        (Method::GET, "/0/public/Ticker", Public),
        (Method::GET, "/0/public/Depth", Public),
        (Method::POST, "/0/private/BalanceEx", Read),
        (Method::POST, "/0/private/OpenOrders", Read),
        (Method::POST, "/0/private/ClosedOrders", Read),
        (Method::POST, "/0/private/QueryOrders", Read),
        (Method::POST, "/0/private/TradesHistory", Read),
        (Method::POST, "/0/private/DepositStatus", Read),
        (Method::POST, "/0/private/WithdrawStatus", Read),
        (Method::POST, "/0/private/AddOrder", Trade),
        (Method::POST, "/0/private/CancelOrder", Trade),
        (Method::POST, "/0/private/Withdraw", Withdraw),
    ] {
        let c = kraken.routes.classify(&request(method.clone(), path, &[]));
        assert_eq!(c.unwrap().action, action, "kraken {method} {path}");
    }
    let order = request(
        Method::POST,
        "/0/private/AddOrder",
        &[("pair", "XXBTZUSD"), ("volume", "1.5"), ("price", "30000")],
    );
    let facts = kraken.routes.classify(&order).unwrap().facts;
    assert_eq!(facts.asset.as_deref(), Some("xxbtzusd"));
    assert!(facts.price.is_some() && facts.quantity.is_some());
}

// ---- errors name file, line and key ------------------------------------------------

#[test]
fn bad_action_displays_file_line_key_and_choices() {
    let text = format!("{MINIMAL}\n[[route]]\nmethod = \"POST\"\npath = \"/tapi\"\nselect = \"withdraw\"\naction = \"wthdraw\"\n");
    let e = Config::parse(&text, Path::new("config/examples/zaif.toml")).unwrap_err();
    assert_eq!(
        e.to_string(),
        "config/examples/zaif.toml:13: route[1].action: unknown action \"wthdraw\" (expected public, read, trade or withdraw)"
    );
}

#[test]
fn unknown_top_level_key() {
    // Top-level keys come before the first table; after it they would belong to it.
    let e = err(&format!("# a comment\nlimits = 5\n{MINIMAL}"));
    assert!(at(&e, 2, "limits").starts_with("unknown key `limits`"));
    let e = err(&format!("{MINIMAL}\n[limit]\nrate = 5\n"));
    assert!(at(&e, 9, "limit").starts_with("unknown key `limit`"));
}

#[test]
fn unknown_key_in_section() {
    let e = err(&format!(
        "[server]\nlisten = \"127.0.0.1:1\"\nmax_body = 5\n{MINIMAL}"
    ));
    assert!(at(&e, 3, "server.max_body").starts_with("unknown key `max_body`"));
}

#[test]
fn unknown_key_in_route() {
    let text = format!(
        "{MINIMAL}\n[[route]]\nmethod = \"GET\"\npath = \"/api/1/depth/{{pair}}\"\nacton = \"public\"\n"
    );
    let e = err(&text);
    assert!(at(&e, 12, "route[1].acton").starts_with("unknown key `acton`"));
}

#[test]
fn missing_key_in_route_points_at_its_table() {
    let e = err(&format!(
        "{MINIMAL}\n[[route]]\nmethod = \"GET\"\npath = \"/x\"\n"
    ));
    assert_eq!(at(&e, 9, "route[1].action"), "missing key `action`");
}

#[test]
fn missing_dialect_and_routes() {
    let e = err("[server]\n");
    assert_eq!((e.line, e.key.as_deref()), (None, Some("dialect")));
    assert_eq!(
        e.to_string(),
        "dir/keyguard.toml: dialect: missing key `dialect`"
    );
    let e = err("[dialect]\nkind = \"zaif\"\n");
    assert_eq!((e.line, e.key.as_deref()), (None, Some("route")));
}

#[test]
fn syntax_errors_have_a_line() {
    let e = err("[server]\nlisten = \"127.0.0.1:8080\n[dialect]\n");
    assert_eq!((e.line, e.key.as_deref()), (Some(2), None), "{e}");
    assert!(e.to_string().starts_with("dir/keyguard.toml:2: "), "{e}");
    let e = err(&format!("{MINIMAL}\n[[route]\n"));
    assert_eq!((e.line, e.key.as_deref()), (Some(9), None), "{e}");
    assert!(!e.message.contains('\n'));
    let e = err(&MINIMAL.replace("kind = \"zaif\"\n", "kind = \"zaif\"\nkind = \"kraken\"\n"));
    assert_eq!((e.line, e.key.as_deref()), (Some(3), None), "{e}");
    assert!(e.message.contains("duplicate key"), "{e}");
}

#[test]
fn wrong_type_names_key() {
    let e = err(&format!("[server]\n\nlisten = 8080\n{MINIMAL}"));
    assert!(at(&e, 3, "server.listen").contains("expected a string"));
    let e = err(&format!("[server]\nmax_connections = \"many\"\n{MINIMAL}"));
    at(&e, 2, "server.max_connections");
}

#[test]
fn bad_cidr_names_the_element() {
    let text = format!(
        "[server]\ntrusted_proxies = [\n  \"10.0.0.0/8\",\n  \"10.0.0.1/8\",\n]\n{MINIMAL}"
    );
    let e = err(&text);
    assert!(at(&e, 4, "server.trusted_proxies[1]").contains("did you mean `10.0.0.0/8`"));
    let e = err(&format!(
        "[server]\ntrusted_proxies = [\"nope\"]\n{MINIMAL}"
    ));
    at(&e, 2, "server.trusted_proxies[0]");
    let cfg = ok(&format!(
        "[server]\ntrusted_proxies = [\"10.0.0.0/8\", \"::1\"]\n{MINIMAL}"
    ));
    assert_eq!(cfg.server.trusted_proxies.len(), 2);
}

#[test]
fn bad_listen_addresses() {
    let e = err(&format!("[server]\nlisten = \"localhost:8080\"\n{MINIMAL}"));
    assert!(at(&e, 2, "server.listen").contains("invalid socket address"));
    let e = err(&format!(
        "[server]\nlisten = \"127.0.0.1:8080\"\nadmin_listen = \"127.0.0.1:8080\"\n{MINIMAL}"
    ));
    assert!(at(&e, 3, "server.admin_listen").contains("own port"));
}

#[test]
fn upstream_must_be_plain_http_authority() {
    for bad in [
        "https://127.0.0.1:9000",
        "127.0.0.1:9000",
        "http://127.0.0.1:9000/api",
        "http://127.0.0.1:9000/?x=1",
        "http://user@127.0.0.1:9000",
        "http://127.0.0.1:0",
        "http://127.0.0.1:99999",
        "http://127.0.0.1:",
        "http://h/#frag",
    ] {
        assert!(bad.parse::<Upstream>().is_err(), "{bad} accepted");
        let e = err(&format!("[server]\n\nupstream = \"{bad}\"\n{MINIMAL}"));
        assert!(at(&e, 3, "server.upstream").contains("invalid upstream"));
    }
    for (good, shown) in [
        ("http://127.0.0.1:9000", "http://127.0.0.1:9000"),
        ("http://127.0.0.1:9000/", "http://127.0.0.1:9000"),
        ("http://[::1]:9000", "http://[::1]:9000"),
        ("http://exchange.internal", "http://exchange.internal"),
    ] {
        let up: Upstream = good.parse().unwrap();
        assert_eq!(up.to_string(), shown);
        assert_eq!(up.scheme(), &http::uri::Scheme::HTTP);
        assert_eq!(up.uri().to_string(), format!("{shown}/"));
    }
    let cfg = ok(MINIMAL);
    let e = cfg.require_upstream().unwrap_err();
    assert_eq!(
        e.to_string(),
        "dir/keyguard.toml: server.upstream: no upstream: set it in [server] or pass --upstream"
    );
}

#[test]
fn ranges_are_checked_where_written() {
    let e = err(&format!(
        "[assertion]\nkey_file = \"a.key\"\nttl_secs = 31\n{MINIMAL}"
    ));
    assert_eq!(
        at(&e, 3, "assertion.ttl_secs"),
        "31 is out of range (expected 1 to 30)"
    );
    let e = err(&format!("[assertion]\nttl_secs = 0\n{MINIMAL}"));
    at(&e, 2, "assertion.ttl_secs");
    let e = err(&format!("[server]\nmax_body_bytes = 16777217\n{MINIMAL}"));
    at(&e, 2, "server.max_body_bytes");
    let e = err(&format!("[server]\nidle_timeout_ms = -1\n{MINIMAL}"));
    at(&e, 2, "server.idle_timeout_ms");
    let e = err(&format!("[secrets]\nmaster_key_env = \"1BAD\"\n{MINIMAL}"));
    at(&e, 2, "secrets.master_key_env");
    let e = err(&format!("[audit]\npath = \"\"\n{MINIMAL}"));
    assert_eq!(at(&e, 2, "audit.path"), "must not be empty");
}

#[test]
fn dialect_options() {
    let e = err("[dialect]\nkind = \"zaf\"\n");
    assert_eq!(
        at(&e, 2, "dialect.kind"),
        "unknown dialect \"zaf\" (expected zaif, binance or kraken)"
    );
    let text = MINIMAL.replace(
        "kind = \"zaif\"\n",
        "kind = \"zaif\"\nfuture_tolerance_ms = 500\nrecv_window_max_ms = 9000\n",
    );
    let e = err(&text);
    assert!(at(&e, 3, "dialect.future_tolerance_ms").contains("only the binance dialect"));

    let binance = |opts: &str| {
        format!(
            "[dialect]\nkind = \"binance\"\n{opts}\n[[route]]\nmethod = \"GET\"\npath = \"/api/v3/time\"\naction = \"public\"\n"
        )
    };
    let cfg = ok(&binance(
        "recv_window_max_ms = 10000\nfuture_tolerance_ms = 0",
    ));
    assert_eq!(cfg.dialect.recv_window_default_ms, 5000);
    assert_eq!(cfg.dialect.recv_window_max_ms, 10000);
    assert_eq!(cfg.dialect.future_tolerance_ms, 0);
    let e = err(&binance("recv_window_max_ms = 4000"));
    assert!(at(&e, 3, "dialect.recv_window_max_ms").contains("larger than"));
    let e = err(&binance("recv_window_default_ms = 60001"));
    at(&e, 3, "dialect.recv_window_default_ms");
}

#[test]
fn route_table_errors_point_at_the_route() {
    // Duplicate: the second table's header line, naming the first.
    let text = format!(
        "{MINIMAL}\n[[route]]\nmethod = \"GET\"\npath = \"/api/1/depth/{{pair}}\"\naction = \"public\"\n\n[[route]]\nmethod = \"GET\"\npath = \"/api/1/ticker/{{pair}}\"\naction = \"public\"\n"
    );
    let e = err(&text);
    assert_eq!(
        at(&e, 14, "route[2]"),
        "duplicates route[0] (line 4): same method, path and select"
    );

    let e = err(&format!(
        "{MINIMAL}\n[[route]]\nmethod = \"GET\"\n\npath = \"/api//x\"\naction = \"public\"\n"
    ));
    assert!(at(&e, 12, "route[1].path").contains("must start with `/`"));
    let e = err(&format!(
        "{MINIMAL}\n[[route]]\nmethod = \"GET\"\npath = \"/api?x=1\"\naction = \"public\"\n"
    ));
    at(&e, 11, "route[1].path");

    let e = err(&format!(
        "{MINIMAL}\n[[route]]\nmethod = \"POST\"\npath = \"/tapi\"\nselect = \"withdraw\"\naction = \"withdraw\"\nasset = \"currency\"\namount = \"amount\"\n"
    ));
    assert!(at(&e, 9, "route[1]").contains("holds the address"));

    let e = err(&format!(
        "{MINIMAL}\n[[route]]\nmethod = \"PATCH\"\npath = \"/x\"\naction = \"public\"\n"
    ));
    at(&e, 10, "route[1].method");
}

#[test]
fn selector_rules() {
    // Zaif: a private route on /tapi without `select` would swallow every method.
    let e = err(&format!(
        "{MINIMAL}\n[[route]]\nmethod = \"POST\"\npath = \"/tapi\"\naction = \"read\"\n"
    ));
    assert!(at(&e, 9, "route[1].select").contains("withdraw included"));
    let e = err(&format!(
        "{MINIMAL}\n[[route]]\nmethod = \"POST\"\npath = \"/tapi\"\nselect = \"get_info\"\naction = \"read\"\n\n[[route]]\nmethod = \"POST\"\npath = \"/tapi\"\naction = \"public\"\n"
    ));
    assert!(at(&e, 15, "route[2].select").contains("route[1] selects"));
    // Other dialects have no selector field.
    let e = err(
        "[dialect]\nkind = \"kraken\"\n[[route]]\nmethod = \"POST\"\npath = \"/0/private/Balance\"\nselect = \"x\"\naction = \"read\"\n",
    );
    at(&e, 6, "route[0].select");
}

// ---- paths and overrides -----------------------------------------------------------

const PATHS: &str = "\
[server]
data_dir = \"state\"
[secrets]
master_key_file = \"/etc/keyguard/master.key\"
[assertion]
key_file = \"keys/assertion.key\"
";

#[test]
fn relative_paths_resolve_against_the_config_dir() {
    let cfg = ok(&format!("{PATHS}{MINIMAL}"));
    assert_eq!(cfg.path, Path::new("dir/keyguard.toml"));
    assert_eq!(cfg.server.data_dir, Path::new("dir/state"));
    assert_eq!(
        cfg.secrets.master_key_file.path(),
        Path::new("/etc/keyguard/master.key")
    );
    assert_eq!(
        cfg.assertion.key_file.path(),
        Path::new("dir/state/keys/assertion.key")
    );
    assert_eq!(
        cfg.assertion.key_file.configured(),
        Path::new("keys/assertion.key")
    );
    assert_eq!(cfg.audit.path.path(), Path::new("dir/state/audit.jsonl"));

    // A bare file name has no directory part; an absolute data_dir ignores the config's.
    let cfg = Config::parse(MINIMAL, Path::new("keyguard.toml")).unwrap();
    assert_eq!(cfg.server.data_dir, Path::new("keyguard-data"));
    let abs = ok(&format!("[server]\ndata_dir = \"/var/lib/kg\"\n{MINIMAL}"));
    assert_eq!(abs.server.data_dir, Path::new("/var/lib/kg"));
    assert_eq!(
        abs.secrets.master_key_file.path(),
        Path::new("/var/lib/kg/master.key")
    );
}

#[test]
fn defaults() {
    let cfg = ok(MINIMAL);
    let s = &cfg.server;
    assert_eq!(s.listen, SocketAddr::from(([127, 0, 0, 1], 8080)));
    assert_eq!((s.admin_listen, s.upstream.as_ref()), (None, None));
    assert!(s.trusted_proxies.is_empty());
    assert_eq!(
        (s.max_body_bytes, s.max_header_bytes, s.max_connections),
        (65536, 16384, 4096)
    );
    assert_eq!(
        (
            s.header_read_timeout_ms,
            s.body_read_timeout_ms,
            s.idle_timeout_ms
        ),
        (5000, 10_000, 60_000)
    );
    assert_eq!(
        (
            s.upstream_connect_timeout_ms,
            s.upstream_response_timeout_ms
        ),
        (2000, 10_000)
    );
    assert_eq!(cfg.secrets.master_key_env, "KEYGUARD_MASTER_KEY");
    assert_eq!(
        cfg.secrets.master_key_file.path(),
        Path::new("dir/keyguard-data/master.key")
    );
    assert_eq!(cfg.assertion.ttl_secs, 30);
    assert_eq!(cfg.withdraw.address_cooldown_ms, 86_400_000);
    assert_eq!(
        cfg.dialect,
        keyguard_policy::DialectConfig::new(DialectKind::Zaif)
    );
    let cfg = ok(&format!(
        "[withdraw]\naddress_cooldown_secs = 60\n{MINIMAL}"
    ));
    assert_eq!(cfg.withdraw.address_cooldown_ms, 60_000);
}

#[test]
fn data_dir_override_moves_relative_files_only() {
    let mut cfg = ok(&format!("{PATHS}{MINIMAL}"));
    cfg.set_data_dir(Path::new("/srv/kg"));
    assert_eq!(cfg.server.data_dir, Path::new("/srv/kg"));
    assert_eq!(
        cfg.assertion.key_file.path(),
        Path::new("/srv/kg/keys/assertion.key")
    );
    assert_eq!(cfg.audit.path.path(), Path::new("/srv/kg/audit.jsonl"));
    assert_eq!(
        cfg.secrets.master_key_file.path(),
        Path::new("/etc/keyguard/master.key")
    );
    // Relative to the working directory, like any command-line path.
    cfg.set_data_dir("here");
    assert_eq!(cfg.audit.path.path(), Path::new("here/audit.jsonl"));
}

#[test]
fn upstream_override() {
    let mut cfg = ok(&format!(
        "[server]\nupstream = \"http://127.0.0.1:9000\"\n{MINIMAL}"
    ));
    cfg.set_upstream("http://10.0.0.5:80").unwrap();
    assert_eq!(
        cfg.require_upstream().unwrap().to_string(),
        "http://10.0.0.5:80"
    );
    let e = cfg.set_upstream("https://10.0.0.5").unwrap_err();
    assert!(e
        .to_string()
        .starts_with("invalid upstream \"https://10.0.0.5\": https"));
    assert_eq!(
        cfg.require_upstream().unwrap().to_string(),
        "http://10.0.0.5:80"
    );
}

#[test]
fn load_reports_unreadable_files() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.toml");
    let e = Config::load(&missing).unwrap_err();
    assert_eq!((e.line, e.key.as_deref()), (None, None));
    assert!(e
        .to_string()
        .starts_with(&format!("{}: cannot read: ", missing.display())));

    let file = dir.path().join("kg.toml");
    std::fs::write(&file, format!("bogus = 1\n{MINIMAL}")).unwrap();
    let e = Config::load(&file).unwrap_err();
    assert_eq!(e.file, file);
    at(&e, 1, "bogus");
    std::fs::write(&file, MINIMAL).unwrap();
    let cfg = Config::load(&file).unwrap();
    assert_eq!(cfg.server.data_dir, dir.path().join("keyguard-data"));
}
