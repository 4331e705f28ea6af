//! The one writer: the sinks and the chain position, behind one lock. An
//! entry is written by its caller when that cannot block for long or
//! reorder anything ([`Writer::can_write_inline`]: the file alone, no
//! fsync, nothing queued, no rotation due), else queued for the writer
//! thread, which takes whatever is queued, chains it, writes it with one
//! `write` per sink (group write), and answers each caller with its own
//! result. Checkpoints are signed every `checkpoint_every` entries, every
//! `checkpoint_interval`, at each (re)open and at shutdown; the latest is
//! also kept in `<file>.head` so a cut tail can be told from a short file.
//!
//! Why callers write: handing each entry to a thread and waiting for its
//! answer costs two thread wake-ups per entry, more than the write itself
//! (measured: 60 to 80 us of CPU per issued credential, two entries, out
//! of 330 to 360 us for a token; README, the MySQL bench). A `write` of a
//! few hundred bytes to a file lands in the page cache; stdout (a pipe a
//! log collector may stop reading) and fsync can stall, so they stay on the
//! thread, where a stall fills the bounded queue and requests get 503s
//! instead of blocking the runtime.
//!
//! The file is the durable sink: once it has a batch the chain moves on,
//! whatever stdout (with `sink = "both"`) does. The writer also rotates the
//! file by size and age (`<file>.<first seq>`, the chain continuing in the
//! new file), removes old rotated files per config, and writes the
//! authentication-failure summary ([`super::aggregate`]) when it is due.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{oneshot, OwnedSemaphorePermit};

use super::chain::{self, make_line, Head, GENESIS};
use super::aggregate::Aggregator;
use super::keys::Signer;
use super::{AuditError, Rotation};
use crate::telemetry::metrics;

/// Entries written per `write` at most.
const MAX_BATCH: usize = 4096;

/// Where a line goes besides the file (stdout; a test's broken pipe).
pub type Extra = Box<dyn Write + Send>;

pub(super) enum Msg {
    /// An entry; `permit` holds its place in the bounded queue until it is
    /// written.
    Entry { json: String, reply: Option<oneshot::Sender<Result<u64, String>>>, permit: Option<OwnedSemaphorePermit> },
    Reopen(oneshot::Sender<Result<(), String>>),
    Shutdown(oneshot::Sender<()>),
    /// Tests: the thread waits for this channel before taking the next
    /// message (it holds no lock meanwhile).
    #[cfg(test)]
    Pause(std::sync::mpsc::Receiver<()>),
}

/// The writer, shared by the thread and the callers that write inline.
pub(super) type Shared = Arc<Mutex<Writer>>;

/// The writer's lock, also after a panic while it was held (the state is
/// then at worst a batch short, which the chain shows; never half a line
/// in the chain position).
pub(super) fn lock(w: &Mutex<Writer>) -> std::sync::MutexGuard<'_, Writer> {
    w.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

pub(super) struct Writer {
    path: Option<PathBuf>,
    file: Option<File>,
    /// Why the file is not open (writes fail with this until a reopen works).
    broken: Option<String>,
    stdout: Option<Extra>,
    /// Whether the last stdout write failed (logged once per outage).
    stdout_failing: bool,
    fsync: bool,
    /// Bytes in the current file (rotation by size).
    file_len: u64,
    /// Whether the file is a regular file (only those rotate).
    regular: bool,
    /// When the current file was started (rotation by age).
    segment_opened: SystemTime,
    rotation: Rotation,
    failures: Arc<Mutex<Aggregator>>,
    next_seq: u64,
    prev: String,
    segment_start: u64,
    since_checkpoint: u64,
    last_checkpoint: Instant,
    every: u64,
    interval: Duration,
    signer: Signer,
    /// The shutdown checkpoint is written: nothing more may be.
    stopped: bool,
}

