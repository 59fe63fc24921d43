//! The client and peer listeners: unix-socket peers and clients (`unix://host:port` is the
//! socket file `host:port` in the working directory, as etcd's; `unixs://` is TLS over one, for
//! clients and peers),
//! HTTP/1 keep-alive when a
//! request body arrives after its headers, and `--max-concurrent-streams` (HTTP/2 streams per
//! connection; one budget for a listener's gateway requests, as etcd's gateway uses one
//! connection).

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{free_port, single_member};
use etcd_proto::etcdserverpb::kv_client::KvClient;
use etcd_proto::etcdserverpb::watch_client::WatchClient;
use etcd_proto::etcdserverpb::watch_request::RequestUnion;
use etcd_proto::etcdserverpb::{PutRequest, RangeRequest, WatchCreateRequest, WatchRequest};
use tonic::transport::{Channel, Endpoint, Uri};

/// A member started by hand in `dir` (its unix sockets are relative to it); killed on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Member `i` of a cluster whose peers talk over unix sockets `m<i>.peer:1`; clients reach it
/// on the unix socket `m<i>.client:1` and on TCP `client_port`.
fn start_unix_member(dir: &Path, i: usize, initial_cluster: &str, client_port: u16) -> Proc {
    start_socket_member(dir, i, "unix", initial_cluster, client_port, &[])
}

/// As [`start_unix_member`], the peer sockets' scheme (`unix` or `unixs`) and extra flags given.
fn start_socket_member(dir: &Path, i: usize, scheme: &str, initial_cluster: &str, client_port: u16, flags: &[&str]) -> Proc {
    let peer = format!("{scheme}://m{i}.peer:1");
    let tcp = format!("http://127.0.0.1:{client_port}");
    let log = std::fs::OpenOptions::new().create(true).append(true).open(dir.join(format!("m{i}.log"))).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_etcd-rs"))
        .current_dir(dir)
        .args(["--name", &format!("m{i}"), "--data-dir", &format!("m{i}.etcd")])
        .args(["--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer])
        .args(["--initial-cluster", initial_cluster, "--initial-cluster-token", "unix-token"])
        .args(["--listen-client-urls", &format!("unix://m{i}.client:1,{tcp}"), "--advertise-client-urls", &tcp])
        .args(flags)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("start etcd-rs");
    Proc(child)
}

/// A gRPC channel over the unix socket at `path`.
async fn unix_channel(path: PathBuf) -> Result<Channel, tonic::transport::Error> {
    Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move { Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tokio::net::UnixStream::connect(path).await?)) }
        }))
        .await
}

