//! The audit log: one chained, signed JSON line per authentication, policy
//! decision, issue, renew, revoke, expiry, revocation failure, admin action
//! and reload. Owns the entry format ([`Event`]), the hash chain and
//! checkpoints ([`chain`]), the audit keys ([`keys`]) and the one writer
//! thread with its sinks ([`writer`]).
//!
//! Fail closed: callers that grant or extend access `record` an entry and
//! refuse (503) if it cannot be written (by the caller, or queued within
//! [`Settings::queue_timeout`]); the queue is bounded, and entries that gate
//! nothing (`note`) are dropped and counted when it is full, never waiting.
//! Authentication failures are aggregated ([`aggregate`]). Sensitive values (tokens,
//! credentials, free-form client strings) are never written, only their
//! HMAC ([`Audit::hash`]).
//!
//! Must not import: http, lease, store, policy, connections, config, vault (they call the audit log, not
//! the other way round).

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use tokio::sync::oneshot;

pub mod aggregate;
pub mod chain;
pub mod keys;
pub mod writer;

use writer::{Msg, Shared, Writer};

use crate::identity::VerifiedWorkload;
use crate::principal::{Actor, RequestMeta};

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// The sink cannot be written: the request must not go ahead.
    #[error("audit log unavailable: {0}")]
    Unavailable(String),
    #[error("audit key {path}: {message}")]
    Key { path: PathBuf, message: String },
    /// The existing file cannot be continued safely.
    #[error("{0}")]
    Damaged(String),
}

/// Where entries go and how often checkpoints are signed.
#[derive(Debug, Clone)]
pub struct Settings {
    pub file: Option<PathBuf>,
    pub stdout: bool,
    pub fsync: bool,
    pub hmac_key_file: PathBuf,
    pub signing_key_file: PathBuf,
    pub checkpoint_every: u64,
    pub checkpoint_interval: Duration,
    pub rotation: Rotation,
    /// Entries queued for the writer at most.
    pub queue: usize,
    /// How long an entry that gates access waits for room in the queue
    /// before the request fails (503).
    pub queue_timeout: Duration,
    /// Authentication failures: one summary per interval...
    pub auth_failure_interval: Duration,
    /// ...plus this many written in full.
    pub auth_failures_in_full: u32,
}

/// When the writer starts a new file and which old ones it removes.
#[derive(Debug, Clone, Default)]
pub struct Rotation {
    pub max_size: Option<u64>,
    pub max_age: Option<Duration>,
    /// Rotated files kept (the oldest beyond this are removed).
    pub keep_files: Option<usize>,
    /// Rotated files older than this are removed.
    pub keep_for: Option<Duration>,
}

/// Now, as written in entries.
pub fn now_rfc3339() -> String {
    OffsetDateTime::now_utc().format(&Rfc3339).unwrap_or_default()
}

/// Who acted. `subject` and `issuer` come from a verified token (or the
/// config); nothing here is a raw client string.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ActorInfo {
    /// `workload`, `person`, `admin` or `system`. For a person, `claims_policy`
    /// is the provider's name and `name` the email.
    pub kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    /// The configured issuer whose claim mapping was used.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub claims_policy: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

impl ActorInfo {
    pub fn workload(issuer_config: &str, issuer: &str, subject: &str) -> ActorInfo {
        ActorInfo {
            kind: "workload",
            issuer: Some(issuer.to_owned()),
            claims_policy: Some(issuer_config.to_owned()),
            subject: Some(subject.to_owned()),
            name: None,
        }
    }
    pub fn admin(name: &str) -> ActorInfo {
        ActorInfo { kind: "admin", name: Some(name.to_owned()), ..Default::default() }
    }
    pub fn system(name: &str) -> ActorInfo {
        ActorInfo { kind: "system", name: Some(name.to_owned()), ..Default::default() }
    }
}

