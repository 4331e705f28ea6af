//! A scanner for MySQL / MariaDB SQL text: where comments, string literals
//! and quoted identifiers begin and end, as the servers' lexers read them.
//! Used to keep template placeholders at top level, to check that a rendered
//! value is exactly one token, and to count statements. Knows nothing of
//! templates, connections or values.
//!
//! How a backslash inside a string literal reads depends on the session's
//! `sql_mode` (`NO_BACKSLASH_ESCAPES`), so the scanner takes a [`Backslash`]
//! mode: templates (configuration) are scanned with [`Backslash::Refuse`],
//! which rejects any backslash in a literal instead of guessing; rendered
//! statements are scanned with the mode of the session they will run in.

use std::fmt;

/// Where a byte of SQL text is, as the server's lexer sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Context {
    /// Top level: keywords, names, operators, `;`.
    Code,
    /// `-- ` (two dashes and a space or control character) or `#`, up to a
    /// newline.
    LineComment,
    /// `/* ... */` (not nested in MySQL).
    BlockComment,
    /// `'...'`, or `"..."` (a string unless `ANSI_QUOTES` is set; a quoted
    /// identifier otherwise: not top level either way).
    String,
    /// `` `...` ``.
    QuotedIdent,
}

impl fmt::Display for Context {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Context::Code => "top-level SQL",
            Context::LineComment => "a `--` or `#` comment",
            Context::BlockComment => "a `/* */` comment",
            Context::String => "a string literal",
            Context::QuotedIdent => "a backtick-quoted identifier",
        })
    }
}

/// How a backslash inside a string literal is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backslash {
    /// Unknown mode (configuration): a backslash in a literal is an error.
    Refuse,
    /// `NO_BACKSLASH_ESCAPES` off (the default): `\` escapes the next byte.
    Escapes,
    /// `NO_BACKSLASH_ESCAPES` on: `\` is an ordinary character.
    Literal,
}

/// SQL that cannot be scanned without guessing how the server reads it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScanError {
    #[error("the string literal at byte {0} holds a backslash, whose meaning depends on `NO_BACKSLASH_ESCAPES`; write the character another way (e.g. a hex literal X'5C')")]
    BackslashInString(usize),
    #[error("the comment at byte {0} is an executable comment (`/*!`, `/*M!` or an optimizer hint `/*+`), which the server runs as SQL; write the SQL without it")]
    ExecutableComment(usize),
}

impl lessor_plugin_sql::SqlContext for Context {
    const CODE: Context = Context::Code;
    const LINE_COMMENT: Context = Context::LineComment;
    fn holds_a_value(self) -> bool {
        matches!(self, Context::String | Context::QuotedIdent)
    }
}

/// One span of SQL text that is not top-level code. `start..end` includes
/// its delimiters.
pub type Span = lessor_plugin_sql::Span<Context>;

/// Every span that is not code, in order; one left open at the end is
/// `unterminated`.
pub type Scan = lessor_plugin_sql::Scan<Context>;

/// Whether `--` at `i` starts a comment: MySQL needs a space or control
/// character (or the end of the text) after the two dashes.
fn dash_comment(b: &[u8], i: usize) -> bool {
    b.get(i + 1) == Some(&b'-') && b.get(i + 2).is_none_or(|c| *c <= b' ')
}

/// Scans `sql` the way MySQL's and MariaDB's lexers do for what matters to
/// quoting: `-- ` and `#` line comments, `/* */` comments (executable ones
/// refused), string literals in `'` or `"` (doubled quotes; backslashes per
/// `backslash`), and backtick identifiers (doubled backticks).
pub fn scan(sql: &str, backslash: Backslash) -> Result<Scan, ScanError> {
    let b = sql.as_bytes();
    let mut out = Scan::default();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let (end, context) = match c {
            b'-' if dash_comment(b, i) => (line_end(b, i), Context::LineComment),
            b'#' => (line_end(b, i), Context::LineComment),
            b'/' if b.get(i + 1) == Some(&b'*') => {
                let rest = &b[i + 2..];
                if rest.starts_with(b"!") || rest.starts_with(b"M!") || rest.starts_with(b"+") {
                    return Err(ScanError::ExecutableComment(i));
                }
                let end = rest.windows(2).position(|w| w == b"*/").map(|p| i + 2 + p + 2);
                (end, Context::BlockComment)
            }
            b'\'' | b'"' => (quoted_end(b, i, c, backslash)?, Context::String),
            b'`' => (quoted_end(b, i, b'`', Backslash::Literal)?, Context::QuotedIdent),
            _ => {
                i += 1;
                continue;
            }
        };
        match end {
            Some(end) => {
                out.spans.push(Span { start: i, end, context });
                i = end;
            }
            None => {
                out.unterminated = Some(Span { start: i, end: b.len(), context });
                break;
            }
        }
    }
    Ok(out)
}

