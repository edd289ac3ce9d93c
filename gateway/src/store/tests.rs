use super::*;

fn setup() -> (tempfile::TempDir, Store, MasterKey) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let master =
        MasterKey::load_or_create("KEYGUARD_TEST_UNSET_VAR", &dir.path().join("m.key")).unwrap();
    (dir, store, master)
}

fn new_key(id: &str) -> NewKey {
    NewKey {
        key_id: id.into(),
        api_key: format!("api-{id}"),
        account: "alice".into(),
        label: "bot".into(),
        scopes: "read,withdraw".parse().unwrap(),
        allow_ips: vec!["127.0.0.2/32".parse().unwrap()],
        trusted_ips: vec![],
        withdraw_addresses: vec![("btc".into(), "bc1qdest".into())],
        expires_at: None,
        credential: NewCredential::Hmac(b"the-secret".to_vec()),
        canary: false,
    }
}

#[test]
fn keys_roundtrip_with_sealed_secret() {
    let (_dir, store, master) = setup();
    let mut conn = store.connect().unwrap();
    let g0 = keys_generation(&conn).unwrap();
    insert_key(&mut conn, &master, &new_key("kg_1")).unwrap();
    assert!(keys_generation(&conn).unwrap() > g0);
    let (keys, errors) = load_keys(&conn, &master).unwrap();
    assert!(errors.is_empty());
    assert_eq!(keys.len(), 1);
    let k = &keys[0];
    assert_eq!(k.api_key, "api-kg_1");
    assert_eq!(k.withdraw_addresses[0].address, "bc1qdest");
    match &k.credential {
        Credential::Hmac(s) => assert_eq!(s.expose(), b"the-secret"),
        other => panic!("{other:?}"),
    }
    // The secret is not stored in the clear.
    let raw = std::fs::read(store.path()).unwrap();
    assert!(!raw.windows(10).any(|w| w == b"the-secret"));
    // A different master key cannot open it: the key is skipped and reported.
    let dir2 = tempfile::tempdir().unwrap();
    let other =
        MasterKey::load_or_create("KEYGUARD_TEST_UNSET_VAR", &dir2.path().join("m.key")).unwrap();
    let (keys, errors) = load_keys(&conn, &other).unwrap();
    assert!(keys.is_empty());
    assert_eq!(errors.len(), 1);
}

#[test]
fn status_changes_and_revocation_is_final() {
    let (_dir, store, master) = setup();
    let mut conn = store.connect().unwrap();
    insert_key(&mut conn, &master, &new_key("kg_1")).unwrap();
    set_status(&mut conn, "kg_1", KeyStatus::Suspended, "ops", "test").unwrap();
    assert_eq!(
        list_keys(&conn, Some("kg_1")).unwrap()[0].status,
        "suspended"
    );
    set_status(&mut conn, "kg_1", KeyStatus::Active, "ops", "test").unwrap();
    set_status(&mut conn, "kg_1", KeyStatus::Revoked, "ops", "test").unwrap();
    assert!(set_status(&mut conn, "kg_1", KeyStatus::Active, "ops", "test").is_err());
    assert!(set_status(&mut conn, "kg_nope", KeyStatus::Suspended, "ops", "test").is_err());
}

#[test]
fn freezes_are_recorded_with_who_and_why() {
    let (_dir, store, _master) = setup();
    let mut conn = store.connect().unwrap();
    let btc = FreezeScope::Asset("btc".into());
    assert!(set_freeze(&mut conn, &btc, true, "ops", "hot wallet drained").unwrap());
    assert!(!set_freeze(&mut conn, &btc, true, "ops", "again").unwrap());
    assert!(set_freeze(&mut conn, &FreezeScope::Global, true, "ops", "incident").unwrap());
    let f = load_freezes(&conn).unwrap();
    assert!(f.global);
    assert_eq!(f.assets, vec!["btc".to_string()]);
    assert!(set_freeze(&mut conn, &FreezeScope::Global, false, "ops", "resolved").unwrap());
    assert!(!load_freezes(&conn).unwrap().global);
    let events = unaudited_admin_events(&conn).unwrap();
    let actions: Vec<&str> = events.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(actions, vec!["freeze", "freeze", "unfreeze"]);
    assert_eq!(events[0].target, "asset:btc");
    assert_eq!(events[0].reason, "hot wallet drained");
    assert_eq!(events[0].actor, "ops");
    mark_admin_events_audited(&conn, events[1].id).unwrap();
    assert_eq!(unaudited_admin_events(&conn).unwrap().len(), 1);
}

