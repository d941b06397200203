//! The Lua scripts tollgate runs in Redis (`scripts/*.lua`), each behind one
//! struct that names its arguments: the struct's `run` puts them into KEYS
//! and ARGV in the order the script reads them, runs the script atomically
//! on the tenant's hash slot, and reads the reply, failing loudly on any
//! reply of another shape ([`super::reply`]).

use redis::{Script, Value};

use super::keys::{self, INVALIDATE_CHANNEL};
use super::reply::{array, integer, item, text, unsigned};
use super::{DeleteOutcome, PutOutcome, Read, RedisConn, RedisFailure};

/// The appender of lease usage events, which the lease scripts begin with.
const LEASE_EVENTS: &str = include_str!("scripts/lease_events.lua");

struct Scripts {
    snapshot_read: Script,
    snapshot_put: Script,
    snapshot_delete: Script,
    usage_consume: Script,
    usage_report: Script,
    lease_reserve: Script,
    lease_give_back: Script,
    decision_stream_add: Script,
}

fn scripts() -> &'static Scripts {
    static SCRIPTS: std::sync::OnceLock<Scripts> = std::sync::OnceLock::new();
    SCRIPTS.get_or_init(|| Scripts {
        snapshot_read: Script::new(include_str!("scripts/snapshot_read.lua")),
        snapshot_put: Script::new(include_str!("scripts/snapshot_put.lua")),
        snapshot_delete: Script::new(include_str!("scripts/snapshot_delete.lua")),
        usage_consume: Script::new(include_str!("scripts/usage_consume.lua")),
        usage_report: Script::new(include_str!("scripts/usage_report.lua")),
        lease_reserve: Script::new(&format!(
            "{LEASE_EVENTS}\n{}",
            include_str!("scripts/lease_reserve.lua")
        )),
        lease_give_back: Script::new(&format!(
            "{LEASE_EVENTS}\n{}",
            include_str!("scripts/lease_give_back.lua")
        )),
        decision_stream_add: Script::new(include_str!("scripts/decision_stream_add.lua")),
    })
}

/// The SHA-1 Redis knows a script by (`EVALSHA`, `SCRIPT EXISTS`, the slow
/// log), by its file name without `.lua`: `lease_reserve`, `usage_consume`,
/// ...; `None` for a name tollgate has no script of.
pub fn script_hash(name: &str) -> Option<String> {
    let scripts = scripts();
    let script = match name {
        "snapshot_read" => &scripts.snapshot_read,
        "snapshot_put" => &scripts.snapshot_put,
        "snapshot_delete" => &scripts.snapshot_delete,
        "usage_consume" => &scripts.usage_consume,
        "usage_report" => &scripts.usage_report,
        "lease_reserve" => &scripts.lease_reserve,
        "lease_give_back" => &scripts.lease_give_back,
        "decision_stream_add" => &scripts.decision_stream_add,
        _ => return None,
    };
    Some(script.get_hash().to_string())
}

/// `snapshot_read.lua`: a tenant's snapshot, or only its version when the
/// caller already holds that version.
#[derive(Debug, Clone, Copy)]
pub struct SnapshotRead<'a> {
    /// The tenant.
    pub tenant: &'a str,
    /// The version the caller holds.
    pub known: Option<u64>,
}

impl SnapshotRead<'_> {
    /// Runs the read.
    pub async fn run(&self, conn: &RedisConn) -> Result<Read, RedisFailure> {
        let known = self.known.map(|v| v.to_string()).unwrap_or_default();
        let reply = conn
            .invoke(
                &scripts().snapshot_read,
                &[
                    &keys::snapshot_key(self.tenant),
                    &keys::version_key(self.tenant),
                ],
                &[&known],
            )
            .await?;
        parse_read(reply)
    }
}

/// `snapshot_put.lua`: writes a validated document as a version unless the
/// stored one is the same or newer, publishing the invalidation.
#[derive(Debug, Clone, Copy)]
pub struct SnapshotPut<'a> {
    /// The tenant.
    pub tenant: &'a str,
    /// The document's version.
    pub version: u64,
    /// The document.
    pub document: &'a str,
}

