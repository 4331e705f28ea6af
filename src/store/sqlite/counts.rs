//! Live-lease counts of a SQLite store, kept in memory by its writer: by
//! role, plugin and state; active leases by expiry minute; live leases per
//! workload. What `/metrics` and the quotas read, in O(1) (O(log n) for
//! the fullest workload), never the leases.
//!
//! Why memory, not tables as on PostgreSQL: one process owns a SQLite
//! store (its lock file) and every write goes through its one writer, so
//! the counts need no sharing; kept in tables by triggers, they were most
//! of the pages each lease write put in the WAL (measured: about 40 us of
//! CPU per credential split, 90 shared, and 15% of the token role's
//! rate). The counting stays in SQLite: TEMP triggers on the writer's
//! connection, one per kind of change, hand each live row's before and
//! after to `lessor_lease_change(...)`, which works out what changes; the
//! writer applies a transaction's changes at
//! its commit, before answering any of its writes, and drops those of a
//! statement or savepoint that was undone. At open, the counts are read
//! once from the leases, in one pass over the live ones ([`load`]).
//!
//! Edits to the database from outside lessor while it runs are not counted
//! until the next start.
//!
//! Workloads are counted under a 64-bit keyed hash of issuer and subject
//! (random keys per process), not their names: a million workloads with a
//! lease each took about 95 MiB as names and take about 25 MiB so (`cargo
//! bench --bench engine` part 2). Two workloads whose keys collide (about
//! one chance in 3 * 10^7 among a million, and not something a caller can
//! aim for without the keys) would share a count: a quota would then
//! refuse early, never let more through.
//!
//! Must not import: http, policy, identity.

use std::collections::hash_map::RandomState;
use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasher, Hash, Hasher};
use std::str::FromStr;
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use rusqlite::functions::FunctionFlags;

use super::super::{LeaseCounts, LeaseState, QuotaCounts, RoleCounts, StoreError};
// The live states in SQL, as the store's queries test them.
use super::LIVE;

/// One change a trigger reported, applied at its transaction's commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(in crate::store) enum Delta {
    State { role: String, plugin: String, state: String, d: i64 },
    Expiry { minute: i64, role: String, plugin: String, d: i64 },
    Owner { issuer: String, subject: String, d: i64 },
}

/// The changes of the transaction the writer is running.
pub(in crate::store) type Deltas = Arc<Mutex<Vec<Delta>>>;

/// Where the transaction's changes stand, to undo a write's with
/// [`undo_to`]. (Locked briefly each time: the triggers lock it too.)
pub(in crate::store) fn mark(deltas: &Deltas) -> usize {
    deltas.lock().unwrap_or_else(PoisonError::into_inner).len()
}

/// Drops the changes reported since `mark` (a write undone).
pub(in crate::store) fn undo_to(deltas: &Deltas, mark: usize) {
    deltas.lock().unwrap_or_else(PoisonError::into_inner).truncate(mark);
}

/// Drops every change reported (a transaction not committed).
pub(in crate::store) fn clear(deltas: &Deltas) {
    deltas.lock().unwrap_or_else(PoisonError::into_inner).clear();
}

/// Applies the committed transaction's changes to `counts`.
pub(in crate::store) fn commit(deltas: &Deltas, counts: &RwLock<Counts>) {
    let mut c = counts.write().unwrap_or_else(PoisonError::into_inner);
    for d in deltas.lock().unwrap_or_else(PoisonError::into_inner).drain(..) {
        c.apply(d);
    }
}

#[derive(Debug, Default)]
pub(in crate::store) struct Counts {
    by_state: HashMap<(String, String, String), i64>,
    by_role: HashMap<String, i64>,
    total: i64,
    /// Active leases by expiry minute (unix ms / 60000), role and plugin.
    expiry: BTreeMap<i64, HashMap<(String, String), i64>>,
    /// By workload ([`Counts::owner_key`]), looked up on every issue.
    owners: HashMap<OwnerKey, i32>,
    /// The keys of the workloads' hash (random per process).
    owner_keys: RandomState,
    /// How many workloads hold each number of live leases.
    owner_sizes: BTreeMap<i64, usize>,
}

