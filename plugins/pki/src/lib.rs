//! `lessor-pki`: short-lived X.509 certificates for workloads.
//!
//! Each role of a `pki` connection has its own CA: generated on first start
//! and kept in the connection's state (key encrypted at rest by the core), or
//! loaded from PEM files. A workload gets a certificate whose names come from
//! the role's `allowed_names` templates, filled from its token's claims; it
//! either lets lessor generate the key pair (the private key is returned once)
//! or sends a CSR.
//!
//! - Serial numbers derive from the lease id, so a lease left pending by a
//!   crash can be revoked from its id alone.
//! - Revoke before the certificate's `notAfter` puts the serial on the
//!   role's CRL (kept in state until `notAfter` + `crl_retention`, then
//!   deleted); revoke at or after `notAfter` (the lease simply expired) lists
//!   nothing. Renew is unsupported.
//! - Documents per role: `ca` (PEM chain), `ca.der` (the CA certificate,
//!   DER) and `crl` (DER, signed by the CA, served from memory; see
//!   `crl.rs`). Every leaf names the `crl` and `ca.der` URLs under the
//!   server's `public_url` (CRL distribution point, AIA caIssuers).
//!
//! This crate sees only its config, its [`lessor_plugin::StateStore`] and the
//! request: never the core's store, HTTP layer or policy engine.

mod ca;
mod config;
mod crl;
mod names;
mod plugin;

pub use config::{
    CaConfig, CaKeyType, CaSource, ConnectionConfig, GenerateCa, KeyType, RoleConfig,
    DEFAULT_CRL_RETENTION,
};
pub use crl::{system_clock, Clock};
pub use plugin::{
    build, ca_files, registration, validate_config, PkiPlugin, CA_CONTENT_TYPE,
    CA_DER_CONTENT_TYPE, CRL_CONTENT_TYPE, KIND,
};
