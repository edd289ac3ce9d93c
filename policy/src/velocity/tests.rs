//! Velocity ledger tests: window boundaries, rule selection, atomic concurrent reservations,
//! release/commit, persistence.

use std::sync::{Arc, Barrier};

use http::Method;

use super::*;
use crate::decimal::parse_decimal;
use crate::route::{Facts, FieldMap};

const HOUR: u64 = 60 * 60 * 1000;
const DAY: u64 = 24 * HOUR;
const T0: UnixMillis = 1_700_000_000_000;

fn d(s: &str) -> Decimal {
    parse_decimal(s).unwrap()
}

fn rule(
    kind: LedgerKind,
    subject: SubjectKind,
    asset: &str,
    window_ms: u64,
    max_amount: Option<&str>,
    max_count: Option<u64>,
) -> VelocityRule {
    VelocityRule {
        kind,
        subject,
        asset: asset.parse().unwrap(),
        window_ms,
        max_amount: max_amount.map(d),
        max_count,
    }
}

fn ledger(rules: Vec<VelocityRule>) -> MemoryVelocity {
    MemoryVelocity::new(&VelocityConfig { rules }).unwrap()
}

fn withdraw<'a>(key: &'a str, account: &'a str, asset: &'a str, amount: &str) -> Reservation<'a> {
    Reservation {
        kind: LedgerKind::Withdraw,
        key_id: key,
        account,
        asset,
        amount: Some(d(amount)),
    }
}

/// Withdrawals of BTC per key: 1 BTC per hour and 1.5 BTC per day.
fn btc_hour_and_day() -> MemoryVelocity {
    use LedgerKind::Withdraw;
    use SubjectKind::Key;
    ledger(vec![
        rule(Withdraw, Key, "btc", HOUR, Some("1"), None),
        rule(Withdraw, Key, "btc", DAY, Some("1.5"), None),
    ])
}

#[test]
fn hour_window_boundary() {
    let v = btc_hour_and_day();
    let w = withdraw("k", "a", "btc", "0.6");
    v.reserve(&w, T0).unwrap();
    assert_eq!(v.reserve(&w, T0), Err(Deny::WithdrawLimit));
    assert_eq!(
        v.reserve(&w, T0 + HOUR - 1),
        Err(Deny::WithdrawLimit),
        "just before"
    );
    v.reserve(&w, T0 + HOUR).unwrap(); // at: the first entry left the hour
                                       // 1.2 in the day so far; 0.3 more fits the day, but not the hour.
    let small = withdraw("k", "a", "btc", "0.3");
    v.reserve(&small, T0 + HOUR + 1).unwrap();
    assert_eq!(
        v.reserve(&small, T0 + HOUR + 2),
        Err(Deny::WithdrawLimit),
        "day: 1.5 reached"
    );
}

#[test]
fn day_window_boundary() {
    let v = btc_hour_and_day();
    let w = withdraw("k", "a", "btc", "0.75");
    v.reserve(&w, T0).unwrap();
    v.reserve(&w, T0 + 2 * HOUR).unwrap();
    // The hour is clear, the day holds 1.5.
    assert_eq!(v.reserve(&w, T0 + 4 * HOUR), Err(Deny::WithdrawLimit));
    assert_eq!(
        v.reserve(&w, T0 + DAY - 1),
        Err(Deny::WithdrawLimit),
        "just before"
    );
    v.reserve(&w, T0 + DAY).unwrap(); // at
    assert_eq!(
        v.reserve(&w, T0 + DAY + 1),
        Err(Deny::WithdrawLimit),
        "just after"
    );
    v.reserve(&w, T0 + DAY + 2 * HOUR).unwrap();
}

#[test]
fn splitting_does_not_evade_the_window() {
    let v = btc_hour_and_day();
    for i in 0..10 {
        v.reserve(&withdraw("k", "a", "btc", "0.1"), T0 + i)
            .unwrap();
    }
    // Exactly 1.0: ten tenths add up exactly, and the eleventh does not fit.
    assert_eq!(
        v.reserve(&withdraw("k", "a", "btc", "0.00000001"), T0 + 10),
        Err(Deny::WithdrawLimit)
    );
    v.reserve(&withdraw("k", "a", "btc", "0"), T0 + 11).unwrap();
}

