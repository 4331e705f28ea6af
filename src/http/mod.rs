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
use axum::routing::{get, post};
use axum::Router;
use secrecy::SecretString;
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};
use tower_http::trace::TraceLayer;

use crate::audit::{new_request_id, sane_request_id, ActorInfo, Event, RequestMeta};
use crate::identity::{AuthError, Verifier, UNKNOWN_ISSUER};
use crate::lease::{workload_info, Actor, LeaseService};
use crate::policy::{Action, Principal, RequestContext};
use crate::store::Store;

mod admin;
mod connections;
mod error;
mod leases;
mod openapi;
mod public;

pub use error::ApiError;
pub use openapi::document as openapi_document;

/// Prefix of admin tokens, so they are told apart from JWTs at a glance
/// (and by secret scanners).
pub const ADMIN_TOKEN_PREFIX: &str = "lsr_admin_";

/// Shared state of every handler.
#[derive(Clone)]
pub struct AppState {
    pub leases: LeaseService,
    pub verifier: Arc<Verifier>,
    pub store: Arc<dyn Store>,
    /// `tls.admin_requires_client_cert`: admin endpoints take only a
    /// verified client certificate.
    pub admin_requires_client_cert: bool,
}

/// Builds the router for `/v1` and the well-known endpoints.
pub fn router(state: AppState, max_body_bytes: usize) -> Router {
    Router::new()
        .route("/v1/leases", post(leases::issue))
        .route("/v1/leases/{id}", get(leases::show).delete(leases::revoke))
        .route("/v1/leases/{id}/renew", post(leases::renew))
        .route("/v1/roles", get(leases::roles))
        .route("/v1/admin/leases", get(admin::list))
        .route("/v1/admin/revoke", post(admin::revoke_matching))
        .route("/v1/admin/jobs/{id}", get(admin::job))
        .route("/v1/admin/replicas", get(admin::replicas))
        .route("/v1/admin/status", get(admin::status))
        .route("/v1/admin/connections", get(connections::list))
        .route("/v1/admin/connections/{name}", get(connections::show))
        .route("/v1/admin/connections/{name}/secret", axum::routing::put(connections::set_secret))
        .route("/v1/admin/connections/{name}/verify", post(connections::verify))
        .route("/v1/admin/connections/{name}/approve", post(connections::approve))
        .route("/v1/admin/connections/{name}/activate", post(connections::activate))
        .route("/v1/admin/connections/{name}/rollback", post(connections::rollback))
        .route("/v1/admin/connections/{name}/rotate", post(connections::rotate))
        .route("/v1/policy/explain", post(admin::explain))
        .route("/v1/pki/{*rest}", get(public::pki_document))
        .route("/v1/token/introspect", post(public::introspect))
        .route("/.well-known/jwks.json", get(public::jwks))
        .route("/v1/health", get(public::health))
        .route("/metrics", get(public::metrics))
        .route("/v1/openapi.json", get(openapi::serve))
        .fallback(|| async { ApiError::not_found("no such endpoint; the API lives under /v1") })
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .layer(TraceLayer::new_for_http().make_span_with(request_span))
        .layer(axum::middleware::from_fn(request_id))
        .with_state(state)
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
    req.extensions_mut().insert(RequestMeta { request_id: id, source, started: std::time::Instant::now() });
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
    parts.extensions.get::<RequestMeta>().cloned().unwrap_or_else(|| RequestMeta {
        request_id: new_request_id(),
        source: source_ip(parts),
        started: std::time::Instant::now(),
    })
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

/// SHA-256 of an admin token, as stored (`meta` key `admin_token:<hex>`).
pub fn admin_token_key(token: &str) -> String {
    format!("admin_token:{}", hex::encode(Sha256::digest(token.as_bytes())))
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
        let token = match bearer(parts) {
            Ok(t) => t,
            Err(e) => {
                count(&e);
                audit.note(Event::new("authenticate", "failed").request(Some(&meta)).error(e.reason(), "no usable bearer token"));
                return Err(e.into());
            }
        };
        // The credential itself never reaches the log; its HMAC lets an
        // investigator find every use of a known (leaked) token.
        let credential = audit.hash(token.expose_secret().as_bytes());
        let event = |outcome| Event::new("authenticate", outcome).request(Some(&meta)).detail("credential", credential.clone());
        if token.expose_secret().starts_with(ADMIN_TOKEN_PREFIX) {
            let known = state.store.meta_get(&admin_token_key(token.expose_secret())).await?;
            return match known {
                Some(_) => {
                    audit.note(event("ok").actor(ActorInfo::admin("admin-token")));
                    Ok(Caller(Actor::Admin { name: "admin-token".into() }))
                }
                None => {
                    audit.note(event("failed").error("unknown_admin_token", "unknown admin token"));
                    let e = AuthError::Malformed("unknown admin token".into());
                    count(&e);
                    Err(ApiError::from(e))
                }
            };
        }
        match state.verifier.verify(&token).await {
            Ok(w) => {
                audit.note(event("ok").actor(workload_info(&w)));
                Ok(Caller(Actor::Workload(w)))
            }
            Err(e) => {
                // The reason only: the message may quote the unverified token's claims.
                audit.note(event("failed").error(e.reason(), e.reason()));
                Err(e.into())
            }
        }
    }
}

/// An admin: an admin token, or a workload whose JWT policy allows `admin`.
pub struct AdminCaller(pub Actor);

impl FromRequestParts<AppState> for AdminCaller {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        // A client certificate the TLS listener verified against the
        // configured client CA.
        if let Some(c) = parts.extensions.get::<crate::tls::ClientCert>() {
            return Ok(AdminCaller(Actor::Admin { name: format!("cert:{}", c.subject) }));
        }
        if state.admin_requires_client_cert {
            return Err(ApiError::new(
                axum::http::StatusCode::UNAUTHORIZED,
                "client_certificate_required",
                "admin endpoints need a client certificate from the configured client CA (tls.admin_requires_client_cert)",
            ));
        }
        let Caller(actor) = Caller::from_request_parts(parts, state).await?;
        match actor {
            Actor::Admin { .. } => Ok(AdminCaller(actor)),
            Actor::Workload(w) => {
                let ip = source_ip(parts);
                let ctx = RequestContext {
                    ttl_seconds: 0,
                    scopes: vec![],
                    now: time::OffsetDateTime::now_utc().unix_timestamp(),
                    source_ip: ip,
                };
                let p = Principal { issuer: w.issuer.clone(), subject: w.subject.clone(), attributes: w.attributes.clone() };
                let d = state.leases.decide(&p, Action::Admin, None, &ctx)?;
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
        if let Some(c) = parts.extensions.get::<crate::tls::ClientCert>() {
            return Ok(OperatorCaller(Actor::Admin { name: format!("cert:{}", c.subject) }));
        }
        if state.admin_requires_client_cert {
            return Err(ApiError::new(
                axum::http::StatusCode::UNAUTHORIZED,
                "client_certificate_required",
                "admin endpoints need a client certificate from the configured client CA (tls.admin_requires_client_cert)",
            ));
        }
        let Caller(actor) = Caller::from_request_parts(parts, state).await?;
        Ok(OperatorCaller(actor))
    }
}

fn source_ip(parts: &Parts) -> std::net::IpAddr {
    parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip())
        .unwrap_or(std::net::IpAddr::from([0, 0, 0, 0]))
}
