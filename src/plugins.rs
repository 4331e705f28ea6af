//! The plugin registry: builds each configured connection into an
//! `Arc<dyn Plugin>` and lists its roles. Plugins are linked in at compile
//! time and known only through their [`Registration`]s, listed once in
//! [`registrations`]: the rest of the core never names a plugin kind. A
//! connection naming an unknown plugin kind is a config error.
//!
//! Must not import: http, lease, connections (the engine calls plugins).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use lessor_plugin::{Document, DocumentSpec, Plugin, PluginContext, Registration, RoleSpec};

use crate::config::{Config, RoleConfig, ScopeDoc};
use crate::policy::RoleInfo;
use crate::seal::Seal;
use crate::store::state::ConnectionState;
use crate::store::Store;

/// Every plugin this build links, each registered by its own crate. Adding a
/// vendor is a dependency in Cargo.toml and one line here; nothing else in
/// the core changes. (A link-time registry such as `inventory` would save
/// this line but not the dependency, and hides the list from readers.)
pub fn registrations() -> Vec<Registration> {
    vec![
        lessor_pki::registration(),
        lessor_token::registration(),
        lessor_postgres::registration(),
        lessor_redis::registration(),
        lessor_external::registration(),
        lessor_mysql::registration(),
    ]
}

/// The registration of plugin `kind`, or a precise error listing the known
/// ones. A registration built against another SDK version is refused.
pub fn registration(kind: &str) -> Result<Registration, String> {
    let all = registrations();
    let Some(r) = all.iter().find(|r| r.kind == kind) else {
        let known: Vec<&str> = all.iter().map(|r| r.kind).collect();
        return Err(format!("unknown plugin `{kind}` (this build has: {})", known.join(", ")));
    };
    if r.sdk_version != lessor_plugin::SDK_VERSION {
        return Err(format!(
            "plugin `{kind}` was built for plugin SDK {} but lessor speaks {}",
            r.sdk_version,
            lessor_plugin::SDK_VERSION
        ));
    }
    Ok(*r)
}

/// Each connection's role specs as its plugin sees them.
fn role_specs(conn: &crate::config::ConnectionConfig) -> Result<Vec<RoleSpec>, String> {
    conn.roles
        .iter()
        .map(|(rname, r)| {
            Ok(RoleSpec { name: rname.clone(), scopes: r.scopes.clone(), max_ttl: r.max_ttl, config: to_json(&r.config)? })
        })
        .collect()
}

/// `lessor check`: every connection names a known plugin and its plugin
/// accepts its config, without building anything.
pub fn check_config(cfg: &Config) -> Result<(), String> {
    for (cname, conn) in &cfg.connections {
        let reg = registration(&conn.plugin).map_err(|e| format!("connection `{cname}`: {e}"))?;
        let specs = role_specs(conn).map_err(|e| format!("connection `{cname}`: {e}"))?;
        (reg.validate_config)(&to_json(&conn.config)?, &specs).map_err(|e| format!("connection `{cname}` ({}): {e}", conn.plugin))?;
    }
    Ok(())
}

/// CA certificate files the configured roles name, `(connection/role,
/// path)`, as each plugin reports them: what a TLS client CA must not be.
pub fn ca_files(cfg: &Config) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    for (cname, conn) in &cfg.connections {
        let reg = registration(&conn.plugin).map_err(|e| format!("connection `{cname}`: {e}"))?;
        let specs = role_specs(conn)?;
        for (role, path) in (reg.ca_files)(&to_json(&conn.config)?, &specs) {
            out.push((format!("{cname}/{role}"), path));
        }
    }
    Ok(out)
}

/// One requestable role.
pub struct Role {
    /// `connection/role`.
    pub name: String,
    pub connection: String,
    /// Name within the connection.
    pub short: String,
    pub kind: String,
    pub plugin: Arc<dyn Plugin>,
    pub cfg: RoleConfig,
    pub info: RoleInfo,
}

impl Role {
    pub fn max_ttl(&self) -> Duration {
        self.cfg.max_ttl
    }
}

/// All connections and roles.
pub struct Catalog {
    pub roles: BTreeMap<String, Arc<Role>>,
    pub connections: BTreeMap<String, Arc<dyn Plugin>>,
    pub scopes: BTreeMap<String, ScopeDoc>,
}

/// Policy's view of every configured role (no plugin needed).
pub fn role_infos(cfg: &Config) -> Vec<RoleInfo> {
    let mut out = Vec::new();
    for (cname, conn) in &cfg.connections {
        for (rname, role) in &conn.roles {
            out.push(RoleInfo {
                name: format!("{cname}/{rname}"),
                connection: cname.clone(),
                plugin: conn.plugin.clone(),
                environment: role.environment.clone().unwrap_or_else(|| conn.environment.clone()),
                scopes: role.scopes.clone(),
                max_ttl_seconds: role.max_ttl.as_secs() as i64,
            });
        }
    }
    out
}

fn to_json(t: &toml::Table) -> Result<serde_json::Value, String> {
    serde_json::to_value(t).map_err(|e| e.to_string())
}

