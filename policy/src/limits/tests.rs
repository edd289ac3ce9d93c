//! Rate limit tests on governor's fake clock: GCRA boundaries, bucket keys, tiers, the
//! entry cap and sweeping.

use std::time::Duration;

use governor::clock::FakeRelativeClock;

use super::*;
use crate::key::{Credential, KeyStatus, Secret};
use crate::Scopes;

fn key(id: &str, account: &str) -> KeyRecord {
    KeyRecord {
        key_id: id.to_owned(),
        api_key: format!("api-{id}"),
        account: account.to_owned(),
        label: String::new(),
        scopes: "read,trade,withdraw".parse::<Scopes>().unwrap(),
        allow_ips: Vec::new(),
        withdraw_addresses: Vec::new(),
        trusted_ips: Vec::new(),
        created_at: 0,
        expires_at: None,
        status: KeyStatus::Active,
        credential: Credential::Hmac(Secret::new(b"s".to_vec())),
        canary: false,
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn limits(cfg: &RateLimitConfig) -> (RateLimits<FakeRelativeClock>, FakeRelativeClock) {
    let clock = FakeRelativeClock::default();
    (RateLimits::with_clock(cfg, clock.clone()).unwrap(), clock)
}

fn ip_only(rate: Rate, max_entries: usize) -> RateLimitConfig {
    RateLimitConfig {
        ip: Some(rate),
        max_entries,
        ..RateLimitConfig::default()
    }
}

const NS: Duration = Duration::from_nanos(1);

#[test]
fn client_net_groups_ipv6_by_64_and_maps_v4() {
    let a = ClientNet::of(ip("2001:db8:1:2:aaaa::1"));
    let b = ClientNet::of(ip("2001:db8:1:2:ffff:ffff:ffff:ffff"));
    let c = ClientNet::of(ip("2001:db8:1:3::1"));
    assert_eq!(a, b);
    assert_ne!(a, c);
    assert_eq!(a.to_string(), "2001:db8:1:2::/64");
    assert_eq!(
        ClientNet::of(ip("::ffff:192.0.2.7")),
        ClientNet::of(ip("192.0.2.7"))
    );
    assert_eq!(ClientNet::of(ip("192.0.2.7")).to_string(), "192.0.2.7");
    for net in [a, ClientNet::of(ip("192.0.2.7"))] {
        assert_eq!(ClientNet::from_net(net.to_net()), Some(net));
    }
    assert_eq!(ClientNet::from_net("10.0.0.0/8".parse().unwrap()), None);
}

#[test]
fn rate_policy_describes_the_bucket() {
    assert_eq!(Rate::per_second(10).unwrap().policy(), (10, 1));
    assert_eq!(Rate::per_minute(600).unwrap().policy(), (600, 60));
    // 10/s with bursts of 50: a full bucket holds 50 and refills in 5 s.
    assert_eq!(
        Rate::per_second(10)
            .unwrap()
            .with_burst(50)
            .unwrap()
            .policy(),
        (50, 5)
    );
    // A sub-second refill still advertises a non-zero window.
    assert_eq!(
        Rate::per_second(10)
            .unwrap()
            .with_burst(2)
            .unwrap()
            .policy(),
        (2, 1)
    );
    assert_eq!(Rate::per_second(0), Err(RateError::Zero));
    assert_eq!(
        Rate::per_second(1).unwrap().with_burst(0),
        Err(RateError::Zero)
    );
    assert_eq!(
        Rate::new(2, Duration::from_nanos(1), None),
        Err(RateError::TooFast)
    );
}

#[test]
fn gcra_boundary_just_before_at_and_after_the_replenish() {
    // 2 per second: a burst of 2, then one every 500 ms.
    let (lim, clock) = limits(&ip_only(Rate::per_second(2).unwrap(), 100));
    let a = ip("192.0.2.1");
    assert_eq!(lim.check_ip(a), Ok(()));
    assert_eq!(lim.check_ip(a), Ok(()));
    let denied = lim.check_ip(a).unwrap_err();
    assert_eq!(
        denied,
        RateLimited {
            kind: LimitKind::Ip,
            quota: 2,
            window_secs: 1,
            wait_ms: 500
        }
    );
    assert_eq!(denied.retry_after_secs(), 1);
    assert_eq!(denied.policy_header(), "\"ip\";q=2;w=1");
    assert_eq!(denied.header(), "\"ip\";r=0;t=1");
    assert_eq!(Deny::from(denied), Deny::RateLimited);

    clock.advance(Duration::from_millis(500) - NS);
    let just_before = lim.check_ip(a).unwrap_err();
    assert_eq!(just_before.wait_ms, 1, "1 ns rounds up to 1 ms");
    clock.advance(NS);
    assert_eq!(lim.check_ip(a), Ok(()), "exactly at the replenish time");
    assert!(lim.check_ip(a).is_err(), "and only one cell came back");
    clock.advance(Duration::from_millis(500) + NS);
    assert_eq!(lim.check_ip(a), Ok(()), "just after the next one");
}

#[test]
fn ipv6_flood_from_one_64_shares_a_bucket() {
    let (lim, _clock) = limits(&ip_only(Rate::per_second(3).unwrap(), 100));
    for i in 0..3u16 {
        let addr = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 1, i, i, i, i));
        assert_eq!(lim.check_ip(addr), Ok(()));
    }
    let other_host_same_64 = ip("2001:db8:0:1:dead:beef:0:1");
    assert!(lim.check_ip(other_host_same_64).is_err());
    assert_eq!(lim.check_ip(ip("2001:db8:0:2::1")), Ok(()));
    assert_eq!(lim.entries(), 2);
}

