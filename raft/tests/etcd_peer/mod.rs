//! Test support for talking to real etcd members over their peer protocol: etcd processes on
//! loopback ports in temp dirs (killed on drop), a TCP proxy that records both directions of
//! every connection, and a parser for the HTTP/1.1 exchanges it recorded.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub const ETCD_35: &str = "/opt/etcd-3.5/bin/etcd";
pub const ETCDCTL_35: &str = "/opt/etcd-3.5/bin/etcdctl";
pub const ETCD_34: &str = "/usr/bin/etcd";
pub const ETCDCTL_34: &str = "/usr/bin/etcdctl";

/// Whether the reference binaries a test needs are installed; prints why the test is skipped
/// when not (etcd 3.5.1 lives in /opt/etcd-3.5 only where the reference installer ran).
pub fn installed(bins: &[&str]) -> bool {
    let missing: Vec<_> = bins.iter().filter(|b| !Path::new(b).exists()).collect();
    if !missing.is_empty() {
        eprintln!("SKIPPED: not installed: {missing:?}");
    }
    missing.is_empty()
}

/// A loopback port free now, taken outside the kernel's ephemeral range (32768-60999) so that
/// an outgoing connection cannot take it before the process we hand it to binds it.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let base = 4000 + std::process::id().wrapping_mul(104_729) % 20_000;
    loop {
        let port = (base + NEXT.fetch_add(1, Ordering::Relaxed) % 28_000) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// One etcd process.
pub struct Etcd {
    pub name: String,
    pub client_port: u16,
    /// The port it listens for peers on.
    pub peer_port: u16,
    pub log: PathBuf,
    child: Option<Child>,
}

impl Etcd {
    /// Starts `bin` as member `name`, advertising `advertise_peer` (maybe a proxy) and joining
    /// `initial_cluster`.
    pub fn start(bin: &str, dir: &Path, name: &str, peer_port: u16, advertise_peer: &str, initial_cluster: &str, extra: &[&str]) -> Etcd {
        let client_port = free_port();
        let data = dir.join(name);
        let log = dir.join(format!("{name}.log"));
        let client = format!("http://127.0.0.1:{client_port}");
        let mut cmd = Command::new(bin);
        cmd.args(["--name", name, "--data-dir"])
            .arg(&data)
            .args(["--listen-peer-urls", &format!("http://127.0.0.1:{peer_port}")])
            .args(["--initial-advertise-peer-urls", advertise_peer])
            .args(["--listen-client-urls", &client, "--advertise-client-urls", &client])
            .args(["--initial-cluster", initial_cluster, "--initial-cluster-token", "rafthttp-test"])
            .args(["--initial-cluster-state", "new", "--heartbeat-interval", "100", "--election-timeout", "1000"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"));
        let child = cmd.spawn().expect("start etcd");
        Etcd { name: name.to_string(), client_port, peer_port, log, child: Some(child) }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Runs etcdctl (v3 API) against `endpoints`; Ok(stdout) when it exits 0.
pub fn etcdctl(ctl: &str, endpoints: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(ctl)
        .env("ETCDCTL_API", "3")
        .args(["--endpoints", endpoints, "--dial-timeout", "2s", "--command-timeout", "5s"])
        .args(args)
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// Retries `etcdctl put` until the cluster takes it (it may still be electing a leader).
pub fn put_until_ok(ctl: &str, endpoints: &str, key: &str, value: &str, limit: Duration) {
    let start = Instant::now();
    loop {
        match etcdctl(ctl, endpoints, &["put", key, value]) {
            Ok(_) => return,
            Err(e) if start.elapsed() > limit => panic!("put {key} failed for {limit:?}: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// Both directions of one proxied TCP connection, as far as they got.
#[derive(Default)]
pub struct Recorded {
    /// What the connecting member sent (its HTTP requests).
    pub to_server: Vec<u8>,
    /// What the listening member answered (its HTTP responses, stream bodies).
    pub to_client: Vec<u8>,
}

/// A TCP proxy to `target` that keeps every byte of every connection.
pub struct RecordingProxy {
    pub port: u16,
    pub conns: Arc<Mutex<Vec<Arc<Mutex<Recorded>>>>>,
    task: tokio::task::JoinHandle<()>,
}

impl RecordingProxy {
    pub async fn start(port: u16, target: SocketAddr) -> RecordingProxy {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.expect("proxy bind");
        let conns: Arc<Mutex<Vec<Arc<Mutex<Recorded>>>>> = Arc::default();
        let all = conns.clone();
        let task = tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let rec = Arc::new(Mutex::new(Recorded::default()));
                all.lock().push(rec.clone());
                tokio::spawn(async move {
                    let Ok(outbound) = tokio::net::TcpStream::connect(target).await else { return };
                    let (ri, wi) = inbound.into_split();
                    let (ro, wo) = outbound.into_split();
                    let r2 = rec.clone();
                    let up = pump(ri, wo, move |b| r2.lock().to_server.extend_from_slice(b));
                    let down = pump(ro, wi, move |b| rec.lock().to_client.extend_from_slice(b));
                    tokio::join!(up, down);
                });
            }
        });
        RecordingProxy { port, conns, task }
    }

    /// A copy of what every connection carried so far.
    pub fn snapshot(&self) -> Vec<(Vec<u8>, Vec<u8>)> {
        self.conns.lock().iter().map(|c| {
            let c = c.lock();
            (c.to_server.clone(), c.to_client.clone())
        }).collect()
    }
}

impl Drop for RecordingProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn pump(mut r: tokio::net::tcp::OwnedReadHalf, mut w: tokio::net::tcp::OwnedWriteHalf, mut keep: impl FnMut(&[u8])) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                keep(&buf[..n]);
                if w.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
        }
    }
    let _ = w.shutdown().await;
}

/// One HTTP/1.1 message (request or response) parsed from recorded bytes.
#[derive(Debug, Clone, Default)]
pub struct HttpMessage {
    pub method: String,
    pub path: String,
    pub status: u16,
    pub headers: Vec<(String, String)>,
    /// The body, de-chunked; for a body cut off by the end of the capture, what arrived.
    pub body: Vec<u8>,
    /// False when the capture ended inside the body (a stream still open).
    pub complete: bool,
}

impl HttpMessage {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// The requests in `bytes`, in order.
pub fn parse_requests(mut bytes: &[u8]) -> Vec<HttpMessage> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let mut hs = [httparse::EMPTY_HEADER; 64];
        let mut req = httparse::Request::new(&mut hs);
        let Ok(httparse::Status::Complete(n)) = req.parse(bytes) else { break };
        let mut m = HttpMessage {
            method: req.method.unwrap_or("").to_string(),
            path: req.path.unwrap_or("").to_string(),
            headers: req.headers.iter().map(|h| (h.name.to_string(), String::from_utf8_lossy(h.value).into_owned())).collect(),
            ..Default::default()
        };
        let used = read_body(&mut m, &bytes[n..], false);
        out.push(m);
        bytes = &bytes[n + used..];
    }
    out
}

/// The responses in `bytes`, in order.
pub fn parse_responses(mut bytes: &[u8]) -> Vec<HttpMessage> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let mut hs = [httparse::EMPTY_HEADER; 64];
        let mut resp = httparse::Response::new(&mut hs);
        let Ok(httparse::Status::Complete(n)) = resp.parse(bytes) else { break };
        let mut m = HttpMessage {
            status: resp.code.unwrap_or(0),
            headers: resp.headers.iter().map(|h| (h.name.to_string(), String::from_utf8_lossy(h.value).into_owned())).collect(),
            ..Default::default()
        };
        let no_body = m.status == 204 || m.status == 304 || m.status < 200;
        let used = if no_body {
            m.complete = true;
            0
        } else {
            read_body(&mut m, &bytes[n..], true)
        };
        out.push(m);
        bytes = &bytes[n + used..];
    }
    out
}

/// Reads the body framed by `m`'s headers from `rest`; returns the bytes it took.
fn read_body(m: &mut HttpMessage, rest: &[u8], to_eof: bool) -> usize {
    if m.header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        let mut pos = 0;
        loop {
            let Some(eol) = rest[pos..].windows(2).position(|w| w == b"\r\n") else { return rest.len() };
            let line = String::from_utf8_lossy(&rest[pos..pos + eol]).to_string();
            let size = usize::from_str_radix(line.split(';').next().unwrap_or("").trim(), 16).unwrap_or(0);
            pos += eol + 2;
            if size == 0 {
                m.complete = true;
                return (pos + 2).min(rest.len());
            }
            let end = (pos + size).min(rest.len());
            m.body.extend_from_slice(&rest[pos..end]);
            if end < pos + size {
                return rest.len();
            }
            pos = (end + 2).min(rest.len());
        }
    }
    if let Some(len) = m.header("content-length").and_then(|v| v.trim().parse::<usize>().ok()) {
        let end = len.min(rest.len());
        m.body.extend_from_slice(&rest[..end]);
        m.complete = end == len;
        return end;
    }
    if to_eof {
        m.body.extend_from_slice(rest);
        return rest.len();
    }
    m.complete = true;
    0
}

