//! A test CA (rcgen) writing the PEM files of the certificates it signs into one directory,
//! and rustls client configurations trusting it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// A test CA and the PEM files of certificates it signed, in one directory.
pub struct Pki {
    dir: PathBuf,
    ca: rcgen::Certificate,
    ca_key: rcgen::KeyPair,
}

impl Pki {
    pub fn new(dir: &Path) -> Pki {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(rcgen::DnType::CommonName, "etcd-rs test CA");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign];
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let ca = params.self_signed(&ca_key).unwrap();
        std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
        Pki { dir: dir.to_path_buf(), ca, ca_key }
    }

    pub fn ca_file(&self) -> String {
        self.dir.join("ca.pem").display().to_string()
    }

    /// The (cert, key) paths `issue` wrote for `name`.
    pub fn files(&self, name: &str) -> (String, String) {
        let path = |f: String| self.dir.join(f).display().to_string();
        (path(format!("{name}.pem")), path(format!("{name}-key.pem")))
    }

    /// Writes `<name>.pem` and `<name>-key.pem`; returns (cert, key) paths.
    pub fn issue(&self, name: &str, cn: &str, sans: &[&str], server: bool) -> (String, String) {
        self.issue_with_serial(name, cn, sans, server, None)
    }

    /// As `issue`, with a chosen serial number (rcgen picks a random one otherwise).
    pub fn issue_with_serial(&self, name: &str, cn: &str, sans: &[&str], server: bool, serial: Option<u64>) -> (String, String) {
        self.sign(name, Some(cn), sans, server, serial)
    }

    /// A client certificate whose subject has no common name.
    pub fn issue_without_cn(&self, name: &str) -> (String, String) {
        self.sign(name, None, &[], false, None)
    }

    fn sign(&self, name: &str, cn: Option<&str>, sans: &[&str], server: bool, serial: Option<u64>) -> (String, String) {
        let mut params = rcgen::CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        match cn {
            Some(cn) => params.distinguished_name.push(rcgen::DnType::CommonName, cn),
            None => params.distinguished_name.push(rcgen::DnType::OrganizationName, "no common name"),
        }
        params.serial_number = serial.map(rcgen::SerialNumber::from);
        params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature, rcgen::KeyUsagePurpose::KeyEncipherment];
        params.extended_key_usages = if server {
            vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth, rcgen::ExtendedKeyUsagePurpose::ClientAuth]
        } else {
            vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth]
        };
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.ca, &self.ca_key).unwrap();
        let (c, k) = self.files(name);
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        (c, k)
    }

    /// Writes a CRL signed by the CA revoking `serials` to `file` (PEM).
    pub fn write_crl(&self, file: &Path, serials: &[u64]) {
        let now = time::OffsetDateTime::now_utc();
        let crl = rcgen::CertificateRevocationListParams {
            this_update: now,
            next_update: now + time::Duration::days(1),
            crl_number: rcgen::SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs: serials
                .iter()
                .map(|s| rcgen::RevokedCertParams {
                    serial_number: rcgen::SerialNumber::from(*s),
                    revocation_time: now,
                    reason_code: None,
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        }
        .signed_by(&self.ca, &self.ca_key)
        .unwrap();
        std::fs::write(file, crl.pem().unwrap()).unwrap();
    }

    /// A client TLS configuration trusting the CA, with a client certificate when given.
    pub fn client_config(&self, cert: Option<(&str, &str)>, alpn: &[u8]) -> Arc<rustls::ClientConfig> {
        let all = rustls::crypto::ring::default_provider().cipher_suites;
        self.client_config_limited(cert, alpn, &all, rustls::DEFAULT_VERSIONS)
    }

    /// `client_config` offering only these cipher suites and protocol versions.
    pub fn client_config_limited(
        &self,
        cert: Option<(&str, &str)>,
        alpn: &[u8],
        suites: &[rustls::SupportedCipherSuite],
        versions: &[&'static rustls::SupportedProtocolVersion],
    ) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_file_iter(self.ca_file()).unwrap() {
            roots.add(c.unwrap()).unwrap();
        }
        let provider = rustls::crypto::CryptoProvider {
            cipher_suites: suites.to_vec(),
            ..rustls::crypto::ring::default_provider()
        };
        let builder = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
            .with_protocol_versions(versions)
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

/// Whether a TLS handshake with `tls` completes against `addr`.
pub async fn handshake_ok(addr: std::net::SocketAddr, tls: Arc<rustls::ClientConfig>) -> bool {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls_pki_types::ServerName::IpAddress(addr.ip().into());
    tokio_rustls::TlsConnector::from(tls).connect(name, tcp).await.is_ok()
}