impl Catalog {
    /// Builds every connection's plugin with its state namespace in the store
    /// and the shared HTTP client.
    pub async fn build(cfg: &Config, store: Arc<dyn Store>, seal: Arc<Seal>, http: reqwest::Client) -> Result<Catalog, String> {
        Catalog::build_with(cfg, http, |conn| Arc::new(ConnectionState::new(store.clone(), seal.clone(), conn))).await
    }

    /// Builds every connection's plugin with the state `state_for` gives it
    /// (`lessor check --connections` uses throwaway memory state).
    pub async fn build_with(
        cfg: &Config,
        http: reqwest::Client,
        state_for: impl Fn(&str) -> Arc<dyn lessor_plugin::StateStore>,
    ) -> Result<Catalog, String> {
        let infos: BTreeMap<String, RoleInfo> = role_infos(cfg).into_iter().map(|r| (r.name.clone(), r)).collect();
        let mut roles = BTreeMap::new();
        let mut connections = BTreeMap::new();
        for (cname, conn) in &cfg.connections {
            let ctx = PluginContext {
                connection: cname.clone(),
                state: state_for(cname),
                public_url: cfg.public_url(),
                http: http.clone(),
                clock: lessor_plugin::system_clock(),
                call_timeout: cfg.leases.call_timeout(),
            };
            let specs = role_specs(conn)?;
            let connection_cfg = to_json(&conn.config)?;
            let reg = registration(&conn.plugin).map_err(|e| format!("connection `{cname}`: {e}"))?;
            let plugin = (reg.build)(ctx, connection_cfg, specs)
                .await
                .map_err(|e| format!("connection `{cname}` ({}): {e}", conn.plugin))?;
            for (rname, rc) in &conn.roles {
                let name = format!("{cname}/{rname}");
                let info = infos.get(&name).cloned().ok_or_else(|| format!("role `{name}` vanished"))?;
                roles.insert(
                    name.clone(),
                    Arc::new(Role {
                        name,
                        connection: cname.clone(),
                        short: rname.clone(),
                        kind: conn.plugin.clone(),
                        plugin: plugin.clone(),
                        cfg: rc.clone(),
                        info,
                    }),
                );
            }
            connections.insert(cname.clone(), plugin);
        }
        Ok(Catalog { roles, connections, scopes: cfg.scopes.clone() })
    }

    /// Each role's CA chain (PEM), by role, from every plugin that serves
    /// the [`lessor_plugin::DOC_CA`] document: what a client CA must not be.
    pub async fn own_cas(&self) -> Result<Vec<(String, String)>, String> {
        let mut out = Vec::new();
        for r in self.roles.values().filter(|r| serves(r.plugin.as_ref(), lessor_plugin::DOC_CA, true)) {
            let doc = r
                .plugin
                .document(Some(r.short.as_str()), lessor_plugin::DOC_CA)
                .await
                .map_err(|e| format!("role `{}`: CA: {e}", r.name))?;
            if let Some(d) = doc {
                out.push((r.name.clone(), String::from_utf8_lossy(&d.body).into_owned()));
            }
        }
        Ok(out)
    }

    /// Stops every connection's background work (external plugin
    /// processes); called once, at shutdown.
    pub async fn shutdown(&self) {
        futures::future::join_all(self.connections.values().map(|p| p.shutdown())).await;
    }

    pub fn role(&self, name: &str) -> Option<&Arc<Role>> {
        self.roles.get(name)
    }

    /// Finds the role that serves per-role document `doc`, by full name, or
    /// by its short name when that is unique among the roles whose plugins
    /// serve `doc` (the `/v1/pki/{role}/...` URLs certificates embed).
    pub fn find_serving(&self, doc: &str, name: &str) -> Option<&Arc<Role>> {
        let serving = |r: &&Arc<Role>| serves(r.plugin.as_ref(), doc, true);
        if let Some(r) = self.roles.get(name).filter(serving) {
            return Some(r);
        }
        let mut it = self.roles.values().filter(serving).filter(|r| r.short == name);
        match (it.next(), it.next()) {
            (Some(r), None) => Some(r),
            _ => None,
        }
    }

    /// Document `name` of a connection (`role: None`) or of one of its
    /// roles, if its plugin declares and serves it.
    pub async fn document(
        &self,
        connection: &str,
        role: Option<&str>,
        name: &str,
    ) -> Result<Option<Document>, lessor_plugin::PluginError> {
        let Some(plugin) = self.connections.get(connection) else {
            return Ok(None);
        };
        if !serves(plugin.as_ref(), name, role.is_some()) {
            return Ok(None);
        }
        if let Some(r) = role {
            if !self.roles.contains_key(&format!("{connection}/{r}")) {
                return Ok(None);
            }
        }
        plugin.document(role, name).await
    }
}

/// Whether `plugin` declares document `name` (per role or per connection).
pub fn serves(plugin: &dyn Plugin, name: &str, per_role: bool) -> bool {
    plugin.documents().iter().any(|d: &DocumentSpec| d.name == name && d.per_role == per_role)
}
