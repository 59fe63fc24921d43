//! TLS for the client and peer listeners and for outgoing peer connections, as etcd has it
//! (rustls on the ring provider).
//!
//! - `--cert-file/--key-file` (or `--auto-tls`) serve the `https://` client URLs; ALPN offers h2
//!   and http/1.1, so gRPC and `/health`/`/version` share the port as on plain http.
//! - `--trusted-ca-file` or `--client-cert-auth` require a client certificate signed by that CA
//!   (etcd's RequireAndVerifyClientCert: a CA file alone is enough to require one).
//! - `--peer-*` do the same for `https://` peer URLs, plus `--peer-cert-allowed-cn`, and etcd's
//!   peer listener check that a client certificate carrying SANs names the connecting IP. The
//!   same peer certificate is this member's client certificate when it dials https peers.
//! - `--auto-tls/--peer-auto-tls` generate a self-signed certificate in
//!   `<data-dir>/fixtures/{client,peer}` (kept across restarts), valid
//!   `--self-signed-cert-validity` years; peers with auto TLS skip verifying each other's
//!   certificates, as etcd's InsecureSkipVerify does.
//!
//! The invariant: an https URL is never served or dialled in plain text. A configuration that
//! cannot serve TLS is a startup error; http URLs stay plain even when certificates are given
//! (etcd does the same, with a warning).

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use crate::config::ServerConfig;

/// A TLS handshake that takes longer than this is dropped (a stuck client never blocks others:
/// each handshake runs on its own task).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The TLS flags of one side (client or peer), as given.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsFlags {
    pub cert_file: String,
    pub key_file: String,
    pub trusted_ca_file: String,
    pub client_cert_auth: bool,
    pub auto_tls: bool,
    /// `--peer-cert-allowed-cn` (peer side only).
    pub allowed_cn: String,
}

