//! The peer network proxies (`etcd_robustness::network`) between plain TCP echo servers.
//!
//! Each "member" is an echo server behind its proxy plus a separate process holding the
//! member's outgoing connections (a `sleep` child given the sockets as stdin/stdout), so the
//! proxies must tell members apart by process, as they must between real members. The test
//! process does the reading and writing on those sockets; it is no member itself.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use etcd_robustness::network::{CutMode, PairBytes, PeerNetwork};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// How long a message may take through an unfaulted proxy on a loaded machine.
const ARRIVES_WITHIN: Duration = Duration::from_secs(5);
/// How long a cut connection is watched for bytes that must not come.
const SILENT_FOR: Duration = Duration::from_millis(500);

/// Everything each member's echo server received, in order.
type Received = Arc<Mutex<Vec<u8>>>;

async fn echo_server() -> (SocketAddr, Received) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let received: Received = Arc::default();
    let log = received.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let log = log.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                while let Ok(n @ 1..) = s.read(&mut buf).await {
                    log.lock().unwrap().extend_from_slice(&buf[..n]);
                    if s.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, received)
}

/// Three members: echo servers behind proxies, and for each ordered pair (a, b) a connection
/// from member a's process to member b's proxy.
struct Fixture {
    net: PeerNetwork,
    received: Vec<Received>,
    conns: Vec<Vec<Option<TcpStream>>>,
    holders: Vec<Child>,
}

impl Fixture {
    async fn start() -> Fixture {
        let mut targets = Vec::new();
        let mut received = Vec::new();
        for _ in 0..3 {
            let (addr, log) = echo_server().await;
            targets.push(addr);
            received.push(log);
        }
        let net = PeerNetwork::start(&targets).await.unwrap();
        let mut conns: Vec<Vec<Option<TcpStream>>> = (0..3).map(|_| (0..3).map(|_| None).collect()).collect();
        let mut holders = Vec::new();
        for (a, outgoing) in conns.iter_mut().enumerate() {
            let mut held = Vec::new();
            for b in (0..3).filter(|&b| b != a) {
                let s = std::net::TcpStream::connect(net.proxy_addr(b)).unwrap();
                held.push(s.try_clone().unwrap());
                s.set_nonblocking(true).unwrap();
                outgoing[b] = Some(TcpStream::from_std(s).unwrap());
            }
            let [first, second] = <[std::net::TcpStream; 2]>::try_from(held).unwrap();
            let holder = Command::new("sleep")
                .arg("120")
                .stdin(Stdio::from(std::os::fd::OwnedFd::from(first)))
                .stdout(Stdio::from(std::os::fd::OwnedFd::from(second)))
                .spawn()
                .unwrap();
            // The proxies saw these connections before the holder existed; set_pid makes them
            // look again.
            net.set_pid(a, holder.id());
            holders.push(holder);
        }
        Fixture { net, received, conns, holders }
    }

    fn conn(&mut self, from: usize, to: usize) -> &mut TcpStream {
        self.conns[from][to].as_mut().unwrap()
    }

    /// Sends `msg` on member `from`'s connection to member `to` and returns what comes back
    /// (the echo) within `wait`.
    async fn round_trip(&mut self, from: usize, to: usize, msg: &str, wait: Duration) -> Vec<u8> {
        let conn = self.conn(from, to);
        conn.write_all(msg.as_bytes()).await.unwrap();
        let mut got = Vec::new();
        let deadline = tokio::time::Instant::now() + wait;
        let mut buf = [0u8; 4096];
        while got.len() < msg.len() {
            match tokio::time::timeout_at(deadline, conn.read(&mut buf)).await {
                Ok(Ok(n @ 1..)) => got.extend_from_slice(&buf[..n]),
                Ok(Ok(0)) => panic!("connection {from}->{to} was closed"),
                Ok(Err(e)) => panic!("connection {from}->{to} failed: {e}"),
                Err(_) => break,
            }
        }
        got
    }

    async fn works(&mut self, from: usize, to: usize, msg: &str) -> bool {
        self.round_trip(from, to, msg, ARRIVES_WITHIN).await == msg.as_bytes()
    }

