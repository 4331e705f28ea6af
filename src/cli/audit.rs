//! `lessor audit`: verify a file's hash chain and signed checkpoints, hash a
//! value the way the audit log does (read from stdin, never argv), and query
//! entries by lease, subject, role, action, request id and time.

use std::io::{BufRead, Read};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{anyhow, Context};
use clap::Subcommand;
use serde_json::Value;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::audit::chain::{self, VerifyOpts};
use crate::audit::{keys, writer};
use crate::config::Config;

#[derive(Debug, Subcommand)]
pub enum AuditCmd {
    /// Check an audit file: every line's hash, the chain, the sequence, the
    /// signed checkpoints, and (for the current file) the chain head the
    /// daemon recorded in `<file>.head`. Names the first bad line. Several
    /// files (oldest first), or a directory (its `audit.log.<seq>` rotated
    /// files and `audit.log`), are checked as one series, end to end.
    Verify {
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// In a directory, the current file's name (rotated files are
        /// `<name>.<first sequence number>`).
        #[arg(long, default_value = "audit.log")]
        name: String,
        /// The file before this one (rotation): this file must continue it.
        #[arg(long)]
        after: Option<PathBuf>,
        /// Public key checkpoints must be signed with (base64, as in
        /// `<data_dir>/audit-signing.key.pub`). Without it, the key named in
        /// the file is used, which proves integrity only against editors
        /// without the key file.
        #[arg(long)]
        public_key: Option<PathBuf>,
        /// Head record to check against (default `<file>.head` if present).
        #[arg(long, conflicts_with = "no_head")]
        head: Option<PathBuf>,
        /// Do not check a head record.
        #[arg(long)]
        no_head: bool,
    },
    /// Print `hmac-sha256:<hex>` of the value on stdin (one trailing newline
    /// is dropped), under the deployment's audit key, to grep the log for a
    /// known token or value.
    Hash {
        /// The audit HMAC key file (default: from the config).
        #[arg(long)]
        key_file: Option<PathBuf>,
        #[arg(long, short, env = "LESSOR_CONFIG", default_value = "lessor.toml")]
        config: PathBuf,
    },
    /// Print the entries that match every filter given.
    Query {
        #[arg(required = true)]
        files: Vec<PathBuf>,
        #[arg(long)]
        lease: Option<String>,
        /// Workload subject (exact).
        #[arg(long)]
        subject: Option<String>,
        #[arg(long)]
        role: Option<String>,
        /// `issue`, `renew`, `revoke`, `expire`, `decide`, `authenticate`,
        /// ...; a trailing `.` matches a family (`admin.`).
        #[arg(long)]
        action: Option<String>,
        #[arg(long)]
        request_id: Option<String>,
        /// RFC 3339 time, or a duration ago (`2h`, `3d`).
        #[arg(long)]
        since: Option<String>,
        #[arg(long)]
        until: Option<String>,
    },
}

pub fn run(cmd: AuditCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        AuditCmd::Verify { files, name, after, public_key, head, no_head } => {
            let files = series(&files, &name)?;
            verify(&files, after.as_deref(), public_key.as_deref(), head, no_head)
        }
        AuditCmd::Hash { key_file, config } => hash(key_file, &config),
        AuditCmd::Query { files, lease, subject, role, action, request_id, since, until } => {
            let f = Filter {
                lease,
                subject,
                role,
                action,
                request_id,
                since: since.as_deref().map(parse_time).transpose()?,
                until: until.as_deref().map(parse_time).transpose()?,
            };
            query(&files, &f)
        }
    }
}

/// The files to verify, oldest first: as given, or a directory's series.
fn series(files: &[PathBuf], name: &str) -> anyhow::Result<Vec<PathBuf>> {
    match files {
        [dir] if dir.is_dir() => {
            let current = dir.join(name);
            let mut v: Vec<PathBuf> = writer::rotated_files(&current).into_iter().map(|(_, p)| p).collect();
            if current.is_file() {
                v.push(current);
            }
            if v.is_empty() {
                return Err(anyhow!("{} holds no `{name}` or `{name}.<seq>` audit files", dir.display()));
            }
            Ok(v)
        }
        _ => Ok(files.to_vec()),
    }
}

