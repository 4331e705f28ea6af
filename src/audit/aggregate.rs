//! Authentication failures, aggregated: a refused token costs one counter
//! bump here, not an audit line. Per interval the first few failures are
//! written in full and one summary entry counts the rest by (configured
//! issuer or `unknown`, reason, source network: IPv4 /24, IPv6 /64). Memory
//! is bounded: at most [`MAX_GROUPS`] groups, the rest counted as `other`.
//! The writer thread writes the summary when the interval ends (and at
//! shutdown), so it never waits in the bounded queue.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use super::Event;

/// Distinct (issuer, reason, network) groups kept per interval.
pub const MAX_GROUPS: usize = 64;

/// Counts of one interval.
pub struct Aggregator {
    interval: Duration,
    in_full: u32,
    /// Start of the interval (when its first failure came), if any came.
    started: Option<(Instant, String)>,
    written_in_full: u32,
    total: u64,
    groups: HashMap<(String, &'static str, String), u64>,
    other: u64,
    /// Full entries that were due but the queue was full.
    dropped: u64,
}

/// The source network an address belongs to, as written in summaries.
pub fn network(ip: IpAddr) -> String {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    };
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            format!("{a}.{b}.{c}.0/24")
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            let net = std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0);
            format!("{net}/64")
        }
    }
}

impl Aggregator {
    pub fn new(interval: Duration, in_full: u32) -> Aggregator {
        Aggregator {
            interval: interval.max(Duration::from_millis(1)),
            in_full,
            started: None,
            written_in_full: 0,
            total: 0,
            groups: HashMap::new(),
            other: 0,
            dropped: 0,
        }
    }

    /// Counts a failure. Returns whether it should also be written in full
    /// (one of the first `in_full` of its interval).
    pub fn count(&mut self, issuer: &str, reason: &'static str, source: IpAddr) -> bool {
        if self.started.is_none() {
            self.started = Some((Instant::now(), super::now_rfc3339()));
        }
        self.total = self.total.saturating_add(1);
        let key = (issuer.to_owned(), reason, network(source));
        if let Some(n) = self.groups.get_mut(&key) {
            *n = n.saturating_add(1);
        } else if self.groups.len() < MAX_GROUPS {
            self.groups.insert(key, 1);
        } else {
            self.other = self.other.saturating_add(1);
        }
        if self.written_in_full < self.in_full {
            self.written_in_full += 1;
            true
        } else {
            false
        }
    }

    /// A full entry that was due could not be queued.
    pub fn dropped(&mut self) {
        self.dropped = self.dropped.saturating_add(1);
        self.written_in_full = self.written_in_full.saturating_sub(1);
    }

    /// When the current interval ends, if a failure was counted in it.
    pub fn next_due(&self) -> Option<Instant> {
        self.started.as_ref().map(|(t, _)| *t + self.interval)
    }

    /// The summary if the interval is over (see [`Aggregator::take`]).
    pub fn take_due(&mut self, now: Instant) -> Option<Event> {
        match self.next_due() {
            Some(due) if now >= due => self.take(),
            _ => None,
        }
    }

    /// Ends the interval: a summary entry when some failure of it was not
    /// written in full, `None` otherwise.
    pub fn take(&mut self) -> Option<Event> {
        let (_, from) = self.started.take()?;
        let total = std::mem::take(&mut self.total);
        let in_full = std::mem::take(&mut self.written_in_full);
        let other = std::mem::take(&mut self.other);
        let dropped = std::mem::take(&mut self.dropped);
        let mut groups: Vec<_> = std::mem::take(&mut self.groups).into_iter().collect();
        if total <= u64::from(in_full) {
            return None;
        }
        groups.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        let groups: Vec<serde_json::Value> = groups
            .into_iter()
            .map(|((issuer, reason, network), count)| {
                serde_json::json!({"issuer": issuer, "reason": reason, "network": network, "count": count})
            })
            .collect();
        let mut e = Event::new("authenticate", "failed_summary")
            .detail("from", from)
            .detail("failures", total)
            .detail("written_in_full", in_full)
            .detail("groups", groups);
        if other > 0 {
            e = e.detail("other_groups", other);
        }
        if dropped > 0 {
            e = e.detail("dropped", dropped);
        }
        Some(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_few_are_in_full_the_rest_are_counted_by_group() {
        let mut a = Aggregator::new(Duration::from_secs(60), 5);
        let ip: IpAddr = "10.1.2.3".parse().unwrap();
        let full = (0..1000).filter(|_| a.count("unknown", "malformed", ip)).count();
        assert_eq!(full, 5);
        assert!(!a.count("gh", "expired", "2001:db8:1:2:3::9".parse().unwrap()));
        let e = a.take().unwrap();
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(v["outcome"], "failed_summary");
        assert_eq!(v["details"]["failures"], 1001);
        assert_eq!(v["details"]["written_in_full"], 5);
        assert_eq!(v["details"]["groups"][0]["network"], "10.1.2.0/24");
        assert_eq!(v["details"]["groups"][0]["count"], 1000);
        assert_eq!(v["details"]["groups"][1]["network"], "2001:db8:1:2::/64");
        assert_eq!(v["details"]["groups"][1]["issuer"], "gh");
        assert!(a.take().is_none(), "a new interval starts empty");
        // A quiet interval (all in full) needs no summary.
        a.count("unknown", "missing", ip);
        assert!(a.take().is_none());
    }

    #[test]
    fn groups_are_bounded() {
        let mut a = Aggregator::new(Duration::from_secs(60), 0);
        for i in 0..10_000u32 {
            let ip = std::net::Ipv6Addr::new(0x2001, 0xdb8, (i >> 16) as u16, i as u16, 0, 0, 0, 1);
            a.count("unknown", "malformed", IpAddr::V6(ip));
        }
        let v = serde_json::to_value(a.take().unwrap()).unwrap();
        assert_eq!(v["details"]["groups"].as_array().unwrap().len(), MAX_GROUPS);
        assert_eq!(v["details"]["other_groups"], 10_000 - MAX_GROUPS as u64);
    }
}
