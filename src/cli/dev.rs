//! `lessor dev`: the README's first command. A complete daemon on the
//! embedded default (SQLite in `.lessor-dev/`), a built-in dev issuer,
//! example pki and token roles, and the example policies; it prints exactly
//! how to get a credential. `lessor dev token` mints a workload JWT. Beside
//! the daemon it runs the built-in OpenID provider for people
//! ([`crate::dev_idp`]) on a free loopback port.

use std::path::{Path, PathBuf};
use std::process::ExitCode;


use anyhow::{anyhow, Context};
use clap::{Args, Subcommand};
use secrecy::ExposeSecret;

use crate::config::Config;
use crate::identity::dev::{jwks_path, DevIssuer, DEV_AUDIENCE, DEV_ISSUER};

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct DevArgs {
    #[command(subcommand)]
    cmd: Option<DevCmd>,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8200")]
    listen: std::net::SocketAddr,
    /// Where the dev store, keys and generated config live.
    #[arg(long, env = "LESSOR_DEV_DIR", default_value = ".lessor-dev")]
    data_dir: PathBuf,
    /// Policy directory; defaults to ./policies if present, else the
    /// built-in examples (written to <data-dir>/policies).
    #[arg(long)]
    policies: Option<PathBuf>,
    /// Log as JSON lines.
    #[arg(long)]
    log_json: bool,
    /// Also serve PostgreSQL roles (`pg/readonly`) on this server, given the
    /// DSN of a role with CREATEROLE, e.g. postgres://postgres:pw@127.0.0.1/app.
    /// Written to <data-dir>/postgres.dsn (0600); the generated config
    /// refers to that file.
    #[arg(long, env = "LESSOR_DEV_POSTGRES", value_name = "DSN")]
    postgres: Option<String>,
    /// Also serve Redis / Valkey ACL users (`cache/readonly`, keys
    /// `cache:*`), given the URL of an admin user that may run ACL SETUSER,
    /// e.g. redis://default:pw@127.0.0.1:6379. The password is written to
    /// <data-dir>/redis.password (0600); the generated config refers to it.
    #[arg(long, env = "LESSOR_DEV_REDIS", value_name = "URL")]
    redis: Option<String>,
    /// Also serve MySQL / MariaDB users (`my/readonly`) on this server,
    /// given the DSN of an account with CREATE USER and GRANT OPTION, e.g.
    /// mysql://root:pw@127.0.0.1:3306/app (the DSN's database is the one the
    /// users may read). Written to <data-dir>/mysql.dsn (0600).
    #[arg(long, env = "LESSOR_DEV_MYSQL", value_name = "DSN")]
    mysql: Option<String>,
}

#[derive(Debug, Subcommand)]
enum DevCmd {
    /// Print a workload JWT signed by the dev issuer (GitHub Actions shape by
    /// default; --k8s for a Kubernetes service account).
    Token(TokenArgs),
}

#[derive(Debug, Args)]
struct TokenArgs {
    /// GitHub repository, `owner/name`.
    #[arg(long, default_value = "acme/api")]
    repo: String,
    /// Git ref the workflow runs on.
    #[arg(long = "ref", default_value = "refs/heads/main")]
    git_ref: String,
    /// GitHub environment.
    #[arg(long)]
    environment: Option<String>,
    /// GitHub event (push, pull_request, ...).
    #[arg(long, default_value = "push")]
    event: String,
    /// Kubernetes service account instead, as `namespace/name`.
    #[arg(long)]
    k8s: Option<String>,
    /// Token lifetime.
    #[arg(long, default_value = "10m")]
    ttl: String,
    #[arg(long, env = "LESSOR_DEV_DIR", default_value = ".lessor-dev")]
    data_dir: PathBuf,
}