/// Path of the head record of an audit file.
pub fn head_path(file: &Path) -> PathBuf {
    let mut s = file.as_os_str().to_owned();
    s.push(".head");
    PathBuf::from(s)
}

/// Reads a head record (one checkpoint line).
pub fn read_head(path: &Path) -> Result<Option<chain::Line>, String> {
    match std::fs::read_to_string(path) {
        Ok(t) => chain::parse_line(t.trim_end_matches('\n'))
            .map(Some)
            .map_err(|e| format!("head record {}: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("cannot read head record {}: {e}", path.display())),
    }
}

/// Writes all of `buf` to `w`, returning how many bytes went out before
/// any error (so a failed append can be taken back without asking the
/// file its length first).
fn append<W: Write>(w: &mut W, buf: &[u8]) -> (usize, std::io::Result<()>) {
    let mut done = 0;
    while done < buf.len() {
        match w.write(&buf[done..]) {
            Ok(0) => return (done, Err(std::io::ErrorKind::WriteZero.into())),
            Ok(n) => done = done.saturating_add(n).min(buf.len()),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return (done, Err(e)),
        }
    }
    (done, Ok(()))
}

/// Cuts the last `appended` bytes off `f` (best effort: the write has
/// already failed and is reported as such).
fn take_back(f: &File, appended: usize) {
    if appended == 0 {
        return;
    }
    if let Ok(m) = f.metadata() {
        let _ = f.set_len(m.len().saturating_sub(appended as u64));
    }
}

fn open_append(path: &Path) -> std::io::Result<File> {
    let mut o = std::fs::OpenOptions::new();
    o.append(true).create(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.mode(0o600);
    }
    o.open(path)
}

/// The chain position at the end of an existing regular file (reading only
/// its tail), the sequence number of its first line and that line's time.
fn existing_end(path: &Path) -> Result<Option<(Head, u64, Option<SystemTime>)>, AuditError> {
    let damaged = |m: String| AuditError::Damaged(format!("audit file {}: {m}", path.display()));
    let mut f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(damaged(format!("cannot read: {e}"))),
    };
    let meta = f.metadata().map_err(|e| damaged(e.to_string()))?;
    if !meta.is_file() || meta.len() == 0 {
        return Ok(None);
    }
    let mut first = Vec::new();
    let mut buf = [0u8; 8192];
    while !first.contains(&b'\n') && first.len() < 1 << 20 {
        let n = f.read(&mut buf).map_err(|e| damaged(e.to_string()))?;
        if n == 0 {
            break;
        }
        first.extend_from_slice(&buf[..n]);
    }
    let first_line = first.split(|b| *b == b'\n').next().unwrap_or_default();
    let first = std::str::from_utf8(first_line)
        .ok()
        .and_then(|t| chain::parse_line(t).ok())
        .ok_or_else(|| damaged("its first line is not a valid entry; run `lessor audit verify`".into()))?;
    let first_seq = first.seq;
    let first_time = first
        .value
        .get("time")
        .and_then(serde_json::Value::as_str)
        .and_then(|t| time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).ok())
        .map(SystemTime::from);
    let from = meta.len().saturating_sub(1 << 20);
    f.seek(SeekFrom::Start(from)).map_err(|e| damaged(e.to_string()))?;
    let mut tail = Vec::new();
    f.read_to_end(&mut tail).map_err(|e| damaged(e.to_string()))?;
    if from > 0 {
        let start = tail.iter().position(|b| *b == b'\n').map(|i| i + 1).unwrap_or(tail.len());
        tail.drain(..start);
    }
    match chain::tail_head(&tail) {
        Ok(Some(h)) => Ok(Some((h, first_seq, first_time))),
        Ok(None) => Ok(None),
        Err(e) => Err(damaged(format!(
            "{e}; it cannot be continued. Check it with `lessor audit verify`, then move it aside (the new file continues the chain)"
        ))),
    }
}

