//! etcd 3.6's v3 discovery (`--discovery-endpoints`, `--discovery-token`): new members meet
//! through keys of an existing etcd (or etcd-rs) cluster, as server/etcdserver/api/v3discovery.
//!
//! Key layout, for token T:
//! - `/_etcd/registry/T/_config/size`: the expected cluster size, written by the operator
//!   (missing: "discovery: size key not found"; not a positive integer: "... size key is bad");
//! - `/_etcd/registry/T/members/<member id in hex>`: one per member, its `name=peerURL,...`
//!   (a plain put, no lease, as etcd).
//!
//! The members are ordered by the create revision of their key; the first `size` of them form
//! the cluster. A member not among them gets "discovery: cluster is full". A member registers,
//! then watches the members prefix until `size` members are there. Failed requests are retried
//! forever with etcd's backoff (2^n seconds, at most 256 s).

use std::sync::Arc;
use std::time::Duration;

use etcd_proto::etcdserverpb::auth_client::AuthClient;
use etcd_proto::etcdserverpb::kv_client::KvClient;
use etcd_proto::etcdserverpb::watch_client::WatchClient;
use etcd_proto::etcdserverpb::watch_request::RequestUnion;
use etcd_proto::etcdserverpb::{AuthenticateRequest, PutRequest, RangeRequest, WatchCreateRequest, WatchRequest};
use tonic::transport::{Channel, Endpoint};

use crate::grpc::recipes::prefix_end;

const DISCOVERY_PREFIX: &str = "/_etcd/registry";
const MAX_EXPONENTIAL_RETRIES: u32 = 8;

/// etcd's v3discovery errors (their texts are etcd's).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum V3Error {
    #[error("discovery: invalid peer URL")]
    InvalidUrl,
    #[error("discovery: size key is bad")]
    BadSizeKey,
    #[error("discovery: size key not found")]
    SizeNotFound,
    #[error("discovery: cluster is full")]
    FullCluster,
}

/// The `--discovery-*` client settings.
#[derive(Clone)]
pub struct V3Config {
    pub endpoints: Vec<String>,
    pub token: String,
    pub dial_timeout: Duration,
    pub request_timeout: Duration,
    pub keepalive_time: Duration,
    pub keepalive_timeout: Duration,
    /// User and password (`--discovery-user user[:password]`, `--discovery-password`).
    pub auth: Option<(String, String)>,
    /// TLS for https endpoints (None: plain text only).
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

impl std::fmt::Debug for V3Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("V3Config")
            .field("endpoints", &self.endpoints)
            .field("token", &self.token)
            .field("user", &self.auth.as_ref().map(|a| &a.0))
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

fn cluster_prefix(token: &str) -> String {
    format!("{DISCOVERY_PREFIX}/{token}")
}

fn size_key(token: &str) -> String {
    format!("{}/_config/size", cluster_prefix(token))
}

fn members_prefix(token: &str) -> String {
    format!("{}/members", cluster_prefix(token))
}

/// The member's registration key: its ID as etcd's types.ID prints it (hex, no padding).
pub fn member_key(token: &str, member_id: u64) -> String {
    format!("{}/{member_id:x}", members_prefix(token))
}

/// The members registered so far, ordered by the create revision of their keys.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ClusterInfo {
    /// (key, `name=url,...`, create revision)
    members: Vec<(String, String, i64)>,
}