const EXAMPLE_POLICIES: &[(&str, &str)] = &[
    ("lessor.cedarschema", include_str!("../../policies/lessor.cedarschema")),
    ("github/web-certificates.cedar", include_str!("../../policies/github/web-certificates.cedar")),
    ("github/api-tokens.cedar", include_str!("../../policies/github/api-tokens.cedar")),
    ("github/database.cedar", include_str!("../../policies/github/database.cedar")),
    ("kubernetes/service-accounts.cedar", include_str!("../../policies/kubernetes/service-accounts.cedar")),
    ("operators.cedar", include_str!("../../policies/operators.cedar")),
    ("customer_tokens.cedar", include_str!("../../policies/customer_tokens.cedar")),
    ("tests/examples.toml", include_str!("../../policies/tests/examples.toml")),
    ("tests/customer_tokens.toml", include_str!("../../policies/tests/customer_tokens.toml")),
];

pub async fn run(args: DevArgs) -> anyhow::Result<ExitCode> {
    if let Some(DevCmd::Token(t)) = args.cmd {
        return token(t);
    }
    crate::telemetry::init_logging(args.log_json);
    let dir = &args.data_dir;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    DevIssuer::load_or_create(dir).map_err(|e| anyhow!(e))?;
    let policies = match args.policies {
        Some(p) => p,
        None if Path::new("policies/lessor.cedarschema").exists() => PathBuf::from("policies"),
        None => {
            let p = dir.join("policies");
            for (name, text) in EXAMPLE_POLICIES {
                let f = p.join(name);
                if let Some(parent) = f.parent() {
                    std::fs::create_dir_all(parent)?;
                }
                std::fs::write(&f, text).with_context(|| format!("writing {}", f.display()))?;
            }
            p
        }
    };
    // Bound first: with `--listen 127.0.0.1:0` the config, the redirect URI
    // registered at the dev provider and the intro all need the real port.
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {} (is another lessor running? try --listen 127.0.0.1:8201)", args.listen))?;
    let listen = listener.local_addr()?;
    let idp = start_dev_idp(dir, listen).await?;
    let mut text = config_text(dir, &policies, listen);
    text.push_str(&people_section(&idp.issuer, &dev_idp_secret_path(dir)));
    let api_secret = dev_api_secret_path(dir);
    ensure_dev_api_secret(&api_secret)?;
    text.push_str(&customer_tokens_section(&api_secret));
    if let Some(dsn) = &args.postgres {
        let f = dir.join("postgres.dsn");
        let _ = std::fs::remove_file(&f);
        crate::seal::write_private_file(&f, dsn.trim().as_bytes()).with_context(|| format!("writing {}", f.display()))?;
        text.push_str(&postgres_text(&f));
    }
    if let Some(url) = &args.redis {
        let (node, user, password) =
            lessor_redis::config::split_credentials(url.trim()).map_err(|e| anyhow!("--redis: {e}"))?;
        let f = dir.join("redis.password");
        let _ = std::fs::remove_file(&f);
        crate::seal::write_private_file(&f, password.expose_secret().as_bytes())
            .with_context(|| format!("writing {}", f.display()))?;
        text.push_str(&redis_text(&node.url, &user, &f));
    }
    if let Some(dsn) = &args.mysql {
        let db = mysql_database(dsn)?;
        let f = dir.join("mysql.dsn");
        let _ = std::fs::remove_file(&f);
        crate::seal::write_private_file(&f, dsn.trim().as_bytes()).with_context(|| format!("writing {}", f.display()))?;
        text.push_str(&mysql_text(&f, &db));
    }
    let cfg_path = dir.join("lessor.toml");
    std::fs::write(&cfg_path, &text).with_context(|| format!("writing {}", cfg_path.display()))?;
    let cfg = Config::from_toml(&text).map_err(|e| anyhow!("generated dev config: {e}"))?;
    let running = crate::server::start(cfg, listener).await?;
    print_intro(
        &running.addr.to_string(),
        dir,
        &cfg_path,
        &policies,
        args.postgres.is_some(),
        args.redis.is_some(),
        args.mysql.is_some(),
    );
    print_people(&running.addr.to_string(), &idp.issuer);
    print_customer_tokens(&running.addr.to_string(), &api_secret);
    running.run_until_signal().await;
    idp.shutdown().await;
    Ok(ExitCode::SUCCESS)
}

