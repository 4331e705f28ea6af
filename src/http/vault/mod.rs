//! The Vault-compatible API: the subset of Vault's HTTP API that the
//! `vault`/`bao` CLI, `hvac`, Vault/OpenBao Agent and `vault-action` use,
//! answered in Vault's shapes (the response envelope, `{"errors": [...]}`)
//! and with Vault's status codes, on top of the same lease engine, policy
//! and audit as the native API (metric label and audit field `api="vault"`).
//!
//! Served when `[vault_api]` is configured:
//! - `sys/health`, `sys/seal-status`, `sys/leader` (unauthenticated, load
//!   shed like every unauthenticated route), `sys/mounts`,
//!   `sys/internal/ui/mounts/<path>`;
//! - `auth/<mount>/login`, `auth/token/{lookup-self,renew-self,revoke-self}`;
//! - `sys/leases/{renew,revoke,lookup}` (lease id in the body or the path);
//! - `<mount>/creds/<role>` (database-style and every non-pki plugin),
//!   `<mount>/issue/<role>` and `<mount>/sign/<role>` (pki);
//! - everything else under `/v1` that lessor does not serve natively:
//!   Vault's "unsupported path" 404, naming what is served.
//!
//! Must not import: sqlx, cedar_policy.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use lessor_plugin::VaultShape;
use secrecy::{ExposeSecret, SecretString};
use serde_json::{json, Map, Value};

use super::{ApiError, AppState, Meta};
use crate::audit::Event;
use crate::principal::RequestMeta;
use crate::store::Session;
use crate::vault::VaultApiConfig;

mod auth;
mod secrets;
mod sys;

pub use sys::{health, leader, seal_status};

/// The Vault API's configuration, resolved against the catalog.
pub struct VaultState {
    pub cfg: VaultApiConfig,
    /// Mount path -> the mount as served.
    pub mounts: BTreeMap<String, Mount>,
    /// Largest request body read (`limits.max_body_bytes`).
    pub max_body: usize,
    /// `vault_api.logins_per_minute`, per workload.
    pub logins: crate::lease::RateLimiter,
}

/// One secret mount.
pub struct Mount {
    pub connection: String,
    /// The connection's plugin kind (`postgres`, `pki`, `token`, ...).
    pub kind: String,
    /// How its plugin says Vault clients see it ([`Registration::vault`](lessor_plugin::Registration)).
    pub shape: VaultShape,
}

impl Mount {
    /// The type Vault clients see for it (`sys/mounts`, `mount_type`).
    pub fn vault_type(&self) -> &str {
        match self.shape {
            VaultShape::Database => "database",
            VaultShape::Pki => "pki",
            VaultShape::Creds => &self.kind,
        }
    }

    /// The operations it answers: `creds`, or the pki engine's `issue` and
    /// `sign`.
    fn ops(&self) -> &'static [&'static str] {
        match self.shape {
            VaultShape::Pki => &["issue", "sign"],
            VaultShape::Database | VaultShape::Creds => &["creds"],
        }
    }
}

impl VaultState {
    /// `connections`: each connection's plugin kind and Vault shape.
    pub fn new(cfg: VaultApiConfig, connections: &BTreeMap<String, (String, VaultShape)>, max_body: usize) -> VaultState {
        let mounts = cfg
            .mounts
            .iter()
            .filter_map(|(path, m)| {
                let (kind, shape) = connections.get(&m.connection)?.clone();
                Some((path.clone(), Mount { connection: m.connection.clone(), kind, shape }))
            })
            .collect();
        let logins = crate::lease::RateLimiter::new(cfg.logins_per_minute);
        VaultState { cfg, mounts, max_body, logins }
    }

    /// What lessor's Vault API serves, for the "unsupported path" answer.
    fn served(&self) -> String {
        let mut paths = vec![
            "sys/health".to_string(),
            "sys/seal-status".into(),
            "sys/leader".into(),
            "sys/mounts".into(),
            "sys/internal/ui/mounts/<path>".into(),
            "sys/leases/{renew,revoke,lookup}".into(),
            "auth/token/{lookup-self,renew-self,revoke-self}".into(),
        ];
        for a in self.cfg.auth.keys() {
            paths.push(format!("auth/{a}/login"));
        }
        for (p, m) in &self.mounts {
            for op in m.ops() {
                paths.push(format!("{p}/{op}/<role>"));
            }
        }
        paths.join(", ")
    }
}

