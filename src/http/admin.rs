//! Admin endpoints: list leases, revoke in bulk, explain a policy decision.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::leases::LeaseDto;
use super::{AdminCaller, ApiError, ApiJson, ApiQuery, AppState, Meta};
use crate::audit::Event;
use crate::policy::casefile::Case;
use crate::store::{LeaseFilter, LeaseState, RevokeFilter};

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    role: Option<String>,
    issuer: Option<String>,
    subject: Option<String>,
    /// `pending`, `active`, `revoking`, `revoke_failed`, `revoked`, `expired`, ...
    state: Option<String>,
    /// Default 100; clamped to 1-10000.
    #[param(minimum = 0, maximum = 4294967295_i64, value_type = Option<i64>)]
    limit: Option<u32>,
}

#[utoipa::path(
    get, path = "/v1/admin/leases", tag = "admin", operation_id = "list_leases",
    params(ListQuery),
    responses((status = 200, description = "Leases matching the filter, newest first.", body = super::openapi::wire::Leases)),
    security(("admin_token" = []), ("client_cert" = []), ("workload_jwt" = [])),
)]
pub async fn list(
    State(st): State<AppState>,
    AdminCaller(actor): AdminCaller,
    Meta(meta): Meta,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Json<Value>, ApiError> {
    let state = q
        .state
        .as_deref()
        .map(str::parse::<LeaseState>)
        .transpose()
        .map_err(|m| ApiError::bad_request("state", m))?;
    let filter = LeaseFilter {
        role: q.role,
        issuer: q.issuer,
        subject: q.subject,
        state,
        limit: q.limit.unwrap_or(100).clamp(1, 10_000),
    };
    let leases = st.leases.list(&actor, &filter, &meta).await?;
    let dtos: Vec<LeaseDto> = leases.iter().map(|l| LeaseDto::of(l, &st.leases.catalog)).collect();
    Ok(Json(json!({ "leases": dtos })))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RevokeReq {
    role: Option<String>,
    issuer: Option<String>,
    subject: Option<String>,
    /// Mapped claims that must match, e.g. {"repository": "acme/api"}.
    #[serde(default)]
    claims: std::collections::BTreeMap<String, String>,
    /// Only leases issued within this long ago, e.g. "1h".
    issued_within: Option<String>,
    /// Must be true to revoke every live lease (no filter).
    #[serde(default)]
    all: bool,
}

/// Starts a bulk revocation job (incident response: "revoke everything
/// repo acme/api got in the last hour"). Answers at once with the job; the
/// expiry worker does the work; `GET /v1/admin/jobs/{id}` shows progress.
#[utoipa::path(
    post, path = "/v1/admin/revoke", tag = "admin", operation_id = "revoke_matching",
    request_body = RevokeReq,
    responses((status = 202, description = "Job started.", body = super::openapi::wire::JobStarted)),
    security(("admin_token" = []), ("client_cert" = []), ("workload_jwt" = [])),
)]
pub async fn revoke_matching(
    State(st): State<AppState>,
    AdminCaller(actor): AdminCaller,
    Meta(meta): Meta,
    ApiJson(req): ApiJson<RevokeReq>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let issued_after_ms = match &req.issued_within {
        Some(w) => {
            let d = crate::duration::parse(w).map_err(|m| ApiError::bad_request("issued_within", m))?;
            if d.is_zero() {
                return Err(ApiError::bad_request("issued_within", "issued_within must be more than 0s"));
            }
            // Bounded to 100 years by the parser, so this cannot underflow;
            // checked all the same.
            let since = crate::duration::sub(time::OffsetDateTime::now_utc(), d)
                .ok_or_else(|| ApiError::bad_request("issued_within", "issued_within reaches before the earliest time lessor can represent"))?;
            Some(crate::store::to_ms(since))
        }
        None => None,
    };
    let filter = RevokeFilter {
        role: req.role,
        issuer: req.issuer,
        subject: req.subject,
        claims: req.claims,
        issued_after_ms,
    };
    if filter.is_empty() && !req.all {
        return Err(ApiError::bad_request(
            "role",
            "name at least one of role, issuer, subject, claims, issued_within; or set \"all\": true to revoke every lease",
        ));
    }
    let (id, n) = st.leases.start_revoke_job(&filter, &actor, &meta).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({ "job_id": id, "scheduled": n, "status": format!("/v1/admin/jobs/{id}") })),
    ))
}

