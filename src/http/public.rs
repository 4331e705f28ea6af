//! Unauthenticated endpoints: documents plugins serve (CA chains, CRLs,
//! JWKS) through one generic route and the aliases certificates and clients
//! know, token introspection, health and metrics. No plugin kind is named
//! here: plugins declare what they serve.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use secrecy::SecretString;
use serde_json::{json, Value};

use super::{ApiError, AppState};

/// A plugin document as an HTTP response (never cached: CRLs change).
fn document_response(d: lessor_plugin::Document) -> Result<Response, ApiError> {
    let ct = header::HeaderValue::from_str(&d.content_type)
        .map_err(|e| ApiError::internal("plugin document", format!("content type `{}`: {e}", d.content_type)))?;
    Ok(([(header::CONTENT_TYPE, ct), (header::CACHE_CONTROL, header::HeaderValue::from_static("no-store"))], d.body)
        .into_response())
}

/// The generic route for a document a plugin serves for its connection
/// (a JWKS), as its plugin declares it.
#[utoipa::path(
    get, path = "/v1/plugins/{connection}/{document}", tag = "public", operation_id = "connection_document",
    params(
        ("connection" = String, Path, description = "Connection name."),
        ("document" = String, Path, description = "A document the connection's plugin declares per connection (e.g. `jwks`)."),
    ),
    responses((status = 200, description = "The document, with the content type its plugin gives it.")),
)]
pub async fn connection_document(
    State(st): State<AppState>,
    Path((connection, document)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    plugin_document(&st, &connection, None, &document).await
}

/// The generic route for a document a plugin serves per role (a CA chain,
/// a CRL), as its plugin declares it.
#[utoipa::path(
    get, path = "/v1/plugins/{connection}/{role}/{document}", tag = "public", operation_id = "role_document",
    params(
        ("connection" = String, Path, description = "Connection name."),
        ("role" = String, Path, description = "Role name within the connection."),
        ("document" = String, Path, description = "A document the connection's plugin declares per role (e.g. `ca`, `ca.der`, `crl`)."),
    ),
    responses((status = 200, description = "The document, with the content type its plugin gives it.")),
)]
pub async fn role_document(
    State(st): State<AppState>,
    Path((connection, role, document)): Path<(String, String, String)>,
) -> Result<Response, ApiError> {
    plugin_document(&st, &connection, Some(&role), &document).await
}

async fn plugin_document(st: &AppState, connection: &str, role: Option<&str>, name: &str) -> Result<Response, ApiError> {
    let catalog = &st.leases.catalog;
    let Some(plugin) = catalog.connections.get(connection) else {
        return Err(ApiError::not_found(format!("no connection `{connection}`")));
    };
    let d = catalog.document(connection, role, name).await.map_err(|e| ApiError::internal("plugin document", e))?;
    match d {
        Some(d) => document_response(d),
        None => {
            let served: Vec<String> =
                plugin.documents().into_iter().filter(|d| d.per_role == role.is_some()).map(|d| d.name).collect();
            let whose = match role {
                Some(r) => format!("role `{connection}/{r}`"),
                None => format!("connection `{connection}`"),
            };
            Err(ApiError::not_found(if served.is_empty() {
                format!("{whose} serves no documents")
            } else {
                format!("{whose} has no document `{name}`; it serves: {}", served.join(", "))
            }))
        }
    }
}

/// `GET /v1/pki/{role}/{ca|ca.der|crl}`: the URLs issued certificates embed,
/// kept as an alias of the generic role document route. `role` is
/// `connection/role`, or the role's short name when it is unique among the
/// roles that serve the document.
#[utoipa::path(
    get, path = "/v1/pki/{role}/{document}", tag = "public", operation_id = "pki_document",
    params(
        ("role" = String, Path, description = "`connection/role` (URL-encoded), or the short name when unique among the roles serving the document."),
        ("document" = String, Path, description = "`ca` (PEM chain), `ca.der` (the CA certificate, DER) or `crl` (DER)."),
    ),
    responses((status = 200, description = "The CA chain (`application/pem-certificate-chain`), the CA certificate (`application/pkix-cert`) or the CRL (`application/pkix-crl`).")),
)]
pub async fn pki_document(State(st): State<AppState>, Path(rest): Path<String>) -> Result<Response, ApiError> {
    let (role_name, doc) = rest
        .rsplit_once('/')
        .ok_or_else(|| ApiError::not_found("use /v1/pki/{role}/ca, /v1/pki/{role}/ca.der or /v1/pki/{role}/crl"))?;
    let role = st
        .leases
        .catalog
        .find_serving(doc, role_name)
        .ok_or_else(|| ApiError::not_found(format!("no role `{role_name}` serves a document `{doc}`")))?;
    plugin_document(&st, &role.connection, Some(&role.short), doc).await
}

