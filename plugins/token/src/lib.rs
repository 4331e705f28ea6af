//! `lessor-token`: short-lived access tokens (JWTs) signed by lessor, with
//! scopes, for internal services.
//!
//! A workload is issued a JWT with the scopes it was granted (`orders.read`);
//! a resource server verifies it against lessor's JWKS
//! (`/.well-known/jwks.json`, which the core serves from
//! `document(None, "jwks")`) and may ask RFC 7662 introspection
//! ([`lessor_plugin::Plugin::introspect`]), which reports a revoked token as
//! `active: false` at once.
//!
//! # Configuration
//! Connection (`Null`/`{}` for the defaults):
//! - `algorithm`: `"ES256"` (default) or `"EdDSA"`, for keys created from now on.
//! - `rotate_every`: humantime duration, default `"24h"`.
//! - `issuer`: the tokens' `iss`, default the core's public URL.
//!
//! Role:
//! - `audience`: the tokens' `aud`, default `lessor:<connection>/<role>`.
//! - `extra_claims`: a table of static string claims (may not override the
//!   claims below).
//!
//! # Tokens
//! Claims: `iss`, `sub` (the workload's subject), `aud`, `iat`, `nbf` (= `iat`),
//! `exp` (the lease's `expires_at`), `jti` (the lease id), `scope`
//! (space-separated), `lessor_role` (`<connection>/<role>`) and the role's
//! extra claims. The header carries `kid` and `alg`. Tokens cannot be renewed;
//! revoking marks the `jti` revoked for introspection (a resource server that
//! only checks signatures accepts the token until `exp`).
//!
//! # Keys
//! Signing keys live in the connection's state, shared by all replicas (see
//! [`keys`] for the layout). The newest key signs; when it is older than
//! `rotate_every` a new one is created. An old key stays in the JWKS until the
//! longest role `max_ttl` (plus [`keys::JWKS_GRACE`]) has passed since its
//! successor was created, that is until every token it signed has expired.
//! Introspection still recognises retired keys (their tokens are inactive).

pub mod config;
pub mod keys;
mod plugin;

pub use config::{Algorithm, ConnectionConfig, RoleConfig};
pub use keys::{Clock, Jwk};
pub use plugin::{build, registration, validate_config, TokenPlugin, KIND};
