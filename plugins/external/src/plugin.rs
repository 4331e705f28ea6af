//! `ExternalPlugin`: the `Plugin` trait over a supervised child process.
//!
//! The supervisor task owns the `Child`: it waits for it to exit (or to be
//! asked to kill it), marks the plugin down (calls fail `Retryable` at once),
//! restarts it with exponential backoff, and after each start runs the
//! handshake, re-installs the root credential versions it was given, and
//! calls `validate`; only then are calls let through again.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use lessor_plugin::secrecy::{ExposeSecret, SecretString};
use lessor_plugin::{
    Capabilities, IssueRequest, Issued, LeaseRef, Plugin, PluginContext, PluginError, Registration, RenewRequest,
    RoleSpec, RootCredentials, RootSecretSpec, Validation, VendorObject,
};
use serde_json::{json, Value};
use time::OffsetDateTime;
use tokio::process::Child;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::ExternalConfig;
use crate::protocol::{self, Handshake, RoleWire, PROTOCOL_VERSION};
use crate::session::{CallError, Session};

/// First restart delay; doubled per failed start, up to [`MAX_BACKOFF`].
pub const MIN_BACKOFF: Duration = Duration::from_millis(200);
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// A process that ran this long resets the backoff.
const STABLE_AFTER: Duration = Duration::from_secs(30);

enum State {
    Up(Arc<Session>),
    Down(String),
}

struct Inner {
    connection: String,
    cfg: ExternalConfig,
    /// Timeout of one call: [`ExternalConfig::call_timeout`] against the
    /// core's `PluginContext::call_timeout`.
    call_timeout: Duration,
    /// `initialize` params, the same at every start.
    init: Value,
    /// The first start's handshake; later starts must answer the same.
    handshake: Handshake,
    state: RwLock<State>,
    /// Root credential versions given by the core: (secret, active).
    /// Replayed into every restarted process.
    roots: Mutex<BTreeMap<i64, (SecretString, bool)>>,
    restarts: std::sync::atomic::AtomicU64,
}

/// A plugin that is any executable speaking plugins/PROTOCOL.md.
pub struct ExternalPlugin {
    inner: Arc<Inner>,
    shutdown: watch::Sender<bool>,
    supervisor: Mutex<Option<JoinHandle<()>>>,
}

/// Builds the plugin: starts the process and completes the handshake and a
/// first `validate` before returning, so a broken plugin stops lessor's
/// start with the reason.
pub async fn build(ctx: PluginContext, connection: Value, roles: Vec<RoleSpec>) -> Result<Arc<dyn Plugin>, PluginError> {
    Ok(ExternalPlugin::start(ctx, connection, roles).await?)
}

/// The `external` kind for the core's registry. `lessor check` parses the
/// connection config (`command`, `env`, timeouts, `config`) and starts
/// nothing; whether the program runs is learned at start.
pub fn registration() -> Registration {
    Registration {
        kind: "external",
        sdk_version: lessor_plugin::SDK_VERSION,
        vault: lessor_plugin::VaultShape::Creds,
        build: |ctx, cfg, roles| Box::pin(build(ctx, cfg, roles)),
        validate_config: |cfg, _roles| ExternalConfig::parse(cfg.clone()).map(|_| ()).map_err(|e| e.to_string()),
        ca_files: lessor_plugin::no_ca_files,
    }
}

/// Kills the process when an `issue` call is dropped before its answer (the
/// core cancelled it past its deadline): the plugin might otherwise create
/// the credential after the core has revoked the pending lease.
struct IssueGuard<'a>(Option<&'a Session>);

impl Drop for IssueGuard<'_> {
    fn drop(&mut self) {
        if let Some(s) = self.0.take() {
            s.request_kill("`issue` was cancelled by lessor before the plugin answered".into());
        }
    }
}

fn gone(connection: &str, method: &str, e: CallError) -> PluginError {
    match e {
        CallError::Rpc(r) => PluginError::Permanent(format!("`{method}`: code {}: {}", r.code, r.message)),
        CallError::Gone(why) => {
            PluginError::Retryable(format!("external plugin `{connection}` went away during `{method}`: {why}"))
        }
        CallError::Timeout(t) => PluginError::Retryable(format!(
            "external plugin `{connection}` did not answer `{method}` within {}",
            humantime::format_duration(t)
        )),
        CallError::Encode(m) => PluginError::InvalidRequest(m),
    }
}

