//! The `keyguard` command line (DESIGN.md §3). Key management commands write the store
//! directly; a running gateway picks the change up within a second.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use clap::{Args, Parser, Subcommand};
use keyguard_config::Config;
use keyguard_policy::key::parse_allow_ip;
use keyguard_policy::{DialectKind, KeyStatus, Scope, Scopes};

use crate::assertion::{self, SigningKey};
use crate::secrets::{random_bytes, MasterKey};
use crate::store::edit::{self, Change, Cooldowns, Outcome, Requester};
use crate::store::redis::RedisStore;
use crate::store::{self, NewCredential, NewKey, Store};
use keyguard_config::StoreConfig;
use std::sync::Arc;

/// Keyguard: API-key abuse protection for exchange trading APIs.
#[derive(Debug, Parser)]
#[command(name = "keyguard", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log lines as `text` (default) or `json` (one object per line, for log shippers);
    /// the environment variable KEYGUARD_LOG_FORMAT sets the same.
    #[arg(long, global = true, value_enum)]
    log_format: Option<LogFormat>,
}

/// How log lines are written to stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

impl Cli {
    /// `--log-format`, else `KEYGUARD_LOG_FORMAT`, else text.
    pub fn log_format(&self) -> Result<LogFormat, String> {
        if let Some(f) = self.log_format {
            return Ok(f);
        }
        match std::env::var("KEYGUARD_LOG_FORMAT").as_deref() {
            Err(_) | Ok("") | Ok("text") => Ok(LogFormat::Text),
            Ok("json") => Ok(LogFormat::Json),
            Ok(other) => Err(format!(
                "KEYGUARD_LOG_FORMAT={other:?}: expected \"text\" or \"json\""
            )),
        }
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the gateway.
    Serve(ServeArgs),
    /// Validate a config file and exit (non-zero with file:line: key: message on error).
    CheckConfig(ConfigArg),
    /// Manage API keys.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Print what upstreams need to verify `X-Keyguard-Assertion`: a JWKS (RFC 7517) with
    /// the current key and, for one TTL after a rotation, the previous one. For HS256 the
    /// JWKS holds the shared secret: hand it to the exchange over a private channel.
    AssertionKey(AssertionKeyArgs),
    /// Manage web UI accounts (passwords are read from stdin, never from arguments).
    #[command(subcommand)]
    Accounts(AccountsCommand),
    /// Manage admin API bearer tokens.
    #[command(subcommand)]
    Tokens(TokensCommand),
    /// Freeze withdrawals (globally, for an asset or for an account) at once.
    Freeze(FreezeArgs),
    /// Lift a withdrawal freeze.
    Unfreeze(FreezeArgs),
    /// Copy an embedded store (keys, freezes, nonces, velocity ledger, learned networks)
    /// into Redis, for running several replicas.
    Migrate(MigrateArgs),
}

#[derive(Debug, Args)]
struct MigrateArgs {
    /// The data dir of the embedded store.
    #[arg(long)]
    from: PathBuf,
    /// The Redis to copy into: redis://HOST:PORT[/DB] or rediss://…; several,
    /// comma-separated, for the seed nodes of a Redis Cluster.
    #[arg(long)]
    to: String,
    /// The config whose velocity windows say which ledger entries still count (and
    /// whose [store] prefix to use); without it, the last 30 days of the ledger are
    /// copied under the prefix `kg`.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Environment variable holding the Redis password.
    #[arg(long)]
    password_env: Option<String>,
    /// Overwrite a target that already holds keys.
    #[arg(long)]
    force: bool,
}

#[derive(Debug, Subcommand)]
enum AccountsCommand {
    /// Create an account; reads its password from stdin (one line).
    Create(AccountArgs),
    /// List accounts.
    List {
        #[command(flatten)]
        store: StoreArgs,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Refuse the account's logins and end its sessions at once.
    Disable(AccountArgs),
    /// Allow the account's logins again.
    Enable(AccountArgs),
    /// Set a new password (from stdin); ends every session and lifts a lockout.
    ResetPassword(AccountArgs),
    /// Turn two-factor login off (a lost phone); ends every session. The user enrols again.
    ResetTotp(AccountArgs),
}

#[derive(Debug, Subcommand)]
enum TokensCommand {
    /// Create a token; prints it once (it is stored hashed).
    Create {
        #[command(flatten)]
        store: StoreArgs,
        /// Comma-separated: admin:read, admin:write.
        #[arg(long)]
        scopes: String,
        /// What it is for.
        #[arg(long, default_value = "")]
        label: String,
        /// Who (audit log; defaults to $USER).
        #[arg(long)]
        actor: Option<String>,
    },
    /// List tokens (never their secrets).
    List {
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Revoke a token at once.
    Revoke {
        #[command(flatten)]
        store: StoreArgs,
        /// Token id (the part after `kgt_`, before the second `_`).
        id: String,
        /// Who (audit log; defaults to $USER).
        #[arg(long)]
        actor: Option<String>,
    },
}

#[derive(Debug, Args)]
struct AccountArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// Account name (the `account` of the keys it owns).
    name: String,
    /// Why (recorded in the audit log).
    #[arg(long, default_value = "operator request")]
    reason: String,
    /// Who (recorded in the audit log; defaults to $USER).
    #[arg(long)]
    actor: Option<String>,
}

#[derive(Debug, Args)]
struct AssertionKeyArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// Make a new key; the old one stays in the JWKS for one TTL. A running gateway
    /// signs with the new key within a second.
    #[arg(long)]
    rotate: bool,
    /// Print the Ed25519 public key as SPKI PEM instead (`alg = "EdDSA"` only).
    #[arg(long)]
    pem: bool,
    /// Why (recorded in the audit log with a rotation).
    #[arg(long, default_value = "assertion key rotation")]
    reason: String,
    /// Who (recorded in the audit log; defaults to $USER).
    #[arg(long)]
    actor: Option<String>,
}

#[derive(Debug, Args)]
struct FreezeArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// Freeze every withdrawal.
    #[arg(long, conflicts_with_all = ["asset", "account"], required_unless_present_any = ["asset", "account"])]
    global: bool,
    /// Freeze withdrawals of one asset.
    #[arg(long, conflicts_with = "account")]
    asset: Option<String>,
    /// Freeze withdrawals of one account.
    #[arg(long)]
    account: Option<String>,
    /// Why (recorded in the audit log).
    #[arg(long)]
    reason: String,
    /// Who (recorded in the audit log; defaults to $USER).
    #[arg(long)]
    actor: Option<String>,
}

