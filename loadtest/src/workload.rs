//! What the load generator sends: exchange operations in each dialect, signed exactly as a
//! real client signs them (the policy crate's [`sign_request`], byte for byte ccxt's).
//!
//! A [`KeyMaterial`] is one provisioned API key with its own freshness source: Zaif,
//! Kraken and Coincheck nonces are strictly increasing per key (microseconds since the epoch, bumped
//! past the last one handed out), Binance timestamps are the current millisecond with a
//! distinct `recvWindow` when a key signs twice in the same millisecond, so no two
//! requests of one key are ever byte-identical. That uniqueness is what lets the verdict
//! match each line of the exchange's ledger to exactly one generated request
//! ([`fingerprint`]).

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use http::Method;
use keyguard_policy::dialect::{
    public_request, sign_coincheck, sign_request, ClientKey, ClientRequest,
};
use keyguard_policy::{Action, DialectKind};
use parking_lot::Mutex;
use ring::digest;

/// One API key as `keyguard keys create --json` printed it, plus its nonce source.
#[derive(Debug)]
pub struct KeyMaterial {
    /// Index in the run's key table.
    pub index: usize,
    /// The gateway's key id (what the exchange's ledger names).
    pub key_id: String,
    /// The API key sent in the dialect's key header.
    pub api_key: String,
    /// The secret (Kraken: base64 text, as the exchange hands it out).
    pub secret: String,
    /// The account it acts for.
    pub account: String,
    freshness: Mutex<Freshness>,
}

#[derive(Debug, Default)]
struct Freshness {
    /// Last nonce (µs) or timestamp (ms) handed out.
    last: u64,
    /// Binance: how many requests already used `last` as their timestamp.
    reuse: u32,
}

impl KeyMaterial {
    /// A key with a fresh nonce source.
    pub fn new(
        index: usize,
        key_id: String,
        api_key: String,
        secret: String,
        account: String,
    ) -> Self {
        KeyMaterial {
            index,
            key_id,
            api_key,
            secret,
            account,
            freshness: Mutex::new(Freshness::default()),
        }
    }

    /// The next Zaif/Kraken nonce: now in microseconds, or one past the previous nonce.
    fn next_nonce_us(&self) -> u64 {
        let now = now_us();
        let mut f = self.freshness.lock();
        f.last = now.max(f.last + 1);
        f.last
    }

    /// The next Binance `(timestamp, reuse)`: `reuse > 0` when this key already signed in
    /// this millisecond.
    fn next_timestamp(&self) -> (u64, u32) {
        let now = now_ms();
        let mut f = self.freshness.lock();
        if now > f.last {
            f.last = now;
            f.reuse = 0;
        } else {
            f.reuse += 1;
        }
        (f.last, f.reuse)
    }
}

/// An exchange operation, named independently of the dialect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Market data (ticker), no key.
    Public,
    /// Account balance.
    Balance,
    /// Open orders.
    OpenOrders,
    /// A small limit order.
    PlaceOrder,
    /// A small withdrawal to `address`.
    Withdraw {
        /// The destination.
        address: String,
    },
}

impl Op {
    /// The action class the gateway should classify it as.
    pub fn action(&self) -> Action {
        match self {
            Op::Public => Action::Public,
            Op::Balance | Op::OpenOrders => Action::Read,
            Op::PlaceOrder => Action::Trade,
            Op::Withdraw { .. } => Action::Withdraw,
        }
    }
}

/// Who signs a request.
#[derive(Debug, Clone)]
pub enum Auth {
    /// The key's owner (or whoever stole the secret): a valid signature.
    Valid(Arc<KeyMaterial>),
    /// A real API key with a signature made from a guessed secret.
    BadSignature(Arc<KeyMaterial>),
    /// An API key the gateway never issued.
    Forged(String),
}

impl Auth {
    /// The provisioned key this request names, if any.
    pub fn key(&self) -> Option<&Arc<KeyMaterial>> {
        match self {
            Auth::Valid(k) | Auth::BadSignature(k) => Some(k),
            Auth::Forged(_) => None,
        }
    }
}

/// One request an actor decided to send.
#[derive(Debug, Clone)]
pub struct Planned {
    /// What it does.
    pub op: Op,
    /// Who signs it; `None` for public requests.
    pub auth: Option<Auth>,
    /// An `X-Forwarded-For` value (only believed when the gateway trusts our address).
    pub forwarded_for: Option<String>,
}

impl Planned {
    /// A request signed with `key`'s real secret.
    pub fn signed(op: Op, key: &Arc<KeyMaterial>) -> Planned {
        Planned {
            op,
            auth: Some(Auth::Valid(Arc::clone(key))),
            forwarded_for: None,
        }
    }
}

