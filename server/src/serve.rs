//! Serving one listener: binding its URL, the accept loop and a hyper connection per accepted
//! socket.
//!
//! Listeners are TCP (`http`/`https` URLs) or unix sockets (`unix://host:port` listens on the
//! socket file `host:port`, as etcd's `transport.NewUnixListener`; the file is removed when the
//! listener closes). HTTP/1 request bodies a handler leaves unread are read to their end after
//! the answer (up to [`DRAIN_LIMIT`] bytes), as Go's net/http does, so a body arriving after its
//! headers does not make hyper close a keep-alive connection. On client listeners the gateway's
//! requests (`/v3...` JSON) share `--max-concurrent-streams` slots, because etcd's gateway
//! reaches its gRPC server over one connection per listener.
//!
//! tonic's own server wraps every call in per-connection layers etcd-rs does not use (a boxed
//! service, error recovery, load shedding, grpc-timeout) and lets hyper add a `date` header to
//! every gRPC response, which etcd (grpc-go) does not send: ~4k instructions of a put at 256
//! clients (callgrind). Requests carry their connection's `ConnectInfo` in their extensions as
//! tonic's server puts it there, so `tonic::Request::remote_addr()` and friends still work.

use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::http::{Request, Response};
use futures::StreamExt;
use http_body::{Body as _, Frame, SizeHint};
use hyper::body::{Bytes, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener, UnixStream};
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};
use tonic::transport::server::Connected;
use tower::ServiceExt;

use crate::config::url_string;

/// etcd's (grpc-go's) server keepalive: a ping after 2 h of silence, 20 s to answer it.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(7200);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// Serves `service` on every connection `incoming` yields until `stop` turns true, then asks
/// open connections to finish (HTTP/2 GOAWAY) and returns once they have. `http1` also accepts
/// HTTP/1.1 (client and metrics listeners: probes, `/version`, the gateway); peers speak gRPC
/// only. `max_streams`: the HTTP/2 streams a connection may open at once (None: hyper's default).
pub async fn serve<I, IO, S, B>(
    incoming: I,
    service: S,
    http1: bool,
    max_streams: Option<u32>,
    mut stop: watch::Receiver<bool>,
) where
    I: futures::Stream<Item = std::io::Result<IO>> + Send,
    IO: AsyncRead + AsyncWrite + Connected + Unpin + Send + 'static,
    S: tower::Service<Request<RequestBody>, Response = Response<B>, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut builder = Builder::new(TokioExecutor::new());
    if !http1 {
        builder = builder.http2_only();
    }
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .auto_date_header(false);
    if let Some(max) = max_streams {
        builder.http2().max_concurrent_streams(max);
    }
    // hyper enforces its HTTP/1 header read timeout only with a timer.
    builder.http1().timer(TokioTimer::new());

    // Each connection task holds a sender; all of them gone means every connection closed.
    let (open_tx, mut open_rx) = mpsc::channel::<()>(1);
    // The accept loop in its own scope: leaving it drops `incoming`, which closes the listening
    // socket at once instead of after the open connections have finished.
    {
        let mut incoming = std::pin::pin!(incoming);
        loop {
            let io = tokio::select! {
                _ = stop.wait_for(|s| *s) => break,
                io = incoming.next() => match io {
                    Some(Ok(io)) => io,
                    Some(Err(e)) => {
                        tracing::debug!(error = %e, "accepting a connection failed");
                        continue;
                    }
                    None => break,
                },
            };
            let info = io.connect_info();
            let service = service.clone();
            let per_request = hyper::service::service_fn(move |req: Request<Incoming>| {
                let drain_on_drop = req.version() < axum::http::Version::HTTP_2;
                let mut req = req.map(|body| RequestBody { inner: Some(body), drain_on_drop });
                req.extensions_mut().insert(info.clone());
                service.clone().oneshot(req)
            });
            let builder = builder.clone();
            let (mut stop, open) = (stop.clone(), open_tx.clone());
            tokio::spawn(async move {
                let _open = open;
                let conn = builder.serve_connection(TokioIo::new(io), per_request);
                let mut conn = std::pin::pin!(conn);
                tokio::select! {
                    result = conn.as_mut() => {
                        if let Err(e) = result {
                            tracing::debug!(error = %e, "connection ended with an error");
                        }
                        return;
                    }
                    _ = stop.wait_for(|s| *s) => conn.as_mut().graceful_shutdown(),
                }
                let _ = conn.await;
            });
        }
    }
    drop(open_tx);
    let _ = open_rx.recv().await;
}

/// A bound listener of one URL.
pub enum Listener {
    Tcp(TcpListener),
    Unix(UnixIncoming),
}

/// Binds `u`: an http(s) URL on its IP ("localhost" binds the IPv4 loopback, as etcd clients
/// expect 127.0.0.1 to answer), a unix URL on the socket file `host:port`, replacing a stale one.
pub async fn bind(u: &url::Url) -> Result<Listener, String> {
    match u.scheme() {
        "http" | "https" => {
            let addr = socket_addr(u)?;
            let l = TcpListener::bind(addr).await.map_err(|e| format!("listen tcp {addr}: bind: {e}"))?;
            Ok(Listener::Tcp(l))
        }
        "unix" => {
            let path = PathBuf::from(unix_socket_path(u)?);
            if let Err(e) = std::fs::remove_file(&path) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    return Err(format!("listen unix {}: {e}", path.display()));
                }
            }
            let listener = UnixListener::bind(&path).map_err(|e| format!("listen unix {}: bind: {e}", path.display()))?;
            Ok(Listener::Unix(UnixIncoming { listener, path }))
        }
        other => Err(format!("{}: scheme {other} is not supported by etcd-rs yet (http, https and unix only)", url_string(u))),
    }
}

