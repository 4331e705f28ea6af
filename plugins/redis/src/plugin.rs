//! The Redis / Valkey plugin: the [`Plugin`] contract on top of
//! [`crate::acl`] (what to send) and [`crate::nodes`] (sending it to every
//! node). Owns the root-credential versions and the every-node rules: issue
//! succeeds only when every node created the user (else what was created is
//! deleted again and the error is retryable), revoke only when every node
//! confirmed the user gone.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use lessor_plugin::{
    Capabilities, IssueRequest, Issued, LeaseId, LeaseRef, Plugin, PluginContext, PluginError, Registration,
    RenewRequest, RoleSpec, RootCredentials, RootSecretSpec, Validation, VendorObject,
};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{json, Map, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use tracing::instrument;

use lessor_plugin::expiry::check_expiry;

use crate::acl;
use crate::config::{ConnectionConfig, RoleConfig};
use crate::nodes::{as_int, as_string, as_strings, failures, on_all, Node, NodeError};

/// The plugin kind in config (`plugin = "redis"`).
pub const KIND: &str = "redis";

/// How the core knows this plugin (see [`lessor_plugin::Registration`]).
pub fn registration() -> Registration {
    Registration {
        kind: KIND,
        sdk_version: lessor_plugin::SDK_VERSION,
        vault: lessor_plugin::VaultShape::Database,
        build: |ctx, connection, roles| Box::pin(build(ctx, connection, roles)),
        validate_config,
        ca_files: lessor_plugin::no_ca_files,
    }
}

/// Checks the connection and role tables as [`build`] does, without
/// reading `password_file`, `password_env` or `tls_ca_file` (they may exist
/// only where lessor runs) and without connecting.
pub fn validate_config(connection: &Value, roles: &[RoleSpec]) -> Result<(), String> {
    let mut connection = connection.clone();
    let mut has_ca_file = false;
    if let Some(t) = connection.as_object_mut() {
        if t.contains_key("password_file") && t.contains_key("password_env") {
            return Err("set either `password_file` or `password_env`, not both".into());
        }
        t.remove("password_file");
        t.remove("password_env");
        has_ca_file = t.remove("tls_ca_file").is_some();
    }
    let config = ConnectionConfig::from_json("", connection).map_err(|e| e.to_string())?;
    if has_ca_file && !config.nodes.iter().any(|n| n.tls) {
        return Err("`tls_ca_file` is set but no node is `rediss://`".into());
    }
    for spec in roles {
        RoleConfig::from_json("", spec).map_err(|e| e.to_string())?;
        if spec.max_ttl.is_zero() {
            return Err(format!("role `{}`: `max_ttl` is zero", spec.name));
        }
    }
    Ok(())
}

/// The core's lease ids are `lse_` and 32 lowercase hex digits
/// (`lessor::lease::new_lease_id`), so a user name's `_<32 hex>` suffix is
/// the whole id's letters and digits ([`acl::lease_hex`]) and maps back to it.
const CORE_LEASE_ID_PREFIX: &str = "lse_";

/// The lease id a user name of this connection derives from: `<prefix>_<readable>_<32
/// lowercase hex>` ([`acl::user_name`] from a core lease id), else `None`
/// (the admin, or anything else merely starting with the prefix).
fn lease_of(prefix: &str, name: &str) -> Option<LeaseId> {
    if !acl::is_ours(prefix, name) {
        return None;
    }
    let (_, hex) = name.rsplit_once('_')?;
    let ok = hex.len() == acl::LEASE_HEX_LEN && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    ok.then(|| LeaseId::new(format!("{CORE_LEASE_ID_PREFIX}{hex}")))
}

/// Builds the plugin for one connection. Does not connect: lessor starts
/// while Redis is down ([`Plugin::validate`] reports that).
pub async fn build(ctx: PluginContext, connection: Value, roles: Vec<RoleSpec>) -> Result<Arc<dyn Plugin>, PluginError> {
    Ok(Arc::new(RedisPlugin::new(ctx, connection, roles)?))
}

struct Role {
    max_ttl: Duration,
    config: RoleConfig,
}

/// One version of the admin password, with its connections to every node.
struct Root {
    version: Option<i64>,
    password: SecretString,
    nodes: Vec<Node>,
}

#[derive(Default)]
struct Roots {
    active: Option<Arc<Root>>,
    versions: BTreeMap<i64, Arc<Root>>,
}

/// Per-lease ACL users on every node of one Redis / Valkey deployment.
pub struct RedisPlugin {
    connection: String,
    config: ConnectionConfig,
    roles: BTreeMap<String, Role>,
    roots: RwLock<Roots>,
    /// What "now" is (the context's clock): expiry checks read it.
    clock: lessor_plugin::Clock,
}

impl std::fmt::Debug for RedisPlugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisPlugin")
            .field("connection", &self.connection)
            .field("nodes", &self.config.nodes.iter().map(|n| n.url.as_str()).collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_else(|_| t.to_string())
}

/// Characters left as they are in the issued URL's user and password (RFC
/// 3986 unreserved).
const URL_KEEP: &percent_encoding::AsciiSet =
    &percent_encoding::NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

/// `redis[s]://user:password@host:port` with user and password encoded.
fn user_url(node: &crate::config::NodeUrl, user: &str, password: &SecretString) -> SecretString {
    let enc = |s: &str| percent_encoding::utf8_percent_encode(s, URL_KEEP).to_string();
    let scheme = if node.tls { "rediss" } else { "redis" };
    SecretString::from(format!("{scheme}://{}:{}@{node}", enc(user), enc(password.expose_secret())))
}

/// Whether a node's error says the user does not exist.
fn no_such_user(e: &NodeError) -> bool {
    e.detail().to_ascii_lowercase().contains("no such user")
}

/// The commands the admin must be allowed to run, as `ACL DRYRUN` takes them.
const NEEDED: &[&[&str]] = &[
    &["ACL", "SETUSER", "lessor_probe"],
    &["ACL", "DELUSER", "lessor_probe"],
    &["ACL", "USERS"],
    &["CLIENT", "KILL", "USER", "lessor_probe"],
];

impl RedisPlugin {
    pub fn new(ctx: PluginContext, connection: Value, roles: Vec<RoleSpec>) -> Result<Self, PluginError> {
        let config = ConnectionConfig::from_json(&ctx.connection, connection)?;
        let mut parsed = BTreeMap::new();
        for spec in &roles {
            let rc = RoleConfig::from_json(&ctx.connection, spec)?;
            parsed.insert(spec.name.clone(), Role { max_ttl: spec.max_ttl, config: rc });
        }
        let mut plugin = RedisPlugin { connection: ctx.connection, config, roles: parsed, roots: RwLock::default(), clock: ctx.clock };
        if let Some((pw, source)) = plugin.config.password.clone() {
            let root = plugin
                .root(None, pw)
                .map_err(|m| PluginError::Misconfigured(format!("connection `{}`: {source}: {m}", plugin.connection)))?;
            plugin.roots = RwLock::new(Roots { active: Some(Arc::new(root)), versions: BTreeMap::new() });
        }
        Ok(plugin)
    }

    fn root(&self, version: Option<i64>, password: SecretString) -> Result<Root, String> {
        let nodes = self
            .config
            .nodes
            .iter()
            .map(|u| Node::new(&self.config, u, &password))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Root { version, password, nodes })
    }

    fn active_root(&self) -> Result<Arc<Root>, PluginError> {
        let roots = self.roots.read().unwrap_or_else(|p| p.into_inner());
        roots.active.clone().ok_or_else(|| {
            PluginError::Retryable(format!(
                "connection `{}` has no active root credential: set one with `lessor connection set-secret {}`",
                self.connection, self.connection
            ))
        })
    }

    fn role(&self, name: &str) -> Result<&Role, PluginError> {
        self.roles.get(name).ok_or_else(|| {
            PluginError::InvalidRequest(format!("connection `{}` has no role `{name}`", self.connection))
        })
    }

    /// The error for an operation that failed on some nodes: retryable when
    /// any failure is one time or an operator can fix (unreachable,
    /// authentication, permission), else permanent.
    fn node_failure(&self, what: &str, results_failed: String, any_transient: bool) -> PluginError {
        let msg = format!("connection `{}`: {what} failed on {results_failed}", self.connection);
        if any_transient {
            PluginError::Retryable(msg)
        } else {
            PluginError::Permanent(msg)
        }
    }

    /// Who the admin is on every node, its server version, and whether it
    /// may run what lessor needs. Writes nothing.
    async fn check(&self, root: &Root) -> Result<Validation, PluginError> {
        let results = on_all(&root.nodes, |n| async move {
            let who = n.run(redis::cmd("ACL").arg("WHOAMI")).await?;
            let who = as_string(&who).unwrap_or_default();
            let info = n.run(redis::cmd("INFO").arg("server")).await?;
            let info = as_string(&info).unwrap_or_default();
            let field = |k: &str| {
                info.lines().find_map(|l| l.strip_prefix(k).and_then(|r| r.strip_prefix(':'))).map(|v| v.trim().to_owned())
            };
            let server = field("server_name").unwrap_or_else(|| "redis".to_owned());
            let version = field("valkey_version").or_else(|| field("redis_version")).unwrap_or_default();
            let mut denied = Vec::new();
            let mut unchecked = None;
            let mut needed: Vec<&[&str]> = NEEDED.to_vec();
            if n.save_decision().await? {
                needed.push(&["ACL", "SAVE"]);
            }
            for cmd in needed {
                let mut c = redis::cmd("ACL");
                c.arg("DRYRUN").arg(&who).arg(cmd);
                match n.run(&c).await {
                    Ok(v) => {
                        let ans = as_string(&v).unwrap_or_default();
                        if ans != "OK" {
                            denied.push(cmd.iter().take(2).copied().collect::<Vec<_>>().join(" "));
                        }
                    }
                    Err(NodeError::Refused { detail, .. }) => {
                        unchecked = Some(detail);
                        break;
                    }
                    Err(e) => return Err(e),
                }
            }
            Ok((who, server, version, denied, unchecked))
        })
        .await;
        let transient = results.iter().any(|(_, r)| matches!(r, Err(NodeError::Unreachable(_))));
        if let Some(f) = failures(&results) {
            let msg = format!("connection `{}`: validating failed on {f}", self.connection);
            return Err(if transient { PluginError::Retryable(msg) } else { PluginError::Misconfigured(msg) });
        }
        let mut identity = String::new();
        let mut versions = Vec::new();
        let mut warnings = Vec::new();
        for (node, r) in results {
            let Ok((who, server, version, denied, unchecked)) = r else { continue };
            if identity.is_empty() {
                identity = who.clone();
            } else if identity != who {
                return Err(PluginError::Misconfigured(format!(
                    "connection `{}`: node {} authenticates as `{who}`, node {} as `{identity}`",
                    self.connection, node.url, root.nodes[0].url
                )));
            }
            if !denied.is_empty() {
                return Err(PluginError::Misconfigured(format!(
                    "connection `{}`: user `{who}` may not run {} on node {} (grant e.g. `+acl|setuser +acl|deluser +acl|users +acl|save +client|kill`)",
                    self.connection,
                    denied.join(", "),
                    node.url
                )));
            }
            if let Some(why) = unchecked {
                warnings.push(format!("node {}: cannot check the admin's permissions (ACL DRYRUN: {why})", node.url));
            }
            versions.push(format!("{} {server} {version}", node.url));
        }
        if self.config.nodes.iter().any(|n| !n.tls) && self.config.nodes.iter().any(|n| n.host != "127.0.0.1" && n.host != "::1" && n.host != "localhost") {
            warnings.push("TLS is off for some remote node: passwords cross the network unencrypted".into());
        }
        let mut details = BTreeMap::new();
        details.insert("nodes".to_owned(), versions.join(", "));
        if let Some(v) = root.version {
            details.insert("root_version".to_owned(), v.to_string());
        }
        Ok(Validation { identity, details, warnings })
    }

    /// Deletes `name` on the given nodes and ends its connections there;
    /// "no such user" counts as done. Then `ACL SAVE` where configured.
    async fn delete_user(node: &Node, name: &str) -> Result<bool, NodeError> {
        let deleted = node.run(redis::cmd("ACL").arg("DELUSER").arg(name)).await?;
        // DELUSER ends the user's connections itself; CLIENT KILL USER is
        // the belt to those braces (and covers servers that do not).
        match node.run(redis::cmd("CLIENT").arg("KILL").arg("USER").arg(name)).await {
            Ok(_) => {}
            Err(e) if no_such_user(&e) => {}
            Err(e) => return Err(e),
        }
        Ok(as_int(&deleted).unwrap_or(0) > 0)
    }

    /// The lease's users on one node: the handle's name when known, else
    /// every user of this prefix ending with the lease's hex.
    async fn lease_users(&self, node: &Node, hint: Option<&str>, hex: &str) -> Result<Vec<String>, NodeError> {
        if let Some(n) = hint {
            return Ok(vec![n.to_owned()]);
        }
        let all = node.run(redis::cmd("ACL").arg("USERS")).await?;
        Ok(as_strings(&all).into_iter().filter(|u| acl::is_lease_user(&self.config.user_prefix, hex, u)).collect())
    }

    fn hint<'a>(&self, lease: &'a LeaseRef, hex: &str) -> Option<&'a str> {
        lease
            .handle
            .as_ref()
            .and_then(|h| h.get("user"))
            .and_then(Value::as_str)
            .filter(|n| acl::is_lease_user(&self.config.user_prefix, hex, n))
    }

    /// Every user this connection made, per node (for tests and
    /// [`Plugin::list_objects`]): `(node, users)`. Never the admin user.
    pub async fn list_users(&self) -> Result<Vec<(String, Vec<String>)>, PluginError> {
        let root = self.active_root()?;
        let prefix = self.config.user_prefix.clone();
        let admin = self.config.username.as_str();
        let results = on_all(&root.nodes, |n| {
            let prefix = prefix.clone();
            async move {
                let all = n.run(redis::cmd("ACL").arg("USERS")).await?;
                Ok(as_strings(&all)
                    .into_iter()
                    .filter(|u| acl::is_ours(&prefix, u) && *u != admin)
                    .collect::<Vec<_>>())
            }
        })
        .await;
        if let Some(f) = failures(&results) {
            return Err(PluginError::Retryable(format!("listing users failed on {f}")));
        }
        Ok(results.into_iter().filter_map(|(n, r)| r.ok().map(|u| (n.url.to_string(), u))).collect())
    }
}

