//! The built-in OpenID Connect provider `lessor dev` runs so a newcomer can
//! sign in as a person in one click: four fixed dev users ([`DEV_USERS`]),
//! one confidential client, an ES256 key generated at start (never
//! written), discovery, JWKS, the authorization code flow (PKCE S256
//! required, exact redirect URI, state and nonce required), the device
//! authorization grant (RFC 8628), userinfo and end_session. It listens on
//! loopback only: [`start`] refuses any other address.
//!
//! Every table it keeps (codes, device codes) is capped and expires; each
//! request costs O(1). Codes, tokens and the client secret are never
//! logged. Access tokens are ES256 JWTs for `<issuer>/userinfo`, so nothing
//! is kept per token.
//!
//! Must not import: http, store, lease, policy, connections, audit, people, sqlx.

mod authorize;
mod device;
mod html;
mod table;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::rejection::FormRejection;
use axum::extract::{DefaultBodyLimit, Form, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rand::RngCore;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use device::Device;
use table::Table;

/// A dev user: who a click on their button signs in as.
#[derive(Debug, PartialEq, Eq)]
pub struct DevUser {
    /// The button's label and the form value.
    pub login: &'static str,
    /// `sub`: stable and opaque, never the email.
    pub subject: &'static str,
    pub email: &'static str,
    pub name: &'static str,
    pub groups: &'static [&'static str],
}

/// The dev users (issue 13 contract): alice in platform, bob in finance,
/// carol and dave in the customer accounts acme and globex.
pub const DEV_USERS: &[DevUser] = &[
    DevUser { login: "alice", subject: "9c1f4e2a-0001", email: "alice@example.com", name: "Alice Platform", groups: &["platform"] },
    DevUser { login: "bob", subject: "9c1f4e2a-0002", email: "bob@example.com", name: "Bob Finance", groups: &["finance"] },
    DevUser { login: "carol", subject: "9c1f4e2a-0003", email: "carol@example.com", name: "Carol Acme", groups: &["account:acme"] },
    DevUser { login: "dave", subject: "9c1f4e2a-0004", email: "dave@example.com", name: "Dave Globex", groups: &["account:globex"] },
];

/// `grant_type` of the device flow's token requests.
pub const DEVICE_GRANT: &str = "urn:ietf:params:oauth:grant-type:device_code";
/// Scopes the provider knows (anything else is `invalid_scope`).
pub const SCOPES: &[&str] = &["openid", "email", "profile", "groups"];

const MAX_STATE: usize = 512;
const MAX_SCOPE: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum DevIdpError {
    #[error("the dev OpenID provider listens on loopback only; {0} is not a loopback address")]
    NotLoopback(SocketAddr),
    #[error("dev OpenID provider settings: {0}")]
    Settings(String),
    #[error("dev OpenID provider cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("dev OpenID provider key: {0}")]
    Key(String),
}

/// The provider's clock: wall time plus an offset tests move forward
/// (code and device expiry, polling intervals, token `exp`).
#[derive(Debug, Clone, Default)]
pub struct DevClock {
    offset_ms: Arc<AtomicU64>,
}

impl DevClock {
    pub fn now_ms(&self) -> u64 {
        let wall = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0);
        u64::try_from(wall).unwrap_or(u64::MAX).saturating_add(self.offset_ms.load(Ordering::Relaxed))
    }

    /// Moves the clock forward by `d`.
    pub fn advance(&self, d: Duration) {
        let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let _ = self.offset_ms.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |o| Some(o.saturating_add(ms)));
    }
}

/// The one client and the provider's limits.
pub struct DevIdpSettings {
    pub client_id: String,
    pub client_secret: SecretString,
    /// Redirect URIs, compared exactly.
    pub redirect_uris: Vec<String>,
    /// Where `end_session` may send the browser afterwards.
    pub post_logout_redirect_uris: Vec<String>,
    /// Life of an authorization code (single use). Default 60 s.
    pub code_ttl: Duration,
    /// Life of a device code. Default 10 min.
    pub device_ttl: Duration,
    /// Polling interval the device flow asks for. Default 5 s.
    pub device_interval: Duration,
    /// Life of ID and access tokens. Default 10 min.
    pub token_ttl: Duration,
    /// Cap on codes issued within one code life, and on device codes
    /// within two device lives (expired ones answer `expired_token`).
    pub max_pending: usize,
    pub clock: DevClock,
}

