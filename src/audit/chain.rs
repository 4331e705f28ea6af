//! The hash chain: how a line is made, hashed and signed, and how a file of
//! them is verified.
//!
//! A line is one JSON object: `{"seq":N,"prev":"<hex>",<event fields>,"hash":"<hex>"}`.
//! `hash` is the SHA-256 of the line's text without the `,"hash":"..."`
//! suffix (the *body*, which ends in `}`); `prev` is the previous line's
//! `hash` (64 zeros for the first line of a chain); `seq` counts up by one
//! across files. A checkpoint line (`"type":"checkpoint"`) also carries an
//! Ed25519 signature over its own `seq`, `prev` and `time`, so it vouches
//! for every line before it.

use std::path::Path;

use base64::Engine;
use serde_json::Value;
use sha2::{Digest, Sha256};

/// `prev` of the first line of a chain.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

const HASH_SUFFIX_LEN: usize = r#","hash":""}"#.len() + 64;

/// The chain position after a line: its sequence number and hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    pub seq: u64,
    pub hash: String,
}

/// Builds a line (without the newline) from the chain position and an
/// event's JSON object text. Returns the line and its hash.
pub fn make_line(seq: u64, prev: &str, event_json: &str) -> (String, String) {
    let rest = event_json.trim().strip_prefix('{').unwrap_or("}");
    let mut body = format!("{{\"seq\":{seq},\"prev\":\"{prev}\"");
    if rest != "}" {
        body.push(',');
    }
    body.push_str(rest);
    let hash = hex::encode(Sha256::digest(body.as_bytes()));
    body.pop();
    body.push_str(&format!(",\"hash\":\"{hash}\"}}"));
    (body, hash)
}

/// What a checkpoint signs.
pub fn checkpoint_message(seq: u64, prev: &str, time: &str) -> Vec<u8> {
    format!("lessor audit checkpoint v1\nseq={seq}\nprev={prev}\ntime={time}\n").into_bytes()
}

/// Short, stable id of an Ed25519 public key.
pub fn key_id(public_key: &[u8]) -> String {
    hex::encode(&Sha256::digest(public_key)[..8])
}

/// A parsed, self-consistent line.
#[derive(Debug, Clone)]
pub struct Line {
    pub seq: u64,
    pub prev: String,
    pub hash: String,
    pub value: Value,
}

impl Line {
    pub fn is_checkpoint(&self) -> bool {
        self.value.get("type").and_then(Value::as_str) == Some("checkpoint")
    }
}

/// Parses one line (no newline) and checks its own hash. The error says
/// what is wrong with it.
pub fn parse_line(text: &str) -> Result<Line, String> {
    let value: Value = serde_json::from_str(text).map_err(|e| format!("not a JSON object ({e}): edited or cut"))?;
    let seq = value.get("seq").and_then(Value::as_u64).ok_or("no `seq` number")?;
    let prev = value.get("prev").and_then(Value::as_str).ok_or("no `prev` hash")?.to_owned();
    let hash = value.get("hash").and_then(Value::as_str).ok_or("no `hash`")?.to_owned();
    let suffix = format!(",\"hash\":\"{hash}\"}}");
    if hash.len() != 64 || text.len() < HASH_SUFFIX_LEN || !text.ends_with(&suffix) {
        return Err("`hash` is not the last field or not 64 hex digits".into());
    }
    let mut body = text[..text.len() - suffix.len()].to_owned();
    body.push('}');
    let actual = hex::encode(Sha256::digest(body.as_bytes()));
    if actual != hash {
        return Err("its content does not match its hash: the line was edited".into());
    }
    Ok(Line { seq, prev, hash, value })
}

