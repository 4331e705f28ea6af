//! The Vault-compatible API's domain: its configuration (which mount path
//! is which connection) and its sessions, the client tokens a Vault login
//! returns.
//!
//! A session is opaque (`lsr_vault_` + 256 random bits), stored only as its
//! SHA-256, bound to the workload whose JWT logged in (issuer, subject,
//! mapped claims) and to the Vault `role` it named, and short-lived
//! (`vault_api.session_ttl`, default 1 h; `renew-self` never past
//! `session_max_ttl`). It is refused once expired or revoked, on every
//! replica; ended sessions are deleted a day later. Every credential asked
//! for with it is decided by Cedar for that workload, exactly as a native
//! request, with the role in `context.vault_role`.
//!
//! Unlike Vault, credentials are not revoked when the session that asked
//! for them ends: each has its own lease.
//!
//! Must not import: http, sqlx, policy, lease, config.

use std::time::Duration;

use base64::Engine;
use rand::RngCore;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use time::OffsetDateTime;

use crate::audit::workload_info;
use crate::audit::{Audit, AuditError, Event};
use crate::identity::VerifiedWorkload;
use crate::principal::RequestMeta;
use crate::store::{Session, Store, StoreError};

pub mod config;

pub use config::{AuthMount, SecretMount, VaultApiConfig};

/// Prefix of client tokens, so they are told apart from JWTs and admin
/// tokens at a glance (and by secret scanners).
pub const TOKEN_PREFIX: &str = "lsr_vault_";
/// Longer presented tokens are refused before hashing (a real one is 53).
const MAX_TOKEN_BYTES: usize = 128;
/// Ended sessions are kept this long (for `lookup` answers), then deleted.
pub const KEEP_ENDED: Duration = Duration::from_secs(24 * 3600);

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Audit(#[from] AuditError),
}

/// Why a presented client token was refused (audit and metrics only: the
/// client hears "permission denied").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Unknown,
    Revoked,
    Expired,
}

impl Refusal {
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::Unknown => "unknown_vault_token",
            Refusal::Revoked => "revoked_vault_token",
            Refusal::Expired => "expired_vault_token",
        }
    }
}

/// The stored form of a token: SHA-256, hex.
pub fn hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Whether `token` claims to be a client token.
pub fn looks_like_token(token: &str) -> bool {
    token.starts_with(TOKEN_PREFIX)
}