    /// After a heal: the bytes held during the cut come back first, then `msg`'s echo.
    async fn works_after(&mut self, from: usize, to: usize, held: &str, msg: &str) -> bool {
        let conn = self.conn(from, to);
        conn.write_all(msg.as_bytes()).await.unwrap();
        let want = format!("{held}{msg}");
        let mut got = vec![0u8; want.len()];
        matches!(tokio::time::timeout(ARRIVES_WITHIN, conn.read_exact(&mut got)).await, Ok(Ok(_)))
            && got == want.as_bytes()
    }

    async fn silent(&mut self, from: usize, to: usize, msg: &str) -> bool {
        self.round_trip(from, to, msg, SILENT_FOR).await.is_empty()
    }

    fn received_by(&self, member: usize, needle: &str) -> bool {
        let log = self.received[member].lock().unwrap();
        log.windows(needle.len()).any(|w| w == needle.as_bytes())
    }

    fn pair(&self, from: usize, to: usize) -> PairBytes {
        self.net
            .bytes()
            .into_iter()
            .find(|p| p.from == Some(from) && p.to == Some(to))
            .unwrap_or(PairBytes { from: Some(from), to: Some(to), ..Default::default() })
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        for h in &mut self.holders {
            let _ = h.kill();
            let _ = h.wait();
        }
    }
}

