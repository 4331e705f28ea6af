//! The OpenAPI 3.1 document of the HTTP API (`GET /v1/openapi.json`),
//! generated once from the handlers' `#[utoipa::path]` annotations and the
//! DTO types, then completed here with what annotations cannot say well:
//! the security schemes, the one error shape and the error statuses each
//! route can answer ([`ERRORS`]).
//!
//! Shapes that handlers build with `json!` are described by the doc-only
//! structs in [`wire`]; Schemathesis (tests/it/openapi.rs) checks every
//! response against them, so they cannot drift unnoticed.
//!
//! Why one file (about 800 lines): the route list, the per-route error
//! statuses and the doc-only wire structs must agree with each other; the
//! tests compare them with the router, and keeping them side by side is what
//! makes a missing route visible in review.
//!
//! Must not import: sqlx, cedar_policy.

use std::sync::LazyLock;

use axum::body::Bytes;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};
use utoipa::OpenApi;

use super::{admin, admin_tokens, connections, customer_tokens, leases, people, public};

/// Security scheme names, as operations list them.
pub const WORKLOAD_JWT: &str = "workload_jwt";
pub const ADMIN_TOKEN: &str = "admin_token";
pub const CLIENT_CERT: &str = "client_cert";
pub const PERSON_SESSION: &str = "person_session";
pub const PERSON_COOKIE: &str = "person_cookie";

#[derive(OpenApi)]
#[openapi(
    info(
        title = "lessor",
        description = "Dynamic secrets broker: a workload presents its JWT, Cedar policies decide, \
                       a plugin issues a short-lived credential under a lease that lessor revokes at expiry.",
        license(name = "Apache-2.0"),
    ),
    paths(
        leases::issue,
        leases::show,
        leases::renew,
        leases::revoke,
        leases::roles,
        admin::list,
        admin::revoke_matching,
        admin::job,
        admin::replicas,
        admin::status,
        admin::reconcile,
        admin::explain,
        admin_tokens::create,
        admin_tokens::list,
        admin_tokens::revoke,
        connections::list,
        connections::show,
        connections::set_secret,
        connections::verify,
        connections::approve,
        connections::activate,
        connections::rollback,
        connections::rotate,
        customer_tokens::preview,
        customer_tokens::create,
        customer_tokens::list,
        customer_tokens::show,
        customer_tokens::rotate,
        customer_tokens::revoke,
        customer_tokens::introspect,
        public::connection_document,
        public::role_document,
        public::pki_document,
        public::jwks,
        public::introspect,
        public::health,
        public::metrics,
        people::login,
        people::callback,
        people::me,
        people::logout,
        people::device,
        people::device_token,
        serve,
    ),
    components(schemas(wire::ErrorBody)),
    tags(
        (name = "leases", description = "Workload credentials: issue, show, renew, revoke."),
        (name = "admin", description = "Operators: list and bulk-revoke leases, jobs, replicas, status, reconcile, policy explain."),
        (name = "connections", description = "Root credentials of vendor connections: set, verify, approve, activate, roll back, rotate."),
        (name = "people", description = "Signed-in people: who am I, sign out."),
        (name = "customer-tokens", description = "Customer API tokens: people of an account create, list, rotate and revoke them; resource servers introspect them (RFC 7662)."),
        (name = "public", description = "Unauthenticated: PKI CA chains and CRLs, the token JWKS, introspection, health, metrics, this document."),
    ),
)]
struct ApiDoc;

