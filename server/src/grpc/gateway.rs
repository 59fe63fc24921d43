//! etcd's gRPC gateway: the unary RPCs as `POST /v3/<service>/<method>` (and `/v3beta/...`)
//! with JSON bodies in the proto3 JSON mapping under the .proto field names (`int64` as strings,
//! `bytes` as base64), as etcd's grpc-gateway answers. Each route calls the same service
//! implementation the gRPC route does, so validation and errors are identical; errors come back
//! as `{"error", "message", "code"}` with grpc-gateway's HTTP status for the code.
//!
//! The unary RPCs include v3lock's (`/v3/lock/{lock,unlock}`) and v3election's
//! (`/v3/election/{campaign,proclaim,leader,resign}`), whose errors are code Unknown (HTTP 500)
//! as etcd's in-process client gives them.
//!
//! The streaming RPCs (`/v3/watch`, `/v3/lease/keepalive`, `/v3/maintenance/snapshot`,
//! `/v3/election/observe`) answer as grpc-gateway v1 streams them: the request body holds one JSON request after another
//! (read as it arrives; a message that does not parse ends the requests, except the first,
//! which is refused with 500 and code 2; a server stream's one request is read as a unary one's),
//! and the response is chunked, one
//! `{"result": <message>}` plus a newline per message. The HTTP status is sent with the first
//! message: an error before it gets the code's HTTP status; an error after it is a last
//! `{"error": {"grpc_code", "http_code", "message", "http_status"}}` with no newline. A watch
//! goes on after the body ends, until the client disconnects; keep-alives end with the body.

use std::future::Future;
use std::sync::Arc;

use axum::body::{Body, BodyDataStream, Bytes};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use etcd_proto::etcdserverpb::auth_server::Auth;
use etcd_proto::etcdserverpb::cluster_server::Cluster;
use etcd_proto::etcdserverpb::kv_server::Kv;
use etcd_proto::etcdserverpb::lease_server::Lease;
use etcd_proto::etcdserverpb::maintenance_server::Maintenance;
use etcd_proto::etcdserverpb::{LeaseKeepAliveRequest, SnapshotRequest, WatchRequest};
use futures::{Stream, StreamExt};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::{Code, Status};

use tonic::metadata::MetadataMap;

use etcd_proto::v3electionpb::election_server::Election;
use etcd_proto::v3electionpb::LeaderRequest;
use etcd_proto::v3lockpb::lock_server::Lock;

use super::election::ElectionService;
use super::lock::LockService;
use super::watch::WatchService;
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

/// The `Authorization` header as the token metadata the gRPC services read.
fn token_metadata(headers: &HeaderMap) -> MetadataMap {
    let mut md = MetadataMap::new();
    if let Some(token) = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) {
        if let Ok(v) = token.parse() {
            md.insert("token", v);
        }
    }
    md
}

/// The request of a unary or server-streaming call as grpc-gateway decodes it: the first JSON
/// value of the body (an empty body is the default request), the `Authorization` header as the
/// token metadata. A body that does not parse gives why, refused with InvalidArgument.
fn decode_request<Req>(headers: &HeaderMap, body: &Bytes) -> Result<tonic::Request<Req>, String>
where
    Req: DeserializeOwned + Default,
{
    let req = match serde_json::Deserializer::from_slice(body).into_iter().next() {
        None => Req::default(),
        Some(Ok(r)) => r,
        // a body cut short: Go's decoder says io.ErrUnexpectedEOF
        Some(Err(e)) if e.is_eof() => return Err("unexpected EOF".to_string()),
        Some(Err(e)) => return Err(e.to_string()),
    };
    Ok(tonic::Request::from_parts(token_metadata(headers), Default::default(), req))
}

