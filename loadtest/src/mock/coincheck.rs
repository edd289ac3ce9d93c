//! Coincheck: public `GET /api/ticker|trades|order_books|...`, private calls by method and
//! path under `/api/` (`DELETE /api/exchange/orders/<id>` cancels). Answers follow
//! Coincheck's documented shapes (`{"success":true,...}`, errors as
//! `{"success":false,"error":"..."}`), which is what ccxt's `coincheck` parses.

use http::{Method, StatusCode};
use keyguard_policy::Action;
use serde_json::{json, Map, Value};

use super::assertion::AssertionError;
use super::book::{Order, Side};
use super::params::positive_decimal;
use super::{json_number, scramble, Ctx, Endpoint, MockRequest, Reply};

/// Pairs with their last price (ccxt's coincheck lists these markets statically).
const PAIRS: &[(&str, f64)] = &[
    ("btc_jpy", 9_500_000.0),
    ("etc_jpy", 3_100.0),
    ("fct_jpy", 7.5),
    ("mona_jpy", 45.3),
    ("etc_btc", 0.00033),
];

/// Balances every account holds, and the crypto withdrawal fee.
const CURRENCIES: &[(&str, &str, Option<&str>)] = &[
    ("jpy", "1000000.0", None),
    ("btc", "1.5", Some("0.0005")),
    ("etc", "20.0", Some("0.01")),
    ("fct", "100.0", Some("0.1")),
    ("mona", "1000.0", Some("0.1")),
];

/// The fee of a yen withdrawal to a bank account.
const JPY_WITHDRAW_FEE: &str = "407.0";

pub(crate) fn route(req: &MockRequest) -> Endpoint {
    let Some(rest) = req.path.strip_prefix("/api/") else {
        return Endpoint::Unknown;
    };
    let public: Option<fn(&MockRequest, u64) -> Reply> = match (&req.method, rest) {
        (&Method::GET, "ticker") => Some(ticker),
        (&Method::GET, "trades") => Some(trades),
        (&Method::GET, "order_books") => Some(order_books),
        (&Method::GET, "exchange_status") => Some(exchange_status),
        _ => None,
    };
    if let Some(handler) = public {
        return Endpoint::Public(handler);
    }
    let (action, handler): (Action, fn(&mut Ctx<'_>) -> Reply) = match (&req.method, rest) {
        (&Method::GET, "accounts") => (Action::Read, accounts),
        (&Method::GET, "accounts/balance") => (Action::Read, balance),
        (&Method::GET, "exchange/orders/opens") => (Action::Read, open_orders),
        (&Method::GET, "exchange/orders/transactions")
        | (&Method::GET, "exchange/orders/transactions_pagination")
        | (&Method::GET, "send_money")
        | (&Method::GET, "withdraws")
        | (&Method::GET, "deposit_money") => (Action::Read, empty_list),
        (&Method::POST, "exchange/orders") => (Action::Trade, create_order),
        (&Method::DELETE, id) if order_id(id).is_some() => (Action::Trade, cancel_order),
        (&Method::POST, "send_money") => (Action::Withdraw, send_money),
        (&Method::POST, "withdraws") => (Action::Withdraw, withdraw_jpy),
        _ => return Endpoint::Unknown,
    };
    Endpoint::Private { action, handler }
}

/// The id of `exchange/orders/<digits>`.
fn order_id(rest: &str) -> Option<&str> {
    rest.strip_prefix("exchange/orders/")
        .filter(|id| !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit()))
}

pub(crate) fn refused(error: &AssertionError) -> Reply {
    Reply::with_status(
        StatusCode::UNAUTHORIZED,
        json!({"success": false, "error": format!("invalid authentication: {}", error.code())}),
    )
}

pub(crate) fn not_found(_req: &MockRequest) -> Reply {
    Reply::with_status(
        StatusCode::NOT_FOUND,
        json!({"success": false, "error": "not found"}),
    )
}

