//! Customer API tokens (issue 13): tokens a SaaS's customers create for the
//! SaaS's own API, managed by people of the customer's account and verified
//! by the SaaS's API servers through introspection (RFC 7662).
//!
//! Flow: a member of the account previews a token (account, environment,
//! scopes with what each allows and does not, "Expires on 12 March 2027",
//! creator), creates it (shown once; afterwards its prefix and last 4
//! characters), rotates it (a replacement with the same name, scopes and
//! owner; the old one `retiring` until the overlap ends) or revokes it
//! (refused everywhere when the call returns). Resource servers introspect
//! tokens: format and checksum first (no store read for a look-alike), then
//! a small cache in front of one indexed store read, then the token's state
//! at the service's clock; each use is queued for the usage writer.
//!
//! The introspection cache: an entry is the result of one store read and
//! expires `introspection_cache_ttl` after that read *started*, so no
//! replica answers from a read older than the TTL. A revocation invalidates
//! this replica's entry, then waits the TTL before it answers: when it
//! answers, every replica's cache has expired anything read before it.
//!
//! The clock is injected ([`lessor_plugin::Clock`], as plugins get it), so
//! tests move time for expiry, overlaps and warnings.
//!
//! Why one file (about 850 lines): preview, create, rotate, revoke and
//! introspect share one state machine (active, retiring, revoked, expired at
//! the injected clock) and one cache invariant (no entry older than
//! `introspection_cache_ttl`, which revoke waits out); split apart, each
//! piece would have to restate both. Format, authorization, usage records
//! and config already live in child modules.
//!
//! Must not import: http, sqlx, config, lease, connections.

pub mod authz;
pub mod config;
pub mod format;
pub mod usage;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lessor_plugin::Clock;
use secrecy::{ExposeSecret, SecretString};
use subtle::ConstantTimeEq;
use time::OffsetDateTime;

use crate::audit::{Audit, AuditError, Event};
use crate::principal::{Actor, Person, RequestMeta};
use crate::store::{CustomerToken, DayCount, Store, StoreError, TokenUse, TokenWarning};
use authz::{member_of, AccountInfo, Allowed, Denied, TokenAction, TokenAuthorizer, TokenContext};
use config::{CustomerTokensConfig, HARD_MAX_EXPIRY, LONGEST_PRESET, MAX_OVERLAP, MIN_OVERLAP, PRESETS};
use usage::UsageRecorder;

/// Most tokens listed for one account (history included).
pub const LIST_LIMIT: u32 = 1000;
/// Most tokens warned per maintenance pass.
const WARN_BATCH: u32 = 500;
/// Longest token name.
pub const MAX_NAME: usize = 100;
/// Most scopes on one token.
pub const MAX_SCOPES: usize = 32;
const MAX_USER_AGENT: usize = 256;

/// What one scope allows and does not allow, in plain language.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScopeText {
    pub allows: String,
    pub denies: String,
}

/// One environment's scopes: the token-plugin role they come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Environment {
    /// `connection/role`.
    pub role: String,
    pub scopes: BTreeMap<String, ScopeText>,
}

/// Environments by name (built by `config` from `[customer_tokens] roles`,
/// `[connections]` and `[scopes]`).
pub type Catalogue = BTreeMap<String, Environment>;

#[derive(Debug, thiserror::Error)]
pub enum CtError {
    #[error("{message}")]
    BadRequest { field: &'static str, message: String },
    #[error("{0}")]
    NotFound(String),
    #[error("{message}")]
    Denied { message: String, policy: Option<String> },
    #[error("{message}")]
    ConfirmationRequired { message: String, policy: Option<String> },
    #[error("{0}")]
    Conflict(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Audit(#[from] AuditError),
}

fn bad(field: &'static str, message: impl Into<String>) -> CtError {
    CtError::BadRequest { field, message: message.into() }
}

/// A token's state at a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenState {
    Active,
    Retiring,
    Revoked,
    Expired,
}

impl TokenState {
    pub fn as_str(self) -> &'static str {
        match self {
            TokenState::Active => "active",
            TokenState::Retiring => "retiring",
            TokenState::Revoked => "revoked",
            TokenState::Expired => "expired",
        }
    }

    pub fn at(t: &CustomerToken, now: OffsetDateTime) -> TokenState {
        if t.revoked_at.is_some() {
            TokenState::Revoked
        } else if now >= t.ends_at() {
            TokenState::Expired
        } else if t.replaced_by.is_some() {
            TokenState::Retiring
        } else {
            TokenState::Active
        }
    }
}

/// A warning about a token that still works.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Warning {
    /// Expires within `warn_before_expiry`.
    ExpiresSoon { expires_at: OffsetDateTime },
    /// Not rotated for `rotate_after` (created then, never replaced).
    NotRotated { since: OffsetDateTime },
}

