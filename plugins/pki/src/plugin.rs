//! The `pki` [`Plugin`]: issues X.509 certificates from a per-role CA, revokes
//! them onto a CRL kept in the connection's state, and serves the CA chain and
//! CRL as documents.
//!
//! Must not know about the core's store, HTTP layer or policy engine; all it
//! keeps lives in [`lessor_plugin::StateStore`] under `ca/<role>/…` and
//! `crl/<role>/<serial>`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;
use std::time::Duration as StdDuration;

use async_trait::async_trait;
use lessor_plugin::secrecy::SecretString;
use lessor_plugin::{
    Capabilities, Document, IssueRequest, Issued, LeaseId, LeaseRef, Plugin, PluginContext,
    PluginError, RenewRequest, RoleSpec, StateStore, Validation,
};
use rcgen::string::Ia5String;
use rcgen::{
    CertificateParams, CertificateRevocationListParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, PublicKeyData, RevokedCertParams,
    SanType, SerialNumber, SignatureAlgorithm,
};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use time::format_description::well_known::Rfc3339;
use time::{Duration, OffsetDateTime, UtcOffset};
use tracing::{info, instrument, warn};
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::error::X509Error;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::oid_registry::{
    OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_PKCS1_RSAENCRYPTION, OID_SIG_ED25519,
};
use x509_parser::prelude::FromDer;
use x509_parser::x509::SubjectPublicKeyInfo;

use crate::ca::{self, Ca};
use crate::config::{self, KeyType};
use crate::names::{self, Kind, Template};

/// Slack on top of a role's `max_ttl` (the core caps, clocks differ a little).
const TTL_SLACK: Duration = Duration::seconds(5);
/// Issued certificates start this much in the past, for clock skew.
const BACKDATE: Duration = Duration::seconds(30);
/// A CRL's `nextUpdate` is this far after its `thisUpdate`.
const CRL_VALIDITY: Duration = Duration::hours(1);
/// `validate` warns when a CA ends within this.
const CA_EXPIRY_WARNING: Duration = Duration::days(30);

/// Content type of the `ca` document.
pub const CA_CONTENT_TYPE: &str = "application/pem-certificate-chain";
/// Content type of the `crl` document.
pub const CRL_CONTENT_TYPE: &str = "application/pkix-crl";

