//! Who is asking and through which request: the principal types every
//! layer passes down (`http` builds them; `lease`, `connections`,
//! `admin_tokens`, `vault` and `audit` read them). Kept small and low so
//! none of those imports another just to name the caller.
//!
//! Must not import: http, lease, connections, audit, policy, config.

use std::net::IpAddr;
use std::time::Instant;

use crate::identity::VerifiedWorkload;
use crate::store::Lease;

/// Who is asking.
#[derive(Debug, Clone)]
pub enum Actor {
    Workload(VerifiedWorkload),
    /// Holder of an admin credential (admin token or an operator JWT that
    /// policy allows `admin`).
    Admin { name: String },
    /// A person signed in through `[people]` (browser session or `lessor
    /// login`).
    Person(Person),
}

impl Actor {
    /// How the audit, approvals and job records name the actor:
    /// `issuer#subject`, `provider#subject` or the admin credential's name.
    pub fn name(&self) -> String {
        match self {
            Actor::Admin { name } => name.clone(),
            Actor::Workload(w) => format!("{}#{}", w.issuer, w.subject),
            Actor::Person(p) => p.id(),
        }
    }

    /// Whether the lease is the actor's to see and revoke (an admin's are
    /// all).
    pub fn owns(&self, lease: &Lease) -> bool {
        match self {
            Actor::Admin { .. } => true,
            Actor::Workload(w) => w.issuer == lease.issuer && w.subject == lease.subject,
            // People do not hold leases; what they may see is an admin
            // decision.
            Actor::Person(_) => false,
        }
    }
}

/// A person signed in through one of `[people]`'s OpenID Connect providers.
/// Two people are the same person when `provider` and `subject` match (the
/// provider's stable subject, never the email); approvals also refuse two
/// subjects with the same verified `email`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Person {
    /// The provider's name in `[people.providers.<name>]`.
    pub provider: String,
    /// The provider's issuer URL (`iss` of the ID token).
    pub issuer: String,
    /// The stable subject (`sub`, or the configured subject claim).
    pub subject: String,
    /// Lower-cased; empty when the provider gave none.
    pub email: String,
    pub name: String,
    pub groups: Vec<String>,
}

impl Person {
    /// `provider#subject`: how the audit and approvals name a person.
    pub fn id(&self) -> String {
        format!("{}#{}", self.provider, self.subject)
    }
}

/// What an entry needs from the request that caused it.
#[derive(Debug, Clone)]
pub struct RequestMeta {
    pub request_id: String,
    pub source: IpAddr,
    pub started: Instant,
    /// HMAC of the bearer credential, set when the request's own entries
    /// record its authentication (no separate `authenticate ok` entry).
    pub credential: Option<String>,
    /// Which API the request came through: `native` or `vault` (one of
    /// [`APIS`]); a metric label and, for `vault`, an audit field.
    pub api: &'static str,
    /// The Vault `role` of the session a Vault API request was made with
    /// (Cedar's `context.vault_role`).
    pub vault_role: Option<String>,
}

/// The APIs a request can come through.
pub const APIS: [&str; 2] = ["native", "vault"];

impl RequestMeta {
    pub fn new(request_id: String, source: IpAddr) -> RequestMeta {
        RequestMeta { request_id, source, started: Instant::now(), credential: None, api: "native", vault_role: None }
    }

    /// For calls that do not come from HTTP (tests, tools).
    pub fn internal() -> RequestMeta {
        RequestMeta::new(new_request_id(), IpAddr::from([127, 0, 0, 1]))
    }
}

/// A fresh request id: `req_` and 16 random hex digits.
pub fn new_request_id() -> String {
    use rand::Rng;
    let b: [u8; 8] = rand::rng().random();
    format!("req_{}", hex::encode(b))
}

/// Whether a client-sent request id may be used as is: 1 to 64 of
/// `A-Z a-z 0-9 - _ . :`.
pub fn sane_request_id(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_checked() {
        assert!(sane_request_id("abc-123_x.y:z"));
        assert!(!sane_request_id(""));
        assert!(!sane_request_id("a b"));
        assert!(!sane_request_id(&"a".repeat(65)));
        assert!(sane_request_id(&new_request_id()));
    }
}
