//! People: sign-in through OpenID Connect providers (`[people]`) and the
//! person sessions it opens.
//!
//! - Browser: [`People::begin_login`] returns the provider URL (code flow,
//!   PKCE S256, `state`, `nonce`) and the pending login sealed (AES-GCM
//!   under the seal key) for a short-lived cookie: nothing is stored for an
//!   unauthenticated request, and any replica with the seal key can finish
//!   it. [`People::finish_login`] checks `state` against the cookie, redeems
//!   the code with the verifier, verifies the ID token (with the nonce) and
//!   opens a session.
//! - CLI: [`People::device_start`] / [`People::device_poll`] broker the
//!   device authorization grant (RFC 8628): lessor holds the client secret;
//!   the CLI holds a sealed device code naming the provider's.
//! - Sessions: opaque `lsr_person_` + 256 random bits, stored only as their
//!   SHA-256; idle and absolute timeouts; sign-out ends one session or all
//!   of the person's; refused on every replica from the next request on.
//!   The CSRF token of a cookie session is an HMAC of the session token
//!   under a key derived from the seal key (nothing stored; compared in
//!   constant time).
//!
//! Must not import: http, policy, lease, config, connections.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use rand::RngCore;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use crate::audit::{Audit, AuditError, Event};
use crate::principal::{Actor, Person, RequestMeta};
use crate::seal::Seal;
use crate::store::{PersonSession, Store, StoreError};

pub mod config;
pub mod oidc;

pub use config::{PeopleConfig, ProviderConfig};
use oidc::{DevicePollError, Provider, Tokens};

/// Prefix of person session tokens (told apart from JWTs, admin and Vault
/// tokens at a glance, and by secret scanners).
pub const TOKEN_PREFIX: &str = "lsr_person_";
/// Longer presented tokens are refused before hashing (a real one is 54).
const MAX_TOKEN_BYTES: usize = 128;
/// How long a browser sign-in may take at the provider.
pub const LOGIN_TTL: Duration = Duration::from_secs(600);
/// Longest device code lifetime lessor accepts from a provider.
const MAX_DEVICE_TTL: u64 = 1800;
/// Ended sessions are deleted this long after they end.
pub const KEEP_ENDED: Duration = Duration::from_secs(24 * 3600);
/// Longest `return_to` accepted.
const MAX_RETURN_TO: usize = 512;
/// Largest sealed blob (cookie or device code) opened.
const MAX_SEALED: usize = 4096;

const LOGIN_AAD: &[u8] = b"lessor\0people-login";
const DEVICE_AAD: &[u8] = b"lessor\0people-device";
const CSRF_KEY_PURPOSE: &str = "people-csrf";

/// Why a sign-in was refused: `reason` is a short bounded label (audit,
/// metrics), `message` says which check failed.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct LoginRefusal {
    pub reason: &'static str,
    pub message: String,
}

#[derive(Debug, thiserror::Error)]
pub enum PeopleError {
    #[error("unknown provider `{name}` (configured: {known})")]
    UnknownProvider { name: String, known: String },
    #[error("sign-in refused: {0}")]
    Refused(LoginRefusal),
    /// The device code is not approved yet (`authorization_pending`,
    /// `slow_down`).
    #[error("{0}")]
    Pending(&'static str),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Audit(#[from] AuditError),
}

impl PeopleError {
    fn refused(reason: &'static str, message: impl Into<String>) -> PeopleError {
        PeopleError::Refused(LoginRefusal { reason, message: message.into() })
    }
}

/// Why a presented session token was refused (the client hears a generic
/// "session ended or unknown"; the reason goes to the audit log).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionRefusal {
    Malformed,
    Unknown,
    Ended(&'static str),
}

impl SessionRefusal {
    pub fn reason(&self) -> &'static str {
        match self {
            SessionRefusal::Malformed => "malformed_person_session",
            SessionRefusal::Unknown => "unknown_person_session",
            SessionRefusal::Ended(r) => r,
        }
    }
}

