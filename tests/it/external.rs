//! External plugins (plugins/PROTOCOL.md) with real python3 processes: the
//! example `sqlite-accounts` plugin passes the conformance kit unchanged,
//! works through the daemon (issue, renew, revoke, expiry), is restarted
//! when it dies, and neither its crash mid-issue nor `kill -9` of lessor
//! mid-issue leaves an account without a live lease.

use std::collections::BTreeSet;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use lessor_external::ExternalPlugin;
use lessor_plugin::conformance::{self, Case, Probe};
use lessor_plugin::secrecy::{ExposeSecret, SecretString};
use lessor_plugin::{Plugin, PluginContext, RoleSpec, Workload};
use serde_json::{json, Map, Value};
use sqlx::{Connection, Row};

use crate::binary::{spawn_until, stop};
use crate::support::{config_text, copy_dir, Daemon, Issuer, Opts};

pub const ACCOUNTS_POLICY: &str = r#"
@id("test-accounts-app")
@reason("acme may have an account in the app's user table")
permit(principal, action in [Lessor::Action::"issue", Lessor::Action::"renew"], resource == Lessor::Role::"accounts/app")
when { principal has repository_owner && principal.repository_owner == "acme" };
"#;

/// The example plugin, copied into `dir` so that its processes are found by
/// their command line (which names this test's own directory).
pub fn install_plugin(dir: &Path) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/plugins/sqlite-accounts/plugin.py");
    let dst = dir.join("plugin.py");
    std::fs::copy(src, &dst).unwrap();
    assert!(
        std::process::Command::new("python3").arg("--version").output().is_ok_and(|o| o.status.success()),
        "python3 is needed for the external plugin tests (apt-get install python3)"
    );
    dst
}

/// `[connections.accounts]` for the example plugin, everything under `dir`.
pub fn accounts_toml(dir: &Path) -> String {
    let plugin = install_plugin(dir);
    format!(
        r#"
[quotas]
max_active_per_owner = 0
issues_per_minute_per_owner = 0

[connections.accounts]
plugin = "external"
environment = "staging"
[connections.accounts.config]
command = ["python3", "{plugin}"]
call_timeout = "5s"
shutdown_grace = "2s"
env = {{ SQLITE_ACCOUNTS_FAULT_FILE = "{fault}" }}
[connections.accounts.config.config]
database = "{db}"
pbkdf2_iterations = 1000
[connections.accounts.roles.app]
max_ttl = "1h"
default_ttl = "10m"
"#,
        plugin = plugin.display(),
        fault = dir.join("fault").display(),
        db = dir.join("accounts.db").display(),
    )
}

/// One account row, read straight from the vendor's file.
struct Account {
    salt: Vec<u8>,
    hash: Vec<u8>,
    iterations: u32,
    expires_at: String,
}

async fn account(db: &Path, name: &str) -> Option<Account> {
    let mut c = sqlx::SqliteConnection::connect(&format!("sqlite://{}", db.display())).await.unwrap();
    let row = sqlx::query("SELECT salt, hash, iterations, expires_at FROM accounts WHERE name = ?")
        .bind(name)
        .fetch_optional(&mut c)
        .await
        .unwrap()?;
    Some(Account { salt: row.get(0), hash: row.get(1), iterations: row.get::<i64, _>(2) as u32, expires_at: row.get(3) })
}

/// Every account name in the file, as the lease id it was named from.
async fn account_leases(db: &Path) -> BTreeSet<String> {
    let mut c = sqlx::SqliteConnection::connect(&format!("sqlite://{}", db.display())).await.unwrap();
    let names: Vec<String> = sqlx::query_scalar("SELECT name FROM accounts").fetch_all(&mut c).await.unwrap();
    names.into_iter().map(|n| n.strip_prefix("lessor_").unwrap_or_else(|| panic!("unprefixed account {n}")).to_owned()).collect()
}

/// Whether `password` verifies against the stored salted PBKDF2 hash of an
/// account that has not expired: what the application would check at login.
async fn login(db: &Path, name: &str, password: &str) -> bool {
    let Some(a) = account(db, name).await else { return false };
    let exp = time::OffsetDateTime::parse(&a.expires_at, &time::format_description::well_known::Rfc3339).unwrap();
    exp > time::OffsetDateTime::now_utc()
        && ring::pbkdf2::verify(
            ring::pbkdf2::PBKDF2_HMAC_SHA256,
            NonZeroU32::new(a.iterations).unwrap(),
            &a.salt,
            password.as_bytes(),
            &a.hash,
        )
        .is_ok()
}

