//! Bootstrap discovery: a new cluster's members find each other through DNS SRV records
//! (`--discovery-srv`, against a DNS server this test runs on a loopback port) or through etcd
//! 3.6's v3 discovery keys in another etcd-rs cluster (`--discovery-endpoints`).

mod common;

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{put, Member};
use etcd_proto::etcdserverpb::cluster_client::ClusterClient;
use etcd_proto::etcdserverpb::{Member as PbMember, MemberListRequest, RangeRequest};
use tonic::transport::Channel;

/// An etcd-rs process started with the test's own flags; killed on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `m`'s ports and data dir with `args` instead of `--initial-cluster`.
fn spawn(m: &Member, args: &[String], env: &[(&str, String)]) -> Proc {
    let log = std::fs::OpenOptions::new().create(true).append(true).open(m.data_dir.with_extension("log")).unwrap();
    let client = m.endpoint();
    let peer = format!("http://127.0.0.1:{}", m.peer_port);
    let child = Command::new(env!("CARGO_BIN_EXE_etcd-rs"))
        .args(["--name", &m.name, "--data-dir"])
        .arg(&m.data_dir)
        .args(["--listen-client-urls", &client, "--advertise-client-urls", &client])
        .args(["--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer])
        .args(args)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    Proc(child)
}

fn members_named(dir: &Path, names: &[&str]) -> Vec<Member> {
    names
        .iter()
        .map(|n| {
            let mut m = Member::new(&dir.join(format!("{n}.etcd")), &[]);
            m.name = n.to_string();
            m
        })
        .collect()
}

async fn member_list(m: &Member) -> Vec<PbMember> {
    let ch = Channel::from_shared(m.endpoint()).unwrap().connect().await.unwrap();
    let mut list = ClusterClient::new(ch).member_list(MemberListRequest { linearizable: true }).await.unwrap().into_inner().members;
    list.sort_by(|a, b| a.name.cmp(&b.name));
    list
}

/// The member list once it shows `names` (at most 20 s).
async fn published(m: &Member, names: &[&str]) -> Vec<PbMember> {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let list = member_list(m).await;
        if list.iter().map(|m| m.name.as_str()).collect::<Vec<_>>() == names {
            return list;
        }
        if std::time::Instant::now() > deadline {
            panic!("member list {list:?} never showed {names:?}; log:\n{}", m.log());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits (at most 30 s) for the process to end by itself: its exit code and log.
fn wait_exit(p: &mut Proc, m: &Member) -> (Option<i32>, String) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(Some(status)) = p.0.try_wait() {
            return (status.code(), m.log());
        }
        if std::time::Instant::now() > deadline {
            panic!("still running after 30s; log:\n{}", m.log());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

// ---- a DNS server for the test ----

/// Answers SRV questions from `srv` (name -> (port, target)) and A questions from `a`; other
/// names get NXDOMAIN. Runs until the test process ends.
fn start_dns(srv: HashMap<String, Vec<(u16, String)>>, a: HashMap<String, Ipv4Addr>) -> SocketAddr {
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = sock.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 512];
        loop {
            let Ok((n, from)) = sock.recv_from(&mut buf) else { return };
            if let Some(resp) = answer(&buf[..n], &srv, &a) {
                let _ = sock.send_to(&resp, from);
            }
        }
    });
    addr
}

fn encode_name(name: &str) -> Vec<u8> {
    let mut out = Vec::new();
    for label in name.trim_end_matches('.').split('.') {
        out.push(label.len() as u8);
        out.extend_from_slice(label.as_bytes());
    }
    out.push(0);
    out
}

fn answer(q: &[u8], srv: &HashMap<String, Vec<(u16, String)>>, a: &HashMap<String, Ipv4Addr>) -> Option<Vec<u8>> {
    // the question: labels from offset 12, then type and class
    let mut pos = 12;
    let mut labels = Vec::new();
    while *q.get(pos)? != 0 {
        let len = q[pos] as usize;
        labels.push(String::from_utf8_lossy(q.get(pos + 1..pos + 1 + len)?).to_lowercase());
        pos += 1 + len;
    }
    let qtype = u16::from_be_bytes([*q.get(pos + 1)?, *q.get(pos + 2)?]);
    let question_end = pos + 5;
    let name = format!("{}.", labels.join("."));
    let mut records: Vec<(u16, Vec<u8>)> = Vec::new();
    match qtype {
        33 => {
            for (i, (port, target)) in srv.get(&name).into_iter().flatten().enumerate() {
                let mut rdata = vec![0, 10, 0, (10 + i) as u8];
                rdata.extend_from_slice(&port.to_be_bytes());
                rdata.extend_from_slice(&encode_name(target));
                records.push((33, rdata));
            }
        }
        1 => records.extend(a.get(&name).map(|ip| (1, ip.octets().to_vec()))),
        _ => {}
    }
    let known = srv.contains_key(&name) || a.contains_key(&name);
    let mut m = q.get(..question_end)?.to_vec();
    m[2] = 0x81;
    m[3] = if known { 0x80 } else { 0x83 };
    m[6..8].copy_from_slice(&(records.len() as u16).to_be_bytes());
    m[8..12].copy_from_slice(&[0, 0, 0, 0]);
    for (t, rdata) in records {
        m.extend_from_slice(&[0xC0, 12]);
        m.extend_from_slice(&t.to_be_bytes());
        m.extend_from_slice(&[0, 1, 0, 0, 0, 60]);
        m.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
        m.extend_from_slice(&rdata);
    }
    Some(m)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn srv_records_give_three_new_members_their_initial_cluster() {
    let tmp = tempfile::tempdir().unwrap();
    let ms = members_named(tmp.path(), &["infra0", "infra1", "infra2"]);
    // `--discovery-srv-name prod`: _etcd-server-prod._tcp; no https records (NXDOMAIN)
    let records: Vec<(u16, String)> = ms.iter().map(|m| (m.peer_port, "localhost.".to_string())).collect();
    let dns = start_dns(
        HashMap::from([("_etcd-server-prod._tcp.etcd.test.".to_string(), records)]),
        HashMap::from([("localhost.".to_string(), Ipv4Addr::LOCALHOST)]),
    );
    let env = [("ETCD_RS_TEST_DNS_SERVER", dns.to_string())];
    let args: Vec<String> = ["--discovery-srv", "etcd.test", "--discovery-srv-name", "prod", "--initial-cluster-token", "srv-token"]
        .map(String::from)
        .into();
    let _procs: Vec<Proc> = ms.iter().map(|m| spawn(m, &args, &env)).collect();
    let mut kv = tokio::time::timeout(Duration::from_secs(40), ms[0].ready_client()).await.expect("ready");
    put(&mut kv, "from", "srv").await.unwrap();
    // each member names the others "0", "1" (etcd's placeholders) until they publish their names
    let list = published(&ms[2], &["infra0", "infra1", "infra2"]).await;
    // the peer URLs are the records' targets, and the IDs etcd computes from them
    for (pb, m) in list.iter().zip(&ms) {
        let url = format!("http://localhost:{}", m.peer_port);
        assert_eq!(pb.peer_ur_ls, vec![url.clone()]);
        assert_eq!(pb.id, etcd_server::ids::member_id(&[url], "srv-token", None));
    }
    assert!(ms[1].log_shows("got bootstrap from DNS for etcd-server"), "{}", ms[1].log());

    // a member whose advertised address is in no record refuses to start, as etcd
    let outsider = members_named(tmp.path(), &["outsider"]).remove(0);
    let mut p = spawn(&outsider, &args, &env);
    let (code, log) = wait_exit(&mut p, &outsider);
    assert_ne!(code, Some(0));
    assert!(log.contains(r#"cannot find local etcd member "outsider" in SRV records"#), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_members_bootstrap_through_v3_discovery_keys_and_a_fourth_finds_the_cluster_full() {
    let tmp = tempfile::tempdir().unwrap();
    // the discovery service: a one-member etcd-rs cluster holding the size key
    let mut registry = Member::new(&tmp.path().join("registry.etcd"), &[]);
    registry.name = "registry".into();
    registry.start();
    let mut reg_kv = registry.ready_client().await;
    put(&mut reg_kv, "/_etcd/registry/tok-3/_config/size", "3").await.unwrap();
    let endpoint = format!("127.0.0.1:{}", registry.client_port);
    let args: Vec<String> = ["--discovery-endpoints", &endpoint, "--discovery-token", "tok-3"].map(String::from).into();

    let ms = members_named(tmp.path(), &["d0", "d1", "d2"]);
    let _procs: Vec<Proc> = ms.iter().map(|m| spawn(m, &args, &[])).collect();
    let mut kv = tokio::time::timeout(Duration::from_secs(40), ms[2].ready_client()).await.expect("ready");
    put(&mut kv, "via", "discovery").await.unwrap();
    let list = published(&ms[0], &["d0", "d1", "d2"]).await;
    // etcd's key layout: one key per member, its hex ID, value name=peerURL; the IDs are
    // computed with the discovery token as the cluster token
    let prefix = b"/_etcd/registry/tok-3/members/".to_vec();
    let mut end = prefix.clone();
    *end.last_mut().unwrap() += 1;
    let got = reg_kv.range(RangeRequest { key: prefix, range_end: end, ..Default::default() }).await.unwrap().into_inner();
    let mut registered: Vec<(String, String)> =
        got.kvs.iter().map(|kv| (String::from_utf8_lossy(&kv.key).into_owned(), String::from_utf8_lossy(&kv.value).into_owned())).collect();
    registered.sort();
    let mut want: Vec<(String, String)> = list
        .iter()
        .map(|m| {
            let url = m.peer_ur_ls[0].clone();
            assert_eq!(m.id, etcd_server::ids::member_id(&[url.clone()], "tok-3", None));
            (format!("/_etcd/registry/tok-3/members/{:x}", m.id), format!("{}={url}", m.name))
        })
        .collect();
    want.sort();
    assert_eq!(registered, want);

    // a fourth member: the first three registrations form the cluster
    let late = members_named(tmp.path(), &["d3"]).remove(0);
    let mut p = spawn(&late, &args, &[]);
    let (code, log) = wait_exit(&mut p, &late);
    assert_ne!(code, Some(0));
    assert!(log.contains("failed to join discovery cluster (discovery: cluster is full)"), "{log}");

    // no size key: etcd's error, at once
    let lost = members_named(tmp.path(), &["lost"]).remove(0);
    let no_size: Vec<String> = ["--discovery-endpoints", &endpoint, "--discovery-token", "no-such-token"].map(String::from).into();
    let mut p = spawn(&lost, &no_size, &[]);
    let (_, log) = wait_exit(&mut p, &lost);
    assert!(log.contains("failed to join discovery cluster (discovery: size key not found)"), "{log}");
}

/// A gRPC channel to the https registry presenting `name`'s certificate (at most 20 s).
async fn tls_channel(m: &Member, pki: &common::pki::Pki, name: &str) -> Channel {
    let (cert, key) = pki.files(name);
    let dialer = etcd_raft::PeerDialer::new(None, Some(pki.client_config(Some((&cert, &key)), b"h2")));
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(ch) = dialer.connect(&m.endpoint(), Duration::from_secs(1)).await {
            let probe = RangeRequest { key: b"probe".to_vec(), serializable: true, ..Default::default() };
            if etcd_proto::etcdserverpb::kv_client::KvClient::new(ch.clone()).range(probe).await.is_ok() {
                return ch;
            }
        }
        assert!(std::time::Instant::now() < deadline, "the registry did not answer over TLS; log:\n{}", m.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v3_discovery_dials_an_https_registry_with_the_discovery_certificates() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = common::pki::Pki::new(tmp.path());
    let (server_cert, server_key) = pki.issue("registry", "registry", &["127.0.0.1"], true);
    let (client_cert, client_key) = pki.issue("joiner", "joiner", &[], false);
    let ca = pki.ca_file();
    // the discovery service serves https only and wants a client certificate from our CA
    let tls_flags = ["--cert-file", &server_cert, "--key-file", &server_key, "--trusted-ca-file", &ca, "--client-cert-auth"];
    let mut registry = Member::new(&tmp.path().join("registry.etcd"), &tls_flags);
    registry.name = "registry".into();
    registry.client_scheme = "https";
    registry.start();
    let ch = tls_channel(&registry, &pki, "joiner").await;
    let mut reg_kv = etcd_proto::etcdserverpb::kv_client::KvClient::new(ch);
    put(&mut reg_kv, "/_etcd/registry/tok-tls/_config/size", "1").await.unwrap();

    // an endpoint without a scheme is dialled with TLS once TLS flags are given
    let endpoint = format!("127.0.0.1:{}", registry.client_port);
    let args: Vec<String> = [
        "--discovery-endpoints", &endpoint, "--discovery-token", "tok-tls",
        "--discovery-cert", &client_cert, "--discovery-key", &client_key, "--discovery-cacert", &ca,
    ]
    .map(String::from)
    .into();
    let m = members_named(tmp.path(), &["t0"]).remove(0);
    let _p = spawn(&m, &args, &[]);
    let mut kv = tokio::time::timeout(Duration::from_secs(40), m.ready_client()).await.expect("ready");
    put(&mut kv, "via", "tls discovery").await.unwrap();
    let list = published(&m, &["t0"]).await;
    let key = format!("/_etcd/registry/tok-tls/members/{:x}", list[0].id);
    let got = reg_kv.range(RangeRequest { key: key.into_bytes(), ..Default::default() }).await.unwrap().into_inner();
    assert_eq!(got.kvs.len(), 1, "t0 did not register in the https registry");

    // without its client certificate the registry refuses the member, which keeps retrying
    let refused = members_named(tmp.path(), &["t1"]).remove(0);
    let https = format!("https://127.0.0.1:{}", registry.client_port);
    let no_cert: Vec<String> =
        ["--discovery-endpoints", &https, "--discovery-token", "tok-tls", "--discovery-cacert", &ca].map(String::from).into();
    let _p1 = spawn(&refused, &no_cert, &[]);
    assert!(refused.log_shows("retry connecting to discovery service"), "{}", refused.log());

    // a certificate without its key: etcd's error at start
    let half = members_named(tmp.path(), &["t2"]).remove(0);
    let bad: Vec<String> =
        ["--discovery-endpoints", &endpoint, "--discovery-token", "tok-tls", "--discovery-cert", &client_cert].map(String::from).into();
    let mut p2 = spawn(&half, &bad, &[]);
    let (code, log) = wait_exit(&mut p2, &half);
    assert_ne!(code, Some(0));
    assert!(log.contains("KeyFile and CertFile must both be present[key: , cert: "), "{log}");
}
