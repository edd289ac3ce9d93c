//! Anomaly rule tests: every window, probation, block and ban at its boundary (just
//! before, at, just after), shadow mode, bounded state and store failures.

use super::*;
use crate::key::{Credential, KeyStatus};
use crate::Scopes;

const T0: UnixMillis = 1_700_000_000_000;

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
        created_at: T0 - DAY,
        expires_at: None,
        status: KeyStatus::Active,
        credential: Credential::Ed25519([0; 32]),
        canary: false,
    }
}

fn allowlisted(id: &str) -> KeyRecord {
    KeyRecord {
        allow_ips: vec!["0.0.0.0/0".parse().unwrap(), "::/0".parse().unwrap()],
        ..key(id, "acct")
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// Only the rules a test names; everything else off.
fn only(cfg: AnomalyConfig) -> Anomaly {
    Anomaly::in_memory(cfg, MemoryIpHistory::new(64))
}

fn none() -> AnomalyConfig {
    AnomalyConfig {
        dormant: None,
        new_ip: None,
        many_ips: None,
        shared_ip: None,
        auth_failures: None,
        canary: CanaryRule::default(),
        max_entries: 1000,
    }
}

fn req<'a>(
    key: &'a KeyRecord,
    action: Action,
    client: &str,
    now: UnixMillis,
) -> AnomalyRequest<'a> {
    AnomalyRequest {
        key,
        action,
        client_ip: ip(client),
        last_used: Some(T0),
        now,
    }
}

#[test]
fn verdict_combination() {
    let d = Verdict::Deny(Deny::IpBlocked);
    let w = Verdict::WouldDeny(Deny::KeyDormant);
    assert_eq!(Verdict::Allow.or(w), w);
    assert_eq!(w.or(d), d);
    assert_eq!(d.or(w), d);
    assert_eq!(w.or(Verdict::WouldDeny(Deny::TooManyIps)), w, "first wins");
    assert_eq!(d.result(), Err(Deny::IpBlocked));
    assert_eq!(w.result(), Ok(()));
    assert_eq!(w.deny(), Some(Deny::KeyDormant));
    assert_eq!(Verdict::Allow.deny(), None);
}

// --- dormant key ---

fn dormant(shadow: bool) -> Anomaly {
    only(AnomalyConfig {
        dormant: Some(DormantRule {
            after_ms: 90 * DAY,
            first_use_within_ms: 7 * DAY,
            shadow,
        }),
        ..none()
    })
}

#[test]
fn dormant_boundary() {
    let a = dormant(false);
    let k = key("k", "a");
    let at = |now, action| {
        a.check_request(&AnomalyRequest {
            last_used: Some(T0),
            ..req(&k, action, "192.0.2.1", now)
        })
    };
    let before = at(T0 + 90 * DAY - 1, Action::Trade);
    assert_eq!((before.verdict, before.touch), (Verdict::Allow, true));
    let on = at(T0 + 90 * DAY, Action::Trade);
    assert_eq!(
        (on.verdict, on.touch),
        (Verdict::Deny(Deny::KeyDormant), false)
    );
    assert_eq!(
        at(T0 + 90 * DAY + 1, Action::Withdraw).verdict,
        Verdict::Deny(Deny::KeyDormant)
    );
    // Reads pass but do not count as use: one read must not wake the key.
    let read = at(T0 + 90 * DAY + 1, Action::Read);
    assert_eq!((read.verdict, read.touch), (Verdict::Allow, false));
    let fresh_read = at(T0 + 1, Action::Read);
    assert!(fresh_read.touch);
}

#[test]
fn never_used_keys_are_dormant_after_first_use_within() {
    let rule = DormantRule::default();
    let k = KeyRecord {
        created_at: T0,
        ..key("k", "a")
    };
    assert!(!is_dormant(&rule, &k, None, T0 + 7 * DAY - 1));
    assert!(is_dormant(&rule, &k, None, T0 + 7 * DAY));
    // Once used (or reactivated), the long inactivity rule applies.
    assert!(!is_dormant(&rule, &k, Some(T0 + 1), T0 + 90 * DAY));
    assert!(is_dormant(&rule, &k, Some(T0 + 1), T0 + 90 * DAY + 1));
    // A last-used time before creation (bad data) does not age the key.
    assert!(!is_dormant(&rule, &k, Some(0), T0 + 1));
    // first_use_within never exceeds the inactivity rule.
    let short = DormantRule {
        after_ms: DAY,
        first_use_within_ms: 30 * DAY,
        shadow: false,
    };
    assert!(is_dormant(&short, &k, None, T0 + DAY));
}

