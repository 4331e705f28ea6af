//! Admin tokens: named, expiring, revocable bearer credentials for the admin
//! endpoints (`lsr_admin_` + 256 random bits). The store keeps each token's
//! SHA-256 only, so every replica sees a creation or a revocation on the
//! next request. The token file (`admin_token_file`, default
//! `data_dir/admin.token`) holds the `bootstrap` token: generated on first
//! start, and whatever the file holds replaces the stored `bootstrap` at
//! each start (a replaced file ends the old token everywhere). A revoked or
//! expired `bootstrap` is not revived by a restart with the same file.
//!
//! Lookup is by hash (one indexed read); the stored hash is then compared
//! with the presented one in constant time. A refused token gets one answer
//! ("unknown, revoked or expired"), whichever it was; the audit entry says
//! which, naming the token by its name, never by its value.
//!
//! Must not import: http, sqlx, policy, lease.

use std::time::Duration;

use base64::Engine;
use rand::RngCore;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use time::OffsetDateTime;

use crate::audit::{Audit, AuditError, Event};
use crate::principal::{Actor, RequestMeta};
use crate::store::{AdminToken, Store, StoreError};

/// Prefix of admin tokens, so they are told apart from JWTs at a glance
/// (and by secret scanners).
pub const PREFIX: &str = "lsr_admin_";
/// Name of the token file's token.
pub const BOOTSTRAP: &str = "bootstrap";
/// Lifetime of a token when none is asked for (and of `bootstrap`).
pub const DEFAULT_TTL: Duration = Duration::from_secs(90 * 24 * 3600);
/// Longest lifetime a token may be given.
pub const MAX_TTL: Duration = Duration::from_secs(366 * 24 * 3600);
/// Shortest lifetime a token may be given.
pub const MIN_TTL: Duration = Duration::from_secs(60);
/// Longer presented tokens are refused before hashing (a real one is 53).
const MAX_TOKEN_BYTES: usize = 128;
/// `last_used_at` is written at most this often per token.
const USE_RESOLUTION: time::Duration = time::Duration::seconds(60);

#[derive(Debug, thiserror::Error)]
pub enum AdminTokenError {
    #[error("{message}")]
    BadRequest { field: &'static str, message: String },
    #[error("an admin token named `{0}` exists and is live; revoke it first or pick another name")]
    Exists(String),
    #[error("no admin token named `{0}` that is not already revoked")]
    NotFound(String),
    #[error("admin token file {path}: {message}")]
    File { path: String, message: String },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Audit(#[from] AuditError),
}

/// Why a presented admin token was refused (for the audit log and metrics;
/// the client is told only that it is unknown, revoked or expired).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    Unknown,
    Revoked { name: String },
    Expired { name: String },
}

impl Refusal {
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::Unknown => "unknown_admin_token",
            Refusal::Revoked { .. } => "revoked_admin_token",
            Refusal::Expired { .. } => "expired_admin_token",
        }
    }

    /// The token's name, when it was one lessor made.
    pub fn name(&self) -> Option<&str> {
        match self {
            Refusal::Unknown => None,
            Refusal::Revoked { name } | Refusal::Expired { name } => Some(name),
        }
    }
}

/// The one message a refused admin token gets, whatever the reason.
pub const REFUSED_MESSAGE: &str = "unknown, revoked or expired admin token";

