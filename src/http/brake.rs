//! The brake on refused authentications: a source network (IPv4 /24, IPv6
//! /64) that keeps presenting bad credentials gets its refusals answered
//! late. A client that waits for each answer (most floods, every retry
//! loop) then sends a few requests a second instead of thousands, so it
//! cannot take the CPU that issuance for everyone else needs. Successful
//! authentications are never delayed, whoever shares the network.
//!
//! Bounded: the per-network budget is a keyed `governor` limiter (pruned of
//! idle networks past `MAX_NETWORKS`), and at most `MAX_HELD` refusals wait
//! at once; past that a refusal is answered at once.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use tokio::sync::Semaphore;

/// Networks tracked before idle ones are pruned.
const MAX_NETWORKS: usize = 100_000;
/// Refusals held back at once; the rest are answered without delay.
const MAX_HELD: usize = 4_096;

pub struct AuthBrake {
    limiter: Option<DefaultKeyedRateLimiter<u128>>,
    delay: Duration,
    held: Semaphore,
}

impl AuthBrake {
    /// `per_second` refusals a network may have without delay (a burst of
    /// as many); 0 turns the brake off.
    pub fn new(per_second: u32, delay: Duration) -> Self {
        let limiter = NonZeroU32::new(per_second).map(|n| RateLimiter::keyed(Quota::per_second(n)));
        AuthBrake { limiter, delay, held: Semaphore::new(MAX_HELD) }
    }

    /// Called before a refused authentication is answered: returns at once
    /// while the source network is within its budget, else after `delay`.
    pub async fn refused(&self, source: IpAddr) {
        let Some(limiter) = &self.limiter else { return };
        if limiter.len() > MAX_NETWORKS {
            limiter.retain_recent();
        }
        if limiter.check_key(&network(source)).is_ok() {
            return;
        }
        if let Ok(_held) = self.held.try_acquire() {
            crate::telemetry::metrics().auth_failures_delayed.inc();
            tokio::time::sleep(self.delay).await;
        }
    }
}

/// The network a source belongs to, as one key: IPv4 /24, IPv6 /64.
fn network(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(u32::from(v4) & 0xffff_ff00),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => u128::from(u32::from(v4) & 0xffff_ff00),
            None => (u128::from(v6) & !((1u128 << 64) - 1)) | 1,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[tokio::test]
    async fn a_network_over_its_budget_is_answered_late_and_others_are_not() {
        let brake = AuthBrake::new(5, Duration::from_millis(200));
        let a: IpAddr = "10.1.2.3".parse().unwrap();
        let same_net: IpAddr = "10.1.2.99".parse().unwrap();
        let other: IpAddr = "10.1.3.1".parse().unwrap();
        let t = Instant::now();
        for _ in 0..5 {
            brake.refused(a).await;
        }
        assert!(t.elapsed() < Duration::from_millis(100), "the burst is not delayed");
        let t = Instant::now();
        brake.refused(same_net).await;
        assert!(t.elapsed() >= Duration::from_millis(200), "the sixth refusal in the /24 waits");
        let t = Instant::now();
        brake.refused(other).await;
        assert!(t.elapsed() < Duration::from_millis(100), "another network has its own budget");
    }

    #[tokio::test]
    async fn off_means_never_delayed() {
        let brake = AuthBrake::new(0, Duration::from_secs(5));
        let t = Instant::now();
        for _ in 0..100 {
            brake.refused("10.0.0.1".parse().unwrap()).await;
        }
        assert!(t.elapsed() < Duration::from_millis(100));
    }

    #[test]
    fn networks_are_slash_24_and_slash_64() {
        let n = |s: &str| network(s.parse().unwrap());
        assert_eq!(n("192.0.2.1"), n("192.0.2.254"));
        assert_ne!(n("192.0.2.1"), n("192.0.3.1"));
        assert_eq!(n("2001:db8::1"), n("2001:db8::ffff"));
        assert_ne!(n("2001:db8::1"), n("2001:db8:0:1::1"));
        assert_eq!(n("::ffff:192.0.2.1"), n("192.0.2.7"));
    }
}