/// One audit entry. The writer adds `seq`, `prev` and `hash`.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    #[serde(rename = "type")]
    kind: &'static str,
    pub time: String,
    /// `authenticate`, `decide`, `issue`, `renew`, `revoke`, `expire`,
    /// `admin.*`, `policy.reload`, `audit.reopen`, `service.start`, `service.stop`.
    pub action: &'static str,
    /// `ok`, `pending` (about to act), `denied`, `invalid`, `failed`, `error`.
    pub outcome: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub actor: Option<ActorInfo>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scopes: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ttl_seconds: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lease_id: Option<String>,
    /// Deciding policy ids.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policies: Option<Vec<String>>,
    /// The deciding policies' `@reason`s, or the refusal in a few words.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reasons: Option<Vec<String>>,
    /// A bounded error kind (`expired`, `vendor_unavailable`, ...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_kind: Option<String>,
    /// lessor's own error text (never a client string).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<f64>,
    #[serde(skip_serializing_if = "serde_json::Map::is_empty")]
    pub details: serde_json::Map<String, serde_json::Value>,
}

impl Event {
    pub fn new(action: &'static str, outcome: &'static str) -> Event {
        Event {
            kind: "event",
            time: now_rfc3339(),
            action,
            outcome,
            request_id: None,
            actor: None,
            role: None,
            scopes: None,
            ttl_seconds: None,
            lease_id: None,
            policies: None,
            reasons: None,
            error_kind: None,
            error: None,
            source: None,
            latency_ms: None,
            details: serde_json::Map::new(),
        }
    }

    /// Stamps request id, source address, latency and (when the entry
    /// records the request's authentication) the credential's HMAC.
    pub fn request(mut self, meta: Option<&RequestMeta>) -> Event {
        if let Some(m) = meta {
            self.source = Some(m.source.to_string());
            if let Some(c) = &m.credential {
                self.details.insert("credential".into(), c.clone().into());
            }
            if m.api != "native" {
                self.details.insert("api".into(), m.api.into());
            }
            if let Some(r) = &m.vault_role {
                self.details.insert("vault_role".into(), r.clone().into());
            }
            self = self.request_brief(m);
        }
        self
    }

    /// Stamps request id and latency only: for the second entry of a
    /// request whose first one has the rest (`issue ok` after
    /// `issue pending`).
    pub fn request_brief(mut self, m: &RequestMeta) -> Event {
        self.request_id = Some(m.request_id.clone());
        self.latency_ms = Some((m.started.elapsed().as_secs_f64() * 1e6).round() / 1e3);
        self
    }

    pub fn actor(mut self, a: ActorInfo) -> Event {
        self.actor = Some(a);
        self
    }

    pub fn error(mut self, kind: &str, message: impl Into<String>) -> Event {
        self.error_kind = Some(kind.to_owned());
        self.error = Some(message.into());
        self
    }

    pub fn detail(mut self, k: &str, v: impl Into<serde_json::Value>) -> Event {
        self.details.insert(k.to_owned(), v.into());
        self
    }
}


struct Inner {
    /// The writer (`None`: audit off), written by callers when they may
    /// ([`Audit::write_inline`]) and by its thread.
    writer: Option<Shared>,
    tx: Option<std::sync::Mutex<mpsc::Sender<Msg>>>,
    hmac: ring::hmac::Key,
    /// One permit per queued entry: the queue's bound.
    permits: Arc<tokio::sync::Semaphore>,
    capacity: usize,
    queue_timeout: Duration,
    failures: Arc<std::sync::Mutex<aggregate::Aggregator>>,
}

/// Handle to the audit log; cheap to clone.
#[derive(Clone)]
pub struct Audit {
    inner: Arc<Inner>,
}

