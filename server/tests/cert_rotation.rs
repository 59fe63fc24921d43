//! Certificates rotated on disk while `etcd-rs` runs (as cert-manager or kubeadm do it): new
//! connections get the new pair at once, open ones keep working, an unusable replacement leaves
//! the last good pair serving; and `--tls-min-version` / `--tls-max-version`.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::cluster::{member_ip, TestCluster};
use common::pki::{handshake_ok, Pki};
use common::Member;
use etcd_proto::etcdserverpb::kv_client::KvClient;
use etcd_proto::etcdserverpb::watch_client::WatchClient;
use etcd_proto::etcdserverpb::watch_request::RequestUnion;
use etcd_proto::etcdserverpb::{RangeRequest, WatchCreateRequest, WatchRequest, WatchResponse};
use etcd_raft::PeerDialer;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

/// Replaces `to` by a copy of `from` the way kubelet's atomic writer and cert-manager do:
/// written beside it, then renamed over it.
fn replace_file(from: &str, to: &str) {
    let tmp = format!("{to}.tmp");
    std::fs::copy(from, &tmp).unwrap();
    std::fs::rename(&tmp, to).unwrap();
}

/// The end-entity certificate of a PEM file.
fn cert_der(file: &str) -> CertificateDer<'static> {
    CertificateDer::pem_file_iter(file).unwrap().next().unwrap().unwrap()
}

/// The certificate a new TLS connection to `addr` is served (a fresh client configuration, so
/// no session is resumed).
async fn served_cert(addr: SocketAddr, tls: Arc<rustls::ClientConfig>) -> CertificateDer<'static> {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = ServerName::IpAddress(addr.ip().into());
    let s = tokio_rustls::TlsConnector::from(tls).connect(name, tcp).await.expect("TLS handshake");
    s.get_ref().1.peer_certificates().expect("a server certificate")[0].clone()
}

/// A channel over TLS to `m`'s client URL, once a KV read succeeds on it (at most 20 s).
async fn tls_channel(m: &Member, tls: Arc<rustls::ClientConfig>) -> Channel {
    let dialer = PeerDialer::new(None, Some(tls));
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(ch) = dialer.connect(&m.endpoint(), Duration::from_secs(1)).await {
            if KvClient::new(ch.clone()).range(RangeRequest { key: b"probe".to_vec(), ..Default::default() }).await.is_ok() {
                return ch;
            }
        }
        assert!(Instant::now() < deadline, "etcd-rs did not answer over TLS in 20s; log:\n{}", m.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A watch stream on `key`, created.
async fn watch(ch: &Channel, key: &str) -> (mpsc::Sender<WatchRequest>, tonic::Streaming<WatchResponse>) {
    let (tx, rx) = mpsc::channel(4);
    let create = WatchCreateRequest { key: key.as_bytes().to_vec(), ..Default::default() };
    tx.send(WatchRequest { request_union: Some(RequestUnion::CreateRequest(create)) }).await.unwrap();
    let mut stream = WatchClient::new(ch.clone()).watch(ReceiverStream::new(rx)).await.expect("watch stream").into_inner();
    let created = next_watch_response(&mut stream).await;
    assert!(created.created, "{created:?}");
    (tx, stream)
}

async fn next_watch_response(stream: &mut tonic::Streaming<WatchResponse>) -> WatchResponse {
    match tokio::time::timeout(Duration::from_secs(20), stream.message()).await {
        Ok(Ok(Some(r))) => r,
        other => panic!("no watch response: {other:?}"),
    }
}

/// Two server pairs (different serial and CN) and the files the member serves, holding the
/// old pair: ((cert, key) old, new, live).
type Pair = (String, String);
fn old_new_and_live_server_pairs(pki: &Pki) -> (Pair, Pair, Pair) {
    let old = pki.issue_with_serial("old", "etcd-server-old", &["127.0.0.1"], true, Some(0x01d));
    let new = pki.issue_with_serial("new", "etcd-server-new", &["127.0.0.1"], true, Some(0x2e3));
    let live = pki.files("live");
    replace_file(&old.0, &live.0);
    replace_file(&old.1, &live.1);
    (old, new, live)
}

/// A member serving https clients with the pair at `live` (cert, key).
fn start_https_member(dir: &Path, live: &Pair, extra: &[&str]) -> Member {
    let mut flags = vec!["--cert-file", live.0.as_str(), "--key-file", live.1.as_str()];
    flags.extend_from_slice(extra);
    let mut m = Member::new(&dir.join("m0.etcd"), &flags);
    m.client_scheme = "https";
    m.start();
    m
}

fn client_addr(m: &Member) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], m.client_port))
}

