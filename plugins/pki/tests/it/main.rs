//! Integration tests of the `pki` plugin: one binary, modules by topic.

mod ca;
mod config;
mod conformance;
mod crl;
mod csr;
mod extensions;
mod issue;
mod names;
mod support;
