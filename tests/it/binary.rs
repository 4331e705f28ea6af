//! The real binary: secrets never reach logs (at debug level) or the store;
//! `lessor dev` + `lessor dev token` + `lessor creds` work as the README says;
//! `check` and `policy test` report precisely.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::daemon::kill_9_mid_burst;
use crate::support::{config_text, copy_dir, Issuer};

pub use crate::support::daemon::{run, spawn_until, stop};

fn read_all(dir: &Path, skip: &[&str]) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for e in walk(dir) {
        let name = e.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_owned();
        if skip.contains(&name.as_str()) {
            continue;
        }
        out.push((e.display().to_string(), std::fs::read(&e).unwrap_or_default()));
    }
    out
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut v = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            v.extend(walk(&p));
        } else {
            v.push(p);
        }
    }
    v
}

fn contains(hay: &[u8], needle: &str) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

#[tokio::test]
async fn no_secret_in_debug_logs_or_the_store() {
    let iss = Issuer::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    copy_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("policies"), &dir.join("policies"));
    let cfg = config_text(dir, &dir.join("policies"), &iss.url, "", "");
    std::fs::write(dir.join("lessor.toml"), cfg).unwrap();
    let log = dir.join("lessor.log");
    let (child, url) = spawn_until(
        &["serve", "--config", "lessor.toml"],
        dir,
        &[("RUST_LOG", "debug")],
        &log,
        "lessor listening on ",
    );
    let http = reqwest::Client::new();
    let jwt = iss.token();
    let mut canaries: Vec<(String, String)> = vec![("workload JWT".into(), jwt.clone())];
    canaries.push(("workload JWT signature".into(), jwt.rsplit('.').next().unwrap().to_owned()));
    for body in [json!({"role": "pki/web"}), json!({"role": "token/orders", "scopes": ["orders.read"]})] {
        let r = http.post(format!("{url}/v1/leases")).bearer_auth(&jwt).json(&body).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 201);
        let v: Value = r.json().await.unwrap();
        if let Some(k) = v["credential"]["private_key"].as_str() {
            // The base64 body of the key, line by line.
            for line in k.lines().filter(|l| !l.starts_with("-----") && l.len() > 20) {
                canaries.push(("issued private key".into(), line.to_owned()));
            }
        }
        if let Some(t) = v["credential"]["token"].as_str() {
            canaries.push(("issued token".into(), t.to_owned()));
            canaries.push(("issued token signature".into(), t.rsplit('.').next().unwrap().to_owned()));
        }
        // A refused request with the token in the body must not log it either.
        let _ = http.post(format!("{url}/v1/leases")).bearer_auth(&jwt).body(format!("{{\"role\": \"{jwt}\"")).send().await;
        let id = v["lease_id"].as_str().unwrap();
        let r = http.delete(format!("{url}/v1/leases/{id}")).bearer_auth(&jwt).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 200);
    }
    let admin = std::fs::read_to_string(dir.join("admin.token")).unwrap();
    canaries.push(("admin token".into(), admin.trim().to_owned()));
    let seal = std::fs::read_to_string(dir.join("seal.key")).unwrap();
    canaries.push(("seal key".into(), seal.trim().to_owned()));
    stop(child);

    let logs = std::fs::read(&log).unwrap();
    assert!(contains(&logs, "DEBUG"), "the daemon logged at debug level");
    for (what, c) in &canaries {
        assert!(!contains(&logs, c), "{what} appears in the debug log");
    }
    for (file, bytes) in read_all(dir, &["seal.key", "admin.token", "lessor.toml", "lessor.log"]) {
        if file.contains("/policies/") {
            continue;
        }
        assert!(!contains(&bytes, "PRIVATE KEY"), "a PEM private key is stored in plaintext in {file}");
        for (what, c) in &canaries {
            assert!(!contains(&bytes, c), "{what} is stored in {file}");
        }
    }
}

