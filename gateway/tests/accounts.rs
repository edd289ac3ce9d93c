//! `keyguard accounts`, black-box: passwords only from stdin, listing, disabling.

mod utils;

use std::io::Write;
use std::process::{Command, Stdio};

use utils::*;

fn run_stdin(env: &Env, sub: &[&str], name: &str, stdin: &str) -> CliRun {
    let mut args: Vec<String> = vec!["accounts".into()];
    args.extend(sub.iter().map(|s| s.to_string()));
    args.extend([
        "--config".into(),
        env.config.to_string_lossy().into_owned(),
        "--data-dir".into(),
        env.data.to_string_lossy().into_owned(),
        name.into(),
    ]);
    let mut child = Command::new(BIN)
        .args(&args)
        .env_remove("KEYGUARD_MASTER_KEY")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    CliRun {
        status: out.status,
        stdout: String::from_utf8_lossy(&out.stdout).into(),
        stderr: String::from_utf8_lossy(&out.stderr).into(),
    }
}

#[test]
fn accounts_are_created_from_stdin_listed_and_disabled() {
    let env = Env::new(Dialect::Zaif, |_| {});
    let short = run_stdin(&env, &["create"], "alice", "short\n");
    assert!(
        !short.status.success() && short.stderr.contains("at least 12"),
        "{short:?}"
    );
    let empty = run_stdin(&env, &["create"], "alice", "");
    assert!(
        !empty.status.success() && empty.stderr.contains("stdin"),
        "{empty:?}"
    );
    run_stdin(&env, &["create"], "alice", "correct horse battery\n").ok();
    let again = run_stdin(&env, &["create"], "alice", "correct horse battery\n");
    assert!(
        !again.status.success() && again.stderr.contains("exists"),
        "{again:?}"
    );
    let list = env.run_with_store(&["accounts", "list"], &["--json"]).ok();
    let v: serde_json::Value = serde_json::from_str(&list.stdout).unwrap();
    assert_eq!(v[0]["name"], "alice");
    assert_eq!(v[0]["disabled"], false);
    assert!(!list.stdout.contains("argon2"), "no hashes in listings");
    env.run_with_store(&["accounts", "disable"], &["alice"])
        .ok();
    let list = env.run_with_store(&["accounts", "list"], &[]).ok();
    assert!(list.stdout.contains("disabled"), "{list:?}");
    run_stdin(
        &env,
        &["reset-password"],
        "alice",
        "another long password\n",
    )
    .ok();
    let missing = run_stdin(
        &env,
        &["reset-password"],
        "nobody",
        "another long password\n",
    );
    assert!(!missing.status.success(), "{missing:?}");
}
