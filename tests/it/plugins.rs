//! The core knows plugins only through their registrations and what they
//! declare: documents through one generic route (the old URLs alias it),
//! what revocation means per vendor in the API, status and audit, and
//! `lessor check` validating plugin config without building plugins.

use std::time::Duration;

use lessor::config::Config;
use serde_json::{json, Value};

use crate::support::{config_text, Daemon, Issuer};

async fn get_raw(d: &Daemon, path: &str) -> (u16, String, Vec<u8>) {
    let r = d.http.get(format!("{}{path}", d.url)).send().await.unwrap();
    let status = r.status().as_u16();
    let ct = r.headers().get("content-type").map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
    (status, ct, r.bytes().await.unwrap().to_vec())
}

#[tokio::test]
async fn documents_are_served_by_the_generic_route_and_the_old_urls_alias_it() {
    let iss = Issuer::start().await;
    let d = Daemon::start(&iss).await;
    // A role document: the generic route and both old spellings agree.
    let (s, ct, ca) = get_raw(&d, "/v1/plugins/pki/web/ca").await;
    assert_eq!((s, ct.as_str()), (200, "application/pem-certificate-chain"));
    assert!(String::from_utf8_lossy(&ca).starts_with("-----BEGIN CERTIFICATE-----"));
    assert_eq!(d.bytes("/v1/pki/pki/web/ca").await, ca);
    assert_eq!(d.bytes("/v1/pki/web/ca").await, ca);
    let (s, ct, _) = get_raw(&d, "/v1/plugins/pki/web/crl").await;
    assert_eq!((s, ct.as_str()), (200, "application/pkix-crl"));
    let (s, ct, der) = get_raw(&d, "/v1/plugins/pki/web/ca.der").await;
    assert_eq!((s, ct.as_str()), (200, "application/pkix-cert"));
    assert_eq!(d.bytes("/v1/pki/pki/web/ca.der").await, der);

    // A connection document: the token JWKS, also merged at the well-known URL.
    let (s, ct, body) = get_raw(&d, "/v1/plugins/token/jwks").await;
    assert_eq!((s, ct.as_str()), (200, "application/json"));
    let jwks: Value = serde_json::from_slice(&body).unwrap();
    let well_known: Value = serde_json::from_slice(&d.bytes("/.well-known/jwks.json").await).unwrap();
    assert!(!jwks["keys"].as_array().unwrap().is_empty(), "{jwks}");
    assert_eq!(jwks["keys"], well_known["keys"]);

    // What is not served is a 404 that says what is.
    let not_found = |path: &'static str, needle: &'static str| {
        let d = &d;
        async move {
            let (s, _, body) = get_raw(d, path).await;
            let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            assert_eq!(s, 404, "{path}: {v}");
            let m = v["error"]["message"].as_str().unwrap_or_default().to_owned();
            assert!(m.contains(needle), "{path}: {m}");
        }
    };
    not_found("/v1/plugins/pki/web/nope", "role `pki/web` has no document `nope`; it serves: ca, ca.der, crl").await;
    not_found("/v1/plugins/token/ca", "connection `token` has no document `ca`; it serves: jwks").await;
    not_found("/v1/plugins/token/orders/ca", "role `token/orders` serves no documents").await;
    not_found("/v1/plugins/pki/nobody/ca", "role `pki/nobody` has no document `ca`").await;
    not_found("/v1/plugins/nope/jwks", "no connection `nope`").await;
    // The alias finds only roles that serve the document, whatever the kind.
    not_found("/v1/pki/token/orders/ca", "no role `token/orders` serves a document `ca`").await;
    not_found("/v1/pki/pki/web/nope", "no role `pki/web` serves a document `nope`").await;
}

#[tokio::test]
async fn revocation_is_told_per_vendor_in_roles_leases_status_and_audit() {
    let iss = Issuer::start().await;
    let d = Daemon::start(&iss).await;
    let jwt = iss.token();
    let (s, v) = d.get("/v1/roles", &jwt).await;
    assert_eq!(s, 200, "{v}");
    let role = |name: &str| v["roles"].as_array().unwrap().iter().find(|r| r["role"] == name).cloned().unwrap();
    let pki = role("pki/web");
    assert_eq!(pki["revocation"]["mode"], "published", "{pki}");
    assert!(pki["revocation"]["description"].as_str().unwrap().contains("via CRL"), "{pki}");
    let tok = role("token/orders");
    assert_eq!(tok["revocation"]["mode"], "published", "{tok}");
    assert!(tok["revocation"]["description"].as_str().unwrap().contains("introspection"), "{tok}");

    // A revoked certificate: the lease says what revoked means there.
    let (s, v) = d.issue(&jwt, json!({"role": "pki/web", "ttl": "10m"})).await;
    assert_eq!(s, 201, "{v}");
    let id = v["lease_id"].as_str().unwrap().to_owned();
    let (s, v) = d.get(&format!("/v1/leases/{id}"), &jwt).await;
    assert_eq!((s, v["revocation"].as_str(), v.get("message")), (200, Some("published"), None), "{v}");
    let (s, v) = d.delete(&format!("/v1/leases/{id}"), &jwt).await;
    assert_eq!(s, 200, "{v}");
    let (_, v) = d.get(&format!("/v1/leases/{id}"), &jwt).await;
    assert_eq!(v["state"], "revoked", "{v}");
    let m = v["message"].as_str().unwrap_or_default();
    assert!(m.contains("published via CRL") && m.contains("accept the credential until it expires"), "{v}");

    // The audit entry of the revocation names the mode.
    let audit = d.dir.join("audit.log");
    let entry = Daemon::eventually(Duration::from_secs(5), || async {
        std::fs::read_to_string(&audit)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|e| e["action"] == "revoke" && e["outcome"] == "ok" && e["lease_id"] == id.as_str())
    })
    .await
    .expect("revoke audit entry");
    assert_eq!(entry["details"]["revocation"], "published", "{entry}");

    // Status lists every connection's mode; `lessor status` prints the ones
    // that are not immediate.
    let (s, st) = d.get("/v1/admin/status", &d.admin).await;
    assert_eq!(s, 200, "{st}");
    let modes: Vec<(String, String)> = st["revocation"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["connection"].as_str().unwrap().to_owned(), r["mode"].as_str().unwrap().to_owned()))
        .collect();
    assert_eq!(modes, [("pki".to_string(), "published".to_string()), ("token".to_string(), "published".to_string())]);
    let text = lessor::cli::render_status(&d.url, &st);
    assert!(text.contains("REVOCATION IS NOT IMMEDIATE FOR") && text.contains("pki (pki): revocable with delay"), "{text}");
}