/// A workload's key: 64 bits of a keyed hash of its issuer and subject, as
/// bytes so that a map entry (with its `i32` count) takes 12 bytes, not 16.
type OwnerKey = [u8; 8];

/// Adds `d` to `k`'s count; a count that reaches zero is dropped.
fn bump<K: std::hash::Hash + Eq>(m: &mut HashMap<K, i64>, k: K, d: i64) -> i64 {
    use std::collections::hash_map::Entry;
    match m.entry(k) {
        Entry::Occupied(mut e) => {
            let n = e.get().saturating_add(d);
            if n == 0 {
                e.remove();
            } else {
                e.insert(n);
            }
            n
        }
        Entry::Vacant(e) => {
            if d != 0 {
                e.insert(d);
            }
            d
        }
    }
}

impl Counts {
    pub(in crate::store) fn apply(&mut self, delta: Delta) {
        match delta {
            Delta::State { role, plugin, state, d } => {
                self.total = self.total.saturating_add(d);
                let _ = bump(&mut self.by_role, role.clone(), d);
                let _ = bump(&mut self.by_state, (role, plugin, state), d);
            }
            Delta::Expiry { minute, role, plugin, d } => {
                let m = self.expiry.entry(minute).or_default();
                let _ = bump(m, (role, plugin), d);
                if m.is_empty() {
                    self.expiry.remove(&minute);
                }
            }
            Delta::Owner { issuer, subject, d } => {
                use std::collections::hash_map::Entry;
                let key = self.owner_key(&issuer, &subject);
                let old = self.owners.get(&key).copied().map_or(0, i64::from);
                let new = old.saturating_add(d);
                let stored = i32::try_from(new).unwrap_or(if new < 0 { i32::MIN } else { i32::MAX });
                match self.owners.entry(key) {
                    Entry::Occupied(e) if stored == 0 => {
                        e.remove();
                    }
                    Entry::Occupied(mut e) => {
                        e.insert(stored);
                    }
                    Entry::Vacant(e) if stored != 0 => {
                        e.insert(stored);
                    }
                    Entry::Vacant(_) => {}
                }
                let new = i64::from(stored);
                if old > 0 {
                    if let Some(c) = self.owner_sizes.get_mut(&old) {
                        *c -= 1;
                        if *c == 0 {
                            self.owner_sizes.remove(&old);
                        }
                    }
                }
                if new > 0 {
                    *self.owner_sizes.entry(new).or_default() += 1;
                }
            }
        }
    }

    pub(in crate::store) fn by_state(&self) -> Result<LeaseCounts, StoreError> {
        self.by_state
            .iter()
            .map(|((role, plugin, state), n)| {
                let st = LeaseState::from_str(state).map_err(|e| StoreError::Corrupt(format!("lease state `{state}`: {e}")))?;
                Ok((role.clone(), plugin.clone(), st, *n))
            })
            .collect()
    }

    /// Active leases whose expiry minute is at or before `minute`.
    pub(in crate::store) fn expiring(&self, minute: i64) -> RoleCounts {
        let mut sum = HashMap::<(String, String), i64>::new();
        for per in self.expiry.range(..=minute).map(|(_, per)| per) {
            for (k, n) in per {
                let s = sum.entry(k.clone()).or_default();
                *s = s.saturating_add(*n);
            }
        }
        sum.into_iter().filter(|(_, n)| *n != 0).map(|((role, plugin), n)| (role, plugin, n)).collect()
    }

    pub(in crate::store) fn max_per_owner(&self) -> i64 {
        self.owner_sizes.last_key_value().map_or(0, |(n, _)| *n)
    }

    pub(in crate::store) fn total(&self) -> i64 {
        self.total
    }

    pub(in crate::store) fn role(&self, role: &str) -> i64 {
        self.by_role.get(role).copied().unwrap_or(0)
    }

    pub(in crate::store) fn owner(&self, issuer: &str, subject: &str) -> i64 {
        self.owners.get(&self.owner_key(issuer, subject)).copied().map_or(0, i64::from)
    }