#[async_trait]
impl Plugin for RedisPlugin {
    fn kind(&self) -> &str {
        KIND
    }

    /// Revoking deletes the ACL user on every node (its connections end
    /// with it): it stops working when `revoke` returns.
    fn capabilities(&self) -> Capabilities {
        Capabilities { can_renew: true, revocation: lessor_plugin::Revocation::Immediate }
    }

    #[instrument(skip_all, fields(connection = %self.connection))]
    async fn validate(&self) -> Result<Validation, PluginError> {
        let root = self.active_root()?;
        self.check(&root).await
    }

    #[instrument(skip_all, fields(connection = %self.connection, role = %req.role, lease_id = %req.lease_id))]
    async fn issue(&self, req: IssueRequest) -> Result<Issued, PluginError> {
        let role = self.role(&req.role)?;
        check_expiry((self.clock)(), req.expires_at, role.max_ttl)?;
        if let Some(k) = req.params.keys().next() {
            return Err(PluginError::InvalidRequest(format!("the redis plugin takes no request parameters (got `{k}`)")));
        }
        let mut scopes: Vec<&String> = Vec::new();
        for s in &req.scopes {
            if !role.config.scopes.contains_key(s) {
                return Err(PluginError::InvalidRequest(format!(
                    "scope `{s}` is not one of role `{}/{}`'s scopes",
                    self.connection, req.role
                )));
            }
            if !scopes.contains(&s) {
                scopes.push(s);
            }
        }
        let hex = acl::lease_hex(&req.lease_id).ok_or_else(|| {
            PluginError::InvalidRequest(format!(
                "lease id `{}` has fewer than {} letters and digits to name a user after",
                req.lease_id,
                acl::MIN_LEASE_HEX_LEN
            ))
        })?;
        let name = acl::user_name(&self.config.user_prefix, &req.role, &req.workload, &hex);
        let root = self.active_root()?;
        let password = acl::new_password().map_err(PluginError::Retryable)?;
        let hash = acl::password_hash(&password);
        let rules = scopes.iter().flat_map(|s| role.config.scopes.get(*s).into_iter().flatten());
        let args = acl::setuser_args(&name, &hash, rules);

        let created = on_all(&root.nodes, |n| {
            let args = &args;
            async move {
                n.run(redis::cmd("ACL").arg("SETUSER").arg(args)).await?;
                n.save_acl().await
            }
        })
        .await;
        if let Some(f) = failures(&created) {
            // Some nodes may have the user: take it away again everywhere it
            // may be, so that a failed issue leaves nothing behind.
            let transient = created
                .iter()
                .any(|(_, r)| matches!(r, Err(NodeError::Unreachable(_) | NodeError::Auth(_))));
            let cleanup = on_all(&root.nodes, |n| {
                let name = &name;
                async move {
                    Self::delete_user(n, name).await?;
                    n.save_acl().await
                }
            })
            .await;
            let left = failures(&cleanup)
                .map(|c| format!("; removing it again failed on {c} (the lease stays pending and is revoked later)"))
                .unwrap_or_default();
            // An unreachable node is worth retrying; a refusal is permanent
            // unless cleanup itself could not finish.
            return Err(self.node_failure(&format!("creating user `{name}`"), format!("{f}{left}"), transient || !left.is_empty()));
        }
        tracing::debug!(redis_user = %name, nodes = root.nodes.len(), scopes = scopes.len(), "user created");

        let first = &self.config.nodes[0];
        let mut public = Map::new();
        public.insert("username".into(), json!(name));
        public.insert("host".into(), json!(first.host));
        public.insert("port".into(), json!(first.port));
        public.insert("tls".into(), json!(first.tls));
        public.insert("nodes".into(), json!(self.config.nodes.iter().map(|n| n.to_string()).collect::<Vec<_>>()));
        public.insert("expires_at".into(), json!(rfc3339(req.expires_at)));
        let mut secret = BTreeMap::new();
        secret.insert("url".to_owned(), user_url(first, &name, &password));
        secret.insert("password".to_owned(), password);
        Ok(Issued {
            handle: json!({ "user": name }),
            public,
            secret,
            expires_at: req.expires_at,
            root_version: root.version,
        })
    }

