//! Node fan-out: one authenticated admin connection per listed node, and
//! running the same command on every node at once.
//!
//! ACL users live on the node that created them (replication and cluster
//! gossip do not carry them), so every operation goes to every node and
//! reports, per node, what happened. Connections are made on first use and
//! made again after an I/O error; each connect and each command is bounded
//! by the connection's `timeout`. Knows nothing of leases or scopes.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, IntoConnectionInfo, Value};
use secrecy::{ExposeSecret, SecretString};
use tokio::sync::{Mutex, OnceCell};

use crate::config::{AclSave, ConnectionConfig, NodeUrl};

/// Why a command failed on a node.
#[derive(Debug, Clone)]
pub enum NodeError {
    /// Not reachable, timed out, or the connection dropped.
    Unreachable(String),
    /// The admin's password or user was refused.
    Auth(String),
    /// The server answered with an error (`code` like `NOPERM`, `ERR`).
    Refused { code: String, detail: String },
}

impl NodeError {
    fn of(e: redis::RedisError) -> NodeError {
        use redis::ErrorKind;
        let detail = e.detail().unwrap_or("").to_owned();
        let code = e.code().unwrap_or("").to_owned();
        if matches!(code.as_str(), "WRONGPASS" | "NOAUTH") || e.kind() == ErrorKind::AuthenticationFailed {
            return NodeError::Auth(if detail.is_empty() { e.to_string() } else { detail });
        }
        if e.is_io_error() || e.is_timeout() || e.is_connection_dropped() || e.is_connection_refusal() || e.kind() == ErrorKind::Io {
            return NodeError::Unreachable(e.to_string());
        }
        if code.is_empty() {
            return NodeError::Refused { code: "ERR".into(), detail: e.to_string() };
        }
        NodeError::Refused { code, detail }
    }

    /// The server's error text, for matching ("No such user").
    pub fn detail(&self) -> &str {
        match self {
            NodeError::Unreachable(d) | NodeError::Auth(d) => d,
            NodeError::Refused { detail, .. } => detail,
        }
    }
}

impl std::fmt::Display for NodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NodeError::Unreachable(d) => write!(f, "unreachable: {d}"),
            NodeError::Auth(d) => write!(f, "authentication refused: {d}"),
            NodeError::Refused { code, detail } => write!(f, "{code} {detail}"),
        }
    }
}

/// One node, reached as the admin user with one version of its password.
pub struct Node {
    pub url: NodeUrl,
    client: Client,
    timeout: Duration,
    conn: Mutex<Option<MultiplexedConnection>>,
    /// Whether `ACL SAVE` follows changes here (decided once).
    save: OnceCell<bool>,
    acl_save: AclSave,
    /// Changes made here, numbered; see [`Node::save_acl`].
    changes: AtomicU64,
    /// The highest change number a finished `ACL SAVE` covers.
    saved: Mutex<u64>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node").field("url", &self.url.url).finish_non_exhaustive()
    }
}

impl Node {
    /// Builds the client (does not connect).
    pub fn new(cfg: &ConnectionConfig, url: &NodeUrl, password: &SecretString) -> Result<Node, String> {
        let info = url.url.as_str().into_connection_info().map_err(|e| format!("node {url}: {e}"))?;
        let settings = info
            .redis_settings()
            .clone()
            .set_username(&cfg.username)
            .set_password(password.expose_secret());
        let info = info.set_redis_settings(settings);
        let client = match (&cfg.tls_ca, url.tls) {
            (Some(ca), true) => Client::build_with_tls(
                info,
                redis::TlsCertificates { client_tls: None, root_cert: Some(ca.clone()) },
            ),
            _ => Client::open(info),
        }
        .map_err(|e| format!("node {url}: {e}"))?;
        Ok(Node {
            url: url.clone(),
            client,
            timeout: cfg.timeout,
            conn: Mutex::new(None),
            save: OnceCell::new(),
            acl_save: cfg.acl_save,
            changes: AtomicU64::new(0),
            saved: Mutex::new(0),
        })
    }