const PAIRS: [(usize, usize); 6] = [(0, 1), (0, 2), (1, 0), (1, 2), (2, 0), (2, 1)];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unfaulted_proxies_pass_bytes_both_ways_counted_per_member_pair() {
    let mut f = Fixture::start().await;
    for (a, b) in PAIRS {
        assert!(f.works(a, b, &format!("hello {a}->{b}")).await, "{a}->{b}");
    }
    // Each connection carried its message to the target and the echo back, and the proxies
    // attributed both to the right members although the connections came before set_pid.
    for (a, b) in PAIRS {
        let len = format!("hello {a}->{b}").len() as u64 + format!("hello {b}->{a}").len() as u64;
        let p = f.pair(a, b);
        assert_eq!((p.forwarded, p.dropped, p.held), (len, 0, 0), "{a}->{b}: {:?}", f.net.bytes());
    }
    assert!(f.net.bytes().iter().all(|p| p.from.is_some() && p.to.is_some()), "{:?}", f.net.bytes());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn isolated_member_is_silent_both_ways_on_open_connections_until_healed() {
    let mut f = Fixture::start().await;
    assert!(f.works(0, 1, "before").await);
    f.net.isolate(0);
    for (a, b) in [(0, 1), (0, 2), (1, 0), (2, 0)] {
        assert!(f.silent(a, b, &format!("cut {a}->{b}")).await, "{a}->{b} got through");
    }
    assert!(!f.received_by(1, "cut 0->1") && !f.received_by(2, "cut 0->2"));
    // Nor did 1's and 2's messages reach 0.
    assert!(!f.received_by(0, "cut 1->0") && !f.received_by(0, "cut 2->0"));
    assert!(f.works(1, 2, "still 1->2").await && f.works(2, 1, "still 2->1").await);
    assert!(f.pair(0, 1).held > 0 && f.pair(1, 0).held > 0 && f.pair(0, 1).dropped == 0);

    // A connection opened during the cut is accepted and silent too (no refusal, no reset).
    let mut late = TcpStream::connect(f.net.proxy_addr(0)).await.unwrap();
    f.net.set_pid(1, std::process::id()); // the test process stands for member 1 now
    late.write_all(b"late").await.unwrap();
    let mut buf = [0u8; 4];
    assert!(tokio::time::timeout(SILENT_FOR, late.read(&mut buf)).await.is_err(), "late connection not silent");

    f.net.heal();
    // The same connections carry traffic again (they were kept open), the held bytes first.
    for (a, b) in [(0, 1), (0, 2), (1, 0), (2, 0)] {
        assert!(f.works_after(a, b, &format!("cut {a}->{b}"), &format!("healed {a}->{b}")).await, "{a}->{b}");
    }
    assert!(f.received_by(1, "cut 0->1healed 0->1") && f.received_by(0, "cut 1->0healed 1->0"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discard_mode_throws_a_cut_pairs_bytes_away_and_keeps_the_connection() {
    let mut f = Fixture::start().await;
    f.net.set_cut_mode(CutMode::Discard);
    f.net.isolate(0);
    assert!(f.silent(0, 1, "lost 0->1").await && f.silent(1, 0, "lost 1->0").await);
    assert!(f.pair(0, 1).dropped > 0 && f.pair(1, 0).dropped > 0 && f.pair(0, 1).held == 0);
    f.net.heal();
    // Nothing of the cut comes back; the connections still carry new bytes.
    assert!(f.works(0, 1, "healed 0->1").await && f.works(1, 0, "healed 1->0").await);
    assert!(!f.received_by(1, "lost 0->1") && !f.received_by(0, "lost 1->0"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partition_cuts_only_between_groups() {
    let mut f = Fixture::start().await;
    f.net.partition(&[vec![0, 1], vec![2]]);
    assert!(f.works(0, 1, "same side 0->1").await && f.works(1, 0, "same side 1->0").await);
    for (a, b) in [(0, 2), (2, 0), (1, 2), (2, 1)] {
        assert!(f.silent(a, b, &format!("across {a}->{b}")).await, "{a}->{b} got through");
    }
    f.net.heal();
    assert!(f.works_after(2, 1, "across 2->1", "healed 2->1").await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_way_drop_follows_the_bytes_not_the_connection() {
    let mut f = Fixture::start().await;
    f.net.drop_one_way(0, 1);
    // On 0's connection to 1, 0's bytes never reach 1.
    assert!(f.silent(0, 1, "from 0 on 0's conn").await);
    assert!(!f.received_by(1, "from 0 on 0's conn"));
    // On 1's connection to 0, 1's bytes reach 0, but 0's echo never reaches 1.
    assert!(f.silent(1, 0, "from 1 on 1's conn").await);
    assert!(f.received_by(0, "from 1 on 1's conn"));
    // Other pairs are untouched.
    assert!(f.works(0, 2, "0->2").await && f.works(2, 1, "2->1").await);
    f.net.heal();
    // 0's echo of 1's message was held, and comes first.
    assert!(f.works_after(1, 0, "from 1 on 1's conn", "healed 1->0").await);
    assert!(f.works_after(0, 1, "from 0 on 0's conn", "healed 0->1").await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delay_holds_back_traffic_to_and_from_the_member_in_order() {
    let mut f = Fixture::start().await;
    let d = Duration::from_millis(300);
    f.net.delay(1, d);
    let start = Instant::now();
    // Several writes in a row arrive whole and in order.
    let msg: String = (0..50).map(|i| format!("<{i}>")).collect();
    assert!(f.works(0, 1, &msg).await);
    let delayed = start.elapsed();
    // Delayed on the way to 1 and again on the echo back from 1.
    assert!(delayed >= 2 * d, "round trip through a delayed member took {delayed:?}");
    let start = Instant::now();
    assert!(f.works(0, 2, "undelayed").await);
    assert!(start.elapsed() < delayed, "an undelayed pair was slowed too");
    f.net.heal();
}

// ---- Real clusters behind the proxies ----------------------------------------------------

mod cluster {
    use super::*;
    use etcd_proto::etcdserverpb::kv_client::KvClient;
    use etcd_proto::etcdserverpb::maintenance_client::MaintenanceClient;
    use etcd_proto::etcdserverpb::{PutRequest, RangeRequest, StatusRequest};
    use std::path::{Path, PathBuf};
    use tonic::transport::Channel;

    /// A wait that must end on a healthy loaded machine (elections, catch-up).
    const SETTLES_WITHIN: Duration = Duration::from_secs(30);
    /// How long the isolated member is given to (wrongly) answer a linearizable read.
    const READ_REFUSED_FOR: Duration = Duration::from_secs(5);

    /// A port free now, below the kernel's ephemeral range (32768-60999), so that no outgoing
    /// connection takes it before the member binds it; per-process starting point, in turn.
    fn free_port() -> u16 {
        use std::sync::atomic::{AtomicU32, Ordering};
        const FIRST: u32 = 12000;
        const SPAN: u32 = 20000;
        static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
        let _ = NEXT.compare_exchange(u32::MAX, std::process::id().wrapping_mul(104_729) % SPAN, Ordering::AcqRel, Ordering::Acquire);
        (0..SPAN)
            .map(|_| (FIRST + NEXT.fetch_add(1, Ordering::AcqRel) % SPAN) as u16)
            .find(|&p| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok())
            .expect("a free port below the ephemeral range")
    }

    struct Member {
        client: String,
        log: PathBuf,
        child: Child,
    }

    impl Drop for Member {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    struct Cluster {
        net: PeerNetwork,
        members: Vec<Member>,
        _dir: tempfile::TempDir,
    }

    impl Cluster {
        /// Three members of `bin` (etcd's flags), each advertising its proxy as its peer URL.
        async fn start(bin: &Path) -> Cluster {
            let dir = tempfile::tempdir().unwrap();
            let peers: Vec<SocketAddr> = (0..3).map(|_| SocketAddr::from(([127, 0, 0, 1], free_port()))).collect();
            let net = PeerNetwork::start(&peers).await.unwrap();
            let initial: Vec<String> = (0..3).map(|i| format!("m{i}=http://{}", net.proxy_addr(i))).collect();
            let mut members = Vec::new();
            for (i, peer) in peers.iter().enumerate() {
                let client = format!("http://127.0.0.1:{}", free_port());
                let log = dir.path().join(format!("m{i}.log"));
                let out = std::fs::File::create(&log).unwrap();
                let child = Command::new(bin)
                    .args(["--name", &format!("m{i}"), "--data-dir"])
                    .arg(dir.path().join(format!("m{i}.etcd")))
                    .args(["--listen-client-urls", &client, "--advertise-client-urls", &client])
                    .args(["--listen-peer-urls", &format!("http://{peer}")])
                    .args(["--initial-advertise-peer-urls", &format!("http://{}", net.proxy_addr(i))])
                    .args(["--initial-cluster", &initial.join(","), "--initial-cluster-state", "new"])
                    .args(["--initial-cluster-token", "rob-net"])
                    .stdin(Stdio::null())
                    .stdout(out.try_clone().unwrap())
                    .stderr(out)
                    .spawn()
                    .unwrap_or_else(|e| panic!("start {}: {e}", bin.display()));
                net.set_pid(i, child.id());
                members.push(Member { client, log, child });
            }
            Cluster { net, members, _dir: dir }
        }

        fn logs(&self) -> String {
            self.members
                .iter()
                .enumerate()
                .map(|(i, m)| format!("--- m{i}\n{}", std::fs::read_to_string(&m.log).unwrap_or_default()))
                .collect()
        }

        async fn channel(&self, m: usize) -> Option<Channel> {
            let ch = Channel::from_shared(self.members[m].client.clone()).ok()?;
            ch.connect_timeout(Duration::from_millis(500)).timeout(Duration::from_secs(3)).connect().await.ok()
        }

        /// (own member id, leader id, revision) as member `m` reports in Status.
        async fn status(&self, m: usize) -> Option<(u64, u64, i64)> {
            let mut c = MaintenanceClient::new(self.channel(m).await?);
            let r = c.status(StatusRequest {}).await.ok()?.into_inner();
            let h = r.header?;
            Some((h.member_id, r.leader, h.revision))
        }

        /// Waits until all of `among` name one leader among them; its index.
        async fn agreed_leader(&self, among: &[usize]) -> usize {
            let deadline = Instant::now() + SETTLES_WITHIN;
            loop {
                let mut seen = Vec::new();
                for &m in among {
                    seen.extend(self.status(m).await.map(|(id, leader, _)| (m, id, leader)));
                }
                if seen.len() == among.len() && seen.iter().all(|s| s.2 != 0 && s.2 == seen[0].2) {
                    if let Some(&(m, ..)) = seen.iter().find(|s| s.1 == s.2) {
                        return m;
                    }
                }
                assert!(Instant::now() < deadline, "no agreed leader among {among:?}: {seen:?}\n{}", self.logs());
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }

        /// A put through member `m`, retried until it succeeds; its revision.
        async fn put(&self, m: usize, key: &str, value: &str) -> i64 {
            let deadline = Instant::now() + SETTLES_WITHIN;
            loop {
                if let Some(ch) = self.channel(m).await {
                    let req = PutRequest { key: key.into(), value: value.into(), ..Default::default() };
                    if let Ok(r) = KvClient::new(ch).put(req).await {
                        return r.into_inner().header.map_or(0, |h| h.revision);
                    }
                }
                assert!(Instant::now() < deadline, "put through m{m} failed for {SETTLES_WITHIN:?}\n{}", self.logs());
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }

        /// A linearizable read of `key` through member `m`: (revision, value) or the failure.
        async fn read(&self, m: usize, key: &str, wait: Duration) -> Result<(i64, Vec<u8>), String> {
            let ch = self.channel(m).await.ok_or("no connection")?;
            let req = RangeRequest { key: key.into(), ..Default::default() };
            match tokio::time::timeout(wait, KvClient::new(ch).range(req)).await {
                Ok(Ok(r)) => {
                    let r = r.into_inner();
                    Ok((r.header.map_or(0, |h| h.revision), r.kvs.first().map(|kv| kv.value.clone()).unwrap_or_default()))
                }
                Ok(Err(status)) => Err(status.message().to_string()),
                Err(_) => Err("timed out".into()),
            }
        }
    }

    /// Isolating the leader: the other two elect a new one and take writes, the isolated one
    /// serves no linearizable read, and after the heal it catches up to the same revision.
    async fn isolated_leader_is_replaced_and_catches_up_after_heal(bin: &Path) {
        let c = Cluster::start(bin).await;
        let old = c.agreed_leader(&[0, 1, 2]).await;
        c.put(old, "k", "before").await;
        let cut_at = Instant::now();
        c.net.isolate(old);
        let rest: Vec<usize> = (0..3).filter(|&m| m != old).collect();
        let new = c.agreed_leader(&rest).await;
        assert_ne!(new, old);
        let elected = cut_at.elapsed();
        let written = c.put(rest[0], "k", "during").await;
        let refused = c.read(old, "k", READ_REFUSED_FOR).await;
        assert!(refused.is_err(), "the isolated m{old} served a linearizable read: {refused:?}");
        // Attribution on real members: the cut pairs held bytes back, the others none.
        let bytes = c.net.bytes();
        let pair = |f: usize, t: usize| bytes.iter().find(|p| p.from == Some(f) && p.to == Some(t)).copied();
        for &m in &rest {
            assert!(pair(old, m).is_some_and(|p| p.held > 0), "m{old}->m{m} held nothing: {bytes:?}");
            assert!(pair(m, old).is_some_and(|p| p.held > 0), "m{m}->m{old} held nothing: {bytes:?}");
        }
        let (a, b) = (rest[0], rest[1]);
        assert!(pair(a, b).is_some_and(|p| p.forwarded > 0 && p.held == 0), "m{a}->m{b}: {bytes:?}");
        assert!(bytes.iter().all(|p| p.from.is_some() && p.to.is_some()), "unattributed bytes: {bytes:?}");

        c.net.heal();
        let healed_at = Instant::now();
        let deadline = healed_at + SETTLES_WITHIN;
        loop {
            match c.read(old, "k", Duration::from_secs(3)).await {
                Ok((rev, value)) if rev >= written && value == b"during" => break,
                other => assert!(Instant::now() < deadline, "m{old} did not catch up: {other:?}\n{}", c.logs()),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let caught_up = healed_at.elapsed();
        let mut seen = Vec::new();
        for m in 0..3 {
            seen.push(c.status(m).await.map(|s| s.2));
        }
        assert!(seen.iter().all(|r| *r == Some(written)), "revisions after heal: {seen:?} (last write {written})");
        eprintln!(
            "{}: new leader m{new} {elected:?} after the cut; isolated m{old} refused the read ({}); caught up {:?} after the heal",
            bin.display(),
            refused.unwrap_err(),
            caught_up
        );
    }

    /// A put through whichever member takes it first, each tried in turn; its revision.
    async fn put_any(c: &Cluster, key: &str, value: &str) -> i64 {
        let deadline = Instant::now() + SETTLES_WITHIN;
        for m in (0..3).cycle() {
            if let Some(ch) = c.channel(m).await {
                let req = PutRequest { key: key.into(), value: value.into(), ..Default::default() };
                if let Ok(r) = KvClient::new(ch).put(req).await {
                    return r.into_inner().header.map_or(0, |h| h.revision);
                }
            }
            assert!(Instant::now() < deadline, "no member took a put for {SETTLES_WITHIN:?}\n{}", c.logs());
        }
        unreachable!("cycle() never ends")
    }

    /// Waits until every member answers a linearizable read of `key` with `value` at revision
    /// `written` or later, and all report the same revision.
    async fn all_agree_after_heal(c: &Cluster, key: &str, value: &str, written: i64) {
        let deadline = Instant::now() + SETTLES_WITHIN;
        loop {
            let mut seen = Vec::new();
            for m in 0..3 {
                let read = c.read(m, key, Duration::from_secs(3)).await;
                seen.push((read, c.status(m).await.map(|s| s.2)));
            }
            let agreed = seen.iter().all(|(read, rev)| {
                matches!(read, Ok((r, v)) if *r >= written && v == value.as_bytes()) && *rev == seen[0].1
            });
            if agreed {
                return;
            }
            assert!(Instant::now() < deadline, "members did not agree after the heal: {seen:?}\n{}", c.logs());
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The leader's bytes to one follower are held back for a few seconds (the follower's still
    /// reach the leader): writes still commit, and after the heal all agree.
    async fn writes_commit_while_the_leader_is_cut_one_way_from_a_follower(bin: &Path) {
        let c = Cluster::start(bin).await;
        let leader = c.agreed_leader(&[0, 1, 2]).await;
        let follower = (leader + 1) % 3;
        c.net.drop_one_way(leader, follower);
        // Long enough for the follower to miss heartbeats for two election timeouts (1s).
        tokio::time::sleep(Duration::from_secs(2)).await;
        let start = Instant::now();
        let written = put_any(&c, "k", "one-way").await;
        let committed = start.elapsed();
        let bytes = c.net.bytes();
        let lost = bytes.iter().find(|p| p.from == Some(leader) && p.to == Some(follower)).map_or(0, |p| p.held);
        let back = bytes.iter().find(|p| p.from == Some(follower) && p.to == Some(leader)).map_or(0, |p| p.held);
        assert!(lost > 0 && back == 0, "one-way m{leader}->m{follower}: {bytes:?}");
        c.net.heal();
        let healed_at = Instant::now();
        all_agree_after_heal(&c, "k", "one-way", written).await;
        eprintln!(
            "{}: one-way cut m{leader}->m{follower}: 2s into it a put committed in {committed:?}; all agreed {:?} after the heal",
            bin.display(),
            healed_at.elapsed()
        );
    }

    /// Every byte to and from the leader waits 150ms: writes still commit, and all agree.
    async fn writes_commit_while_the_leader_is_delayed(bin: &Path) {
        let c = Cluster::start(bin).await;
        let leader = c.agreed_leader(&[0, 1, 2]).await;
        let d = Duration::from_millis(150);
        c.net.delay(leader, d);
        let start = Instant::now();
        let written = c.put(leader, "k", "delayed").await;
        let committed = start.elapsed();
        c.net.heal();
        all_agree_after_heal(&c, "k", "delayed", written).await;
        eprintln!("{}: leader m{leader} delayed {d:?}: a put through it committed in {committed:?}", bin.display());
    }

    fn etcd_rs_bin() -> PathBuf {
        std::env::var_os("ETCD_RS_BIN").map(PathBuf::from).unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release/etcd-rs")
        })
    }

    /// The scenario against etcd-rs (which must exist) and against the reference etcd releases
    /// where installed (they are on the developers' and CI's machines; without them there is
    /// nothing to compare with).
    macro_rules! against_etcd_rs_and_etcd {
        ($scenario:ident) => {
            mod $scenario {
                use super::*;

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn etcd_rs() {
                    let bin = etcd_rs_bin();
                    assert!(bin.exists(), "no etcd-rs at {} (set ETCD_RS_BIN)", bin.display());
                    super::$scenario(&bin).await;
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn etcd_3_4() {
                    reference("/usr/bin/etcd", |bin| Box::pin(super::$scenario(bin))).await;
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn etcd_3_5() {
                    reference("/opt/etcd-3.5/bin/etcd", |bin| Box::pin(super::$scenario(bin))).await;
                }
            }
        };
    }

    async fn reference(bin: &str, scenario: impl for<'a> Fn(&'a Path) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + 'a>>) {
        if Path::new(bin).exists() {
            scenario(Path::new(bin)).await;
        } else {
            eprintln!("skipped: no {bin}");
        }
    }

    against_etcd_rs_and_etcd!(isolated_leader_is_replaced_and_catches_up_after_heal);
    against_etcd_rs_and_etcd!(writes_commit_while_the_leader_is_cut_one_way_from_a_follower);
    against_etcd_rs_and_etcd!(writes_commit_while_the_leader_is_delayed);
}
