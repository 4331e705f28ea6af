//! Root credentials (admin DSNs) of a SQL connection, kept in versions:
//! which one new issuance uses, which one a lease was issued under, how a
//! version is installed or removed; and what every admin-DSN plugin does
//! around them: keeping the DSN's password out of messages, replacing it
//! in a DSN, checking a requested expiry, validating config without
//! reading secrets.
//!
//! Knows nothing of connections or pools: a plugin's root type (its pools,
//! target, connect options) implements [`VersionedRoot`]. Must not import:
//! sqlx, any plugin.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use lessor_plugin::{LeaseRef, PluginError, RoleSpec};
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use zeroize::Zeroizing;

/// A plugin's root credential: its version and DSN.
pub trait VersionedRoot {
    /// The core's version of it; `None` for the DSN of `dsn_file` /
    /// `dsn_env`.
    fn version(&self) -> Option<i64>;
    fn dsn(&self) -> &SecretString;
}

/// The installed root credentials.
struct Roots<R> {
    /// Used for new issuance (and for leases whose version is not installed).
    active: Option<Arc<R>>,
    /// Managed versions, active and retiring.
    versions: BTreeMap<i64, Arc<R>>,
}

/// A connection's root credentials. Swapped under a short lock that is
/// never held across an await: an operation takes the `Arc<R>` it needs and
/// finishes with it.
pub struct RootVersions<R> {
    connection: String,
    roots: RwLock<Roots<R>>,
}

impl<R: VersionedRoot> RootVersions<R> {
    /// No root yet (the core installs one), or the one from the config.
    pub fn new(connection: &str, active: Option<R>) -> Self {
        RootVersions {
            connection: connection.to_owned(),
            roots: RwLock::new(Roots { active: active.map(Arc::new), versions: BTreeMap::new() }),
        }
    }

    fn read(&self) -> RwLockReadGuard<'_, Roots<R>> {
        // Nothing panics while holding the lock; a poisoned one is still whole.
        self.roots.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Roots<R>> {
        self.roots.write().unwrap_or_else(|e| e.into_inner())
    }

    fn no_root(&self) -> PluginError {
        PluginError::Retryable(format!(
            "connection `{c}` has no active root credential: set one with `lessor connection set-secret {c}`",
            c = self.connection
        ))
    }

    /// The root credential new issuance uses.
    pub fn active(&self) -> Result<Arc<R>, PluginError> {
        self.read().active.clone().ok_or_else(|| self.no_root())
    }

    /// The active root, if any (for `Debug`).
    pub fn active_opt(&self) -> Option<Arc<R>> {
        self.read().active.clone()
    }

    /// The installed versions, in order (for `Debug`).
    pub fn version_numbers(&self) -> Vec<i64> {
        self.read().versions.keys().copied().collect()
    }

    /// The root a lease was issued under while it is installed, else the
    /// active one.
    pub fn for_lease(&self, lease: &LeaseRef) -> Result<Arc<R>, PluginError> {
        let roots = self.read();
        lease
            .root_version
            .and_then(|v| roots.versions.get(&v))
            .or(roots.active.as_ref())
            .cloned()
            .ok_or_else(|| self.no_root())
    }

    /// Installs `version` (kept as it is when its DSN did not change; else
    /// made by `make`, whose error completes "the DSN ..."), and makes it
    /// the active one or, when it was active, no longer.
    pub fn install(
        &self,
        version: i64,
        secret: SecretString,
        active: bool,
        make: impl FnOnce(SecretString) -> Result<R, String>,
    ) -> Result<(), PluginError> {
        let existing = self.read().versions.get(&version).cloned();
        let root = match existing {
            Some(r) if r.dsn().expose_secret() == secret.expose_secret() => r,
            _ => Arc::new(make(secret).map_err(|m| {
                PluginError::InvalidRequest(format!(
                    "root credential version {version} of connection `{}`: the DSN {m}",
                    self.connection
                ))
            })?),
        };
        let mut roots = self.write();
        roots.versions.insert(version, root.clone());
        if active {
            roots.active = Some(root);
        } else if roots.active.as_ref().is_some_and(|a| a.version() == Some(version)) {
            roots.active = None;
        }
        drop(roots);
        tracing::info!("root credential installed");
        Ok(())
    }

