//! People sign-in against a real OpenID provider: `oidc-provider` (npm, a
//! certified OpenID Connect provider library) run by `tests/oidc/provider.mjs`
//! on a loopback port, with test users alice (platform), bob (finance),
//! carol (account:acme). The browser is played over HTTP (reqwest, no
//! redirects followed, a small cookie jar): lessor's login redirect, the
//! provider's authorization endpoint and interaction, the callback.
//! `lessor login` runs as the real binary and its device code is approved
//! through the provider's device pages.
//!
//! Why one file: every test shares the provider harness and the small
//! browser (cookie jar, redirects) that drive the same flows.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lessor::config::Config;
use lessor::server;
use serde_json::{json, Value};

use crate::support::{config_text, copy_dir, Daemon, Issuer};

pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_lessor");
const SECRET: &str = "lessor-test-client-secret";

fn oidc_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests").join("oidc")
}

/// The provider process; killed on drop.
pub(crate) struct OidcProvider {
    child: Child,
    pub(crate) url: String,
}

impl Drop for OidcProvider {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl OidcProvider {
    pub(crate) fn start(redirect_uri: &str, secret_file: &Path) -> OidcProvider {
        let node = Command::new("node").arg("--version").output();
        assert!(
            node.is_ok_and(|o| o.status.success()),
            "Node.js is not installed: the people tests run the npm package oidc-provider (`apt-get install nodejs npm`; ./test.sh does it)"
        );
        assert!(
            oidc_dir().join("node_modules").join("oidc-provider").exists(),
            "the npm package oidc-provider is not installed: run `npm ci` in tests/oidc (./test.sh does it)"
        );
        let mut child = Command::new("node")
            .arg("provider.mjs")
            .args(["--port", "0", "--redirect-uri", redirect_uri, "--ttl", "300"])
            .arg("--secret-file")
            .arg(secret_file)
            .current_dir(oidc_dir())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting node tests/oidc/provider.mjs");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(u) = line.strip_prefix("oidc-provider listening on ") {
                    let _ = tx.send(u.trim().to_owned());
                }
            }
        });
        let url = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(u) => u,
            Err(_) => {
                let _ = child.kill();
                panic!("tests/oidc/provider.mjs did not start within 30s");
            }
        };
        OidcProvider { child, url }
    }
}

/// A daemon with `[people]` pointing at a fresh oidc-provider.
pub(crate) struct Setup {
    pub(crate) d: Daemon,
    /// The provider of the first name given to [`setup_with`] (`test` for [`setup`]).
    pub(crate) op: OidcProvider,
    /// One more provider per further name.
    pub(crate) others: Vec<OidcProvider>,
    /// The workload issuer (its server task lives as long as the test's runtime).
    pub(crate) iss: Issuer,
    _tmp: tempfile::TempDir,
}

async fn setup(people_extra: &str) -> Setup {
    setup_with(people_extra, &["test"], "", "").await
}

/// A daemon whose `[people]` has one oidc-provider per name in `providers`
/// (each its own process and issuer), `extra` appended to the config and
/// `policy` written as `policies/test-extra.cedar`.
pub(crate) async fn setup_with(people_extra: &str, providers: &[&str], extra: &str, policy: &str) -> Setup {
    let issuer = Issuer::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let policies = dir.join("policies");
    copy_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("policies"), &policies);
    if !policy.is_empty() {
        std::fs::write(policies.join("test-extra.cedar"), policy).unwrap();
    }
    // Bind first: the redirect URI registered at the provider names the port.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let url = format!("http://{addr}");
    let secret_file = dir.join("oidc-secret");
    std::fs::write(&secret_file, format!("{SECRET}\n")).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&secret_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let mut ops: Vec<OidcProvider> =
        providers.iter().map(|_| OidcProvider::start(&format!("{url}/v1/people/callback"), &secret_file)).collect();
    let mut people = format!("\n[people]\n{people_extra}\n");
    for (name, op) in providers.iter().zip(&ops) {
        people.push_str(&format!(
            r#"
[people.providers.{name}]
issuer = "{op}"
client_id = "lessor"
client_secret_file = "{secret}"
scopes = ["openid", "email", "profile", "groups"]
"#,
            op = op.url,
            secret = secret_file.display()
        ));
    }
    people.push_str(extra);
    let text = config_text(&dir, &policies, &issuer.url, &people, "")
        .replacen("listen = \"127.0.0.1:0\"", &format!("listen = \"127.0.0.1:0\"\npublic_url = \"{url}\""), 1);
    let cfg = Config::from_toml(&text).unwrap();
    let running = server::start(cfg, listener).await.unwrap();
    let admin = std::fs::read_to_string(dir.join("admin.token")).unwrap().trim().to_owned();
    let d = Daemon {
        url,
        addr,
        running: Some(running),
        dir: dir.clone(),
        policies,
        admin,
        http: reqwest::Client::new(),
        _tmp: None,
    };
    let op = ops.remove(0);
    Setup { d, op, others: ops, iss: issuer, _tmp: tmp }
}