/// The dev provider's client secret (0600), regenerated at each start.
pub fn dev_idp_secret_path(dir: &Path) -> PathBuf {
    dir.join("dev-idp.client-secret")
}

/// The dev resource server's (`dev-api`) introspection secret (0600). Kept
/// across restarts, unlike the dev provider's: it is what a developer's own
/// API server is configured with.
pub fn dev_api_secret_path(dir: &Path) -> PathBuf {
    dir.join("dev-api.secret")
}

fn ensure_dev_api_secret(f: &Path) -> anyhow::Result<()> {
    use rand::RngCore;
    if f.exists() {
        return Ok(());
    }
    let mut raw = zeroize::Zeroizing::new([0u8; 32]);
    rand::rng().fill_bytes(&mut raw[..]);
    let hex = zeroize::Zeroizing::new(hex::encode(&raw[..]));
    crate::seal::write_private_file(f, hex.as_bytes()).with_context(|| format!("writing {}", f.display()))
}

/// The dev config's customer tokens: the scopes `policies/customer_tokens.cedar`
/// speaks of, a token-plugin role `api/customers` for them, and one resource
/// server `dev-api` whose secret is in [`dev_api_secret_path`]. carol
/// (account:acme) and dave (account:globex) manage their accounts' tokens.
pub fn customer_tokens_section(secret_file: &Path) -> String {
    format!(
        r#"
# Customer API tokens (the SaaS case): carol manages account acme's tokens,
# dave globex's (`lessor login`, then `lessor token --account acme ...`);
# your API verifies them at POST /v1/introspect as resource server dev-api.
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
environment = "staging"
owner = "saas-team"
[connections.api.roles.customers]
description = "The scopes customers choose from for their API tokens."
max_ttl = "1h"
scopes = ["orders.read", "customers.read", "invoices.read", "security.write"]

[customer_tokens]
roles = ["api/customers"]
[customer_tokens.resource_servers.dev-api]
secret_file = {secret}
"#,
        secret = toml_str(secret_file)
    )
}

/// Starts the dev OpenID provider on a free loopback port, with lessor at
/// `listen` as its one client (`lessor`, secret written to
/// [`dev_idp_secret_path`]).
async fn start_dev_idp(dir: &Path, listen: std::net::SocketAddr) -> anyhow::Result<crate::dev_idp::RunningDevIdp> {
    use rand::RngCore;
    let mut raw = zeroize::Zeroizing::new([0u8; 32]);
    rand::rng().fill_bytes(&mut raw[..]);
    let secret = secrecy::SecretString::from(hex::encode(&raw[..]));
    let f = dev_idp_secret_path(dir);
    let _ = std::fs::remove_file(&f);
    crate::seal::write_private_file(&f, secret.expose_secret().as_bytes()).with_context(|| format!("writing {}", f.display()))?;
    let base = format!("http://{listen}");
    let mut settings =
        crate::dev_idp::DevIdpSettings::new("lessor", secret, vec![format!("{base}/v1/people/callback")]);
    settings.post_logout_redirect_uris = vec![format!("{base}/")];
    let ip = if listen.ip().is_loopback() { listen.ip() } else { std::net::Ipv4Addr::LOCALHOST.into() };
    Ok(crate::dev_idp::start(std::net::SocketAddr::new(ip, 0), settings).await?)
}

/// The dev config's `[people]` section: the dev provider as provider
/// `dev`, lessor its one client.
pub fn people_section(issuer: &str, secret_file: &Path) -> String {
    format!(
        r#"
# People sign in through the built-in dev OpenID provider (alice, bob,
# carol, dave): {issuer}
[people]
idle_timeout = "30m"
absolute_timeout = "12h"
[people.providers.dev]
issuer = "{issuer}"
client_id = "lessor"
client_secret_file = {secret}
scopes = ["openid", "email", "profile", "groups"]
[people.providers.dev.claims]
subject = "sub"
email = "email"
name = "name"
groups = "groups"
"#,
        secret = toml_str(secret_file)
    )
}

