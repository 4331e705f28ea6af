//! The conformance kit: the same checks, run against every plugin.
//!
//! A plugin's tests build the plugin against its real vendor (or the vendor's
//! real software on loopback), describe one request ([`Case`]) and a [`Probe`]
//! that asks the vendor whether a credential works right now, then call
//! [`run`]. Each failed check is reported with what was expected.

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use secrecy::{ExposeSecret, SecretString};
use time::OffsetDateTime;

use crate::{Handle, Issued, IssueRequest, LeaseId, LeaseRef, Plugin, PluginError, RenewRequest, Workload};

/// One request to issue, as the core would send it.
#[derive(Debug, Clone)]
pub struct Case {
    pub role: String,
    pub scopes: Vec<String>,
    pub params: serde_json::Map<String, serde_json::Value>,
    pub workload: Workload,
    pub ttl: Duration,
}

/// Asks the vendor whether a credential works right now.
#[async_trait]
pub trait Probe: Send + Sync {
    async fn works(
        &self,
        public: &serde_json::Map<String, serde_json::Value>,
        secret: &BTreeMap<String, SecretString>,
        handle: &Handle,
    ) -> Result<bool, String>;
}

/// What the kit observed, for plugin tests that want to check more.
#[derive(Debug)]
pub struct Report {
    pub checks_passed: Vec<&'static str>,
}

fn lease_id(tag: &str) -> LeaseId {
    // Unique per call without pulling in a RNG: time + tag.
    let nanos = OffsetDateTime::now_utc().unix_timestamp_nanos();
    LeaseId::new(format!("conf{tag}{nanos:x}"))
}

async fn issue(plugin: &dyn Plugin, case: &Case, id: LeaseId) -> Result<(Issued, OffsetDateTime), String> {
    let expires_at = OffsetDateTime::now_utc() + case.ttl;
    let issued = plugin
        .issue(IssueRequest {
            lease_id: id,
            role: case.role.clone(),
            workload: case.workload.clone(),
            scopes: case.scopes.clone(),
            expires_at,
            params: case.params.clone(),
        })
        .await
        .map_err(|e| format!("issue failed: {e}"))?;
    Ok((issued, expires_at))
}

