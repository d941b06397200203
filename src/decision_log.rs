//! The decision log: one JSON record per decision, written by a background
//! thread through a bounded queue. A full queue drops the record and counts
//! it; a decision never waits for the log.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, SyncSender, TryRecvError, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use tracing::warn;

use crate::metrics::Metrics;

/// How often the writer thread looks for queued records.
const WRITER_POLL: Duration = Duration::from_millis(20);

/// Where records go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sink {
    /// Standard output, one JSON object per line.
    Stdout,
    /// A file, rotated to `<file>.1` when it passes the size limit.
    File(PathBuf),
}

/// Decision log settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// Where records go.
    pub sink: Sink,
    /// Records the queue holds before it drops.
    pub queue: usize,
    /// Share of ALLOW decisions logged, 0 to 1.
    pub sample_allow: f64,
    /// Share of DENY decisions logged, 0 to 1.
    pub sample_deny: f64,
    /// Log the request context.
    pub context: bool,
    /// Context attributes whose values are replaced by `"***"`.
    pub mask: Vec<String>,
    /// File size at which the file sink rotates.
    pub max_bytes: u64,
}

/// The sending side, shared by the decision path.
#[derive(Debug)]
pub struct DecisionLog {
    sender: SyncSender<String>,
    settings: Settings,
    allow_seen: AtomicU64,
    deny_seen: AtomicU64,
    metrics: Arc<Metrics>,
}

/// The writer thread; joining it flushes what was queued.
#[derive(Debug)]
pub struct Writer {
    handle: JoinHandle<()>,
}

impl Writer {
    /// Waits until every queued record is written (after the last
    /// [`DecisionLog`] is dropped).
    pub fn finish(self) {
        if self.handle.join().is_err() {
            warn!("decision log writer panicked");
        }
    }
}

/// Every `1 / rate`-th decision of a kind is logged: deterministic, and free
/// of a random number generator on the hot path.
fn sampled(rate: f64, seen: &AtomicU64) -> bool {
    if rate >= 1.0 {
        return true;
    }
    if rate <= 0.0 {
        return false;
    }
    let every = (1.0 / rate).round().max(1.0) as u64;
    seen.fetch_add(1, Ordering::Relaxed).is_multiple_of(every)
}

impl DecisionLog {
    /// Starts the writer thread.
    pub fn start(
        settings: Settings,
        metrics: Arc<Metrics>,
    ) -> std::io::Result<(Arc<Self>, Writer)> {
        let mut output = Output::open(&settings.sink, settings.max_bytes)?;
        let (sender, receiver) = mpsc::sync_channel::<String>(settings.queue.max(1));
        let handle = std::thread::Builder::new()
            .name("decision-log".to_string())
            // The writer polls instead of blocking on the queue, so that
            // queueing a record never has to wake a sleeping thread: on a busy
            // sidecar that wake-up costs more than writing the record.
            .spawn(move || loop {
                loop {
                    match receiver.try_recv() {
                        Ok(line) => output.write_line(&line),
                        Err(TryRecvError::Empty) => break,
                        Err(TryRecvError::Disconnected) => {
                            output.flush();
                            return;
                        }
                    }
                }
                output.flush();
                std::thread::sleep(WRITER_POLL);
            })?;
        Ok((
            Arc::new(Self {
                sender,
                settings,
                allow_seen: AtomicU64::new(0),
                deny_seen: AtomicU64::new(0),
                metrics,
            }),
            Writer { handle },
        ))
    }

    /// Whether a decision of this kind is to be logged (sampling).
    pub fn wants(&self, allow: bool) -> bool {
        let wanted = if allow {
            sampled(self.settings.sample_allow, &self.allow_seen)
        } else {
            sampled(self.settings.sample_deny, &self.deny_seen)
        };
        if !wanted {
            self.metrics.record_decision_log("sampled_out");
        }
        wanted
    }

    /// Whether records carry the context.
    pub fn logs_context(&self) -> bool {
        self.settings.context
    }

    /// Whether the context attribute `key` is masked.
    pub fn masks(&self, key: &str) -> bool {
        self.settings.mask.iter().any(|masked| masked == key)
    }

    /// Queues a record; drops and counts it when the queue is full.
    pub fn submit(&self, record: &serde_json::Value) {
        match self.sender.try_send(record.to_string()) {
            Ok(()) => self.metrics.record_decision_log("queued"),
            Err(TrySendError::Full(_)) => self.metrics.record_decision_log("dropped"),
            Err(TrySendError::Disconnected(_)) => self.metrics.record_decision_log("dropped"),
        }
    }
}

struct Output {
    sink: Sink,
    writer: BufWriter<Box<dyn Write + Send>>,
    written: u64,
    max_bytes: u64,
}

impl Output {
    fn open(sink: &Sink, max_bytes: u64) -> std::io::Result<Self> {
        let (writer, written): (Box<dyn Write + Send>, u64) = match sink {
            Sink::Stdout => (Box::new(std::io::stdout()), 0),
            Sink::File(path) => {
                let file = open_append(path)?;
                let written = file.metadata().map(|m| m.len()).unwrap_or(0);
                (Box::new(file), written)
            }
        };
        Ok(Self {
            sink: sink.clone(),
            writer: BufWriter::new(writer),
            written,
            max_bytes,
        })
    }

    fn write_line(&mut self, line: &str) {
        if let Sink::File(path) = &self.sink {
            if self.written > 0 && self.written + line.len() as u64 + 1 > self.max_bytes {
                self.rotate(&path.clone());
            }
        }
        if let Err(error) = writeln!(self.writer, "{line}") {
            warn!(error = %error, "cannot write the decision log");
            return;
        }
        self.written += line.len() as u64 + 1;
    }

    fn rotate(&mut self, path: &Path) {
        self.flush();
        let mut rotated = path.as_os_str().to_owned();
        rotated.push(".1");
        if let Err(error) = std::fs::rename(path, &rotated) {
            warn!(error = %error, "cannot rotate the decision log");
            return;
        }
        match open_append(path) {
            Ok(file) => {
                self.writer = BufWriter::new(Box::new(file));
                self.written = 0;
            }
            Err(error) => warn!(error = %error, "cannot reopen the decision log"),
        }
    }

    fn flush(&mut self) {
        if let Err(error) = self.writer.flush() {
            warn!(error = %error, "cannot flush the decision log");
        }
    }
}

fn open_append(path: &Path) -> std::io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampling_keeps_one_in_every_n_of_a_kind() {
        let seen = AtomicU64::new(0);
        let kept = (0..100).filter(|_| sampled(0.25, &seen)).count();
        assert_eq!(kept, 25);
        let seen = AtomicU64::new(0);
        assert_eq!((0..10).filter(|_| sampled(0.0, &seen)).count(), 0);
        assert_eq!((0..10).filter(|_| sampled(1.0, &seen)).count(), 10);
    }

    #[test]
    fn the_file_rotates_past_its_size_limit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.log");
        let mut output = Output::open(&Sink::File(path.clone()), 1024).unwrap();
        let line = "x".repeat(300);
        for _ in 0..5 {
            output.write_line(&line);
        }
        output.flush();
        let rotated = std::fs::read_to_string(dir.path().join("d.log.1")).unwrap();
        let current = std::fs::read_to_string(&path).unwrap();
        assert_eq!(rotated.lines().count(), 3);
        assert_eq!(current.lines().count(), 2);
    }
}
