//! etcd's v2 store as a raft snapshot carries it: the `data` of a MsgSnap and of a
//! `member/snap/*.snap` file is the JSON of etcd's whole v2 store, from which etcd 3.4 and 3.5
//! recover the cluster's members, removed members and version (`v2store.Recovery`, then
//! `cluster.Recover`). etcd-rs keeps no v2 keys, so it writes and reads only that part:
//!
//! | v2 path | value |
//! | --- | --- |
//! | `/0/members/<hex id>/raftAttributes` | `{"peerURLs":[..],"isLearner":true?}` |
//! | `/0/members/<hex id>/attributes` | `{"name":..?,"clientURLs":[..]?}`, absent until the member published them |
//! | `/0/removed_members/<hex id>` | empty |
//! | `/0/version` | the cluster version, `3.5.0` |
//! | `/1` | the v2 keyspace: written as an empty directory |
//!
//! Every node is written as Go writes etcd's `node` (Path, CreatedIndex, ModifiedIndex,
//! ExpireTime (zero: permanent), Value, Children: null for a key, an object for a directory),
//! with v2 indexes numbered in the order etcd would have created the nodes. The store's
//! `WatcherHub` (v2 event history) and `Stats` are left out: Go decodes the JSON over the
//! receiver's store, so absent fields keep the receiver's own, while an empty history written
//! out would leave the receiver a queue without slots that its next v2 write indexes into.
//!
//! Invariant: [`parse`] of [`snapshot_json`] gives back its members, removed IDs and version,
//! and parse reads etcd's own JSON with etcd's rules (a member without `raftAttributes`, or
//! with a key other than the two attributes, is refused, as etcd refuses it).

use std::collections::BTreeMap;

use etcd_proto::membershippb::Member;
use serde_json::{Map, Value};

use crate::errors::ServerError;

/// Go's zero `time.Time`: etcd's `Permanent`, a node that never expires.
const PERMANENT: &str = "0001-01-01T00:00:00Z";

/// etcd's v2 store format version (`CurrentVersion`).
const STORE_VERSION: u64 = 2;

/// What etcd recovers from a snapshot's v2 store.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct V2State {
    /// Sorted by ID.
    pub members: Vec<Member>,
    /// Sorted.
    pub removed: Vec<u64>,
    pub cluster_version: Option<String>,
}

fn fail(what: &str, e: impl std::fmt::Display) -> ServerError {
    ServerError::Internal(format!("v2 store snapshot: {what}: {e}"))
}

/// Builds the tree, numbering nodes in creation order as etcd's store would.
struct Tree {
    index: u64,
}

impl Tree {
    fn node(path: &str, index: u64, value: &str, children: Option<Map<String, Value>>) -> Value {
        let mut o = Map::new();
        o.insert("Path".into(), path.into());
        o.insert("CreatedIndex".into(), index.into());
        o.insert("ModifiedIndex".into(), index.into());
        o.insert("ExpireTime".into(), PERMANENT.into());
        o.insert("Value".into(), value.into());
        o.insert("Children".into(), children.map_or(Value::Null, Value::Object));
        Value::Object(o)
    }

    fn next(&mut self) -> u64 {
        self.index += 1;
        self.index
    }

    /// A directory created with its first child (index of that child); children in Go's map
    /// order (sorted as strings: `71e3..` before `c023..`, whatever the IDs' numeric order).
    fn dir(path: &str, children: Vec<(String, Value, u64)>) -> (Value, u64) {
        let index = children.iter().map(|c| c.2).min().unwrap_or(0);
        (Tree::node(path, index, "", Some(Tree::sorted(children))), index)
    }

    fn sorted(mut children: Vec<(String, Value, u64)>) -> Map<String, Value> {
        children.sort_by(|x, y| x.0.cmp(&y.0));
        children.into_iter().map(|(k, v, _)| (k, v)).collect()
    }

    fn member(&mut self, m: &Member) -> (String, Value, u64) {
        let key = format!("{:x}", m.id);
        let path = format!("/0/members/{key}");
        let raft = m.raft_attrs.clone().unwrap_or_default();
        let mut r = Map::new();
        r.insert("peerURLs".into(), raft.peer_urls.into());
        if raft.is_learner {
            r.insert("isLearner".into(), true.into());
        }
        let created = self.next();
        let mut children = vec![(
            "raftAttributes".to_string(),
            Tree::node(&format!("{path}/raftAttributes"), created, &Value::Object(r).to_string(), None),
            created,
        )];
        let attrs = m.member_attrs.clone().unwrap_or_default();
        let mut a = Map::new();
        if !attrs.name.is_empty() {
            a.insert("name".into(), attrs.name.into());
        }
        if !attrs.client_urls.is_empty() {
            a.insert("clientURLs".into(), attrs.client_urls.into());
        }
        if !a.is_empty() {
            let i = self.next();
            children.push(("attributes".into(), Tree::node(&format!("{path}/attributes"), i, &Value::Object(a).to_string(), None), i));
        }
        let (node, index) = Tree::dir(&path, children);
        (key, node, index)
    }
}

