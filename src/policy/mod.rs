//! Policy-as-code: Cedar policies in `policies/`, validated against the
//! schema there, evaluated with deny-overrides, explained with the authors'
//! own `@id` and `@reason` annotations.
//!
//! Decisions stay fast as policies grow: at load, every policy is sorted into
//! the (action, role) slices its scope can apply to, and a decision evaluates
//! only its slice. A policy whose resource scope is unconstrained (or an
//! entity type) lands in every role's slice; the slices are exact, never a
//! guess, because roles have no parents; a policy on an action group lands
//! in the slices of every action in the group (transitively), and
//! decisions carry the schema's action entities so Cedar sees the groups.
//! Within a slice, policies whose
//! `when` requires `principal.<attr> == "<literal>"` (for the attribute most
//! of the slice's policies test that way, e.g. `repository`) are indexed by
//! that literal: a principal is evaluated against the policies for its own
//! value plus the unindexed rest. A skipped policy could only have been false
//! or an evaluation error for that principal, so the decision is the same.
//!
//! Principals are workloads (`Lessor::Workload`, from a verified JWT) and
//! people (`Lessor::Person`, signed in through `[people]`): [`Who`]. People
//! are decided for `admin` and the `connection_*` actions only; the lookup
//! by attribute value takes a person's own string attributes (a person has
//! none of a workload's claims, so a policy indexed by `repository` is
//! skipped for them: it could only have failed to evaluate).
//!
//! Must not import: http, store, plugins, lease, config, identity, principal.
//!
//! Why one file: loading, validation, the slice index and decisions share the
//! private representation of the loaded policy set; split apart, that
//! representation would have to become an internal API (the policy test runner
//! is apart, in `tests.rs`).

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use cedar_policy::{
    ActionConstraint, Authorizer, Context, Decision as CedarDecision, Entities, Entity, EntityId, EntityTypeName,
    EntityUid, Policy, PolicyId, PolicySet, Request, ResourceConstraint, RestrictedExpression, Schema,
    ValidationMode, Validator,
};
use miette::Diagnostic;
use serde::Serialize;

pub mod casefile;

/// Built-in policy: a workload may read and revoke leases it owns (the
/// ownership check itself is in code). A `forbid` still overrides it.
const OWNER_POLICY: &str = r#"@id("lessor:owner-may-read-and-revoke")
@reason("a workload may read and revoke its own leases")
permit(principal, action in [Lessor::Action::"read", Lessor::Action::"revoke"], resource);"#;

/// The actions of the schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Issue,
    Renew,
    Revoke,
    Read,
    Admin,
    /// Root credentials of a connection (resource `Lessor::Connection`):
    /// see versions and their status.
    ConnectionRead,
    /// Store a new candidate secret.
    ConnectionSetSecret,
    /// Run the plugin's check of a candidate.
    ConnectionVerify,
    /// Approve a candidate someone else set (production).
    ConnectionApprove,
    /// Switch issuance to a version (activate, rollback).
    ConnectionActivate,
    /// Have lessor make, verify and activate a new one at the vendor.
    ConnectionRotate,
    /// Customer API tokens of an account (resource `Lessor::Account`,
    /// context `TokenContext`; principals are people only): create one
    /// (and preview it), read the account's tokens, rotate, revoke.
    TokenCreate,
    TokenRead,
    TokenRotate,
    TokenRevoke,
}

impl Action {
    /// The actions on a connection's root credentials (not in `ALL`, which
    /// are the actions on roles and the system that slices are built for).
    pub const CONNECTION: [Action; 6] = [
        Action::ConnectionRead,
        Action::ConnectionSetSecret,
        Action::ConnectionVerify,
        Action::ConnectionApprove,
        Action::ConnectionActivate,
        Action::ConnectionRotate,
    ];

    /// The actions on an account's customer tokens.
    pub const TOKEN: [Action; 4] = [Action::TokenCreate, Action::TokenRead, Action::TokenRotate, Action::TokenRevoke];

    pub const ALL: [Action; 5] = [Action::Issue, Action::Renew, Action::Revoke, Action::Read, Action::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Action::Issue => "issue",
            Action::Renew => "renew",
            Action::Revoke => "revoke",
            Action::Read => "read",
            Action::Admin => "admin",
            Action::ConnectionRead => "connection_read",
            Action::ConnectionSetSecret => "connection_set_secret",
            Action::ConnectionVerify => "connection_verify",
            Action::ConnectionApprove => "connection_approve",
            Action::ConnectionActivate => "connection_activate",
            Action::ConnectionRotate => "connection_rotate",
            Action::TokenCreate => "token_create",
            Action::TokenRead => "token_read",
            Action::TokenRotate => "token_rotate",
            Action::TokenRevoke => "token_revoke",
        }
    }

    fn uid(self) -> Result<EntityUid, PolicyError> {
        entity_uid("Lessor::Action", self.as_str())
    }
}

impl FromStr for Action {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let all = || Action::ALL.into_iter().chain(Action::CONNECTION).chain(Action::TOKEN);
        all().find(|a| a.as_str() == s).ok_or_else(|| {
            let known: Vec<&str> = all().map(Action::as_str).collect();
            format!("unknown action `{s}` (known: {})", known.join(", "))
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("policies: cannot read {path}: {message}")]
    Io { path: String, message: String },
    #[error("policies: no schema: put exactly one *.cedarschema file in {0}")]
    NoSchema(String),
    #[error("policies: several schema files: {0}")]
    SeveralSchemas(String),
    #[error("{file}:{line}: schema error: {message}")]
    Schema { file: String, line: usize, message: String },
    #[error("{file}:{line}: parse error: {message}")]
    Parse { file: String, line: usize, message: String },
    #[error("{file}:{line}: policy `{id}` does not validate against the schema: {message}")]
    Invalid { file: String, line: usize, id: String, message: String },
    #[error("{file}: policy id `{id}` is also used in {other}; @id must be unique")]
    DuplicateId { file: String, id: String, other: String },
    #[error("policy request: {0}")]
    Request(String),
}

/// A role as policy sees it (the resource).
#[derive(Debug, Clone, Serialize)]
pub struct RoleInfo {
    /// `connection/role`.
    pub name: String,
    pub connection: String,
    pub plugin: String,
    pub environment: String,
    pub scopes: Vec<String>,
    pub max_ttl_seconds: i64,
}

/// A connection as policy sees it (the resource of `connection_*` actions).
#[derive(Debug, Clone, Serialize)]
pub struct ConnectionInfo {
    pub name: String,
    pub plugin: String,
    pub environment: String,
    /// Person or team; empty when not configured.
    pub owner: String,
}

/// What an action is decided on.
#[derive(Debug, Clone, Copy)]
pub enum Target<'a> {
    Role(&'a RoleInfo),
    System,
    Connection(&'a ConnectionInfo),
}

/// The context of a customer-token decision (`Lessor::TokenContext`; the
/// resource is the account, `Lessor::Account`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TokenContext {
    /// The token's scopes (asked for, or the token's own).
    pub scopes: Vec<String>,
    /// The token's lifetime (0 for read and revoke).
    pub expires_in_seconds: i64,
    /// The token's environment ("" when listing an account).
    pub environment: String,
    /// The request's `confirm` field: policies forbid broad combinations
    /// `unless { context.confirmed }`.
    pub confirmed: bool,
    /// Unix seconds.
    pub now: i64,
    pub source_ip: IpAddr,
}

/// A workload as policy sees it (`Lessor::Workload`).
#[derive(Debug, Clone, Serialize)]
pub struct Principal {
    pub issuer: String,
    pub subject: String,
    /// Mapped claims.
    pub attributes: BTreeMap<String, String>,
}

/// A person as policy sees it (`Lessor::Person`): the signed-in person's
/// attributes (`crate::principal::Person`, converted by the caller: policy
/// does not know how people sign in).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct PersonInfo {
    /// The provider's name in `[people.providers.<name>]`.
    pub provider: String,
    pub issuer: String,
    /// The provider's stable subject.
    pub subject: String,
    /// Lower-cased; empty when the provider gave none.
    pub email: String,
    pub name: String,
    pub groups: Vec<String>,
}

impl PersonInfo {
    /// `provider#subject`: the entity id, and how decisions name the person.
    pub fn id(&self) -> String {
        format!("{}#{}", self.provider, self.subject)
    }
}

