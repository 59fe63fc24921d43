//! `PeerDialer`: every outgoing connection to another member's peer URL goes through here.
//!
//! An `http://` peer URL gets a plain tonic channel; an `https://` one gets TLS (rustls) with the
//! member's peer TLS client configuration (its certificate for `--peer-client-cert-auth`, the
//! peer CA as roots). Both leave from the member's own peer IP when one is set. `unix://host:port`
//! and `unixs://host:port` dial the socket file `host:port` (unixs with TLS whose certificate must
//! name `host`, as Go's https transport under etcd's). The invariant: an https or unixs URL is
//! never dialled in plain text — without a TLS configuration it is an error.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use tokio::net::{TcpSocket, TcpStream, UnixStream};
use tonic::transport::{Channel, Endpoint, Uri};

/// How this member dials its peers.
#[derive(Clone, Default)]
pub struct PeerDialer {
    /// Outgoing connections bind this address (the member's peer IP) when set.
    local_ip: Option<IpAddr>,
    /// TLS client configuration for https peer URLs (`--peer-*` flags); None: no peer TLS.
    tls: Option<Arc<rustls::ClientConfig>>,
}

impl std::fmt::Debug for PeerDialer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerDialer").field("local_ip", &self.local_ip).field("tls", &self.tls.is_some()).finish()
    }
}

impl PeerDialer {
    pub fn new(local_ip: Option<IpAddr>, tls: Option<Arc<rustls::ClientConfig>>) -> PeerDialer {
        PeerDialer { local_ip, tls }
    }

    pub fn local_ip(&self) -> Option<IpAddr> {
        self.local_ip
    }

    /// A connected channel to `url` (http or https), the TCP connect and TLS handshake bounded
    /// by `timeout`.
    pub async fn connect(&self, url: &str, timeout: Duration) -> Result<Channel, String> {
        if let Some(rest) = url.strip_prefix("unixs://") {
            return Err(format!("{url}: gRPC over a unixs socket (TLS over a unix socket) is not supported by etcd-rs yet ({rest})"));
        }
        if let Some(path) = unix_socket_path(url) {
            // the authority names the socket, as Go's http client sends it for etcd's unix URLs
            let endpoint = Endpoint::from_shared(format!("http://{path}")).map_err(|e| format!("bad peer URL {url}: {e}"))?;
            let connector = UnixConnector { path: path.to_string(), timeout };
            return endpoint.connect_with_connector(connector).await.map_err(|e| error_chain(url, &e));
        }
        let endpoint = Endpoint::from_shared(url.to_string())
            .map_err(|e| format!("bad peer URL {url}: {e}"))?
            .connect_timeout(timeout)
            .tcp_nodelay(true)
            .local_address(self.local_ip);
        if endpoint.uri().scheme_str() != Some("https") {
            return endpoint.connect().await.map_err(|e| format!("{url}: {e}"));
        }
        let Some(tls) = self.tls.clone() else {
            return Err(format!(
                "{url}: https peer URL but this member has no peer TLS configuration (--peer-cert-file/--peer-key-file or --peer-auto-tls)"
            ));
        };
        let connector = TlsConnector { tls, local_ip: self.local_ip };
        endpoint.connect_with_connector(connector).await.map_err(|e| error_chain(url, &e))
    }
}

/// The socket path of a `unix://host:port` URL (etcd listens on and dials `host:port`).
fn unix_socket_path(url: &str) -> Option<&str> {
    socket_path(url, "unix://")
}

/// The socket path `host:port` of a URL of the unix socket scheme `prefix` (`unix://`, `unixs://`).
fn socket_path<'a>(url: &'a str, prefix: &str) -> Option<&'a str> {
    url.strip_prefix(prefix).map(|rest| rest.trim_end_matches('/'))
}

/// tonic's transport error hides the cause (e.g. a certificate rejection or a missing socket):
/// the message shows the whole chain.
fn error_chain(url: &str, e: &tonic::transport::Error) -> String {
    let mut msg = format!("{url}: {e}");
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        msg.push_str(&format!(": {s}"));
        src = s.source();
    }
    msg
}

/// tower connector for tonic: a unix socket at `path`, the connect bounded by `timeout`.
#[derive(Clone)]
struct UnixConnector {
    path: String,
    timeout: Duration,
}

impl tower_service::Service<Uri> for UnixConnector {
    type Response = TokioIo<UnixStream>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: Uri) -> Self::Future {
        let (path, timeout) = (self.path.clone(), self.timeout);
        Box::pin(async move {
            let stream = tokio::time::timeout(timeout, UnixStream::connect(&path))
                .await
                .map_err(|_| format!("dial unix {path}: timed out"))??;
            Ok(TokioIo::new(stream))
        })
    }
}

