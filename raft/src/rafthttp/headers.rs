//! The headers of etcd's peer requests and the checks a member makes on them.
//!
//! Every raft request carries `X-Server-From` (sender ID), `X-Server-Version`,
//! `X-Min-Cluster-Version`, `X-Etcd-Cluster-ID` and `X-PeerURLs` (the sender's peer URLs, comma
//! separated); stream GETs add `X-Raft-To` (the receiver's ID). IDs are lowercase hex without
//! leading zeros (Go's `types.ID.String()`). A request fails the check, with a 412 whose body
//! is the error text, when the versions are incompatible (`incompatible version`: the remote
//! server's major.minor below our minimum cluster version, or its minimum cluster version above
//! our server's major.minor) or the cluster IDs differ (`cluster ID mismatch`). Missing version
//! headers count as 2.0.0, as in etcd.

use http::HeaderMap;

pub const X_SERVER_FROM: &str = "X-Server-From";
pub const X_SERVER_VERSION: &str = "X-Server-Version";
pub const X_MIN_CLUSTER_VERSION: &str = "X-Min-Cluster-Version";
pub const X_ETCD_CLUSTER_ID: &str = "X-Etcd-Cluster-ID";
pub const X_RAFT_TO: &str = "X-Raft-To";
pub const X_PEER_URLS: &str = "X-PeerURLs";

/// etcd's `errIncompatibleVersion` and `errClusterIDMismatch` texts (412 bodies).
pub const ERR_INCOMPATIBLE_VERSION: &str = "incompatible version";
pub const ERR_CLUSTER_ID_MISMATCH: &str = "cluster ID mismatch";

/// A member ID as etcd prints it.
pub fn format_id(id: u64) -> String {
    format!("{id:x}")
}

/// A member ID from etcd's text (`types.IDFromString`: hex).
pub fn parse_id(s: &str) -> Option<u64> {
    u64::from_str_radix(s, 16).ok()
}

/// What this member says about itself in the version headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versions {
    /// `X-Server-Version`, e.g. "3.5.17".
    pub server: String,
    /// `X-Min-Cluster-Version`: the oldest cluster version this member can run in ("3.0.0").
    pub min_cluster: String,
}

impl Default for Versions {
    fn default() -> Self {
        Versions { server: "3.5.1".into(), min_cluster: "3.0.0".into() }
    }
}

/// Why a peer's request is refused before it is read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    #[error("incompatible version")]
    IncompatibleVersion,
    #[error("cluster ID mismatch")]
    ClusterIdMismatch,
}

/// major.minor of a semver string; `None` when it is not one.
pub fn major_minor(v: &str) -> Option<(u64, u64)> {
    let mut it = v.trim().trim_start_matches('v').split('.');
    let major = it.next()?.parse().ok()?;
    let minor = it.next()?.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()?;
    Some((major, minor))
}

fn header<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

/// etcd's `checkClusterCompatibilityFromHeader`: the version check first, then the cluster ID.
pub fn check_compatibility(h: &HeaderMap, local: &Versions, cluster_id: u64) -> Result<(), HeaderError> {
    // etcd panics on an unparsable version (semver.Must); a refusal is the safe answer here
    let remote_server = major_minor(header(h, X_SERVER_VERSION).unwrap_or("2.0.0")).ok_or(HeaderError::IncompatibleVersion)?;
    let remote_min = major_minor(header(h, X_MIN_CLUSTER_VERSION).unwrap_or("2.0.0")).ok_or(HeaderError::IncompatibleVersion)?;
    let local_server = major_minor(&local.server).unwrap_or((3, 5));
    let local_min = major_minor(&local.min_cluster).unwrap_or((3, 0));
    if remote_server < local_min || remote_min > local_server {
        return Err(HeaderError::IncompatibleVersion);
    }
    if header(h, X_ETCD_CLUSTER_ID) != Some(format_id(cluster_id).as_str()) {
        return Err(HeaderError::ClusterIdMismatch);
    }
    Ok(())
}

/// The sender's ID and peer URLs, when the request names both (etcd's `addRemoteFromRequest`).
pub fn remote_from_request(h: &HeaderMap) -> Option<(u64, Vec<String>)> {
    let from = parse_id(header(h, X_SERVER_FROM)?)?;
    let urls = header(h, X_PEER_URLS).filter(|u| !u.is_empty())?;
    Some((from, urls.split(',').map(str::to_string).collect()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn ids_are_hex_without_leading_zeros() {
        assert_eq!(format_id(0x0a1b), "a1b");
        assert_eq!(parse_id("8e9e05c52164694d"), Some(0x8e9e05c52164694d));
        assert_eq!(parse_id("xyz"), None);
    }

    #[test]
    fn compatibility_is_checked_version_first_then_cluster_id() {
        let local = Versions { server: "3.5.17".into(), min_cluster: "3.0.0".into() };
        let ok = [(X_SERVER_VERSION, "3.4.23"), (X_MIN_CLUSTER_VERSION, "3.0.0"), (X_ETCD_CLUSTER_ID, "cdf818194e3a8c32")];
        assert_eq!(check_compatibility(&headers(&ok), &local, 0xcdf818194e3a8c32), Ok(()));
        assert_eq!(check_compatibility(&headers(&ok), &local, 1), Err(HeaderError::ClusterIdMismatch));
        // no version headers: 2.0.0, below our minimum cluster version, even with a wrong cluster
        assert_eq!(check_compatibility(&headers(&[(X_ETCD_CLUSTER_ID, "1")]), &local, 2), Err(HeaderError::IncompatibleVersion));
        let future = [(X_SERVER_VERSION, "3.7.0"), (X_MIN_CLUSTER_VERSION, "3.6.0"), (X_ETCD_CLUSTER_ID, "1")];
        assert_eq!(check_compatibility(&headers(&future), &local, 1), Err(HeaderError::IncompatibleVersion));
        let garbage = [(X_SERVER_VERSION, "three"), (X_ETCD_CLUSTER_ID, "1")];
        assert_eq!(check_compatibility(&headers(&garbage), &local, 1), Err(HeaderError::IncompatibleVersion));
    }

    #[test]
    fn remote_is_taken_from_sender_and_peer_urls() {
        let h = headers(&[(X_SERVER_FROM, "2a"), (X_PEER_URLS, "http://a:1,http://b:2")]);
        assert_eq!(remote_from_request(&h), Some((0x2a, vec!["http://a:1".into(), "http://b:2".into()])));
        assert_eq!(remote_from_request(&headers(&[(X_SERVER_FROM, "2a")])), None);
    }
}
