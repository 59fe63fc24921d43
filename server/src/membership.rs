//! Cluster membership: the members every member agrees on, changed only by applying raft
//! entries (conf changes carrying the member record, and published attributes).
//!
//! Invariant: the in-memory view and the `members` table change in the same apply batch, so
//! after a crash the view rebuilt from the backend plus the replayed WAL tail is the same.

use std::collections::{BTreeMap, BTreeSet};

use etcd_proto::etcdserverpb;
use etcd_proto::membershippb::{Attributes, Member, RaftAttributes};
use parking_lot::RwLock;
use prost::Message;
use redb::{ReadableDatabase, ReadableTable, TableDefinition};

use crate::cluster_version::DowngradeInfo;
use crate::errors::ServerError;

pub(crate) const MEMBERS: TableDefinition<u64, &[u8]> = TableDefinition::new("members");
pub(crate) const MEMBERS_REMOVED: TableDefinition<u64, ()> = TableDefinition::new("members_removed");
pub(crate) const CLUSTER: TableDefinition<&str, &[u8]> = TableDefinition::new("cluster");
pub(crate) const CLUSTER_VERSION_KEY: &str = "clusterVersion";
/// 3.5's downgrade state, JSON as etcd writes it (`{"target-version":..,"enabled":..}`).
pub(crate) const DOWNGRADE_KEY: &str = "downgrade";

#[derive(Default)]
struct View {
    members: BTreeMap<u64, Member>,
    removed: BTreeSet<u64>,
    version: Option<String>,
    downgrade: DowngradeInfo,
}

pub struct Membership {
    local_id: u64,
    cluster_id: u64,
    view: RwLock<View>,
}

fn storage_err(e: impl std::fmt::Display) -> ServerError {
    ServerError::Internal(format!("membership store: {e}"))
}

fn read_view(db: &redb::Database) -> Result<View, ServerError> {
    let mut view = View::default();
    crate::metrics::membership_read();
    let rtx = db.begin_read().map_err(storage_err)?;
    match rtx.open_table(MEMBERS) {
        Ok(t) => {
            for row in t.iter().map_err(storage_err)? {
                let (id, v) = row.map_err(storage_err)?;
                let m = Member::decode(v.value()).map_err(storage_err)?;
                view.members.insert(id.value(), m);
            }
        }
        Err(redb::TableError::TableDoesNotExist(_)) => {}
        Err(e) => return Err(storage_err(e)),
    }
    match rtx.open_table(MEMBERS_REMOVED) {
        Ok(t) => {
            for row in t.iter().map_err(storage_err)? {
                view.removed.insert(row.map_err(storage_err)?.0.value());
            }
        }
        Err(redb::TableError::TableDoesNotExist(_)) => {}
        Err(e) => return Err(storage_err(e)),
    }
    match rtx.open_table(CLUSTER) {
        Ok(t) => {
            if let Some(v) = t.get(CLUSTER_VERSION_KEY).map_err(storage_err)? {
                view.version = Some(String::from_utf8_lossy(v.value()).into_owned());
            }
            if let Some(v) = t.get(DOWNGRADE_KEY).map_err(storage_err)? {
                view.downgrade = serde_json::from_slice(v.value()).map_err(storage_err)?;
            }
        }
        Err(redb::TableError::TableDoesNotExist(_)) => {}
        Err(e) => return Err(storage_err(e)),
    }
    Ok(view)
}

/// etcd's api.UpdateCapability log line for cluster version `ver` ("3.5.0" -> "3.5").
pub(crate) fn log_enabled_capabilities(ver: &str) {
    let major_minor: String = ver.split('.').take(2).collect::<Vec<_>>().join(".");
    tracing::info!(cluster_version = %ver, "enabled capabilities for version {major_minor}");
}

impl Membership {
    /// Loads the membership stored in the backend (empty on a new data dir).
    /// A restarted member that knows its cluster version logs it as etcd's cluster.Recover does
    /// (tools wait for "enabled capabilities for version" on every start, not only the first).
    pub fn load(db: &redb::Database, local_id: u64, cluster_id: u64) -> Result<Self, ServerError> {
        let view = read_view(db)?;
        if let Some(ver) = &view.version {
            log_enabled_capabilities(ver);
            tracing::info!(cluster_version = %ver, "set cluster version from store");
        }
        Ok(Membership { local_id, cluster_id, view: RwLock::new(view) })
    }

    /// Replaces the view with the one stored in `db` (after a snapshot replaced the database).
    /// Logs the cluster version as `load` does (etcd's applySnapshot recovers the cluster and
    /// logs it: a member that joined through a snapshot says which capabilities it enabled).
    pub fn reload(&self, db: &redb::Database) -> Result<(), ServerError> {
        let view = read_view(db)?;
        if let Some(ver) = &view.version {
            log_enabled_capabilities(ver);
            tracing::info!(cluster_version = %ver, "set cluster version from store");
        }
        *self.view.write() = view;
        Ok(())
    }

    pub fn local_id(&self) -> u64 {
        self.local_id
    }