/// Runs every check; the first that fails is returned as the error.
pub async fn run(plugin: &dyn Plugin, case: Case, probe: &dyn Probe) -> Result<Report, String> {
    let mut passed = Vec::new();
    let caps = plugin.capabilities();

    let v = plugin.validate().await.map_err(|e| format!("validate failed: {e}"))?;
    if v.identity.trim().is_empty() {
        return Err("validate returned an empty identity".into());
    }
    passed.push("validate names an identity");

    let id = lease_id("a");
    let (issued, expires_at) = issue(plugin, &case, id.clone()).await?;
    if issued.expires_at > expires_at + Duration::from_secs(1) {
        return Err(format!(
            "credential ends at {} but the lease ends at {expires_at}",
            issued.expires_at
        ));
    }
    passed.push("credential ends no later than its lease");

    let debug = format!("{issued:?}");
    for (name, value) in &issued.secret {
        let v = value.expose_secret();
        if v.len() >= 8 && debug.contains(v) {
            return Err(format!("Debug of Issued shows secret field `{name}`"));
        }
    }
    let public = serde_json::to_string(&issued.public).map_err(|e| e.to_string())?;
    for (name, value) in &issued.secret {
        let v = value.expose_secret();
        if v.len() >= 8 && public.contains(v) {
            return Err(format!("secret field `{name}` is repeated in the public fields"));
        }
    }
    passed.push("secrets stay out of Debug and public fields");

    if !probe.works(&issued.public, &issued.secret, &issued.handle).await? {
        return Err("a freshly issued credential does not work at the vendor".into());
    }
    passed.push("issued credential works");

    let lease = LeaseRef {
        lease_id: id.clone(),
        role: case.role.clone(),
        handle: Some(issued.handle.clone()),
        expires_at,
        root_version: None,
    };
    let longer = expires_at + Duration::from_secs(60);
    match plugin.renew(RenewRequest { lease: lease.clone(), expires_at: longer }).await {
        Ok(new_exp) if caps.can_renew => {
            if new_exp < expires_at {
                return Err(format!("renew moved expiry backwards to {new_exp}"));
            }
            if new_exp > longer + Duration::from_secs(1) {
                return Err(format!("renew extended past the requested {longer}: {new_exp}"));
            }
            passed.push("renew extends the credential");
        }
        Ok(_) => return Err("renew succeeded although capabilities say can_renew = false".into()),
        Err(PluginError::Unsupported(_)) if !caps.can_renew => passed.push("renew is refused as unsupported"),
        Err(e) => return Err(format!("renew failed: {e}")),
    }

    plugin.revoke(&lease).await.map_err(|e| format!("revoke failed: {e}"))?;
    if caps.can_revoke() && probe.works(&issued.public, &issued.secret, &issued.handle).await? {
        return Err("credential still works after revoke".into());
    }
    passed.push("revoke takes the credential back");

    plugin
        .revoke(&lease)
        .await
        .map_err(|e| format!("revoking twice failed (must be idempotent): {e}"))?;
    passed.push("revoke twice is Ok");

    let never = LeaseRef {
        lease_id: lease_id("n"),
        role: case.role.clone(),
        handle: None,
        expires_at,
        root_version: None,
    };
    plugin
        .revoke(&never)
        .await
        .map_err(|e| format!("revoking a lease that was never issued failed: {e}"))?;
    passed.push("revoke of an unknown lease is Ok");

    // A crash between "the vendor created it" and "the lease turned active":
    // the core only knows the lease id. Revoking by id must still work.
    let crash_id = lease_id("c");
    let (crashed, crash_exp) = issue(plugin, &case, crash_id.clone()).await?;
    plugin
        .revoke(&LeaseRef {
            lease_id: crash_id,
            role: case.role.clone(),
            handle: None,
            expires_at: crash_exp,
            root_version: None,
        })
        .await
        .map_err(|e| format!("revoking by lease id alone failed: {e}"))?;
    if caps.can_revoke() && probe.works(&crashed.public, &crashed.secret, &crashed.handle).await? {
        return Err("a credential revoked by lease id alone (no handle) still works".into());
    }
    passed.push("revoke by lease id alone takes the credential back");

    Ok(Report { checks_passed: passed })
}

/// Checks that `build` makes a plugin that judges expiry by the context's
/// clock, not the system's: with that clock a day ahead, an issue and a
/// renew of `role` good by the wall clock must be refused as in the past
/// (`InvalidRequest`), before any vendor is asked. `build` gets the context
/// to build with.
pub async fn expiry_uses_the_context_clock<P, F>(role: &str, build: F) -> Result<(), String>
where
    P: Plugin,
    F: FnOnce(crate::PluginContext) -> P,
{
    let tomorrow = OffsetDateTime::now_utc() + time::Duration::days(1);
    let ctx = crate::PluginContext {
        clock: std::sync::Arc::new(move || tomorrow),
        ..crate::PluginContext::for_tests("conformance", "https://lessor.test")
    };
    let p = build(ctx);
    let in_ten_minutes = OffsetDateTime::now_utc() + Duration::from_secs(600);
    let lease_id = LeaseId::new("lse_0123456789abcdef0123456789abcdef");
    let req = IssueRequest {
        lease_id: lease_id.clone(),
        role: role.into(),
        workload: Workload::default(),
        scopes: vec![],
        expires_at: in_ten_minutes,
        params: Default::default(),
    };
    let lease = LeaseRef { lease_id, role: role.into(), handle: None, expires_at: in_ten_minutes, root_version: None };
    let issued = p.issue(req).await.map(|_| ());
    let renewed = p.renew(RenewRequest { lease, expires_at: in_ten_minutes }).await.map(|_| ());
    for (call, r) in [("issue", issued), ("renew", renewed)] {
        match r {
            Err(PluginError::InvalidRequest(m)) if m.contains("is not in the future") => {}
            other => return Err(format!("{call} with the context's clock a day ahead: expected \"not in the future\", got {other:?}")),
        }
    }
    Ok(())
}