/// A bulk revocation job's progress.
#[utoipa::path(
    get, path = "/v1/admin/jobs/{id}", tag = "admin", operation_id = "show_job",
    params(("id" = String, Path, description = "Job id.")),
    responses((status = 200, description = "The job's progress.", body = super::openapi::wire::Job)),
    security(("admin_token" = []), ("client_cert" = []), ("workload_jwt" = [])),
)]
pub async fn job(
    State(st): State<AppState>,
    AdminCaller(actor): AdminCaller,
    Meta(meta): Meta,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Result<Json<Value>, ApiError> {
    let j = st.leases.job_status(&actor, &id, &meta).await?;
    let rfc = |ms: i64| super::leases::rfc3339(crate::store::from_ms(ms).unwrap_or(time::OffsetDateTime::UNIX_EPOCH));
    // Leases whose plugin cannot revoke are not "done": their credentials
    // stay valid until they expire, and the status says until when.
    let unrevocable = (j.unrevocable > 0).then(|| {
        let until = j.unrevocable_until_ms.map(rfc).unwrap_or_default();
        json!({
            "count": j.unrevocable,
            "valid_until": until,
            "message": format!(
                "{} credential(s) cannot be revoked by their plugin and stay valid until they expire (the last at {until})",
                j.unrevocable
            ),
        })
    });
    Ok(Json(json!({
        "job_id": j.id,
        "kind": j.kind,
        "filter": j.filter,
        "created_by": j.created_by,
        "created_at": super::leases::rfc3339(crate::store::from_ms(j.created_at_ms).unwrap_or(time::OffsetDateTime::UNIX_EPOCH)),
        "total": j.total,
        "done": j.done,
        "pending": j.pending,
        "failing": j.failing,
        "unrevocable": unrevocable,
        "state": match (j.pending + j.failing, j.unrevocable) {
            (0, 0) => "done",
            (0, _) => "done_with_unrevocable",
            _ => "running",
        },
    })))
}

/// `GET /v1/admin/status`: what `lessor status` prints.
#[utoipa::path(
    get, path = "/v1/admin/status", tag = "admin", operation_id = "status",
    responses((status = 200, description = "Lease counts, overdue and failing revocations, quotas, replicas.", body = super::openapi::wire::Status)),
    security(("admin_token" = []), ("client_cert" = []), ("workload_jwt" = [])),
)]
pub async fn status(State(st): State<AppState>, AdminCaller(_): AdminCaller) -> Result<Json<Value>, ApiError> {
    let s = st.leases.status().await?;
    let rfc = super::leases::rfc3339;
    let counts: Vec<Value> =
        s.counts.iter().map(|(role, plugin, state, n)| json!({"role": role, "plugin": plugin, "state": state.as_str(), "count": n})).collect();
    let overdue = s.oldest_overdue.as_ref().map(|l| {
        json!({
            "lease_id": l.id.to_string(),
            "role": l.role,
            "state": l.state.as_str(),
            "expires_at": rfc(l.expires_at),
            "overdue_seconds": (s.now - l.expires_at).whole_seconds().max(0),
            "attempts": l.attempts,
            "last_error": l.last_error,
        })
    });
    let failing: Vec<Value> = s
        .failing
        .iter()
        .map(|l| {
            json!({
                "lease_id": l.id.to_string(),
                "role": l.role,
                "attempts": l.attempts,
                "last_error": l.last_error,
                "next_attempt_at": l.next_attempt_at.map(rfc),
            })
        })
        .collect();
    let quotas: Vec<Value> = s.quotas.iter().map(|q| json!({"quota": q.quota, "used": q.used, "limit": q.limit})).collect();
    let versions: std::collections::BTreeSet<&str> = s.replicas.iter().map(|r| r.policy_version.as_str()).collect();
    let connection_warnings: Vec<String> = match &st.leases.roots {
        Some(r) => r.views().await?.into_iter().flat_map(|v| v.warnings).collect(),
        None => Vec::new(),
    };
    // This replica's open revocation circuit breakers (each replica learns
    // for itself).
    let breakers: Vec<Value> = st
        .leases
        .breakers
        .open()
        .into_iter()
        .map(|b| json!({"connection": b.connection, "since": rfc(b.since), "next_probe_at": rfc(b.until), "last_error": b.last_error}))
        .collect();
    // What revoking means per vendor, so nobody reads `revoked` as "stopped
    // working everywhere" where it is only published.
    let revocation: Vec<Value> = st
        .leases
        .catalog
        .connections
        .iter()
        .map(|(name, p)| {
            let r = p.capabilities().revocation;
            json!({"connection": name, "plugin": p.kind(), "mode": r.mode(), "description": r.describe()})
        })
        .collect();
    Ok(Json(json!({
        "time": rfc(s.now),
        "revocation": revocation,
        "connection_warnings": connection_warnings,
        "breakers": breakers,
        "leases": counts,
        "oldest_overdue": overdue,
        "failing": failing,
        "quotas": quotas,
        "replicas": s.replicas.len(),
        "policy_versions_agree": versions.len() <= 1,
        "audit_write_failures": crate::telemetry::metrics().audit_write_failures.get(),
    })))
}

