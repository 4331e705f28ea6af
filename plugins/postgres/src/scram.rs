//! SCRAM-SHA-256 password verifiers (RFC 5802 / RFC 7677), computed on our
//! side so the plaintext password never reaches PostgreSQL, its logs or
//! `pg_stat_statements`: the server stores the verifier exactly as it would
//! have computed it from `PASSWORD 'plaintext'`.
//!
//! Owns key derivation only; knows nothing of SQL. PostgreSQL applies SASLprep
//! to passwords; ours are base64url (ASCII), for which SASLprep is the
//! identity, so no normalisation is needed.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hmac::{Hmac, Mac};
use rand::TryRngCore;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

/// PostgreSQL's default `scram_iterations`.
pub const ITERATIONS: u32 = 4096;

/// Salt length PostgreSQL uses (`SCRAM_DEFAULT_SALT_LEN`).
pub const SALT_LEN: usize = 16;

fn hmac(key: &[u8], msg: &[u8]) -> [u8; 32] {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(msg);
    mac.finalize().into_bytes().into()
}

/// The verifier for `password` with a fresh 16-byte salt from the OS CSPRNG.
pub fn verifier(password: &[u8]) -> Result<String, rand::rand_core::OsError> {
    let mut salt = [0u8; SALT_LEN];
    rand::rngs::OsRng.try_fill_bytes(&mut salt)?;
    Ok(verifier_with(password, &salt, ITERATIONS))
}

/// `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>` (standard
/// base64), as PostgreSQL stores it in `pg_authid.rolpassword`.
pub fn verifier_with(password: &[u8], salt: &[u8], iterations: u32) -> String {
    let mut salted = Zeroizing::new([0u8; 32]);
    pbkdf2::pbkdf2_hmac::<Sha256>(password, salt, iterations, salted.as_mut());
    let client_key = Zeroizing::new(hmac(salted.as_ref(), b"Client Key"));
    let stored_key = Sha256::digest(client_key.as_ref());
    let server_key = hmac(salted.as_ref(), b"Server Key");
    format!(
        "SCRAM-SHA-256${iterations}:{}${}:{}",
        STANDARD.encode(salt),
        STANDARD.encode(stored_key),
        STANDARD.encode(server_key)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_rfc7677_keys() {
        // RFC 7677's example: password "pencil", salt W22ZaJ0SNY7soEsUEjb6gQ==,
        // 4096 iterations. Its ServerSignature for the example AuthMessage is
        // 6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=; we check our keys by
        // recomputing that signature and the client proof.
        let salt = STANDARD.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
        let v = verifier_with(b"pencil", &salt, 4096);
        let (_, keys) = v.rsplit_once('$').unwrap();
        let (stored, server) = keys.split_once(':').unwrap();
        let stored = STANDARD.decode(stored).unwrap();
        let server = STANDARD.decode(server).unwrap();
        let auth_message = "n=user,r=rOprNGfwEbeRWgbNEkqO,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096,c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
        let server_sig = hmac(&server, auth_message.as_bytes());
        assert_eq!(
            STANDARD.encode(server_sig),
            "6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
        );
        // ClientProof = ClientKey XOR ClientSignature; H(ClientKey) = StoredKey.
        let proof = STANDARD
            .decode("dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=")
            .unwrap();
        let client_sig = hmac(&stored, auth_message.as_bytes());
        let client_key: Vec<u8> = proof.iter().zip(client_sig).map(|(a, b)| a ^ b).collect();
        assert_eq!(Sha256::digest(&client_key).as_slice(), stored.as_slice());
        assert!(v.starts_with("SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==$"));
    }

    #[test]
    fn fresh_salts_differ() {
        let a = verifier(b"pw").unwrap();
        let b = verifier(b"pw").unwrap();
        assert_ne!(a, b);
        let salt = a.split(['$', ':']).nth(2).unwrap();
        assert_eq!(STANDARD.decode(salt).unwrap().len(), SALT_LEN);
    }
}
