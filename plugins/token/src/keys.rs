//! Signing keys: creation, rotation, the in-memory cache and JWK export.
//!
//! Owns everything under the `keys/`, `keyindex/` and `rotations/` state
//! prefixes. Knows nothing of roles, claims or revocation. Private keys live in
//! `secrecy` types and, parsed once per signing key, in a `ring` key pair that
//! never leaves this module (parsing a P-256 PKCS#8 key computes its public
//! point: per signature it was about as costly as the signature).
//!
//! State layout (shared by every replica of a connection):
//! - `keys/<kid>` (secret): the PKCS#8 DER private key.
//! - `keyindex/<created unix secs, 12 digits>-<kid>` (plain): [`IndexEntry`].
//!   Keys are ordered by their `generation` in the rotation chain, then by
//!   creation time: two keys made in the same second (an `algorithm` change
//!   right after the first key) still have a definite newest.
//! - `rotations/<previous kid | genesis>` (plain): the [`IndexEntry`] of the key
//!   that replaced `previous`. Written with `put_if_absent` before the index
//!   entry, so replicas racing to rotate agree on one successor; a loser adopts
//!   the winner's entry (and finishes writing its index entry, should the
//!   winner have died half-way).

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::DecodingKey;
use ring::signature::{EcdsaKeyPair, Ed25519KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use lessor_plugin::secrecy::{ExposeSecret, SecretBox};
use lessor_plugin::{PluginError, StateError, StateStore};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use crate::config::Algorithm;

const INDEX_PREFIX: &str = "keyindex/";
const ROTATION_PREFIX: &str = "rotations/";
const SECRET_PREFIX: &str = "keys/";

/// How long a replica signs from its cached view of the index before reading
/// it again. Another replica may have rotated in the meantime.
pub const INDEX_REFRESH: Duration = Duration::from_secs(30);

/// The JWKS is served from memory; the index is read again for it at most
/// this often (per replica, concurrent callers sharing one read), so JWKS
/// requests cost no state read each. A key another replica just created
/// shows in this replica's JWKS within this.
pub const RELOAD_MIN: Duration = Duration::from_secs(1);

/// Index reads for kids the cache does not know (a key another replica just
/// created, or junk): a burst of this many, then [`UNKNOWN_KID_READS_PER_SEC`].
/// Beyond that an unknown kid is answered "not ours" from memory, so tokens
/// naming random kids cannot turn into a state read each.
pub const UNKNOWN_KID_READ_BURST: u32 = 3;
/// See [`UNKNOWN_KID_READ_BURST`].
pub const UNKNOWN_KID_READS_PER_SEC: u32 = 1;

/// Added to an old key's JWKS retention, on top of the longest role TTL: covers
/// [`INDEX_REFRESH`] (a replica may sign with the old key that long after the
/// rotation) and clock skew between replicas.
pub const JWKS_GRACE: Duration = Duration::from_secs(60);

/// The time source: the core's ([`lessor_plugin::PluginContext::clock`]);
/// tests move it instead of sleeping.
pub use lessor_plugin::Clock;

/// A public signing key as published in the JWKS (RFC 7517).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Jwk {
    pub kty: String,
    pub crv: String,
    pub x: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub y: Option<String>,
    #[serde(rename = "use")]
    pub use_: String,
    pub alg: String,
    pub kid: String,
}

/// One `keyindex/` entry: public facts about a signing key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexEntry {
    pub kid: String,
    pub alg: Algorithm,
    /// Unix seconds.
    pub created_at: i64,
    /// Position in the rotation chain (the first key is 1, its successor 2).
    /// Orders keys created within the same second.
    #[serde(default)]
    pub generation: u64,
    pub public_jwk: Jwk,
}

impl IndexEntry {
    fn index_key(&self) -> String {
        format!("{INDEX_PREFIX}{:012}-{}", self.created_at.max(0), self.kid)
    }
}

/// A key as the cache holds it: its public facts and a verifier.
pub struct PublicKey {
    pub entry: IndexEntry,
    pub created_at: OffsetDateTime,
    pub decoding: DecodingKey,
}

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PublicKey")
            .field("entry", &self.entry)
            .finish_non_exhaustive()
    }
}