/// Name a rotated file gets: `<file>.<first sequence number>`, zero-padded
/// so that names sort in chain order.
pub fn rotated_path(file: &Path, first_seq: u64) -> PathBuf {
    let mut s = file.as_os_str().to_owned();
    s.push(format!(".{first_seq:012}"));
    PathBuf::from(s)
}

/// Rotated files of `file` (`<file>.<digits>`), oldest first.
pub fn rotated_files(file: &Path) -> Vec<(u64, PathBuf)> {
    let (Some(dir), Some(name)) = (file.parent(), file.file_name().and_then(|n| n.to_str())) else { return Vec::new() };
    let dir = if dir.as_os_str().is_empty() { Path::new(".") } else { dir };
    let Ok(rd) = std::fs::read_dir(dir) else { return Vec::new() };
    let prefix = format!("{name}.");
    let mut v: Vec<(u64, PathBuf)> = rd
        .filter_map(Result::ok)
        .filter_map(|e| {
            let n = e.file_name().to_str()?.to_owned();
            let digits = n.strip_prefix(&prefix)?;
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            Some((digits.parse().ok()?, e.path()))
        })
        .collect();
    v.sort();
    v
}

impl Writer {
    pub(super) fn open(
        s: &super::Settings,
        stdout: Option<Extra>,
        signer: Signer,
        failures: Arc<Mutex<Aggregator>>,
    ) -> Result<Writer, AuditError> {
        let path = s.file.clone();
        let mut w = Writer {
            path: path.clone(),
            file: None,
            broken: None,
            stdout,
            stdout_failing: false,
            fsync: s.fsync,
            file_len: 0,
            regular: false,
            segment_opened: SystemTime::now(),
            rotation: s.rotation.clone(),
            failures,
            next_seq: 0,
            prev: GENESIS.to_owned(),
            segment_start: 0,
            since_checkpoint: 0,
            last_checkpoint: Instant::now(),
            every: s.checkpoint_every.max(1),
            interval: s.checkpoint_interval,
            signer,
            stopped: false,
        };
        if let Some(p) = &path {
            let head = read_head(&head_path(p)).map_err(AuditError::Damaged)?;
            let end = existing_end(p)?;
            match (end, head) {
                (Some((e, _, _)), Some(h)) if e.seq < h.seq => {
                    return Err(AuditError::Damaged(format!(
                        "audit file {} ends at sequence {} but its head record ({}) says the daemon wrote up to {}: \
                         the tail was removed. Keep the file as evidence, move it aside and start again",
                        p.display(),
                        e.seq,
                        head_path(p).display(),
                        h.seq
                    )));
                }
                (Some((e, first, first_time)), _) => {
                    w.next_seq = e.seq + 1;
                    w.prev = e.hash;
                    w.segment_start = first;
                    if let Some(t) = first_time {
                        w.segment_opened = t;
                    }
                }
                (None, Some(h)) => {
                    // The file was rotated away while lessor was stopped: the
                    // new file continues the chain from the recorded head.
                    w.next_seq = h.seq + 1;
                    w.prev = h.hash;
                    w.segment_start = w.next_seq;
                }
                (None, None) => {}
            }
            w.reopen_file();
        }
        Ok(w)
    }

    /// (Re)opens the file at the path (after rotation: a new file).
    fn reopen_file(&mut self) {
        let Some(p) = self.path.clone() else { return };
        match open_append(&p) {
            Ok(f) => {
                let meta = f.metadata().ok().filter(|m| m.is_file());
                let len = meta.as_ref().map(|m| m.len()).unwrap_or(0);
                if len == 0 {
                    self.segment_start = self.next_seq;
                    self.segment_opened = SystemTime::now();
                }
                self.file_len = len;
                self.regular = meta.is_some();
                self.file = Some(f);
                self.broken = None;
            }
            Err(e) => {
                let m = format!("cannot open audit file {}: {e}", p.display());
                tracing::error!(error = %m, "audit log unavailable");
                self.file = None;
                self.broken = Some(m);
            }
        }
    }

