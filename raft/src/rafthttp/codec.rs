//! The bytes of etcd's peer protocol bodies, as etcd 3.4/3.5 write them.
//!
//! - `message` stream (`GET /raft/stream/message/<from>`, and the head of a snapshot body):
//!   frames of an 8-byte big-endian length followed by that many bytes of a raftpb `Message`.
//!   A link heartbeat is the frame of `Message{type: MsgHeartbeat}` with every other field zero.
//! - `msgappv2` stream (`GET /raft/stream/msgapp/<from>`: the path says msgapp, the encoding is v2): one type byte, then
//!   - `0` link heartbeat (nothing follows);
//!   - `1` AppEntries: u64 count, count × (u64 size, Entry bytes), u64 commit. The message's
//!     term, log term and index are implicit: the term of the last `2` frame and the index of
//!     the last entry sent, both carried as state across frames; from/to are the stream's ends;
//!   - `2` a full `MsgApp`: u64 size, Message bytes (resets the carried term and index).
//! - pipeline (`POST /raft`): the body is one Message, no framing.
//! - snapshot (`POST /raft/snapshot`): one `message` frame holding the MsgSnap, then the
//!   database bytes up to the end of the body.
//!
//! raftpb `Message` and `Entry` bytes are what raft-rs's eraftpb reads: the field numbers and
//! enum values are the same. etcd (gogoproto, proto2, non-nullable) writes zero fields and an
//! always-present `snapshot`; raft-rs (proto3) omits zeros; each reads the other's. raft-rs's
//! extra fields (`commit_term` 15, `request_snapshot` 13, `priority` 14/16) are skipped by
//! etcd, and msgappv2 AppEntries frames cannot carry them.
//!
//! Invariant: a decoder never panics and never allocates more than its length limit on
//! untrusted input; it consumes a frame only when all of it is present, so the carried
//! msgappv2 state changes only on a complete frame.

use protobuf::Message as _;
use raft::eraftpb::{Entry, Message, MessageType};

/// The largest message etcd's stream decoder accepts (512 MiB, `readBytesLimit`).
pub const MAX_MESSAGE_BYTES: u64 = 512 * 1024 * 1024;

const MSGAPPV2_LINK_HEARTBEAT: u8 = 0;
const MSGAPPV2_APP_ENTRIES: u8 = 1;
const MSGAPPV2_APP: u8 = 2;

/// Why bytes from a peer are not a valid frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    /// etcd's `ErrExceedSizeLimit` text.
    #[error("rafthttp: error limit exceeded")]
    TooLarge,
    #[error("failed to parse type {0} in msgappv2 stream")]
    UnknownMsgAppV2Type(u8),
    /// The protobuf decoder's own words (etcd shows gogoproto's, e.g. "unexpected EOF").
    #[error("{0}")]
    BadMessage(String),
    #[error("bad raft entry bytes: {0}")]
    BadEntry(String),
    #[error("the stream ended inside a frame")]
    Truncated,
}

/// The link heartbeat etcd's stream writers send every 5s/3 when idle.
pub fn link_heartbeat() -> Message {
    let mut m = Message::default();
    m.set_msg_type(MessageType::MsgHeartbeat);
    m
}

/// etcd's `isLinkHeartbeatMessage`: a heartbeat with neither ends set.
pub fn is_link_heartbeat(m: &Message) -> bool {
    m.get_msg_type() == MessageType::MsgHeartbeat && m.from == 0 && m.to == 0
}

/// The bytes of one raftpb Message (the pipeline body).
pub fn encode_message(m: &Message) -> Vec<u8> {
    // writing to a Vec cannot fail for a message built in memory
    m.write_to_bytes().unwrap_or_default()
}

/// A raftpb Message from bytes (the pipeline body).
pub fn decode_message(b: &[u8]) -> Result<Message, CodecError> {
    Message::parse_from_bytes(b).map_err(|e| CodecError::BadMessage(e.to_string()))
}

/// Appends one `message` stream frame to `out`.
pub fn encode_message_frame(m: &Message, out: &mut Vec<u8>) {
    let b = encode_message(m);
    out.extend_from_slice(&(b.len() as u64).to_be_bytes());
    out.extend_from_slice(&b);
}

