//! The HTTP API (`/v1`): routers, extractors, DTOs and the one `ApiError`.
//! Handlers are thin: extract, call one domain function, map to a DTO.
//! Only this module knows the wire format.
//!
//! Must not import: sqlx, cedar_policy.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, DefaultBodyLimit, FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderName, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;
use axum::routing::{any, get, on, post, MethodFilter};
use axum::Router;
use secrecy::SecretString;
use serde::de::DeserializeOwned;
use tower_http::trace::TraceLayer;

use crate::audit::workload_info;
use crate::audit::{ActorInfo, Event};
use crate::identity::{AuthError, Verifier, UNKNOWN_ISSUER};
use crate::lease::LeaseService;
use crate::policy::{Action, Principal, RequestContext};
use crate::principal::{new_request_id, sane_request_id, Actor, RequestMeta};
use crate::store::Store;

mod admin;
mod admin_tokens;
pub mod brake;
mod connections;
mod customer_tokens;
mod error;
mod leases;
mod openapi;
mod people;
mod public;
pub mod vault;

pub use error::ApiError;
pub(crate) use leases::rfc3339 as leases_rfc3339;
pub use openapi::document as openapi_document;

/// Prefix of admin tokens (see [`crate::admin_tokens`]).
pub const ADMIN_TOKEN_PREFIX: &str = crate::admin_tokens::PREFIX;

/// Shared state of every handler.
#[derive(Clone)]
pub struct AppState {
    pub leases: LeaseService,
    pub verifier: Arc<Verifier>,
    pub store: Arc<dyn Store>,
    /// `tls.admin_requires_client_cert`: admin endpoints take only a
    /// verified client certificate.
    pub admin_requires_client_cert: bool,
    /// Delays refused authentications from networks that keep failing.
    pub brake: Arc<brake::AuthBrake>,
    /// The Vault-compatible API, when `[vault_api]` is configured.
    pub vault: Option<Arc<vault::VaultState>>,
    /// Runs `POST /v1/admin/reconcile` passes.
    pub reconciler: Arc<crate::lease::reconcile::Reconciler>,
    /// People sign-in and sessions, when `[people]` is configured.
    pub people: Option<Arc<crate::people::People>>,
    /// Customer API tokens, when `[customer_tokens]` is configured.
    pub customer_tokens: Option<Arc<crate::customer_tokens::CustomerTokens>>,
}

