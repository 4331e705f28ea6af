//! A role's CA: generated once and kept in the connection's state, or loaded
//! from PEM files; plus key generation and parsing shared with issuing.
//!
//! Private key bytes only ever live in `secrecy` types here (or inside
//! rcgen's `KeyPair`, whose Debug elides them); no error message carries them.

use std::fmt;
use std::path::Path;

use lessor_plugin::secrecy::{ExposeSecret, SecretBox};
use lessor_plugin::{PluginContext, PluginError, StateError};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyIdMethod, KeyPair,
    KeyUsagePurpose, SerialNumber, PKCS_ECDSA_P256_SHA256, PKCS_ED25519, PKCS_RSA_SHA256,
};
use time::{Duration, OffsetDateTime};
use tracing::{debug, info};
use x509_parser::extensions::ParsedExtension;
use x509_parser::prelude::X509Certificate;

use crate::config::{CaSource, KeyType};

/// How long a generated CA is valid.
const CA_VALIDITY: Duration = Duration::days(3650);

/// A role's CA, ready to sign certificates and CRLs.
pub(crate) struct Ca {
    pub(crate) issuer: Issuer<'static, KeyPair>,
    /// The CA certificate first, then any further chain certificates from
    /// `cert_file`, PEM-encoded.
    pub(crate) chain_pem: Vec<String>,
    pub(crate) subject_cn: String,
    pub(crate) not_after: OffsetDateTime,
    /// Authority key identifier for CRLs: the CA's own SKI when it has one.
    pub(crate) crl_key_id: KeyIdMethod,
    pub(crate) source: &'static str,
}

impl fmt::Debug for Ca {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ca")
            .field("subject_cn", &self.subject_cn)
            .field("not_after", &self.not_after)
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

fn state_err(msg: String) -> PluginError {
    PluginError::State(StateError(msg))
}

/// Loads the role's CA, generating (and storing) it on first start.
pub(crate) async fn load(
    ctx: &PluginContext,
    role: &str,
    source: &CaSource,
) -> Result<Ca, PluginError> {
    match source {
        CaSource::Files {
            cert_file,
            key_file,
        } => load_files(role, cert_file, key_file).await,
        CaSource::Generate(g) => {
            let cn = g
                .common_name
                .clone()
                .unwrap_or_else(|| format!("lessor {}/{role} CA", ctx.connection));
            load_or_generate(ctx, role, &cn, g.key_type.into()).await
        }
    }
}

async fn load_files(role: &str, cert_file: &Path, key_file: &Path) -> Result<Ca, PluginError> {
    let cert_bytes = tokio::fs::read(cert_file).await.map_err(|e| {
        PluginError::Misconfigured(format!(
            "role `{role}`: cannot read `ca.cert_file` {}: {e}",
            cert_file.display()
        ))
    })?;
    let key_bytes = SecretBox::new(Box::new(tokio::fs::read(key_file).await.map_err(|e| {
        PluginError::Misconfigured(format!(
            "role `{role}`: cannot read `ca.key_file` {}: {e}",
            key_file.display()
        ))
    })?));
    let key = key_from_bytes(key_bytes.expose_secret()).map_err(|e| {
        PluginError::Misconfigured(format!(
            "role `{role}`: `ca.key_file` {}: {e}",
            key_file.display()
        ))
    })?;
    let chain = certs_from_bytes(&cert_bytes).map_err(|e| {
        PluginError::Misconfigured(format!(
            "role `{role}`: `ca.cert_file` {}: {e}",
            cert_file.display()
        ))
    })?;
    let ca = from_parts(key, chain, "file").map_err(|e| {
        PluginError::Misconfigured(format!(
            "role `{role}`: `ca.cert_file` {} with `ca.key_file` {}: {e}",
            cert_file.display(),
            key_file.display()
        ))
    })?;
    info!(role, ca = %ca.subject_cn, "loaded CA from files");
    Ok(ca)
}

/// The key first, then the certificate, each with `*_if_absent`: replicas
/// starting together agree on the first writer's key, and on the first
/// certificate made for it.
async fn load_or_generate(
    ctx: &PluginContext,
    role: &str,
    cn: &str,
    key_type: KeyType,
) -> Result<Ca, PluginError> {
    let key_name = format!("ca/{role}/key");
    let cert_name = format!("ca/{role}/cert");
    let state = &ctx.state;

    let key_bytes = match state.get_secret(&key_name).await? {
        Some(k) => k,
        None => {
            let fresh = generate_key(key_type)?;
            let der = SecretBox::new(Box::new(fresh.serialize_der()));
            if state.put_secret_if_absent(&key_name, &der).await? {
                info!(role, "generated a new CA key");
                der
            } else {
                debug!(role, "another replica stored a CA key first; using it");
                state.get_secret(&key_name).await?.ok_or_else(|| {
                    state_err(format!(
                        "role `{role}`: `{key_name}` was taken but reads as absent"
                    ))
                })?
            }
        }
    };
    let key = key_from_bytes(key_bytes.expose_secret()).map_err(|e| {
        state_err(format!(
            "role `{role}`: stored CA key `{key_name}` is unusable: {e}"
        ))
    })?;

    let cert_bytes = match state.get(&cert_name).await? {
        Some(c) => c,
        None => {
            let pem = self_signed_ca(cn, &key).map_err(|e| {
                PluginError::Permanent(format!(
                    "role `{role}`: cannot create the CA certificate: {e}"
                ))
            })?;
            if state.put_if_absent(&cert_name, pem.as_bytes()).await? {
                info!(role, ca = cn, "created a new CA certificate");
                pem.into_bytes()
            } else {
                debug!(
                    role,
                    "another replica stored the CA certificate first; using it"
                );
                state.get(&cert_name).await?.ok_or_else(|| {
                    state_err(format!(
                        "role `{role}`: `{cert_name}` was taken but reads as absent"
                    ))
                })?
            }
        }
    };
    let chain = certs_from_bytes(&cert_bytes).map_err(|e| {
        state_err(format!(
            "role `{role}`: stored CA certificate `{cert_name}`: {e}"
        ))
    })?;
    from_parts(key, chain, "generated").map_err(|e| {
        state_err(format!(
            "role `{role}`: stored CA `{cert_name}` / `{key_name}`: {e}"
        ))
    })
}

fn self_signed_ca(cn: &str, key: &KeyPair) -> Result<String, rcgen::Error> {
    let now = OffsetDateTime::now_utc();
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, cn);
    params.not_before = now - Duration::seconds(30);
    params.not_after = now + CA_VALIDITY;
    params.serial_number = Some(SerialNumber::from_slice(&positive_random_serial()));
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    Ok(params.self_signed(key)?.pem())
}