    pub fn cluster_id(&self) -> u64 {
        self.cluster_id
    }

    pub fn cluster_version(&self) -> Option<String> {
        self.view.read().version.clone()
    }

    /// The downgrade the cluster agreed on (disabled when none was ever set).
    pub fn downgrade_info(&self) -> DowngradeInfo {
        self.view.read().downgrade.clone()
    }

    pub fn member(&self, id: u64) -> Option<Member> {
        self.view.read().members.get(&id).cloned()
    }

    /// IDs of the members removed from the cluster.
    pub fn removed_ids(&self) -> Vec<u64> {
        self.view.read().removed.iter().copied().collect()
    }

    /// etcd's v2 store JSON of this membership: the `data` of the raft snapshots this member
    /// makes and sends, which etcd members recover their membership from.
    pub fn v2_snapshot_json(&self) -> Vec<u8> {
        crate::v2store::snapshot_json(&self.members(), &self.removed_ids(), self.cluster_version().as_deref())
    }

    pub fn is_removed(&self, id: u64) -> bool {
        self.view.read().removed.contains(&id)
    }

    /// IDs of removed members, ascending.
    pub fn removed(&self) -> Vec<u64> {
        self.view.read().removed.iter().copied().collect()
    }

    /// Members ordered by ID, as etcd lists them.
    pub fn members(&self) -> Vec<Member> {
        self.view.read().members.values().cloned().collect()
    }

    fn save(wtx: &redb::WriteTransaction, m: &Member) -> Result<(), ServerError> {
        let mut t = wtx.open_table(MEMBERS).map_err(storage_err)?;
        t.insert(m.id, m.encode_to_vec().as_slice()).map_err(storage_err)?;
        Ok(())
    }

    /// etcd's membership lines ("added member", "removed member", "promote member", "updated
    /// member" with its field names), written as a committed change is applied.
    pub(crate) fn log_change(&self, change: &crate::entry_format::MemberChange) {
        use crate::entry_format::MemberChange;
        use crate::logging::json;
        let cluster = format!("{:x}", self.cluster_id());
        let local = format!("{:x}", self.local_id());
        let urls_of = |m: Option<&Member>| m.and_then(|m| m.raft_attrs.as_ref()).map(|r| r.peer_urls.clone()).unwrap_or_default();
        match change {
            MemberChange::Add(m) => tracing::info!(
                "cluster-id" = %cluster, "local-member-id" = %local, "added-peer-id" = %format!("{:x}", m.id),
                "added-peer-peer-urls" = ?json(&urls_of(Some(m))), "added member"
            ),
            MemberChange::Promote(_) => tracing::info!("cluster-id" = %cluster, "local-member-id" = %local, "promote member"),
            MemberChange::Update { id, peer_urls } => tracing::info!(
                "cluster-id" = %cluster, "local-member-id" = %local, "updated-remote-peer-id" = %format!("{id:x}"),
                "updated-remote-peer-urls" = ?json(peer_urls), "updated member"
            ),
            MemberChange::Remove(id) => tracing::info!(
                "cluster-id" = %cluster, "local-member-id" = %local, "removed-remote-peer-id" = %format!("{id:x}"),
                "removed-remote-peer-urls" = ?json(&urls_of(self.member(*id).as_ref())), "removed member"
            ),
        }
    }

    /// Applies an added member (voter or learner) from a committed conf change.
    pub fn apply_add(&self, wtx: &redb::WriteTransaction, m: Member) -> Result<(), ServerError> {
        Self::save(wtx, &m)?;
        let existed = self.view.write().members.insert(m.id, m).is_some();
        crate::metrics::membership_write(if existed { "update" } else { "create" });
        Ok(())
    }

    pub fn apply_remove(&self, wtx: &redb::WriteTransaction, id: u64) -> Result<(), ServerError> {
        wtx.open_table(MEMBERS).map_err(storage_err)?.remove(id).map_err(storage_err)?;
        wtx.open_table(MEMBERS_REMOVED).map_err(storage_err)?.insert(id, ()).map_err(storage_err)?;
        crate::metrics::membership_write("delete");
        let mut v = self.view.write();
        v.members.remove(&id);
        v.removed.insert(id);
        Ok(())
    }

    /// Applies a member's published name and client URLs. Unknown members are ignored, as etcd
    /// ignores attributes of a member removed meanwhile.
    pub fn apply_attributes(&self, wtx: &redb::WriteTransaction, id: u64, attrs: Attributes) -> Result<(), ServerError> {
        let updated = {
            let v = self.view.read();
            v.members.get(&id).cloned().map(|mut m| {
                m.member_attrs = Some(attrs);
                m
            })
        };
        if let Some(m) = updated {
            crate::metrics::membership_write("set");
            Self::save(wtx, &m)?;
            self.view.write().members.insert(id, m);
        }
        Ok(())
    }

    pub fn apply_version(&self, wtx: &redb::WriteTransaction, version: &str) -> Result<(), ServerError> {
        wtx.open_table(CLUSTER)
            .map_err(storage_err)?
            .insert(CLUSTER_VERSION_KEY, version.as_bytes())
            .map_err(storage_err)?;
        crate::metrics::membership_write("set");
        self.view.write().version = Some(version.to_string());
        Ok(())
    }