/// An error in Vault's shape: `{"errors": [...]}` with Vault's status.
#[derive(Debug)]
pub struct VaultError {
    status: StatusCode,
    errors: Vec<String>,
    retry_after: Option<u64>,
}

impl VaultError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> VaultError {
        VaultError { status, errors: vec![message.into()], retry_after: None }
    }

    pub fn bad_request(message: impl Into<String>) -> VaultError {
        VaultError::new(StatusCode::BAD_REQUEST, message)
    }

    /// Vault's answer to a missing, unknown, expired or revoked token.
    pub fn permission_denied() -> VaultError {
        VaultError::new(StatusCode::FORBIDDEN, "permission denied")
    }

    /// "permission denied: " and lessor's reason, as one error (the CLI
    /// runs several together on one line).
    pub fn denied_because(reason: impl Into<String>) -> VaultError {
        VaultError::new(StatusCode::FORBIDDEN, format!("permission denied: {}", reason.into()))
    }

    /// Vault's 429, with when to try again.
    pub fn too_many(message: impl Into<String>, retry_after: u64) -> VaultError {
        VaultError { status: StatusCode::TOO_MANY_REQUESTS, errors: vec![message.into()], retry_after: Some(retry_after) }
    }

    fn unsupported(what: String) -> VaultError {
        VaultError::new(StatusCode::NOT_FOUND, format!("unsupported path: {what}"))
    }

    fn method(method: &Method, path: &str) -> VaultError {
        VaultError::new(StatusCode::METHOD_NOT_ALLOWED, format!("unsupported operation: {method} on {path}"))
    }
}

impl IntoResponse for VaultError {
    fn into_response(self) -> Response {
        let mut r = (self.status, no_store(), axum::Json(json!({ "errors": self.errors }))).into_response();
        if let Some(s) = self.retry_after {
            if let Ok(v) = HeaderValue::from_str(&s.to_string()) {
                r.headers_mut().insert(header::RETRY_AFTER, v);
            }
        }
        r
    }
}

/// lessor's own errors, in Vault's shape and codes: a policy denial is
/// "permission denied" with the policy's reason; a request the engine
/// refuses (unknown role, bad TTL, lease not renewable) is a 400, as
/// Vault answers them; quotas 429; an unavailable store or vendor 503.
impl From<ApiError> for VaultError {
    fn from(e: ApiError) -> Self {
        let status = match e.status.as_u16() {
            403 => return VaultError::denied_because(e.message),
            400 | 404 | 409 | 422 => StatusCode::BAD_REQUEST,
            429 => StatusCode::TOO_MANY_REQUESTS,
            503 | 408 => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        VaultError { status, errors: vec![e.message], retry_after: e.retry_after }
    }
}

impl From<crate::lease::LeaseError> for VaultError {
    fn from(e: crate::lease::LeaseError) -> Self {
        ApiError::from(e).into()
    }
}

impl From<crate::store::StoreError> for VaultError {
    fn from(e: crate::store::StoreError) -> Self {
        ApiError::from(e).into()
    }
}

impl From<crate::vault::SessionError> for VaultError {
    fn from(e: crate::vault::SessionError) -> Self {
        match e {
            crate::vault::SessionError::Store(s) => s.into(),
            crate::vault::SessionError::Audit(a) => ApiError::from(crate::lease::LeaseError::Audit(a)).into(),
        }
    }
}

/// Vault's response envelope.
pub struct Envelope {
    pub lease_id: String,
    pub renewable: bool,
    pub lease_duration: i64,
    pub data: Value,
    pub warnings: Vec<String>,
    pub auth: Value,
    pub mount_type: String,
}

impl Envelope {
    pub fn data(data: Value) -> Envelope {
        Envelope {
            lease_id: String::new(),
            renewable: false,
            lease_duration: 0,
            data,
            warnings: vec![],
            auth: Value::Null,
            mount_type: String::new(),
        }
    }

