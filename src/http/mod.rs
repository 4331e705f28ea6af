//! The HTTP API (`/v1`): routers, extractors, DTOs and the one `ApiError`.
//! Handlers are thin: extract, call one domain function, map to a DTO.
//! Only this module knows the wire format.
//!
//! Must not import: sqlx, cedar_policy.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, DefaultBodyLimit, FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::header;
use axum::routing::{get, post};
use axum::Router;
use secrecy::SecretString;
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};
use tower_http::trace::TraceLayer;

use crate::identity::{AuthError, Verifier, UNKNOWN_ISSUER};
use crate::lease::{Actor, LeaseService};
use crate::policy::{Action, Principal, RequestContext};
use crate::store::Store;

mod admin;
mod error;
mod leases;
mod public;

pub use error::ApiError;

/// Prefix of admin tokens, so they are told apart from JWTs at a glance
/// (and by secret scanners).
pub const ADMIN_TOKEN_PREFIX: &str = "lsr_admin_";

/// Shared state of every handler.
#[derive(Clone)]
pub struct AppState {
    pub leases: LeaseService,
    pub verifier: Arc<Verifier>,
    pub store: Arc<dyn Store>,
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
        .route("/v1/policy/explain", post(admin::explain))
        .route("/v1/pki/{*rest}", get(public::pki_document))
        .route("/v1/token/introspect", post(public::introspect))
        .route("/.well-known/jwks.json", get(public::jwks))
        .route("/v1/health", get(public::health))
        .route("/metrics", get(public::metrics))
        .fallback(|| async { ApiError::not_found("no such endpoint; the API lives under /v1") })
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .layer(TraceLayer::new_for_http())
        .with_state(state)
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
        // Refusals before JWT verification name no issuer; the verifier
        // counts its own.
        let refused = |e: AuthError| {
            crate::telemetry::metrics().auth_failure(UNKNOWN_ISSUER, e.reason());
            ApiError::from(e)
        };
        let token = bearer(parts).map_err(refused)?;
        if token.expose_secret().starts_with(ADMIN_TOKEN_PREFIX) {
            let known = state.store.meta_get(&admin_token_key(token.expose_secret())).await?;
            return match known {
                Some(_) => Ok(Caller(Actor::Admin { name: "admin-token".into() })),
                None => Err(refused(AuthError::Malformed("unknown admin token".into()))),
            };
        }
        let w = state.verifier.verify(&token).await?;
        Ok(Caller(Actor::Workload(w)))
    }
}

/// An admin: an admin token, or a workload whose JWT policy allows `admin`.
pub struct AdminCaller(pub Actor);

impl FromRequestParts<AppState> for AdminCaller {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
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
                if d.allowed {
                    Ok(AdminCaller(Actor::Admin { name: format!("{}#{}", w.issuer, w.subject) }))
                } else {
                    Err(ApiError::forbidden(format!("admin endpoints need an admin credential; {}", d.message)))
                }
            }
        }
    }
}

fn source_ip(parts: &Parts) -> std::net::IpAddr {
    parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip())
        .unwrap_or(std::net::IpAddr::from([0, 0, 0, 0]))
}
