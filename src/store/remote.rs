//! Tenant snapshots read through from Redis: a moka cache of parsed
//! snapshots bounded by weight, one Redis read per miss however many requests
//! wait for it, invalidation by pub/sub, and stale service through outages.
//!
//! Freshness: a cached snapshot is *confirmed* when it was read, and again by
//! every heartbeat on the invalidation subscription that was up when it was
//! read (Redis delivers a message published before the heartbeat's `PING`
//! before its `PONG`). Its age is the time since its last confirmation. After
//! a reconnect every cached snapshot is revalidated (a cheap read that does
//! not resend an unchanged snapshot) before it serves as current again.
//!
//! The heartbeat runs every [`HEARTBEAT`] while snapshots are looked up, and
//! every [`IDLE_HEARTBEAT`] once a whole interval passed without a lookup,
//! so that an idle sidecar seldom wakes (each wake costs the pod CPU). While
//! it runs at the idle pace, a cached snapshot serves as current only while
//! the subscription was confirmed within two busy heartbeats and the Redis
//! timeout; the first lookup after an idle spell, finding the confirmation
//! older, reads Redis (a revalidation) and brings the next heartbeat
//! forward, which makes it busy again once answered.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use moka::ops::compute::{CompResult, Op};
use moka::sync::Cache;
use tokio::sync::watch;
use tracing::{debug, info, warn};

use super::redis_client::{
    self, is_connection_failure, Read, RedisConn, RedisFailure, RedisSettings,
};
use super::{Lookup, Store};
use tollgate_engine::PolicySnapshot;
use tollgate_engine::{SnapshotSource, TenantSnapshot};

/// Documents larger than this (about 25 entities, half a millisecond of
/// parsing) are parsed on the blocking pool, off the threads that serve
/// requests.
const PARSE_INLINE_MAX_BYTES: usize = 4 * 1024;

/// Memory of a cache entry besides what [`TenantSnapshot::memory_bytes`]
/// counts, in bytes (weigher): the key, the `Entry`, moka's bookkeeping and
/// the allocator's rounding. Measured as the resident memory per cached
/// tenant less the snapshot's estimate: 750 to 1,170 bytes for tenants of
/// 20 entities (`benches/memory.md`).
const ENTRY_OVERHEAD_BYTES: u64 = 1024;

/// Longest wait for the parse of a tenant's first snapshot once Redis has
/// answered (there is nothing else to decide with).
const FIRST_PARSE_WAIT: Duration = Duration::from_secs(30);

/// How the cache behaves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheSettings {
    /// Upper bound on the total weight of cached snapshots, in bytes.
    pub max_bytes: u64,
    /// A cached snapshot older than this (since it was read) is read again on
    /// its next use, even when no invalidation said so: the safety net for a
    /// lost message.
    pub ttl: Duration,
    /// How long after its last confirmation a cached snapshot may still serve
    /// (marked STALE) while Redis cannot be reached.
    pub max_stale: Duration,
    /// Interval of the heartbeat on the invalidation subscription.
    pub heartbeat: Duration,
    /// Its interval after one without lookups.
    pub idle_heartbeat: Duration,
}

/// Interval of the heartbeat on the invalidation subscription.
pub const HEARTBEAT: Duration = Duration::from_millis(250);

/// Interval of the heartbeat once an interval passed without a lookup.
pub const IDLE_HEARTBEAT: Duration = Duration::from_secs(4);

impl Default for CacheSettings {
    /// The configuration's defaults (`cache_max_bytes`, `cache_ttl_ms`,
    /// `max_stale_ms`).
    fn default() -> Self {
        use crate::config_keys::{millis, number};
        Self {
            max_bytes: number("cache_max_bytes"),
            ttl: millis("cache_ttl_ms"),
            max_stale: millis("max_stale_ms"),
            heartbeat: HEARTBEAT,
            idle_heartbeat: IDLE_HEARTBEAT,
        }
    }
}