/// The head of a `POST /raft/snapshot` body: the MsgSnap frame; the database bytes follow it.
pub fn encode_snapshot_head(m: &Message) -> Vec<u8> {
    let mut out = Vec::new();
    encode_message_frame(m, &mut out);
    out
}

/// A cursor over buffered bytes that reports "not yet" instead of failing on a short read.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn u8(&mut self) -> Option<u8> {
        let b = *self.buf.get(self.pos)?;
        self.pos += 1;
        Some(b)
    }
    fn u64(&mut self) -> Option<u64> {
        let b = self.bytes(8)?;
        Some(u64::from_be_bytes(b.try_into().ok()?))
    }
    fn bytes(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.pos.checked_add(n)?;
        let b = self.buf.get(self.pos..end)?;
        self.pos = end;
        Some(b)
    }
}

/// Reads `message` stream frames from a growing buffer.
#[derive(Debug, Clone)]
pub struct MessageDecoder {
    limit: u64,
}

impl Default for MessageDecoder {
    fn default() -> Self {
        MessageDecoder { limit: MAX_MESSAGE_BYTES }
    }
}

impl MessageDecoder {
    pub fn with_limit(limit: u64) -> MessageDecoder {
        MessageDecoder { limit }
    }

    /// The next message and the bytes it took, or `None` until the whole frame is in `buf`.
    pub fn decode(&mut self, buf: &[u8]) -> Result<Option<(Message, usize)>, CodecError> {
        let mut c = Cursor { buf, pos: 0 };
        let Some(len) = c.u64() else { return Ok(None) };
        if len > self.limit {
            return Err(CodecError::TooLarge);
        }
        let Some(body) = c.bytes(len as usize) else { return Ok(None) };
        Ok(Some((decode_message(body)?, c.pos)))
    }
}

/// The state both ends of a msgappv2 stream carry: the term and the index of the last entry
/// sent, so an append continuing the last one needs neither.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct MsgAppV2State {
    term: u64,
    index: u64,
}

/// Writes MsgApp (and link heartbeats) in etcd's msgappv2 encoding.
#[derive(Debug, Default)]
pub struct MsgAppV2Encoder {
    state: MsgAppV2State,
}

impl MsgAppV2Encoder {
    /// Appends the encoding of `m` (a MsgApp or a link heartbeat) to `out`.
    pub fn encode(&mut self, m: &Message, out: &mut Vec<u8>) {
        if is_link_heartbeat(m) {
            out.push(MSGAPPV2_LINK_HEARTBEAT);
            return;
        }
        let s = self.state;
        // etcd's rule: the short form only when the append continues the last one in the same
        // term (and raft-rs's extra fields, which the short form drops, are unset)
        if s.index == m.index && s.term == m.log_term && m.log_term == m.term && !has_rs_only_fields(m) {
            out.push(MSGAPPV2_APP_ENTRIES);
            out.extend_from_slice(&(m.entries.len() as u64).to_be_bytes());
            for e in m.entries.iter() {
                let b = e.write_to_bytes().unwrap_or_default();
                out.extend_from_slice(&(b.len() as u64).to_be_bytes());
                out.extend_from_slice(&b);
                self.state.index += 1;
            }
            out.extend_from_slice(&m.commit.to_be_bytes());
            return;
        }
        let b = encode_message(m);
        out.push(MSGAPPV2_APP);
        out.extend_from_slice(&(b.len() as u64).to_be_bytes());
        out.extend_from_slice(&b);
        self.state = MsgAppV2State { term: m.term, index: m.entries.last().map_or(m.index, |e| e.index) };
    }
}

fn has_rs_only_fields(m: &Message) -> bool {
    m.commit_term != 0 || m.request_snapshot != 0 || m.priority != 0 || m.deprecated_priority != 0
}

/// Reads etcd's msgappv2 stream from a growing buffer.
#[derive(Debug)]
pub struct MsgAppV2Decoder {
    /// Us, the reader: the `to` of AppEntries messages.
    local: u64,
    /// The peer writing the stream: the `from` of AppEntries messages.
    remote: u64,
    limit: u64,
    state: MsgAppV2State,
}