/// The withdrawal asset as each dialect's request names it, and as `--withdraw-address`
/// registers it.
pub fn withdraw_asset(kind: DialectKind) -> (&'static str, &'static str) {
    match kind {
        DialectKind::Zaif => ("btc", "btc"),
        DialectKind::Binance => ("BTC", "btc"),
        DialectKind::Kraken => ("XBT", "xbt"),
        DialectKind::Coincheck => ("btc", "btc"),
    }
}

/// Builds the request for `planned`, signing it now (freshness is taken at this moment,
/// so call it right before sending). `base_url` is where it is sent
/// (`http://host:port`): Coincheck signs the full URL, the other dialects ignore it.
pub fn build(
    kind: DialectKind,
    base_url: &str,
    planned: &Planned,
    rng: &mut fastrand::Rng,
) -> ClientRequest {
    let (method, path, params) = operation(kind, &planned.op, rng);
    let params: Vec<(&str, &str)> = params.iter().map(|(n, v)| (*n, v.as_str())).collect();
    let Some(auth) = &planned.auth else {
        return public_request(kind, method, path, &params);
    };
    let (api_key, secret): (&str, Vec<u8>) = match auth {
        Auth::Valid(k) => (&k.api_key, k.secret.as_bytes().to_vec()),
        Auth::BadSignature(k) => (&k.api_key, random_secret(kind, rng)),
        Auth::Forged(api_key) => (api_key, random_secret(kind, rng)),
    };
    let key = ClientKey::Hmac {
        api_key,
        secret: &secret,
    };
    let mut params = params;
    let freshness;
    let recv_window;
    match kind {
        DialectKind::Zaif => {
            let us = auth.key().map_or_else(now_us, |k| k.next_nonce_us());
            // ccxt's Zaif nonce: seconds with a fraction.
            freshness = format!("{}.{:06}", us / 1_000_000, us % 1_000_000);
        }
        DialectKind::Kraken | DialectKind::Coincheck => {
            freshness = auth
                .key()
                .map_or_else(now_us, |k| k.next_nonce_us())
                .to_string();
        }
        DialectKind::Binance => {
            let (ts, reuse) = auth
                .key()
                .map_or_else(|| (now_ms(), 0), |k| k.next_timestamp());
            freshness = ts.to_string();
            if reuse > 0 {
                // A second request of the same key in the same millisecond: a different
                // (valid) receive window keeps its signature distinct, as the exchange
                // requires.
                recv_window = (5_000 + reuse.min(55_000)).to_string();
                params.push(("recvWindow", recv_window.as_str()));
            }
        }
    }
    let mut request = if kind == DialectKind::Coincheck {
        sign_coincheck(&key, base_url, method, path, &params, &freshness)
    } else {
        sign_request(kind, &key, method, path, &params, &freshness, false)
    }
    .expect("HMAC keys sign in every dialect");
    if let Some(xff) = &planned.forwarded_for {
        request
            .headers
            .push(("X-Forwarded-For".to_owned(), xff.clone()));
    }
    request
}

