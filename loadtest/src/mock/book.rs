//! The mock's order book: open orders per account, shared by all dialects.
//!
//! Orders never fill on their own; they stay open until cancelled. That is enough for a
//! client to place, list and cancel, and keeps every test deterministic.

/// Buy or sell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Side {
    Buy,
    Sell,
}

impl Side {
    pub(crate) const fn lower(self) -> &'static str {
        match self {
            Side::Buy => "buy",
            Side::Sell => "sell",
        }
    }

    pub(crate) const fn upper(self) -> &'static str {
        match self {
            Side::Buy => "BUY",
            Side::Sell => "SELL",
        }
    }
}

/// One open order. Prices and quantities keep the client's text, so responses echo
/// exactly what was sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Order {
    /// Monotonic sequence number; Binance and Zaif use it as the order id.
    pub(crate) seq: u64,
    /// The exchange-visible id (Kraken's `OXXXXX-XXXXX-XXXXXX`, otherwise `seq`).
    pub(crate) id: String,
    pub(crate) account: String,
    /// The exchange's market id, e.g. `BTCUSDT`, `btc_jpy`, `XXBTZUSD`.
    pub(crate) market: String,
    pub(crate) side: Side,
    /// The exchange's order type spelling, e.g. `LIMIT` or `limit`.
    pub(crate) kind: String,
    pub(crate) price: String,
    pub(crate) quantity: String,
    pub(crate) client_id: String,
    pub(crate) time_in_force: String,
    pub(crate) created_ms: u64,
}

/// All open orders plus the id sequence.
#[derive(Debug, Default)]
pub(crate) struct Book {
    last_seq: u64,
    orders: Vec<Order>,
    placed: u64,
}

impl Book {
    /// The next sequence number (starts at 1; ids of 0 look like errors to clients).
    pub(crate) fn next_seq(&mut self) -> u64 {
        self.last_seq += 1;
        self.last_seq
    }

    /// Adds an open order.
    pub(crate) fn place(&mut self, order: Order) {
        self.placed += 1;
        self.orders.push(order);
    }

    /// Orders ever placed (all accounts), for Zaif's `trade_count`.
    pub(crate) fn placed(&self) -> u64 {
        self.placed
    }

    /// `account`'s open orders, oldest first.
    pub(crate) fn open_orders<'a>(&'a self, account: &'a str) -> impl Iterator<Item = &'a Order> {
        self.orders.iter().filter(move |o| o.account == account)
    }

    /// `account`'s open order matching `pred`, if any.
    pub(crate) fn find(&self, account: &str, pred: impl Fn(&Order) -> bool) -> Option<&Order> {
        self.orders.iter().find(|o| o.account == account && pred(o))
    }

    /// Removes and returns `account`'s open order matching `pred`. Another account's
    /// order is never touched, even with the right id.
    pub(crate) fn cancel(&mut self, account: &str, pred: impl Fn(&Order) -> bool) -> Option<Order> {
        let index = self
            .orders
            .iter()
            .position(|o| o.account == account && pred(o))?;
        Some(self.orders.remove(index))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order(book: &mut Book, account: &str) -> Order {
        let seq = book.next_seq();
        Order {
            seq,
            id: seq.to_string(),
            account: account.into(),
            market: "BTCUSDT".into(),
            side: Side::Buy,
            kind: "LIMIT".into(),
            price: "30000".into(),
            quantity: "0.01".into(),
            client_id: String::new(),
            time_in_force: "GTC".into(),
            created_ms: 0,
        }
    }

    #[test]
    fn cancels_only_the_owners_order() {
        let mut book = Book::default();
        let a = order(&mut book, "alice");
        let b = order(&mut book, "bob");
        book.place(a.clone());
        book.place(b.clone());
        assert!(book.cancel("alice", |o| o.id == b.id).is_none());
        assert_eq!(book.cancel("bob", |o| o.id == b.id), Some(b));
        assert_eq!(book.open_orders("alice").count(), 1);
        assert_eq!(book.open_orders("bob").count(), 0);
    }
}
