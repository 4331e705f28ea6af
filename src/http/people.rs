//! People sign-in endpoints (`/v1/people/...`): browser sign-in (code flow
//! with PKCE, cookies), the device flow the CLI uses, `me` and sign-out.
//! Thin: each calls one `people` function. The cookie and CSRF checks of
//! other requests are in [`super::Caller`].
//!
//! Must not import: sqlx, cedar_policy.

// Helpers return the handlers' one error type, as the handlers do.
#![allow(clippy::result_large_err)]

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::{json, Value};
use utoipa::{IntoParams, ToSchema};

use super::{ApiError, ApiJson, ApiQuery, AppState, Meta, PersonCaller};
use crate::people::{People, PeopleError};

/// The session cookie.
pub const SESSION_COOKIE: &str = "lessor_session";
/// The cookie holding a browser sign-in under way (sealed state, nonce,
/// PKCE verifier).
pub const LOGIN_COOKIE: &str = "lessor_login";
/// The header carrying a cookie session's CSRF token.
pub const CSRF_HEADER: &str = "x-lessor-csrf";

fn people(st: &AppState) -> Result<&People, ApiError> {
    st.people.as_deref().ok_or_else(|| ApiError::not_found("people sign-in is not configured on this lessor ([people] in the config)"))
}

impl From<PeopleError> for ApiError {
    fn from(e: PeopleError) -> Self {
        match e {
            PeopleError::UnknownProvider { .. } => ApiError::bad_request("provider", e.to_string()),
            PeopleError::Refused(r) => {
                let status = match r.reason {
                    "provider_unavailable" => StatusCode::BAD_GATEWAY,
                    "return_to" | "provider_required" | "device_flow_unsupported" => StatusCode::BAD_REQUEST,
                    "internal" => return ApiError::internal("people", r.message),
                    _ => StatusCode::UNAUTHORIZED,
                };
                let mut a = ApiError::new(status, "sign_in_refused", format!("sign-in refused: {}", r.message));
                a.details = Some(Box::new(json!({ "reason": r.reason })));
                a
            }
            PeopleError::Pending(code) => {
                let mut a = ApiError::new(
                    StatusCode::PRECONDITION_REQUIRED,
                    code,
                    if code == "slow_down" { "poll less often" } else { "not approved yet; keep polling" },
                );
                a.retry_after = Some(if code == "slow_down" { 10 } else { 5 });
                a
            }
            PeopleError::Store(s) => s.into(),
            PeopleError::Audit(a) => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "audit_unavailable", a.to_string()),
        }
    }
}

/// `Set-Cookie` value: HttpOnly, SameSite=Lax, Secure unless lessor is on
/// plain loopback.
fn cookie(p: &People, name: &str, value: &str, path: &str, max_age: u64) -> Result<HeaderValue, ApiError> {
    let secure = if p.secure_cookies { "; Secure" } else { "" };
    HeaderValue::from_str(&format!("{name}={value}; Path={path}; Max-Age={max_age}; HttpOnly; SameSite=Lax{secure}"))
        .map_err(|e| ApiError::internal("cookie", e))
}

/// The value of cookie `name` in the request's `Cookie` headers.
pub fn read_cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim().to_owned())
}

fn redirect(to: &str, cookies: Vec<HeaderValue>) -> Result<Response, ApiError> {
    let mut r = StatusCode::FOUND.into_response();
    r.headers_mut().insert(header::LOCATION, HeaderValue::from_str(to).map_err(|e| ApiError::internal("redirect", e))?);
    r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    for c in cookies {
        r.headers_mut().append(header::SET_COOKIE, c);
    }
    Ok(r)
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct LoginQuery {
    /// The provider's name in `[people.providers]` (optional when only one is configured).
    provider: Option<String>,
    /// Local path to return to afterwards (default `/v1/people/me`).
    return_to: Option<String>,
}

/// `GET /v1/people/login`: redirects the browser to the provider.
#[utoipa::path(
    get, path = "/v1/people/login", tag = "public", operation_id = "people_login",
    params(LoginQuery),
    responses((status = 302, description = "To the provider's authorization endpoint (code flow, PKCE S256, state, nonce); sets the short-lived `lessor_login` cookie.")),
)]
pub async fn login(State(st): State<AppState>, ApiQuery(q): ApiQuery<LoginQuery>) -> Result<Response, ApiError> {
    let p = people(&st)?;
    let start = p.begin_login(q.provider.as_deref(), q.return_to.as_deref()).await?;
    let c = cookie(p, LOGIN_COOKIE, &start.cookie, "/v1/people/callback", crate::people::LOGIN_TTL.as_secs())?;
    redirect(&start.authorization_url, vec![c])
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct CallbackQuery {
    code: Option<String>,
    state: Option<String>,
    /// The provider's error code, when it refused.
    error: Option<String>,
}

/// `GET /v1/people/callback`: the provider sends the browser back here.
#[utoipa::path(
    get, path = "/v1/people/callback", tag = "public", operation_id = "people_callback",
    params(CallbackQuery),
    responses((status = 302, description = "Signed in: sets the `lessor_session` cookie and returns to `return_to`.")),
)]
pub async fn callback(
    State(st): State<AppState>,
    Meta(meta): Meta,
    headers: HeaderMap,
    ApiQuery(q): ApiQuery<CallbackQuery>,
) -> Result<Response, ApiError> {
    let p = people(&st)?;
    let pending = read_cookie(&headers, LOGIN_COOKIE);
    let opened = p.finish_login(pending.as_deref(), q.state.as_deref(), q.code.as_deref(), q.error.as_deref(), &meta).await?;
    let max_age = (opened.session.expires_at - time::OffsetDateTime::now_utc()).whole_seconds().max(0) as u64;
    let session = cookie(p, SESSION_COOKIE, opened.token.expose_secret(), "/", max_age)?;
    let clear = cookie(p, LOGIN_COOKIE, "", "/v1/people/callback", 0)?;
    redirect(&opened.return_to, vec![session, clear])
}

