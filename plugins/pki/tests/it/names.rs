use serde_json::json;

use crate::support::*;

#[tokio::test]
async fn a_subset_of_names_can_be_requested() {
    let (plugin, _) = standard("p256").await;
    let issued = issue(plugin.as_ref(), json!({ "names": ["API.svc.internal"] }))
        .await
        .unwrap();
    let der = pem_der(public_str(&issued, "certificate"));
    let cert = parse_cert(&der);
    assert_eq!(sans(&cert), [format!("DNS:{API_DNS}")]);
    assert_eq!(cn(&cert), API_DNS);
    assert_eq!(issued.public["names"], json!([API_DNS]));
}

#[tokio::test]
async fn a_name_not_allowed_is_refused() {
    let (plugin, _) = standard("p256").await;
    let m = invalid(
        issue(
            plugin.as_ref(),
            json!({ "names": [API_DNS, "foo.svc.internal"] }),
        )
        .await,
    );
    assert_eq!(
        m,
        format!(
            "name `foo.svc.internal` is not allowed for role `web` (allowed: {API_URI}, {API_DNS})"
        )
    );
    let m = invalid(
        issue(
            plugin.as_ref(),
            json!({ "names": ["spiffe://example.org/gh/acme/other"] }),
        )
        .await,
    );
    assert!(
        m.starts_with("name `spiffe://example.org/gh/acme/other` is not allowed"),
        "{m}"
    );
}

#[tokio::test]
async fn wildcards_cover_exactly_one_label() {
    let (plugin, _) = plugin(json!({ "allowed_names": ["*.internal.example"] })).await;
    // No names: the wildcard itself.
    let issued = issue(plugin.as_ref(), json!({})).await.unwrap();
    assert_eq!(issued.public["names"], json!(["*.internal.example"]));

    let issued = issue(plugin.as_ref(), json!({ "names": ["db.internal.example"] }))
        .await
        .unwrap();
    let der = pem_der(public_str(&issued, "certificate"));
    assert_eq!(sans(&parse_cert(&der)), ["DNS:db.internal.example"]);

    for bad in [
        "a.b.internal.example",
        "internal.example",
        "a_b.internal.example",
        "*.b.internal.example",
    ] {
        let m = invalid(issue(plugin.as_ref(), json!({ "names": [bad] })).await);
        assert!(
            m.starts_with(&format!("name `{bad}` is not allowed for role `web`")),
            "{m}"
        );
    }
}

#[tokio::test]
async fn a_missing_claim_is_named() {
    let (plugin, _) = standard("p256").await;
    let req = request(
        workload(&[("repository", "acme/api")]),
        json!({}),
        in_minutes(10),
    );
    assert_eq!(
        invalid(plugin.issue(req).await),
        "name template `{repo_name}.svc.internal` needs claim `repo_name`, which the workload's token does not have"
    );
}

#[tokio::test]
async fn subject_and_issuer_fill_templates() {
    let (plugin, _) =
        plugin(json!({ "allowed_names": ["{subject}.svc"], "common_name": "{issuer}" })).await;
    let mut w = api_workload();
    w.subject = "acme-api".into();
    let issued = plugin
        .issue(request(w, json!({}), in_minutes(10)))
        .await
        .unwrap();
    assert_eq!(issued.public["names"], json!(["acme-api.svc"]));
    let der = pem_der(public_str(&issued, "certificate"));
    assert_eq!(
        cn(&parse_cert(&der)),
        "https://token.actions.githubusercontent.com"
    );
}

#[tokio::test]
async fn uri_claims_cannot_inject() {
    let (plugin, _) = standard("p256").await;
    for bad in [
        "acme/../../etc",
        "a b",
        "x\ny",
        "acme/./api",
        "acme//api",
        "acme/api?x=1",
        "acme/api#x",
    ] {
        let req = request(
            workload(&[("repository", bad), ("repo_name", "api")]),
            json!({}),
            in_minutes(10),
        );
        let m = invalid(plugin.issue(req).await);
        assert!(
            m.starts_with("claim `repository` is ")
                && m.contains(
                    "which cannot be used in name template `spiffe://example.org/gh/{repository}`"
                ),
            "{bad:?}: {m}"
        );
    }
}

#[tokio::test]
async fn dns_claims_cannot_inject() {
    let (plugin, _) = standard("p256").await;
    for bad in ["evil.com.", "a_b", "evil.com", "*", "a b", ""] {
        let req = request(
            workload(&[("repository", "acme/api"), ("repo_name", bad)]),
            json!({}),
            in_minutes(10),
        );
        let m = invalid(plugin.issue(req).await);
        assert!(
            m.starts_with("claim `repo_name` is ")
                && m.contains("which cannot be used in name template `{repo_name}.svc.internal`"),
            "{bad:?}: {m}"
        );
    }
    // Labels that are valid characters but an invalid name still name the claim.
    let req = request(
        workload(&[("repository", "acme/api"), ("repo_name", "-api")]),
        json!({}),
        in_minutes(10),
    );
    let m = invalid(plugin.issue(req).await);
    assert!(
        m.contains("claim `repo_name`") && m.contains("not a valid DNS name"),
        "{m}"
    );
}

#[tokio::test]
async fn a_requested_subset_only_needs_its_own_claims() {
    let (plugin, _) = standard("p256").await;
    // `repo_name` is missing, but only the URI is asked for.
    let req = request(
        workload(&[("repository", "acme/api")]),
        json!({ "names": [API_URI] }),
        in_minutes(10),
    );
    let issued = plugin.issue(req).await.unwrap();
    assert_eq!(issued.public["names"], json!([API_URI]));
    // Asking for the DNS name says why it cannot be had.
    let req = request(
        workload(&[("repository", "acme/api")]),
        json!({ "names": [API_DNS] }),
        in_minutes(10),
    );
    let m = invalid(plugin.issue(req).await);
    assert!(m.contains("needs claim `repo_name`"), "{m}");
}
