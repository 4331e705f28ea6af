//! `lessor connection ...` (root credentials, over the HTTP API) and
//! `lessor rekey` (re-wraps every data key under a new key-encryption key,
//! directly on the store).
//!
//! A secret is read from stdin or `--file`, never from the command line
//! (argv is visible to every user of the machine and lands in shell history).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{anyhow, Context};
use clap::Subcommand;
use secrecy::SecretString;
use serde_json::{json, Value};

use super::client::{call, operator_credential, ConnArgs};
use crate::config::{Config, KekConfig};
use crate::connections::kek::{self, Kek};

#[derive(Debug, Subcommand)]
pub enum ConnectionCmd {
    /// Every connection: environment, owner, active version and age,
    /// review date, last verified, roles, warnings.
    List {
        #[arg(long)]
        json: bool,
    },
    /// One connection and all its versions (never the secret).
    Show { name: String },
    /// Store a new candidate root secret, read from stdin or --file.
    SetSecret {
        name: String,
        /// Read the secret from this file instead of stdin.
        #[arg(long)]
        file: Option<PathBuf>,
        /// Why it changes (kept with the version).
        #[arg(long)]
        reason: String,
    },
    /// Check a version (default: the newest candidate) with the vendor.
    Verify {
        name: String,
        #[arg(long)]
        version: Option<i64>,
    },
    /// Approve a candidate someone else set (production).
    Approve {
        name: String,
        #[arg(long)]
        version: Option<i64>,
    },
    /// Switch issuance to a verified (and approved) candidate.
    Activate {
        name: String,
        #[arg(long)]
        version: Option<i64>,
    },
    /// Return to the previous version while it is retiring.
    Rollback { name: String },
    /// Have lessor make, verify and activate a new root credential.
    Rotate { name: String },
}

fn read_secret(file: Option<&Path>) -> anyhow::Result<SecretString> {
    let mut text = String::new();
    match file {
        Some(f) => {
            text = std::fs::read_to_string(f).with_context(|| format!("reading the secret from {}", f.display()))?;
        }
        None => {
            std::io::stdin().read_to_string(&mut text).context("reading the secret from stdin")?;
        }
    }
    let trimmed = text.trim_end_matches(['\n', '\r']).to_owned();
    zeroize::Zeroize::zeroize(&mut text);
    if trimmed.is_empty() {
        return Err(anyhow!("no secret given: pipe it on stdin or pass --file"));
    }
    Ok(SecretString::from(trimmed))
}

