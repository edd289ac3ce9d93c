//! The mock served on 127.0.0.1:0 and spoken to over real sockets, one dialect at a time.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::{TcpListener, TcpStream};

use super::testkit::{claims_for, TestSigner};
use super::*;

struct Harness {
    addr: SocketAddr,
    signer: TestSigner,
    ledger_path: PathBuf,
    _dir: tempfile::TempDir,
    next_jti: u64,
}

impl Harness {
    async fn start(dialect: Dialect) -> Harness {
        let dir = tempfile::tempdir().expect("tempdir");
        let ledger_path = dir.path().join("ledger.jsonl");
        let signer = TestSigner::generate();
        let verifier = AssertionVerifier::from_pem(signer.public_pem.as_bytes()).expect("pem");
        let ledger = Ledger::open(&ledger_path).expect("ledger");
        let exchange = Arc::new(MockExchange::new(dialect, verifier, ledger));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(serve(listener, exchange));
        Harness {
            addr,
            signer,
            ledger_path,
            _dir: dir,
            next_jti: 0,
        }
    }

    /// A fresh assertion for `method path body` performing `action`.
    fn assertion(&mut self, method: &str, path: &str, body: &str, action: &str) -> String {
        self.next_jti += 1;
        let jti = format!("req-{}", self.next_jti);
        let claims = claims_for(method, path, body.as_bytes(), action, &jti, now_ms() / 1000);
        self.signer.sign(&claims)
    }

    async fn send(
        &self,
        method: Method,
        path_and_query: &str,
        content_type: Option<&str>,
        body: &str,
        assertion: Option<&str>,
    ) -> (StatusCode, Value) {
        let stream = TcpStream::connect(self.addr).await.expect("connect");
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .expect("handshake");
        tokio::spawn(conn);
        let mut request = Request::builder()
            .method(method)
            .uri(path_and_query)
            .header("host", self.addr.to_string());
        if let Some(ct) = content_type {
            request = request.header("content-type", ct);
        }
        if let Some(token) = assertion {
            request = request.header(ASSERTION_HEADER, token);
        }
        let request = request
            .body(Full::new(Bytes::from(body.to_owned())))
            .expect("request");
        let response = sender.send_request(request).await.expect("response");
        let status = response.status();
        let bytes = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        let json = serde_json::from_slice(&bytes).expect("json body");
        (status, json)
    }

    async fn stats(&self) -> Stats {
        let (status, body) = self.send(Method::GET, STATS_PATH, None, "", None).await;
        assert_eq!(status, StatusCode::OK);
        serde_json::from_value(body).expect("stats")
    }

    fn ledger(&self) -> Vec<LedgerEntry> {
        Ledger::read_all(&self.ledger_path).expect("read ledger")
    }
}

const FORM: Option<&str> = Some("application/x-www-form-urlencoded");

