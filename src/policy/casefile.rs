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
//!
//! [connections.pg]             # connections the `connection_*` cases use
//! plugin = "postgres"
//! environment = "production"
//! owner = "payments"
//!
//! [[case]]
//! name = "finance may approve"
//! action = "connection_approve"
//! connection = "pg"
//! person = { provider = "corp", subject = "bob", email = "bob@example.com", groups = ["finance"] }
//! expect = "allow"
//! ```
//!
//! ```toml
//! [[case]]                     # customer tokens: the resource is an account
//! name = "acme may not mix customer data and security settings"
//! action = "token_create"      # token_create, token_read, token_rotate, token_revoke
//! account = "acme"
//! environment = "production"
//! scopes = ["customers.read", "security.write"]
//! expires_in = "30d"           # default 30d for create and rotate, 0 otherwise
//! confirm = true               # context.confirmed (default false)
//! person = { provider = "customers", subject = "carol", groups = ["account:acme"] }
//! expect = "deny"
//! ```
//!
//! A case names its principal either as `principal` (a workload: issuer,
//! subject, mapped claims) or as `person` (a person: provider, issuer,
//! subject, email, name, groups).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::{Action, AnyPrincipal, ConnectionInfo, PersonInfo, Policies, Principal, RequestContext, RoleInfo, Target, TokenContext};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TestFile {
    #[serde(default)]
    roles: BTreeMap<String, TestRole>,
    #[serde(default)]
    connections: BTreeMap<String, TestConnection>,
    #[serde(default, rename = "case")]
    cases: Vec<Case>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TestConnection {
    plugin: String,
    #[serde(default = "default_env")]
    environment: String,
    #[serde(default)]
    owner: String,
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
    /// Role name, `connection/role`. Absent for `admin` and `connection_*`.
    #[serde(default)]
    pub role: Option<String>,
    /// Connection name, for the `connection_*` actions.
    #[serde(default)]
    pub connection: Option<String>,
    /// Account name, for the `token_*` actions (`Lessor::Account`).
    #[serde(default)]
    pub account: Option<String>,
    /// The token's environment (`context.environment`, `token_*` actions).
    #[serde(default)]
    pub environment: Option<String>,
    /// The token's lifetime (`context.expires_in_seconds`, `token_*` actions).
    #[serde(default)]
    pub expires_in: Option<String>,
    /// The request's `confirm` field (`context.confirmed`, `token_*` actions).
    #[serde(default)]
    pub confirm: bool,
    #[serde(default = "default_action")]
    pub action: String,
    /// A workload: `issuer`, `subject` and mapped claims.
    #[serde(default)]
    pub principal: Option<BTreeMap<String, String>>,
    /// A person (instead of `principal`).
    #[serde(default)]
    pub person: Option<CasePerson>,
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

/// A person as a case describes one (`Lessor::Person`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CasePerson {
    pub provider: String,
    #[serde(default)]
    pub issuer: String,
    pub subject: String,
    #[serde(default)]
    pub email: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub groups: Vec<String>,
}

/// What a case is decided on.
#[derive(Debug, Clone)]
pub enum CaseResource {
    Role(RoleInfo),
    System,
    Connection(ConnectionInfo),
    /// An account and the token request's context (`token_*` actions).
    Account { name: String, ctx: TokenContext },
}

impl CaseResource {
    /// The target of a role, system or connection action (`None` for an
    /// account: [`Policies::decide_case`] decides those).
    pub fn target(&self) -> Option<Target<'_>> {
        match self {
            CaseResource::Role(r) => Some(Target::Role(r)),
            CaseResource::System => Some(Target::System),
            CaseResource::Connection(c) => Some(Target::Connection(c)),
            CaseResource::Account { .. } => None,
        }
    }
}

/// The policy request a case describes.
#[derive(Debug, Clone)]
pub struct CaseRequest {
    pub principal: AnyPrincipal,
    pub action: Action,
    pub resource: CaseResource,
    pub ctx: RequestContext,
}

