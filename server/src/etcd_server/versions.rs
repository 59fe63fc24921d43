//! `EtcdServer`'s side of the cluster version and of Downgrade: the leader's monitors, the
//! versions asked of the members, and Maintenance.Downgrade (validate / enable / cancel) as etcd
//! 3.5.1 answers it. The decisions themselves are pure functions in [`crate::cluster_version`].
//!
//! - The version monitor runs on every member and acts on the leader: on becoming leader and
//!   every [`MONITOR_VERSION_INTERVAL`] it asks each member's `/version` and proposes the next
//!   cluster version, as a v2 `PUT /0/version` (what etcd 3.4 and 3.5.1 propose).
//! - The downgrade monitor, also on the leader, cancels an enabled downgrade once every member
//!   reports the target as its cluster version (etcd's monitorDowngrade, every 5 s).
//!
//! A member's `/version` is asked on its peer URLs, as etcd does.

use std::sync::Weak;
use std::time::Duration;

use etcd_proto::etcdserverpb::{
    downgrade_request::DowngradeAction, AuthStatusResponse, DowngradeRequest, DowngradeResponse, InternalRaftRequest,
};
use etcd_proto::membershippb::{DowngradeInfoSetRequest, Member};
use etcd_raft::rafthttp::client::{Connection, Identity};
use etcd_raft::rafthttp::peer_api;
use prost::Message;

use super::EtcdServer;
use crate::cluster_version::{self as cv, MemberVersions, Version, VersionsById};
use crate::entry_format::cluster_version_request;
use crate::errors::ServerError;
use etcd_auth::AuthInfo;

/// etcd's monitorVersionInterval (rafthttp.ConnWriteTimeout - 1 s).
pub(crate) const MONITOR_VERSION_INTERVAL: Duration = Duration::from_secs(4);
/// etcd 3.5's `--experimental-downgrade-check-time` default.
pub(crate) const DOWNGRADE_CHECK_INTERVAL: Duration = Duration::from_secs(5);
/// How long one `/version` request may take.
const VERSION_REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

impl EtcdServer {
    /// This member's server version and the cluster version (None: not decided): what its
    /// `/version` answers, on the client and the peer URLs.
    pub fn versions(&self) -> (String, Option<String>) {
        (self.cfg.etcd_api_version.clone(), self.members.cluster_version())
    }

    /// Whether a downgrade is enabled, read linearizably (the peer `/downgrade/enabled`).
    pub async fn downgrade_enabled(&self) -> Result<bool, ServerError> {
        self.linearizable_barrier().await?;
        Ok(self.members.downgrade_info().enabled)
    }

    /// The downgrade as Status shows it (etcd 3.6's `downgrade_info`; 3.5 has no such field).
    pub fn downgrade_status(&self) -> Option<etcd_proto::etcdserverpb::DowngradeInfo> {
        let d = self.members.downgrade_info();
        Some(etcd_proto::etcdserverpb::DowngradeInfo { enabled: d.enabled, target_version: d.target_version })
    }

    /// Maintenance.Downgrade.
    pub async fn downgrade(&self, r: DowngradeRequest) -> Result<DowngradeResponse, ServerError> {
        let mut resp = match DowngradeAction::try_from(r.action) {
            Ok(DowngradeAction::Validate) => self.downgrade_validate(&r.version).await?,
            Ok(DowngradeAction::Enable) => self.downgrade_enable(&r.version).await?,
            Ok(DowngradeAction::Cancel) => self.downgrade_cancel().await?,
            Err(_) => return Err(ServerError::UnknownMethod),
        };
        resp.header = Some(self.header(self.kv.current_revision()));
        Ok(resp)
    }

    /// The target `v` ("3.4" or "3.4.x") as a cluster version, when the cluster may go there.
    async fn downgrade_validate(&self, v: &str) -> Result<DowngradeResponse, ServerError> {
        let target = target_cluster_version(v)?;
        // what the cluster agreed on up to now, not a stale local view
        self.linearizable_barrier().await?;
        let current = self.members.cluster_version().as_deref().and_then(Version::parse);
        let current = current.ok_or(ServerError::ClusterVersionUnavailable)?;
        // A cluster below 3.5 has members that cannot apply DowngradeInfoSet: no downgrade
        // target is valid there (etcd 3.4 has no Downgrade at all).
        if current.allowed_downgrade() != Some(target) || !cv::understands_v3_5_requests(Some(&current.to_string())) {
            return Err(ServerError::InvalidDowngradeTargetVersion);
        }
        if self.members.downgrade_info().enabled {
            return Err(ServerError::DowngradeInProcess);
        }
        Ok(DowngradeResponse { header: None, version: current.to_string() })
    }

