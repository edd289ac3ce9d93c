//! Kraken: `GET /0/public/<Method>` and `POST /0/private/<Method>`. Every answer is
//! `{"error":[...],"result":{...}}`; like Kraken, business errors come with HTTP 200 and
//! a non-empty `error` array (e.g. `EOrder:Unknown order`), which ccxt's `kraken` maps.

use http::{Method, StatusCode};
use keyguard_policy::Action;
use serde_json::{json, Map, Value};

use super::assertion::AssertionError;
use super::book::{Order, Side};
use super::params::positive_decimal;
use super::{scramble, Ctx, Endpoint, MockRequest, Reply};

/// An asset: id, altname, decimals, display decimals, balance every account holds.
const ASSETS: &[(&str, &str, u32, u32, &str)] = &[
    ("XXBT", "XBT", 10, 5, "1.5000000000"),
    ("XETH", "ETH", 10, 5, "10.0000000000"),
    ("ZUSD", "USD", 4, 2, "25000.0000"),
    ("ZEUR", "EUR", 4, 2, "5000.0000"),
    ("USDT", "USDT", 8, 4, "10000.00000000"),
];

/// One tradable pair as `AssetPairs` lists it.
struct Pair {
    id: &'static str,
    altname: &'static str,
    wsname: &'static str,
    base: &'static str,
    quote: &'static str,
    pair_decimals: u32,
    cost_decimals: u32,
    ordermin: &'static str,
    costmin: &'static str,
    tick_size: &'static str,
    last: &'static str,
}

const PAIRS: &[Pair] = &[
    Pair {
        id: "XXBTZUSD",
        altname: "XBTUSD",
        wsname: "XBT/USD",
        base: "XXBT",
        quote: "ZUSD",
        pair_decimals: 1,
        cost_decimals: 5,
        ordermin: "0.00005",
        costmin: "0.5",
        tick_size: "0.1",
        last: "64250.1",
    },
    Pair {
        id: "XETHZUSD",
        altname: "ETHUSD",
        wsname: "ETH/USD",
        base: "XETH",
        quote: "ZUSD",
        pair_decimals: 2,
        cost_decimals: 5,
        ordermin: "0.002",
        costmin: "0.5",
        tick_size: "0.01",
        last: "3120.55",
    },
    Pair {
        id: "XETHXXBT",
        altname: "ETHXBT",
        wsname: "ETH/XBT",
        base: "XETH",
        quote: "XXBT",
        pair_decimals: 5,
        cost_decimals: 10,
        ordermin: "0.002",
        costmin: "0.00002",
        tick_size: "0.00001",
        last: "0.04857",
    },
    Pair {
        id: "XBTUSDT",
        altname: "XBTUSDT",
        wsname: "XBT/USDT",
        base: "XXBT",
        quote: "USDT",
        pair_decimals: 1,
        cost_decimals: 5,
        ordermin: "0.00005",
        costmin: "0.5",
        tick_size: "0.1",
        last: "64248.9",
    },
];

/// A pair by id (`XXBTZUSD`) or altname (`XBTUSD`); Kraken accepts both.
fn pair(name: &str) -> Option<&'static Pair> {
    PAIRS.iter().find(|p| p.id == name || p.altname == name)
}