/// What is cached for a tenant.
#[derive(Clone)]
enum Content {
    /// A valid snapshot.
    Present(Arc<TenantSnapshot>),
    /// Redis holds no snapshot for the tenant.
    Absent,
    /// Redis holds a snapshot that does not validate; the last good one, if
    /// any, is kept to serve as stale, aged from when a valid version was
    /// last confirmed (rereading the broken one confirms nothing).
    Broken {
        error: String,
        previous: Option<Arc<TenantSnapshot>>,
        valid_confirmed_at: Instant,
    },
}

struct Entry {
    content: Content,
    /// The tenant's version high-water mark when read.
    version: u64,
    /// Schema the content was validated against.
    schema_version: String,
    /// When Redis last answered for it.
    read_at: Instant,
    /// The subscription epoch that was up when it was read, if one was.
    epoch: Option<u64>,
    /// An invalidation announced a version at least as new as this one.
    invalidated: AtomicBool,
    /// Weight in the cache.
    weight: u32,
}

impl Entry {
    /// Orders reads of one tenant: a higher version is newer, and at the
    /// same version a delete follows the snapshot it deleted.
    fn rank(&self) -> (u64, u8) {
        (
            self.version,
            u8::from(matches!(self.content, Content::Absent)),
        )
    }

    fn serving(&self) -> Option<&Arc<TenantSnapshot>> {
        match &self.content {
            Content::Present(snapshot) => Some(snapshot),
            Content::Broken { previous, .. } => previous.as_ref(),
            Content::Absent => None,
        }
    }
}

/// State of the invalidation subscription.
struct Link {
    up: AtomicBool,
    /// Incremented every time the subscription is (re)established.
    epoch: AtomicU64,
    /// Nanoseconds since `base` at which the last answered heartbeat was sent.
    confirmed_through: AtomicU64,
    base: Instant,
    /// Brings the next heartbeat forward: a lookup found the last
    /// confirmation too old to serve from the cache.
    wake: tokio::sync::Notify,
    /// Whether the last confirmed heartbeat chose the idle interval.
    idle: AtomicBool,
}

