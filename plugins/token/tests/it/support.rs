//! Shared helpers: a movable clock, plugin construction, issuing, JWKS.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lessor_plugin::secrecy::{ExposeSecret, SecretString};
use lessor_plugin::{
    Introspection, IssueRequest, Issued, LeaseId, MemoryState, Plugin, PluginContext, RoleSpec,
    StateStore, Workload,
};
pub use lessor_token::Clock;
use serde_json::{json, Value};
use time::OffsetDateTime;

pub const ISSUER: &str = "https://lessor.test";
pub const MAX_TTL: Duration = Duration::from_secs(3600);

/// A clock tests move by hand.
pub struct ManualClock(Mutex<OffsetDateTime>);

impl ManualClock {
    pub fn new() -> Arc<Self> {
        // Whole seconds, starting now, so real-time JWT validation agrees.
        let now = OffsetDateTime::now_utc().replace_nanosecond(0).unwrap();
        Arc::new(ManualClock(Mutex::new(now)))
    }

    pub fn advance(&self, d: Duration) {
        *self.0.lock().unwrap() += d;
    }
}

impl ManualClock {
    pub fn now(&self) -> OffsetDateTime {
        *self.0.lock().unwrap()
    }

    /// The plugin's view of this clock.
    pub fn clock(self: &Arc<Self>) -> Clock {
        let me = self.clone();
        Arc::new(move || me.now())
    }
}

pub fn roles() -> Vec<RoleSpec> {
    vec![
        RoleSpec {
            name: "orders".into(),
            scopes: vec!["orders.read".into(), "orders.write".into()],
            max_ttl: MAX_TTL,
            config: json!({"audience": "orders-api", "extra_claims": {"team": "shop"}}),
        },
        RoleSpec {
            name: "plain".into(),
            scopes: vec!["plain.read".into()],
            max_ttl: Duration::from_secs(600),
            config: Value::Null,
        },
    ]
}

pub fn ctx(state: Arc<dyn StateStore>) -> PluginContext {
    PluginContext { state, ..PluginContext::for_tests("tok", ISSUER) }
}

/// A plugin on `state` with the test clock.
pub async fn plugin_on(
    state: Arc<dyn StateStore>,
    clock: Arc<ManualClock>,
    connection: Value,
) -> Arc<dyn Plugin> {
    lessor_token::build(PluginContext { clock: clock.clock(), ..ctx(state) }, connection, roles())
        .await
        .unwrap()
}

/// A fresh plugin on its own state.
pub async fn plugin(connection: Value) -> (Arc<dyn Plugin>, Arc<MemoryState>, Arc<ManualClock>) {
    let state = Arc::new(MemoryState::new());
    let clock = ManualClock::new();
    let p = plugin_on(state.clone(), clock.clone(), connection).await;
    (p, state, clock)
}

pub fn workload() -> Workload {
    Workload {
        issuer: "https://ci.example".into(),
        subject: "repo:shop/orders".into(),
        attributes: BTreeMap::new(),
    }
}

pub fn request(lease: &str, role: &str, expires_at: OffsetDateTime) -> IssueRequest {
    IssueRequest {
        lease_id: LeaseId::new(lease),
        role: role.into(),
        workload: workload(),
        scopes: vec!["orders.read".into(), "orders.write".into()],
        expires_at,
        params: serde_json::Map::new(),
    }
}

/// Issues a token for role `orders` ending `ttl` after the clock's now.
pub async fn issue(p: &dyn Plugin, clock: &ManualClock, lease: &str, ttl: Duration) -> Issued {
    p.issue(request(lease, "orders", clock.now() + ttl))
        .await
        .unwrap()
}

pub fn token_str(issued: &Issued) -> String {
    issued.secret["token"].expose_secret().to_owned()
}

pub fn kid_of(token: &str) -> String {
    jsonwebtoken::decode_header(token).unwrap().kid.unwrap()
}

pub async fn introspect(p: &dyn Plugin, token: &str) -> Option<Introspection> {
    p.introspect(&SecretString::from(token.to_owned()))
        .await
        .unwrap()
}

pub async fn is_active(p: &dyn Plugin, token: &str) -> bool {
    introspect(p, token)
        .await
        .expect("token should be recognised")
        .active
}

/// Asserts the RFC 7662 inactive answer: `active: false` and nothing else.
pub async fn assert_inactive(p: &dyn Plugin, token: &str) {
    let i = introspect(p, token)
        .await
        .expect("token should be recognised");
    assert!(!i.active, "token should be inactive");
    assert!(
        i.claims.is_empty(),
        "an inactive answer carries no claims: {:?}",
        i.claims
    );
}

pub async fn jwks(p: &dyn Plugin) -> jsonwebtoken::jwk::JwkSet {
    let doc = p
        .document(None, "jwks")
        .await
        .unwrap()
        .expect("jwks document");
    assert_eq!(doc.content_type, "application/json");
    serde_json::from_slice(&doc.body).unwrap()
}

pub async fn jwks_kids(p: &dyn Plugin) -> Vec<String> {
    jwks(p)
        .await
        .keys
        .iter()
        .filter_map(|k| k.common.key_id.clone())
        .collect()
}

pub async fn index_len(state: &dyn StateStore) -> usize {
    state.list("keyindex/").await.unwrap().len()
}
