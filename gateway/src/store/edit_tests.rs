use super::*;
use crate::secrets::MasterKey;
use crate::store::{insert_key, list_keys, unaudited_admin_events, NewCredential, NewKey, Store};

const T0: UnixMillis = 1_800_000_000_000;
const COOL: Cooldowns = Cooldowns {
    widen_ms: 1_000,
    address_ms: 5_000,
};

fn who(now: bool) -> Requester<'static> {
    Requester {
        actor: "ops",
        reason: "test",
        now,
    }
}

fn setup(scopes: &str, allow: &[&str]) -> (tempfile::TempDir, Connection) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let master =
        MasterKey::load_or_create("KEYGUARD_TEST_UNSET_VAR", &dir.path().join("m.key")).unwrap();
    let mut conn = store.connect().unwrap();
    insert_key(
        &mut conn,
        &master,
        &NewKey {
            key_id: "kg_1".into(),
            api_key: "api".into(),
            account: "alice".into(),
            label: String::new(),
            scopes: scopes.parse().unwrap(),
            allow_ips: allow.iter().map(|a| a.parse().unwrap()).collect(),
            trusted_ips: vec![],
            withdraw_addresses: vec![],
            expires_at: None,
            credential: NewCredential::Hmac(b"s".to_vec()),
            canary: false,
        },
    )
    .unwrap();
    (dir, conn)
}

fn allow(conn: &Connection) -> Vec<String> {
    list_keys(conn, Some("kg_1")).unwrap()[0].allow_ips.clone()
}

fn scopes(conn: &Connection) -> Vec<&'static str> {
    list_keys(conn, Some("kg_1")).unwrap()[0].scopes.clone()
}

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

#[test]
fn adding_a_network_waits_and_removing_is_instant() {
    let (_d, mut conn) = setup("read,trade", &["10.0.0.0/24", "10.0.1.0/24"]);
    let o = request(
        &mut conn,
        "kg_1",
        None,
        &Change::AddIp(net("192.0.2.0/24")),
        COOL,
        who(false),
        T0,
    )
    .unwrap();
    assert_eq!(
        o,
        Outcome::Pending {
            id: 1,
            effective_at: T0 + 1_000
        }
    );
    assert_eq!(allow(&conn), ["10.0.0.0/24", "10.0.1.0/24"], "not yet");
    // Asking again neither duplicates nor restarts the wait.
    let again = request(
        &mut conn,
        "kg_1",
        None,
        &Change::AddIp(net("192.0.2.0/24")),
        COOL,
        who(false),
        T0 + 500,
    )
    .unwrap();
    assert_eq!(again, o);
    assert_eq!(apply_due(&mut conn, T0 + 999).unwrap(), 0);
    assert_eq!(apply_due(&mut conn, T0 + 1_000).unwrap(), 1);
    assert_eq!(allow(&conn), ["10.0.0.0/24", "10.0.1.0/24", "192.0.2.0/24"]);
    assert!(list_pending(&conn, None, None).unwrap().is_empty());

    let o = request(
        &mut conn,
        "kg_1",
        None,
        &Change::RemoveIp(net("10.0.0.0/24")),
        COOL,
        who(false),
        T0 + 2_000,
    )
    .unwrap();
    assert_eq!(o, Outcome::Applied);
    assert_eq!(allow(&conn), ["10.0.1.0/24", "192.0.2.0/24"]);
    let events: Vec<String> = unaudited_admin_events(&conn)
        .unwrap()
        .into_iter()
        .map(|e| e.action)
        .collect();
    assert_eq!(events, ["widen_requested", "widen_applied", "narrow"]);
}

#[test]
fn first_entry_and_covered_entries_are_narrowing() {
    let (_d, mut conn) = setup("read", &[]);
    let o = request(
        &mut conn,
        "kg_1",
        None,
        &Change::AddIp(net("10.0.0.0/8")),
        COOL,
        who(false),
        T0,
    )
    .unwrap();
    assert_eq!(
        o,
        Outcome::Applied,
        "any network -> one network is narrower"
    );
    let o = request(
        &mut conn,
        "kg_1",
        None,
        &Change::AddIp(net("10.1.0.0/16")),
        COOL,
        who(false),
        T0,
    )
    .unwrap();
    assert_eq!(o, Outcome::Applied, "inside an allowed network");
    let o = request(
        &mut conn,
        "kg_1",
        None,
        &Change::AddIp(net("10.1.0.0/16")),
        COOL,
        who(false),
        T0,
    )
    .unwrap();
    assert_eq!(o, Outcome::Unchanged);
}