/// Checks a checkpoint's signature with `pinned` (raw Ed25519 public key),
/// or the key the checkpoint names when nothing is pinned.
pub fn check_signature(line: &Line, pinned: Option<&[u8]>) -> Result<(), String> {
    let v = &line.value;
    let b64 = base64::engine::general_purpose::STANDARD;
    let time = v.get("time").and_then(Value::as_str).ok_or("checkpoint has no `time`")?;
    let sig = v.get("sig").and_then(Value::as_str).ok_or("checkpoint has no `sig`")?;
    let sig = b64.decode(sig).map_err(|_| "checkpoint `sig` is not base64")?;
    let embedded = v.get("public_key").and_then(Value::as_str).ok_or("checkpoint has no `public_key`")?;
    let embedded = b64.decode(embedded).map_err(|_| "checkpoint `public_key` is not base64")?;
    let key = match pinned {
        Some(k) if k != embedded.as_slice() => {
            return Err(format!(
                "checkpoint is signed by key {}, not the pinned key {}",
                key_id(&embedded),
                key_id(k)
            ))
        }
        Some(k) => k.to_vec(),
        None => embedded,
    };
    let msg = checkpoint_message(line.seq, &line.prev, time);
    ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, &key)
        .verify(&msg, &sig)
        .map_err(|_| "checkpoint signature does not verify".to_owned())
}

/// What to check a file against.
#[derive(Debug, Default, Clone)]
pub struct VerifyOpts {
    /// The chain position the file must continue (from the previous file).
    pub after: Option<Head>,
    /// Ed25519 public key checkpoints must be signed with.
    pub public_key: Option<Vec<u8>>,
    /// The latest checkpoint the daemon recorded (its `.head` file).
    pub head: Option<Line>,
}

/// A verified file.
#[derive(Debug, Clone)]
pub struct Report {
    pub lines: usize,
    pub first: Option<Head>,
    pub last: Option<Head>,
    pub checkpoints: usize,
    /// Line number of the last checkpoint.
    pub last_checkpoint_line: Option<usize>,
    /// Lines after the last checkpoint (not yet vouched for by a signature).
    pub unsigned_tail: usize,
    /// Key id checkpoints were checked with.
    pub key_ids: Vec<String>,
    /// Whether the `.head` record applied to this file.
    pub head_checked: bool,
}

/// The first bad line and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub line: usize,
    pub why: String,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "line {}: {}", self.line, self.why)
    }
}

/// Verifies the bytes of one audit file. Stops at the first bad line.
pub fn verify(data: &[u8], opts: &VerifyOpts) -> Result<Report, Failure> {
    let mut report = Report {
        lines: 0,
        first: None,
        last: None,
        checkpoints: 0,
        last_checkpoint_line: None,
        unsigned_tail: 0,
        key_ids: Vec::new(),
        head_checked: false,
    };
    let mut expect: Option<Head> = opts.after.clone();
    let mut rest = data;
    let mut n = 0usize;
    while !rest.is_empty() {
        n += 1;
        let fail = |why: String| Failure { line: n, why };
        let (raw, next) = match rest.iter().position(|b| *b == b'\n') {
            Some(i) => (&rest[..i], &rest[i + 1..]),
            None => return Err(fail("cut mid-line: the file ends without a newline (truncated)".into())),
        };
        rest = next;
        let text = std::str::from_utf8(raw).map_err(|_| fail("not UTF-8: edited or corrupted".into()))?;
        let line = parse_line(text).map_err(fail)?;
        match &expect {
            Some(e) => {
                if line.seq != e.seq + 1 {
                    let why = if line.seq > e.seq + 1 && later_has_seq(rest, e.seq + 1) {
                        format!("sequence {} where {} was expected: lines were reordered ({} comes later)", line.seq, e.seq + 1, e.seq + 1)
                    } else if line.seq > e.seq + 1 {
                        format!("sequence {} where {} was expected: {} line(s) before it were removed", line.seq, e.seq + 1, line.seq - e.seq - 1)
                    } else {
                        format!("sequence {} where {} was expected: lines were reordered or repeated", line.seq, e.seq + 1)
                    };
                    return Err(fail(why));
                }
                if line.prev != e.hash {
                    let what = if n == 1 { "the last line of the previous file".to_owned() } else { format!("line {}", n - 1) };
                    return Err(fail(format!(
                        "its `prev` does not match the hash of {what}: a line was replaced (with its hash recomputed) or reordered"
                    )));
                }
            }
            None => {
                if line.seq == 0 && line.prev != GENESIS {
                    return Err(fail("sequence 0 must start the chain (`prev` of zeros)".into()));
                }
            }
        }
        if line.is_checkpoint() {
            check_signature(&line, opts.public_key.as_deref()).map_err(fail)?;
            if let Some(k) = line.value.get("key_id").and_then(Value::as_str) {
                if !report.key_ids.iter().any(|x| x == k) {
                    report.key_ids.push(k.to_owned());
                }
            }
            report.checkpoints += 1;
            report.last_checkpoint_line = Some(n);
            report.unsigned_tail = 0;
        } else {
            report.unsigned_tail += 1;
        }
        let head = Head { seq: line.seq, hash: line.hash.clone() };
        if report.first.is_none() {
            report.first = Some(head.clone());
        }
        if let Some(h) = &opts.head {
            if h.seq == line.seq && h.hash != line.hash {
                return Err(fail(format!(
                    "sequence {} differs from the checkpoint the daemon recorded in its head file",
                    line.seq
                )));
            }
        }
        report.last = Some(head.clone());
        expect = Some(head);
        report.lines = n;
    }
    if let (Some(h), Some(first), Some(last)) = (&opts.head, &report.first, &report.last) {
        let segment = h.value.get("segment_start").and_then(Value::as_u64);
        if segment == Some(first.seq) {
            report.head_checked = true;
            if last.seq < h.seq {
                return Err(Failure {
                    line: n + 1,
                    why: format!(
                        "the file ends at sequence {} (line {n}) but the daemon recorded a checkpoint at sequence {}: the tail was removed",
                        last.seq, h.seq
                    ),
                });
            }
        }
    }
    if report.lines == 0 {
        if let Some(h) = &opts.head {
            return Err(Failure { line: 1, why: format!("the file is empty but the daemon recorded a checkpoint at sequence {}", h.seq) });
        }
    }
    Ok(report)
}

