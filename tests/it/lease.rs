//! Lease lifecycle: expiry without a request, cleanup of leases left
//! pending by a crash, ownership.

use std::time::Duration;

use lessor::store::{Lease, LeaseState};
use lessor_plugin::{IssueRequest, Workload};
use serde_json::json;
use time::OffsetDateTime;

use crate::support::{Daemon, Issuer, Opts};

#[tokio::test]
async fn expiry_revokes_without_a_request() {
    let iss = Issuer::start().await;
    let d = Daemon::start(&iss).await;
    let jwt = iss.token();
    let (s, tok) = d.issue(&jwt, json!({"role": "token/orders", "ttl": "2s"})).await;
    assert_eq!(s, 201, "{tok}");
    let (s, cert) = d.issue(&jwt, json!({"role": "pki/web", "ttl": "2s"})).await;
    assert_eq!(s, 201, "{cert}");
    let token = tok["credential"]["token"].as_str().unwrap();
    let serial = cert["credential"]["serial"].as_str().unwrap().to_lowercase();
    assert_eq!(d.introspect(token).await["active"], true);

    for id in [tok["lease_id"].as_str().unwrap(), cert["lease_id"].as_str().unwrap()] {
        let st = Daemon::eventually(Duration::from_secs(8), || async {
            let s = d.lease_state(id).await;
            (s == "expired").then_some(s)
        })
        .await;
        assert_eq!(st.as_deref(), Some("expired"), "lease {id} expired by the worker");
    }
    assert_eq!(d.introspect(token).await, json!({"active": false}));
    // Expired is not revoked: a CRL lists only certificates revoked before
    // their notAfter.
    assert!(!d.crl_serials("pki/web").await.contains(&serial), "expired certificate's serial is not on the CRL");
}

fn pending_lease(id: &lessor_plugin::LeaseId, role: &str, plugin: &str, subject: &str) -> Lease {
    let now = OffsetDateTime::now_utc();
    Lease {
        id: id.clone(),
        role: role.into(),
        plugin: plugin.into(),
        issuer: "https://crash.example".into(),
        subject: subject.into(),
        claims: json!({}),
        scopes: vec![],
        policies: vec![],
        state: LeaseState::Pending,
        issued_at: now,
        expires_at: now + Duration::from_secs(3600),
        max_expires_at: now + Duration::from_secs(3600),
        handle: None,
        attempts: 0,
        last_error: None,
        next_attempt_at: None,
        end_reason: None,
        ended_at: None,
        root_version: None,
    }
}

#[tokio::test]
async fn a_lease_pending_at_a_crash_is_revoked_on_restart() {
    let iss = Issuer::start().await;
    let opts = Opts { issuer_url: iss.url.clone(), ..Default::default() };
    let mut d = Daemon::start_with(opts).await;

    // Simulate a crash between "the vendor created it" and "the lease turned
    // active": write the pending row, have the plugins create credentials,
    // then stop before activation.
    let svc = d.running().leases.clone();
    let tok_id = lessor::lease::new_lease_id();
    let pki_id = lessor::lease::new_lease_id();
    svc.store.insert_pending(&pending_lease(&tok_id, "token/orders", "token", "crashy")).await.unwrap();
    svc.store.insert_pending(&pending_lease(&pki_id, "pki/web", "pki", "crashy")).await.unwrap();
    let workload = Workload {
        issuer: "https://crash.example".into(),
        subject: "crashy".into(),
        attributes: [("repository".to_string(), "acme/api".to_string()), ("repository_owner".to_string(), "acme".to_string())].into(),
    };
    let req = |id: &lessor_plugin::LeaseId, role: &str| IssueRequest {
        lease_id: id.clone(),
        role: role.into(),
        workload: workload.clone(),
        scopes: vec!["orders.read".into()],
        expires_at: OffsetDateTime::now_utc() + Duration::from_secs(3600),
        params: Default::default(),
    };
    let tok = svc.catalog.role("token/orders").unwrap().plugin.issue(req(&tok_id, "orders")).await.unwrap();
    let cert = svc.catalog.role("pki/web").unwrap().plugin.issue(req(&pki_id, "web")).await.unwrap();
    let token = secrecy::ExposeSecret::expose_secret(&tok.secret["token"]).to_owned();
    let serial = cert.public["serial"].as_str().unwrap().to_lowercase();
    drop(svc); // holds the store (and SQLite's lock) open
    d.stop().await;

    // While it was down nothing could clean up; the token still introspects
    // active on restart until the worker revokes the orphan.
    let d2 = Daemon::start_in(&d.dir, &Opts { issuer_url: iss.url.clone(), ..Default::default() }).await;
    for id in [&tok_id, &pki_id] {
        let st = Daemon::eventually(Duration::from_secs(5), || async {
            let s = d2.lease_state(id.as_str()).await;
            (s == "revoked").then_some(s)
        })
        .await;
        assert_eq!(st.as_deref(), Some("revoked"), "orphaned lease {id} revoked at restart");
    }
    let (_, l) = d2.get(&format!("/v1/leases/{tok_id}"), &d2.admin).await;
    assert_eq!(l["end_reason"], "orphaned");
    assert_eq!(d2.introspect(&token).await, json!({"active": false}));
    assert!(d2.crl_serials("pki/web").await.contains(&serial));
}

