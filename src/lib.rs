//! tollgate: a low-latency gRPC entitlement decision point over Cedar policies.
//!
//! The modules follow the data flow: [`api`] (gRPC edge) → [`engine`] (the
//! decision) → [`store`] (policies and entitlement snapshots); [`app`] wires
//! them into the sidecar, [`config`] and [`cli`] read what the user asked for.

pub mod admin;
pub mod api;
pub mod app;
pub mod cli;
pub mod config;
pub mod decision_log;
pub mod engine;
pub mod health;
pub mod metering;
pub mod metrics;
pub mod policy_test;
pub mod status;
pub mod store;
pub mod telemetry;