/// Who a decision is for: a workload or a person.
#[derive(Debug, Clone, Copy)]
pub enum Who<'a> {
    Workload(&'a Principal),
    Person(&'a PersonInfo),
}

impl<'a> From<&'a Principal> for Who<'a> {
    fn from(p: &'a Principal) -> Who<'a> {
        Who::Workload(p)
    }
}

impl<'a> From<&'a PersonInfo> for Who<'a> {
    fn from(p: &'a PersonInfo) -> Who<'a> {
        Who::Person(p)
    }
}

impl<'a> From<&'a AnyPrincipal> for Who<'a> {
    fn from(p: &'a AnyPrincipal) -> Who<'a> {
        match p {
            AnyPrincipal::Workload(w) => Who::Workload(w),
            AnyPrincipal::Person(p) => Who::Person(p),
        }
    }
}

impl Who<'_> {
    /// The value of a string attribute used for the slice index (`None`
    /// when the principal has no such string attribute).
    fn string_attr(&self, attr: &str) -> Option<&String> {
        match self {
            Who::Workload(p) => match attr {
                "issuer" => Some(&p.issuer),
                "subject" => Some(&p.subject),
                a => p.attributes.get(a),
            },
            Who::Person(p) => match attr {
                "issuer" => Some(&p.issuer),
                "subject" => Some(&p.subject),
                "provider" => Some(&p.provider),
                "email" => Some(&p.email),
                "name" => Some(&p.name),
                _ => None,
            },
        }
    }

    /// The attributes a decision considered, for its explanation.
    fn considered(&self) -> BTreeMap<String, String> {
        match self {
            Who::Workload(p) => p.attributes.clone(),
            Who::Person(p) => BTreeMap::from([
                ("provider".to_string(), p.provider.clone()),
                ("subject".to_string(), p.subject.clone()),
                ("email".to_string(), p.email.clone()),
                ("groups".to_string(), p.groups.join(", ")),
            ]),
        }
    }
}

/// An owned principal (a policy test case's, an explain request's).
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum AnyPrincipal {
    Workload(Principal),
    Person(PersonInfo),
}

/// The request context.
#[derive(Debug, Clone, Serialize)]
pub struct RequestContext {
    pub ttl_seconds: i64,
    pub scopes: Vec<String>,
    /// Unix seconds.
    pub now: i64,
    pub source_ip: IpAddr,
    /// The Vault `role` a Vault API client logged in with (None for native
    /// requests): `context.vault_role`.
    pub vault_role: Option<String>,
}

/// A policy that took part in a decision.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct DecidingPolicy {
    pub id: String,
    pub effect: &'static str,
    pub reason: Option<String>,
    /// `file:line` where the policy is written.
    pub location: String,
}

/// A decision with its explanation.
#[derive(Debug, Clone, Serialize)]
pub struct Decision {
    pub allowed: bool,
    /// Policies that decided: permits on allow, forbids (if any) on deny.
    pub policies: Vec<DecidingPolicy>,
    /// Policies that could have permitted but did not (on a deny with no
    /// forbid): what a workload would need to satisfy.
    pub candidates: Vec<DecidingPolicy>,
    /// Policies that failed to evaluate (treated as not matching).
    pub errors: Vec<String>,
    /// One-paragraph explanation for humans.
    pub message: String,
    /// The principal attributes that were considered.
    pub considered: BTreeMap<String, String>,
}

impl Decision {
    pub fn policy_ids(&self) -> Vec<String> {
        self.policies.iter().map(|p| p.id.clone()).collect()
    }
}

struct Meta {
    id: String,
    effect: &'static str,
    reason: Option<String>,
    location: String,
}

/// The policies that can apply to one (action, role), indexed by the value
/// of one principal attribute.
struct Slice {
    /// Every policy of the slice (for explanations).
    all: PolicySet,
    /// The indexed attribute, if any.
    attr: Option<String>,
    /// Policies that do not test `attr` for equality.
    rest: PolicySet,
    /// `rest` plus the policies that require `attr == value`.
    by_value: HashMap<String, PolicySet>,
}

impl Slice {
    fn for_principal(&self, p: Who<'_>) -> &PolicySet {
        let Some(attr) = &self.attr else { return &self.all };
        p.string_attr(attr).and_then(|v| self.by_value.get(v)).unwrap_or(&self.rest)
    }
}

/// `principal.<attr> == "<literal>"` conjuncts of a policy's `when` clauses,
/// read from its JSON form (the EST).
fn equality_conjuncts(p: &Policy) -> Vec<(String, String)> {
    fn principal_attr(e: &serde_json::Value) -> Option<&str> {
        let dot = e.get(".")?;
        (dot.get("left")?.get("Var")?.as_str()? == "principal").then_some(())?;
        dot.get("attr")?.as_str()
    }
    fn walk(e: &serde_json::Value, out: &mut Vec<(String, String)>) {
        if let Some(and) = e.get("&&") {
            for side in ["left", "right"] {
                if let Some(x) = and.get(side) {
                    walk(x, out);
                }
            }
        } else if let Some(eq) = e.get("==") {
            let (Some(l), Some(r)) = (eq.get("left"), eq.get("right")) else { return };
            for (a, b) in [(l, r), (r, l)] {
                if let (Some(attr), Some(lit)) = (principal_attr(a), b.get("Value").and_then(|v| v.as_str())) {
                    out.push((attr.to_owned(), lit.to_owned()));
                }
            }
        }
    }
    let mut out = Vec::new();
    let Ok(json) = p.to_json() else { return out };
    for c in json.get("conditions").and_then(|c| c.as_array()).into_iter().flatten() {
        if c.get("kind").and_then(|k| k.as_str()) == Some("when") {
            if let Some(body) = c.get("body") {
                walk(body, &mut out);
            }
        }
    }
    out
}

/// Whether a `when` clause of `p` requires, as a top-level conjunct,
/// `principal.<attr> == "<literal>"` or `["<literal>", ...].contains(principal.<attr>)`
/// (`attr` is `issuer`, or `provider` for people).
fn pins_issuer(p: &Policy, attr: &str) -> bool {
    let is_issuer = |e: &serde_json::Value| -> bool {
        e.get(".").is_some_and(|d| {
            d.get("left").and_then(|l| l.get("Var")).and_then(|v| v.as_str()) == Some("principal")
                && d.get("attr").and_then(|a| a.as_str()) == Some(attr)
        })
    };
    fn literal_set(e: &serde_json::Value) -> bool {
        e.get("Set").and_then(|s| s.as_array()).is_some_and(|items| {
            !items.is_empty() && items.iter().all(|i| i.get("Value").is_some_and(|v| v.is_string()))
        })
    }
    fn walk(e: &serde_json::Value, is_issuer: &dyn Fn(&serde_json::Value) -> bool) -> bool {
        if let Some(and) = e.get("&&") {
            return ["left", "right"].iter().any(|side| and.get(*side).is_some_and(|x| walk(x, is_issuer)));
        }
        if let Some(eq) = e.get("==") {
            let (Some(l), Some(r)) = (eq.get("left"), eq.get("right")) else { return false };
            return (is_issuer(l) && r.get("Value").is_some_and(|v| v.is_string()))
                || (is_issuer(r) && l.get("Value").is_some_and(|v| v.is_string()));
        }
        if let Some(c) = e.get("contains") {
            return c.get("left").is_some_and(literal_set) && c.get("right").is_some_and(is_issuer);
        }
        false
    }
    let Ok(json) = p.to_json() else { return false };
    json.get("conditions").and_then(|c| c.as_array()).into_iter().flatten().any(|c| {
        c.get("kind").and_then(|k| k.as_str()) == Some("when") && c.get("body").is_some_and(|b| walk(b, &is_issuer))
    })
}

/// Whether `p` can only apply to one principal type (`Lessor::Person` or
/// `Lessor::Workload`): its scope says `principal is T` (or names an entity
/// of type T), or a `when` clause requires `principal is T` as a top-level
/// conjunct. A policy that merely tests an attribute only T declares does
/// not count: entities carry whatever claims are mapped, so a workload
/// can have an `email` attribute at run time.
fn only_type(p: &Policy, ty: &str) -> bool {
    use cedar_policy::PrincipalConstraint as P;
    let by_scope = match p.principal_constraint() {
        P::Any => false,
        P::Is(t) | P::IsIn(t, _) => t.to_string() == ty,
        P::Eq(u) | P::In(u) => u.type_name().to_string() == ty,
    };
    if by_scope {
        return true;
    }
    fn walk(e: &serde_json::Value, ty: &str) -> bool {
        if let Some(and) = e.get("&&") {
            return ["left", "right"].iter().any(|side| and.get(*side).is_some_and(|x| walk(x, ty)));
        }
        e.get("is").is_some_and(|is| {
            is.get("left").and_then(|l| l.get("Var")).and_then(|v| v.as_str()) == Some("principal")
                && is.get("entity_type").and_then(|t| t.as_str()) == Some(ty)
        })
    }
    let Ok(json) = p.to_json() else { return false };
    json.get("conditions").and_then(|c| c.as_array()).into_iter().flatten().any(|c| {
        c.get("kind").and_then(|k| k.as_str()) == Some("when") && c.get("body").is_some_and(|b| walk(b, ty))
    })
}

