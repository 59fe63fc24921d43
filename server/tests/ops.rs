//! What a kubeadm-deployed etcd needs operationally: the metrics listener and its probes, the
//! gRPC health service, and the corruption checks (initial and periodic, the CORRUPT alarm).

mod common;

use std::time::{Duration, Instant};

use common::cluster::TestCluster;
use common::tamper::tamper_value;
use common::{free_port, http_get, put, single_member, wait_revision, Member};
use etcd_proto::etcdserverpb::alarm_request::AlarmAction;
use etcd_proto::etcdserverpb::kv_client::KvClient;
use etcd_proto::etcdserverpb::maintenance_client::MaintenanceClient;
use etcd_proto::etcdserverpb::request_op::Request as Op;
use etcd_proto::etcdserverpb::{
    AlarmMember, AlarmRequest, AlarmType, RangeRequest, RequestOp, StatusRequest, TxnRequest,
};
use etcd_proto::grpc_health_v1::health_check_response::ServingStatus;
use etcd_proto::grpc_health_v1::health_client::HealthClient;
use etcd_proto::grpc_health_v1::HealthCheckRequest;
use tonic::transport::Channel;

/// (status, headers, body) of a GET on 127.0.0.1:`port`.
fn get(port: u16, path: &str) -> (u16, String, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes()).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let code = out.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
    (code, head.to_ascii_lowercase(), body.to_string())
}

