//! The audit keys: an HMAC-SHA256 key that hashes sensitive values, and an
//! Ed25519 key that signs checkpoints. Both are generated (0600) on first
//! start when missing; the signing key's public half is written next to it
//! (`<signing key>.pub`, base64) for verifiers.

use std::path::{Path, PathBuf};

use base64::Engine;
use rand::RngCore;
use ring::signature::{Ed25519KeyPair, KeyPair};
use secrecy::{ExposeSecret, SecretSlice};

use super::AuditError;
use crate::seal::write_private_file;

/// `hmac-sha256:<hex>` of `value` under `key`.
pub fn hmac_hex(key: &ring::hmac::Key, value: &[u8]) -> String {
    format!("hmac-sha256:{}", hex::encode(ring::hmac::sign(key, value).as_ref()))
}

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::STANDARD
}

fn read_or_create(path: &Path, make: impl FnOnce() -> Result<Vec<u8>, AuditError>) -> Result<SecretSlice<u8>, AuditError> {
    let key_err = |e: String| AuditError::Key { path: path.to_owned(), message: e };
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let raw = b64().decode(text.trim()).map_err(|_| key_err("not base64".into()))?;
            Ok(SecretSlice::from(raw))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let raw = make()?;
            write_private_file(path, b64().encode(&raw).as_bytes()).map_err(|e| key_err(format!("cannot write: {e}")))?;
            tracing::info!(path = %path.display(), "generated audit key");
            Ok(SecretSlice::from(raw))
        }
        Err(e) => Err(key_err(format!("cannot read: {e}"))),
    }
}

/// Reads the HMAC key (32+ bytes, base64), creating it when missing.
pub fn load_hmac(path: &Path, create: bool) -> Result<ring::hmac::Key, AuditError> {
    let raw = if create {
        read_or_create(path, || {
            let mut b = vec![0u8; 32];
            rand::rng().fill_bytes(&mut b);
            Ok(b)
        })?
    } else {
        read_or_create(path, || {
            Err(AuditError::Key { path: path.to_owned(), message: "does not exist (the daemon creates it on first start)".into() })
        })?
    };
    if raw.expose_secret().len() < 32 {
        return Err(AuditError::Key { path: path.to_owned(), message: "must hold at least 32 bytes".into() });
    }
    Ok(ring::hmac::Key::new(ring::hmac::HMAC_SHA256, raw.expose_secret()))
}

/// The checkpoint signer.
pub struct Signer {
    pair: Ed25519KeyPair,
    pub key_id: String,
    pub public_b64: String,
}

impl Signer {
    pub fn sign(&self, msg: &[u8]) -> String {
        b64().encode(self.pair.sign(msg).as_ref())
    }
}

/// Where the public half of a signing key is written.
pub fn public_key_path(signing_key: &Path) -> PathBuf {
    let mut s = signing_key.as_os_str().to_owned();
    s.push(".pub");
    PathBuf::from(s)
}

/// Reads the Ed25519 signing key (PKCS#8, base64), creating it when missing,
/// and (re)writes its public half next to it.
pub fn load_signer(path: &Path) -> Result<Signer, AuditError> {
    let pkcs8 = read_or_create(path, || {
        let rng = ring::rand::SystemRandom::new();
        Ed25519KeyPair::generate_pkcs8(&rng)
            .map(|d| d.as_ref().to_vec())
            .map_err(|_| AuditError::Key { path: path.to_owned(), message: "cannot generate an Ed25519 key".into() })
    })?;
    let pair = Ed25519KeyPair::from_pkcs8(pkcs8.expose_secret())
        .map_err(|_| AuditError::Key { path: path.to_owned(), message: "not an Ed25519 PKCS#8 key".into() })?;
    let public = pair.public_key().as_ref().to_vec();
    let public_b64 = b64().encode(&public);
    let pub_path = public_key_path(path);
    if std::fs::read_to_string(&pub_path).map(|t| t.trim() != public_b64).unwrap_or(true) {
        std::fs::write(&pub_path, format!("{public_b64}\n"))
            .map_err(|e| AuditError::Key { path: pub_path.clone(), message: format!("cannot write: {e}") })?;
    }
    Ok(Signer { key_id: super::chain::key_id(&public), pair, public_b64 })
}

/// Reads a public key file (base64 of the raw 32 bytes).
pub fn read_public_key(path: &Path) -> Result<Vec<u8>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read public key {}: {e}", path.display()))?;
    let raw = b64().decode(text.trim()).map_err(|_| format!("public key {} is not base64", path.display()))?;
    if raw.len() != 32 {
        return Err(format!("public key {} is not a raw Ed25519 key (32 bytes)", path.display()));
    }
    Ok(raw)
}
