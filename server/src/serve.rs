//! Serving one listener: binding its URL, the accept loop and a hyper connection per accepted
//! socket.
//!
//! Listeners are TCP (`http`/`https` URLs) or unix sockets (`unix://host:port`, or `unixs` for
//! TLS over one, listens on the socket file `host:port`, as etcd's `transport.NewUnixListener`;
//! the file is removed when the listener closes). HTTP/1 request bodies a handler leaves unread
//! are read to their end after the answer (up to [`DRAIN_LIMIT`] bytes), as Go's net/http does,
//! so a body arriving after its headers does not make hyper close a keep-alive connection. On
//! client listeners the gateway's requests (`/v3...` JSON) share `--max-concurrent-streams`
//! slots, because etcd's gateway reaches its gRPC server over one connection per listener.
//!
//! When the listener stops, open connections are asked to finish (HTTP/2 GOAWAY, HTTP/1.1
//! close) and every response still waiting for data ends at once as an error ([`EndOnStop`]):
//! a gRPC stream (watch, lease keep-alive, election observe, snapshot) ends with Unavailable, as
//! etcd's streams do when grpc-go closes their transport, so clients resume them on another
//! member instead of taking a clean end as final. Calls still being handled get to finish.
//!
//! tonic's own server wraps every call in per-connection layers etcd-rs does not use (a boxed
//! service, error recovery, load shedding, grpc-timeout) and lets hyper add a `date` header to
//! every gRPC response, which etcd (grpc-go) does not send: ~4k instructions of a put at 256
//! clients (callgrind). Requests carry their connection's `ConnectInfo` in their extensions as
//! tonic's server puts it there, so `tonic::Request::remote_addr()` and friends still work.

