//! Statement templates and MySQL quoting.
//!
//! Owns the template language (`{{name}}`, `{{user}}`, `{{host}}`,
//! `{{claim:ATTR}}`, `{{claim_ident:ATTR}}`), where placeholders may stand
//! (top level only, checked with [`crate::scan`]), and the only ways a value
//! enters SQL text: [`quote_ident`] (backticks), [`quote_literal`] (for the
//! session's `NO_BACKSLASH_ESCAPES` setting) and [`account`]. Knows nothing
//! of connections or roles; never sees a password.
//!
//! Values are Rust strings (valid UTF-8) and the admin sessions speak
//! utf8mb4, so no multi-byte sequence can swallow a quote's escape.

use std::fmt;

use lessor_plugin::Workload;

pub use crate::scan::{scan, top_level_semicolons, Backslash, Context, Scan, ScanError};

/// MySQL's identifier limit (characters).
pub const MAX_IDENT_CHARS: usize = 64;

/// One `{{...}}` slot of a template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placeholder {
    /// `{{name}}`: the lease's account, `'user'@'host'`.
    Name,
    /// `{{user}}`: the user name as a string literal.
    User,
    /// `{{host}}`: the host pattern as a string literal.
    Host,
    /// `{{claim:ATTR}}`: a workload attribute as a string literal.
    Claim(String),
    /// `{{claim_ident:ATTR}}`: a workload attribute as a backtick identifier.
    ClaimIdent(String),
}

impl fmt::Display for Placeholder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Placeholder::Name => f.write_str("{{name}}"),
            Placeholder::User => f.write_str("{{user}}"),
            Placeholder::Host => f.write_str("{{host}}"),
            Placeholder::Claim(a) => write!(f, "{{{{claim:{a}}}}}"),
            Placeholder::ClaimIdent(a) => write!(f, "{{{{claim_ident:{a}}}}}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Text(String),
    Slot(Placeholder),
}

/// A parsed statement template. Its source is configuration, not a secret.
#[derive(Clone, PartialEq, Eq)]
pub struct Template {
    source: String,
    pieces: Vec<Piece>,
}

impl fmt::Debug for Template {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Template({:?})", self.source)
    }
}

/// Why a template does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error("`{{{{` at byte {0} is never closed with `}}}}`")]
    Unclosed(usize),
    #[error("`}}}}` at byte {0} closes nothing")]
    UnopenedClose(usize),
    #[error("unknown placeholder `{{{{{0}}}}}` (known: {{{{name}}}}, {{{{user}}}}, {{{{host}}}}, {{{{claim:ATTR}}}}, {{{{claim_ident:ATTR}}}})")]
    Unknown(String),
    #[error("`{{{{{0}}}}}` needs an attribute name of letters, digits, `_`, `-`, `.` or `:`")]
    BadClaim(String),
    #[error("the template is empty")]
    Empty,
    #[error("`{placeholder}` at byte {byte} is inside {context}; placeholders must be at top level, where their quoting holds (there the value would be pasted as raw SQL)")]
    NotTopLevel { placeholder: String, byte: usize, context: Context },
    #[error("`{placeholder}` at byte {byte} touches `{neighbour}`; put a space between a placeholder and a quote, `@`, a name or another placeholder")]
    Glued { placeholder: String, byte: usize, neighbour: String },
    #[error("the template ends inside {context} opened at byte {byte}")]
    Unterminated { context: Context, byte: usize },
    #[error("the template changes `sql_mode`, which decides how values are quoted; set it on the server instead")]
    SqlMode,
    #[error("{0}")]
    Scan(ScanError),
}

fn valid_attr(a: &str) -> bool {
    !a.is_empty() && a.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':'))
}

