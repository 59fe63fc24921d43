//! HTTP/1.1 requests to a peer, as etcd's rafthttp sends them, and how their answers are read.
//!
//! One connection per request kind: a stream GET holds its connection for the stream's life;
//! pipeline POSTs reuse a keep-alive connection; a snapshot POST has its own. The answer codes
//! mean what they mean to etcd: 410 on a stream or 403 on a POST = we were removed; 412 =
//! cluster ID or version mismatch (the body says which); 404 on a stream = the peer does not
//! know us yet.

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use raft::eraftpb::Message;

use super::codec;
use super::headers::{self, format_id, Versions};
use super::StreamType;
use crate::peer_dial::PeerDialer;

/// Who this member is, as its requests say.
#[derive(Debug, Clone, Default)]
pub struct Identity {
    pub id: u64,
    pub cluster_id: u64,
    /// This member's advertised peer URLs (`X-PeerURLs`).
    pub peer_urls: Vec<String>,
    pub versions: Versions,
}

/// Why a request to a peer did not go through.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// etcd's `errMemberRemoved`.
    #[error("the member has been permanently removed from the cluster")]
    Removed,
    #[error("incompatible version")]
    IncompatibleVersion,
    #[error("cluster ID mismatch")]
    ClusterIdMismatch,
    #[error("peer {peer} failed to find local node {local}")]
    NotFound { peer: String, local: String },
    #[error("unhandled http status {0}")]
    Status(u16),
    #[error("unhandled error {0:?} when precondition failed")]
    Precondition(String),
    #[error("{0}")]
    Io(String),
}

/// A request body: whole (pipeline) or streamed (snapshot).
pub type RequestBody = BoxBody<Bytes, String>;

pub fn full_body(b: impl Into<Bytes>) -> RequestBody {
    Full::new(b.into()).map_err(|never| match never {}).boxed()
}

/// An open HTTP/1.1 connection to one peer URL.
pub struct Connection {
    sender: hyper::client::conn::http1::SendRequest<RequestBody>,
    authority: String,
    url: String,
}

impl Connection {
    pub async fn open(dialer: &PeerDialer, url: &str, timeout: std::time::Duration) -> Result<Connection, RequestError> {
        let io = dialer.connect_io(url, timeout).await.map_err(RequestError::Io)?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
            .await
            .map_err(|e| RequestError::Io(format!("{url}: {e}")))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let authority = url.parse::<http::Uri>().ok().and_then(|u| u.authority().map(|a| a.to_string())).unwrap_or_else(|| "localhost".into());
        Ok(Connection { sender, authority, url: url.trim_end_matches('/').to_string() })
    }

    /// False once the peer closed the connection (a new one is needed).
    pub fn is_usable(&self) -> bool {
        !self.sender.is_closed()
    }

    async fn send(&mut self, req: Request<RequestBody>) -> Result<Response<Incoming>, RequestError> {
        self.sender.ready().await.map_err(|e| RequestError::Io(format!("{}: {e}", self.url)))?;
        self.sender.send_request(req).await.map_err(|e| RequestError::Io(format!("{}: {e}", self.url)))
    }

    fn request(&self, method: &str, path: &str, me: &Identity) -> http::request::Builder {
        let mut b = Request::builder()
            .method(method)
            .uri(path)
            .header(http::header::HOST, &self.authority)
            .header(headers::X_SERVER_FROM, format_id(me.id))
            .header(headers::X_SERVER_VERSION, &me.versions.server)
            .header(headers::X_MIN_CLUSTER_VERSION, &me.versions.min_cluster)
            .header(headers::X_ETCD_CLUSTER_ID, format_id(me.cluster_id));
        if !me.peer_urls.is_empty() {
            b = b.header(headers::X_PEER_URLS, me.peer_urls.join(","));
        }
        b
    }

