//! Name templates (`allowed_names`, `common_name`) and the rules that keep a
//! workload's claims from injecting anything into a certificate name.
//!
//! Pure functions of the template and the workload: no I/O, no keys.

use lessor_plugin::{PluginError, Workload};

/// What a name becomes in the certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A dNSName SAN; lowercase, labels `[a-z0-9-]`.
    Dns,
    /// A uniformResourceIdentifier SAN (any name containing `://`).
    Uri,
    /// The subject CN (free text, but claims are restricted).
    CommonName,
}

/// Which characters a claim may contribute where it is substituted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rule {
    /// Part of one DNS label (a DNS name, or a URI's authority).
    DnsLabel,
    /// Part of a URI path: `[A-Za-z0-9._~/-]`, no empty, `.` or `..` segment.
    UriPath,
    /// Part of a CN: `[A-Za-z0-9._~/:@ -]`.
    CommonName,
}

#[derive(Debug, Clone)]
enum Segment {
    Lit(String),
    Var { claim: String, rule: Rule },
}

/// A parsed template, e.g. `spiffe://example.org/gh/{repository}`.
#[derive(Debug, Clone)]
pub(crate) struct Template {
    raw: String,
    kind: Kind,
    segments: Vec<Segment>,
    /// A DNS template whose first label is literally `*`.
    wildcard: bool,
}

/// Which kind a requested or templated name is.
pub(crate) fn kind_of(name: &str) -> Kind {
    if name.contains("://") {
        Kind::Uri
    } else {
        Kind::Dns
    }
}

fn is_claim_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')
}

impl Template {
    /// Parses an `allowed_names` entry (`common_name = false`) or the role's
    /// `common_name`. The error is the reason, without the role.
    pub(crate) fn parse(raw: &str, common_name: bool) -> Result<Template, String> {
        if raw.is_empty() {
            return Err("a name template must not be empty".into());
        }
        // Tokenize, remembering where each placeholder starts.
        let mut tokens: Vec<(usize, Segment)> = Vec::new();
        let mut lit = String::new();
        let mut chars = raw.char_indices();
        while let Some((i, c)) = chars.next() {
            match c {
                '{' => {
                    let mut claim = String::new();
                    let mut closed = false;
                    for (_, c) in chars.by_ref() {
                        if c == '}' {
                            closed = true;
                            break;
                        }
                        if !is_claim_char(c) {
                            return Err(format!(
                                "placeholder starting at byte {i} has `{}`; claim names are letters, digits, `_`, `-` and `.`",
                                c.escape_default()
                            ));
                        }
                        claim.push(c);
                    }
                    if !closed {
                        return Err(format!("the `{{` at byte {i} is never closed"));
                    }
                    if claim.is_empty() {
                        return Err("`{}` names no claim".into());
                    }
                    if !lit.is_empty() {
                        tokens.push((i, Segment::Lit(std::mem::take(&mut lit))));
                    }
                    tokens.push((
                        i,
                        Segment::Var {
                            claim,
                            rule: Rule::CommonName,
                        },
                    ));
                }
                '}' => return Err(format!("the `}}` at byte {i} has no matching `{{`")),
                c if c.is_control() => return Err("control characters are not allowed".into()),
                c => lit.push(c),
            }
        }
        if !lit.is_empty() {
            tokens.push((raw.len(), Segment::Lit(lit)));
        }

        let kind = if common_name {
            Kind::CommonName
        } else {
            kind_of(raw)
        };
        let mut wildcard = false;
        match kind {
            Kind::CommonName => {}
            Kind::Dns => {
                wildcard = raw.starts_with("*.");
                for (_, seg) in &mut tokens {
                    match seg {
                        Segment::Lit(l) => *l = l.to_ascii_lowercase(),
                        Segment::Var { rule, .. } => *rule = Rule::DnsLabel,
                    }
                }
            }
            Kind::Uri => {
                let scheme_end = raw.find("://").unwrap_or(0);
                let scheme = &raw[..scheme_end];
                let scheme_ok = scheme.starts_with(|c: char| c.is_ascii_alphabetic())
                    && scheme
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
                if !scheme_ok {
                    return Err(format!("`{scheme}` is not a URI scheme"));
                }
                let rest = scheme_end + 3;
                let path_start = raw[rest..].find('/').map_or(raw.len(), |p| rest + p);
                for (at, seg) in &mut tokens {
                    match seg {
                        Segment::Lit(l) => {
                            if !l.chars().all(|c| c.is_ascii_graphic()) {
                                return Err("a URI template may only contain printable ASCII without spaces".into());
                            }
                        }
                        Segment::Var { rule, .. } => {
                            if *at < rest {
                                return Err("placeholders are not allowed in the URI scheme".into());
                            }
                            *rule = if *at < path_start {
                                Rule::DnsLabel
                            } else {
                                Rule::UriPath
                            };
                        }
                    }
                }
            }
        }
        let template = Template {
            raw: raw.to_owned(),
            kind,
            segments: tokens.into_iter().map(|(_, s)| s).collect(),
            wildcard,
        };

        // A literal `*` is only meaningful as the whole first DNS label.
        if kind == Kind::Dns && raw[usize::from(wildcard) * 2..].contains('*') {
            return Err("`*` is only allowed as the whole first label (`*.example.org`)".into());
        }
        // The literal parts must make a valid name whatever the claims are.
        let sample = template.fill(|_| "a".to_owned());
        match kind {
            Kind::Dns => {
                check_dns(&sample, wildcard).map_err(|e| format!("not a valid DNS name: {e}"))?
            }
            Kind::Uri => {
                let authority = sample
                    .split_once("://")
                    .map_or("", |(_, r)| r.split('/').next().unwrap_or(""));
                if authority.is_empty() {
                    return Err("the URI has no authority (host) after `://`".into());
                }
            }
            Kind::CommonName => {}
        }
        Ok(template)
    }