/// The private half of the current key.
pub struct Signer {
    pub kid: String,
    pub alg: Algorithm,
    pair: KeyPair,
}

/// A parsed private key (ring's types print no secret in `Debug`, and
/// `Signer`'s `Debug` shows neither).
enum KeyPair {
    Es256(EcdsaKeyPair),
    EdDsa(Ed25519KeyPair),
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .finish_non_exhaustive()
    }
}

impl Signer {
    /// The signer of key `kid` from its PKCS#8 DER.
    pub fn new(kid: String, alg: Algorithm, pkcs8: &SecretBox<Vec<u8>>) -> Result<Signer, PluginError> {
        let der = pkcs8.expose_secret();
        let pair = match alg {
            Algorithm::ES256 => EcdsaKeyPair::from_pkcs8(
                &ECDSA_P256_SHA256_FIXED_SIGNING,
                der,
                &ring::rand::SystemRandom::new(),
            )
            .map(KeyPair::Es256)
            .map_err(|e| e.to_string()),
            Algorithm::EdDSA => Ed25519KeyPair::from_pkcs8_maybe_unchecked(der)
                .map(KeyPair::EdDsa)
                .map_err(|e| e.to_string()),
        }
        .map_err(|e| {
            PluginError::Permanent(format!(
                "private key of signing key `{kid}` is not a usable {alg:?} PKCS#8 key: {e}"
            ))
        })?;
        Ok(Signer { kid, alg, pair })
    }

    /// Signs `claims` (a compact JWS: header `alg`, `typ` and `kid`).
    pub fn sign<T: Serialize>(&self, claims: &T) -> Result<String, PluginError> {
        let failed = |e: String| {
            PluginError::Permanent(format!("signing with key `{}` failed: {e}", self.kid))
        };
        let alg = match self.alg {
            Algorithm::ES256 => jsonwebtoken::Algorithm::ES256,
            Algorithm::EdDSA => jsonwebtoken::Algorithm::EdDSA,
        };
        let mut header = jsonwebtoken::Header::new(alg);
        header.kid = Some(self.kid.clone());
        let part = |v: Result<Vec<u8>, serde_json::Error>| {
            v.map(|json| URL_SAFE_NO_PAD.encode(json)).map_err(|e| failed(e.to_string()))
        };
        let mut jws = part(serde_json::to_vec(&header))?;
        jws.push('.');
        jws.push_str(&part(serde_json::to_vec(claims))?);
        let signature = match &self.pair {
            KeyPair::Es256(k) => k
                .sign(&ring::rand::SystemRandom::new(), jws.as_bytes())
                .map_err(|e| failed(e.to_string()))?
                .as_ref()
                .to_vec(),
            KeyPair::EdDsa(k) => k.sign(jws.as_bytes()).as_ref().to_vec(),
        };
        jws.push('.');
        jws.push_str(&URL_SAFE_NO_PAD.encode(signature));
        Ok(jws)
    }
}