struct AccountProbe(PathBuf);

#[async_trait]
impl Probe for AccountProbe {
    async fn works(
        &self,
        public: &Map<String, Value>,
        secret: &std::collections::BTreeMap<String, SecretString>,
        _handle: &Value,
    ) -> Result<bool, String> {
        let name = public["username"].as_str().ok_or("no username")?;
        let pw = secret.get("password").ok_or("no password")?;
        Ok(login(&self.0, name, pw.expose_secret()).await)
    }
}

async fn start_plugin(dir: &Path) -> Arc<ExternalPlugin> {
    let plugin = install_plugin(dir);
    let ctx = PluginContext::for_tests("accounts", "http://127.0.0.1:1");
    let cfg = json!({
        "command": ["python3", plugin],
        "call_timeout": "5s",
        "shutdown_grace": "2s",
        "config": {"database": dir.join("accounts.db"), "pbkdf2_iterations": 1000},
    });
    let roles = vec![RoleSpec { name: "app".into(), scopes: vec![], max_ttl: Duration::from_secs(3600), config: json!({}) }];
    ExternalPlugin::start(ctx, cfg, roles).await.unwrap_or_else(|e| panic!("{e}"))
}

fn alive(pid: u32) -> bool {
    // A zombie (exited, not yet reaped) counts as gone.
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.rsplit(')').next().unwrap_or("").trim_start().starts_with('Z'))
}

#[tokio::test]
async fn the_conformance_kit_passes_against_the_python_sqlite_plugin() {
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("accounts.db");
    let p = start_plugin(tmp.path()).await;
    assert_eq!((p.handshake().kind.as_str(), p.kind()), ("sqlite-accounts", "external"));
    let case = Case {
        role: "app".into(),
        scopes: vec![],
        params: Map::new(),
        workload: Workload { issuer: "https://iss".into(), subject: "repo:acme/api".into(), attributes: Default::default() },
        ttl: Duration::from_secs(120),
    };
    let report = conformance::run(p.as_ref(), case.clone(), &AccountProbe(db.clone())).await.unwrap_or_else(|e| panic!("{e}"));
    assert!(report.checks_passed.contains(&"renew extends the credential"), "{report:?}");
    assert!(account_leases(&db).await.is_empty(), "the kit leaves nothing behind");

    // `list` maps what exists back to lease ids.
    let req = lessor_plugin::IssueRequest {
        lease_id: lessor_plugin::LeaseId::new("lse_0123abcd"),
        role: "app".into(),
        workload: case.workload.clone(),
        scopes: vec![],
        expires_at: time::OffsetDateTime::now_utc() + Duration::from_secs(60),
        params: Map::new(),
    };
    let issued = p.issue(req).await.unwrap();
    assert_eq!(issued.public["username"], "lessor_lse_0123abcd");
    let listed = p.list_objects(None, 100).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!((listed[0].name.as_str(), listed[0].lease_id.as_ref().map(|l| l.as_str())), ("lessor_lse_0123abcd", Some("lse_0123abcd")));
    let v = p.validate().await.unwrap();
    assert_eq!(v.identity, format!("sqlite:{}", db.display()));
    assert_eq!(v.details["accounts"], "1");

    // Concurrent calls are multiplexed on the one process.
    let started = Instant::now();
    let calls = (0..32).map(|i| {
        let p = p.clone();
        async move {
            p.issue(lessor_plugin::IssueRequest {
                lease_id: lessor_plugin::LeaseId::new(format!("lse_par{i}")),
                role: "app".into(),
                workload: Workload::default(),
                scopes: vec![],
                expires_at: time::OffsetDateTime::now_utc() + Duration::from_secs(60),
                params: Map::new(),
            })
            .await
        }
    });
    let results = futures::future::join_all(calls).await;
    assert!(results.iter().all(Result::is_ok), "{:?}", results.iter().filter_map(|r| r.as_ref().err()).collect::<Vec<_>>());
    println!("32 concurrent issues through one python3 process: {:?}", started.elapsed());
    assert_eq!(account_leases(&db).await.len(), 33);
    // `list` pages in name order.
    let (mut after, mut seen) = (None::<String>, Vec::new());
    loop {
        let page = p.list_objects(after.as_deref(), 10).await.unwrap();
        let Some(last) = page.last() else { break };
        after = Some(last.name.clone());
        seen.extend(page.into_iter().map(|o| o.lease_id.unwrap().as_str().to_owned()));
    }
    assert_eq!(seen.iter().cloned().collect::<BTreeSet<_>>(), account_leases(&db).await);
    assert_eq!(seen.len(), 33);

    // Shutdown: the process exits (it answered `shutdown`), calls then fail retryably.
    let pid = p.pid().unwrap();
    p.stop().await;
    assert!(!alive(pid), "the plugin process {pid} is gone after shutdown");
    let e = p.validate().await.unwrap_err();
    assert!(e.is_retryable() && e.to_string().contains("shutting down"), "{e}");
}

