//! Watch guarantees against a real etcd-rs process, under concurrent puts, deletes, txns and
//! compactions: ordered, unique, reliable (no gaps), atomic, resumable, bookmarkable, prev_kv,
//! filters; and a consumer that stops reading never blocks writes and gets everything later.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use common::Member;
use etcd_proto::etcdserverpb::kv_client::KvClient;
use etcd_proto::etcdserverpb::watch_client::WatchClient;
use etcd_proto::etcdserverpb::watch_create_request::FilterType;
use etcd_proto::etcdserverpb::watch_request::RequestUnion;
use etcd_proto::etcdserverpb::{
    request_op, CompactionRequest, DeleteRangeRequest, PutRequest, RequestOp, TxnRequest, WatchCancelRequest,
    WatchCreateRequest, WatchProgressRequest, WatchRequest, WatchResponse,
};
use etcd_proto::mvccpb::event::EventType;
use etcd_proto::mvccpb::Event;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::Streaming;

const PREFIX: &str = "g/";

struct Stream {
    tx: mpsc::Sender<WatchRequest>,
    rx: Streaming<WatchResponse>,
}

async fn open(ch: &Channel) -> Stream {
    let (tx, rx) = mpsc::channel(16);
    let resp = WatchClient::new(ch.clone()).watch(ReceiverStream::new(rx)).await.expect("watch stream");
    Stream { tx, rx: resp.into_inner() }
}

impl Stream {
    async fn send(&self, u: RequestUnion) {
        self.tx.send(WatchRequest { request_union: Some(u) }).await.expect("send watch request");
    }

    async fn create(&mut self, c: WatchCreateRequest) -> i64 {
        self.send(RequestUnion::CreateRequest(c)).await;
        let r = self.next().await;
        assert!(r.created && !r.canceled, "create answered {r:?}");
        r.watch_id
    }

    async fn next(&mut self) -> WatchResponse {
        match tokio::time::timeout(Duration::from_secs(20), self.rx.message()).await {
            Ok(Ok(Some(r))) => r,
            other => panic!("no watch response: {other:?}"),
        }
    }
}

fn prefix_watch(start: i64) -> WatchCreateRequest {
    WatchCreateRequest {
        key: PREFIX.as_bytes().to_vec(),
        range_end: b"g0".to_vec(),
        start_revision: start,
        prev_kv: true,
        ..Default::default()
    }
}

fn rev_of(e: &Event) -> i64 {
    e.kv.as_ref().map(|k| k.mod_revision).unwrap_or(0)
}

fn key_of(e: &Event) -> String {
    String::from_utf8_lossy(&e.kv.as_ref().map(|k| k.key.clone()).unwrap_or_default()).into_owned()
}

/// Writes puts, deletes and two-key txns under the prefix, compacting now and then far behind;
/// returns the last revision written.
async fn write_load(ch: Channel, writer: usize, rounds: usize, compact_below: i64) -> i64 {
    let mut kv = KvClient::new(ch);
    let mut last = 0;
    for n in 0..rounds {
        let k = format!("{PREFIX}{writer}/{}", n % 7);
        let rev = match n % 4 {
            0 | 1 => kv.put(PutRequest { key: k.into_bytes(), value: format!("v{n}").into_bytes(), ..Default::default() }).await,
            2 => {
                let op = |key: String, v: String| RequestOp {
                    request: Some(request_op::Request::RequestPut(PutRequest {
                        key: key.into_bytes(),
                        value: v.into_bytes(),
                        ..Default::default()
                    })),
                };
                let txn = TxnRequest {
                    success: vec![op(format!("{PREFIX}{writer}/t{}", n % 5), format!("a{n}")), op(format!("{PREFIX}{writer}/u{}", n % 5), format!("b{n}"))],
                    ..Default::default()
                };
                kv.txn(txn).await.map(|r| r.map(|t| etcd_proto::etcdserverpb::PutResponse { header: t.header, prev_kv: None }))
            }
            _ => kv
                .delete_range(DeleteRangeRequest { key: k.into_bytes(), ..Default::default() })
                .await
                .map(|r| r.map(|d| etcd_proto::etcdserverpb::PutResponse { header: d.header, prev_kv: None })),
        }
        .expect("write");
        last = rev.into_inner().header.map(|h| h.revision).unwrap_or(last);
        if writer == 0 && n % 50 == 49 {
            // compactions run concurrently, below every watcher's start
            let at = (compact_below * (n as i64 + 1) / rounds as i64).max(1);
            let _ = kv.compact(CompactionRequest { revision: at, physical: false }).await;
        }
    }
    last
}

