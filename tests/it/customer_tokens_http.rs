//! Customer tokens over HTTP with a real sign-in (issue 13's "customer
//! tokens end to end"): carol (account:acme) and dave (account:globex) sign
//! in through the npm `oidc-provider` (the people tests' harness) as the
//! daemon's `[people.providers.customers]`; Cedar decides with the shipped
//! `policies/customer_tokens.cedar`; the resource server introspects with
//! its own credentials. `lessor token` is driven after a real `lessor login`
//! (device flow).

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::{ct_toml, introspect};
use crate::people::{approve_device, cli, setup_with, Browser, Setup, BIN};
use crate::support::Daemon;

/// A daemon with customer tokens whose people sign in through provider
/// `customers` (the name the example policies pin).
async fn start() -> (Setup, tempfile::TempDir) {
    let secrets = tempfile::tempdir().unwrap();
    let s = setup_with("", &["customers"], &ct_toml(secrets.path(), ""), "").await;
    (s, secrets)
}

/// A signed-in browser and its CSRF token.
async fn sign_in(d: &Daemon, user: &str) -> (Browser, String) {
    let b = Browser::new();
    let r = b.sign_in_at(d, "customers", user, |u| u).await;
    assert_eq!(r.status, 302, "{}", r.body);
    let (s, me) = b.me(d).await;
    assert_eq!(s, 200, "{me}");
    assert_eq!(me["person"]["email"], format!("{user}@example.com"));
    (b.clone(), me["csrf_token"].as_str().unwrap().to_owned())
}

fn json_of(r: &crate::people::Resp) -> Value {
    serde_json::from_str(&r.body).unwrap_or_else(|_| panic!("not JSON: {} {}", r.status, r.body))
}

