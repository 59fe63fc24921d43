//! Client-certificate common names as users (etcd's AuthInfoFromTLS): with `--client-cert-auth`
//! and auth enabled, a gRPC request without a token acts as the user its TLS client
//! certificate's CN names. Certificates are made at test time (rcgen).

mod common;

use std::time::{Duration, Instant};

use common::pki::Pki;
use common::Member;
use etcd_proto::authpb::{permission::Type as PermType, Permission};
use etcd_proto::etcdserverpb::auth_client::AuthClient;
use etcd_proto::etcdserverpb::cluster_client::ClusterClient;
use etcd_proto::etcdserverpb::kv_client::KvClient;
use etcd_proto::etcdserverpb::{
    AuthEnableRequest, AuthRoleAddRequest, AuthRoleGrantPermissionRequest, AuthUserAddRequest,
    AuthUserDeleteRequest, AuthUserGrantRoleRequest, AuthUserListRequest, AuthenticateRequest, DeleteRangeRequest,
    MemberAddRequest, MemberRemoveRequest, PutRequest, RangeRequest,
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

    // Membership changes need the root role (etcd's checkMembershipOperationPermission, with
    // the CN as the user): CN=alice and no CN are refused, CN=root adds and removes a learner.
    let learner = || MemberAddRequest { peer_ur_ls: vec!["http://127.0.0.1:1".into()], is_learner: true };
    let e = ClusterClient::new(alice_ch.clone()).member_add(learner()).await.unwrap_err();
    assert_eq!((e.code(), e.message()), (Code::PermissionDenied, "etcdserver: permission denied"));
    let e = ClusterClient::new(channel_as(&m, &pki, "nocn").await).member_add(learner()).await.unwrap_err();
    assert_eq!((e.code(), e.message()), (Code::InvalidArgument, "etcdserver: user name is empty"));
    let mut root_cluster = ClusterClient::new(root_ch.clone());
    let added = root_cluster.member_add(learner()).await.expect("CN=root adds a member").into_inner();
    let id = added.member.unwrap().id;
    let e = ClusterClient::new(alice_ch.clone()).member_remove(MemberRemoveRequest { id }).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    root_cluster.member_remove(MemberRemoveRequest { id }).await.expect("CN=root removes a member");

    // The JSON gateway never acts as the connection's certificate: a certificate with a CN is
    // refused with 400 as etcd's access controller refuses it; without a CN and without a token
    // the gateway call is the empty user's.
    let resp = https_post(&m, &pki, "root", "/v3/kv/put", r#"{"key":"L290aGVy","value":"dg=="}"#).await;
    assert!(resp.starts_with("HTTP/1.1 400"), "{resp}");
    assert!(resp.ends_with("\r\n\r\nCommonName of client sending a request against gateway will be ignored and not used as expected\n"), "{resp}");
    let resp = https_post(&m, &pki, "nocn", "/v3/kv/put", r#"{"key":"L290aGVy","value":"dg=="}"#).await;
    assert!(resp.contains("etcdserver: user name is empty"), "{resp}");
}

/// `call` again while it fails with "revision of auth store is old", as clientv3 does for a
/// certificate user: the CN was checked at an auth revision a concurrent auth change outdated
/// before the request applied (etcd answers the same); at most 20 tries.
async fn retry_old_revision<T, F, Fut>(mut call: F) -> Result<T, tonic::Status>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    let mut tries = 0;
    loop {
        match call().await {
            Err(e) if e.message() == "etcdserver: revision of auth store is old" && tries < 20 => tries += 1,
            other => return other.map(tonic::Response::into_inner),
        }
    }
}

/// A self-signed CA certificate (CN `cn`, SANs for 127.0.0.1) written to `<name>.pem` and
/// `<name>-key.pem` in `dir`, like etcd's e2e fixture CommonName-root.crt.
fn self_signed_ca(dir: &std::path::Path, name: &str, cn: &str) -> (String, String) {
    let mut params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()]).unwrap();
    params.distinguished_name.push(rcgen::DnType::CommonName, cn);
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::DigitalSignature,
        rcgen::KeyUsagePurpose::KeyEncipherment,
        rcgen::KeyUsagePurpose::KeyCertSign,
    ];
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    let (c, k) = (dir.join(format!("{name}.pem")), dir.join(format!("{name}-key.pem")));
    std::fs::write(&c, cert.pem()).unwrap();
    std::fs::write(&k, key.serialize_pem()).unwrap();
    (c.display().to_string(), k.display().to_string())
}