/// A browser: no redirects followed, cookies kept per host:port (path and
/// expiry honoured enough for these flows).
#[derive(Clone)]
pub(crate) struct Browser {
    pub(crate) http: reqwest::Client,
    jar: Arc<Mutex<BTreeMap<(String, String), String>>>,
}

pub(crate) struct Resp {
    pub(crate) status: u16,
    pub(crate) location: Option<String>,
    pub(crate) set_cookies: Vec<String>,
    pub(crate) body: String,
}

impl Browser {
    pub(crate) fn new() -> Browser {
        Browser {
            http: reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap(),
            jar: Arc::new(Mutex::new(BTreeMap::new())),
        }
    }

    fn host(url: &str) -> String {
        let u = reqwest::Url::parse(url).unwrap();
        format!("{}:{}", u.host_str().unwrap(), u.port_or_known_default().unwrap())
    }

    pub(crate) fn cookie(&self, url: &str, name: &str) -> Option<String> {
        self.jar.lock().unwrap().get(&(Self::host(url), name.to_owned())).cloned()
    }

    pub(crate) fn set_cookie(&self, url: &str, name: &str, value: &str) {
        self.jar.lock().unwrap().insert((Self::host(url), name.to_owned()), value.to_owned());
    }

    pub(crate) async fn send(&self, req: reqwest::RequestBuilder, url: &str) -> Resp {
        let host = Self::host(url);
        let cookies: Vec<String> = self
            .jar
            .lock()
            .unwrap()
            .iter()
            .filter(|((h, _), _)| *h == host)
            .map(|((_, n), v)| format!("{n}={v}"))
            .collect();
        let req = if cookies.is_empty() { req } else { req.header("cookie", cookies.join("; ")) };
        let r = req.send().await.unwrap();
        let status = r.status().as_u16();
        let location = r.headers().get("location").map(|v| {
            let l = v.to_str().unwrap();
            reqwest::Url::parse(url).unwrap().join(l).unwrap().to_string()
        });
        let set_cookies: Vec<String> =
            r.headers().get_all("set-cookie").iter().map(|v| v.to_str().unwrap().to_owned()).collect();
        for c in &set_cookies {
            let first = c.split(';').next().unwrap();
            let (n, v) = first.split_once('=').unwrap();
            let expired = c.to_ascii_lowercase().contains("max-age=0") || c.contains("1970") || v.is_empty();
            let mut jar = self.jar.lock().unwrap();
            if expired {
                jar.remove(&(host.clone(), n.trim().to_owned()));
            } else {
                jar.insert((host.clone(), n.trim().to_owned()), v.to_owned());
            }
        }
        let body = r.text().await.unwrap_or_default();
        Resp { status, location, set_cookies, body }
    }

    pub(crate) async fn get(&self, url: &str) -> Resp {
        self.send(self.http.get(url), url).await
    }

    pub(crate) async fn post_form(&self, url: &str, form: &[(&str, &str)]) -> Resp {
        self.send(self.http.post(url).form(form), url).await
    }

    /// A JSON request with the cookies (and the CSRF header when given).
    pub(crate) async fn send_json(&self, method: reqwest::Method, url: &str, body: Value, csrf: Option<&str>) -> Resp {
        let mut req = self.http.request(method, url).json(&body);
        if let Some(c) = csrf {
            req = req.header("x-lessor-csrf", c);
        }
        self.send(req, url).await
    }

    pub(crate) async fn post_json(&self, url: &str, body: Value, csrf: Option<&str>) -> Resp {
        let mut req = self.http.post(url).json(&body);
        if let Some(c) = csrf {
            req = req.header("x-lessor-csrf", c);
        }
        self.send(req, url).await
    }

    /// Follows redirects on the provider until one points back at lessor.
    pub(crate) async fn follow_until(&self, mut r: Resp, stop_at: &str) -> (Resp, Option<String>) {
        for _ in 0..10 {
            match r.location.clone() {
                Some(l) if l.starts_with(stop_at) => return (r, Some(l)),
                Some(l) => r = self.get(&l).await,
                None => return (r, None),
            }
        }
        panic!("too many redirects");
    }

    /// Signs `user` in at the provider starting from its authorization URL
    /// and returns the URL the provider sends the browser back to (lessor's
    /// callback).
    pub(crate) async fn authorize(&self, auth_url: &str, user: &str, lessor: &str) -> String {
        let r = self.get(auth_url).await;
        let (r, back) = self.follow_until(r, lessor).await;
        if let Some(b) = back {
            return b; // an existing provider session
        }
        let v: Value = serde_json::from_str(&r.body).unwrap_or_else(|_| panic!("interaction page: {} {}", r.status, r.body));
        let op_base = {
            let u = reqwest::Url::parse(auth_url).unwrap();
            format!("{}://{}", u.scheme(), Self::host(auth_url))
        };
        let r = self.post_form(&format!("{op_base}{}", v["login"].as_str().unwrap()), &[("login", user)]).await;
        let (_, back) = self.follow_until(r, lessor).await;
        back.expect("the provider did not send the browser back to lessor")
    }

