//! Fuzz entry points for the parsers that take hostile input, runnable on
//! the stable toolchain: each `fn(&[u8])` must return (whatever the bytes)
//! without panicking. tests/it/fuzz.rs drives them with a seeded mutator (a
//! bounded run in every `cargo test`, `LESSOR_FUZZ_SECONDS` for a long one);
//! [`seeds`] gives each target its starting corpus.
//!
//! Fixtures (a signing key and its JWKS file, the shipped policies, a pki
//! CA) are built once per process. Not part of the API: hidden from docs.
//!
//! Must not import: sqlx, axum (only public entry points of other modules).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use base64::Engine;
use secrecy::SecretString;
use serde_json::{json, Value};
use time::OffsetDateTime;

use crate::config::Config;
use crate::identity::Verifier;
use crate::policy::casefile::Case;
use crate::policy::{Policies, RoleInfo};

/// A fuzz target: takes arbitrary bytes, must not panic.
pub type Target = fn(&[u8]);

/// The fuzz targets, by name.
pub const TARGETS: &[(&str, Target)] = &[
    ("jwt", jwt),
    ("csr", csr),
    ("pg_template", pg_template),
    ("cedar_context", cedar_context),
    ("config", config),
];

/// A starting corpus for `target`: valid inputs the mutator starts from.
pub fn seeds(target: &str) -> Vec<Vec<u8>> {
    match target {
        "jwt" => jwt_seeds(),
        "csr" => csr_seeds(),
        "pg_template" => pg_template_seeds(),
        "cedar_context" => cedar_seeds(),
        "config" => config_seeds(),
        _ => Vec::new(),
    }
}

/// Words the mutator splices in: the syntax each parser cares about.
pub fn dictionary(target: &str) -> &'static [&'static str] {
    match target {
        "jwt" => &[".", "=", "==", "-", "_", "+", "/", "\"alg\":\"none\"", "\"exp\":", "1e309", "-9223372036854775808", "9223372036854775807", "18446744073709551616", "null", "{}", "[]", "\"iss\":", "\"kid\":\"\"", "\u{0}"],
        "csr" => &["-----BEGIN CERTIFICATE REQUEST-----\n", "-----END CERTIFICATE REQUEST-----\n", "-----BEGIN CERTIFICATE-----\n", "\n", "=", "\r\n", "MII", "A", "/"],
        "pg_template" => &["{{", "}}", "{{name}}", "{{password}}", "{{claim:repository}}", "{{claim_ident:repository}}", "{{expiry}}", "--", "/*", "*/", "'", "\"", "$$", "$x$", ";", "\n", "\\", "E'", "U&'", "\u{0}"],
        "cedar_context" => &["\"ttl\":\"", "100000y", "18446744073709551616s", "1e309", "-1", "\"now\":", "9223372036854775807", "\"source_ip\":\"", "::1", "\"scopes\":[", "\"action\":\"admin\"", "\"role\":\"", "\\u0000", "\"\"", "null"],
        "config" => &["[issuers.x]\n", "[connections.c]\n", "[connections.c.roles.r]\n", "max_ttl = \"", "100000y", "0s", "\"\n", "= true\n", "= 18446744073709551616\n", "= -1\n", "= 1e309\n", "[[", "]]", "'''", "\"\"\"", "\\u0000", "listen = \"", "0.0.0.0:0", "store = \""],
        _ => &[],
    }
}

/// One current-thread runtime for the async parsers.
fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| tokio::runtime::Builder::new_current_thread().enable_all().build().expect("fuzz runtime"))
}

/// `lessor-fuzz-<pid>` in the temp dir: the verifier reads its JWKS file
/// again on an unknown kid, so the file lives as long as the process (no
/// destructor runs for a static). Left behind at exit, it is removed by
/// the next process that finds its pid gone.
fn scratch_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let tmp = std::env::temp_dir();
        remove_dead_scratch_dirs(&tmp);
        let d = tmp.join(format!("lessor-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&d).expect("fuzz scratch dir");
        d
    })
}