/// tower connector for tonic: TCP from `local_ip`, then a rustls handshake naming the URL's host.
#[derive(Clone)]
struct TlsConnector {
    tls: Arc<rustls::ClientConfig>,
    local_ip: Option<IpAddr>,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl tower_service::Service<Uri> for TlsConnector {
    type Response = TokioIo<tokio_rustls::client::TlsStream<TcpStream>>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move { Ok(TokioIo::new(connect_tls(this.tls, this.local_ip, &uri).await?)) })
    }
}

/// TCP from `local_ip` to the URI's host, then a rustls handshake naming that host.
async fn connect_tls(
    tls: Arc<rustls::ClientConfig>,
    local_ip: Option<IpAddr>,
    uri: &Uri,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, BoxError> {
    let host = uri.host().ok_or("peer URL has no host")?;
    let host = host.trim_start_matches('[').trim_end_matches(']').to_string();
    let port = uri.port_u16().unwrap_or(443);
    let tcp = connect_tcp(&host, port, local_ip).await?;
    tls_handshake(tls, &host, tcp).await
}

/// A rustls client handshake on `io` that checks the peer's certificate names `host`.
async fn tls_handshake<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    tls: Arc<rustls::ClientConfig>,
    host: &str,
    io: S,
) -> Result<tokio_rustls::client::TlsStream<S>, BoxError> {
    let name = match host.parse::<IpAddr>() {
        Ok(ip) => ServerName::IpAddress(ip.into()),
        Err(_) => ServerName::try_from(host.to_string()).map_err(|e| format!("bad peer host {host}: {e}"))?,
    };
    Ok(tokio_rustls::TlsConnector::from(tls).connect(name, io).await?)
}

/// A byte stream to a peer (TCP, TLS over TCP or a unix socket) for etcd's HTTP/1.1 peer
/// protocol (`rafthttp`).
pub trait PeerIo: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin> PeerIo for T {}

impl PeerDialer {
    /// A raw connection to `url` (http, https, unix or unixs), bounded by `timeout`; the same
    /// rules as [`PeerDialer::connect`] (own peer IP, never plain text to an https or unixs URL).
    pub async fn connect_io(&self, url: &str, timeout: Duration) -> Result<Box<dyn PeerIo>, String> {
        let dial = async {
            if let Some(path) = unix_socket_path(url) {
                let s = UnixStream::connect(path).await.map_err(|e| format!("dial unix {path}: {e}"))?;
                return Ok(Box::new(s) as Box<dyn PeerIo>);
            }
            if let Some(path) = socket_path(url, "unixs://") {
                let tls = self.tls.clone().ok_or_else(|| format!("{url}: unixs peer URL but this member has no peer TLS configuration"))?;
                let s = UnixStream::connect(path).await.map_err(|e| format!("dial unix {path}: {e}"))?;
                // as Go's https transport under etcd's unixs: the certificate must name the host
                // part of the socket's `host:port`
                let host = path.rsplit_once(':').map_or(path, |(h, _)| h);
                let s = tls_handshake(tls, host, s).await.map_err(|e| format!("{url}: {e}"))?;
                return Ok(Box::new(s) as Box<dyn PeerIo>);
            }
            let uri: Uri = url.parse().map_err(|e| format!("bad peer URL {url}: {e}"))?;
            match uri.scheme_str() {
                Some("http") => {
                    let host = uri.host().ok_or_else(|| format!("bad peer URL {url}: no host"))?;
                    let host = host.trim_start_matches('[').trim_end_matches(']');
                    let tcp = connect_tcp(host, uri.port_u16().unwrap_or(80), self.local_ip).await.map_err(|e| format!("{url}: {e}"))?;
                    Ok(Box::new(tcp) as Box<dyn PeerIo>)
                }
                Some("https") => {
                    let tls = self.tls.clone().ok_or_else(|| format!("{url}: https peer URL but this member has no peer TLS configuration"))?;
                    let s = connect_tls(tls, self.local_ip, &uri).await.map_err(|e| format!("{url}: {e}"))?;
                    Ok(Box::new(s) as Box<dyn PeerIo>)
                }
                _ => Err(format!("bad peer URL {url}: scheme must be http, https, unix or unixs")),
            }
        };
        tokio::time::timeout(timeout, dial).await.map_err(|_| format!("{url}: dial timed out"))?
    }
}

async fn connect_tcp(host: &str, port: u16, local_ip: Option<IpAddr>) -> Result<TcpStream, BoxError> {
    let mut last: BoxError = format!("{host}:{port}: no addresses").into();
    for addr in tokio::net::lookup_host((host, port)).await? {
        let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
        if let Some(ip) = local_ip.filter(|ip| ip.is_ipv4() == addr.is_ipv4()) {
            socket.bind(SocketAddr::new(ip, 0))?;
        }
        socket.set_nodelay(true)?;
        match socket.connect(addr).await {
            Ok(s) => return Ok(s),
            Err(e) => last = Box::new(e),
        }
    }
    Err(last)
}