impl Audit {
    /// An audit log that writes nothing (`sink = "off"`, unit tests).
    pub fn disabled() -> Audit {
        let mut k = [0u8; 32];
        rand::RngCore::fill_bytes(&mut rand::rng(), &mut k);
        Audit {
            inner: Arc::new(Inner {
                writer: None,
                tx: None,
                hmac: ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &k),
                permits: Arc::new(tokio::sync::Semaphore::new(1)),
                capacity: 1,
                queue_timeout: Duration::from_secs(1),
                failures: Arc::new(std::sync::Mutex::new(aggregate::Aggregator::new(Duration::from_secs(60), 0))),
            }),
        }
    }

    /// Loads (or creates) the keys, opens the sinks and starts the writer.
    pub fn open(s: &Settings) -> Result<Audit, AuditError> {
        let stdout: Option<writer::Extra> = if s.stdout { Some(Box::new(std::io::stdout())) } else { None };
        Self::open_with(s, stdout)
    }

    /// [`Audit::open`] with the second sink given (tests: a broken pipe).
    fn open_with(s: &Settings, stdout: Option<writer::Extra>) -> Result<Audit, AuditError> {
        let hmac = keys::load_hmac(&s.hmac_key_file, true)?;
        let signer = keys::load_signer(&s.signing_key_file)?;
        let failures = Arc::new(std::sync::Mutex::new(aggregate::Aggregator::new(
            s.auth_failure_interval,
            s.auth_failures_in_full,
        )));
        let mut w = Writer::open(s, stdout, signer, failures.clone())?;
        // Before any entry, which a caller may write as soon as this returns.
        w.start();
        let shared: Shared = Arc::new(std::sync::Mutex::new(w));
        let (tx, rx) = mpsc::channel();
        let thread = shared.clone();
        std::thread::Builder::new()
            .name("lessor-audit".into())
            .spawn(move || writer::run(thread, rx))
            .map_err(|e| AuditError::Unavailable(format!("cannot start the audit writer: {e}")))?;
        let capacity = s.queue.clamp(1, tokio::sync::Semaphore::MAX_PERMITS);
        Ok(Audit {
            inner: Arc::new(Inner {
                writer: Some(shared),
                tx: Some(std::sync::Mutex::new(tx)),
                hmac,
                permits: Arc::new(tokio::sync::Semaphore::new(capacity)),
                capacity,
                queue_timeout: s.queue_timeout,
                failures,
            }),
        })
    }

    pub fn enabled(&self) -> bool {
        self.inner.tx.is_some()
    }

    fn send(&self, m: Msg) -> Result<(), AuditError> {
        let Some(tx) = &self.inner.tx else { return Ok(()) };
        let tx = tx.lock().map_err(|_| AuditError::Unavailable("the audit writer is gone".into()))?;
        tx.send(m).map_err(|_| AuditError::Unavailable("the audit writer has stopped".into()))
    }

    fn encode(e: &Event) -> Result<String, AuditError> {
        serde_json::to_string(e).map_err(|err| AuditError::Unavailable(format!("cannot encode an entry: {err}")))
    }

    /// Writes `e` and waits until it is written (or failed). Use before
    /// granting or extending access: an error means "do not go ahead".
    pub async fn record(&self, e: Event) -> Result<(), AuditError> {
        if !self.enabled() {
            return Ok(());
        }
        let json = Self::encode(&e)?;
        if let Some(written) = self.write_inline(&json) {
            return written.map(|_| ()).map_err(AuditError::Unavailable);
        }
        let t = self.inner.queue_timeout;
        let permit = match tokio::time::timeout(t, self.inner.permits.clone().acquire_owned()).await {
            Ok(Ok(p)) => p,
            Ok(Err(_)) => return Err(AuditError::Unavailable("the audit writer has stopped".into())),
            Err(_) => {
                crate::telemetry::metrics().audit_write_failures.inc();
                return Err(AuditError::Unavailable(format!(
                    "the audit queue has been full for {} ms (the writer is not keeping up)",
                    t.as_millis()
                )));
            }
        };
        let (reply, rx) = oneshot::channel();
        self.send(Msg::Entry { json, reply: Some(reply), permit: Some(permit) })?;
        match rx.await {
            Ok(Ok(_seq)) => Ok(()),
            Ok(Err(m)) => Err(AuditError::Unavailable(m)),
            Err(_) => Err(AuditError::Unavailable("the audit writer has stopped".into())),
        }
    }

    /// Queues `e` without waiting; a failure is counted and logged by the
    /// writer. For entries that do not gate anything (denials, reads, the
    /// expiry worker's outcomes). When the queue is full the entry is
    /// dropped and counted (`lessor_audit_write_failures_total`).
    pub fn note(&self, e: Event) {
        if !self.enabled() {
            return;
        }
        if !self.submit(e, || true) {
            crate::telemetry::metrics().audit_write_failures.inc();
            tracing::debug!("audit queue full; entry dropped");
        }
    }

    /// Writes `e` inline when it may, else queues it if `room()` and a
    /// permit allow; false when it was dropped for want of room. A failed
    /// write is counted and logged by the writer.
    fn submit(&self, e: Event, room: impl FnOnce() -> bool) -> bool {
        let json = match Self::encode(&e) {
            Ok(j) => j,
            Err(err) => {
                crate::telemetry::metrics().audit_write_failures.inc();
                tracing::error!(error = %err, action = e.action, "audit entry lost");
                return true;
            }
        };
        if self.write_inline(&json).is_some() {
            return true;
        }
        let permit = if room() { self.inner.permits.clone().try_acquire_owned().ok() } else { None };
        let Some(permit) = permit else { return false };
        if let Err(err) = self.send(Msg::Entry { json, reply: None, permit: Some(permit) }) {
            crate::telemetry::metrics().audit_write_failures.inc();
            tracing::error!(error = %err, action = e.action, "audit entry lost");
        }
        true
    }

    /// Writes `json` on the caller's thread, or `None` when it must go
    /// through the queue: an entry is queued (it goes first: a flow's
    /// entries stay in order), the writer is busy (its thread writing a
    /// batch: queued entries are group written), or the sinks may stall
    /// ([`Writer::can_write_inline`]).
    fn write_inline(&self, json: &str) -> Option<Result<u64, String>> {
        if self.inner.permits.available_permits() < self.inner.capacity {
            return None;
        }
        let mut w = self.inner.writer.as_ref()?.try_lock().ok()?;
        if !w.can_write_inline(json.len()) {
            return None;
        }
        Some(w.write_entries(&[json]))
    }

    /// A refused authentication: counted in the interval's summary
    /// (configured issuer or `unknown`, bounded reason, source network);
    /// `entry` is built and written in full only for the first few of the
    /// interval, and only while the queue is at most half full. Never
    /// waits; O(1) per call.
    pub fn auth_failed(&self, issuer: &str, reason: &'static str, source: IpAddr, entry: impl FnOnce() -> Event) {
        if !self.enabled() {
            return;
        }
        let Ok(mut agg) = self.inner.failures.lock() else { return };
        if !agg.count(issuer, reason, source) {
            return;
        }
        drop(agg);
        // Queued only while the queue is at most half full.
        let inner = &self.inner;
        if !self.submit(entry(), || inner.permits.available_permits() > inner.capacity / 2) {
            if let Ok(mut agg) = inner.failures.lock() {
                agg.dropped();
            }
        }
    }

    /// `hmac-sha256:<hex>` of a sensitive value, under the deployment's
    /// audit key (what `lessor audit hash` prints for the same value).
    pub fn hash(&self, value: &[u8]) -> String {
        keys::hmac_hex(&self.inner.hmac, value)
    }

    /// Closes the file and opens it again at its path (log rotation: rename,
    /// then SIGHUP). The new file continues the chain.
    pub async fn reopen(&self) -> Result<(), AuditError> {
        if !self.enabled() {
            return Ok(());
        }
        let (reply, rx) = oneshot::channel();
        self.send(Msg::Reopen(reply))?;
        rx.await
            .map_err(|_| AuditError::Unavailable("the audit writer has stopped".into()))?
            .map_err(AuditError::Unavailable)
    }

    /// Writes a final checkpoint and stops the writer.
    pub async fn shutdown(&self) {
        let (reply, rx) = oneshot::channel();
        if self.send(Msg::Shutdown(reply)).is_ok() && self.enabled() {
            let _ = rx.await;
        }
    }
}

