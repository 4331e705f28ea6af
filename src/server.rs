//! Assembles the daemon from a `Config` and serves it on a listener. `main`
//! and the integration tests call the same `start`.
//!
//! Start order: store -> seal key check -> admin token -> audit log ->
//! plugins -> policies -> verifier -> expiry worker + replica heartbeat +
//! policy watcher -> HTTP. Shutdown stops the HTTP listener (in-flight
//! requests finish), then the background tasks, then the plugins (external
//! plugin processes get `shutdown`), then the audit log (a final
//! signed checkpoint), then the store (queued writes finish; SQLite's writer
//! thread ends and the WAL is checkpointed). SIGHUP reloads policies and
//! reopens the audit file (log rotation).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context};
use base64::Engine;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::audit::{ActorInfo, Audit, Event};
use crate::config::Config;
use crate::connections::kek::Kek;
use crate::connections::{ConnectionMeta, RootCredentials};
use crate::customer_tokens::CustomerTokens;
use crate::http::{router, AppState};
use crate::identity::Verifier;
use crate::lease::reconcile::Reconciler;
use crate::lease::{expiry, heartbeat, LeaseService};
use crate::plugins::{role_infos, Catalog};
use crate::policy::PolicyEngine;
use crate::seal::Seal;
use crate::store::Store;

const SEAL_CHECK_KEY: &str = "seal_check";
const SEAL_CHECK_AAD: &[u8] = b"lessor\0seal_check";

/// A running daemon.
pub struct Running {
    pub addr: SocketAddr,
    pub store: Arc<dyn Store>,
    pub leases: LeaseService,
    /// Vendor objects against leases (`lessor reconcile`, scheduled passes).
    pub reconciler: Arc<Reconciler>,
    /// Customer API tokens, when `[customer_tokens]` is configured.
    pub customer_tokens: Option<Arc<CustomerTokens>>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Running {
    /// Stops accepting, lets in-flight requests and the expiry batch in hand
    /// finish, and waits for every task.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
        // The HTTP server has stopped: no introspection queues a use any
        // more, so this drain loses nothing.
        if let Some(ct) = &self.customer_tokens {
            ct.usage().flush().await;
        }
        // Nothing calls a plugin any more: stop their processes.
        self.leases.catalog.shutdown().await;
        let audit = &self.leases.audit;
        audit.note(Event::new("service.stop", "ok").actor(ActorInfo::system("lessor")));
        audit.shutdown().await;
        // Last: everything above may still write.
        self.store.close().await;
    }

    /// Waits until a shutdown signal (SIGINT/SIGTERM), then shuts down.
    pub async fn run_until_signal(self) {
        wait_for_signal().await;
        tracing::info!("shutting down");
        self.shutdown().await;
    }
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Opens the seal key and proves it is the one the store was sealed with.
pub async fn open_seal(cfg: &Config, store: &Arc<dyn Store>) -> anyhow::Result<Arc<Seal>> {
    let path = cfg.seal_key_path();
    let seal = Seal::load_or_create(&path, true)?;
    let check = seal.seal(SEAL_CHECK_AAD, b"lessor");
    let check_b64 = base64::engine::general_purpose::STANDARD.encode(&check);
    if !store.meta_put_if_absent(SEAL_CHECK_KEY, &check_b64).await? {
        let stored = store.meta_get(SEAL_CHECK_KEY).await?.unwrap_or_default();
        let raw = base64::engine::general_purpose::STANDARD
            .decode(stored)
            .map_err(|_| anyhow!("the store's seal check is corrupt"))?;
        seal.open(SEAL_CHECK_AAD, &raw).with_context(|| {
            format!("seal key {} does not open this store's secrets; refusing to start", path.display())
        })?;
    }
    Ok(Arc::new(seal))
}

/// Makes sure the admin token file holds the stored `bootstrap` admin
/// token (see [`crate::admin_tokens::ensure_file_token`]).
pub async fn ensure_admin_token(path: &Path, store: &Arc<dyn Store>) -> anyhow::Result<()> {
    Ok(crate::admin_tokens::ensure_file_token(path, store.as_ref()).await?)
}

/// The HTTP client plugins and JWKS fetches share.
pub fn http_client() -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .connect_timeout(Duration::from_secs(5))
        .user_agent(concat!("lessor/", env!("CARGO_PKG_VERSION")))
        .build()?)
}