fn socket_addr(u: &url::Url) -> Result<SocketAddr, String> {
    let host = u.host_str().unwrap_or("localhost").trim_start_matches('[').trim_end_matches(']');
    let port = u.port().ok_or_else(|| format!("URL {u} has no port"))?;
    let ip: IpAddr = if host == "localhost" {
        IpAddr::V4(Ipv4Addr::LOCALHOST)
    } else {
        host.parse().map_err(|_| format!("listen URL {} must use an IP address or localhost", url_string(u)))?
    };
    Ok(SocketAddr::new(ip, port))
}

/// etcd listens on a unix URL's `host:port` as a file path (relative to the working directory).
fn unix_socket_path(u: &url::Url) -> Result<String, String> {
    match (u.host_str(), u.port()) {
        (Some(host), Some(port)) => Ok(format!("{host}:{port}")),
        _ => Err(format!("unix URL {} has no host:port", url_string(u))),
    }
}

/// The accepted connections of a unix socket listener; dropping it removes the socket file.
pub struct UnixIncoming {
    listener: UnixListener,
    path: PathBuf,
}

impl UnixIncoming {
    pub fn path(&self) -> &std::path::Path {
        &self.path
    }
}

impl futures::Stream for UnixIncoming {
    type Item = std::io::Result<UnixStream>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.listener.poll_accept(cx).map(|r| Some(r.map(|(stream, _)| stream)))
    }
}

impl Drop for UnixIncoming {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// How much of an unread HTTP/1 request body is read after the answer to keep the connection
/// (Go's net/http: 256 KiB); a longer rest closes the connection instead.
pub const DRAIN_LIMIT: usize = 256 << 10;

/// A request body as the services see it. Dropped before its end on an HTTP/1 connection, it
/// reads the rest in the background: hyper reuses an HTTP/1 connection only once the request
/// body is read, and closes it when the body has not arrived yet as the answer goes out.
pub struct RequestBody {
    inner: Option<Incoming>,
    drain_on_drop: bool,
}

impl http_body::Body for RequestBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.inner.as_mut() {
            Some(body) => Pin::new(body).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(|b| b.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.as_ref().map(|b| b.size_hint()).unwrap_or_else(|| SizeHint::with_exact(0))
    }
}

impl Drop for RequestBody {
    fn drop(&mut self) {
        let Some(body) = self.inner.take().filter(|b| self.drain_on_drop && !b.is_end_stream()) else {
            return;
        };
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(drain(body));
        }
    }
}

/// Reads `body` to its end, giving up (so hyper closes the connection) past [`DRAIN_LIMIT`].
async fn drain(mut body: Incoming) {
    let mut left = DRAIN_LIMIT;
    while let Some(frame) = futures::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
        let Ok(frame) = frame else { return };
        let len = frame.data_ref().map_or(0, |d| d.len());
        if len > left {
            return;
        }
        left -= len;
    }
}

/// Limits the gateway requests (`/v3...` paths) of one client listener to `--max-concurrent-
/// streams` at once: etcd's gateway sends them over one gRPC connection per listener, so a
/// request beyond the limit waits for a slot (a held watch keeps its slot until it ends).
#[derive(Clone)]
pub struct GatewayStreamLimit<S> {
    inner: S,
    /// None: no limit (the default, u32::MAX streams).
    slots: Option<Arc<Semaphore>>,
}

impl<S> GatewayStreamLimit<S> {
    pub fn new(inner: S, max_streams: u32) -> GatewayStreamLimit<S> {
        let slots = (max_streams < u32::MAX).then(|| Arc::new(Semaphore::new(max_streams as usize)));
        GatewayStreamLimit { inner, slots }
    }
}

type GatewayFuture = Pin<Box<dyn std::future::Future<Output = Result<Response<tonic::body::Body>, Infallible>> + Send>>;

impl<S, B> tower::Service<Request<B>> for GatewayStreamLimit<S>
where
    S: tower::Service<Request<B>, Response = Response<tonic::body::Body>, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = futures::future::Either<S::Future, GatewayFuture>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let slots = match &self.slots {
            Some(slots) if req.uri().path().starts_with("/v3") => slots.clone(),
            _ => return futures::future::Either::Left(self.inner.call(req)),
        };
        // the ready service answers this request; its clone waits for the next one
        let clone = self.inner.clone();
        let ready = std::mem::replace(&mut self.inner, clone);
        futures::future::Either::Right(Box::pin(async move {
            // never closed, so always a slot
            let slot = slots.acquire_owned().await.ok();
            let response = ready.oneshot(req).await?;
            Ok(response.map(|body| tonic::body::Body::new(HoldsSlot { body, _slot: slot })))
        }))
    }
}

pin_project_lite::pin_project! {
    /// A gateway response body that keeps its stream slot until it is dropped.
    struct HoldsSlot {
        #[pin]
        body: tonic::body::Body,
        _slot: Option<OwnedSemaphorePermit>,
    }
}

impl http_body::Body for HoldsSlot {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, tonic::Status>>> {
        self.project().body.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