#[test]
fn removing_the_last_network_widens_and_is_refused_for_withdraw_keys() {
    let (_d, mut conn) = setup("read", &["10.0.0.0/8"]);
    let o = request(
        &mut conn,
        "kg_1",
        None,
        &Change::RemoveIp(net("10.0.0.0/8")),
        COOL,
        who(false),
        T0,
    )
    .unwrap();
    assert!(matches!(o, Outcome::Pending { .. }), "{o:?}");
    assert_eq!(allow(&conn), ["10.0.0.0/8"]);

    let (_d, mut conn) = setup("read,withdraw", &["10.0.0.0/8"]);
    let e = request(
        &mut conn,
        "kg_1",
        None,
        &Change::RemoveIp(net("10.0.0.0/8")),
        COOL,
        who(true),
        T0,
    )
    .unwrap_err();
    assert_eq!(e.code(), "withdraw_needs_allowlist");
    let e = request(
        &mut conn,
        "kg_1",
        None,
        &Change::RemoveIp(net("10.9.0.0/16")),
        COOL,
        who(false),
        T0,
    )
    .unwrap_err();
    assert_eq!(e.code(), "not_present");
}

#[test]
fn scopes_widen_slowly_narrow_at_once_and_now_skips_with_an_audit_event() {
    let (_d, mut conn) = setup("read", &[]);
    let e = request(
        &mut conn,
        "kg_1",
        None,
        &Change::AddScope(Scope::Withdraw),
        COOL,
        who(false),
        T0,
    )
    .unwrap_err();
    assert_eq!(e.code(), "withdraw_needs_allowlist");
    let o = request(
        &mut conn,
        "kg_1",
        None,
        &Change::AddScope(Scope::Trade),
        COOL,
        who(false),
        T0,
    )
    .unwrap();
    assert!(matches!(o, Outcome::Pending { .. }));
    assert_eq!(scopes(&conn), ["read"]);
    // Removing the scope while its grant waits cancels the grant.
    let e = request(
        &mut conn,
        "kg_1",
        None,
        &Change::RemoveScope(Scope::Read),
        COOL,
        who(false),
        T0,
    )
    .unwrap_err();
    assert_eq!(e.code(), "last_scope");
    let o = request(
        &mut conn,
        "kg_1",
        None,
        &Change::AddScope(Scope::Trade),
        COOL,
        who(true),
        T0,
    )
    .unwrap();
    assert_eq!(o, Outcome::Applied, "--now applies the pending grant");
    assert_eq!(scopes(&conn), ["read", "trade"]);
    assert!(list_pending(&conn, None, None).unwrap().is_empty());
    let o = request(
        &mut conn,
        "kg_1",
        None,
        &Change::RemoveScope(Scope::Trade),
        COOL,
        who(false),
        T0,
    )
    .unwrap();
    assert_eq!(o, Outcome::Applied);
    assert_eq!(scopes(&conn), ["read"]);
    let events = unaudited_admin_events(&conn).unwrap();
    assert!(events
        .iter()
        .any(|e| e.action == "widen_now" && e.reason.contains("skipping the cool-down")));
}

#[test]
fn a_removal_cancels_the_pending_grant_it_contradicts() {
    let (_d, mut conn) = setup("read,trade", &["10.0.0.0/24"]);
    request(
        &mut conn,
        "kg_1",
        None,
        &Change::AddIp(net("192.0.2.0/24")),
        COOL,
        who(false),
        T0,
    )
    .unwrap();
    request(
        &mut conn,
        "kg_1",
        None,
        &Change::AddIp(net("198.51.100.0/24")),
        COOL,
        who(false),
        T0,
    )
    .unwrap();
    let e = request(
        &mut conn,
        "kg_1",
        None,
        &Change::RemoveIp(net("192.0.2.0/24")),
        COOL,
        who(false),
        T0,
    );
    // Not in the list yet: refused, but the owner's intent is clear from cancel().
    assert_eq!(e.unwrap_err().code(), "not_present");
    let p = list_pending(&conn, Some("kg_1"), None).unwrap();
    assert_eq!(p.len(), 2);
    let c = cancel(
        &mut conn,
        p[0].id,
        Some("alice"),
        "ops",
        "changed my mind",
        T0,
    )
    .unwrap();
    assert_eq!(c.value, "192.0.2.0/24");
    assert_eq!(
        cancel(&mut conn, p[1].id, Some("mallory"), "ops", "x", T0)
            .unwrap_err()
            .code(),
        "change_not_found"
    );
    assert_eq!(apply_due(&mut conn, T0 + 10_000).unwrap(), 1);
    assert_eq!(allow(&conn), ["10.0.0.0/24", "198.51.100.0/24"]);
}