    /// Forgets a retiring version (its pools close once the last operation
    /// using them ends). Removing one that is not installed is `Ok`; the
    /// active one is refused.
    pub fn remove(&self, version: i64) -> Result<(), PluginError> {
        let mut roots = self.write();
        if roots.active.as_ref().is_some_and(|a| a.version() == Some(version)) {
            return Err(PluginError::InvalidRequest(format!(
                "root credential version {version} of connection `{}` is the active one; activate another before removing it",
                self.connection
            )));
        }
        let removed = roots.versions.remove(&version);
        drop(roots);
        if removed.is_some() {
            tracing::info!("root credential removed");
        }
        Ok(())
    }
}

/// `msg` with every non-empty `never_show` value replaced by `***`.
pub fn scrub_with(never_show: &[SecretString], mut msg: String) -> String {
    for s in never_show {
        let s = s.expose_secret();
        if !s.is_empty() && msg.contains(s) {
            msg = msg.replace(s, "***");
        }
    }
    msg
}

/// Scrubs the message of an error that may quote the server or a DSN.
pub fn scrub_error(never_show: &[SecretString], err: PluginError) -> PluginError {
    match err {
        PluginError::Retryable(m) => PluginError::Retryable(scrub_with(never_show, m)),
        PluginError::Permanent(m) => PluginError::Permanent(scrub_with(never_show, m)),
        PluginError::InvalidRequest(m) => PluginError::InvalidRequest(scrub_with(never_show, m)),
        PluginError::Misconfigured(m) => PluginError::Misconfigured(scrub_with(never_show, m)),
        other => other,
    }
}

/// A DSN's percent-decoded part, if it is UTF-8.
pub fn percent_decode(s: &str) -> Option<String> {
    percent_encoding::percent_decode_str(s).decode_utf8().ok().map(|c| c.into_owned())
}

/// Characters left as they are in a DSN's user, password and database.
const DSN_KEEP: &percent_encoding::AsciiSet =
    &percent_encoding::NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'.').remove(b'~');

/// `s` percent-encoded for a DSN's user, password or database.
pub fn dsn_part(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, DSN_KEEP).to_string()
}

/// `dsn` with its password replaced by `password` (in the userinfo; query
/// parameters named in `drop_params` are left out). Scheme, user, host,
/// port, path and the other parameters are kept as they were. The error
/// completes "the DSN ...".
pub fn dsn_with_password(
    dsn: &SecretString,
    password: &SecretString,
    drop_params: &[&str],
) -> Result<SecretString, String> {
    let url = url::Url::parse(dsn.expose_secret()).map_err(|e| format!("is not a URL: {e}"))?;
    let encoded = Zeroizing::new(dsn_part(password.expose_secret()));
    // Sized up front so the buffer holding the password is never reallocated
    // (and left behind unzeroized).
    let mut out = String::with_capacity(dsn.expose_secret().len() + encoded.len() + 8);
    out.push_str(url.scheme());
    out.push_str("://");
    out.push_str(url.username());
    out.push(':');
    out.push_str(&encoded);
    out.push('@');
    out.push_str(url.host_str().unwrap_or(""));
    if let Some(port) = url.port() {
        out.push(':');
        out.push_str(&port.to_string());
    }
    out.push_str(url.path());
    let out = SecretString::from(out);
    let dropped = |k: &str| drop_params.contains(&k);
    let has_dropped = url.query_pairs().any(|(k, _)| dropped(&k));
    let query = match url.query() {
        None => return Ok(out),
        Some(q) if !has_dropped => q.to_owned(),
        Some(_) => url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(url.query_pairs().filter(|(k, _)| !dropped(k)))
            .finish(),
    };
    if query.is_empty() {
        return Ok(out);
    }
    let mut with_query = String::with_capacity(out.expose_secret().len() + query.len() + 1);
    with_query.push_str(out.expose_secret());
    with_query.push('?');
    with_query.push_str(&query);
    Ok(SecretString::from(with_query))
}

/// RFC 3339, for messages and template values.
pub fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_else(|_| t.to_string())
}

/// `d` in whole seconds, human-readable.
pub fn humanize(d: Duration) -> String {
    humantime::format_duration(Duration::from_secs(d.as_secs())).to_string()
}

