//! A graceful stop (SIGTERM) as etcd does it: the member's client streams end with Unavailable,
//! so clients resume them on another member (checked with Go's clientv3, the client whose
//! behaviour matters), and a leader hands leadership to a follower before it goes.

mod common;

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::cluster::TestCluster;
use common::{http_get, put, single_member, Member};
use etcd_proto::etcdserverpb::lease_client::LeaseClient;
use etcd_proto::etcdserverpb::maintenance_client::MaintenanceClient;
use etcd_proto::etcdserverpb::watch_client::WatchClient;
use etcd_proto::etcdserverpb::watch_request::RequestUnion;
use etcd_proto::etcdserverpb::{
    LeaseGrantRequest, LeaseKeepAliveRequest, RangeRequest, StatusRequest, WatchCreateRequest, WatchRequest,
};
use etcd_proto::v3lockpb::lock_client::LockClient;
use etcd_proto::v3lockpb::{LockRequest, UnlockRequest};
use tonic::transport::Channel;

/// Short raft timings for the tests that do not measure a leader change.
const FAST: &[&str] = &["--heartbeat-interval", "50", "--election-timeout", "500"];

fn sigterm(m: &Member) {
    let status = Command::new("kill").args(["-TERM", &m.pid().to_string()]).status().expect("run kill");
    assert!(status.success(), "kill -TERM {}", m.pid());
}

