//! The dev provider's pages: pick a dev user (authorization request), enter
//! or confirm a device's user code, and plain messages. Every value from a
//! request is HTML-escaped; pages are not framed, cached or sent as a
//! referrer.
//!
//! Must not import: http, store, lease, policy, connections.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use super::{DevUser, DEV_USERS};

/// Escapes text for an HTML element body or a double-quoted attribute.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#x27;"),
            _ => out.push(c),
        }
    }
    out
}

fn page(status: StatusCode, title: &str, body: &str) -> Response {
    let html = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>{t} - lessor dev sign-in</title>\
         <style>body{{font-family:sans-serif;max-width:32em;margin:3em auto}}button{{display:block;width:100%;\
         margin:.4em 0;padding:.6em;font-size:1em;text-align:left}}code{{font-size:1.2em}}</style></head>\
         <body><h1>{t}</h1>{body}<p><small>lessor dev's built-in OpenID provider: for local development only.</small></p>\
         </body></html>",
        t = escape(title)
    );
    let mut r = (status, html).into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'"),
    );
    r
}

pub fn message(status: StatusCode, title: &str, text: &str) -> Response {
    page(status, title, &format!("<p>{}</p>", escape(text)))
}

fn hidden(name: &str, value: &str) -> String {
    format!("<input type=\"hidden\" name=\"{}\" value=\"{}\">", escape(name), escape(value))
}

fn user_buttons() -> String {
    DEV_USERS
        .iter()
        .map(|u: &DevUser| {
            format!(
                "<button type=\"submit\" name=\"user\" value=\"{login}\"><b>{login}</b> &lt;{email}&gt; groups: {groups}</button>",
                login = escape(u.login),
                email = escape(u.email),
                groups = escape(&u.groups.join(", "))
            )
        })
        .collect()
}

/// The authorization page: one button per dev user, the request's
/// parameters carried in hidden fields and checked again on submit.
pub fn choose_user(client_id: &str, redirect_uri: &str, fields: &[(&str, &str)]) -> Response {
    let hidden_fields: String = fields.iter().map(|(k, v)| hidden(k, v)).collect();
    page(
        StatusCode::OK,
        "Sign in",
        &format!(
            "<p>Sign in to <b>{client}</b> (returns to <code>{redirect}</code>) as:</p>\
             <form method=\"post\" action=\"/authorize\">{hidden_fields}{buttons}\
             <button type=\"submit\" name=\"user\" value=\"\">Cancel</button></form>",
            client = escape(client_id),
            redirect = escape(redirect_uri),
            buttons = user_buttons()
        ),
    )
}

/// The device page without a code: a field to type it.
pub fn enter_code(status: StatusCode, problem: Option<&str>) -> Response {
    let problem = problem.map(|p| format!("<p><b>{}</b></p>", escape(p))).unwrap_or_default();
    page(
        status,
        "Sign in a device",
        &format!(
            "{problem}<form method=\"get\" action=\"/device\"><p>Enter the code your terminal shows:</p>\
             <input name=\"user_code\" autocomplete=\"off\" maxlength=\"16\" placeholder=\"ABCD-EFGH\" autofocus>\
             <button type=\"submit\">Continue</button></form>"
        ),
    )
}

/// The device page for a known code: confirm it, pick a user or deny.
pub fn confirm_device(user_code: &str) -> Response {
    page(
        StatusCode::OK,
        "Sign in a device",
        &format!(
            "<p>Check that your terminal shows <code>{code}</code>, then sign it in as:</p>\
             <form method=\"post\" action=\"/device\">{hidden}{buttons}\
             <button type=\"submit\" name=\"user\" value=\"\">Deny</button></form>",
            code = escape(user_code),
            hidden = hidden("user_code", user_code),
            buttons = user_buttons()
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup_and_quotes() {
        assert_eq!(escape(r#"<a href="x">'&'</a>"#), "&lt;a href=&quot;x&quot;&gt;&#x27;&amp;&#x27;&lt;/a&gt;");
    }
}
