//! Statement templates and SQL quoting.
//!
//! Owns the template language (`{{name}}`, `{{password}}`, `{{expiry}}`,
//! `{{database}}`, `{{admin}}`, `{{claim:ATTR}}`, `{{claim_ident:ATTR}}`),
//! where placeholders may stand (top level only, checked with
//! [`crate::scan`]), and the only two ways a value enters SQL text:
//! [`quote_ident`] and [`quote_literal`]. Knows nothing of connections or roles; never sees a
//! plaintext password (`{{password}}` is the SCRAM verifier).

use std::fmt;

use lessor_plugin::Workload;

pub use crate::scan::{scan, top_level_semicolons, Context, Scan, ScanError, Span};

/// PostgreSQL's identifier limit (`NAMEDATALEN - 1`); longer ones are
/// silently truncated by the server, so we refuse them.
pub const MAX_IDENT_BYTES: usize = 63;

/// One `{{...}}` slot of a template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placeholder {
    /// `{{name}}`: the role being created, as a quoted identifier.
    Name,
    /// `{{password}}`: the SCRAM-SHA-256 verifier, as a string literal.
    Password,
    /// `{{expiry}}`: the lease expiry, an RFC 3339 UTC string literal.
    Expiry,
    /// `{{database}}`: the role's database, as a quoted identifier.
    Database,
    /// `{{admin}}`: the connection's `current_user`, as a quoted identifier.
    Admin,
    /// `{{claim:ATTR}}`: a workload attribute as a string literal.
    Claim(String),
    /// `{{claim_ident:ATTR}}`: a workload attribute as a quoted identifier.
    ClaimIdent(String),
}

impl fmt::Display for Placeholder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Placeholder::Name => f.write_str("{{name}}"),
            Placeholder::Password => f.write_str("{{password}}"),
            Placeholder::Expiry => f.write_str("{{expiry}}"),
            Placeholder::Database => f.write_str("{{database}}"),
            Placeholder::Admin => f.write_str("{{admin}}"),
            Placeholder::Claim(a) => write!(f, "{{{{claim:{a}}}}}"),
            Placeholder::ClaimIdent(a) => write!(f, "{{{{claim_ident:{a}}}}}"),
        }
    }
}

impl Placeholder {
    /// The claim this placeholder reads, if any.
    pub fn claim(&self) -> Option<&str> {
        match self {
            Placeholder::Claim(a) | Placeholder::ClaimIdent(a) => Some(a),
            _ => None,
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
    #[error("unknown placeholder `{{{{{0}}}}}` (known: {{{{name}}}}, {{{{password}}}}, {{{{expiry}}}}, {{{{database}}}}, {{{{admin}}}}, {{{{claim:ATTR}}}}, {{{{claim_ident:ATTR}}}})")]
    Unknown(String),
    #[error("`{{{{{0}}}}}` needs an attribute name of letters, digits, `_`, `-`, `.` or `:`")]
    BadClaim(String),
    #[error("the template is empty")]
    Empty,
    #[error("`{placeholder}` at byte {byte} is inside {context}; placeholders must be at top level, where their quoting holds (there the value would be pasted as raw SQL)")]
    NotTopLevel {
        placeholder: String,
        byte: usize,
        context: Context,
    },
    #[error("`{placeholder}` at byte {byte} touches `{neighbour}`; put a space between a placeholder and a quote, `$`, `&`, a name or another placeholder")]
    Glued {
        placeholder: String,
        byte: usize,
        neighbour: String,
    },
    #[error("the template ends inside {context} opened at byte {byte}")]
    Unterminated { context: Context, byte: usize },
    #[error("{0}")]
    Scan(ScanError),
}

fn valid_attr(a: &str) -> bool {
    !a.is_empty()
        && a
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':'))
}