fn build_slice(policies: Vec<Policy>) -> Result<Slice, PolicyError> {
    let set = |ps: &mut dyn Iterator<Item = Policy>| {
        PolicySet::from_policies(ps).map_err(|e| PolicyError::Request(e.to_string()))
    };
    let conj: Vec<Vec<(String, String)>> = policies.iter().map(equality_conjuncts).collect();
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for c in &conj {
        let mut attrs: Vec<&str> = c.iter().map(|(a, _)| a.as_str()).collect();
        attrs.dedup();
        for a in attrs {
            *counts.entry(a).or_default() += 1;
        }
    }
    let all = set(&mut policies.iter().cloned())?;
    let best = counts.iter().max_by_key(|(a, n)| (**n, std::cmp::Reverse(**a))).filter(|(_, n)| **n >= 2);
    let Some((attr, _)) = best else {
        return Ok(Slice { all, attr: None, rest: PolicySet::new(), by_value: HashMap::new() });
    };
    let attr = (*attr).to_owned();
    let mut rest = Vec::new();
    let mut indexed: HashMap<String, Vec<Policy>> = HashMap::new();
    for (p, c) in policies.iter().zip(&conj) {
        let values: Vec<&String> = c.iter().filter(|(a, _)| *a == attr).map(|(_, v)| v).collect();
        match values.as_slice() {
            [] => rest.push(p.clone()),
            [first, others @ ..] if others.iter().all(|o| o == first) => {
                indexed.entry((*first).clone()).or_default().push(p.clone())
            }
            // `a == x && a == y` with x != y never holds; evaluating it
            // everywhere is still correct.
            _ => rest.push(p.clone()),
        }
    }
    let mut by_value = HashMap::new();
    for (v, ps) in indexed {
        by_value.insert(v, set(&mut rest.iter().cloned().chain(ps))?);
    }
    Ok(Slice { all, attr: Some(attr), rest: set(&mut rest.into_iter())?, by_value })
}

/// One loaded, validated policy set with its slices.
pub struct Policies {
    meta: HashMap<PolicyId, Meta>,
    all: Vec<Policy>,
    slices: HashMap<(Action, String), Slice>,
    full: PolicySet,
    /// The schema's action entities with their (transitive) groups; empty
    /// when the schema declares no action groups (then `action in X` is
    /// `action == X` and no entity is needed).
    actions: Entities,
    /// The same, as entities to add to each decision's entity set.
    action_entities: Vec<Entity>,
    /// A fingerprint of the files it was loaded from.
    pub version: String,
    pub files: Vec<PathBuf>,
}

/// Entity type names, parsed once: `EntityTypeName::from_str` runs Cedar's
/// parser, which would otherwise dominate a decision.
struct TypeNames {
    workload: EntityTypeName,
    person: EntityTypeName,
    role: EntityTypeName,
    system: EntityTypeName,
    action: EntityTypeName,
}

fn type_names() -> Result<&'static TypeNames, PolicyError> {
    static NAMES: std::sync::OnceLock<Result<TypeNames, String>> = std::sync::OnceLock::new();
    let parse = |t: &str| EntityTypeName::from_str(t).map_err(|e| e.to_string());
    NAMES
        .get_or_init(|| {
            Ok(TypeNames {
                workload: parse("Lessor::Workload")?,
                person: parse("Lessor::Person")?,
                role: parse("Lessor::Role")?,
                system: parse("Lessor::System")?,
                action: parse("Lessor::Action")?,
            })
        })
        .as_ref()
        .map_err(|e| PolicyError::Request(e.clone()))
}

fn entity_uid(ty: &str, id: &str) -> Result<EntityUid, PolicyError> {
    let names = type_names()?;
    let t = match ty {
        "Lessor::Workload" => names.workload.clone(),
        "Lessor::Person" => names.person.clone(),
        "Lessor::Role" => names.role.clone(),
        "Lessor::System" => names.system.clone(),
        "Lessor::Action" => names.action.clone(),
        other => EntityTypeName::from_str(other).map_err(|e| PolicyError::Request(e.to_string()))?,
    };
    Ok(EntityUid::from_type_name_and_id(t, EntityId::new(id)))
}

/// `ip("<addr>")` for the context. Cedar parses the extension's name on
/// every `new_ip` (a parser run per request, about 2% of an issue's CPU),
/// so each thread keeps the expressions of the addresses it saw last; the
/// cache is emptied when it reaches `IP_CACHE` addresses.
fn ip_expr(ip: IpAddr) -> RestrictedExpression {
    const IP_CACHE: usize = 256;
    thread_local! {
        static SEEN: std::cell::RefCell<HashMap<IpAddr, RestrictedExpression>> = std::cell::RefCell::new(HashMap::new());
    }
    SEEN.with(|seen| {
        let mut seen = seen.borrow_mut();
        if let Some(e) = seen.get(&ip) {
            return e.clone();
        }
        if seen.len() >= IP_CACHE {
            seen.clear();
        }
        let e = RestrictedExpression::new_ip(ip.to_string());
        seen.insert(ip, e.clone());
        e
    })
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].bytes().filter(|b| *b == b'\n').count() + 1
}

/// Line of the `n`th policy statement (0-based) in `text`: Cedar numbers
/// policies without an id `policy0`, `policy1`, ... in file order.
fn nth_statement_line(text: &str, n: usize) -> usize {
    let mut seen = 0;
    for (i, l) in text.lines().enumerate() {
        let t = l.trim_start();
        if t.starts_with("permit") || t.starts_with("forbid") {
            if seen == n {
                return i + 1;
            }
            seen += 1;
        }
    }
    1
}

fn first_offset(d: &dyn Diagnostic) -> Option<usize> {
    d.labels().and_then(|mut l| l.next()).map(|s| s.offset())
}