    fn owner_key(&self, issuer: &str, subject: &str) -> OwnerKey {
        let mut h = self.owner_keys.build_hasher();
        // (`str`'s `Hash` ends each string with a marker: "ab" + "c" and
        // "a" + "bc" hash apart.)
        issuer.hash(&mut h);
        subject.hash(&mut h);
        h.finish().to_le_bytes()
    }

    pub(in crate::store) fn quota(&self, issuer: &str, subject: &str, role: &str) -> QuotaCounts {
        QuotaCounts { owner: self.owner(issuer, subject), role: self.role(role), total: self.total }
    }
}

/// Reads the counts from the live leases (at open, before any write) in
/// one pass, counted here. With most of the table live it reads the table
/// in order rather than through `leases_due`: reaching a million live
/// leases through the index (a row lookup each, in expiry order) took 1.4 s
/// a pass, and the three grouped reads this replaced 5.7 s in all (release;
/// the engine bench's part 3 target is a first request within 2 s), where
/// the table in order takes 0.34 s. When live leases are under a quarter
/// of the rows (ended ones kept for `retention`), the index reads fewer.
pub(in crate::store) fn load(conn: &rusqlite::Connection) -> rusqlite::Result<Counts> {
    let live: i64 = conn.query_row(&format!("SELECT COUNT(*) FROM leases WHERE state IN {LIVE}"), [], |r| r.get(0))?;
    let span: i64 = conn.query_row("SELECT COALESCE(MAX(rowid) - MIN(rowid) + 1, 0) FROM leases", [], |r| r.get(0))?;
    let how = if live.saturating_mul(4) >= span { "NOT INDEXED" } else { "" };
    let mut st = conn.prepare(&format!("SELECT role, plugin, state, issuer, subject, expires_at FROM leases {how} WHERE state IN {LIVE}"))?;
    let mut rows = st.query([])?;
    let mut c = Counts::default();
    // Roles with their plugin, counted under an index each (no string
    // made per row): by state, and active ones by expiry minute.
    let mut pairs: Vec<(String, String)> = Vec::new();
    let mut pair_ids: HashMap<String, usize> = HashMap::new();
    let mut buf = String::new();
    let mut by_state: HashMap<(usize, LeaseState), i64> = HashMap::new();
    let mut expiry: HashMap<(i64, usize), i64> = HashMap::new();
    while let Some(r) = rows.next()? {
        let text = |i: usize| r.get_ref(i).map(|v| v.as_str_or_null().ok().flatten());
        let (Some(role), Some(plugin), Some(state), Some(issuer), Some(subject)) = (text(0)?, text(1)?, text(2)?, text(3)?, text(4)?) else {
            continue;
        };
        let Ok(state) = LeaseState::from_str(state) else { continue };
        buf.clear();
        buf.push_str(role);
        buf.push('\0');
        buf.push_str(plugin);
        let pair = match pair_ids.get(buf.as_str()) {
            Some(&i) => i,
            None => {
                pairs.push((role.to_owned(), plugin.to_owned()));
                pair_ids.insert(buf.clone(), pairs.len() - 1);
                pairs.len() - 1
            }
        };
        *by_state.entry((pair, state)).or_default() += 1;
        if state == LeaseState::Active {
            let ms: Option<i64> = r.get(5)?;
            *expiry.entry((ms.unwrap_or(0).div_euclid(60_000), pair)).or_default() += 1;
        }
        let key = c.owner_key(issuer, subject);
        let n = c.owners.entry(key).or_default();
        *n = n.saturating_add(1);
    }
    for ((pair, state), d) in by_state {
        let (role, plugin) = pairs[pair].clone();
        c.apply(Delta::State { role, plugin, state: state.as_str().to_owned(), d });
    }
    for ((minute, pair), d) in expiry {
        let (role, plugin) = pairs[pair].clone();
        c.apply(Delta::Expiry { minute, role, plugin, d });
    }
    for n in c.owners.values() {
        *c.owner_sizes.entry(i64::from(*n)).or_default() += 1;
    }
    Ok(c)
}

/// A lease row as the counts see it: `None` when not live.
#[derive(PartialEq, Eq)]
struct Side<'a> {
    role: &'a str,
    plugin: &'a str,
    state: &'a str,
    issuer: &'a str,
    subject: &'a str,
    minute: i64,
}

