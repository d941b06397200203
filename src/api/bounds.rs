//! Limits applied to a request's bytes before they are decoded: a repeated
//! field encodes an empty element in two bytes but decodes it into a few
//! hundred, so a batch or an entity list over its limit is refused while it
//! is still bytes (a 4 MiB batch of empty checks would otherwise take about
//! 1 GB to decode, only to be refused).
//!
//! The limits are the decision service's ([`crate::decide::Limits`],
//! [`crate::decide::MAX_REQUEST_ENTITIES`]) and the errors its own, mapped
//! through the one status table. A server's [`Bounded`] wrapper makes its
//! limits known to the codec for the calls it serves.

use std::any::TypeId;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use tonic::codegen::http;
use tonic::Status;

use super::pb;
use crate::decide::{
    self, DecisionService, Limits, Operation, MAX_REQUEST_ENTITIES, MAX_REQUEST_VALUES,
};

tokio::task_local! {
    /// The limits of the server whose call is being decoded.
    static LIMITS: Limits;
}

/// A gRPC service whose callers are identified, and whose requests are
/// admitted and checked against `limits`, before their bodies are read:
/// a caller nobody knows is refused `UNAUTHENTICATED`, and a request over
/// the limit of requests in flight `RESOURCE_EXHAUSTED`, without a byte of
/// their bodies buffered or decoded. Large bodies are read against a byte
/// budget shared by all requests ([`BudgetedBody`]), so that the memory
/// buffered bodies take is bounded however many callers send them. The
/// identified caller travels to the handler in the request's extensions.
#[derive(Debug, Clone)]
pub struct Bounded<S> {
    inner: S,
    limits: Limits,
    service: Arc<DecisionService>,
    admission: Admission,
}

/// The requests in flight and the bytes their bodies buffer, bounded for
/// every front door that shares one admission (the gRPC API, its Unix
/// socket, and the HTTP front door): memory stays bounded however the
/// callers arrive.
#[derive(Debug, Clone)]
pub struct Admission {
    in_flight: Arc<Semaphore>,
    max_in_flight: usize,
    counters: crate::metrics::InFlightCounters,
    bytes: ByteBudget,
}

impl Admission {
    /// At most `max_in_flight` requests at once, with at most
    /// `max_bytes_in_flight` of their bodies buffered beyond
    /// [`FREE_REQUEST_BYTES`] each (those over either are shed), counted in
    /// `counters`.
    pub fn new(
        max_in_flight: usize,
        max_bytes_in_flight: usize,
        counters: crate::metrics::InFlightCounters,
    ) -> Self {
        Self {
            in_flight: Arc::new(Semaphore::new(max_in_flight)),
            max_in_flight,
            bytes: ByteBudget::new(max_bytes_in_flight, counters.shed_bytes.clone()),
            counters,
        }
    }

    /// A place among the requests in flight, or [`decide::Error::Overloaded`]
    /// (counted) when there is none.
    pub fn admit(&self) -> Result<InFlight, decide::Error> {
        let Ok(permit) = Arc::clone(&self.in_flight).try_acquire_owned() else {
            self.counters.shed.inc();
            return Err(decide::Error::Overloaded {
                limit: self.max_in_flight,
            });
        };
        self.counters.in_flight.inc();
        Ok(InFlight {
            _permit: permit,
            bytes: Arc::new(std::sync::Mutex::new(None)),
            gauge: self.counters.in_flight.clone(),
        })
    }

    /// `body`, read against the byte budget; what it takes is given back
    /// with `place`.
    pub fn body<B>(&self, body: B, place: &InFlight) -> BudgetedBody<B> {
        BudgetedBody {
            inner: body,
            budget: self.bytes.clone(),
            held: Arc::clone(&place.bytes),
            read: 0,
        }
    }
}

