//! A fault-injecting TCP proxy between a Redis client (tollgate, or a test's
//! own client) and a real `redis-server`: [`RedisProxy`].
//!
//! The proxy listens on a free loopback port and opens one upstream
//! connection to the server for each client connection it accepts. It runs
//! on a tokio runtime of its own, on a thread of its own, so it serves sync
//! tests and tests inside another runtime alike; dropping it stops the
//! runtime, which closes the listener and every connection.
//!
//! # Faults
//!
//! [`Rule`]s, replaceable at any time ([`RedisProxy::set_rules`]), each name
//! the commands they apply to ([`Match`]), a [`Fault`] and a rate. For each
//! command a client sends, the rules are tried in order; the first whose
//! match selects the command and whose rate draw succeeds gives the command's
//! fault (at most one). Draws come from a seeded xorshift generator shared by
//! all connections ([`RedisProxy::set_seed`]; [`DEFAULT_SEED`] until set):
//! the same commands reaching the proxy in the same order are faulted the
//! same way in every run. Rates of 0 and 1 draw nothing.
//!
//! * [`Fault::DropReply`]: the command is forwarded and executed; its reply
//!   is swallowed and the client connection closed. A reply lost on a real
//!   link means the link is gone; a reply that never came on a live
//!   connection would pair every later reply with the wrong command.
//! * [`Fault::Delay`]: the reply is held until the given time after it came
//!   from the server, then delivered; replies behind it wait for it, so the
//!   order never changes.
//! * [`Fault::ResetMidReply`]: the command is forwarded; the first half of
//!   its reply's bytes is written, then the client connection is reset
//!   (`SO_LINGER` 0): the client reads a prefix of the reply, at most half
//!   (a reset discards what the kernel had not yet sent), then a reset.
//! * [`Fault::BlackHoleConnections`]: new connections are accepted and left
//!   alone: nothing is read from them, nothing forwarded, nothing answered,
//!   while any such rule is set (drawn once per connection, at its accept;
//!   the rule's [`Match`] is ignored). When the last one is removed, the
//!   held connections are served like a healed link: what their clients
//!   sent meanwhile, still in the socket buffers, is forwarded then.
//!   Connections accepted before are not affected.
//!
//! [`RedisProxy::stats`] counts connections, commands and faults, in total
//! and by command.
//!
//! # RESP framing
//!
//! Faults apply to whole commands and replies, not to TCP segments: both
//! directions are split into complete top-level RESP values. All RESP2 and
//! RESP3 types are understood: simple `+ - : _ , # (`, bulk `$ ! =` (with the
//! null bulk `$-1`), aggregate `* ~ > %` (with the null array `*-1`, nested
//! to any depth) and attributes `|` (an attribute and the value it annotates
//! count as one value). Commands are arrays of bulk strings, or inline
//! commands (a line, split at whitespace, without quoting); a command is
//! forwarded once it is complete. Empty commands (`*0`, an empty line), to
//! which Redis sends no reply, are forwarded and not counted. Replies are
//! paired with commands in order (the k-th reply of a connection answers its
//! k-th command), which is what lets a client pipeline.
//!
//! Some server messages answer no command, and are never paired nor faulted:
//! RESP3 push values (`>`: pub/sub messages and subscription confirmations
//! under RESP3, client-side caching invalidations), and, on a RESP2
//! connection that has sent a `SUBSCRIBE`-family command, arrays whose first
//! element is `message`, `pmessage`, `smessage` or a `(un)subscribe` kind.
//! `SUBSCRIBE`, `PSUBSCRIBE`, `SSUBSCRIBE` and their `UNSUBSCRIBE`s answer
//! once per channel, so they are forwarded but never paired nor faulted.
//!
//! # Limits
//!
//! * Pairing is positional: `CLIENT REPLY OFF|SKIP`, `MONITOR`, or a RESP2
//!   reply to a pipelined command that looks like a pub/sub message while a
//!   subscription is being made, shift which reply a later fault falls on
//!   (the bytes still reach the client unchanged and in order).
//! * RESP3 streamed strings and aggregates (`$?`, `*?`), which Redis does not
//!   send, and anything else that is not RESP turn the direction where they
//!   appear into a plain byte pipe for the rest of the connection: no more
//!   faults on it.
//! * Plain TCP only (no TLS); one upstream server (no cluster redirections
//!   are rewritten).
//! * Whole values are buffered before they are forwarded (a 512 MiB bulk
//!   string is held in memory).

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

/// The seed of the fault draws until [`RedisProxy::set_seed`].
pub const DEFAULT_SEED: u64 = 0x746f_6c6c_6761_7465;

