//! Managed root credentials: each connection's root secret in versions
//! (candidate -> active -> retiring -> retired), encrypted in the store
//! ([`kek`]), verified by the plugin before it may switch, approved by a
//! second person for production, activated and rolled back atomically
//! across replicas, rotated by lessor itself where the plugin can.
//!
//! Installing: the plugin holds the active version (new issuance) and the
//! retiring ones (revocation of leases issued under them). Before each issue
//! on a managed connection the active version id is read from the store
//! (one indexed lookup; skipped with an exclusive store while no switch
//! began since the last install) and installed if it changed, so replicas
//! switch together; a background poll does the same and retires versions
//! whose overlap ended.
//!
//! After it is saved a secret is never returned: views carry its version,
//! fingerprint (the first 8 hex digits of HMAC-SHA256 under a key derived
//! from the seal key: it tells versions apart and matches a secret one
//! holds, and reveals no character of it), who set it and when.
//!
//! Who may act is Cedar's decision for workloads and people (admin
//! credentials may do everything). Approvals are stricter than any policy:
//! only a person or an admin credential approves (a workload never does);
//! never whoever set the candidate, compared by provider#subject and by
//! email; all admin credentials together count as one person,
//! "break-glass", flagged in the record and the audit. A version records
//! who set and approved it as [`Recorded`] text: `provider#subject <email>`
//! for a person, `issuer#subject` for a workload, the credential's name
//! for an admin (with ` [break-glass]` on an approval).
//!
//! Must not import: http, lease, sqlx (the lease engine follows root
//! credentials, not the other way round).
//!
//! Why one file: set, verify, approve, activate, rollback, rotate and install
//! are one state machine over the same version records and plugin handles; the
//! key handling is apart (`kek.rs`).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use lessor_plugin::{Plugin, PluginError, Validation};
use secrecy::{ExposeSecret, SecretString};
use time::OffsetDateTime;
use tokio::sync::watch;

use crate::audit::{Audit, AuditError, Event};
use crate::config::{Config, ExpectedIdentity};
use crate::policy::{Action, ConnectionInfo, PersonInfo, PolicyEngine, PolicyError, Principal, RequestContext, Target};
use crate::principal::{Actor, Person, RequestMeta};
use crate::store::{SecretState, SecretSwitch, SecretVersion, Store, StoreError};
use crate::telemetry::metrics;

pub mod kek;

use kek::{Kek, KekError};

/// Longest secret accepted (a DSN, an API key, a PEM key).
pub const MAX_SECRET_BYTES: usize = 64 * 1024;
/// Warn this long before `review_by`.
pub const EXPIRY_WARNING: Duration = Duration::from_secs(7 * 24 * 3600);