/// The stored form of a token: SHA-256, hex.
pub fn hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// A fresh token.
pub fn generate() -> SecretString {
    let mut b = zeroize::Zeroizing::new([0u8; 32]);
    rand::rng().fill_bytes(&mut b[..]);
    SecretString::from(format!("{PREFIX}{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&b[..])))
}

/// Whether `token` claims to be an admin token (and not a JWT).
pub fn looks_like_admin_token(token: &str) -> bool {
    token.starts_with(PREFIX)
}

/// Checks a presented admin token: its name when it is live, else why not.
pub async fn authenticate(store: &dyn Store, token: &SecretString, now: OffsetDateTime) -> Result<Result<String, Refusal>, StoreError> {
    let presented = token.expose_secret();
    if presented.len() > MAX_TOKEN_BYTES || !looks_like_admin_token(presented) {
        return Ok(Err(Refusal::Unknown));
    }
    let h = hash(presented);
    let Some(t) = store.admin_token_by_hash(&h).await? else {
        return Ok(Err(Refusal::Unknown));
    };
    // The lookup found it by hash; compare again without an early exit so
    // that no code path depends on how much of the hash matched.
    if !bool::from(t.token_hash.as_bytes().ct_eq(h.as_bytes())) {
        return Ok(Err(Refusal::Unknown));
    }
    if t.revoked_at.is_some() {
        return Ok(Err(Refusal::Revoked { name: t.name }));
    }
    if t.expires_at <= now {
        return Ok(Err(Refusal::Expired { name: t.name }));
    }
    if t.last_used_at.is_none_or(|u| now - u >= USE_RESOLUTION) {
        if let Err(e) = store.admin_token_used(&t.name, now).await {
            tracing::warn!(admin_token = %t.name, error = %e, "could not record the admin token's use");
        }
    }
    Ok(Ok(t.name))
}

/// Makes sure the token file holds a token and that it is the stored
/// `bootstrap` token: reads the file, or creates one (0600) on first
/// start. A file whose token differs from the stored `bootstrap` replaces
/// it (the old token stops working on every replica).
pub async fn ensure_file_token(path: &std::path::Path, store: &dyn Store) -> Result<(), AdminTokenError> {
    let file_err = |message: String| AdminTokenError::File { path: path.display().to_string(), message };
    let token = match std::fs::read_to_string(path) {
        Ok(t) => SecretString::from(t.trim().to_owned()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let t = generate();
            crate::seal::write_private_file(path, t.expose_secret().as_bytes()).map_err(|e| file_err(format!("cannot write: {e}")))?;
            tracing::info!(path = %path.display(), "generated the bootstrap admin token");
            t
        }
        Err(e) => return Err(file_err(format!("cannot read: {e}"))),
    };
    if !looks_like_admin_token(token.expose_secret()) || token.expose_secret().len() > MAX_TOKEN_BYTES {
        return Err(file_err(format!("must hold one token starting with {PREFIX} (delete the file to have one generated)")));
    }
    let now = OffsetDateTime::now_utc();
    let h = hash(token.expose_secret());
    let record = AdminToken {
        name: BOOTSTRAP.into(),
        token_hash: h.clone(),
        created_by: "admin token file".into(),
        created_at: now,
        expires_at: now + DEFAULT_TTL,
        last_used_at: None,
        revoked_at: None,
    };
    match store.admin_token_put_file(&record).await {
        Ok(()) => {}
        Err(StoreError::Conflict(_)) => {
            // The file holds a token made with `admin-token create`: it is
            // not a bootstrap token, and the old bootstrap one is replaced.
            let other = store.admin_token_by_hash(&h).await?.map(|t| t.name).unwrap_or_default();
            if store.admin_token_revoke(BOOTSTRAP, now).await? {
                tracing::warn!(path = %path.display(), admin_token = %other, "the token file holds a named admin token; the bootstrap token was revoked");
            }
            return Ok(());
        }
        Err(e) => return Err(e.into()),
    }
    if let Some(t) = store.admin_token_by_hash(&h).await? {
        if t.revoked_at.is_some() || t.expires_at <= now {
            tracing::warn!(
                path = %path.display(),
                "the token file's admin token (`bootstrap`) is revoked or expired; delete the file and restart to have a new one generated, \
                 or use `lessor admin-token create`"
            );
        }
    }
    Ok(())
}

/// A new token, shown once.
pub struct Created {
    pub token: SecretString,
    pub record: AdminToken,
}

fn check_name(name: &str) -> Result<(), AdminTokenError> {
    let bad = |m: String| Err(AdminTokenError::BadRequest { field: "name", message: m });
    if name.is_empty() || name.len() > 64 || !name.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c)) {
        return bad("a token name is 1-64 characters of A-Z a-z 0-9 . _ -".into());
    }
    if name == BOOTSTRAP {
        return bad(format!("`{BOOTSTRAP}` is the token file's token; pick another name"));
    }
    Ok(())
}

