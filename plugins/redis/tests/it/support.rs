//! Shared helpers: two throwaway servers, plugin construction over a
//! password file, issuing, and connecting as issued users.

use std::collections::BTreeMap;
use std::io::Write;
use std::time::Duration;

use lessor_plugin::secrecy::{ExposeSecret, SecretString};
use lessor_plugin::{IssueRequest, Issued, LeaseId, LeaseRef, PluginContext, PluginError, RoleSpec, Workload};
use lessor_redis::testkit::TempRedis;
use lessor_redis::RedisPlugin;
use serde_json::{json, Map, Value};
use time::OffsetDateTime;

pub const MAX_TTL: Duration = Duration::from_secs(3600);

/// Two independent servers with the same admin password (as an operator
/// sets one password on every node).
pub struct Pair {
    pub a: TempRedis,
    pub b: TempRedis,
    pub password: String,
    file: tempfile::NamedTempFile,
}

impl Pair {
    pub fn start() -> Pair {
        let a = TempRedis::start().expect("start redis-server");
        let password = a.admin_password().to_owned();
        let b = TempRedis::start_with_password(&password).expect("start redis-server");
        let mut file = tempfile::NamedTempFile::new().unwrap();
        writeln!(file, "{password}").unwrap();
        Pair { a, b, password, file }
    }

    pub fn connection(&self) -> Value {
        json!({"nodes": [self.a.url(), self.b.url()], "password_file": self.file.path(), "timeout": "1s"})
    }

    pub fn plugin_with(&self, connection: Value, roles: Vec<RoleSpec>) -> Result<RedisPlugin, PluginError> {
        RedisPlugin::new(ctx(), connection, roles)
    }

    pub fn plugin(&self) -> RedisPlugin {
        self.plugin_with(self.connection(), roles()).unwrap()
    }

    pub fn nodes(&self) -> [&TempRedis; 2] {
        [&self.a, &self.b]
    }

    /// Users of prefix `lessor_` on node `r`.
    pub async fn users(&self, r: &TempRedis) -> Vec<String> {
        let mut c = connect(r, "default", &self.password).await.unwrap();
        let all: Vec<String> = redis::cmd("ACL").arg("USERS").query_async(&mut c).await.unwrap();
        all.into_iter().filter(|u| u.starts_with("lessor_")).collect()
    }
}

pub fn ctx() -> PluginContext {
    PluginContext::for_tests("cache", "https://lessor.test")
}

pub fn role(name: &str, scopes: &[&str], config: Value) -> RoleSpec {
    RoleSpec { name: name.into(), scopes: scopes.iter().map(|s| s.to_string()).collect(), max_ttl: MAX_TTL, config }
}

/// Role `app`: `cache.read` reads `cache:*`, `cache.write` writes it,
/// `events.sub` subscribes to `events:*`.
pub fn roles() -> Vec<RoleSpec> {
    vec![role(
        "app",
        &["cache.read", "cache.write", "events.sub"],
        json!({"scopes": {
            "cache.read": "~cache:* +@read +@connection",
            "cache.write": ["~cache:*", "+@write"],
            "events.sub": ["&events:*", "+subscribe"],
        }}),
    )]
}

pub fn workload() -> Workload {
    Workload {
        issuer: "https://token.actions.githubusercontent.com".into(),
        subject: "repo:acme/shop:ref:refs/heads/main".into(),
        attributes: BTreeMap::from([("repository".into(), "acme/shop".into())]),
    }
}

pub fn lease_id() -> LeaseId {
    LeaseId::new(format!("lse_{}", hex::encode(rand::random::<[u8; 16]>())))
}

pub async fn issue(p: &RedisPlugin, id: &LeaseId, scopes: &[&str]) -> Result<Issued, PluginError> {
    use lessor_plugin::Plugin;
    p.issue(IssueRequest {
        lease_id: id.clone(),
        role: "app".into(),
        workload: workload(),
        scopes: scopes.iter().map(|s| s.to_string()).collect(),
        expires_at: OffsetDateTime::now_utc() + Duration::from_secs(600),
        params: Map::new(),
    })
    .await
}

pub fn lease(id: &LeaseId, handle: Option<Value>) -> LeaseRef {
    LeaseRef {
        lease_id: id.clone(),
        role: "app".into(),
        handle,
        expires_at: OffsetDateTime::now_utc() + Duration::from_secs(600),
        root_version: None,
    }
}

pub fn username(i: &Issued) -> String {
    i.public["username"].as_str().unwrap().to_owned()
}

pub fn password(i: &Issued) -> String {
    i.secret["password"].expose_secret().to_owned()
}

pub fn secret(s: &str) -> SecretString {
    SecretString::from(s.to_owned())
}

/// A connection to `r` authenticated as `user` (what a workload does).
pub async fn connect(r: &TempRedis, user: &str, password: &str) -> redis::RedisResult<redis::aio::MultiplexedConnection> {
    let client = redis::Client::open(r.url().as_str())?;
    let mut c = client.get_multiplexed_async_connection().await?;
    let _: () = redis::cmd("AUTH").arg(user).arg(password).query_async(&mut c).await?;
    Ok(c)
}

/// The server's error code of a failed command (`NOPERM`, `WRONGPASS`).
pub fn code(e: &redis::RedisError) -> String {
    e.code().unwrap_or("").to_owned()
}

/// `list_users` flattened over nodes.
#[async_trait::async_trait]
pub trait RedisPluginExt {
    async fn all_users(&self) -> Vec<String>;
}

#[async_trait::async_trait]
impl RedisPluginExt for RedisPlugin {
    async fn all_users(&self) -> Vec<String> {
        self.list_users().await.unwrap().into_iter().flat_map(|(_, u)| u).collect()
    }
}
