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
//! - `--client-cert-allowed-hostname` / `--peer-cert-allowed-hostname`: a verified client
//!   certificate must be valid for that name (DNS or IP SAN, wildcards as Go's VerifyHostname;
//!   the subject CN is not a name, as in Go >= 1.15). The peer one, like the allowed CN, also
//!   checks the certificates of peers this member dials. CN and hostname are mutually exclusive.
//! - `--client-crl-file` / `--peer-crl-file`: a client certificate (or any certificate of the
//!   chain it sent) whose serial number the CRL lists is refused. As etcd, the file is read again
//!   for every handshake (an updated CRL takes effect without a restart), only serial numbers
//!   are compared (the CRL's signature is not checked) and an unreadable or unparsable CRL
//!   refuses every client certificate (logged as "rejected connection") without stopping start.
//!   Session resumption is off on such a listener, so every connection is checked.
//! - `--cipher-suites` (Go's names) restrict the TLS 1.2 suites of both listeners and of the
//!   peer dialer. As in Go, TLS 1.3 suites are not configurable: they all stay enabled, and
//!   TLS 1.3 names in the list are accepted and have no effect. An unknown name fails start with
//!   etcd's error; a name Go knows but rustls does not implement (CBC, RC4, 3DES, RSA key
//!   exchange) fails start too, rather than serving a different set than asked for.
//! - `--tls-min-version` / `--tls-max-version` (etcd 3.5.7+: `TLS1.2`, `TLS1.3`; an empty max
//!   leaves the newest) bound the versions of both listeners and of the peer dialer. As etcd,
//!   a minimum above the maximum, or `--cipher-suites` with TLS 1.3 as minimum, fails start.
//! - Certificate rotation: the `--cert-file/--key-file` and `--peer-*` pairs are followed on disk
//!   (see `reload`): a rotated pair serves every new connection, on the listeners and when
//!   dialling peers, while open connections keep theirs. The trusted CA file is read at start
//!   only, as in etcd. The peer dialer does not resume TLS sessions (etcd's Go client keeps no
//!   session cache), so each new peer connection presents the current client certificate.
//! - `--auto-tls/--peer-auto-tls` generate a self-signed certificate in
//!   `<data-dir>/fixtures/{client,peer}` (kept across restarts), valid
//!   `--self-signed-cert-validity` years; peers with auto TLS skip verifying each other's
//!   certificates, as etcd's InsecureSkipVerify does.
//!
//! - A certificate that is itself in the trusted CA file is accepted as a one-certificate chain,
//!   even when it is a CA certificate (Go's x509 Verify does; webpki alone refuses a CA
//!   certificate as end entity). etcd's e2e fixture `CommonName-root.crt` is such a self-signed
//!   CA serving as server, client and CA certificate at once.
//! - A refused handshake is logged ("rejected connection") in Go's words where tools match on
//!   them: an alert from the other side reads `remote error: tls: bad certificate`.
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
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme, SupportedCipherSuite};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream, UnixStream};
use tokio::sync::mpsc;

use crate::config::ServerConfig;

mod discovery_client;
mod reload;
pub use discovery_client::{discovery_client_config, DiscoveryTlsFlags};
use reload::{ReloadingCert, Role};

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
    /// `--client-cert-file`/`--client-key-file` (`--peer-client-...`): the pair shown when this
    /// member is the client (dialling peers); empty: the serving pair.
    pub client_cert_file: String,
    pub client_key_file: String,
    /// `--peer-cert-allowed-cn` (peer side only).
    pub allowed_cn: String,
    /// `--client-cert-allowed-hostname` / `--peer-cert-allowed-hostname`.
    pub allowed_hostname: String,
    /// `--client-crl-file` / `--peer-crl-file`.
    pub crl_file: String,
    /// `--cipher-suites`, split on commas as given (the same list for both sides).
    pub cipher_suites: Vec<String>,
    /// `--tls-min-version` / `--tls-max-version` (the same for both sides).
    pub versions: TlsVersions,
}

/// A protocol version `--tls-min-version` / `--tls-max-version` name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum TlsVersion {
    Tls12,
    Tls13,
}

/// The TLS versions served and dialled: TLS 1.2 up to the maximum (None: the newest, TLS 1.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TlsVersions {
    pub min: TlsVersion,
    pub max: Option<TlsVersion>,
}

impl Default for TlsVersions {
    /// etcd's defaults: TLS1.2 and "" (Go's newest).
    fn default() -> TlsVersions {
        TlsVersions { min: TlsVersion::Tls12, max: None }
    }
}

/// etcd's tlsutil.GetTLSVersion: "" is the default (None), else TLS1.2 or TLS1.3 exactly.
fn parse_tls_version(name: &str) -> Result<Option<TlsVersion>, TlsError> {
    match name {
        "" => Ok(None),
        "TLS1.2" => Ok(Some(TlsVersion::Tls12)),
        "TLS1.3" => Ok(Some(TlsVersion::Tls13)),
        other => tls_err(format!("unexpected TLS version {other:?} (must be one of: TLS1.2, TLS1.3)")),
    }
}

impl TlsVersions {
    /// `--tls-min-version`, `--tls-max-version` as given, checked as etcd's Config.Validate
    /// does; `cipher_suites_given`: `--cipher-suites` is not empty.
    pub fn from_flags(min: &str, max: &str, cipher_suites_given: bool) -> Result<TlsVersions, TlsError> {
        let (min_v, max_v) = (parse_tls_version(min)?, parse_tls_version(max)?);
        let versions = TlsVersions { min: min_v.unwrap_or(TlsVersion::Tls12), max: max_v };
        if max_v.is_some_and(|m| versions.min > m) {
            return tls_err(format!("min version ({min}) is greater than max version ({max})"));
        }
        if versions.min == TlsVersion::Tls13 && cipher_suites_given {
            // Go cannot limit TLS 1.3 suites, so etcd refuses a list that could only apply to them
            return tls_err("cipher suites cannot be configured when only TLS1.3 is enabled");
        }
        Ok(versions)
    }

