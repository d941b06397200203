//! The protobuf codec of tollgate's services: prost encoding, with undecodable
//! request bodies answered as `INVALID_ARGUMENT` instead of `INTERNAL`.

use std::marker::PhantomData;

use prost::bytes::Buf as _;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};
use tonic::Status;
use tonic_prost::{ProstCodec, ProstEncoder};

/// Prost codec whose decoder reports malformed messages as `INVALID_ARGUMENT`.
#[derive(Debug, Clone)]
pub struct ProtoCodec<T, U> {
    _types: PhantomData<(T, U)>,
}

impl<T, U> Default for ProtoCodec<T, U> {
    fn default() -> Self {
        Self {
            _types: PhantomData,
        }
    }
}

impl<T, U> Codec for ProtoCodec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = ProtoDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, U>::raw_encoder(BufferSettings::default())
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProtoDecoder { _type: PhantomData }
    }
}

/// Decodes `U`, mapping decode errors to `INVALID_ARGUMENT`.
#[derive(Debug, Clone)]
pub struct ProtoDecoder<U> {
    _type: PhantomData<U>,
}

impl<U: prost::Message + Default + 'static> Decoder for ProtoDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<Self::Item>, Self::Error> {
        // The whole message is buffered: its limits are checked on the
        // bytes, before anything is decoded (see `bounds`).
        if buf.chunk().len() == buf.remaining() {
            super::bounds::check::<U>(buf.chunk())?;
        }
        U::decode(buf)
            .map(Some)
            .map_err(|error| Status::invalid_argument(format!("malformed request body: {error}")))
    }

    fn buffer_settings(&self) -> BufferSettings {
        BufferSettings::default()
    }
}
