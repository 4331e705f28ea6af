//! Admin token endpoints (`/v1/admin/tokens`): create (the token is in the
//! answer once), list (never a token), revoke.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use secrecy::ExposeSecret;
use serde::Deserialize;
use serde_json::{json, Value};

use super::leases::rfc3339;
use super::{AdminCaller, ApiError, ApiJson, AppState, Meta};
use crate::admin_tokens::{self, AdminTokenError};
use crate::store::AdminToken;

impl From<AdminTokenError> for ApiError {
    fn from(e: AdminTokenError) -> Self {
        match e {
            AdminTokenError::BadRequest { field, message } => ApiError::bad_request(field, message),
            AdminTokenError::Exists(_) => ApiError::new(StatusCode::CONFLICT, "conflict", e.to_string()),
            AdminTokenError::NotFound(_) => ApiError::not_found(e.to_string()),
            AdminTokenError::Store(s) => s.into(),
            AdminTokenError::Audit(a) => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "audit_unavailable", a.to_string()),
            AdminTokenError::File { .. } => ApiError::internal("admin token file", e),
        }
    }
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateReq {
    name: String,
    /// e.g. "30d"; default 90 days.
    #[serde(default)]
    ttl: Option<String>,
}

fn dto(t: &AdminToken, now: time::OffsetDateTime) -> Value {
    let state = if t.revoked_at.is_some() {
        "revoked"
    } else if t.expires_at <= now {
        "expired"
    } else {
        "active"
    };
    json!({
        "name": t.name,
        "state": state,
        "created_by": t.created_by,
        "created_at": rfc3339(t.created_at),
        "expires_at": rfc3339(t.expires_at),
        "last_used_at": t.last_used_at.map(rfc3339),
        "revoked_at": t.revoked_at.map(rfc3339),
    })
}

/// `POST /v1/admin/tokens`: 201 with the token, shown this once.
#[utoipa::path(
    post, path = "/v1/admin/tokens", tag = "admin", operation_id = "create_admin_token",
    request_body = CreateReq,
    responses((status = 201, description = "The admin token, shown this once, and its dates.", body = super::openapi::wire::CreatedAdminToken)),
    security(("admin_token" = []), ("client_cert" = []), ("workload_jwt" = [])),
)]
pub async fn create(
    State(st): State<AppState>,
    AdminCaller(actor): AdminCaller,
    Meta(meta): Meta,
    ApiJson(req): ApiJson<CreateReq>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let ttl = admin_tokens::parse_ttl(req.ttl.as_deref())?;
    let c = admin_tokens::create(st.store.as_ref(), &st.leases.audit, &actor, &meta, &req.name, ttl).await?;
    let mut v = dto(&c.record, time::OffsetDateTime::now_utc());
    v["token"] = json!(c.token.expose_secret());
    Ok((StatusCode::CREATED, Json(v)))
}

/// `GET /v1/admin/tokens`: every token's name and dates, never a token.
#[utoipa::path(
    get, path = "/v1/admin/tokens", tag = "admin", operation_id = "list_admin_tokens",
    responses((status = 200, description = "Every admin token's name, state and dates (never a token).", body = super::openapi::wire::AdminTokens)),
    security(("admin_token" = []), ("client_cert" = []), ("workload_jwt" = [])),
)]
pub async fn list(State(st): State<AppState>, AdminCaller(_): AdminCaller) -> Result<Json<Value>, ApiError> {
    let now = time::OffsetDateTime::now_utc();
    let tokens: Vec<Value> = admin_tokens::list(st.store.as_ref()).await?.iter().map(|t| dto(t, now)).collect();
    Ok(Json(json!({ "tokens": tokens })))
}

/// `DELETE /v1/admin/tokens/{name}`: refused from the next request on, on
/// every replica.
#[utoipa::path(
    delete, path = "/v1/admin/tokens/{name}", tag = "admin", operation_id = "revoke_admin_token",
    params(("name" = String, Path, description = "The admin token's name.")),
    responses((status = 200, description = "Revoked: refused from the next request on, on every replica.", body = super::openapi::wire::RevokedAdminToken)),
    security(("admin_token" = []), ("client_cert" = []), ("workload_jwt" = [])),
)]
pub async fn revoke(
    State(st): State<AppState>,
    AdminCaller(actor): AdminCaller,
    Meta(meta): Meta,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    admin_tokens::revoke(st.store.as_ref(), &st.leases.audit, &actor, &meta, &name).await?;
    Ok(Json(json!({ "name": name, "state": "revoked" })))
}
