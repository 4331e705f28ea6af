//! Who may do what with customer tokens. Two separate rules:
//!
//! - **Membership** ([`member_of`], not policy): a person belongs to account
//!   `x` when one of their groups is `<account_group_prefix>x`. A person who
//!   is not a member gets 404 for the account and its tokens (the service
//!   answers as if they did not exist).
//! - **Decisions** ([`TokenAuthorizer`]): which scopes, expiries and
//!   confirmations a member may use. Cedar decides these (`Lessor::Person`,
//!   actions `token_create|token_read|token_rotate|token_revoke` on
//!   `Lessor::Account` with a `TokenContext`); until that is merged,
//!   [`DevListPolicy`] is the test/dev implementation, driven by
//!   `[customer_tokens.dev_policy]`.
//!
//! Must not import: http, store, config.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use crate::customer_tokens::config::{ComboRule, DevPolicyConfig, LONGEST_PRESET};
use crate::principal::Person;

/// What a person asks to do (Cedar's `token_*` actions).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenAction {
    Create,
    Read,
    Rotate,
    Revoke,
}

impl TokenAction {
    /// The Cedar action id.
    pub fn as_str(self) -> &'static str {
        match self {
            TokenAction::Create => "token_create",
            TokenAction::Read => "token_read",
            TokenAction::Rotate => "token_rotate",
            TokenAction::Revoke => "token_revoke",
        }
    }
}

/// The account acted on (Cedar's `Lessor::Account`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountInfo {
    pub name: String,
}

/// Cedar's `TokenContext`: what the decision may look at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenContext {
    pub scopes: Vec<String>,
    pub expires_in_seconds: i64,
    pub environment: String,
    /// The request's `confirm` field.
    pub confirmed: bool,
    /// Unix seconds.
    pub now: i64,
    pub source_ip: IpAddr,
}

/// A refusal: shown to the person as is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denied {
    pub message: String,
    /// The deciding policy (or rule) id.
    pub policy: Option<String>,
    /// True when the same request with `confirm = true` would be allowed.
    pub confirmable: bool,
}

/// The one seam between customer tokens and the policy engine.
pub trait TokenAuthorizer: Send + Sync {
    fn decide(&self, person: &Person, action: TokenAction, account: &AccountInfo, ctx: &TokenContext) -> Result<(), Denied>;
}

/// Membership: one of the person's groups is `<prefix><account>`.
pub fn member_of(person: &Person, prefix: &str, account: &str) -> bool {
    person.groups.iter().any(|g| g.strip_prefix(prefix) == Some(account))
}

/// The accounts a person belongs to.
pub fn accounts_of(person: &Person, prefix: &str) -> Vec<String> {
    let mut v: Vec<String> = person.groups.iter().filter_map(|g| g.strip_prefix(prefix)).map(str::to_owned).collect();
    v.sort();
    v.dedup();
    v
}

/// TEST/DEV ONLY: decisions from `[customer_tokens.dev_policy]` lists
/// (forbidden and confirm-only scope combinations, longest expiry per
/// account; otherwise the presets' 180 days). Every member may read,
/// rotate and revoke. Replaced by the Cedar implementation at merge.
pub struct DevListPolicy {
    forbidden: Vec<ComboRule>,
    confirm: Vec<ComboRule>,
    max_expiry_by_account: BTreeMap<String, Duration>,
}

impl DevListPolicy {
    /// From the config section (already validated: the durations parse).
    pub fn new(cfg: &DevPolicyConfig) -> DevListPolicy {
        let max_expiry_by_account = cfg
            .max_expiry_by_account
            .iter()
            .filter_map(|(a, v)| crate::duration::parse(v).ok().map(|d| (a.clone(), d)))
            .collect();
        DevListPolicy { forbidden: cfg.forbidden.clone(), confirm: cfg.confirm.clone(), max_expiry_by_account }
    }
}

fn holds(rule: &ComboRule, scopes: &[String]) -> bool {
    rule.scopes.iter().all(|s| scopes.contains(s))
}

