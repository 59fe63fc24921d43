//! The peer endpoints other than raft's, as etcd members call them on each other
//! (etcd's `etcdhttp/peer.go`, `leasehttp`, the hashKV handler, 3.5's downgrade handler).
//!
//! | path | method | request | answer |
//! |------|--------|---------|--------|
//! | `/members` | GET | - | JSON list of [`MemberJson`] (`json.Encoder`: a newline after) |
//! | `/members/promote/<id>` | POST | id in decimal | JSON list of the members after the promotion; 404 `member <id> not found in cluster` for a bad id, 404 `membership: ID not found`, 412 `membership: can only promote a learner member`, 412 `etcdserver: can only promote a learner member which is in sync with leader` |
//! | `/version` | GET | - | `{"etcdserver":"3.5.1","etcdcluster":"3.5.0"}` (`not_decided` before the cluster version is set) |
//! | `/leases` | POST | protobuf `LeaseKeepAliveRequest` | protobuf `LeaseKeepAliveResponse{ID, TTL}`; 404 `lease not found`; 408 on timeout |
//! | `/leases/internal` | POST | protobuf `LeaseInternalRequest` | protobuf `LeaseInternalResponse` (TTL left, granted TTL, keys when asked) |
//! | `/members/hashkv` | GET | JSON `{"revision":N}` in the body | JSON `{"header":{"revision":R},"hash":H,"compact_revision":C}` (Go `encoding/json`: zero fields left out) ; 400 with the error text (e.g. compacted) |
//! | `/downgrade/enabled` | GET | - | `true` or `false`, `text/plain` (3.5) |
//!
//! A follower forwards a client's lease keep-alive / time-to-live to the leader through
//! `/leases` and `/leases/internal`; the corruption checker asks peers `/members/hashkv`; a
//! joining member reads `/members` and `/version` from the cluster; a learner is promoted
//! through `/members/promote/<id>` when the request reaches a follower. [`PeerApi`] is what the
//! server implements; [`handle`] answers a request with it.

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use prost::Message as _;
use serde::{Deserialize, Serialize};

use super::handler::{http_error, ResponseBody};
use super::headers::{format_id, X_ETCD_CLUSTER_ID};
use etcd_proto::etcdserverpb::{LeaseKeepAliveRequest, LeaseKeepAliveResponse, LeaseTimeToLiveResponse};
use etcd_proto::leasepb::{LeaseInternalRequest, LeaseInternalResponse};

pub const MEMBERS_PATH: &str = "/members";
pub const MEMBER_PROMOTE_PREFIX: &str = "/members/promote/";
pub const VERSION_PATH: &str = "/version";
pub const LEASES_PATH: &str = "/leases";
pub const LEASES_INTERNAL_PATH: &str = "/leases/internal";
pub const HASHKV_PATH: &str = "/members/hashkv";
pub const DOWNGRADE_ENABLED_PATH: &str = "/downgrade/enabled";

/// etcd's `membership.Member` as `encoding/json` writes it (field order as Go's struct).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberJson {
    /// A JSON number (Go's `types.ID` has no JSON method).
    pub id: u64,
    #[serde(rename = "peerURLs")]
    pub peer_urls: Vec<String>,
    #[serde(rename = "isLearner", default, skip_serializing_if = "std::ops::Not::not")]
    pub is_learner: bool,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(rename = "clientURLs", default, skip_serializing_if = "Vec::is_empty")]
    pub client_urls: Vec<String>,
}

/// `/version`'s answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionJson {
    pub etcdserver: String,
    /// "not_decided" until the cluster version is known.
    pub etcdcluster: String,
}

/// `/members/hashkv`'s request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HashKvRequestJson {
    #[serde(default)]
    pub revision: i64,
}