#[derive(Debug, Args)]
struct ConfigArg {
    /// The TOML config file.
    #[arg(long)]
    config: PathBuf,
}

#[derive(Debug, Args)]
struct StoreArgs {
    /// The TOML config file.
    #[arg(long)]
    config: PathBuf,
    /// Data directory (overrides `server.data_dir`).
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct ServeArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// Exchange-facing listen address (overrides `server.listen`).
    #[arg(long)]
    listen: Option<std::net::SocketAddr>,
    /// Admin listen address (overrides `server.admin_listen`).
    #[arg(long)]
    admin_listen: Option<std::net::SocketAddr>,
    /// Upstream base URL, e.g. http://127.0.0.1:9000 (overrides `server.upstream`).
    #[arg(long)]
    upstream: Option<String>,
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
    /// Create a key; prints the secret once.
    Create(CreateArgs),
    /// List keys (never secrets).
    List {
        #[command(flatten)]
        store: StoreArgs,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show one key (never its secret).
    Show {
        #[command(flatten)]
        store: StoreArgs,
        /// Key id (kg_…).
        key_id: String,
    },
    /// Suspend a key at once.
    Suspend(StatusArgs),
    /// Resume a suspended key.
    Resume(StatusArgs),
    /// Revoke a key for good.
    Revoke(StatusArgs),
    /// Make a dormant key usable for trades and withdrawals again.
    Reactivate(StatusArgs),
    /// Change a key's allowlist, withdrawal addresses or scopes. Removals apply at once;
    /// additions wait out their cool-down unless `--now`.
    Edit(EditArgs),
    /// List pending (widening) changes waiting out their cool-down.
    Pending {
        #[command(flatten)]
        store: StoreArgs,
        /// Only this key's.
        key_id: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Cancel a pending change (takes effect at once).
    Cancel {
        #[command(flatten)]
        store: StoreArgs,
        /// The pending change's id (see `keys pending`).
        change_id: i64,
        /// Why (recorded in the audit log).
        #[arg(long, default_value = "operator request")]
        reason: String,
        /// Who (recorded in the audit log; defaults to $USER).
        #[arg(long)]
        actor: Option<String>,
    },
}

#[derive(Debug, Args)]
struct EditArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// Key id (kg_…).
    key_id: String,
    /// Allow a network (CIDR or address); repeatable. Widening: waits `[admin] widen_cooldown`.
    #[arg(long = "add-ip")]
    add_ip: Vec<String>,
    /// Stop allowing a network; repeatable. Immediate (unless it is the last one).
    #[arg(long = "remove-ip")]
    remove_ip: Vec<String>,
    /// Grant a scope (read, trade, withdraw); repeatable. Widening.
    #[arg(long = "add-scope")]
    add_scope: Vec<String>,
    /// Remove a scope; repeatable. Immediate.
    #[arg(long = "remove-scope")]
    remove_scope: Vec<String>,
    /// Allow a withdrawal destination ASSET:ADDRESS; repeatable. Waits
    /// `[withdraw] address_cooldown_secs`.
    #[arg(long = "add-address")]
    add_address: Vec<String>,
    /// Remove a withdrawal destination ASSET:ADDRESS; repeatable. Immediate.
    #[arg(long = "remove-address")]
    remove_address: Vec<String>,
    /// Apply widening changes at once, skipping their cool-down (audited; needs --reason).
    #[arg(long)]
    now: bool,
    /// Why (recorded in the audit log).
    #[arg(long)]
    reason: Option<String>,
    /// Who (recorded in the audit log; defaults to $USER).
    #[arg(long)]
    actor: Option<String>,
    /// Print the outcomes as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct StatusArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// Key id (kg_…).
    key_id: String,
    /// Why (kept with the key and recorded in the audit log).
    #[arg(long, default_value = "operator request")]
    reason: String,
    /// Who (recorded in the audit log; defaults to $USER).
    #[arg(long)]
    actor: Option<String>,
}

#[derive(Debug, Args)]
struct CreateArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// The account the key acts for.
    #[arg(long)]
    account: String,
    /// Comma-separated scopes: read, trade, withdraw.
    #[arg(long)]
    scopes: String,
    /// Allowed source network (CIDR or address); repeatable. Required for withdraw.
    #[arg(long = "allow-ip")]
    allow_ip: Vec<String>,
    /// Allowed withdrawal destination ASSET:ADDRESS; repeatable.
    #[arg(long = "withdraw-address")]
    withdraw_address: Vec<String>,
    /// A network the key's owner uses (CIDR or address); repeatable. Known from the
    /// start for the new-IP rule, so the key's first use from anywhere else is on
    /// probation instead of being trusted as a first use.
    #[arg(long = "trust-ip")]
    trust_ip: Vec<String>,
    /// Free-text label.
    #[arg(long, default_value = "")]
    label: String,
    /// Days until the key expires.
    #[arg(long)]
    expires_in_days: Option<u64>,
    /// Register an Ed25519 public key (base64 of the 32 raw bytes or of an SPKI DER)
    /// instead of generating a shared secret. Binance only.
    #[arg(long)]
    public_key: Option<String>,
    /// A canary key: it looks and signs like any other, but is never forwarded. Plant it
    /// where leaks happen (config repositories, log archives, support tools, a decoy
    /// for a trader); its first correctly signed use is refused like a key outside its
    /// allowlist, alerted, and blocks the client's network for every key ([canary]).
    #[arg(long)]
    canary: bool,
    /// Print JSON `{"key_id","api_key","secret"}`.
    #[arg(long)]
    json: bool,
}