    /// Applies a DowngradeInfoSet request's outcome.
    pub fn apply_downgrade(&self, wtx: &redb::WriteTransaction, d: DowngradeInfo) -> Result<(), ServerError> {
        let json = serde_json::to_vec(&d).map_err(storage_err)?;
        wtx.open_table(CLUSTER).map_err(storage_err)?.insert(DOWNGRADE_KEY, json.as_slice()).map_err(storage_err)?;
        crate::metrics::membership_write("set");
        self.view.write().downgrade = d;
        Ok(())
    }
}

/// A new member record as carried in a conf change's context.
pub fn new_member(id: u64, name: &str, peer_urls: Vec<String>, is_learner: bool) -> Member {
    Member {
        id,
        raft_attrs: Some(RaftAttributes { peer_urls, is_learner }),
        member_attrs: Some(Attributes { name: name.to_string(), client_urls: vec![] }),
    }
}

/// The client-facing form of a member (etcdserverpb.Member).
pub fn to_pb(m: &Member) -> etcdserverpb::Member {
    let raft = m.raft_attrs.clone().unwrap_or_default();
    let attrs = m.member_attrs.clone().unwrap_or_default();
    etcdserverpb::Member {
        id: m.id,
        name: attrs.name,
        peer_ur_ls: raft.peer_urls,
        client_ur_ls: attrs.client_urls,
        is_learner: raft.is_learner,
    }
}

/// A joining member's `--initial-cluster` against the running cluster's members, as etcd's
/// ValidateClusterAndAssignIDs: as many members, each running member's peer URLs (in any
/// order) equal to one entry's; this member's ID is the one matched to its own name's entry.
pub fn match_initial_cluster(initial: &[crate::config::InitialMember], name: &str, existing: &[Member]) -> Result<u64, String> {
    if initial.len() != existing.len() {
        return Err("member count is unequal".into());
    }
    let sorted = |urls: &[String]| {
        let mut u = urls.to_vec();
        u.sort();
        u
    };
    let mut mine = None;
    for m in existing {
        let urls = sorted(m.raft_attrs.as_ref().map(|r| r.peer_urls.as_slice()).unwrap_or_default());
        let Some(entry) = initial.iter().find(|e| sorted(&e.peer_urls) == urls) else {
            return Err(format!("PeerURLs: no match found for existing member ({:x}, [{}])", m.id, urls.join(" ")));
        };
        if entry.name == name {
            mine = Some(m.id);
        }
    }
    mine.ok_or_else(|| format!("member {name} is not in --initial-cluster"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn membership_survives_reload_from_the_backend() {
        let dir = tempfile::tempdir().unwrap();
        let db = redb::Database::create(dir.path().join("db")).unwrap();
        let ms = Membership::load(&db, 1, 9).unwrap();
        let wtx = db.begin_write().unwrap();
        ms.apply_add(&wtx, new_member(1, "a", vec!["http://a:2380".into()], false)).unwrap();
        ms.apply_add(&wtx, new_member(2, "b", vec!["http://b:2380".into()], true)).unwrap();
        ms.apply_attributes(&wtx, 1, Attributes { name: "a".into(), client_urls: vec!["http://a:2379".into()] }).unwrap();
        ms.apply_remove(&wtx, 2).unwrap();
        ms.apply_version(&wtx, "3.5.0").unwrap();
        wtx.commit().unwrap();

        let again = Membership::load(&db, 1, 9).unwrap();
        let members = again.members();
        assert_eq!(members.len(), 1);
        assert_eq!(to_pb(&members[0]).client_ur_ls, vec!["http://a:2379".to_string()]);
        assert!(again.is_removed(2));
        assert_eq!(again.cluster_version().as_deref(), Some("3.5.0"));
    }

    #[test]
    fn a_joining_member_takes_the_id_its_initial_cluster_entry_matches() {
        let entry = |name: &str, urls: &[&str]| crate::config::InitialMember {
            name: name.into(),
            peer_urls: urls.iter().map(|u| u.to_string()).collect(),
        };
        let running = [new_member(0xa, "a", vec!["http://h:1".into()], false), new_member(0xb, "", vec!["http://h:3".into(), "http://h:2".into()], true)];
        let initial = [entry("a", &["http://h:1"]), entry("new", &["http://h:2", "http://h:3"])];
        assert_eq!(match_initial_cluster(&initial, "new", &running), Ok(0xb));
        assert_eq!(match_initial_cluster(&initial[..1], "new", &running), Err("member count is unequal".into()));
        let moved = [entry("a", &["http://h:9"]), entry("new", &["http://h:2", "http://h:3"])];
        assert_eq!(
            match_initial_cluster(&moved, "new", &running),
            Err("PeerURLs: no match found for existing member (a, [http://h:1])".into())
        );
        assert_eq!(match_initial_cluster(&initial, "other", &running), Err("member other is not in --initial-cluster".into()));
    }
}
