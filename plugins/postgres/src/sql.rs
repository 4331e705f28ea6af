//! The PostgreSQL dialect of the shared statement templates
//! (`lessor_plugin_sql::template`) and SQL quoting.
//!
//! Owns PostgreSQL's placeholders (`{{name}}`, `{{password}}`, `{{expiry}}`,
//! `{{database}}`, `{{admin}}`; `{{claim:ATTR}}` and `{{claim_ident:ATTR}}`
//! are the engine's), what may touch a placeholder, the scanner the engine
//! uses ([`crate::scan`]), and the only two ways a value enters SQL text:
//! [`quote_ident`] and [`quote_literal`]. Knows nothing of connections or
//! roles; never sees a plaintext password (`{{password}}` is the SCRAM
//! verifier). Must not import: sqlx.

use std::fmt;

use lessor_plugin::Workload;
use lessor_plugin_sql::template::{claim_value, name_char};
use lessor_plugin_sql::Dialect;

pub use crate::scan::{scan, top_level_semicolons, Context, Scan, ScanError, Span};

/// PostgreSQL's identifier limit (`NAMEDATALEN - 1`); longer ones are
/// silently truncated by the server, so we refuse them.
pub const MAX_IDENT_BYTES: usize = 63;

/// PostgreSQL's own placeholders (besides `{{claim:ATTR}}` and
/// `{{claim_ident:ATTR}}`, which every dialect has).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Named {
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
}

impl fmt::Display for Named {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Named::Name => "{{name}}",
            Named::Password => "{{password}}",
            Named::Expiry => "{{expiry}}",
            Named::Database => "{{database}}",
            Named::Admin => "{{admin}}",
        })
    }
}

/// One `{{...}}` slot of a template.
pub type Placeholder = lessor_plugin_sql::Placeholder<Named>;
/// A parsed statement template (see [`lessor_plugin_sql::Template`]).
pub type Template = lessor_plugin_sql::Template<Postgres>;
/// Why a template does not parse.
pub type TemplateError = lessor_plugin_sql::TemplateError<Postgres>;
/// Why a template could not be rendered for a request.
pub type RenderError = lessor_plugin_sql::RenderError<Postgres>;

/// The PostgreSQL dialect of the shared template engine: its scanner,
/// quoting and placeholders.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Postgres;

impl Dialect for Postgres {
    type Named = Named;
    type Context = Context;
    type ScanError = ScanError;
    type Refusal = std::convert::Infallible;
    type QuoteError = QuoteError;
    type Vars<'a> = Vars<'a>;

    const KNOWN: &'static str =
        "{{name}}, {{password}}, {{expiry}}, {{database}}, {{admin}}, {{claim:ATTR}}, {{claim_ident:ATTR}}";
    const GLUE_HINT: &'static str = "a quote, `$`, `&`, a name or another placeholder";
    const ONE_TOKEN: &'static str = "one quoted token";

    fn named(s: &str) -> Option<Named> {
        Some(match s {
            "name" => Named::Name,
            "password" => Named::Password,
            "expiry" => Named::Expiry,
            "database" => Named::Database,
            "admin" => Named::Admin,
            _ => return None,
        })
    }

    fn scan_template(sql: &str) -> Result<Scan, ScanError> {
        scan(sql)
    }

    fn relocate(e: ScanError, to_source: &dyn Fn(usize) -> usize) -> ScanError {
        match e {
            ScanError::DollarAfterNumber(i) => ScanError::DollarAfterNumber(to_source(i)),
            ScanError::BackslashInString(i) => ScanError::BackslashInString(to_source(i)),
        }
    }

    /// `E{{claim:x}}` would make an escape string, `U&{{...}}` a Unicode
    /// one, `a{{name}}` one name; `{{x}}$$` a dollar quote.
    fn glued_before(c: char) -> bool {
        name_char(c) || matches!(c, '\'' | '"' | '&')
    }

    fn glued_after(c: char) -> bool {
        matches!(c, '\'' | '"' | '$')
    }

    fn control(what: String, code: u32) -> QuoteError {
        QuoteError::Control(what, code)
    }

    fn value(vars: &Vars<'_>, p: &Placeholder) -> Result<String, RenderError> {
        let claim = |attr: &str| claim_value(vars.workload, p, attr);
        match p {
            Placeholder::Named(Named::Name) => quote_ident(vars.name),
            Placeholder::Named(Named::Password) => {
                quote_literal(vars.password.ok_or_else(|| RenderError::Unavailable(p.to_string()))?)
            }
            Placeholder::Named(Named::Expiry) => quote_literal(vars.expiry),
            Placeholder::Named(Named::Database) => quote_ident(vars.database),
            Placeholder::Named(Named::Admin) => quote_ident(vars.admin),
            Placeholder::Claim(a) => quote_literal(&claim(a)?).map_err(|e| e.for_claim(a)),
            Placeholder::ClaimIdent(a) => quote_ident(&claim(a)?).map_err(|e| e.for_claim(a)),
        }
        .map_err(RenderError::Quote)
    }

    /// Each value must be exactly one string literal or quoted identifier,
    /// at top level.
    fn check_rendered(_: &Vars<'_>, sql: &str, values: &[(&Placeholder, usize, usize)]) -> Result<(), RenderError> {
        let scan = scan(sql).ok();
        for &(p, start, end) in values {
            if !scan.as_ref().is_some_and(|s| s.is_one_token(start, end)) {
                return Err(RenderError::NotOneToken(p.to_string()));
            }
        }
        Ok(())
    }
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
        // Parse refuses it; render-time scanning still does on its own.
        assert!(Template::parse("SELECT 'a {{claim:repository}}'").is_err());
        let t = Template::parse_unchecked("SELECT 'a {{claim:repository}}'").unwrap();
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
