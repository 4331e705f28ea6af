//! Customer API tokens at the service level (issue 13): the service with
//! `Person` values, decided by Cedar with the shipped example policies, and
//! introspection over real HTTP with a resource server's credentials, an
//! injected clock for expiry, overlaps and warnings, and two replicas on one
//! PostgreSQL store for revocation. The same flows with a real sign-in over
//! HTTP are in `people_tokens.rs`.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use lessor::customer_tokens::{CreateRequest, CtError, CustomerTokens, TokenState};
use lessor::principal::{Person, RequestMeta};
use secrecy::ExposeSecret;
use serde_json::Value;
use time::OffsetDateTime;

use crate::support::{Daemon, Issuer, Opts};

#[path = "customer_tokens_http.rs"]
mod over_http;

const SECRET: &str = "billing-api-secret-0123456789abcdef0123456789";
const SANDBOX_SECRET: &str = "sandbox-api-secret-0123456789abcdef0123456789";
const DAY: i64 = 86_400_000;

/// A clock tests move: the wall clock plus an offset (ms).
#[derive(Clone)]
pub struct TestClock(Arc<AtomicI64>);

impl TestClock {
    pub fn new() -> TestClock {
        TestClock(Arc::new(AtomicI64::new(0)))
    }
    pub fn advance_days(&self, days: i64) {
        self.0.fetch_add(days * DAY, Ordering::SeqCst);
    }
    pub fn clock(&self) -> lessor_plugin::Clock {
        let o = self.0.clone();
        Arc::new(move || OffsetDateTime::now_utc() + time::Duration::milliseconds(o.load(Ordering::SeqCst)))
    }
}

pub fn person(name: &str, groups: &[&str]) -> Person {
    Person {
        provider: "dev".into(),
        issuer: "http://127.0.0.1:8201".into(),
        subject: format!("sub-{name}"),
        email: format!("{name}@example.com"),
        name: name.into(),
        groups: groups.iter().map(|g| g.to_string()).collect(),
    }
}

pub fn carol() -> Person {
    person("carol", &["account:acme"])
}

pub fn dave() -> Person {
    person("dave", &["account:globex"])
}

/// The customer-token part of a daemon's config: two environments from two
/// token-plugin roles, two resource servers. Decisions are Cedar's, with the
/// shipped `policies/customer_tokens.cedar` (the daemon's policy directory
/// is a copy of the repository's).
pub fn ct_toml(secret_dir: &std::path::Path, extra: &str) -> String {
    std::fs::write(secret_dir.join("billing.secret"), format!("{SECRET}\n")).unwrap();
    std::fs::write(secret_dir.join("sandbox.secret"), SANDBOX_SECRET).unwrap();
    format!(
        r#"
[scopes."customers.read"]
allows = "Read customer records: names, emails, addresses."
denies = "Cannot change customers or see payment details."
[scopes."invoices.read"]
allows = "Read invoices and their line items."
denies = "Cannot create, change or send invoices."
[scopes."security.write"]
allows = "Change security settings: SSO, two-factor rules, allowed IP ranges."
denies = "Cannot read customer data or invoices."

[connections.api]
plugin = "token"
environment = "production"
[connections.api.roles.customers]
max_ttl = "1h"
scopes = ["customers.read", "invoices.read", "security.write"]
[connections.api.roles.sandbox]
max_ttl = "1h"
environment = "sandbox"
scopes = ["customers.read", "invoices.read"]

[customer_tokens]
roles = ["api/customers", "api/sandbox"]
{extra}
[customer_tokens.resource_servers.billing-api]
secret_file = "{dir}/billing.secret"
[customer_tokens.resource_servers.sandbox-api]
secret_file = "{dir}/sandbox.secret"
environments = ["sandbox"]

"#,
        dir = secret_dir.display()
    )
}

pub struct Env {
    pub d: Daemon,
    pub clock: TestClock,
    pub _secrets: tempfile::TempDir,
}

impl Env {
    pub async fn start(extra: &str) -> Env {
        let iss = Issuer::start().await;
        let secrets = tempfile::tempdir().unwrap();
        let clock = TestClock::new();
        let d = Daemon::start_with(Opts {
            issuer_url: iss.url.clone(),
            extra_toml: ct_toml(secrets.path(), extra),
            clock: Some(clock.clock()),
            ..Default::default()
        })
        .await;
        std::mem::forget(iss);
        Env { d, clock, _secrets: secrets }
    }

