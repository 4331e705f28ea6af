//! Policy test cases (`lessor policy test <dir>`): a policy author writes
//! claims + request -> expected decision (and, optionally, the deciding
//! policy ids) in TOML files, and runs them before merging.
//!
//! ```toml
//! [roles."pki/web"]            # resources the cases use (or come from --config)
//! plugin = "pki"
//! environment = "production"
//! scopes = []
//! max_ttl = "1h"
//!
//! [[case]]
//! name = "main branch may get a web certificate"
//! role = "pki/web"
//! action = "issue"             # default
//! principal = { issuer = "https://token.actions.githubusercontent.com", subject = "repo:acme/api:ref:refs/heads/main", repository = "acme/api", ref = "refs/heads/main" }
//! ttl = "10m"
//! scopes = []
//! expect = "allow"             # or "deny"
//! policies = ["gh-main-web"]   # optional: exactly these decided
//! ```

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::{Action, Policies, Principal, RequestContext, RoleInfo};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TestFile {
    #[serde(default)]
    roles: BTreeMap<String, TestRole>,
    #[serde(default, rename = "case")]
    cases: Vec<Case>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TestRole {
    plugin: String,
    #[serde(default = "default_env")]
    environment: String,
    #[serde(default)]
    scopes: Vec<String>,
    #[serde(with = "crate::duration::serde")]
    max_ttl: Duration,
}

fn default_env() -> String {
    "development".into()
}

/// One test case; also the body of `POST /v1/policy/explain`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    #[serde(default)]
    pub name: String,
    /// Role name, `connection/role`. Absent for `admin`.
    #[serde(default)]
    pub role: Option<String>,
    #[serde(default = "default_action")]
    pub action: String,
    /// `issuer`, `subject` and mapped claims.
    pub principal: BTreeMap<String, String>,
    #[serde(default)]
    pub ttl: Option<String>,
    #[serde(default)]
    pub scopes: Vec<String>,
    #[serde(default)]
    pub source_ip: Option<IpAddr>,
    /// Unix seconds; defaults to now.
    #[serde(default)]
    pub now: Option<i64>,
    /// The Vault `role` of a request through the Vault-compatible API
    /// (`context.vault_role`); absent for a native request.
    #[serde(default)]
    pub vault_role: Option<String>,
    #[serde(default)]
    pub expect: Option<String>,
    #[serde(default)]
    pub policies: Option<Vec<String>>,
}

fn default_action() -> String {
    "issue".into()
}

/// Why a case is not a valid request, naming the field at fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaseError {
    pub field: &'static str,
    pub message: String,
}

impl std::fmt::Display for CaseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

fn case_error(field: &'static str) -> impl Fn(String) -> CaseError {
    move |message| CaseError { field, message }
}

/// The outcome of one case.
#[derive(Debug)]
pub struct CaseResult {
    pub file: PathBuf,
    pub name: String,
    pub passed: bool,
    pub detail: String,
}

impl Case {
    /// Builds the policy request this case describes.
    /// Durations and times go through [`crate::duration`]: a `ttl` is at
    /// most 100 years (so `ttl_seconds` never wraps negative), `now` lies in
    /// years 1970..=9999.
    pub fn to_request(
        &self,
        roles: &BTreeMap<String, RoleInfo>,
    ) -> Result<(Principal, Action, Option<RoleInfo>, RequestContext), CaseError> {
        let action: Action = self.action.parse().map_err(case_error("action"))?;
        let mut attributes = self.principal.clone();
        let missing = |what: &str| CaseError { field: "principal", message: format!("principal needs `{what}`") };
        let issuer = attributes.remove("issuer").ok_or_else(|| missing("issuer"))?;
        let subject = attributes.remove("subject").ok_or_else(|| missing("subject"))?;
        let role = match (&self.role, action) {
            (_, Action::Admin) => None,
            (Some(r), _) => Some(roles.get(r).cloned().ok_or_else(|| CaseError {
                field: "role",
                message: format!("role `{r}` is not defined (define it under [roles.\"{r}\"] or pass --config)"),
            })?),
            (None, a) => return Err(CaseError { field: "role", message: format!("action `{}` needs a `role`", a.as_str()) }),
        };
        let ttl_seconds = match &self.ttl {
            Some(t) => {
                let d = crate::duration::parse(t).map_err(case_error("ttl"))?;
                if d < Duration::from_secs(1) {
                    return Err(CaseError { field: "ttl", message: "ttl must be at least 1s".into() });
                }
                crate::duration::secs_i64(d)
            }
            None => role.as_ref().map(|r| r.max_ttl_seconds).unwrap_or_default(),
        };
        let now = match self.now {
            Some(n) => crate::duration::unix_time(n).map_err(case_error("now"))?.unix_timestamp(),
            None => time::OffsetDateTime::now_utc().unix_timestamp(),
        };
        let ctx = RequestContext {
            ttl_seconds,
            scopes: self.scopes.clone(),
            now,
            source_ip: self.source_ip.unwrap_or(IpAddr::from([127, 0, 0, 1])),
            vault_role: self.vault_role.clone(),
        };
        Ok((Principal { issuer, subject, attributes }, action, role, ctx))
    }
}

