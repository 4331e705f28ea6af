//! The real `lessor` binary as a process: spawn it and wait for the line
//! that says it is ready, stop it with SIGTERM, run a one-shot command, and
//! the `kill -9` harness (a burst of issues, `kill -9` mid-burst, a
//! restart on the same data) that every vendor's crash test uses.
//! Must not import: any test module (they import this).

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::{config_text, copy_dir, Issuer};

pub const BIN: &str = env!("CARGO_BIN_EXE_lessor");

/// Spawns `lessor` with `args`, waits for a stdout line containing `marker`
/// and returns the child and the URL on that line.
pub fn spawn_until(args: &[&str], cwd: &Path, envs: &[(&str, &str)], log: &Path, marker: &str) -> (Child, String) {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(std::fs::File::create(log).unwrap()));
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let m = marker.to_owned();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(i) = line.find(&m) {
                let url = line[i + m.len()..].split_whitespace().next().unwrap_or("").to_owned();
                let _ = tx.send(url);
            }
        }
    });
    match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(url) => (child, url),
        Err(_) => {
            let _ = child.kill();
            panic!("lessor {args:?} never printed `{marker}`; log:\n{}", std::fs::read_to_string(log).unwrap_or_default());
        }
    }
}

pub fn stop(mut child: Child) {
    // SIGTERM: graceful shutdown.
    let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    panic!("lessor did not stop on SIGTERM within 20s");
}

/// Runs `lessor args` to completion: exit code, stdout, stderr.
pub fn run(args: &[&str], cwd: &Path, envs: &[(&str, &str)]) -> (i32, String, String) {
    let mut cmd = Command::new(BIN);
    cmd.args(args).current_dir(cwd).stdin(Stdio::null());
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let o = cmd.output().unwrap();
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// `lessor serve` restarted after a `kill -9` (see [`kill_9_mid_burst`]).
pub struct Restarted {
    pub child: Child,
    pub url: String,
    pub admin: String,
    http: reqwest::Client,
}

impl Restarted {
    /// The ids of the leases in `state`.
    pub async fn leases(&self, state: &str) -> BTreeSet<String> {
        let v: Value = self
            .http
            .get(format!("{}/v1/admin/leases?state={state}&limit=10000", self.url))
            .bearer_auth(&self.admin)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        v["leases"].as_array().unwrap().iter().map(|l| l["lease_id"].as_str().unwrap().to_owned()).collect()
    }

    /// Waits (20s at most) until no lease is pending, asserts that, and
    /// returns the active leases (at least one).
    pub async fn active_once_pending_are_cleaned(&self) -> BTreeSet<String> {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.leases("pending").await.is_empty() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(self.leases("pending").await.is_empty(), "pending leases were cleaned up at restart");
        let active = self.leases("active").await;
        assert!(!active.is_empty());
        active
    }

    pub fn stop(self) {
        stop(self.child);
    }
}

/// Starts `lessor serve` in `dir` (the repo's policies plus `policy`, the
/// connection config `plugin_toml`), sends a burst of 600 issues of `role`
/// (16 at a time), `kill -9`s it once 40 leases exist (or after 30s),
/// asserts the kill landed mid-burst (some issues failed), and starts it
/// again on the same config and store.
pub async fn kill_9_mid_burst(iss: &Issuer, dir: &Path, policy: &str, plugin_toml: &str, role: &str) -> Restarted {
    copy_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("policies"), &dir.join("policies"));
    std::fs::write(dir.join("policies/test-extra.cedar"), policy).unwrap();
    let cfg = config_text(dir, &dir.join("policies"), &iss.url, plugin_toml, "");
    std::fs::write(dir.join("lessor.toml"), cfg).unwrap();
    let (mut child, url) = spawn_until(&["serve", "--config", "lessor.toml"], dir, &[], &dir.join("a.log"), "lessor listening on ");

    let jwt = iss.token();
    let http = reqwest::Client::new();
    let burst = {
        let (http, url, jwt, role) = (http.clone(), url.clone(), jwt.clone(), role.to_owned());
        tokio::spawn(async move {
            let mut set = tokio::task::JoinSet::new();
            let mut failed = 0;
            for i in 0..600 {
                let (http, url, jwt, role) = (http.clone(), url.clone(), jwt.clone(), role.clone());
                set.spawn(async move {
                    http.post(format!("{url}/v1/leases")).bearer_auth(jwt).json(&json!({"role": role})).send().await.map(|r| r.status().as_u16())
                });
                if i % 16 == 15 {
                    while let Some(r) = set.join_next().await {
                        if !matches!(r, Ok(Ok(201))) {
                            failed += 1;
                        }
                    }
                }
            }
            while let Some(r) = set.join_next().await {
                if !matches!(r, Ok(Ok(201))) {
                    failed += 1;
                }
            }
            failed
        })
    };
    // Let the burst get going, then kill -9.
    let admin = std::fs::read_to_string(dir.join("admin.token")).unwrap().trim().to_owned();
    let started = Instant::now();
    loop {
        let r = http.get(format!("{url}/v1/admin/leases?limit=10000")).bearer_auth(&admin).send().await.ok();
        let count = match r {
            Some(r) => r.json::<Value>().await.map(|v| v["leases"].as_array().map_or(0, |a| a.len())).unwrap_or(0),
            None => 0,
        };
        if count >= 40 || started.elapsed() > Duration::from_secs(30) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    child.kill().unwrap();
    let _ = child.wait();
    let failed = burst.await.unwrap();
    assert!(failed > 0, "the kill must land mid-burst");

    let (child, url) = spawn_until(&["serve", "--config", "lessor.toml"], dir, &[], &dir.join("b.log"), "lessor listening on ");
    Restarted { child, url, admin, http }
}
