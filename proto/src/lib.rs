//! etcd's v3 wire protocol, generated at build time from the `.proto` files in `proto/`.
//!
//! Field names, numbers and enum values match etcd exactly (3.4 files plus the fields and
//! RPCs added in 3.5/3.6), because every etcd client depends on them.

#![allow(clippy::all, missing_docs)]

pub mod codec;

pub mod mvccpb {
    tonic::include_proto!("mvccpb");
    include!(concat!(env!("OUT_DIR"), "/mvccpb.serde.rs"));
}
pub mod authpb {
    tonic::include_proto!("authpb");
    include!(concat!(env!("OUT_DIR"), "/authpb.serde.rs"));
}
pub mod membershippb {
    tonic::include_proto!("membershippb");
    include!(concat!(env!("OUT_DIR"), "/membershippb.serde.rs"));
}
pub mod etcdserverpb {
    tonic::include_proto!("etcdserverpb");
    include!(concat!(env!("OUT_DIR"), "/etcdserverpb.serde.rs"));
}
pub mod leasepb {
    tonic::include_proto!("leasepb");
}
pub mod v3lockpb {
    tonic::include_proto!("v3lockpb");
    include!(concat!(env!("OUT_DIR"), "/v3lockpb.serde.rs"));
}
pub mod v3electionpb {
    tonic::include_proto!("v3electionpb");
    include!(concat!(env!("OUT_DIR"), "/v3electionpb.serde.rs"));
}
/// The gRPC health checking protocol (`grpc.health.v1.Health`), as etcd serves it.
pub mod grpc_health_v1 {
    tonic::include_proto!("grpc.health.v1");
}
/// etcd's raft messages (`raftpb`), as etcd's WAL, snap files and peer protocol carry them.
pub mod raftpb {
    tonic::include_proto!("raftpb");
}
/// etcd's WAL record and WAL snapshot marker (`walpb`).
pub mod walpb {
    tonic::include_proto!("walpb");
}
/// etcd's snap file body (`snappb`).
pub mod snappb {
    tonic::include_proto!("snappb");
}