fn parse_slot(inner: &str) -> Result<Placeholder, TemplateError> {
    let s = inner.trim();
    Ok(match s {
        "name" => Placeholder::Name,
        "password" => Placeholder::Password,
        "expiry" => Placeholder::Expiry,
        "database" => Placeholder::Database,
        "admin" => Placeholder::Admin,
        _ => {
            let (kind, attr) = s
                .split_once(':')
                .ok_or_else(|| TemplateError::Unknown(s.to_owned()))?;
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
    /// Parses a template. Single braces are plain SQL (`'{}'::jsonb`); `{{`
    /// must be closed by `}}`, and `}}` must close a `{{`.
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
                (_, Some(c)) if open.is_none_or(|o| c < o) => {
                    return Err(TemplateError::UnopenedClose(offset + c));
                }
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
                (None, Some(_)) => unreachable!("handled by the guard above"),
            }
        }
        if !text.is_empty() {
            pieces.push(Piece::Text(text));
        }
        check_structure(&pieces, &slot_at)?;
        Ok(Template {
            source: source.to_owned(),
            pieces,
        })
    }

    /// The template as written.
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

    /// Renders the template. Every value is quoted; nothing is pasted raw.
    /// The result is scanned again: each value must be exactly one string
    /// literal or quoted identifier, at top level (what config validation
    /// promised; this keeps the promise if that validation has a gap).
    pub fn render(&self, vars: &Vars<'_>) -> Result<String, RenderError> {
        let mut out = String::with_capacity(self.source.len() + 64);
        let mut values = Vec::new();
        for piece in &self.pieces {
            match piece {
                Piece::Text(t) => out.push_str(t),
                Piece::Slot(p) => {
                    let start = out.len();
                    out.push_str(&vars.value(p)?);
                    values.push((p, start, out.len()));
                }
            }
        }
        let scan = scan(&out).ok();
        for (p, start, end) in values {
            if !scan.as_ref().is_some_and(|s| s.is_one_token(start, end)) {
                return Err(RenderError::NotOneToken(p.to_string()));
            }
        }
        Ok(out)
    }
}

/// Why a template's placeholders are where quoting can hold: each at top
/// level (not in a comment, literal, quoted identifier or dollar quote, where
/// a quoted value would be pasted as raw text), none glued to a quote, `$`,
/// `&` or name (`E{{claim:x}}` would make an escape string, `{{a}}{{b}}` one
/// identifier), and the template ends at top level or in a `--` comment.
fn check_structure(pieces: &[Piece], slot_at: &[(usize, usize)]) -> Result<(), TemplateError> {
    // The template with each placeholder as one space, and where each byte
    // came from in the source.
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
    let scan = scan(&skeleton).map_err(|e| {
        TemplateError::Scan(match e {
            ScanError::DollarAfterNumber(i) => ScanError::DollarAfterNumber(to_source(i)),
            ScanError::BackslashInString(i) => ScanError::BackslashInString(to_source(i)),
        })
    })?;
    let name_char = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '$' || !c.is_ascii();
    for (p, at, source_at, glued_to_slot) in slots {
        let context = scan.context_at(at);
        if context != Context::Code {
            return Err(TemplateError::NotTopLevel {
                placeholder: p.to_string(),
                byte: source_at,
                context,
            });
        }
        let before = skeleton.get(..at).and_then(|t| t.chars().next_back());
        let after = skeleton.get(at + 1..).and_then(|t| t.chars().next());
        let glued = before.filter(|&c| name_char(c) || matches!(c, '\'' | '"' | '&'));
        let glued = glued.or(after.filter(|&c| matches!(c, '\'' | '"' | '$')));
        if let Some(c) = glued {
            return Err(TemplateError::Glued {
                placeholder: p.to_string(),
                byte: source_at,
                neighbour: c.to_string(),
            });
        }
        if glued_to_slot {
            return Err(TemplateError::Glued {
                placeholder: p.to_string(),
                byte: source_at,
                neighbour: "another placeholder".into(),
            });
        }
    }
    if let Some(open) = scan.unterminated.filter(|s| s.context != Context::LineComment) {
        return Err(TemplateError::Unterminated {
            context: open.context,
            byte: to_source(open.start),
        });
    }
    Ok(())
}

