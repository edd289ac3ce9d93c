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
        ("coincheck.toml", DialectKind::Coincheck),
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

fn request(method: Method, path: &str, params: &[(&str, &str)]) -> ParsedRequest<'static> {
    let mut p = Params::new();
    for (k, v) in params {
        p.insert(
            (*k).to_owned().into(),
            ParamValue::Text((*v).to_owned().into()),
            ParamSource::Body,
        )
        .unwrap();
    }
    ParsedRequest {
        method,
        path: path.to_owned().into(),
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

    let coincheck = Config::load(&example("coincheck.toml")).unwrap();
    assert_eq!(
        coincheck.dialect.public_base_url.as_deref(),
        Some("http://127.0.0.1:8080")
    );
    for (method, path, action) in [
        (Method::GET, "/api/ticker", Public),
        (Method::GET, "/api/trades", Public),
        (Method::GET, "/api/order_books", Public),
        (Method::GET, "/api/exchange_status", Public),
        (Method::GET, "/api/exchange/orders/rate", Public),
        (Method::GET, "/api/rate/btc_jpy", Public),
        (Method::GET, "/api/accounts", Read),
        (Method::GET, "/api/accounts/balance", Read),
        (Method::GET, "/api/bank_accounts", Read),
        (Method::GET, "/api/deposit_money", Read),
        (Method::GET, "/api/exchange/orders/opens", Read),
        (Method::GET, "/api/exchange/orders/12345", Read),
        (Method::GET, "/api/exchange/orders/cancel_status", Read),
        (Method::GET, "/api/exchange/orders/transactions", Read),
        (
            Method::GET,
            "/api/exchange/orders/transactions_pagination",
            Read,
        ),
        (Method::GET, "/api/send_money", Read),
        (Method::GET, "/api/withdraws", Read),
        (Method::POST, "/api/exchange/orders", Trade),
        (Method::DELETE, "/api/exchange/orders/12345", Trade),
        (Method::POST, "/api/send_money", Withdraw),
        (Method::POST, "/api/withdraws", Withdraw),
    ] {
        let c = coincheck
            .routes
            .classify(&request(method.clone(), path, &[]));
        assert_eq!(c.unwrap().action, action, "coincheck {method} {path}");
    }
    // Denied on purpose: a new bank account is a new withdrawal destination.
    for (method, path) in [
        (Method::POST, "/api/bank_accounts"),
        (Method::DELETE, "/api/bank_accounts/7"),
        (Method::DELETE, "/api/withdraws/7"),
        (Method::DELETE, "/api/exchange/orders/opens"),
        (Method::DELETE, "/api/exchange/orders/0012"),
        (Method::GET, "/api/exchange/orders/1.5"),
    ] {
        assert!(
            coincheck
                .routes
                .classify(&request(method.clone(), path, &[]))
                .is_err(),
            "coincheck {method} {path}"
        );
    }
    let yen = request(
        Method::POST,
        "/api/withdraws",
        &[
            ("bank_account_id", "2222"),
            ("amount", "50000"),
            ("currency", "JPY"),
        ],
    );
    let facts = coincheck.routes.classify(&yen).unwrap().facts;
    assert_eq!(facts.asset.as_deref(), Some("jpy"));
    assert_eq!(facts.address.as_deref(), Some("2222"));
    let send = request(
        Method::POST,
        "/api/send_money",
        &[("currency", "BTC"), ("address", "bc1qx"), ("amount", "0.1")],
    );
    let facts = coincheck.routes.classify(&send).unwrap().facts;
    assert_eq!(facts.asset.as_deref(), Some("btc"));
    assert_eq!(facts.address.as_deref(), Some("bc1qx"));
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
    let e = err(&format!("# a comment\nrate_limits = 5\n{MINIMAL}"));
    assert!(at(&e, 2, "rate_limits").starts_with("unknown key `rate_limits`"));
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
fn upstream_must_be_a_bare_http_or_https_authority() {
    for bad in [
        "ftp://127.0.0.1:9000",
        "127.0.0.1:9000",
        "https://127.0.0.1:9000/api",
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
        ("https://exchange.internal", "https://exchange.internal"),
    ] {
        let up: Upstream = good.parse().unwrap();
        assert_eq!(up.to_string(), shown);
        let scheme = if shown.starts_with("https") {
            http::uri::Scheme::HTTPS
        } else {
            http::uri::Scheme::HTTP
        };
        assert_eq!(up.scheme(), &scheme);
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
    let e = err(&format!("[server]\nbody_read_timeout_ms = -1\n{MINIMAL}"));
    at(&e, 2, "server.body_read_timeout_ms");
    let e = err(&format!("[server]\nidle_timeout_ms = 60000\n{MINIMAL}"));
    assert!(
        at(&e, 2, "server.idle_timeout_ms").contains("header_read_timeout_ms"),
        "{e}"
    );
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
        "unknown dialect \"zaf\" (expected zaif, binance, kraken or coincheck)"
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

    let coincheck = |opts: &str, path: &str| {
        format!(
            "[dialect]\nkind = \"coincheck\"\n{opts}\n[[route]]\nmethod = \"DELETE\"\npath = \"{path}\"\naction = \"trade\"\n"
        )
    };
    let cfg = ok(&coincheck(
        "public_base_url = \"https://api.example.com/\"",
        "/api/exchange/orders/{id:digits}",
    ));
    assert_eq!(
        cfg.dialect.public_base_url.as_deref(),
        Some("https://api.example.com")
    );
    let e = err(&coincheck("", "/api/x"));
    assert_eq!(e.key.as_deref(), Some("dialect.public_base_url"));
    assert!(e.message.contains("needs `public_base_url`"), "{e}");
    for bad in [
        "ftp://x",
        "https://x/api",
        "https://x?a=1",
        "https://u@x",
        "x.example",
        "https://",
    ] {
        let e = err(&coincheck(
            &format!("public_base_url = \"{bad}\""),
            "/api/x",
        ));
        at(&e, 3, "dialect.public_base_url");
    }
    let e = err(&MINIMAL.replace(
        "kind = \"zaif\"\n",
        "kind = \"zaif\"\npublic_base_url = \"https://x\"\n",
    ));
    assert!(at(&e, 3, "dialect.public_base_url").contains("only the coincheck dialect"));
    // A private template segment must declare its shape.
    let e = err(&coincheck(
        "public_base_url = \"https://x\"",
        "/api/exchange/orders/{id}",
    ));
    assert!(
        at(&e, 6, "route[0].path").contains("must declare its shape"),
        "{e}"
    );
    let e = err(&coincheck(
        "public_base_url = \"https://x\"",
        "/api/exchange/orders/{id:float}",
    ));
    at(&e, 6, "route[0].path");
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
        (s.header_read_timeout_ms, s.body_read_timeout_ms),
        (5000, 10_000)
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
    let e = cfg.set_upstream("ftp://10.0.0.5").unwrap_err();
    assert!(e
        .to_string()
        .starts_with("invalid upstream \"ftp://10.0.0.5\": must start with"));
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

// ---- [limits], [[velocity.rule]], [anomaly], [alerts] ---------------------------------

use std::time::Duration;

use keyguard_policy::anomaly::{AnomalyConfig, DormantRule, SharedIpRule};
use keyguard_policy::decimal::Decimal;
use keyguard_policy::limits::{Rate, RateLimitConfig, RateTier};
use keyguard_policy::velocity::{AssetMatch, LedgerKind, SubjectKind, VelocityConfig};

/// `section` after MINIMAL: its first line is line 9 of the file.
fn with(section: &str) -> String {
    format!("{MINIMAL}\n{section}")
}

fn rate(count: u32, per_ms: u64, burst: Option<u32>) -> Option<Rate> {
    Some(Rate::new(count, Duration::from_millis(per_ms), burst).unwrap())
}

fn dec(s: &str) -> Decimal {
    keyguard_policy::decimal::parse_decimal(s).unwrap()
}

#[test]
fn new_sections_default_when_absent() {
    let cfg = ok(MINIMAL);
    assert_eq!(cfg.limits, RateLimitConfig::default());
    assert_eq!(cfg.velocity, VelocityConfig::default());
    assert_eq!(cfg.anomaly, AnomalyConfig::default());
    assert_eq!(cfg.alerts, AlertsConfig::default());
    assert_eq!(cfg.alerts.webhook_url, None);
    assert_eq!(cfg.alerts.timeout, Duration::from_secs(2));
    assert_eq!((cfg.alerts.max_retries, cfg.alerts.queue), (5, 1024));
}

#[test]
fn examples_set_limits_velocity_and_anomaly_rules() {
    for name in ["zaif.toml", "binance.toml", "kraken.toml", "coincheck.toml"] {
        let cfg = Config::load(&example(name)).unwrap_or_else(|e| panic!("{e}"));
        let l = &cfg.limits;
        assert_eq!(l.ip, rate(50, 1000, Some(100)), "{name}");
        assert_eq!(l.default_tier, "default");
        let d = &l.tiers["default"];
        assert_eq!(d.key, rate(10, 1000, Some(20)), "{name}");
        assert_eq!(d.trade, rate(5, 1000, Some(10)), "{name}");
        assert_eq!(d.withdraw, rate(5, 60_000, None), "{name}");
        assert!(l.tiers.contains_key("pro"));
        // Buildable by the policy as they are.
        keyguard_policy::limits::RateLimits::new(l).unwrap();

        let rules = &cfg.velocity.rules;
        let has = |kind, subject, window_ms, amount: bool| {
            rules.iter().any(|r| {
                r.kind == kind
                    && r.subject == subject
                    && r.window_ms == window_ms
                    && r.max_count.is_some()
                    && r.max_amount.is_some() == amount
            })
        };
        use LedgerKind::*;
        use SubjectKind::*;
        assert!(has(Withdraw, Key, 3_600_000, true), "{name}");
        assert!(has(Withdraw, Key, 86_400_000, true), "{name}");
        assert!(has(Withdraw, Account, 86_400_000, true), "{name}");
        assert!(has(Order, Key, 60_000, false), "{name}");
        assert!(rules
            .iter()
            .any(|r| matches!(r.asset, AssetMatch::Exact(_))));

        // Written out explicitly, and equal to the secure defaults.
        assert_eq!(cfg.anomaly, AnomalyConfig::default(), "{name}");
        assert_eq!(cfg.alerts, AlertsConfig::default(), "{name}");
    }
}

#[test]
fn limits_parse() {
    let cfg = ok(&with(
        "[limits]\n\
         ip = { count = 50, per = \"1s\", burst = 100 }\n\
         default_tier = \"basic\"\n\
         max_entries = 500\n\
         [limits.tiers.basic]\n\
         key = { count = 10, per = \"500ms\" }\n\
         withdraw = { count = 5, per = \"1m\" }\n\
         [limits.tiers.pro]\n\
         account = { count = 100, per = \"1h\", burst = 7 }\n\
         [limits.key_tiers]\n\
         kg_0123456789abcdef = \"pro\"\n",
    ));
    let l = &cfg.limits;
    assert_eq!(l.ip, rate(50, 1000, Some(100)));
    assert_eq!((l.default_tier.as_str(), l.max_entries), ("basic", 500));
    assert_eq!(
        l.tiers["basic"],
        RateTier {
            key: rate(10, 500, None),
            withdraw: rate(5, 60_000, None),
            ..RateTier::default()
        }
    );
    assert_eq!(l.tiers["pro"].account, rate(100, 3_600_000, Some(7)));
    assert_eq!(l.key_tiers["kg_0123456789abcdef"], "pro");

    // Only an IP limit: the default tier is implied (no per-key limits).
    let cfg = ok(&with("[limits]\nip = { count = 5, per = \"1s\" }\n"));
    assert_eq!(cfg.limits.tiers["default"], RateTier::default());
    assert_eq!(cfg.limits.ip, rate(5, 1000, None));
}

#[test]
fn limits_errors_name_line_and_key() {
    // Bad duration inside an inline table.
    let e = err(&with("[limits]\n\nip = { count = 5, per = \"1sec\" }\n"));
    assert!(
        at(&e, 11, "limits.ip.per").contains("invalid duration \"1sec\""),
        "{e}"
    );
    let e = err(&with(
        "[limits.tiers.default]\ntrade = { count = 5, per = \"0s\" }\n",
    ));
    assert!(at(&e, 10, "limits.tiers.default.trade.per").contains("out of range"));
    let e = err(&with("[limits]\nip = { count = 0, per = \"1s\" }\n"));
    at(&e, 10, "limits.ip.count");
    let e = err(&with("[limits]\nip = { count = 5, per = 1 }\n"));
    assert!(at(&e, 10, "limits.ip.per").contains("expected a string"));

    // Unknown tiers, at the line that names them.
    let e = err(&with(
        "[limits]\ndefault_tier = \"gold\"\n[limits.tiers.default]\n",
    ));
    assert_eq!(
        at(&e, 10, "limits.default_tier"),
        "unknown tier `gold` (defined: `default`)"
    );
    let e = err(&with(
        "[limits.tiers.default]\nkey = { count = 1, per = \"1s\" }\n[limits.key_tiers]\nkg_aa = \"default\"\nkg_bb = \"pro\"\n",
    ));
    assert!(at(&e, 13, "limits.key_tiers.kg_bb").starts_with("unknown tier `pro`"));
    let e = err(&with(
        "[limits.key_tiers]\nkg_aa = \"default\"\nnot-a-key = \"default\"\n",
    ));
    assert!(at(&e, 11, "limits.key_tiers.not-a-key").contains("not a key id"));
    // Tiers without the default tier would leave other keys unlimited.
    let e = err(&with(
        "[limits.tiers.pro]\nkey = { count = 1, per = \"1s\" }\n",
    ));
    assert_eq!(
        (e.line, e.key.as_deref()),
        (None, Some("limits.default_tier"))
    );
    assert!(e.message.starts_with("no tier `default`"), "{e}");

    // Unknown keys at every level.
    let e = err(&with("[limits]\nipp = { count = 1, per = \"1s\" }\n"));
    assert!(at(&e, 10, "limits.ipp").starts_with("unknown key `ipp`"));
    let e = err(&with(
        "[limits.tiers.default]\n\ntrades = { count = 1, per = \"1s\" }\n",
    ));
    assert!(at(&e, 11, "limits.tiers.default.trades").starts_with("unknown key `trades`"));
    let e = err(&with("[limits]\nip = { count = 1, period = \"1s\" }\n"));
    assert!(
        at(&e, 10, "limits.ip.period").starts_with("unknown key `period`"),
        "{e}"
    );
}

const WITHDRAW_RULE: &str = "[[velocity.rule]]\nkind = \"withdraw\"\nsubject = \"key\"\nasset = \"BTC\"\nwindow = \"24h\"\nmax_amount = \"2.5\"\nmax_count = 10\n";

#[test]
fn velocity_parses() {
    let cfg = ok(&with(&format!(
        "{WITHDRAW_RULE}\n[[velocity.rule]]\nkind = \"order\"\nsubject = \"account\"\nwindow = \"1m\"\nmax_count = 100\n"
    )));
    let r = &cfg.velocity.rules;
    assert_eq!(r.len(), 2);
    assert_eq!(
        (r[0].kind, r[0].subject, &r[0].asset, r[0].window_ms),
        (
            LedgerKind::Withdraw,
            SubjectKind::Key,
            &AssetMatch::Exact("btc".into()),
            86_400_000
        )
    );
    assert_eq!(
        (r[0].max_amount, r[0].max_count),
        (Some(dec("2.5")), Some(10))
    );
    assert_eq!(r[1].asset, AssetMatch::Any, "asset defaults to *");
    assert_eq!((r[1].max_amount, r[1].max_count), (None, Some(100)));
    // Exact: 0.1 is 0.1, not the float next to it.
    let cfg = ok(&with(&WITHDRAW_RULE.replace("\"2.5\"", "\"0.1\"")));
    assert_eq!(cfg.velocity.rules[0].max_amount, Some(dec("0.1")));
}

#[test]
fn velocity_errors_name_line_and_key() {
    // WITHDRAW_RULE's lines: 9 header, 10 kind, 11 subject, 12 asset, 13 window,
    // 14 max_amount, 15 max_count.
    let e = err(&with(&WITHDRAW_RULE.replace("\"2.5\"", "\"2.5.1\"")));
    assert!(at(&e, 14, "velocity.rule[0].max_amount").contains("invalid amount"));
    let e = err(&with(&WITHDRAW_RULE.replace("\"2.5\"", "2.5")));
    assert!(at(&e, 14, "velocity.rule[0].max_amount").contains("as a string"));
    let e = err(&with(&WITHDRAW_RULE.replace("\"2.5\"", "\"-1\"")));
    at(&e, 14, "velocity.rule[0].max_amount");
    let e = err(&with(&WITHDRAW_RULE.replace("\"2.5\"", "\"0\"")));
    assert!(at(&e, 14, "velocity.rule[0].max_amount").contains("greater than zero"));
    let e = err(&with(&WITHDRAW_RULE.replace("\"24h\"", "\"1 day\"")));
    assert!(at(&e, 13, "velocity.rule[0].window").contains("invalid duration"));
    let e = err(&with(
        &WITHDRAW_RULE.replace("\"withdraw\"", "\"withdrawal\""),
    ));
    assert!(at(&e, 10, "velocity.rule[0].kind").contains("withdraw or order"));
    let e = err(&with(&WITHDRAW_RULE.replace("\"key\"", "\"ip\"")));
    assert!(at(&e, 11, "velocity.rule[0].subject").contains("key or account"));
    let e = err(&with(&WITHDRAW_RULE.replace("\"BTC\"", "\"\"")));
    at(&e, 12, "velocity.rule[0].asset");
    let e = err(&with(
        &WITHDRAW_RULE.replace("max_count = 10", "max_count = 0"),
    ));
    at(&e, 15, "velocity.rule[0].max_count");
    let e = err(&with(&WITHDRAW_RULE.replace("window", "windw")));
    assert!(at(&e, 13, "velocity.rule[0].windw").starts_with("unknown key `windw`"));
    let e = err(&with(&WITHDRAW_RULE.replace("window = \"24h\"\n", "")));
    assert_eq!(at(&e, 9, "velocity.rule[0].window"), "missing key `window`");
    let e = err(&with("[velocity]\nrules = []\n"));
    assert!(at(&e, 10, "velocity.rules").starts_with("unknown key `rules`"));

    // The policy's own check, at the offending rule's header.
    let e = err(&with(&format!(
        "{WITHDRAW_RULE}\n[[velocity.rule]]\nkind = \"order\"\nsubject = \"key\"\nwindow = \"1m\"\n"
    )));
    assert_eq!(
        at(&e, 17, "velocity.rule[1]"),
        "set max_amount, max_count or both"
    );
}

#[test]
fn anomaly_parses() {
    let cfg = ok(&with(
        "[anomaly]\nmax_entries = 42\n\
         [anomaly.dormant]\nafter = \"30d\"\nshadow = true\n\
         [anomaly.new_ip]\nenabled = false\nprobation = \"5m\"\n\
         [anomaly.many_ips]\nmax_ips = 9\ninclude_allowlisted = true\n\
         [anomaly.shared_ip]\nmax_keys = 2\nblock = \"2h\"\nexempt = [\"203.0.113.0/24\", \"2001:db8::/48\"]\n\
         [anomaly.auth_failures]\nmax_failures = 3\nwindow = \"30s\"\nban = \"1h\"\n",
    ));
    let a = &cfg.anomaly;
    let d = AnomalyConfig::default();
    assert_eq!(a.max_entries, 42);
    assert_eq!(
        a.dormant,
        Some(DormantRule {
            after_ms: 30 * 86_400_000,
            first_use_within_ms: 7 * 86_400_000,
            shadow: true
        })
    );
    assert_eq!(a.new_ip, None, "enabled = false turns a rule off");
    let m = a.many_ips.as_ref().unwrap();
    assert_eq!((m.max_ips, m.include_allowlisted), (9, true));
    assert_eq!(m.window_ms, d.many_ips.as_ref().unwrap().window_ms);
    assert_eq!(
        a.shared_ip,
        Some(SharedIpRule {
            max_keys: 2,
            block_ms: 7_200_000,
            exempt: vec![
                "203.0.113.0/24".parse().unwrap(),
                "2001:db8::/48".parse().unwrap()
            ],
            ..SharedIpRule::default()
        })
    );
    let f = a.auth_failures.as_ref().unwrap();
    assert_eq!(
        (f.max_failures, f.window_ms, f.ban_ms),
        (3, 30_000, 3_600_000)
    );
    assert!(!f.shadow);

    // An empty sub-table is the rule with its defaults, like an absent one.
    let cfg = ok(&with(
        "[anomaly.dormant]\n[anomaly.shared_ip]\nenabled = true\n",
    ));
    assert_eq!(cfg.anomaly, AnomalyConfig::default());
}

#[test]
fn anomaly_errors_name_line_and_key() {
    let e = err(&with("[anomaly.dormant]\naftr = \"90d\"\n"));
    assert!(at(&e, 10, "anomaly.dormant.aftr").starts_with("unknown key `aftr`"));
    let e = err(&with("[anomaly]\nshadow = true\n"));
    assert!(at(&e, 10, "anomaly.shadow").starts_with("unknown key `shadow`"));
    let e = err(&with("[anomaly.new_ip]\nprobation = \"60\"\n"));
    assert!(at(&e, 10, "anomaly.new_ip.probation").contains("invalid duration \"60\""));
    let e = err(&with(
        "[anomaly.shared_ip]\nexempt = [\"10.0.0.0/8\", \"office\"]\n",
    ));
    at(&e, 10, "anomaly.shared_ip.exempt[1]");
    let e = err(&with("[anomaly.auth_failures]\n\nban = \"0m\"\n"));
    assert!(at(&e, 11, "anomaly.auth_failures.ban").contains("out of range"));
    let e = err(&with("[anomaly.many_ips]\nmax_ips = 0\n"));
    at(&e, 10, "anomaly.many_ips.max_ips");
    let e = err(&with("[anomaly.many_ips]\nenabled = \"no\"\n"));
    at(&e, 10, "anomaly.many_ips.enabled");
    let e = err(&with("[anomaly.ip_ban]\n"));
    assert!(at(&e, 9, "anomaly.ip_ban").starts_with("unknown key `ip_ban`"));
}

#[test]
fn canary_parses_with_defaults_and_errors() {
    use keyguard_policy::anomaly::CanaryRule;
    assert_eq!(ok(MINIMAL).anomaly.canary, CanaryRule::default());
    assert_eq!(CanaryRule::default().block_ms, 86_400_000);
    let cfg = ok(&with("[canary]\nblock_for = \"2h\"\nlookback = \"7d\"\n"));
    assert_eq!(
        cfg.anomaly.canary,
        CanaryRule {
            block_ms: 7_200_000,
            lookback_ms: 7 * 86_400_000,
        }
    );
    // The [anomaly] section does not reset it.
    let cfg = ok(&with(
        "[canary]\nblock_for = \"2h\"\n\n[anomaly]\nmax_entries = 10\n",
    ));
    assert_eq!(cfg.anomaly.canary.block_ms, 7_200_000);
    let e = err(&with("[canary]\nblock_for = \"soon\"\n"));
    at(&e, 10, "canary.block_for");
    let e = err(&with("[canary]\nshadow = true\n"));
    at(&e, 10, "canary.shadow");
}

#[test]
fn alerts_parse_and_errors() {
    let cfg = ok(&with(
        "[alerts]\nwebhook_url = \"http://127.0.0.1:9999/hook\"\ntimeout = \"500ms\"\nmax_retries = 0\nqueue = 10\n",
    ));
    let a = &cfg.alerts;
    assert_eq!(a.webhook_url.as_deref(), Some("http://127.0.0.1:9999/hook"));
    assert_eq!(a.timeout, Duration::from_millis(500));
    assert_eq!((a.max_retries, a.queue), (0, 10));
    for url in [
        "https://hooks.example.com/services/T0/B0/xyz?x=1",
        "http://[::1]:9999/",
        "http://localhost",
    ] {
        let cfg = ok(&with(&format!("[alerts]\nwebhook_url = \"{url}\"\n")));
        assert_eq!(cfg.alerts.webhook_url.as_deref(), Some(url));
    }
    for (url, why) in [
        ("ftp://example.com/x", "http:// or https://"),
        ("example.com/hook", "not a URL"),
        ("mailto:ops@example.com", "http:// or https://"),
        ("http://user:pw@example.com/", "user information"),
        ("http://example.com/#x", "fragment"),
        ("http://example.com:0/", "port"),
        ("not a url", "not a URL"),
    ] {
        let e = err(&with(&format!("[alerts]\n\nwebhook_url = \"{url}\"\n")));
        assert!(at(&e, 11, "alerts.webhook_url").contains(why), "{url}: {e}");
    }
    let e = err(&with("[alerts]\ntimeout = \"10m\"\n"));
    assert!(
        at(&e, 10, "alerts.timeout").contains("expected 1ms to 5m"),
        "{e}"
    );
    let e = err(&with("[alerts]\nurl = \"http://x/\"\n"));
    assert!(at(&e, 10, "alerts.url").starts_with("unknown key `url`"));
}

#[test]
fn duration_syntax() {
    use crate::de::{format_ms, parse_duration_ms};
    for (s, ms) in [
        ("500ms", 500),
        ("1s", 1000),
        ("1m", 60_000),
        ("60m", 3_600_000),
        ("1h", 3_600_000),
        ("24h", 86_400_000),
        ("90d", 90 * 86_400_000),
        ("0s", 0),
    ] {
        assert_eq!(parse_duration_ms(s), Ok(ms), "{s}");
    }
    for s in [
        "", "1", "s", "1.5s", "-1s", "+1s", " 1s", "1s ", "1 s", "1S", "1h30m", "1sec", "1w",
        "1us", "0x10s",
    ] {
        assert!(parse_duration_ms(s).is_err(), "{s:?}");
    }
    assert!(parse_duration_ms("99999999999999999999d").is_err());
    assert!(parse_duration_ms("999999999999999999d")
        .unwrap_err()
        .contains("too long"));
    assert_eq!(
        [
            format_ms(1),
            format_ms(1500),
            format_ms(300_000),
            format_ms(90 * 86_400_000)
        ],
        ["1ms", "1500ms", "5m", "90d"]
    );
}

#[test]
fn assertion_alg_defaults_to_hs256_with_its_own_key_file() {
    let cfg = ok(MINIMAL);
    assert_eq!(cfg.assertion.alg, crate::AssertionAlg::Hs256);
    assert_eq!(
        cfg.assertion.key_file.configured(),
        Path::new("assertion-hs256.key")
    );
    let cfg = ok(&format!("[assertion]\nalg = \"EdDSA\"\n{MINIMAL}"));
    assert_eq!(cfg.assertion.alg, crate::AssertionAlg::EdDsa);
    // The name Ed25519 keys always had, so existing data dirs keep their key.
    assert_eq!(
        cfg.assertion.key_file.configured(),
        Path::new("assertion.key")
    );
    let e = err(&format!("[assertion]\nalg = \"RS256\"\n{MINIMAL}"));
    assert!(at(&e, 2, "assertion.alg").contains("HS256"), "{e}");
}

#[test]
fn workers_are_optional_and_bounded() {
    assert_eq!(ok(MINIMAL).server.workers, None);
    assert_eq!(
        ok(&format!("[server]\nworkers = 2\n{MINIMAL}"))
            .server
            .workers,
        Some(2)
    );
    let e = err(&format!("[server]\nworkers = 0\n{MINIMAL}"));
    at(&e, 2, "server.workers");
}

// ---- [store] ---------------------------------------------------------------------------

#[test]
fn store_defaults_to_embedded_and_reads_redis_settings() {
    assert_eq!(ok(MINIMAL).store, crate::StoreConfig::Embedded);
    let cfg = ok(&format!(
        "{MINIMAL}\n[store]\nkind = \"redis\"\nurl = \"rediss://10.0.0.5:6380/2\"\npassword_env = \"PW\"\ntimeout = \"20ms\"\nread_when_unavailable = \"local\"\n"
    ));
    let crate::StoreConfig::Redis(r) = cfg.store else {
        panic!("not redis")
    };
    assert_eq!(
        r.target,
        crate::RedisTarget::Single("rediss://10.0.0.5:6380/2".into())
    );
    assert_eq!((r.timeout_ms, r.password_env.as_deref()), (20, Some("PW")));
    assert_eq!(r.read_when_unavailable, crate::ReadWhenUnavailable::Local);
    let example = Config::load(&example("redis.toml")).unwrap_or_else(|e| panic!("{e}"));
    assert!(matches!(example.store, crate::StoreConfig::Redis(_)));
}

#[test]
fn store_errors_name_line_and_key() {
    let line = MINIMAL.lines().count() + 4;
    let e = err(&format!(
        "{MINIMAL}\n[store]\nkind = \"redis\"\nurl = \"redis://user:secret@10.0.0.5\"\n"
    ));
    assert!(at(&e, line, "store.url").contains("password_env"), "{e}");
    let e = err(&format!(
        "{MINIMAL}\n[store]\nkind = \"redis\"\nurl = \"http://10.0.0.5\"\n"
    ));
    assert!(at(&e, line, "store.url").contains("redis://"), "{e}");
    let e = err(&format!("{MINIMAL}\n[store]\nurl = \"redis://10.0.0.5\"\n"));
    assert!(at(&e, line - 1, "store.url").contains("embedded"), "{e}");
    let e = err(&format!(
        "{MINIMAL}\n[store]\nkind = \"redis\"\ncluster = []\n"
    ));
    assert!(
        at(&e, line, "store.cluster").contains("at least one"),
        "{e}"
    );
    let e = err(&format!("{MINIMAL}\n[store]\nkind = \"redis\"\n"));
    assert_eq!(e.key.as_deref(), Some("store.url"), "{e}");
    let e = err(&format!(
        "{MINIMAL}\n[store]\nkind = \"redis\"\nurl = \"redis://h\"\ntimeout = \"0ms\"\n"
    ));
    assert_eq!(e.key.as_deref(), Some("store.timeout"), "{e}");
}

#[test]
fn tls_paths_resolve_next_to_the_config_and_keep_their_line() {
    let cfg = ok(&format!(
        "[tls.listen]\ncert_file = \"gw.pem\"\nkey_file = \"/etc/kg/gw.key\"\n\
         [tls.upstream]\nca_file = \"ca.pem\"\n{MINIMAL}"
    ));
    let listen = cfg.tls.listen.expect("tls.listen");
    assert_eq!(listen.cert_file.path, std::path::Path::new("dir/gw.pem"));
    assert_eq!(listen.key_file.path, std::path::Path::new("/etc/kg/gw.key"));
    assert_eq!(
        listen.cert_file.error("cannot read").to_string(),
        "dir/keyguard.toml:2: tls.listen.cert_file: cannot read"
    );
    assert!(cfg.tls.admin.is_none());
    assert!(cfg.tls.upstream.client.is_none());
    assert_eq!(
        cfg.tls.upstream.ca_file.unwrap().path,
        std::path::Path::new("dir/ca.pem")
    );
}

#[test]
fn tls_mistakes_are_located() {
    let e = err(&format!("[tls.listen]\ncert_file = \"gw.pem\"\n{MINIMAL}"));
    assert!(e.to_string().contains("key_file"), "{e}");
    let e = err(&format!(
        "[tls.upstream]\n\nclient_cert_file = \"c.pem\"\n{MINIMAL}"
    ));
    assert!(at(&e, 3, "tls.upstream.client_cert_file").contains("client_key_file"));
    let e = err(&format!("[tls.admin]\ncert = \"c.pem\"\n{MINIMAL}"));
    assert!(at(&e, 2, "tls.admin.cert").contains("unknown key"), "{e}");
}

#[test]
fn overload_and_http2_defaults_are_safe_and_bounded() {
    let cfg = ok(MINIMAL);
    assert_eq!(cfg.overload.max_in_flight, 1024);
    assert_eq!(cfg.overload.max_connections_per_network, 256);
    assert!(cfg.overload.raise_open_files);
    assert!(cfg.http2.enabled);
    assert!(!cfg.http2.prior_knowledge);
    assert_eq!(cfg.http2.max_concurrent_streams, 100);
    let e = err(&format!("[overload]\nmax_in_flight = 0\n{MINIMAL}"));
    assert!(at(&e, 2, "overload.max_in_flight").contains("1"));
    let e = err(&format!(
        "[http2]\n\nmax_concurrent_streams = 5000\n{MINIMAL}"
    ));
    assert!(at(&e, 3, "http2.max_concurrent_streams").contains("1000"));
    let e = err(&format!("[overload]\nipv4_prefix = 33\n{MINIMAL}"));
    assert!(at(&e, 2, "overload.ipv4_prefix").contains("32"));
}

#[test]
fn audit_settings_have_defaults_and_errors_name_line_and_key() {
    let cfg = ok(MINIMAL);
    assert_eq!(cfg.audit.fsync_interval, std::time::Duration::from_secs(1));
    assert_eq!(cfg.audit.rotate_bytes, 256 << 20);
    assert_eq!(cfg.audit.max_files, 30);
    assert_eq!(cfg.audit.preauth_lines_per_sec, 20);
    let cfg = ok(&with(
        "[audit]\nfsync_interval = \"250ms\"\nrotate_bytes = 0\nrotate_interval = \"1h\"\n",
    ));
    assert_eq!(
        cfg.audit.fsync_interval,
        std::time::Duration::from_millis(250)
    );
    assert_eq!(cfg.audit.rotate_bytes, 0, "0: by time only");
    assert_eq!(
        cfg.audit.rotate_interval,
        std::time::Duration::from_secs(3600)
    );

    let e = err(&with("[audit]\n\nrotate_bytes = 4096\n"));
    assert!(
        at(&e, 11, "audit.rotate_bytes").contains("below 64 KiB"),
        "{e}"
    );
    let e = err(&with("[audit]\nfsync_interval = \"0s\"\n"));
    assert!(
        at(&e, 10, "audit.fsync_interval").contains("out of range"),
        "{e}"
    );
    let e = err(&with("[audit]\npreauth_lines_per_sec = 0\n"));
    at(&e, 10, "audit.preauth_lines_per_sec");
}