/// Runs the parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(args) => serve(args),
        Command::CheckConfig(args) => {
            let cfg = Config::load(&args.config)?;
            // The same checks a reload makes: certificates and keys are read and parsed.
            crate::reload::validate(&cfg)?;
            println!(
                "{}: ok ({} dialect, {} routes)",
                args.config.display(),
                cfg.dialect.kind.as_str(),
                cfg.routes.routes().len()
            );
            Ok(())
        }
        Command::AssertionKey(args) => assertion_key(args),
        Command::Keys(cmd) => keys(cmd),
        Command::Accounts(cmd) => accounts_cmd(cmd),
        Command::Tokens(cmd) => tokens_cmd(cmd),
        Command::Freeze(args) => freeze(args, true),
        Command::Unfreeze(args) => freeze(args, false),
        Command::Migrate(args) => migrate(args),
    }
}

/// The Redis store of `cfg`, if it names one.
fn redis_store(cfg: &Config) -> anyhow::Result<Option<Arc<RedisStore>>> {
    match &cfg.store {
        StoreConfig::Embedded => Ok(None),
        StoreConfig::Redis(rc) => {
            // The CLI talks to Redis once; a short deadline would only make it flaky.
            let mut rc = rc.clone();
            rc.timeout_ms = rc.timeout_ms.max(5_000);
            Ok(Some(RedisStore::new(&rc)?))
        }
    }
}

/// Runs one async operation on Redis from the (synchronous) CLI.
fn on_redis<T>(f: impl std::future::Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(f)
}

fn migrate(args: MigrateArgs) -> anyhow::Result<()> {
    let cfg = args.config.as_deref().map(Config::load).transpose()?;
    let nodes: Vec<String> = args.to.split(',').map(|s| s.trim().to_owned()).collect();
    let target = if nodes.len() > 1 {
        keyguard_config::RedisTarget::Cluster(nodes)
    } else {
        keyguard_config::RedisTarget::Single(args.to.clone())
    };
    let prefix = match cfg.as_ref().map(|c| &c.store) {
        Some(StoreConfig::Redis(rc)) => rc.prefix.clone(),
        _ => "kg".to_owned(),
    };
    let rc = keyguard_config::RedisConfig {
        target,
        password_env: args.password_env.clone(),
        username_env: None,
        timeout_ms: 10_000,
        read_when_unavailable: keyguard_config::ReadWhenUnavailable::Deny,
        local_read_rate: 1,
        prefix,
    };
    let store = RedisStore::new(&rc)?;
    let velocity = match &cfg {
        Some(c) => c.velocity.clone(),
        None => keyguard_policy::velocity::VelocityConfig {
            rules: vec![keyguard_policy::velocity::VelocityRule {
                kind: keyguard_policy::velocity::LedgerKind::Withdraw,
                subject: keyguard_policy::velocity::SubjectKind::Key,
                asset: keyguard_policy::velocity::AssetMatch::Any,
                window_ms: 30 * 86_400_000,
                max_amount: None,
                max_count: Some(u64::MAX),
            }],
        },
    };
    let done = on_redis(crate::store::redis::migrate::migrate(
        &args.from, &store, &velocity, args.force,
    ))?;
    println!("{}", serde_json::to_string(&done)?);
    Ok(())
}

