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

/// The part of the lease hex every user name of the lease ends with, on
/// either flavour: what fits after `<prefix>_` in MySQL's 32 characters.
pub fn lease_suffix(prefix: &str, hex: &str) -> String {
    let room = MYSQL_MAX_USER.saturating_sub(prefix.len() + 1);
    hex[hex.len().saturating_sub(room)..].to_owned()
}

/// A user name for a lease, at most `flavor.max_user()` characters.
/// MariaDB (80): `<prefix>_<readable>_<hex>`, `<readable>` from the role and
/// the workload (attribute `repository` after its last `/`, else the
/// subject's). MySQL (32): `<prefix>_<hex tail>`, no room for more. Every
/// name of a lease ends with [`lease_suffix`].
pub fn user_name(flavor: Flavor, prefix: &str, role: &str, workload: &Workload, hex: &str) -> String {
    if flavor == Flavor::MySql {
        return format!("{prefix}_{}", lease_suffix(prefix, hex));
    }
    lessor_plugin_sql::naming::readable_name(MARIADB_MAX_USER, prefix, role, workload, hex)
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
        assert_eq!(my, "lessor_789abcdef0123456789abcdef");
        assert_eq!(my.len(), 32);
        let maria = user_name(Flavor::MariaDb, "lessor", "app", &w, hex);
        assert_eq!(maria, format!("lessor_app_orders_api_ref_{hex}"));
        let suffix = lease_suffix("lessor", hex);
        assert!(my.ends_with(&suffix) && maria.ends_with(&suffix));
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