fn parse_slot(inner: &str) -> Result<Placeholder, TemplateError> {
    let s = inner.trim();
    Ok(match s {
        "name" => Placeholder::Name,
        "user" => Placeholder::User,
        "host" => Placeholder::Host,
        _ => {
            let (kind, attr) = s.split_once(':').ok_or_else(|| TemplateError::Unknown(s.to_owned()))?;
            let attr = attr.trim();
            let make: fn(String) -> Placeholder = match kind.trim() {
                "claim" => Placeholder::Claim,
                "claim_ident" => Placeholder::ClaimIdent,
                _ => return Err(TemplateError::Unknown(s.to_owned())),
            };
            if !valid_attr(attr) {
                return Err(TemplateError::BadClaim(s.to_owned()));
            }
            make(attr.to_owned())
        }
    })
}

impl Template {
    /// Parses a template. Single braces are plain SQL; `{{` must be closed
    /// by `}}`, and `}}` must close a `{{`.
    pub fn parse(source: &str) -> Result<Template, TemplateError> {
        if source.trim().is_empty() {
            return Err(TemplateError::Empty);
        }
        let mut pieces = Vec::new();
        let mut text = String::new();
        let mut rest = source;
        let mut offset = 0;
        let mut slot_at = Vec::new();
        loop {
            let open = rest.find("{{");
            let close = rest.find("}}");
            match (open, close) {
                (None, None) => {
                    text.push_str(rest);
                    break;
                }
                (_, Some(c)) if open.is_none_or(|o| c < o) => return Err(TemplateError::UnopenedClose(offset + c)),
                (Some(o), _) => {
                    let after = &rest[o + 2..];
                    let end = after.find("}}").ok_or(TemplateError::Unclosed(offset + o))?;
                    let inner = &after[..end];
                    if inner.contains("{{") {
                        return Err(TemplateError::Unclosed(offset + o));
                    }
                    text.push_str(&rest[..o]);
                    if !text.is_empty() {
                        pieces.push(Piece::Text(std::mem::take(&mut text)));
                    }
                    pieces.push(Piece::Slot(parse_slot(inner)?));
                    let consumed = o + 2 + end + 2;
                    slot_at.push((offset + o, offset + consumed));
                    offset += consumed;
                    rest = &rest[consumed..];
                }
                (None, Some(_)) => return Err(TemplateError::UnopenedClose(offset)),
            }
        }
        if !text.is_empty() {
            pieces.push(Piece::Text(text));
        }
        check_structure(&pieces, &slot_at)?;
        Ok(Template { source: source.to_owned(), pieces })
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    /// Every placeholder, in order (with repeats).
    pub fn placeholders(&self) -> impl Iterator<Item = &Placeholder> {
        self.pieces.iter().filter_map(|p| match p {
            Piece::Slot(s) => Some(s),
            Piece::Text(_) => None,
        })
    }

    /// Renders the template for a session whose backslash mode is
    /// `vars.backslash`. Every value is quoted; nothing is pasted raw. The
    /// result is scanned again in that mode: each value must be exactly the
    /// tokens it was quoted as, at top level, and the statement one
    /// statement.
    pub fn render(&self, vars: &Vars<'_>) -> Result<String, RenderError> {
        let mut out = String::with_capacity(self.source.len() + 64);
        let mut values = Vec::new();
        for piece in &self.pieces {
            match piece {
                Piece::Text(t) => out.push_str(t),
                Piece::Slot(p) => {
                    let start = out.len();
                    let v = vars.value(p)?;
                    out.push_str(&v);
                    values.push((p, start, out.len()));
                }
            }
        }
        let scanned = scan(&out, vars.backslash).ok();
        for (p, start, end) in values {
            let ok = scanned.as_ref().is_some_and(|s| match p {
                // 'user'@'host': two literals around an `@`.
                Placeholder::Name => {
                    let text = &out[start..end];
                    text.find("'@'").is_some_and(|at| {
                        s.is_one_token(start, start + at + 1) && s.is_one_token(start + at + 2, end)
                    })
                }
                _ => s.is_one_token(start, end),
            });
            if !ok {
                return Err(RenderError::NotOneToken(p.to_string()));
            }
        }
        if top_level_semicolons(&out, vars.backslash).map_or(true, |n| n > 0) {
            return Err(RenderError::NotOneStatement);
        }
        Ok(out)
    }
}

/// Why each placeholder stands where quoting holds: at top level (not in a
/// comment, literal or quoted identifier), not glued to a quote, `@` or
/// name, and the template ends at top level or in a line comment. Also
/// refuses a backslash in a literal (its meaning depends on the session)
/// and executable comments.
fn check_structure(pieces: &[Piece], slot_at: &[(usize, usize)]) -> Result<(), TemplateError> {
    let mut skeleton = String::new();
    let mut source_of = Vec::new();
    let mut slots = Vec::new();
    let mut src = 0;
    let mut next_slot = slot_at.iter();
    for (i, piece) in pieces.iter().enumerate() {
        match piece {
            Piece::Text(t) => {
                skeleton.push_str(t);
                source_of.extend(src..src + t.len());
                src += t.len();
            }
            Piece::Slot(p) => {
                let (at, end) = next_slot.next().copied().unwrap_or((src, src));
                let glued_to_slot = matches!(pieces.get(i + 1), Some(Piece::Slot(_)));
                slots.push((p, skeleton.len(), at, glued_to_slot));
                skeleton.push(' ');
                source_of.push(at);
                src = end;
            }
        }
    }
    let to_source = |i: usize| source_of.get(i).copied().unwrap_or(src);
    let scanned = scan(&skeleton, Backslash::Refuse).map_err(|e| {
        TemplateError::Scan(match e {
            ScanError::BackslashInString(i) => ScanError::BackslashInString(to_source(i)),
            ScanError::ExecutableComment(i) => ScanError::ExecutableComment(to_source(i)),
        })
    })?;
    let code: String = skeleton
        .char_indices()
        .map(|(i, c)| if scanned.context_at(i) == Context::Code { c.to_ascii_lowercase() } else { ' ' })
        .collect();
    if code.contains("sql_mode") {
        return Err(TemplateError::SqlMode);
    }
    let name_char = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '$' || !c.is_ascii();
    for (p, at, source_at, glued_to_slot) in slots {
        let context = scanned.context_at(at);
        if context != Context::Code {
            return Err(TemplateError::NotTopLevel { placeholder: p.to_string(), byte: source_at, context });
        }
        let before = skeleton.get(..at).and_then(|t| t.chars().next_back());
        let after = skeleton.get(at + 1..).and_then(|t| t.chars().next());
        let glued = before.filter(|&c| name_char(c) || matches!(c, '\'' | '"' | '`' | '@'));
        let glued = glued.or(after.filter(|&c| name_char(c) || matches!(c, '\'' | '"' | '`' | '@')));
        if let Some(c) = glued {
            return Err(TemplateError::Glued { placeholder: p.to_string(), byte: source_at, neighbour: c.to_string() });
        }
        if glued_to_slot {
            return Err(TemplateError::Glued {
                placeholder: p.to_string(),
                byte: source_at,
                neighbour: "another placeholder".into(),
            });
        }
    }
    if let Some(open) = scanned.unterminated.filter(|s| s.context != Context::LineComment) {
        return Err(TemplateError::Unterminated { context: open.context, byte: to_source(open.start) });
    }
    Ok(())
}

/// The values a template may use.
#[derive(Clone, Copy)]
pub struct Vars<'a> {
    pub user: &'a str,
    pub host: &'a str,
    pub workload: Option<&'a Workload>,
    /// How the session the statement runs in reads backslashes.
    pub backslash: Backslash,
}

