//! Shared helpers: a throwaway server with an `app` database, plugin
//! construction over a DSN file, issuing, and logging in as issued roles.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use lessor_plugin::secrecy::{ExposeSecret, SecretString};
use lessor_plugin::{
    IssueRequest, Issued, LeaseId, LeaseRef, Plugin, PluginContext, PluginError,
    RoleSpec, Workload,
};
use lessor_postgres::testkit::TempPostgres;
use serde_json::{json, Value};
use sqlx::{Connection, PgConnection};
use time::OffsetDateTime;

pub const MAX_TTL: Duration = Duration::from_secs(3600);

/// A server with database `app`, tables `orders` and `invoices`, schema `work`.
pub struct Pg {
    pub pg: TempPostgres,
    /// Keeps DSN files alive as long as the server.
    files: Vec<tempfile::NamedTempFile>,
}

impl Pg {
    pub fn start() -> Pg {
        let pg = TempPostgres::start().expect("start PostgreSQL");
        pg.psql("postgres", "CREATE DATABASE app").unwrap();
        pg.psql(
            "app",
            "CREATE TABLE orders (id int); CREATE TABLE invoices (id int); \
             INSERT INTO orders VALUES (1); CREATE SCHEMA work; CREATE ROLE canary;",
        )
        .unwrap();
        Pg { pg, files: Vec::new() }
    }

    pub fn psql(&self, sql: &str) -> String {
        self.pg.psql("app", sql).unwrap()
    }

    /// The superuser's DSN on `app`.
    pub fn admin_dsn(&self) -> String {
        self.pg.dsn("postgres", self.pg.superuser_password(), "app")
    }

    /// Writes `dsn` to a file and returns the connection config using it.
    pub fn connection(&mut self, dsn: &str, extra: Value) -> Value {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        writeln!(f, "{dsn}").unwrap();
        let mut v = json!({"dsn_file": f.path(), "connect_timeout": "1s"});
        if let Value::Object(m) = extra {
            for (k, x) in m {
                v[k] = x;
            }
        }
        self.files.push(f);
        v
    }

    /// A plugin connected as the superuser with the standard roles.
    pub async fn plugin(&mut self, extra: Value) -> Arc<dyn Plugin> {
        let c = self.connection(&self.admin_dsn(), extra);
        build(c, roles()).await.unwrap()
    }

    /// A plugin with no `dsn_file` / `dsn_env`: its root credential is
    /// managed (installed with `install_root`).
    pub async fn managed(&self, roles: Vec<RoleSpec>) -> Arc<dyn Plugin> {
        build(json!({"connect_timeout": "1s"}), roles).await.unwrap()
    }

    /// Creates login role `name` with `password` and `attributes` (e.g.
    /// `CREATEROLE`) and returns its DSN on `app`.
    pub fn admin_role(&self, name: &str, password: &str, attributes: &str) -> String {
        self.psql(&format!("CREATE ROLE {name} LOGIN {attributes} PASSWORD '{password}'"));
        self.pg.dsn(name, password, "app")
    }

    pub fn role_exists(&self, name: &str) -> bool {
        self.psql(&format!("SELECT count(*) FROM pg_roles WHERE rolname = '{name}'")) == "1"
    }

    /// Names of roles whose name ends with `suffix`.
    pub fn roles_ending(&self, suffix: &str) -> Vec<String> {
        let out = self.psql(&format!(
            "SELECT rolname FROM pg_roles WHERE right(rolname, {}) = '{suffix}' ORDER BY 1",
            suffix.len()
        ));
        out.lines().map(str::to_owned).collect()
    }
}

pub async fn build(connection: Value, roles: Vec<RoleSpec>) -> Result<Arc<dyn Plugin>, PluginError> {
    let ctx = PluginContext::for_tests("pg", "https://lessor.test");
    lessor_postgres::build(ctx, connection, roles).await
}

pub fn role(name: &str, scopes: &[&str], config: Value) -> RoleSpec {
    RoleSpec {
        name: name.into(),
        scopes: scopes.iter().map(|s| s.to_string()).collect(),
        max_ttl: MAX_TTL,
        config,
    }
}

