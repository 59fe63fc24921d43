//! `--quota-backend-bytes`: a write past the quota raises the NOSPACE alarm, which caps the
//! store until an operator frees space (compaction, defragment) and disarms it.

mod common;

use common::{http_get, put, single_member, Member};
use etcd_proto::etcdserverpb::alarm_request::AlarmAction;
use etcd_proto::etcdserverpb::maintenance_client::MaintenanceClient;
use etcd_proto::etcdserverpb::{
    AlarmMember, AlarmRequest, AlarmType, CompactionRequest, DefragmentRequest, DeleteRangeRequest, PutRequest,
    StatusRequest, StatusResponse,
};
use tonic::transport::Channel;

fn health(m: &Member) -> (u16, String) {
    http_get(m, "/health")
}

async fn alarms(mt: &mut MaintenanceClient<Channel>) -> Vec<AlarmMember> {
    let get = AlarmRequest { action: AlarmAction::Get as i32, ..Default::default() };
    mt.alarm(get).await.unwrap().into_inner().alarms
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_past_the_quota_raises_nospace_until_space_is_freed_and_the_alarm_disarmed() {
    let (_dir, mut m, mut kv) = single_member(&["--quota-backend-bytes", "2000000"]).await;
    let mut mt = MaintenanceClient::new(Channel::from_shared(m.endpoint()).unwrap().connect().await.unwrap());
    let member_id = mt.status(StatusRequest {}).await.unwrap().into_inner().header.unwrap().member_id;

    let value = vec![b'v'; 200_000];
    let mut refused = None;
    for i in 0..40 {
        let req = PutRequest { key: format!("big{i}").into_bytes(), value: value.clone(), ..Default::default() };
        if let Err(e) = kv.put(req).await {
            refused = Some(e);
            break;
        }
    }
    let e = refused.expect("2 MB quota never reached with 8 MB of values");
    assert_eq!(e.code(), tonic::Code::ResourceExhausted);
    assert_eq!(e.message(), "etcdserver: mvcc: database space exceeded");
    let raised = AlarmMember { member_id, alarm: AlarmType::Nospace as i32 };
    assert_eq!(alarms(&mut mt).await, [raised]);
    let st = mt.status(StatusRequest {}).await.unwrap().into_inner();
    assert_eq!(st.errors, [format!("memberID:{member_id} alarm:NOSPACE ")]);
    // as etcd's http.Error: the JSON and a newline
    assert_eq!(health(&m), (503, "{\"health\":\"false\",\"reason\":\"ALARM NOSPACE\"}\n".to_string()));

    // The alarm survives a restart; even a small put is refused while it is raised.
    m.stop();
    m.start();
    let mut kv = m.ready_client().await;
    let mut mt = MaintenanceClient::new(Channel::from_shared(m.endpoint()).unwrap().connect().await.unwrap());
    assert_eq!(alarms(&mut mt).await, [raised]);
    assert_eq!(put(&mut kv, "small", "1").await.unwrap_err().code(), tonic::Code::ResourceExhausted);

    // Free space: delete, compact, defragment; then disarm, and writes go on.
    let del = kv.delete_range(DeleteRangeRequest { key: b"big".to_vec(), range_end: b"bih".to_vec(), ..Default::default() });
    let rev = del.await.unwrap().into_inner().header.unwrap().revision;
    kv.compact(CompactionRequest { revision: rev, physical: true }).await.unwrap();
    mt.defragment(DefragmentRequest {}).await.unwrap();
    let size = mt.status(StatusRequest {}).await.unwrap().into_inner().db_size;
    assert!(size < 1_000_000, "db is {size} bytes after defragment");
    let disarm = AlarmRequest { action: AlarmAction::Deactivate as i32, member_id, alarm: AlarmType::Nospace as i32 };
    assert_eq!(mt.alarm(disarm).await.unwrap().into_inner().alarms, [raised]);
    assert!(mt.alarm(disarm).await.unwrap().into_inner().alarms.is_empty(), "a second disarm finds nothing");
    assert!(alarms(&mut mt).await.is_empty());
    assert_eq!(health(&m).0, 200);
    put(&mut kv, "small", "1").await.unwrap();
}

/// Status, once it satisfies `settled` (within 10 s: the figures move at backend commits).
async fn status_once(mt: &mut MaintenanceClient<Channel>, settled: impl Fn(&StatusResponse) -> bool, what: &str) -> StatusResponse {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let st = mt.status(StatusRequest {}).await.unwrap().into_inner();
        if settled(&st) {
            return st;
        }
        assert!(std::time::Instant::now() < deadline, "status never showed {what}: {st:?}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

fn gauge(metrics: &str, series: &str) -> Option<i64> {
    metrics.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// etcd's TestCtlV3Alarm: a quota of 13 pages (53248 bytes) takes a small put and then 4 KiB
/// puts until the data outgrows it (etcd 3.4.23 takes 3, 3.5.1 takes 4); compaction and
/// defragment make room again, and after the disarm a put goes in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_13_page_quota_takes_puts_until_the_data_outgrows_it_and_room_comes_back_with_defragment() {
    const QUOTA: i64 = 13 * 4096;
    let (_dir, m, mut kv) = single_member(&["--quota-backend-bytes", &QUOTA.to_string()]).await;
    let mut mt = MaintenanceClient::new(Channel::from_shared(m.endpoint()).unwrap().connect().await.unwrap());
    let st = mt.status(StatusRequest {}).await.unwrap().into_inner();
    let member_id = st.header.unwrap().member_id;
    assert_eq!(st.db_size_quota, QUOTA);
    assert!(st.db_size < QUOTA / 2, "an empty member's db_size is {} bytes", st.db_size);
    assert!(st.db_size_in_use <= st.db_size);

    put(&mut kv, "1st_test", &"a".repeat(64)).await.unwrap();
    let big = "b".repeat(4096);
    let mut accepted = 0;
    let refused = loop {
        match put(&mut kv, "2nd_test", &big).await {
            Ok(_) => accepted += 1,
            Err(e) => break e,
        }
        assert!(accepted <= 13, "13 pages took {accepted} values of a page each");
    };
    assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
    assert_eq!(refused.message(), "etcdserver: mvcc: database space exceeded");
    // etcd-rs counts at least every row's bytes against the quota at once (pages a commit
    // later), so however fast the puts come, no more than 12 fit: 12 * (4096 + 8 + 256) < 53248
    assert!((2..=12).contains(&accepted), "a 13-page quota took {accepted} puts of 4 KiB");
    let raised = AlarmMember { member_id, alarm: AlarmType::Nospace as i32 };
    assert_eq!(alarms(&mut mt).await, [raised]);
    assert_eq!(health(&m).0, 503);
    assert_eq!(put(&mut kv, "3rd_test", "a").await.unwrap_err().code(), tonic::Code::ResourceExhausted);

    // the figures follow the data: once the member has committed (it does when idle) and
    // measured, every revision of the value holds its own 8 KiB leaf, and the refused put did
    // not fit (its cost is 4096 + 8 + etcd's 256 bytes of overhead)
    let full = status_once(&mut mt, |st| st.db_size >= accepted * 8192, "each value in its own 8 KiB page").await;
    assert!(full.db_size + 4096 + 8 + 256 >= QUOTA, "refused at db_size {}", full.db_size);
    assert!(full.db_size_in_use <= full.db_size);

    let rev = full.header.unwrap().revision;
    kv.compact(CompactionRequest { revision: rev, physical: true }).await.unwrap();
    mt.defragment(DefragmentRequest {}).await.unwrap();
    let st = mt.status(StatusRequest {}).await.unwrap().into_inner();
    assert!(st.db_size < full.db_size, "db_size {} -> {} after compaction and defragment", full.db_size, st.db_size);
    assert!(st.db_size + 256 + 8 + 64 < QUOTA, "no room after defragment: {}", st.db_size);
    let (_, metrics) = http_get(&m, "/metrics");
    assert_eq!(gauge(&metrics, "etcd_mvcc_db_total_size_in_bytes"), Some(st.db_size));
    assert_eq!(gauge(&metrics, "etcd_mvcc_db_total_size_in_use_in_bytes"), Some(st.db_size_in_use));

    let disarm = AlarmRequest { action: AlarmAction::Deactivate as i32, member_id, alarm: AlarmType::Nospace as i32 };
    assert_eq!(mt.alarm(disarm).await.unwrap().into_inner().alarms, [raised]);
    put(&mut kv, "4th_test", &"a".repeat(64)).await.unwrap();
}