fn side<'a>(ctx: &'a rusqlite::functions::Context<'_>, first: usize) -> rusqlite::Result<Option<Side<'a>>> {
    let text = |i: usize| ctx.get_raw(first + i).as_str_or_null().map_err(|e| rusqlite::Error::UserFunctionError(e.into()));
    let Some(state) = text(2)? else { return Ok(None) };
    if !LeaseState::from_str(state).is_ok_and(LeaseState::is_live) {
        return Ok(None);
    }
    let (Some(role), Some(plugin), Some(issuer), Some(subject)) = (text(0)?, text(1)?, text(3)?, text(4)?) else {
        return Ok(None);
    };
    let ms = ctx.get_raw(first + 5).as_i64_or_null().map_err(|e| rusqlite::Error::UserFunctionError(e.into()))?;
    Ok(Some(Side { role, plugin, state, issuer, subject, minute: ms.unwrap_or(0).div_euclid(60_000) }))
}

/// The changes to the counts of a row going from `old` to `new`.
fn changes<'a>(old: Option<&Side<'a>>, new: Option<&Side<'a>>, out: &mut Vec<Delta>) {
    let state = |s: &Side<'_>, d| Delta::State { role: s.role.into(), plugin: s.plugin.into(), state: s.state.into(), d };
    let expiry = |s: &Side<'_>, d| Delta::Expiry { minute: s.minute, role: s.role.into(), plugin: s.plugin.into(), d };
    let owner = |s: &Side<'_>, d| Delta::Owner { issuer: s.issuer.into(), subject: s.subject.into(), d };
    let key = |s: &Side<'a>| -> (&'a str, &'a str, &'a str) { (s.role, s.plugin, s.state) };
    if old.map(key) != new.map(key) {
        out.extend(old.map(|s| state(s, -1)));
        out.extend(new.map(|s| state(s, 1)));
    }
    let active = |s: &&Side<'_>| s.state == "active";
    let (old_a, new_a) = (old.filter(active), new.filter(active));
    let ekey = |s: &Side<'a>| -> (&'a str, &'a str, i64) { (s.role, s.plugin, s.minute) };
    if old_a.map(ekey) != new_a.map(ekey) {
        out.extend(old_a.map(|s| expiry(s, -1)));
        out.extend(new_a.map(|s| expiry(s, 1)));
    }
    let okey = |s: &Side<'a>| -> (&'a str, &'a str) { (s.issuer, s.subject) };
    if old.map(okey) != new.map(okey) {
        out.extend(old.map(|s| owner(s, -1)));
        out.extend(new.map(|s| owner(s, 1)));
    }
}

/// Registers `lessor_lease_change` on the writer's connection and the TEMP
/// triggers that call it, one per kind of change: they replace migration
/// 0009's twelve on SQLite (migration 0015), and compute the same changes
/// ([`changes`]) from the row before and after.
pub(in crate::store) fn install(conn: &rusqlite::Connection, deltas: Deltas) -> rusqlite::Result<()> {
    conn.create_scalar_function("lessor_lease_change", 12, FunctionFlags::SQLITE_UTF8 | FunctionFlags::SQLITE_DIRECTONLY, move |ctx| {
        let (old, new) = (side(ctx, 0)?, side(ctx, 6)?);
        changes(old.as_ref(), new.as_ref(), &mut deltas.lock().unwrap_or_else(PoisonError::into_inner));
        Ok(0i64)
    })?;
    conn.execute_batch(&TRIGGERS.replace("{LIVE}", LIVE))
}

const TRIGGERS: &str = "
CREATE TEMP TRIGGER count_ins AFTER INSERT ON main.leases WHEN NEW.state IN {LIVE}
BEGIN SELECT lessor_lease_change(NULL, NULL, NULL, NULL, NULL, NULL,
    NEW.role, NEW.plugin, NEW.state, NEW.issuer, NEW.subject, NEW.expires_at); END;
