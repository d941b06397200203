//! `grpc.health.v1.Health` for the sidecar: the standard service, except that
//! `Watch` streams end once shutdown begins (after telling the watcher
//! NOT_SERVING), so that a connected health watcher never holds up the drain.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::sync::watch;
use tonic::codegen::tokio_stream::Stream;
use tonic::{Request, Response, Status};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_server::{Health, HealthServer};
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};
use tonic_health::server::{HealthReporter, HealthService, WatchStream};

/// The health service over `reporter`'s statuses; `stopping` turns true when
/// shutdown begins.
pub fn service(
    reporter: HealthReporter,
    stopping: watch::Receiver<bool>,
) -> HealthServer<DrainingHealth> {
    HealthServer::new(DrainingHealth {
        inner: HealthService::from_health_reporter(reporter),
        stopping,
    })
}

/// Health service whose watch streams end at shutdown.
#[derive(Debug)]
pub struct DrainingHealth {
    inner: HealthService,
    stopping: watch::Receiver<bool>,
}

#[tonic::async_trait]
impl Health for DrainingHealth {
    async fn check(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        self.inner.check(request).await
    }

    type WatchStream = DrainingWatch;

    async fn watch(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let inner = self.inner.watch(request).await?.into_inner();
        let mut stopping = self.stopping.clone();
        Ok(Response::new(DrainingWatch {
            inner,
            stopping: Box::pin(async move {
                let _ = stopping.wait_for(|stopping| *stopping).await;
            }),
            done: false,
        }))
    }
}

/// A health watch stream that sends NOT_SERVING and ends when shutdown begins.
pub struct DrainingWatch {
    inner: WatchStream,
    stopping: Pin<Box<dyn Future<Output = ()> + Send>>,
    done: bool,
}

impl Stream for DrainingWatch {
    type Item = Result<HealthCheckResponse, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        if self.stopping.as_mut().poll(cx).is_ready() {
            self.done = true;
            return Poll::Ready(Some(Ok(HealthCheckResponse {
                status: ServingStatus::NotServing as i32,
            })));
        }
        Pin::new(&mut self.inner).poll_next(cx)
    }
}