/// A workload as the audit log records it.
pub fn workload_info(w: &VerifiedWorkload) -> ActorInfo {
    ActorInfo::workload(&w.issuer_name, &w.issuer, &w.subject)
}

// The principal types live in `crate::principal` (below audit, so both
// audit and its users import them); how the log records one is audit's.
impl Actor {
    /// The actor as the audit log records it.
    pub fn audit_info(&self) -> ActorInfo {
        match self {
            Actor::Workload(w) => workload_info(w),
            Actor::Admin { name } => ActorInfo::admin(name),
            Actor::Person(p) => ActorInfo {
                kind: "person",
                issuer: Some(p.issuer.clone()),
                claims_policy: Some(p.provider.clone()),
                subject: Some(p.subject.clone()),
                name: Some(p.email.clone()),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(dir: &std::path::Path) -> Settings {
        Settings {
            file: Some(dir.join("audit.log")),
            stdout: false,
            fsync: false,
            hmac_key_file: dir.join("hmac.key"),
            signing_key_file: dir.join("signing.key"),
            checkpoint_every: 3,
            checkpoint_interval: Duration::from_secs(3600),
            rotation: Rotation::default(),
            queue: 1024,
            queue_timeout: Duration::from_secs(2),
            auth_failure_interval: Duration::from_secs(3600),
            auth_failures_in_full: 5,
        }
    }

    /// A second sink that always fails, like a pipe whose reader is gone.
    struct BrokenPipe;
    impl std::io::Write for BrokenPipe {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            Err(std::io::Error::from(std::io::ErrorKind::BrokenPipe))
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Err(std::io::Error::from(std::io::ErrorKind::BrokenPipe))
        }
    }

    #[tokio::test]
    async fn a_failing_stdout_beside_a_good_file_does_not_fork_the_chain() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = settings(dir.path());
        s.stdout = true;
        let a = Audit::open_with(&s, Some(Box::new(BrokenPipe))).unwrap();
        for i in 0..5 {
            // The file has it: the entry is durable, the caller goes ahead.
            a.record(Event::new("issue", "pending").detail("i", i)).await.unwrap();
        }
        a.shutdown().await;
        let data = std::fs::read(dir.path().join("audit.log")).unwrap();
        let head = writer::read_head(&writer::head_path(&dir.path().join("audit.log"))).unwrap();
        let r = chain::verify(&data, &chain::VerifyOpts { head, ..Default::default() })
            .unwrap_or_else(|f| panic!("{f}\n{}", String::from_utf8_lossy(&data)));
        assert!(r.head_checked);
        // open checkpoint, 3 entries, count checkpoint, 2 entries, shutdown checkpoint
        assert_eq!(r.lines, 8);
    }

    #[tokio::test]
    async fn with_stdout_only_a_stdout_failure_refuses_the_entry() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = settings(dir.path());
        s.file = None;
        s.stdout = true;
        let a = Audit::open_with(&s, Some(Box::new(BrokenPipe))).unwrap();
        let err = a.record(Event::new("issue", "pending")).await.unwrap_err().to_string();
        assert!(err.contains("writing to stdout"), "{err}");
        a.shutdown().await;
    }

