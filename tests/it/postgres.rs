//! PostgreSQL roles through the whole daemon, against a real throwaway
//! server: log in with exactly the granted scopes, and never an orphaned
//! role (client disconnects, `kill -9` mid-burst, PostgreSQL down at expiry).

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use lessor_postgres::testkit::TempPostgres;
use serde_json::{json, Value};
use sqlx::Connection;

use crate::support::{Daemon, Issuer, Opts};

pub const PG_POLICY: &str = r#"
@id("test-pg-app")
@reason("acme's main branch may use the app database")
permit(principal, action in [Lessor::Action::"issue", Lessor::Action::"renew"], resource == Lessor::Role::"pg/app")
when { principal has repository_owner && principal.repository_owner == "acme" };
"#;

/// Config for a `pg` connection with role `pg/app` (scopes orders.read,
/// orders.write) on database `app` of `pg`.
pub fn pg_toml(pg: &TempPostgres, dir: &Path) -> String {
    let dsn_file = dir.join("pg.dsn");
    std::fs::write(&dsn_file, pg.dsn("postgres", pg.superuser_password(), "app")).unwrap();
    format!(
        r#"
# Bursts from one workload: lift the per-workload quota and rate limit.
[quotas]
max_active_per_owner = 0
issues_per_minute_per_owner = 0

[connections.pg]
plugin = "postgres"
environment = "staging"
[connections.pg.config]
dsn_file = "{}"
pool_size = 8
[connections.pg.roles.app]
max_ttl = "1h"
default_ttl = "10m"
scopes = ["orders.read", "orders.write"]
default_scopes = ["orders.read"]
[connections.pg.roles.app.config.grants]
"orders.read" = ["GRANT SELECT ON orders TO {{{{name}}}}"]
"orders.write" = ["GRANT INSERT ON orders TO {{{{name}}}}"]
"#,
        dsn_file.display()
    )
}

pub fn start_pg() -> TempPostgres {
    let pg = TempPostgres::start().unwrap_or_else(|e| panic!("{e}"));
    pg.psql("postgres", "CREATE DATABASE app").unwrap();
    pg.psql("app", "CREATE TABLE orders (id int); CREATE TABLE invoices (id int); INSERT INTO orders VALUES (1)").unwrap();
    pg
}

/// Every lessor role in pg_roles, as the lease id its name ends with.
fn pg_lease_ids(pg: &TempPostgres) -> BTreeSet<String> {
    let out = pg.psql("postgres", "SELECT rolname FROM pg_roles WHERE rolname LIKE 'lessor\\_%'").unwrap();
    out.lines().filter(|l| !l.is_empty()).map(|l| format!("lse_{}", &l[l.len() - 32..])).collect()
}

async fn leases_in(d: &Daemon, state: &str) -> BTreeSet<String> {
    let (s, v) = d.get(&format!("/v1/admin/leases?state={state}&limit=10000"), &d.admin).await;
    assert_eq!(s, 200, "{v}");
    v["leases"].as_array().unwrap().iter().map(|l| l["lease_id"].as_str().unwrap().to_owned()).collect()
}

pub async fn pg_daemon(iss: &Issuer, pg: &TempPostgres, leases_toml: &str) -> (Daemon, tempfile::TempDir) {
    let aux = tempfile::tempdir().unwrap();
    let d = Daemon::start_with(Opts {
        issuer_url: iss.url.clone(),
        extra_toml: pg_toml(pg, aux.path()),
        leases_toml: leases_toml.into(),
        policy: PG_POLICY.into(),
        ..Default::default()
    })
    .await;
    (d, aux)
}

async fn try_login(dsn: &str) -> Result<sqlx::PgConnection, sqlx::Error> {
    sqlx::PgConnection::connect(dsn).await
}