#[test]
fn a_trusted_network_is_known_and_the_first_other_is_on_probation() {
    let a = only(AnomalyConfig {
        new_ip: Some(NewIpRule {
            probation_ms: HOUR,
            ..NewIpRule::default()
        }),
        ..none()
    });
    let k = KeyRecord {
        trusted_ips: vec!["198.51.100.0/24".parse().unwrap()],
        ..key("k", "a")
    };
    let home = a.check_request(&req(&k, Action::Trade, "198.51.100.7", T0));
    assert_eq!((home.verdict, home.learned), (Verdict::Allow, None));
    // Not a first use: the key already trusts its creator's network.
    let elsewhere = a.check_request(&req(&k, Action::Trade, "203.0.113.9", T0 + 1));
    assert_eq!(elsewhere.verdict, Verdict::Deny(Deny::NewIpProbation));
    assert_eq!(
        elsewhere.learned.map(|l| l.usable_from),
        Some(T0 + 1 + HOUR)
    );
    // Without a trusted network the first network is trusted on first use, as before.
    let plain = key("p", "a");
    let first = a.check_request(&req(&plain, Action::Trade, "203.0.113.9", T0));
    assert_eq!(first.verdict, Verdict::Allow);
}

#[test]
fn dormant_in_shadow_mode_reports_and_passes() {
    let a = dormant(true);
    let k = key("k", "a");
    let d = a.check_request(&req(&k, Action::Trade, "192.0.2.1", T0 + 91 * DAY));
    assert_eq!(
        (d.verdict, d.touch, d.suspend),
        (Verdict::WouldDeny(Deny::KeyDormant), true, None)
    );
}

// --- new IP probation ---

fn new_ip(shadow: bool) -> Anomaly {
    only(AnomalyConfig {
        new_ip: Some(NewIpRule {
            probation_ms: 30 * MINUTE,
            max_per_key: 3,
            shadow,
        }),
        ..none()
    })
}

#[test]
fn first_network_is_trusted_on_first_use() {
    let a = new_ip(false);
    let k = key("k", "a");
    let d = a.check_request(&req(&k, Action::Withdraw, "192.0.2.1", T0));
    assert_eq!(d.verdict, Verdict::Allow);
    assert_eq!(
        d.learned,
        Some(LearnedIp {
            key_id: "k".into(),
            net: "192.0.2.1/32".parse().unwrap(),
            first_seen: T0,
            usable_from: T0,
        })
    );
    let again = a.check_request(&req(&k, Action::Trade, "192.0.2.1", T0 + 1));
    assert_eq!((again.verdict, again.learned), (Verdict::Allow, None));
}

#[test]
fn new_network_probation_boundary() {
    let a = new_ip(false);
    let k = key("k", "a");
    a.check_request(&req(&k, Action::Read, "192.0.2.1", T0)); // first: trusted
    let t1 = T0 + HOUR;
    // A read from a new network passes and starts its probation.
    let read = a.check_request(&req(&k, Action::Read, "198.51.100.7", t1));
    assert_eq!(read.verdict, Verdict::Allow);
    assert_eq!(read.learned.unwrap().usable_from, t1 + 30 * MINUTE);
    let trade = |now| a.check_request(&req(&k, Action::Trade, "198.51.100.7", now));
    assert_eq!(trade(t1).verdict, Verdict::Deny(Deny::NewIpProbation));
    let just_before = trade(t1 + 30 * MINUTE - 1);
    assert_eq!(
        (just_before.verdict, just_before.touch, just_before.learned),
        (Verdict::Deny(Deny::NewIpProbation), false, None)
    );
    assert_eq!(trade(t1 + 30 * MINUTE).verdict, Verdict::Allow);
    assert_eq!(trade(t1 + 30 * MINUTE + 1).verdict, Verdict::Allow);
    // The known network was never on probation.
    assert_eq!(
        a.check_request(&req(&k, Action::Withdraw, "192.0.2.1", t1))
            .verdict,
        Verdict::Allow
    );
}

#[test]
fn probation_is_per_64_for_ipv6() {
    let a = new_ip(false);
    let k = key("k", "a");
    a.check_request(&req(&k, Action::Read, "2001:db8:0:1::1", T0));
    // Another address in the same /64 is the same network.
    let same = a.check_request(&req(&k, Action::Trade, "2001:db8:0:1:ffff::9", T0 + 1));
    assert_eq!(same.verdict, Verdict::Allow);
    let other = a.check_request(&req(&k, Action::Trade, "2001:db8:0:2::1", T0 + 1));
    assert_eq!(other.verdict, Verdict::Deny(Deny::NewIpProbation));
    assert_eq!(
        other.learned.unwrap().net,
        "2001:db8:0:2::/64".parse::<IpNet>().unwrap()
    );
}

#[test]
fn allowlisted_keys_skip_probation_and_shadow_reports() {
    let a = new_ip(false);
    let k = allowlisted("k");
    a.check_request(&req(&k, Action::Read, "192.0.2.1", T0));
    let d = a.check_request(&req(&k, Action::Trade, "198.51.100.7", T0));
    assert_eq!((d.verdict, d.learned), (Verdict::Allow, None));

    let s = new_ip(true);
    let k = key("k", "a");
    s.check_request(&req(&k, Action::Read, "192.0.2.1", T0));
    let d = s.check_request(&req(&k, Action::Trade, "198.51.100.7", T0));
    assert_eq!(
        (d.verdict, d.touch),
        (Verdict::WouldDeny(Deny::NewIpProbation), true)
    );
}

