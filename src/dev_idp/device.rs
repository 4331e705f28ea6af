//! The device authorization grant (RFC 8628): device and user codes, the
//! verification page where a person types or confirms the code and clicks
//! a user, and the token endpoint's polling answers (`authorization_pending`,
//! `slow_down`, `expired_token`, `access_denied`).
//!
//! Must not import: http, store, lease, policy, connections.

use std::sync::Arc;

use axum::extract::rejection::{FormRejection, QueryRejection};
use axum::extract::{Form, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use rand::Rng;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::json;

use super::{html, no_store, random_token, Idp, OAuthError, Scopes, Tables, TokenForm, DEV_USERS, DevUser};

/// RFC 8628 3.5: each `slow_down` adds 5 seconds to the interval.
const SLOW_DOWN_MS: u64 = 5_000;
const MAX_INTERVAL_MS: u64 = 60_000;
/// User codes: 8 letters without vowels (RFC 8628 6.1), shown `ABCD-EFGH`.
const USER_CODE_ALPHABET: &[u8] = b"BCDFGHJKLMNPQRSTVWXZ";

#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum DeviceStatus {
    Pending,
    Approved(&'static DevUser),
    Denied,
}

pub(super) struct Device {
    scopes: Scopes,
    expires_ms: u64,
    interval_ms: u64,
    last_poll_ms: Option<u64>,
    status: DeviceStatus,
}

fn random_user_code() -> String {
    let mut rng = rand::rng();
    (0..8).map(|_| char::from(USER_CODE_ALPHABET[rng.random_range(0..USER_CODE_ALPHABET.len())])).collect()
}

/// `abcd-efgh`, `ABCDEFGH`, ` abcd efgh ` -> `ABCDEFGH`; None unless 8
/// letters of the alphabet.
fn normalize_user_code(s: &str) -> Option<String> {
    if s.len() > 32 {
        return None;
    }
    let c: String = s.chars().filter(|c| *c != '-' && !c.is_whitespace()).map(|c| c.to_ascii_uppercase()).collect();
    (c.len() == 8 && c.bytes().all(|b| USER_CODE_ALPHABET.contains(&b))).then_some(c)
}

fn display_user_code(c: &str) -> String {
    match (c.get(..4), c.get(4..)) {
        (Some(a), Some(b)) => format!("{a}-{b}"),
        _ => c.to_owned(),
    }
}

pub(super) fn routes() -> Router<Arc<Idp>> {
    Router::new()
        .route("/device_authorization", post(device_authorization))
        .route("/device", get(device_page).post(device_submit))
}

impl Idp {
    fn user_code_device(&self, t: &mut Tables, now: u64, user_code: &str) -> Option<String> {
        let device_code = t.user_codes.get_mut(now, user_code)?.clone();
        let d = t.devices.get_mut(now, &device_code)?;
        (d.status == DeviceStatus::Pending && d.expires_ms > now).then_some(device_code)
    }
}

pub(super) fn device_grant(idp: &Idp, form: &TokenForm) -> Result<Response, OAuthError> {
    let code = form.device_code.as_ref().ok_or_else(|| OAuthError::bad("invalid_request", "device_code is missing"))?;
    let code = code.expose_secret();
    let now = idp.clock.now_ms();
    let mut t = idp.tables();
    let d = t.devices.get_mut(now, code).ok_or_else(|| OAuthError::bad("invalid_grant", "the device_code is unknown or already used"))?;
    if d.expires_ms <= now {
        t.devices.remove(now, code);
        return Err(OAuthError::bad("expired_token", "the device code expired; start the sign-in again"));
    }
    let too_fast = d.last_poll_ms.is_some_and(|last| now.saturating_sub(last) < d.interval_ms);
    d.last_poll_ms = Some(now);
    if too_fast {
        d.interval_ms = d.interval_ms.saturating_add(SLOW_DOWN_MS).min(MAX_INTERVAL_MS);
        return Err(OAuthError::bad(
            "slow_down",
            format!("polling too fast: wait at least {}s between requests", d.interval_ms / 1000),
        ));
    }
    let (status, scopes) = (d.status, d.scopes);
    match status {
        DeviceStatus::Pending => Err(OAuthError::bad("authorization_pending", "the user has not approved the device yet")),
        DeviceStatus::Denied => {
            t.devices.remove(now, code);
            Err(OAuthError::bad("access_denied", "the user denied the device"))
        }
        DeviceStatus::Approved(user) => {
            t.devices.remove(now, code);
            drop(t);
            idp.tokens(user, scopes, None)
        }
    }
}

#[derive(Deserialize)]
struct DeviceAuthForm {
    client_id: Option<String>,
    client_secret: Option<SecretString>,
    scope: Option<String>,
}

/// RFC 8628 3.1-3.2: a device code for the client, a user code for the
/// person.
async fn device_authorization(State(idp): State<Arc<Idp>>, headers: HeaderMap, f: Result<Form<DeviceAuthForm>, FormRejection>) -> Response {
    let Ok(Form(form)) = f else {
        return OAuthError::bad("invalid_request", "the body must be a form (application/x-www-form-urlencoded)").into_response();
    };
    if let Err(e) = idp.authenticate(&headers, form.client_id.as_deref(), form.client_secret.as_ref()) {
        return e.into_response();
    }
    let scopes = match Scopes::parse(form.scope.as_deref()) {
        Ok(s) => s,
        Err(m) => return OAuthError::bad("invalid_scope", m).into_response(),
    };
    let now = idp.clock.now_ms();
    let expires_ms = now.saturating_add(idp.device_ttl_ms);
    let device_code = random_token();
    let user_code = {
        let mut t = idp.tables();
        let mut user_code = random_user_code();
        for _ in 0..4 {
            if !t.user_codes.contains(now, &user_code) {
                break;
            }
            user_code = random_user_code();
        }
        let device = Device { scopes, expires_ms, interval_ms: idp.interval_ms, last_poll_ms: None, status: DeviceStatus::Pending };
        // Kept one more life after expiry so a late poll hears `expired_token`.
        let kept = expires_ms.saturating_add(idp.device_ttl_ms);
        if t.devices.insert(now, device_code.clone(), device, kept).is_err() {
            return OAuthError::new(StatusCode::SERVICE_UNAVAILABLE, "temporarily_unavailable", "too many device sign-ins in progress")
                .into_response();
        }
        if t.user_codes.insert(now, user_code.clone(), device_code.clone(), expires_ms).is_err() {
            t.devices.remove(now, &device_code);
            return OAuthError::new(StatusCode::SERVICE_UNAVAILABLE, "temporarily_unavailable", "too many device sign-ins in progress")
                .into_response();
        }
        user_code
    };
    let shown = display_user_code(&user_code);
    let body = json!({
        "device_code": device_code,
        "user_code": shown,
        "verification_uri": format!("{}/device", idp.issuer),
        "verification_uri_complete": format!("{}/device?user_code={shown}", idp.issuer),
        "expires_in": idp.device_ttl_ms / 1000,
        "interval": idp.interval_ms / 1000,
    });
    no_store((StatusCode::OK, Json(body)).into_response())
}

#[derive(Deserialize)]
struct DeviceParams {
    user_code: Option<String>,
    /// Submit only: the dev user's login (empty = deny).
    user: Option<String>,
}

async fn device_page(State(idp): State<Arc<Idp>>, q: Result<Query<DeviceParams>, QueryRejection>) -> Response {
    let Ok(Query(p)) = q else {
        return html::enter_code(StatusCode::BAD_REQUEST, Some("the query string is not valid"));
    };
    let Some(raw) = p.user_code.filter(|c| !c.trim().is_empty()) else {
        return html::enter_code(StatusCode::OK, None);
    };
    let Some(code) = normalize_user_code(&raw) else {
        return html::enter_code(StatusCode::BAD_REQUEST, Some("that is not a code like ABCD-EFGH"));
    };
    let now = idp.clock.now_ms();
    if idp.user_code_device(&mut idp.tables(), now, &code).is_none() {
        return html::enter_code(StatusCode::BAD_REQUEST, Some("unknown, used or expired code: start again in your terminal"));
    }
    html::confirm_device(&display_user_code(&code))
}

async fn device_submit(State(idp): State<Arc<Idp>>, f: Result<Form<DeviceParams>, FormRejection>) -> Response {
    let Ok(Form(p)) = f else {
        return html::enter_code(StatusCode::BAD_REQUEST, Some("the form is not valid"));
    };
    let Some(code) = p.user_code.as_deref().and_then(normalize_user_code) else {
        return html::enter_code(StatusCode::BAD_REQUEST, Some("that is not a code like ABCD-EFGH"));
    };
    let login = p.user.as_deref().unwrap_or_default();
    let status = if login.is_empty() {
        DeviceStatus::Denied
    } else {
        match DEV_USERS.iter().find(|u| u.login == login) {
            Some(u) => DeviceStatus::Approved(u),
            None => return html::message(StatusCode::BAD_REQUEST, "Cannot sign in", &format!("no dev user `{login}`")),
        }
    };
    let now = idp.clock.now_ms();
    let mut t = idp.tables();
    let Some(device_code) = idp.user_code_device(&mut t, now, &code) else {
        return html::enter_code(StatusCode::BAD_REQUEST, Some("unknown, used or expired code: start again in your terminal"));
    };
    if let Some(d) = t.devices.get_mut(now, &device_code) {
        d.status = status;
    }
    // The user code is spent either way.
    t.user_codes.remove(now, &code);
    drop(t);
    match status {
        DeviceStatus::Approved(u) => {
            html::message(StatusCode::OK, "Device signed in", &format!("Signed in as {}. Return to your terminal.", u.login))
        }
        _ => html::message(StatusCode::OK, "Device denied", "The device was not signed in. You can close this page."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_codes_normalise() {
        assert_eq!(normalize_user_code(" bcdf-ghjk ").as_deref(), Some("BCDFGHJK"));
        assert_eq!(normalize_user_code("BCDFGHJK").as_deref(), Some("BCDFGHJK"));
        for bad in ["BCDF-GHJ", "ABCD-EFGH", "BCDF-GHJKL", "", &"B".repeat(40)] {
            assert_eq!(normalize_user_code(bad), None, "{bad}");
        }
        let c = random_user_code();
        assert_eq!(normalize_user_code(&display_user_code(&c)), Some(c));
    }

}