fn positive_random_serial() -> [u8; 16] {
    let mut s: [u8; 16] = rand::random();
    s[0] &= 0x7f;
    s[0] |= 0x01 << 6; // never all zero, always 16 bytes long
    s
}

/// Checks that `chain[0]` is a CA certificate for `key` and builds the issuer.
fn from_parts(key: KeyPair, chain: Vec<Vec<u8>>, source: &'static str) -> Result<Ca, String> {
    let first = chain.first().ok_or("no certificate")?;
    let (_, x509) = x509_parser::parse_x509_certificate(first)
        .map_err(|e| format!("cannot parse the certificate: {e}"))?;
    if !x509.is_ca() {
        return Err("the certificate is not a CA (BasicConstraints CA:TRUE is missing)".into());
    }
    if let Ok(Some(ku)) = x509.key_usage() {
        if !ku.value.key_cert_sign() || !ku.value.crl_sign() {
            return Err("the certificate's KeyUsage must allow keyCertSign and cRLSign".into());
        }
    }
    if x509.public_key().subject_public_key.data.as_ref() != rcgen::PublicKeyData::der_bytes(&key) {
        return Err("the private key does not belong to the certificate".into());
    }
    let subject_cn = common_name(&x509);
    let not_after = x509.validity().not_after.to_datetime();
    let crl_key_id = x509
        .iter_extensions()
        .find_map(|ext| match ext.parsed_extension() {
            ParsedExtension::SubjectKeyIdentifier(id) => {
                Some(KeyIdMethod::PreSpecified(id.0.to_vec()))
            }
            _ => None,
        })
        .unwrap_or(KeyIdMethod::Sha256);
    let issuer = Issuer::from_ca_cert_der(&first.as_slice().into(), key)
        .map_err(|e| format!("cannot use the certificate as an issuer: {e}"))?;
    let lf = pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF);
    let chain_pem = chain
        .into_iter()
        .map(|der| pem::encode_config(&pem::Pem::new("CERTIFICATE", der), lf))
        .collect();
    Ok(Ca {
        issuer,
        chain_pem,
        subject_cn,
        not_after,
        crl_key_id,
        source,
    })
}

