//! The TLS client configuration v3 discovery dials its etcd cluster with (`--discovery-cert`,
//! `--discovery-key`, `--discovery-cacert`, `--discovery-insecure-transport`,
//! `--discovery-insecure-skip-tls-verify`), decided as clientv3's NewClientConfig decides it:
//!
//! - any of cert, key or CA file given, `--discovery-insecure-transport=false`, skip-verify, or
//!   an `https://` endpoint: TLS (endpoints without a scheme are then dialled with TLS; `http://`
//!   ones stay plain, as clientv3 drops credentials for them);
//! - the server is verified against the CA file, else the system's root certificates (the
//!   bundle files Go's SystemCertPool reads), unless skip-verify;
//! - cert and key together are the client certificate (followed on disk, as the listeners'
//!   pairs); one without the other is etcd's error.
//!
//! The invariant is the dialer's: an https endpoint is never dialled in plain text.

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::ServerCertVerifier;
use rustls::RootCertStore;

use super::reload::{ReloadingCert, Role};
use super::{load_certs, load_roots, provider, tls_err, CheckedServerVerifier, SkipServerVerification, TlsError, TrustedCerts};

/// The `--discovery-*` TLS flags, as given.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DiscoveryTlsFlags {
    pub cert: String,
    pub key: String,
    pub cacert: String,
    pub insecure_transport: bool,
    pub insecure_skip_verify: bool,
}

/// Where Go's crypto/x509 looks for the system's root certificates on Linux (first found).
const SYSTEM_ROOT_FILES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/ca-bundle.pem",
    "/etc/pki/tls/cacert.pem",
    "/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem",
    "/etc/ssl/cert.pem",
];

/// The system's root certificates (`SSL_CERT_FILE` first, as Go).
fn system_roots() -> Result<(Arc<RootCertStore>, TrustedCerts), TlsError> {
    let from_env = std::env::var("SSL_CERT_FILE").ok().filter(|f| !f.is_empty());
    let file = from_env.into_iter().chain(SYSTEM_ROOT_FILES.iter().map(|f| f.to_string())).find(|f| Path::new(f).exists());
    match file {
        Some(f) => {
            // a bundle may hold certificates webpki cannot take as anchors: keep the others
            let certs = load_certs(Path::new(&f))?;
            let mut roots = RootCertStore::empty();
            let (added, _) = roots.add_parsable_certificates(certs.iter().cloned());
            if added == 0 {
                return tls_err(format!("no usable root certificate in {f} (give --discovery-cacert)"));
            }
            Ok((Arc::new(roots), TrustedCerts(certs)))
        }
        None => tls_err("no system root certificates found to verify the discovery endpoints (give --discovery-cacert)"),
    }
}

/// The TLS configuration for dialling the discovery endpoints; None when they are dialled in
/// plain text.
pub fn discovery_client_config(
    f: &DiscoveryTlsFlags,
    endpoints: &[String],
) -> Result<Option<Arc<rustls::ClientConfig>>, TlsError> {
    let files = !f.cert.is_empty() || !f.key.is_empty() || !f.cacert.is_empty();
    let https = endpoints.iter().any(|e| e.starts_with("https://"));
    if !(files || !f.insecure_transport || f.insecure_skip_verify || https) {
        return Ok(None);
    }
    if f.cert.is_empty() != f.key.is_empty() {
        // etcd's TLSInfo.baseConfig
        return tls_err(format!("KeyFile and CertFile must both be present[key: {}, cert: {}]", f.key, f.cert));
    }
    let provider = provider(&[])?;
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError(e.to_string()))?;
    let verifier: Arc<dyn ServerCertVerifier> = if f.insecure_skip_verify {
        Arc::new(SkipServerVerification { provider: provider.clone() })
    } else {
        let (roots, trusted) = if f.cacert.is_empty() { system_roots()? } else { load_roots(&f.cacert)? };
        let webpki = rustls::client::WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
            .build()
            .map_err(|e| TlsError(format!("--discovery-cacert: {e}")))?;
        Arc::new(CheckedServerVerifier { inner: webpki, trusted, identity: None })
    };
    let builder = builder.dangerous().with_custom_certificate_verifier(verifier);
    let mut config = if f.cert.is_empty() {
        builder.with_no_client_auth()
    } else {
        let pair = ReloadingCert::load(Path::new(&f.cert), Path::new(&f.key), Role::Client, provider)?;
        builder.with_client_cert_resolver(pair)
    };
    // gRPC over TLS negotiates h2 (grpc-go servers insist on it)
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Some(Arc::new(config)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eps(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn tls_is_used_only_when_a_flag_or_an_https_endpoint_asks_for_it() {
        let plain = DiscoveryTlsFlags { insecure_transport: true, ..Default::default() };
        assert!(discovery_client_config(&plain, &eps(&["127.0.0.1:2379", "http://a:2379"])).unwrap().is_none());
        let skip = DiscoveryTlsFlags { insecure_transport: true, insecure_skip_verify: true, ..Default::default() };
        assert!(discovery_client_config(&skip, &eps(&["127.0.0.1:2379"])).unwrap().is_some());
        let secure = DiscoveryTlsFlags { insecure_transport: false, insecure_skip_verify: true, ..Default::default() };
        let c = discovery_client_config(&secure, &eps(&["127.0.0.1:2379"])).unwrap().unwrap();
        assert_eq!(c.alpn_protocols, [b"h2".to_vec()]);
        assert!(discovery_client_config(&skip, &eps(&["https://a:2379"])).unwrap().is_some());
    }

    #[test]
    fn a_cert_without_its_key_is_etcds_error() {
        let f = DiscoveryTlsFlags { cert: "c.pem".into(), insecure_transport: true, ..Default::default() };
        let e = discovery_client_config(&f, &eps(&["127.0.0.1:2379"])).unwrap_err();
        assert_eq!(e.0, "KeyFile and CertFile must both be present[key: , cert: c.pem]");
        let f = DiscoveryTlsFlags { cacert: "/nonexistent/ca.pem".into(), insecure_transport: true, ..Default::default() };
        assert!(discovery_client_config(&f, &eps(&["127.0.0.1:2379"])).is_err());
    }
}