    /// Redis ACL users have no expiry of their own: renewing checks the user
    /// still exists on every node and moves nothing at the vendor.
    #[instrument(skip_all, fields(connection = %self.connection, role = %req.lease.role, lease_id = %req.lease.lease_id))]
    async fn renew(&self, req: RenewRequest) -> Result<OffsetDateTime, PluginError> {
        let lease = &req.lease;
        let role = self.role(&lease.role)?;
        check_expiry((self.clock)(), req.expires_at, role.max_ttl)?;
        let gone = || PluginError::Permanent(format!("no user of lease `{}` exists any more", lease.lease_id));
        let hex = acl::lease_hex(&lease.lease_id).ok_or_else(gone)?;
        let hint = self.hint(lease, &hex);
        let root = self.active_root()?;
        let hex = hex.as_str();
        let found = on_all(&root.nodes, |n| async move { self.lease_users(n, hint, hex).await.map(|u| (n, u)) }).await;
        if let Some(f) = failures(&found) {
            return Err(PluginError::Retryable(format!("connection `{}`: renewing failed on {f}", self.connection)));
        }
        for (node, r) in &found {
            let Ok((_, users)) = r else { continue };
            let Some(name) = users.first() else { return Err(gone()) };
            let v = node.run(redis::cmd("ACL").arg("GETUSER").arg(name)).await.map_err(|e| {
                PluginError::Retryable(format!("connection `{}`: renewing failed on {} ({e})", self.connection, node.url))
            })?;
            if matches!(v, redis::Value::Nil) {
                return Err(PluginError::Permanent(format!("user `{name}` no longer exists on node {}", node.url)));
            }
        }
        Ok(req.expires_at)
    }