fn config_with(extra: &str) -> Config {
    let dir = tempfile::tempdir().unwrap();
    let text = config_text(dir.path(), &dir.path().join("policies"), "https://issuer.test", extra, "");
    Config::from_toml(&text).unwrap()
}

#[test]
fn check_validates_plugin_config_through_the_registry_without_building() {
    // The default test config is fine.
    lessor::plugins::check_config(&config_with("")).unwrap();
    // Files a plugin would read at build are not read by the check.
    let cfg = config_with(
        r#"
[connections.corp]
plugin = "pki"
environment = "staging"
[connections.corp.roles.files]
max_ttl = "1h"
[connections.corp.roles.files.config]
allowed_names = ["x.test"]
ca = { cert_file = "/nonexistent/ca.pem", key_file = "/nonexistent/ca.key" }
[connections.pg]
plugin = "postgres"
environment = "staging"
[connections.pg.config]
dsn_file = "/nonexistent/dsn"
[connections.pg.roles.app]
max_ttl = "1h"
"#,
    );
    lessor::plugins::check_config(&cfg).unwrap();
    assert_eq!(lessor::plugins::ca_files(&cfg).unwrap(), [("corp/files".to_string(), "/nonexistent/ca.pem".to_string())]);

    let bad = |extra: &str, needle: &str| {
        let e = lessor::plugins::check_config(&config_with(extra)).unwrap_err();
        assert!(e.contains(needle), "{e}");
    };
    let pki = "[connections.corp]\nplugin = \"pki\"\nenvironment = \"staging\"\n[connections.corp.roles.web]\nmax_ttl = \"1h\"\n[connections.corp.roles.web.config]\n";
    bad(
        &format!("{pki}allowed_names = []\n"),
        "connection `corp` (pki): misconfigured: role `web`: `allowed_names` must list at least one name",
    );
    bad(&format!("{pki}allowed_names = [\"a.test\"]\nca = {{ cert_file = \"c\" }}\n"), "`ca.cert_file` is set but `ca.key_file` is not");
    bad(
        "[connections.pg]\nplugin = \"postgres\"\nenvironment = \"staging\"\n[connections.pg.config]\ndsn_file = \"a\"\ndsn_env = \"B\"\n",
        "connection `pg` (postgres): set either `dsn_file` or `dsn_env`, not both",
    );
    bad(
        "[connections.rc]\nplugin = \"redis\"\nenvironment = \"staging\"\n[connections.rc.config]\nnodes = [\"redis://h\"]\npassword_file = \"a\"\npassword_env = \"B\"\n",
        "connection `rc` (redis): set either `password_file` or `password_env`, not both",
    );
    bad(
        "[connections.tok2]\nplugin = \"token\"\nenvironment = \"staging\"\n[connections.tok2.config]\nalgorithm = \"none\"\n",
        "connection `tok2` (token): misconfigured",
    );
    let mysql = "[connections.my]\nplugin = \"mysql\"\nenvironment = \"staging\"\n[connections.my.config]\ndsn_file = \"/nonexistent/dsn\"\n[connections.my.roles.app]\nmax_ttl = \"1h\"\n[connections.my.roles.app.config]\n";
    lessor::plugins::check_config(&config_with(&format!("{mysql}host = \"10.0.%\"\n"))).unwrap();
    bad(&format!("{mysql}host = \"\"\n"), "connection `my` (mysql): ");
    bad(&format!("{mysql}host = \"\"\n"), "is empty (use \"%\" for any host)");
    bad(
        "[connections.my]\nplugin = \"mysql\"\nenvironment = \"staging\"\n[connections.my.config]\ndsn_file = \"a\"\ndsn_env = \"B\"\n",
        "connection `my` (mysql): set either `dsn_file` or `dsn_env`, not both",
    );
    bad("[connections.x]\nplugin = \"oracle\"\nenvironment = \"staging\"\n", "connection `x`: unknown plugin `oracle` (this build has: pki, token, postgres, redis, external, mysql)");
}

#[test]
fn every_registration_matches_the_sdk_and_names_its_kind() {
    let regs = lessor::plugins::registrations();
    let kinds: Vec<&str> = regs.iter().map(|r| r.kind).collect();
    assert_eq!(kinds, ["pki", "token", "postgres", "redis", "external", "mysql"]);
    for r in &regs {
        assert_eq!(r.sdk_version, lessor_plugin::SDK_VERSION, "{r:?}");
        assert_eq!(lessor::plugins::registration(r.kind).unwrap().kind, r.kind);
    }
    assert_eq!(lessor_plugin::SDK_VERSION, 2);
}