#[test]
fn cap_sends_newcomers_to_one_overflow_bucket() {
    let (lim, clock) = limits(&ip_only(Rate::per_minute(2).unwrap(), 2));
    assert_eq!(lim.check_ip(ip("192.0.2.1")), Ok(()));
    assert_eq!(lim.check_ip(ip("192.0.2.2")), Ok(()));
    assert_eq!(lim.entries(), 2);
    // The map is full: two newcomers share one bucket of 2.
    assert_eq!(lim.check_ip(ip("192.0.2.3")), Ok(()));
    assert_eq!(lim.check_ip(ip("192.0.2.4")), Ok(()));
    assert!(lim.check_ip(ip("192.0.2.5")).is_err());
    assert!(lim.check_ip(ip("192.0.2.3")).is_err());
    assert_eq!(lim.entries(), 2, "memory does not grow past the cap");
    assert_eq!(lim.overflow_hits(), 4);
    // Tracked clients keep their own buckets.
    assert_eq!(lim.check_ip(ip("192.0.2.1")), Ok(()));
    assert!(lim.check_ip(ip("192.0.2.1")).is_err());

    // A sweep drops only buckets as good as fresh: none yet.
    assert_eq!(lim.sweep(), 2);
    // governor drops a bucket one replenish interval (30 s) after it is full again:
    // 192.0.2.2 (one cell spent, full at 30 s) goes at 60 s, 192.0.2.1 (two) at 90 s.
    clock.advance(Duration::from_secs(60) - NS);
    assert_eq!(lim.sweep(), 2);
    clock.advance(NS);
    assert_eq!(lim.sweep(), 1);
    assert_eq!(lim.check_ip(ip("192.0.2.9")), Ok(()), "room again");
    assert_eq!(lim.entries(), 2);
    clock.advance(Duration::from_secs(90));
    assert_eq!(lim.sweep(), 0);
}

#[test]
fn a_million_random_v6_addresses_stay_within_the_cap() {
    let (lim, _clock) = limits(&ip_only(Rate::per_second(1000).unwrap(), 1000));
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    for _ in 0..100_000 {
        // xorshift: addresses from all over the IPv6 space.
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let addr = IpAddr::V6(Ipv6Addr::from(
            (u128::from(state) << 64) | u128::from(state),
        ));
        let _ = lim.check_ip(addr);
    }
    assert_eq!(lim.entries(), 1000);
}

fn tiered() -> RateLimitConfig {
    let standard = RateTier {
        key: Some(Rate::per_second(5).unwrap()),
        account: Some(Rate::per_second(3).unwrap()),
        read: None,
        trade: Some(Rate::per_second(2).unwrap()),
        withdraw: Some(Rate::per_minute(1).unwrap()),
    };
    let vip = RateTier {
        key: Some(Rate::per_second(100).unwrap()),
        ..RateTier::default()
    };
    RateLimitConfig {
        ip: None,
        tiers: BTreeMap::from([("standard".to_owned(), standard), ("vip".to_owned(), vip)]),
        default_tier: "standard".to_owned(),
        key_tiers: HashMap::from([("kg_vip".to_owned(), "vip".to_owned())]),
        max_entries: 100,
    }
}