/// `accounts disable|enable`, on whichever store the config names.
fn set_disabled(a: AccountArgs, disabled: bool) -> anyhow::Result<()> {
    let cfg = load(&a.store)?;
    let who = actor(a.actor);
    match redis_store(&cfg)? {
        Some(r) => on_redis(crate::accounts::on_redis::set_disabled(
            &r, &a.name, disabled, &who, &a.reason,
        ))?,
        None => {
            let mut conn = Store::open(&cfg.server.data_dir)?.connect()?;
            crate::accounts::set_disabled(&mut conn, &a.name, disabled, &who, &a.reason)?;
        }
    }
    if disabled {
        eprintln!("account {} disabled; its sessions ended", a.name);
    } else {
        eprintln!("account {} enabled", a.name);
    }
    Ok(())
}

fn actor(given: Option<String>) -> String {
    given
        .or_else(|| std::env::var("USER").ok())
        .filter(|a| !a.trim().is_empty())
        .unwrap_or_else(|| "operator".to_string())
}

fn assertion_key(args: AssertionKeyArgs) -> anyhow::Result<()> {
    let cfg = load(&args.store)?;
    let (alg, path) = (cfg.assertion.alg, cfg.assertion.key_file.path());
    if args.rotate {
        let old = SigningKey::load_or_create(alg, path)?;
        let new = assertion::rotate(alg, path)?;
        let conn = Store::open(&cfg.server.data_dir)?.connect()?;
        store::record_admin_event(
            &conn,
            &actor(args.actor),
            "assertion_key_rotate",
            &format!("{} -> {}", old.kid(), new.kid()),
            &args.reason,
        )?;
        eprintln!(
            "assertion key rotated: {} -> {} (the old key stays in the JWKS for {} s)",
            old.kid(),
            new.kid(),
            cfg.assertion.ttl_secs
        );
    }
    if args.pem {
        let key = SigningKey::load_or_create(alg, path)?;
        let Some(pem) = key.public_key_pem() else {
            bail!(
                "--pem needs [assertion] alg = \"EdDSA\": an HS256 key is a shared secret \
                 with no public half (the JWKS carries it)"
            );
        };
        print!("{pem}");
        return Ok(());
    }
    let set = assertion::jwks(alg, path, cfg.assertion.ttl_secs)?;
    println!("{}", serde_json::to_string_pretty(&set)?);
    Ok(())
}

fn freeze(args: FreezeArgs, frozen: bool) -> anyhow::Result<()> {
    let cfg = load(&args.store)?;
    let scope = match (args.global, args.asset, args.account) {
        (true, None, None) => store::FreezeScope::Global,
        (false, Some(asset), None) if !asset.trim().is_empty() => {
            store::FreezeScope::Asset(asset.trim().to_ascii_lowercase())
        }
        (false, None, Some(account)) if !account.trim().is_empty() => {
            store::FreezeScope::Account(account.trim().to_string())
        }
        _ => bail!("name exactly one of --global, --asset ASSET, --account ACCOUNT"),
    };
    let changed = match redis_store(&cfg)? {
        Some(r) => on_redis(r.set_freeze(&scope, frozen, &actor(args.actor), &args.reason))?,
        None => {
            let mut conn = Store::open(&cfg.server.data_dir)?.connect()?;
            store::set_freeze(&mut conn, &scope, frozen, &actor(args.actor), &args.reason)?
        }
    };
    let what = if frozen { "frozen" } else { "unfrozen" };
    if changed {
        eprintln!("withdrawals {what}: {scope:?}");
    } else {
        eprintln!("nothing to do: withdrawals already {what} for {scope:?}");
    }
    Ok(())
}

fn load(args: &StoreArgs) -> anyhow::Result<Config> {
    let mut cfg = Config::load(&args.config)?;
    if let Some(dir) = &args.data_dir {
        cfg.set_data_dir(dir);
    }
    Ok(cfg)
}

fn master(cfg: &Config) -> anyhow::Result<MasterKey> {
    MasterKey::load_or_create(
        &cfg.secrets.master_key_env,
        cfg.secrets.master_key_file.path(),
    )
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    // A reload reads the file again with the same flags on top, so a flag keeps winning.
    let load_with_flags = move || -> anyhow::Result<Config> {
        let mut cfg = load(&args.store)?;
        if let Some(l) = args.listen {
            cfg.server.listen = l;
        }
        if let Some(a) = args.admin_listen {
            cfg.server.admin_listen = Some(a);
        }
        if let Some(u) = &args.upstream {
            cfg.set_upstream(u)
                .map_err(|e| anyhow::anyhow!("--upstream: {e}"))?;
        }
        Ok(cfg)
    };
    let cfg = load_with_flags()?;
    // This runtime runs only the background work (key refresh, sweeps, alerts, signals);
    // requests are served by the worker runtimes that `app::run` starts.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .thread_name("keyguard")
        .build()?;
    runtime.block_on(crate::app::run(cfg, Box::new(load_with_flags)))
}