impl ClusterInfo {
    /// etcd's clusterInfo.add: a key outside the prefix, a value without '=' or a duplicate
    /// is skipped with a warning.
    pub fn add(&mut self, token: &str, key: &str, value: &str, create_rev: i64) {
        let (key, value) = (key.trim(), value.trim());
        let problem = if !key.starts_with(&members_prefix(token)) {
            Some("invalid peer registry key")
        } else if !value.contains('=') {
            Some("invalid peer info returned from discovery service")
        } else if self.members.iter().any(|m| m.0 == key) {
            Some("found duplicate peer from discovery service")
        } else {
            None
        };
        match problem {
            Some(p) => tracing::warn!(member_key = key, member_info = value, "{p}"),
            None => {
                tracing::info!(member_key = key, member_info = value, "found peer from discovery service");
                self.members.push((key.to_string(), value.to_string(), create_rev));
                self.members.sort_by_key(|m| m.2);
            }
        }
    }

    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Whether `self_key` is among the first `size` members (or not registered yet while there
    /// is room); etcd's checkCluster loop.
    pub fn has_room_for(&self, self_key: &str, size: usize) -> bool {
        for (idx, m) in self.members.iter().enumerate() {
            if m.0 == self_key {
                return true;
            }
            if idx + 1 >= size {
                return false;
            }
        }
        true
    }

    /// The first `size` members' `name=url` lists joined: the initial cluster.
    pub fn initial_cluster(&self, size: usize) -> Result<String, V3Error> {
        let s = self.members.iter().take(size).map(|m| m.1.as_str()).collect::<Vec<_>>().join(",");
        crate::config::parse_initial_cluster(&s).map_err(|_| V3Error::InvalidUrl)?;
        Ok(s)
    }
}

/// A connection to one of the discovery endpoints, with an auth token when a user is set.
struct Client {
    channel: Channel,
    token: Option<String>,
}

/// Why a step failed: etcd's terminal errors end discovery, anything else is retried.
enum StepError {
    Fatal(V3Error),
    Retry(String),
}

impl From<tonic::Status> for StepError {
    fn from(s: tonic::Status) -> Self {
        StepError::Retry(format!("{}: {}", s.code(), s.message()))
    }
}

struct Discovery<'a> {
    cfg: &'a V3Config,
    member_id: u64,
    client: Option<Client>,
    retries: u32,
    next_endpoint: usize,
}

impl<'a> Discovery<'a> {
    fn endpoint_url(&self, ep: &str) -> String {
        if ep.contains("://") {
            ep.to_string()
        } else if self.cfg.tls.is_some() {
            format!("https://{ep}")
        } else {
            format!("http://{ep}")
        }
    }

    async fn dial(&self, url: &str) -> Result<Channel, String> {
        if url.starts_with("https://") {
            let dialer = etcd_raft::PeerDialer::new(None, self.cfg.tls.clone());
            return dialer.connect(url, self.cfg.dial_timeout).await;
        }
        let ep = Endpoint::from_shared(url.to_string())
            .map_err(|e| format!("bad discovery endpoint {url}: {e}"))?
            .connect_timeout(self.cfg.dial_timeout)
            .http2_keep_alive_interval(self.cfg.keepalive_time)
            .keep_alive_timeout(self.cfg.keepalive_timeout)
            .keep_alive_while_idle(true);
        ep.connect().await.map_err(|e| format!("{url}: {e}"))
    }

    /// A connected (and, with a user, authenticated) client, trying the endpoints in turn.
    async fn client(&mut self) -> Result<&Client, StepError> {
        if self.client.is_none() {
            let n = self.cfg.endpoints.len();
            let mut last = String::from("no discovery endpoints");
            for _ in 0..n {
                let url = self.endpoint_url(&self.cfg.endpoints[self.next_endpoint % n]);
                self.next_endpoint += 1;
                let channel = match self.dial(&url).await {
                    Ok(c) => c,
                    Err(e) => {
                        last = e;
                        continue;
                    }
                };
                let token = match &self.cfg.auth {
                    None => None,
                    Some((name, password)) => {
                        let req = AuthenticateRequest { name: name.clone(), password: password.clone() };
                        match tokio::time::timeout(self.cfg.request_timeout, AuthClient::new(channel.clone()).authenticate(req)).await {
                            Ok(Ok(r)) => Some(r.into_inner().token),
                            Ok(Err(s)) => {
                                last = format!("{url}: {}", s.message());
                                continue;
                            }
                            Err(_) => {
                                last = format!("{url}: context deadline exceeded");
                                continue;
                            }
                        }
                    }
                };
                self.client = Some(Client { channel, token });
                break;
            }
            if self.client.is_none() {
                return Err(StepError::Retry(last));
            }
        }
        self.client.as_ref().ok_or_else(|| StepError::Retry("no discovery client".into()))
    }

    fn request<T>(&self, msg: T, token: &Option<String>, timeout: bool) -> tonic::Request<T> {
        let mut req = tonic::Request::new(msg);
        if timeout {
            req.set_timeout(self.cfg.request_timeout);
        }
        if let Some(t) = token.as_deref().and_then(|t| t.parse().ok()) {
            req.metadata_mut().insert("token", t);
        }
        req
    }

