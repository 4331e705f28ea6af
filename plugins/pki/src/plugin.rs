//! The `pki` [`Plugin`]: issues X.509 certificates from a per-role CA, revokes
//! them onto a CRL kept in the connection's state, and serves the CA chain and
//! CRL as documents.
//!
//! Must not know about the core's store, HTTP layer or policy engine; all it
//! keeps lives in [`lessor_plugin::StateStore`] under `ca/<role>/…`,
//! `crl/<role>/<serial>` and `crl-generation/<role>`.
//!
//! Over 800 lines: issuing (names, CSR checks, extensions) and the
//! [`Plugin`] methods share the role and CA types and read as one piece; the
//! CRL lives in `crl.rs`, names in `names.rs`, the CA in `ca.rs`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;
use std::time::Duration as StdDuration;

use async_trait::async_trait;
use lessor_plugin::secrecy::SecretString;
use lessor_plugin::{
    Capabilities, Document, DocumentSpec, IssueRequest, Issued, LeaseId, LeaseRef, Plugin,
    PluginContext, PluginError, Registration, RenewRequest, Revocation, RoleSpec, StateStore,
    Validation,
};
use rcgen::string::Ia5String;
use rcgen::{
    CertificateParams, CrlDistributionPoint, CustomExtension, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, PublicKeyData, SanType,
    SerialNumber, SignatureAlgorithm,
};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use time::format_description::well_known::Rfc3339;
use time::{Duration, OffsetDateTime, UtcOffset};
use tracing::{debug, info, instrument, warn};
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
use crate::crl::{self, Clock, CrlCache, Revoked};
use crate::names::{self, Kind, Template};

/// Slack on top of a role's `max_ttl` (the core caps, clocks differ a little).
const TTL_SLACK: Duration = Duration::seconds(5);
/// Issued certificates start this much in the past, for clock skew.
const BACKDATE: Duration = Duration::seconds(30);
/// `validate` warns when a CA ends within this.
const CA_EXPIRY_WARNING: Duration = Duration::days(30);

/// Content type of the `ca` document.
pub const CA_CONTENT_TYPE: &str = "application/pem-certificate-chain";
/// Content type of the `crl` document.
pub const CRL_CONTENT_TYPE: &str = "application/pkix-crl";
/// Content type of the `ca.der` document (the issuing CA certificate alone,
/// DER, as RFC 5280 wants behind an AIA `caIssuers` URL).
pub const CA_DER_CONTENT_TYPE: &str = "application/pkix-cert";

/// `id-pe-authorityInfoAccess`.
const OID_AUTHORITY_INFO_ACCESS: &[u64] = &[1, 3, 6, 1, 5, 5, 7, 1, 1];
/// `id-ad-caIssuers`.
const OID_CA_ISSUERS: &[u64] = &[1, 3, 6, 1, 5, 5, 7, 48, 2];

/// The plugin kind in config (`plugin = "pki"`).
pub const KIND: &str = "pki";

/// How the core knows this plugin (see [`lessor_plugin::Registration`]).
pub fn registration() -> Registration {
    Registration {
        kind: KIND,
        sdk_version: lessor_plugin::SDK_VERSION,
        vault: lessor_plugin::VaultShape::Pki,
        build: |ctx, connection, roles| Box::pin(build(ctx, connection, roles)),
        validate_config,
        ca_files,
    }
}