impl Warning {
    pub fn kind(&self) -> &'static str {
        match self {
            Warning::ExpiresSoon { .. } => "expires_soon",
            Warning::NotRotated { .. } => "not_rotated",
        }
    }

    pub fn message(&self) -> String {
        match self {
            Warning::ExpiresSoon { expires_at } => format!("expires on {}; rotate it before then", date_words(*expires_at)),
            Warning::NotRotated { since } => format!("not rotated since {}", date_words(*since)),
        }
    }
}

/// A token as people see it (never the secret).
#[derive(Debug, Clone)]
pub struct TokenView {
    pub token: CustomerToken,
    pub state: TokenState,
    /// `<prefix>_…<last 4>`.
    pub masked: String,
    pub warnings: Vec<Warning>,
}

/// A token with its recent uses and daily counts.
#[derive(Debug, Clone)]
pub struct TokenDetail {
    pub view: TokenView,
    pub uses: Vec<TokenUse>,
    pub days: Vec<DayCount>,
}

/// A creation request.
#[derive(Debug, Clone, Default)]
pub struct CreateRequest {
    pub name: String,
    /// Required when more than one environment is configured.
    pub environment: Option<String>,
    pub scopes: Vec<String>,
    /// A preset (`24h`, `30d`, `90d`, `180d`) or, where policy allows, longer.
    pub expires_in: Option<String>,
    pub confirm: bool,
}

/// A scope with its plain-language description.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScopeDescription {
    pub name: String,
    pub allows: String,
    pub denies: String,
}

/// What a creation will make, shown before it does.
#[derive(Debug, Clone)]
pub struct Summary {
    pub account: String,
    pub environment: String,
    pub name: String,
    pub scopes: Vec<ScopeDescription>,
    pub expires_in: Duration,
    pub expires_at: OffsetDateTime,
    /// "Expires on 12 March 2027".
    pub expires_on: String,
    /// The creator's email (or id when the provider gave none).
    pub creator: String,
    pub owner: String,
}

/// A created token: the secret, shown this once.
pub struct Created {
    pub token: SecretString,
    pub summary: Summary,
    pub view: TokenView,
}

/// A rotation: the replacement (secret shown once) and the old token.
pub struct Rotated {
    pub token: SecretString,
    pub new: TokenView,
    pub old: TokenView,
}

/// An API server allowed to introspect.
#[derive(Debug, Clone)]
pub struct ResourceServer {
    pub name: String,
    secret_sha256: [u8; 32],
    /// Empty: every environment.
    pub environments: Vec<String>,
}

/// What an introspection tells a resource server about an active token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActiveToken {
    pub id: String,
    pub account: String,
    pub environment: String,
    pub scopes: Vec<String>,
    pub issued_at: OffsetDateTime,
    /// When it stops working by itself (expiry or the overlap's end).
    pub expires_at: OffsetDateTime,
}

/// What the caller of an introspection reports about the token's use.
#[derive(Debug, Clone)]
pub struct UseInfo {
    pub source: IpAddr,
    pub user_agent: String,
}

struct Cached {
    token: Option<CustomerToken>,
    /// When the store read that produced it started.
    read_started: Instant,
}

struct ReadAge(Duration);

impl moka::Expiry<String, Arc<Cached>> for ReadAge {
    fn expire_after_create(&self, _: &String, v: &Arc<Cached>, created_at: Instant) -> Option<Duration> {
        Some(self.0.saturating_sub(created_at.saturating_duration_since(v.read_started)))
    }
}