/// Builds the router for `/v1` and the well-known endpoints.
///
/// Every request is bounded by `limits.request_timeout` (408). Each
/// unauthenticated route serves at most `unauthenticated_route_concurrency`
/// requests at once, and all of them together `unauthenticated_concurrency`;
/// excess requests are refused at once (503 `overloaded`), never queued, so
/// anonymous traffic cannot hold the store connections issuance and expiry need.
pub fn router(state: AppState, limits: &crate::config::Limits) -> Router {
    let shared = Arc::new(tokio::sync::Semaphore::new(limits.unauthenticated_concurrency));
    let per_route = limits.unauthenticated_route_concurrency;
    let public = || {
        tower::ServiceBuilder::new()
            .layer(axum::error_handling::HandleErrorLayer::new(overloaded))
            .load_shed()
            .layer(tower::limit::GlobalConcurrencyLimitLayer::with_semaphore(shared.clone()))
            .concurrency_limit(per_route)
    };
    let vault_on = state.vault.is_some();
    let router = Router::new()
        .route("/v1/leases", post(leases::issue))
        .route("/v1/leases/{id}", get(leases::show).delete(leases::revoke))
        .route("/v1/leases/{id}/renew", post(leases::renew))
        .route("/v1/roles", get(leases::roles))
        .route("/v1/admin/leases", get(admin::list))
        .route("/v1/admin/revoke", post(admin::revoke_matching))
        .route("/v1/admin/jobs/{id}", get(admin::job))
        .route("/v1/admin/replicas", get(admin::replicas))
        .route("/v1/admin/status", get(admin::status))
        .route("/v1/admin/reconcile", post(admin::reconcile))
        .route("/v1/admin/tokens", get(admin_tokens::list).post(admin_tokens::create))
        .route("/v1/admin/tokens/{name}", axum::routing::delete(admin_tokens::revoke))
        .route("/v1/admin/connections", get(connections::list))
        .route("/v1/admin/connections/{name}", get(connections::show))
        .route("/v1/admin/connections/{name}/secret", axum::routing::put(connections::set_secret))
        .route("/v1/admin/connections/{name}/verify", post(connections::verify))
        .route("/v1/admin/connections/{name}/approve", post(connections::approve))
        .route("/v1/admin/connections/{name}/activate", post(connections::activate))
        .route("/v1/admin/connections/{name}/rollback", post(connections::rollback))
        .route("/v1/admin/connections/{name}/rotate", post(connections::rotate))
        .route("/v1/policy/explain", post(admin::explain))
        .route("/v1/people/login", get(people::login).layer(public()))
        .route("/v1/people/callback", get(people::callback).layer(public()))
        .route("/v1/people/device", post(people::device).layer(public()))
        .route("/v1/people/device/token", post(people::device_token).layer(public()))
        .route("/v1/people/me", get(people::me))
        .route("/v1/people/logout", post(people::logout))
        .route("/v1/accounts/{account}/tokens", get(customer_tokens::list).post(customer_tokens::create))
        .route("/v1/accounts/{account}/tokens/preview", post(customer_tokens::preview))
        .route("/v1/accounts/{account}/tokens/{id}", get(customer_tokens::show).delete(customer_tokens::revoke))
        .route("/v1/accounts/{account}/tokens/{id}/rotate", post(customer_tokens::rotate))
        .route("/v1/introspect", post(customer_tokens::introspect))
        .route("/v1/plugins/{connection}/{document}", get(public::connection_document).layer(public()))
        .route("/v1/plugins/{connection}/{role}/{document}", get(public::role_document).layer(public()))
        .route("/v1/pki/{*rest}", get(public::pki_document).layer(public()))
        .route("/v1/token/introspect", post(public::introspect).layer(public()))
        .route("/.well-known/jwks.json", get(public::jwks).layer(public()))
        .route("/v1/health", get(public::health).layer(public()))
        .route("/metrics", get(public::metrics).layer(public()))
        .route("/v1/openapi.json", get(openapi::serve).layer(public()));
    // The Vault-compatible API (documented by Vault, not in openapi.json):
    // its unauthenticated paths are shed like lessor's own; every other
    // path under /v1 that no route above serves is a Vault path.
    let router = if vault_on {
        router
            .route("/v1/sys/health", any(vault::health).layer(public()))
            .route("/v1/sys/seal-status", any(vault::seal_status).layer(public()))
            .route("/v1/sys/leader", any(vault::leader).layer(public()))
            .route("/v1/sys/{*rest}", any(vault::dispatch))
            .route("/v1/auth/{*rest}", any(vault::dispatch))
            // A Vault pki mount named `pki` (`pki/issue/<role>`) beside
            // lessor's own GET documents there.
            .route("/v1/pki/{*rest}", on(MethodFilter::POST.or(MethodFilter::PUT), vault::dispatch))
    } else {
        router
    };
    router
        .fallback(vault::fallback)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(limits.max_body_bytes))
        .layer(
            tower::ServiceBuilder::new()
                .layer(axum::error_handling::HandleErrorLayer::new(timed_out))
                .timeout(limits.request_timeout),
        )
        .layer(axum::middleware::from_fn(json_errors))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(panicked))
        .layer(axum::middleware::from_fn(header_limit))
        .layer(TraceLayer::new_for_http().make_span_with(request_span))
        .layer(axum::middleware::from_fn(request_id))
        .with_state(state)
}