/// Whether `kid` has the shape of a kid this module makes (16 lowercase hex),
/// so junk never costs a state read.
pub fn looks_like_kid(kid: &str) -> bool {
    kid.len() == 16
        && kid
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn kid_of(public_raw: &[u8]) -> String {
    let digest = Sha256::digest(public_raw);
    hex::encode(&digest[..8])
}

fn jwk_of(alg: Algorithm, public_raw: &[u8], kid: &str) -> Result<Jwk, PluginError> {
    let (kty, crv, x, y) = match alg {
        Algorithm::ES256 => {
            // Uncompressed SEC1 point: 0x04 || x (32) || y (32).
            if public_raw.len() != 65 || public_raw[0] != 0x04 {
                return Err(PluginError::Permanent(format!(
                    "P-256 public key has an unexpected encoding ({} bytes)",
                    public_raw.len()
                )));
            }
            ("EC", "P-256", &public_raw[1..33], Some(&public_raw[33..65]))
        }
        Algorithm::EdDSA => {
            if public_raw.len() != 32 {
                return Err(PluginError::Permanent(format!(
                    "Ed25519 public key has an unexpected length ({} bytes)",
                    public_raw.len()
                )));
            }
            ("OKP", "Ed25519", public_raw, None)
        }
    };
    Ok(Jwk {
        kty: kty.into(),
        crv: crv.into(),
        x: URL_SAFE_NO_PAD.encode(x),
        y: y.map(|y| URL_SAFE_NO_PAD.encode(y)),
        use_: "sig".into(),
        alg: alg.as_str().into(),
        kid: kid.into(),
    })
}

/// Checks an index entry read from state and builds its verifier. Refuses
/// entries whose JWK does not match their kid or algorithm.
fn verifier_of(entry: &IndexEntry) -> Result<(OffsetDateTime, DecodingKey), String> {
    let jwk = &entry.public_jwk;
    if jwk.kid != entry.kid || jwk.alg != entry.alg.as_str() {
        return Err("JWK kid or alg differs from the entry".into());
    }
    let x = URL_SAFE_NO_PAD
        .decode(&jwk.x)
        .map_err(|e| format!("JWK x: {e}"))?;
    let (raw, decoding) = match (entry.alg, jwk.kty.as_str(), jwk.crv.as_str(), &jwk.y) {
        (Algorithm::ES256, "EC", "P-256", Some(y_b64)) => {
            let y = URL_SAFE_NO_PAD
                .decode(y_b64)
                .map_err(|e| format!("JWK y: {e}"))?;
            let mut raw = vec![0x04];
            raw.extend_from_slice(&x);
            raw.extend_from_slice(&y);
            let key = DecodingKey::from_ec_components(&jwk.x, y_b64).map_err(|e| e.to_string())?;
            (raw, key)
        }
        (Algorithm::EdDSA, "OKP", "Ed25519", None) => {
            let key = DecodingKey::from_ed_components(&jwk.x).map_err(|e| e.to_string())?;
            (x, key)
        }
        _ => return Err("JWK kty/crv do not fit the algorithm".into()),
    };
    if kid_of(&raw) != entry.kid {
        return Err("kid is not the hash of the public key".into());
    }
    let created_at =
        OffsetDateTime::from_unix_timestamp(entry.created_at).map_err(|e| e.to_string())?;
    Ok((created_at, decoding))
}

fn humanize(d: Duration) -> String {
    humantime::format_duration(Duration::from_secs(d.as_secs())).to_string()
}

#[derive(Default)]
struct Cache {
    /// Oldest first; the last one is the current key.
    keys: Vec<Arc<PublicKey>>,
    loaded_at: Option<OffsetDateTime>,
    signer: Option<Arc<Signer>>,
}

/// The connection's signing keys, shared by every replica through state.
pub struct KeyRing {
    state: Arc<dyn StateStore>,
    clock: Clock,
    algorithm: Algorithm,
    rotate_every: Duration,
    /// How long an old key stays published after its successor was created.
    retention: Duration,
    cache: RwLock<Cache>,
    /// One rotation at a time within this process (replicas use `rotations/`).
    rotating: tokio::sync::Mutex<()>,
    /// One index read at a time for [`KeyRing::recent`] and [`KeyRing::find`].
    reloading: tokio::sync::Mutex<()>,
    /// Limits index reads caused by unknown kids.
    unknown_kid_reads: governor::DefaultDirectRateLimiter,
}

impl KeyRing {
    /// Loads the keys and makes sure a current key of the right age exists.
    /// A change of `algorithm` takes effect here, with a new key.
    pub async fn open(
        state: Arc<dyn StateStore>,
        clock: Clock,
        algorithm: Algorithm,
        rotate_every: Duration,
        longest_ttl: Duration,
    ) -> Result<Self, PluginError> {
        let ring = KeyRing {
            state,
            clock,
            algorithm,
            rotate_every,
            retention: longest_ttl + JWKS_GRACE,
            cache: RwLock::new(Cache::default()),
            rotating: tokio::sync::Mutex::new(()),
            reloading: tokio::sync::Mutex::new(()),
            unknown_kid_reads: governor::RateLimiter::direct(
                governor::Quota::per_second(nonzero(UNKNOWN_KID_READS_PER_SEC))
                    .allow_burst(nonzero(UNKNOWN_KID_READ_BURST)),
            ),
        };
        ring.rotate_if(|newest, ring| match newest {
            None => true,
            Some(k) => k.entry.alg != ring.algorithm || ring.is_due(k),
        })
        .await?;
        Ok(ring)
    }

    fn read_cache(&self) -> std::sync::RwLockReadGuard<'_, Cache> {
        // The cache is replaced wholesale, never left half-written.
        self.cache.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write_cache(&self) -> std::sync::RwLockWriteGuard<'_, Cache> {
        self.cache.write().unwrap_or_else(|e| e.into_inner())
    }

    fn is_due(&self, key: &PublicKey) -> bool {
        (self.clock)() - key.created_at >= self.rotate_every
    }

    /// The cached keys when they were read less than [`RELOAD_MIN`] ago.
    fn cached_if_recent(&self) -> Option<Vec<Arc<PublicKey>>> {
        let now = (self.clock)();
        let cache = self.read_cache();
        let recent = cache
            .loaded_at
            .is_some_and(|t| now - t < RELOAD_MIN && now >= t);
        recent.then(|| cache.keys.clone())
    }

    /// The keys, oldest first, read again only when the cache is older than
    /// [`RELOAD_MIN`]; concurrent callers wait for one read.
    async fn recent(&self) -> Result<Vec<Arc<PublicKey>>, PluginError> {
        if let Some(keys) = self.cached_if_recent() {
            return Ok(keys);
        }
        let _guard = self.reloading.lock().await;
        if let Some(keys) = self.cached_if_recent() {
            return Ok(keys);
        }
        self.reload().await
    }

    /// Reads the index again and returns the keys, oldest first.
    pub async fn reload(&self) -> Result<Vec<Arc<PublicKey>>, PluginError> {
        let listed = self.state.list(INDEX_PREFIX).await?;
        let known: HashMap<String, Arc<PublicKey>> = self
            .read_cache()
            .keys
            .iter()
            .map(|k| (k.entry.kid.clone(), k.clone()))
            .collect();
        let mut keys = Vec::with_capacity(listed.len());
        for (name, bytes) in listed {
            let entry: IndexEntry = match serde_json::from_slice(&bytes) {
                Ok(e) => e,
                Err(e) => {
                    tracing::warn!(key = %name, error = %e, "unreadable signing key index entry, skipped");
                    continue;
                }
            };
            if let Some(k) = known.get(&entry.kid) {
                keys.push(k.clone());
                continue;
            }
            match verifier_of(&entry) {
                Ok((created_at, decoding)) => keys.push(Arc::new(PublicKey {
                    entry,
                    created_at,
                    decoding,
                })),
                Err(e) => {
                    tracing::warn!(key = %name, error = %e, "invalid signing key index entry, skipped")
                }
            }
        }
        keys.sort_by(|a, b| {
            (a.entry.generation, a.entry.created_at, &a.entry.kid).cmp(&(
                b.entry.generation,
                b.entry.created_at,
                &b.entry.kid,
            ))
        });
        keys.dedup_by(|a, b| a.entry.kid == b.entry.kid);
        let mut cache = self.write_cache();
        cache.keys = keys.clone();
        cache.loaded_at = Some((self.clock)());
        Ok(keys)
    }

    /// Creates a new key if `needed(newest)` says so, after re-reading the
    /// index under the rotation lock. Returns the keys afterwards.
    async fn rotate_if(
        &self,
        needed: impl Fn(Option<&PublicKey>, &Self) -> bool,
    ) -> Result<Vec<Arc<PublicKey>>, PluginError> {
        let _guard = self.rotating.lock().await;
        let keys = self.reload().await?;
        let newest = keys.last().map(Arc::as_ref);
        if !needed(newest, self) {
            return Ok(keys);
        }
        let previous = newest.map(|k| (k.entry.kid.clone(), k.entry.generation));
        self.create_successor(previous).await?;
        self.reload().await
    }

    async fn create_successor(&self, previous: Option<(String, u64)>) -> Result<(), PluginError> {
        let (previous, generation) = match &previous {
            Some((kid, generation)) => (Some(kid.as_str()), generation + 1),
            None => (None, 1),
        };
        let alg = match self.algorithm {
            Algorithm::ES256 => &rcgen::PKCS_ECDSA_P256_SHA256,
            Algorithm::EdDSA => &rcgen::PKCS_ED25519,
        };
        let pair = rcgen::KeyPair::generate_for(alg).map_err(|e| {
            PluginError::Permanent(format!(
                "generating a {} signing key failed: {e}",
                self.algorithm
            ))
        })?;
        let pkcs8 = SecretBox::new(Box::new(pair.serialize_der()));
        let public_raw = pair.public_key_raw().to_vec();
        drop(pair);
        let kid = kid_of(&public_raw);
        let entry = IndexEntry {
            kid: kid.clone(),
            alg: self.algorithm,
            created_at: (self.clock)().unix_timestamp(),
            generation,
            public_jwk: jwk_of(self.algorithm, &public_raw, &kid)?,
        };
        let encoded = serde_json::to_vec(&entry)
            .map_err(|e| StateError(format!("encoding key index entry: {e}")))?;

        // The private key first: whoever reads the rotation slot or the index
        // can rely on it being there.
        self.state
            .put_secret_if_absent(&format!("{SECRET_PREFIX}{kid}"), &pkcs8)
            .await?;
        let slot = format!("{ROTATION_PREFIX}{}", previous.unwrap_or("genesis"));
        let (entry, encoded) = if self.state.put_if_absent(&slot, &encoded).await? {
            tracing::info!(kid = %kid, alg = %self.algorithm, previous = previous.unwrap_or("-"), "signing key created");
            (entry, encoded)
        } else {
            // Another replica rotated first: adopt its key (ours stays unused).
            let theirs = self
                .state
                .get(&slot)
                .await?
                .ok_or_else(|| StateError(format!("rotation slot `{slot}` vanished")))?;
            let entry: IndexEntry = serde_json::from_slice(&theirs)
                .map_err(|e| StateError(format!("rotation slot `{slot}` is unreadable: {e}")))?;
            tracing::info!(kid = %entry.kid, "another replica rotated the signing key first; using its key");
            (entry, theirs)
        };
        self.state
            .put_if_absent(&entry.index_key(), &encoded)
            .await?;
        Ok(())
    }

    /// The key to sign with now: reads the index again when the cache is older
    /// than [`INDEX_REFRESH`], and rotates when the current key is due.
    pub async fn signer(&self) -> Result<Arc<Signer>, PluginError> {
        let now = (self.clock)();
        let (fresh, current) = {
            let cache = self.read_cache();
            let fresh = cache.loaded_at.is_some_and(|t| now - t < INDEX_REFRESH);
            (fresh, cache.keys.last().cloned())
        };
        let mut current = match current {
            Some(k) if fresh => k,
            _ => self.reload().await?.last().cloned().ok_or_else(no_key)?,
        };
        if self.is_due(&current) {
            let keys = self
                .rotate_if(|newest, ring| newest.is_none_or(|k| ring.is_due(k)))
                .await?;
            current = keys.last().cloned().ok_or_else(no_key)?;
        }
        if let Some(s) = self
            .read_cache()
            .signer
            .as_ref()
            .filter(|s| s.kid == current.entry.kid)
        {
            return Ok(s.clone());
        }
        let kid = &current.entry.kid;
        let pkcs8 = self
            .state
            .get_secret(&format!("{SECRET_PREFIX}{kid}"))
            .await?
            .ok_or_else(|| StateError(format!("private key of signing key `{kid}` is missing")))?;
        let signer = Arc::new(Signer::new(kid.clone(), current.entry.alg, &pkcs8)?);
        self.write_cache().signer = Some(signer.clone());
        Ok(signer)
    }

    /// A key of this connection by kid, reading the index again if the cache
    /// does not know it (another replica may have rotated), within the
    /// unknown-kid read limit ([`UNKNOWN_KID_READ_BURST`]); beyond it an
    /// unknown kid is answered from memory.
    pub async fn find(&self, kid: &str) -> Result<Option<Arc<PublicKey>>, PluginError> {
        if !looks_like_kid(kid) {
            return Ok(None);
        }
        let cached = self
            .read_cache()
            .keys
            .iter()
            .find(|k| k.entry.kid == kid)
            .cloned();
        if cached.is_some() {
            return Ok(cached);
        }
        if self.unknown_kid_reads.check().is_err() {
            tracing::debug!(kid = %kid, "unknown key id; index read limit reached, answered from memory");
            return Ok(None);
        }
        let _guard = self.reloading.lock().await;
        let find = |keys: &[Arc<PublicKey>]| keys.iter().find(|k| k.entry.kid == kid).cloned();
        // A concurrent caller may have read the index meanwhile.
        if let Some(k) = find(&self.read_cache().keys) {
            return Ok(Some(k));
        }
        Ok(find(&self.reload().await?))
    }

    /// The keys to publish: the current one, and each older one until its
    /// successor has existed for the retention (the longest token lifetime
    /// plus [`JWKS_GRACE`]). Served from memory, the index read again at most
    /// once per [`RELOAD_MIN`]: this is what resource servers fetch when they
    /// meet an unknown kid, and anyone may fetch it.
    pub async fn published(&self) -> Result<Vec<Jwk>, PluginError> {
        let keys = self.recent().await?;
        let now = (self.clock)();
        let mut out = Vec::new();
        for (i, key) in keys.iter().enumerate() {
            let keep = match keys.get(i + 1) {
                None => true,
                Some(next) => now < next.created_at + self.retention,
            };
            if keep {
                out.push(key.entry.public_jwk.clone());
            }
        }
        Ok(out)
    }

    /// Facts for `validate`: the current key (reading the index), its age,
    /// how many keys are published, and warnings.
    pub async fn summary(&self) -> Result<Summary, PluginError> {
        let published = self.published().await?.len();
        let current = self.read_cache().keys.last().cloned().ok_or_else(no_key)?;
        let age = ((self.clock)() - current.created_at).max(time::Duration::ZERO);
        let age = Duration::try_from(age).unwrap_or_default();
        let mut warnings = Vec::new();
        if current.entry.alg != self.algorithm {
            warnings.push(format!(
                "the current key is {} but `algorithm` is {}; the next rotation makes a {} key",
                current.entry.alg, self.algorithm, self.algorithm
            ));
        }
        Ok(Summary {
            kid: current.entry.kid.clone(),
            alg: current.entry.alg,
            age: humanize(age),
            published,
            rotate_every: humanize(self.rotate_every),
            warnings,
        })
    }
}

