//! The statement template engine: `{{...}}` placeholders in SQL text,
//! parsed once at load, checked to stand only where quoting holds, and
//! rendered with every value quoted and the result scanned again.
//!
//! Owns parsing (`{{name}}`-style named placeholders of the dialect, and
//! `{{claim:ATTR}}` / `{{claim_ident:ATTR}}`), the structure check (each
//! placeholder at top level, not glued to a quote or name, the template
//! ending at top level or in a line comment), claims as values (control
//! characters refused) and rendering. A [`Dialect`] brings the rest: its
//! scanner, which neighbours glue, how each placeholder is quoted and what
//! a rendered statement must scan as. Must not import: sqlx, any plugin.

use std::fmt;

use lessor_plugin::Workload;

use crate::scan::{Scan, SqlContext};

/// What a SQL dialect brings to the template engine. The dialect types are
/// unit structs in each plugin (`Postgres`, `Mysql`).
pub trait Dialect: Clone + Eq + fmt::Debug + 'static {
    /// The dialect's own placeholders (`{{name}}`, `{{password}}`, ...).
    type Named: Clone + Eq + fmt::Debug + fmt::Display;
    /// Its scanner's contexts.
    type Context: SqlContext;
    /// Text its scanner refuses rather than guess how the server reads it.
    type ScanError: Clone + Eq + fmt::Debug + fmt::Display;
    /// Anything else it refuses in a template (MySQL: changing `sql_mode`).
    type Refusal: Clone + Eq + fmt::Debug + fmt::Display;
    /// A value its quoting refuses.
    type QuoteError: Clone + Eq + fmt::Debug + fmt::Display;
    /// The values a template renders with.
    type Vars<'a>;

    /// The known placeholders, for the "unknown placeholder" message.
    const KNOWN: &'static str;
    /// What a placeholder must not touch, for the "touches" message.
    const GLUE_HINT: &'static str;
    /// What each value must render as, for [`RenderError::NotOneToken`].
    const ONE_TOKEN: &'static str;

    /// The named placeholder `{{s}}` (trimmed), if the dialect has it.
    fn named(s: &str) -> Option<Self::Named>;
    /// Scans a template with each placeholder replaced by one space, in the
    /// mode that refuses what depends on session settings.
    fn scan_template(sql: &str) -> Result<Scan<Self::Context>, Self::ScanError>;
    /// `e` with its byte offset mapped through `to_source`.
    fn relocate(e: Self::ScanError, to_source: &dyn Fn(usize) -> usize) -> Self::ScanError;
    /// Further checks of the scanned template (placeholders as spaces).
    fn check_skeleton(_skeleton: &str, _scan: &Scan<Self::Context>) -> Result<(), Self::Refusal> {
        Ok(())
    }
    /// Whether a placeholder right after `c` would be read together with it.
    fn glued_before(c: char) -> bool;
    /// Whether a placeholder right before `c` would be read together with it.
    fn glued_after(c: char) -> bool;
    /// The control-character refusal in the dialect's quote error.
    fn control(what: String, code: u32) -> Self::QuoteError;
    /// A placeholder's value, quoted.
    fn value(vars: &Self::Vars<'_>, p: &Placeholder<Self::Named>) -> Result<String, RenderError<Self>>;
    /// Checks a rendered statement; `values` are the placeholders and where
    /// their quoted values stand in `sql`.
    fn check_rendered(
        vars: &Self::Vars<'_>,
        sql: &str,
        values: &[(&Placeholder<Self::Named>, usize, usize)],
    ) -> Result<(), RenderError<Self>>;
}

/// Bytes that continue a name in both dialects (`$` and non-ASCII too).
pub fn name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '$' || !c.is_ascii()
}

/// One `{{...}}` slot of a template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placeholder<N> {
    /// One of the dialect's own placeholders.
    Named(N),
    /// `{{claim:ATTR}}`: a workload attribute as a string literal.
    Claim(String),
    /// `{{claim_ident:ATTR}}`: a workload attribute as a quoted identifier.
    ClaimIdent(String),
}

impl<N: fmt::Display> fmt::Display for Placeholder<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Placeholder::Named(n) => n.fmt(f),
            Placeholder::Claim(a) => write!(f, "{{{{claim:{a}}}}}"),
            Placeholder::ClaimIdent(a) => write!(f, "{{{{claim_ident:{a}}}}}"),
        }
    }
}

