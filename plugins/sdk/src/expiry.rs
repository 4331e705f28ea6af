//! The expiry check a plugin makes of an issue request, on the plugin's
//! clock ([`crate::PluginContext::now`]), never the system's: the core and
//! tests decide what "now" is.

use std::time::Duration;

use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::PluginError;

/// How far past a role's `max_ttl` a requested expiry may reach: the core
/// computed it a moment before the plugin reads its clock.
pub const TTL_SLACK: Duration = Duration::from_secs(5);

/// Refuses an expiry at or before `now`, or more than the role's `max_ttl`
/// (+ [`TTL_SLACK`]) after it.
pub fn check_expiry(now: OffsetDateTime, expires_at: OffsetDateTime, max_ttl: Duration) -> Result<(), PluginError> {
    if expires_at <= now {
        return Err(PluginError::InvalidRequest(format!("expires_at {} is not in the future", rfc3339(expires_at))));
    }
    let ttl = Duration::try_from(expires_at - now).unwrap_or(Duration::MAX);
    if ttl > max_ttl.saturating_add(TTL_SLACK) {
        return Err(PluginError::InvalidRequest(format!(
            "ttl {} exceeds role max {}",
            humanize(ttl),
            humanize(max_ttl)
        )));
    }
    Ok(())
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_else(|_| t.to_string())
}

/// `d` in whole seconds, human-readable.
fn humanize(d: Duration) -> String {
    humantime::format_duration(Duration::from_secs(d.as_secs())).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn past_too_long_and_within_the_slack_by_the_given_now() {
        // A fixed "now" far from the wall clock: the check reads no other.
        let now = OffsetDateTime::from_unix_timestamp(1_000_000_000).unwrap();
        let max = Duration::from_secs(3600);
        let e = check_expiry(now, now, max).unwrap_err().to_string();
        assert!(e.contains("is not in the future"), "{e}");
        assert!(check_expiry(now, now + time::Duration::seconds(3605), max).is_ok(), "within the slack");
        let e = check_expiry(now, now + time::Duration::seconds(3606), max).unwrap_err().to_string();
        assert!(e.contains("ttl 1h 6s exceeds role max 1h"), "{e}");
        assert!(check_expiry(now, now + time::Duration::seconds(60), max).is_ok());
    }
}
