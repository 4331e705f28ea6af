//! Customer API tokens on the wire: the people's API under
//! `/v1/accounts/{account}/tokens` (preview, create, list, show, rotate,
//! revoke; callers are people only) and RFC 7662 introspection for the
//! SaaS's API servers (`POST /v1/introspect`, HTTP Basic with a resource
//! server's client id and secret). Thin: extract, call the service, map to
//! a DTO.

use std::net::IpAddr;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use super::leases::rfc3339;
use super::{ApiError, ApiJson, AppState, Caller, Meta};
use crate::customer_tokens::{
    CreateRequest, CtError, CustomerTokens, Summary, TokenDetail, TokenView, UseInfo,
};
use crate::principal::{Actor, Person};

impl From<CtError> for ApiError {
    fn from(e: CtError) -> Self {
        match e {
            CtError::BadRequest { field, message } => ApiError::bad_request(field, message),
            CtError::NotFound(m) => ApiError::not_found(m),
            CtError::Denied { message, policy } => {
                let mut a = ApiError::new(StatusCode::FORBIDDEN, "policy_denied", message);
                a.details = policy.map(|p| Box::new(serde_json::json!({ "policy": p })));
                a
            }
            CtError::ConfirmationRequired { message, policy } => {
                let mut a = ApiError::new(StatusCode::CONFLICT, "confirmation_required", message);
                a.field = Some("confirm".into());
                a.details = policy.map(|p| Box::new(serde_json::json!({ "policy": p })));
                a
            }
            CtError::Conflict(m) => ApiError::new(StatusCode::CONFLICT, "conflict", m),
            CtError::Store(s) => s.into(),
            CtError::Audit(a) => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "audit_unavailable", a.to_string()),
        }
    }
}

// `ApiError` is the one error type of every handler (as in the rest of `http/`).
#[allow(clippy::result_large_err)]
fn service(st: &AppState) -> Result<&Arc<CustomerTokens>, ApiError> {
    st.customer_tokens
        .as_ref()
        .ok_or_else(|| ApiError::not_found("customer tokens are not configured on this lessor ([customer_tokens])"))
}

/// Customer tokens are managed by people only.
#[allow(clippy::result_large_err)]
fn person(actor: Actor) -> Result<Person, ApiError> {
    match actor {
        Actor::Person(p) => Ok(p),
        Actor::Workload(w) => Err(ApiError::forbidden(format!(
            "customer tokens are managed by people signed in through [people]; this request is authenticated as workload `{}#{}`",
            w.issuer, w.subject
        ))),
        Actor::Admin { name } => Err(ApiError::forbidden(format!(
            "customer tokens are managed by people signed in through [people]; this request is authenticated as admin `{name}`"
        ))),
    }
}

/// `POST /v1/accounts/{account}/tokens[/preview]` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateReq {
    /// What the token is for ("billing sync for NetSuite"), 1-100 characters.
    name: String,
    /// Required when several environments are configured.
    #[serde(default)]
    environment: Option<String>,
    /// Scopes from the environment's catalogue.
    scopes: Vec<String>,
    /// `24h`, `30d` (default), `90d`, `180d`; longer only where policy allows.
    #[serde(default)]
    expires_in: Option<String>,
    /// Explicit confirmation of a scope combination policy marks as broad.
    #[serde(default)]
    confirm: bool,
}

impl From<CreateReq> for CreateRequest {
    fn from(r: CreateReq) -> Self {
        CreateRequest { name: r.name, environment: r.environment, scopes: r.scopes, expires_in: r.expires_in, confirm: r.confirm }
    }
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ScopeDto {
    name: String,
    /// What the scope allows.
    allows: String,
    /// What it does not allow.
    denies: String,
}

/// What a creation makes, before it does.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SummaryDto {
    account: String,
    environment: String,
    name: String,
    scopes: Vec<ScopeDto>,
    expires_at: String,
    /// "Expires on 12 March 2027".
    expires_on: String,
    creator: String,
    owner: String,
}