fn keys(cmd: KeysCommand) -> anyhow::Result<()> {
    match cmd {
        KeysCommand::Create(args) => create_key(args),
        KeysCommand::List { store, json } => {
            let cfg = load(&store)?;
            let keys = match redis_store(&cfg)? {
                Some(r) => on_redis(r.list_keys(None))?,
                None => {
                    let mut conn = Store::open(&cfg.server.data_dir)?.connect()?;
                    store::edit::apply_due(&mut conn, store::now_ms())?;
                    store::list_keys(&conn, None)?
                }
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&keys)?);
            } else {
                println!(
                    "{:<20} {:<16} {:<10} {:<20} {:<24} label",
                    "key_id", "account", "status", "scopes", "allow_ips"
                );
                for k in keys {
                    println!(
                        "{:<20} {:<16} {:<10} {:<20} {:<24} {}",
                        k.key_id,
                        k.account,
                        k.status,
                        k.scopes.join(","),
                        if k.allow_ips.is_empty() {
                            "(any)".to_string()
                        } else {
                            k.allow_ips.join(",")
                        },
                        if k.canary {
                            format!("{} [canary]", k.label)
                        } else {
                            k.label
                        }
                    );
                }
            }
            Ok(())
        }
        KeysCommand::Show { store, key_id } => {
            let cfg = load(&store)?;
            if let Some(r) = redis_store(&cfg)? {
                let keys = on_redis(r.list_keys(Some(&key_id)))?;
                println!("{}", serde_json::to_string_pretty(&keys[0])?);
                return Ok(());
            }
            let mut conn = Store::open(&cfg.server.data_dir)?.connect()?;
            store::edit::apply_due(&mut conn, store::now_ms())?;
            let keys = store::list_keys(&conn, Some(&key_id))?;
            match keys.first() {
                Some(k) => {
                    let mut v = serde_json::to_value(k)?;
                    v["pending_changes"] =
                        serde_json::to_value(edit::list_pending(&conn, Some(&key_id), None)?)?;
                    println!("{}", serde_json::to_string_pretty(&v)?)
                }
                None => bail!("no key with id {key_id}"),
            }
            Ok(())
        }
        KeysCommand::Suspend(a) => set_status(a, KeyStatus::Suspended),
        KeysCommand::Resume(a) => set_status(a, KeyStatus::Active),
        KeysCommand::Revoke(a) => set_status(a, KeyStatus::Revoked),
        KeysCommand::Edit(a) => edit_key(a),
        KeysCommand::Pending {
            store,
            key_id,
            json,
        } => {
            let cfg = load(&store)?;
            let pending = match redis_store(&cfg)? {
                // The running replicas apply due changes; the CLI only reads.
                Some(r) => on_redis(r.list_pending(key_id.as_deref(), None))?,
                None => {
                    let mut conn = Store::open(&cfg.server.data_dir)?.connect()?;
                    store::edit::apply_due(&mut conn, store::now_ms())?;
                    edit::list_pending(&conn, key_id.as_deref(), None)?
                }
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&pending)?);
            } else if pending.is_empty() {
                eprintln!("no pending changes");
            } else {
                println!(
                    "{:<6} {:<20} {:<21} {:<16} change",
                    "id", "key_id", "effective", "asked by"
                );
                for p in pending {
                    println!(
                        "{:<6} {:<20} {:<21} {:<16} {}",
                        p.id,
                        p.key_id,
                        time_text(p.effective_at),
                        p.actor,
                        p.description
                    );
                }
            }
            Ok(())
        }
        KeysCommand::Cancel {
            store,
            change_id,
            reason,
            actor: who,
        } => {
            let cfg = load(&store)?;
            let p = match redis_store(&cfg)? {
                Some(r) => on_redis(async {
                    Ok(r.cancel_pending(change_id, None, &actor(who), &reason)
                        .await?)
                })?,
                None => {
                    let mut conn = Store::open(&cfg.server.data_dir)?.connect()?;
                    edit::cancel(
                        &mut conn,
                        change_id,
                        None,
                        &actor(who),
                        &reason,
                        store::now_ms(),
                    )?
                }
            };
            eprintln!("#{} cancelled: {} on {}", p.id, p.description, p.key_id);
            Ok(())
        }
        KeysCommand::Reactivate(a) => {
            let cfg = load(&a.store)?;
            match redis_store(&cfg)? {
                Some(r) => on_redis(r.reactivate(&a.key_id, &actor(a.actor), &a.reason))?,
                None => {
                    let mut conn = Store::open(&cfg.server.data_dir)?.connect()?;
                    store::reactivate(&mut conn, &a.key_id, &actor(a.actor), &a.reason)?;
                }
            }
            eprintln!("{}: reactivated", a.key_id);
            Ok(())
        }
    }
}