impl Link {
    fn now_nanos(&self) -> u64 {
        u64::try_from(self.base.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// Time since the sending of the last answered heartbeat.
    fn since_confirmed(&self) -> Duration {
        let confirmed = Duration::from_nanos(self.confirmed_through.load(Ordering::Acquire));
        self.base.elapsed().saturating_sub(confirmed)
    }
}

/// Counters of the Redis source, read by the metrics endpoint.
#[derive(Debug, Default)]
pub struct RemoteStats {
    /// Lookups answered from the cache.
    pub hits: AtomicU64,
    /// Lookups that found nothing cached.
    pub misses: AtomicU64,
    /// Lookups that found a cached snapshot needing revalidation.
    pub revalidations: AtomicU64,
    /// Snapshot reads sent to Redis.
    pub reads: AtomicU64,
    /// Lookups answered with a stale snapshot.
    pub stale: AtomicU64,
    /// Lookups answered `entitlements_unavailable`.
    pub unavailable: AtomicU64,
    /// Entries evicted for size or age.
    pub evictions: AtomicU64,
    /// Failed Redis calls.
    pub errors: AtomicU64,
    /// Times the invalidation subscription was re-established after a loss.
    pub reconnects: AtomicU64,
    /// Invalidation messages received.
    pub invalidations: AtomicU64,
    /// Snapshots that Redis returned but that failed validation.
    pub rejected: AtomicU64,
}

impl RemoteStats {
    /// Lookups so far: hits, misses and revalidations.
    fn lookups(&self) -> u64 {
        self.hits.load(Ordering::Relaxed)
            + self.misses.load(Ordering::Relaxed)
            + self.revalidations.load(Ordering::Relaxed)
    }
}

/// A point-in-time view of the source, for status and metrics.
#[derive(Debug, Clone)]
pub struct RemoteStatus {
    /// The invalidation subscription is up.
    pub connected: bool,
    /// Cached tenants.
    pub entries: u64,
    /// Total weight of the cache, in bytes.
    pub weighted_bytes: u64,
    /// Age of the oldest cached snapshot, since it was last confirmed.
    pub oldest_age: Option<Duration>,
}

/// Where a read stands.
#[derive(Clone)]
enum FlightState {
    /// Waiting for Redis.
    Reading,
    /// Redis answered; the document is being parsed.
    Parsing,
    /// Finished: the entry cached for the tenant afterwards, or `None` when
    /// Redis could not answer.
    Done(Option<Arc<Entry>>),
}

struct Flight {
    done: watch::Receiver<FlightState>,
    /// Highest version announced for the tenant while the read ran.
    announced: Option<u64>,
}

/// The Redis source of tenant snapshots.
pub struct RemoteSnapshots {
    settings: RedisSettings,
    cache_settings: CacheSettings,
    conn: OnceLock<RedisConn>,
    cache: Cache<String, Arc<Entry>>,
    flights: Mutex<HashMap<String, Flight>>,
    link: Link,
    store: Arc<Store>,
    stats: Arc<RemoteStats>,
}

impl std::fmt::Debug for RemoteSnapshots {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteSnapshots")
            .field("settings", &self.settings)
            .field("cache_settings", &self.cache_settings)
            .finish_non_exhaustive()
    }
}

impl RemoteSnapshots {
    /// A source reading from Redis; call [`RemoteSnapshots::start`] to connect.
    pub fn new(
        settings: RedisSettings,
        cache_settings: CacheSettings,
        store: Arc<Store>,
    ) -> Arc<Self> {
        let stats = Arc::new(RemoteStats::default());
        let evictions = Arc::clone(&stats);
        let cache = Cache::builder()
            .max_capacity(cache_settings.max_bytes)
            .weigher(|_tenant: &String, entry: &Arc<Entry>| entry.weight)
            .time_to_live(cache_settings.ttl + cache_settings.max_stale)
            .eviction_listener(move |_tenant, _entry, cause| {
                if cause.was_evicted() {
                    evictions.evictions.fetch_add(1, Ordering::Relaxed);
                }
            })
            .build();
        Arc::new(Self {
            settings,
            cache_settings,
            conn: OnceLock::new(),
            cache,
            flights: Mutex::new(HashMap::new()),
            link: Link {
                up: AtomicBool::new(false),
                epoch: AtomicU64::new(0),
                confirmed_through: AtomicU64::new(0),
                base: Instant::now(),
                wake: tokio::sync::Notify::new(),
                idle: AtomicBool::new(false),
            },
            store,
            stats,
        })
    }

    /// Connects and subscribes in the background, reconnecting with backoff
    /// for as long as the returned task runs. Returns once the first attempt
    /// has succeeded or failed, so that a reachable Redis serves at once.
    pub async fn start(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let (first_tx, mut first_rx) = watch::channel(false);
        let this = Arc::clone(self);
        let task = tokio::spawn(async move { this.run_link(first_tx).await });
        let _ = first_rx.wait_for(|attempted| *attempted).await;
        task
    }

    /// Counters for the metrics endpoint.
    pub fn stats(&self) -> &Arc<RemoteStats> {
        &self.stats
    }

    /// The settings it reads with.
    pub fn settings(&self) -> &RedisSettings {
        &self.settings
    }

    /// The command connection, once connected.
    pub fn connection(&self) -> Option<&RedisConn> {
        self.conn.get()
    }

    /// Whether the invalidation subscription is up.
    pub fn connected(&self) -> bool {
        self.link.up.load(Ordering::Acquire)
    }

    /// A view of the cache and connection.
    pub fn status(&self) -> RemoteStatus {
        self.cache.run_pending_tasks();
        let oldest_age = self
            .cache
            .iter()
            .filter(|(_, entry)| entry.serving().is_some())
            .map(|(_, entry)| self.age(&entry))
            .max();
        RemoteStatus {
            connected: self.connected(),
            entries: self.cache.entry_count(),
            weighted_bytes: self.cache.weighted_size(),
            oldest_age,
        }
    }

