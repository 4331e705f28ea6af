//! Admin tokens: named, expiring, listed, revocable (`lessor admin-token`),
//! refused with one message whatever the reason, audited by name; a
//! replaced token file ends the old token; a revocation is seen by every
//! replica on its next request. The store half runs on both backends
//! (`store::{sqlite,postgres}_passes_the_admin_token_suite` call [`store_suite`]).

use std::path::Path;
use std::sync::Arc;

use lessor::store::{AdminToken, Store};
use secrecy::ExposeSecret;
use serde_json::{json, Value};
use time::OffsetDateTime;

use crate::support::{Daemon, Issuer, Opts};

const REFUSED: &str = "unknown, revoked or expired admin token";

fn record(name: &str, hash: &str, expires_in: time::Duration) -> AdminToken {
    let now = OffsetDateTime::now_utc();
    AdminToken {
        name: name.into(),
        token_hash: hash.into(),
        created_by: "test".into(),
        created_at: now,
        expires_at: now + expires_in,
        last_used_at: None,
        revoked_at: None,
    }
}

/// The admin-token store methods, the same on SQLite and PostgreSQL.
pub async fn store_suite(s: &Arc<dyn Store>) {
    let now = OffsetDateTime::now_utc();
    let day = time::Duration::days(1);
    s.admin_token_create(&record("ci", "h1", day), now).await.unwrap();
    // A live name or a known hash is a conflict.
    let dup = s.admin_token_create(&record("ci", "h2", day), now).await.unwrap_err();
    assert!(matches!(dup, lessor::store::StoreError::Conflict(_)), "{dup}");
    let dup = s.admin_token_create(&record("other", "h1", day), now).await.unwrap_err();
    assert!(matches!(dup, lessor::store::StoreError::Conflict(_)), "{dup}");
    assert_eq!(s.admin_token_by_hash("h1").await.unwrap().unwrap().name, "ci");
    assert!(s.admin_token_by_hash("nope").await.unwrap().is_none());
    s.admin_token_used("ci", now).await.unwrap();
    assert!(s.admin_token_by_hash("h1").await.unwrap().unwrap().last_used_at.is_some());
    // Revoke once; a revoked name may be created again (a new row).
    assert!(s.admin_token_revoke("ci", now).await.unwrap());
    assert!(!s.admin_token_revoke("ci", now).await.unwrap());
    assert!(!s.admin_token_revoke("never", now).await.unwrap());
    assert!(s.admin_token_by_hash("h1").await.unwrap().unwrap().revoked_at.is_some());
    s.admin_token_create(&record("ci", "h3", day), now).await.unwrap();
    assert!(s.admin_token_by_hash("h1").await.unwrap().is_none(), "the revoked row was replaced");

    // The token file's token: inserted, kept when the hash is the same
    // (revoked stays revoked), replaced when it differs.
    s.admin_token_put_file(&record("bootstrap", "f1", day)).await.unwrap();
    assert!(s.admin_token_revoke("bootstrap", now).await.unwrap());
    s.admin_token_put_file(&record("bootstrap", "f1", day)).await.unwrap();
    assert!(s.admin_token_by_hash("f1").await.unwrap().unwrap().revoked_at.is_some(), "a restart does not revive it");
    s.admin_token_put_file(&record("bootstrap", "f2", day)).await.unwrap();
    assert!(s.admin_token_by_hash("f1").await.unwrap().is_none(), "the old file token is gone");
    let b = s.admin_token_by_hash("f2").await.unwrap().unwrap();
    assert_eq!((b.name.as_str(), b.revoked_at), ("bootstrap", None));
    // Another token's hash in the file is a conflict.
    let err = s.admin_token_put_file(&record("bootstrap", "h3", day)).await.unwrap_err();
    assert!(matches!(err, lessor::store::StoreError::Conflict(_)), "{err}");
    let names: Vec<String> = s.admin_tokens().await.unwrap().into_iter().map(|t| t.name).collect();
    assert_eq!(names, ["bootstrap", "ci"]);
}

