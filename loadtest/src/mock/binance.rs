//! Binance spot: `/api/v3/...` for market data, account and orders, `/sapi/v1/...` for the
//! wallet (coin list, withdrawals). Errors are `{"code":-NNNN,"msg":"..."}` with HTTP 400,
//! as Binance sends them and ccxt's `binance` maps them.

use http::{Method, StatusCode};
use keyguard_policy::Action;
use serde_json::{json, Value};

use super::assertion::AssertionError;
use super::book::{Order, Side};
use super::params::positive_decimal;
use super::{scramble, Ctx, Endpoint, MockRequest, Reply};

/// One spot symbol with the filters clients round to.
struct Symbol {
    symbol: &'static str,
    base: &'static str,
    quote: &'static str,
    tick_size: &'static str,
    step_size: &'static str,
    min_notional: &'static str,
    last: &'static str,
}

const SYMBOLS: &[Symbol] = &[
    Symbol {
        symbol: "BTCUSDT",
        base: "BTC",
        quote: "USDT",
        tick_size: "0.01000000",
        step_size: "0.00001000",
        min_notional: "5.00000000",
        last: "64250.01000000",
    },
    Symbol {
        symbol: "ETHUSDT",
        base: "ETH",
        quote: "USDT",
        tick_size: "0.01000000",
        step_size: "0.00010000",
        min_notional: "5.00000000",
        last: "3120.55000000",
    },
    Symbol {
        symbol: "ETHBTC",
        base: "ETH",
        quote: "BTC",
        tick_size: "0.00001000",
        step_size: "0.00010000",
        min_notional: "0.00010000",
        last: "0.04857000",
    },
    Symbol {
        symbol: "BNBUSDT",
        base: "BNB",
        quote: "USDT",
        tick_size: "0.01000000",
        step_size: "0.00100000",
        min_notional: "5.00000000",
        last: "585.20000000",
    },
];

/// A coin: balance every account holds, networks (`network`, name, fee, min, default).
struct Coin {
    coin: &'static str,
    name: &'static str,
    balance: &'static str,
    networks: &'static [(&'static str, &'static str, &'static str, &'static str, bool)],
}

const COINS: &[Coin] = &[
    Coin {
        coin: "BTC",
        name: "Bitcoin",
        balance: "1.50000000",
        networks: &[
            ("BTC", "Bitcoin", "0.0002", "0.001", true),
            (
                "BSC",
                "BNB Smart Chain (BEP20)",
                "0.0000039",
                "0.0000078",
                false,
            ),
        ],
    },
    Coin {
        coin: "ETH",
        name: "Ethereum",
        balance: "10.00000000",
        networks: &[("ETH", "Ethereum (ERC20)", "0.0012", "0.0024", true)],
    },
    Coin {
        coin: "USDT",
        name: "TetherUS",
        balance: "25000.00000000",
        networks: &[
            ("ETH", "Ethereum (ERC20)", "4", "8", false),
            ("TRX", "Tron (TRC20)", "1", "10", true),
            ("BSC", "BNB Smart Chain (BEP20)", "0.29", "10", false),
        ],
    },
    Coin {
        coin: "BNB",
        name: "BNB",
        balance: "20.00000000",
        networks: &[("BSC", "BNB Smart Chain (BEP20)", "0.0005", "0.01", true)],
    },
];

fn symbol(id: &str) -> Option<&'static Symbol> {
    SYMBOLS.iter().find(|s| s.symbol == id)
}