fn failure(error: &str) -> Reply {
    Reply::with_status(
        StatusCode::BAD_REQUEST,
        json!({"success": false, "error": error}),
    )
}

fn pair_last(req: &MockRequest) -> Option<f64> {
    let name = req.params.get("pair").unwrap_or("btc_jpy");
    PAIRS
        .iter()
        .find(|(p, _)| *p == name)
        .map(|(_, last)| *last)
}

fn ticker(req: &MockRequest, now_ms: u64) -> Reply {
    match pair_last(req) {
        Some(last) => Reply::ok(json!({
            "last": last,
            "bid": last * 0.999,
            "ask": last * 1.001,
            "high": last * 1.02,
            "low": last * 0.97,
            "volume": "1234.5",
            "timestamp": now_ms / 1000,
        })),
        None => failure("invalid pair"),
    }
}

fn trades(req: &MockRequest, _now_ms: u64) -> Reply {
    match pair_last(req) {
        Some(_) => Reply::ok(json!({"success": true, "pagination": {}, "data": []})),
        None => failure("invalid pair"),
    }
}

fn order_books(req: &MockRequest, _now_ms: u64) -> Reply {
    match pair_last(req) {
        Some(last) => Reply::ok(json!({
            "asks": [[format!("{}", last * 1.001), "0.1"]],
            "bids": [[format!("{}", last * 0.999), "0.1"]],
        })),
        None => failure("invalid pair"),
    }
}

fn exchange_status(_req: &MockRequest, now_ms: u64) -> Reply {
    let statuses: Vec<Value> = PAIRS
        .iter()
        .map(|(p, _)| {
            json!({"pair": p, "status": "available", "timestamp": now_ms / 1000,
                   "availability": {"order": true, "market_order": true, "cancel": true}})
        })
        .collect();
    Reply::ok(json!({"exchange_status": statuses}))
}

fn accounts(ctx: &mut Ctx<'_>) -> Reply {
    Reply::ok(json!({
        "success": true,
        "id": scramble(ctx.account.len() as u64) % 100_000,
        "email": format!("{}@mock.invalid", ctx.account),
        "identity_status": "identity_verified",
        "bitcoin_address": "3MockBitcoinAddressForDeposits11",
        "taker_fee": "0.0",
        "maker_fee": "0.0",
        "exchange_fees": {},
    }))
}

fn balance(ctx: &mut Ctx<'_>) -> Reply {
    let mut data = Map::new();
    data.insert("success".into(), json!(true));
    for (name, amount, _) in CURRENCIES {
        data.insert((*name).into(), json!(amount));
        // What this account has locked in open orders is not tracked: nothing fills.
        data.insert(format!("{name}_reserved"), json!("0.0"));
        data.insert(format!("{name}_lend_in_use"), json!("0.0"));
    }
    data.insert(
        "open_orders".into(),
        json!(ctx.book.open_orders(ctx.account).count()),
    );
    Reply::ok(Value::Object(data))
}

fn iso8601(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ms % 1000
    )
}

fn order_json(o: &Order) -> Value {
    json!({
        "id": o.seq,
        "order_type": o.side.lower(),
        "rate": json_number(&o.price),
        "pair": o.market,
        "pending_amount": o.quantity,
        "pending_market_buy_amount": null,
        "stop_loss_rate": null,
        "created_at": iso8601(o.created_ms),
    })
}

fn open_orders(ctx: &mut Ctx<'_>) -> Reply {
    let orders: Vec<Value> = ctx.book.open_orders(ctx.account).map(order_json).collect();
    Reply::ok(json!({"success": true, "orders": orders}))
}

fn empty_list(_ctx: &mut Ctx<'_>) -> Reply {
    Reply::ok(json!({"success": true, "pagination": {}, "data": []}))
}