/// A request's place among those in flight, given back when it is answered.
#[derive(Debug)]
pub struct InFlight {
    _permit: OwnedSemaphorePermit,
    /// The budget its body took, given back with it.
    bytes: Arc<std::sync::Mutex<Option<OwnedSemaphorePermit>>>,
    gauge: prometheus_client::metrics::gauge::Gauge,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

impl<S> Bounded<S> {
    /// `inner`, serving `service`'s calls within `admission`.
    pub fn new(inner: S, service: Arc<DecisionService>, admission: Admission) -> Self {
        Self {
            inner,
            limits: service.limits(),
            service,
            admission,
        }
    }
}

impl<S: tonic::server::NamedService> tonic::server::NamedService for Bounded<S> {
    const NAME: &'static str = S::NAME;
}

/// The operation a method of `EntitlementService` names, as far as its
/// path tells (`Check` may turn out to consume).
fn operation(path: &str) -> Operation {
    match path.rsplit('/').next() {
        Some("CheckBatch") => Operation::CheckBatch,
        Some("ReportUsage") => Operation::ReportUsage,
        Some("ListEntitlements") => Operation::ListEntitlements,
        _ => Operation::Check,
    }
}

pin_project_lite::pin_project! {
    /// The answer of a [`Bounded`] service: the inner service's, holding
    /// its place among the requests in flight, or a refusal.
    #[project = AnswerProjection]
    pub enum BoundedAnswer<F> {
        /// Admitted.
        Admitted {
            #[pin]
            inner: tokio::task::futures::TaskLocalFuture<Limits, F>,
            place: InFlight,
        },
        /// Refused before the body was read.
        Refused {
            status: Option<Status>,
        },
    }
}

impl<F, E> std::future::Future for BoundedAnswer<F>
where
    F: std::future::Future<Output = Result<http::Response<tonic::body::Body>, E>>,
{
    type Output = F::Output;

    fn poll(self: std::pin::Pin<&mut Self>, context: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            AnswerProjection::Admitted { inner, .. } => inner.poll(context),
            AnswerProjection::Refused { status } => Poll::Ready(Ok(status
                .take()
                .unwrap_or_else(|| Status::internal("answered twice"))
                .into_http())),
        }
    }
}

impl<S, B> tower_service::Service<http::Request<B>> for Bounded<S>
where
    S: tower_service::Service<
        http::Request<BudgetedBody<B>>,
        Response = http::Response<tonic::body::Body>,
    >,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoundedAnswer<S::Future>;

    fn poll_ready(&mut self, context: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(context)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let peer = request.extensions().get::<crate::listen::Peer>();
        let authorization = request
            .headers()
            .get(http::header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok());
        let credentials = super::credentials_of(peer, authorization);
        let caller = match self
            .service
            .identify(&credentials, operation(request.uri().path()))
        {
            Ok(caller) => caller,
            Err(error) => {
                return BoundedAnswer::Refused {
                    status: Some(super::status(&error)),
                }
            }
        };
        let place = match self.admission.admit() {
            Ok(place) => place,
            Err(error) => {
                return BoundedAnswer::Refused {
                    status: Some(super::status(&error)),
                }
            }
        };
        let mut request = request.map(|body| self.admission.body(body, &place));
        request.extensions_mut().insert(caller);
        BoundedAnswer::Admitted {
            inner: LIMITS.scope(self.limits, self.inner.call(request)),
            place,
        }
    }
}

/// The first bytes of every request body, read without the byte budget:
/// a usual request never waits on, nor is refused by, the budget.
pub const FREE_REQUEST_BYTES: usize = 16 << 10;

/// The bytes of request bodies that may be buffered at once, beyond each
/// one's [`FREE_REQUEST_BYTES`].
#[derive(Debug, Clone)]
pub struct ByteBudget {
    permits: Arc<Semaphore>,
    bytes: usize,
    shed: prometheus_client::metrics::counter::Counter,
}

impl ByteBudget {
    /// A budget of `bytes`; a body refused for want of it is counted in
    /// `shed`.
    pub fn new(bytes: usize, shed: prometheus_client::metrics::counter::Counter) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(bytes.min(Semaphore::MAX_PERMITS))),
            bytes,
            shed,
        }
    }
}

