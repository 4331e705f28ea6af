//! One run of the plugin process: spawn it, write requests (one writer
//! task), read answers (one reader task that hands each to the call waiting
//! on its id), forward stderr to the log, and fail every waiting call when
//! the process goes away. Restarting is the supervisor's job (`plugin.rs`).

use std::collections::HashMap;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStderr, ChildStdin, ChildStdout, Command};
use tokio::sync::{mpsc, oneshot, Notify};
use zeroize::Zeroizing;

use crate::config::{ExternalConfig, INHERITED_ENV};
use crate::protocol::{self, Incoming, Line, RpcError, MAX_LINE_BYTES, MAX_LOG_LINE};

/// Why a call got no answer.
#[derive(Debug)]
pub enum CallError {
    /// The plugin answered with an error object.
    Rpc(RpcError),
    /// The process went away (or broke the protocol) before answering.
    Gone(String),
    /// No answer within the call's timeout.
    Timeout(Duration),
    /// lessor could not write the request.
    Encode(String),
}

type Reply = Result<Value, CallError>;

/// Calls waiting for an answer, by id; `None` once the process is gone.
type Pending = Arc<Mutex<Option<HashMap<u64, oneshot::Sender<Reply>>>>>;

enum ToWriter {
    /// A request line; zeroed after it is written (it may hold a secret).
    Line(Zeroizing<Vec<u8>>),
    /// Close the plugin's stdin (after `shutdown`).
    Close,
}

/// A live plugin process as callers see it.
pub struct Session {
    pub pid: u32,
    tx: mpsc::Sender<ToWriter>,
    /// `None` once the process is gone: new calls fail at once.
    pending: Pending,
    next_id: AtomicU64,
    /// Asks the supervisor to kill this process (protocol violation, an
    /// `issue` that timed out).
    pub kill: Arc<Notify>,
    /// Why it must die, for the log.
    pub kill_reason: Arc<Mutex<Option<String>>>,
}

/// Fails every waiting call with `why` and refuses new ones.
fn close(pending: &Mutex<Option<HashMap<u64, oneshot::Sender<Reply>>>>, why: &str) {
    let waiting = match pending.lock() {
        Ok(mut g) => g.take(),
        Err(p) => p.into_inner().take(),
    };
    for (_, tx) in waiting.into_iter().flatten() {
        let _ = tx.send(Err(CallError::Gone(why.to_owned())));
    }
}

impl Session {
    /// Spawns the process and its three tasks. The caller owns the `Child`
    /// (to wait on it, kill it).
    pub fn spawn(connection: &str, cfg: &ExternalConfig) -> Result<(Arc<Session>, Child), String> {
        let (program, args) = cfg.command.split_first().ok_or("`command` is empty")?;
        let mut cmd = Command::new(program);
        cmd.args(args)
            .env_clear()
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        for k in INHERITED_ENV {
            if let Some(v) = std::env::var_os(k) {
                cmd.env(k, v);
            }
        }
        cmd.envs(&cfg.env);
        let mut child = cmd.spawn().map_err(|e| format!("cannot start `{}`: {e}", cfg.command.join(" ")))?;
        let pid = child.id().unwrap_or(0);
        let (Some(stdin), Some(stdout), Some(stderr)) = (child.stdin.take(), child.stdout.take(), child.stderr.take()) else {
            return Err("the plugin's stdio pipes were not set up".into());
        };
        let (tx, rx) = mpsc::channel(256);
        let pending = Arc::new(Mutex::new(Some(HashMap::new())));
        let session = Arc::new(Session {
            pid,
            tx,
            pending: pending.clone(),
            next_id: AtomicU64::new(1),
            kill: Arc::new(Notify::new()),
            kill_reason: Arc::new(Mutex::new(None)),
        });
        tokio::spawn(write_loop(stdin, rx));
        tokio::spawn(read_loop(connection.to_owned(), stdout, pending, session.kill.clone(), session.kill_reason.clone()));
        tokio::spawn(log_stderr(connection.to_owned(), pid, stderr));
        Ok((session, child))
    }

