//! Lease-derived user names, the server flavour that bounds their length,
//! and generated passwords with their `mysql_native_password` hash.
//!
//! Knows nothing of connections or SQL execution.

use lessor_plugin::Workload;
use secrecy::{ExposeSecret, SecretString};
use sha1::{Digest, Sha1};
use zeroize::Zeroize;

pub use lessor_plugin_sql::naming::{lease_hex, new_password, LEASE_HEX_LEN, MIN_LEASE_HEX_LEN};

/// The shortest server limit on user names (MySQL 8): 32 characters.
pub const MYSQL_MAX_USER: usize = 32;
/// MariaDB's limit on user names: 80 characters.
pub const MARIADB_MAX_USER: usize = 80;

/// Which server the connection talks to, from `@@version`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    MySql,
    MariaDb,
}

impl Flavor {
    /// From `SELECT @@version` (MariaDB's says `...-MariaDB...`).
    pub fn of_version(version: &str) -> Flavor {
        if version.to_ascii_lowercase().contains("mariadb") {
            Flavor::MariaDb
        } else {
            Flavor::MySql
        }
    }

    pub fn max_user(self) -> usize {
        match self {
            Flavor::MySql => MYSQL_MAX_USER,
            Flavor::MariaDb => MARIADB_MAX_USER,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Flavor::MySql => "MySQL",
            Flavor::MariaDb => "MariaDB",
        }
    }
}

/// The part of the lease hex every MariaDB user name of the lease ends
/// with (the whole hex of a core lease id).
pub fn lease_suffix(prefix: &str, hex: &str) -> String {
    let room = MARIADB_MAX_USER.saturating_sub(prefix.len() + 2);
    hex[hex.len().saturating_sub(room)..].to_owned()
}

/// Digits of MySQL user names: 128 bits in 22 of them (62^22 > 2^128).
const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
pub const MYSQL_ID_LEN: usize = 22;

/// A user name for a lease, at most `flavor.max_user()` characters.
/// - MariaDB (80): `<prefix>_<readable>_<hex>`, `<readable>` from the role
///   and the workload (attribute `repository` after its last `/`, else the
///   subject's). Every name of a lease ends with [`lease_suffix`].
/// - MySQL (32): `<prefix>_<the lease id's 128 bits in 22 base-62 digits>`,
///   the whole id in what MySQL allows, so a listed name maps back to its
///   lease ([`mysql_lease_of`]). An id that is not 32 hex digits (not the
///   core's) gets `<prefix>_<its last letters and digits>`.
pub fn user_name(flavor: Flavor, prefix: &str, role: &str, workload: &Workload, hex: &str) -> String {
    if flavor == Flavor::MySql {
        return mysql_user(prefix, hex);
    }
    lessor_plugin_sql::naming::readable_name(MARIADB_MAX_USER, prefix, role, workload, hex)
}

/// The one MySQL user name of a lease (see [`user_name`]).
pub fn mysql_user(prefix: &str, hex: &str) -> String {
    match (hex.len() == LEASE_HEX_LEN).then(|| u128::from_str_radix(hex, 16).ok()).flatten() {
        Some(mut n) => {
            let mut digits = [b'0'; MYSQL_ID_LEN];
            for d in digits.iter_mut().rev() {
                *d = BASE62[(n % 62) as usize];
                n /= 62;
            }
            format!("{prefix}_{}", String::from_utf8_lossy(&digits))
        }
        None => {
            let room = MYSQL_MAX_USER.saturating_sub(prefix.len() + 1);
            format!("{prefix}_{}", &hex[hex.len().saturating_sub(room)..])
        }
    }
}

/// The core lease id a MySQL user name in lessor's shape stands for:
/// `<prefix>_` then 22 base-62 digits that [`mysql_user`] would write
/// for it. Anything else (the admin, a shorter or longer name, a value over
/// 128 bits) is `None`.
pub fn mysql_lease_of(prefix: &str, name: &str) -> Option<lessor_plugin::LeaseId> {
    let digits = name.strip_prefix(prefix)?.strip_prefix('_')?;
    if digits.len() != MYSQL_ID_LEN {
        return None;
    }
    let mut n: u128 = 0;
    for b in digits.bytes() {
        let d = BASE62.iter().position(|&c| c == b)?;
        n = n.checked_mul(62)?.checked_add(d as u128)?;
    }
    let hex = format!("{n:032x}");
    (mysql_user(prefix, &hex) == name).then(|| lessor_plugin::LeaseId::new(format!("{}{hex}", lessor_plugin_sql::naming::CORE_LEASE_ID_PREFIX)))
}