    fn fill(&self, mut value: impl FnMut(&str) -> String) -> String {
        let mut out = String::new();
        for seg in &self.segments {
            match seg {
                Segment::Lit(l) => out.push_str(l),
                Segment::Var { claim, .. } => out.push_str(&value(claim)),
            }
        }
        out
    }

    /// The name for this workload, or an `InvalidRequest` naming the claim
    /// that is missing or unusable.
    pub(crate) fn render(&self, workload: &Workload) -> Result<String, PluginError> {
        let mut out = String::new();
        let mut claims = Vec::new();
        for seg in &self.segments {
            let (claim, rule) = match seg {
                Segment::Lit(l) => {
                    out.push_str(l);
                    continue;
                }
                Segment::Var { claim, rule } => (claim, *rule),
            };
            let value = match claim.as_str() {
                "subject" => Some(&workload.subject),
                "issuer" => Some(&workload.issuer),
                other => workload.attributes.get(other),
            };
            let Some(value) = value else {
                return Err(PluginError::InvalidRequest(format!(
                    "name template `{}` needs claim `{claim}`, which the workload's token does not have",
                    self.raw
                )));
            };
            check_value(value, rule).map_err(|why| {
                PluginError::InvalidRequest(format!(
                    "claim `{claim}` is {value:?}, which cannot be used in name template `{}`: {why}",
                    self.raw
                ))
            })?;
            claims.push(format!("`{claim}`"));
            if rule == Rule::DnsLabel {
                out.push_str(&value.to_ascii_lowercase());
            } else {
                out.push_str(value);
            }
        }
        if self.kind == Kind::Dns {
            check_dns(&out, self.wildcard).map_err(|why| {
                PluginError::InvalidRequest(format!(
                    "claim {} makes name template `{}` give `{out}`, which is not a valid DNS name: {why}",
                    claims.join(", "),
                    self.raw
                ))
            })?;
        }
        Ok(out)
    }
}

fn check_value(value: &str, rule: Rule) -> Result<(), String> {
    if value.is_empty() {
        return Err("it is empty".into());
    }
    match rule {
        Rule::DnsLabel => {
            if !value.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
                return Err("a DNS name may only take letters, digits and `-` from a claim".into());
            }
        }
        Rule::UriPath => {
            if !value
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '~' | '/' | '-'))
            {
                return Err("a URI may only take letters, digits and `._~/-` from a claim".into());
            }
            if value
                .split('/')
                .any(|s| s.is_empty() || s == "." || s == "..")
            {
                return Err(
                    "a URI may not take an empty, `.` or `..` path segment from a claim".into(),
                );
            }
        }
        Rule::CommonName => {
            if !value.chars().all(|c| {
                c.is_ascii_alphanumeric()
                    || matches!(c, '.' | '_' | '~' | '/' | ':' | '@' | ' ' | '-')
            }) {
                return Err("a common name may only take letters, digits, spaces and `._~/:@-` from a claim".into());
            }
        }
    }
    Ok(())
}

/// Checks a lowercase DNS name: labels `[a-z0-9-]` of 1..=63 characters, not
/// starting or ending with `-`, at most 253 in all; a first label `*` only if
/// `wildcard` allows it.
pub(crate) fn check_dns(name: &str, wildcard: bool) -> Result<(), String> {
    if name.is_empty() {
        return Err("it is empty".into());
    }
    if name.len() > 253 {
        return Err(format!(
            "it is {} characters long, the limit is 253",
            name.len()
        ));
    }
    for (i, label) in name.split('.').enumerate() {
        if i == 0 && label == "*" {
            if wildcard {
                continue;
            }
            return Err("a `*` label is not allowed here".into());
        }
        if label.is_empty() {
            return Err("it has an empty label".into());
        }
        if label.len() > 63 {
            return Err(format!("label `{label}` is longer than 63 characters"));
        }
        if !label
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        {
            return Err(format!(
                "label `{label}` has characters other than `a-z`, `0-9` and `-`"
            ));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(format!("label `{label}` starts or ends with `-`"));
        }
    }
    Ok(())
}

/// The canonical form of a requested name (DNS names are case-insensitive).
pub(crate) fn canonical(name: &str) -> String {
    match kind_of(name) {
        Kind::Dns => name.to_ascii_lowercase(),
        _ => name.to_owned(),
    }
}