#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    #[error("connection `{0}` does not exist")]
    NotFound(String),
    #[error("connection `{0}` has no managed root credential (its plugin cannot take one from lessor)")]
    NotManaged(String),
    #[error("{message}")]
    BadRequest { field: &'static str, message: String },
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    Conflict(String),
    #[error("connection `{connection}`: {message}")]
    Plugin { connection: String, message: String },
    #[error(transparent)]
    Kek(#[from] KekError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Policy(#[from] PolicyError),
    #[error(transparent)]
    Audit(#[from] AuditError),
}

/// What the core knows of one connection.
#[derive(Debug, Clone)]
pub struct ConnectionMeta {
    pub info: ConnectionInfo,
    pub review_by: Option<time::Date>,
    pub expected: Option<ExpectedIdentity>,
    pub rotate_after: Option<Duration>,
    pub overlap: Duration,
    /// Roles (`connection/role`) that use it.
    pub roles: Vec<String>,
}

impl ConnectionMeta {
    /// Every connection of `cfg`.
    pub fn all(cfg: &Config) -> BTreeMap<String, ConnectionMeta> {
        cfg.connections
            .iter()
            .map(|(name, c)| {
                let meta = ConnectionMeta {
                    info: ConnectionInfo {
                        name: name.clone(),
                        plugin: c.plugin.clone(),
                        environment: c.environment.clone(),
                        owner: c.owner.clone().unwrap_or_default(),
                    },
                    review_by: c.review_by,
                    expected: c.expected_identity.clone(),
                    rotate_after: c.rotate_after,
                    overlap: c.overlap,
                    roles: c.roles.keys().map(|r| format!("{name}/{r}")).collect(),
                };
                (name.clone(), meta)
            })
            .collect()
    }

    pub fn is_production(&self) -> bool {
        self.info.environment == "production"
    }
}

/// A person as Cedar sees them (`Lessor::Person`).
pub fn person_info(p: &Person) -> PersonInfo {
    PersonInfo {
        provider: p.provider.clone(),
        issuer: p.issuer.clone(),
        subject: p.subject.clone(),
        email: p.email.clone(),
        name: p.name.clone(),
        groups: p.groups.clone(),
    }
}

/// Marks an approval made with an admin credential in `approved_by`.
pub const BREAK_GLASS_MARK: &str = " [break-glass]";

/// Who set or approved a version, as its record names them (the
/// `set_by` / `approved_by` text, read back for the approval checks).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    /// `provider#subject`, `issuer#subject` or the admin credential's name.
    pub id: String,
    /// A person's (lower-cased) email; `None` for others and for people
    /// whose provider gave none.
    pub email: Option<String>,
    /// An admin credential (`token:...`, `cert:...`): all of them count as
    /// one person, break-glass.
    pub admin: bool,
    /// An approval made with an admin credential.
    pub break_glass: bool,
}

impl Recorded {
    /// How a version records `actor` (set, approve, activate).
    pub fn of(actor: &Actor) -> String {
        match actor {
            Actor::Person(p) if !p.email.is_empty() => format!("{} <{}>", p.id(), p.email),
            other => other.name(),
        }
    }

    /// Reads a record back. Admin credentials are named `token:<name>` and
    /// `cert:<subject>` by the HTTP layer; a person's email is the trailing
    /// `<...>`.
    pub fn parse(text: &str) -> Recorded {
        let (rest, break_glass) = match text.strip_suffix(BREAK_GLASS_MARK) {
            Some(r) => (r, true),
            None => (text, false),
        };
        let admin = break_glass || rest.starts_with("token:") || rest.starts_with("cert:");
        let (id, email) = match rest.strip_suffix('>').and_then(|r| r.rsplit_once(" <")) {
            Some((id, email)) if !admin && !email.is_empty() => (id, Some(email.to_lowercase())),
            _ => (rest, None),
        };
        Recorded { id: id.to_owned(), email, admin, break_glass }
    }
}

/// The result of `verify`, as stored with the version.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct Verification {
    pub ok: bool,
    /// One line: "connected as `lessor_admin` (database=app)" or what is wrong.
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub details: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// A connection with its versions and warnings (no secret).
#[derive(Debug, Clone)]
pub struct ConnectionView {
    pub meta: ConnectionMeta,
    pub managed: bool,
    pub can_rotate: bool,
    pub describes: Option<String>,
    pub versions: Vec<SecretVersion>,
    pub warnings: Vec<String>,
}

impl ConnectionView {
    pub fn active(&self) -> Option<&SecretVersion> {
        self.versions.iter().find(|v| v.state == SecretState::Active)
    }

    /// Age of the active version (since it was activated).
    pub fn age(&self, now: OffsetDateTime) -> Option<time::Duration> {
        self.active().map(|v| now - v.activated_at.unwrap_or(v.set_at))
    }

    pub fn last_verified(&self) -> Option<OffsetDateTime> {
        self.versions.iter().filter_map(|v| v.verified_at).max()
    }
}

/// Versions the plugin holds now.
#[derive(Debug, Default, Clone)]
struct Installed {
    active: Option<i64>,
    all: BTreeSet<i64>,
    /// The switch count ([`RootCredentials::switches`]) when the last
    /// successful sync began; `None` before one.
    synced_at: Option<u64>,
}

/// The root credential service (one per process).
pub struct RootCredentials {
    store: Arc<dyn Store>,
    kek: Arc<Kek>,
    plugins: BTreeMap<String, Arc<dyn Plugin>>,
    meta: BTreeMap<String, ConnectionMeta>,
    policy: Arc<PolicyEngine>,
    audit: Audit,
    fingerprint_key: ring::hmac::Key,
    installed: std::sync::Mutex<HashMap<String, Installed>>,
    /// Switches of an active version this process has begun, counted
    /// before each is written: with an exclusive store (SQLite) no other
    /// process switches, so a sync that began after the latest one installed
    /// what the store says, and an issue need not ask.
    switches: std::sync::atomic::AtomicU64,
    /// Serializes installs per process (they are rare).
    sync_lock: tokio::sync::Mutex<()>,
    /// Bound on one `install_root` / `remove_root` (`leases.call_timeout`).
    call_timeout: Duration,
    /// Bound on one `validate_root` / `rotate_root` (`leases.root_timeout`).
    root_timeout: Duration,
}

/// Purpose label of the fingerprint key ([`crate::seal::Seal::derive_hmac_key`]).
pub const FINGERPRINT_KEY_PURPOSE: &str = "root-secret-fingerprint-v1";

/// A root secret's fingerprint: the first 8 hex digits of its HMAC-SHA256
/// under the deployment's fingerprint key. Never a character of the secret.
pub fn fingerprint(key: &ring::hmac::Key, secret: &str) -> String {
    let tag = ring::hmac::sign(key, secret.as_bytes());
    hex::encode(&tag.as_ref()[..4])
}

fn plugin_msg(e: &PluginError) -> String {
    match e {
        PluginError::Retryable(m) => format!("vendor unavailable: {m}"),
        other => other.to_string(),
    }
}

/// Checks what the plugin says against what the connection expects.
pub fn check_identity(expected: Option<&ExpectedIdentity>, v: &Validation) -> Verification {
    let mut problems = Vec::new();
    if let Some(e) = expected {
        if e.identity != v.identity {
            problems.push(format!("connected as `{}`, expected `{}`", v.identity, e.identity));
        }
        for (k, want) in &e.details {
            match v.details.get(k) {
                Some(got) if got == want => {}
                Some(got) => problems.push(format!("{k} `{got}`, expected `{want}`")),
                None => problems.push(format!("{k} not reported by the plugin, expected `{want}`")),
            }
        }
    }
    let details: Vec<String> = v.details.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let message = if problems.is_empty() {
        let mut m = format!("connected as `{}`", v.identity);
        if !details.is_empty() {
            m.push_str(&format!(" ({})", details.join(", ")));
        }
        if expected.is_none() {
            m.push_str("; no expected_identity configured to compare with");
        }
        m
    } else {
        problems.join("; ")
    };
    Verification {
        ok: problems.is_empty(),
        message,
        identity: Some(v.identity.clone()),
        details: v.details.clone(),
        warnings: v.warnings.clone(),
    }
}

impl RootCredentials {
    pub fn new(
        store: Arc<dyn Store>,
        kek: Arc<Kek>,
        plugins: BTreeMap<String, Arc<dyn Plugin>>,
        meta: BTreeMap<String, ConnectionMeta>,
        policy: Arc<PolicyEngine>,
        audit: Audit,
        fingerprint_key: ring::hmac::Key,
    ) -> RootCredentials {
        RootCredentials {
            store,
            kek,
            plugins,
            meta,
            policy,
            audit,
            fingerprint_key,
            installed: std::sync::Mutex::new(HashMap::new()),
            switches: std::sync::atomic::AtomicU64::new(0),
            sync_lock: tokio::sync::Mutex::new(()),
            call_timeout: crate::config::LeaseSettings::default().call_timeout(),
            root_timeout: crate::config::DEFAULT_ROOT_TIMEOUT,
        }
    }

    /// The bounds on plugin calls: `install_root` / `remove_root` by
    /// `call_timeout` (`leases.call_timeout`), `validate_root` /
    /// `rotate_root` by `root_timeout` (`leases.root_timeout`).
    pub fn with_timeouts(mut self, call_timeout: Duration, root_timeout: Duration) -> Self {
        self.call_timeout = call_timeout;
        self.root_timeout = root_timeout;
        self
    }

    /// `op` of `conn` past its bound, as a plugin error naming the setting.
    fn elapsed(conn: &str, e: lessor_plugin::call::Elapsed, setting: &str) -> PluginError {
        PluginError::Retryable(format!("connection `{conn}`: {e} ({setting}); the plugin was told to stop"))
    }

    /// At start: refuses a store whose root credentials were written under
    /// another KEK (naming the id it expected), then installs every managed
    /// connection's active and retiring versions. Nothing is served before.
    pub async fn start(&self) -> Result<(), ConnError> {
        for v in self.store.secret_versions(None).await? {
            if v.state != SecretState::Retired && v.kek_id != self.kek.id() {
                return Err(KekError::WrongKey {
                    connection: v.connection,
                    version: v.version,
                    stored: v.kek_id,
                    configured: self.kek.id(),
                }
                .into());
            }
        }
        for name in self.managed() {
            self.sync(&name).await?;
        }
        self.update_metrics().await;
        Ok(())
    }

    /// Connections whose plugin takes a managed root credential.
    pub fn managed(&self) -> Vec<String> {
        self.plugins.iter().filter(|(_, p)| p.root_credentials().is_some()).map(|(n, _)| n.clone()).collect()
    }

    fn is_managed(&self, conn: &str) -> bool {
        self.plugins.get(conn).is_some_and(|p| p.root_credentials().is_some())
    }

    fn installed(&self, conn: &str) -> Installed {
        self.installed.lock().map(|m| m.get(conn).cloned().unwrap_or_default()).unwrap_or_default()
    }

    /// Before an issue: makes sure the plugin uses the store's active
    /// version (one indexed lookup when nothing changed; none with an
    /// exclusive store when no switch began since the last sync).
    pub async fn ensure_current(&self, conn: &str) -> Result<(), ConnError> {
        if !self.is_managed(conn) {
            return Ok(());
        }
        if self.store.exclusive()
            && self.installed(conn).synced_at == Some(self.switches.load(std::sync::atomic::Ordering::SeqCst))
        {
            return Ok(());
        }
        let active = self.store.secret_active_version(conn).await?;
        if active != self.installed(conn).active {
            self.sync(conn).await?;
        }
        Ok(())
    }

    /// Installs what the store says: active and retiring versions in, the
    /// rest out.
    pub async fn sync(&self, conn: &str) -> Result<(), ConnError> {
        let Some(plugin) = self.plugins.get(conn).cloned() else { return Ok(()) };
        let Some(plugin) = plugin.root_credentials() else { return Ok(()) };
        let _g = self.sync_lock.lock().await;
        let began = self.switches.load(std::sync::atomic::Ordering::SeqCst);
        let versions = self.store.secret_versions(Some(conn)).await?;
        let mut now = self.installed(conn);
        let wanted: Vec<&SecretVersion> =
            versions.iter().filter(|v| matches!(v.state, SecretState::Active | SecretState::Retiring)).collect();
        let active = wanted.iter().find(|v| v.state == SecretState::Active).map(|v| v.version);
        // Retiring ones first, the active one last: issuance switches once
        // everything needed to revoke is in place.
        for v in wanted.iter().filter(|v| v.state == SecretState::Retiring) {
            if !now.all.contains(&v.version) {
                let secret = kek::decrypt(&self.kek, conn, v.version, &v.ciphertext, &v.wrapped_dek, &v.kek_id).await?;
                lessor_plugin::call::bounded("install_root", self.call_timeout, plugin.install_root(v.version, secret, false))
                    .await
                    .unwrap_or_else(|e| Err(Self::elapsed(conn, e, "leases.call_timeout")))
                    .map_err(|e| ConnError::Plugin { connection: conn.into(), message: plugin_msg(&e) })?;
                now.all.insert(v.version);
            }
        }
        if let Some(v) = wanted.iter().find(|v| v.state == SecretState::Active) {
            if now.active != Some(v.version) {
                let secret = kek::decrypt(&self.kek, conn, v.version, &v.ciphertext, &v.wrapped_dek, &v.kek_id).await?;
                lessor_plugin::call::bounded("install_root", self.call_timeout, plugin.install_root(v.version, secret, true))
                    .await
                    .unwrap_or_else(|e| Err(Self::elapsed(conn, e, "leases.call_timeout")))
                    .map_err(|e| ConnError::Plugin { connection: conn.into(), message: plugin_msg(&e) })?;
                now.all.insert(v.version);
                tracing::info!(connection = conn, version = v.version, "root credential installed as active");
            }
        }
        now.active = active;
        let keep: BTreeSet<i64> = wanted.iter().map(|v| v.version).collect();
        for gone in now.all.difference(&keep).copied().collect::<Vec<_>>() {
            let removed = lessor_plugin::call::bounded("remove_root", self.call_timeout, plugin.remove_root(gone))
                .await
                .unwrap_or_else(|e| Err(Self::elapsed(conn, e, "leases.call_timeout")));
            if let Err(e) = removed {
                tracing::warn!(connection = conn, version = gone, error = %e, "removing a retired root credential failed");
            }
            now.all.remove(&gone);
        }
        now.synced_at = Some(began);
        if let Ok(mut m) = self.installed.lock() {
            m.insert(conn.to_owned(), now);
        }
        Ok(())
    }

    /// The background poll: retire versions whose overlap ended, follow
    /// switches made on other replicas, refresh the metrics.
    pub async fn run(self: Arc<Self>, every: Duration, mut shutdown: watch::Receiver<bool>) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                r = shutdown.changed() => {
                    if r.is_err() || *shutdown.borrow() { break; }
                }
            }
            if let Err(e) = self.store.secret_retire_due(OffsetDateTime::now_utc()).await {
                tracing::warn!(error = %e, "retiring root credentials failed");
            }
            for conn in self.managed() {
                if let Err(e) = self.sync(&conn).await {
                    tracing::warn!(connection = %conn, error = %e, "installing the root credential failed; retrying");
                }
            }
            self.update_metrics().await;
        }
    }

    async fn update_metrics(&self) {
        let Ok(views) = self.views().await else { return };
        let now = OffsetDateTime::now_utc();
        for v in &views {
            let name = v.meta.info.name.as_str();
            if let Some(age) = v.age(now) {
                metrics().connection_credential_age.with_label_values(&[name]).set(age.whole_seconds());
            }
        }
    }

    /// When `conn`'s credential is due for review (`review_by`, midnight UTC).
    pub fn review_deadline(&self, conn: &str) -> Option<OffsetDateTime> {
        self.meta.get(conn)?.review_by.map(|d| d.midnight().assume_utc())
    }

    /// Every configured connection as policy sees it (`POST /v1/policy/explain`).
    pub fn connection_infos(&self) -> Vec<ConnectionInfo> {
        self.meta.values().map(|m| m.info.clone()).collect()
    }

    fn meta(&self, conn: &str) -> Result<&ConnectionMeta, ConnError> {
        self.meta.get(conn).ok_or_else(|| ConnError::NotFound(conn.to_owned()))
    }

    /// How the version records `actor` ([`Recorded::of`]), if policy lets
    /// them do `action` on `conn`. Admin credentials (admin token, client
    /// certificate) may do everything; workloads and people are decided by
    /// Cedar, and the decision is audited with who asked.
    fn authorize(&self, actor: &Actor, action: Action, conn: &ConnectionMeta, meta: &RequestMeta) -> Result<String, ConnError> {
        let ctx = RequestContext {
            ttl_seconds: 0,
            scopes: vec![],
            now: OffsetDateTime::now_utc().unix_timestamp(),
            source_ip: meta.source,
            vault_role: meta.vault_role.clone(),
        };
        let policies = self.policy.current();
        let target = Target::Connection(&conn.info);
        let d = match actor {
            Actor::Admin { name } => return Ok(name.clone()),
            Actor::Person(p) => policies.decide_on(&person_info(p), action, target, &ctx)?,
            Actor::Workload(w) => {
                let p = Principal { issuer: w.issuer.clone(), subject: w.subject.clone(), attributes: w.attributes.clone() };
                policies.decide_on(&p, action, target, &ctx)?
            }
        };
        let mut ev = Event::new("decide", if d.allowed { "allow" } else { "deny" })
            .request(Some(meta))
            .actor(actor.audit_info())
            .detail("policy_action", action.as_str())
            .detail("connection", conn.info.name.clone());
        ev.policies = Some(d.policy_ids());
        ev.reasons = Some(d.policies.iter().filter_map(|p| p.reason.clone()).collect());
        self.audit.note(ev);
        if d.allowed {
            Ok(Recorded::of(actor))
        } else {
            Err(ConnError::Forbidden(d.message))
        }
    }

    fn event(&self, action: &'static str, outcome: &'static str, actor: &Actor, meta: &RequestMeta, conn: &str) -> Event {
        Event::new(action, outcome).request(Some(meta)).actor(actor.audit_info()).detail("connection", conn.to_owned())
    }

    async fn view(&self, conn: &str, versions: Vec<SecretVersion>) -> Result<ConnectionView, ConnError> {
        let meta = self.meta(conn)?.clone();
        let spec = self.plugins.get(conn).and_then(|p| p.root_credentials().map(|r| r.spec()));
        let warnings = warnings(&meta, &versions, OffsetDateTime::now_utc());
        Ok(ConnectionView {
            meta,
            managed: spec.is_some(),
            can_rotate: spec.as_ref().is_some_and(|s| s.can_rotate),
            describes: spec.map(|s| s.describes),
            versions,
            warnings,
        })
    }

    /// Every connection with its versions and warnings (no policy check:
    /// for status and metrics).
    pub async fn views(&self) -> Result<Vec<ConnectionView>, ConnError> {
        let mut by_conn: BTreeMap<String, Vec<SecretVersion>> = BTreeMap::new();
        for v in self.store.secret_versions(None).await? {
            by_conn.entry(v.connection.clone()).or_default().push(v);
        }
        let mut out = Vec::new();
        for name in self.meta.keys() {
            out.push(self.view(name, by_conn.remove(name).unwrap_or_default()).await?);
        }
        Ok(out)
    }

    /// The connections `actor` may read.
    pub async fn list(&self, actor: &Actor, meta: &RequestMeta) -> Result<Vec<ConnectionView>, ConnError> {
        let mut out = Vec::new();
        for v in self.views().await? {
            match self.authorize(actor, Action::ConnectionRead, &v.meta, meta) {
                Ok(_) => out.push(v),
                Err(ConnError::Forbidden(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    pub async fn show(&self, actor: &Actor, conn: &str, meta: &RequestMeta) -> Result<ConnectionView, ConnError> {
        let m = self.meta(conn)?.clone();
        self.authorize(actor, Action::ConnectionRead, &m, meta)?;
        let versions = self.store.secret_versions(Some(conn)).await?;
        self.view(conn, versions).await
    }

    fn managed_meta(&self, conn: &str) -> Result<ConnectionMeta, ConnError> {
        let m = self.meta(conn)?.clone();
        if !self.is_managed(conn) {
            return Err(ConnError::NotManaged(conn.to_owned()));
        }
        Ok(m)
    }

    /// Stores a new candidate; returns it (without the secret).
    #[tracing::instrument(skip_all, fields(connection = conn))]
    pub async fn set_secret(
        &self,
        actor: &Actor,
        conn: &str,
        secret: SecretString,
        reason: &str,
        meta: &RequestMeta,
    ) -> Result<SecretVersion, ConnError> {
        let m = self.managed_meta(conn)?;
        let by = self.authorize(actor, Action::ConnectionSetSecret, &m, meta)?;
        if reason.trim().is_empty() {
            return Err(ConnError::BadRequest { field: "reason", message: "say why the secret changes (--reason)".into() });
        }
        if secret.expose_secret().trim().is_empty() {
            return Err(ConnError::BadRequest { field: "secret", message: "the secret is empty".into() });
        }
        if secret.expose_secret().len() > MAX_SECRET_BYTES {
            return Err(ConnError::BadRequest {
                field: "secret",
                message: format!("the secret is longer than {MAX_SECRET_BYTES} bytes"),
            });
        }
        self.store_version(conn, secret, &by, reason.trim(), meta, actor, "connection.set_secret").await
    }

    #[allow(clippy::too_many_arguments)]
    async fn store_version(
        &self,
        conn: &str,
        secret: SecretString,
        by: &str,
        reason: &str,
        meta: &RequestMeta,
        actor: &Actor,
        action: &'static str,
    ) -> Result<SecretVersion, ConnError> {
        let fp = fingerprint(&self.fingerprint_key, secret.expose_secret());
        for _ in 0..5 {
            let next = self.store.secret_versions(Some(conn)).await?.iter().map(|v| v.version).max().unwrap_or(0) + 1;
            let sealed = kek::encrypt(&self.kek, conn, next, &secret).await?;
            let v = SecretVersion {
                connection: conn.to_owned(),
                version: next,
                state: SecretState::Candidate,
                ciphertext: sealed.ciphertext,
                wrapped_dek: sealed.wrapped_dek,
                kek_id: sealed.kek_id,
                fingerprint: fp.clone(),
                set_by: by.to_owned(),
                reason: reason.to_owned(),
                set_at: OffsetDateTime::now_utc(),
                verified_ok: None,
                verification: None,
                verified_at: None,
                approved_by: None,
                approved_at: None,
                activated_by: None,
                activated_at: None,
                retiring_until: None,
            };
            match self.store.secret_insert(&v).await {
                Ok(()) => {
                    let ev = self
                        .event(action, "ok", actor, meta, conn)
                        .detail("version", next)
                        .detail("fingerprint", fp.clone())
                        .detail("reason", self.audit.hash(reason.as_bytes()));
                    self.audit.note(ev);
                    return Ok(v);
                }
                Err(StoreError::Conflict(_)) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(ConnError::Conflict(format!("connection `{conn}`: versions are being added concurrently; try again")))
    }

    async fn version(&self, conn: &str, version: Option<i64>, state: SecretState) -> Result<SecretVersion, ConnError> {
        let versions = self.store.secret_versions(Some(conn)).await?;
        let found = match version {
            Some(n) => versions.into_iter().find(|v| v.version == n),
            None => versions.into_iter().filter(|v| v.state == state).max_by_key(|v| v.version),
        };
        match (found, version) {
            (Some(v), _) => Ok(v),
            (None, Some(n)) => Err(ConnError::NotFound(format!("{conn}` version `{n}"))),
            (None, None) => Err(ConnError::Conflict(format!(
                "connection `{conn}` has no {} version (lessor connection set-secret {conn})",
                state.as_str()
            ))),
        }
    }

    /// Checks a version (default: the newest candidate) with the plugin and
    /// against `expected_identity`; stores and returns the result.
    #[tracing::instrument(skip_all, fields(connection = conn))]
    pub async fn verify(&self, actor: &Actor, conn: &str, version: Option<i64>, meta: &RequestMeta) -> Result<(i64, Verification), ConnError> {
        let m = self.managed_meta(conn)?;
        self.authorize(actor, Action::ConnectionVerify, &m, meta)?;
        let v = self.version(conn, version, SecretState::Candidate).await?;
        if v.state == SecretState::Retired {
            return Err(ConnError::Conflict(format!("connection `{conn}` version {} is retired", v.version)));
        }
        let result = self.check(conn, &m, &v).await?;
        let outcome = if result.ok { "ok" } else { "failed" };
        let ev = self
            .event("connection.verify", outcome, actor, meta, conn)
            .detail("version", v.version)
            .detail("result", serde_json::to_value(&result).unwrap_or_default());
        self.audit.note(ev);
        Ok((v.version, result))
    }

    async fn check(&self, conn: &str, m: &ConnectionMeta, v: &SecretVersion) -> Result<Verification, ConnError> {
        let plugin = self.plugins.get(conn).cloned().ok_or_else(|| ConnError::NotFound(conn.to_owned()))?;
        let secret = kek::decrypt(&self.kek, conn, v.version, &v.ciphertext, &v.wrapped_dek, &v.kek_id).await?;
        let validated = match plugin.root_credentials() {
            Some(root) => lessor_plugin::call::bounded("validate_root", self.root_timeout, root.validate_root(&secret))
                .await
                .unwrap_or_else(|e| Err(Self::elapsed(conn, e, "leases.root_timeout"))),
            None => Err(PluginError::Unsupported("managed root credentials".into())),
        };
        let result = match validated {
            Ok(val) => check_identity(m.expected.as_ref(), &val),
            Err(e) => Verification {
                ok: false,
                message: plugin_msg(&e),
                identity: None,
                details: BTreeMap::new(),
                warnings: vec![],
            },
        };
        let now = OffsetDateTime::now_utc();
        let json = serde_json::to_value(&result).unwrap_or_default();
        self.store.secret_verified(conn, v.version, result.ok, &json, now).await?;
        Ok(result)
    }

    /// Approves a candidate (production): only a person (Cedar decides
    /// which) or an admin credential (break-glass); never a workload, never
    /// whoever set it (same provider#subject, or same email), and an admin
    /// credential not a version set with one (they are one person).
    pub async fn approve(&self, actor: &Actor, conn: &str, version: Option<i64>, meta: &RequestMeta) -> Result<SecretVersion, ConnError> {
        let m = self.managed_meta(conn)?;
        if let Actor::Workload(w) = actor {
            // Before Cedar: no policy can make a workload an approver.
            let e = ConnError::Forbidden(format!(
                "`{}#{}` is a workload: approvals come only from people (sign in with `lessor login`) or, as \
                 break-glass, an admin token; a workload never approves, whatever the policies permit",
                w.issuer, w.subject
            ));
            let ev = self.event("connection.approve", "denied", actor, meta, conn);
            self.audit.note(ev.error("workload_cannot_approve", e.to_string()));
            return Err(e);
        }
        let by = self.authorize(actor, Action::ConnectionApprove, &m, meta)?;
        let v = self.version(conn, version, SecretState::Candidate).await?;
        let setter = Recorded::parse(&v.set_by);
        let break_glass = matches!(actor, Actor::Admin { .. });
        let ev = self
            .event("connection.approve", "denied", actor, meta, conn)
            .detail("version", v.version)
            .detail("set_by", setter.id.clone())
            .detail("break_glass", break_glass);
        let refuse = |reason: &'static str, e: ConnError| {
            self.audit.note(ev.clone().error(reason, e.to_string()));
            Err(e)
        };
        if v.state != SecretState::Candidate {
            let e = ConnError::Conflict(format!("connection `{conn}` version {} is {}, not a candidate", v.version, v.state.as_str()));
            return refuse("refused", e);
        }
        let second = |why: String| {
            ConnError::Forbidden(format!(
                "{why}: a second person must run `lessor connection approve {conn}` (version {})",
                v.version
            ))
        };
        match actor {
            Actor::Person(p) if setter.id == p.id() => {
                let why = format!("`{}` set version {} of connection `{conn}` and cannot also approve it", p.id(), v.version);
                return refuse("self_approval", second(why));
            }
            Actor::Person(p) if !p.email.is_empty() && setter.email.as_deref() == Some(p.email.as_str()) => {
                let why = format!(
                    "`{}` has the same email (`{}`) as `{}`, who set version {} of connection `{conn}`: the same person \
                     cannot also approve it",
                    p.id(),
                    p.email,
                    setter.id,
                    v.version
                );
                return refuse("self_approval_same_email", second(why));
            }
            Actor::Admin { name } if setter.admin => {
                let why = format!(
                    "version {} of connection `{conn}` was set with an admin credential (`{}`); `{name}` is one too, \
                     and all admin credentials count as one person (break-glass)",
                    v.version, setter.id
                );
                return refuse("self_approval_break_glass", second(why));
            }
            _ => {}
        }
        let record = if break_glass { format!("{by}{BREAK_GLASS_MARK}") } else { by };
        let now = OffsetDateTime::now_utc();
        if !self.store.secret_approve(conn, v.version, &record, now).await? {
            let e = ConnError::Conflict(format!("connection `{conn}` version {} changed meanwhile; look again", v.version));
            return refuse("refused", e);
        }
        let mut ok = ev;
        ok.outcome = "ok";
        ok.time = crate::audit::now_rfc3339();
        if break_glass {
            tracing::warn!(connection = conn, version = v.version, admin = %actor.name(), "break-glass approval with an admin credential");
        }
        self.audit.note(ok);
        self.version(conn, Some(v.version), SecretState::Candidate).await
    }

    /// Switches issuance to a verified (and, for production, approved)
    /// candidate; the old active version becomes retiring.
    pub async fn activate(&self, actor: &Actor, conn: &str, version: Option<i64>, meta: &RequestMeta) -> Result<SecretVersion, ConnError> {
        let m = self.managed_meta(conn)?;
        let by = self.authorize(actor, Action::ConnectionActivate, &m, meta)?;
        let v = self.version(conn, version, SecretState::Candidate).await?;
        let ev = self.event("connection.activate", "denied", actor, meta, conn).detail("version", v.version);
        let refuse = |e: ConnError| {
            self.audit.note(ev.clone().error("refused", e.to_string()));
            Err(e)
        };
        if v.state != SecretState::Candidate {
            return refuse(ConnError::Conflict(format!(
                "connection `{conn}` version {} is {}; only a candidate can be activated (rollback returns to a retiring one)",
                v.version,
                v.state.as_str()
            )));
        }
        if v.verified_ok != Some(true) {
            let last = v
                .verification
                .as_ref()
                .and_then(|r| r["message"].as_str().map(str::to_owned))
                .map(|m| format!("last verification: {m}"))
                .unwrap_or_else(|| "it was never verified".into());
            return refuse(ConnError::Conflict(format!(
                "connection `{conn}` version {} has not passed verification ({last}); run `lessor connection verify {conn}`",
                v.version
            )));
        }
        if m.is_production() && v.approved_by.is_none() {
            return refuse(ConnError::Conflict(format!(
                "connection `{conn}` is production: version {} needs approval by someone other than `{}` \
                 (`lessor connection approve {conn}`)",
                v.version, v.set_by
            )));
        }
        self.switch(actor, conn, &m, &v, SecretState::Candidate, &by, meta, "connection.activate").await
    }

    #[allow(clippy::too_many_arguments)]
    async fn switch(
        &self,
        actor: &Actor,
        conn: &str,
        m: &ConnectionMeta,
        v: &SecretVersion,
        from: SecretState,
        by: &str,
        meta: &RequestMeta,
        action: &'static str,
    ) -> Result<SecretVersion, ConnError> {
        let now = OffsetDateTime::now_utc();
        let previous = self.store.secret_active_version(conn).await?;
        let s = SecretSwitch {
            connection: conn.to_owned(),
            version: v.version,
            from,
            need_approval: m.is_production() && from == SecretState::Candidate,
            by: by.to_owned(),
            at: now,
            retiring_until: now + m.overlap,
        };
        self.switches.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        if !self.store.secret_switch(&s).await? {
            let e = ConnError::Conflict(format!("connection `{conn}` version {} changed meanwhile; look again", v.version));
            self.audit.note(self.event(action, "denied", actor, meta, conn).detail("version", v.version).error("refused", e.to_string()));
            return Err(e);
        }
        let ev = self
            .event(action, "ok", actor, meta, conn)
            .detail("version", v.version)
            .detail("previous_version", previous.map(serde_json::Value::from).unwrap_or(serde_json::Value::Null))
            .detail("retiring_until", crate::store::to_ms(s.retiring_until));
        self.audit.note(ev);
        if let Err(e) = self.sync(conn).await {
            // The store decides; the poll (and the next issue) install it.
            tracing::warn!(connection = conn, error = %e, "installing the new root credential failed; retrying");
        }
        self.update_metrics().await;
        self.version(conn, Some(v.version), SecretState::Active).await
    }

    /// Returns to the version that was active before, while it is retiring.
    pub async fn rollback(&self, actor: &Actor, conn: &str, meta: &RequestMeta) -> Result<SecretVersion, ConnError> {
        let m = self.managed_meta(conn)?;
        let by = self.authorize(actor, Action::ConnectionActivate, &m, meta)?;
        let now = OffsetDateTime::now_utc();
        let versions = self.store.secret_versions(Some(conn)).await?;
        let Some(prev) = versions
            .iter()
            .filter(|v| v.state == SecretState::Retiring && v.retiring_until.is_some_and(|t| t > now))
            .max_by_key(|v| (v.activated_at, v.version))
            .cloned()
        else {
            let e = ConnError::Conflict(format!(
                "connection `{conn}` has no retiring version to return to (a replaced version stays retiring for {})",
                crate::fmt_duration(m.overlap)
            ));
            self.audit.note(self.event("connection.rollback", "denied", actor, meta, conn).error("refused", e.to_string()));
            return Err(e);
        };
        self.switch(actor, conn, &m, &prev, SecretState::Retiring, &by, meta, "connection.rollback").await
    }

    /// Has the plugin make a new root credential with the active one,
    /// verifies and activates it. Nobody sees it.
    #[tracing::instrument(skip_all, fields(connection = conn))]
    pub async fn rotate(&self, actor: &Actor, conn: &str, meta: &RequestMeta) -> Result<SecretVersion, ConnError> {
        let m = self.managed_meta(conn)?;
        let by = self.authorize(actor, Action::ConnectionRotate, &m, meta)?;
        let plugin = self.plugins.get(conn).cloned().ok_or_else(|| ConnError::NotFound(conn.to_owned()))?;
        let Some(root) = plugin.root_credentials().filter(|r| r.spec().can_rotate) else {
            return Err(ConnError::Conflict(format!("connection `{conn}`: its plugin ({}) cannot rotate its root credential", plugin.kind())));
        };
        if self.store.secret_active_version(conn).await?.is_none() {
            return Err(ConnError::Conflict(format!("connection `{conn}` has no active root credential to rotate from")));
        }
        self.ensure_current(conn).await?;
        // Bounded: past `leases.root_timeout` the call is cancelled, no
        // version is stored and the active one stays active.
        let rotated = lessor_plugin::call::bounded("rotate_root", self.root_timeout, root.rotate_root())
            .await
            .unwrap_or_else(|e| Err(Self::elapsed(conn, e, "leases.root_timeout")));
        let secret = match rotated {
            Ok(s) => s,
            Err(e) => {
                let e = ConnError::Plugin { connection: conn.into(), message: plugin_msg(&e) };
                self.audit.note(self.event("connection.rotate", "error", actor, meta, conn).error("vendor", e.to_string()));
                return Err(e);
            }
        };
        let v = self.store_version(conn, secret, &by, "rotated by lessor", meta, actor, "connection.rotate").await?;
        let result = self.check(conn, &m, &v).await?;
        let ev = self
            .event("connection.verify", if result.ok { "ok" } else { "failed" }, actor, meta, conn)
            .detail("version", v.version)
            .detail("result", serde_json::to_value(&result).unwrap_or_default());
        self.audit.note(ev);
        if !result.ok {
            return Err(ConnError::Plugin {
                connection: conn.into(),
                message: format!(
                    "the rotated credential (version {}) failed verification: {}; it stays a candidate",
                    v.version, result.message
                ),
            });
        }
        // A rotation has no human-chosen secret to approve: it activates.
        let now = OffsetDateTime::now_utc();
        let s = SecretSwitch {
            connection: conn.to_owned(),
            version: v.version,
            from: SecretState::Candidate,
            need_approval: false,
            by: by.clone(),
            at: now,
            retiring_until: now + m.overlap,
        };
        let previous = self.store.secret_active_version(conn).await?;
        self.switches.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        if !self.store.secret_switch(&s).await? {
            return Err(ConnError::Conflict(format!("connection `{conn}` version {} changed meanwhile", v.version)));
        }
        let ev = self
            .event("connection.activate", "ok", actor, meta, conn)
            .detail("version", v.version)
            .detail("previous_version", previous.map(serde_json::Value::from).unwrap_or(serde_json::Value::Null))
            .detail("rotated", true);
        self.audit.note(ev);
        self.sync(conn).await?;
        self.update_metrics().await;
        self.version(conn, Some(v.version), SecretState::Active).await
    }
}

/// Stale (older than `rotate_after`) and expiring (review_by within 7
/// days, or past) warnings.
pub fn warnings(m: &ConnectionMeta, versions: &[SecretVersion], now: OffsetDateTime) -> Vec<String> {
    let mut out = Vec::new();
    let name = &m.info.name;
    if let (Some(limit), Some(active)) = (m.rotate_after, versions.iter().find(|v| v.state == SecretState::Active)) {
        let since = active.activated_at.unwrap_or(active.set_at);
        let age = now - since;
        if age > limit {
            out.push(format!(
                "connection `{name}`: root credential v{} is stale: {} old, rotate_after is {}",
                active.version,
                crate::fmt_duration(age.unsigned_abs()),
                crate::fmt_duration(limit)
            ));
        }
    }
    if let Some(d) = m.review_by {
        let at = d.midnight().assume_utc();
        if at <= now {
            out.push(format!("connection `{name}`: review/expiry date {d} has passed"));
        } else if at - now <= EXPIRY_WARNING {
            let days = (at - now).whole_days();
            out.push(format!("connection `{name}`: review/expiry date {d} is in {days} day(s)"));
        }
    }
    out
}

#[cfg(test)]
mod recorded_tests {
    use super::*;

    #[test]
    fn records_name_people_with_their_email_and_flag_break_glass() {
        let p = Person {
            provider: "dev".into(),
            issuer: "http://idp".into(),
            subject: "alice".into(),
            email: "alice@example.com".into(),
            name: "Alice".into(),
            groups: vec![],
        };
        let text = Recorded::of(&Actor::Person(p.clone()));
        assert_eq!(text, "dev#alice <alice@example.com>");
        let r = Recorded::parse(&text);
        assert_eq!((r.id.as_str(), r.email.as_deref(), r.admin, r.break_glass), ("dev#alice", Some("alice@example.com"), false, false));
        // No email: the id alone.
        let r = Recorded::parse(&Recorded::of(&Actor::Person(Person { email: String::new(), ..p })));
        assert_eq!((r.id.as_str(), r.email), ("dev#alice", None));
        // Admin credentials, set and approved (break-glass).
        let r = Recorded::parse("token:ops");
        assert!(r.admin && !r.break_glass && r.email.is_none());
        let r = Recorded::parse(&format!("cert:ops.example{BREAK_GLASS_MARK}"));
        assert_eq!((r.id.as_str(), r.admin, r.break_glass), ("cert:ops.example", true, true));
        // A workload (or an older record) is an id without email.
        let r = Recorded::parse("https://token.actions.githubusercontent.com#repo:acme/ops:ref:refs/heads/main");
        assert!(!r.admin && r.email.is_none() && r.id.ends_with("refs/heads/main"));
    }
}

#[cfg(test)]
mod fingerprint_tests {
    use super::*;

    #[test]
    fn fingerprints_are_keyed_and_hold_no_part_of_the_secret() {
        let seal = crate::seal::Seal::from_bytes([7; 32]);
        let key = seal.derive_hmac_key(FINGERPRINT_KEY_PURPOSE);
        let secret = "postgres://lessor:pa55w0rd@db.internal:5432/app?password=s3cr3tXYZ";
        let fp = fingerprint(&key, secret);
        assert!(fp.len() == 8 && fp.chars().all(|c| c.is_ascii_hexdigit()), "{fp}");
        let chars: Vec<char> = secret.chars().collect();
        for w in chars.windows(4) {
            assert!(!fp.contains(&w.iter().collect::<String>()), "{fp} holds part of the secret");
        }
        // Same deployment, same fingerprint; another deployment's key, or
        // another secret, gives another.
        assert_eq!(fp, fingerprint(&seal.derive_hmac_key(FINGERPRINT_KEY_PURPOSE), secret));
        let other = crate::seal::Seal::from_bytes([8; 32]).derive_hmac_key(FINGERPRINT_KEY_PURPOSE);
        assert_ne!(fp, fingerprint(&other, secret));
        assert_ne!(fp, fingerprint(&key, "postgres://lessor:pa55w0rd@db.internal:5432/app?password=s3cr3tXYz"));
    }
}
