//! Workload identity: verifies a workload's JWT against the configured
//! issuers and turns its claims into principal attributes.
//!
//! Order of checks (each failure is a precise [`AuthError`], never echoing
//! the token): size -> shape -> header (`alg`) -> unverified `iss` picks the
//! issuer (an unconfigured issuer is refused before any network call) ->
//! algorithm allowlist -> key by `kid` -> signature -> `exp`/`nbf`/`iat`/`aud`.
//!
//! Must not import: config, http, store, policy, lease (it is below them:
//! issuer settings live in [`config`](self::config) here).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use jsonwebtoken::{Algorithm, Validation};
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;
use time::OffsetDateTime;

use crate::fmt_duration;

pub mod config;
pub mod dev;
pub mod jwks;
pub mod mapping;

use jwks::{IssuerKeys, KeyLookup};
pub use jwks::KeyTimes;
use mapping::ClaimMapping;
pub use self::config::{IssuerConfig, KeySource};

/// Why a workload JWT was refused. Messages are safe to return to the caller.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum AuthError {
    #[error("no bearer token: send `Authorization: Bearer <workload JWT>`")]
    Missing,
    #[error("token is {size} bytes; the limit is {limit}")]
    TooLarge { size: usize, limit: usize },
    #[error("token is not a compact JWT: {0}")]
    Malformed(String),
    #[error("alg `none` is never accepted")]
    AlgNone,
    #[error("algorithm `{alg}` is not allowed for issuer `{issuer}` (allowed: {allowed})")]
    AlgNotAllowed { alg: String, issuer: String, allowed: String },
    #[error("token has no `iss` claim")]
    NoIssuer,
    #[error("issuer `{0}` is not configured")]
    UnknownIssuer(String),
    #[error("token header has no `kid`; issuer `{0}` publishes several keys")]
    NoKid(String),
    #[error("unknown key id `{kid}` for issuer `{issuer}`")]
    UnknownKid { kid: String, issuer: String },
    #[error("keys of issuer `{issuer}` are unavailable: {reason}")]
    KeysUnavailable { issuer: String, reason: String },
    #[error("signature does not verify")]
    BadSignature,
    #[error("token expired {0} ago")]
    Expired(String),
    #[error("token is not valid for another {0} (nbf)")]
    NotYetValid(String),
    #[error("token was issued {0} in the future (iat)")]
    IssuedInFuture(String),
    #[error("token is {age} old; issuer `{issuer}` accepts tokens up to {max} old")]
    TooOld { age: String, max: String, issuer: String },
    #[error("claim `{0}` is missing")]
    MissingClaim(&'static str),
    #[error("claim `{claim}` is invalid: {reason}")]
    InvalidClaim { claim: &'static str, reason: String },
    #[error("audience {got} not accepted (expected one of: {expected})")]
    Audience { got: String, expected: String },
}

impl AuthError {
    /// A short, bounded label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            AuthError::Missing => "missing",
            AuthError::TooLarge { .. } => "too_large",
            AuthError::Malformed(_) => "malformed",
            AuthError::AlgNone | AuthError::AlgNotAllowed { .. } => "algorithm",
            AuthError::NoIssuer | AuthError::UnknownIssuer(_) => "issuer",
            AuthError::NoKid(_) | AuthError::UnknownKid { .. } => "unknown_kid",
            AuthError::KeysUnavailable { .. } => "keys_unavailable",
            AuthError::BadSignature => "signature",
            AuthError::Expired(_) => "expired",
            AuthError::NotYetValid(_) | AuthError::IssuedInFuture(_) => "not_yet_valid",
            AuthError::TooOld { .. } => "too_old",
            AuthError::MissingClaim(_) | AuthError::InvalidClaim { .. } => "claims",
            AuthError::Audience { .. } => "audience",
        }
    }
}

/// A verified workload.
#[derive(Debug, Clone)]
pub struct VerifiedWorkload {
    /// Name of the issuer in the config.
    pub issuer_name: String,
    /// Exact `iss`.
    pub issuer: String,
    pub subject: String,
    /// Mapped claims (principal attributes).
    pub attributes: BTreeMap<String, String>,
    pub expires_at: OffsetDateTime,
}

