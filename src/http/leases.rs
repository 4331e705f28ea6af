//! Workload endpoints: issue, show, renew, revoke, list requestable roles.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Path, State};
use axum::http::StatusCode;
use axum::Json;
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use super::{ApiError, ApiJson, AppState, Caller, Meta};
use crate::lease::IssueInput;
use crate::policy::{Action, Principal, RequestContext};
use crate::principal::Actor;
use crate::store::Lease;

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct IssueReq {
    /// `connection/role`, or the role's short name when unique.
    #[schema(example = "token/orders")]
    role: String,
    /// e.g. `15m`; default the role's `default_ttl`, at most its `max_ttl`.
    #[serde(default)]
    ttl: Option<String>,
    /// Scopes to request; default the role's `default_scopes`.
    #[serde(default)]
    scopes: Option<Vec<String>>,
    /// Plugin-specific parameters (e.g. pki `names`, `csr`).
    #[serde(default)]
    #[schema(value_type = Object)]
    params: serde_json::Map<String, Value>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RenewReq {
    /// e.g. `15m`; default the role's `default_ttl`.
    #[serde(default)]
    ttl: Option<String>,
}

pub fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_else(|_| t.unix_timestamp().to_string())
}

/// A lease on the wire: metadata only, never the secret.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct LeaseDto {
    lease_id: String,
    role: String,
    plugin: String,
    #[schema(value_type = String)]
    state: &'static str,
    issuer: String,
    subject: String,
    scopes: Vec<String>,
    policies: Vec<String>,
    issued_at: String,
    expires_at: String,
    max_expires_at: String,
    ttl_seconds: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    end_reason: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ended_at: Option<String>,
    revoke_attempts: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    last_error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    next_attempt_at: Option<String>,
    /// What revoking means for this lease's vendor: `immediate`,
    /// `published` (a CRL, introspection) or `at_expiry`; absent when its
    /// role is no longer configured.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    revocation: Option<&'static str>,
    /// What is true about the credential when its state alone would mislead:
    /// set while a lease whose plugin cannot revoke was asked to end
    /// (`state` = `revoke_unsupported`), and for a revoked lease whose
    /// vendor publishes revocation rather than enforcing it.
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<String>,
}

impl LeaseDto {
    /// The lease as the API shows it, with what revocation means at its
    /// vendor (from its role's plugin, when still configured).
    pub fn of(l: &Lease, catalog: &crate::plugins::Catalog) -> Self {
        let revocation = catalog.role(&l.role).map(|r| r.plugin.capabilities().revocation);
        let mut dto = LeaseDto::from(l);
        dto.revocation = revocation.as_ref().map(lessor_plugin::Revocation::mode);
        let still_valid = l.expires_at > OffsetDateTime::now_utc();
        if let (None, Some(r @ lessor_plugin::Revocation::Published { .. }), true) = (&dto.message, &revocation, still_valid) {
            if l.state == crate::store::LeaseState::Revoked {
                dto.message = Some(format!("{}; this credential's own expiry is {}", r.describe(), rfc3339(l.expires_at)));
            }
        }
        dto
    }
}

impl From<&Lease> for LeaseDto {
    fn from(l: &Lease) -> Self {
        // Revocation asked, plugin unable: until its expiry the credential
        // still works, and the state says so (afterwards it is `expired`).
        let unrevoked = l.unrevocable() && l.expires_at > OffsetDateTime::now_utc();
        LeaseDto {
            lease_id: l.id.to_string(),
            role: l.role.clone(),
            plugin: l.plugin.clone(),
            state: if unrevoked { "revoke_unsupported" } else { l.state.as_str() },
            issuer: l.issuer.clone(),
            subject: l.subject.clone(),
            scopes: l.scopes.clone(),
            policies: l.policies.clone(),
            issued_at: rfc3339(l.issued_at),
            expires_at: rfc3339(l.expires_at),
            max_expires_at: rfc3339(l.max_expires_at),
            ttl_seconds: (l.expires_at - OffsetDateTime::now_utc()).whole_seconds().max(0),
            end_reason: l.end_reason.map(|r| r.as_str()),
            ended_at: l.ended_at.map(rfc3339),
            revoke_attempts: l.attempts,
            last_error: l.last_error.clone(),
            next_attempt_at: l.next_attempt_at.map(rfc3339),
            revocation: None,
            message: unrevoked.then(|| {
                format!(
                    "role `{}` cannot revoke credentials (plugin {}): this one stays valid until {}",
                    l.role,
                    l.plugin,
                    rfc3339(l.expires_at)
                )
            }),
        }
    }
}

