//! `grpc.health.v1.Health` on the client port, as etcd registers grpc-go's health server: service
//! "" (every etcd service) is SERVING while the server serves; any other name is unknown
//! (Check: NotFound "unknown service"; Watch: SERVICE_UNKNOWN).

use std::pin::Pin;

use etcd_proto::grpc_health_v1::health_check_response::ServingStatus;
use etcd_proto::grpc_health_v1::health_server::Health;
use etcd_proto::grpc_health_v1::{HealthCheckRequest, HealthCheckResponse};
use tonic::{Request, Response, Status};

pub struct HealthService;

fn status_of(service: &str) -> Option<ServingStatus> {
    // client listeners start only once this member is published, so "" is SERVING from then on
    service.is_empty().then_some(ServingStatus::Serving)
}

type WatchStream = Pin<Box<dyn tokio_stream::Stream<Item = Result<HealthCheckResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Health for HealthService {
    async fn check(&self, request: Request<HealthCheckRequest>) -> Result<Response<HealthCheckResponse>, Status> {
        match status_of(&request.get_ref().service) {
            Some(s) => Ok(Response::new(HealthCheckResponse { status: s as i32 })),
            None => Err(Status::not_found("unknown service")),
        }
    }

    type WatchStream = WatchStream;

    /// The status now; the status of "" does not change while the listener serves, so the
    /// stream then stays open until the client cancels it (or the server stops).
    async fn watch(&self, request: Request<HealthCheckRequest>) -> Result<Response<Self::WatchStream>, Status> {
        let status = status_of(&request.get_ref().service).unwrap_or(ServingStatus::ServiceUnknown);
        let first = tokio_stream::once(Ok(HealthCheckResponse { status: status as i32 }));
        let stream = tokio_stream::StreamExt::chain(first, tokio_stream::pending());
        Ok(Response::new(Box::pin(stream)))
    }
}
