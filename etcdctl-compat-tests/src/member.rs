//! Server processes: one [`Member`] per etcd (or etcd-rs) process, grouped in a [`Cluster`].
//!
//! Invariant: a member's process never outlives its `Member`. `Drop` SIGKILLs and reaps it, so
//! a panicking test leaves no server behind, and the data directory (owned by the cluster's
//! temp dir, dropped after the members) is removed only once no process writes to it.

use std::fs::{File, OpenOptions};
use std::io;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::tls::{ClientTls, TlsFiles};

/// How long a member may take to answer `etcdctl endpoint health` after it is started.
pub const HEALTHY_WITHIN: Duration = Duration::from_secs(20);
/// How long a member may take to exit after SIGTERM before it is killed.
const STOP_WITHIN: Duration = Duration::from_secs(15);
/// Cluster token shared by both sides, so member and cluster IDs can match.
pub const CLUSTER_TOKEN: &str = "compat-token";

pub const SIGINT: i32 = 2;
pub const SIGKILL: i32 = 9;
pub const SIGTERM: i32 = 15;

extern "C" {
    // libc's kill(2); std already links libc on every unix target.
    fn kill(pid: i32, sig: i32) -> i32;
}

/// Sends `sig` to a process (or, for a negative pid, to a process group).
pub fn send_signal(pid: i32, sig: i32) {
    // SAFETY: kill(2) takes two integers and touches no memory of ours. A stale pid is
    // harmless here: callers signal only children they have not yet reaped.
    unsafe {
        kill(pid, sig);
    }
}

/// Loopback ports of one member, chosen once per scenario and reused by both sides so that
/// URLs (and IDs derived from them) are the same in both transcripts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemberPorts {
    pub client: u16,
    pub peer: u16,
}

/// Picks `members` pairs of currently free loopback ports (all bound at once, so distinct).
/// Ports of spare members stay unused until `@start-new`; nothing else of ours binds them.
pub fn pick_ports(members: usize) -> io::Result<Vec<MemberPorts>> {
    let listeners = (0..members * 2)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<io::Result<Vec<_>>>()?;
    let ports = listeners
        .iter()
        .map(|l| l.local_addr().map(|a| a.port()))
        .collect::<io::Result<Vec<_>>>()?;
    Ok(ports
        .chunks(2)
        .map(|p| MemberPorts {
            client: p[0],
            peer: p[1],
        })
        .collect())
}

/// One server process and everything needed to start it again on the same data.
pub struct Member {
    pub name: String,
    pub ports: MemberPorts,
    binary: PathBuf,
    data_dir: PathBuf,
    pub log_path: PathBuf,
    /// `--initial-cluster` value.
    initial_cluster: String,
    /// `--initial-cluster-state`: `new` for initial members, `existing` for joining ones.
    initial_state: &'static str,
    extra_flags: Vec<String>,
    /// `@tls`: https URLs, these certificates (also given to the health checks' etcdctl).
    tls: Option<TlsFiles>,
    child: Option<Child>,
    /// Whether the member was ever started (so it has a data dir to start again on).
    started_before: bool,
}