    /// Deletes the lease's user on every node (`ACL DELUSER`, `CLIENT KILL
    /// USER`, `ACL SAVE` where configured, also when the user was gone
    /// already). Done only when every node confirmed; "no such user" counts
    /// as confirmed once the node's ACL file is saved.
    #[instrument(skip_all, fields(connection = %self.connection, role = %lease.role, lease_id = %lease.lease_id))]
    async fn revoke(&self, lease: &LeaseRef) -> Result<(), PluginError> {
        let Some(hex) = acl::lease_hex(&lease.lease_id) else {
            return Ok(());
        };
        let hint = self.hint(lease, &hex);
        let root = self.active_root()?;
        let results = on_all(&root.nodes, |n| {
            let hex = &hex;
            async move {
                let users = self.lease_users(n, hint, hex).await?;
                let mut deleted = 0usize;
                for u in &users {
                    // Past the call's deadline, start no further deletion:
                    // the node counts as not done and the retry finishes it.
                    lessor_plugin::call::check(&format!("deleting `{u}`")).map_err(|e| NodeError::Unreachable(e.to_string()))?;
                    if Self::delete_user(n, u).await? {
                        deleted += 1;
                    }
                }
                // Saved even when nothing was left to delete: a revoke is
                // retried after a failed `ACL SAVE` (or after lessor died
                // between `DELUSER` and the save), and then finds the user
                // gone from memory but still in the ACL file, where a restart
                // of the node would bring it back.
                n.save_acl().await?;
                Ok(deleted)
            }
        })
        .await;
        if let Some(f) = failures(&results) {
            let done = results.iter().filter(|(_, r)| r.is_ok()).count();
            return Err(PluginError::Retryable(format!(
                "connection `{}`: revoking lease `{}` is done on {done} of {} nodes; failed on {f}",
                self.connection,
                lease.lease_id,
                results.len()
            )));
        }
        let deleted: usize = results.iter().filter_map(|(_, r)| r.as_ref().ok()).sum();
        tracing::debug!(deleted, nodes = results.len(), "lease users deleted");
        Ok(())
    }

