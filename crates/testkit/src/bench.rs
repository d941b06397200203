//! What the benchmarks run as `harness = false` binaries share: whether
//! `cargo bench -- FILTER` selected them, the benchmark binary re-run as a
//! child process (a point measured on a heap of its own), and a description
//! of the machine they ran on.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Whether the name filters `cargo bench -- FILTER` passed select `bench`
/// (no filter selects every benchmark).
pub fn selected(filters: &[String], bench: &str) -> bool {
    filters.is_empty() || filters.iter().any(|filter| bench.contains(filter.as_str()))
}

/// The number after `name` among `args` (`--seconds 8`), `None` when
/// `name` is not given, an error naming it when no number follows.
pub fn number_arg(args: &[String], name: &str) -> Result<Option<f64>, String> {
    match args.iter().position(|arg| arg == name) {
        Some(at) => args
            .get(at + 1)
            .and_then(|text| text.parse().ok())
            .map(Some)
            .ok_or_else(|| format!("{name} needs a number")),
        None => Ok(None),
    }
}

/// Runs this benchmark binary again with `args` (a `--child` mode) and `envs`,
/// and returns the JSON document it prints on stdout; kills it (by its pid)
/// after `timeout`.
pub fn run_child(
    args: &[String],
    envs: &[(&str, &str)],
    timeout: Duration,
) -> Result<serde_json::Value, String> {
    let exe = std::env::current_exe().map_err(|error| format!("current_exe: {error}"))?;
    let mut child = Command::new(exe)
        .args(args)
        .envs(envs.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|error| format!("cannot start the child process: {error}"))?;
    let stdout = child.stdout.take();
    let reader = std::thread::spawn(move || {
        let mut output = String::new();
        if let Some(mut stdout) = stdout {
            use std::io::Read as _;
            let _ = stdout.read_to_string(&mut output);
        }
        output
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "child {args:?} did not finish within {} s",
                    timeout.as_secs()
                ));
            }
            Err(error) => return Err(format!("child {args:?}: {error}")),
        }
    };
    let output = reader.join().unwrap_or_default();
    if !status.success() {
        return Err(format!("child {args:?} failed ({status})"));
    }
    serde_json::from_str(output.trim())
        .map_err(|error| format!("child {args:?} printed `{}`: {error}", output.trim()))
}

/// The CPUs available and the CPU model name from `/proc/cpuinfo`.
pub fn machine() -> (usize, String) {
    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|line| line.starts_with("model name"))
                .and_then(|line| line.split_once(':'))
                .map(|(_, model)| model.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".to_string());
    (cpus, model)
}
