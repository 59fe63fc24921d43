//! The cluster version: what every member may rely on the others to understand.
//!
//! The leader asks every member for its server version (`/version` on the peer URLs, as etcd's
//! monitorVersions does every 4 s) and proposes the lowest one, cut to major.minor, as a v2
//! `PUT /0/version` request (etcd 3.4 and 3.5.1 both propose it that way). A member applies a
//! cluster version it cannot serve by stopping, as etcd does ("cluster cannot be downgraded").
//! While a downgrade is enabled, the lowered target is the only version a member may run.
//!
//! Invariant: every decision here is a pure function of the versions it is given; the poller
//! ([`crate::etcd_server`]'s monitor task) only gathers them and proposes what comes out, and
//! apply never looks at the local binary's version except to refuse to go on.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::fmt;

/// etcd's `version.MinClusterVersion`: proposed when the leader cannot reach every member
/// before any cluster version is set.
pub const MIN_CLUSTER_VERSION: &str = "3.0.0";

/// The first cluster version whose members understand the 3.5-only raft requests
/// (ClusterVersionSet, ClusterMemberAttrSet, DowngradeInfoSet, AuthStatus).
pub const V3_5: Version = Version { major: 3, minor: 5, patch: 0 };

/// A semantic version as go-semver reads it (major.minor.patch, a `-pre` or `+build` suffix
/// ignored for ordering as etcd's versions never carry one).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Version {
    pub major: u64,
    pub minor: u64,
    pub patch: u64,
}

impl Version {
    /// `major.minor.patch[-pre][+build]`; anything else is None (go-semver's NewVersion fails).
    pub fn parse(s: &str) -> Option<Version> {
        let core = s.split(['-', '+']).next()?;
        let mut parts = core.split('.');
        let mut num = || -> Option<u64> {
            let p = parts.next()?;
            if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            p.parse().ok()
        };
        let v = Version { major: num()?, minor: num()?, patch: num()? };
        if parts.next().is_some() {
            return None;
        }
        Some(v)
    }

    /// The version with its patch dropped: what a cluster version keeps.
    pub fn major_minor(self) -> Version {
        Version { patch: 0, ..self }
    }

    /// etcd's AllowedDowngradeVersion: one minor below.
    pub fn allowed_downgrade(self) -> Option<Version> {
        Some(Version { major: self.major, minor: self.minor.checked_sub(1)?, patch: 0 })
    }
}

impl Ord for Version {
    fn cmp(&self, o: &Self) -> Ordering {
        (self.major, self.minor, self.patch).cmp(&(o.major, o.minor, o.patch))
    }
}

impl PartialOrd for Version {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

/// etcd's `version.Cluster`: "3.5.0" -> "3.5", as log lines and the metric label show it.
pub fn cluster_label(ver: &str) -> String {
    ver.split('.').take(2).collect::<Vec<_>>().join(".")
}

/// What one member answered on `/version` (None: it could not be asked).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberVersions {
    pub server: String,
    /// The cluster version as that member knows it ("not_decided" before one is set).
    pub cluster: String,
}

/// Every member's answer, by member ID.
pub type VersionsById = BTreeMap<u64, Option<MemberVersions>>;

/// etcd's decideClusterVersion: the lowest server version among the members, or None when a
/// member could not be asked or answered something that is not a version.
pub fn decide(vers: &VersionsById) -> Option<Version> {
    let mut lowest: Option<Version> = None;
    for v in vers.values() {
        let v = Version::parse(&v.as_ref()?.server)?;
        lowest = Some(lowest.map_or(v, |l| l.min(v)));
    }
    lowest
}

/// etcd's IsValidVersionChange: up within the same major, or down by exactly one minor.
pub fn is_valid_change(current: Version, decided: Version) -> bool {
    let (cv, lv) = (current.major_minor(), decided.major_minor());
    cv.allowed_downgrade() == Some(lv) || (cv.major == lv.major && cv < lv)
}

/// What the leader's monitor proposes next (etcd's monitorVersions): with no cluster version
/// yet, the decided one or [`MIN_CLUSTER_VERSION`]; afterwards, the decided one when the change
/// is valid. None: nothing to propose.
pub fn next_cluster_version(current: Option<&str>, vers: &VersionsById) -> Option<String> {
    let decided = decide(vers).map(Version::major_minor);
    let Some(current) = current else {
        return Some(decided.map_or_else(|| MIN_CLUSTER_VERSION.to_string(), |v| v.to_string()));
    };
    let current = Version::parse(current)?;
    let decided = decided?;
    (decided != current.major_minor() && is_valid_change(current, decided)).then(|| decided.to_string())
}

