//! `--quota-backend-bytes`: a write past the quota raises the NOSPACE alarm, which caps the
//! store until an operator frees space (compaction, defragment) and disarms it.

mod common;

use common::{http_get, put, single_member, Member};
use etcd_proto::etcdserverpb::alarm_request::AlarmAction;
use etcd_proto::etcdserverpb::maintenance_client::MaintenanceClient;
use etcd_proto::etcdserverpb::{
    AlarmMember, AlarmRequest, AlarmType, CompactionRequest, DefragmentRequest, DeleteRangeRequest, PutRequest,
    StatusRequest,
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
