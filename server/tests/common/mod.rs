//! Starts real `etcd-rs` processes on free loopback ports in temp dirs, with bounded waits,
//! and kills them when dropped.

#![allow(dead_code)]

pub mod cluster;
pub mod pki;
pub mod tamper;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use etcd_proto::etcdserverpb::kv_client::KvClient;
use etcd_proto::etcdserverpb::{PutRequest, RangeRequest};
use tonic::transport::Channel;

pub fn free_port() -> u16 {
    free_port_on(std::net::IpAddr::from([127, 0, 0, 1]))
}

/// A port free on `ip` now, taken below the kernel's ephemeral range (32768-60999 on Linux):
/// a port the kernel handed out for `bind(0)` can be taken by any outgoing connection before
/// the server binds it (a member once failed to start with `Address already in use`). Ports
/// are taken in turn from a per-process starting point, so one process never hands one twice.
pub fn free_port_on(ip: std::net::IpAddr) -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const FIRST: u32 = 12000;
    const COUNT: u32 = 20000;
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let _ = NEXT.compare_exchange(u32::MAX, std::process::id().wrapping_mul(7919) % COUNT, Ordering::AcqRel, Ordering::Acquire);
    for _ in 0..COUNT {
        let port = (FIRST + NEXT.fetch_add(1, Ordering::AcqRel) % COUNT) as u16;
        if TcpListener::bind((ip, port)).is_ok() {
            return port;
        }
    }
    TcpListener::bind((ip, 0)).unwrap().local_addr().unwrap().port()
}

pub struct Member {
    pub name: String,
    pub data_dir: PathBuf,
    /// The address the member listens for peers on (and sends peer traffic from).
    pub peer_ip: std::net::IpAddr,
    /// The peer port others reach this member on (a proxy in cluster tests); default: peer_port.
    pub advertise_peer_port: Option<u16>,
    pub initial_cluster: Option<String>,
    pub client_port: u16,
    pub peer_port: u16,
    pub extra: Vec<String>,
    /// "http" (default) or "https" for the client and the peer URLs.
    pub client_scheme: &'static str,
    pub peer_scheme: &'static str,
    /// The server binary: etcd-rs unless a test runs a reference etcd with the same flags.
    pub bin: PathBuf,
    child: Option<Child>,
}

impl Member {
    pub fn new(data_dir: &Path, extra: &[&str]) -> Member {
        Member {
            name: "m0".to_string(),
            peer_ip: std::net::IpAddr::from([127, 0, 0, 1]),
            advertise_peer_port: None,
            initial_cluster: None,
            data_dir: data_dir.to_path_buf(),
            client_port: free_port(),
            peer_port: free_port(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            client_scheme: "http",
            peer_scheme: "http",
            bin: PathBuf::from(env!("CARGO_BIN_EXE_etcd-rs")),
            child: None,
        }
    }

    /// The server's process id (0 when not running).
    #[allow(dead_code)]
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    pub fn endpoint(&self) -> String {
        format!("{}://127.0.0.1:{}", self.client_scheme, self.client_port)
    }

    pub fn start(&mut self) {
        let client = self.endpoint();
        let listen_peer = format!("{}://{}:{}", self.peer_scheme, self.peer_ip, self.peer_port);
        let peer = format!("{}://127.0.0.1:{}", self.peer_scheme, self.advertise_peer_port.unwrap_or(self.peer_port));
        let initial = self.initial_cluster.clone().unwrap_or_else(|| format!("{}={peer}", self.name));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.data_dir.with_extension("log"))
            .unwrap();
        let child = Command::new(&self.bin)
            .args(["--name", &self.name, "--data-dir"])
            .arg(&self.data_dir)
            .args(["--listen-client-urls", &client, "--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &listen_peer, "--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &initial, "--initial-cluster-token", "test-token"])
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start etcd-rs");
        self.child = Some(child);
    }

    /// SIGKILL: no chance to flush anything.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait (bounded) for a clean exit.
    pub fn stop(&mut self) {
        if let Some(c) = self.child.take() {
            stop_child(c, Duration::from_secs(15));
        }
    }

    /// Waits (at most `limit`) for the process to exit by itself; its exit status, or None if it
    /// still runs (or was not started).
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            let c = self.child.as_mut()?;
            if let Ok(Some(status)) = c.try_wait() {
                self.child = None;
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.data_dir.with_extension("log")).unwrap_or_default()
    }

    /// Whether the log comes to contain `needle` within 10 s (a line about a refused
    /// connection may be written after the client already saw the refusal).
    pub fn log_shows(&self, needle: &str) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if self.log().contains(needle) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits (at most 20 s) until a linearizable read succeeds.
    pub async fn ready_client(&self) -> KvClient<Channel> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(ch) = Channel::from_shared(self.endpoint()).unwrap().connect().await {
                let mut c = KvClient::new(ch);
                let probe = RangeRequest { key: b"probe".to_vec(), ..Default::default() };
                if c.range(probe).await.is_ok() {
                    return c;
                }
            }
            if Instant::now() > deadline {
                panic!("etcd-rs did not become ready in 20s; log:\n{}", self.log());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// One member named m0 in a fresh temp dir, started and ready, with a client. Bind the three in
/// this order (`let (dir, mut m, mut kv) = ...`): locals drop in reverse, so the member is
/// killed before its directory is removed.
pub async fn single_member(extra: &[&str]) -> (tempfile::TempDir, Member, KvClient<Channel>) {
    let dir = tempfile::tempdir().unwrap();
    let mut m = Member::new(&dir.path().join("m.etcd"), extra);
    m.start();
    let kv = m.ready_client().await;
    (dir, m, kv)
}

/// SIGTERM, a bounded wait for the exit, then SIGKILL.
pub fn stop_child(mut c: Child, limit: Duration) {
    unsafe_sigterm(c.id());
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = c.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = c.kill();
    let _ = c.wait();
}

fn unsafe_sigterm(pid: u32) {
    let _ = Command::new("kill").args(["-TERM", &pid.to_string()]).status();
}

/// (status code, body) of an HTTP/1.1 GET on the member's client port.
pub fn http_get(m: &Member, path: &str) -> (u16, String) {
    http(m, "GET", path, "")
}

/// (status code, body) of an HTTP/1.1 POST of a JSON body on the member's client port.
pub fn http_post(m: &Member, path: &str, body: &str) -> (u16, String) {
    http(m, "POST", path, body)
}

fn http(m: &Member, method: &str, path: &str, body: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let addr = m.endpoint().trim_start_matches("http://").to_string();
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).and_then(|_| s.write_all(body.as_bytes())).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let code = out.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = out.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (code, body)
}

