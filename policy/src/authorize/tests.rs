use super::*;
use crate::action::{Scope, Scopes};
use crate::key::{parse_allow_ip, Credential, Secret, WithdrawAddress};

fn key(scopes: &[Scope], ips: &[&str]) -> KeyRecord {
    KeyRecord {
        key_id: "kg_test".into(),
        api_key: "ak".into(),
        account: "alice".into(),
        label: String::new(),
        scopes: scopes.iter().copied().collect::<Scopes>(),
        allow_ips: ips.iter().map(|s| parse_allow_ip(s).unwrap()).collect(),
        withdraw_addresses: vec![WithdrawAddress {
            asset: "btc".into(),
            address: "bc1qdest".into(),
            added_at: 1_000,
        }],
        trusted_ips: Vec::new(),
        created_at: 0,
        expires_at: Some(10_000_000),
        status: KeyStatus::Active,
        credential: Credential::Hmac(Secret::new(b"s".to_vec())),
        canary: false,
    }
}

fn withdraw_facts(address: &str) -> Facts {
    Facts {
        asset: Some("btc".into()),
        amount: Some(crate::decimal::parse_decimal("0.5").unwrap()),
        address: Some(address.into()),
        ..Facts::default()
    }
}

fn req<'a>(action: Action, facts: &'a Facts, ip: &str, now: UnixMillis) -> AccessRequest<'a> {
    AccessRequest {
        action,
        facts,
        client_ip: ip.parse().unwrap(),
        now,
    }
}

const CFG: AuthorizeConfig = AuthorizeConfig {
    address_cooldown_ms: 60_000,
};

#[test]
fn scope_and_ip() {
    let k = key(&[Scope::Read], &["127.0.0.2/32"]);
    let f = Facts::default();
    let free = Freezes::default();
    assert_eq!(
        authorize(&CFG, &k, &req(Action::Read, &f, "127.0.0.2", 5), &free),
        Ok(())
    );
    assert_eq!(
        authorize(&CFG, &k, &req(Action::Trade, &f, "127.0.0.2", 5), &free),
        Err(Deny::ScopeMissing)
    );
    assert_eq!(
        authorize(&CFG, &k, &req(Action::Read, &f, "127.0.0.3", 5), &free),
        Err(Deny::IpNotAllowed)
    );
    assert_eq!(
        authorize(
            &CFG,
            &k,
            &req(Action::Read, &f, "::ffff:127.0.0.2", 5),
            &free
        ),
        Ok(())
    );
}

#[test]
fn status_and_expiry() {
    let mut k = key(&[Scope::Read], &[]);
    let f = Facts::default();
    let free = Freezes::default();
    assert_eq!(
        authorize(
            &CFG,
            &k,
            &req(Action::Read, &f, "1.2.3.4", 10_000_000),
            &free
        ),
        Err(Deny::KeyExpired)
    );
    k.status = KeyStatus::Suspended;
    assert_eq!(
        authorize(&CFG, &k, &req(Action::Read, &f, "1.2.3.4", 5), &free),
        Err(Deny::KeySuspended)
    );
    k.status = KeyStatus::Revoked;
    assert_eq!(
        authorize(&CFG, &k, &req(Action::Read, &f, "1.2.3.4", 5), &free),
        Err(Deny::KeyRevoked)
    );
}

#[test]
fn withdraw_rules() {
    let free = Freezes::default();
    let good = withdraw_facts("bc1qdest");
    let open = key(&[Scope::Withdraw], &[]);
    assert_eq!(
        authorize(
            &CFG,
            &open,
            &req(Action::Withdraw, &good, "127.0.0.2", 100_000),
            &free
        ),
        Err(Deny::AllowlistRequired)
    );
    let k = key(&[Scope::Withdraw], &["127.0.0.0/24"]);
    assert_eq!(
        authorize(
            &CFG,
            &k,
            &req(Action::Withdraw, &good, "127.0.0.2", 100_000),
            &free
        ),
        Ok(())
    );
    assert_eq!(
        authorize(
            &CFG,
            &k,
            &req(Action::Withdraw, &good, "127.0.0.2", 60_999),
            &free
        ),
        Err(Deny::AddressCooldown)
    );
    let other = withdraw_facts("bc1qattacker");
    assert_eq!(
        authorize(
            &CFG,
            &k,
            &req(Action::Withdraw, &other, "127.0.0.2", 100_000),
            &free
        ),
        Err(Deny::AddressNotAllowed)
    );
    for freezes in [
        Freezes {
            global: true,
            ..Freezes::default()
        },
        Freezes {
            assets: vec!["btc".into()],
            ..Freezes::default()
        },
        Freezes {
            accounts: vec!["alice".into()],
            ..Freezes::default()
        },
    ] {
        assert_eq!(
            authorize(
                &CFG,
                &k,
                &req(Action::Withdraw, &good, "127.0.0.2", 100_000),
                &freezes
            ),
            Err(Deny::WithdrawalsFrozen)
        );
    }
    let no_amount = Facts {
        amount: None,
        ..withdraw_facts("bc1qdest")
    };
    assert_eq!(
        authorize(
            &CFG,
            &k,
            &req(Action::Withdraw, &no_amount, "127.0.0.2", 100_000),
            &free
        ),
        Err(Deny::InvalidField)
    );
}

/// Kraken names the destination by its withdrawal key; entries can allow a key, a key
/// pinned to its address, or a plain address.
#[test]
fn withdrawal_keys() {
    let mut k = key(&[Scope::Withdraw], &["127.0.0.2/32"]);
    k.withdraw_addresses = [
        "key=Wallet1",
        "key=My%20Ledger,address=bc1qpinned",
        "bc1qplain",
    ]
    .iter()
    .map(|a| WithdrawAddress {
        asset: "xxbt".into(),
        address: (*a).into(),
        added_at: 1_000,
    })
    .collect();
    let free = Freezes::default();
    let facts = |key: Option<&str>, address: Option<&str>| Facts {
        asset: Some("xxbt".into()),
        amount: Some(crate::decimal::parse_decimal("0.5").unwrap()),
        address: address.map(Into::into),
        withdraw_key: key.map(Into::into),
        ..Facts::default()
    };
    let check =
        |f: &Facts, now| authorize(&CFG, &k, &req(Action::Withdraw, f, "127.0.0.2", now), &free);
    let later = 1_000 + CFG.address_cooldown_ms;
    for (key, address, want) in [
        (Some("Wallet1"), None, Ok(())),
        (Some("Wallet1"), Some("bc1qwhatever"), Ok(())),
        (Some("wallet1"), None, Err(Deny::AddressNotAllowed)),
        (Some("Evil"), None, Err(Deny::AddressNotAllowed)),
        (Some("My Ledger"), None, Ok(())),
        (Some("My Ledger"), Some("bc1qpinned"), Ok(())),
        (
            Some("My Ledger"),
            Some("bc1qevil"),
            Err(Deny::AddressNotAllowed),
        ),
        (None, Some("bc1qpinned"), Ok(())),
        (None, Some("bc1qplain"), Ok(())),
        (Some("Evil"), Some("bc1qplain"), Ok(())),
        (None, Some("bc1qevil"), Err(Deny::AddressNotAllowed)),
        (None, None, Err(Deny::InvalidField)),
    ] {
        assert_eq!(
            check(&facts(key, address), later),
            want,
            "{key:?} {address:?}"
        );
    }
    // Key entries wait out the cool-down like addresses.
    assert_eq!(
        check(&facts(Some("Wallet1"), None), later - 1),
        Err(Deny::AddressCooldown)
    );
}