impl Policies {
    /// Decides a case's request.
    pub fn decide_case(&self, r: &CaseRequest) -> Result<super::Decision, super::PolicyError> {
        match (&r.resource, &r.principal) {
            (CaseResource::Account { name, ctx }, AnyPrincipal::Person(p)) => self.decide_token(p, r.action, name, ctx),
            (CaseResource::Account { .. }, AnyPrincipal::Workload(_)) => {
                Err(super::PolicyError::Request("customer-token actions are decided for people only".into()))
            }
            (res, who) => {
                let target = res.target().ok_or_else(|| super::PolicyError::Request("no target".into()))?;
                self.decide_on(who, r.action, target, &r.ctx)
            }
        }
    }
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
        connections: &BTreeMap<String, ConnectionInfo>,
    ) -> Result<CaseRequest, CaseError> {
        let action: Action = self.action.parse().map_err(case_error("action"))?;
        let principal = match (&self.principal, &self.person) {
            (Some(claims), None) => {
                let mut attributes = claims.clone();
                let missing = |what: &str| CaseError { field: "principal", message: format!("principal needs `{what}`") };
                let issuer = attributes.remove("issuer").ok_or_else(|| missing("issuer"))?;
                let subject = attributes.remove("subject").ok_or_else(|| missing("subject"))?;
                AnyPrincipal::Workload(Principal { issuer, subject, attributes })
            }
            (None, Some(p)) => {
                for (what, v) in [("provider", &p.provider), ("subject", &p.subject)] {
                    if v.is_empty() {
                        return Err(CaseError { field: "person", message: format!("person needs a non-empty `{what}`") });
                    }
                }
                AnyPrincipal::Person(PersonInfo {
                    provider: p.provider.clone(),
                    issuer: p.issuer.clone(),
                    subject: p.subject.clone(),
                    email: p.email.to_lowercase(),
                    name: p.name.clone(),
                    groups: p.groups.clone(),
                })
            }
            (Some(_), Some(_)) => {
                return Err(CaseError {
                    field: "person",
                    message: "give either `principal` (a workload) or `person`, not both".into(),
                })
            }
            (None, None) => {
                return Err(CaseError {
                    field: "principal",
                    message: "the case needs a `principal` (a workload: issuer, subject, claims) or a `person`".into(),
                })
            }
        };
        let token_action = Action::TOKEN.contains(&action);
        if matches!(principal, AnyPrincipal::Person(_)) && action != Action::Admin && !Action::CONNECTION.contains(&action) && !token_action {
            return Err(CaseError {
                field: "action",
                message: format!("people are decided for `admin`, `connection_*` and `token_*` actions, not `{}`", action.as_str()),
            });
        }
        if token_action && !matches!(principal, AnyPrincipal::Person(_)) {
            return Err(CaseError { field: "person", message: format!("`{}` is decided for people only: give a `person`", action.as_str()) });
        }
        let now = match self.now {
            Some(n) => crate::duration::unix_time(n).map_err(case_error("now"))?.unix_timestamp(),
            None => time::OffsetDateTime::now_utc().unix_timestamp(),
        };
        let source_ip = self.source_ip.unwrap_or(IpAddr::from([127, 0, 0, 1]));
        if !token_action {
            for (field, given) in [("account", self.account.is_some()), ("environment", self.environment.is_some()), ("expires_in", self.expires_in.is_some()), ("confirm", self.confirm)] {
                if given {
                    return Err(CaseError { field, message: format!("`{field}` is for `token_*` actions only") });
                }
            }
        }
        let resource = if token_action {
            let Some(name) = &self.account else {
                return Err(CaseError { field: "account", message: format!("action `{}` needs an `account`", action.as_str()) });
            };
            let expires_in_seconds = match (&self.expires_in, action) {
                (Some(t), _) => crate::duration::secs_i64(crate::duration::parse(t).map_err(case_error("expires_in"))?),
                (None, Action::TokenCreate | Action::TokenRotate) => 30 * 86_400,
                (None, _) => 0,
            };
            let ctx = TokenContext {
                scopes: self.scopes.clone(),
                expires_in_seconds,
                environment: self.environment.clone().unwrap_or_default(),
                confirmed: self.confirm,
                now,
                source_ip,
            };
            CaseResource::Account { name: name.clone(), ctx }
        } else if action == Action::Admin {
            CaseResource::System
        } else if Action::CONNECTION.contains(&action) {
            let Some(c) = &self.connection else {
                return Err(CaseError { field: "connection", message: format!("action `{}` needs a `connection`", action.as_str()) });
            };
            CaseResource::Connection(connections.get(c).cloned().ok_or_else(|| CaseError {
                field: "connection",
                message: format!("connection `{c}` is not defined (define it under [connections.\"{c}\"] or pass --config)"),
            })?)
        } else {
            match &self.role {
                Some(r) => CaseResource::Role(roles.get(r).cloned().ok_or_else(|| CaseError {
                    field: "role",
                    message: format!("role `{r}` is not defined (define it under [roles.\"{r}\"] or pass --config)"),
                })?),
                None => {
                    return Err(CaseError { field: "role", message: format!("action `{}` needs a `role`", action.as_str()) })
                }
            }
        };
        let role = match &resource {
            CaseResource::Role(r) => Some(r),
            _ => None,
        };
        let ttl_seconds = match &self.ttl {
            Some(t) => {
                let d = crate::duration::parse(t).map_err(case_error("ttl"))?;
                if d < Duration::from_secs(1) {
                    return Err(CaseError { field: "ttl", message: "ttl must be at least 1s".into() });
                }
                crate::duration::secs_i64(d)
            }
            None => role.map(|r| r.max_ttl_seconds).unwrap_or_default(),
        };
        let ctx = RequestContext {
            ttl_seconds,
            scopes: self.scopes.clone(),
            now,
            source_ip,
            vault_role: self.vault_role.clone(),
        };
        Ok(CaseRequest { principal, action, resource, ctx })
    }
}