/// etcd's v2 store JSON holding these members (learners included), removed member IDs and
/// cluster version: the `data` of a raft snapshot etcd 3.4 and 3.5 recover their membership
/// from.
pub fn snapshot_json(members: &[Member], removed: &[u64], cluster_version: Option<&str>) -> Vec<u8> {
    let mut tree = Tree { index: 0 };
    let mut sorted: Vec<&Member> = members.iter().collect();
    sorted.sort_by_key(|m| m.id);
    let mut under_0 = Vec::new();
    let members: Vec<_> = sorted.iter().map(|m| tree.member(m)).collect();
    if !members.is_empty() {
        let (node, index) = Tree::dir("/0/members", members);
        under_0.push(("members".to_string(), node, index));
    }
    let mut ids = removed.to_vec();
    ids.sort_unstable();
    ids.dedup();
    let removed: Vec<_> = ids
        .iter()
        .map(|id| {
            let i = tree.next();
            (format!("{id:x}"), Tree::node(&format!("/0/removed_members/{id:x}"), i, "", None), i)
        })
        .collect();
    if !removed.is_empty() {
        let (node, index) = Tree::dir("/0/removed_members", removed);
        under_0.push(("removed_members".to_string(), node, index));
    }
    if let Some(v) = cluster_version {
        let i = tree.next();
        under_0.push(("version".to_string(), Tree::node("/0/version", i, v, None), i));
    }
    // etcd creates /0 and /1 with the store, at index 0
    let mut root = Map::new();
    root.insert("0".into(), Tree::node("/0", 0, "", Some(Tree::sorted(under_0))));
    root.insert("1".into(), Tree::node("/1", 0, "", Some(Map::new())));
    let mut store = Map::new();
    store.insert("Root".into(), Tree::node("/", 0, "", Some(root)));
    store.insert("CurrentIndex".into(), tree.index.into());
    store.insert("CurrentVersion".into(), STORE_VERSION.into());
    Value::Object(store).to_string().into_bytes()
}

/// A node of etcd's store JSON, the fields recovery reads.
#[derive(serde::Deserialize)]
struct Node {
    #[serde(rename = "Value", default)]
    value: String,
    #[serde(rename = "Children", default)]
    children: Option<BTreeMap<String, Node>>,
}

#[derive(serde::Deserialize)]
struct Store {
    #[serde(rename = "Root")]
    root: Node,
}

impl Node {
    fn child(&self, name: &str) -> Option<&Node> {
        self.children.as_ref()?.get(name)
    }
}

fn hex_id(what: &str, key: &str) -> Result<u64, ServerError> {
    u64::from_str_radix(key, 16).map_err(|_| fail(what, format!("{key:?} is not a hex member ID")))
}

/// One member from its v2 directory: `raftAttributes` and `attributes` are the two halves of
/// etcd's member JSON, so they are merged and read as one (etcd_backend.rs's decoder).
fn member_of(key: &str, dir: &Node) -> Result<Member, ServerError> {
    let id = hex_id("member", key)?;
    let mut merged = Map::new();
    merged.insert("id".into(), id.into());
    let mut has_raft = false;
    for (name, node) in dir.children.iter().flatten() {
        match name.as_str() {
            "raftAttributes" => has_raft = true,
            "attributes" => {}
            other => return Err(fail("member", format!("unknown key \"/0/members/{key}/{other}\""))),
        }
        let half: Map<String, Value> =
            serde_json::from_str(&node.value).map_err(|e| fail(&format!("member {key} {name}"), e))?;
        merged.extend(half);
    }
    if !has_raft {
        return Err(fail("member", format!("{key}: raftAttributes key doesn't exist")));
    }
    crate::etcd_backend::member_from_json(Value::Object(merged).to_string().as_bytes())
}