/// Removes the `lessor-fuzz-<pid>` dirs in `tmp` whose process has ended
/// (where `/proc` tells; elsewhere none).
fn remove_dead_scratch_dirs(tmp: &Path) {
    if !Path::new("/proc/self").exists() {
        return;
    }
    let Ok(entries) = std::fs::read_dir(tmp) else { return };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.strip_prefix("lessor-fuzz-")) else { continue };
        if pid.parse::<u32>().is_ok() && !Path::new("/proc").join(pid).exists() {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

// ---------------------------------------------------------------- JWT

const FUZZ_ISS: &str = "https://fuzz-issuer.lessor.test";

struct JwtFixture {
    verifier: Verifier,
    key: jsonwebtoken::EncodingKey,
    kid: String,
}

fn jwt_fixture() -> &'static JwtFixture {
    static F: OnceLock<JwtFixture> = OnceLock::new();
    F.get_or_init(|| {
        let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("fuzz key");
        let raw = kp.public_key_raw().to_vec();
        let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        let kid = "fuzz-key".to_owned();
        let jwks = json!({"keys": [{"kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": kid,
                                    "x": b64(&raw[1..33]), "y": b64(&raw[33..65])}]});
        let jwks_file = scratch_dir().join("jwks.json");
        std::fs::write(&jwks_file, jwks.to_string()).expect("fuzz jwks");
        let text = format!(
            "listen = \"127.0.0.1:0\"\nstore = \"sqlite::memory:\"\ndata_dir = \"{dir}\"\npolicies = \"{dir}\"\n\
             [issuers.fuzz]\nissuer = \"{FUZZ_ISS}\"\njwks_file = \"{jwks}\"\naudiences = [\"lessor\"]\n\
             algorithms = [\"ES256\", \"RS256\"]\npreset = \"github-actions\"\nmax_token_age = \"1h\"\n\
             [issuers.fuzz.claims]\nnested = \"a.b.c\"\n",
            dir = scratch_dir().display(),
            jwks = jwks_file.display(),
        );
        let cfg = Config::from_toml(&text).expect("fuzz issuer config");
        let verifier = Verifier::new(&cfg.issuers, cfg.limits.max_jwt_bytes, reqwest::Client::new()).expect("fuzz verifier");
        let key = jsonwebtoken::EncodingKey::from_ec_pem(kp.serialize_pem().as_bytes()).expect("fuzz encoding key");
        JwtFixture { verifier, key, kid }
    })
}

fn sign_raw(header: &[u8], payload: &[u8]) -> String {
    let f = jwt_fixture();
    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    let input = format!("{}.{}", b64(header), b64(payload));
    let sig = jsonwebtoken::crypto::sign(input.as_bytes(), &f.key, jsonwebtoken::Algorithm::ES256).unwrap_or_default();
    format!("{input}.{sig}")
}

fn good_header() -> Vec<u8> {
    json!({"alg": "ES256", "typ": "JWT", "kid": jwt_fixture().kid}).to_string().into_bytes()
}

fn good_claims() -> Value {
    let now = OffsetDateTime::now_utc().unix_timestamp();
    json!({"iss": FUZZ_ISS, "aud": "lessor", "sub": "repo:acme/api:ref:refs/heads/main", "iat": now, "nbf": now,
           "exp": now + 300, "repository": "acme/api", "repository_owner": "acme", "ref": "refs/heads/main",
           "a": {"b": {"c": "deep"}}})
}

/// Workload JWT verification. The first byte picks the part the rest
/// replaces: 0 the whole compact token (unsigned garbage), 1 the payload, 2
/// the header (both then signed with the issuer's real key, so claim checks
/// and mapping see hostile JSON behind a valid signature).
pub fn jwt(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else { return };
    let f = jwt_fixture();
    let token = match mode % 3 {
        0 => String::from_utf8_lossy(rest).into_owned(),
        1 => sign_raw(&good_header(), rest),
        _ => sign_raw(rest, good_claims().to_string().as_bytes()),
    };
    let token = SecretString::from(token);
    let _ = runtime().block_on(f.verifier.verify_at(&token, OffsetDateTime::now_utc()));
}