    pub fn ct(&self) -> &Arc<CustomerTokens> {
        self.d.running().customer_tokens.as_ref().expect("customer tokens configured")
    }
}

pub fn meta() -> RequestMeta {
    RequestMeta::internal()
}

pub fn req(name: &str, scopes: &[&str]) -> CreateRequest {
    CreateRequest {
        name: name.into(),
        environment: Some("production".into()),
        scopes: scopes.iter().map(|s| s.to_string()).collect(),
        expires_in: None,
        confirm: false,
    }
}

/// `POST /v1/introspect` as resource server `id`.
pub async fn introspect_as(d: &Daemon, id: &str, secret: &str, token: &str) -> (u16, Value) {
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("{id}:{secret}"));
    let r = d
        .http
        .post(format!("{}/v1/introspect", d.url))
        .header("authorization", format!("Basic {basic}"))
        .header("user-agent", "billing-api/2.1")
        .form(&[("token", token), ("client_ip", "203.0.113.7")])
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

pub async fn introspect(d: &Daemon, token: &str) -> Value {
    let (s, v) = introspect_as(d, "billing-api", SECRET, token).await;
    assert_eq!(s, 200, "{v}");
    v
}

fn audit_entries(d: &Daemon) -> Vec<Value> {
    std::fs::read_to_string(d.dir.join("audit.log"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_customer_previews_creates_sees_it_once_and_the_api_server_introspects_it() {
    let env = Env::start("").await;
    let ct = env.ct();
    let carol = carol();

    // The summary first: account, environment, scopes with descriptions,
    // the expiry as a date, the creator. Nothing is created.
    let r = req("billing sync for NetSuite", &["customers.read", "invoices.read"]);
    let s = ct.preview(&carol, &meta(), "acme", &r).unwrap();
    assert_eq!((s.account.as_str(), s.environment.as_str(), s.creator.as_str()), ("acme", "production", "carol@example.com"));
    let expected = env.clock.clock()() + time::Duration::days(30);
    assert_eq!(s.expires_on, format!("Expires on {}", lessor::customer_tokens::date_words(expected)));
    assert!(s.expires_on.starts_with("Expires on ") && s.expires_on.split(' ').count() == 5, "{}", s.expires_on);
    assert_eq!(s.scopes[0].name, "customers.read");
    assert!(s.scopes[0].allows.contains("Read customer records") && s.scopes[0].denies.contains("Cannot change"), "{:?}", s.scopes);
    assert!(ct.list(&carol, &meta(), "acme").await.unwrap().is_empty(), "a preview creates nothing");

    // Create: the token once, with the prefix and a valid checksum.
    let c = ct.create(&carol, &meta(), "acme", &r).await.unwrap();
    let token = c.token.expose_secret().to_owned();
    assert!(token.starts_with("lsrc_") && token.len() == 43, "{token}");
    assert!(lessor::customer_tokens::format::well_formed("lsrc", &token));
    // Afterwards: only the prefix and the last 4.
    let listed = ct.list(&carol, &meta(), "acme").await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].masked, format!("lsrc_…{}", &token[token.len() - 4..]));
    assert_eq!(listed[0].state, TokenState::Active);
    let stored = format!("{:?}", env.d.running().store.ct_get(&c.view.token.id).await.unwrap().unwrap());
    assert!(!stored.contains(&token[5..]), "the store holds no token");

    // The resource server introspects it: active, account, scopes, expiry,
    // no name.
    let v = introspect(&env.d, &token).await;
    assert_eq!(v["active"], true, "{v}");
    assert_eq!(v["account"], "acme");
    assert_eq!(v["environment"], "production");
    assert_eq!(v["scope"], "customers.read invoices.read");
    assert_eq!(v["exp"].as_i64(), Some(c.view.token.expires_at.unix_timestamp()));
    assert_eq!(v["client_id"], "billing-api");
    assert!(v.get("name").is_none() && !v.to_string().contains("NetSuite"), "name-free: {v}");

    // Look-alikes and strangers.
    let mut broken = token.clone().into_bytes();
    broken[10] = if broken[10] == b'a' { b'b' } else { b'a' };
    assert_eq!(introspect(&env.d, std::str::from_utf8(&broken).unwrap()).await, serde_json::json!({"active": false}));
    let unknown = lessor::customer_tokens::format::generate("lsrc");
    assert_eq!(introspect(&env.d, unknown.expose_secret()).await["active"], false);
    assert_eq!(introspect(&env.d, "not a token").await["active"], false);
    let (s, v) = introspect_as(&env.d, "billing-api", "wrong-secret-wrong-secret-wrong-secret", &token).await;
    assert_eq!((s, v["error"]["code"].as_str()), (401, Some("invalid_client")), "{v}");
    let r = env.d.http.post(format!("{}/v1/introspect", env.d.url)).form(&[("token", token.as_str())]).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.headers().get("www-authenticate").unwrap().to_str().unwrap().starts_with("Basic"));
    // A sandbox-only resource server does not see production tokens.
    let (s, v) = introspect_as(&env.d, "sandbox-api", SANDBOX_SECRET, &token).await;
    assert_eq!((s, v["active"].clone()), (200, Value::Bool(false)), "{v}");

    // Use is recorded: last used time, source address, user agent, outcome.
    ct.usage().flush().await;
    let d = ct.show(&carol, &meta(), "acme", &c.view.token.id).await.unwrap();
    assert!(d.view.token.last_used_at.is_some());
    assert_eq!(d.uses.len(), 2, "{:?}", d.uses);
    assert_eq!((d.uses[0].source.as_str(), d.uses[0].user_agent.as_str(), d.uses[0].ok), ("203.0.113.7", "billing-api/2.1", false));
    assert!(d.uses[1].ok);
    assert_eq!((d.days[0].ok, d.days[0].failed), (1, 1));

    // Everything done is audited with the person.
    let found = Daemon::eventually(Duration::from_secs(5), || async {
        audit_entries(&env.d).into_iter().find(|e| e["action"] == "customer_token.create")
    })
    .await
    .expect("creation audited");
    assert_eq!(found["actor"]["kind"], "person");
    assert_eq!(found["actor"]["name"], "carol@example.com");
    assert_eq!(found["details"]["account"], "acme");
    let log = std::fs::read_to_string(env.d.dir.join("audit.log")).unwrap();
    assert!(!log.contains(&token[5..]), "no token in the audit log");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_overlap_both_work_the_old_one_retires_and_a_revoke_is_seen_at_the_next_introspection() {
    let env = Env::start("").await;
    let (ct, carol) = (env.ct(), carol());
    let c = ct.create(&carol, &meta(), "acme", &req("orders sync", &["invoices.read"])).await.unwrap();
    let old = c.token.expose_secret().to_owned();
    assert_eq!(introspect(&env.d, &old).await["active"], true, "cached now");

    let r = ct.rotate(&carol, &meta(), "acme", &c.view.token.id, Some("2d"), false).await.unwrap();
    let new = r.token.expose_secret().to_owned();
    assert_ne!(new, old);
    assert_eq!((r.new.token.name.as_str(), r.new.token.scopes.clone(), r.new.token.owner.clone()), ("orders sync", vec!["invoices.read".to_owned()], carol.id()));
    assert_eq!(r.old.state, TokenState::Retiring);
    let until = r.old.token.retiring_until.expect("retiring with an end date");
    assert!((until - (env.clock.clock()() + time::Duration::days(2))).abs() < time::Duration::seconds(5));
    assert_eq!(r.old.token.rotated_by.as_deref(), Some(carol.id().as_str()));
    // Both work during the overlap.
    assert_eq!(introspect(&env.d, &old).await["active"], true);
    assert_eq!(introspect(&env.d, &new).await["active"], true);
    // A retiring token cannot be rotated again.
    assert!(matches!(ct.rotate(&carol, &meta(), "acme", &c.view.token.id, None, false).await, Err(CtError::Conflict(_))));
    // Overlap bounds.
    let e = ct.rotate(&carol, &meta(), "acme", &r.new.token.id, Some("15d"), false).await.err().unwrap();
    assert!(matches!(e, CtError::BadRequest { field: "overlap", .. }), "{e:?}");

    // Then the old one ends by itself.
    env.clock.advance_days(3);
    assert_eq!(introspect(&env.d, &old).await["active"], false);
    assert_eq!(introspect(&env.d, &new).await["active"], true);
    let list = ct.list(&carol, &meta(), "acme").await.unwrap();
    let o = list.iter().find(|v| v.token.id == c.view.token.id).unwrap();
    assert_eq!(o.state, TokenState::Expired, "history keeps it, ended");

    // Revoke: immediate, reported done when no replica accepts it.
    assert_eq!(introspect(&env.d, &new).await["active"], true, "cached");
    let t = Instant::now();
    let v = ct.revoke(&carol, &meta(), "acme", &r.new.token.id).await.unwrap();
    assert!(t.elapsed() >= Duration::from_secs(1), "revoke waits out the 1s introspection cache");
    assert_eq!(v.state, TokenState::Revoked);
    assert_eq!(v.token.revoked_by.as_deref(), Some(carol.id().as_str()));
    assert_eq!(introspect(&env.d, &new).await["active"], false, "inactive at the next introspection");
    // History: both listed, who rotated and revoked, no secret.
    let list = ct.list(&carol, &meta(), "acme").await.unwrap();
    assert_eq!(list.len(), 2);
    assert!(list.iter().all(|v| matches!(v.state, TokenState::Revoked | TokenState::Expired)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_the_retiring_old_token_makes_it_inactive_at_once_and_keeps_the_replacement() {
    let env = Env::start("").await;
    let (ct, carol) = (env.ct(), carol());
    let c = ct.create(&carol, &meta(), "acme", &req("sync", &["customers.read"])).await.unwrap();
    let old = c.token.expose_secret().to_owned();
    let r = ct.rotate(&carol, &meta(), "acme", &c.view.token.id, None, false).await.unwrap();
    assert_eq!(introspect(&env.d, &old).await["active"], true);
    let v = ct.revoke(&carol, &meta(), "acme", &c.view.token.id).await.unwrap();
    assert_eq!(v.state, TokenState::Revoked);
    assert_eq!(introspect(&env.d, &old).await["active"], false);
    assert_eq!(introspect(&env.d, r.token.expose_secret()).await["active"], true);
    // Revoking again reports the same done state.
    assert_eq!(ct.revoke(&carol, &meta(), "acme", &c.view.token.id).await.unwrap().state, TokenState::Revoked);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiry_warning_seven_days_ahead_not_rotated_warning_and_history_after_expiry() {
    let env = Env::start("").await;
    let (ct, carol) = (env.ct(), carol());
    let c = ct.create(&carol, &meta(), "acme", &req("short", &["invoices.read"])).await.unwrap();
    let token = c.token.expose_secret().to_owned();
    let mut long = req("long", &["customers.read"]);
    long.expires_in = Some("180d".into());
    let l = ct.create(&carol, &meta(), "acme", &long).await.unwrap();
    assert_eq!(introspect(&env.d, &token).await["active"], true);
    ct.usage().flush().await;

    env.clock.advance_days(22); // 8 days left: no warning yet
    assert_eq!(ct.maintain().await.unwrap(), 0);
    assert!(ct.list(&carol, &meta(), "acme").await.unwrap().iter().all(|v| v.warnings.is_empty()));

    env.clock.advance_days(2); // 6 days left
    let list = ct.list(&carol, &meta(), "acme").await.unwrap();
    let s = list.iter().find(|v| v.token.id == c.view.token.id).unwrap();
    assert_eq!(s.warnings.len(), 1);
    assert_eq!(s.warnings[0].kind(), "expires_soon");
    assert!(s.warnings[0].message().starts_with("expires on "), "{}", s.warnings[0].message());
    assert_eq!(ct.maintain().await.unwrap(), 1);
    assert_eq!(ct.maintain().await.unwrap(), 0, "once per token");
    // Metrics are process-wide and other tests' daemons refresh them too:
    // refresh ours until they show (at most a few passes).
    let want = r#"lessor_customer_token_warnings{account="acme",warning="expires_soon"} 1"#;
    let metrics = Daemon::eventually(Duration::from_secs(10), || async {
        ct.maintain().await.unwrap();
        let m = lessor::telemetry::metrics().render();
        m.contains(want).then_some(m)
    })
    .await
    .expect("the per-account warning gauge");
    let ours: Vec<&str> = metrics.lines().filter(|l| l.starts_with("lessor_customer_token")).collect();
    assert!(!ours.iter().any(|l| l.contains("short") || l.contains(&c.view.token.id)), "no token names or ids as labels: {ours:?}");
    let warned = Daemon::eventually(Duration::from_secs(5), || async {
        let w: Vec<Value> = audit_entries(&env.d).into_iter().filter(|e| e["action"] == "customer_token.warning").collect();
        (!w.is_empty()).then_some(w)
    })
    .await
    .expect("the warning is audited");
    assert_eq!(warned.len(), 1);
    assert_eq!(warned[0]["details"]["warning"], "expires_soon");
    assert_eq!(warned[0]["details"]["customer_token"], c.view.token.id.as_str());

    // Past expiry: inactive, and still listed with its history.
    env.clock.advance_days(7);
    assert_eq!(introspect(&env.d, &token).await["active"], false);
    let list = ct.list(&carol, &meta(), "acme").await.unwrap();
    let s = list.iter().find(|v| v.token.id == c.view.token.id).unwrap();
    assert_eq!(s.state, TokenState::Expired);
    assert!(s.token.last_used_at.is_some() && s.warnings.is_empty());
    assert_eq!(s.token.created_by, carol.id());

    // Not rotated in 90 days.
    env.clock.advance_days(60); // day 91
    let list = ct.list(&carol, &meta(), "acme").await.unwrap();
    let lv = list.iter().find(|v| v.token.id == l.view.token.id).unwrap();
    assert_eq!(lv.warnings.iter().map(|w| w.kind()).collect::<Vec<_>>(), vec!["not_rotated"]);
    assert_eq!(ct.maintain().await.unwrap(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_of_another_account_can_neither_see_nor_touch_a_token() {
    let env = Env::start("").await;
    let (ct, carol, dave) = (env.ct(), carol(), dave());
    let c = ct.create(&carol, &meta(), "acme", &req("sync", &["customers.read"])).await.unwrap();
    let id = c.view.token.id.clone();
    let nf = |r: Result<(), CtError>| match r {
        Err(CtError::NotFound(m)) => m,
        other => panic!("expected 404, got {:?}", other.err()),
    };
    let m1 = nf(ct.list(&dave, &meta(), "acme").await.map(|_| ()));
    let m2 = nf(ct.list(&dave, &meta(), "nonexistent").await.map(|_| ()));
    assert_eq!(m1.replace("acme", "X"), m2.replace("nonexistent", "X"), "the same answer whether the account exists or not");
    nf(ct.show(&dave, &meta(), "acme", &id).await.map(|_| ()));
    nf(ct.rotate(&dave, &meta(), "acme", &id, None, false).await.map(|_| ()));
    nf(ct.revoke(&dave, &meta(), "acme", &id).await.map(|_| ()));
    nf(ct.create(&dave, &meta(), "acme", &req("x", &["customers.read"])).await.map(|_| ()));
    // Through his own account: the token is not there either, and the
    // answer is the one for a token that never existed.
    let m3 = nf(ct.show(&dave, &meta(), "globex", &id).await.map(|_| ()));
    let m4 = nf(ct.show(&dave, &meta(), "globex", "ctk_0000000000000000").await.map(|_| ()));
    assert_eq!(m3.replace(&id, "X"), m4.replace("ctk_0000000000000000", "X"));
    assert!(nf(ct.revoke(&dave, &meta(), "globex", &id).await.map(|_| ())).contains("not found"));
    // Nothing changed.
    assert_eq!(introspect(&env.d, c.token.expose_secret()).await["active"], true);
    assert!(ct.list(&dave, &meta(), "globex").await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forbidden_scope_combination_is_refused_with_the_policys_reason_and_a_broad_one_needs_confirm() {
    let env = Env::start("").await;
    let (ct, carol) = (env.ct(), carol());
    match ct.create(&carol, &meta(), "acme", &req("too broad", &["customers.read", "security.write"])).await {
        Err(CtError::Denied { message, policy }) => {
            assert_eq!(policy.as_deref(), Some("no-customer-data-with-security"));
            assert!(message.contains("must not both read customer data and change security settings"), "{message}");
        }
        other => panic!("expected a denial, got {:?}", other.err()),
    }
    let mut r = req("broad", &["invoices.read", "security.write"]);
    match ct.create(&carol, &meta(), "acme", &r).await {
        Err(CtError::ConfirmationRequired { message, policy }) => {
            assert_eq!(policy.as_deref(), Some("confirm-invoices-with-security"));
            assert!(message.contains("confirm"), "{message}");
        }
        other => panic!("expected a confirmation request, got {:?}", other.err()),
    }
    assert!(ct.list(&carol, &meta(), "acme").await.unwrap().is_empty(), "refusals create nothing");
    r.confirm = true;
    ct.create(&carol, &meta(), "acme", &r).await.unwrap();
    let denied = Daemon::eventually(Duration::from_secs(5), || async {
        audit_entries(&env.d).into_iter().find(|e| e["action"] == "decide" && e["error_kind"] == "policy_denied")
    })
    .await
    .expect("the denial is audited");
    assert_eq!(denied["policies"][0], "no-customer-data-with-security");
    assert_eq!(denied["details"]["policy_action"], "token_create");
    assert_eq!(denied["actor"]["kind"], "person");
    assert_eq!(denied["reasons"][0], "one token must not both read customer data and change security settings");
    // Permissions are audited too, with the permitting policy.
    let allowed = Daemon::eventually(Duration::from_secs(5), || async {
        audit_entries(&env.d).into_iter().find(|e| e["action"] == "decide" && e["outcome"] == "allow" && e["details"]["confirmed"] == true)
    })
    .await
    .expect("the confirmed creation's decision is audited");
    assert_eq!(allowed["policies"][0], "members-create-tokens-up-to-180-days");

    // A policy change applies to the next request, without a restart.
    std::fs::write(
        env.d.policies.join("freeze.cedar"),
        "@id(\"acme-freeze\")\n@reason(\"acme's tokens are frozen during the audit\")\n\
         forbid(principal, action == Lessor::Action::\"token_create\", resource == Lessor::Account::\"acme\");\n",
    )
    .unwrap();
    let message = Daemon::eventually(Duration::from_secs(10), || async {
        match ct.preview(&carol, &meta(), "acme", &req("after", &["invoices.read"])) {
            Err(CtError::Denied { message, policy }) if policy.as_deref() == Some("acme-freeze") => Some(message),
            _ => None,
        }
    })
    .await
    .expect("the reloaded policy decides");
    assert!(message.contains("frozen during the audit"), "{message}");
    ct.preview(&dave(), &meta(), "globex", &req("other account", &["invoices.read"])).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiry_presets_environments_scopes_and_names_are_checked_and_bad_input_changes_nothing() {
    let env = Env::start("").await;
    let (ct, carol) = (env.ct(), carol());
    let field = |r: Result<lessor::customer_tokens::Summary, CtError>| match r {
        Err(CtError::BadRequest { field, message }) => (field, message),
        Err(e) => panic!("expected a 400, got {e:?}"),
        Ok(_) => panic!("expected a 400, got a summary"),
    };
    for (exp, want) in [("never", "always expire"), ("0", "always expire"), ("45d", "not a preset"), ("3y", "730d"), ("soon", "not a duration")] {
        let mut r = req("x", &["customers.read"]);
        r.expires_in = Some(exp.into());
        let (f, m) = field(ct.preview(&carol, &meta(), "acme", &r));
        assert_eq!(f, "expires_in");
        assert!(m.contains(want), "{exp}: {m}");
    }
    for (preset, days) in [("24h", 1), ("30d", 30), ("90d", 90), ("180d", 180)] {
        let mut r = req("x", &["customers.read"]);
        r.expires_in = Some(preset.into());
        let s = ct.preview(&carol, &meta(), "acme", &r).unwrap();
        assert_eq!(s.expires_in, Duration::from_secs(days * 86400));
    }
    // Longer than the presets only where policy allows (globex: 365d).
    let mut r = req("x", &["customers.read"]);
    r.expires_in = Some("365d".into());
    assert!(matches!(ct.preview(&carol, &meta(), "acme", &r), Err(CtError::Denied { .. })));
    ct.preview(&dave(), &meta(), "globex", &r).unwrap();

    let mut r = req("x", &["security.write"]);
    r.environment = Some("sandbox".into());
    let (f, m) = field(ct.preview(&carol, &meta(), "acme", &r));
    assert!(f == "scopes" && m.contains("sandbox"), "{m}");
    r.environment = None;
    assert_eq!(field(ct.preview(&carol, &meta(), "acme", &r)).0, "environment", "two environments: name one");
    r.environment = Some("staging".into());
    assert_eq!(field(ct.preview(&carol, &meta(), "acme", &r)).0, "environment");
    assert_eq!(field(ct.preview(&carol, &meta(), "acme", &req("", &["customers.read"]))).0, "name");
    assert_eq!(field(ct.preview(&carol, &meta(), "acme", &req("a\nb", &["customers.read"]))).0, "name");
    assert_eq!(field(ct.preview(&carol, &meta(), "acme", &req("x", &[]))).0, "scopes");
    assert_eq!(field(ct.preview(&carol, &meta(), "acme", &req("x", &["customers.read", "customers.read"]))).0, "scopes");
    assert!(ct.list(&carol, &meta(), "acme").await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_management_api_is_for_people_only_and_says_so() {
    let iss = Issuer::start().await;
    let secrets = tempfile::tempdir().unwrap();
    let d = Daemon::start_with(Opts { issuer_url: iss.url.clone(), extra_toml: ct_toml(secrets.path(), ""), ..Default::default() }).await;
    let (s, v) = d.get("/v1/accounts/acme/tokens", &d.admin).await;
    assert_eq!(s, 403, "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("managed by people"), "{v}");
    let (s, v) = d.post("/v1/accounts/acme/tokens", &iss.token(), serde_json::json!({"name": "x", "scopes": ["customers.read"]})).await;
    assert_eq!(s, 403, "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("workload"), "{v}");
    let r = d.http.get(format!("{}/v1/accounts/acme/tokens", d.url)).send().await.unwrap();
    assert_eq!(r.status(), 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_shutdown_writes_every_queued_use() {
    let iss = Issuer::start().await;
    let secrets = tempfile::tempdir().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    crate::support::copy_dir(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("policies"), &tmp.path().join("policies"));
    // No periodic flush during the test: only the shutdown drain writes.
    let opts = Opts {
        issuer_url: iss.url.clone(),
        extra_toml: ct_toml(secrets.path(), "usage_flush_interval = \"60s\"\nusage_keep = 5"),
        ..Default::default()
    };
    let mut d = Daemon::start_in(tmp.path(), &opts).await;
    let ct = d.running().customer_tokens.clone().unwrap();
    let c = ct.create(&carol(), &meta(), "acme", &req("sync", &["customers.read"])).await.unwrap();
    let id = c.view.token.id.clone();
    for _ in 0..25 {
        assert_eq!(introspect(&d, c.token.expose_secret()).await["active"], true);
    }
    assert!(d.running().store.ct_uses(&id, 100).await.unwrap().is_empty(), "nothing written yet");
    drop(ct);
    d.stop().await;
    let d = Daemon::start_in(tmp.path(), &opts).await;
    let store = &d.running().store;
    assert_eq!(store.ct_uses(&id, 100).await.unwrap().len(), 5, "the last usage_keep uses are kept");
    assert_eq!(store.ct_days(&id).await.unwrap()[0].ok, 25, "every use counted");
}

/// Two replicas on one PostgreSQL store: a token cached as active on B is
/// refused by B as soon as A's revocation returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_revocation_on_one_replica_is_refused_by_the_other_when_it_returns() {
    let (_pg, dsn) = crate::store::pg_store_db();
    let iss = Issuer::start().await;
    let secrets = tempfile::tempdir().unwrap();
    let opts = Opts {
        issuer_url: iss.url.clone(),
        extra_toml: ct_toml(secrets.path(), "introspection_cache_ttl = \"2s\""),
        store: Some(dsn),
        ..Default::default()
    };
    let a = Daemon::start_with(opts.clone()).await;
    let tmp2 = tempfile::tempdir().unwrap();
    crate::support::copy_dir(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("policies"), &tmp2.path().join("policies"));
    std::fs::copy(a.dir.join("seal.key"), tmp2.path().join("seal.key")).unwrap();
    std::fs::copy(a.dir.join("admin.token"), tmp2.path().join("admin.token")).unwrap();
    let b = Daemon::start_in(tmp2.path(), &opts).await;
    let ct_a = a.running().customer_tokens.clone().unwrap();
    let c = ct_a.create(&carol(), &meta(), "acme", &req("sync", &["customers.read"])).await.unwrap();
    let token = c.token.expose_secret().to_owned();
    assert_eq!(introspect(&b, &token).await["active"], true, "B caches it as active");
    let t = Instant::now();
    ct_a.revoke(&carol(), &meta(), "acme", &c.view.token.id).await.unwrap();
    assert!(t.elapsed() >= Duration::from_secs(2));
    assert_eq!(introspect(&b, &token).await["active"], false, "B refuses it once A reported the revocation done");
    assert_eq!(introspect(&a, &token).await["active"], false);
}