/// Bytes read from a socket at a time.
const READ_CHUNK: usize = 64 * 1024;

/// Reply batches queued for a client before the proxy stops reading from its
/// server connection.
const OUT_QUEUE: usize = 64;

/// Which commands a [`Rule`] applies to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Match {
    /// Every command.
    Any,
    /// Commands whose first words are these, ignoring case: `"GET"`,
    /// `"EVALSHA"`, `"FCALL"`, `"XADD"`, or `"SCRIPT LOAD"`.
    Command(String),
    /// Scripts: `EVAL`/`EVAL_RO` whose script contains this text,
    /// `EVALSHA`/`EVALSHA_RO` whose SHA1 starts with it (ignoring case), and
    /// `FCALL`/`FCALL_RO` of the function of this name (ignoring case).
    Script(String),
}

/// What happens to a command a [`Rule`] selects. See the [module
/// documentation](self) for the exact behaviour of each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The command is executed; its reply is lost and the connection closed.
    DropReply,
    /// The reply is delivered this long after the server sent it.
    Delay(Duration),
    /// Half the reply is delivered, then the connection is reset.
    ResetMidReply,
    /// New connections are held, unanswered, while the rule is set.
    BlackHoleConnections,
}

/// A fault, the commands it applies to, and how often.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    /// The commands it applies to (ignored by
    /// [`Fault::BlackHoleConnections`], which applies to connections).
    pub matches: Match,
    /// What happens.
    pub fault: Fault,
    /// The share of the selected commands (or new connections) it applies
    /// to: 0 never, 1 always, in between drawn for each one.
    pub rate: f64,
}

impl Rule {
    /// `fault` on every command `matches` selects.
    pub fn new(matches: Match, fault: Fault) -> Self {
        Self {
            matches,
            fault,
            rate: 1.0,
        }
    }

    /// The same rule, applied at `rate` (0..=1).
    #[must_use]
    pub fn at_rate(self, rate: f64) -> Self {
        Self { rate, ..self }
    }
}

/// What the proxy has done since it started or since
/// [`RedisProxy::reset_stats`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// Client connections accepted.
    pub connections: u64,
    /// Of those, connections held by [`Fault::BlackHoleConnections`].
    pub black_holed: u64,
    /// Commands forwarded to the server.
    pub commands: u64,
    /// Replies swallowed by [`Fault::DropReply`].
    pub dropped: u64,
    /// Replies held by [`Fault::Delay`].
    pub delayed: u64,
    /// Replies cut by [`Fault::ResetMidReply`].
    pub reset: u64,
    /// The same by command name (its first word, upper case).
    pub by_command: BTreeMap<String, CommandStats>,
}

impl Stats {
    /// Replies dropped, delayed or reset.
    pub fn faults(&self) -> u64 {
        self.dropped + self.delayed + self.reset
    }

    /// The counts of `command` (any case); zeros if it was never seen.
    pub fn command(&self, command: &str) -> CommandStats {
        self.by_command
            .get(&command.to_ascii_uppercase())
            .copied()
            .unwrap_or_default()
    }
}

/// What the proxy has done with one command name.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CommandStats {
    /// Commands forwarded to the server.
    pub forwarded: u64,
    /// Replies swallowed.
    pub dropped: u64,
    /// Replies held.
    pub delayed: u64,
    /// Replies cut.
    pub reset: u64,
}