/// Method, path and parameters of `op` in `kind`.
fn operation(
    kind: DialectKind,
    op: &Op,
    rng: &mut fastrand::Rng,
) -> (Method, &'static str, Vec<(&'static str, String)>) {
    // Prices vary a little, like a real trader's; quantities stay tiny (inside any sane
    // velocity limit).
    let jitter = rng.u32(0..200);
    match kind {
        DialectKind::Zaif => match op {
            Op::Public => (Method::GET, "/api/1/ticker/btc_jpy", vec![]),
            Op::Balance => (Method::POST, "/tapi", vec![("method", "get_info2".into())]),
            Op::OpenOrders => (
                Method::POST,
                "/tapi",
                vec![("method", "active_orders".into())],
            ),
            Op::PlaceOrder => (
                Method::POST,
                "/tapi",
                vec![
                    ("method", "trade".into()),
                    ("currency_pair", "btc_jpy".into()),
                    ("action", "bid".into()),
                    ("price", (5_000_000 + jitter * 5).to_string()),
                    ("amount", "0.0001".into()),
                ],
            ),
            Op::Withdraw { address } => (
                Method::POST,
                "/tapi",
                vec![
                    ("method", "withdraw".into()),
                    ("currency", "btc".into()),
                    ("address", address.clone()),
                    ("amount", "0.001".into()),
                ],
            ),
        },
        DialectKind::Binance => match op {
            Op::Public => (
                Method::GET,
                "/api/v3/ticker/price",
                vec![("symbol", "BTCUSDT".into())],
            ),
            Op::Balance => (Method::GET, "/api/v3/account", vec![]),
            Op::OpenOrders => (Method::GET, "/api/v3/openOrders", vec![]),
            Op::PlaceOrder => (
                Method::POST,
                "/api/v3/order",
                vec![
                    ("symbol", "BTCUSDT".into()),
                    ("side", "BUY".into()),
                    ("type", "LIMIT".into()),
                    ("timeInForce", "GTC".into()),
                    ("quantity", "0.001".into()),
                    ("price", (30_000 + jitter).to_string()),
                ],
            ),
            Op::Withdraw { address } => (
                Method::POST,
                "/sapi/v1/capital/withdraw/apply",
                vec![
                    ("coin", "BTC".into()),
                    ("address", address.clone()),
                    ("amount", "0.001".into()),
                ],
            ),
        },
        DialectKind::Kraken => match op {
            Op::Public => (
                Method::GET,
                "/0/public/Ticker",
                vec![("pair", "XBTUSD".into())],
            ),
            Op::Balance => (Method::POST, "/0/private/Balance", vec![]),
            Op::OpenOrders => (Method::POST, "/0/private/OpenOrders", vec![]),
            Op::PlaceOrder => (
                Method::POST,
                "/0/private/AddOrder",
                vec![
                    ("ordertype", "limit".into()),
                    ("type", "buy".into()),
                    ("volume", "0.01".into()),
                    ("pair", "XBTUSD".into()),
                    ("price", (37_500 + jitter).to_string()),
                ],
            ),
            Op::Withdraw { address } => (
                Method::POST,
                "/0/private/Withdraw",
                vec![
                    ("asset", "XBT".into()),
                    ("key", "loadtest-wallet".into()),
                    ("amount", "0.001".into()),
                    ("address", address.clone()),
                ],
            ),
        },
        DialectKind::Coincheck => match op {
            Op::Public => (Method::GET, "/api/ticker", vec![("pair", "btc_jpy".into())]),
            Op::Balance => (Method::GET, "/api/accounts/balance", vec![]),
            Op::OpenOrders => (Method::GET, "/api/exchange/orders/opens", vec![]),
            Op::PlaceOrder => (
                Method::POST,
                "/api/exchange/orders",
                vec![
                    ("pair", "btc_jpy".into()),
                    ("order_type", "buy".into()),
                    ("rate", (5_000_000 + jitter * 5).to_string()),
                    ("amount", "0.005".into()),
                ],
            ),
            Op::Withdraw { address } => (
                Method::POST,
                "/api/send_money",
                vec![
                    ("currency", "btc".into()),
                    ("address", address.clone()),
                    ("amount", "0.001".into()),
                ],
            ),
        },
    }
}

/// A secret of the right shape that is nobody's (Kraken secrets are base64 text).
fn random_secret(kind: DialectKind, rng: &mut fastrand::Rng) -> Vec<u8> {
    let raw = random_token(rng, 64);
    match kind {
        DialectKind::Kraken => {
            use base64::Engine as _;
            base64::engine::general_purpose::STANDARD
                .encode(raw.as_bytes())
                .into_bytes()
        }
        DialectKind::Zaif | DialectKind::Binance | DialectKind::Coincheck => raw.into_bytes(),
    }
}

/// `len` random alphanumerics, the alphabet of Keyguard's API keys.
pub fn random_token(rng: &mut fastrand::Rng, len: usize) -> String {
    (0..len).map(|_| rng.alphanumeric()).collect()
}

/// A plausible guess at a real key: `api_key` with a few characters changed.
pub fn guessed_key(rng: &mut fastrand::Rng, api_key: &str) -> String {
    let mut chars: Vec<char> = api_key.chars().collect();
    if chars.is_empty() {
        return random_token(rng, 64);
    }
    for _ in 0..rng.usize(1..4) {
        let i = rng.usize(..chars.len());
        let mut c = rng.alphanumeric();
        while c == chars[i] {
            c = rng.alphanumeric();
        }
        chars[i] = c;
    }
    chars.into_iter().collect()
}

/// The identity of a request as the exchange's ledger records it: SHA-256 (first 16
/// bytes) of method, path, query and body. Every signed Zaif, Binance and Kraken request
/// carries a per-key unique nonce or timestamp/signature there, so equal fingerprints mean
/// the same request; Coincheck's nonce is a header, so its bodiless requests share one
/// (the verdict then tells them apart by request id).
pub fn fingerprint(method: &str, path: &str, query: &str, body: &[u8]) -> [u8; 16] {
    let mut ctx = digest::Context::new(&digest::SHA256);
    for part in [method.as_bytes(), path.as_bytes(), query.as_bytes()] {
        ctx.update(part);
        ctx.update(&[0]);
    }
    ctx.update(body);
    let d = ctx.finish();
    let mut out = [0u8; 16];
    out.copy_from_slice(&d.as_ref()[..16]);
    out
}

