//! The `Plugin` implementation: issue, revoke, introspect, JWKS, validate.
//!
//! Owns the token claims and the `revoked/` state prefix; leaves keys to
//! [`crate::keys`]. Never logs a token, a claim value or a key.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use lessor_plugin::secrecy::{ExposeSecret, SecretString};
use lessor_plugin::{
    Capabilities, Document, DocumentSpec, Introspection, IssueRequest, Issued, LeaseRef, Plugin, PluginContext,
    PluginError, Registration, RenewRequest, Revocation, RoleSpec, StateError, StateStore, Validation,
};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use tracing::instrument;

use crate::config::{ConnectionConfig, RoleConfig};
use crate::keys::{Clock, KeyRing};

const REVOKED_PREFIX: &str = "revoked/";

/// A token may say it starts this much in the future (clock skew between
/// replicas); expiry gets no leeway at all.
const NBF_LEEWAY_SECS: i64 = 5;

/// `expires_at` may exceed now + the role's `max_ttl` by this much (the core
/// computed it a moment before calling).
const TTL_SLACK: Duration = Duration::from_secs(5);

/// Revocation entries of expired tokens are deleted at most this often.
const PRUNE_EVERY: Duration = Duration::from_secs(60 * 60);

/// Builds the token plugin for one connection. The core calls this. Time
/// comes from `ctx.clock` (tests move it instead of sleeping).
pub async fn build(
    ctx: PluginContext,
    connection: Value,
    roles: Vec<RoleSpec>,
) -> Result<Arc<dyn Plugin>, PluginError> {
    Ok(Arc::new(TokenPlugin::new(ctx, connection, roles).await?))
}

/// How the core knows this plugin (see [`lessor_plugin::Registration`]).
pub fn registration() -> Registration {
    Registration {
        kind: KIND,
        sdk_version: lessor_plugin::SDK_VERSION,
        vault: lessor_plugin::VaultShape::Creds,
        build: |ctx, connection, roles| Box::pin(build(ctx, connection, roles)),
        validate_config,
        ca_files: lessor_plugin::no_ca_files,
    }
}

/// The plugin kind in config (`plugin = "token"`).
pub const KIND: &str = "token";

/// Checks the connection and role tables as [`build`] would, without
/// opening keys. The issuer is checked against a placeholder public URL: the
/// real one is only known to the running daemon.
pub fn validate_config(connection: &Value, roles: &[RoleSpec]) -> Result<(), String> {
    ConnectionConfig::from_json("", connection.clone(), "https://lessor.invalid").map_err(|e| e.to_string())?;
    for spec in roles {
        RoleConfig::from_json("", &spec.name, spec.config.clone()).map_err(|e| e.to_string())?;
    }
    Ok(())
}

struct Role {
    config: RoleConfig,
    max_ttl: Duration,
}

/// Issues lessor-signed JWTs. See the crate docs.
pub struct TokenPlugin {
    connection: String,
    issuer: String,
    roles: BTreeMap<String, Role>,
    state: Arc<dyn StateStore>,
    clock: Clock,
    keys: KeyRing,
    last_prune: Mutex<Option<OffsetDateTime>>,
}

