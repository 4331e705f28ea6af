//! Vault's `sys/` paths: health, seal status and leader (what clients call
//! before anything else), mounts (what a mount path is), and leases.

use axum::extract::{Request, State};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};
use time::OffsetDateTime;

use super::{Envelope, VaultError, VaultRequest, VaultState};
use crate::http::AppState;
use crate::principal::Actor;
use crate::store::LeaseState;

/// A stable id for this deployment's "cluster": its store.
fn cluster_id(st: &AppState) -> String {
    use sha2::Digest;
    let h = sha2::Sha256::digest(format!("lessor:{}", st.store.backend()).as_bytes());
    let h = hex::encode(&h[..16]);
    format!("{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32])
}

/// lessor is ready when it reaches its store; while it cannot it reports
/// itself sealed (it can serve nothing), so Vault-aware load balancers and
/// agents stop sending to it.
async fn sealed(st: &AppState) -> bool {
    st.store.ping().await.is_err()
}

/// `GET|HEAD /v1/sys/health`, with Vault's `*code` query parameters. Every
/// replica is active (lessor has no standbys).
pub async fn health(State(st): State<AppState>, req: Request) -> Response {
    if !matches!(*req.method(), Method::GET | Method::HEAD) {
        return VaultError::method(req.method(), "sys/health").into_response();
    }
    let codes: Vec<(String, String)> = req
        .uri()
        .query()
        .map(|q| serde_urlencoded::from_str(q).unwrap_or_default())
        .unwrap_or_default();
    let code = |name: &str, default: u16| -> Result<StatusCode, VaultError> {
        match codes.iter().find(|(k, _)| k == name) {
            None => Ok(StatusCode::from_u16(default).unwrap_or(StatusCode::OK)),
            Some((_, v)) => v
                .parse::<u16>()
                .ok()
                .filter(|c| (100..600).contains(c))
                .and_then(|c| StatusCode::from_u16(c).ok())
                .ok_or_else(|| VaultError::bad_request(format!("invalid {name}: `{}`", v.escape_debug()))),
        }
    };
    let is_sealed = sealed(&st).await;
    let status = if is_sealed { code("sealedcode", 503) } else { code("activecode", 200) };
    let status = match status {
        Ok(s) => s,
        Err(e) => return e.into_response(),
    };
    let now = OffsetDateTime::now_utc();
    let body = json!({
        "initialized": true,
        "sealed": is_sealed,
        "standby": false,
        "performance_standby": false,
        "replication_performance_mode": "disabled",
        "replication_dr_mode": "disabled",
        "server_time_utc": now.unix_timestamp(),
        "version": env!("CARGO_PKG_VERSION"),
        "enterprise": false,
        "cluster_name": "lessor",
        "cluster_id": cluster_id(&st),
    });
    if req.method() == Method::HEAD {
        return status.into_response();
    }
    (status, axum::Json(body)).into_response()
}

/// `GET /v1/sys/seal-status`.
pub async fn seal_status(State(st): State<AppState>, req: Request) -> Response {
    if req.method() != Method::GET {
        return VaultError::method(req.method(), "sys/seal-status").into_response();
    }
    let body = json!({
        "type": "shamir",
        "initialized": true,
        "sealed": sealed(&st).await,
        "t": 1,
        "n": 1,
        "progress": 0,
        "nonce": "",
        "version": env!("CARGO_PKG_VERSION"),
        "build_date": "",
        "migration": false,
        "cluster_name": "lessor",
        "cluster_id": cluster_id(&st),
        "recovery_seal": false,
        "storage_type": st.store.backend(),
    });
    axum::Json(body).into_response()
}

/// `GET /v1/sys/leader`: no HA in Vault's sense (every replica serves).
pub async fn leader(req: Request) -> Response {
    if req.method() != Method::GET {
        return VaultError::method(req.method(), "sys/leader").into_response();
    }
    axum::Json(json!({ "ha_enabled": false })).into_response()
}

fn mount_entry(path: &str, m: &super::Mount) -> Value {
    json!({
        "type": m.vault_type(),
        "description": format!("lessor connection `{}` ({} plugin)", m.connection, m.kind),
        "accessor": format!("{}_{}", m.vault_type(), path),
        "config": { "default_lease_ttl": 0, "max_lease_ttl": 0, "force_no_cache": false },
        "options": Value::Null,
        "local": false,
        "seal_wrap": false,
        "external_entropy_access": false,
        "plugin_version": "",
        "running_plugin_version": "",
        "running_sha256": "",
        "uuid": "",
    })
}

/// `GET /v1/sys/mounts`: the mapped mounts (a token is required).
pub async fn mounts(vs: &VaultState, st: &AppState, r: &mut VaultRequest) -> Result<Response, VaultError> {
    super::session(st, r).await?;
    let mut data = serde_json::Map::new();
    for (p, m) in &vs.mounts {
        data.insert(format!("{p}/"), mount_entry(p, m));
    }
    // Vault answers the mounts both at the top level and under `data`.
    let mut body = serde_json::Map::new();
    body.extend(data.clone());
    body.insert("request_id".into(), json!(r.meta.request_id));
    body.insert("lease_id".into(), json!(""));
    body.insert("renewable".into(), json!(false));
    body.insert("lease_duration".into(), json!(0));
    body.insert("data".into(), Value::Object(data));
    body.insert("wrap_info".into(), Value::Null);
    body.insert("warnings".into(), Value::Null);
    body.insert("auth".into(), Value::Null);
    Ok(axum::Json(Value::Object(body)).into_response())
}

/// `GET /v1/sys/internal/ui/mounts/<path>`: which mount a path is under
/// (the CLI and Agent templates ask before reading, to tell KV v2 apart).
pub async fn ui_mount(vs: &VaultState, st: &AppState, r: &mut VaultRequest, path: &str) -> Result<Response, VaultError> {
    super::session(st, r).await?;
    let first = path.split('/').next().unwrap_or("");
    let Some(m) = vs.mounts.get(first) else {
        return Err(VaultError::denied_because(format!(
            "preflight capability check returned 403: no mount at `{}`",
            path.chars().take(128).collect::<String>().escape_debug()
        )));
    };
    let mut data = mount_entry(first, m);
    if let Some(o) = data.as_object_mut() {
        o.insert("path".into(), json!(format!("{first}/")));
    }
    Ok(Envelope::data(data).respond(&r.meta))
}

/// The lessor lease id in a Vault lease id (`<mount>/creds/<role>/<id>`):
/// its last segment.
fn lessor_lease_id(vault_id: &str) -> Result<&str, VaultError> {
    let id = vault_id.rsplit('/').next().unwrap_or("");
    if !id.starts_with("lse_") || id.len() > 64 || !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(VaultError::bad_request("invalid lease ID: lessor lease ids end in `/lse_<hex>`"));
    }
    Ok(id)
}