#[test]
fn counts_and_boundaries_of_count_rules() {
    use LedgerKind::Withdraw;
    let v = ledger(vec![rule(
        Withdraw,
        SubjectKind::Key,
        "*",
        HOUR,
        None,
        Some(3),
    )]);
    let w = withdraw("k", "a", "btc", "100");
    for i in 0..3 {
        v.reserve(&w, T0 + i).unwrap();
    }
    assert_eq!(v.reserve(&w, T0 + HOUR - 1), Err(Deny::WithdrawLimit));
    v.reserve(&w, T0 + HOUR).unwrap(); // the first left
    assert_eq!(v.reserve(&w, T0 + HOUR), Err(Deny::WithdrawLimit));
    v.reserve(&w, T0 + HOUR + 1).unwrap(); // the second left
}

#[test]
fn star_counts_each_asset_separately_and_exact_rules_replace_it() {
    use LedgerKind::Withdraw;
    use SubjectKind::Key;
    let v = ledger(vec![
        rule(Withdraw, Key, "*", DAY, Some("1"), Some(10)),
        rule(Withdraw, Key, "jpy", DAY, Some("1000000"), None),
    ]);
    v.reserve(&withdraw("k", "a", "btc", "1"), T0).unwrap();
    v.reserve(&withdraw("k", "a", "eth", "1"), T0).unwrap();
    assert_eq!(
        v.reserve(&withdraw("k", "a", "btc", "0.1"), T0),
        Err(Deny::WithdrawLimit)
    );
    // jpy has its own rule: the `*` amount (1) does not apply to it.
    v.reserve(&withdraw("k", "a", "jpy", "999999"), T0).unwrap();
    v.reserve(&withdraw("k", "a", "jpy", "1"), T0).unwrap();
    assert_eq!(
        v.reserve(&withdraw("k", "a", "jpy", "1"), T0),
        Err(Deny::WithdrawLimit)
    );
}

#[test]
fn account_rules_sum_all_keys_of_the_account() {
    use LedgerKind::Withdraw;
    let v = ledger(vec![
        rule(Withdraw, SubjectKind::Key, "btc", DAY, Some("1"), None),
        rule(
            Withdraw,
            SubjectKind::Account,
            "btc",
            DAY,
            Some("1.5"),
            None,
        ),
    ]);
    v.reserve(&withdraw("k1", "acct", "btc", "1"), T0).unwrap();
    assert_eq!(
        v.reserve(&withdraw("k1", "acct", "btc", "0.1"), T0),
        Err(Deny::WithdrawLimit),
        "key limit"
    );
    v.reserve(&withdraw("k2", "acct", "btc", "0.5"), T0)
        .unwrap();
    assert_eq!(
        v.reserve(&withdraw("k3", "acct", "btc", "0.1"), T0),
        Err(Deny::WithdrawLimit),
        "account limit, fresh key"
    );
    v.reserve(&withdraw("k4", "other", "btc", "1"), T0).unwrap();
    // A refused reservation recorded nothing for the key either.
    assert_eq!(v.export().len(), 3);
}

#[test]
fn orders_count_and_notional() {
    use LedgerKind::Order;
    let v = ledger(vec![
        rule(Order, SubjectKind::Key, "*", HOUR, Some("1000000"), Some(3)),
        rule(Order, SubjectKind::Account, "*", HOUR, None, Some(4)),
    ]);
    let order = |key: &'static str, price: &str, qty: &str| Reservation {
        kind: Order,
        key_id: key,
        account: "a",
        asset: "btc_jpy",
        amount: d(price).checked_mul(d(qty)),
    };
    v.reserve(&order("k", "5000000", "0.1"), T0).unwrap(); // 500 000
    v.reserve(&order("k", "5000000", "0.1"), T0).unwrap(); // 1 000 000
    assert_eq!(
        v.reserve(&order("k", "1", "0.001"), T0),
        Err(Deny::OrderLimit),
        "notional"
    );
    let v2 = ledger(vec![rule(
        Order,
        SubjectKind::Key,
        "*",
        HOUR,
        None,
        Some(2),
    )]);
    v2.reserve(&order("k", "1", "1"), T0).unwrap();
    v2.reserve(&order("k", "1", "1"), T0).unwrap();
    assert_eq!(
        v2.reserve(&order("k", "1", "1"), T0),
        Err(Deny::OrderLimit),
        "count"
    );
    // An order that cannot be valued is refused only where a notional rule applies.
    let market = Reservation {
        amount: None,
        ..order("k2", "1", "1")
    };
    assert_eq!(v.reserve(&market, T0), Err(Deny::InvalidField));
    v2.reserve(&market, T0).unwrap();
    // No rule for withdrawals: nothing reserved, nothing stored.
    assert_eq!(
        v2.reserve(&withdraw("k", "a", "btc", "1"), T0),
        Ok(ReservationId::NONE)
    );
}

