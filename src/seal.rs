//! Encryption of secrets at rest (AES-256-GCM) with a key-encryption key
//! (the "seal key") that never enters the store.
//!
//! A sealed value is `version(1) | key id(8) | nonce(12) | ciphertext+tag`,
//! and the additional data binds it to its slot (connection + key), so a
//! ciphertext copied to another row does not decrypt. The key id lets a wrong
//! seal key be named as such rather than reported as corruption.
//!
//! Must not import: http, policy, plugins, store, lease, config.

use std::io::Write;
use std::path::Path;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine;
use rand::RngCore;
use secrecy::{ExposeSecret, SecretBox};
use sha2::{Digest, Sha256};

const VERSION: u8 = 1;

#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("seal key file {path}: {message}")]
    KeyFile { path: String, message: String },
    #[error(
        "a secret in the store was sealed with key id {stored}, but the configured seal key has id {configured}: \
         start lessor with the seal key this store was created with"
    )]
    WrongKey { stored: String, configured: String },
    #[error("a sealed value is corrupt or was moved to another slot")]
    Corrupt,
}

/// The key-encryption key.
pub struct Seal {
    key: SecretBox<[u8; 32]>,
    kid: [u8; 8],
}

impl std::fmt::Debug for Seal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Seal(kid={})", self.key_id())
    }
}

impl Seal {
    pub fn from_bytes(bytes: [u8; 32]) -> Seal {
        let kid_full = Sha256::new().chain_update(b"lessor-seal-kid:").chain_update(bytes).finalize();
        let mut kid = [0u8; 8];
        kid.copy_from_slice(&kid_full[..8]);
        Seal { key: SecretBox::new(Box::new(bytes)), kid }
    }

    /// A fresh random key.
    pub fn generate() -> Seal {
        let mut k = [0u8; 32];
        rand::rng().fill_bytes(&mut k);
        Seal::from_bytes(k)
    }

    pub fn key_id(&self) -> String {
        hex::encode(self.kid)
    }

    /// Loads the key from `path` (base64 of 32 bytes), creating it with mode
    /// 0600 when `create` is set and the file does not exist.
    pub fn load_or_create(path: &Path, create: bool) -> Result<Seal, SealError> {
        let err = |message: String| SealError::KeyFile { path: path.display().to_string(), message };
        match std::fs::read_to_string(path) {
            Ok(text) => {
                let raw = base64::engine::general_purpose::STANDARD
                    .decode(text.trim())
                    .map_err(|_| err("is not base64".into()))?;
                let bytes: [u8; 32] = raw
                    .try_into()
                    .map_err(|v: Vec<u8>| err(format!("holds {} bytes, a seal key is 32", v.len())))?;
                Ok(Seal::from_bytes(bytes))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && create => {
                let seal = Seal::generate();
                let text = base64::engine::general_purpose::STANDARD.encode(seal.key.expose_secret());
                write_private_file(path, text.as_bytes()).map_err(|e| err(e.to_string()))?;
                Ok(seal)
            }
            Err(e) => Err(err(e.to_string())),
        }
    }

    pub fn seal(&self, aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
        let cipher = Aes256Gcm::new(self.key.expose_secret().into());
        let mut nonce = [0u8; 12];
        rand::rng().fill_bytes(&mut nonce);
        // Encryption with a valid key and nonce size cannot fail; an empty
        // ciphertext would fail to open and be reported as corrupt.
        let ct = cipher
            .encrypt(Nonce::from_slice(&nonce), Payload { msg: plaintext, aad })
            .unwrap_or_default();
        let mut out = Vec::with_capacity(1 + 8 + 12 + ct.len());
        out.push(VERSION);
        out.extend_from_slice(&self.kid);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ct);
        out
    }

    /// An HMAC-SHA256 key for `purpose`, derived from the seal key (so every
    /// replica given the seal key derives the same one, and it is as secret
    /// as the seal key).
    pub fn derive_hmac_key(&self, purpose: &str) -> ring::hmac::Key {
        let root = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, self.key.expose_secret());
        let derived = ring::hmac::sign(&root, format!("lessor-derive:{purpose}").as_bytes());
        ring::hmac::Key::new(ring::hmac::HMAC_SHA256, derived.as_ref())
    }

    pub fn open(&self, aad: &[u8], sealed: &[u8]) -> Result<SecretBox<Vec<u8>>, SealError> {
        if sealed.len() < 1 + 8 + 12 + 16 || sealed[0] != VERSION {
            return Err(SealError::Corrupt);
        }
        let kid = &sealed[1..9];
        if kid != self.kid {
            return Err(SealError::WrongKey { stored: hex::encode(kid), configured: self.key_id() });
        }
        let cipher = Aes256Gcm::new(self.key.expose_secret().into());
        let pt = cipher
            .decrypt(Nonce::from_slice(&sealed[9..21]), Payload { msg: &sealed[21..], aad })
            .map_err(|_| SealError::Corrupt)?;
        Ok(SecretBox::new(Box::new(pt)))
    }
}

/// Writes a file readable only by its owner (0600 on Unix), creating parent
/// directories. Fails if the file exists, so a secret is never overwritten.
pub fn write_private_file(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path)?;
    f.write_all(contents)?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_slot_binding() {
        let s = Seal::generate();
        let c = s.seal(b"conn\0key", b"top secret");
        assert_eq!(s.open(b"conn\0key", &c).unwrap().expose_secret().as_slice(), b"top secret");
        assert!(matches!(s.open(b"conn\0other", &c), Err(SealError::Corrupt)));
        assert!(!c.windows(10).any(|w| w == b"top secret"));
    }

    #[test]
    fn wrong_key_is_named() {
        let a = Seal::generate();
        let b = Seal::generate();
        let c = a.seal(b"x", b"v");
        let err = b.open(b"x", &c).unwrap_err().to_string();
        assert!(err.contains(&a.key_id()) && err.contains(&b.key_id()), "{err}");
    }

    #[test]
    fn key_file_is_created_private_and_reloaded() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k/seal.key");
        let a = Seal::load_or_create(&p, true).unwrap();
        let b = Seal::load_or_create(&p, false).unwrap();
        assert_eq!(a.key_id(), b.key_id());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
        }
        std::fs::write(dir.path().join("short"), "AAAA").unwrap();
        let err = Seal::load_or_create(&dir.path().join("short"), false).unwrap_err().to_string();
        assert!(err.contains("holds 3 bytes"), "{err}");
    }
}
