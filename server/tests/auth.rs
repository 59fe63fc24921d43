//! Authentication and authorization end to end: users, roles, tokens, enforcement, restart.

mod common;

use std::time::{Duration, Instant};

use common::{single_member, Member};
use etcd_proto::authpb::{permission::Type as PermType, Permission};
use etcd_proto::etcdserverpb::auth_client::AuthClient;
use etcd_proto::etcdserverpb::cluster_client::ClusterClient;
use etcd_proto::etcdserverpb::kv_client::KvClient;
use etcd_proto::etcdserverpb::{
    AuthDisableRequest, AuthEnableRequest, AuthRoleAddRequest, AuthRoleGrantPermissionRequest,
    AuthUserAddRequest, AuthUserGrantRoleRequest, AuthenticateRequest, MemberAddRequest, MemberListRequest, MemberListResponse, MemberPromoteRequest,
    MemberRemoveRequest, MemberUpdateRequest, PutRequest, RangeRequest,
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

/// Adds root (root role) and alice (no role) with passwords "rootpw" / "alicepw", enables auth,
/// and returns their tokens.
async fn enable_with_root_and_alice(auth: &mut AuthClient<Channel>) -> (String, String) {
    for (name, pw) in [("root", "rootpw"), ("alice", "alicepw")] {
        auth.user_add(AuthUserAddRequest { name: name.into(), password: pw.into(), ..Default::default() }).await.unwrap();
    }
    auth.user_grant_role(AuthUserGrantRoleRequest { user: "root".into(), role: "root".into() }).await.unwrap();
    auth.auth_enable(AuthEnableRequest {}).await.unwrap();
    (login(auth, "root", "rootpw").await.unwrap(), login(auth, "alice", "alicepw").await.unwrap())
}

fn learner_add() -> MemberAddRequest {
    MemberAddRequest { peer_ur_ls: vec!["http://127.0.0.1:1".into()], is_learner: true }
}

/// etcd's checkMembershipOperationPermission: with auth enabled, member add / remove / update /
/// promote need the root role, checked before proposing (nothing changes for a refused user);
/// listing stays open; with auth disabled anyone may change membership.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn membership_changes_need_the_root_role_when_auth_is_enabled() {
    let (_dir, m, _kv) = single_member(&["--bcrypt-cost", "4"]).await;
    let ch = channel(&m).await;
    let mut cluster = ClusterClient::new(ch.clone());

    // auth off: no user needed (another URL: a member ID mixes in the URLs and the second)
    let other = MemberAddRequest { peer_ur_ls: vec!["http://127.0.0.1:3".into()], is_learner: true };
    let id = cluster.member_add(other).await.unwrap().into_inner().member.unwrap().id;
    cluster.member_remove(MemberRemoveRequest { id }).await.unwrap();

    let (root, alice) = enable_with_root_and_alice(&mut AuthClient::new(ch.clone())).await;
    let denied = (Code::PermissionDenied, "etcdserver: permission denied");
    let e = cluster.member_add(with_token(learner_add(), &alice)).await.unwrap_err();
    assert_eq!((e.code(), e.message()), denied);
    let e = cluster.member_add(learner_add()).await.unwrap_err();
    assert_eq!((e.code(), e.message()), (Code::InvalidArgument, "etcdserver: user name is empty"));
    let e = cluster.member_add(with_token(learner_add(), "bogus.1")).await.unwrap_err();
    assert_eq!((e.code(), e.message()), (Code::Unauthenticated, "etcdserver: invalid auth token"));
    // a bad URL is reported before the permission check, as etcd's MemberAdd parses it first
    let bad = MemberAddRequest { peer_ur_ls: vec!["bad url".into()], is_learner: true };
    let e = cluster.member_add(with_token(bad, &alice)).await.unwrap_err();
    assert_eq!(e.message(), "etcdserver: given member URLs are invalid");

    let added = cluster.member_add(with_token(learner_add(), &root)).await.expect("root adds a learner").into_inner();
    let id = added.member.unwrap().id;
    let update = || MemberUpdateRequest { id, peer_ur_ls: vec!["http://127.0.0.1:2".into()] };
    let e = cluster.member_update(with_token(update(), &alice)).await.unwrap_err();
    assert_eq!((e.code(), e.message()), denied);
    let e = cluster.member_promote(with_token(MemberPromoteRequest { id }, &alice)).await.unwrap_err();
    assert_eq!((e.code(), e.message()), denied);
    let e = cluster.member_remove(with_token(MemberRemoveRequest { id }, &alice)).await.unwrap_err();
    assert_eq!((e.code(), e.message()), denied);
    let list = |r: MemberListResponse| r.members.into_iter().map(|m| (m.id, m.peer_ur_ls)).collect::<Vec<_>>();
    let members = list(cluster.member_list(with_token(MemberListRequest::default(), &alice)).await.expect("alice lists").into_inner());
    assert!(members.contains(&(id, vec!["http://127.0.0.1:1".to_string()])), "refused changes changed nothing: {members:?}");

    cluster.member_update(with_token(update(), &root)).await.expect("root updates");
    // root passes the permission check; the learner (never started) is not ready
    let e = cluster.member_promote(with_token(MemberPromoteRequest { id }, &root)).await.unwrap_err();
    assert_eq!(e.message(), "etcdserver: can only promote a learner member which is in sync with leader");
    cluster.member_remove(with_token(MemberRemoveRequest { id }, &root)).await.expect("root removes");
}

/// etcd's TestCtlV3AuthTestCacheReload: simple tokens are member-local, so after a restart (by
/// SIGINT) a token held from before is "invalid auth token" (Unauthenticated), the error Go
/// clients re-authenticate on; logging in again works, and the member logs the lines tools
/// wait for on every start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_held_across_a_restart_is_an_invalid_auth_token_and_a_new_login_works() {
    let (_dir, mut m, mut kv) = single_member(&["--bcrypt-cost", "4"]).await;
    let (_root, alice) = enable_with_root_and_alice(&mut AuthClient::new(channel(&m).await)).await;
    let e = kv.range(with_token(get_req("k"), &alice)).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "alice's token works before the restart");

    let interrupted = std::process::Command::new("kill").args(["-INT", &m.pid().to_string()]).status().unwrap();
    assert!(interrupted.success());
    assert!(m.wait_exit(Duration::from_secs(15)).is_some(), "etcd-rs did not stop on SIGINT; log:\n{}", m.log());
    let log_before = m.log().len();
    m.start();
    let mut kv = KvClient::new(wait_channel(&m).await);
    let deadline = Instant::now() + Duration::from_secs(20);
    let e = loop {
        match kv.range(with_token(get_req("k"), &alice)).await {
            Err(e) if e.code() == Code::Unavailable && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            other => break other.unwrap_err(),
        }
    };
    assert_eq!((e.code(), e.message()), (Code::Unauthenticated, "etcdserver: invalid auth token"));
    let alice2 = login(&mut AuthClient::new(channel(&m).await), "alice", "alicepw").await.unwrap();
    assert_eq!(kv.range(with_token(get_req("k"), &alice2)).await.unwrap_err().code(), Code::PermissionDenied);
    let restart_log = &m.log()[log_before..];
    for line in ["enabled capabilities for version", "published local member to cluster"] {
        assert!(restart_log.contains(line), "no {line:?} after the restart:\n{restart_log}");
    }
}