fn diag_message(d: &(dyn Diagnostic + Send + Sync + 'static)) -> String {
    let mut m = d.to_string();
    if let Some(h) = d.help() {
        m.push_str(&format!(" (help: {h})"));
    }
    m
}

fn collect_files(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), PolicyError> {
    let rd = std::fs::read_dir(dir).map_err(|e| PolicyError::Io { path: dir.display().to_string(), message: e.to_string() })?;
    for entry in rd {
        let entry = entry.map_err(|e| PolicyError::Io { path: dir.display().to_string(), message: e.to_string() })?;
        let p = entry.path();
        if p.is_dir() {
            collect_files(&p, out)?;
        } else if matches!(p.extension().and_then(|e| e.to_str()), Some("cedar" | "cedarschema")) {
            out.push(p);
        }
    }
    Ok(())
}

fn read(p: &Path) -> Result<String, PolicyError> {
    std::fs::read_to_string(p).map_err(|e| PolicyError::Io { path: p.display().to_string(), message: e.to_string() })
}

impl Policies {
    /// Loads every `*.cedar` file under `dir` (recursively) and the one
    /// `*.cedarschema`, validates strictly, and builds slices for `roles`.
    pub fn load(dir: &Path, roles: &[RoleInfo]) -> Result<Policies, PolicyError> {
        let mut files = Vec::new();
        collect_files(dir, &mut files)?;
        files.sort();
        let mut sources = Vec::new();
        for f in &files {
            sources.push((f.display().to_string(), read(f)?));
        }
        let mut p = Policies::from_sources(&sources, roles)?;
        // The version names files relative to the policy directory, so
        // replicas with the same files in different places agree.
        let rel: Vec<(String, String)> = files
            .iter()
            .zip(&sources)
            .map(|(f, (_, t))| (f.strip_prefix(dir).unwrap_or(f).display().to_string(), t.clone()))
            .collect();
        p.version = version_of(&rel);
        Ok(p)
    }

    /// Like [`Policies::load`], from (file name, text) pairs.
    pub fn from_sources(sources: &[(String, String)], roles: &[RoleInfo]) -> Result<Policies, PolicyError> {
        let schemas: Vec<_> = sources.iter().filter(|(n, _)| n.ends_with(".cedarschema")).collect();
        let (schema_file, schema_text) = match schemas.as_slice() {
            [] => return Err(PolicyError::NoSchema(sources.first().map(|s| s.0.clone()).unwrap_or_default())),
            [one] => (one.0.clone(), one.1.clone()),
            many => {
                return Err(PolicyError::SeveralSchemas(
                    many.iter().map(|s| s.0.clone()).collect::<Vec<_>>().join(", "),
                ))
            }
        };
        let schema = match Schema::from_cedarschema_str(&schema_text) {
            Ok((s, _warnings)) => s,
            Err(e) => {
                let line = first_offset(&e).map(|o| line_of(&schema_text, o)).unwrap_or(1);
                return Err(PolicyError::Schema { file: schema_file, line, message: diag_message(&e) });
            }
        };
        // Action groups: a decision needs the action entities (with their
        // parents) for `action in <group>`, and slicing needs each action's
        // ancestors.
        let actions = if schema.action_groups().next().is_some() {
            schema.action_entities().map_err(|e| PolicyError::Schema { file: schema_file.clone(), line: 1, message: e.to_string() })?
        } else {
            Entities::empty()
        };
        let action_entities: Vec<Entity> = actions.iter().cloned().collect();
        let validator = Validator::new(schema.clone());
        let mut meta: HashMap<PolicyId, Meta> = HashMap::new();
        let mut all = Vec::new();
        let mut origin: HashMap<String, String> = HashMap::new();

        let builtin = [("<built-in>".to_string(), OWNER_POLICY.to_string())];
        for (file, text) in sources.iter().filter(|(n, _)| n.ends_with(".cedar")).chain(builtin.iter()) {
            let parsed = PolicySet::from_str(text).map_err(|e| {
                let line = first_offset(&e).map(|o| line_of(text, o)).unwrap_or(1);
                PolicyError::Parse { file: file.clone(), line, message: diag_message(&e) }
            })?;
            if parsed.templates().next().is_some() {
                return Err(PolicyError::Parse {
                    file: file.clone(),
                    line: 1,
                    message: "policy templates are not supported; write static policies".into(),
                });
            }
            // Validate per file so error offsets map to this file's lines.
            let result = validator.validate(&parsed, ValidationMode::Strict);
            if let Some(err) = result.validation_errors().next() {
                let line = first_offset(err).map(|o| line_of(text, o)).unwrap_or(1);
                let id = parsed
                    .policy(err.policy_id())
                    .and_then(|p| p.annotation("id"))
                    .map(str::to_owned)
                    .unwrap_or_else(|| err.policy_id().to_string());
                // Cedar names the policy by its positional id; we name it by @id.
                let message = diag_message(err).replace(&format!("for policy `{}`, ", err.policy_id()), "");
                return Err(PolicyError::Invalid { file: file.clone(), line, id, message });
            }
            for p in parsed.policies() {
                let Some(id) = p.annotation("id").map(str::to_owned) else {
                    let line = nth_statement_line(text, p.id().to_string().trim_start_matches("policy").parse().unwrap_or(0));
                    return Err(PolicyError::Parse {
                        file: file.clone(),
                        line,
                        message: "policy has no @id annotation; every policy needs @id(\"...\") so decisions can name it".into(),
                    });
                };
                let line = text.find(&format!("@id(\"{id}\")")).map(|o| line_of(text, o)).unwrap_or(1);
                if let Some(other) = origin.insert(id.clone(), format!("{file}:{line}")) {
                    return Err(PolicyError::DuplicateId { file: format!("{file}:{line}"), id, other });
                }
                let pid = PolicyId::new(&id);
                let effect = match p.effect() {
                    cedar_policy::Effect::Permit => "permit",
                    cedar_policy::Effect::Forbid => "forbid",
                };
                meta.insert(
                    pid.clone(),
                    Meta { id: id.clone(), effect, reason: p.annotation("reason").map(str::to_owned), location: format!("{file}:{line}") },
                );
                all.push(p.new_id(pid));
            }
        }
        let full = PolicySet::from_policies(all.iter().cloned()).map_err(|e| PolicyError::Request(e.to_string()))?;
        let mut p = Policies {
            meta,
            all,
            slices: HashMap::new(),
            full,
            actions,
            action_entities,
            version: version_of(sources),
            files: sources.iter().map(|(n, _)| PathBuf::from(n)).collect(),
        };
        p.build_slices(roles)?;
        Ok(p)
    }

    fn build_slices(&mut self, roles: &[RoleInfo]) -> Result<(), PolicyError> {
        for action in Action::ALL {
            let auid = action.uid()?;
            // The groups `action` is in, directly or through other groups.
            let groups: Vec<EntityUid> = self.actions.ancestors(&auid).map(|a| a.cloned().collect()).unwrap_or_default();
            let resources: Vec<(String, EntityUid)> = if action == Action::Admin {
                vec![("lessor".into(), entity_uid("Lessor::System", "lessor")?)]
            } else {
                roles.iter().map(|r| Ok((r.name.clone(), entity_uid("Lessor::Role", &r.name)?))).collect::<Result<_, PolicyError>>()?
            };
            for (name, ruid) in resources {
                let applies = |p: &Policy| {
                    let action_ok = match p.action_constraint() {
                        ActionConstraint::Any => true,
                        ActionConstraint::Eq(a) => a == auid,
                        ActionConstraint::In(v) => v.iter().any(|a| *a == auid || groups.contains(a)),
                    };
                    let resource_ok = match p.resource_constraint() {
                        ResourceConstraint::Any => true,
                        ResourceConstraint::Eq(u) | ResourceConstraint::In(u) => u == ruid,
                        ResourceConstraint::Is(t) => &t == ruid.type_name(),
                        ResourceConstraint::IsIn(t, u) => &t == ruid.type_name() && u == ruid,
                    };
                    action_ok && resource_ok
                };
                let slice = build_slice(self.all.iter().filter(|p| applies(p)).cloned().collect())?;
                self.slices.insert((action, name), slice);
            }
        }
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.all.len()
    }

    /// Whether `p`'s action scope takes `action` (directly or through a
    /// group).
    fn covers(&self, p: &Policy, action: Action) -> bool {
        let Ok(auid) = action.uid() else { return false };
        match p.action_constraint() {
            ActionConstraint::Any => true,
            ActionConstraint::Eq(a) => a == auid,
            ActionConstraint::In(v) => {
                let groups: Vec<EntityUid> = self.actions.ancestors(&auid).map(|a| a.cloned().collect()).unwrap_or_default();
                v.iter().any(|a| *a == auid || groups.contains(a))
            }
        }
    }

    /// Problems that do not stop the policies from loading (printed by
    /// `lessor check`, logged at start):
    /// - a permit that grants both `connection_set_secret` and
    ///   `connection_approve`, so that the same people (or workloads) could
    ///   set and approve a production root credential: lessor refuses
    ///   self-approval by provider#subject and by email, but one person can
    ///   hold accounts with two providers under two addresses;
    /// - a permit of `connection_approve` that workloads can match (not
    ///   restricted to `principal is Lessor::Person`): lessor refuses every
    ///   workload approval, so the policy says something lessor never does;
    /// - a permit of `token_create` or `token_rotate` that does not test
    ///   `context.expires_in_seconds`, so customer tokens may live up to
    ///   lessor's hard limit (730 days) rather than the presets;
    /// - a permit that does not pin `principal.issuer` (or, for a policy
    ///   only for people, `principal.provider`), so any configured issuer or
    ///   provider whose tokens carry the claims or groups it tests is admitted.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        let permits = self.all.iter().filter(|p| p.effect() == cedar_policy::Effect::Permit);
        for p in permits.filter(|p| !p.id().to_string().starts_with("lessor:")) {
            let people_only = only_type(p, "Lessor::Person");
            if people_only && !pins_issuer(p, "provider") && !pins_issuer(p, "issuer") {
                let m = self.deciding(p.id());
                out.push(format!(
                    "{}: policy `{}` does not pin principal.provider (`principal.provider == \"...\"` or \
                     `[...].contains(principal.provider)`): a person signed in through any configured provider whose \
                     groups and attributes match is admitted",
                    m.location, m.id
                ));
            } else if !people_only && !pins_issuer(p, "issuer") {
                let m = self.deciding(p.id());
                out.push(format!(
                    "{}: policy `{}` does not pin principal.issuer (`principal.issuer == \"...\"` or \
                     `[...].contains(principal.issuer)`): any configured issuer whose tokens carry the claims it tests is admitted",
                    m.location, m.id
                ));
            }
            if self.covers(p, Action::ConnectionSetSecret) && self.covers(p, Action::ConnectionApprove) {
                let m = self.deciding(p.id());
                out.push(format!(
                    "{}: policy `{}` permits both connection_set_secret and connection_approve: the same people (or \
                     workloads) could set and approve a production root credential; lessor refuses the same \
                     provider#subject and the same email, not one person's second account elsewhere: give approval \
                     to other people",
                    m.location, m.id
                ));
            }
            let grants_tokens = self.covers(p, Action::TokenCreate) || self.covers(p, Action::TokenRotate);
            if grants_tokens && !p.to_json().is_ok_and(|j| j.to_string().contains("expires_in_seconds")) {
                let m = self.deciding(p.id());
                out.push(format!(
                    "{}: policy `{}` permits token_create or token_rotate without bounding context.expires_in_seconds: \
                     customer tokens it admits may live up to lessor's 730-day limit, beyond the 180-day presets",
                    m.location, m.id
                ));
            }
            if self.covers(p, Action::ConnectionApprove) && !people_only {
                let m = self.deciding(p.id());
                out.push(format!(
                    "{}: policy `{}` permits connection_approve to workloads: lessor refuses every approval by a \
                     workload (approvals come only from people); restrict it with `principal is Lessor::Person`",
                    m.location, m.id
                ));
            }
        }
        out
    }

    pub fn is_empty(&self) -> bool {
        self.all.is_empty()
    }

    fn deciding(&self, id: &PolicyId) -> DecidingPolicy {
        match self.meta.get(id) {
            Some(m) => DecidingPolicy { id: m.id.clone(), effect: m.effect, reason: m.reason.clone(), location: m.location.clone() },
            None => DecidingPolicy { id: id.to_string(), effect: "permit", reason: None, location: String::new() },
        }
    }

    /// Decides `action` by `principal` (a workload or a person) on `role`
    /// (or on the system, for admin).
    pub fn decide<'p>(
        &self,
        principal: impl Into<Who<'p>>,
        action: Action,
        role: Option<&RoleInfo>,
        ctx: &RequestContext,
    ) -> Result<Decision, PolicyError> {
        self.decide_on(principal, action, role.map(Target::Role).unwrap_or(Target::System), ctx)
    }

    /// The principal's entity: a workload's claims are attributes and tags;
    /// a person's groups are a set.
    fn principal_entity(who: Who<'_>) -> Result<(EntityUid, Entity), PolicyError> {
        let s = RestrictedExpression::new_string;
        match who {
            Who::Workload(principal) => {
                let puid = entity_uid("Lessor::Workload", &format!("{}#{}", principal.issuer, principal.subject))?;
                let mut attrs: Vec<(String, RestrictedExpression)> = vec![
                    ("issuer".into(), s(principal.issuer.clone())),
                    ("subject".into(), s(principal.subject.clone())),
                ];
                let mut tags = Vec::new();
                for (k, v) in &principal.attributes {
                    if k != "issuer" && k != "subject" {
                        attrs.push((k.clone(), s(v.clone())));
                    }
                    tags.push((k.clone(), s(v.clone())));
                }
                let pent = Entity::new_with_tags(puid.clone(), attrs, [], tags).map_err(|e| PolicyError::Request(e.to_string()))?;
                Ok((puid, pent))
            }
            Who::Person(p) => {
                let puid = entity_uid("Lessor::Person", &p.id())?;
                let attrs: Vec<(String, RestrictedExpression)> = vec![
                    ("issuer".into(), s(p.issuer.clone())),
                    ("provider".into(), s(p.provider.clone())),
                    ("subject".into(), s(p.subject.clone())),
                    ("email".into(), s(p.email.clone())),
                    ("name".into(), s(p.name.clone())),
                    ("groups".into(), RestrictedExpression::new_set(p.groups.iter().cloned().map(s))),
                ];
                let pent = Entity::new(puid.clone(), attrs.into_iter().collect(), Default::default())
                    .map_err(|e| PolicyError::Request(e.to_string()))?;
                Ok((puid, pent))
            }
        }
    }

    /// Decides `action` by `principal` on `target` (a role, the system, a
    /// connection).
    pub fn decide_on<'p>(
        &self,
        principal: impl Into<Who<'p>>,
        action: Action,
        target: Target<'_>,
        ctx: &RequestContext,
    ) -> Result<Decision, PolicyError> {
        let who: Who<'p> = principal.into();
        let (puid, pent) = Self::principal_entity(who)?;
        let s = RestrictedExpression::new_string;
        let (ruid, rent, slice_key) = match target {
            Target::Role(r) => {
                let ruid = entity_uid("Lessor::Role", &r.name)?;
                let rattrs = vec![
                    ("name".to_string(), s(r.name.clone())),
                    ("connection".to_string(), s(r.connection.clone())),
                    ("plugin".to_string(), s(r.plugin.clone())),
                    ("environment".to_string(), s(r.environment.clone())),
                    ("scopes".to_string(), RestrictedExpression::new_set(r.scopes.iter().cloned().map(s))),
                    ("max_ttl_seconds".to_string(), RestrictedExpression::new_long(r.max_ttl_seconds)),
                ];
                let e = Entity::new(ruid.clone(), rattrs.into_iter().collect(), Default::default())
                    .map_err(|e| PolicyError::Request(e.to_string()))?;
                (ruid, e, (action, r.name.clone()))
            }
            Target::System => {
                let ruid = entity_uid("Lessor::System", "lessor")?;
                (ruid.clone(), Entity::with_uid(ruid), (action, "lessor".to_string()))
            }
            Target::Connection(c) => {
                let ruid = entity_uid("Lessor::Connection", &c.name)?;
                let attrs = vec![
                    ("name".to_string(), s(c.name.clone())),
                    ("plugin".to_string(), s(c.plugin.clone())),
                    ("environment".to_string(), s(c.environment.clone())),
                    ("owner".to_string(), s(c.owner.clone())),
                ];
                let e = Entity::new(ruid.clone(), attrs.into_iter().collect(), Default::default())
                    .map_err(|e| PolicyError::Request(e.to_string()))?;
                // No slice: connection actions are rare, the full set decides.
                (ruid, e, (action, format!("connection:{}", c.name)))
            }
        };
        let mut pairs = vec![
            ("ttl_seconds".to_string(), RestrictedExpression::new_long(ctx.ttl_seconds)),
            ("scopes".to_string(), RestrictedExpression::new_set(ctx.scopes.iter().cloned().map(s))),
            ("now".to_string(), RestrictedExpression::new_long(ctx.now)),
            ("source_ip".to_string(), ip_expr(ctx.source_ip)),
        ];
        if let Some(r) = &ctx.vault_role {
            pairs.push(("vault_role".to_string(), s(r.clone())));
        }
        let context = Context::from_pairs(pairs)
        .map_err(|e| PolicyError::Request(e.to_string()))?;
        let target = match target {
            Target::Role(r) => format!("role `{}`", r.name),
            Target::System => "lessor".into(),
            Target::Connection(c) => format!("connection `{}`", c.name),
        };
        self.evaluate(who, action, (puid, pent), (ruid, rent), &slice_key, &target, context)
    }

    /// Decides a customer-token action by a person on an account
    /// (`Lessor::Account`, context `TokenContext`). No slice: the full set
    /// decides (token management is rare next to introspection, which
    /// policy never sees).
    pub fn decide_token(&self, person: &PersonInfo, action: Action, account: &str, ctx: &TokenContext) -> Result<Decision, PolicyError> {
        if !Action::TOKEN.contains(&action) {
            return Err(PolicyError::Request(format!("`{}` is not a customer-token action", action.as_str())));
        }
        let who = Who::Person(person);
        let principal = Self::principal_entity(who)?;
        let s = RestrictedExpression::new_string;
        let ruid = entity_uid("Lessor::Account", account)?;
        let rent = Entity::new(ruid.clone(), [("name".to_string(), s(account.to_owned()))].into_iter().collect(), Default::default())
            .map_err(|e| PolicyError::Request(e.to_string()))?;
        let context = Context::from_pairs([
            ("scopes".to_string(), RestrictedExpression::new_set(ctx.scopes.iter().cloned().map(s))),
            ("expires_in_seconds".to_string(), RestrictedExpression::new_long(ctx.expires_in_seconds)),
            ("environment".to_string(), s(ctx.environment.clone())),
            ("confirmed".to_string(), RestrictedExpression::new_bool(ctx.confirmed)),
            ("now".to_string(), RestrictedExpression::new_long(ctx.now)),
            ("source_ip".to_string(), ip_expr(ctx.source_ip)),
        ])
        .map_err(|e| PolicyError::Request(e.to_string()))?;
        let key = (action, format!("account:{account}"));
        self.evaluate(who, action, principal, (ruid, rent), &key, &format!("account `{account}`"), context)
    }

    /// Evaluates one request against the slice for `slice_key` (or the
    /// full set) and explains the answer.
    #[allow(clippy::too_many_arguments)]
    fn evaluate(
        &self,
        who: Who<'_>,
        action: Action,
        (puid, pent): (EntityUid, Entity),
        (ruid, rent): (EntityUid, Entity),
        slice_key: &(Action, String),
        target: &str,
        context: Context,
    ) -> Result<Decision, PolicyError> {
        // The context is built here with the schema's types; validating it
        // again per request would only cost time.
        let request = Request::new(puid, action.uid()?, ruid, context, None)
            .map_err(|e| PolicyError::Request(e.to_string()))?;
        let entities = Entities::from_entities(self.action_entities.iter().cloned().chain([pent, rent]), None)
            .map_err(|e| PolicyError::Request(e.to_string()))?;
        let slice = self.slices.get(slice_key);
        let set = slice.map(|s| s.for_principal(who)).unwrap_or(&self.full);
        let response = Authorizer::new().is_authorized(&request, set, &entities);
        let allowed = response.decision() == CedarDecision::Allow;
        let mut policies: Vec<DecidingPolicy> = response.diagnostics().reason().map(|id| self.deciding(id)).collect();
        policies.sort_by(|a, b| a.id.cmp(&b.id));
        // Policy ids inside Cedar are the authors' @id values.
        let errors: Vec<String> = response.diagnostics().errors().map(|e| e.to_string()).collect();
        let candidates: Vec<DecidingPolicy> = if !allowed && policies.is_empty() {
            slice
                .map(|s| &s.all)
                .unwrap_or(&self.full)
                .policies()
                .filter(|p| p.effect() == cedar_policy::Effect::Permit)
                .map(|p| self.deciding(p.id()))
                .filter(|d| !d.id.starts_with("lessor:"))
                .collect()
        } else {
            Vec::new()
        };
        // People are named in every explanation (workloads' answers go to
        // the workload itself, which knows who it is).
        let for_whom = match who {
            Who::Workload(_) => String::new(),
            Who::Person(p) => format!(" for person `{}`", p.id()),
        };
        let message = if allowed {
            format!(
                "`{}` on {target}{for_whom} permitted by {}",
                action.as_str(),
                policies.iter().map(|p| format!("`{}`", p.id)).collect::<Vec<_>>().join(", ")
            )
        } else if !policies.is_empty() {
            let parts: Vec<String> = policies
                .iter()
                .map(|p| match &p.reason {
                    Some(r) => format!("policy `{}` forbids it: {r}", p.id),
                    None => format!("policy `{}` forbids it", p.id),
                })
                .collect();
            format!("`{}` on {target}{for_whom} denied: {}", action.as_str(), parts.join("; "))
        } else {
            let mut m = match who {
                Who::Workload(principal) => {
                    let claims = principal
                        .attributes
                        .iter()
                        .map(|(k, v)| format!("{k}=`{v}`"))
                        .collect::<Vec<_>>()
                        .join(", ");
                    format!(
                        "`{}` on {target} denied: no policy permits it for issuer `{}`, subject `{}` (claims considered: {})",
                        action.as_str(),
                        principal.issuer,
                        principal.subject,
                        if claims.is_empty() { "none".to_string() } else { claims }
                    )
                }
                Who::Person(p) => {
                    let groups = p.groups.iter().map(|g| format!("`{g}`")).collect::<Vec<_>>().join(", ");
                    format!(
                        "`{}` on {target} denied: no policy permits it for person `{}` (provider `{}`, subject `{}`, \
                         email `{}`, groups considered: {})",
                        action.as_str(),
                        p.id(),
                        p.provider,
                        p.subject,
                        p.email,
                        if groups.is_empty() { "none".to_string() } else { groups }
                    )
                }
            };
            if !candidates.is_empty() {
                let c: Vec<String> = candidates
                    .iter()
                    .map(|p| match &p.reason {
                        Some(r) => format!("`{}` ({r})", p.id),
                        None => format!("`{}`", p.id),
                    })
                    .collect();
                m.push_str(&format!("; policies that could permit it but did not match: {}", c.join(", ")));
            }
            if !errors.is_empty() {
                m.push_str(&format!("; {} policy evaluation error(s)", errors.len()));
            }
            m
        };
        Ok(Decision { allowed, policies, candidates, errors, message, considered: who.considered() })
    }
}

