//! ACL vocabulary: which rules a scope may add, the user's name from its
//! lease id, the password and its SHA-256 form, and the `ACL SETUSER`
//! arguments. Pure functions; no connection.
//!
//! The password reaches Redis only as `#<sha256 hex>`: neither `MONITOR`,
//! the slowlog nor `ACL LOG` can show it in clear.

use lessor_plugin::{LeaseId, Workload};
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};

/// Longest user name lessor makes (Redis has no limit; this keeps `ACL
/// LIST` readable).
pub const MAX_NAME_BYTES: usize = 63;
/// The lease id's letters and digits at the end of every user name.
pub const LEASE_HEX_LEN: usize = 32;
/// Fewer letters and digits than this in a lease id: it cannot name a user.
pub const MIN_LEASE_HEX_LEN: usize = 8;
const PASSWORD_BYTES: usize = 32;

/// Whether a scope may add `rule` to a user. Allowed: key patterns (`~p`,
/// `%R~p`, `%W~p`, `%RW~p`, `allkeys`), channel patterns (`&p`,
/// `allchannels`), commands and categories (`+cmd`, `-cmd`, `+cmd|sub`,
/// `+@cat`, `-@cat`, `allcommands`, `nocommands`). Refused: anything about
/// passwords or the user's state (`on`, `off`, `>`, `<`, `#`, `!`,
/// `nopass`, `resetpass`, `reset`, selectors), which lessor alone sets.
pub fn check_rule(rule: &str) -> Result<(), String> {
    if rule.is_empty() {
        return Err("is empty".into());
    }
    if rule.bytes().any(|b| b.is_ascii_whitespace() || b.is_ascii_control()) {
        return Err("holds a space or a control character".into());
    }
    if matches!(rule, "allkeys" | "allchannels" | "allcommands" | "nocommands" | "resetkeys" | "resetchannels") {
        return Ok(());
    }
    let pattern = |p: &str| if p.is_empty() { Err("has an empty pattern".to_string()) } else { Ok(()) };
    if let Some(p) = rule.strip_prefix('~').or_else(|| rule.strip_prefix('&')) {
        return pattern(p);
    }
    if let Some(rest) = rule.strip_prefix('%') {
        let Some((perm, p)) = rest.split_once('~') else {
            return Err("a `%` rule is `%R~pattern`, `%W~pattern` or `%RW~pattern`".into());
        };
        if !matches!(perm, "R" | "W" | "RW" | "WR") {
            return Err(format!("`%{perm}~` is not `%R~`, `%W~` or `%RW~`"));
        }
        return pattern(p);
    }
    if let Some(c) = rule.strip_prefix('+').or_else(|| rule.strip_prefix('-')) {
        let name = c.strip_prefix('@').unwrap_or(c);
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'|' | b'-' | b'_' | b'.')) {
            return Err("is not `+command`, `+command|subcommand` or `+@category`".into());
        }
        return Ok(());
    }
    Err("is not a key (`~`, `%R~`), channel (`&`) or command (`+`, `-`) rule; password and on/off rules are lessor's".into())
}

/// The lease id's letters and digits, lowercased, last 32 of them.
pub fn lease_hex(id: &LeaseId) -> Option<String> {
    let all: Vec<char> = id
        .as_str()
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_lowercase())
        .collect();
    let tail: String = all[all.len().saturating_sub(LEASE_HEX_LEN)..].iter().collect();
    (tail.len() >= MIN_LEASE_HEX_LEN).then_some(tail)
}

fn sanitize(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        let c = c.to_ascii_lowercase();
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            out.push(c);
        } else if !out.ends_with('_') {
            out.push('_');
        }
    }
    out.trim_matches('_').to_owned()
}

fn after_last_slash(s: &str) -> &str {
    s.rsplit('/').next().unwrap_or(s)
}

/// `<prefix>_<readable>_<hex>`, at most 63 bytes, the `_<hex>` suffix
/// always whole; `<readable>` from the role and the workload (attribute
/// `repository` after its last `/`, else the subject).
pub fn user_name(prefix: &str, role: &str, workload: &Workload, hex: &str) -> String {
    let who = workload
        .attributes
        .get("repository")
        .map(|r| after_last_slash(r))
        .unwrap_or_else(|| after_last_slash(&workload.subject));
    let mut readable = sanitize(&format!("{role}_{who}"));
    readable.truncate(MAX_NAME_BYTES.saturating_sub(prefix.len() + hex.len() + 2));
    let readable = readable.trim_end_matches('_');
    let readable = if readable.is_empty() { "x" } else { readable };
    format!("{prefix}_{readable}_{hex}")
}