/// The values a template may use. `None` means "not available here"
/// (configuration validation keeps such templates from being built).
#[derive(Clone, Copy)]
pub struct Vars<'a> {
    pub name: &'a str,
    /// The SCRAM verifier (never the plaintext password).
    pub password: Option<&'a str>,
    /// RFC 3339 UTC.
    pub expiry: &'a str,
    pub database: &'a str,
    pub admin: &'a str,
    pub workload: Option<&'a Workload>,
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
    #[error("{0} did not render as one quoted token at top level")]
    NotOneToken(String),
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
            let w = self
                .workload
                .ok_or_else(|| RenderError::Unavailable(p.to_string()))?;
            let v = Self::claim(w, attr).ok_or_else(|| RenderError::MissingClaim(attr.to_owned()))?;
            // A newline would end a `--` comment, and none belongs in a
            // name or a label: refuse every control character.
            match v.chars().find(|c| c.is_control()) {
                Some(c) => Err(RenderError::Quote(QuoteError::Control(format!("claim `{attr}`"), u32::from(c)))),
                None => Ok(v),
            }
        };
        Ok(match p {
            Placeholder::Name => quote_ident(self.name)?,
            Placeholder::Password => quote_literal(
                self.password
                    .ok_or_else(|| RenderError::Unavailable(p.to_string()))?,
            )?,
            Placeholder::Expiry => quote_literal(self.expiry)?,
            Placeholder::Database => quote_ident(self.database)?,
            Placeholder::Admin => quote_ident(self.admin)?,
            Placeholder::Claim(a) => quote_literal(&claim(a)?).map_err(|e| e.for_claim(a))?,
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
    #[error("{0} is {1} bytes long; PostgreSQL identifiers are at most 63")]
    TooLong(String, usize),
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
            QuoteError::Control(_, c) => QuoteError::Control(what, c),
        }
    }
}

/// `"` + value with `"` doubled + `"`. Refuses NUL, empty and over-long
/// identifiers (the server would truncate those to a different name).
pub fn quote_ident(value: &str) -> Result<String, QuoteError> {
    if value.contains('\0') {
        return Err(QuoteError::Nul("an identifier".into()));
    }
    if value.is_empty() {
        return Err(QuoteError::EmptyIdent("an identifier".into()));
    }
    if value.len() > MAX_IDENT_BYTES {
        return Err(QuoteError::TooLong("an identifier".into(), value.len()));
    }
    Ok(format!("\"{}\"", value.replace('"', "\"\"")))
}

/// `'` + value with `'` doubled + `'`. A value holding a backslash is written
/// as `E'...'` with backslashes doubled too, so its meaning does not depend on
/// `standard_conforming_strings`. Refuses NUL.
pub fn quote_literal(value: &str) -> Result<String, QuoteError> {
    if value.contains('\0') {
        return Err(QuoteError::Nul("a string".into()));
    }
    let quoted = value.replace('\'', "''");
    if value.contains('\\') {
        Ok(format!("E'{}'", quoted.replace('\\', "\\\\")))
    } else {
        Ok(format!("'{quoted}'"))
    }
}