/// The JWKS of every connection whose plugin serves one, merged.
#[utoipa::path(
    get, path = "/.well-known/jwks.json", tag = "public", operation_id = "jwks",
    responses((status = 200, description = "Public keys of every connection that signs tokens.", body = super::openapi::wire::Jwks)),
)]
pub async fn jwks(State(st): State<AppState>) -> Result<Json<Value>, ApiError> {
    let mut keys = Vec::new();
    let catalog = &st.leases.catalog;
    for name in catalog.connections.keys() {
        let doc = catalog.document(name, None, lessor_plugin::DOC_JWKS).await.map_err(|e| ApiError::internal("jwks", e))?;
        if let Some(d) = doc {
            let v: Value = serde_json::from_slice(&d.body).map_err(|e| ApiError::internal(&format!("jwks of {name}"), e))?;
            if let Some(arr) = v.get("keys").and_then(Value::as_array) {
                keys.extend(arr.iter().cloned());
            }
        }
    }
    Ok(Json(json!({ "keys": keys })))
}

/// RFC 7662 token introspection. Accepts `application/x-www-form-urlencoded`
/// (`token=...`) as the RFC says, or JSON `{"token": ...}`. Every plugin is
/// asked; one that did not issue the token answers "not mine".
#[utoipa::path(
    post, path = "/v1/token/introspect", tag = "public", operation_id = "introspect",
    request_body(content = super::openapi::wire::IntrospectReq, content_type = "application/x-www-form-urlencoded"),
    responses((status = 200, description = "RFC 7662: `active` and, when active, the token's claims.", body = super::openapi::wire::Introspection)),
)]
pub async fn introspect(State(st): State<AppState>, headers: HeaderMap, body: Bytes) -> Result<Json<Value>, ApiError> {
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    let token: Option<String> = if is_json {
        serde_json::from_slice::<Value>(&body)
            .map_err(|e| ApiError::bad_request("token", format!("body is not JSON: {e}")))?
            .get("token")
            .and_then(Value::as_str)
            .map(str::to_owned)
    } else {
        serde_urlencoded::from_bytes::<Vec<(String, String)>>(&body)
            .map_err(|e| ApiError::bad_request("token", format!("body is not a form: {e}")))?
            .into_iter()
            .find(|(k, _)| k == "token")
            .map(|(_, v)| v)
    };
    let token = SecretString::from(token.ok_or_else(|| ApiError::bad_request("token", "missing `token`"))?);
    for plugin in st.leases.catalog.connections.values() {
        if let Some(i) = plugin.introspect(&token).await.map_err(|e| ApiError::internal("introspection", e))? {
            return Ok(Json(serde_json::to_value(&i).map_err(|e| ApiError::internal("introspection", e))?));
        }
    }
    Ok(Json(json!({ "active": false })))
}

#[utoipa::path(
    get, path = "/v1/health", tag = "public", operation_id = "health",
    responses(
        (status = 200, description = "Live and ready.", body = super::openapi::wire::Health),
        (status = 503, description = "Live, not ready: the store is unreachable.", body = super::openapi::wire::Health),
    ),
)]
pub async fn health(State(st): State<AppState>) -> Response {
    let store_ok = st.store.ping().await;
    let policies = st.leases.policy.current();
    let body = json!({
        "live": true,
        "ready": store_ok.is_ok(),
        "store": match &store_ok { Ok(()) => "ok".to_string(), Err(e) => e.to_string() },
        "store_backend": st.store.backend(),
        "replica_id": st.store.replica_id(),
        "policies": { "version": policies.version, "count": policies.len() },
        "version": env!("CARGO_PKG_VERSION"),
    });
    let status = if store_ok.is_ok() { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(body)).into_response()
}

/// Prometheus metrics; the store-backed gauges (leases by state, expiring,
/// quota use) are read at scrape time from the store's counts
/// (O(roles x states), not O(leases)), so they are right on every replica
/// and after restarts.
#[utoipa::path(
    get, path = "/metrics", tag = "public", operation_id = "metrics",
    responses((status = 200, description = "Prometheus text exposition.", content_type = "text/plain", body = String)),
)]
pub async fn metrics(State(st): State<AppState>) -> Response {
    st.leases.refresh_gauges().await;
    let body = crate::telemetry::metrics().render();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response()
}
