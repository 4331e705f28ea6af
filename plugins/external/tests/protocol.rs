//! The protocol's edges with a real misbehaving python3 process
//! (`fake_plugin.py`): malformed and over-long lines, a hung `issue`, a
//! plugin that ignores `shutdown`, error codes, a protocol version
//! mismatch, a restart answering another handshake (refused, retried with
//! doubling waits), and root credentials re-installed into a restarted
//! process.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lessor_external::ExternalPlugin;
use lessor_plugin::secrecy::SecretString;
use lessor_plugin::{IssueRequest, LeaseId, Plugin, PluginContext, PluginError, Revocation, RoleSpec, Workload};
use serde_json::json;

async fn start(mode: &str, extra: serde_json::Value) -> Result<Arc<ExternalPlugin>, PluginError> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fake_plugin.py");
    // The core's call timeout (30 s here) caps the connection's own 1 s.
    let ctx = PluginContext::for_tests(&format!("fake-{mode}"), "http://x");
    let mut cfg = json!({"command": ["python3", script, mode], "call_timeout": "1s", "shutdown_grace": "500ms"});
    if let (Some(c), Some(e)) = (cfg.as_object_mut(), extra.as_object()) {
        c.extend(e.clone());
    }
    let roles = vec![RoleSpec { name: "app".into(), scopes: vec![], max_ttl: Duration::from_secs(60), config: json!({}) }];
    ExternalPlugin::start(ctx, cfg, roles).await
}

fn req(role: &str) -> IssueRequest {
    IssueRequest {
        lease_id: LeaseId::new("lse_1"),
        role: role.into(),
        workload: Workload::default(),
        scopes: vec![],
        expires_at: time::OffsetDateTime::now_utc() + Duration::from_secs(60),
        params: Default::default(),
    }
}

/// Waits until the plugin is up again in a new process.
async fn restarted(p: &ExternalPlugin, old: u32) -> u32 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let (Some(pid), true) = (p.pid(), p.restarts() > 0) {
            if pid != old {
                return pid;
            }
        }
        assert!(Instant::now() < deadline, "the plugin was not restarted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_line_that_is_not_json_rpc_fails_the_call_without_quoting_it_and_restarts_the_process() {
    let p = start("garbage", json!({})).await.unwrap();
    let pid = p.pid().unwrap();
    let e = p.issue(req("app")).await.unwrap_err();
    let m = e.to_string();
    assert!(e.is_retryable(), "{m}");
    assert!(m.contains("protocol violation: a stdout line is not JSON"), "{m}");
    assert!(!m.contains("hunter2"), "the raw line is never quoted: {m}");
    restarted(&p, pid).await;
    assert!(p.validate().await.is_ok());
    p.stop().await;
}

#[tokio::test]
async fn a_line_over_the_limit_is_a_protocol_violation() {
    let p = start("long", json!({})).await.unwrap();
    let pid = p.pid().unwrap();
    let m = p.issue(req("app")).await.unwrap_err().to_string();
    assert!(m.contains("over the 1048576-byte limit"), "{m}");
    restarted(&p, pid).await;
    p.stop().await;
}

#[tokio::test]
async fn a_hung_issue_times_out_and_its_process_is_replaced() {
    let p = start("slow", json!({})).await.unwrap();
    let pid = p.pid().unwrap();
    let t = Instant::now();
    let e = p.issue(req("app")).await.unwrap_err();
    assert!(t.elapsed() < Duration::from_secs(3), "bounded by call_timeout: {:?}", t.elapsed());
    assert!(e.is_retryable() && e.to_string().contains("did not answer `issue` within 1s"), "{e}");
    // Whatever the hung issue would still do must not happen after the core
    // cleaned up: the process is killed and replaced.
    restarted(&p, pid).await;
    assert!(!Path::new(&format!("/proc/{pid}")).exists() || std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default().contains(") Z"));
    p.stop().await;
}