#[tokio::test]
async fn an_issued_role_can_do_exactly_its_scopes_and_is_gone_after_revoke() {
    let iss = Issuer::start().await;
    let pg = start_pg();
    let (d, _aux) = pg_daemon(&iss, &pg, "").await;
    let jwt = iss.token();
    let (s, v) = d.issue(&jwt, json!({"role": "pg/app", "ttl": "10m", "scopes": ["orders.read"]})).await;
    assert_eq!(s, 201, "{v}");
    let dsn = v["credential"]["dsn"].as_str().unwrap().to_owned();
    let user = v["credential"]["username"].as_str().unwrap().to_owned();
    assert!(user.starts_with("lessor_") && user.len() <= 63, "{user}");

    let mut c = try_login(&dsn).await.expect("the issued role logs in");
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM orders").fetch_one(&mut c).await.unwrap();
    assert_eq!(n, 1);
    let e = sqlx::query("INSERT INTO orders VALUES (2)").execute(&mut c).await.unwrap_err().to_string();
    assert!(e.contains("permission denied"), "{e}");
    let e = sqlx::query("SELECT * FROM invoices").execute(&mut c).await.unwrap_err().to_string();
    assert!(e.contains("permission denied"), "{e}");
    let until = pg.psql("postgres", &format!("SELECT floor(extract(epoch FROM rolvaliduntil))::bigint FROM pg_roles WHERE rolname = '{user}'")).unwrap();
    let expires = time::OffsetDateTime::parse(v["expires_at"].as_str().unwrap(), &time::format_description::well_known::Rfc3339).unwrap();
    assert_eq!(until.parse::<i64>().unwrap(), expires.unix_timestamp(), "VALID UNTIL is the lease expiry");

    let (s, r) = d.delete(&format!("/v1/leases/{}", v["lease_id"].as_str().unwrap()), &jwt).await;
    assert_eq!(s, 200, "{r}");
    assert_eq!(r["state"], "revoked");
    assert!(sqlx::query("SELECT 1").execute(&mut c).await.is_err(), "the open session was terminated");
    assert!(try_login(&dsn).await.is_err(), "no login after revoke");
    assert!(pg_lease_ids(&pg).is_empty(), "role dropped");
}

#[tokio::test]
async fn clients_that_disconnect_mid_request_leave_no_role_without_a_lease() {
    let iss = Issuer::start().await;
    let pg = start_pg();
    let (d, _aux) = pg_daemon(&iss, &pg, "").await;
    let jwt = iss.token();
    // One issue first, not cut (the issuer's keys fetched, the vendor's
    // usual time learnt), and the last request of each round waits for its
    // answer: on a busy host every request could otherwise be cut before
    // lessor had verified it, and the test would check nothing.
    let (s, v) = d.issue(&jwt, json!({"role": "pg/app"})).await;
    assert_eq!(s, 201, "{v}");
    let mut cut = 0;
    let mut ok = 0;
    for round in 0..12u64 {
        let mut set = tokio::task::JoinSet::new();
        for i in 0..16u64 {
            let (http, url, jwt) = (d.http.clone(), d.url.clone(), jwt.clone());
            // Give up after 0..~12 ms: many requests are cut while the role is
            // being created at PostgreSQL.
            let after = if i == 15 { Duration::from_secs(60) } else { Duration::from_micros((round * 16 + i) * 7919 % 12_000) };
            set.spawn(async move {
                let req = http.post(format!("{url}/v1/leases")).bearer_auth(jwt).json(&json!({"role": "pg/app"})).send();
                tokio::time::timeout(after, req).await.is_ok()
            });
        }
        while let Some(r) = set.join_next().await {
            if r.unwrap() {
                ok += 1
            } else {
                cut += 1
            }
        }
    }
    assert!(cut > 20, "the test must cut requests mid-way (cut {cut}, completed {ok})");
    // Every request the server accepted runs to the end by itself.
    let settled = Daemon::eventually(Duration::from_secs(20), || async { leases_in(&d, "pending").await.is_empty().then_some(()) }).await;
    assert!(settled.is_some(), "pending leases remain: {:?}", leases_in(&d, "pending").await);
    let roles = pg_lease_ids(&pg);
    let active = leases_in(&d, "active").await;
    assert!(roles.len() > 10, "roles were issued: {} (cut {cut}, completed {ok})", roles.len());
    assert_eq!(roles, active, "every role belongs to an active lease and every active lease has its role");
}