    /// Time since the entry was last confirmed current; for a broken one,
    /// since the valid snapshot it keeps was.
    fn age(&self, entry: &Entry) -> Duration {
        if let Content::Broken {
            valid_confirmed_at, ..
        } = &entry.content
        {
            return valid_confirmed_at.elapsed();
        }
        let read = entry.read_at.elapsed();
        if entry.epoch == Some(self.link.epoch.load(Ordering::Acquire)) {
            read.min(self.link.since_confirmed())
        } else {
            read
        }
    }

    /// Whether the entry may serve as current without asking Redis.
    fn is_current(
        &self,
        entry: &Entry,
        policies: &PolicySnapshot,
        max_staleness: Option<Duration>,
    ) -> bool {
        self.link.up.load(Ordering::Acquire)
            && !entry.invalidated.load(Ordering::Acquire)
            && entry.epoch == Some(self.link.epoch.load(Ordering::Acquire))
            && entry.schema_version == policies.schema_version
            && entry.read_at.elapsed() < self.cache_settings.ttl
            && self.confirmed_recently()
            && max_staleness.is_none_or(|max| self.age(entry) <= max)
    }

    /// Whether the subscription was confirmed recently enough for a cached
    /// snapshot to serve as current: always while the heartbeat runs at its
    /// busy pace (as before it slowed when idle); while it runs at its idle
    /// pace, within two busy heartbeats and the Redis timeout. A lookup at
    /// the idle pace brings the next heartbeat forward: lookups have
    /// resumed, and the heartbeat is busy again once that one is answered.
    fn confirmed_recently(&self) -> bool {
        if !self.link.idle.load(Ordering::Acquire) {
            return true;
        }
        self.link.wake.notify_one();
        let bound = self.cache_settings.heartbeat * 2 + self.settings.timeout;
        self.link.since_confirmed() <= bound
    }

    /// Finds `tenant`'s snapshot: from the cache when it is current, from
    /// Redis otherwise, stale from the cache when Redis cannot answer.
    pub async fn lookup(
        self: &Arc<Self>,
        tenant: &str,
        policies: &Arc<PolicySnapshot>,
        max_staleness: Option<Duration>,
    ) -> Lookup {
        let cached = self.cache.get(tenant);
        if let Some(entry) = &cached {
            if self.is_current(entry, policies, max_staleness) {
                self.stats.hits.fetch_add(1, Ordering::Relaxed);
                return self.answer(entry, SnapshotSource::Cache, max_staleness);
            }
            self.stats.revalidations.fetch_add(1, Ordering::Relaxed);
        } else {
            self.stats.misses.fetch_add(1, Ordering::Relaxed);
        }
        if self.link.up.load(Ordering::Acquire) {
            let fallback = cached
                .as_ref()
                .is_some_and(|entry| entry.serving().is_some());
            // Boxed: the read's state would otherwise be carried by every
            // `Check` future, cache hits included (see `DecisionService::check`).
            let fetched = Box::pin(self.fetch(tenant, policies, max_staleness, fallback)).await;
            if let Some(entry) = fetched {
                let source = if cached.as_ref().is_some_and(|c| Arc::ptr_eq(c, &entry)) {
                    SnapshotSource::Cache
                } else {
                    SnapshotSource::Redis
                };
                return self.answer(&entry, source, max_staleness);
            }
        }
        self.stale(cached.as_deref(), max_staleness)
    }

    fn answer(
        &self,
        entry: &Entry,
        source: SnapshotSource,
        max_staleness: Option<Duration>,
    ) -> Lookup {
        match &entry.content {
            Content::Present(snapshot) => Lookup::Found {
                snapshot: Arc::clone(snapshot),
                source,
                age: self.age(entry),
            },
            Content::Absent => Lookup::Unknown,
            Content::Broken { error, .. } => {
                debug!(tenant = entry.serving().map_or("", |s| s.tenant.as_str()), error = %error, "the stored snapshot is invalid; serving the last good one as stale");
                self.stale(Some(entry), max_staleness)
            }
        }
    }