/// `GET /v1/admin/replicas`: the lessor processes alive on this store, the
/// policy version each decides with, and whether they agree.
#[utoipa::path(
    get, path = "/v1/admin/replicas", tag = "admin", operation_id = "list_replicas",
    responses((status = 200, description = "Live replicas and their policy versions.", body = super::openapi::wire::Replicas)),
    security(("admin_token" = []), ("client_cert" = []), ("workload_jwt" = [])),
)]
pub async fn replicas(State(st): State<AppState>, AdminCaller(_): AdminCaller) -> Result<Json<Value>, ApiError> {
    let live = st.leases.replicas().await?;
    let versions: std::collections::BTreeSet<&str> = live.iter().map(|r| r.policy_version.as_str()).collect();
    let at = |ms: i64| super::leases::rfc3339(crate::store::from_ms(ms).unwrap_or(time::OffsetDateTime::UNIX_EPOCH));
    let list: Vec<Value> = live
        .iter()
        .map(|r| {
            json!({
                "replica_id": r.id,
                "host": r.host,
                "pid": r.pid,
                "version": r.version,
                "policy_version": r.policy_version,
                "started_at": at(r.started_at_ms),
                "seen_at": at(r.seen_at_ms),
                "this": r.id == st.store.replica_id(),
            })
        })
        .collect();
    Ok(Json(json!({
        "replicas": list,
        "policy_versions": versions,
        "policy_versions_agree": versions.len() <= 1,
    })))
}

/// Explains one decision (a policy test case) against the live policies.
#[utoipa::path(
    post, path = "/v1/policy/explain", tag = "admin", operation_id = "explain_policy",
    request_body = super::openapi::wire::ExplainCase,
    responses((status = 200, description = "The decision with its explanation.", body = super::openapi::wire::Decision)),
    security(("admin_token" = []), ("client_cert" = []), ("workload_jwt" = [])),
)]
pub async fn explain(
    State(st): State<AppState>,
    AdminCaller(actor): AdminCaller,
    Meta(meta): Meta,
    ApiJson(case): ApiJson<Case>,
) -> Result<Json<Value>, ApiError> {
    // The case is the admin's free text: recorded only as its HMAC.
    let text = format!("{case:?}");
    let ev = Event::new("admin.policy_explain", "ok").request(Some(&meta)).actor(actor.audit_info());
    st.leases.audit.note(ev.detail("case", st.leases.audit.hash(text.as_bytes())));
    let roles: BTreeMap<String, crate::policy::RoleInfo> =
        st.leases.catalog.roles.values().map(|r| (r.name.clone(), r.info.clone())).collect();
    let connections: BTreeMap<String, crate::policy::ConnectionInfo> = st
        .leases
        .roots
        .as_deref()
        .map(|r| r.connection_infos().into_iter().map(|c| (c.name.clone(), c)).collect())
        .unwrap_or_default();
    let request = case.to_request(&roles, &connections).map_err(|e| ApiError::bad_request(e.field, e.message))?;
    let d = st
        .leases
        .policy
        .current()
        .decide_case(&request)
        .map_err(|e| ApiError::bad_request("case", e.to_string()))?;
    Ok(Json(serde_json::to_value(&d).map_err(|e| ApiError::internal("serializing decision", e))?))
}