impl TokenAuthorizer for DevListPolicy {
    fn decide(&self, _person: &Person, action: TokenAction, account: &AccountInfo, ctx: &TokenContext) -> Result<(), Denied> {
        if !matches!(action, TokenAction::Create | TokenAction::Rotate) {
            return Ok(());
        }
        if let Some(r) = self.forbidden.iter().find(|r| holds(r, &ctx.scopes)) {
            return Err(Denied {
                message: format!("scopes {} together are forbidden by policy `{}`: {}", r.scopes.join(" + "), r.name, r.reason),
                policy: Some(r.name.clone()),
                confirmable: false,
            });
        }
        if !ctx.confirmed {
            if let Some(r) = self.confirm.iter().find(|r| holds(r, &ctx.scopes)) {
                return Err(Denied {
                    message: format!(
                        "scopes {} together need an explicit confirmation (`confirm`: true), policy `{}`: {}",
                        r.scopes.join(" + "),
                        r.name,
                        r.reason
                    ),
                    policy: Some(r.name.clone()),
                    confirmable: true,
                });
            }
        }
        let max = self.max_expiry_by_account.get(&account.name).copied().unwrap_or(LONGEST_PRESET);
        if ctx.expires_in_seconds > crate::duration::secs_i64(max) {
            return Err(Denied {
                message: format!(
                    "an expiry of {} is longer than account `{}` may use ({}; policy `dev-max-expiry`)",
                    crate::customer_tokens::fmt_days(Duration::from_secs(ctx.expires_in_seconds.unsigned_abs())),
                    account.name,
                    crate::customer_tokens::fmt_days(max)
                ),
                policy: Some("dev-max-expiry".into()),
                confirmable: false,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn person(groups: &[&str]) -> Person {
        Person {
            provider: "dev".into(),
            issuer: "http://idp".into(),
            subject: "carol".into(),
            email: "carol@example.com".into(),
            name: "Carol".into(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
        }
    }

    #[test]
    fn membership_is_the_prefixed_group_exactly() {
        let p = person(&["account:acme", "platform", "xaccount:globex"]);
        assert!(member_of(&p, "account:", "acme"));
        assert!(!member_of(&p, "account:", "globex"));
        assert!(!member_of(&p, "account:", "acm"));
        assert_eq!(accounts_of(&p, "account:"), vec!["acme".to_owned()]);
    }

    #[test]
    fn the_dev_lists_forbid_confirm_and_bound_expiry() {
        let cfg = DevPolicyConfig {
            forbidden: vec![ComboRule {
                name: "no-data-and-security".into(),
                scopes: vec!["customers.read".into(), "security.write".into()],
                reason: "too broad".into(),
            }],
            confirm: vec![ComboRule { name: "billing-write".into(), scopes: vec!["a".into(), "b".into()], reason: "r".into() }],
            max_expiry_by_account: [("acme".to_owned(), "365d".to_owned())].into(),
        };
        let pol = DevListPolicy::new(&cfg);
        let p = person(&["account:acme"]);
        let ctx = |scopes: &[&str], days: i64, confirmed| TokenContext {
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
            expires_in_seconds: days * 86400,
            environment: "production".into(),
            confirmed,
            now: 0,
            source_ip: IpAddr::from([127, 0, 0, 1]),
        };
        let acme = AccountInfo { name: "acme".into() };
        let globex = AccountInfo { name: "globex".into() };
        let e = pol.decide(&p, TokenAction::Create, &acme, &ctx(&["customers.read", "security.write"], 30, true)).unwrap_err();
        assert_eq!(e.policy.as_deref(), Some("no-data-and-security"));
        assert!(!e.confirmable && e.message.contains("too broad"), "{e:?}");
        let e = pol.decide(&p, TokenAction::Create, &acme, &ctx(&["a", "b"], 30, false)).unwrap_err();
        assert!(e.confirmable && e.message.contains("confirm"), "{e:?}");
        pol.decide(&p, TokenAction::Create, &acme, &ctx(&["a", "b"], 30, true)).unwrap();
        pol.decide(&p, TokenAction::Create, &acme, &ctx(&["a"], 365, false)).unwrap();
        let e = pol.decide(&p, TokenAction::Create, &globex, &ctx(&["a"], 365, false)).unwrap_err();
        assert_eq!(e.policy.as_deref(), Some("dev-max-expiry"));
        pol.decide(&p, TokenAction::Read, &globex, &ctx(&["customers.read", "security.write"], 999, false)).unwrap();
    }
}
