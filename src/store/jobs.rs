//! Bulk revocation jobs: a filter, who asked, and progress counted from
//! the leases the job took. [`JobStore`] is the job part of every
//! [`Store`](super::Store).
//!
//! Which clock decides: the caller's `now` (`start_revoke_job` makes the
//! job's leases due at `now` and records `created_at`); the store reads
//! no clock.
//!
//! Must not import: http, policy, identity.

use std::collections::BTreeMap;
use std::str::FromStr;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::{LeaseState, StoreError};

/// Which leases a bulk revocation takes (all given conditions must hold).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct RevokeFilter {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// Mapped claims that must be equal (e.g. `repository` = `acme/api`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub claims: BTreeMap<String, String>,
    /// Only leases issued at or after this instant (unix ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issued_after_ms: Option<i64>,
}

impl RevokeFilter {
    pub fn is_empty(&self) -> bool {
        self.role.is_none()
            && self.issuer.is_none()
            && self.subject.is_none()
            && self.claims.is_empty()
            && self.issued_after_ms.is_none()
    }
}

/// A bulk revocation job and its progress, counted from its leases.
#[derive(Debug, Clone, Serialize)]
pub struct JobStatus {
    pub id: String,
    pub kind: String,
    pub filter: RevokeFilter,
    pub created_by: String,
    pub created_at_ms: i64,
    /// Live leases the job took.
    pub total: i64,
    /// Of those, revoked (or ended) so far.
    pub done: i64,
    /// Waiting for their revocation.
    pub pending: i64,
    /// Whose revocation failed and is being retried.
    pub failing: i64,
    /// Ended without being revoked: their plugin cannot revoke, so each
    /// credential stays valid until its own expiry (not counted in `done`).
    pub unrevocable: i64,
    /// The latest expiry among those (unix ms): when the last of them ends.
    pub unrevocable_until_ms: Option<i64>,
}

impl JobStatus {
    /// Adds `n` of the job's leases in `state` to the progress.
    pub fn count(&mut self, state: &str, n: i64) -> Result<(), StoreError> {
        match LeaseState::from_str(state).map_err(StoreError::Corrupt)? {
            LeaseState::Revoked | LeaseState::Expired => self.done += n,
            LeaseState::Pending | LeaseState::Active => self.pending += n,
            LeaseState::RevokeFailed => self.failing += n,
        }
        Ok(())
    }

    /// Adds `n` of the job's leases that ended unrevoked (see
    /// [`Lease::unrevocable`]), the latest of them expiring at `until_ms`.
    pub fn count_unrevocable(&mut self, n: i64, until_ms: Option<i64>) {
        self.unrevocable += n;
        self.unrevocable_until_ms = self.unrevocable_until_ms.max(until_ms);
    }
}

/// Bulk revocation jobs.
#[async_trait]
pub trait JobStore: Send + Sync {
    /// Records a bulk revocation job and schedules every live lease matching
    /// `filter` for revocation (due now, reason revoked, tagged with the
    /// job). Returns how many it took.
    async fn start_revoke_job(
        &self,
        id: &str,
        filter: &RevokeFilter,
        created_by: &str,
        now: OffsetDateTime,
    ) -> Result<i64, StoreError>;

    /// A job's progress, or None if there is no such job.
    async fn job_status(&self, id: &str) -> Result<Option<JobStatus>, StoreError>;
}
