//! HashKV agreement: after the traffic, every member's store hashes the same at one revision.
//!
//! Invariant: the check passes only when every member answered HashKV at `revision` with the
//! same compact revision and the same hash; a member that lags is retried until the deadline
//! (a future revision is refused until it applied that far), then its missing answer fails the
//! check like a different hash would.

use crate::client::channel;
use etcd_proto::etcdserverpb::maintenance_client::MaintenanceClient;
use etcd_proto::etcdserverpb::HashKvRequest;
use std::time::{Duration, Instant};

/// One member's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberHash {
    pub url: String,
    pub hash: u32,
    pub compact_revision: i64,
}

async fn hash_at(url: &str, revision: i64) -> Result<MemberHash, String> {
    let ch = channel(url, Some(Duration::from_secs(10)))?;
    let r = MaintenanceClient::new(ch)
        .hash_kv(HashKvRequest { revision })
        .await
        .map_err(|e| format!("{url}: {}", e.message()))?
        .into_inner();
    Ok(MemberHash {
        url: url.to_string(),
        hash: r.hash,
        compact_revision: r.compact_revision,
    })
}

/// Every member's hash at `revision`; Err describes a disagreement or a member that never answered.
pub async fn check_hashkv(
    urls: &[String],
    revision: i64,
    timeout: Duration,
) -> Result<Vec<MemberHash>, String> {
    let deadline = Instant::now() + timeout;
    loop {
        let mut hashes = Vec::new();
        let mut missing = Vec::new();
        for url in urls {
            match hash_at(url, revision).await {
                Ok(h) => hashes.push(h),
                Err(e) => missing.push(e),
            }
        }
        let agree = hashes
            .windows(2)
            .all(|w| w[0].hash == w[1].hash && w[0].compact_revision == w[1].compact_revision);
        if missing.is_empty() && agree {
            return Ok(hashes);
        }
        if Instant::now() > deadline {
            let seen: Vec<String> = hashes
                .iter()
                .map(|h| format!("{} hash {} compact {}", h.url, h.hash, h.compact_revision))
                .collect();
            return Err(format!(
                "HashKV at revision {revision} disagrees: [{}]; no answer: [{}]",
                seen.join(", "),
                missing.join(", ")
            ));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
