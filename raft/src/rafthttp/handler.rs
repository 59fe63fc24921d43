//! [`RaftHttpHandler`]: the `/raft...` paths of the peer listener, answering as etcd does.
//!
//! | path                          | method | answer |
//! |-------------------------------|--------|--------|
//! | `/raft`                       | POST   | 204; 400 unreadable; 403 removed sender; 412 checks |
//! | `/raft/stream/{msgapp,message}/<from>` | GET | 200 then our messages to `<from>`; 404 unknown path or sender; 410 removed sender; 412 checks or `X-Raft-To` not us |
//! | `/raft/snapshot`              | POST   | 204 once the database is saved; 400 bad head; 412 checks |
//! | `/raft/probing`               | any    | 200 `{"OK":true,"Now":<RFC 3339>}` |
//!
//! Error bodies are Go's `http.Error` (text, newline, `text/plain; charset=utf-8`, nosniff);
//! a removed sender's 403 is etcd's JSON `HTTPError`. Every raft answer carries
//! `X-Etcd-Cluster-ID`; stream answers also `X-Server-Version`.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use raft::eraftpb::MessageType;

use super::codec::{self, MessageDecoder, MAX_MESSAGE_BYTES};
use super::headers::{self, format_id, parse_id, remote_from_request};
use super::host::{ProcessError, SnapshotBody};
use super::transport::HttpTransport;
use super::StreamType;

pub type ResponseBody = BoxBody<Bytes, Infallible>;

/// A request body the handler can read: hyper's own, or a server's wrapper around it.
pub trait PeerRequestBody: hyper::body::Body<Data = Bytes, Error = Self::ReadError> + Send + Unpin + 'static {
    type ReadError: std::error::Error + Send + Sync + 'static;
}

impl<B> PeerRequestBody for B
where
    B: hyper::body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    type ReadError = B::Error;
}

/// The raft part of the peer listener.
#[derive(Clone)]
pub struct RaftHttpHandler {
    transport: Arc<HttpTransport>,
}

