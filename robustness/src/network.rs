//! Network faults between the members of a cluster under test (issue 13): partitions, one-way
//! loss and delays, applied by one TCP proxy in front of every member's peer port
//! ([`crate::proxy`]).
//!
//! Invariant: a rule is per ordered (sender, receiver) pair of members and is looked up for
//! every chunk of bytes a proxy handles, on whatever connection carries it: a connection opened
//! by B to A's proxy carries B→A bytes on its way in and A→B bytes on its way out (etcd's
//! rafthttp streams carry the dialled member's messages back to the dialler). So a rule takes
//! effect at once on connections that already exist, and a connection's direction never matters.
//!
//! A cut pair's connections stay open and silent (no RST, no FIN), as in etcd's robustness
//! tests, which blackhole a member's proxy. What happens to the bytes is [`CutMode`]:
//!
//! - [`CutMode::Hold`] (default): they wait in the proxy, and behind them the sender's socket
//!   buffer, and flow in order after the heal: what TCP does across a partition shorter than
//!   its retransmission timeout. A member must detect the silence by its own timeouts.
//! - [`CutMode::Discard`]: they are read and thrown away, as etcd's `pkg/proxy` does
//!   (`BlackholeTx/Rx`, `ModifyTx/Rx`). No real network does this inside one TCP connection:
//!   after the heal a stream resumes in the middle of a message. With it, a 3-member etcd
//!   3.5.1 whose leader lost its bytes to one follower for a few seconds kept that follower
//!   behind for good after the heal (no error logged; its stream readers stayed on the garbled
//!   connections), so this mode finds proxy artefacts as well as bugs; it is kept to
//!   reproduce etcd's own runs.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio::sync::watch;

use crate::proxy;

/// What happens to a chunk of bytes sent by one member to another.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Deliver after this delay (zero: at once).
    Forward(Duration),
    /// The pair is cut: hold the bytes back, or throw them away (see [`CutMode`]).
    Cut,
}

/// The fault rules in force: which ordered pairs are cut, and each member's added latency.
/// An endpoint that is not a known member (`None`) is never cut; a member's delay applies to
/// all its traffic whoever the other end is.
#[derive(Clone, Debug)]
pub struct Rules {
    members: usize,
    /// `cut[from * members + to]`: bytes from `from` never reach `to`.
    cut: Vec<bool>,
    delay: Vec<Duration>,
}

impl Rules {
    pub fn new(members: usize) -> Rules {
        Rules { members, cut: vec![false; members * members], delay: vec![Duration::ZERO; members] }
    }

    pub fn verdict(&self, from: Option<usize>, to: Option<usize>) -> Verdict {
        if let (Some(f), Some(t)) = (from, to) {
            if f < self.members && t < self.members && self.cut[f * self.members + t] {
                return Verdict::Cut;
            }
        }
        let latency = |m: Option<usize>| m.and_then(|m| self.delay.get(m).copied()).unwrap_or_default();
        Verdict::Forward(latency(from) + latency(to))
    }

    fn cut_one_way(&mut self, from: usize, to: usize) {
        if from < self.members && to < self.members && from != to {
            self.cut[from * self.members + to] = true;
        }
    }

    /// No bytes between `member` and any other member, either way.
    pub fn isolate(&mut self, member: usize) {
        for other in 0..self.members {
            self.cut_one_way(member, other);
            self.cut_one_way(other, member);
        }
    }

    /// Members in different groups are cut from each other both ways; a member in no group is
    /// a group of its own (cut from everyone).
    pub fn partition(&mut self, groups: &[Vec<usize>]) {
        let group_of = |m: usize| groups.iter().position(|g| g.contains(&m));
        for a in 0..self.members {
            for b in 0..self.members {
                match (group_of(a), group_of(b)) {
                    (Some(ga), Some(gb)) if ga == gb => {}
                    _ => self.cut_one_way(a, b),
                }
            }
        }
    }