impl<N> Placeholder<N> {
    /// The claim this placeholder reads, if any.
    pub fn claim(&self) -> Option<&str> {
        match self {
            Placeholder::Claim(a) | Placeholder::ClaimIdent(a) => Some(a),
            Placeholder::Named(_) => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece<N> {
    Text(String),
    Slot(Placeholder<N>),
}

/// A parsed statement template. Its source is configuration, not a secret.
#[derive(Clone, PartialEq, Eq)]
pub struct Template<D: Dialect> {
    source: String,
    pieces: Vec<Piece<D::Named>>,
}

impl<D: Dialect> fmt::Debug for Template<D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Template({:?})", self.source)
    }
}

/// Why a template does not parse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TemplateError<D: Dialect> {
    Unclosed(usize),
    UnopenedClose(usize),
    Unknown(String),
    BadClaim(String),
    Empty,
    NotTopLevel { placeholder: String, byte: usize, context: D::Context },
    Glued { placeholder: String, byte: usize, neighbour: String },
    Unterminated { context: D::Context, byte: usize },
    Refused(D::Refusal),
    Scan(D::ScanError),
}

impl<D: Dialect> fmt::Display for TemplateError<D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TemplateError::Unclosed(b) => write!(f, "`{{{{` at byte {b} is never closed with `}}}}`"),
            TemplateError::UnopenedClose(b) => write!(f, "`}}}}` at byte {b} closes nothing"),
            TemplateError::Unknown(s) => write!(f, "unknown placeholder `{{{{{s}}}}}` (known: {})", D::KNOWN),
            TemplateError::BadClaim(s) => write!(
                f,
                "`{{{{{s}}}}}` needs an attribute name of letters, digits, `_`, `-`, `.` or `:`"
            ),
            TemplateError::Empty => f.write_str("the template is empty"),
            TemplateError::NotTopLevel { placeholder, byte, context } => write!(
                f,
                "`{placeholder}` at byte {byte} is inside {context}; placeholders must be at top level, where their quoting holds (there the value would be pasted as raw SQL)"
            ),
            TemplateError::Glued { placeholder, byte, neighbour } => write!(
                f,
                "`{placeholder}` at byte {byte} touches `{neighbour}`; put a space between a placeholder and {}",
                D::GLUE_HINT
            ),
            TemplateError::Unterminated { context, byte } => {
                write!(f, "the template ends inside {context} opened at byte {byte}")
            }
            TemplateError::Refused(r) => r.fmt(f),
            TemplateError::Scan(e) => e.fmt(f),
        }
    }
}

impl<D: Dialect> std::error::Error for TemplateError<D> {}

/// Why a template could not be rendered for a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RenderError<D: Dialect> {
    MissingClaim(String),
    Quote(D::QuoteError),
    Unavailable(String),
    NotOneToken(String),
    NotOneStatement,
}

impl<D: Dialect> fmt::Display for RenderError<D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RenderError::MissingClaim(c) => {
                write!(f, "the workload has no claim `{c}`, which the role's statements use")
            }
            RenderError::Quote(q) => q.fmt(f),
            RenderError::Unavailable(p) => write!(f, "{p} is not available in this statement"),
            RenderError::NotOneToken(p) => write!(f, "{p} did not render as {} at top level", D::ONE_TOKEN),
            RenderError::NotOneStatement => f.write_str(
                "the statement renders to more than one SQL statement; write one statement per template",
            ),
        }
    }
}

impl<D: Dialect> std::error::Error for RenderError<D> {}

fn valid_attr(a: &str) -> bool {
    !a.is_empty() && a.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':'))
}

fn parse_slot<D: Dialect>(inner: &str) -> Result<Placeholder<D::Named>, TemplateError<D>> {
    let s = inner.trim();
    if let Some(n) = D::named(s) {
        return Ok(Placeholder::Named(n));
    }
    let (kind, attr) = s.split_once(':').ok_or_else(|| TemplateError::Unknown(s.to_owned()))?;
    let attr = attr.trim();
    let make: fn(String) -> Placeholder<D::Named> = match kind.trim() {
        "claim" => Placeholder::Claim,
        "claim_ident" => Placeholder::ClaimIdent,
        _ => return Err(TemplateError::Unknown(s.to_owned())),
    };
    if !valid_attr(attr) {
        return Err(TemplateError::BadClaim(s.to_owned()));
    }
    Ok(make(attr.to_owned()))
}

/// A claim: `subject` and `issuer` are the workload's `sub` and `iss`;
/// anything else is a mapped attribute.
pub fn claim(workload: &Workload, attr: &str) -> Option<String> {
    match attr {
        "subject" => Some(workload.subject.clone()),
        "issuer" => Some(workload.issuer.clone()),
        _ => workload.attributes.get(attr).cloned(),
    }
}

