//! Integration tests of the token plugin, one binary (it links once).

mod conformance;
mod keys;
mod reads;
mod replicas;
mod support;
mod tokens;