impl TlsFlags {
    /// etcd's TLSInfo.Empty(): no certificate configured (before auto TLS).
    fn empty(&self) -> bool {
        self.cert_file.is_empty() && self.key_file.is_empty()
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TlsError(pub String);

fn tls_err<T>(msg: impl Into<String>) -> Result<T, TlsError> {
    Err(TlsError(msg.into()))
}

/// Checks done before anything is bound or generated, with etcd's messages where it has them.
/// `client_urls`/`peer_urls` are the listen URLs.
pub fn check_flags(
    client: &TlsFlags,
    peer: &TlsFlags,
    client_urls: &[url::Url],
    peer_urls: &[url::Url],
) -> Result<(), TlsError> {
    for (flags, cert_flags) in [(client, "--cert-file, --key-file"), (peer, "--peer-cert-file, --peer-key-file")] {
        if flags.cert_file.is_empty() != flags.key_file.is_empty() {
            return tls_err(format!(
                "KeyFile and CertFile must both be present[key: {}, cert: {}] ({cert_flags})",
                flags.key_file, flags.cert_file
            ));
        }
    }
    for u in client_urls.iter().filter(|u| u.scheme() == "https") {
        if client.empty() && !client.auto_tls {
            return tls_err(format!(
                "TLS key/cert (--cert-file, --key-file) must be provided for client url {} with HTTPS scheme",
                crate::config::url_string(u)
            ));
        }
    }
    for u in peer_urls.iter().filter(|u| u.scheme() == "https") {
        if peer.empty() && !peer.auto_tls {
            return tls_err(format!(
                "cannot listen on TLS for {}:{}: KeyFile and CertFile are not presented",
                u.host_str().unwrap_or(""),
                u.port().unwrap_or(0)
            ));
        }
    }
    Ok(())
}

/// The TLS configurations this member runs with, built once at start.
#[derive(Clone, Default)]
pub struct TlsSetup {
    /// For `https://` client listeners; None when no client URL is https.
    pub client: Option<Arc<rustls::ServerConfig>>,
    /// For `https://` peer listeners; None when no peer URL is https.
    pub peer: Option<Arc<rustls::ServerConfig>>,
    /// For dialling https peers; None when this member has no peer certificate.
    pub peer_dial: Option<Arc<rustls::ClientConfig>>,
}

/// A certificate/key pair to serve with, after auto TLS.
struct CertInfo {
    cert_file: PathBuf,
    key_file: PathBuf,
    /// Generated by auto TLS: peers then skip verification (etcd's InsecureSkipVerify).
    self_signed: bool,
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl TlsSetup {
    /// Loads certificates (generating auto-TLS ones when asked) and builds the rustls configs.
    pub fn load(cfg: &ServerConfig) -> Result<TlsSetup, TlsError> {
        let validity = cfg.self_signed_cert_validity;
        // https metrics listeners serve with the client certificate, as etcd's
        let client_https = cfg.listen_client_urls.iter().chain(&cfg.listen_metrics_urls).any(|u| u.scheme() == "https");
        let peer_https = cfg.listen_peer_urls.iter().any(|u| u.scheme() == "https");
        let client_cert = resolve_cert("client", &cfg.client_tls, &cfg.data_dir, &cfg.listen_client_urls, validity)?;
        let peer_cert = resolve_cert("peer", &cfg.peer_tls, &cfg.data_dir, &cfg.listen_peer_urls, validity)?;
        for (what, urls, cert, flags) in [
            ("client", &cfg.listen_client_urls, &client_cert, &cfg.client_tls),
            ("peer", &cfg.listen_peer_urls, &peer_cert, &cfg.peer_tls),
        ] {
            for u in urls.iter().filter(|u| u.scheme() == "http") {
                if cert.is_some() {
                    tracing::warn!(url = %crate::config::url_string(u), "scheme is HTTP while key and cert files are present; ignoring key and cert files ({what})");
                }
                if flags.client_cert_auth {
                    tracing::warn!(url = %crate::config::url_string(u), "scheme is HTTP while {what} client cert auth is enabled; ignoring client cert auth for this URL");
                }
            }
        }
        let mut setup = TlsSetup::default();
        if let (true, Some(c)) = (client_https, &client_cert) {
            tracing::info!(cert = %c.cert_file.display(), key = %c.key_file.display(), trusted_ca = %cfg.client_tls.trusted_ca_file, client_cert_auth = cfg.client_tls.client_cert_auth, "starting with client TLS");
            setup.client = Some(server_config(c, &cfg.client_tls, "", &[b"h2", b"http/1.1"], "trusted-ca-file")?);
        }
        if let Some(c) = &peer_cert {
            if peer_https {
                tracing::info!(cert = %c.cert_file.display(), key = %c.key_file.display(), trusted_ca = %cfg.peer_tls.trusted_ca_file, client_cert_auth = cfg.peer_tls.client_cert_auth, "starting with peer TLS");
                setup.peer = Some(server_config(c, &cfg.peer_tls, &cfg.peer_tls.allowed_cn, &[b"h2"], "peer-trusted-ca-file")?);
            }
            setup.peer_dial = Some(peer_client_config(c, &cfg.peer_tls)?);
        }
        Ok(setup)
    }
}

/// The certificate to serve with: the given files, a generated one for auto TLS, or none.
fn resolve_cert(
    what: &str,
    flags: &TlsFlags,
    data_dir: &Path,
    urls: &[url::Url],
    validity_years: u32,
) -> Result<Option<CertInfo>, TlsError> {
    if !flags.empty() {
        if flags.auto_tls {
            tracing::warn!("ignoring {what} auto TLS since certs given");
        }
        return Ok(Some(CertInfo {
            cert_file: PathBuf::from(&flags.cert_file),
            key_file: PathBuf::from(&flags.key_file),
            self_signed: false,
        }));
    }
    if !flags.auto_tls {
        return Ok(None);
    }
    let hosts: Vec<String> = urls
        .iter()
        .filter_map(|u| u.host_str())
        .map(|h| h.trim_start_matches('[').trim_end_matches(']').to_string())
        .collect();
    self_cert(&data_dir.join("fixtures").join(what), &hosts, validity_years).map(Some)
}

/// etcd's transport.SelfCert: reuse `<dir>/cert.pem` + `key.pem` when both exist, else create
/// a self-signed ECDSA certificate (organization "etcd") naming `hosts` (IPs as IP SANs).
fn self_cert(dir: &Path, hosts: &[String], validity_years: u32) -> Result<CertInfo, TlsError> {
    let cert_file = dir.join("cert.pem");
    let key_file = dir.join("key.pem");
    if cert_file.exists() && key_file.exists() {
        return Ok(CertInfo { cert_file, key_file, self_signed: true });
    }
    std::fs::create_dir_all(dir).map_err(|e| TlsError(format!("cannot create cert directory {}: {e}", dir.display())))?;
    let mut params = rcgen::CertificateParams::new(hosts.to_vec())
        .map_err(|e| TlsError(format!("cannot generate a self-signed certificate for {hosts:?}: {e}")))?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(rcgen::DnType::OrganizationName, "etcd");
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now;
    params.not_after = now + time::Duration::days(365 * i64::from(validity_years.max(1)));
    params.key_usages = vec![rcgen::KeyUsagePurpose::KeyEncipherment, rcgen::KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages =
        vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth, rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let key = rcgen::KeyPair::generate().map_err(|e| TlsError(format!("cannot generate ECDSA key: {e}")))?;
    let cert = params.self_signed(&key).map_err(|e| TlsError(format!("cannot generate x509 certificate: {e}")))?;
    std::fs::write(&cert_file, cert.pem()).map_err(|e| TlsError(format!("cannot write {}: {e}", cert_file.display())))?;
    write_private(&key_file, key.serialize_pem().as_bytes())?;
    tracing::info!(path = %cert_file.display(), "created cert file");
    tracing::info!(path = %key_file.display(), "created key file");
    Ok(CertInfo { cert_file, key_file, self_signed: true })
}

fn write_private(path: &Path, data: &[u8]) -> Result<(), TlsError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| TlsError(format!("cannot write {}: {e}", path.display())))?;
    f.write_all(data).map_err(|e| TlsError(format!("cannot write {}: {e}", path.display())))
}

fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| TlsError(format!("cannot read certificate {}: {e}", path.display())))?;
    if certs.is_empty() {
        return tls_err(format!("no certificate found in {}", path.display()));
    }
    Ok(certs)
}

fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| TlsError(format!("cannot read private key {}: {e}", path.display())))
}

fn load_roots(path: &str) -> Result<Arc<RootCertStore>, TlsError> {
    let mut roots = RootCertStore::empty();
    for c in load_certs(Path::new(path))? {
        roots.add(c).map_err(|e| TlsError(format!("bad CA certificate in {path}: {e}")))?;
    }
    Ok(Arc::new(roots))
}

/// A listener's rustls config: our certificate, and client certificates required and verified
/// against the trusted CA when etcd would (`--trusted-ca-file` or `--client-cert-auth`).
fn server_config(
    cert: &CertInfo,
    flags: &TlsFlags,
    allowed_cn: &str,
    alpn: &[&[u8]],
    ca_flag: &str,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let provider = provider();
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError(e.to_string()))?;
    let builder = if !flags.trusted_ca_file.is_empty() || flags.client_cert_auth {
        if flags.trusted_ca_file.is_empty() {
            return tls_err(format!(
                "client certificate authentication needs --{ca_flag} in etcd-rs (the system's root certificates are not used to verify clients)"
            ));
        }
        let roots = load_roots(&flags.trusted_ca_file)?;
        let webpki = WebPkiClientVerifier::builder_with_provider(roots, provider)
            .build()
            .map_err(|e| TlsError(format!("--{ca_flag}: {e}")))?;
        let verifier: Arc<dyn ClientCertVerifier> = if allowed_cn.is_empty() {
            webpki
        } else {
            Arc::new(AllowedCnClientVerifier { inner: webpki, allowed_cn: allowed_cn.to_string() })
        };
        builder.with_client_cert_verifier(verifier)
    } else {
        builder.with_no_client_auth()
    };
    let mut config = builder
        .with_single_cert(load_certs(&cert.cert_file)?, load_key(&cert.key_file)?)
        .map_err(|e| TlsError(format!("cannot use {} with {}: {e}", cert.cert_file.display(), cert.key_file.display())))?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// How this member dials https peers: its peer certificate as client certificate, the peer CA