#[tokio::test]
async fn a_rotated_server_certificate_serves_new_connections_while_an_open_watch_keeps_working() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let (old, new, live) = old_new_and_live_server_pairs(&pki);
    let m = start_https_member(dir.path(), &live, &[]);
    let tls = || pki.client_config(None, b"h2");
    let ch = tls_channel(&m, tls()).await;
    let (_keep, mut stream) = watch(&ch, "rotating").await;
    assert_eq!(served_cert(client_addr(&m), tls()).await, cert_der(&old.0));

    // key first, then certificate: in between the pair does not match and the old one serves
    replace_file(&new.1, &live.1);
    assert_eq!(served_cert(client_addr(&m), tls()).await, cert_der(&old.0), "a mismatched pair was served");
    replace_file(&new.0, &live.0);
    assert_eq!(served_cert(client_addr(&m), tls()).await, cert_der(&new.0), "a new connection got the old certificate");

    // the connection made before the rotation still carries requests and its watch stream
    let rev = common::put(&mut KvClient::new(ch.clone()), "rotating", "after").await.expect("put on the old connection");
    let event = next_watch_response(&mut stream).await;
    assert_eq!(event.events.len(), 1, "{event:?}");
    let kv = event.events[0].kv.as_ref().unwrap();
    assert_eq!((kv.value.as_slice(), kv.mod_revision), (b"after".as_slice(), rev));
    // and a new gRPC connection works with the new pair
    let mut fresh = KvClient::new(tls_channel(&m, tls()).await);
    assert!(common::dump(&mut fresh).await.contains(&("rotating".to_string(), "after".to_string(), rev)));
    assert!(m.log_shows("loaded rotated certificate"), "{}", m.log());
}

#[tokio::test]
async fn an_unusable_replacement_keeps_the_last_good_pair_serving_and_is_logged() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let (old, new, live) = old_new_and_live_server_pairs(&pki);
    let m = start_https_member(dir.path(), &live, &[]);
    let tls = || pki.client_config(None, b"h2");
    tls_channel(&m, tls()).await;

    std::fs::write(&live.0, b"-----BEGIN CERTIFICATE-----\ngarbage\n-----END CERTIFICATE-----\n").unwrap();
    assert_eq!(served_cert(client_addr(&m), tls()).await, cert_der(&old.0), "garbage replaced the served certificate");
    assert!(m.log_shows("failed to create peer certificate"), "{}", m.log());

    // a valid certificate whose key is not in the key file
    replace_file(&new.0, &live.0);
    assert_eq!(served_cert(client_addr(&m), tls()).await, cert_der(&old.0), "a certificate without its key was served");
    assert!(m.log_shows("tls: private key does not match public key"), "{}", m.log());

    std::fs::remove_file(&live.1).unwrap();
    assert_eq!(served_cert(client_addr(&m), tls()).await, cert_der(&old.0));
    assert!(m.log_shows("failed to find peer cert files"), "{}", m.log());

    // once the pair is whole again it is served
    replace_file(&new.1, &live.1);
    assert_eq!(served_cert(client_addr(&m), tls()).await, cert_der(&new.0));
    tls_channel(&m, tls()).await;
}

/// Peer certificates rotated on disk for a running 3-member https cluster: after every peer
/// connection is cut, the members reconnect with the new pair on both ends (the old one is then
/// revoked by the peer CRL, so a member still presenting it would be refused) and replicate.
#[tokio::test]
async fn https_peers_reconnect_with_a_peer_certificate_rotated_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let sans: Vec<String> = ["127.0.0.1".to_string()].into_iter().chain((0..3).map(|i| member_ip(i).to_string())).collect();
    let sans: Vec<&str> = sans.iter().map(String::as_str).collect();
    let old = pki.issue_with_serial("peer-old", "etcd-peer", &sans, true, Some(0x0dd));
    let new = pki.issue_with_serial("peer-new", "etcd-peer", &sans, true, Some(0x7e3));
    let live = pki.files("peer-live");
    replace_file(&old.0, &live.0);
    replace_file(&old.1, &live.1);
    let crl = dir.path().join("peer.crl");
    pki.write_crl(&crl, &[]);
    let (ca, crl_path) = (pki.ca_file(), crl.display().to_string());
    let flags = [
        "--peer-cert-file", &live.0, "--peer-key-file", &live.1, "--peer-trusted-ca-file", &ca,
        "--peer-client-cert-auth", "--peer-crl-file", &crl_path,
    ];
    let cluster = TestCluster::start_with_peer_scheme(dir.path(), 3, &flags, "https").await;
    let leader = cluster.wait_leader(&[0, 1, 2]).await;
    common::put(&mut cluster.members[leader].ready_client().await, "before", "rotation").await.expect("put before rotation");

    replace_file(&new.0, &live.0);
    replace_file(&new.1, &live.1);
    pki.write_crl(&crl, &[0x0dd]);
    let peer_tls = || pki.client_config(Some((&new.0, &new.1)), b"h2");
    for (i, m) in cluster.members.iter().enumerate() {
        let addr = SocketAddr::new(member_ip(i), m.peer_port);
        assert_eq!(served_cert(addr, peer_tls()).await, cert_der(&new.0), "member {i}'s peer listener kept the old certificate");
    }
    // every peer connection is cut once, so all of them are dialled again
    for i in 0..3 {
        cluster.partition(&[i]);
        tokio::time::sleep(Duration::from_millis(300)).await;
        cluster.heal(&[i]);
    }
    let leader = cluster.wait_leader(&[0, 1, 2]).await;
    let rev = common::put(&mut cluster.members[leader].ready_client().await, "after", "rotation").await.expect("put after rotation");
    for (i, m) in cluster.members.iter().enumerate() {
        let mut c = m.ready_client().await;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if common::dump(&mut c).await.contains(&("after".to_string(), "rotation".to_string(), rev)) {
                break;
            }
            assert!(Instant::now() < deadline, "member {i} did not get the write after the rotation; log:\n{}", m.log());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    for m in &cluster.members {
        assert!(!m.log_shows("revoked"), "a member dialled a peer with the rotated-out certificate:\n{}", m.log());
    }
    // the CRL does refuse the old pair: the check above could fail
    let old_dialer = PeerDialer::new(None, Some(pki.client_config(Some((&old.0, &old.1)), b"http/1.1")));
    let url = format!("https://127.0.0.1:{}", cluster.proxies[0].port);
    let refused = common::peer_members(&old_dialer, &url).await.is_err();
    assert!(refused, "the revoked old peer certificate was served");
    assert!(cluster.members[0].log_shows("certificate serial dd revoked"), "{}", cluster.members[0].log());
}

