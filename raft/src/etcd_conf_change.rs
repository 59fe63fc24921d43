//! etcd's `raftpb.ConfChange` (V1), as etcd writes it in the raft log: the conf change entries
//! etcd and etcd-rs members share.
//!
//! Invariant: conf change entries in the log carry etcd's bytes and etcd's `ConfChangeType`
//! numbering (AddNode 0, RemoveNode 1, UpdateNode 2, AddLearnerNode 3). raft-rs numbers them
//! differently (AddLearnerNode 2, no UpdateNode), so it only ever sees the translation made
//! here ([`EtcdConfChange::to_raft`]); nothing else decodes these bytes with raft-rs's types.

use protobuf::{CodedInputStream, CodedOutputStream};
use raft::eraftpb::{ConfChangeSingle, ConfChangeType, ConfChangeV2};

/// etcd's `raftpb.ConfChangeType`, with etcd's numbers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EtcdConfChangeType {
    AddNode = 0,
    RemoveNode = 1,
    /// A member's peer URLs change; raft's configuration does not (a no-op in etcd's raft).
    UpdateNode = 2,
    AddLearnerNode = 3,
}

impl EtcdConfChangeType {
    fn from_number(n: u64) -> Option<Self> {
        match n {
            0 => Some(Self::AddNode),
            1 => Some(Self::RemoveNode),
            2 => Some(Self::UpdateNode),
            3 => Some(Self::AddLearnerNode),
            _ => None,
        }
    }

    /// etcd's name for it (`raftpb.ConfChangeType.String()`), for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::AddNode => "ConfChangeAddNode",
            Self::RemoveNode => "ConfChangeRemoveNode",
            Self::UpdateNode => "ConfChangeUpdateNode",
            Self::AddLearnerNode => "ConfChangeAddLearnerNode",
        }
    }
}

/// One etcd `raftpb.ConfChange`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EtcdConfChange {
    /// The proposer's wait-registry ID (0 in the bootstrap entries).
    pub id: u64,
    pub change_type: EtcdConfChangeType,
    pub node_id: u64,
    /// The server's context (etcd: the JSON member record; none for a removal).
    pub context: Vec<u8>,
}

/// Why conf change bytes are not an etcd `ConfChange`.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfChangeDecodeError {
    #[error("not a protobuf ConfChange: {0}")]
    Malformed(String),
    #[error("unknown ConfChangeType {0}")]
    UnknownType(u64),
}