fn summary_dto(s: &Summary) -> SummaryDto {
    SummaryDto {
        account: s.account.clone(),
        environment: s.environment.clone(),
        name: s.name.clone(),
        scopes: s.scopes.iter().map(|d| ScopeDto { name: d.name.clone(), allows: d.allows.clone(), denies: d.denies.clone() }).collect(),
        expires_at: rfc3339(s.expires_at),
        expires_on: s.expires_on.clone(),
        creator: s.creator.clone(),
        owner: s.owner.clone(),
    }
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct WarningDto {
    /// `expires_soon` or `not_rotated`.
    kind: &'static str,
    message: String,
}

/// A token as people see it: never the secret, only its prefix and last 4.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TokenDto {
    id: String,
    name: String,
    account: String,
    environment: String,
    /// `active`, `retiring`, `revoked` or `expired`.
    state: &'static str,
    /// `<prefix>_…<last 4>`.
    token_hint: String,
    scopes: Vec<String>,
    owner: String,
    created_at: String,
    created_by: String,
    expires_at: String,
    /// When a `retiring` token stops working.
    retiring_until: Option<String>,
    replaces: Option<String>,
    replaced_by: Option<String>,
    rotated_at: Option<String>,
    rotated_by: Option<String>,
    revoked_at: Option<String>,
    revoked_by: Option<String>,
    last_used_at: Option<String>,
    warnings: Vec<WarningDto>,
}

fn token_dto(v: &TokenView) -> TokenDto {
    let t = &v.token;
    TokenDto {
        id: t.id.clone(),
        name: t.name.clone(),
        account: t.account.clone(),
        environment: t.environment.clone(),
        state: v.state.as_str(),
        token_hint: v.masked.clone(),
        scopes: t.scopes.clone(),
        owner: if t.owner_email.is_empty() { t.owner.clone() } else { t.owner_email.clone() },
        created_at: rfc3339(t.created_at),
        created_by: t.created_by.clone(),
        expires_at: rfc3339(t.expires_at),
        retiring_until: t.retiring_until.map(rfc3339),
        replaces: t.replaces.clone(),
        replaced_by: t.replaced_by.clone(),
        rotated_at: t.rotated_at.map(rfc3339),
        rotated_by: t.rotated_by.clone(),
        revoked_at: t.revoked_at.map(rfc3339),
        revoked_by: t.revoked_by.clone(),
        last_used_at: t.last_used_at.map(rfc3339),
        warnings: v.warnings.iter().map(|w| WarningDto { kind: w.kind(), message: w.message() }).collect(),
    }
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PreviewDto {
    summary: SummaryDto,
}

/// `201` of a creation: the token, shown this once.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CreatedDto {
    /// The token itself: shown only in this answer.
    token: String,
    summary: SummaryDto,
    record: TokenDto,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TokenListDto {
    tokens: Vec<TokenDto>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct UseDto {
    at: String,
    source: String,
    user_agent: String,
    ok: bool,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DayDto {
    day: String,
    ok: i64,
    failed: i64,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TokenDetailDto {
    #[serde(flatten)]
    token: TokenDto,
    /// The last uses, newest first.
    uses: Vec<UseDto>,
    /// Uses per UTC day, newest first.
    days: Vec<DayDto>,
}

fn detail_dto(d: &TokenDetail) -> TokenDetailDto {
    TokenDetailDto {
        token: token_dto(&d.view),
        uses: d
            .uses
            .iter()
            .map(|u| UseDto { at: rfc3339(u.at), source: u.source.clone(), user_agent: u.user_agent.clone(), ok: u.ok })
            .collect(),
        days: d.days.iter().map(|c| DayDto { day: c.day.clone(), ok: c.ok, failed: c.failed }).collect(),
    }
}

/// `POST .../rotate` body.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RotateReq {
    /// How long the old token keeps working (1d..14d, default 7d).
    #[serde(default)]
    overlap: Option<String>,
    #[serde(default)]
    confirm: bool,
}

/// `201` of a rotation: the replacement (shown this once) and the old token.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RotatedDto {
    token: String,
    record: TokenDto,
    old: TokenDto,
}

/// `POST /v1/accounts/{account}/tokens/preview`: checks and decides a
/// creation, changing nothing.
#[utoipa::path(
    post, path = "/v1/accounts/{account}/tokens/preview", tag = "customer-tokens", operation_id = "preview_customer_token",
    params(("account" = String, Path, description = "The customer account.")),
    request_body = CreateReq,
    responses((status = 200, description = "What creating would make: account, environment, scopes with descriptions, expiry date, creator.", body = PreviewDto)),
    security(("person_session" = []), ("person_cookie" = [])),
)]
pub async fn preview(
    State(st): State<AppState>,
    Caller(actor): Caller,
    Meta(meta): Meta,
    Path(account): Path<String>,
    ApiJson(req): ApiJson<CreateReq>,
) -> Result<Json<PreviewDto>, ApiError> {
    let svc = service(&st)?;
    let p = person(actor)?;
    let s = svc.preview(&p, &meta, &account, &req.into())?;
    Ok(Json(PreviewDto { summary: summary_dto(&s) }))
}

