//! What every benchmark needs besides its own measurements: the shared
//! machine's load, CPU time per process from /proc, percentiles, and a copy
//! of the example policies. Included by each bench with
//! `#[path = "support/mod.rs"] mod support;` (each bench is its own crate).
#![allow(dead_code)] // each bench uses only some of these

use std::path::Path;

/// The 1-minute load average (the machine is shared: print it beside every
/// figure).
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg").ok().and_then(|l| l.split_whitespace().next().map(str::to_owned)).unwrap_or_default()
}

/// The CPUs this bench may use, as at its first call: the layouts pin this
/// process to fewer, which `available_parallelism` would then report.
pub fn cpus() -> usize {
    static CPUS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *CPUS.get_or_init(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1))
}

/// The `p` quantile (0..=1) of `v` (sorted in place); NaN when empty.
pub fn pct(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

/// The fields of `/proc/<pid>/stat` after the command name (which may hold
/// spaces): state (0), ppid (1), ... utime (11), stime (12), cutime (13),
/// cstime (14); times in clock ticks (100 per second on Linux).
fn stat_fields(pid: &str) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    Some(stat.rsplit_once(')')?.1.split_whitespace().map(str::to_owned).collect())
}

/// The sum of `fields` (indexes into [`stat_fields`]) of `pid`, in seconds.
fn ticks_of(pid: &str, fields: &[usize]) -> Option<f64> {
    let f = stat_fields(pid)?;
    fields.iter().map(|&i| f.get(i)?.parse::<f64>().ok()).sum::<Option<f64>>().map(|t| t / 100.0)
}

/// CPU time (user + system) of process `pid` (`"self"` for this one) so
/// far, in seconds.
pub fn cpu_seconds_of(pid: &str) -> f64 {
    ticks_of(pid, &[11, 12]).unwrap_or(f64::NAN)
}

/// The running children of process `pid`.
fn children(pid: &str) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let name = e.file_name();
        let Some(p) = name.to_str().filter(|n| n.bytes().all(|b| b.is_ascii_digit())) else { continue };
        if stat_fields(p).is_some_and(|f| f.get(1).map(String::as_str) == Some(pid)) {
            out.push(p.to_owned());
        }
    }
    out
}

/// CPU time of process `pid` and its children so far, in seconds: the
/// children still running (PostgreSQL's backends are processes of their
/// own) and, through the parent's `cutime` and `cstime`, those it has
/// waited for. A process without children: its own.
pub fn tree_cpu_seconds(pid: &str) -> f64 {
    let Some(own) = ticks_of(pid, &[11, 12, 13, 14]) else { return f64::NAN };
    own + children(pid).iter().filter_map(|c| ticks_of(c, &[11, 12])).sum::<f64>()
}

/// The processes of a server: `pid` and its children (as taskset needs
/// them: a child started later inherits its parent's CPUs).
pub fn with_children(pid: &str) -> Vec<String> {
    let mut all = vec![pid.to_owned()];
    all.extend(children(pid));
    all
}

/// CPU time of this process so far, in seconds.
pub fn cpu_seconds() -> f64 {
    cpu_seconds_of("self")
}

/// `(round, i)` spread over 128 bits (two rounds of splitmix64): distinct
/// inputs give distinct, unordered outputs (raw baselines name their users
/// with it, in no particular order, as lessor's lease ids do).
pub fn scramble(round: usize, i: usize) -> u128 {
    let mix = |mut z: u64| {
        z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    let x = ((round as u64) << 32) | i as u64;
    (u128::from(mix(x)) << 64) | u128::from(mix(x ^ 0x5555_5555_5555_5555))
}

/// Copies a directory tree (the example policies into a bench's temp dir).
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for e in std::fs::read_dir(from).expect("read policies") {
        let p = e.expect("entry").path();
        if p.is_dir() {
            copy_dir(&p, &to.join(p.file_name().expect("name")));
        } else {
            std::fs::copy(&p, to.join(p.file_name().expect("name"))).expect("copy");
        }
    }
}

/// One timed run of a vendor bench: rate, latency percentiles (ms) and CPU
/// per operation (us) of this process and of the vendor's servers together.
#[derive(Clone, Copy)]
pub struct Run {
    pub rate: f64,
    pub p50: f64,
    pub p99: f64,
    pub cpu_us: f64,
    pub server_us: f64,
}

/// Measures the CPU of this process and of the servers (by pid, with their
/// children: [`tree_cpu_seconds`]) around a run.
pub struct Meter {
    servers: Vec<String>,
    start: std::time::Instant,
    wall: std::time::SystemTime,
    cpu: f64,
    server_cpu: f64,
}