/// A browser sign-in under way, as sealed in its cookie.
#[derive(Serialize, Deserialize)]
struct PendingLogin {
    /// Provider name.
    p: String,
    /// `state`, `nonce`, PKCE verifier.
    s: String,
    n: String,
    v: String,
    /// Where to go afterwards (a local path).
    r: String,
    /// Unix seconds after which it is refused.
    e: i64,
}

/// A device sign-in under way, as sealed in the device code lessor gives
/// the CLI.
#[derive(Serialize, Deserialize)]
struct PendingDevice {
    p: String,
    d: String,
    e: i64,
}

/// A browser sign-in started: where to send the browser, and the sealed
/// state for the `lessor_login` cookie.
pub struct LoginStart {
    pub authorization_url: String,
    pub cookie: String,
}

/// A session just opened: the token (shown once) and its record.
pub struct Opened {
    pub token: SecretString,
    pub session: PersonSession,
    pub return_to: String,
}

/// What `POST /v1/people/device` answers.
pub struct DeviceStart {
    pub device_code: String,
    pub user_code: String,
    pub verification_uri: String,
    pub verification_uri_complete: Option<String>,
    pub interval: u64,
    pub expires_in: u64,
}

/// Sign-in and person sessions.
pub struct People {
    providers: BTreeMap<String, Provider>,
    idle: Duration,
    absolute: Duration,
    seal: Arc<Seal>,
    csrf_key: ring::hmac::Key,
    redirect_uri: String,
    /// Cookies get `Secure` (lessor is reached over https, or not on
    /// loopback).
    pub secure_cookies: bool,
    store: Arc<dyn Store>,
    audit: Audit,
}

fn random_b64(n: usize) -> String {
    let mut b = zeroize::Zeroizing::new(vec![0u8; n]);
    rand::rng().fill_bytes(&mut b[..]);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&b[..])
}

/// The stored form of a session token: SHA-256, hex.
pub fn hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Whether `token` claims to be a person session token.
pub fn looks_like_token(token: &str) -> bool {
    token.starts_with(TOKEN_PREFIX)
}