/// etcd's TestCtlV3AuthCertCNWithWithConcurrentOperation: a self-signed CA certificate that the
/// trusted CA file itself lists is accepted as a client certificate (Go's x509 takes a
/// certificate of the root pool as a whole chain, CA or not); with CN=root it enables auth and
/// then manages users and keys concurrently. A self-signed CA the file does not list is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trusted_ca_certificate_serves_as_client_certificate_and_its_cn_root_enables_auth() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let (server_cert, server_key) = pki.issue("server", "etcd-server", &["127.0.0.1", "localhost"], true);
    // written beside the Pki's files, so pki.files("root") / ("stranger") name them
    let (root_ca, _) = self_signed_ca(dir.path(), "root", "root");
    self_signed_ca(dir.path(), "stranger", "root");
    // the trusted file: the test CA (which signed the server's certificate) and the root CA
    let trusted = dir.path().join("trusted.pem");
    let bundle = std::fs::read_to_string(pki.ca_file()).unwrap() + &std::fs::read_to_string(&root_ca).unwrap();
    std::fs::write(&trusted, bundle).unwrap();
    let trusted = trusted.display().to_string();
    let mut m = Member::new(&dir.path().join("m.etcd"), &[
        "--cert-file", &server_cert, "--key-file", &server_key, "--trusted-ca-file", &trusted, "--client-cert-auth",
        "--bcrypt-cost", "4",
    ]);
    m.client_scheme = "https";
    m.start();

    let root_ch = channel_as(&m, &pki, "root").await;
    let mut auth = AuthClient::new(root_ch.clone());
    auth.user_add(AuthUserAddRequest { name: "root".into(), password: "root".into(), ..Default::default() }).await.unwrap();
    auth.user_grant_role(AuthUserGrantRoleRequest { user: "root".into(), role: "root".into() }).await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), auth.auth_enable(AuthEnableRequest {}))
        .await
        .expect("auth enable answered")
        .expect("CN=root enables auth");

    let users = {
        let auth = auth.clone();
        tokio::spawn(async move {
            for i in 0..10 {
                let name = format!("testuser-{i}");
                let add = AuthUserAddRequest { name: name.clone(), password: format!("testpass-{i}"), ..Default::default() };
                retry_old_revision(|| {
                    let (mut auth, add) = (auth.clone(), add.clone());
                    async move { auth.user_add(add).await }
                })
                .await?;
                retry_old_revision(|| {
                    let (mut auth, name) = (auth.clone(), name.clone());
                    async move { auth.user_delete(AuthUserDeleteRequest { name }).await }
                })
                .await?;
            }
            Ok::<(), tonic::Status>(())
        })
    };
    let keys = {
        let kv = KvClient::new(root_ch.clone());
        tokio::spawn(async move {
            for i in 0..10 {
                retry_old_revision(|| {
                    let mut kv = kv.clone();
                    async move { kv.put(put_req(&format!("key-{i}"))).await }
                })
                .await?;
                let del = DeleteRangeRequest { key: format!("key-{i}").into(), ..Default::default() };
                retry_old_revision(|| {
                    let (mut kv, del) = (kv.clone(), del.clone());
                    async move { kv.delete_range(del).await }
                })
                .await?;
            }
            Ok::<(), tonic::Status>(())
        })
    };
    let (users, keys) = tokio::time::timeout(Duration::from_secs(30), async { (users.await, keys.await) })
        .await
        .expect("concurrent user and key operations as CN=root finished in 30 s");
    users.unwrap().expect("user add/delete as CN=root");
    keys.unwrap().expect("put/delete as CN=root");

    // a self-signed CA the trusted file does not list is refused at the handshake
    let (stranger_cert, stranger_key) = pki.files("stranger");
    let dialer = PeerDialer::new(None, Some(pki.client_config(Some((&stranger_cert, &stranger_key)), b"h2")));
    let served = match dialer.connect(&m.endpoint(), Duration::from_secs(2)).await {
        Err(_) => false,
        Ok(ch) => KvClient::new(ch).range(RangeRequest { key: b"k".to_vec(), ..Default::default() }).await.is_ok(),
    };
    assert!(!served, "a self-signed CA certificate not in the trusted file was served");
}