    /// The rustls versions in this range, newest first.
    fn rustls(&self) -> Vec<&'static rustls::SupportedProtocolVersion> {
        let max = self.max.unwrap_or(TlsVersion::Tls13);
        [(TlsVersion::Tls13, &rustls::version::TLS13), (TlsVersion::Tls12, &rustls::version::TLS12)]
            .into_iter()
            .filter(|(v, _)| (self.min..=max).contains(v))
            .map(|(_, r)| r)
            .collect()
    }
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
    tls12_suites(&client.cipher_suites)?;
    tls12_suites(&peer.cipher_suites)?;
    for flags in [client, peer] {
        if (!flags.empty() || flags.auto_tls) && !flags.allowed_cn.is_empty() && !flags.allowed_hostname.is_empty() {
            return tls_err(format!(
                "AllowedCN and AllowedHostname are mutually exclusive (cn={:?}, hostname={:?})",
                flags.allowed_cn, flags.allowed_hostname
            ));
        }
    }
    for u in client_urls.iter().filter(|u| is_tls(u)) {
        if client.empty() && !client.auto_tls {
            return tls_err(format!(
                "TLS key/cert (--cert-file, --key-file) must be provided for client url {} with HTTPS scheme",
                crate::config::url_string(u)
            ));
        }
    }
    for u in peer_urls.iter().filter(|u| is_tls(u)) {
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

/// Whether a listen URL is served over TLS (etcd's https and unixs schemes).
pub fn is_tls(u: &url::Url) -> bool {
    matches!(u.scheme(), "https" | "unixs")
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

/// What etcd-rs can do with one of the cipher suite names Go accepts.
#[derive(Debug, Clone, Copy)]
enum GoSuite {
    /// A TLS 1.2 suite rustls implements.
    Tls12(SupportedCipherSuite),
    /// A TLS 1.3 suite: accepted, not configurable (as in Go).
    Tls13,
    /// Known to Go (so etcd accepts it) but not implemented by rustls.
    NotInRustls,
}

/// The names etcd's tlsutil.GetCipherSuite accepts: Go's tls.CipherSuites() and
/// tls.InsecureCipherSuites(), plus two legacy ChaCha20 aliases.
fn go_cipher_suite(name: &str) -> Option<GoSuite> {
    use rustls::crypto::ring::cipher_suite as cs;
    Some(match name {
        "TLS_AES_128_GCM_SHA256" | "TLS_AES_256_GCM_SHA384" | "TLS_CHACHA20_POLY1305_SHA256" => GoSuite::Tls13,
        "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256" => GoSuite::Tls12(cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256),
        "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384" => GoSuite::Tls12(cs::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384),
        "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256" => GoSuite::Tls12(cs::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256),
        "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384" => GoSuite::Tls12(cs::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384),
        "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256" | "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305" => {
            GoSuite::Tls12(cs::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256)
        }
        "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256" | "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305" => {
            GoSuite::Tls12(cs::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256)
        }
        "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA"
        | "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA"
        | "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA"
        | "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA"
        | "TLS_RSA_WITH_AES_128_CBC_SHA"
        | "TLS_RSA_WITH_AES_256_CBC_SHA"
        | "TLS_RSA_WITH_AES_128_GCM_SHA256"
        | "TLS_RSA_WITH_AES_256_GCM_SHA384"
        | "TLS_RSA_WITH_RC4_128_SHA"
        | "TLS_RSA_WITH_3DES_EDE_CBC_SHA"
        | "TLS_RSA_WITH_AES_128_CBC_SHA256"
        | "TLS_ECDHE_ECDSA_WITH_RC4_128_SHA"
        | "TLS_ECDHE_RSA_WITH_RC4_128_SHA"
        | "TLS_ECDHE_RSA_WITH_3DES_EDE_CBC_SHA"
        | "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256"
        | "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA256" => GoSuite::NotInRustls,
        _ => return None,
    })
}

/// The TLS 1.2 suites `--cipher-suites` allows, in the given order; None when the flag is not
/// set (every suite rustls has). Unknown names get etcd's error.
fn tls12_suites(names: &[String]) -> Result<Option<Vec<SupportedCipherSuite>>, TlsError> {
    if names.is_empty() {
        return Ok(None);
    }
    let mut suites = Vec::new();
    for name in names {
        match go_cipher_suite(name) {
            None => return tls_err(format!("unexpected TLS cipher suite {name:?}")),
            Some(GoSuite::NotInRustls) => {
                return tls_err(format!(
                    "TLS cipher suite {name:?} is not supported by etcd-rs (TLS 1.2 suites it supports: \
                     TLS_ECDHE_{{ECDSA,RSA}}_WITH_{{AES_128_GCM_SHA256,AES_256_GCM_SHA384,CHACHA20_POLY1305_SHA256}})"
                ))
            }
            Some(GoSuite::Tls13) => {}
            Some(GoSuite::Tls12(s)) => {
                if !suites.iter().any(|have: &SupportedCipherSuite| have.suite() == s.suite()) {
                    suites.push(s);
                }
            }
        }
    }
    Ok(Some(suites))
}

/// ring, with the TLS 1.2 suites limited to `--cipher-suites` when it is set (TLS 1.3 suites
/// stay, as in Go).
fn provider(cipher_suites: &[String]) -> Result<Arc<CryptoProvider>, TlsError> {
    let mut provider = rustls::crypto::ring::default_provider();
    if let Some(tls12) = tls12_suites(cipher_suites)? {
        let tls13 = provider.cipher_suites.iter().copied().filter(|s| s.version() == &rustls::version::TLS13);
        provider.cipher_suites = tls13.chain(tls12).collect();
    }
    Ok(Arc::new(provider))
}

impl TlsSetup {
    /// Loads certificates (generating auto-TLS ones when asked) and builds the rustls configs.
    pub fn load(cfg: &ServerConfig) -> Result<TlsSetup, TlsError> {
        let validity = cfg.self_signed_cert_validity;
        // https metrics listeners serve with the client certificate, as etcd's
        let client_https = cfg.listen_client_urls.iter().chain(&cfg.listen_metrics_urls).any(is_tls);
        let peer_https = cfg.listen_peer_urls.iter().any(is_tls);
        let client_cert = resolve_cert("client", &cfg.client_tls, &cfg.data_dir, &cfg.listen_client_urls, validity)?;
        let peer_cert = resolve_cert("peer", &cfg.peer_tls, &cfg.data_dir, &cfg.listen_peer_urls, validity)?;
        for (what, urls, cert, flags) in [
            ("client", &cfg.listen_client_urls, &client_cert, &cfg.client_tls),
            ("peer", &cfg.listen_peer_urls, &peer_cert, &cfg.peer_tls),
        ] {
            for u in urls.iter().filter(|u| matches!(u.scheme(), "http" | "unix")) {
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
            tracing::info!(cert = %c.cert_file.display(), key = %c.key_file.display(), trusted_ca = %cfg.client_tls.trusted_ca_file, client_cert_auth = cfg.client_tls.client_cert_auth, crl_file = %cfg.client_tls.crl_file, cipher_suites = ?cfg.client_tls.cipher_suites, "starting with client TLS");
            setup.client = Some(server_config(c, &cfg.client_tls, &[b"h2", b"http/1.1"], "trusted-ca-file")?);
        }
        if let Some(c) = &peer_cert {
            if peer_https {
                tracing::info!(cert = %c.cert_file.display(), key = %c.key_file.display(), trusted_ca = %cfg.peer_tls.trusted_ca_file, client_cert_auth = cfg.peer_tls.client_cert_auth, crl_file = %cfg.peer_tls.crl_file, cipher_suites = ?cfg.peer_tls.cipher_suites, "starting with peer TLS");
                // etcd's peer protocol is HTTP/1.1 (etcd members offer no ALPN when they dial)
                setup.peer = Some(server_config(c, &cfg.peer_tls, &[b"http/1.1", b"h2"], "peer-trusted-ca-file")?);
            }
            setup.peer_dial = Some(peer_client_config(&c.as_client(&cfg.peer_tls), &cfg.peer_tls)?);
        }
        // etcd-rs dials its own client URLs nowhere (its gateway is in-process), so the client
        // side's client pair is only checked, as etcd checks it before serving
        if let (true, Some(c)) = (client_https, &client_cert) {
            let pair = c.as_client(&cfg.client_tls);
            if pair.cert_file != c.cert_file {
                let provider = provider(&cfg.client_tls.cipher_suites)?;
                ReloadingCert::load(&pair.cert_file, &pair.key_file, Role::Client, provider)?;
            }
        }
        Ok(setup)
    }
}

/// The client listener's configuration offering in ALPN only the HTTP versions the listener
/// speaks (a gRPC-only listener "h2", an HTTP-only one "http/1.1").
pub fn with_alpn(config: &Arc<rustls::ServerConfig>, versions: crate::serve::HttpVersions) -> Arc<rustls::ServerConfig> {
    use crate::serve::HttpVersions;
    let alpn: &[&[u8]] = match versions {
        HttpVersions::Both => return config.clone(),
        HttpVersions::Http2Only => &[b"h2"],
        HttpVersions::Http1Only => &[b"http/1.1"],
    };
    let mut c = (**config).clone();
    c.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(c)
}

impl CertInfo {
    /// The pair to show as a client: `--peer-client-cert-file`/`--peer-client-key-file` (or the
    /// client side's) when given, else the serving pair, as etcd's TLSInfo.ClientConfig.
    fn as_client(&self, flags: &TlsFlags) -> CertInfo {
        if flags.client_cert_file.is_empty() {
            return CertInfo { cert_file: self.cert_file.clone(), key_file: self.key_file.clone(), self_signed: self.self_signed };
        }
        CertInfo {
            cert_file: PathBuf::from(&flags.client_cert_file),
            key_file: PathBuf::from(&flags.client_key_file),
            self_signed: self.self_signed,
        }
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

/// The trust anchors of a CA file, and its certificates as they are (see [`TrustedCerts`]).
fn load_roots(path: &str) -> Result<(Arc<RootCertStore>, TrustedCerts), TlsError> {
    let mut roots = RootCertStore::empty();
    let certs = load_certs(Path::new(path))?;
    for c in &certs {
        roots.add(c.clone()).map_err(|e| TlsError(format!("bad CA certificate in {path}: {e}")))?;
    }
    Ok((Arc::new(roots), TrustedCerts(certs)))
}

/// What a trusted certificate presented as the peer's own certificate is used for (Go checks
/// its extended key usages, when it lists any, against this).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeyUsage {
    ClientAuth,
    ServerAuth,
}

/// The certificates of a trusted CA file, byte for byte. Go's x509 Verify takes a certificate
/// found in the root pool as a complete chain whatever its basic constraints; webpki refuses a
/// CA certificate as end entity (CaUsedAsEndEntity). Consulted only after webpki refused.
#[derive(Debug, Clone, Default)]
struct TrustedCerts(Vec<CertificateDer<'static>>);

impl TrustedCerts {
    /// Whether `end_entity` is one of these certificates, valid at `now` and, when it lists
    /// extended key usages, allowed for `usage` (or any).
    fn accepts(&self, end_entity: &CertificateDer<'_>, now: UnixTime, usage: KeyUsage) -> bool {
        if !self.0.iter().any(|c| c.as_ref() == end_entity.as_ref()) {
            return false;
        }
        let Ok((_, cert)) = x509_parser::parse_x509_certificate(end_entity) else { return false };
        let Ok(at) = x509_parser::time::ASN1Time::from_timestamp(now.as_secs().min(i64::MAX as u64) as i64) else {
            return false;
        };
        if !cert.validity().is_valid_at(at) {
            return false;
        }
        match cert.extended_key_usage() {
            Ok(None) => true,
            Ok(Some(eku)) => {
                let eku = eku.value;
                eku.any
                    || match usage {
                        KeyUsage::ClientAuth => eku.client_auth,
                        KeyUsage::ServerAuth => eku.server_auth,
                    }
            }
            Err(_) => false,
        }
    }
}

/// A listener's rustls config: our certificate, and client certificates required and verified
/// against the trusted CA when etcd would (`--trusted-ca-file` or `--client-cert-auth`), then
/// checked against the allowed CN or hostname and the CRL.
fn server_config(
    cert: &CertInfo,
    flags: &TlsFlags,
    alpn: &[&[u8]],
    ca_flag: &str,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let provider = provider(&flags.cipher_suites)?;
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&flags.versions.rustls())
        .map_err(|e| TlsError(e.to_string()))?;
    let builder = if !flags.trusted_ca_file.is_empty() || flags.client_cert_auth {
        if flags.trusted_ca_file.is_empty() {
            return tls_err(format!(
                "client certificate authentication needs --{ca_flag} in etcd-rs (the system's root certificates are not used to verify clients)"
            ));
        }
        let (roots, trusted) = load_roots(&flags.trusted_ca_file)?;
        let webpki = WebPkiClientVerifier::builder_with_provider(roots, provider.clone())
            .build()
            .map_err(|e| TlsError(format!("--{ca_flag}: {e}")))?;
        builder.with_client_cert_verifier(Arc::new(CheckedClientVerifier {
            inner: webpki,
            trusted,
            identity: AllowedIdentity::from_flags(flags),
            crl_file: (!flags.crl_file.is_empty()).then(|| PathBuf::from(&flags.crl_file)),
        }))
    } else {
        builder.with_no_client_auth()
    };
    let mut config = builder.with_cert_resolver(ReloadingCert::load(&cert.cert_file, &cert.key_file, Role::Server, provider)?);
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    if !flags.crl_file.is_empty() {
        // A resumed session skips certificate verification, so a certificate revoked after its
        // first connection would still get in; etcd checks the CRL on every connection,
        // resumed or not. Every handshake is a full one then.
        config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        config.send_tls13_tickets = 0;
    }
    Ok(Arc::new(config))
}

/// How this member dials https peers: its peer certificate as client certificate, the peer CA
/// as roots (or no verification for auto-TLS certificates, as etcd), and the allowed CN or
/// hostname.
fn peer_client_config(cert: &CertInfo, flags: &TlsFlags) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let provider = provider(&flags.cipher_suites)?;
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&flags.versions.rustls())
        .map_err(|e| TlsError(e.to_string()))?;
    let verifier: Arc<dyn ServerCertVerifier> = if cert.self_signed {
        Arc::new(SkipServerVerification { provider: provider.clone() })
    } else if flags.trusted_ca_file.is_empty() {
        return tls_err(
            "https peer URLs with --peer-cert-file need --peer-trusted-ca-file in etcd-rs (the system's root certificates are not used to verify peers)",
        );
    } else {
        let (roots, trusted) = load_roots(&flags.trusted_ca_file)?;
        let webpki = rustls::client::WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
            .build()
            .map_err(|e| TlsError(format!("--peer-trusted-ca-file: {e}")))?;
        Arc::new(CheckedServerVerifier { inner: webpki, trusted, identity: AllowedIdentity::from_flags(flags) })
    };
    let client_cert = ReloadingCert::load(&cert.cert_file, &cert.key_file, Role::Client, provider)?;
    let mut config = builder.dangerous().with_custom_certificate_verifier(verifier).with_client_cert_resolver(client_cert);
    // no ALPN, as etcd's peers dial (an etcd peer listener offers only "h2"): both sides then
    // speak HTTP/1.1, etcd's peer protocol
    config.alpn_protocols = Vec::new();
    // a resumed session would skip the client certificate, so a rotated one would not be shown
    config.resumption = rustls::client::Resumption::disabled();
    Ok(Arc::new(config))
}

/// The subject common name of a DER certificate (the last CN, as Go's pkix.Name keeps it).
fn common_name(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    cert.subject().iter_common_name().filter_map(|cn| cn.as_str().ok()).last().map(str::to_string)
}

/// etcd's verifyCertificate: what a verified certificate must name, beyond being signed by the
/// trusted CA (`--peer-cert-allowed-cn`, `--{client,peer}-cert-allowed-hostname`).
#[derive(Debug, Clone, PartialEq, Eq)]
enum AllowedIdentity {
    Cn(String),
    Hostname(String),
}

impl AllowedIdentity {
    /// None when neither is set (check_flags refuses both at once).
    fn from_flags(flags: &TlsFlags) -> Option<AllowedIdentity> {
        if !flags.allowed_cn.is_empty() {
            Some(AllowedIdentity::Cn(flags.allowed_cn.clone()))
        } else if !flags.allowed_hostname.is_empty() {
            Some(AllowedIdentity::Hostname(flags.allowed_hostname.clone()))
        } else {
            None
        }
    }

    fn allows(&self, end_entity: &CertificateDer<'_>) -> bool {
        match self {
            AllowedIdentity::Cn(cn) => common_name(end_entity).as_deref() == Some(cn.as_str()),
            AllowedIdentity::Hostname(host) => valid_for_hostname(end_entity, host),
        }
    }
}

/// Go's Certificate.VerifyHostname: an IP (brackets allowed) must be an IP SAN; a name must
/// match a DNS SAN (case-insensitively, a trailing dot ignored, `*.` matching one label).
fn valid_for_hostname(end_entity: &CertificateDer<'_>, host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let host = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
    let Ok(name) = ServerName::try_from(host) else { return false };
    valid_for_name(end_entity, &name)
}

fn valid_for_name(end_entity: &CertificateDer<'_>, name: &ServerName<'_>) -> bool {
    let Ok(parsed) = rustls::server::ParsedCertificate::try_from(end_entity) else { return false };
    rustls::client::verify_server_name(&parsed, name).is_ok()
}

/// A certificate without the allowed CN or hostname: logged with etcd's words, and refused
/// with the bad_certificate alert Go sends when VerifyPeerCertificate fails.
fn identity_refused(identity: &AllowedIdentity) -> rustls::Error {
    match identity {
        AllowedIdentity::Cn(cn) => tracing::warn!(allowed_cn = %cn, "client certificate authentication failed"),
        AllowedIdentity::Hostname(h) => tracing::warn!(allowed_hostname = %h, "client certificate authentication failed"),
    }
    rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForName)
}

/// etcd's checkCRL: the serial numbers `crl_file` revokes (read now: etcd reads the file for
/// every connection); Err carries etcd's words for a certificate of `chain` it lists, or the
/// reason the CRL cannot be used.
fn check_crl(crl_file: &Path, chain: &[&CertificateDer<'_>]) -> Result<(), String> {
    let bytes = std::fs::read(crl_file).map_err(|e| format!("open {}: {e}", crl_file.display()))?;
    // As Go's x509.ParseCRL: PEM ("X509 CRL") when it starts like one, else DER.
    let der = if bytes.starts_with(b"-----BEGIN X509 CRL") {
        match x509_parser::pem::parse_x509_pem(&bytes) {
            Ok((_, pem)) if pem.label == "X509 CRL" => pem.contents,
            _ => bytes,
        }
    } else {
        bytes
    };
    let (_, crl) = x509_parser::parse_x509_crl(&der).map_err(|e| format!("x509: cannot parse CRL {}: {e}", crl_file.display()))?;
    // big.Int.Bytes(): the serial's magnitude without leading zero bytes
    let magnitude = |raw: &[u8]| -> Vec<u8> { raw.iter().copied().skip_while(|b| *b == 0).collect() };
    let revoked: std::collections::HashSet<Vec<u8>> =
        crl.iter_revoked_certificates().map(|r| magnitude(r.raw_serial())).collect();
    for der in chain {
        let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| format!("bad client certificate: {e}"))?;
        let serial = magnitude(cert.raw_serial());
        if revoked.contains(&serial) {
            let hex: String = serial.iter().map(|b| format!("{b:02x}")).collect();
            return Err(format!("transport: certificate serial {hex} revoked"));
        }
    }
    Ok(())
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

/// A listener's client-certificate checks: the CA (webpki, else a certificate of the CA file
/// itself), then the allowed CN or hostname, then the CRL (etcd's order: VerifyPeerCertificate
/// in the handshake, then the listener's CRL check).
#[derive(Debug)]
struct CheckedClientVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    trusted: TrustedCerts,
    identity: Option<AllowedIdentity>,
    crl_file: Option<PathBuf>,
}

impl ClientCertVerifier for CheckedClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }
    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let ok = match self.inner.verify_client_cert(end_entity, intermediates, now) {
            Ok(ok) => ok,
            Err(_) if self.trusted.accepts(end_entity, now, KeyUsage::ClientAuth) => ClientCertVerified::assertion(),
            Err(e) => return Err(e),
        };
        if let Some(identity) = &self.identity {
            if !identity.allows(end_entity) {
                return Err(identity_refused(identity));
            }
        }
        if let Some(crl) = &self.crl_file {
            let chain: Vec<&CertificateDer<'_>> = std::iter::once(end_entity).chain(intermediates).collect();
            check_crl(crl, &chain).map_err(rustls::Error::General)?;
        }
        Ok(ok)
    }
    delegate_signature_checks!();
}