impl SnapshotPut<'_> {
    /// Runs the write.
    pub async fn run(&self, conn: &RedisConn) -> Result<PutOutcome, RedisFailure> {
        let reply = conn
            .invoke(
                &scripts().snapshot_put,
                &[
                    &keys::snapshot_key(self.tenant),
                    &keys::version_key(self.tenant),
                ],
                &[
                    &self.version.to_string(),
                    self.document,
                    self.tenant,
                    INVALIDATE_CHANNEL,
                ],
            )
            .await?;
        let (written, previous) = pair(&reply)?;
        Ok(match written {
            1 => PutOutcome::Written { previous },
            2 => PutOutcome::AlreadyStored,
            0 => PutOutcome::NotNewer { stored: previous },
            other => {
                return Err(RedisFailure::Garbage(format!(
                    "expected an outcome of 0, 1 or 2, got {other}: {reply:?}"
                )))
            }
        })
    }
}

/// `snapshot_delete.lua`: deletes a snapshot (keeping the version
/// high-water mark), publishing the invalidation.
#[derive(Debug, Clone, Copy)]
pub struct SnapshotDelete<'a> {
    /// The tenant.
    pub tenant: &'a str,
    /// Delete only if this is the stored version.
    pub expected: Option<u64>,
}

impl SnapshotDelete<'_> {
    /// Runs the delete.
    pub async fn run(&self, conn: &RedisConn) -> Result<DeleteOutcome, RedisFailure> {
        let expected = self.expected.map(|v| v.to_string()).unwrap_or_default();
        let reply = conn
            .invoke(
                &scripts().snapshot_delete,
                &[
                    &keys::snapshot_key(self.tenant),
                    &keys::version_key(self.tenant),
                ],
                &[self.tenant, &expected, INVALIDATE_CHANNEL],
            )
            .await?;
        let (status, version) = pair(&reply)?;
        match status {
            1 => Ok(DeleteOutcome::Deleted { version }),
            0 => Ok(DeleteOutcome::Absent),
            2 => Ok(DeleteOutcome::VersionMismatch { stored: version }),
            _ => Err(RedisFailure::Garbage(format!(
                "expected a delete status of 0, 1 or 2, got {reply:?}"
            ))),
        }
    }
}

/// `usage_consume.lua`: exact mode's one atomic step. Unless the key was
/// answered before, counts `amount` units if the count lies in the range
/// the decision holds for and the limit leaves room, remembers the answer
/// under the key, and appends the consumption to the usage stream.
#[derive(Debug, Clone, Copy)]
pub struct UsageConsume<'a> {
    /// The meter's counter key.
    pub counter_key: &'a str,
    /// The tenant.
    pub tenant: &'a str,
    /// Units to count.
    pub amount: i64,
    /// The meter's limit.
    pub limit: i64,
    /// How long the answer is remembered, in milliseconds.
    pub idempotency_ttl_ms: u128,
    /// The meter's id.
    pub meter: &'a str,
    /// The idempotency key.
    pub key: &'a str,
    /// Who consumes (`Type::"id"`).
    pub principal: &'a str,
    /// The decision's id.
    pub decision_id: &'a str,
    /// Now, Unix milliseconds.
    pub time_ms: i64,
    /// Approximate bound on the usage stream's length.
    pub stream_maxlen: u64,
    /// When the window's counter expires (Unix seconds), 0 for never.
    pub expire_at: i64,
    /// The allowed answer's record up to its count.
    pub allowed_record: &'a str,
    /// The refused answer's record up to its count.
    pub refused_record: &'a str,
    /// The lowest count the decision holds for (`None`: unbounded).
    pub lowest: Option<i64>,
    /// The highest count the decision holds for (`None`: unbounded).
    pub highest: Option<i64>,
    /// The counter's window (`2026-11`, `all`), as its usage event names it.
    pub window: &'a str,
}

/// What the consume script did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConsumeReply {
    /// Counted; the count is now `used`.
    Allowed {
        /// The count after.
        used: i64,
    },
    /// The limit leaves no room; nothing was counted.
    Refused {
        /// The count.
        used: i64,
    },
    /// The key was answered before: its stored record.
    Replay(String),
    /// The count lies outside the decision's range; nothing was counted.
    Redecide {
        /// The count.
        used: i64,
    },
}

