//! Lease mode: a sidecar reserves a block of a meter's units from Redis (never
//! past the limit) and grants consumptions from it locally, writing their
//! usage events with its next reservation or return.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::period::expire_at;
use super::{counter_key, Consumed, Consumption, FirstAnswer, MeterSpec, Metering};
use crate::store::redis_client::scripts::{
    GaveBack, GiveBackMode, LeaseGiveBack, LeaseReserve, Reserved, UsageEvent,
};
use crate::store::redis_client::{RedisConn, RedisFailure};

/// Leases by tenant, then meter. Nested so that a lookup borrows the
/// request's strings instead of allocating a key.
pub(super) type LeaseTable =
    std::collections::HashMap<String, std::collections::HashMap<String, Arc<LeaseSlot>>>;

/// One meter's lease: its state, and the lock of its Redis calls.
#[derive(Debug, Default)]
pub(super) struct LeaseSlot {
    /// Stock, counter and pending events. Held only for bookkeeping, never
    /// across a Redis call, so grants from stock go on while a reservation is
    /// under way.
    state: std::sync::Mutex<Lease>,
    /// Held across a reservation or a return: one Redis call at a time per
    /// lease.
    calls: tokio::sync::Mutex<()>,
}

impl LeaseSlot {
    fn state(&self) -> std::sync::MutexGuard<'_, Lease> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Units a sidecar reserved from a meter's counter and grants locally.
#[derive(Debug, Default)]
struct Lease {
    /// Start (Unix ms) of the counter window the units were reserved in;
    /// `None` before the first reservation and while what was held in an
    /// earlier window or under an earlier limit goes back.
    window_start: Option<i64>,
    /// That window's id (in the counter's key).
    window: String,
    /// Tenant of the lease.
    tenant: String,
    /// The meter.
    meter: Option<MeterSpec>,
    /// Units reserved and not yet granted.
    stock: i64,
    /// The counter (all sidecars' reservations) after the last reservation.
    counter: i64,
    /// The last reservation found no room: the stock is not topped up early
    /// (a request the stock cannot cover still asks Redis).
    exhausted: bool,
    /// When unspent units go back.
    expires: Option<std::time::Instant>,
    /// Granted consumptions not yet in the usage stream.
    events: Vec<LeaseEvent>,
    /// A Redis step whose outcome is not known (its reply was lost or late):
    /// it is sent again, under its operation id, before anything else, so
    /// that it counts once whether or not Redis ran it.
    unsettled: Option<Unsettled>,
    /// The stock last recorded in Redis (what a crash would give back).
    flushed_stock: Option<i64>,
    /// When it was last written to Redis.
    flushed_at: Option<std::time::Instant>,
    /// When another sidecar's lease of the meter expires: this lease is
    /// written then, so that a dead sidecar's stock comes back at once.
    reclaim_at: Option<std::time::Instant>,
}

/// A lease step sent to Redis whose outcome is not known.
#[derive(Debug)]
enum Unsettled {
    /// A reservation (with the events it carried).
    Reserve {
        op: String,
        meter: MeterSpec,
        tenant: String,
        window: String,
        window_start: i64,
        end: Option<i64>,
        block: i64,
        needed: i64,
        held: i64,
        sent: std::time::Instant,
        events: Vec<LeaseEvent>,
    },
    /// A return of unspent units, or a flush of the stock, and events.
    GiveBack {
        op: String,
        meter: MeterSpec,
        tenant: String,
        window: String,
        stock: i64,
        mode: GiveBackMode,
        events: Vec<LeaseEvent>,
    },
}

/// What sending an unsettled step again answered.
enum Settled {
    Reserved(Reserved),
    GaveBack(GaveBack),
}

/// How long Redis remembers a lease operation's outcome: far longer than a
/// lost reply takes to be noticed and the step sent again.
const OPERATION_TTL_MS: u64 = 60 * 60 * 1000;

impl Lease {
    /// Whether the lease holds units of `meter`'s window starting at `start`
    /// under its current limit.
    /// A lease past its expiry grants nothing more: by then its stock may
    /// be reclaimed for the other sidecars (it expires in Redis no sooner).
    fn current(&self, meter: &MeterSpec, start: i64) -> bool {
        self.expires
            .is_none_or(|expires| std::time::Instant::now() < expires)
            && self.window_start == Some(start)
            && self
                .meter
                .as_ref()
                .is_some_and(|held| held.limit == meter.limit && held.lease == meter.lease)
    }
}

/// What is taken out of a lease to go back to Redis (restored if the call
/// fails).
#[derive(Debug)]
struct Returning {
    window_start: Option<i64>,
    window: String,
    tenant: String,
    meter: MeterSpec,
    stock: i64,
    counter: i64,
    expires: Option<std::time::Instant>,
    events: Vec<LeaseEvent>,
}

/// A granted consumption not yet in the usage stream.
type LeaseEvent = UsageEvent;

/// Most usage events one script writes: a script runs alone in Redis, so a
/// long one would hold up every other client. A lease with more pending
/// writes them in several calls.
const MAX_EVENTS_PER_CALL: usize = 1_000;

/// The stock below which a lease of `block` units reserves the next block
/// while it still grants (a quarter of a block).
fn low_water(block: i64) -> i64 {
    block / 4
}

impl Metering {
    fn lease(&self, tenant: &str, meter: &str) -> Arc<LeaseSlot> {
        let mut leases = self
            .leases
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(lease) = leases.get(tenant).and_then(|meters| meters.get(meter)) {
            return Arc::clone(lease);
        }
        self.leasing
            .send_if_modified(|leasing| !std::mem::replace(leasing, true));
        Arc::clone(
            leases
                .entry(tenant.to_string())
                .or_default()
                .entry(meter.to_string())
                .or_default(),
        )
    }