    async fn downgrade_enable(&self, v: &str) -> Result<DowngradeResponse, ServerError> {
        if let Err(e) = self.downgrade_validate(v).await {
            tracing::warn!(error = %e, "reject downgrade request");
            return Err(e);
        }
        let target = target_cluster_version(v)?;
        self.propose_downgrade_info(DowngradeInfoSetRequest { enabled: true, ver: target.to_string() }).await.inspect_err(|e| {
            tracing::warn!(error = %e, "reject downgrade request");
        })?;
        Ok(DowngradeResponse { header: None, version: self.cluster_version_text() })
    }

    async fn downgrade_cancel(&self) -> Result<DowngradeResponse, ServerError> {
        self.linearizable_barrier().await?;
        if !self.members.downgrade_info().enabled {
            return Err(ServerError::NoInflightDowngrade);
        }
        self.propose_downgrade_info(DowngradeInfoSetRequest { enabled: false, ver: String::new() }).await?;
        Ok(DowngradeResponse { header: None, version: self.cluster_version_text() })
    }

    fn cluster_version_text(&self) -> String {
        self.members.cluster_version().unwrap_or_default()
    }

    async fn propose_downgrade_info(&self, r: DowngradeInfoSetRequest) -> Result<(), ServerError> {
        let applied = self.propose(InternalRaftRequest { downgrade_info_set: Some(r), ..Default::default() }).await?;
        applied.result.map(|_| ())
    }

    /// AuthStatus in a cluster whose members may not all know its raft request (below 3.5):
    /// answered from this member's auth store once it has applied everything committed, which
    /// is what applying it through the log would answer.
    pub(crate) async fn auth_status_without_log(&self, ai: &AuthInfo) -> Result<AuthStatusResponse, ServerError> {
        self.linearizable_barrier().await?;
        if self.auth.is_enabled() {
            self.auth.is_admin_permitted(ai)?;
        }
        Ok(AuthStatusResponse {
            header: Some(self.header(self.kv.current_revision())),
            enabled: self.auth.is_enabled(),
            auth_revision: self.auth.revision(),
        })
    }

    /// Every member's `/version` (this member's own without asking), as etcd's getVersions.
    async fn member_versions(&self) -> VersionsById {
        let members = self.members.members();
        let asks = members.iter().map(|m| async move {
            if m.id == self.member_id {
                let (server, cluster) = self.versions();
                return (m.id, Some(MemberVersions { server, cluster: cluster.unwrap_or_else(|| "not_decided".into()) }));
            }
            let v = fetch_versions(self.transport.dialer(), m).await;
            if let Err(e) = &v {
                tracing::warn!(remote_member_id = %format!("{:x}", m.id), error = %e, "failed to get version");
            }
            (m.id, v.ok())
        });
        futures::future::join_all(asks).await.into_iter().collect()
    }

    /// etcd's updateClusterVersionV2.
    async fn propose_cluster_version(&self, ver: &str) {
        match self.members.cluster_version() {
            None => tracing::info!(cluster_version = %cv::cluster_label(ver), "setting up initial cluster version using v2 API"),
            Some(from) => tracing::info!(from = %cv::cluster_label(&from), to = %cv::cluster_label(ver), "updating cluster version using v2 API"),
        }
        let id = self.ids.next();
        match self.propose_encoded(id, cluster_version_request(id, ver).encode_to_vec()).await {
            Ok(_) => tracing::info!(cluster_version = %cv::cluster_label(ver), "cluster version is updated"),
            Err(ServerError::Stopped) => {}
            Err(e) => tracing::warn!(error = %e, "failed to update cluster version"),
        }
    }

    /// One round of the version monitor: ask every member, propose what comes out.
    pub(crate) async fn monitor_versions_once(&self) {
        let vers = self.member_versions().await;
        if let Some(next) = cv::next_cluster_version(self.members.cluster_version().as_deref(), &vers) {
            self.propose_cluster_version(&next).await;
        }
    }

    fn stopped(&self) -> bool {
        self.applier.lock().is_none()
    }
}