/// The live policy set, swapped atomically on reload.
pub struct PolicyEngine {
    dir: PathBuf,
    roles: Vec<RoleInfo>,
    current: arc_swap::ArcSwap<Policies>,
}

impl PolicyEngine {
    pub fn load(dir: &Path, roles: Vec<RoleInfo>) -> Result<PolicyEngine, PolicyError> {
        let p = Policies::load(dir, &roles)?;
        Ok(PolicyEngine { dir: dir.to_owned(), roles, current: arc_swap::ArcSwap::from_pointee(p) })
    }

    pub fn from_policies(p: Policies, dir: &Path, roles: Vec<RoleInfo>) -> PolicyEngine {
        PolicyEngine { dir: dir.to_owned(), roles, current: arc_swap::ArcSwap::from_pointee(p) }
    }

    pub fn current(&self) -> Arc<Policies> {
        self.current.load_full()
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Reloads from disk. On error the old set stays and the error is
    /// returned. Returns whether anything changed.
    pub fn reload(&self) -> Result<bool, PolicyError> {
        let p = Policies::load(&self.dir, &self.roles)?;
        if p.version == self.current.load().version {
            return Ok(false);
        }
        self.current.store(Arc::new(p));
        Ok(true)
    }

    /// Cheap fingerprint of the directory (names, sizes, mtimes) to notice
    /// changes without reading every file.
    pub fn fingerprint(&self) -> String {
        let mut files = Vec::new();
        if collect_files(&self.dir, &mut files).is_err() {
            return String::new();
        }
        files.sort();
        let mut out = String::new();
        for f in files {
            if let Ok(m) = std::fs::metadata(&f) {
                let mtime = m.modified().ok().and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok()).map(|d| d.as_nanos()).unwrap_or(0);
                out.push_str(&format!("{}:{}:{};", f.display(), m.len(), mtime));
            }
        }
        out
    }
}