async fn accounts_daemon(iss: &Issuer, leases_toml: &str) -> (Daemon, tempfile::TempDir) {
    let aux = tempfile::tempdir().unwrap();
    let d = Daemon::start_with(Opts {
        issuer_url: iss.url.clone(),
        extra_toml: accounts_toml(aux.path()),
        leases_toml: leases_toml.into(),
        policy: ACCOUNTS_POLICY.into(),
        ..Default::default()
    })
    .await;
    (d, aux)
}

async fn leases_in(d: &Daemon, state: &str) -> BTreeSet<String> {
    let (s, v) = d.get(&format!("/v1/admin/leases?state={state}&limit=10000"), &d.admin).await;
    assert_eq!(s, 200, "{v}");
    v["leases"].as_array().unwrap().iter().map(|l| l["lease_id"].as_str().unwrap().to_owned()).collect()
}

#[tokio::test]
async fn through_the_daemon_an_account_is_issued_renewed_revoked_and_expires() {
    let iss = Issuer::start().await;
    let (d, aux) = accounts_daemon(&iss, "").await;
    let db = aux.path().join("accounts.db");
    let jwt = iss.token();

    let (s, v) = d.issue(&jwt, json!({"role": "accounts/app", "ttl": "5m"})).await;
    assert_eq!(s, 201, "{v}");
    let id = v["lease_id"].as_str().unwrap().to_owned();
    let user = v["credential"]["username"].as_str().unwrap().to_owned();
    let pw = v["credential"]["password"].as_str().unwrap().to_owned();
    assert_eq!(user, format!("lessor_{id}"));
    assert_eq!(pw.len(), 43, "256 random bits, base64url");
    assert!(login(&db, &user, &pw).await, "the password verifies against the stored PBKDF2 hash");
    assert!(!login(&db, &user, "not-the-password").await);
    let stored = account(&db, &user).await.unwrap();
    assert!(!stored.hash.windows(pw.len()).any(|w| w == pw.as_bytes()), "only a hash is stored");
    assert_eq!(v["renewable"], true);

    let (s, r) = d.post(&format!("/v1/leases/{id}/renew"), &jwt, json!({"ttl": "30m"})).await;
    assert_eq!(s, 200, "{r}");
    let renewed = time::OffsetDateTime::parse(r["expires_at"].as_str().unwrap(), &time::format_description::well_known::Rfc3339).unwrap();
    let at_vendor = time::OffsetDateTime::parse(&account(&db, &user).await.unwrap().expires_at, &time::format_description::well_known::Rfc3339).unwrap();
    assert_eq!(at_vendor, renewed, "the vendor's expiry follows the renewal");

    let (s, r) = d.delete(&format!("/v1/leases/{id}"), &jwt).await;
    assert_eq!(s, 200, "{r}");
    assert_eq!(r["state"], "revoked");
    assert!(account(&db, &user).await.is_none(), "the account is gone after revoke");

    let (s, v) = d.issue(&jwt, json!({"role": "accounts/app", "ttl": "2s"})).await;
    assert_eq!(s, 201, "{v}");
    let short = v["lease_id"].as_str().unwrap().to_owned();
    assert!(account_leases(&db).await.contains(&short));
    let ended = Daemon::eventually(Duration::from_secs(15), || async { (d.lease_state(&short).await == "expired").then_some(()) }).await;
    assert!(ended.is_some(), "the lease expired: {}", d.lease_state(&short).await);
    assert!(account_leases(&db).await.is_empty(), "the expired lease's account was deleted");
}