/// `POST /v1/accounts/{account}/tokens`: 201 with the token, shown once.
#[utoipa::path(
    post, path = "/v1/accounts/{account}/tokens", tag = "customer-tokens", operation_id = "create_customer_token",
    params(("account" = String, Path, description = "The customer account.")),
    request_body = CreateReq,
    responses((status = 201, description = "The token (shown this once), its summary and record.", body = CreatedDto)),
    security(("person_session" = []), ("person_cookie" = [])),
)]
pub async fn create(
    State(st): State<AppState>,
    Caller(actor): Caller,
    Meta(meta): Meta,
    Path(account): Path<String>,
    ApiJson(req): ApiJson<CreateReq>,
) -> Result<(StatusCode, Json<CreatedDto>), ApiError> {
    let svc = service(&st)?;
    let p = person(actor)?;
    let c = svc.create(&p, &meta, &account, &req.into()).await?;
    Ok((
        StatusCode::CREATED,
        Json(CreatedDto { token: c.token.expose_secret().to_owned(), summary: summary_dto(&c.summary), record: token_dto(&c.view) }),
    ))
}

/// `GET /v1/accounts/{account}/tokens`: every token, history included.
#[utoipa::path(
    get, path = "/v1/accounts/{account}/tokens", tag = "customer-tokens", operation_id = "list_customer_tokens",
    params(("account" = String, Path, description = "The customer account.")),
    responses((status = 200, description = "The account's tokens, newest first, ended ones included (never a secret).", body = TokenListDto)),
    security(("person_session" = []), ("person_cookie" = [])),
)]
pub async fn list(
    State(st): State<AppState>,
    Caller(actor): Caller,
    Meta(meta): Meta,
    Path(account): Path<String>,
) -> Result<Json<TokenListDto>, ApiError> {
    let svc = service(&st)?;
    let p = person(actor)?;
    let v = svc.list(&p, &meta, &account).await?;
    Ok(Json(TokenListDto { tokens: v.iter().map(token_dto).collect() }))
}

/// `GET /v1/accounts/{account}/tokens/{id}`: one token with its uses.
#[utoipa::path(
    get, path = "/v1/accounts/{account}/tokens/{id}", tag = "customer-tokens", operation_id = "show_customer_token",
    params(("account" = String, Path, description = "The customer account."), ("id" = String, Path, description = "The token id (`ctk_...`).")),
    responses((status = 200, description = "The token, its last uses and daily counts.", body = TokenDetailDto)),
    security(("person_session" = []), ("person_cookie" = [])),
)]
pub async fn show(
    State(st): State<AppState>,
    Caller(actor): Caller,
    Meta(meta): Meta,
    Path((account, id)): Path<(String, String)>,
) -> Result<Json<TokenDetailDto>, ApiError> {
    let svc = service(&st)?;
    let p = person(actor)?;
    let d = svc.show(&p, &meta, &account, &id).await?;
    Ok(Json(detail_dto(&d)))
}

