//! The peer endpoints other than raft's (etcd's `etcdhttp/peer.go`, `leasehttp`, the hashKV
//! handler); filled in below.