fn line_end(b: &[u8], i: usize) -> Option<usize> {
    // A line comment runs to the newline (which is code again) or the end.
    Some(b[i..].iter().position(|&c| c == b'\n').map(|p| i + p).unwrap_or(b.len()))
}

/// The end (exclusive) of the quoted token opening at `i` with `q`, or
/// `None` if it never closes.
fn quoted_end(b: &[u8], i: usize, q: u8, backslash: Backslash) -> Result<Option<usize>, ScanError> {
    let mut j = i + 1;
    while j < b.len() {
        match b[j] {
            b'\\' if q != b'`' => match backslash {
                Backslash::Refuse => return Err(ScanError::BackslashInString(i)),
                Backslash::Escapes => j += 2,
                Backslash::Literal => j += 1,
            },
            c if c == q => {
                if b.get(j + 1) == Some(&q) {
                    j += 2;
                } else {
                    return Ok(Some(j + 1));
                }
            }
            _ => j += 1,
        }
    }
    Ok(None)
}

/// Top-level `;` in `sql` (statement separators).
pub fn top_level_semicolons(sql: &str, backslash: Backslash) -> Result<usize, ScanError> {
    Ok(scan(sql, backslash)?.top_level_semicolons(sql))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn contexts(sql: &str, mode: Backslash) -> Vec<(usize, usize, Context)> {
        scan(sql, mode).unwrap().spans.iter().map(|s| (s.start, s.end, s.context)).collect()
    }

    #[test]
    fn comments_strings_and_identifiers() {
        use Context::*;
        assert_eq!(contexts("a -- x\nb", Backslash::Refuse), [(2, 6, LineComment)]);
        assert_eq!(contexts("a --x", Backslash::Refuse), [], "`--x` is two minus signs");
        assert_eq!(contexts("a #x\nb", Backslash::Refuse), [(2, 4, LineComment)]);
        assert_eq!(contexts("/* a /* b */ c", Backslash::Refuse), [(0, 12, BlockComment)], "not nested");
        assert_eq!(contexts("'it''s' \"q\"\"\"", Backslash::Refuse), [(0, 7, String), (8, 13, String)]);
        assert_eq!(contexts("`a``b` c", Backslash::Refuse), [(0, 6, QuotedIdent)]);
        assert_eq!(contexts("`a\\` x", Backslash::Refuse), [(0, 4, QuotedIdent)], "no escapes in backticks");
    }

    #[test]
    fn backslashes_follow_the_mode() {
        use Context::*;
        let sql = r"'a\' b' c";
        assert_eq!(scan(sql, Backslash::Refuse), Err(ScanError::BackslashInString(0)));
        assert_eq!(contexts(sql, Backslash::Escapes), [(0, 7, String)]);
        assert_eq!(contexts(sql, Backslash::Literal), [(0, 4, String)]);
        assert_eq!(top_level_semicolons(r"'\';'", Backslash::Escapes), Ok(0));
        assert_eq!(top_level_semicolons(r"'\';'", Backslash::Literal), Ok(1));
    }

    #[test]
    fn executable_comments_are_refused() {
        for sql in ["SELECT /*! 1 */", "SELECT /*M!100000 1 */", "SELECT /*+ BKA(t) */ 1"] {
            assert!(matches!(scan(sql, Backslash::Refuse), Err(ScanError::ExecutableComment(7))), "{sql}");
        }
    }

    #[test]
    fn unterminated_spans() {
        let s = scan("a 'b", Backslash::Refuse).unwrap();
        assert_eq!(s.unterminated.map(|u| u.context), Some(Context::String));
        assert_eq!(s.context_at(3), Context::String);
        assert_eq!(s.context_at(0), Context::Code);
    }
}
