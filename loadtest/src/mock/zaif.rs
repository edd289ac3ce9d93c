//! Zaif: public `GET /api/1/...`, private `POST /tapi` whose form field `method` names the
//! call. Responses follow Zaif's documented shapes (`{"success":1,"return":{...}}`, errors
//! as `{"success":0,"error":"..."}`), which is what ccxt's `zaif` parses.

use http::{Method, StatusCode};
use keyguard_policy::Action;
use serde_json::{json, Map, Value};

use super::assertion::AssertionError;
use super::book::{Order, Side};
use super::params::positive_decimal;
use super::{json_number, scramble, Ctx, Endpoint, MockRequest, Reply};

/// One currency pair as `currency_pairs/all` lists it.
struct Pair {
    id: u64,
    pair: &'static str,
    name: &'static str,
    item_japanese: &'static str,
    aux_japanese: &'static str,
    item_unit_min: f64,
    item_unit_step: f64,
    aux_unit_min: f64,
    aux_unit_step: f64,
    aux_unit_point: u32,
    last: f64,
}

const PAIRS: &[Pair] = &[
    Pair {
        id: 1,
        pair: "btc_jpy",
        name: "BTC/JPY",
        item_japanese: "ビットコイン",
        aux_japanese: "日本円",
        item_unit_min: 0.0001,
        item_unit_step: 0.0001,
        aux_unit_min: 5.0,
        aux_unit_step: 5.0,
        aux_unit_point: 0,
        last: 9_500_000.0,
    },
    Pair {
        id: 2,
        pair: "eth_jpy",
        name: "ETH/JPY",
        item_japanese: "イーサリアム",
        aux_japanese: "日本円",
        item_unit_min: 0.0001,
        item_unit_step: 0.0001,
        aux_unit_min: 5.0,
        aux_unit_step: 5.0,
        aux_unit_point: 0,
        last: 480_000.0,
    },
    Pair {
        id: 3,
        pair: "mona_jpy",
        name: "MONA/JPY",
        item_japanese: "モナコイン",
        aux_japanese: "日本円",
        item_unit_min: 1.0,
        item_unit_step: 1.0,
        aux_unit_min: 0.1,
        aux_unit_step: 0.1,
        aux_unit_point: 1,
        last: 45.3,
    },
    Pair {
        id: 4,
        pair: "eth_btc",
        name: "ETH/BTC",
        item_japanese: "イーサリアム",
        aux_japanese: "ビットコイン",
        item_unit_min: 0.0001,
        item_unit_step: 0.0001,
        aux_unit_min: 0.0001,
        aux_unit_step: 0.0001,
        aux_unit_point: 4,
        last: 0.0505,
    },
];

/// Currencies with the mock balance every account holds and the withdrawal fee.
const CURRENCIES: &[(&str, f64, Option<f64>)] = &[
    ("jpy", 1_000_000.0, None),
    ("btc", 1.5, Some(0.0005)),
    ("eth", 10.0, Some(0.005)),
    ("mona", 1000.0, Some(0.1)),
];

fn pair(id: &str) -> Option<&'static Pair> {
    PAIRS.iter().find(|p| p.pair == id)
}