    /// Writes `buf` (chained lines) to every sink, one write each. The
    /// result is the durable sink's: the file when there is one, else
    /// stdout. A stdout failure beside a good file is logged and counted,
    /// and the chain still moves on (the file has the lines).
    fn write_lines(&mut self, buf: &[u8]) -> Result<(), String> {
        if self.path.is_some() {
            let path = self.path.as_ref().map(|p| p.display().to_string()).unwrap_or_default();
            let Some(f) = self.file.as_mut() else {
                return Err(self.broken.clone().unwrap_or_else(|| "audit file is not open".into()));
            };
            // No `fstat` per write: asking for the file's times makes the
            // kernel stamp the next write with a fine-grained time, which
            // moves every file's coarse clock on (multigrain timestamps,
            // Linux 6.13+), so a database beside lessor finds its inode
            // dirty in more of its syncs and writes it (measured on ext4
            // without a journal: 2.05 inode-table writes per MariaDB
            // account against 0.59 without lessor, 0.64 after this;
            // README, the MySQL bench). The length is read only to take
            // back a failed write.
            let (appended, written) = append(f, buf);
            let written = written.and_then(|()| if self.fsync { f.sync_data() } else { Ok(()) });
            if let Err(e) = written {
                // Take back what was appended (all of it when the sync
                // failed) so the file stays a clean chain: lessor's
                // writes go to the end (O_APPEND), so they are its last
                // `appended` bytes.
                if self.regular {
                    take_back(f, appended);
                }
                return Err(format!("writing {path}: {e}"));
            }
            self.file_len = self.file_len.saturating_add(buf.len() as u64);
        }
        if let Some(out) = self.stdout.as_mut() {
            let r = out.write_all(buf).and_then(|()| out.flush()).map_err(|e| format!("writing to stdout: {e}"));
            match r {
                Err(e) if self.path.is_some() => {
                    metrics().audit_write_failures.inc();
                    if !self.stdout_failing {
                        tracing::error!(error = %e, "audit stdout sink failing; the audit file still has every entry");
                    }
                    self.stdout_failing = true;
                }
                Err(e) => return Err(e),
                Ok(()) => {
                    if self.stdout_failing {
                        tracing::warn!("audit stdout sink works again");
                    }
                    self.stdout_failing = false;
                }
            }
        }
        Ok(())
    }

    /// Chains and writes a batch; returns the first sequence number used.
    fn write_batch(&mut self, events: &[&str]) -> Result<u64, String> {
        let (mut seq, mut prev) = (self.next_seq, self.prev.clone());
        let mut buf = Vec::with_capacity(events.len() * 512);
        for e in events {
            let (line, hash) = make_line(seq, &prev, e);
            buf.extend_from_slice(line.as_bytes());
            buf.push(b'\n');
            seq += 1;
            prev = hash;
        }
        self.write_lines(&buf)?;
        let first = self.next_seq;
        self.next_seq = seq;
        self.prev = prev;
        Ok(first)
    }

    /// Writes a signed checkpoint and records it as the head.
    fn checkpoint(&mut self, reason: &str) {
        let time = super::now_rfc3339();
        let sig = self.signer.sign(&chain::checkpoint_message(self.next_seq, &self.prev, &time));
        let event = serde_json::json!({
            "type": "checkpoint",
            "time": time,
            "reason": reason,
            "entries": self.since_checkpoint,
            "segment_start": self.segment_start,
            "key_id": self.signer.key_id,
            "public_key": self.signer.public_b64,
            "sig": sig,
        });
        let (line, hash) = make_line(self.next_seq, &self.prev, &event.to_string());
        let mut buf = line.clone().into_bytes();
        buf.push(b'\n');
        match self.write_lines(&buf) {
            Ok(()) => {
                self.next_seq += 1;
                self.prev = hash;
                self.since_checkpoint = 0;
                self.last_checkpoint = Instant::now();
                self.write_head(&line);
            }
            Err(e) => {
                metrics().audit_write_failures.inc();
                tracing::error!(error = %e, "audit checkpoint could not be written");
                // Try again at the next interval, not in a loop.
                self.last_checkpoint = Instant::now();
            }
        }
    }