#[test]
fn canary_flag_roundtrips_and_version_1_files_are_migrated() {
    let (dir, store, master) = setup();
    let mut conn = store.connect().unwrap();
    insert_key(&mut conn, &master, &new_key("kg_real")).unwrap();
    insert_key(
        &mut conn,
        &master,
        &NewKey {
            canary: true,
            ..new_key("kg_canary")
        },
    )
    .unwrap();
    let (keys, _) = load_keys(&conn, &master).unwrap();
    let mut flags: Vec<(&str, bool)> = keys.iter().map(|k| (k.key_id.as_str(), k.canary)).collect();
    flags.sort();
    assert_eq!(flags, [("kg_canary", true), ("kg_real", false)]);
    assert!(list_keys(&conn, Some("kg_canary")).unwrap()[0].canary);

    // A version-1 file: no canary column. Opening it adds one, every key real.
    let old = tempfile::tempdir().unwrap();
    let path = old.path().join("keyguard.db");
    {
        let c = Connection::open(&path).unwrap();
        let v1 = SCHEMA
            .replace(",\n    canary        INTEGER NOT NULL DEFAULT 0", "")
            .replace(",\n    trusted_ips   TEXT NOT NULL DEFAULT '[]'", "");
        assert_ne!(v1, SCHEMA);
        c.execute_batch(&v1).unwrap();
        c.execute(
            "INSERT INTO meta (k, v) VALUES ('schema_version', '1'), ('keys_generation', '0')",
            [],
        )
        .unwrap();
        c.execute(
            "INSERT INTO keys (key_id, api_key, account, label, scopes, allow_ips, status,
                               created_at, updated_at, cred_kind, cred_public)
             VALUES ('kg_old', 'api-old', 'bob', '', 'read', '[]', 'active', 1, 1, 'ed25519', ?1)",
            [vec![7u8; 32]],
        )
        .unwrap();
    }
    let migrated = Store::open(old.path()).unwrap();
    let c = migrated.connect().unwrap();
    let v: String = c
        .query_row("SELECT v FROM meta WHERE k = 'schema_version'", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(v, SCHEMA_VERSION.to_string());
    let (keys, errors) = load_keys(&c, &master).unwrap();
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!((keys[0].key_id.as_str(), keys[0].canary), ("kg_old", false));
    // Opening again is a no-op.
    Store::open(old.path()).unwrap();
    drop(dir);
}

#[test]
fn a_version_1_store_is_migrated_in_place() {
    let (dir, store, master) = setup();
    let mut conn = store.connect().unwrap();
    insert_key(&mut conn, &master, &new_key("kg_1")).unwrap();
    // Back to what version 1 wrote: no trusted_ips column.
    conn.execute_batch(
        "ALTER TABLE keys DROP COLUMN trusted_ips;
         ALTER TABLE keys DROP COLUMN canary;
         UPDATE meta SET v = '1' WHERE k = 'schema_version';",
    )
    .unwrap();
    drop(conn);
    let store = Store::open(dir.path()).unwrap();
    let conn = store.connect().unwrap();
    let (keys, errors) = load_keys(&conn, &master).unwrap();
    assert!(errors.is_empty(), "{errors:?}");
    assert!(keys[0].trusted_ips.is_empty());
    let v: String = conn
        .query_row("SELECT v FROM meta WHERE k = 'schema_version'", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(v, "2");
}
