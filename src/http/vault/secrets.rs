//! Vault's secret paths on lessor connections: `<mount>/creds/<role>`
//! (database-style, and every plugin but pki) and pki's
//! `<mount>/issue/<role>` and `<mount>/sign/<role>`. Each is one native
//! issue for the session's workload: same policy, quotas, lease and audit.

use axum::response::Response;
use secrecy::ExposeSecret;
use serde_json::{json, Map, Value};
use time::OffsetDateTime;

use super::{Envelope, Mount, VaultError, VaultRequest};
use crate::http::AppState;
use crate::lease::{IssueInput, Issued};

/// `ttl` from a Vault body, as the engine takes it.
fn ttl(r: &VaultRequest) -> Result<Option<String>, VaultError> {
    Ok(super::parse_duration("ttl", r.body.get("ttl"))?.map(|d| format!("{}s", d.as_secs())))
}

/// A Vault list: a JSON array of strings or one comma-separated string.
fn list(r: &VaultRequest, field: &str) -> Result<Vec<String>, VaultError> {
    let items: Vec<String> = match r.body.get(field) {
        None | Some(Value::Null) => vec![],
        Some(Value::String(s)) => s.split(',').map(str::to_owned).collect(),
        Some(Value::Array(a)) => a
            .iter()
            .map(|v| v.as_str().map(str::to_owned))
            .collect::<Option<_>>()
            .ok_or_else(|| VaultError::bad_request(format!("field `{field}` must be a list of strings")))?,
        Some(_) => return Err(VaultError::bad_request(format!("field `{field}` must be a comma-separated string or a list"))),
    };
    Ok(items.into_iter().map(|s| s.trim().to_owned()).filter(|s| !s.is_empty()).collect())
}

/// The lessor role behind `<mount>/.../<role>`; Vault's 400 when the
/// connection has none by that name.
fn known_role(st: &AppState, m: &Mount, role: &str) -> Result<String, VaultError> {
    let name = format!("{}/{role}", m.connection);
    if st.leases.catalog.role(&name).is_none() {
        return Err(VaultError::bad_request(format!("unknown role: {}", role.chars().take(64).collect::<String>().escape_debug())));
    }
    Ok(name)
}

async fn issue(st: &AppState, r: &VaultRequest, session: &crate::store::Session, input: IssueInput) -> Result<Issued, VaultError> {
    let w = crate::vault::workload(session);
    Ok(st.leases.issue(&w, input, &r.meta).await?)
}

fn envelope(issued: &Issued, vault_lease_id: String, data: Map<String, Value>, mount: &Mount) -> Envelope {
    let l = &issued.lease;
    let mut env = Envelope::data(Value::Object(data));
    env.lease_id = vault_lease_id;
    env.renewable = issued.renewable;
    env.lease_duration = (l.expires_at - OffsetDateTime::now_utc()).whole_seconds().max(0);
    env.mount_type = mount.vault_type().to_owned();
    env
}

/// `GET|POST|PUT /v1/<mount>/creds/<role>`: `data` holds the plugin's
/// fields (`username`, `password`, ... for PostgreSQL). Optional body:
/// `ttl`, `scopes`; anything else goes to the plugin as a parameter.
pub async fn creds(st: &AppState, r: &mut VaultRequest, mount: &str, m: &Mount, role: &str) -> Result<Response, VaultError> {
    let (session, _) = super::session(st, r).await?;
    let ttl = ttl(r)?;
    let scopes = if r.body.contains_key("scopes") { Some(list(r, "scopes")?) } else { None };
    let params: Map<String, Value> =
        r.body.iter().filter(|(k, _)| !matches!(k.as_str(), "ttl" | "scopes")).map(|(k, v)| (k.clone(), v.clone())).collect();
    let input = IssueInput { role: known_role(st, m, role)?, ttl, scopes, params };
    let issued = issue(st, r, &session, input).await?;
    let mut data = issued.public.clone();
    for (k, v) in &issued.secret {
        data.insert(k.clone(), Value::String(v.expose_secret().to_owned()));
    }
    let id = format!("{mount}/creds/{role}/{}", issued.lease.id);
    Ok(envelope(&issued, id, data, m).respond(&r.meta))
}

/// Fields of Vault's pki issue/sign that lessor reads.
const PKI_FIELDS: &[&str] = &["common_name", "alt_names", "ip_sans", "ttl", "csr", "format", "private_key_format", "exclude_cn_from_sans"];

