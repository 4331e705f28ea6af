//! The OpenAPI contract: `GET /v1/openapi.json` is served without
//! credentials, every documented operation is routed, and Schemathesis
//! (PyPI `schemathesis`; .ci/run installs it) finds no 5xx, no panic in the
//! daemon's log and no response that contradicts the document, on every
//! endpoint with a real workload JWT and the admin token.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use serde_json::{json, Value};

use crate::binary::{spawn_until, stop};
use crate::support::{config_text, copy_dir, now, Daemon, Issuer};

/// A concrete URL for a documented path template.
fn concrete(path: &str) -> String {
    path.replace("{id}", "lse_00000000000000000000000000")
        .replace("{name}", "pki")
        .replace("{role}", "web")
        .replace("{document}", "ca")
}

#[tokio::test]
async fn the_document_is_served_and_every_documented_operation_is_routed() {
    let iss = Issuer::start().await;
    let d = Daemon::start(&iss).await;
    let r = d.http.get(format!("{}/v1/openapi.json", d.url)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/json");
    let doc: Value = r.json().await.unwrap();
    assert_eq!(doc, lessor::http::openapi_document(), "the served document is the generated one");
    assert_eq!(doc["openapi"], "3.1.0");
    for scheme in ["workload_jwt", "admin_token", "client_cert"] {
        assert!(doc["components"]["securitySchemes"][scheme].is_object(), "{scheme}");
    }
    let paths = doc["paths"].as_object().unwrap();
    assert!(paths.len() >= 20, "{:?}", paths.keys());
    for (path, item) in paths {
        for (method, _) in item.as_object().unwrap() {
            let url = format!("{}{}", d.url, concrete(path));
            let m = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let r = d.http.request(m, &url).json(&json!({})).send().await.unwrap();
            let status = r.status().as_u16();
            let body = r.text().await.unwrap_or_default();
            assert_ne!(status, 405, "{method} {path}: documented but the router has no such method");
            assert!(!body.contains("no such endpoint"), "{method} {path}: documented but not routed ({status} {body})");
        }
    }
}

/// `schemathesis` (or its short name `st`) on PATH.
fn schemathesis() -> String {
    for bin in ["schemathesis", "st"] {
        let ok = Command::new(bin).arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success());
        if ok {
            return bin.to_owned();
        }
    }
    panic!("Schemathesis is not installed: `pip install schemathesis` (.ci/run installs it when `schemathesis`/`st` is not on PATH)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_server_error_panic_or_nonconforming_response() {
    let _heavy = crate::support::heavy().await;
    let st = schemathesis();
    let iss = Issuer::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    copy_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("policies"), &dir.join("policies"));
    // Schemathesis sends many deliberately bad credentials; the brake on
    // refused authentications (tested in http::brake and flood.rs) would
    // only make its bounded run cover fewer cases.
    let extra = "[limits]\nauth_failures_per_second = 0\n";
    std::fs::write(dir.join("lessor.toml"), config_text(dir, &dir.join("policies"), &iss.url, extra, "")).unwrap();
    let log = dir.join("lessor.log");
    let (child, url) = spawn_until(&["serve", "--config", "lessor.toml"], dir, &[], &log, "lessor listening on ");
    let admin = std::fs::read_to_string(dir.join("admin.token")).unwrap().trim().to_owned();
    // Valid for the whole run (the issuer's max_token_age is 1h).
    let mut claims = iss.gh_claims("acme/api", "refs/heads/main");
    claims.insert("exp".into(), json!(now() + 1800));
    let jwt = iss.sign(&claims);

    std::fs::write(
        dir.join("schemathesis.toml"),
        format!(
            "[auth.openapi.workload_jwt]\nbearer = \"{jwt}\"\n[auth.openapi.admin_token]\nbearer = \"{admin}\"\n\
             [generation]\nmax-examples = 25\n"
        ),
    )
    .unwrap();
    let started = Instant::now();
    let out = tokio::task::spawn_blocking({
        let (dir, url) = (dir.to_path_buf(), url.clone());
        move || {
            Command::new(&st)
                .current_dir(&dir)
                .env("NO_COLOR", "1")
                .args(["--config-file", "schemathesis.toml", "run", &format!("{url}/v1/openapi.json")])
                .args(["--checks", "all"])
                // DELETE revokes: the lease stays readable (state `revoked`), by design.
                // Valid requests for unknown roles or leases are rightly refused.
                .args(["--exclude-checks", "use_after_free,positive_data_acceptance"])
                .args(["--seed", "1", "--workers", "2", "--max-time", "150", "--no-color"])
                .args(["--report", "json", "--report-json-path", "schemathesis.json"])
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    let elapsed = started.elapsed();
    stop(child);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let summary: String = stdout.lines().rev().take(25).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n");
    eprintln!("schemathesis ran {elapsed:.1?}:\n{summary}");
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(!text.contains("panicked"), "the daemon panicked under Schemathesis:\n{text}");
    assert!(out.status.success(), "Schemathesis found failures:\n{stdout}\n{stderr}");
    assert!(stdout.contains("passed") || stdout.contains("Passed"), "{stdout}");
}

/// A query string that does not deserialize was axum's plain-text 400,
/// contradicting the document (every error is JSON, naming the field).
#[tokio::test]
async fn a_bad_query_string_is_a_json_error_naming_the_parameter() {
    let iss = Issuer::start().await;
    let d = Daemon::start(&iss).await;
    for (query, field) in [("limit=abc", "limit"), ("colour=red", "colour"), ("limit=-1", "limit")] {
        let (s, v) = d.get(&format!("/v1/admin/leases?{query}"), &d.admin).await;
        assert_eq!(s, 400, "{query}: {v}");
        assert_eq!(v["error"]["code"], "invalid_request", "{query}: {v}");
        assert_eq!(v["error"]["field"], field, "{query}: {v}");
    }
}