/// How this member checks the peers it dials: the CA (webpki, else a certificate of the CA file
/// itself, valid for the name dialled), then the allowed CN or hostname (etcd's TLS config
/// checks the peer it dials too: the same VerifyPeerCertificate serves both directions).
#[derive(Debug)]
struct CheckedServerVerifier {
    inner: Arc<dyn ServerCertVerifier>,
    trusted: TrustedCerts,
    identity: Option<AllowedIdentity>,
}

impl ServerCertVerifier for CheckedServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let ok = match self.inner.verify_server_cert(end_entity, intermediates, server_name, ocsp, now) {
            Ok(ok) => ok,
            Err(_) if self.trusted.accepts(end_entity, now, KeyUsage::ServerAuth) && valid_for_name(end_entity, server_name) => {
                ServerCertVerified::assertion()
            }
            Err(e) => return Err(e),
        };
        if let Some(identity) = &self.identity {
            if !identity.allows(end_entity) {
                return Err(identity_refused(identity));
            }
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
async fn check_client_san(der: &[u8], remote: Option<IpAddr>) -> Result<(), String> {
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
    // a unix socket's client has no address: etcd's check then fails on splitting it
    let Some(remote) = remote else { return Err("address @: missing port in address".into()) };
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

/// One accepted TLS connection (over TCP, or a unix socket for `unixs://` URLs), served by
/// tonic like a plain stream.
pub struct TlsConn<S = TcpStream>(tokio_rustls::server::TlsStream<S>);

impl<S> TlsConn<S> {
    /// The common name of the client certificate the handshake verified.
    fn client_cn(&self) -> Option<Arc<str>> {
        // rustls keeps a client certificate only once it verified it
        let session = self.0.get_ref().1;
        session.peer_certificates().and_then(|c| c.first()).map(|c| Arc::from(common_name(c).unwrap_or_default()))
    }
}

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
        TlsConnectInfo { tcp: self.0.get_ref().0.connect_info(), client_cn: self.client_cn() }
    }
}