#[test]
fn history_cap_forgets_the_stalest_and_never_re_trusts() {
    let h = MemoryIpHistory::new(2);
    let n = |s| ClientNet::of(ip(s));
    assert_eq!(
        h.observe("k", n("192.0.2.1"), T0, 100).unwrap().usable_from,
        T0
    );
    h.observe("k", n("192.0.2.2"), T0 + 1, 100).unwrap();
    h.observe("k", n("192.0.2.1"), T0 + 2, 100).unwrap(); // .1 is now the fresher
    h.observe("k", n("192.0.2.3"), T0 + 3, 100).unwrap(); // forgets .2
    let back = h.observe("k", n("192.0.2.2"), T0 + 4, 100).unwrap();
    assert_eq!((back.learned, back.usable_from), (true, T0 + 104));
    assert!(!h.observe("k", n("192.0.2.2"), T0 + 5, 100).unwrap().learned);
}

#[test]
fn history_export_restore_and_trust() {
    let h = MemoryIpHistory::new(8);
    let n = |s| ClientNet::of(ip(s));
    h.observe("k1", n("192.0.2.1"), T0, 1000).unwrap();
    h.observe("k1", n("2001:db8::1"), T0 + 1, 1000).unwrap();
    let trusted = h.trust("k2", n("198.51.100.1"), T0 + 2);
    assert_eq!(trusted.usable_from, T0 + 2);
    // Trusting a network on probation ends its probation.
    assert_eq!(h.trust("k1", n("2001:db8::2"), T0 + 3).usable_from, T0 + 3);
    let exported = h.export();
    assert_eq!(exported.len(), 3);
    let restored = MemoryIpHistory::restore(8, exported.clone());
    assert_eq!(restored.export(), exported);
    let s = restored
        .observe("k1", n("2001:db8::5"), T0 + 4, 1000)
        .unwrap();
    assert_eq!(
        (s.learned, s.first_seen, s.usable_from),
        (false, T0 + 1, T0 + 3)
    );
    // Restored keys are not "never seen": a new network waits.
    assert_eq!(
        restored
            .observe("k2", n("192.0.2.9"), T0 + 5, 1000)
            .unwrap()
            .usable_from,
        T0 + 1005
    );
    restored.forget("k2");
    assert_eq!(restored.export().len(), 2);
}

// --- many IPs per key ---

fn many_ips(shadow: bool) -> Anomaly {
    only(AnomalyConfig {
        many_ips: Some(ManyIpsRule {
            max_ips: 2,
            window_ms: HOUR,
            include_allowlisted: false,
            shadow,
        }),
        ..none()
    })
}

#[test]
fn many_ips_window_boundary() {
    let k = key("k", "a");
    // Just before the first sighting leaves the window: a third network suspends.
    let a = many_ips(false);
    a.check_request(&req(&k, Action::Read, "192.0.2.1", T0));
    a.check_request(&req(&k, Action::Read, "192.0.2.2", T0 + 1));
    let d = a.check_request(&req(&k, Action::Read, "192.0.2.3", T0 + HOUR - 1));
    assert_eq!(
        (d.verdict, d.suspend, d.touch),
        (
            Verdict::Deny(Deny::TooManyIps),
            Some(SuspendReason::TooManyIps),
            false
        )
    );
    // At: the first sighting is out, so the third network is only the second.
    let a = many_ips(false);
    a.check_request(&req(&k, Action::Read, "192.0.2.1", T0));
    a.check_request(&req(&k, Action::Read, "192.0.2.2", T0 + 1));
    let d = a.check_request(&req(&k, Action::Read, "192.0.2.3", T0 + HOUR));
    assert_eq!((d.verdict, d.suspend), (Verdict::Allow, None));
    // Just after the second leaves too: still fine, and a repeat sighting refreshes.
    let d = a.check_request(&req(&k, Action::Read, "192.0.2.2", T0 + HOUR + 1));
    assert_eq!(d.verdict, Verdict::Allow);
    let d = a.check_request(&req(&k, Action::Read, "192.0.2.4", T0 + HOUR + 2));
    assert_eq!(d.verdict, Verdict::Deny(Deny::TooManyIps), ".2 .3 .4");
}