/// `/members/hashkv`'s answer: gogoproto structs through Go's `encoding/json` (snake-case
/// names, `omitempty`, numbers as numbers).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HashKvResponseJson {
    #[serde(default)]
    pub header: HashKvHeaderJson,
    #[serde(default, skip_serializing_if = "is_zero_u32")]
    pub hash: u32,
    #[serde(default, skip_serializing_if = "is_zero_i64")]
    pub compact_revision: i64,
    /// The revision hashed (etcd 3.5.6+; 3.5.1 and 3.4 leave it out, and ignore it).
    #[serde(default, skip_serializing_if = "is_zero_i64")]
    pub hash_revision: i64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HashKvHeaderJson {
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub cluster_id: u64,
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub member_id: u64,
    #[serde(default, skip_serializing_if = "is_zero_i64")]
    pub revision: i64,
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub raft_term: u64,
}

fn is_zero_u32(v: &u32) -> bool {
    *v == 0
}
fn is_zero_u64(v: &u64) -> bool {
    *v == 0
}
fn is_zero_i64(v: &i64) -> bool {
    *v == 0
}

/// Why a promotion was refused (the texts are etcd's).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PromoteError {
    #[error("membership: ID not found")]
    IdNotFound,
    #[error("membership: can only promote a learner member")]
    NotLearner,
    #[error("etcdserver: can only promote a learner member which is in sync with leader")]
    LearnerNotReady,
    /// Anything else: 500 with the text.
    #[error("{0}")]
    Other(String),
}

/// Why a lease request failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LeaseError {
    /// 404, etcd's `lease.ErrLeaseNotFound`.
    #[error("lease not found")]
    NotFound,
    /// 408, etcd's `ErrLeaseHTTPTimeout` (the member did not catch up with the leader in time).
    #[error("waiting for node to catch up its applied index has timed out")]
    Timeout,
    /// 400 with the text.
    #[error("{0}")]
    Other(String),
}

/// What the server provides to the peer endpoints.
pub trait PeerApi: Send + Sync + 'static {
    fn cluster_id(&self) -> u64;
    /// The cluster's members as etcd lists them.
    fn members(&self) -> Vec<MemberJson>;
    /// Promotes learner `id`; the members after it.
    fn promote_member(&self, id: u64) -> super::host::BoxFuture<'_, Result<Vec<MemberJson>, PromoteError>>;
    /// This member's server version and the cluster version (None: not decided).
    fn versions(&self) -> (String, Option<String>);
    /// Renews lease `id` on this member (the leader); the new TTL.
    fn renew_lease(&self, id: i64) -> super::host::BoxFuture<'_, Result<i64, LeaseError>>;
    /// The lease's remaining and granted TTL and, when `keys`, its keys.
    fn lease_time_to_live(&self, id: i64, keys: bool) -> super::host::BoxFuture<'_, Result<LeaseTimeToLiveResponse, LeaseError>>;
    /// KV hash at `revision` (0: current), with the current revision in its header, or the
    /// error text (e.g. "mvcc: required revision has been compacted").
    fn hash_kv(&self, revision: i64) -> super::host::BoxFuture<'_, Result<HashKvResponseJson, String>>;
    /// Whether a downgrade is in progress, read linearizably (3.5).
    fn downgrade_enabled(&self) -> super::host::BoxFuture<'_, Result<bool, String>>;
}

/// True for the paths [`handle`] answers.
pub fn handles(path: &str) -> bool {
    matches!(path, MEMBERS_PATH | VERSION_PATH | LEASES_PATH | LEASES_INTERNAL_PATH | HASHKV_PATH | DOWNGRADE_ENABLED_PATH)
        || path.starts_with(MEMBER_PROMOTE_PREFIX)
}