    /// Users named like this connection's leases (`<prefix>_<readable>_<32
    /// hex>`, see [`lease_of`]) on any node, each mapped back to its lease
    /// id, in name order (byte order), at most `limit` after `after`. A user
    /// present on only some nodes is listed (revoking it deletes it
    /// everywhere). Every node must answer: a node that cannot be read
    /// fails the listing (retryable), since a user there would be missed.
    #[instrument(skip_all, fields(connection = %self.connection))]
    async fn list_objects(&self, after: Option<&str>, limit: u32) -> Result<Vec<VendorObject>, PluginError> {
        let prefix = self.config.user_prefix.as_str();
        let names: std::collections::BTreeSet<String> = self
            .list_users()
            .await?
            .into_iter()
            .flat_map(|(_, users)| users)
            .filter(|u| after.is_none_or(|a| u.as_str() > a))
            .collect();
        Ok(names
            .into_iter()
            .filter_map(|name| lease_of(prefix, &name).map(|id| VendorObject { lease_id: Some(id), name }))
            .take(usize::try_from(limit).unwrap_or(usize::MAX))
            .collect())
    }

    fn root_credentials(&self) -> Option<&dyn RootCredentials> {
        Some(self)
    }
}

/// The admin password is managed by the core (see the crate docs).
#[async_trait]
impl RootCredentials for RedisPlugin {
    fn spec(&self) -> RootSecretSpec {
        RootSecretSpec {
            describes: "the password of the connection's admin ACL user (`username`), the same on every node".into(),
            can_rotate: true,
        }
    }