#[tokio::test]
async fn an_issue_the_core_cancels_ends_its_process_too() {
    // The core drops an `issue` future past `leases.call_timeout`; the
    // plugin must not go on to create the credential after the core has
    // revoked the pending lease.
    let p = start("slow", json!({"call_timeout": "20s"})).await.unwrap();
    let pid = p.pid().unwrap();
    let cancelled = tokio::time::timeout(Duration::from_millis(300), p.issue(req("app"))).await;
    assert!(cancelled.is_err(), "the slow issue answered: {cancelled:?}");
    restarted(&p, pid).await;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    assert!(stat.is_empty() || stat.contains(") Z"), "process {pid} still runs: {stat}");
    p.stop().await;
}

#[tokio::test]
async fn a_plugin_without_managed_roots_offers_no_root_capability() {
    let p = start("errors", json!({})).await.unwrap();
    assert!(p.root_credentials().is_none());
    assert_eq!((p.kind(), p.capabilities().revocation), ("external", Revocation::Immediate));
    p.stop().await;
}

#[test]
fn the_registration_checks_config_without_starting_anything() {
    let r = lessor_external::registration();
    assert_eq!((r.kind, r.sdk_version), ("external", lessor_plugin::SDK_VERSION));
    // A program that does not exist passes: nothing is started or read.
    assert_eq!((r.validate_config)(&json!({"command": ["/nonexistent/plugin"]}), &[]), Ok(()));
    let e = (r.validate_config)(&json!({"command": []}), &[]).unwrap_err();
    assert!(e.contains("`command` is empty"), "{e}");
    let e = (r.validate_config)(&json!({"command": ["x"], "start_timeout": "1h"}), &[]).unwrap_err();
    assert!(e.contains("`start_timeout`"), "{e}");
    assert!((r.ca_files)(&json!({"command": ["x"]}), &[]).is_empty());
}

#[tokio::test]
async fn a_plugin_that_ignores_shutdown_is_killed_after_the_grace_period() {
    let p = start("deaf", json!({})).await.unwrap();
    let pid = p.pid().unwrap();
    let t = Instant::now();
    p.stop().await;
    let took = t.elapsed();
    assert!(took >= Duration::from_millis(450) && took < Duration::from_secs(3), "{took:?}");
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    assert!(stat.is_empty() || stat.contains(") Z"), "process {pid} still runs: {stat}");
    let e = p.issue(req("app")).await.unwrap_err();
    assert!(e.is_retryable() && e.to_string().contains("shutting down"), "{e}");
}

#[tokio::test]
async fn error_codes_map_to_error_classes() {
    let p = start("errors", json!({})).await.unwrap();
    type Check = fn(&PluginError) -> bool;
    let cases: [(i64, Check); 7] = [
        (-32001, |e| matches!(e, PluginError::Retryable(m) if m == "refused by code-32001")),
        (-32002, |e| matches!(e, PluginError::Permanent(m) if m == "refused by code-32002")),
        (-32003, |e| matches!(e, PluginError::InvalidRequest(_))),
        (-32004, |e| matches!(e, PluginError::Misconfigured(_))),
        (-32005, |e| matches!(e, PluginError::Unsupported(m) if m == "issue")),
        (-32601, |e| matches!(e, PluginError::Unsupported(m) if m == "issue")),
        (-32099, |e| matches!(e, PluginError::Permanent(m) if m.contains("unknown error code -32099"))),
    ];
    for (code, ok) in cases {
        let e = p.issue(req(&format!("code{code}"))).await.unwrap_err();
        assert!(ok(&e), "code {code}: {e:?}");
    }
    // A credential is not handed out when it outlives its lease.
    let e = p.issue(req("app")).await.unwrap_err();
    assert!(e.to_string().contains("after the lease's end"), "{e}");
    assert!(!e.to_string().contains("hunter2"));
    // can_renew = false: renew is refused without a call.
    let lease = lessor_plugin::LeaseRef { lease_id: LeaseId::new("lse_1"), role: "app".into(), handle: None, expires_at: time::OffsetDateTime::now_utc(), root_version: None };
    let e = p.renew(lessor_plugin::RenewRequest { lease, expires_at: time::OffsetDateTime::now_utc() }).await.unwrap_err();
    assert!(matches!(&e, PluginError::Unsupported(m) if m == "renew"), "{e:?}");
    p.stop().await;
}

