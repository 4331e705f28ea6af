//! Malformed input: a precise 400 naming the field, and nothing changed.

use serde_json::{json, Value};

use crate::support::{Daemon, Issuer};

#[tokio::test]
async fn malformed_requests_name_the_field_and_change_nothing() {
    let iss = Issuer::start().await;
    let d = Daemon::start(&iss).await;
    let jwt = iss.token();
    let cases: Vec<(Value, &str, &str)> = vec![
        (json!({}), "role", "missing field `role`"),
        (json!({"role": "pki/web", "ttl": 5}), "ttl", "invalid type"),
        (json!({"role": "pki/web", "colour": "red"}), "colour", "unknown field `colour`"),
        (json!({"role": "pki/web", "ttl": "soon"}), "ttl", "`soon` is not a duration"),
        (json!({"role": "pki/web", "params": {"names": ["evil.example.com"]}}), "params", "not allowed"),
    ];
    for (body, field, msg) in cases {
        let (s, v) = d.issue(&jwt, body.clone()).await;
        assert_eq!(s, 400, "{body}: {v}");
        assert_eq!(v["error"]["field"], field, "{body}: {v}");
        assert!(v["error"]["message"].as_str().unwrap().contains(msg), "{body}: {v}");
    }
    let (s, v) = d.issue(&jwt, json!({"role": "pki/nope"})).await;
    assert_eq!(s, 404, "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("role `pki/nope` does not exist"), "{v}");

    // Not JSON at all.
    let r = d.http.post(format!("{}/v1/leases", d.url)).bearer_auth(&jwt).header("content-type", "application/json").body("{").send().await.unwrap();
    assert_eq!(r.status().as_u16(), 400);
    // Too large.
    let big = json!({"role": "pki/web", "params": {"pad": "x".repeat(70_000)}});
    let (s, v) = d.issue(&jwt, big).await;
    assert_eq!(s, 413, "{v}");
    assert_eq!(v["error"]["code"], "too_large");
    // A vendor-level refusal leaves no live lease behind.
    let leases = d.leases().await;
    assert!(leases.iter().all(|l| l["state"] != "active" && l["state"] != "pending"), "{leases:?}");
}

#[tokio::test]
async fn health_and_metrics_answer() {
    let iss = Issuer::start().await;
    let d = Daemon::start(&iss).await;
    let (s, _) = d.issue(&iss.token(), json!({"role": "token/orders"})).await;
    assert_eq!(s, 201);
    let h: Value = d.http.get(format!("{}/v1/health", d.url)).send().await.unwrap().json().await.unwrap();
    assert_eq!(h["ready"], true);
    assert_eq!(h["store_backend"], "sqlite");
    let m = d.http.get(format!("{}/metrics", d.url)).send().await.unwrap().text().await.unwrap();
    assert!(m.contains("lessor_leases{plugin=\"token\",role=\"token/orders\",state=\"active\"}"), "{m}");
    assert!(m.contains("lessor_issued_total{api=\"native\",outcome=\"ok\",plugin=\"token\",role=\"token/orders\"}"), "{m}");
    assert!(m.contains("lessor_issue_duration_seconds_bucket{plugin=\"token\""), "{m}");
    assert!(!m.contains("lse_"), "no lease ids in metric labels");
}
