//! The command line (clap): the daemon (`serve`, `dev`), offline checks
//! (`check`, `policy test`), the audit tools (`audit verify|hash|query`)
//! and the client (`creds`, `lease ...`, `admin-token ...`, `token ...`, `login`,
//! `logout`, `whoami`).
//! Errors print one clear line and exit non-zero.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{anyhow, Context};
use clap::{Args, Parser, Subcommand};

use crate::config::Config;

mod admin_token;
mod audit;
mod client;
pub use client::{render_reconcile, render_status};
pub mod connection;
mod dev;
mod login;
mod token;

#[derive(Debug, Parser)]
#[command(name = "lessor", version, about = "Dynamic secrets broker: workload JWT -> Cedar policy -> short-lived, leased credentials")]
pub struct Cli {
    #[command(subcommand)]
    cmd: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the daemon from a config file.
    Serve {
        #[arg(long, short, env = "LESSOR_CONFIG", default_value = "lessor.toml")]
        config: PathBuf,
        /// Log as JSON lines.
        #[arg(long)]
        log_json: bool,
        /// Serve plain HTTP on a non-loopback address (a TLS-terminating
        /// proxy in front). Same as `allow_plaintext = true`.
        #[arg(long)]
        allow_plaintext: bool,
    },
    /// Run a self-contained dev daemon (SQLite, built-in dev issuer, example
    /// roles and policies), or mint a dev workload token.
    Dev(dev::DevArgs),
    /// Validate a config and its policies without starting.
    Check {
        #[arg(long, short, env = "LESSOR_CONFIG", default_value = "lessor.toml")]
        config: PathBuf,
        /// Also connect to every vendor and run the plugins' harmless
        /// `validate` (who lessor is connected as, missing permissions).
        #[arg(long)]
        connections: bool,
    },
    /// Policy authoring tools.
    Policy {
        #[command(subcommand)]
        cmd: PolicyCmd,
    },
    /// Request a credential for a role with a workload JWT.
    Creds(client::CredsArgs),
    /// Inspect and manage leases.
    Lease {
        #[command(flatten)]
        conn: client::ConnArgs,
        #[command(subcommand)]
        cmd: client::LeaseCmd,
    },
    /// One screen for an SRE: leases by role and state, the oldest overdue
    /// revocation, failing revocations, quota use (admin).
    Status {
        #[command(flatten)]
        conn: client::ConnArgs,
        /// Print the raw JSON.
        #[arg(long)]
        json: bool,
    },
    /// Run one reconcile pass now (admin): every vendor object lessor made
    /// must belong to a live lease; strays past the grace period are
    /// revoked, leases whose object is missing are reported. Exits 1
    /// unless the result is clean.
    Reconcile {
        #[command(flatten)]
        conn: client::ConnArgs,
        /// Print the raw JSON.
        #[arg(long)]
        json: bool,
    },
    /// Root credentials of connections: list, show, set-secret, verify,
    /// approve, activate, rollback, rotate.
    Connection {
        #[command(flatten)]
        conn: client::ConnArgs,
        #[command(subcommand)]
        cmd: connection::ConnectionCmd,
    },
    /// Customer API tokens of an account (as a signed-in person): create
    /// (summary first, token shown once), list, show, rotate, revoke.
    Token {
        #[command(flatten)]
        conn: token::TokenConn,
        #[command(subcommand)]
        cmd: token::TokenCmd,
    },
    /// Admin tokens: create (shown once), list, revoke.
    AdminToken {
        #[command(flatten)]
        conn: client::ConnArgs,
        #[command(subcommand)]
        cmd: admin_token::AdminTokenCmd,
    },
    /// Re-wrap every root credential's data key under a new key-encryption
    /// key (the configured one must still open them).
    Rekey {
        #[arg(long, short, env = "LESSOR_CONFIG", default_value = "lessor.toml")]
        config: PathBuf,
        /// The new key: a file holding 32 bytes, base64.
        #[arg(long)]
        new_file: Option<PathBuf>,
        /// The new key: an environment variable holding 32 bytes, base64.
        #[arg(long)]
        new_env: Option<String>,
        /// The new key: a KMS hook command (with --new-key-id).
        #[arg(long, num_args = 1.., allow_hyphen_values = true)]
        new_command: Option<Vec<String>>,
        #[arg(long)]
        new_key_id: Option<String>,
    },
    /// Audit log tools: verify, hash, query.
    Audit {
        #[command(subcommand)]
        cmd: audit::AuditCmd,
    },
    /// Sign in as a person (device flow through lessor); the session is
    /// kept in ~/.config/lessor/session (0600).
    Login(login::LoginArgs),
    /// End this session (or, with --everywhere, all of yours).
    Logout(login::LogoutArgs),
    /// Who the stored session signs you in as.
    Whoami {
        #[command(flatten)]
        addr: AddrArg,
    },
}