/// Checks the connection and role tables as a plugin's `build` does,
/// without reading `dsn_file` or `dsn_env` (they may exist only where lessor
/// runs) and without connecting: `connection` gets the table without them.
pub fn validate_config(
    connection: &Value,
    roles: &[RoleSpec],
    check_connection: impl FnOnce(Value) -> Result<(), PluginError>,
    check_role: impl Fn(&RoleSpec) -> Result<(), PluginError>,
) -> Result<(), String> {
    let mut connection = connection.clone();
    if let Some(t) = connection.as_object_mut() {
        if t.contains_key("dsn_file") && t.contains_key("dsn_env") {
            return Err("set either `dsn_file` or `dsn_env`, not both".into());
        }
        t.remove("dsn_file");
        t.remove("dsn_env");
    }
    check_connection(connection).map_err(|e| e.to_string())?;
    for spec in roles {
        check_role(spec).map_err(|e| e.to_string())?;
        if spec.max_ttl.is_zero() {
            return Err(format!("role `{}`: `max_ttl` is zero", spec.name));
        }
    }
    Ok(())
}

/// A configured role: its plugin table, parsed, and its `max_ttl`.
pub struct Role<C> {
    pub config: C,
    pub max_ttl: Duration,
}

/// The roles of a connection, each parsed by `parse`; a zero `max_ttl` is
/// refused.
pub fn parse_roles<C>(
    connection: &str,
    roles: &[RoleSpec],
    parse: impl Fn(&RoleSpec) -> Result<C, PluginError>,
) -> Result<BTreeMap<String, Role<C>>, PluginError> {
    let mut parsed = BTreeMap::new();
    for spec in roles {
        let config = parse(spec)?;
        if spec.max_ttl.is_zero() {
            return Err(PluginError::Misconfigured(format!("role `{connection}/{}`: `max_ttl` is zero", spec.name)));
        }
        parsed.insert(spec.name.clone(), Role { config, max_ttl: spec.max_ttl });
    }
    Ok(parsed)
}

/// The role called `name`, or an error listing the connection's roles.
pub fn find_role<'a, C>(connection: &str, roles: &'a BTreeMap<String, Role<C>>, name: &str) -> Result<&'a Role<C>, PluginError> {
    roles.get(name).ok_or_else(|| {
        PluginError::InvalidRequest(format!(
            "unknown role `{name}` (connection `{connection}` has: {})",
            roles.keys().cloned().collect::<Vec<_>>().join(", ")
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    struct R(Option<i64>, SecretString);
    impl VersionedRoot for R {
        fn version(&self) -> Option<i64> {
            self.0
        }
        fn dsn(&self) -> &SecretString {
            &self.1
        }
    }

    fn lease(v: Option<i64>) -> LeaseRef {
        LeaseRef {
            lease_id: lessor_plugin::LeaseId::new("lse_1"),
            role: "r".into(),
            handle: None,
            expires_at: OffsetDateTime::now_utc(),
            root_version: v,
        }
    }

    #[test]
    fn versions_pick_the_lease_s_root_else_the_active_one() {
        let roots = RootVersions::<R>::new("c", None);
        let e = roots.active().err().unwrap().to_string();
        assert!(e.contains("connection `c` has no active root credential"), "{e}");
        let make = |v: i64| move |s: SecretString| Ok(R(Some(v), s));
        roots.install(1, SecretString::from("a".to_owned()), true, make(1)).unwrap();
        roots.install(2, SecretString::from("b".to_owned()), false, make(2)).unwrap();
        assert_eq!(roots.active().unwrap().0, Some(1));
        assert_eq!(roots.for_lease(&lease(Some(2))).unwrap().0, Some(2));
        assert_eq!(roots.for_lease(&lease(Some(9))).unwrap().0, Some(1));
        assert!(roots.remove(1).is_err(), "the active one stays");
        roots.install(1, SecretString::from("a".to_owned()), false, make(1)).unwrap();
        assert!(roots.active().is_err(), "deactivated");
        roots.remove(1).unwrap();
        roots.remove(1).unwrap();
        assert_eq!(roots.version_numbers(), [2]);
        let e = roots
            .install(3, SecretString::from("c".to_owned()), true, |_| Err("is bad".into()))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("root credential version 3 of connection `c`: the DSN is bad"), "{e}");
    }

    #[test]
    fn scrubbing_and_dsn_parts() {
        let never = [SecretString::from("hunter2".to_owned()), SecretString::from(String::new())];
        assert_eq!(scrub_with(&never, "a hunter2 b".into()), "a *** b");
        assert_eq!(dsn_part("a b'@"), "a%20b%27%40");
    }
}