/// The plugin's python3 processes (this test's copy of plugin.py).
fn plugin_pids(dir: &Path) -> Vec<u32> {
    let needle = dir.join("plugin.py").display().to_string();
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else { continue };
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmd).contains(&needle) && alive(pid) {
            out.push(pid);
        }
    }
    out
}

fn kill9(pid: u32) {
    assert!(std::process::Command::new("kill").args(["-9", &pid.to_string()]).status().unwrap().success());
}

#[tokio::test]
async fn a_killed_plugin_is_restarted_and_a_crash_mid_issue_leaves_no_account() {
    let iss = Issuer::start().await;
    let (d, aux) = accounts_daemon(&iss, "retry_max = \"1s\"\nbreaker_base = \"1s\"\nbreaker_max = \"1s\"").await;
    let db = aux.path().join("accounts.db");
    let jwt = iss.token();
    let (s, v) = d.issue(&jwt, json!({"role": "accounts/app"})).await;
    assert_eq!(s, 201, "{v}");
    let first = v["lease_id"].as_str().unwrap().to_owned();

    let pids = plugin_pids(aux.path());
    assert_eq!(pids.len(), 1, "one plugin process: {pids:?}");
    kill9(pids[0]);
    // Calls fail (retryably: 503) until the restart, then work again.
    let t0 = Instant::now();
    let back = Daemon::eventually(Duration::from_secs(15), || async {
        let (s, v) = d.issue(&jwt, json!({"role": "accounts/app"})).await;
        assert!(s == 201 || s == 503, "{s} {v}");
        (s == 201).then_some(v)
    })
    .await
    .expect("issuing works again after the plugin was killed");
    println!("issuing worked again {:?} after kill -9 of the plugin", t0.elapsed());
    let now = plugin_pids(aux.path());
    assert!(now.len() == 1 && now[0] != pids[0], "a new process: {now:?} (was {pids:?})");
    let user = back["credential"]["username"].as_str().unwrap();
    assert!(login(&db, user, back["credential"]["password"].as_str().unwrap()).await);

    // The plugin crashes after creating the account, before answering: the
    // issue fails, and the pending lease is revoked through the restarted
    // plugin, taking the account with it.
    let ids = |ls: Vec<Value>| ls.iter().map(|l| l["lease_id"].as_str().unwrap().to_owned()).collect::<BTreeSet<_>>();
    let before = ids(d.leases().await);
    std::fs::write(aux.path().join("fault"), "crash").unwrap();
    let (s, v) = d.issue(&jwt, json!({"role": "accounts/app"})).await;
    assert_eq!(s, 503, "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("went away during `issue`"), "{v}");
    let settled = Daemon::eventually(Duration::from_secs(20), || async {
        let active = leases_in(&d, "active").await;
        let accounts = account_leases(&db).await;
        (leases_in(&d, "pending").await.is_empty() && leases_in(&d, "revoke_failed").await.is_empty() && accounts == active)
            .then_some(active)
    })
    .await;
    let active = settled.unwrap_or_else(|| panic!("accounts {:?} never matched the active leases", futures::executor::block_on(account_leases(&db))));
    assert_eq!(active.len(), 2);
    assert!(active.contains(&first));
    let crashed: Vec<String> = ids(d.leases().await).difference(&before).cloned().collect();
    assert_eq!(crashed.len(), 1, "{crashed:?}");
    assert_eq!(d.lease_state(&crashed[0]).await, "revoked", "the crashed issue's lease was revoked");
}

/// `kill -9` of lessor while the plugin is inside an issue (the account is
/// committed, the answer not yet sent), then a restart: the pending lease is
/// revoked through the new plugin process and no account is left without a
/// live lease. The old plugin process exits on its own (end of its stdin).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_lessor_mid_issue_leaves_no_account_without_a_live_lease() {
    let iss = Issuer::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    copy_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("policies"), &dir.join("policies"));
    std::fs::write(dir.join("policies/test-extra.cedar"), ACCOUNTS_POLICY).unwrap();
    let cfg = config_text(dir, &dir.join("policies"), &iss.url, &accounts_toml(dir), "");
    std::fs::write(dir.join("lessor.toml"), cfg).unwrap();
    let db = dir.join("accounts.db");
    let (mut child, url) =
        spawn_until(&["serve", "--config", "lessor.toml"], dir, &[("RUST_LOG", "debug")], &dir.join("a.log"), "lessor listening on ");
    let http = reqwest::Client::new();
    let jwt = iss.token();
    let issue = |http: reqwest::Client, url: String, jwt: String| async move {
        http.post(format!("{url}/v1/leases")).bearer_auth(jwt).json(&json!({"role": "accounts/app"})).send().await
    };
    let mut kept = BTreeSet::new();
    let mut passwords = Vec::new();
    for _ in 0..3 {
        let r = issue(http.clone(), url.clone(), jwt.clone()).await.unwrap();
        assert_eq!(r.status(), 201);
        let v = r.json::<Value>().await.unwrap();
        kept.insert(v["lease_id"].as_str().unwrap().to_owned());
        passwords.push(v["credential"]["password"].as_str().unwrap().to_owned());
    }
    let old_plugin = plugin_pids(dir);
    assert_eq!(old_plugin.len(), 1);

    std::fs::write(dir.join("fault"), "hang").unwrap();
    let hung = tokio::spawn(issue(http.clone(), url.clone(), jwt.clone()));
    // The account exists (committed at the vendor); lessor has no answer yet.
    let created = Daemon::eventually(Duration::from_secs(10), || async {
        let now = account_leases(&db).await;
        (now.len() == 4).then(|| now.difference(&kept).next().cloned()).flatten()
    })
    .await
    .expect("the hanging issue created its account");
    child.kill().unwrap(); // SIGKILL
    let _ = child.wait();
    assert!(hung.await.unwrap().is_err(), "the hung request never got an answer");
    let gone = Daemon::eventually(Duration::from_secs(10), || async { (!alive(old_plugin[0])).then_some(()) }).await;
    assert!(gone.is_some(), "the old plugin process exits when lessor's end of its stdin closes");
    assert!(account_leases(&db).await.contains(&created), "the orphan exists until lessor restarts");

    let (child2, url2) = spawn_until(&["serve", "--config", "lessor.toml"], dir, &[], &dir.join("b.log"), "lessor listening on ");
    let admin = std::fs::read_to_string(dir.join("admin.token")).unwrap().trim().to_owned();
    let list = |state: &'static str| {
        let (http, url2, admin) = (http.clone(), url2.clone(), admin.clone());
        async move {
            let v: Value = http
                .get(format!("{url2}/v1/admin/leases?state={state}&limit=10000"))
                .bearer_auth(admin)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            v["leases"].as_array().unwrap().iter().map(|l| l["lease_id"].as_str().unwrap().to_owned()).collect::<BTreeSet<_>>()
        }
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while (!list("pending").await.is_empty() || account_leases(&db).await.contains(&created)) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(list("pending").await.is_empty(), "the pending lease was swept at restart");
    assert!(list("revoked").await.contains(&created), "the orphaned lease ended revoked");
    assert_eq!(account_leases(&db).await, list("active").await, "every account belongs to an active lease");
    assert_eq!(list("active").await, kept);
    stop(child2);
    // The plugin's stderr reached lessor's debug log; its passwords did not.
    let logs = std::fs::read_to_string(dir.join("a.log")).unwrap() + &std::fs::read_to_string(dir.join("b.log")).unwrap();
    assert!(logs.contains("plugin stderr") && logs.contains("created account lessor_lse_"), "stderr is forwarded at DEBUG");
    for pw in &passwords {
        assert!(!logs.contains(pw.as_str()), "an issued password appears in the debug log");
    }
    let _ = tmp;
}