    /// `from`'s bytes never reach `to`; `to`'s still reach `from`.
    pub fn drop_one_way(&mut self, from: usize, to: usize) {
        self.cut_one_way(from, to);
    }

    /// Traffic to and from `member` waits `d` more (zero removes the delay).
    pub fn delay(&mut self, member: usize, d: Duration) {
        if let Some(slot) = self.delay.get_mut(member) {
            *slot = d;
        }
    }

    pub fn heal(&mut self) {
        *self = Rules::new(self.members);
    }
}

/// What happens to the bytes of a cut pair (see the module doc).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CutMode {
    #[default]
    Hold,
    Discard,
}

/// Bytes counted for one ordered pair; `None` is an endpoint that is not a known member.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PairBytes {
    pub from: Option<usize>,
    pub to: Option<usize>,
    /// Delivered to the receiver (held bytes too, once the cut is healed).
    pub forwarded: u64,
    /// Thrown away while the pair was cut ([`CutMode::Discard`]).
    pub dropped: u64,
    /// Read while the pair was cut and kept for after the heal ([`CutMode::Hold`]); bytes the
    /// sender could not even send meanwhile are not counted.
    pub held: u64,
}

/// What the proxy did with a chunk, for the counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Fate {
    Forwarded,
    Dropped,
    Held,
}

/// Byte counters per ordered pair; index `members` stands for "not a known member".
pub(crate) struct Counters {
    members: usize,
    forwarded: Vec<AtomicU64>,
    dropped: Vec<AtomicU64>,
    held: Vec<AtomicU64>,
}