/// Decodes the request (see [`decode_request`]), calls `call`, and renders its answer.
async fn handle<Req, Resp, Fut>(headers: HeaderMap, body: Bytes, call: impl FnOnce(tonic::Request<Req>) -> Fut) -> Response
where
    Req: DeserializeOwned + Default,
    Resp: Serialize,
    Fut: Future<Output = Result<tonic::Response<Resp>, Status>>,
{
    let request = match decode_request(&headers, &body) {
        Ok(r) => r,
        Err(why) => return error_response(Code::InvalidArgument, &why),
    };
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

/// Largest request message the gateway buffers: the gRPC limit, with room for JSON's base64
/// (4/3 of the bytes) and quoting.
fn max_json_message(server: &EtcdServer) -> usize {
    (server.config().max_request_bytes + super::GRPC_OVERHEAD_BYTES) * 2
}

/// What reading the next request message from a body gave.
enum Next<T> {
    Message(T),
    /// The body ended (only whitespace after the last message).
    End,
    /// The bytes are not a request message (or the message is over the size limit).
    Bad(String),
}

/// Request messages read from an HTTP body as its bytes arrive: JSON values one after another,
/// concatenated or separated by whitespace, as grpc-gateway's decoder reads them.
struct JsonMessages {
    body: BodyDataStream,
    buf: Vec<u8>,
    ended: bool,
    max: usize,
}

impl JsonMessages {
    fn new(body: Body, max: usize) -> Self {
        JsonMessages { body: body.into_data_stream(), buf: Vec::new(), ended: false, max }
    }

    async fn next<T: DeserializeOwned>(&mut self) -> Next<T> {
        loop {
            let start = self.buf.iter().position(|b| !b.is_ascii_whitespace()).unwrap_or(self.buf.len());
            self.buf.drain(..start);
            if !self.buf.is_empty() {
                let mut values = serde_json::Deserializer::from_slice(&self.buf).into_iter::<T>();
                match values.next() {
                    Some(Ok(m)) => {
                        let used = values.byte_offset();
                        self.buf.drain(..used);
                        return Next::Message(m);
                    }
                    // incomplete: wait for more bytes, up to the limit
                    Some(Err(e)) if e.is_eof() && !self.ended && self.buf.len() > self.max => {
                        return Next::Bad(format!("request message larger than {} bytes", self.max));
                    }
                    Some(Err(e)) if e.is_eof() && !self.ended => {}
                    Some(Err(e)) => return Next::Bad(e.to_string()),
                    None => {}
                }
            } else if self.ended {
                return Next::End;
            }
            match self.body.next().await {
                Some(Ok(bytes)) => self.buf.extend_from_slice(&bytes),
                // a body cut short ends the requests as its end does
                Some(Err(_)) | None => self.ended = true,
            }
        }
    }
}

type RequestStream<T> = std::pin::Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// The request stream handed to a bidirectional service: the messages of the body, ending at
/// its end or at the first message that does not parse (as grpc-gateway closes its send side).
/// A first message that does not parse is answered at once as grpc-gateway does (500, code 2).
async fn request_stream<T>(body: Body, max: usize) -> Result<RequestStream<T>, Response>
where
    T: DeserializeOwned + Send + 'static,
{
    let mut messages = JsonMessages::new(body, max);
    let first = match messages.next::<T>().await {
        Next::Message(m) => m,
        Next::End => return Ok(futures::stream::empty().boxed()),
        Next::Bad(e) => return Err(error_response(Code::Unknown, &e)),
    };
    let rest = futures::stream::unfold(messages, |mut messages| async move {
        match messages.next::<T>().await {
            Next::Message(m) => Some((Ok(m), messages)),
            Next::End => None,
            Next::Bad(e) => {
                tracing::debug!(error = %e, "gateway: a stream's request does not parse; no more requests read");
                None
            }
        }
    });
    Ok(futures::stream::once(async move { Ok(first) }).chain(rest).boxed())
}

/// grpc-gateway's stream error object.
#[derive(Serialize)]
struct StreamError<'a> {
    grpc_code: i32,
    http_code: u16,
    message: &'a str,
    http_status: &'a str,
}