#[test]
fn many_ips_counts_64s_and_skips_allowlisted_keys_and_shadow_does_not_suspend() {
    let a = many_ips(false);
    let k = key("k", "a");
    for i in 0..10u16 {
        let addr = IpAddr::V6(std::net::Ipv6Addr::new(0x2001, 0xdb8, 0, 1, 0, 0, 0, i));
        let d = a.check_request(&AnomalyRequest {
            client_ip: addr,
            ..req(&k, Action::Read, "::1", T0)
        });
        assert_eq!(d.verdict, Verdict::Allow, "one /64");
    }
    let k = allowlisted("k2");
    for i in 0..10 {
        let d = a.check_request(&req(&k, Action::Read, &format!("192.0.2.{i}"), T0));
        assert_eq!(d.verdict, Verdict::Allow);
    }
    let s = many_ips(true);
    let k = key("k", "a");
    for i in 0..3 {
        let d = s.check_request(&req(&k, Action::Read, &format!("192.0.2.{i}"), T0));
        if i == 2 {
            assert_eq!(
                (d.verdict, d.suspend),
                (Verdict::WouldDeny(Deny::TooManyIps), None)
            );
        }
    }
}

// --- one IP, many keys ---

fn shared_ip(shadow: bool, exempt: &[&str]) -> Anomaly {
    only(AnomalyConfig {
        shared_ip: Some(SharedIpRule {
            max_keys: 2,
            max_accounts: 3,
            window_ms: HOUR,
            block_ms: 2 * HOUR,
            exempt: exempt.iter().map(|n| n.parse().unwrap()).collect(),
            shadow,
        }),
        ..none()
    })
}

#[test]
fn many_keys_from_one_ip_block_it_until_the_block_ends() {
    let a = shared_ip(false, &[]);
    let attacker = "203.0.113.9";
    let keys: Vec<KeyRecord> = (0..3)
        .map(|i| key(&format!("k{i}"), &format!("a{i}")))
        .collect();
    assert_eq!(
        a.check_request(&req(&keys[0], Action::Read, attacker, T0))
            .verdict,
        Verdict::Allow
    );
    // The same key again is not a new key.
    assert_eq!(
        a.check_request(&req(&keys[0], Action::Trade, attacker, T0))
            .verdict,
        Verdict::Allow
    );
    assert_eq!(
        a.check_request(&req(&keys[1], Action::Read, attacker, T0))
            .verdict,
        Verdict::Allow
    );
    let t = T0 + 10;
    let third = a.check_request(&req(&keys[2], Action::Read, attacker, t));
    assert_eq!(
        (third.verdict, third.suspend),
        (Verdict::Deny(Deny::IpBlocked), None)
    );
    // Blocked for 2 h from the third key, for every key and before authentication.
    assert_eq!(
        a.check_client(ip(attacker), t + 2 * HOUR - 1),
        Verdict::Deny(Deny::IpBlocked)
    );
    assert_eq!(a.check_client(ip(attacker), t + 2 * HOUR), Verdict::Allow);
    assert_eq!(
        a.check_client(ip(attacker), t + 2 * HOUR + 1),
        Verdict::Allow
    );
    assert_eq!(
        a.check_request(&req(&keys[0], Action::Read, attacker, t + 1))
            .verdict,
        Verdict::Deny(Deny::IpBlocked)
    );
    // Other clients are not affected.
    assert_eq!(a.check_client(ip("198.51.100.1"), t), Verdict::Allow);
    assert_eq!(
        a.check_request(&req(&keys[2], Action::Read, "198.51.100.1", t))
            .verdict,
        Verdict::Allow
    );
}

#[test]
fn shared_ip_window_boundary() {
    let attacker = "203.0.113.9";
    let keys: Vec<KeyRecord> = (0..3).map(|i| key(&format!("k{i}"), "acct")).collect();
    for (third_at, blocked) in [
        (T0 + HOUR - 1, true),
        (T0 + HOUR, false),
        (T0 + HOUR + 1, false),
    ] {
        let a = shared_ip(false, &[]);
        a.check_request(&req(&keys[0], Action::Read, attacker, T0));
        a.check_request(&req(&keys[1], Action::Read, attacker, T0 + 1));
        let d = a.check_request(&req(&keys[2], Action::Read, attacker, third_at));
        assert_eq!(
            d.verdict == Verdict::Deny(Deny::IpBlocked),
            blocked,
            "{}",
            third_at - T0
        );
    }
}

#[test]
fn many_accounts_from_one_ip_and_exemptions_and_shadow() {
    let a = only(AnomalyConfig {
        shared_ip: Some(SharedIpRule {
            max_keys: 100,
            max_accounts: 1,
            ..SharedIpRule::default()
        }),
        ..none()
    });
    a.check_request(&req(&key("k1", "a1"), Action::Read, "203.0.113.9", T0));
    a.check_request(&req(&key("k2", "a1"), Action::Read, "203.0.113.9", T0));
    let d = a.check_request(&req(&key("k3", "a2"), Action::Read, "203.0.113.9", T0));
    assert_eq!(d.verdict, Verdict::Deny(Deny::IpBlocked));

    let office = shared_ip(false, &["10.0.0.0/8"]);
    for i in 0..10 {
        let d = office.check_request(&req(
            &key(&format!("k{i}"), "a"),
            Action::Read,
            "10.1.2.3",
            T0,
        ));
        assert_eq!(d.verdict, Verdict::Allow);
    }

    let s = shared_ip(true, &[]);
    for i in 0..3 {
        s.check_request(&req(
            &key(&format!("k{i}"), "a"),
            Action::Read,
            "203.0.113.9",
            T0,
        ));
    }
    assert_eq!(
        s.check_client(ip("203.0.113.9"), T0 + 1),
        Verdict::WouldDeny(Deny::IpBlocked)
    );
}