impl Counters {
    fn new(members: usize) -> Counters {
        let cells = (members + 1) * (members + 1);
        Counters {
            members,
            forwarded: (0..cells).map(|_| AtomicU64::new(0)).collect(),
            dropped: (0..cells).map(|_| AtomicU64::new(0)).collect(),
            held: (0..cells).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    fn cell(&self, from: Option<usize>, to: Option<usize>) -> usize {
        let index = |m: Option<usize>| m.filter(|&m| m < self.members).unwrap_or(self.members);
        index(from) * (self.members + 1) + index(to)
    }

    pub(crate) fn count(&self, from: Option<usize>, to: Option<usize>, fate: Fate, bytes: usize) {
        let cells = match fate {
            Fate::Forwarded => &self.forwarded,
            Fate::Dropped => &self.dropped,
            Fate::Held => &self.held,
        };
        cells[self.cell(from, to)].fetch_add(bytes as u64, Ordering::Relaxed);
    }

    fn snapshot(&self) -> Vec<PairBytes> {
        let endpoint = |i: usize| (i < self.members).then_some(i);
        let mut pairs = Vec::new();
        for f in 0..=self.members {
            for t in 0..=self.members {
                let cell = f * (self.members + 1) + t;
                let load = |cells: &[AtomicU64]| cells[cell].load(Ordering::Relaxed);
                let (forwarded, dropped, held) = (load(&self.forwarded), load(&self.dropped), load(&self.held));
                if forwarded + dropped + held > 0 {
                    pairs.push(PairBytes { from: endpoint(f), to: endpoint(t), forwarded, dropped, held });
                }
            }
        }
        pairs
    }
}

/// State shared by the proxies and the [`PeerNetwork`] handle.
pub(crate) struct Shared {
    pub(crate) rules: RwLock<Rules>,
    /// The process id of each member slot, as last set (members restart with new ids).
    pids: Mutex<Vec<Option<u32>>>,
    /// Bumped on every `set_pid`, so a connection whose sender was not found looks again.
    pub(crate) pid_generation: AtomicU64,
    pub(crate) counters: Counters,
    discard: AtomicBool,
    /// Told of every rule change, so held bytes go as soon as their pair is healed.
    pub(crate) rules_changed: watch::Sender<()>,
}

impl Shared {
    pub(crate) fn pids(&self) -> Vec<Option<u32>> {
        self.pids.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub(crate) fn verdict(&self, from: Option<usize>, to: Option<usize>) -> Verdict {
        self.rules.read().unwrap_or_else(|e| e.into_inner()).verdict(from, to)
    }

    pub(crate) fn cut_mode(&self) -> CutMode {
        if self.discard.load(Ordering::Acquire) {
            CutMode::Discard
        } else {
            CutMode::Hold
        }
    }
}

/// One proxy per member slot. Members listen on their own peer port and advertise
/// [`PeerNetwork::proxy_addr`] as their peer URL, so every byte between two members passes
/// through the receiver's or the sender's proxy and obeys the [`Rules`].
pub struct PeerNetwork {
    shared: Arc<Shared>,
    addrs: Vec<SocketAddr>,
    /// Dropped with the network: every proxy task and connection ends.
    _shutdown: watch::Sender<()>,
}

impl PeerNetwork {
    /// Starts a proxy on a free loopback port for each of `targets` (the members' real peer
    /// addresses, in member order).
    pub async fn start(targets: &[SocketAddr]) -> io::Result<PeerNetwork> {
        let shared = Arc::new(Shared {
            rules: RwLock::new(Rules::new(targets.len())),
            pids: Mutex::new(vec![None; targets.len()]),
            pid_generation: AtomicU64::new(0),
            counters: Counters::new(targets.len()),
            discard: AtomicBool::new(false),
            rules_changed: watch::channel(()).0,
        });
        let (shutdown, stopped) = watch::channel(());
        let mut addrs = Vec::new();
        for (member, &target) in targets.iter().enumerate() {
            addrs.push(proxy::spawn(member, target, shared.clone(), stopped.clone()).await?);
        }
        Ok(PeerNetwork { shared, addrs, _shutdown: shutdown })
    }

    /// Where the other members reach `member` (its advertised peer URL's address).
    pub fn proxy_addr(&self, member: usize) -> SocketAddr {
        self.addrs[member]
    }

    /// The process that is `member` now; call after every (re)start. Connections are
    /// attributed to a member by the process owning their client socket.
    pub fn set_pid(&self, member: usize, pid: u32) {
        let mut pids = self.shared.pids.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(slot) = pids.get_mut(member) {
            *slot = Some(pid);
        }
        self.shared.pid_generation.fetch_add(1, Ordering::AcqRel);
    }

    fn change(&self, f: impl FnOnce(&mut Rules)) {
        f(&mut self.shared.rules.write().unwrap_or_else(|e| e.into_inner()));
        self.shared.rules_changed.send_replace(());
    }

    /// What cut pairs do with their bytes from now on (default [`CutMode::Hold`]).
    pub fn set_cut_mode(&self, mode: CutMode) {
        self.shared.discard.store(mode == CutMode::Discard, Ordering::Release);
        self.shared.rules_changed.send_replace(());
    }

    /// No traffic between `member` and anyone, both ways.
    pub fn isolate(&self, member: usize) {
        self.change(|r| r.isolate(member))
    }

    /// Members in different groups cannot talk, e.g. `[[0], [1, 2]]`.
    pub fn partition(&self, groups: &[Vec<usize>]) {
        self.change(|r| r.partition(groups))
    }

    /// `from`'s bytes never reach `to`; `to`'s still reach `from`.
    pub fn drop_one_way(&self, from: usize, to: usize) {
        self.change(|r| r.drop_one_way(from, to))
    }

    /// Traffic to and from `member` is delayed by `d` (zero removes the delay).
    pub fn delay(&self, member: usize, d: Duration) {
        self.change(|r| r.delay(member, d))
    }

    /// Every rule removed: all pairs connected, no delays.
    pub fn heal(&self) {
        self.change(Rules::heal)
    }

    /// Forwarded, dropped and held bytes per ordered pair that carried any, for the run summary.
    pub fn bytes(&self) -> Vec<PairBytes> {
        self.shared.counters.snapshot()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn isolate_cuts_both_ways_between_the_member_and_every_other() {
        let mut r = Rules::new(3);
        r.isolate(1);
        for other in [0, 2] {
            assert_eq!(r.verdict(Some(1), Some(other)), Verdict::Cut);
            assert_eq!(r.verdict(Some(other), Some(1)), Verdict::Cut);
        }
        assert_eq!(r.verdict(Some(0), Some(2)), Verdict::Forward(Duration::ZERO));
        assert_eq!(r.verdict(Some(2), Some(0)), Verdict::Forward(Duration::ZERO));
    }

    #[test]
    fn partition_cuts_between_groups_and_alone_the_unlisted() {
        let mut r = Rules::new(4);
        r.partition(&[vec![0], vec![1, 2]]);
        assert_eq!(r.verdict(Some(1), Some(2)), Verdict::Forward(Duration::ZERO));
        assert_eq!(r.verdict(Some(0), Some(1)), Verdict::Cut);
        assert_eq!(r.verdict(Some(2), Some(0)), Verdict::Cut);
        // Member 3 is in no group: cut from everyone.
        for other in 0..3 {
            assert_eq!(r.verdict(Some(3), Some(other)), Verdict::Cut);
            assert_eq!(r.verdict(Some(other), Some(3)), Verdict::Cut);
        }
    }

    #[test]
    fn drop_one_way_cuts_only_the_named_direction() {
        let mut r = Rules::new(2);
        r.drop_one_way(0, 1);
        assert_eq!(r.verdict(Some(0), Some(1)), Verdict::Cut);
        assert_eq!(r.verdict(Some(1), Some(0)), Verdict::Forward(Duration::ZERO));
    }

    #[test]
    fn delays_add_up_over_both_ends_and_apply_to_unknown_ends() {
        let mut r = Rules::new(3);
        r.delay(0, 10 * MS);
        r.delay(1, 5 * MS);
        assert_eq!(r.verdict(Some(0), Some(1)), Verdict::Forward(15 * MS));
        assert_eq!(r.verdict(Some(2), Some(0)), Verdict::Forward(10 * MS));
        assert_eq!(r.verdict(None, Some(1)), Verdict::Forward(5 * MS));
        assert_eq!(r.verdict(Some(2), None), Verdict::Forward(Duration::ZERO));
    }

    #[test]
    fn unknown_endpoints_and_out_of_range_members_are_never_cut() {
        let mut r = Rules::new(2);
        r.isolate(0);
        r.isolate(7);
        r.drop_one_way(0, 9);
        assert_eq!(r.verdict(None, Some(0)), Verdict::Forward(Duration::ZERO));
        assert_eq!(r.verdict(Some(0), None), Verdict::Forward(Duration::ZERO));
        assert_eq!(r.verdict(Some(9), Some(0)), Verdict::Forward(Duration::ZERO));
    }

    #[test]
    fn heal_removes_cuts_and_delays() {
        let mut r = Rules::new(3);
        r.partition(&[vec![0, 1], vec![2]]);
        r.delay(1, 3 * MS);
        r.heal();
        for f in 0..3 {
            for t in 0..3 {
                assert_eq!(r.verdict(Some(f), Some(t)), Verdict::Forward(Duration::ZERO));
            }
        }
    }

    #[test]
    fn counters_report_each_pair_that_carried_bytes() {
        let c = Counters::new(2);
        c.count(Some(0), Some(1), Fate::Forwarded, 10);
        c.count(Some(0), Some(1), Fate::Dropped, 4);
        c.count(Some(0), Some(1), Fate::Held, 2);
        c.count(None, Some(1), Fate::Forwarded, 3);
        assert_eq!(
            c.snapshot(),
            vec![
                PairBytes { from: Some(0), to: Some(1), forwarded: 10, dropped: 4, held: 2 },
                PairBytes { from: None, to: Some(1), forwarded: 3, ..Default::default() },
            ]
        );
    }
}
