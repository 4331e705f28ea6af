//! Integration tests of the PostgreSQL plugin against real, throwaway
//! PostgreSQL servers (one per test). One binary: it links once.

mod conformance;
mod issue;
mod list;
mod revoke;
mod root;
mod support;
mod validate;