/// How often root credentials are re-read from the store (retiring ends,
/// switches made elsewhere); issues check the active version anyway.
const ROOT_POLL: Duration = Duration::from_secs(2);

/// The key-encryption key of root credentials (`[kek]`, default the seal key).
pub fn open_kek(cfg: &Config, seal: &Arc<Seal>) -> anyhow::Result<Arc<Kek>> {
    let path = cfg.seal_key_path();
    let kek = Kek::from_config(cfg, || {
        Seal::load_or_create(&path, false).map_err(|e| crate::connections::kek::KekError::Config(e.to_string()))
    })?;
    tracing::debug!(kek_id = %kek.id(), seal_key_id = %seal.key_id(), "key-encryption key loaded");
    Ok(Arc::new(kek))
}

/// Builds everything from `cfg` and serves on `listener`.
pub async fn start(cfg: Config, listener: TcpListener) -> anyhow::Result<Running> {
    start_with_catalog(cfg, listener, None).await
}

/// [`start`], with the plugin catalogue given instead of built from the
/// config (tests run fake plugins this way).
pub async fn start_with_catalog(cfg: Config, listener: TcpListener, extra: Option<Arc<Catalog>>) -> anyhow::Result<Running> {
    start_inner(cfg, listener, extra, lessor_plugin::system_clock()).await
}

/// [`start`], with the clock customer tokens read (expiry, overlaps,
/// warnings) given: tests move time with it.
pub async fn start_with_clock(cfg: Config, listener: TcpListener, clock: lessor_plugin::Clock) -> anyhow::Result<Running> {
    start_inner(cfg, listener, None, clock).await
}

