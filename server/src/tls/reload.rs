//! Certificate/key pairs that follow their files: etcd reads the pair on every handshake
//! (GetCertificate on its listeners, GetClientCertificate when it dials), so a pair rotated on
//! disk (cert-manager, kubeadm) serves new connections at once, and connections already open
//! keep the pair they were set up with.
//!
//! The invariant: every handshake gets a usable pair, the newest one that loaded. The files are
//! stat'ed per handshake and read again only when one of them changed (device, inode, size,
//! mtime or ctime: a rename or a `..data` symlink swap changes the inode, a rewrite in place the
//! times). A new pair that is missing, unreadable, unparsable or whose key does not match the
//! certificate is logged once per change with etcd's words, and the last good pair keeps
//! serving; etcd fails those handshakes instead, which a half-done rotation (certificate written,
//! key not yet) turns into refused connections.
//!
//! The trusted CA file is not followed: etcd builds its CA pool once at start too.

use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;
use rustls::crypto::CryptoProvider;
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::TlsError;

/// Which side of a handshake the pair serves, for etcd's log wording (its GetCertificate says
/// "peer" for every listener; GetClientCertificate says "client").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Role {
    /// Presented by a listener.
    Server,
    /// Presented as client certificate when dialling peers.
    Client,
}

/// One certificate/key pair, re-read when its files change.
#[derive(Debug)]
pub(super) struct ReloadingCert {
    cert_file: PathBuf,
    key_file: PathBuf,
    role: Role,
    provider: Arc<CryptoProvider>,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    /// The pair handshakes get.
    current: Arc<CertifiedKey>,
    /// The files `current` was read from, as stat'ed before reading; None while they were
    /// changed too recently to trust their stamps (see [`settled`]).
    loaded: Option<PairStamp>,
    /// The files as they were when loading them last failed, once settled.
    refused: Option<PairStamp>,
    /// Why loading last failed, logged once (until the pair loads or the reason changes).
    refusal: Option<String>,
}

/// What a file looked like; None when it could not be stat'ed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileStamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime_ns: i128,
    ctime_ns: i128,
}

type PairStamp = [Option<FileStamp>; 2];

fn stamp(path: &Path) -> Option<FileStamp> {
    let m = std::fs::metadata(path).ok()?;
    let ns = |secs: i64, nsec: i64| i128::from(secs) * 1_000_000_000 + i128::from(nsec);
    Some(FileStamp {
        dev: m.dev(),
        ino: m.ino(),
        len: m.len(),
        mtime_ns: ns(m.mtime(), m.mtime_nsec()),
        ctime_ns: ns(m.ctime(), m.ctime_nsec()),
    })
}

/// Whether a pair's stamps can stand for its contents: both files exist and neither changed in
/// the last second. File times tick coarsely (a few ms), so a file rewritten twice within one
/// tick to the same size keeps its stamp; until a change is older than that, the files are read
/// again at each handshake.
fn settled(pair: &PairStamp) -> bool {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i128)
        .unwrap_or(i128::MAX);
    pair.iter().all(|f| f.is_some_and(|f| now - f.ctime_ns.max(f.mtime_ns) > 1_000_000_000))
}

/// Why a pair could not be loaded; `missing` picks etcd's "failed to find" wording.
struct LoadError {
    missing: bool,
    reason: String,
}

/// Reads and checks a pair, with Go's crypto/tls words for what is wrong with it.
fn load_pair(cert_file: &Path, key_file: &Path, provider: &CryptoProvider) -> Result<CertifiedKey, LoadError> {
    let read = |path: &Path| {
        std::fs::read(path).map_err(|e| LoadError {
            missing: e.kind() == io::ErrorKind::NotFound,
            reason: format!("open {}: {}", path.display(), go_io_error(&e)),
        })
    };
    let bad = |reason: String| LoadError { missing: false, reason };
    let (cert_pem, key_pem) = (read(cert_file)?, read(key_file)?);
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| bad(format!("tls: failed to parse certificate PEM data: {e}")))?;
    if chain.is_empty() {
        return Err(bad("tls: failed to find any PEM data in certificate input".into()));
    }
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| match e {
        rustls_pki_types::pem::Error::NoItemsFound => bad("tls: failed to find any PEM data in key input".into()),
        e => bad(format!("tls: failed to parse private key: {e}")),
    })?;
    CertifiedKey::from_der(chain, key, provider).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => bad("tls: private key does not match public key".into()),
        e => bad(format!("tls: {e}")),
    })
}

/// An io::Error as Go prints a syscall error ("no such file or directory").
fn go_io_error(e: &io::Error) -> String {
    let text = e.to_string();
    match text.find(" (os error") {
        Some(i) => text[..i].to_ascii_lowercase(),
        None => text,
    }
}

impl ReloadingCert {
    /// Loads the pair at start: a pair that cannot be used stops the start (etcd checks it
    /// before listening too).
    pub(super) fn load(
        cert_file: &Path,
        key_file: &Path,
        role: Role,
        provider: Arc<CryptoProvider>,
    ) -> Result<Arc<ReloadingCert>, TlsError> {
        let stamps = [stamp(cert_file), stamp(key_file)];
        let current = load_pair(cert_file, key_file, &provider).map_err(|e| {
            TlsError(format!("cannot use {} with {}: {}", cert_file.display(), key_file.display(), e.reason))
        })?;
        Ok(Arc::new(ReloadingCert {
            cert_file: cert_file.to_path_buf(),
            key_file: key_file.to_path_buf(),
            role,
            provider,
            state: Mutex::new(State {
                current: Arc::new(current),
                loaded: settled(&stamps).then_some(stamps),
                refused: None,
                refusal: None,
            }),
        }))
    }

