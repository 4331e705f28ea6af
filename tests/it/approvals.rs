//! Approvals of production root credentials (issue 13) through the real
//! server with the fake root-credential plugin: only people approve,
//! distinct by provider#subject and by email; whoever set the candidate
//! cannot; a workload JWT never can, whatever a policy permits; the admin
//! token approves as break-glass, flagged in the record and the audit; the
//! audit names both people; Cedar decides people's connection actions and
//! says why not. People are made as `Actor::Person` and call the service
//! (signing in is the people module's, tested there); workloads and the
//! admin token go through HTTP.

use lessor::principal::RequestMeta;
use lessor_plugin::secrecy::SecretString;
use serde_json::{json, Value};
use std::sync::Mutex;

use crate::connections::{alice, approve_as, bob, fake_toml, operator, person, roots, start, Api, Fakes};
use crate::support::Issuer;

fn audit_entries(dir: &std::path::Path) -> Vec<Value> {
    let text = std::fs::read_to_string(dir.join("audit.log")).unwrap();
    text.lines().filter_map(|l| serde_json::from_str::<Value>(l).ok()).collect()
}

#[tokio::test]
async fn approvals_come_from_two_distinct_people_never_a_workload_and_break_glass_is_flagged() {
    let iss = Issuer::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let fakes = Fakes::new();
    let d = start(tmp.path(), &iss.url, &fake_toml("90d", "2099-01-01"), None, &fakes).await.unwrap();
    let api = Api { d: &d, seen: Mutex::new(Vec::new()) };
    let meta = RequestMeta::internal();
    let r = roots(&d);
    let secret = |s: &str| SecretString::from(s.to_string());

    // alice (platform) sets and verifies a production candidate; her
    // record keeps her provider subject and email.
    let v = r.set_secret(&alice(), "prod", secret("lessor_admin:app:one"), "new vendor key", &meta).await.unwrap();
    assert_eq!(v.set_by, "dev#alice <alice@example.com>");
    assert!(r.verify(&alice(), "prod", None, &meta).await.unwrap().1.ok);

    // alice cannot approve it (a test policy lets her approve: the refusal
    // is lessor's), nor can her second session (the same subject).
    let e = approve_as(&d, &alice(), "prod").await.unwrap_err().to_string();
    assert!(e.contains("`dev#alice` set version 1 of connection `prod` and cannot also approve it"), "{e}");
    // Nor a second provider subject with her email, though Cedar lets
    // finance at `corp` approve.
    let alice_corp = person("corp", "a.smith", "alice@example.com", &["finance"]);
    let e = approve_as(&d, &alice_corp, "prod").await.unwrap_err().to_string();
    assert!(e.contains("`corp#a.smith` has the same email (`alice@example.com`) as `dev#alice`"), "{e}");

    // A workload JWT is refused, saying why, even one a policy permits
    // `connection_approve` (test-alice-may-also-approve).
    let jwt = operator(&iss, "alice");
    let (s, v) = api.post("/v1/admin/connections/prod/approve", &jwt, json!({})).await;
    assert_eq!(s, 403, "{v}");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(msg.contains("is a workload: approvals come only from people") && msg.contains("whatever the policies permit"), "{msg}");

    // Cedar: a person outside the permitted groups is denied, with the
    // reason of the policy that would have permitted it; someone in both
    // platform and finance too.
    let carol = person("dev", "carol", "carol@example.com", &["account:acme"]);
    let e = approve_as(&d, &carol, "prod").await.unwrap_err().to_string();
    for part in [
        "no policy permits it for person `dev#carol`",
        "email `carol@example.com`",
        "groups considered: `account:acme`",
        "`finance-approves-root-credentials` (the finance group approves production root credentials",
    ] {
        assert!(e.contains(part), "{part}: {e}");
    }
    let erin = person("dev", "erin", "erin@example.com", &["finance", "platform"]);
    assert!(approve_as(&d, &erin, "prod").await.is_err());
    let e = r.set_secret(&bob(), "prod", secret("lessor_admin:app:bob"), "not his job", &meta).await.unwrap_err();
    assert!(e.to_string().contains("`connection_set_secret` on connection `prod` denied: no policy permits it for person `dev#bob`"), "{e}");

    // Nothing was approved by the refusals; bob (finance) approves; alice
    // activates.
    let (_, v) = api.call(reqwest::Method::GET, "/v1/admin/connections/prod", &d.admin, None).await;
    assert_eq!(v["versions"][0]["approved_by"], Value::Null, "{v}");
    let v = approve_as(&d, &bob(), "prod").await.unwrap();
    assert_eq!(v.approved_by.as_deref(), Some("dev#bob <bob@example.com>"));
    let v = r.activate(&alice(), "prod", None, &meta).await.unwrap();
    assert_eq!((v.version, v.activated_by.as_deref()), (1, Some("dev#alice <alice@example.com>")));
    let (_, v) = api.call(reqwest::Method::GET, "/v1/admin/connections/prod", &d.admin, None).await;
    assert_eq!((v["versions"][0]["approved_by"].as_str(), v["versions"][0]["approved_break_glass"].as_bool()), (Some("dev#bob <bob@example.com>"), Some(false)), "{v}");

    // Break-glass: the admin token approves alice's v2, flagged.
    r.set_secret(&alice(), "prod", secret("lessor_admin:app:two"), "rotation", &meta).await.unwrap();
    let (s, v) = api.post("/v1/admin/connections/prod/approve", &d.admin, json!({})).await;
    assert_eq!(s, 200, "{v}");
    let by = v["approved_by"].as_str().unwrap();
    assert!(by.starts_with("token:") && by.ends_with(" [break-glass]"), "{v}");
    assert_eq!(v["approved_break_glass"], true, "{v}");
    // The admin token counts as one person: it cannot approve what an
    // admin credential set; a person can.
    let (s, v) = api.set("prod", &d.admin, "lessor_admin:app:three").await;
    assert_eq!(s, 201, "{v}");
    let (s, v) = api.post("/v1/admin/connections/prod/approve", &d.admin, json!({})).await;
    assert_eq!(s, 403, "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("all admin credentials count as one person (break-glass)"), "{v}");
    assert_eq!(approve_as(&d, &bob(), "prod").await.unwrap().version, 3);

    // The audit names both people: who set (alice, a person with her
    // provider and email) and who approved (bob), each refusal with its
    // reason, and the break-glass approval flagged.
    drop(api);
    let mut d = d;
    d.stop().await;
    let entries = audit_entries(tmp.path());
    let find = |action: &str, outcome: &str, pred: &dyn Fn(&Value) -> bool| -> Vec<Value> {
        entries.iter().filter(|e| e["action"] == action && e["outcome"] == outcome && pred(e)).cloned().collect()
    };
    let set = find("connection.set_secret", "ok", &|e| e["actor"]["subject"] == "alice");
    assert_eq!(set.len(), 2, "{set:?}");
    assert_eq!(
        (set[0]["actor"]["kind"].as_str(), set[0]["actor"]["claims_policy"].as_str(), set[0]["actor"]["name"].as_str()),
        (Some("person"), Some("dev"), Some("alice@example.com")),
        "{}",
        set[0]
    );
    let ok = find("connection.approve", "ok", &|e| e["actor"]["subject"] == "bob");
    assert_eq!(ok.len(), 2, "{ok:?}");
    assert_eq!((ok[0]["actor"]["kind"].as_str(), ok[0]["actor"]["name"].as_str()), (Some("person"), Some("bob@example.com")));
    assert_eq!((ok[0]["details"]["set_by"].as_str(), ok[0]["details"]["break_glass"].as_bool()), (Some("dev#alice"), Some(false)));
    let glass = find("connection.approve", "ok", &|e| e["actor"]["kind"] == "admin");
    assert_eq!(glass.len(), 1, "{glass:?}");
    assert_eq!(glass[0]["details"]["break_glass"], true);
    for (kind, who) in [
        ("self_approval", "alice"),
        ("self_approval_same_email", "a.smith"),
        ("workload_cannot_approve", "alice"),
    ] {
        let denied = find("connection.approve", "denied", &|e| e["error_kind"] == kind && e["actor"]["subject"] == who);
        assert_eq!(denied.len(), 1, "{kind}: {entries:?}");
    }
    assert_eq!(find("connection.approve", "denied", &|e| e["error_kind"] == "self_approval_break_glass").len(), 1);
    let cedar = find("decide", "deny", &|e| e["actor"]["subject"] == "carol");
    assert_eq!(cedar.len(), 1, "{entries:?}");
    assert_eq!((cedar[0]["actor"]["kind"].as_str(), cedar[0]["details"]["policy_action"].as_str()), (Some("person"), Some("connection_approve")));
}