impl MsgAppV2Decoder {
    pub fn new(local: u64, remote: u64) -> MsgAppV2Decoder {
        MsgAppV2Decoder { local, remote, limit: MAX_MESSAGE_BYTES, state: MsgAppV2State::default() }
    }

    pub fn with_limit(mut self, limit: u64) -> MsgAppV2Decoder {
        self.limit = limit;
        self
    }

    /// The next message and the bytes it took, or `None` until the whole frame is in `buf`.
    /// A link heartbeat comes out as [`link_heartbeat`].
    pub fn decode(&mut self, buf: &[u8]) -> Result<Option<(Message, usize)>, CodecError> {
        let mut c = Cursor { buf, pos: 0 };
        let Some(typ) = c.u8() else { return Ok(None) };
        match typ {
            MSGAPPV2_LINK_HEARTBEAT => Ok(Some((link_heartbeat(), c.pos))),
            MSGAPPV2_APP_ENTRIES => {
                let Some(count) = c.u64() else { return Ok(None) };
                // each entry takes at least its 8-byte size: a count beyond the limit is a lie
                if count > self.limit / 8 {
                    return Err(CodecError::TooLarge);
                }
                // the frame is found whole before any entry is parsed: a large frame arrives
                // over many reads, and each incomplete attempt would parse its entries again
                let start = c.pos;
                let mut total = 0u64;
                for _ in 0..count {
                    let Some(size) = c.u64() else { return Ok(None) };
                    total = total.saturating_add(size).saturating_add(8);
                    if total > self.limit {
                        return Err(CodecError::TooLarge);
                    }
                    if c.bytes(size as usize).is_none() {
                        return Ok(None);
                    }
                }
                let Some(commit) = c.u64() else { return Ok(None) };
                let mut entries = Vec::with_capacity(count as usize);
                let mut framed = Cursor { buf: &buf[..c.pos], pos: start };
                for _ in 0..count {
                    let b = framed.u64().and_then(|size| framed.bytes(size as usize)).expect("walked above");
                    entries.push(Entry::parse_from_bytes(b).map_err(|e| CodecError::BadEntry(e.to_string()))?);
                }
                let mut m = Message::default();
                m.set_msg_type(MessageType::MsgAppend);
                m.from = self.remote;
                m.to = self.local;
                m.term = self.state.term;
                m.log_term = self.state.term;
                m.index = self.state.index;
                m.commit = commit;
                m.set_entries(entries.into());
                self.state.index += count;
                Ok(Some((m, c.pos)))
            }
            MSGAPPV2_APP => {
                let Some(size) = c.u64() else { return Ok(None) };
                if size > self.limit {
                    return Err(CodecError::TooLarge);
                }
                let Some(b) = c.bytes(size as usize) else { return Ok(None) };
                let m = decode_message(b)?;
                self.state = MsgAppV2State { term: m.term, index: m.entries.last().map_or(m.index, |e| e.index) };
                Ok(Some((m, c.pos)))
            }
            other => Err(CodecError::UnknownMsgAppV2Type(other)),
        }
    }
}

/// Either stream's decoder, chosen by the stream type.
#[derive(Debug)]
pub enum StreamDecoder {
    Message(MessageDecoder),
    MsgAppV2(MsgAppV2Decoder),
}

impl StreamDecoder {
    pub fn decode(&mut self, buf: &[u8]) -> Result<Option<(Message, usize)>, CodecError> {
        match self {
            StreamDecoder::Message(d) => d.decode(buf),
            StreamDecoder::MsgAppV2(d) => d.decode(buf),
        }
    }

    /// Every complete message in `buf`, consuming their bytes; the partial tail stays.
    pub fn drain(&mut self, buf: &mut Vec<u8>) -> Result<Vec<Message>, CodecError> {
        let mut out = Vec::new();
        let mut used = 0;
        while let Some((m, n)) = self.decode(&buf[used..])? {
            used += n;
            out.push(m);
        }
        buf.drain(..used);
        Ok(out)
    }
}

#[cfg(test)]
mod tests;