/// The reconciler through the external plugin's `list`: an account made
/// behind lessor's back in lessor's shape is revoked after the grace, the
/// live lease's account stays, a name with the prefix but no lease id is
/// never touched, and the next pass is clean.
#[tokio::test]
async fn the_reconciler_finds_and_revokes_a_stray_account() {
    let iss = Issuer::start().await;
    let aux = tempfile::tempdir().unwrap();
    let d = Daemon::start_with(Opts {
        issuer_url: iss.url.clone(),
        extra_toml: format!("{}\n[reconcile]\ninterval = \"0s\"\ngrace = \"1s\"\n", accounts_toml(aux.path())),
        policy: ACCOUNTS_POLICY.into(),
        ..Default::default()
    })
    .await;
    let db = aux.path().join("accounts.db");
    let (s, v) = d.issue(&iss.token(), json!({"role": "accounts/app"})).await;
    assert_eq!(s, 201, "{v}");
    let kept = v["lease_id"].as_str().unwrap().to_owned();
    let stray = format!("lse_{}", hex::encode(rand::random::<[u8; 16]>()));
    let mut c = sqlx::SqliteConnection::connect(&format!("sqlite://{}", db.display())).await.unwrap();
    for name in [format!("lessor_{stray}"), "lessor_not a lease".to_owned()] {
        sqlx::query("INSERT INTO accounts VALUES (?, x'00', x'00', 1000, 'app', '', '2999-01-01T00:00:00Z', '')")
            .bind(name)
            .execute(&mut c)
            .await
            .unwrap();
    }
    let pass = || async {
        let (s, v) = d.post("/v1/admin/reconcile", &d.admin, json!({})).await;
        assert_eq!(s, 200, "{v}");
        v["connections"].as_array().unwrap().iter().find(|c| c["connection"] == "accounts").cloned().unwrap_or_else(|| panic!("{v}"))
    };
    let r = pass().await;
    assert_eq!(r["status"], "checked", "{r}");
    let outcome = |r: &Value, name: &str| {
        r["strays"].as_array().unwrap().iter().find(|s| s["object"] == name).map(|s| (s["reason"].clone(), s["outcome"].clone()))
    };
    let stray_name = format!("lessor_{stray}");
    assert_eq!(r["strays"].as_array().map(Vec::len), Some(2), "{r}");
    assert_eq!(outcome(&r, &stray_name), Some((json!("no_lease"), json!("waiting"))), "{r}");
    assert_eq!(outcome(&r, "lessor_not a lease"), Some((json!("unmapped"), json!("reported"))), "{r}");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let r = pass().await;
    assert_eq!(outcome(&r, &stray_name), Some((json!("no_lease"), json!("revoked"))), "{r}");
    let left = account_leases(&db).await;
    assert!(left.contains(&kept) && !left.contains(&stray), "{left:?}");
    assert!(left.contains("not a lease"), "a prefixed name without a lease id is not lessor's to delete");
    let r = pass().await;
    assert_eq!(r["strays"].as_array().map(Vec::len), Some(1), "only the unmapped name is left, reported: {r}");
    assert_eq!(r["objects"], 2, "{r}");
}