    async fn connection(&self) -> Result<MultiplexedConnection, NodeError> {
        let mut slot = self.conn.lock().await;
        if let Some(c) = slot.as_ref() {
            return Ok(c.clone());
        }
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout));
        let c = self
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(NodeError::of)?;
        *slot = Some(c.clone());
        Ok(c)
    }

    /// Runs one command; forgets the connection after an I/O error so the
    /// next command connects again.
    pub async fn run(&self, cmd: &redis::Cmd) -> Result<Value, NodeError> {
        let mut conn = self.connection().await?;
        match cmd.query_async::<Value>(&mut conn).await {
            Ok(v) => Ok(v),
            Err(e) => {
                let err = NodeError::of(e);
                if matches!(err, NodeError::Unreachable(_)) {
                    *self.conn.lock().await = None;
                }
                Err(err)
            }
        }
    }

    /// Whether changes on this node end with `ACL SAVE`: `acl_save`, or for
    /// `auto` whether `CONFIG GET aclfile` names a file (asked once).
    pub async fn save_decision(&self) -> Result<bool, NodeError> {
        match self.acl_save {
            AclSave::Never => Ok(false),
            AclSave::Always => Ok(true),
            AclSave::Auto => self
                .save
                .get_or_try_init(|| async {
                    let v = self.run(redis::cmd("CONFIG").arg("GET").arg("aclfile")).await?;
                    Ok::<bool, NodeError>(config_value(&v).is_some_and(|f| !f.is_empty()))
                })
                .await
                .copied(),
        }
    }

    /// `ACL SAVE` when this node keeps an ACL file (see
    /// [`Node::save_decision`]), after a change this task finished.
    ///
    /// `ACL SAVE` rewrites the whole file, so concurrent callers share one:
    /// each numbers its change, then waits its turn; a save that started
    /// after its change finished covers it. Every change numbered up to
    /// `target` had finished before `target` was read.
    pub async fn save_acl(&self) -> Result<(), NodeError> {
        if !self.save_decision().await? {
            return Ok(());
        }
        let mine = self.changes.fetch_add(1, Ordering::SeqCst).saturating_add(1);
        let mut saved = self.saved.lock().await;
        if *saved >= mine {
            return Ok(());
        }
        let target = self.changes.load(Ordering::SeqCst);
        self.run(redis::cmd("ACL").arg("SAVE")).await?;
        *saved = target;
        Ok(())
    }
}

/// The value of a one-item `CONFIG GET` answer (RESP2 array or RESP3 map).
fn config_value(v: &Value) -> Option<String> {
    match v {
        Value::Array(items) => items.get(1).and_then(as_string),
        Value::Map(pairs) => pairs.first().and_then(|(_, v)| as_string(v)),
        _ => None,
    }
}

/// A bulk or simple string as text.
pub fn as_string(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Value::SimpleString(s) => Some(s.clone()),
        Value::Okay => Some("OK".to_owned()),
        Value::VerbatimString { text, .. } => Some(text.clone()),
        _ => None,
    }
}

/// A list of strings (`ACL USERS`).
pub fn as_strings(v: &Value) -> Vec<String> {
    match v {
        Value::Array(items) | Value::Set(items) => items.iter().filter_map(as_string).collect(),
        _ => Vec::new(),
    }
}

/// An integer reply.
pub fn as_int(v: &Value) -> Option<i64> {
    match v {
        Value::Int(i) => Some(*i),
        _ => None,
    }
}

/// Runs `f` on every node at once; results in node order.
pub async fn on_all<'a, T, F, Fut>(nodes: &'a [Node], f: F) -> Vec<(&'a Node, Result<T, NodeError>)>
where
    F: Fn(&'a Node) -> Fut,
    Fut: std::future::Future<Output = Result<T, NodeError>> + 'a,
{
    let results = futures_util::future::join_all(nodes.iter().map(&f)).await;
    nodes.iter().zip(results).collect()
}

/// "a:1 (why), b:2 (why)" for the failed nodes.
pub fn failures<T>(results: &[(&Node, Result<T, NodeError>)]) -> Option<String> {
    let failed: Vec<String> = results
        .iter()
        .filter_map(|(n, r)| r.as_ref().err().map(|e| format!("{} ({e})", n.url)))
        .collect();
    (!failed.is_empty()).then(|| failed.join("; "))
}
