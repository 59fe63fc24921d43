//! etcd-rs's server: `EtcdServer` (bootstrap, apply, reads), cluster membership, the gRPC
//! services and the configuration of the `etcd-rs` binary.

pub mod alarms;
pub mod apply;
pub mod backup;
pub mod cluster_version;
mod coalesced_writes;
mod apply_auth;
mod apply_lease;
pub mod compact_hash_check;
pub mod compactor;
pub mod config;
pub mod config_file;
pub mod config_renamed;
pub mod corrupt;
pub mod discovery;
mod entry_format;
pub mod errors;
pub mod etcd_backend;
pub mod etcd_server;
pub mod etcdutl;
pub mod feature_gates;
pub mod grpc;
pub mod health;
pub mod ids;
pub mod logging;
pub mod membership;
pub mod metrics;
pub mod peer_host;
pub mod restore;
pub mod serve;
pub mod snapshot;
pub mod takeover;
pub mod tls;
pub mod wait;
pub mod v2store;

pub use etcd_server::EtcdServer;