impl std::fmt::Debug for DevIdpSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevIdpSettings")
            .field("client_id", &self.client_id)
            .field("redirect_uris", &self.redirect_uris)
            .field("max_pending", &self.max_pending)
            .finish_non_exhaustive()
    }
}

impl DevIdpSettings {
    pub fn new(client_id: impl Into<String>, client_secret: SecretString, redirect_uris: Vec<String>) -> Self {
        DevIdpSettings {
            client_id: client_id.into(),
            client_secret,
            redirect_uris,
            post_logout_redirect_uris: Vec::new(),
            code_ttl: Duration::from_secs(60),
            device_ttl: Duration::from_secs(600),
            device_interval: Duration::from_secs(5),
            token_ttl: Duration::from_secs(600),
            max_pending: 1000,
            clock: DevClock::default(),
        }
    }

    fn check(&self) -> Result<(), DevIdpError> {
        let bad = |m: String| Err(DevIdpError::Settings(m));
        if self.client_id.is_empty() || self.client_id.len() > 128 {
            return bad("client_id must be 1 to 128 characters".into());
        }
        if self.client_secret.expose_secret().len() < 16 {
            return bad("client_secret must be at least 16 characters".into());
        }
        for (what, d, min, max) in [
            ("code_ttl", self.code_ttl, 1, 3600),
            ("device_ttl", self.device_ttl, 1, 3600),
            ("device_interval", self.device_interval, 1, 60),
            ("token_ttl", self.token_ttl, 1, 86_400),
        ] {
            if d < Duration::from_secs(min) || d > Duration::from_secs(max) {
                return bad(format!("{what} must be between {min}s and {max}s"));
            }
        }
        if !(1..=100_000).contains(&self.max_pending) {
            return bad("max_pending must be between 1 and 100000".into());
        }
        for u in self.redirect_uris.iter().chain(&self.post_logout_redirect_uris) {
            if reqwest::Url::parse(u).is_err() {
                return bad(format!("`{u}` is not an absolute URL"));
            }
        }
        Ok(())
    }
}

/// Table sizes, for tests and the caps' proof.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pending {
    /// Slots the authorization codes hold towards the cap.
    pub codes: usize,
    /// Slots the device codes hold towards the cap.
    pub devices: usize,
}

/// A running dev provider; [`RunningDevIdp::shutdown`] stops it.
pub struct RunningDevIdp {
    pub addr: SocketAddr,
    /// `http://<addr>`: the `iss` of its tokens and the base of discovery.
    pub issuer: String,
    idp: Arc<Idp>,
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl RunningDevIdp {
    pub fn clock(&self) -> &DevClock {
        &self.idp.clock
    }

    pub fn pending(&self) -> Pending {
        let t = self.idp.tables();
        Pending { codes: t.codes.len().1, devices: t.devices.len().1 }
    }

    /// Stops accepting, lets in-flight requests finish, waits for the task.
    pub async fn shutdown(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
    }
}

/// Binds `addr` (loopback only; port 0 picks a free one) and serves the
/// provider until [`RunningDevIdp::shutdown`].
pub async fn start(addr: SocketAddr, settings: DevIdpSettings) -> Result<RunningDevIdp, DevIdpError> {
    if !addr.ip().is_loopback() {
        return Err(DevIdpError::NotLoopback(addr));
    }
    settings.check()?;
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|source| DevIdpError::Bind { addr, source })?;
    let addr = listener.local_addr().map_err(|source| DevIdpError::Bind { addr, source })?;
    let issuer = format!("http://{addr}");
    let idp = Arc::new(Idp::new(issuer.clone(), settings)?);
    let app = router(idp.clone());
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = stopped.await;
            })
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "dev OpenID provider failed");
        }
    });
    tracing::info!(%issuer, "dev OpenID provider is serving");
    Ok(RunningDevIdp { addr, issuer, idp, stop, task })
}