/// Error statuses each operation can answer besides its successes, all with
/// the [`wire::ErrorBody`] shape. 400: invalid request or JSON; 401: no or
/// bad credential; 403: policy or role refusal; 404: unknown lease, job,
/// role or connection; 409: state conflict; 413: body over the limit; 429:
/// quota; 500: internal (detail in the log); 502: vendor refused; 503:
/// store, audit, issuer keys or vendor unavailable.
pub const ERRORS: &[(&str, &str, &[u16])] = &[
    ("post", "/v1/leases", &[400, 401, 403, 404, 409, 413, 429, 500, 502, 503]),
    ("get", "/v1/leases/{id}", &[400, 401, 403, 404, 500, 503]),
    ("delete", "/v1/leases/{id}", &[400, 401, 403, 404, 409, 500, 502, 503]),
    ("post", "/v1/leases/{id}/renew", &[400, 401, 403, 404, 409, 413, 500, 502, 503]),
    ("get", "/v1/roles", &[400, 401, 403, 500, 503]),
    ("get", "/v1/admin/leases", &[400, 401, 403, 500, 503]),
    ("post", "/v1/admin/revoke", &[400, 401, 403, 413, 500, 503]),
    ("get", "/v1/admin/jobs/{id}", &[400, 401, 403, 404, 500, 503]),
    ("get", "/v1/admin/replicas", &[400, 401, 403, 500, 503]),
    ("get", "/v1/admin/status", &[400, 401, 403, 500, 503]),
    ("post", "/v1/admin/reconcile", &[400, 401, 403, 409, 500, 503]),
    ("post", "/v1/policy/explain", &[400, 401, 403, 413, 500, 503]),
    ("post", "/v1/admin/tokens", &[400, 401, 403, 409, 413, 500, 503]),
    ("get", "/v1/admin/tokens", &[400, 401, 403, 500, 503]),
    ("delete", "/v1/admin/tokens/{name}", &[400, 401, 403, 404, 500, 503]),
    ("get", "/v1/admin/connections", &[400, 401, 403, 404, 500, 503]),
    ("get", "/v1/admin/connections/{name}", &[400, 401, 403, 404, 500, 503]),
    ("put", "/v1/admin/connections/{name}/secret", &[400, 401, 403, 404, 409, 413, 500, 502, 503]),
    ("post", "/v1/admin/connections/{name}/verify", &[400, 401, 403, 404, 409, 413, 500, 502, 503]),
    ("post", "/v1/admin/connections/{name}/approve", &[400, 401, 403, 404, 409, 413, 500, 502, 503]),
    ("post", "/v1/admin/connections/{name}/activate", &[400, 401, 403, 404, 409, 413, 500, 502, 503]),
    ("post", "/v1/admin/connections/{name}/rollback", &[400, 401, 403, 404, 409, 500, 502, 503]),
    ("post", "/v1/admin/connections/{name}/rotate", &[400, 401, 403, 404, 409, 500, 502, 503]),
    ("post", "/v1/accounts/{account}/tokens/preview", &[400, 401, 403, 404, 409, 413, 500, 503]),
    ("post", "/v1/accounts/{account}/tokens", &[400, 401, 403, 404, 409, 413, 500, 503]),
    ("get", "/v1/accounts/{account}/tokens", &[400, 401, 403, 404, 500, 503]),
    ("get", "/v1/accounts/{account}/tokens/{id}", &[400, 401, 403, 404, 500, 503]),
    ("post", "/v1/accounts/{account}/tokens/{id}/rotate", &[400, 401, 403, 404, 409, 413, 500, 503]),
    ("delete", "/v1/accounts/{account}/tokens/{id}", &[400, 401, 403, 404, 409, 500, 503]),
    ("post", "/v1/introspect", &[400, 401, 404, 413, 500, 503]),
    ("get", "/v1/plugins/{connection}/{document}", &[404, 500, 503]),
    ("get", "/v1/plugins/{connection}/{role}/{document}", &[404, 500, 503]),
    ("get", "/v1/pki/{role}/{document}", &[404, 500, 503]),
    ("get", "/.well-known/jwks.json", &[500, 503]),
    ("post", "/v1/token/introspect", &[400, 413, 500, 503]),
    ("get", "/v1/health", &[503]),
    ("get", "/metrics", &[503]),
    ("get", "/v1/openapi.json", &[503]),
    ("get", "/v1/people/login", &[400, 404, 500, 502, 503]),
    ("get", "/v1/people/callback", &[400, 401, 404, 500, 502, 503]),
    ("get", "/v1/people/me", &[400, 401, 403, 404, 500, 503]),
    ("post", "/v1/people/logout", &[400, 401, 403, 404, 413, 500, 503]),
    ("post", "/v1/people/device", &[400, 404, 413, 500, 502, 503]),
    ("post", "/v1/people/device/token", &[400, 401, 404, 413, 428, 500, 502, 503]),
];