async fn delete(b: &Browser, url: &str, csrf: &str) -> crate::people::Resp {
    b.send(b.http.delete(url).header("x-lessor-csrf", csrf), url).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_in_customer_creates_rotates_and_revokes_over_http_and_another_account_sees_nothing() {
    let (s, _secrets) = start().await;
    let d = &s.d;
    let (carol, csrf) = sign_in(d, "carol").await;
    let tokens = format!("{}/v1/accounts/acme/tokens", d.url);
    let body = json!({"name": "billing sync for NetSuite", "environment": "production", "scopes": ["customers.read", "invoices.read"]});

    // Preview: the summary, nothing made.
    let r = carol.post_json(&format!("{tokens}/preview"), body.clone(), Some(&csrf)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let v = json_of(&r);
    assert_eq!((v["summary"]["account"].as_str(), v["summary"]["creator"].as_str()), (Some("acme"), Some("carol@example.com")));
    assert!(v["summary"]["expires_on"].as_str().unwrap().starts_with("Expires on "), "{v}");
    assert_eq!(v["summary"]["scopes"][0]["name"], "customers.read");
    assert_eq!(json_of(&carol.get(&tokens).await)["tokens"], json!([]), "a preview creates nothing");

    // A cookie session without the CSRF header changes nothing.
    let r = carol.post_json(&tokens, body.clone(), None).await;
    assert_eq!(r.status, 403, "{}", r.body);
    assert_eq!(json_of(&carol.get(&tokens).await)["tokens"], json!([]));

    // Create: the token this once.
    let r = carol.post_json(&tokens, body.clone(), Some(&csrf)).await;
    assert_eq!(r.status, 201, "{}", r.body);
    let v = json_of(&r);
    let token = v["token"].as_str().unwrap().to_owned();
    let id = v["record"]["id"].as_str().unwrap().to_owned();
    assert!(token.starts_with("lsrc_") && token.len() == 43, "{token}");
    assert_eq!(v["record"]["created_by"], "customers#carol");
    // A second read: prefix and last 4 only.
    let hint = format!("lsrc_…{}", &token[token.len() - 4..]);
    for url in [tokens.clone(), format!("{tokens}/{id}")] {
        let r = carol.get(&url).await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert!(!r.body.contains(&token[5..]), "the secret is shown once: {}", r.body);
        assert!(r.body.contains(&hint), "{}", r.body);
    }

    // The resource server introspects it: active; the use is recorded.
    let i = introspect(d, &token).await;
    assert_eq!((i["active"].as_bool(), i["account"].as_str(), i["scope"].as_str()), (Some(true), Some("acme"), Some("customers.read invoices.read")));
    d.running().customer_tokens.as_ref().unwrap().usage().flush().await;
    let shown = json_of(&carol.get(&format!("{tokens}/{id}")).await);
    assert!(shown["last_used_at"].is_string(), "{shown}");
    assert_eq!((shown["uses"][0]["source"].as_str(), shown["uses"][0]["ok"].as_bool()), (Some("203.0.113.7"), Some(true)), "{shown}");

    // Rotate: both work during the overlap; the old one is retiring with its end.
    let r = carol.post_json(&format!("{tokens}/{id}/rotate"), json!({"overlap": "3d"}), Some(&csrf)).await;
    assert_eq!(r.status, 201, "{}", r.body);
    let v = json_of(&r);
    let new = v["token"].as_str().unwrap().to_owned();
    let new_id = v["record"]["id"].as_str().unwrap().to_owned();
    assert_eq!((v["old"]["state"].as_str(), v["record"]["state"].as_str()), (Some("retiring"), Some("active")));
    assert!(v["old"]["retiring_until"].is_string(), "{v}");
    assert_eq!(v["record"]["name"], "billing sync for NetSuite");
    let listed = json_of(&carol.get(&tokens).await);
    let old_listed = listed["tokens"].as_array().unwrap().iter().find(|t| t["id"] == id.as_str()).unwrap().clone();
    assert_eq!(old_listed["state"], "retiring");
    assert_eq!(old_listed["retiring_until"], v["old"]["retiring_until"]);
    assert_eq!(introspect(d, &token).await["active"], true);
    assert_eq!(introspect(d, &new).await["active"], true);

    // dave, of globex, signed in for real: acme's tokens are not there for him.
    let (dave, dave_csrf) = sign_in(d, "dave").await;
    let r = dave.get(&tokens).await;
    assert_eq!(r.status, 404, "{}", r.body);
    let missing = json_of(&dave.get(&format!("{}/v1/accounts/nonexistent/tokens", d.url)).await);
    assert_eq!(
        json_of(&r)["error"]["message"].as_str().unwrap().replace("acme", "X"),
        missing["error"]["message"].as_str().unwrap().replace("nonexistent", "X"),
        "the same answer whether the account exists or not"
    );
    assert_eq!(dave.get(&format!("{tokens}/{id}")).await.status, 404);
    assert_eq!(dave.get(&format!("{}/v1/accounts/globex/tokens/{id}", d.url)).await.status, 404);
    assert_eq!(delete(&dave, &format!("{tokens}/{new_id}"), &dave_csrf).await.status, 404);
    assert_eq!(delete(&dave, &format!("{}/v1/accounts/globex/tokens/{new_id}", d.url), &dave_csrf).await.status, 404);
    assert_eq!(dave.post_json(&format!("{tokens}/{new_id}/rotate"), json!({}), Some(&dave_csrf)).await.status, 404);
    assert_eq!(dave.post_json(&tokens, body.clone(), Some(&dave_csrf)).await.status, 404);
    assert_eq!(introspect(d, &new).await["active"], true, "dave changed nothing");

    // Revoke the old one: inactive at the next introspection; the new one works.
    let r = delete(&carol, &format!("{tokens}/{id}"), &csrf).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(json_of(&r)["state"], "revoked");
    assert_eq!(json_of(&r)["revoked_by"], "customers#carol");
    assert_eq!(introspect(d, &token).await["active"], false);
    assert_eq!(introspect(d, &new).await["active"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cedar_refuses_a_forbidden_combination_asks_to_confirm_a_broad_one_and_a_workload_is_refused() {
    let (s, _secrets) = start().await;
    let d = &s.d;
    let (carol, csrf) = sign_in(d, "carol").await;
    let tokens = format!("{}/v1/accounts/acme/tokens", d.url);

    // Forbidden by policy: 403 with the policy's reason, confirmed or not.
    for confirm in [false, true] {
        let body = json!({"name": "x", "environment": "production", "scopes": ["customers.read", "security.write"], "confirm": confirm});
        let r = carol.post_json(&tokens, body, Some(&csrf)).await;
        assert_eq!(r.status, 403, "{}", r.body);
        let e = &json_of(&r)["error"];
        assert_eq!(e["code"], "policy_denied");
        assert_eq!(e["decision"]["policy"], "no-customer-data-with-security");
        assert!(e["message"].as_str().unwrap().contains("one token must not both read customer data and change security settings"), "{e}");
    }
    // Broad: 409 naming the `confirm` field, for the preview too.
    let broad = json!({"name": "broad", "environment": "production", "scopes": ["invoices.read", "security.write"]});
    for url in [format!("{tokens}/preview"), tokens.clone()] {
        let r = carol.post_json(&url, broad.clone(), Some(&csrf)).await;
        assert_eq!(r.status, 409, "{}", r.body);
        let e = &json_of(&r)["error"];
        assert_eq!((e["code"].as_str(), e["field"].as_str()), (Some("confirmation_required"), Some("confirm")), "{e}");
        assert_eq!(e["decision"]["policy"], "confirm-invoices-with-security");
        assert!(e["message"].as_str().unwrap().contains("broad"), "{e}");
    }
    assert_eq!(json_of(&carol.get(&tokens).await)["tokens"], json!([]), "refusals create nothing");
    let mut confirmed = broad.clone();
    confirmed["confirm"] = json!(true);
    let r = carol.post_json(&tokens, confirmed, Some(&csrf)).await;
    assert_eq!(r.status, 201, "{}", r.body);

    // Longer than the presets only where a policy permits it (globex).
    let year = json!({"name": "y", "environment": "production", "scopes": ["invoices.read"], "expires_in": "365d"});
    let r = carol.post_json(&tokens, year.clone(), Some(&csrf)).await;
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(json_of(&r)["error"]["message"].as_str().unwrap().contains("no policy permits it"), "{}", r.body);
    let (dave, dave_csrf) = sign_in(d, "dave").await;
    let r = dave.post_json(&format!("{}/v1/accounts/globex/tokens", d.url), year, Some(&dave_csrf)).await;
    assert_eq!(r.status, 201, "{}", r.body);

    // A workload JWT is refused, whatever the account.
    let (st, v) = d.post("/v1/accounts/acme/tokens", &s.iss.token(), json!({"name": "x", "scopes": ["invoices.read"]})).await;
    assert_eq!(st, 403, "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("managed by people"), "{v}");
    let (st, _) = d.get("/v1/accounts/acme/tokens", &s.iss.token()).await;
    assert_eq!(st, 403);
}

/// `lessor login` (device flow, the real binary), then `lessor token`
/// with the session file it wrote.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lessor_token_uses_the_login_session() {
    let (s, _secrets) = start().await;
    let d = &s.d;
    let home = tempfile::tempdir().unwrap();
    let mut child = Command::new(BIN)
        .args(["login", "--addr", &d.url, "--provider", "customers"])
        .env("XDG_CONFIG_HOME", home.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut code = None;
    while code.is_none() && Instant::now() < deadline {
        if let Ok(l) = rx.recv_timeout(Duration::from_millis(200)) {
            code = l.strip_prefix("code: ").map(|c| c.trim().to_owned());
        }
    }
    let Some(code) = code else {
        let _ = child.kill();
        panic!("lessor login printed no code");
    };
    approve_device(&s.op.url, &code, "carol").await;
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
    assert!(status.success());

    let addr = d.url.as_str();
    let (c, out, err) = cli(
        &["token", "--account", "acme", "--addr", addr, "create", "--name", "cli sync", "--environment", "production", "--scope", "invoices.read", "--yes"],
        home.path(),
    );
    assert_eq!(c, 0, "{out}{err}");
    let token = out.lines().find(|l| l.trim_start().starts_with("lsrc_")).unwrap_or_else(|| panic!("no token printed: {out}")).trim().to_owned();
    assert_eq!(introspect(d, &token).await["active"], true);
    let (c, out, err) = cli(&["token", "--account", "acme", "--addr", addr, "list"], home.path());
    assert_eq!(c, 0, "{out}{err}");
    assert!(out.contains("cli sync") && out.contains("active") && out.contains(&format!("…{}", &token[token.len() - 4..])), "{out}");
    assert!(!out.contains(&token[5..]), "{out}");
    // `show`: the whole history, never the token.
    let id = out.lines().find(|l| l.contains("cli sync")).and_then(|l| l.split_whitespace().next()).unwrap().to_owned();
    let (c, out, err) = cli(&["token", "--account", "acme", "--addr", addr, "show", &id], home.path());
    assert_eq!(c, 0, "{out}{err}");
    assert!(out.contains(&format!("({id})")) && out.contains("Created ") && out.contains(" by customers#carol"), "{out}");
    assert!(!out.contains(&token[5..]), "{out}");
    // A broad combination: refused until --confirm, and the error says so.
    let broad = ["token", "--account", "acme", "--addr", addr, "create", "--name", "broad", "--environment", "production", "--scope", "invoices.read", "--scope", "security.write", "--yes"];
    let (c, out, err) = cli(&broad, home.path());
    assert_ne!(c, 0, "{out}");
    assert!(err.contains("--confirm") && err.contains("confirm-invoices-with-security"), "{err}");
    let mut confirmed = broad.to_vec();
    confirmed.push("--confirm");
    let (c, out, err) = cli(&confirmed, home.path());
    assert_eq!(c, 0, "{out}{err}");
    assert!(out.trim_start().starts_with("lsrc_"), "{out}");
    // Another account's tokens: 404, said plainly.
    let (c, _, err) = cli(&["token", "--account", "globex", "--addr", addr, "list"], home.path());
    assert_ne!(c, 0);
    assert!(err.contains("not found"), "{err}");
}
