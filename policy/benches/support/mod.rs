//! What both decision benches share: a signed Zaif or Binance order as the gateway
//! receives it, the key that signed it, in-memory stores that never refuse, and one full
//! decision as the gateway pipeline runs it.

use std::hint::black_box;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};

use http::Method;

use keyguard_policy::anomaly::{Anomaly, AnomalyConfig, AnomalyRequest, MemoryIpHistory};
use keyguard_policy::authorize::{authorize, AccessRequest, AuthorizeConfig, Freezes};
use keyguard_policy::decimal::parse_decimal;
use keyguard_policy::dialect::{self, ClientKey, DialectConfig, DialectKind};
use keyguard_policy::limits::{Rate, RateLimitConfig, RateLimits, RateTier};
use keyguard_policy::route::FieldMap;
use keyguard_policy::velocity::{
    AssetMatch, LedgerKind, MemoryVelocity, Reservation, SubjectKind, VelocityConfig, VelocityRule,
    VelocityStore,
};
use keyguard_policy::{Action, Credential, KeyRecord, KeyStatus, RouteSpec, RouteTable, Secret};

pub const SECRET: &[u8] = b"bench-secret-0123456789abcdef";
pub const NOW: u64 = 1_763_812_345_123;

/// One signed request as the gateway receives it.
pub struct Signed {
    pub cfg: DialectConfig,
    pub table: RouteTable,
    pub parts: http::request::Parts,
    pub body: Vec<u8>,
}

fn route(
    method: Method,
    path: &str,
    select: Option<&str>,
    action: Action,
    f: [Option<&str>; 3],
) -> RouteSpec {
    RouteSpec {
        method,
        path: path.into(),
        select: select.map(Into::into),
        action,
        fields: FieldMap {
            asset: f[0].map(Into::into),
            price: f[1].map(Into::into),
            quantity: f[2].map(Into::into),
            ..FieldMap::default()
        },
    }
}

pub fn signed(kind: DialectKind, api_key: &str) -> Signed {
    let client = ClientKey::Hmac {
        api_key,
        secret: SECRET,
    };
    let (routes, req) = match kind {
        DialectKind::Zaif => {
            let post = || Method::POST;
            let routes = vec![
                route(post(), "/tapi", Some("get_info2"), Action::Read, [None; 3]),
                route(
                    post(),
                    "/tapi",
                    Some("active_orders"),
                    Action::Read,
                    [None; 3],
                ),
                route(
                    post(),
                    "/tapi",
                    Some("cancel_order"),
                    Action::Trade,
                    [None; 3],
                ),
                route(
                    post(),
                    "/tapi",
                    Some("trade"),
                    Action::Trade,
                    [Some("currency_pair"), Some("price"), Some("amount")],
                ),
            ];
            let req = dialect::sign_request(
                kind,
                &client,
                Method::POST,
                "/tapi",
                &[
                    ("method", "trade"),
                    ("currency_pair", "btc_jpy"),
                    ("action", "bid"),
                    ("price", "5000000"),
                    ("amount", "0.001"),
                ],
                "1763812345.12300000",
                false,
            )
            .unwrap();
            (routes, req)
        }
        DialectKind::Binance => {
            let routes = vec![
                route(
                    Method::GET,
                    "/api/v3/account",
                    None,
                    Action::Read,
                    [None; 3],
                ),
                route(
                    Method::GET,
                    "/api/v3/openOrders",
                    None,
                    Action::Read,
                    [None; 3],
                ),
                route(
                    Method::DELETE,
                    "/api/v3/order",
                    None,
                    Action::Trade,
                    [None; 3],
                ),
                route(
                    Method::POST,
                    "/api/v3/order",
                    None,
                    Action::Trade,
                    [Some("symbol"), Some("price"), Some("quantity")],
                ),
            ];
            let req = dialect::sign_request(
                kind,
                &client,
                Method::POST,
                "/api/v3/order",
                &[
                    ("symbol", "BTCUSDT"),
                    ("side", "BUY"),
                    ("type", "LIMIT"),
                    ("timeInForce", "GTC"),
                    ("quantity", "0.001"),
                    ("price", "95000"),
                    ("recvWindow", "5000"),
                ],
                &NOW.to_string(),
                false,
            )
            .unwrap();
            (routes, req)
        }
        DialectKind::Kraken | DialectKind::Coincheck => unreachable!("not benched"),
    };
    let (mut parts, body) = req.to_http().unwrap().into_parts();
    parts
        .headers
        .insert(http::header::HOST, "gateway.test".parse().unwrap());
    parts
        .headers
        .insert(http::header::CONTENT_LENGTH, body.len().into());
    Signed {
        cfg: DialectConfig::new(kind),
        table: RouteTable::new(kind, routes).unwrap(),
        parts,
        body,
    }
}

