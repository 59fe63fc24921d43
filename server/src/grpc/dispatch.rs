//! gRPC calls go straight to their service, chosen by the service name in the path, ahead of the
//! axum router that serves the listener's HTTP paths (probes, `/version`, the gateway) and the
//! `Unimplemented` fallback. Routing every call through axum (and tonic's Routes) cost ~5k of the
//! ~88k instructions a put took at 256 clients (callgrind).
//!
//! A call carrying clientv3's require-leader metadata (`hasleader: true`, WithRequireLeader)
//! is refused here with `etcdserver: no leader` while this member knows no leader, unary and
//! streaming alike, as etcd's interceptors do (such streams also end once the member stays
//! leaderless: grpc/leader_bound.rs); every other call waits out an election.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use etcd_proto::etcdserverpb::auth_server::AuthServer;
use etcd_proto::etcdserverpb::cluster_server::ClusterServer;
use etcd_proto::etcdserverpb::lease_server::LeaseServer;
use etcd_proto::etcdserverpb::maintenance_server::MaintenanceServer;
use etcd_proto::etcdserverpb::watch_server::WatchServer;
use etcd_proto::grpc_health_v1::health_server::HealthServer;
use etcd_proto::v3electionpb::election_server::ElectionServer;
use etcd_proto::v3lockpb::lock_server::LockServer;
use futures::future::Either;
use tonic::codegen::{BoxFuture, Bytes, StdError};
use tonic::server::NamedService;
use tower::{Layer, Service};

use super::leader_bound::{self, LeaderBound};
use super::unary::KvCalls;
use super::{auth, cluster, election, health, lease, lock, maintenance, watch};
use crate::errors::ServerError;
use crate::etcd_server::EtcdServer;
use crate::metrics::{CountedBody, GrpcMetrics, GrpcMetricsFuture, GrpcMetricsLayer};

/// clientv3's WithRequireLeader metadata key and value.
const REQUIRE_LEADER_KEY: &str = "hasleader";
const REQUIRE_LEADER_VALUE: &[u8] = b"true";

type Response = axum::http::Response<tonic::body::Body>;

/// Declares the services a listener dispatches to: one enum variant per service, matched by
/// the service's gRPC name.
macro_rules! services {
    ($($variant:ident($server:ty),)*) => {
        enum GrpcService {
            $($variant(GrpcMetrics<$server>),)*
        }

        impl GrpcService {
            fn named(name: &str, services: &Services) -> Option<GrpcService> {
                $(
                    if name == <$server as NamedService>::NAME {
                        return Some(GrpcService::$variant(GrpcMetricsLayer.layer(services.$variant.clone())));
                    }
                )*
                None
            }

            fn call<B>(self, req: axum::http::Request<B>) -> GrpcMetricsFuture<BoxFuture<Response, Infallible>>
            where
                B: http_body::Body<Data = Bytes> + Send + 'static,
                B::Error: Into<StdError> + Send + 'static,
            {
                match self {
                    $(GrpcService::$variant(mut s) => s.call(req),)*
                }
            }
        }

        /// The client listener's gRPC services, built once.
        #[allow(non_snake_case)]
        pub struct Services {
            $($variant: $server,)*
        }
    };
}

services! {
    Kv(KvCalls),
    Watch(WatchServer<watch::WatchService>),
    Lease(LeaseServer<lease::LeaseService>),
    Maintenance(MaintenanceServer<maintenance::MaintenanceService>),
    Cluster(ClusterServer<cluster::ClusterService>),
    Auth(AuthServer<auth::AuthService>),
    Lock(LockServer<lock::LockService>),
    Election(ElectionServer<election::ElectionService>),
    Health(HealthServer<health::HealthService>),
}

impl Services {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        kv: KvCalls,
        watch: WatchServer<watch::WatchService>,
        lease: LeaseServer<lease::LeaseService>,
        maintenance: MaintenanceServer<maintenance::MaintenanceService>,
        cluster: ClusterServer<cluster::ClusterService>,
        auth: AuthServer<auth::AuthService>,
        lock: LockServer<lock::LockService>,
        election: ElectionServer<election::ElectionService>,
        health: HealthServer<health::HealthService>,
    ) -> Services {
        Services {
            Kv: kv,
            Watch: watch,
            Lease: lease,
            Maintenance: maintenance,
            Cluster: cluster,
            Auth: auth,
            Lock: lock,
            Election: election,
            Health: health,
        }
    }
}