impl Meter {
    pub fn start<S: AsRef<str>>(servers: &[S]) -> Meter {
        let servers: Vec<String> = servers.iter().map(|s| s.as_ref().to_owned()).collect();
        let server_cpu = servers.iter().map(|p| tree_cpu_seconds(p)).sum();
        Meter { servers, start: std::time::Instant::now(), wall: std::time::SystemTime::now(), cpu: cpu_seconds(), server_cpu }
    }

    /// The run of `n` operations with latencies `lat` (ms).
    pub fn stop(self, n: usize, mut lat: Vec<f64>) -> Run {
        let rate = n as f64 / self.start.elapsed().as_secs_f64();
        let per = |d: f64| d * 1e6 / n as f64;
        let server_cpu: f64 = self.servers.iter().map(|p| tree_cpu_seconds(p)).sum();
        log_phase(self.wall);
        Run {
            rate,
            p50: pct(&mut lat, 0.5),
            p99: pct(&mut lat, 0.99),
            cpu_us: per(cpu_seconds() - self.cpu),
            server_us: per(server_cpu - self.server_cpu),
        }
    }
}

/// With `LESSOR_BENCH_PHASES=<file>`, appends the wall-clock bounds of
/// each timed run to the file (`<start> <end>`, Unix seconds, in the order
/// the bench runs them), to cut a `perf record -k realtime` profile (or a
/// block-layer trace) by run: how the MariaDB inode writes below lessor's
/// audit `fstat` were found (README, the MySQL bench).
fn log_phase(start: std::time::SystemTime) {
    let Ok(path) = std::env::var("LESSOR_BENCH_PHASES") else { return };
    let unix = |t: std::time::SystemTime| t.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0);
    let line = format!("{:.6} {:.6}\n", unix(start), unix(std::time::SystemTime::now()));
    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(&path).expect("LESSOR_BENCH_PHASES file");
    std::io::Write::write_all(&mut f, line.as_bytes()).expect("phase log");
}

/// Issues one lease of `role` per JWT through lessor at `url`, `clients`
/// at a time, measuring this process and the servers `pids`; returns the
/// run and the lease ids.
pub async fn lessor_issue<S: AsRef<str>>(url: &str, pids: &[S], clients: usize, role: &str, jwts: Vec<String>) -> (Run, Vec<String>) {
    let http = reqwest::Client::new();
    let n = jwts.len();
    let jwts = std::sync::Arc::new(std::sync::Mutex::new(jwts));
    let meter = Meter::start(pids);
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..clients {
        let (http, url, jwts, role) = (http.clone(), url.to_owned(), jwts.clone(), role.to_owned());
        set.spawn(async move {
            let (mut lat, mut ids) = (Vec::new(), Vec::new());
            loop {
                let Some(jwt) = jwts.lock().expect("lock").pop() else { break };
                let t = std::time::Instant::now();
                let r = http
                    .post(format!("{url}/v1/leases"))
                    .bearer_auth(jwt)
                    .json(&serde_json::json!({"role": role, "ttl": "10m"}))
                    .send()
                    .await
                    .expect("request");
                let status = r.status().as_u16();
                let v: serde_json::Value = r.json().await.expect("json");
                assert_eq!(status, 201, "{v}");
                ids.push(v["lease_id"].as_str().expect("lease_id").to_owned());
                lat.push(t.elapsed().as_secs_f64() * 1000.0);
            }
            (lat, ids)
        });
    }
    let (mut lat, mut ids) = (Vec::new(), Vec::new());
    while let Some(r) = set.join_next().await {
        let (l, i) = r.expect("client");
        lat.extend(l);
        ids.extend(i);
    }
    assert_eq!(ids.len(), n);
    (meter.stop(n, lat), ids)
}

/// Revokes every lease through lessor (admin token), `clients` at a time.
pub async fn lessor_revoke<S: AsRef<str>>(url: &str, pids: &[S], clients: usize, admin: &str, ids: Vec<String>) -> Run {
    let http = reqwest::Client::new();
    let n = ids.len();
    let ids = std::sync::Arc::new(std::sync::Mutex::new(ids));
    let meter = Meter::start(pids);
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..clients {
        let (http, url, ids, admin) = (http.clone(), url.to_owned(), ids.clone(), admin.to_owned());
        set.spawn(async move {
            let mut lat = Vec::new();
            loop {
                let Some(id) = ids.lock().expect("lock").pop() else { break };
                let t = std::time::Instant::now();
                let r = http.delete(format!("{url}/v1/leases/{id}")).bearer_auth(&admin).send().await.expect("request");
                let status = r.status().as_u16();
                let body = r.text().await.unwrap_or_default();
                assert_eq!(status, 200, "{body}");
                lat.push(t.elapsed().as_secs_f64() * 1000.0);
            }
            lat
        });
    }
    let mut lat = Vec::new();
    while let Some(r) = set.join_next().await {
        lat.extend(r.expect("client"));
    }
    meter.stop(n, lat)
}