#[test]
fn addresses_wait_out_the_address_cooldown_and_now_backdates_them() {
    let (_d, mut conn) = setup("read", &["10.0.0.0/24"]);
    let btc = Change::address("BTC", "bc1qdest", true).unwrap();
    assert_eq!(
        request(&mut conn, "kg_1", None, &btc, COOL, who(false), T0)
            .unwrap_err()
            .code(),
        "needs_withdraw_scope"
    );
    request(
        &mut conn,
        "kg_1",
        None,
        &Change::AddScope(Scope::Withdraw),
        COOL,
        who(false),
        T0,
    )
    .unwrap();
    // A pending withdraw grant is enough to queue addresses behind it.
    let o = request(&mut conn, "kg_1", None, &btc, COOL, who(false), T0).unwrap();
    assert!(matches!(o, Outcome::Pending { effective_at, .. } if effective_at == T0 + 5_000));
    assert_eq!(
        apply_due(&mut conn, T0 + 1_000).unwrap(),
        1,
        "the scope only"
    );
    assert!(list_keys(&conn, Some("kg_1")).unwrap()[0]
        .withdraw_addresses
        .is_empty());
    assert_eq!(apply_due(&mut conn, T0 + 5_000).unwrap(), 1);
    let a = &list_keys(&conn, Some("kg_1")).unwrap()[0].withdraw_addresses;
    // Dated at the request: the authorization cool-down (added_at + 5 s) has passed.
    assert_eq!((a[0].asset.as_str(), a[0].added_at), ("btc", T0));

    let eth = Change::address("eth", "0xabc", true).unwrap();
    request(&mut conn, "kg_1", None, &eth, COOL, who(true), T0 + 6_000).unwrap();
    let a = &list_keys(&conn, Some("kg_1")).unwrap()[0].withdraw_addresses;
    let eth_row = a.iter().find(|x| x.asset == "eth").unwrap();
    assert_eq!(eth_row.added_at, T0 + 1_000, "usable at once");
    let rm = Change::address("eth", "0xabc", false).unwrap();
    assert_eq!(
        request(&mut conn, "kg_1", None, &rm, COOL, who(false), T0 + 7_000).unwrap(),
        Outcome::Applied
    );
    assert_eq!(
        list_keys(&conn, Some("kg_1")).unwrap()[0]
            .withdraw_addresses
            .len(),
        1
    );
    assert!(Change::address("btc", "has space", true).is_err());
}

#[test]
fn due_changes_are_rechecked_and_revoked_keys_are_final() {
    let (_d, mut conn) = setup("read", &["10.0.0.0/24"]);
    request(
        &mut conn,
        "kg_1",
        None,
        &Change::AddScope(Scope::Trade),
        COOL,
        who(false),
        T0,
    )
    .unwrap();
    crate::store::set_status(
        &mut conn,
        "kg_1",
        keyguard_policy::KeyStatus::Revoked,
        "ops",
        "leak",
    )
    .unwrap();
    assert_eq!(apply_due(&mut conn, T0 + 10_000).unwrap(), 0);
    assert_eq!(scopes(&conn), ["read"]);
    let events = unaudited_admin_events(&conn).unwrap();
    assert!(events.iter().any(|e| e.action == "widen_rejected"));
    let e = request(
        &mut conn,
        "kg_1",
        None,
        &Change::AddIp(net("10.0.1.0/24")),
        COOL,
        who(true),
        T0,
    )
    .unwrap_err();
    assert_eq!(e.code(), "key_revoked");
    let e = request(
        &mut conn,
        "kg_1",
        Some("mallory"),
        &Change::AddIp(net("10.0.1.0/24")),
        COOL,
        who(true),
        T0,
    )
    .unwrap_err();
    assert_eq!(
        e.code(),
        "key_not_found",
        "another account's key does not exist for them"
    );
}

#[test]
fn set_allowlist_never_passes_through_empty() {
    let (_d, mut conn) = setup("read,withdraw", &["10.0.0.0/24", "10.0.1.0/24"]);
    let out = set_allowlist(
        &mut conn,
        "kg_1",
        None,
        &[net("192.0.2.7/32")],
        COOL,
        who(false),
        T0,
    )
    .unwrap();
    assert_eq!(out.len(), 3);
    assert_eq!(
        allow(&conn),
        ["10.0.1.0/24"],
        "one removal at once, the last waits for the addition"
    );
    assert_eq!(apply_due(&mut conn, T0 + 1_000).unwrap(), 2);
    assert_eq!(allow(&conn), ["192.0.2.7/32"]);

    let (_d, mut conn) = setup("read", &[]);
    let out = set_allowlist(
        &mut conn,
        "kg_1",
        None,
        &[net("192.0.2.7/32"), net("192.0.2.8/32")],
        COOL,
        who(false),
        T0,
    )
    .unwrap();
    assert!(
        out.iter().all(|(_, o)| *o == Outcome::Applied),
        "locking an open key is narrowing: {out:?}"
    );
    assert_eq!(allow(&conn), ["192.0.2.7/32", "192.0.2.8/32"]);
}