impl VerifiedWorkload {
    pub fn to_plugin(&self) -> lessor_plugin::Workload {
        lessor_plugin::Workload {
            issuer: self.issuer.clone(),
            subject: self.subject.clone(),
            attributes: self.attributes.clone(),
        }
    }
}

/// Parses an algorithm name from config, refusing symmetric ones and `none`.
pub fn parse_allowed_alg(s: &str) -> Result<Algorithm, String> {
    let alg = match s {
        "RS256" => Algorithm::RS256,
        "RS384" => Algorithm::RS384,
        "RS512" => Algorithm::RS512,
        "PS256" => Algorithm::PS256,
        "PS384" => Algorithm::PS384,
        "PS512" => Algorithm::PS512,
        "ES256" => Algorithm::ES256,
        "ES384" => Algorithm::ES384,
        "EdDSA" => Algorithm::EdDSA,
        "HS256" | "HS384" | "HS512" => {
            return Err(format!("algorithm `{s}` is symmetric; workload issuers must sign with public keys"))
        }
        "none" => return Err("algorithm `none` is never allowed".into()),
        other => return Err(format!("unknown algorithm `{other}`")),
    };
    Ok(alg)
}

struct Issuer {
    name: String,
    cfg: IssuerConfig,
    algorithms: Vec<Algorithm>,
    mapping: ClaimMapping,
    keys: IssuerKeys,
}

/// The `issuer` metric label of a token that names no configured issuer.
pub const UNKNOWN_ISSUER: &str = "unknown";

/// Verifies workload JWTs against the configured issuers.
pub struct Verifier {
    by_iss: HashMap<String, Arc<Issuer>>,
    max_jwt_bytes: usize,
}

/// Decodes one JWT segment exactly as `jsonwebtoken` does: base64url
/// without padding (padding, `+` and `/` are refused), then JSON. The only
/// hand decoding left is the unverified payload peek for `iss` (and the
/// `alg: none` message); the header is read with `jsonwebtoken::decode_header`,
/// so no token means one thing here and another to the library.
fn b64_json(segment: &str, what: &str) -> Result<Value, AuthError> {
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(segment)
        .map_err(|_| AuthError::Malformed(format!("{what} is not unpadded base64url")))?;
    serde_json::from_slice(&raw).map_err(|_| AuthError::Malformed(format!("{what} is not JSON")))
}

/// The name of an algorithm as JOSE spells it (`RS256`, `EdDSA`).
fn alg_name(a: Algorithm) -> String {
    format!("{a:?}")
}

fn ago(secs: i64) -> String {
    fmt_duration(Duration::from_secs(secs.max(0) as u64))
}

