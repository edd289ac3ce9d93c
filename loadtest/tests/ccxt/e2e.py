#!/usr/bin/env python3
"""Drive UNMODIFIED ccxt through a running Keyguard gateway and check what it allows.

Run by loadtest/tests/ccxt_e2e.rs, which starts the mock exchange and the gateway, creates
the keys and afterwards checks the mock's ledger. This script only plays the client:

  python3 e2e.py '<json config>'

The config names the dialect, the gateway URL, two keys (a full key allowlisted to one
source IP, a read-only key) and the withdrawal destination the full key may use (an
address, or extra withdraw() params such as Kraken's withdrawal `key`, with the address
left out as ccxt allows; optionally `denied_params` naming a destination the key may not
use). Three clients run in order:

  1. the full key from the allowlisted IP: balance, limit order, open orders, cancel and
     withdrawal all succeed (and, with `denied_params`, a withdrawal elsewhere raises a
     ccxt error carrying `address_not_allowed`);
  2. the read-only key from the same IP: balance and open orders work, placing or
     cancelling an order and withdrawing raise a ccxt error carrying `scope_missing`;
  3. the full key from another IP: every private call raises a ccxt error carrying
     `ip_not_allowed`;
  4. (coincheck only) the full key from the allowlisted IP, but naming another Host: the
     signed URL is not the gateway's, so the call raises a ccxt error carrying
     `invalid_target`.

Each client binds its source address (127.0.0.2, 127.0.0.3, ...) through a requests
adapter, so the gateway sees a real peer address and no header can fake it.

Prints one line per step; exits 0 when every expectation held, otherwise 1 after one
`FAIL ...` line per failed expectation.
"""

import json
import sys
import traceback

import ccxt
from requests.adapters import HTTPAdapter


class SourceAddressAdapter(HTTPAdapter):
    """Makes every connection of a requests session leave from `ip`."""

    def __init__(self, ip, **kwargs):
        self._source_ip = ip
        super().__init__(**kwargs)

    def init_poolmanager(self, connections, maxsize, block=False, **pool_kwargs):
        pool_kwargs["source_address"] = (self._source_ip, 0)
        super().init_poolmanager(connections, maxsize, block=block, **pool_kwargs)


# Per dialect: how to point ccxt at the gateway, and what to trade and withdraw.
DIALECTS = {
    "zaif": {
        "class": ccxt.zaif,
        "urls": lambda gw: {"rest": gw},
        "options": {},
        "symbol": "BTC/JPY",
        "amount": 0.01,
        "price": 5000000,
        "withdraw_params": {},
    },
    "binance": {
        "class": ccxt.binance,
        "urls": lambda gw: {
            "public": gw + "/api/v3",
            "private": gw + "/api/v3",
            "v1": gw + "/api/v1",
            "sapi": gw + "/sapi/v1",
            "sapiV2": gw + "/sapi/v2",
            "sapiV3": gw + "/sapi/v3",
            "sapiV4": gw + "/sapi/v4",
        },
        # Spot only (the gateway fronts the spot API), and no margin pair lists: they are
        # irrelevant to spot trading and would only add reads to the ledger.
        "options": {"fetchMarkets": {"types": ["spot"]}, "fetchMargins": False},
        "symbol": "BTC/USDT",
        "amount": 0.001,
        "price": 30000,
        "withdraw_params": {},
    },
    "kraken": {
        "class": ccxt.kraken,
        "urls": lambda gw: {"public": gw, "private": gw},
        "options": {},
        "symbol": "BTC/USD",
        "amount": 0.01,
        "price": 30000,
        # Kraken withdraws to a named destination ("key"); ccxt also sends the address.
        "withdraw_params": {"key": "keyguard-e2e"},
    },
    "coincheck": {
        "class": ccxt.coincheck,
        "urls": lambda gw: {"rest": gw + "/api"},
        "options": {},
        "symbol": "BTC/JPY",
        "amount": 0.005,
        "price": 5000000,
        "withdraw_params": {},
        # ccxt's coincheck has no withdraw(); crypto goes out through its implicit
        # `POST send_money` method, as a bot would call it.
        "withdraw": lambda ex, w, params: ex.private_post_send_money(
            dict({"currency": w["code"], "address": w["address"], "amount": w["amount"]},
                 **params)
        ),
    },
}