fn reason(status: u16) -> &'static str {
    match status {
        400 => "Invalid request: the error names the field.",
        401 => "No usable credential (missing, malformed, expired, unknown admin token).",
        403 => "Refused by policy, or the wrong kind of credential for this endpoint.",
        404 => "No such lease, job, role, document or connection.",
        409 => "The lease or version is not in a state that allows this.",
        413 => "The body is over `limits.max_body_bytes`.",
        429 => "A quota is exhausted; `Retry-After` says when to try again.",
        500 => "Internal error; the detail is in the lessor log.",
        428 => "The device sign-in is not approved yet (`authorization_pending`) or is polled too often (`slow_down`); poll again after `Retry-After`.",
        502 => "The vendor (or the people sign-in provider) refused the request or could not be reached.",
        503 => "The store, audit log, issuer keys or vendor is unavailable, or the endpoint is at its concurrency limit; try again.",
        _ => "Error.",
    }
}

/// The document as JSON: utoipa's output plus security schemes and errors.
pub fn document() -> Value {
    let mut doc = serde_json::to_value(ApiDoc::openapi()).unwrap_or_else(|_| json!({}));
    doc["openapi"] = json!("3.1.0");
    doc["info"]["version"] = json!(env!("CARGO_PKG_VERSION"));
    doc["components"]["securitySchemes"] = json!({
        WORKLOAD_JWT: {
            "type": "http", "scheme": "bearer", "bearerFormat": "JWT",
            "description": "A workload's JWT from a configured issuer (`[issuers.*]`): signature, issuer, audience, expiry and age are checked; Cedar policies then decide.",
        },
        ADMIN_TOKEN: {
            "type": "http", "scheme": "bearer",
            "description": "An admin token (`lsr_admin_...`, written to `<data_dir>/admin.token` on first start).",
        },
        PERSON_SESSION: {
            "type": "http", "scheme": "bearer",
            "description": "A person session token (`lsr_person_...`) from `lessor login` (the device flow).",
        },
        PERSON_COOKIE: {
            "type": "apiKey", "in": "cookie", "name": "lessor_session",
            "description": "The browser session cookie set by `/v1/people/callback`; state-changing requests also need the `X-Lessor-CSRF` header (the `csrf_token` of `/v1/people/me`).",
        },
        "resource_server": {
            "type": "http", "scheme": "basic",
            "description": "A resource server's client id and secret (`[customer_tokens.resource_servers.<id>]`).",
        },
        CLIENT_CERT: {
            "type": "mutualTLS",
            "description": "A client certificate chaining to `tls.client_ca_file`: an admin on the TLS listener.",
        },
    });
    doc["components"]["responses"]["Error"] = json!({
        "description": "An error; `code` is stable, `message` is for humans, `field` names the offending request field.",
        "content": { "application/json": { "schema": { "$ref": "#/components/schemas/ErrorBody" } } },
    });
    // Media types the annotations cannot list side by side.
    let form = doc["paths"]["/v1/token/introspect"]["post"]["requestBody"]["content"]["application/x-www-form-urlencoded"].clone();
    doc["paths"]["/v1/token/introspect"]["post"]["requestBody"]["content"]["application/json"] = form;
    doc["paths"]["/v1/openapi.json"]["get"]["responses"]["200"]["content"] =
        json!({ "application/json": { "schema": { "type": "object" } } });
    doc["paths"]["/v1/pki/{role}/{document}"]["get"]["responses"]["200"]["content"] = json!({
        "application/pem-certificate-chain": { "schema": { "type": "string" } },
        "application/pkix-crl": { "schema": { "type": "string", "contentEncoding": "binary" } },
    });
    // Links: what a client (and Schemathesis' stateful phase) does next.
    let lease = |op: &str| json!({ "operationId": op, "parameters": { "id": "$response.body#/lease_id" } });
    doc["paths"]["/v1/leases"]["post"]["responses"]["201"]["links"] =
        json!({ "ShowLease": lease("show_lease"), "RenewLease": lease("renew_lease"), "RevokeLease": lease("revoke_lease") });
    doc["paths"]["/v1/admin/revoke"]["post"]["responses"]["202"]["links"] =
        json!({ "ShowJob": { "operationId": "show_job", "parameters": { "id": "$response.body#/job_id" } } });
    for (method, path, statuses) in ERRORS {
        let Some(op) = doc["paths"].get_mut(*path).and_then(|p| p.get_mut(*method)) else {
            continue;
        };
        for s in statuses.iter() {
            op["responses"][s.to_string()] = json!({
                "description": reason(*s),
                "content": { "application/json": { "schema": { "$ref": "#/components/schemas/ErrorBody" } } },
            });
        }
    }
    doc
}