// --- failed authentications ---

fn auth(shadow: bool, max_entries: usize) -> Anomaly {
    only(AnomalyConfig {
        auth_failures: Some(AuthFailureRule {
            max_failures: 3,
            window_ms: MINUTE,
            ban_ms: 15 * MINUTE,
            shadow,
        }),
        max_entries,
        ..none()
    })
}

#[test]
fn failures_ban_boundary() {
    let a = auth(false, 1000);
    let c = ip("203.0.113.9");
    for i in 0..3 {
        assert_eq!(a.auth_failed(c, T0 + i), Verdict::Allow);
    }
    assert_eq!(a.check_client(c, T0 + 3), Verdict::Allow);
    let t = T0 + 10;
    assert_eq!(a.auth_failed(c, t), Verdict::Deny(Deny::IpBanned));
    assert_eq!(
        a.check_client(c, t + 15 * MINUTE - 1),
        Verdict::Deny(Deny::IpBanned)
    );
    assert_eq!(a.check_client(c, t + 15 * MINUTE), Verdict::Allow);
    assert_eq!(a.check_client(c, t + 15 * MINUTE + 1), Verdict::Allow);
    assert_eq!(a.check_client(ip("203.0.113.10"), t), Verdict::Allow);
}

#[test]
fn failures_window_boundary() {
    let c = ip("203.0.113.9");
    for (fourth_at, banned) in [
        (T0 + MINUTE - 1, true),
        (T0 + MINUTE, false),
        (T0 + MINUTE + 1, false),
    ] {
        let a = auth(false, 1000);
        a.auth_failed(c, T0);
        a.auth_failed(c, T0 + 1);
        a.auth_failed(c, T0 + 2);
        let v = a.auth_failed(c, fourth_at);
        assert_eq!(
            v == Verdict::Deny(Deny::IpBanned),
            banned,
            "{}",
            fourth_at - T0
        );
    }
    // Failures keep sliding: four inside any minute ban, however they straddle.
    let a = auth(false, 1000);
    for i in 0..3 {
        a.auth_failed(c, T0 + i * 30_000); // 0, 30 s, 60 s: the first has left at 60 s
    }
    assert_eq!(a.auth_failed(c, T0 + 60_001), Verdict::Allow);
    assert_eq!(a.auth_failed(c, T0 + 60_002), Verdict::Deny(Deny::IpBanned));
}

#[test]
fn failures_shadow_mode() {
    let a = auth(true, 1000);
    let c = ip("203.0.113.9");
    for i in 0..3 {
        a.auth_failed(c, T0 + i);
    }
    assert_eq!(a.auth_failed(c, T0 + 3), Verdict::WouldDeny(Deny::IpBanned));
    assert_eq!(
        a.check_client(c, T0 + 4),
        Verdict::WouldDeny(Deny::IpBanned)
    );
    assert_eq!(a.check_client(c, T0 + 4).result(), Ok(()));
}

#[test]
fn a_flood_of_new_addresses_at_the_cap_is_banned_together() {
    // 16 entries in all (one per shard): the table fills at once.
    let a = auth(false, 16);
    let mut tracked = Vec::new();
    for i in 0..2000u32 {
        let addr = IpAddr::V6(std::net::Ipv6Addr::from(u128::from(i) << 64));
        a.auth_failed(addr, T0);
        tracked.push(addr);
    }
    assert!(a.store().len() <= 16, "{}", a.store().len());
    // Most of those addresses share overflow entries, which are banned now.
    let banned = tracked
        .iter()
        .filter(|ip| a.check_client(**ip, T0 + 1) == Verdict::Deny(Deny::IpBanned))
        .count();
    assert!(banned > 1900, "{banned}");
    // Sweeping after the ban and window drops everything.
    assert_eq!(a.sweep(T0 + 15 * MINUTE), 0);
    assert!(a.store().is_empty());
    assert_eq!(
        a.check_client(tracked[1999], T0 + 15 * MINUTE),
        Verdict::Allow
    );
}