pin_project_lite::pin_project! {
    /// A request body whose bytes past [`FREE_REQUEST_BYTES`] are taken
    /// from the [`ByteBudget`] as they arrive, and given back when the
    /// request has been answered. When the budget is spent the body fails
    /// with `RESOURCE_EXHAUSTED`, which its decoder passes on to the caller.
    pub struct BudgetedBody<B> {
        #[pin]
        inner: B,
        budget: ByteBudget,
        held: Arc<std::sync::Mutex<Option<OwnedSemaphorePermit>>>,
        read: usize,
    }
}

impl<B> tonic::codegen::Body for BudgetedBody<B>
where
    B: tonic::codegen::Body,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Data = B::Data;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        context: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        use prost::bytes::Buf as _;
        let this = self.project();
        let frame = match this.inner.poll_frame(context) {
            Poll::Ready(Some(Ok(frame))) => frame,
            Poll::Ready(Some(Err(error))) => return Poll::Ready(Some(Err(error.into()))),
            Poll::Ready(None) => return Poll::Ready(None),
            Poll::Pending => return Poll::Pending,
        };
        if let Some(data) = frame.data_ref() {
            let before = this.read.saturating_sub(FREE_REQUEST_BYTES);
            *this.read += data.remaining();
            let needed = this.read.saturating_sub(FREE_REQUEST_BYTES) - before;
            if needed > 0 {
                let taken = u32::try_from(needed).ok().and_then(|n| {
                    Arc::clone(&this.budget.permits)
                        .try_acquire_many_owned(n)
                        .ok()
                });
                let Some(taken) = taken else {
                    this.budget.shed.inc();
                    let refused = decide::Error::RequestBytesOverBudget {
                        limit: this.budget.bytes,
                    };
                    return Poll::Ready(Some(Err(Box::new(super::status(&refused)))));
                };
                let mut held = this
                    .held
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                match held.as_mut() {
                    Some(permit) => permit.merge(taken),
                    None => *held = Some(taken),
                }
            }
        }
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Checks the bytes of a `U` against the limits of the server decoding it
/// (none outside a [`Bounded`] service).
pub fn check<U: 'static>(bytes: &[u8]) -> Result<(), Status> {
    let Ok(limits) = LIMITS.try_with(|limits| *limits) else {
        return Ok(());
    };
    let refused = if TypeId::of::<U>() == TypeId::of::<pb::CheckBatchRequest>() {
        check_batch(bytes, limits).or_else(|| values_of_batch(bytes))
    } else if TypeId::of::<U>() == TypeId::of::<pb::CheckRequest>() {
        entities("entities", bytes).or_else(|| {
            let mut budget = Budget::new();
            budget
                .check(bytes)
                .err()
                .map(|size| too_many("request", size))
        })
    } else if TypeId::of::<U>() == TypeId::of::<pb::ListEntitlementsRequest>() {
        let mut budget = Budget::new();
        budget
            .listing(bytes)
            .err()
            .map(|size| too_many("request", size))
    } else if TypeId::of::<U>() == TypeId::of::<pb::ReportUsageRequest>() {
        batch("reports", count(bytes, REPORTS), limits)
    } else {
        None
    };
    refused.map_or(Ok(()), |error| Err(super::status(&error)))
}

/// `CheckBatchRequest.checks`.
const CHECKS: u32 = 1;
/// `CheckRequest.entities`.
const ENTITIES: u32 = 6;
/// `ReportUsageRequest.reports`.
const REPORTS: u32 = 2;

fn check_batch(bytes: &[u8], limits: Limits) -> Option<decide::Error> {
    if let Some(error) = batch("checks", count(bytes, CHECKS), limits) {
        return Some(error);
    }
    let mut index = 0;
    let mut refused = None;
    fields(bytes, |number, payload| {
        if number != CHECKS || refused.is_some() {
            return;
        }
        if let Some(payload) = payload {
            refused = entities(&format!("checks[{index}].entities"), payload);
        }
        index += 1;
    })
    .ok()?;
    refused
}

/// What is left of [`MAX_REQUEST_VALUES`] while a request is scanned.
struct Budget {
    counted: usize,
    /// How deep in nested values the walk is.
    depth: usize,
}

/// How deep the walk follows nested values: as deep as the protobuf decoder
/// does (its recursion limit, 100), past which a message does not decode.
const MAX_SCANNED_DEPTH: usize = 100;