    pub fn respond(self, meta: &RequestMeta) -> Response {
        let body = json!({
            "request_id": meta.request_id,
            "lease_id": self.lease_id,
            "renewable": self.renewable,
            "lease_duration": self.lease_duration,
            "data": self.data,
            "wrap_info": Value::Null,
            "warnings": if self.warnings.is_empty() { Value::Null } else { json!(self.warnings) },
            "auth": self.auth,
            "mount_type": self.mount_type,
        });
        (StatusCode::OK, no_store(), axum::Json(body)).into_response()
    }
}

/// Vault answers every request `Cache-Control: no-store`: responses carry
/// secrets, and no proxy may keep them.
pub fn no_store() -> [(header::HeaderName, &'static str); 1] {
    [(header::CACHE_CONTROL, "no-store")]
}

/// A request as the Vault handlers see it.
pub struct VaultRequest {
    pub method: Method,
    /// The path after `/v1/`.
    pub path: String,
    pub headers: HeaderMap,
    pub query: Option<String>,
    pub body: Map<String, Value>,
    pub meta: RequestMeta,
}

impl VaultRequest {
    /// A body field as a string (Vault clients send numbers and strings
    /// interchangeably: `bao write x ttl=60` sends `"60"`).
    pub fn str_field(&self, name: &str) -> Result<Option<String>, VaultError> {
        match self.body.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(Value::Number(n)) => Ok(Some(n.to_string())),
            Some(Value::Bool(b)) => Ok(Some(b.to_string())),
            Some(_) => Err(VaultError::bad_request(format!("field `{name}` must be a string"))),
        }
    }

    fn is_write(&self) -> bool {
        matches!(self.method, Method::POST | Method::PUT)
    }
}

/// A Vault duration: seconds as a number or a string (`"3600"`), or a
/// duration string (`"1h"`). `0`, empty and absent mean "the default".
pub fn parse_duration(field: &str, v: Option<&Value>) -> Result<Option<Duration>, VaultError> {
    let bad = |m: String| VaultError::bad_request(format!("field `{field}`: {m}"));
    let secs = match v {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Number(n)) => n.as_i64().ok_or_else(|| bad("must be a whole number of seconds".into()))?,
        Some(Value::String(s)) if s.trim().is_empty() => return Ok(None),
        Some(Value::String(s)) => match s.trim().parse::<i64>() {
            Ok(n) => n,
            Err(_) => return crate::duration::parse(s).map(|d| (!d.is_zero()).then_some(d)).map_err(bad),
        },
        Some(_) => return Err(bad("must be seconds or a duration such as 1h".into())),
    };
    if secs < 0 {
        return Err(bad("must not be negative".into()));
    }
    let d = Duration::from_secs(secs.unsigned_abs());
    if d > crate::duration::MAX {
        return Err(bad("is longer than the 100-year limit on durations".into()));
    }
    Ok((!d.is_zero()).then_some(d))
}

/// The client token: `X-Vault-Token`, else `Authorization: Bearer`.
fn client_token(headers: &HeaderMap) -> Result<Option<SecretString>, VaultError> {
    let tokens: Vec<&HeaderValue> = headers.get_all("x-vault-token").iter().collect();
    if tokens.len() > 1 || headers.get_all(header::AUTHORIZATION).iter().count() > 1 {
        return Err(VaultError::bad_request("send one X-Vault-Token (or Authorization) header"));
    }
    let raw = match tokens.first() {
        Some(v) => Some(*v),
        None => headers.get(header::AUTHORIZATION),
    };
    let Some(raw) = raw else { return Ok(None) };
    let text = raw.to_str().map_err(|_| VaultError::permission_denied())?.trim();
    let text = text.strip_prefix("Bearer ").or_else(|| text.strip_prefix("bearer ")).unwrap_or(text);
    Ok((!text.is_empty()).then(|| SecretString::from(text.to_owned())))
}

/// The caller's live session, or "permission denied" (a refusal is
/// audited, counted and braked like every refused credential).
pub async fn session(st: &AppState, req: &mut VaultRequest) -> Result<(Session, SecretString), VaultError> {
    let audit = &st.leases.audit;
    let meta = req.meta.clone();
    let refuse = |reason: &'static str| async move {
        crate::telemetry::metrics().auth_failure("vault-token", reason);
        st.brake.refused(meta.source).await;
        audit.auth_failed("vault-token", reason, meta.source, || {
            Event::new("authenticate", "failed").request(Some(&meta)).error(reason, "Vault API client token refused")
        });
        VaultError::permission_denied()
    };
    let token = match client_token(&req.headers)? {
        Some(t) => t,
        None => return Err(refuse("missing").await),
    };
    match crate::vault::authenticate(st.store.as_ref(), &token, time::OffsetDateTime::now_utc()).await? {
        Ok(s) => {
            req.meta.vault_role = Some(s.vault_role.clone());
            req.meta.credential = Some(audit.hash(token.expose_secret().as_bytes()));
            Ok((s, token))
        }
        Err(r) => Err(refuse(r.reason()).await),
    }
}