impl UsageConsume<'_> {
    /// Runs the step.
    pub async fn run(&self, conn: &RedisConn) -> Result<ConsumeReply, RedisFailure> {
        let bound = |value: Option<i64>| value.map(|v| v.to_string()).unwrap_or_default();
        let reply = conn
            .invoke(
                &scripts().usage_consume,
                &[
                    self.counter_key,
                    &keys::idempotency_key(self.tenant, self.key),
                    &keys::stream_key(self.tenant),
                ],
                &[
                    &self.amount.to_string(),
                    &self.limit.to_string(),
                    &self.idempotency_ttl_ms.to_string(),
                    self.meter,
                    self.key,
                    self.principal,
                    self.decision_id,
                    &self.time_ms.to_string(),
                    &self.stream_maxlen.to_string(),
                    &self.expire_at.to_string(),
                    self.allowed_record,
                    self.refused_record,
                    &bound(self.lowest),
                    &bound(self.highest),
                    self.window,
                ],
            )
            .await?;
        let items = array(&reply)?;
        let status = text(item(items, 0, &reply)?)?;
        Ok(match status {
            "allow" => ConsumeReply::Allowed {
                used: integer(item(items, 1, &reply)?)?,
            },
            "deny" => ConsumeReply::Refused {
                used: integer(item(items, 1, &reply)?)?,
            },
            "redecide" => ConsumeReply::Redecide {
                used: integer(item(items, 1, &reply)?)?,
            },
            "replay" => ConsumeReply::Replay(text(item(items, 2, &reply)?)?.to_string()),
            _ => {
                return Err(RedisFailure::Garbage(format!(
                    "expected allow, deny, redecide or replay, got {reply:?}"
                )))
            }
        })
    }
}

/// One report of [`UsageReport`].
#[derive(Debug, Clone)]
pub struct ReportItem<'a> {
    /// The meter's counter (or gauge) key.
    pub counter_key: String,
    /// Whether the meter is a gauge (set) rather than a counter (added to).
    pub gauge: bool,
    /// The increment, or the gauge's value.
    pub amount: i64,
    /// The meter's id.
    pub meter: &'a str,
    /// The event's idempotency key.
    pub event_key: &'a str,
    /// Who used it (`Type::"id"`), may be empty.
    pub principal: &'a str,
    /// When the window's counter expires (Unix seconds), 0 for never.
    pub expire_at: i64,
    /// What makes it the same event: a report of its event key with another
    /// fingerprint is refused.
    pub fingerprint: &'a str,
    /// The meter's limit, as the usage event records it.
    pub limit: i64,
    /// The counter's window (`2026-11`, `all`), as the usage event names it.
    pub window: String,
}

/// What a usage report did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reported {
    /// Applied (events seen before skipped, as retries): each report's
    /// meter total afterwards.
    Totals(Vec<i64>),
    /// Nothing was applied: the event key of report `index` names another
    /// event.
    Collision {
        /// Index of the report, from 0.
        index: usize,
    },
}

/// `usage_report.lua`: applies usage measured after the fact, each report
/// once per event key, each appended to the usage stream.
#[derive(Debug, Clone, Copy)]
pub struct UsageReport<'a> {
    /// The tenant.
    pub tenant: &'a str,
    /// The reports.
    pub items: &'a [ReportItem<'a>],
    /// Approximate bound on the usage stream's length.
    pub stream_maxlen: u64,
    /// How long an event key is remembered, in milliseconds.
    pub idempotency_ttl_ms: u128,
    /// Now, Unix milliseconds.
    pub time_ms: i64,
}

impl UsageReport<'_> {
    /// Runs the step: each report's meter total afterwards, or the report
    /// whose event key names another event (then nothing is applied).
    pub async fn run(&self, conn: &RedisConn) -> Result<Reported, RedisFailure> {
        let mut keys = Vec::with_capacity(1 + 2 * self.items.len());
        keys.push(keys::stream_key(self.tenant));
        let mut args = vec![
            self.items.len().to_string(),
            self.stream_maxlen.to_string(),
            self.idempotency_ttl_ms.to_string(),
            self.time_ms.to_string(),
        ];
        for report in self.items {
            keys.push(report.counter_key.clone());
            keys.push(keys::event_key(self.tenant, report.event_key));
            args.push(if report.gauge { "gauge" } else { "counter" }.to_string());
            args.push(report.amount.to_string());
            args.push(report.meter.to_string());
            args.push(report.event_key.to_string());
            args.push(report.principal.to_string());
            args.push(report.expire_at.to_string());
            args.push(report.fingerprint.to_string());
            args.push(report.limit.to_string());
            args.push(report.window.clone());
        }
        let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let reply = conn.invoke(&scripts().usage_report, &keys, &args).await?;
        let items = array(&reply)?;
        let (outcome, rest) = items
            .split_first()
            .ok_or_else(|| RedisFailure::Garbage(format!("an empty reply: {reply:?}")))?;
        match text(outcome)? {
            "collision" => {
                let index = match rest {
                    [index] => integer(index)?,
                    _ => return Err(RedisFailure::Garbage(format!("{reply:?}"))),
                };
                index
                    .checked_sub(1)
                    .and_then(|index| usize::try_from(index).ok())
                    .filter(|index| *index < self.items.len())
                    .map(|index| Reported::Collision { index })
                    .ok_or_else(|| RedisFailure::Garbage(format!("{reply:?}")))
            }
            "totals" => {
                let totals = rest.iter().map(integer).collect::<Result<Vec<i64>, _>>()?;
                if totals.len() != self.items.len() {
                    return Err(RedisFailure::Garbage(format!(
                        "expected {} totals, got {reply:?}",
                        self.items.len()
                    )));
                }
                Ok(Reported::Totals(totals))
            }
            other => Err(RedisFailure::Garbage(format!(
                "unknown outcome `{other}`: {reply:?}"
            ))),
        }
    }
}

