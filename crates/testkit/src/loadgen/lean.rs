//! The load generator's client side, kept cheap: it shares the machine's cores
//! with the server it measures, so every microsecond it spends is one the
//! server cannot.
//!
//! * Requests are encoded once. A call sends those bytes (a reference-counted
//!   [`Bytes`], copied once into the frame, never re-encoded); a request whose calls differ in one field (the
//!   idempotency key of a consume, the tenant of a cold check) sends the
//!   shared bytes followed by that field, which protobuf merges into the
//!   message (for a scalar or string field the last occurrence wins, and an
//!   embedded message absent from the shared bytes is simply set).
//! * Answers are decoded into messages that declare only the fields the load
//!   generator checks (the decision, the snapshot source, the policy version,
//!   the meter's count); prost skips every other field unread.

use std::marker::PhantomData;

use prost::bytes::{BufMut, Bytes, BytesMut};
use prost::Message;
use tonic::client::Grpc;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::Channel;
use tonic::Status;

use crate::client::BytesEncoder;

/// `grpc.health.v1.Health/Check`.
pub const HEALTH_CHECK: &str = "/grpc.health.v1.Health/Check";
/// `tollgate.v1.EntitlementService/Check`.
pub const CHECK: &str = "/tollgate.v1.EntitlementService/Check";
/// `tollgate.bench.v1.Floor/Echo` (servers built with `bench-floor`).
pub const FLOOR: &str = "/tollgate.bench.v1.Floor/Echo";
/// `tollgate.v1.EntitlementService/CheckBatch`.
pub const CHECK_BATCH: &str = "/tollgate.v1.EntitlementService/CheckBatch";

/// `CheckRequest.tenant` and `CheckRequest.consume`: the fields a call appends
/// to its driver's shared request bytes.
pub const TENANT_FIELD: u32 = 1;
pub const CONSUME_FIELD: u32 = 9;

/// `grpc.health.v1.HealthCheckResponse`: the status only.
#[derive(Clone, PartialEq, Message)]
pub struct HealthAnswer {
    #[prost(int32, tag = "1")]
    pub status: i32,
}

/// `tollgate.v1.CheckResponse`: the decision only.
#[derive(Clone, PartialEq, Message)]
pub struct Decided {
    #[prost(int32, tag = "1")]
    pub decision: i32,
}

/// `tollgate.v1.CheckResponse`: the decision and where its snapshot came from.
#[derive(Clone, PartialEq, Message)]
pub struct Sourced {
    #[prost(int32, tag = "1")]
    pub decision: i32,
    #[prost(message, optional, tag = "4")]
    pub freshness: Option<Freshness>,
}

/// `tollgate.v1.Freshness`: the policy version and the snapshot's source.
#[derive(Clone, PartialEq, Message)]
pub struct Freshness {
    #[prost(string, tag = "1")]
    pub policy_version: String,
    #[prost(int32, tag = "4")]
    pub source: i32,
}

/// `tollgate.v1.CheckResponse`: the decision and the meter's count.
#[derive(Clone, PartialEq, Message)]
pub struct Counted {
    #[prost(int32, tag = "1")]
    pub decision: i32,
    #[prost(message, optional, tag = "7")]
    pub usage: Option<Used>,
}

/// `tollgate.v1.Usage`: the count only.
#[derive(Clone, PartialEq, Message)]
pub struct Used {
    #[prost(int64, tag = "2")]
    pub used: i64,
}

/// `tollgate.bench.v1.FloorRequest`: a payload of a Check request's size and
/// the size of answer wanted.
#[derive(Clone, PartialEq, Message)]
pub struct FloorRequest {
    #[prost(bytes = "bytes", tag = "1")]
    pub payload: Bytes,
    #[prost(uint32, tag = "2")]
    pub response_bytes: u32,
}

/// `tollgate.bench.v1.FloorResponse`: its payload (a Check response's size).
#[derive(Clone, PartialEq, Message)]
pub struct FloorAnswer {
    #[prost(bytes = "bytes", tag = "1")]
    pub payload: Bytes,
}

/// `tollgate.v1.CheckBatchResponse`: each answer's decision.
#[derive(Clone, PartialEq, Message)]
pub struct Decisions {
    #[prost(message, repeated, tag = "1")]
    pub responses: Vec<Decided>,
}

/// A message encoded once; [`Encoded::with_string`] and
/// [`Encoded::with_message`] append one field for a single call.
#[derive(Clone, Debug)]
pub struct Encoded(Bytes);

impl Encoded {
    pub fn new(message: &impl Message) -> Self {
        Self(Bytes::from(message.encode_to_vec()))
    }

