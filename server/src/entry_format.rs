//! etcd's raft entry formats, at the boundary between the raft log and the applier: the JSON
//! member record in conf changes and the v2 `Request` entries etcd uses to publish member
//! attributes and the cluster version.
//!
//! Invariant: what etcd-rs proposes is what etcd proposes for the same operation (same fields,
//! same numbering), and every entry etcd proposes decodes here into the change etcd applies.
//! The applier sees only [`MemberChange`] and [`V2Write`], never the wire forms.

use etcd_proto::etcdserverpb::{InternalRaftRequest, Request};
use etcd_proto::membershippb::{Attributes, Member, RaftAttributes};
use etcd_raft::etcd_conf_change::{EtcdConfChange, EtcdConfChangeType};
use serde::{Deserialize, Serialize};

/// etcd's membership.ConfigChangeContext as JSON: the member record (`Member`, embedded, so its
/// fields are at the top level) and `isPromote`, written only in a promotion.
#[derive(Serialize, Deserialize, Default, Debug)]
struct MemberJson {
    id: u64,
    /// Go writes a nil slice as null (a promotion's record has no URLs).
    #[serde(rename = "peerURLs", default)]
    peer_urls: Option<Vec<String>>,
    #[serde(rename = "isLearner", default, skip_serializing_if = "is_false")]
    is_learner: bool,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    name: String,
    #[serde(rename = "clientURLs", default, skip_serializing_if = "Option::is_none")]
    client_urls: Option<Vec<String>>,
    #[serde(rename = "isPromote", default, skip_serializing_if = "Option::is_none")]
    is_promote: Option<bool>,
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl MemberJson {
    fn of(m: &Member) -> MemberJson {
        let raft = m.raft_attrs.clone().unwrap_or_default();
        let attrs = m.member_attrs.clone().unwrap_or_default();
        MemberJson {
            id: m.id,
            peer_urls: Some(raft.peer_urls),
            is_learner: raft.is_learner,
            name: attrs.name,
            client_urls: Some(attrs.client_urls).filter(|u| !u.is_empty()),
            is_promote: None,
        }
    }

    fn member(self) -> Member {
        Member {
            id: self.id,
            raft_attrs: Some(RaftAttributes { peer_urls: self.peer_urls.unwrap_or_default(), is_learner: self.is_learner }),
            member_attrs: Some(Attributes { name: self.name, client_urls: self.client_urls.unwrap_or_default() }),
        }
    }

    fn encode(&self) -> Vec<u8> {
        // a struct of strings and numbers always serializes
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// What a committed conf change does to the membership.
#[derive(Debug, PartialEq)]
pub(crate) enum MemberChange {
    /// A new member (its record says whether it is a learner).
    Add(Member),
    /// A learner becomes a voter.
    Promote(u64),
    /// A member's peer URLs change.
    Update { id: u64, peer_urls: Vec<String> },
    Remove(u64),
}

impl MemberChange {
    pub(crate) fn member_id(&self) -> u64 {
        match self {
            MemberChange::Add(m) => m.id,
            MemberChange::Promote(id) | MemberChange::Update { id, .. } | MemberChange::Remove(id) => *id,
        }
    }
}

/// Why a conf change entry cannot be applied.
#[derive(Debug, thiserror::Error, PartialEq)]
pub(crate) enum EntryFormatError {
    #[error("conf change context is not etcd's JSON member record: {0}")]
    Context(String),
    #[error("conf change for member {node:x} carries the record of member {record:x}")]
    MemberMismatch { node: u64, record: u64 },
}

/// The conf change etcd proposes for `change`, with `request_id` for the proposer's wait.
pub(crate) fn encode_member_change(request_id: u64, change: &MemberChange) -> EtcdConfChange {
    let (change_type, context) = match change {
        MemberChange::Add(m) => {
            let learner = m.raft_attrs.as_ref().is_some_and(|r| r.is_learner);
            let kind = if learner { EtcdConfChangeType::AddLearnerNode } else { EtcdConfChangeType::AddNode };
            (kind, MemberJson::of(m).encode())
        }
        MemberChange::Promote(id) => {
            let ctx = MemberJson { id: *id, is_promote: Some(true), ..Default::default() };
            (EtcdConfChangeType::AddNode, ctx.encode())
        }
        // etcd's MemberUpdate sends only the ID and the new peer URLs
        MemberChange::Update { id, peer_urls } => {
            let ctx = MemberJson { id: *id, peer_urls: Some(peer_urls.clone()), ..Default::default() };
            (EtcdConfChangeType::UpdateNode, ctx.encode())
        }
        MemberChange::Remove(_) => (EtcdConfChangeType::RemoveNode, Vec::new()),
    };
    EtcdConfChange { id: request_id, change_type, node_id: change.member_id(), context }
}

/// The context of a bootstrap entry (`--initial-cluster` member): its JSON record.
pub(crate) fn bootstrap_context(m: &Member) -> Vec<u8> {
    MemberJson::of(m).encode()
}

/// Reads a committed conf change as etcd's applyConfChange does.
pub(crate) fn decode_member_change(cc: &EtcdConfChange) -> Result<MemberChange, EntryFormatError> {
    let record = || -> Result<MemberJson, EntryFormatError> {
        let m: MemberJson =
            serde_json::from_slice(&cc.context).map_err(|e| EntryFormatError::Context(e.to_string()))?;
        if m.id != cc.node_id {
            return Err(EntryFormatError::MemberMismatch { node: cc.node_id, record: m.id });
        }
        Ok(m)
    };
    Ok(match cc.change_type {
        EtcdConfChangeType::AddNode | EtcdConfChangeType::AddLearnerNode => {
            let m = record()?;
            if m.is_promote == Some(true) {
                MemberChange::Promote(m.id)
            } else {
                MemberChange::Add(m.member())
            }
        }
        EtcdConfChangeType::UpdateNode => {
            let m = record()?;
            MemberChange::Update { id: m.id, peer_urls: m.peer_urls.unwrap_or_default() }
        }
        EtcdConfChangeType::RemoveNode => MemberChange::Remove(cc.node_id),
    })
}

/// A normal raft entry, read as etcd reads one: an `InternalRaftRequest`, else a bare v2
/// `Request` (how etcd 3.4 and 3.5 propose publish and cluster version updates). A v2 request's
/// bytes never read as an `InternalRaftRequest`: its method ("PUT", ...) lands in field 2, a
/// message, whose first byte's wire type does not fit.
// unboxed: one per applied entry, moved straight into apply (no allocation on the write path)
#[allow(clippy::large_enum_variant)]
pub(crate) enum NormalEntry {
    V3(InternalRaftRequest),
    V2(Request),
    Undecodable(prost::DecodeError),
}

pub(crate) fn decode_normal(data: &[u8]) -> NormalEntry {
    use prost::Message;
    match InternalRaftRequest::decode(data) {
        Ok(InternalRaftRequest { v2: Some(v2), .. }) => NormalEntry::V2(v2),
        Ok(req) => NormalEntry::V3(req),
        Err(err) => Request::decode(data).map_or(NormalEntry::Undecodable(err), NormalEntry::V2),
    }
}

/// The etcd v2 store writes etcd-rs applies: those that change membership state.
#[derive(Debug, PartialEq)]
pub(crate) enum V2Write {
    /// PUT /0/members/<hex id>/attributes
    MemberAttributes { id: u64, attrs: Attributes },
    /// PUT /0/version
    ClusterVersion(String),
    /// Any other v2 request: etcd-rs keeps no v2 store (`--enable-v2` data).
    Other { method: String, path: String },
}

const MEMBERS_PREFIX: &str = "/0/members/";
const ATTRIBUTES_SUFFIX: &str = "/attributes";
const VERSION_PATH: &str = "/0/version";

/// etcd's attributes JSON (`membership.Attributes`).
#[derive(Serialize, Deserialize, Default)]
struct AttributesJson {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    name: String,
    #[serde(rename = "clientURLs", default, skip_serializing_if = "Vec::is_empty")]
    client_urls: Vec<String>,
}

/// The v2 request etcd (3.4 and 3.5) proposes for a PUT of `val` at `path`, as gogoproto writes
/// it: every non-pointer field present.
fn v2_put(id: u64, path: &str, val: String) -> Request {
    Request {
        id: Some(id),
        method: Some("PUT".into()),
        path: Some(path.into()),
        val: Some(val),
        dir: Some(false),
        prev_value: Some(String::new()),
        prev_index: Some(0),
        prev_exist: None,
        expiration: Some(0),
        wait: Some(false),
        since: Some(0),
        recursive: Some(false),
        sorted: Some(false),
        quorum: Some(false),
        time: Some(0),
        stream: Some(false),
        refresh: None,
    }
}

/// etcd's publish: this member's name and client URLs.
pub(crate) fn member_attributes_request(request_id: u64, member_id: u64, attrs: &Attributes) -> Request {
    let json = AttributesJson { name: attrs.name.clone(), client_urls: attrs.client_urls.clone() };
    let val = serde_json::to_string(&json).unwrap_or_default();
    v2_put(request_id, &format!("{MEMBERS_PREFIX}{member_id:x}{ATTRIBUTES_SUFFIX}"), val)
}

/// etcd's cluster version update ("3.5.0").
pub(crate) fn cluster_version_request(request_id: u64, version: &str) -> Request {
    v2_put(request_id, VERSION_PATH, version.to_string())
}

/// etcd's member attributes key: 1 to 16 hex digits (etcd's storeMemberAttributeRegexp).
fn member_of_attributes_path(path: &str) -> Option<u64> {
    let hex = path.strip_prefix(MEMBERS_PREFIX)?.strip_suffix(ATTRIBUTES_SUFFIX)?;
    if hex.is_empty() || hex.len() > 16 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u64::from_str_radix(hex, 16).ok()
}

/// "major.minor.patch", what etcd's semver.NewVersion needs at least.
fn is_semver(v: &str) -> bool {
    let core = v.split(['-', '+']).next().unwrap_or("");
    let parts: Vec<&str> = core.split('.').collect();
    parts.len() == 3 && parts.iter().all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
}

/// What a v2 request does, as etcd's applierV2store.Put reads it: a plain PUT (no
/// prevExist/prevIndex/prevValue condition) of a member's attributes or of the cluster version.
pub(crate) fn decode_v2(req: &Request) -> Result<V2Write, EntryFormatError> {
    let path = req.path();
    let plain_put = req.method() == "PUT" && req.prev_exist.is_none() && req.prev_index() == 0 && req.prev_value().is_empty();
    if plain_put {
        if let Some(id) = member_of_attributes_path(path) {
            let a: AttributesJson =
                serde_json::from_str(req.val()).map_err(|e| EntryFormatError::Context(e.to_string()))?;
            return Ok(V2Write::MemberAttributes { id, attrs: Attributes { name: a.name, client_urls: a.client_urls } });
        }
        if path == VERSION_PATH {
            if !is_semver(req.val()) {
                return Err(EntryFormatError::Context(format!("cluster version {:?} is not a semantic version", req.val())));
            }
            return Ok(V2Write::ClusterVersion(req.val().to_string()));
        }
    }
    Ok(V2Write::Other { method: req.method().to_string(), path: path.to_string() })
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
    }

    // Entries from the WAL of etcd 3.5.1 (one member n1, then `member add n2 --learner`, n2
    // started, `member promote`, `member update`), read with a throwaway WAL record reader:
    // the `data` of each raft entry, hex. Member n2 is ae10375e020b7b9a.
    const ETCD_BOOTSTRAP_ADD: &str = "080010001889b0959da78286ed79224c7b226964223a383738303335363839313034303839373033332c227065657255524c73223a5b22687474703a2f2f3132372e302e302e313a3233363132225d2c226e616d65223a226e31227d";
    const ETCD_ADD_LEARNER: &str = "0886ecf9a7afc9e884581003189af7ad90e0eb8d88ae0122527b226964223a31323534323538353833393132373539313833342c227065657255524c73223a5b22687474703a2f2f3132372e302e302e313a3233363232225d2c2269734c6561726e6572223a747275657d";
    const ETCD_PROMOTE: &str = "0889ecf9a7afc9e884581000189af7ad90e0eb8d88ae01223c7b226964223a31323534323538353833393132373539313833342c227065657255524c73223a6e756c6c2c22697350726f6d6f7465223a747275657d";
    const ETCD_UPDATE: &str = "088aecf9a7afc9e884581002189af7ad90e0eb8d88ae01225a7b226964223a31323534323538353833393132373539313833342c227065657255524c73223a5b22687474703a2f2f3132372e302e302e313a3233363232222c22687474703a2f2f3132372e302e302e313a3233363233225d7d";
    const ETCD_PUBLISH: &str = "0881c0a8a8afc9a8cd7b12035055541a262f302f6d656d626572732f616531303337356530323062376239612f6174747269627574657322357b226e616d65223a226e32222c22636c69656e7455524c73223a5b22687474703a2f2f3132372e302e302e313a3233363231225d7d2800320038004800500058006000680070007800800100";
    const ETCD_VERSION: &str = "0884ecf9a7afc9e8845812035055541a0a2f302f76657273696f6e2205332e352e302800320038004800500058006000680070007800800100";
    const N2: u64 = 0xae10375e020b7b9a;

    fn n2(urls: &[&str], learner: bool) -> Member {
        Member {
            id: N2,
            raft_attrs: Some(RaftAttributes { peer_urls: urls.iter().map(|u| u.to_string()).collect(), is_learner: learner }),
            member_attrs: Some(Attributes::default()),
        }
    }

    #[test]
    fn etcd_conf_changes_decode_into_the_member_changes_etcd_applies() {
        let of = |h: &str| decode_member_change(&EtcdConfChange::decode(&hex(h)).unwrap()).unwrap();
        let n1 = of(ETCD_BOOTSTRAP_ADD);
        let MemberChange::Add(m1) = &n1 else { panic!("{n1:?}") };
        assert_eq!(m1.member_attrs.as_ref().unwrap().name, "n1");
        assert_eq!(m1.raft_attrs.as_ref().unwrap().peer_urls, vec!["http://127.0.0.1:23612".to_string()]);
        assert!(!m1.raft_attrs.as_ref().unwrap().is_learner);
        assert_eq!(of(ETCD_ADD_LEARNER), MemberChange::Add(n2(&["http://127.0.0.1:23622"], true)));
        assert_eq!(of(ETCD_PROMOTE), MemberChange::Promote(N2));
        assert_eq!(
            of(ETCD_UPDATE),
            MemberChange::Update { id: N2, peer_urls: vec!["http://127.0.0.1:23622".into(), "http://127.0.0.1:23623".into()] }
        );
    }

    #[test]
    fn proposed_conf_changes_are_etcds_bytes() {
        // etcd's request ID is its own; the rest of the entry is the same byte for byte
        let same = |h: &str, change: MemberChange| {
            let theirs = EtcdConfChange::decode(&hex(h)).unwrap();
            assert_eq!(encode_member_change(theirs.id, &change).encode(), hex(h), "{change:?}");
        };
        same(ETCD_ADD_LEARNER, MemberChange::Add(n2(&["http://127.0.0.1:23622"], true)));
        same(ETCD_PROMOTE, MemberChange::Promote(N2));
        same(
            ETCD_UPDATE,
            MemberChange::Update { id: N2, peer_urls: vec!["http://127.0.0.1:23622".into(), "http://127.0.0.1:23623".into()] },
        );
        let remove = encode_member_change(5, &MemberChange::Remove(N2));
        assert_eq!(decode_member_change(&EtcdConfChange::decode(&remove.encode()).unwrap()), Ok(MemberChange::Remove(N2)));
        let bootstrap = EtcdConfChange::decode(&hex(ETCD_BOOTSTRAP_ADD)).unwrap();
        let n1 = crate::membership::new_member(bootstrap.node_id, "n1", vec!["http://127.0.0.1:23612".into()], false);
        assert_eq!(bootstrap_context(&n1), bootstrap.context);
    }

    #[test]
    fn a_record_of_another_member_or_a_non_json_context_is_refused() {
        let mut cc = EtcdConfChange::decode(&hex(ETCD_ADD_LEARNER)).unwrap();
        cc.node_id = 1;
        assert_eq!(decode_member_change(&cc), Err(EntryFormatError::MemberMismatch { node: 1, record: N2 }));
        // the context etcd-rs wrote before 1.0 (protobuf)
        cc.context = vec![0x12, 0x02, 0x08, 0x01];
        assert!(matches!(decode_member_change(&cc), Err(EntryFormatError::Context(_))));
    }

    #[test]
    fn etcd_v2_publish_and_version_requests_decode_and_are_what_etcd_rs_proposes() {
        let publish = Request::decode(&hex(ETCD_PUBLISH)[..]).unwrap();
        let attrs = Attributes { name: "n2".into(), client_urls: vec!["http://127.0.0.1:23621".into()] };
        assert_eq!(decode_v2(&publish), Ok(V2Write::MemberAttributes { id: N2, attrs: attrs.clone() }));
        assert_eq!(member_attributes_request(publish.id(), N2, &attrs).encode_to_vec(), hex(ETCD_PUBLISH));

        let version = Request::decode(&hex(ETCD_VERSION)[..]).unwrap();
        assert_eq!(decode_v2(&version), Ok(V2Write::ClusterVersion("3.5.0".into())));
        assert_eq!(cluster_version_request(version.id(), "3.5.0").encode_to_vec(), hex(ETCD_VERSION));
    }

    #[test]
    fn bare_v2_requests_are_told_from_internal_raft_requests() {
        assert!(matches!(decode_normal(&hex(ETCD_PUBLISH)), NormalEntry::V2(r) if r.method() == "PUT"));
        assert!(matches!(decode_normal(&hex(ETCD_VERSION)), NormalEntry::V2(r) if r.val() == "3.5.0"));
        for method in ["POST", "DELETE", "QGET", "SYNC"] {
            let mut req = v2_put(1, "/1/k", String::new());
            req.method = Some(method.into());
            assert!(matches!(decode_normal(&req.encode_to_vec()), NormalEntry::V2(r) if r.method() == method));
        }
        let put = InternalRaftRequest { id: 3, put: Some(Default::default()), ..Default::default() };
        assert!(matches!(decode_normal(&put.encode_to_vec()), NormalEntry::V3(r) if r.id == 3));
    }

    #[test]
    fn other_v2_requests_are_not_membership_writes() {
        let mut req = cluster_version_request(1, "3.5.0");
        req.prev_exist = Some(true);
        assert!(matches!(decode_v2(&req), Ok(V2Write::Other { .. })));
        let key = v2_put(1, "/1/foo", "bar".into());
        assert_eq!(decode_v2(&key), Ok(V2Write::Other { method: "PUT".into(), path: "/1/foo".into() }));
        let bad_id = v2_put(1, "/0/members/xyz/attributes", "{}".into());
        assert!(matches!(decode_v2(&bad_id), Ok(V2Write::Other { .. })));
        assert!(decode_v2(&cluster_version_request(1, "garbage")).is_err());
    }
}
