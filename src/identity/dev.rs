//! The built-in dev issuer used by `lessor dev`: a P-256 key in the data
//! directory (0600), its JWKS written beside it, and a minter for
//! GitHub-Actions-shaped or Kubernetes-shaped workload tokens.
//!
//! For development only: whoever can read the key file can mint identities.

use std::path::{Path, PathBuf};

use base64::Engine;
use jsonwebtoken::{EncodingKey, Header};
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use crate::seal::write_private_file;

/// `iss` of dev tokens.
pub const DEV_ISSUER: &str = "https://dev-issuer.lessor.localhost";
/// `aud` of dev tokens.
pub const DEV_AUDIENCE: &str = "lessor";

pub struct DevIssuer {
    key_pem: SecretString,
    kid: String,
    jwks: serde_json::Value,
}

impl std::fmt::Debug for DevIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DevIssuer(kid={})", self.kid)
    }
}

pub fn key_path(data_dir: &Path) -> PathBuf {
    data_dir.join("dev-issuer.key")
}

pub fn jwks_path(data_dir: &Path) -> PathBuf {
    data_dir.join("dev-issuer.jwks.json")
}

impl DevIssuer {
    /// Loads the dev key from `data_dir`, creating it (and the JWKS file) on
    /// first use.
    pub fn load_or_create(data_dir: &Path) -> Result<DevIssuer, String> {
        let kp = key_path(data_dir);
        let pem = match std::fs::read_to_string(&kp) {
            Ok(p) => p,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
                    .map_err(|e| format!("generating dev issuer key: {e}"))?;
                let pem = key.serialize_pem();
                write_private_file(&kp, pem.as_bytes()).map_err(|e| format!("writing {}: {e}", kp.display()))?;
                pem
            }
            Err(e) => return Err(format!("reading {}: {e}", kp.display())),
        };
        let key = rcgen::KeyPair::from_pem(&pem).map_err(|e| format!("{}: not a key: {e}", kp.display()))?;
        let raw = key.public_key_raw();
        if raw.len() != 65 {
            return Err(format!("{}: not a P-256 key", kp.display()));
        }
        let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        let kid = hex::encode(&Sha256::digest(raw)[..8]);
        let jwks = serde_json::json!({"keys": [{
            "kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": kid,
            "x": b64(&raw[1..33]), "y": b64(&raw[33..65]),
        }]});
        let jp = jwks_path(data_dir);
        let text = serde_json::to_string_pretty(&jwks).map_err(|e| e.to_string())?;
        if std::fs::read_to_string(&jp).ok().as_deref() != Some(text.as_str()) {
            std::fs::write(&jp, text).map_err(|e| format!("writing {}: {e}", jp.display()))?;
        }
        Ok(DevIssuer { key_pem: SecretString::from(pem), kid, jwks })
    }

    pub fn jwks(&self) -> &serde_json::Value {
        &self.jwks
    }

    /// Signs `claims` (adding iss, aud, iat, nbf, exp) as a workload token.
    pub fn mint(&self, mut claims: serde_json::Map<String, serde_json::Value>, ttl: std::time::Duration) -> Result<SecretString, String> {
        let now = OffsetDateTime::now_utc().unix_timestamp();
        claims.entry("iss").or_insert_with(|| DEV_ISSUER.into());
        claims.entry("aud").or_insert_with(|| DEV_AUDIENCE.into());
        claims.insert("iat".into(), now.into());
        claims.insert("nbf".into(), now.into());
        claims.insert("exp".into(), (now + ttl.as_secs() as i64).into());
        let mut header = Header::new(jsonwebtoken::Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        let key = EncodingKey::from_ec_pem(self.key_pem.expose_secret().as_bytes())
            .map_err(|e| format!("dev issuer key: {e}"))?;
        jsonwebtoken::encode(&header, &claims, &key)
            .map(SecretString::from)
            .map_err(|e| format!("signing dev token: {e}"))
    }

    /// Claims shaped like a GitHub Actions OIDC token for `repo` at `git_ref`.
    pub fn github_claims(repo: &str, git_ref: &str, environment: Option<&str>) -> serde_json::Map<String, serde_json::Value> {
        let owner = repo.split('/').next().unwrap_or(repo);
        let mut sub = format!("repo:{repo}:ref:{git_ref}");
        let mut m = serde_json::Map::new();
        if let Some(env) = environment {
            sub = format!("repo:{repo}:environment:{env}");
            m.insert("environment".into(), env.into());
        }
        m.insert("sub".into(), sub.into());
        m.insert("repository".into(), repo.into());
        m.insert("repository_owner".into(), owner.into());
        m.insert("ref".into(), git_ref.into());
        m.insert("ref_type".into(), if git_ref.starts_with("refs/tags/") { "tag" } else { "branch" }.into());
        m.insert("workflow".into(), "ci".into());
        m.insert("event_name".into(), "push".into());
        m.insert("actor".into(), "dev".into());
        m.insert("runner_environment".into(), "github-hosted".into());
        m
    }

    /// Claims shaped like a Kubernetes projected service-account token.
    pub fn kubernetes_claims(namespace: &str, service_account: &str) -> serde_json::Map<String, serde_json::Value> {
        let mut m = serde_json::Map::new();
        m.insert("sub".into(), format!("system:serviceaccount:{namespace}:{service_account}").into());
        m.insert(
            "kubernetes.io".into(),
            serde_json::json!({
                "namespace": namespace,
                "serviceaccount": {"name": service_account, "uid": "00000000-0000-0000-0000-000000000000"},
                "pod": {"name": format!("{service_account}-dev"), "uid": "00000000-0000-0000-0000-000000000001"},
            }),
        );
        m
    }
}