static DOCUMENT: LazyLock<Bytes> = LazyLock::new(|| Bytes::from(serde_json::to_vec(&document()).unwrap_or_default()));

/// `GET /v1/openapi.json`: this document, built once.
#[utoipa::path(
    get, path = "/v1/openapi.json", tag = "public", operation_id = "openapi",
    responses((status = 200, description = "This OpenAPI 3.1 document.")),
)]
pub async fn serve() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], DOCUMENT.clone()).into_response()
}

/// Wire shapes of the bodies handlers build with `json!`, for the document
/// only (never constructed).
#[allow(dead_code)]
pub mod wire {
    use std::collections::BTreeMap;

    use serde_json::Value;
    use utoipa::ToSchema;

    /// `GET /v1/people/me`.
    #[derive(ToSchema)]
    pub struct Me {
        pub person: PersonInfo,
        /// The session's public id (`ps_...`).
        pub session: String,
        /// `browser` or `device`.
        pub via: String,
        /// Send as `X-Lessor-CSRF` on state-changing requests made with the cookie.
        pub csrf_token: String,
        pub expires_at: String,
        pub idle_expires_at: String,
    }

    #[derive(ToSchema)]
    pub struct PersonInfo {
        pub provider: String,
        pub subject: String,
        pub email: String,
        pub name: String,
        pub groups: Vec<String>,
    }

    /// `POST /v1/people/logout`.
    #[derive(ToSchema)]
    pub struct LoggedOut {
        /// How many sessions ended.
        pub ended: i64,
        pub everywhere: bool,
    }

    /// `POST /v1/people/device`.
    #[derive(ToSchema)]
    pub struct DeviceStart {
        pub device_code: String,
        pub user_code: String,
        pub verification_uri: String,
        pub verification_uri_complete: Option<String>,
        pub interval: i64,
        pub expires_in: i64,
    }

    /// `POST /v1/people/device/token` once approved.
    #[derive(ToSchema)]
    pub struct DeviceToken {
        pub session_token: String,
        pub person: PersonInfo,
        pub expires_at: String,
    }

    /// Every error: `{"error": {...}}`.
    #[derive(ToSchema)]
    pub struct ErrorBody {
        pub error: ErrorDetail,
    }

    #[derive(ToSchema)]
    pub struct ErrorDetail {
        /// Stable machine-readable code, e.g. `invalid_request`, `policy_denied`.
        pub code: String,
        pub message: String,
        /// The request field at fault, when there is one.
        pub field: Option<String>,
        /// On `policy_denied`: the decision with its explanation.
        #[schema(value_type = Option<Object>)]
        pub decision: Option<Value>,
        /// On `quota_exceeded`: which quota (`owner`, `role`, `total`, `rate`).
        pub quota: Option<String>,
    }