#[test]
fn action_class_key_and_account_limits() {
    let (lim, clock) = limits(&tiered());
    let k1 = key("kg_1", "acct");
    // trade: 2 per second for the key.
    assert_eq!(lim.check_key(&k1, Action::Trade), Ok(()));
    assert_eq!(lim.check_key(&k1, Action::Trade), Ok(()));
    assert_eq!(
        lim.check_key(&k1, Action::Trade).unwrap_err().kind,
        LimitKind::Trade
    );
    // The account (3/s) had two cells spent by the trades; reads have no class limit.
    assert_eq!(lim.check_key(&k1, Action::Read), Ok(()));
    let k2 = key("kg_2", "acct");
    let err = lim.check_key(&k2, Action::Read).unwrap_err();
    assert_eq!(
        err.kind,
        LimitKind::Account,
        "another key of the same account"
    );
    assert_eq!(err.policy_header(), "\"account\";q=3;w=1");
    assert_eq!(lim.check_key(&key("kg_3", "other"), Action::Read), Ok(()));

    // Withdraw: 1 per minute, boundary at 60 s.
    clock.advance(Duration::from_secs(10));
    let k4 = key("kg_4", "acct4");
    assert_eq!(lim.check_key(&k4, Action::Withdraw), Ok(()));
    let err = lim.check_key(&k4, Action::Withdraw).unwrap_err();
    assert_eq!(
        (err.kind, err.wait_ms, err.retry_after_secs()),
        (LimitKind::Withdraw, 60_000, 60)
    );
    assert_eq!(err.policy_header(), "\"withdraw\";q=1;w=60");
    clock.advance(Duration::from_secs(60) - NS);
    assert!(lim.check_key(&k4, Action::Withdraw).is_err());
    clock.advance(NS);
    assert_eq!(lim.check_key(&k4, Action::Withdraw), Ok(()));

    assert_eq!(lim.check_key(&k4, Action::Public), Ok(()));
}

#[test]
fn key_limit_and_tier_override() {
    let (lim, _clock) = limits(&tiered());
    assert_eq!(lim.tier_of("kg_vip"), "vip");
    assert_eq!(lim.tier_of("kg_other"), "standard");
    let vip = key("kg_vip", "big");
    for _ in 0..100 {
        assert_eq!(lim.check_key(&vip, Action::Trade), Ok(()));
    }
    assert_eq!(
        lim.check_key(&vip, Action::Trade).unwrap_err().kind,
        LimitKind::Key
    );
    // Standard key: 5/s per key, reads only so the class and account limits stay out of
    // the way (account limit is 3/s, so use a fresh account per read).
    let mut cfg = tiered();
    cfg.tiers.get_mut("standard").unwrap().account = None;
    let (lim, _clock) = limits(&cfg);
    let k = key("kg_s", "a");
    for _ in 0..5 {
        assert_eq!(lim.check_key(&k, Action::Read), Ok(()));
    }
    assert_eq!(
        lim.check_key(&k, Action::Read).unwrap_err().kind,
        LimitKind::Key
    );
}

#[test]
fn unknown_tiers_are_refused() {
    let mut cfg = tiered();
    cfg.key_tiers.insert("kg_x".into(), "gold".into());
    assert_eq!(
        RateLimits::new(&cfg).unwrap_err(),
        LimitsConfigError::UnknownTier("gold".into())
    );
    let mut cfg = tiered();
    cfg.default_tier = "nope".into();
    assert!(RateLimits::new(&cfg).is_err());
}

#[test]
fn no_limits_configured_allows_everything() {
    let lim = RateLimits::new(&RateLimitConfig::default()).unwrap();
    for _ in 0..1000 {
        assert_eq!(lim.check_ip(ip("192.0.2.1")), Ok(()));
        assert_eq!(lim.check_key(&key("k", "a"), Action::Withdraw), Ok(()));
    }
    assert_eq!(lim.entries(), 0);
}

#[test]
fn concurrent_checks_never_exceed_the_burst() {
    let (lim, _clock) = limits(&ip_only(Rate::per_minute(50).unwrap(), 100));
    let lim = std::sync::Arc::new(lim);
    let allowed: usize = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let lim = &lim;
                s.spawn(move || {
                    (0..100)
                        .filter(|_| lim.check_ip(ip("192.0.2.1")).is_ok())
                        .count()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).sum()
    });
    assert_eq!(allowed, 50);
}