/// Reads the request into a [`VaultRequest`]: the body must be a JSON
/// object (or empty), at most `limits.max_body_bytes`.
async fn read(vs: &VaultState, mut meta: RequestMeta, req: Request) -> Result<VaultRequest, VaultError> {
    meta.api = "vault";
    let (parts, body) = req.into_parts();
    if let Some(ns) = parts.headers.get("x-vault-namespace").and_then(|v| v.to_str().ok()) {
        let ns = ns.trim().trim_matches('/');
        if !ns.is_empty() && ns != "root" {
            return Err(VaultError::bad_request("namespaces are not supported by lessor; unset VAULT_NAMESPACE"));
        }
    }
    if parts.headers.contains_key("x-vault-wrap-ttl") {
        return Err(VaultError::bad_request("response wrapping is not supported by lessor; unset VAULT_WRAP_TTL / -wrap-ttl"));
    }
    let bytes = axum::body::to_bytes(body, vs.max_body).await.map_err(|_| {
        VaultError::new(StatusCode::PAYLOAD_TOO_LARGE, format!("request body is larger than {} bytes", vs.max_body))
    })?;
    let body = if bytes.iter().all(u8::is_ascii_whitespace) {
        Map::new()
    } else {
        match serde_json::from_slice::<Value>(&bytes) {
            Ok(Value::Object(m)) => m,
            Ok(_) => return Err(VaultError::bad_request("the request body must be a JSON object")),
            Err(e) => return Err(VaultError::bad_request(format!("failed to parse JSON input: {e}"))),
        }
    };
    let path = parts.uri.path().strip_prefix("/v1/").unwrap_or("").trim_end_matches('/').to_owned();
    Ok(VaultRequest { method: parts.method, path, headers: parts.headers, query: parts.uri.query().map(str::to_owned), body, meta })
}