fn common_name(x509: &X509Certificate<'_>) -> String {
    x509.subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map(str::to_owned)
        .unwrap_or_else(|| x509.subject().to_string())
}

fn looks_like_pem(bytes: &[u8]) -> bool {
    bytes.trim_ascii_start().starts_with(b"-----BEGIN")
}

/// All certificates in a PEM bundle (or one DER certificate).
pub(crate) fn certs_from_bytes(bytes: &[u8]) -> Result<Vec<Vec<u8>>, String> {
    if !looks_like_pem(bytes) {
        return Ok(vec![bytes.to_vec()]);
    }
    let blocks = pem::parse_many(bytes).map_err(|e| format!("not valid PEM: {e}"))?;
    let certs: Vec<Vec<u8>> = blocks
        .into_iter()
        .filter(|p| p.tag() == "CERTIFICATE")
        .map(pem::Pem::into_contents)
        .collect();
    if certs.is_empty() {
        return Err("no `CERTIFICATE` PEM block".into());
    }
    Ok(certs)
}

/// A private key from PKCS#8 (PEM or DER) or PKCS#1 RSA PEM.
pub(crate) fn key_from_bytes(bytes: &[u8]) -> Result<KeyPair, String> {
    let unsupported = "not a P-256, P-384, Ed25519 or RSA private key in PKCS#8";
    if !looks_like_pem(bytes) {
        return KeyPair::try_from(bytes).map_err(|_| unsupported.to_owned());
    }
    let blocks = pem::parse_many(bytes).map_err(|_| "not valid PEM".to_owned())?;
    let Some(block) = blocks
        .into_iter()
        .find(|p| p.tag().ends_with("PRIVATE KEY"))
    else {
        return Err("no `PRIVATE KEY` PEM block".into());
    };
    let tag = block.tag().to_owned();
    let der = SecretBox::new(Box::new(block.into_contents()));
    match tag.as_str() {
        "PRIVATE KEY" => KeyPair::try_from(der.expose_secret().as_slice()).map_err(|_| unsupported.to_owned()),
        "RSA PRIVATE KEY" => {
            use rsa::pkcs1::DecodeRsaPrivateKey;
            use rsa::pkcs8::EncodePrivateKey;
            let key = rsa::RsaPrivateKey::from_pkcs1_der(der.expose_secret())
                .map_err(|_| "`RSA PRIVATE KEY` block is not a PKCS#1 RSA key".to_owned())?;
            let pkcs8 = key.to_pkcs8_der().map_err(|_| "cannot convert the RSA key to PKCS#8".to_owned())?;
            KeyPair::from_pkcs8_der_and_sign_algo(&pkcs8.as_bytes().into(), &PKCS_RSA_SHA256)
                .map_err(|_| "the RSA key is not usable for signing (at least 2048 bits)".to_owned())
        }
        "ENCRYPTED PRIVATE KEY" => Err("encrypted private keys are not supported".into()),
        other => Err(format!(
            "`{other}` keys are not supported; convert with `openssl pkcs8 -topk8 -nocrypt` to `PRIVATE KEY`"
        )),
    }
}

/// A new key pair of `key_type`. RSA generation is slow: call it off the
/// async runtime.
pub(crate) fn generate_key(key_type: KeyType) -> Result<KeyPair, PluginError> {
    let failed =
        |e: String| PluginError::Permanent(format!("generating a {key_type} key failed: {e}"));
    match key_type {
        KeyType::P256 => {
            KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(|e| failed(e.to_string()))
        }
        KeyType::Ed25519 => KeyPair::generate_for(&PKCS_ED25519).map_err(|e| failed(e.to_string())),
        KeyType::Rsa2048 => {
            use rsa::pkcs8::EncodePrivateKey;
            let key = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048)
                .map_err(|e| failed(e.to_string()))?;
            let pkcs8 = key.to_pkcs8_der().map_err(|e| failed(e.to_string()))?;
            KeyPair::from_pkcs8_der_and_sign_algo(&pkcs8.as_bytes().into(), &PKCS_RSA_SHA256)
                .map_err(|e| failed(e.to_string()))
        }
    }
}
