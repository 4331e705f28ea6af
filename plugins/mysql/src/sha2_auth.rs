//! The `caching_sha2_password` authentication string MySQL 8 stores for a
//! password, made here so that `CREATE USER ... IDENTIFIED WITH
//! caching_sha2_password AS '<string>'` carries it instead of the password.
//!
//! The string is `$A$005$`, a 20-byte salt and 43 characters of SHA-256-crypt
//! (Ulrich Drepper's algorithm, 5,000 rounds) of the password with that salt.
//! MySQL's variant of the algorithm uses all 20 salt bytes (the published one
//! stops at 16), so no crate computes it; the tests check it against strings
//! a MySQL 8.0 server made. The salt is drawn from letters and digits (MySQL
//! draws any byte but NUL and `$`), so the string needs no escaping in SQL.
//!
//! Must not import: sqlx.

use rand::TryRngCore;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use lessor_plugin::PluginError;

/// Rounds of SHA-256-crypt: MySQL's default and least
/// (`caching_sha2_password_digest_rounds`), written `005` (thousands, in hex).
const ROUNDS: usize = 5_000;
const SALT_LEN: usize = 20;
const PREFIX: &str = "$A$005$";

/// The authentication string of `password` with a fresh salt.
pub fn auth_string(password: &SecretString) -> Result<SecretString, PluginError> {
    const ALNUM: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut salt = [0u8; SALT_LEN];
    rand::rngs::OsRng
        .try_fill_bytes(&mut salt)
        .map_err(|e| PluginError::Retryable(format!("the OS random number generator failed: {e}")))?;
    // (A salt needs to be unique, not uniform: the slight bias of `% 62` is
    // of no matter.)
    for b in salt.iter_mut() {
        *b = ALNUM[usize::from(*b) % ALNUM.len()];
    }
    Ok(with_salt(password, &salt))
}

/// The authentication string of `password` with `salt` (20 bytes).
fn with_salt(password: &SecretString, salt: &[u8; SALT_LEN]) -> SecretString {
    let digest = sha256_crypt(password.expose_secret().as_bytes(), salt);
    let mut out = Zeroizing::new(Vec::with_capacity(PREFIX.len() + SALT_LEN + 43));
    out.extend_from_slice(PREFIX.as_bytes());
    out.extend_from_slice(salt);
    out.extend_from_slice(&digest[..]);
    SecretString::from(String::from_utf8_lossy(&out).into_owned())
}

/// SHA-256-crypt of `p` with salt `s`, `ROUNDS` rounds: the 43 characters
/// after the last `$` of `$5$rounds=5000$<salt>$...`.
fn sha256_crypt(p: &[u8], s: &[u8]) -> Zeroizing<[u8; 43]> {
    // B = H(P S P); A = H(P S, B repeated over len(P), then per bit of len(P)
    // from the lowest: B for a 1, P for a 0).
    let b = Sha256::new().chain_update(p).chain_update(s).chain_update(p).finalize();
    let mut a = Sha256::new().chain_update(p).chain_update(s);
    let mut left = p.len();
    while left > 32 {
        a.update(b);
        left -= 32;
    }
    a.update(&b[..left]);
    let mut n = p.len();
    while n > 0 {
        if n & 1 == 1 {
            a.update(b);
        } else {
            a.update(p);
        }
        n >>= 1;
    }
    let mut c = Zeroizing::new(<[u8; 32]>::from(a.finalize()));
    // P' = H(P repeated len(P) times), cut to len(P); S' = H(S repeated
    // 16 + A[0] times), cut to len(S).
    let mut dp = Sha256::new();
    for _ in 0..p.len() {
        dp.update(p);
    }
    let dp = Zeroizing::new(<[u8; 32]>::from(dp.finalize()));
    let p2 = Zeroizing::new(dp.iter().copied().cycle().take(p.len()).collect::<Vec<u8>>());
    let mut ds = Sha256::new();
    for _ in 0..16 + usize::from(c[0]) {
        ds.update(s);
    }
    let ds = ds.finalize();
    let s2: Vec<u8> = ds.iter().copied().cycle().take(s.len()).collect();
    for i in 0..ROUNDS {
        let mut h = Sha256::new();
        if i % 2 == 1 {
            h.update(&p2[..]);
        } else {
            h.update(&c[..]);
        }
        if i % 3 != 0 {
            h.update(&s2);
        }
        if i % 7 != 0 {
            h.update(&p2[..]);
        }
        if i % 2 == 1 {
            h.update(&c[..]);
        } else {
            h.update(&p2[..]);
        }
        *c = h.finalize().into();
    }
    // The crypt base-64 of C's bytes in the algorithm's order.
    const B64: &[u8] = b"./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    const ORDER: [(usize, usize, usize); 10] =
        [(0, 10, 20), (21, 1, 11), (12, 22, 2), (3, 13, 23), (24, 4, 14), (15, 25, 5), (6, 16, 26), (27, 7, 17), (18, 28, 8), (9, 19, 29)];
    let mut out = Zeroizing::new([0u8; 43]);
    let mut at = 0;
    let mut put = |w: u32, n: usize, out: &mut [u8; 43]| {
        let mut w = w;
        for _ in 0..n {
            out[at] = B64[(w & 0x3f) as usize];
            w >>= 6;
            at += 1;
        }
    };
    for (x, y, z) in ORDER {
        put((u32::from(c[x]) << 16) | (u32::from(c[y]) << 8) | u32::from(c[z]), 4, &mut out);
    }
    put((u32::from(c[31]) << 8) | u32::from(c[30]), 3, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn salt(hex: &str) -> [u8; SALT_LEN] {
        hex::decode(hex).unwrap().try_into().unwrap()
    }

    /// Strings a MySQL 8.0.46 server stored for `CREATE USER ... IDENTIFIED
    /// WITH caching_sha2_password BY '<password>'` (`HEX(authentication_string)`).
    #[test]
    fn matches_what_mysql_8_stores() {
        let cases = [
            ("password", "712505416227190A036543171B66507A62381902", "jUeIc.bZ9nBllTobZJEeVAn2yECqFKJtlmEdl3NnyV4"),
            (
                "Zx9-0123456789abcdefghijABCDEFGHIJ_qwertyuiopa",
                "5A5C574A464F0B7F2F27265F7002437574725D0C",
                "j/jLl/FwsDniqZxxiU2mMQ9nZFetDUw.913NFu4zy14",
            ),
        ];
        for (pw, s, digest) in cases {
            let got = sha256_crypt(pw.as_bytes(), &salt(s));
            assert_eq!(std::str::from_utf8(&got[..]).unwrap(), digest, "{pw}");
        }
    }

    #[test]
    fn a_fresh_string_has_the_shape_and_a_letters_and_digits_salt() {
        let pw = SecretString::from("p".repeat(43));
        let a = auth_string(&pw).unwrap();
        let b = auth_string(&pw).unwrap();
        let (a, b) = (a.expose_secret(), b.expose_secret());
        assert_eq!(a.len(), 70);
        assert!(a.starts_with(PREFIX) && a[7..27].bytes().all(|c| c.is_ascii_alphanumeric()), "{a}");
        assert_ne!(a, b, "a salt per string");
    }
}
