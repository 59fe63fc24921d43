//! Round-trip probing of a peer, for `etcd_network_peer_round_trip_time_seconds`.
//!
//! As etcd's rafthttp prober: every [`PROBE_INTERVAL`] one `GET /raft/probing` goes to the
//! peer on a connection of its own (not a raft stream, so a long queue of appends does not
//! count as network delay) and its round trip feeds a smoothed RTT (weight 1/8 for the newest,
//! as etcd's prober); the smoothed RTT is recorded every [`HEALTHY_REPORT`] while probes
//! succeed and every [`UNHEALTHY_REPORT`] while they fail.

use std::future::Future;
use std::time::{Duration, Instant};

use crate::metrics::PeerMetrics;

/// etcd: ConnReadTimeout (5 s) - 1 s.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(4);
pub const HEALTHY_REPORT: Duration = Duration::from_secs(30);
pub const UNHEALTHY_REPORT: Duration = Duration::from_secs(5);
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// Smoothed round-trip time, as etcd's prober keeps it.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct Srtt {
    pub srtt: Duration,
    pub healthy: bool,
}

impl Srtt {
    pub fn record(&mut self, rtt: Duration) {
        self.srtt = self.srtt.mul_f64(0.875) + rtt.mul_f64(0.125);
        self.healthy = true;
    }

    pub fn fail(&mut self) {
        self.healthy = false;
    }
}

/// Probes with `probe_once` (true: answered) until dropped, recording the smoothed RTT.
pub async fn run<F, Fut>(mut probe_once: F, metrics: std::sync::Arc<PeerMetrics>)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let mut status = Srtt::default();
    let mut next_report = Instant::now() + UNHEALTHY_REPORT;
    loop {
        tokio::time::sleep(PROBE_INTERVAL.min(next_report.saturating_duration_since(Instant::now()))).await;
        let now = Instant::now();
        if now >= next_report {
            metrics.observe_rtt(status.srtt);
            next_report = now + if status.healthy { HEALTHY_REPORT } else { UNHEALTHY_REPORT };
            continue;
        }
        let started = Instant::now();
        match tokio::time::timeout(PROBE_TIMEOUT, probe_once()).await {
            Ok(true) => status.record(started.elapsed()),
            _ => status.fail(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn srtt_moves_an_eighth_of_the_way_to_each_sample() {
        let mut s = Srtt::default();
        s.record(Duration::from_millis(80));
        assert_eq!(s.srtt, Duration::from_millis(10));
        s.record(Duration::from_millis(10));
        assert_eq!(s.srtt, Duration::from_micros(10_000));
        assert!(s.healthy);
        s.fail();
        assert!(!s.healthy);
    }
}
