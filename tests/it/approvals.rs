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

/// The approval Must-show over the real HTTP path, with real sessions from
/// real OpenID providers (two `oidc-provider` processes: lessor's `dev` and
/// `corp`) on a real PostgreSQL connection with managed root credentials:
/// alice (platform) signs in with the browser flow, sets and verifies a
/// production candidate; she cannot approve it with that session, with a
/// second session, nor as another provider subject with her email; a
/// workload JWT cannot; bob (finance) cannot without the CSRF header (and
/// nothing changes), then does with it; alice activates and issuance uses
/// it; the audit names both people.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approval_over_http_with_signed_in_people_on_a_real_postgres() {
    use crate::people::{audit_has, audit_lines, setup_with, Browser};
    use crate::postgres::{start_pg, PG_POLICY};
    use reqwest::Method;

    let pg = start_pg();
    let pw = "e2e-admin-password-4b1d";
    pg.psql("postgres", &format!("CREATE ROLE lessor_admin LOGIN CREATEROLE PASSWORD '{pw}'")).unwrap();
    pg.psql("app", "ALTER TABLE orders OWNER TO lessor_admin").unwrap();
    let conn = r#"
[quotas]
max_active_per_owner = 0
issues_per_minute_per_owner = 0

[connections.pg]
plugin = "postgres"
environment = "production"
owner = "platform"
[connections.pg.expected_identity]
identity = "lessor_admin"
database = "app"
[connections.pg.config]
pool_size = 2
[connections.pg.roles.app]
max_ttl = "1h"
default_ttl = "10m"
scopes = ["orders.read"]
default_scopes = ["orders.read"]
[connections.pg.roles.app.config.grants]
"orders.read" = ["GRANT SELECT ON orders TO {{name}}"]
"#;
    // people.cedar never lets platform approve; this lets alice (by her
    // email) approve, so lessor's own self-approval refusal is what stops her.
    let policy = format!(
        "{PG_POLICY}\n@id(\"test-alice-may-approve\")\npermit(principal is Lessor::Person, action == Lessor::Action::\"connection_approve\", resource is Lessor::Connection)\nwhen {{ principal.email == \"alice@example.com\" }};\n"
    );
    let s = setup_with("", &["dev", "corp"], conn, &policy).await;
    let d = &s.d;
    let at = |path: &str| format!("{}{path}", d.url);
    let body = |r: &crate::people::Resp| serde_json::from_str::<Value>(&r.body).unwrap_or(Value::Null);
    let signed_in = |b: Browser, provider: &'static str, user: &'static str| async move {
        let r = b.sign_in_at(d, provider, user, |u| u).await;
        assert_eq!(r.status, 302, "{user} at {provider}: {}", r.body);
        let (st, me) = b.me(d).await;
        assert_eq!(st, 200, "{me}");
        (b, me["csrf_token"].as_str().unwrap().to_owned(), me)
    };

    // alice signs in (browser, code + PKCE) and, with her cookie and the
    // CSRF header, sets and verifies a production candidate.
    let (alice, alice_csrf, me) = signed_in(Browser::new(), "dev", "alice").await;
    assert_eq!((me["person"]["subject"].as_str(), me["person"]["groups"].clone()), (Some("alice"), json!(["platform"])));
    let dsn = pg.dsn("lessor_admin", pw, "app");
    let secret = json!({"secret": dsn, "reason": "new vendor credentials"});
    let r = alice.send_json(Method::PUT, &at("/v1/admin/connections/pg/secret"), secret.clone(), None).await;
    assert_eq!(r.status, 403, "the cookie without the CSRF header sets nothing: {}", r.body);
    let r = alice.send_json(Method::PUT, &at("/v1/admin/connections/pg/secret"), secret, Some(&alice_csrf)).await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(body(&r)["set_by"], "dev#alice <alice@example.com>");
    assert_eq!(body(&r)["version"], 1);
    let r = alice.post_json(&at("/v1/admin/connections/pg/verify"), json!({}), Some(&alice_csrf)).await;
    assert_eq!((r.status, body(&r)["result"]["ok"].as_bool()), (200, Some(true)), "{}", r.body);

    // alice cannot approve: with this session...
    let approve = at("/v1/admin/connections/pg/approve");
    let r = alice.post_json(&approve, json!({}), Some(&alice_csrf)).await;
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(r.body.contains("`dev#alice` set version 1 of connection `pg` and cannot also approve it"), "{}", r.body);
    // ...with a second session (another browser; its token as a bearer, as
    // `lessor login` would use it)...
    let (second, _, _) = signed_in(Browser::new(), "dev", "alice").await;
    let token = second.cookie(&d.url, "lessor_session").unwrap();
    assert_ne!(Some(token.clone()), alice.cookie(&d.url, "lessor_session"), "a distinct session");
    let r = d.http.post(&approve).bearer_auth(&token).json(&json!({})).send().await.unwrap();
    assert_eq!(r.status(), 403);
    let v: Value = r.json().await.unwrap();
    assert!(v["error"]["message"].as_str().unwrap().contains("cannot also approve it"), "{v}");
    // ...nor as another subject at another provider with her email (Cedar
    // permits it: a.smith is in finance at `corp`; lessor refuses).
    let (smith, smith_csrf, me) = signed_in(Browser::new(), "corp", "a.smith").await;
    assert_eq!((me["person"]["provider"].as_str(), me["person"]["email"].as_str()), (Some("corp"), Some("alice@example.com")));
    let r = smith.post_json(&approve, json!({}), Some(&smith_csrf)).await;
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(r.body.contains("`corp#a.smith` has the same email (`alice@example.com`) as `dev#alice`"), "{}", r.body);

    // A workload JWT is refused for approve, whatever the policies say.
    let jwt = s.iss.token();
    let r = d.http.post(&approve).bearer_auth(&jwt).json(&json!({})).send().await.unwrap();
    assert_eq!(r.status(), 403);
    let v: Value = r.json().await.unwrap();
    assert!(v["error"]["message"].as_str().unwrap().contains("is a workload: approvals come only from people"), "{v}");

    // bob (finance) approves with his browser session: without the CSRF
    // header 403 and nothing changes; with it, approved.
    let (bob, bob_csrf, _) = signed_in(Browser::new(), "dev", "bob").await;
    let r = bob.post_json(&approve, json!({}), None).await;
    assert_eq!(r.status, 403, "{}", r.body);
    assert_eq!(body(&r)["error"]["code"], "csrf", "{}", r.body);
    let r = bob.get(&at("/v1/admin/connections/pg")).await;
    assert_eq!(r.status, 200, "bob reads connections (finance): {}", r.body);
    assert_eq!(body(&r)["versions"][0]["approved_by"], Value::Null, "{}", r.body);
    let r = alice.post_json(&at("/v1/admin/connections/pg/activate"), json!({}), Some(&alice_csrf)).await;
    assert_eq!(r.status, 409, "not approved yet: {}", r.body);
    let r = bob.post_json(&approve, json!({}), Some(&bob_csrf)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(body(&r)["approved_by"], "dev#bob <bob@example.com>");
    assert_eq!(body(&r)["approved_break_glass"], false);
    // bob may approve, not activate (platform's).
    let r = bob.post_json(&at("/v1/admin/connections/pg/activate"), json!({}), Some(&bob_csrf)).await;
    assert_eq!(r.status, 403, "{}", r.body);

    // alice activates; issuance uses the new root credential at PostgreSQL.
    let r = alice.post_json(&at("/v1/admin/connections/pg/activate"), json!({}), Some(&alice_csrf)).await;
    assert_eq!((r.status, body(&r)["state"].as_str()), (200, Some("active")), "{}", r.body);
    assert_eq!(body(&r)["activated_by"], "dev#alice <alice@example.com>");
    let (st, v) = d.issue(&jwt, json!({"role": "pg/app"})).await;
    assert_eq!(st, 201, "{v}");
    let mut c = <sqlx::PgConnection as sqlx::Connection>::connect(v["credential"]["dsn"].as_str().unwrap()).await.unwrap();
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM orders").fetch_one(&mut c).await.unwrap();
    assert_eq!(n, 1);

    // The audit shows both people: kind, provider, subject, email; and
    // each refusal with its reason.
    let person = |e: &Value, provider: &str, subject: &str, email: &str| {
        e["actor"]["kind"] == "person"
            && e["actor"]["claims_policy"] == provider
            && e["actor"]["subject"] == subject
            && e["actor"]["name"] == email
            && e["actor"]["issuer"].as_str().is_some_and(|i| i.starts_with("http://127.0.0.1:"))
    };
    let has = |action: &'static str, outcome: &'static str, pred: &'static str| {
        let person = &person;
        audit_has(d, move |e| {
            e["action"] == action
                && e["outcome"] == outcome
                && match pred {
                    "alice" => person(e, "dev", "alice", "alice@example.com"),
                    "bob" => person(e, "dev", "bob", "bob@example.com"),
                    "a.smith" => person(e, "corp", "a.smith", "alice@example.com"),
                    _ => e["actor"]["kind"] == pred,
                }
        })
    };
    assert!(has("connection.set_secret", "ok", "alice").await);
    assert!(has("connection.verify", "ok", "alice").await);
    assert!(has("connection.activate", "ok", "alice").await);
    assert!(has("connection.approve", "ok", "bob").await);
    assert!(has("authenticate", "denied", "bob").await, "bob's refused CSRF");
    let entries = audit_lines(d);
    let find = |action: &str, outcome: &str, kind: &str| -> Vec<Value> {
        entries.iter().filter(|e| e["action"] == action && e["outcome"] == outcome && e["error_kind"] == kind).cloned().collect()
    };
    let ok = entries.iter().find(|e| e["action"] == "connection.approve" && e["outcome"] == "ok").unwrap();
    assert_eq!((ok["details"]["set_by"].as_str(), ok["details"]["break_glass"].as_bool()), (Some("dev#alice"), Some(false)), "{ok}");
    let selfs = find("connection.approve", "denied", "self_approval");
    assert_eq!(selfs.len(), 2, "her session and her second one: {selfs:?}");
    assert!(selfs.iter().all(|e| person(e, "dev", "alice", "alice@example.com")), "{selfs:?}");
    let same = find("connection.approve", "denied", "self_approval_same_email");
    assert_eq!(same.len(), 1, "{same:?}");
    assert!(person(&same[0], "corp", "a.smith", "alice@example.com"), "{}", same[0]);
    let wl = find("connection.approve", "denied", "workload_cannot_approve");
    assert_eq!((wl.len(), wl[0]["actor"]["kind"].as_str()), (1, Some("workload")), "{wl:?}");
    assert!(entries.iter().any(|e| e["error_kind"] == "csrf" && person(e, "dev", "bob", "bob@example.com")));
    // The dev and corp issuers differ: the audit tells the providers apart.
    let issuer_of = |subject: &str| {
        entries.iter().find(|e| e["actor"]["subject"] == subject && e["actor"]["kind"] == "person").unwrap()["actor"]["issuer"].clone()
    };
    assert_eq!(issuer_of("alice"), json!(s.op.url));
    assert_eq!(issuer_of("a.smith"), json!(s.others[0].url));
}