/// A duration in whole days when it is one (`180d`), else as
/// [`crate::fmt_duration`] writes it.
pub fn fmt_days(d: Duration) -> String {
    let s = d.as_secs();
    if s > 0 && s.is_multiple_of(86_400) && d.subsec_nanos() == 0 {
        format!("{}d", s / 86_400)
    } else {
        crate::fmt_duration(d)
    }
}

/// "12 March 2027".
pub fn date_words(t: OffsetDateTime) -> String {
    let fmt = time::macros::format_description!("[day padding:none] [month repr:long] [year]");
    t.format(&fmt).unwrap_or_else(|_| t.date().to_string())
}

/// The customer-token service: one per process.
pub struct CustomerTokens {
    store: Arc<dyn Store>,
    audit: Audit,
    cfg: CustomerTokensConfig,
    catalogue: Catalogue,
    authz: Arc<dyn TokenAuthorizer>,
    clock: Clock,
    cache: Option<moka::future::Cache<String, Arc<Cached>>>,
    usage: Arc<UsageRecorder>,
    resource_servers: Vec<ResourceServer>,
}

impl CustomerTokens {
    /// Builds the service (reads the resource servers' secret files).
    pub fn new(
        store: Arc<dyn Store>,
        audit: Audit,
        cfg: CustomerTokensConfig,
        catalogue: Catalogue,
        authz: Arc<dyn TokenAuthorizer>,
        clock: Clock,
    ) -> Result<CustomerTokens, String> {
        cfg.validate()?;
        let resource_servers = cfg
            .load_resource_servers()?
            .into_iter()
            .map(|(name, secret_sha256, environments)| ResourceServer { name, secret_sha256, environments })
            .collect();
        let cache = (!cfg.introspection_cache_ttl.is_zero()).then(|| {
            moka::future::Cache::builder()
                .max_capacity(cfg.introspection_cache_capacity)
                .expire_after(ReadAge(cfg.introspection_cache_ttl))
                .build()
        });
        let usage = Arc::new(UsageRecorder::new(store.clone(), cfg.usage_queue, cfg.usage_keep));
        Ok(CustomerTokens { store, audit, cfg, catalogue, authz, clock, cache, usage, resource_servers })
    }

    pub fn now(&self) -> OffsetDateTime {
        (self.clock)()
    }

    pub fn config(&self) -> &CustomerTokensConfig {
        &self.cfg
    }

    pub fn catalogue(&self) -> &Catalogue {
        &self.catalogue
    }

    pub fn usage(&self) -> &Arc<UsageRecorder> {
        &self.usage
    }

    fn view(&self, t: CustomerToken, now: OffsetDateTime) -> TokenView {
        let state = TokenState::at(&t, now);
        let mut warnings = Vec::new();
        if state == TokenState::Active {
            if crate::duration::add(now, self.cfg.warn_before_expiry).is_some_and(|b| t.expires_at <= b) {
                warnings.push(Warning::ExpiresSoon { expires_at: t.expires_at });
            }
            if crate::duration::sub(now, self.cfg.rotate_after).is_some_and(|b| t.created_at <= b) {
                warnings.push(Warning::NotRotated { since: t.created_at });
            }
        }
        let masked = format::masked(&self.cfg.token_prefix, &t.last4);
        TokenView { token: t, state, masked, warnings }
    }

    // ------------------------------------------------------------ people

    /// Membership (404 otherwise) and the account's name checked.
    fn account(&self, person: &Person, account: &str) -> Result<AccountInfo, CtError> {
        if account.is_empty() || account.len() > 128 || !member_of(person, &self.cfg.account_group_prefix, account) {
            // The same answer whether the account exists or not.
            return Err(CtError::NotFound(format!(
                "account `{}` not found among your accounts",
                account.chars().take(128).collect::<String>()
            )));
        }
        Ok(AccountInfo { name: account.to_owned() })
    }

