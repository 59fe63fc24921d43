//! etcd-rs's rafthttp against REAL etcd members (3.5.1 and 3.4.23): a one-member etcd whose
//! `--initial-cluster` names a second member at our handler's URL. Our side is the rafthttp
//! transport and handler with a stand-in raft ("fake follower") that grants every vote and
//! acknowledges every append without storing it. The etcd member must accept our streams, open
//! its streams to us, become leader on our vote, commit through our acknowledgements and so
//! serve a client write, which we must see in the entries it streams to us.

mod etcd_peer;

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use etcd_peer::*;
use etcd_raft::eraftpb::{Message, MessageType};
use etcd_raft::peer_dial::PeerDialer;
use etcd_raft::rafthttp::client::Identity;
use etcd_raft::rafthttp::handler::{serve, RaftHttpHandler};
use etcd_raft::rafthttp::headers::Versions;
use etcd_raft::rafthttp::host::{BoxFuture, SnapshotBody};
use etcd_raft::rafthttp::{HttpTransport, ProcessError, RaftHost, StreamType, TransportConfig};
use etcd_raft::Transport;
use parking_lot::Mutex;

/// A stand-in raft that answers like an agreeable follower and records what it got.
#[derive(Default)]
struct FakeFollower {
    transport: OnceLock<Weak<HttpTransport>>,
    got: Mutex<Vec<Message>>,
    removed: Mutex<Vec<u64>>,
    /// While true, appends are rejected as if our log were empty (so the leader must send a
    /// snapshot once it compacted its log).
    need_snapshot: std::sync::atomic::AtomicBool,
    /// (MsgSnap, database bytes) of each snapshot received.
    snapshots: Mutex<Vec<(Message, Vec<u8>)>>,
}

impl FakeFollower {
    fn reply(&self, m: &Message) -> Option<Message> {
        let mut r = Message { to: m.from, from: m.to, term: m.term, ..Default::default() };
        match m.get_msg_type() {
            MessageType::MsgRequestVote => r.set_msg_type(MessageType::MsgRequestVoteResponse),
            MessageType::MsgRequestPreVote => r.set_msg_type(MessageType::MsgRequestPreVoteResponse),
            MessageType::MsgAppend if self.need_snapshot.load(std::sync::atomic::Ordering::Relaxed) => {
                r.set_msg_type(MessageType::MsgAppendResponse);
                r.index = m.index;
                r.reject = true;
                r.reject_hint = 0;
            }
            MessageType::MsgAppend => {
                r.set_msg_type(MessageType::MsgAppendResponse);
                r.index = m.entries.last().map_or(m.index, |e| e.index);
            }
            MessageType::MsgSnapshot => {
                r.set_msg_type(MessageType::MsgAppendResponse);
                r.index = m.get_snapshot().get_metadata().index;
            }
            MessageType::MsgHeartbeat => {
                r.set_msg_type(MessageType::MsgHeartbeatResponse);
                r.context = m.context.clone();
            }
            _ => return None,
        }
        Some(r)
    }

    fn seen(&self, pred: impl Fn(&Message) -> bool) -> bool {
        self.got.lock().iter().any(pred)
    }
}

impl RaftHost for FakeFollower {
    fn process(&self, m: Message) -> Result<(), ProcessError> {
        let reply = self.reply(&m);
        self.got.lock().push(m);
        if let (Some(r), Some(t)) = (reply, self.transport.get().and_then(Weak::upgrade)) {
            t.send(vec![r]);
        }
        Ok(())
    }
    fn is_removed(&self, id: u64) -> bool {
        self.removed.lock().contains(&id)
    }
    fn receive_snapshot(&self, m: Message, mut db: SnapshotBody) -> BoxFuture<'_, Result<(), ProcessError>> {
        Box::pin(async move {
            let mut bytes = Vec::new();
            while let Some(chunk) = tokio_stream::StreamExt::next(&mut db).await {
                bytes.extend_from_slice(&chunk.map_err(ProcessError::Other)?);
            }
            self.snapshots.lock().push((m.clone(), bytes));
            self.need_snapshot.store(false, std::sync::atomic::Ordering::Relaxed);
            self.process(m)
        })
    }
    fn report_unreachable(&self, _id: u64) {}
    fn report_snapshot(&self, _id: u64, _ok: bool) {}
    fn removed_from_cluster(&self) {}
}