/// Largest total size of a request's headers (names + values) answered
/// normally; above it a JSON 431. (hyper's own limit, about 400 KiB or 100
/// headers, is far above it and answers with an empty 431.)
pub const MAX_HEADER_BYTES: usize = 32 * 1024;

async fn method_not_allowed(req: Request) -> ApiError {
    ApiError::new(
        axum::http::StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{} is not allowed on {}; see the Allow header", req.method(), req.uri().path()),
    )
}

/// Refuses oversized headers with a JSON 431 before anything reads them.
async fn header_limit(req: Request, next: Next) -> Response {
    let size: usize = req.headers().iter().map(|(k, v)| k.as_str().len() + v.len()).sum();
    if size > MAX_HEADER_BYTES {
        return axum::response::IntoResponse::into_response(ApiError::new(
            axum::http::StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "headers_too_large",
            format!("request headers are {size} bytes; at most {MAX_HEADER_BYTES} are accepted"),
        ));
    }
    next.run(req).await
}

/// A handler that panicked: logged, answered with the generic 500 body.
/// (No handler should: every input is bounded. This keeps the connection
/// and the answer's shape if one ever does.)
fn panicked(_: Box<dyn std::any::Any + Send + 'static>) -> Response {
    axum::response::IntoResponse::into_response(ApiError::internal("request handler panicked", "see the panic message above"))
}

/// Every error the API answers is JSON in the one error shape: extractor
/// rejections (path, query, body limit) and framework answers (405) that
/// come as plain text or empty bodies are rewritten here, keeping their
/// status and headers (`Allow`).
async fn json_errors(req: Request, next: Next) -> Response {
    let resp = next.run(req).await;
    let status = resp.status();
    let is_json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    // Rejection texts are short; anything longer is cut, never buffered.
    let text = match axum::body::to_bytes(body, 4096).await {
        Ok(b) => String::from_utf8_lossy(&b).trim().to_owned(),
        Err(_) => String::new(),
    };
    let message = if text.is_empty() { status.canonical_reason().unwrap_or("error").to_owned() } else { text };
    let code = match status.as_u16() {
        400 => "invalid_request",
        404 => "not_found",
        405 => "method_not_allowed",
        408 => "timeout",
        413 => "too_large",
        415 => "unsupported_media_type",
        422 => "invalid_request",
        431 => "headers_too_large",
        429 => "too_many_requests",
        503 => "unavailable",
        _ if status.is_server_error() => "internal",
        _ => "error",
    };
    let mut e = ApiError::new(status, code, message);
    e.field = error::field_of_rejection(&e.message);
    let fresh = axum::response::IntoResponse::into_response(e);
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Response::from_parts(parts, fresh.into_body())
}

/// The answer to a request refused by an unauthenticated route's
/// concurrency limit.
async fn overloaded(e: tower::BoxError) -> ApiError {
    if e.is::<tower::load_shed::error::Overloaded>() {
        let mut a = ApiError::new(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "overloaded",
            "too many requests to this endpoint at once; try again shortly",
        );
        a.retry_after = Some(1);
        return a;
    }
    ApiError::internal("unauthenticated route layer", e)
}

/// The answer to a request that outlived `limits.request_timeout`.
async fn timed_out(e: tower::BoxError) -> ApiError {
    if e.is::<tower::timeout::error::Elapsed>() {
        return ApiError::new(
            axum::http::StatusCode::REQUEST_TIMEOUT,
            "request_timeout",
            "the request took longer than the server's request timeout (limits.request_timeout)",
        );
    }
    ApiError::internal("request layer", e)
}