/// Whether `name` is a user this connection made (any lease).
pub fn is_ours(prefix: &str, name: &str) -> bool {
    name.strip_prefix(prefix).and_then(|r| r.strip_prefix('_')).is_some_and(|r| r.contains('_'))
}

/// Whether `name` is a user this connection made for the lease whose hex is
/// `hex`.
pub fn is_lease_user(prefix: &str, hex: &str, name: &str) -> bool {
    is_ours(prefix, name) && name.strip_suffix(hex).is_some_and(|r| r.ends_with('_'))
}

/// 256 random bits, URL-safe hex.
pub fn new_password() -> Result<SecretString, String> {
    let mut bytes = [0u8; PASSWORD_BYTES];
    rand::Rng::fill(&mut rand::rng(), &mut bytes[..]);
    let s = hex::encode(bytes);
    bytes.fill(0);
    Ok(SecretString::from(s))
}

/// `#<sha256 hex>`: the only form in which a password reaches Redis.
pub fn password_hash(password: &SecretString) -> String {
    format!("#{}", hex::encode(Sha256::digest(password.expose_secret().as_bytes())))
}

/// `!<sha256 hex>`: removes that password from a user.
pub fn password_unhash(password: &SecretString) -> String {
    format!("!{}", hex::encode(Sha256::digest(password.expose_secret().as_bytes())))
}

/// The arguments after `ACL SETUSER`: a clean user (`reset`), on, with the
/// password's hash and the granted scopes' rules, in scope order.
pub fn setuser_args<'a>(name: &str, hash: &str, rules: impl Iterator<Item = &'a String>) -> Vec<String> {
    let mut args = vec![name.to_owned(), "reset".to_owned(), "on".to_owned(), hash.to_owned()];
    args.extend(rules.cloned());
    args
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_allow_keys_channels_and_commands_only() {
        for ok in ["~cache:*", "%R~orders:*", "&events:*", "+@read", "-@dangerous", "+client|setname", "-flushall", "allkeys"] {
            check_rule(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for bad in ["on", "off", ">pw", "<pw", "#abc", "!abc", "nopass", "resetpass", "reset", "(~x)", "~", "+", "%X~a", "~a b", "clearselectors"] {
            assert!(check_rule(bad).is_err(), "{bad} must be refused");
        }
    }

    #[test]
    fn names_end_with_the_lease_and_are_found_by_it() {
        let w = Workload { subject: "repo:acme/shop:ref:main".into(), ..Default::default() };
        let hex = lease_hex(&LeaseId::new("lse_0123456789abcdef0123456789ABCDEF")).unwrap();
        assert_eq!(hex.len(), 32);
        let n = user_name("lessor", "cache", &w, &hex);
        assert!(n.len() <= MAX_NAME_BYTES && n.ends_with(&format!("_{hex}")) && n.starts_with("lessor_cache_"), "{n}");
        assert!(is_lease_user("lessor", &hex, &n));
        assert!(!is_lease_user("lessor", "0123456789abcdef", &n));
        assert!(!is_lease_user("other", &hex, &n));
        assert!(is_ours("lessor", &n) && !is_ours("lessor", "lessorx_a_b") && !is_ours("lessor", "default"));
        assert!(lease_hex(&LeaseId::new("a-b")).is_none());
    }

    #[test]
    fn the_password_is_sent_hashed() {
        let pw = new_password().unwrap();
        assert_eq!(pw.expose_secret().len(), 64);
        let h = password_hash(&pw);
        assert!(h.starts_with('#') && h.len() == 65 && !h.contains(pw.expose_secret()));
        let args = setuser_args("u", &h, ["~a".to_string()].iter());
        assert_eq!(args, vec!["u", "reset", "on", h.as_str(), "~a"]);
        assert!(!args.iter().any(|a| a.contains(pw.expose_secret())));
    }
}
