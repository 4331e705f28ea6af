//! An issuer's signing keys: fetched (discovery, JWKS URL or file), cached
//! with moka (one fetch in flight per issuer, however many requests wait),
//! refetched on an unknown `kid` at most once per `min_refetch_interval`, and
//! kept as "last good" when the issuer is down, for at most
//! `jwks_max_stale` after it was fetched (then keys are refused: a key the
//! issuer rotated out must not stay valid forever while it is unreachable).
//! A failed fetch is remembered for `jwks_failure_cache`: until then no
//! request, however many name the issuer, triggers another fetch.
//!
//! What a failure says to a client is generic ([`KeyLookup::Unavailable`]);
//! the fetch error (URLs, status, transport detail) goes to the log only.
//!
//! Keys come only from the configured source: a token's `jku`, `x5u` or
//! embedded `jwk` header is never followed.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{AlgorithmParameters, JwkSet};
use jsonwebtoken::DecodingKey;

use super::KeySource;

const MAX_JWKS_BYTES: usize = 1024 * 1024;

/// A parsed key set.
pub struct KeySet {
    keys: HashMap<String, Arc<DecodingKey>>,
}

impl KeySet {
    pub fn parse(json: &[u8]) -> Result<KeySet, String> {
        let set: JwkSet = serde_json::from_slice(json).map_err(|e| format!("not a JWKS: {e}"))?;
        let mut keys = HashMap::new();
        for jwk in &set.keys {
            // Symmetric keys have no place in a public key set.
            if matches!(jwk.algorithm, AlgorithmParameters::OctetKey(_)) {
                continue;
            }
            let Some(kid) = jwk.common.key_id.clone() else { continue };
            match DecodingKey::from_jwk(jwk) {
                Ok(k) => {
                    keys.insert(kid, Arc::new(k));
                }
                Err(e) => tracing::warn!(kid = %kid, error = %e, "skipping unusable key in JWKS"),
            }
        }
        Ok(KeySet { keys })
    }