/// The values counted when the budget ran out.
type Exceeded = usize;

/// `CheckRequest.context` and `CheckRequest.entities`.
const CONTEXT: u32 = 5;
/// `CheckRequest.what_if`, `ListEntitlementsRequest.what_if` (the context
/// of a listing has the same number as a check's).
const WHAT_IF: u32 = 10;
const LISTING_WHAT_IF: u32 = 12;
/// `AttributeOverride.value`.
const OVERRIDE_VALUE: u32 = 3;
/// `Entity.attrs`, `Entity.parents`, `Entity.tags`.
const ATTRS: u32 = 2;
const PARENTS: u32 = 3;
const TAGS: u32 = 4;
/// `Value.set`, `Value.record`, `Value.extension`.
const SET: u32 = 4;
const RECORD: u32 = 5;
const EXTENSION: u32 = 7;
/// `ValueSet.values`, `ValueRecord.values` (a map: entries of key 1, value 2).
const ELEMENTS: u32 = 1;
const MAP_VALUE: u32 = 2;
/// `Extension.args`.
const ARGS: u32 = 3;

impl Budget {
    fn new() -> Self {
        Self {
            counted: 0,
            depth: 0,
        }
    }

    fn take(&mut self) -> Result<(), Exceeded> {
        self.counted += 1;
        if self.counted > MAX_REQUEST_VALUES {
            Err(self.counted)
        } else {
            Ok(())
        }
    }

    /// Counts a `CheckRequest`'s values. Malformed bytes count as nothing:
    /// the decoder says what is wrong with them.
    fn check(&mut self, bytes: &[u8]) -> Result<(), Exceeded> {
        self.each(bytes, |budget, number, payload| match number {
            CONTEXT => budget.map_values(payload),
            ENTITIES => budget.entity(payload),
            WHAT_IF => budget.attribute_override(payload),
            _ => Ok(()),
        })
    }

    /// Counts a `ListEntitlementsRequest`'s values.
    fn listing(&mut self, bytes: &[u8]) -> Result<(), Exceeded> {
        self.each(bytes, |budget, number, payload| match number {
            CONTEXT => budget.map_values(payload),
            LISTING_WHAT_IF => budget.attribute_override(payload),
            _ => Ok(()),
        })
    }

    /// An `AttributeOverride`: its value.
    fn attribute_override(&mut self, bytes: &[u8]) -> Result<(), Exceeded> {
        self.each(bytes, |budget, number, payload| match number {
            OVERRIDE_VALUE => budget.value(payload),
            _ => Ok(()),
        })
    }

    fn entity(&mut self, bytes: &[u8]) -> Result<(), Exceeded> {
        self.each(bytes, |budget, number, payload| match number {
            ATTRS | TAGS => budget.map_values(payload),
            PARENTS => budget.take(),
            _ => Ok(()),
        })
    }

    /// A map entry (`{1: key, 2: Value}`): its value.
    fn map_values(&mut self, entry: &[u8]) -> Result<(), Exceeded> {
        self.each(entry, |budget, number, payload| match number {
            MAP_VALUE => budget.value(payload),
            _ => Ok(()),
        })
    }

    fn value(&mut self, bytes: &[u8]) -> Result<(), Exceeded> {
        self.take()?;
        // Values nested deeper than the decoder follows are refused by it
        // (`INVALID_ARGUMENT`): the count stops there, and so does this
        // walk, whose stack would otherwise grow with every level of a
        // hostile request.
        if self.depth >= MAX_SCANNED_DEPTH {
            return Ok(());
        }
        self.depth += 1;
        let counted = self.each(bytes, |budget, number, payload| match number {
            SET => budget.each(payload, |budget, number, element| match number {
                ELEMENTS => budget.value(element),
                _ => Ok(()),
            }),
            RECORD => budget.each(payload, |budget, number, entry| match number {
                ELEMENTS => budget.map_values(entry),
                _ => Ok(()),
            }),
            EXTENSION => budget.each(payload, |budget, number, argument| match number {
                ARGS => budget.value(argument),
                _ => Ok(()),
            }),
            _ => Ok(()),
        });
        self.depth -= 1;
        counted
    }