struct Setup {
    _dir: tempfile::TempDir,
    etcd: Etcd,
    etcd_id: u64,
    our_id: u64,
    cluster_id: u64,
    etcd_peer: SocketAddr,
    our_addr: SocketAddr,
    transport: Arc<HttpTransport>,
    host: Arc<FakeFollower>,
}

/// The IDs etcd computed for both members and the cluster, from its `/members` peer endpoint.
async fn learn_ids(etcd_peer: SocketAddr, our_url: &str) -> (u64, u64, u64) {
    let r = http_raw(etcd_peer, "GET /members HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await;
    assert_eq!(r.status, 200);
    let cluster_id = parse_id(r.header("X-Etcd-Cluster-Id").expect("cluster id header"));
    let members: serde_json::Value = serde_json::from_slice(&r.body).expect("members JSON");
    let (mut ours, mut theirs) = (0, 0);
    for m in members.as_array().expect("a list") {
        let id = m["id"].as_u64().expect("numeric id");
        if m["peerURLs"][0] == our_url {
            ours = id;
        } else {
            theirs = id;
        }
    }
    assert!(ours != 0 && theirs != 0);
    (theirs, ours, cluster_id)
}

async fn setup(bin: &str) -> Setup {
    setup_with(bin, &[]).await
}

async fn setup_with(bin: &str, extra: &[&str]) -> Setup {
    setup_serving(bin, extra, true).await
}

/// `streams`: false answers etcd's stream GETs 404 (as a member that does not know it yet), so
/// everything we send it goes by the pipeline.
async fn setup_serving(bin: &str, extra: &[&str], streams: bool) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let etcd_port = free_port();
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
    let our_addr = listener.local_addr().unwrap();
    let our_url = format!("http://{our_addr}");
    let etcd_url = format!("http://127.0.0.1:{etcd_port}");
    let cluster = format!("m0={etcd_url},rs={our_url}");
    let etcd = Etcd::start(bin, dir.path(), "m0", etcd_port, &etcd_url, &cluster, extra);
    let etcd_peer: SocketAddr = ([127, 0, 0, 1], etcd_port).into();
    assert!(wait_for(Duration::from_secs(10), || std::net::TcpStream::connect(etcd_peer).is_ok()).await, "etcd peer port up");
    let (etcd_id, our_id, cluster_id) = learn_ids(etcd_peer, &our_url).await;
    let host = Arc::new(FakeFollower::default());
    let identity = Identity { id: our_id, cluster_id, peer_urls: vec![our_url], versions: Versions::default() };
    let transport = HttpTransport::new(tokio::runtime::Handle::current(), TransportConfig { identity, dialer: PeerDialer::default(), timeouts: Default::default() }, host.clone());
    let _ = host.transport.set(Arc::downgrade(&transport));
    transport.add_peer(etcd_id, vec![etcd_url]);
    let handler = RaftHttpHandler::new(transport.clone());
    if streams {
        tokio::spawn(serve(listener, handler));
    } else {
        tokio::spawn(serve_peer_listener(listener, handler, None, false));
    }
    Setup { _dir: dir, etcd, etcd_id, our_id, cluster_id, etcd_peer, our_addr, transport, host }
}