/// A policy set's version: a hash of its file names and contents (each
/// length-prefixed, so no two different sets collide by concatenation).
fn version_of(sources: &[(String, String)]) -> String {
    use sha2::Digest;
    let mut h = sha2::Sha256::default();
    for (n, t) in sources {
        h.update((n.len() as u64).to_le_bytes());
        h.update(n.as_bytes());
        h.update((t.len() as u64).to_le_bytes());
        h.update(t.as_bytes());
    }
    hex::encode(&h.finalize()[..8])
}

#[cfg(test)]
mod index_tests {
    use super::*;

    const SCHEMA: &str = include_str!("../../policies/lessor.cedarschema");

    fn role(name: &str) -> RoleInfo {
        RoleInfo {
            name: name.into(),
            connection: "c".into(),
            plugin: "token".into(),
            environment: "production".into(),
            scopes: vec![],
            max_ttl_seconds: 3600,
        }
    }

    #[test]
    fn the_vault_role_reaches_cedar_only_from_the_vault_api() {
        let text = r#"
@id("deploy-only") permit(principal, action == Lessor::Action::"issue", resource == Lessor::Role::"c/r")
  when { context has vault_role && context.vault_role == "deploy" };
"#;
        let src = vec![("s.cedarschema".to_string(), SCHEMA.to_string()), ("p.cedar".to_string(), text.to_string())];
        let p = Policies::from_sources(&src, &[role("c/r")]).unwrap();
        let principal = Principal { issuer: "i".into(), subject: "s".into(), attributes: BTreeMap::new() };
        let decide = |vault_role: Option<&str>| {
            let ctx = RequestContext {
                ttl_seconds: 60,
                scopes: vec![],
                now: 0,
                source_ip: IpAddr::from([127, 0, 0, 1]),
                vault_role: vault_role.map(str::to_owned),
            };
            p.decide(&principal, Action::Issue, Some(&role("c/r")), &ctx).unwrap().allowed
        };
        assert!(decide(Some("deploy")));
        assert!(!decide(Some("ci")));
        assert!(!decide(None), "a native request has no vault_role");
    }

    #[test]
    fn each_request_is_decided_on_its_own_source_address() {
        let text = r#"
@id("office") permit(principal, action == Lessor::Action::"issue", resource == Lessor::Role::"c/r")
  when { context.source_ip.isInRange(ip("10.1.0.0/16")) };
"#;
        let src = vec![("s.cedarschema".to_string(), SCHEMA.to_string()), ("p.cedar".to_string(), text.to_string())];
        let p = Policies::from_sources(&src, &[role("c/r")]).unwrap();
        let principal = Principal { issuer: "i".into(), subject: "s".into(), attributes: BTreeMap::new() };
        let decide = |source_ip: IpAddr| {
            let ctx = RequestContext { ttl_seconds: 60, scopes: vec![], now: 0, source_ip, vault_role: None };
            p.decide(&principal, Action::Issue, Some(&role("c/r")), &ctx).unwrap().allowed
        };
        // More addresses than the per-thread cache holds, inside and outside
        // the range in turn, each asked twice: a cached address must never
        // stand in for another.
        for round in 0..2 {
            for i in 0..300u16 {
                let [hi, lo] = i.to_be_bytes();
                assert!(decide(IpAddr::from([10, 1, hi, lo])), "10.1.{hi}.{lo} round {round}");
                assert!(!decide(IpAddr::from([10, 2, hi, lo])), "10.2.{hi}.{lo} round {round}");
            }
        }
        assert!(!decide("::1".parse().unwrap()));
        assert!(decide("10.1.255.255".parse().unwrap()));
    }