/// The members, removed IDs and cluster version in etcd's v2 store JSON (a raft snapshot's
/// data), read as etcd's `cluster.Recover` reads them.
pub fn parse(json: &[u8]) -> Result<V2State, ServerError> {
    let store: Store = serde_json::from_slice(json).map_err(|e| fail("JSON", e))?;
    let mut state = V2State::default();
    let Some(cluster) = store.root.child("0") else { return Ok(state) };
    if let Some(members) = cluster.child("members") {
        for (key, dir) in members.children.iter().flatten() {
            state.members.push(member_of(key, dir)?);
        }
    }
    if let Some(removed) = cluster.child("removed_members") {
        for key in removed.children.iter().flatten().map(|(k, _)| k) {
            state.removed.push(hex_id("removed member", key)?);
        }
    }
    state.cluster_version = cluster.child("version").map(|n| n.value.clone());
    state.members.sort_by_key(|m| m.id);
    state.removed.sort_unstable();
    Ok(state)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::membership::new_member;

    fn fixture(name: &str) -> Vec<u8> {
        std::fs::read(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)).unwrap()
    }

    fn with_client_urls(mut m: Member, urls: &[&str]) -> Member {
        m.member_attrs.as_mut().unwrap().client_urls = urls.iter().map(|u| u.to_string()).collect();
        m
    }

    /// etcd started a member, added a learner (never started: no attributes), then added and
    /// removed another learner; the snapshot is the last member/snap/*.snap file's data.
    fn etcd_wrote(json: &[u8], voter: (u64, u16), learner: (u64, u16), removed: u64, version: &str) {
        let state = parse(json).unwrap();
        let v = with_client_urls(
            new_member(voter.0, "e0", vec![format!("http://127.0.0.1:{}", voter.1 + 1)], false),
            &[&format!("http://127.0.0.1:{}", voter.1)],
        );
        let peers = vec![format!("http://127.0.0.1:{}", voter.1 + 2), format!("http://127.0.0.2:{}", voter.1 + 2)];
        let l = new_member(learner.0, "", peers, true);
        let mut want = vec![v, l];
        want.sort_by_key(|m| m.id);
        assert_eq!(state, V2State { members: want, removed: vec![removed], cluster_version: Some(version.into()) });
    }

    #[test]
    fn members_learners_removed_ids_and_version_are_read_from_etcd_3_5_1s_snapshot() {
        let json = fixture("v2store-etcd-3.5.1.json");
        etcd_wrote(&json, (0xbac7efc361f1457e, 23791), (0xb1d4d4bc591f49f9, 23791), 0x91380c778a8e2945, "3.5.0");
    }

    #[test]
    fn members_learners_removed_ids_and_version_are_read_from_etcd_3_4_23s_snapshot() {
        let json = fixture("v2store-etcd-3.4.23.json");
        etcd_wrote(&json, (0x0c0234bda4e532fe, 23891), (0x71e3b7f62ef4b702, 23891), 0x39aaa269f6cfb45d, "3.4.0");
    }

    #[test]
    fn what_is_written_parses_back_and_has_etcds_tree_for_the_same_cluster() {
        for name in ["v2store-etcd-3.5.1.json", "v2store-etcd-3.4.23.json"] {
            let etcd: Value = serde_json::from_slice(&fixture(name)).unwrap();
            let state = parse(&fixture(name)).unwrap();
            let ours = snapshot_json(&state.members, &state.removed, state.cluster_version.as_deref());
            assert_eq!(parse(&ours).unwrap(), state, "{name}");
            // the same paths, values and kinds (key or directory) as etcd's own tree
            fn shape(n: &Value, out: &mut Vec<(String, String, bool)>) {
                let children = &n["Children"];
                out.push((n["Path"].as_str().unwrap().into(), n["Value"].as_str().unwrap().into(), children.is_object()));
                for c in children.as_object().into_iter().flat_map(|m| m.values()) {
                    shape(c, out);
                }
            }
            let ours: Value = serde_json::from_slice(&ours).unwrap();
            let (mut a, mut b) = (Vec::new(), Vec::new());
            shape(&ours["Root"], &mut a);
            shape(&etcd["Root"], &mut b);
            assert_eq!(a, b, "{name}");
            assert_eq!(ours["CurrentVersion"], etcd["CurrentVersion"]);
            assert_eq!(ours["Root"]["Children"]["0"]["ExpireTime"], etcd["Root"]["Children"]["0"]["ExpireTime"]);
        }
    }

    #[test]
    fn an_empty_cluster_and_one_without_version_round_trip() {
        assert_eq!(parse(&snapshot_json(&[], &[], None)).unwrap(), V2State::default());
        let m = new_member(1, "", vec![], false);
        let s = parse(&snapshot_json(&[m.clone()], &[3, 2, 3], None)).unwrap();
        assert_eq!(s, V2State { members: vec![m], removed: vec![2, 3], cluster_version: None });
    }

    #[test]
    fn members_etcd_would_refuse_are_refused() {
        let tree = |member: &str| {
            format!(r#"{{"Root":{{"Children":{{"0":{{"Children":{{"members":{{"Children":{{{member}}}}}}}}}}}}}}}"#)
        };
        let raft = r#""raftAttributes":{"Value":"{\"peerURLs\":[\"http://a:1\"]}","Children":null}"#;
        assert_eq!(parse(tree(&format!(r#""a":{{"Children":{{{raft}}}}}"#)).as_bytes()).unwrap().members[0].id, 10);
        let no_raft = format!(r#""a":{{"Children":{{"attributes":{{"Value":"{{}}"}}}}}}"#);
        assert!(parse(tree(&no_raft).as_bytes()).unwrap_err().to_string().contains("raftAttributes key doesn't exist"));
        let unknown = format!(r#""a":{{"Children":{{{raft},"other":{{"Value":""}}}}}}"#);
        assert!(parse(tree(&unknown).as_bytes()).unwrap_err().to_string().contains("unknown key"));
        let bad_id = format!(r#""xyz":{{"Children":{{{raft}}}}}"#);
        assert!(parse(tree(&bad_id).as_bytes()).is_err());
        let bad_value = r#""a":{"Children":{"raftAttributes":{"Value":"not json"}}}"#;
        assert!(parse(tree(bad_value).as_bytes()).is_err());
        assert!(parse(b"not json").is_err());
        assert!(parse(b"{}").is_err(), "no Root");
    }
}
