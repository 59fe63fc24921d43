//! Decodes REAL etcd peer traffic with the rafthttp codec: three etcd members (3.5.1, then
//! 3.4.23) advertise peer URLs that point at recording proxies, a client writes keys, and every
//! stream frame and pipeline body they exchanged must decode, with terms and indexes that make
//! a consistent raft log.

mod etcd_peer;

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use etcd_peer::*;
use etcd_raft::eraftpb::{Message, MessageType};
use etcd_raft::rafthttp::codec::{
    decode_message, is_link_heartbeat, MessageDecoder, MsgAppV2Decoder, StreamDecoder,
};

const KEYS: usize = 30;

struct Decoded {
    /// index -> (term, data) of every entry seen in any MsgApp; the same index in the same
    /// term must carry the same data wherever it was seen (raft's log matching).
    log: BTreeMap<(u64, u64), Vec<u8>>,
    by_type: HashMap<&'static str, usize>,
    short_form_apps: usize,
    stream_kinds: HashMap<String, usize>,
    server_versions: Vec<String>,
    min_cluster_versions: Vec<String>,
}

fn type_name(m: &Message) -> &'static str {
    match m.get_msg_type() {
        MessageType::MsgAppend => "MsgApp",
        MessageType::MsgAppendResponse => "MsgAppResp",
        MessageType::MsgHeartbeat if is_link_heartbeat(m) => "linkHeartbeat",
        MessageType::MsgHeartbeat => "MsgHeartbeat",
        MessageType::MsgHeartbeatResponse => "MsgHeartbeatResp",
        MessageType::MsgRequestVote => "MsgVote",
        MessageType::MsgRequestVoteResponse => "MsgVoteResp",
        MessageType::MsgRequestPreVote => "MsgPreVote",
        MessageType::MsgRequestPreVoteResponse => "MsgPreVoteResp",
        MessageType::MsgSnapshot => "MsgSnap",
        MessageType::MsgReadIndex => "MsgReadIndex",
        MessageType::MsgReadIndexResp => "MsgReadIndexResp",
        MessageType::MsgPropose => "MsgProp",
        MessageType::MsgTimeoutNow => "MsgTimeoutNow",
        _ => "other",
    }
}

/// Checks one MsgApp's own consistency and adds its entries to the shared log.
fn check_append(m: &Message, log: &mut BTreeMap<(u64, u64), Vec<u8>>) {
    assert!(m.log_term <= m.term, "log term {} above term {}", m.log_term, m.term);
    let mut prev_term = m.log_term;
    for (i, e) in m.entries.iter().enumerate() {
        assert_eq!(e.index, m.index + 1 + i as u64, "entries of a MsgApp are consecutive after its index");
        assert!(e.term >= prev_term && e.term <= m.term, "entry terms rise and stay within the message term");
        prev_term = e.term;
        let data = e.data.to_vec();
        if let Some(seen) = log.insert((e.index, e.term), data.clone()) {
            assert_eq!(seen, data, "entry {} term {} differs between streams", e.index, e.term);
        }
    }
}

fn decode_capture(conns: &[(Vec<u8>, Vec<u8>)], d: &mut Decoded) {
    for (req, resp) in exchanges(conns) {
        let from_hdr = req.header("X-Server-From").map(str::to_string);
        // /raft/probing comes from etcd's prober (github.com/xiang90/probing): a bare GET every
        // 4 s per peer, with none of rafthttp's headers
        if req.path.starts_with("/raft") && req.path != "/raft/probing" {
            // every other raft request carries the cluster and version headers etcd checks
            assert!(req.header("X-Etcd-Cluster-ID").is_some(), "{} without X-Etcd-Cluster-ID", req.path);
            d.server_versions.push(req.header("X-Server-Version").expect("X-Server-Version").to_string());
            d.min_cluster_versions.push(req.header("X-Min-Cluster-Version").expect("X-Min-Cluster-Version").to_string());
            assert!(req.header("X-PeerURLs").is_some_and(|u| u.starts_with("http://127.0.0.1:")));
            assert!(from_hdr.is_some(), "{} without X-Server-From", req.path);
        }
        if let Some(rest) = req.path.strip_prefix("/raft/stream/") {
            let (kind, from) = rest.split_once('/').expect("stream path names its type and sender");
            assert_eq!(req.method, "GET");
            let reader = parse_id(from);
            assert_eq!(from_hdr.as_deref().map(parse_id), Some(reader), "path sender is X-Server-From");
            let writer = parse_id(req.header("X-Raft-To").expect("stream request names X-Raft-To"));
            let Some(resp) = resp else { continue };
            *d.stream_kinds.entry(format!("{kind} {}", resp.status)).or_default() += 1;
            if resp.status != 200 {
                continue;
            }
            let mut dec = match kind {
                "msgapp" => StreamDecoder::MsgAppV2(MsgAppV2Decoder::new(reader, writer)),
                "message" => StreamDecoder::Message(MessageDecoder::default()),
                other => panic!("unknown stream type {other}"),
            };
            let mut body = resp.body.clone();
            let mut used = 0;
            let mut last_app_term = 0;
            loop {
                let r = dec.decode(&body[used..]).unwrap_or_else(|e| panic!("{kind} stream {writer:x}->{reader:x}: {e}"));
                let Some((m, n)) = r else { break };
                let short = kind == "msgapp" && body[used] == 1;
                used += n;
                *d.by_type.entry(type_name(&m)).or_default() += 1;
                if is_link_heartbeat(&m) {
                    continue;
                }
                assert_eq!((m.from, m.to), (writer, reader), "a stream carries messages from its writer to its reader");
                if m.get_msg_type() == MessageType::MsgAppend {
                    assert!(m.term >= last_app_term, "a leader's appends never go back in term");
                    last_app_term = m.term;
                    check_append(&m, &mut d.log);
                    d.short_form_apps += short as usize;
                } else {
                    assert_ne!(kind, "msgapp", "msgappv2 carries only MsgApp");
                }
            }
            // only a stream still open when the capture was taken may end inside a frame
            body.drain(..used);
            assert!(body.is_empty() || !resp.complete, "{} bytes of a closed stream left undecoded", body.len());
        } else if req.path == "/raft" {
            assert_eq!(req.method, "POST");
            let m = decode_message(&req.body).expect("pipeline body is one raft message");
            *d.by_type.entry(type_name(&m)).or_default() += 1;
            *d.stream_kinds.entry("pipeline".into()).or_default() += 1;
            if m.get_msg_type() == MessageType::MsgAppend {
                check_append(&m, &mut d.log);
            }
            if let Some(resp) = resp {
                assert_eq!(resp.status, 204, "a pipeline POST is answered 204");
            }
        }
    }
}