#[test]
fn reservation_for_request() {
    let key = KeyRecord {
        key_id: "kg_1".into(),
        api_key: "ak".into(),
        account: "acct".into(),
        label: String::new(),
        scopes: crate::Scopes::NONE,
        allow_ips: Vec::new(),
        withdraw_addresses: Vec::new(),
        trusted_ips: Vec::new(),
        created_at: 0,
        expires_at: None,
        status: crate::KeyStatus::Active,
        credential: crate::Credential::Ed25519([0; 32]),
        canary: false,
    };
    let route = |action, price: Option<&str>, quantity: Option<&str>| RouteSpec {
        method: Method::POST,
        path: "/tapi".into(),
        select: None,
        action,
        fields: FieldMap {
            asset: Some("currency_pair".into()),
            price: price.map(Into::into),
            quantity: quantity.map(Into::into),
            ..FieldMap::default()
        },
    };
    let classified = |action, facts| Classified {
        route: 0,
        action,
        facts,
    };
    let order = classified(
        Action::Trade,
        Facts {
            asset: Some("btc_jpy".into()),
            price: Some(d("5000000")),
            quantity: Some(d("0.001")),
            ..Facts::default()
        },
    );
    let r = Reservation::for_request(
        &route(Action::Trade, Some("price"), Some("amount")),
        &order,
        &key,
    )
    .unwrap();
    assert_eq!(
        (r.kind, r.key_id, r.account, r.asset, r.amount),
        (
            LedgerKind::Order,
            "kg_1",
            "acct",
            "btc_jpy",
            Some(d("5000"))
        )
    );
    // A trade route without price or quantity (a cancel) reserves nothing.
    assert_eq!(
        Reservation::for_request(&route(Action::Trade, None, None), &order, &key),
        None
    );
    let read = classified(Action::Read, Facts::default());
    assert_eq!(
        Reservation::for_request(&route(Action::Read, None, None), &read, &key),
        None
    );
    let wd = classified(
        Action::Withdraw,
        Facts {
            asset: Some("btc".into()),
            amount: Some(d("0.5")),
            ..Facts::default()
        },
    );
    let r = Reservation::for_request(&route(Action::Withdraw, None, None), &wd, &key).unwrap();
    assert_eq!((r.kind, r.amount), (LedgerKind::Withdraw, Some(d("0.5"))));
}

#[test]
fn release_frees_capacity_commit_does_not() {
    let v = btc_hour_and_day();
    let w = withdraw("k", "a", "btc", "1");
    let first = v.reserve(&w, T0).unwrap();
    assert_eq!(v.reserve(&w, T0 + 1), Err(Deny::WithdrawLimit));
    v.release(first).unwrap();
    assert_eq!(v.record(first), None, "a released reservation is gone");
    let second = v.reserve(&w, T0 + 2).unwrap();
    assert_eq!(v.record(second).unwrap().state, EntryState::Reserved);
    v.commit(second).unwrap();
    assert_eq!(v.record(second).unwrap().state, EntryState::Committed);
    assert_eq!(v.reserve(&w, T0 + 3), Err(Deny::WithdrawLimit));
    // Committed is final: a late release changes nothing.
    v.release(second).unwrap();
    assert_eq!(v.reserve(&w, T0 + 4), Err(Deny::WithdrawLimit));
    // Unknown and NONE ids are ignored; releasing twice is harmless.
    v.release(first).unwrap();
    v.release(ReservationId::from_raw(999_999)).unwrap();
    v.commit(ReservationId::NONE).unwrap();
    v.release(ReservationId::NONE).unwrap();
    assert_eq!(v.reserve(&w, T0 + 5), Err(Deny::WithdrawLimit));
}