    fn decide(
        &self,
        person: &Person,
        meta: &RequestMeta,
        action: TokenAction,
        account: &AccountInfo,
        ctx: TokenContext,
    ) -> Result<(), CtError> {
        let decision = self.authz.decide(person, action, account, &ctx);
        let mut ev = Event::new("decide", if decision.is_ok() { "allow" } else { "deny" })
            .request(Some(meta))
            .actor(Actor::Person(person.clone()).audit_info())
            .detail("policy_action", action.as_str())
            .detail("account", account.name.clone())
            .detail("environment", ctx.environment.clone())
            .detail("scopes", ctx.scopes.clone())
            .detail("expires_in_seconds", ctx.expires_in_seconds)
            .detail("confirmed", ctx.confirmed);
        match decision {
            Ok(Allowed { policies }) => {
                ev.policies = Some(policies);
                self.audit.note(ev);
                Ok(())
            }
            Err(Denied { message, policies, reasons, confirmable }) => {
                ev = ev.error(if confirmable { "confirmation_required" } else { "policy_denied" }, message.clone());
                ev.policies = Some(policies.clone());
                ev.reasons = Some(reasons);
                self.audit.note(ev);
                let policy = policies.into_iter().next();
                if confirmable {
                    Err(CtError::ConfirmationRequired { message, policy })
                } else {
                    Err(CtError::Denied { message, policy })
                }
            }
        }
    }

    fn context(&self, meta: &RequestMeta, scopes: &[String], expires_in: Duration, environment: &str, confirmed: bool) -> TokenContext {
        TokenContext {
            scopes: scopes.to_vec(),
            expires_in_seconds: crate::duration::secs_i64(expires_in),
            environment: environment.to_owned(),
            confirmed,
            now: self.now().unix_timestamp(),
            source_ip: meta.source,
        }
    }

    /// The expiry asked for: a preset, or longer (policy decides), never
    /// "never".
    pub fn parse_expiry(&self, s: Option<&str>) -> Result<Duration, CtError> {
        let Some(s) = s else { return Ok(self.cfg.default_expiry) };
        let t = s.trim();
        if let Some((_, d)) = PRESETS.iter().find(|(n, _)| *n == t) {
            return Ok(*d);
        }
        let presets = "choose 24h, 30d, 90d or 180d";
        if ["never", "0", "0s", "none", "infinite"].contains(&t.to_ascii_lowercase().as_str()) {
            return Err(bad("expires_in", format!("customer tokens always expire; {presets}")));
        }
        let d = crate::duration::parse(t).map_err(|e| bad("expires_in", format!("{e}; {presets}")))?;
        if d <= LONGEST_PRESET {
            return Err(bad("expires_in", format!("expires_in `{t}` is not a preset; {presets} (longer only where policy allows)")));
        }
        if d > HARD_MAX_EXPIRY {
            return Err(bad(
                "expires_in",
                format!("expires_in `{t}` exceeds the {} limit on customer tokens", fmt_days(HARD_MAX_EXPIRY)),
            ));
        }
        Ok(d)
    }

    fn check_name(name: &str) -> Result<String, CtError> {
        let n = name.trim();
        if n.is_empty() || n.chars().count() > MAX_NAME || n.chars().any(char::is_control) {
            return Err(bad("name", format!("a token name is 1-{MAX_NAME} characters without control characters")));
        }
        Ok(n.to_owned())
    }

    fn environment(&self, asked: Option<&str>) -> Result<(&String, &Environment), CtError> {
        match asked {
            Some(e) => self.catalogue.get_key_value(e).ok_or_else(|| {
                bad(
                    "environment",
                    format!(
                        "environment `{}` is not one of {}",
                        e.chars().take(64).collect::<String>(),
                        self.catalogue.keys().cloned().collect::<Vec<_>>().join(", ")
                    ),
                )
            }),
            None if self.catalogue.len() == 1 => {
                self.catalogue.iter().next().ok_or_else(|| bad("environment", "no environment is configured"))
            }
            None => Err(bad(
                "environment",
                format!("name the environment: one of {}", self.catalogue.keys().cloned().collect::<Vec<_>>().join(", ")),
            )),
        }
    }

    fn scopes(env_name: &str, env: &Environment, asked: &[String]) -> Result<Vec<ScopeDescription>, CtError> {
        if asked.is_empty() || asked.len() > MAX_SCOPES {
            return Err(bad("scopes", format!("name 1-{MAX_SCOPES} scopes from the catalogue")));
        }
        let mut out: Vec<ScopeDescription> = Vec::new();
        for s in asked {
            let Some(text) = env.scopes.get(s) else {
                return Err(bad(
                    "scopes",
                    format!(
                        "scope `{}` is not in environment `{env_name}`'s catalogue ({})",
                        s.chars().take(64).collect::<String>(),
                        env.scopes.keys().cloned().collect::<Vec<_>>().join(", ")
                    ),
                ));
            };
            if out.iter().any(|o| &o.name == s) {
                return Err(bad("scopes", format!("scope `{s}` is named twice")));
            }
            out.push(ScopeDescription { name: s.clone(), allows: text.allows.clone(), denies: text.denies.clone() });
        }
        Ok(out)
    }