/// The issue stages of `plugin` so far in this process (lessor runs in
/// it): `lessor_issue_stage_seconds`' (sum in seconds, count) per stage,
/// in [`lessor::lease::IssueStages::NAMES`]' order.
pub fn stages(plugin: &str) -> Vec<(f64, u64)> {
    let m = lessor::telemetry::metrics();
    lessor::lease::IssueStages::NAMES
        .iter()
        .map(|stage| {
            let h = m.issue_stage_seconds.with_label_values(&[plugin, stage]);
            (h.get_sample_sum(), h.get_sample_count())
        })
        .collect()
}

/// Prints the mean time of each issue stage between two [`stages`]
/// snapshots, and how much of the whole is lessor's own (every stage but
/// the vendor call).
pub fn print_stages(before: &[(f64, u64)], after: &[(f64, u64)]) {
    let mut parts = Vec::new();
    let (mut own, mut all) = (0.0, 0.0);
    for ((name, (s0, n0)), (s1, n1)) in lessor::lease::IssueStages::NAMES.iter().zip(before).zip(after) {
        let n = n1.saturating_sub(*n0);
        let ms = if n == 0 { f64::NAN } else { (s1 - s0) * 1000.0 / n as f64 };
        parts.push(format!("{name} {ms:.2}"));
        all += ms;
        if *name != "vendor" {
            own += ms;
        }
    }
    println!("  lessor issue stages, mean ms: {}; lessor's own {own:.2} of {all:.2} ms", parts.join(", "));
}

/// Medians over rounds, field by field.
pub fn median_run(runs: &[Run]) -> Run {
    let m = |f: fn(&Run) -> f64| pct(&mut runs.iter().map(f).collect::<Vec<_>>(), 0.5);
    Run { rate: m(|r| r.rate), p50: m(|r| r.p50), p99: m(|r| r.p99), cpu_us: m(|r| r.cpu_us), server_us: m(|r| r.server_us) }
}

/// One result line; `servers` names the vendor's processes.
pub fn print_run(what: &str, r: &Run, servers: &str) {
    println!(
        "  {what:<52} {:8.0}/s  p50 {:6.2} ms  p99 {:6.2} ms  CPU/op: this process {:5.0} us, {servers} {:5.0} us",
        r.rate, r.p50, r.p99, r.cpu_us, r.server_us
    );
}

/// Where the processes of a vendor bench run: all on every CPU (as on one
/// shared machine), or the vendor's servers on one half of the CPUs and this
/// process (lessor and the load's clients, or the raw clients) on the other,
/// as when the vendor runs on its own hosts.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    Shared,
    Split,
}

impl Layout {
    pub fn describe(self) -> String {
        let n = cpus();
        match self {
            Layout::Shared => format!("all processes on all {n} CPUs"),
            Layout::Split => {
                let (mine, theirs) = split_cpus();
                format!("this process (lessor + clients) on CPU {mine}, the vendor's servers on CPU {theirs}")
            }
        }
    }

    /// Pins this process and the servers `pids` to the layout's CPUs (every
    /// thread, with `taskset`; threads started later inherit it).
    pub fn apply(self, pids: &[String]) {
        let n = cpus();
        let all = format!("0-{}", n.saturating_sub(1));
        let (mine, theirs) = match self {
            Layout::Shared => (all.clone(), all),
            Layout::Split => split_cpus(),
        };
        taskset(&std::process::id().to_string(), &mine);
        for p in pids {
            taskset(p, &theirs);
        }
    }
}

/// The first half of the CPUs (at least one) and the rest, as taskset lists.
fn split_cpus() -> (String, String) {
    let n = cpus().max(2);
    let half = n / 2;
    let list = |from: usize, to: usize| if from == to { from.to_string() } else { format!("{from}-{to}") };
    (list(0, half - 1), list(half, n - 1))
}

fn taskset(pid: &str, cpus: &str) {
    let st = std::process::Command::new("taskset")
        .args(["-a", "-p", "-c", cpus, pid])
        .stdout(std::process::Stdio::null())
        .status()
        .expect("taskset (Debian package util-linux)");
    assert!(st.success(), "taskset -a -p -c {cpus} {pid} failed");
}

/// The layouts a vendor bench runs: shared, then split where there are at
/// least two CPUs.
pub fn layouts() -> Vec<Layout> {
    if cpus() >= 2 {
        vec![Layout::Shared, Layout::Split]
    } else {
        vec![Layout::Shared]
    }
}

/// A short tag for names made in a layout's rounds (unique per layout).
pub fn layout_tag(l: Layout) -> &'static str {
    match l {
        Layout::Shared => "s",
        Layout::Split => "p",
    }
}

/// The daemon's allocator (src/main.rs): benches that run lessor in their
/// own process measure it with the same one.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