/// `sys/leases/{renew,revoke,lookup}`, the lease id in the body (hvac) or
/// the path (the CLI).
pub async fn lease(st: &AppState, r: &mut VaultRequest, op: &str, path_id: &str) -> Result<Response, VaultError> {
    let (session, _) = super::session(st, r).await?;
    let vault_id = if path_id.is_empty() { r.str_field("lease_id")?.unwrap_or_default() } else { path_id.to_owned() };
    if vault_id.is_empty() {
        return Err(VaultError::bad_request("missing lease_id"));
    }
    let id = lessor_lease_id(&vault_id)?;
    let actor = Actor::Workload(crate::vault::workload(&session));
    let meta = r.meta.clone();
    match op {
        "renew" => {
            let increment = super::parse_duration("increment", r.body.get("increment"))?;
            let renewed = st.leases.renew_capped(&actor, id, increment, &meta).await?;
            let now = OffsetDateTime::now_utc();
            let left = (renewed.lease.expires_at - now).whole_seconds().max(0);
            let mut env = Envelope::data(Value::Null);
            env.lease_id = vault_id.clone();
            env.renewable = renewed.lease.expires_at < renewed.lease.max_expires_at;
            env.lease_duration = left;
            if renewed.capped {
                env.warnings.push(format!(
                    "TTL of \"{}\" exceeded the effective max_ttl of \"{}\"; TTL value is capped accordingly",
                    crate::fmt_duration(renewed.asked),
                    crate::fmt_duration(std::time::Duration::from_secs(left.unsigned_abs()))
                ));
            }
            Ok(env.respond(&r.meta))
        }
        "lookup" => {
            let l = st.leases.get(&actor, id, &meta).await?;
            let now = OffsetDateTime::now_utc();
            if !(l.state == LeaseState::Active && l.expires_at > now) {
                // Vault's answer for a lease that has ended.
                return Err(VaultError::bad_request("invalid lease"));
            }
            let renewable = l.expires_at < l.max_expires_at
                && st.leases.catalog.role(&l.role).is_some_and(|r| r.plugin.capabilities().can_renew);
            let path = vault_id.rsplit_once('/').map(|(p, _)| p).unwrap_or_default();
            let data = json!({
                "id": vault_id,
                "path": path,
                "issue_time": crate::http::leases_rfc3339(l.issued_at),
                "expire_time": crate::http::leases_rfc3339(l.expires_at),
                "last_renewal": Value::Null,
                "renewable": renewable,
                "ttl": (l.expires_at - now).whole_seconds().max(0),
            });
            Ok(Envelope::data(data).respond(&r.meta))
        }
        _ => {
            let l = st.leases.revoke(&actor, id, &meta).await?;
            let sync = r.body.get("sync").and_then(Value::as_bool);
            if l.state.is_live() {
                if sync == Some(false) {
                    // Queued: the expiry worker retries until it is done.
                    return Ok(StatusCode::ACCEPTED.into_response());
                }
                return Err(VaultError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!(
                        "lease `{vault_id}`: the vendor did not confirm the revocation ({}); lessor retries it until it does",
                        l.last_error.unwrap_or_default()
                    ),
                ));
            }
            if sync == Some(false) {
                return Ok(StatusCode::ACCEPTED.into_response());
            }
            Ok(StatusCode::NO_CONTENT.into_response())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vault_lease_ids_map_to_lessor_ids() {
        assert_eq!(lessor_lease_id("database/creds/app/lse_0a1b").unwrap(), "lse_0a1b");
        assert_eq!(lessor_lease_id("lse_ff").unwrap(), "lse_ff");
        for bad in ["", "database/creds/app/", "database/creds/app/123", "x/lse_a;b", "lse_../x"] {
            assert!(lessor_lease_id(bad).is_err(), "{bad}");
        }
    }
}
