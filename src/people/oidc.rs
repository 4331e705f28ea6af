//! One OpenID Connect provider as lessor's relying party: its discovery
//! document (cached, bounded in size and time, one fetch in flight), its
//! keys (identity's [`IssuerKeys`]: cached, refetched on an unknown `kid`
//! at most once per interval), the token endpoint (authorization code with
//! PKCE, device code), the device authorization endpoint, userinfo, and the
//! ID token checks.
//!
//! ID token checks, in order, each a precise [`LoginRefusal`]: size ->
//! header `alg` in the allow-list -> `kid` known -> signature -> `iss`
//! exactly the configured issuer -> `aud` contains the client id (and `azp`
//! is the client id when there are several audiences or `azp` is present)
//! -> `exp` (with leeway) -> `iat` not in the future -> `nonce` -> subject.
//!
//! Must not import: http, store, policy, lease, config.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use jsonwebtoken::{Algorithm, Validation};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::Value;

use super::config::ProviderConfig;
use super::LoginRefusal;
use crate::identity::jwks::{IssuerKeys, KeyLookup, KeyTimes};
use crate::identity::KeySource;

/// Largest answer read from a provider (discovery, token, userinfo).
const MAX_RESPONSE_BYTES: usize = 64 * 1024;
/// Largest ID token accepted.
const MAX_ID_TOKEN_BYTES: usize = 16 * 1024;
/// After a failed discovery fetch, no new one for this long.
const DISCOVERY_FAILURE_CACHE: Duration = Duration::from_secs(5);
/// Most groups kept from a claim, and longest string claim kept.
const MAX_GROUPS: usize = 256;
const MAX_CLAIM_CHARS: usize = 512;

/// The parts of a discovery document lessor uses.
#[derive(Debug, Clone, Deserialize)]
pub struct Discovery {
    pub issuer: String,
    pub authorization_endpoint: String,
    pub token_endpoint: String,
    #[serde(default)]
    pub userinfo_endpoint: Option<String>,
    #[serde(default)]
    pub device_authorization_endpoint: Option<String>,
}

/// A provider, ready to use.
pub struct Provider {
    pub name: String,
    pub cfg: ProviderConfig,
    secret: SecretString,
    http: reqwest::Client,
    algorithms: Vec<Algorithm>,
    keys: IssuerKeys,
    discovery: moka::future::Cache<(), std::sync::Arc<Discovery>>,
    last_failure: Mutex<Option<Instant>>,
}

/// What the token endpoint answered.
pub struct Tokens {
    pub id_token: SecretString,
    pub access_token: Option<SecretString>,
}

