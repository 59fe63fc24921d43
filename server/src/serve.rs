//! Serving one listener: the accept loop and a hyper connection per accepted socket.
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
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::http::{header, HeaderMap, HeaderValue, Request, Response};
use futures::{StreamExt, TryFutureExt};
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;
use tonic::transport::server::Connected;
use tower::ServiceExt;

/// etcd's (grpc-go's) server keepalive: a ping after 2 h of silence, 20 s to answer it.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(7200);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// What grpc-go's clients report when the server closes the transport under an RPC: the status
/// an etcd client sees for its streams when the member stops.
const STOPPING_MESSAGE: &str = "transport is closing";
/// grpc-status Unavailable.
const UNAVAILABLE: &str = "14";

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Serves `service` on every connection `incoming` yields until `stop` turns true, then asks
/// open connections to finish (HTTP/2 GOAWAY), ends the responses still waiting for data (see
/// the module docs) and returns once every connection has closed. Dropping the returned future
/// closes the connections still open (the hard stop after a graceful one took too long).
/// `http1` also accepts HTTP/1.1 (client and metrics listeners: probes, `/version`, the
/// gateway); peers speak gRPC only.
pub async fn serve<I, IO, S, B>(incoming: I, service: S, http1: bool, mut stop: watch::Receiver<bool>)
where
    I: futures::Stream<Item = std::io::Result<IO>> + Send,
    IO: AsyncRead + AsyncWrite + Connected + Unpin + Send + 'static,
    S: tower::Service<Request<Incoming>, Response = Response<B>, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
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
            let per_request = hyper::service::service_fn(move |mut req: Request<Incoming>| {
                req.extensions_mut().insert(info.clone());
                let stop = bodies_stop.clone();
                service.clone().oneshot(req).map_ok(move |resp| EndOnStop::wrap(resp, stop))
            });
            let builder = builder.clone();
            let mut stop = stop.clone();
            conns.spawn(async move {
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