impl EtcdConfChange {
    /// The bytes etcd (gogoproto, proto2 non-nullable fields) writes: ID, Type and NodeID always,
    /// Context when there is one.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.context.len() + 24);
        let mut os = CodedOutputStream::vec(&mut out);
        let written = os
            .write_uint64(1, self.id)
            .and_then(|_| os.write_uint64(2, self.change_type as u64))
            .and_then(|_| os.write_uint64(3, self.node_id))
            .and_then(|_| match self.context.is_empty() {
                true => Ok(()),
                false => os.write_bytes(4, &self.context),
            })
            .and_then(|_| os.flush());
        // writing into a Vec cannot fail
        debug_assert!(written.is_ok());
        drop(os);
        out
    }

    /// Reads etcd's bytes; fields it does not know are skipped, as gogoproto does.
    pub fn decode(data: &[u8]) -> Result<Self, ConfChangeDecodeError> {
        let malformed = |e: protobuf::ProtobufError| ConfChangeDecodeError::Malformed(e.to_string());
        let mut is = CodedInputStream::from_bytes(data);
        let (mut id, mut kind, mut node_id, mut context) = (0, 0, 0, Vec::new());
        while !is.eof().map_err(malformed)? {
            let (field, wire_type) = is.read_tag_unpack().map_err(malformed)?;
            use protobuf::wire_format::WireType::{WireTypeLengthDelimited as Bytes, WireTypeVarint as Varint};
            match (field, wire_type) {
                (1, Varint) => id = is.read_uint64().map_err(malformed)?,
                (2, Varint) => kind = is.read_uint64().map_err(malformed)?,
                (3, Varint) => node_id = is.read_uint64().map_err(malformed)?,
                (4, Bytes) => context = is.read_bytes().map_err(malformed)?,
                (1..=4, w) => {
                    return Err(ConfChangeDecodeError::Malformed(format!("field {field} has wire type {w:?}")))
                }
                (_, w) => is.skip_field(w).map_err(malformed)?,
            }
        }
        let change_type = EtcdConfChangeType::from_number(kind).ok_or(ConfChangeDecodeError::UnknownType(kind))?;
        Ok(EtcdConfChange { id, change_type, node_id, context })
    }

    /// The change raft-rs applies: None for UpdateNode, which changes no raft configuration
    /// (etcd's raft ignores it too).
    pub fn to_raft(&self) -> Option<ConfChangeV2> {
        let kind = match self.change_type {
            EtcdConfChangeType::AddNode => ConfChangeType::AddNode,
            EtcdConfChangeType::RemoveNode => ConfChangeType::RemoveNode,
            EtcdConfChangeType::AddLearnerNode => ConfChangeType::AddLearnerNode,
            EtcdConfChangeType::UpdateNode => return None,
        };
        let mut single = ConfChangeSingle::default();
        single.set_change_type(kind);
        single.node_id = self.node_id;
        let mut cc = ConfChangeV2::default();
        cc.mut_changes().push(single);
        Some(cc)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_as_gogoproto_with_etcds_numbers() {
        let cc = EtcdConfChange { id: 0, change_type: EtcdConfChangeType::AddLearnerNode, node_id: 5, context: b"{}".to_vec() };
        // ID 0 is still written (proto2, non-nullable); Type 3 is etcd's AddLearnerNode
        assert_eq!(cc.encode(), vec![0x08, 0x00, 0x10, 0x03, 0x18, 0x05, 0x22, 0x02, b'{', b'}']);
        let remove = EtcdConfChange { id: 7, change_type: EtcdConfChangeType::RemoveNode, node_id: 5, context: Vec::new() };
        assert_eq!(remove.encode(), vec![0x08, 0x07, 0x10, 0x01, 0x18, 0x05]);
        assert_eq!(EtcdConfChange::decode(&cc.encode()), Ok(cc));
        assert_eq!(EtcdConfChange::decode(&remove.encode()), Ok(remove));
    }

    #[test]
    fn translates_etcd_types_to_raft_rs_and_update_to_no_raft_change() {
        let of = |t| EtcdConfChange { id: 1, change_type: t, node_id: 9, context: Vec::new() }.to_raft();
        let single = |t| of(t).map(|cc| (cc.get_changes()[0].get_change_type(), cc.get_changes()[0].node_id));
        assert_eq!(single(EtcdConfChangeType::AddNode), Some((ConfChangeType::AddNode, 9)));
        assert_eq!(single(EtcdConfChangeType::AddLearnerNode), Some((ConfChangeType::AddLearnerNode, 9)));
        assert_eq!(single(EtcdConfChangeType::RemoveNode), Some((ConfChangeType::RemoveNode, 9)));
        assert_eq!(of(EtcdConfChangeType::UpdateNode), None);
    }

    #[test]
    fn refuses_unknown_types_and_garbage() {
        assert_eq!(EtcdConfChange::decode(&[0x10, 0x04]), Err(ConfChangeDecodeError::UnknownType(4)));
        assert!(matches!(EtcdConfChange::decode(&[0x22, 0x05, b'x']), Err(ConfChangeDecodeError::Malformed(_))));
        assert!(matches!(EtcdConfChange::decode(&[0x12, 0x00]), Err(ConfChangeDecodeError::Malformed(_))));
    }

    #[test]
    fn a_conf_change_v2_entry_is_refused_as_a_pre_1_0_etcd_rs_log() {
        use raft::eraftpb::{Entry, EntryType};
        let mut e = Entry::default();
        e.set_entry_type(EntryType::EntryConfChangeV2);
        e.index = 12;
        let err = crate::recovery::etcd_conf_change_of(&e).unwrap_err();
        assert!(matches!(err, crate::RaftError::ConfChangeEntry { index: 12, .. }), "{err}");
        assert!(err.to_string().contains("before 1.0"), "{err}");
        e.set_entry_type(EntryType::EntryNormal);
        assert!(crate::recovery::etcd_conf_change_of(&e).unwrap().is_none());
    }
}