/// `POST /v1/admin/reconcile` (`lessor reconcile`): runs one reconcile pass
/// now and answers with its report: per connection, the vendor objects
/// listed, the strays found (object name, lease id, why, what was done)
/// and the active leases whose object is missing.
#[utoipa::path(
    post, path = "/v1/admin/reconcile", tag = "admin", operation_id = "reconcile",
    responses(
        (status = 200, description = "The pass's report.", body = super::openapi::wire::ReconcileReport),
    ),
    security(("admin_token" = []), ("client_cert" = []), ("workload_jwt" = [])),
)]
pub async fn reconcile(
    State(st): State<AppState>,
    AdminCaller(actor): AdminCaller,
    Meta(meta): Meta,
) -> Result<Json<Value>, ApiError> {
    use crate::lease::reconcile::{ReconcileError, StrayOutcome, Trigger};
    let rfc = super::leases::rfc3339;
    // Its own task: a client that hangs up (or the request timeout) does
    // not cut the pass between a revocation and its audit entry.
    let rec = st.reconciler.clone();
    let trigger = Trigger::Admin(actor.audit_info());
    let run = tokio::spawn(async move { rec.pass(trigger).await })
        .await
        .map_err(|e| ApiError::internal("reconcile pass task", e))?;
    let report = match run {
        Ok(r) => r,
        Err(ReconcileError::Busy) => {
            return Err(ApiError::new(StatusCode::CONFLICT, "conflict", ReconcileError::Busy.to_string()))
        }
        Err(ReconcileError::Store(e)) => return Err(e.into()),
    };
    let mut strays_total = 0usize;
    let mut missing_total = 0usize;
    let connections: Vec<Value> = report
        .connections
        .iter()
        .map(|c| {
            strays_total += c.strays.len();
            missing_total += c.missing_count;
            let strays: Vec<Value> = c
                .strays
                .iter()
                .map(|s| {
                    let (revoke_after, error) = match &s.outcome {
                        StrayOutcome::Waiting(t) => (Some(rfc(*t)), None),
                        StrayOutcome::Failed(e) => (None, Some(e.clone())),
                        _ => (None, None),
                    };
                    json!({
                        "object": s.name,
                        "lease_id": s.lease_id.as_ref().map(|l| l.to_string()),
                        "reason": s.kind.as_str(),
                        "outcome": s.outcome.as_str(),
                        "revoke_after": revoke_after,
                        "error": error,
                    })
                })
                .collect();
            json!({
                "connection": c.connection,
                "plugin": c.plugin,
                "status": c.status,
                "error": c.error,
                "objects": c.objects,
                "strays": strays,
                "missing_count": c.missing_count,
                "missing": c.missing.iter().map(|l| l.to_string()).collect::<Vec<_>>(),
                "truncated": c.truncated,
            })
        })
        .collect();
    let ev = Event::new("admin.reconcile", "ok")
        .request(Some(&meta))
        .actor(actor.audit_info())
        .detail("strays", strays_total)
        .detail("missing", missing_total);
    st.leases.audit.note(ev);
    Ok(Json(json!({
        "started_at": rfc(report.started_at),
        "finished_at": rfc(report.finished_at),
        "grace_seconds": report.grace.as_secs(),
        "clean": report.clean(),
        "connections": connections,
    })))
}
