//! `lessor login`, `lessor logout`, `lessor whoami`: a person signs in from
//! the command line with the device authorization grant (RFC 8628) that
//! lessor brokers (`POST /v1/people/device`, then polling
//! `/v1/people/device/token`); the session token is kept in the user's
//! config dir (`$XDG_CONFIG_HOME/lessor/session`, else
//! `~/.config/lessor/session`), mode 0600, with the lessor address it
//! belongs to. A group- or world-readable session file is refused, and the
//! token is only ever sent to the address it was issued by.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use clap::Args;
use secrecy::{ExposeSecret, SecretString};
use serde_json::{json, Value};

use super::client::call;
use super::AddrArg;

#[derive(Debug, Args)]
pub struct LoginArgs {
    #[command(flatten)]
    addr: AddrArg,
    /// The provider's name in the daemon's `[people.providers]` (optional
    /// when it has only one).
    #[arg(long)]
    provider: Option<String>,
}

#[derive(Debug, Args)]
pub struct LogoutArgs {
    #[command(flatten)]
    addr: AddrArg,
    /// End every session of yours (every browser and terminal), not just this one.
    #[arg(long)]
    everywhere: bool,
}

/// Where the session is kept.
pub fn session_path() -> anyhow::Result<PathBuf> {
    if let Some(x) = std::env::var_os("XDG_CONFIG_HOME").filter(|x| !x.is_empty()) {
        return Ok(PathBuf::from(x).join("lessor").join("session"));
    }
    let home = std::env::var_os("HOME").filter(|h| !h.is_empty()).ok_or_else(|| anyhow!("neither XDG_CONFIG_HOME nor HOME is set"))?;
    Ok(PathBuf::from(home).join(".config").join("lessor").join("session"))
}

/// The stored session for `addr`: None when there is no session file or it
/// belongs to another lessor; an error when it is readable by others.
pub fn stored_session(addr: &str) -> anyhow::Result<Option<SecretString>> {
    let path = session_path()?;
    let meta = match std::fs::metadata(&path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(anyhow!("reading {}: {e}", path.display())),
    };
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(anyhow!(
                "{} is readable by others (mode {mode:03o}); refusing to use it. Run `chmod 600 {}` or `lessor login` again",
                path.display(),
                path.display()
            ));
        }
    }
    if meta.len() > 16 * 1024 {
        return Err(anyhow!("{} is not a lessor session file (too large)", path.display()));
    }
    let text = zeroize::Zeroizing::new(std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?);
    let v: Value = serde_json::from_str(&text).map_err(|_| anyhow!("{} is not a lessor session file", path.display()))?;
    if v["addr"].as_str().map(|a| a.trim_end_matches('/')) != Some(addr.trim_end_matches('/')) {
        return Ok(None);
    }
    Ok(v["session_token"].as_str().map(|t| SecretString::from(t.to_owned())))
}

