//! Member, cluster and request IDs, computed as etcd computes them so that IDs printed for
//! the same flags are comparable with etcd's.

use sha1::{Digest, Sha1};

/// Member ID: the first 8 bytes (big endian) of SHA-1(sorted peer URLs ++ cluster token ++
/// optional unix seconds of a run-time `member add`).
pub fn member_id(peer_urls: &[String], cluster_token: &str, added_at_unix: Option<i64>) -> u64 {
    let mut urls = peer_urls.to_vec();
    urls.sort();
    let mut h = Sha1::new();
    for u in &urls {
        h.update(u.as_bytes());
    }
    h.update(cluster_token.as_bytes());
    if let Some(t) = added_at_unix {
        h.update(t.to_string().as_bytes());
    }
    first_u64(&h.finalize())
}

/// Cluster ID: the first 8 bytes of SHA-1 over the sorted member IDs, each 8 bytes big endian.
pub fn cluster_id(member_ids: &[u64]) -> u64 {
    let mut ids = member_ids.to_vec();
    ids.sort_unstable();
    let mut h = Sha1::new();
    for id in ids {
        h.update(id.to_be_bytes());
    }
    first_u64(&h.finalize())
}

fn first_u64(d: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&d[..8]);
    u64::from_be_bytes(b)
}

/// Unique request IDs for the wait registry: the member ID's low 16 bits, then a counter
/// seeded from the start time, so IDs stay unique across restarts of the same member.
pub struct RequestIdGen {
    prefix: u64,
    counter: std::sync::atomic::AtomicU64,
}

impl RequestIdGen {
    pub fn new(member_id: u64) -> Self {
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        RequestIdGen {
            prefix: (member_id & 0xffff) << 48,
            counter: std::sync::atomic::AtomicU64::new((now_ms & 0xff_ffff_ffff) << 8),
        }
    }

    pub fn next(&self) -> u64 {
        let c = self.counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.prefix | (c & 0xffff_ffff_ffff)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_member_and_cluster_ids_match_etcd() {
        // etcd started with no flags reports member 8e9e05c52164694d in cluster cdf818194e3a8c32.
        let m = member_id(&["http://localhost:2380".to_string()], "etcd-cluster", None);
        assert_eq!(format!("{m:x}"), "8e9e05c52164694d");
        assert_eq!(format!("{:x}", cluster_id(&[m])), "cdf818194e3a8c32");
    }

    #[test]
    fn peer_url_order_does_not_matter() {
        let a = member_id(&["http://b:1".into(), "http://a:1".into()], "t", None);
        let b = member_id(&["http://a:1".into(), "http://b:1".into()], "t", None);
        assert_eq!(a, b);
        assert_ne!(a, member_id(&["http://a:1".into(), "http://b:1".into()], "t", Some(1)));
    }

    #[test]
    fn request_ids_are_unique() {
        let g = RequestIdGen::new(0x1234);
        let ids: std::collections::HashSet<u64> = (0..10_000).map(|_| g.next()).collect();
        assert_eq!(ids.len(), 10_000);
    }
}