/// Retries `put k=v` over `channel()` until it succeeds (at most 30 s): the cluster is up.
async fn put_when_ready<F, Fut>(what: &str, channel: F, k: &str, v: &str)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<Channel, tonic::transport::Error>>,
{
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = String::new();
    while Instant::now() < deadline {
        match channel().await {
            Ok(ch) => {
                let put = PutRequest { key: k.into(), value: v.into(), ..Default::default() };
                match KvClient::new(ch).put(put).await {
                    Ok(_) => return,
                    Err(e) => last = e.to_string(),
                }
            }
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no put through {what} within 30s: {last}");
}

/// The value of `k` read linearizably through `ch`.
async fn get(ch: Channel, k: &str) -> Option<Vec<u8>> {
    let r = KvClient::new(ch).range(RangeRequest { key: k.into(), ..Default::default() }).await.expect("range");
    r.into_inner().kvs.pop().map(|kv| kv.value)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unix_socket_peers_form_a_cluster_and_clients_connect_over_a_unix_socket() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let initial = (0..3).map(|i| format!("m{i}=unix://m{i}.peer:1")).collect::<Vec<_>>().join(",");
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let mut procs: Vec<Proc> = (0..3).map(|i| start_unix_member(dir, i, &initial, ports[i])).collect();
    let logs = || (0..3).map(|i| std::fs::read_to_string(dir.join(format!("m{i}.log"))).unwrap_or_default()).collect::<Vec<_>>().join("\n");

    // a write through member 0's unix socket, a linearizable read on member 2 over TCP: the
    // members reached each other over their unix peer sockets
    let sock0 = dir.join("m0.client:1");
    put_when_ready("m0's unix socket", || unix_channel(sock0.clone()), "k", "over-unix").await;
    assert!(dir.join("m0.peer:1").exists(), "the peer socket is the file host:port in the working dir");
    let tcp2 = Channel::from_shared(format!("http://127.0.0.1:{}", ports[2])).unwrap().connect().await.unwrap();
    assert_eq!(get(tcp2, "k").await.as_deref(), Some(&b"over-unix"[..]), "{}", logs());

    // a member killed hard leaves its socket files; the restart replaces them and rejoins
    drop(procs.remove(1));
    assert!(dir.join("m1.peer:1").exists() && dir.join("m1.client:1").exists());
    let _m1 = start_unix_member(dir, 1, &initial, ports[1]);
    let sock1 = dir.join("m1.client:1");
    put_when_ready("m1's unix socket after a restart", || unix_channel(sock1.clone()), "k2", "after-restart").await;
    let ch = unix_channel(dir.join("m1.client:1")).await.unwrap();
    assert_eq!(get(ch, "k").await.as_deref(), Some(&b"over-unix"[..]));

    // a graceful stop removes the member's socket files, as etcd's unix listener does
    let m0 = procs.remove(0);
    let _ = Command::new("kill").args(["-TERM", &m0.0.id().to_string()]).status();
    let deadline = Instant::now() + Duration::from_secs(15);
    while dir.join("m0.client:1").exists() || dir.join("m0.peer:1").exists() {
        assert!(Instant::now() < deadline, "m0's socket files remain after SIGTERM; {}", logs());
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unixs_peers_form_a_cluster_over_tls_and_refuse_plain_text() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let pki = common::pki::Pki::new(dir);
    // a peer dials `unixs://m<i>.peer:1` checking that the certificate names `m<i>.peer`; the
    // SAN check of a client certificate fails on a unix socket (no address), in etcd too, so
    // it is skipped
    let (cert, key) = pki.issue("peer", "peer", &["m0.peer", "m1.peer", "m2.peer"], true);
    let ca = pki.ca_file();
    let tls = ["--peer-cert-file", &cert, "--peer-key-file", &key, "--peer-trusted-ca-file", &ca, "--experimental-peer-skip-client-san-verification"];
    let initial = (0..3).map(|i| format!("m{i}=unixs://m{i}.peer:1")).collect::<Vec<_>>().join(",");
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let _procs: Vec<Proc> = (0..3).map(|i| start_socket_member(dir, i, "unixs", &initial, ports[i], &tls)).collect();
    let logs = || (0..3).map(|i| std::fs::read_to_string(dir.join(format!("m{i}.log"))).unwrap_or_default()).collect::<Vec<_>>().join("\n");

    let sock0 = dir.join("m0.client:1");
    put_when_ready("m0 of a unixs-peer cluster", || unix_channel(sock0.clone()), "k", "over-unixs-peers").await;
    let tcp2 = Channel::from_shared(format!("http://127.0.0.1:{}", ports[2])).unwrap().connect().await.unwrap();
    assert_eq!(get(tcp2, "k").await.as_deref(), Some(&b"over-unixs-peers"[..]), "{}", logs());

    // a peer request in plain text on a unixs peer socket is not answered
    let plain = tokio::time::timeout(Duration::from_secs(5), async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::UnixStream::connect(dir.join("m1.peer:1")).await.ok()?;
        s.write_all(b"GET /version HTTP/1.1\r\nHost: m1.peer\r\n\r\n").await.ok()?;
        let mut buf = [0u8; 64];
        let n = s.read(&mut buf).await.ok()?;
        (n > 0 && buf.starts_with(b"HTTP/1.1 200")).then_some(())
    })
    .await;
    assert!(!matches!(plain, Ok(Some(()))), "a plain-text peer request was answered on a unixs socket");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_talks_tls_over_a_unixs_client_socket_and_plain_text_is_refused() {
    let Some(etcdctl) = common::reference_etcdctl() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let pki = common::pki::Pki::new(dir);
    let (cert, key) = pki.issue("server", "localhost", &["localhost", "127.0.0.1"], true);
    let port = free_port();
    let peer = format!("http://127.0.0.1:{port}");
    let log = std::fs::File::create(dir.join("m.log")).unwrap();
    let _m = Proc(
        Command::new(env!("CARGO_BIN_EXE_etcd-rs"))
            .current_dir(dir)
            .args(["--data-dir", "m.etcd", "--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("default={peer}")])
            .args(["--listen-client-urls", "unixs://localhost:23790", "--advertise-client-urls", "unixs://localhost:23790"])
            .args(["--cert-file", &cert, "--key-file", &key])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start etcd-rs"),
    );
    let ctl = |args: &[&str]| {
        Command::new(etcdctl)
            .current_dir(dir)
            .env("ETCDCTL_API", "3")
            .args(["--endpoints", "unixs://localhost:23790", "--cacert", &pki.ca_file(), "--dial-timeout", "2s"])
            .args(args)
            .output()
            .unwrap()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let put = ctl(&["put", "k", "over-unixs"]);
        if put.status.success() {
            break;
        }
        let log = std::fs::read_to_string(dir.join("m.log")).unwrap_or_default();
        assert!(Instant::now() < deadline, "no put over unixs: {}\n{log}", String::from_utf8_lossy(&put.stderr));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let get = ctl(&["get", "k", "--print-value-only"]);
    assert_eq!(String::from_utf8_lossy(&get.stdout).trim(), "over-unixs");
    // the same socket without TLS: the handshake fails, no request is served
    let plain = tokio::time::timeout(Duration::from_secs(5), async {
        let ch = unix_channel(dir.join("localhost:23790")).await.ok()?;
        KvClient::new(ch).range(RangeRequest { key: "k".into(), ..Default::default() }).await.ok()
    })
    .await;
    assert!(!matches!(plain, Ok(Some(_))), "a plain-text client was served on a unixs socket");
}

/// Reads one HTTP/1.1 response with a Content-Length body: (status, body). Panics when the
/// server closed the connection instead.
fn read_response(s: &mut TcpStream, what: &str) -> (u16, String) {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        match s.read(&mut byte) {
            Ok(1) => buf.push(byte[0]),
            other => panic!("{what}: the connection ended before a response ({other:?}); got {:?}", String::from_utf8_lossy(&buf)),
        }
    }
    let head = String::from_utf8_lossy(&buf).to_string();
    let code = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let len: usize = head
        .lines()
        .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse().unwrap()))
        .unwrap_or_else(|| panic!("{what}: no content-length in {head:?}"));
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).unwrap_or_else(|e| panic!("{what}: body: {e}"));
    (code, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http1_request_body_arriving_after_its_headers_keeps_the_connection_open() {
    let (_dir, m, _kv) = single_member(&[]).await;
    let addr = format!("127.0.0.1:{}", m.client_port);
    tokio::task::spawn_blocking(move || {
        // Patroni's probe: GET /version with the body `{}` sent in a second packet
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_nodelay(true).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        for round in 1..=3 {
            let what = format!("request {round} on one connection");
            let head = "GET /version HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n";
            s.write_all(head.as_bytes()).unwrap_or_else(|e| panic!("{what}: {e}"));
            std::thread::sleep(Duration::from_millis(200));
            s.write_all(b"{}").unwrap_or_else(|e| panic!("{what}: body: {e}"));
            let (code, body) = read_response(&mut s, &what);
            assert_eq!(code, 200, "{what}: {body}");
            assert!(body.contains("\"etcdserver\""), "{what}: {body}");
        }
        // and a request without a body after them
        s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let (code, body) = read_response(&mut s, "a plain GET after the late bodies");
        assert_eq!(code, 200, "{body}");
    })
    .await
    .unwrap();
}

/// A gateway watch held open on its own connection, once the server has answered "created".
fn gateway_watch(port: u16) -> TcpStream {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let body = r#"{"create_request":{"key":"Zm9v","start_revision":1}}"#;
    let req = format!("POST /v3/watch HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len());
    s.write_all(req.as_bytes()).unwrap();
    let mut seen = Vec::new();
    let mut chunk = [0u8; 1024];
    while !String::from_utf8_lossy(&seen).contains("\"created\":true") {
        match s.read(&mut chunk) {
            Ok(n) if n > 0 => seen.extend_from_slice(&chunk[..n]),
            other => panic!("watch not created ({other:?}): {:?}", String::from_utf8_lossy(&seen)),
        }
    }
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_requests_beyond_max_concurrent_streams_wait_until_a_held_watch_ends() {
    let (_dir, m, mut kv) = single_member(&["--max-concurrent-streams", "2"]).await;
    let port = m.client_port;
    let (w1, _w2) = tokio::task::spawn_blocking(move || (gateway_watch(port), gateway_watch(port))).await.unwrap();

    // both gateway streams of the listener are held: a range through the gateway waits
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let body = r#"{"key":"Zm9v"}"#;
        let req = format!("POST /v3/kv/range HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{body}", body.len());
        s.write_all(req.as_bytes()).unwrap();
        let _ = tx.send(read_response(&mut s, "the gateway range"));
    });
    assert!(rx.recv_timeout(Duration::from_secs(1)).is_err(), "a gateway range was answered while the listener's 2 streams were held");
    // the limit is the gateway's and per connection: a gRPC client on its own connection is served
    kv.range(RangeRequest { key: b"foo".to_vec(), ..Default::default() }).await.expect("gRPC range on another connection");

    drop(w1);
    let (code, body) = rx.recv_timeout(Duration::from_secs(20)).expect("the gateway range still waits after a watch ended");
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("\"revision\":\""), "{body}");
}

/// Opens a watch stream on `ch` and waits for its "created" answer; the stream stays open while
/// the returned halves live.
async fn grpc_watch(ch: Channel) -> (tokio::sync::mpsc::Sender<WatchRequest>, tonic::Streaming<etcd_proto::etcdserverpb::WatchResponse>) {
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let create = WatchCreateRequest { key: b"foo".to_vec(), ..Default::default() };
    tx.send(WatchRequest { request_union: Some(RequestUnion::CreateRequest(create)) }).await.unwrap();
    let mut stream = WatchClient::new(ch).watch(tokio_stream::wrappers::ReceiverStream::new(rx)).await.expect("watch").into_inner();
    let first = stream.message().await.expect("watch answer").expect("watch stream open");
    assert!(first.created);
    (tx, stream)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_streams_beyond_max_concurrent_streams_wait_on_their_connection() {
    let (_dir, m, _kv) = single_member(&["--max-concurrent-streams", "2"]).await;
    let ch = Channel::from_shared(m.endpoint()).unwrap().connect().await.unwrap();
    let w1 = grpc_watch(ch.clone()).await;
    let _w2 = grpc_watch(ch.clone()).await;

    // a third stream on the same connection waits for one of the two to end
    let mut kv = KvClient::new(ch.clone());
    let range = tokio::spawn(async move { kv.range(RangeRequest { key: b"foo".to_vec(), ..Default::default() }).await });
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!range.is_finished(), "a third stream was served while 2 were open on the connection");
    drop(w1);
    let answered = tokio::time::timeout(Duration::from_secs(20), range).await;
    answered.expect("the range still waits after a watch stream ended").unwrap().expect("range");
}