/// `--log-json`: one JSON object per line; every line logged while serving
/// a request carries its request id (the client's `x-request-id`), even
/// from the plugin's task; no secret at debug level.
#[tokio::test]
async fn json_logs_carry_the_request_id_and_no_secret() {
    let iss = Issuer::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    copy_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("policies"), &dir.join("policies"));
    std::fs::write(dir.join("lessor.toml"), config_text(dir, &dir.join("policies"), &iss.url, "", "")).unwrap();
    let log = dir.join("lessor.log");
    let (child, url) =
        spawn_until(&["serve", "--config", "lessor.toml", "--log-json"], dir, &[("RUST_LOG", "debug")], &log, "lessor listening on ");
    let http = reqwest::Client::new();
    let jwt = iss.token();
    let r = http
        .post(format!("{url}/v1/leases"))
        .bearer_auth(&jwt)
        .header("x-request-id", "trace-me-issue")
        .json(&json!({"role": "token/orders"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-request-id"], "trace-me-issue");
    let v: Value = r.json().await.unwrap();
    let token = v["credential"]["token"].as_str().unwrap().to_owned();
    let id = v["lease_id"].as_str().unwrap().to_owned();
    let r = http
        .delete(format!("{url}/v1/leases/{id}"))
        .bearer_auth(&jwt)
        .header("x-request-id", "trace-me-revoke")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    stop(child);

    let text = std::fs::read_to_string(&log).unwrap();
    for (what, c) in [("workload JWT", jwt.as_str()), ("issued token", token.as_str())] {
        assert!(!text.contains(c), "{what} appears in the JSON log");
    }
    let lines: Vec<Value> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}")))
        .collect();
    // The request span is the outermost of a line's spans.
    let rid = |l: &Value| {
        l["spans"].as_array()?.iter().find(|s| s["name"] == "request")?["request_id"].as_str().map(str::to_owned)
    };
    let msg = |l: &Value| l["fields"]["message"].as_str().unwrap_or_default().to_owned();
    // Lines from inside each request, including the plugin's own.
    let issued = lines.iter().find(|l| msg(l) == "token issued").expect("the plugin logged the issue");
    assert_eq!(rid(issued).as_deref(), Some("trace-me-issue"), "{issued}");
    let ended = lines.iter().find(|l| msg(l) == "lease ended").expect("the revocation was logged");
    assert_eq!(rid(ended).as_deref(), Some("trace-me-revoke"), "{ended}");
    // Every line inside a request span names that request's id.
    for l in lines.iter().filter(|l| l["spans"].as_array().is_some_and(|s| s.iter().any(|s| s["name"] == "request"))) {
        assert!(rid(l).is_some_and(|r| r.starts_with("trace-me-")), "a request's line without its id: {l}");
    }
}

#[test]
fn dev_mode_gives_a_newcomer_a_certificate_and_a_token() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("dev");
    let data_s = data.display().to_string();
    let log = tmp.path().join("dev.log");
    let (child, addr) = spawn_until(
        &["dev", "--listen", "127.0.0.1:0", "--data-dir", &data_s],
        repo,
        &[],
        &log,
        "lessor dev is serving on ",
    );
    let (code, jwt, err) = run(&["dev", "token", "--repo", "acme/api", "--data-dir", &data_s], repo, &[]);
    assert_eq!(code, 0, "{err}");
    let jwt = jwt.trim().to_owned();
    let out = tmp.path().join("creds");
    let out_s = out.display().to_string();
    let env = [("LESSOR_JWT", jwt.as_str()), ("LESSOR_ADDR", addr.as_str()), ("LESSOR_DEV_DIR", data_s.as_str())];
    let (code, stdout, err) = run(&["creds", "pki/web", "--ttl", "2m", "--out", &out_s], repo, &env);
    assert_eq!(code, 0, "{err}");
    assert!(stdout.contains("for pki/web until"), "{stdout}");
    let cert = std::fs::read_to_string(out.join("cert.pem")).unwrap();
    assert!(cert.starts_with("-----BEGIN CERTIFICATE-----"));
    assert!(std::fs::read_to_string(out.join("key.pem")).unwrap().contains("PRIVATE KEY"));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(out.join("key.pem")).unwrap().permissions().mode() & 0o777, 0o600);
    }

    let (code, stdout, err) = run(&["creds", "token/orders", "--scope", "orders.read"], repo, &env);
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(v["credential"]["scopes"], json!(["orders.read"]));

    let (code, stdout, err) = run(&["lease", "list"], repo, &env);
    assert_eq!(code, 0, "{err}");
    assert!(stdout.contains("pki/web") && stdout.contains("token/orders") && stdout.contains("active"), "{stdout}");

    // A denied request: one clear line, non-zero exit.
    let (code, feature_jwt, _) = run(&["dev", "token", "--repo", "acme/api", "--ref", "refs/heads/dev", "--data-dir", &data_s], repo, &[]);
    assert_eq!(code, 0);
    let env2 = [("LESSOR_JWT", feature_jwt.trim()), ("LESSOR_ADDR", addr.as_str())];
    let (code, _, err) = run(&["creds", "pki/web"], repo, &env2);
    assert_eq!(code, 1);
    assert!(err.starts_with("error: ") && err.contains("no policy permits it") && err.contains("HTTP 403"), "{err}");
    stop(child);
}