/// The lifetime asked for (`ttl`, e.g. "30d"), bounded.
pub fn parse_ttl(ttl: Option<&str>) -> Result<Duration, AdminTokenError> {
    let bad = |m: String| AdminTokenError::BadRequest { field: "ttl", message: m };
    let Some(s) = ttl else { return Ok(DEFAULT_TTL) };
    let d = crate::duration::parse(s).map_err(bad)?;
    if d < MIN_TTL || d > MAX_TTL {
        return Err(bad(format!(
            "ttl `{s}` is out of range: an admin token lives from {} to {}",
            crate::fmt_duration(MIN_TTL),
            crate::fmt_duration(MAX_TTL)
        )));
    }
    Ok(d)
}

/// Creates a token named `name` for `ttl` (audited before it exists).
pub async fn create(
    store: &dyn Store,
    audit: &Audit,
    actor: &Actor,
    meta: &RequestMeta,
    name: &str,
    ttl: Duration,
) -> Result<Created, AdminTokenError> {
    check_name(name)?;
    let now = OffsetDateTime::now_utc();
    let token = generate();
    let record = AdminToken {
        name: name.to_owned(),
        token_hash: hash(token.expose_secret()),
        created_by: actor_name(actor),
        created_at: now,
        expires_at: now + ttl,
        last_used_at: None,
        revoked_at: None,
    };
    let ev = Event::new("admin.token_create", "ok")
        .request(Some(meta))
        .actor(actor.audit_info())
        .detail("admin_token", name)
        .detail("ttl_seconds", ttl.as_secs());
    audit.record(ev).await?;
    match store.admin_token_create(&record, now).await {
        Ok(()) => Ok(Created { token, record }),
        Err(StoreError::Conflict(_)) => Err(AdminTokenError::Exists(name.to_owned())),
        Err(e) => Err(e.into()),
    }
}

/// Every token (never a token's value).
pub async fn list(store: &dyn Store) -> Result<Vec<AdminToken>, AdminTokenError> {
    Ok(store.admin_tokens().await?)
}

/// Revokes `name`: refused from the next request on, on every replica.
pub async fn revoke(store: &dyn Store, audit: &Audit, actor: &Actor, meta: &RequestMeta, name: &str) -> Result<(), AdminTokenError> {
    let done = store.admin_token_revoke(name, OffsetDateTime::now_utc()).await?;
    let ev = Event::new("admin.token_revoke", if done { "ok" } else { "not_found" })
        .request(Some(meta))
        .actor(actor.audit_info());
    // A name that does not exist is the caller's free text.
    let ev = if done { ev.detail("admin_token", name) } else { ev.detail("admin_token", audit.hash(name.as_bytes())) };
    audit.note(ev);
    if done {
        Ok(())
    } else {
        Err(AdminTokenError::NotFound(name.to_owned()))
    }
}

fn actor_name(a: &Actor) -> String {
    a.name()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_tokens_have_the_prefix_and_256_bits() {
        let t = generate();
        assert!(t.expose_secret().starts_with(PREFIX));
        assert_eq!(t.expose_secret().len(), PREFIX.len() + 43);
        assert_ne!(t.expose_secret(), generate().expose_secret());
    }

    #[test]
    fn ttl_is_bounded_and_names_the_field() {
        assert_eq!(parse_ttl(None).unwrap(), DEFAULT_TTL);
        assert_eq!(parse_ttl(Some("30d")).unwrap(), Duration::from_secs(30 * 86400));
        for bad in ["10s", "2y", "ten"] {
            match parse_ttl(Some(bad)) {
                Err(AdminTokenError::BadRequest { field: "ttl", .. }) => {}
                other => panic!("{bad}: {other:?}"),
            }
        }
        assert!(check_name("bootstrap").is_err() && check_name("a b").is_err() && check_name("ci-deploy.1").is_ok());
    }
}
