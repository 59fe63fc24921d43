//! etcd's peer protocol ("rafthttp"), as etcd 3.4 and 3.5 members speak it on their peer URLs.
//!
//! - [`codec`]: the bytes of the stream, pipeline and snapshot bodies.

pub mod codec;