fn jwt_seeds() -> Vec<Vec<u8>> {
    let claims = good_claims();
    let compact = sign_raw(&good_header(), claims.to_string().as_bytes());
    let with = |mode: u8, body: &[u8]| [&[mode][..], body].concat();
    vec![
        with(0, compact.as_bytes()),
        with(0, b"eyJhbGciOiJub25lIn0.eyJpc3MiOiJ4In0."),
        with(1, claims.to_string().as_bytes()),
        with(1, json!({"iss": FUZZ_ISS, "aud": ["lessor", "x"], "sub": "s", "exp": 1e300, "iat": -1}).to_string().as_bytes()),
        with(2, &good_header()),
        with(2, json!({"alg": "ES256", "kid": 5, "jku": "http://127.0.0.1:1/"}).to_string().as_bytes()),
    ]
}

// ---------------------------------------------------------------- CSR

struct CsrFixture {
    plugin: Arc<dyn lessor_plugin::Plugin>,
}

fn csr_fixture() -> &'static CsrFixture {
    static F: OnceLock<CsrFixture> = OnceLock::new();
    F.get_or_init(|| {
        let ctx = lessor_plugin::PluginContext::for_tests("pki", "http://127.0.0.1:8200");
        let role = lessor_plugin::RoleSpec {
            name: "web".into(),
            scopes: vec![],
            max_ttl: std::time::Duration::from_secs(3600),
            config: json!({"allowed_names": ["{repository_owner}.svc.lessor.test", "spiffe://lessor.test/gh/{repository}"]}),
        };
        let plugin = runtime().block_on(lessor_pki::build(ctx, json!({}), vec![role])).expect("fuzz pki plugin");
        CsrFixture { plugin }
    })
}

/// The pki plugin's CSR handling (PEM, DER, signature, key type, SANs),
/// through `issue` with `params.csr`.
pub fn csr(data: &[u8]) {
    let f = csr_fixture();
    let mut params = serde_json::Map::new();
    params.insert("csr".into(), Value::String(String::from_utf8_lossy(data).into_owned()));
    let req = lessor_plugin::IssueRequest {
        lease_id: lessor_plugin::LeaseId::new("lse_fuzz"),
        role: "web".into(),
        workload: lessor_plugin::Workload {
            issuer: FUZZ_ISS.into(),
            subject: "repo:acme/api:ref:refs/heads/main".into(),
            attributes: [("repository".to_owned(), "acme/api".to_owned()), ("repository_owner".to_owned(), "acme".to_owned())].into(),
        },
        scopes: vec![],
        expires_at: OffsetDateTime::now_utc() + time::Duration::minutes(5),
        params,
    };
    let _ = runtime().block_on(f.plugin.issue(req));
}

fn csr_seeds() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for names in [vec!["acme.svc.lessor.test".to_owned()], vec!["spiffe://lessor.test/gh/acme/api".to_owned(), "evil.example".to_owned()]] {
        let Ok(key) = rcgen::KeyPair::generate() else { continue };
        let Ok(params) = rcgen::CertificateParams::new(names) else { continue };
        if let Ok(pem) = params.serialize_request(&key).and_then(|r| r.pem()) {
            out.push(pem.into_bytes());
        }
    }
    out.push(b"-----BEGIN CERTIFICATE REQUEST-----\nMIIB\n-----END CERTIFICATE REQUEST-----\n".to_vec());
    out
}

// ---------------------------------------------------------------- PostgreSQL templates

