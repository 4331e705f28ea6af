//! Shared helpers: a throwaway server (MariaDB or MySQL 8) with database `app` and server role
//! `orders_reader`, plugin construction over a DSN file, issuing, and
//! logging in as issued users.

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use lessor_mysql::testkit::{Server, TempMysql};
use lessor_plugin::secrecy::ExposeSecret;
use lessor_plugin::{IssueRequest, Issued, LeaseId, Plugin, PluginContext, RoleSpec, Workload};
use serde_json::{json, Value};
use time::OffsetDateTime;

pub const MAX_TTL: Duration = Duration::from_secs(3600);

pub struct Db {
    pub db: TempMysql,
    files: Vec<tempfile::NamedTempFile>,
}

/// A test run once against MariaDB and once against MySQL 8:
/// `each_server! { async fn name(server) { ... } }` makes the tests
/// `name::mariadb` and `name::mysql8`, each calling the body with its
/// [`Server`].
macro_rules! each_server {
    ($(#[$attr:meta])* async fn $name:ident($server:ident) $body:block) => {
        $(#[$attr])*
        mod $name {
            #[allow(unused_imports)]
            use super::*;
            async fn case($server: lessor_mysql::testkit::Server) $body
            #[tokio::test]
            async fn mariadb() {
                case(lessor_mysql::testkit::Server::MariaDb).await
            }
            #[tokio::test]
            async fn mysql8() {
                case(lessor_mysql::testkit::Server::Mysql8).await
            }
        }
    };
}
pub(crate) use each_server;

impl Db {
    pub fn start(server: Server) -> Db {
        let db =
            TempMysql::start(server).unwrap_or_else(|e| panic!("starting {}: {e}", server.label()));
        // Made by `admin`, which thereby holds them WITH ADMIN OPTION (what
        // granting them to lease users needs).
        let pw = db.admin_password().to_owned();
        db.sql_as(
            "admin",
            &pw,
            "CREATE ROLE orders_reader; GRANT SELECT ON app.orders TO orders_reader; \
             CREATE ROLE invoices_reader; GRANT SELECT ON app.invoices TO invoices_reader",
        )
        .unwrap();
        Db {
            db,
            files: Vec::new(),
        }
    }

    pub fn sql(&self, sql: &str) -> String {
        self.db.sql(sql).unwrap()
    }

    /// Writes `dsn` to a file and returns the connection config using it.
    pub fn connection(&mut self, dsn: &str, extra: Value) -> Value {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        writeln!(f, "{dsn}").unwrap();
        let mut v = json!({"dsn_file": f.path(), "connect_timeout": "2s"});
        if let Value::Object(m) = extra {
            for (k, x) in m {
                v[k] = x;
            }
        }
        self.files.push(f);
        v
    }

    /// A plugin connected as `admin` with the standard roles.
    pub async fn plugin(&mut self) -> Arc<dyn Plugin> {
        let c = self.connection(&self.db.admin_dsn(), json!({}));
        build(c, roles()).await
    }

    /// A plugin connected as `admin` (one pooled connection, no TLS)
    /// through a [`CommandCounter`], with the standard roles.
    pub async fn plugin_behind_a_counter(&mut self) -> (CommandCounter, Arc<dyn Plugin>) {
        let proxy = CommandCounter::start(self.db.port()).await;
        let dsn = format!("mysql://admin:{}@127.0.0.1:{}/?ssl-mode=disabled", self.db.admin_password(), proxy.port);
        let c = self.connection(&dsn, json!({"pool_size": 1}));
        (proxy, build(c, roles()).await)
    }

    pub fn lease_users(&self) -> Vec<String> {
        self.db.users_with_prefix("lessor_").unwrap()
    }

    pub fn login(&self, issued: &Issued, sql: &str) -> Result<String, String> {
        self.db.sql_as(
            &username(issued),
            issued.secret["password"].expose_secret(),
            sql,
        )
    }
}

pub async fn build(connection: Value, roles: Vec<RoleSpec>) -> Arc<dyn Plugin> {
    try_build(connection, roles).await.unwrap()
}

pub async fn try_build(
    connection: Value,
    roles: Vec<RoleSpec>,
) -> Result<Arc<dyn Plugin>, lessor_plugin::PluginError> {
    let ctx = PluginContext::for_tests("my", "https://lessor.test");
    lessor_mysql::build(ctx, connection, roles).await
}

pub fn role(name: &str, scopes: &[&str], config: Value) -> RoleSpec {
    RoleSpec {
        name: name.into(),
        scopes: scopes.iter().map(|s| s.to_string()).collect(),
        max_ttl: MAX_TTL,
        config,
    }
}

/// `orders`: scope `orders.read` -> server role `orders_reader`.
pub fn roles() -> Vec<RoleSpec> {
    vec![
        role(
            "orders",
            &["orders.read"],
            json!({"roles": {"orders.read": ["orders_reader"]}, "database": "app"}),
        ),
        role("plain", &[], json!(null)),
    ]
}

pub fn lease_id() -> LeaseId {
    LeaseId::new(format!("lse_{}", hex::encode(rand::random::<[u8; 16]>())))
}

pub fn request(id: &LeaseId, role: &str, scopes: &[&str], ttl: Duration) -> IssueRequest {
    IssueRequest {
        lease_id: id.clone(),
        role: role.into(),
        workload: Workload {
            subject: "repo:acme/orders-api:ref:refs/heads/main".into(),
            ..Default::default()
        },
        scopes: scopes.iter().map(|s| s.to_string()).collect(),
        expires_at: OffsetDateTime::now_utc() + ttl,
        params: Default::default(),
    }
}

pub fn username(issued: &Issued) -> String {
    issued.public["username"].as_str().unwrap().to_owned()
}

/// A TCP proxy in front of a server that counts the commands its clients
/// send: MySQL packets with sequence id 0, one per round trip a client
/// starts (the handshake's packets carry higher ids). Connect to it with
/// `ssl-mode=disabled` so the packets stay readable.
pub struct CommandCounter {
    pub port: u16,
    commands: Arc<std::sync::atomic::AtomicUsize>,
}

impl CommandCounter {
    pub async fn start(server_port: u16) -> CommandCounter {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let commands = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = commands.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let server = tokio::net::TcpStream::connect(("127.0.0.1", server_port)).await.unwrap();
                let (from_client, to_client) = client.into_split();
                let (mut from_server, mut to_server) = server.into_split();
                let counted = counted.clone();
                tokio::spawn(async move {
                    use tokio::io::{AsyncReadExt, AsyncWriteExt};
                    let mut from_client = from_client;
                    loop {
                        let mut head = [0u8; 4];
                        if from_client.read_exact(&mut head).await.is_err() {
                            return;
                        }
                        let len = usize::from(head[0]) | usize::from(head[1]) << 8 | usize::from(head[2]) << 16;
                        let mut body = vec![0u8; len];
                        if from_client.read_exact(&mut body).await.is_err() {
                            return;
                        }
                        if head[3] == 0 {
                            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        }
                        if to_server.write_all(&head).await.is_err() || to_server.write_all(&body).await.is_err() {
                            return;
                        }
                    }
                });
                tokio::spawn(async move {
                    let mut to_client = to_client;
                    let _ = tokio::io::copy(&mut from_server, &mut to_client).await;
                });
            }
        });
        CommandCounter { port, commands }
    }

    /// Commands sent through the proxy so far.
    pub fn commands(&self) -> usize {
        self.commands.load(std::sync::atomic::Ordering::SeqCst)
    }
}