    /// An admin token's record (never the token itself).
    #[derive(ToSchema)]
    pub struct AdminToken {
        pub name: String,
        /// `active`, `expired` or `revoked`.
        pub state: String,
        pub created_by: String,
        pub created_at: String,
        pub expires_at: String,
        pub last_used_at: Option<String>,
        pub revoked_at: Option<String>,
    }

    #[derive(ToSchema)]
    pub struct AdminTokens {
        pub tokens: Vec<AdminToken>,
    }

    /// `201` of `POST /v1/admin/tokens`: the record and the token, once.
    #[derive(ToSchema)]
    pub struct CreatedAdminToken {
        pub name: String,
        pub state: String,
        pub created_by: String,
        pub created_at: String,
        pub expires_at: String,
        pub last_used_at: Option<String>,
        pub revoked_at: Option<String>,
        /// `lsr_admin_...`: shown only in this answer.
        pub token: String,
    }

    #[derive(ToSchema)]
    pub struct RevokedAdminToken {
        pub name: String,
        pub state: String,
    }

    /// `201` of `POST /v1/leases`: the credential, once.
    #[derive(ToSchema)]
    pub struct Issued {
        pub lease_id: String,
        pub role: String,
        pub ttl_seconds: i64,
        pub issued_at: String,
        pub expires_at: String,
        pub max_expires_at: String,
        pub renewable: bool,
        pub scopes: Vec<String>,
        /// The plugin's credential fields (public and secret); returned only here.
        #[schema(value_type = Object)]
        pub credential: Value,
        pub policies: Vec<String>,
    }

    #[derive(ToSchema)]
    pub struct ScopeInfo {
        pub name: String,
        pub allows: String,
        pub denies: String,
    }

    /// What revoking means at a role's vendor.
    #[derive(ToSchema)]
    pub struct RevocationView {
        /// `immediate` (stops at the vendor at once), `published` (a CRL or
        /// introspection: relying parties that check see it) or `at_expiry`
        /// (cannot be revoked).
        pub mode: String,
        /// One sentence for people.
        pub description: String,
    }

    #[derive(ToSchema)]
    pub struct RoleView {
        pub role: String,
        pub plugin: String,
        pub environment: String,
        pub description: String,
        pub max_ttl_seconds: u64,
        pub default_ttl_seconds: u64,
        pub renewable: bool,
        pub revocation: RevocationView,
        pub scopes: Vec<ScopeInfo>,
        pub default_scopes: Vec<String>,
    }

    #[derive(ToSchema)]
    pub struct Roles {
        pub roles: Vec<RoleView>,
    }

    #[derive(ToSchema)]
    pub struct Leases {
        pub leases: Vec<crate::http::leases::LeaseDto>,
    }

    #[derive(ToSchema)]
    pub struct JobStarted {
        pub job_id: String,
        pub scheduled: i64,
        /// Where to follow the job.
        pub status: String,
    }

    #[derive(ToSchema)]
    pub struct Job {
        pub job_id: String,
        pub kind: String,
        #[schema(value_type = Object)]
        pub filter: Value,
        pub created_by: String,
        pub created_at: String,
        pub total: i64,
        pub done: i64,
        pub pending: i64,
        pub failing: i64,
        /// `done` or `running`.
        pub state: String,
    }

    #[derive(ToSchema)]
    pub struct ReplicaView {
        pub replica_id: String,
        pub host: String,
        pub pid: i64,
        pub version: String,
        pub policy_version: String,
        pub started_at: String,
        pub seen_at: String,
        /// The replica that answered.
        pub this: bool,
    }

    #[derive(ToSchema)]
    pub struct Replicas {
        pub replicas: Vec<ReplicaView>,
        pub policy_versions: Vec<String>,
        pub policy_versions_agree: bool,
    }