impl Inner {
    fn session(&self, method: &str) -> Result<Arc<Session>, PluginError> {
        match &*self.state.read().map_err(|_| PluginError::Retryable("plugin state lock poisoned".into()))? {
            State::Up(s) => Ok(s.clone()),
            State::Down(why) => Err(PluginError::Retryable(format!(
                "external plugin `{}` is restarting ({why}); `{method}` can be tried again shortly",
                self.connection
            ))),
        }
    }

    /// One call, bounded by `call_timeout` and by what is left of the core's
    /// deadline for it (which the plugin receives as `deadline_ms`).
    async fn call(&self, method: &'static str, mut params: Value) -> Result<Value, PluginError> {
        let s = self.session(method)?;
        let timeout = lessor_plugin::call::remaining().map_or(self.call_timeout, |left| left.min(self.call_timeout));
        if let Value::Object(m) = &mut params {
            m.insert("deadline_ms".into(), json!(u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX)));
        }
        self.call_on(&s, method, params, timeout).await
    }

    async fn call_on(&self, s: &Session, method: &'static str, params: Value, timeout: Duration) -> Result<Value, PluginError> {
        let mut guard = IssueGuard((method == "issue").then_some(s));
        let answer = s.call(method, params, timeout).await;
        guard.0 = None;
        match answer {
            Ok(v) => Ok(v),
            Err(CallError::Rpc(r)) => Err(r.into_plugin_error(method)),
            Err(e @ CallError::Timeout(_)) if method == "issue" => {
                // An issue still running in the plugin could create the
                // credential after the core cleaned the lease up: end it.
                s.request_kill(format!("`issue` did not answer within {}", humantime::format_duration(timeout)));
                Err(gone(&self.connection, method, e))
            }
            Err(e) => Err(gone(&self.connection, method, e)),
        }
    }

    /// Spawns a process and brings it to the point where calls may go to it.
    async fn start_session(&self) -> Result<(Arc<Session>, Child, Handshake), String> {
        let (s, mut child) = Session::spawn(&self.connection, &self.cfg)?;
        let ready = async {
            let v = s
                .call("initialize", self.init.clone(), self.cfg.start_timeout)
                .await
                .map_err(|e| format!("handshake: {}", gone(&self.connection, "initialize", e)))?;
            let h = protocol::handshake(v).map_err(|e| e.to_string())?;
            let roots: Vec<(i64, SecretString, bool)> = match self.roots.lock() {
                Ok(g) => g.iter().map(|(v, (s, a))| (*v, s.clone(), *a)).collect(),
                Err(_) => Vec::new(),
            };
            for (version, secret, active) in roots {
                let params = json!({"root_version": version, "secret": secret.expose_secret(), "active": active});
                self.call_on(&s, "install_root", params, self.cfg.start_timeout)
                    .await
                    .map_err(|e| format!("re-installing root credential version {version}: {e}"))?;
            }
            let v = self
                .call_on(&s, "validate", json!({}), self.cfg.start_timeout)
                .await
                .and_then(|v| protocol::validation("validate", v))
                .map_err(|e| format!("health check (`validate`): {e}"))?;
            tracing::info!(connection = %self.connection, pid = s.pid, kind = %h.kind, identity = %v.identity, "external plugin started");
            Ok::<_, String>(h)
        };
        match ready.await {
            Ok(h) => Ok((s, child, h)),
            Err(e) => {
                let _ = child.start_kill();
                let _ = child.wait().await;
                s.fail_pending(&e);
                Err(e)
            }
        }
    }

    fn set(&self, st: State) {
        match self.state.write() {
            Ok(mut g) => *g = st,
            Err(p) => *p.into_inner() = st,
        }
    }
}