/// as roots (or no verification for auto-TLS certificates, as etcd), and the allowed CN.
fn peer_client_config(cert: &CertInfo, flags: &TlsFlags) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let provider = provider();
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError(e.to_string()))?;
    let verifier: Arc<dyn ServerCertVerifier> = if cert.self_signed {
        Arc::new(SkipServerVerification { provider: provider.clone() })
    } else if flags.trusted_ca_file.is_empty() {
        return tls_err(
            "https peer URLs with --peer-cert-file need --peer-trusted-ca-file in etcd-rs (the system's root certificates are not used to verify peers)",
        );
    } else {
        rustls::client::WebPkiServerVerifier::builder_with_provider(load_roots(&flags.trusted_ca_file)?, provider.clone())
            .build()
            .map_err(|e| TlsError(format!("--peer-trusted-ca-file: {e}")))?
    };
    let verifier: Arc<dyn ServerCertVerifier> = if flags.allowed_cn.is_empty() {
        verifier
    } else {
        Arc::new(AllowedCnServerVerifier { inner: verifier, allowed_cn: flags.allowed_cn.clone() })
    };
    let mut config = builder
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(load_certs(&cert.cert_file)?, load_key(&cert.key_file)?)
        .map_err(|e| TlsError(format!("cannot use {} with {}: {e}", cert.cert_file.display(), cert.key_file.display())))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// The subject common name of a DER certificate (the last CN, as Go's pkix.Name keeps it).
fn common_name(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    cert.subject().iter_common_name().filter_map(|cn| cn.as_str().ok()).last().map(str::to_string)
}

fn cn_mismatch() -> rustls::Error {
    rustls::Error::General("client certificate authentication failed".into())
}

/// The handshake-signature methods of a verifier that only adds a check to `self.inner`'s
/// certificate verification (client and server verifiers are different traits with the same
/// signature methods).
macro_rules! delegate_signature_checks {
    () => {
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            self.inner.verify_tls12_signature(message, cert, dss)
        }
        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            self.inner.verify_tls13_signature(message, cert, dss)
        }
        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.inner.supported_verify_schemes()
        }
    };
}

/// `--peer-cert-allowed-cn` on the listening side: a verified client certificate must carry it.
#[derive(Debug)]
struct AllowedCnClientVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    allowed_cn: String,
}

impl ClientCertVerifier for AllowedCnClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }
    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let ok = self.inner.verify_client_cert(end_entity, intermediates, now)?;
        if common_name(end_entity).as_deref() != Some(self.allowed_cn.as_str()) {
            return Err(cn_mismatch());
        }
        Ok(ok)
    }
    delegate_signature_checks!();
}

/// `--peer-cert-allowed-cn` on the dialling side: etcd's TLS config checks the CN of the peer
/// it dials too (the same VerifyPeerCertificate serves both directions).
#[derive(Debug)]
struct AllowedCnServerVerifier {
    inner: Arc<dyn ServerCertVerifier>,
    allowed_cn: String,
}

impl ServerCertVerifier for AllowedCnServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let ok = self.inner.verify_server_cert(end_entity, intermediates, server_name, ocsp, now)?;
        if common_name(end_entity).as_deref() != Some(self.allowed_cn.as_str()) {
            return Err(cn_mismatch());
        }
        Ok(ok)
    }
    delegate_signature_checks!();
}

