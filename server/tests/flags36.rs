//! The etcd 3.5/3.6 flags beyond the renamed ones: `--listen-client-http-urls` (HTTP on its own
//! listeners, gRPC alone on the client URLs), `--enable-grpc-gateway`, `--log-format`,
//! `--enable-log-rotation` with `--log-rotation-config-json`, `--raft-read-timeout` /
//! `--raft-write-timeout`, `--peer-client-cert-file` / `--peer-client-key-file` (and the client
//! side's pair), and etcd's ignored v2-era flags.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::cluster::{member_ip, TestCluster};
use common::pki::Pki;
use common::{free_port, http_get, http_post, single_member, Member};
use etcd_proto::etcdserverpb::kv_client::KvClient;
use etcd_proto::etcdserverpb::RangeRequest;
use tonic::transport::Channel;

/// Runs etcd-rs with `args` (and a data dir of its own) expecting it to refuse to start:
/// (exit code, stderr).
fn refused(args: &[&str]) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    let (c, p) = (free_port(), free_port());
    let client = format!("http://127.0.0.1:{c}");
    let peer = format!("http://127.0.0.1:{p}");
    let initial = format!("default={peer}");
    let mut child = Command::new(env!("CARGO_BIN_EXE_etcd-rs"))
        .args(["--data-dir", dir.path().join("d").to_str().unwrap()])
        .args(["--listen-client-urls", &client, "--advertise-client-urls", &client])
        .args(["--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer, "--initial-cluster", &initial])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            use std::io::Read;
            child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
            return (status.code().unwrap_or(-1), err);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("etcd-rs {args:?} did not refuse to start");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// (status, body) of a GET on `addr` over HTTP/1.1; None when the connection is refused or cut
/// without an answer.
fn try_http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes()).ok()?;
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    let code = out.strip_prefix("HTTP/1.1 ")?.split_whitespace().next()?.parse().ok()?;
    Some((code, out.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default()))
}

