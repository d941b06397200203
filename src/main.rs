//! The `tollgate` binary: reads the command line and runs it.

/// mimalloc: the decision path allocates many small, short-lived objects
/// (Cedar values, protobuf messages); see benches/README.md for the effect.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    // Before the heap grows: `serve` turns them back on when configured.
    tollgate::cli::huge_pages(false);
    tollgate::cli::run()
}