async fn start_inner(
    cfg: Config,
    listener: TcpListener,
    extra: Option<Arc<Catalog>>,
    clock: lessor_plugin::Clock,
) -> anyhow::Result<Running> {
    cfg.validate()?;
    // TLS files first: a bad certificate stops the start before anything.
    let tls = cfg.tls.as_ref().map(crate::tls::Tls::load).transpose()?;
    if tls.is_none() && !crate::tls::is_loopback(&cfg.listen) {
        tracing::warn!(listen = %cfg.listen, "serving plain HTTP on a non-loopback address (allow_plaintext): \
            put a TLS-terminating proxy in front, JWTs and credentials cross this hop in clear");
    }
    let store = crate::store::open_with(&cfg.store, cfg.leases.claim_timeout).await?;
    let seal = open_seal(&cfg, &store).await?;
    ensure_admin_token(&cfg.admin_token_path(), &store).await?;
    let audit = match cfg.audit_settings()? {
        Some(s) => Audit::open(&s)?,
        None => {
            tracing::warn!("the audit log is off ([audit] sink = \"off\")");
            Audit::disabled()
        }
    };
    // One HTTP client for plugins and JWKS fetches alike.
    let http = http_client()?;
    let catalog = match &extra {
        Some(x) => x.clone(),
        None => Arc::new(Catalog::build(&cfg, store.clone(), seal.clone(), http.clone()).await.map_err(|e| anyhow!(e))?),
    };
    // A client CA that is one of lessor's own pki CAs would make every
    // workload that can get a certificate an admin.
    if let Some(t) = &tls {
        t.refuse_own_cas(&catalog.own_cas().await.map_err(|e| anyhow!(e))?)?;
    }
    let policy = Arc::new(PolicyEngine::load(&cfg.policies, role_infos(&cfg))?);
    for w in policy.current().warnings() {
        tracing::warn!(warning = %w, "policy warning");
    }
    let verifier = Arc::new(Verifier::new(&cfg.issuers, cfg.limits.max_jwt_bytes, http.clone()).map_err(|e| anyhow!(e))?);
    // Root credentials before anything is served: a store written under
    // another key-encryption key stops the start here, issuing nothing.
    let kek = open_kek(&cfg, &seal)?;
    let roots = Arc::new(RootCredentials::new(
        store.clone(),
        kek,
        catalog.connections.clone(),
        ConnectionMeta::all(&cfg),
        policy.clone(),
        audit.clone(),
        seal.derive_hmac_key(crate::connections::FINGERPRINT_KEY_PURPOSE),
    )
    .with_timeouts(cfg.leases.call_timeout(), cfg.leases.root_timeout));
    roots.start().await.context("root credentials")?;
    let leases = LeaseService::new(store.clone(), catalog, policy.clone(), cfg.leases.clone()).with_quotas(cfg.quotas.clone())
        .with_audit(audit.clone())
        .with_roots(roots.clone())
        .with_breakers(crate::lease::breaker::Breakers::new(
            &cfg.leases,
            cfg.connections.iter().map(|(name, c)| (name.as_str(), c.revoke_concurrency)),
        ));
    leases.init_metrics();
    let started = Event::new("service.start", "ok")
        .actor(ActorInfo::system("lessor"))
        .detail("version", env!("CARGO_PKG_VERSION"))
        .detail("store", store.backend())
        .detail("policies_version", policy.current().version.clone())
        .detail("policies", policy.current().len())
        .detail("roles", leases.catalog.roles.len())
        .detail("issuers", cfg.issuers.len());
    if let Err(e) = audit.record(started).await {
        // Serve anyway: every request that needs an entry is refused (503)
        // until the sink works again (e.g. after SIGHUP).
        tracing::error!(error = %e, "audit log unavailable at start; credential requests will be refused");
    }

    let (shutdown, rx) = watch::channel(false);
    let mut tasks = vec![
        tokio::spawn(expiry::run(leases.clone(), rx.clone())),
        tokio::spawn(heartbeat::run(leases.clone(), rx.clone())),
        tokio::spawn(crate::lease::retention::run(leases.clone(), rx.clone())),
        tokio::spawn(roots.run(ROOT_POLL, rx.clone())),
    ];
    let reconciler = Arc::new(Reconciler::new(
        store.clone(),
        leases.catalog.clone(),
        audit.clone(),
        cfg.reconcile.clone(),
        cfg.leases.revoke_timeout,
    ));
    tasks.push(tokio::spawn(reconciler.clone().run(rx.clone())));
    // Register SIGHUP before serving, so a reload signal never meets the
    // default action (terminate).
    #[cfg(unix)]
    let hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    #[cfg(not(unix))]
    let hup = None;
    tasks.push(tokio::spawn(watch_policies(policy.clone(), audit.clone(), cfg.policy_poll, hup, rx.clone())));

    let admin_requires_client_cert = cfg.tls.as_ref().is_some_and(|t| t.admin_requires_client_cert);
    let brake = Arc::new(crate::http::brake::AuthBrake::new(
        cfg.limits.auth_failures_per_second,
        cfg.limits.auth_failure_delay,
    ));
    let vault = cfg.vault_api.clone().map(|v| {
        // (A kind with no registration never gets here: the catalog refused it.)
        let kinds = cfg
            .connections
            .iter()
            .map(|(n, c)| {
                let shape = crate::plugins::registration(&c.plugin).map_or(lessor_plugin::VaultShape::Creds, |r| r.vault);
                (n.clone(), (c.plugin.clone(), shape))
            })
            .collect();
        Arc::new(crate::http::vault::VaultState::new(v, &kinds, cfg.limits.max_body_bytes))
    });
    // People sign-in: client secrets are read now, so a missing or
    // world-readable one stops the start.
    let people = match &cfg.people {
        Some(pc) => {
            let public = cfg.public_url();
            let secure = public.starts_with("https://") || !crate::tls::is_loopback(&cfg.listen);
            Some(Arc::new(
                crate::people::People::new(pc, &public, secure, seal.clone(), store.clone(), leases.audit.clone(), http.clone())
                    .map_err(|e| anyhow!(e))?,
            ))
        }
        None => None,
    };
    let customer_tokens = match &cfg.customer_tokens {
        None => None,
        Some(ct) => {
            let catalogue = cfg.customer_token_catalogue()?;
            // Cedar decides people's token actions, with the live policy set.
            let authz = Arc::new(crate::customer_tokens::authz::CedarTokens::new(policy.clone()));
            let svc = CustomerTokens::new(store.clone(), audit.clone(), ct.clone(), catalogue, authz, clock)
                .map_err(|e| anyhow!("config: {e}"))?;
            let svc = Arc::new(svc);
            tasks.push(tokio::spawn(svc.clone().run(rx.clone())));
            tasks.push(tokio::spawn(svc.usage().clone().run(ct.usage_flush_interval, rx.clone())));
            Some(svc)
        }
    };
    let state = AppState {
        leases: leases.clone(),
        verifier,
        store: store.clone(),
        admin_requires_client_cert,
        brake,
        vault,
        reconciler: reconciler.clone(),
        people,
        customer_tokens: customer_tokens.clone(),
    };
    let app = router(state, &cfg.limits);
    let addr = listener.local_addr()?;
    match (tls, &cfg.tls) {
        (Some(tls), Some(settings)) => {
            tasks.push(tokio::spawn(crate::tls::watch(tls.clone(), settings.reload_interval, rx.clone())));
            tasks.push(tokio::spawn(crate::tls::serve(listener, app, tls, rx.clone())));
        }
        _ => {
            let mut srx = rx.clone();
            tasks.push(tokio::spawn(async move {
                let served = axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>())
                    .with_graceful_shutdown(async move {
                        let _ = srx.wait_for(|s| *s).await;
                    })
                    .await;
                if let Err(e) = served {
                    tracing::error!(error = %e, "HTTP server failed");
                }
            }));
        }
    }
    tracing::info!(%addr, store = store.backend(), policies = policy_count(&leases), "lessor is serving");
    Ok(Running { addr, store, leases, reconciler, customer_tokens, shutdown, tasks })
}