pub(crate) fn route(req: &MockRequest) -> Endpoint {
    if let Some(method) = req.path.strip_prefix("/0/public/") {
        if req.method != Method::GET && req.method != Method::POST {
            return Endpoint::Unknown;
        }
        return match method {
            "Time" => Endpoint::Public(time),
            "SystemStatus" => Endpoint::Public(system_status),
            "Assets" => Endpoint::Public(assets),
            "AssetPairs" => Endpoint::Public(asset_pairs),
            "Ticker" => Endpoint::Public(ticker),
            _ => Endpoint::Unknown,
        };
    }
    let Some(method) = req.path.strip_prefix("/0/private/") else {
        return Endpoint::Unknown;
    };
    if req.method != Method::POST {
        return Endpoint::Unknown;
    }
    let (action, handler): (Action, fn(&mut Ctx<'_>) -> Reply) = match method {
        "Balance" => (Action::Read, balance),
        "BalanceEx" => (Action::Read, balance_ex),
        "OpenOrders" => (Action::Read, open_orders),
        "ClosedOrders" => (Action::Read, closed_orders),
        "AddOrder" => (Action::Trade, add_order),
        "CancelOrder" => (Action::Trade, cancel_order),
        "Withdraw" => (Action::Withdraw, withdraw),
        _ => return Endpoint::Unknown,
    };
    Endpoint::Private { action, handler }
}

pub(crate) fn refused(error: &AssertionError) -> Reply {
    Reply::with_status(
        StatusCode::UNAUTHORIZED,
        json!({
            "error": ["EAPI:Invalid key", format!("EGeneral:Permission denied:{}", error.code())],
            "result": {},
        }),
    )
}

pub(crate) fn not_found(_req: &MockRequest) -> Reply {
    Reply::with_status(
        StatusCode::NOT_FOUND,
        json!({"error": ["EGeneral:Unknown method"]}),
    )
}

fn result(data: Value) -> Reply {
    Reply::ok(json!({"error": [], "result": data}))
}

fn failure(error: &str) -> Reply {
    Reply::ok(json!({"error": [error]}))
}

fn time(_req: &MockRequest, now_ms: u64) -> Reply {
    result(json!({"unixtime": now_ms / 1000, "rfc1123": ""}))
}

fn system_status(_req: &MockRequest, _now_ms: u64) -> Reply {
    result(json!({"status": "online", "timestamp": ""}))
}

fn assets(_req: &MockRequest, _now_ms: u64) -> Reply {
    let map: Map<String, Value> = ASSETS
        .iter()
        .map(|(id, altname, decimals, display, _)| {
            let entry = json!({
                "aclass": "currency",
                "altname": altname,
                "decimals": decimals,
                "display_decimals": display,
                "collateral_value": 1.0,
                "status": "enabled",
            });
            ((*id).to_owned(), entry)
        })
        .collect();
    result(Value::Object(map))
}

fn fee_schedule(first: f64) -> Value {
    let steps = [0u64, 50_000, 100_000, 250_000, 500_000, 1_000_000];
    Value::Array(
        steps
            .iter()
            .enumerate()
            .map(|(i, volume)| json!([volume, (first - 0.02 * i as f64).max(0.0)]))
            .collect(),
    )
}

fn asset_pairs(req: &MockRequest, _now_ms: u64) -> Reply {
    let wanted: Option<Vec<&str>> = req.params.get("pair").map(|p| p.split(',').collect());
    let map: Map<String, Value> = PAIRS
        .iter()
        .filter(|p| {
            wanted
                .as_ref()
                .is_none_or(|w| w.iter().any(|n| *n == p.id || *n == p.altname))
        })
        .map(|p| {
            let entry = json!({
                "altname": p.altname,
                "wsname": p.wsname,
                "aclass_base": "currency",
                "base": p.base,
                "aclass_quote": "currency",
                "quote": p.quote,
                "lot": "unit",
                "cost_decimals": p.cost_decimals,
                "pair_decimals": p.pair_decimals,
                "lot_decimals": 8,
                "lot_multiplier": 1,
                "leverage_buy": [2, 3, 4, 5],
                "leverage_sell": [2, 3, 4, 5],
                "fees": fee_schedule(0.26),
                "fees_maker": fee_schedule(0.16),
                "fee_volume_currency": "ZUSD",
                "margin_call": 80,
                "margin_stop": 40,
                "ordermin": p.ordermin,
                "costmin": p.costmin,
                "tick_size": p.tick_size,
                "status": "online",
                "long_position_limit": 250,
                "short_position_limit": 200,
            });
            (p.id.to_owned(), entry)
        })
        .collect();
    if map.is_empty() {
        return failure("EQuery:Unknown asset pair");
    }
    result(Value::Object(map))
}

fn ticker(req: &MockRequest, _now_ms: u64) -> Reply {
    let Some(p) = req.params.get("pair").and_then(pair) else {
        return failure("EQuery:Unknown asset pair");
    };
    result(json!({
        p.id: {
            "a": [p.last, "1", "1.000"],
            "b": [p.last, "1", "1.000"],
            "c": [p.last, "0.01000000"],
            "v": ["100.0", "1000.0"],
            "p": [p.last, p.last],
            "t": [1000, 10000],
            "l": [p.last, p.last],
            "h": [p.last, p.last],
            "o": p.last,
        }
    }))
}

fn balance(_ctx: &mut Ctx<'_>) -> Reply {
    let map: Map<String, Value> = ASSETS
        .iter()
        .map(|(id, _, _, _, amount)| ((*id).to_owned(), json!(amount)))
        .collect();
    result(Value::Object(map))
}

fn balance_ex(_ctx: &mut Ctx<'_>) -> Reply {
    let map: Map<String, Value> = ASSETS
        .iter()
        .map(|(id, _, _, _, amount)| {
            let entry = json!({"balance": amount, "credit": "0.0000", "credit_used": "0.0000", "hold_trade": "0.0000000000"});
            ((*id).to_owned(), entry)
        })
        .collect();
    result(Value::Object(map))
}

/// A Kraken-looking id such as `OQCLML-BW3P3-BUCMWZ`.
fn kraken_id(prefix: char, seq: u64) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut bits = scramble(seq);
    let mut id = String::with_capacity(19);
    id.push(prefix);
    for i in 1..17 {
        if i == 6 || i == 11 {
            id.push('-');
        }
        id.push(char::from(ALPHABET[(bits & 31) as usize]));
        bits >>= 5;
        if bits == 0 {
            bits = scramble(seq ^ i);
        }
    }
    id
}

fn description(o: &Order, p: &Pair) -> String {
    if o.kind == "market" {
        format!("{} {} {} @ market", o.side.lower(), o.quantity, p.altname)
    } else {
        format!(
            "{} {} {} @ {} {}",
            o.side.lower(),
            o.quantity,
            p.altname,
            o.kind,
            o.price
        )
    }
}

