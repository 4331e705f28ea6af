//! What a dialect's SQL scanner reports: the spans of text that are not
//! top-level code (comments, literals, quoted names) and one left open at
//! the end. The scanners themselves (PostgreSQL's, MySQL's lexers) live in
//! their plugins; this is only their common result and its two questions.
//! Must not import: [`crate::template`] (the engine builds on this).

use std::fmt;

/// A dialect's lexical contexts (top level, comments, literals, ...).
pub trait SqlContext: Copy + Eq + fmt::Debug + fmt::Display {
    /// Top level: keywords, names, operators, `;`.
    const CODE: Self;
    /// A comment that ends at a newline (a template may end inside one).
    const LINE_COMMENT: Self;
    /// Whether a quoted value may scan as exactly one span of this context
    /// (string literals, quoted identifiers).
    fn holds_a_value(self) -> bool;
}

/// One span of SQL text that is not top-level code. `start..end` includes
/// its delimiters (and a dialect's string prefix, if any).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span<C> {
    pub start: usize,
    pub end: usize,
    pub context: C,
}

/// The lexical structure of a piece of SQL: every span that is not code, in
/// order. A span that runs to the end of the text without being closed is
/// `unterminated`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scan<C> {
    pub spans: Vec<Span<C>>,
    pub unterminated: Option<Span<C>>,
}

impl<C> Default for Scan<C> {
    fn default() -> Self {
        Scan { spans: Vec::new(), unterminated: None }
    }
}

impl<C: SqlContext> Scan<C> {
    /// The context of byte `at`.
    pub fn context_at(&self, at: usize) -> C {
        let i = self.spans.partition_point(|s| s.end <= at);
        match (self.spans.get(i), &self.unterminated) {
            (Some(s), _) if s.start <= at => s.context,
            (_, Some(open)) if open.start <= at => open.context,
            _ => C::CODE,
        }
    }

    /// Whether `start..end` is exactly one whole string literal or quoted
    /// identifier (what a quoted value must scan as).
    pub fn is_one_token(&self, start: usize, end: usize) -> bool {
        let i = self.spans.partition_point(|s| s.end <= start);
        self.spans
            .get(i)
            .is_some_and(|s| s.start == start && s.end == end && s.context.holds_a_value())
    }
}

impl<C: SqlContext> Scan<C> {
    /// Counts `;` at top level in `sql` (the text this scan is of): the
    /// statements it holds, minus one.
    pub fn top_level_semicolons(&self, sql: &str) -> usize {
        sql.bytes()
            .enumerate()
            .filter(|&(i, c)| c == b';' && self.context_at(i) == C::CODE)
            .count()
    }
}
