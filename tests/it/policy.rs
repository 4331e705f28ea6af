//! Policy decisions over HTTP: permit, deny with reasons, TTL caps, scope
//! combinations, reload.

use std::time::Duration;

use serde_json::json;

use crate::support::{Daemon, Issuer};

#[tokio::test]
async fn permit_names_the_deciding_policy() {
    let iss = Issuer::start().await;
    let d = Daemon::start(&iss).await;
    let (s, v) = d.issue(&iss.token(), json!({"role": "token/orders", "scopes": ["orders.read"], "ttl": "10m"})).await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["policies"], json!(["gh-acme-orders-tokens"]));
}

#[tokio::test]
async fn deny_with_no_permit_names_role_claims_and_candidates() {
    let iss = Issuer::start().await;
    let d = Daemon::start(&iss).await;
    let jwt = iss.sign(&iss.gh_claims("acme/api", "refs/heads/dev"));
    let (s, v) = d.issue(&jwt, json!({"role": "pki/web"})).await;
    assert_eq!(s, 403, "{v}");
    assert_eq!(v["error"]["code"], "policy_denied");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(msg.contains("no policy permits it"), "{msg}");
    assert!(msg.contains("role `pki/web`"), "{msg}");
    assert!(msg.contains("ref=`refs/heads/dev`"), "{msg}");
    assert!(msg.contains("`gh-main-web` (workflows on the main branch"), "{msg}");
    assert_eq!(v["error"]["decision"]["candidates"][0]["id"], "gh-main-web");
    assert!(d.leases().await.is_empty());
}

#[tokio::test]
async fn forbid_overrides_permit_and_gives_its_reason() {
    let iss = Issuer::start().await;
    let d = Daemon::start(&iss).await;
    let jwt = iss.token();
    let (s, v) = d.issue(&jwt, json!({"role": "token/orders", "scopes": ["orders.write", "invoices.send"], "ttl": "5m"})).await;
    assert_eq!(s, 403, "{v}");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(msg.contains("policy `orders-write-never-with-invoices-send` forbids it"), "{msg}");
    assert!(msg.contains("separation of duties"), "{msg}");
    assert_eq!(v["error"]["decision"]["policies"][0]["effect"], "forbid");
    // Each scope alone is fine.
    let (s, _) = d.issue(&jwt, json!({"role": "token/orders", "scopes": ["orders.write"], "ttl": "5m"})).await;
    assert_eq!(s, 201);
}