/// etcd's convertToClusterVersion: "3.4" or "3.4.x" -> 3.4.0.
fn target_cluster_version(v: &str) -> Result<Version, ServerError> {
    Version::parse(v)
        .or_else(|| Version::parse(&format!("{v}.0")))
        .map(Version::major_minor)
        .ok_or(ServerError::WrongDowngradeVersionFormat)
}

/// The leader's version monitor (see the module docs).
pub(super) async fn run_version_monitor(server: Weak<EtcdServer>) {
    let mut was_leader = false;
    let mut next_poll = tokio::time::Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let Some(s) = server.upgrade() else { return };
        if s.stopped() {
            return;
        }
        let leader = s.is_leader();
        // as etcd on its first commit in a term: a new leader decides at once
        let now = tokio::time::Instant::now();
        let due = (leader && !was_leader) || now >= next_poll;
        was_leader = leader;
        if !leader || !due {
            continue;
        }
        next_poll = now + MONITOR_VERSION_INTERVAL;
        s.monitor_versions_once().await;
    }
}

/// The leader's downgrade monitor (see the module docs).
pub(super) async fn run_downgrade_monitor(server: Weak<EtcdServer>) {
    loop {
        tokio::time::sleep(DOWNGRADE_CHECK_INTERVAL).await;
        let Some(s) = server.upgrade() else { return };
        if s.stopped() {
            return;
        }
        let Some(target) = s.members.downgrade_info().target().filter(|_| s.is_leader()) else { continue };
        if cv::all_report_cluster_version(target, &s.member_versions().await) {
            tracing::info!(cluster_version = %target, "the cluster has been downgraded");
            if let Err(e) = s.downgrade_cancel().await {
                tracing::warn!(error = %e, "failed to cancel downgrade");
            }
        }
    }
}

/// etcd's isCompatibleWithCluster for a member joining a running cluster: refused ("incompatible
/// with current running cluster") when a member runs a cluster version this server cannot
/// serve, or when no member told a cluster version at all.
pub(super) async fn check_join_compatible(cfg: &crate::config::ServerConfig, members: &[Member], local: u64) -> Result<(), ServerError> {
    let Some(max) = Version::parse(&cfg.etcd_api_version).map(Version::major_minor) else { return Ok(()) };
    let min = Version::parse(cv::MIN_CLUSTER_VERSION).unwrap_or(Version { major: 3, minor: 0, patch: 0 });
    let dialer = etcd_raft::PeerDialer::new(None, cfg.peer_dial_tls.clone());
    let mut vers = VersionsById::new();
    for m in members.iter().filter(|m| m.id != local) {
        vers.insert(m.id, fetch_versions(&dialer, m).await.ok());
    }
    if cv::compatible_with_cluster(&vers, local, min, max) {
        return Ok(());
    }
    Err(ServerError::Internal("incompatible with current running cluster".into()))
}

/// `m`'s answer to `GET /version` on its peer URLs.
pub(crate) async fn fetch_versions(dialer: &etcd_raft::PeerDialer, m: &Member) -> Result<MemberVersions, String> {
    let peer = m.raft_attrs.as_ref().map(|r| r.peer_urls.clone()).unwrap_or_default();
    let mut last = format!("member {:x} has no peer URL to ask", m.id);
    for url in &peer {
        // the peer client of joining, promote and lease forwarding, bounded as one request
        let asked = async {
            let mut conn = Connection::open(dialer, url, VERSION_REQUEST_TIMEOUT).await.map_err(|e| e.to_string())?;
            peer_api::call::version(&mut conn, &Identity::default()).await
        };
        match tokio::time::timeout(VERSION_REQUEST_TIMEOUT, asked).await {
            Ok(Ok(v)) => return Ok(MemberVersions { server: v.etcdserver, cluster: v.etcdcluster }),
            Ok(Err(e)) => last = format!("{url}/version: {e}"),
            Err(_) => last = format!("{url}/version: timed out"),
        }
    }
    Err(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn downgrade_targets_are_read_as_etcd_reads_them() {
        let v34 = Version { major: 3, minor: 4, patch: 0 };
        assert_eq!(target_cluster_version("3.4"), Ok(v34));
        assert_eq!(target_cluster_version("3.4.23"), Ok(v34));
        for bad in ["", "3", "three.four", "3.4.x", "v3.4"] {
            assert_eq!(target_cluster_version(bad), Err(ServerError::WrongDowngradeVersionFormat), "{bad}");
        }
    }
}