/// PostgreSQL statement templates: the bytes before the first NUL are the
/// template, the rest the value of every claim it names. Parsed as config
/// load does, rendered as issue does.
pub fn pg_template(data: &[u8]) {
    use lessor_postgres::sql::{top_level_semicolons, Template, Vars};
    let text = String::from_utf8_lossy(data);
    let (source, claim) = text.split_once('\0').unwrap_or((text.as_ref(), "acme/api"));
    let Ok(t) = Template::parse(source) else { return };
    let attributes: BTreeMap<String, String> =
        t.placeholders().filter_map(|p| p.claim()).map(|c| (c.to_owned(), claim.to_owned())).collect();
    let workload = lessor_plugin::Workload { issuer: FUZZ_ISS.into(), subject: "s".into(), attributes };
    let vars = Vars {
        name: "lessor_web_0123456789abcdef",
        password: Some("SCRAM-SHA-256$4096:c2FsdA==$c3RvcmVk:c2VydmVy"),
        expiry: "2030-01-01T00:00:00Z",
        database: "app",
        admin: "lessor_admin",
        workload: Some(&workload),
    };
    if let Ok(sql) = t.render(&vars) {
        let _ = top_level_semicolons(&sql);
    }
}

fn pg_template_seeds() -> Vec<Vec<u8>> {
    [
        "CREATE ROLE {{name}} LOGIN PASSWORD {{password}} VALID UNTIL {{expiry}}",
        "GRANT CONNECT ON DATABASE {{database}} TO {{name}}",
        "COMMENT ON ROLE {{name}} IS {{claim:repository}}\0acme/api",
        "GRANT {{claim_ident:team}} TO {{name}}\0readers",
        "SELECT 1 -- {{claim:workflow}}\0ci\nWITH ADMIN OPTION --",
        "SELECT '{{claim_ident:x}}' /* {{claim:y}} */\0a*/b",
        "SELECT $$ {{name}} $$, E'\\' {{admin}}'",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect()
}

// ---------------------------------------------------------------- Cedar context

struct CedarFixture {
    policies: Policies,
    roles: BTreeMap<String, RoleInfo>,
}

fn cedar_fixture() -> &'static CedarFixture {
    static F: OnceLock<CedarFixture> = OnceLock::new();
    F.get_or_init(|| {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
        let roles: BTreeMap<String, RoleInfo> = [
            ("pki/web", "pki", "staging", vec![]),
            ("pki/prod-web", "pki", "production", vec![]),
            ("token/orders", "token", "staging", vec!["orders.read", "orders.write", "invoices.send"]),
        ]
        .into_iter()
        .map(|(name, plugin, env, scopes)| {
            let info = RoleInfo {
                name: name.into(),
                connection: name.split('/').next().unwrap_or(name).into(),
                plugin: plugin.into(),
                environment: env.into(),
                scopes: scopes.into_iter().map(str::to_owned).collect(),
                max_ttl_seconds: 3600,
            };
            (name.to_owned(), info)
        })
        .collect();
        let list: Vec<RoleInfo> = roles.values().cloned().collect();
        let policies = Policies::load(&dir, &list).expect("shipped policies load");
        CedarFixture { policies, roles }
    })
}

/// Building the Cedar request (principal attributes and tags, context:
/// TTL, scopes, time, source address) from a policy test case, then
/// deciding. JSON input is a `POST /v1/policy/explain` body; anything else
/// is read as lines: role, action, issuer, subject, ttl, source_ip, now,
/// then `claim=value` lines.
pub fn cedar_context(data: &[u8]) {
    let f = cedar_fixture();
    let case = match serde_json::from_slice::<Case>(data) {
        Ok(c) => c,
        Err(_) => {
            let text = String::from_utf8_lossy(data);
            let mut lines = text.split('\n');
            let mut next = || lines.next().map(str::to_owned);
            let role = next();
            let action = next().unwrap_or_else(|| "issue".into());
            let mut principal = BTreeMap::new();
            principal.insert("issuer".to_owned(), next().unwrap_or_default());
            principal.insert("subject".to_owned(), next().unwrap_or_default());
            let ttl = next();
            let source_ip = next().and_then(|s| s.parse::<IpAddr>().ok());
            let now = next().and_then(|s| s.parse::<i64>().ok());
            for l in lines {
                if let Some((k, v)) = l.split_once('=') {
                    principal.insert(k.to_owned(), v.to_owned());
                }
            }
            let value = json!({"role": role, "action": action, "principal": principal, "ttl": ttl,
                               "source_ip": source_ip, "now": now, "scopes": ["orders.read"]});
            match serde_json::from_value::<Case>(value) {
                Ok(c) => c,
                Err(_) => return,
            }
        }
    };
    let Ok(request) = case.to_request(&f.roles, &BTreeMap::new()) else { return };
    let _ = f.policies.decide_case(&request);
}