    /// The whole browser sign-in; `tamper` may change the authorization URL
    /// before the browser visits it. Returns the callback's answer.
    pub(crate) async fn sign_in(&self, d: &Daemon, user: &str, tamper: impl FnOnce(String) -> String) -> Resp {
        self.sign_in_at(d, "test", user, tamper).await
    }

    /// [`Browser::sign_in`] at the provider lessor calls `provider`.
    pub(crate) async fn sign_in_at(&self, d: &Daemon, provider: &str, user: &str, tamper: impl FnOnce(String) -> String) -> Resp {
        let r = self.get(&format!("{}/v1/people/login?provider={provider}&return_to=/v1/people/me", d.url)).await;
        assert_eq!(r.status, 302, "{}", r.body);
        let auth = tamper(r.location.unwrap());
        let back = self.authorize(&auth, user, &d.url).await;
        self.get(&back).await
    }

    pub(crate) async fn me(&self, d: &Daemon) -> (u16, Value) {
        let r = self.get(&format!("{}/v1/people/me", d.url)).await;
        (r.status, serde_json::from_str(&r.body).unwrap_or(Value::Null))
    }
}

fn query_param(url: &str, name: &str) -> Option<String> {
    reqwest::Url::parse(url).unwrap().query_pairs().find(|(k, _)| k == name).map(|(_, v)| v.into_owned())
}

fn with_param(url: &str, name: &str, value: &str) -> String {
    let mut u = reqwest::Url::parse(url).unwrap();
    let pairs: Vec<(String, String)> = u
        .query_pairs()
        .map(|(k, v)| (k.to_string(), if k == name { value.to_owned() } else { v.to_string() }))
        .collect();
    u.query_pairs_mut().clear().extend_pairs(pairs);
    u.to_string()
}

