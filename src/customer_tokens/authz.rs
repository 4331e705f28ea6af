//! Who may do what with customer tokens. Two separate rules:
//!
//! - **Membership** ([`member_of`], not policy): a person belongs to account
//!   `x` when one of their groups is `<account_group_prefix>x`. A person who
//!   is not a member gets 404 for the account and its tokens (the service
//!   answers as if they did not exist).
//! - **Decisions** ([`TokenAuthorizer`], implemented by [`CedarTokens`]):
//!   which scopes, expiries and confirmations a member may use. Cedar
//!   decides (`Lessor::Person`, actions `token_create|token_read|
//!   token_rotate|token_revoke` on `Lessor::Account` with a
//!   `TokenContext`), with the live policy set (reloads apply to the next
//!   request). A denial is *confirmable* when the same request with
//!   `confirmed = true` is allowed: policies write a broad combination as
//!   `forbid (...) when { ... } unless { context.confirmed };`, and lessor
//!   finds out by deciding once more, so no annotation can disagree with
//!   what the policy does.
//!
//! Must not import: http, store, config.

use std::sync::Arc;

use crate::policy::{Action, PersonInfo, PolicyEngine};
use crate::principal::Person;

pub use crate::policy::TokenContext;

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
        self.policy_action().as_str()
    }

    fn policy_action(self) -> Action {
        match self {
            TokenAction::Create => Action::TokenCreate,
            TokenAction::Read => Action::TokenRead,
            TokenAction::Rotate => Action::TokenRotate,
            TokenAction::Revoke => Action::TokenRevoke,
        }
    }
}

/// The account acted on (Cedar's `Lessor::Account`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountInfo {
    pub name: String,
}

/// A permission: the policies that gave it (for the audit).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allowed {
    pub policies: Vec<String>,
}

/// A refusal: shown to the person as is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denied {
    pub message: String,
    /// The deciding policy ids (the forbids; none when nothing permitted).
    pub policies: Vec<String>,
    /// Their reasons (for the audit).
    pub reasons: Vec<String>,
    /// True when the same request with `confirm = true` would be allowed.
    pub confirmable: bool,
}

/// The one seam between customer tokens and the policy engine.
pub trait TokenAuthorizer: Send + Sync {
    fn decide(&self, person: &Person, action: TokenAction, account: &AccountInfo, ctx: &TokenContext) -> Result<Allowed, Denied>;
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

/// A person as Cedar sees them (`Lessor::Person`).
fn person_info(p: &Person) -> PersonInfo {
    PersonInfo {
        provider: p.provider.clone(),
        issuer: p.issuer.clone(),
        subject: p.subject.clone(),
        email: p.email.clone(),
        name: p.name.clone(),
        groups: p.groups.clone(),
    }
}

/// Cedar decides: the live policy set of `engine` (a reload applies to the
/// next decision).
pub struct CedarTokens {
    engine: Arc<PolicyEngine>,
}

impl CedarTokens {
    pub fn new(engine: Arc<PolicyEngine>) -> CedarTokens {
        CedarTokens { engine }
    }
}

impl TokenAuthorizer for CedarTokens {
    fn decide(&self, person: &Person, action: TokenAction, account: &AccountInfo, ctx: &TokenContext) -> Result<Allowed, Denied> {
        let policies = self.engine.current();
        let who = person_info(person);
        let failed = |e: crate::policy::PolicyError| Denied {
            message: format!("`{}` on account `{}` could not be decided: {e}", action.as_str(), account.name),
            policies: vec![],
            reasons: vec![],
            confirmable: false,
        };
        let d = policies.decide_token(&who, action.policy_action(), &account.name, ctx).map_err(failed)?;
        if d.allowed {
            return Ok(Allowed { policies: d.policy_ids() });
        }
        let ids = d.policy_ids();
        let reasons: Vec<String> = d.policies.iter().filter_map(|p| p.reason.clone()).collect();
        // Confirmable: the same request, confirmed, is allowed.
        if !ctx.confirmed {
            let confirmed = TokenContext { confirmed: true, ..ctx.clone() };
            if policies.decide_token(&who, action.policy_action(), &account.name, &confirmed).is_ok_and(|c| c.allowed) {
                let why: Vec<String> = d
                    .policies
                    .iter()
                    .map(|p| match &p.reason {
                        Some(r) => format!("policy `{}`: {r}", p.id),
                        None => format!("policy `{}`", p.id),
                    })
                    .collect();
                let scopes = if ctx.scopes.is_empty() { "this request".to_string() } else { format!("scopes {}", ctx.scopes.join(" + ")) };
                return Err(Denied {
                    message: format!("{scopes} need an explicit confirmation (`confirm`: true); {}", why.join("; ")),
                    policies: ids,
                    reasons,
                    confirmable: true,
                });
            }
        }
        Err(Denied { message: d.message, policies: ids, reasons, confirmable: false })
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
}