#[tokio::test]
async fn ttl_above_role_max_and_above_policy_cap_are_refused_precisely() {
    let iss = Issuer::start().await;
    let d = Daemon::start(&iss).await;
    let jwt = iss.token();
    // Role max (1h): a 400 naming the field and both values.
    let (s, v) = d.issue(&jwt, json!({"role": "token/orders", "ttl": "2h"})).await;
    assert_eq!(s, 400, "{v}");
    assert_eq!(v["error"]["field"], "ttl");
    assert_eq!(v["error"]["message"], "ttl 2h exceeds role `token/orders` max 1h");
    // Policy cap (15m in gh-acme-orders-tokens): a deny.
    let (s, v) = d.issue(&jwt, json!({"role": "token/orders", "ttl": "16m"})).await;
    assert_eq!(s, 403, "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("up to 15 minutes"), "{v}");
    // A scope the role does not offer.
    let (s, v) = d.issue(&jwt, json!({"role": "token/orders", "scopes": ["orders.delete"]})).await;
    assert_eq!(s, 400, "{v}");
    assert_eq!(v["error"]["field"], "scopes");
    assert!(v["error"]["message"].as_str().unwrap().contains("scope `orders.delete` is not offered"), "{v}");
    assert!(d.leases().await.is_empty());
}

#[tokio::test]
async fn a_broken_policy_file_keeps_the_old_set_and_a_good_change_is_picked_up() {
    let iss = Issuer::start().await;
    let d = Daemon::start(&iss).await;
    let jwt = iss.token();
    let engine = d.running().leases.policy.clone();
    let before = engine.current().version.clone();

    // A file that does not validate (unknown attribute): reload fails, old set stays.
    let bad = d.policies.join("broken.cedar");
    std::fs::write(&bad, "@id(\"broken\")\npermit(principal, action, resource)\nwhen { principal.no_such_claim == \"x\" };\n").unwrap();
    let err = engine.reload().unwrap_err().to_string();
    assert!(err.contains("broken.cedar:3"), "error names file and line: {err}");
    assert!(err.contains("`broken`"), "{err}");
    assert_eq!(engine.current().version, before);
    let (s, _) = d.issue(&jwt, json!({"role": "pki/web"})).await;
    assert_eq!(s, 201, "requests still served with the old policies");

    // Fix it with a policy that forbids everything on pki/web: the watcher
    // picks it up without a restart.
    std::fs::write(
        &bad,
        "@id(\"freeze-pki\")\n@reason(\"change freeze\")\nforbid(principal, action == Lessor::Action::\"issue\", resource == Lessor::Role::\"pki/web\");\n",
    )
    .unwrap();
    let denied = Daemon::eventually(Duration::from_secs(10), || async {
        let (s, v) = d.issue(&jwt, json!({"role": "pki/web"})).await;
        (s == 403).then_some(v)
    })
    .await
    .expect("reloaded policy applies");
    assert!(denied["error"]["message"].as_str().unwrap().contains("change freeze"), "{denied}");
}

#[tokio::test]
async fn explain_answers_for_one_case_and_needs_admin() {
    let iss = Issuer::start().await;
    let d = Daemon::start(&iss).await;
    let case = json!({
        "role": "pki/web",
        "principal": {"issuer": iss.url, "subject": "repo:acme/api:ref:refs/heads/main",
                      "repository_owner": "acme", "ref": "refs/heads/main"},
        "ttl": "5m",
    });
    let (s, v) = d.post("/v1/policy/explain", &d.admin, case.clone()).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["allowed"], true);
    assert_eq!(v["policies"][0]["id"], "gh-main-web");
    assert!(v["policies"][0]["location"].as_str().unwrap().contains("web-certificates.cedar:"), "{v}");
    // A workload JWT without an admin policy is refused.
    let (s, _) = d.post("/v1/policy/explain", &iss.token(), case).await;
    assert_eq!(s, 403);
    // A person on a configured connection: bob (finance) may approve,
    // alice (platform) may not, and the answer names her.
    let person = |subject: &str, group: &str| {
        json!({"action": "connection_approve", "connection": "token",
               "person": {"provider": "dev", "subject": subject, "email": format!("{subject}@example.com"), "groups": [group]}})
    };
    let (s, v) = d.post("/v1/policy/explain", &d.admin, person("bob", "finance")).await;
    assert_eq!((s, v["allowed"].as_bool()), (200, Some(true)), "{v}");
    assert_eq!(v["policies"][0]["id"], "finance-approves-root-credentials");
    let (s, v) = d.post("/v1/policy/explain", &d.admin, person("alice", "platform")).await;
    assert_eq!((s, v["allowed"].as_bool()), (200, Some(false)), "{v}");
    assert!(v["message"].as_str().unwrap().contains("person `dev#alice`"), "{v}");
    assert_eq!(v["considered"]["groups"], "platform", "{v}");
    // A connection that is not configured is a 400 naming the field.
    let (s, v) = d.post("/v1/policy/explain", &d.admin, json!({"action": "connection_read", "connection": "nope",
        "person": {"provider": "dev", "subject": "bob"}})).await;
    assert_eq!(s, 400, "{v}");
    assert!(v.to_string().contains("connection `nope` is not defined"), "{v}");
}