/// etcd's isCompatibleWithVers, checked by a member joining a running cluster: true when at
/// least one other member answered and none runs a cluster version outside [min, max] (max
/// being the joining member's own major.minor).
pub fn compatible_with_cluster(vers: &VersionsById, local: u64, min: Version, max: Version) -> bool {
    let mut ok = false;
    for (id, v) in vers {
        let Some(v) = v.as_ref().filter(|_| *id != local) else { continue };
        let Some(cv) = Version::parse(&v.cluster) else { continue };
        if cv < min {
            tracing::warn!(remote_member_id = %format!("{id:x}"), remote_member_cluster_version = %cv, minimum_cluster_version_supported = %min, "cluster version of remote member is not compatible; too low");
            return false;
        }
        if max < cv {
            tracing::warn!(remote_member_id = %format!("{id:x}"), remote_member_cluster_version = %cv, minimum_cluster_version_supported = %min, "cluster version of remote member is not compatible; too high");
            return false;
        }
        ok = true;
    }
    ok
}

/// etcd's isMatchedVersions: every member reports `target` as its cluster version (a
/// downgrade is then complete).
pub fn all_report_cluster_version(target: Version, vers: &VersionsById) -> bool {
    vers.values().all(|v| v.as_ref().and_then(|v| Version::parse(&v.cluster)) == Some(target))
}

/// The downgrade state the cluster agreed on (etcd's membership.DowngradeInfo).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DowngradeInfo {
    /// "" when no downgrade is under way.
    #[serde(rename = "target-version")]
    pub target_version: String,
    pub enabled: bool,
}

impl DowngradeInfo {
    /// The target while a downgrade is enabled.
    pub fn target(&self) -> Option<Version> {
        if self.enabled {
            Version::parse(&self.target_version)
        } else {
            None
        }
    }
}

/// Why a member must not go on with the cluster version it learnt (etcd's mustDetectDowngrade,
/// fatal there too).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DowngradeRefusal {
    #[error("invalid downgrade; server version is lower than determined cluster version (current-server-version: {server}, determined-cluster-version: {cluster})")]
    BelowClusterVersion { server: String, cluster: String },
    #[error("invalid downgrade; server version is not allowed to join when downgrade is enabled (current-server-version: {server}, target-cluster-version: {target})")]
    NotDowngradeTarget { server: String, target: String },
}

/// etcd's mustDetectDowngrade: while a downgrade is enabled only its target may run; otherwise
/// a server older than the cluster version may not.
pub fn detect_downgrade(server: &str, cluster: Option<&str>, downgrade: &DowngradeInfo) -> Result<(), DowngradeRefusal> {
    // an unparsable local version cannot happen (the flag is checked); treat it as the newest
    let Some(local) = Version::parse(server).map(Version::major_minor) else { return Ok(()) };
    if downgrade.enabled && !downgrade.target_version.is_empty() {
        if Version::parse(&downgrade.target_version) == Some(local) {
            return Ok(());
        }
        return Err(DowngradeRefusal::NotDowngradeTarget { server: server.into(), target: downgrade.target_version.clone() });
    }
    match cluster.and_then(Version::parse) {
        Some(cv) if local < cv => Err(DowngradeRefusal::BelowClusterVersion { server: server.into(), cluster: cluster_label(&cv.to_string()) }),
        _ => Ok(()),
    }
}