/// Checks the connection and role tables as [`build`] does, without
/// reading CA files or state.
pub fn validate_config(connection: &serde_json::Value, roles: &[RoleSpec]) -> Result<(), String> {
    config::parse_connection(connection.clone()).map_err(|e| e.to_string())?;
    let mut seen = BTreeSet::new();
    for spec in roles {
        check_role(&mut seen, spec).map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Each role's `ca.cert_file`, by role name: the CAs `lessor check` compares
/// with the TLS client CA.
pub fn ca_files(_connection: &serde_json::Value, roles: &[RoleSpec]) -> Vec<(String, String)> {
    roles
        .iter()
        .filter_map(|r| {
            let f = r.config.get("ca")?.get("cert_file")?.as_str()?;
            Some((r.name.clone(), f.to_owned()))
        })
        .collect()
}

/// A role's config, parsed and checked without touching files or state.
struct CheckedRole {
    cfg: config::RoleConfig,
    allowed: Vec<Template>,
    common_name: Option<Template>,
    source: config::CaSource,
}

fn check_role(seen: &mut BTreeSet<String>, spec: &RoleSpec) -> Result<CheckedRole, PluginError> {
    let name = &spec.name;
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
    let cfg = config::parse_role(name, spec.config.clone())?;
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
    let source = cfg.ca.source(name)?;
    Ok(CheckedRole { cfg, allowed, common_name, source })
}

/// Builds the `pki` plugin for one connection: parses the connection and role
/// config and loads (or, on first start, generates and stores) every role's CA.
/// Time comes from `ctx.clock` (tests move it).
#[instrument(skip_all, fields(connection = %ctx.connection))]
pub async fn build(
    ctx: PluginContext,
    connection: serde_json::Value,
    roles: Vec<RoleSpec>,
) -> Result<Arc<dyn Plugin>, PluginError> {
    let clock: Clock = ctx.clock.clone();
    let conn = config::parse_connection(connection)?;
    let base = public_base(&ctx.public_url)?;
    let mut seen = BTreeSet::new();
    let mut built = Vec::with_capacity(roles.len());
    for spec in roles {
        let CheckedRole { cfg, allowed, common_name, source } = check_role(&mut seen, &spec)?;
        let name = spec.name;
        let ca = ca::load(&ctx, &name, &source).await?;
        let doc_url = |doc: &str| {
            format!(
                "{base}/v1/pki/{}/{}/{doc}",
                path_segment(&ctx.connection),
                path_segment(&name)
            )
        };
        let ca_pem_doc = ca.chain_pem.concat().into_bytes();
        let ca_der_doc = ca.chain_pem.first().map(|p| pem_der(p)).transpose()?.unwrap_or_default();
        built.push(Role {
            crl_url: doc_url("crl"),
            ca_url: doc_url("ca.der"),
            name,
            max_ttl: spec.max_ttl,
            key_type: cfg.key_type,
            allowed,
            common_name,
            ca,
            ca_pem_doc,
            ca_der_doc,
            crl: CrlCache::new(),
        });
    }
    Ok(Arc::new(PkiPlugin {
        connection: ctx.connection,
        state: ctx.state,
        crl_retention: conn.crl_retention,
        crl_refresh: conn.crl_refresh,
        clock,
        roles: built,
    }))
}

/// `public_url` without a trailing `/`, checked: certificates carry URLs
/// built on it, which must be ASCII http(s) URLs.
fn public_base(public_url: &str) -> Result<String, PluginError> {
    let base = public_url.trim_end_matches('/');
    let scheme_ok = base.starts_with("http://") || base.starts_with("https://");
    if !scheme_ok || !base.is_ascii() || base.bytes().any(|b| b.is_ascii_control() || b == b' ') {
        return Err(PluginError::Misconfigured(format!(
            "`public_url` `{}` must be an http:// or https:// URL in ASCII: certificates name their CRL and CA under it",
            public_url.escape_debug()
        )));
    }
    Ok(base.to_owned())
}

/// Percent-encodes everything but RFC 3986 unreserved bytes.
fn path_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn pem_der(text: &str) -> Result<Vec<u8>, PluginError> {
    pem::parse(text)
        .map(pem::Pem::into_contents)
        .map_err(|e| PluginError::Permanent(format!("the CA certificate PEM does not parse: {e}")))
}

/// The AuthorityInfoAccess extension with one `caIssuers` URL.
fn authority_info_access(url: &str) -> CustomExtension {
    let der = yasna::construct_der(|w| {
        w.write_sequence(|w| {
            w.next().write_sequence(|w| {
                w.next()
                    .write_oid(&yasna::models::ObjectIdentifier::from_slice(OID_CA_ISSUERS));
                // GeneralName uniformResourceIdentifier: [6] IMPLICIT IA5String.
                w.next()
                    .write_tagged_implicit(yasna::Tag::context(6), |w| w.write_ia5_string(url));
            });
        });
    });
    CustomExtension::from_oid_content(OID_AUTHORITY_INFO_ACCESS, der)
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
    /// The `ca` document (PEM chain) and the `ca.der` one (the CA alone).
    ca_pem_doc: Vec<u8>,
    ca_der_doc: Vec<u8>,
    /// Where relying parties find the CRL and the issuer: every leaf
    /// certificate names them (CRL distribution point, AIA caIssuers).
    crl_url: String,
    ca_url: String,
    crl: CrlCache,
}

/// The `pki` plugin of one connection.
pub struct PkiPlugin {
    connection: String,
    state: Arc<dyn StateStore>,
    crl_retention: StdDuration,
    crl_refresh: StdDuration,
    clock: Clock,
    roles: Vec<Role>,
}

impl fmt::Debug for PkiPlugin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PkiPlugin")
            .field("connection", &self.connection)
            .field("crl_retention", &self.crl_retention)
            .field("crl_refresh", &self.crl_refresh)
            .field("roles", &self.roles)
            .finish_non_exhaustive()
    }
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

    fn crl_source<'a>(&'a self, role: &'a Role) -> crl::Source<'a> {
        crl::Source {
            role: &role.name,
            ca: &role.ca,
            state: self.state.as_ref(),
            retention: self.crl_retention,
            refresh: self.crl_refresh,
            clock: &self.clock,
        }
    }
}

#[async_trait]
impl Plugin for PkiPlugin {
    fn kind(&self) -> &str {
        KIND
    }