/// Peers using auto-TLS certificates accept any server certificate (etcd: InsecureSkipVerify
/// for self-signed peer certs); the handshake signatures are still checked.
#[derive(Debug)]
struct SkipServerVerification {
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for SkipServerVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// etcd's peer-listener checkSAN: a client certificate that lists IP or DNS SANs must name the
/// address the connection comes from (DNS names by forward lookup; etcd also tries a reverse
/// lookup first, which etcd-rs does not).
async fn check_client_san(der: &[u8], remote: IpAddr) -> Result<(), String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| format!("bad client certificate: {e}"))?;
    let mut ips = Vec::new();
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            match n {
                x509_parser::extensions::GeneralName::IPAddress(b) => match b.len() {
                    4 => ips.push(IpAddr::from(<[u8; 4]>::try_from(*b).unwrap_or_default())),
                    16 => ips.push(IpAddr::from(<[u8; 16]>::try_from(*b).unwrap_or_default())),
                    _ => {}
                },
                x509_parser::extensions::GeneralName::DNSName(d) => names.push(d.to_string()),
                _ => {}
            }
        }
    }
    if ips.is_empty() && names.is_empty() {
        return Ok(());
    }
    let canon = |ip: IpAddr| match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    };
    let remote = canon(remote);
    if ips.iter().any(|ip| canon(*ip) == remote) {
        return Ok(());
    }
    if names.is_empty() {
        let list: Vec<String> = ips.iter().map(|i| i.to_string()).collect();
        return Err(format!("x509: certificate is valid for {}, not {remote}", list.join(", ")));
    }
    for name in names.iter().filter(|n| !n.starts_with("*.")) {
        if let Ok(addrs) = tokio::net::lookup_host((name.as_str(), 0)).await {
            if addrs.map(|a| canon(a.ip())).any(|ip| ip == remote) {
                return Ok(());
            }
        }
    }
    Err(format!("tls: {:?} does not match any of DNSNames {:?}", remote.to_string(), names))
}

/// One accepted TLS connection, served by tonic like a plain TCP stream.
pub struct TlsConn(tokio_rustls::server::TlsStream<TcpStream>);

/// What tonic records of an accepted TLS connection in each request's extensions: its
/// addresses and the common name of the client certificate the handshake verified (etcd's
/// AuthInfoFromTLS names the user by it).
#[derive(Clone, Debug)]
pub struct TlsConnectInfo {
    pub tcp: tonic::transport::server::TcpConnectInfo,
    /// None without a client certificate; Some("") for one without a CN (Go's empty CommonName).
    pub client_cn: Option<Arc<str>>,
}

/// The verified client certificate's CN of the TLS connection a request came on.
pub fn client_cert_cn(ext: &tonic::Extensions) -> Option<Arc<str>> {
    ext.get::<TlsConnectInfo>().and_then(|i| i.client_cn.clone())
}

impl tonic::transport::server::Connected for TlsConn {
    type ConnectInfo = TlsConnectInfo;
    fn connect_info(&self) -> Self::ConnectInfo {
        let (tcp, session) = self.0.get_ref();
        // rustls keeps a client certificate only once it verified it
        let client_cn = session.peer_certificates().and_then(|c| c.first()).map(|c| Arc::from(common_name(c).unwrap_or_default()));
        TlsConnectInfo { tcp: tcp.connect_info(), client_cn }
    }
}