const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The span every log line of a request carries: its id (set by the
/// `request_id` layer outside this one), method and path. Never the query
/// string or headers, which may hold secrets.
fn request_span(req: &axum::http::Request<axum::body::Body>) -> tracing::Span {
    let id = req.headers().get(&X_REQUEST_ID).and_then(|v| v.to_str().ok()).unwrap_or("-");
    tracing::info_span!("request", request_id = %id, method = %req.method(), path = %req.uri().path())
}

/// Gives every request an id: the client's `x-request-id` when it is sane
/// (1-64 of `A-Za-z0-9-_.:`), else a new one. It is returned in the
/// response header and written to every audit entry of the request.
async fn request_id(mut req: Request, next: Next) -> Response {
    let id = req
        .headers()
        .get(&X_REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|s| sane_request_id(s))
        .map(str::to_owned)
        .unwrap_or_else(new_request_id);
    let source = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip())
        .unwrap_or(std::net::IpAddr::from([0, 0, 0, 0]));
    let value = HeaderValue::from_str(&id).ok();
    if let Some(v) = &value {
        req.headers_mut().insert(X_REQUEST_ID, v.clone());
    }
    req.extensions_mut().insert(RequestMeta::new(id, source));
    let mut resp = next.run(req).await;
    if let Some(v) = value {
        resp.headers_mut().insert(X_REQUEST_ID, v);
    }
    resp
}

/// The request's id, source address and start time (for audit entries).
pub struct Meta(pub RequestMeta);

impl<S: Send + Sync> FromRequestParts<S> for Meta {
    type Rejection = std::convert::Infallible;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Meta(request_meta(parts)))
    }
}

fn request_meta(parts: &Parts) -> RequestMeta {
    parts.extensions.get::<RequestMeta>().cloned().unwrap_or_else(|| RequestMeta::new(new_request_id(), source_ip(parts)))
}

/// JSON body whose rejections become precise `ApiError`s.
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;
    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(ApiJson(v)),
            Err(r) => Err(r.into()),
        }
    }
}

/// More than one `Authorization` header is refused (400) before any is
/// read: which one a proxy and lessor would each pick may differ.
fn single_authorization(parts: &Parts) -> Result<(), ApiError> {
    let n = parts.headers.get_all(header::AUTHORIZATION).iter().count();
    if n > 1 {
        return Err(ApiError::bad_request("authorization", format!("send one Authorization header, not {n}")));
    }
    Ok(())
}

/// Query string whose rejections become precise `ApiError`s (a JSON 400
/// naming the parameter, like every other error).
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(v)) => Ok(ApiQuery(v)),
            Err(r) => Err(r.into()),
        }
    }
}

fn bearer(parts: &Parts) -> Result<SecretString, AuthError> {
    let v = parts.headers.get(header::AUTHORIZATION).ok_or(AuthError::Missing)?;
    let v = v.to_str().map_err(|_| AuthError::Malformed("Authorization header is not ASCII".into()))?;
    let token = v
        .strip_prefix("Bearer ")
        .or_else(|| v.strip_prefix("bearer "))
        .ok_or_else(|| AuthError::Malformed("Authorization must be `Bearer <token>`".into()))?;
    Ok(SecretString::from(token.trim().to_owned()))
}

/// Whether the request is an issue (`POST /v1/leases`), whose audit
/// entries (`issue pending` and every refusal) record the caller.
fn issues_a_credential(parts: &Parts) -> bool {
    parts.method == axum::http::Method::POST && parts.uri.path() == "/v1/leases"
}