    /// Checks a creation and decides it, changing nothing: the summary a
    /// person confirms before the token is made.
    pub fn preview(&self, person: &Person, meta: &RequestMeta, account: &str, req: &CreateRequest) -> Result<Summary, CtError> {
        let acc = self.account(person, account)?;
        let name = Self::check_name(&req.name)?;
        let (env_name, env) = self.environment(req.environment.as_deref())?;
        let scopes = Self::scopes(env_name, env, &req.scopes)?;
        let expires_in = self.parse_expiry(req.expires_in.as_deref())?;
        let now = self.now();
        let expires_at = crate::duration::add(now, expires_in).ok_or_else(|| bad("expires_in", "out of range"))?;
        let names: Vec<String> = scopes.iter().map(|s| s.name.clone()).collect();
        let ctx = self.context(meta, &names, expires_in, env_name, req.confirm);
        self.decide(person, meta, TokenAction::Create, &acc, ctx)?;
        let creator = if person.email.is_empty() { person.id() } else { person.email.clone() };
        Ok(Summary {
            account: acc.name,
            environment: env_name.clone(),
            name,
            scopes,
            expires_in,
            expires_at,
            expires_on: format!("Expires on {}", date_words(expires_at)),
            owner: creator.clone(),
            creator,
        })
    }

    /// Creates a token (audited before it exists); the secret is in the
    /// answer once.
    pub async fn create(&self, person: &Person, meta: &RequestMeta, account: &str, req: &CreateRequest) -> Result<Created, CtError> {
        let summary = self.preview(person, meta, account, req)?;
        let token = format::generate(&self.cfg.token_prefix);
        let now = self.now();
        let record = CustomerToken {
            id: new_id(),
            token_hash: format::hash(token.expose_secret()),
            last4: format::last4(token.expose_secret()),
            account: summary.account.clone(),
            environment: summary.environment.clone(),
            name: summary.name.clone(),
            owner: person.id(),
            owner_email: person.email.clone(),
            scopes: summary.scopes.iter().map(|s| s.name.clone()).collect(),
            created_at: now,
            created_by: person.id(),
            expires_at: summary.expires_at,
            replaces: None,
            replaced_by: None,
            rotated_at: None,
            rotated_by: None,
            retiring_until: None,
            revoked_at: None,
            revoked_by: None,
            last_used_at: None,
            expiry_warned_at: None,
            rotation_warned_at: None,
        };
        let ev = self
            .event("customer_token.create", "ok", person, meta, &record)
            .detail("expires_at", rfc3339(record.expires_at))
            .detail("confirmed", req.confirm);
        self.audit.record(ev).await?;
        self.store.ct_insert(&record).await?;
        Ok(Created { token, summary, view: self.view(record, now) })
    }

    fn event(&self, action: &'static str, outcome: &'static str, person: &Person, meta: &RequestMeta, t: &CustomerToken) -> Event {
        Event::new(action, outcome)
            .request(Some(meta))
            .actor(Actor::Person(person.clone()).audit_info())
            .detail("account", t.account.clone())
            .detail("environment", t.environment.clone())
            .detail("customer_token", t.id.clone())
            .detail("token_name", t.name.clone())
            .detail("scopes", t.scopes.clone())
    }

    /// The account's tokens, newest first, history included.
    pub async fn list(&self, person: &Person, meta: &RequestMeta, account: &str) -> Result<Vec<TokenView>, CtError> {
        let acc = self.account(person, account)?;
        let ctx = self.context(meta, &[], Duration::ZERO, "", false);
        self.decide(person, meta, TokenAction::Read, &acc, ctx)?;
        let now = self.now();
        Ok(self.store.ct_list(&acc.name, LIST_LIMIT).await?.into_iter().map(|t| self.view(t, now)).collect())
    }