impl std::fmt::Debug for TokenPlugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenPlugin")
            .field("connection", &self.connection)
            .field("issuer", &self.issuer)
            .field("roles", &self.roles.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// The claims of an issued token.
#[derive(Serialize, Deserialize)]
struct Claims {
    iss: String,
    sub: String,
    aud: String,
    iat: i64,
    nbf: i64,
    exp: i64,
    jti: String,
    scope: String,
    lessor_role: String,
    #[serde(flatten)]
    extra: BTreeMap<String, Value>,
}

/// What a revocation entry says.
#[derive(Serialize, Deserialize)]
struct Revoked {
    revoked_at: i64,
    exp: i64,
}

impl TokenPlugin {
    /// Parses the config and opens (creating or rotating) the signing keys.
    pub async fn new(
        ctx: PluginContext,
        connection: Value,
        roles: Vec<RoleSpec>,
    ) -> Result<Self, PluginError> {
        let clock: Clock = ctx.clock.clone();
        let config = ConnectionConfig::from_json(&ctx.connection, connection, &ctx.public_url)?;
        let mut parsed = BTreeMap::new();
        for spec in roles {
            let role_config = RoleConfig::from_json(&ctx.connection, &spec.name, spec.config)?;
            if spec.max_ttl.is_zero() {
                return Err(PluginError::Misconfigured(format!(
                    "role `{}/{}`: `max_ttl` is zero",
                    ctx.connection, spec.name
                )));
            }
            parsed.insert(
                spec.name,
                Role {
                    config: role_config,
                    max_ttl: spec.max_ttl,
                },
            );
        }
        let longest_ttl = parsed.values().map(|r| r.max_ttl).max().unwrap_or_default();
        let keys = KeyRing::open(
            ctx.state.clone(),
            clock.clone(),
            config.algorithm,
            config.rotate_every,
            longest_ttl,
        )
        .await?;
        Ok(TokenPlugin {
            connection: ctx.connection,
            issuer: config.issuer,
            roles: parsed,
            state: ctx.state,
            clock,
            keys,
            last_prune: Mutex::new(None),
        })
    }

    fn inactive() -> Introspection {
        Introspection {
            active: false,
            claims: Map::new(),
        }
    }

    fn jwt_validation(&self, alg: crate::config::Algorithm) -> jsonwebtoken::Validation {
        let alg = match alg {
            crate::config::Algorithm::ES256 => jsonwebtoken::Algorithm::ES256,
            crate::config::Algorithm::EdDSA => jsonwebtoken::Algorithm::EdDSA,
        };
        let mut v = jsonwebtoken::Validation::new(alg);
        // Time is checked against the plugin's clock below; audiences differ
        // per role and are reported, not enforced, by introspection.
        v.validate_exp = false;
        v.validate_nbf = false;
        v.validate_aud = false;
        v.leeway = 0;
        v.set_required_spec_claims(&["exp", "iss", "sub", "aud", "nbf"]);
        v.set_issuer(&[&self.issuer]);
        v
    }

    /// Deletes revocation entries of tokens that have expired, at most once
    /// per [`PRUNE_EVERY`]. Failures are only logged: revocation is done.
    async fn prune_revoked(&self, now: OffsetDateTime) {
        {
            let mut last = self.last_prune.lock().unwrap_or_else(|e| e.into_inner());
            if last.is_some_and(|t| now - t < PRUNE_EVERY) {
                return;
            }
            *last = Some(now);
        }
        let entries = match self.state.list(REVOKED_PREFIX).await {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(error = %e, "listing revoked tokens for pruning failed");
                return;
            }
        };
        let now = now.unix_timestamp();
        for (key, bytes) in entries {
            let expired = serde_json::from_slice::<Revoked>(&bytes).is_ok_and(|r| r.exp < now);
            if expired {
                if let Err(e) = self.state.delete(&key).await {
                    tracing::warn!(error = %e, "pruning a revoked token entry failed");
                }
            }
        }
    }
}

fn rfc3339(t: OffsetDateTime) -> Result<String, PluginError> {
    t.format(&Rfc3339)
        .map_err(|e| PluginError::Permanent(format!("formatting {t}: {e}")))
}

fn humanize(d: Duration) -> String {
    humantime::format_duration(Duration::from_secs(d.as_secs())).to_string()
}

fn reject_reason(e: &jsonwebtoken::errors::Error) -> &'static str {
    use jsonwebtoken::errors::ErrorKind;
    match e.kind() {
        ErrorKind::InvalidSignature => "invalid signature",
        ErrorKind::InvalidIssuer => "wrong issuer",
        ErrorKind::InvalidAlgorithm => "algorithm does not match the key",
        ErrorKind::MissingRequiredClaim(_) => "missing claim",
        _ => "malformed",
    }
}

#[async_trait]
impl Plugin for TokenPlugin {
    fn kind(&self) -> &str {
        KIND
    }