/// Whether the members at cluster version `cluster` all understand the 3.5-only raft requests
/// (None: not decided yet, so not known).
pub fn understands_v3_5_requests(cluster: Option<&str>) -> bool {
    cluster.and_then(Version::parse).is_some_and(|v| v >= V3_5)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Version {
        Version::parse(s).unwrap()
    }

    fn vers(list: &[(u64, Option<(&str, &str)>)]) -> VersionsById {
        list.iter().map(|(id, v)| (*id, v.map(|(s, c)| MemberVersions { server: s.into(), cluster: c.into() }))).collect()
    }

    #[test]
    fn versions_parse_as_go_semver_reads_them() {
        assert_eq!(v("3.5.17"), Version { major: 3, minor: 5, patch: 17 });
        assert_eq!(v("3.6.0-alpha.0"), Version { major: 3, minor: 6, patch: 0 });
        for bad in ["3.5", "3", "", "3.5.x", "not_decided", "3.5.1.2", "v3.5.1"] {
            assert_eq!(Version::parse(bad), None, "{bad}");
        }
        assert!(v("3.4.23") < v("3.5.0"));
        assert!(v("3.10.0") > v("3.9.9"));
    }

    #[test]
    fn the_cluster_version_is_the_lowest_server_version() {
        let all = vers(&[(1, Some(("3.5.17", "3.5.0"))), (2, Some(("3.4.23", "3.4.0"))), (3, Some(("3.5.1", "3.5.0")))]);
        assert_eq!(decide(&all), Some(v("3.4.23")));
        // a member that did not answer, or answered garbage: nothing is decided
        assert_eq!(decide(&vers(&[(1, Some(("3.5.17", "3.5.0"))), (2, None)])), None);
        assert_eq!(decide(&vers(&[(1, Some(("3.5.17", "3.5.0"))), (2, Some(("x", "3.5.0")))])), None);
    }

    #[test]
    fn the_monitor_proposes_as_etcds_monitor_versions() {
        let mixed = vers(&[(1, Some(("3.5.17", "not_decided"))), (2, Some(("3.4.23", "not_decided")))]);
        let new = vers(&[(1, Some(("3.5.17", "3.4.0"))), (2, Some(("3.5.1", "3.4.0")))]);
        let unreachable = vers(&[(1, Some(("3.5.17", "not_decided"))), (2, None)]);
        // table: (current cluster version, member versions, proposal)
        let cases: [(Option<&str>, &VersionsById, Option<&str>); 7] = [
            (None, &mixed, Some("3.4.0")),
            (None, &unreachable, Some("3.0.0")),
            (Some("3.0.0"), &mixed, Some("3.4.0")),
            (Some("3.4.0"), &mixed, None),        // already there
            (Some("3.4.0"), &new, Some("3.5.0")), // every member upgraded
            (Some("3.5.0"), &mixed, Some("3.4.0")), // one minor down is a valid change
            (Some("3.5.0"), &unreachable, None),
        ];
        for (current, members, want) in cases {
            assert_eq!(next_cluster_version(current, members).as_deref(), want, "{current:?} {members:?}");
        }
        // two minors down is not a valid change
        assert_eq!(next_cluster_version(Some("3.6.0"), &mixed), None);
        assert!(!is_valid_change(v("3.5.0"), v("4.0.0")));
        assert!(is_valid_change(v("3.4.0"), v("3.5.0")));
    }

    #[test]
    fn a_member_may_join_only_clusters_whose_version_it_can_serve() {
        let (min, max) = (v(MIN_CLUSTER_VERSION), v("3.4.0"));
        let at_3_5 = vers(&[(1, Some(("3.5.1", "3.5.0"))), (9, None)]);
        assert!(!compatible_with_cluster(&at_3_5, 9, min, max));
        let at_3_4 = vers(&[(1, Some(("3.5.1", "3.4.0"))), (2, Some(("3.4.23", "3.4.0")))]);
        assert!(compatible_with_cluster(&at_3_4, 9, min, max));
        // nobody answered, or only garbage: not known to be compatible
        assert!(!compatible_with_cluster(&vers(&[(1, None), (9, Some(("3.4.23", "3.4.0")))]), 9, min, max));
        assert!(!compatible_with_cluster(&vers(&[(1, Some(("3.5.1", "not_decided")))]), 9, min, max));
    }

    #[test]
    fn an_older_server_refuses_a_higher_cluster_version_unless_it_is_the_downgrade_target() {
        let none = DowngradeInfo::default();
        assert_eq!(detect_downgrade("3.5.17", Some("3.5.0"), &none), Ok(()));
        assert_eq!(detect_downgrade("3.5.17", Some("3.4.0"), &none), Ok(()));
        assert_eq!(detect_downgrade("3.4.23", None, &none), Ok(()));
        let refused = detect_downgrade("3.4.23", Some("3.5.0"), &none).unwrap_err();
        assert_eq!(refused.to_string(), "invalid downgrade; server version is lower than determined cluster version (current-server-version: 3.4.23, determined-cluster-version: 3.5)");
        let to_3_4 = DowngradeInfo { target_version: "3.4.0".into(), enabled: true };
        assert_eq!(detect_downgrade("3.4.23", Some("3.5.0"), &to_3_4), Ok(()));
        assert!(matches!(detect_downgrade("3.5.17", Some("3.5.0"), &to_3_4), Err(DowngradeRefusal::NotDowngradeTarget { .. })));
    }

    #[test]
    fn a_downgrade_is_complete_when_every_member_reports_the_target() {
        let t = v("3.4.0");
        assert!(all_report_cluster_version(t, &vers(&[(1, Some(("3.5.1", "3.4.0"))), (2, Some(("3.4.23", "3.4.0")))])));
        assert!(!all_report_cluster_version(t, &vers(&[(1, Some(("3.5.1", "3.5.0"))), (2, Some(("3.4.23", "3.4.0")))])));
        assert!(!all_report_cluster_version(t, &vers(&[(1, Some(("3.4.23", "3.4.0"))), (2, None)])));
    }

    #[test]
    fn requests_new_in_3_5_wait_for_a_3_5_cluster() {
        assert!(!understands_v3_5_requests(None));
        assert!(!understands_v3_5_requests(Some("3.4.0")));
        assert!(understands_v3_5_requests(Some("3.5.0")));
        assert!(understands_v3_5_requests(Some("3.6.0")));
    }

    #[test]
    fn downgrade_info_is_stored_as_etcd_35_writes_it() {
        let d = DowngradeInfo { target_version: "3.4.0".into(), enabled: true };
        assert_eq!(serde_json::to_string(&d).unwrap(), r#"{"target-version":"3.4.0","enabled":true}"#);
        assert_eq!(d.target(), Some(v("3.4.0")));
        assert_eq!(DowngradeInfo::default().target(), None);
    }
}