    fn write_head(&self, line: &str) {
        let Some(p) = &self.path else { return };
        if !std::fs::metadata(p).map(|m| m.is_file()).unwrap_or(false) {
            return;
        }
        let head = head_path(p);
        let mut tmp = head.as_os_str().to_owned();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        let r = std::fs::write(&tmp, format!("{line}\n")).and_then(|()| std::fs::rename(&tmp, &head));
        if let Err(e) = r {
            tracing::warn!(path = %head.display(), error = %e, "cannot record the audit chain head");
        }
    }

    /// Whether the current file is due for rotation before `incoming` more
    /// bytes are written to it.
    fn rotation_due(&self, incoming: usize) -> bool {
        if self.file.is_none() || !self.regular || self.file_len == 0 {
            return false;
        }
        let by_size = self.rotation.max_size.is_some_and(|max| self.file_len.saturating_add(incoming as u64) > max);
        let by_age = self
            .rotation
            .max_age
            .is_some_and(|max| self.segment_opened.elapsed().map(|a| a >= max).unwrap_or(false));
        by_size || by_age
    }

    /// Ends the current file with a `rotate` checkpoint, renames it to
    /// `<file>.<first seq>`, starts a new file (its `open` checkpoint
    /// continues the chain) and removes old rotated files per config.
    fn rotate(&mut self) {
        let Some(p) = self.path.clone() else { return };
        if !std::fs::metadata(&p).map(|m| m.is_file()).unwrap_or(false) {
            return;
        }
        let target = rotated_path(&p, self.segment_start);
        if target.exists() {
            tracing::error!(path = %target.display(), "cannot rotate the audit file: the target exists; writing on");
            self.segment_opened = SystemTime::now();
            return;
        }
        self.checkpoint("rotate");
        if let Err(e) = std::fs::rename(&p, &target) {
            tracing::error!(path = %p.display(), error = %e, "cannot rotate the audit file; writing on");
            self.segment_opened = SystemTime::now();
            return;
        }
        tracing::debug!(path = %target.display(), "audit file rotated");
        self.file = None;
        self.reopen_file();
        if self.file.is_some() {
            self.checkpoint("open");
        }
        self.prune();
    }