/// Resolves once shutdown is asked (or its sender is gone).
async fn stopping(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

/// Runs the process until shutdown, restarting it when it exits.
async fn supervise(inner: Arc<Inner>, mut session: Arc<Session>, mut child: Child, mut shutdown: watch::Receiver<bool>) {
    let mut backoff = MIN_BACKOFF;
    let mut started = Instant::now();
    loop {
        let why = tokio::select! {
            status = child.wait() => match status {
                Ok(s) => format!("exited with {s}"),
                Err(e) => format!("wait failed: {e}"),
            },
            _ = session.kill.notified() => {
                let why = session.kill_reason.lock().ok().and_then(|g| g.clone()).unwrap_or_else(|| "killed".into());
                let _ = child.start_kill();
                let _ = child.wait().await;
                format!("killed: {why}")
            }
            _ = stopping(&mut shutdown) => {
                stop(&inner, &session, child).await;
                return;
            }
        };
        inner.set(State::Down(why.clone()));
        session.fail_pending(&format!("the plugin process {why}"));
        if started.elapsed() >= STABLE_AFTER {
            backoff = MIN_BACKOFF;
        }
        tracing::warn!(connection = %inner.connection, pid = session.pid, reason = %why, retry_in = ?backoff, "external plugin stopped; restarting");
        loop {
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = stopping(&mut shutdown) => return,
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
            match inner.start_session().await {
                Ok((s, c, h)) if h == inner.handshake => {
                    inner.restarts.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    session = s;
                    child = c;
                    started = Instant::now();
                    inner.set(State::Up(session.clone()));
                    break;
                }
                Ok((s, mut c, h)) => {
                    let why = format!("the restarted plugin answered a different handshake ({h:?}, was {:?})", inner.handshake);
                    let _ = c.start_kill();
                    let _ = c.wait().await;
                    s.fail_pending(&why);
                    tracing::error!(connection = %inner.connection, reason = %why, retry_in = ?backoff, "external plugin restart refused");
                    inner.set(State::Down(why));
                }
                Err(e) => {
                    tracing::warn!(connection = %inner.connection, error = %e, retry_in = ?backoff, "external plugin restart failed");
                    inner.set(State::Down(format!("restart failed: {e}")));
                }
            }
        }
    }
}

/// `shutdown`, then end of input, then a kill after the grace period.
async fn stop(inner: &Inner, session: &Session, mut child: Child) {
    inner.set(State::Down("lessor is shutting down".into()));
    let grace = inner.cfg.shutdown_grace;
    let polite = async {
        let _ = session.call("shutdown", json!({}), grace).await;
        session.close_stdin().await;
        child.wait().await
    };
    match tokio::time::timeout(grace, polite).await {
        Ok(Ok(status)) => tracing::debug!(connection = %inner.connection, %status, "external plugin stopped"),
        _ => {
            tracing::warn!(connection = %inner.connection, pid = session.pid, "external plugin did not exit within its grace period; killing it");
            let _ = child.start_kill();
            let _ = child.wait().await;
        }
    }
    session.fail_pending("lessor is shutting down");
}

impl ExternalPlugin {
    /// Starts the plugin (see [`build`]); the concrete type, for callers
    /// that need [`ExternalPlugin::list`].
    pub async fn start(ctx: PluginContext, connection: Value, roles: Vec<RoleSpec>) -> Result<Arc<ExternalPlugin>, PluginError> {
        let cfg = ExternalConfig::parse(connection)?;
        let roles: Vec<RoleWire> = roles
            .into_iter()
            .map(|r| RoleWire { name: r.name, scopes: r.scopes, max_ttl_seconds: r.max_ttl.as_secs(), config: r.config })
            .collect();
        let init = json!({
            "protocol_version": PROTOCOL_VERSION,
            "lessor_version": env!("CARGO_PKG_VERSION"),
            "connection": ctx.connection,
            "config": cfg.config,
            "roles": roles,
            "public_url": ctx.public_url,
        });
        let call_timeout = cfg.call_timeout(ctx.call_timeout);
        let mut inner = Inner {
            connection: ctx.connection.clone(),
            call_timeout,
            cfg,
            init,
            handshake: Handshake {
                protocol_version: PROTOCOL_VERSION,
                kind: String::new(),
                can_renew: false,
                can_revoke: false,
                revocation: lessor_plugin::Revocation::AtExpiry,
                can_list: false,
                manages_root: false,
                root_describes: None,
            },
            state: RwLock::new(State::Down("starting".into())),
            roots: Mutex::new(BTreeMap::new()),
            restarts: Default::default(),
        };
        let (session, child, handshake) = inner.start_session().await.map_err(PluginError::Misconfigured)?;
        inner.handshake = handshake;
        inner.state = RwLock::new(State::Up(session.clone()));
        let inner = Arc::new(inner);
        let (tx, rx) = watch::channel(false);
        let task = tokio::spawn(supervise(inner.clone(), session, child, rx));
        Ok(Arc::new(ExternalPlugin { inner, shutdown: tx, supervisor: Mutex::new(Some(task)) }))
    }

    /// The plugin's handshake (kind and capabilities).
    pub fn handshake(&self) -> &Handshake {
        &self.inner.handshake
    }

    /// How many times the process was restarted.
    pub fn restarts(&self) -> u64 {
        self.inner.restarts.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The current process id, when one is up.
    pub fn pid(&self) -> Option<u32> {
        match &*self.inner.state.read().ok()? {
            State::Up(s) => Some(s.pid),
            State::Down(_) => None,
        }
    }

    /// Sends `shutdown`, waits up to `shutdown_grace` for the process to
    /// exit, then kills it. Calls after this fail `Retryable`.
    pub async fn stop(&self) {
        let _ = self.shutdown.send(true);
        let task = self.supervisor.lock().ok().and_then(|mut g| g.take());
        if let Some(t) = task {
            let _ = t.await;
        }
    }
}

#[async_trait]
impl Plugin for ExternalPlugin {
    fn kind(&self) -> &str {
        "external"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities { can_renew: self.inner.handshake.can_renew, revocation: self.inner.handshake.revocation.clone() }
    }

    async fn validate(&self) -> Result<Validation, PluginError> {
        let mut v = protocol::validation("validate", self.inner.call("validate", json!({})).await?)?;
        let h = &self.inner.handshake;
        v.details.insert("plugin_kind".into(), h.kind.clone());
        v.details.insert("protocol_version".into(), h.protocol_version.to_string());
        v.details.insert("restarts".into(), self.restarts().to_string());
        Ok(v)
    }

    async fn issue(&self, req: IssueRequest) -> Result<Issued, PluginError> {
        let params = protocol::issue_params(&req)?;
        let issued = protocol::issued(self.inner.call("issue", params).await?)?;
        if issued.expires_at > req.expires_at {
            // The core never hands out a credential that outlives its lease;
            // the lease row is pending, so the core revokes what was made.
            return Err(PluginError::Permanent(format!(
                "the plugin issued a credential ending at {}, after the lease's end {}",
                issued.expires_at, req.expires_at
            )));
        }
        Ok(issued)
    }

    async fn renew(&self, req: RenewRequest) -> Result<OffsetDateTime, PluginError> {
        if !self.inner.handshake.can_renew {
            return Err(PluginError::Unsupported("renew".into()));
        }
        let params = protocol::renew_params(&req)?;
        protocol::renewed(self.inner.call("renew", params).await?)
    }

    async fn revoke(&self, lease: &LeaseRef) -> Result<(), PluginError> {
        self.inner.call("revoke", protocol::lease_params(lease)?).await.map(|_| ())
    }

    /// `list`: what the plugin created at its vendor (by its name prefix),
    /// each mapped back to its lease id, checked to be a page in name order.
    async fn list_objects(&self, after: Option<&str>, limit: u32) -> Result<Vec<VendorObject>, PluginError> {
        if !self.inner.handshake.can_list {
            return Err(PluginError::Unsupported("listing vendor objects".into()));
        }
        let v = self.inner.call("list", json!({"after": after, "limit": limit})).await?;
        protocol::listed(v, after, limit)
    }

    fn root_credentials(&self) -> Option<&dyn RootCredentials> {
        self.inner.handshake.manages_root.then_some(self as &dyn RootCredentials)
    }

    async fn shutdown(&self) {
        self.stop().await;
    }
}

/// Offered (through [`Plugin::root_credentials`]) only when the handshake
/// says `manages_root`. Versions are kept here too and replayed into every
/// restarted process.
#[async_trait]
impl RootCredentials for ExternalPlugin {
    fn spec(&self) -> RootSecretSpec {
        let describes = self.inner.handshake.root_describes.clone().unwrap_or_else(|| {
            format!("the root credential the external plugin `{}` uses at its vendor (see its README)", self.inner.handshake.kind)
        });
        RootSecretSpec { describes, can_rotate: false }
    }

    async fn validate_root(&self, candidate: &SecretString) -> Result<Validation, PluginError> {
        let v = self.inner.call("validate_root", json!({"secret": candidate.expose_secret()})).await?;
        protocol::validation("validate_root", v)
    }

    async fn install_root(&self, version: i64, secret: SecretString, active: bool) -> Result<(), PluginError> {
        let params = json!({"root_version": version, "secret": secret.expose_secret(), "active": active});
        self.inner.call("install_root", params).await?;
        if let Ok(mut g) = self.inner.roots.lock() {
            if active {
                for (_, a) in g.values_mut() {
                    *a = false;
                }
            }
            g.insert(version, (secret, active));
        }
        Ok(())
    }

    async fn remove_root(&self, version: i64) -> Result<(), PluginError> {
        if let Ok(mut g) = self.inner.roots.lock() {
            g.remove(&version);
        }
        self.inner.call("remove_root", json!({"root_version": version})).await.map(|_| ())
    }
}
