//! A gRPC client of the cluster under test that survives members going down.
//!
//! Invariant: a client talks to one endpoint at a time; after an error that says the endpoint is
//! unreachable or stuck (unavailable, deadline exceeded) it moves to the next endpoint, so the
//! traffic keeps flowing while a member is killed, paused or replaced. Every unary request has a
//! deadline (`REQUEST_TIMEOUT`); watch streams use a channel without one.

use etcd_proto::etcdserverpb::cluster_client::ClusterClient;
use etcd_proto::etcdserverpb::kv_client::KvClient;
use etcd_proto::etcdserverpb::lease_client::LeaseClient;
use etcd_proto::etcdserverpb::maintenance_client::MaintenanceClient;
use etcd_proto::etcdserverpb::watch_client::WatchClient;
use std::sync::Arc;
use std::time::Duration;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

/// The deadline of one unary request; a request without an answer by then is `Unknown`.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// A channel to `url`, connected lazily (a member that is down now may be up at the first call).
pub fn channel(url: &str, request_timeout: Option<Duration>) -> Result<Channel, String> {
    let mut endpoint = Endpoint::from_shared(url.to_string())
        .map_err(|e| format!("bad endpoint {url}: {e}"))?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true);
    if let Some(t) = request_timeout {
        endpoint = endpoint.timeout(t);
    }
    Ok(endpoint.connect_lazy())
}

/// Whether an error says "try another member" rather than "this request is wrong".
pub fn endpoint_trouble(status: &Status) -> bool {
    matches!(
        status.code(),
        Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Unknown
    )
}

/// A client bound to one of the cluster's client URLs at a time.
#[derive(Clone)]
pub struct EtcdClient {
    endpoints: Arc<Vec<String>>,
    current: usize,
    channel: Channel,
}

impl EtcdClient {
    /// A client starting at `endpoints[first % len]`.
    pub fn new(endpoints: Arc<Vec<String>>, first: usize) -> Result<EtcdClient, String> {
        if endpoints.is_empty() {
            return Err("no endpoints".into());
        }
        let current = first % endpoints.len();
        let channel = channel(&endpoints[current], Some(REQUEST_TIMEOUT))?;
        Ok(EtcdClient {
            endpoints,
            current,
            channel,
        })
    }

    /// The URL this client talks to now.
    pub fn endpoint(&self) -> &str {
        &self.endpoints[self.current]
    }

    pub fn endpoints(&self) -> &Arc<Vec<String>> {
        &self.endpoints
    }

    /// Moves to the next endpoint (after the current one failed).
    pub fn rotate(&mut self) {
        self.current = (self.current + 1) % self.endpoints.len();
        // The URL was valid when the client was created, so it still is.
        if let Ok(ch) = channel(&self.endpoints[self.current], Some(REQUEST_TIMEOUT)) {
            self.channel = ch;
        }
    }

    /// Rotates when `result` failed because of the endpoint; returns `result` unchanged.
    pub fn observe<T>(&mut self, result: Result<T, Status>) -> Result<T, Status> {
        if let Err(status) = &result {
            if endpoint_trouble(status) {
                self.rotate();
            }
        }
        result
    }

    pub fn kv(&self) -> KvClient<Channel> {
        KvClient::new(self.channel.clone())
    }

    pub fn lease(&self) -> LeaseClient<Channel> {
        LeaseClient::new(self.channel.clone())
    }

    pub fn maintenance(&self) -> MaintenanceClient<Channel> {
        MaintenanceClient::new(self.channel.clone())
    }

    pub fn cluster(&self) -> ClusterClient<Channel> {
        ClusterClient::new(self.channel.clone())
    }

    /// A watch client on the current endpoint, on its own channel without a request deadline.
    pub fn watch(&self) -> Result<WatchClient<Channel>, String> {
        Ok(WatchClient::new(channel(self.endpoint(), None)?))
    }
}
