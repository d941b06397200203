//! The decision log: one JSON record per decision, written by a background
//! thread through a bounded queue. A full queue drops the record and counts
//! it; a decision never waits for the log. The writer appends each record to
//! standard output or a file (rotated), and hands it on to a Redis Stream
//! when one is configured: a task adds the records in batches, one round trip
//! each, with its own bounded queue, so that a slow or absent Redis costs
//! stream records (counted) and never the file's.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, SyncSender, TryRecvError, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tracing::warn;

use crate::metrics::Metrics;
use crate::store::redis_client::scripts::DecisionStreamAdd;
use crate::store::redis_client::{RedisConn, RedisSettings};

/// How often the writer thread looks for queued records.
const WRITER_POLL: Duration = Duration::from_millis(20);

/// Most records added to the Redis Stream in one round trip.
const STREAM_BATCH: usize = 256;

/// Wait before connecting again after Redis could not be reached; records
/// for the stream meanwhile fail at once (and are counted).
const STREAM_RECONNECT: Duration = Duration::from_secs(1);

/// At most one warning per this interval about records the stream lost.
const STREAM_WARNING_INTERVAL: Duration = Duration::from_secs(10);

/// Where records go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sink {
    /// Standard output, one JSON object per line.
    Stdout,
    /// A file, rotated to `<file>.1` when it passes the size limit.
    File(PathBuf),
}

/// The Redis Stream the records are also added to.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamSettings {
    /// The stream's key, e.g. `tollgate:decisions`.
    pub key: String,
    /// Approximate length the stream is trimmed to (`MAXLEN ~`).
    pub max_len: u64,
    /// How to reach Redis.
    pub redis: RedisSettings,
}

/// Decision log settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// Where records are written; `None` when they only go to the stream.
    pub sink: Option<Sink>,
    /// The Redis Stream records are added to, if any.
    pub redis_stream: Option<StreamSettings>,
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
    /// Attribute paths from the principal (`account.plan`) whose snapshot
    /// values each record carries.
    pub attributes: Vec<String>,
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

/// The writer thread (and the stream task); joining them flushes what was queued.
#[derive(Debug)]
pub struct Writer {
    handle: JoinHandle<()>,
    stream: Option<(tokio::runtime::Handle, tokio::task::JoinHandle<()>)>,
}