impl Verifier {
    /// Verifies tokens of `issuers` (`[issuers.<name>]`), refusing any
    /// over `max_jwt_bytes` (`limits.max_jwt_bytes`).
    pub fn new(
        issuers: &BTreeMap<String, IssuerConfig>,
        max_jwt_bytes: usize,
        http: reqwest::Client,
    ) -> Result<Verifier, String> {
        let mut by_iss = HashMap::new();
        for (name, ic) in issuers {
            let algorithms = ic
                .algorithms
                .iter()
                .map(|a| parse_allowed_alg(a))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("issuer `{name}`: {e}"))?;
            let source = ic.key_source(name)?;
            let iss = ic.issuer.clone();
            let issuer = Issuer {
                name: name.clone(),
                algorithms,
                mapping: ClaimMapping::new(ic.preset.as_deref(), &ic.claims),
                keys: IssuerKeys::new(
                    name,
                    &iss,
                    source,
                    http.clone(),
                    jwks::KeyTimes {
                        ttl: ic.jwks_cache_ttl,
                        min_refetch: ic.min_refetch_interval,
                        failure_cache: ic.jwks_failure_cache,
                        max_stale: ic.jwks_max_stale,
                    },
                ),
                cfg: ic.clone(),
            };
            by_iss.insert(iss, Arc::new(issuer));
        }
        Ok(Verifier { by_iss, max_jwt_bytes })
    }

    /// Names of all principal attributes any issuer maps (for schema checks).
    pub fn mapped_attributes(&self) -> Vec<(String, String)> {
        self.by_iss
            .values()
            .flat_map(|i| i.mapping.attributes().map(|a| (i.name.clone(), a.to_owned())).collect::<Vec<_>>())
            .collect()
    }

    /// Verifies `token` and maps its claims.
    pub async fn verify(&self, token: &SecretString) -> Result<VerifiedWorkload, AuthError> {
        self.verify_at(token, OffsetDateTime::now_utc()).await
    }

    /// Verifies `token` as of `now`. A refusal is counted in
    /// `lessor_auth_failures_total` under the configured issuer's name, or
    /// `unknown` when the token names no configured issuer (never the raw
    /// `iss`, which the caller chooses).
    pub async fn verify_at(&self, token: &SecretString, now: OffsetDateTime) -> Result<VerifiedWorkload, AuthError> {
        self.verify_naming_issuer(token, now).await.map_err(|(e, _)| e)
    }

    /// [`Verifier::verify_at`], a refusal also naming the configured issuer
    /// it was counted under (`unknown` when none): the audit log's
    /// failure summary groups by it.
    pub async fn verify_naming_issuer(
        &self,
        token: &SecretString,
        now: OffsetDateTime,
    ) -> Result<VerifiedWorkload, (AuthError, &str)> {
        let mut issuer_name = None;
        let result = self.verify_inner(token, now, &mut issuer_name).await;
        result.map_err(|e| {
            let name = issuer_name.unwrap_or(UNKNOWN_ISSUER);
            crate::telemetry::metrics().auth_failure(name, e.reason());
            (e, name)
        })
    }

    async fn verify_inner<'a>(
        &'a self,
        token: &SecretString,
        now: OffsetDateTime,
        issuer_name: &mut Option<&'a str>,
    ) -> Result<VerifiedWorkload, AuthError> {
        let t = token.expose_secret().trim();
        if t.is_empty() {
            return Err(AuthError::Missing);
        }
        if t.len() > self.max_jwt_bytes {
            return Err(AuthError::TooLarge { size: t.len(), limit: self.max_jwt_bytes });
        }
        let parts: Vec<&str> = t.split('.').collect();
        if parts.len() != 3 {
            return Err(AuthError::Malformed(format!(
                "expected 3 dot-separated parts, found {}",
                parts.len()
            )));
        }
        let header = match jsonwebtoken::decode_header(t) {
            Ok(h) => h,
            Err(e) => {
                // Only to name `alg: none` precisely; refused either way.
                let peek = b64_json(parts[0], "header")?;
                if peek.get("alg").and_then(Value::as_str).is_some_and(|a| a.eq_ignore_ascii_case("none")) {
                    return Err(AuthError::AlgNone);
                }
                return Err(AuthError::Malformed(match e.kind() {
                    jsonwebtoken::errors::ErrorKind::Base64(_) => "header is not unpadded base64url".to_owned(),
                    _ => "header is not a JOSE header with a supported `alg`".to_owned(),
                }));
            }
        };
        let alg = alg_name(header.alg);
        let unverified = b64_json(parts[1], "payload")?;
        let iss = unverified.get("iss").and_then(Value::as_str).ok_or(AuthError::NoIssuer)?;
        let issuer = self.by_iss.get(iss).ok_or_else(|| AuthError::UnknownIssuer(iss.to_owned()))?;
        *issuer_name = Some(issuer.name.as_str());

        let allowed = || issuer.cfg.algorithms.join(", ");
        if !issuer.algorithms.contains(&header.alg) {
            return Err(AuthError::AlgNotAllowed { alg, issuer: iss.to_owned(), allowed: allowed() });
        }
        let alg_parsed = header.alg;
        let kid = header.kid.as_deref().ok_or_else(|| AuthError::NoKid(iss.to_owned()))?;
        let key = match issuer.keys.key(kid).await {
            KeyLookup::Found(k) => k,
            KeyLookup::UnknownKid => {
                return Err(AuthError::UnknownKid { kid: kid.to_owned(), issuer: iss.to_owned() })
            }
            KeyLookup::Unavailable(reason) => {
                return Err(AuthError::KeysUnavailable { issuer: iss.to_owned(), reason })
            }
        };

        // Signature only; claims are checked below for precise messages.
        let mut v = Validation::new(alg_parsed);
        v.algorithms = vec![alg_parsed];
        v.validate_exp = false;
        v.validate_nbf = false;
        v.validate_aud = false;
        v.required_spec_claims.clear();
        let data = jsonwebtoken::decode::<Value>(t, &key, &v).map_err(|e| match e.kind() {
            jsonwebtoken::errors::ErrorKind::InvalidSignature => AuthError::BadSignature,
            jsonwebtoken::errors::ErrorKind::InvalidAlgorithm => AuthError::AlgNotAllowed {
                alg: alg.clone(),
                issuer: iss.to_owned(),
                allowed: format!("{} (and the key's type)", allowed()),
            },
            _ => AuthError::Malformed(e.to_string()),
        })?;
        let claims = data.claims;
        self.check_claims(issuer, &claims, now)?;
        let subject = claims
            .get("sub")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .ok_or(AuthError::MissingClaim("sub"))?
            .to_owned();
        let exp = claims.get("exp").and_then(Value::as_i64).unwrap_or_default();
        Ok(VerifiedWorkload {
            issuer_name: issuer.name.clone(),
            issuer: iss.to_owned(),
            subject,
            attributes: issuer.mapping.apply(&claims),
            expires_at: OffsetDateTime::from_unix_timestamp(exp).unwrap_or(now),
        })
    }

    fn check_claims(&self, issuer: &Issuer, claims: &Value, now: OffsetDateTime) -> Result<(), AuthError> {
        let now_s = now.unix_timestamp();
        let leeway = issuer.cfg.leeway.as_secs() as i64;
        let num = |name: &'static str| -> Result<Option<i64>, AuthError> {
            match claims.get(name) {
                None | Some(Value::Null) => Ok(None),
                Some(v) => v
                    .as_f64()
                    .map(|f| Some(f as i64))
                    .ok_or(AuthError::InvalidClaim { claim: name, reason: "not a number".into() }),
            }
        };
        let exp = num("exp")?.ok_or(AuthError::MissingClaim("exp"))?;
        // Claims are the issuer's numbers: saturating, never overflowing (found by fuzz_jwt).
        if now_s > exp.saturating_add(leeway) {
            return Err(AuthError::Expired(ago(now_s.saturating_sub(exp))));
        }
        if let Some(nbf) = num("nbf")? {
            if nbf.saturating_sub(leeway) > now_s {
                return Err(AuthError::NotYetValid(ago(nbf.saturating_sub(now_s))));
            }
        }
        let iat = num("iat")?;
        if let Some(iat) = iat {
            if iat.saturating_sub(leeway) > now_s {
                return Err(AuthError::IssuedInFuture(ago(iat.saturating_sub(now_s))));
            }
        }
        if let Some(max) = issuer.cfg.max_token_age {
            let iat = iat.ok_or(AuthError::MissingClaim("iat"))?;
            if now_s.saturating_sub(iat) > (max.as_secs() as i64).saturating_add(leeway) {
                return Err(AuthError::TooOld {
                    age: ago(now_s.saturating_sub(iat)),
                    max: fmt_duration(max),
                    issuer: issuer.cfg.issuer.clone(),
                });
            }
        }
        let auds: Vec<&str> = match claims.get("aud") {
            Some(Value::String(s)) => vec![s.as_str()],
            Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).collect(),
            None => return Err(AuthError::MissingClaim("aud")),
            Some(_) => {
                return Err(AuthError::InvalidClaim { claim: "aud", reason: "not a string or list of strings".into() })
            }
        };
        if !auds.iter().any(|a| issuer.cfg.audiences.iter().any(|x| x == a)) {
            let got = auds.iter().map(|a| format!("`{a}`")).collect::<Vec<_>>().join(", ");
            return Err(AuthError::Audience {
                got: if got.is_empty() { "(none)".into() } else { got },
                expected: issuer.cfg.audiences.iter().map(|a| format!("`{a}`")).collect::<Vec<_>>().join(", "),
            });
        }
        Ok(())
    }
}