fn policy_count(l: &LeaseService) -> usize {
    l.policy.current().len()
}

/// Reloads policies when their files change or on SIGHUP. A set that fails
/// to validate is logged and the old one stays.
#[cfg(unix)]
type Hangup = Option<tokio::signal::unix::Signal>;
#[cfg(not(unix))]
type Hangup = Option<()>;

async fn watch_policies(
    engine: Arc<PolicyEngine>,
    audit: Audit,
    every: Duration,
    mut hup: Hangup,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut last = engine.fingerprint();
    loop {
        #[cfg(unix)]
        let hup_fut = async {
            match hup.as_mut() {
                Some(h) => {
                    h.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        #[cfg(not(unix))]
        let hup_fut = {
            let _ = &mut hup;
            std::future::pending::<()>()
        };
        let forced = tokio::select! {
            _ = tokio::time::sleep(every) => false,
            _ = hup_fut => true,
            r = shutdown.changed() => {
                if r.is_err() || *shutdown.borrow() { break; }
                false
            }
        };
        let system = ActorInfo::system(if forced { "sighup" } else { "policy-watcher" });
        if forced {
            // Log rotation: the renamed file is closed with a checkpoint and a
            // new one continues the chain.
            let ev = match audit.reopen().await {
                Ok(()) => Event::new("audit.reopen", "ok"),
                Err(e) => {
                    tracing::error!(error = %e, "audit file reopen failed");
                    Event::new("audit.reopen", "error").error("audit_unavailable", e.to_string())
                }
            };
            audit.note(ev.actor(system.clone()));
        }
        let fp = engine.fingerprint();
        if !forced && fp == last {
            continue;
        }
        last = fp;
        let ev = Event::new("policy.reload", "ok").actor(system);
        match engine.reload() {
            Ok(changed) => {
                if changed {
                    crate::telemetry::metrics().policy_reloads.with_label_values(&["ok"]).inc();
                    tracing::info!(version = %engine.current().version, count = engine.current().len(), "policies reloaded");
                }
                let ev = ev.detail("changed", changed).detail("policies_version", engine.current().version.clone());
                audit.note(ev.detail("policies", engine.current().len()));
            }
            Err(e) => {
                crate::telemetry::metrics().policy_reloads.with_label_values(&["error"]).inc();
                tracing::error!(error = %e, "policy reload failed; keeping the previous policies");
                let mut ev = ev.error("policy_invalid", e.to_string());
                ev.outcome = "error";
                audit.note(ev.detail("policies_version", engine.current().version.clone()));
            }
        }
    }
}
