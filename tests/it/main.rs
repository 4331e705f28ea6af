//! lessor's integration tests: one binary, modules by area.

mod support;

mod audit;
mod connections;
mod binary;
mod flow;
mod fuzz;
mod http;
mod jwt;
mod lease;
mod observability;
mod openapi;
mod policy;
mod postgres;
mod replicas;
mod retry;
mod scale;
mod store;
mod tls;