async fn channel(m: &Member) -> Channel {
    Channel::from_shared(m.endpoint()).unwrap().connect().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_listener_serves_metrics_and_the_probes_kubeadm_uses() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let mut m = Member::new(&dir.path().join("m.etcd"), &["--listen-metrics-urls", &url, "--metrics", "extensive"]);
    m.start();
    let mut kv = m.ready_client().await;
    put(&mut kv, "k", "v").await.unwrap();

    let (code, _, body) = get(port, "/metrics");
    assert_eq!(code, 200);
    assert!(body.contains("etcd_server_has_leader 1"), "{body}");
    // --metrics extensive: handling-time histograms of the calls made so far
    assert!(body.contains(r#"grpc_server_handling_seconds_count{grpc_method="Put",grpc_service="etcdserverpb.KV",grpc_type="unary"} 1"#), "{body}");

    let (code, head, body) = get(port, "/health?exclude=NOSPACE&serializable=true");
    assert_eq!((code, body.as_str()), (200, r#"{"health":"true","reason":""}"#));
    assert!(head.contains("content-type: text/plain; charset=utf-8"), "{head}");
    let (code, _, body) = get(port, "/livez");
    assert_eq!((code, body.as_str()), (200, "ok\n"));
    let (code, _, body) = get(port, "/readyz?verbose");
    assert_eq!(code, 200);
    assert_eq!(body, "[+]data_corruption ok\n[+]serializable_read ok\n[+]linearizable_read ok\nok\n");
    assert_eq!(get(port, "/livez/serializable_read").2, "ok\n");
    // the metrics listener serves nothing else
    let (code, _, body) = get(port, "/version");
    assert_eq!((code, body.as_str()), (404, "404 page not found\n"));
    // the client port serves the probes too
    assert_eq!(http_get(&m, "/readyz").1, "ok\n");

    // the health counters follow the probes
    let (_, _, body) = get(port, "/metrics");
    assert!(body.contains(r#"etcd_server_healthcheck{name="linearizable_read",type="readyz"} 1"#), "{body}");
    assert!(!body.contains("etcd_server_health_success 0"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_without_quorum_is_alive_but_not_healthy_or_ready() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut m = Member::new(&dir.path().join("a.etcd"), &["--listen-metrics-urls", &format!("http://127.0.0.1:{port}")]);
    m.name = "a".into();
    // b never starts: a has no leader, and never publishes (so its client port never serves)
    let peer = format!("http://127.0.0.1:{}", m.peer_port);
    m.initial_cluster = Some(format!("a={peer},b=http://127.0.0.1:{}", free_port()));
    m.start();
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "metrics listener not up; log:\n{}", m.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (code, head, body) = get(port, "/health");
    assert_eq!((code, body.as_str()), (503, "{\"health\":\"false\",\"reason\":\"RAFT NO LEADER\"}\n"));
    assert!(head.contains("x-content-type-options: nosniff"), "{head}");
    // serializable: a local read, no leader needed (etcd 3.5.3+)
    assert_eq!(get(port, "/health?serializable=true").0, 200);
    assert_eq!(get(port, "/livez?verbose").2, "[+]serializable_read ok\nok\n");
    assert_eq!(get(port, "/readyz?exclude=linearizable_read").0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_health_service_reports_the_server_serving() {
    let (_dir, m, _) = single_member(&[]).await;
    let mut h = HealthClient::new(channel(&m).await);
    let r = h.check(HealthCheckRequest { service: String::new() }).await.unwrap().into_inner();
    assert_eq!(r.status(), ServingStatus::Serving);
    let e = h.check(HealthCheckRequest { service: "etcdserverpb.KV".into() }).await.unwrap_err();
    assert_eq!((e.code(), e.message()), (tonic::Code::NotFound, "unknown service"));
    let mut w = h.watch(HealthCheckRequest { service: String::new() }).await.unwrap().into_inner();
    assert_eq!(w.message().await.unwrap().unwrap().status(), ServingStatus::Serving);
    let mut w = h.watch(HealthCheckRequest { service: "x".into() }).await.unwrap().into_inner();
    assert_eq!(w.message().await.unwrap().unwrap().status(), ServingStatus::ServiceUnknown);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_service_not_built_answers_unimplemented_naming_it() {
    let (_dir, m, _) = single_member(&[]).await;
    let mut grpc = tonic::client::Grpc::new(channel(&m).await);
    grpc.ready().await.unwrap();
    let codec = tonic_prost::ProstCodec::<RangeRequest, RangeRequest>::default();
    let path = axum::http::uri::PathAndQuery::from_static("/etcdserverpb.Nope/Foo");
    let e = grpc.unary(tonic::Request::new(RangeRequest::default()), path, codec).await.unwrap_err();
    assert_eq!((e.code(), e.message()), (tonic::Code::Unimplemented, "etcd-rs: etcdserverpb.Nope.Foo is not implemented yet"));
    // the services etcd-rs has still answer on the same connection
    let mut kv = KvClient::new(channel(&m).await);
    put(&mut kv, "k", "v").await.unwrap();
}

async fn alarms(m: &Member) -> Vec<AlarmMember> {
    let mut mt = MaintenanceClient::new(channel(m).await);
    let get = AlarmRequest { action: AlarmAction::Get as i32, ..Default::default() };
    mt.alarm(get).await.unwrap().into_inner().alarms
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tampered_member_is_refused_at_start_and_raises_corrupt_when_checked_periodically() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = TestCluster::start(dir.path(), 3, &["--experimental-corrupt-check-time", "1s"]).await;
    let leader = c.wait_leader(&[0, 1, 2]).await;
    let f = (leader + 1) % 3;
    let mut kv = c.members[leader].ready_client().await;
    let mut rev = 0;
    for i in 0..5 {
        rev = put(&mut kv, &format!("k{i}"), "v").await.unwrap();
    }
    wait_revision(&c.members[f], rev).await;

    // a healthy restart passes the initial check
    c.members[f].stop();
    c.members[f].extra.push("--experimental-initial-corrupt-check=true".into());
    c.members[f].start();
    c.members[f].ready_client().await;
    assert!(c.members[f].log().contains("initial corruption checking passed"), "{}", c.members[f].log());

    // one value changed behind raft's back: the initial check refuses to start
    c.members[f].stop();
    tamper_value(&c.members[f].data_dir, b"k1", b"tampered");
    c.members[f].start();
    let exit = c.members[f].wait_exit(Duration::from_secs(30));
    assert!(exit.is_some_and(|s| !s.success()), "member started with corrupt data; log:\n{}", c.members[f].log());
    assert!(c.members[f].log().contains("found data inconsistency with peers"), "{}", c.members[f].log());
    assert!(alarms(&c.members[leader]).await.is_empty(), "the initial check raises no alarm");

    // started without the initial check, the leader's periodic check finds it and raises CORRUPT
    c.members[f].extra.pop();
    c.members[f].start();
    let deadline = Instant::now() + Duration::from_secs(30);
    let corrupt = AlarmMember { member_id: 0, alarm: AlarmType::Corrupt as i32 };
    while alarms(&c.members[leader]).await != [corrupt] {
        assert!(Instant::now() < deadline, "no CORRUPT alarm; leader log:\n{}", c.members[leader].log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut mt = MaintenanceClient::new(channel(&c.members[leader]).await);
    let st = mt.status(StatusRequest {}).await.unwrap().into_inner();
    assert_eq!(st.errors, ["memberID:0 alarm:CORRUPT "]);

    // etcd's corrupt applier: writes refused, reads (and read-only txns) served
    let e = put(&mut kv, "k9", "v").await.unwrap_err();
    assert_eq!((e.code(), e.message()), (tonic::Code::DataLoss, "etcdserver: corrupt cluster"));
    kv.range(RangeRequest { key: b"k0".to_vec(), ..Default::default() }).await.unwrap();
    let ro = TxnRequest {
        success: vec![RequestOp { request: Some(Op::RequestRange(RangeRequest { key: b"k0".to_vec(), ..Default::default() })) }],
        ..Default::default()
    };
    kv.txn(ro).await.unwrap();
    let other = (leader + 2) % 3;
    let (code, body) = http_get(&c.members[other], "/health");
    assert_eq!((code, body.as_str()), (503, "{\"health\":\"false\",\"reason\":\"ALARM CORRUPT\"}\n"));
    let (code, body) = http_get(&c.members[other], "/readyz");
    assert_eq!(code, 503);
    assert!(body.starts_with("[-]data_corruption failed: alarm activated: CORRUPT\n"), "{body}");

    // disarmed, the cluster takes writes again (until the next check finds the mismatch again)
    let disarm = AlarmRequest { action: AlarmAction::Deactivate as i32, member_id: 0, alarm: AlarmType::Corrupt as i32 };
    mt.alarm(disarm).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match put(&mut kv, "k9", "v").await {
            Ok(_) => break,
            Err(e) => {
                assert_eq!(e.code(), tonic::Code::DataLoss);
                assert!(Instant::now() < deadline, "writes still refused after disarming");
            }
        }
    }
}

/// The server keeps transparent huge pages out of its process (see `disable_transparent_huge_pages`
/// in the binary): the kernel reports it in the process status.
#[tokio::test]
async fn the_server_process_runs_without_transparent_huge_pages() {
    let (_dir, m, _kv) = common::single_member(&[]).await;
    let status = std::fs::read_to_string(format!("/proc/{}/status", m.pid())).unwrap();
    // kernels before 6.x do not report the flag; nothing to check there
    if let Some(line) = status.lines().find(|l| l.starts_with("THP_enabled:")) {
        assert_eq!(line.split_whitespace().nth(1), Some("0"), "{line}");
    }
}
