//! The wire: JSON-RPC 2.0 messages, one per line, as plugins/PROTOCOL.md
//! describes them. Request params are the SDK's serde wire types
//! (`IssueRequest`, `LeaseRef`, `RenewRequest`) serialized as they are, and
//! the handshake's `revocation` is the SDK's `Revocation`. Results are
//! checked field by field here rather than deserialized into `Issued`:
//! serde's messages quote the offending value (a malformed `secret` must not
//! end up in a log), and the checks here go further (years bounded, a field
//! both public and secret refused).

use std::collections::BTreeMap;

use lessor_plugin::secrecy::SecretString;
use lessor_plugin::{Handle, IssueRequest, Issued, LeaseRef, PluginError, RenewRequest, Revocation, Validation, VendorObject};
use serde::Serialize;
use serde_json::{json, Map, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use tokio::io::{AsyncBufRead, AsyncBufReadExt};

/// Version of this protocol; `initialize` carries it both ways.
pub const PROTOCOL_VERSION: u32 = 1;

/// Longest line either side may write (stdout, stdin); longer is a protocol
/// violation and ends the process.
pub const MAX_LINE_BYTES: usize = 1 << 20;

/// Longest stderr line forwarded to lessor's log; the rest is cut.
pub const MAX_LOG_LINE: usize = 2048;

/// Longest error message taken from a plugin.
const MAX_MESSAGE: usize = 1024;

/// Error codes (JSON-RPC's implementation-defined range, and its own).
pub mod code {
    pub const RETRYABLE: i64 = -32001;
    pub const PERMANENT: i64 = -32002;
    pub const INVALID: i64 = -32003;
    pub const MISCONFIGURED: i64 = -32004;
    pub const UNSUPPORTED: i64 = -32005;
    pub const PARSE_ERROR: i64 = -32700;
    pub const INVALID_REQUEST: i64 = -32600;
    pub const METHOD_NOT_FOUND: i64 = -32601;
    pub const INVALID_PARAMS: i64 = -32602;
    pub const INTERNAL: i64 = -32603;
}

/// A JSON-RPC error object a plugin answered.
#[derive(Debug, Clone)]
pub struct RpcError {
    pub code: i64,
    pub message: String,
}

impl RpcError {
    /// The error class this code stands for. `method` names the call for
    /// messages.
    pub fn into_plugin_error(self, method: &'static str) -> PluginError {
        let m = self.message;
        match self.code {
            code::RETRYABLE => PluginError::Retryable(m),
            code::PERMANENT => PluginError::Permanent(m),
            code::INVALID => PluginError::InvalidRequest(m),
            code::MISCONFIGURED => PluginError::Misconfigured(m),
            code::UNSUPPORTED | code::METHOD_NOT_FOUND => PluginError::Unsupported(method.to_owned()),
            code::INVALID_PARAMS => {
                PluginError::Permanent(format!("the plugin refused lessor's `{method}` params (protocol mismatch?): {m}"))
            }
            code::INTERNAL => PluginError::Permanent(format!("the plugin failed internally in `{method}`: {m}")),
            c => PluginError::Permanent(format!("the plugin answered `{method}` with unknown error code {c}: {m}")),
        }
    }
}

/// What one stdout line turned out to be.
#[derive(Debug)]
pub enum Incoming {
    Response { id: u64, outcome: Result<Value, RpcError> },
    /// A message with a `method` and no `id`: the protocol defines none
    /// from the plugin; ignored.
    Notification { method: String },
}

/// Keeps a plugin-written text printable and bounded.
pub fn clean(s: &str, max: usize) -> String {
    let mut out: String = s.chars().map(|c| if c.is_control() { ' ' } else { c }).take(max).collect();
    if s.chars().count() > max {
        out.push('…');
    }
    out
}

/// Parses one line from the plugin's stdout. `Err` is a protocol violation,
/// described without quoting the line.
pub fn parse_incoming(line: &[u8]) -> Result<Incoming, String> {
    let v: Value = serde_json::from_slice(line).map_err(|e| {
        format!("a stdout line is not JSON ({:?} error at line {} column {})", e.classify(), e.line(), e.column())
    })?;
    let Value::Object(mut o) = v else {
        return Err("a stdout line is JSON but not an object (batches are not part of the protocol)".into());
    };
    if o.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        return Err("a message lacks `\"jsonrpc\": \"2.0\"`".into());
    }
    let id = match o.get("id") {
        None => {
            return match o.get("method").and_then(Value::as_str) {
                Some(m) => Ok(Incoming::Notification { method: clean(m, 64) }),
                None => Err("a message has neither `id` nor `method`".into()),
            }
        }
        Some(Value::Number(n)) => n.as_u64().ok_or("a response `id` is not an id lessor sent (a non-negative integer)")?,
        Some(Value::Null) => {
            let why = o.get("error").and_then(|e| e.get("message")).and_then(Value::as_str).unwrap_or("");
            return Err(format!("the plugin could not read a request (error with `id` null): {}", clean(why, MAX_MESSAGE)));
        }
        Some(_) => return Err("a response `id` is not an integer (lessor sends integer ids)".into()),
    };
    if o.contains_key("method") {
        return Err(format!("message {id} is a request; plugins only answer"));
    }
    match (o.remove("result"), o.remove("error")) {
        (Some(r), None) => Ok(Incoming::Response { id, outcome: Ok(r) }),
        (None, Some(Value::Object(e))) => {
            let code = e.get("code").and_then(Value::as_i64).ok_or(format!("error of response {id}: `code` is not an integer"))?;
            let message = e.get("message").and_then(Value::as_str).ok_or(format!("error of response {id}: `message` is not a string"))?;
            Ok(Incoming::Response { id, outcome: Err(RpcError { code, message: clean(message, MAX_MESSAGE) }) })
        }
        (None, Some(_)) => Err(format!("response {id}: `error` is not an object")),
        (Some(_), Some(_)) => Err(format!("response {id} has both `result` and `error`")),
        (None, None) => Err(format!("response {id} has neither `result` nor `error`")),
    }
}