    /// Serves a cached snapshot as stale when it was confirmed recently
    /// enough; `entitlements_unavailable` otherwise.
    fn stale(&self, entry: Option<&Entry>, max_staleness: Option<Duration>) -> Lookup {
        let limit = max_staleness.map_or(self.cache_settings.max_stale, |max| {
            max.min(self.cache_settings.max_stale)
        });
        if let Some(entry) = entry {
            if let Some(snapshot) = entry.serving() {
                let age = self.age(entry);
                if age <= limit {
                    self.stats.stale.fetch_add(1, Ordering::Relaxed);
                    return Lookup::Found {
                        snapshot: Arc::clone(snapshot),
                        source: SnapshotSource::Stale,
                        age,
                    };
                }
            }
        }
        self.stats.unavailable.fetch_add(1, Ordering::Relaxed);
        Lookup::Unavailable
    }

    /// Reads the tenant from Redis, once however many callers ask at the same
    /// time. `None` when Redis could not answer in time. With a `fallback`
    /// (a previous snapshot that can serve as stale) the wait is bounded by
    /// the Redis timeout, parsing included; without one, a document Redis
    /// returned in time is waited for until it is parsed.
    async fn fetch(
        self: &Arc<Self>,
        tenant: &str,
        policies: &Arc<PolicySnapshot>,
        max_staleness: Option<Duration>,
        fallback: bool,
    ) -> Option<Arc<Entry>> {
        let mut done = {
            let mut flights = self.lock_flights();
            match flights.get(tenant) {
                Some(flight) => flight.done.clone(),
                None => {
                    // A read that finished a moment ago has already cached
                    // its answer (before leaving the table).
                    if let Some(entry) = self.cache.get(tenant) {
                        if self.is_current(&entry, policies, max_staleness) {
                            return Some(entry);
                        }
                    }
                    let (tx, rx) = watch::channel(FlightState::Reading);
                    flights.insert(
                        tenant.to_string(),
                        Flight {
                            done: rx.clone(),
                            announced: None,
                        },
                    );
                    let this = Arc::clone(self);
                    let tenant = tenant.to_string();
                    let policies = Arc::clone(policies);
                    tokio::spawn(async move { this.read(tenant, policies, tx).await });
                    rx
                }
            }
        };
        let timeout = self.settings.timeout;
        let started = Instant::now();
        // A little over the Redis timeout: the read itself gives up at it.
        let read_wait = timeout + Duration::from_millis(20);
        let state = match tokio::time::timeout(
            read_wait,
            done.wait_for(|state| !matches!(state, FlightState::Reading)),
        )
        .await
        {
            Ok(Ok(state)) => state.clone(),
            _ => return None,
        };
        let state = match state {
            FlightState::Parsing => {
                let parse_wait = if fallback {
                    read_wait.saturating_sub(started.elapsed())
                } else {
                    FIRST_PARSE_WAIT
                };
                match tokio::time::timeout(
                    parse_wait,
                    done.wait_for(|state| matches!(state, FlightState::Done(_))),
                )
                .await
                {
                    Ok(Ok(state)) => state.clone(),
                    _ => return None,
                }
            }
            other => other,
        };
        match state {
            FlightState::Done(answer) => answer,
            FlightState::Reading | FlightState::Parsing => None,
        }
    }