pub(crate) fn audit_lines(d: &Daemon) -> Vec<Value> {
    std::fs::read_to_string(d.dir.join("audit.log"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

pub(crate) async fn audit_has(d: &Daemon, pred: impl Fn(&Value) -> bool) -> bool {
    Daemon::eventually(Duration::from_secs(5), || {
        let found = audit_lines(d).iter().any(&pred);
        async move { found.then_some(()) }
    })
    .await
    .is_some()
}

#[tokio::test]
async fn code_flow_with_pkce_opens_a_session_and_csrf_guards_it() {
    let s = setup("").await;
    let d = &s.d;
    let b = Browser::new();

    // The login redirect: code flow, PKCE S256, state, nonce; the pending
    // sign-in in an HttpOnly, SameSite=Lax cookie (no Secure on loopback).
    let r = b.get(&format!("{}/v1/people/login?provider=test&return_to=/v1/people/me", d.url)).await;
    assert_eq!(r.status, 302, "{}", r.body);
    let auth = r.location.clone().unwrap();
    assert!(auth.starts_with(&format!("{}/auth?", s.op.url)), "{auth}");
    assert_eq!(query_param(&auth, "response_type").as_deref(), Some("code"));
    assert_eq!(query_param(&auth, "code_challenge_method").as_deref(), Some("S256"));
    assert_eq!(query_param(&auth, "redirect_uri").unwrap(), format!("{}/v1/people/callback", d.url));
    for p in ["state", "nonce", "code_challenge"] {
        assert!(query_param(&auth, p).is_some_and(|v| v.len() >= 43), "{p} in {auth}");
    }
    let login_cookie = r.set_cookies.iter().find(|c| c.starts_with("lessor_login=")).unwrap();
    assert!(login_cookie.contains("HttpOnly") && login_cookie.contains("SameSite=Lax"), "{login_cookie}");
    assert!(!login_cookie.contains("Secure"), "loopback: no Secure flag: {login_cookie}");
    // The cookie holds no readable state: the state is not in it in clear.
    assert!(!login_cookie.contains(&query_param(&auth, "state").unwrap()));

    let back = b.authorize(&auth, "alice", &d.url).await;
    assert!(back.starts_with(&format!("{}/v1/people/callback?", d.url)), "{back}");
    let code = query_param(&back, "code").unwrap();
    let pending = b.cookie(&d.url, "lessor_login").unwrap();
    let r = b.get(&back).await;
    assert_eq!(r.status, 302, "{}", r.body);
    assert_eq!(r.location.as_deref(), Some(format!("{}/v1/people/me", d.url).as_str()));
    let session_cookie = r.set_cookies.iter().find(|c| c.starts_with("lessor_session=")).unwrap().clone();
    assert!(session_cookie.contains("HttpOnly") && session_cookie.contains("SameSite=Lax") && session_cookie.contains("Path=/"));
    let token = b.cookie(&d.url, "lessor_session").unwrap();
    assert!(token.starts_with("lsr_person_"), "{token}");

    let (st, me) = b.me(d).await;
    assert_eq!(st, 200, "{me}");
    assert_eq!(me["person"]["provider"], "test");
    assert_eq!(me["person"]["subject"], "alice");
    assert_eq!(me["person"]["email"], "alice@example.com", "lower-cased");
    assert_eq!(me["person"]["name"], "Alice Platform");
    assert_eq!(me["person"]["groups"], json!(["platform"]));
    assert_eq!(me["via"], "browser");
    let csrf = me["csrf_token"].as_str().unwrap().to_owned();

    // The same session as a bearer token (what `lessor login` stores).
    let (st, v) = d.get("/v1/people/me", &token).await;
    assert_eq!((st, v["person"]["subject"].as_str()), (200, Some("alice")));

    // The code is single-use: replaying the callback opens nothing.
    let replay = Browser::new();
    replay.set_cookie(&d.url, "lessor_login", &pending);
    let r = replay.get(&back).await;
    assert_eq!(r.status, 401, "{}", r.body);
    assert!(r.body.contains("invalid_grant"), "{}", r.body);
    assert!(r.set_cookies.iter().all(|c| !c.starts_with("lessor_session=")));

    // CSRF: the cookie alone cannot change anything.
    let logout = format!("{}/v1/people/logout", d.url);
    let r = b.post_json(&logout, json!({}), None).await;
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(r.body.contains("\"csrf\"") && r.body.contains("X-Lessor-CSRF"), "{}", r.body);
    let r = b.post_json(&logout, json!({}), Some("not-the-token")).await;
    assert_eq!(r.status, 403, "{}", r.body);
    let r = b.post_json(&logout, json!({}), Some(&csrf[..csrf.len() - 1])).await;
    assert_eq!(r.status, 403, "a truncated token: {}", r.body);
    // Another session's token does not fit this one.
    let other = Browser::new();
    assert_eq!(other.sign_in(d, "bob", |u| u).await.status, 302);
    let (_, bob_me) = other.me(d).await;
    let r = b.post_json(&logout, json!({}), bob_me["csrf_token"].as_str()).await;
    assert_eq!(r.status, 403, "{}", r.body);
    assert_eq!(b.me(d).await.0, 200, "refused CSRF changed nothing");
    // The cookie on any state-changing API call needs the CSRF header too;
    // with it, the caller is the person (`Caller` yields `Actor::Person`).
    let leases = format!("{}/v1/leases", d.url);
    let r = b.post_json(&leases, json!({"role": "token/orders"}), None).await;
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(r.body.contains("\"csrf\""), "{}", r.body);
    let r = b.post_json(&leases, json!({"role": "token/orders"}), Some(&csrf)).await;
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(r.body.contains("`test#alice` is a person"), "{}", r.body);
    let r = b.get(&format!("{}/v1/roles", d.url)).await;
    assert_eq!(r.status, 200, "a GET with the cookie needs no CSRF header: {}", r.body);

    // With the token: signed out, on this session only.
    let r = b.post_json(&logout, json!({}), Some(&csrf)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(serde_json::from_str::<Value>(&r.body).unwrap()["ended"], 1);
    b.set_cookie(&d.url, "lessor_session", &token);
    let (st, v) = b.me(d).await;
    assert_eq!(st, 401, "{v}");
    assert_eq!(d.get("/v1/people/me", &token).await.0, 401, "the bearer form is ended too");
    assert_eq!(other.me(d).await.0, 200, "bob's session is untouched");

    // Audit: sign-in with the person, sign-out; never the token or the code.
    assert!(
        audit_has(d, |l| l["action"] == "person.login"
            && l["outcome"] == "ok"
            && l["actor"]["kind"] == "person"
            && l["actor"]["subject"] == "alice")
        .await
    );
    assert!(audit_has(d, |l| l["action"] == "person.logout" && l["actor"]["subject"] == "alice").await);
    assert!(audit_has(d, |l| l["action"] == "authenticate" && l["error_kind"] == "csrf").await);
    let log = std::fs::read_to_string(d.dir.join("audit.log")).unwrap();
    assert!(!log.contains(&token) && !log.contains(&code) && !log.contains(SECRET));
    // The store keeps only the token's hash.
    let db = std::fs::read(d.dir.join("lessor.db")).unwrap();
    let wal = std::fs::read(d.dir.join("lessor.db-wal")).unwrap_or_default();
    for bytes in [&db, &wal] {
        assert!(!bytes.windows(token.len()).any(|w| w == token.as_bytes()), "the session token is in the store");
    }
}

#[tokio::test]
async fn tampered_state_nonce_or_verifier_and_unknown_provider_are_refused() {
    let s = setup("").await;
    let d = &s.d;

    // state: the callback's state is not this browser's.
    let b = Browser::new();
    let r = b.get(&format!("{}/v1/people/login?provider=test", d.url)).await;
    let back = b.authorize(&r.location.unwrap(), "alice", &d.url).await;
    let r = b.get(&with_param(&back, "state", "forged-state-value")).await;
    assert_eq!(r.status, 401, "{}", r.body);
    assert!(r.body.contains("state_mismatch"), "{}", r.body);
    assert!(b.cookie(&d.url, "lessor_session").is_none());

    // nonce: the provider signs a nonce this sign-in did not send.
    let b = Browser::new();
    let r = b.sign_in(d, "alice", |u| with_param(&u, "nonce", "someone-elses-nonce-value-0123456789abcdefghij")).await;
    assert_eq!(r.status, 401, "{}", r.body);
    assert!(r.body.contains("id_token_nonce"), "{}", r.body);
    assert!(b.cookie(&d.url, "lessor_session").is_none());

    // PKCE: the code was bound to another challenge; lessor's verifier
    // does not fit, the provider refuses the code.
    let b = Browser::new();
    let r = b
        .sign_in(d, "alice", |u| with_param(&u, "code_challenge", "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"))
        .await;
    assert_eq!(r.status, 401, "{}", r.body);
    assert!(r.body.contains("token_endpoint") && r.body.contains("invalid_grant"), "{}", r.body);

    // The sealed cookie: one flipped character and it is not lessor's.
    let b = Browser::new();
    let r = b.get(&format!("{}/v1/people/login?provider=test", d.url)).await;
    let back = b.authorize(&r.location.unwrap(), "alice", &d.url).await;
    let mut c = b.cookie(&d.url, "lessor_login").unwrap();
    let last = if c.ends_with('A') { "B" } else { "A" };
    c.replace_range(c.len() - 1.., last);
    b.set_cookie(&d.url, "lessor_login", &c);
    let r = b.get(&back).await;
    assert_eq!(r.status, 401, "{}", r.body);
    assert!(r.body.contains("state_invalid"), "{}", r.body);

    // No cookie at all (a callback replayed in another browser).
    let r = Browser::new().get(&back).await;
    assert_eq!(r.status, 401);
    assert!(r.body.contains("state_missing"), "{}", r.body);

    // Every refusal is audited with the check that failed.
    for reason in ["state_mismatch", "id_token_nonce", "token_endpoint", "state_invalid"] {
        assert!(
            audit_has(d, |l| l["action"] == "person.login" && l["outcome"] == "denied" && l["error_kind"] == reason).await,
            "no denied entry for {reason}"
        );
    }

    // An unknown provider is a precise error, for the browser and the CLI.
    let r = Browser::new().get(&format!("{}/v1/people/login?provider=nope", d.url)).await;
    assert_eq!(r.status, 400, "{}", r.body);
    let v: Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(v["error"]["message"], "unknown provider `nope` (configured: `test`)");
    assert_eq!(v["error"]["field"], "provider");
    let r = reqwest::Client::new().post(format!("{}/v1/people/device", d.url)).json(&json!({"provider": "nope"})).send().await.unwrap();
    assert_eq!(r.status(), 400);
    // An open redirect is refused.
    let r = Browser::new().get(&format!("{}/v1/people/login?provider=test&return_to=//evil.example/x", d.url)).await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body.contains("return_to"), "{}", r.body);
}

#[tokio::test]
async fn sign_out_everywhere_ends_every_session_of_that_person_only() {
    let s = setup("").await;
    let d = &s.d;
    let (a1, a2, bob) = (Browser::new(), Browser::new(), Browser::new());
    for (b, u) in [(&a1, "alice"), (&a2, "alice"), (&bob, "bob")] {
        assert_eq!(b.sign_in(d, u, |x| x).await.status, 302);
        assert_eq!(b.me(d).await.0, 200);
    }
    let (_, me) = a1.me(d).await;
    let r = a1.post_json(&format!("{}/v1/people/logout", d.url), json!({"everywhere": true}), me["csrf_token"].as_str()).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(serde_json::from_str::<Value>(&r.body).unwrap()["ended"], 2);
    let t2 = a2.cookie(&d.url, "lessor_session").unwrap();
    assert_eq!(a2.me(d).await.0, 401, "alice's other session ended too");
    assert_eq!(d.get("/v1/people/me", &t2).await.0, 401);
    assert_eq!(bob.me(d).await.0, 200, "bob is still signed in");
    assert!(audit_has(d, |l| l["action"] == "person.logout" && l["details"]["everywhere"] == true && l["details"]["ended"] == 2).await);
}

#[tokio::test]
async fn sessions_end_after_the_idle_and_the_absolute_timeout() {
    let s = setup("idle_timeout = \"2s\"\nabsolute_timeout = \"4s\"").await;
    let d = &s.d;

    // Idle: unused for longer than 2s, refused.
    let idle = Browser::new();
    assert_eq!(idle.sign_in(d, "alice", |x| x).await.status, 302);
    assert_eq!(idle.me(d).await.0, 200);
    tokio::time::sleep(Duration::from_millis(2600)).await;
    let (st, v) = idle.me(d).await;
    assert_eq!(st, 401, "{v}");
    assert_eq!(v["error"]["code"], "session_ended");

    // Absolute: used every 300ms it outlives the idle timeout, but not 4s.
    let busy = Browser::new();
    assert_eq!(busy.sign_in(d, "bob", |x| x).await.status, 302);
    let start = Instant::now();
    let mut ended = None;
    while start.elapsed() < Duration::from_secs(8) {
        if busy.me(d).await.0 == 401 {
            ended = Some(start.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let ended = ended.expect("the session never ended");
    assert!(ended > Duration::from_millis(2500), "use kept it past the idle timeout (ended after {ended:?})");
    assert!(ended <= Duration::from_millis(4500), "the absolute timeout ended it (after {ended:?})");
}

/// Approves a device user code through the provider's device pages as `user`.
pub(crate) async fn approve_device(op: &str, user_code: &str, user: &str) {
    let b = Browser::new();
    let xsrf = |body: &str| {
        let i = body.find("name=\"xsrf\" value=\"").expect("no xsrf in the device page") + 19;
        body[i..].split('"').next().unwrap().to_owned()
    };
    let r = b.get(&format!("{op}/device")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let x = xsrf(&r.body);
    let r = b.post_form(&format!("{op}/device"), &[("xsrf", &x), ("user_code", user_code)]).await;
    assert_eq!(r.status, 200, "confirm page: {}", r.body);
    let x = xsrf(&r.body);
    let r = b.post_form(&format!("{op}/device"), &[("xsrf", &x), ("user_code", user_code), ("confirm", "yes")]).await;
    let interaction = r.location.clone().unwrap_or_else(|| panic!("no interaction redirect: {} {}", r.status, r.body));
    let r = b.get(&interaction).await;
    let v: Value = serde_json::from_str(&r.body).unwrap();
    let r = b.post_form(&format!("{op}{}", v["login"].as_str().unwrap()), &[("login", user)]).await;
    let mut r = r;
    for _ in 0..10 {
        match r.location.clone() {
            Some(l) => r = b.get(&l).await,
            None => break,
        }
    }
    assert!(r.body.contains("device approved"), "{} {}", r.status, r.body);
}

pub(crate) fn cli(args: &[&str], home: &Path) -> (i32, String, String) {
    let o = Command::new(BIN)
        .args(args)
        .env("XDG_CONFIG_HOME", home)
        .env_remove("LESSOR_ADMIN_TOKEN")
        .env_remove("LESSOR_JWT")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (o.status.code().unwrap_or(-1), String::from_utf8_lossy(&o.stdout).into_owned(), String::from_utf8_lossy(&o.stderr).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lessor_login_uses_the_device_flow_then_whoami_and_logout() {
    let s = setup("").await;
    let d = &s.d;
    let home = tempfile::tempdir().unwrap();

    let mut child = Command::new(BIN)
        .args(["login", "--addr", &d.url, "--provider", "test"])
        .env("XDG_CONFIG_HOME", home.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut lines = Vec::new();
    let mut user_code = None;
    let deadline = Instant::now() + Duration::from_secs(30);
    while user_code.is_none() && Instant::now() < deadline {
        if let Ok(l) = rx.recv_timeout(Duration::from_millis(200)) {
            if let Some(c) = l.strip_prefix("code: ") {
                user_code = Some(c.trim().to_owned());
            }
            lines.push(l);
        }
    }
    let Some(user_code) = user_code else {
        let _ = child.kill();
        let out = child.wait_with_output().unwrap();
        panic!("lessor login printed no code: {lines:?} {}", String::from_utf8_lossy(&out.stderr));
    };
    assert!(lines.iter().any(|l| l.starts_with("verification: ") && l.contains(&s.op.url)), "{lines:?}");
    approve_device(&s.op.url, &user_code, "carol").await;
    let status = tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(st) = child.try_wait().unwrap() {
                return st;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("lessor login did not finish after approval");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    })
    .await
    .unwrap();
    while let Ok(l) = rx.recv_timeout(Duration::from_millis(200)) {
        lines.push(l);
    }
    assert!(status.success(), "lessor login failed: {lines:?}");
    assert!(lines.iter().any(|l| l.contains("signed in as carol@example.com (test#carol)")), "{lines:?}");

    let file = home.path().join("lessor").join("session");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);
    }
    let stored: Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    let token = stored["session_token"].as_str().unwrap().to_owned();
    assert!(token.starts_with("lsr_person_"));
    assert_eq!(stored["addr"], d.url);

    let (code, out, err) = cli(&["whoami", "--addr", &d.url], home.path());
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("Carol Acme <carol@example.com>") && out.contains("test#carol") && out.contains("account:acme"), "{out}");
    assert!(audit_has(d, |l| l["action"] == "person.login" && l["details"]["via"] == "device" && l["actor"]["subject"] == "carol").await);

    // Another lessor never gets this session.
    let (code, _, err) = cli(&["whoami", "--addr", "http://127.0.0.1:9"], home.path());
    assert_ne!(code, 0);
    assert!(err.contains("not signed in to http://127.0.0.1:9"), "{err}");

    // A session file others can read is refused.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        let (code, _, err) = cli(&["whoami", "--addr", &d.url], home.path());
        assert_ne!(code, 0);
        assert!(err.contains("readable by others (mode 644)"), "{err}");
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    }

    let (code, out, err) = cli(&["logout", "--addr", &d.url], home.path());
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("1 session(s) ended"), "{out}");
    assert!(!file.exists());
    assert_eq!(d.get("/v1/people/me", &token).await.0, 401, "the session ended at lessor, not just locally");
    let (code, _, err) = cli(&["whoami", "--addr", &d.url], home.path());
    assert_ne!(code, 0);
    assert!(err.contains("run `lessor login`"), "{err}");
}

#[tokio::test]
async fn without_people_config_the_endpoints_say_so_and_a_person_token_is_refused() {
    let issuer = Issuer::start().await;
    let d = Daemon::start(&issuer).await;
    let r = d.http.get(format!("{}/v1/people/login?provider=x", d.url)).send().await.unwrap();
    assert_eq!(r.status(), 404);
    assert!(r.text().await.unwrap().contains("[people]"));
    let (st, v) = d.get("/v1/roles", "lsr_person_forged").await;
    assert_eq!(st, 401, "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("people sign-in is not configured"), "{v}");
}

/// The ID token checks one by one, with tokens signed by a test issuer
/// (its keys served over HTTP): each refusal names the claim that failed.
#[tokio::test]
async fn id_token_checks_each_name_the_claim_that_failed() {
    use lessor::people::oidc::{Provider, Tokens};
    use secrecy::SecretString;
    let issuer = Issuer::start().await;
    let cfg: lessor::people::ProviderConfig = toml::from_str(&format!(
        "issuer = \"{}\"\nclient_id = \"lessor\"\nclient_secret_file = \"unused\"\nalgorithms = [\"ES256\"]\nleeway = \"30s\"\n",
        issuer.url
    ))
    .unwrap();
    let p = Provider::new("corp", cfg, SecretString::from("s".to_owned()), reqwest::Client::new()).unwrap();
    let now = crate::support::now();
    let base = json!({
        "iss": issuer.url, "aud": "lessor", "sub": "alice", "iat": now, "exp": now + 300, "nonce": "n-1",
        "email": "Alice@Example.com", "name": "Alice", "groups": ["platform"],
    });
    let check = |edit: Value| {
        let mut c = base.as_object().unwrap().clone();
        for (k, v) in edit.as_object().unwrap() {
            if v.is_null() {
                c.remove(k);
            } else {
                c.insert(k.clone(), v.clone());
            }
        }
        let t = issuer.sign(&c);
        let p = &p;
        async move {
            let tokens = Tokens { id_token: SecretString::from(t), access_token: None };
            p.verify_id_token(&tokens, Some("n-1"), time::OffsetDateTime::now_utc()).await.map_err(|r| (r.reason, r.message))
        }
    };
    let ok = check(json!({})).await.unwrap();
    assert_eq!((ok.subject.as_str(), ok.email.as_str(), ok.groups.clone()), ("alice", "alice@example.com", vec!["platform".to_owned()]));
    for (edit, reason, says) in [
        (json!({"iss": "https://evil.example"}), "id_token_iss", "`iss`"),
        (json!({"aud": "someone-else"}), "id_token_aud", "`aud`"),
        (json!({"exp": now - 120}), "id_token_exp", "expired"),
        (json!({"exp": now - 10}), "", ""), // within the 30s leeway
        (json!({"iat": now + 600}), "id_token_iat", "future"),
        (json!({"iat": null}), "id_token_claims", "`iat`"),
        (json!({"nonce": "n-2"}), "id_token_nonce", "`nonce`"),
        (json!({"nonce": null}), "id_token_nonce", "`nonce`"),
        (json!({"aud": ["lessor", "other"]}), "id_token_azp", "several audiences"),
        (json!({"aud": ["lessor", "other"], "azp": "other"}), "id_token_azp", "`azp`"),
        (json!({"aud": ["lessor", "other"], "azp": "lessor"}), "", ""),
        (json!({"sub": ""}), "id_token_claims", "`sub`"),
    ] {
        let r = check(edit.clone()).await;
        if reason.is_empty() {
            assert!(r.is_ok(), "{edit}: {r:?}");
        } else {
            let (got, msg) = r.err().unwrap_or_else(|| panic!("{edit} was accepted"));
            assert_eq!(got, reason, "{edit}: {msg}");
            assert!(msg.contains(says), "{edit}: {msg}");
        }
    }
    // A token signed by a key the provider does not publish.
    let other = crate::support::Key::generate();
    let t = issuer.sign_with(&other, base.as_object().unwrap());
    let r = p.verify_id_token(&Tokens { id_token: SecretString::from(t), access_token: None }, Some("n-1"), time::OffsetDateTime::now_utc()).await;
    assert_eq!(r.err().unwrap().reason, "id_token_kid");
    // Same kid, another key: the signature fails.
    let mut forged = crate::support::Key::generate();
    forged.kid = issuer.key.kid.clone();
    let t = issuer.sign_with(&forged, base.as_object().unwrap());
    let r = p.verify_id_token(&Tokens { id_token: SecretString::from(t), access_token: None }, Some("n-1"), time::OffsetDateTime::now_utc()).await;
    assert_eq!(r.err().unwrap().reason, "id_token_signature");
    // An algorithm off the allow-list (HS256 with the public key as secret: the classic confusion).
    let h = jsonwebtoken::Header { alg: jsonwebtoken::Algorithm::HS256, kid: Some(issuer.key.kid.clone()), ..Default::default() };
    let t = jsonwebtoken::encode(&h, &base, &jsonwebtoken::EncodingKey::from_secret(issuer.key.public_pem.as_bytes())).unwrap();
    let r = p.verify_id_token(&Tokens { id_token: SecretString::from(t), access_token: None }, Some("n-1"), time::OffsetDateTime::now_utc()).await;
    assert_eq!(r.err().unwrap().reason, "id_token_algorithm");
}

#[test]
fn lessor_check_reads_the_client_secret_and_refuses_one_others_can_read() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let policies = dir.join("policies");
    copy_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("policies"), &policies);
    let secret = dir.join("oidc-secret");
    std::fs::write(&secret, "s3cret\n").unwrap();
    let people = format!(
        "[people]\nidle_timeout = \"10m\"\n[people.providers.corp]\nissuer = \"https://login.example.com\"\nclient_id = \"lessor\"\nclient_secret_file = \"{}\"\n",
        secret.display()
    );
    let cfg = dir.join("lessor.toml");
    std::fs::write(&cfg, config_text(dir, &policies, "https://issuer.example", &people, "")).unwrap();
    let check = || {
        let o = Command::new(BIN).args(["check", "--config"]).arg(&cfg).output().unwrap();
        (o.status.success(), String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr))
    };
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o644)).unwrap();
        let (ok, out) = check();
        assert!(!ok && out.contains("client_secret_file") && out.contains("mode is 644"), "{out}");
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let (ok, out) = check();
    assert!(ok, "{out}");
    assert!(!out.contains("s3cret"));
    // A bound out of range names the key.
    std::fs::write(&cfg, config_text(dir, &policies, "https://issuer.example", &people.replace("10m", "48h"), "")).unwrap();
    let (ok, out) = check();
    assert!(!ok && out.contains("people.idle_timeout is 48h"), "{out}");
}