async fn grpc_range(endpoint: &str) -> Result<(), String> {
    let ch = Channel::from_shared(endpoint.to_string()).unwrap().connect_timeout(Duration::from_secs(2)).connect().await.map_err(|e| e.to_string())?;
    let mut kv = KvClient::new(ch);
    match tokio::time::timeout(Duration::from_secs(5), kv.range(RangeRequest { key: b"k".to_vec(), ..Default::default() })).await {
        Ok(r) => r.map(|_| ()).map_err(|e| e.to_string()),
        Err(_) => Err("timed out".into()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_client_http_urls_serve_http_and_leave_the_client_urls_grpc_only() {
    let http_port = free_port();
    let http_url = format!("http://127.0.0.1:{http_port}");
    let (_dir, m, _kv) = single_member(&["--listen-client-http-urls", &http_url]).await;
    let http_addr = format!("127.0.0.1:{http_port}");
    // the HTTP listener: probes, /version, the gateway
    let (code, body) = try_http_get(&http_addr, "/health").expect("an answer on the HTTP URL");
    assert_eq!(code, 200, "{body}");
    assert!(try_http_get(&http_addr, "/version").unwrap().1.contains("etcdserver"));
    let gw = {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(&http_addr).unwrap();
        let body = r#"{"key":"aw=="}"#;
        let req = format!("POST /v3/kv/range HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}", body.len());
        s.write_all(req.as_bytes()).unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    };
    assert!(gw.starts_with("HTTP/1.1 200") && gw.contains("\"header\""), "{gw}");
    // ... but no gRPC
    assert!(grpc_range(&http_url).await.is_err(), "gRPC answered on the HTTP-only URL");
    // the client URL: gRPC, and no HTTP/1.1 (etcd's gRPC server owns it)
    grpc_range(&m.endpoint()).await.unwrap();
    let client_addr = m.endpoint().trim_start_matches("http://").to_string();
    assert_eq!(try_http_get(&client_addr, "/health"), None, "HTTP/1.1 answered on the gRPC-only client URL");
    assert!(m.log_shows(r#""traffic":"grpc""#) && m.log_shows(r#""traffic":"http""#), "{}", m.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_grpc_gateway_is_on_by_default_and_can_be_turned_off() {
    let body = r#"{"key":"aw=="}"#;
    let (_dir, on, _kv) = single_member(&[]).await;
    assert_eq!(http_post(&on, "/v3/kv/range", body).0, 200);
    let (_dir2, off, _kv2) = single_member(&["--enable-grpc-gateway=false"]).await;
    assert_eq!(http_post(&off, "/v3/kv/range", body).0, 404);
    assert_eq!(http_post(&off, "/v3beta/kv/range", body).0, 404);
    // the rest of the HTTP side stays
    assert_eq!(http_get(&off, "/health").0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_format_console_writes_zaps_tab_separated_lines_and_bad_values_are_refused() {
    let (_dir, m, _kv) = single_member(&["--log-format", "console"]).await;
    assert!(m.log_shows("ready to serve client requests"));
    let line = m.log().lines().find(|l| l.contains("ready to serve client requests")).unwrap().to_string();
    let cols: Vec<&str> = line.split('\t').collect();
    assert!(cols.len() >= 4, "{line}");
    assert!(cols[0].ends_with('Z') && cols[0].len() == 24, "{line}");
    assert_eq!(cols[1], "info", "{line}");
    assert_eq!(cols[3], "ready to serve client requests", "{line}");
    let (code, err) = refused(&["--log-format", "text"]);
    assert_eq!(code, 1);
    assert!(err.contains("unknown log format: text, supported values json, console"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_rotation_renames_a_full_log_file_and_needs_one_file_target() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("etcd.log");
    // a log already just under 1 MB: the server's first lines rotate it
    std::fs::write(&log, "x".repeat(1024 * 1024 - 10) + "\n").unwrap();
    let rotation = r#"{"maxsize": 1, "maxbackups": 1}"#;
    let mut m = Member::new(&dir.path().join("m.etcd"), &["--log-outputs", log.to_str().unwrap(), "--enable-log-rotation", "--log-rotation-config-json", rotation]);
    m.start();
    m.ready_client().await;
    let backups: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("etcd-") && n.ends_with(".log"))
        .collect();
    assert_eq!(backups.len(), 1, "{backups:?}");
    assert!(std::fs::read_to_string(dir.path().join(&backups[0])).unwrap().starts_with("xxxx"));
    let current = std::fs::read_to_string(&log).unwrap();
    assert!(current.starts_with('{') && current.contains("ready to serve client requests"), "{current}");

    let (code, err) = refused(&["--enable-log-rotation", "--log-outputs", "stderr"]);
    assert_eq!(code, 1);
    assert!(err.contains("--log-outputs requires a single file path when --log-rotate-config-json is defined"), "{err}");
    let bad = dir.path().join("bad.log");
    let (code, err) = refused(&["--enable-log-rotation", "--log-outputs", bad.to_str().unwrap(), "--log-rotation-config-json", "{maxsize"]);
    assert_eq!(code, 1);
    assert!(err.contains("improperly formatted log rotation config"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raft_read_timeout_bounds_how_long_a_silent_peer_stream_is_read() {
    let dir = tempfile::tempdir().unwrap();
    let c = TestCluster::start_each(dir.path(), &[&["--raft-read-timeout", "700ms", "--raft-write-timeout", "2s"], &[]], "http").await;
    c.wait_leader(&[0, 1]).await;
    // member 1 stops answering: member 0's streams from it go silent (no link heartbeats)
    let pid = c.members[1].pid() as i32;
    // SAFETY: signals to a child process this test started
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    let shown = c.members[0].log_shows("no data (not even a link heartbeat) for 700ms");
    unsafe { libc::kill(pid, libc::SIGCONT) };
    assert!(shown, "{}", c.members[0].log());
    for (args, want) in [
        (&["--raft-read-timeout", "0s"][..], "--raft-read-timeout must be > 0"),
        (&["--raft-write-timeout", "5"][..], "--raft-write-timeout: "),
    ] {
        let (code, err) = refused(args);
        assert_eq!(code, 2, "{err}");
        assert!(err.contains(want), "{err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_dial_with_the_peer_client_certificate_when_one_is_given() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let sans: Vec<String> = ["127.0.0.1".to_string()].into_iter().chain((0..2).map(|i| member_ip(i).to_string())).collect();
    let sans: Vec<&str> = sans.iter().map(String::as_str).collect();
    // the serving pair is revoked as a client certificate (the peer CRL applies to the
    // certificates dialling peers show): peers reach each other only with the client pair
    let (serve_cert, serve_key) = pki.issue_with_serial("peer-server", "etcd-peer", &sans, true, Some(1001));
    let (client_cert, client_key) = pki.issue_with_serial("peer-client", "etcd-peer", &[], false, Some(1002));
    let crl = dir.path().join("peer.crl");
    pki.write_crl(&crl, &[1001]);
    let ca = pki.ca_file();
    let flags = [
        "--peer-cert-file", &serve_cert, "--peer-key-file", &serve_key, "--peer-trusted-ca-file", &ca,
        "--peer-client-cert-auth", "--peer-crl-file", crl.to_str().unwrap(),
        "--peer-client-cert-file", &client_cert, "--peer-client-key-file", &client_key,
    ];
    let c = TestCluster::start_with_peer_scheme(dir.path(), 2, &flags, "https").await;
    c.wait_leader(&[0, 1]).await;
    for m in &c.members {
        assert!(!m.log().contains("rejected connection"), "{}", m.log());
    }
    drop(c);
    // the check holds: without the client pair, the revoked serving pair is refused
    let other = dir.path().join("without");
    std::fs::create_dir_all(&other).unwrap();
    let c = TestCluster::start_with_peer_scheme(&other, 2, &flags[..flags.len() - 4], "https").await;
    assert!(c.members[0].log_shows("revoked"), "{}", c.members[0].log());
    drop(c);
    // a half pair is refused as etcd's TLSInfo refuses it
    let (code, err) = refused(&["--peer-client-cert-file", &client_cert]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("ClientKeyFile and ClientCertFile must both be present or both absent"), "{err}");
    let (_, err) = refused(&["--client-key-file", &client_key]);
    assert!(err.contains("ClientKeyFile and ClientCertFile must both be present or both absent"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcds_ignored_v2_flags_are_accepted_with_a_warning() {
    let (_dir, m, _kv) = single_member(&["--force", "--snapshot=true", "-v", "--peer-heartbeat-interval=5"]).await;
    for name in ["force", "snapshot", "v", "peer-heartbeat-interval"] {
        assert!(m.log_shows(&format!(r#""msg":"flag is no longer supported - ignoring","flag-name":"{name}""#)), "{}", m.log());
    }
}
