//! `lessor-mysql`: just-in-time MySQL 8 and MariaDB 10.11+ users that can
//! never be orphaned.
//!
//! Each lease gets its own account, created when the lease is issued and
//! dropped when it ends. The user name ends with the lease id, so an account
//! created just before a crash (no handle recorded) is still found and
//! dropped by the lease id alone.
//!
//! # Configuration
//! Connection:
//! - `dsn_file` (a file holding the admin DSN, e.g.
//!   `mysql://lessor_admin:pw@db:3306/`) or `dsn_env` (an environment
//!   variable holding it): at most one; with neither, the root credential is
//!   *managed* by the core (`lessor connection set-secret`). `mariadb://` is
//!   accepted too. TLS comes from the DSN (`?ssl-mode=verify_identity`).
//!   The admin account needs CREATE USER and GRANT OPTION (and the roles it
//!   grants WITH ADMIN OPTION, or ROLE_ADMIN on MySQL), PROCESS and
//!   CONNECTION ADMIN (or SUPER) to end sessions, and SELECT on `mysql.user`.
//!   On MariaDB, setting another account's default role takes UPDATE on the
//!   `mysql` database; without it the new account logs in and sets its own
//!   (its host pattern must then admit lessor).
//! - `pool_size` (default 4), `connect_timeout` (default `"5s"`).
//! - `user_prefix` (default `"lessor"`; `a-z0-9_`, at most 8 bytes).
//!
//! Role (`RoleSpec::config`):
//! - `host`: the host part of the accounts (`'user'@'host'`), default `%`.
//! - `roles`: scope -> server roles (made with `CREATE ROLE` beforehand)
//!   granted to the account and set as its default roles. MariaDB gives an
//!   account one default role: there, the scopes of one request must map to
//!   one server role.
//! - `grants`: scope -> statement templates, run after the roles are
//!   granted (e.g. `GRANT SELECT ON shop.orders TO {{name}}`).
//! - `database`: named in the issued DSN (optional).
//!
//! Templates hold one statement each and use `{{name}}` (the account,
//! `'user'@'host'`), `{{user}}`, `{{host}}` (string literals),
//! `{{claim:ATTR}}` (a literal) and `{{claim_ident:ATTR}}` (a backtick
//! identifier). Placeholders stand only at top level; literals are escaped
//! for the session's `NO_BACKSLASH_ESCAPES` setting. A pool learns that
//! setting (and the server's flavour) from its first connection; a later
//! connection opened after the server's default changed is set back to the
//! pool's mode at connect, so no operation needs to ask. See [`sql`].
//!
//! # Lifecycle
//! - **issue**: `CREATE USER` with a 256-bit random password (on MariaDB as
//!   its `mysql_native_password` hash, `IDENTIFIED BY PASSWORD '*...'`; on
//!   MySQL 8 as its `caching_sha2_password` string, `IDENTIFIED WITH
//!   caching_sha2_password AS '$A$005$...'` ([`sha2_auth`]): the password is
//!   in no statement), `GRANT` the scopes' roles, `SET DEFAULT
//!   ROLE`, then the grant templates. Neither server has transactional
//!   account statements (each commits at once), so a failure part way drops
//!   the account again. Name: MariaDB `<prefix>_<readable>_<lease hex>`
//!   (at most 80 characters); MySQL `<prefix>_<the lease id's 128 bits in
//!   22 base-62 digits>` (at most 31 of its 32). Either way the whole lease
//!   id, so a listed name maps back to its lease. Handle:
//!   `{"user", "host"}`; public: `username`, `host`, `port`, `account_host`,
//!   `roles`, `database`, `expires_at`; secret: `password`, `dsn`.
//! - **renew**: nothing changes at the server (checks the account exists).
//! - **revoke** (idempotent): per account `ALTER USER ... ACCOUNT LOCK`,
//!   its sessions ended (MariaDB: `KILL CONNECTION USER`; MySQL: `KILL
//!   CONNECTION` of each one listed), `DROP USER IF EXISTS`, and
//!   kills any session that slipped in. The handle's account is locked
//!   straight away (no lookup: the lock says whether it exists); when there
//!   is no handle or its account is gone, every account with the lease's
//!   names in `mysql.user` (MariaDB: the prefix and the lease's hex suffix;
//!   MySQL: the one name). An account that is gone counts as revoked.
//!
//! # Password expiry
//! Neither MySQL nor MariaDB can end a password at an instant: `PASSWORD
//! EXPIRE INTERVAL` counts whole days, and an expired password still logs in
//! (in sandbox mode, which lets the user set a new one). So the plugin sets
//! no expiry at the server: the account ends when lessor revokes it at the
//! lease's expiry. While lessor is down, accounts outlive their leases until
//! it is back (the expiry jobs are durable; nothing is orphaned).
//!
//! # Listing (the reconciler)
//! `list_objects` lists the users in lessor's shape, each mapped back to its
//! lease id `lse_<hex>`, in byte order of their names, never the admin's
//! own user: on MariaDB `<prefix>_<readable>_<32 hex>` (never a server
//! role), on MySQL `<prefix>_<22 base-62 digits>` (MySQL marks no account
//! as a role, so a role in that shape is listed too; a name whose digits
//! exceed 128 bits is listed with no lease id, which the reconciler
//! reports and never revokes).
//!
//! # Tested on
//! MariaDB 10.11 (Debian 12's package) and MySQL 8.0 (Ubuntu 22.04's
//! package), the same tests on each.
//!
//! # Root credentials
//! The admin DSN is the connection's root credential
//! ([`lessor_plugin::RootCredentials`], returned by
//! `Plugin::root_credentials`). As for PostgreSQL: **validate_root** checks a candidate DSN on its own
//! connection (`CURRENT_USER()`, `@@version`, CREATE USER and GRANT OPTION
//! present); **install_root** keeps a lazy pool per version; **rotate_root**
//! runs `ALTER USER <current user> IDENTIFIED BY ...` with a new 256-bit
//! password and returns the DSN with it (the old one stops working at once).

pub mod config;
pub mod naming;
mod plugin;
pub mod scan;
pub mod sha2_auth;
pub mod sql;

#[cfg(feature = "testkit")]
pub mod testkit;

pub use config::{ConnectionConfig, DsnSource, RoleConfig};
pub use naming::{lease_hex, lease_suffix, mysql_lease_of, mysql_user, user_name, Flavor};
pub use plugin::{build, registration, validate_config, MysqlPlugin, KIND};