/// The regular expression (MySQL's ICU syntax) of [`mysql_lease_of`]'s
/// shape, for listing.
pub fn mysql_owned_regex(prefix: &str) -> String {
    format!("^{}_[0-9A-Za-z]{{{MYSQL_ID_LEN}}}$", lessor_plugin_sql::naming::regex_literal(prefix))
}

/// The `mysql_native_password` authentication string of `password`:
/// `*` + upper-case hex of SHA1(SHA1(password)). What MariaDB stores; sent
/// as `IDENTIFIED BY PASSWORD '*...'` so the password itself never reaches
/// the server in a statement.
pub fn native_hash(password: &SecretString) -> SecretString {
    let mut inner = Sha1::digest(password.expose_secret().as_bytes());
    let outer = Sha1::digest(inner.as_slice());
    inner.as_mut_slice().zeroize();
    SecretString::from(format!("*{}", hex::encode_upper(outer)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_each_flavor_and_share_the_suffix() {
        let hex = "0123456789abcdef0123456789abcdef";
        let w = Workload { subject: "repo:shop/Orders-API:ref".into(), ..Default::default() };
        let my = user_name(Flavor::MySql, "lessor", "app", &w, hex);
        // (Python: 0x0123...cdef in base 62 over 0-9A-Za-z.)
        assert_eq!(my, "lessor_0296tiiBb3U904RIpygpjj");
        assert_eq!(my.len(), 29);
        assert!(user_name(Flavor::MySql, "prefix12", "app", &w, hex).len() <= MYSQL_MAX_USER);
        assert_eq!(mysql_lease_of("lessor", &my).unwrap().as_str(), format!("lse_{hex}"));
        // The extremes of 128 bits, and a value just over.
        for hex in ["00000000000000000000000000000000", "ffffffffffffffffffffffffffffffff"] {
            let name = mysql_user("l", hex);
            assert_eq!(name.len(), 2 + MYSQL_ID_LEN, "{name}");
            assert_eq!(mysql_lease_of("l", &name).unwrap().as_str(), format!("lse_{hex}"));
        }
        assert_eq!(mysql_lease_of("l", "l_zzzzzzzzzzzzzzzzzzzzzz"), None);
        // Not lessor's shape: the admin, another prefix, a short or long name, a bad digit.
        for name in ["lessor_admin", "other_0296tiiBb3U904RIpygpjj", "lessor_0296tiiBb3U904RIpygpj", "lessor_0296tiiBb3U904RIpygpjjj", "lessor_0296tiiBb3U904RIpygpj-"] {
            assert_eq!(mysql_lease_of("lessor", name), None, "{name}");
        }
        // A lease id that is not the core's: its tail, within 32 characters.
        assert_eq!(mysql_user("lessor", "abcdef12"), "lessor_abcdef12");
        let maria = user_name(Flavor::MariaDb, "lessor", "app", &w, hex);
        assert_eq!(maria, format!("lessor_app_orders_api_ref_{hex}"));
        assert!(maria.ends_with(&lease_suffix("lessor", hex)));
        let long = user_name(Flavor::MariaDb, "prefix12", &"r".repeat(100), &w, hex);
        assert_eq!(long.len(), 80);
        assert!(long.ends_with(&format!("_{hex}")));
        assert_eq!(user_name(Flavor::MariaDb, "l", "日本", &Workload::default(), "abcdef12"), "l_x_abcdef12");
    }

    #[test]
    fn flavor_from_version() {
        assert_eq!(Flavor::of_version("10.11.19-MariaDB-0+deb12u1"), Flavor::MariaDb);
        assert_eq!(Flavor::of_version("8.0.36"), Flavor::MySql);
    }

    #[test]
    fn native_hash_matches_the_server() {
        // SELECT PASSWORD('password') on MariaDB.
        let h = native_hash(&SecretString::from("password".to_owned()));
        assert_eq!(h.expose_secret(), "*2470C0C06DEE42FD1618BB99005ADCA2EC9D1E19");
        let p = new_password().unwrap();
        assert_eq!(p.expose_secret().len(), 43);
        assert!(p.expose_secret().bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
    }
}
