//! Faults injected during traffic, chosen and timed by a seeded rng, each followed by recovery.
//!
//! Invariant: after [`Injector::inject`] returns Ok, every member the fault took down is running
//! again (or replaced) and the cluster has a leader, so faults do not pile up: each one starts
//! from a healthy cluster. An Err means the cluster did not recover (a member that cannot
//! restart, no leader): the run fails with it.

use crate::client::{channel, EtcdClient};
use crate::cluster::Cluster;
use crate::history::Request;
use crate::recorder::Recorder;
use crate::traffic::{kv, stop_signal, ClientContext};
use etcd_proto::etcdserverpb::kv_client::KvClient;
use etcd_proto::etcdserverpb::maintenance_client::MaintenanceClient;
use etcd_proto::etcdserverpb::{CompactionRequest, DefragmentRequest, StatusRequest};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Mutex;

const RECOVERY_TIMEOUT: Duration = Duration::from_secs(30);
/// Clients writing concurrently while a member falls behind (see `Fault::Snapshot`).
const BLAST_CLIENTS: u32 = 8;
/// Client ids of the fault injector's own writes (beyond any traffic client).
const BLAST_CLIENT_BASE: u32 = 100_000;
/// Client ids of the reads on every member after a partition heals.
const READ_CLIENT_BASE: u32 = 200_000;
/// Entries a member keeps after a raft log compaction for slow followers (etcd's constant).
const SNAPSHOT_CATCHUP_ENTRIES: u64 = 5000;

/// A kind of fault, as named on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// SIGKILL of the leader, a follower, a quorum or every member, then restart.
    Kill,
    /// SIGTERM of the leader or a follower, then restart.
    Term,
    /// SIGSTOP of a member for 1-3 s, then SIGCONT.
    Stop,
    /// A graceful restart of a random member.
    Restart,
    /// Remove a member, wipe it, add it back as a learner, promote it.
    Replace,
    /// Defragment a random member's backend.
    Defrag,
    /// Compact the store at a recent revision the run's watch has already passed.
    Compact,
    /// A follower down while more entries than the leader keeps are written: it needs a snapshot.
    Snapshot,
    /// The leader isolated from its peers for 2-4 s, then healed; then a linearizable get of
    /// every KV key on every member (none may return a value the majority overwrote).
    Partition,
    /// One random member cut off from the others (a 1|n-1 split) for 2-4 s.
    Split,
    /// The leader's messages to one follower lost for 2-4 s (the follower's still arrive).
    OneWay,
    /// A random member's peer traffic delayed 50-300 ms each way for 3 s.
    Delay,
}

pub const ALL_FAULTS: &[Fault] = &[
    Fault::Kill,
    Fault::Term,
    Fault::Stop,
    Fault::Restart,
    Fault::Replace,
    Fault::Defrag,
    Fault::Compact,
    Fault::Snapshot,
    Fault::Partition,
    Fault::Split,
    Fault::OneWay,
    Fault::Delay,
];

impl Fault {
    pub fn name(self) -> &'static str {
        match self {
            Fault::Kill => "kill",
            Fault::Term => "term",
            Fault::Stop => "stop",
            Fault::Restart => "restart",
            Fault::Replace => "replace",
            Fault::Defrag => "defrag",
            Fault::Compact => "compact",
            Fault::Snapshot => "snapshot",
            Fault::Partition => "partition",
            Fault::Split => "split",
            Fault::OneWay => "oneway",
            Fault::Delay => "delay",
        }
    }

    pub fn parse_list(text: &str) -> Result<Vec<Fault>, String> {
        if text == "all" {
            return Ok(ALL_FAULTS.to_vec());
        }
        if text.is_empty() || text == "none" {
            return Ok(Vec::new());
        }
        text.split(',')
            .map(|name| {
                ALL_FAULTS
                    .iter()
                    .copied()
                    .find(|f| f.name() == name)
                    .ok_or_else(|| {
                        let known: Vec<&str> = ALL_FAULTS.iter().map(|f| f.name()).collect();
                        format!("unknown fault {name:?} (known: {})", known.join(","))
                    })
            })
            .collect()
    }
}