fn print_people(addr: &str, issuer: &str) {
    let users: Vec<String> =
        crate::dev_idp::DEV_USERS.iter().map(|u| format!("{} ({})", u.login, u.groups.join(", "))).collect();
    println!("People: dev OpenID provider at {issuer} with users {}", users.join(", "));
    println!("Sign in: http://{addr}/v1/people/login?provider=dev");
}

fn print_customer_tokens(addr: &str, secret_file: &Path) {
    let addr_flag = if addr == "127.0.0.1:8200" { String::new() } else { format!(" --addr http://{addr}") };
    println!();
    println!("Customer API tokens, as carol of account acme (sign in as carol when the page asks):");
    let exe = exe_display();
    println!("  {exe} login{addr_flag} --provider dev");
    println!("  {exe} token{addr_flag} --account acme create --name \"billing sync\" --scope invoices.read");
    println!("Your API checks a token (resource server dev-api, secret in {}):", secret_file.display());
    println!(
        "  curl -s -u dev-api:$(cat {}) -d token=<the token> http://{addr}/v1/introspect",
        secret_file.display()
    );
}

fn token(t: TokenArgs) -> anyhow::Result<ExitCode> {
    let issuer = DevIssuer::load_or_create(&t.data_dir).map_err(|e| anyhow!(e))?;
    let ttl = crate::duration::parse(&t.ttl).map_err(|e| anyhow!("--ttl: {e}"))?;
    let claims = match &t.k8s {
        Some(sa) => {
            let (ns, name) = sa.split_once('/').ok_or_else(|| anyhow!("--k8s must be namespace/name"))?;
            DevIssuer::kubernetes_claims(ns, name)
        }
        None => {
            if !t.repo.contains('/') {
                return Err(anyhow!("--repo must be owner/name"));
            }
            let mut c = DevIssuer::github_claims(&t.repo, &t.git_ref, t.environment.as_deref());
            c.insert("event_name".into(), t.event.clone().into());
            c
        }
    };
    let jwt = issuer.mint(claims, ttl).map_err(|e| anyhow!(e))?;
    println!("{}", jwt.expose_secret());
    Ok(ExitCode::SUCCESS)
}

fn toml_str(p: &Path) -> String {
    // TOML basic string with backslashes and quotes escaped.
    format!("\"{}\"", p.display().to_string().replace('\\', "\\\\").replace('"', "\\\""))
}