/// Whether `requested` (canonical) is one of `allowed` (rendered), or a DNS
/// name one label below an allowed `*.` wildcard.
pub(crate) fn is_allowed(requested: &str, allowed: &[String]) -> bool {
    if allowed.iter().any(|a| a == requested) {
        return true;
    }
    if kind_of(requested) != Kind::Dns || check_dns(requested, false).is_err() {
        return false;
    }
    match requested.split_once('.') {
        Some((_, parent)) => allowed
            .iter()
            .any(|a| a.strip_prefix("*.").is_some_and(|p| p == parent)),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn workload(attrs: &[(&str, &str)]) -> Workload {
        Workload {
            issuer: "https://token.actions.githubusercontent.com".into(),
            subject: "repo:acme/api:ref:refs/heads/main".into(),
            attributes: attrs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>(),
        }
    }

    fn invalid(r: Result<String, PluginError>) -> String {
        match r {
            Err(PluginError::InvalidRequest(m)) => m,
            other => panic!("expected InvalidRequest, got {other:?}"),
        }
    }

    #[test]
    fn renders_uri_and_dns() {
        let w = workload(&[("repository", "acme/api"), ("repo_name", "API")]);
        let t = Template::parse("spiffe://example.org/gh/{repository}", false).unwrap();
        assert_eq!(t.kind, Kind::Uri);
        assert_eq!(t.render(&w).unwrap(), "spiffe://example.org/gh/acme/api");
        let t = Template::parse("{repo_name}.svc.internal", false).unwrap();
        assert_eq!(t.render(&w).unwrap(), "api.svc.internal");
        let t = Template::parse("*.Internal.example", false).unwrap();
        assert_eq!(t.render(&w).unwrap(), "*.internal.example");
    }

    #[test]
    fn missing_claim_is_named() {
        let t = Template::parse("{repo_name}.svc.internal", false).unwrap();
        assert_eq!(
            invalid(t.render(&workload(&[]))),
            "name template `{repo_name}.svc.internal` needs claim `repo_name`, which the workload's token does not have"
        );
    }

    #[test]
    fn uri_values_cannot_inject() {
        let t = Template::parse("spiffe://example.org/gh/{repository}", false).unwrap();
        for bad in [
            "acme/../../etc",
            "a b",
            "x\ny",
            "",
            "/abs",
            "a//b",
            "a/./b",
            "a?x=1",
            "a#f",
            "a%2e",
        ] {
            let m = invalid(t.render(&workload(&[("repository", bad)])));
            assert!(m.starts_with("claim `repository` is "), "{bad:?}: {m}");
        }
        // In the authority a claim fills a DNS label only.
        let t = Template::parse("spiffe://{org}.example/x", false).unwrap();
        let m = invalid(t.render(&workload(&[("org", "evil.com/x")])));
        assert!(m.contains("claim `org`"), "{m}");
        assert_eq!(
            t.render(&workload(&[("org", "acme")])).unwrap(),
            "spiffe://acme.example/x"
        );
    }

    #[test]
    fn dns_values_cannot_inject() {
        let t = Template::parse("{repo_name}.svc.internal", false).unwrap();
        for bad in ["evil.com.", "a_b", "evil.com", "*", "a b"] {
            let m = invalid(t.render(&workload(&[("repo_name", bad)])));
            assert!(m.starts_with("claim `repo_name` is "), "{bad:?}: {m}");
        }
        let m = invalid(t.render(&workload(&[("repo_name", "-api")])));
        assert!(m.contains("not a valid DNS name"), "{m}");
        let long = "a".repeat(64);
        let m = invalid(t.render(&workload(&[("repo_name", &long)])));
        assert!(
            m.contains("claim `repo_name`") && m.contains("longer than 63"),
            "{m}"
        );
    }

    #[test]
    fn bad_templates_are_refused() {
        for (t, why) in [
            ("{repo", "never closed"),
            ("repo}", "no matching"),
            ("{}.x", "names no claim"),
            ("a.*.x", "first label"),
            ("{x}://host/p", "not a URI scheme"),
            ("spiffe:///p", "no authority"),
            ("a_b.example", "not a valid DNS name"),
            ("spiffe://x/a b", "printable ASCII"),
        ] {
            let e = Template::parse(t, false).unwrap_err();
            assert!(e.contains(why), "{t}: {e}");
        }
    }

    #[test]
    fn allowed_matching() {
        let allowed = vec![
            "api.svc.internal".to_owned(),
            "*.internal.example".to_owned(),
            "spiffe://x/y".to_owned(),
        ];
        assert!(is_allowed("api.svc.internal", &allowed));
        assert!(is_allowed("db.internal.example", &allowed));
        assert!(is_allowed("*.internal.example", &allowed));
        assert!(is_allowed("spiffe://x/y", &allowed));
        assert!(!is_allowed("a.b.internal.example", &allowed));
        assert!(!is_allowed("internal.example", &allowed));
        assert!(!is_allowed("a_b.internal.example", &allowed));
        assert!(!is_allowed("spiffe://x/y/z", &allowed));
        assert!(!is_allowed("evil.com", &allowed));
    }
}