    fn lock_flights(&self) -> std::sync::MutexGuard<'_, HashMap<String, Flight>> {
        self.flights
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// One read of one tenant; caches what it finds (never replacing a newer
    /// answer) and wakes the waiters.
    async fn read(
        self: Arc<Self>,
        tenant: String,
        policies: Arc<PolicySnapshot>,
        done: watch::Sender<FlightState>,
    ) {
        let epoch = self
            .link
            .up
            .load(Ordering::Acquire)
            .then(|| self.link.epoch.load(Ordering::Acquire));
        let previous = self.cache.get(&tenant);
        let entry = match self.conn.get() {
            Some(conn) => {
                self.read_entry(conn, &tenant, &policies, previous.as_deref(), epoch, &done)
                    .await
            }
            None => None,
        };
        let answer = {
            let mut flights = self.lock_flights();
            let announced = flights.remove(&tenant).and_then(|flight| flight.announced);
            entry.map(|entry| {
                if announced.is_some_and(|version| invalidates(&entry, version)) {
                    entry.invalidated.store(true, Ordering::Release);
                }
                let entry = Arc::new(entry);
                let result = self
                    .cache
                    .entry(tenant.clone())
                    .and_compute_with(|existing| match existing {
                        Some(existing) if existing.value().rank() > entry.rank() => Op::Nop,
                        _ => Op::Put(Arc::clone(&entry)),
                    });
                match result {
                    CompResult::Unchanged(kept) => kept.into_value(),
                    _ => entry,
                }
            })
        };
        done.send_replace(FlightState::Done(answer));
    }

    async fn read_entry(
        &self,
        conn: &RedisConn,
        tenant: &str,
        policies: &Arc<PolicySnapshot>,
        previous: Option<&Entry>,
        epoch: Option<u64>,
        progress: &watch::Sender<FlightState>,
    ) -> Option<Entry> {
        // An unchanged snapshot is not sent again, unless the schema changed
        // and it has to be parsed anew.
        let known = previous
            .filter(|p| p.schema_version == policies.schema_version)
            .filter(|p| !matches!(p.content, Content::Absent))
            .map(|p| p.version);
        self.stats.reads.fetch_add(1, Ordering::Relaxed);
        let read = match conn.read_snapshot(tenant, known).await {
            Ok(read) => read,
            Err(error) => {
                self.note_failure(&error);
                warn!(tenant, error = %error, "snapshot read failed");
                return None;
            }
        };
        let read_at = Instant::now();
        let schema_version = policies.schema_version.clone();
        // The weight is the memory the entry holds: its snapshot (the one
        // serving, for a broken one), the error, the entry itself.
        let entry = |content: Content, version: u64| {
            let held = match &content {
                Content::Present(snapshot) => snapshot.memory_bytes(),
                Content::Broken {
                    error, previous, ..
                } => error.len() + previous.as_ref().map_or(0, |p| p.memory_bytes()),
                Content::Absent => 0,
            };
            Entry {
                content,
                version,
                schema_version: schema_version.clone(),
                read_at,
                epoch,
                invalidated: AtomicBool::new(false),
                weight: u32::try_from((held as u64).saturating_add(ENTRY_OVERHEAD_BYTES))
                    .unwrap_or(u32::MAX),
            }
        };
        match read {
            Read::Unchanged { version } => {
                let previous = previous?;
                Some(Entry {
                    read_at,
                    epoch,
                    version,
                    schema_version: schema_version.clone(),
                    content: previous.content.clone(),
                    invalidated: AtomicBool::new(false),
                    weight: previous.weight,
                })
            }
            Read::Absent { version } => Some(entry(Content::Absent, version.unwrap_or(0))),
            Read::Document { version, bytes } => {
                progress.send_replace(FlightState::Parsing);
                let size = bytes.len() as u64;
                let parsed = if bytes.len() > PARSE_INLINE_MAX_BYTES {
                    let policies = Arc::clone(policies);
                    let tenant = tenant.to_string();
                    tokio::task::spawn_blocking(move || {
                        TenantSnapshot::parse(
                            &bytes,
                            Some(&tenant),
                            &policies,
                            SnapshotSource::Redis,
                        )
                    })
                    .await
                    .ok()?
                } else {
                    TenantSnapshot::parse(&bytes, Some(tenant), policies, SnapshotSource::Redis)
                };
                match parsed {
                    Ok(snapshot) => {
                        let version = version.unwrap_or(0).max(snapshot.version);
                        debug!(tenant, version, bytes = size, "snapshot read from redis");
                        Some(entry(Content::Present(Arc::new(snapshot)), version))
                    }
                    Err(error) => {
                        self.stats.rejected.fetch_add(1, Ordering::Relaxed);
                        warn!(tenant, error = %error, "snapshot in redis rejected; keeping the last good one as stale");
                        // The kept snapshot ages from its own last
                        // confirmation, not from this read.
                        let valid_confirmed_at = match previous.map(|p| (&p.content, p)) {
                            Some((
                                Content::Broken {
                                    valid_confirmed_at, ..
                                },
                                _,
                            )) => *valid_confirmed_at,
                            Some((Content::Present(_), p)) => {
                                read_at.checked_sub(self.age(p)).unwrap_or(p.read_at)
                            }
                            Some((Content::Absent, _)) | None => read_at,
                        };
                        let previous = previous.and_then(Entry::serving).cloned();
                        Some(entry(
                            Content::Broken {
                                error: error.to_string(),
                                previous,
                                valid_confirmed_at,
                            },
                            version.unwrap_or(0),
                        ))
                    }
                }
            }
        }
    }