    #[instrument(skip_all, fields(connection = %self.connection))]
    async fn validate_root(&self, candidate: &SecretString) -> Result<Validation, PluginError> {
        let root = self.root(None, candidate.clone()).map_err(PluginError::InvalidRequest)?;
        self.check(&root).await
    }

    #[instrument(skip_all, fields(connection = %self.connection, version = version))]
    async fn install_root(&self, version: i64, secret: SecretString, active: bool) -> Result<(), PluginError> {
        let existing = self.roots.read().unwrap_or_else(|p| p.into_inner()).versions.get(&version).cloned();
        let root = match existing {
            Some(r) if r.password.expose_secret() == secret.expose_secret() => r,
            _ => Arc::new(self.root(Some(version), secret).map_err(|m| {
                PluginError::InvalidRequest(format!("root credential version {version} of connection `{}`: {m}", self.connection))
            })?),
        };
        let mut roots = self.roots.write().unwrap_or_else(|p| p.into_inner());
        roots.versions.insert(version, root.clone());
        if active {
            roots.active = Some(root);
        } else if roots.active.as_ref().is_some_and(|a| a.version == Some(version)) {
            roots.active = None;
        }
        Ok(())
    }

    async fn remove_root(&self, version: i64) -> Result<(), PluginError> {
        let mut roots = self.roots.write().unwrap_or_else(|p| p.into_inner());
        if roots.active.as_ref().is_some_and(|a| a.version == Some(version)) {
            return Err(PluginError::InvalidRequest(format!(
                "root credential version {version} of connection `{}` is active; activate another first",
                self.connection
            )));
        }
        roots.versions.remove(&version);
        Ok(())
    }

