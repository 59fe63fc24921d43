//! `Transport`: how the raft loop hands messages to peers.
//!
//! The loop calls [`Transport::send`] from its own thread and must never block
//! on the network: an implementation queues the messages and returns. Lost
//! messages are fine (raft retries); reordering between peers is fine.

use raft::eraftpb::Message;

/// Sends raft messages to other members.
pub trait Transport: Send + Sync {
    /// Queues `msgs` for delivery to their `to` members. Must not block.
    fn send(&self, msgs: Vec<Message>);
}

/// The transport of a single-member cluster: there is nobody to send to.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoopTransport;

impl Transport for NoopTransport {
    fn send(&self, msgs: Vec<Message>) {
        if !msgs.is_empty() {
            tracing::trace!(count = msgs.len(), "dropping raft messages: no peers");
        }
    }
}