fn with_body(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Response<ResponseBody> {
    let mut r = Response::new(Full::new(body.into()).boxed());
    *r.status_mut() = status;
    r.headers_mut().insert(http::header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

fn not_allowed(allow: &'static str) -> Response<ResponseBody> {
    let mut r = http_error(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed");
    r.headers_mut().insert(http::header::ALLOW, HeaderValue::from_static(allow));
    r
}

/// Go's `json.NewEncoder(w).Encode(v)`: the JSON and a newline.
fn json_line<T: Serialize>(v: &T) -> String {
    format!("{}\n", serde_json::to_string(v).unwrap_or_default())
}

fn with_cluster_id(mut r: Response<ResponseBody>, api: &dyn PeerApi) -> Response<ResponseBody> {
    if let Ok(v) = HeaderValue::from_str(&format_id(api.cluster_id())) {
        r.headers_mut().insert(X_ETCD_CLUSTER_ID, v);
    }
    r
}

/// Answers one of the peer endpoints (see the table above) with `api`.
pub async fn handle<B>(api: &dyn PeerApi, req: Request<B>) -> Response<ResponseBody>
where
    B: hyper::body::Body + Send,
    B::Data: Send,
{
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    match path.as_str() {
        MEMBERS_PATH => {
            if method != Method::GET {
                return not_allowed("GET");
            }
            with_cluster_id(with_body(StatusCode::OK, "application/json", json_line(&api.members())), api)
        }
        VERSION_PATH => {
            if method != Method::GET {
                return not_allowed("GET");
            }
            let (server, cluster) = api.versions();
            let v = VersionJson { etcdserver: server, etcdcluster: cluster.unwrap_or_else(|| "not_decided".into()) };
            with_body(StatusCode::OK, "application/json", serde_json::to_string(&v).unwrap_or_default())
        }
        LEASES_PATH | LEASES_INTERNAL_PATH => {
            if method != Method::POST {
                return http_error(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed");
            }
            let Ok(body) = req.into_body().collect().await.map(|b| b.to_bytes()) else {
                return http_error(StatusCode::BAD_REQUEST, "error reading body");
            };
            lease(api, &path, &body).await
        }
        HASHKV_PATH => {
            if method != Method::GET {
                return not_allowed("GET");
            }
            let Ok(body) = req.into_body().collect().await.map(|b| b.to_bytes()) else {
                return http_error(StatusCode::BAD_REQUEST, "error reading body");
            };
            let Ok(r) = serde_json::from_slice::<HashKvRequestJson>(&body) else {
                return http_error(StatusCode::BAD_REQUEST, "error unmarshalling request");
            };
            match api.hash_kv(r.revision).await {
                Ok(resp) => {
                    with_cluster_id(with_body(StatusCode::OK, "application/json", serde_json::to_string(&resp).unwrap_or_default()), api)
                }
                Err(e) => http_error(StatusCode::BAD_REQUEST, &e),
            }
        }
        DOWNGRADE_ENABLED_PATH => {
            if method != Method::GET {
                return not_allowed("GET");
            }
            let r = match api.downgrade_enabled().await {
                Ok(enabled) => with_body(StatusCode::OK, "text/plain", enabled.to_string()),
                Err(e) => http_error(StatusCode::INTERNAL_SERVER_ERROR, &format!("failed linearized read: {e}")),
            };
            with_cluster_id(r, api)
        }
        p if p.starts_with(MEMBER_PROMOTE_PREFIX) => {
            if method != Method::POST {
                return not_allowed("POST");
            }
            let id_text = &p[MEMBER_PROMOTE_PREFIX.len()..];
            let r = match id_text.parse::<u64>() {
                Err(_) => http_error(StatusCode::NOT_FOUND, &format!("member {id_text} not found in cluster")),
                Ok(id) => match api.promote_member(id).await {
                    Ok(members) => with_body(StatusCode::OK, "application/json", json_line(&members)),
                    Err(e @ PromoteError::IdNotFound) => http_error(StatusCode::NOT_FOUND, &e.to_string()),
                    Err(e @ (PromoteError::NotLearner | PromoteError::LearnerNotReady)) => http_error(StatusCode::PRECONDITION_FAILED, &e.to_string()),
                    Err(PromoteError::Other(e)) => http_error(StatusCode::INTERNAL_SERVER_ERROR, &e),
                },
            };
            with_cluster_id(r, api)
        }
        _ => http_error(StatusCode::NOT_FOUND, "404 page not found"),
    }
}

async fn lease(api: &dyn PeerApi, path: &str, body: &[u8]) -> Response<ResponseBody> {
    let answer = |r: Result<Vec<u8>, LeaseError>| match r {
        Ok(v) => with_body(StatusCode::OK, "application/protobuf", v),
        Err(e @ LeaseError::NotFound) => http_error(StatusCode::NOT_FOUND, &e.to_string()),
        Err(e @ LeaseError::Timeout) => http_error(StatusCode::REQUEST_TIMEOUT, &e.to_string()),
        Err(LeaseError::Other(e)) => http_error(StatusCode::BAD_REQUEST, &e),
    };
    if path == LEASES_PATH {
        let Ok(req) = LeaseKeepAliveRequest::decode(body) else {
            return http_error(StatusCode::BAD_REQUEST, "error unmarshalling request");
        };
        let r = api.renew_lease(req.id).await.map(|ttl| LeaseKeepAliveResponse { id: req.id, ttl, ..Default::default() }.encode_to_vec());
        return answer(r);
    }
    let Ok(req) = LeaseInternalRequest::decode(body) else {
        return http_error(StatusCode::BAD_REQUEST, "error unmarshalling request");
    };
    let ttl_req = req.lease_time_to_live_request.unwrap_or_default();
    let r = api.lease_time_to_live(ttl_req.id, ttl_req.keys).await.map(|resp| {
        LeaseInternalResponse { lease_time_to_live_response: Some(resp) }.encode_to_vec()
    });
    answer(r)
}

/// The client side: one member asking another over a [`Connection`], reading the answers as
/// etcd's callers do (etcd's error texts become the typed errors above).
pub mod call {
    use super::*;
    use crate::rafthttp::client::{Answer, Connection, Identity, RequestError};
    use crate::rafthttp::headers::parse_id;

    fn unexpected(a: &Answer) -> String {
        format!("unexpected status {} ({})", a.status.as_u16(), a.text())
    }

    /// `GET /members`: the cluster ID (from `X-Etcd-Cluster-ID`) and its members.
    pub async fn members(conn: &mut Connection, me: &Identity) -> Result<(u64, Vec<MemberJson>), String> {
        let a = conn.call("GET", MEMBERS_PATH, None, Bytes::new(), me).await.map_err(|e| e.to_string())?;
        if a.status != StatusCode::OK {
            return Err(unexpected(&a));
        }
        let cid = a.headers.get(X_ETCD_CLUSTER_ID).and_then(|v| v.to_str().ok()).and_then(parse_id);
        let cid = cid.ok_or_else(|| "the answer has no valid X-Etcd-Cluster-ID".to_string())?;
        let members = serde_json::from_slice(&a.body).map_err(|e| format!("cannot read the members: {e}"))?;
        Ok((cid, members))
    }

    /// `GET /version`: the member's server and cluster versions.
    pub async fn version(conn: &mut Connection, me: &Identity) -> Result<VersionJson, String> {
        let a = conn.call("GET", VERSION_PATH, None, Bytes::new(), me).await.map_err(|e| e.to_string())?;
        if a.status != StatusCode::OK {
            return Err(unexpected(&a));
        }
        serde_json::from_slice(&a.body).map_err(|e| format!("failed to unmarshal response: {e}"))
    }

    /// `POST /members/promote/<id>`: the members after the promotion.
    pub async fn promote(conn: &mut Connection, me: &Identity, id: u64) -> Result<Vec<MemberJson>, PromoteError> {
        let path = format!("{MEMBER_PROMOTE_PREFIX}{id}");
        let a = conn.call("POST", &path, None, Bytes::new(), me).await.map_err(|e| PromoteError::Other(e.to_string()))?;
        match a.status {
            StatusCode::OK => serde_json::from_slice(&a.body).map_err(|e| PromoteError::Other(format!("cannot read the members: {e}"))),
            _ => Err(match a.text().as_str() {
                t if t == PromoteError::IdNotFound.to_string() => PromoteError::IdNotFound,
                t if t == PromoteError::NotLearner.to_string() => PromoteError::NotLearner,
                t if t == PromoteError::LearnerNotReady.to_string() => PromoteError::LearnerNotReady,
                _ => PromoteError::Other(unexpected(&a)),
            }),
        }
    }

    fn lease_error(a: &Answer) -> LeaseError {
        match a.status {
            StatusCode::NOT_FOUND => LeaseError::NotFound,
            StatusCode::REQUEST_TIMEOUT => LeaseError::Timeout,
            _ => LeaseError::Other(a.text()),
        }
    }

    /// `POST /leases`: the lease's new TTL.
    pub async fn renew_lease(conn: &mut Connection, me: &Identity, id: i64) -> Result<i64, LeaseError> {
        let body = LeaseKeepAliveRequest { id }.encode_to_vec();
        let a = conn.call("POST", LEASES_PATH, Some("application/protobuf"), body.into(), me).await.map_err(io)?;
        if a.status != StatusCode::OK {
            return Err(lease_error(&a));
        }
        let r = LeaseKeepAliveResponse::decode(&a.body[..]).map_err(|e| LeaseError::Other(e.to_string()))?;
        Ok(r.ttl)
    }

    /// `POST /leases/internal`: the lease's remaining and granted TTL (and keys when asked).
    pub async fn lease_time_to_live(conn: &mut Connection, me: &Identity, id: i64, keys: bool) -> Result<LeaseTimeToLiveResponse, LeaseError> {
        let req = etcd_proto::etcdserverpb::LeaseTimeToLiveRequest { id, keys };
        let body = LeaseInternalRequest { lease_time_to_live_request: Some(req) }.encode_to_vec();
        let a = conn.call("POST", LEASES_INTERNAL_PATH, Some("application/protobuf"), body.into(), me).await.map_err(io)?;
        if a.status != StatusCode::OK {
            return Err(lease_error(&a));
        }
        let r = LeaseInternalResponse::decode(&a.body[..]).map_err(|e| LeaseError::Other(e.to_string()))?;
        r.lease_time_to_live_response.ok_or_else(|| LeaseError::Other("empty lease answer".into()))
    }

    /// `GET /members/hashkv` at `revision`; an error is the peer's text (e.g. compacted).
    pub async fn hash_kv(conn: &mut Connection, me: &Identity, revision: i64) -> Result<(u64, HashKvResponseJson), String> {
        let body = serde_json::to_vec(&HashKvRequestJson { revision }).unwrap_or_default();
        let a = conn.call("GET", HASHKV_PATH, Some("application/json"), body.into(), me).await.map_err(|e| e.to_string())?;
        if a.status != StatusCode::OK {
            return Err(a.text());
        }
        let cid = a.headers.get(X_ETCD_CLUSTER_ID).and_then(|v| v.to_str().ok()).and_then(parse_id).unwrap_or(0);
        let r = serde_json::from_slice(&a.body).map_err(|e| format!("cannot read the hash: {e}"))?;
        Ok((cid, r))
    }

    fn io(e: RequestError) -> LeaseError {
        LeaseError::Other(e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_json_is_etcds() {
        // as etcd 3.5.1 answered /members for a member that has not published yet and one that has
        let m = MemberJson { id: 6101124207925247416, peer_urls: vec!["http://127.0.0.1:23341".into()], is_learner: false, name: "rs".into(), client_urls: vec![] };
        assert_eq!(serde_json::to_string(&m).unwrap(), r#"{"id":6101124207925247416,"peerURLs":["http://127.0.0.1:23341"],"name":"rs"}"#);
        let unstarted = MemberJson { id: 1, peer_urls: vec!["http://a:2380".into()], is_learner: true, name: String::new(), client_urls: vec![] };
        assert_eq!(serde_json::to_string(&unstarted).unwrap(), r#"{"id":1,"peerURLs":["http://a:2380"],"isLearner":true}"#);
        let back: MemberJson = serde_json::from_str(r#"{"id":7,"peerURLs":[],"name":"x","clientURLs":["http://c"]}"#).unwrap();
        assert_eq!(back.client_urls, vec!["http://c".to_string()]);
    }

    #[test]
    fn hashkv_json_leaves_zero_fields_out_as_go_does() {
        let r = HashKvResponseJson { header: HashKvHeaderJson { revision: 5, ..Default::default() }, hash: 123, compact_revision: 0, hash_revision: 0 };
        assert_eq!(serde_json::to_string(&r).unwrap(), r#"{"header":{"revision":5},"hash":123}"#);
        let q: HashKvRequestJson = serde_json::from_str(r#"{"revision":4}"#).unwrap();
        assert_eq!(q.revision, 4);
    }
}
