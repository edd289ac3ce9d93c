use super::*;
use crate::store::Store;

const T0: UnixMillis = 1_800_000_000_000;

fn setup() -> (tempfile::TempDir, Connection, Accounts) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let master =
        MasterKey::load_or_create("KEYGUARD_TEST_UNSET_VAR", &dir.path().join("m.key")).unwrap();
    let conn = store.connect().unwrap();
    create(&conn, "alice", "correct horse battery", "ops").unwrap();
    let accounts = Accounts::new(
        std::sync::Arc::new(master),
        Lockout {
            after: 3,
            base_ms: 1_000,
        },
    )
    .unwrap();
    (dir, conn, accounts)
}

fn code_at(e: &Enrolment, now: UnixMillis) -> String {
    let secret = totp_rs::Secret::Encoded(e.secret_base32.clone())
        .to_bytes()
        .unwrap();
    totp_for(secret, "alice").unwrap().generate(now / 1000)
}

#[test]
fn passwords_are_argon2id_and_checked() {
    let (_d, conn, a) = setup();
    let hash: String = conn
        .query_row(
            "SELECT password_hash FROM accounts WHERE name = 'alice'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(hash.starts_with("$argon2id$"), "{hash}");
    assert_eq!(
        a.check_password(&conn, "alice", "correct horse battery", T0),
        Ok(PasswordOk::Done)
    );
    assert_eq!(
        a.check_password(&conn, "alice", "wrong", T0),
        Err(LoginFailed)
    );
    assert_eq!(
        a.check_password(&conn, "nobody", "correct horse battery", T0),
        Err(LoginFailed)
    );
    assert!(create(&conn, "bob", "short", "ops").is_err());
    assert!(
        create(&conn, "alice", "another long password", "ops").is_err(),
        "exists"
    );
    assert!(check_name("a b").is_err());
}

/// An unknown name must not answer faster than a known one (which would tell which names
/// exist): both run one Argon2 verification with the same parameters. Checked by what runs,
/// not by timing it, which a loaded machine makes flaky.
#[test]
fn unknown_names_cost_the_same_as_known_ones() {
    let (_d, conn, a) = setup();
    let verified = |name: &str| {
        VERIFIED.with(|v| v.borrow_mut().clear());
        assert_eq!(
            a.check_password(&conn, name, "not the password", T0),
            Err(LoginFailed)
        );
        VERIFIED.with(|v| v.borrow().clone())
    };
    let known = verified("alice");
    let unknown = verified("nobody-here");
    assert_eq!(known.len(), 1, "{known:?}");
    assert_eq!(known, unknown, "different work for an unknown name");
    assert!(known[0].starts_with("$argon2id$v=19$m="), "{known:?}");
}

#[test]
fn lockout_backs_off_exponentially_with_one_error() {
    let (_d, conn, a) = setup();
    for _ in 0..3 {
        assert_eq!(
            a.check_password(&conn, "alice", "nope", T0),
            Err(LoginFailed)
        );
    }
    // Locked for 1 s: the right password fails the same way.
    assert_eq!(
        a.check_password(&conn, "alice", "correct horse battery", T0 + 999),
        Err(LoginFailed)
    );
    assert_eq!(
        a.check_password(&conn, "alice", "correct horse battery", T0 + 1_000),
        Ok(PasswordOk::Done)
    );
    // A success resets the count.
    for _ in 0..3 {
        let _ = a.check_password(&conn, "alice", "nope", T0 + 2_000);
    }
    let _ = a.check_password(&conn, "alice", "nope", T0 + 3_000); // 4th: 2 s
    let locked: i64 = conn
        .query_row(
            "SELECT locked_until FROM accounts WHERE name = 'alice'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(locked as u64, T0 + 3_000 + 2_000);
}

#[test]
fn totp_enrolment_needs_a_valid_code_and_steps_are_single_use() {
    let (_d, mut conn, a) = setup();
    let e = a.begin_enrolment(&conn, "alice").unwrap();
    assert!(e.qr_svg.contains("<svg") && e.url.starts_with("otpauth://totp/"));
    assert_eq!(e.secret_base32.len(), 32);
    // Not enabled until confirmed.
    assert_eq!(
        a.check_password(&conn, "alice", "correct horse battery", T0),
        Ok(PasswordOk::Done)
    );
    assert!(a
        .confirm_enrolment(&mut conn, "alice", "000000", T0)
        .unwrap()
        .is_none());
    let codes = a
        .confirm_enrolment(&mut conn, "alice", &code_at(&e, T0), T0)
        .unwrap()
        .unwrap();
    assert_eq!(codes.len(), 10);
    assert_eq!(
        a.check_password(&conn, "alice", "correct horse battery", T0),
        Ok(PasswordOk::NeedTotp)
    );
    // The enrolment code's step is used up; so is any earlier one.
    assert_eq!(
        a.check_second_factor(&conn, "alice", &code_at(&e, T0), T0 + 1_000),
        Err(LoginFailed)
    );
    let next = T0 + 30_000;
    assert_eq!(
        a.check_second_factor(&conn, "alice", &code_at(&e, next), next),
        Ok(())
    );
    assert_eq!(
        a.check_second_factor(&conn, "alice", &code_at(&e, next), next + 1),
        Err(LoginFailed),
        "replayed"
    );
    // Recovery codes: once each, stored hashed.
    assert_eq!(
        a.check_second_factor(&conn, "alice", &codes[0].to_uppercase(), next),
        Ok(())
    );
    assert_eq!(
        a.check_second_factor(&conn, "alice", &codes[0], next),
        Err(LoginFailed)
    );
    let stored: String = conn
        .query_row(
            "SELECT group_concat(code_hash) FROM recovery_codes",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(!stored.contains(&codes[1]));
}

#[test]
fn password_change_and_disable_end_sessions() {
    let (_d, mut conn, a) = setup();
    conn.execute(
        "INSERT INTO sessions (id, account, stage, csrf, created_at, expires_at, max_until, client_ip)
         VALUES ('s1', 'alice', 'full', 'c', 0, 1, 1, '127.0.0.1')",
        [],
    )
    .unwrap();
    set_password(&mut conn, "alice", "a brand new password", "ops").unwrap();
    let revoked: i64 = conn
        .query_row("SELECT revoked FROM sessions WHERE id = 's1'", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(revoked, 1);
    assert_eq!(
        a.check_password(&conn, "alice", "a brand new password", T0),
        Ok(PasswordOk::Done)
    );
    set_disabled(&mut conn, "alice", true, "ops", "left").unwrap();
    assert_eq!(
        a.check_password(&conn, "alice", "a brand new password", T0),
        Err(LoginFailed)
    );
    assert!(list(&conn).unwrap()[0].disabled);
}
