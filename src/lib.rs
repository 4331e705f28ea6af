//! lessor: a dynamic secrets broker.
//!
//! A workload presents a JWT from an identity issuer it already has
//! ([`identity`]); Cedar policy decides ([`policy`]); a vendor plugin issues a
//! short-lived credential; the lease is recorded before anything is created
//! and revoked when it expires ([`lease`], [`store`]). See ARCHITECTURE.md.

pub mod admin_tokens;
pub mod audit;
pub mod cli;
pub mod config;
pub mod connections;
pub mod dev_idp;
pub mod customer_tokens;
pub mod duration;
#[doc(hidden)]
pub mod fuzz;
pub mod http;
pub mod identity;
pub mod lease;
pub mod people;
pub mod plugins;
pub mod policy;
pub mod principal;
pub mod seal;
pub mod server;
pub mod store;
pub mod telemetry;
pub mod tls;
pub mod vault;

#[cfg(test)]
mod layering;

use std::time::Duration;

/// Version of the HTTP API (`/v1`).
pub const API_VERSION: &str = "v1";

/// Formats a duration the way people write it: `90s` -> `1m30s`.
pub fn fmt_duration(d: Duration) -> String {
    let secs = d.as_secs();
    if secs == 0 {
        return format!("{}ms", d.as_millis());
    }
    let (h, m, s) = (secs / 3600, (secs % 3600) / 60, secs % 60);
    let mut out = String::new();
    if h > 0 {
        out.push_str(&format!("{h}h"));
    }
    if m > 0 {
        out.push_str(&format!("{m}m"));
    }
    if s > 0 || out.is_empty() {
        out.push_str(&format!("{s}s"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_print_like_people_write_them() {
        assert_eq!(fmt_duration(Duration::from_secs(90)), "1m30s");
        assert_eq!(fmt_duration(Duration::from_secs(7200)), "2h");
        assert_eq!(fmt_duration(Duration::from_millis(5)), "5ms");
    }
}