#[test]
fn sweep_keeps_what_still_matters() {
    let a = only(AnomalyConfig {
        shared_ip: Some(SharedIpRule {
            max_keys: 1,
            ..SharedIpRule::default()
        }),
        many_ips: Some(ManyIpsRule::default()),
        auth_failures: Some(AuthFailureRule::default()),
        ..none()
    });
    a.auth_failed(ip("203.0.113.1"), T0);
    a.check_request(&req(&key("k1", "a"), Action::Read, "203.0.113.2", T0));
    a.check_request(&req(&key("k2", "a"), Action::Read, "203.0.113.2", T0));
    // failures (1), presented (1), seen_from k1 (k2 was blocked before it was counted)
    assert_eq!(a.sweep(T0), 3);
    // The failure window (1 min) is over; presented is blocked for 1 h; k1 seen for 1 h.
    assert_eq!(a.sweep(T0 + MINUTE - 1), 3);
    assert_eq!(a.sweep(T0 + MINUTE), 2);
    assert_eq!(a.sweep(T0 + HOUR - 1), 2);
    assert_eq!(a.sweep(T0 + HOUR), 0);
}

#[test]
fn per_key_table_at_cap_never_shares_state() {
    let a = only(AnomalyConfig {
        many_ips: Some(ManyIpsRule {
            max_ips: 1,
            ..ManyIpsRule::default()
        }),
        max_entries: 16,
        ..none()
    });
    let mut suspended = 0;
    for i in 0..200 {
        let k = key(&format!("k{i}"), "a");
        for n in 0..1 {
            let d = a.check_request(&req(
                &k,
                Action::Read,
                &format!("192.0.2.{}", i % 200 + n),
                T0,
            ));
            suspended += usize::from(d.suspend.is_some());
        }
    }
    assert_eq!(
        suspended, 0,
        "keys beyond the cap are untracked, not merged"
    );
}

// --- everything together, and failing stores ---

#[test]
fn rule_order_blocked_network_learns_nothing() {
    let a = only(AnomalyConfig {
        shared_ip: Some(SharedIpRule {
            max_keys: 1,
            ..SharedIpRule::default()
        }),
        new_ip: Some(NewIpRule::default()),
        dormant: Some(DormantRule::default()),
        ..none()
    });
    let k1 = key("k1", "a");
    let k2 = key("k2", "b");
    a.check_request(&req(&k1, Action::Read, "192.0.2.1", T0));
    let d = a.check_request(&req(&k2, Action::Read, "192.0.2.1", T0));
    assert_eq!(
        (d.verdict, d.learned),
        (Verdict::Deny(Deny::IpBlocked), None)
    );
    // Dormancy outranks probation.
    let old = KeyRecord {
        created_at: T0 - 100 * DAY,
        ..key("k3", "c")
    };
    a.check_request(&AnomalyRequest {
        last_used: None,
        ..req(&old, Action::Read, "198.51.100.1", T0)
    });
    let d = a.check_request(&AnomalyRequest {
        last_used: None,
        ..req(&old, Action::Trade, "198.51.100.2", T0)
    });
    assert_eq!(d.verdict, Verdict::Deny(Deny::KeyDormant));
}

struct Broken;

impl AnomalyStore for Broken {
    fn standing(&self, _: ClientNet, _: UnixMillis) -> Result<Standing, Deny> {
        Err(Deny::StateUnavailable)
    }
    fn auth_failure(
        &self,
        _: ClientNet,
        _: UnixMillis,
        _: &AuthFailureRule,
    ) -> Result<Standing, Deny> {
        Err(Deny::StateUnavailable)
    }
    fn key_presented(
        &self,
        _: ClientNet,
        _: &str,
        _: &str,
        _: UnixMillis,
        _: &SharedIpRule,
    ) -> Result<Standing, Deny> {
        Err(Deny::StateUnavailable)
    }
    fn key_seen_from(
        &self,
        _: &str,
        _: ClientNet,
        _: UnixMillis,
        _: &ManyIpsRule,
    ) -> Result<usize, Deny> {
        Err(Deny::StateUnavailable)
    }
    fn forget_key(&self, _: &str) -> Result<(), Deny> {
        Err(Deny::StateUnavailable)
    }
    fn trip(&self, _: ClientNet, _: UnixMillis) -> Result<(), Deny> {
        Err(Deny::StateUnavailable)
    }
}

#[test]
fn a_canary_with_a_broken_store_still_reports_failure() {
    let a = Anomaly::new(none(), Broken, MemoryIpHistory::new(8));
    assert_eq!(
        a.canary_used(ip("198.51.100.7"), T0),
        Err(Deny::StateUnavailable)
    );
}

#[test]
fn forget_key_resets_the_many_ips_count() {
    let store = MemoryAnomalyStore::new(1_000);
    let rule = ManyIpsRule::default();
    for i in 0..3u8 {
        let net = ClientNet::of(std::net::IpAddr::from([198, 51, 100, i]));
        store.key_seen_from("k", net, T0, &rule).unwrap();
    }
    let again = ClientNet::of(std::net::IpAddr::from([198, 51, 100, 0]));
    assert_eq!(store.key_seen_from("k", again, T0, &rule).unwrap(), 3);
    store.forget_key("k").unwrap();
    assert_eq!(store.key_seen_from("k", again, T0, &rule).unwrap(), 1);
}

