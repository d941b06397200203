//! What tollgate's integration tests (`tests/`) and benchmarks (`benches/`)
//! share, in one place, and the gRPC load generator.
//!
//! * [`fixtures`]: the repository's example policies and entitlements, copies
//!   of them in temporary directories, example snapshot documents to edit;
//! * [`tenants`]: generated tenant snapshots of any size, shaped like acme;
//! * [`request`]: `CheckRequest`s and protobuf values;
//! * [`answer`]: reading and asserting a `CheckResponse`;
//! * [`client`]: gRPC channels, calls, health, bounded waits, plain HTTP;
//! * [`http`]: a client of the HTTP front door;
//! * [`jwt`]: signing keys made with `openssl`, their JWKS, signed tokens;
//! * [`cases`]: requests every front door must refuse, with their messages;
//! * [`server`]: the server in this process ([`server::InProcess`]) or as a
//!   process of the built binary ([`server::ServerProcess`]);
//! * [`redis_server`]: a real `redis-server` on a free loopback port;
//! * [`redis_proxy`]: a fault-injecting proxy in front of it (replies
//!   dropped, delayed or cut by a reset, connections black-holed);
//! * [`measure`]: CPU time and memory of a process, from `/proc`;
//! * [`pki`]: CAs and certificates made with `openssl`, TLS channels;
//! * [`bench`](mod@bench): what the `harness = false` benchmarks share;
//! * [`loadgen`]: the gRPC load generator, run by `cargo bench --bench
//!   loadgen` and as this crate's `loadgen` binary.
//!
//! Nothing here knows where the `tollgate` binary is: a test or benchmark of
//! the root package passes `env!("CARGO_BIN_EXE_tollgate")`, the binary cargo
//! built for it; the `loadgen` binary takes the one beside itself
//! ([`server::binary_beside_current_exe`]).
//!
//! Helpers panic on a broken setup (tests) or return `Result<_, String>`
//! (benchmarks, which report and exit); where both are needed, the `try_`
//! form returns the error the other panics with.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test harness: a broken setup should abort loudly"
)]

pub mod answer;
pub mod bench;
pub mod cases;
pub mod client;
pub mod fixtures;
pub mod http;
pub mod jwt;
pub mod loadgen;
pub mod measure;
pub mod pki;
pub mod redis_proxy;
pub mod redis_server;
pub mod request;
pub mod server;
pub mod tenants;

/// What most integration tests use: `use tollgate_testkit::prelude::*;`.
pub mod prelude {
    pub use crate::answer::*;
    pub use crate::client::*;
    pub use crate::fixtures::{
        copy_dir, example_counts, example_entitlements, example_policies, read, replace_file,
        DataDirs,
    };
    pub use crate::http::{HttpAnswer, HttpClient};
    pub use crate::request::*;
    pub use crate::server::{strip_ansi, InProcess, ServerProcess};
}