    /// Sends one request and waits for its answer, at most `timeout`.
    pub async fn call(&self, method: &str, params: Value, timeout: Duration) -> Result<Value, CallError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut line = Zeroizing::new(protocol::request_line(id, method, &params).map_err(CallError::Encode)?);
        drop(params);
        if line.len() > MAX_LINE_BYTES {
            return Err(CallError::Encode(format!(
                "the `{method}` request is {} bytes, over the protocol's {MAX_LINE_BYTES}-byte line limit",
                line.len()
            )));
        }
        line.push(b'\n');
        let (reply_tx, reply_rx) = oneshot::channel();
        {
            let mut g = self.pending.lock().map_err(|_| CallError::Gone("lessor's call table is poisoned".into()))?;
            match g.as_mut() {
                Some(m) => m.insert(id, reply_tx),
                None => return Err(CallError::Gone("the plugin process has exited".into())),
            };
        }
        let forget = || {
            if let Ok(mut g) = self.pending.lock() {
                if let Some(m) = g.as_mut() {
                    m.remove(&id);
                }
            }
        };
        let outcome = tokio::time::timeout(timeout, async {
            if self.tx.send(ToWriter::Line(line)).await.is_err() {
                return Err(CallError::Gone("the plugin's stdin is closed".into()));
            }
            reply_rx.await.unwrap_or_else(|_| Err(CallError::Gone("the plugin process has exited".into())))
        })
        .await;
        match outcome {
            Ok(r) => r,
            Err(_) => {
                forget();
                Err(CallError::Timeout(timeout))
            }
        }
    }

    /// Closes the plugin's stdin (it should exit on end of input).
    pub async fn close_stdin(&self) {
        let _ = self.tx.send(ToWriter::Close).await;
    }

    /// Asks the supervisor to kill the process, saying why.
    pub fn request_kill(&self, why: String) {
        if let Ok(mut g) = self.kill_reason.lock() {
            g.get_or_insert(why);
        }
        self.kill.notify_one();
    }

    /// Fails every waiting call (the process is gone).
    pub fn fail_pending(&self, why: &str) {
        close(&self.pending, why);
    }
}

async fn write_loop(mut stdin: ChildStdin, mut rx: mpsc::Receiver<ToWriter>) {
    while let Some(msg) = rx.recv().await {
        match msg {
            ToWriter::Line(line) => {
                if stdin.write_all(&line).await.is_err() || stdin.flush().await.is_err() {
                    // The reader sees the end of stdout and fails the calls.
                    break;
                }
            }
            ToWriter::Close => break,
        }
    }
    let _ = stdin.shutdown().await;
}

async fn read_loop(
    connection: String,
    stdout: ChildStdout,
    pending: Pending,
    kill: Arc<Notify>,
    kill_reason: Arc<Mutex<Option<String>>>,
) {
    let mut r = BufReader::new(stdout);
    let why = loop {
        let line = match protocol::read_line(&mut r, MAX_LINE_BYTES).await {
            Ok(Line::Full(l)) => l,
            Ok(Line::TooLong(_, n)) => break format!("the plugin wrote a {n}-byte line, over the {MAX_LINE_BYTES}-byte limit"),
            Ok(Line::Eof) => break "the plugin closed its stdout (it exited or crashed)".to_owned(),
            Err(e) => break format!("reading the plugin's stdout failed: {e}"),
        };
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match protocol::parse_incoming(&line) {
            Ok(Incoming::Response { id, outcome }) => {
                let waiter = pending.lock().ok().and_then(|mut g| g.as_mut().and_then(|m| m.remove(&id)));
                match waiter {
                    Some(tx) => {
                        let _ = tx.send(outcome.map_err(CallError::Rpc));
                    }
                    // A late answer to a call that timed out.
                    None => tracing::debug!(connection = %connection, id, "answer to a call no longer waited for"),
                }
            }
            Ok(Incoming::Notification { method }) => {
                tracing::debug!(connection = %connection, %method, "ignoring a notification from the plugin")
            }
            Err(e) => break format!("protocol violation: {e}"),
        }
    };
    if !why.contains("closed its stdout") {
        tracing::warn!(connection = %connection, reason = %why, "external plugin broke the protocol; killing it");
        if let Ok(mut g) = kill_reason.lock() {
            g.get_or_insert(why.clone());
        }
        kill.notify_one();
    }
    close(&pending, &why);
}

/// The plugin's stderr is its log: each line goes to lessor's log at DEBUG,
/// cut at [`MAX_LOG_LINE`] bytes.
async fn log_stderr(connection: String, pid: u32, stderr: ChildStderr) {
    let mut r = BufReader::new(stderr);
    loop {
        match protocol::read_line(&mut r, MAX_LOG_LINE).await {
            Ok(Line::Full(l)) => {
                let text = String::from_utf8_lossy(&l);
                tracing::debug!(connection = %connection, pid, line = %protocol::clean(&text, MAX_LOG_LINE), "plugin stderr");
            }
            Ok(Line::TooLong(l, n)) => {
                let text = String::from_utf8_lossy(&l);
                tracing::debug!(connection = %connection, pid, line = %protocol::clean(&text, MAX_LOG_LINE), cut_bytes = n.saturating_sub(l.len()), "plugin stderr");
            }
            Ok(Line::Eof) | Err(_) => return,
        }
    }
}
