//! Client and peer TLS against real `etcd-rs` processes, with a CA, server, client and peer
//! certificates generated at test time (rcgen).

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::cluster::{member_ip, TestCluster};
use common::Member;
use etcd_proto::etcdserverpb::kv_client::KvClient;
use etcd_proto::etcdserverpb::RangeRequest;
use etcd_raft::PeerDialer;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::transport::Channel;

/// A test CA and the PEM files of certificates it signed, in one directory.
struct Pki {
    dir: PathBuf,
    ca: rcgen::Certificate,
    ca_key: rcgen::KeyPair,
}

impl Pki {
    fn new(dir: &Path) -> Pki {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(rcgen::DnType::CommonName, "etcd-rs test CA");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign];
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let ca = params.self_signed(&ca_key).unwrap();
        std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
        Pki { dir: dir.to_path_buf(), ca, ca_key }
    }

    fn ca_file(&self) -> String {
        self.dir.join("ca.pem").display().to_string()
    }

    /// Writes `<name>.pem` and `<name>-key.pem`; returns (cert, key) paths.
    fn issue(&self, name: &str, cn: &str, sans: &[&str], server: bool) -> (String, String) {
        let mut params = rcgen::CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        params.distinguished_name.push(rcgen::DnType::CommonName, cn);
        params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature, rcgen::KeyUsagePurpose::KeyEncipherment];
        params.extended_key_usages = if server {
            vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth, rcgen::ExtendedKeyUsagePurpose::ClientAuth]
        } else {
            vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth]
        };
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.ca, &self.ca_key).unwrap();
        let (c, k) = (self.dir.join(format!("{name}.pem")), self.dir.join(format!("{name}-key.pem")));
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        (c.display().to_string(), k.display().to_string())
    }

    /// A client TLS configuration trusting the CA, with a client certificate when given.
    fn client_config(&self, cert: Option<(&str, &str)>, alpn: &[u8]) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_file_iter(self.ca_file()).unwrap() {
            roots.add(c.unwrap()).unwrap();
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots);
        let mut cfg = match cert {
            Some((c, k)) => builder
                .with_client_auth_cert(
                    CertificateDer::pem_file_iter(c).unwrap().map(|c| c.unwrap()).collect(),
                    PrivateKeyDer::from_pem_file(k).unwrap(),
                )
                .unwrap(),
            None => builder.with_no_client_auth(),
        };
        cfg.alpn_protocols = vec![alpn.to_vec()];
        Arc::new(cfg)
    }
}

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
        let rogue = PeerDialer::new(None, Some(pki.client_config(Some((cert, key)), b"h2")));
        let refused = match rogue.connect(&peer_url, Duration::from_secs(2)).await {
            Err(_) => true,
            Ok(ch) => etcd_proto::etcdrspb::peer_client::PeerClient::new(ch)
                .members(etcd_proto::etcdrspb::MembersRequest {})
                .await
                .is_err(),
        };
        assert!(refused, "a peer with {cert} was served");
    }
    assert!(m.log_shows("client certificate authentication failed"), "{}", m.log());
    // The right certificate is served.
    let good = PeerDialer::new(None, Some(pki.client_config(Some((&peer_cert, &peer_key)), b"h2")));
    let ch = good.connect(&peer_url, Duration::from_secs(2)).await.expect("dial with the peer certificate");
    etcd_proto::etcdrspb::peer_client::PeerClient::new(ch)
        .members(etcd_proto::etcdrspb::MembersRequest {})
        .await
        .expect("Members over peer TLS");
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