/// Builds the `pki` plugin for one connection: parses the connection and role
/// config and loads (or, on first start, generates and stores) every role's CA.
#[instrument(skip_all, fields(connection = %ctx.connection))]
pub async fn build(
    ctx: PluginContext,
    connection: serde_json::Value,
    roles: Vec<RoleSpec>,
) -> Result<Arc<dyn Plugin>, PluginError> {
    let conn = config::parse_connection(connection)?;
    let mut seen = BTreeSet::new();
    let mut built = Vec::with_capacity(roles.len());
    for spec in roles {
        let name = spec.name;
        if name.is_empty() || name.contains('/') {
            return Err(PluginError::Misconfigured(format!(
                "role `{name}`: pki role names must be non-empty and must not contain `/`"
            )));
        }
        if !seen.insert(name.clone()) {
            return Err(PluginError::Misconfigured(format!(
                "role `{name}` is defined twice"
            )));
        }
        let cfg = config::parse_role(&name, spec.config)?;
        if cfg.allowed_names.is_empty() {
            return Err(PluginError::Misconfigured(format!(
                "role `{name}`: `allowed_names` must list at least one name"
            )));
        }
        let allowed = cfg
            .allowed_names
            .iter()
            .map(|raw| {
                Template::parse(raw, false).map_err(|why| {
                    PluginError::Misconfigured(format!(
                        "role `{name}`: `allowed_names` entry `{raw}`: {why}"
                    ))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let common_name = cfg
            .common_name
            .as_deref()
            .map(|raw| {
                Template::parse(raw, true).map_err(|why| {
                    PluginError::Misconfigured(format!(
                        "role `{name}`: `common_name` `{raw}`: {why}"
                    ))
                })
            })
            .transpose()?;
        let source = cfg.ca.source(&name)?;
        let ca = ca::load(&ctx, &name, &source).await?;
        built.push(Role {
            name,
            max_ttl: spec.max_ttl,
            key_type: cfg.key_type,
            allowed,
            common_name,
            ca,
        });
    }
    Ok(Arc::new(PkiPlugin {
        connection: ctx.connection,
        state: ctx.state,
        crl_retention: conn.crl_retention,
        roles: built,
    }))
}

/// The serial number of the certificate issued for `lease`: the first 16
/// bytes of SHA-256(`lessor-pki-serial:` + lease id), top bit cleared, so
/// that revoke needs nothing but the lease id.
pub(crate) fn serial_for(lease: &LeaseId) -> [u8; 16] {
    let digest = Sha256::new()
        .chain_update(b"lessor-pki-serial:")
        .chain_update(lease.as_str().as_bytes())
        .finalize();
    let mut serial = [0u8; 16];
    serial.copy_from_slice(&digest[..16]);
    serial[0] &= 0x7f;
    if serial.iter().all(|b| *b == 0) {
        serial[15] = 1;
    }
    serial
}

#[derive(Debug)]
struct Role {
    name: String,
    max_ttl: StdDuration,
    key_type: KeyType,
    allowed: Vec<Template>,
    common_name: Option<Template>,
    ca: Ca,
}

/// The `pki` plugin of one connection.
pub struct PkiPlugin {
    connection: String,
    state: Arc<dyn StateStore>,
    crl_retention: StdDuration,
    roles: Vec<Role>,
}

impl fmt::Debug for PkiPlugin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PkiPlugin")
            .field("connection", &self.connection)
            .field("crl_retention", &self.crl_retention)
            .field("roles", &self.roles)
            .finish_non_exhaustive()
    }
}

/// What `crl/<role>/<serial>` holds.
#[derive(Debug, Serialize, Deserialize)]
struct Revoked {
    revoked_at: i64,
    not_after: i64,
}

/// The issue parameters this plugin understands.
enum Params {
    All,
    Names(Vec<String>),
    Csr(String),
}

impl Params {
    fn parse(params: &serde_json::Map<String, Value>) -> Result<Params, PluginError> {
        let bad = |m: String| PluginError::InvalidRequest(m);
        if let Some(other) = params
            .keys()
            .find(|k| !matches!(k.as_str(), "names" | "csr"))
        {
            return Err(bad(format!(
                "unknown parameter `{other}`; the pki plugin takes `names` or `csr`"
            )));
        }
        match (params.get("names"), params.get("csr")) {
            (Some(_), Some(_)) => Err(bad(
                "give either `names` or `csr`, not both (a CSR lists its own names)".into(),
            )),
            (Some(names), None) => {
                let list = names
                    .as_array()
                    .and_then(|a| {
                        a.iter()
                            .map(|v| v.as_str().map(str::to_owned))
                            .collect::<Option<Vec<_>>>()
                    })
                    .ok_or_else(|| bad("`names` must be a list of strings".into()))?;
                if list.is_empty() {
                    return Err(bad(
                        "`names` is empty; leave it out to get every allowed name".into(),
                    ));
                }
                Ok(Params::Names(list))
            }
            (None, Some(csr)) => csr
                .as_str()
                .map(|s| Params::Csr(s.to_owned()))
                .ok_or_else(|| bad("`csr` must be a PEM string".into())),
            (None, None) => Ok(Params::All),
        }
    }
}

/// A CSR's public key, to be certified as is.
struct CsrKey {
    alg: &'static SignatureAlgorithm,
    raw: Vec<u8>,
}

impl PublicKeyData for CsrKey {
    fn der_bytes(&self) -> &[u8] {
        &self.raw
    }

    fn algorithm(&self) -> &'static SignatureAlgorithm {
        self.alg
    }
}

/// What a verified CSR asks for.
struct CsrRequest {
    key: CsrKey,
    /// SANs from the extension request, canonical.
    names: Vec<String>,
    common_names: Vec<String>,
}

/// Describes a public key's type, or says what it is when it is none of ours.
fn key_type_of(spki: &SubjectPublicKeyInfo<'_>) -> Result<KeyType, String> {
    let alg = &spki.algorithm.algorithm;
    if *alg == OID_KEY_TYPE_EC_PUBLIC_KEY {
        let curve = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok());
        return match curve {
            Some(c) if c == OID_EC_P256 => Ok(KeyType::P256),
            Some(c) => Err(format!("an EC key on curve {c}")),
            None => Err("an EC key without a named curve".into()),
        };
    }
    if *alg == OID_SIG_ED25519 {
        return Ok(KeyType::Ed25519);
    }
    if *alg == OID_PKCS1_RSAENCRYPTION {
        let Ok(x509_parser::public_key::PublicKey::RSA(rsa)) = spki.parsed() else {
            return Err("a malformed RSA key".into());
        };
        let modulus: &[u8] = {
            let start = rsa
                .modulus
                .iter()
                .position(|b| *b != 0)
                .unwrap_or(rsa.modulus.len());
            &rsa.modulus[start..]
        };
        let bits = modulus
            .first()
            .map_or(0, |b| modulus.len() * 8 - b.leading_zeros() as usize);
        return if bits == 2048 {
            Ok(KeyType::Rsa2048)
        } else {
            Err(format!("RSA-{bits}"))
        };
    }
    Err(format!("a key of type {alg}"))
}

