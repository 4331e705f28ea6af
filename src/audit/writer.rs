//! The one writer: a thread that owns the sinks and the chain position. It
//! takes whatever entries are queued, chains them, writes them with one
//! `write` per sink (group write), and answers each caller with its own
//! result. Checkpoints are signed every `checkpoint_every` entries, every
//! `checkpoint_interval`, at each (re)open and at shutdown; the latest is
//! also kept in `<file>.head` so a cut tail can be told from a short file.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::chain::{self, make_line, Head, GENESIS};
use super::keys::Signer;
use super::AuditError;
use crate::telemetry::metrics;

/// Entries written per `write` at most.
const MAX_BATCH: usize = 4096;

pub(super) enum Msg {
    Entry { json: String, reply: Option<oneshot::Sender<Result<u64, String>>> },
    Reopen(oneshot::Sender<Result<(), String>>),
    Shutdown(oneshot::Sender<()>),
}

pub(super) struct Writer {
    path: Option<PathBuf>,
    file: Option<File>,
    /// Why the file is not open (writes fail with this until a reopen works).
    broken: Option<String>,
    stdout: bool,
    fsync: bool,
    next_seq: u64,
    prev: String,
    segment_start: u64,
    since_checkpoint: u64,
    last_checkpoint: Instant,
    every: u64,
    interval: Duration,
    signer: Signer,
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
/// its tail) and the sequence number of its first line.
fn existing_end(path: &Path) -> Result<Option<(Head, u64)>, AuditError> {
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
    let first_seq = std::str::from_utf8(first_line)
        .ok()
        .and_then(|t| chain::parse_line(t).ok())
        .map(|l| l.seq)
        .ok_or_else(|| damaged("its first line is not a valid entry; run `lessor audit verify`".into()))?;
    let from = meta.len().saturating_sub(1 << 20);
    f.seek(SeekFrom::Start(from)).map_err(|e| damaged(e.to_string()))?;
    let mut tail = Vec::new();
    f.read_to_end(&mut tail).map_err(|e| damaged(e.to_string()))?;
    if from > 0 {
        let start = tail.iter().position(|b| *b == b'\n').map(|i| i + 1).unwrap_or(tail.len());
        tail.drain(..start);
    }
    match chain::tail_head(&tail) {
        Ok(Some(h)) => Ok(Some((h, first_seq))),
        Ok(None) => Ok(None),
        Err(e) => Err(damaged(format!(
            "{e}; it cannot be continued. Check it with `lessor audit verify`, then move it aside (the new file continues the chain)"
        ))),
    }
}

impl Writer {
    pub(super) fn open(
        path: Option<PathBuf>,
        stdout: bool,
        fsync: bool,
        every: u64,
        interval: Duration,
        signer: Signer,
    ) -> Result<Writer, AuditError> {
        let mut w = Writer {
            path: path.clone(),
            file: None,
            broken: None,
            stdout,
            fsync,
            next_seq: 0,
            prev: GENESIS.to_owned(),
            segment_start: 0,
            since_checkpoint: 0,
            last_checkpoint: Instant::now(),
            every: every.max(1),
            interval,
            signer,
        };
        if let Some(p) = &path {
            let head = read_head(&head_path(p)).map_err(AuditError::Damaged)?;
            let end = existing_end(p)?;
            match (end, head) {
                (Some((e, first)), Some(h)) if e.seq < h.seq => {
                    let _ = first;
                    return Err(AuditError::Damaged(format!(
                        "audit file {} ends at sequence {} but its head record ({}) says the daemon wrote up to {}: \
                         the tail was removed. Keep the file as evidence, move it aside and start again",
                        p.display(),
                        e.seq,
                        head_path(p).display(),
                        h.seq
                    )));
                }
                (Some((e, first)), _) => {
                    w.next_seq = e.seq + 1;
                    w.prev = e.hash;
                    w.segment_start = first;
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
                let empty = f.metadata().map(|m| !m.is_file() || m.len() == 0).unwrap_or(true);
                if empty {
                    self.segment_start = self.next_seq;
                }
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

    /// Writes `lines` (already chained) to every sink, one write each.
    fn write_lines(&mut self, buf: &[u8]) -> Result<(), String> {
        if self.path.is_some() {
            let path = self.path.as_ref().map(|p| p.display().to_string()).unwrap_or_default();
            let Some(f) = self.file.as_mut() else {
                return Err(self.broken.clone().unwrap_or_else(|| "audit file is not open".into()));
            };
            let before = f.metadata().ok().filter(|m| m.is_file()).map(|m| m.len());
            let written = f.write_all(buf).and_then(|()| if self.fsync { f.sync_data() } else { Ok(()) });
            if let Err(e) = written {
                // Take back a partial write so the file stays a clean chain.
                if let Some(len) = before {
                    let _ = f.set_len(len);
                }
                return Err(format!("writing {path}: {e}"));
            }
        }
        if self.stdout {
            let mut out = std::io::stdout().lock();
            out.write_all(buf).and_then(|()| out.flush()).map_err(|e| format!("writing to stdout: {e}"))?;
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

    /// The writer loop; returns when every handle is gone or on shutdown.
    pub(super) fn run(mut self, rx: Receiver<Msg>) {
        self.checkpoint("open");
        let mut held: Option<Msg> = None;
        loop {
            let msg = match held.take() {
                Some(m) => m,
                None => {
                    let wait = if self.since_checkpoint > 0 {
                        self.interval.saturating_sub(self.last_checkpoint.elapsed())
                    } else {
                        self.interval
                    };
                    match rx.recv_timeout(wait) {
                        Ok(m) => m,
                        Err(RecvTimeoutError::Timeout) => {
                            if self.since_checkpoint > 0 {
                                self.checkpoint("interval");
                            } else {
                                self.last_checkpoint = Instant::now();
                            }
                            continue;
                        }
                        Err(RecvTimeoutError::Disconnected) => {
                            self.checkpoint("shutdown");
                            return;
                        }
                    }
                }
            };
            match msg {
                Msg::Entry { json, reply } => {
                    let mut batch = vec![(json, reply)];
                    while batch.len() < MAX_BATCH {
                        match rx.try_recv() {
                            Ok(Msg::Entry { json, reply }) => batch.push((json, reply)),
                            Ok(other) => {
                                held = Some(other);
                                break;
                            }
                            Err(_) => break,
                        }
                    }
                    let events: Vec<&str> = batch.iter().map(|(j, _)| j.as_str()).collect();
                    match self.write_batch(&events) {
                        Ok(first) => {
                            self.since_checkpoint += batch.len() as u64;
                            for (i, (_, reply)) in batch.into_iter().enumerate() {
                                if let Some(r) = reply {
                                    let _ = r.send(Ok(first + i as u64));
                                }
                            }
                        }
                        Err(e) => {
                            metrics().audit_write_failures.inc_by(batch.len() as u64);
                            tracing::error!(error = %e, entries = batch.len(), "audit log write failed");
                            for (_, reply) in batch {
                                if let Some(r) = reply {
                                    let _ = r.send(Err(e.clone()));
                                }
                            }
                        }
                    }
                    if self.since_checkpoint >= self.every
                        || (self.since_checkpoint > 0 && self.last_checkpoint.elapsed() >= self.interval)
                    {
                        self.checkpoint("count");
                    }
                }
                Msg::Reopen(reply) => {
                    if self.file.is_some() {
                        self.checkpoint("rotate");
                    }
                    self.reopen_file();
                    if self.file.is_some() {
                        self.checkpoint("open");
                    }
                    let _ = reply.send(match &self.broken {
                        None => Ok(()),
                        Some(e) => Err(e.clone()),
                    });
                }
                Msg::Shutdown(reply) => {
                    self.checkpoint("shutdown");
                    if let Some(f) = &self.file {
                        let _ = f.sync_all();
                    }
                    let _ = reply.send(());
                    return;
                }
            }
        }
    }
}