/// The generated dev config (also written to <data-dir>/lessor.toml so a
/// newcomer can read what is running).
pub fn config_text(dir: &Path, policies: &Path, listen: std::net::SocketAddr) -> String {
    let store = format!("sqlite://{}", dir.join("lessor.db").display());
    format!(
        r#"# Generated by `lessor dev`; edit a copy and run it with `lessor serve --config`.
listen = "{listen}"
store = {store}
data_dir = {data_dir}
policies = {policies}

# The audit log: a hash-chained, signed file next to the store.
# Check it with `lessor audit verify {audit}`.
[audit]
sink = "file"
file = {audit_q}

# The built-in dev issuer: `lessor dev token` signs with its key.
[issuers.dev]
issuer = "{DEV_ISSUER}"
jwks_file = {jwks}
audiences = ["{DEV_AUDIENCE}"]
algorithms = ["ES256"]
preset = "github-actions"
max_token_age = "1h"
[issuers.dev.claims]
namespace = "kubernetes.io.namespace"
service_account = "kubernetes.io.serviceaccount.name"
pod = "kubernetes.io.pod.name"

[scopes."orders.read"]
allows = "Read orders and their line items."
denies = "Cannot create, change or cancel orders; cannot see payment details."
[scopes."orders.write"]
allows = "Create and change orders."
denies = "Cannot cancel paid orders; cannot send invoices."
[scopes."invoices.send"]
allows = "Send an invoice for an existing order."
denies = "Cannot change amounts or orders; cannot issue refunds."

[connections.pki]
plugin = "pki"
environment = "staging"
owner = "platform-team"
[connections.pki.roles.web]
description = "Certificate for a service built from an acme repository (SPIFFE ID + DNS name)."
max_ttl = "1h"
default_ttl = "5m"
[connections.pki.roles.web.config]
allowed_names = ["spiffe://lessor.dev/gh/{{repository}}", "{{repository_owner}}.svc.lessor.dev"]

[connections.token]
plugin = "token"
environment = "staging"
owner = "orders-team"
[connections.token.roles.orders]
description = "API token for the orders service."
max_ttl = "1h"
default_ttl = "5m"
scopes = ["orders.read", "orders.write", "invoices.send"]
default_scopes = ["orders.read"]

# The Vault-compatible API: VAULT_ADDR=http://{listen} and the bao/vault
# CLI, hvac or Vault Agent log in at auth/jwt and read pki/issue/web,
# token/creds/orders (and database/creds/readonly with --postgres).
[vault_api]
session_ttl = "1h"
[vault_api.auth.jwt]
issuers = ["dev"]
[vault_api.mounts.pki]
connection = "pki"
[vault_api.mounts.token]
connection = "token"
"#,
        store = toml_str(Path::new(&store)),
        data_dir = toml_str(dir),
        policies = toml_str(policies),
        jwks = toml_str(&jwks_path(dir)),
        audit = dir.join("audit.log").display(),
        audit_q = toml_str(&dir.join("audit.log")),
    )
}

/// The dev config's PostgreSQL connection (`lessor dev --postgres DSN`).
pub fn postgres_text(dsn_file: &Path) -> String {
    format!(
        r#"
[scopes."db.read"]
allows = "Read every table, view and sequence of the database (pg_read_all_data)."
denies = "Cannot write, create objects, or change roles."

[connections.pg]
plugin = "postgres"
environment = "development"
[connections.pg.config]
dsn_file = {dsn}
[connections.pg.roles.readonly]
description = "A PostgreSQL login that can read the database, for the lease's lifetime."
max_ttl = "1h"
default_ttl = "10m"
scopes = ["db.read"]
default_scopes = ["db.read"]
[connections.pg.roles.readonly.config.grants]
"db.read" = ["GRANT pg_read_all_data TO {{{{name}}}}"]

[vault_api.mounts.database]
connection = "pg"
"#,
        dsn = toml_str(dsn_file)
    )
}

/// The dev config's Redis / Valkey connection (`lessor dev --redis URL`).
pub fn redis_text(node: &str, user: &str, password_file: &Path) -> String {
    format!(
        r#"
[scopes."cache.read"]
allows = "Read keys under `cache:` (GET, MGET, SCAN, TTL...)."
denies = "Cannot write or delete keys, read other keys, or run admin commands."

[connections.cache]
plugin = "redis"
environment = "development"
[connections.cache.config]
nodes = ["{node}"]
username = "{user}"
password_file = {pw}
[connections.cache.roles.readonly]
description = "A Redis ACL user that can read keys under cache:, for the lease's lifetime."
max_ttl = "1h"
default_ttl = "10m"
scopes = ["cache.read"]
default_scopes = ["cache.read"]
[connections.cache.roles.readonly.config.scopes]
"cache.read" = ["~cache:*", "+@read", "+@connection"]
"#,
        node = node.replace(['\\', '"'], ""),
        user = user.replace('\\', "\\\\").replace('"', "\\\""),
        pw = toml_str(password_file)
    )
}

