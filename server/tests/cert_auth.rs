//! Client-certificate common names as users (etcd's AuthInfoFromTLS): with `--client-cert-auth`
//! and auth enabled, a gRPC request without a token acts as the user its TLS client
//! certificate's CN names. Certificates are made at test time (rcgen).

mod common;

use std::time::{Duration, Instant};

use common::pki::Pki;
use common::Member;
use etcd_proto::authpb::{permission::Type as PermType, Permission};
use etcd_proto::etcdserverpb::auth_client::AuthClient;
use etcd_proto::etcdserverpb::kv_client::KvClient;
use etcd_proto::etcdserverpb::{
    AuthEnableRequest, AuthRoleAddRequest, AuthRoleGrantPermissionRequest, AuthUserAddRequest,
    AuthUserGrantRoleRequest, AuthUserListRequest, AuthenticateRequest, PutRequest, RangeRequest,
};
use etcd_raft::PeerDialer;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::transport::Channel;
use tonic::{Code, Request};


/// A gRPC channel presenting `name`'s certificate, once the member answers a read (20 s).
async fn channel_as(m: &Member, pki: &Pki, name: &str) -> Channel {
    let (cert, key) = pki.files(name);
    let dialer = PeerDialer::new(None, Some(pki.client_config(Some((&cert, &key)), b"h2")));
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(ch) = dialer.connect(&m.endpoint(), Duration::from_secs(1)).await {
            let probe = RangeRequest { key: b"probe".to_vec(), serializable: true, ..Default::default() };
            match KvClient::new(ch.clone()).range(probe).await {
                Ok(_) => return ch,
                // auth is on and this CN may not read "probe": the member answered all the same
                Err(e) if e.code() == Code::PermissionDenied => return ch,
                Err(_) => {}
            }
        }
        assert!(Instant::now() < deadline, "etcd-rs did not answer over TLS in 20s; log:\n{}", m.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn put_req(k: &str) -> PutRequest {
    PutRequest { key: k.into(), value: b"v".to_vec(), ..Default::default() }
}

/// POST `body` to `path` over HTTPS/1.1 presenting `name`'s certificate; the whole response.
async fn https_post(m: &Member, pki: &Pki, name: &str, path: &str, body: &str) -> String {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", m.client_port)).await.unwrap();
    let server = ServerName::IpAddress(std::net::IpAddr::from([127, 0, 0, 1]).into());
    let (cert, key) = pki.files(name);
    let tls = tokio_rustls::TlsConnector::from(pki.client_config(Some((&cert, &key)), b"http/1.1"));
    let mut s = tls.connect(server, tcp).await.unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(body.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificates_common_name_acts_as_that_user_when_no_token_is_sent() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let (server_cert, server_key) = pki.issue("server", "etcd-server", &["127.0.0.1", "localhost"], true);
    pki.issue("root", "root", &[], true);
    pki.issue("alice", "alice", &[], true);
    pki.issue("nobody", "nobody", &[], true);
    pki.issue_without_cn("nocn");
    let ca = pki.ca_file();
    let flags = [
        "--cert-file", &server_cert, "--key-file", &server_key, "--trusted-ca-file", &ca, "--client-cert-auth",
        "--bcrypt-cost", "4",
    ];
    let mut m = Member::new(&dir.path().join("m.etcd"), &flags);
    m.client_scheme = "https";
    m.start();

    // root (root role) and alice (read-write on /alice/ only); then auth on.
    let root_ch = channel_as(&m, &pki, "root").await;
    let mut auth = AuthClient::new(root_ch.clone());
    for (name, pw) in [("root", "rootpw"), ("alice", "alicepw")] {
        auth.user_add(AuthUserAddRequest { name: name.into(), password: pw.into(), ..Default::default() }).await.unwrap();
    }
    auth.user_grant_role(AuthUserGrantRoleRequest { user: "root".into(), role: "root".into() }).await.unwrap();
    auth.role_add(AuthRoleAddRequest { name: "alice-rw".into() }).await.unwrap();
    let perm = Permission { perm_type: PermType::Readwrite as i32, key: b"/alice/".to_vec(), range_end: b"/alice0".to_vec() };
    auth.role_grant_permission(AuthRoleGrantPermissionRequest { name: "alice-rw".into(), perm: Some(perm) }).await.unwrap();
    auth.user_grant_role(AuthUserGrantRoleRequest { user: "alice".into(), role: "alice-rw".into() }).await.unwrap();
    auth.auth_enable(AuthEnableRequest {}).await.unwrap();

    // CN=root: anything, keys and management, without a token.
    let mut root_kv = KvClient::new(root_ch.clone());
    root_kv.put(put_req("/other")).await.expect("CN=root writes anywhere");
    root_kv.put(put_req("/alice/by-root")).await.unwrap();
    let users = auth.user_list(AuthUserListRequest {}).await.expect("CN=root manages auth").into_inner().users;
    assert_eq!(users, vec!["alice".to_string(), "root".to_string()]);

    // CN=alice: inside her prefix only, with etcd's permission-denied error outside it.
    let alice_ch = channel_as(&m, &pki, "alice").await;
    let mut alice_kv = KvClient::new(alice_ch.clone());
    alice_kv.put(put_req("/alice/x")).await.expect("CN=alice writes under /alice/");
    let r = alice_kv.range(RangeRequest { key: b"/alice/by-root".to_vec(), ..Default::default() }).await.unwrap();
    assert_eq!(r.into_inner().kvs.len(), 1);
    let e = alice_kv.put(put_req("/other")).await.unwrap_err();
    assert_eq!((e.code(), e.message()), (Code::PermissionDenied, "etcdserver: permission denied"));
    let e = alice_kv.range(RangeRequest { key: b"/other".to_vec(), ..Default::default() }).await.unwrap_err();
    assert_eq!((e.code(), e.message()), (Code::PermissionDenied, "etcdserver: permission denied"));
    let e = AuthClient::new(alice_ch.clone()).user_list(AuthUserListRequest {}).await.unwrap_err();
    assert_eq!((e.code(), e.message()), (Code::PermissionDenied, "etcdserver: permission denied"));

    // A token wins over the certificate: alice's connection with root's token writes anywhere;
    // an invalid token is refused, not replaced by the CN.
    let login = AuthenticateRequest { name: "root".into(), password: "rootpw".into() };
    let root_token = AuthClient::new(alice_ch.clone()).authenticate(login).await.unwrap().into_inner().token;
    let mut req = Request::new(put_req("/other"));
    req.metadata_mut().insert("token", root_token.parse().unwrap());
    alice_kv.put(req).await.expect("the token's user, not the CN");
    let mut req = Request::new(put_req("/alice/y"));
    req.metadata_mut().insert("token", "bogus.1".parse().unwrap());
    let e = alice_kv.put(req).await.unwrap_err();
    assert_eq!((e.code(), e.message()), (Code::Unauthenticated, "etcdserver: invalid auth token"));

    // A CN naming no user, or no CN at all: permission denied for keys (etcd's isOpPermitted);
    // management without a CN is "user name is empty" (etcd's IsAdminPermitted).
    let mut nobody = KvClient::new(channel_as(&m, &pki, "nobody").await);
    let e = nobody.put(put_req("/alice/z")).await.unwrap_err();
    assert_eq!((e.code(), e.message()), (Code::PermissionDenied, "etcdserver: permission denied"));
    let nocn_ch = channel_as(&m, &pki, "nocn").await;
    let e = KvClient::new(nocn_ch.clone()).put(put_req("/alice/z")).await.unwrap_err();
    assert_eq!((e.code(), e.message()), (Code::PermissionDenied, "etcdserver: permission denied"));
    let e = AuthClient::new(nocn_ch).user_list(AuthUserListRequest {}).await.unwrap_err();
    assert_eq!((e.code(), e.message()), (Code::InvalidArgument, "etcdserver: user name is empty"));

    // The JSON gateway never acts as the connection's certificate (etcd ignores the CN of
    // gateway-relayed requests): without a token it is the empty user.
    let resp = https_post(&m, &pki, "root", "/v3/kv/put", r#"{"key":"L290aGVy","value":"dg=="}"#).await;
    assert!(resp.contains("etcdserver: user name is empty"), "{resp}");
}