    fn note_failure(&self, error: &RedisFailure) {
        // The subscription's heartbeat decides whether Redis is down; one
        // failed read only fails this read.
        self.stats.errors.fetch_add(1, Ordering::Relaxed);
        if !is_connection_failure(error) {
            warn!(error = %error, "redis answered a snapshot read with an error");
        }
    }

    /// Applies an invalidation `<tenant> <version>`: the cached snapshot (and
    /// a read in flight) is marked for a new read, which starts at once.
    fn invalidate(self: &Arc<Self>, tenant: &str, version: u64) {
        self.stats.invalidations.fetch_add(1, Ordering::Relaxed);
        let mut refresh = false;
        {
            let mut flights = self.lock_flights();
            if let Some(flight) = flights.get_mut(tenant) {
                flight.announced = Some(flight.announced.map_or(version, |v| v.max(version)));
            }
            if let Some(entry) = self.cache.get(tenant) {
                if invalidates(&entry, version) {
                    entry.invalidated.store(true, Ordering::Release);
                    refresh = true;
                }
            }
        }
        debug!(tenant, version, refresh, "invalidation received");
        if refresh {
            if let Some(catalog) = self.store.catalog() {
                let this = Arc::clone(self);
                let tenant = tenant.to_string();
                tokio::spawn(async move {
                    let _ = this.fetch(&tenant, &catalog.policies, None, true).await;
                });
            }
        }
    }

    /// Keeps the connection and the invalidation subscription up, with
    /// backoff, for as long as the task runs.
    async fn run_link(self: Arc<Self>, first: watch::Sender<bool>) {
        let mut backoff = Duration::from_millis(50);
        let mut lost_once = false;
        loop {
            if self.conn.get().is_none() {
                match RedisConn::connect(&self.settings).await {
                    Ok(conn) => {
                        let _ = self.conn.set(conn);
                    }
                    Err(error) => {
                        warn!(error = %error, retry_in_ms = backoff.as_millis(), "cannot connect to redis");
                        self.stats.errors.fetch_add(1, Ordering::Relaxed);
                        let _ = first.send(true);
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(2));
                        continue;
                    }
                }
            }
            match redis_client::subscribe(&self.settings).await {
                Ok(pubsub) => {
                    backoff = Duration::from_millis(50);
                    let epoch = self.link.epoch.fetch_add(1, Ordering::AcqRel) + 1;
                    self.link
                        .confirmed_through
                        .store(self.link.now_nanos(), Ordering::Release);
                    self.link.up.store(true, Ordering::Release);
                    if lost_once {
                        self.stats.reconnects.fetch_add(1, Ordering::Relaxed);
                        info!(
                            epoch,
                            "redis reachable again; cached snapshots will be revalidated"
                        );
                    } else {
                        info!("subscribed to redis invalidations");
                    }
                    let _ = first.send(true);
                    let error = self.listen(pubsub).await;
                    self.link.up.store(false, Ordering::Release);
                    self.stats.errors.fetch_add(1, Ordering::Relaxed);
                    warn!(error = %error, "lost the redis invalidation subscription; serving cached snapshots as stale");
                    lost_once = true;
                }
                Err(error) => {
                    self.stats.errors.fetch_add(1, Ordering::Relaxed);
                    debug!(error = %error, retry_in_ms = backoff.as_millis(), "cannot subscribe to redis invalidations");
                    lost_once = true;
                    let _ = first.send(true);
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
            }
        }
    }

