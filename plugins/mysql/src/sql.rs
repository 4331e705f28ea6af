//! The MySQL / MariaDB dialect of the shared statement templates
//! (`lessor_plugin_sql::template`) and MySQL quoting.
//!
//! Owns MySQL's placeholders (`{{name}}`, `{{user}}`, `{{host}}`; the
//! claims are the engine's), what may touch a placeholder, the scanner the
//! engine uses ([`crate::scan`]), `sql_mode` refused in templates, and the
//! only ways a value enters SQL text: [`quote_ident`] (backticks),
//! [`quote_literal`] (for the session's `NO_BACKSLASH_ESCAPES` setting) and
//! [`account`]. Knows nothing of connections or roles; never sees a
//! password. Must not import: sqlx.
//!
//! Values are Rust strings (valid UTF-8) and the admin sessions speak
//! utf8mb4, so no multi-byte sequence can swallow a quote's escape.

use std::fmt;

use lessor_plugin::Workload;
use lessor_plugin_sql::template::{claim_value, name_char};
use lessor_plugin_sql::Dialect;

pub use crate::scan::{scan, top_level_semicolons, Backslash, Context, Scan, ScanError};

/// MySQL's identifier limit (characters).
pub const MAX_IDENT_CHARS: usize = 64;

/// MySQL's own placeholders (besides `{{claim:ATTR}}` and
/// `{{claim_ident:ATTR}}`, which every dialect has).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Named {
    /// `{{name}}`: the lease's account, `'user'@'host'`.
    Name,
    /// `{{user}}`: the user name as a string literal.
    User,
    /// `{{host}}`: the host pattern as a string literal.
    Host,
}

impl fmt::Display for Named {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Named::Name => "{{name}}",
            Named::User => "{{user}}",
            Named::Host => "{{host}}",
        })
    }
}

/// One `{{...}}` slot of a template.
pub type Placeholder = lessor_plugin_sql::Placeholder<Named>;
/// A parsed statement template (see [`lessor_plugin_sql::Template`]).
pub type Template = lessor_plugin_sql::Template<Mysql>;
/// Why a template does not parse.
pub type TemplateError = lessor_plugin_sql::TemplateError<Mysql>;
/// Why a template could not be rendered for a request.
pub type RenderError = lessor_plugin_sql::RenderError<Mysql>;

/// What the MySQL dialect refuses in a template besides what its scanner
/// does.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("the template changes `sql_mode`, which decides how values are quoted; set it on the server instead")]
    SqlMode,
}

/// The MySQL / MariaDB dialect of the shared template engine: its scanner
/// (templates scanned with [`Backslash::Refuse`], rendered statements in
/// the session's mode), quoting and placeholders.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mysql;

impl Dialect for Mysql {
    type Named = Named;
    type Context = Context;
    type ScanError = ScanError;
    type Refusal = Refusal;
    type QuoteError = QuoteError;
    type Vars<'a> = Vars<'a>;

    const KNOWN: &'static str = "{{name}}, {{user}}, {{host}}, {{claim:ATTR}}, {{claim_ident:ATTR}}";
    const GLUE_HINT: &'static str = "a quote, `@`, a name or another placeholder";
    const ONE_TOKEN: &'static str = "quoted tokens";

    fn named(s: &str) -> Option<Named> {
        Some(match s {
            "name" => Named::Name,
            "user" => Named::User,
            "host" => Named::Host,
            _ => return None,
        })
    }

    /// A backslash in a literal is refused (its meaning depends on the
    /// session), and so are executable comments.
    fn scan_template(sql: &str) -> Result<Scan, ScanError> {
        scan(sql, Backslash::Refuse)
    }

    fn relocate(e: ScanError, to_source: &dyn Fn(usize) -> usize) -> ScanError {
        match e {
            ScanError::BackslashInString(i) => ScanError::BackslashInString(to_source(i)),
            ScanError::ExecutableComment(i) => ScanError::ExecutableComment(to_source(i)),
        }
    }

    /// `sql_mode` at top level would change how the values are quoted.
    fn check_skeleton(skeleton: &str, scanned: &Scan) -> Result<(), Refusal> {
        let code: String = skeleton
            .char_indices()
            .map(|(i, c)| if scanned.context_at(i) == Context::Code { c.to_ascii_lowercase() } else { ' ' })
            .collect();
        if code.contains("sql_mode") {
            return Err(Refusal::SqlMode);
        }
        Ok(())
    }

    /// `_utf8mb4{{claim:x}}` would be an introducer, `{{user}}@{{host}}` an
    /// account, a name or quote next to a value one token with it.
    fn glued_before(c: char) -> bool {
        name_char(c) || matches!(c, '\'' | '"' | '`' | '@')
    }

    fn glued_after(c: char) -> bool {
        name_char(c) || matches!(c, '\'' | '"' | '`' | '@')
    }

    fn control(what: String, code: u32) -> QuoteError {
        QuoteError::Control(what, code)
    }

    fn value(vars: &Vars<'_>, p: &Placeholder) -> Result<String, RenderError> {
        let claim = |attr: &str| claim_value(vars.workload, p, attr);
        match p {
            Placeholder::Named(Named::Name) => account(vars.user, vars.host, vars.backslash),
            Placeholder::Named(Named::User) => quote_literal(vars.user, vars.backslash),
            Placeholder::Named(Named::Host) => quote_literal(vars.host, vars.backslash),
            Placeholder::Claim(a) => quote_literal(&claim(a)?, vars.backslash).map_err(|e| e.for_claim(a)),
            Placeholder::ClaimIdent(a) => quote_ident(&claim(a)?).map_err(|e| e.for_claim(a)),
        }
        .map_err(RenderError::Quote)
    }

    /// Scanned again in the session's backslash mode: each value must be
    /// exactly the tokens it was quoted as, at top level, and the statement
    /// one statement.
    fn check_rendered(vars: &Vars<'_>, sql: &str, values: &[(&Placeholder, usize, usize)]) -> Result<(), RenderError> {
        let scanned = scan(sql, vars.backslash).ok();
        for &(p, start, end) in values {
            let ok = scanned.as_ref().is_some_and(|s| match p {
                // 'user'@'host': two literals around an `@`.
                Placeholder::Named(Named::Name) => {
                    let text = &sql[start..end];
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
        if scanned.is_none_or(|s| s.top_level_semicolons(sql) > 0) {
            return Err(RenderError::NotOneStatement);
        }
        Ok(())
    }
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
        assert!(matches!(Template::parse("SET SESSION sql_mode = 'NO_BACKSLASH_ESCAPES'"), Err(TemplateError::Refused(Refusal::SqlMode))));
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