fn verify(files: &[PathBuf], after: Option<&Path>, public_key: Option<&Path>, head: Option<PathBuf>, no_head: bool) -> anyhow::Result<ExitCode> {
    let Some(file) = files.last() else { return Err(anyhow!("no audit file given")) };
    let after = match after {
        Some(p) => Some(chain::last_head(p).map_err(|e| anyhow!(e))?.ok_or_else(|| anyhow!("{} is empty", p.display()))?),
        None => None,
    };
    let public_key = public_key.map(keys::read_public_key).transpose().map_err(|e| anyhow!(e))?;
    let head_file = if no_head { None } else { Some(head.unwrap_or_else(|| writer::head_path(file))) };
    let head = match &head_file {
        Some(p) => writer::read_head(p).map_err(|e| anyhow!(e))?,
        None => None,
    };
    if let (Some(h), Some(k)) = (&head, &public_key) {
        chain::check_signature(h, Some(k)).map_err(|e| anyhow!("head record: {e}"))?;
    }
    let pinned = public_key.is_some();
    let opts = VerifyOpts { after, public_key, head };
    match chain::verify_series(files, &opts) {
        Ok(reports) => {
            for (f, r) in files.iter().zip(&reports) {
                let range = match (&r.first, &r.last) {
                    (Some(a), Some(b)) => format!("sequence {}..{}", a.seq, b.seq),
                    _ => "empty".into(),
                };
                println!(
                    "ok: {}: {} lines ({range}), {} signed checkpoints{}",
                    f.display(),
                    r.lines,
                    r.checkpoints,
                    r.last_checkpoint_line.map(|l| format!(", the last at line {l}")).unwrap_or_default()
                );
            }
            let (Some(first), Some(r)) = (reports.first(), reports.last()) else { return Ok(ExitCode::SUCCESS) };
            if files.len() > 1 {
                println!("ok: {} files form one chain", files.len());
            }
            if r.unsigned_tail > 0 {
                println!("note: the last {} entries come after the last checkpoint and are not signed yet", r.unsigned_tail);
            }
            if opts.after.is_none() {
                if let Some(f) = &first.first {
                    if f.seq > 0 {
                        println!("note: the first line continues a chain from an earlier file; pass --after <that file> to check the link");
                    }
                }
            }
            if r.head_checked {
                println!("ok: the chain head the daemon recorded is in the file");
            }
            if !pinned {
                let mut ids: Vec<&str> = reports.iter().flat_map(|r| r.key_ids.iter().map(String::as_str)).collect();
                ids.dedup();
                println!(
                    "note: signatures were checked with the key named in the file ({}); pin it with --public-key <audit-signing.key.pub>",
                    if ids.is_empty() { "none".to_owned() } else { ids.join(", ") }
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(f) => {
            println!("FAIL {f}");
            Ok(ExitCode::FAILURE)
        }
    }
}

fn hash(key_file: Option<PathBuf>, config: &Path) -> anyhow::Result<ExitCode> {
    let path = match key_file {
        Some(p) => p,
        None => Config::load(config)?.audit_hmac_key_path(),
    };
    let key = keys::load_hmac(&path, false)?;
    let mut input = Vec::new();
    std::io::stdin().read_to_end(&mut input).context("reading the value from stdin")?;
    let value = input.strip_suffix(b"\n").unwrap_or(&input);
    let value = value.strip_suffix(b"\r").unwrap_or(value);
    if value.is_empty() {
        return Err(anyhow!("no value on stdin; e.g. `lessor audit hash < token.txt`"));
    }
    println!("{}", keys::hmac_hex(&key, value));
    Ok(ExitCode::SUCCESS)
}

fn parse_time(s: &str) -> anyhow::Result<OffsetDateTime> {
    if let Ok(t) = OffsetDateTime::parse(s, &Rfc3339) {
        return Ok(t);
    }
    let d = crate::duration::parse(s).map_err(|_| anyhow!("`{s}` is neither an RFC 3339 time (2024-05-01T12:00:00Z) nor a duration ago (2h)"))?;
    crate::duration::sub(OffsetDateTime::now_utc(), d).ok_or_else(|| anyhow!("`{s}` ago is before the year -9999"))
}

struct Filter {
    lease: Option<String>,
    subject: Option<String>,
    role: Option<String>,
    action: Option<String>,
    request_id: Option<String>,
    since: Option<OffsetDateTime>,
    until: Option<OffsetDateTime>,
}

impl Filter {
    fn matches(&self, v: &Value) -> bool {
        let s = |p: &str| v.pointer(p).and_then(Value::as_str);
        let eq = |want: &Option<String>, p: &str| want.as_deref().is_none_or(|w| s(p) == Some(w));
        if s("/type") != Some("event") {
            return false;
        }
        if !(eq(&self.lease, "/lease_id") && eq(&self.subject, "/actor/subject") && eq(&self.role, "/role") && eq(&self.request_id, "/request_id")) {
            return false;
        }
        if let Some(a) = &self.action {
            let got = s("/action").unwrap_or_default();
            let ok = if a.ends_with('.') { got.starts_with(a.as_str()) } else { got == a };
            if !ok {
                return false;
            }
        }
        if self.since.is_some() || self.until.is_some() {
            let Some(t) = s("/time").and_then(|t| OffsetDateTime::parse(t, &Rfc3339).ok()) else { return false };
            if self.since.is_some_and(|x| t < x) || self.until.is_some_and(|x| t > x) {
                return false;
            }
        }
        true
    }
}

fn query(files: &[PathBuf], f: &Filter) -> anyhow::Result<ExitCode> {
    let mut found = 0usize;
    for file in files {
        let r = std::fs::File::open(file).with_context(|| format!("opening {}", file.display()))?;
        for (i, line) in std::io::BufReader::new(r).lines().enumerate() {
            let line = line.with_context(|| format!("reading {}", file.display()))?;
            match serde_json::from_str::<Value>(&line) {
                Ok(v) if f.matches(&v) => {
                    found += 1;
                    println!("{line}");
                }
                Ok(_) => {}
                Err(_) => eprintln!("warning: {}:{}: not a JSON line (run `lessor audit verify`)", file.display(), i + 1),
            }
        }
    }
    Ok(if found > 0 { ExitCode::SUCCESS } else { ExitCode::from(1) })
}