/// The caller: a verified workload, or an admin token holder.
pub struct Caller(pub Actor);

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        use secrecy::ExposeSecret;
        let meta = request_meta(parts);
        let audit = &state.leases.audit;
        // Refusals before JWT verification name no issuer; the verifier
        // counts its own.
        let count = |e: &AuthError| crate::telemetry::metrics().auth_failure(UNKNOWN_ISSUER, e.reason());
        if let Err(e) = single_authorization(parts) {
            audit.note(
                Event::new("authenticate", "failed")
                    .request(Some(&meta))
                    .error("duplicate_authorization", "more than one Authorization header"),
            );
            return Err(e);
        }
        if !parts.headers.contains_key(header::AUTHORIZATION) {
            if let Some(actor) = cert_admin(parts)? {
                return Ok(Caller(actor));
            }
            if let Some((s, _)) = person_session(parts, state).await? {
                return Ok(Caller(Actor::Person(crate::people::person(&s))));
            }
        }
        let token = match bearer(parts) {
            Ok(t) => t,
            Err(e) => {
                count(&e);
                state.brake.refused(meta.source).await;
                audit.auth_failed(UNKNOWN_ISSUER, e.reason(), meta.source, || {
                    Event::new("authenticate", "failed").request(Some(&meta)).error(e.reason(), "no usable bearer token")
                });
                return Err(e.into());
            }
        };
        // The credential itself never reaches the log; its HMAC lets an
        // investigator find every use of a known (leaked) token.
        let credential = || audit.hash(token.expose_secret().as_bytes());
        let event = |outcome| Event::new("authenticate", outcome).request(Some(&meta)).detail("credential", credential());
        if crate::people::looks_like_token(token.expose_secret()) {
            if let Some((s, _)) = person_session(parts, state).await? {
                return Ok(Caller(Actor::Person(crate::people::person(&s))));
            }
        }
        if crate::admin_tokens::looks_like_admin_token(token.expose_secret()) {
            if state.admin_requires_client_cert {
                audit.note(event("failed").error("client_certificate_required", "admin token refused: admin needs a client certificate"));
                return Err(client_cert_required());
            }
            let now = time::OffsetDateTime::now_utc();
            return match crate::admin_tokens::authenticate(state.store.as_ref(), &token, now).await? {
                Ok(name) => {
                    let name = format!("token:{name}");
                    audit.note(event("ok").actor(ActorInfo::admin(&name)).detail("admin_token", name.clone()));
                    Ok(Caller(Actor::Admin { name }))
                }
                Err(refusal) => {
                    // Counted under the reason refused admin tokens always had.
                    count(&AuthError::Malformed(String::new()));
                    // Aggregated like every refused credential: a flood of
                    // made-up admin tokens is a summary line, not a line each.
                    state.brake.refused(meta.source).await;
                    audit.auth_failed("admin-token", refusal.reason(), meta.source, || {
                        let mut ev = event("failed").error(refusal.reason(), crate::admin_tokens::REFUSED_MESSAGE);
                        if let Some(n) = refusal.name() {
                            ev = ev.detail("admin_token", format!("token:{n}"));
                        }
                        ev
                    });
                    tracing::debug!(reason = refusal.reason(), "admin token refused");
                    Err(ApiError::unauthorized("invalid_token", crate::admin_tokens::REFUSED_MESSAGE))
                }
            };
        }
        match state.verifier.verify_naming_issuer(&token, time::OffsetDateTime::now_utc()).await {
            Ok(w) => {
                if issues_a_credential(parts) {
                    // The issue's own entries carry the actor and the
                    // credential's HMAC: no separate entry.
                    if let Some(m) = parts.extensions.get_mut::<RequestMeta>() {
                        m.credential = Some(credential());
                    }
                } else {
                    audit.note(event("ok").actor(workload_info(&w)));
                }
                Ok(Caller(Actor::Workload(w)))
            }
            Err((e, issuer)) => {
                // The reason only: the message may quote the unverified token's claims.
                state.brake.refused(meta.source).await;
                audit.auth_failed(issuer, e.reason(), meta.source, || event("failed").error(e.reason(), e.reason()));
                Err(e.into())
            }
        }
    }
}

