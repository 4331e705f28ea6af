//! A role's certificate revocation list: the entries kept in the
//! connection's state (`crl/<role>/<serial>`, plus `crl-generation/<role>`,
//! which changes on every revocation), and the signed CRL served from memory.
//!
//! What is listed: certificates revoked before their `notAfter`, each until
//! `notAfter + crl_retention`; then its entry is deleted. A certificate that
//! simply reached its `notAfter` is never listed (it is expired, not revoked).
//!
//! Serving: the signed document is kept in memory and rebuilt (one store list
//! and one signature) only when something may have changed: a revocation on
//! this replica, a changed generation in the store (another replica revoked;
//! compared at most once per `crl_refresh`, one key read), an entry whose
//! retention ends, or half-way to the CRL's `nextUpdate`. A request costs a
//! lock and a copy otherwise, however many arrive.
//!
//! Must not know about the core's store, HTTP layer or policy engine: all it
//! uses is [`StateStore`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration as StdDuration;

use lessor_plugin::{PluginError, StateStore};
use rcgen::{CertificateRevocationListParams, RevokedCertParams, SerialNumber};
use serde::{Deserialize, Serialize};
use time::{Duration, OffsetDateTime};
use tracing::{debug, warn};

use crate::ca::Ca;

/// A CRL's `nextUpdate` is this far after its `thisUpdate`.
pub(crate) const CRL_VALIDITY: Duration = Duration::hours(1);
/// A served CRL is re-signed once this much of its validity has passed, so
/// relying parties always fetch one with at least half of it left.
const REBUILD_AFTER: Duration = Duration::minutes(30);
/// Entries past their retention deleted by one rebuild, at most; the rest
/// go with the next one (they are not listed meanwhile).
const PRUNE_BATCH: usize = 256;

/// The time now, as the plugin sees it: the core's clock (tests move it).
pub use lessor_plugin::{system_clock, Clock};

/// What `crl/<role>/<serial>` holds.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Revoked {
    pub(crate) revoked_at: i64,
    pub(crate) not_after: i64,
}

pub(crate) fn entry_key(role: &str, serial_hex: &str) -> String {
    format!("crl/{role}/{serial_hex}")
}

fn entries_prefix(role: &str) -> String {
    format!("crl/{role}/")
}

/// Outside `crl/<role>/`, so listing the entries never meets it.
pub(crate) fn generation_key(role: &str) -> String {
    format!("crl-generation/{role}")
}

/// A fresh generation value: random, so that two replicas revoking at once
/// never write the same one.
pub(crate) fn new_generation() -> Vec<u8> {
    hex::encode(rand::random::<[u8; 16]>()).into_bytes()
}

/// Signs a CRL for `ca` listing `revoked`.
pub(crate) fn sign(
    role: &str,
    ca: &Ca,
    now: OffsetDateTime,
    revoked: Vec<RevokedCertParams>,
) -> Result<Vec<u8>, PluginError> {
    let crl_number = u64::try_from(now.unix_timestamp_nanos() / 1_000_000).unwrap_or(0);
    let params = CertificateRevocationListParams {
        this_update: now,
        next_update: now + CRL_VALIDITY,
        crl_number: SerialNumber::from(crl_number),
        issuing_distribution_point: None,
        revoked_certs: revoked,
        key_identifier_method: ca.crl_key_id.clone(),
    };
    let crl = params
        .signed_by(&ca.issuer)
        .map_err(|e| PluginError::Permanent(format!("signing the CRL of role `{role}` failed: {e}")))?;
    Ok(crl.der().to_vec())
}

/// One signed CRL and what it was built from.
#[derive(Clone)]
struct Built {
    der: Arc<[u8]>,
    /// [`CrlCache::local_changes`] when it was built.
    local_changes: u64,
    /// `crl-generation/<role>` read before the entries were listed.
    generation: Option<Vec<u8>>,
    /// When the generation was last found unchanged.
    checked_at: OffsetDateTime,
    /// Half-way to `nextUpdate`, or when the first listed entry's retention
    /// ends, whichever is earlier.
    rebuild_at: OffsetDateTime,
    next_update: OffsetDateTime,
}

impl Built {
    fn fresh(&self, now: OffsetDateTime, local_changes: u64, refresh: Duration) -> bool {
        self.local_changes == local_changes && now < self.rebuild_at && now < self.checked_at + refresh
    }

    /// Good enough to serve while another request refreshes it, or when the
    /// store cannot be read: it has every revocation made here and is valid.
    fn servable(&self, now: OffsetDateTime, local_changes: u64) -> bool {
        self.local_changes == local_changes && now < self.next_update
    }
}

/// What a rebuild needs besides the cache.
pub(crate) struct Source<'a> {
    pub(crate) role: &'a str,
    pub(crate) ca: &'a Ca,
    pub(crate) state: &'a dyn StateStore,
    pub(crate) retention: StdDuration,
    pub(crate) refresh: StdDuration,
    pub(crate) clock: &'a Clock,
}

/// The in-memory CRL of one role.
pub(crate) struct CrlCache {
    current: RwLock<Option<Built>>,
    /// One rebuild at a time; requests meanwhile get the current document.
    rebuild: tokio::sync::Mutex<()>,
    /// Revocations made through this plugin instance.
    local_changes: AtomicU64,
}

