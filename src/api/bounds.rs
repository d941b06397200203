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
use std::task::{Context, Poll};

use tonic::codegen::http;
use tonic::Status;

use super::pb;
use crate::decide::{self, Limits, MAX_REQUEST_ENTITIES};

tokio::task_local! {
    /// The limits of the server whose call is being decoded.
    static LIMITS: Limits;
}

/// A gRPC service whose requests are checked against `limits` before they
/// are decoded.
#[derive(Debug, Clone)]
pub struct Bounded<S> {
    inner: S,
    limits: Limits,
}

impl<S> Bounded<S> {
    /// `inner`, with its requests checked against `limits`.
    pub fn new(inner: S, limits: Limits) -> Self {
        Self { inner, limits }
    }
}

impl<S: tonic::server::NamedService> tonic::server::NamedService for Bounded<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, B> tower_service::Service<http::Request<B>> for Bounded<S>
where
    S: tower_service::Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = tokio::task::futures::TaskLocalFuture<Limits, S::Future>;

    fn poll_ready(&mut self, context: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(context)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        LIMITS.scope(self.limits, self.inner.call(request))
    }
}

/// Checks the bytes of a `U` against the limits of the server decoding it
/// (none outside a [`Bounded`] service).
pub fn check<U: 'static>(bytes: &[u8]) -> Result<(), Status> {
    let Ok(limits) = LIMITS.try_with(|limits| *limits) else {
        return Ok(());
    };
    let refused = if TypeId::of::<U>() == TypeId::of::<pb::CheckBatchRequest>() {
        check_batch(bytes, limits)
    } else if TypeId::of::<U>() == TypeId::of::<pb::CheckRequest>() {
        entities("entities", bytes)
    } else if TypeId::of::<U>() == TypeId::of::<pb::ReportUsageRequest>() {
        batch(count(bytes, REPORTS), limits)
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
    if let Some(error) = batch(count(bytes, CHECKS), limits) {
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

fn batch(size: Option<usize>, limits: Limits) -> Option<decide::Error> {
    let size = size?;
    (size > limits.max_batch).then_some(decide::Error::BatchTooLarge {
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