/// The person session a request carries: a bearer `lsr_person_...` token
/// (no CSRF check: a browser never sends one on its own), or, when the
/// request has no `Authorization` header, the `lessor_session` cookie, whose
/// state-changing requests (anything but GET, HEAD, OPTIONS) must carry the
/// session's CSRF token in `X-Lessor-CSRF` (403 otherwise, changing
/// nothing). None when the request carries neither; 401 when the session
/// is unknown or ended.
async fn person_session(parts: &Parts, state: &AppState) -> Result<Option<(crate::store::PersonSession, SecretString)>, ApiError> {
    let from_bearer = parts.headers.contains_key(header::AUTHORIZATION);
    let token = if from_bearer {
        match bearer(parts) {
            Ok(t) if crate::people::looks_like_token(secrecy::ExposeSecret::expose_secret(&t)) => t,
            _ => return Ok(None),
        }
    } else {
        match people::cookie_token(&parts.headers) {
            Some(t) => t,
            None => return Ok(None),
        }
    };
    let Some(p) = state.people.as_deref() else {
        return Err(ApiError::unauthorized(
            "invalid_token",
            "a person session was presented, but people sign-in is not configured on this lessor ([people])",
        ));
    };
    let meta = request_meta(parts);
    let audit = &state.leases.audit;
    let credential = audit.hash(secrecy::ExposeSecret::expose_secret(&token).as_bytes());
    let s = match p.authenticate(&token).await? {
        Ok(s) => s,
        Err(r) => {
            state.brake.refused(meta.source).await;
            p.note_refused(r, &meta, credential);
            return Err(ApiError::unauthorized(
                "session_ended",
                "the person session is unknown or has ended (signed out, idle or absolute timeout); sign in again",
            ));
        }
    };
    let safe = matches!(parts.method, axum::http::Method::GET | axum::http::Method::HEAD | axum::http::Method::OPTIONS);
    if !from_bearer && !safe {
        let presented = parts.headers.get(people::CSRF_HEADER).and_then(|v| v.to_str().ok());
        let why = match presented {
            None => Some("no X-Lessor-CSRF header on a state-changing request made with the session cookie"),
            Some(v) if !p.csrf_ok(&token, v) => Some("the X-Lessor-CSRF header is not this session's CSRF token"),
            Some(_) => None,
        };
        if let Some(why) = why {
            p.note_csrf(&s, &meta, why);
            let mut e = ApiError::forbidden(format!("{why}; GET /v1/people/me gives the token"));
            e.code = "csrf";
            return Err(e);
        }
    }
    audit.note(
        Event::new("authenticate", "ok")
            .request(Some(&meta))
            .detail("credential", credential)
            .actor(Actor::Person(crate::people::person(&s)).audit_info())
            .detail("session", s.id.clone()),
    );
    Ok(Some((s, token)))
}

/// A signed-in person (cookie with CSRF, or bearer session token): the
/// session and its token. Anything else is refused.
pub struct PersonCaller(pub crate::store::PersonSession, pub SecretString);

impl FromRequestParts<AppState> for PersonCaller {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        if state.people.is_none() {
            return Err(ApiError::not_found("people sign-in is not configured on this lessor ([people] in the config)"));
        }
        single_authorization(parts)?;
        match person_session(parts, state).await? {
            Some((s, t)) => Ok(PersonCaller(s, t)),
            None if parts.headers.contains_key(header::AUTHORIZATION) => {
                Err(ApiError::forbidden("this endpoint is for signed-in people; present a person session (cookie or `lsr_person_...` bearer)"))
            }
            None => Err(ApiError::unauthorized("missing", "not signed in: sign in at /v1/people/login or with `lessor login`")),
        }
    }
}

/// An admin: an admin token, a workload whose JWT policy allows `admin`, or
/// a signed-in person policy allows `admin` (who stays a person: the audit
/// names them).
pub struct AdminCaller(pub Actor);