    /// A revoked token is on the connection's denylist at once: introspection
    /// answers `active: false`. A relying party that verifies the JWT
    /// offline against the JWKS accepts it until `exp`.
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            can_renew: false,
            revocation: Revocation::Published { via: "token introspection (RFC 7662)".into(), max_delay_seconds: Some(0) },
        }
    }

    fn documents(&self) -> Vec<DocumentSpec> {
        vec![DocumentSpec {
            name: lessor_plugin::DOC_JWKS.into(),
            per_role: false,
            description: "the JSON Web Key Set tokens of this connection are signed with".into(),
        }]
    }

    async fn validate(&self) -> Result<Validation, PluginError> {
        let s = self.keys.summary().await?;
        let mut details = BTreeMap::new();
        details.insert("algorithm".to_owned(), s.alg.to_string());
        details.insert("current_key_age".to_owned(), s.age);
        details.insert("keys_published".to_owned(), s.published.to_string());
        details.insert("rotate_every".to_owned(), s.rotate_every);
        details.insert("roles".to_owned(), self.roles.len().to_string());
        Ok(Validation {
            identity: format!("token issuer {}, key {} ({})", self.issuer, s.kid, s.alg),
            details,
            warnings: s.warnings,
        })
    }

    #[instrument(skip_all, fields(connection = %self.connection, role = %req.role, lease_id = %req.lease_id))]
    async fn issue(&self, req: IssueRequest) -> Result<Issued, PluginError> {
        let role = self
            .roles
            .get(&req.role)
            .ok_or_else(|| PluginError::InvalidRequest(format!("unknown role `{}`", req.role)))?;
        let now = (self.clock)();
        let exp = req.expires_at.unix_timestamp();
        if exp <= now.unix_timestamp() {
            return Err(PluginError::InvalidRequest(format!(
                "expires_at {} is not in the future",
                rfc3339(req.expires_at)?
            )));
        }
        let ttl = req.expires_at - now;
        if ttl > role.max_ttl + TTL_SLACK {
            return Err(PluginError::InvalidRequest(format!(
                "ttl {} exceeds role max {}",
                humanize(Duration::try_from(ttl).unwrap_or_default()),
                humanize(role.max_ttl)
            )));
        }
        let expires_at = OffsetDateTime::from_unix_timestamp(exp)
            .map_err(|e| PluginError::InvalidRequest(format!("expires_at: {e}")))?;

        let signer = self.keys.signer().await?;
        let iat = now.unix_timestamp();
        let claims = Claims {
            iss: self.issuer.clone(),
            sub: req.workload.subject.clone(),
            aud: role.config.audience.clone(),
            iat,
            nbf: iat,
            exp,
            jti: req.lease_id.as_str().to_owned(),
            scope: req.scopes.join(" "),
            lessor_role: format!("{}/{}", self.connection, req.role),
            extra: role
                .config
                .extra_claims
                .iter()
                .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                .collect(),
        };
        let token = signer.sign(&claims)?;
        tracing::debug!(kid = %signer.kid, "token issued");

        let mut public = Map::new();
        public.insert("scopes".into(), json!(req.scopes));
        public.insert("token_type".into(), json!("Bearer"));
        public.insert("expires_at".into(), json!(rfc3339(expires_at)?));
        public.insert("kid".into(), json!(signer.kid));
        let mut secret = BTreeMap::new();
        secret.insert("token".to_owned(), SecretString::from(token));
        Ok(Issued {
            handle: json!({ "jti": req.lease_id.as_str(), "kid": signer.kid }),
            public,
            secret,
            expires_at,
            root_version: None,
        })
    }

    async fn renew(&self, _req: RenewRequest) -> Result<OffsetDateTime, PluginError> {
        Err(PluginError::Unsupported("renew".into()))
    }

    #[instrument(skip_all, fields(connection = %self.connection, lease_id = %lease.lease_id))]
    async fn revoke(&self, lease: &LeaseRef) -> Result<(), PluginError> {
        let jti = lease
            .handle
            .as_ref()
            .and_then(|h| h.get("jti"))
            .and_then(Value::as_str)
            .unwrap_or(lease.lease_id.as_str());
        let now = (self.clock)();
        let entry = Revoked {
            revoked_at: now.unix_timestamp(),
            exp: lease.expires_at.unix_timestamp(),
        };
        let bytes = serde_json::to_vec(&entry)
            .map_err(|e| StateError(format!("encoding revocation: {e}")))?;
        // The first revocation's time stays; revoking again changes nothing.
        if self
            .state
            .put_if_absent(&format!("{REVOKED_PREFIX}{jti}"), &bytes)
            .await?
        {
            tracing::debug!("token revoked");
        }
        self.prune_revoked(now).await;
        Ok(())
    }

    /// Not applicable: a token is a signed JWT held by the workload, not an
    /// object at a vendor. It ends by itself at `exp` (the lease's expiry);
    /// the only state kept is the revoked-`jti` list, which holds
    /// revocations, not credentials. Nothing can outlive its lease unseen.
    async fn list_objects(&self, _after: Option<&str>, _limit: u32) -> Result<Vec<lessor_plugin::VendorObject>, PluginError> {
        Err(PluginError::Unsupported("listing vendor objects (tokens are not objects at a vendor)".into()))
    }

    async fn document(
        &self,
        role: Option<&str>,
        name: &str,
    ) -> Result<Option<Document>, PluginError> {
        if role.is_some() || name != "jwks" {
            return Ok(None);
        }
        let keys = self.keys.published().await?;
        let body = serde_json::to_vec(&json!({ "keys": keys }))
            .map_err(|e| PluginError::Permanent(format!("encoding JWKS: {e}")))?;
        Ok(Some(Document {
            content_type: "application/json".into(),
            body,
        }))
    }

    #[instrument(skip_all, fields(connection = %self.connection))]
    async fn introspect(&self, token: &SecretString) -> Result<Option<Introspection>, PluginError> {
        let token = token.expose_secret();
        let Ok(header) = jsonwebtoken::decode_header(token) else {
            return Ok(None);
        };
        let Some(kid) = header.kid else {
            return Ok(None);
        };
        let Some(key) = self.keys.find(&kid).await? else {
            return Ok(None);
        };
        let claims = match jsonwebtoken::decode::<Claims>(
            token,
            &key.decoding,
            &self.jwt_validation(key.entry.alg),
        ) {
            Ok(data) => data.claims,
            Err(e) => {
                tracing::debug!(kid = %kid, reason = reject_reason(&e), "token inactive");
                return Ok(Some(Self::inactive()));
            }
        };
        let now = (self.clock)().unix_timestamp();
        if now >= claims.exp {
            tracing::debug!(kid = %kid, reason = "expired", "token inactive");
            return Ok(Some(Self::inactive()));
        }
        if claims.nbf > now + NBF_LEEWAY_SECS {
            tracing::debug!(kid = %kid, reason = "not yet valid", "token inactive");
            return Ok(Some(Self::inactive()));
        }
        if self
            .state
            .get(&format!("{REVOKED_PREFIX}{}", claims.jti))
            .await?
            .is_some()
        {
            tracing::debug!(kid = %kid, reason = "revoked", "token inactive");
            return Ok(Some(Self::inactive()));
        }
        let mut out = Map::new();
        out.insert("scope".into(), json!(claims.scope));
        out.insert("sub".into(), json!(claims.sub));
        out.insert("aud".into(), json!(claims.aud));
        out.insert("iss".into(), json!(claims.iss));
        out.insert("exp".into(), json!(claims.exp));
        out.insert("iat".into(), json!(claims.iat));
        out.insert("nbf".into(), json!(claims.nbf));
        out.insert("jti".into(), json!(claims.jti));
        out.insert("token_type".into(), json!("Bearer"));
        out.insert("lessor_role".into(), json!(claims.lessor_role));
        Ok(Some(Introspection {
            active: true,
            claims: out,
        }))
    }
}
