//! Statement templates and SQL quoting.
//!
//! Owns the template language (`{{name}}`, `{{password}}`, `{{expiry}}`,
//! `{{database}}`, `{{admin}}`, `{{claim:ATTR}}`, `{{claim_ident:ATTR}}`) and
//! the only two ways a value enters SQL text: [`quote_ident`] and
//! [`quote_literal`]. Knows nothing of connections or roles; never sees a
//! plaintext password (`{{password}}` is the SCRAM verifier).

use std::fmt;

use lessor_plugin::Workload;

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
                    offset += consumed;
                    rest = &rest[consumed..];
                }
                (None, Some(_)) => unreachable!("handled by the guard above"),
            }
        }
        if !text.is_empty() {
            pieces.push(Piece::Text(text));
        }
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
    pub fn render(&self, vars: &Vars<'_>) -> Result<String, RenderError> {
        let mut out = String::with_capacity(self.source.len() + 64);
        for piece in &self.pieces {
            match piece {
                Piece::Text(t) => out.push_str(t),
                Piece::Slot(p) => out.push_str(&vars.value(p)?),
            }
        }
        Ok(out)
    }
}

/// Counts `;` outside string literals, quoted identifiers, dollar-quoted
/// strings and comments: the statements a piece of SQL holds, minus one.
pub fn top_level_semicolons(sql: &str) -> usize {
    let b = sql.as_bytes();
    let (mut i, mut n) = (0, 0);
    while i < b.len() {
        match b[i] {
            b';' => {
                n += 1;
                i += 1;
            }
            q @ (b'\'' | b'"') => {
                // E'..' strings allow backslash escapes.
                let escapes = q == b'\'' && i > 0 && (b[i - 1] == b'E' || b[i - 1] == b'e');
                i += 1;
                while i < b.len() {
                    if escapes && b[i] == b'\\' {
                        i += 2;
                        continue;
                    }
                    if b[i] == q {
                        if i + 1 < b.len() && b[i + 1] == q {
                            i += 2;
                            continue;
                        }
                        break;
                    }
                    i += 1;
                }
                i += 1;
            }
            b'-' if b.get(i + 1) == Some(&b'-') => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                let mut depth = 0;
                while i < b.len() {
                    if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
                        depth += 1;
                        i += 2;
                    } else if b[i] == b'*' && b.get(i + 1) == Some(&b'/') {
                        depth -= 1;
                        i += 2;
                        if depth == 0 {
                            break;
                        }
                    } else {
                        i += 1;
                    }
                }
            }
            b'$' => {
                // $tag$ ... $tag$ (tag: letters, digits, underscores; not $1).
                let rest = &sql[i + 1..];
                let tag_len = rest.find('$').filter(|&l| {
                    rest[..l].bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_')
                        && !rest[..l].starts_with(|c: char| c.is_ascii_digit())
                });
                match tag_len {
                    Some(l) => {
                        let tag = &sql[i..i + l + 2];
                        let body = i + l + 2;
                        i = sql[body..].find(tag).map(|e| body + e + tag.len()).unwrap_or(b.len());
                    }
                    None => i += 1,
                }
            }
            _ => i += 1,
        }
    }
    n
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
            Self::claim(w, attr).ok_or_else(|| RenderError::MissingClaim(attr.to_owned()))
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
}

impl QuoteError {
    fn for_claim(self, attr: &str) -> QuoteError {
        let what = format!("claim `{attr}`");
        match self {
            QuoteError::Nul(_) => QuoteError::Nul(what),
            QuoteError::EmptyIdent(_) => QuoteError::EmptyIdent(what),
            QuoteError::TooLong(_, n) => QuoteError::TooLong(what, n),
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
    fn counts_statements_outside_quotes_comments_and_dollar_quotes() {
        assert_eq!(top_level_semicolons("CREATE ROLE \"a;b\" PASSWORD 'x;''y'"), 0);
        assert_eq!(top_level_semicolons("SELECT 1; SELECT 2"), 1);
        assert_eq!(top_level_semicolons("SELECT 1 -- ; comment\n"), 0);
        assert_eq!(top_level_semicolons("SELECT /* ; /* nested ; */ */ 1"), 0);
        assert_eq!(top_level_semicolons("DO $x$ BEGIN PERFORM 1; END $x$"), 0);
        assert_eq!(top_level_semicolons("SELECT E'a\\';' ; SELECT 1"), 1);
        assert_eq!(top_level_semicolons("SELECT $1; SELECT 2"), 1);
        // A claim value cannot end its literal: quoting doubles the quote.
        let v = quote_literal("x'; DROP ROLE postgres; --").unwrap();
        assert_eq!(top_level_semicolons(&format!("COMMENT ON ROLE r IS {v}")), 0);
    }

    #[test]
    fn renders_every_placeholder_quoted() {
        let t = Template::parse(
            "CREATE ROLE {{name}} LOGIN PASSWORD {{password}} VALID UNTIL {{expiry}} IN ROLE {{ admin }} -- {{database}} {{claim:repository}} {{claim_ident:subject}} {{claim:issuer}}",
        )
        .unwrap();
        let w = workload();
        assert_eq!(
            t.render(&vars(&w)).unwrap(),
            "CREATE ROLE \"lessor_app_0123\" LOGIN PASSWORD 'SCRAM-SHA-256$4096:c2FsdA==$a:b' VALID UNTIL '2030-01-02T03:04:05Z' IN ROLE \"lessor_admin\" -- \"app\" 'shop/api' \"repo:shop/api\" 'https://ci.example'"
        );
    }

    #[test]
    fn single_braces_are_sql() {
        let t = Template::parse("SELECT '{}'::jsonb, '{a}'::text[] -- {{name}}").unwrap();
        let w = workload();
        assert_eq!(
            t.render(&vars(&w)).unwrap(),
            "SELECT '{}'::jsonb, '{a}'::text[] -- \"lessor_app_0123\""
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