#[test]
fn release_of_an_entry_that_left_a_window_keeps_sums_right() {
    let v = btc_hour_and_day();
    let w = withdraw("k", "a", "btc", "0.5");
    let old = v.reserve(&w, T0).unwrap();
    v.reserve(&w, T0 + HOUR).unwrap(); // hour: 0.5, day: 1.0
    v.release(old).unwrap(); // out of the hour already; the day drops to 0.5
    v.reserve(&withdraw("k", "a", "btc", "0.5"), T0 + HOUR + 1)
        .unwrap(); // hour 1.0, day 1.0
    assert_eq!(
        v.reserve(&withdraw("k", "a", "btc", "0.00000001"), T0 + HOUR + 2),
        Err(Deny::WithdrawLimit),
        "the hour is full"
    );
    v.reserve(&withdraw("k", "a", "btc", "0.5"), T0 + 2 * HOUR + 1)
        .unwrap(); // day 1.5
    assert_eq!(
        v.reserve(&withdraw("k", "a", "btc", "0.00000001"), T0 + 3 * HOUR),
        Err(Deny::WithdrawLimit),
        "the day is full"
    );
}

#[test]
fn twenty_concurrent_reservations_just_under_the_limit() {
    use LedgerKind::Withdraw;
    for amount in ["9.99999999", "0.6"] {
        // 10 BTC a day per key and per account; two keys share the account.
        let v = Arc::new(ledger(vec![
            rule(Withdraw, SubjectKind::Key, "btc", DAY, Some("10"), None),
            rule(Withdraw, SubjectKind::Account, "btc", DAY, Some("10"), None),
        ]));
        let barrier = Arc::new(Barrier::new(20));
        let handles: Vec<_> = (0..20)
            .map(|i| {
                let v = Arc::clone(&v);
                let barrier = Arc::clone(&barrier);
                // Half the threads use a second key of the same account.
                let key = if i % 2 == 0 { "k1" } else { "k2" };
                std::thread::spawn(move || {
                    barrier.wait();
                    v.reserve(&withdraw(key, "acct", "btc", amount), T0).is_ok()
                })
            })
            .collect();
        let ok = handles
            .into_iter()
            .map(|h| h.join().unwrap())
            .filter(|ok| *ok)
            .count();
        let total: Decimal = v.export().iter().map(|r| r.amount.unwrap()).sum();
        let expected = if amount == "0.6" { 16 } else { 1 };
        assert_eq!(ok, expected, "amount {amount}");
        assert!(total <= d("10"), "{total}");
    }
}