#[test]
fn unavailable_state_fails_closed_for_funds_and_open_for_reads() {
    let a = Anomaly::new(AnomalyConfig::default(), Broken, MemoryIpHistory::new(8));
    let k = key("k", "a");
    assert_eq!(a.check_client(ip("192.0.2.1"), T0), Verdict::Allow);
    assert_eq!(a.auth_failed(ip("192.0.2.1"), T0), Verdict::Allow);
    assert_eq!(
        a.check_request(&req(&k, Action::Read, "192.0.2.1", T0))
            .verdict,
        Verdict::Allow
    );
    for action in [Action::Trade, Action::Withdraw] {
        assert_eq!(
            a.check_request(&req(&k, action, "192.0.2.1", T0)).verdict,
            Verdict::Deny(Deny::StateUnavailable)
        );
    }
}

#[test]
fn zaif_pattern_in_miniature() {
    // Owners use their keys from their own addresses; an attacker then uses every key from
    // four addresses. Default rules.
    let a = Anomaly::in_memory(AnomalyConfig::default(), MemoryIpHistory::new(64));
    let keys: Vec<KeyRecord> = (0..30)
        .map(|i| KeyRecord {
            created_at: T0 - 1000 * DAY,
            ..key(&format!("k{i}"), &format!("acct{}", i / 3))
        })
        .collect();
    // Owners: keys 0..10 active (used a day ago), the rest dormant (last used 2 years ago).
    let last_used = |i: usize| if i < 10 { T0 - DAY } else { T0 - 700 * DAY };
    for (i, k) in keys.iter().enumerate() {
        let owner = format!("127.0.{}.1", i + 1);
        let d = a.check_request(&AnomalyRequest {
            last_used: Some(last_used(i)),
            ..req(k, Action::Read, &owner, T0)
        });
        assert_eq!(d.verdict, Verdict::Allow);
    }
    let mut attacker_passed = 0;
    for round in 0..3u64 {
        for (i, k) in keys.iter().enumerate() {
            let attacker = format!("127.66.0.{}", i % 4 + 1);
            for action in [Action::Trade, Action::Withdraw] {
                let d = a.check_request(&AnomalyRequest {
                    last_used: Some(last_used(i)),
                    ..req(k, action, &attacker, T0 + MINUTE + round)
                });
                attacker_passed += usize::from(d.verdict.result().is_ok());
            }
        }
    }
    assert_eq!(attacker_passed, 0);
    // Owners keep trading from their own addresses.
    for (i, k) in keys.iter().enumerate().take(10) {
        let d = a.check_request(&AnomalyRequest {
            last_used: Some(last_used(i)),
            ..req(
                k,
                Action::Trade,
                &format!("127.0.{}.1", i + 1),
                T0 + 2 * MINUTE,
            )
        });
        assert_eq!(d.verdict, Verdict::Allow, "owner of k{i}");
    }
}

// --- canary ---

fn new_ip_only() -> Anomaly {
    only(AnomalyConfig {
        new_ip: Some(NewIpRule::default()),
        ..none()
    })
}

#[test]
fn a_canary_blocks_its_network_for_every_key_whatever_the_other_rules() {
    // Shared-IP and auth-failure rules off: the canary block stands on its own.
    let a = new_ip_only();
    let attacker = ip("198.51.100.7");
    assert_eq!(a.check_client(attacker, T0), Verdict::Allow);
    let trip = a.canary_used(attacker, T0).unwrap();
    assert_eq!(trip.blocked_until, T0 + DAY);
    assert_eq!(
        a.check_client(attacker, T0 + 1),
        Verdict::Deny(Deny::IpBlocked)
    );
    assert_eq!(
        a.check_client(attacker, T0 + DAY - 1),
        Verdict::Deny(Deny::IpBlocked)
    );
    assert_eq!(a.check_client(attacker, T0 + DAY), Verdict::Allow);
    // Other networks are untouched; the whole IPv6 /64 is one network.
    assert_eq!(a.check_client(ip("198.51.100.8"), T0 + 1), Verdict::Allow);
    a.canary_used(ip("2001:db8:1:2::5"), T0).unwrap();
    assert_eq!(
        a.check_client(ip("2001:db8:1:2:ffff::1"), T0 + 1),
        Verdict::Deny(Deny::IpBlocked)
    );
    // Even a shadow-mode shared-IP rule does not soften it.
    let shadow = only(AnomalyConfig {
        shared_ip: Some(SharedIpRule {
            shadow: true,
            ..SharedIpRule::default()
        }),
        ..none()
    });
    shadow.canary_used(attacker, T0).unwrap();
    assert_eq!(
        shadow.check_client(attacker, T0 + 1),
        Verdict::Deny(Deny::IpBlocked)
    );
    // A block survives the sweep while it lasts.
    a.sweep(T0 + DAY - 1);
    assert_eq!(
        a.check_client(attacker, T0 + DAY - 1),
        Verdict::Deny(Deny::IpBlocked)
    );
}