#[derive(Debug, Subcommand)]
enum PolicyCmd {
    /// Run policy test cases (TOML) against the policies.
    Test {
        /// A test file or a directory of them.
        dir: PathBuf,
        /// The policy directory (schema + *.cedar).
        #[arg(long, default_value = "policies")]
        policies: PathBuf,
        /// Take roles from this daemon config too.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
}

/// Shared: where the daemon is.
#[derive(Debug, Clone, Args)]
pub struct AddrArg {
    /// lessor's base URL.
    #[arg(long, env = "LESSOR_ADDR", default_value = "http://127.0.0.1:8200")]
    pub addr: String,
}

/// Entry point for `main`.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.cmd {
        Command::Serve { config, log_json, allow_plaintext } => {
            crate::telemetry::init_logging(log_json);
            let cfg = Config::load_with(&config, |c| c.allow_plaintext |= allow_plaintext)?;
            serve(cfg).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Dev(args) => dev::run(args).await,
        Command::Check { config, connections } => check(&config, connections).await,
        Command::Policy { cmd: PolicyCmd::Test { dir, policies, config } } => policy_test(&dir, &policies, config.as_deref()),
        Command::Creds(args) => client::creds(args).await,
        Command::Lease { conn, cmd } => client::lease(conn, cmd).await,
        Command::Audit { cmd } => audit::run(cmd),
        Command::Connection { conn, cmd } => connection::run(conn, cmd).await,
        Command::Rekey { config, new_file, new_env, new_command, new_key_id } => {
            let cfg = Config::load(&config)?;
            let new = crate::config::KekConfig { file: new_file, env: new_env, command: new_command, key_id: new_key_id };
            connection::rekey(&cfg, &new).await
        }
        Command::Status { conn, json } => client::status(conn, json).await,
        Command::Reconcile { conn, json } => client::reconcile(conn, json).await,
        Command::AdminToken { conn, cmd } => admin_token::run(conn, cmd).await,
        Command::Login(a) => login::login(a).await,
        Command::Logout(a) => login::logout(a).await,
        Command::Whoami { addr } => login::whoami(addr).await,
        Command::Token { conn, cmd } => token::run(conn, cmd).await,
    }
}

/// Binds the configured address and serves until SIGINT/SIGTERM.
pub async fn serve(cfg: Config) -> anyhow::Result<()> {
    // Refuse a bad config (plain HTTP on a public address, say) before
    // binding anything.
    cfg.validate()?;
    let scheme = if cfg.tls.is_some() { "https" } else { "http" };
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .with_context(|| format!("cannot listen on {}", cfg.listen))?;
    let running = crate::server::start(cfg, listener).await?;
    // Machine-readable readiness line (tests and scripts wait for it).
    println!("lessor listening on {scheme}://{}", running.addr);
    running.run_until_signal().await;
    Ok(())
}

async fn check(path: &std::path::Path, connections: bool) -> anyhow::Result<ExitCode> {
    let cfg = Config::load(path)?;
    let roles = crate::plugins::role_infos(&cfg);
    crate::plugins::check_config(&cfg).map_err(|e| anyhow!(e))?;
    let p = crate::policy::Policies::load(&cfg.policies, &roles)?;
    crate::identity::Verifier::new(&cfg.issuers, cfg.limits.max_jwt_bytes, crate::server::http_client()?).map_err(|e| anyhow!(e))?;
    if let Some(people) = &cfg.people {
        for (name, p) in &people.providers {
            p.read_secret(name).map_err(|e| anyhow!(e))?;
        }
    }
    println!(
        "ok: {} issuer(s), {} connection(s), {} role(s), {} policies (version {}) from {}",
        cfg.issuers.len(),
        cfg.connections.len(),
        roles.len(),
        p.len(),
        p.version,
        cfg.policies.display()
    );
    for w in p.warnings() {
        println!("warning: {w}");
    }
    if let Some(t) = &cfg.tls {
        // CAs from files; generated pki CAs are compared at start.
        let mut own = Vec::new();
        for (role, f) in crate::plugins::ca_files(&cfg).map_err(|e| anyhow!(e))? {
            let pem = std::fs::read_to_string(&f).with_context(|| format!("role `{role}`: reading ca.cert_file {f}"))?;
            own.push((role, pem));
        }
        crate::tls::check_client_ca(t, &own)?;
    }
    if !connections {
        return Ok(ExitCode::SUCCESS);
    }
    let http = crate::server::http_client()?;
    let catalog = crate::plugins::Catalog::build_with(&cfg, http, |_| std::sync::Arc::new(lessor_plugin::MemoryState::new()))
        .await
        .map_err(|e| anyhow!(e))?;
    let mut failed = 0;
    for (name, plugin) in &catalog.connections {
        let limit = cfg.leases.call_timeout();
        let checked = lessor_plugin::call::bounded("validate", limit, plugin.validate()).await.unwrap_or_else(|_| {
            Err(lessor_plugin::PluginError::Retryable(format!("no answer within {} (leases.call_timeout)", crate::fmt_duration(limit))))
        });
        match checked {
            Ok(v) => {
                let details: Vec<String> = v.details.iter().map(|(k, v)| format!("{k}={v}")).collect();
                println!("ok    connection `{name}` ({}): connected as {} [{}]", plugin.kind(), v.identity, details.join(", "));
                for w in v.warnings {
                    println!("      warning: {w}");
                }
            }
            Err(e) => {
                failed += 1;
                println!("FAIL  connection `{name}` ({}): {e}", plugin.kind());
            }
        }
    }
    catalog.shutdown().await;
    Ok(if failed == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

fn policy_test(dir: &std::path::Path, policies: &std::path::Path, config: Option<&std::path::Path>) -> anyhow::Result<ExitCode> {
    let (roles, connections) = match config {
        Some(c) => {
            let cfg = Config::load(c)?;
            let connections: Vec<_> = crate::connections::ConnectionMeta::all(&cfg).into_values().map(|m| m.info).collect();
            (crate::plugins::role_infos(&cfg), connections)
        }
        None => (Vec::new(), Vec::new()),
    };
    let results = crate::policy::casefile::run(dir, policies, &roles, &connections).map_err(|e| anyhow!(e))?;
    let failed = results.iter().filter(|r| !r.passed).count();
    for r in &results {
        if r.passed {
            println!("ok    {} :: {}", r.file.display(), r.name);
        } else {
            println!("FAIL  {} :: {}\n      {}", r.file.display(), r.name, r.detail);
        }
    }
    println!("{} passed, {} failed", results.len() - failed, failed);
    Ok(if failed == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}
