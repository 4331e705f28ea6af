//! Vault's `auth/` paths: JWT login, and the token's own lookup, renewal
//! and revocation.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use secrecy::ExposeSecret;
use serde_json::{json, Value};
use time::OffsetDateTime;

use super::{Envelope, VaultError, VaultRequest, VaultState};
use crate::audit::Event;
use crate::http::AppState;
use crate::http::leases_rfc3339 as rfc3339;
use crate::identity::AuthError;
use crate::store::Session;
use crate::vault::config::valid_role_name;

/// The token's policies as Vault clients expect a list: lessor decides
/// with Cedar per request, so there is only `default`.
const POLICIES: [&str; 1] = ["default"];

fn auth_block(token: &str, s: &Session, now: OffsetDateTime) -> Value {
    json!({
        "client_token": token,
        "accessor": s.accessor,
        "policies": POLICIES,
        "token_policies": POLICIES,
        "metadata": { "role": s.vault_role, "issuer": s.issuer, "subject": s.subject },
        "lease_duration": (s.expires_at - now).whole_seconds().max(0),
        "renewable": s.expires_at < s.max_expires_at,
        "entity_id": "",
        "token_type": "service",
        "orphan": true,
        "mfa_requirement": Value::Null,
        "num_uses": 0,
    })
}

/// `POST|PUT /v1/auth/<mount>/login` `{"role", "jwt"}`.
pub async fn login(st: &AppState, vs: &VaultState, r: &mut VaultRequest, mount: &str) -> Result<Response, VaultError> {
    let Some(cfg) = vs.cfg.auth.get(mount) else {
        return Err(VaultError::unsupported(vs.served()));
    };
    let role = r.str_field("role")?.unwrap_or_default();
    if role.is_empty() {
        return Err(VaultError::bad_request("missing role"));
    }
    if !valid_role_name(&role) || (!cfg.roles.is_empty() && !cfg.roles.contains(&role)) {
        return Err(VaultError::bad_request(format!(
            "role \"{}\" could not be found",
            role.chars().take(64).collect::<String>().escape_debug()
        )));
    }
    // `bao write ... jwt=@file` and the agent send the file's newline too.
    let jwt = r.str_field("jwt")?.unwrap_or_default().trim().to_owned();
    if jwt.is_empty() {
        return Err(VaultError::bad_request("missing jwt"));
    }
    r.meta.vault_role = Some(role.clone());
    let meta = r.meta.clone();
    let audit = &st.leases.audit;
    let jwt = secrecy::SecretString::from(jwt);
    let now = OffsetDateTime::now_utc();
    let w = match st.verifier.verify_naming_issuer(&jwt, now).await {
        Ok(w) => w,
        Err((e, issuer)) => {
            st.brake.refused(meta.source).await;
            let credential = audit.hash(jwt.expose_secret().as_bytes());
            audit.auth_failed(issuer, e.reason(), meta.source, || {
                Event::new("authenticate", "failed").request(Some(&meta)).detail("credential", credential).error(e.reason(), e.reason())
            });
            let status = if matches!(e, AuthError::KeysUnavailable { .. }) { StatusCode::SERVICE_UNAVAILABLE } else { StatusCode::BAD_REQUEST };
            return Err(VaultError::new(status, format!("error validating token: {e}")));
        }
    };
    if let Err(wait) = vs.logins.take(&w.issuer, &w.subject) {
        crate::telemetry::metrics().quota_rejections.with_label_values(&["vault_login"]).inc();
        audit.note(
            Event::new("vault.login", "quota")
                .request(Some(&meta))
                .actor(crate::audit::workload_info(&w))
                .error("quota_vault_login", "vault_api.logins_per_minute reached"),
        );
        return Err(VaultError::too_many(
            format!(
                "rate limit: this workload logged in {} times within a minute (vault_api.logins_per_minute); \
                 reuse the client token, or try again in {wait}s",
                vs.cfg.logins_per_minute
            ),
            wait,
        ));
    }
    if !cfg.issuers.is_empty() && !cfg.issuers.contains(&w.issuer_name) {
        audit.note(
            Event::new("authenticate", "failed")
                .request(Some(&meta))
                .actor(crate::audit::workload_info(&w))
                .error("issuer_not_allowed", format!("issuer `{}` may not log in at auth/{mount}", w.issuer_name)),
        );
        return Err(VaultError::denied_because(format!(
            "tokens of issuer `{}` may not log in at auth/{mount} (vault_api.auth.{mount}.issuers)",
            w.issuer_name
        )));
    }
    let (token, session) = crate::vault::login(st.store.as_ref(), audit, &vs.cfg, &w, mount, &role, &meta).await?;
    let mut env = Envelope::data(Value::Null);
    env.auth = auth_block(token.expose_secret(), &session, OffsetDateTime::now_utc());
    Ok(env.respond(&r.meta))
}