/// `orders` (read/write/create in `work`), `plain` (no scopes).
pub fn roles() -> Vec<RoleSpec> {
    vec![
        role(
            "orders",
            &["orders.read", "orders.write", "work.create"],
            json!({"grants": {
                "orders.read": ["GRANT SELECT ON orders TO {{name}}"],
                "orders.write": ["GRANT INSERT ON orders TO {{name}}"],
                "work.create": ["GRANT USAGE, CREATE ON SCHEMA work TO {{name}}"],
            }}),
        ),
        role("plain", &[], Value::Null),
    ]
}

pub fn workload() -> Workload {
    Workload {
        issuer: "https://ci.example".into(),
        subject: "repo:shop/orders-api:ref:refs/heads/main".into(),
        attributes: BTreeMap::from([("repository".to_string(), "shop/orders-api".to_string())]),
    }
}

/// A fresh lease id shaped like the core's (`lse_` + 32 hex).
pub fn lease_id() -> LeaseId {
    LeaseId::new(format!("lse_{}", hex::encode(rand::random::<[u8; 16]>())))
}

pub fn hex_of(id: &LeaseId) -> String {
    id.as_str().trim_start_matches("lse_").to_owned()
}

pub fn request(id: &LeaseId, role: &str, scopes: &[&str], ttl: Duration) -> IssueRequest {
    IssueRequest {
        lease_id: id.clone(),
        role: role.into(),
        workload: workload(),
        scopes: scopes.iter().map(|s| s.to_string()).collect(),
        expires_at: OffsetDateTime::now_utc() + ttl,
        params: serde_json::Map::new(),
    }
}

pub async fn issue(p: &dyn Plugin, id: &LeaseId, role: &str, scopes: &[&str]) -> Issued {
    p.issue(request(id, role, scopes, Duration::from_secs(600)))
        .await
        .unwrap()
}

pub fn lease(id: &LeaseId, role: &str, issued: Option<&Issued>) -> LeaseRef {
    LeaseRef {
        lease_id: id.clone(),
        role: role.into(),
        handle: issued.map(|i| i.handle.clone()),
        expires_at: issued
            .map(|i| i.expires_at)
            .unwrap_or_else(|| OffsetDateTime::now_utc() + Duration::from_secs(600)),
        root_version: issued.and_then(|i| i.root_version),
    }
}

pub fn username(i: &Issued) -> String {
    i.public["username"].as_str().unwrap().to_owned()
}

pub fn dsn(i: &Issued) -> String {
    i.secret["dsn"].expose_secret().to_owned()
}

/// Logs in with the issued DSN.
pub async fn login(i: &Issued) -> Result<PgConnection, sqlx::Error> {
    PgConnection::connect(&dsn(i)).await
}

/// The SQLSTATE of a failed query or login.
pub fn sqlstate(e: &sqlx::Error) -> String {
    match e {
        sqlx::Error::Database(d) => d.code().map(|c| c.into_owned()).unwrap_or_default(),
        other => format!("not a database error: {other}"),
    }
}

pub fn secret(s: &str) -> SecretString {
    SecretString::from(s.to_owned())
}

pub fn invalid(e: PluginError) -> String {
    match e {
        PluginError::InvalidRequest(m) => m,
        other => panic!("expected InvalidRequest, got {other:?}"),
    }
}

pub fn retryable(e: PluginError) -> String {
    match e {
        PluginError::Retryable(m) => m,
        other => panic!("expected Retryable, got {other:?}"),
    }
}

pub fn permanent(e: PluginError) -> String {
    match e {
        PluginError::Permanent(m) => m,
        other => panic!("expected Permanent, got {other:?}"),
    }
}

/// The plugin as its concrete type (for `Debug`).
pub fn concrete(connection: Value, roles: Vec<RoleSpec>) -> Result<lessor_postgres::PostgresPlugin, PluginError> {
    let ctx = PluginContext::for_tests("pg", "https://lessor.test");
    lessor_postgres::PostgresPlugin::new(ctx, connection, roles)
}