/// The plugin's own `config` is the plugin's to judge: `lessor check
/// --connections` starts it, and its `initialize` refusal (or its
/// `validate`) is the check's answer, by name.
#[test]
fn lessor_check_connections_starts_an_external_plugin_and_reports_its_refusal() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    copy_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("policies"), &dir.join("policies"));
    let check = |toml: &str| {
        std::fs::write(dir.join("lessor.toml"), config_text(dir, &dir.join("policies"), "https://issuer.test", toml, "")).unwrap();
        crate::support::daemon::run(&["check", "--config", "lessor.toml", "--connections"], dir, &[])
    };
    let good = accounts_toml(dir);
    let (code, out, err) = check(&good);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("ok    connection `accounts` (external)"), "{out}{err}");
    let (code, out, err) = check(&good.replace("pbkdf2_iterations = 1000", "pbkdf2_iterations = 5"));
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains("connection `accounts` (external): misconfigured: handshake: `initialize`: code -32004: `config.pbkdf2_iterations` must be an integer from 1000 to 10000000"),
        "{out}{err}"
    );
}

#[test]
fn lessor_check_validates_an_external_connection_without_starting_it() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let cfg = |extra: &str| {
        let text = config_text(dir, &dir.join("policies"), "https://issuer.test", extra, "");
        lessor::config::Config::from_toml(&text).unwrap()
    };
    // The example's connection passes; so does a program that does not
    // exist: the check starts nothing.
    lessor::plugins::check_config(&cfg(&accounts_toml(dir))).unwrap();
    let conn = "[connections.ext]\nplugin = \"external\"\nenvironment = \"staging\"\n[connections.ext.config]\n";
    lessor::plugins::check_config(&cfg(&format!("{conn}command = [\"/nonexistent/plugin\"]\n"))).unwrap();
    let bad = |extra: &str, needle: &str| {
        let e = lessor::plugins::check_config(&cfg(&format!("{conn}{extra}"))).unwrap_err();
        assert!(e.contains(needle), "{e}");
    };
    bad("", "connection `ext` (external): misconfigured: `command` is required");
    bad("command = [\"x\"]\ncall_timeout = \"1ms\"\n", "`call_timeout` = `1ms` must be between 100ms and 10m");
    bad("command = [\"x\"]\ncomand = 1\n", "unknown field `comand`");
}
