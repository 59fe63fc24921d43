//! One member's peer proxy: accepts connections on a loopback port, finds which member opened
//! each one, and forwards its bytes both ways to the member's real peer port, chunk by chunk,
//! as the [`Rules`](crate::network::Rules) say.
//!
//! Invariant: every chunk is judged by the rule for its own direction, (sender, receiver), when
//! it is read and again when it is due to be written, so rule changes reach open connections at
//! once; the bytes of one direction that are written are written in the order they were read.
//!
//! At the TCP level a proxy cannot tell who dialled it, so the sender of a connection is found
//! through /proc: the accepted connection's remote address is the client socket's local
//! address; /proc/net/tcp (or tcp6) gives that socket's inode, and the member whose process
//! holds a descriptor `socket:[inode]` (/proc/PID/fd) opened it. A connection whose process is
//! not (yet) a known member is looked up again after the next `set_pid`.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::network::{CutMode, Fate, Shared, Verdict};

/// Bytes read at once; a rule applies to whole chunks.
const CHUNK: usize = 16 * 1024;
/// Chunks of one direction waiting out a delay; a full queue stops reading (backpressure).
const QUEUED_CHUNKS: usize = 256;
/// How long a connection to a member's real peer port may take before the client is dropped.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// Binds a free loopback port for `member` and serves it until `stopped`'s sender is dropped.
pub(crate) async fn spawn(
    member: usize,
    target: SocketAddr,
    shared: Arc<Shared>,
    mut stopped: watch::Receiver<()>,
) -> io::Result<SocketAddr> {
    let ip = if target.is_ipv6() { IpAddr::V6(Ipv6Addr::LOCALHOST) } else { IpAddr::V4(Ipv4Addr::LOCALHOST) };
    let listener = TcpListener::bind((ip, 0)).await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                _ = stopped.changed() => return,
            };
            let Ok((inbound, peer)) = accepted else { continue };
            let conn = Connection { target: member, source: Source::new(peer, addr), shared: shared.clone() };
            let mut stopped = stopped.clone();
            tokio::spawn(async move {
                tokio::select! {
                    _ = conn.serve(inbound, target) => {}
                    _ = stopped.changed() => {}
                }
            });
        }
    });
    Ok(addr)
}

/// Which member opened a connection, found lazily (see the module doc).
struct Source {
    /// The client socket's address (its local address on the client side).
    client: SocketAddr,
    /// The proxy's listening address (the client socket's remote address).
    proxy: SocketAddr,
    /// The member index, or `usize::MAX` while unknown.
    member: AtomicUsize,
    /// The pid generation of the last lookup; no new lookup until `set_pid` bumps it.
    looked_up: AtomicU64,
}

impl Source {
    fn new(client: SocketAddr, proxy: SocketAddr) -> Source {
        Source { client, proxy, member: AtomicUsize::new(usize::MAX), looked_up: AtomicU64::new(u64::MAX) }
    }

    fn member(&self, shared: &Shared) -> Option<usize> {
        let known = self.member.load(Ordering::Acquire);
        if known != usize::MAX {
            return Some(known);
        }
        let generation = shared.pid_generation.load(Ordering::Acquire);
        if self.looked_up.swap(generation, Ordering::AcqRel) == generation {
            return None;
        }
        let found = owner_member(self.client, self.proxy, &shared.pids())?;
        self.member.store(found, Ordering::Release);
        Some(found)
    }
}

struct Connection {
    /// The member this proxy stands in front of.
    target: usize,
    source: Source,
    shared: Arc<Shared>,
}