/// The raw value of claim `attr` for placeholder `p`, refused when the
/// workload is not available here, lacks the claim, or the value holds a
/// control character (a newline would end a line comment, and none belongs
/// in a name or a label). The dialect quotes it.
pub fn claim_value<D: Dialect>(
    workload: Option<&Workload>,
    p: &Placeholder<D::Named>,
    attr: &str,
) -> Result<String, RenderError<D>> {
    let w = workload.ok_or_else(|| RenderError::Unavailable(p.to_string()))?;
    let v = claim(w, attr).ok_or_else(|| RenderError::MissingClaim(attr.to_owned()))?;
    match v.chars().find(|c| c.is_control()) {
        Some(c) => Err(RenderError::Quote(D::control(format!("claim `{attr}`"), u32::from(c)))),
        None => Ok(v),
    }
}

/// Pieces and where each slot stood in the source (`start..end`).
type Parsed<N> = (Vec<Piece<N>>, Vec<(usize, usize)>);

fn split<D: Dialect>(source: &str) -> Result<Parsed<D::Named>, TemplateError<D>> {
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
    Ok((pieces, slot_at))
}

impl<D: Dialect> Template<D> {
    /// Parses a template. Single braces are plain SQL (`'{}'::jsonb`); `{{`
    /// must be closed by `}}`, and `}}` must close a `{{`. Then checks that
    /// every placeholder stands where its quoting holds.
    pub fn parse(source: &str) -> Result<Template<D>, TemplateError<D>> {
        let (pieces, slot_at) = split(source)?;
        check_structure(&pieces, &slot_at)?;
        Ok(Template { source: source.to_owned(), pieces })
    }

    /// Parses without the structure check. Only for tests that show the
    /// render-time check holds on its own; configuration uses [`Self::parse`].
    #[doc(hidden)]
    pub fn parse_unchecked(source: &str) -> Result<Template<D>, TemplateError<D>> {
        let (pieces, _) = split(source)?;
        Ok(Template { source: source.to_owned(), pieces })
    }

    /// The template as written.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Every placeholder, in order (with repeats).
    pub fn placeholders(&self) -> impl Iterator<Item = &Placeholder<D::Named>> {
        self.pieces.iter().filter_map(|p| match p {
            Piece::Slot(s) => Some(s),
            Piece::Text(_) => None,
        })
    }

    /// Renders the template. Every value is quoted by the dialect; nothing
    /// is pasted raw. The dialect then scans the result again (what config
    /// validation promised; this keeps the promise if that validation has a
    /// gap).
    pub fn render(&self, vars: &D::Vars<'_>) -> Result<String, RenderError<D>> {
        let mut out = String::with_capacity(self.source.len() + 64);
        let mut values = Vec::new();
        for piece in &self.pieces {
            match piece {
                Piece::Text(t) => out.push_str(t),
                Piece::Slot(p) => {
                    let start = out.len();
                    out.push_str(&D::value(vars, p)?);
                    values.push((p, start, out.len()));
                }
            }
        }
        D::check_rendered(vars, &out, &values)?;
        Ok(out)
    }
}

/// Why a template's placeholders are where quoting can hold: each at top
/// level (not in a comment, literal or quoted identifier, where a quoted
/// value would be pasted as raw text), none glued to what the dialect says
/// it would be read together with, not two in a row, and the template ends
/// at top level or in a line comment.
fn check_structure<D: Dialect>(pieces: &[Piece<D::Named>], slot_at: &[(usize, usize)]) -> Result<(), TemplateError<D>> {
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
    let scanned = D::scan_template(&skeleton).map_err(|e| TemplateError::Scan(D::relocate(e, &to_source)))?;
    D::check_skeleton(&skeleton, &scanned).map_err(TemplateError::Refused)?;
    for (p, at, source_at, glued_to_slot) in slots {
        let context = scanned.context_at(at);
        if context != D::Context::CODE {
            return Err(TemplateError::NotTopLevel { placeholder: p.to_string(), byte: source_at, context });
        }
        let before = skeleton.get(..at).and_then(|t| t.chars().next_back());
        let after = skeleton.get(at + 1..).and_then(|t| t.chars().next());
        let glued = before.filter(|&c| D::glued_before(c)).or(after.filter(|&c| D::glued_after(c)));
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
    if let Some(open) = scanned.unterminated.filter(|s| s.context != D::Context::LINE_COMMENT) {
        return Err(TemplateError::Unterminated { context: open.context, byte: to_source(open.start) });
    }
    Ok(())
}