    #[test]
    fn indexed_decisions_equal_full_evaluation() {
        let text = r#"
@id("a") permit(principal, action == Lessor::Action::"issue", resource == Lessor::Role::"c/r")
  when { principal has repository && principal.repository == "acme/a" };
@id("b") permit(principal, action == Lessor::Action::"issue", resource == Lessor::Role::"c/r")
  when { principal has repository && "acme/b" == principal.repository && context.ttl_seconds <= 600 };
@id("c") permit(principal, action == Lessor::Action::"issue", resource == Lessor::Role::"c/r")
  when { principal has repository && principal.repository == "acme/c" } unless { principal has ref && principal.ref == "x" };
@id("never") permit(principal, action == Lessor::Action::"issue", resource == Lessor::Role::"c/r")
  when { principal has repository && principal.repository == "p" && principal.repository == "q" };
@id("any-main") permit(principal, action == Lessor::Action::"issue", resource)
  when { principal has ref && principal.ref == "refs/heads/main" };
@id("no-b-prod") forbid(principal, action, resource is Lessor::Role)
  when { principal has repository && principal.repository == "acme/b" && resource.environment == "production" };
@id("no-x") forbid(principal, action, resource) when { principal.subject == "x" };
"#;
        let src = vec![("s.cedarschema".to_string(), SCHEMA.to_string()), ("p.cedar".to_string(), text.to_string())];
        let roles = vec![role("c/r")];
        let indexed = Policies::from_sources(&src, &roles).unwrap();
        let slice = &indexed.slices[&(Action::Issue, "c/r".to_string())];
        assert_eq!(slice.attr.as_deref(), Some("repository"));
        assert!(slice.by_value.contains_key("acme/a") && slice.by_value.contains_key("acme/b"));
        let full = Policies::from_sources(&src, &[]).unwrap();
        let ctx = RequestContext { ttl_seconds: 300, scopes: vec![], now: 0, source_ip: IpAddr::from([127, 0, 0, 1]), vault_role: None };
        let repos = [None, Some("acme/a"), Some("acme/b"), Some("acme/c"), Some("p"), Some("zzz")];
        let refs = [None, Some("refs/heads/main"), Some("x")];
        for repo in repos {
            for r in refs {
                for subject in ["s", "x"] {
                    let mut attributes = BTreeMap::new();
                    if let Some(v) = repo {
                        attributes.insert("repository".to_string(), v.to_string());
                    }
                    if let Some(v) = r {
                        attributes.insert("ref".to_string(), v.to_string());
                    }
                    let p = Principal { issuer: "i".into(), subject: subject.into(), attributes };
                    let a = indexed.decide(&p, Action::Issue, Some(&roles[0]), &ctx).unwrap();
                    let b = full.decide(&p, Action::Issue, Some(&roles[0]), &ctx).unwrap();
                    assert_eq!((a.allowed, a.policy_ids()), (b.allowed, b.policy_ids()), "{repo:?} {r:?} {subject}");
                }
            }
        }
    }