/// Whether a line with sequence `seq` follows in `rest` (a reorder, not a
/// removal).
fn later_has_seq(rest: &[u8], seq: u64) -> bool {
    rest.split(|b| *b == b'\n')
        .filter_map(|l| serde_json::from_slice::<Value>(l).ok())
        .any(|v| v.get("seq").and_then(Value::as_u64) == Some(seq))
}

/// The chain position at the end of an audit file: its last line, hashed.
/// `Ok(None)` for an empty file.
pub fn last_head(path: &Path) -> Result<Option<Head>, String> {
    let data = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    tail_head(&data).map_err(|e| format!("{}: {e}", path.display()))
}

/// The chain position after the last line of `data` (which must end in a
/// complete line).
pub fn tail_head(data: &[u8]) -> Result<Option<Head>, String> {
    if data.is_empty() {
        return Ok(None);
    }
    if !data.ends_with(b"\n") {
        return Err("ends with a partial line (cut mid-line)".into());
    }
    let body = &data[..data.len() - 1];
    let start = body.iter().rposition(|b| *b == b'\n').map(|i| i + 1).unwrap_or(0);
    let text = std::str::from_utf8(&body[start..]).map_err(|_| "the last line is not UTF-8".to_owned())?;
    let l = parse_line(text).map_err(|e| format!("the last line is bad: {e}"))?;
    Ok(Some(Head { seq: l.seq, hash: l.hash }))
}

/// The first bad line of a series and the file it is in.
#[derive(Debug, Clone)]
pub struct SeriesFailure {
    pub file: std::path::PathBuf,
    pub failure: Failure,
}

impl std::fmt::Display for SeriesFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.file.display(), self.failure)
    }
}

