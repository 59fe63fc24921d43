//! Authentication and authorization end to end: users, roles, tokens, enforcement, restart.

mod common;

use std::time::{Duration, Instant};

use common::{single_member, Member};
use etcd_proto::authpb::{permission::Type as PermType, Permission};
use etcd_proto::etcdserverpb::auth_client::AuthClient;
use etcd_proto::etcdserverpb::kv_client::KvClient;
use etcd_proto::etcdserverpb::{
    AuthDisableRequest, AuthEnableRequest, AuthRoleAddRequest, AuthRoleGrantPermissionRequest,
    AuthUserAddRequest, AuthUserGrantRoleRequest, AuthenticateRequest, PutRequest, RangeRequest,
};
use tonic::transport::Channel;
use tonic::{Code, Request};

/// `msg` as a request carrying `token` the way clientv3 sends it.
fn with_token<T>(msg: T, token: &str) -> Request<T> {
    let mut r = Request::new(msg);
    r.metadata_mut().insert("token", token.parse().unwrap());
    r
}

fn put_req(k: &str, v: &str) -> PutRequest {
    PutRequest { key: k.into(), value: v.into(), ..Default::default() }
}

fn get_req(k: &str) -> RangeRequest {
    RangeRequest { key: k.into(), ..Default::default() }
}

async fn login(auth: &mut AuthClient<Channel>, name: &str, password: &str) -> Result<String, tonic::Status> {
    let r = auth.authenticate(AuthenticateRequest { name: name.into(), password: password.into() }).await?;
    Ok(r.into_inner().token)
}

async fn channel(m: &Member) -> Channel {
    Channel::from_shared(m.endpoint()).unwrap().connect().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_prefix_role_reads_but_cannot_write_and_tokens_follow_the_auth_state() {
    let (_dir, mut m, mut kv) = single_member(&["--bcrypt-cost", "4"]).await;
    let mut auth = AuthClient::new(channel(&m).await);

    // Before auth is on, enabling needs root (etcd's error), and management is open.
    let e = auth.auth_enable(AuthEnableRequest {}).await.unwrap_err();
    assert_eq!((e.code(), e.message()), (Code::FailedPrecondition, "etcdserver: root user does not exist"));
    for (name, pw) in [("root", "rootpw"), ("alice", "alicepw")] {
        let add = AuthUserAddRequest { name: name.into(), password: pw.into(), ..Default::default() };
        auth.user_add(add).await.unwrap();
    }
    auth.user_grant_role(AuthUserGrantRoleRequest { user: "root".into(), role: "root".into() }).await.unwrap();
    auth.role_add(AuthRoleAddRequest { name: "readers".into() }).await.unwrap();
    let perm = Permission { perm_type: PermType::Read as i32, key: b"/data/".to_vec(), range_end: b"/data0".to_vec() };
    let grant = AuthRoleGrantPermissionRequest { name: "readers".into(), perm: Some(perm) };
    auth.role_grant_permission(grant).await.unwrap();
    auth.user_grant_role(AuthUserGrantRoleRequest { user: "alice".into(), role: "readers".into() }).await.unwrap();
    auth.auth_enable(AuthEnableRequest {}).await.unwrap();

    // No token: refused; a wrong password: refused; an unknown token: refused.
    let e = kv.put(put_req("/data/x", "1")).await.unwrap_err();
    assert_eq!((e.code(), e.message()), (Code::InvalidArgument, "etcdserver: user name is empty"));
    let e = login(&mut auth, "alice", "wrong").await.unwrap_err();
    assert_eq!(
        (e.code(), e.message()),
        (Code::InvalidArgument, "etcdserver: authentication failed, invalid user ID or password")
    );
    let e = kv.range(with_token(get_req("/data/x"), "notatoken.1")).await.unwrap_err();
    assert_eq!((e.code(), e.message()), (Code::Unauthenticated, "etcdserver: invalid auth token"));

    let root = login(&mut auth, "root", "rootpw").await.unwrap();
    kv.put(with_token(put_req("/data/x", "1"), &root)).await.unwrap();
    kv.put(with_token(put_req("/other", "o"), &root)).await.unwrap();

    // alice reads under /data/ with one token across calls, and writes nowhere.
    let alice = login(&mut auth, "alice", "alicepw").await.unwrap();
    for _ in 0..3 {
        let r = kv.range(with_token(get_req("/data/x"), &alice)).await.unwrap().into_inner();
        assert_eq!(r.kvs[0].value, b"1");
    }
    let serializable = RangeRequest { serializable: true, ..get_req("/data/x") };
    assert_eq!(kv.range(with_token(serializable, &alice)).await.unwrap().into_inner().kvs.len(), 1);
    let e = kv.put(with_token(put_req("/data/x", "2"), &alice)).await.unwrap_err();
    assert_eq!((e.code(), e.message()), (Code::PermissionDenied, "etcdserver: permission denied"));
    let e = kv.range(with_token(get_req("/other"), &alice)).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    let whole = RangeRequest { key: b"/".to_vec(), range_end: b"0".to_vec(), ..Default::default() };
    assert_eq!(kv.range(with_token(whole, &alice)).await.unwrap_err().code(), Code::PermissionDenied);
    let e = auth.auth_disable(with_token(AuthDisableRequest {}, &alice)).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);

    // After a restart auth is still on; tokens were member-local and are gone.
    m.stop();
    m.start();
    let mut auth = AuthClient::new(wait_channel(&m).await);
    let deadline = Instant::now() + Duration::from_secs(20);
    let alice2 = loop {
        match login(&mut auth, "alice", "alicepw").await {
            Ok(t) => break t,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("login after restart failed: {e}; log:\n{}", m.log()),
        }
    };
    let mut kv = KvClient::new(channel(&m).await);
    let e = kv.range(with_token(get_req("/data/x"), &alice)).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    assert_eq!(kv.range(with_token(get_req("/data/x"), &alice2)).await.unwrap().into_inner().kvs.len(), 1);
    let e = kv.put(put_req("/data/y", "1")).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);

    // Disabled again: requests without a token go through.
    let root = login(&mut auth, "root", "rootpw").await.unwrap();
    auth.auth_disable(with_token(AuthDisableRequest {}, &root)).await.unwrap();
    kv.put(put_req("/data/x", "3")).await.unwrap();
    let r = kv.range(get_req("/data/x")).await.unwrap().into_inner();
    assert_eq!(r.kvs[0].value, b"3");
    let e = login(&mut auth, "root", "rootpw").await.unwrap_err();
    assert_eq!((e.code(), e.message()), (Code::FailedPrecondition, "etcdserver: authentication is not enabled"));
}

/// A channel to `m` once it accepts connections (at most 20 s).
async fn wait_channel(m: &Member) -> Channel {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(ch) = Channel::from_shared(m.endpoint()).unwrap().connect().await {
            return ch;
        }
        assert!(Instant::now() < deadline, "etcd-rs did not listen in 20s; log:\n{}", m.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