    /// Calls `each` with every length-delimited top-level field of `bytes`.
    fn each(
        &mut self,
        bytes: &[u8],
        mut each: impl FnMut(&mut Self, u32, &[u8]) -> Result<(), Exceeded>,
    ) -> Result<(), Exceeded> {
        let mut outcome = Ok(());
        let _ = fields(bytes, |number, payload| {
            if let (Ok(()), Some(payload)) = (&outcome, payload) {
                outcome = each(self, number, payload);
            }
        });
        outcome
    }
}

fn too_many(field: &str, size: usize) -> decide::Error {
    decide::Error::TooManyValues {
        field: field.to_string(),
        size,
        limit: MAX_REQUEST_VALUES,
    }
}

/// The values of every check of a batch, against one budget.
fn values_of_batch(bytes: &[u8]) -> Option<decide::Error> {
    // As for one check: too short to hold more values than allowed.
    if bytes.len() <= 2 * MAX_REQUEST_VALUES {
        return None;
    }
    let mut budget = Budget::new();
    let mut index = 0;
    let mut refused = None;
    let _ = fields(bytes, |number, payload| {
        if let (CHECKS, Some(check), None) = (number, payload, &refused) {
            if let Err(size) = budget.check(check) {
                refused = Some(too_many(&format!("checks[{index}]"), size));
            }
            index += 1;
        }
    });
    refused
}

fn batch(items: &'static str, size: Option<usize>, limits: Limits) -> Option<decide::Error> {
    let size = size?;
    (size > limits.max_batch).then_some(decide::Error::BatchTooLarge {
        items,
        size,
        limit: limits.max_batch,
    })
}

fn entities(field: &str, check: &[u8]) -> Option<decide::Error> {
    // An entity takes at least two bytes: a usual check is too short to
    // hold too many, and is not scanned.
    if check.len() <= 2 * MAX_REQUEST_ENTITIES {
        return None;
    }
    let size = count(check, ENTITIES)?;
    (size > MAX_REQUEST_ENTITIES).then(|| decide::Error::TooManyEntities {
        field: field.to_string(),
        size,
        limit: MAX_REQUEST_ENTITIES,
    })
}

/// How many times field `number` occurs at the top level of `bytes`; `None`
/// when the bytes are not a protobuf message (decoding then says why).
fn count(bytes: &[u8], number: u32) -> Option<usize> {
    let mut found = 0;
    fields(bytes, |field, _| found += usize::from(field == number)).ok()?;
    Some(found)
}

/// Calls `each` with every top-level field's number and, for a
/// length-delimited field, its payload.
fn fields(mut bytes: &[u8], mut each: impl FnMut(u32, Option<&[u8]>)) -> Result<(), ()> {
    while !bytes.is_empty() {
        let key = varint(&mut bytes)?;
        let number = u32::try_from(key >> 3).map_err(|_| ())?;
        match key & 7 {
            0 => {
                varint(&mut bytes)?;
                each(number, None);
            }
            1 => {
                bytes = bytes.get(8..).ok_or(())?;
                each(number, None);
            }
            2 => {
                let length = usize::try_from(varint(&mut bytes)?).map_err(|_| ())?;
                let payload = bytes.get(..length).ok_or(())?;
                bytes = &bytes[length..];
                each(number, Some(payload));
            }
            5 => {
                bytes = bytes.get(4..).ok_or(())?;
                each(number, None);
            }
            _ => return Err(()),
        }
    }
    Ok(())
}