pub fn key(id: &str, api_key: &str, account: &str) -> KeyRecord {
    KeyRecord {
        key_id: id.into(),
        api_key: api_key.into(),
        account: account.into(),
        label: String::new(),
        scopes: "read,trade".parse().unwrap(),
        // No allowlist: every anomaly rule applies.
        allow_ips: Vec::new(),
        withdraw_addresses: Vec::new(),
        trusted_ips: Vec::new(),
        created_at: NOW - 1000,
        expires_at: None,
        status: KeyStatus::Active,
        credential: Credential::Hmac(Secret::new(SECRET.to_vec())),
        canary: false,
    }
}

/// The stores of a gateway: limits high enough never to refuse, a velocity rule that
/// applies to every order, every anomaly rule on.
pub struct Stores {
    pub limits: RateLimits,
    pub velocity: MemoryVelocity,
    pub anomaly: Anomaly,
    /// Advances 1 ms per decision so the one-minute velocity window keeps draining.
    pub clock: AtomicU64,
}

pub fn stores() -> Stores {
    let fast = || Some(Rate::per_second(1_000_000_000).unwrap());
    let tier = RateTier {
        key: fast(),
        account: fast(),
        read: fast(),
        trade: fast(),
        withdraw: fast(),
    };
    let limits = RateLimitConfig {
        ip: fast(),
        tiers: [("default".to_owned(), tier)].into(),
        ..RateLimitConfig::default()
    };
    let rule = |subject| VelocityRule {
        kind: LedgerKind::Order,
        subject,
        asset: AssetMatch::Any,
        window_ms: 60_000,
        max_amount: Some(parse_decimal("1000000000000000").unwrap()),
        max_count: Some(u64::MAX),
    };
    Stores {
        limits: RateLimits::new(&limits).unwrap(),
        velocity: MemoryVelocity::new(&VelocityConfig {
            rules: vec![rule(SubjectKind::Key), rule(SubjectKind::Account)],
        })
        .unwrap(),
        anomaly: Anomaly::in_memory(AnomalyConfig::default(), MemoryIpHistory::new(64)),
        clock: AtomicU64::new(NOW),
    }
}

/// One full decision, as the gateway pipeline runs it.
pub fn decide(s: &Signed, stores: &Stores, key: &KeyRecord, client: IpAddr) {
    let now = stores.clock.fetch_add(1, Ordering::Relaxed);
    stores.limits.check_ip(client).unwrap();
    assert!(stores.anomaly.check_client(client, now).result().is_ok());
    let parsed = dialect::parse(&s.cfg, &s.parts, &s.body).unwrap();
    let creds = parsed.credentials.as_ref().unwrap();
    assert_eq!(creds.api_key, key.api_key);
    dialect::verify(&s.cfg, creds, &key.credential).unwrap();
    let classified = s.table.classify(&parsed).unwrap();
    let anomaly = stores.anomaly.check_request(&AnomalyRequest {
        key,
        action: classified.action,
        client_ip: client,
        last_used: Some(now - 1),
        now,
    });
    anomaly.verdict.result().unwrap();
    let access = AccessRequest {
        action: classified.action,
        facts: &classified.facts,
        client_ip: client,
        now,
    };
    authorize(
        &AuthorizeConfig::default(),
        key,
        &access,
        &Freezes::default(),
    )
    .unwrap();
    stores.limits.check_key(key, classified.action).unwrap();
    let route = &s.table.routes()[classified.route];
    let reservation = Reservation::for_request(route, &classified, key).unwrap();
    let id = stores.velocity.reserve(&reservation, now).unwrap();
    stores.velocity.commit(id).unwrap();
    black_box(id);
    sweep_now_and_then(stores, now);
}

/// The gateway sweeps every few seconds; at one decision per simulated millisecond this
/// is about once a minute of traffic, its cost spread over the decisions it follows.
pub fn sweep_now_and_then(stores: &Stores, now: u64) {
    if now.is_multiple_of(65_536) {
        stores.velocity.sweep(now);
        stores.anomaly.sweep(now);
        stores.limits.sweep();
    }
}