    async fn find(&self, acc: &AccountInfo, id: &str) -> Result<CustomerToken, CtError> {
        let not_found = || CtError::NotFound(format!("token `{}` not found in account `{}`", id.chars().take(64).collect::<String>(), acc.name));
        if id.len() > 64 {
            return Err(not_found());
        }
        match self.store.ct_get(id).await? {
            Some(t) if t.account == acc.name => Ok(t),
            _ => Err(not_found()),
        }
    }

    /// One token with its recent uses and daily counts.
    pub async fn show(&self, person: &Person, meta: &RequestMeta, account: &str, id: &str) -> Result<TokenDetail, CtError> {
        let acc = self.account(person, account)?;
        let t = self.find(&acc, id).await?;
        let ctx = self.context(meta, &t.scopes, Duration::ZERO, &t.environment, false);
        self.decide(person, meta, TokenAction::Read, &acc, ctx)?;
        let uses = self.store.ct_uses(&t.id, self.cfg.usage_keep).await?;
        let days = self.store.ct_days(&t.id).await?;
        Ok(TokenDetail { view: self.view(t, self.now()), uses, days })
    }

    /// The overlap asked for (default `rotation_overlap`), 1d..14d.
    pub fn parse_overlap(&self, s: Option<&str>) -> Result<Duration, CtError> {
        let Some(s) = s else { return Ok(self.cfg.rotation_overlap) };
        let d = crate::duration::parse(s).map_err(|e| bad("overlap", e))?;
        if !(MIN_OVERLAP..=MAX_OVERLAP).contains(&d) {
            return Err(bad("overlap", format!("overlap `{}` must be between 1d and 14d", s.chars().take(64).collect::<String>())));
        }
        Ok(d)
    }

    /// Replaces an active token: same name, scopes, owner, environment and
    /// lifetime; the old one works until the overlap ends.
    pub async fn rotate(
        &self,
        person: &Person,
        meta: &RequestMeta,
        account: &str,
        id: &str,
        overlap: Option<&str>,
        confirm: bool,
    ) -> Result<Rotated, CtError> {
        let acc = self.account(person, account)?;
        let overlap = self.parse_overlap(overlap)?;
        let old = self.find(&acc, id).await?;
        let now = self.now();
        match TokenState::at(&old, now) {
            TokenState::Active => {}
            TokenState::Retiring => {
                return Err(CtError::Conflict(format!(
                    "token `{}` was already rotated (replaced by `{}`); rotate the replacement",
                    old.id,
                    old.replaced_by.clone().unwrap_or_default()
                )))
            }
            s => return Err(CtError::Conflict(format!("token `{}` is {}; only an active token can be rotated", old.id, s.as_str()))),
        }
        let lifetime = Duration::try_from(old.expires_at - old.created_at).unwrap_or(self.cfg.default_expiry).min(HARD_MAX_EXPIRY);
        let ctx = self.context(meta, &old.scopes, lifetime, &old.environment, confirm);
        self.decide(person, meta, TokenAction::Rotate, &acc, ctx)?;
        let token = format::generate(&self.cfg.token_prefix);
        let expires_at = crate::duration::add(now, lifetime).ok_or_else(|| bad("expires_in", "out of range"))?;
        let retiring_until = crate::duration::add(now, overlap).ok_or_else(|| bad("overlap", "out of range"))?;
        let new = CustomerToken {
            id: new_id(),
            token_hash: format::hash(token.expose_secret()),
            last4: format::last4(token.expose_secret()),
            created_at: now,
            created_by: person.id(),
            expires_at,
            replaces: Some(old.id.clone()),
            last_used_at: None,
            expiry_warned_at: None,
            rotation_warned_at: None,
            ..old.clone()
        };
        let ev = self
            .event("customer_token.rotate", "ok", person, meta, &old)
            .detail("replacement", new.id.clone())
            .detail("retiring_until", rfc3339(retiring_until.min(old.expires_at)));
        self.audit.record(ev).await?;
        if !self.store.ct_rotate(&old.id, &new, retiring_until).await? {
            return Err(CtError::Conflict(format!("token `{}` changed meanwhile (rotated or revoked); nothing was done", old.id)));
        }
        self.invalidate(&old.token_hash).await;
        let old = self.store.ct_get(&old.id).await?.unwrap_or(old);
        Ok(Rotated { token, new: self.view(new, now), old: self.view(old, now) })
    }