fn s(v: &Value, k: &str) -> String {
    match &v[k] {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn print_version(v: &Value) {
    println!(
        "  v{:<4} {:<10} secret set (fingerprint {}) by {} at {}; reason: {}",
        s(v, "version"),
        s(v, "state"),
        s(v, "fingerprint"),
        s(v, "set_by"),
        s(v, "set_at"),
        s(v, "reason")
    );
    if let Some(r) = v.get("verification").filter(|r| !r.is_null()) {
        let ok = if r["ok"].as_bool().unwrap_or(false) { "ok" } else { "FAILED" };
        println!("         verified {ok} at {}: {}", s(v, "verified_at"), s(r, "message"));
        for w in r["warnings"].as_array().into_iter().flatten() {
            println!("         warning: {}", w.as_str().unwrap_or(""));
        }
    }
    if !v["approved_by"].is_null() {
        println!("         approved by {} at {}", s(v, "approved_by"), s(v, "approved_at"));
    }
    if !v["activated_by"].is_null() {
        println!("         activated by {} at {}", s(v, "activated_by"), s(v, "activated_at"));
    }
    if !v["retiring_until"].is_null() {
        println!("         retiring until {}", s(v, "retiring_until"));
    }
}

pub async fn run(c: ConnArgs, cmd: ConnectionCmd) -> anyhow::Result<ExitCode> {
    let base = format!("{}/v1/admin/connections", c.addr.addr.trim_end_matches('/'));
    let token = operator_credential(c.addr.addr.trim_end_matches('/'), c.admin_token_file.as_deref(), c.jwt_file.as_deref())?;
    use reqwest::Method;
    match cmd {
        ConnectionCmd::List { json } => {
            let v = call(Method::GET, base, &token, None).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
                return Ok(ExitCode::SUCCESS);
            }
            println!(
                "{:<14} {:<11} {:<14} {:<7} {:>9} {:<11} {:<26} ROLES",
                "CONNECTION", "ENV", "OWNER", "ACTIVE", "AGE", "REVIEW BY", "LAST VERIFIED"
            );
            let mut warnings = Vec::new();
            for c in v["connections"].as_array().into_iter().flatten() {
                let age = c["active_age_seconds"]
                    .as_i64()
                    .map(|a| crate::fmt_duration(std::time::Duration::from_secs(a.max(0) as u64)))
                    .unwrap_or_else(|| "-".into());
                let active = c["active_version"].as_i64().map(|v| format!("v{v}")).unwrap_or_else(|| "-".into());
                let roles: Vec<&str> = c["roles"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
                println!(
                    "{:<14} {:<11} {:<14} {:<7} {:>9} {:<11} {:<26} {}",
                    s(c, "name"),
                    s(c, "environment"),
                    s(c, "owner"),
                    active,
                    age,
                    s(c, "review_by"),
                    s(c, "last_verified"),
                    roles.join(", ")
                );
                warnings.extend(c["warnings"].as_array().into_iter().flatten().filter_map(Value::as_str).map(str::to_owned));
            }
            for w in warnings {
                println!("warning: {w}");
            }
        }
        ConnectionCmd::Show { name } => {
            let v = call(Method::GET, format!("{base}/{name}"), &token, None).await?;
            println!(
                "connection {} ({}), environment {}, owner {}, review by {}, overlap {}",
                s(&v, "name"),
                s(&v, "plugin"),
                s(&v, "environment"),
                s(&v, "owner"),
                s(&v, "review_by"),
                s(&v, "overlap")
            );
            for ver in v["versions"].as_array().into_iter().flatten().rev() {
                print_version(ver);
            }
            for w in v["warnings"].as_array().into_iter().flatten() {
                println!("warning: {}", w.as_str().unwrap_or(""));
            }
        }
        ConnectionCmd::SetSecret { name, file, reason } => {
            let secret = read_secret(file.as_deref())?;
            let body = json!({ "secret": secrecy::ExposeSecret::expose_secret(&secret), "reason": reason });
            let v = call(Method::PUT, format!("{base}/{name}/secret"), &token, Some(body)).await?;
            println!(
                "stored candidate v{} for `{name}` (fingerprint {}); next: lessor connection verify {name}",
                s(&v, "version"),
                s(&v, "fingerprint")
            );
        }
        ConnectionCmd::Verify { name, version } => {
            let v = call(Method::POST, format!("{base}/{name}/verify"), &token, Some(json!({ "version": version }))).await?;
            let r = &v["result"];
            let ok = r["ok"].as_bool().unwrap_or(false);
            println!("v{}: {} {}", s(&v, "version"), if ok { "ok:" } else { "FAILED:" }, s(r, "message"));
            for w in r["warnings"].as_array().into_iter().flatten() {
                println!("warning: {}", w.as_str().unwrap_or(""));
            }
            if !ok {
                return Ok(ExitCode::FAILURE);
            }
        }
        ConnectionCmd::Approve { name, version } => {
            let v = call(Method::POST, format!("{base}/{name}/approve"), &token, Some(json!({ "version": version }))).await?;
            println!("approved v{} of `{name}` (set by {})", s(&v, "version"), s(&v, "set_by"));
        }
        ConnectionCmd::Activate { name, version } => {
            let v = call(Method::POST, format!("{base}/{name}/activate"), &token, Some(json!({ "version": version }))).await?;
            println!("`{name}` now issues with v{}", s(&v, "version"));
        }
        ConnectionCmd::Rollback { name } => {
            let v = call(Method::POST, format!("{base}/{name}/rollback"), &token, Some(json!({}))).await?;
            println!("`{name}` rolled back: issues with v{} again", s(&v, "version"));
        }
        ConnectionCmd::Rotate { name } => {
            let v = call(Method::POST, format!("{base}/{name}/rotate"), &token, Some(json!({}))).await?;
            println!("`{name}` rotated: v{} made, verified and active (nobody saw it)", s(&v, "version"));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `lessor rekey`: re-wraps every root credential's data key from the
/// configured KEK to `new`, in one transaction; then point `[kek]` at the
/// new key. On SQLite the daemon must be stopped (one process per store).
pub async fn rekey(cfg: &Config, new: &KekConfig) -> anyhow::Result<ExitCode> {
    let store = crate::store::open_with(&cfg.store, cfg.leases.claim_timeout).await?;
    let path = cfg.seal_key_path();
    let old = Kek::from_config(cfg, || {
        crate::seal::Seal::load_or_create(&path, false).map_err(|e| kek::KekError::Config(e.to_string()))
    })?;
    let new = Kek::from_kek_config(new, || Err(kek::KekError::Config("name the new key: --new-file, --new-env or --new-command".into())))?;
    if new.id() == old.id() {
        return Err(anyhow!("the new key-encryption key is the configured one (id {})", old.id()));
    }
    let mut rows = Vec::new();
    for v in store.secret_versions(None).await? {
        let wrapped = kek::rewrap(&old, &new, &v.connection, v.version, &v.wrapped_dek, &v.kek_id).await?;
        rows.push(crate::store::Rewrap {
            connection: v.connection,
            version: v.version,
            old_kek_id: v.kek_id,
            wrapped_dek: wrapped,
            kek_id: new.id(),
        });
    }
    if !store.secret_rewrap(&rows).await? {
        return Err(anyhow!("a root credential changed while re-wrapping; nothing was changed, run it again"));
    }
    println!(
        "re-wrapped {} root credential version(s) from key id {} to {}; now point [kek] at the new key and restart",
        rows.len(),
        old.id(),
        new.id()
    );
    Ok(ExitCode::SUCCESS)
}