/// `POST /v1/accounts/{account}/tokens/{id}/rotate`: a replacement, the old
/// token retiring for the overlap.
#[utoipa::path(
    post, path = "/v1/accounts/{account}/tokens/{id}/rotate", tag = "customer-tokens", operation_id = "rotate_customer_token",
    params(("account" = String, Path, description = "The customer account."), ("id" = String, Path, description = "The token id (`ctk_...`).")),
    request_body = RotateReq,
    responses((status = 201, description = "The replacement (shown this once) and the old token, now retiring.", body = RotatedDto)),
    security(("person_session" = []), ("person_cookie" = [])),
)]
pub async fn rotate(
    State(st): State<AppState>,
    Caller(actor): Caller,
    Meta(meta): Meta,
    Path((account, id)): Path<(String, String)>,
    body: Bytes,
) -> Result<(StatusCode, Json<RotatedDto>), ApiError> {
    let svc = service(&st)?;
    let p = person(actor)?;
    let req: RotateReq = if body.iter().all(u8::is_ascii_whitespace) {
        RotateReq::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| ApiError::bad_request("body", format!("invalid JSON: {e}")))?
    };
    let r = svc.rotate(&p, &meta, &account, &id, req.overlap.as_deref(), req.confirm).await?;
    Ok((
        StatusCode::CREATED,
        Json(RotatedDto { token: r.token.expose_secret().to_owned(), record: token_dto(&r.new), old: token_dto(&r.old) }),
    ))
}

/// `DELETE /v1/accounts/{account}/tokens/{id}`: revoked; answered once no
/// replica accepts it.
#[utoipa::path(
    delete, path = "/v1/accounts/{account}/tokens/{id}", tag = "customer-tokens", operation_id = "revoke_customer_token",
    params(("account" = String, Path, description = "The customer account."), ("id" = String, Path, description = "The token id (`ctk_...`).")),
    responses((status = 200, description = "Revoked: refused by every replica when this answer is sent.", body = TokenDto)),
    security(("person_session" = []), ("person_cookie" = [])),
)]
pub async fn revoke(
    State(st): State<AppState>,
    Caller(actor): Caller,
    Meta(meta): Meta,
    Path((account, id)): Path<(String, String)>,
) -> Result<Json<TokenDto>, ApiError> {
    let svc = service(&st)?;
    let p = person(actor)?;
    let v = svc.revoke(&p, &meta, &account, &id).await?;
    Ok(Json(token_dto(&v)))
}

/// RFC 7662 form body of `POST /v1/introspect`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct IntrospectForm {
    /// The customer token.
    token: String,
    /// Ignored (RFC 7662).
    #[serde(default)]
    #[allow(dead_code)]
    token_type_hint: Option<String>,
    /// The address the token was used from (recorded; default: the caller's).
    #[serde(default)]
    client_ip: Option<String>,
    /// The user agent it was used with (recorded; default: the caller's).
    #[serde(default)]
    user_agent: Option<String>,
}

/// The answer: `active` and, when active, what the token may do. Never
/// the token's name or owner.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct IntrospectionDto {
    active: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    scope: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    token_type: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    token_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    account: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    environment: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    iat: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    exp: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    client_id: Option<String>,
}

fn invalid_client(message: &str) -> Response {
    let mut r = ApiError::new(StatusCode::UNAUTHORIZED, "invalid_client", message).into_response();
    r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Basic realm=\"lessor introspection\""));
    r
}

