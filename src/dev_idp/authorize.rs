//! The authorization code flow: the authorization request checked (on the
//! page and again on submit), the one-click page, the single-use code, its
//! redemption with PKCE S256 at the token endpoint; and end_session.
//!
//! Must not import: http, store, lease, policy, connections.

use std::sync::Arc;

use axum::extract::rejection::{FormRejection, QueryRejection};
use axum::extract::{Form, Query, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use secrecy::ExposeSecret;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::{
    b64url, html, is_b64url, is_code_verifier, no_store, random_token, CodeGrant, Idp, OAuthError, Scopes, TokenForm, DEV_USERS,
    MAX_STATE,
};

pub(super) fn routes() -> Router<Arc<Idp>> {
    Router::new()
        .route("/authorize", get(authorize_page).post(authorize_submit))
        .route("/end_session", get(end_session))
}

impl Idp {
    /// Checks an authorization request (on the page and again on submit).
    fn check_authorize(&self, p: &AuthorizeParams) -> Result<AuthRequest, AuthFail> {
        let page = AuthFail::Page;
        let client_id = p.client_id.as_deref().ok_or_else(|| page("client_id is missing".into()))?;
        if client_id != self.client_id {
            return Err(page(format!("unknown client_id `{client_id}`")));
        }
        let redirect_uri = p.redirect_uri.as_deref().ok_or_else(|| page("redirect_uri is missing".into()))?;
        if !self.redirect_uris.iter().any(|r| r == redirect_uri) {
            return Err(page(format!("redirect_uri `{redirect_uri}` is not registered for client `{client_id}`")));
        }
        let state = p.state.as_deref().filter(|s| !s.is_empty() && s.len() <= MAX_STATE);
        let fail = |error: &'static str, description: String| AuthFail::Redirect {
            redirect_uri: redirect_uri.to_owned(),
            state: state.map(str::to_owned),
            error,
            description,
        };
        if p.response_type.as_deref() != Some("code") {
            return Err(fail("unsupported_response_type", "response_type must be `code`".into()));
        }
        let Some(state) = state else {
            return Err(fail("invalid_request", format!("state is required (1 to {MAX_STATE} characters)")));
        };
        let Some(nonce) = p.nonce.as_deref().filter(|s| !s.is_empty() && s.len() <= MAX_STATE) else {
            return Err(fail("invalid_request", format!("nonce is required (1 to {MAX_STATE} characters)")));
        };
        if p.code_challenge_method.as_deref() != Some("S256") {
            return Err(fail("invalid_request", "PKCE is required: code_challenge_method must be `S256`".into()));
        }
        let Some(challenge) = p.code_challenge.as_deref().filter(|c| is_b64url(c, 43)) else {
            return Err(fail("invalid_request", "code_challenge must be the base64url SHA-256 of the verifier (43 characters)".into()));
        };
        let scopes = Scopes::parse(p.scope.as_deref()).map_err(|m| fail("invalid_scope", m))?;
        Ok(AuthRequest {
            redirect_uri: redirect_uri.to_owned(),
            state: state.to_owned(),
            nonce: nonce.to_owned(),
            code_challenge: challenge.to_owned(),
            scopes,
        })
    }

}

#[derive(Deserialize, Default)]
struct AuthorizeParams {
    response_type: Option<String>,
    client_id: Option<String>,
    redirect_uri: Option<String>,
    scope: Option<String>,
    state: Option<String>,
    nonce: Option<String>,
    code_challenge: Option<String>,
    code_challenge_method: Option<String>,
    /// Submit only: the dev user's login (empty = cancel).
    user: Option<String>,
}

struct AuthRequest {
    redirect_uri: String,
    state: String,
    nonce: String,
    code_challenge: String,
    scopes: Scopes,
}