fn create_order(ctx: &mut Ctx<'_>) -> Reply {
    let p = &ctx.req.params;
    let Some(pair) = p.get("pair").filter(|n| PAIRS.iter().any(|(x, _)| x == n)) else {
        return failure("invalid pair");
    };
    // Limit orders only: market orders would need a fill price the mock does not have.
    let side = match p.get("order_type") {
        Some("buy") => Side::Buy,
        Some("sell") => Side::Sell,
        _ => return failure("order_type is invalid"),
    };
    let (Some(rate), Some(amount)) = (
        p.get("rate")
            .filter(|v| positive_decimal(Some(v)).is_some()),
        p.get("amount")
            .filter(|v| positive_decimal(Some(v)).is_some()),
    ) else {
        return failure("rate or amount is invalid");
    };
    let seq = ctx.book.next_seq();
    let order = Order {
        seq,
        id: seq.to_string(),
        account: ctx.account.to_owned(),
        market: pair.to_owned(),
        side,
        kind: side.lower().to_owned(),
        price: rate.to_owned(),
        quantity: amount.to_owned(),
        client_id: String::new(),
        time_in_force: p.get("time_in_force").unwrap_or_default().to_owned(),
        created_ms: ctx.now_ms,
    };
    let mut body = order_json(&order);
    body["success"] = json!(true);
    body["amount"] = json!(amount);
    ctx.book.place(order);
    Reply::ok(body)
}

fn cancel_order(ctx: &mut Ctx<'_>) -> Reply {
    let id = ctx
        .req
        .path
        .strip_prefix("/api/")
        .and_then(order_id)
        .unwrap_or_default()
        .to_owned();
    match ctx.book.cancel(ctx.account, |o| o.id == id) {
        Some(order) => Reply::ok(json!({"success": true, "id": order.seq})),
        None => failure("The order doesn't exist."),
    }
}

fn send_money(ctx: &mut Ctx<'_>) -> Reply {
    let p = &ctx.req.params;
    let currency = p.get("currency").unwrap_or("btc").to_ascii_lowercase();
    let Some(&(_, _, Some(fee))) = CURRENCIES.iter().find(|(name, _, _)| *name == currency) else {
        return failure("currency is invalid");
    };
    let Some(address) = p.get("address") else {
        return failure("address is invalid");
    };
    let Some(amount) = p
        .get("amount")
        .filter(|v| positive_decimal(Some(v)).is_some())
    else {
        return failure("amount is invalid");
    };
    let seq = ctx.book.next_seq();
    Reply::ok(json!({
        "success": true,
        "id": seq.to_string(),
        "address": address,
        "amount": amount,
        "fee": fee,
        "currency": currency.to_ascii_uppercase(),
    }))
}

fn withdraw_jpy(ctx: &mut Ctx<'_>) -> Reply {
    let p = &ctx.req.params;
    if !p
        .get("currency")
        .is_some_and(|c| c.eq_ignore_ascii_case("jpy"))
    {
        return failure("currency is invalid");
    }
    let Some(bank) = p
        .get("bank_account_id")
        .filter(|id| id.bytes().all(|b| b.is_ascii_digit()))
    else {
        return failure("bank_account_id is invalid");
    };
    let Some(amount) = p
        .get("amount")
        .filter(|v| positive_decimal(Some(v)).is_some())
    else {
        return failure("amount is invalid");
    };
    let seq = ctx.book.next_seq();
    Reply::ok(json!({
        "success": true,
        "data": {
            "id": seq,
            "status": "pending",
            "amount": amount,
            "currency": "JPY",
            "created_at": iso8601(ctx.now_ms),
            "bank_account_id": bank.parse::<u64>().unwrap_or(0),
            "fee": JPY_WITHDRAW_FEE,
        },
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_iso8601() {
        assert_eq!(iso8601(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(iso8601(1_763_812_345_678), "2025-11-22T11:52:25.678Z");
        assert_eq!(iso8601(951_782_400_000), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn order_ids_are_digits_only() {
        assert_eq!(order_id("exchange/orders/12"), Some("12"));
        assert_eq!(order_id("exchange/orders/opens"), None);
        assert_eq!(order_id("exchange/orders/"), None);
    }
}