async fn etcd_and_rafthttp_form_a_cluster(bin: &str, ctl: &str) {
    let s = setup(bin).await;
    let ok = wait_for(Duration::from_secs(15), || {
        [StreamType::MsgApp, StreamType::Message].iter().all(|&t| s.transport.writer_attached(s.etcd_id, t) && s.transport.reader_active(s.etcd_id, t))
    }).await;
    assert!(ok, "both streams both ways: etcd read ours (writers attached) and accepted ours (readers active); etcd log:\n{}", s.etcd.log_text());
    // etcd campaigns; our vote makes it leader; its appends reach us and our acks commit them
    assert!(wait_for(Duration::from_secs(15), || s.host.seen(|m| m.get_msg_type() == MessageType::MsgRequestVote && m.to == s.our_id)).await, "etcd asked us for a vote");
    let ep = s.etcd.endpoint();
    let ctl2 = ctl.to_string();
    tokio::task::spawn_blocking(move || put_until_ok(&ctl2, &ep, "interop-key", "from-etcdctl", Duration::from_secs(20))).await.unwrap();
    let key = b"interop-key";
    assert!(s.host.seen(|m| m.get_msg_type() == MessageType::MsgAppend && m.from == s.etcd_id
        && m.entries.iter().any(|e| e.data.windows(key.len()).any(|w| w == key))), "the client's write reached us in a MsgApp");
    assert!(wait_for(Duration::from_secs(5), || s.host.seen(|m| m.get_msg_type() == MessageType::MsgHeartbeat && m.term > 0)).await, "the leader's heartbeats reach us");
    let got = etcdctl(ctl, &s.etcd.endpoint(), &["get", "interop-key", "--print-value-only"]).expect("get");
    assert_eq!(got.trim(), "from-etcdctl");
    eprintln!("{bin}: etcd {:x} leader with us ({:x}) in cluster {:x}; we received {} messages", s.etcd_id, s.our_id, s.cluster_id, s.host.got.lock().len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_3_5_member_commits_through_rafthttp_streams() {
    if !installed(&[ETCD_35, ETCDCTL_35]) {
        return;
    }
    etcd_and_rafthttp_form_a_cluster(ETCD_35, ETCDCTL_35).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_3_4_member_commits_through_rafthttp_streams() {
    if !installed(&[ETCD_34, ETCDCTL_34]) {
        return;
    }
    etcd_and_rafthttp_form_a_cluster(ETCD_34, ETCDCTL_34).await;
}

/// The same refused requests sent to etcd and to our handler get the same status and body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_match_etcd_3_5() {
    if !installed(&[ETCD_35]) {
        return;
    }
    let s = setup(ETCD_35).await;
    let cid = format!("{:x}", s.cluster_id);
    let good = "X-Server-Version: 3.5.1\r\nX-Min-Cluster-Version: 3.0.0\r\n";
    // (request, whose ID is "from" for each side, expected status)
    let cases: Vec<(String, u16)> = vec![
        (format!("GET /raft/stream/message/{{from}} HTTP/1.1\r\nHost: x\r\n{good}X-Etcd-Cluster-ID: 1\r\nX-Raft-To: {{to}}\r\nConnection: close\r\n\r\n"), 412),
        (format!("GET /raft/stream/message/{{from}} HTTP/1.1\r\nHost: x\r\nX-Server-Version: 2.0.0\r\nX-Etcd-Cluster-ID: {cid}\r\nX-Raft-To: {{to}}\r\nConnection: close\r\n\r\n"), 412),
        (format!("GET /raft/stream/message/{{from}} HTTP/1.1\r\nHost: x\r\n{good}X-Etcd-Cluster-ID: {cid}\r\nX-Raft-To: 1\r\nConnection: close\r\n\r\n"), 412),
        (format!("GET /raft/stream/message/abcdefg HTTP/1.1\r\nHost: x\r\n{good}X-Etcd-Cluster-ID: {cid}\r\nConnection: close\r\n\r\n"), 404),
        (format!("GET /raft/stream/message/77 HTTP/1.1\r\nHost: x\r\n{good}X-Etcd-Cluster-ID: {cid}\r\nConnection: close\r\n\r\n"), 404),
        (format!("GET /raft/stream/other/{{from}} HTTP/1.1\r\nHost: x\r\n{good}X-Etcd-Cluster-ID: {cid}\r\nConnection: close\r\n\r\n"), 404),
        ("POST /raft/stream/message/{from} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_string(), 405),
        ("GET /raft HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_string(), 405),
        (format!("POST /raft HTTP/1.1\r\nHost: x\r\n{good}X-Etcd-Cluster-ID: 1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"), 412),
        (format!("POST /raft HTTP/1.1\r\nHost: x\r\n{good}X-Etcd-Cluster-ID: {cid}\r\nContent-Length: 3\r\nConnection: close\r\n\r\n\x7f\x7f\x7f"), 400),
        (format!("POST /raft/snapshot HTTP/1.1\r\nHost: x\r\n{good}X-Etcd-Cluster-ID: {cid}\r\nContent-Length: 9\r\nConnection: close\r\n\r\n\0\0\0\0\0\0\0\x01\x08"), 400),
        ("GET /raft/nothing HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_string(), 404),
    ];
    for (template, want) in cases {
        // each side is asked as itself: "from" the other member, "to" itself
        let to_etcd = template.replace("{from}", &format!("{:x}", s.our_id)).replace("{to}", &format!("{:x}", s.etcd_id));
        let to_us = template.replace("{from}", &format!("{:x}", s.etcd_id)).replace("{to}", &format!("{:x}", s.our_id));
        let theirs = http_raw(s.etcd_peer, &to_etcd).await;
        let ours = http_raw(s.our_addr, &to_us).await;
        let line = template.lines().next().unwrap_or("").to_string();
        assert_eq!(theirs.status, want, "etcd answered {line} with {}", theirs.status);
        assert_eq!((ours.status, String::from_utf8_lossy(&ours.body)), (theirs.status, String::from_utf8_lossy(&theirs.body)), "{line}");
        for h in ["Content-Type", "X-Etcd-Cluster-Id", "X-Server-Version", "Allow"] {
            assert_eq!(ours.header(h), theirs.header(h), "header {h} of the answer to {line}");
        }
    }
    // a removed sender's stream is refused with 410 (told last: etcd stops when it hears it)
    s.host.removed.lock().push(s.etcd_id);
    let gone = format!("GET /raft/stream/msgapp/{:x} HTTP/1.1\r\nHost: x\r\nX-Server-Version: 3.5.1\r\nX-Min-Cluster-Version: 3.0.0\r\nX-Etcd-Cluster-ID: {cid}\r\nX-Raft-To: {:x}\r\nConnection: close\r\n\r\n", s.etcd_id, s.our_id);
    let r = http_raw(s.our_addr, &gone).await;
    assert_eq!((r.status, String::from_utf8_lossy(&r.body).into_owned()), (410, "removed member\n".to_string()));
}

/// A stand-in server for the peer endpoints that reports what etcd reported (so the answers
/// must match byte for byte when the formats are right).
struct MirrorApi {
    cluster_id: u64,
    members: Vec<etcd_raft::rafthttp::peer_api::MemberJson>,
    versions: (String, Option<String>),
    hash: etcd_raft::rafthttp::peer_api::HashKvResponseJson,
}

impl etcd_raft::rafthttp::peer_api::PeerApi for MirrorApi {
    fn cluster_id(&self) -> u64 {
        self.cluster_id
    }
    fn members(&self) -> Vec<etcd_raft::rafthttp::peer_api::MemberJson> {
        self.members.clone()
    }
    fn promote_member(&self, _id: u64) -> BoxFuture<'_, Result<Vec<etcd_raft::rafthttp::peer_api::MemberJson>, etcd_raft::rafthttp::peer_api::PromoteError>> {
        Box::pin(async { Err(etcd_raft::rafthttp::peer_api::PromoteError::NotLearner) })
    }
    fn versions(&self) -> (String, Option<String>) {
        self.versions.clone()
    }
    fn renew_lease(&self, _id: i64) -> BoxFuture<'_, Result<i64, etcd_raft::rafthttp::peer_api::LeaseError>> {
        Box::pin(async { Err(etcd_raft::rafthttp::peer_api::LeaseError::NotFound) })
    }
    fn lease_time_to_live(&self, _id: i64, _keys: bool) -> BoxFuture<'_, Result<etcd_proto::etcdserverpb::LeaseTimeToLiveResponse, etcd_raft::rafthttp::peer_api::LeaseError>> {
        Box::pin(async { Err(etcd_raft::rafthttp::peer_api::LeaseError::NotFound) })
    }
    fn hash_kv(&self, _revision: i64) -> BoxFuture<'_, Result<etcd_raft::rafthttp::peer_api::HashKvResponseJson, String>> {
        let h = self.hash;
        Box::pin(async move { Ok(h) })
    }
    fn downgrade_enabled(&self) -> BoxFuture<'_, Result<bool, String>> {
        Box::pin(async { Ok(false) })
    }
}

