//! The benchmarks' floor (`tollgate.bench.v1.Floor/Echo`, feature
//! `bench-floor`): served beside `EntitlementService` through the same
//! listener, caller identity, admission and limits ([`super::bounds`]), it
//! answers as many bytes as a Check response has and decides nothing. The
//! load generator's `floor` scenario calls it; what a Check costs above it
//! is the decision point's own work. The shipped binary has no such service.

use prost::bytes::Bytes;
use tonic::{Request, Response, Status};

/// The generated messages and server of `tollgate.bench.v1`.
#[allow(
    clippy::all,
    clippy::pedantic,
    clippy::allow_attributes_without_reason,
    reason = "generated code is not held to the project's lints"
)]
pub mod pb {
    tonic::include_proto!("tollgate.bench.v1");
}

/// The largest answer the floor gives.
const MAX_RESPONSE_BYTES: usize = 1 << 16;

/// The bytes every answer is cut from.
static ZEROS: [u8; MAX_RESPONSE_BYTES] = [0; MAX_RESPONSE_BYTES];

/// The floor service.
#[derive(Debug, Default, Clone, Copy)]
pub struct Floor;

#[tonic::async_trait]
impl pb::floor_server::Floor for Floor {
    async fn echo(
        &self,
        request: Request<pb::FloorRequest>,
    ) -> Result<Response<pb::FloorResponse>, Status> {
        let wanted = usize::try_from(request.get_ref().response_bytes).unwrap_or(usize::MAX);
        if wanted > MAX_RESPONSE_BYTES {
            return Err(Status::invalid_argument(format!(
                "response_bytes: at most {MAX_RESPONSE_BYTES}"
            )));
        }
        Ok(Response::new(pb::FloorResponse {
            payload: Bytes::from_static(&ZEROS[..wanted]),
        }))
    }
}