/// One request line (without the newline).
pub fn request_line(id: u64, method: &str, params: &Value) -> Result<Vec<u8>, String> {
    serde_json::to_vec(&json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}))
        .map_err(|e| format!("cannot encode `{method}`: {e}"))
}

/// A line as read by [`read_line`].
pub enum Line {
    Full(Vec<u8>),
    /// Longer than the bound: the first `max` bytes and the full length.
    TooLong(Vec<u8>, usize),
    Eof,
}

/// Reads one `\n`-terminated line, keeping at most `max` bytes of it.
/// A fragment without a newline at end of file is dropped (the writer died
/// mid-line).
pub async fn read_line<R: AsyncBufRead + Unpin>(r: &mut R, max: usize) -> std::io::Result<Line> {
    let mut buf = Vec::new();
    let mut total: usize = 0;
    loop {
        let avail = r.fill_buf().await?;
        if avail.is_empty() {
            return Ok(Line::Eof);
        }
        let (n, found) = match avail.iter().position(|b| *b == b'\n') {
            Some(i) => (i, true),
            None => (avail.len(), false),
        };
        let room = max.saturating_sub(buf.len());
        buf.extend_from_slice(&avail[..n.min(room)]);
        total = total.saturating_add(n);
        r.consume(if found { n + 1 } else { n });
        if found {
            return Ok(if total > max { Line::TooLong(buf, total) } else { Line::Full(buf) });
        }
    }
}

// ---- params ---------------------------------------------------------------

/// `initialize` params (everything but the per-start fields).
#[derive(Serialize)]
pub struct RoleWire {
    pub name: String,
    pub scopes: Vec<String>,
    pub max_ttl_seconds: u64,
    pub config: Value,
}