fn set_status(args: StatusArgs, status: KeyStatus) -> anyhow::Result<()> {
    let cfg = load(&args.store)?;
    if let Some(r) = redis_store(&cfg)? {
        on_redis(r.set_status(&args.key_id, status, &actor(args.actor), &args.reason))?;
        eprintln!("{}: {}", args.key_id, status.as_str());
        return Ok(());
    }
    let mut conn = Store::open(&cfg.server.data_dir)?.connect()?;
    store::set_status(
        &mut conn,
        &args.key_id,
        status,
        &actor(args.actor),
        &args.reason,
    )?;
    eprintln!("{}: {}", args.key_id, status.as_str());
    Ok(())
}

/// Characters of generated API keys and secrets: unambiguous in every client's config.
const ALPHANUM: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

/// `n` uniformly random alphanumeric characters (rejection sampling: no modulo bias).
pub fn random_alnum(n: usize) -> anyhow::Result<String> {
    let mut out = String::with_capacity(n);
    while out.len() < n {
        let buf: [u8; 64] = random_bytes()?;
        for b in buf {
            // 248 = 62 * 4: values at or above it would favour the first characters.
            if b < 248 && out.len() < n {
                out.push(ALPHANUM[(b % 62) as usize] as char);
            }
        }
    }
    Ok(out)
}

/// An Ed25519 public key: base64 of the 32 raw bytes or of its SPKI DER.
pub fn parse_public_key(text: &str) -> anyhow::Result<[u8; 32]> {
    let bytes = STANDARD
        .decode(text.trim())
        .context("--public-key must be base64")?;
    let raw = match bytes.len() {
        32 => bytes,
        // SubjectPublicKeyInfo: 12-byte prefix then the key.
        44 if bytes.starts_with(&[0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70]) => {
            bytes[12..].to_vec()
        }
        n => bail!("--public-key: expected a 32-byte Ed25519 key or its SPKI DER, got {n} bytes"),
    };
    Ok(raw.try_into().expect("length checked"))
}