    /// `GET /raft/stream/<type>/<me>`: on 200, the body the peer writes its messages into.
    pub async fn open_stream(&mut self, typ: StreamType, me: &Identity, to: u64) -> Result<Incoming, RequestError> {
        let path = format!("{}{}", typ.path_prefix(), format_id(me.id));
        let req = self
            .request("GET", &path, me)
            .header(headers::X_RAFT_TO, format_id(to))
            .body(full_body(Bytes::new()))
            .map_err(|e| RequestError::Io(e.to_string()))?;
        let resp = self.send(req).await?;
        match resp.status() {
            StatusCode::OK => Ok(resp.into_body()),
            StatusCode::GONE => Err(RequestError::Removed),
            StatusCode::NOT_FOUND => Err(RequestError::NotFound { peer: format_id(to), local: format_id(me.id) }),
            StatusCode::PRECONDITION_FAILED => Err(precondition(resp).await),
            s => Err(RequestError::Status(s.as_u16())),
        }
    }

    /// `POST /raft`: one message (the pipeline).
    pub async fn post_message(&mut self, m: &Message, me: &Identity) -> Result<(), RequestError> {
        let body = full_body(codec::encode_message(m));
        self.post(super::RAFT_PATH, "application/protobuf", body, me).await
    }

    /// `POST /raft/snapshot`: the MsgSnap frame, then `db` to its end.
    pub async fn post_snapshot(&mut self, m: &Message, db: RequestBody, me: &Identity) -> Result<(), RequestError> {
        let head = http_body_util::Full::new(Bytes::from(codec::encode_snapshot_head(m))).map_err(|never| match never {});
        let body = StreamChain::new(head.boxed(), db).boxed();
        self.post(super::SNAPSHOT_PATH, "application/octet-stream", body, me).await
    }

    /// Any other request (the peer endpoints of [`super::peer_api`], the probes): its answer
    /// read whole, whatever its status.
    pub async fn call(&mut self, method: &str, path: &str, content_type: Option<&str>, body: Bytes, me: &Identity) -> Result<Answer, RequestError> {
        let mut b = self.request(method, path, me);
        if let Some(ct) = content_type {
            b = b.header(http::header::CONTENT_TYPE, ct);
        }
        let req = b.body(full_body(body)).map_err(|e| RequestError::Io(e.to_string()))?;
        let resp = self.send(req).await?;
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.map_err(|e| RequestError::Io(format!("{}: {e}", self.url)))?.to_bytes();
        Ok(Answer { status: parts.status, headers: parts.headers, body })
    }

    async fn post(&mut self, path: &str, content_type: &str, body: RequestBody, me: &Identity) -> Result<(), RequestError> {
        let req = self
            .request("POST", path, me)
            .header(http::header::CONTENT_TYPE, content_type)
            .body(body)
            .map_err(|e| RequestError::Io(e.to_string()))?;
        let resp = self.send(req).await?;
        match resp.status() {
            StatusCode::NO_CONTENT => Ok(()),
            StatusCode::FORBIDDEN => Err(RequestError::Removed),
            StatusCode::PRECONDITION_FAILED => Err(precondition(resp).await),
            s => Err(RequestError::Status(s.as_u16())),
        }
    }
}

/// A whole answer of [`Connection::call`].
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Answer {
    /// The body as Go's `http.Error` wrote it: its text without the newline.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).trim_end_matches('\n').to_string()
    }
}

/// A 412's body names which check failed.
async fn precondition(resp: Response<Incoming>) -> RequestError {
    let body = match resp.into_body().collect().await {
        Ok(b) => String::from_utf8_lossy(&b.to_bytes()).into_owned(),
        Err(e) => return RequestError::Io(e.to_string()),
    };
    match body.trim_end_matches('\n') {
        headers::ERR_INCOMPATIBLE_VERSION => RequestError::IncompatibleVersion,
        headers::ERR_CLUSTER_ID_MISMATCH => RequestError::ClusterIdMismatch,
        other => RequestError::Precondition(other.to_string()),
    }
}

/// Two bodies one after the other (the snapshot's head frame, then its database).
struct StreamChain {
    first: Option<RequestBody>,
    second: RequestBody,
}

impl StreamChain {
    fn new(first: RequestBody, second: RequestBody) -> StreamChain {
        StreamChain { first: Some(first), second }
    }
}

impl hyper::body::Body for StreamChain {
    type Data = Bytes;
    type Error = String;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, String>>> {
        use std::task::Poll;
        if let Some(first) = self.first.as_mut() {
            match std::pin::Pin::new(first).poll_frame(cx) {
                Poll::Ready(None) => self.first = None,
                other => return other,
            }
        }
        std::pin::Pin::new(&mut self.second).poll_frame(cx)
    }
}