    #[tokio::test]
    async fn a_rotated_series_verifies_end_to_end_and_an_edited_middle_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = settings(dir.path());
        s.checkpoint_every = 1000;
        s.rotation.max_size = Some(4096);
        s.rotation.keep_files = Some(3);
        let a = Audit::open(&s).unwrap();
        for i in 0..60 {
            a.record(Event::new("issue", "ok").detail("i", i).detail("pad", "x".repeat(100))).await.unwrap();
        }
        a.shutdown().await;
        let current = dir.path().join("audit.log");
        let rotated = writer::rotated_files(&current);
        assert_eq!(rotated.len(), 3, "keep_files = 3 removes the older ones: {rotated:?}");
        let mut files: Vec<PathBuf> = rotated.iter().map(|(_, p)| p.clone()).collect();
        files.push(current.clone());
        for f in &files {
            assert!(std::fs::metadata(f).unwrap().len() <= 4096 + 1024, "{} is too big", f.display());
        }
        let public = keys::read_public_key(&keys::public_key_path(&s.signing_key_file)).unwrap();
        let head = writer::read_head(&writer::head_path(&current)).unwrap();
        let opts = chain::VerifyOpts { after: None, public_key: Some(public), head };
        let reports = chain::verify_series(&files, &opts).unwrap_or_else(|f| panic!("{f}"));
        assert!(reports.last().unwrap().head_checked);
        assert!(reports[0].first.as_ref().unwrap().seq > 0, "the oldest files were removed");

