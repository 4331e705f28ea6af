//! Root credential endpoints (`/v1/admin/connections`): thin handlers over
//! [`crate::connections::RootCredentials`]. A secret arrives once (PUT
//! .../secret) and is never returned: versions show "set", a fingerprint
//! (last 4 characters), who and when.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use secrecy::SecretString;
use serde::Deserialize;
use serde_json::{json, Value};
use time::OffsetDateTime;

use super::{ApiError, ApiJson, AppState, Meta, OperatorCaller};
use crate::connections::{ConnError, ConnectionView, Recorded, RootCredentials};
use crate::store::SecretVersion;

fn rfc(t: OffsetDateTime) -> String {
    super::leases::rfc3339(t)
}

/// A version as the API shows it: never the secret.
pub fn version_json(v: &SecretVersion) -> Value {
    json!({
        "version": v.version,
        "state": v.state.as_str(),
        "secret": "set",
        "fingerprint": v.fingerprint,
        "set_by": v.set_by,
        "set_at": rfc(v.set_at),
        "reason": v.reason,
        "kek_id": v.kek_id,
        "verified": v.verified_ok,
        "verification": v.verification,
        "verified_at": v.verified_at.map(rfc),
        "approved_by": v.approved_by,
        "approved_break_glass": v.approved_by.as_deref().is_some_and(|a| Recorded::parse(a).break_glass),
        "approved_at": v.approved_at.map(rfc),
        "activated_by": v.activated_by,
        "activated_at": v.activated_at.map(rfc),
        "retiring_until": v.retiring_until.map(rfc),
    })
}

/// A connection with its versions and warnings.
pub fn view_json(c: &ConnectionView, now: OffsetDateTime) -> Value {
    json!({
        "name": c.meta.info.name,
        "plugin": c.meta.info.plugin,
        "environment": c.meta.info.environment,
        "owner": c.meta.info.owner,
        "managed": c.managed,
        "can_rotate": c.can_rotate,
        "describes": c.describes,
        "review_by": c.meta.review_by.map(|d| d.to_string()),
        "rotate_after": c.meta.rotate_after.map(crate::fmt_duration),
        "overlap": crate::fmt_duration(c.meta.overlap),
        "roles": c.meta.roles,
        "active_version": c.active().map(|v| v.version),
        "active_age_seconds": c.age(now).map(|a| a.whole_seconds()),
        "last_verified": c.last_verified().map(rfc),
        "versions": c.versions.iter().map(version_json).collect::<Vec<_>>(),
        "warnings": c.warnings,
    })
}

fn roots(st: &AppState) -> Option<&RootCredentials> {
    st.leases.roots.as_deref()
}

fn disabled() -> ApiError {
    ApiError::not_found("root credentials are not enabled in this process")
}

impl From<ConnError> for ApiError {
    fn from(e: ConnError) -> ApiError {
        match e {
            ConnError::NotFound(_) => ApiError::not_found(e.to_string()),
            ConnError::NotManaged(_) | ConnError::Conflict(_) => ApiError::new(StatusCode::CONFLICT, "conflict", e.to_string()),
            ConnError::BadRequest { field, message } => ApiError::bad_request(field, message),
            ConnError::Forbidden(m) => ApiError::forbidden(m),
            ConnError::Plugin { .. } => ApiError::new(StatusCode::BAD_GATEWAY, "vendor_error", e.to_string()),
            ConnError::Store(s) => s.into(),
            ConnError::Audit(a) => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "audit_unavailable", a.to_string()),
            ConnError::Kek(k) => ApiError::internal("root credential encryption", k),
            ConnError::Policy(p) => ApiError::internal("policy evaluation failed", p),
        }
    }
}

#[utoipa::path(
    get, path = "/v1/admin/connections", tag = "connections", operation_id = "list_connections",
    responses((status = 200, description = "Connections with their versions.", body = super::openapi::wire::Connections)),
    security(("admin_token" = []), ("client_cert" = []), ("workload_jwt" = [])),
)]
pub async fn list(State(st): State<AppState>, OperatorCaller(actor): OperatorCaller, Meta(meta): Meta) -> Result<Json<Value>, ApiError> {
    let views = roots(&st).ok_or_else(disabled)?.list(&actor, &meta).await?;
    let now = OffsetDateTime::now_utc();
    Ok(Json(json!({ "connections": views.iter().map(|v| view_json(v, now)).collect::<Vec<_>>() })))
}