    /// Revokes a token now. Returns once no replica can still accept it
    /// (after the introspection cache's lifetime).
    pub async fn revoke(&self, person: &Person, meta: &RequestMeta, account: &str, id: &str) -> Result<TokenView, CtError> {
        let acc = self.account(person, account)?;
        let t = self.find(&acc, id).await?;
        let ctx = self.context(meta, &t.scopes, Duration::ZERO, &t.environment, false);
        self.decide(person, meta, TokenAction::Revoke, &acc, ctx)?;
        let now = self.now();
        match TokenState::at(&t, now) {
            TokenState::Revoked => return Ok(self.view(t, now)),
            TokenState::Expired => {
                return Err(CtError::Conflict(format!("token `{}` already expired; it is refused everywhere", t.id)))
            }
            _ => {}
        }
        let done = self.store.ct_revoke(&t.id, now, &person.id()).await?;
        let ev = self.event("customer_token.revoke", if done { "ok" } else { "conflict" }, person, meta, &t);
        self.audit.note(ev);
        if !done {
            let current = self.store.ct_get(&t.id).await?.unwrap_or(t);
            return match TokenState::at(&current, now) {
                TokenState::Revoked => Ok(self.view(current, now)),
                s => Err(CtError::Conflict(format!("token `{}` is {}; nothing was done", current.id, s.as_str()))),
            };
        }
        self.invalidate(&t.token_hash).await;
        // Every replica's cache entries are from reads that started less
        // than the TTL ago: after the TTL, none predates the revocation.
        tokio::time::sleep(self.cfg.introspection_cache_ttl).await;
        self.invalidate(&t.token_hash).await;
        let current = self.store.ct_get(&t.id).await?.unwrap_or(t);
        Ok(self.view(current, now))
    }

    async fn invalidate(&self, hash: &str) {
        if let Some(c) = &self.cache {
            c.invalidate(hash).await;
        }
    }

    // ------------------------------------------------------ introspection

    /// The resource server with this client id and secret (the secret
    /// compared in constant time, as SHA-256).
    pub fn resource_server(&self, name: &str, secret: &SecretString) -> Option<&ResourceServer> {
        use sha2::Digest;
        let presented: [u8; 32] = sha2::Sha256::digest(secret.expose_secret().as_bytes()).into();
        let rs = self.resource_servers.iter().find(|r| r.name == name)?;
        bool::from(rs.secret_sha256.ct_eq(&presented)).then_some(rs)
    }

    /// RFC 7662: the token, if it is active for this resource server.
    /// A look-alike (wrong prefix, length or checksum) costs no store read;
    /// a known token's use is recorded (queued), accepted or not.
    pub async fn introspect(&self, rs: &ResourceServer, token: &SecretString, info: UseInfo) -> Result<Option<ActiveToken>, CtError> {
        let m = crate::telemetry::metrics();
        let presented = token.expose_secret();
        if !format::well_formed(&self.cfg.token_prefix, presented) {
            m.customer_token_introspections.with_label_values(&["malformed"]).inc();
            return Ok(None);
        }
        let hash = format::hash(presented);
        let cached = match &self.cache {
            Some(c) => {
                let store = self.store.clone();
                let h = hash.clone();
                c.try_get_with(hash.clone(), async move {
                    let read_started = Instant::now();
                    store.ct_by_hash(&h).await.map(|token| Arc::new(Cached { token, read_started }))
                })
                .await
                .map_err(|e| CtError::Store(StoreError::Unavailable(e.to_string())))?
            }
            None => Arc::new(Cached { token: self.store.ct_by_hash(&hash).await?, read_started: Instant::now() }),
        };
        let Some(t) = cached.token.as_ref() else {
            m.customer_token_introspections.with_label_values(&["unknown"]).inc();
            return Ok(None);
        };
        if !bool::from(t.token_hash.as_bytes().ct_eq(hash.as_bytes())) {
            return Ok(None);
        }
        let now = self.now();
        let allowed_env = rs.environments.is_empty() || rs.environments.contains(&t.environment);
        let ok = allowed_env && t.works_at(now);
        let ua: String = info.user_agent.chars().filter(|c| !c.is_control()).take(MAX_USER_AGENT).collect();
        self.usage.record(TokenUse { token_id: t.id.clone(), at: now, source: info.source.to_string(), user_agent: ua, ok });
        m.customer_token_introspections.with_label_values(&[if ok { "active" } else { "inactive" }]).inc();
        if !ok {
            return Ok(None);
        }
        Ok(Some(ActiveToken {
            id: t.id.clone(),
            account: t.account.clone(),
            environment: t.environment.clone(),
            scopes: t.scopes.clone(),
            issued_at: t.created_at,
            expires_at: t.ends_at(),
        }))
    }