CREATE TEMP TRIGGER count_del AFTER DELETE ON main.leases WHEN OLD.state IN {LIVE}
BEGIN SELECT lessor_lease_change(OLD.role, OLD.plugin, OLD.state, OLD.issuer, OLD.subject, OLD.expires_at,
    NULL, NULL, NULL, NULL, NULL, NULL); END;
CREATE TEMP TRIGGER count_upd AFTER UPDATE OF state, role, plugin, issuer, subject, expires_at ON main.leases
WHEN OLD.state IN {LIVE} OR NEW.state IN {LIVE}
BEGIN SELECT lessor_lease_change(OLD.role, OLD.plugin, OLD.state, OLD.issuer, OLD.subject, OLD.expires_at,
    NEW.role, NEW.plugin, NEW.state, NEW.issuer, NEW.subject, NEW.expires_at); END;
";

#[cfg(test)]
mod tests {
    use super::*;

    fn state(role: &str, st: &str, d: i64) -> Delta {
        Delta::State { role: role.into(), plugin: "p".into(), state: st.into(), d }
    }

    fn owner(s: &str, d: i64) -> Delta {
        Delta::Owner { issuer: "i".into(), subject: s.into(), d }
    }

    #[test]
    fn counts_add_up_and_forget_what_reaches_zero() {
        let mut c = Counts::default();
        for d in [state("a", "pending", 1), state("a", "pending", 1), state("b", "active", 1), state("a", "pending", -1)] {
            c.apply(d);
        }
        assert_eq!((c.total(), c.role("a"), c.role("b"), c.role("none")), (2, 1, 1, 0));
        c.apply(state("a", "pending", -1));
        assert_eq!(c.by_state().unwrap(), vec![("b".to_string(), "p".to_string(), LeaseState::Active, 1)]);
        assert!(!c.by_role.contains_key("a"), "a role at zero is dropped");
    }

    #[test]
    fn the_fullest_owner_follows_every_change() {
        let mut c = Counts::default();
        for d in [owner("x", 1), owner("x", 1), owner("x", 1), owner("y", 1), owner("y", 1)] {
            c.apply(d);
        }
        assert_eq!((c.max_per_owner(), c.owner("i", "x"), c.owner("i", "y")), (3, 3, 2));
        c.apply(owner("x", -1));
        c.apply(owner("x", -1));
        assert_eq!(c.max_per_owner(), 2, "y now");
        c.apply(owner("y", -1));
        c.apply(owner("y", -1));
        c.apply(owner("x", -1));
        assert_eq!((c.max_per_owner(), c.owners.len(), c.owner_sizes.len()), (0, 0, 0));
    }

    #[test]
    fn workloads_are_told_apart_by_issuer_and_subject_together() {
        let mut c = Counts::default();
        let d = |issuer: &str, subject: &str, d| Delta::Owner { issuer: issuer.into(), subject: subject.into(), d };
        for x in [d("i", "ab", 1), d("ia", "b", 1), d("ia", "b", 1), d("j", "ab", 1), d("j", "ab", 1), d("j", "ab", 1)] {
            c.apply(x);
        }
        assert_eq!((c.owner("i", "ab"), c.owner("ia", "b"), c.owner("j", "ab"), c.owner("i", "b")), (1, 2, 3, 0));
        assert_eq!(c.max_per_owner(), 3);
        assert_eq!(std::mem::size_of::<(OwnerKey, i32)>(), 12, "an entry's size, which the module's memory figure assumes");
    }

    #[test]
    fn expiring_sums_the_minutes_up_to_the_bound() {
        let mut c = Counts::default();
        for (minute, d) in [(10, 1), (10, 1), (11, 1), (20, 1), (10, -1)] {
            c.apply(Delta::Expiry { minute, role: "r".into(), plugin: "p".into(), d });
        }
        assert_eq!(c.expiring(9), vec![]);
        assert_eq!(c.expiring(11), vec![("r".to_string(), "p".to_string(), 2)]);
        assert_eq!(c.expiring(i64::MAX), vec![("r".to_string(), "p".to_string(), 3)]);
        c.apply(Delta::Expiry { minute: 20, role: "r".into(), plugin: "p".into(), d: -1 });
        assert!(!c.expiry.contains_key(&20), "an empty minute is dropped");
    }
}