/// The token endpoint's refusal of a device code poll.
pub enum DevicePollError {
    /// `authorization_pending` or `slow_down` (RFC 8628 3.5).
    Pending(&'static str),
    /// `access_denied`, `expired_token` or any other error.
    Refused(LoginRefusal),
}

/// What the device authorization endpoint answered.
#[derive(Debug, Deserialize)]
pub struct DeviceAuthorization {
    pub device_code: String,
    pub user_code: String,
    pub verification_uri: String,
    #[serde(default)]
    pub verification_uri_complete: Option<String>,
    pub expires_in: u64,
    #[serde(default)]
    pub interval: Option<u64>,
}

/// The person attributes read from a verified ID token (and userinfo).
#[derive(Debug, Clone)]
pub struct Claims {
    pub subject: String,
    pub email: String,
    pub name: String,
    pub groups: Vec<String>,
}

fn refused(reason: &'static str, message: impl Into<String>) -> LoginRefusal {
    LoginRefusal { reason, message: message.into() }
}

/// A provider that could not be reached or answered nonsense: the detail
/// is logged, the client hears which provider and what step.
fn unavailable(provider: &str, step: &str, detail: impl std::fmt::Display) -> LoginRefusal {
    tracing::warn!(provider = %provider, step = %step, error = %detail, "OpenID provider call failed");
    refused("provider_unavailable", format!("provider `{provider}`: {step} failed; see lessor's log"))
}

/// Reads at most `max` bytes of a response body.
async fn read_bounded(mut resp: reqwest::Response, max: usize) -> Result<Vec<u8>, String> {
    if resp.content_length().is_some_and(|n| n > max as u64) {
        return Err(format!("answer larger than {max} bytes"));
    }
    let mut out = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| e.to_string())? {
        if out.len().saturating_add(chunk.len()) > max {
            return Err(format!("answer larger than {max} bytes"));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

/// `application/x-www-form-urlencoded` encoding of one value (client
/// credentials in HTTP Basic are form-encoded first, RFC 6749 2.3.1).
fn form_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._*".contains(&b) {
            out.push(b as char);
        } else if b == b' ' {
            out.push('+');
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl Provider {
    pub fn new(name: &str, cfg: ProviderConfig, secret: SecretString, http: reqwest::Client) -> Result<Provider, String> {
        let algorithms = cfg
            .algorithms
            .iter()
            .map(|a| crate::identity::parse_allowed_alg(a))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("people.providers.{name}.algorithms: {e}"))?;
        let ttl = cfg.discovery_cache_ttl;
        let keys = IssuerKeys::new(
            &format!("people-{name}"),
            &cfg.issuer,
            KeySource::Discovery,
            http.clone(),
            KeyTimes {
                ttl,
                min_refetch: Duration::from_secs(10),
                failure_cache: DISCOVERY_FAILURE_CACHE,
                max_stale: ttl.saturating_mul(2),
            },
        );
        Ok(Provider {
            name: name.to_owned(),
            cfg,
            secret,
            http,
            algorithms,
            keys,
            discovery: moka::future::Cache::builder().max_capacity(1).time_to_live(ttl).build(),
            last_failure: Mutex::new(None),
        })
    }

    /// The discovery document: cached; one fetch in flight however many
    /// requests wait; after a failure none for a few seconds.
    pub async fn discovery(&self) -> Result<std::sync::Arc<Discovery>, LoginRefusal> {
        if let Some(d) = self.discovery.get(&()).await {
            return Ok(d);
        }
        let failed_recently =
            self.last_failure.lock().ok().and_then(|g| *g).is_some_and(|t| t.elapsed() < DISCOVERY_FAILURE_CACHE);
        if failed_recently {
            return Err(refused(
                "provider_unavailable",
                format!("provider `{}`: its discovery document could not be fetched; try again shortly", self.name),
            ));
        }
        let r = self
            .discovery
            .try_get_with((), async {
                let d = self.fetch_discovery().await;
                if d.is_err() {
                    if let Ok(mut g) = self.last_failure.lock() {
                        *g = Some(Instant::now());
                    }
                }
                d.map(std::sync::Arc::new)
            })
            .await;
        r.map_err(|e| (*e).clone())
    }

    async fn fetch_discovery(&self) -> Result<Discovery, LoginRefusal> {
        let url = format!("{}/.well-known/openid-configuration", self.cfg.issuer.trim_end_matches('/'));
        let step = "fetching the discovery document";
        let resp = self.http.get(&url).send().await.map_err(|e| unavailable(&self.name, step, e))?;
        if !resp.status().is_success() {
            return Err(unavailable(&self.name, step, format!("{url}: HTTP {}", resp.status())));
        }
        let body = read_bounded(resp, MAX_RESPONSE_BYTES).await.map_err(|e| unavailable(&self.name, step, e))?;
        let d: Discovery = serde_json::from_slice(&body).map_err(|e| unavailable(&self.name, step, format!("{url}: {e}")))?;
        if d.issuer.trim_end_matches('/') != self.cfg.issuer.trim_end_matches('/') {
            return Err(unavailable(
                &self.name,
                step,
                format!("the document names issuer `{}`, not the configured `{}`", d.issuer, self.cfg.issuer),
            ));
        }
        for (what, u) in [("authorization_endpoint", &d.authorization_endpoint), ("token_endpoint", &d.token_endpoint)] {
            reqwest::Url::parse(u).map_err(|e| unavailable(&self.name, step, format!("{what} `{u}`: {e}")))?;
        }
        Ok(d)
    }

    fn with_client_auth(&self, req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        req.basic_auth(form_encode(&self.cfg.client_id), Some(form_encode(self.secret.expose_secret())))
    }

    /// POSTs a form to the token endpoint: the parsed JSON answer and
    /// whether it was a success.
    async fn token_call(&self, form: &[(&str, &str)]) -> Result<(bool, Value), LoginRefusal> {
        let d = self.discovery().await?;
        let step = "calling the token endpoint";
        let resp = self
            .with_client_auth(self.http.post(&d.token_endpoint))
            .header(reqwest::header::ACCEPT, "application/json")
            .form(form)
            .send()
            .await
            .map_err(|e| unavailable(&self.name, step, e))?;
        let ok = resp.status().is_success();
        let status = resp.status();
        let body = read_bounded(resp, MAX_RESPONSE_BYTES).await.map_err(|e| unavailable(&self.name, step, e))?;
        let v: Value = serde_json::from_slice(&body)
            .map_err(|e| unavailable(&self.name, step, format!("HTTP {status}, not JSON: {e}")))?;
        Ok((ok, v))
    }

    fn tokens(&self, v: &Value) -> Result<Tokens, LoginRefusal> {
        let id_token = v
            .get("id_token")
            .and_then(Value::as_str)
            .ok_or_else(|| refused("no_id_token", format!("provider `{}` returned no ID token (is `openid` in scopes?)", self.name)))?;
        Ok(Tokens {
            id_token: SecretString::from(id_token.to_owned()),
            access_token: v.get("access_token").and_then(Value::as_str).map(|s| SecretString::from(s.to_owned())),
        })
    }

    /// Redeems an authorization code with its PKCE verifier.
    pub async fn redeem_code(&self, code: &str, verifier: &str, redirect_uri: &str) -> Result<Tokens, LoginRefusal> {
        let (ok, v) = self
            .token_call(&[
                ("grant_type", "authorization_code"),
                ("code", code),
                ("redirect_uri", redirect_uri),
                ("code_verifier", verifier),
            ])
            .await?;
        if !ok {
            return Err(token_error(&self.name, &v));
        }
        self.tokens(&v)
    }

    /// Starts a device authorization (RFC 8628 3.1).
    pub async fn device_authorize(&self) -> Result<DeviceAuthorization, LoginRefusal> {
        let d = self.discovery().await?;
        let url = d.device_authorization_endpoint.clone().ok_or_else(|| {
            refused(
                "device_flow_unsupported",
                format!("provider `{}` offers no device authorization endpoint; sign in with a browser", self.name),
            )
        })?;
        let step = "calling the device authorization endpoint";
        let scope = self.cfg.scopes.join(" ");
        let resp = self
            .with_client_auth(self.http.post(&url))
            .form(&[("client_id", self.cfg.client_id.as_str()), ("scope", scope.as_str())])
            .send()
            .await
            .map_err(|e| unavailable(&self.name, step, e))?;
        let status = resp.status();
        let body = read_bounded(resp, MAX_RESPONSE_BYTES).await.map_err(|e| unavailable(&self.name, step, e))?;
        if !status.is_success() {
            return Err(unavailable(&self.name, step, format!("HTTP {status}: {}", String::from_utf8_lossy(&body))));
        }
        serde_json::from_slice(&body).map_err(|e| unavailable(&self.name, step, e))
    }

    /// Polls the token endpoint with a device code (RFC 8628 3.4).
    pub async fn poll_device(&self, device_code: &str) -> Result<Tokens, DevicePollError> {
        let (ok, v) = self
            .token_call(&[("grant_type", "urn:ietf:params:oauth:grant-type:device_code"), ("device_code", device_code)])
            .await
            .map_err(DevicePollError::Refused)?;
        if ok {
            return self.tokens(&v).map_err(DevicePollError::Refused);
        }
        match v.get("error").and_then(Value::as_str) {
            Some("authorization_pending") => Err(DevicePollError::Pending("authorization_pending")),
            Some("slow_down") => Err(DevicePollError::Pending("slow_down")),
            Some("access_denied") => {
                Err(DevicePollError::Refused(refused("access_denied", "the sign-in was denied at the provider")))
            }
            Some("expired_token") => Err(DevicePollError::Refused(refused(
                "expired_token",
                "the device code expired before it was approved; run `lessor login` again",
            ))),
            _ => Err(DevicePollError::Refused(token_error(&self.name, &v))),
        }
    }

    /// Verifies an ID token and reads the person's claims from it, then
    /// from userinfo for those it lacks. `nonce`: the one sent in the
    /// authorization request (None for the device flow, which has none).
    pub async fn verify_id_token(
        &self,
        tokens: &Tokens,
        nonce: Option<&str>,
        now: time::OffsetDateTime,
    ) -> Result<Claims, LoginRefusal> {
        let t = tokens.id_token.expose_secret();
        if t.len() > MAX_ID_TOKEN_BYTES {
            return Err(refused("id_token_malformed", format!("the ID token is over {MAX_ID_TOKEN_BYTES} bytes")));
        }
        let header = jsonwebtoken::decode_header(t)
            .map_err(|_| refused("id_token_malformed", "the ID token is not a signed JWT with a supported `alg`"))?;
        if !self.algorithms.contains(&header.alg) {
            return Err(refused(
                "id_token_algorithm",
                format!("ID token algorithm `{:?}` is not allowed (allowed: {})", header.alg, self.cfg.algorithms.join(", ")),
            ));
        }
        let kid = header.kid.as_deref().ok_or_else(|| refused("id_token_kid", "the ID token header has no `kid`"))?;
        let key = match self.keys.key(kid).await {
            KeyLookup::Found(k) => k,
            KeyLookup::UnknownKid => {
                return Err(refused("id_token_kid", format!("the ID token's key id `{kid}` is not in the provider's key set")))
            }
            KeyLookup::Unavailable(reason) => return Err(refused("provider_unavailable", format!("provider `{}`: {reason}", self.name))),
        };
        let mut v = Validation::new(header.alg);
        v.algorithms = vec![header.alg];
        v.leeway = self.cfg.leeway.as_secs();
        v.set_issuer(&[self.cfg.issuer.as_str()]);
        v.set_audience(&[self.cfg.client_id.as_str()]);
        v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        let data = jsonwebtoken::decode::<Value>(t, &key, &v).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind as K;
            match e.kind() {
                K::InvalidSignature => refused("id_token_signature", "the ID token's signature does not verify"),
                K::InvalidIssuer => refused("id_token_iss", format!("the ID token's `iss` is not `{}`", self.cfg.issuer)),
                K::InvalidAudience => refused("id_token_aud", format!("the ID token's `aud` does not include `{}`", self.cfg.client_id)),
                K::ExpiredSignature => refused("id_token_exp", "the ID token has expired"),
                K::ImmatureSignature => refused("id_token_nbf", "the ID token is not valid yet (nbf)"),
                K::MissingRequiredClaim(c) => refused("id_token_claims", format!("the ID token has no `{c}` claim")),
                _ => refused("id_token_malformed", format!("the ID token is invalid: {e}")),
            }
        })?;
        let c = data.claims;
        let leeway = i64::try_from(self.cfg.leeway.as_secs()).unwrap_or(0);
        let iat = c.get("iat").and_then(Value::as_i64).ok_or_else(|| refused("id_token_claims", "the ID token has no numeric `iat`"))?;
        if iat.saturating_sub(leeway) > now.unix_timestamp() {
            return Err(refused("id_token_iat", "the ID token was issued in the future (iat); check the clocks"));
        }
        let multiple_aud = c.get("aud").and_then(Value::as_array).is_some_and(|a| a.len() > 1);
        match c.get("azp").and_then(Value::as_str) {
            Some(azp) if azp != self.cfg.client_id => {
                return Err(refused("id_token_azp", format!("the ID token's `azp` is `{azp}`, not `{}`", self.cfg.client_id)))
            }
            None if multiple_aud => {
                return Err(refused("id_token_azp", "the ID token has several audiences and no `azp`"));
            }
            _ => {}
        }
        if let Some(expected) = nonce {
            let got = c.get("nonce").and_then(Value::as_str).unwrap_or("");
            if !bool::from(subtle::ConstantTimeEq::ct_eq(got.as_bytes(), expected.as_bytes())) {
                return Err(refused("id_token_nonce", "the ID token's `nonce` is not the one this sign-in sent"));
            }
        }
        let names = &self.cfg.claims;
        let subject = c
            .get(&names.subject)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty() && s.len() <= 255)
            .ok_or_else(|| refused("id_token_claims", format!("the ID token has no usable `{}` (subject) claim", names.subject)))?
            .to_owned();
        let mut merged = c.clone();
        let lacks = |m: &Value| [&names.email, &names.name, &names.groups].iter().any(|k| m.get(k.as_str()).is_none());
        if lacks(&merged) {
            if let Some(info) = self.userinfo(tokens, &subject).await? {
                if let (Some(m), Some(i)) = (merged.as_object_mut(), info.as_object()) {
                    for (k, v) in i {
                        m.entry(k.clone()).or_insert_with(|| v.clone());
                    }
                }
            }
        }
        let text = |k: &str| -> String {
            merged.get(k).and_then(Value::as_str).map(|s| s.chars().take(MAX_CLAIM_CHARS).collect()).unwrap_or_default()
        };
        let groups = match merged.get(&names.groups) {
            Some(Value::Array(a)) => {
                a.iter().filter_map(Value::as_str).take(MAX_GROUPS).map(|s| s.chars().take(MAX_CLAIM_CHARS).collect()).collect()
            }
            Some(Value::String(s)) => vec![s.chars().take(MAX_CLAIM_CHARS).collect()],
            _ => vec![],
        };
        Ok(Claims { subject, email: text(&names.email).to_lowercase(), name: text(&names.name), groups })
    }

    /// Userinfo for claims the ID token lacks; its `sub` must be the ID
    /// token's (OIDC Core 5.3.2).
    async fn userinfo(&self, tokens: &Tokens, subject: &str) -> Result<Option<Value>, LoginRefusal> {
        let (Some(at), Some(url)) = (&tokens.access_token, self.discovery().await?.userinfo_endpoint.clone()) else {
            return Ok(None);
        };
        let step = "calling the userinfo endpoint";
        let resp = self
            .http
            .get(&url)
            .bearer_auth(at.expose_secret())
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| unavailable(&self.name, step, e))?;
        if !resp.status().is_success() {
            return Err(unavailable(&self.name, step, format!("HTTP {}", resp.status())));
        }
        let body = read_bounded(resp, MAX_RESPONSE_BYTES).await.map_err(|e| unavailable(&self.name, step, e))?;
        let v: Value = serde_json::from_slice(&body).map_err(|e| unavailable(&self.name, step, e))?;
        if v.get("sub").and_then(Value::as_str) != Some(subject) {
            return Err(refused("userinfo_sub", "userinfo's `sub` is not the ID token's"));
        }
        Ok(Some(v))
    }
}

/// A token endpoint error as a refusal: its `error` code and description
/// (the provider's words, bounded), never the request.
fn token_error(provider: &str, v: &Value) -> LoginRefusal {
    let code = v.get("error").and_then(Value::as_str).unwrap_or("unknown_error");
    let desc: String = v.get("error_description").and_then(Value::as_str).unwrap_or("").chars().take(200).collect();
    let code: String = code.chars().take(64).collect();
    refused("token_endpoint", format!("provider `{provider}` refused the code: {code} {desc}").trim().to_owned())
}

#[cfg(test)]
mod tests {
    #[test]
    fn client_credentials_are_form_encoded() {
        assert_eq!(super::form_encode("a b:c/é"), "a+b%3Ac%2F%C3%A9");
        assert_eq!(super::form_encode("lessor-1.x_*"), "lessor-1.x_*");
    }
}