    async fn range(&mut self, key: Vec<u8>, range_end: Vec<u8>) -> Result<etcd_proto::etcdserverpb::RangeResponse, StepError> {
        let c = self.client().await?;
        let (channel, token) = (c.channel.clone(), c.token.clone());
        let req = self.request(RangeRequest { key, range_end, ..Default::default() }, &token, true);
        let resp = tokio::time::timeout(self.cfg.request_timeout, KvClient::new(channel).range(req)).await;
        match resp {
            Ok(Ok(r)) => Ok(r.into_inner()),
            Ok(Err(s)) => {
                self.client = None;
                Err(s.into())
            }
            Err(_) => {
                self.client = None;
                Err(StepError::Retry("context deadline exceeded".into()))
            }
        }
    }

    async fn cluster_size(&mut self) -> Result<usize, StepError> {
        let key = size_key(&self.cfg.token);
        let resp = self.range(key.clone().into_bytes(), Vec::new()).await.inspect_err(|e| {
            if let StepError::Retry(e) = e {
                tracing::warn!(cluster_size_key = %key, error = %e, "failed to get cluster size from discovery service");
            }
        })?;
        let Some(kv) = resp.kvs.first() else {
            return Err(StepError::Fatal(V3Error::SizeNotFound));
        };
        match String::from_utf8_lossy(&kv.value).parse::<i64>() {
            Ok(n) if n > 0 => Ok(n as usize),
            _ => Err(StepError::Fatal(V3Error::BadSizeKey)),
        }
    }

    async fn cluster_members(&mut self) -> Result<(ClusterInfo, i64), StepError> {
        let prefix = members_prefix(&self.cfg.token).into_bytes();
        let end = prefix_end(&prefix);
        let resp = self.range(prefix, end).await?;
        let mut cls = ClusterInfo::default();
        for kv in &resp.kvs {
            cls.add(&self.cfg.token, &String::from_utf8_lossy(&kv.key), &String::from_utf8_lossy(&kv.value), kv.create_revision);
        }
        Ok((cls, resp.header.map(|h| h.revision).unwrap_or_default()))
    }

    async fn backoff(&mut self, step: &str, reason: &str) {
        self.retries += 1;
        let secs = 1u64 << self.retries.min(MAX_EXPONENTIAL_RETRIES);
        tracing::warn!(reason = step, error = %reason, backoff = ?Duration::from_secs(secs), "retry connecting to discovery service");
        tokio::time::sleep(Duration::from_secs(secs)).await;
    }

    /// etcd's checkCluster: size, members, and whether this member fits.
    async fn check_cluster(&mut self) -> Result<(ClusterInfo, usize, i64), V3Error> {
        loop {
            let size = match self.cluster_size().await {
                Ok(s) => s,
                Err(StepError::Fatal(e)) => return Err(e),
                Err(StepError::Retry(e)) => {
                    self.backoff("cluster status check", &e).await;
                    continue;
                }
            };
            let (cls, rev) = match self.cluster_members().await {
                Ok(m) => m,
                Err(StepError::Fatal(e)) => return Err(e),
                Err(StepError::Retry(e)) => {
                    self.backoff("cluster status check", &e).await;
                    continue;
                }
            };
            self.retries = 0;
            if !cls.has_room_for(&member_key(&self.cfg.token, self.member_id), size) {
                return Err(V3Error::FullCluster);
            }
            return Ok((cls, size, rev));
        }
    }

    async fn register_self(&mut self, contents: &str) {
        let key = member_key(&self.cfg.token, self.member_id);
        loop {
            let put = async {
                let c = self.client().await?;
                let (channel, token) = (c.channel.clone(), c.token.clone());
                let req = self.request(
                    PutRequest { key: key.clone().into_bytes(), value: contents.as_bytes().to_vec(), ..Default::default() },
                    &token,
                    true,
                );
                match tokio::time::timeout(self.cfg.request_timeout, KvClient::new(channel).put(req)).await {
                    Ok(r) => r.map(|_| ()).map_err(StepError::from),
                    Err(_) => Err(StepError::Retry("context deadline exceeded".into())),
                }
            };
            match put.await {
                Ok(()) => {
                    self.retries = 0;
                    tracing::info!(member_key = %key, member_info = contents, "register member itself successfully");
                    return;
                }
                Err(e) => {
                    let reason = match e {
                        StepError::Fatal(e) => e.to_string(),
                        StepError::Retry(e) => e,
                    };
                    tracing::warn!(member_key = %key, error = %reason, "failed to register members itself to the discovery service");
                    self.client = None;
                    self.backoff("register member itself", &reason).await;
                }
            }
        }
    }