/// `GET /v1/people/me`: who is signed in, and the CSRF token for
/// state-changing calls made with the cookie.
#[utoipa::path(
    get, path = "/v1/people/me", tag = "people", operation_id = "people_me",
    responses((status = 200, description = "The signed-in person, the session's CSRF token (send it as `X-Lessor-CSRF`) and when the session ends.", body = super::openapi::wire::Me)),
    security(("person_session" = []), ("person_cookie" = [])),
)]
pub async fn me(State(st): State<AppState>, PersonCaller(s, token): PersonCaller) -> Result<Json<Value>, ApiError> {
    let p = people(&st)?;
    let rfc = |t| super::leases_rfc3339(t);
    Ok(Json(json!({
        "person": { "provider": s.provider, "subject": s.subject, "email": s.email, "name": s.name, "groups": s.groups },
        "session": s.id,
        "via": s.via,
        "csrf_token": p.csrf_token(&token),
        "expires_at": rfc(s.expires_at),
        "idle_expires_at": rfc(s.idle_expires_at),
    })))
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LogoutReq {
    /// End every session of this person, on every device.
    #[serde(default)]
    everywhere: bool,
}

/// `POST /v1/people/logout`: ends this session (or all of the person's).
#[utoipa::path(
    post, path = "/v1/people/logout", tag = "people", operation_id = "people_logout",
    request_body = LogoutReq,
    responses((status = 200, description = "Signed out: how many sessions ended.", body = super::openapi::wire::LoggedOut)),
    security(("person_session" = []), ("person_cookie" = [])),
)]
pub async fn logout(
    State(st): State<AppState>,
    Meta(meta): Meta,
    PersonCaller(s, _): PersonCaller,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let p = people(&st)?;
    // The body is optional: none (or `{}`) ends this session only.
    let req: LogoutReq = if body.iter().all(u8::is_ascii_whitespace) {
        LogoutReq::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| ApiError::bad_request("body", format!("not a logout request: {e}")))?
    };
    let everywhere = req.everywhere;
    let n = p.logout(&s, everywhere, &meta).await?;
    let mut r = Json(json!({ "ended": n, "everywhere": everywhere })).into_response();
    r.headers_mut().append(header::SET_COOKIE, cookie(p, SESSION_COOKIE, "", "/", 0)?);
    Ok(r)
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeviceReq {
    /// The provider's name (optional when only one is configured).
    #[serde(default)]
    provider: Option<String>,
}

/// `POST /v1/people/device`: starts a device sign-in (`lessor login`).
#[utoipa::path(
    post, path = "/v1/people/device", tag = "public", operation_id = "people_device",
    request_body = DeviceReq,
    responses((status = 200, description = "The user code to enter at the verification URI, and the device code to poll with.", body = super::openapi::wire::DeviceStart)),
)]
pub async fn device(State(st): State<AppState>, ApiJson(req): ApiJson<DeviceReq>) -> Result<Json<Value>, ApiError> {
    let d = people(&st)?.device_start(req.provider.as_deref()).await?;
    Ok(Json(json!({
        "device_code": d.device_code,
        "user_code": d.user_code,
        "verification_uri": d.verification_uri,
        "verification_uri_complete": d.verification_uri_complete,
        "interval": d.interval,
        "expires_in": d.expires_in,
    })))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeviceTokenReq {
    device_code: String,
}

/// `POST /v1/people/device/token`: polls a device sign-in.
#[utoipa::path(
    post, path = "/v1/people/device/token", tag = "public", operation_id = "people_device_token",
    request_body = DeviceTokenReq,
    responses((status = 200, description = "Approved: the person session token (`lsr_person_...`), shown this once.", body = super::openapi::wire::DeviceToken)),
)]
pub async fn device_token(
    State(st): State<AppState>,
    Meta(meta): Meta,
    ApiJson(req): ApiJson<DeviceTokenReq>,
) -> Result<Json<Value>, ApiError> {
    let opened = people(&st)?.device_poll(&req.device_code, &meta).await?;
    let s = &opened.session;
    Ok(Json(json!({
        "session_token": opened.token.expose_secret(),
        "person": { "provider": s.provider, "subject": s.subject, "email": s.email, "name": s.name, "groups": s.groups },
        "expires_at": super::leases_rfc3339(s.expires_at),
    })))
}

/// The session token a request carries in its cookie, if any.
pub fn cookie_token(headers: &HeaderMap) -> Option<SecretString> {
    read_cookie(headers, SESSION_COOKIE).filter(|v| !v.is_empty()).map(SecretString::from)
}