pub async fn put(c: &mut KvClient<Channel>, k: &str, v: &str) -> Result<i64, tonic::Status> {
    let r = c
        .put(PutRequest { key: k.as_bytes().to_vec(), value: v.as_bytes().to_vec(), ..Default::default() })
        .await?;
    Ok(r.into_inner().header.map(|h| h.revision).unwrap_or(0))
}

/// Users root (role root, password rootpw) and u1 (password u1pw, role r1: read on [k, l)), as
/// the tests comparing with etcd write them.
pub async fn add_users_and_roles(ch: &Channel) {
    use etcd_proto::authpb::{permission::Type as PermType, Permission};
    use etcd_proto::etcdserverpb::auth_client::AuthClient;
    use etcd_proto::etcdserverpb::{AuthRoleAddRequest, AuthRoleGrantPermissionRequest, AuthUserAddRequest, AuthUserGrantRoleRequest};
    let mut auth = AuthClient::new(ch.clone());
    for (name, pw) in [("root", "rootpw"), ("u1", "u1pw")] {
        auth.user_add(AuthUserAddRequest { name: name.into(), password: pw.into(), ..Default::default() }).await.unwrap();
    }
    auth.user_grant_role(AuthUserGrantRoleRequest { user: "root".into(), role: "root".into() }).await.unwrap();
    auth.role_add(AuthRoleAddRequest { name: "r1".into() }).await.unwrap();
    let perm = Permission { perm_type: PermType::Read as i32, key: b"k".to_vec(), range_end: b"l".to_vec() };
    auth.role_grant_permission(AuthRoleGrantPermissionRequest { name: "r1".into(), perm: Some(perm) }).await.unwrap();
    auth.user_grant_role(AuthUserGrantRoleRequest { user: "u1".into(), role: "r1".into() }).await.unwrap();
}

/// All keys and values with their mod revisions, in key order.
pub async fn dump(c: &mut KvClient<Channel>) -> Vec<(String, String, i64)> {
    let r = c
        .range(RangeRequest { key: vec![0], range_end: vec![0], ..Default::default() })
        .await
        .expect("range all")
        .into_inner();
    r.kvs
        .into_iter()
        .map(|kv| (String::from_utf8_lossy(&kv.key).into_owned(), String::from_utf8_lossy(&kv.value).into_owned(), kv.mod_revision))
        .collect()
}

/// A member's peer listener answering etcd's `GET /members` (its members), dialled with
/// `dialer` (TLS for https); Err when the connection or the request fails.
pub async fn peer_members(dialer: &etcd_raft::PeerDialer, url: &str) -> Result<Vec<etcd_raft::rafthttp::peer_api::MemberJson>, String> {
    use etcd_raft::rafthttp::client::{Connection, Identity};
    let mut conn = Connection::open(dialer, url, Duration::from_secs(2)).await.map_err(|e| e.to_string())?;
    let me = Identity::default();
    let asked = etcd_raft::rafthttp::peer_api::call::members(&mut conn, &me);
    let (_cluster, members) = tokio::time::timeout(Duration::from_secs(5), asked).await.map_err(|_| "timed out".to_string())??;
    Ok(members)
}

/// Waits (at most 20 s) until the member serves a serializable read at `rev` or later.
pub async fn wait_revision(m: &Member, rev: i64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(ch) = Channel::from_shared(m.endpoint()).unwrap().connect().await {
            let probe = RangeRequest { key: b"k".to_vec(), serializable: true, ..Default::default() };
            if let Ok(r) = KvClient::new(ch).range(probe).await {
                if r.into_inner().header.map(|h| h.revision).unwrap_or(0) >= rev {
                    return;
                }
            }
        }
        assert!(Instant::now() < deadline, "member did not reach revision {rev}; log:\n{}", m.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The reference etcdctl (3.4.23) scripts/test-all.sh installs; None, saying the test skips,
/// when it is absent.
pub fn reference_etcdctl() -> Option<&'static Path> {
    let etcdctl = Path::new("/usr/bin/etcdctl");
    if !etcdctl.exists() {
        println!("skipping: {} is absent (scripts/test-all.sh installs it)", etcdctl.display());
        return None;
    }
    Some(etcdctl)
}