#[tokio::test]
async fn a_protocol_version_mismatch_stops_the_start_with_the_reason() {
    let e = start("v2", json!({})).await.err().unwrap();
    assert!(matches!(&e, PluginError::Misconfigured(m) if m.contains("protocol version 2, lessor speaks 1")), "{e}");
    let e = start("x", json!({"command": ["/nonexistent/plugin"]})).await.err().unwrap();
    assert!(e.to_string().contains("cannot start `/nonexistent/plugin`"), "{e}");
}

/// A restarted process must shake hands as the first one did: one that
/// answers another handshake is refused (calls fail, naming why) and the
/// supervisor tries again, each wait twice the last (200 ms, 400, 800 ...),
/// until a process answers as before.
#[tokio::test]
async fn a_restart_with_another_handshake_is_refused_and_retried_with_doubling_waits() {
    let dir = tempfile::tempdir().unwrap();
    let (starts, shift) = (dir.path().join("starts"), dir.path().join("shift"));
    let p = start("shifty", json!({"env": {"FAKE_STARTS": starts, "FAKE_SHIFT": shift}})).await.unwrap();
    let pid = p.pid().unwrap();
    std::fs::write(&shift, "").unwrap();
    assert!(std::process::Command::new("kill").args(["-9", &pid.to_string()]).status().unwrap().success());
    let times = |n: usize| async move {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let t: Vec<f64> = std::fs::read_to_string(&starts).unwrap().lines().map(|l| l.parse().unwrap()).collect();
            if t.len() >= n {
                return t;
            }
            assert!(Instant::now() < deadline, "only {} starts: {t:?}", t.len());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    // The first start, then three refused restarts.
    let t = times(4).await;
    let e = p.issue(req("app")).await.unwrap_err();
    assert!(e.is_retryable() && e.to_string().contains("answered a different handshake"), "{e}");
    assert_eq!(p.restarts(), 0, "no refused process counts as restarted");
    // Waits of 400 then 800 ms before the third and fourth starts: each gap
    // is at least its wait (plus a refused handshake and a python start-up;
    // with no doubling the second would be about 0.2 s + a start-up).
    let (g2, g3) = (t[2] - t[1], t[3] - t[2]);
    assert!(g2 >= 0.4 && g3 >= 0.8, "gaps {g2:.3} s, {g3:.3} s: {t:?}");

    std::fs::remove_file(&shift).unwrap();
    let new = restarted(&p, pid).await;
    assert_ne!(new, pid);
    assert_eq!(p.capabilities().revocation, Revocation::Immediate, "the first handshake's capabilities hold");
    let v = p.validate().await.unwrap();
    assert_eq!(v.identity, format!("fake pid {new}"), "the accepted process answers");
    p.stop().await;
}

#[tokio::test]
async fn root_credentials_are_installed_again_into_a_restarted_process() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("roots");
    let p = start("root", json!({"env": {"FAKE_ROOT_LOG": log}})).await.unwrap();
    // The handshake's capabilities: published revocation, a managed root
    // credential described by the plugin.
    assert_eq!(
        p.capabilities().revocation,
        Revocation::Published { via: "a test list".into(), max_delay_seconds: Some(5) }
    );
    assert!(p.capabilities().can_revoke());
    let roots = p.root_credentials().expect("manages_root offers RootCredentials");
    assert_eq!(roots.spec().describes, "the fake vendor's admin password");
    assert!(!roots.spec().can_rotate);
    roots.install_root(1, SecretString::from("root-one"), true).await.unwrap();
    roots.install_root(2, SecretString::from("root-two"), true).await.unwrap();
    assert_eq!(std::fs::read_to_string(&log).unwrap(), "1 true\n2 true\n");
    let pid = p.pid().unwrap();
    assert!(std::process::Command::new("kill").args(["-9", &pid.to_string()]).status().unwrap().success());
    restarted(&p, pid).await;
    // Version 1 is retiring (kept to revoke its leases), 2 active.
    assert_eq!(std::fs::read_to_string(&log).unwrap(), "1 true\n2 true\n1 false\n2 true\n");
    p.stop().await;
}
