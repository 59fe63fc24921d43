//! Compiles etcd's .proto files with protox (pure Rust), so a build needs no `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/mvccpb/kv.proto",
        "proto/authpb/auth.proto",
        "proto/etcdserverpb/rpc.proto",
        "proto/etcdserverpb/etcdserver.proto",
        "proto/etcdserverpb/raft_internal.proto",
        "proto/membershippb/membership.proto",
        "proto/leasepb/lease.proto",
        "proto/v3lockpb/v3lock.proto",
        "proto/v3electionpb/v3election.proto",
        "proto/grpc/health/v1/health.proto",
        "proto/raftpb/raft.proto",
        "proto/walpb/record.proto",
        "proto/snappb/snap.proto",
    ];
    let fds = protox::compile(files, ["proto"])?;
    // JSON for the gRPC gateway (`/v3/...`): proto3 JSON mapping with the .proto field names, as
    // etcd's grpc-gateway marshals (OrigName); unknown fields are skipped, as its jsonpb decoder does.
    let descriptors = prost::Message::encode_to_vec(&fds);
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .codec_path("crate::codec::EtcdCodec")
        .compile_fds(fds)?;
    pbjson_build::Builder::new()
        .register_descriptors(&descriptors)?
        .preserve_proto_field_names()
        .ignore_unknown_fields()
        .build(&[".etcdserverpb", ".mvccpb", ".authpb", ".membershippb", ".v3lockpb", ".v3electionpb"])?;
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    Ok(())
}