/// Writes the session file (0600, replacing any earlier one atomically).
fn store_session(addr: &str, token: &SecretString) -> anyhow::Result<PathBuf> {
    let path = session_path()?;
    let dir = path.parent().ok_or_else(|| anyhow!("{} has no parent directory", path.display()))?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let tmp = dir.join(format!(".session.{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let body = zeroize::Zeroizing::new(
        serde_json::to_vec(&json!({ "addr": addr.trim_end_matches('/'), "session_token": token.expose_secret() }))?,
    );
    crate::seal::write_private_file(&tmp, &body).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

fn remove_session(path: &Path) {
    let _ = std::fs::remove_file(path);
}

pub async fn login(a: LoginArgs) -> anyhow::Result<ExitCode> {
    let base = a.addr.addr.trim_end_matches('/').to_owned();
    let client = crate::server::http_client()?;
    let resp = client
        .post(format!("{base}/v1/people/device"))
        .json(&json!({ "provider": a.provider }))
        .send()
        .await
        .with_context(|| format!("cannot reach lessor at {base}"))?;
    let status = resp.status();
    let start: Value = resp.json().await.unwrap_or(Value::Null);
    if !status.is_success() {
        let msg = start.pointer("/error/message").and_then(Value::as_str).unwrap_or("device sign-in failed");
        return Err(anyhow!("{msg} (HTTP {})", status.as_u16()));
    }
    let s = |k: &str| start[k].as_str().unwrap_or("").to_owned();
    let device_code = s("device_code");
    let uri = start["verification_uri_complete"].as_str().map(str::to_owned).unwrap_or_else(|| s("verification_uri"));
    println!("To sign in, open this page in a browser and confirm the code:");
    println!("verification: {uri}");
    println!("code: {}", s("user_code"));
    let mut interval = Duration::from_secs(start["interval"].as_u64().unwrap_or(5).clamp(1, 60));
    let deadline = Instant::now() + Duration::from_secs(start["expires_in"].as_u64().unwrap_or(600).clamp(1, 1800));
    loop {
        tokio::time::sleep(interval).await;
        if Instant::now() > deadline {
            return Err(anyhow!("the code expired before it was confirmed; run `lessor login` again"));
        }
        let r = client
            .post(format!("{base}/v1/people/device/token"))
            .json(&json!({ "device_code": device_code }))
            .send()
            .await
            .with_context(|| format!("cannot reach lessor at {base}"))?;
        let status = r.status();
        let v: Value = r.json().await.unwrap_or(Value::Null);
        if status.is_success() {
            let token = SecretString::from(v["session_token"].as_str().unwrap_or("").to_owned());
            if token.expose_secret().is_empty() {
                return Err(anyhow!("lessor answered without a session token"));
            }
            let path = store_session(&base, &token)?;
            let p = &v["person"];
            println!(
                "signed in as {} ({}#{}); session kept in {}",
                p["email"].as_str().unwrap_or(""),
                p["provider"].as_str().unwrap_or(""),
                p["subject"].as_str().unwrap_or(""),
                path.display()
            );
            return Ok(ExitCode::SUCCESS);
        }
        match v.pointer("/error/code").and_then(Value::as_str) {
            Some("authorization_pending") => {}
            Some("slow_down") => interval = (interval + Duration::from_secs(5)).min(Duration::from_secs(60)),
            _ => {
                let msg = v.pointer("/error/message").and_then(Value::as_str).unwrap_or("sign-in failed");
                return Err(anyhow!("{msg} (HTTP {})", status.as_u16()));
            }
        }
    }
}

fn need_session(base: &str) -> anyhow::Result<SecretString> {
    stored_session(base)?.ok_or_else(|| anyhow!("not signed in to {base}: run `lessor login`"))
}

pub async fn whoami(a: AddrArg) -> anyhow::Result<ExitCode> {
    let base = a.addr.trim_end_matches('/').to_owned();
    let token = need_session(&base)?;
    let v = call(reqwest::Method::GET, format!("{base}/v1/people/me"), &token, None).await?;
    let p = &v["person"];
    println!("{} <{}>", p["name"].as_str().unwrap_or(""), p["email"].as_str().unwrap_or(""));
    println!("id:      {}#{}", p["provider"].as_str().unwrap_or(""), p["subject"].as_str().unwrap_or(""));
    let groups: Vec<&str> = p["groups"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
    println!("groups:  {}", groups.join(", "));
    println!("session: {} (ends {}, idle end {})", v["session"].as_str().unwrap_or(""), v["expires_at"].as_str().unwrap_or(""), v["idle_expires_at"].as_str().unwrap_or(""));
    Ok(ExitCode::SUCCESS)
}

pub async fn logout(a: LogoutArgs) -> anyhow::Result<ExitCode> {
    let base = a.addr.addr.trim_end_matches('/').to_owned();
    let token = need_session(&base)?;
    let path = session_path()?;
    let r = call(reqwest::Method::POST, format!("{base}/v1/people/logout"), &token, Some(json!({ "everywhere": a.everywhere }))).await;
    // The local copy goes whatever the daemon says (an ended session is
    // useless, a live one is ended).
    remove_session(&path);
    match r {
        Ok(v) => println!("signed out ({} session(s) ended)", v["ended"].as_u64().unwrap_or(0)),
        Err(e) => println!("signed out locally; lessor said: {e}"),
    }
    Ok(ExitCode::SUCCESS)
}
