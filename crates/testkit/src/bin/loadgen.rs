//! The gRPC load generator ([`tollgate_testkit::loadgen`]) as a program of
//! its own. It drives the `tollgate` binary beside it (`target/release/loadgen`
//! drives `target/release/tollgate`): build both first,
//!
//! ```sh
//! cargo build --release --workspace --features tollgate/bench-floor --bin tollgate --bin loadgen
//! target/release/loadgen --bench --scenarios check --duration 10
//! ```
//!
//! or run it as `cargo bench --bench loadgen --features bench-floor -- [OPTIONS]`, which builds the
//! server and passes `--bench` itself.

use std::process::ExitCode;

fn main() -> ExitCode {
    match tollgate_testkit::server::binary_beside_current_exe() {
        Ok(binary) => tollgate_testkit::loadgen::main(&binary),
        Err(problem) => {
            eprintln!("loadgen: {problem}");
            ExitCode::FAILURE
        }
    }
}