    /// Adds a new random password to the admin user on every node, then
    /// removes the old one everywhere. A node that fails the first step
    /// undoes it on the others (the old password keeps working); one that
    /// fails the second keeps accepting the old password too (logged).
    #[instrument(skip_all, fields(connection = %self.connection))]
    async fn rotate_root(&self) -> Result<SecretString, PluginError> {
        let root = self.active_root()?;
        let user = self.config.username.as_str();
        let password = acl::new_password().map_err(PluginError::Retryable)?;
        let add = acl::password_hash(&password);
        let undo = acl::password_unhash(&password);
        let old = acl::password_unhash(&root.password);
        let added = set_admin_rule(&root.nodes, user, &add).await;
        if let Some(f) = failures(&added) {
            let _ = set_admin_rule(&root.nodes, user, &undo).await;
            return Err(PluginError::Retryable(format!(
                "connection `{}`: adding the new password of `{user}` failed on {f}; the old one still works everywhere",
                self.connection
            )));
        }
        if old != undo {
            let removed = set_admin_rule(&root.nodes, user, &old).await;
            if let Some(f) = failures(&removed) {
                tracing::warn!(nodes = %f, "the previous admin password still works on these nodes");
            }
        }
        tracing::info!(redis_user = %user, "root password rotated; the previous one no longer works");
        Ok(password)
    }
}

/// `ACL SETUSER <user> <rule>` then `ACL SAVE` (where configured) on every
/// node.
async fn set_admin_rule<'a>(nodes: &'a [Node], user: &'a str, rule: &'a str) -> Vec<(&'a Node, Result<(), NodeError>)> {
    on_all(nodes, |n| async move {
        n.run(redis::cmd("ACL").arg("SETUSER").arg(user).arg(rule)).await?;
        n.save_acl().await
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listed_names_map_back_to_core_lease_ids() {
        let id = LeaseId::new("lse_0123456789abcdef0123456789abcdef");
        let w = lessor_plugin::Workload::default();
        let name = acl::user_name("lessor", "app", &w, &acl::lease_hex(&id).unwrap());
        assert_eq!(lease_of("lessor", &name), Some(id));
        assert_eq!(lease_of("lessor", "lessor_admin"), None);
        assert_eq!(lease_of("other", &name), None);
        assert_eq!(lease_of("lessor", "lessor_app_0123456789ABCDEF0123456789abcdef"), None);
        assert_eq!(lease_of("lessor", "lessor_app_0123abcd"), None);
    }

    #[test]
    fn user_urls_encode_and_keep_tls() {
        let n = crate::config::parse_node("rediss://h:7000").unwrap();
        let u = user_url(&n, "lessor_a b", &SecretString::from("p@ss/w"));
        assert_eq!(u.expose_secret(), "rediss://lessor_a%20b:p%40ss%2Fw@h:7000");
    }

    /// Expiry checks read the context's clock, not the system's.
    #[tokio::test]
    async fn expiry_is_checked_on_the_contexts_clock() {
        let role = RoleSpec { name: "app".into(), scopes: vec![], max_ttl: Duration::from_secs(3600), config: json!({}) };
        let conn = json!({"nodes": ["redis://127.0.0.1:1"]});
        lessor_plugin::conformance::expiry_uses_the_context_clock("app", |ctx| RedisPlugin::new(ctx, conn, vec![role]).unwrap()).await.unwrap();
    }

    #[test]
    fn the_save_setting_is_carried() {
        use crate::config::AclSave;
        let c = ConnectionConfig::from_json("c", json!({"nodes": ["redis://h"], "acl_save": "never"})).unwrap();
        assert_eq!(c.acl_save, AclSave::Never);
    }
}
