//! Integration tests of the Redis / Valkey plugin against real, throwaway
//! `redis-server` processes (two per test: the every-node rule). One
//! binary: it links once.

mod conformance;
mod lifecycle;
mod list;
mod nodes;
mod root;
mod support;
mod tls;