enum AuthFail {
    /// Client or redirect URI unknown: never redirect, show the problem.
    Page(String),
    /// Anything else goes back to the client (RFC 6749 4.1.2.1).
    Redirect { redirect_uri: String, state: Option<String>, error: &'static str, description: String },
}

/// `redirect_uri` with `pairs` added to its query.
fn redirect(status: StatusCode, redirect_uri: &str, pairs: &[(&str, &str)]) -> Response {
    let Ok(mut url) = reqwest::Url::parse(redirect_uri) else {
        return html::message(StatusCode::BAD_REQUEST, "Cannot sign in", "redirect_uri is not a URL");
    };
    url.query_pairs_mut().extend_pairs(pairs);
    match HeaderValue::from_str(url.as_str()) {
        Ok(loc) => {
            let mut r = no_store(status.into_response());
            r.headers_mut().insert(header::LOCATION, loc);
            r
        }
        Err(_) => html::message(StatusCode::BAD_REQUEST, "Cannot sign in", "redirect_uri cannot be a Location"),
    }
}

impl AuthFail {
    fn into_response(self, status: StatusCode, issuer: &str) -> Response {
        match self {
            AuthFail::Page(m) => html::message(StatusCode::BAD_REQUEST, "Cannot sign in", &m),
            AuthFail::Redirect { redirect_uri, state, error, description } => {
                let mut pairs = vec![("error", error), ("error_description", description.as_str()), ("iss", issuer)];
                if let Some(s) = state.as_deref() {
                    pairs.push(("state", s));
                }
                redirect(status, &redirect_uri, &pairs)
            }
        }
    }
}

async fn authorize_page(State(idp): State<Arc<Idp>>, q: Result<Query<AuthorizeParams>, QueryRejection>) -> Response {
    let Ok(Query(p)) = q else {
        return html::message(StatusCode::BAD_REQUEST, "Cannot sign in", "the query string is not a valid authorization request");
    };
    match idp.check_authorize(&p) {
        Err(f) => f.into_response(StatusCode::FOUND, &idp.issuer),
        Ok(req) => {
            let scope = req.scopes.text();
            html::choose_user(
                &idp.client_id,
                &req.redirect_uri,
                &[
                    ("response_type", "code"),
                    ("client_id", &idp.client_id),
                    ("redirect_uri", &req.redirect_uri),
                    ("scope", &scope),
                    ("state", &req.state),
                    ("nonce", &req.nonce),
                    ("code_challenge", &req.code_challenge),
                    ("code_challenge_method", "S256"),
                ],
            )
        }
    }
}

/// One click: the request is checked again, a single-use code is issued
/// and the browser goes back to the client.
async fn authorize_submit(State(idp): State<Arc<Idp>>, f: Result<Form<AuthorizeParams>, FormRejection>) -> Response {
    let Ok(Form(p)) = f else {
        return html::message(StatusCode::BAD_REQUEST, "Cannot sign in", "the form is not a valid authorization request");
    };
    let req = match idp.check_authorize(&p) {
        Ok(r) => r,
        Err(f) => return f.into_response(StatusCode::SEE_OTHER, &idp.issuer),
    };
    let back = |error: &'static str, description: &str| {
        AuthFail::Redirect {
            redirect_uri: req.redirect_uri.clone(),
            state: Some(req.state.clone()),
            error,
            description: description.to_owned(),
        }
        .into_response(StatusCode::SEE_OTHER, &idp.issuer)
    };
    let login = p.user.as_deref().unwrap_or_default();
    if login.is_empty() {
        return back("access_denied", "the sign-in was cancelled");
    }
    let Some(user) = DEV_USERS.iter().find(|u| u.login == login) else {
        return html::message(StatusCode::BAD_REQUEST, "Cannot sign in", &format!("no dev user `{login}`"));
    };
    let code = random_token();
    let now = idp.clock.now_ms();
    let grant = CodeGrant {
        redirect_uri: req.redirect_uri.clone(),
        user,
        nonce: req.nonce.clone(),
        code_challenge: req.code_challenge.clone(),
        scopes: req.scopes,
    };
    let inserted = idp.tables().codes.insert(now, code.clone(), grant, now.saturating_add(idp.code_ttl_ms));
    if inserted.is_err() {
        return back("temporarily_unavailable", "too many sign-ins in progress; try again in a minute");
    }
    redirect(StatusCode::SEE_OTHER, &req.redirect_uri, &[("code", &code), ("state", &req.state), ("iss", &idp.issuer)])
}

pub(super) fn code_grant(idp: &Idp, form: &TokenForm) -> Result<Response, OAuthError> {
    let code = form.code.as_ref().ok_or_else(|| OAuthError::bad("invalid_request", "code is missing"))?;
    let redirect_uri = form.redirect_uri.as_deref().ok_or_else(|| OAuthError::bad("invalid_request", "redirect_uri is missing"))?;
    let verifier = form
        .code_verifier
        .as_ref()
        .ok_or_else(|| OAuthError::bad("invalid_request", "code_verifier is missing (PKCE is required)"))?;
    if !is_code_verifier(verifier.expose_secret()) {
        return Err(OAuthError::bad("invalid_request", "code_verifier must be 43 to 128 characters of [A-Za-z0-9-._~]"));
    }
    // Taken out before any check: a code is tried once, whatever happens.
    let grant = idp
        .tables()
        .codes
        .remove(idp.clock.now_ms(), code.expose_secret())
        .ok_or_else(|| OAuthError::bad("invalid_grant", "the code is unknown, already used or expired"))?;
    if grant.redirect_uri != redirect_uri {
        return Err(OAuthError::bad("invalid_grant", "redirect_uri differs from the authorization request's"));
    }
    let computed = b64url(&Sha256::digest(verifier.expose_secret().as_bytes()));
    if !bool::from(computed.as_bytes().ct_eq(grant.code_challenge.as_bytes())) {
        return Err(OAuthError::bad("invalid_grant", "code_verifier does not match the code_challenge (PKCE)"));
    }
    idp.tokens(grant.user, grant.scopes, Some(&grant.nonce))
}

#[derive(Deserialize)]
struct EndSessionParams {
    post_logout_redirect_uri: Option<String>,
    state: Option<String>,
}

/// The provider keeps no browser session (every sign-in is a click), so
/// ending one only sends the browser back where it was registered to go.
async fn end_session(State(idp): State<Arc<Idp>>, q: Result<Query<EndSessionParams>, QueryRejection>) -> Response {
    let Ok(Query(p)) = q else {
        return html::message(StatusCode::BAD_REQUEST, "Sign out", "the query string is not valid");
    };
    match p.post_logout_redirect_uri.as_deref() {
        None => html::message(StatusCode::OK, "Signed out", "You are signed out of the dev provider."),
        Some(uri) if idp.post_logout_redirect_uris.iter().any(|r| r == uri) => {
            let state = p.state.filter(|s| s.len() <= MAX_STATE);
            let pairs: Vec<(&str, &str)> = state.as_deref().map(|s| ("state", s)).into_iter().collect();
            redirect(StatusCode::FOUND, uri, &pairs)
        }
        Some(uri) => html::message(
            StatusCode::BAD_REQUEST,
            "Sign out",
            &format!("post_logout_redirect_uri `{uri}` is not registered"),
        ),
    }
}