/// A consumption granted from a lease, not yet in the usage stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageEvent {
    /// Units.
    pub amount: i64,
    /// The idempotency key.
    pub key: String,
    /// Who consumed (`Type::"id"`).
    pub principal: String,
    /// The decision's id.
    pub decision_id: String,
    /// When, Unix milliseconds.
    pub time_ms: i64,
}

/// Appends usage events to script arguments: a count, then five fields each.
fn push_events(args: &mut Vec<String>, events: &[UsageEvent]) {
    args.reserve(1 + 5 * events.len());
    args.push(events.len().to_string());
    for event in events {
        args.push(event.amount.to_string());
        args.push(event.key.clone());
        args.push(event.principal.clone());
        args.push(event.decision_id.clone());
        args.push(event.time_ms.to_string());
    }
}

/// Runs a lease script on its four keys (the counter, the tenant's usage
/// stream, the operation's record, the counter's lease records) with `args`
/// and then the pending `events`.
async fn invoke_lease_script(
    conn: &RedisConn,
    script: &Script,
    (counter_key, tenant, op): (&str, &str, &str),
    mut args: Vec<String>,
    events: &[UsageEvent],
) -> Result<Value, RedisFailure> {
    push_events(&mut args, events);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    conn.invoke(
        script,
        &[
            counter_key,
            &keys::stream_key(tenant),
            &keys::operation_key(tenant, op),
            &keys::leases_key(counter_key),
        ],
        &args,
    )
    .await
}

/// `lease_reserve.lua`: reserves `min(block, limit - counter)` units for a
/// lease if that covers `needed`, and writes pending usage events, in one
/// atomic step.
#[derive(Debug, Clone, Copy)]
pub struct LeaseReserve<'a> {
    /// The meter's counter key.
    pub counter_key: &'a str,
    /// The tenant.
    pub tenant: &'a str,
    /// Units to reserve at most.
    pub block: i64,
    /// Units the reservation must cover (else none are reserved).
    pub needed: i64,
    /// The meter's limit.
    pub limit: i64,
    /// When the window's counter expires (Unix seconds), 0 for never.
    pub expire_at: i64,
    /// Approximate bound on the usage stream's length.
    pub stream_maxlen: u64,
    /// The meter's id.
    pub meter: &'a str,
    /// Pending usage events to write.
    pub events: &'a [UsageEvent],
    /// The operation's id: a second run with it changes nothing and
    /// answers as the first did.
    pub op: &'a str,
    /// How long the operation's outcome is remembered, in milliseconds.
    pub op_ttl_ms: u64,
    /// The sidecar's id in the meter's lease records.
    pub owner: &'a str,
    /// Units the sidecar holds before this reservation.
    pub held: i64,
    /// How long the lease lasts from now, in milliseconds (by Redis's
    /// clock): past it, another sidecar's step returns its stock.
    pub lease_ttl_ms: u64,
    /// The counter's window (`2026-11`, `all`), as the usage events name it.
    pub window: &'a str,
}

/// What a lease reservation did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reserved {
    /// Units reserved (0: the meter had no room for what was needed).
    pub granted: i64,
    /// The counter after it.
    pub counter: i64,
    /// The units the sidecar held went back already (its lease expired
    /// and was reclaimed): it holds only `granted` now.
    pub revoked: bool,
    /// When the next of the other sidecars' leases of the meter expires
    /// (`None`: none does), from now.
    pub others_expire_in: Option<std::time::Duration>,
}