fn generate() -> SecretString {
    let mut b = zeroize::Zeroizing::new([0u8; 32]);
    rand::rng().fill_bytes(&mut b[..]);
    SecretString::from(format!("{TOKEN_PREFIX}{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&b[..])))
}

fn new_accessor() -> String {
    let mut b = [0u8; 12];
    rand::rng().fill_bytes(&mut b);
    format!("acc_{}", hex::encode(b))
}

/// The workload a session acts for (what its requests are decided as).
pub fn workload(s: &Session) -> VerifiedWorkload {
    VerifiedWorkload {
        issuer_name: s.issuer_name.clone(),
        issuer: s.issuer.clone(),
        subject: s.subject.clone(),
        attributes: s.attributes.clone(),
        expires_at: s.expires_at,
    }
}

/// A session as the audit log names it: its accessor, never the token.
fn session_event(action: &'static str, outcome: &'static str, s: &Session, meta: Option<&RequestMeta>) -> Event {
    Event::new(action, outcome)
        .request(meta)
        .actor(workload_info(&workload(s)))
        .detail("accessor", s.accessor.clone())
        .detail("auth_mount", s.mount.clone())
        .detail("vault_role", s.vault_role.clone())
}

/// Logs a verified workload in: a new session (audited before it exists).
pub async fn login(
    store: &dyn Store,
    audit: &Audit,
    cfg: &VaultApiConfig,
    w: &VerifiedWorkload,
    mount: &str,
    role: &str,
    meta: &RequestMeta,
) -> Result<(SecretString, Session), SessionError> {
    let now = OffsetDateTime::now_utc();
    let token = generate();
    let session = Session {
        token_hash: hash(token.expose_secret()),
        accessor: new_accessor(),
        mount: mount.to_owned(),
        vault_role: role.to_owned(),
        issuer_name: w.issuer_name.clone(),
        issuer: w.issuer.clone(),
        subject: w.subject.clone(),
        attributes: w.attributes.clone(),
        created_at: now,
        // Both bounded by config validation (at most 24 h).
        expires_at: now + cfg.session_ttl,
        max_expires_at: now + cfg.session_max_ttl(),
        revoked_at: None,
    };
    let mut ev = session_event("vault.login", "ok", &session, Some(meta));
    ev.ttl_seconds = Some(crate::duration::secs_i64(cfg.session_ttl));
    audit.record(ev).await?;
    store.session_create(&session).await?;
    Ok((token, session))
}

/// Checks a presented client token: its live session, or why not.
pub async fn authenticate(store: &dyn Store, token: &SecretString, now: OffsetDateTime) -> Result<Result<Session, Refusal>, StoreError> {
    let presented = token.expose_secret();
    if presented.len() > MAX_TOKEN_BYTES || !looks_like_token(presented) {
        return Ok(Err(Refusal::Unknown));
    }
    let h = hash(presented);
    let Some(s) = store.session_by_hash(&h).await? else {
        return Ok(Err(Refusal::Unknown));
    };
    if !bool::from(s.token_hash.as_bytes().ct_eq(h.as_bytes())) {
        return Ok(Err(Refusal::Unknown));
    }
    if s.revoked_at.is_some() {
        return Ok(Err(Refusal::Revoked));
    }
    if s.expires_at <= now {
        return Ok(Err(Refusal::Expired));
    }
    Ok(Ok(s))
}

/// Extends a session by `increment` (default `session_ttl`) from now,
/// never past its max. Returns the session as it now stands and whether
/// the extension was cut short by the max.
pub async fn renew(
    store: &dyn Store,
    audit: &Audit,
    cfg: &VaultApiConfig,
    s: &Session,
    increment: Option<Duration>,
    meta: &RequestMeta,
) -> Result<Option<(Session, bool)>, SessionError> {
    let now = OffsetDateTime::now_utc();
    let asked = increment.unwrap_or(cfg.session_ttl).min(cfg.session_max_ttl());
    let wanted = now + asked;
    let new_exp = wanted.min(s.max_expires_at).max(s.expires_at);
    if !store.session_renew(&s.token_hash, now, new_exp).await? {
        return Ok(None);
    }
    let mut out = s.clone();
    out.expires_at = new_exp;
    let mut ev = session_event("vault.renew", "ok", &out, Some(meta));
    ev.ttl_seconds = Some((new_exp - now).whole_seconds());
    audit.note(ev);
    Ok(Some((out, new_exp < wanted)))
}

/// Ends a session now (its credentials keep their own leases).
pub async fn revoke(store: &dyn Store, audit: &Audit, s: &Session, meta: &RequestMeta) -> Result<(), SessionError> {
    let done = store.session_revoke(&s.token_hash, OffsetDateTime::now_utc()).await?;
    audit.note(session_event("vault.revoke", if done { "ok" } else { "not_found" }, s, Some(meta)));
    Ok(())
}

/// Deletes sessions that ended more than [`KEEP_ENDED`] ago, `limit` at a
/// time (the retention task calls it).
pub async fn prune(store: &dyn Store, now: OffsetDateTime, limit: u32) -> Result<u64, StoreError> {
    match crate::duration::sub(now, KEEP_ENDED) {
        Some(before) => store.sessions_prune(before, limit).await,
        None => Ok(0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_have_the_prefix_and_256_bits() {
        let t = generate();
        assert!(looks_like_token(t.expose_secret()));
        assert_eq!(t.expose_secret().len(), TOKEN_PREFIX.len() + 43);
        assert_ne!(t.expose_secret(), generate().expose_secret());
        assert!(!looks_like_token(crate::admin_tokens::generate().expose_secret()));
    }
}
