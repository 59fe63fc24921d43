//! Streams opened with clientv3's require-leader metadata end once this member has known no
//! leader for [`LEADERLESS_CHECKS`] election timeouts in a row, with `etcdserver: no leader`
//! (etcd's monitorLeader cancels them so that the client moves to a member with a leader).
//! Watch streams do it in their own loop (grpc/watch.rs); this wraps the response body of the
//! other streams.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http_body::{Body, Frame};
use tonic::codegen::Bytes;

use crate::errors::ServerError;
use crate::etcd_server::EtcdServer;

/// etcd's maxNoLeaderCnt.
const LEADERLESS_CHECKS: u32 = 3;

/// The streaming calls other than Watch that etcd's stream interceptor cancels.
const STREAMS: [&str; 4] = [
    "/etcdserverpb.Lease/LeaseKeepAlive",
    "/etcdserverpb.Maintenance/Snapshot",
    "/etcdserverpb.KV/RangeStream",
    "/v3electionpb.Election/Observe",
];

pub(super) fn is_bounded_stream(path: &str) -> bool {
    STREAMS.contains(&path)
}

/// A response body that ends with the no-leader status when the member stays leaderless.
pub(super) struct LeaderBound<B> {
    inner: B,
    server: Arc<EtcdServer>,
    check: tokio::time::Interval,
    leaderless: u32,
    ended: bool,
}

impl<B> LeaderBound<B> {
    pub(super) fn new(inner: B, server: Arc<EtcdServer>) -> LeaderBound<B> {
        let every = server.election_timeout().max(std::time::Duration::from_millis(100));
        let check = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        LeaderBound { inner, server, check, leaderless: 0, ended: false }
    }
}

impl<B> Body for LeaderBound<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        if self.ended {
            return Poll::Ready(None);
        }
        while self.check.poll_tick(cx).is_ready() {
            self.leaderless = if self.server.has_leader() { 0 } else { self.leaderless + 1 };
            if self.leaderless >= LEADERLESS_CHECKS {
                self.ended = true;
                return Poll::Ready(Some(Ok(Frame::trailers(no_leader_trailers()))));
            }
        }
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(None) = polled {
            self.ended = true;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.ended || self.inner.is_end_stream()
    }
}

/// The trailers of a stream ended with `etcdserver: no leader` (printable ASCII: sent as is).
fn no_leader_trailers() -> http::HeaderMap {
    let status = tonic::Status::from(ServerError::NoLeader);
    let mut h = http::HeaderMap::new();
    h.insert("grpc-status", http::HeaderValue::from(status.code() as i32));
    if let Ok(v) = http::HeaderValue::from_str(status.message()) {
        h.insert("grpc-message", v);
    }
    h
}