/// Verifies files in chain order (oldest first): each must continue the one
/// before it. `opts.after` applies to the first file; `opts.head` (the
/// daemon's head record) to the last, which must be the file it names.
pub fn verify_series(files: &[std::path::PathBuf], opts: &VerifyOpts) -> Result<Vec<Report>, SeriesFailure> {
    let mut after = opts.after.clone();
    let mut reports = Vec::with_capacity(files.len());
    for (i, file) in files.iter().enumerate() {
        let last = i + 1 == files.len();
        let fail = |line: usize, why: String| SeriesFailure { file: file.clone(), failure: Failure { line, why } };
        let data = std::fs::read(file).map_err(|e| fail(0, format!("cannot read: {e}")))?;
        let o = VerifyOpts {
            after: after.clone(),
            public_key: opts.public_key.clone(),
            head: if last { opts.head.clone() } else { None },
        };
        let r = verify(&data, &o).map_err(|f| SeriesFailure { file: file.clone(), failure: f })?;
        if last && files.len() > 1 {
            if let (Some(h), false) = (&opts.head, r.head_checked) {
                let start = h.value.get("segment_start").and_then(Value::as_u64).unwrap_or(0);
                return Err(fail(
                    r.lines + 1,
                    format!(
                        "the daemon's head record is for a file starting at sequence {start} (written up to {}), \
                         but the series ends with this file: later files are missing",
                        h.seq
                    ),
                ));
            }
        }
        if r.last.is_some() {
            after = r.last.clone();
        }
        reports.push(r);
    }
    Ok(reports)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(n: u64) -> Vec<String> {
        let mut prev = GENESIS.to_owned();
        (0..n)
            .map(|i| {
                let (l, h) = make_line(i, &prev, &format!("{{\"action\":\"issue\",\"i\":{i}}}"));
                prev = h;
                l
            })
            .collect()
    }

    fn join(lines: &[String]) -> Vec<u8> {
        lines.iter().flat_map(|l| format!("{l}\n").into_bytes()).collect()
    }

    #[test]
    fn an_intact_chain_verifies_and_each_tamper_names_its_line() {
        let lines = chain(5);
        let r = verify(&join(&lines), &VerifyOpts::default()).unwrap();
        assert_eq!(r.lines, 5);
        assert_eq!(r.unsigned_tail, 5);

        let mut edited = lines.clone();
        edited[2] = edited[2].replace("\"i\":2", "\"i\":7");
        let f = verify(&join(&edited), &VerifyOpts::default()).unwrap_err();
        assert_eq!(f.line, 3, "{f}");
        assert!(f.why.contains("edited"), "{f}");

        let mut removed = lines.clone();
        removed.remove(1);
        let f = verify(&join(&removed), &VerifyOpts::default()).unwrap_err();
        assert_eq!(f.line, 2, "{f}");
        assert!(f.why.contains("removed"), "{f}");

        let mut swapped = lines.clone();
        swapped.swap(1, 2);
        let f = verify(&join(&swapped), &VerifyOpts::default()).unwrap_err();
        assert_eq!(f.line, 2, "{f}");
        assert!(f.why.contains("reordered"), "{f}");

        let mut cut = join(&lines);
        cut.truncate(cut.len() - 10);
        let f = verify(&cut, &VerifyOpts::default()).unwrap_err();
        assert_eq!(f.line, 5, "{f}");
        assert!(f.why.contains("cut mid-line"), "{f}");
    }

    #[test]
    fn a_rewritten_line_with_a_recomputed_hash_breaks_the_next_link() {
        let lines = chain(3);
        let v: Value = serde_json::from_str(&lines[1]).unwrap();
        let (forged, _) = make_line(1, v["prev"].as_str().unwrap(), "{\"action\":\"forged\"}");
        let mut edited = lines.clone();
        edited[1] = forged;
        let f = verify(&join(&edited), &VerifyOpts::default()).unwrap_err();
        assert_eq!(f.line, 3, "{f}");
        assert!(f.why.contains("does not match the hash of line 2"), "{f}");
    }

    #[test]
    fn a_file_continues_the_previous_one() {
        let lines = chain(4);
        let first = join(&lines[..2]);
        let second = join(&lines[2..]);
        let after = tail_head(&first).unwrap();
        verify(&second, &VerifyOpts { after: after.clone(), ..Default::default() }).unwrap();
        let wrong = tail_head(&join(&lines[..1])).unwrap();
        let f = verify(&second, &VerifyOpts { after: wrong, ..Default::default() }).unwrap_err();
        assert_eq!(f.line, 1, "{f}");
    }
}
