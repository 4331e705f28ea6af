//! The admin password as a root credential: validation on every node,
//! precise refusals, rotation.

use lessor_plugin::{Plugin, PluginError, RootCredentials};

use crate::support::{code, connect, issue, lease, lease_id, roles, secret, Pair};

#[tokio::test]
async fn validate_names_the_admin_and_every_node() {
    let pair = Pair::start();
    let p = pair.plugin();
    let v = p.validate().await.unwrap();
    assert_eq!(v.identity, "default");
    let nodes = &v.details["nodes"];
    for r in pair.nodes() {
        assert!(nodes.contains(&format!("127.0.0.1:{}", r.port())), "{nodes}");
    }
    assert!(nodes.contains("redis "), "{nodes}");
}

#[tokio::test]
async fn bad_root_credentials_are_refused_precisely() {
    let pair = Pair::start();
    let p = pair.plugin();
    let e = p.validate_root(&secret("not-the-password")).await.unwrap_err();
    let m = e.to_string();
    assert!(matches!(e, PluginError::Misconfigured(_)), "{e}");
    assert!(m.contains(&format!("127.0.0.1:{}", pair.a.port())) && m.contains("authentication"), "{m}");
    assert!(!m.contains("not-the-password"));
    // An admin that may create but not delete users.
    let mut admin = connect(&pair.a, "default", &pair.password).await.unwrap();
    for r in pair.nodes() {
        let mut c = connect(r, "default", &pair.password).await.unwrap();
        let _: () = redis::cmd("ACL")
            .arg(&["SETUSER", "halfadmin", "on", ">halfpw", "+acl|whoami", "+info", "+acl|dryrun", "+acl|setuser", "+acl|users", "+client|kill", "+config|get", "+acl|save"][..])
            .query_async(&mut c)
            .await
            .unwrap();
    }
    let half = pair
        .plugin_with(
            serde_json::json!({"nodes": [pair.a.url(), pair.b.url()], "username": "halfadmin", "timeout": "1s"}),
            roles(),
        )
        .unwrap();
    let e = half.validate_root(&secret("halfpw")).await.unwrap_err();
    assert!(e.to_string().contains("may not run ACL DELUSER"), "{e}");
    drop(admin.clone());
    let _: () = redis::cmd("PING").query_async(&mut admin).await.unwrap();
}

#[tokio::test]
async fn rotation_changes_the_admin_password_on_every_node() {
    let pair = Pair::start();
    let p = pair.plugin_with(serde_json::json!({"nodes": [pair.a.url(), pair.b.url()], "timeout": "1s"}), roles()).unwrap();
    p.install_root(1, secret(&pair.password), true).await.unwrap();
    let new = p.rotate_root().await.unwrap();
    let new_pw = lessor_plugin::secrecy::ExposeSecret::expose_secret(&new).to_owned();
    assert_ne!(new_pw, pair.password);
    p.validate_root(&new).await.unwrap();
    for r in pair.nodes() {
        assert!(connect(r, "default", &new_pw).await.is_ok());
        let e = connect(r, "default", &pair.password).await.unwrap_err();
        assert_eq!(code(&e), "WRONGPASS");
        assert!(!r.acl_file().contains(&new_pw), "the ACL file holds only the hash");
    }
    p.install_root(2, new, true).await.unwrap();
    p.remove_root(1).await.unwrap();
    let id = lease_id();
    issue(&p, &id, &["cache.read"]).await.unwrap();
    p.revoke(&lease(&id, None)).await.unwrap();
}