use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::http::{header, HeaderMap, HeaderValue, Request, Response};
use futures::{StreamExt, TryFutureExt};
use http_body::{Body as _, Frame, SizeHint};
use hyper::body::{Bytes, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener, UnixStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tonic::transport::server::Connected;
use tower::ServiceExt;

use crate::coalesced_writes::CoalescedWrites;
use crate::config::url_string;

/// etcd's (grpc-go's) server keepalive: a ping after 2 h of silence, 20 s to answer it.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(7200);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// What grpc-go's clients report when the server closes the transport under an RPC: the status
/// an etcd client sees for its streams when the member stops.
const STOPPING_MESSAGE: &str = "transport is closing";
/// grpc-status Unavailable.
const UNAVAILABLE: &str = "14";

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The HTTP versions a listener speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpVersions {
    /// HTTP/1.1 and HTTP/2: client listeners without `--listen-client-http-urls` (gRPC and the
    /// HTTP endpoints on one port), metrics and peer listeners.
    Both,
    /// HTTP/2 only: a client listener that serves gRPC only (etcd's grpc server owns it).
    Http2Only,
    /// HTTP/1.1 only: a `--listen-client-http-urls` listener (etcd matches HTTP/1 there alone).
    Http1Only,
}

/// Serves `service` on every connection `incoming` yields until `stop` turns true, then asks
/// open connections to finish (HTTP/2 GOAWAY), ends the responses still waiting for data (see
/// the module docs) and returns once every connection has closed. Dropping the returned future
/// closes the connections still open (the hard stop after a graceful one took too long).
/// `versions`: what the listener speaks (see [`HttpVersions`]). `max_streams`: the HTTP/2 streams a connection may open at
/// once (None: hyper's default).
pub async fn serve<I, IO, S, B>(
    incoming: I,
    service: S,
    versions: HttpVersions,
    max_streams: Option<u32>,
    mut stop: watch::Receiver<bool>,
) where
    I: futures::Stream<Item = std::io::Result<IO>> + Send,
    IO: AsyncRead + AsyncWrite + Connected + Unpin + Send + 'static,
    S: tower::Service<Request<RequestBody>, Response = Response<B>, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let mut builder = Builder::new(TokioExecutor::new());
    match versions {
        HttpVersions::Both => {}
        HttpVersions::Http2Only => builder = builder.http2_only(),
        HttpVersions::Http1Only => builder = builder.http1_only(),
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

    // Owning the connection tasks lets a dropped `serve` close them all.
    let mut conns = tokio::task::JoinSet::new();
    // The accept loop in its own scope: leaving it drops `incoming`, which closes the listening
    // socket at once instead of after the open connections have finished.
    {
        let mut incoming = std::pin::pin!(incoming);
        loop {
            let io = tokio::select! {
                _ = stop.wait_for(|s| *s) => break,
                Some(_) = conns.join_next(), if !conns.is_empty() => continue,
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
            let bodies_stop = stop.clone();
            let per_request = hyper::service::service_fn(move |req: Request<Incoming>| {
                let drain_on_drop = req.version() < axum::http::Version::HTTP_2;
                let mut req = req.map(|body| RequestBody { inner: Some(body), drain_on_drop });
                req.extensions_mut().insert(info.clone());
                let stop = bodies_stop.clone();
                service.clone().oneshot(req).map_ok(move |resp| EndOnStop::wrap(resp, stop))
            });
            let builder = builder.clone();
            let mut stop = stop.clone();
            conns.spawn(async move {
                let conn = builder.serve_connection(TokioIo::new(CoalescedWrites::new(io)), per_request);
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
    while conns.join_next().await.is_some() {}
}

pin_project_lite::pin_project! {
    /// A response body that ends when the listener stops while it waits for data: a gRPC
    /// response with trailers carrying Unavailable, any other response with an error (hyper then
    /// cuts it, so an HTTP/1.1 client sees a broken chunked stream rather than a complete one).
    /// Data already produced is passed on first, so a stream ends between two messages.
    pub struct EndOnStop<B> {
        #[pin]
        inner: B,
        grpc: bool,
        stop: Option<watch::Receiver<bool>>,
        // Made at the first wait for data: unary answers are ready at once and never pay for it.
        stopped: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
        ended: bool,
    }
}

impl<B> EndOnStop<B> {
    fn wrap(resp: Response<B>, stop: watch::Receiver<bool>) -> Response<EndOnStop<B>> {
        let grpc = resp
            .headers()
            .get(header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
        resp.map(|inner| EndOnStop { inner, grpc, stop: Some(stop), stopped: None, ended: false })
    }
}

/// The trailers that end a gRPC stream cut by a stop.
fn unavailable_trailers() -> HeaderMap {
    let mut t = HeaderMap::new();
    t.insert("grpc-status", HeaderValue::from_static(UNAVAILABLE));
    t.insert("grpc-message", HeaderValue::from_static(STOPPING_MESSAGE));
    t
}

impl<B> http_body::Body for EndOnStop<B>
where
    B: http_body::Body,
    B::Error: Into<BoxError>,
{
    type Data = B::Data;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<B::Data>, BoxError>>> {
        let this = self.project();
        if *this.ended {
            return Poll::Ready(None);
        }
        // A stream that has waited once is watched for the stop before its next frame, so one
        // that always has data ready still ends.
        let stopped_now = |stopped: &mut Pin<Box<dyn Future<Output = ()> + Send>>, cx: &mut Context<'_>| {
            stopped.as_mut().poll(cx).is_ready()
        };
        let cut = match this.stopped.as_mut() {
            Some(stopped) => stopped_now(stopped, cx),
            None => false,
        };
        if !cut {
            if let Poll::Ready(frame) = this.inner.poll_frame(cx) {
                return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
            }
            let stop = this.stop.take();
            let stopped = this.stopped.get_or_insert_with(|| {
                Box::pin(async move {
                    // a dropped sender means the listener is gone too
                    if let Some(mut stop) = stop {
                        let _ = stop.wait_for(|s| *s).await;
                    }
                })
            });
            if !stopped_now(stopped, cx) {
                return Poll::Pending;
            }
        }
        *this.ended = true;
        if *this.grpc {
            Poll::Ready(Some(Ok(Frame::trailers(unavailable_trailers()))))
        } else {
            Poll::Ready(Some(Err("the server is stopping".into())))
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ended || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        if self.ended {
            SizeHint::with_exact(0)
        } else {
            self.inner.size_hint()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Bytes;

    /// A response body still waiting for its next message (an idle watch stream).
    struct Waiting;

    impl http_body::Body for Waiting {
        type Data = Bytes;
        type Error = Infallible;
        fn poll_frame(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
            Poll::Pending
        }
    }

    fn waiting_response(content_type: &'static str, stop: watch::Receiver<bool>) -> Pin<Box<EndOnStop<Waiting>>> {
        let resp = Response::builder().header(header::CONTENT_TYPE, content_type).body(Waiting).unwrap();
        Box::pin(EndOnStop::wrap(resp, stop).into_body())
    }

    async fn next_frame(body: &mut Pin<Box<EndOnStop<Waiting>>>) -> Option<Result<Frame<Bytes>, BoxError>> {
        futures::future::poll_fn(|cx| http_body::Body::poll_frame(body.as_mut(), cx)).await
    }

    #[tokio::test]
    async fn a_waiting_grpc_stream_ends_with_unavailable_when_the_listener_stops() {
        let (stop, stopped) = watch::channel(false);
        let mut body = waiting_response("application/grpc", stopped);
        assert!(tokio::time::timeout(Duration::from_millis(50), next_frame(&mut body)).await.is_err(), "waits while serving");
        stop.send(true).unwrap();
        let trailers = next_frame(&mut body).await.expect("a frame").expect("not an error").into_trailers().expect("trailers");
        assert_eq!(trailers["grpc-status"], "14");
        assert_eq!(trailers["grpc-message"], "transport is closing");
        assert!(next_frame(&mut body).await.is_none(), "and nothing after them");
    }

    #[tokio::test]
    async fn a_waiting_http_response_ends_with_an_error_when_the_listener_stops() {
        let (stop, stopped) = watch::channel(false);
        let mut body = waiting_response("application/json", stopped);
        stop.send(true).unwrap();
        assert!(next_frame(&mut body).await.expect("a frame").is_err(), "cut, not completed");
    }
}

/// A bound listener of one URL.
pub enum Listener {
    Tcp(TcpListener),
    Unix(UnixIncoming),
}

impl Listener {
    /// The address it listens on, as etcd logs it (`127.0.0.1:2379`, or the socket file).
    pub fn address(&self) -> String {
        match self {
            Listener::Tcp(l) => l.local_addr().map(|a| a.to_string()).unwrap_or_default(),
            Listener::Unix(u) => u.path().display().to_string(),
        }
    }
}

/// Binds `u`: an http(s) URL on its IP ("localhost" binds the IPv4 loopback, as etcd clients
/// expect 127.0.0.1 to answer), a unix or unixs URL on the socket file `host:port`, replacing a
/// stale one.
pub async fn bind(u: &url::Url) -> Result<Listener, String> {
    match u.scheme() {
        "http" | "https" => {
            let addr = socket_addr(u)?;
            let l = TcpListener::bind(addr).await.map_err(|e| format!("listen tcp {addr}: bind: {e}"))?;
            Ok(Listener::Tcp(l))
        }
        "unix" | "unixs" => {
            let path = PathBuf::from(unix_socket_path(u)?);
            if let Err(e) = std::fs::remove_file(&path) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    return Err(format!("listen unix {}: {e}", path.display()));
                }
            }
            let listener = UnixListener::bind(&path).map_err(|e| format!("listen unix {}: bind: {e}", path.display()))?;
            Ok(Listener::Unix(UnixIncoming { listener, path }))
        }
        other => Err(format!("{}: scheme {other} is not supported by etcd-rs (http, https, unix and unixs only)", url_string(u))),
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