/// The gRPC service a path names (`/etcdserverpb.KV/Put` -> `etcdserverpb.KV`).
fn service_name(path: &str) -> Option<&str> {
    path.strip_prefix('/')?.split_once('/').map(|(service, _)| service)
}

/// The client listener's service: calls of `services` go to them, anything else to `rest`.
#[derive(Clone)]
pub struct GrpcDispatch<S> {
    services: Arc<Services>,
    rest: S,
    /// Says whether a leader is known, for calls that require one.
    server: Arc<EtcdServer>,
}

impl<S> GrpcDispatch<S> {
    pub(super) fn new(services: Services, rest: S, server: Arc<EtcdServer>) -> GrpcDispatch<S> {
        GrpcDispatch { services: Arc::new(services), rest, server }
    }
}

/// Whether a call asks to be refused while there is no leader.
fn requires_leader<B>(req: &axum::http::Request<B>) -> bool {
    req.headers().get(REQUIRE_LEADER_KEY).is_some_and(|v| v.as_bytes() == REQUIRE_LEADER_VALUE)
}

/// Answers a call with `etcdserver: no leader` (counted in the gRPC metrics like any call).
fn refuse_no_leader<B>(req: axum::http::Request<B>) -> GrpcMetricsFuture<BoxFuture<Response, Infallible>> {
    let refuse = tower::service_fn(|_: axum::http::Request<CountedBody<B>>| -> BoxFuture<Response, Infallible> {
        Box::pin(async { Ok(tonic::Status::from(ServerError::NoLeader).into_http()) })
    });
    GrpcMetricsLayer.layer(refuse).call(req)
}

impl<S, B> Service<axum::http::Request<B>> for GrpcDispatch<S>
where
    S: Service<axum::http::Request<B>, Response = Response>,
    S::Error: Send + 'static,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = Response;
    type Error = S::Error;
    type Future = Either<
        Either<futures::future::MapErr<GrpcMetricsFuture<BoxFuture<Response, Infallible>>, fn(Infallible) -> S::Error>, BoxFuture<Response, S::Error>>,
        S::Future,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        // The generated servers are always ready; readiness is the rest's.
        self.rest.poll_ready(cx)
    }

    fn call(&mut self, req: axum::http::Request<B>) -> Self::Future {
        use futures::TryFutureExt;
        let unfailing = unreachable as fn(Infallible) -> S::Error;
        match service_name(req.uri().path()).and_then(|name| GrpcService::named(name, &self.services)) {
            Some(_) if requires_leader(&req) && !self.server.has_leader() => Either::Left(Either::Left(refuse_no_leader(req).map_err(unfailing))),
            Some(s) if requires_leader(&req) && leader_bound::is_bounded_stream(req.uri().path()) => {
                let server = self.server.clone();
                let bound = s.call(req).map_ok(move |resp| resp.map(|body| tonic::body::Body::new(LeaderBound::new(body, server))));
                Either::Left(Either::Right(Box::pin(bound.map_err(unfailing))))
            }
            Some(s) => Either::Left(Either::Left(s.call(req).map_err(unfailing))),
            None => Either::Right(self.rest.call(req)),
        }
    }
}

fn unreachable<E>(never: Infallible) -> E {
    match never {}
}

#[cfg(test)]
mod tests {
    use super::service_name;

    #[test]
    fn the_service_is_the_first_path_segment() {
        assert_eq!(service_name("/etcdserverpb.KV/Put"), Some("etcdserverpb.KV"));
        assert_eq!(service_name("/grpc.health.v1.Health/Check"), Some("grpc.health.v1.Health"));
        assert_eq!(service_name("/health"), None);
        assert_eq!(service_name("/v3/kv/put"), Some("v3"));
        assert_eq!(service_name(""), None);
    }
}