/// Why a template could not be rendered for a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RenderError {
    #[error("the workload has no claim `{0}`, which the role's statements use")]
    MissingClaim(String),
    #[error("{0}")]
    Quote(#[from] QuoteError),
    #[error("{0} is not available in this statement")]
    Unavailable(String),
    #[error("{0} did not render as quoted tokens at top level")]
    NotOneToken(String),
    #[error("the statement renders to more than one SQL statement; write one statement per template")]
    NotOneStatement,
}

impl Vars<'_> {
    /// A claim: `subject` and `issuer` are the workload's `sub` and `iss`;
    /// anything else is a mapped attribute.
    pub fn claim(workload: &Workload, attr: &str) -> Option<String> {
        match attr {
            "subject" => Some(workload.subject.clone()),
            "issuer" => Some(workload.issuer.clone()),
            _ => workload.attributes.get(attr).cloned(),
        }
    }

    fn value(&self, p: &Placeholder) -> Result<String, RenderError> {
        let claim = |attr: &str| -> Result<String, RenderError> {
            let w = self.workload.ok_or_else(|| RenderError::Unavailable(p.to_string()))?;
            let v = Self::claim(w, attr).ok_or_else(|| RenderError::MissingClaim(attr.to_owned()))?;
            // A newline would end a line comment; none belongs in a value.
            match v.chars().find(|c| c.is_control()) {
                Some(c) => Err(RenderError::Quote(QuoteError::Control(format!("claim `{attr}`"), u32::from(c)))),
                None => Ok(v),
            }
        };
        Ok(match p {
            Placeholder::Name => account(self.user, self.host, self.backslash)?,
            Placeholder::User => quote_literal(self.user, self.backslash)?,
            Placeholder::Host => quote_literal(self.host, self.backslash)?,
            Placeholder::Claim(a) => quote_literal(&claim(a)?, self.backslash).map_err(|e| e.for_claim(a))?,
            Placeholder::ClaimIdent(a) => quote_ident(&claim(a)?).map_err(|e| e.for_claim(a))?,
        })
    }
}