    /// The first answer this sidecar gave to a lease-mode key, if any.
    pub fn lease_answer(&self, tenant: &str, key: &str) -> Option<FirstAnswer> {
        self.lease_answers.get(tenant, key)
    }

    /// Units used of a lease-mode meter as the lease this sidecar holds
    /// knows them, when it holds a current one.
    pub(super) fn held_lease_count(
        &self,
        tenant: &str,
        meter: &MeterSpec,
        now_ms: i64,
    ) -> Option<i64> {
        let (start, _) = meter.period.bounds(now_ms);
        let slot = self.lease(tenant, &meter.id);
        let lease = slot.state();
        lease
            .current(meter, start)
            .then(|| lease.counter - lease.stock)
    }

    /// Units used of a lease-mode meter as this sidecar knows them (no Redis
    /// call once it holds a lease; one read before the first).
    pub async fn lease_used(
        &self,
        conn: &RedisConn,
        tenant: &str,
        meter: &MeterSpec,
    ) -> Result<i64, RedisFailure> {
        let (start, _) = meter.period.bounds(self.clock.now_ms());
        let slot = self.lease(tenant, &meter.id);
        let held = |slot: &LeaseSlot| {
            let lease = slot.state();
            lease
                .current(meter, start)
                .then(|| lease.counter - lease.stock)
        };
        if let Some(used) = held(&slot) {
            return Ok(used);
        }
        // A reservation under way has counted its block in Redis before the
        // lease holds it: the counter read now would take the block as
        // used. Wait for it, then read what the lease holds.
        let _calls = slot.calls.lock().await;
        if let Some(used) = held(&slot) {
            return Ok(used);
        }
        Ok(self.peek(conn, tenant, meter, "").await?.used)
    }

    /// Grants `amount` units of a lease-mode meter from this sidecar's stock,
    /// reserving another block from Redis (atomically, never past the limit)
    /// when the stock does not cover it. A sidecar never grants more than it
    /// holds, so all sidecars together never pass the limit. A grant that
    /// leaves the stock under a quarter of a block reserves the next block
    /// itself, while other requests go on granting from what is left.
    pub(super) async fn lease_consume(
        &self,
        conn: &RedisConn,
        consumption: &Consumption<'_>,
    ) -> Result<Consumed, RedisFailure> {
        let meter = consumption.meter;
        let block = meter.lease.unwrap_or(1).max(consumption.amount);
        let now = self.clock.now_ms();
        let (start, _) = meter.period.bounds(now);
        let slot = self.lease(consumption.tenant, &meter.id);
        let granted = {
            let mut lease = slot.state();
            if lease.current(meter, start) {
                self.grant(&mut lease, consumption, now).map(|consumed| {
                    let low = !lease.exhausted && lease.stock < low_water(block);
                    (consumed, low, lease.events.len() >= MAX_EVENTS_PER_CALL)
                })
            } else {
                None
            }
        };
        if let Some((consumed, low, many_events)) = granted {
            if low || many_events {
                if let Ok(_calls) = slot.calls.try_lock() {
                    // Best effort: on failure the next request that the
                    // stock cannot cover, or the next write, tries again.
                    let written = if low {
                        self.top_up(conn, &slot, meter, consumption.tenant, now, 1)
                            .await
                            .map(drop)
                    } else {
                        self.write_events(conn, &slot).await
                    };
                    if let Err(error) = written {
                        tracing::debug!(error = %error, "cannot top up a lease or write its events yet");
                    }
                }
            }
            return Ok(consumed);
        }
        let _calls = slot.calls.lock().await;
        // What this request waited for may have refilled the stock.
        {
            let mut lease = slot.state();
            if lease.current(meter, start) {
                if let Some(consumed) = self.grant(&mut lease, consumption, now) {
                    return Ok(consumed);
                }
            }
        }
        let mut lease = self
            .top_up(
                conn,
                &slot,
                meter,
                consumption.tenant,
                now,
                consumption.amount,
            )
            .await?;
        Ok(self.grant_or_refuse(&mut lease, consumption, now))
    }