/// The milliseconds a lease script counts to the next expiry of another
/// sidecar's lease (`-1`: none).
fn expiry_in(
    reply: &Value,
    items: &[Value],
    index: usize,
) -> Result<Option<std::time::Duration>, RedisFailure> {
    let ms = integer(item(items, index, reply)?)?;
    Ok(u64::try_from(ms).ok().map(std::time::Duration::from_millis))
}

/// What a lease give-back did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GaveBack {
    /// The sidecar's lease record was there (`false`: the lease was found
    /// reclaimed, its stock back already).
    pub held: bool,
    /// When the next of the other sidecars' leases of the meter expires
    /// (`None`: none does), from now.
    pub others_expire_in: Option<std::time::Duration>,
}

impl LeaseReserve<'_> {
    /// Runs the step.
    pub async fn run(&self, conn: &RedisConn) -> Result<Reserved, RedisFailure> {
        let args = vec![
            self.block.to_string(),
            self.needed.to_string(),
            self.limit.to_string(),
            self.expire_at.to_string(),
            self.stream_maxlen.to_string(),
            self.meter.to_string(),
            self.op_ttl_ms.to_string(),
            self.owner.to_string(),
            self.held.to_string(),
            self.lease_ttl_ms.to_string(),
            self.window.to_string(),
        ];
        let reply = invoke_lease_script(
            conn,
            &scripts().lease_reserve,
            (self.counter_key, self.tenant, self.op),
            args,
            self.events,
        )
        .await?;
        let items = array(&reply)?;
        Ok(Reserved {
            granted: integer(item(items, 0, &reply)?)?,
            counter: integer(item(items, 1, &reply)?)?,
            revoked: integer(item(items, 2, &reply)?)? == 1,
            others_expire_in: expiry_in(&reply, items, 3)?,
        })
    }
}

/// `lease_give_back.lua`: returns a lease's unspent units and writes
/// pending usage events, in one atomic step.
#[derive(Debug, Clone, Copy)]
pub struct LeaseGiveBack<'a> {
    /// The meter's counter key.
    pub counter_key: &'a str,
    /// The tenant.
    pub tenant: &'a str,
    /// Units to return.
    pub unspent: i64,
    /// Approximate bound on the usage stream's length.
    pub stream_maxlen: u64,
    /// The meter's id.
    pub meter: &'a str,
    /// Pending usage events to write.
    pub events: &'a [UsageEvent],
    /// The operation's id: a second run with it changes nothing.
    pub op: &'a str,
    /// How long the operation's outcome is remembered, in milliseconds.
    pub op_ttl_ms: u64,
    /// The sidecar's id in the meter's lease records.
    pub owner: &'a str,
    /// Whether `unspent` goes back (and the lease ends) or is recorded as
    /// the stock the lease holds.
    pub mode: GiveBackMode,
    /// The meter's limit, as the usage events record it.
    pub limit: i64,
    /// The counter's window (`2026-11`, `all`), as the usage events name it.
    pub window: &'a str,
}

/// What [`LeaseGiveBack`] does with the unspent units.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GiveBackMode {
    /// They go back to the counter; the lease ends.
    Return,
    /// They are recorded as the lease's stock (what a crash would leave).
    Flush,
}

impl LeaseGiveBack<'_> {
    /// Runs the step.
    pub async fn run(&self, conn: &RedisConn) -> Result<GaveBack, RedisFailure> {
        let args = vec![
            self.unspent.to_string(),
            self.stream_maxlen.to_string(),
            self.meter.to_string(),
            self.op_ttl_ms.to_string(),
            self.owner.to_string(),
            match self.mode {
                GiveBackMode::Return => "return",
                GiveBackMode::Flush => "flush",
            }
            .to_string(),
            self.limit.to_string(),
            self.window.to_string(),
        ];
        let reply = invoke_lease_script(
            conn,
            &scripts().lease_give_back,
            (self.counter_key, self.tenant, self.op),
            args,
            self.events,
        )
        .await?;
        let items = array(&reply)?;
        let held = match integer(item(items, 0, &reply)?)? {
            1 => true,
            0 => false,
            _ => {
                return Err(RedisFailure::Garbage(format!(
                    "expected 0 or 1 first, got {reply:?}"
                )))
            }
        };
        Ok(GaveBack {
            held,
            others_expire_in: expiry_in(&reply, items, 1)?,
        })
    }
}