        // Without the current file, the head record names what is missing.
        let f = chain::verify_series(&files[..files.len() - 1], &opts).unwrap_err();
        assert!(f.failure.why.contains("later files are missing"), "{f}");

        // An edited entry in a middle file: that file, that line.
        let middle = &files[1];
        let text = std::fs::read_to_string(middle).unwrap();
        let edited = text.replacen("\"action\":\"issue\"", "\"action\":\"renew\"", 1);
        assert_ne!(text, edited);
        std::fs::write(middle, edited).unwrap();
        let f = chain::verify_series(&files, &opts).unwrap_err();
        assert_eq!(&f.file, middle, "{f}");
        assert!(f.failure.why.contains("edited"), "{f}");
    }

    #[tokio::test]
    async fn a_flood_of_auth_failures_is_a_few_entries_and_a_summary() {
        let dir = tempfile::tempdir().unwrap();
        let s = settings(dir.path());
        let a = Audit::open(&s).unwrap();
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        for _ in 0..10_000 {
            a.auth_failed("unknown", "malformed", ip, || Event::new("authenticate", "failed"));
        }
        a.shutdown().await;
        let text = std::fs::read_to_string(dir.path().join("audit.log")).unwrap();
        let failed = text.lines().filter(|l| l.contains("\"outcome\":\"failed\"")).count();
        assert_eq!(failed, 5, "{text}");
        let summary: Vec<serde_json::Value> = text
            .lines()
            .filter(|l| l.contains("failed_summary"))
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(summary.len(), 1, "{text}");
        assert_eq!(summary[0]["details"]["failures"], 10_000);
        assert_eq!(summary[0]["details"]["groups"][0]["network"], "192.0.2.0/24");
        assert!(text.len() < 8192, "{} bytes", text.len());
    }

    #[tokio::test]
    async fn a_full_queue_drops_notes_and_times_out_gating_entries() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = settings(dir.path());
        s.queue = 2;
        s.queue_timeout = Duration::from_millis(50);
        let a = Audit::open(&s).unwrap();
        // Hold every permit, as a stuck writer would.
        let held = a.inner.permits.clone().acquire_many_owned(2).await.unwrap();
        a.note(Event::new("revoke", "ok"));
        let err = a.record(Event::new("issue", "pending")).await.unwrap_err().to_string();
        assert!(err.contains("audit queue has been full"), "{err}");
        drop(held);
        a.record(Event::new("issue", "pending")).await.unwrap();
        a.shutdown().await;
        let text = std::fs::read_to_string(dir.path().join("audit.log")).unwrap();
        assert!(!text.contains("\"revoke\""), "the note was dropped: {text}");
    }

    #[tokio::test]
    async fn entries_chain_checkpoints_sign_and_a_reopen_continues_the_chain() {
        let dir = tempfile::tempdir().unwrap();
        let s = settings(dir.path());
        let a = Audit::open(&s).unwrap();
        for i in 0..4 {
            a.record(Event::new("issue", "ok").detail("i", i)).await.unwrap();
        }
        std::fs::rename(dir.path().join("audit.log"), dir.path().join("audit.log.1")).unwrap();
        a.reopen().await.unwrap();
        a.record(Event::new("issue", "ok")).await.unwrap();
        a.shutdown().await;

        let public = keys::read_public_key(&keys::public_key_path(&s.signing_key_file)).unwrap();
        let old = std::fs::read(dir.path().join("audit.log.1")).unwrap();
        let r1 = chain::verify(&old, &chain::VerifyOpts { public_key: Some(public.clone()), ..Default::default() }).unwrap();
        // open checkpoint, 3 entries, count checkpoint, 1 entry, rotate checkpoint
        assert_eq!(r1.lines, 7, "{}", String::from_utf8_lossy(&old));
        assert_eq!(r1.checkpoints, 3);
        assert_eq!(r1.unsigned_tail, 0);
        let new = std::fs::read(dir.path().join("audit.log")).unwrap();
        let head = writer::read_head(&writer::head_path(&dir.path().join("audit.log"))).unwrap();
        let opts = chain::VerifyOpts { after: chain::tail_head(&old).unwrap(), public_key: Some(public), head };
        let r2 = chain::verify(&new, &opts).unwrap();
        assert!(r2.head_checked);
        assert_eq!(r2.lines, 3, "open checkpoint, entry, shutdown checkpoint");

        // Restarting on the same file continues the chain.
        let a = Audit::open(&s).unwrap();
        a.record(Event::new("issue", "ok")).await.unwrap();
        a.shutdown().await;
        let all = std::fs::read(dir.path().join("audit.log")).unwrap();
        chain::verify(&all, &chain::VerifyOpts { after: chain::tail_head(&old).unwrap(), ..Default::default() }).unwrap();
    }

    #[tokio::test]
    async fn a_full_disk_fails_the_write_and_the_chain_stays_clean() {
        if !std::path::Path::new("/dev/full").exists() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let mut s = settings(dir.path());
        s.file = Some(PathBuf::from("/dev/full"));
        let a = Audit::open(&s).unwrap();
        let err = a.record(Event::new("issue", "pending")).await.unwrap_err().to_string();
        assert!(err.starts_with("audit log unavailable: writing /dev/full:"), "{err}");
        assert!(err.contains("No space left on device"), "{err}");
        a.shutdown().await;
    }

    /// The lines of `text` that are entries (not checkpoints), by action.
    fn actions(text: &str) -> Vec<String> {
        text.lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .filter(|v| v["type"] != "checkpoint")
            .map(|v| v["details"]["n"].as_str().unwrap().to_owned())
            .collect()
    }

    #[tokio::test]
    async fn callers_write_their_own_entries_and_never_ahead_of_a_queued_one() {
        let dir = tempfile::tempdir().unwrap();
        let s = settings(dir.path());
        let a = Audit::open(&s).unwrap();
        let ev = |n: &str| Event::new("issue", "ok").detail("n", n);
        // The writer thread is held: an entry it had to carry would wait.
        let (resume, paused) = std::sync::mpsc::channel();
        a.send(Msg::Pause(paused)).unwrap();
        tokio::time::timeout(Duration::from_secs(5), a.record(ev("a")))
            .await
            .expect("a gating entry is written by its caller, with the writer thread held")
            .unwrap();
        a.note(ev("b"));
        // The writer busy (its lock held): the next note is queued...
        let lock = a.inner.writer.as_ref().unwrap().lock().unwrap();
        a.note(ev("c"));
        drop(lock);
        // ...and a later gating entry, the writer free again, must not be
        // written ahead of it.
        let later = tokio::spawn({
            let a = a.clone();
            async move { a.record(ev("d")).await }
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!later.is_finished(), "written around the queued entry");
        resume.send(()).unwrap();
        later.await.unwrap().unwrap();
        a.shutdown().await;
        // After the shutdown checkpoint nothing is written, inline or not.
        let err = a.record(ev("e")).await.unwrap_err().to_string();
        assert!(err.contains("stopped"), "{err}");

        let data = std::fs::read(dir.path().join("audit.log")).unwrap();
        let text = String::from_utf8_lossy(&data);
        assert_eq!(actions(&text), ["a", "b", "c", "d"], "{text}");
        let head = writer::read_head(&writer::head_path(&dir.path().join("audit.log"))).unwrap();
        let r = chain::verify(&data, &chain::VerifyOpts { head, ..Default::default() }).unwrap_or_else(|f| panic!("{f}\n{text}"));
        assert!(r.head_checked);
        assert!(text.lines().last().unwrap().contains("\"reason\":\"shutdown\""), "{text}");
    }

    #[tokio::test]
    async fn a_cut_tail_refuses_to_continue() {
        let dir = tempfile::tempdir().unwrap();
        let s = settings(dir.path());
        let a = Audit::open(&s).unwrap();
        a.record(Event::new("issue", "ok")).await.unwrap();
        a.shutdown().await;
        let p = dir.path().join("audit.log");
        let data = std::fs::read(&p).unwrap();
        let keep = data.iter().position(|b| *b == b'\n').unwrap() + 1;
        std::fs::write(&p, &data[..keep]).unwrap();
        let err = Audit::open(&s).err().unwrap().to_string();
        assert!(err.contains("the tail was removed"), "{err}");
    }
}
