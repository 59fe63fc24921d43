//! The client listener: etcd's gRPC services (with `grpc.health.v1.Health`), plus over HTTP/1.1
//! on the same port `/version`, the gateway and the probes of crate::health (`/metrics`,
//! `/health`, `/livez`, `/readyz`). A gRPC method etcd-rs has not built yet answers
//! `Unimplemented` naming it. With `--listen-client-http-urls` the two halves are split as
//! etcd splits them: the client URLs serve gRPC only, the HTTP URLs everything else
//! ([`ClientTraffic`]); `--enable-grpc-gateway=false` leaves the `/v3/...` gateway out.

mod access;
mod auth;
mod cluster;
mod dispatch;
mod election;
mod gateway;
mod health;
mod kv;
mod leader_bound;
mod lease;
mod lock;
mod maintenance;
pub(crate) mod recipes;
mod unary;
mod watch;

use std::sync::Arc;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::IntoResponse;
use etcd_proto::etcdserverpb::auth_server::AuthServer;
use etcd_proto::grpc_health_v1::health_server::HealthServer;
use etcd_proto::etcdserverpb::cluster_server::ClusterServer;
use etcd_proto::etcdserverpb::lease_server::LeaseServer;
use etcd_proto::etcdserverpb::maintenance_server::MaintenanceServer;
use etcd_proto::etcdserverpb::watch_server::WatchServer;
use etcd_proto::v3electionpb::election_server::ElectionServer;
use etcd_proto::v3lockpb::lock_server::LockServer;

use crate::etcd_server::EtcdServer;
pub use dispatch::GrpcDispatch;

/// gRPC framing and headers on top of `--max-request-bytes`, as etcd allows.
const GRPC_OVERHEAD_BYTES: usize = 512 * 1024;

/// What one client listener serves (etcd's `traffic` field of "serving client traffic").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientTraffic {
    /// gRPC and the HTTP endpoints on one port (no `--listen-client-http-urls`).
    GrpcAndHttp,
    /// A `--listen-client-urls` listener when `--listen-client-http-urls` is given.
    Grpc,
    /// A `--listen-client-http-urls` listener.
    Http,
}

impl ClientTraffic {
    /// etcd's name in its log line.
    pub fn name(self) -> &'static str {
        match self {
            ClientTraffic::GrpcAndHttp => "grpc+http",
            ClientTraffic::Grpc => "grpc",
            ClientTraffic::Http => "http",
        }
    }

    /// The HTTP versions such a listener speaks.
    pub fn versions(self) -> crate::serve::HttpVersions {
        match self {
            ClientTraffic::GrpcAndHttp => crate::serve::HttpVersions::Both,
            ClientTraffic::Grpc => crate::serve::HttpVersions::Http2Only,
            ClientTraffic::Http => crate::serve::HttpVersions::Http1Only,
        }
    }
}

/// The client listener: its gRPC services, dispatched by [`GrpcDispatch`], and the routes of
/// everything else on the port (none but the fallback on a gRPC-only listener).
pub fn routes(server: Arc<EtcdServer>, traffic: ClientTraffic) -> GrpcDispatch<tonic::service::Routes> {
    let max_recv = server.config().max_request_bytes + GRPC_OVERHEAD_BYTES;
    let services = dispatch::Services::new(
        unary::KvCalls::new(kv::KvService { server: server.clone() }, max_recv),
        WatchServer::new(watch::WatchService { server: server.clone(), max_response_bytes: max_recv })
            .max_decoding_message_size(max_recv)
            .max_encoding_message_size(usize::MAX),
        LeaseServer::new(lease::LeaseService { server: server.clone() }).max_decoding_message_size(max_recv),
        MaintenanceServer::new(maintenance::MaintenanceService { server: server.clone() })
            .max_decoding_message_size(max_recv),
        ClusterServer::new(cluster::ClusterService { server: server.clone() }).max_decoding_message_size(max_recv),
        AuthServer::new(auth::AuthService { server: server.clone() }).max_decoding_message_size(max_recv),
        LockServer::new(lock::LockService { server: server.clone() }).max_decoding_message_size(max_recv),
        ElectionServer::new(election::ElectionService { server: server.clone() }).max_decoding_message_size(max_recv),
        HealthServer::new(health::HealthService),
    );
    let dispatch_server = server.clone();
    let access = access::AccessControl::new(server.clone());
    let mut router = axum::Router::new();
    if traffic != ClientTraffic::Grpc {
        let version_server = server.clone();
        router = router
            .merge(crate::health::router(server.clone()))
            .route("/version", axum::routing::get(move || version(version_server.clone())));
        if server.config().enable_grpc_gateway {
            router = router.merge(gateway::router(server));
        }
    }
    let router = router
        .fallback(unimplemented_method)
        .layer(axum::middleware::from_fn_with_state(access, access::control))
        .layer(crate::metrics::GrpcMetricsLayer);
    GrpcDispatch::new(services, tonic::service::Routes::from(router), dispatch_server)
}

async fn version(server: Arc<EtcdServer>) -> impl IntoResponse {
    let cluster = server.members().cluster_version().unwrap_or_else(|| "not_decided".to_string());
    let body = serde_json::json!({"etcdserver": server.config().etcd_api_version, "etcdcluster": cluster}).to_string();
    ([(header::CONTENT_TYPE, "application/json")], body)
}

/// Any other path: a gRPC call to a service or method not built yet, or an unknown HTTP path.
async fn unimplemented_method(req: axum::extract::Request) -> axum::response::Response {
    let is_grpc = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"));
    if !is_grpc {
        return (StatusCode::NOT_FOUND, "404 page not found\n").into_response();
    }
    let method = req.uri().path().trim_start_matches('/').replace('/', ".");
    let message = format!("etcd-rs: {method} is not implemented yet");
    let mut resp = StatusCode::OK.into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    h.insert("grpc-status", HeaderValue::from_static("12"));
    if let Ok(v) = HeaderValue::from_str(&percent_encode(&message)) {
        h.insert("grpc-message", v);
    }
    resp
}

/// grpc-message is percent-encoded outside printable ASCII (and '%').
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
