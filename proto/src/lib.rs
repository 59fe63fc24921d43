//! etcd's v3 wire protocol, generated at build time from the `.proto` files in `proto/`.
//!
//! Field names, numbers and enum values match etcd exactly (3.4 files plus the fields and
//! RPCs added in 3.5/3.6), because every etcd client depends on them.

#![allow(clippy::all, missing_docs)]

pub mod mvccpb {
    tonic::include_proto!("mvccpb");
}
pub mod authpb {
    tonic::include_proto!("authpb");
}
pub mod membershippb {
    tonic::include_proto!("membershippb");
}
pub mod etcdserverpb {
    tonic::include_proto!("etcdserverpb");
}
pub mod leasepb {
    tonic::include_proto!("leasepb");
}
pub mod v3lockpb {
    tonic::include_proto!("v3lockpb");
}
pub mod v3electionpb {
    tonic::include_proto!("v3electionpb");
}
/// etcd-rs's own peer-to-peer service (raft message streams, membership for joining members).
pub mod etcdrspb {
    tonic::include_proto!("etcdrspb");
}