impl Writer {
    /// Waits until every queued record is written (after the last
    /// [`DecisionLog`] is dropped). Blocks: call it off the runtime's threads.
    pub fn finish(self) {
        if self.handle.join().is_err() {
            warn!("decision log writer panicked");
        }
        if let Some((runtime, task)) = self.stream {
            if runtime.block_on(task).is_err() {
                warn!("decision log stream task failed");
            }
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
    /// Starts the writer thread, and with a Redis Stream the task that
    /// writes to it (on the current tokio runtime, which must be running).
    pub fn start(
        settings: Settings,
        metrics: Arc<Metrics>,
    ) -> std::io::Result<(Arc<Self>, Writer)> {
        let mut output = match &settings.sink {
            Some(sink) => Some(Output::open(sink, settings.max_bytes)?),
            None => None,
        };
        let (sender, receiver) = mpsc::sync_channel::<String>(settings.queue.max(1));
        let (stream_sender, stream) = match &settings.redis_stream {
            Some(stream_settings) => {
                let (stream_sender, stream_receiver) =
                    tokio::sync::mpsc::channel::<String>(settings.queue.max(1));
                let runtime = tokio::runtime::Handle::try_current()
                    .map_err(|error| std::io::Error::other(error.to_string()))?;
                let task = runtime.spawn(write_stream(
                    stream_settings.clone(),
                    stream_receiver,
                    Arc::clone(&metrics),
                ));
                (Some(stream_sender), Some((runtime, task)))
            }
            None => (None, None),
        };
        let stream_metrics = Arc::clone(&metrics);
        let handle = std::thread::Builder::new()
            .name("decision-log".to_string())
            // The writer polls instead of blocking on the queue, so that
            // queueing a record never has to wake a sleeping thread: on a busy
            // sidecar that wake-up costs more than writing the record.
            .spawn(move || loop {
                loop {
                    match receiver.try_recv() {
                        Ok(line) => {
                            if let Some(output) = &mut output {
                                output.write_line(&line);
                            }
                            if let Some(stream) = &stream_sender {
                                if stream.try_send(line).is_err() {
                                    stream_metrics.record_decision_log_stream("dropped", 1);
                                }
                            }
                        }
                        Err(TryRecvError::Empty) => break,
                        Err(TryRecvError::Disconnected) => {
                            if let Some(output) = &mut output {
                                output.flush();
                            }
                            // Dropping the stream's sender lets its task
                            // write what it holds and end.
                            return;
                        }
                    }
                }
                if let Some(output) = &mut output {
                    output.flush();
                }
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
            Writer { handle, stream },
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

    /// The attribute paths from the principal each record carries.
    pub fn attributes(&self) -> &[String] {
        &self.settings.attributes
    }

    /// Whether the context attribute `key` is masked.
    pub fn masks(&self, key: &str) -> bool {
        self.settings.mask.iter().any(|masked| masked == key)
    }

    /// Queues a record (serialized as one JSON line); drops and counts it
    /// when the queue is full.
    pub fn submit(&self, record: &impl serde::Serialize) {
        let line = match serde_json::to_string(record) {
            Ok(line) => line,
            Err(error) => {
                warn!(error = %error, "cannot encode a decision-log record");
                return;
            }
        };
        match self.sender.try_send(line) {
            Ok(()) => self.metrics.record_decision_log("queued"),
            Err(TrySendError::Full(_)) => self.metrics.record_decision_log("dropped"),
            Err(TrySendError::Disconnected(_)) => self.metrics.record_decision_log("dropped"),
        }
    }
}

/// Adds the records from `records` to the stream, in batches, until the
/// writer thread drops its sender; counts what became of each record.
async fn write_stream(
    settings: StreamSettings,
    mut records: tokio::sync::mpsc::Receiver<String>,
    metrics: Arc<Metrics>,
) {
    let mut connection: Option<RedisConn> = None;
    let mut next_attempt = Instant::now();
    let mut warnings = RateLimited::new(STREAM_WARNING_INTERVAL);
    let mut batch = Vec::with_capacity(STREAM_BATCH);
    while records.recv_many(&mut batch, STREAM_BATCH).await > 0 {
        let count = batch.len() as u64;
        match add_to_stream(&settings, &mut connection, &mut next_attempt, &batch).await {
            Ok(()) => metrics.record_decision_log_stream("written", count),
            Err(error) => {
                metrics.record_decision_log_stream("failed", count);
                if let Some(failed) = warnings.add(count) {
                    warn!(
                        stream = %settings.key,
                        error = %error,
                        records = failed,
                        "decision log records not added to the redis stream"
                    );
                }
            }
        }
        batch.clear();
    }
}

/// Adds the batch to the stream in one script call
/// (`decision_stream_add.lua`: `XADD <key> MAXLEN ~ <max_len> * record
/// <json>` each), connecting first if need be.
async fn add_to_stream(
    settings: &StreamSettings,
    connection: &mut Option<RedisConn>,
    next_attempt: &mut Instant,
    batch: &[String],
) -> Result<(), String> {
    if connection.is_none() {
        if Instant::now() < *next_attempt {
            return Err("redis unreachable; retrying".to_string());
        }
        match RedisConn::connect(&settings.redis).await {
            Ok(connected) => *connection = Some(connected),
            Err(error) => {
                *next_attempt = Instant::now() + STREAM_RECONNECT;
                return Err(error.to_string());
            }
        }
    }
    let Some(conn) = connection.as_ref() else {
        return Err("redis unreachable".to_string());
    };
    DecisionStreamAdd {
        key: &settings.key,
        max_len: settings.max_len,
        records: batch,
    }
    .run(conn)
    .await
    .map_err(|error| error.to_string())
}

/// Counts events and says when to report them: at most once per interval.
struct RateLimited {
    interval: Duration,
    last: Option<Instant>,
    pending: u64,
}

impl RateLimited {
    fn new(interval: Duration) -> Self {
        Self {
            interval,
            last: None,
            pending: 0,
        }
    }

    /// Adds `count` events; returns how many to report now, if it is time.
    fn add(&mut self, count: u64) -> Option<u64> {
        self.pending += count;
        let now = Instant::now();
        if self
            .last
            .is_some_and(|last| now.duration_since(last) < self.interval)
        {
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.pending))
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
    fn warnings_are_rate_limited_and_count_what_they_skipped() {
        let mut limited = RateLimited::new(Duration::from_secs(3600));
        assert_eq!(limited.add(2), Some(2));
        assert_eq!(limited.add(5), None);
        assert_eq!(limited.add(1), None);
        limited.last = Some(Instant::now() - Duration::from_secs(3601));
        assert_eq!(limited.add(1), Some(7));
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
