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
use zeroize::{Zeroize, Zeroizing};

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

/// SHA-256's initial state (FIPS 180-4, 5.3.3).
const IV: [u32; 8] = [0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19];

/// The 5,000 rounds, which are nearly all of the string's cost, and the
/// largest part of lessor's CPU per MySQL 8 account issued (a 43-character
/// password, release build, one 2-CPU AMD EPYC VM, 2026-12-02: 0.84 to 0.94
/// ms a string with one incremental hasher per round, 0.64 to 0.80 ms this
/// way, 0.53 ms at a quieter moment with `C` copied as slices rather than
/// byte by byte (0.60 before that); SHA-NI does the compressions either
/// way).
///
/// Round `i` hashes `C` (the previous round's digest) with the fixed `P'`
/// and `S'`: `P'` or `C` first (`i` odd or even), `S'` unless `i % 3 == 0`,
/// `P'` unless `i % 7 == 0`, then `C` or `P'`. So there are eight message
/// shapes, each of a fixed length: each is kept here already padded, with
/// only `C`'s 32 bytes written per round, and the blocks are compressed
/// directly (no incremental hasher buffering and padding 5,000 times).
/// Where a shape's first block(s) hold only `P'` and `S'` (odd rounds, whose
/// `C` comes last), the state after them is computed once: with lessor's
/// 43-character passwords that skips one block of three or of two in 3
/// rounds out of 7, a sixth of all compressions.
struct Rounds {
    /// Round `i`'s at `(i odd) << 2 | (i % 3 != 0) << 1 | (i % 7 != 0)`.
    shapes: [Shape; 8],
}

struct Shape {
    /// The whole padded message in blocks; `C` goes at byte `c_at`.
    msg: Vec<Block>,
    c_at: usize,
    /// Blocks already compressed into `mid` (the whole blocks before `C`).
    skip: usize,
    mid: Zeroizing<[u32; 8]>,
}

impl Drop for Shape {
    /// The blocks hold `P'` (the password's digest).
    fn drop(&mut self) {
        for block in &mut self.msg {
            block.as_mut_slice().zeroize();
        }
    }
}

impl Rounds {
    fn new(p2: &[u8], s2: &[u8]) -> Rounds {
        let shapes = std::array::from_fn(|k| {
            let (odd, with_s, with_p) = (k & 4 != 0, k & 2 != 0, k & 1 != 0);
            let mut msg = Zeroizing::new(Vec::with_capacity(32 + s2.len() + 2 * p2.len() + 72));
            msg.extend_from_slice(if odd { p2 } else { &[0; 32] });
            if with_s {
                msg.extend_from_slice(s2);
            }
            if with_p {
                msg.extend_from_slice(p2);
            }
            let c_at = if odd { msg.len() } else { 0 };
            msg.extend_from_slice(if odd { &[0; 32] } else { p2 });
            // SHA-256 padding: 0x80, zeros to 56 mod 64, the length in bits.
            let bits = (msg.len() as u64).wrapping_mul(8);
            msg.push(0x80);
            while msg.len() % 64 != 56 {
                msg.push(0);
            }
            msg.extend_from_slice(&bits.to_be_bytes());
            let skip = c_at / 64;
            let msg: Vec<Block> = msg.chunks_exact(64).map(Block::clone_from_slice).collect();
            let mut mid = Zeroizing::new(IV);
            sha2::compress256(&mut mid, &msg[..skip]);
            Shape { msg, c_at, skip, mid }
        });
        Rounds { shapes }
    }

    /// Round `i`: `c` becomes the digest of round `i`'s message.
    fn round(&mut self, i: usize, c: &mut [u8; 32]) {
        let k = usize::from(i % 2 == 1) << 2 | usize::from(!i.is_multiple_of(3)) << 1 | usize::from(!i.is_multiple_of(7));
        let shape = &mut self.shapes[k];
        // `C` spans one block or the end of one and the start of the next.
        let (first, at) = (shape.c_at / 64, shape.c_at % 64);
        let n = 32.min(64 - at);
        shape.msg[first][at..at + n].copy_from_slice(&c[..n]);
        if n < 32 {
            shape.msg[first + 1][..32 - n].copy_from_slice(&c[n..]);
        }
        let mut state = Zeroizing::new(*shape.mid);
        sha2::compress256(&mut state, &shape.msg[shape.skip..]);
        for (out, word) in c.chunks_exact_mut(4).zip(state.iter()) {
            out.copy_from_slice(&word.to_be_bytes());
        }
    }
}

/// One 64-byte block of a SHA-256 message.
type Block = sha2::digest::generic_array::GenericArray<u8, sha2::digest::consts::U64>;

/// SHA-256-crypt of `p` with salt `s`, `ROUNDS` rounds: the 43 characters
/// after the last `$` of `$5$rounds=5000$<salt>$...`.
fn sha256_crypt(p: &[u8], s: &[u8]) -> Zeroizing<[u8; 43]> {
    crypt_with(p, s, |p2, s2, c| {
        let mut rounds = Rounds::new(p2, s2);
        for i in 0..ROUNDS {
            rounds.round(i, c);
        }
    })
}

/// SHA-256-crypt of `p` with salt `s`, the rounds (from `P'`, `S'`, and
/// `C` before the first) run by `rounds`.
fn crypt_with(p: &[u8], s: &[u8], rounds: impl FnOnce(&[u8], &[u8], &mut [u8; 32])) -> Zeroizing<[u8; 43]> {
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
    rounds(&p2, &s2, &mut c);
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

    /// The rounds as the algorithm states them, one hasher per round.
    fn plain_rounds(p2: &[u8], s2: &[u8], c: &mut [u8; 32]) {
        for i in 0..ROUNDS {
            let mut h = Sha256::new();
            h.update(if i % 2 == 1 { p2 } else { &c[..] });
            if i % 3 != 0 {
                h.update(s2);
            }
            if i % 7 != 0 {
                h.update(p2);
            }
            h.update(if i % 2 == 1 { &c[..] } else { p2 });
            *c = h.finalize().into();
        }
    }

    /// The precomputed shapes and midstates give the plain algorithm's
    /// result for every password length up to 130 (each shape with no,
    /// one and two whole blocks before `C`, `C` across a block boundary,
    /// messages of one to five blocks).
    #[test]
    fn the_fast_rounds_are_the_plain_rounds_at_every_length() {
        let s = salt("5A5C574A464F0B7F2F27265F7002437574725D0C");
        for len in 0..=130 {
            let p: Vec<u8> = (0..len).map(|i| b'!' + ((i * 7 + len) % 90) as u8).collect();
            let fast = sha256_crypt(&p, &s);
            let plain = crypt_with(&p, &s, plain_rounds);
            assert_eq!(&fast[..], &plain[..], "password length {len}");
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