    /// Applies messages and heartbeats until the subscription fails.
    async fn listen(self: &Arc<Self>, pubsub: redis::aio::PubSub) -> RedisFailure {
        use tokio_stream::StreamExt as _;
        let (mut sink, mut stream) = pubsub.split();
        let busy = self.cache_settings.heartbeat;
        let idle = self.cache_settings.idle_heartbeat.max(busy);
        // The first heartbeat at once: it confirms the new subscription.
        let heartbeat = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(heartbeat);
        let mut lookups = self.stats.lookups();
        loop {
            tokio::select! {
                message = stream.next() => {
                    let Some(message) = message else {
                        return RedisFailure::Closed;
                    };
                    self.apply(&message);
                }
                () = self.link.wake.notified() => {
                    heartbeat.as_mut().reset(tokio::time::Instant::now());
                }
                () = &mut heartbeat => {
                    let looked_up = self.stats.lookups();
                    let every = if looked_up == lookups { idle } else { busy };
                    lookups = looked_up;
                    heartbeat.as_mut().reset(tokio::time::Instant::now() + every);
                    let sent = self.link.now_nanos();
                    let timeout = self.settings.timeout;
                    match tokio::time::timeout(timeout, sink.ping::<redis::Value>()).await {
                        Ok(Ok(_)) => {
                            // Messages published before the PING have arrived
                            // by now: apply them before confirming.
                            while let Some(Some(message)) = futures_now(stream.next()) {
                                self.apply(&message);
                            }
                            self.link.confirmed_through.fetch_max(sent, Ordering::AcqRel);
                            // Busy again only once confirmed: until then a
                            // lookup after an idle spell revalidates.
                            self.link.idle.store(every > busy, Ordering::Release);
                            if !self.link.up.swap(true, Ordering::AcqRel) {
                                info!("redis answering again");
                            }
                        }
                        Ok(Err(error)) => return RedisFailure::Redis(error),
                        Err(_) => return RedisFailure::Timeout(timeout),
                    }
                }
            }
        }
    }

    fn apply(self: &Arc<Self>, message: &redis::Msg) {
        match redis_client::parse_invalidation(message.get_payload_bytes()) {
            Some((tenant, version)) => self.invalidate(tenant, version),
            None => warn!(
                payload = %String::from_utf8_lossy(message.get_payload_bytes()),
                "ignoring malformed invalidation message (expected `<tenant> <version>`)"
            ),
        }
    }
}

/// Whether an announcement of `version` makes `entry` out of date: a newer
/// version always does; the same version does unless the entry already shows
/// the tenant deleted (a delete announces the version it removed).
fn invalidates(entry: &Entry, version: u64) -> bool {
    version > entry.version
        || (version == entry.version && !matches!(entry.content, Content::Absent))
}

/// Polls a future once: its output if it is ready now.
fn futures_now<F: std::future::Future>(future: F) -> Option<F::Output> {
    let waker = std::task::Waker::noop();
    let mut context = std::task::Context::from_waker(waker);
    let mut future = std::pin::pin!(future);
    match future.as_mut().poll(&mut context) {
        std::task::Poll::Ready(output) => Some(output),
        std::task::Poll::Pending => None,
    }
}