pub struct Injector {
    pub cluster: Arc<Mutex<Cluster>>,
    pub recorder: Arc<Recorder>,
    pub rng: fastrand::Rng,
    pub snapshot_count: u64,
}

impl Injector {
    /// Injects `fault` and recovers from it; the description says what was done.
    pub async fn inject(&mut self, fault: Fault) -> Result<String, String> {
        let mut cluster = self.cluster.lock().await;
        let leader = cluster.wait_leader(RECOVERY_TIMEOUT).await?;
        let n = cluster.len();
        let follower = (n > 1).then(|| (leader + 1 + self.rng.usize(0..n - 1)) % n);
        let any = self.rng.usize(0..n);
        let done = match fault {
            Fault::Kill => {
                let (what, victims) = match self.rng.u32(0..4) {
                    0 => ("leader", vec![leader]),
                    1 if follower.is_some() => ("follower", follower.into_iter().collect()),
                    2 => ("quorum", quorum_with(leader, n, &mut self.rng)),
                    _ => ("all members", (0..n).collect()),
                };
                stop_and_restart(&mut cluster, &victims, libc::SIGKILL).await?;
                format!("SIGKILL {what} {victims:?}, restarted")
            }
            Fault::Term => {
                let victim = if self.rng.bool() {
                    follower.unwrap_or(leader)
                } else {
                    leader
                };
                stop_and_restart(&mut cluster, &[victim], libc::SIGTERM).await?;
                format!("SIGTERM member {victim} (leader {leader}), restarted")
            }
            Fault::Restart => {
                stop_and_restart(&mut cluster, &[any], libc::SIGTERM).await?;
                format!("restarted member {any}")
            }
            Fault::Stop => {
                let pause = Duration::from_millis(self.rng.u64(1000..3000));
                cluster.pause(any);
                tokio::time::sleep(pause).await;
                cluster.resume(any);
                format!("SIGSTOP member {any} (leader {leader}) for {pause:?}")
            }
            Fault::Replace if n < 3 => "replace skipped (fewer than 3 members)".to_string(),
            Fault::Replace => {
                let victim = follower.unwrap_or(any);
                cluster.replace(victim, RECOVERY_TIMEOUT).await?;
                format!("replaced member {victim} (removed, re-added as learner, promoted)")
            }
            Fault::Defrag => {
                let url = cluster.members[any].client_url();
                let ch = channel(&url, Some(RECOVERY_TIMEOUT))?;
                MaintenanceClient::new(ch)
                    .defragment(DefragmentRequest {})
                    .await
                    .map_err(|e| format!("defragment member {any}: {}", e.message()))?;
                format!("defragmented member {any}")
            }
            Fault::Compact => {
                let physical = self.rng.bool();
                self.compact(&cluster, leader, physical).await?
            }
            Fault::Snapshot => match follower {
                None => "snapshot skipped (1 member)".to_string(),
                Some(f) => {
                    cluster.stop(f, libc::SIGKILL).await?;
                    let writes = self.snapshot_count + SNAPSHOT_CATCHUP_ENTRIES + 500;
                    let urls = Arc::new(cluster.client_urls());
                    let written = self.blast(urls, leader, writes).await;
                    cluster.restart(f).await?;
                    format!("member {f} down while {written} writes went in, restarted (needs a snapshot)")
                }
            },
            Fault::Partition | Fault::Split | Fault::OneWay | Fault::Delay => {
                let network = cluster.network.as_ref().ok_or("no peer proxies")?;
                let cut = Duration::from_millis(self.rng.u64(2000..4000));
                let what = match (fault, follower) {
                    (_, None) => "skipped (1 member)".to_string(),
                    (Fault::Partition, _) => {
                        network.isolate(leader);
                        format!("isolated leader {leader}")
                    }
                    (Fault::Split, _) => {
                        network.isolate(any);
                        format!("isolated member {any} (leader {leader})")
                    }
                    (Fault::OneWay, Some(f)) => {
                        network.drop_one_way(leader, f);
                        format!("lost leader {leader} -> follower {f}")
                    }
                    (_, _) => {
                        let d = Duration::from_millis(self.rng.u64(50..300));
                        network.delay(any, d);
                        format!("delayed member {any} by {d:?}")
                    }
                };
                tokio::time::sleep(cut).await;
                network.heal();
                if fault == Fault::Partition && follower.is_some() {
                    cluster.wait_leader(RECOVERY_TIMEOUT).await?;
                    let urls = Arc::new(cluster.client_urls());
                    let reads = self.read_everywhere(urls).await;
                    format!("{what} for {cut:?}, healed, {reads} reads on every member")
                } else {
                    format!("{what} for {cut:?}, healed")
                }
            }
        };
        cluster.wait_leader(RECOVERY_TIMEOUT).await?;
        Ok(done)
    }