/// A running proxy; dropping it stops it.
pub struct RedisProxy {
    /// Its loopback port.
    pub port: u16,
    shared: Arc<Shared>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl RedisProxy {
    /// Starts a proxy to the server on loopback port `upstream`; panics if
    /// it cannot.
    pub fn start(upstream: u16) -> Self {
        Self::try_start(upstream).unwrap_or_else(|error| panic!("{error}"))
    }

    /// Starts a proxy to the server on loopback port `upstream`, listening on
    /// a free loopback port, with no rules.
    pub fn try_start(upstream: u16) -> Result<Self, String> {
        let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .map_err(|error| format!("redis proxy: no loopback port: {error}"))?;
        let port = listener
            .local_addr()
            .map_err(|error| format!("redis proxy: {error}"))?
            .port();
        listener
            .set_nonblocking(true)
            .map_err(|error| format!("redis proxy: {error}"))?;
        let shared = Arc::new(Shared {
            upstream: SocketAddr::from((Ipv4Addr::LOCALHOST, upstream)),
            rules: watch::Sender::new(Vec::new()),
            draws: Mutex::new(XorShift::seeded(DEFAULT_SEED)),
            stats: Mutex::new(Stats::default()),
        });
        let (stop, stopped) = oneshot::channel();
        let (started, start_result) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new()
            .name(format!("redis-proxy-{port}"))
            .spawn({
                let shared = Arc::clone(&shared);
                move || serve(listener, shared, stopped, &started)
            })
            .map_err(|error| format!("redis proxy: no thread: {error}"))?;
        match start_result.recv() {
            Ok(Ok(())) => Ok(Self {
                port,
                shared,
                stop: Some(stop),
                thread: Some(thread),
            }),
            Ok(Err(error)) => Err(error),
            Err(_) => Err("redis proxy: its thread ended while starting".to_string()),
        }
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Replaces the rules; commands read from now on follow them.
    pub fn set_rules(&self, rules: Vec<Rule>) {
        self.shared.rules.send_replace(rules);
    }

    /// Removes every rule: the proxy forwards faithfully.
    pub fn clear_rules(&self) {
        self.set_rules(Vec::new());
    }

    /// The rules in force.
    pub fn rules(&self) -> Vec<Rule> {
        self.shared.rules.borrow().clone()
    }

    /// Restarts the fault draws from `seed`.
    pub fn set_seed(&self, seed: u64) {
        *lock(&self.shared.draws) = XorShift::seeded(seed);
    }

    /// What the proxy has done so far.
    pub fn stats(&self) -> Stats {
        lock(&self.shared.stats).clone()
    }

    /// Sets every count back to zero.
    pub fn reset_stats(&self) {
        *lock(&self.shared.stats) = Stats::default();
    }
}

impl Drop for RedisProxy {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// What the proxy's handle and its connections share.
struct Shared {
    upstream: SocketAddr,
    rules: watch::Sender<Vec<Rule>>,
    draws: Mutex<XorShift>,
    stats: Mutex<Stats>,
}

impl Shared {
    /// The fault of a command (`words`: its first words), if any.
    fn command_fault(&self, words: &[&[u8]]) -> Option<Fault> {
        let rules = self.rules.borrow();
        rules
            .iter()
            .filter(|rule| rule.fault != Fault::BlackHoleConnections)
            .find(|rule| rule.matches.selects(words) && self.draw(rule.rate))
            .map(|rule| rule.fault)
    }

    /// Whether a new connection is to be held.
    fn black_holes(&self) -> bool {
        let rules = self.rules.borrow();
        rules
            .iter()
            .filter(|rule| rule.fault == Fault::BlackHoleConnections)
            .any(|rule| self.draw(rule.rate))
    }

    fn draw(&self, rate: f64) -> bool {
        if rate >= 1.0 {
            true
        } else if rate > 0.0 {
            lock(&self.draws).next_unit() < rate
        } else {
            false
        }
    }

    fn count(&self, event: Event, command: Option<&str>) {
        let mut stats = lock(&self.stats);
        let total = match event {
            Event::Connection => &mut stats.connections,
            Event::BlackHoled => &mut stats.black_holed,
            Event::Forwarded => &mut stats.commands,
            Event::Dropped => &mut stats.dropped,
            Event::Delayed => &mut stats.delayed,
            Event::Reset => &mut stats.reset,
        };
        *total += 1;
        if let Some(command) = command {
            let by_command = stats.by_command.entry(command.to_string()).or_default();
            match event {
                Event::Forwarded => by_command.forwarded += 1,
                Event::Dropped => by_command.dropped += 1,
                Event::Delayed => by_command.delayed += 1,
                Event::Reset => by_command.reset += 1,
                Event::Connection | Event::BlackHoled => {}
            }
        }
    }
}

#[derive(Clone, Copy)]
enum Event {
    Connection,
    BlackHoled,
    Forwarded,
    Dropped,
    Delayed,
    Reset,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Match {
    fn selects(&self, words: &[&[u8]]) -> bool {
        match self {
            Self::Any => true,
            Self::Command(command) => {
                let mut expected = command.split_whitespace().peekable();
                expected.peek().is_some()
                    && expected.enumerate().all(|(index, word)| {
                        words
                            .get(index)
                            .is_some_and(|actual| actual.eq_ignore_ascii_case(word.as_bytes()))
                    })
            }
            Self::Script(text) => {
                let (Some(command), Some(script)) = (words.first(), words.get(1)) else {
                    return false;
                };
                let text = text.as_bytes();
                let is = |name: &str| command.eq_ignore_ascii_case(name.as_bytes());
                if is("EVAL") || is("EVAL_RO") {
                    text.is_empty() || script.windows(text.len()).any(|window| window == text)
                } else if is("EVALSHA") || is("EVALSHA_RO") {
                    script.len() >= text.len() && script[..text.len()].eq_ignore_ascii_case(text)
                } else if is("FCALL") || is("FCALL_RO") {
                    script.eq_ignore_ascii_case(text)
                } else {
                    false
                }
            }
        }
    }
}

/// xorshift64, seeded through splitmix64: reproducible draws, no dependency.
struct XorShift(u64);

impl XorShift {
    fn seeded(seed: u64) -> Self {
        let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        // xorshift stays at zero from zero.
        Self(if z == 0 { 0x9e37_79b9_7f4a_7c15 } else { z })
    }

    /// A draw in [0, 1).
    fn next_unit(&mut self) -> f64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        (x >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// The proxy's thread: its runtime, the accept loop until `stopped`; then
/// the runtime is dropped, and with it every connection.
fn serve(
    listener: std::net::TcpListener,
    shared: Arc<Shared>,
    stopped: oneshot::Receiver<()>,
    started: &std::sync::mpsc::Sender<Result<(), String>>,
) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            let _ = started.send(Err(format!("redis proxy: no runtime: {error}")));
            return;
        }
    };
    let listener = {
        let _context = runtime.enter();
        match TcpListener::from_std(listener) {
            Ok(listener) => listener,
            Err(error) => {
                let _ = started.send(Err(format!("redis proxy: {error}")));
                return;
            }
        }
    };
    let _ = started.send(Ok(()));
    runtime.block_on(accept(listener, shared, stopped));
}

async fn accept(listener: TcpListener, shared: Arc<Shared>, mut stopped: oneshot::Receiver<()>) {
    loop {
        tokio::select! {
            _ = &mut stopped => return,
            accepted = listener.accept() => match accepted {
                Ok((client, _)) => {
                    tokio::spawn(connection(client, Arc::clone(&shared)));
                }
                // Out of descriptors, or a connection reset before it was
                // accepted: keep accepting.
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            },
        }
    }
}

/// What a connection's two directions share about its protocol state.
#[derive(Default)]
struct Modes {
    /// The client has sent a `SUBSCRIBE`-family command.
    subscribed: AtomicBool,
    /// The client has switched to RESP3 (`HELLO 3`).
    resp3: AtomicBool,
}

/// A command sent upstream, waiting for its reply.
struct Pending {
    command: String,
    fault: Option<Fault>,
}

/// What the client is sent, in order.
enum Out {
    /// Bytes, once the time has come.
    Bytes { bytes: Vec<u8>, at: Option<Instant> },
    /// These bytes, then a reset.
    Reset(Vec<u8>),
    /// A close.
    Close,
}

async fn connection(client: TcpStream, shared: Arc<Shared>) {
    shared.count(Event::Connection, None);
    if shared.black_holes() {
        shared.count(Event::BlackHoled, None);
        let mut changes = shared.rules.subscribe();
        let healed = changes
            .wait_for(|rules| {
                !rules
                    .iter()
                    .any(|rule| rule.fault == Fault::BlackHoleConnections)
            })
            .await
            .is_ok();
        if !healed {
            return;
        }
    }
    let Ok(upstream) = TcpStream::connect(shared.upstream).await else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let (client_read, client_write) = client.into_split();
    let (upstream_read, upstream_write) = upstream.into_split();
    let modes = Modes::default();
    let (pending_in, pending_out) = mpsc::unbounded_channel();
    let (out_in, out_out) = mpsc::channel(OUT_QUEUE);
    // Only `deliver` ends the connection (or a client that cannot be read):
    // the other two wait once their side is done, so that what is already
    // on its way still reaches the client. Both sockets close when this
    // returns.
    tokio::select! {
        () = commands(client_read, upstream_write, &shared, &modes, pending_in) => {}
        () = replies(upstream_read, &shared, &modes, pending_out, out_in) => {}
        () = deliver(client_write, out_out) => {}
    }
}

/// Client to server: whole commands, each with its fault decided and queued
/// for its reply before it is forwarded.
async fn commands(
    mut client: OwnedReadHalf,
    mut upstream: OwnedWriteHalf,
    shared: &Shared,
    modes: &Modes,
    pending: mpsc::UnboundedSender<Pending>,
) {
    let mut buffer = Vec::new();
    let mut chunk = vec![0; READ_CHUNK];
    let mut framed = true;
    loop {
        let read = match client.read(&mut chunk).await {
            Ok(0) => {
                // Half-close upstream as the client did; the server's answer
                // (closing) ends the connection.
                let _ = upstream.shutdown().await;
                return std::future::pending().await;
            }
            Ok(read) => read,
            Err(_) => return,
        };
        buffer.extend_from_slice(&chunk[..read]);
        let mut complete = 0;
        while framed {
            match next_command(&buffer[complete..]) {
                Ok(Some((len, words))) => {
                    if let Some(words) = words {
                        command_seen(&words, shared, modes, &pending);
                    }
                    complete += len;
                }
                Ok(None) => break,
                Err(NotResp) => framed = false,
            }
        }
        if !framed {
            complete = buffer.len();
        }
        if upstream.write_all(&buffer[..complete]).await.is_err() {
            // The server is gone: `replies` sees it and closes the client.
            return std::future::pending().await;
        }
        buffer.drain(..complete);
    }
}

/// Counts a command, tracks the connection's mode, and queues what its reply
/// is to undergo.
fn command_seen(
    words: &[&[u8]],
    shared: &Shared,
    modes: &Modes,
    pending: &mpsc::UnboundedSender<Pending>,
) {
    let Some(first) = words.first() else {
        return;
    };
    let command = String::from_utf8_lossy(first).to_ascii_uppercase();
    shared.count(Event::Forwarded, Some(&command));
    let argument = words.get(1).map(|word| String::from_utf8_lossy(word));
    match command.as_str() {
        "SUBSCRIBE" | "PSUBSCRIBE" | "SSUBSCRIBE" | "UNSUBSCRIBE" | "PUNSUBSCRIBE"
        | "SUNSUBSCRIBE" => {
            // One reply per channel: not paired.
            modes.subscribed.store(true, Ordering::SeqCst);
            return;
        }
        "HELLO" => match argument.as_deref() {
            Some("3") => modes.resp3.store(true, Ordering::SeqCst),
            Some("2") => modes.resp3.store(false, Ordering::SeqCst),
            _ => {}
        },
        "RESET" => {
            modes.resp3.store(false, Ordering::SeqCst);
            modes.subscribed.store(false, Ordering::SeqCst);
        }
        _ => {}
    }
    let fault = shared.command_fault(words);
    // The receiver lives as long as this connection's `replies`.
    let _ = pending.send(Pending { command, fault });
}

/// Server to client: whole replies, each paired with its command and its
/// fault applied; messages that answer no command pass as they are.
async fn replies(
    mut upstream: OwnedReadHalf,
    shared: &Shared,
    modes: &Modes,
    mut pending: mpsc::UnboundedReceiver<Pending>,
    out: mpsc::Sender<Out>,
) {
    let mut buffer = Vec::new();
    let mut chunk = vec![0; READ_CHUNK];
    let mut framed = true;
    loop {
        let read = match upstream.read(&mut chunk).await {
            Ok(0) | Err(_) => {
                let _ = out.send(Out::Close).await;
                return std::future::pending().await;
            }
            Ok(read) => read,
        };
        let arrived = Instant::now();
        buffer.extend_from_slice(&chunk[..read]);
        let mut batch = Batch::default();
        let mut complete = 0;
        while framed && !batch.last {
            let reply = &buffer[complete..];
            let len = match frame_len(reply) {
                Ok(Some(len)) => len,
                Ok(None) => break,
                Err(NotResp) => {
                    framed = false;
                    break;
                }
            };
            let reply = &reply[..len];
            let paired = if answers_no_command(reply, modes) {
                None
            } else {
                pending.try_recv().ok()
            };
            match paired {
                Some(Pending {
                    command,
                    fault: Some(fault),
                }) => batch.fault(fault, reply, arrived, shared, &command),
                _ => batch.plain(reply),
            }
            complete += len;
        }
        if !framed {
            batch.plain(&buffer[complete..]);
            complete = buffer.len();
        }
        let last = batch.last;
        for item in batch.finish() {
            if out.send(item).await.is_err() {
                return std::future::pending().await;
            }
        }
        if last {
            return std::future::pending().await;
        }
        buffer.drain(..complete);
    }
}

/// What one read from the server gives the client: plain replies gathered
/// into one write, faulted ones on their own.
#[derive(Default)]
struct Batch {
    items: Vec<Out>,
    plain: Vec<u8>,
    /// The connection ends with this batch.
    last: bool,
}

impl Batch {
    fn plain(&mut self, bytes: &[u8]) {
        self.plain.extend_from_slice(bytes);
    }

    fn fault(
        &mut self,
        fault: Fault,
        reply: &[u8],
        arrived: Instant,
        shared: &Shared,
        command: &str,
    ) {
        self.flush();
        match fault {
            Fault::Delay(delay) => {
                shared.count(Event::Delayed, Some(command));
                self.items.push(Out::Bytes {
                    bytes: reply.to_vec(),
                    at: Some(arrived + delay),
                });
            }
            Fault::DropReply => {
                shared.count(Event::Dropped, Some(command));
                self.items.push(Out::Close);
                self.last = true;
            }
            Fault::ResetMidReply => {
                shared.count(Event::Reset, Some(command));
                self.items
                    .push(Out::Reset(reply[..reply.len() / 2].to_vec()));
                self.last = true;
            }
            Fault::BlackHoleConnections => self.plain(reply),
        }
    }

    fn flush(&mut self) {
        if !self.plain.is_empty() {
            self.items.push(Out::Bytes {
                bytes: std::mem::take(&mut self.plain),
                at: None,
            });
        }
    }

    fn finish(mut self) -> Vec<Out> {
        self.flush();
        self.items
    }
}

/// Writes to the client in order, each item when its time has come.
async fn deliver(mut client: OwnedWriteHalf, mut out: mpsc::Receiver<Out>) {
    while let Some(item) = out.recv().await {
        match item {
            Out::Bytes { bytes, at } => {
                if let Some(at) = at {
                    tokio::time::sleep_until(at).await;
                }
                if client.write_all(&bytes).await.is_err() {
                    return;
                }
            }
            Out::Reset(bytes) => {
                let _ = client.write_all(&bytes).await;
                let _ = client.flush().await;
                reset_on_close(client.as_ref());
                // No FIN on drop: the socket closes with the read half,
                // and with a reset.
                client.forget();
                return;
            }
            Out::Close => return,
        }
    }
}

/// `SO_LINGER` 0: closing the socket sends a reset.
#[allow(
    deprecated,
    reason = "a zero linger never blocks on close; set_zero_linger needs tokio 1.50"
)]
fn reset_on_close(socket: &TcpStream) {
    let _ = socket.set_linger(Some(Duration::ZERO));
}

/// Whether a server message answers no command: a RESP3 push, or a RESP2
/// pub/sub message on a subscribed connection.
fn answers_no_command(reply: &[u8], modes: &Modes) -> bool {
    match reply.first() {
        Some(b'>') => true,
        Some(b'*')
            if modes.subscribed.load(Ordering::SeqCst) && !modes.resp3.load(Ordering::SeqCst) =>
        {
            array_strings(reply, 1).is_some_and(|first| {
                first.first().is_some_and(|kind| {
                    [
                        "message",
                        "pmessage",
                        "smessage",
                        "subscribe",
                        "psubscribe",
                        "ssubscribe",
                        "unsubscribe",
                        "punsubscribe",
                        "sunsubscribe",
                    ]
                    .iter()
                    .any(|known| kind.eq_ignore_ascii_case(known.as_bytes()))
                })
            })
        }
        _ => false,
    }
}

/// Bytes that are not RESP (or RESP3 streamed values).
#[derive(Debug, PartialEq, Eq)]
struct NotResp;

/// Where the first complete RESP value in `buffer` ends; `None` while it is
/// incomplete.
fn frame_len(buffer: &[u8]) -> Result<Option<usize>, NotResp> {
    let mut at = 0;
    // Values still missing from each aggregate being read, innermost last.
    let mut open: Vec<u64> = Vec::new();
    loop {
        let Some(&kind) = buffer.get(at) else {
            return Ok(None);
        };
        if !b"+-:_,#($!=*~>%|".contains(&kind) {
            return Err(NotResp);
        }
        let Some(end) = line_end(buffer, at + 1) else {
            return Ok(None);
        };
        let header = &buffer[at + 1..end];
        at = end + 2;
        match kind {
            b'+' | b'-' | b':' | b'_' | b',' | b'#' | b'(' => {}
            b'$' | b'!' | b'=' => {
                let len = number(header)?;
                if len >= 0 {
                    let len = usize::try_from(len).map_err(|_| NotResp)?;
                    let Some(stop) = at.checked_add(len).and_then(|stop| stop.checked_add(2))
                    else {
                        return Err(NotResp);
                    };
                    if buffer.len() < stop {
                        return Ok(None);
                    }
                    if &buffer[stop - 2..stop] != b"\r\n" {
                        return Err(NotResp);
                    }
                    at = stop;
                } else if len != -1 {
                    return Err(NotResp);
                }
            }
            b'*' | b'~' | b'>' | b'%' | b'|' => {
                let count = number(header)?;
                if count < -1 {
                    return Err(NotResp);
                }
                let count = u64::try_from(count).unwrap_or(0);
                let values = match kind {
                    b'%' => count.checked_mul(2),
                    // An attribute, then the value it annotates.
                    b'|' => count
                        .checked_mul(2)
                        .and_then(|values| values.checked_add(1)),
                    _ => Some(count),
                }
                .ok_or(NotResp)?;
                if values > 0 {
                    open.push(values);
                    continue;
                }
            }
            _ => return Err(NotResp),
        }
        // A value is complete: so are the aggregates it completes.
        loop {
            let Some(missing) = open.last_mut() else {
                return Ok(Some(at));
            };
            *missing -= 1;
            if *missing > 0 {
                break;
            }
            open.pop();
        }
    }
}

/// The index of the `\r` of the first CRLF at or after `from`.
fn line_end(buffer: &[u8], from: usize) -> Option<usize> {
    buffer
        .get(from..)?
        .windows(2)
        .position(|pair| pair == b"\r\n")
        .map(|offset| from + offset)
}

/// A length or count header.
fn number(header: &[u8]) -> Result<i64, NotResp> {
    std::str::from_utf8(header)
        .ok()
        .and_then(|text| text.parse().ok())
        .ok_or(NotResp)
}

/// The first command in `buffer`: its length, and its first words (`None`
/// for an empty command, which has no reply); `None` while it is
/// incomplete.
fn next_command(buffer: &[u8]) -> Result<Option<Command<'_>>, NotResp> {
    match buffer.first() {
        None => Ok(None),
        Some(b'*') => {
            let Some(len) = frame_len(buffer)? else {
                return Ok(None);
            };
            // Not bulk strings: Redis answers with an error, paired anyway.
            let words = array_strings(&buffer[..len], COMMAND_WORDS).unwrap_or_else(|| vec![b"?"]);
            Ok(Some((len, (!words.is_empty()).then_some(words))))
        }
        Some(_) => {
            let Some(newline) = buffer.iter().position(|&byte| byte == b'\n') else {
                return Ok(None);
            };
            let words: Vec<&[u8]> = buffer[..newline]
                .split(u8::is_ascii_whitespace)
                .filter(|word| !word.is_empty())
                .take(COMMAND_WORDS)
                .collect();
            Ok(Some((newline + 1, (!words.is_empty()).then_some(words))))
        }
    }
}