#[tokio::test]
async fn another_workload_cannot_read_renew_or_revoke_a_lease() {
    let iss = Issuer::start().await;
    let d = Daemon::start(&iss).await;
    let owner = iss.token();
    let (s, v) = d.issue(&owner, json!({"role": "token/orders"})).await;
    assert_eq!(s, 201);
    let id = v["lease_id"].as_str().unwrap();
    let other = iss.sign(&iss.gh_claims("acme/web", "refs/heads/main"));
    let (s, e) = d.get(&format!("/v1/leases/{id}"), &other).await;
    assert_eq!(s, 404, "{e}");
    let (s, _) = d.post(&format!("/v1/leases/{id}/renew"), &other, json!({})).await;
    assert_eq!(s, 404);
    let (s, _) = d.delete(&format!("/v1/leases/{id}"), &other).await;
    assert_eq!(s, 404);
    assert_eq!(d.lease_state(id).await, "active");
    // The owner and an admin can.
    let (s, _) = d.get(&format!("/v1/leases/{id}"), &owner).await;
    assert_eq!(s, 200);
    let (s, v) = d.delete(&format!("/v1/leases/{id}"), &d.admin).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["state"], "revoked");
    // Revoking again is fine and changes nothing.
    let (s, v) = d.delete(&format!("/v1/leases/{id}"), &owner).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["state"], "revoked");
}

#[tokio::test]
async fn bulk_revocation_by_subject_leaves_others_alone() {
    let iss = Issuer::start().await;
    let d = Daemon::start(&iss).await;
    let a = iss.token();
    let b = iss.sign(&iss.gh_claims("acme/web", "refs/heads/main"));
    let mut a_ids = Vec::new();
    for _ in 0..3 {
        let (s, v) = d.issue(&a, json!({"role": "token/orders"})).await;
        assert_eq!(s, 201);
        a_ids.push(v["lease_id"].as_str().unwrap().to_owned());
    }
    let (s, v) = d.issue(&b, json!({"role": "token/orders"})).await;
    assert_eq!(s, 201);
    let b_id = v["lease_id"].as_str().unwrap().to_owned();

    let (s, v) = d.post("/v1/admin/revoke", &d.admin, json!({})).await;
    assert_eq!(s, 400, "a filterless bulk revoke needs all=true: {v}");
    let (s, v) = d.post("/v1/admin/revoke", &d.admin, json!({"subject": "repo:acme/api:ref:refs/heads/main"})).await;
    assert_eq!(s, 202, "{v}");
    assert_eq!(v["scheduled"], 3);
    for id in &a_ids {
        let st = Daemon::eventually(Duration::from_secs(5), || async {
            let s = d.lease_state(id).await;
            (s == "revoked").then_some(s)
        })
        .await;
        assert_eq!(st.as_deref(), Some("revoked"));
    }
    assert_eq!(d.lease_state(&b_id).await, "active");
}

/// Incident response: "revoke everything repo acme/api got in the last
/// hour" is an async job whose progress any admin can follow.
#[tokio::test]
async fn bulk_revocation_by_claim_runs_as_a_job_with_progress() {
    let iss = Issuer::start().await;
    let d = Daemon::start(&iss).await;
    let api_main = iss.token();
    let api_dev = iss.sign(&iss.gh_claims("acme/api", "refs/heads/dev"));
    let web = iss.sign(&iss.gh_claims("acme/web", "refs/heads/main"));
    let mut api_ids = Vec::new();
    for _ in 0..4 {
        let (s, v) = d.issue(&api_main, json!({"role": "token/orders"})).await;
        assert_eq!(s, 201, "{v}");
        api_ids.push(v["lease_id"].as_str().unwrap().to_owned());
    }
    // A different subject (dev branch) of the same repository is included.
    let (s, v) = d.issue(&api_dev, json!({"role": "token/orders"})).await;
    assert_eq!(s, 201, "{v}");
    api_ids.push(v["lease_id"].as_str().unwrap().to_owned());
    let (_, w) = d.issue(&web, json!({"role": "token/orders"})).await;
    let web_id = w["lease_id"].as_str().unwrap().to_owned();

    let (s, v) = d
        .post("/v1/admin/revoke", &d.admin, json!({"claims": {"repository": "acme/api"}, "issued_within": "1h"}))
        .await;
    assert_eq!(s, 202, "{v}");
    assert_eq!(v["scheduled"], 5);
    let status = v["status"].as_str().unwrap().to_owned();
    let done = Daemon::eventually(Duration::from_secs(10), || async {
        let (s, j) = d.get(&status, &d.admin).await;
        assert_eq!(s, 200, "{j}");
        assert_eq!(j["total"], 5);
        assert_eq!(j["done"].as_i64().unwrap() + j["pending"].as_i64().unwrap() + j["failing"].as_i64().unwrap(), 5);
        (j["state"] == "done").then_some(j)
    })
    .await
    .expect("the job finishes");
    assert_eq!(done["done"], 5);
    assert_eq!(done["filter"]["claims"]["repository"], "acme/api");
    for id in &api_ids {
        assert_eq!(d.lease_state(id).await, "revoked");
    }
    assert_eq!(d.lease_state(&web_id).await, "active");

    let (s, _) = d.get("/v1/admin/jobs/job_nope", &d.admin).await;
    assert_eq!(s, 404);
    let (s, v) = d.post("/v1/admin/revoke", &d.admin, json!({"claims": {"repo sitory": "x"}})).await;
    assert_eq!(s, 400, "{v}");
    assert_eq!(v["error"]["field"], "claims");
}