/// A value that cannot be put into SQL safely.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuoteError {
    #[error("{0} contains a NUL byte")]
    Nul(String),
    #[error("{0} is empty, which is not a valid identifier")]
    EmptyIdent(String),
    #[error("{0} is {1} characters long; MySQL identifiers are at most 64")]
    TooLong(String, usize),
    #[error("{0} ends with a space, which MySQL identifiers cannot")]
    TrailingSpace(String),
    #[error("{0} contains the control character U+{1:04X}; values used in SQL statements must not")]
    Control(String, u32),
}

impl QuoteError {
    fn for_claim(self, attr: &str) -> QuoteError {
        let what = format!("claim `{attr}`");
        match self {
            QuoteError::Nul(_) => QuoteError::Nul(what),
            QuoteError::EmptyIdent(_) => QuoteError::EmptyIdent(what),
            QuoteError::TooLong(_, n) => QuoteError::TooLong(what, n),
            QuoteError::TrailingSpace(_) => QuoteError::TrailingSpace(what),
            QuoteError::Control(_, c) => QuoteError::Control(what, c),
        }
    }
}

/// `` ` `` + value with `` ` `` doubled + `` ` ``. Refuses NUL, empty, over-long
/// identifiers and a trailing space (the server would refuse or change
/// them). Backticks do not treat `\` specially in either mode.
pub fn quote_ident(value: &str) -> Result<String, QuoteError> {
    if value.contains('\0') {
        return Err(QuoteError::Nul("an identifier".into()));
    }
    if value.is_empty() {
        return Err(QuoteError::EmptyIdent("an identifier".into()));
    }
    let n = value.chars().count();
    if n > MAX_IDENT_CHARS {
        return Err(QuoteError::TooLong("an identifier".into(), n));
    }
    if value.ends_with(' ') {
        return Err(QuoteError::TrailingSpace("an identifier".into()));
    }
    Ok(format!("`{}`", value.replace('`', "``")))
}