    /// Compacts at a revision below both the store's and the run watch's position, so the watch
    /// can always resume where it stopped.
    async fn compact(
        &self,
        cluster: &Cluster,
        leader: usize,
        physical: bool,
    ) -> Result<String, String> {
        let url = cluster.members[leader].client_url();
        let ch = channel(&url, Some(RECOVERY_TIMEOUT))?;
        let status = MaintenanceClient::new(ch.clone())
            .status(StatusRequest {})
            .await
            .map_err(|e| format!("status: {}", e.message()))?
            .into_inner();
        let current = status.header.map_or(0, |h| h.revision);
        let revision = (current - 10).min(self.recorder.safe_compact_revision());
        if revision < 2 {
            return Ok(format!("compaction skipped (revision {current})"));
        }
        let result = KvClient::new(ch)
            .compact(CompactionRequest { revision, physical })
            .await;
        Ok(match result {
            Ok(_) => format!("compacted at revision {revision}"),
            Err(e) => format!("compaction at {revision} refused: {}", e.message()),
        })
    }

    /// A context for the injector's own recorded requests, as client `id`, starting at member
    /// `first`.
    fn context(&self, urls: &Arc<Vec<String>>, id: u32, first: usize) -> Option<ClientContext> {
        Some(ClientContext {
            id,
            client: EtcdClient::new(urls.clone(), first).ok()?,
            recorder: self.recorder.clone(),
            rng: fastrand::Rng::with_seed(id as u64),
            stop: stop_signal().1,
            pace: Duration::ZERO,
        })
    }

    /// A recorded linearizable get of every KV key on every member; returns how many answered.
    async fn read_everywhere(&self, urls: Arc<Vec<String>>) -> usize {
        let mut answered = 0;
        for member in 0..urls.len() {
            let Some(mut ctx) = self.context(&urls, READ_CLIENT_BASE + member as u32, member)
            else {
                continue;
            };
            for key in kv::KvTraffic::default().key_names() {
                let request = Request::Get { key };
                answered += usize::from(kv::call(&mut ctx, request).await.is_ok());
            }
        }
        answered
    }

    /// `count` recorded puts by `BLAST_CLIENTS` concurrent clients; returns how many answered.
    async fn blast(&self, urls: Arc<Vec<String>>, leader: usize, count: u64) -> u64 {
        let per_client = count / BLAST_CLIENTS as u64 + 1;
        let tasks: Vec<_> = (0..BLAST_CLIENTS)
            .filter_map(|c| {
                let mut ctx = self.context(&urls, BLAST_CLIENT_BASE + c, leader)?;
                Some(tokio::spawn(async move {
                    let mut ok = 0u64;
                    for _ in 0..per_client {
                        let request = Request::Put {
                            key: format!("snap/c{c}"),
                            value: ctx.recorder.unique_value(ctx.id),
                        };
                        ok += u64::from(kv::call(&mut ctx, request).await.is_ok());
                    }
                    ok
                }))
            })
            .collect();
        let mut ok = 0;
        for t in tasks {
            ok += t.await.unwrap_or(0);
        }
        ok
    }
}

/// A majority of `n` members that includes the leader.
fn quorum_with(leader: usize, n: usize, rng: &mut fastrand::Rng) -> Vec<usize> {
    let mut others: Vec<usize> = (0..n).filter(|&i| i != leader).collect();
    rng.shuffle(&mut others);
    let mut q = vec![leader];
    q.extend(others.into_iter().take(n / 2));
    q
}

async fn stop_and_restart(
    cluster: &mut Cluster,
    victims: &[usize],
    sig: libc::c_int,
) -> Result<(), String> {
    for &v in victims {
        cluster.stop(v, sig).await?;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    cluster.restart_all(victims).await
}