fn quota_opts(iss: &Issuer, quotas: &str) -> Opts {
    Opts { issuer_url: iss.url.clone(), extra_toml: format!("[quotas]\n{quotas}\n"), ..Default::default() }
}

async fn quota_rejection(d: &Daemon, jwt: &str, quota: &str, text: &str) {
    let r = d.http.post(format!("{}/v1/leases", d.url)).bearer_auth(jwt).json(&json!({"role": "token/orders"})).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 429, "expected the {quota} quota");
    let retry_after = r.headers().get("retry-after").map(|h| h.to_str().unwrap().to_owned());
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "quota_exceeded", "{v}");
    assert_eq!(v["error"]["quota"], quota, "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains(text), "{v}");
    assert_eq!(retry_after.is_some(), quota == "rate", "Retry-After only for the rate limit");
}

#[tokio::test]
async fn quotas_per_owner_role_total_and_rate_return_429_naming_the_limit() {
    let iss = Issuer::start().await;
    let jwt = |repo: &str| iss.sign(&iss.gh_claims(repo, "refs/heads/main"));
    let metric = |d: &Daemon, q: &str| {
        let (http, url, q) = (d.http.clone(), d.url.clone(), q.to_owned());
        async move {
            let m = http.get(format!("{url}/metrics")).send().await.unwrap().text().await.unwrap();
            m.lines()
                .find(|l| l.starts_with(&format!("lessor_quota_rejections_total{{quota=\"{q}\"}}")))
                .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
                .unwrap_or(0)
        }
    };

    // Per owner: 2 live leases; a revoke frees a slot.
    let d = Daemon::start_with(quota_opts(&iss, "max_active_per_owner = 2")).await;
    let a = jwt("acme/api");
    let (_, first) = d.issue(&a, json!({"role": "token/orders"})).await;
    let (s, _) = d.issue(&a, json!({"role": "token/orders"})).await;
    assert_eq!(s, 201);
    let before = metric(&d, "owner").await;
    quota_rejection(&d, &a, "owner", "holds 2 live leases (limit 2 per workload)").await;
    assert_eq!(metric(&d, "owner").await, before + 1);
    let (s, _) = d.issue(&jwt("acme/web"), json!({"role": "token/orders"})).await;
    assert_eq!(s, 201, "another workload is not affected");
    d.delete(&format!("/v1/leases/{}", first["lease_id"].as_str().unwrap()), &a).await;
    let (s, _) = d.issue(&a, json!({"role": "token/orders"})).await;
    assert_eq!(s, 201, "a revoked lease frees its slot");
    drop(d);

    // Per role.
    let d = Daemon::start_with(quota_opts(&iss, "max_active_per_role = 3")).await;
    for i in 0..3 {
        let (s, _) = d.issue(&jwt(&format!("acme/r{i}")), json!({"role": "token/orders"})).await;
        assert_eq!(s, 201);
    }
    quota_rejection(&d, &jwt("acme/r9"), "role", "role `token/orders` has 3 live leases (limit 3").await;
    let (s, _) = d.issue(&jwt("acme/r9"), json!({"role": "pki/web"})).await;
    assert_eq!(s, 201, "other roles are not affected");
    drop(d);

    // In total.
    let d = Daemon::start_with(quota_opts(&iss, "max_active_total = 2")).await;
    for i in 0..2 {
        let (s, _) = d.issue(&jwt(&format!("acme/t{i}")), json!({"role": "token/orders"})).await;
        assert_eq!(s, 201);
    }
    quota_rejection(&d, &jwt("acme/t9"), "total", "lessor holds 2 live leases (limit 2 in all)").await;
    drop(d);

    // Rate per owner.
    let d = Daemon::start_with(quota_opts(&iss, "issues_per_minute_per_owner = 3")).await;
    let r = jwt("acme/rate");
    for _ in 0..3 {
        let (s, _) = d.issue(&r, json!({"role": "token/orders"})).await;
        assert_eq!(s, 201);
    }
    quota_rejection(&d, &r, "rate", "may request 3 credentials per minute").await;
    let (s, _) = d.issue(&jwt("acme/other"), json!({"role": "token/orders"})).await;
    assert_eq!(s, 201, "the limit is per workload");
    assert!(d.leases().await.len() == 4, "refused requests created nothing");
}
