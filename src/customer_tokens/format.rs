//! The customer token format: `<prefix>_<32 random base62><6 base62 CRC32>`
//! (like GitHub's `ghp_` tokens). 32 characters of base62 are 190 bits of
//! entropy; the CRC32 of the random part lets a secret scanner (and lessor,
//! before any store read) tell a real token from a look-alike. Only the
//! SHA-256 is stored.
//!
//! Must not import: http, store, policy, config.

use rand::Rng;
use secrecy::SecretString;
use sha2::{Digest, Sha256};

const ALPHABET: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
/// Random characters of a token.
pub const RANDOM_LEN: usize = 32;
/// Checksum characters (base62 of a CRC32 needs 6).
pub const CHECKSUM_LEN: usize = 6;
/// Longer presented tokens are refused before anything else.
pub const MAX_PRESENTED: usize = 64;
const CRC: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISO_HDLC);

fn base62_fixed(mut n: u32) -> [u8; CHECKSUM_LEN] {
    let mut out = [b'0'; CHECKSUM_LEN];
    for slot in out.iter_mut().rev() {
        *slot = ALPHABET[(n % 62) as usize];
        n /= 62;
    }
    out
}

fn checksum(random: &[u8]) -> [u8; CHECKSUM_LEN] {
    base62_fixed(CRC.checksum(random))
}

/// A fresh token with `prefix` (validated by config: 2-16 of a-z 0-9).
pub fn generate(prefix: &str) -> SecretString {
    let mut rng = rand::rng();
    let mut s = zeroize::Zeroizing::new(String::with_capacity(prefix.len() + 1 + RANDOM_LEN + CHECKSUM_LEN));
    s.push_str(prefix);
    s.push('_');
    let mut random = zeroize::Zeroizing::new([0u8; RANDOM_LEN]);
    for b in random.iter_mut() {
        *b = ALPHABET[rng.random_range(0..62usize)];
    }
    for &b in random.iter() {
        s.push(char::from(b));
    }
    for b in checksum(&random[..]) {
        s.push(char::from(b));
    }
    SecretString::from(s.as_str().to_owned())
}

/// Whether `token` has the shape and checksum of a token with `prefix`.
/// O(1): a bounded length is checked first.
pub fn well_formed(prefix: &str, token: &str) -> bool {
    if token.len() != prefix.len() + 1 + RANDOM_LEN + CHECKSUM_LEN || token.len() > MAX_PRESENTED {
        return false;
    }
    let Some(rest) = token.strip_prefix(prefix).and_then(|r| r.strip_prefix('_')) else { return false };
    let b = rest.as_bytes();
    if !b.iter().all(u8::is_ascii_alphanumeric) {
        return false;
    }
    let (random, sum) = b.split_at(RANDOM_LEN);
    checksum(random) == sum
}

/// The stored form: SHA-256, hex.
pub fn hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// The last 4 characters (shown with the prefix; part of the checksum).
pub fn last4(token: &str) -> String {
    token.get(token.len().saturating_sub(4)..).unwrap_or_default().to_owned()
}

/// How a token is shown after creation: `lsrc_…AbC1`.
pub fn masked(prefix: &str, last4: &str) -> String {
    format!("{prefix}_…{last4}")
}

/// The pattern secret scanners use for tokens with `prefix`.
pub fn scanner_regex(prefix: &str) -> String {
    format!(r"\b{prefix}_[0-9A-Za-z]{{{}}}\b", RANDOM_LEN + CHECKSUM_LEN)
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    #[test]
    fn tokens_have_the_prefix_190_bits_and_a_checksum() {
        let t = generate("lsrc");
        let s = t.expose_secret();
        assert!(s.starts_with("lsrc_") && s.len() == 5 + 38, "{s}");
        assert!(well_formed("lsrc", s));
        assert!(!well_formed("acme", s), "another prefix");
        assert_ne!(s, generate("lsrc").expose_secret());
        // log2(62) * 32 > 160
        assert!((62f64).log2() * RANDOM_LEN as f64 > 190.0);
    }

    #[test]
    fn one_changed_character_breaks_the_checksum() {
        let t = generate("lsrc");
        let s = t.expose_secret().to_owned();
        let mut broken = 0;
        for i in 5..s.len() {
            let mut b = s.clone().into_bytes();
            b[i] = if b[i] == b'a' { b'b' } else { b'a' };
            if !well_formed("lsrc", std::str::from_utf8(&b).unwrap()) {
                broken += 1;
            }
        }
        assert_eq!(broken, s.len() - 5, "every single-character change is caught");
        assert!(!well_formed("lsrc", &format!("{s}x")));
        assert!(!well_formed("lsrc", ""));
        assert!(!well_formed("lsrc", &"é".repeat(22)));
    }

    #[test]
    fn the_scanner_pattern_and_the_mask() {
        assert_eq!(scanner_regex("lsrc"), r"\blsrc_[0-9A-Za-z]{38}\b");
        assert_eq!(masked("lsrc", "Ab1z"), "lsrc_…Ab1z");
        assert_eq!(last4("lsrc_0123456789"), "6789");
        assert_eq!(base62_fixed(0), *b"000000");
        assert_eq!(base62_fixed(u32::MAX), *b"4gfFC3");
    }
}
