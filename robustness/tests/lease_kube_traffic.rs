//! The lease and Kubernetes-like traffics against one real member (no faults): the recorded
//! history must pass every check. Runs against $ETCD_RS_BIN (skipped with a printed reason when
//! unset); set it to /usr/bin/etcd to run the same traffic against etcd.

use etcd_robustness::client::EtcdClient;
use etcd_robustness::history::{FinalRead, Request, Response};
use etcd_robustness::linearizability::CheckOptions;
use etcd_robustness::recorder::{watch_all, Recorder};
use etcd_robustness::report::check_history;
use etcd_robustness::traffic::requests::send;
use etcd_robustness::traffic::{by_name, stop_signal, ClientContext};
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

struct Member(Child, std::path::PathBuf);

impl Drop for Member {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
        let _ = std::fs::remove_dir_all(&self.1);
    }
}

/// A linearizable read of every key, retried while the member comes up.
async fn read_all(client: &EtcdClient) -> FinalRead {
    let all = Request::List {
        start: String::new(),
        end: String::new(),
        limit: 0,
        revision: 0,
        count_only: false,
    };
    for _ in 0..50 {
        if let Ok(Response::Range { revision, kvs, .. }) = send(client, &all).await {
            return FinalRead { revision, kvs };
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("the member did not answer a read of every key");
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn start_member(binary: &str, tag: &str) -> (Member, String) {
    let (client, peer) = (free_port(), free_port());
    let dir = std::env::temp_dir().join(format!("rob-lease-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let client_url = format!("http://127.0.0.1:{client}");
    let peer_url = format!("http://127.0.0.1:{peer}");
    let child = Command::new(binary)
        .args(["--name", "m0", "--data-dir"])
        .arg(dir.join("data"))
        .args(["--listen-client-urls", &client_url])
        .args(["--advertise-client-urls", &client_url])
        .args(["--listen-peer-urls", &peer_url])
        .args(["--initial-advertise-peer-urls", &peer_url])
        .args(["--initial-cluster", &format!("m0={peer_url}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("the member starts");
    (Member(child, dir), client_url)
}

async fn run_traffic(names: &[&str], seconds: u64, tag: &str) -> Option<String> {
    let Ok(binary) = std::env::var("ETCD_RS_BIN") else {
        eprintln!("skipped: ETCD_RS_BIN is not set");
        return None;
    };
    let (_member, url) = start_member(&binary, tag);
    let endpoints = Arc::new(vec![url]);
    let recorder = Recorder::new();
    let probe = EtcdClient::new(endpoints.clone(), 0).expect("a client");
    let initial = read_all(&probe).await.revision;
    let (watch_stop_tx, watch_stop) = tokio::sync::watch::channel(None);
    let watcher = tokio::spawn(watch_all(
        recorder.clone(),
        0,
        endpoints.clone(),
        watch_stop,
    ));
    let (stop, stop_rx) = stop_signal();
    let mut clients = Vec::new();
    let mut id = 1;
    for name in names {
        let traffic = by_name(name).expect("a known traffic");
        for _ in 0..3 {
            let ctx = ClientContext {
                id,
                client: EtcdClient::new(endpoints.clone(), 0).expect("a client"),
                recorder: recorder.clone(),
                rng: fastrand::Rng::with_seed(u64::from(id)),
                stop: stop_rx.clone(),
                pace: Duration::from_millis(10),
            };
            clients.push(tokio::spawn(traffic.run(ctx)));
            id += 1;
        }
    }
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    stop.stop();
    for c in clients {
        let _ = c.await;
    }
    let last = read_all(&probe).await;
    let _ = watch_stop_tx.send(Some(last.revision));
    let _ = tokio::time::timeout(Duration::from_secs(10), watcher).await;
    let history = recorder.history(Some(last), initial);
    let started = std::time::Instant::now();
    let report = check_history(&history, CheckOptions::default());
    let summary = format!(
        "{}checked in {:.2}s\n",
        report.summary(),
        started.elapsed().as_secs_f64()
    );
    eprintln!("{summary}");
    let out = std::env::temp_dir().join(format!("rob-lease-report-{tag}"));
    let _ = report.write_to(&out, &history);
    assert!(report.passed(), "{summary}report in {}", out.display());
    Some(summary)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_traffic_with_expiries_and_revokes_passes_the_checks() {
    run_traffic(&["lease", "lease-revoke"], 12, "lease").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_traffic_with_paged_lists_watches_and_compaction_passes_the_checks() {
    run_traffic(&["kube", "kube-compact-watch"], 14, "kube").await;
}