#[utoipa::path(
    get, path = "/v1/admin/connections/{name}", tag = "connections", operation_id = "show_connection",
    params(("name" = String, Path, description = "Connection name.")),
    responses((status = 200, description = "The connection.", body = super::openapi::wire::ConnectionView)),
    security(("admin_token" = []), ("client_cert" = []), ("workload_jwt" = [])),
)]
pub async fn show(
    State(st): State<AppState>,
    OperatorCaller(actor): OperatorCaller,
    Meta(meta): Meta,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let v = roots(&st).ok_or_else(disabled)?.show(&actor, &name, &meta).await?;
    Ok(Json(view_json(&v, OffsetDateTime::now_utc())))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetSecretReq {
    /// The root credential (e.g. a DSN); never returned.
    #[schema(value_type = String, format = Password)]
    secret: SecretString,
    reason: String,
}

#[utoipa::path(
    put, path = "/v1/admin/connections/{name}/secret", tag = "connections", operation_id = "set_connection_secret",
    params(("name" = String, Path, description = "Connection name.")),
    request_body = SetSecretReq,
    responses((status = 201, description = "A new pending version.", body = super::openapi::wire::SecretVersionView)),
    security(("admin_token" = []), ("client_cert" = []), ("workload_jwt" = [])),
)]
pub async fn set_secret(
    State(st): State<AppState>,
    OperatorCaller(actor): OperatorCaller,
    Meta(meta): Meta,
    Path(name): Path<String>,
    ApiJson(req): ApiJson<SetSecretReq>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let v = roots(&st).ok_or_else(disabled)?.set_secret(&actor, &name, req.secret, &req.reason, &meta).await?;
    Ok((StatusCode::CREATED, Json(version_json(&v))))
}

#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VersionReq {
    /// Default: the newest version.
    #[serde(default)]
    version: Option<i64>,
}

#[utoipa::path(
    post, path = "/v1/admin/connections/{name}/verify", tag = "connections", operation_id = "verify_connection",
    params(("name" = String, Path, description = "Connection name.")),
    request_body = VersionReq,
    responses((status = 200, description = "The verification result.", body = super::openapi::wire::Verified)),
    security(("admin_token" = []), ("client_cert" = []), ("workload_jwt" = [])),
)]
pub async fn verify(
    State(st): State<AppState>,
    OperatorCaller(actor): OperatorCaller,
    Meta(meta): Meta,
    Path(name): Path<String>,
    ApiJson(req): ApiJson<VersionReq>,
) -> Result<Json<Value>, ApiError> {
    let (version, result) = roots(&st).ok_or_else(disabled)?.verify(&actor, &name, req.version, &meta).await?;
    Ok(Json(json!({ "version": version, "result": result })))
}

#[utoipa::path(
    post, path = "/v1/admin/connections/{name}/approve", tag = "connections", operation_id = "approve_connection",
    params(("name" = String, Path, description = "Connection name.")),
    request_body = VersionReq,
    responses((status = 200, description = "The approved version.", body = super::openapi::wire::SecretVersionView)),
    security(("admin_token" = []), ("client_cert" = []), ("workload_jwt" = [])),
)]
pub async fn approve(
    State(st): State<AppState>,
    OperatorCaller(actor): OperatorCaller,
    Meta(meta): Meta,
    Path(name): Path<String>,
    ApiJson(req): ApiJson<VersionReq>,
) -> Result<Json<Value>, ApiError> {
    let v = roots(&st).ok_or_else(disabled)?.approve(&actor, &name, req.version, &meta).await?;
    Ok(Json(version_json(&v)))
}

#[utoipa::path(
    post, path = "/v1/admin/connections/{name}/activate", tag = "connections", operation_id = "activate_connection",
    params(("name" = String, Path, description = "Connection name.")),
    request_body = VersionReq,
    responses((status = 200, description = "The now active version.", body = super::openapi::wire::SecretVersionView)),
    security(("admin_token" = []), ("client_cert" = []), ("workload_jwt" = [])),
)]
pub async fn activate(
    State(st): State<AppState>,
    OperatorCaller(actor): OperatorCaller,
    Meta(meta): Meta,
    Path(name): Path<String>,
    ApiJson(req): ApiJson<VersionReq>,
) -> Result<Json<Value>, ApiError> {
    let v = roots(&st).ok_or_else(disabled)?.activate(&actor, &name, req.version, &meta).await?;
    Ok(Json(version_json(&v)))
}

#[utoipa::path(
    post, path = "/v1/admin/connections/{name}/rollback", tag = "connections", operation_id = "rollback_connection",
    params(("name" = String, Path, description = "Connection name.")),
    responses((status = 200, description = "The version active again.", body = super::openapi::wire::SecretVersionView)),
    security(("admin_token" = []), ("client_cert" = []), ("workload_jwt" = [])),
)]
pub async fn rollback(
    State(st): State<AppState>,
    OperatorCaller(actor): OperatorCaller,
    Meta(meta): Meta,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let v = roots(&st).ok_or_else(disabled)?.rollback(&actor, &name, &meta).await?;
    Ok(Json(version_json(&v)))
}

#[utoipa::path(
    post, path = "/v1/admin/connections/{name}/rotate", tag = "connections", operation_id = "rotate_connection",
    params(("name" = String, Path, description = "Connection name.")),
    responses((status = 200, description = "The new version lessor rotated to.", body = super::openapi::wire::SecretVersionView)),
    security(("admin_token" = []), ("client_cert" = []), ("workload_jwt" = [])),
)]
pub async fn rotate(
    State(st): State<AppState>,
    OperatorCaller(actor): OperatorCaller,
    Meta(meta): Meta,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let v = roots(&st).ok_or_else(disabled)?.rotate(&actor, &name, &meta).await?;
    Ok(Json(version_json(&v)))
}
