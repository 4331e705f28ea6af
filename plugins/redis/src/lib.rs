//! `lessor-redis`: just-in-time Redis / Valkey ACL users, on every node.
//!
//! Each lease gets its own ACL user, made with one
//! `ACL SETUSER <name> reset on #<sha256 of the password> <rules>` per node
//! and deleted when the lease ends. The name ends with the lease id, so a
//! user made just before a crash is still found and deleted by the lease id
//! alone. The password is 256 random bits that reach Redis only as their
//! SHA-256 (`#...`): `MONITOR`, the slowlog and `ACL LOG` never show it.
//!
//! # Configuration
//! Connection:
//! - `nodes` (required): every node of the deployment, `redis://host:port`
//!   or `rediss://host:port` (TLS), primaries and replicas alike. ACL users
//!   exist only on the node they were made on (replication and cluster
//!   gossip do not carry them), so issue and revoke reach every node.
//! - `username` (default `default`): the admin ACL user lessor
//!   authenticates as; `password_file` or `password_env` holds its
//!   password (at most one; with neither the core manages it, see below).
//! - `tls_ca_file`: PEM roots for `rediss://` nodes (default: the system's).
//! - `timeout` (humantime, default `"5s"`): bounds each connect and command.
//! - `user_prefix` (default `"lessor"`; `a-z0-9_`, at most 16 bytes).
//! - `acl_save`: `"auto"` (default: `ACL SAVE` after each change on nodes
//!   whose `CONFIG GET aclfile` names a file), `"always"` or `"never"`.
//!
//! Role (`RoleSpec::config`): `scopes`: scope -> ACL rules, a list or one
//! space-separated string, e.g. `"cache.read" = "~cache:* +@read"`. Only
//! key (`~p`, `%R~p`, `%W~p`, `%RW~p`, `allkeys`), channel (`&p`,
//! `allchannels`) and command rules (`+cmd`, `-cmd`, `+cmd|sub`, `+@cat`,
//! `-@cat`, `allcommands`, `nocommands`) are accepted; every scope of the
//! role needs an entry ([`acl::check_rule`]).
//!
//! # Lifecycle
//! - **issue**: on every node at once, `ACL SETUSER` then `ACL SAVE` where
//!   configured. If any node fails, the user is deleted again on all of
//!   them and the error is retryable when a node was unreachable. Name:
//!   `<prefix>_<readable>_<lease hex>` ([`acl::user_name`]). Handle:
//!   `{"user": name}`. Public: `username`, `host`, `port`, `tls` (the first
//!   node), `nodes`, `expires_at`; secret: `password`, `url`.
//! - **renew**: ACL users have no expiry at the vendor; renewing checks the
//!   user exists on every node. The credential ends when lessor revokes it
//!   at the lease's end: while lessor is down past that, it keeps working.
//! - **revoke** (idempotent): on every node, finds the user (handle, else
//!   `ACL USERS` filtered by prefix and lease hex), `ACL DELUSER` (which
//!   disconnects its clients), `CLIENT KILL USER`, `ACL SAVE` where
//!   configured. "No such user" counts as done; the revocation is done only
//!   when every node confirmed, else retryable with the nodes that failed.
//!
//! - **list_objects** (for the core's reconciler): users named like a
//!   lease of this connection on any node, mapped back to their lease id,
//!   in name order; never the admin user. Every node must answer.
//!
//! # Root credentials
//! The admin password is the connection's root credential; the core may
//! manage it in versions. **validate_root** authenticates on every node and
//! checks `ACL WHOAMI` (the same user everywhere), `INFO server` (the
//! version) and, with `ACL DRYRUN`, that the user may run `ACL SETUSER`,
//! `ACL DELUSER`, `ACL USERS`, `CLIENT KILL` (and `ACL SAVE` where used).
//! **rotate_root** adds a new random password (as its hash) to the admin
//! user on every node, then removes the old one: the old one stops working.
//! The password is the same on every node; per-node admin passwords are not
//! supported.

pub mod acl;
pub mod config;
pub mod nodes;
mod plugin;

#[cfg(feature = "testkit")]
pub mod testkit;

pub use config::{AclSave, ConnectionConfig, NodeUrl, RoleConfig};
pub use plugin::{build, registration, validate_config, RedisPlugin, KIND};
