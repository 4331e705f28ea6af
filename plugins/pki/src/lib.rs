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
//! - Revoke puts the serial on the role's CRL (kept in state until the
//!   certificate's `not_after` + `crl_retention`); renew is unsupported.
//! - Documents per role: `ca` (PEM chain) and `crl` (DER, signed by the CA).
//!
//! This crate sees only its config, its [`lessor_plugin::StateStore`] and the
//! request: never the core's store, HTTP layer or policy engine.

mod ca;
mod config;
mod names;
mod plugin;

pub use config::{
    CaConfig, CaKeyType, CaSource, ConnectionConfig, GenerateCa, KeyType, RoleConfig,
    DEFAULT_CRL_RETENTION,
};
pub use plugin::{build, PkiPlugin, CA_CONTENT_TYPE, CRL_CONTENT_TYPE};