/// `Authorization: Basic base64(client_id:secret)`, bounded.
fn basic(headers: &HeaderMap) -> Option<(String, SecretString)> {
    let mut all = headers.get_all(header::AUTHORIZATION).iter();
    let v = all.next()?;
    if all.next().is_some() || v.len() > 512 {
        return None;
    }
    let b64 = v.to_str().ok()?.strip_prefix("Basic ")?.trim();
    let raw = zeroize::Zeroizing::new(base64::engine::general_purpose::STANDARD.decode(b64).ok()?);
    let text = std::str::from_utf8(&raw).ok()?;
    let (id, secret) = text.split_once(':')?;
    Some((id.to_owned(), SecretString::from(secret.to_owned())))
}

/// `POST /v1/introspect` (RFC 7662) for the SaaS's API servers.
#[utoipa::path(
    post, path = "/v1/introspect", tag = "customer-tokens", operation_id = "introspect_customer_token",
    request_body(content = IntrospectForm, content_type = "application/x-www-form-urlencoded"),
    responses((status = 200, description = "RFC 7662: `active`, and when active the account, environment, scopes and expiry (never the name).", body = IntrospectionDto)),
    security(("resource_server" = [])),
)]
pub async fn introspect(State(st): State<AppState>, Meta(meta): Meta, headers: HeaderMap, body: Bytes) -> Response {
    match introspect_inner(&st, &meta, &headers, &body).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn introspect_inner(
    st: &AppState,
    meta: &crate::principal::RequestMeta,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Response, ApiError> {
    // No credentials at all: 401 whether or not customer tokens are
    // configured (the endpoint always needs a resource server's).
    if basic(headers).is_none() && service(st).is_err() {
        return Ok(invalid_client("introspection needs a resource server's client id and secret (HTTP Basic)"));
    }
    let svc = service(st)?;
    let m = crate::telemetry::metrics();
    // The resource server first: O(1), before the body is looked at.
    let rs = match basic(headers) {
        Some((id, secret)) => svc.resource_server(&id, &secret).cloned(),
        None => None,
    };
    let Some(rs) = rs else {
        m.customer_token_introspections.with_label_values(&["unauthenticated"]).inc();
        st.brake.refused(meta.source).await;
        st.leases.audit.auth_failed("resource-server", "invalid_client", meta.source, || {
            crate::audit::Event::new("authenticate", "failed")
                .request(Some(meta))
                .error("invalid_client", "introspection without a known resource server's credentials")
        });
        return Ok(invalid_client("introspection needs a resource server's client id and secret (HTTP Basic)"));
    };
    let form: IntrospectForm = serde_urlencoded::from_bytes(body)
        .map_err(|e| ApiError::bad_request("token", format!("the body must be a form with `token` (RFC 7662): {e}")))?;
    let source = match form.client_ip.as_deref() {
        None => meta.source,
        Some(s) => s
            .parse::<IpAddr>()
            .map_err(|_| ApiError::bad_request("client_ip", "client_ip must be an IPv4 or IPv6 address"))?,
    };
    let user_agent = match form.user_agent {
        Some(u) if u.len() > 256 => return Err(ApiError::bad_request("user_agent", "user_agent is at most 256 bytes")),
        Some(u) => u,
        None => headers.get(header::USER_AGENT).and_then(|v| v.to_str().ok()).unwrap_or("").chars().take(256).collect(),
    };
    let token = SecretString::from(form.token);
    let active = svc.introspect(&rs, &token, UseInfo { source, user_agent }).await?;
    let dto = match active {
        None => IntrospectionDto {
            active: false,
            scope: None,
            token_type: None,
            token_id: None,
            account: None,
            environment: None,
            iat: None,
            exp: None,
            client_id: None,
        },
        Some(a) => IntrospectionDto {
            active: true,
            scope: Some(a.scopes.join(" ")),
            token_type: Some("customer_token"),
            token_id: Some(a.id),
            account: Some(a.account),
            environment: Some(a.environment),
            iat: Some(a.issued_at.unix_timestamp()),
            exp: Some(a.expires_at.unix_timestamp()),
            client_id: Some(rs.name.clone()),
        },
    };
    let mut r = Json(dto).into_response();
    r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(r)
}