fn nonzero(n: u32) -> std::num::NonZeroU32 {
    std::num::NonZeroU32::new(n).unwrap_or(std::num::NonZeroU32::MIN)
}

fn no_key() -> PluginError {
    PluginError::State(StateError("no signing key in state".into()))
}

/// What [`KeyRing::summary`] reports.
#[derive(Debug, Clone)]
pub struct Summary {
    pub kid: String,
    pub alg: Algorithm,
    pub age: String,
    pub published: usize,
    pub rotate_every: String,
    pub warnings: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kid_shape() {
        assert!(looks_like_kid("0123456789abcdef"));
        assert!(!looks_like_kid("0123456789ABCDEF"));
        assert!(!looks_like_kid("0123456789abcde"));
        assert!(!looks_like_kid("../../etc/passwd"));
    }

    #[test]
    fn jwk_round_trips_for_both_algorithms() {
        for (alg, rc) in [
            (Algorithm::ES256, &rcgen::PKCS_ECDSA_P256_SHA256),
            (Algorithm::EdDSA, &rcgen::PKCS_ED25519),
        ] {
            let pair = rcgen::KeyPair::generate_for(rc).unwrap();
            let raw = pair.public_key_raw();
            let kid = kid_of(raw);
            let entry = IndexEntry {
                kid: kid.clone(),
                alg,
                created_at: 1_700_000_000,
                generation: 1,
                public_jwk: jwk_of(alg, raw, &kid).unwrap(),
            };
            verifier_of(&entry).unwrap();
            assert_eq!(entry.index_key(), format!("keyindex/001700000000-{kid}"));

            let mut forged = entry.clone();
            forged.kid = "0000000000000000".into();
            forged.public_jwk.kid = forged.kid.clone();
            assert!(
                verifier_of(&forged).is_err(),
                "a kid that is not the key's hash must be refused"
            );
        }
    }
}
