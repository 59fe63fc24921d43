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

use etcd_robustness::network::{PairBytes, PeerNetwork};
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
            .unwrap_or(PairBytes { from: Some(from), to: Some(to), forwarded: 0, dropped: 0 })
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
        assert_eq!((p.forwarded, p.dropped), (len, 0), "{a}->{b}: {:?}", f.net.bytes());
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
    // Echoes of 1's and 2's messages were dropped on the way back from 0... and 0 never got
    // them in the first place: nothing crossed.
    assert!(!f.received_by(0, "cut 1->0") && !f.received_by(0, "cut 2->0"));
    assert!(f.works(1, 2, "still 1->2").await && f.works(2, 1, "still 2->1").await);
    assert!(f.pair(0, 1).dropped > 0 && f.pair(1, 0).dropped > 0);

    // A connection opened during the cut is accepted and silent too (no refusal, no reset).
    let mut late = TcpStream::connect(f.net.proxy_addr(0)).await.unwrap();
    f.net.set_pid(1, std::process::id()); // the test process stands for member 1 now
    late.write_all(b"late").await.unwrap();
    let mut buf = [0u8; 4];
    assert!(tokio::time::timeout(SILENT_FOR, late.read(&mut buf)).await.is_err(), "late connection not silent");

    f.net.heal();
    // The same connections carry traffic again: they were kept open.
    for (a, b) in [(0, 1), (0, 2), (1, 0), (2, 0)] {
        assert!(f.works(a, b, &format!("healed {a}->{b}")).await, "{a}->{b} after heal");
    }
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
    assert!(f.works(2, 1, "healed 2->1").await);
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
    assert!(f.works(1, 0, "healed 1->0").await);
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