    #[derive(ToSchema)]
    pub struct LeaseCount {
        pub role: String,
        pub plugin: String,
        pub state: String,
        pub count: i64,
    }

    #[derive(ToSchema)]
    pub struct Overdue {
        pub lease_id: String,
        pub role: String,
        pub state: String,
        pub expires_at: String,
        pub overdue_seconds: i64,
        pub attempts: i64,
        pub last_error: Option<String>,
    }

    #[derive(ToSchema)]
    pub struct Failing {
        pub lease_id: String,
        pub role: String,
        pub attempts: i64,
        pub last_error: Option<String>,
        pub next_attempt_at: Option<String>,
    }

    #[derive(ToSchema)]
    pub struct QuotaUse {
        pub quota: String,
        pub used: i64,
        pub limit: i64,
    }

    /// What `lessor status` prints.
    #[derive(ToSchema)]
    pub struct Status {
        pub time: String,
        pub connection_warnings: Vec<String>,
        pub leases: Vec<LeaseCount>,
        pub oldest_overdue: Option<Overdue>,
        pub failing: Vec<Failing>,
        pub quotas: Vec<QuotaUse>,
        pub replicas: i64,
        pub policy_versions_agree: bool,
        pub audit_write_failures: u64,
        /// What revoking means at each connection's vendor.
        pub revocation: Vec<ConnectionRevocation>,
    }

    #[derive(ToSchema)]
    pub struct ConnectionRevocation {
        pub connection: String,
        pub plugin: String,
        /// `immediate`, `published` or `at_expiry`.
        pub mode: String,
        pub description: String,
    }

    /// `POST /v1/admin/reconcile`: one reconcile pass.
    #[derive(ToSchema)]
    pub struct ReconcileReport {
        pub started_at: String,
        pub finished_at: String,
        /// `reconcile.grace`: how long a stray waits before it is revoked.
        pub grace_seconds: u64,
        /// No stray left unrevoked, no lease missing its object, no
        /// connection that could not be checked.
        pub clean: bool,
        pub connections: Vec<ReconcileConnection>,
    }

    #[derive(ToSchema)]
    pub struct ReconcileConnection {
        pub connection: String,
        pub plugin: String,
        /// `checked`, `unsupported` (no objects at a vendor: pki, token) or `error`.
        #[schema(example = "checked")]
        pub status: String,
        pub error: Option<String>,
        /// Vendor objects listed.
        pub objects: u64,
        pub strays: Vec<ReconcileStray>,
        /// Active leases whose vendor object is missing (reported, not revoked)...
        pub missing_count: u64,
        /// ...and the first 100 of their ids.
        pub missing: Vec<String>,
        /// A per-pass bound was hit; the next pass goes on.
        pub truncated: bool,
    }

    #[derive(ToSchema)]
    pub struct ReconcileStray {
        /// The vendor object's name (e.g. a PostgreSQL role).
        pub object: String,
        pub lease_id: Option<String>,
        /// `no_lease`, `lease_ended` or `unmapped`.
        pub reason: String,
        /// `revoked`, `failed`, `waiting` (grace), `deferred` (budget) or `reported`.
        pub outcome: String,
        /// When a waiting stray becomes due.
        pub revoke_after: Option<String>,
        pub error: Option<String>,
    }