#[test]
fn check_and_policy_test_report_precisely() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let (code, out, err) = run(&["policy", "test", "policies/tests"], repo, &[]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("36 passed, 0 failed"), "{out}");

    let tmp = tempfile::tempdir().unwrap();
    let bad = tmp.path().join("bad.toml");
    std::fs::write(
        &bad,
        r#"
[roles."pki/web"]
plugin = "pki"
max_ttl = "1h"
[[case]]
name = "wrongly expects a feature branch to be allowed"
role = "pki/web"
principal = { issuer = "x", subject = "y", repository_owner = "acme", ref = "refs/heads/dev" }
expect = "allow"
"#,
    )
    .unwrap();
    let (code, out, _) = run(&["policy", "test", &bad.display().to_string()], repo, &[]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("FAIL") && out.contains("expected allow, got deny"), "{out}");

    // `check` on a config whose policies do not validate names file and line.
    let dir = tmp.path().join("cfg");
    copy_dir(&repo.join("policies"), &dir.join("policies"));
    std::fs::write(dir.join("policies/typo.cedar"), "@id(\"typo\")\npermit(principal, action, resource)\nwhen { principal.repositroy == \"x\" };\n").unwrap();
    std::fs::write(dir.join("lessor.toml"), config_text(&dir, &dir.join("policies"), "https://issuer.example", "", "")).unwrap();
    let (code, _, err) = run(&["check", "--config", "lessor.toml"], &dir, &[]);
    assert_eq!(code, 1);
    assert!(err.contains("typo.cedar:3") && err.contains("`typo`"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    std::fs::remove_file(dir.join("policies/typo.cedar")).unwrap();
    let (code, out, err) = run(&["check", "--config", "lessor.toml"], &dir, &[]);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("ok: 1 issuer(s), 2 connection(s), 2 role(s)"), "{out}");
}

#[tokio::test]
async fn sighup_reloads_policies() {
    let iss = Issuer::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    copy_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("policies"), &dir.join("policies"));
    // Polling effectively off: only SIGHUP can reload.
    let cfg = config_text(dir, &dir.join("policies"), &iss.url, "", "").replace("policy_poll = \"100ms\"", "policy_poll = \"1h\"");
    std::fs::write(dir.join("lessor.toml"), cfg).unwrap();
    let log = dir.join("lessor.log");
    let (child, url) = spawn_until(&["serve", "--config", "lessor.toml"], dir, &[], &log, "lessor listening on ");
    let http = reqwest::Client::new();
    let issue = || async {
        http.post(format!("{url}/v1/leases")).bearer_auth(iss.token()).json(&json!({"role": "pki/web"})).send().await.unwrap().status().as_u16()
    };
    assert_eq!(issue().await, 201);
    std::fs::write(
        dir.join("policies/freeze.cedar"),
        "@id(\"freeze\")\nforbid(principal, action == Lessor::Action::\"issue\", resource == Lessor::Role::\"pki/web\");\n",
    )
    .unwrap();
    assert_eq!(issue().await, 201, "no reload without a signal");
    let _ = Command::new("kill").arg("-HUP").arg(child.id().to_string()).status();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut status = 0;
    while Instant::now() < deadline {
        status = issue().await;
        if status == 403 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(status, 403, "SIGHUP reloaded the policies");
    stop(child);
}

