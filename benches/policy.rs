//! Policy decision latency as the policy set grows, with and without
//! slicing (`cargo bench --bench policy`). Reports p50/p99 per decision and
//! the sliced/unsliced ratio. Not a test: it asserts nothing, it measures.
//!
//! Shape: N policies over N/10 roles (10 per role: 8 permits with claim
//! conditions, 2 forbids), plus 2 global forbids, like a platform team's
//! repository of per-service rules.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Instant;

use lessor::policy::{Action, Policies, Principal, RequestContext, RoleInfo};

const SCHEMA: &str = include_str!("../policies/lessor.cedarschema");

fn sources(n: usize) -> (Vec<(String, String)>, Vec<RoleInfo>) {
    let roles_n = (n / 10).max(1);
    let mut text = String::new();
    let mut roles = Vec::new();
    for r in 0..roles_n {
        let role = format!("svc{r}/db");
        roles.push(RoleInfo {
            name: role.clone(),
            connection: format!("svc{r}"),
            plugin: "token".into(),
            environment: if r % 2 == 0 { "production".into() } else { "staging".into() },
            scopes: vec!["read".into(), "write".into()],
            max_ttl_seconds: 3600,
        });
        for p in 0..8 {
            text.push_str(&format!(
                "@id(\"r{r}-p{p}\")\n@reason(\"team {p} may use svc{r}\")\npermit(principal, action == Lessor::Action::\"issue\", resource == Lessor::Role::\"{role}\")\nwhen {{ principal has repository && principal.repository == \"acme/team{p}\" && context.ttl_seconds <= 900 }};\n"
            ));
        }
        for f in 0..2 {
            text.push_str(&format!(
                "@id(\"r{r}-f{f}\")\nforbid(principal, action, resource == Lessor::Role::\"{role}\")\nwhen {{ principal has ref && principal.ref == \"refs/heads/blocked{f}\" }};\n"
            ));
        }
    }
    text.push_str("@id(\"g1\")\nforbid(principal, action, resource is Lessor::Role) when { principal has event_name && principal.event_name == \"pull_request\" && resource.environment == \"production\" };\n");
    text.push_str("@id(\"g2\")\nforbid(principal, action, resource) when { principal has service_account && principal.service_account == \"default\" };\n");
    (vec![("bench.cedarschema".into(), SCHEMA.into()), ("bench.cedar".into(), text)], roles)
}

fn measure(p: &Policies, roles: &[RoleInfo], iters: usize) -> (f64, f64) {
    let principal = Principal {
        issuer: "https://token.actions.githubusercontent.com".into(),
        subject: "repo:acme/team3:ref:refs/heads/main".into(),
        attributes: BTreeMap::from([
            ("repository".to_string(), "acme/team3".to_string()),
            ("ref".to_string(), "refs/heads/main".to_string()),
            ("event_name".to_string(), "push".to_string()),
        ]),
    };
    let ctx = RequestContext { ttl_seconds: 600, scopes: vec!["read".into()], now: 1_700_000_000, source_ip: IpAddr::from([10, 0, 0, 1]), vault_role: None };
    let mut samples = Vec::with_capacity(iters);
    let mut allowed = 0;
    for i in 0..iters {
        let role = &roles[i % roles.len()];
        let t = Instant::now();
        let d = p.decide(&principal, Action::Issue, Some(role), &ctx).expect("decision");
        samples.push(t.elapsed().as_nanos() as f64 / 1000.0);
        allowed += d.allowed as usize;
    }
    assert!(allowed == iters, "every decision in the bench should be a permit");
    samples.sort_by(|a, b| a.total_cmp(b));
    (samples[iters / 2], samples[iters * 99 / 100])
}

fn main() {
    println!("policy decision latency (us), {} CPU(s)", std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1));
    println!("{:>9} {:>12} {:>12} {:>14} {:>14} {:>8}", "policies", "sliced p50", "sliced p99", "unsliced p50", "unsliced p99", "ratio");
    for n in [10usize, 100, 1000] {
        let (src, roles) = sources(n);
        let sliced = Policies::from_sources(&src, &roles).expect("policies load");
        let unsliced = Policies::from_sources(&src, &[]).expect("policies load");
        let iters = 20_000;
        measure(&sliced, &roles, 2000); // warm up
        let (s50, s99) = measure(&sliced, &roles, iters);
        let (u50, u99) = measure(&unsliced, &roles, if n >= 1000 { 2000 } else { iters });
        println!("{:>9} {:>12.1} {:>12.1} {:>14.1} {:>14.1} {:>7.1}x", sliced.len() - 1, s50, s99, u50, u99, u50 / s50);
    }
}