/// Escapes `\`, `%` and `_` for a `LIKE` pattern (default escape `\`).
pub fn like_escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 4);
    for c in value.chars() {
        if matches!(c, '\\' | '%' | '_') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn workload() -> Workload {
        Workload {
            issuer: "https://ci.example".into(),
            subject: "repo:shop/api".into(),
            attributes: BTreeMap::from([
                ("repository".to_string(), "shop/api".to_string()),
                ("evil".to_string(), "x\"; DROP ROLE postgres; --'".to_string()),
                ("slash".to_string(), "a\\'b".to_string()),
            ]),
        }
    }

    fn vars(w: &Workload) -> Vars<'_> {
        Vars {
            name: "lessor_app_0123",
            password: Some("SCRAM-SHA-256$4096:c2FsdA==$a:b"),
            expiry: "2030-01-02T03:04:05Z",
            database: "app",
            admin: "lessor_admin",
            workload: Some(w),
        }
    }

    #[test]
    fn renders_every_placeholder_quoted() {
        let t = Template::parse(
            "CREATE ROLE {{name}} LOGIN PASSWORD {{password}} VALID UNTIL {{expiry}} IN ROLE {{ admin }}, {{database}}, {{claim_ident:subject}} ADMIN {{claim_ident:repository}} -- a comment without placeholders",
        )
        .unwrap();
        let w = workload();
        assert_eq!(
            t.render(&vars(&w)).unwrap(),
            "CREATE ROLE \"lessor_app_0123\" LOGIN PASSWORD 'SCRAM-SHA-256$4096:c2FsdA==$a:b' VALID UNTIL '2030-01-02T03:04:05Z' IN ROLE \"lessor_admin\", \"app\", \"repo:shop/api\" ADMIN \"shop/api\" -- a comment without placeholders"
        );
        let t = Template::parse("COMMENT ON ROLE {{name}} IS {{claim:repository}}").unwrap();
        assert_eq!(t.render(&vars(&w)).unwrap(), "COMMENT ON ROLE \"lessor_app_0123\" IS 'shop/api'");
        let t = Template::parse("SELECT ({{claim:issuer}})").unwrap();
        assert_eq!(t.render(&vars(&w)).unwrap(), "SELECT ('https://ci.example')");
    }

    #[test]
    fn single_braces_are_sql() {
        let t = Template::parse("SELECT '{}'::jsonb, '{a}'::text[], {{name}}").unwrap();
        let w = workload();
        assert_eq!(
            t.render(&vars(&w)).unwrap(),
            "SELECT '{}'::jsonb, '{a}'::text[], \"lessor_app_0123\""
        );
    }

    fn not_top_level(source: &str) -> (String, usize, Context) {
        match Template::parse(source) {
            Err(TemplateError::NotTopLevel { placeholder, byte, context }) => (placeholder, byte, context),
            other => panic!("{source}: expected NotTopLevel, got {other:?}"),
        }
    }

    #[test]
    fn placeholders_only_at_top_level() {
        // The example: before, the newline in the claim ended the
        // comment and `WITH ADMIN OPTION` ran as SQL.
        let src = "GRANT app_owner TO {{name}} -- {{claim:workflow}}";
        assert_eq!(
            not_top_level(src),
            ("{{claim:workflow}}".into(), 31, Context::LineComment)
        );
        let e = Template::parse(src).unwrap_err().to_string();
        assert!(e.contains("`{{claim:workflow}}` at byte 31 is inside a `--` comment"), "{e}");
        let cases = [
            ("GRANT app TO {{name}} /* by {{claim:subject}} */", Context::BlockComment),
            ("GRANT app TO {{name}} /* /* nested */ {{claim:subject}} */", Context::BlockComment),
            ("COMMENT ON ROLE {{name}} IS 'team {{claim_ident:team}}'", Context::String),
            ("COMMENT ON ROLE {{name}} IS E'it\\'s {{claim:team}}'", Context::String),
            ("COMMENT ON ROLE {{name}} IS U&'{{claim:team}}'", Context::String),
            ("CREATE SCHEMA \"app_{{claim:team}}\"", Context::QuotedIdent),
            ("DO $$ BEGIN PERFORM {{claim:team}}; END $$", Context::DollarQuoted),
            ("DO $body$ BEGIN RAISE NOTICE {{claim:team}}; END $body$", Context::DollarQuoted),
            ("SELECT 1 -- note\r {{name}} -- {{claim:team}}", Context::LineComment),
            // `a$b$` is one name in PostgreSQL, not a dollar quote: the
            // comment after it is real and hides the placeholder.
            ("SELECT a$b$ -- $b$ {{claim:team}}", Context::LineComment),
        ];
        for (src, context) in cases {
            assert_eq!(not_top_level(src).2, context, "{src}");
        }
        // Code after a closed comment or literal is top level again.
        for ok in [
            "GRANT app TO {{name}} /* c */ ",
            "COMMENT ON ROLE {{name}} IS {{claim:team}} -- why",
            "SELECT '--', \"/*\", $$ ' $$, {{claim:team}}",
            "SELECT 1 -- note\n, {{claim:team}}",
        ] {
            Template::parse(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
    }

    #[test]
    fn placeholders_must_not_touch_quotes_names_or_each_other() {
        for (src, neighbour) in [
            ("COMMENT ON ROLE {{name}} IS E{{claim:team}}", "E"),
            ("COMMENT ON ROLE {{name}} IS U&{{claim:team}}", "&"),
            ("COMMENT ON ROLE {{name}} IS 'a'{{claim:team}}", "'"),
            ("COMMENT ON ROLE {{name}} IS {{claim:team}}'b'", "'"),
            ("GRANT app TO x{{name}}", "x"),
            ("GRANT app TO {{name}}{{claim_ident:team}}", "another placeholder"),
            ("SELECT {{claim:team}}$$x$$", "$"),
        ] {
            match Template::parse(src) {
                Err(TemplateError::Glued { neighbour: n, .. }) => assert_eq!(n, neighbour, "{src}"),
                other => panic!("{src}: expected Glued, got {other:?}"),
            }
        }
    }

    #[test]
    fn templates_end_at_top_level() {
        for (src, context, byte) in [
            ("COMMENT ON ROLE {{name}} IS 'open", Context::String, 28),
            ("GRANT app TO {{name}} /* open", Context::BlockComment, 22),
            ("SELECT $x$ open", Context::DollarQuoted, 7),
            ("SELECT \"open", Context::QuotedIdent, 7),
        ] {
            assert_eq!(
                Template::parse(src),
                Err(TemplateError::Unterminated { context, byte }),
                "{src}"
            );
        }
        // A trailing `--` comment is fine: statements are joined on new lines.
        Template::parse("GRANT app TO {{name}} -- done").unwrap();
    }

    #[test]
    fn ambiguous_sql_is_refused() {
        assert_eq!(
            Template::parse("COMMENT ON ROLE {{name}} IS 'a\\b'"),
            Err(TemplateError::Scan(ScanError::BackslashInString(28)))
        );
        // `fooE'...'` is the name `fooE` and a standard string.
        assert!(matches!(
            Template::parse("SELECT fooE'a\\' , {{name}}"),
            Err(TemplateError::Scan(ScanError::BackslashInString(_)))
        ));
        assert_eq!(
            Template::parse("SELECT 1$$ {{claim:team}}"),
            Err(TemplateError::Scan(ScanError::DollarAfterNumber(8)))
        );
        // Byte offsets are in the template as written.
        assert_eq!(
            Template::parse("SELECT {{name}}, 1$$"),
            Err(TemplateError::Scan(ScanError::DollarAfterNumber(18)))
        );
        Template::parse("COMMENT ON ROLE {{name}} IS E'a\\\\b'").unwrap();
    }

    #[test]
    fn a_value_that_would_not_be_one_token_is_not_rendered() {
        // Built by hand: parse refuses it. Render-time scanning still does.
        let t = Template {
            source: "SELECT 'a {{claim:repository}}'".into(),
            pieces: vec![
                Piece::Text("SELECT 'a ".into()),
                Piece::Slot(Placeholder::Claim("repository".into())),
                Piece::Text("'".into()),
            ],
        };
        let w = workload();
        assert_eq!(
            t.render(&vars(&w)),
            Err(RenderError::NotOneToken("{{claim:repository}}".into()))
        );
    }

    #[test]
    fn control_characters_in_claims_are_refused_by_name() {
        let t = Template::parse("COMMENT ON ROLE {{name}} IS {{claim:workflow}}").unwrap();
        let ti = Template::parse("GRANT {{claim_ident:workflow}} TO {{name}}").unwrap();
        for (value, code) in [
            ("ci\nWITH ADMIN OPTION --", 0x0a),
            ("ci\r--", 0x0d),
            ("a\tb", 0x09),
            ("nul\0", 0x00),
            ("del\u{7f}", 0x7f),
            ("nel\u{85}", 0x85),
        ] {
            let mut w = workload();
            w.attributes.insert("workflow".into(), value.into());
            for t in [&t, &ti] {
                let e = t.render(&vars(&w)).unwrap_err();
                assert_eq!(
                    e,
                    RenderError::Quote(QuoteError::Control("claim `workflow`".into(), code)),
                    "{value:?}"
                );
                let m = e.to_string();
                assert!(m.starts_with("claim `workflow` contains the control character U+00"), "{m}");
            }
        }
        let mut w = workload();
        w.attributes.insert("workflow".into(), "ci — déploiement".into());
        assert_eq!(
            t.render(&vars(&w)).unwrap(),
            "COMMENT ON ROLE \"lessor_app_0123\" IS 'ci — déploiement'"
        );
    }

    #[test]
    fn parse_errors() {
        assert_eq!(Template::parse("GRANT {{name TO x"), Err(TemplateError::Unclosed(6)));
        assert_eq!(Template::parse("GRANT name}} TO x"), Err(TemplateError::UnopenedClose(10)));
        assert_eq!(
            Template::parse("GRANT {{nam}} TO x"),
            Err(TemplateError::Unknown("nam".into()))
        );
        assert_eq!(
            Template::parse("GRANT {{claim:}} TO x"),
            Err(TemplateError::BadClaim("claim:".into()))
        );
        assert_eq!(
            Template::parse("GRANT {{claim:a b}} TO x"),
            Err(TemplateError::BadClaim("claim:a b".into()))
        );
        assert_eq!(
            Template::parse("GRANT {{fancy:a}} TO x"),
            Err(TemplateError::Unknown("fancy:a".into()))
        );
        assert!(matches!(Template::parse("{{ {{name}}"), Err(TemplateError::Unclosed(0))));
        assert_eq!(Template::parse("  "), Err(TemplateError::Empty));
        let e = TemplateError::Unknown("nam".into()).to_string();
        assert!(e.starts_with("unknown placeholder `{{nam}}`"), "{e}");
    }

    #[test]
    fn quoting() {
        assert_eq!(quote_ident("a\"b").unwrap(), "\"a\"\"b\"");
        assert_eq!(quote_literal("it's").unwrap(), "'it''s'");
        assert_eq!(quote_literal("a\\'b").unwrap(), "E'a\\\\''b'");
        assert!(matches!(quote_ident("a\0"), Err(QuoteError::Nul(_))));
        assert!(matches!(quote_literal("a\0"), Err(QuoteError::Nul(_))));
        assert!(matches!(quote_ident(""), Err(QuoteError::EmptyIdent(_))));
        assert!(matches!(quote_ident(&"x".repeat(64)), Err(QuoteError::TooLong(_, 64))));
        assert_eq!(like_escape("a_b%c\\"), "a\\_b\\%c\\\\");
    }

    #[test]
    fn claims_render_escaped_or_fail_by_name() {
        let w = workload();
        let t = Template::parse("COMMENT ON ROLE {{name}} IS {{claim:evil}}").unwrap();
        assert_eq!(
            t.render(&vars(&w)).unwrap(),
            "COMMENT ON ROLE \"lessor_app_0123\" IS 'x\"; DROP ROLE postgres; --'''"
        );
        let t = Template::parse("CREATE SCHEMA {{claim_ident:evil}}").unwrap();
        assert_eq!(
            t.render(&vars(&w)).unwrap(),
            "CREATE SCHEMA \"x\"\"; DROP ROLE postgres; --'\""
        );
        let t = Template::parse("SELECT {{claim:missing}}").unwrap();
        assert_eq!(
            t.render(&vars(&w)),
            Err(RenderError::MissingClaim("missing".into()))
        );
        let mut long = w.clone();
        long.attributes.insert("l".into(), "y".repeat(70));
        let t = Template::parse("SELECT {{claim_ident:l}}").unwrap();
        let e = t.render(&vars(&long)).unwrap_err().to_string();
        assert!(e.contains("claim `l`") && e.contains("70 bytes"), "{e}");
    }
}