async fn call(d: &Daemon, method: reqwest::Method, path: &str, token: &str, body: Option<Value>) -> (u16, Value) {
    let mut r = d.http.request(method, format!("{}{path}", d.url)).bearer_auth(token);
    if let Some(b) = body {
        r = r.json(&b);
    }
    let r = r.send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

fn assert_refused(what: &str, (s, v): (u16, Value)) {
    assert_eq!(s, 401, "{what}: {v}");
    let m = v["error"]["message"].as_str().unwrap_or_default();
    assert_eq!(m, REFUSED, "{what}: {v}");
}

/// Runs the CLI with `envs`; returns (exit code, stdout, stderr).
fn cli(args: &[&str], envs: &[(&str, &str)]) -> (i32, String, String) {
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_lessor")).args(args).envs(envs.iter().copied()).output().unwrap();
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_tokens_are_named_expiring_listed_revocable_and_refused_alike() {
    let iss = Issuer::start().await;
    let d = Daemon::start(&iss).await;
    let get = reqwest::Method::GET;
    assert_eq!(call(&d, get.clone(), "/v1/admin/leases", &d.admin, None).await.0, 200, "bootstrap works");

    // An unknown token: one precise message, no JWT parser talk.
    let unknown = lessor::admin_tokens::generate();
    assert_refused("unknown", call(&d, get.clone(), "/v1/admin/leases", unknown.expose_secret(), None).await);

    // Create with the CLI: printed once; it works at once.
    let env = [("LESSOR_ADDR", d.url.as_str()), ("LESSOR_ADMIN_TOKEN", d.admin.as_str())];
    let (code, out, err) = cli(&["admin-token", "create", "--name", "ci", "--ttl", "30d"], &env);
    assert_eq!(code, 0, "{err}");
    let ci = out.trim().to_owned();
    assert!(ci.starts_with("lsr_admin_") && err.contains("admin token `ci`"), "{out}{err}");
    let (s, v) = call(&d, get.clone(), "/v1/admin/leases", &ci, None).await;
    assert_eq!(s, 200, "{v}");

    // Bad requests name the field; names are unique while live.
    let post = reqwest::Method::POST;
    for (body, field) in [
        (json!({"name": "x", "ttl": "2y"}), "ttl"),
        (json!({"name": "x", "ttl": "5s"}), "ttl"),
        (json!({"name": "bootstrap"}), "name"),
        (json!({"name": "no spaces"}), "name"),
    ] {
        let (s, v) = call(&d, post.clone(), "/v1/admin/tokens", &d.admin, Some(body.clone())).await;
        assert_eq!((s, v["error"]["field"].as_str()), (400, Some(field)), "{body}: {v}");
    }
    let (s, v) = call(&d, post.clone(), "/v1/admin/tokens", &d.admin, Some(json!({"name": "ci"}))).await;
    assert_eq!(s, 409, "{v}");

    // List: names, dates, last use; never a token.
    let (code, out, err) = cli(&["admin-token", "list", "--json"], &env);
    assert_eq!(code, 0, "{err}");
    assert!(!out.contains(&ci) && !out.contains(&d.admin), "a token in the listing: {out}");
    let v: Value = serde_json::from_str(&out).unwrap();
    let tokens = v["tokens"].as_array().unwrap();
    let by = |n: &str| tokens.iter().find(|t| t["name"] == n).cloned().unwrap_or_default();
    assert_eq!(by("ci")["state"], "active");
    assert!(by("ci")["last_used_at"].is_string(), "{v}");
    let expires = OffsetDateTime::parse(by("ci")["expires_at"].as_str().unwrap(), &time::format_description::well_known::Rfc3339).unwrap();
    let days = (expires - OffsetDateTime::now_utc()).whole_hours();
    assert!((29 * 24..=30 * 24).contains(&days), "ci expires in {days}h");
    let expires = OffsetDateTime::parse(by("bootstrap")["expires_at"].as_str().unwrap(), &time::format_description::well_known::Rfc3339).unwrap();
    assert!((expires - OffsetDateTime::now_utc()).whole_days() >= 89, "bootstrap lives 90 days: {v}");
    let (code, out, _) = cli(&["admin-token", "list"], &env);
    assert!(code == 0 && out.contains("bootstrap") && out.contains("ci"), "{out}");

    // An expired token is refused with the same message.
    let expired = lessor::admin_tokens::generate();
    let mut rec = record("old", &lessor::admin_tokens::hash(expired.expose_secret()), time::Duration::seconds(-1));
    rec.created_at -= time::Duration::days(1);
    d.running().store.admin_token_create(&rec, rec.created_at).await.unwrap();
    assert_refused("expired", call(&d, get.clone(), "/v1/admin/leases", expired.expose_secret(), None).await);

    // Revoke with the CLI: refused at once, same message.
    let (code, out, err) = cli(&["admin-token", "revoke", "ci"], &env);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("admin token `ci` is revoked"), "{out}");
    assert_refused("revoked", call(&d, get.clone(), "/v1/admin/leases", &ci, None).await);
    assert_refused("revoked, lease endpoint", call(&d, get.clone(), "/v1/leases/lse_x", &ci, None).await);
    let (code, _, err) = cli(&["admin-token", "revoke", "ci"], &env);
    assert!(code == 1 && err.contains("no admin token named `ci`"), "{err}");

    // The audit log names tokens by name, never by value; it tells the
    // reasons apart where the client is not told.
    let audit = d.dir.join("audit.log");
    let log = Daemon::eventually(std::time::Duration::from_secs(10), || {
        let audit = audit.clone();
        async move {
            let log = std::fs::read_to_string(&audit).ok()?;
            log.contains("revoked_admin_token").then_some(log)
        }
    })
    .await
    .expect("the audit log records the refusal of the revoked token");
    for token in [&ci, &d.admin, &expired.expose_secret().to_owned(), &unknown.expose_secret().to_owned()] {
        assert!(!log.contains(token.as_str()), "a token in the audit log");
    }
    for needle in ["token:ci", "token:bootstrap", "admin.token_create", "admin.token_revoke", "unknown_admin_token", "expired_admin_token"] {
        assert!(log.contains(needle), "audit log lacks {needle}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_token_file_ends_the_old_token_and_a_restart_revives_nothing() {
    let iss = Issuer::start().await;
    let opts = Opts { issuer_url: iss.url.clone(), ..Default::default() };
    let mut d = Daemon::start_with(opts.clone()).await;
    let dir = d.dir.clone();
    let tmp = d._tmp.take();
    let old = d.admin.clone();
    d.stop().await;

    // A new file: the old token stops working everywhere, the new one works.
    let new = lessor::admin_tokens::generate();
    std::fs::remove_file(dir.join("admin.token")).unwrap();
    std::fs::write(dir.join("admin.token"), new.expose_secret()).unwrap();
    let mut d = Daemon::start_in(&dir, &opts).await;
    assert_refused("replaced", call(&d, reqwest::Method::GET, "/v1/admin/leases", &old, None).await);
    assert_eq!(call(&d, reqwest::Method::GET, "/v1/admin/leases", new.expose_secret(), None).await.0, 200);

    // Revoke bootstrap (with another admin token); a restart with the same
    // file does not bring it back.
    let (s, v) = call(&d, reqwest::Method::POST, "/v1/admin/tokens", new.expose_secret(), Some(json!({"name": "sre"}))).await;
    assert_eq!(s, 201, "{v}");
    let sre = v["token"].as_str().unwrap().to_owned();
    let (s, v) = call(&d, reqwest::Method::DELETE, "/v1/admin/tokens/bootstrap", &sre, None).await;
    assert_eq!((s, v["state"].as_str()), (200, Some("revoked")), "{v}");
    d.stop().await;
    let mut d = Daemon::start_in(&dir, &opts).await;
    assert_refused("revoked bootstrap after restart", call(&d, reqwest::Method::GET, "/v1/admin/leases", new.expose_secret(), None).await);
    assert_eq!(call(&d, reqwest::Method::GET, "/v1/admin/leases", &sre, None).await.0, 200);
    d.stop().await;
    drop(tmp);
}

/// Two daemons on one PostgreSQL store: a token revoked with `lessor
/// admin-token revoke` through one is refused by both on the next request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_admin_token_is_refused_at_once_on_every_replica() {
    let (_pg, dsn) = crate::store::pg_store_db();
    let iss = Issuer::start().await;
    let opts = Opts { issuer_url: iss.url.clone(), store: Some(dsn), ..Default::default() };
    let d1 = Daemon::start_with(opts.clone()).await;
    // Replicas share the store, its seal key and the token file.
    let tmp2 = tempfile::tempdir().unwrap();
    crate::support::copy_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("policies"), &tmp2.path().join("policies"));
    std::fs::copy(d1.dir.join("seal.key"), tmp2.path().join("seal.key")).unwrap();
    std::fs::copy(d1.dir.join("admin.token"), tmp2.path().join("admin.token")).unwrap();
    let d2 = Daemon::start_in(tmp2.path(), &opts).await;

    let (s, v) = call(&d1, reqwest::Method::POST, "/v1/admin/tokens", &d1.admin, Some(json!({"name": "oncall", "ttl": "1d"}))).await;
    assert_eq!(s, 201, "{v}");
    let oncall = v["token"].as_str().unwrap().to_owned();
    for d in [&d1, &d2] {
        assert_eq!(call(d, reqwest::Method::GET, "/v1/admin/leases", &oncall, None).await.0, 200);
    }
    let env = [("LESSOR_ADDR", d2.url.as_str()), ("LESSOR_ADMIN_TOKEN", d2.admin.as_str())];
    let (code, _, err) = cli(&["admin-token", "revoke", "oncall"], &env);
    assert_eq!(code, 0, "{err}");
    for (name, d) in [("d1", &d1), ("d2", &d2)] {
        assert_refused(name, call(d, reqwest::Method::GET, "/v1/admin/leases", &oncall, None).await);
        assert_refused(name, call(d, reqwest::Method::GET, "/v1/admin/status", &oncall, None).await);
    }
    // The bootstrap token both share still works on both.
    for d in [&d1, &d2] {
        assert_eq!(call(d, reqwest::Method::GET, "/v1/admin/tokens", &d.admin, None).await.0, 200);
    }
}