    /// The pair for a handshake starting now: the files' pair when they changed and load,
    /// else the one loaded last.
    pub(super) fn current(&self) -> Arc<CertifiedKey> {
        let now = [stamp(&self.cert_file), stamp(&self.key_file)];
        let mut state = self.state.lock();
        if state.loaded == Some(now) || state.refused == Some(now) {
            return state.current.clone();
        }
        let trusted = settled(&now).then_some(now);
        match load_pair(&self.cert_file, &self.key_file, &self.provider) {
            Ok(pair) => {
                // the same certificate means the same pair (the key matched it)
                if pair.cert != state.current.cert {
                    tracing::info!(
                        "cert-file" = %self.cert_file.display(),
                        "key-file" = %self.key_file.display(),
                        serial = %serial_hex(pair.end_entity_cert().ok()),
                        "loaded rotated certificate"
                    );
                    state.current = Arc::new(pair);
                }
                state.loaded = trusted;
                state.refused = None;
                state.refusal = None;
            }
            Err(e) => {
                if state.refusal.as_deref() != Some(e.reason.as_str()) {
                    self.log_refused(&e);
                }
                state.refused = trusted;
                state.refusal = Some(e.reason);
            }
        }
        state.current.clone()
    }

    /// etcd's GetCertificate / GetClientCertificate warnings, saying the previous pair stays.
    fn log_refused(&self, e: &LoadError) {
        let msg = match (self.role, e.missing) {
            (Role::Server, true) => "failed to find peer cert files",
            (Role::Server, false) => "failed to create peer certificate",
            (Role::Client, true) => "failed to find client cert files",
            (Role::Client, false) => "failed to create client certificate",
        };
        tracing::warn!(
            "cert-file" = %self.cert_file.display(),
            "key-file" = %self.key_file.display(),
            error = %e.reason,
            "keeping" = "the certificate loaded before",
            "{msg}"
        );
    }
}

/// A certificate's serial number in hex, for the log.
fn serial_hex(der: Option<&CertificateDer<'_>>) -> String {
    der.and_then(|d| x509_parser::parse_x509_certificate(d).ok())
        .map(|(_, c)| c.raw_serial().iter().map(|b| format!("{b:02x}")).collect())
        .unwrap_or_default()
}

impl rustls::server::ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

impl rustls::client::ResolvesClientCert for ReloadingCert {
    fn resolve(&self, _root_hints: &[&[u8]], _sigschemes: &[rustls::SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
    fn has_certs(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_pair(dir: &Path, cn: &str) -> (PathBuf, PathBuf) {
        let mut params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
        params.distinguished_name.push(rcgen::DnType::CommonName, cn);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let (c, k) = (dir.join(format!("{cn}.pem")), dir.join(format!("{cn}-key.pem")));
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        (c, k)
    }

    fn cn_of(pair: &CertifiedKey) -> String {
        super::super::common_name(pair.end_entity_cert().unwrap()).unwrap()
    }

    #[test]
    fn a_changed_pair_is_served_and_a_bad_one_keeps_the_last_good_pair() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        let (a_cert, a_key) = write_pair(dir.path(), "a");
        let (b_cert, b_key) = write_pair(dir.path(), "b");
        std::fs::copy(&a_cert, &cert).unwrap();
        std::fs::copy(&a_key, &key).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let pair = ReloadingCert::load(&cert, &key, Role::Server, provider).unwrap();
        assert_eq!(cn_of(&pair.current()), "a");
        let first = pair.current();
        assert!(Arc::ptr_eq(&first, &pair.current()), "an unchanged pair was replaced");

        // rotated by rename, as kubelet's atomic writer and cert-manager do
        std::fs::copy(&b_key, dir.path().join("tmp")).unwrap();
        std::fs::rename(dir.path().join("tmp"), &key).unwrap();
        // half way: b's key with a's certificate does not match: a keeps serving
        assert_eq!(cn_of(&pair.current()), "a");
        assert!(matches!(
            load_pair(&cert, &key, &rustls::crypto::ring::default_provider()),
            Err(LoadError { missing: false, ref reason }) if reason == "tls: private key does not match public key"
        ));
        std::fs::copy(&b_cert, dir.path().join("tmp")).unwrap();
        std::fs::rename(dir.path().join("tmp"), &cert).unwrap();
        assert_eq!(cn_of(&pair.current()), "b");

        // garbage, then a missing file: b stays
        std::fs::write(&cert, b"not a certificate").unwrap();
        assert_eq!(cn_of(&pair.current()), "b");
        std::fs::remove_file(&cert).unwrap();
        assert_eq!(cn_of(&pair.current()), "b");
        let missing = load_pair(&cert, &key, &rustls::crypto::ring::default_provider()).err().unwrap();
        assert!(missing.missing);
        assert_eq!(missing.reason, format!("open {}: no such file or directory", cert.display()));

        // written in place (same inode) with the pair back: a is served again
        std::fs::write(&cert, std::fs::read(&a_cert).unwrap()).unwrap();
        std::fs::write(&key, std::fs::read(&a_key).unwrap()).unwrap();
        assert_eq!(cn_of(&pair.current()), "a");
    }

    #[test]
    fn a_pair_that_cannot_be_used_at_start_stops_the_start() {
        let dir = tempfile::tempdir().unwrap();
        let (a_cert, _) = write_pair(dir.path(), "a");
        let (_, b_key) = write_pair(dir.path(), "b");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let e = ReloadingCert::load(&a_cert, &b_key, Role::Client, provider).unwrap_err();
        assert!(e.0.ends_with("tls: private key does not match public key"), "{}", e.0);
    }
}