/// Each recorded connection as (request, response) pairs; a request without an answer yet is
/// paired with `None`.
pub fn exchanges(conns: &[(Vec<u8>, Vec<u8>)]) -> Vec<(HttpMessage, Option<HttpMessage>)> {
    let mut out = Vec::new();
    for (up, down) in conns {
        let reqs = parse_requests(up);
        let mut resps = parse_responses(down).into_iter();
        for r in reqs {
            out.push((r, resps.next()));
        }
    }
    out
}

/// etcd's textual member ID (`types.ID.String()`): lowercase hex without leading zeros.
pub fn parse_id(s: &str) -> u64 {
    u64::from_str_radix(s, 16).unwrap_or_else(|_| panic!("bad member id {s:?}"))
}

/// Sends `request` (raw HTTP/1.1, `Connection: close`) to `addr` and parses the answer.
pub async fn http_raw(addr: SocketAddr, request: &str) -> HttpMessage {
    let mut s = tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(addr)).await.expect("connect in time").expect("connect");
    s.write_all(request.as_bytes()).await.unwrap();
    // read until one whole answer is in (Go's server may keep the connection open)
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    let deadline = Instant::now() + Duration::from_secs(5);
    while !parse_responses(&out).first().is_some_and(|m| m.complete) && Instant::now() < deadline {
        match tokio::time::timeout_at(deadline.into(), s.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => out.extend_from_slice(&buf[..n]),
            _ => break,
        }
    }
    parse_responses(&out).into_iter().next().unwrap_or_else(|| panic!("no HTTP answer in {:?}", String::from_utf8_lossy(&out)))
}

/// Polls `cond` every 50ms until it holds or `limit` passes.
pub async fn wait_for(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    cond()
}
