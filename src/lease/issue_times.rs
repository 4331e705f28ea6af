//! How long each role's vendor takes to issue (a moving average), so the
//! store may put off syncing a pending lease row while the vendor works
//! and share that sync with other writes
//! ([`crate::store::LeaseStore::insert_pending_within`]).
//!
//! Must not import: http, store, policy.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

/// The longest issue call an average takes in: one that hangs (until the
/// call timeout) must not teach the store to wait long.
const LONGEST: Duration = Duration::from_millis(100);

/// Per role, the moving average of its issue calls, in microseconds. Keys
/// are configured role names, so the map is bounded by the configuration.
#[derive(Default)]
pub(super) struct IssueTimes {
    by_role: Mutex<HashMap<String, u64>>,
}

impl IssueTimes {
    /// How long the store may put off the sync of a pending row of `role`:
    /// nine tenths of its vendor's typical issue time, so that the rows
    /// committed in that time share one sync, and it has mostly ended when
    /// the caller waits for it (a caller whose call ends sooner asks for
    /// the sync then and waits for it: 0.07 to 0.2 ms on average beside
    /// MariaDB); zero for a role not seen yet.
    ///
    /// Why not half, as before: each sync is a write of the WAL, of its
    /// inode and a cache flush on the disk the vendor may share. Beside
    /// MariaDB (README, the MySQL bench) half took 0.23 syncs per issue,
    /// nine tenths 0.16, and the server's accounts waited less for the disk.
    pub(super) fn sync_within(&self, role: &str) -> Duration {
        let us = self.by_role.lock().unwrap_or_else(PoisonError::into_inner).get(role).copied().unwrap_or(0);
        Duration::from_micros(us / 10 * 9)
    }

    /// Records an issue call of `role` that took `took` (bounded by
    /// [`LONGEST`]): the first sets the average, each later one moves it an
    /// eighth of the way.
    pub(super) fn record(&self, role: &str, took: Duration) {
        let us = u64::try_from(took.min(LONGEST).as_micros()).unwrap_or(0);
        let mut m = self.by_role.lock().unwrap_or_else(PoisonError::into_inner);
        match m.get_mut(role) {
            Some(avg) => *avg = (*avg * 7 + us) / 8,
            None => {
                m.insert(role.to_owned(), us);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nine_tenths_of_the_moving_average_bounded_and_nothing_for_a_role_not_seen() {
        let t = IssueTimes::default();
        assert_eq!(t.sync_within("db/app"), Duration::ZERO);
        t.record("db/app", Duration::from_millis(4));
        assert_eq!(t.sync_within("db/app"), Duration::from_micros(3_600));
        t.record("db/app", Duration::from_millis(12));
        // (4 * 7 + 12) / 8 = 5 ms.
        assert_eq!(t.sync_within("db/app"), Duration::from_micros(4_500));
        assert_eq!(t.sync_within("token/plain"), Duration::ZERO, "per role");
        t.record("slow/hung", Duration::from_secs(30));
        assert_eq!(t.sync_within("slow/hung"), LONGEST / 10 * 9, "a hung call counts as the bound");
    }
}
