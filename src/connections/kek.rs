//! Envelope encryption of root credentials: a random 256-bit data key (DEK)
//! per version encrypts the secret with AES-256-GCM (the additional data
//! binds it to its connection and version); the DEK is wrapped by the
//! key-encryption key (KEK), whose id is stored with it.
//!
//! The KEK comes from a file (default: the seal key file), an environment
//! variable, or an external KMS hook: a command lessor runs as
//! `command... wrap|unwrap` with the key (base64) on stdin, reading the
//! result (base64) from stdout. The hook gets the binding (connection and
//! version) in `LESSOR_KEK_CONTEXT`.
//!
//! Must not import: http, policy, plugins.

use std::path::Path;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine;
use rand::RngCore;
use secrecy::{ExposeSecret, SecretBox, SecretString};
use tokio::io::AsyncWriteExt;

use crate::config::{Config, KekConfig};
use crate::seal::Seal;

#[derive(Debug, thiserror::Error)]
pub enum KekError {
    #[error("key-encryption key: {0}")]
    Config(String),
    #[error(
        "root credential `{connection}` v{version} is encrypted under key-encryption key id `{stored}`, but the \
         configured key-encryption key has id `{configured}`: start lessor with the key this store was written \
         with (or re-wrap with `lessor rekey`)"
    )]
    WrongKey { connection: String, version: i64, stored: String, configured: String },
    #[error("root credential `{connection}` v{version} does not decrypt: {message}")]
    Corrupt { connection: String, version: i64, message: String },
    #[error("KMS hook `{program}` {op} failed: {message}")]
    Hook { program: String, op: &'static str, message: String },
}

enum Inner {
    Local(Seal),
    Command { argv: Vec<String>, key_id: String },
}

/// The key-encryption key.
pub struct Kek {
    inner: Inner,
}

impl std::fmt::Debug for Kek {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Kek(id={})", self.id())
    }
}

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::STANDARD
}

impl Kek {
    /// A local key (tests, and the file/env sources).
    pub fn local(seal: Seal) -> Kek {
        Kek { inner: Inner::Local(seal) }
    }

    /// The KEK `cfg.kek` names; `seal_default` is used when it names none
    /// (the seal key, already loaded and checked against the store).
    pub fn from_config(cfg: &Config, seal_default: impl FnOnce() -> Result<Seal, KekError>) -> Result<Kek, KekError> {
        Kek::from_kek_config(&cfg.kek, seal_default)
    }

    pub fn from_kek_config(k: &KekConfig, seal_default: impl FnOnce() -> Result<Seal, KekError>) -> Result<Kek, KekError> {
        if let Some(p) = &k.file {
            return Ok(Kek::local(read_key_file(p)?));
        }
        if let Some(var) = &k.env {
            let text = std::env::var(var).map_err(|_| KekError::Config(format!("environment variable ${var} is not set")))?;
            return Ok(Kek::local(decode_key(&text).map_err(|m| KekError::Config(format!("${var} {m}")))?));
        }
        if let Some(argv) = &k.command {
            let key_id = k.key_id.clone().ok_or_else(|| KekError::Config("kek.command needs kek.key_id".into()))?;
            return Ok(Kek { inner: Inner::Command { argv: argv.clone(), key_id } });
        }
        Ok(Kek::local(seal_default()?))
    }

    /// The id stored with every key this KEK wraps.
    pub fn id(&self) -> String {
        match &self.inner {
            Inner::Local(s) => s.key_id(),
            Inner::Command { key_id, .. } => key_id.clone(),
        }
    }

    async fn wrap(&self, aad: &[u8], dek: &[u8]) -> Result<Vec<u8>, KekError> {
        match &self.inner {
            Inner::Local(s) => Ok(s.seal(aad, dek)),
            Inner::Command { argv, .. } => hook(argv, "wrap", aad, dek).await,
        }
    }

    async fn unwrap(&self, aad: &[u8], wrapped: &[u8]) -> Result<SecretBox<Vec<u8>>, String> {
        match &self.inner {
            Inner::Local(s) => s.open(aad, wrapped).map_err(|e| e.to_string()),
            Inner::Command { argv, .. } => {
                hook(argv, "unwrap", aad, wrapped).await.map(|v| SecretBox::new(Box::new(v))).map_err(|e| e.to_string())
            }
        }
    }
}

fn decode_key(text: &str) -> Result<Seal, String> {
    let raw = b64().decode(text.trim()).map_err(|_| "is not base64".to_string())?;
    let bytes: [u8; 32] = raw.try_into().map_err(|v: Vec<u8>| format!("holds {} bytes, a key is 32", v.len()))?;
    Ok(Seal::from_bytes(bytes))
}

fn read_key_file(p: &Path) -> Result<Seal, KekError> {
    let text = std::fs::read_to_string(p).map_err(|e| KekError::Config(format!("{}: {e}", p.display())))?;
    decode_key(&text).map_err(|m| KekError::Config(format!("{} {m}", p.display())))
}