impl Member {
    fn scheme(&self) -> &'static str {
        scheme(self.tls.is_some())
    }

    pub fn client_url(&self) -> String {
        format!("{}://127.0.0.1:{}", self.scheme(), self.ports.client)
    }

    pub fn peer_url(&self) -> String {
        format!("{}://127.0.0.1:{}", self.scheme(), self.ports.peer)
    }

    /// The full command line, as an operator would type it.
    pub fn argv(&self) -> Vec<String> {
        let mut argv: Vec<String> = [
            "--name",
            &self.name,
            "--data-dir",
            &self.data_dir.to_string_lossy(),
            "--listen-client-urls",
            &self.client_url(),
            "--advertise-client-urls",
            &self.client_url(),
            "--listen-peer-urls",
            &self.peer_url(),
            "--initial-advertise-peer-urls",
            &self.peer_url(),
            "--initial-cluster",
            &self.initial_cluster,
            "--initial-cluster-state",
            self.initial_state,
            "--initial-cluster-token",
            CLUSTER_TOKEN,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        if let Some(tls) = &self.tls {
            argv.extend(tls.server_flags());
        }
        argv.extend(self.extra_flags.iter().cloned());
        argv
    }

    /// Starts the process; its stdout and stderr are appended to `log_path`.
    pub fn start(&mut self) -> io::Result<()> {
        self.stop(SIGKILL);
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)?;
        let child = Command::new(&self.binary)
            .args(self.argv())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("cannot start {}: {e}", self.binary.display()),
                )
            })?;
        self.child = Some(child);
        self.started_before = true;
        Ok(())
    }

    /// Whether the member was ever started.
    pub fn started_before(&self) -> bool {
        self.started_before
    }

    /// Makes this (never started) member join a running cluster whose membership, including
    /// this member, is `initial_cluster`.
    pub fn prepare_join(&mut self, initial_cluster: String) {
        self.initial_cluster = initial_cluster;
        self.initial_state = "existing";
    }

    /// Whether the process was started and has not exited.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Sends `sig` and reaps the process; after [`STOP_WITHIN`] it is SIGKILLed.
    pub fn stop(&mut self, sig: i32) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        send_signal(child.id() as i32, sig);
        let deadline = Instant::now() + STOP_WITHIN;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Waits until this member serves clients: `etcdctl endpoint health` succeeds, or, for a
    /// learner (which refuses the linearizable read `endpoint health` makes, in etcd as in
    /// etcd-rs), `endpoint status` succeeds and reports it a learner.
    pub fn wait_healthy(&mut self, etcdctl: &Path) -> Result<(), String> {
        let deadline = Instant::now() + HEALTHY_WITHIN;
        loop {
            if !self.is_running() {
                return Err(format!(
                    "member {} exited during startup\n{}",
                    self.name,
                    log_tail(&self.log_path, 15)
                ));
            }
            if self.answers(etcdctl, &["endpoint", "health"], |_| true)?
                || self.answers(etcdctl, &["endpoint", "status", "-w", "json"], |out| {
                    out.contains("\"isLearner\":true")
                })?
            {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "member {} not healthy within {} s\n{}",
                    self.name,
                    HEALTHY_WITHIN.as_secs(),
                    log_tail(&self.log_path, 15)
                ));
            }
            thread::sleep(Duration::from_millis(150));
        }
    }
}