#[test]
fn export_restore_round_trip() {
    use LedgerKind::{Order, Withdraw};
    let rules = vec![
        rule(Withdraw, SubjectKind::Key, "btc", HOUR, Some("1"), None),
        rule(Withdraw, SubjectKind::Account, "*", DAY, None, Some(3)),
        rule(Order, SubjectKind::Key, "*", HOUR, None, Some(2)),
    ];
    let cfg = VelocityConfig { rules };
    let v = MemoryVelocity::new(&cfg).unwrap();
    let a = v
        .reserve(&withdraw("k1", "acct", "btc", "0.4"), T0)
        .unwrap();
    let b = v
        .reserve(&withdraw("k2", "acct", "eth", "5"), T0 + 1)
        .unwrap();
    let c = v
        .reserve(&withdraw("k1", "acct", "btc", "0.3"), T0 + 2)
        .unwrap();
    v.commit(a).unwrap();
    v.release(b).unwrap();
    let order = Reservation {
        kind: Order,
        key_id: "k1",
        account: "acct",
        asset: "btc_jpy",
        amount: None,
    };
    v.reserve(&order, T0 + 3).unwrap();
    let exported = v.export();
    assert_eq!(exported.len(), 3, "the released one is not exported");
    assert_eq!(exported[0].state, EntryState::Committed);
    assert_eq!(exported[1].id, c.get());
    assert_eq!(exported[1].amount, Some(d("0.3")));

    let restored = MemoryVelocity::restore(&cfg, exported.clone(), 0).unwrap();
    assert_eq!(restored.export(), exported);
    // Same decisions after the restart: btc hour has 0.7 for k1, the account 3 entries
    // less the released one = 2, orders 1 of 2.
    assert_eq!(
        restored.reserve(&withdraw("k1", "acct", "btc", "0.31"), T0 + 4),
        Err(Deny::WithdrawLimit)
    );
    let d2 = restored
        .reserve(&withdraw("k1", "acct", "btc", "0.3"), T0 + 4)
        .unwrap();
    assert!(d2.get() > exported.iter().map(|r| r.id).max().unwrap());
    assert_eq!(
        restored.reserve(&withdraw("k3", "acct", "btc", "0.1"), T0 + 5),
        Err(Deny::WithdrawLimit),
        "account count 3 reached for btc"
    );
    restored
        .reserve(&withdraw("k3", "acct", "xrp", "1"), T0 + 5)
        .unwrap(); // `*` counts each asset on its own
    restored.reserve(&order, T0 + 6).unwrap();
    assert_eq!(restored.reserve(&order, T0 + 7), Err(Deny::OrderLimit));
    // Reserved-at-crash entries stay spent; released ones do not come back.
    let mut with_released = exported.clone();
    with_released.push(LedgerRecord {
        id: 10_000,
        state: EntryState::Released,
        ..exported[1].clone()
    });
    let r2 = MemoryVelocity::restore(&cfg, with_released, 50_000).unwrap();
    assert_eq!(r2.export(), exported);
    assert!(
        r2.reserve(&order, T0 + 8).unwrap().get() > 50_000,
        "id floor"
    );
    // Restored reservations can still be released.
    r2.release(c).unwrap();
    r2.reserve(&withdraw("k1", "acct", "btc", "0.6"), T0 + 9)
        .unwrap();
}

#[test]
fn sweep_drops_everything_older_than_the_longest_window() {
    let v = btc_hour_and_day();
    for i in 0..5 {
        v.reserve(&withdraw(&format!("k{i}"), "a", "btc", "0.1"), T0)
            .unwrap();
    }
    assert_eq!(v.sweep(T0 + DAY - 1), 5);
    assert_eq!(v.sweep(T0 + DAY), 0);
    assert!(v.export().is_empty());
    for shard in v.shards.iter() {
        let shard = shard.lock().unwrap();
        assert!(shard.keys.is_empty() && shard.accounts.is_empty());
    }
}

#[test]
fn a_clock_stepping_back_never_shortens_a_window() {
    use LedgerKind::Withdraw;
    let v = ledger(vec![rule(
        Withdraw,
        SubjectKind::Key,
        "btc",
        HOUR,
        Some("1"),
        None,
    )]);
    let w = withdraw("k", "a", "btc", "1");
    v.reserve(&w, T0 + HOUR).unwrap();
    // An hour "later" by a clock that stepped back: still the same hour.
    assert_eq!(v.reserve(&w, T0 + 30 * 60 * 1000), Err(Deny::WithdrawLimit));
    assert_eq!(v.reserve(&w, T0 + 2 * HOUR - 1), Err(Deny::WithdrawLimit));
    v.reserve(&w, T0 + 2 * HOUR).unwrap();
}

#[test]
fn config_validation() {
    use LedgerKind::Withdraw;
    let bad = |r| MemoryVelocity::new(&VelocityConfig { rules: vec![r] }).unwrap_err();
    assert_eq!(
        bad(rule(Withdraw, SubjectKind::Key, "*", 0, Some("1"), None)),
        VelocityConfigError::ZeroWindow(0)
    );
    assert_eq!(
        bad(rule(Withdraw, SubjectKind::Key, "*", 1, None, None)),
        VelocityConfigError::NoLimit(0)
    );
    assert_eq!(
        "BTC".parse::<AssetMatch>().unwrap(),
        AssetMatch::Exact("btc".into())
    );
    for s in ["reserved", "committed", "released"] {
        assert_eq!(s.parse::<EntryState>().unwrap().as_str(), s);
    }
    for s in ["withdraw", "order"] {
        assert_eq!(s.parse::<LedgerKind>().unwrap().as_str(), s);
    }
    for s in ["key", "account"] {
        assert_eq!(s.parse::<SubjectKind>().unwrap().as_str(), s);
    }
}