    /// Removes rotated files beyond `keep_files` or older than `keep_for`.
    fn prune(&self) {
        let Some(p) = &self.path else { return };
        let files = rotated_files(p);
        let excess = self.rotation.keep_files.map(|k| files.len().saturating_sub(k)).unwrap_or(0);
        for (i, (_, f)) in files.iter().enumerate() {
            let too_old = self.rotation.keep_for.is_some_and(|keep| {
                std::fs::metadata(f)
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| t.elapsed().ok())
                    .is_some_and(|age| age > keep)
            });
            if i < excess || too_old {
                match std::fs::remove_file(f) {
                    Ok(()) => tracing::info!(path = %f.display(), "removed an old audit file (audit.keep_files / keep_for)"),
                    Err(e) => tracing::warn!(path = %f.display(), error = %e, "cannot remove an old audit file"),
                }
            }
        }
    }

    /// Writes the authentication-failure summary if its interval is over
    /// (`force`: now, at shutdown).
    fn flush_failures(&mut self, force: bool) {
        let summary = match self.failures.lock() {
            Ok(mut a) => {
                if force {
                    a.take()
                } else {
                    a.take_due(Instant::now())
                }
            }
            Err(_) => None,
        };
        let Some(event) = summary else { return };
        let json = match serde_json::to_string(&event) {
            Ok(j) => j,
            Err(_) => return,
        };
        if self.rotation_due(json.len() + 1) {
            self.rotate();
        }
        match self.write_batch(&[json.as_str()]) {
            Ok(_) => self.since_checkpoint += 1,
            Err(e) => {
                metrics().audit_write_failures.inc();
                tracing::error!(error = %e, "audit log write failed (authentication failure summary)");
            }
        }
    }

    /// How long the loop may sleep: until the next checkpoint, summary or
    /// age rotation check.
    fn wait(&self) -> Duration {
        let mut wait = if self.since_checkpoint > 0 {
            self.interval.saturating_sub(self.last_checkpoint.elapsed())
        } else {
            self.interval
        };
        if let Some(due) = self.failures.lock().ok().and_then(|a| a.next_due()) {
            wait = wait.min(due.saturating_duration_since(Instant::now()));
        }
        if self.rotation.max_age.is_some() {
            wait = wait.min(Duration::from_secs(1));
        }
        wait
    }

    /// Whether a caller may write an entry of `len` bytes itself: the
    /// file is the only sink and is written without fsync (a page-cache
    /// write), the writer has not stopped, and no rotation is due (that
    /// renames and prunes files: the thread's work).
    pub(super) fn can_write_inline(&self, len: usize) -> bool {
        !self.stopped && !self.fsync && self.stdout.is_none() && self.path.is_some() && !self.rotation_due(len + 200)
    }

    /// Chains and writes `events` as one batch, counting a failure, then
    /// signs a checkpoint if one is due. Returns the first sequence number
    /// used.
    pub(super) fn write_entries(&mut self, events: &[&str]) -> Result<u64, String> {
        if self.stopped {
            return Err("the audit writer has stopped".into());
        }
        self.flush_failures(false);
        let first = match self.write_batch(events) {
            Ok(first) => first,
            Err(e) => {
                metrics().audit_write_failures.inc_by(events.len() as u64);
                tracing::error!(error = %e, entries = events.len(), "audit log write failed");
                return Err(e);
            }
        };
        self.since_checkpoint += events.len() as u64;
        if self.since_checkpoint >= self.every || self.last_checkpoint.elapsed() >= self.interval {
            self.checkpoint("count");
        }
        Ok(first)
    }

    /// The first checkpoint of a run, before any entry.
    pub(super) fn start(&mut self) {
        self.checkpoint("open");
    }

    /// The periodic work: the failure summary, rotation by age, the
    /// interval checkpoint.
    fn tick(&mut self) {
        if self.stopped {
            return;
        }
        self.flush_failures(false);
        if self.rotation_due(0) {
            self.rotate();
        }
        if self.since_checkpoint > 0 {
            if self.last_checkpoint.elapsed() >= self.interval {
                self.checkpoint("interval");
            }
        } else {
            self.last_checkpoint = Instant::now();
        }
    }

    /// The last checkpoint; nothing is written after it.
    fn stop(&mut self) {
        if self.stopped {
            return;
        }
        self.flush_failures(true);
        self.checkpoint("shutdown");
        if let Some(f) = &self.file {
            let _ = f.sync_all();
        }
        self.stopped = true;
    }
}

