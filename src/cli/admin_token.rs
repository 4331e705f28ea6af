//! `lessor admin-token create|list|revoke`: admin tokens through the
//! daemon's `/v1/admin/tokens` (so every replica sees the change at once and
//! the audit log names who did it).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::anyhow;
use clap::Subcommand;
use secrecy::SecretString;
use serde_json::{json, Value};

use super::client::{admin_token, call, ConnArgs};
use crate::seal::write_private_file;

#[derive(Debug, Subcommand)]
pub enum AdminTokenCmd {
    /// Create a named admin token; it is printed once (stdout), or written
    /// to --out (mode 0600).
    Create {
        #[arg(long)]
        name: String,
        /// Lifetime, e.g. 30d (default 90d, at most 366d).
        #[arg(long)]
        ttl: Option<String>,
        /// Write the token to this file instead of printing it.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// List admin tokens: name, state, created, expires, last used (never a token).
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Revoke an admin token now, on every replica.
    Revoke { name: String },
}

fn credential(c: &ConnArgs) -> anyhow::Result<SecretString> {
    admin_token(c.admin_token_file.as_deref())
        .ok_or_else(|| anyhow!("admin tokens are managed with an admin token: pass --admin-token-file or set LESSOR_ADMIN_TOKEN"))
}

pub async fn run(c: ConnArgs, cmd: AdminTokenCmd) -> anyhow::Result<ExitCode> {
    let base = c.addr.addr.trim_end_matches('/').to_owned();
    let token = credential(&c)?;
    match cmd {
        AdminTokenCmd::Create { name, ttl, out } => {
            let mut body = json!({ "name": name });
            if let Some(t) = ttl {
                body["ttl"] = json!(t);
            }
            let v = call(reqwest::Method::POST, format!("{base}/v1/admin/tokens"), &token, Some(body)).await?;
            let secret = v["token"].as_str().ok_or_else(|| anyhow!("the daemon's answer holds no token"))?;
            let expires = v["expires_at"].as_str().unwrap_or("?");
            match out {
                Some(path) => {
                    let _ = std::fs::remove_file(&path);
                    write_private_file(&path, secret.as_bytes())?;
                    eprintln!("admin token `{name}` (expires {expires}) written to {}", path.display());
                }
                None => {
                    eprintln!("admin token `{name}` (expires {expires}); it is shown this once:");
                    println!("{secret}");
                }
            }
        }
        AdminTokenCmd::List { json } => {
            let v = call(reqwest::Method::GET, format!("{base}/v1/admin/tokens"), &token, None).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
                return Ok(ExitCode::SUCCESS);
            }
            println!("{:<24} {:<8} {:<21} {:<21} {:<21} CREATED BY", "NAME", "STATE", "CREATED", "EXPIRES", "LAST USED");
            for t in v["tokens"].as_array().into_iter().flatten() {
                let s = |k: &str| short(&t[k]);
                println!(
                    "{:<24} {:<8} {:<21} {:<21} {:<21} {}",
                    s("name"),
                    s("state"),
                    s("created_at"),
                    s("expires_at"),
                    s("last_used_at"),
                    s("created_by")
                );
            }
        }
        AdminTokenCmd::Revoke { name } => {
            let v = call(reqwest::Method::DELETE, format!("{base}/v1/admin/tokens/{name}"), &token, None).await?;
            println!("admin token `{name}` is {}", v["state"].as_str().unwrap_or("?"));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// A JSON string as is (dates to the second), `-` for null.
fn short(v: &Value) -> String {
    match v.as_str() {
        Some(s) => s.get(..19).filter(|_| s.len() > 19 && s.is_char_boundary(19)).map(|p| format!("{p}Z")).unwrap_or_else(|| s.to_owned()),
        None => "-".into(),
    }
}