/// A command's length, and its first words (`None`: no reply is due).
type Command<'a> = (usize, Option<Vec<&'a [u8]>>);

/// How many of a command's first words rules look at.
const COMMAND_WORDS: usize = 4;

/// The first `most` elements of a complete array whose elements are strings
/// (bulk or simple); `None` if one of those is something else.
fn array_strings(frame: &[u8], most: usize) -> Option<Vec<&[u8]>> {
    let end = line_end(frame, 1)?;
    let count = number(&frame[1..end]).ok()?;
    let count = usize::try_from(count).unwrap_or(0).min(most);
    let mut at = end + 2;
    let mut strings = Vec::with_capacity(count);
    for _ in 0..count {
        let kind = *frame.get(at)?;
        let end = line_end(frame, at + 1)?;
        match kind {
            b'$' => {
                let len = usize::try_from(number(&frame[at + 1..end]).ok()?).ok()?;
                let start = end + 2;
                strings.push(frame.get(start..start.checked_add(len)?)?);
                at = start + len + 2;
            }
            b'+' => {
                strings.push(&frame[at + 1..end]);
                at = end + 2;
            }
            _ => return None,
        }
    }
    Some(strings)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The lengths of the complete values `stream` splits into, and what is
    /// left over.
    fn split(stream: &[u8]) -> (Vec<usize>, usize) {
        let mut lens = Vec::new();
        let mut at = 0;
        while let Some(len) = frame_len(&stream[at..]).unwrap() {
            lens.push(len);
            at += len;
        }
        (lens, stream.len() - at)
    }

    #[test]
    fn splits_resp2_replies() {
        let stream = b"+OK\r\n-ERR no\r\n:42\r\n$5\r\nhello\r\n$-1\r\n*-1\r\n*0\r\n$0\r\n\r\n";
        assert_eq!(split(stream), (vec![5, 9, 5, 11, 5, 5, 4, 6], 0));
    }

    #[test]
    fn bulk_strings_may_hold_crlf() {
        assert_eq!(split(b"$4\r\n\r\n\r\n\r\n:1\r\n"), (vec![10, 4], 0));
    }

    #[test]
    fn splits_nested_aggregates() {
        let nested = b"*3\r\n:1\r\n*2\r\n$1\r\na\r\n*1\r\n*-1\r\n*0\r\n";
        assert_eq!(split(nested), (vec![nested.len()], 0));
        // Every proper prefix is incomplete.
        for cut in 0..nested.len() {
            assert_eq!(frame_len(&nested[..cut]), Ok(None), "prefix of {cut}");
        }
    }

    #[test]
    fn splits_resp3_types() {
        let map = b"%2\r\n+a\r\n:1\r\n+b\r\n~2\r\n,1.5\r\n#t\r\n";
        let push = b">3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$1\r\nx\r\n";
        let attributed = b"|1\r\n+ttl\r\n:3\r\n(12345678901234567890\r\n";
        let others = b"_\r\n!3\r\nerr\r\n=7\r\ntxt:abc\r\n";
        let stream = [&map[..], push, attributed, others].concat();
        assert_eq!(
            split(&stream),
            (vec![map.len(), push.len(), attributed.len(), 3, 9, 13], 0)
        );
    }

    #[test]
    fn leaves_incomplete_values() {
        assert_eq!(split(b"+OK\r\n$10\r\nhalf"), (vec![5], 9));
        assert_eq!(split(b"*2\r\n:1\r\n"), (vec![], 8));
        assert_eq!(split(b"+OK\r"), (vec![], 4));
    }

    #[test]
    fn refuses_what_is_not_resp() {
        assert_eq!(frame_len(b"hello\r\n"), Err(NotResp));
        assert_eq!(frame_len(b"$3\r\nabcd\r\n"), Err(NotResp));
        assert_eq!(frame_len(b"$?\r\n;3\r\nabc\r\n;0\r\n"), Err(NotResp));
        assert_eq!(frame_len(b"*-2\r\n"), Err(NotResp));
    }

    #[test]
    fn reads_commands_and_inline_commands() {
        let (len, words) = next_command(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nv\r\n*1")
            .unwrap()
            .unwrap();
        assert_eq!(len, 27);
        assert_eq!(words.unwrap(), [&b"SET"[..], b"k", b"v"]);
        let (len, words) = next_command(b"PING  hi\r\nGET").unwrap().unwrap();
        assert_eq!((len, words.unwrap()), (10, vec![&b"PING"[..], b"hi"]));
        assert_eq!(next_command(b"\r\n").unwrap(), Some((2, None)));
        assert_eq!(next_command(b"*0\r\n").unwrap(), Some((4, None)));
        assert_eq!(next_command(b"*2\r\n$3\r\nGET\r\n").unwrap(), None);
        assert_eq!(next_command(b"PING").unwrap(), None);
    }

    #[test]
    fn matches_commands_and_scripts() {
        let words = |text: &'static str| -> Vec<&'static [u8]> {
            text.split(' ').map(str::as_bytes).collect()
        };
        let command = |name: &str| Match::Command(name.to_string());
        let script = |text: &str| Match::Script(text.to_string());
        assert!(Match::Any.selects(&words("PING")));
        assert!(command("get").selects(&words("GET k")));
        assert!(!command("GET").selects(&words("GETEX k")));
        assert!(command("script load").selects(&words("SCRIPT LOAD x")));
        assert!(!command("SCRIPT LOAD").selects(&words("SCRIPT FLUSH")));
        assert!(!command(" ").selects(&words("GET k")));
        assert!(script("ABC").selects(&words("evalsha abcdef 0")));
        assert!(!script("abd").selects(&words("EVALSHA abcdef 0")));
        assert!(script("incrby").selects(&words("EVAL return.redis.call('incrby') 0")));
        assert!(script("consume").selects(&words("FCALL_RO CONSUME 1 k")));
        assert!(!script("consume").selects(&words("GET consume")));
    }

    #[test]
    fn draws_are_reproducible_and_spread() {
        let draws = |seed| {
            let mut rng = XorShift::seeded(seed);
            (0..1000).map(|_| rng.next_unit()).collect::<Vec<_>>()
        };
        assert_eq!(draws(7), draws(7));
        assert_ne!(draws(7), draws(8));
        let below_half = draws(0).iter().filter(|&&draw| draw < 0.5).count();
        assert!((400..600).contains(&below_half), "{below_half}");
        assert!(draws(1).iter().all(|draw| (0.0..1.0).contains(draw)));
    }

    #[test]
    fn pub_sub_messages_answer_no_command_when_subscribed() {
        let message = b"*3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$1\r\nx\r\n";
        let confirmation = b"*3\r\n$9\r\nsubscribe\r\n$2\r\nch\r\n:1\r\n";
        let modes = Modes::default();
        assert!(!answers_no_command(message, &modes));
        assert!(answers_no_command(b">2\r\n+a\r\n+b\r\n", &modes));
        modes.subscribed.store(true, Ordering::SeqCst);
        assert!(answers_no_command(message, &modes));
        assert!(answers_no_command(confirmation, &modes));
        assert!(!answers_no_command(
            b"*2\r\n$4\r\npong\r\n$0\r\n\r\n",
            &modes
        ));
        modes.resp3.store(true, Ordering::SeqCst);
        assert!(!answers_no_command(message, &modes));
    }
}