/// The database a `--mysql` DSN names (the one `my/readonly` may read).
fn mysql_database(dsn: &str) -> anyhow::Result<String> {
    let url = reqwest::Url::parse(dsn.trim()).map_err(|e| anyhow!("--mysql: not a URL like mysql://user:pw@host:3306/app: {e}"))?;
    if !matches!(url.scheme(), "mysql" | "mariadb") {
        return Err(anyhow!("--mysql: scheme `{}`; expected mysql:// or mariadb://", url.scheme()));
    }
    let db = url.path().trim_start_matches('/');
    if db.is_empty() || !db.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$') {
        return Err(anyhow!("--mysql: name the database the dev role may read in the DSN's path (letters, digits, `_`), e.g. mysql://root:pw@127.0.0.1:3306/app"));
    }
    Ok(db.to_owned())
}

/// The dev config's MySQL / MariaDB connection (`lessor dev --mysql DSN`):
/// role `my/readonly` grants `SELECT` on the DSN's database to each user.
pub fn mysql_text(dsn_file: &Path, database: &str) -> String {
    format!(
        r#"
[scopes."mysql.read"]
allows = "Read every table of the MySQL database `{database}`."
denies = "Cannot write, create objects, or change accounts."

[connections.my]
plugin = "mysql"
environment = "development"
[connections.my.config]
dsn_file = {dsn}
[connections.my.roles.readonly]
description = "A MySQL / MariaDB login that can read `{database}`, for the lease's lifetime."
max_ttl = "1h"
default_ttl = "10m"
scopes = ["mysql.read"]
default_scopes = ["mysql.read"]
[connections.my.roles.readonly.config]
database = "{database}"
[connections.my.roles.readonly.config.grants]
"mysql.read" = ["GRANT SELECT ON `{database}`.* TO {{{{name}}}}"]
"#,
        dsn = toml_str(dsn_file)
    )
}

/// How to type this binary from the current directory (`target/release/lessor`).
fn exe_display() -> String {
    std::env::current_exe()
        .ok()
        .and_then(|p| {
            let cwd = std::env::current_dir().ok()?;
            Some(p.strip_prefix(&cwd).map(|r| r.to_path_buf()).unwrap_or(p))
        })
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "lessor".into())
}