/// Reads responses until an event at `until` or later arrived; returns them all.
async fn collect_until(s: &mut Stream, until: i64) -> Vec<WatchResponse> {
    let mut out = Vec::new();
    loop {
        let r = s.next().await;
        let done = r.events.iter().any(|e| rev_of(e) >= until);
        out.push(r);
        if done {
            return out;
        }
    }
}

/// Checks ordered, unique, no gaps (every revision in range is seen: all writes are under the
/// prefix), atomic (a revision never spans two responses), and prev_kv against the history.
fn check_stream(resps: &[WatchResponse], from: i64, to: i64) -> Vec<Event> {
    let mut events = Vec::new();
    let mut revision_response: HashMap<i64, usize> = HashMap::new();
    for (i, r) in resps.iter().enumerate() {
        for e in &r.events {
            if let Some(prev) = revision_response.insert(rev_of(e), i) {
                assert_eq!(prev, i, "revision {} split across responses", rev_of(e));
            }
            events.push(e.clone());
        }
    }
    let mut seen = Vec::new();
    for w in events.windows(2) {
        let (a, b) = (&w[0], &w[1]);
        assert!(
            (rev_of(a), key_of(a)) < (rev_of(b), key_of(b)),
            "events out of order or repeated: {} {} then {} {}",
            rev_of(a),
            key_of(a),
            rev_of(b),
            key_of(b)
        );
    }
    for e in &events {
        if seen.last() != Some(&rev_of(e)) {
            seen.push(rev_of(e));
        }
    }
    let want: Vec<i64> = (from..=to).collect();
    let got: Vec<i64> = seen.iter().copied().filter(|r| *r >= from && *r <= to).collect();
    assert_eq!(got, want, "a gap in the revisions");
    // prev_kv: the key's previous state in this same stream (once the stream has seen the key)
    let mut state: BTreeMap<String, Option<etcd_proto::mvccpb::KeyValue>> = BTreeMap::new();
    for e in &events {
        let k = key_of(e);
        if let Some(before) = state.get(&k) {
            assert_eq!(&e.prev_kv, before, "prev_kv of {k} at {}", rev_of(e));
        }
        let kv = e.kv.clone().expect("event kv");
        if e.r#type == EventType::Put as i32 {
            if kv.create_revision == kv.mod_revision {
                assert_eq!(e.prev_kv, None, "a create has no prev_kv");
            }
            state.insert(k, Some(kv));
        } else {
            state.insert(k, None);
        }
    }
    events
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn watch_guarantees_hold_under_concurrent_writes_deletes_txns_and_compactions() {
    let dir = tempfile::tempdir().unwrap();
    let mut m = Member::new(&dir.path().join("m0.etcd"), &[]);
    m.start();
    m.ready_client().await;
    let ch = Channel::from_shared(m.endpoint()).unwrap().connect().await.unwrap();
    let mut kv = KvClient::new(ch.clone());
    for i in 0..200 {
        common::put(&mut kv, &format!("h/{}", i % 10), "history").await.unwrap();
    }
    let start = common::put(&mut kv, "g/start", "x").await.unwrap();

    let mut full = open(&ch).await;
    full.create(prefix_watch(start)).await;
    let mut noput = open(&ch).await;
    noput.create(WatchCreateRequest { filters: vec![FilterType::Noput as i32], ..prefix_watch(start) }).await;
    let mut nodel = open(&ch).await;
    nodel.create(WatchCreateRequest { filters: vec![FilterType::Nodelete as i32], ..prefix_watch(start) }).await;
    let mut bookmarks = open(&ch).await;
    bookmarks.create(prefix_watch(start)).await;

    let writers: Vec<_> = (0..4).map(|w| tokio::spawn(write_load(ch.clone(), w, 300, start - 1))).collect();

    // a watcher that stops half way and resumes from its last revision + 1
    let mut first = open(&ch).await;
    let id = first.create(prefix_watch(start)).await;
    let mut resumed_events = Vec::new();
    let mut last = start;
    while last < start + 200 {
        let r = first.next().await;
        for e in &r.events {
            last = rev_of(e);
        }
        resumed_events.extend(r.events);
    }
    first.send(RequestUnion::CancelRequest(WatchCancelRequest { watch_id: id })).await;
    let mut second = open(&ch).await;
    second.create(prefix_watch(last + 1)).await;

    // bookmarks: progress requests while the load runs
    let mut progress_seen = Vec::new();
    let mut bookmark_resps = Vec::new();
    let mut max_event = 0;
    for _ in 0..20 {
        bookmarks.send(RequestUnion::ProgressRequest(WatchProgressRequest {})).await;
        loop {
            let r = bookmarks.next().await;
            if r.watch_id == -1 {
                let at = r.header.as_ref().unwrap().revision;
                assert!(at >= max_event, "progress at {at} overtook an event at {max_event}");
                progress_seen.push((at, bookmark_resps.len()));
                break;
            }
            for e in &r.events {
                max_event = rev_of(e);
            }
            bookmark_resps.push(r);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let mut end = 0;
    for w in writers {
        end = end.max(w.await.unwrap());
    }
    let resps = collect_until(&mut full, end).await;
    let all = check_stream(&resps, start, end);

    // resumable: what the second watcher gets continues the first exactly
    let resps2 = collect_until(&mut second, end).await;
    resumed_events.extend(resps2.into_iter().flat_map(|r| r.events));
    assert_eq!(resumed_events, all, "resumed watch differs from the uninterrupted one");

    // bookmarkable: after progress at R, no event <= R arrives; everything <= R came before it
    // (the progress loop may already have seen the last event when the writers were quick)
    if max_event < end {
        bookmark_resps.extend(collect_until(&mut bookmarks, end).await);
    }
    for (at, count) in &progress_seen {
        let before: usize = bookmark_resps[..*count].iter().map(|r| r.events.len()).sum();
        let want = all.iter().filter(|e| rev_of(e) <= *at).count();
        assert_eq!(before, want, "progress at {at} not preceded by exactly the events <= {at}");
    }
    assert!(!progress_seen.is_empty());

    // filters
    let dels: Vec<Event> = all.iter().filter(|e| e.r#type == EventType::Delete as i32).cloned().collect();
    let puts: Vec<Event> = all.iter().filter(|e| e.r#type == EventType::Put as i32).cloned().collect();
    let last_del = dels.last().map(rev_of).unwrap();
    let got_dels: Vec<Event> = collect_until(&mut noput, last_del).await.into_iter().flat_map(|r| r.events).collect();
    assert_eq!(got_dels, dels, "NOPUT watcher");
    let last_put = puts.last().map(rev_of).unwrap();
    let got_puts: Vec<Event> = collect_until(&mut nodel, last_put).await.into_iter().flat_map(|r| r.events).collect();
    assert_eq!(got_puts, puts, "NODELETE watcher");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn watches_at_the_compact_revision_and_in_the_future_see_exactly_their_events() {
    let dir = tempfile::tempdir().unwrap();
    let mut m = Member::new(&dir.path().join("m0.etcd"), &[]);
    m.start();
    let mut kv = m.ready_client().await;
    let ch = Channel::from_shared(m.endpoint()).unwrap().connect().await.unwrap();
    common::put(&mut kv, "c", "1").await.unwrap();
    let del = kv.delete_range(DeleteRangeRequest { key: b"c".to_vec(), ..Default::default() }).await.unwrap();
    let del_rev = del.into_inner().header.unwrap().revision;
    kv.compact(CompactionRequest { revision: del_rev, physical: true }).await.unwrap();

    // at the compact revision: the delete there is still delivered
    let mut s = open(&ch).await;
    s.create(WatchCreateRequest { key: b"c".to_vec(), start_revision: del_rev, ..Default::default() }).await;
    let r = s.next().await;
    assert_eq!(r.events.len(), 1);
    assert_eq!((r.events[0].r#type, rev_of(&r.events[0])), (EventType::Delete as i32, del_rev));

    // below it: cancelled with the compact revision
    s.create(WatchCreateRequest { key: b"c".to_vec(), start_revision: del_rev - 1, ..Default::default() }).await;
    let r = s.next().await;
    assert!(r.canceled);
    assert_eq!(r.compact_revision, del_rev);

    // a future revision: nothing older arrives, the first event is at that revision
    let future = del_rev + 3;
    s.create(WatchCreateRequest { key: b"f".to_vec(), start_revision: future, ..Default::default() }).await;
    for i in 0..5 {
        common::put(&mut kv, "f", &i.to_string()).await.unwrap();
    }
    let r = s.next().await;
    assert_eq!(r.events.iter().map(rev_of).collect::<Vec<_>>(), vec![future]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stalled_consumer_never_blocks_writes_and_gets_every_event_when_it_reads_again() {
    let dir = tempfile::tempdir().unwrap();
    let mut m = Member::new(&dir.path().join("m0.etcd"), &[]);
    m.start();
    let mut kv = m.ready_client().await;
    common::put(&mut kv, "s/0", "x").await.unwrap();
    // a separate connection: its HTTP/2 windows fill while nobody reads
    let stalled_ch = Channel::from_shared(m.endpoint()).unwrap().connect().await.unwrap();
    let mut stalled = open(&stalled_ch).await;
    stalled.create(WatchCreateRequest { key: b"s/".to_vec(), range_end: b"s0".to_vec(), ..Default::default() }).await;
    let pid = m.pid();
    let value = "v".repeat(16 * 1024);

    // baseline: the same load with no watcher behind (backend caches, WAL buffers)
    let rss_start = rss_kib(pid);
    for n in 0..3000 {
        common::put(&mut kv, &format!("b/{}", n % 10), &value).await.unwrap();
    }
    let baseline = rss_kib(pid).saturating_sub(rss_start);
    let start = common::put(&mut kv, "s/0", "y").await.unwrap();
    let rss_before = rss_kib(pid);

    // ~48 MiB of events while the watcher does not read
    let mut writers = Vec::new();
    for w in 0..4 {
        let mut kv = kv.clone();
        let value = value.clone();
        writers.push(tokio::spawn(async move {
            let mut last = 0;
            for n in 0..750 {
                last = common::put(&mut kv, &format!("s/{w}/{}", n % 10), &value).await.expect("write while a watcher stalls");
            }
            last
        }));
    }
    let mut end = 0;
    for w in writers {
        end = end.max(tokio::time::timeout(Duration::from_secs(120), w).await.expect("writes stalled").unwrap());
    }
    let rss_after = rss_kib(pid);
    let grown = rss_after.saturating_sub(rss_before);
    assert!(
        grown < baseline + 32 * 1024,
        "server memory grew by {grown} KiB while writing ~48 MiB to a stalled watcher (baseline {baseline} KiB)"
    );

    // reading again: every event, in order, once
    let resps = collect_until(&mut stalled, end).await;
    let revs: Vec<i64> = resps.iter().flat_map(|r| r.events.iter().map(rev_of)).collect();
    assert_eq!(revs, (start..=end).collect::<Vec<_>>());

    // stalled again while history is compacted: cancelled with the compact revision
    let mut stalled2 = open(&stalled_ch).await;
    stalled2.create(WatchCreateRequest { key: b"s/".to_vec(), range_end: b"s0".to_vec(), ..Default::default() }).await;
    let mut last = end;
    for n in 0..600 {
        last = common::put(&mut kv, &format!("s/x/{}", n % 10), &value).await.unwrap();
    }
    kv.compact(CompactionRequest { revision: last, physical: false }).await.unwrap();
    let mut got = Vec::new();
    loop {
        let r = stalled2.next().await;
        got.extend(r.events.iter().map(rev_of));
        if r.canceled {
            assert_eq!(r.compact_revision, last);
            break;
        }
        assert!(got.last().copied().unwrap_or(0) < last, "all events arrived: the watcher never fell behind");
    }
    // whatever arrived before the cancel is a gap-free prefix
    assert_eq!(got, ((end + 1)..(end + 1 + got.len() as i64)).collect::<Vec<_>>());
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}
