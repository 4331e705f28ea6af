//! Integration tests of the MySQL / MariaDB plugin against real, throwaway
//! MariaDB servers (one per test). One binary: it links once.

mod conformance;
mod issue;
mod list;
mod revoke;
mod root;
mod support;