fn print_intro(addr: &str, dir: &Path, cfg: &Path, policies: &Path, pg: bool, redis: bool, my: bool) {
    let exe = exe_display();
    let addr_env = if addr == "127.0.0.1:8200" { String::new() } else { format!("export LESSOR_ADDR=http://{addr}\n  ") };
    println!(
        r#"
lessor dev is serving on http://{addr}
  store:  SQLite in {dir}/lessor.db     config: {cfg}
  issuer: built-in dev issuer           admin token: {dir}/admin.token
  audit:  {dir}/audit.log (check it: {exe} audit verify {dir}/audit.log)
  policies: {policies} (edit one and it reloads; test them: {exe} policy test {policies}/tests)

Get a credential, in another terminal:
  {addr_env}export LESSOR_JWT=$({exe} dev token --repo acme/api)
  {exe} creds pki/web --ttl 2m --out ./creds      # certificate + key, leased for 2 minutes
  {exe} creds token/orders --scope orders.read     # a scoped API token
  {exe} lease list                                 # every lease and its state{pg_line}{redis_line}{my_line}

Or with the Vault/OpenBao tools you already use (bao, vault, hvac, Vault Agent):
  export VAULT_ADDR=http://{addr}
  export VAULT_TOKEN=$(bao write -field=token auth/jwt/login role=dev jwt=$LESSOR_JWT)
  bao write pki/issue/web common_name=acme.svc.lessor.dev{pg_vault_line}

In 2 minutes the certificate's lease turns `expired` (its certificate has reached notAfter).
Revoke one early and its serial is on the CRL until then:
  {exe} lease revoke <lease id>
  curl -s http://{addr}/v1/pki/pki/web/crl | openssl crl -inform DER -noout -text
"#,
        dir = dir.display(),
        cfg = cfg.display(),
        policies = policies.display(),
        redis_line = if redis {
            format!("\n  {exe} creds cache/readonly --ttl 10m           # a Redis ACL user that can read cache:* keys")
        } else {
            String::new()
        },
        pg_vault_line = if pg { "\n  bao read database/creds/readonly" } else { "" },
        my_line = if my {
            format!("\n  {exe} creds my/readonly --ttl 10m               # a MySQL/MariaDB login that can read the database")
        } else {
            String::new()
        },
        pg_line = if pg {
            format!("\n  {exe} creds pg/readonly --ttl 10m               # a PostgreSQL login that can read the database")
        } else {
            String::new()
        },
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_dev_config_is_valid() {
        let text = config_text(Path::new(".lessor-dev"), Path::new("policies"), "127.0.0.1:8200".parse().unwrap());
        let cfg = Config::from_toml(&text).unwrap();
        cfg.validate().unwrap();
        assert_eq!(cfg.connections.len(), 2);
        let vault = cfg.vault_api.as_ref().unwrap();
        assert_eq!(vault.mounts.keys().collect::<Vec<_>>(), ["pki", "token"]);
        assert!(vault.auth.contains_key("jwt"));
    }

    #[test]
    fn dev_config_with_people_is_valid() {
        let mut text = config_text(Path::new(".lessor-dev"), Path::new("policies"), "127.0.0.1:8200".parse().unwrap());
        text.push_str(&people_section("http://127.0.0.1:8201", Path::new(".lessor-dev/dev-idp.client-secret")));
        let cfg = Config::from_toml(&text).unwrap();
        cfg.validate().unwrap();
        let people = cfg.people.as_ref().expect("the dev config signs people in");
        assert!(people.providers.contains_key("dev"), "provider `dev` in {:?}", people.providers.keys().collect::<Vec<_>>());
        // The section itself, as the contract spells it.
        let v: toml::Value = toml::from_str(&people_section("http://127.0.0.1:8201", Path::new("/d/s"))).unwrap();
        let p = &v["people"];
        assert_eq!(p["idle_timeout"].as_str(), Some("30m"));
        assert_eq!(p["absolute_timeout"].as_str(), Some("12h"));
        let dev = &p["providers"]["dev"];
        assert_eq!(dev["issuer"].as_str(), Some("http://127.0.0.1:8201"));
        assert_eq!(dev["client_id"].as_str(), Some("lessor"));
        assert_eq!(dev["client_secret_file"].as_str(), Some("/d/s"));
        assert_eq!(dev["scopes"].as_array().unwrap().len(), 4);
        for (k, c) in [("subject", "sub"), ("email", "email"), ("name", "name"), ("groups", "groups")] {
            assert_eq!(dev["claims"][k].as_str(), Some(c));
        }
    }

    #[test]
    fn dev_config_with_redis_is_valid() {
        let mut text = config_text(Path::new(".lessor-dev"), Path::new("policies"), "127.0.0.1:8200".parse().unwrap());
        text.push_str(&redis_text("redis://127.0.0.1:6379", "default", Path::new(".lessor-dev/redis.password")));
        let cfg = Config::from_toml(&text).unwrap();
        cfg.validate().unwrap();
        assert_eq!(cfg.connections["cache"].plugin, "redis");
    }

    #[test]
    fn dev_config_with_mysql_is_valid() {
        let mut text = config_text(Path::new(".lessor-dev"), Path::new("policies"), "127.0.0.1:8200".parse().unwrap());
        let db = mysql_database("mysql://root:pw@127.0.0.1:3306/app").unwrap();
        text.push_str(&mysql_text(Path::new(".lessor-dev/mysql.dsn"), &db));
        let cfg = Config::from_toml(&text).unwrap();
        cfg.validate().unwrap();
        assert_eq!(cfg.connections["my"].plugin, "mysql");
        for bad in ["mysql://root:pw@127.0.0.1:3306/", "postgres://x@h/app", "mysql://r@h/a`b"] {
            assert!(mysql_database(bad).is_err(), "{bad}");
        }
    }
}