fn create_key(args: CreateArgs) -> anyhow::Result<()> {
    let cfg = load(&args.store)?;
    let scopes: Scopes = args.scopes.parse().map_err(|_| {
        anyhow::anyhow!("--scopes: expected a comma-separated list of read, trade, withdraw")
    })?;
    if scopes.is_empty() {
        bail!("--scopes: a key needs at least one scope");
    }
    if args.account.trim().is_empty() {
        bail!("--account must not be empty");
    }
    let allow_ips = args
        .allow_ip
        .iter()
        .map(|s| parse_allow_ip(s).map_err(|e| anyhow::anyhow!("--allow-ip: {e}")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    // A canary can never withdraw, and one that looks like an unrestricted withdraw key is
    // the most tempting bait.
    if scopes.contains(Scope::Withdraw) && allow_ips.is_empty() && !args.canary {
        bail!("a key with the withdraw scope needs at least one --allow-ip: a leaked withdraw key must not work from anywhere");
    }
    let mut addresses = Vec::new();
    for spec in &args.withdraw_address {
        let (asset, address) = spec
            .split_once(':')
            .filter(|(a, b)| !a.is_empty() && !b.is_empty())
            .ok_or_else(|| {
                anyhow::anyhow!("--withdraw-address {spec:?}: expected ASSET:ADDRESS")
            })?;
        // The same validation as `keys edit --add-address` (and the web UI).
        match crate::store::edit::Change::address(asset, address, true) {
            Ok(crate::store::edit::Change::AddAddress { asset, address }) => {
                addresses.push((asset, address))
            }
            Ok(_) => unreachable!("an added address"),
            Err(e) => bail!("--withdraw-address {spec:?}: {e}"),
        }
    }
    if !addresses.is_empty() && !scopes.contains(Scope::Withdraw) {
        bail!("--withdraw-address given but the key has no withdraw scope");
    }
    let trusted_ips = args
        .trust_ip
        .iter()
        .map(|s| parse_allow_ip(s).map_err(|e| anyhow::anyhow!("--trust-ip: {e}")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let key_id = format!("kg_{}", hex::encode(random_bytes::<8>()?));
    let api_key = random_alnum(64)?;
    let (credential, secret) = match &args.public_key {
        Some(pk) => {
            if cfg.dialect.kind != DialectKind::Binance {
                bail!("--public-key (Ed25519 keys) is only supported by the binance dialect");
            }
            (NewCredential::Ed25519(parse_public_key(pk)?), None)
        }
        None => {
            let secret = match cfg.dialect.kind {
                // Kraken clients base64-decode their secret before using it as the HMAC key.
                DialectKind::Kraken => STANDARD.encode(random_bytes::<64>()?),
                _ => random_alnum(64)?,
            };
            (
                NewCredential::Hmac(secret.as_bytes().to_vec()),
                Some(secret),
            )
        }
    };
    let expires_at = args
        .expires_in_days
        .map(|d| store::now_ms() + d * 86_400_000);
    let master = master(&cfg)?;
    let new_key = NewKey {
        key_id: key_id.clone(),
        api_key: api_key.clone(),
        account: args.account.clone(),
        label: args.label.clone(),
        scopes,
        allow_ips,
        trusted_ips,
        withdraw_addresses: addresses,
        expires_at,
        credential,
        canary: args.canary,
    };
    match redis_store(&cfg)? {
        Some(r) => on_redis(r.insert_key(&master, &new_key))?,
        None => {
            let store = Store::open(&cfg.server.data_dir)?;
            let mut conn = store.connect()?;
            store::insert_key(&mut conn, &master, &new_key)?;
        }
    }
    if args.json {
        println!(
            "{}",
            serde_json::json!({"key_id": key_id, "api_key": api_key, "secret": secret})
        );
    } else {
        println!("key_id:  {key_id}\napi_key: {api_key}");
        if let Some(s) = secret {
            println!("secret:  {s}");
            eprintln!("The secret is shown only now; it is stored encrypted and cannot be displayed again.");
        }
    }
    Ok(())
}

/// One line from stdin without its line ending; the password never appears in argv.
fn read_password() -> anyhow::Result<String> {
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .context("reading the password from stdin")?;
    let pw = line.trim_end_matches(['\n', '\r']).to_owned();
    if pw.is_empty() {
        bail!("no password on stdin (pipe it in: `printf '%s\\n' \"$PW\" | keyguard accounts …`)");
    }
    Ok(pw)
}

fn tokens_cmd(cmd: TokensCommand) -> anyhow::Result<()> {
    use crate::admin::tokens;
    match cmd {
        TokensCommand::Create {
            store,
            scopes,
            label,
            actor: who,
        } => {
            let cfg = load(&store)?;
            let scopes: tokens::TokenScopes = scopes
                .parse()
                .map_err(|e| anyhow::anyhow!("--scopes: {e}"))?;
            let (id, token) = match redis_store(&cfg)? {
                Some(r) => on_redis(tokens::create_on(&r, scopes, &label, &actor(who)))?,
                None => {
                    let conn = Store::open(&cfg.server.data_dir)?.connect()?;
                    tokens::create(&conn, scopes, &label, &actor(who))?
                }
            };
            println!("{token}");
            eprintln!("token {id} ({scopes}): shown only now; it is stored hashed");
        }
        TokensCommand::List { store } => {
            let cfg = load(&store)?;
            let list = match redis_store(&cfg)? {
                Some(r) => on_redis(tokens::list_on(&r))?,
                None => tokens::list(&Store::open(&cfg.server.data_dir)?.connect()?)?,
            };
            println!("{}", serde_json::to_string_pretty(&list)?);
        }
        TokensCommand::Revoke {
            store,
            id,
            actor: who,
        } => {
            let cfg = load(&store)?;
            match redis_store(&cfg)? {
                Some(r) => on_redis(tokens::revoke_on(&r, &id, &actor(who)))?,
                None => {
                    let conn = Store::open(&cfg.server.data_dir)?.connect()?;
                    tokens::revoke(&conn, &id, &actor(who))?;
                }
            }
            eprintln!("token {id} revoked");
        }
    }
    Ok(())
}

fn accounts_cmd(cmd: AccountsCommand) -> anyhow::Result<()> {
    use crate::accounts;
    match cmd {
        AccountsCommand::Create(a) => {
            let cfg = load(&a.store)?;
            let pw = read_password()?;
            match redis_store(&cfg)? {
                Some(r) => on_redis(accounts::on_redis::create(
                    &r,
                    &a.name,
                    &pw,
                    &actor(a.actor),
                ))?,
                None => {
                    let conn = Store::open(&cfg.server.data_dir)?.connect()?;
                    accounts::create(&conn, &a.name, &pw, &actor(a.actor))?;
                }
            }
            eprintln!(
                "account {} created; it owns the keys whose account is {0}",
                a.name
            );
        }
        AccountsCommand::List { store, json } => {
            let cfg = load(&store)?;
            let list = match redis_store(&cfg)? {
                Some(r) => on_redis(accounts::on_redis::list(&r))?,
                None => accounts::list(&Store::open(&cfg.server.data_dir)?.connect()?)?,
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                println!("{:<24} {:<9} {:<5} created", "name", "status", "totp");
                let now = store::now_ms();
                for a in list {
                    let status = if a.disabled {
                        "disabled"
                    } else if a.locked_until > now {
                        "locked"
                    } else {
                        "active"
                    };
                    println!(
                        "{:<24} {:<9} {:<5} {}",
                        a.name,
                        status,
                        if a.totp { "yes" } else { "no" },
                        time_text(a.created_at)
                    );
                }
            }
        }
        AccountsCommand::Disable(a) => set_disabled(a, true)?,
        AccountsCommand::Enable(a) => set_disabled(a, false)?,
        AccountsCommand::ResetTotp(a) => {
            let cfg = load(&a.store)?;
            match redis_store(&cfg)? {
                Some(r) => on_redis(accounts::on_redis::reset_totp(
                    &r,
                    &a.name,
                    &actor(a.actor),
                    &a.reason,
                ))?,
                None => {
                    let mut conn = Store::open(&cfg.server.data_dir)?.connect()?;
                    accounts::reset_totp(&mut conn, &a.name, &actor(a.actor), &a.reason)?;
                }
            }
            eprintln!("two-factor login of {} is off; its sessions ended", a.name);
        }
        AccountsCommand::ResetPassword(a) => {
            let cfg = load(&a.store)?;
            let pw = read_password()?;
            match redis_store(&cfg)? {
                Some(r) => on_redis(accounts::on_redis::set_password(
                    &r,
                    &a.name,
                    &pw,
                    &actor(a.actor),
                ))?,
                None => {
                    let mut conn = Store::open(&cfg.server.data_dir)?.connect()?;
                    accounts::set_password(&mut conn, &a.name, &pw, &actor(a.actor))?;
                }
            }
            eprintln!("password of {} set; its sessions ended", a.name);
        }
    }
    Ok(())
}

/// A time as the audit log writes it (`2026-01-02T03:04:05Z`).
fn time_text(ms: u64) -> String {
    crate::audit::timestamp(std::time::UNIX_EPOCH + Duration::from_millis(ms))
}

/// The cool-downs the config sets for widening changes.
pub fn cooldowns(cfg: &Config) -> Cooldowns {
    Cooldowns {
        widen_ms: cfg.admin.widen_cooldown_ms,
        address_ms: cfg.withdraw.address_cooldown_ms,
    }
}

fn edit_key(a: EditArgs) -> anyhow::Result<()> {
    let cfg = load(&a.store)?;
    let mut changes = Vec::new();
    for s in &a.add_ip {
        changes.push(Change::AddIp(
            parse_allow_ip(s).map_err(|e| anyhow::anyhow!("--add-ip: {e}"))?,
        ));
    }
    for s in &a.add_scope {
        let scope: Scope = s
            .parse()
            .map_err(|_| anyhow::anyhow!("--add-scope {s:?}: expected read, trade or withdraw"))?;
        changes.push(Change::AddScope(scope));
    }
    for s in &a.add_address {
        changes.push(
            Change::parse_address(s, true).map_err(|e| anyhow::anyhow!("--add-address {e}"))?,
        );
    }
    // Removals last: with additions queued first, removing the old last entry of an
    // allowlist never leaves the key open to every network in between.
    for s in &a.remove_ip {
        changes.push(Change::RemoveIp(
            parse_allow_ip(s).map_err(|e| anyhow::anyhow!("--remove-ip: {e}"))?,
        ));
    }
    for s in &a.remove_scope {
        let scope: Scope = s.parse().map_err(|_| {
            anyhow::anyhow!("--remove-scope {s:?}: expected read, trade or withdraw")
        })?;
        changes.push(Change::RemoveScope(scope));
    }
    for s in &a.remove_address {
        changes.push(
            Change::parse_address(s, false).map_err(|e| anyhow::anyhow!("--remove-address {e}"))?,
        );
    }
    if changes.is_empty() {
        bail!("nothing to change: give --add-ip, --remove-ip, --add-scope, --remove-scope, --add-address or --remove-address");
    }
    let reason = match (&a.reason, a.now) {
        (Some(r), _) if !r.trim().is_empty() => r.clone(),
        (_, true) => bail!("--now skips the cool-down that protects the key's owner: say why with --reason (it is audited)"),
        _ => "operator request".to_owned(),
    };
    let who = actor(a.actor);
    let requester = Requester {
        actor: &who,
        reason: &reason,
        now: a.now,
    };
    // One runtime for every change: the store's connection lives on the runtime that
    // made it.
    let redis = match redis_store(&cfg)? {
        Some(r) => Some((
            r,
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?,
        )),
        None => None,
    };
    let mut conn = match redis {
        Some(_) => None,
        None => Some(Store::open(&cfg.server.data_dir)?.connect()?),
    };
    let mut results = Vec::new();
    for c in &changes {
        let outcome = match (&redis, conn.as_mut()) {
            (Some((r, rt)), _) => rt
                .block_on(r.request_edit(
                    &a.key_id,
                    None,
                    c,
                    cooldowns(&cfg),
                    requester,
                    store::now_ms(),
                ))
                .map_err(anyhow::Error::from),
            (None, Some(conn)) => edit::request(
                conn,
                &a.key_id,
                None,
                c,
                cooldowns(&cfg),
                requester,
                store::now_ms(),
            )
            .map_err(anyhow::Error::from),
            (None, None) => unreachable!("the embedded store is opened without redis"),
        }
        .map_err(|e| anyhow::anyhow!("{}: {e}", c.describe()))?;
        if !a.json {
            match &outcome {
                Outcome::Applied => eprintln!("{}: {}: applied", a.key_id, c.describe()),
                Outcome::Unchanged => eprintln!("{}: {}: already so, nothing to do", a.key_id, c.describe()),
                Outcome::Pending { id, effective_at } => eprintln!(
                    "{}: {}: pending #{id}, takes effect {} (cancel with `keyguard keys cancel {id}`)",
                    a.key_id,
                    c.describe(),
                    time_text(*effective_at)
                ),
            }
        }
        results.push(serde_json::json!({
            "change": c.kind(),
            "value": c.value(),
            "outcome": outcome,
        }));
    }
    if a.json {
        println!("{}", serde_json::Value::Array(results));
    }
    Ok(())
}

/// Used by `serve` to bound how long shutdown waits.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
