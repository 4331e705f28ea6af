//! `lessor-external`: a plugin that is any executable.
//!
//! lessor starts the program named by the connection's `command`, speaks
//! JSON-RPC 2.0 to it over its stdin/stdout (one message per line, protocol
//! version [`PROTOCOL_VERSION`], specified in `plugins/PROTOCOL.md`),
//! forwards its stderr to the log at DEBUG, and supervises it: every call
//! has a timeout, a process that exits is restarted with exponential
//! backoff (calls meanwhile fail `Retryable`), each start is checked with
//! the handshake and a `validate` health call, and shutdown sends
//! `shutdown`, then kills after a grace period.
//!
//! # Configuration
//! `[connections.x] plugin = "external"`, and in `[connections.x.config]`:
//! - `command` (required): program and arguments, e.g.
//!   `["python3", "examples/plugins/sqlite-accounts/plugin.py"]`.
//! - `env`: extra environment variables. The plugin gets only these and
//!   `PATH`, `HOME`, `LANG`, `LC_ALL`, `TZ`, `TMPDIR` from lessor's own.
//! - `call_timeout` (default: the core's `leases.call_timeout`, from
//!   `PluginContext`; when set, the shorter of the two wins, since the core
//!   cancels a call past its own anyway), `start_timeout` (spawn, handshake
//!   and first `validate`, default `"10s"`), `shutdown_grace` (default
//!   `"5s"`): 100ms to 10m.
//! - `config`: a table handed to the plugin unchanged in `initialize`.
//!
//! Role tables (`[connections.x.roles.r.config]`) are handed over unchanged
//! too, with each role's name, scopes and max TTL.
//!
//! Must not import: the core (store, http, policy).

mod config;
mod plugin;
mod protocol;
mod session;

pub use config::ExternalConfig;
pub use plugin::{build, registration, ExternalPlugin, MAX_BACKOFF, MIN_BACKOFF};
pub use protocol::{code, Handshake, MAX_LINE_BYTES, PROTOCOL_VERSION};