/// `lessor_people_sign_ins_total{provider,via,outcome,reason}`: a
/// successful browser sign-in, a refused one (state mismatch) and a device
/// sign-in are counted under the provider's configured name; no label
/// holds a person's subject, email or name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_ins_are_counted_by_provider_and_outcome_never_by_person() {
    // A provider name no other test uses: the metrics are the process's.
    let s = setup_with("", &["metered"], "", "").await;
    let d = &s.d;
    let scrape = || async {
        let text = d.http.get(format!("{}/metrics", d.url)).send().await.unwrap().text().await.unwrap();
        text.lines().filter(|l| l.starts_with("lessor_people_sign_ins_total{")).map(str::to_owned).collect::<Vec<_>>()
    };
    let value = |lines: &[String], labels: &[(&str, &str)]| -> f64 {
        lines
            .iter()
            .find(|l| labels.iter().all(|(k, v)| l.contains(&format!("{k}=\"{v}\""))))
            .map(|l| l.rsplit(' ').next().unwrap().parse().unwrap())
            .unwrap_or(0.0)
    };
    let ok_browser = [("provider", "metered"), ("via", "browser"), ("outcome", "ok"), ("reason", "none")];
    let ok_device = [("provider", "metered"), ("via", "device"), ("outcome", "ok"), ("reason", "none")];
    let mismatch = [("provider", "metered"), ("via", "browser"), ("outcome", "refused"), ("reason", "state_mismatch")];
    let before = scrape().await;
    // Configured providers start at 0, not absent.
    assert!(before.iter().any(|l| l.contains("provider=\"metered\"") && l.contains("via=\"device\"")), "{before:?}");
    assert_eq!(value(&before, &ok_browser), 0.0);

    let b = Browser::new();
    assert_eq!(b.sign_in_at(d, "metered", "alice", |u| u).await.status, 302);
    let b = Browser::new();
    let r = b.get(&format!("{}/v1/people/login?provider=metered", d.url)).await;
    let back = b.authorize(&r.location.unwrap(), "bob", &d.url).await;
    assert_eq!(b.get(&with_param(&back, "state", "forged-state")).await.status, 401);
    // The device flow, approved at the provider.
    let r = reqwest::Client::new().post(format!("{}/v1/people/device", d.url)).json(&json!({"provider": "metered"})).send().await.unwrap();
    let start: Value = r.json().await.unwrap();
    approve_device(&s.op.url, start["user_code"].as_str().unwrap(), "carol").await;
    // Approved before the first poll; then at the provider's interval.
    let interval = Duration::from_secs(start["interval"].as_u64().unwrap_or(5));
    let mut done = false;
    for _ in 0..5 {
        let r = reqwest::Client::new()
            .post(format!("{}/v1/people/device/token", d.url))
            .json(&json!({"device_code": start["device_code"]}))
            .send()
            .await
            .unwrap();
        if r.status().is_success() {
            done = true;
            break;
        }
        tokio::time::sleep(interval).await;
    }
    assert!(done, "the device sign-in did not finish");

    let after = scrape().await;
    assert_eq!(value(&after, &ok_browser) - value(&before, &ok_browser), 1.0, "{after:?}");
    assert_eq!(value(&after, &mismatch) - value(&before, &mismatch), 1.0, "{after:?}");
    assert_eq!(value(&after, &ok_device) - value(&before, &ok_device), 1.0, "{after:?}");
    let all = d.http.get(format!("{}/metrics", d.url)).send().await.unwrap().text().await.unwrap();
    for who in ["alice", "bob", "carol", "Example.com", "example.com", "Platform"] {
        assert!(!all.contains(who), "`{who}` in a metric: {all}");
    }
}