async fn channel(m: &Member) -> Channel {
    Channel::from_shared(m.endpoint()).unwrap().connect().await.expect("connect")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_and_keep_alive_streams_end_with_unavailable_when_the_member_stops() {
    let (_dir, mut m, _kv) = single_member(&[]).await;
    let ch = channel(&m).await;

    let (watch_tx, watch_rx) = tokio::sync::mpsc::channel(4);
    let create = WatchCreateRequest { key: b"k".to_vec(), ..Default::default() };
    watch_tx.send(WatchRequest { request_union: Some(RequestUnion::CreateRequest(create)) }).await.unwrap();
    let mut watch = WatchClient::new(ch.clone())
        .watch(tokio_stream::wrappers::ReceiverStream::new(watch_rx))
        .await
        .expect("watch")
        .into_inner();
    assert!(watch.message().await.expect("created").expect("created").created);

    let mut leases = LeaseClient::new(ch.clone());
    let id = leases.lease_grant(LeaseGrantRequest { ttl: 60, id: 0 }).await.expect("grant").into_inner().id;
    let (ka_tx, ka_rx) = tokio::sync::mpsc::channel(4);
    ka_tx.send(LeaseKeepAliveRequest { id }).await.unwrap();
    let mut keep_alive = leases
        .lease_keep_alive(tokio_stream::wrappers::ReceiverStream::new(ka_rx))
        .await
        .expect("keep-alive")
        .into_inner();
    assert_eq!(keep_alive.message().await.expect("renewed").expect("renewed").id, id);

    sigterm(&m);
    for (what, end) in [
        ("watch", tokio::time::timeout(Duration::from_secs(20), watch.message()).await.map(|r| r.map(|_| ()))),
        ("keep-alive", tokio::time::timeout(Duration::from_secs(20), keep_alive.message()).await.map(|r| r.map(|_| ()))),
    ] {
        let status = end.unwrap_or_else(|_| panic!("the {what} stream did not end")).expect_err("an error, not a clean end");
        assert_eq!(status.code(), tonic::Code::Unavailable, "{what}: {status:?}");
        assert_eq!(status.message(), "transport is closing", "{what}");
    }
    assert!(m.wait_exit(Duration::from_secs(20)).is_some(), "the member did not exit; log:\n{}", m.log());
    // the watch, the keep-alive and the stop all waited on nothing: a single member hands over nothing
    assert!(m.log_shows("skipped leadership transfer for single voting member cluster"), "{}", m.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_call_in_progress_when_its_member_is_stopped_still_gets_its_answer() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = TestCluster::start(dir.path(), 3, FAST).await;
    c.wait_leader(&[0, 1, 2]).await;
    let (stopped, other) = (channel(&c.members[0]).await, channel(&c.members[1]).await);
    let grant = |ch: Channel| async move {
        LeaseClient::new(ch).lease_grant(LeaseGrantRequest { ttl: 60, id: 0 }).await.expect("grant").into_inner().id
    };
    let (holder_lease, waiter_lease) = (grant(other.clone()).await, grant(stopped.clone()).await);
    let held = LockClient::new(other.clone())
        .lock(LockRequest { name: b"l".to_vec(), lease: holder_lease })
        .await
        .expect("first lock")
        .into_inner()
        .key;
    // A Lock call on member 0 that waits for the holder (a unary call in progress).
    let mut waiter = LockClient::new(stopped);
    let waiting = tokio::spawn(async move { waiter.lock(LockRequest { name: b"l".to_vec(), lease: waiter_lease }).await });
    let mut kv = c.members[1].ready_client().await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while kv.range(RangeRequest { key: b"l/".to_vec(), range_end: b"l0".to_vec(), ..Default::default() }).await.unwrap().into_inner().count < 2 {
        assert!(Instant::now() < deadline, "the second Lock call never queued");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    sigterm(&c.members[0]);
    // the member is stopping: its client listener is closed
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", c.members[0].client_port)).is_ok() {
        assert!(Instant::now() < deadline, "member 0 still accepts clients after SIGTERM");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    LockClient::new(other).unlock(UnlockRequest { key: held }).await.expect("unlock");
    let got = tokio::time::timeout(Duration::from_secs(20), waiting).await.expect("answered").unwrap();
    let key = got.expect("the call in progress gets its answer, not an error").into_inner().key;
    assert!(key.starts_with(b"l/"), "{key:?}");
    assert!(c.members[0].wait_exit(Duration::from_secs(20)).is_some(), "{}", c.members[0].log());
}

/// (leader, member id, raft term) as a member reports in Status.
async fn status(m: &Member) -> Option<(u64, u64, u64)> {
    let ch = Channel::from_shared(m.endpoint()).ok()?.connect_timeout(Duration::from_millis(300)).connect().await.ok()?;
    let r = tokio::time::timeout(Duration::from_secs(1), MaintenanceClient::new(ch).status(StatusRequest {}))
        .await
        .ok()?
        .ok()?
        .into_inner();
    Some((r.leader, r.header?.member_id, r.raft_term))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_leader_stopped_by_sigterm_hands_leadership_to_a_follower_before_it_exits() {
    // A 3 s election timeout: without a hand-over the others would still name the old leader
    // for at least 3 s after it exits, and could not have elected anyone yet.
    let timings = ["--heartbeat-interval", "100", "--election-timeout", "3000"];
    let dir = tempfile::tempdir().unwrap();
    let mut c = TestCluster::start(dir.path(), 3, &timings).await;
    let leader = c.wait_leader(&[0, 1, 2]).await;
    let (old_id, _, old_term) = status(&c.members[leader]).await.expect("leader status");
    let others: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    let mut kv = c.members[others[0]].ready_client().await;
    put(&mut kv, "before", "1").await.expect("put before the stop");

    sigterm(&c.members[leader]);
    let exited = c.members[leader].wait_exit(Duration::from_secs(30));
    assert!(exited.is_some(), "the leader did not exit; log:\n{}", c.members[leader].log());

    // Right after the old leader exited, both others already follow one of them, elected in
    // the very next term (no election timeout, no extra round of voting).
    let deadline = Instant::now() + Duration::from_secs(1);
    let (new_id, new_term) = loop {
        let a = status(&c.members[others[0]]).await;
        let b = status(&c.members[others[1]]).await;
        if let (Some((la, _, ta)), Some((lb, _, _))) = (a, b) {
            if la == lb && la != 0 && la != old_id {
                break (la, ta);
            }
        }
        assert!(Instant::now() < deadline, "no new leader right after the old one exited: {a:?} {b:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(new_term, old_term + 1, "the transferee campaigns once, in the next term");
    let log = c.members[leader].log();
    assert!(log.contains("\"msg\":\"leadership transfer starting\""), "{log}");
    assert!(log.contains(&format!("\"new-leader-member-id\":\"{new_id:x}\"")), "{log}");
    put(&mut kv, "after", "1").await.expect("the two left write on");
}

// ---- Go clientv3 -------------------------------------------------------------------------

/// Builds the Go program server/tests/go/`name` into `out` with Debian's Go toolchain and
/// clientv3 (golang-etcd-server-dev, GOPATH mode, offline). None when `go` is not installed
/// (scripts/test-all.sh installs it); any other build failure fails the test.
fn build_go_program(name: &str, out: &Path) -> Option<PathBuf> {
    if Command::new("go").arg("version").output().is_err() {
        eprintln!("SKIPPED: `go` is not installed (apt-get install golang-go golang-etcd-server-dev)");
        return None;
    }
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/go").join(name).join("main.go");
    let bin = out.join(name);
    // A cache kept beside the test targets: the first build compiles grpc and clientv3 (~1 min).
    let cache = Path::new(env!("CARGO_TARGET_TMPDIR")).join("go-build-cache");
    let gopath = format!("{}:/usr/share/gocode", out.join("gopath").display());
    let built = Command::new("go")
        .args(["build", "-o"])
        .arg(&bin)
        .arg(&src)
        .env("GO111MODULE", "off")
        .env("GOFLAGS", "")
        .env("GOPATH", gopath)
        .env("GOCACHE", cache)
        .output()
        .expect("run go build");
    assert!(
        built.status.success(),
        "go build of {} failed (clientv3 comes from golang-etcd-server-dev):\n{}",
        src.display(),
        String::from_utf8_lossy(&built.stderr)
    );
    Some(bin)
}

/// A running Go program whose stdout lines arrive on a channel.
struct GoProgram {
    child: std::process::Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl GoProgram {
    fn start(bin: &Path, args: &[String]) -> GoProgram {
        let mut child = Command::new(bin).args(args).stdout(Stdio::piped()).stderr(Stdio::null()).spawn().expect("start");
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        GoProgram { child, lines, seen: Vec::new() }
    }

    /// Reads lines until one satisfies `done` (at most `limit`); panics showing every line
    /// read so far otherwise.
    fn read_until(&mut self, limit: Duration, done: impl Fn(&str) -> bool) {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let finished = done(&line);
                    self.seen.push(line);
                    if finished {
                        return;
                    }
                }
                Err(_) => panic!("the Go program did not print what was awaited; it printed:\n{}", self.seen.join("\n")),
            }
        }
    }
}

impl Drop for GoProgram {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The member serving the one watch of the cluster (from its `etcd_debugging_mvcc_watcher_total`).
fn member_with_the_watch(c: &TestCluster) -> usize {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let holders: Vec<usize> = (0..c.members.len())
            .filter(|&i| http_get(&c.members[i], "/metrics").1.lines().any(|l| l == "etcd_debugging_mvcc_watcher_total 1"))
            .collect();
        if holders.len() == 1 {
            return holders[0];
        }
        assert!(Instant::now() < deadline, "no single member holds the watch: {holders:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Puts `value`, retrying (bounded) while the cluster changes leader; a put whose answer was
/// lost but which was applied is not repeated, so every value is written exactly once.
async fn put_once(kv: &mut etcd_proto::etcdserverpb::kv_client::KvClient<Channel>, key: &str, value: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match put(kv, key, value).await {
            Ok(_) => return,
            Err(e) => {
                let now = kv.range(RangeRequest { key: key.as_bytes().to_vec(), ..Default::default() }).await;
                if now.is_ok_and(|r| r.into_inner().kvs.first().is_some_and(|kv| kv.value == value.as_bytes())) {
                    return;
                }
                assert!(Instant::now() < deadline, "put {key}={value} kept failing: {e:?}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_go_clientv3_watch_survives_a_sigterm_of_its_member_and_resumes_on_another() {
    let dir = tempfile::tempdir().unwrap();
    let Some(watcher) = build_go_program("watch_resume", dir.path()) else { return };
    let mut c = TestCluster::start(dir.path(), 3, FAST).await;
    c.wait_leader(&[0, 1, 2]).await;
    let endpoints: Vec<String> = c.members.iter().map(|m| m.endpoint()).collect();
    const EVENTS: usize = 10;
    let args = ["-endpoints".to_string(), endpoints.join(","), "-key".into(), "k".into(), "-events".into(), EVENTS.to_string()];
    let mut go = GoProgram::start(&watcher, &args);
    go.read_until(Duration::from_secs(30), |l| l == "created");

    let watched = member_with_the_watch(&c);
    let writers: Vec<usize> = (0..3).filter(|&i| i != watched).collect();
    let mut kv = c.members[writers[0]].ready_client().await;
    for i in 0..EVENTS / 2 {
        put_once(&mut kv, "k", &format!("v{i}")).await;
    }
    go.read_until(Duration::from_secs(20), |l| l.starts_with(&format!("event PUT k v{} ", EVENTS / 2 - 1)));

    sigterm(&c.members[watched]);
    assert!(c.members[watched].wait_exit(Duration::from_secs(30)).is_some(), "{}", c.members[watched].log());
    let mut kv = c.members[writers[1]].ready_client().await;
    for i in EVENTS / 2..EVENTS {
        put_once(&mut kv, "k", &format!("v{i}")).await;
    }
    go.read_until(Duration::from_secs(30), |l| l == "done" || l.starts_with("canceled") || l == "closed");

    let events: Vec<(String, i64)> = go
        .seen
        .iter()
        .filter_map(|l| l.strip_prefix("event PUT k "))
        .map(|rest| {
            let (v, rev) = rest.split_once(' ').expect("value and revision");
            (v.to_string(), rev.parse().expect("revision"))
        })
        .collect();
    let values: Vec<&str> = events.iter().map(|(v, _)| v.as_str()).collect();
    let expected: Vec<String> = (0..EVENTS).map(|i| format!("v{i}")).collect();
    assert_eq!(values, expected, "every event once, in order; the program printed:\n{}", go.seen.join("\n"));
    assert!(events.windows(2).all(|w| w[0].1 < w[1].1), "revisions increase: {events:?}");
    assert_eq!(go.seen.last().map(String::as_str), Some("done"), "{}", go.seen.join("\n"));
}