/// Every Vault path but the three unauthenticated `sys/` ones.
pub async fn dispatch(State(st): State<AppState>, Meta(meta): Meta, req: Request) -> Response {
    let Some(vs) = st.vault.clone() else {
        return ApiError::not_found("no such endpoint; the API lives under /v1").into_response();
    };
    let mut r = match read(&vs, meta, req).await {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    match route(&st, &vs, &mut r).await {
        Ok(resp) => resp,
        Err(e) => e.into_response(),
    }
}

/// The router's fallback: a Vault path when the Vault API is on, else
/// lessor's own 404.
pub async fn fallback(state: State<AppState>, meta: Meta, req: Request) -> Response {
    if state.vault.is_none() || !req.uri().path().starts_with("/v1/") {
        return ApiError::not_found("no such endpoint; the API lives under /v1").into_response();
    }
    dispatch(state, meta, req).await
}

async fn route(st: &AppState, vs: &VaultState, r: &mut VaultRequest) -> Result<Response, VaultError> {
    let path = r.path.clone();
    let segs: Vec<&str> = path.split('/').collect();
    let get = r.method == Method::GET;
    let write = r.is_write();
    match segs.as_slice() {
        ["sys", "mounts"] if get => sys::mounts(vs, st, r).await,
        ["sys", "internal", "ui", "mounts", rest @ ..] if get => sys::ui_mount(vs, st, r, &rest.join("/")).await,
        ["sys", "leases", op @ ("renew" | "revoke" | "lookup"), id @ ..] if write => sys::lease(st, r, op, &id.join("/")).await,
        // Vault's older paths for the same.
        ["sys", op @ ("renew" | "revoke"), id @ ..] if write => sys::lease(st, r, op, &id.join("/")).await,
        ["auth", "token", "lookup-self"] if get || write => auth::lookup_self(st, vs, r).await,
        ["auth", "token", "renew-self"] if write => auth::renew_self(st, vs, r).await,
        ["auth", "token", "revoke-self"] if write => auth::revoke_self(st, r).await,
        ["auth", mount, "login"] if write && vs.cfg.auth.contains_key(*mount) => auth::login(st, vs, r, mount).await,
        [mount, op, role] if vs.mounts.get(*mount).is_some_and(|m| m.ops().contains(op)) => {
            let Some(m) = vs.mounts.get(*mount) else { return Err(VaultError::unsupported(vs.served())) };
            match *op {
                "creds" if get || write => secrets::creds(st, r, mount, m, role).await,
                "issue" | "sign" if write => secrets::pki(st, r, mount, m, op, role).await,
                _ => Err(VaultError::method(&r.method, &path)),
            }
        }
        ["sys", ..] | ["auth", ..] if known_path(vs, &segs) => Err(VaultError::method(&r.method, &path)),
        _ => Err(VaultError::unsupported(format!(
            "lessor's Vault-compatible API serves {}; its own API is documented at /v1/openapi.json",
            vs.served()
        ))),
    }
}

/// Whether the path is one lessor serves (with another method).
fn known_path(vs: &VaultState, segs: &[&str]) -> bool {
    matches!(
        segs,
        ["sys", "mounts"]
            | ["sys", "internal", "ui", "mounts", ..]
            | ["sys", "leases", "renew" | "revoke" | "lookup", ..]
            | ["auth", "token", "lookup-self" | "renew-self" | "revoke-self"]
    ) || matches!(segs, ["auth", m, "login"] if vs.cfg.auth.contains_key(*m))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each plugin says how Vault clients see its mounts: every SQL and
    /// Redis vendor as Vault's `database` engine (`creds`), pki as `pki`
    /// (`issue`, `sign`), the rest under their own kind (`creds`).
    #[test]
    fn mounts_take_the_type_and_operations_their_plugin_registers() {
        let seen: BTreeMap<&str, (String, Vec<&str>)> = crate::plugins::registrations()
            .into_iter()
            .map(|r| {
                let m = Mount { connection: "c".into(), kind: r.kind.into(), shape: r.vault };
                (r.kind, (m.vault_type().to_owned(), m.ops().to_vec()))
            })
            .collect();
        let want = |t: &str, ops: &[&'static str]| (t.to_owned(), ops.to_vec());
        assert_eq!(seen["postgres"], want("database", &["creds"]));
        assert_eq!(seen["mysql"], want("database", &["creds"]));
        assert_eq!(seen["redis"], want("database", &["creds"]));
        assert_eq!(seen["pki"], want("pki", &["issue", "sign"]));
        assert_eq!(seen["token"], want("token", &["creds"]));
        assert_eq!(seen["external"], want("external", &["creds"]));
    }

    #[test]
    fn durations_are_seconds_or_text_and_bounded() {
        assert_eq!(parse_duration("increment", None).unwrap(), None);
        assert_eq!(parse_duration("increment", Some(&json!(null))).unwrap(), None);
        assert_eq!(parse_duration("increment", Some(&json!(0))).unwrap(), None);
        assert_eq!(parse_duration("increment", Some(&json!(90))).unwrap(), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("increment", Some(&json!("90"))).unwrap(), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("increment", Some(&json!("1h"))).unwrap(), Some(Duration::from_secs(3600)));
        for bad in [json!(-1), json!("-5"), json!("soon"), json!([1]), json!(1.5), json!(i64::MAX)] {
            let e = parse_duration("increment", Some(&bad)).unwrap_err();
            assert_eq!(e.status, StatusCode::BAD_REQUEST, "{bad}");
            assert!(e.errors[0].contains("increment"), "{:?}", e.errors);
        }
    }

    #[test]
    fn lessor_errors_take_vault_codes() {
        let denied: VaultError = ApiError::forbidden("policy `ci-main-only` requires ref main").into();
        assert_eq!(denied.status, StatusCode::FORBIDDEN);
        assert_eq!(denied.errors, vec!["permission denied: policy `ci-main-only` requires ref main".to_string()]);
        let conflict: VaultError = ApiError::new(StatusCode::CONFLICT, "conflict", "not renewable").into();
        assert_eq!(conflict.status, StatusCode::BAD_REQUEST);
        let mut quota = ApiError::new(StatusCode::TOO_MANY_REQUESTS, "quota_exceeded", "rate");
        quota.retry_after = Some(3);
        let q: VaultError = quota.into();
        assert_eq!((q.status, q.retry_after), (StatusCode::TOO_MANY_REQUESTS, Some(3)));
    }
}