impl Connection {
    async fn serve(&self, inbound: TcpStream, target: SocketAddr) {
        self.source.member(&self.shared);
        let outbound = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(target)).await {
            Ok(Ok(s)) => s,
            // The member is down: the client sees its connection closed, as with no listener.
            _ => return,
        };
        let _ = inbound.set_nodelay(true);
        let _ = outbound.set_nodelay(true);
        let (in_read, in_write) = inbound.into_split();
        let (out_read, out_write) = outbound.into_split();
        let (to_target, to_target_rx) = mpsc::channel(QUEUED_CHUNKS);
        let (to_source, to_source_rx) = mpsc::channel(QUEUED_CHUNKS);
        tokio::join!(
            self.read(in_read, Direction::ToTarget, to_target),
            self.write(to_target_rx, out_write, Direction::ToTarget),
            self.read(out_read, Direction::ToSource, to_source),
            self.write(to_source_rx, in_write, Direction::ToSource),
        );
    }

    /// (sender, receiver) of the bytes going `direction`.
    fn ends(&self, direction: Direction) -> (Option<usize>, Option<usize>) {
        let source = self.source.member(&self.shared);
        match direction {
            Direction::ToTarget => (source, Some(self.target)),
            Direction::ToSource => (Some(self.target), source),
        }
    }

    /// Reads chunks and queues them with their delivery time; a cut pair's chunks are thrown
    /// away here in [`CutMode::Discard`]. A full queue stops the reading (the sender's socket
    /// buffer fills, as across a real partition).
    async fn read(&self, mut from: OwnedReadHalf, direction: Direction, queue: mpsc::Sender<(Instant, Vec<u8>)>) {
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = match from.read(&mut buf).await {
                Ok(0) | Err(_) => return, // dropping `queue` lets the writer finish and send FIN
                Ok(n) => n,
            };
            let (sender, receiver) = self.ends(direction);
            let delay = match (self.shared.verdict(sender, receiver), self.shared.cut_mode()) {
                (Verdict::Forward(delay), _) => delay,
                (Verdict::Cut, CutMode::Discard) => {
                    self.shared.counters.count(sender, receiver, Fate::Dropped, n);
                    continue;
                }
                (Verdict::Cut, CutMode::Hold) => {
                    self.shared.counters.count(sender, receiver, Fate::Held, n);
                    Duration::ZERO
                }
            };
            if queue.send((Instant::now() + delay, buf[..n].to_vec())).await.is_err() {
                return;
            }
        }
    }

    /// Writes queued chunks in order at their delivery time; while the pair is cut, holds
    /// them back ([`CutMode::Hold`]) or throws them away ([`CutMode::Discard`]).
    async fn write(&self, mut queue: mpsc::Receiver<(Instant, Vec<u8>)>, mut to: OwnedWriteHalf, direction: Direction) {
        let mut rules_changed = self.shared.rules_changed.subscribe();
        while let Some((at, chunk)) = queue.recv().await {
            tokio::time::sleep_until(at).await;
            let (fate, sender, receiver) = loop {
                // Marked seen before the rules are read, so no change is missed while held.
                rules_changed.borrow_and_update();
                let (sender, receiver) = self.ends(direction);
                match (self.shared.verdict(sender, receiver), self.shared.cut_mode()) {
                    (Verdict::Forward(_), _) => break (Fate::Forwarded, sender, receiver),
                    (Verdict::Cut, CutMode::Discard) => break (Fate::Dropped, sender, receiver),
                    (Verdict::Cut, CutMode::Hold) => {
                        if rules_changed.changed().await.is_err() {
                            return;
                        }
                    }
                }
            };
            self.shared.counters.count(sender, receiver, fate, chunk.len());
            if fate == Fate::Dropped {
                continue;
            }
            if to.write_all(&chunk).await.is_err() {
                return;
            }
        }
        let _ = to.shutdown().await;
    }
}

#[derive(Clone, Copy)]
enum Direction {
    /// From the connecting member to the member behind this proxy.
    ToTarget,
    /// Back from the member behind this proxy to the connecting member.
    ToSource,
}

/// The member (index into `pids`) whose process holds the client socket `client` connected to
/// `proxy`, if any.
fn owner_member(client: SocketAddr, proxy: SocketAddr, pids: &[Option<u32>]) -> Option<usize> {
    let inode = ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|table| std::fs::read_to_string(table).ok())
        .find_map(|table| socket_inode(&table, client, proxy))?;
    let link = format!("socket:[{inode}]");
    pids.iter().position(|pid| pid.is_some_and(|pid| holds_link(pid, &link)))
}