fn error_chunk(status: &Status) -> Bytes {
    let http = http_status(status.code());
    let error = StreamError {
        grpc_code: status.code() as i32,
        http_code: http.as_u16(),
        message: status.message(),
        http_status: http.canonical_reason().unwrap_or(""),
    };
    match serde_json::to_string(&error) {
        Ok(e) => Bytes::from(format!(r#"{{"error":{e}}}"#)),
        Err(_) => Bytes::new(),
    }
}

fn result_chunk<T: Serialize>(message: &T) -> Result<Bytes, Status> {
    match serde_json::to_string(message) {
        Ok(m) => Ok(Bytes::from(format!("{{\"result\":{m}}}\n"))),
        Err(e) => Err(Status::unknown(e.to_string())),
    }
}

fn chunked_response(status: StatusCode, body: Body, from_service: bool) -> Response {
    let mut resp = (status, [(header::CONTENT_TYPE, "application/json")], body).into_response();
    if from_service {
        // the gRPC response header grpc-gateway passes on
        resp.headers_mut().insert("grpc-metadata-content-type", HeaderValue::from_static("application/grpc"));
    }
    resp
}

/// Streams a service's answers (see the module docs). The status line waits for the first
/// answer, so an error before it gets its own HTTP status.
async fn stream_response<T, S>(opened: Result<S, Status>) -> Response
where
    T: Serialize + Send + 'static,
    S: Stream<Item = Result<T, Status>> + Send + Unpin + 'static,
{
    let mut answers = match opened {
        Ok(s) => s,
        Err(status) => {
            let body = Body::from_stream(futures::stream::iter([Ok::<_, std::convert::Infallible>(error_chunk(&status))]));
            return chunked_response(http_status(status.code()), body, false);
        }
    };
    let first = match answers.next().await {
        None => return chunked_response(StatusCode::OK, Body::from_stream(futures::stream::empty::<Result<Bytes, std::convert::Infallible>>()), false),
        Some(Err(status)) => {
            let body = Body::from_stream(futures::stream::iter([Ok::<_, std::convert::Infallible>(error_chunk(&status))]));
            return chunked_response(http_status(status.code()), body, false);
        }
        Some(Ok(m)) => m,
    };
    let all = futures::stream::once(async move { Ok(first) }).chain(answers);
    // each answer is a chunk; the first error is the last chunk
    let chunks = futures::stream::unfold(Some(all.boxed()), |state| async move {
        let mut answers = state?;
        let chunk = match answers.next().await? {
            Ok(m) => match result_chunk(&m) {
                Ok(c) => return Some((Ok::<_, std::convert::Infallible>(c), Some(answers))),
                Err(status) => error_chunk(&status),
            },
            Err(status) => error_chunk(&status),
        };
        Some((Ok(chunk), None))
    });
    chunked_response(StatusCode::OK, Body::from_stream(chunks), true)
}

/// A server-streaming call: its one request decoded as a unary call's, its answers streamed.
async fn handle_server_stream<Req, T, S, Fut>(headers: HeaderMap, body: Bytes, call: impl FnOnce(tonic::Request<Req>) -> Fut) -> Response
where
    Req: DeserializeOwned + Default,
    T: Serialize + Send + 'static,
    S: Stream<Item = Result<T, Status>> + Send + Unpin + 'static,
    Fut: Future<Output = Result<tonic::Response<S>, Status>>,
{
    match decode_request(&headers, &body) {
        Ok(request) => stream_response(call(request).await.map(tonic::Response::into_inner)).await,
        Err(why) => error_response(Code::InvalidArgument, &why),
    }
}

/// The streaming routes: `/v3/watch`, `/v3/lease/keepalive`, `/v3/maintenance/snapshot` and
/// `/v3/election/observe` (see the module docs).
fn stream_routes(mut router: Router, server: Arc<EtcdServer>) -> Router {
    let max = max_json_message(&server);
    let max_response_bytes = server.config().max_request_bytes + super::GRPC_OVERHEAD_BYTES;
    let watch = Arc::new(WatchService { server: server.clone(), max_response_bytes });
    let lease = Arc::new(LeaseService { server: server.clone() });
    let maintenance = Arc::new(MaintenanceService { server: server.clone() });
    let election = Arc::new(ElectionService { server });
    let watch_h = move |headers: HeaderMap, body: Body| {
        let watch = watch.clone();
        async move {
            match request_stream::<WatchRequest>(body, max).await {
                Ok(requests) => stream_response(watch.open(token_metadata(&headers), None, requests)).await,
                Err(refused) => refused,
            }
        }
    };
    let keep_alive_h = move |body: Body| {
        let lease = lease.clone();
        async move {
            match request_stream::<LeaseKeepAliveRequest>(body, max).await {
                Ok(requests) => stream_response(lease.keep_alive(requests)).await,
                Err(refused) => refused,
            }
        }
    };
    let snapshot_h = move |headers: HeaderMap, body: Bytes| {
        let maintenance = maintenance.clone();
        async move { handle_server_stream::<SnapshotRequest, _, _, _>(headers, body, |r| async move { maintenance.snapshot(r).await }).await }
    };
    let observe_h = move |headers: HeaderMap, body: Bytes| {
        let election = election.clone();
        async move { handle_server_stream::<LeaderRequest, _, _, _>(headers, body, |r| async move { election.observe(r).await }).await }
    };
    for prefix in ["/v3", "/v3beta"] {
        router = router
            .route(&format!("{prefix}/watch"), post(watch_h.clone()))
            .route(&format!("{prefix}/lease/keepalive"), post(keep_alive_h.clone()))
            .route(&format!("{prefix}/maintenance/snapshot"), post(snapshot_h.clone()))
            .route(&format!("{prefix}/election/observe"), post(observe_h.clone()));
    }
    router
}

pub fn router(server: Arc<EtcdServer>) -> Router {
    let kv = Arc::new(KvService { server: server.clone() });
    let lease = Arc::new(LeaseService { server: server.clone() });
    let cluster = Arc::new(ClusterService { server: server.clone() });
    let auth = Arc::new(AuthService { server: server.clone() });
    let maintenance = Arc::new(MaintenanceService { server: server.clone() });
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
    let lock = Arc::new(LockService { server: server.clone() });
    let election = Arc::new(ElectionService { server: server.clone() });
    routes!(router, lock,
        "/lock/lock" => lock,
        "/lock/unlock" => unlock,
    );
    routes!(router, election,
        "/election/campaign" => campaign,
        "/election/proclaim" => proclaim,
        "/election/leader" => leader,
        "/election/resign" => resign,
    );
    stream_routes(router, server)
}