impl FromRequestParts<AppState> for AdminCaller {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        if let Some(actor) = cert_admin(parts)? {
            return Ok(AdminCaller(actor));
        }
        if state.admin_requires_client_cert {
            return Err(client_cert_required());
        }
        let Caller(actor) = Caller::from_request_parts(parts, state).await?;
        let ctx = || RequestContext {
            ttl_seconds: 0,
            scopes: vec![],
            now: time::OffsetDateTime::now_utc().unix_timestamp(),
            source_ip: source_ip(parts),
            vault_role: None,
        };
        match actor {
            Actor::Admin { .. } => Ok(AdminCaller(actor)),
            Actor::Person(p) => {
                let d = state.leases.decide(&crate::connections::person_info(&p), Action::Admin, None, &ctx())?;
                let mut ev = Event::new("decide", if d.allowed { "allow" } else { "deny" })
                    .request(Some(&request_meta(parts)))
                    .actor(Actor::Person(p.clone()).audit_info())
                    .detail("policy_action", "admin");
                ev.policies = Some(d.policy_ids());
                ev.reasons = Some(d.policies.iter().filter_map(|p| p.reason.clone()).collect());
                state.leases.audit.note(ev);
                if d.allowed {
                    Ok(AdminCaller(Actor::Person(p)))
                } else {
                    Err(ApiError::forbidden(format!("admin endpoints need an admin credential; {}", d.message)))
                }
            }
            Actor::Workload(w) => {
                let p = Principal { issuer: w.issuer.clone(), subject: w.subject.clone(), attributes: w.attributes.clone() };
                let d = state.leases.decide(&p, Action::Admin, None, &ctx())?;
                let mut ev = Event::new("decide", if d.allowed { "allow" } else { "deny" })
                    .request(Some(&request_meta(parts)))
                    .actor(workload_info(&w))
                    .detail("policy_action", "admin");
                ev.policies = Some(d.policy_ids());
                ev.reasons = Some(d.policies.iter().filter_map(|p| p.reason.clone()).collect());
                state.leases.audit.note(ev);
                if d.allowed {
                    Ok(AdminCaller(Actor::Admin { name: format!("{}#{}", w.issuer, w.subject) }))
                } else {
                    Err(ApiError::forbidden(format!("admin endpoints need an admin credential; {}", d.message)))
                }
            }
        }
    }
}

/// A caller of the root-credential endpoints: an admin credential (admin
/// token, client certificate), or a workload whose JWT policy then judges
/// per action and connection (`connection_*` actions), so an owner can be
/// allowed to set a secret without being an admin.
pub struct OperatorCaller(pub Actor);

impl FromRequestParts<AppState> for OperatorCaller {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        if let Some(actor) = cert_admin(parts)? {
            return Ok(OperatorCaller(actor));
        }
        if state.admin_requires_client_cert {
            return Err(client_cert_required());
        }
        let Caller(actor) = Caller::from_request_parts(parts, state).await?;
        Ok(OperatorCaller(actor))
    }
}

/// An admin by client certificate: one the TLS listener verified against
/// `tls.client_ca_file` (and its CRLs) whose subject is on
/// `tls.admin_subjects`. A verified certificate not on the list is no
/// credential: refused (403) when the request carries no other one.
fn cert_admin(parts: &Parts) -> Result<Option<Actor>, ApiError> {
    let Some(c) = parts.extensions.get::<crate::tls::ClientCert>() else {
        return Ok(None);
    };
    if !c.allowed {
        if parts.headers.contains_key(header::AUTHORIZATION) {
            return Ok(None);
        }
        return Err(ApiError::forbidden(format!(
            "client certificate `{}` is not an admin: neither its subject CN nor a SAN is in tls.admin_subjects",
            c.subject
        )));
    }
    Ok(Some(Actor::Admin { name: format!("cert:{}", c.subject) }))
}

fn client_cert_required() -> ApiError {
    ApiError::new(
        axum::http::StatusCode::UNAUTHORIZED,
        "client_certificate_required",
        "admin access needs a client certificate from the configured client CA (tls.admin_requires_client_cert); admin tokens are refused",
    )
}

fn source_ip(parts: &Parts) -> std::net::IpAddr {
    parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip())
        .unwrap_or(std::net::IpAddr::from([0, 0, 0, 0]))
}
