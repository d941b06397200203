//! tollgate: a low-latency gRPC entitlement decision point over Cedar policies.
//!
//! The modules follow the data flow: front doors ([`api`] for gRPC, [`http`]
//! for JSON and AuthZEN, [`ext_authz`] for Envoy, [`cli`], [`admin`]) convert requests for the decision service ([`decide`]), which
//! looks tenants up in [`store`], has [`metering`] count consumptions, and
//! asks the `tollgate_engine` crate for the decision; [`app`] wires them into
//! the sidecar, [`config`] reads what the user asked for.
//! `docs/architecture.md` draws the whole graph.

pub mod admin;
pub mod api;
pub mod app;
pub mod callers;
pub mod cli;
pub mod config;
pub mod config_keys;
pub mod decide;
pub mod decision_log;
pub mod ext_authz;
pub mod health;
pub mod http;
pub mod jwt;
pub mod license;
pub mod listen;
pub mod metering;
pub mod metrics;
pub mod ops_http;
pub mod policy_test;
pub mod report;
pub mod reread;
pub mod status;
pub mod store;
pub mod telemetry;
