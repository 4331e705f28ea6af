//! A scanner for PostgreSQL SQL text: where comments, string literals,
//! quoted identifiers and dollar quotes begin and end, as the server's lexer
//! (scan.l) reads them. Used to keep template placeholders at top level and
//! to count statements. Knows nothing of templates, connections or values.

use std::fmt;

/// Where a byte of SQL text is, as PostgreSQL's scanner sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Context {
    /// Top level: keywords, names, operators, `;`.
    Code,
    /// `-- ...` up to a newline (`\n` or `\r`).
    LineComment,
    /// `/* ... */`, nested.
    BlockComment,
    /// `'...'`, `E'...'` and the other prefixed string literals.
    String,
    /// `"..."`.
    QuotedIdent,
    /// `$$...$$` or `$tag$...$tag$`.
    DollarQuoted,
}

impl fmt::Display for Context {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Context::Code => "top-level SQL",
            Context::LineComment => "a `--` comment",
            Context::BlockComment => "a `/* */` comment",
            Context::String => "a string literal",
            Context::QuotedIdent => "a quoted identifier",
            Context::DollarQuoted => "a dollar-quoted string",
        })
    }
}

/// SQL that cannot be scanned without guessing how the server reads it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScanError {
    #[error("the `$` at byte {0} follows a number directly, which PostgreSQL versions read differently (a dollar quote or not); put a space before it")]
    DollarAfterNumber(usize),
    #[error("the string literal at byte {0} holds a backslash, whose meaning depends on `standard_conforming_strings`; write it as E'...' (backslash escapes) instead")]
    BackslashInString(usize),
}

impl lessor_plugin_sql::SqlContext for Context {
    const CODE: Context = Context::Code;
    const LINE_COMMENT: Context = Context::LineComment;
    fn holds_a_value(self) -> bool {
        matches!(self, Context::String | Context::QuotedIdent)
    }
}

/// One span of SQL text that is not top-level code: a literal, a quoted
/// identifier, a comment. `start..end` includes its delimiters (and a
/// string's `E`/`U&`/`B`/`X`/`N` prefix).
pub type Span = lessor_plugin_sql::Span<Context>;

/// The lexical structure of a piece of SQL: every span that is not code, in
/// order, and one left open at the end.
pub type Scan = lessor_plugin_sql::Scan<Context>;

/// Bytes that continue a name (PostgreSQL's `ident_cont`).
fn ident_cont(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c == b'$' || c >= 0x80
}

/// Bytes that start a name or a dollar-quote tag.
fn ident_start(c: u8) -> bool {
    c.is_ascii_alphabetic() || c == b'_' || c >= 0x80
}

/// Scans `sql` the way PostgreSQL's lexer does (scan.l) for what matters to
/// quoting: comments (`--` to `\n`/`\r`, nested `/* */`), string literals
/// (`''` doubling; backslash escapes only in `E'...'`), quoted identifiers,
/// dollar quotes (`$tag$`, but not a `$` inside a name such as `a$b$`), and
/// names (a string prefix letter glued to a longer name is part of the name:
/// `fooE'x'` is the name `fooE` and a standard string). Where versions or
/// settings would read the text differently it refuses instead of guessing.
pub fn scan(sql: &str) -> Result<Scan, ScanError> {
    let b = sql.as_bytes();
    let mut out = Scan::default();
    let mut i = 0;
    let push = |out: &mut Scan, start: usize, end: Option<usize>, context: Context| match end {
        Some(end) => out.spans.push(Span { start, end, context }),
        None => {
            out.unterminated = Some(Span { start, end: b.len(), context });
        }
    };
    while i < b.len() {
        let c = b[i];
        match c {
            b'-' if b.get(i + 1) == Some(&b'-') => {
                let end = b[i..].iter().position(|&c| c == b'\n' || c == b'\r').map(|p| i + p);
                push(&mut out, i, end, Context::LineComment);
                i = end.unwrap_or(b.len());
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                let (mut j, mut depth) = (i + 2, 1usize);
                while j < b.len() && depth > 0 {
                    if b[j] == b'/' && b.get(j + 1) == Some(&b'*') {
                        depth += 1;
                        j += 2;
                    } else if b[j] == b'*' && b.get(j + 1) == Some(&b'/') {
                        depth -= 1;
                        j += 2;
                    } else {
                        j += 1;
                    }
                }
                let end = (depth == 0).then_some(j);
                push(&mut out, i, end, Context::BlockComment);
                i = end.unwrap_or(b.len());
            }
            b'\'' => {
                let end = quoted_end(b, i, b'\'', false);
                if b[i..end.unwrap_or(b.len())].contains(&b'\\') {
                    return Err(ScanError::BackslashInString(i));
                }
                push(&mut out, i, end, Context::String);
                i = end.unwrap_or(b.len());
            }
            b'"' => {
                let end = quoted_end(b, i, b'"', false);
                push(&mut out, i, end, Context::QuotedIdent);
                i = end.unwrap_or(b.len());
            }
            b'$' if b.get(i + 1).is_some_and(u8::is_ascii_digit) => {
                // A parameter, `$1`.
                i += 1;
                while i < b.len() && b[i].is_ascii_digit() {
                    i += 1;
                }
            }
            b'$' => match dollar_tag(b, i) {
                Some(tag_end) => {
                    let tag = &b[i..tag_end];
                    let end = b[tag_end..]
                        .windows(tag.len())
                        .position(|w| w == tag)
                        .map(|p| tag_end + p + tag.len());
                    push(&mut out, i, end, Context::DollarQuoted);
                    i = end.unwrap_or(b.len());
                }
                None => i += 1,
            },
            c if c.is_ascii_digit() => {
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_' || b[i] == b'.') {
                    i += 1;
                }
                if b.get(i) == Some(&b'$') {
                    return Err(ScanError::DollarAfterNumber(i));
                }
            }
            c if ident_start(c) => {
                let start = i;
                while i < b.len() && ident_cont(b[i]) {
                    i += 1;
                }
                let word = &b[start..i];
                let next = b.get(i).copied();
                let escapes = word.eq_ignore_ascii_case(b"e");
                let prefix = escapes
                    || word.eq_ignore_ascii_case(b"b")
                    || word.eq_ignore_ascii_case(b"x")
                    || word.eq_ignore_ascii_case(b"n");
                if next == Some(b'\'') && prefix {
                    let end = quoted_end(b, i, b'\'', escapes);
                    if !escapes && b[i..end.unwrap_or(b.len())].contains(&b'\\') {
                        return Err(ScanError::BackslashInString(i));
                    }
                    push(&mut out, start, end, Context::String);
                    i = end.unwrap_or(b.len());
                } else if word.eq_ignore_ascii_case(b"u")
                    && next == Some(b'&')
                    && matches!(b.get(i + 1), Some(b'\'' | b'"'))
                {
                    let q = b[i + 1];
                    let end = quoted_end(b, i + 1, q, false);
                    let context = if q == b'"' { Context::QuotedIdent } else { Context::String };
                    push(&mut out, start, end, context);
                    i = end.unwrap_or(b.len());
                }
            }
            _ => i += 1,
        }
    }
    Ok(out)
}