async fn hook(argv: &[String], op: &'static str, aad: &[u8], input: &[u8]) -> Result<Vec<u8>, KekError> {
    let program = argv.first().cloned().unwrap_or_default();
    let err = |message: String| KekError::Hook { program: program.clone(), op, message };
    let mut child = tokio::process::Command::new(&program)
        .args(&argv[1..])
        .arg(op)
        .env("LESSOR_KEK_CONTEXT", hex::encode(aad))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| err(format!("cannot run it: {e}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(b64().encode(input).as_bytes()).await.map_err(|e| err(e.to_string()))?;
    }
    let out = tokio::time::timeout(std::time::Duration::from_secs(30), child.wait_with_output())
        .await
        .map_err(|_| err("no answer within 30s".into()))?
        .map_err(|e| err(e.to_string()))?;
    if !out.status.success() {
        // stderr of a KMS hook carries no key material (it only ever sees
        // data keys wrapped or to be wrapped); cut it short anyway.
        let msg: String = String::from_utf8_lossy(&out.stderr).chars().take(200).collect();
        return Err(err(format!("exit {}: {}", out.status, msg.trim())));
    }
    b64()
        .decode(String::from_utf8_lossy(&out.stdout).trim())
        .map_err(|_| err("its output is not base64".into()))
}

/// What is stored for a secret.
pub struct Sealed {
    pub ciphertext: Vec<u8>,
    pub wrapped_dek: Vec<u8>,
    pub kek_id: String,
}

fn aad(connection: &str, version: i64, what: &str) -> Vec<u8> {
    format!("lessor-root\0{what}\0{connection}\0{version}").into_bytes()
}

/// Encrypts `secret` as `connection` version `version`.
pub async fn encrypt(kek: &Kek, connection: &str, version: i64, secret: &SecretString) -> Result<Sealed, KekError> {
    let mut dek = SecretBox::new(Box::new([0u8; 32]));
    {
        use secrecy::ExposeSecretMut;
        rand::rng().fill_bytes(dek.expose_secret_mut());
    }
    let cipher = Aes256Gcm::new(dek.expose_secret().into());
    let mut nonce = [0u8; 12];
    rand::rng().fill_bytes(&mut nonce);
    let ct = cipher
        .encrypt(Nonce::from_slice(&nonce), Payload { msg: secret.expose_secret().as_bytes(), aad: &aad(connection, version, "secret") })
        .map_err(|_| KekError::Corrupt { connection: connection.into(), version, message: "encryption failed".into() })?;
    let mut ciphertext = nonce.to_vec();
    ciphertext.extend_from_slice(&ct);
    let wrapped_dek = kek.wrap(&aad(connection, version, "dek"), dek.expose_secret()).await?;
    Ok(Sealed { ciphertext, wrapped_dek, kek_id: kek.id() })
}

/// Unwraps a version's data key (checks the KEK id first).
async fn unwrap_dek(kek: &Kek, connection: &str, version: i64, wrapped: &[u8], kek_id: &str) -> Result<SecretBox<Vec<u8>>, KekError> {
    if kek_id != kek.id() {
        return Err(KekError::WrongKey {
            connection: connection.into(),
            version,
            stored: kek_id.into(),
            configured: kek.id(),
        });
    }
    kek.unwrap(&aad(connection, version, "dek"), wrapped)
        .await
        .map_err(|message| KekError::Corrupt { connection: connection.into(), version, message })
}

/// Decrypts a stored version.
pub async fn decrypt(
    kek: &Kek,
    connection: &str,
    version: i64,
    ciphertext: &[u8],
    wrapped: &[u8],
    kek_id: &str,
) -> Result<SecretString, KekError> {
    let corrupt = |m: &str| KekError::Corrupt { connection: connection.into(), version, message: m.into() };
    let dek = unwrap_dek(kek, connection, version, wrapped, kek_id).await?;
    if dek.expose_secret().len() != 32 || ciphertext.len() < 12 + 16 {
        return Err(corrupt("wrong data key or ciphertext length"));
    }
    let cipher = Aes256Gcm::new(dek.expose_secret().as_slice().into());
    let pt = cipher
        .decrypt(
            Nonce::from_slice(&ciphertext[..12]),
            Payload { msg: &ciphertext[12..], aad: &aad(connection, version, "secret") },
        )
        .map_err(|_| corrupt("authentication failed (corrupt, or moved to another connection or version)"))?;
    String::from_utf8(pt).map(SecretString::from).map_err(|_| corrupt("not UTF-8"))
}

/// Re-wraps a version's data key from `old` to `new` (`lessor rekey`).
pub async fn rewrap(old: &Kek, new: &Kek, connection: &str, version: i64, wrapped: &[u8], kek_id: &str) -> Result<Vec<u8>, KekError> {
    let dek = unwrap_dek(old, connection, version, wrapped, kek_id).await?;
    new.wrap(&aad(connection, version, "dek"), dek.expose_secret()).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn envelope_roundtrip_binding_and_wrong_key() {
        let kek = Kek::local(Seal::generate());
        let s = SecretString::from("hunter2-canary-value".to_string());
        let sealed = encrypt(&kek, "pg", 3, &s).await.unwrap();
        assert!(!sealed.ciphertext.windows(6).any(|w| w == b"canary"));
        let back = decrypt(&kek, "pg", 3, &sealed.ciphertext, &sealed.wrapped_dek, &sealed.kek_id).await.unwrap();
        assert_eq!(back.expose_secret(), "hunter2-canary-value");
        let moved = decrypt(&kek, "pg", 4, &sealed.ciphertext, &sealed.wrapped_dek, &sealed.kek_id).await;
        assert!(matches!(moved, Err(KekError::Corrupt { .. })));
        let other = Kek::local(Seal::generate());
        let err = decrypt(&other, "pg", 3, &sealed.ciphertext, &sealed.wrapped_dek, &sealed.kek_id).await.unwrap_err();
        assert!(err.to_string().contains(&kek.id()) && err.to_string().contains(&other.id()), "{err}");
        let w = rewrap(&kek, &other, "pg", 3, &sealed.wrapped_dek, &sealed.kek_id).await.unwrap();
        let back = decrypt(&other, "pg", 3, &sealed.ciphertext, &w, &other.id()).await.unwrap();
        assert_eq!(back.expose_secret(), "hunter2-canary-value");
    }
}