fn varint(bytes: &mut &[u8]) -> Result<u64, ()> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = bytes.split_first().ok_or(())?;
        *bytes = rest;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn fields_are_counted_as_prost_encodes_them() {
        let check = pb::CheckRequest {
            tenant: "acme".to_string(),
            entities: vec![pb::Entity::default(); 3],
            max_staleness_ms: 300,
            ..pb::CheckRequest::default()
        };
        let bytes = check.encode_to_vec();
        assert_eq!(count(&bytes, ENTITIES), Some(3));
        assert_eq!(count(&bytes, 1), Some(1));
        let batch = pb::CheckBatchRequest {
            checks: vec![check; 5],
        };
        let bytes = batch.encode_to_vec();
        assert_eq!(count(&bytes, CHECKS), Some(5));
        // Not a message: left to the decoder.
        assert_eq!(count(&[0x0a, 0x05, 0x00], CHECKS), None);
        assert_eq!(count(&[0xff], CHECKS), None);
    }

    fn value(kind: pb::value::Kind) -> pb::Value {
        pb::Value { kind: Some(kind) }
    }

    #[test]
    fn values_are_counted_however_deep_they_sit() {
        let tiny = value(pb::value::Kind::Bool(true));
        let set = |n: usize| {
            value(pb::value::Kind::Set(pb::ValueSet {
                values: vec![tiny.clone(); n],
            }))
        };
        let record = |inner: pb::Value| {
            value(pb::value::Kind::Record(pb::ValueRecord {
                values: [("inner".to_string(), inner)].into_iter().collect(),
            }))
        };
        let count = |check: &pb::CheckRequest| {
            let mut budget = Budget::new();
            match budget.each(
                &check.encode_to_vec(),
                |budget, number, payload| match number {
                    CONTEXT => budget.map_values(payload),
                    ENTITIES => budget.entity(payload),
                    _ => Ok(()),
                },
            ) {
                Ok(()) => budget.counted,
                Err(size) => size,
            }
        };
        let mut check = pb::CheckRequest {
            context: [
                ("a".to_string(), tiny.clone()),
                ("b".to_string(), set(3)),
                ("c".to_string(), record(record(set(2)))),
            ]
            .into_iter()
            .collect(),
            ..pb::CheckRequest::default()
        };
        // a: 1; b: 1 + 3; c: 1 + 1 + 1 + 2.
        assert_eq!(count(&check), 10);
        check.entities = vec![pb::Entity {
            attrs: [("x".to_string(), set(4))].into_iter().collect(),
            parents: vec![pb::EntityRef::default(); 2],
            tags: [("t".to_string(), tiny.clone())].into_iter().collect(),
            ..pb::Entity::default()
        }];
        assert_eq!(count(&check), 10 + 5 + 2 + 1);
        let extension = value(pb::value::Kind::Extension(pb::Extension {
            r#fn: "offset".to_string(),
            arg: String::new(),
            args: vec![tiny.clone(), tiny.clone()],
        }));
        check.context.insert("d".to_string(), extension);
        assert_eq!(count(&check), 18 + 3);

        // One huge set: refused as bytes, naming the field.
        let huge = pb::CheckRequest {
            context: [("s".to_string(), set(MAX_REQUEST_VALUES + 5))]
                .into_iter()
                .collect(),
            ..pb::CheckRequest::default()
        }
        .encode_to_vec();
        let mut budget = Budget::new();
        assert_eq!(budget.check(&huge), Err(MAX_REQUEST_VALUES + 1));
        // Spread over a batch: the check where the budget runs out is named.
        let part = pb::CheckRequest {
            context: [("s".to_string(), set(MAX_REQUEST_VALUES / 3))]
                .into_iter()
                .collect(),
            ..pb::CheckRequest::default()
        };
        let batch = pb::CheckBatchRequest {
            checks: vec![part; 4],
        }
        .encode_to_vec();
        let refused = values_of_batch(&batch).unwrap();
        assert_eq!(
            refused.to_string(),
            "checks[2]: 20001 values exceed the limit of 20000 per call"
        );
    }

    #[test]
    fn limits_apply_only_inside_a_bounded_service() {
        let batch = pb::CheckBatchRequest {
            checks: vec![pb::CheckRequest::default(); 4],
        }
        .encode_to_vec();
        assert!(check::<pb::CheckBatchRequest>(&batch).is_ok());
        let refused = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(LIMITS.scope(
                Limits {
                    max_batch: 3,
                    ..Limits::default()
                },
                async { check::<pb::CheckBatchRequest>(&batch) },
            ))
            .unwrap_err();
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
        assert_eq!(
            refused.message(),
            "batch of 4 checks exceeds the limit of 3"
        );
    }
}