/// `POST|PUT /v1/<mount>/issue/<role>` (`common_name`, `alt_names`,
/// `ip_sans`, `ttl`) and `.../sign/<role>` (`csr`): Vault's fields out
/// (`certificate`, `issuing_ca`, `ca_chain`, `private_key`,
/// `private_key_type`, `serial_number`, `expiration`). The names must be
/// ones the role allows the workload, as natively. Vault's other fields are
/// ignored with Vault's warning.
pub async fn pki(st: &AppState, r: &mut VaultRequest, mount: &str, m: &Mount, op: &str, role: &str) -> Result<Response, VaultError> {
    let (session, _) = super::session(st, r).await?;
    for (field, allowed) in [("format", &["pem"][..]), ("private_key_format", &["pem", "pkcs8", "der"][..])] {
        if let Some(v) = r.str_field(field)? {
            if !v.is_empty() && !allowed.contains(&v.as_str()) {
                return Err(VaultError::bad_request(format!("{field} `{}`: lessor answers PEM only", v.escape_debug())));
            }
        }
    }
    let mut params = Map::new();
    if op == "sign" {
        let csr = r.str_field("csr")?.unwrap_or_default();
        if csr.trim().is_empty() {
            return Err(VaultError::bad_request("missing csr: sign takes a PEM certificate request"));
        }
        params.insert("csr".into(), Value::String(csr));
    } else {
        let mut names = Vec::new();
        if let Some(cn) = r.str_field("common_name")?.filter(|s| !s.trim().is_empty()) {
            names.push(cn.trim().to_owned());
        }
        names.extend(list(r, "alt_names")?);
        names.extend(list(r, "ip_sans")?);
        let mut seen = std::collections::BTreeSet::new();
        names.retain(|n| seen.insert(n.clone()));
        if !names.is_empty() {
            params.insert("names".into(), json!(names));
        }
    }
    let mut ignored: Vec<&str> = r.body.keys().map(String::as_str).filter(|k| !PKI_FIELDS.contains(k)).collect();
    if op == "sign" {
        ignored.extend(["common_name", "alt_names", "ip_sans"].into_iter().filter(|k| r.body.contains_key(*k)));
    }
    let warnings = if ignored.is_empty() {
        vec![]
    } else {
        ignored.sort_unstable();
        vec![format!("Endpoint ignored these unrecognized parameters: [{}]", ignored.join(" "))]
    };
    let input = IssueInput { role: known_role(st, m, role)?, ttl: ttl(r)?, scopes: None, params };
    let issued = issue(st, r, &session, input).await?;
    let p = &issued.public;
    // Vault's PEM strings end without a newline.
    let certificate = p.get("certificate").and_then(Value::as_str).unwrap_or_default().trim_end().to_owned();
    let chain: Vec<String> = p
        .get("ca_chain")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(|v| v.as_str().map(|s| s.trim_end().to_owned())).collect())
        .unwrap_or_default();
    let (key_type, not_before) = cert_facts(&certificate);
    let mut data = Map::new();
    data.insert("certificate".into(), json!(certificate));
    data.insert("not_before".into(), json!(not_before));
    data.insert("issuing_ca".into(), json!(chain.first().cloned().unwrap_or_default()));
    data.insert("ca_chain".into(), json!(chain));
    data.insert("serial_number".into(), json!(colon_hex(p.get("serial").and_then(Value::as_str).unwrap_or_default())));
    data.insert("expiration".into(), json!(issued.lease.expires_at.unix_timestamp()));
    if let Some(k) = issued.secret.get("private_key") {
        data.insert("private_key".into(), json!(k.expose_secret().trim_end()));
        data.insert("private_key_type".into(), json!(key_type));
    }
    let id = format!("{mount}/{op}/{role}/{}", issued.lease.id);
    let mut env = envelope(&issued, id, data, m);
    env.warnings = warnings;
    Ok(env.respond(&r.meta))
}

/// `0a1b2c` -> `0a:1b:2c`, Vault's serial number form.
fn colon_hex(hex: &str) -> String {
    hex.as_bytes().chunks(2).map(|c| String::from_utf8_lossy(c).to_lowercase()).collect::<Vec<_>>().join(":")
}

/// The certificate's key type (`rsa`, `ec`, `ed25519`) and notBefore
/// (Unix seconds), as Vault reports them.
fn cert_facts(cert_pem: &str) -> (&'static str, i64) {
    let Ok((_, pem)) = x509_parser::pem::parse_x509_pem(cert_pem.as_bytes()) else { return ("", 0) };
    let Ok(cert) = pem.parse_x509() else { return ("", 0) };
    let kind = match cert.public_key().algorithm.algorithm.to_id_string().as_str() {
        "1.2.840.113549.1.1.1" => "rsa",
        "1.2.840.10045.2.1" => "ec",
        "1.3.101.112" => "ed25519",
        _ => "",
    };
    (kind, cert.validity().not_before.timestamp())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serials_take_vaults_colon_form() {
        assert_eq!(colon_hex("0A1b2c"), "0a:1b:2c");
        assert_eq!(colon_hex(""), "");
    }

    #[test]
    fn key_types_come_from_the_certificate() {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let cert = rcgen::CertificateParams::new(vec!["a.example.com".into()]).unwrap().self_signed(&key).unwrap();
        assert_eq!(cert_facts(&cert.pem()).0, "ec");
        assert!((cert_facts(&cert.pem()).1 - time::OffsetDateTime::now_utc().unix_timestamp()).abs() < 3600 * 24 * 366 * 100);
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        let cert = rcgen::CertificateParams::new(vec!["a.example.com".into()]).unwrap().self_signed(&key).unwrap();
        assert_eq!(cert_facts(&cert.pem()).0, "ed25519");
        assert_eq!(cert_facts("not a certificate"), ("", 0));
    }
}