fn router(idp: Arc<Idp>) -> Router {
    Router::new()
        .route("/.well-known/openid-configuration", get(discovery))
        .route("/jwks", get(jwks))
        .route("/token", axum::routing::post(token))
        .route("/userinfo", get(userinfo).post(userinfo))
        .merge(authorize::routes())
        .merge(device::routes())
        .layer(DefaultBodyLimit::max(16 * 1024))
        .with_state(idp)
}

struct CodeGrant {
    redirect_uri: String,
    user: &'static DevUser,
    nonce: String,
    code_challenge: String,
    scopes: Scopes,
}

struct Tables {
    codes: Table<CodeGrant>,
    devices: Table<Device>,
    /// Normalised user code -> device code.
    user_codes: Table<String>,
}

struct Idp {
    issuer: String,
    client_id: String,
    client_secret: SecretString,
    redirect_uris: Vec<String>,
    post_logout_redirect_uris: Vec<String>,
    code_ttl_ms: u64,
    device_ttl_ms: u64,
    interval_ms: u64,
    token_ttl_s: u64,
    clock: DevClock,
    kid: String,
    encoding: EncodingKey,
    decoding: DecodingKey,
    jwks: Value,
    tables: Mutex<Tables>,
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn b64url(b: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

/// 256 random bits, base64url.
fn random_token() -> String {
    let mut b = [0u8; 32];
    rand::rng().fill_bytes(&mut b);
    b64url(&b)
}

/// Base64url without padding, `len` characters (PKCE challenges).
fn is_b64url(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// RFC 7636 4.1: 43 to 128 characters of `[A-Za-z0-9-._~]`.
fn is_code_verifier(s: &str) -> bool {
    (43..=128).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Scopes {
    email: bool,
    profile: bool,
    groups: bool,
}

impl Scopes {
    fn parse(s: Option<&str>) -> Result<Scopes, String> {
        let s = s.unwrap_or_default();
        if s.len() > MAX_SCOPE {
            return Err(format!("scope is longer than {MAX_SCOPE} characters"));
        }
        let mut openid = false;
        let mut out = Scopes { email: false, profile: false, groups: false };
        for w in s.split_whitespace() {
            match w {
                "openid" => openid = true,
                "email" => out.email = true,
                "profile" => out.profile = true,
                "groups" => out.groups = true,
                other => return Err(format!("unknown scope `{other}` (known: {})", SCOPES.join(", "))),
            }
        }
        if !openid {
            return Err("scope must include `openid`".into());
        }
        Ok(out)
    }

    fn text(&self) -> String {
        let mut v = vec!["openid"];
        for (on, s) in [(self.email, "email"), (self.profile, "profile"), (self.groups, "groups")] {
            if on {
                v.push(s);
            }
        }
        v.join(" ")
    }

    /// The user's claims these scopes release.
    fn claims(&self, u: &DevUser, into: &mut serde_json::Map<String, Value>) {
        if self.email {
            into.insert("email".into(), u.email.into());
            into.insert("email_verified".into(), true.into());
        }
        if self.profile {
            into.insert("name".into(), u.name.into());
            into.insert("preferred_username".into(), u.login.into());
        }
        if self.groups {
            into.insert("groups".into(), json!(u.groups));
        }
    }
}

impl Idp {
    fn new(issuer: String, s: DevIdpSettings) -> Result<Idp, DevIdpError> {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(|e| DevIdpError::Key(e.to_string()))?;
        let raw = key.public_key_raw();
        let (Some(x), Some(y)) = (raw.get(1..33), raw.get(33..65)) else {
            return Err(DevIdpError::Key("not a P-256 public key".into()));
        };
        let (x, y) = (b64url(x), b64url(y));
        let kid = hex::encode(&Sha256::digest(raw)[..8]);
        let pem = SecretString::from(key.serialize_pem());
        let encoding = EncodingKey::from_ec_pem(pem.expose_secret().as_bytes()).map_err(|e| DevIdpError::Key(e.to_string()))?;
        let decoding = DecodingKey::from_ec_components(&x, &y).map_err(|e| DevIdpError::Key(e.to_string()))?;
        let jwks = json!({"keys": [{"kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": kid, "x": x, "y": y}]});
        Ok(Idp {
            issuer,
            client_id: s.client_id,
            client_secret: s.client_secret,
            redirect_uris: s.redirect_uris,
            post_logout_redirect_uris: s.post_logout_redirect_uris,
            code_ttl_ms: ms(s.code_ttl),
            device_ttl_ms: ms(s.device_ttl),
            interval_ms: ms(s.device_interval),
            token_ttl_s: s.token_ttl.as_secs(),
            clock: s.clock,
            kid,
            encoding,
            decoding,
            jwks,
            tables: Mutex::new(Tables {
                codes: Table::new(s.max_pending),
                devices: Table::new(s.max_pending),
                user_codes: Table::new(s.max_pending),
            }),
        })
    }

    fn tables(&self) -> MutexGuard<'_, Tables> {
        // Nothing panics while holding the lock; a poisoned one is still
        // consistent (every update is a single insert or remove).
        self.tables.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn sign(&self, claims: &Value, typ: &str) -> Result<String, OAuthError> {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        header.typ = Some(typ.into());
        jsonwebtoken::encode(&header, claims, &self.encoding).map_err(|e| {
            tracing::error!(error = %e, "dev OpenID provider cannot sign");
            OAuthError::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", "cannot sign the token")
        })
    }

    /// The token response: an ID token for the client and an access token
    /// for userinfo.
    fn tokens(&self, user: &DevUser, scopes: Scopes, nonce: Option<&str>) -> Result<Response, OAuthError> {
        let now = self.clock.now_ms() / 1000;
        let exp = now.saturating_add(self.token_ttl_s);
        let mut id = serde_json::Map::new();
        id.insert("iss".into(), self.issuer.clone().into());
        id.insert("sub".into(), user.subject.into());
        id.insert("aud".into(), self.client_id.clone().into());
        id.insert("azp".into(), self.client_id.clone().into());
        id.insert("iat".into(), now.into());
        id.insert("auth_time".into(), now.into());
        id.insert("exp".into(), exp.into());
        if let Some(n) = nonce {
            id.insert("nonce".into(), n.into());
        }
        scopes.claims(user, &mut id);
        let access = json!({
            "iss": self.issuer, "sub": user.subject, "aud": self.userinfo_audience(), "client_id": self.client_id,
            "scope": scopes.text(), "iat": now, "exp": exp, "jti": random_token(),
        });
        let body = json!({
            "access_token": self.sign(&access, "at+jwt")?,
            "token_type": "Bearer",
            "expires_in": self.token_ttl_s,
            "id_token": self.sign(&Value::Object(id), "JWT")?,
            "scope": scopes.text(),
        });
        tracing::info!(user = user.login, "dev OpenID provider signed a person in");
        Ok(no_store((StatusCode::OK, Json(body)).into_response()))
    }

    fn userinfo_audience(&self) -> String {
        format!("{}/userinfo", self.issuer)
    }

    /// Client authentication at the token and device endpoints:
    /// `client_secret_basic` or `client_secret_post`, exactly one.
    fn authenticate(&self, headers: &HeaderMap, form_id: Option<&str>, form_secret: Option<&SecretString>) -> Result<(), OAuthError> {
        let basic = headers.get(header::AUTHORIZATION);
        let (id, secret) = match (basic, form_secret) {
            (Some(_), Some(_)) => {
                return Err(OAuthError::bad(
                    "invalid_request",
                    "client authentication: use HTTP Basic or client_secret in the body, not both",
                ))
            }
            (Some(h), None) => {
                let (id, secret) = parse_basic(h).ok_or_else(|| OAuthError::client("the Authorization header is not valid HTTP Basic client credentials"))?;
                if form_id.is_some_and(|f| f != id) {
                    return Err(OAuthError::bad("invalid_request", "client_id in the body differs from the one in HTTP Basic"));
                }
                (id, secret)
            }
            (None, Some(s)) => {
                let id = form_id.ok_or_else(|| OAuthError::bad("invalid_request", "client_id is missing"))?;
                (id.to_owned(), s.clone())
            }
            (None, None) => {
                return Err(OAuthError::client("client authentication is required (client_secret_basic or client_secret_post)"))
            }
        };
        let secret_ok: bool = secret.expose_secret().as_bytes().ct_eq(self.client_secret.expose_secret().as_bytes()).into();
        if id == self.client_id && secret_ok {
            Ok(())
        } else {
            Err(OAuthError::client("unknown client_id or wrong client secret"))
        }
    }

}

/// `Basic base64(urlencode(id):urlencode(secret))` (RFC 6749 2.3.1).
fn parse_basic(h: &HeaderValue) -> Option<(String, SecretString)> {
    let v = h.to_str().ok()?;
    let (scheme, rest) = v.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let raw = zeroize::Zeroizing::new(base64::engine::general_purpose::STANDARD.decode(rest.trim()).ok()?);
    let text = std::str::from_utf8(&raw).ok()?;
    let (id, secret) = text.split_once(':')?;
    let decode = |s: &str| -> Option<String> {
        let plus = s.replace('+', " ");
        percent_encoding::percent_decode_str(&plus).decode_utf8().ok().map(|c| c.into_owned())
    };
    Some((decode(id)?, SecretString::from(decode(secret)?)))
}

fn no_store(mut r: Response) -> Response {
    r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r.headers_mut().insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    r
}

/// An OAuth error response (RFC 6749 5.2): `{error, error_description}`.
#[derive(Debug)]
struct OAuthError {
    status: StatusCode,
    error: &'static str,
    description: String,
}

impl OAuthError {
    fn new(status: StatusCode, error: &'static str, description: impl Into<String>) -> Self {
        OAuthError { status, error, description: description.into() }
    }

    fn bad(error: &'static str, description: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, error, description)
    }

    fn client(description: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "invalid_client", description)
    }
}

impl IntoResponse for OAuthError {
    fn into_response(self) -> Response {
        let mut r = no_store((self.status, Json(json!({"error": self.error, "error_description": self.description}))).into_response());
        if self.status == StatusCode::UNAUTHORIZED {
            r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Basic realm=\"lessor-dev-idp\""));
        }
        r
    }
}

async fn discovery(State(idp): State<Arc<Idp>>) -> Response {
    let i = &idp.issuer;
    Json(json!({
        "issuer": i,
        "authorization_endpoint": format!("{i}/authorize"),
        "token_endpoint": format!("{i}/token"),
        "userinfo_endpoint": format!("{i}/userinfo"),
        "jwks_uri": format!("{i}/jwks"),
        "device_authorization_endpoint": format!("{i}/device_authorization"),
        "end_session_endpoint": format!("{i}/end_session"),
        "response_types_supported": ["code"],
        "response_modes_supported": ["query"],
        "grant_types_supported": ["authorization_code", DEVICE_GRANT],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["ES256"],
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
        "code_challenge_methods_supported": ["S256"],
        "scopes_supported": SCOPES,
        "claims_supported": ["iss", "sub", "aud", "exp", "iat", "auth_time", "nonce", "email", "email_verified", "name",
            "preferred_username", "groups"],
        "authorization_response_iss_parameter_supported": true,
    }))
    .into_response()
}

async fn jwks(State(idp): State<Arc<Idp>>) -> Response {
    Json(idp.jwks.clone()).into_response()
}

#[derive(Deserialize)]
struct TokenForm {
    grant_type: Option<String>,
    code: Option<SecretString>,
    redirect_uri: Option<String>,
    code_verifier: Option<SecretString>,
    device_code: Option<SecretString>,
    client_id: Option<String>,
    client_secret: Option<SecretString>,
}

async fn token(State(idp): State<Arc<Idp>>, headers: HeaderMap, f: Result<Form<TokenForm>, FormRejection>) -> Response {
    let Ok(Form(form)) = f else {
        return OAuthError::bad("invalid_request", "the body must be a form (application/x-www-form-urlencoded) of token parameters")
            .into_response();
    };
    if let Err(e) = idp.authenticate(&headers, form.client_id.as_deref(), form.client_secret.as_ref()) {
        return e.into_response();
    }
    let answer = match form.grant_type.as_deref() {
        Some("authorization_code") => authorize::code_grant(&idp, &form),
        Some(DEVICE_GRANT) => device::device_grant(&idp, &form),
        Some(other) => Err(OAuthError::bad(
            "unsupported_grant_type",
            format!("grant_type `{other}` is not supported (authorization_code, {DEVICE_GRANT})"),
        )),
        None => Err(OAuthError::bad("invalid_request", "grant_type is missing")),
    };
    answer.unwrap_or_else(IntoResponse::into_response)
}

async fn userinfo(State(idp): State<Arc<Idp>>, headers: HeaderMap) -> Response {
    let refuse = |desc: &str| {
        let mut r = no_store((StatusCode::UNAUTHORIZED, Json(json!({"error": "invalid_token", "error_description": desc}))).into_response());
        r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer error=\"invalid_token\""));
        r
    };
    let Some(token) = headers
        .get(header::AUTHORIZATION)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.split_once(' ').filter(|(s, _)| s.eq_ignore_ascii_case("bearer")))
        .map(|(_, t)| t.trim())
    else {
        return refuse("an access token (Authorization: Bearer) is required");
    };
    let mut v = Validation::new(Algorithm::ES256);
    v.set_issuer(&[&idp.issuer]);
    v.set_audience(&[idp.userinfo_audience()]);
    // `exp` is checked below against the provider's clock.
    v.validate_exp = false;
    v.set_required_spec_claims(&["exp", "sub", "iss", "aud"]);
    let data = match jsonwebtoken::decode::<Value>(token, &idp.decoding, &v) {
        Ok(d) if d.header.typ.as_deref() == Some("at+jwt") => d,
        _ => return refuse("the access token is not valid"),
    };
    let exp = data.claims["exp"].as_u64().unwrap_or(0);
    if exp.saturating_mul(1000) <= idp.clock.now_ms() {
        return refuse("the access token expired");
    }
    let sub = data.claims["sub"].as_str().unwrap_or_default();
    let Some(user) = DEV_USERS.iter().find(|u| u.subject == sub) else {
        return refuse("the access token names no dev user");
    };
    let scopes = Scopes::parse(data.claims["scope"].as_str()).unwrap_or(Scopes { email: false, profile: false, groups: false });
    let mut out = serde_json::Map::new();
    out.insert("sub".into(), user.subject.into());
    scopes.claims(user, &mut out);
    no_store(Json(Value::Object(out)).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_need_openid_and_known_names() {
        assert!(Scopes::parse(Some("openid email profile groups")).is_ok());
        assert!(Scopes::parse(Some("email")).unwrap_err().contains("openid"));
        assert!(Scopes::parse(Some("openid admin")).unwrap_err().contains("`admin`"));
    }

    #[test]
    fn basic_credentials_are_form_decoded() {
        let h = HeaderValue::from_str(&format!("Basic {}", base64::engine::general_purpose::STANDARD.encode("les%3Asor:a+b%25c"))).unwrap();
        let (id, secret) = parse_basic(&h).unwrap();
        assert_eq!(id, "les:sor");
        assert_eq!(secret.expose_secret(), "a b%c");
        assert!(parse_basic(&HeaderValue::from_static("Bearer x")).is_none());
    }

    #[test]
    fn settings_are_bounded() {
        let s = |f: fn(&mut DevIdpSettings)| {
            let mut s = DevIdpSettings::new("lessor", SecretString::from("0123456789abcdef"), vec!["http://127.0.0.1:1/cb".into()]);
            f(&mut s);
            s.check()
        };
        assert!(s(|_| {}).is_ok());
        assert!(s(|s| s.code_ttl = Duration::ZERO).is_err());
        assert!(s(|s| s.max_pending = 0).is_err());
        assert!(s(|s| s.client_secret = SecretString::from("short")).is_err());
        assert!(s(|s| s.redirect_uris = vec!["/relative".into()]).is_err());
    }
}