/// The fingerprint of a built client request.
pub fn fingerprint_of(request: &ClientRequest) -> [u8; 16] {
    let (path, query) = request
        .path_and_query
        .split_once('?')
        .unwrap_or((&request.path_and_query, ""));
    fingerprint(request.method.as_str(), path, query, &request.body)
}

/// Wall-clock Unix microseconds.
pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Wall-clock Unix milliseconds.
pub fn now_ms() -> u64 {
    now_us() / 1000
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = "http://127.0.0.1:8080";

    fn key() -> Arc<KeyMaterial> {
        Arc::new(KeyMaterial::new(
            0,
            "kg_1".into(),
            "apikey".into(),
            "c2VjcmV0c2VjcmV0".into(),
            "acct".into(),
        ))
    }

    #[test]
    fn nonces_strictly_increase_per_key() {
        let k = key();
        let mut last = 0;
        for _ in 0..1000 {
            let n = k.next_nonce_us();
            assert!(n > last);
            last = n;
        }
    }

    #[test]
    fn binance_requests_of_one_key_never_repeat() {
        let k = key();
        let mut rng = fastrand::Rng::with_seed(1);
        let mut seen = std::collections::HashSet::new();
        for _ in 0..2000 {
            let r = build(
                DialectKind::Binance,
                BASE,
                &Planned::signed(Op::Balance, &k),
                &mut rng,
            );
            assert!(seen.insert(fingerprint_of(&r)), "{r:?}");
        }
    }

    #[test]
    fn every_dialect_builds_every_op() {
        let k = key();
        let mut rng = fastrand::Rng::with_seed(2);
        for kind in [
            DialectKind::Zaif,
            DialectKind::Binance,
            DialectKind::Kraken,
            DialectKind::Coincheck,
        ] {
            for op in [
                Op::Public,
                Op::Balance,
                Op::OpenOrders,
                Op::PlaceOrder,
                Op::Withdraw {
                    address: "addr1".into(),
                },
            ] {
                let public = op == Op::Public;
                let planned = if public {
                    Planned {
                        op,
                        auth: None,
                        forwarded_for: None,
                    }
                } else {
                    Planned::signed(op, &k)
                };
                let r = build(kind, BASE, &planned, &mut rng);
                let has_auth = r.headers.iter().any(|(n, _)| {
                    kind.auth_headers()
                        .contains(&n.to_ascii_lowercase().as_str())
                });
                assert_eq!(has_auth, !public, "{kind:?} {r:?}");
            }
        }
    }

    #[test]
    fn coincheck_requests_verify_against_the_url_they_are_sent_to() {
        use keyguard_policy::dialect::{parse, verify, DialectConfig};
        let k = key();
        let mut rng = fastrand::Rng::with_seed(4);
        let r = build(
            DialectKind::Coincheck,
            BASE,
            &Planned::signed(Op::PlaceOrder, &k),
            &mut rng,
        );
        let secret = keyguard_policy::Credential::Hmac(keyguard_policy::Secret::new(
            k.secret.as_bytes().to_vec(),
        ));
        // Received by a gateway whose public URL is `base`: verifies only at BASE.
        let at = |base: &str| {
            let mut http = r.to_http().unwrap();
            let host = base.trim_start_matches("http://");
            http.headers_mut()
                .insert(http::header::HOST, host.parse().unwrap());
            let (parts, body) = http.into_parts();
            let cfg = DialectConfig {
                public_base_url: Some(base.into()),
                ..DialectConfig::new(DialectKind::Coincheck)
            };
            let parsed = parse(&cfg, &parts, &body).unwrap();
            verify(&cfg, parsed.credentials.as_ref().unwrap(), &secret)
        };
        assert_eq!(at(BASE), Ok(()));
        assert!(at("http://127.0.0.1:9999").is_err());
    }

    #[test]
    fn guessed_keys_differ_from_the_original() {
        let mut rng = fastrand::Rng::with_seed(3);
        for _ in 0..100 {
            let g = guessed_key(&mut rng, "abcdefgh");
            assert_eq!(g.len(), 8);
            assert_ne!(g, "abcdefgh");
        }
    }

    #[test]
    fn fingerprint_separates_fields() {
        assert_ne!(
            fingerprint("POST", "/a", "b", b""),
            fingerprint("POST", "/ab", "", b"")
        );
        assert_eq!(
            fingerprint("POST", "/tapi", "", b"x=1"),
            fingerprint("POST", "/tapi", "", b"x=1")
        );
    }
}
