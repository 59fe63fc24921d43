//! Serving one listener: the accept loop and a hyper connection per accepted socket.
//!
//! tonic's own server wraps every call in per-connection layers etcd-rs does not use (a boxed
//! service, error recovery, load shedding, grpc-timeout) and lets hyper add a `date` header to
//! every gRPC response, which etcd (grpc-go) does not send: ~4k instructions of a put at 256
//! clients (callgrind). Requests carry their connection's `ConnectInfo` in their extensions as
//! tonic's server puts it there, so `tonic::Request::remote_addr()` and friends still work.

use std::convert::Infallible;
use std::time::Duration;

use axum::http::{Request, Response};
use futures::StreamExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, watch};
use tonic::transport::server::Connected;
use tower::ServiceExt;

/// etcd's (grpc-go's) server keepalive: a ping after 2 h of silence, 20 s to answer it.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(7200);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// Serves `service` on every connection `incoming` yields until `stop` turns true, then asks
/// open connections to finish (HTTP/2 GOAWAY) and returns once they have. `http1` also accepts
/// HTTP/1.1 (client and metrics listeners: probes, `/version`, the gateway); peers speak gRPC
/// only.
pub async fn serve<I, IO, S, B>(incoming: I, service: S, http1: bool, mut stop: watch::Receiver<bool>)
where
    I: futures::Stream<Item = std::io::Result<IO>> + Send,
    IO: AsyncRead + AsyncWrite + Connected + Unpin + Send + 'static,
    S: tower::Service<Request<Incoming>, Response = Response<B>, Error = Infallible> + Clone + Send + 'static,
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
            let per_request = hyper::service::service_fn(move |mut req: Request<Incoming>| {
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
