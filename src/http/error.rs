//! The one API error type. Every variant has an explicit status; internal
//! errors get a generic body and the real error goes to the log.

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use lessor_plugin::PluginError;
use serde_json::json;

use crate::identity::AuthError;
use crate::lease::LeaseError;
use crate::store::StoreError;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub field: Option<String>,
    /// Boxed: it is rare, and keeps `Result<_, ApiError>` small.
    pub details: Option<Box<serde_json::Value>>,
    auth_challenge: bool,
    pub(crate) retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError { status, code, message: message.into(), field: None, details: None, auth_challenge: false, retry_after: None }
    }

    pub fn bad_request(field: &str, message: impl Into<String>) -> ApiError {
        let mut e = ApiError::new(StatusCode::BAD_REQUEST, "invalid_request", message);
        e.field = Some(field.to_owned());
        e
    }

    pub fn forbidden(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    /// 401 with a `WWW-Authenticate: Bearer` challenge.
    pub fn unauthorized(code: &'static str, message: impl Into<String>) -> ApiError {
        let mut a = ApiError::new(StatusCode::UNAUTHORIZED, code, message);
        a.auth_challenge = true;
        a
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// Logs the real error; the caller sees only that something failed.
    pub fn internal(context: &str, e: impl std::fmt::Display) -> ApiError {
        tracing::error!(error = %e, "{context}");
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "internal error; see the lessor log")
    }
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        tracing::debug!(reason = e.reason(), error = %e, "workload token refused");
        let mut a = ApiError::new(StatusCode::UNAUTHORIZED, "invalid_token", e.to_string());
        if matches!(e, AuthError::KeysUnavailable { .. }) {
            a.status = StatusCode::SERVICE_UNAVAILABLE;
            a.code = "issuer_unavailable";
        }
        a.auth_challenge = true;
        a
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable(_) | StoreError::Locked(_) => {
                tracing::error!(error = %e, "store unavailable");
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "store_unavailable", "the lease store is unavailable; try again")
            }
            other => ApiError::internal("store error", other),
        }
    }
}

impl From<LeaseError> for ApiError {
    fn from(e: LeaseError) -> Self {
        match e {
            LeaseError::UnknownRole { .. } => {
                let mut a = ApiError::new(StatusCode::NOT_FOUND, "unknown_role", e.to_string());
                a.field = Some("role".into());
                a
            }
            LeaseError::BadRequest { field, message } => ApiError::bad_request(field, message),
            LeaseError::Denied(d) => {
                let mut a = ApiError::new(StatusCode::FORBIDDEN, "policy_denied", d.message.clone());
                a.details = serde_json::to_value(&*d).ok().map(Box::new);
                a
            }
            LeaseError::NotFound(_) | LeaseError::JobNotFound(_) => ApiError::not_found(e.to_string()),
            LeaseError::Conflict(m) => ApiError::new(StatusCode::CONFLICT, "conflict", m),
            LeaseError::Plugin { message, error } => match error {
                PluginError::InvalidRequest(_) => {
                    let mut a = ApiError::bad_request("params", message);
                    a.code = "invalid_params";
                    a
                }
                PluginError::Permanent(_) => ApiError::new(StatusCode::BAD_GATEWAY, "vendor_refused", message),
                PluginError::Retryable(_) | PluginError::State(_) => {
                    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "vendor_unavailable", message)
                }
                PluginError::Unsupported(_) => ApiError::new(StatusCode::CONFLICT, "unsupported", message),
                PluginError::Misconfigured(_) => {
                    tracing::error!(error = %message, "plugin misconfigured");
                    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "misconfigured", message)
                }
            },
            LeaseError::Quota { quota, message, retry_after } => {
                let mut a = ApiError::new(StatusCode::TOO_MANY_REQUESTS, "quota_exceeded", message);
                a.details = Some(Box::new(serde_json::json!({ "quota": quota })));
                a.retry_after = retry_after;
                a
            }
            LeaseError::Store(s) => s.into(),
            LeaseError::Policy(p) => ApiError::internal("policy evaluation failed", p),
            LeaseError::Audit(a) => {
                tracing::error!(error = %a, "request refused: its audit entry could not be written");
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "audit_unavailable", a.to_string())
            }
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        let text = r.body_text();
        let status = r.status();
        let field = field_of(&text);
        let mut e = ApiError::new(
            if status == StatusCode::PAYLOAD_TOO_LARGE { status } else { StatusCode::BAD_REQUEST },
            if status == StatusCode::PAYLOAD_TOO_LARGE { "too_large" } else { "invalid_json" },
            text,
        );
        e.field = field;
        e
    }
}

/// The field a framework rejection names (query strings: "Failed to
/// deserialize query string: limit: invalid digit ..."), if any.
pub(super) fn field_of_rejection(text: &str) -> Option<String> {
    field_of(text.strip_prefix("Failed to deserialize query string: ").unwrap_or(text))
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> Self {
        let text = r.body_text();
        let detail = text.split_once("query string: ").map_or(text.as_str(), |(_, d)| d);
        let mut e = ApiError::new(StatusCode::BAD_REQUEST, "invalid_request", text.clone());
        e.field = field_of(detail);
        e
    }
}

/// Pulls the field name out of serde's messages ("missing field `role`",
/// "unknown field `x`", "ttl: invalid type ...").
fn field_of(text: &str) -> Option<String> {
    if let Some(i) = text.find("field `") {
        let rest = &text[i + 7..];
        return rest.find('`').map(|j| rest[..j].to_owned());
    }
    let body = text.rsplit("target type: ").next().unwrap_or(text);
    let (path, _) = body.split_once(": ")?;
    (!path.contains(' ') && !path.is_empty()).then(|| path.to_owned())
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut err = json!({"code": self.code, "message": self.message});
        if let Some(f) = &self.field {
            err["field"] = json!(f);
        }
        if let Some(d) = self.details {
            if self.status == StatusCode::TOO_MANY_REQUESTS {
                err["quota"] = d["quota"].clone();
            } else {
                err["decision"] = *d;
            }
        }
        let mut resp = (self.status, axum::Json(json!({ "error": err }))).into_response();
        if let Some(secs) = self.retry_after {
            if let Ok(h) = HeaderValue::from_str(&secs.to_string()) {
                resp.headers_mut().insert(header::RETRY_AFTER, h);
            }
        }
        if self.auth_challenge {
            // The description is our own message, never the token.
            let v = format!("Bearer error=\"invalid_token\", error_description=\"{}\"", self.message.replace('"', "'"));
            if let Ok(h) = HeaderValue::from_str(&v) {
                resp.headers_mut().insert(header::WWW_AUTHENTICATE, h);
            }
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::{field_of, field_of_rejection};

    #[test]
    fn field_names_are_found_in_serde_messages() {
        assert_eq!(field_of("Failed to deserialize the JSON body into the target type: missing field `role` at line 1 column 2").as_deref(), Some("role"));
        assert_eq!(field_of("Failed to deserialize the JSON body into the target type: ttl: invalid type: integer `5`, expected a string at line 1 column 9").as_deref(), Some("ttl"));
        assert_eq!(field_of("Failed to parse the request body as JSON: EOF while parsing").as_deref(), None);
        assert_eq!(field_of_rejection("Failed to deserialize query string: limit: invalid digit found in string").as_deref(), Some("limit"));
        assert_eq!(field_of_rejection("Failed to buffer the request body: length limit exceeded").as_deref(), None);
    }
}