    /// Under the lease's lock: the key's first answer, or a grant from stock
    /// (`None` when the stock does not cover the amount).
    fn grant(
        &self,
        lease: &mut Lease,
        consumption: &Consumption<'_>,
        now: i64,
    ) -> Option<Consumed> {
        let Consumption {
            tenant,
            amount,
            key,
            principal,
            decision_id,
            ..
        } = *consumption;
        if let Some(first) = self.lease_answer(tenant, key) {
            return Some(Consumed::Replay(first));
        }
        if lease.stock < amount {
            return None;
        }
        lease.stock -= amount;
        self.stats
            .lease_stock
            .fetch_sub(amount.unsigned_abs(), Ordering::Relaxed);
        self.stats.consumed.fetch_add(1, Ordering::Relaxed);
        let used = lease.counter - lease.stock;
        lease.events.push(LeaseEvent {
            amount,
            key: key.to_string(),
            principal: principal.to_string(),
            decision_id: decision_id.to_string(),
            time_ms: now,
        });
        self.lease_answers
            .insert(tenant, key, &consumption.answer(true, used));
        Some(Consumed::Allowed { used })
    }

    /// With the lease's call lock held: returns what the lease holds from an
    /// earlier window or limit, then reserves a block of the current window
    /// (the meter's `lease`, at least `needed` units, or none when the meter
    /// has no room for `needed`) with up to [`MAX_EVENTS_PER_CALL`] pending
    /// usage events. Returns the lease's state lock, taken as the reply is
    /// applied, so that the caller decides with the units it reserved.
    async fn top_up<'s>(
        &self,
        conn: &RedisConn,
        slot: &'s LeaseSlot,
        meter: &MeterSpec,
        tenant: &str,
        now: i64,
        needed: i64,
    ) -> Result<std::sync::MutexGuard<'s, Lease>, RedisFailure> {
        self.settle(conn, slot, now).await?;
        let (start, end) = meter.period.bounds(now);
        let stale = {
            let mut lease = slot.state();
            if lease.current(meter, start) {
                None
            } else {
                Self::take(&mut lease, true)
            }
        };
        if let Some(mut stale) = stale {
            if let Err(error) = self.give_back(conn, slot, &mut stale).await {
                Self::restore(&mut slot.state(), stale);
                return Err(error);
            }
        }
        let window_events = {
            let mut lease = slot.state();
            if lease.window_start != Some(start) {
                // Not current (a first reservation, or a new window or
                // limit): start over, counting from the reply.
                lease.window_start = None;
                lease.window = meter.period.window(now).0;
                lease.stock = 0;
                lease.counter = 0;
                lease.exhausted = false;
            }
            if lease.tenant != tenant {
                tenant.clone_into(&mut lease.tenant);
            }
            if lease.meter.as_ref() != Some(meter) {
                lease.meter = Some(meter.clone());
            }
            let count = lease.events.len().min(MAX_EVENTS_PER_CALL);
            (
                lease.window.clone(),
                lease.events.drain(..count).collect::<Vec<_>>(),
                lease.stock,
            )
        };
        let (window, events, held) = window_events;
        let block = meter.lease.unwrap_or(1).max(needed);
        let op = self.operations.next();
        // The lease expires here no later than in Redis, whose clock starts
        // when the script runs, after this.
        let sent = std::time::Instant::now();
        let reply = self
            .reserve(
                conn, &op, tenant, meter, &window, end, block, needed, held, &events,
            )
            .await;
        let mut lease = slot.state();
        let reserved = match reply {
            Ok(reply) => reply,
            Err(error) => {
                // Redis may have run it: it is sent again, under its id,
                // before this lease asks anything else.
                lease.unsettled = Some(Unsettled::Reserve {
                    op,
                    meter: meter.clone(),
                    tenant: tenant.to_string(),
                    window,
                    window_start: start,
                    end,
                    block,
                    needed,
                    held,
                    sent,
                    events,
                });
                return Err(error);
            }
        };
        lease.window_start = Some(start);
        self.apply_reserved(&mut lease, reserved, held, sent);
        Ok(lease)
    }

    /// Notes when the next of the other sidecars' leases of the meter
    /// expires, to come back for its stock then (a little after, so that
    /// Redis's clock has passed it too).
    fn note_others(lease: &mut Lease, others_expire_in: Option<std::time::Duration>) {
        lease.reclaim_at = others_expire_in
            .map(|left| std::time::Instant::now() + left + std::time::Duration::from_millis(10));
    }

    /// Applies a reservation's outcome to the lease it was made for.
    fn apply_reserved(
        &self,
        lease: &mut Lease,
        reserved: Reserved,
        held: i64,
        sent: std::time::Instant,
    ) {
        let Reserved {
            granted,
            counter,
            revoked,
            others_expire_in,
        } = reserved;
        Self::note_others(lease, others_expire_in);
        if revoked {
            // The stock held went back already (the lease had expired).
            self.stats
                .lease_stock
                .fetch_sub(lease.stock.unsigned_abs(), Ordering::Relaxed);
            lease.stock = 0;
        }
        lease.counter = counter;
        lease.stock += granted;
        lease.exhausted = granted == 0;
        if granted > 0 {
            self.stats
                .lease_stock
                .fetch_add(granted.unsigned_abs(), Ordering::Relaxed);
            self.stats
                .leased
                .fetch_add(granted.unsigned_abs(), Ordering::Relaxed);
            lease.expires = Some(sent + self.settings.lease_ttl);
            lease.flushed_stock = Some(if revoked { granted } else { held + granted });
        }
    }

    /// Under the lease's lock, after a reservation: `consumption`'s key's
    /// first answer, a grant from stock, or `cap_exceeded` when the meter had
    /// no room left for it.
    fn grant_or_refuse(
        &self,
        lease: &mut Lease,
        consumption: &Consumption<'_>,
        now: i64,
    ) -> Consumed {
        if let Some(consumed) = self.grant(lease, consumption, now) {
            return consumed;
        }
        let used = lease.counter - lease.stock;
        self.stats.cap_exceeded.fetch_add(1, Ordering::Relaxed);
        self.lease_answers.insert(
            consumption.tenant,
            consumption.key,
            &consumption.answer(false, used),
        );
        Consumed::CapExceeded { used }
    }

    /// Takes a lease's unspent units and pending events out to go back
    /// (`None` when there is nothing to return). With `retire`, the lease is
    /// no longer current, so that nothing is granted until it is renewed.
    fn take(lease: &mut Lease, retire: bool) -> Option<Returning> {
        let window_start = if retire {
            lease.window_start.take()
        } else {
            lease.window_start
        };
        let meter = lease.meter.clone()?;
        if lease.stock == 0 && lease.events.is_empty() {
            return None;
        }
        let returning = Returning {
            window_start,
            window: lease.window.clone(),
            tenant: lease.tenant.clone(),
            meter,
            stock: lease.stock,
            counter: lease.counter,
            expires: lease.expires,
            events: std::mem::take(&mut lease.events),
        };
        lease.counter -= lease.stock;
        lease.stock = 0;
        lease.expires = None;
        Some(returning)
    }

    /// Puts back what [`Metering::take`] took when it could not go back.
    fn restore(lease: &mut Lease, returning: Returning) {
        lease.window_start = returning.window_start;
        lease.window = returning.window;
        lease.tenant = returning.tenant;
        lease.meter = Some(returning.meter);
        lease.stock += returning.stock;
        lease.counter = returning.counter;
        lease.expires = returning.expires;
        lease.events.splice(..0, returning.events);
    }

    /// With the lease's call lock held: writes up to [`MAX_EVENTS_PER_CALL`]
    /// of its pending usage events.
    async fn write_events(&self, conn: &RedisConn, slot: &LeaseSlot) -> Result<(), RedisFailure> {
        self.settle(conn, slot, self.clock.now_ms()).await?;
        let (tenant, meter, window, stock, events) = {
            let mut lease = slot.state();
            let Some(meter) = lease.meter.clone() else {
                return Ok(());
            };
            // An unchanged lease is written again every quarter of the
            // lease time to live, even when it holds nothing: the step also
            // returns the stock of other sidecars' expired leases of the
            // meter, which no consumption may ever ask Redis for (a meter
            // at its cap is denied by its policy before anything is asked).
            let now = std::time::Instant::now();
            let unchanged = lease.events.is_empty()
                && lease.flushed_stock == Some(lease.stock)
                && lease
                    .flushed_at
                    .is_some_and(|at| now.duration_since(at) < self.settings.lease_ttl / 4)
                && lease.reclaim_at.is_none_or(|at| now < at);
            if unchanged {
                return Ok(());
            }
            let count = lease.events.len().min(MAX_EVENTS_PER_CALL);
            let events: Vec<LeaseEvent> = lease.events.drain(..count).collect();
            (
                lease.tenant.clone(),
                meter,
                lease.window.clone(),
                lease.stock,
                events,
            )
        };
        let op = self.operations.next();
        let written = self
            .give_back_call(
                conn,
                &op,
                &tenant,
                &meter,
                &window,
                stock,
                GiveBackMode::Flush,
                &events,
            )
            .await;
        match written {
            Ok(GaveBack {
                held,
                others_expire_in,
            }) => {
                let mut lease = slot.state();
                Self::note_others(&mut lease, others_expire_in);
                if !held && stock > 0 {
                    self.revoked(&mut lease);
                } else {
                    lease.flushed_stock = Some(stock);
                }
                lease.flushed_at = Some(std::time::Instant::now());
                Ok(())
            }
            Err(error) => {
                slot.state().unsettled = Some(Unsettled::GiveBack {
                    op,
                    meter,
                    tenant,
                    window,
                    stock,
                    mode: GiveBackMode::Flush,
                    events,
                });
                Err(error)
            }
        }
    }

    /// The lease was found reclaimed in Redis (it expired before it was
    /// given back): its stock went back already, so it grants nothing more.
    fn revoked(&self, lease: &mut Lease) {
        tracing::warn!(
            tenant = lease.tenant,
            meter = lease.meter.as_ref().map_or("", |meter| meter.id.as_str()),
            stock = lease.stock,
            "a lease expired before it was given back; its stock went back to the meter"
        );
        self.stats
            .lease_stock
            .fetch_sub(lease.stock.unsigned_abs(), Ordering::Relaxed);
        lease.stock = 0;
        lease.window_start = None;
        lease.expires = None;
        lease.flushed_stock = None;
    }

    /// Completes once this sidecar has taken its first lease (at once
    /// when it has): before that, the lease upkeep has nothing to do.
    pub async fn leasing(&self) {
        let mut leasing = self.leasing.subscribe();
        // The sender lives as long as `self`: the wait cannot fail.
        let _ = leasing.wait_for(|leasing| *leasing).await;
    }

    /// When the next of other sidecars' leases, among the meters this
    /// sidecar holds leases of, is due to expire (and be reclaimed).
    pub fn next_reclaim(&self) -> Option<std::time::Instant> {
        self.leases
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .values()
            .flat_map(|meters| meters.values())
            .filter_map(|slot| slot.state().reclaim_at)
            .min()
    }

    /// Writes every lease's pending usage events and records its stock in
    /// Redis (one step per lease with something new, all sent at once), so
    /// that a sidecar that dies loses at most the events of one interval
    /// and leaves its stock to be reclaimed. A lease busy with a Redis step
    /// is left for the next interval.
    pub async fn flush_leases(&self, conn: &RedisConn) -> Result<(), RedisFailure> {
        let leases: Vec<Arc<LeaseSlot>> = self
            .leases
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .values()
            .flat_map(|meters| meters.values().cloned())
            .collect();
        let flushes = leases.iter().map(|slot| async move {
            let Ok(_calls) = slot.calls.try_lock() else {
                return Ok(());
            };
            self.write_events(conn, slot).await
        });
        let mut outcome = Ok(());
        for flushed in futures_util::future::join_all(flushes).await {
            if flushed.is_err() {
                outcome = flushed;
            }
        }
        outcome
    }

    /// With the lease's call lock held: sends its unsettled step again,
    /// under the same operation id, so that Redis either runs it now or
    /// answers what it did the first time. A reservation settled after its
    /// window has passed gives its units back.
    async fn settle(
        &self,
        conn: &RedisConn,
        slot: &LeaseSlot,
        now: i64,
    ) -> Result<(), RedisFailure> {
        loop {
            let Some(step) = slot.state().unsettled.take() else {
                return Ok(());
            };
            let sent_again = match &step {
                Unsettled::Reserve {
                    op,
                    meter,
                    tenant,
                    window,
                    end,
                    block,
                    needed,
                    held,
                    events,
                    ..
                } => self
                    .reserve(
                        conn, op, tenant, meter, window, *end, *block, *needed, *held, events,
                    )
                    .await
                    .map(Settled::Reserved),
                Unsettled::GiveBack {
                    op,
                    meter,
                    tenant,
                    window,
                    stock,
                    mode,
                    events,
                } => self
                    .give_back_call(conn, op, tenant, meter, window, *stock, *mode, events)
                    .await
                    .map(Settled::GaveBack),
            };
            let settled = match sent_again {
                Ok(settled) => settled,
                Err(error) => {
                    slot.state().unsettled = Some(step);
                    return Err(error);
                }
            };
            match (step, settled) {
                (
                    Unsettled::Reserve {
                        meter,
                        tenant,
                        window,
                        window_start,
                        held,
                        sent,
                        ..
                    },
                    Settled::Reserved(reserved),
                ) => {
                    let granted = reserved.granted;
                    let mut lease = slot.state();
                    let still_current = meter.period.bounds(now).0 == window_start
                        && lease.meter.as_ref().is_none_or(|held| *held == meter)
                        && lease.window_start.is_none_or(|start| start == window_start)
                        && std::time::Instant::now() < sent + self.settings.lease_ttl;
                    if still_current {
                        lease.window_start = Some(window_start);
                        lease.window = window;
                        lease.meter = Some(meter);
                        tenant.clone_into(&mut lease.tenant);
                        self.apply_reserved(&mut lease, reserved, held, sent);
                    } else if granted > 0 {
                        self.stats
                            .leased
                            .fetch_add(granted.unsigned_abs(), Ordering::Relaxed);
                        // Reserved for a window or limit no longer served:
                        // the units go back.
                        lease.unsettled = Some(Unsettled::GiveBack {
                            op: self.operations.next(),
                            meter,
                            tenant,
                            window,
                            stock: granted,
                            mode: GiveBackMode::Return,
                            events: Vec::new(),
                        });
                    }
                }
                (Unsettled::GiveBack { stock, mode, .. }, Settled::GaveBack(gave_back)) => {
                    Self::note_others(&mut slot.state(), gave_back.others_expire_in);
                    match (mode, gave_back.held) {
                        (GiveBackMode::Return, true) => {
                            self.stats
                                .returned
                                .fetch_add(stock.unsigned_abs(), Ordering::Relaxed);
                        }
                        (GiveBackMode::Flush, false) if stock > 0 => {
                            self.revoked(&mut slot.state());
                        }
                        _ => {}
                    }
                }
                _ => {}
            }
        }
    }

    /// Reserves up to `block` units (at least `needed`, or none) and writes
    /// the pending usage events, in one atomic step.
    #[allow(
        clippy::too_many_arguments,
        reason = "one atomic step takes all of its inputs"
    )]
    async fn reserve(
        &self,
        conn: &RedisConn,
        op: &str,
        tenant: &str,
        meter: &MeterSpec,
        window: &str,
        end: Option<i64>,
        block: i64,
        needed: i64,
        held: i64,
        events: &[LeaseEvent],
    ) -> Result<Reserved, RedisFailure> {
        LeaseReserve {
            counter_key: &counter_key(tenant, meter, window),
            tenant,
            block,
            needed,
            limit: meter.limit,
            expire_at: expire_at(end),
            stream_maxlen: self.settings.stream_maxlen,
            meter: &meter.id,
            events,
            op,
            op_ttl_ms: OPERATION_TTL_MS,
            owner: &self.owner,
            held,
            lease_ttl_ms: u64::try_from(self.settings.lease_ttl.as_millis()).unwrap_or(u64::MAX),
            window,
        }
        .run(conn)
        .await
    }

    /// Returns unspent units and writes the pending events: the units with
    /// the first events in one atomic step, the other events in further
    /// steps of at most [`MAX_EVENTS_PER_CALL`]. What is written leaves
    /// `returning`, so that on an error it holds what is left.
    async fn give_back(
        &self,
        conn: &RedisConn,
        slot: &LeaseSlot,
        returning: &mut Returning,
    ) -> Result<(), RedisFailure> {
        loop {
            let count = returning.events.len().min(MAX_EVENTS_PER_CALL);
            let op = self.operations.next();
            let written = self
                .give_back_call(
                    conn,
                    &op,
                    &returning.tenant,
                    &returning.meter,
                    &returning.window,
                    returning.stock,
                    GiveBackMode::Return,
                    &returning.events[..count],
                )
                .await;
            let held = match written {
                Ok(GaveBack {
                    held,
                    others_expire_in,
                }) => {
                    Self::note_others(&mut slot.state(), others_expire_in);
                    held
                }
                Err(error) => {
                    // Redis may have run it: the step (its units and events)
                    // is sent again under its id; only what was never sent is
                    // left in `returning` to restore.
                    slot.state().unsettled = Some(Unsettled::GiveBack {
                        op,
                        meter: returning.meter.clone(),
                        tenant: returning.tenant.clone(),
                        window: returning.window.clone(),
                        stock: returning.stock,
                        mode: GiveBackMode::Return,
                        events: returning.events.drain(..count).collect(),
                    });
                    self.stats
                        .lease_stock
                        .fetch_sub(returning.stock.unsigned_abs(), Ordering::Relaxed);
                    returning.counter -= returning.stock;
                    returning.stock = 0;
                    return Err(error);
                }
            };
            returning.events.drain(..count);
            if returning.stock != 0 {
                if held {
                    self.stats
                        .returned
                        .fetch_add(returning.stock.unsigned_abs(), Ordering::Relaxed);
                }
                self.stats
                    .lease_stock
                    .fetch_sub(returning.stock.unsigned_abs(), Ordering::Relaxed);
                returning.counter -= returning.stock;
                returning.stock = 0;
            }
            if returning.events.is_empty() {
                return Ok(());
            }
        }
    }

    /// One give-back step: returns `stock` units and writes `events`.
    #[allow(
        clippy::too_many_arguments,
        reason = "one atomic step takes all of its inputs"
    )]
    async fn give_back_call(
        &self,
        conn: &RedisConn,
        op: &str,
        tenant: &str,
        meter: &MeterSpec,
        window: &str,
        stock: i64,
        mode: GiveBackMode,
        events: &[LeaseEvent],
    ) -> Result<GaveBack, RedisFailure> {
        LeaseGiveBack {
            counter_key: &counter_key(tenant, meter, window),
            tenant,
            unspent: stock,
            stream_maxlen: self.settings.stream_maxlen,
            meter: &meter.id,
            events,
            op,
            op_ttl_ms: OPERATION_TTL_MS,
            owner: &self.owner,
            mode,
            limit: meter.limit,
            window,
        }
        .run(conn)
        .await
    }

    /// Returns the unspent units of expired leases (all of them with
    /// `all`, at shutdown) and writes their pending events.
    pub async fn return_leases(&self, conn: &RedisConn, all: bool) -> Result<(), RedisFailure> {
        let leases: Vec<Arc<LeaseSlot>> = self
            .leases
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .values()
            .flat_map(|meters| meters.values().cloned())
            .collect();
        let now = std::time::Instant::now();
        let mut failed = None;
        for slot in leases {
            let _calls = slot.calls.lock().await;
            if let Err(error) = self.settle(conn, &slot, self.clock.now_ms()).await {
                failed = Some(error);
                continue;
            }
            let returning = {
                let mut lease = slot.state();
                if all || lease.expires.is_some_and(|expires| expires <= now) {
                    Self::take(&mut lease, false)
                } else {
                    None
                }
            };
            let Some(mut returning) = returning else {
                continue;
            };
            if let Err(error) = self.give_back(conn, &slot, &mut returning).await {
                Self::restore(&mut slot.state(), returning);
                failed = Some(error);
            }
        }
        failed.map_or(Ok(()), Err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metering::{Clock, MeterKind, MeteringSettings, Period};

    fn meter(limit: i64, block: i64) -> MeterSpec {
        MeterSpec {
            id: "api-calls".to_string(),
            limit,
            period: Period::Month,
            kind: MeterKind::Counter,
            lease: Some(block),
        }
    }

    fn consumption<'a>(meter: &'a MeterSpec, amount: i64, key: &'a str) -> Consumption<'a> {
        Consumption {
            tenant: "acme",
            meter,
            amount,
            key,
            principal: "User::\"bob\"",
            decision_id: "d-1",
            allow_reason: ("member_role", "members-use"),
            fingerprint: "",
            decided_for: tollgate_engine::CountRange::ALL,
        }
    }

    /// A lease holding `stock` of a block whose reservation left the
    /// counter at `counter`.
    fn held(meter: &MeterSpec, start: i64, stock: i64, counter: i64) -> Lease {
        Lease {
            window_start: Some(start),
            window: "2026-12".to_string(),
            tenant: "acme".to_string(),
            meter: Some(meter.clone()),
            stock,
            counter,
            ..Lease::default()
        }
    }

    #[test]
    fn the_next_block_is_reserved_below_a_quarter_of_a_block() {
        assert_eq!(low_water(100), 25);
        assert_eq!(low_water(3), 0);
        assert_eq!(low_water(1), 0);
    }

    #[test]
    fn a_lease_is_current_for_its_window_limit_and_block_only() {
        let spec = meter(1000, 100);
        let lease = held(&spec, 10, 50, 300);
        assert!(lease.current(&spec, 10));
        assert!(!lease.current(&spec, 11), "another window");
        assert!(!lease.current(&meter(2000, 100), 10), "another limit");
        assert!(!lease.current(&meter(1000, 50), 10), "another block");
        assert!(!Lease::default().current(&spec, 10), "never reserved");
    }

    #[test]
    fn grants_come_from_stock_and_count_used_as_counter_minus_stock() {
        let metering = Metering::new(MeteringSettings::default(), Clock::from_fn(|| 0));
        let spec = meter(1000, 100);
        // Other sidecars reserved up to 300; this one holds 100 of it.
        let mut lease = held(&spec, 0, 100, 300);
        let granted = metering.grant(&mut lease, &consumption(&spec, 30, "k-1"), 5);
        assert_eq!(granted, Some(Consumed::Allowed { used: 230 }));
        assert_eq!((lease.stock, lease.counter), (70, 300));
        assert_eq!(lease.events.len(), 1);
        assert_eq!(lease.events[0].amount, 30);
        assert_eq!(lease.events[0].time_ms, 5);
        // More than the stock: not granted here, nothing taken.
        assert_eq!(
            metering.grant(&mut lease, &consumption(&spec, 71, "k-2"), 6),
            None
        );
        assert_eq!(lease.stock, 70);
        // The same key again: its first answer, counted once.
        let again = metering.grant(&mut lease, &consumption(&spec, 30, "k-1"), 7);
        assert!(
            matches!(again, Some(Consumed::Replay(ref first)) if first.used == 230 && first.allow),
            "{again:?}"
        );
        assert_eq!(lease.stock, 70);
        // What the cap refuses is remembered under its key as a refusal.
        let refused = metering.grant_or_refuse(&mut lease, &consumption(&spec, 80, "k-3"), 8);
        assert_eq!(refused, Consumed::CapExceeded { used: 230 });
        let first = metering.lease_answer("acme", "k-3").unwrap();
        assert!(!first.allow);
        assert_eq!(first.code, "cap_exceeded");
    }

    #[test]
    fn taking_a_lease_back_returns_its_stock_and_restoring_undoes_it() {
        let spec = meter(1000, 100);
        let mut lease = held(&spec, 0, 40, 300);
        lease.events.push(UsageEvent {
            amount: 60,
            key: "k-1".to_string(),
            principal: String::new(),
            decision_id: "d-1".to_string(),
            time_ms: 1,
        });
        let returning = Metering::take(&mut lease, true).unwrap();
        assert_eq!((returning.stock, returning.counter), (40, 300));
        assert_eq!(returning.events.len(), 1);
        // The lease no longer holds the units, nor counts them, and is
        // retired until renewed.
        assert_eq!((lease.stock, lease.counter), (0, 260));
        assert!(lease.events.is_empty());
        assert!(!lease.current(&spec, 0));
        Metering::restore(&mut lease, returning);
        assert_eq!((lease.stock, lease.counter), (40, 300));
        assert_eq!(lease.events.len(), 1);
        assert!(lease.current(&spec, 0));
        // Nothing to return: nothing taken.
        let mut empty = held(&spec, 0, 0, 300);
        assert!(Metering::take(&mut empty, false).is_none());
    }
}