#[utoipa::path(
    post, path = "/v1/leases", tag = "leases", operation_id = "issue_lease",
    request_body = IssueReq,
    responses((status = 201, description = "Issued: the credential (returned only here) and its lease.", body = super::openapi::wire::Issued)),
    security(("workload_jwt" = [])),
)]
pub async fn issue(
    State(st): State<AppState>,
    Caller(actor): Caller,
    Meta(meta): Meta,
    ApiJson(req): ApiJson<IssueReq>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let w = match actor {
        Actor::Workload(w) => w,
        Actor::Person(p) => {
            return Err(ApiError::forbidden(format!(
                "`{}` is a person; people cannot request workload credentials; present a workload JWT",
                p.id()
            )))
        }
        Actor::Admin { .. } => return Err(ApiError::forbidden("admin tokens cannot request credentials; present a workload JWT")),
    };
    let input = IssueInput { role: req.role, ttl: req.ttl, scopes: req.scopes, params: req.params };
    let issued = st.leases.issue(&w, input, &meta).await?;
    let l = &issued.lease;
    let mut credential = issued.public;
    for (k, v) in &issued.secret {
        credential.insert(k.clone(), Value::String(v.expose_secret().to_owned()));
    }
    let body = json!({
        "lease_id": l.id.to_string(),
        "role": l.role,
        "ttl_seconds": (l.expires_at - l.issued_at).whole_seconds(),
        "issued_at": rfc3339(l.issued_at),
        "expires_at": rfc3339(l.expires_at),
        "max_expires_at": rfc3339(l.max_expires_at),
        "renewable": issued.renewable,
        "scopes": l.scopes,
        "credential": credential,
        "policies": issued.decision.policy_ids(),
    });
    Ok((StatusCode::CREATED, Json(body)))
}

#[utoipa::path(
    get, path = "/v1/leases/{id}", tag = "leases", operation_id = "show_lease",
    params(("id" = String, Path, description = "Lease id (`lse_...`).")),
    responses((status = 200, description = "The lease (never the secret).", body = LeaseDto)),
    security(("workload_jwt" = []), ("admin_token" = []), ("client_cert" = [])),
)]
pub async fn show(
    State(st): State<AppState>,
    Caller(actor): Caller,
    Meta(meta): Meta,
    Path(id): Path<String>,
) -> Result<Json<LeaseDto>, ApiError> {
    let l = st.leases.get(&actor, &id, &meta).await?;
    Ok(Json(LeaseDto::of(&l, &st.leases.catalog)))
}

#[utoipa::path(
    post, path = "/v1/leases/{id}/renew", tag = "leases", operation_id = "renew_lease",
    params(("id" = String, Path, description = "Lease id (`lse_...`).")),
    request_body = RenewReq,
    responses((status = 200, description = "Renewed.", body = LeaseDto)),
    security(("workload_jwt" = []), ("admin_token" = []), ("client_cert" = [])),
)]
pub async fn renew(
    State(st): State<AppState>,
    Caller(actor): Caller,
    Meta(meta): Meta,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<RenewReq>,
) -> Result<Json<LeaseDto>, ApiError> {
    let l = st.leases.renew(&actor, &id, req.ttl, &meta).await?;
    Ok(Json(LeaseDto::of(&l, &st.leases.catalog)))
}

#[utoipa::path(
    delete, path = "/v1/leases/{id}", tag = "leases", operation_id = "revoke_lease",
    params(("id" = String, Path, description = "Lease id (`lse_...`).")),
    responses((status = 200, description = "Revoked (idempotent).", body = LeaseDto)),
    security(("workload_jwt" = []), ("admin_token" = []), ("client_cert" = [])),
)]
pub async fn revoke(
    State(st): State<AppState>,
    Caller(actor): Caller,
    Meta(meta): Meta,
    Path(id): Path<String>,
) -> Result<Json<LeaseDto>, ApiError> {
    let l = st.leases.revoke(&actor, &id, &meta).await?;
    Ok(Json(LeaseDto::of(&l, &st.leases.catalog)))
}

/// Roles the caller may request (all roles for an admin), with scopes,
/// their plain-language descriptions, and TTL limits.
#[utoipa::path(
    get, path = "/v1/roles", tag = "leases", operation_id = "list_roles",
    responses((status = 200, description = "Roles the caller may request.", body = super::openapi::wire::Roles)),
    security(("workload_jwt" = []), ("admin_token" = []), ("client_cert" = [])),
)]
pub async fn roles(
    State(st): State<AppState>,
    Caller(actor): Caller,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
) -> Result<Json<Value>, ApiError> {
    let catalog = &st.leases.catalog;
    let mut out = Vec::new();
    for role in catalog.roles.values() {
        if let Actor::Workload(w) = &actor {
            let ctx = RequestContext {
                ttl_seconds: role.cfg.default_ttl().as_secs() as i64,
                scopes: role.cfg.default_scopes.clone(),
                now: OffsetDateTime::now_utc().unix_timestamp(),
                source_ip: peer.ip(),
                vault_role: None,
            };
            let p = Principal { issuer: w.issuer.clone(), subject: w.subject.clone(), attributes: w.attributes.clone() };
            if !st.leases.decide(&p, Action::Issue, Some(role), &ctx)?.allowed {
                continue;
            }
        }
        let scopes: Vec<Value> = role
            .cfg
            .scopes
            .iter()
            .map(|s| {
                let doc = catalog.scopes.get(s);
                json!({
                    "name": s,
                    "allows": doc.map(|d| d.allows.clone()).unwrap_or_default(),
                    "denies": doc.map(|d| d.denies.clone()).unwrap_or_default(),
                })
            })
            .collect();
        out.push(json!({
            "role": role.name,
            "plugin": role.kind,
            "environment": role.info.environment,
            "description": role.cfg.description,
            "max_ttl_seconds": role.cfg.max_ttl.as_secs(),
            "default_ttl_seconds": role.cfg.default_ttl().as_secs(),
            "renewable": role.plugin.capabilities().can_renew,
            "revocation": {
                "mode": role.plugin.capabilities().revocation.mode(),
                "description": role.plugin.capabilities().revocation.describe(),
            },
            "scopes": scopes,
            "default_scopes": role.cfg.default_scopes,
        }));
    }
    Ok(Json(json!({ "roles": out })))
}
