//! The plugin registry: builds each configured connection into an
//! `Arc<dyn Plugin>` and lists its roles. Plugins are linked in at compile
//! time; a connection naming an unknown plugin kind is a config error.
//!
//! Must not import: http.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use lessor_plugin::{Plugin, PluginContext, RoleSpec};

use crate::config::{Config, RoleConfig, ScopeDoc};
use crate::policy::RoleInfo;
use crate::seal::Seal;
use crate::store::state::ConnectionState;
use crate::store::Store;

/// Plugin kinds this build knows.
pub const KINDS: &[&str] = &["pki", "token", "postgres", "mysql"];

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
    /// Builds every connection's plugin with its state namespace in the store.
    pub async fn build(cfg: &Config, store: Arc<dyn Store>, seal: Arc<Seal>) -> Result<Catalog, String> {
        Catalog::build_with(cfg, |conn| Arc::new(ConnectionState::new(store.clone(), seal.clone(), conn))).await
    }

    /// Builds every connection's plugin with the state `state_for` gives it
    /// (`lessor check --connections` uses throwaway memory state).
    pub async fn build_with(
        cfg: &Config,
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
            };
            let specs = conn
                .roles
                .iter()
                .map(|(rname, r)| {
                    Ok(RoleSpec {
                        name: rname.clone(),
                        scopes: r.scopes.clone(),
                        max_ttl: r.max_ttl,
                        config: to_json(&r.config)?,
                    })
                })
                .collect::<Result<Vec<_>, String>>()?;
            let connection_cfg = to_json(&conn.config)?;
            let plugin: Arc<dyn Plugin> = match conn.plugin.as_str() {
                "pki" => lessor_pki::build(ctx, connection_cfg, specs).await,
                "token" => lessor_token::build(ctx, connection_cfg, specs).await,
                "postgres" => lessor_postgres::build(ctx, connection_cfg, specs).await,
                "mysql" => lessor_mysql::build(ctx, connection_cfg, specs).await,
                other => {
                    return Err(format!(
                        "connection `{cname}`: unknown plugin `{other}` (this build has: {})",
                        KINDS.join(", ")
                    ))
                }
            }
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

    /// Each pki role's CA chain (PEM), by role: what a client CA must not be.
    pub async fn pki_cas(&self) -> Result<Vec<(String, String)>, String> {
        let mut out = Vec::new();
        for r in self.roles.values().filter(|r| r.kind == "pki") {
            let doc = r.plugin.document(Some(r.short.as_str()), "ca").await.map_err(|e| format!("role `{}`: CA: {e}", r.name))?;
            if let Some(d) = doc {
                out.push((r.name.clone(), String::from_utf8_lossy(&d.body).into_owned()));
            }
        }
        Ok(out)
    }

    pub fn role(&self, name: &str) -> Option<&Arc<Role>> {
        self.roles.get(name)
    }

    /// Finds a role by full name, or by its short name when that is unique
    /// among connections of `kind`.
    pub fn find(&self, kind: &str, name: &str) -> Option<&Arc<Role>> {
        if let Some(r) = self.roles.get(name).filter(|r| r.kind == kind) {
            return Some(r);
        }
        let mut it = self.roles.values().filter(|r| r.kind == kind && r.short == name);
        match (it.next(), it.next()) {
            (Some(r), None) => Some(r),
            _ => None,
        }
    }
}