impl AsyncRead for TlsConn {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// Accepts TCP connections on `listener` and yields them after a TLS handshake (each handshake
/// on its own task, bounded by a timeout). Failed handshakes are logged as etcd logs them
/// ("rejected connection") and never reach the server. `check_san`: the peer listener's
/// client-certificate SAN check. Stops accepting when the returned stream is dropped.
pub fn incoming(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
    check_san: bool,
) -> tokio_stream::wrappers::ReceiverStream<io::Result<TlsConn>> {
    let (tx, rx) = mpsc::channel::<io::Result<TlsConn>>(64);
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                _ = tx.closed() => return,
            };
            let (tcp, remote) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                match handshake(acceptor, tcp, remote, check_san).await {
                    Ok(conn) => {
                        let _ = tx.send(Ok(conn)).await;
                    }
                    Err(e) => tracing::warn!(remote_addr = %remote, error = %e, "rejected connection"),
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

async fn handshake(
    acceptor: tokio_rustls::TlsAcceptor,
    tcp: TcpStream,
    remote: SocketAddr,
    check_san: bool,
) -> Result<TlsConn, String> {
    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => return Err(e.to_string()),
        Err(_) => return Err("TLS handshake timed out".into()),
    };
    if check_san {
        if let Some(cert) = tls.get_ref().1.peer_certificates().and_then(|c| c.first()) {
            check_client_san(cert, remote.ip()).await?;
        }
    }
    Ok(TlsConn(tls))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> url::Url {
        url::Url::parse(s).unwrap()
    }

    #[test]
    fn https_client_url_without_cert_is_refused_with_etcds_words() {
        let e = check_flags(&TlsFlags::default(), &TlsFlags::default(), &[url("https://127.0.0.1:2379")], &[]).unwrap_err();
        assert_eq!(
            e.0,
            "TLS key/cert (--cert-file, --key-file) must be provided for client url https://127.0.0.1:2379 with HTTPS scheme"
        );
        let auto = TlsFlags { auto_tls: true, ..Default::default() };
        assert!(check_flags(&auto, &TlsFlags::default(), &[url("https://127.0.0.1:2379")], &[]).is_ok());
    }

    #[test]
    fn https_peer_url_without_cert_is_refused() {
        let e = check_flags(&TlsFlags::default(), &TlsFlags::default(), &[], &[url("https://127.0.0.1:2380")]).unwrap_err();
        assert_eq!(e.0, "cannot listen on TLS for 127.0.0.1:2380: KeyFile and CertFile are not presented");
    }

    #[test]
    fn cert_without_key_is_refused() {
        let half = TlsFlags { cert_file: "/c.pem".into(), ..Default::default() };
        assert!(check_flags(&half, &TlsFlags::default(), &[], &[]).unwrap_err().0.contains("must both be present"));
    }

    #[test]
    fn self_cert_is_created_once_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let a = self_cert(dir.path(), &["127.0.0.1".into(), "localhost".into()], 1).unwrap();
        let first = std::fs::read(&a.cert_file).unwrap();
        let b = self_cert(dir.path(), &["127.0.0.1".into()], 1).unwrap();
        assert_eq!(first, std::fs::read(&b.cert_file).unwrap());
        let certs = load_certs(&b.cert_file).unwrap();
        let (_, parsed) = x509_parser::parse_x509_certificate(&certs[0]).unwrap();
        let org: Vec<_> = parsed.subject().iter_organization().filter_map(|o| o.as_str().ok()).collect();
        assert_eq!(org, vec!["etcd"]);
        assert!(load_key(&b.key_file).is_ok());
    }

    #[tokio::test]
    async fn client_san_must_name_the_connecting_ip() {
        let mut params = rcgen::CertificateParams::new(vec!["127.0.0.2".to_string()]).unwrap();
        params.distinguished_name.push(rcgen::DnType::CommonName, "peer");
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        assert!(check_client_san(cert.der(), "127.0.0.2".parse().unwrap()).await.is_ok());
        let e = check_client_san(cert.der(), "127.0.0.1".parse().unwrap()).await.unwrap_err();
        assert!(e.contains("not 127.0.0.1"), "{e}");
        assert_eq!(common_name(cert.der()).as_deref(), Some("peer"));
    }
}