/// The PKCE S256 challenge of a verifier.
pub fn pkce_challenge(verifier: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

/// A `return_to` lessor redirects to: a local absolute path only (no
/// scheme, no `//host`, no backslash, no control characters).
pub fn safe_return_to(r: &str) -> bool {
    r.starts_with('/')
        && !r.starts_with("//")
        && !r.contains('\\')
        && r.len() <= MAX_RETURN_TO
        && r.chars().all(|c| !c.is_control())
}

/// The person a session is for.
pub fn person(s: &PersonSession) -> Person {
    Person {
        provider: s.provider.clone(),
        issuer: s.issuer.clone(),
        subject: s.subject.clone(),
        email: s.email.clone(),
        name: s.name.clone(),
        groups: s.groups.clone(),
    }
}

fn session_event(action: &'static str, outcome: &'static str, s: &PersonSession, meta: Option<&RequestMeta>) -> Event {
    Event::new(action, outcome)
        .request(meta)
        .actor(Actor::Person(person(s)).audit_info())
        .detail("session", s.id.clone())
        .detail("provider", s.provider.clone())
        .detail("via", s.via.clone())
}

fn to_time(d: Duration) -> time::Duration {
    // Bounded by config validation (at most 30 days).
    time::Duration::try_from(d).unwrap_or(time::Duration::ZERO)
}

impl People {
    /// Reads every provider's client secret; `public_url` is where browsers
    /// reach lessor (the redirect URI is `<public_url>/v1/people/callback`).
    pub fn new(
        cfg: &PeopleConfig,
        public_url: &str,
        secure_cookies: bool,
        seal: Arc<Seal>,
        store: Arc<dyn Store>,
        audit: Audit,
        http: reqwest::Client,
    ) -> Result<People, String> {
        cfg.validate()?;
        let mut providers = BTreeMap::new();
        for (name, p) in &cfg.providers {
            let secret = p.read_secret(name)?;
            providers.insert(name.clone(), Provider::new(name, p.clone(), secret, http.clone())?);
            // Successful sign-ins start at 0 (not absent), so rates and
            // ratios over them are defined from the first scrape.
            for via in ["browser", "device"] {
                crate::telemetry::metrics().people_sign_ins.with_label_values(&[name.as_str(), via, "ok", "none"]);
            }
        }
        Ok(People {
            providers,
            idle: cfg.idle_timeout,
            absolute: cfg.absolute_timeout,
            csrf_key: seal.derive_hmac_key(CSRF_KEY_PURPOSE),
            seal,
            redirect_uri: format!("{}/v1/people/callback", public_url.trim_end_matches('/')),
            secure_cookies,
            store,
            audit,
        })
    }

    /// The redirect URI registered at the providers.
    pub fn redirect_uri(&self) -> &str {
        &self.redirect_uri
    }

    pub fn idle_timeout(&self) -> Duration {
        self.idle
    }

    /// The provider called `name`; with no name, the only one configured.
    fn provider(&self, name: Option<&str>) -> Result<&Provider, PeopleError> {
        let known = || self.providers.keys().map(|k| format!("`{k}`")).collect::<Vec<_>>().join(", ");
        match name {
            Some(n) => self.providers.get(n).ok_or_else(|| PeopleError::UnknownProvider {
                name: n.chars().take(64).flat_map(char::escape_debug).collect(),
                known: known(),
            }),
            None if self.providers.len() == 1 => self.providers.values().next().ok_or_else(|| {
                PeopleError::UnknownProvider { name: String::new(), known: known() }
            }),
            None => Err(PeopleError::refused("provider_required", format!("name a provider: one of {}", known()))),
        }
    }

    fn seal_b64(&self, aad: &[u8], v: &impl Serialize) -> Result<String, PeopleError> {
        let json = zeroize::Zeroizing::new(
            serde_json::to_vec(v).map_err(|e| PeopleError::refused("internal", format!("encoding sign-in state: {e}")))?,
        );
        Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(self.seal.seal(aad, &json)))
    }

    fn open_b64<T: serde::de::DeserializeOwned>(&self, aad: &[u8], s: &str, what: &'static str) -> Result<T, PeopleError> {
        let bad = || PeopleError::refused("state_invalid", format!("the {what} is not one lessor issued (tampered, or another deployment's)"));
        if s.len() > MAX_SEALED {
            return Err(bad());
        }
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(s.trim()).map_err(|_| bad())?;
        let plain = self.seal.open(aad, &raw).map_err(|_| bad())?;
        serde_json::from_slice(plain.expose_secret()).map_err(|_| bad())
    }

    /// Starts a browser sign-in at `provider`. O(1), stores nothing; the
    /// discovery document is cached.
    pub async fn begin_login(&self, provider: Option<&str>, return_to: Option<&str>) -> Result<LoginStart, PeopleError> {
        let p = self.provider(provider)?;
        let return_to = return_to.unwrap_or("/v1/people/me");
        if !safe_return_to(return_to) {
            return Err(PeopleError::refused(
                "return_to",
                "return_to must be a local path starting with one `/` (at most 512 characters)",
            ));
        }
        let d = p.discovery().await.map_err(PeopleError::Refused)?;
        let pending = PendingLogin {
            p: p.name.clone(),
            s: random_b64(32),
            n: random_b64(32),
            v: random_b64(32),
            r: return_to.to_owned(),
            e: (OffsetDateTime::now_utc() + to_time(LOGIN_TTL)).unix_timestamp(),
        };
        let mut url = reqwest::Url::parse(&d.authorization_endpoint)
            .map_err(|e| PeopleError::refused("provider_unavailable", format!("provider `{}`: authorization_endpoint: {e}", p.name)))?;
        url.query_pairs_mut()
            .append_pair("response_type", "code")
            .append_pair("client_id", &p.cfg.client_id)
            .append_pair("redirect_uri", &self.redirect_uri)
            .append_pair("scope", &p.cfg.scopes.join(" "))
            .append_pair("state", &pending.s)
            .append_pair("nonce", &pending.n)
            .append_pair("code_challenge", &pkce_challenge(&pending.v))
            .append_pair("code_challenge_method", "S256");
        Ok(LoginStart { authorization_url: url.into(), cookie: self.seal_b64(LOGIN_AAD, &pending)? })
    }

    /// Counts a sign-in in `lessor_people_sign_ins_total`. The provider
    /// label is a configured name (anything else, e.g. from a cookie that
    /// did not open, is `unknown`), the reason a fixed `&'static str`.
    fn count(&self, provider: &str, via: &'static str, reason: Option<&'static str>) {
        let provider = if self.providers.contains_key(provider) { provider } else { "unknown" };
        let (outcome, reason) = match reason {
            None => ("ok", "none"),
            Some(r) => ("refused", r),
        };
        crate::telemetry::metrics().people_sign_ins.with_label_values(&[provider, via, outcome, reason]).inc();
    }

    fn denied(&self, meta: &RequestMeta, provider: &str, via: &'static str, r: &LoginRefusal) {
        self.count(provider, via, Some(r.reason));
        self.audit.note(
            Event::new("person.login", "denied")
                .request(Some(meta))
                .detail("provider", provider.to_owned())
                .detail("via", via.to_owned())
                .error(r.reason, r.message.clone()),
        );
    }

    /// Finishes a browser sign-in: the callback's `state`, `code` (or the
    /// provider's `error`) and the `lessor_login` cookie.
    pub async fn finish_login(
        &self,
        cookie: Option<&str>,
        state: Option<&str>,
        code: Option<&str>,
        provider_error: Option<&str>,
        meta: &RequestMeta,
    ) -> Result<Opened, PeopleError> {
        let fail = |provider: &str, e: PeopleError| {
            if let PeopleError::Refused(r) = &e {
                self.denied(meta, provider, "browser", r);
            }
            e
        };
        let Some(cookie) = cookie else {
            return Err(fail(
                "",
                PeopleError::refused("state_missing", "no sign-in under way in this browser (the lessor_login cookie is missing or expired)"),
            ));
        };
        let pending: PendingLogin = self.open_b64(LOGIN_AAD, cookie, "sign-in cookie").map_err(|e| fail("", e))?;
        let pname = pending.p.clone();
        if OffsetDateTime::now_utc().unix_timestamp() > pending.e {
            return Err(fail(&pname, PeopleError::refused("state_expired", "the sign-in took longer than 10 minutes; start again")));
        }
        let state_ok = state.is_some_and(|s| bool::from(subtle::ConstantTimeEq::ct_eq(s.as_bytes(), pending.s.as_bytes())));
        if !state_ok {
            return Err(fail(&pname, PeopleError::refused("state_mismatch", "the callback's `state` is not this browser's sign-in")));
        }
        if let Some(e) = provider_error {
            let e: String = e.chars().take(64).flat_map(char::escape_debug).collect();
            return Err(fail(&pname, PeopleError::refused("provider_error", format!("the provider answered `{e}`"))));
        }
        let code = code.filter(|c| !c.is_empty() && c.len() <= 2048).ok_or_else(|| {
            fail(&pname, PeopleError::refused("code_missing", "the callback has no authorization `code`"))
        })?;
        let p = self.provider(Some(&pname)).map_err(|e| fail(&pname, e))?;
        let tokens = p.redeem_code(code, &pending.v, &self.redirect_uri).await.map_err(|r| fail(&pname, PeopleError::Refused(r)))?;
        let opened = self.open_session(p, &tokens, Some(&pending.n), "browser", meta).await.map_err(|e| fail(&pname, e))?;
        Ok(Opened { return_to: pending.r, ..opened })
    }

    async fn open_session(
        &self,
        p: &Provider,
        tokens: &Tokens,
        nonce: Option<&str>,
        via: &'static str,
        meta: &RequestMeta,
    ) -> Result<Opened, PeopleError> {
        let now = OffsetDateTime::now_utc();
        let claims = p.verify_id_token(tokens, nonce, now).await.map_err(PeopleError::Refused)?;
        let token = SecretString::from(format!("{TOKEN_PREFIX}{}", random_b64(32)));
        let mut id = [0u8; 12];
        rand::rng().fill_bytes(&mut id);
        let session = PersonSession {
            token_hash: hash(token.expose_secret()),
            id: format!("ps_{}", hex::encode(id)),
            provider: p.name.clone(),
            issuer: p.cfg.issuer.clone(),
            subject: claims.subject,
            email: claims.email,
            name: claims.name,
            groups: claims.groups,
            via: via.to_owned(),
            created_at: now,
            idle_expires_at: now + to_time(self.idle),
            expires_at: now + to_time(self.absolute),
            ended_at: None,
            end_reason: None,
        };
        // Audited before it exists: no session without its entry.
        self.audit.record(session_event("person.login", "ok", &session, Some(meta))).await?;
        self.store.person_session_create(&session).await?;
        self.count(&p.name, via, None);
        Ok(Opened { token, session, return_to: String::new() })
    }

    /// Checks a presented session token: its live session, or why not. A
    /// used session's idle end moves forward (at most one store write per
    /// a quarter of the idle timeout, and per minute).
    pub async fn authenticate(&self, token: &SecretString) -> Result<Result<PersonSession, SessionRefusal>, StoreError> {
        let t = token.expose_secret();
        if !looks_like_token(t) || t.len() > MAX_TOKEN_BYTES {
            return Ok(Err(SessionRefusal::Malformed));
        }
        let now = OffsetDateTime::now_utc();
        let Some(mut s) = self.store.person_session_by_hash(&hash(t)).await? else {
            return Ok(Err(SessionRefusal::Unknown));
        };
        if let Some(why) = s.ended_why(now) {
            return Ok(Err(SessionRefusal::Ended(why)));
        }
        let step = (self.idle / 4).min(Duration::from_secs(60));
        let fresh = now + to_time(self.idle);
        if fresh - s.idle_expires_at >= to_time(step) {
            if !self.store.person_session_touch(&s.token_hash, now, fresh).await? {
                return Ok(Err(SessionRefusal::Ended("signed_out")));
            }
            s.idle_expires_at = fresh.min(s.expires_at);
        }
        Ok(Ok(s))
    }

    /// The CSRF token of a cookie session: HMAC of the session token.
    pub fn csrf_token(&self, token: &SecretString) -> String {
        let tag = ring::hmac::sign(&self.csrf_key, token.expose_secret().as_bytes());
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(tag.as_ref())
    }

    /// Whether `presented` is the session's CSRF token (constant time).
    pub fn csrf_ok(&self, token: &SecretString, presented: &str) -> bool {
        let expected = self.csrf_token(token);
        presented.len() == expected.len() && bool::from(subtle::ConstantTimeEq::ct_eq(presented.as_bytes(), expected.as_bytes()))
    }

    /// Signs out: this session, or (`everywhere`) every session of its
    /// person. Returns how many sessions ended.
    pub async fn logout(&self, s: &PersonSession, everywhere: bool, meta: &RequestMeta) -> Result<u64, PeopleError> {
        let now = OffsetDateTime::now_utc();
        let n = if everywhere {
            self.store.person_sessions_end_all(&s.provider, &s.subject, now, "signed_out_everywhere").await?
        } else {
            u64::from(self.store.person_session_end(&s.token_hash, now, "signed_out").await?)
        };
        self.audit.note(session_event("person.logout", "ok", s, Some(meta)).detail("everywhere", everywhere).detail("ended", n));
        Ok(n)
    }

    /// Starts a device sign-in for the CLI (RFC 8628) at `provider`.
    pub async fn device_start(&self, provider: Option<&str>) -> Result<DeviceStart, PeopleError> {
        let p = self.provider(provider)?;
        let a = p.device_authorize().await.map_err(PeopleError::Refused)?;
        let expires_in = a.expires_in.clamp(1, MAX_DEVICE_TTL);
        let pending = PendingDevice {
            p: p.name.clone(),
            d: a.device_code,
            e: OffsetDateTime::now_utc().unix_timestamp().saturating_add(i64::try_from(expires_in).unwrap_or(0)),
        };
        Ok(DeviceStart {
            device_code: self.seal_b64(DEVICE_AAD, &pending)?,
            user_code: a.user_code,
            verification_uri: a.verification_uri,
            verification_uri_complete: a.verification_uri_complete,
            interval: a.interval.unwrap_or(5).clamp(1, 60),
            expires_in,
        })
    }

    /// Polls a device sign-in: [`PeopleError::Pending`] until the person
    /// approves it at the provider, then a new session.
    pub async fn device_poll(&self, device_code: &str, meta: &RequestMeta) -> Result<Opened, PeopleError> {
        let pending: PendingDevice = self.open_b64(DEVICE_AAD, device_code, "device code").inspect_err(|e| {
            if let PeopleError::Refused(r) = e {
                self.count("", "device", Some(r.reason));
            }
        })?;
        let p = self.provider(Some(&pending.p))?;
        let fail = |e: PeopleError| {
            if let PeopleError::Refused(r) = &e {
                self.denied(meta, &pending.p, "device", r);
            }
            e
        };
        if OffsetDateTime::now_utc().unix_timestamp() > pending.e {
            return Err(fail(PeopleError::refused("expired_token", "the device code expired; run `lessor login` again")));
        }
        let tokens = match p.poll_device(&pending.d).await {
            Ok(t) => t,
            Err(DevicePollError::Pending(r)) => return Err(PeopleError::Pending(r)),
            Err(DevicePollError::Refused(r)) => return Err(fail(PeopleError::Refused(r))),
        };
        self.open_session(p, &tokens, None, "device", meta).await.map_err(fail)
    }

    /// An audit entry for a refused session token (aggregated like every
    /// refused credential).
    pub fn note_refused(&self, r: SessionRefusal, meta: &RequestMeta, credential: String) {
        self.audit.auth_failed("people", r.reason(), meta.source, || {
            Event::new("authenticate", "failed")
                .request(Some(meta))
                .detail("credential", credential)
                .error(r.reason(), "person session refused")
        });
    }

    /// An audit entry for a refused CSRF check.
    pub fn note_csrf(&self, s: &PersonSession, meta: &RequestMeta, why: &'static str) {
        self.audit.note(session_event("authenticate", "denied", s, Some(meta)).error("csrf", why));
    }
}

/// Deletes up to `limit` person sessions that ended more than a day ago.
pub async fn prune(store: &dyn Store, now: OffsetDateTime, limit: u32) -> Result<u64, StoreError> {
    match now.checked_sub(to_time(KEEP_ENDED)) {
        Some(before) => store.person_sessions_prune(before, limit).await,
        None => Ok(0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn return_to_is_a_local_path() {
        assert!(safe_return_to("/v1/people/me"));
        assert!(safe_return_to("/ui?x=1"));
        for bad in ["https://evil.example", "//evil.example/x", "/\\evil", "relative", "/a\nb", ""] {
            assert!(!safe_return_to(bad), "{bad:?}");
        }
        assert!(!safe_return_to(&format!("/{}", "a".repeat(600))));
    }

    #[test]
    fn pkce_challenge_is_rfc7636_s256() {
        // RFC 7636 appendix B.
        assert_eq!(pkce_challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"), "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM");
    }
}
