//! Certificates for `@tls` scenarios, generated at run time (rcgen).
//!
//! Invariant: one set of files per scenario, shared by both sides, so the reference and etcd-rs
//! serve the same certificates from the same paths and etcdctl is given the same arguments.
//!
//! - `ca.pem`: the CA every member and etcdctl trusts;
//! - `server.pem` / `server-key.pem`: each member's client *and* peer certificate (SANs
//!   127.0.0.1 and localhost; server and client usage, as members dial each other with it);
//! - `client.pem` / `client-key.pem`: etcdctl's client certificate (CN `compat-client`).

use std::io;
use std::path::{Path, PathBuf};

/// Which TLS credentials the harness gives etcdctl (`@client-tls`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientTls {
    /// `--cacert`, `--cert` and `--key` (the default under `@tls`).
    Cert,
    /// `--cacert` only: no client certificate.
    Ca,
    /// Nothing: the scenario's own arguments decide.
    None,
}

impl ClientTls {
    pub fn parse(text: &str) -> Option<ClientTls> {
        match text {
            "cert" => Some(ClientTls::Cert),
            "ca" => Some(ClientTls::Ca),
            "none" => Some(ClientTls::None),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            ClientTls::Cert => "cert",
            ClientTls::Ca => "ca",
            ClientTls::None => "none",
        }
    }
}

/// The PEM files of one scenario's PKI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

fn rcgen_err(e: rcgen::Error) -> io::Error {
    io::Error::other(format!("cannot generate a test certificate: {e}"))
}

impl TlsFiles {
    /// Generates a CA and the server and client certificates it signs into `dir`.
    pub fn generate(dir: &Path) -> io::Result<TlsFiles> {
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(rcgen_err)?;
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "etcdctl-compat CA");
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        let ca_key = rcgen::KeyPair::generate().map_err(rcgen_err)?;
        let ca = ca_params.self_signed(&ca_key).map_err(rcgen_err)?;
        let files = TlsFiles {
            ca: dir.join("ca.pem"),
            server_cert: dir.join("server.pem"),
            server_key: dir.join("server-key.pem"),
            client_cert: dir.join("client.pem"),
            client_key: dir.join("client-key.pem"),
        };
        std::fs::write(&files.ca, ca.pem())?;
        let issue = |cn: &str, sans: &[&str], server: bool, cert: &Path, key: &Path| {
            let names = sans.iter().map(|s| s.to_string()).collect::<Vec<_>>();
            let mut params = rcgen::CertificateParams::new(names).map_err(rcgen_err)?;
            params.distinguished_name.push(rcgen::DnType::CommonName, cn);
            params.key_usages = vec![
                rcgen::KeyUsagePurpose::DigitalSignature,
                rcgen::KeyUsagePurpose::KeyEncipherment,
            ];
            params.extended_key_usages = if server {
                vec![
                    rcgen::ExtendedKeyUsagePurpose::ServerAuth,
                    rcgen::ExtendedKeyUsagePurpose::ClientAuth,
                ]
            } else {
                vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth]
            };
            let key_pair = rcgen::KeyPair::generate().map_err(rcgen_err)?;
            let signed = params
                .signed_by(&key_pair, &ca, &ca_key)
                .map_err(rcgen_err)?;
            std::fs::write(cert, signed.pem())?;
            std::fs::write(key, key_pair.serialize_pem())
        };
        issue(
            "compat-server",
            &["127.0.0.1", "localhost"],
            true,
            &files.server_cert,
            &files.server_key,
        )?;
        issue(
            "compat-client",
            &[],
            false,
            &files.client_cert,
            &files.client_key,
        )?;
        Ok(files)
    }

    /// The TLS flags of every member: https on both ports, client certificates required and
    /// verified against the CA on both.
    pub fn server_flags(&self) -> Vec<String> {
        let p = |p: &Path| p.to_string_lossy().into_owned();
        vec![
            "--cert-file".into(),
            p(&self.server_cert),
            "--key-file".into(),
            p(&self.server_key),
            "--trusted-ca-file".into(),
            p(&self.ca),
            "--client-cert-auth".into(),
            "--peer-cert-file".into(),
            p(&self.server_cert),
            "--peer-key-file".into(),
            p(&self.server_key),
            "--peer-trusted-ca-file".into(),
            p(&self.ca),
            "--peer-client-cert-auth".into(),
        ]
    }

    /// etcdctl's TLS arguments for `which`.
    pub fn etcdctl_args(&self, which: ClientTls) -> Vec<String> {
        let p = |p: &Path| p.to_string_lossy().into_owned();
        match which {
            ClientTls::Cert => vec![
                format!("--cacert={}", p(&self.ca)),
                format!("--cert={}", p(&self.client_cert)),
                format!("--key={}", p(&self.client_key)),
            ],
            ClientTls::Ca => vec![format!("--cacert={}", p(&self.ca))],
            ClientTls::None => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_files_are_pem_and_flags_name_them() {
        let dir = tempfile::tempdir().unwrap();
        let files = TlsFiles::generate(dir.path()).unwrap();
        for (path, label) in [
            (&files.ca, "CERTIFICATE"),
            (&files.server_cert, "CERTIFICATE"),
            (&files.client_cert, "CERTIFICATE"),
            (&files.server_key, "PRIVATE KEY"),
            (&files.client_key, "PRIVATE KEY"),
        ] {
            let text = std::fs::read_to_string(path).unwrap();
            assert!(
                text.starts_with(&format!("-----BEGIN {label}-----")),
                "{}: {text}",
                path.display()
            );
        }
        let flags = files.server_flags();
        let after = |flag: &str| {
            let i = flags.iter().position(|f| f == flag).unwrap();
            flags[i + 1].clone()
        };
        assert_eq!(after("--cert-file"), files.server_cert.to_string_lossy());
        assert_eq!(after("--peer-trusted-ca-file"), files.ca.to_string_lossy());
        assert!(flags.contains(&"--client-cert-auth".to_string()));
        assert!(flags.contains(&"--peer-client-cert-auth".to_string()));
    }

    #[test]
    fn etcdctl_gets_the_credentials_asked_for() {
        let files = TlsFiles {
            ca: "/t/ca.pem".into(),
            server_cert: "/t/server.pem".into(),
            server_key: "/t/server-key.pem".into(),
            client_cert: "/t/client.pem".into(),
            client_key: "/t/client-key.pem".into(),
        };
        assert_eq!(
            files.etcdctl_args(ClientTls::Cert),
            [
                "--cacert=/t/ca.pem",
                "--cert=/t/client.pem",
                "--key=/t/client-key.pem"
            ]
        );
        assert_eq!(files.etcdctl_args(ClientTls::Ca), ["--cacert=/t/ca.pem"]);
        assert!(files.etcdctl_args(ClientTls::None).is_empty());
        for w in [ClientTls::Cert, ClientTls::Ca, ClientTls::None] {
            assert_eq!(ClientTls::parse(w.name()), Some(w));
        }
        assert_eq!(ClientTls::parse("CA"), None);
    }
}