    // -------------------------------------------------------- maintenance

    /// Warnings (each once per token and kind, audited), per-account
    /// metrics, and history retention. Run every `warn_interval`.
    pub async fn maintain(&self) -> Result<usize, CtError> {
        let now = self.now();
        let exp_bound = crate::duration::add(now, self.cfg.warn_before_expiry).unwrap_or(now);
        let created_bound = crate::duration::sub(now, self.cfg.rotate_after).unwrap_or(now);
        let mut warned = 0;
        for t in self.store.ct_needing_warning(now, exp_bound, created_bound, WARN_BATCH).await? {
            let view = self.view(t.clone(), now);
            for w in &view.warnings {
                let (kind, already) = match w {
                    Warning::ExpiresSoon { .. } => (TokenWarning::Expiry, t.expiry_warned_at.is_some()),
                    Warning::NotRotated { .. } => (TokenWarning::Rotation, t.rotation_warned_at.is_some()),
                };
                if already || !self.store.ct_mark_warned(&t.id, kind, now).await? {
                    continue;
                }
                warned += 1;
                let ev = Event::new("customer_token.warning", "ok")
                    .actor(crate::audit::ActorInfo::system("customer-tokens"))
                    .detail("account", t.account.clone())
                    .detail("environment", t.environment.clone())
                    .detail("customer_token", t.id.clone())
                    .detail("token_name", t.name.clone())
                    .detail("owner", t.owner.clone())
                    .detail("warning", w.kind())
                    .detail("message", w.message());
                self.audit.note(ev);
            }
        }
        let counts = self.store.ct_counts(now, exp_bound, created_bound).await?;
        let m = crate::telemetry::metrics();
        m.customer_tokens.reset();
        m.customer_token_warnings.reset();
        for c in counts {
            m.customer_tokens.with_label_values(&[&c.account, "active"]).set(c.active);
            m.customer_tokens.with_label_values(&[&c.account, "retiring"]).set(c.retiring);
            m.customer_token_warnings.with_label_values(&[&c.account, "expires_soon"]).set(c.expiring);
            m.customer_token_warnings.with_label_values(&[&c.account, "not_rotated"]).set(c.not_rotated);
        }
        let ended_before = crate::duration::sub(now, self.cfg.history_retention).unwrap_or(now);
        let days_before = crate::duration::sub(now, Duration::from_secs(u64::from(self.cfg.usage_days) * 86400)).unwrap_or(now);
        let d = days_before.date();
        let day = format!("{:04}-{:02}-{:02}", d.year(), u8::from(d.month()), d.day());
        self.store.ct_prune(ended_before, &day, 500).await?;
        Ok(warned)
    }

    /// Runs [`CustomerTokens::maintain`] every `warn_interval` until shutdown.
    pub async fn run(self: Arc<Self>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        loop {
            if let Err(e) = self.maintain().await {
                tracing::warn!(error = %e, "customer token maintenance failed; will retry");
            }
            tokio::select! {
                _ = tokio::time::sleep(self.cfg.warn_interval) => {}
                r = shutdown.changed() => {
                    if r.is_err() || *shutdown.borrow() { break; }
                }
            }
        }
    }
}

/// A fresh public token id: `ctk_` and 16 random hex digits.
fn new_id() -> String {
    format!("ctk_{}", hex::encode(rand::random::<[u8; 8]>()))
}

/// RFC 3339 (what the API and the audit write).
pub fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_written_in_words() {
        let t = time::macros::datetime!(2027-03-12 10:00 UTC);
        assert_eq!(date_words(t), "12 March 2027");
    }
}
