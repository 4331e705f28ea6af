//! Vendor object names derived from lease ids, and back: the lease id's
//! letters and digits as a name's suffix, a readable middle from the role
//! and the workload, the pattern the reconciler lists by and the lease id a
//! listed name maps back to; generated passwords. Knows nothing of any
//! server's limits beyond the one it is given. Must not import: sqlx, any
//! plugin.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use lessor_plugin::{LeaseId, PluginError, Workload};
use rand::TryRngCore;
use secrecy::SecretString;
use zeroize::Zeroizing;

/// The lease-derived suffix of a name: at most this many of the lease id's
/// last letters and digits...
pub const LEASE_HEX_LEN: usize = 32;
/// ...and at least this many (shorter ids cannot name an account safely).
pub const MIN_LEASE_HEX_LEN: usize = 8;

/// Random bytes in a generated password (256 bits).
const PASSWORD_BYTES: usize = 32;

/// The core's lease ids are `lse_` and 32 lowercase hex digits
/// (`lessor::lease::new_lease_id`), so a name's `_<32 hex>` suffix is the
/// whole id's letters and digits ([`lease_hex`]) and maps back to it.
pub const CORE_LEASE_ID_PREFIX: &str = "lse_";

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

/// `<prefix>_<readable>_<hex>`, at most `max` bytes, the `_<hex>` suffix
/// always whole. `<readable>` comes from the role and the workload (the
/// part after the last `/` of attribute `repository`, else of the subject),
/// lowercased letters and digits joined by `_`; `x` when nothing is left.
pub fn readable_name(max: usize, prefix: &str, role: &str, workload: &Workload, hex: &str) -> String {
    let who = workload
        .attributes
        .get("repository")
        .map(|r| after_last_slash(r))
        .unwrap_or_else(|| after_last_slash(&workload.subject));
    let mut readable = sanitize(&format!("{role}_{who}"));
    readable.truncate(max.saturating_sub(prefix.len() + hex.len() + 2));
    let readable = readable.trim_end_matches('_');
    let readable = if readable.is_empty() { "x" } else { readable };
    format!("{prefix}_{readable}_{hex}")
}

/// A regular expression matching exactly the names [`readable_name`] makes
/// from the core's lease ids under `prefix`: `<prefix>_<readable>_<32 hex>`.
/// The admin (`lessor_admin`) and anything else merely starting with the
/// prefix does not match, so the reconciler can never take it.
pub fn owned_regex(prefix: &str) -> String {
    format!("^{}_.+_[0-9a-f]{{{LEASE_HEX_LEN}}}$", regex_literal(prefix))
}

/// `s` as a literal in a regular expression (every character but letters
/// and digits escaped; POSIX and ICU syntax alike).
pub fn regex_literal(s: &str) -> String {
    let mut p = String::with_capacity(s.len() * 2);
    for c in s.chars() {
        if !c.is_ascii_alphanumeric() {
            p.push('\\');
        }
        p.push(c);
    }
    p
}

/// The lease id a listed name derives from (see [`owned_regex`]).
pub fn lease_of(name: &str) -> Option<LeaseId> {
    let (_, hex) = name.rsplit_once('_')?;
    let ok = hex.len() == LEASE_HEX_LEN && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    ok.then(|| LeaseId::new(format!("{CORE_LEASE_ID_PREFIX}{hex}")))
}

/// 256 random bits, base64url (43 characters: no quote, no backslash).
pub fn new_password() -> Result<SecretString, PluginError> {
    let mut bytes = Zeroizing::new([0u8; PASSWORD_BYTES]);
    rand::rngs::OsRng
        .try_fill_bytes(bytes.as_mut())
        .map_err(|e| PluginError::Retryable(format!("the OS random number generator failed: {e}")))?;
    Ok(SecretString::from(URL_SAFE_NO_PAD.encode(bytes.as_ref())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    #[test]
    fn lease_hex_takes_the_tail() {
        let id = LeaseId::new("lse_0123456789abcdef0123456789ABCDEF");
        assert_eq!(lease_hex(&id).unwrap(), "0123456789abcdef0123456789abcdef");
        assert_eq!(lease_hex(&LeaseId::new("confa18f3")).unwrap(), "confa18f3");
        assert_eq!(lease_hex(&LeaseId::new("a-b")), None);
    }

    #[test]
    fn names_keep_the_hex_and_map_back() {
        let hex = "0123456789abcdef0123456789abcdef";
        let w = Workload { subject: "repo:shop/Orders-API:ref".into(), ..Default::default() };
        let n = readable_name(63, "lessor", "app", &w, hex);
        assert_eq!(n, format!("lessor_app_orders_api_ref_{hex}"));
        let long = readable_name(63, "lessor", &"r".repeat(100), &w, hex);
        assert_eq!(long.len(), 63);
        assert_eq!(lease_of(&long).unwrap().as_str(), format!("lse_{hex}"));
        assert_eq!(lease_of("lessor_admin"), None);
        assert_eq!(owned_regex("a.b"), "^a\\.b_.+_[0-9a-f]{32}$");
        assert_eq!(new_password().unwrap().expose_secret().len(), 43);
    }
}