/// `decision_stream_add.lua`: adds decision-log records to a stream in one
/// round trip.
#[derive(Debug, Clone, Copy)]
pub struct DecisionStreamAdd<'a> {
    /// The stream's key.
    pub key: &'a str,
    /// Approximate length the stream is trimmed to.
    pub max_len: u64,
    /// The records (JSON lines).
    pub records: &'a [String],
}

impl DecisionStreamAdd<'_> {
    /// Runs the step.
    pub async fn run(&self, conn: &RedisConn) -> Result<(), RedisFailure> {
        let max_len = self.max_len.to_string();
        let mut args: Vec<&str> = Vec::with_capacity(1 + self.records.len());
        args.push(&max_len);
        args.extend(self.records.iter().map(String::as_str));
        let reply = conn
            .invoke(&scripts().decision_stream_add, &[self.key], &args)
            .await?;
        let added = unsigned(&reply)?;
        if usize::try_from(added).ok() != Some(self.records.len()) {
            return Err(RedisFailure::Garbage(format!(
                "expected {} records added, got {reply:?}",
                self.records.len()
            )));
        }
        Ok(())
    }
}

/// Two non-negative integers.
fn pair(reply: &Value) -> Result<(u64, u64), RedisFailure> {
    let items = array(reply)?;
    if items.len() != 2 {
        return Err(RedisFailure::Garbage(format!(
            "expected two integers, got {reply:?}"
        )));
    }
    Ok((unsigned(&items[0])?, unsigned(&items[1])?))
}

fn parse_read(reply: Value) -> Result<Read, RedisFailure> {
    let items = array(&reply)?;
    let status = text(item(items, 0, &reply)?)?;
    // The high-water mark, '' when none was ever written.
    let version = match item(items, 1, &reply)? {
        Value::BulkString(bytes) if bytes.is_empty() => None,
        value => Some(unsigned(value)?),
    };
    match status {
        "unchanged" => version
            .map(|version| Read::Unchanged { version })
            .ok_or_else(|| {
                RedisFailure::Garbage(format!("expected the unchanged version, got {reply:?}"))
            }),
        "absent" => Ok(Read::Absent { version }),
        "document" => match item(items, 2, &reply)? {
            Value::BulkString(bytes) => Ok(Read::Document {
                version,
                bytes: bytes.clone(),
            }),
            _ => Err(RedisFailure::Garbage(format!(
                "expected the snapshot document, got {reply:?}"
            ))),
        },
        _ => Err(RedisFailure::Garbage(format!(
            "expected unchanged, absent or document, got {reply:?}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(text: &str) -> Value {
        Value::BulkString(text.as_bytes().to_vec())
    }

    #[test]
    fn snapshot_reads_parse_and_garbage_is_refused() {
        let read = parse_read(Value::Array(vec![bulk("document"), bulk("3"), bulk("{}")]));
        assert_eq!(
            read.unwrap(),
            Read::Document {
                version: Some(3),
                bytes: b"{}".to_vec()
            }
        );
        let read = parse_read(Value::Array(vec![bulk("absent"), bulk("")]));
        assert_eq!(read.unwrap(), Read::Absent { version: None });
        let read = parse_read(Value::Array(vec![bulk("unchanged"), bulk("7")]));
        assert_eq!(read.unwrap(), Read::Unchanged { version: 7 });
        for garbage in [
            Value::Array(vec![bulk("document"), bulk("x1"), bulk("{}")]),
            Value::Array(vec![bulk("unchanged"), bulk("")]),
            Value::Array(vec![bulk("other"), bulk("1")]),
            Value::Array(vec![bulk("document"), bulk("1")]),
            Value::Int(1),
        ] {
            assert!(parse_read(garbage).is_err());
        }
        assert_eq!(
            pair(&Value::Array(vec![Value::Int(1), bulk("2")])).unwrap(),
            (1, 2)
        );
        assert!(pair(&Value::Array(vec![Value::Int(1)])).is_err());
    }

    #[test]
    fn every_script_compiles_into_one_text() {
        // The lease scripts call the event writer they are prefixed with.
        for script in [
            include_str!("scripts/lease_reserve.lua"),
            include_str!("scripts/lease_give_back.lua"),
        ] {
            assert!(script.contains("write_events("));
        }
        assert!(LEASE_EVENTS.contains("local function write_events"));
        let _ = scripts();
    }
}
