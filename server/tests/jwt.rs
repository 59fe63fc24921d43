//! JWT auth tokens (`--auth-token jwt,...`) end to end against a real `etcd-rs` process, with
//! ECDSA keys made at test time (rcgen): logins answer signed tokens, tokens survive restarts
//! (any member with the key verifies them), expire after their ttl, carry the auth revision,
//! and a member given only the public key verifies but cannot issue them.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::Member;
use etcd_proto::authpb::{permission::Type as PermType, Permission};
use etcd_proto::etcdserverpb::auth_client::AuthClient;
use etcd_proto::etcdserverpb::kv_client::KvClient;
use etcd_proto::etcdserverpb::{
    AuthEnableRequest, AuthRoleAddRequest, AuthRoleGrantPermissionRequest, AuthUserAddRequest,
    AuthUserGrantRoleRequest, AuthenticateRequest, PutRequest, RangeRequest,
};
use tonic::transport::Channel;
use tonic::{Code, Request};

fn with_token<T>(msg: T, token: &str) -> Request<T> {
    let mut r = Request::new(msg);
    r.metadata_mut().insert("token", token.parse().unwrap());
    r
}

fn put_req(k: &str, v: &str) -> PutRequest {
    PutRequest { key: k.into(), value: v.into(), ..Default::default() }
}

/// Writes an ECDSA P-256 key pair as PKCS#8 and SubjectPublicKeyInfo PEM files.
fn write_keys(dir: &Path) -> (String, String) {
    let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let (private, public) = (dir.join("jwt.key"), dir.join("jwt.pub"));
    std::fs::write(&private, kp.serialize_pem()).unwrap();
    std::fs::write(&public, kp.public_key_pem()).unwrap();
    (private.display().to_string(), public.display().to_string())
}