fn cedar_seeds() -> Vec<Vec<u8>> {
    vec![
        json!({"role": "pki/web", "principal": {"issuer": "https://token.actions.githubusercontent.com",
               "subject": "repo:acme/api:ref:refs/heads/main", "repository": "acme/api", "repository_owner": "acme",
               "ref": "refs/heads/main", "event_name": "push"}, "ttl": "10m"})
        .to_string()
        .into_bytes(),
        json!({"role": "token/orders", "action": "issue", "principal": {"issuer": "https://kubernetes.default.svc",
               "subject": "system:serviceaccount:shop:orders", "namespace": "shop", "service_account": "orders"},
               "scopes": ["orders.write", "nope"], "source_ip": "10.0.0.1", "now": 0})
        .to_string()
        .into_bytes(),
        json!({"action": "admin", "principal": {"issuer": "x", "subject": "y"}}).to_string().into_bytes(),
        b"pki/prod-web\nissue\nhttps://token.actions.githubusercontent.com\nrepo:acme/api:environment:production\n100000y\n::1\n9223372036854775807\nenvironment=production\nrepository_owner=acme".to_vec(),
    ]
}

// ---------------------------------------------------------------- config

/// The daemon's config: TOML parsing, environment overrides (none) and
/// validation, as `lessor check` does before anything starts.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(mut cfg) = Config::from_toml(text) else { return };
    if cfg.apply_env(|_| None).is_err() {
        return;
    }
    let _ = cfg.validate();
}

fn config_seeds() -> Vec<Vec<u8>> {
    let full = r#"
listen = "127.0.0.1:8200"
store = "sqlite:///var/lib/lessor/lessor.db"
data_dir = "/var/lib/lessor"
policies = "/etc/lessor/policies"

[leases]
tick = "1s"
retry_base = "2s"

[limits]
max_body_bytes = 65536

[issuers.github]
issuer = "https://token.actions.githubusercontent.com"
audiences = ["lessor"]
algorithms = ["RS256"]
preset = "github-actions"
max_token_age = "1h"
leeway = "30s"
[issuers.github.claims]
team = "team.name"

[scopes."orders.read"]
allows = "Read orders."
denies = "Cannot change orders."

[connections.pki]
plugin = "pki"
environment = "staging"
[connections.pki.roles.web]
max_ttl = "1h"
default_ttl = "5m"
[connections.pki.roles.web.config]
allowed_names = ["{{repository_owner}}.svc.lessor.test"]

[connections.token]
plugin = "token"
environment = "production"
owner = "team-a"
[connections.token.roles.orders]
max_ttl = "1h"
scopes = ["orders.read"]
default_scopes = ["orders.read"]
"#;
    vec![full.as_bytes().to_vec(), b"listen = \"0.0.0.0:8200\"\nstore = \"sqlite://x\"\n".to_vec(), Vec::new()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scratch_dirs_of_ended_processes_are_removed_and_live_ones_kept() {
        let tmp = tempfile::tempdir().unwrap();
        let dead = tmp.path().join("lessor-fuzz-4294967295");
        let live = tmp.path().join(format!("lessor-fuzz-{}", std::process::id()));
        let other = tmp.path().join("lessor-fuzz-notapid");
        for d in [&dead, &live, &other] {
            std::fs::create_dir_all(d).unwrap();
            std::fs::write(d.join("jwks.json"), "{}").unwrap();
        }
        remove_dead_scratch_dirs(tmp.path());
        assert!(!dead.exists());
        assert!(live.join("jwks.json").exists());
        assert!(other.exists());
    }
}