/// `'` + value + `'`, with `'` doubled (read the same in both modes) and,
/// where backslashes escape (`NO_BACKSLASH_ESCAPES` off), `\` doubled.
/// [`Backslash::Refuse`] (mode unknown) refuses a value with a backslash.
/// Refuses NUL.
pub fn quote_literal(value: &str, backslash: Backslash) -> Result<String, QuoteError> {
    if value.contains('\0') {
        return Err(QuoteError::Nul("a string".into()));
    }
    let quoted = value.replace('\'', "''");
    match backslash {
        Backslash::Escapes => Ok(format!("'{}'", quoted.replace('\\', "\\\\"))),
        Backslash::Literal => Ok(format!("'{quoted}'")),
        Backslash::Refuse if value.contains('\\') => Err(QuoteError::Control("a string with a backslash".into(), u32::from('\\'))),
        Backslash::Refuse => Ok(format!("'{quoted}'")),
    }
}

/// An account name, `'user'@'host'`.
pub fn account(user: &str, host: &str, backslash: Backslash) -> Result<String, QuoteError> {
    Ok(format!("{}@{}", quote_literal(user, backslash)?, quote_literal(host, backslash)?))
}

/// Escapes `\`, `%` and `_` for a `LIKE` pattern with `ESCAPE '!'` (`!`
/// rather than the default `\`, whose meaning depends on the mode).
pub fn like_escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 4);
    for c in value.chars() {
        if matches!(c, '!' | '%' | '_') {
            out.push('!');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn workload() -> Workload {
        let mut w = Workload { subject: "repo:acme/api".into(), issuer: "https://iss".into(), ..Default::default() };
        w.attributes.insert("team".into(), "x'; DROP USER canary; -- \\' `b` \" end".into());
        w
    }

    fn vars(w: &Workload, backslash: Backslash) -> Vars<'_> {
        Vars { user: "lessor_ab12", host: "%", workload: Some(w), backslash }
    }

    #[test]
    fn renders_every_placeholder_quoted_in_both_modes() {
        let w = workload();
        let t = Template::parse("GRANT SELECT ON {{claim_ident:team}}.* TO {{name}} /* {{user}} */").err();
        assert!(matches!(t, Some(TemplateError::NotTopLevel { .. })), "{t:?}");
        let t = Template::parse("GRANT SELECT ON {{claim_ident:team}} . t TO {{name}}").unwrap();
        assert_eq!(
            t.render(&vars(&w, Backslash::Escapes)).unwrap(),
            "GRANT SELECT ON `x'; DROP USER canary; -- \\' ``b`` \" end` . t TO 'lessor_ab12'@'%'"
        );
        let t = Template::parse("SET @a = {{claim:team}}").unwrap();
        assert_eq!(
            t.render(&vars(&w, Backslash::Escapes)).unwrap(),
            r#"SET @a = 'x''; DROP USER canary; -- \\'' `b` " end'"#
        );
        assert_eq!(
            t.render(&vars(&w, Backslash::Literal)).unwrap(),
            r#"SET @a = 'x''; DROP USER canary; -- \'' `b` " end'"#
        );
        assert_eq!(Template::parse("SELECT {{user}}, {{host}}").unwrap().render(&vars(&w, Backslash::Literal)).unwrap(), "SELECT 'lessor_ab12', '%'");
    }

    #[test]
    fn placeholders_only_at_top_level() {
        for (src, context) in [
            ("GRANT r TO {{name}} -- {{claim:x}}", Context::LineComment),
            ("GRANT r TO {{name}} # {{claim:x}}", Context::LineComment),
            ("GRANT r TO {{name}} /* {{claim:x}} */", Context::BlockComment),
            ("SET @a = 'a {{claim:x}} b'", Context::String),
            ("SET @a = \"a {{claim:x}} b\"", Context::String),
            ("SELECT `a {{claim:x}} b`", Context::QuotedIdent),
        ] {
            match Template::parse(src) {
                Err(TemplateError::NotTopLevel { context: c, .. }) => assert_eq!(c, context, "{src}"),
                other => panic!("{src}: {other:?}"),
            }
        }
        // `--` without a space after it is two minus signs: top level.
        assert!(Template::parse("SELECT 1 -- {{claim:x}}").is_err());
    }

    #[test]
    fn glued_ambiguous_and_unterminated_templates_are_refused() {
        for src in ["SELECT _utf8mb4{{claim:x}}", "SELECT {{user}}@{{host}}", "SELECT {{user}}{{host}}", "SELECT x{{user}}", "SELECT `a`{{user}}"] {
            assert!(matches!(Template::parse(src), Err(TemplateError::Glued { .. })), "{src}");
        }
        assert!(matches!(Template::parse("SELECT 'a\\'b' , {{user}}"), Err(TemplateError::Scan(ScanError::BackslashInString(7)))));
        assert!(matches!(Template::parse("SELECT /*! {{user}} */"), Err(TemplateError::Scan(ScanError::ExecutableComment(7)))));
        assert!(matches!(Template::parse("SELECT {{user}} 'open"), Err(TemplateError::Unterminated { .. })));
        assert!(matches!(Template::parse("SET SESSION sql_mode = 'NO_BACKSLASH_ESCAPES'"), Err(TemplateError::SqlMode)));
        assert!(Template::parse("SELECT 'sql_mode' , {{user}}").is_ok(), "in a literal it changes nothing");
        assert!(matches!(Template::parse("x {{nme}}"), Err(TemplateError::Unknown(_))));
        assert!(matches!(Template::parse("x {{name}"), Err(TemplateError::Unclosed(2))));
        assert!(matches!(Template::parse("x }}"), Err(TemplateError::UnopenedClose(2))));
        assert!(matches!(Template::parse("  "), Err(TemplateError::Empty)));
    }

    #[test]
    fn a_value_must_stay_one_token_and_one_statement() {
        let w = workload();
        // A template that parses but whose rendering would split: a `;` at
        // top level is refused at render time.
        let t = Template::parse("SELECT {{user}} ; SELECT 1").unwrap();
        assert_eq!(t.render(&vars(&w, Backslash::Literal)), Err(RenderError::NotOneStatement));
        // Rendering a backslash-bearing value with the mode unknown fails.
        let t = Template::parse("SELECT {{claim:team}}").unwrap();
        assert!(matches!(t.render(&vars(&w, Backslash::Refuse)), Err(RenderError::Quote(_))));
    }

    #[test]
    fn quoting() {
        assert_eq!(quote_ident("a`b").unwrap(), "`a``b`");
        assert_eq!(quote_ident("a\\b").unwrap(), "`a\\b`");
        assert!(matches!(quote_ident(""), Err(QuoteError::EmptyIdent(_))));
        assert!(matches!(quote_ident("a "), Err(QuoteError::TrailingSpace(_))));
        assert!(matches!(quote_ident(&"é".repeat(65)), Err(QuoteError::TooLong(_, 65))));
        assert!(quote_ident(&"é".repeat(64)).is_ok());
        assert!(matches!(quote_ident("a\0"), Err(QuoteError::Nul(_))));
        assert_eq!(quote_literal("it's \\", Backslash::Escapes).unwrap(), "'it''s \\\\'");
        assert_eq!(quote_literal("it's \\", Backslash::Literal).unwrap(), "'it''s \\'");
        assert!(quote_literal("a\0", Backslash::Literal).is_err());
        assert_eq!(account("u", "10.0.%", Backslash::Escapes).unwrap(), "'u'@'10.0.%'");
        assert_eq!(like_escape("a_b%c!"), "a!_b!%c!!");
    }

    #[test]
    fn claims_render_escaped_or_fail_by_name() {
        let mut w = workload();
        let t = Template::parse("SELECT {{claim:missing}}").unwrap();
        assert_eq!(t.render(&vars(&w, Backslash::Escapes)), Err(RenderError::MissingClaim("missing".into())));
        w.attributes.insert("nl".into(), "a\nb".into());
        let t = Template::parse("SELECT {{claim:nl}}").unwrap();
        assert_eq!(
            t.render(&vars(&w, Backslash::Escapes)).unwrap_err().to_string(),
            "claim `nl` contains the control character U+000A; values used in SQL statements must not"
        );
    }
}
