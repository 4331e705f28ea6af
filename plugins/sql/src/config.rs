//! What the SQL plugins' connection tables share: the admin DSN read from
//! `dsn_file` or `dsn_env` into a [`SecretString`], `pool_size` and
//! `connect_timeout`. The DSN appears in no message and no `Debug`.
//! Must not import: sqlx, any plugin.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use lessor_plugin::PluginError;
use secrecy::{ExposeSecret, SecretString};

pub const DEFAULT_POOL_SIZE: u32 = 4;
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Where the admin DSN came from, for messages (never the DSN itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DsnSource {
    File(PathBuf),
    Env(String),
}

impl fmt::Display for DsnSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DsnSource::File(p) => write!(f, "`dsn_file` ({})", p.display()),
            DsnSource::Env(v) => write!(f, "`dsn_env` (${v})"),
        }
    }
}

/// Reads the admin DSN from `dsn_file` or `dsn_env` (trimmed). Neither:
/// `None` (the core manages the root credential). `bad` makes the error.
pub fn read_dsn(
    dsn_file: Option<PathBuf>,
    dsn_env: Option<String>,
    bad: impl Fn(String) -> PluginError,
) -> Result<Option<(SecretString, DsnSource)>, PluginError> {
    let dsn = match (dsn_file, dsn_env) {
        (Some(_), Some(_)) => return Err(bad("set either `dsn_file` or `dsn_env`, not both".into())),
        (None, None) => return Ok(None),
        (Some(path), None) => {
            let text = std::fs::read_to_string(&path)
                .map_err(|e| bad(format!("cannot read `dsn_file` ({}): {e}", path.display())))?;
            (SecretString::from(text.trim().to_owned()), DsnSource::File(path))
        }
        (None, Some(var)) => {
            let text = std::env::var(&var)
                .map_err(|e| bad(format!("environment variable `{var}` (from `dsn_env`): {e}")))?;
            (SecretString::from(text.trim().to_owned()), DsnSource::Env(var))
        }
    };
    if dsn.0.expose_secret().is_empty() {
        return Err(bad(format!("the DSN in {} is empty", dsn.1)));
    }
    Ok(Some(dsn))
}

/// `pool_size`, 1 to 100 (default 4).
pub fn pool_size(raw: Option<u32>, bad: impl Fn(String) -> PluginError) -> Result<u32, PluginError> {
    let pool_size = raw.unwrap_or(DEFAULT_POOL_SIZE);
    if !(1..=100).contains(&pool_size) {
        return Err(bad(format!("`pool_size` = {pool_size} must be between 1 and 100")));
    }
    Ok(pool_size)
}

/// `connect_timeout`, a duration like "5s" (default 5s), at least 100ms
/// and, where `max` is given, at most that.
pub fn connect_timeout(
    raw: Option<String>,
    max: Option<(Duration, &str)>,
    bad: impl Fn(String) -> PluginError,
) -> Result<Duration, PluginError> {
    let Some(s) = raw else { return Ok(DEFAULT_CONNECT_TIMEOUT) };
    let d = humantime::parse_duration(&s)
        .map_err(|e| bad(format!("`connect_timeout` = `{s}` is not a duration like \"5s\": {e}")))?;
    match max {
        Some((max, label)) if d < Duration::from_millis(100) || d > max => {
            Err(bad(format!("`connect_timeout` = `{s}` must be between 100ms and {label}")))
        }
        None if d < Duration::from_millis(100) => Err(bad(format!("`connect_timeout` = `{s}` must be at least 100ms"))),
        _ => Ok(d),
    }
}

/// A table prefix of names: 1 to `max` bytes of `a-z`, `0-9`, `_`.
/// `why_max` follows "at most N" in the error.
pub fn check_prefix(p: &str, max: usize, why_max: &str) -> Result<(), String> {
    if p.is_empty() {
        return Err("is empty".into());
    }
    if p.len() > max {
        return Err(format!("is {} bytes; at most {max}{why_max}", p.len()));
    }
    if !p.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_') {
        return Err("may only hold a-z, 0-9 and `_`".into());
    }
    Ok(())
}

/// `a, b` or `none`, for listing scopes in messages.
pub fn list_or_none(v: &[String]) -> String {
    if v.is_empty() {
        "none".into()
    } else {
        v.join(", ")
    }
}
