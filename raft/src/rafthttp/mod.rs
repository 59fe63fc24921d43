//! etcd's peer protocol ("rafthttp"), as etcd 3.4 and 3.5 members speak it on their peer URLs,
//! so etcd and etcd-rs members can form one cluster.
//!
//! - [`codec`]: the bytes of the stream, pipeline and snapshot bodies;
//! - [`headers`]: member IDs as etcd writes them, and the cluster-ID and version checks every
//!   raft request passes (`412 Precondition Failed` with etcd's texts when they fail);
//! - [`host`]: [`RaftHost`], what the server provides (deliver a message to raft, who is
//!   removed, the snapshot sink, the unreachable / snapshot-status reports);
//! - [`handler`]: the server side, a hyper service for the peer listener's `/raft...` paths;
//! - [`client`]: HTTP/1.1 requests to a peer (stream GETs, pipeline and snapshot POSTs) and how
//!   their answers are read;
//! - [`transport`]: [`HttpTransport`], the [`crate::Transport`] that routes raft's messages onto
//!   the streams, the pipeline or the snapshot path, and reads the peers' streams;
//! - [`peer_api`]: the other peer endpoints (`/members`, `/version`, `/members/promote/<id>`,
//!   `/leases`, `/leases/internal`, `/members/hashkv`, `/downgrade/enabled`) and their formats.
//!
//! How the two streams work (the easy thing to get backwards): member A *reads* B's messages
//! by sending `GET /raft/stream/{msgapp,message}/<A>` to B; B answers 200 and then *writes*
//! its messages to A in that response body, for as long as the connection lives. So the
//! handler side of a stream is its writer, and the dialling side is its reader.
//!
//! Invariant: the raft loop never waits on the network ([`crate::Transport::send`] only
//! queues); a message that cannot be queued is dropped and the peer reported unreachable, as
//! etcd does, and raft retransmits.

pub mod client;
pub mod codec;
pub mod handler;
pub mod headers;
pub mod host;
pub mod peer_api;
pub mod transport;

pub use handler::RaftHttpHandler;
pub use host::{ProcessError, RaftHost};
pub use transport::{HttpTransport, StreamTimeouts, TransportConfig};

/// `POST /raft`: one message (the pipeline).
pub const RAFT_PATH: &str = "/raft";
/// `GET /raft/stream/msgapp/<from>`: the msgappv2 stream (etcd's path says "msgapp").
pub const STREAM_MSGAPP_PREFIX: &str = "/raft/stream/msgapp/";
/// `GET /raft/stream/message/<from>`: the message stream.
pub const STREAM_MESSAGE_PREFIX: &str = "/raft/stream/message/";
/// `POST /raft/snapshot`: a MsgSnap frame, then the database.
pub const SNAPSHOT_PATH: &str = "/raft/snapshot";
/// `GET /raft/probing`: round-trip probes.
pub const PROBING_PATH: &str = "/raft/probing";

/// etcd's `ConnReadTimeout`: a stream silent this long is dead; writers send a link heartbeat
/// every third of it.
pub const CONN_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// The two streams a member opens to each peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StreamType {
    /// MsgApp only, msgappv2-encoded.
    MsgApp,
    /// Every other message, `message`-framed.
    Message,
}

impl StreamType {
    pub fn path_prefix(self) -> &'static str {
        match self {
            StreamType::MsgApp => STREAM_MSGAPP_PREFIX,
            StreamType::Message => STREAM_MESSAGE_PREFIX,
        }
    }

    /// etcd's name for it in logs.
    pub fn name(self) -> &'static str {
        match self {
            StreamType::MsgApp => "stream MsgApp v2",
            StreamType::Message => "stream Message",
        }
    }
}