    /// `POST /v1/policy/explain`: one policy test case (mirrors
    /// `policy::casefile::Case`, which stays free of wire concerns).
    #[derive(ToSchema, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct ExplainCase {
        #[serde(default)]
        pub name: String,
        /// `connection/role`; absent for `admin`.
        #[serde(default)]
        #[schema(example = "token/orders")]
        pub role: Option<String>,
        /// `issue` (default), `renew`, `revoke`, `read`, `admin`, `connection_*`.
        #[serde(default)]
        #[schema(example = "issue")]
        pub action: String,
        /// Connection name, for `connection_*` actions.
        #[serde(default)]
        pub connection: Option<String>,
        /// A workload: `issuer`, `subject` and mapped claims.
        #[serde(default)]
        pub principal: Option<BTreeMap<String, String>>,
        /// A person instead of a workload: `provider`, `issuer`, `subject`,
        /// `email`, `name`, `groups` (a list).
        #[serde(default)]
        #[schema(value_type = Option<Object>)]
        pub person: Option<serde_json::Value>,
        /// e.g. `15m`; default the role's `max_ttl`.
        #[serde(default)]
        pub ttl: Option<String>,
        #[serde(default)]
        pub scopes: Vec<String>,
        /// An IPv4 or IPv6 address.
        #[serde(default)]
        #[schema(value_type = Option<String>)]
        pub source_ip: Option<std::net::IpAddr>,
        /// Unix seconds; default now.
        #[serde(default)]
        pub now: Option<i64>,
        /// `allow` or `deny` (used by `lessor policy test`; ignored here).
        #[serde(default)]
        pub expect: Option<String>,
        #[serde(default)]
        pub policies: Option<Vec<String>>,
    }

    #[derive(ToSchema)]
    pub struct DecidingPolicy {
        pub id: String,
        pub effect: String,
        pub reason: Option<String>,
        /// `file:line`.
        pub location: String,
    }

    /// A policy decision with its explanation.
    #[derive(ToSchema)]
    pub struct Decision {
        pub allowed: bool,
        pub policies: Vec<DecidingPolicy>,
        pub candidates: Vec<DecidingPolicy>,
        pub errors: Vec<String>,
        pub message: String,
        pub considered: BTreeMap<String, String>,
    }

    /// A root credential version: never the secret.
    #[derive(ToSchema)]
    pub struct SecretVersionView {
        pub version: i64,
        pub state: String,
        /// Always `set`.
        pub secret: String,
        pub fingerprint: String,
        /// Who set it: `provider#subject <email>` (a person), `issuer#subject`
        /// (a workload) or the admin credential's name.
        pub set_by: String,
        pub set_at: String,
        pub reason: String,
        pub kek_id: String,
        pub verified: Option<bool>,
        #[schema(value_type = Option<Object>)]
        pub verification: Option<Value>,
        pub verified_at: Option<String>,
        /// `provider#subject <email>` of the person who approved, or the
        /// admin credential's name with ` [break-glass]`.
        pub approved_by: Option<String>,
        /// Whether the approval was made with an admin credential.
        pub approved_break_glass: bool,
        pub approved_at: Option<String>,
        pub activated_by: Option<String>,
        pub activated_at: Option<String>,
        pub retiring_until: Option<String>,
    }

    #[derive(ToSchema)]
    pub struct ConnectionView {
        pub name: String,
        pub plugin: String,
        pub environment: String,
        pub owner: Option<String>,
        pub managed: bool,
        pub can_rotate: bool,
        pub describes: Option<String>,
        pub review_by: Option<String>,
        pub rotate_after: Option<String>,
        pub overlap: String,
        pub roles: Vec<String>,
        pub active_version: Option<i64>,
        pub active_age_seconds: Option<i64>,
        pub last_verified: Option<String>,
        pub versions: Vec<SecretVersionView>,
        pub warnings: Vec<String>,
    }

    #[derive(ToSchema)]
    pub struct Connections {
        pub connections: Vec<ConnectionView>,
    }

    #[derive(ToSchema)]
    pub struct Verified {
        pub version: i64,
        #[schema(value_type = Object)]
        pub result: Value,
    }

    #[derive(ToSchema)]
    pub struct Jwks {
        #[schema(value_type = Vec<Object>)]
        pub keys: Vec<Value>,
    }

    /// RFC 7662 request; also accepted as `application/x-www-form-urlencoded`.
    #[derive(ToSchema)]
    pub struct IntrospectReq {
        pub token: String,
    }

    /// RFC 7662 answer: `active`, and the token's claims when active.
    #[derive(ToSchema)]
    pub struct Introspection {
        pub active: bool,
    }

    #[derive(ToSchema)]
    pub struct PolicyInfo {
        pub version: String,
        pub count: i64,
    }

    #[derive(ToSchema)]
    pub struct Health {
        pub live: bool,
        pub ready: bool,
        /// `ok`, or why the store is not.
        pub store: String,
        pub store_backend: String,
        pub replica_id: String,
        pub policies: PolicyInfo,
        pub version: String,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::{document, ERRORS};

    /// Every `.route(...)` in `router()`, read from its source: the router
    /// cannot be walked at run time, and a route added there must be
    /// documented here.
    fn routed() -> BTreeSet<(String, String)> {
        let src = include_str!("mod.rs");
        let body = src.split("pub fn router(").nth(1).and_then(|s| s.split("\n}\n").next()).unwrap_or("");
        let mut out = BTreeSet::new();
        for chunk in body.split(".route(").skip(1) {
            let Some(path) = chunk.trim_start().strip_prefix('"').and_then(|s| s.split('"').next()) else { continue };
            let handlers = chunk.split_once(',').map(|(_, h)| h).unwrap_or("");
            // `get(x).delete(y)` or `axum::routing::put(z)`: the method names.
            for m in ["get", "post", "put", "delete", "patch"] {
                let direct = handlers.trim_start().starts_with(&format!("{m}("))
                    || handlers.contains(&format!("routing::{m}("))
                    || handlers.contains(&format!(").{m}("));
                if direct {
                    out.insert((m.to_owned(), path.to_owned()));
                }
            }
        }
        out
    }

    fn documented() -> BTreeSet<(String, String)> {
        let doc = document();
        let mut out = BTreeSet::new();
        for (path, item) in doc["paths"].as_object().into_iter().flatten() {
            for m in item.as_object().into_iter().flatten().map(|(m, _)| m) {
                // `{role}/ca` and `{role}/crl` are served by one wildcard route.
                let routed_as = if path.starts_with("/v1/pki/") { "/v1/pki/{*rest}".to_owned() } else { path.clone() };
                out.insert((m.clone(), routed_as));
            }
        }
        out
    }

    #[test]
    fn every_route_is_documented_and_no_documented_route_is_stale() {
        let routed = routed();
        assert!(routed.len() >= 20, "the router scan found too few routes: {routed:?}");
        let documented = documented();
        let undocumented: Vec<_> = routed.difference(&documented).collect();
        let stale: Vec<_> = documented.difference(&routed).collect();
        assert!(undocumented.is_empty(), "routes missing from the OpenAPI document: {undocumented:?}");
        assert!(stale.is_empty(), "documented routes the router does not serve: {stale:?}");
    }

    #[test]
    fn every_operation_has_its_error_statuses_and_a_security_choice() {
        let doc = document();
        assert_eq!(doc["openapi"], "3.1.0");
        for (path, item) in doc["paths"].as_object().into_iter().flatten() {
            for (method, op) in item.as_object().into_iter().flatten() {
                assert!(
                    ERRORS.iter().any(|(m, p, _)| m == method && p == path),
                    "{method} {path} has no entry in openapi::ERRORS"
                );
                let public = op["tags"][0] == "public";
                assert_eq!(op.get("security").is_none(), public, "{method} {path}: security {:?}", op.get("security"));
            }
        }
        for (m, p, _) in ERRORS {
            assert!(doc["paths"][*p].get(*m).is_some(), "openapi::ERRORS names {m} {p}, which is not documented");
        }
        let unauth = &doc["paths"]["/v1/leases"]["post"]["responses"]["401"]["content"]["application/json"]["schema"]["$ref"];
        assert_eq!(unauth, "#/components/schemas/ErrorBody");
        assert!(doc["components"]["schemas"]["ErrorBody"].is_object());
    }
}