#[tokio::test]
async fn zaif_executes_asserted_tapi_calls_and_refuses_replays() {
    let mut h = Harness::start(Dialect::Zaif).await;
    let (status, pairs) = h
        .send(Method::GET, "/api/1/currency_pairs/all", None, "", None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(pairs[0]["currency_pair"], "btc_jpy");

    let body = "method=get_info&nonce=1700000000.00000001";
    let token = h.assertion("POST", "/tapi", body, "read");
    let (status, info) = h
        .send(Method::POST, "/tapi", FORM, body, Some(&token))
        .await;
    assert_eq!(status, StatusCode::OK, "{info}");
    assert_eq!(info["success"], 1);
    assert_eq!(info["return"]["funds"]["btc"], 1.5);

    // The same assertion again is a replay, even though it still verifies.
    let (status, refused) = h
        .send(Method::POST, "/tapi", FORM, body, Some(&token))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(refused["success"], 0);

    // An assertion for a read cannot carry a withdrawal.
    let body = "method=withdraw&nonce=1700000000.00000002&currency=btc&amount=0.1&address=bc1qxyz";
    let token = h.assertion("POST", "/tapi", body, "read");
    let (status, _) = h
        .send(Method::POST, "/tapi", FORM, body, Some(&token))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    let stats = h.stats().await;
    assert_eq!((stats.executed, stats.refused, stats.public), (1, 2, 1));
    let ledger = h.ledger();
    assert_eq!(ledger.len(), 1);
    assert_eq!(ledger[0].path, "/tapi");
    assert_eq!(ledger[0].body, "method=get_info&nonce=1700000000.00000001");
    assert_eq!(ledger[0].account, "acct-1");
    assert_eq!(ledger[0].key_id, "k1");
    assert_eq!(ledger[0].action, "read");
    assert_eq!(ledger[0].client_ip, "127.0.0.2");
    assert_eq!(ledger[0].request_id, "req-1");
}

#[tokio::test]
async fn binance_places_lists_and_cancels_orders() {
    let mut h = Harness::start(Dialect::Binance).await;
    let (status, info) = h
        .send(Method::GET, "/api/v3/exchangeInfo", None, "", None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(info["symbols"][0]["symbol"], "BTCUSDT");

    let body = "symbol=BTCUSDT&side=BUY&type=LIMIT&quantity=0.001&price=30000&timeInForce=GTC\
                &newClientOrderId=x-1&newOrderRespType=FULL&timestamp=1&recvWindow=10000&signature=ab";
    let token = h.assertion("POST", "/api/v3/order", body, "trade");
    let (status, order) = h
        .send(Method::POST, "/api/v3/order", FORM, body, Some(&token))
        .await;
    assert_eq!(status, StatusCode::OK, "{order}");
    assert_eq!(order["status"], "NEW");
    assert_eq!(order["clientOrderId"], "x-1");
    let id = order["orderId"].as_u64().expect("orderId");

    let query = "timestamp=2&signature=cd";
    let token = h.assertion("GET", "/api/v3/openOrders", "", "read");
    let (status, open) = h
        .send(
            Method::GET,
            &format!("/api/v3/openOrders?{query}"),
            None,
            "",
            Some(&token),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(open.as_array().map(Vec::len), Some(1));

    let query = format!("symbol=BTCUSDT&orderId={id}&timestamp=3&signature=ef");
    let token = h.assertion("DELETE", "/api/v3/order", "", "trade");
    let (status, canceled) = h
        .send(
            Method::DELETE,
            &format!("/api/v3/order?{query}"),
            None,
            "",
            Some(&token),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{canceled}");
    assert_eq!(canceled["status"], "CANCELED");

    // Cancelling again is Binance's "unknown order", executed but failed.
    let token = h.assertion("DELETE", "/api/v3/order", "", "trade");
    let (status, again) = h
        .send(
            Method::DELETE,
            &format!("/api/v3/order?{query}"),
            None,
            "",
            Some(&token),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(again["code"], -2011);

    // No assertion: refused and not executed.
    let (status, refused) = h
        .send(Method::GET, "/api/v3/account?timestamp=4", None, "", None)
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(refused["code"], -2015);

    let (status, _) = h.send(Method::GET, "/api/v3/nope", None, "", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let stats = h.stats().await;
    assert_eq!((stats.executed, stats.refused, stats.not_found), (4, 1, 1));
    let methods: Vec<_> = h.ledger().into_iter().map(|e| e.method).collect();
    assert_eq!(methods, ["POST", "GET", "DELETE", "DELETE"]);
}

#[tokio::test]
async fn kraken_requires_an_assertion_for_the_right_action() {
    let mut h = Harness::start(Dialect::Kraken).await;
    let (status, pairs) = h
        .send(Method::GET, "/0/public/AssetPairs", None, "", None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(pairs["result"]["XXBTZUSD"]["altname"], "XBTUSD");

    let body = "nonce=1&pair=XXBTZUSD&type=buy&ordertype=limit&volume=0.01&price=30000.0";
    let (status, refused) = h
        .send(Method::POST, "/0/private/AddOrder", FORM, body, None)
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(refused["error"][0], "EAPI:Invalid key");

    let token = h.assertion("POST", "/0/private/AddOrder", body, "read");
    let (status, _) = h
        .send(
            Method::POST,
            "/0/private/AddOrder",
            FORM,
            body,
            Some(&token),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // Signed for another body: the gateway's assertion cannot be moved to a new request.
    let token = h.assertion("POST", "/0/private/AddOrder", "nonce=0", "trade");
    let (status, _) = h
        .send(
            Method::POST,
            "/0/private/AddOrder",
            FORM,
            body,
            Some(&token),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    let token = h.assertion("POST", "/0/private/AddOrder", body, "trade");
    let (status, added) = h
        .send(
            Method::POST,
            "/0/private/AddOrder",
            FORM,
            body,
            Some(&token),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{added}");
    assert_eq!(added["error"], Value::Array(vec![]));
    let txid = added["result"]["txid"][0]
        .as_str()
        .expect("txid")
        .to_owned();
    assert_eq!(
        added["result"]["descr"]["order"],
        "buy 0.01 XBTUSD @ limit 30000.0"
    );

    let body = "nonce=2";
    let token = h.assertion("POST", "/0/private/OpenOrders", body, "read");
    let (_, open) = h
        .send(
            Method::POST,
            "/0/private/OpenOrders",
            FORM,
            body,
            Some(&token),
        )
        .await;
    assert_eq!(open["result"]["open"][&txid]["descr"]["pair"], "XBTUSD");

    let stats = h.stats().await;
    assert_eq!((stats.executed, stats.refused), (2, 3));
    assert!(h.ledger().iter().all(|e| e.account == "acct-1"));
}

#[tokio::test]
async fn coincheck_places_lists_cancels_and_withdraws_with_path_ids() {
    let mut h = Harness::start(Dialect::Coincheck).await;
    let (status, ticker) = h
        .send(Method::GET, "/api/ticker?pair=btc_jpy", None, "", None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(ticker["last"].is_number(), "{ticker}");

    // No assertion: refused in Coincheck's shape, not executed.
    let (status, refused) = h
        .send(Method::GET, "/api/accounts/balance", None, "", None)
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(refused["success"], false);

    let token = h.assertion("GET", "/api/accounts/balance", "", "read");
    let (status, balance) = h
        .send(Method::GET, "/api/accounts/balance", None, "", Some(&token))
        .await;
    assert_eq!(status, StatusCode::OK, "{balance}");
    assert_eq!(
        (&balance["btc"], &balance["btc_reserved"]),
        (&"1.5".into(), &"0.0".into())
    );

    let body = "amount=0.005&order_type=buy&pair=btc_jpy&rate=5000000";
    let token = h.assertion("POST", "/api/exchange/orders", body, "trade");
    let (status, order) = h
        .send(
            Method::POST,
            "/api/exchange/orders",
            FORM,
            body,
            Some(&token),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{order}");
    let id = order["id"].as_u64().expect("numeric order id");

    let token = h.assertion("GET", "/api/exchange/orders/opens", "", "read");
    let (_, open) = h
        .send(
            Method::GET,
            "/api/exchange/orders/opens",
            None,
            "",
            Some(&token),
        )
        .await;
    assert_eq!(open["orders"][0]["id"], id, "{open}");
    assert_eq!(open["orders"][0]["pair"], "btc_jpy");

    // A cancel asserted as a read is refused: the exchange knows its endpoints.
    let path = format!("/api/exchange/orders/{id}");
    let token = h.assertion("DELETE", &path, "", "read");
    let (status, _) = h.send(Method::DELETE, &path, None, "", Some(&token)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let token = h.assertion("DELETE", &path, "", "trade");
    let (status, cancelled) = h.send(Method::DELETE, &path, None, "", Some(&token)).await;
    assert_eq!(
        (status, &cancelled["id"]),
        (StatusCode::OK, &id.into()),
        "{cancelled}"
    );
    let token = h.assertion("DELETE", &path, "", "trade");
    let (_, again) = h.send(Method::DELETE, &path, None, "", Some(&token)).await;
    assert_eq!(again["success"], false);

    let body = "address=bc1qdest&amount=0.001&currency=BTC";
    let token = h.assertion("POST", "/api/send_money", body, "withdraw");
    let (status, sent) = h
        .send(Method::POST, "/api/send_money", FORM, body, Some(&token))
        .await;
    assert_eq!(status, StatusCode::OK, "{sent}");
    assert!(sent["id"].is_string() && sent["fee"].is_string(), "{sent}");
    let body = "amount=50000&bank_account_id=2222&currency=JPY";
    let token = h.assertion("POST", "/api/withdraws", body, "withdraw");
    let (status, yen) = h
        .send(Method::POST, "/api/withdraws", FORM, body, Some(&token))
        .await;
    assert_eq!(status, StatusCode::OK, "{yen}");
    assert_eq!(yen["data"]["bank_account_id"], 2222);

    let (status, unknown) = h
        .send(Method::DELETE, "/api/exchange/orders/opens", None, "", None)
        .await;
    assert_eq!(
        (status, &unknown["success"]),
        (StatusCode::NOT_FOUND, &false.into())
    );

    let actions: Vec<String> = h.ledger().into_iter().map(|e| e.action).collect();
    assert_eq!(
        actions,
        ["read", "trade", "read", "trade", "trade", "withdraw", "withdraw"]
    );
}

#[test]
fn bench_mode_executes_without_an_assertion_or_ledger() {
    let exchange = MockExchange::unverified(Dialect::Zaif);
    let body = Bytes::from_static(b"method=get_info2&nonce=1");
    let req = MockRequest {
        method: Method::POST,
        path: "/tapi".into(),
        query: String::new(),
        params: Params::from_request("", Some("application/x-www-form-urlencoded"), &body),
        body,
    };
    let reply = exchange.respond(&req, &http::HeaderMap::new(), now_ms());
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    assert_eq!(reply.body["success"], 1);
    assert_eq!(exchange.stats().executed, 1);
    assert_eq!(exchange.stats().refused, 0);
}