/// Serves the peer endpoints (`api`, when given) and raft (`raft`) on one listener, as the
/// server will; `streams` false answers stream GETs 404 (a member that does not know the sender).
async fn serve_peer_listener(listener: tokio::net::TcpListener, raft: RaftHttpHandler, api: Option<Arc<MirrorApi>>, streams: bool) {
    while let Ok((stream, _)) = listener.accept().await {
        let (raft, api) = (raft.clone(), api.clone());
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                let (raft, api) = (raft.clone(), api.clone());
                async move {
                    let path = req.uri().path();
                    Ok::<_, std::convert::Infallible>(match &api {
                        Some(api) if etcd_raft::rafthttp::peer_api::handles(path) => etcd_raft::rafthttp::peer_api::handle(&**api, req).await,
                        _ if !streams && path.starts_with("/raft/stream/") => {
                            etcd_raft::rafthttp::handler::http_error(hyper::StatusCode::NOT_FOUND, "error sender not found")
                        }
                        _ => raft.handle(req).await,
                    })
                }
            });
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(hyper_util::rt::TokioIo::new(stream), svc).await;
        });
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_endpoints_answer_as_etcd_3_5() {
    if !installed(&[ETCD_35]) {
        return;
    }
    let s = setup(ETCD_35).await;
    // a working cluster (etcd leads with our fake follower) so etcd answers every endpoint
    let ep = s.etcd.endpoint();
    tokio::task::spawn_blocking(move || put_until_ok(ETCDCTL_35, &ep, "k", "v", Duration::from_secs(20))).await.unwrap();
    let get = |path: &str| format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let members = http_raw(s.etcd_peer, &get("/members")).await;
    let version = http_raw(s.etcd_peer, &get("/version")).await;
    let hashkv_req = "GET /members/hashkv HTTP/1.1\r\nHost: x\r\nContent-Length: 14\r\nConnection: close\r\n\r\n{\"revision\":0}";
    let hash = http_raw(s.etcd_peer, hashkv_req).await;
    let hash_json: serde_json::Value = serde_json::from_slice(&hash.body).expect("hashkv JSON");
    let version_json: serde_json::Value = serde_json::from_slice(&version.body).unwrap();
    let api = Arc::new(MirrorApi {
        cluster_id: s.cluster_id,
        members: serde_json::from_slice(&members.body).expect("members parse into MemberJson"),
        versions: (version_json["etcdserver"].as_str().unwrap().into(), version_json["etcdcluster"].as_str().map(str::to_string).filter(|v| v != "not_decided")),
        hash: serde_json::from_value(hash_json).expect("etcd's hashkv JSON"),
    });
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
    let api_addr = listener.local_addr().unwrap();
    tokio::spawn(serve_peer_listener(listener, RaftHttpHandler::new(s.transport.clone()), Some(api), true));
    let requests = vec![
        get("/members"),
        get("/version"),
        hashkv_req.to_string(),
        "GET /members/hashkv HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nConnection: close\r\n\r\n{x}".to_string(),
        "POST /members/hashkv HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_string(),
        get("/downgrade/enabled"),
        "POST /members HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_string(),
        "POST /members/promote/abc HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_string(),
        get("/members/promote/1"),
        get("/leases"),
        "POST /leases HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nConnection: close\r\n\r\n\x7f\x7f".to_string(),
        "POST /leases/internal HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nConnection: close\r\n\r\n\x7f\x7f".to_string(),
        get("/raft/probing"),
    ];
    for req in requests {
        let line = req.lines().next().unwrap_or("").to_string();
        let theirs = http_raw(s.etcd_peer, &req).await;
        let ours = http_raw(api_addr, &req).await;
        assert_eq!(ours.status, theirs.status, "{line}");
        if line.contains("probing") {
            // a timestamp: same shape, not the same bytes
            let (o, t): (serde_json::Value, serde_json::Value) = (serde_json::from_slice(&ours.body).unwrap(), serde_json::from_slice(&theirs.body).unwrap());
            assert_eq!((o["OK"].clone(), o["Now"].is_string()), (t["OK"].clone(), true));
        } else {
            assert_eq!(String::from_utf8_lossy(&ours.body), String::from_utf8_lossy(&theirs.body), "{line}");
        }
        for h in ["Content-Type", "X-Etcd-Cluster-Id", "Allow"] {
            assert_eq!(ours.header(h), theirs.header(h), "header {h} of the answer to {line}");
        }
    }
}

