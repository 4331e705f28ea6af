//! The client side of the CLI: `lessor creds` and `lessor lease ...` talk to
//! a running daemon over its HTTP API.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{anyhow, Context};
use clap::{Args, Subcommand};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{json, Value};

use super::AddrArg;
use crate::seal::write_private_file;

/// How the client authenticates.
#[derive(Debug, Clone, Args)]
pub struct ConnArgs {
    #[command(flatten)]
    pub(super) addr: AddrArg,
    /// File holding a workload JWT (else $LESSOR_JWT).
    #[arg(long)]
    pub(super) jwt_file: Option<PathBuf>,
    /// Admin token file (else $LESSOR_ADMIN_TOKEN; after a `lessor login`
    /// session and $LESSOR_JWT, .lessor-dev/admin.token).
    #[arg(long, env = "LESSOR_ADMIN_TOKEN_FILE")]
    pub(super) admin_token_file: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct CredsArgs {
    /// Role to request, `connection/role` (e.g. pki/web).
    role: String,
    #[command(flatten)]
    addr: AddrArg,
    /// File holding the workload JWT (else $LESSOR_JWT).
    #[arg(long)]
    jwt_file: Option<PathBuf>,
    /// Lease TTL (e.g. 10m).
    #[arg(long)]
    ttl: Option<String>,
    /// Scope to request; repeat for several.
    #[arg(long = "scope")]
    scopes: Vec<String>,
    /// A PEM CSR to have signed instead of a generated key (pki roles).
    #[arg(long)]
    csr: Option<PathBuf>,
    /// Write the credential to files in this directory instead of printing it.
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum LeaseCmd {
    /// List leases (admin).
    List {
        #[arg(long)]
        role: Option<String>,
        #[arg(long)]
        state: Option<String>,
        #[arg(long)]
        subject: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: u32,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show one lease.
    Show { id: String },
    /// Renew a lease.
    Renew {
        id: String,
        #[arg(long)]
        ttl: Option<String>,
    },
    /// Revoke a lease now.
    Revoke { id: String },
}

pub(super) fn jwt(file: Option<&Path>) -> anyhow::Result<SecretString> {
    if let Some(f) = file {
        let t = std::fs::read_to_string(f).with_context(|| format!("reading JWT from {}", f.display()))?;
        return Ok(SecretString::from(t.trim().to_owned()));
    }
    match std::env::var("LESSOR_JWT") {
        Ok(t) if !t.trim().is_empty() => Ok(SecretString::from(t.trim().to_owned())),
        _ => Err(anyhow!("no workload JWT: set LESSOR_JWT or pass --jwt-file (in dev: export LESSOR_JWT=$(lessor dev token))")),
    }
}

fn read_token(p: &Path) -> Option<SecretString> {
    std::fs::read_to_string(p).ok().map(|t| SecretString::from(t.trim().to_owned()))
}

/// The admin token given on purpose: `--admin-token-file`, else
/// `$LESSOR_ADMIN_TOKEN`.
pub(super) fn explicit_admin_token(file: Option<&Path>) -> Option<SecretString> {
    if let Some(f) = file {
        return read_token(f);
    }
    std::env::var("LESSOR_ADMIN_TOKEN").ok().map(SecretString::from)
}

/// `lessor dev`'s admin token, found without being asked for
/// (`$LESSOR_DEV_DIR/admin.token`, else `.lessor-dev/admin.token`).
pub(super) fn dev_admin_token() -> Option<SecretString> {
    let dev_dir = std::env::var("LESSOR_DEV_DIR").unwrap_or_else(|_| ".lessor-dev".into());
    read_token(&Path::new(&dev_dir).join("admin.token"))
}

pub(super) fn admin_token(file: Option<&Path>) -> Option<SecretString> {
    explicit_admin_token(file).or_else(dev_admin_token)
}

/// The credential of a command people and admins both run (`lessor
/// connection ...`, `lessor lease show|revoke`): `--jwt-file`; else an admin
/// token given on purpose; else the person session `lessor login` stored
/// for `base`; else `$LESSOR_JWT`; else `lessor dev`'s admin token. A
/// signed-in person beats the dev admin token lying in the directory (which
/// would approve as break-glass, not as them) and a leftover `LESSOR_JWT`.
pub(super) fn operator_credential(base: &str, admin_file: Option<&Path>, jwt_file: Option<&Path>) -> anyhow::Result<SecretString> {
    if jwt_file.is_some() {
        return jwt(jwt_file);
    }
    if let Some(t) = explicit_admin_token(admin_file) {
        return Ok(t);
    }
    if let Some(t) = person_session(base)? {
        return Ok(t);
    }
    if let Ok(t) = jwt(None) {
        return Ok(t);
    }
    dev_admin_token().ok_or_else(|| {
        anyhow!("no credential: pass --admin-token-file or --jwt-file, set LESSOR_ADMIN_TOKEN or LESSOR_JWT, or `lessor login`")
    })
}

/// The person session `lessor login` stored for `base`, if any (an error
/// when the session file is readable by others).
pub(super) fn person_session(base: &str) -> anyhow::Result<Option<SecretString>> {
    super::login::stored_session(base)
}

pub(super) async fn call(
    method: reqwest::Method,
    url: String,
    token: &SecretString,
    body: Option<Value>,
) -> anyhow::Result<Value> {
    let client = crate::server::http_client()?;
    let mut req = client.request(method, &url).bearer_auth(token.expose_secret());
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.with_context(|| format!("cannot reach lessor at {url}"))?;
    let status = resp.status();
    let v: Value = resp.json().await.unwrap_or(Value::Null);
    if !status.is_success() {
        let msg = v
            .pointer("/error/message")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .unwrap_or_else(|| format!("HTTP {status}"));
        return Err(anyhow!("{msg} (HTTP {})", status.as_u16()));
    }
    Ok(v)
}

pub async fn creds(a: CredsArgs) -> anyhow::Result<ExitCode> {
    let token = jwt(a.jwt_file.as_deref())?;
    let mut body = json!({ "role": a.role });
    if let Some(t) = &a.ttl {
        body["ttl"] = json!(t);
    }
    if !a.scopes.is_empty() {
        body["scopes"] = json!(a.scopes);
    }
    if let Some(csr) = &a.csr {
        let pem = std::fs::read_to_string(csr).with_context(|| format!("reading CSR {}", csr.display()))?;
        body["params"] = json!({ "csr": pem });
    }
    let url = format!("{}/v1/leases", a.addr.addr.trim_end_matches('/'));
    let v = call(reqwest::Method::POST, url, &token, Some(body)).await?;
    let Some(dir) = a.out else {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(ExitCode::SUCCESS);
    };
    std::fs::create_dir_all(&dir)?;
    let cred = v.get("credential").cloned().unwrap_or(Value::Null);
    let mut written = Vec::new();
    let mut put = |name: &str, text: &str, secret: bool| -> anyhow::Result<()> {
        let p = dir.join(name);
        let _ = std::fs::remove_file(&p);
        if secret {
            write_private_file(&p, text.as_bytes())?;
        } else {
            std::fs::write(&p, text)?;
        }
        written.push(p.display().to_string());
        Ok(())
    };
    if let Some(c) = cred.get("certificate").and_then(Value::as_str) {
        put("cert.pem", c, false)?;
    }
    if let Some(k) = cred.get("private_key").and_then(Value::as_str) {
        put("key.pem", k, true)?;
    }
    if let Some(chain) = cred.get("ca_chain").and_then(Value::as_array) {
        let pem: String = chain.iter().filter_map(Value::as_str).collect();
        put("ca.pem", &pem, false)?;
    }
    if let Some(t) = cred.get("token").and_then(Value::as_str) {
        put("token", t, true)?;
    }
    println!(
        "lease {} for {} until {} (policies: {})\nwrote {}",
        v["lease_id"].as_str().unwrap_or("?"),
        v["role"].as_str().unwrap_or("?"),
        v["expires_at"].as_str().unwrap_or("?"),
        v["policies"].as_array().map(|a| a.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(", ")).unwrap_or_default(),
        written.join(", ")
    );
    Ok(ExitCode::SUCCESS)
}

pub async fn lease(c: ConnArgs, cmd: LeaseCmd) -> anyhow::Result<ExitCode> {
    let base = c.addr.addr.trim_end_matches('/').to_owned();
    // Owners use their JWT; admins their token. Prefer a JWT when one is set
    // explicitly, else the admin token.
    let cred = || operator_credential(&base, c.admin_token_file.as_deref(), c.jwt_file.as_deref());
    match cmd {
        LeaseCmd::List { role, state, subject, limit, json } => {
            let token = admin_token(c.admin_token_file.as_deref())
                .ok_or_else(|| anyhow!("listing leases needs an admin token: pass --admin-token-file or set LESSOR_ADMIN_TOKEN"))?;
            let mut q = vec![("limit".to_string(), limit.to_string())];
            for (k, v) in [("role", role), ("state", state), ("subject", subject)] {
                if let Some(v) = v {
                    q.push((k.into(), v));
                }
            }
            let qs = serde_urlencoded::to_string(&q)?;
            let v = call(reqwest::Method::GET, format!("{base}/v1/admin/leases?{qs}"), &token, None).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
                return Ok(ExitCode::SUCCESS);
            }
            println!("{:<37} {:<16} {:<14} {:<25} SUBJECT", "LEASE", "ROLE", "STATE", "EXPIRES");
            for l in v["leases"].as_array().into_iter().flatten() {
                let s = |k: &str| l[k].as_str().unwrap_or("").to_owned();
                println!("{:<37} {:<16} {:<14} {:<25} {}", s("lease_id"), s("role"), s("state"), s("expires_at"), s("subject"));
                if let Some(e) = l["last_error"].as_str() {
                    println!("    last error (attempt {}): {e}", l["revoke_attempts"]);
                }
            }
        }
        LeaseCmd::Show { id } => {
            let v = call(reqwest::Method::GET, format!("{base}/v1/leases/{id}"), &cred()?, None).await?;
            println!("{}", serde_json::to_string_pretty(&v)?);
        }
        LeaseCmd::Renew { id, ttl } => {
            let body = match ttl {
                Some(t) => json!({ "ttl": t }),
                None => json!({}),
            };
            let v = call(reqwest::Method::POST, format!("{base}/v1/leases/{id}/renew"), &cred()?, Some(body)).await?;
            println!("{}", serde_json::to_string_pretty(&v)?);
        }
        LeaseCmd::Revoke { id } => {
            let v = call(reqwest::Method::DELETE, format!("{base}/v1/leases/{id}"), &cred()?, None).await?;
            println!("lease {id} is {}", v["state"].as_str().unwrap_or("?"));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `lessor status`: one screen for an SRE (admin).
pub async fn status(c: ConnArgs, json: bool) -> anyhow::Result<ExitCode> {
    let base = c.addr.addr.trim_end_matches('/').to_owned();
    let token = admin_token(c.admin_token_file.as_deref())
        .ok_or_else(|| anyhow!("status needs an admin token: pass --admin-token-file or set LESSOR_ADMIN_TOKEN"))?;
    let v = call(reqwest::Method::GET, format!("{base}/v1/admin/status"), &token, None).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(ExitCode::SUCCESS);
    }
    print!("{}", render_status(&base, &v));
    Ok(ExitCode::SUCCESS)
}

pub async fn reconcile(c: ConnArgs, json: bool) -> anyhow::Result<ExitCode> {
    let base = c.addr.addr.trim_end_matches('/').to_owned();
    let token = admin_token(c.admin_token_file.as_deref())
        .ok_or_else(|| anyhow!("reconcile needs an admin token: pass --admin-token-file or set LESSOR_ADMIN_TOKEN"))?;
    let v = call(reqwest::Method::POST, format!("{base}/v1/admin/reconcile"), &token, Some(json!({}))).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        print!("{}", render_reconcile(&v));
    }
    Ok(if v["clean"].as_bool() == Some(true) { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// The text `lessor reconcile` prints for a `/v1/admin/reconcile` answer.
pub fn render_reconcile(v: &Value) -> String {
    use std::fmt::Write;
    let s = |v: &Value, k: &str| v[k].as_str().unwrap_or("").to_owned();
    let n = |v: &Value, k: &str| v[k].as_u64().unwrap_or(0);
    let mut out = String::new();
    let verdict = if v["clean"].as_bool() == Some(true) { "clean" } else { "NOT CLEAN" };
    let _ = writeln!(out, "reconcile pass {} .. {}: {verdict} (grace {}s)", s(v, "started_at"), s(v, "finished_at"), n(v, "grace_seconds"));
    for c in v["connections"].as_array().into_iter().flatten() {
        let name = s(c, "connection");
        match c["status"].as_str() {
            Some("unsupported") => {
                let _ = writeln!(out, "  {name:<20} ({}) not applicable: no objects at a vendor", s(c, "plugin"));
                continue;
            }
            Some("error") => {
                let _ = writeln!(out, "  {name:<20} ({}) ERROR: {}", s(c, "plugin"), s(c, "error"));
                continue;
            }
            _ => {}
        }
        let strays = c["strays"].as_array().map_or(0, Vec::len);
        let trunc = if c["truncated"].as_bool() == Some(true) { " (truncated: more next pass)" } else { "" };
        let _ = writeln!(out, "  {name:<20} ({}) {} objects, {strays} strays, {} missing{trunc}", s(c, "plugin"), n(c, "objects"), n(c, "missing_count"));
        for st in c["strays"].as_array().into_iter().flatten() {
            let extra = match st["outcome"].as_str() {
                Some("waiting") => format!(" until {}", s(st, "revoke_after")),
                Some("failed") => format!(": {}", s(st, "error")),
                _ => String::new(),
            };
            let lease = st["lease_id"].as_str().unwrap_or("-");
            let _ = writeln!(out, "    stray {} (lease {lease}, {}): {}{extra}", s(st, "object"), s(st, "reason"), s(st, "outcome"));
        }
        for id in c["missing"].as_array().into_iter().flatten() {
            let _ = writeln!(out, "    missing: lease {} has no vendor object", id.as_str().unwrap_or(""));
        }
    }
    out
}

/// The text `lessor status` prints for a `/v1/admin/status` answer.
pub fn render_status(base: &str, v: &Value) -> String {
    use std::collections::BTreeMap;
    use std::fmt::Write;
    let s = |v: &Value, k: &str| v[k].as_str().unwrap_or("").to_owned();
    let n = |v: &Value, k: &str| v[k].as_i64().unwrap_or(0);
    let mut out = String::new();
    let agree = if v["policy_versions_agree"].as_bool().unwrap_or(true) { "policies agree" } else { "POLICY VERSIONS DIFFER" };
    let _ = writeln!(out, "lessor at {base}, {}; replicas: {} ({agree})", s(v, "time"), n(v, "replicas"));

    let mut by_role: BTreeMap<String, [i64; 3]> = BTreeMap::new();
    for c in v["leases"].as_array().into_iter().flatten() {
        let slot = match c["state"].as_str() {
            Some("pending") => 0,
            Some("active") => 1,
            _ => 2,
        };
        by_role.entry(s(c, "role")).or_default()[slot] += n(c, "count");
    }
    let _ = writeln!(out, "\n{:<28} {:>9} {:>9} {:>14}", "LIVE LEASES", "pending", "active", "revoke_failed");
    if by_role.is_empty() {
        let _ = writeln!(out, "  (none)");
    }
    for (role, [p, a, f]) in &by_role {
        let _ = writeln!(out, "  {role:<26} {p:>9} {a:>9} {f:>14}");
    }

    let _ = write!(out, "\nOLDEST OVERDUE REVOCATION: ");
    match v.get("oldest_overdue").filter(|o| !o.is_null()) {
        None => {
            let _ = writeln!(out, "none, expiry is keeping up");
        }
        Some(o) => {
            let _ = write!(out, "{} ({}) due {}s ago", s(o, "lease_id"), s(o, "role"), n(o, "overdue_seconds"));
            if n(o, "attempts") > 0 {
                let _ = write!(out, ", {} attempts, last error: {}", n(o, "attempts"), s(o, "last_error"));
            }
            let _ = writeln!(out);
        }
    }

    // Only where revoking is not immediate: what a revoked credential still does.
    let lagging: Vec<&Value> =
        v["revocation"].as_array().into_iter().flatten().filter(|r| r["mode"].as_str() != Some("immediate")).collect();
    if !lagging.is_empty() {
        let _ = writeln!(out, "\nREVOCATION IS NOT IMMEDIATE FOR");
        for r in lagging {
            let _ = writeln!(out, "  {} ({}): {}", s(r, "connection"), s(r, "plugin"), s(r, "description"));
        }
    }

    let breakers = v["breakers"].as_array().cloned().unwrap_or_default();
    if !breakers.is_empty() {
        let _ = writeln!(out, "\nOPEN CIRCUIT BREAKERS (vendor not called until the probe): {}", breakers.len());
        for b in &breakers {
            let _ = writeln!(
                out,
                "  {} since {} next probe {}: {}",
                s(b, "connection"),
                s(b, "since"),
                s(b, "next_probe_at"),
                s(b, "last_error")
            );
        }
    }

    let failing = v["failing"].as_array().cloned().unwrap_or_default();
    let _ = writeln!(out, "\nFAILING REVOCATIONS: {}", if failing.is_empty() { "none".to_string() } else { failing.len().to_string() });
    for f in &failing {
        let _ = writeln!(
            out,
            "  {} {} attempts {} next {}: {}",
            s(f, "lease_id"),
            s(f, "role"),
            n(f, "attempts"),
            s(f, "next_attempt_at"),
            s(f, "last_error")
        );
    }

    let _ = writeln!(out, "\nQUOTAS");
    for q in v["quotas"].as_array().into_iter().flatten() {
        let (used, limit) = (n(q, "used"), q["limit"].as_u64().unwrap_or(0));
        let pct = match (used.max(0) as u64 * 100).checked_div(limit) {
            Some(p) => format!("{p:>3}%"),
            None => "  no limit".into(),
        };
        let lim = if limit > 0 { limit.to_string() } else { "-".into() };
        let _ = writeln!(out, "  {:<28} {used:>9} / {lim:<9} {pct}", s(q, "quota"));
    }
    let _ = writeln!(out, "\nAUDIT: {} write failures since start", n(v, "audit_write_failures"));
    let warnings = v["connection_warnings"].as_array().cloned().unwrap_or_default();
    if !warnings.is_empty() {
        let _ = writeln!(out, "\nROOT CREDENTIALS");
        for w in &warnings {
            let _ = writeln!(out, "  warning: {}", w.as_str().unwrap_or(""));
        }
    }
    out
}
