//! Issuing and renewing: grants, expiry, atomicity, quoting, names, secrets.

use std::time::Duration;

use lessor_plugin::secrecy::ExposeSecret;
use lessor_plugin::{PluginError, RenewRequest};
use serde_json::json;
use time::OffsetDateTime;

use crate::support::*;

#[tokio::test]
async fn exactly_the_granted_scopes_work_until_revoked() {
    let mut pg = Pg::start();
    let p = pg.plugin(json!({})).await;
    let id = lease_id();
    let issued = issue(p.as_ref(), &id, "orders", &["orders.read"]).await;
    let name = username(&issued);

    let mut c = login(&issued).await.unwrap();
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM orders")
        .fetch_one(&mut c)
        .await
        .unwrap();
    assert_eq!(n, 1);
    let e = sqlx::query("INSERT INTO orders VALUES (2)").execute(&mut c).await.unwrap_err();
    assert_eq!(sqlstate(&e), "42501", "insert should be denied: {e}");
    let e = sqlx::query("SELECT * FROM invoices").execute(&mut c).await.unwrap_err();
    assert_eq!(sqlstate(&e), "42501", "invoices should be denied: {e}");
    drop(c);

    p.revoke(&lease(&id, "orders", Some(&issued))).await.unwrap();
    let e = login(&issued).await.unwrap_err();
    assert_eq!(sqlstate(&e), "28P01", "{e}");
    assert!(!pg.role_exists(&name));
    // Revoking again is fine.
    p.revoke(&lease(&id, "orders", Some(&issued))).await.unwrap();
}