    fn person(subject: &str, email: &str, groups: &[&str]) -> PersonInfo {
        PersonInfo {
            provider: "dev".into(),
            issuer: "http://127.0.0.1:8201".into(),
            subject: subject.into(),
            email: email.into(),
            name: subject.into(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
        }
    }

    /// People and workloads in one slice indexed by an attribute people
    /// have (`email`): the indexed decision equals full evaluation for both
    /// kinds, and policies that read workload claims (guarded by `has`)
    /// still validate with people in the schema.
    #[test]
    fn indexed_decisions_equal_full_evaluation_for_people() {
        let text = r#"
@id("repo-a") permit(principal, action == Lessor::Action::"admin", resource)
  when { principal has repository && principal.repository == "acme/a" };
@id("repo-b") permit(principal, action == Lessor::Action::"admin", resource)
  when { principal has repository && principal.repository == "acme/b" };
@id("alice") permit(principal is Lessor::Person, action == Lessor::Action::"admin", resource)
  when { principal.email == "alice@example.com" };
@id("bob-dev") permit(principal is Lessor::Person, action == Lessor::Action::"admin", resource)
  when { principal.email == "bob@example.com" && principal.provider == "dev" };
@id("platform") permit(principal is Lessor::Person, action == Lessor::Action::"admin", resource)
  when { principal.groups.contains("platform") };
@id("carol") permit(principal, action == Lessor::Action::"admin", resource) when { principal.subject == "carol" };
@id("no-finance") forbid(principal is Lessor::Person, action, resource) when { principal.groups.contains("finance") }
  unless { principal.email == "bob@example.com" };
@id("no-x") forbid(principal, action, resource) when { principal.subject == "x" };
"#;
        let src = vec![("s.cedarschema".to_string(), SCHEMA.to_string()), ("p.cedar".to_string(), text.to_string())];
        let indexed = Policies::from_sources(&src, &[]).unwrap();
        let slice = &indexed.slices[&(Action::Admin, "lessor".to_string())];
        assert_eq!(slice.attr.as_deref(), Some("email"), "the slice is indexed by an attribute people have");
        assert!(slice.by_value.contains_key("alice@example.com") && slice.by_value.contains_key("bob@example.com"));
        // The same policies with the index defeated: every policy in `rest`.
        let mut full = Policies::from_sources(&src, &[]).unwrap();
        full.slices.clear();
        let ctx = RequestContext { ttl_seconds: 0, scopes: vec![], now: 0, source_ip: IpAddr::from([127, 0, 0, 1]), vault_role: None };
        let mut allowed = 0;
        for subject in ["alice", "bob", "carol", "x"] {
            for email in ["", "alice@example.com", "bob@example.com", "zed@example.com"] {
                for groups in [&[][..], &["platform"][..], &["finance"][..], &["finance", "platform"][..]] {
                    let p = person(subject, email, groups);
                    let a = indexed.decide(&p, Action::Admin, None, &ctx).unwrap();
                    let b = full.decide(&p, Action::Admin, None, &ctx).unwrap();
                    assert_eq!((a.allowed, a.policy_ids()), (b.allowed, b.policy_ids()), "{p:?}");
                    allowed += a.allowed as usize;
                }
            }
        }
        assert!(allowed > 0, "some people are admins");
        for repo in [None, Some("acme/a"), Some("acme/b"), Some("zzz")] {
            for email in [None, Some("alice@example.com")] {
                for subject in ["s", "carol", "x"] {
                    let mut attributes = BTreeMap::new();
                    if let Some(v) = repo {
                        attributes.insert("repository".to_string(), v.to_string());
                    }
                    // A workload whose mapped claims include `email` is
                    // still no person.
                    if let Some(v) = email {
                        attributes.insert("email".to_string(), v.to_string());
                    }
                    let w = Principal { issuer: "i".into(), subject: subject.into(), attributes };
                    let a = indexed.decide(&w, Action::Admin, None, &ctx).unwrap();
                    let b = full.decide(&w, Action::Admin, None, &ctx).unwrap();
                    assert_eq!((a.allowed, a.policy_ids()), (b.allowed, b.policy_ids()), "{w:?}");
                    assert!(!a.policy_ids().contains(&"alice".to_string()), "a workload matched a people-only policy");
                }
            }
        }
        // Spot checks: who decides what.
        let d = indexed.decide(&person("alice", "alice@example.com", &[]), Action::Admin, None, &ctx).unwrap();
        assert_eq!((d.allowed, d.policy_ids()), (true, vec!["alice".to_string()]));
        let d = indexed.decide(&person("bob", "bob@example.com", &["finance"]), Action::Admin, None, &ctx).unwrap();
        assert_eq!((d.allowed, d.policy_ids()), (true, vec!["bob-dev".to_string()]));
        let d = indexed.decide(&person("eve", "eve@example.com", &["finance", "platform"]), Action::Admin, None, &ctx).unwrap();
        assert_eq!((d.allowed, d.policy_ids()), (false, vec!["no-finance".to_string()]));
    }

    /// A denied person's explanation names them: provider, subject, email
    /// and the groups considered; a forbid gives the policy's reason.
    #[test]
    fn decisions_for_people_name_the_person() {
        let text = r#"
@id("finance-approves") @reason("finance approves")
permit(principal is Lessor::Person, action == Lessor::Action::"connection_approve", resource is Lessor::Connection)
  when { principal.provider == "dev" && principal.groups.contains("finance") };
@id("no-contractors") @reason("contractors never touch production root credentials")
forbid(principal is Lessor::Person, action, resource is Lessor::Connection)
  when { principal.groups.contains("contractors") && resource.environment == "production" };
"#;
        let src = vec![("s.cedarschema".to_string(), SCHEMA.to_string()), ("p.cedar".to_string(), text.to_string())];
        let p = Policies::from_sources(&src, &[]).unwrap();
        let conn = ConnectionInfo { name: "pg".into(), plugin: "postgres".into(), environment: "production".into(), owner: String::new() };
        let ctx = RequestContext { ttl_seconds: 0, scopes: vec![], now: 0, source_ip: IpAddr::from([127, 0, 0, 1]), vault_role: None };
        let decide = |who: &PersonInfo| p.decide_on(who, Action::ConnectionApprove, Target::Connection(&conn), &ctx).unwrap();
        let d = decide(&person("bob", "bob@example.com", &["finance"]));
        assert!(d.allowed && d.message.contains("for person `dev#bob`"), "{}", d.message);
        let d = decide(&person("alice", "alice@example.com", &["platform", "ops"]));
        assert!(!d.allowed);
        for part in ["person `dev#alice`", "provider `dev`", "subject `alice`", "email `alice@example.com`", "groups considered: `platform`, `ops`", "`finance-approves` (finance approves)"] {
            assert!(d.message.contains(part), "{part} missing: {}", d.message);
        }
        assert_eq!(d.considered["groups"], "platform, ops");
        assert_eq!(d.considered["email"], "alice@example.com");
        let d = decide(&person("carl", "carl@example.com", &["finance", "contractors"]));
        assert!(!d.allowed);
        assert!(d.message.contains("policy `no-contractors` forbids it: contractors never touch production root credentials"), "{}", d.message);
    }

    /// `lessor check`'s warnings about people: approve granted to
    /// workloads, set-secret and approve granted to the same people, a
    /// people policy without the provider pinned.
    #[test]
    fn warnings_cover_people_and_workload_approvals() {
        let text = r#"
@id("people-do-it-all")
permit(principal is Lessor::Person, action in [Lessor::Action::"connection_set_secret", Lessor::Action::"connection_approve"], resource)
  when { principal.provider == "corp" && principal.groups.contains("ops") };
@id("workloads-approve")
permit(principal, action == Lessor::Action::"connection_approve", resource)
  when { principal.issuer == "https://ci.example" };
@id("people-approve-pinned")
permit(principal, action == Lessor::Action::"connection_approve", resource)
  when { principal is Lessor::Person && ["corp"].contains(principal.provider) && principal.groups.contains("finance") };
@id("any-provider")
permit(principal is Lessor::Person, action == Lessor::Action::"connection_read", resource)
  when { principal.groups.contains("finance") };
"#;
        let src = vec![("s.cedarschema".to_string(), SCHEMA.to_string()), ("p.cedar".to_string(), text.to_string())];
        let w = Policies::from_sources(&src, &[]).unwrap().warnings();
        let about = |id: &str| w.iter().filter(|x| x.contains(&format!("`{id}`"))).cloned().collect::<Vec<_>>();
        let all = about("people-do-it-all");
        assert!(all.len() == 1 && all[0].contains("permits both connection_set_secret and connection_approve"), "{w:?}");
        let wa = about("workloads-approve");
        assert!(wa.len() == 1 && wa[0].contains("permits connection_approve to workloads"), "{w:?}");
        assert!(about("people-approve-pinned").is_empty(), "{w:?}");
        let ap = about("any-provider");
        assert!(ap.len() == 1 && ap[0].contains("does not pin principal.provider"), "{w:?}");
        assert_eq!(w.len(), 3, "{w:?}");
    }

    /// Customer-token decisions: an account resource and a `TokenContext`;
    /// a forbid `unless { context.confirmed }` gives way to a confirmed
    /// request; a token permit without an expiry bound is warned about.
    #[test]
    fn token_actions_are_decided_on_accounts_with_the_token_context() {
        let text = r#"
@id("members") permit(principal is Lessor::Person, action in [Lessor::Action::"token_create", Lessor::Action::"token_read"], resource is Lessor::Account)
  when { principal.provider == "customers" && context.expires_in_seconds <= 15552000 };
@id("unbounded") permit(principal is Lessor::Person, action == Lessor::Action::"token_rotate", resource == Lessor::Account::"globex")
  when { principal.provider == "customers" };
@id("broad") @reason("broad") forbid(principal, action == Lessor::Action::"token_create", resource)
  when { context.scopes.contains("security.write") && context.environment == "production" } unless { context.confirmed };
"#;
        let src = vec![("s.cedarschema".to_string(), SCHEMA.to_string()), ("p.cedar".to_string(), text.to_string())];
        let p = Policies::from_sources(&src, &[]).unwrap();
        let mut carol = person("carol", "carol@example.com", &["account:acme"]);
        carol.provider = "customers".into();
        let ctx = |scopes: &[&str], days: i64, confirmed: bool| TokenContext {
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
            expires_in_seconds: days * 86_400,
            environment: "production".into(),
            confirmed,
            now: 0,
            source_ip: IpAddr::from([127, 0, 0, 1]),
        };
        let d = p.decide_token(&carol, Action::TokenCreate, "acme", &ctx(&["invoices.read"], 30, false)).unwrap();
        assert_eq!((d.allowed, d.policy_ids()), (true, vec!["members".to_string()]));
        assert!(d.message.contains("on account `acme` for person `customers#carol`"), "{}", d.message);
        let d = p.decide_token(&carol, Action::TokenCreate, "acme", &ctx(&["security.write"], 30, false)).unwrap();
        assert_eq!((d.allowed, d.policy_ids()), (false, vec!["broad".to_string()]));
        assert!(d.message.contains("policy `broad` forbids it: broad"), "{}", d.message);
        assert!(p.decide_token(&carol, Action::TokenCreate, "acme", &ctx(&["security.write"], 30, true)).unwrap().allowed);
        assert!(!p.decide_token(&carol, Action::TokenCreate, "acme", &ctx(&["invoices.read"], 181, false)).unwrap().allowed);
        assert!(!p.decide_token(&carol, Action::TokenRotate, "acme", &ctx(&[], 30, false)).unwrap().allowed);
        assert!(p.decide_token(&carol, Action::TokenRotate, "globex", &ctx(&[], 700, false)).unwrap().allowed);
        let mut staff = carol.clone();
        staff.provider = "corp".into();
        assert!(!p.decide_token(&staff, Action::TokenRead, "acme", &ctx(&[], 0, false)).unwrap().allowed);
        assert!(p.decide_token(&carol, Action::Admin, "acme", &ctx(&[], 0, false)).is_err(), "only token actions");
        let w = p.warnings();
        assert!(w.iter().any(|x| x.contains("`unbounded`") && x.contains("expires_in_seconds")), "{w:?}");
        assert!(!w.iter().any(|x| x.contains("`members`")), "{w:?}");
    }

    /// Policies on action groups (`action in Lessor::Action::"write"`) are
    /// in the slices of every action of the group, transitively, and Cedar
    /// sees the groups: sliced and full evaluation agree, and both apply
    /// the group policies.
    #[test]
    fn action_groups_are_sliced_and_decided_like_full_evaluation() {
        let schema = SCHEMA.replace(
            "  action issue, renew, revoke, read appliesTo {",
            "  action everything;\n  action write in [everything];\n  \
             action revoke, read appliesTo { principal: Workload, resource: Role, context: RequestContext };\n  \
             action issue, renew in [write] appliesTo {",
        );
        assert_ne!(schema, SCHEMA, "the schema's action declaration moved; update this test");
        let text = r#"
@id("write-for-a") permit(principal, action in Lessor::Action::"write", resource == Lessor::Role::"c/r")
  when { principal has repository && principal.repository == "acme/a" };
@id("issue-or-revoke-on-main") permit(principal, action in [Lessor::Action::"issue", Lessor::Action::"revoke"], resource)
  when { principal has ref && principal.ref == "refs/heads/main" };
@id("no-write-for-x") forbid(principal, action in Lessor::Action::"write", resource) when { principal.subject == "x" };
@id("nothing-for-b") forbid(principal, action in Lessor::Action::"everything", resource == Lessor::Role::"c/r")
  when { principal has repository && principal.repository == "acme/b" };
"#;
        let src = vec![("s.cedarschema".to_string(), schema), ("p.cedar".to_string(), text.to_string())];
        let roles = vec![role("c/r")];
        let sliced = Policies::from_sources(&src, &roles).unwrap();
        let full = Policies::from_sources(&src, &[]).unwrap();
        let issue_slice = &sliced.slices[&(Action::Issue, "c/r".to_string())];
        let ids: Vec<String> = issue_slice.all.policies().map(|p| p.id().to_string()).collect();
        for id in ["write-for-a", "no-write-for-x", "nothing-for-b"] {
            assert!(ids.contains(&id.to_string()), "{id} must be in the issue slice: {ids:?}");
        }
        let ctx = RequestContext { ttl_seconds: 300, scopes: vec![], now: 0, source_ip: IpAddr::from([127, 0, 0, 1]), vault_role: None };
        let decide = |p: &Policies, subject: &str, repo: Option<&str>, r: Option<&str>, action: Action| {
            let mut attributes = BTreeMap::new();
            if let Some(v) = repo {
                attributes.insert("repository".to_string(), v.to_string());
            }
            if let Some(v) = r {
                attributes.insert("ref".to_string(), v.to_string());
            }
            let pr = Principal { issuer: "i".into(), subject: subject.into(), attributes };
            let d = p.decide(&pr, action, Some(&roles[0]), &ctx).unwrap();
            (d.allowed, d.policy_ids())
        };
        for action in [Action::Issue, Action::Renew, Action::Revoke, Action::Read] {
            for subject in ["s", "x"] {
                for repo in [None, Some("acme/a"), Some("acme/b")] {
                    for r in [None, Some("refs/heads/main")] {
                        let a = decide(&sliced, subject, repo, r, action);
                        let b = decide(&full, subject, repo, r, action);
                        assert_eq!(a, b, "{action:?} {subject} {repo:?} {r:?}");
                    }
                }
            }
        }
        // The group policies apply: a permit through `write`, a forbid
        // through `write`, a forbid through `everything` (two levels up).
        assert_eq!(decide(&sliced, "s", Some("acme/a"), None, Action::Renew), (true, vec!["write-for-a".to_string()]));
        assert_eq!(decide(&sliced, "x", Some("acme/a"), None, Action::Issue), (false, vec!["no-write-for-x".to_string()]));
        assert_eq!(decide(&sliced, "s", Some("acme/b"), Some("refs/heads/main"), Action::Issue), (false, vec!["nothing-for-b".to_string()]));
        // `revoke` is in no group: the write forbid does not touch it.
        assert!(decide(&sliced, "x", None, Some("refs/heads/main"), Action::Revoke).0);
    }
}