fn order_json(o: &Order) -> Value {
    let (altname, descr) = match pair(&o.market) {
        Some(p) => (p.altname, description(o, p)),
        None => (o.market.as_str(), String::new()),
    };
    let mut entry = json!({
        "refid": null,
        "userref": 0,
        "status": "open",
        "opentm": o.created_ms as f64 / 1000.0,
        "starttm": 0,
        "expiretm": 0,
        "descr": {
            "pair": altname,
            "type": o.side.lower(),
            "ordertype": o.kind,
            "price": o.price,
            "price2": "0",
            "leverage": "none",
            "order": descr,
            "close": "",
        },
        "vol": o.quantity,
        "vol_exec": "0.00000000",
        "cost": "0.00000",
        "fee": "0.00000",
        "price": "0.00000",
        "stopprice": "0.00000",
        "limitprice": "0.00000",
        "misc": "",
        "oflags": "fciq",
    });
    if !o.client_id.is_empty() {
        entry["cl_ord_id"] = json!(o.client_id);
    }
    entry
}

fn open_orders(ctx: &mut Ctx<'_>) -> Reply {
    let open: Map<String, Value> = ctx
        .book
        .open_orders(ctx.account)
        .map(|o| (o.id.clone(), order_json(o)))
        .collect();
    result(json!({"open": open}))
}

fn closed_orders(_ctx: &mut Ctx<'_>) -> Reply {
    result(json!({"closed": {}, "count": 0}))
}

fn add_order(ctx: &mut Ctx<'_>) -> Reply {
    let p = &ctx.req.params;
    let Some(pair) = p.get("pair").and_then(pair) else {
        return failure("EQuery:Unknown asset pair");
    };
    let side = match p.get("type") {
        Some("buy") => Side::Buy,
        Some("sell") => Side::Sell,
        _ => return failure("EGeneral:Invalid arguments:type"),
    };
    let kind = match p.get("ordertype") {
        Some(k @ ("limit" | "market")) => k,
        _ => return failure("EGeneral:Invalid arguments:ordertype"),
    };
    let Some(volume) = p
        .get("volume")
        .filter(|v| positive_decimal(Some(v)).is_some())
    else {
        return failure("EGeneral:Invalid arguments:volume");
    };
    let price = match kind {
        "limit" => match p
            .get("price")
            .filter(|v| positive_decimal(Some(v)).is_some())
        {
            Some(price) => price,
            None => return failure("EGeneral:Invalid arguments:price"),
        },
        _ => "0",
    };
    let seq = ctx.book.next_seq();
    let order = Order {
        seq,
        id: kraken_id('O', seq),
        account: ctx.account.to_owned(),
        market: pair.id.to_owned(),
        side,
        kind: kind.to_owned(),
        price: price.to_owned(),
        quantity: volume.to_owned(),
        client_id: p.get("cl_ord_id").unwrap_or_default().to_owned(),
        time_in_force: p.get("timeinforce").unwrap_or("GTC").to_owned(),
        created_ms: ctx.now_ms,
    };
    let descr = json!({"order": description(&order, pair)});
    // `validate=true` checks the order without placing it: no txid, nothing in the book.
    if p.get("validate") == Some("true") {
        return result(json!({"descr": descr}));
    }
    let txid = order.id.clone();
    // Market orders fill at once and never rest in the book.
    if kind == "limit" {
        ctx.book.place(order);
    }
    result(json!({"descr": descr, "txid": [txid]}))
}

fn cancel_order(ctx: &mut Ctx<'_>) -> Reply {
    let p = &ctx.req.params;
    let canceled = match (p.get("txid"), p.get("cl_ord_id")) {
        (Some(txid), _) => ctx.book.cancel(ctx.account, |o| o.id == txid),
        (None, Some(client)) => ctx.book.cancel(ctx.account, |o| o.client_id == client),
        (None, None) => return failure("EGeneral:Invalid arguments:txid"),
    };
    match canceled {
        Some(_) => result(json!({"count": 1})),
        None => failure("EOrder:Unknown order"),
    }
}

fn withdraw(ctx: &mut Ctx<'_>) -> Reply {
    let p = &ctx.req.params;
    let asset = p.get("asset").unwrap_or("");
    if !ASSETS
        .iter()
        .any(|(id, alt, ..)| *id == asset || *alt == asset)
    {
        return failure("EFunding:Unknown asset");
    }
    if p.get("key").is_none() {
        return failure("EFunding:Unknown withdraw key");
    }
    if positive_decimal(p.get("amount")).is_none() {
        return failure("EFunding:Invalid amount");
    }
    let seq = ctx.book.next_seq();
    result(json!({"refid": kraken_id('A', seq)}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_look_like_kraken_ids() {
        let id = kraken_id('O', 7);
        assert_eq!(id.len(), 19);
        assert_eq!(id.as_bytes()[6], b'-');
        assert_eq!(id.as_bytes()[12], b'-');
        assert_ne!(kraken_id('O', 7), kraken_id('O', 8));
    }
}