impl Member {
    /// Whether `etcdctl ARGS` against this member alone succeeds with stdout accepted by `ok`.
    fn answers(
        &self,
        etcdctl: &Path,
        args: &[&str],
        ok: impl Fn(&str) -> bool,
    ) -> Result<bool, String> {
        let output = Command::new(etcdctl)
            .env_remove("ETCDCTL_BIN")
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", self.client_url()))
            .args(
                self.tls
                    .as_ref()
                    .map(|t| t.etcdctl_args(ClientTls::Cert))
                    .unwrap_or_default(),
            )
            .args(["--dial-timeout=1s", "--command-timeout=2s"])
            .args(args)
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run {}: {e}", etcdctl.display()))?;
        Ok(output.status.success() && ok(&String::from_utf8_lossy(&output.stdout)))
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The members of one side of a comparison, with their working directory.
pub struct Cluster {
    // Declared before `workdir`: members are killed before their data dirs are removed.
    pub members: Vec<Member>,
    /// How many of `members` form the initial cluster; the others are spares.
    initial: usize,
    workdir: tempfile::TempDir,
}

impl Cluster {
    /// Prepares (does not start) members `m0..` of one binary, one per entry of `ports`. The
    /// first `initial` form the initial cluster; the rest are spares for `member add`. With
    /// `tls`, every URL is https and the members serve and verify with these certificates.
    pub fn new(
        binary: &Path,
        ports: &[MemberPorts],
        initial: usize,
        extra_flags: &[String],
        tls: Option<&TlsFiles>,
    ) -> io::Result<Self> {
        let workdir = tempfile::Builder::new()
            .prefix("etcdctl-compat-")
            .tempdir()?;
        let names: Vec<String> = (0..ports.len()).map(|i| format!("m{i}")).collect();
        let initial_cluster = names
            .iter()
            .zip(ports)
            .take(initial)
            .map(|(n, p)| format!("{n}={}://127.0.0.1:{}", scheme(tls.is_some()), p.peer))
            .collect::<Vec<_>>()
            .join(",");
        let members = names
            .into_iter()
            .zip(ports)
            .map(|(name, &ports)| Member {
                data_dir: workdir.path().join(format!("{name}.data")),
                log_path: workdir.path().join(format!("{name}.log")),
                name,
                ports,
                binary: binary.to_path_buf(),
                initial_cluster: initial_cluster.clone(),
                initial_state: "new",
                extra_flags: extra_flags.to_vec(),
                tls: tls.cloned(),
                child: None,
                started_before: false,
            })
            .collect();
        Ok(Cluster {
            members,
            initial,
            workdir,
        })
    }

    pub fn workdir(&self) -> &Path {
        self.workdir.path()
    }

    /// Comma-separated client URLs of every running member, for `--endpoints`.
    pub fn running_endpoints(&mut self) -> String {
        self.members
            .iter_mut()
            .filter_map(|m| m.is_running().then(|| m.client_url()))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Indexes of the running members.
    pub fn running(&mut self) -> Vec<usize> {
        (0..self.members.len())
            .filter(|&i| self.members[i].is_running())
            .collect()
    }

    /// Starts the initial members, then waits until each is healthy.
    pub fn start_all(&mut self, etcdctl: &Path) -> Result<(), String> {
        let initial = self.initial;
        for m in &mut self.members[..initial] {
            m.start().map_err(|e| e.to_string())?;
        }
        self.members[..initial]
            .iter_mut()
            .try_for_each(|m| m.wait_healthy(etcdctl))
    }

    /// Stops every member gracefully.
    pub fn stop_all(&mut self) {
        for m in &mut self.members {
            m.stop(SIGTERM);
        }
    }
}

fn scheme(tls: bool) -> &'static str {
    if tls {
        "https"
    } else {
        "http"
    }
}

/// The last `lines` lines of a log file, for failure messages.
pub fn log_tail(path: &Path, lines: usize) -> String {
    let text = match File::open(path).and_then(|mut f| {
        let mut s = Vec::new();
        io::Read::read_to_end(&mut f, &mut s)?;
        Ok(s)
    }) {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(e) => return format!("(no log at {}: {e})", path.display()),
    };
    let all: Vec<&str> = text.lines().collect();
    let start = all.len().saturating_sub(lines);
    format!(
        "last lines of {}:\n{}",
        path.display(),
        all[start..].join("\n")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files() -> TlsFiles {
        TlsFiles {
            ca: "/t/ca.pem".into(),
            server_cert: "/t/server.pem".into(),
            server_key: "/t/server-key.pem".into(),
            client_cert: "/t/client.pem".into(),
            client_key: "/t/client-key.pem".into(),
        }
    }

    #[test]
    fn tls_members_use_https_urls_and_serve_with_the_certificates() {
        let ports = [
            MemberPorts { client: 41001, peer: 41002 },
            MemberPorts { client: 41003, peer: 41004 },
        ];
        let extra = vec!["--x".to_string()];
        let tls = files();
        let c = Cluster::new(Path::new("/bin/etcd"), &ports, 2, &extra, Some(&tls)).unwrap();
        let m = &c.members[1];
        assert_eq!(m.client_url(), "https://127.0.0.1:41003");
        assert_eq!(m.peer_url(), "https://127.0.0.1:41004");
        let argv = m.argv();
        let after = |flag: &str| argv[argv.iter().position(|a| a == flag).unwrap() + 1].clone();
        assert_eq!(
            after("--initial-cluster"),
            "m0=https://127.0.0.1:41002,m1=https://127.0.0.1:41004"
        );
        assert_eq!(after("--listen-client-urls"), "https://127.0.0.1:41003");
        assert_eq!(after("--peer-cert-file"), "/t/server.pem");
        // scenario flags come last, so they can add to (or override) the TLS ones
        assert_eq!(argv.last().map(String::as_str), Some("--x"));

        let plain = Cluster::new(Path::new("/bin/etcd"), &ports, 2, &extra, None).unwrap();
        assert_eq!(plain.members[0].client_url(), "http://127.0.0.1:41001");
        assert!(!plain.members[0].argv().iter().any(|a| a.contains("cert")));
    }
}