/// A wire type's JSON (the SDK's serde types: stable names, RFC 3339 times).
fn wire<T: Serialize>(what: &str, v: &T) -> Result<Value, PluginError> {
    serde_json::to_value(v).map_err(|e| PluginError::InvalidRequest(format!("cannot write the `{what}` params: {e}")))
}

pub fn issue_params(req: &IssueRequest) -> Result<Value, PluginError> {
    wire("issue", req)
}

pub fn lease_params(l: &LeaseRef) -> Result<Value, PluginError> {
    wire("revoke", l)
}

pub fn renew_params(req: &RenewRequest) -> Result<Value, PluginError> {
    wire("renew", req)
}

// ---- results --------------------------------------------------------------

/// A result that does not have the shape the protocol says.
fn bad(method: &str, what: String) -> PluginError {
    PluginError::Permanent(format!("the plugin answered `{method}` with a malformed result: {what}"))
}

fn obj<'a>(method: &str, v: &'a Value) -> Result<&'a Map<String, Value>, PluginError> {
    v.as_object().ok_or_else(|| bad(method, "the result is not an object".into()))
}

fn time_field(method: &str, o: &Map<String, Value>, field: &str) -> Result<OffsetDateTime, PluginError> {
    let s = o
        .get(field)
        .ok_or_else(|| bad(method, format!("`{field}` is missing")))?
        .as_str()
        .ok_or_else(|| bad(method, format!("`{field}` is not a string")))?;
    let t = OffsetDateTime::parse(s, &Rfc3339).map_err(|_| bad(method, format!("`{field}` is not an RFC 3339 time")))?;
    // Bounded like every time from a vendor: years 1970..=9999.
    if !(1970..=9999).contains(&t.year()) {
        return Err(bad(method, format!("`{field}` is outside the years 1970..=9999")));
    }
    Ok(t)
}

fn string_map(method: &str, o: &Map<String, Value>, field: &str) -> Result<BTreeMap<String, String>, PluginError> {
    match o.get(field) {
        None | Some(Value::Null) => Ok(BTreeMap::new()),
        Some(Value::Object(m)) => m
            .iter()
            .map(|(k, v)| match v {
                Value::String(s) => Ok((k.clone(), s.clone())),
                _ => Err(bad(method, format!("`{field}.{}` is not a string", clean(k, 64)))),
            })
            .collect(),
        Some(_) => Err(bad(method, format!("`{field}` is not an object"))),
    }
}

/// `issue`'s result: `{handle, public, secret, expires_at, root_version}`.
pub fn issued(v: Value) -> Result<Issued, PluginError> {
    const M: &str = "issue";
    let o = obj(M, &v)?;
    let handle: Handle = o.get("handle").cloned().ok_or_else(|| bad(M, "`handle` is missing (use null for none)".into()))?;
    let public = match o.get("public") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(m)) => m.clone(),
        Some(_) => return Err(bad(M, "`public` is not an object".into())),
    };
    let secret: BTreeMap<String, SecretString> =
        string_map(M, o, "secret")?.into_iter().map(|(k, v)| (k, SecretString::from(v))).collect();
    if let Some(k) = secret.keys().find(|k| public.contains_key(*k)) {
        return Err(bad(M, format!("`{}` is both a public and a secret field", clean(k, 64))));
    }
    let expires_at = time_field(M, o, "expires_at")?;
    let root_version = match o.get("root_version") {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) => Some(n.as_i64().ok_or_else(|| bad(M, "`root_version` is not an integer".into()))?),
        Some(_) => return Err(bad(M, "`root_version` is not an integer".into())),
    };
    Ok(Issued { handle, public, secret, expires_at, root_version })
}

/// `renew`'s result: `{expires_at}`.
pub fn renewed(v: Value) -> Result<OffsetDateTime, PluginError> {
    time_field("renew", obj("renew", &v)?, "expires_at")
}