/// A unix socket has no addresses to record.
impl tonic::transport::server::Connected for TlsConn<UnixStream> {
    type ConnectInfo = TlsConnectInfo;
    fn connect_info(&self) -> Self::ConnectInfo {
        let tcp = tonic::transport::server::TcpConnectInfo { local_addr: None, remote_addr: None };
        TlsConnectInfo { tcp, client_cn: self.client_cn() }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for TlsConn<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for TlsConn<S> {
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
    let accepted = |tcp: &TcpStream| {
        let _ = tcp.set_nodelay(true);
        let remote = tcp.peer_addr().ok();
        (remote, remote.map(|r| r.to_string()).unwrap_or_default())
    };
    accept_tls(tokio_stream::wrappers::TcpListenerStream::new(listener), config, check_san, accepted)
}

/// As [`incoming`], for a unix socket listener (`unixs://` URLs). With `check_san` (peers), a
/// client certificate listing SANs is refused, as etcd's check cannot split a unix socket's
/// empty remote address.
pub fn incoming_unix(
    listener: crate::serve::UnixIncoming,
    config: Arc<rustls::ServerConfig>,
    check_san: bool,
) -> tokio_stream::wrappers::ReceiverStream<io::Result<TlsConn<UnixStream>>> {
    let path = listener.path().display().to_string();
    accept_tls(listener, config, check_san, move |_: &UnixStream| (None, path.clone()))
}

/// The accept loop of [`incoming`] and [`incoming_unix`]: `accepted` readies a new stream and
/// names its peer (the address for the SAN check, the text logs show). The task owns the
/// listener, so dropping the returned stream closes it.
fn accept_tls<L, S, F>(
    mut listener: L,
    config: Arc<rustls::ServerConfig>,
    check_san: bool,
    accepted: F,
) -> tokio_stream::wrappers::ReceiverStream<io::Result<TlsConn<S>>>
where
    L: futures::Stream<Item = io::Result<S>> + Unpin + Send + 'static,
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    F: Fn(&S) -> (Option<SocketAddr>, String) + Send + 'static,
{
    use futures::StreamExt;
    let (tx, rx) = mpsc::channel::<io::Result<TlsConn<S>>>(64);
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    tokio::spawn(async move {
        loop {
            let next = tokio::select! {
                a = listener.next() => a,
                _ = tx.closed() => return,
            };
            let stream = match next {
                Some(Ok(s)) => s,
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
                None => return,
            };
            let (remote, name) = accepted(&stream);
            let (acceptor, tx) = (acceptor.clone(), tx.clone());
            tokio::spawn(async move {
                match handshake(acceptor, stream, remote, check_san).await {
                    Ok(conn) => {
                        let _ = tx.send(Ok(conn)).await;
                    }
                    Err(e) => tracing::warn!(remote_addr = %name, error = %e, "rejected connection"),
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// Why a handshake failed, in Go's words where tools match on them: an alert the other side
/// sent reads `remote error: tls: <Go's alert text>` (etcd's e2e waits for "remote error: tls:
/// bad certificate" from a member whose certificate its peers refuse), and our own refusal
/// reasons (the CRL's) come without rustls's "unexpected error: " prefix.
fn handshake_error(e: &io::Error) -> String {
    match e.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>()) {
        Some(rustls::Error::AlertReceived(alert)) => format!("remote error: {}", go_alert_text(u8::from(*alert))),
        Some(rustls::Error::General(reason)) => reason.clone(),
        _ => e.to_string(),
    }
}

/// Go's crypto/tls alert texts (alert.go), by alert number.
fn go_alert_text(code: u8) -> String {
    let text = match code {
        0 => "close notify",
        10 => "unexpected message",
        20 => "bad record MAC",
        21 => "decryption failed",
        22 => "record overflow",
        30 => "decompression failure",
        40 => "handshake failure",
        42 => "bad certificate",
        43 => "unsupported certificate",
        44 => "revoked certificate",
        45 => "expired certificate",
        46 => "unknown certificate",
        47 => "illegal parameter",
        48 => "unknown certificate authority",
        49 => "access denied",
        50 => "error decoding message",
        51 => "error decrypting message",
        60 => "export restriction",
        70 => "protocol version not supported",
        71 => "insufficient security level",
        80 => "internal error",
        86 => "inappropriate fallback",
        90 => "user canceled",
        100 => "no renegotiation",
        109 => "missing extension",
        110 => "unsupported extension",
        111 => "certificate unobtainable",
        112 => "unrecognized name",
        113 => "bad certificate status response",
        114 => "bad certificate hash value",
        115 => "unknown PSK identity",
        116 => "certificate required",
        120 => "no application protocol",
        other => return format!("tls: alert({other})"),
    };
    format!("tls: {text}")
}

/// `remote`: the peer's address for the SAN check (`check_san`; without one, a unix socket's
/// client, a certificate listing SANs is refused, as etcd).
async fn handshake<S: AsyncRead + AsyncWrite + Unpin>(
    acceptor: tokio_rustls::TlsAcceptor,
    stream: S,
    remote: Option<SocketAddr>,
    check_san: bool,
) -> Result<TlsConn<S>, String> {
    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => return Err(handshake_error(&e)),
        Err(_) => return Err("TLS handshake timed out".into()),
    };
    if check_san {
        if let Some(cert) = tls.get_ref().1.peer_certificates().and_then(|c| c.first()) {
            check_client_san(cert, remote.map(|r| r.ip())).await?;
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
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        assert!(ReloadingCert::load(&b.cert_file, &b.key_file, Role::Server, provider).is_ok());
    }

    #[tokio::test]
    async fn client_san_must_name_the_connecting_ip() {
        let mut params = rcgen::CertificateParams::new(vec!["127.0.0.2".to_string()]).unwrap();
        params.distinguished_name.push(rcgen::DnType::CommonName, "peer");
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        assert!(check_client_san(cert.der(), Some("127.0.0.2".parse().unwrap())).await.is_ok());
        let e = check_client_san(cert.der(), Some("127.0.0.1".parse().unwrap())).await.unwrap_err();
        assert!(e.contains("not 127.0.0.1"), "{e}");
        assert_eq!(common_name(cert.der()).as_deref(), Some("peer"));
        // over a unix socket (no address), as etcd: refused when the certificate has SANs only
        assert_eq!(check_client_san(cert.der(), None).await.unwrap_err(), "address @: missing port in address");
        let bare = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap().self_signed(&key).unwrap();
        assert!(check_client_san(bare.der(), None).await.is_ok());
    }

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn every_name_etcd_accepts_is_known_and_others_get_etcds_error() {
        // Go's tls.CipherSuites() + tls.InsecureCipherSuites() + two aliases: what etcd 3.4.23
        // (Go 1.19) and 3.5.1 (Go 1.16) accept, checked against both binaries.
        let go = "TLS_AES_128_GCM_SHA256,TLS_AES_256_GCM_SHA384,TLS_CHACHA20_POLY1305_SHA256,\
            TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA,TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA,TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA,\
            TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA,TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,\
            TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,\
            TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,TLS_RSA_WITH_AES_128_CBC_SHA,TLS_RSA_WITH_AES_256_CBC_SHA,\
            TLS_RSA_WITH_AES_128_GCM_SHA256,TLS_RSA_WITH_AES_256_GCM_SHA384,TLS_RSA_WITH_RC4_128_SHA,TLS_RSA_WITH_3DES_EDE_CBC_SHA,\
            TLS_RSA_WITH_AES_128_CBC_SHA256,TLS_ECDHE_ECDSA_WITH_RC4_128_SHA,TLS_ECDHE_RSA_WITH_RC4_128_SHA,\
            TLS_ECDHE_RSA_WITH_3DES_EDE_CBC_SHA,TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256,TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA256,\
            TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305,TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305";
        for name in go.split(',') {
            assert!(go_cipher_suite(name).is_some(), "{name}");
        }
        let e = tls12_suites(&names(&["TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256", "tls_aes_128_gcm_sha256"])).unwrap_err();
        assert_eq!(e.0, r#"unexpected TLS cipher suite "tls_aes_128_gcm_sha256""#);
        let e = tls12_suites(&names(&["TLS_RSA_WITH_AES_128_CBC_SHA"])).unwrap_err();
        assert!(e.0.starts_with(r#"TLS cipher suite "TLS_RSA_WITH_AES_128_CBC_SHA" is not supported by etcd-rs"#), "{}", e.0);
    }

    #[test]
    fn cipher_suites_restrict_tls12_only_and_keep_every_tls13_suite() {
        let all = provider(&[]).unwrap();
        assert_eq!(all.cipher_suites.len(), rustls::crypto::ring::default_provider().cipher_suites.len());
        let p = provider(&names(&[
            "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305",
            "TLS_AES_256_GCM_SHA384",
            "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
            "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
        ]))
        .unwrap();
        let tls13 = p.cipher_suites.iter().filter(|s| s.version() == &rustls::version::TLS13).count();
        assert_eq!(tls13, 3);
        let tls12: Vec<rustls::CipherSuite> =
            p.cipher_suites.iter().filter(|s| s.version() == &rustls::version::TLS12).map(|s| s.suite()).collect();
        assert_eq!(
            tls12,
            [rustls::CipherSuite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256, rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256]
        );
        // only TLS 1.3 names: no TLS 1.2 suite is left, as in Go
        let only13 = provider(&names(&["TLS_AES_128_GCM_SHA256"])).unwrap();
        assert!(only13.cipher_suites.iter().all(|s| s.version() == &rustls::version::TLS13));
    }

    #[test]
    fn tls_version_range_maps_to_rustls_versions() {
        let v = |min, max| TlsVersions::from_flags(min, max, false).unwrap().rustls();
        let (v12, v13) = (&rustls::version::TLS12, &rustls::version::TLS13);
        assert_eq!(v("TLS1.2", ""), [v13, v12]);
        assert_eq!(v("", "TLS1.3"), [v13, v12]);
        assert_eq!(v("TLS1.3", ""), [v13]);
        assert_eq!(v("TLS1.2", "TLS1.2"), [v12]);
        // cipher suites are fine while TLS 1.2 is allowed
        assert!(TlsVersions::from_flags("TLS1.2", "TLS1.3", true).is_ok());
    }

    /// A handshake between two configs in memory: the version agreed, or why it failed.
    fn handshake_in_memory(
        client: Arc<rustls::ClientConfig>,
        server: Arc<rustls::ServerConfig>,
    ) -> Result<rustls::ProtocolVersion, rustls::Error> {
        let mut c = rustls::ClientConnection::new(client, ServerName::try_from("127.0.0.1").unwrap())?;
        let mut s = rustls::ServerConnection::new(server)?;
        for _ in 0..10 {
            let mut buf = Vec::new();
            c.write_tls(&mut buf).unwrap();
            s.read_tls(&mut &buf[..]).unwrap();
            s.process_new_packets()?;
            buf.clear();
            s.write_tls(&mut buf).unwrap();
            c.read_tls(&mut &buf[..]).unwrap();
            c.process_new_packets()?;
            if !c.is_handshaking() && !s.is_handshaking() {
                return Ok(c.protocol_version().unwrap());
            }
        }
        panic!("handshake did not finish");
    }

    #[test]
    fn tls_versions_apply_to_the_listener_and_the_peer_dialer() {
        use rustls::ProtocolVersion::{TLSv1_2, TLSv1_3};
        let dir = tempfile::tempdir().unwrap();
        let cert = self_cert(dir.path(), &["127.0.0.1".into()], 1).unwrap();
        let flags = |min, max| TlsFlags { versions: TlsVersions::from_flags(min, max, false).unwrap(), ..Default::default() };
        let dialer = |min, max| peer_client_config(&cert, &flags(min, max)).unwrap();
        let listener = |min, max| server_config(&cert, &flags(min, max), &[b"h2"], "peer-trusted-ca-file").unwrap();
        assert_eq!(handshake_in_memory(dialer("", ""), listener("", "")).unwrap(), TLSv1_3);
        assert_eq!(handshake_in_memory(dialer("TLS1.2", "TLS1.2"), listener("", "")).unwrap(), TLSv1_2);
        assert_eq!(handshake_in_memory(dialer("", ""), listener("", "TLS1.2")).unwrap(), TLSv1_2);
        assert!(handshake_in_memory(dialer("TLS1.3", ""), listener("", "TLS1.2")).is_err());
        assert!(handshake_in_memory(dialer("", "TLS1.2"), listener("TLS1.3", "")).is_err());
    }

    #[test]
    fn allowed_cn_and_hostname_together_are_refused_as_etcd() {
        let peer = TlsFlags {
            cert_file: "/p.pem".into(),
            key_file: "/p-key.pem".into(),
            allowed_cn: "etcd-peer".into(),
            allowed_hostname: "peer.example".into(),
            ..Default::default()
        };
        let e = check_flags(&TlsFlags::default(), &peer, &[], &[]).unwrap_err();
        assert_eq!(e.0, r#"AllowedCN and AllowedHostname are mutually exclusive (cn="etcd-peer", hostname="peer.example")"#);
        // without a peer certificate etcd never builds the TLS config, so never complains
        let no_cert = TlsFlags { cert_file: String::new(), key_file: String::new(), ..peer };
        assert!(check_flags(&TlsFlags::default(), &no_cert, &[], &[]).is_ok());
    }

    fn cert_with(sans: &[&str], cn: &str) -> CertificateDer<'static> {
        let mut params = rcgen::CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        params.distinguished_name.push(rcgen::DnType::CommonName, cn);
        let key = rcgen::KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().clone()
    }

    #[test]
    fn allowed_hostname_matches_dns_and_ip_sans_like_gos_verify_hostname() {
        let der = cert_with(&["etcd.example.com", "*.peers.example.com", "10.0.0.7"], "not-a-san.example.com");
        let host = |h: &str| AllowedIdentity::Hostname(h.into()).allows(&der);
        assert!(host("etcd.example.com"));
        assert!(host("ETCD.Example.com."));
        assert!(host("m1.peers.example.com"));
        assert!(!host("a.m1.peers.example.com"), "a wildcard matches one label");
        assert!(host("10.0.0.7"));
        assert!(!host("10.0.0.8"));
        assert!(!host("not-a-san.example.com"), "the CN is not a name (Go >= 1.15)");
        assert!(!host("bad host name"));
        assert!(AllowedIdentity::Cn("not-a-san.example.com".into()).allows(&der));
    }

    #[test]
    fn crl_refuses_listed_serials_in_pem_or_der_and_a_bad_file_refuses_all() {
        let dir = tempfile::tempdir().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign];
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let issue = |serial: u64| {
            let mut p = rcgen::CertificateParams::new(vec!["client".to_string()]).unwrap();
            p.serial_number = Some(rcgen::SerialNumber::from(serial));
            let k = rcgen::KeyPair::generate().unwrap();
            p.signed_by(&k, &ca, &ca_key).unwrap().der().clone()
        };
        let (revoked, good) = (issue(0x1234), issue(0x1235));
        let crl = rcgen::CertificateRevocationListParams {
            this_update: time::OffsetDateTime::now_utc(),
            next_update: time::OffsetDateTime::now_utc() + time::Duration::days(1),
            crl_number: rcgen::SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs: vec![rcgen::RevokedCertParams {
                serial_number: rcgen::SerialNumber::from(0x1234u64),
                revocation_time: time::OffsetDateTime::now_utc(),
                reason_code: None,
                invalidity_date: None,
            }],
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        }
        .signed_by(&ca, &ca_key)
        .unwrap();
        let pem = dir.path().join("crl.pem");
        let der = dir.path().join("crl.der");
        std::fs::write(&pem, crl.pem().unwrap()).unwrap();
        std::fs::write(&der, crl.der()).unwrap();
        for file in [&pem, &der] {
            assert_eq!(check_crl(file, &[&revoked]).unwrap_err(), "transport: certificate serial 1234 revoked");
            assert!(check_crl(file, &[&good]).is_ok());
            // any certificate of the chain the client sent
            assert!(check_crl(file, &[&good, &revoked]).is_err());
        }
        let garbage = dir.path().join("garbage.crl");
        std::fs::write(&garbage, b"not a CRL").unwrap();
        assert!(check_crl(&garbage, &[&good]).is_err());
        let missing = check_crl(&dir.path().join("missing.crl"), &[&good]).unwrap_err();
        assert!(missing.starts_with("open "), "{missing}");
    }

    #[test]
    fn handshake_errors_read_as_gos() {
        let alert = |d| io::Error::new(io::ErrorKind::InvalidData, rustls::Error::AlertReceived(d));
        assert_eq!(handshake_error(&alert(rustls::AlertDescription::BadCertificate)), "remote error: tls: bad certificate");
        assert_eq!(
            handshake_error(&alert(rustls::AlertDescription::UnknownCA)),
            "remote error: tls: unknown certificate authority"
        );
        assert_eq!(handshake_error(&alert(rustls::AlertDescription::Unknown(200))), "remote error: tls: alert(200)");
        let ours = io::Error::new(io::ErrorKind::InvalidData, rustls::Error::General("transport: certificate serial 12 revoked".into()));
        assert_eq!(handshake_error(&ours), "transport: certificate serial 12 revoked");
        let other = io::Error::new(io::ErrorKind::UnexpectedEof, "eof");
        assert_eq!(handshake_error(&other), "eof");
    }

    fn ca_with(eku: &[rcgen::ExtendedKeyUsagePurpose], not_after_year: i32) -> CertificateDer<'static> {
        let mut params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
        params.distinguished_name.push(rcgen::DnType::CommonName, "root");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.extended_key_usages = eku.to_vec();
        params.not_after = rcgen::date_time_ymd(not_after_year, 1, 1);
        let key = rcgen::KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().clone()
    }

    #[test]
    fn a_certificate_of_the_trusted_file_is_accepted_as_itself_like_go() {
        let now = UnixTime::now();
        let ca = ca_with(&[], 2100);
        let server_only = ca_with(&[rcgen::ExtendedKeyUsagePurpose::ServerAuth], 2100);
        let expired = ca_with(&[], 2000);
        let trusted = TrustedCerts(vec![ca.clone(), server_only.clone(), expired.clone()]);
        assert!(trusted.accepts(&ca, now, KeyUsage::ClientAuth));
        assert!(trusted.accepts(&ca, now, KeyUsage::ServerAuth));
        // Go's extended key usage check, when the certificate lists usages
        assert!(!trusted.accepts(&server_only, now, KeyUsage::ClientAuth));
        assert!(trusted.accepts(&server_only, now, KeyUsage::ServerAuth));
        assert!(!trusted.accepts(&expired, now, KeyUsage::ClientAuth));
        // not in the file: refused, whatever it is
        assert!(!trusted.accepts(&ca_with(&[], 2100), now, KeyUsage::ClientAuth));
        assert!(!TrustedCerts::default().accepts(&ca, now, KeyUsage::ClientAuth));
    }
}