/// The writer thread's loop, over the queue; returns when every handle is
/// gone or on shutdown. It holds the lock only while it writes.
pub(super) fn run(shared: Shared, rx: Receiver<Msg>) {
    let mut held: Option<Msg> = None;
    loop {
        let msg = match held.take() {
            Some(m) => m,
            None => {
                let wait = lock(&shared).wait();
                match rx.recv_timeout(wait) {
                    Ok(m) => m,
                    Err(RecvTimeoutError::Timeout) => {
                        lock(&shared).tick();
                        continue;
                    }
                    Err(RecvTimeoutError::Disconnected) => {
                        lock(&shared).stop();
                        return;
                    }
                }
            }
        };
        match msg {
            Msg::Entry { json, reply, permit } => {
                let mut batch = vec![(json, reply, permit)];
                while batch.len() < MAX_BATCH {
                    match rx.try_recv() {
                        Ok(Msg::Entry { json, reply, permit }) => batch.push((json, reply, permit)),
                        Ok(other) => {
                            held = Some(other);
                            break;
                        }
                        Err(_) => break,
                    }
                }
                let events: Vec<&str> = batch.iter().map(|(j, _, _)| j.as_str()).collect();
                let size: usize = events.iter().map(|e| e.len() + 200).sum();
                let result = {
                    let mut w = lock(&shared);
                    if w.rotation_due(size) {
                        w.rotate();
                    }
                    w.write_entries(&events)
                };
                // The permits go with the batch, after the write: until
                // then callers see the queue in use and do not write
                // around it.
                for (i, (_, reply, _)) in batch.into_iter().enumerate() {
                    if let Some(r) = reply {
                        let _ = r.send(result.clone().map(|first| first + i as u64));
                    }
                }
            }
            Msg::Reopen(reply) => {
                let mut w = lock(&shared);
                if w.file.is_some() {
                    w.checkpoint("rotate");
                }
                w.reopen_file();
                if w.file.is_some() {
                    w.checkpoint("open");
                }
                let _ = reply.send(match &w.broken {
                    None => Ok(()),
                    Some(e) => Err(e.clone()),
                });
            }
            Msg::Shutdown(reply) => {
                lock(&shared).stop();
                let _ = reply.send(());
                return;
            }
            #[cfg(test)]
            Msg::Pause(resume) => {
                let _ = resume.recv();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A disk that takes at most 7 bytes a call, is interrupted once, and
    /// is full at `cap` bytes.
    struct Filling {
        got: Vec<u8>,
        cap: usize,
        interrupted: bool,
    }
    impl std::io::Write for Filling {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            if !self.interrupted {
                self.interrupted = true;
                return Err(std::io::ErrorKind::Interrupted.into());
            }
            let room = self.cap - self.got.len();
            if room == 0 {
                return Err(std::io::Error::other("no space left on device"));
            }
            let n = buf.len().min(7).min(room);
            self.got.extend_from_slice(&buf[..n]);
            Ok(n)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// A failed append reports exactly the bytes that reached the file (the
    /// writer takes back that many from the end without asking the file
    /// its length before each write); an interrupted call is retried.
    #[test]
    fn append_counts_what_reached_the_file_before_an_error() {
        let line = b"0123456789abcdefghij";
        let mut full = Filling { got: vec![], cap: 10, interrupted: false };
        let (n, r) = append(&mut full, line);
        assert_eq!(n, 10);
        assert!(r.unwrap_err().to_string().contains("no space"));
        assert_eq!(full.got, b"0123456789");
        let mut room = Filling { got: vec![], cap: 100, interrupted: false };
        let (n, r) = append(&mut room, line);
        assert!(r.is_ok());
        assert_eq!((n, room.got.as_slice()), (line.len(), &line[..]));
        let (n, r) = append(&mut [0u8; 4].as_mut_slice(), line);
        assert_eq!((n, r.unwrap_err().kind()), (4, std::io::ErrorKind::WriteZero));
    }

    /// What a failed append left is cut off the end of the real file, and
    /// the lines before it stay whole.
    #[test]
    fn a_failed_append_is_taken_back_from_the_end_of_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(&path).unwrap();
        std::io::Write::write_all(&mut f, b"line one\n").unwrap();
        std::io::Write::write_all(&mut f, b"half a li").unwrap();
        take_back(&f, 9);
        assert_eq!(std::fs::read(&path).unwrap(), b"line one\n");
        take_back(&f, 0);
        assert_eq!(std::fs::read(&path).unwrap(), b"line one\n");
    }
}