/// Runs every `*.toml` test file under `dir` against `policies`.
/// `roles` come from the daemon config; test files may add their own.
pub fn run(
    dir: &Path,
    policies_dir: &Path,
    config_roles: &[RoleInfo],
    config_connections: &[ConnectionInfo],
) -> Result<Vec<CaseResult>, String> {
    let mut files = Vec::new();
    collect_toml(dir, &mut files)?;
    files.sort();
    if files.is_empty() {
        return Err(format!("no *.toml policy test files under {}", dir.display()));
    }
    let mut parsed = Vec::new();
    let mut roles: BTreeMap<String, RoleInfo> = config_roles.iter().map(|r| (r.name.clone(), r.clone())).collect();
    let mut connections: BTreeMap<String, ConnectionInfo> =
        config_connections.iter().map(|c| (c.name.clone(), c.clone())).collect();
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
        for (name, c) in &tf.connections {
            connections.insert(
                name.clone(),
                ConnectionInfo {
                    name: name.clone(),
                    plugin: c.plugin.clone(),
                    environment: c.environment.clone(),
                    owner: c.owner.clone(),
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
            let (passed, detail) = match run_case(&policies, &roles, &connections, case) {
                Ok(()) => (true, String::new()),
                Err(d) => (false, d),
            };
            results.push(CaseResult { file: file.clone(), name, passed, detail });
        }
    }
    Ok(results)
}

fn run_case(
    policies: &Policies,
    roles: &BTreeMap<String, RoleInfo>,
    connections: &BTreeMap<String, ConnectionInfo>,
    case: &Case,
) -> Result<(), String> {
    let request = case.to_request(roles, connections).map_err(|e| e.to_string())?;
    let d = policies.decide_case(&request).map_err(|e| e.to_string())?;
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
        run(dir.path(), &Path::new(env!("CARGO_MANIFEST_DIR")).join("policies"), &[], &[])
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

    /// A case's principal is a workload or a person, never both or
    /// neither; people only for `admin` and `connection_*`; a connection
    /// action names a defined connection.
    #[test]
    fn person_cases_are_checked_naming_the_field() {
        const CONN: &str = "[connections.pg]\nplugin = \"postgres\"\nenvironment = \"production\"\n";
        const BOB: &str = "person = { provider = \"dev\", subject = \"bob\", email = \"Bob@Example.com\", groups = [\"finance\"] }";
        for (case, field, why) in [
            (format!("action = \"connection_approve\"\nconnection = \"pg\"\n{BOB}\n{PRINCIPAL}\n"), "person", "not both"),
            ("action = \"connection_approve\"\nconnection = \"pg\"\n".to_string(), "principal", "needs a `principal`"),
            (format!("role = \"pki/web\"\n{BOB}\n"), "action", "not `issue`"),
            (format!("action = \"connection_approve\"\n{BOB}\n"), "connection", "needs a `connection`"),
            (format!("action = \"connection_approve\"\nconnection = \"nope\"\n{BOB}\n"), "connection", "`nope` is not defined"),
            ("action = \"connection_approve\"\nconnection = \"pg\"\nperson = { provider = \"\", subject = \"s\" }\n".to_string(), "person", "`provider`"),
        ] {
            let r = run_file(&format!("{ROLE}{CONN}[[case]]\n{case}expect = \"allow\"\n")).unwrap();
            assert!(!r[0].passed, "{case}");
            assert!(r[0].detail.starts_with(&format!("{field}: ")) && r[0].detail.contains(why), "{case}: {}", r[0].detail);
        }
        // bob (finance, dev) may approve under the shipped people.cedar;
        // the email is compared lower-cased.
        let ok = format!("{CONN}[[case]]\naction = \"connection_approve\"\nconnection = \"pg\"\n{BOB}\nexpect = \"allow\"\npolicies = [\"finance-approves-root-credentials\"]\n");
        let r = run_file(&ok).unwrap();
        assert!(r[0].passed, "{}", r[0].detail);
    }
}
