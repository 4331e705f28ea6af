//! lessor's integration tests: one binary, modules by area.

mod support;

mod admin_tokens;
mod approvals;
mod audit;
mod connections;
mod customer_tokens;
mod engine;
mod external;
mod dead_vendor;
mod dev_idp;
mod binary;
mod flood;
mod flow;
mod fuzz;
mod http;
mod input;
mod jwt;
mod lease;
mod observability;
mod openapi;
mod people;
mod pki;
mod plugins;
mod reconcile;
mod policy;
mod mysql;
mod postgres;
mod redis_users;
mod replicas;
mod retry;
mod scale;
mod store;
mod tls;
mod unauth;
mod vault;