/// `GET /v1/auth/token/lookup-self`.
pub async fn lookup_self(st: &AppState, _vs: &VaultState, r: &mut VaultRequest) -> Result<Response, VaultError> {
    let (s, token) = super::session(st, r).await?;
    let now = OffsetDateTime::now_utc();
    let data = json!({
        "accessor": s.accessor,
        "creation_time": s.created_at.unix_timestamp(),
        "creation_ttl": (s.expires_at - s.created_at).whole_seconds(),
        "display_name": format!("{}-{}", s.mount, s.subject.chars().take(64).collect::<String>()),
        "entity_id": "",
        "expire_time": rfc3339(s.expires_at),
        "explicit_max_ttl": (s.max_expires_at - s.created_at).whole_seconds(),
        "id": token.expose_secret(),
        "issue_time": rfc3339(s.created_at),
        "meta": { "role": s.vault_role, "issuer": s.issuer, "subject": s.subject },
        "num_uses": 0,
        "orphan": true,
        "path": format!("auth/{}/login", s.mount),
        "policies": POLICIES,
        "renewable": s.expires_at < s.max_expires_at,
        "ttl": (s.expires_at - now).whole_seconds().max(0),
        "type": "service",
    });
    Ok(Envelope::data(data).respond(&r.meta))
}

/// `POST|PUT /v1/auth/token/renew-self` `{"increment"}`: never past the
/// session's max; a cut-short renewal carries Vault's warning, so an agent
/// logs in again in time.
pub async fn renew_self(st: &AppState, vs: &VaultState, r: &mut VaultRequest) -> Result<Response, VaultError> {
    let (s, token) = super::session(st, r).await?;
    let increment = super::parse_duration("increment", r.body.get("increment"))?;
    let Some((renewed, capped)) = crate::vault::renew(st.store.as_ref(), &st.leases.audit, &vs.cfg, &s, increment, &r.meta).await?
    else {
        return Err(VaultError::permission_denied());
    };
    let now = OffsetDateTime::now_utc();
    let mut env = Envelope::data(Value::Null);
    env.auth = auth_block(token.expose_secret(), &renewed, now);
    if capped {
        let asked = increment.unwrap_or(vs.cfg.session_ttl);
        env.warnings.push(format!(
            "TTL of \"{}\" exceeded the effective max_ttl of \"{}\"; TTL value is capped accordingly",
            crate::fmt_duration(asked),
            crate::fmt_duration(std::time::Duration::from_secs((renewed.expires_at - now).whole_seconds().max(0).unsigned_abs()))
        ));
    }
    Ok(env.respond(&r.meta))
}

/// `POST|PUT /v1/auth/token/revoke-self`: the session ends; the
/// credentials it asked for keep their own leases (unlike Vault).
pub async fn revoke_self(st: &AppState, r: &mut VaultRequest) -> Result<Response, VaultError> {
    let (s, _) = super::session(st, r).await?;
    crate::vault::revoke(st.store.as_ref(), &st.leases.audit, &s, &r.meta).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