/// `validate`'s (and `validate_root`'s) result: `{identity, details, warnings}`.
pub fn validation(method: &'static str, v: Value) -> Result<Validation, PluginError> {
    let o = obj(method, &v)?;
    let identity = match o.get("identity") {
        Some(Value::String(s)) if !s.trim().is_empty() => clean(s, 256),
        Some(Value::String(_)) => return Err(bad(method, "`identity` is empty".into())),
        Some(_) => return Err(bad(method, "`identity` is not a string".into())),
        None => return Err(bad(method, "`identity` is missing".into())),
    };
    let details = string_map(method, o, "details")?.into_iter().map(|(k, v)| (clean(&k, 64), clean(&v, 256))).collect();
    let warnings = match o.get("warnings") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(a)) => a
            .iter()
            .enumerate()
            .map(|(i, w)| w.as_str().map(|s| clean(s, 512)).ok_or_else(|| bad(method, format!("`warnings[{i}]` is not a string"))))
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(bad(method, "`warnings` is not an array".into())),
    };
    Ok(Validation { identity, details, warnings })
}

/// `list`'s result: `{objects: [{name, lease_id}]}`, at most `limit`
/// objects, names ascending (byte order) and after `after`.
pub fn listed(v: Value, after: Option<&str>, limit: u32) -> Result<Vec<VendorObject>, PluginError> {
    const M: &str = "list";
    let o = obj(M, &v)?;
    let Some(Value::Array(a)) = o.get("objects") else {
        return Err(bad(M, "`objects` is missing or not an array".into()));
    };
    if a.len() > limit as usize {
        return Err(bad(M, format!("{} objects, more than the `limit` of {limit}", a.len())));
    }
    let objects = a
        .iter()
        .enumerate()
        .map(|(i, x)| {
            let name = x.get("name").and_then(Value::as_str).ok_or_else(|| bad(M, format!("`objects[{i}].name` is not a string")))?;
            let lease_id = match x.get("lease_id") {
                None | Some(Value::Null) => None,
                Some(Value::String(s)) => Some(lessor_plugin::LeaseId::new(s.clone())),
                Some(_) => return Err(bad(M, format!("`objects[{i}].lease_id` is not a string"))),
            };
            Ok(VendorObject { name: name.to_owned(), lease_id })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut prev = after.unwrap_or("");
    for (i, x) in objects.iter().enumerate() {
        if x.name.as_str() <= prev {
            return Err(bad(M, format!("`objects[{i}].name` is not after the one before it (or after `after`): names must ascend")));
        }
        prev = &x.name;
    }
    Ok(objects)
}

/// The plugin's half of the handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handshake {
    pub protocol_version: u32,
    /// The plugin's own name for itself (`sqlite-accounts`); shown, never
    /// used to pick code.
    pub kind: String,
    pub can_renew: bool,
    pub can_revoke: bool,
    pub revocation: Revocation,
    pub can_list: bool,
    pub manages_root: bool,
    /// What the managed root credential is, for its owner
    /// (`capabilities.root_describes`); `None` when the plugin did not say.
    pub root_describes: Option<String>,
}

/// `initialize`'s result.
pub fn handshake(v: Value) -> Result<Handshake, PluginError> {
    const M: &str = "initialize";
    let mis = |m: String| PluginError::Misconfigured(format!("the plugin's `initialize` answer: {m}"));
    let o = obj(M, &v)?;
    let version = o.get("protocol_version").and_then(Value::as_u64).ok_or_else(|| mis("`protocol_version` is missing or not an integer".into()))?;
    if version != u64::from(PROTOCOL_VERSION) {
        return Err(mis(format!("protocol version {version}, lessor speaks {PROTOCOL_VERSION}")));
    }
    let kind = match o.get("kind").and_then(Value::as_str) {
        Some(k) if !k.is_empty() && k.len() <= 64 && k.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)) => k.to_owned(),
        _ => return Err(mis("`kind` must be 1-64 characters of a-z, 0-9, `-`, `_`, `.`".into())),
    };
    let caps = o.get("capabilities").and_then(Value::as_object).ok_or_else(|| mis("`capabilities` is missing or not an object".into()))?;
    let flag = |name: &str, required: bool| -> Result<bool, PluginError> {
        match caps.get(name) {
            Some(Value::Bool(b)) => Ok(*b),
            None if !required => Ok(false),
            None => Err(mis(format!("`capabilities.{name}` is missing"))),
            Some(_) => Err(mis(format!("`capabilities.{name}` is not a boolean"))),
        }
    };
    let can_renew = flag("can_renew", true)?;
    let can_revoke = flag("can_revoke", true)?;
    let can_list = flag("can_list", false)?;
    let manages_root = flag("manages_root", false)?;
    let rev = caps.get("revocation").and_then(Value::as_object).ok_or_else(|| mis("`capabilities.revocation` is missing or not an object".into()))?;
    // The SDK's `Revocation`, checked here so a message names the field.
    let revocation = match rev.get("mode").and_then(Value::as_str) {
        Some("immediate") => Revocation::Immediate,
        Some("at_expiry") => Revocation::AtExpiry,
        Some("published") => Revocation::Published {
            via: match rev.get("via") {
                Some(Value::String(v)) if !v.trim().is_empty() => clean(v, 64),
                _ => return Err(mis("`capabilities.revocation.via` (how it is published, e.g. \"CRL\") is missing or empty".into())),
            },
            max_delay_seconds: match rev.get("max_delay_seconds") {
                None | Some(Value::Null) => None,
                Some(v) => Some(v.as_u64().ok_or_else(|| mis("`capabilities.revocation.max_delay_seconds` is not a non-negative integer".into()))?),
            },
        },
        _ => return Err(mis("`capabilities.revocation.mode` must be `immediate`, `published` or `at_expiry`".into())),
    };
    let root_describes = match caps.get("root_describes") {
        None | Some(Value::Null) => None,
        Some(Value::String(d)) if !d.trim().is_empty() => Some(clean(d, 256)),
        Some(_) => return Err(mis("`capabilities.root_describes` is not a non-empty string".into())),
    };
    if can_revoke == (revocation == Revocation::AtExpiry) {
        return Err(mis(format!(
            "`capabilities.can_revoke` = {can_revoke} contradicts `revocation.mode` (`at_expiry` means can_revoke = false)"
        )));
    }
    Ok(Handshake { protocol_version: PROTOCOL_VERSION, kind, can_renew, can_revoke, revocation, can_list, manages_root, root_describes })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malformed_lines_are_named_without_quoting_them() {
        let e = parse_incoming(b"{\"password\": \"hunter2\"").unwrap_err();
        assert!(e.contains("not JSON") && !e.contains("hunter2"), "{e}");
        assert!(parse_incoming(b"[1]").unwrap_err().contains("not an object"));
        assert!(parse_incoming(br#"{"id": 1, "result": {}}"#).unwrap_err().contains("jsonrpc"));
        assert!(parse_incoming(br#"{"jsonrpc": "2.0", "id": "a", "result": {}}"#).unwrap_err().contains("not an integer"));
        assert!(parse_incoming(br#"{"jsonrpc": "2.0", "id": 1}"#).unwrap_err().contains("neither `result` nor `error`"));
        assert!(parse_incoming(br#"{"jsonrpc": "2.0", "id": 1, "result": 1, "error": {}}"#).unwrap_err().contains("both"));
        match parse_incoming(br#"{"jsonrpc": "2.0", "id": 7, "error": {"code": -32001, "message": "db\ndown"}}"#).unwrap() {
            Incoming::Response { id: 7, outcome: Err(e) } => {
                assert_eq!(e.code, code::RETRYABLE);
                assert_eq!(e.message, "db down");
                assert!(e.into_plugin_error("issue").is_retryable());
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn results_are_checked_field_by_field_and_secrets_never_quoted() {
        let e = issued(json!({"handle": null, "secret": {"password": 5}, "expires_at": "2030-01-01T00:00:00Z"})).unwrap_err();
        assert!(e.to_string().contains("`secret.password` is not a string"), "{e}");
        let e = issued(json!({"handle": null, "secret": {"password": "hunter2"}, "expires_at": "tomorrow"})).unwrap_err();
        assert!(e.to_string().contains("`expires_at` is not an RFC 3339 time") && !e.to_string().contains("hunter2"));
        let e = issued(json!({"handle": 1, "public": {"p": "x"}, "secret": {"p": "y"}, "expires_at": "2030-01-01T00:00:00Z"})).unwrap_err();
        assert!(e.to_string().contains("both a public and a secret"), "{e}");
        assert!(issued(json!({"secret": {}, "expires_at": "2030-01-01T00:00:00Z"})).unwrap_err().to_string().contains("`handle` is missing"));
        let ok = issued(json!({"handle": {"n": "a"}, "secret": {"password": "hunter2"}, "expires_at": "2030-01-01T00:00:00Z", "root_version": 2})).unwrap();
        assert_eq!(ok.root_version, Some(2));
        assert!(!format!("{ok:?}").contains("hunter2"));
        assert!(validation("validate", json!({"identity": " "})).unwrap_err().to_string().contains("`identity` is empty"));
        assert!(listed(json!({"objects": [{"name": 1}]}), None, 10).unwrap_err().to_string().contains("`objects[0].name`"));
        let two = json!({"objects": [{"name": "a_1", "lease_id": "1"}, {"name": "a_2"}]});
        assert_eq!(listed(two.clone(), None, 10).unwrap()[1].lease_id, None);
        assert!(listed(two.clone(), None, 1).unwrap_err().to_string().contains("more than the `limit` of 1"));
        assert!(listed(two, Some("a_1"), 10).unwrap_err().to_string().contains("names must ascend"));
    }

    #[test]
    fn the_handshake_must_agree_with_itself() {
        let base = json!({"protocol_version": 1, "kind": "k", "capabilities": {"can_renew": true, "can_revoke": true, "revocation": {"mode": "immediate"}}});
        let h = handshake(base.clone()).unwrap();
        assert!(h.can_revoke && !h.can_list && !h.manages_root);
        let mut v2 = base.clone();
        v2["protocol_version"] = json!(2);
        assert!(handshake(v2).unwrap_err().to_string().contains("protocol version 2, lessor speaks 1"));
        let mut c = base.clone();
        c["capabilities"]["revocation"]["mode"] = json!("at_expiry");
        assert!(handshake(c).unwrap_err().to_string().contains("contradicts"));
        let mut k = base.clone();
        k["kind"] = json!("a b");
        assert!(handshake(k).unwrap_err().to_string().contains("`kind`"));
        let mut p = base.clone();
        p["capabilities"]["revocation"] = json!({"mode": "published", "via": "CRL", "max_delay_seconds": 60});
        p["capabilities"]["root_describes"] = json!("the admin password");
        let h = handshake(p.clone()).unwrap();
        assert_eq!(h.revocation, Revocation::Published { via: "CRL".into(), max_delay_seconds: Some(60) });
        assert_eq!(h.root_describes.as_deref(), Some("the admin password"));
        p["capabilities"]["revocation"] = json!({"mode": "published"});
        assert!(handshake(p).unwrap_err().to_string().contains("`capabilities.revocation.via`"));
        let mut d = base;
        d["capabilities"]["revocation"]["mode"] = json!("delayed");
        assert!(handshake(d).unwrap_err().to_string().contains("`immediate`, `published` or `at_expiry`"));
    }

    #[tokio::test]
    async fn lines_are_bounded() {
        let data = format!("short\n{}\ntail-without-newline", "x".repeat(100));
        let mut r = tokio::io::BufReader::with_capacity(16, data.as_bytes());
        assert!(matches!(read_line(&mut r, 50).await.unwrap(), Line::Full(l) if l == b"short"));
        assert!(matches!(read_line(&mut r, 50).await.unwrap(), Line::TooLong(p, 100) if p.len() == 50));
        assert!(matches!(read_line(&mut r, 50).await.unwrap(), Line::Eof));
    }
}
