//! `lessor token create|list|show|rotate|revoke`: customer API tokens
//! through the daemon's `/v1/accounts/{account}/tokens`, as the signed-in
//! person. `create` shows the summary (account, environment, scopes with
//! what each allows and does not, "Expires on ...", creator) and asks
//! before it creates; the token is printed once (stdout).
//!
//! The person's session comes from [`credential`]: the one `lessor login`
//! keeps in the user's config dir for this `--addr` (by default), or, for
//! scripts, `--session-file` / `$LESSOR_SESSION` (`lsr_person_...`).

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{anyhow, Context};
use clap::{Args, Subcommand};
use secrecy::SecretString;
use serde_json::{json, Value};

use super::client::call;
use super::AddrArg;

#[derive(Debug, Clone, Args)]
pub struct TokenConn {
    #[command(flatten)]
    addr: AddrArg,
    /// File holding a session token (`lsr_person_...`); by default the
    /// session `lessor login` stored for this address (else $LESSOR_SESSION).
    #[arg(long, env = "LESSOR_SESSION_FILE")]
    session_file: Option<PathBuf>,
    /// The customer account (your group `account:<name>`).
    #[arg(long, short)]
    account: String,
}

#[derive(Debug, Subcommand)]
pub enum TokenCmd {
    /// Create a token: shows what it will be, asks, then prints it once.
    Create {
        /// What it is for ("billing sync for NetSuite").
        #[arg(long)]
        name: String,
        /// A scope from the catalogue; repeat for several.
        #[arg(long = "scope", required = true)]
        scopes: Vec<String>,
        /// Needed when several environments are configured.
        #[arg(long)]
        environment: Option<String>,
        /// 24h, 30d (default), 90d or 180d.
        #[arg(long)]
        expires_in: Option<String>,
        /// Confirm a scope combination policy marks as broad.
        #[arg(long)]
        confirm: bool,
        /// Do not ask before creating.
        #[arg(long, short)]
        yes: bool,
    },
    /// List the account's tokens (history included; never a token).
    List {
        #[arg(long)]
        json: bool,
    },
    /// Show one token with its last uses and daily counts.
    Show {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Replace a token (same name, scopes, owner); the old one keeps
    /// working for the overlap. The replacement is printed once.
    Rotate {
        id: String,
        /// 1d..14d (default 7d).
        #[arg(long)]
        overlap: Option<String>,
        #[arg(long)]
        confirm: bool,
    },
    /// Revoke a token now; returns once every replica refuses it.
    Revoke { id: String },
}

/// The person's session token.
fn credential(c: &TokenConn) -> anyhow::Result<SecretString> {
    if let Some(f) = &c.session_file {
        let t = std::fs::read_to_string(f).with_context(|| format!("reading the session from {}", f.display()))?;
        return Ok(SecretString::from(t.trim().to_owned()));
    }
    if let Ok(t) = std::env::var("LESSOR_SESSION") {
        if !t.trim().is_empty() {
            return Ok(SecretString::from(t.trim().to_owned()));
        }
    }
    let addr = c.addr.addr.trim_end_matches('/');
    super::login::stored_session(addr)?.ok_or_else(|| {
        anyhow!("customer tokens are managed by people: not signed in to {addr}; run `lessor login --addr {addr}` (or pass --session-file / set LESSOR_SESSION)")
    })
}

/// The summary a person confirms, as printed.
pub fn render_summary(s: &Value) -> String {
    let mut out = String::new();
    let st = |k: &str| s[k].as_str().unwrap_or("?").to_owned();
    out.push_str(&format!("Token       {}\n", st("name")));
    out.push_str(&format!("Account     {}\n", st("account")));
    out.push_str(&format!("Environment {}\n", st("environment")));
    out.push_str("Scopes\n");
    for sc in s["scopes"].as_array().into_iter().flatten() {
        out.push_str(&format!("  {}\n", sc["name"].as_str().unwrap_or("?")));
        out.push_str(&format!("    allows:         {}\n", sc["allows"].as_str().unwrap_or("")));
        out.push_str(&format!("    does not allow: {}\n", sc["denies"].as_str().unwrap_or("")));
    }
    out.push_str(&format!("{}\n", st("expires_on")));
    out.push_str(&format!("Created by  {}\n", st("creator")));
    out
}

/// The list as a table (never a token: its prefix and last 4).
pub fn render_list(v: &Value) -> String {
    let mut out = format!("{:<22} {:<28} {:<25} {:<11} {:<12} {:<21} {:<21} WARNINGS\n", "ID", "NAME", "STATE", "ENV", "TOKEN", "EXPIRES", "LAST USED");
    for t in v["tokens"].as_array().into_iter().flatten() {
        // Only times are cut (to the second); an id must stay whole to be typed back.
        let s = |k: &str| t[k].as_str().map(str::to_owned).unwrap_or_else(|| "-".into());
        let time = |k: &str| t[k].as_str().map(|x| x.get(..19).unwrap_or(x).to_owned()).unwrap_or_else(|| "-".into());
        let name: String = t["name"].as_str().unwrap_or("").chars().take(28).collect();
        let mut state = s("state");
        if state == "retiring" {
            // The date only, to keep the columns; `show` has the time.
            let until = t["retiring_until"].as_str().and_then(|u| u.get(..10)).unwrap_or("?");
            state = format!("retiring until {until}");
        }
        let warnings: Vec<String> =
            t["warnings"].as_array().into_iter().flatten().filter_map(|w| w["message"].as_str().map(str::to_owned)).collect();
        out.push_str(&format!(
            "{:<22} {:<28} {:<25} {:<11} {:<12} {:<21} {:<21} {}\n",
            s("id"),
            name,
            state,
            s("environment"),
            s("token_hint"),
            time("expires_at"),
            time("last_used_at"),
            if warnings.is_empty() { "-".into() } else { warnings.join("; ") }
        ));
    }
    out
}

/// One token in full: what it is, its history (created, rotated, revoked:
/// when and by whom), its last uses and daily counts. Never the token.
pub fn render_show(t: &Value) -> String {
    let s = |k: &str| t[k].as_str().unwrap_or("-").to_owned();
    let by = |at: &str, who: &str| match (t[at].as_str(), t[who].as_str()) {
        (Some(a), Some(w)) => format!("{a} by {w}"),
        (Some(a), None) => a.to_owned(),
        _ => "-".to_owned(),
    };
    let mut state = s("state");
    if let Some(u) = t["retiring_until"].as_str() {
        state = format!("{state} (works until {u})");
    }
    let scopes: Vec<&str> = t["scopes"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
    let mut out = String::new();
    for (k, v) in [
        ("Token", format!("{} ({})", s("name"), s("id"))),
        ("Account", s("account")),
        ("Environment", s("environment")),
        ("State", state),
        ("Secret", format!("{} (shown only at creation)", s("token_hint"))),
        ("Scopes", scopes.join(" ")),
        ("Owner", s("owner")),
        ("Created", by("created_at", "created_by")),
        ("Expires", s("expires_at")),
        ("Rotated", by("rotated_at", "rotated_by")),
        ("Replaces", s("replaces")),
        ("Replaced by", s("replaced_by")),
        ("Revoked", by("revoked_at", "revoked_by")),
        ("Last used", s("last_used_at")),
    ] {
        out.push_str(&format!("{k:<12} {v}\n"));
    }
    for w in t["warnings"].as_array().into_iter().flatten() {
        out.push_str(&format!("{:<12} {}\n", "Warning", w["message"].as_str().unwrap_or("?")));
    }
    let uses = t["uses"].as_array().map(Vec::as_slice).unwrap_or_default();
    if !uses.is_empty() {
        out.push_str("Last uses:\n");
        for u in uses {
            out.push_str(&format!(
                "  {} {} {} {}\n",
                u["at"].as_str().unwrap_or("?"),
                if u["ok"] == true { "ok    " } else { "failed" },
                u["source"].as_str().unwrap_or("?"),
                u["user_agent"].as_str().unwrap_or("")
            ));
        }
    }
    let days = t["days"].as_array().map(Vec::as_slice).unwrap_or_default();
    if !days.is_empty() {
        out.push_str("Uses per day:\n");
        for d in days {
            out.push_str(&format!("  {} {} ok, {} failed\n", d["day"].as_str().unwrap_or("?"), d["ok"], d["failed"]));
        }
    }
    out
}

/// The API's 409 `confirmation_required` names the JSON field; on the
/// command line it is a flag.
fn confirm_hint(r: anyhow::Result<Value>) -> anyhow::Result<Value> {
    r.map_err(|e| {
        let m = e.to_string();
        if m.ends_with("(HTTP 409)") && m.contains("confirmation") {
            anyhow!("{m}\nIf that is intended, run the same command again with --confirm.")
        } else {
            e
        }
    })
}

pub async fn run(c: TokenConn, cmd: TokenCmd) -> anyhow::Result<ExitCode> {
    let base = format!("{}/v1/accounts/{}/tokens", c.addr.addr.trim_end_matches('/'), c.account);
    let token = credential(&c)?;
    match cmd {
        TokenCmd::Create { name, scopes, environment, expires_in, confirm, yes } => {
            let body = json!({ "name": name, "scopes": scopes, "environment": environment, "expires_in": expires_in, "confirm": confirm });
            let p = confirm_hint(call(reqwest::Method::POST, format!("{base}/preview"), &token, Some(body.clone())).await)?;
            eprint!("{}", render_summary(&p["summary"]));
            if !yes {
                eprint!("Create this token? [y/N] ");
                std::io::stderr().flush().ok();
                let mut line = String::new();
                std::io::stdin().lock().read_line(&mut line)?;
                if !matches!(line.trim(), "y" | "Y" | "yes") {
                    eprintln!("nothing created");
                    return Ok(ExitCode::FAILURE);
                }
            }
            let v = call(reqwest::Method::POST, base, &token, Some(body)).await?;
            let secret = v["token"].as_str().ok_or_else(|| anyhow!("the daemon's answer holds no token"))?;
            eprintln!("token `{}` ({}); it is shown this once:", v["record"]["id"].as_str().unwrap_or("?"), v["summary"]["expires_on"].as_str().unwrap_or(""));
            println!("{secret}");
        }
        TokenCmd::List { json } => {
            let v = call(reqwest::Method::GET, base, &token, None).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                print!("{}", render_list(&v));
            }
        }
        TokenCmd::Show { id, json } => {
            let v = call(reqwest::Method::GET, format!("{base}/{id}"), &token, None).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                print!("{}", render_show(&v));
            }
        }
        TokenCmd::Rotate { id, overlap, confirm } => {
            let body = json!({ "overlap": overlap, "confirm": confirm });
            let v = confirm_hint(call(reqwest::Method::POST, format!("{base}/{id}/rotate"), &token, Some(body)).await)?;
            let secret = v["token"].as_str().ok_or_else(|| anyhow!("the daemon's answer holds no token"))?;
            eprintln!(
                "replacement `{}`; `{id}` keeps working until {}. The replacement is shown this once:",
                v["record"]["id"].as_str().unwrap_or("?"),
                v["old"]["retiring_until"].as_str().unwrap_or("?")
            );
            println!("{secret}");
        }
        TokenCmd::Revoke { id } => {
            let v = call(reqwest::Method::DELETE, format!("{base}/{id}"), &token, None).await?;
            println!("token `{id}` is {}", v["state"].as_str().unwrap_or("?"));
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_and_the_list_show_what_a_person_decides_on() {
        let s = json!({"name": "billing sync", "account": "acme", "environment": "production",
            "scopes": [{"name": "invoices.read", "allows": "Read invoices.", "denies": "Cannot send invoices."}],
            "expires_on": "Expires on 12 March 2027", "creator": "carol@example.com"});
        let r = render_summary(&s);
        assert!(r.contains("Account     acme") && r.contains("does not allow: Cannot send invoices.") && r.contains("Expires on 12 March 2027"), "{r}");
        let l = render_list(&json!({"tokens": [{"id": "ctk_47f333dd3ea25601", "name": "billing sync", "state": "retiring", "retiring_until": "2027-03-12T10:00:00Z",
            "environment": "production", "token_hint": "lsrc_…Ab1z", "expires_at": "2027-04-01T00:00:00Z", "last_used_at": null,
            "warnings": [{"kind": "expires_soon", "message": "expires on 1 April 2027; rotate it before then"}]}]}));
        assert!(l.contains("ctk_47f333dd3ea25601 "), "the whole id, to type back: {l}");
        let shown = render_show(&json!({"id": "ctk_2", "name": "billing sync", "account": "acme", "state": "revoked",
            "token_hint": "lsrc_…Ab1z", "scopes": ["invoices.read"], "owner": "carol@example.com",
            "created_at": "2026-11-01T00:00:00Z", "created_by": "dev#c", "rotated_at": null, "replaces": "ctk_1",
            "revoked_at": "2026-11-30T00:00:00Z", "revoked_by": "dev#d", "warnings": [],
            "uses": [{"at": "2026-11-29T10:00:00Z", "ok": true, "source": "203.0.113.7", "user_agent": "sync/1"}],
            "days": [{"day": "2026-11-29", "ok": 3, "failed": 1}]}));
        for want in ["Created      2026-11-01T00:00:00Z by dev#c", "Revoked      2026-11-30T00:00:00Z by dev#d", "Rotated      -",
            "Replaces     ctk_1", "ok     203.0.113.7 sync/1", "2026-11-29 3 ok, 1 failed", "lsrc_…Ab1z"] {
            assert!(shown.contains(want), "`{want}` in:\n{shown}");
        }
        assert!(l.contains("retiring until 2027-03-12 ") && l.contains("lsrc_…Ab1z") && l.contains("expires on 1 April 2027"), "{l}");
    }
}
