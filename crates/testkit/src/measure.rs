//! What a benchmark reads of a process from `/proc`: the CPU time of its
//! threads and its resident memory.

use std::collections::HashMap;
use std::path::Path;

/// Clock ticks per second of `/proc/<pid>/stat` (`USER_HZ`, 100 on Linux).
const TICKS_PER_SECOND: u64 = 100;

/// CPU time (nanoseconds) of a process's threads at one moment, by thread id.
#[derive(Debug, Clone)]
pub struct CpuSample {
    tasks: HashMap<u64, u64>,
}

impl CpuSample {
    /// CPU seconds spent between `earlier` and this sample: for every thread
    /// alive now, its time now less its time then (0 for a thread started
    /// since). A thread that ended in between is not counted.
    pub fn seconds_since(&self, earlier: &CpuSample) -> f64 {
        let ns: u64 = self
            .tasks
            .iter()
            .map(|(tid, ns)| ns.saturating_sub(earlier.tasks.get(tid).copied().unwrap_or(0)))
            .sum();
        ns as f64 / 1e9
    }
}

/// The CPU time of every thread of process `pid`: the first field of
/// `/proc/<pid>/task/<tid>/schedstat` (time on the CPU, in nanoseconds), or
/// where that is missing the thread's user + system clock ticks from its
/// `stat`; where the task list cannot be read, the whole process's ticks
/// from `/proc/<pid>/stat` (which also count ended threads). `None` when the
/// process is gone.
pub fn process_cpu(pid: u32) -> Option<CpuSample> {
    tasks_cpu(&format!("/proc/{pid}"), None).or_else(|| {
        let stat = format!("/proc/{pid}/stat");
        let ns = stat_ticks(Path::new(&stat))? * (1_000_000_000 / TICKS_PER_SECOND);
        Some(CpuSample {
            tasks: HashMap::from([(0, ns)]),
        })
    })
}

/// The CPU time of this process's threads whose name starts with `prefix`
/// (Linux truncates thread names to 15 bytes), as [`process_cpu`] reads it.
pub fn own_threads_cpu(prefix: &str) -> Option<CpuSample> {
    tasks_cpu("/proc/self", Some(prefix))
}

fn tasks_cpu(process: &str, prefix: Option<&str>) -> Option<CpuSample> {
    let mut tasks = HashMap::new();
    for task in std::fs::read_dir(format!("{process}/task")).ok()? {
        let Ok(task) = task else { continue };
        let Some(tid) = task
            .file_name()
            .to_str()
            .and_then(|t| t.parse::<u64>().ok())
        else {
            continue;
        };
        if let Some(prefix) = prefix {
            match std::fs::read_to_string(task.path().join("comm")) {
                Ok(name) if name.trim_end().starts_with(prefix) => {}
                _ => continue,
            }
        }
        let schedstat = std::fs::read_to_string(task.path().join("schedstat"))
            .ok()
            .and_then(|text| text.split_whitespace().next()?.parse::<u64>().ok());
        let ns = schedstat.or_else(|| {
            Some(stat_ticks(&task.path().join("stat"))? * (1_000_000_000 / TICKS_PER_SECOND))
        });
        if let Some(ns) = ns {
            tasks.insert(tid, ns);
        }
    }
    Some(CpuSample { tasks })
}

/// User + system clock ticks from a `stat` file.
fn stat_ticks(path: &Path) -> Option<u64> {
    let stat = std::fs::read_to_string(path).ok()?;
    // Fields after the command name (which may hold spaces) start at
    // `state`; utime and stime are the 12th and 13th of them.
    let fields: Vec<&str> = stat[stat.rfind(')')? + 2..].split_whitespace().collect();
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

/// Resident memory of a process, from `/proc/<pid>/status`.
#[derive(Debug, Clone, Copy)]
pub struct Memory {
    /// `VmRSS`: resident now.
    pub rss_bytes: u64,
    /// `VmHWM`: the most it has been resident.
    pub hwm_bytes: u64,
}

/// `VmRSS` and `VmHWM` of process `pid`; `None` when it is gone.
pub fn memory(pid: u32) -> Option<Memory> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    Some(Memory {
        rss_bytes: kb_field(&status, "VmRSS:")?,
        hwm_bytes: kb_field(&status, "VmHWM:")?,
    })
}

/// A `Name:   123 kB` line of a `/proc` file such as `/proc/self/status`, in
/// bytes.
pub fn kb_field(text: &str, name: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        line.strip_prefix(name)?
            .trim()
            .strip_suffix("kB")?
            .trim()
            .parse::<u64>()
            .ok()
            .map(|kb| kb * 1024)
    })
}