pub(crate) fn route(req: &MockRequest) -> Endpoint {
    if req.method == Method::GET {
        let Some(rest) = req.path.strip_prefix("/api/1/") else {
            return Endpoint::Unknown;
        };
        return match rest.split_once('/') {
            Some(("currency_pairs", _)) => Endpoint::Public(currency_pairs),
            Some(("currencies", _)) => Endpoint::Public(currencies),
            Some(("ticker", _)) => Endpoint::Public(ticker),
            Some(("last_price", _)) => Endpoint::Public(last_price),
            _ => Endpoint::Unknown,
        };
    }
    if req.method != Method::POST || req.path != "/tapi" {
        return Endpoint::Unknown;
    }
    let (action, handler): (Action, fn(&mut Ctx<'_>) -> Reply) =
        match req.params.get("method").unwrap_or("") {
            "get_info" => (Action::Read, get_info),
            "get_info2" => (Action::Read, get_info2),
            "active_orders" => (Action::Read, active_orders),
            "trade_history" | "deposit_history" | "withdraw_history" => (Action::Read, empty),
            "trade" => (Action::Trade, trade),
            "cancel_order" => (Action::Trade, cancel_order),
            "withdraw" => (Action::Withdraw, withdraw),
            _ => return Endpoint::Unknown,
        };
    Endpoint::Private { action, handler }
}

pub(crate) fn refused(error: &AssertionError) -> Reply {
    Reply::with_status(
        StatusCode::UNAUTHORIZED,
        json!({"success": 0, "error": format!("invalid key: {}", error.code())}),
    )
}

pub(crate) fn not_found(req: &MockRequest) -> Reply {
    let error = if req.path == "/tapi" {
        "invalid method parameter"
    } else {
        "not found"
    };
    Reply::with_status(StatusCode::NOT_FOUND, json!({"success": 0, "error": error}))
}

/// The last path segment (`all` or a pair/currency id).
fn last_segment(req: &MockRequest) -> &str {
    req.path.rsplit('/').next().unwrap_or("")
}

fn pair_json(p: &Pair) -> Value {
    json!({
        "aux_unit_point": p.aux_unit_point,
        "item_japanese": p.item_japanese,
        "aux_unit_step": p.aux_unit_step,
        "description": format!("{}の取引を行うことができます", p.name),
        "item_unit_min": p.item_unit_min,
        "event_number": 0,
        "currency_pair": p.pair,
        "is_token": false,
        "aux_unit_min": p.aux_unit_min,
        "aux_japanese": p.aux_japanese,
        "id": p.id,
        "item_unit_step": p.item_unit_step,
        "name": p.name,
        "seq": p.id - 1,
        "title": p.name,
    })
}

fn currency_pairs(req: &MockRequest, _now_ms: u64) -> Reply {
    match last_segment(req) {
        "all" => Reply::ok(Value::Array(PAIRS.iter().map(pair_json).collect())),
        id => match pair(id) {
            Some(p) => Reply::ok(json!([pair_json(p)])),
            None => unsupported_pair(),
        },
    }
}

fn currencies(req: &MockRequest, _now_ms: u64) -> Reply {
    let all: Vec<Value> = CURRENCIES
        .iter()
        .enumerate()
        .map(|(i, (name, _, _))| json!({"id": i + 1, "name": name, "is_token": false}))
        .collect();
    match last_segment(req) {
        "all" => Reply::ok(Value::Array(all)),
        name => match all.into_iter().find(|c| c["name"] == name) {
            Some(c) => Reply::ok(json!([c])),
            None => Reply::ok(json!({"error": "unsupported currency"})),
        },
    }
}

fn ticker(req: &MockRequest, _now_ms: u64) -> Reply {
    match pair(last_segment(req)) {
        Some(p) => Reply::ok(json!({
            "last": p.last,
            "high": p.last * 1.02,
            "low": p.last * 0.97,
            "vwap": p.last,
            "volume": 1234.5,
            "bid": p.last - p.aux_unit_step,
            "ask": p.last + p.aux_unit_step,
        })),
        None => unsupported_pair(),
    }
}

fn last_price(req: &MockRequest, _now_ms: u64) -> Reply {
    match pair(last_segment(req)) {
        Some(p) => Reply::ok(json!({"last_price": p.last})),
        None => unsupported_pair(),
    }
}

fn unsupported_pair() -> Reply {
    Reply::ok(json!({"error": "unsupported currency_pair"}))
}

fn success(data: Value) -> Reply {
    Reply::ok(json!({"success": 1, "return": data}))
}

fn failure(error: &str) -> Reply {
    Reply::ok(json!({"success": 0, "error": error}))
}

fn funds() -> Value {
    let map: Map<String, Value> = CURRENCIES
        .iter()
        .map(|(name, amount, _)| ((*name).to_owned(), json!(amount)))
        .collect();
    Value::Object(map)
}

fn info(ctx: &Ctx<'_>, with_trade_count: bool) -> Reply {
    let mut data = json!({
        "funds": funds(),
        "deposit": funds(),
        "rights": {"info": 1, "trade": 1, "withdraw": 1, "personal_info": 0, "id_info": 0},
        "open_orders": ctx.book.open_orders(ctx.account).count(),
        "server_time": ctx.now_ms / 1000,
    });
    if with_trade_count {
        data["trade_count"] = json!(ctx.book.placed());
    }
    success(data)
}

fn get_info(ctx: &mut Ctx<'_>) -> Reply {
    info(ctx, true)
}

fn get_info2(ctx: &mut Ctx<'_>) -> Reply {
    info(ctx, false)
}

fn empty(_ctx: &mut Ctx<'_>) -> Reply {
    success(json!({}))
}

fn order_json(o: &Order) -> Value {
    json!({
        "currency_pair": o.market,
        "action": if o.side == Side::Buy { "bid" } else { "ask" },
        "amount": json_number(&o.quantity),
        "price": json_number(&o.price),
        "timestamp": (o.created_ms / 1000).to_string(),
        "comment": o.client_id,
    })
}

fn active_orders(ctx: &mut Ctx<'_>) -> Reply {
    let wanted = ctx.req.params.get("currency_pair");
    let orders: Map<String, Value> = ctx
        .book
        .open_orders(ctx.account)
        .filter(|o| wanted.is_none_or(|p| p == o.market))
        .map(|o| (o.id.clone(), order_json(o)))
        .collect();
    success(Value::Object(orders))
}

fn trade(ctx: &mut Ctx<'_>) -> Reply {
    let p = &ctx.req.params;
    let Some(pair) = p.get("currency_pair").and_then(pair) else {
        return failure("invalid currency_pair parameter");
    };
    // Zaif spells sides bid/ask only; buy/sell is an error there.
    let side = match p.get("action") {
        Some("bid") => Side::Buy,
        Some("ask") => Side::Sell,
        _ => return failure("invalid action parameter"),
    };
    let (Some(_), Some(_)) = (
        positive_decimal(p.get("price")),
        positive_decimal(p.get("amount")),
    ) else {
        return failure("invalid price or amount parameter");
    };
    let seq = ctx.book.next_seq();
    let quantity = p.get("amount").unwrap_or_default().to_owned();
    ctx.book.place(Order {
        seq,
        id: seq.to_string(),
        account: ctx.account.to_owned(),
        market: pair.pair.to_owned(),
        side,
        kind: "limit".to_owned(),
        price: p.get("price").unwrap_or_default().to_owned(),
        quantity: quantity.clone(),
        client_id: p.get("comment").unwrap_or_default().to_owned(),
        time_in_force: String::new(),
        created_ms: ctx.now_ms,
    });
    success(json!({
        "received": 0.0,
        "remains": json_number(&quantity),
        "order_id": seq,
        "funds": funds(),
    }))
}

fn cancel_order(ctx: &mut Ctx<'_>) -> Reply {
    let Some(id) = ctx.req.params.get("order_id") else {
        return failure("invalid order_id parameter");
    };
    match ctx.book.cancel(ctx.account, |o| o.id == id) {
        Some(order) => success(json!({"order_id": order.seq, "funds": funds()})),
        None => failure("order not found"),
    }
}

fn withdraw(ctx: &mut Ctx<'_>) -> Reply {
    let p = &ctx.req.params;
    // ccxt derives Zaif currency ids from pair names, so it sends `BTC` where Zaif's docs
    // say `btc`; the mock accepts either rather than second-guess the client's casing.
    let currency = p.get("currency").unwrap_or("").to_ascii_lowercase();
    let Some(&(_, _, Some(fee))) = CURRENCIES.iter().find(|(name, _, _)| *name == currency) else {
        return failure("invalid currency parameter");
    };
    if p.get("address").is_none() {
        return failure("invalid address parameter");
    }
    if positive_decimal(p.get("amount")).is_none() {
        return failure("invalid amount parameter");
    }
    let seq = ctx.book.next_seq();
    success(json!({
        "id": seq,
        "fee": fee,
        "txid": format!("{:016x}{:016x}", scramble(seq), scramble(!seq)),
        "funds": funds(),
    }))
}