    pub fn get(&self, kid: &str) -> Option<Arc<DecodingKey>> {
        self.keys.get(kid).cloned()
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

/// How long fetched, failed and stale key sets are used.
#[derive(Debug, Clone, Copy)]
pub struct KeyTimes {
    /// A fetched key set is used this long before it is refreshed.
    pub ttl: Duration,
    /// On an unknown `kid`, refetch at most this often.
    pub min_refetch: Duration,
    /// After a failed fetch, no new fetch for this long.
    pub failure_cache: Duration,
    /// The last good key set is used while the issuer is unreachable for at
    /// most this long after it was fetched.
    pub max_stale: Duration,
}

/// Where and how one issuer's keys are fetched.
pub struct IssuerKeys {
    /// The issuer's name in the config (the metric label).
    name: String,
    issuer: String,
    source: KeySource,
    http: reqwest::Client,
    cache: moka::future::Cache<(), Arc<KeySet>>,
    /// The last key set fetched, and when.
    last_good: Mutex<Option<(Arc<KeySet>, Instant)>>,
    /// When the last fetch failed (cleared by a success).
    last_failure: Mutex<Option<Instant>>,
    last_forced: Mutex<Option<Instant>>,
    times: KeyTimes,
}

/// Outcome of a key lookup.
pub enum KeyLookup {
    Found(Arc<DecodingKey>),
    UnknownKid,
    /// A reason safe for any client (no URL, status or transport detail).
    Unavailable(String),
}

impl IssuerKeys {
    /// Keys of the issuer configured as `name` with exact `iss` `issuer`.
    pub fn new(name: &str, issuer: &str, source: KeySource, http: reqwest::Client, times: KeyTimes) -> Self {
        let m = crate::telemetry::metrics();
        for outcome in ["ok", "error"] {
            m.jwks_refreshes.with_label_values(&[name, outcome]);
        }
        IssuerKeys {
            name: name.to_owned(),
            issuer: issuer.trim_end_matches('/').to_owned(),
            source,
            http,
            cache: moka::future::Cache::builder().max_capacity(1).time_to_live(times.ttl).build(),
            last_good: Mutex::new(None),
            last_failure: Mutex::new(None),
            last_forced: Mutex::new(None),
            times,
        }
    }

    /// The key set to use now: the cached one, else a fetch (one in flight
    /// however many wait) unless one failed within `failure_cache`, else the
    /// last good set while it is younger than `max_stale`.
    async fn current(&self) -> Result<Arc<KeySet>, String> {
        if let Some(ks) = self.cache.get(&()).await {
            return Ok(ks);
        }
        let failed_recently = self
            .last_failure
            .lock()
            .ok()
            .and_then(|g| *g)
            .is_some_and(|t| t.elapsed() < self.times.failure_cache);
        if failed_recently {
            return self.fallback();
        }
        let fetched = self
            .cache
            .try_get_with((), async {
                match self.fetch().await {
                    Ok(ks) => {
                        crate::telemetry::metrics().jwks_refresh(&self.name, "ok");
                        Ok(Arc::new(ks))
                    }
                    Err(e) => {
                        // The detail is for operators only.
                        crate::telemetry::metrics().jwks_refresh(&self.name, "error");
                        tracing::warn!(issuer = %self.issuer, error = %e, "key set fetch failed");
                        if let Ok(mut g) = self.last_failure.lock() {
                            *g = Some(Instant::now());
                        }
                        Err(e)
                    }
                }
            })
            .await;
        match fetched {
            Ok(ks) => {
                if let Ok(mut g) = self.last_good.lock() {
                    // A waiter of the same fetch must not reset the age.
                    if !g.as_ref().is_some_and(|(old, _)| Arc::ptr_eq(old, &ks)) {
                        *g = Some((ks.clone(), Instant::now()));
                    }
                }
                if let Ok(mut g) = self.last_failure.lock() {
                    *g = None;
                }
                Ok(ks)
            }
            Err(_) => self.fallback(),
        }
    }

    /// The last good key set while it is young enough, else a client-safe
    /// reason.
    fn fallback(&self) -> Result<Arc<KeySet>, String> {
        let last = self.last_good.lock().ok().and_then(|g| g.clone());
        match last {
            Some((ks, at)) if at.elapsed() <= self.times.max_stale => {
                tracing::debug!(issuer = %self.issuer, "key refresh failed; using last good key set");
                Ok(ks)
            }
            Some(_) => Err(format!(
                "the issuer's key set could not be refreshed for more than {} (jwks_max_stale); keys that old are not trusted",
                crate::fmt_duration(self.times.max_stale)
            )),
            None => Err("the issuer's key set could not be fetched; try again later".into()),
        }
    }

    /// Finds the key for `kid`, refetching once (rate-limited) if unknown.
    pub async fn key(&self, kid: &str) -> KeyLookup {
        let ks = match self.current().await {
            Ok(ks) => ks,
            Err(e) => return KeyLookup::Unavailable(e),
        };
        if let Some(k) = ks.get(kid) {
            return KeyLookup::Found(k);
        }
        let may_refetch = match self.last_forced.lock() {
            Ok(mut g) => {
                let ok = g.is_none_or(|t| t.elapsed() >= self.times.min_refetch);
                if ok {
                    *g = Some(Instant::now());
                }
                ok
            }
            Err(_) => false,
        };
        if !may_refetch {
            return KeyLookup::UnknownKid;
        }
        tracing::debug!(issuer = %self.issuer, kid = %kid, "unknown key id, refetching key set");
        self.cache.invalidate(&()).await;
        match self.current().await {
            Ok(ks) => ks.get(kid).map_or(KeyLookup::UnknownKid, KeyLookup::Found),
            Err(e) => KeyLookup::Unavailable(e),
        }
    }

    async fn fetch(&self) -> Result<KeySet, String> {
        let bytes = match &self.source {
            KeySource::JwksFile(p) => read_file(p)?,
            KeySource::JwksUrl(u) => self.get(u).await?,
            KeySource::Discovery => {
                let url = format!("{}/.well-known/openid-configuration", self.issuer);
                let doc: serde_json::Value = serde_json::from_slice(&self.get(&url).await?)
                    .map_err(|e| format!("discovery document at {url} is not JSON: {e}"))?;
                let jwks_uri = doc
                    .get("jwks_uri")
                    .and_then(|v| v.as_str())
                    .ok_or_else(|| format!("discovery document at {url} has no jwks_uri"))?
                    .to_owned();
                self.get(&jwks_uri).await?
            }
        };
        let ks = KeySet::parse(&bytes)?;
        if ks.is_empty() {
            return Err("key set has no usable keys with a kid".into());
        }
        Ok(ks)
    }

    async fn get(&self, url: &str) -> Result<Vec<u8>, String> {
        let resp = self
            .http
            .get(url)
            .send()
            .await
            .map_err(|e| format!("fetching {url}: {e}"))?;
        if !resp.status().is_success() {
            return Err(format!("fetching {url}: HTTP {}", resp.status()));
        }
        if resp.content_length().is_some_and(|n| n as usize > MAX_JWKS_BYTES) {
            return Err(format!("fetching {url}: response larger than {MAX_JWKS_BYTES} bytes"));
        }
        let body = resp.bytes().await.map_err(|e| format!("fetching {url}: {e}"))?;
        if body.len() > MAX_JWKS_BYTES {
            return Err(format!("fetching {url}: response larger than {MAX_JWKS_BYTES} bytes"));
        }
        Ok(body.to_vec())
    }
}

fn read_file(p: &PathBuf) -> Result<Vec<u8>, String> {
    std::fs::read(p).map_err(|e| format!("reading JWKS file {}: {e}", p.display()))
}