pub(crate) fn route(req: &MockRequest) -> Endpoint {
    type Handler = fn(&mut Ctx<'_>) -> Reply;
    let private = |action: Action, handler: Handler| Endpoint::Private { action, handler };
    match (&req.method, req.path.as_str()) {
        (&Method::GET, "/api/v3/ping") => Endpoint::Public(|_, _| Reply::ok(json!({}))),
        (&Method::GET, "/api/v3/time") => {
            Endpoint::Public(|_, now_ms| Reply::ok(json!({"serverTime": now_ms})))
        }
        (&Method::GET, "/api/v3/exchangeInfo") => Endpoint::Public(exchange_info),
        (&Method::GET, "/api/v3/ticker/price") => Endpoint::Public(ticker_price),
        (&Method::GET, "/api/v3/account") => private(Action::Read, account),
        (&Method::GET, "/api/v3/order") => private(Action::Read, query_order),
        (&Method::GET, "/api/v3/openOrders") => private(Action::Read, open_orders),
        (&Method::GET, "/api/v3/allOrders") => private(Action::Read, open_orders),
        (&Method::GET, "/api/v3/myTrades") => private(Action::Read, empty_list),
        (&Method::POST, "/api/v3/order") => private(Action::Trade, new_order),
        (&Method::POST, "/api/v3/order/test") => private(Action::Trade, |_| Reply::ok(json!({}))),
        (&Method::DELETE, "/api/v3/order") => private(Action::Trade, cancel_order),
        (&Method::DELETE, "/api/v3/openOrders") => private(Action::Trade, cancel_all),
        (&Method::GET, "/sapi/v1/capital/config/getall") => private(Action::Read, coins),
        (&Method::GET, "/sapi/v1/margin/allPairs")
        | (&Method::GET, "/sapi/v1/margin/isolated/allPairs")
        | (&Method::GET, "/sapi/v1/capital/deposit/hisrec")
        | (&Method::GET, "/sapi/v1/capital/withdraw/history") => private(Action::Read, empty_list),
        (&Method::POST, "/sapi/v1/capital/withdraw/apply") => private(Action::Withdraw, withdraw),
        _ => Endpoint::Unknown,
    }
}

pub(crate) fn refused(error: &AssertionError) -> Reply {
    Reply::with_status(
        StatusCode::UNAUTHORIZED,
        json!({
            "code": -2015,
            "msg": format!("Invalid API-key, IP, or permissions for action. ({})", error.code()),
        }),
    )
}

pub(crate) fn not_found(req: &MockRequest) -> Reply {
    Reply::with_status(
        StatusCode::NOT_FOUND,
        json!({"code": -1020, "msg": format!("This operation is not supported: {} {}", req.method, req.path)}),
    )
}

fn error(code: i64, msg: &str) -> Reply {
    Reply::with_status(StatusCode::BAD_REQUEST, json!({"code": code, "msg": msg}))
}

fn mandatory(name: &str) -> Reply {
    error(
        -1102,
        &format!("Mandatory parameter '{name}' was not sent, was empty/null, or malformed."),
    )
}

fn exchange_info(_req: &MockRequest, now_ms: u64) -> Reply {
    let symbols: Vec<Value> = SYMBOLS
        .iter()
        .map(|s| {
            json!({
                "symbol": s.symbol,
                "status": "TRADING",
                "baseAsset": s.base,
                "baseAssetPrecision": 8,
                "quoteAsset": s.quote,
                "quotePrecision": 8,
                "quoteAssetPrecision": 8,
                "baseCommissionPrecision": 8,
                "quoteCommissionPrecision": 8,
                "orderTypes": ["LIMIT", "LIMIT_MAKER", "MARKET", "STOP_LOSS", "STOP_LOSS_LIMIT", "TAKE_PROFIT", "TAKE_PROFIT_LIMIT"],
                "icebergAllowed": true,
                "ocoAllowed": true,
                "otoAllowed": true,
                "quoteOrderQtyMarketAllowed": true,
                "allowTrailingStop": true,
                "cancelReplaceAllowed": true,
                "amendAllowed": true,
                "isSpotTradingAllowed": true,
                "isMarginTradingAllowed": false,
                "filters": [
                    {"filterType": "PRICE_FILTER", "minPrice": s.tick_size, "maxPrice": "1000000.00000000", "tickSize": s.tick_size},
                    {"filterType": "LOT_SIZE", "minQty": s.step_size, "maxQty": "9000.00000000", "stepSize": s.step_size},
                    {"filterType": "ICEBERG_PARTS", "limit": 10},
                    {"filterType": "MARKET_LOT_SIZE", "minQty": "0.00000000", "maxQty": "100.00000000", "stepSize": "0.00000000"},
                    {"filterType": "TRAILING_DELTA", "minTrailingAboveDelta": 10, "maxTrailingAboveDelta": 2000, "minTrailingBelowDelta": 10, "maxTrailingBelowDelta": 2000},
                    {"filterType": "PERCENT_PRICE_BY_SIDE", "bidMultiplierUp": "5", "bidMultiplierDown": "0.2", "askMultiplierUp": "5", "askMultiplierDown": "0.2", "avgPriceMins": 5},
                    {"filterType": "NOTIONAL", "minNotional": s.min_notional, "applyMinToMarket": true, "maxNotional": "9000000.00000000", "applyMaxToMarket": false, "avgPriceMins": 5},
                    {"filterType": "MAX_NUM_ORDERS", "maxNumOrders": 200},
                    {"filterType": "MAX_NUM_ALGO_ORDERS", "maxNumAlgoOrders": 5}
                ],
                "permissions": [],
                "permissionSets": [["SPOT"]],
                "defaultSelfTradePreventionMode": "EXPIRE_MAKER",
                "allowedSelfTradePreventionModes": ["EXPIRE_TAKER", "EXPIRE_MAKER", "EXPIRE_BOTH"],
            })
        })
        .collect();
    Reply::ok(json!({
        "timezone": "UTC",
        "serverTime": now_ms,
        "rateLimits": [
            {"rateLimitType": "REQUEST_WEIGHT", "interval": "MINUTE", "intervalNum": 1, "limit": 6000},
            {"rateLimitType": "ORDERS", "interval": "SECOND", "intervalNum": 10, "limit": 100},
            {"rateLimitType": "ORDERS", "interval": "DAY", "intervalNum": 1, "limit": 200000},
            {"rateLimitType": "RAW_REQUESTS", "interval": "MINUTE", "intervalNum": 5, "limit": 61000}
        ],
        "exchangeFilters": [],
        "symbols": symbols,
    }))
}

fn ticker_price(req: &MockRequest, _now_ms: u64) -> Reply {
    match req.params.get("symbol") {
        Some(id) => match symbol(id) {
            Some(s) => Reply::ok(json!({"symbol": s.symbol, "price": s.last})),
            None => error(-1121, "Invalid symbol."),
        },
        None => Reply::ok(Value::Array(
            SYMBOLS
                .iter()
                .map(|s| json!({"symbol": s.symbol, "price": s.last}))
                .collect(),
        )),
    }
}

fn account(ctx: &mut Ctx<'_>) -> Reply {
    let balances: Vec<Value> = COINS
        .iter()
        .map(|c| json!({"asset": c.coin, "free": c.balance, "locked": "0.00000000"}))
        .collect();
    Reply::ok(json!({
        "makerCommission": 10,
        "takerCommission": 10,
        "buyerCommission": 0,
        "sellerCommission": 0,
        "commissionRates": {"maker": "0.00100000", "taker": "0.00100000", "buyer": "0.00000000", "seller": "0.00000000"},
        "canTrade": true,
        "canWithdraw": true,
        "canDeposit": true,
        "brokered": false,
        "requireSelfTradePrevention": false,
        "preventSor": false,
        "updateTime": ctx.now_ms,
        "accountType": "SPOT",
        "balances": balances,
        "permissions": ["SPOT"],
        "uid": scramble(ctx.account.len() as u64) % 1_000_000_000,
    }))
}

/// An order as `GET /api/v3/order` and `openOrders` show it.
fn order_json(o: &Order, status: &str) -> Value {
    json!({
        "symbol": o.market,
        "orderId": o.seq,
        "orderListId": -1,
        "clientOrderId": o.client_id,
        "price": o.price,
        "origQty": o.quantity,
        "executedQty": "0.00000000",
        "cummulativeQuoteQty": "0.00000000",
        "status": status,
        "timeInForce": o.time_in_force,
        "type": o.kind,
        "side": o.side.upper(),
        "stopPrice": "0.00000000",
        "icebergQty": "0.00000000",
        "time": o.created_ms,
        "updateTime": o.created_ms,
        "isWorking": true,
        "workingTime": o.created_ms,
        "origQuoteOrderQty": "0.00000000",
        "selfTradePreventionMode": "EXPIRE_MAKER",
    })
}

fn new_order(ctx: &mut Ctx<'_>) -> Reply {
    let p = &ctx.req.params;
    let Some(sym) = p.get("symbol") else {
        return mandatory("symbol");
    };
    let Some(sym) = symbol(sym) else {
        return error(-1121, "Invalid symbol.");
    };
    let side = match p.get("side") {
        Some("BUY") => Side::Buy,
        Some("SELL") => Side::Sell,
        _ => return mandatory("side"),
    };
    let kind = p.get("type").unwrap_or("");
    let is_limit = match kind {
        "LIMIT" | "LIMIT_MAKER" => true,
        "MARKET" => false,
        "" => return mandatory("type"),
        _ => return error(-1116, "Invalid orderType."),
    };
    let time_in_force = match (kind, p.get("timeInForce")) {
        ("LIMIT", None) => return mandatory("timeInForce"),
        ("LIMIT", Some(tif @ ("GTC" | "IOC" | "FOK"))) => tif,
        ("LIMIT", Some(_)) => return error(-1115, "Invalid timeInForce."),
        _ => "GTC",
    };
    if is_limit && positive_decimal(p.get("price")).is_none() {
        return mandatory("price");
    }
    let quantity = match (p.get("quantity"), p.get("quoteOrderQty")) {
        (Some(q), _) if positive_decimal(Some(q)).is_some() => q.to_owned(),
        (None, Some(q)) if !is_limit && positive_decimal(Some(q)).is_some() => {
            // Spending `q` quote at the mock's last price.
            let spent: f64 = q.parse().unwrap_or(0.0);
            let price: f64 = sym.last.parse().unwrap_or(1.0);
            format!("{:.8}", spent / price)
        }
        _ => return mandatory("quantity"),
    };
    let seq = ctx.book.next_seq();
    let order = Order {
        seq,
        id: seq.to_string(),
        account: ctx.account.to_owned(),
        market: sym.symbol.to_owned(),
        side,
        kind: kind.to_owned(),
        price: if is_limit {
            p.get("price").unwrap_or_default().to_owned()
        } else {
            "0.00000000".to_owned()
        },
        quantity,
        client_id: p
            .get("newClientOrderId")
            .map_or_else(|| format!("web_{:x}", scramble(seq)), str::to_owned),
        time_in_force: time_in_force.to_owned(),
        created_ms: ctx.now_ms,
    };
    // Resting orders stay open; market orders fill at once against the mock's last price.
    let (status, executed, fills) = if is_limit {
        ("NEW", "0.00000000".to_owned(), json!([]))
    } else {
        let fill = json!([{
            "price": sym.last,
            "qty": order.quantity,
            "commission": "0.00000000",
            "commissionAsset": "BNB",
            "tradeId": scramble(seq) % 1_000_000_000,
        }]);
        ("FILLED", order.quantity.clone(), fill)
    };
    let ack = json!({
        "symbol": order.market,
        "orderId": order.seq,
        "orderListId": -1,
        "clientOrderId": order.client_id,
        "transactTime": ctx.now_ms,
    });
    // Binance answers ACK unless asked otherwise, except LIMIT and MARKET default to FULL.
    let resp_type = p
        .get("newOrderRespType")
        .unwrap_or(if matches!(kind, "LIMIT" | "MARKET") {
            "FULL"
        } else {
            "ACK"
        });
    let mut body = ack;
    if resp_type != "ACK" {
        let extra = json!({
            "price": order.price,
            "origQty": order.quantity,
            "executedQty": executed,
            "origQuoteOrderQty": "0.00000000",
            "cummulativeQuoteQty": "0.00000000",
            "status": status,
            "timeInForce": order.time_in_force,
            "type": order.kind,
            "side": order.side.upper(),
            "workingTime": ctx.now_ms,
            "selfTradePreventionMode": "EXPIRE_MAKER",
        });
        merge(&mut body, extra);
        if resp_type == "FULL" {
            body["fills"] = fills;
        }
    }
    if is_limit {
        ctx.book.place(order);
    }
    Reply::ok(body)
}

fn merge(into: &mut Value, from: Value) {
    if let (Value::Object(into), Value::Object(from)) = (into, from) {
        into.extend(from);
    }
}

/// Which order a cancel or query names: `orderId` or `origClientOrderId` on `symbol`.
fn order_selector(ctx: &Ctx<'_>) -> Result<(String, Option<u64>, Option<String>), Reply> {
    let p = &ctx.req.params;
    let Some(sym) = p.get("symbol") else {
        return Err(mandatory("symbol"));
    };
    if symbol(sym).is_none() {
        return Err(error(-1121, "Invalid symbol."));
    }
    let by_id = match p.get("orderId") {
        Some(id) => Some(id.parse::<u64>().map_err(|_| mandatory("orderId"))?),
        None => None,
    };
    let by_client = p.get("origClientOrderId").map(str::to_owned);
    if by_id.is_none() && by_client.is_none() {
        return Err(error(
            -1102,
            "Param 'origClientOrderId' or 'orderId' must be sent, but both were empty/null!",
        ));
    }
    Ok((sym.to_owned(), by_id, by_client))
}

fn matches(o: &Order, sym: &str, by_id: Option<u64>, by_client: Option<&str>) -> bool {
    o.market == sym
        && by_id.is_none_or(|id| o.seq == id)
        && by_client.is_none_or(|c| o.client_id == c)
}

fn query_order(ctx: &mut Ctx<'_>) -> Reply {
    let (sym, by_id, by_client) = match order_selector(ctx) {
        Ok(s) => s,
        Err(reply) => return reply,
    };
    match ctx.book.find(ctx.account, |o| {
        matches(o, &sym, by_id, by_client.as_deref())
    }) {
        Some(o) => Reply::ok(order_json(o, "NEW")),
        None => error(-2013, "Order does not exist."),
    }
}

fn canceled_json(o: &Order, now_ms: u64) -> Value {
    json!({
        "symbol": o.market,
        "origClientOrderId": o.client_id,
        "orderId": o.seq,
        "orderListId": -1,
        "clientOrderId": format!("cancel_{:x}", scramble(o.seq)),
        "transactTime": now_ms,
        "price": o.price,
        "origQty": o.quantity,
        "executedQty": "0.00000000",
        "origQuoteOrderQty": "0.00000000",
        "cummulativeQuoteQty": "0.00000000",
        "status": "CANCELED",
        "timeInForce": o.time_in_force,
        "type": o.kind,
        "side": o.side.upper(),
        "selfTradePreventionMode": "EXPIRE_MAKER",
    })
}

fn cancel_order(ctx: &mut Ctx<'_>) -> Reply {
    let (sym, by_id, by_client) = match order_selector(ctx) {
        Ok(s) => s,
        Err(reply) => return reply,
    };
    match ctx.book.cancel(ctx.account, |o| {
        matches(o, &sym, by_id, by_client.as_deref())
    }) {
        Some(o) => Reply::ok(canceled_json(&o, ctx.now_ms)),
        None => error(-2011, "Unknown order sent."),
    }
}

fn cancel_all(ctx: &mut Ctx<'_>) -> Reply {
    let Some(sym) = ctx.req.params.get("symbol") else {
        return mandatory("symbol");
    };
    if symbol(sym).is_none() {
        return error(-1121, "Invalid symbol.");
    }
    let mut canceled = Vec::new();
    while let Some(o) = ctx.book.cancel(ctx.account, |o| o.market == sym) {
        canceled.push(canceled_json(&o, ctx.now_ms));
    }
    if canceled.is_empty() {
        return error(-2011, "Unknown order sent.");
    }
    Reply::ok(Value::Array(canceled))
}

fn open_orders(ctx: &mut Ctx<'_>) -> Reply {
    let wanted = ctx.req.params.get("symbol");
    if wanted.is_some_and(|s| symbol(s).is_none()) {
        return error(-1121, "Invalid symbol.");
    }
    Reply::ok(Value::Array(
        ctx.book
            .open_orders(ctx.account)
            .filter(|o| wanted.is_none_or(|s| s == o.market))
            .map(|o| order_json(o, "NEW"))
            .collect(),
    ))
}

fn empty_list(_ctx: &mut Ctx<'_>) -> Reply {
    Reply::ok(json!([]))
}

fn coins(_ctx: &mut Ctx<'_>) -> Reply {
    let list: Vec<Value> = COINS
        .iter()
        .map(|c| {
            let networks: Vec<Value> = c
                .networks
                .iter()
                .map(|(network, name, fee, min, default)| {
                    json!({
                        "network": network,
                        "coin": c.coin,
                        "withdrawIntegerMultiple": "0.00000001",
                        "isDefault": default,
                        "depositEnable": true,
                        "withdrawEnable": true,
                        "depositDesc": "",
                        "withdrawDesc": "",
                        "specialTips": "",
                        "specialWithdrawTips": "",
                        "name": name,
                        "resetAddressStatus": false,
                        "addressRegex": "",
                        "addressRule": "",
                        "memoRegex": "",
                        "withdrawFee": fee,
                        "withdrawMin": min,
                        "withdrawMax": "9999999999.99999999",
                        "withdrawInternalMin": "0.00000001",
                        "depositDust": "0.00000001",
                        "minConfirm": 1,
                        "unLockConfirm": 0,
                        "sameAddress": false,
                        "estimatedArrivalTime": 5,
                        "busy": false,
                        "contractAddressUrl": "",
                        "contractAddress": "",
                    })
                })
                .collect();
            json!({
                "coin": c.coin,
                "depositAllEnable": true,
                "withdrawAllEnable": true,
                "name": c.name,
                "free": c.balance,
                "locked": "0",
                "freeze": "0",
                "withdrawing": "0",
                "ipoing": "0",
                "ipoable": "0",
                "storage": "0",
                "isLegalMoney": false,
                "trading": true,
                "networkList": networks,
            })
        })
        .collect();
    Reply::ok(Value::Array(list))
}

fn withdraw(ctx: &mut Ctx<'_>) -> Reply {
    let p = &ctx.req.params;
    let Some(coin) = p.get("coin") else {
        return mandatory("coin");
    };
    let Some(coin) = COINS.iter().find(|c| c.coin == coin) else {
        return error(-4003, "The coin does not exist.");
    };
    if p.get("address").is_none() {
        return mandatory("address");
    }
    if positive_decimal(p.get("amount")).is_none() {
        return mandatory("amount");
    }
    if let Some(network) = p.get("network") {
        if !coin.networks.iter().any(|(n, ..)| *n == network) {
            return error(-4020, "Network is not supported for this coin.");
        }
    }
    let seq = ctx.book.next_seq();
    Reply::ok(json!({"id": format!("{:016x}{:016x}", scramble(seq), scramble(seq ^ 0xb1))}))
}
