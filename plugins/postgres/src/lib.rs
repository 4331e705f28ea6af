//! `lessor-postgres`: just-in-time PostgreSQL roles that can never be
//! orphaned.
//!
//! Each lease gets its own login role, created when the lease is issued and
//! dropped when it ends. The role's name ends with the lease id, so a role
//! created just before a crash (no handle recorded) is still found and
//! dropped by the lease id alone. Its password is 256 random bits that reach
//! PostgreSQL only as a SCRAM-SHA-256 verifier ([`scram`]), and its
//! `VALID UNTIL` is the lease's expiry, so the password stops working on time
//! even while lessor is down.
//!
//! # Configuration
//! Connection:
//! - `dsn_file` (a file holding the admin DSN, e.g.
//!   `postgres://lessor_admin:pw@db:5432/app`) or `dsn_env` (an environment
//!   variable holding it): at most one. The DSN is held only in a
//!   `SecretString`; messages show `host:port/db` and the user, never the
//!   password. The admin role needs CREATEROLE (a superuser works, with a
//!   warning from `validate`). With neither, the root credential is
//!   *managed* (see below).
//! - `pool_size` (default 4), `connect_timeout` (humantime, default `"5s"`;
//!   bounds getting a connection).
//! - `tls`: `"disable"`, `"prefer"`, `"require"` or `"verify-full"`; when
//!   set it overrides the DSN's `sslmode` (unset: the DSN's, else `prefer`).
//! - `role_prefix` (default `"lessor"`; `a-z0-9_`, at most 16 bytes).
//! - `owned_objects`: `"reassign"` (default: what the role created goes to
//!   the admin role) or `"fail"` (revocation is refused, retryably, while the
//!   role owns anything).
//!
//! Role (`RoleSpec::config`):
//! - `database`: default the DSN's. Statements run there; the issued DSN names it.
//! - `creation`: statement templates, default
//!   `CREATE ROLE {{name}} LOGIN PASSWORD {{password}} VALID UNTIL {{expiry}}`.
//!   They must leave the role with `VALID UNTIL` no later than the lease's
//!   expiry (checked).
//! - `grants`: scope -> templates, run after creation for each granted
//!   scope. Every scope of the role needs an entry. Prefer granting a group
//!   role (`GRANT orders_reader TO {{name}}`) over object privileges: every
//!   direct grant adds an entry to the object's ACL, which PostgreSQL keeps
//!   in one catalog row and refuses past ~8 KB (a few hundred live leases).
//! - `revocation`: templates replacing the default drop sequence (they
//!   should end with `DROP ROLE {{name}}`; a role left behind is an error).
//! - `renewal`: default `ALTER ROLE {{name}} VALID UNTIL {{expiry}}`.
//!
//! Templates hold one statement each and use `{{name}}`, `{{database}}`,
//! `{{admin}}` (quoted identifiers), `{{password}}` (the verifier; creation
//! only), `{{expiry}}` (RFC 3339 UTC string literal), `{{claim:ATTR}}` and
//! `{{claim_ident:ATTR}}` (a workload attribute, or `subject` / `issuer`, as
//! an escaped literal or a quoted identifier; creation and grants only). See
//! [`sql`].
//!
//! # Lifecycle
//! - **issue**: one transaction runs the creation and the granted scopes'
//!   grant statements: the role exists with all its grants, or not at all.
//!   Name: `<prefix>_<readable>_<lease hex>` (at most 63 bytes; see
//!   [`role_name`]). Handle: `{"role": name}`. Public: `username`,
//!   `database`, `host`, `port`, `expires_at`; secret: `password`, `dsn`.
//! - **renew**: runs the renewal templates with the new expiry.
//! - **revoke** (idempotent): finds the role by handle or by the lease-id
//!   suffix; commits `NOLOGIN` (a non-superuser admin also makes itself a
//!   member, which ending sessions and `REASSIGN OWNED` require), terminates
//!   the role's sessions, then in one transaction `REASSIGN OWNED BY` it to
//!   the admin, `DROP OWNED BY` and `DROP ROLE` (or the custom revocation),
//!   and ends any session that slipped in meanwhile. A role that is gone
//!   counts as revoked.
//!
//! # Root credentials
//! The admin DSN is the connection's root credential
//! ([`lessor_plugin::RootCredentials`], returned by `Plugin::root_credentials`). The core may manage it in
//! versions:
//! - **validate_root** checks a candidate DSN on its own short-lived
//!   connections (no installed pool is touched, nothing is written): login,
//!   `current_user` (the identity), `current_database()`, server version,
//!   CREATEROLE or superuser, and the roles' own databases. Refusals are
//!   precise and never hold the DSN: "password rejected for user `x` at
//!   host:port", "database `x` does not exist at host:port", "role `x`
//!   lacks CREATEROLE (needed to create lease roles)"; an unreachable server
//!   is retryable; a malformed DSN is an invalid request.
//! - **install_root** keeps one set of lazy pools per version. The active one
//!   serves new issuance, swapped atomically (an issue finishes with the
//!   root it started with); the others stay until `remove_root` so their
//!   leases are renewed and revoked with the admin that created them.
//!   `Issued::root_version` is the version used.
//! - A DSN from `dsn_file` / `dsn_env` is an unversioned active root:
//!   leases issued with it have `root_version: None`, and installing an
//!   active managed version replaces it.
//! - Renew and revoke use the lease's version while it is installed, else
//!   the active one; also the active one when the lease's version no longer
//!   logs in (its password was rotated away). Without any active root,
//!   issue, renew, revoke, validate and rotate fail retryably: "connection
//!   `pg` has no active root credential: set one with `lessor connection
//!   set-secret pg`".
//! - **rotate_root** sets a new 256-bit random password on the admin role
//!   (`ALTER ROLE ... PASSWORD` with a SCRAM verifier computed here) and
//!   returns the DSN with it. The old password stops working at once, so the
//!   core activates the new version straight away.
//!
//! Unreachable servers give [`lessor_plugin::PluginError::Retryable`]
//! ("cannot reach PostgreSQL at host:port/db: ..."); refusals give
//! `Permanent` with PostgreSQL's message (never a statement's text).
//! Statement logging is off on the admin connections.

pub mod config;
mod plugin;
pub mod scan;
pub mod scram;
pub mod sql;

#[cfg(feature = "testkit")]
pub mod testkit;

pub use config::{ConnectionConfig, DsnSource, OwnedObjects, RoleConfig, Tls};
pub use plugin::{
    build, lease_hex, registration, role_name, validate_config, PostgresPlugin, KIND, LEASE_HEX_LEN, MAX_NAME_BYTES,
    MIN_LEASE_HEX_LEN,
};