    /// A revoked certificate is listed on the role's CRL. A relying party
    /// that checks the CRL sees it once its cached CRL ends (`nextUpdate`,
    /// one CRL validity) and other replicas re-read the list (`crl_refresh`);
    /// one that does not check accepts the certificate until `notAfter`.
    fn capabilities(&self) -> Capabilities {
        let delay = StdDuration::try_from(crl::CRL_VALIDITY).unwrap_or_default() + self.crl_refresh;
        Capabilities {
            can_renew: false,
            revocation: Revocation::Published {
                via: "CRL".into(),
                max_delay_seconds: Some(delay.as_secs()),
            },
        }
    }

    fn documents(&self) -> Vec<DocumentSpec> {
        let doc = |name: &str, description: &str| DocumentSpec {
            name: name.into(),
            per_role: true,
            description: description.into(),
        };
        vec![
            doc(lessor_plugin::DOC_CA, "the role's CA chain, PEM (application/pem-certificate-chain)"),
            doc("ca.der", "the role's issuing CA certificate, DER (application/pkix-cert)"),
            doc("crl", "the role's certificate revocation list, DER (application/pkix-crl)"),
        ]
    }

    async fn validate(&self) -> Result<Validation, PluginError> {
        let now = (self.clock)();
        let mut details = BTreeMap::new();
        let mut warnings = Vec::new();
        for role in &self.roles {
            // Proves the CA key and certificate still sign together.
            crl::sign(&role.name, &role.ca, now, Vec::new())?;
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

    /// Not applicable: a certificate is not an object at a vendor. Once
    /// signed it lives with the workload (lessor keeps no copy), ends by
    /// itself at `notAfter` (at most the lease's expiry), and the only
    /// state kept is the CRL's entries for early revocations: there is
    /// nothing that could outlive its lease unseen, so there is nothing to
    /// list or reconcile.
    async fn list_objects(&self, _after: Option<&str>, _limit: u32) -> Result<Vec<lessor_plugin::VendorObject>, PluginError> {
        Err(PluginError::Unsupported("listing vendor objects (certificates are not objects at a vendor)".into()))
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
        let now = (self.clock)();
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
        params.crl_distribution_points = vec![CrlDistributionPoint {
            uris: vec![role.crl_url.clone()],
        }];
        params.custom_extensions = vec![authority_info_access(&role.ca_url)];

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
        debug!(serial = %serial_hex, names = names.len(), csr = matches!(subject_key, SubjectKey::Csr(_)), "issued certificate");
        Ok(Issued {
            handle: json!({ "serial": serial_hex }),
            public,
            secret,
            expires_at: req.expires_at,
            root_version: None,
        })
    }

    async fn renew(&self, _req: RenewRequest) -> Result<OffsetDateTime, PluginError> {
        Err(PluginError::Unsupported("renew".into()))
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
        let now = (self.clock)();
        if now >= lease.expires_at {
            // The certificate reached its notAfter (the lease's end): it is
            // expired, not revoked, and a CRL does not list it.
            debug!(serial = %serial, "certificate expired; nothing to list on the CRL");
            return Ok(());
        }
        let role = self.role(&lease.role);
        if role.is_none() {
            warn!(serial = %serial, "revoking for a role this connection does not have; no CRL will list it until the role is back");
        }
        let key = crl::entry_key(&lease.role, &serial);
        let now = now.unix_timestamp();
        let not_after = lease.expires_at.unix_timestamp();
        let entry = match self.state.get(&key).await? {
            None => Some(Revoked {
                revoked_at: now,
                not_after,
            }),
            Some(bytes) => match serde_json::from_slice::<Revoked>(&bytes) {
                Ok(old) if old.not_after >= not_after => None,
                Ok(old) => Some(Revoked {
                    revoked_at: old.revoked_at,
                    not_after,
                }),
                Err(_) => Some(Revoked {
                    revoked_at: now,
                    not_after,
                }),
            },
        };
        if let Some(entry) = entry {
            let value = serde_json::to_vec(&entry)
                .map_err(|e| PluginError::Permanent(format!("cannot encode the CRL entry: {e}")))?;
            self.state.put(&key, &value).await?;
        }
        // Also when the entry was there already: a retry after a failed
        // generation write must still tell the other replicas.
        self.state
            .put(&crl::generation_key(&lease.role), &crl::new_generation())
            .await?;
        if let Some(role) = role {
            role.crl.changed();
        }
        info!(serial = %serial, "revoked certificate before its notAfter; listed on the CRL");
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
                content_type: CA_CONTENT_TYPE.into(),
                body: role.ca_pem_doc.clone(),
            })),
            "ca.der" => Ok(Some(Document {
                content_type: CA_DER_CONTENT_TYPE.into(),
                body: role.ca_der_doc.clone(),
            })),
            "crl" => Ok(Some(Document {
                content_type: CRL_CONTENT_TYPE.into(),
                body: role.crl.document(&self.crl_source(role)).await?,
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
