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

pub fn cpus() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

/// The `p` quantile (0..=1) of `v` (sorted in place); NaN when empty.
pub fn pct(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

/// CPU time (user + system) of process `pid` (`"self"` for this one) so
/// far, in seconds.
pub fn cpu_seconds_of(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // After the command name (which may hold spaces): utime and stime are
    // fields 14 and 15, in clock ticks (100 per second on Linux).
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let tick = |i: usize| f.get(i).and_then(|x| x.parse::<f64>().ok());
    tick(11).zip(tick(12)).map(|(u, s)| (u + s) / 100.0).unwrap_or(f64::NAN)
}

/// CPU time of this process so far, in seconds.
pub fn cpu_seconds() -> f64 {
    cpu_seconds_of("self")
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