/// Puts `n` keys through etcd's gRPC API, `concurrency` at a time.
async fn put_many(endpoint: String, n: usize, concurrency: usize) {
    use etcd_proto::etcdserverpb::kv_client::KvClient;
    use etcd_proto::etcdserverpb::PutRequest;
    let client = KvClient::connect(endpoint).await.expect("gRPC client");
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (mut c, next) = (client.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= n {
                    return;
                }
                let req = PutRequest { key: format!("bulk-{i}").into_bytes(), value: vec![b'v'; 16], ..Default::default() };
                c.put(req).await.expect("put");
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

/// etcd's leader, having compacted its log past what we say we hold, sends us its snapshot on
/// `POST /raft/snapshot`: the MsgSnap frame decodes and the bytes after it are a bbolt file;
/// and etcd reads and saves the snapshot our transport POSTs to it.
async fn etcd_sends_its_snapshot_to_rafthttp(bin: &str, ctl: &str) {
    let s = setup_with(bin, &["--snapshot-count", "100"]).await;
    let ep = s.etcd.endpoint();
    let ctl2 = ctl.to_string();
    tokio::task::spawn_blocking(move || put_until_ok(&ctl2, &ep, "first", "v", Duration::from_secs(20))).await.unwrap();
    // etcd keeps 5000 entries behind its snapshot: write past that so entry 1 is compacted
    put_many(s.etcd.endpoint(), 5300, 32).await;
    s.host.need_snapshot.store(true, std::sync::atomic::Ordering::Relaxed);
    let ep = s.etcd.endpoint();
    let ctl2 = ctl.to_string();
    // a write makes the leader append again (and meet our rejection)
    tokio::task::spawn_blocking(move || put_until_ok(&ctl2, &ep, "after", "v", Duration::from_secs(30))).await.unwrap();
    assert!(wait_for(Duration::from_secs(20), || !s.host.snapshots.lock().is_empty()).await, "etcd sent a snapshot; log:\n{}", s.etcd.log_text());
    let (m, db) = s.host.snapshots.lock()[0].clone();
    let meta = m.get_snapshot().get_metadata();
    assert_eq!((m.from, m.to), (s.etcd_id, s.our_id));
    assert!(meta.index > 5000 && meta.term > 0, "snapshot at index {} term {}", meta.index, meta.term);
    assert!(meta.get_conf_state().voters.contains(&s.our_id) && meta.get_conf_state().voters.contains(&s.etcd_id));
    // a bbolt file: its first page is a meta page whose magic is 0xED0CDAED
    assert!(db.len() >= 4096, "database of {} bytes", db.len());
    assert_eq!(u32::from_le_bytes(db[16..20].try_into().unwrap()), 0xED0C_DAED, "bbolt magic");
    // our acknowledgement of the snapshot lets the leader go on replicating to us
    let ep = s.etcd.endpoint();
    let ctl2 = ctl.to_string();
    tokio::task::spawn_blocking(move || put_until_ok(&ctl2, &ep, "later", "v", Duration::from_secs(20))).await.unwrap();
    eprintln!("{bin}: snapshot at index {} term {}, database {} bytes", meta.index, meta.term, db.len());
    // and ours to etcd: the same database behind our MsgSnap frame is read and saved by etcd
    // (its raft then ignores the message: a leader takes no snapshot from a follower)
    let mut back = m.clone();
    back.from = s.our_id;
    back.to = s.etcd_id;
    back.term = 1;
    let sent = s.transport.send_snapshot(back, etcd_raft::rafthttp::client::full_body(db.clone())).await;
    assert_eq!(sent, Ok(()), "etcd answered our snapshot POST 204");
    // etcd logs this only when it received one (3.5's zap and 3.4's capnslog line both say it)
    let saved = "received and saved database snapshot";
    assert!(wait_for(Duration::from_secs(5), || s.etcd.log_text().contains(saved)).await, "etcd saved our snapshot: {}", s.etcd.log_text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_posts_are_read_both_ways_with_etcd_3_5() {
    if !installed(&[ETCD_35, ETCDCTL_35]) {
        return;
    }
    etcd_sends_its_snapshot_to_rafthttp(ETCD_35, ETCDCTL_35).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_posts_are_read_both_ways_with_etcd_3_4() {
    if !installed(&[ETCD_34, ETCDCTL_34]) {
        return;
    }
    etcd_sends_its_snapshot_to_rafthttp(ETCD_34, ETCDCTL_34).await;
}

/// With no stream for etcd to read, our votes and acknowledgements reach it by `POST /raft`
/// alone, and it still becomes leader and commits a write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_3_5_member_commits_through_rafthttp_pipeline() {
    if !installed(&[ETCD_35]) {
        return;
    }
    let s = setup_serving(ETCD_35, &[], false).await;
    let ep = s.etcd.endpoint();
    tokio::task::spawn_blocking(move || put_until_ok(ETCDCTL_35, &ep, "piped", "v", Duration::from_secs(20))).await.unwrap();
    assert!(!s.transport.writer_attached(s.etcd_id, StreamType::Message), "no stream of ours was read");
    assert!(s.transport.reader_active(s.etcd_id, StreamType::MsgApp), "we still read etcd's streams");
}