impl std::fmt::Debug for CrlCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CrlCache")
            .field("local_changes", &self.local_changes.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl CrlCache {
    pub(crate) fn new() -> Self {
        CrlCache {
            current: RwLock::new(None),
            rebuild: tokio::sync::Mutex::new(()),
            local_changes: AtomicU64::new(0),
        }
    }

    /// A revocation was recorded: the next request rebuilds.
    pub(crate) fn changed(&self) {
        self.local_changes.fetch_add(1, Ordering::SeqCst);
    }

    fn get(&self) -> Option<Built> {
        match self.current.read() {
            Ok(g) => g.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn set(&self, built: Built) {
        match self.current.write() {
            Ok(mut g) => *g = Some(built),
            Err(poisoned) => *poisoned.into_inner() = Some(built),
        }
    }

    /// The signed CRL (DER).
    pub(crate) async fn document(&self, src: &Source<'_>) -> Result<Vec<u8>, PluginError> {
        let refresh = Duration::try_from(src.refresh).unwrap_or(Duration::MAX);
        let now = (src.clock)();
        let local = self.local_changes.load(Ordering::SeqCst);
        let cached = self.get();
        if let Some(b) = cached.as_ref().filter(|b| b.fresh(now, local, refresh)) {
            return Ok(b.der.to_vec());
        }
        let _one_at_a_time = match self.rebuild.try_lock() {
            Ok(guard) => guard,
            Err(_) => {
                if let Some(b) = cached.as_ref().filter(|b| b.servable(now, local)) {
                    return Ok(b.der.to_vec());
                }
                self.rebuild.lock().await
            }
        };
        // Whoever held the lock may have just rebuilt it.
        let now = (src.clock)();
        let local = self.local_changes.load(Ordering::SeqCst);
        let cached = self.get();
        if let Some(b) = cached.as_ref().filter(|b| b.fresh(now, local, refresh)) {
            return Ok(b.der.to_vec());
        }
        // Read before listing: a revocation listed after this read changes
        // the generation after it too, so the next check sees it.
        let generation = match src.state.get(&generation_key(src.role)).await {
            Ok(g) => g,
            Err(e) => {
                return match cached.filter(|b| b.servable(now, local)) {
                    Some(b) => {
                        warn!(role = src.role, error = %e, "cannot check the CRL generation; serving the current CRL");
                        let der = b.der.to_vec();
                        self.set(Built { checked_at: now, ..b });
                        Ok(der)
                    }
                    None => Err(e.into()),
                };
            }
        };
        if let Some(b) = cached {
            if b.local_changes == local && now < b.rebuild_at && b.generation == generation {
                let der = b.der.to_vec();
                self.set(Built { checked_at: now, ..b });
                return Ok(der);
            }
        }
        let built = rebuild(src, local, generation, now).await?;
        let der = built.der.to_vec();
        self.set(built);
        Ok(der)
    }
}

/// Lists the entries, deletes those past retention, signs the rest.
async fn rebuild(
    src: &Source<'_>,
    local_changes: u64,
    generation: Option<Vec<u8>>,
    now: OffsetDateTime,
) -> Result<Built, PluginError> {
    let retention = i64::try_from(src.retention.as_secs()).unwrap_or(i64::MAX);
    let now_ts = now.unix_timestamp();
    let mut revoked = Vec::new();
    let mut first_drop: Option<i64> = None;
    let mut past = Vec::new();
    for (key, value) in src.state.list(&entries_prefix(src.role)).await? {
        let serial_hex = key.rsplit('/').next().unwrap_or_default();
        let Some(serial) = hex::decode(serial_hex)
            .ok()
            .filter(|b| !b.is_empty() && b.len() <= 20)
        else {
            warn!(role = src.role, key = %key, "ignoring a CRL entry whose key is not a serial number");
            continue;
        };
        let revocation_time = match serde_json::from_slice::<Revoked>(&value) {
            Ok(entry) => {
                let drop_at = entry.not_after.saturating_add(retention);
                if drop_at <= now_ts {
                    past.push(key);
                    continue;
                }
                first_drop = Some(first_drop.map_or(drop_at, |d| d.min(drop_at)));
                OffsetDateTime::from_unix_timestamp(entry.revoked_at).unwrap_or(now)
            }
            Err(e) => {
                // Keep listing it: dropping a revoked serial is the unsafe way to fail.
                warn!(role = src.role, key = %key, error = %e, "CRL entry is unreadable; listing the serial anyway");
                now
            }
        };
        revoked.push(RevokedCertParams {
            serial_number: SerialNumber::from_slice(&serial),
            revocation_time,
            reason_code: None,
            invalidity_date: None,
        });
    }
    let mut pruned = 0;
    for key in past.iter().take(PRUNE_BATCH) {
        match src.state.delete(key).await {
            Ok(()) => pruned += 1,
            Err(e) => {
                warn!(role = src.role, error = %e, "cannot delete CRL entries past retention; trying again at the next rebuild");
                break;
            }
        }
    }
    let listed = revoked.len();
    let der = sign(src.role, src.ca, now, revoked)?;
    let mut rebuild_at = now + REBUILD_AFTER;
    if let Some(t) = first_drop.and_then(|d| OffsetDateTime::from_unix_timestamp(d).ok()) {
        rebuild_at = rebuild_at.min(t);
    }
    debug!(role = src.role, listed, pruned, "signed the CRL");
    Ok(Built {
        der: der.into(),
        local_changes,
        generation,
        checked_at: now,
        rebuild_at,
        next_update: now + CRL_VALIDITY,
    })
}
