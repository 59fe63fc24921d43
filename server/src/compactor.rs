//! Auto-compaction (`--auto-compaction-mode`/`--auto-compaction-retention`), run by the leader
//! only and carried out as ordinary Compaction proposals through raft.
//!
//! periodic: keep `retention` of history — every retention/10 (at most hourly) compact to the
//! newest revision observed at least `retention` ago. revision: every 5 minutes compact to
//! current revision - retention.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_proto::etcdserverpb::CompactionRequest;

use crate::config::AutoCompaction;
use crate::errors::ServerError;
use crate::etcd_server::EtcdServer;

const REVISION_MODE_INTERVAL: Duration = Duration::from_secs(300);

/// Picks the revision to compact to in periodic mode from (time, revision) samples.
pub fn periodic_target(samples: &VecDeque<(Instant, i64)>, now: Instant, retention: Duration) -> Option<i64> {
    samples.iter().rev().find(|(t, _)| now.duration_since(*t) >= retention).map(|(_, r)| *r)
}

pub async fn run(server: Arc<EtcdServer>, mode: AutoCompaction) {
    let (interval, retention) = match mode {
        AutoCompaction::Off => return,
        AutoCompaction::Periodic(r) => ((r / 10).clamp(Duration::from_secs(1), Duration::from_secs(3600)), r),
        AutoCompaction::Revision(_) => (REVISION_MODE_INTERVAL, Duration::ZERO),
    };
    let mut samples: VecDeque<(Instant, i64)> = VecDeque::new();
    let mut last_compacted = 0i64;
    let mut ticker = tokio::time::interval(interval);
    loop {
        ticker.tick().await;
        let now = Instant::now();
        let current = server.kv_revision();
        let target = match mode {
            AutoCompaction::Periodic(_) => {
                samples.push_back((now, current));
                let t = periodic_target(&samples, now, retention);
                // Samples older than the one used are no longer needed.
                while samples.len() > 1 && now.duration_since(samples[1].0) >= retention {
                    samples.pop_front();
                }
                t
            }
            AutoCompaction::Revision(keep) => Some(current - keep),
            AutoCompaction::Off => None,
        };
        let Some(target) = target.filter(|t| *t > last_compacted && *t > 0) else { continue };
        if !server.is_leader() {
            continue;
        }
        match server.compact(CompactionRequest { revision: target, physical: false }, None).await {
            Ok(_) => {
                tracing::info!(revision = target, "finished scheduled auto compaction");
                last_compacted = target;
            }
            Err(ServerError::Compacted) => last_compacted = target,
            Err(e) => tracing::warn!(revision = target, error = %e, "auto compaction failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periodic_mode_compacts_to_the_newest_revision_older_than_retention() {
        let t0 = Instant::now();
        let s: VecDeque<(Instant, i64)> =
            [(t0, 10), (t0 + Duration::from_secs(6), 20), (t0 + Duration::from_secs(12), 30)].into_iter().collect();
        let now = t0 + Duration::from_secs(12);
        assert_eq!(periodic_target(&s, now, Duration::from_secs(10)), Some(10));
        assert_eq!(periodic_target(&s, now, Duration::from_secs(5)), Some(20));
        assert_eq!(periodic_target(&s, now, Duration::from_secs(60)), None);
    }
}
