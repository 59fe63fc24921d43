//! Client and peer TLS against real `etcd-rs` processes, with a CA, server, client and peer
//! certificates generated at test time (rcgen).

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::cluster::{member_ip, TestCluster};
use common::pki::{handshake_ok, Pki};
use common::Member;
use etcd_proto::etcdserverpb::kv_client::KvClient;
use etcd_proto::etcdserverpb::RangeRequest;
use etcd_raft::PeerDialer;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::transport::Channel;


/// A KV client over TLS, once a linearizable read succeeds (at most 20 s).
async fn tls_ready_client(m: &Member, tls: Arc<rustls::ClientConfig>) -> KvClient<Channel> {
    let dialer = PeerDialer::new(None, Some(tls));
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(ch) = dialer.connect(&m.endpoint(), Duration::from_secs(1)).await {
            let mut c = KvClient::new(ch);
            if c.range(RangeRequest { key: b"probe".to_vec(), ..Default::default() }).await.is_ok() {
                return c;
            }
        }
        assert!(Instant::now() < deadline, "etcd-rs did not answer over TLS in 20s; log:\n{}", m.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// GET `path` over HTTPS/1.1 (ALPN http/1.1); returns the whole response.
async fn https_get(port: u16, path: &str, tls: Arc<rustls::ClientConfig>) -> String {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let name = ServerName::IpAddress(std::net::IpAddr::from([127, 0, 0, 1]).into());
    let mut s = tokio_rustls::TlsConnector::from(tls).connect(name, tcp).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn client_tls_with_client_cert_auth_serves_grpc_and_https_and_refuses_clients_without_a_cert() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let (server_cert, server_key) = pki.issue("server", "etcd-server", &["127.0.0.1", "localhost"], true);
    let (client_cert, client_key) = pki.issue("client", "root", &[], false);
    let ca = pki.ca_file();
    let flags = [
        "--cert-file", &server_cert, "--key-file", &server_key, "--trusted-ca-file", &ca, "--client-cert-auth",
    ];
    let mut m = Member::new(&dir.path().join("m0.etcd"), &flags);
    m.client_scheme = "https";
    m.start();

    let with_cert = pki.client_config(Some((&client_cert, &client_key)), b"h2");
    let mut c = tls_ready_client(&m, with_cert.clone()).await;
    let rev = common::put(&mut c, "foo", "bar").await.expect("put over TLS");
    let kvs = common::dump(&mut c).await;
    assert!(kvs.contains(&("foo".to_string(), "bar".to_string(), rev)), "{kvs:?}");

    // No client certificate: the handshake (or, in TLS 1.3, the first request) is refused.
    let without = PeerDialer::new(None, Some(pki.client_config(None, b"h2")));
    let refused = match without.connect(&m.endpoint(), Duration::from_secs(2)).await {
        Err(_) => true,
        Ok(ch) => KvClient::new(ch).range(RangeRequest { key: b"foo".to_vec(), ..Default::default() }).await.is_err(),
    };
    assert!(refused, "a client without a certificate was served");
    // Plain text on the https port is not served either.
    let plain = Channel::from_shared(format!("http://127.0.0.1:{}", m.client_port)).unwrap();
    let plain_ok = match plain.connect_timeout(Duration::from_secs(2)).connect().await {
        Err(_) => false,
        Ok(ch) => tokio::time::timeout(
            Duration::from_secs(3),
            KvClient::new(ch).range(RangeRequest { key: b"foo".to_vec(), ..Default::default() }),
        )
        .await
        .is_ok_and(|r| r.is_ok()),
    };
    assert!(!plain_ok, "plain text was served on an https URL");
    assert!(m.log().contains("rejected connection"), "{}", m.log());

    // /health and /version answer over HTTPS/1.1 on the same port.
    let health = https_get(m.client_port, "/health", pki.client_config(Some((&client_cert, &client_key)), b"http/1.1")).await;
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    assert!(health.contains(r#""health":"true""#), "{health}");
    let version = https_get(m.client_port, "/version", pki.client_config(Some((&client_cert, &client_key)), b"http/1.1")).await;
    assert!(version.contains(r#""etcdserver""#), "{version}");
}

#[tokio::test]
async fn https_peers_with_client_cert_auth_elect_a_leader_and_replicate() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    // One peer certificate for all members: it names the advertised address (127.0.0.1, the
    // proxies) and each member's own peer IP.
    let sans: Vec<String> = ["127.0.0.1".to_string()].into_iter().chain((0..3).map(|i| member_ip(i).to_string())).collect();
    let sans: Vec<&str> = sans.iter().map(String::as_str).collect();
    let (peer_cert, peer_key) = pki.issue("peer", "etcd-peer", &sans, true);
    let ca = pki.ca_file();
    let flags = [
        "--peer-cert-file", &peer_cert, "--peer-key-file", &peer_key, "--peer-trusted-ca-file", &ca,
        "--peer-client-cert-auth", "--peer-cert-allowed-cn", "etcd-peer",
    ];
    let cluster = TestCluster::start_with_peer_scheme(dir.path(), 3, &flags, "https").await;
    let leader = cluster.wait_leader(&[0, 1, 2]).await;
    let mut c = cluster.members[leader].ready_client().await;
    let rev = common::put(&mut c, "over", "tls").await.expect("put on the leader");
    let follower = (leader + 1) % 3;
    let mut f = cluster.members[follower].ready_client().await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got = common::dump(&mut f).await;
        if got.contains(&("over".to_string(), "tls".to_string(), rev)) {
            break;
        }
        assert!(Instant::now() < deadline, "write not replicated to member {follower}: {got:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for m in &cluster.members {
        assert!(!m.log().contains("rejected connection"), "{}", m.log());
    }
}

#[tokio::test]
async fn peer_with_an_untrusted_certificate_or_another_cn_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let other_dir = dir.path().join("other");
    std::fs::create_dir_all(&other_dir).unwrap();
    let other = Pki::new(&other_dir);
    let (peer_cert, peer_key) = pki.issue("peer", "etcd-peer", &["127.0.0.1"], true);
    let (rogue_cert, rogue_key) = other.issue("rogue", "etcd-peer", &["127.0.0.1"], true);
    let (wrong_cn_cert, wrong_cn_key) = pki.issue("wrong-cn", "someone-else", &["127.0.0.1"], true);
    let ca = pki.ca_file();
    let mut m = Member::new(&dir.path().join("m0.etcd"), &[
        "--peer-cert-file", &peer_cert, "--peer-key-file", &peer_key, "--peer-trusted-ca-file", &ca,
        "--peer-client-cert-auth", "--peer-cert-allowed-cn", "etcd-peer",
    ]);
    m.peer_scheme = "https";
    m.start();
    let _ = m.ready_client().await;
    let peer_url = format!("https://127.0.0.1:{}", m.peer_port);
    // A dialer trusting our CA but presenting the other CA's certificate.
    for (cert, key) in [(&rogue_cert, &rogue_key), (&wrong_cn_cert, &wrong_cn_key)] {
        let rogue = PeerDialer::new(None, Some(pki.client_config(Some((cert, key)), b"http/1.1")));
        let refused = common::peer_members(&rogue, &peer_url).await.is_err();
        assert!(refused, "a peer with {cert} was served");
    }
    assert!(m.log_shows("client certificate authentication failed"), "{}", m.log());
    // The right certificate is served.
    let good = PeerDialer::new(None, Some(pki.client_config(Some((&peer_cert, &peer_key)), b"http/1.1")));
    common::peer_members(&good, &peer_url).await.expect("GET /members over peer TLS");
}

/// kubeadm's shape: clients on https with client-cert auth, probes on a plain-http metrics URL;
/// an https metrics URL serves with the client certificate (and its client-cert auth), as etcd.
#[tokio::test]
async fn metrics_urls_serve_plain_http_and_https_with_the_client_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let (server_cert, server_key) = pki.issue("server", "etcd-server", &["127.0.0.1", "localhost"], true);
    let (client_cert, client_key) = pki.issue("client", "root", &[], false);
    let ca = pki.ca_file();
    let (plain, tls) = (common::free_port(), common::free_port());
    let metrics = format!("http://127.0.0.1:{plain},https://127.0.0.1:{tls}");
    let flags = [
        "--cert-file", &server_cert, "--key-file", &server_key, "--trusted-ca-file", &ca, "--client-cert-auth",
        "--listen-metrics-urls", &metrics,
    ];
    let mut m = Member::new(&dir.path().join("m0.etcd"), &flags);
    m.client_scheme = "https";
    m.start();
    tls_ready_client(&m, pki.client_config(Some((&client_cert, &client_key)), b"h2")).await;

    let probe = {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", plain)).unwrap();
        s.write_all(b"GET /health?exclude=NOSPACE&serializable=true HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    };
    assert!(probe.starts_with("HTTP/1.1 200"), "{probe}");
    assert!(probe.ends_with(r#"{"health":"true","reason":""}"#), "{probe}");
    let with_cert = pki.client_config(Some((&client_cert, &client_key)), b"http/1.1");
    let readyz = https_get(tls, "/readyz", with_cert.clone()).await;
    assert!(readyz.starts_with("HTTP/1.1 200") && readyz.ends_with("ok\n"), "{readyz}");
    let metrics_body = https_get(tls, "/metrics", with_cert).await;
    assert!(metrics_body.contains("etcd_server_has_leader 1"), "{metrics_body}");
    // client-cert auth holds on the https metrics URL too
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", tls)).await.unwrap();
    let name = ServerName::IpAddress(std::net::IpAddr::from([127, 0, 0, 1]).into());
    let refused = match tokio_rustls::TlsConnector::from(pki.client_config(None, b"http/1.1")).connect(name, tcp).await {
        Err(_) => true,
        Ok(mut s) => {
            let _ = s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await;
            let mut out = Vec::new();
            let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
            !String::from_utf8_lossy(&out).starts_with("HTTP/1.1 200")
        }
    };
    assert!(refused, "a client without a certificate was served on the https metrics URL");
}

/// Whether a client with `tls` is served a KV read on `m` (refused at the handshake or, in
/// TLS 1.3 where the server checks the client certificate after the client finished, at the
/// first request).
async fn served(m: &Member, tls: Arc<rustls::ClientConfig>) -> bool {
    match PeerDialer::new(None, Some(tls)).connect(&m.endpoint(), Duration::from_secs(2)).await {
        Err(_) => false,
        Ok(ch) => KvClient::new(ch).range(RangeRequest { key: b"k".to_vec(), ..Default::default() }).await.is_ok(),
    }
}

#[tokio::test]
async fn cipher_suites_limit_tls12_suites_and_leave_tls13_alone() {
    use rustls::crypto::ring::cipher_suite as cs;
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    // rcgen's keys are ECDSA P-256, so the ECDSA suites are the ones that can be negotiated.
    let (server_cert, server_key) = pki.issue("server", "etcd-server", &["127.0.0.1"], true);
    let mut m = Member::new(&dir.path().join("m0.etcd"), &[
        "--cert-file", &server_cert, "--key-file", &server_key,
        "--cipher-suites", "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,TLS_AES_128_GCM_SHA256",
    ]);
    m.client_scheme = "https";
    m.start();
    let tls12 = &[&rustls::version::TLS12];
    let allowed = pki.client_config_limited(None, b"h2", &[cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256], tls12);
    let mut c = tls_ready_client(&m, allowed.clone()).await;
    common::put(&mut c, "over", "tls1.2").await.expect("put over the allowed TLS 1.2 suite");
    for other in [cs::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384, cs::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256] {
        let refused = pki.client_config_limited(None, b"h2", &[other], tls12);
        assert!(!handshake_ok(([127, 0, 0, 1], m.client_port).into(), refused).await, "{:?} was negotiated", other.suite());
    }
    assert!(m.log_shows("rejected connection"), "{}", m.log());
    // TLS 1.3 suites are not configurable (as in Go): one not in the list still connects.
    let tls13 = pki.client_config_limited(None, b"h2", &[cs::TLS13_CHACHA20_POLY1305_SHA256], &[&rustls::version::TLS13]);
    assert!(served(&m, tls13).await, "TLS 1.3 with a suite not listed was refused");
}

#[tokio::test]
async fn an_unknown_cipher_suite_stops_start_with_etcds_error() {
    let dir = tempfile::tempdir().unwrap();
    let mut m = Member::new(&dir.path().join("m0.etcd"), &["--cipher-suites", "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,TLS_BOGUS"]);
    m.start();
    let status = m.wait_exit(Duration::from_secs(20)).expect("etcd-rs kept running with an unknown cipher suite");
    assert!(!status.success());
    assert!(m.log().contains(r#"unexpected TLS cipher suite "TLS_BOGUS""#), "{}", m.log());
}

#[tokio::test]
async fn a_client_certificate_the_crl_revokes_is_refused_and_the_crl_is_read_again_per_connection() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let (server_cert, server_key) = pki.issue("server", "etcd-server", &["127.0.0.1"], true);
    let revoked = pki.issue_with_serial("revoked", "alice", &[], false, Some(0x5eed01));
    let good = pki.issue_with_serial("good", "bob", &[], false, Some(0x5eed02));
    let crl = dir.path().join("client.crl");
    pki.write_crl(&crl, &[0x5eed01]);
    let (ca, crl_path) = (pki.ca_file(), crl.display().to_string());
    let mut m = Member::new(&dir.path().join("m0.etcd"), &[
        "--cert-file", &server_cert, "--key-file", &server_key, "--trusted-ca-file", &ca, "--client-cert-auth",
        "--client-crl-file", &crl_path,
    ]);
    m.client_scheme = "https";
    m.start();
    let good_tls = pki.client_config(Some((&good.0, &good.1)), b"h2");
    tls_ready_client(&m, good_tls.clone()).await;
    assert!(!served(&m, pki.client_config(Some((&revoked.0, &revoked.1)), b"h2")).await, "a revoked certificate was served");
    // etcd's words, without rustls's "unexpected error: " prefix
    assert!(m.log_shows(r#""error":"transport: certificate serial 5eed01 revoked""#), "{}", m.log());
    // an updated CRL takes effect without a restart
    pki.write_crl(&crl, &[0x5eed01, 0x5eed02]);
    assert!(!served(&m, good_tls.clone()).await, "a certificate revoked after start was served");
    // an unreadable CRL refuses every client certificate (etcd's checkCRL fails the connection)
    std::fs::write(&crl, b"not a CRL").unwrap();
    assert!(!served(&m, good_tls.clone()).await, "served with a garbage CRL");
    pki.write_crl(&crl, &[]);
    assert!(served(&m, good_tls).await, "refused once nothing is revoked");
}

#[tokio::test]
async fn a_client_certificate_not_valid_for_the_allowed_hostname_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let (server_cert, server_key) = pki.issue("server", "etcd-server", &["127.0.0.1"], true);
    let named = pki.issue("named", "someone", &["client.etcd.example"], false);
    let wildcard = pki.issue("wildcard", "someone", &["*.etcd.example"], false);
    // the CN alone is not a hostname (Go >= 1.15)
    let cn_only = pki.issue("cn-only", "client.etcd.example", &["other.example"], false);
    let ca = pki.ca_file();
    let mut m = Member::new(&dir.path().join("m0.etcd"), &[
        "--cert-file", &server_cert, "--key-file", &server_key, "--trusted-ca-file", &ca, "--client-cert-auth",
        "--client-cert-allowed-hostname", "client.etcd.example",
    ]);
    m.client_scheme = "https";
    m.start();
    tls_ready_client(&m, pki.client_config(Some((&named.0, &named.1)), b"h2")).await;
    assert!(served(&m, pki.client_config(Some((&wildcard.0, &wildcard.1)), b"h2")).await, "a wildcard SAN was refused");
    assert!(!served(&m, pki.client_config(Some((&cn_only.0, &cn_only.1)), b"h2")).await, "a certificate naming the host only in its CN was served");
    assert!(m.log_shows("client certificate authentication failed"), "{}", m.log());
}

#[tokio::test]
async fn peer_cert_allowed_hostname_refuses_peers_without_it() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let (peer_cert, peer_key) = pki.issue("peer", "etcd-peer", &["127.0.0.1", "peer.etcd.example"], true);
    let (other_cert, other_key) = pki.issue("other", "etcd-peer", &["127.0.0.1", "other.example"], true);
    let ca = pki.ca_file();
    let mut m = Member::new(&dir.path().join("m0.etcd"), &[
        "--peer-cert-file", &peer_cert, "--peer-key-file", &peer_key, "--peer-trusted-ca-file", &ca,
        "--peer-client-cert-auth", "--peer-cert-allowed-hostname", "peer.etcd.example",
    ]);
    m.peer_scheme = "https";
    m.start();
    let _ = m.ready_client().await;
    let peer_url = format!("https://127.0.0.1:{}", m.peer_port);
    let members = |cert: &str, key: &str| {
        let dialer = PeerDialer::new(None, Some(pki.client_config(Some((cert, key)), b"http/1.1")));
        let url = peer_url.clone();
        async move {
            common::peer_members(&dialer, &url).await.is_ok()
        }
    };
    assert!(!members(&other_cert, &other_key).await, "a peer certificate without the allowed hostname was served");
    assert!(m.log_shows("client certificate authentication failed"), "{}", m.log());
    assert!(members(&peer_cert, &peer_key).await, "the peer certificate naming the allowed hostname was refused");
}

/// etcd's TestEtcdPeerCNAuth: a member whose certificate lacks the CN its peers allow is
/// refused by them, and logs their refusal in Go's words ("remote error: tls: bad
/// certificate"), which tools wait for.
#[tokio::test]
async fn a_member_whose_cn_its_peers_refuse_logs_gos_bad_certificate_alert() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let (good_cert, good_key) = pki.issue("good", "etcd-peer", &["127.0.0.1"], true);
    let (odd_cert, odd_key) = pki.issue("odd", "someone-else", &["127.0.0.1"], true);
    let ca = pki.ca_file();
    let mut good = Member::new(&dir.path().join("good.etcd"), &[
        "--peer-cert-file", &good_cert, "--peer-key-file", &good_key, "--peer-trusted-ca-file", &ca,
        "--peer-client-cert-auth", "--peer-cert-allowed-cn", "etcd-peer",
    ]);
    let mut odd = Member::new(&dir.path().join("odd.etcd"), &[
        "--peer-cert-file", &odd_cert, "--peer-key-file", &odd_key, "--peer-trusted-ca-file", &ca,
        "--peer-client-cert-auth", "--peer-cert-allowed-cn", "someone-else",
    ]);
    good.name = "good".into();
    odd.name = "odd".into();
    let initial = format!("good=https://127.0.0.1:{},odd=https://127.0.0.1:{}", good.peer_port, odd.peer_port);
    for m in [&mut good, &mut odd] {
        m.peer_scheme = "https";
        m.initial_cluster = Some(initial.clone());
        m.start();
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while !odd.log_shows("remote error: tls: bad certificate") {
        assert!(Instant::now() < deadline, "no Go-worded refusal in 20s; log:\n{}", odd.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(good.log_shows("client certificate authentication failed"), "{}", good.log());
}

/// As with Go's flag package, a flag given twice takes its last value instead of refusing the
/// start (etcd's e2e passes `--client-cert-auth` twice when it adds a CRL).
#[tokio::test]
async fn a_flag_given_twice_takes_its_last_value() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let (server_cert, server_key) = pki.issue("server", "etcd-server", &["127.0.0.1"], true);
    let mut m = Member::new(&dir.path().join("m0.etcd"), &[
        "--cert-file", &server_cert, "--key-file", &server_key, "--client-cert-auth", "--client-cert-auth=false",
    ]);
    m.client_scheme = "https";
    m.start();
    // no client certificate needed: the last --client-cert-auth said false
    tls_ready_client(&m, pki.client_config(None, b"h2")).await;
}