#[tokio::test]
async fn tls_min_version_13_refuses_tls12_clients_on_client_and_peer_listeners() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let pair = pki.issue("server", "etcd-server", &["127.0.0.1"], true);
    let ca = pki.ca_file();
    let mut m = Member::new(&dir.path().join("m0.etcd"), &[
        "--cert-file", &pair.0, "--key-file", &pair.1,
        "--peer-cert-file", &pair.0, "--peer-key-file", &pair.1, "--peer-trusted-ca-file", &ca,
        "--tls-min-version", "TLS1.3",
    ]);
    m.client_scheme = "https";
    m.peer_scheme = "https";
    m.start();
    let all = rustls::crypto::ring::default_provider().cipher_suites;
    let only = |v: &'static rustls::SupportedProtocolVersion, cert: Option<(&str, &str)>| {
        pki.client_config_limited(cert, b"h2", &all, &[v])
    };
    tls_channel(&m, only(&rustls::version::TLS13, None)).await;
    assert!(!handshake_ok(client_addr(&m), only(&rustls::version::TLS12, None)).await, "TLS 1.2 accepted on the client URL");
    let peer = SocketAddr::from(([127, 0, 0, 1], m.peer_port));
    let peer_cert = Some((pair.0.as_str(), pair.1.as_str()));
    assert!(handshake_ok(peer, only(&rustls::version::TLS13, peer_cert)).await, "TLS 1.3 refused on the peer URL");
    assert!(!handshake_ok(peer, only(&rustls::version::TLS12, peer_cert)).await, "TLS 1.2 accepted on the peer URL");
    assert!(m.log_shows("rejected connection"), "{}", m.log());
}

#[tokio::test]
async fn tls_max_version_12_refuses_tls13_only_clients() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let pair = pki.issue("server", "etcd-server", &["127.0.0.1"], true);
    let m = start_https_member(dir.path(), &pair, &["--tls-max-version", "TLS1.2"]);
    let all = rustls::crypto::ring::default_provider().cipher_suites;
    let only = |v: &'static rustls::SupportedProtocolVersion| pki.client_config_limited(None, b"h2", &all, &[v]);
    tls_channel(&m, only(&rustls::version::TLS12)).await;
    assert!(!handshake_ok(client_addr(&m), only(&rustls::version::TLS13)).await, "TLS 1.3 accepted with --tls-max-version TLS1.2");
}

#[tokio::test]
async fn bad_tls_version_flags_stop_start_with_etcds_errors() {
    let dir = tempfile::tempdir().unwrap();
    for (i, (args, want)) in [
        (&["--tls-min-version", "TLS1.0"][..], r#"unexpected TLS version "TLS1.0" (must be one of: TLS1.2, TLS1.3)"#),
        (&["--tls-min-version", "TLS1.3", "--tls-max-version", "TLS1.2"][..], "min version (TLS1.3) is greater than max version (TLS1.2)"),
        (
            &["--tls-min-version", "TLS1.3", "--cipher-suites", "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256"][..],
            "cipher suites cannot be configured when only TLS1.3 is enabled",
        ),
    ]
    .into_iter()
    .enumerate()
    {
        let mut m = Member::new(&dir.path().join(format!("m{i}.etcd")), args);
        m.start();
        let status = m.wait_exit(Duration::from_secs(20)).unwrap_or_else(|| panic!("etcd-rs kept running with {args:?}"));
        assert!(!status.success());
        assert!(m.log().contains(want), "{args:?}: {}", m.log());
    }
}
