//! What every SQL plugin checks of an issue request before it touches the
//! server: the expiry within the role's `max_ttl`, no request parameters,
//! each scope one the role can grant (kept once, in order), and a lease id
//! with enough letters and digits to name an account after. Must not
//! import: sqlx, any plugin.

use lessor_plugin::expiry::check_expiry;
use lessor_plugin::{IssueRequest, PluginError};
use time::OffsetDateTime;

use crate::naming::{lease_hex, MIN_LEASE_HEX_LEN};
use crate::root::Role;

/// An issue request that passed [`check_issue`].
#[derive(Debug)]
pub struct Checked {
    /// The requested scopes, each once, in order.
    pub scopes: Vec<String>,
    /// The lease id's letters and digits ([`lease_hex`]).
    pub hex: String,
}

/// Checks `req` for `role` of connection `connection` of plugin `kind` at
/// `now` (the plugin's clock);
/// `grants(scope)` says whether the role can grant a scope, `account` what
/// the plugin names after the lease ("a role", "a user").
pub fn check_issue<C>(
    kind: &str,
    connection: &str,
    req: &IssueRequest,
    role: &Role<C>,
    grants: impl Fn(&str) -> bool,
    account: &str,
    now: OffsetDateTime,
) -> Result<Checked, PluginError> {
    check_expiry(now, req.expires_at, role.max_ttl)?;
    if let Some(k) = req.params.keys().next() {
        return Err(PluginError::InvalidRequest(format!(
            "the {kind} plugin takes no request parameters (got `{k}`)"
        )));
    }
    let mut scopes: Vec<String> = Vec::new();
    for s in &req.scopes {
        if !grants(s) {
            return Err(PluginError::InvalidRequest(format!(
                "scope `{s}` is not one of role `{connection}/{}`'s scopes",
                req.role
            )));
        }
        if !scopes.contains(s) {
            scopes.push(s.clone());
        }
    }
    let hex = lease_hex(&req.lease_id).ok_or_else(|| {
        PluginError::InvalidRequest(format!(
            "lease id `{}` has fewer than {MIN_LEASE_HEX_LEN} letters and digits to name {account} after",
            req.lease_id
        ))
    })?;
    Ok(Checked { scopes, hex })
}
