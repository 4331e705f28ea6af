//! Claim mapping: which JWT claims become which principal attributes.
//!
//! A path is either dotted (`kubernetes.io.namespace`, where keys that
//! themselves contain dots are matched greedily) or a JSON pointer
//! (`/kubernetes.io/namespace`). Strings map as they are; numbers and
//! booleans as their JSON text; objects, arrays and null are skipped.

use std::collections::BTreeMap;

use serde_json::Value;

/// Built-in presets: attribute -> claim path.
pub fn preset(name: &str) -> Option<Vec<(&'static str, &'static str)>> {
    match name {
        "github-actions" => Some(vec![
            ("repository", "repository"),
            ("repository_owner", "repository_owner"),
            ("ref", "ref"),
            ("ref_type", "ref_type"),
            ("environment", "environment"),
            ("workflow", "workflow"),
            ("job_workflow_ref", "job_workflow_ref"),
            ("actor", "actor"),
            ("event_name", "event_name"),
            ("runner_environment", "runner_environment"),
        ]),
        "kubernetes" => Some(vec![
            ("namespace", "kubernetes.io.namespace"),
            ("service_account", "kubernetes.io.serviceaccount.name"),
            ("pod", "kubernetes.io.pod.name"),
        ]),
        _ => None,
    }
}

/// The mapping of one issuer: preset first, explicit entries override.
#[derive(Debug, Clone, Default)]
pub struct ClaimMapping {
    entries: BTreeMap<String, String>,
}

impl ClaimMapping {
    pub fn new(preset_name: Option<&str>, extra: &BTreeMap<String, String>) -> ClaimMapping {
        let mut entries = BTreeMap::new();
        if let Some(p) = preset_name.and_then(preset) {
            for (attr, path) in p {
                entries.insert(attr.to_owned(), path.to_owned());
            }
        }
        for (attr, path) in extra {
            entries.insert(attr.clone(), path.clone());
        }
        ClaimMapping { entries }
    }

    pub fn attributes(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(String::as_str)
    }

    /// Applies the mapping to verified claims.
    pub fn apply(&self, claims: &Value) -> BTreeMap<String, String> {
        self.entries
            .iter()
            .filter_map(|(attr, path)| lookup(claims, path).and_then(scalar).map(|v| (attr.clone(), v)))
            .collect()
    }
}

fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// Finds a claim by dotted path or JSON pointer.
pub fn lookup<'a>(claims: &'a Value, path: &str) -> Option<&'a Value> {
    if path.starts_with('/') {
        return claims.pointer(path);
    }
    let mut cur = claims;
    let mut rest = path;
    loop {
        let obj = cur.as_object()?;
        if let Some(v) = obj.get(rest) {
            return Some(v);
        }
        // Longest key that is a dotted prefix of what is left.
        let (key, v) = obj
            .iter()
            .filter(|(k, _)| rest.len() > k.len() && rest.starts_with(k.as_str()) && rest.as_bytes()[k.len()] == b'.')
            .max_by_key(|(k, _)| k.len())?;
        cur = v;
        rest = &rest[key.len() + 1..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn kubernetes_nested_claims_with_dotted_keys() {
        let claims = json!({
            "sub": "system:serviceaccount:payments:api",
            "kubernetes.io": {"namespace": "payments", "serviceaccount": {"name": "api", "uid": "u"},
                              "pod": {"name": "api-7d9"}}
        });
        let m = ClaimMapping::new(Some("kubernetes"), &BTreeMap::new());
        let a = m.apply(&claims);
        assert_eq!(a["namespace"], "payments");
        assert_eq!(a["service_account"], "api");
        assert_eq!(a["pod"], "api-7d9");
        assert_eq!(lookup(&claims, "/kubernetes.io/serviceaccount/uid"), Some(&json!("u")));
    }

    #[test]
    fn explicit_entries_override_presets_and_skip_non_scalars() {
        let claims = json!({"repository": "acme/api", "team": {"name": "pay"}, "n": 3, "arr": [1]});
        let extra = BTreeMap::from([
            ("repository".to_string(), "team.name".to_string()),
            ("count".to_string(), "n".to_string()),
            ("list".to_string(), "arr".to_string()),
        ]);
        let a = ClaimMapping::new(Some("github-actions"), &extra).apply(&claims);
        assert_eq!(a["repository"], "pay");
        assert_eq!(a["count"], "3");
        assert!(!a.contains_key("list"));
        assert!(!a.contains_key("ref"));
    }
}