    /// Watches the members prefix from `rev + 1` until `size` members are known.
    async fn wait_peers(&mut self, cls: &mut ClusterInfo, size: usize, rev: i64) {
        tracing::info!(cluster_size = size, found_peers = cls.len(), "waiting for peers from discovery service");
        while cls.len() < size {
            if let Err(e) = self.watch_once(cls, size, rev).await {
                self.client = None;
                self.backoff("watch peers", &e).await;
            }
        }
        tracing::info!(cluster_size = size, found_peers = cls.len(), "found all needed peers from discovery service");
    }

    async fn watch_once(&mut self, cls: &mut ClusterInfo, size: usize, rev: i64) -> Result<(), String> {
        let c = self.client().await.map_err(|e| match e {
            StepError::Fatal(e) => e.to_string(),
            StepError::Retry(e) => e,
        })?;
        let (channel, token) = (c.channel.clone(), c.token.clone());
        let prefix = members_prefix(&self.cfg.token).into_bytes();
        let create = WatchCreateRequest { range_end: prefix_end(&prefix), key: prefix, start_revision: rev + 1, ..Default::default() };
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        tx.send(WatchRequest { request_union: Some(RequestUnion::CreateRequest(create)) })
            .await
            .map_err(|e| e.to_string())?;
        let req = self.request(tokio_stream::wrappers::ReceiverStream::new(rx), &token, false);
        let mut events = WatchClient::new(channel).watch(req).await.map_err(|s| s.message().to_string())?.into_inner();
        while cls.len() < size {
            let Some(resp) = events.message().await.map_err(|s| s.message().to_string())? else {
                return Err("watch stream ended".into());
            };
            if resp.canceled {
                return Err(format!("watch canceled: {}", resp.cancel_reason));
            }
            for ev in resp.events {
                if let Some(kv) = ev.kv {
                    cls.add(&self.cfg.token, &String::from_utf8_lossy(&kv.key), &String::from_utf8_lossy(&kv.value), kv.create_revision);
                }
            }
        }
        drop(tx);
        Ok(())
    }
}

/// etcd's v3discovery.JoinCluster: registers this member (`contents`: its `name=url,...`) and
/// returns the initial cluster once `size` members registered.
pub async fn join_cluster(cfg: &V3Config, member_id: u64, contents: &str) -> Result<String, V3Error> {
    let mut d = Discovery { cfg, member_id, client: None, retries: 0, next_endpoint: 0 };
    d.check_cluster().await?;
    d.register_self(contents).await;
    let (mut cls, size, rev) = d.check_cluster().await?;
    d.wait_peers(&mut cls, size, rev).await;
    cls.initial_cluster(size)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_etcds_layout() {
        assert_eq!(size_key("tok"), "/_etcd/registry/tok/_config/size");
        assert_eq!(member_key("tok", 0x8e9e05c52164694d), "/_etcd/registry/tok/members/8e9e05c52164694d");
        assert_eq!(member_key("tok", 0xabc), "/_etcd/registry/tok/members/abc");
    }

    #[test]
    fn members_are_ordered_by_create_revision_and_the_first_size_form_the_cluster() {
        let mut c = ClusterInfo::default();
        c.add("t", "/_etcd/registry/t/members/3", "c=http://127.0.0.1:3", 30);
        c.add("t", "/_etcd/registry/t/members/1", "a=http://127.0.0.1:1", 10);
        c.add("t", "/_etcd/registry/t/members/2", "b=http://127.0.0.1:2", 20);
        // skipped: duplicate, no '=', outside the prefix
        c.add("t", "/_etcd/registry/t/members/2", "b=http://127.0.0.1:9", 40);
        c.add("t", "/_etcd/registry/t/members/9", "garbage", 50);
        c.add("t", "/_etcd/registry/other/members/9", "x=http://127.0.0.1:9", 60);
        assert_eq!(c.len(), 3);
        assert_eq!(c.initial_cluster(2).unwrap(), "a=http://127.0.0.1:1,b=http://127.0.0.1:2");
        assert!(c.has_room_for("/_etcd/registry/t/members/2", 2));
        assert!(!c.has_room_for("/_etcd/registry/t/members/3", 2), "the third of a two-member cluster");
        assert!(!c.has_room_for("/_etcd/registry/t/members/new", 3));
        assert!(c.has_room_for("/_etcd/registry/t/members/new", 4));
        let mut bad = ClusterInfo::default();
        bad.add("t", "/_etcd/registry/t/members/1", "a=not-a-url", 1);
        assert_eq!(bad.initial_cluster(1), Err(V3Error::InvalidUrl));
    }
}