#[tokio::test]
async fn issued_fields_and_write_scope() {
    let mut pg = Pg::start();
    let p = pg.plugin(json!({})).await;
    let id = lease_id();
    let req = request(&id, "orders", &["orders.read", "orders.write", "orders.read"], Duration::from_secs(600));
    let expires_at = req.expires_at;
    let issued = p.issue(req).await.unwrap();
    let name = username(&issued);
    assert_eq!(issued.handle, json!({ "role": name }));
    assert_eq!(issued.expires_at, expires_at);
    assert_eq!(issued.public["database"], "app");
    assert_eq!(issued.public["host"], "127.0.0.1");
    assert_eq!(issued.public["port"], pg.pg.port());
    let exp = OffsetDateTime::parse(
        issued.public["expires_at"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    assert!((expires_at - exp).abs() < time::Duration::milliseconds(1));
    let password = issued.secret["password"].expose_secret();
    assert!(password.len() >= 43, "at least 256 bits base64url: {password}");
    assert_eq!(
        dsn(&issued),
        format!("postgres://{name}:{password}@127.0.0.1:{}/app", pg.pg.port())
    );
    let mut c = login(&issued).await.unwrap();
    sqlx::query("INSERT INTO orders VALUES (3)").execute(&mut c).await.unwrap();
}

#[tokio::test]
async fn valid_until_is_the_lease_expiry_and_renew_moves_it() {
    let mut pg = Pg::start();
    let p = pg.plugin(json!({})).await;
    let id = lease_id();
    let issued = issue(p.as_ref(), &id, "plain", &[]).await;
    let name = username(&issued);
    let valid_until = || {
        pg.psql(&format!(
            "SELECT floor(extract(epoch FROM rolvaliduntil))::int8 FROM pg_roles WHERE rolname = '{name}'"
        ))
        .parse::<i64>()
        .unwrap()
    };
    assert_eq!(valid_until(), issued.expires_at.unix_timestamp());

    let later = OffsetDateTime::now_utc() + Duration::from_secs(1800);
    let lref = lease(&id, "plain", Some(&issued));
    let got = p
        .renew(RenewRequest { lease: lref.clone(), expires_at: later })
        .await
        .unwrap();
    assert!(got <= later && later - got < time::Duration::milliseconds(1), "{got} vs {later}");
    assert_eq!(valid_until(), later.unix_timestamp());
    login(&issued).await.unwrap();

    // Renewal is bounded like issuing.
    let too_far = OffsetDateTime::now_utc() + MAX_TTL + Duration::from_secs(60);
    let e = p.renew(RenewRequest { lease: lref.clone(), expires_at: too_far }).await.unwrap_err();
    assert!(matches!(&e, PluginError::InvalidRequest(m) if m.contains("exceeds role max 1h")), "{e:?}");

    p.revoke(&lref).await.unwrap();
    let e = p.renew(RenewRequest { lease: lref, expires_at: later }).await.unwrap_err();
    assert_eq!(permanent(e), format!("role `{name}` no longer exists"));
}

#[tokio::test]
async fn an_expired_password_stops_working_without_lessor() {
    let mut pg = Pg::start();
    let p = pg.plugin(json!({})).await;
    let id = lease_id();
    let issued = p
        .issue(request(&id, "plain", &[], Duration::from_secs(2)))
        .await
        .unwrap();
    login(&issued).await.unwrap();
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let e = login(&issued).await.unwrap_err();
    assert_eq!(sqlstate(&e), "28P01", "{e}");
}

#[tokio::test]
async fn a_failing_grant_leaves_no_role() {
    let mut pg = Pg::start();
    let c = pg.connection(&pg.admin_dsn(), json!({}));
    let roles = vec![role(
        "broken",
        &["x.read"],
        json!({"grants": {"x.read": ["GRANT SELECT ON orders TO {{name}}", "GRANT SELECT ON missing_table TO {{name}}"]}}),
    )];
    let p = build(c, roles).await.unwrap();
    let id = lease_id();
    let e = p
        .issue(request(&id, "broken", &["x.read"], Duration::from_secs(600)))
        .await
        .unwrap_err();
    let m = permanent(e);
    assert!(
        m.contains("grant (scope `x.read`) statement 2 failed") && m.contains("relation \"missing_table\" does not exist"),
        "{m}"
    );
    assert!(!m.contains("GRANT"), "no statement text in errors: {m}");
    assert!(pg.roles_ending(&hex_of(&id)).is_empty());
}

#[tokio::test]
async fn claims_cannot_inject_sql() {
    let mut pg = Pg::start();
    let c = pg.connection(&pg.admin_dsn(), json!({}));
    let creation = json!([
        "CREATE ROLE {{name}} LOGIN PASSWORD {{password}} VALID UNTIL {{expiry}}",
        "COMMENT ON ROLE {{name}} IS {{claim:team}}",
        "CREATE SCHEMA {{claim_ident:team}} AUTHORIZATION {{admin}}",
        "COMMENT ON SCHEMA {{claim_ident:team}} IS {{claim:subject}}",
    ]);
    let p = build(c, vec![role("r", &[], json!({ "creation": creation }))]).await.unwrap();
    let evil = "x'; DROP ROLE canary; --\"; DROP ROLE canary; -- \\' end";
    let mut req = request(&lease_id(), "r", &[], Duration::from_secs(600));
    req.workload.attributes.insert("team".into(), evil.into());
    req.workload.subject = "s'\\\"".into();
    let issued = p.issue(req).await.unwrap();
    let name = username(&issued);

    assert!(pg.role_exists("canary") && pg.role_exists("postgres"));
    let comment = pg.psql(&format!(
        "SELECT shobj_description(oid, 'pg_authid') FROM pg_roles WHERE rolname = '{name}'"
    ));
    assert_eq!(comment, evil);
    let schema = pg.psql("SELECT nspname FROM pg_namespace WHERE nspname LIKE 'x%'");
    assert_eq!(schema, evil);
    let subject = pg.psql("SELECT obj_description(oid, 'pg_namespace') FROM pg_namespace WHERE nspname LIKE 'x%'");
    assert_eq!(subject, "s'\\\"");

    // A claim the workload lacks, or one with a NUL, is refused before SQL.
    let mut req = request(&lease_id(), "r", &[], Duration::from_secs(600));
    let e = p.issue(req.clone()).await.unwrap_err();
    assert!(
        matches!(&e, PluginError::InvalidRequest(m) if m.contains("no claim `team`") && m.contains("`pg/r`")),
        "{e:?}"
    );
    req.workload.attributes.insert("team".into(), "a\0b".into());
    let e = p.issue(req).await.unwrap_err();
    assert!(
        matches!(&e, PluginError::InvalidRequest(m) if m.contains("claim `team` contains the control character U+0000")),
        "{e:?}"
    );
}

#[tokio::test]
async fn claims_in_comments_are_refused_at_load_and_newlines_at_issue() {
    let mut pg = Pg::start();
    // The issue's example: a newline in the claim would end the comment and
    // `WITH ADMIN OPTION` would run. Refused when the config loads.
    let creation = json!([
        "CREATE ROLE {{name}} LOGIN PASSWORD {{password}} VALID UNTIL {{expiry}}",
        "GRANT orders_reader TO {{name}} -- {{claim:workflow}}",
    ]);
    let c = pg.connection(&pg.admin_dsn(), json!({}));
    let e = build(c, vec![role("r", &[], json!({ "creation": creation }))]).await.err().expect("refused");
    assert!(
        matches!(&e, PluginError::Misconfigured(m) if m.contains("`creation[1]`: `{{claim:workflow}}` at byte 35 is inside a `--` comment")),
        "{e:?}"
    );
    for (statement, inside) in [
        ("GRANT orders_reader TO {{name}} /* {{claim:workflow}} */", "`/* */` comment"),
        ("COMMENT ON ROLE {{name}} IS 'by {{claim_ident:workflow}}'", "string literal"),
        ("DO $$ BEGIN RAISE NOTICE '%', {{claim:workflow}}; END $$", "dollar-quoted string"),
    ] {
        let c = pg.connection(&pg.admin_dsn(), json!({}));
        let cfg = json!({ "creation": ["CREATE ROLE {{name}} LOGIN PASSWORD {{password}}", statement] });
        let e = build(c, vec![role("r", &[], cfg)]).await.err().expect("refused");
        assert!(matches!(&e, PluginError::Misconfigured(m) if m.contains(inside)), "{statement}: {e:?}");
    }

    // At top level a claim is quoted; a control character in it is refused
    // by name before any SQL runs.
    let creation = json!([
        "CREATE ROLE {{name}} LOGIN PASSWORD {{password}} VALID UNTIL {{expiry}}",
        "COMMENT ON ROLE {{name}} IS {{claim:workflow}}",
    ]);
    let c = pg.connection(&pg.admin_dsn(), json!({}));
    let p = build(c, vec![role("r", &[], json!({ "creation": creation }))]).await.unwrap();
    let id = lease_id();
    let mut req = request(&id, "r", &[], Duration::from_secs(600));
    req.workload.attributes.insert("workflow".into(), "ci\nWITH ADMIN OPTION --".into());
    let e = p.issue(req).await.unwrap_err();
    assert!(
        matches!(&e, PluginError::InvalidRequest(m)
            if m.contains("`pg/r`") && m.contains("claim `workflow` contains the control character U+000A")),
        "{e:?}"
    );
    assert!(pg.roles_ending(&hex_of(&id)).is_empty(), "nothing created");
}

#[tokio::test]
async fn names_fit_in_63_bytes_and_carry_the_lease_hex() {
    let mut pg = Pg::start();
    let long_role = "a-very-long-role-name-".repeat(4);
    let c = pg.connection(&pg.admin_dsn(), json!({"role_prefix": "sixteen_bytes_xx"}));
    let p = build(c, vec![role(&long_role, &[], json!(null))]).await.unwrap();
    let id = lease_id();
    let mut req = request(&id, &long_role, &[], Duration::from_secs(600));
    req.workload
        .attributes
        .insert("repository".into(), format!("org/{}", "Repository.Name".repeat(8)));
    let issued = p.issue(req).await.unwrap();
    let name = username(&issued);
    assert!(name.len() <= 63, "{name} is {} bytes", name.len());
    assert_eq!(name, format!("sixteen_bytes_xx_a_very_long_r_{}", hex_of(&id)));
    assert!(name.ends_with(&format!("_{}", hex_of(&id))), "{name}");
    assert!(pg.role_exists(&name));
    login(&issued).await.unwrap();

    // With the default prefix the repository shows too.
    let c = pg.connection(&pg.admin_dsn(), json!({}));
    let p2 = build(c, vec![role("app", &[], json!(null))]).await.unwrap();
    let id2 = lease_id();
    let i2 = issue(p2.as_ref(), &id2, "app", &[]).await;
    assert_eq!(username(&i2), format!("lessor_app_orders_api_{}", hex_of(&id2)));

    // Revocation by lease id finds the long name.
    p.revoke(&lease(&id, &long_role, None)).await.unwrap();
    assert!(!pg.role_exists(&name));
}

#[tokio::test]
async fn requests_are_checked() {
    let mut pg = Pg::start();
    let p = pg.plugin(json!({})).await;
    let bad = |e: PluginError| match e {
        PluginError::InvalidRequest(m) => m,
        other => panic!("expected InvalidRequest, got {other:?}"),
    };
    let mut req = request(&lease_id(), "orders", &["orders.read"], Duration::from_secs(600));
    req.expires_at = OffsetDateTime::now_utc() - Duration::from_secs(1);
    assert!(bad(p.issue(req).await.unwrap_err()).contains("is not in the future"));
    let req = request(&lease_id(), "orders", &[], MAX_TTL + Duration::from_secs(60));
    assert!(bad(p.issue(req).await.unwrap_err()).contains("exceeds role max 1h"));
    // Within the 5 s slack is fine.
    let req = request(&lease_id(), "plain", &[], MAX_TTL + Duration::from_secs(2));
    p.issue(req).await.unwrap();
    let req = request(&lease_id(), "orders", &["orders.delete"], Duration::from_secs(60));
    assert!(bad(p.issue(req).await.unwrap_err()).contains("scope `orders.delete`"));
    let req = request(&lease_id(), "nope", &[], Duration::from_secs(60));
    assert!(bad(p.issue(req).await.unwrap_err()).contains("unknown role `nope`"));
    let mut req = request(&lease_id(), "plain", &[], Duration::from_secs(60));
    req.params.insert("superuser".into(), json!(true));
    assert!(bad(p.issue(req).await.unwrap_err()).contains("`superuser`"));
}

#[tokio::test]
async fn secrets_stay_out_of_debug_public_fields_and_the_server_log() {
    let mut pg = Pg::start();
    pg.psql("ALTER SYSTEM SET log_statement = 'all'");
    pg.psql("SELECT pg_reload_conf()");
    let admin_pw = pg.pg.superuser_password().to_owned();
    let c = pg.connection(&pg.admin_dsn(), json!({}));
    let debug = format!("{:?}", concrete(c, roles()).unwrap());
    assert!(!debug.contains(&admin_pw), "{debug}");
    let p = pg.plugin(json!({})).await;

    let id = lease_id();
    let issued = issue(p.as_ref(), &id, "orders", &["orders.read"]).await;
    let password = issued.secret["password"].expose_secret().to_owned();
    let public = serde_json::to_string(&issued.public).unwrap();
    assert!(!public.contains(&password), "{public}");
    assert!(!format!("{issued:?}").contains(&password));
    p.revoke(&lease(&id, "orders", Some(&issued))).await.unwrap();

    let log = std::fs::read_to_string(pg.pg.dir().join("server.log")).unwrap();
    let name = username(&issued);
    assert!(log.contains(&format!("CREATE ROLE \"{name}\"")), "log_statement = all is on");
    assert!(log.contains("PASSWORD 'SCRAM-SHA-256$4096:"), "only the verifier is sent");
    assert!(!log.contains(&password), "the plaintext password reached the server log");
}

#[tokio::test]
async fn the_verifier_is_what_postgresql_computes() {
    let pg = Pg::start();
    pg.psql("SET password_encryption = 'scram-sha-256'; CREATE ROLE scram_check PASSWORD 'pencil'");
    let stored = pg.psql("SELECT rolpassword FROM pg_authid WHERE rolname = 'scram_check'");
    // SCRAM-SHA-256$4096:<salt>$<stored>:<server>
    let salt = stored.split(['$', ':']).nth(2).unwrap();
    use base64::Engine;
    let salt = base64::engine::general_purpose::STANDARD.decode(salt).unwrap();
    assert_eq!(lessor_postgres::scram::verifier_with(b"pencil", &salt, 4096), stored);
}

/// Concurrent grants on one object fail in PostgreSQL ("tuple concurrently
/// updated") unless serialized: many issues and revokes at once all succeed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_issues_and_revokes_on_the_same_objects_all_succeed() {
    let mut pg = Pg::start();
    let p = pg.plugin(serde_json::json!({"pool_size": 16})).await;
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..32 {
        let p = p.clone();
        set.spawn(async move {
            let id = lease_id();
            let issued = p.issue(request(&id, "orders", &["orders.read", "orders.write"], MAX_TTL / 2)).await;
            (id, issued)
        });
    }
    let mut issued = Vec::new();
    while let Some(r) = set.join_next().await {
        let (id, i) = r.unwrap();
        issued.push((id, i.unwrap_or_else(|e| panic!("concurrent issue failed: {e}"))));
    }
    let mut set = tokio::task::JoinSet::new();
    for (id, i) in issued {
        let p = p.clone();
        set.spawn(async move { p.revoke(&lease(&id, "orders", Some(&i))).await });
    }
    while let Some(r) = set.join_next().await {
        r.unwrap().unwrap_or_else(|e| panic!("concurrent revoke failed: {e}"));
    }
    let left = pg.psql("SELECT count(*) FROM pg_roles WHERE rolname LIKE 'lessor\\_%'");
    assert_eq!(left, "0", "every role was dropped");
}

/// Custom creation statements are checked inside the issue transaction: a
/// role without `VALID UNTIL` (its password would outlive the lease), or no
/// role at all, is refused and nothing is left behind.
#[tokio::test]
async fn custom_creation_must_set_valid_until() {
    let mut pg = Pg::start();
    let c = pg.connection(&pg.admin_dsn(), json!({}));
    let p = build(
        c,
        vec![
            role("forever", &[], json!({"creation": ["CREATE ROLE {{name}} LOGIN PASSWORD {{password}}"]})),
            role("nothing", &[], json!({"creation": ["SELECT 1"]})),
            role("ok", &[], json!({"creation": ["CREATE ROLE {{name}} LOGIN PASSWORD {{password}} VALID UNTIL {{expiry}} CONNECTION LIMIT 2"]})),
        ],
    )
    .await
    .unwrap();
    let id = lease_id();
    let e = p.issue(request(&id, "forever", &[], MAX_TTL / 2)).await.unwrap_err();
    assert!(matches!(e, PluginError::Misconfigured(ref m) if m.contains("would outlive the lease")), "{e}");
    assert!(pg.roles_ending(&hex_of(&id)).is_empty(), "rolled back");
    let e = p.issue(request(&lease_id(), "nothing", &[], MAX_TTL / 2)).await.unwrap_err();
    assert!(matches!(e, PluginError::Misconfigured(ref m) if m.contains("did not create role")), "{e}");
    let id = lease_id();
    let i = p.issue(request(&id, "ok", &[], MAX_TTL / 2)).await.unwrap();
    assert!(pg.role_exists(&username(&i)));
}

/// A template that renders to two statements is refused before anything
/// reaches the server.
#[tokio::test]
async fn a_template_with_two_statements_is_refused() {
    let mut pg = Pg::start();
    let c = pg.connection(&pg.admin_dsn(), json!({}));
    let p = build(
        c,
        vec![role("two", &[], json!({"creation": ["CREATE ROLE {{name}} LOGIN PASSWORD {{password}} VALID UNTIL {{expiry}}; DROP ROLE canary"]}))],
    )
    .await
    .unwrap();
    let e = p.issue(request(&lease_id(), "two", &[], MAX_TTL / 2)).await.unwrap_err();
    assert!(matches!(e, PluginError::Misconfigured(ref m) if m.contains("more than one SQL statement")), "{e}");
    assert!(pg.role_exists("canary"));
}

/// Under load (every pooled connection busy) a request waits for the pool:
/// it does not open a TCP probe to the server each time (a handshake, and
/// for PostgreSQL a forked backend, per request). Counted in the server's
/// log with `log_connections` (every TCP connection, probes included).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_pool_does_not_probe_the_server_per_request() {
    let mut pg = Pg::start();
    pg.psql("ALTER SYSTEM SET log_connections = on");
    pg.psql("SELECT pg_reload_conf()");
    let p = pg.plugin(serde_json::json!({"pool_size": 2})).await;
    let burst = |n: usize| {
        let p = p.clone();
        async move {
            let mut set = tokio::task::JoinSet::new();
            for _ in 0..n {
                let p = p.clone();
                set.spawn(async move { p.issue(request(&lease_id(), "orders", &["orders.read"], MAX_TTL / 2)).await });
            }
            while let Some(r) = set.join_next().await {
                r.unwrap().unwrap_or_else(|e| panic!("issue failed: {e}"));
            }
        }
    };
    let log = pg.pg.dir().join("server.log");
    let tcp_connections = || std::fs::read_to_string(&log).unwrap().matches("connection received: host=127.0.0.1").count();
    // Warm: both connections open.
    burst(2).await;
    let before = tcp_connections();
    burst(40).await;
    let opened = tcp_connections() - before;
    assert!(opened <= 2, "40 issues through a warm pool of 2 opened {opened} TCP connections to the server");
}
