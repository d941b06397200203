//! The `tollgate` binary: reads the command line and runs it.

fn main() -> std::process::ExitCode {
    tollgate::cli::run()
}
