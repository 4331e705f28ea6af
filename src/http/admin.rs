//! Admin endpoints: list leases, revoke in bulk, explain a policy decision.

use std::collections::BTreeMap;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::leases::LeaseDto;
use super::{AdminCaller, ApiError, ApiJson, AppState};
use crate::policy::tests::Case;
use crate::store::{LeaseFilter, LeaseState};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    role: Option<String>,
    issuer: Option<String>,
    subject: Option<String>,
    state: Option<String>,
    limit: Option<u32>,
}

pub async fn list(
    State(st): State<AppState>,
    AdminCaller(_): AdminCaller,
    Query(q): Query<ListQuery>,
) -> Result<Json<Value>, ApiError> {
    let state = q
        .state
        .as_deref()
        .map(str::parse::<LeaseState>)
        .transpose()
        .map_err(|m| ApiError::bad_request("state", m))?;
    let filter = LeaseFilter {
        role: q.role,
        issuer: q.issuer,
        subject: q.subject,
        state,
        limit: q.limit.unwrap_or(100).clamp(1, 10_000),
    };
    let leases = st.leases.list(&filter).await?;
    let dtos: Vec<LeaseDto> = leases.iter().map(LeaseDto::from).collect();
    Ok(Json(json!({ "leases": dtos })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevokeReq {
    role: Option<String>,
    issuer: Option<String>,
    subject: Option<String>,
    /// Must be true to revoke every live lease (no filter).
    #[serde(default)]
    all: bool,
}

/// Schedules every matching active lease for revocation; the expiry worker
/// does the work, so the API never waits on vendors.
pub async fn revoke_matching(
    State(st): State<AppState>,
    AdminCaller(actor): AdminCaller,
    ApiJson(req): ApiJson<RevokeReq>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    if req.role.is_none() && req.issuer.is_none() && req.subject.is_none() && !req.all {
        return Err(ApiError::bad_request(
            "role",
            "name at least one of role, issuer, subject; or set \"all\": true to revoke every lease",
        ));
    }
    let filter = LeaseFilter { role: req.role, issuer: req.issuer, subject: req.subject, state: None, limit: 0 };
    let n = st.leases.revoke_matching(&filter).await?;
    tracing::warn!(actor = ?actor_name(&actor), scheduled = n, "bulk revocation scheduled");
    Ok((StatusCode::ACCEPTED, Json(json!({ "scheduled": n }))))
}

fn actor_name(a: &crate::lease::Actor) -> String {
    match a {
        crate::lease::Actor::Admin { name } => name.clone(),
        crate::lease::Actor::Workload(w) => format!("{}#{}", w.issuer, w.subject),
    }
}

/// Explains one decision (a policy test case) against the live policies.
pub async fn explain(
    State(st): State<AppState>,
    AdminCaller(_): AdminCaller,
    ApiJson(case): ApiJson<Case>,
) -> Result<Json<Value>, ApiError> {
    let roles: BTreeMap<String, crate::policy::RoleInfo> =
        st.leases.catalog.roles.values().map(|r| (r.name.clone(), r.info.clone())).collect();
    let (principal, action, role, ctx) = case.to_request(&roles).map_err(|m| ApiError::bad_request("case", m))?;
    let d = st
        .leases
        .policy
        .current()
        .decide(&principal, action, role.as_ref(), &ctx)
        .map_err(|e| ApiError::bad_request("case", e.to_string()))?;
    Ok(Json(serde_json::to_value(&d).map_err(|e| ApiError::internal("serializing decision", e))?))
}