#[test]
fn keys_the_network_used_recently_go_back_on_probation_there() {
    let a = new_ip_only();
    let (owner, attacker) = ("192.0.2.10", "198.51.100.7");
    let recent = key("recent", "a");
    let old = key("old", "b");
    let elsewhere = key("elsewhere", "c");
    let trade = |k: &KeyRecord, client: &str, now| {
        a.check_request(&req(k, Action::Trade, client, now)).verdict
    };
    // `recent`: first used by its owner, then by the attacker (after probation).
    assert_eq!(trade(&recent, owner, T0), Verdict::Allow);
    assert_eq!(
        trade(&recent, attacker, T0 + 1),
        Verdict::Deny(Deny::NewIpProbation)
    );
    assert_eq!(trade(&recent, attacker, T0 + HOUR + 1), Verdict::Allow);
    // `old`: its only network is the attacker's, last seen two days before the canary.
    assert_eq!(trade(&old, attacker, T0 - 2 * DAY), Verdict::Allow);
    // `elsewhere`: never seen from the attacker's network.
    assert_eq!(trade(&elsewhere, owner, T0), Verdict::Allow);

    let now = T0 + 2 * HOUR;
    let trip = a.canary_used(ip(attacker), now).unwrap();
    let forgotten: Vec<&str> = trip.forgotten.iter().map(|l| l.key_id.as_str()).collect();
    assert_eq!(forgotten, ["recent"]);
    assert_eq!(trip.forgotten[0].usable_from, FORGOTTEN);
    // A second trip has nothing left to forget.
    assert!(a
        .canary_used(ip(attacker), now)
        .unwrap()
        .forgotten
        .is_empty());

    // After the block, `recent` waits out probation from the attacker's network again
    // (it is not trusted as a "first network", since its owner's is still known) ...
    let after = now + DAY;
    let d = a.check_request(&req(&recent, Action::Trade, attacker, after));
    assert_eq!(d.verdict, Verdict::Deny(Deny::NewIpProbation));
    let learned = d.learned.expect("relearned, to persist");
    assert_eq!(learned.usable_from, after + HOUR);
    assert_eq!(trade(&recent, attacker, after + HOUR), Verdict::Allow);
    // ... while its owner's network stays known, and `old` (outside the lookback) keeps
    // the trust it had.
    assert_eq!(trade(&recent, owner, after), Verdict::Allow);
    assert_eq!(trade(&old, attacker, after), Verdict::Allow);
}

#[test]
fn a_forgotten_only_network_is_never_trusted_on_first_use_again() {
    let a = new_ip_only();
    let attacker = "198.51.100.7";
    let k = key("k", "a");
    assert_eq!(
        a.check_request(&req(&k, Action::Trade, attacker, T0))
            .verdict,
        Verdict::Allow,
        "first network, trusted on first use"
    );
    a.canary_used(ip(attacker), T0 + 1).unwrap();
    // Neither that network nor any other is the key's "first" now.
    for client in [attacker, "203.0.113.9"] {
        assert_eq!(
            a.check_request(&req(&k, Action::Trade, client, T0 + DAY + 2))
                .verdict,
            Verdict::Deny(Deny::NewIpProbation),
            "{client}"
        );
    }
}

#[test]
fn forgetting_survives_a_restart_and_restored_networks_count_as_recent() {
    let attacker = ip("198.51.100.7");
    let net = ClientNet::of(attacker).to_net();
    // Restored networks carry only their first sighting, long before the lookback: they
    // are forgotten all the same (safe direction), and a forgotten one stays forgotten.
    let history = MemoryIpHistory::restore(
        64,
        [
            LearnedIp {
                key_id: "old".into(),
                net,
                first_seen: T0 - 30 * DAY,
                usable_from: T0 - 30 * DAY,
            },
            LearnedIp {
                key_id: "owner-net".into(),
                net: ClientNet::of(ip("192.0.2.1")).to_net(),
                first_seen: T0 - 30 * DAY,
                usable_from: T0 - 30 * DAY,
            },
        ],
    );
    let a = Anomaly::in_memory(
        AnomalyConfig {
            new_ip: Some(NewIpRule::default()),
            ..none()
        },
        history,
    );
    let trip = a.canary_used(attacker, T0).unwrap();
    assert_eq!(trip.forgotten.len(), 1);
    let restored = MemoryIpHistory::restore(64, trip.forgotten.clone());
    let b = Anomaly::in_memory(
        AnomalyConfig {
            new_ip: Some(NewIpRule::default()),
            ..none()
        },
        restored,
    );
    let k = key("old", "a");
    assert_eq!(
        b.check_request(&req(&k, Action::Withdraw, "198.51.100.7", T0 + DAY))
            .verdict,
        Verdict::Deny(Deny::NewIpProbation)
    );
}