/// Go's `http.Error`.
pub fn http_error(status: StatusCode, msg: &str) -> Response<ResponseBody> {
    let mut r = Response::new(Full::new(Bytes::from(format!("{msg}\n"))).boxed());
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(http::header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    h.insert("X-Content-Type-Options", HeaderValue::from_static("nosniff"));
    r
}

fn empty(status: StatusCode) -> Response<ResponseBody> {
    let mut r = Response::new(Full::new(Bytes::new()).boxed());
    *r.status_mut() = status;
    r
}

fn method_not_allowed(allow: &'static str) -> Response<ResponseBody> {
    let mut r = http_error(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed");
    r.headers_mut().insert(http::header::ALLOW, HeaderValue::from_static(allow));
    r
}

/// etcd's `HTTPError.WriteTo` for a removed sender.
fn removed_member() -> Response<ResponseBody> {
    let body = serde_json::json!({ "message": ProcessError::RemovedMember.to_string() }).to_string();
    let mut r = Response::new(Full::new(Bytes::from(body)).boxed());
    *r.status_mut() = StatusCode::FORBIDDEN;
    r.headers_mut().insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

impl RaftHttpHandler {
    pub fn new(transport: Arc<HttpTransport>) -> RaftHttpHandler {
        RaftHttpHandler { transport }
    }

    /// True for the paths this handler answers (the rest of the peer listener is the server's).
    pub fn handles(path: &str) -> bool {
        path == super::RAFT_PATH || path.starts_with("/raft/")
    }

    pub async fn handle<B: PeerRequestBody>(&self, req: Request<B>) -> Response<ResponseBody> {
        let path = req.uri().path().to_string();
        let mut resp = match path.as_str() {
            super::RAFT_PATH => self.pipeline(req).await,
            super::SNAPSHOT_PATH => self.snapshot(req).await,
            super::PROBING_PATH => probing(),
            p if p.starts_with("/raft/stream/") => self.stream(req),
            _ => http_error(StatusCode::NOT_FOUND, "404 page not found"),
        };
        // etcd sets it once the method is right, on every answer of these three handlers
        let raft_path = path == super::RAFT_PATH || path == super::SNAPSHOT_PATH || path.starts_with("/raft/stream/");
        if raft_path && resp.status() != StatusCode::METHOD_NOT_ALLOWED {
            let cid = format_id(self.transport.identity().cluster_id);
            if let Ok(v) = HeaderValue::from_str(&cid) {
                resp.headers_mut().entry(headers::X_ETCD_CLUSTER_ID).or_insert(v);
            }
        }
        resp
    }

    /// The cluster-ID and version checks every raft request passes first.
    fn check<B>(&self, req: &Request<B>) -> Result<(), Box<Response<ResponseBody>>> {
        let me = self.transport.identity();
        if let Err(e) = headers::check_compatibility(req.headers(), &me.versions, me.cluster_id) {
            tracing::warn!(error = %e, from = ?req.headers().get(headers::X_SERVER_FROM), "refused a peer request");
            return Err(Box::new(http_error(StatusCode::PRECONDITION_FAILED, &e.to_string())));
        }
        Ok(())
    }

    /// What the pipeline and snapshot handlers do first: POST only, the checks, then etcd's
    /// `addRemoteFromRequest` (so we can answer a member we do not know yet).
    fn accept_post<B>(&self, req: &Request<B>) -> Result<(), Box<Response<ResponseBody>>> {
        if req.method() != Method::POST {
            return Err(Box::new(method_not_allowed("POST")));
        }
        self.check(req)?;
        if let Some((from, urls)) = remote_from_request(req.headers()) {
            self.transport.add_remote(from, urls);
        }
        Ok(())
    }

    async fn pipeline<B: PeerRequestBody>(&self, req: Request<B>) -> Response<ResponseBody> {
        if let Err(r) = self.accept_post(&req) {
            return *r;
        }
        let body = match http_body_util::Limited::new(req.into_body(), MAX_MESSAGE_BYTES as usize).collect().await {
            Ok(b) => b.to_bytes(),
            Err(_) => return http_error(StatusCode::BAD_REQUEST, "error reading raft message"),
        };
        let m = match codec::decode_message(&body) {
            Ok(m) => m,
            Err(_) => return http_error(StatusCode::BAD_REQUEST, "error unmarshalling raft message"),
        };
        crate::metrics::peer_received(m.from).inc_by(body.len() as u64);
        process_answer(self.transport.host().process(m), "error processing raft message")
    }

    async fn snapshot<B: PeerRequestBody>(&self, req: Request<B>) -> Response<ResponseBody> {
        if let Err(r) = self.accept_post(&req) {
            return *r;
        }
        let mut body = req.into_body();
        let mut buf = Vec::new();
        let mut dec = MessageDecoder::with_limit(MAX_MESSAGE_BYTES);
        let (m, used) = loop {
            match dec.decode(&buf) {
                Ok(Some(done)) => break done,
                Ok(None) => {}
                Err(e) => return http_error(StatusCode::BAD_REQUEST, &format!("failed to decode raft message ({e})")),
            }
            match body.frame().await {
                Some(Ok(f)) => {
                    if let Ok(d) = f.into_data() {
                        buf.extend_from_slice(&d);
                    }
                }
                Some(Err(e)) => return http_error(StatusCode::BAD_REQUEST, &format!("failed to decode raft message ({e})")),
                None => return http_error(StatusCode::BAD_REQUEST, "failed to decode raft message (unexpected EOF)"),
            }
        };
        if m.get_msg_type() != MessageType::MsgSnapshot {
            return http_error(StatusCode::BAD_REQUEST, "wrong raft message type");
        }
        tracing::info!("local-member-id" = %format_id(m.to), "remote-snapshot-sender-id" = %format_id(m.from), "incoming-snapshot-index" = m.get_snapshot().get_metadata().index, "receiving database snapshot");
        let rest = Bytes::from(buf.split_off(used));
        let db: SnapshotBody = Box::pin(tokio_stream::StreamExt::filter_map(
            tokio_stream::StreamExt::chain(
                tokio_stream::iter([Ok::<Bytes, String>(rest)]),
                http_body_util::BodyStream::new(body).map_frames(),
            ),
            |r| match r {
                Ok(b) if b.is_empty() => None,
                other => Some(other),
            },
        ));
        let result = self.transport.host().receive_snapshot(m, db).await;
        match result {
            Err(ProcessError::Other(e)) => http_error(StatusCode::INTERNAL_SERVER_ERROR, &format!("failed to process raft message ({e})")),
            other => process_answer(other, ""),
        }
    }

    fn stream<B>(&self, req: Request<B>) -> Response<ResponseBody> {
        if req.method() != Method::GET {
            return method_not_allowed("GET");
        }
        let me = self.transport.identity();
        let mut resp = self.stream_answer(&req, me.id);
        if let Ok(v) = HeaderValue::from_str(&me.versions.server) {
            resp.headers_mut().insert(headers::X_SERVER_VERSION, v);
        }
        resp
    }

    fn stream_answer<B>(&self, req: &Request<B>, local: u64) -> Response<ResponseBody> {
        if let Err(r) = self.check(req) {
            return *r;
        }
        let path = req.uri().path();
        let (dir, from) = path.rsplit_once('/').unwrap_or(("", ""));
        let typ = match dir {
            "/raft/stream/msgapp" => StreamType::MsgApp,
            "/raft/stream/message" => StreamType::Message,
            _ => return http_error(StatusCode::NOT_FOUND, "invalid path"),
        };
        let Some(from) = parse_id(from) else { return http_error(StatusCode::NOT_FOUND, "invalid from") };
        if self.transport.host().is_removed(from) {
            return http_error(StatusCode::GONE, "removed member");
        }
        if !self.transport.is_peer(from) {
            if let Some(urls) = req.headers().get(headers::X_PEER_URLS).and_then(|v| v.to_str().ok()).filter(|u| !u.is_empty()) {
                self.transport.add_remote(from, urls.split(',').map(str::to_string).collect());
            }
            return http_error(StatusCode::NOT_FOUND, "error sender not found");
        }
        let to = req.headers().get(headers::X_RAFT_TO).and_then(|v| v.to_str().ok());
        if to != Some(format_id(local).as_str()) {
            return http_error(StatusCode::PRECONDITION_FAILED, "to field mismatch");
        }
        let Some(chunks) = self.transport.attach_writer(from, typ) else {
            return http_error(StatusCode::NOT_FOUND, "error sender not found");
        };
        let frames = tokio_stream::StreamExt::map(tokio_stream::wrappers::ReceiverStream::new(chunks), |b| Ok(Frame::data(b)));
        Response::new(BodyExt::boxed(StreamBody::new(frames)))
    }
}

/// etcd's answers to `Raft.Process`.
fn process_answer(r: Result<(), ProcessError>, other_msg: &str) -> Response<ResponseBody> {
    match r {
        Ok(()) => empty(StatusCode::NO_CONTENT),
        Err(ProcessError::RemovedMember) => removed_member(),
        Err(ProcessError::Other(e)) => {
            tracing::warn!(error = %e, "failed to process a raft message from a peer");
            http_error(StatusCode::INTERNAL_SERVER_ERROR, other_msg)
        }
    }
}

/// `github.com/xiang90/probing`'s answer: `{"OK":true,"Now":"<RFC 3339>"}`.
fn probing() -> Response<ResponseBody> {
    let now = time::OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339).unwrap_or_default();
    let body = format!("{}\n", serde_json::json!({ "OK": true, "Now": now }));
    let mut r = Response::new(Full::new(Bytes::from(body)).boxed());
    r.headers_mut().insert(http::header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    r
}

/// The data of a body's frames, errors as text.
trait MapFrames {
    fn map_frames(self) -> impl tokio_stream::Stream<Item = Result<Bytes, String>> + Send;
}

impl<B: PeerRequestBody> MapFrames for http_body_util::BodyStream<B> {
    fn map_frames(self) -> impl tokio_stream::Stream<Item = Result<Bytes, String>> + Send {
        tokio_stream::StreamExt::map(self, |f| match f {
            Ok(f) => Ok(f.into_data().unwrap_or_default()),
            Err(e) => Err(e.to_string()),
        })
    }
}

impl hyper::service::Service<Request<Incoming>> for RaftHttpHandler {
    type Response = Response<ResponseBody>;
    type Error = Infallible;
    type Future = std::pin::Pin<Box<dyn std::future::Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move { Ok(this.handle(req).await) })
    }
}

/// Serves the handler (and nothing else) on `listener`, HTTP/1.1: for tests and for a peer
/// listener that carries only raft.
pub async fn serve(listener: tokio::net::TcpListener, handler: RaftHttpHandler) {
    while let Ok((stream, _)) = listener.accept().await {
        let _ = stream.set_nodelay(true);
        let h = handler.clone();
        tokio::spawn(async move {
            let io = hyper_util::rt::TokioIo::new(stream);
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, h).await;
        });
    }
}