#[tokio::test]
async fn postgres_down_at_expiry_is_retried_and_nothing_is_marked_revoked_early() {
    let iss = Issuer::start().await;
    let mut pg = start_pg();
    let (d, _aux) = pg_daemon(&iss, &pg, "retry_max = \"1s\"\nbreaker_base = \"1s\"\nbreaker_max = \"1s\"").await;
    let jwt = iss.token();
    let mut ids = Vec::new();
    for _ in 0..3 {
        let (s, v) = d.issue(&jwt, json!({"role": "pg/app", "ttl": "2s"})).await;
        assert_eq!(s, 201, "{v}");
        ids.push(v["lease_id"].as_str().unwrap().to_owned());
    }
    pg.stop().unwrap();
    let failed = Daemon::eventually(Duration::from_secs(15), || async {
        let f = leases_in(&d, "revoke_failed").await;
        (f.len() == 3).then_some(f)
    })
    .await
    .expect("revocations fail visibly while PostgreSQL is down");
    assert_eq!(failed, ids.iter().cloned().collect());
    let (_, l) = d.get(&format!("/v1/leases/{}", ids[0]), &d.admin).await;
    let err = l["last_error"].as_str().unwrap();
    assert!(err.contains("cannot reach PostgreSQL"), "{err}");
    assert!(!err.contains(pg.superuser_password()), "the admin password leaked into an error");
    // What an SRE sees: `lessor status` (the real binary) names the failing
    // revocations, their error, the oldest overdue one and quota use.
    // (tokio's Command: the daemon runs on this test's runtime.)
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_lessor"))
        .args(["status", "--addr", &d.url])
        .env("LESSOR_ADMIN_TOKEN", &d.admin)
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("FAILING REVOCATIONS: 3"), "{text}");
    assert!(text.contains("cannot reach PostgreSQL"), "{text}");
    assert!(text.contains("OLDEST OVERDUE REVOCATION: lse_"), "{text}");
    let row = text.lines().find(|l| l.trim_start().starts_with("pg/app")).unwrap_or_else(|| panic!("{text}"));
    assert_eq!(row.split_whitespace().collect::<Vec<_>>(), ["pg/app", "0", "0", "3"], "{text}");
    assert!(text.lines().any(|l| l.contains("role pg/app") && l.contains("3 / 10000")), "{text}");
    assert!(!text.contains(pg.superuser_password()));
    // Still down a little longer: nothing may be marked ended.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(leases_in(&d, "expired").await.is_empty() && leases_in(&d, "revoked").await.is_empty());

    pg.restart().unwrap();
    assert_eq!(pg_lease_ids(&pg).len(), 3, "the roles still exist after the outage");
    let done = Daemon::eventually(Duration::from_secs(20), || async {
        let e = leases_in(&d, "expired").await;
        (e.len() == 3).then_some(e)
    })
    .await;
    assert!(done.is_some(), "revoked once PostgreSQL is back: {:?}", leases_in(&d, "revoke_failed").await);
    assert!(pg_lease_ids(&pg).is_empty(), "roles dropped");
    let (_, st) = d.get("/v1/admin/status", &d.admin).await;
    assert_eq!((st["failing"].as_array().map(Vec::len), &st["oldest_overdue"]), (Some(0), &Value::Null), "{st}");
    let (_, l) = d.get(&format!("/v1/leases/{}", ids[0]), &d.admin).await;
    assert!(l["revoke_attempts"].as_i64().unwrap() >= 1, "{l}");
}

#[tokio::test]
async fn renewal_extends_valid_until_within_the_max() {
    let iss = Issuer::start().await;
    let pg = start_pg();
    let (d, _aux) = pg_daemon(&iss, &pg, "").await;
    let jwt = iss.token();
    let (s, v) = d.issue(&jwt, json!({"role": "pg/app", "ttl": "1m"})).await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["renewable"], true);
    let id = v["lease_id"].as_str().unwrap();
    let user = v["credential"]["username"].as_str().unwrap();
    let (s, r) = d.post(&format!("/v1/leases/{id}/renew"), &jwt, json!({"ttl": "30m"})).await;
    assert_eq!(s, 200, "{r}");
    let exp = time::OffsetDateTime::parse(r["expires_at"].as_str().unwrap(), &time::format_description::well_known::Rfc3339).unwrap();
    let until: i64 = pg
        .psql("postgres", &format!("SELECT floor(extract(epoch FROM rolvaliduntil))::bigint FROM pg_roles WHERE rolname = '{user}'"))
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(until, exp.unix_timestamp());
    assert!(exp > time::OffsetDateTime::now_utc() + Duration::from_secs(25 * 60));
    // Beyond the role's max TTL the renewal is capped at max_expires_at.
    let (s, r) = d.post(&format!("/v1/leases/{id}/renew"), &jwt, json!({"ttl": "59m"})).await;
    assert_eq!(s, 200, "{r}");
    assert!(r["expires_at"].as_str().unwrap() <= r["max_expires_at"].as_str().unwrap());
    let _: Value = r;
}