/// `kill -9` in the middle of a burst of PostgreSQL issues, then a restart:
/// every lessor role at the server belongs to an active lease, and every
/// lease left pending is cleaned up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_burst_leaves_no_orphaned_role() {
    use crate::postgres::{pg_toml, start_pg, PG_POLICY};
    let iss = Issuer::start().await;
    let pg = start_pg();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let d = kill_9_mid_burst(&iss, dir, PG_POLICY, &pg_toml(&pg, dir), "pg/app").await;
    let active = d.active_once_pending_are_cleaned().await;
    let roles: std::collections::BTreeSet<String> = pg
        .psql("postgres", "SELECT rolname FROM pg_roles WHERE rolname LIKE 'lessor\\_%'")
        .unwrap()
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| format!("lse_{}", &l[l.len() - 32..]))
        .collect();
    assert_eq!(roles, active, "every role at PostgreSQL belongs to an active lease");
    d.stop();
}

#[test]
fn check_connections_reports_who_lessor_is_connected_as() {
    use crate::postgres::{pg_toml, start_pg};
    let pg = start_pg();
    pg.psql("postgres", "CREATE ROLE weak LOGIN PASSWORD 'weak-pw-1'").unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    copy_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("policies"), &dir.join("policies"));
    std::fs::write(dir.join("weak.dsn"), pg.dsn("weak", "weak-pw-1", "app")).unwrap();
    let extra = format!(
        "{}\n[connections.pgweak]\nplugin = \"postgres\"\n[connections.pgweak.config]\ndsn_file = \"{}\"\n",
        pg_toml(&pg, dir),
        dir.join("weak.dsn").display()
    );
    std::fs::write(dir.join("lessor.toml"), config_text(dir, &dir.join("policies"), "https://issuer.example", &extra, "")).unwrap();
    let (code, out, err) = run(&["check", "--config", "lessor.toml", "--connections"], dir, &[]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.contains("ok    connection `pg` (postgres): connected as postgres"), "{out}");
    assert!(out.contains("superuser"), "a superuser admin is warned about: {out}");
    assert!(out.contains("FAIL  connection `pgweak` (postgres)") && out.contains("lacks CREATEROLE"), "{out}");
    assert!(out.contains("ok    connection `pki` (pki)") && out.contains("ok    connection `token` (token)"), "{out}");
    assert!(!out.contains(pg.superuser_password()) && !out.contains("weak-pw-1"), "no password in the output: {out}");
}

/// `lessor dev --postgres <DSN>`: one flag adds a PostgreSQL role, and the
/// login it issues can read the database.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_mode_serves_postgres_roles_with_one_flag() {
    let pg = crate::postgres::start_pg();
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("dev");
    let data_s = data.display().to_string();
    let dsn = pg.dsn("postgres", pg.superuser_password(), "app");
    let (child, addr) = spawn_until(
        &["dev", "--listen", "127.0.0.1:0", "--data-dir", &data_s, "--postgres", &dsn],
        repo,
        &[],
        &tmp.path().join("dev.log"),
        "lessor dev is serving on ",
    );
    let (code, jwt, err) = run(&["dev", "token", "--data-dir", &data_s], repo, &[]);
    assert_eq!(code, 0, "{err}");
    let env = [("LESSOR_JWT", jwt.trim()), ("LESSOR_ADDR", addr.as_str())];
    let (code, out, err) = run(&["creds", "pg/readonly", "--ttl", "5m"], repo, &env);
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    let mut c = <sqlx::PgConnection as sqlx::Connection>::connect(v["credential"]["dsn"].as_str().unwrap()).await.unwrap();
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM orders").fetch_one(&mut c).await.unwrap();
    assert_eq!(n, 1);
    let e = sqlx::query("INSERT INTO orders VALUES (9)").execute(&mut c).await.unwrap_err().to_string();
    assert!(e.contains("permission denied"), "{e}");
    // The DSN is in a private file, not in the generated config.
    let cfg = std::fs::read_to_string(data.join("lessor.toml")).unwrap();
    assert!(!cfg.contains(pg.superuser_password()));
    stop(child);
}