/// base64url (unpadded) as JWT segments use it.
fn b64url_decode(s: &str) -> Vec<u8> {
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let (mut out, mut acc, mut bits) = (Vec::new(), 0u32, 0);
    for c in s.bytes() {
        acc = (acc << 6) | A.iter().position(|&a| a == c).expect("base64url character") as u32;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out
}

/// A login once the member answers (at most 20 s): Ok(token) or the refusal.
async fn login(m: &Member, name: &str, password: &str) -> Result<String, tonic::Status> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(ch) = Channel::from_shared(m.endpoint()).unwrap().connect().await {
            let req = AuthenticateRequest { name: name.into(), password: password.into() };
            match AuthClient::new(ch).authenticate(req).await {
                Ok(r) => return Ok(r.into_inner().token),
                Err(e) if e.code() != Code::Unavailable => return Err(e),
                Err(_) => {}
            }
        }
        assert!(Instant::now() < deadline, "no login answer in 20s; log:\n{}", m.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn kv(m: &Member) -> KvClient<Channel> {
    KvClient::new(Channel::from_shared(m.endpoint()).unwrap().connect().await.unwrap())
}

fn jwt_flag(private: Option<&str>, public: &str, ttl: &str) -> String {
    let private = private.map(|p| format!(",priv-key={p}")).unwrap_or_default();
    format!("jwt,sign-method=ES256,pub-key={public}{private},ttl={ttl}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_tokens_sign_in_verify_after_restart_expire_and_follow_the_auth_revision() {
    let dir = tempfile::tempdir().unwrap();
    let (private, public) = write_keys(dir.path());
    let flags = |private: Option<&str>, ttl: &str| {
        vec!["--bcrypt-cost".to_string(), "4".to_string(), "--auth-token".to_string(), jwt_flag(private, &public, ttl)]
    };
    let mut m = Member::new(&dir.path().join("m.etcd"), &[]);
    m.extra = flags(Some(&private), "30s");
    m.start();
    let mut c = m.ready_client().await;
    let mut auth = AuthClient::new(Channel::from_shared(m.endpoint()).unwrap().connect().await.unwrap());
    auth.user_add(AuthUserAddRequest { name: "root".into(), password: "pw".into(), ..Default::default() }).await.unwrap();
    auth.user_grant_role(AuthUserGrantRoleRequest { user: "root".into(), role: "root".into() }).await.unwrap();
    auth.auth_enable(AuthEnableRequest {}).await.unwrap();

    // A login answers a JWT naming the user and the auth revision; it works for a put.
    let token = login(&m, "root", "pw").await.unwrap();
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3, "{token}");
    assert_eq!(b64url_decode(parts[0]), br#"{"alg":"ES256","typ":"JWT"}"#);
    let claims: serde_json::Value = serde_json::from_slice(&b64url_decode(parts[1])).unwrap();
    assert_eq!(claims["username"], "root");
    assert!(claims["revision"].as_u64().unwrap() >= 2, "{claims}");
    assert!(claims["exp"].as_i64().is_some(), "{claims}");
    c.put(with_token(put_req("k", "1"), &token)).await.unwrap();

    // A token with a changed signature is refused.
    let tampered = format!("{}.{}.{}", parts[0], parts[1], parts[2].chars().rev().collect::<String>());
    let e = c.put(with_token(put_req("k", "x"), &tampered)).await.unwrap_err();
    assert_eq!((e.code(), e.message()), (Code::Unauthenticated, "etcdserver: invalid auth token"));

    // The token outlives the member (simple tokens do not): after a restart it still writes.
    m.stop();
    m.start();
    login(&m, "root", "pw").await.unwrap();
    let mut c = kv(&m).await;
    c.put(with_token(put_req("k", "2"), &token)).await.expect("the token still verifies after a restart");

    // Given only the public key, the member verifies tokens but cannot issue them (etcd's
    // unmapped ErrVerifyOnly).
    m.stop();
    m.extra = flags(None, "30s");
    m.start();
    let e = login(&m, "root", "pw").await.unwrap_err();
    assert_eq!((e.code(), e.message()), (Code::Unknown, "auth: token signing attempted with verify-only key"));
    let mut c = kv(&m).await;
    c.put(with_token(put_req("k", "3"), &token)).await.expect("a verify-only member accepts the token");
    let e = login(&m, "root", "wrong").await.unwrap_err();
    assert_eq!(e.message(), "etcdserver: authentication failed, invalid user ID or password");

    // With a 2 s ttl a token works at once and is refused once its exp second has passed.
    m.stop();
    m.extra = flags(Some(&private), "2s");
    m.start();
    let short = login(&m, "root", "pw").await.unwrap();
    let issued = Instant::now();
    let mut c = kv(&m).await;
    c.put(with_token(put_req("k", "4"), &short)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(3500).saturating_sub(issued.elapsed())).await;
    let e = c.put(with_token(put_req("k", "5"), &short)).await.unwrap_err();
    assert_eq!((e.code(), e.message()), (Code::Unauthenticated, "etcdserver: invalid auth token"));
    let e = c.range(with_token(RangeRequest { key: b"k".to_vec(), ..Default::default() }, &short)).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);

    // A token issued before a permission change names an old auth revision: key access is
    // refused (etcd's ErrAuthOldRevision; clients log in again), while root-only management
    // is checked by user alone (as etcd). A new login works.
    let before = login(&m, "root", "pw").await.unwrap();
    let mut auth = AuthClient::new(Channel::from_shared(m.endpoint()).unwrap().connect().await.unwrap());
    auth.role_add(with_token(AuthRoleAddRequest { name: "r".into() }, &before)).await.unwrap();
    let e = c.put(with_token(put_req("k", "6"), &before)).await.unwrap_err();
    assert_eq!((e.code(), e.message()), (Code::InvalidArgument, "etcdserver: revision of auth store is old"));
    let e = c.range(with_token(RangeRequest { key: b"k".to_vec(), ..Default::default() }, &before)).await.unwrap_err();
    assert_eq!(e.message(), "etcdserver: revision of auth store is old");
    let perm = Permission { perm_type: PermType::Read as i32, key: b"a".to_vec(), range_end: vec![] };
    let grant = AuthRoleGrantPermissionRequest { name: "r".into(), perm: Some(perm) };
    auth.role_grant_permission(with_token(grant, &before)).await.expect("management does not check the token's revision");
    let after = login(&m, "root", "pw").await.unwrap();
    c.put(with_token(put_req("k", "7"), &after)).await.unwrap();
}

#[test]
fn bad_jwt_options_stop_the_member_with_etcds_errors() {
    let dir = tempfile::tempdir().unwrap();
    let (private, _) = write_keys(dir.path());
    let cases = [
        ("jwt,sign-method=ES256".to_string(), "auth: missing key data"),
        ("jwt,foo".to_string(), "auth: invalid auth options"),
        (format!("jwt,sign-method=XX256,priv-key={private}"), "auth: invalid auth signature method"),
        (format!("jwt,sign-method=ES256,priv-key={private},ttl=abc"), "time: invalid duration"),
        (format!("jwt,sign-method=RS256,priv-key={private}"), "sign method RS256 needs a different key"),
        (format!("jwt,sign-method=ES512,priv-key={private}"), "ES512 is not supported by etcd-rs"),
        ("bogus".to_string(), "unknown token type"),
    ];
    for (i, (opts, expected)) in cases.iter().enumerate() {
        let mut m = Member::new(&dir.path().join(format!("m{i}.etcd")), &["--auth-token", opts]);
        m.start();
        let status = m.wait_exit(Duration::from_secs(15)).unwrap_or_else(|| panic!("{opts}: still running"));
        assert!(!status.success(), "{opts}");
        assert!(m.log().contains(expected), "{opts}: expected {expected:?} in:\n{}", m.log());
    }
}
