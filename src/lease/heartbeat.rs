//! The replica heartbeat: every `claim_timeout / 3` (and at once when the
//! policy set changes) this process records itself in the store's
//! `replicas` table with the policy version it decides with, and renews the
//! expiry-work claims it holds (PostgreSQL). A live replica therefore never
//! loses work in hand, however slow a vendor is; a dead one's claims time
//! out after `claim_timeout` and the others take them over.
//!
//! It also publishes how many replicas are alive and how many distinct
//! policy versions they run (`lessor_replicas`, `lessor_policy_versions`):
//! more than one version for longer than a reload takes means replicas
//! decide differently (a file not deployed everywhere).

use std::time::Duration;

use tokio::sync::watch;

use super::LeaseService;
use crate::store::Replica;

/// How often the loop looks for a policy change between heartbeats.
const POLICY_CHECK: Duration = Duration::from_millis(200);

/// Runs until `shutdown` turns true, then removes this replica's row.
pub async fn run(svc: LeaseService, mut shutdown: watch::Receiver<bool>) {
    let every = svc.settings.heartbeat();
    let me = Replica {
        id: svc.store.replica_id().to_owned(),
        host: hostname(),
        pid: i64::from(std::process::id()),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        policy_version: String::new(),
        started_at_ms: crate::store::to_ms(svc.started_at()),
        seen_at_ms: 0,
    };
    let mut last_beat: Option<tokio::time::Instant> = None;
    let mut last_version = String::new();
    loop {
        let version = svc.policy.current().version.clone();
        let due = last_beat.is_none_or(|t| t.elapsed() >= every);
        if due || version != last_version {
            let r = Replica { policy_version: version.clone(), ..me.clone() };
            match svc.store.heartbeat(&r).await {
                Ok(()) => {
                    last_version = version;
                    publish(&svc).await;
                }
                Err(e) => tracing::warn!(error = %e, "replica heartbeat failed; will retry"),
            }
            last_beat = Some(tokio::time::Instant::now());
        }
        let wait = POLICY_CHECK.min(every);
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            r = shutdown.changed() => if r.is_err() || *shutdown.borrow() { break },
        }
    }
    if let Err(e) = svc.store.remove_replica().await {
        tracing::warn!(error = %e, "could not remove this replica's heartbeat row");
    }
    tracing::debug!("heartbeat stopped");
}

/// Live replicas and their distinct policy versions, as metrics.
async fn publish(svc: &LeaseService) {
    if let Ok(live) = svc.store.replicas(svc.settings.claim_timeout).await {
        let m = crate::telemetry::metrics();
        m.replicas.set(live.len() as i64);
        let versions: std::collections::BTreeSet<&str> = live.iter().map(|r| r.policy_version.as_str()).collect();
        m.policy_versions.set(versions.len() as i64);
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "unknown".into())
}

