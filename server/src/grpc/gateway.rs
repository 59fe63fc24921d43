//! etcd's gRPC gateway: the unary RPCs as `POST /v3/<service>/<method>` (and `/v3beta/...`)
//! with JSON bodies in the proto3 JSON mapping under the .proto field names (`int64` as strings,
//! `bytes` as base64), as etcd's grpc-gateway answers. Each route calls the same service
//! implementation the gRPC route does, so validation and errors are identical; errors come back
//! as `{"error", "message", "code"}` with grpc-gateway's HTTP status for the code.

use std::future::Future;
use std::sync::Arc;

use axum::body::Bytes;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use etcd_proto::etcdserverpb::auth_server::Auth;
use etcd_proto::etcdserverpb::cluster_server::Cluster;
use etcd_proto::etcdserverpb::kv_server::Kv;
use etcd_proto::etcdserverpb::lease_server::Lease;
use etcd_proto::etcdserverpb::maintenance_server::Maintenance;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::{Code, Status};

use super::{auth::AuthService, cluster::ClusterService, kv::KvService, lease::LeaseService, maintenance::MaintenanceService};
use crate::etcd_server::EtcdServer;

/// grpc-gateway (v1, as etcd 3.4/3.5 ship it): HTTP status for a gRPC code.
fn http_status(code: Code) -> StatusCode {
    match code {
        Code::Ok => StatusCode::OK,
        Code::Cancelled => StatusCode::REQUEST_TIMEOUT,
        Code::InvalidArgument | Code::OutOfRange => StatusCode::BAD_REQUEST,
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::FailedPrecondition => StatusCode::PRECONDITION_FAILED,
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::Unknown | Code::Internal | Code::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

fn json_response(status: StatusCode, body: String) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

fn error_response(code: Code, message: &str) -> Response {
    let body = serde_json::json!({"error": message, "message": message, "code": code as i32});
    json_response(http_status(code), body.to_string())
}

/// Parses the body (empty = the default request), carries the `Authorization` header as the
/// token metadata, calls `call`, and renders its answer.
async fn handle<Req, Resp, Fut>(headers: HeaderMap, body: Bytes, call: impl FnOnce(tonic::Request<Req>) -> Fut) -> Response
where
    Req: DeserializeOwned + Default,
    Resp: Serialize,
    Fut: Future<Output = Result<tonic::Response<Resp>, Status>>,
{
    let req: Req = if body.iter().all(u8::is_ascii_whitespace) {
        Req::default()
    } else {
        match serde_json::from_slice(&body) {
            Ok(r) => r,
            Err(e) => return error_response(Code::InvalidArgument, &e.to_string()),
        }
    };
    let mut request = tonic::Request::new(req);
    if let Some(token) = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) {
        if let Ok(v) = token.parse() {
            request.metadata_mut().insert("token", v);
        }
    }
    match call(request).await {
        Ok(resp) => match serde_json::to_string(resp.get_ref()) {
            Ok(s) => json_response(StatusCode::OK, s),
            Err(e) => error_response(Code::Internal, &e.to_string()),
        },
        Err(status) => error_response(status.code(), status.message()),
    }
}

/// One route per unary RPC: `route!(router, service, "/kv/range", range)`.
macro_rules! routes {
    ($router:ident, $svc:ident, $($path:literal => $method:ident),* $(,)?) => {$(
        let s = $svc.clone();
        let h = move |headers: HeaderMap, body: Bytes| {
            let s = s.clone();
            async move { handle(headers, body, |r| async move { s.$method(r).await }).await }
        };
        $router = $router
            .route(concat!("/v3", $path), post(h.clone()))
            .route(concat!("/v3beta", $path), post(h));
    )*};
}

pub fn router(server: Arc<EtcdServer>) -> Router {
    let kv = Arc::new(KvService { server: server.clone() });
    let lease = Arc::new(LeaseService { server: server.clone() });
    let cluster = Arc::new(ClusterService { server: server.clone() });
    let auth = Arc::new(AuthService { server: server.clone() });
    let maintenance = Arc::new(MaintenanceService { server });
    let mut router = Router::new();
    routes!(router, kv,
        "/kv/range" => range,
        "/kv/put" => put,
        "/kv/deleterange" => delete_range,
        "/kv/txn" => txn,
        "/kv/compaction" => compact,
    );
    routes!(router, lease,
        "/lease/grant" => lease_grant,
        "/lease/revoke" => lease_revoke,
        "/kv/lease/revoke" => lease_revoke,
        "/lease/timetolive" => lease_time_to_live,
        "/kv/lease/timetolive" => lease_time_to_live,
        "/lease/leases" => lease_leases,
        "/kv/lease/leases" => lease_leases,
    );
    routes!(router, cluster,
        "/cluster/member/add" => member_add,
        "/cluster/member/remove" => member_remove,
        "/cluster/member/update" => member_update,
        "/cluster/member/list" => member_list,
        "/cluster/member/promote" => member_promote,
    );
    routes!(router, maintenance,
        "/maintenance/alarm" => alarm,
        "/maintenance/status" => status,
        "/maintenance/defragment" => defragment,
        "/maintenance/hash" => hash,
        "/maintenance/hashkv" => hash_kv,
        "/maintenance/transfer-leadership" => move_leader,
    );
    routes!(router, auth,
        "/auth/enable" => auth_enable,
        "/auth/disable" => auth_disable,
        "/auth/status" => auth_status,
        "/auth/authenticate" => authenticate,
        "/auth/user/add" => user_add,
        "/auth/user/get" => user_get,
        "/auth/user/list" => user_list,
        "/auth/user/delete" => user_delete,
        "/auth/user/changepw" => user_change_password,
        "/auth/user/grant" => user_grant_role,
        "/auth/user/revoke" => user_revoke_role,
        "/auth/role/add" => role_add,
        "/auth/role/get" => role_get,
        "/auth/role/list" => role_list,
        "/auth/role/delete" => role_delete,
        "/auth/role/grant" => role_grant_permission,
        "/auth/role/revoke" => role_revoke_permission,
    );
    // streaming RPCs are not bridged yet: say so instead of a bare 404
    for path in ["/watch", "/lease/keepalive", "/maintenance/snapshot"] {
        let msg = format!("etcd-rs: the gateway does not serve {path} yet (use gRPC)");
        let h = move || {
            let msg = msg.clone();
            async move { error_response(Code::Unimplemented, &msg) }
        };
        router = router.route(&format!("/v3{path}"), post(h.clone())).route(&format!("/v3beta{path}"), post(h));
    }
    router
}