/// The shipped policies: every permit pins `principal.issuer` (or, for
/// people, `principal.provider`), none grants both `connection_set_secret`
/// and `connection_approve` nor approval to workloads (`lessor check` has
/// nothing to warn about); no workload may approve, and the people who may
/// set a root credential are not those who may approve one.
#[test]
fn shipped_policies_pin_the_issuer_and_keep_setting_and_approving_apart() {
    use lessor::policy::{Action, ConnectionInfo, PersonInfo, Policies, Principal, RequestContext, Target};
    use std::collections::BTreeMap;
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
    let p = Policies::load(&dir, &[]).unwrap();
    assert_eq!(p.warnings(), Vec::<String>::new());
    let conn = ConnectionInfo { name: "pg".into(), plugin: "postgres".into(), environment: "production".into(), owner: "payments".into() };
    let ctx = RequestContext { ttl_seconds: 0, scopes: vec![], now: 0, source_ip: std::net::IpAddr::from([127, 0, 0, 1]), vault_role: None };
    let gh = "https://token.actions.githubusercontent.com";
    let who = |issuer: &str, repo: &str, team: Option<&str>| {
        let mut attributes = BTreeMap::from([
            ("repository".to_string(), repo.to_string()),
            ("repository_owner".to_string(), "acme".to_string()),
            ("ref".to_string(), "refs/heads/main".to_string()),
        ]);
        if let Some(t) = team {
            attributes.insert("team".into(), t.into());
        }
        Principal { issuer: issuer.into(), subject: format!("repo:{repo}:ref:refs/heads/main"), attributes }
    };
    let may = |pr: &Principal, a: Action| p.decide_on(pr, a, Target::Connection(&conn), &ctx).unwrap().allowed;
    let principals = [
        who(gh, "acme/lessor-ops", None),
        who(gh, "acme/lessor-approvals", None),
        who(gh, "acme/lessor-approvals", Some("payments")),
        who(gh, "acme/payments", Some("payments")),
        who(gh, "acme/lessor-ops", Some("payments")),
    ];
    for pr in &principals {
        assert!(!may(pr, Action::ConnectionApprove), "{pr:?}: no workload approves");
    }
    assert!(may(&principals[0], Action::ConnectionSetSecret) && may(&principals[0], Action::ConnectionActivate));
    assert!(may(&principals[3], Action::ConnectionSetSecret));
    // People (people.cedar): platform manages, finance approves, nobody
    // does both; another provider's "finance" gets nothing.
    let person = |provider: &str, subject: &str, groups: &[&str]| PersonInfo {
        provider: provider.into(),
        issuer: "http://127.0.0.1:8201".into(),
        subject: subject.into(),
        email: format!("{subject}@example.com"),
        name: subject.into(),
        groups: groups.iter().map(|g| g.to_string()).collect(),
    };
    let allows = |pr: &PersonInfo, a: Action| p.decide_on(pr, a, Target::Connection(&conn), &ctx).unwrap().allowed;
    let (alice, bob) = (person("dev", "alice", &["platform"]), person("dev", "bob", &["finance"]));
    for a in [Action::ConnectionSetSecret, Action::ConnectionVerify, Action::ConnectionActivate, Action::ConnectionRotate] {
        assert!(allows(&alice, a) && !allows(&bob, a), "{a:?}");
    }
    assert!(allows(&bob, Action::ConnectionApprove) && !allows(&alice, Action::ConnectionApprove));
    assert!(!allows(&person("dev", "erin", &["finance", "platform"]), Action::ConnectionApprove));
    for a in Action::CONNECTION {
        assert!(!allows(&person("customers", "mallory", &["finance", "platform"]), a), "{a:?} for another provider");
        assert!(!allows(&person("dev", "carol", &["account:acme"]), a), "{a:?} for a customer");
    }
    assert!(!p.decide(&alice, Action::Admin, None, &ctx).unwrap().allowed, "people are no admins by default");
    // Another configured issuer whose tokens carry the same claims gets nothing.
    let other = who("https://ci.other.example", "acme/lessor-ops", None);
    for a in Action::CONNECTION {
        assert!(!may(&other, a), "{a:?} for another issuer");
    }
    let web = lessor::policy::RoleInfo {
        name: "pki/web".into(),
        connection: "pki".into(),
        plugin: "pki".into(),
        environment: "staging".into(),
        scopes: vec![],
        max_ttl_seconds: 3600,
    };
    assert!(p.decide(&who(gh, "acme/api", None), Action::Issue, Some(&web), &ctx).unwrap().allowed);
    assert!(!p.decide(&other, Action::Issue, Some(&web), &ctx).unwrap().allowed);
    assert!(!p.decide(&other, Action::Admin, None, &ctx).unwrap().allowed);
}

/// `lessor check` warns about a permit that grants both set-secret and
/// approve (to workloads or to people), about one that grants approval to
/// workloads (lessor refuses those), and about one that does not pin the
/// issuer.
#[test]
fn check_warns_about_a_policy_granting_set_secret_and_approve() {
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    crate::support::copy_dir(&repo.join("policies"), &dir.join("policies"));
    std::fs::write(
        dir.join("policies/both.cedar"),
        r#"@id("one-person-does-it-all")
permit(principal, action in [Lessor::Action::"connection_set_secret", Lessor::Action::"connection_approve"], resource)
when { principal.issuer == "https://token.actions.githubusercontent.com" && principal has repository && principal.repository == "acme/x" };
@id("any-issuer")
permit(principal, action == Lessor::Action::"read", resource) when { principal has repository && principal.repository == "acme/x" };
@id("ops-people-do-it-all")
permit(principal is Lessor::Person, action in [Lessor::Action::"connection_set_secret", Lessor::Action::"connection_approve"], resource)
when { principal.provider == "corp" && principal.groups.contains("ops") };
"#,
    )
    .unwrap();
    std::fs::write(dir.join("lessor.toml"), crate::support::config_text(dir, &dir.join("policies"), "https://issuer.example", "", "")).unwrap();
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_lessor"))
        .args(["check", "--config", "lessor.toml"])
        .current_dir(dir)
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{out}{}", String::from_utf8_lossy(&o.stderr));
    let warnings: Vec<&str> = out.lines().filter(|l| l.starts_with("warning: ")).collect();
    assert_eq!(warnings.len(), 4, "{out}");
    assert!(warnings.iter().any(|w| w.contains("both.cedar:1") && w.contains("`one-person-does-it-all` permits both connection_set_secret and connection_approve")), "{out}");
    assert!(warnings.iter().any(|w| w.contains("both.cedar:1") && w.contains("`one-person-does-it-all` permits connection_approve to workloads")), "{out}");
    assert!(warnings.iter().any(|w| w.contains("both.cedar:6") && w.contains("`ops-people-do-it-all` permits both connection_set_secret and connection_approve")), "{out}");
    assert!(warnings.iter().any(|w| w.contains("`any-issuer` does not pin principal.issuer")), "{out}");
}