class Run:
    def __init__(self, config):
        self.config = config
        self.dialect = DIALECTS[config["dialect"]]
        self.failures = []
        self.steps = []

    def client(self, key, source_ip):
        spec = self.dialect
        exchange = spec["class"](
            {
                "apiKey": key["api_key"],
                "secret": key["secret"],
                "timeout": 20000,
                "options": dict(spec["options"]),
            }
        )
        exchange.urls["api"] = spec["urls"](self.config["gateway"])
        # The gateway is on loopback: no proxy from the environment may sit in between.
        exchange.session.trust_env = False
        exchange.session.mount("http://", SourceAddressAdapter(source_ip))
        return exchange

    def record(self, who, step, outcome, detail):
        self.steps.append({"client": who, "step": step, "outcome": outcome, "detail": detail})

    def expect_ok(self, who, step, call, check=None):
        """Runs `call`; it must return without raising and pass `check`."""
        try:
            result = call()
        except Exception as e:  # noqa: BLE001 - any exception is a failure here
            self.fail(who, step, f"raised {type(e).__name__}: {e}")
            return None
        problem = check(result) if check else None
        if problem:
            self.fail(who, step, problem)
            return None
        self.record(who, step, "ok", None)
        return result

    def expect_denied(self, who, step, exchange, call, code):
        """Runs `call`; it must raise a ccxt error whose response body names `code`, and
        not a NetworkError: bots retry those, so a refusal must not look like an outage."""
        exchange.last_http_response = None
        try:
            call()
        except ccxt.BaseError as e:
            body = exchange.last_http_response or ""
            if isinstance(e, ccxt.NetworkError):
                self.fail(
                    who,
                    step,
                    f"raised {type(e).__name__}, a retryable network error, for a refusal: "
                    f"{body or e}",
                )
                return
            if code not in body and code not in str(e):
                self.fail(
                    who,
                    step,
                    f"raised {type(e).__name__} but the response does not name {code!r}: "
                    f"{body or e}",
                )
                return
            self.record(who, step, "denied", type(e).__name__)
            return
        except Exception as e:  # noqa: BLE001 - the point is to catch non-ccxt errors
            body = exchange.last_http_response or ""
            self.fail(
                who,
                step,
                f"raised {type(e).__name__} ({e!r}), not a ccxt error: ccxt could not "
                f"interpret the gateway's response {body!r}",
            )
            return
        self.fail(who, step, "succeeded but must be denied")

    def withdraw(self, ex, extra=None):
        spec = self.dialect
        w = self.config["withdraw"]
        params = dict(spec["withdraw_params"])
        # The run may name another destination (a Kraken withdrawal key), and a step may
        # aim at one the key does not allow.
        params.update(w.get("params", {}))
        params.update(extra or {})
        if "withdraw" in spec:
            return spec["withdraw"](ex, w, params)
        return ex.withdraw(w["code"], w["amount"], w["address"], params)

    def fail(self, who, step, message):
        self.failures.append(f"{self.config['dialect']} {who} {step}: {message}")
        self.record(who, step, "failed", message)

    def full_key_allowed_ip(self):
        spec = self.dialect
        who = "full@" + self.config["allowed_ip"]
        ex = self.client(self.config["full"], self.config["allowed_ip"])
        symbol = spec["symbol"]

        self.expect_ok(who, "load_markets", lambda: ex.load_markets(),
                       lambda m: None if symbol in m else f"{symbol} missing from markets")
        self.expect_ok(who, "fetch_balance", lambda: ex.fetch_balance(), check_btc_balance)
        order = self.expect_ok(
            who,
            "create_order",
            lambda: ex.create_order(symbol, "limit", "buy", spec["amount"], spec["price"]),
            lambda o: None if o.get("id") else f"no order id in {o}",
        )
        if order is None:
            return None
        self.expect_ok(
            who,
            "fetch_open_orders",
            lambda: ex.fetch_open_orders(symbol),
            lambda orders: None
            if any(o["id"] == order["id"] for o in orders)
            else f"order {order['id']} not among open orders {[o['id'] for o in orders]}",
        )
        self.expect_ok(who, "cancel_order", lambda: ex.cancel_order(order["id"], symbol))
        self.expect_ok(
            who,
            "withdraw",
            lambda: self.withdraw(ex),
            lambda t: None if t.get("id") else f"no withdrawal id in {t}",
        )
        elsewhere = self.config["withdraw"].get("denied_params")
        if elsewhere:
            self.expect_denied(who, "withdraw elsewhere", ex,
                               lambda: self.withdraw(ex, elsewhere), "address_not_allowed")
        return order["id"]

    def read_key(self, order_id):
        spec = self.dialect
        who = "read@" + self.config["allowed_ip"]
        ex = self.client(self.config["read"], self.config["allowed_ip"])
        symbol = spec["symbol"]
        code = "scope_missing"

        self.expect_ok(who, "fetch_balance", lambda: ex.fetch_balance(), check_btc_balance)
        self.expect_ok(who, "fetch_open_orders", lambda: ex.fetch_open_orders(symbol))
        self.expect_denied(
            who, "create_order", ex,
            lambda: ex.create_order(symbol, "limit", "buy", spec["amount"], spec["price"]),
            code,
        )
        self.expect_denied(
            who, "cancel_order", ex, lambda: ex.cancel_order(order_id or "1", symbol), code
        )
        self.expect_denied(who, "withdraw", ex, lambda: self.withdraw(ex), code)

    def full_key_other_ip(self, order_id):
        spec = self.dialect
        who = "full@" + self.config["other_ip"]
        ex = self.client(self.config["full"], self.config["other_ip"])
        symbol = spec["symbol"]
        code = "ip_not_allowed"

        self.expect_denied(who, "fetch_balance", ex, lambda: ex.fetch_balance(), code)
        self.expect_denied(who, "fetch_open_orders", ex, lambda: ex.fetch_open_orders(symbol), code)
        self.expect_denied(
            who, "create_order", ex,
            lambda: ex.create_order(symbol, "limit", "buy", spec["amount"], spec["price"]),
            code,
        )
        self.expect_denied(
            who, "cancel_order", ex, lambda: ex.cancel_order(order_id or "1", symbol), code
        )
        self.expect_denied(who, "withdraw", ex, lambda: self.withdraw(ex), code)


    def full_key_other_host(self):
        """A client that calls the gateway under another name: the URL it signs is not
        the gateway's public one, so the gateway refuses before forwarding."""
        who = "full@" + self.config["allowed_ip"] + "/other-host"
        ex = self.client(self.config["full"], self.config["allowed_ip"])
        ex.headers = {"Host": "exchange.invalid"}
        self.expect_denied(who, "fetch_balance", ex, lambda: ex.fetch_balance(), "invalid_target")
        self.expect_denied(who, "withdraw", ex, lambda: self.withdraw(ex), "invalid_target")


def check_btc_balance(balance):
    total = (balance.get("BTC") or {}).get("total")
    if total is None or abs(total - 1.5) > 1e-9:
        return f"BTC total is {total!r}, the mock holds 1.5"
    return None


def main():
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    config = json.loads(sys.argv[1])
    run = Run(config)
    print(f"ccxt {ccxt.__version__}, dialect {config['dialect']}, gateway {config['gateway']}")
    try:
        order_id = run.full_key_allowed_ip()
        run.read_key(order_id)
        run.full_key_other_ip(order_id)
        if config["dialect"] == "coincheck":
            run.full_key_other_host()
    except Exception:  # noqa: BLE001 - report, never hide, a crash of the script itself
        run.failures.append("script crashed:\n" + traceback.format_exc())
    for step in run.steps:
        # Failure details follow as FAIL lines; denials show which ccxt error they raised.
        detail = step["detail"] if step["outcome"] == "denied" else None
        print(f"  {step['client']:<16} {step['step']:<18} {step['outcome']}"
              + (f"  ({detail})" if detail else ""))
    for failure in run.failures:
        print("FAIL " + failure)
    return 1 if run.failures else 0


if __name__ == "__main__":
    sys.exit(main())