/// The end (exclusive) of the quoted token opening at `open` with `q`, or
/// `None` when it is never closed. `q` inside is doubled; with `escapes` a
/// backslash also escapes the next byte.
fn quoted_end(b: &[u8], open: usize, q: u8, escapes: bool) -> Option<usize> {
    let mut j = open + 1;
    while j < b.len() {
        if escapes && b[j] == b'\\' {
            j += 2;
        } else if b[j] == q {
            if b.get(j + 1) == Some(&q) {
                j += 2;
            } else {
                return Some(j + 1);
            }
        } else {
            j += 1;
        }
    }
    None
}

/// The end of the dollar-quote tag (`$$`, `$tag$`) starting at `i`, if one
/// starts there. A `$` that continues a name never gets here.
fn dollar_tag(b: &[u8], i: usize) -> Option<usize> {
    let mut j = i + 1;
    if b.get(j) == Some(&b'$') {
        return Some(j + 1);
    }
    if !b.get(j).copied().is_some_and(ident_start) {
        return None;
    }
    while j < b.len() && (b[j].is_ascii_alphanumeric() || b[j] == b'_' || b[j] >= 0x80) {
        j += 1;
    }
    (b.get(j) == Some(&b'$')).then_some(j + 1)
}

/// Counts `;` outside string literals, quoted identifiers, dollar-quoted
/// strings and comments: the statements a piece of SQL holds, minus one.
/// SQL that cannot be scanned without guessing counts as more than one.
pub fn top_level_semicolons(sql: &str) -> usize {
    scan(sql).map_or(1, |s| s.top_level_semicolons(sql))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_statements_outside_quotes_comments_and_dollar_quotes() {
        assert_eq!(top_level_semicolons("CREATE ROLE \"a;b\" PASSWORD 'x;''y'"), 0);
        assert_eq!(top_level_semicolons("SELECT 1; SELECT 2"), 1);
        assert_eq!(top_level_semicolons("SELECT 1 -- ; comment\n"), 0);
        assert_eq!(top_level_semicolons("SELECT /* ; /* nested ; */ */ 1"), 0);
        assert_eq!(top_level_semicolons("DO $x$ BEGIN PERFORM 1; END $x$"), 0);
        assert_eq!(top_level_semicolons("SELECT E'a\\';' ; SELECT 1"), 1);
        assert_eq!(top_level_semicolons("SELECT $1; SELECT 2"), 1);
        // A claim value cannot end its literal: quoting doubles the quote.
        let v = crate::sql::quote_literal("x'; DROP ROLE postgres; --").unwrap();
        assert_eq!(top_level_semicolons(&format!("COMMENT ON ROLE r IS {v}")), 0);
    }

    #[test]
    fn scanner_follows_postgresql() {
        let ctx = |sql: &str, at: &str| scan(sql).unwrap().context_at(sql.find(at).unwrap());
        assert_eq!(ctx("SELECT E'a\\' x' , y", "y"), Context::Code);
        assert_eq!(ctx("SELECT E'a\\' x' , y", "x"), Context::String);
        assert_eq!(ctx("SELECT 'a''b' , y", "b"), Context::String);
        assert_eq!(ctx("SELECT \"a\"\"b\" , y", "y"), Context::Code);
        assert_eq!(ctx("SELECT $1, y", "y"), Context::Code);
        assert_eq!(ctx("SELECT a$b$ + y", "y"), Context::Code);
        assert_eq!(ctx("SELECT $b$ y $b$", "y"), Context::DollarQuoted);
        assert_eq!(ctx("SELECT $b$ $c$ y $b$ , z", "z"), Context::Code);
        assert_eq!(ctx("SELECT 1 --x\ry", "y"), Context::Code);
        assert_eq!(ctx("SELECT 1 */ y", "y"), Context::Code);
        assert_eq!(ctx("SELECT U&\"a\" y", "y"), Context::Code);
        assert_eq!(ctx("SELECT X'1f' y", "f"), Context::String);
        assert_eq!(ctx("SELECT éE'x' y", "x"), Context::String);
        assert_eq!(scan("SELECT éE'\\'"), Err(ScanError::BackslashInString(10)));
    }
}