fn signature_algorithm(key_type: KeyType) -> &'static SignatureAlgorithm {
    match key_type {
        KeyType::P256 => &rcgen::PKCS_ECDSA_P256_SHA256,
        KeyType::Ed25519 => &rcgen::PKCS_ED25519,
        KeyType::Rsa2048 => &rcgen::PKCS_RSA_SHA256,
    }
}

fn parse_csr(text: &str, role: &Role) -> Result<CsrRequest, PluginError> {
    let bad = PluginError::InvalidRequest;
    let block = pem::parse(text.trim())
        .map_err(|e| bad(format!("`csr` is not a PEM certificate request: {e}")))?;
    if !matches!(
        block.tag(),
        "CERTIFICATE REQUEST" | "NEW CERTIFICATE REQUEST"
    ) {
        return Err(bad(format!(
            "`csr` is a PEM `{}` block, expected `CERTIFICATE REQUEST`",
            block.tag()
        )));
    }
    let (rest, csr) = X509CertificationRequest::from_der(block.contents())
        .map_err(|e| bad(format!("CSR cannot be parsed: {e}")))?;
    if !rest.is_empty() {
        return Err(bad("CSR has trailing data after the request".into()));
    }
    match csr.verify_signature() {
        Ok(()) => {}
        Err(X509Error::SignatureUnsupportedAlgorithm) => {
            return Err(bad(format!(
                "CSR signature algorithm {} is not supported",
                csr.signature_algorithm.algorithm
            )))
        }
        Err(_) => return Err(bad("CSR signature does not verify".into())),
    }
    let spki = &csr.certification_request_info.subject_pki;
    match key_type_of(spki) {
        Ok(kt) if kt == role.key_type => {}
        Ok(kt) => {
            return Err(bad(format!(
                "CSR key is {kt}, role `{}` requires {}",
                role.name, role.key_type
            )))
        }
        Err(what) => {
            return Err(bad(format!(
                "CSR key is {what}, role `{}` requires {}",
                role.name, role.key_type
            )))
        }
    }
    let key = CsrKey {
        alg: signature_algorithm(role.key_type),
        raw: spki.subject_public_key.data.to_vec(),
    };

    let mut names = Vec::new();
    for ext in csr.requested_extensions().into_iter().flatten() {
        let ParsedExtension::SubjectAlternativeName(san) = ext else {
            continue; // other requested extensions are not trusted, and not copied
        };
        for gn in &san.general_names {
            let name = match gn {
                GeneralName::DNSName(n) | GeneralName::URI(n) => names::canonical(n),
                other => {
                    let kind = match other {
                        GeneralName::IPAddress(_) => "an IP address",
                        GeneralName::RFC822Name(_) => "an e-mail",
                        GeneralName::OtherName(..) => "an otherName",
                        GeneralName::DirectoryName(_) => "a directory name",
                        GeneralName::RegisteredID(_) => "a registered ID",
                        _ => "an unsupported",
                    };
                    return Err(bad(format!(
                        "CSR requests {kind} SAN; role `{}` issues only DNS and URI names",
                        role.name
                    )));
                }
            };
            if !names.contains(&name) {
                names.push(name);
            }
        }
    }
    let common_names = csr
        .certification_request_info
        .subject
        .iter_common_name()
        .map(|cn| {
            cn.as_str()
                .map(str::to_owned)
                .map_err(|_| bad("CSR subject CN is not a string".into()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(CsrRequest {
        key,
        names,
        common_names,
    })
}

/// Every allowed name, rendered; the first rendering error otherwise.
fn all_names(rendered: &[Result<String, PluginError>]) -> Result<Vec<String>, PluginError> {
    let mut out = Vec::new();
    for r in rendered {
        match r {
            Ok(n) if !out.contains(n) => out.push(n.clone()),
            Ok(_) => {}
            Err(e) => return Err(clone_invalid(e)),
        }
    }
    Ok(out)
}

fn clone_invalid(e: &PluginError) -> PluginError {
    PluginError::InvalidRequest(e.to_string())
}

/// `requested` (canonical), each checked against the rendered allowed names.
/// A name no template allows is refused; when some template could not be
/// rendered, its reason is the better error.
fn select_names(
    role: &Role,
    requested: &[String],
    rendered: &[Result<String, PluginError>],
) -> Result<Vec<String>, PluginError> {
    let allowed: Vec<String> = rendered
        .iter()
        .filter_map(|r| r.as_ref().ok().cloned())
        .collect();
    let mut out = Vec::new();
    for name in requested {
        let name = names::canonical(name);
        if !names::is_allowed(&name, &allowed) {
            if let Some(Err(e)) = rendered.iter().find(|r| r.is_err()) {
                return Err(clone_invalid(e));
            }
            return Err(PluginError::InvalidRequest(format!(
                "name `{}` is not allowed for role `{}` (allowed: {})",
                name.escape_debug(),
                role.name,
                allowed.join(", ")
            )));
        }
        if !out.contains(&name) {
            out.push(name);
        }
    }
    Ok(out)
}

fn san(name: &str) -> Result<SanType, PluginError> {
    let ia5 = Ia5String::try_from(name).map_err(|_| {
        PluginError::InvalidRequest(format!("name `{}` is not ASCII", name.escape_debug()))
    })?;
    Ok(match names::kind_of(name) {
        Kind::Uri => SanType::URI(ia5),
        _ => SanType::DnsName(ia5),
    })
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_else(|_| t.to_string())
}

fn human(d: Duration) -> String {
    let secs = d.whole_seconds().max(0).unsigned_abs();
    humantime::format_duration(StdDuration::from_secs(secs)).to_string()
}

/// Lowercase hex of a serial from a handle, or `None` if it is not one.
fn parse_serial_hex(s: &str) -> Option<String> {
    let bytes = hex::decode(s).ok()?;
    if bytes.is_empty() || bytes.len() > 20 {
        return None;
    }
    Some(hex::encode(bytes))
}

enum SubjectKey {
    Generated(Box<KeyPair>),
    Csr(CsrKey),
}

impl PkiPlugin {
    fn role(&self, name: &str) -> Option<&Role> {
        self.roles.iter().find(|r| r.name == name)
    }

    fn check_expiry(
        role: &Role,
        now: OffsetDateTime,
        expires_at: OffsetDateTime,
    ) -> Result<(), PluginError> {
        if expires_at <= now {
            return Err(PluginError::InvalidRequest(format!(
                "expires_at {} is not in the future",
                rfc3339(expires_at)
            )));
        }
        let ttl = expires_at - now;
        let max = Duration::try_from(role.max_ttl).unwrap_or(Duration::MAX);
        if ttl > max.saturating_add(TTL_SLACK) {
            return Err(PluginError::InvalidRequest(format!(
                "ttl {} exceeds role `{}` max {}",
                human(ttl),
                role.name,
                human(max)
            )));
        }
        if expires_at > role.ca.not_after {
            return Err(PluginError::Permanent(format!(
                "the certificate would end at {} but the CA of role `{}` ends at {}",
                rfc3339(expires_at),
                role.name,
                rfc3339(role.ca.not_after)
            )));
        }
        Ok(())
    }

    /// Signs a CRL for `role` listing every revoked serial still within
    /// `not_after + crl_retention`.
    async fn crl(&self, role: &Role) -> Result<Vec<u8>, PluginError> {
        let now = OffsetDateTime::now_utc();
        let retention = i64::try_from(self.crl_retention.as_secs()).unwrap_or(i64::MAX);
        let mut revoked = Vec::new();
        for (key, value) in self.state.list(&format!("crl/{}/", role.name)).await? {
            let serial_hex = key.rsplit('/').next().unwrap_or_default();
            let Some(serial) = hex::decode(serial_hex)
                .ok()
                .filter(|b| !b.is_empty() && b.len() <= 20)
            else {
                warn!(role = %role.name, key = %key, "ignoring a CRL entry whose key is not a serial number");
                continue;
            };
            let revocation_time = match serde_json::from_slice::<Revoked>(&value) {
                Ok(entry) => {
                    if entry.not_after.saturating_add(retention) <= now.unix_timestamp() {
                        continue;
                    }
                    OffsetDateTime::from_unix_timestamp(entry.revoked_at).unwrap_or(now)
                }
                Err(e) => {
                    // Keep listing it: dropping a revoked serial is the unsafe way to fail.
                    warn!(role = %role.name, key = %key, error = %e, "CRL entry is unreadable; listing the serial anyway");
                    now
                }
            };
            revoked.push(RevokedCertParams {
                serial_number: SerialNumber::from_slice(&serial),
                revocation_time,
                reason_code: None,
                invalidity_date: None,
            });
        }
        self.sign_crl(role, now, revoked)
    }

    fn sign_crl(
        &self,
        role: &Role,
        now: OffsetDateTime,
        revoked: Vec<RevokedCertParams>,
    ) -> Result<Vec<u8>, PluginError> {
        let crl_number = u64::try_from(now.unix_timestamp_nanos() / 1_000_000).unwrap_or(0);
        let params = CertificateRevocationListParams {
            this_update: now,
            next_update: now + CRL_VALIDITY,
            crl_number: SerialNumber::from(crl_number),
            issuing_distribution_point: None,
            revoked_certs: revoked,
            key_identifier_method: role.ca.crl_key_id.clone(),
        };
        let crl = params.signed_by(&role.ca.issuer).map_err(|e| {
            PluginError::Permanent(format!(
                "signing the CRL of role `{}` failed: {e}",
                role.name
            ))
        })?;
        Ok(crl.der().to_vec())
    }
}

#[async_trait]
impl Plugin for PkiPlugin {
    fn kind(&self) -> &'static str {
        "pki"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            can_renew: false,
            can_revoke: true,
        }
    }

    async fn validate(&self) -> Result<Validation, PluginError> {
        let now = OffsetDateTime::now_utc();
        let mut details = BTreeMap::new();
        let mut warnings = Vec::new();
        for role in &self.roles {
            // Proves the CA key and certificate still sign together.
            self.sign_crl(role, now, Vec::new())?;
            let ca = &role.ca;
            details.insert(format!("role.{}.ca", role.name), ca.subject_cn.clone());
            details.insert(
                format!("role.{}.ca_not_after", role.name),
                rfc3339(ca.not_after),
            );
            details.insert(
                format!("role.{}.ca_source", role.name),
                ca.source.to_owned(),
            );
            details.insert(
                format!("role.{}.key_type", role.name),
                role.key_type.to_string(),
            );
            let left = ca.not_after - now;
            if left <= Duration::ZERO {
                warnings.push(format!(
                    "the CA of role `{}` ({}) expired at {}",
                    role.name,
                    ca.subject_cn,
                    rfc3339(ca.not_after)
                ));
            } else if left < CA_EXPIRY_WARNING {
                warnings.push(format!(
                    "the CA of role `{}` ({}) expires in {} days, at {}",
                    role.name,
                    ca.subject_cn,
                    left.whole_days(),
                    rfc3339(ca.not_after)
                ));
            }
        }
        let identity = if self.roles.is_empty() {
            format!("pki connection `{}` without roles", self.connection)
        } else {
            self.roles
                .iter()
                .map(|r| format!("CA {}", r.ca.subject_cn))
                .collect::<Vec<_>>()
                .join(", ")
        };
        Ok(Validation {
            identity,
            details,
            warnings,
        })
    }

    /// The earliest `notAfter` among the roles' CA certificates: past it,
    /// that role can issue nothing.
    async fn credential_expiry(&self) -> Result<Option<OffsetDateTime>, PluginError> {
        Ok(self.roles.iter().map(|r| r.ca.not_after).min())
    }

    #[instrument(skip_all, fields(role = %req.role, lease_id = %req.lease_id))]
    async fn issue(&self, req: IssueRequest) -> Result<Issued, PluginError> {
        let role = self.role(&req.role).ok_or_else(|| {
            PluginError::Misconfigured(format!(
                "role `{}` is not configured on pki connection `{}`",
                req.role, self.connection
            ))
        })?;
        let now = OffsetDateTime::now_utc();
        let expires_at = req.expires_at.to_offset(UtcOffset::UTC);
        Self::check_expiry(role, now, expires_at)?;
        let params = Params::parse(&req.params)?;

        let rendered: Vec<_> = role
            .allowed
            .iter()
            .map(|t| t.render(&req.workload))
            .collect();
        let common_name = role
            .common_name
            .as_ref()
            .map(|t| t.render(&req.workload))
            .transpose()?;
        let (names, csr) = match params {
            Params::All => (all_names(&rendered)?, None),
            Params::Names(list) => (select_names(role, &list, &rendered)?, None),
            Params::Csr(text) => {
                let csr = parse_csr(&text, role)?;
                let names = if csr.names.is_empty() {
                    all_names(&rendered)?
                } else {
                    select_names(role, &csr.names, &rendered)?
                };
                let allowed: Vec<String> = rendered
                    .iter()
                    .filter_map(|r| r.as_ref().ok().cloned())
                    .collect();
                for cn in &csr.common_names {
                    let ok = common_name.as_deref() == Some(cn.as_str())
                        || names::is_allowed(&names::canonical(cn), &allowed);
                    if !ok {
                        return Err(PluginError::InvalidRequest(format!(
                            "CSR subject CN `{}` is not allowed for role `{}` (allowed: {})",
                            cn.escape_debug(),
                            role.name,
                            allowed.join(", ")
                        )));
                    }
                }
                (names, Some(csr.key))
            }
        };
        let Some(first) = names.first() else {
            return Err(PluginError::InvalidRequest(format!(
                "role `{}` gives no name to certify",
                role.name
            )));
        };
        let common_name = common_name.unwrap_or_else(|| first.clone());

        let subject_key = match csr {
            Some(key) => SubjectKey::Csr(key),
            None if role.key_type == KeyType::Rsa2048 => {
                let key = tokio::task::spawn_blocking(|| ca::generate_key(KeyType::Rsa2048))
                    .await
                    .map_err(|e| {
                        PluginError::Permanent(format!("RSA key generation did not finish: {e}"))
                    })??;
                SubjectKey::Generated(Box::new(key))
            }
            None => SubjectKey::Generated(Box::new(ca::generate_key(role.key_type)?)),
        };

        let serial = serial_for(&req.lease_id);
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.subject_alt_names = names.iter().map(|n| san(n)).collect::<Result<_, _>>()?;
        params.not_before = now - BACKDATE;
        params.not_after = expires_at;
        params.serial_number = Some(SerialNumber::from_slice(&serial));
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        if role.key_type == KeyType::Rsa2048 {
            params.key_usages.push(KeyUsagePurpose::KeyEncipherment);
        }
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;

        let signed = match &subject_key {
            SubjectKey::Generated(key) => params.signed_by(key.as_ref(), &role.ca.issuer),
            SubjectKey::Csr(key) => params.signed_by(key, &role.ca.issuer),
        };
        let cert = signed.map_err(|e| {
            PluginError::Permanent(format!(
                "signing the certificate for role `{}` failed: {e}",
                role.name
            ))
        })?;

        let serial_hex = hex::encode(serial);
        let not_after = expires_at - Duration::nanoseconds(i64::from(expires_at.nanosecond()));
        let mut public = serde_json::Map::new();
        public.insert("certificate".into(), Value::String(cert.pem()));
        public.insert("ca_chain".into(), json!(role.ca.chain_pem));
        public.insert("serial".into(), Value::String(serial_hex.clone()));
        public.insert("not_after".into(), Value::String(rfc3339(not_after)));
        public.insert("names".into(), json!(names));
        let mut secret = BTreeMap::new();
        if let SubjectKey::Generated(key) = &subject_key {
            secret.insert(
                "private_key".to_owned(),
                SecretString::from(key.serialize_pem()),
            );
        }
        info!(serial = %serial_hex, names = names.len(), csr = matches!(subject_key, SubjectKey::Csr(_)), "issued certificate");
        Ok(Issued {
            handle: json!({ "serial": serial_hex }),
            public,
            secret,
            expires_at: req.expires_at,
            root_version: None,
        })
    }

    async fn renew(&self, _req: RenewRequest) -> Result<OffsetDateTime, PluginError> {
        Err(PluginError::Unsupported("renew"))
    }

    #[instrument(skip_all, fields(role = %lease.role, lease_id = %lease.lease_id))]
    async fn revoke(&self, lease: &LeaseRef) -> Result<(), PluginError> {
        let serial = match lease.handle.as_ref().and_then(|h| h.get("serial")) {
            None => hex::encode(serial_for(&lease.lease_id)),
            Some(Value::String(s)) => parse_serial_hex(s).ok_or_else(|| {
                PluginError::Permanent(format!(
                    "handle serial `{}` is not a hex serial number",
                    s.escape_debug()
                ))
            })?,
            Some(other) => {
                return Err(PluginError::Permanent(format!(
                    "handle serial {other} is not a hex string"
                )));
            }
        };
        if lease.role.is_empty() || lease.role.contains('/') {
            return Err(PluginError::Permanent(format!(
                "`{}` cannot be a pki role",
                lease.role.escape_debug()
            )));
        }
        if self.role(&lease.role).is_none() {
            warn!(serial = %serial, "revoking for a role this connection does not have; no CRL will list it until the role is back");
        }
        let key = format!("crl/{}/{serial}", lease.role);
        let now = OffsetDateTime::now_utc().unix_timestamp();
        let not_after = lease.expires_at.unix_timestamp();
        let entry = match self.state.get(&key).await? {
            None => Revoked {
                revoked_at: now,
                not_after,
            },
            Some(bytes) => match serde_json::from_slice::<Revoked>(&bytes) {
                Ok(old) if old.not_after >= not_after => return Ok(()),
                Ok(old) => Revoked {
                    revoked_at: old.revoked_at,
                    not_after,
                },
                Err(_) => Revoked {
                    revoked_at: now,
                    not_after,
                },
            },
        };
        let value = serde_json::to_vec(&entry)
            .map_err(|e| PluginError::Permanent(format!("cannot encode the CRL entry: {e}")))?;
        self.state.put(&key, &value).await?;
        info!(serial = %serial, "revoked certificate");
        Ok(())
    }

    async fn document(
        &self,
        role: Option<&str>,
        name: &str,
    ) -> Result<Option<Document>, PluginError> {
        let Some(role) = role.and_then(|r| self.role(r)) else {
            return Ok(None);
        };
        match name {
            "ca" => Ok(Some(Document {
                content_type: CA_CONTENT_TYPE,
                body: role.ca.chain_pem.concat().into_bytes(),
            })),
            "crl" => Ok(Some(Document {
                content_type: CRL_CONTENT_TYPE,
                body: self.crl(role).await?,
            })),
            _ => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serial_is_derived_from_the_lease_id() {
        let a = serial_for(&LeaseId::new("lease-1"));
        assert_eq!(a, serial_for(&LeaseId::new("lease-1")));
        assert_ne!(a, serial_for(&LeaseId::new("lease-2")));
        assert_eq!(a[0] & 0x80, 0);
        let digest = Sha256::digest(b"lessor-pki-serial:lease-1");
        assert_eq!(a[1..], digest[1..16]);
        assert_eq!(a[0], digest[0] & 0x7f);
    }

    #[test]
    fn handle_serials() {
        assert_eq!(parse_serial_hex("0A1b").as_deref(), Some("0a1b"));
        assert_eq!(parse_serial_hex(""), None);
        assert_eq!(parse_serial_hex("xyz"), None);
        assert_eq!(parse_serial_hex(&"00".repeat(21)), None);
    }

    #[test]
    fn params() {
        let p = |v: Value| Params::parse(v.as_object().unwrap());
        assert!(matches!(p(json!({})), Ok(Params::All)));
        assert!(matches!(p(json!({"names": ["a"]})), Ok(Params::Names(_))));
        assert!(matches!(p(json!({"csr": "x"})), Ok(Params::Csr(_))));
        for (v, msg) in [
            (json!({"name": ["a"]}), "unknown parameter `name`"),
            (json!({"names": []}), "`names` is empty"),
            (json!({"names": "a"}), "list of strings"),
            (json!({"names": ["a"], "csr": "x"}), "not both"),
        ] {
            match p(v) {
                Err(PluginError::InvalidRequest(m)) => assert!(m.contains(msg), "{m}"),
                _ => panic!("expected InvalidRequest containing {msg}"),
            }
        }
    }
}
