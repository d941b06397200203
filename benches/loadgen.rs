//! The gRPC load generator ([`tollgate_testkit::loadgen`], in
//! `crates/testkit`) as a benchmark: `cargo bench --bench loadgen --features bench-floor -- [OPTIONS]`
//! builds the server and runs the load generator against that binary;
//! `cargo test --benches` runs it once in test mode (a short smoke run of every
//! scenario). See `--help` and `benches/README.md`.

use std::path::Path;
use std::process::ExitCode;

fn main() -> ExitCode {
    tollgate_testkit::loadgen::main(Path::new(env!("CARGO_BIN_EXE_tollgate")))
}