/// Whether process `pid` has a file descriptor whose link reads `link`.
fn holds_link(pid: u32, link: &str) -> bool {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else { return false };
    fds.filter_map(Result::ok)
        .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|target| target.as_os_str() == link))
}

/// The inode of the socket with local address `local` and remote address `remote` in a
/// /proc/net/tcp or tcp6 table (`sl local rem st queues tr retrnsmt uid timeout inode ...`).
fn socket_inode(table: &str, local: SocketAddr, remote: SocketAddr) -> Option<u64> {
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (l, r, inode) = (fields.get(1)?, fields.get(2)?, fields.get(9)?);
        let same = |hex: &str, addr: SocketAddr| parse_proc_addr(hex).is_some_and(|a| canonical(a) == canonical(addr));
        let inode: u64 = inode.parse().ok()?;
        (inode != 0 && same(l, local) && same(r, remote)).then_some(inode)
    })
}

/// An IPv4-mapped IPv6 address as the IPv4 address it stands for.
fn canonical(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), addr.port()),
            None => addr,
        },
        IpAddr::V4(_) => addr,
    }
}

/// "0100007F:1F90" (IPv4) or 32 hex digits ":port" (IPv6): the kernel prints each 32-bit word
/// of the address as a number in host byte order, the port as a plain number.
fn parse_proc_addr(hex: &str) -> Option<SocketAddr> {
    let (ip, port) = hex.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let word = |i: usize| ip.get(i * 8..i * 8 + 8).and_then(|w| u32::from_str_radix(w, 16).ok()).map(u32::to_ne_bytes);
    let ip = match ip.len() {
        8 => IpAddr::V4(Ipv4Addr::from(word(0)?)),
        32 => {
            let mut bytes = [0u8; 16];
            for i in 0..4 {
                bytes[i * 4..i * 4 + 4].copy_from_slice(&word(i)?);
            }
            IpAddr::V6(Ipv6Addr::from(bytes))
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_addresses_decode_in_host_byte_order() {
        // Written by the kernel of a little-endian machine (x86_64, aarch64).
        if cfg!(target_endian = "little") {
            assert_eq!(parse_proc_addr("0100007F:1F90"), Some("127.0.0.1:8080".parse().unwrap()));
            assert_eq!(parse_proc_addr("00000000000000000000000001000000:0050"), Some("[::1]:80".parse().unwrap()));
            assert_eq!(
                parse_proc_addr("0000000000000000FFFF00000100007F:0050").map(canonical),
                Some("127.0.0.1:80".parse().unwrap())
            );
        }
        assert_eq!(parse_proc_addr("zz:1"), None);
        assert_eq!(parse_proc_addr("0100007F"), None);
    }

    #[test]
    fn socket_inode_matches_both_addresses() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   \
            0: 0100007F:1F90 0100007F:0050 01 00000000:00000000 00:00000000 00000000     0        0 4242 1 0 20 4 30 10 -1\n   \
            1: 0100007F:0050 0100007F:1F90 01 00000000:00000000 00:00000000 00000000     0        0 4343 1 0 20 4 30 10 -1\n";
        if cfg!(target_endian = "little") {
            let (a, b) = ("127.0.0.1:8080".parse().unwrap(), "127.0.0.1:80".parse().unwrap());
            assert_eq!(socket_inode(table, a, b), Some(4242));
            assert_eq!(socket_inode(table, b, a), Some(4343));
            assert_eq!(socket_inode(table, a, a), None);
        }
    }

    #[tokio::test]
    async fn the_owner_of_a_client_socket_is_found_among_member_pids() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let proxy = listener.local_addr().unwrap();
        let client = TcpStream::connect(proxy).await.unwrap();
        let (_accepted, peer) = listener.accept().await.unwrap();
        assert_eq!(peer, client.local_addr().unwrap());
        let me = std::process::id();
        let mut other = std::process::Command::new("sleep").arg("5").spawn().unwrap();
        assert_eq!(owner_member(peer, proxy, &[Some(other.id()), None, Some(me)]), Some(2));
        assert_eq!(owner_member(peer, proxy, &[Some(other.id())]), None);
        let _ = other.kill();
        let _ = other.wait();
    }
}