async fn capture(bin: &str, ctl: &str) -> Decoded {
    let dir = tempfile::tempdir().unwrap();
    let names = ["m0", "m1", "m2"];
    let peer_ports: Vec<u16> = names.iter().map(|_| free_port()).collect();
    let mut proxies = Vec::new();
    for &p in &peer_ports {
        proxies.push(RecordingProxy::start(free_port(), ([127, 0, 0, 1], p).into()).await);
    }
    let cluster = names.iter().zip(&proxies).map(|(n, p)| format!("{n}=http://127.0.0.1:{}", p.port)).collect::<Vec<_>>().join(",");
    let mut members: Vec<Etcd> = names.iter().enumerate().map(|(i, n)| {
        Etcd::start(bin, dir.path(), n, peer_ports[i], &format!("http://127.0.0.1:{}", proxies[i].port), &cluster, &[])
    }).collect();
    let endpoints = members.iter().map(|m| m.endpoint()).collect::<Vec<_>>().join(",");
    let ctl2 = ctl.to_string();
    let eps = endpoints.clone();
    tokio::task::spawn_blocking(move || {
        for i in 0..KEYS {
            put_until_ok(&ctl2, &eps, &format!("capture-key-{i}"), &format!("value-{i}"), Duration::from_secs(20));
        }
    }).await.unwrap();
    // a few idle heartbeats and link heartbeats (every 5s/3) pass, then the capture is taken
    tokio::time::sleep(Duration::from_secs(2)).await;
    let conns: Vec<_> = proxies.iter().flat_map(|p| p.snapshot()).collect();
    for m in &mut members {
        m.kill();
    }
    let mut d = Decoded {
        log: BTreeMap::new(),
        by_type: HashMap::new(),
        short_form_apps: 0,
        stream_kinds: HashMap::new(),
        server_versions: Vec::new(),
        min_cluster_versions: Vec::new(),
    };
    decode_capture(&conns, &mut d);
    eprintln!("{bin}: streams {:?}; messages {:?}; short-form appends {}; entries {}; X-Server-Version {:?}; X-Min-Cluster-Version {:?}",
        d.stream_kinds, d.by_type, d.short_form_apps, d.log.len(),
        dedup(&d.server_versions), dedup(&d.min_cluster_versions));
    d
}

fn dedup(v: &[String]) -> Vec<String> {
    let mut v = v.to_vec();
    v.sort();
    v.dedup();
    v
}

fn assert_full_traffic_decoded(d: &Decoded) {
    for i in 0..KEYS {
        let key = format!("capture-key-{i}");
        assert!(d.log.values().any(|data| data.windows(key.len()).any(|w| w == key.as_bytes())),
            "{key} was replicated but no decoded entry holds it");
    }
    assert!(d.short_form_apps > 0, "msgappv2 short-form (AppEntries) frames were seen and decoded");
    assert!(d.by_type.get("MsgHeartbeat").copied().unwrap_or(0) > 0, "raft heartbeats on the message stream");
    assert!(d.by_type.get("MsgAppResp").copied().unwrap_or(0) > 0, "append responses on the message stream");
    assert!(d.stream_kinds.get("msgapp 200").copied().unwrap_or(0) >= 2);
    assert!(d.stream_kinds.get("message 200").copied().unwrap_or(0) >= 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_3_5_peer_traffic_decodes_frame_by_frame() {
    if !installed(&[ETCD_35, ETCDCTL_35]) {
        return;
    }
    let d = capture(ETCD_35, ETCDCTL_35).await;
    assert_full_traffic_decoded(&d);
    assert!(d.server_versions.iter().all(|v| v == "3.5.1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_3_4_peer_traffic_decodes_frame_by_frame() {
    if !installed(&[ETCD_34, ETCDCTL_34]) {
        return;
    }
    let d = capture(ETCD_34, ETCDCTL_34).await;
    assert_full_traffic_decoded(&d);
    assert!(d.server_versions.iter().all(|v| v.starts_with("3.4.")));
}
