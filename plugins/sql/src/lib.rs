//! What the SQL-server plugins (`lessor-postgres`, `lessor-mysql`) share:
//! the statement template engine ([`template`], parameterized by a
//! [`template::Dialect`] that brings its own scanner, quoting and
//! placeholders), the spans a dialect's scanner reports ([`scan`]),
//! lease-id naming ([`naming`]), and the bookkeeping around admin DSNs and
//! root-credential versions ([`root`], [`config`]).
//!
//! Knows no SQL dialect: every quoting rule, lexer and statement stays in
//! its plugin. Must not import: sqlx, the core (`lessor`), any plugin.
//! Not part of the plugin contract (`lessor-plugin` is); a helper library
//! that only SQL-vendor plugins depend on.

pub mod config;
pub mod issue;
pub mod naming;
pub mod root;
pub mod scan;
pub mod template;

pub use scan::{Scan, Span, SqlContext};
pub use template::{Dialect, Placeholder, RenderError, Template, TemplateError};