/// Runs every `*.toml` test file under `dir` against `policies`.
/// `roles` come from the daemon config; test files may add their own.
pub fn run(dir: &Path, policies_dir: &Path, config_roles: &[RoleInfo]) -> Result<Vec<CaseResult>, String> {
    let mut files = Vec::new();
    collect_toml(dir, &mut files)?;
    files.sort();
    if files.is_empty() {
        return Err(format!("no *.toml policy test files under {}", dir.display()));
    }
    let mut parsed = Vec::new();
    let mut roles: BTreeMap<String, RoleInfo> = config_roles.iter().map(|r| (r.name.clone(), r.clone())).collect();
    for f in &files {
        let text = std::fs::read_to_string(f).map_err(|e| format!("{}: {e}", f.display()))?;
        let tf: TestFile = toml::from_str(&text).map_err(|e| format!("{}: {e}", f.display()))?;
        for (name, r) in &tf.roles {
            let connection = name.split('/').next().unwrap_or(name).to_owned();
            roles.insert(
                name.clone(),
                RoleInfo {
                    name: name.clone(),
                    connection,
                    plugin: r.plugin.clone(),
                    environment: r.environment.clone(),
                    scopes: r.scopes.clone(),
                    max_ttl_seconds: r.max_ttl.as_secs() as i64,
                },
            );
        }
        parsed.push((f.clone(), tf));
    }
    let role_list: Vec<RoleInfo> = roles.values().cloned().collect();
    let policies = Policies::load(policies_dir, &role_list).map_err(|e| e.to_string())?;
    let mut results = Vec::new();
    for (file, tf) in parsed {
        for (i, case) in tf.cases.iter().enumerate() {
            let name = if case.name.is_empty() { format!("case {}", i + 1) } else { case.name.clone() };
            let (passed, detail) = match run_case(&policies, &roles, case) {
                Ok(()) => (true, String::new()),
                Err(d) => (false, d),
            };
            results.push(CaseResult { file: file.clone(), name, passed, detail });
        }
    }
    Ok(results)
}

fn run_case(policies: &Policies, roles: &BTreeMap<String, RoleInfo>, case: &Case) -> Result<(), String> {
    let (principal, action, role, ctx) = case.to_request(roles).map_err(|e| e.to_string())?;
    let d = policies.decide(&principal, action, role.as_ref(), &ctx).map_err(|e| e.to_string())?;
    let want_allow = match case.expect.as_deref() {
        Some("allow") => true,
        Some("deny") => false,
        Some(other) => return Err(format!("expect must be `allow` or `deny`, not `{other}`")),
        None => return Err("case has no `expect`".into()),
    };
    if d.allowed != want_allow {
        return Err(format!(
            "expected {}, got {}: {}",
            if want_allow { "allow" } else { "deny" },
            if d.allowed { "allow" } else { "deny" },
            d.message
        ));
    }
    if let Some(want) = &case.policies {
        let mut want = want.clone();
        want.sort();
        let got = d.policy_ids();
        if got != want {
            return Err(format!("expected deciding policies {want:?}, got {got:?}: {}", d.message));
        }
    }
    Ok(())
}

fn collect_toml(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), String> {
    if dir.is_file() {
        out.push(dir.to_owned());
        return Ok(());
    }
    let rd = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    for entry in rd {
        let p = entry.map_err(|e| format!("{}: {e}", dir.display()))?.path();
        if p.is_dir() {
            collect_toml(&p, out)?;
        } else if p.extension().and_then(|e| e.to_str()) == Some("toml") {
            out.push(p);
        }
    }
    Ok(())
}

#[cfg(test)]
mod unit {
    use super::*;

    const ROLE: &str = "[roles.\"pki/web\"]\nplugin = \"pki\"\nmax_ttl = \"1h\"\n";
    const PRINCIPAL: &str = "principal = { issuer = \"https://token.actions.githubusercontent.com\", subject = \"s\", repository_owner = \"acme\", ref = \"refs/heads/main\" }";

    fn run_file(text: &str) -> Result<Vec<CaseResult>, String> {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("t.toml"), text).unwrap();
        run(dir.path(), &Path::new(env!("CARGO_MANIFEST_DIR")).join("policies"), &[])
    }

    #[test]
    fn absurd_durations_and_times_in_test_files_are_refused_naming_the_field() {
        let e = run_file("[roles.\"pki/web\"]\nplugin = \"pki\"\nmax_ttl = \"100000y\"\n").unwrap_err();
        assert!(e.contains("max_ttl") && e.contains("100-year"), "{e}");
        for (field, value, why) in [
            ("ttl", "\"100000y\"", "100-year"),
            ("ttl", "\"9223372036854775808s\"", "100-year"),
            ("ttl", "\"0s\"", "at least 1s"),
            ("now", "-1", "between 1970 and 9999"),
            ("now", "9223372036854775807", "between 1970 and 9999"),
        ] {
            let text = format!("{ROLE}[[case]]\nrole = \"pki/web\"\n{PRINCIPAL}\n{field} = {value}\nexpect = \"allow\"\n");
            let r = run_file(&text).unwrap();
            assert!(!r[0].passed, "{field} = {value}");
            assert!(r[0].detail.starts_with(&format!("{field}: ")) && r[0].detail.contains(why), "{}", r[0].detail);
        }
        let text = format!("{ROLE}[[case]]\nrole = \"pki/web\"\n{PRINCIPAL}\nttl = \"5m\"\nexpect = \"allow\"\n");
        assert!(run_file(&text).unwrap()[0].passed);
    }
}