    /// The shared bytes, for a call that sends them unchanged.
    pub fn bytes(&self) -> Bytes {
        self.0.clone()
    }

    /// The shared bytes followed by string field `tag` set to `value`.
    pub fn with_string(&self, tag: u32, value: &str) -> Bytes {
        let mut buf = BytesMut::with_capacity(self.0.len() + value.len() + 8);
        buf.put_slice(&self.0);
        prost::encoding::encode_key(tag, prost::encoding::WireType::LengthDelimited, &mut buf);
        prost::encoding::encode_varint(value.len() as u64, &mut buf);
        buf.put_slice(value.as_bytes());
        buf.freeze()
    }

    /// The shared bytes followed by message field `tag` set to `value`.
    pub fn with_message(&self, tag: u32, value: &impl Message) -> Bytes {
        let mut buf = BytesMut::with_capacity(self.0.len() + value.encoded_len() + 8);
        buf.put_slice(&self.0);
        prost::encoding::message::encode(tag, value, &mut buf);
        buf.freeze()
    }
}

/// A unary method of one connection: sends pre-encoded bodies, decodes answers
/// as `A`.
#[derive(Clone)]
pub struct Method<A> {
    grpc: Grpc<Channel>,
    path: PathAndQuery,
    _answer: PhantomData<fn() -> A>,
}

impl<A: Message + Default + Send + 'static> Method<A> {
    pub fn new(channel: Channel, path: &'static str) -> Self {
        Self {
            grpc: Grpc::new(channel),
            path: PathAndQuery::from_static(path),
            _answer: PhantomData,
        }
    }

    /// Sends `body` again and decodes the whole answer as `F`: what a failed
    /// check reports.
    pub async fn call_in_full<F: Message + Default + Send + 'static>(
        &self,
        body: Bytes,
    ) -> Result<F, Status> {
        let mut full = Method::<F> {
            grpc: self.grpc.clone(),
            path: self.path.clone(),
            _answer: PhantomData,
        };
        full.call(body).await
    }

    pub async fn call(&mut self, body: Bytes) -> Result<A, Status> {
        self.grpc
            .ready()
            .await
            .map_err(|error| Status::unknown(format!("connection not ready: {error}")))?;
        let answer = self
            .grpc
            .unary(
                tonic::Request::new(body),
                self.path.clone(),
                LeanCodec::<A>(PhantomData),
            )
            .await?;
        Ok(answer.into_inner())
    }
}

/// Encodes [`Bytes`] as they are; decodes `A`.
struct LeanCodec<A>(PhantomData<fn() -> A>);

impl<A: Message + Default + Send + 'static> Codec for LeanCodec<A> {
    type Encode = Bytes;
    type Decode = A;
    type Encoder = BytesEncoder;
    type Decoder = LeanDecoder<A>;

    fn encoder(&mut self) -> BytesEncoder {
        BytesEncoder
    }

    fn decoder(&mut self) -> LeanDecoder<A> {
        LeanDecoder(PhantomData)
    }
}

struct LeanDecoder<A>(PhantomData<fn() -> A>);

impl<A: Message + Default> Decoder for LeanDecoder<A> {
    type Item = A;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<A>, Status> {
        A::decode(buf)
            .map(Some)
            .map_err(|error| Status::internal(format!("undecodable answer: {error}")))
    }

    fn buffer_settings(&self) -> BufferSettings {
        BufferSettings::default()
    }
}

/// Checks, before any load, that a field appended to shared bytes reaches the
/// server as a fresh encoding of the whole request would: `request`'s
/// `consume` appended to the bytes of `request` without it, and its `tenant`
/// to the bytes of `request` without a tenant.
pub fn check_appending(request: &tollgate::api::pb::CheckRequest) -> Result<(), String> {
    use tollgate::api::pb;
    let decode = |bytes: Bytes| pb::CheckRequest::decode(bytes).map_err(|e| e.to_string());
    if let Some(consume) = &request.consume {
        let shared = Encoded::new(&pb::CheckRequest {
            consume: None,
            ..request.clone()
        });
        let sent = decode(shared.with_message(CONSUME_FIELD, consume))?;
        if sent != *request {
            return Err(format!("appended consume: sent {sent:?}, not {request:?}"));
        }
    }
    let shared = Encoded::new(&pb::CheckRequest {
        tenant: String::new(),
        ..request.clone()
    });
    let sent = decode(shared.with_string(TENANT_FIELD, &request.tenant))?;
    if sent != *request {
        return Err(format!("appended tenant: sent {sent:?}, not {request:?}"));
    }
    Ok(())
}
