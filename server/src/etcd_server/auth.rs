//! `EtcdServer`'s auth operations: who a request comes from (the `token` metadata), the auth
//! service's RPCs, and the root-only checks made outside apply.
//!
//! - A client's token (or, with `--client-cert-auth`, its certificate's CN) names a user; the
//!   request carries that user and the auth revision it was checked at in its raft header, and
//!   the applier decides (apply_auth.rs).
//! - Passwords are hashed here, before proposing (bcrypt salts are random; apply must not be);
//!   logins verify the password here, then propose the Authenticate entry with a fresh token
//!   prefix, so every member records the same token.
//! - Requests this member makes itself (lease expiry, auto-compaction) run as root, as etcd's.

use std::time::Duration;

use etcd_auth::{AuthInfo, ROOT_USER};
use tonic::metadata::MetadataMap;
use etcd_proto::etcdserverpb::{
    AuthDisableRequest, AuthDisableResponse, AuthEnableRequest, AuthEnableResponse, AuthRoleAddRequest,
    AuthRoleAddResponse, AuthRoleDeleteRequest, AuthRoleDeleteResponse, AuthRoleGetRequest, AuthRoleGetResponse,
    AuthRoleGrantPermissionRequest, AuthRoleGrantPermissionResponse, AuthRoleListRequest, AuthRoleListResponse,
    AuthRoleRevokePermissionRequest, AuthRoleRevokePermissionResponse, AuthStatusRequest, AuthStatusResponse,
    AuthUserAddRequest, AuthUserAddResponse, AuthUserChangePasswordRequest, AuthUserChangePasswordResponse,
    AuthUserDeleteRequest, AuthUserDeleteResponse, AuthUserGetRequest, AuthUserGetResponse,
    AuthUserGrantRoleRequest, AuthUserGrantRoleResponse, AuthUserListRequest, AuthUserListResponse,
    AuthUserRevokeRoleRequest, AuthUserRevokeRoleResponse, AuthenticateRequest, AuthenticateResponse,
    InternalAuthenticateRequest, InternalRaftRequest, RequestHeader,
};

use super::{unexpected, EtcdServer};
use crate::apply::ApplyResult;
use crate::apply_auth::AuthResult;
use crate::errors::ServerError;

/// Proposes `InternalRaftRequest { $field: Some($req) }` as `$ai` and unwraps the
/// `AuthResult::$variant` response with this member's header.
macro_rules! auth_call {
    ($self:ident, $ai:expr, $field:ident, $req:expr, $variant:ident) => {{
        let req = InternalRaftRequest { $field: Some($req), ..Default::default() };
        match $self.propose_auth(req, $ai).await? {
            (AuthResult::$variant(mut resp), revision) => {
                resp.header = Some($self.header(revision));
                Ok(resp)
            }
            (other, _) => Err(auth_unexpected(other)),
        }
    }};
}

/// Metadata keys clients put the token in (gRPC clients, the JSON gateway).
const TOKEN_KEYS: [&str; 2] = ["token", "authorization"];

/// The metadata grpc-gateway adds to the requests it relays.
const GATEWAY_KEY: &str = "grpcgateway-accept";

impl EtcdServer {
    pub fn auth_enabled(&self) -> bool {
        self.auth.is_enabled()
    }

    /// Who sent a request: the user its `token` metadata names, else (with
    /// `--client-cert-auth`) the common name of the client certificate its TLS connection was
    /// verified with (etcd's AuthInfoFromCtx, then AuthInfoFromTLS). Neither: the empty
    /// identity (refused wherever auth is needed).
    pub async fn auth_info(&self, md: &MetadataMap, ext: &tonic::Extensions) -> Result<AuthInfo, ServerError> {
        self.auth_info_as(md, crate::tls::client_cert_cn(ext).as_deref()).await
    }

    /// `auth_info` for a request whose connection's verified client certificate names
    /// `cert_cn`. A token wins over the certificate, and an invalid one is refused rather than
    /// falling back to it. A simple token this member does not know answers "invalid auth
    /// token", after waiting (bounded) for the entry that created it when it names an index not
    /// applied here yet; a JWT is checked by its signature and expiry and carries the auth
    /// revision it was issued at (older than the current one: "revision of auth store is old"
    /// where permissions are checked).
    pub async fn auth_info_as(&self, md: &MetadataMap, cert_cn: Option<&str>) -> Result<AuthInfo, ServerError> {
        let Some(value) = TOKEN_KEYS.iter().find_map(|k| md.get(*k)) else {
            return Ok(self.cert_auth_info(md, cert_cn));
        };
        let token = value.to_str().map_err(|_| ServerError::InvalidAuthToken)?;
        if self.auth.uses_simple_tokens() {
            let index = etcd_auth::token_index(token).ok_or(ServerError::InvalidAuthToken)?;
            if index > *self.applied_rx.borrow() && self.wait_applied_index(index).await.is_err() {
                return Err(ServerError::InvalidAuthToken);
            }
        }
        match self.auth.token_info(token) {
            Some(ai) => Ok(ai),
            None => {
                tracing::warn!(token, "invalid auth token");
                Err(ServerError::InvalidAuthToken)
            }
        }
    }

    /// etcd's AuthInfoFromTLS, consulted only with `--client-cert-auth`: the certificate's CN
    /// (empty when it has none) at the current auth revision. Requests relayed by a gRPC
    /// gateway (`grpcgateway-accept` metadata) never act as the gateway's certificate.
    fn cert_auth_info(&self, md: &MetadataMap, cert_cn: Option<&str>) -> AuthInfo {
        match cert_cn {
            Some(cn) if self.cfg.client_tls.client_cert_auth => {
                if md.contains_key(GATEWAY_KEY) {
                    tracing::warn!(common_name = cn, "ignoring common name in gRPC-gateway proxy request");
                    return AuthInfo::default();
                }
                AuthInfo { username: cn.to_string(), revision: self.auth.revision() }
            }
            _ => AuthInfo::default(),
        }
    }

    /// The raft header naming a request's sender; None is this member itself, acting as root
    /// while auth is on.
    pub(crate) fn auth_header(&self, auth: Option<&AuthInfo>) -> RequestHeader {
        match auth {
            Some(ai) => RequestHeader { id: 0, username: ai.username.clone(), auth_revision: ai.revision },
            None if self.auth.is_enabled() => {
                RequestHeader { id: 0, username: ROOT_USER.to_string(), auth_revision: self.auth.revision() }
            }
            None => RequestHeader::default(),
        }
    }

    /// `req` with its sender in the header.
    pub(crate) fn sent_by(&self, mut req: InternalRaftRequest, auth: Option<&AuthInfo>) -> InternalRaftRequest {
        req.header = Some(self.auth_header(auth));
        req
    }

    /// etcd's root check for the maintenance RPCs it restricts (Defragment, Snapshot, Hash,
    /// HashKV); etcd answers these unmapped (code Unknown, "auth: ...").
    pub fn check_admin(&self, ai: &AuthInfo) -> Result<(), ServerError> {
        self.auth.is_admin_permitted(ai).map_err(|e| ServerError::AuthUnmapped(e.to_string()))
    }

    /// etcd's checkMembershipOperationPermission, made before proposing a member add, remove,
    /// update or promote: with auth enabled the sender (token, else client-certificate CN) must
    /// hold the root role. Its errors are mapped (`etcdserver: user name is empty`,
    /// `... user name not found`, `... permission denied`); auth disabled lets anyone through.
    pub async fn check_membership_permission(&self, md: &MetadataMap, ext: &tonic::Extensions) -> Result<(), ServerError> {
        let ai = self.auth_info(md, ext).await?;
        Ok(self.auth.is_admin_permitted(&ai)?)
    }

    /// Read access to [key, range_end) (empty: the key alone).
    pub fn check_range_readable(&self, ai: &AuthInfo, key: &[u8], range_end: &[u8]) -> Result<(), ServerError> {
        Ok(self.auth.is_range_permitted(ai, key, range_end)?)
    }

    /// Read access to each of `keys` (a lease's keys shown by TimeToLive).
    pub fn check_keys_readable(&self, ai: &AuthInfo, keys: &[Vec<u8>]) -> Result<(), ServerError> {
        for k in keys {
            self.auth.is_range_permitted(ai, k, &[])?;
        }
        Ok(())
    }

    /// Proposes an auth request as `ai` and returns what its application produced.
    async fn propose_auth(&self, req: InternalRaftRequest, ai: &AuthInfo) -> Result<(AuthResult, i64), ServerError> {
        let applied = self.propose(self.sent_by(req, Some(ai))).await?;
        match applied.result? {
            ApplyResult::Auth(r) => Ok((r, applied.revision)),
            other => Err(unexpected(other)),
        }
    }

    async fn bcrypt(&self, password: String) -> Result<String, ServerError> {
        let cost = self.cfg.bcrypt_cost;
        let hashed = tokio::task::spawn_blocking(move || etcd_auth::hash_password(&password, cost))
            .await
            .map_err(|e| ServerError::Internal(format!("password hashing: {e}")))??;
        String::from_utf8(hashed).map_err(|e| ServerError::Internal(format!("password hashing: {e}")))
    }

    /// Checks the password, then proposes the login; retried when the auth state changed
    /// between the check and the entry's application (as etcd).
    pub async fn authenticate(&self, r: AuthenticateRequest) -> Result<AuthenticateResponse, ServerError> {
        self.linearizable_barrier().await?;
        for _ in 0..16 {
            let (hash, checked_at) = self.auth.login_hash(&r.name)?;
            let password = r.password.clone();
            let ok = tokio::task::spawn_blocking(move || etcd_auth::verify_password(&hash, &password))
                .await
                .map_err(|e| ServerError::Internal(format!("password check: {e}")))?;
            if !ok {
                tracing::info!(user = %r.name, "invalid password");
                return Err(ServerError::AuthFailed);
            }
            let req = InternalRaftRequest {
                authenticate: Some(InternalAuthenticateRequest {
                    name: r.name.clone(),
                    password: String::new(),
                    simple_token: etcd_auth::gen_token_prefix(),
                }),
                ..Default::default()
            };
            let (result, revision) = self.propose_auth(req, &AuthInfo::default()).await?;
            let AuthResult::Authenticate(mut resp) = result else { return Err(auth_unexpected(result)) };
            if checked_at == self.auth.revision() {
                // JWT: signed here, by the member answering, at the revision the password was checked
                if let Some(token) = self.auth.sign_token(&r.name, checked_at)? {
                    resp.token = token;
                }
                resp.header = Some(self.header(revision));
                return Ok(resp);
            }
            tracing::info!("revision when password checked became stale; retrying");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Err(ServerError::Timeout)
    }

    pub async fn user_add(&self, mut r: AuthUserAddRequest, ai: &AuthInfo) -> Result<AuthUserAddResponse, ServerError> {
        let no_password = r.options.is_some_and(|o| o.no_password);
        if !no_password && !r.name.is_empty() && r.hashed_password.is_empty() {
            r.hashed_password = self.bcrypt(std::mem::take(&mut r.password)).await?;
        }
        r.password.clear(); // never in the log
        auth_call!(self, ai, auth_user_add, r, UserAdd)
    }

    pub async fn user_change_password(
        &self,
        mut r: AuthUserChangePasswordRequest,
        ai: &AuthInfo,
    ) -> Result<AuthUserChangePasswordResponse, ServerError> {
        if r.hashed_password.is_empty() {
            r.hashed_password = self.bcrypt(std::mem::take(&mut r.password)).await?;
        }
        r.password.clear();
        auth_call!(self, ai, auth_user_change_password, r, UserChangePassword)
    }

    pub async fn auth_enable(&self, r: AuthEnableRequest, ai: &AuthInfo) -> Result<AuthEnableResponse, ServerError> {
        auth_call!(self, ai, auth_enable, r, Enable)
    }

    pub async fn auth_disable(&self, r: AuthDisableRequest, ai: &AuthInfo) -> Result<AuthDisableResponse, ServerError> {
        auth_call!(self, ai, auth_disable, r, Disable)
    }

    /// Through the log as etcd 3.5 does, once every member understands the request (3.5);
    /// below that, answered locally (see `auth_status_without_log`).
    pub async fn auth_status(&self, r: AuthStatusRequest, ai: &AuthInfo) -> Result<AuthStatusResponse, ServerError> {
        if !crate::cluster_version::understands_v3_5_requests(self.members.cluster_version().as_deref()) {
            return self.auth_status_without_log(ai).await;
        }
        auth_call!(self, ai, auth_status, r, Status)
    }

    pub async fn user_get(&self, r: AuthUserGetRequest, ai: &AuthInfo) -> Result<AuthUserGetResponse, ServerError> {
        auth_call!(self, ai, auth_user_get, r, UserGet)
    }

    pub async fn user_list(&self, r: AuthUserListRequest, ai: &AuthInfo) -> Result<AuthUserListResponse, ServerError> {
        auth_call!(self, ai, auth_user_list, r, UserList)
    }

    pub async fn user_delete(&self, r: AuthUserDeleteRequest, ai: &AuthInfo) -> Result<AuthUserDeleteResponse, ServerError> {
        auth_call!(self, ai, auth_user_delete, r, UserDelete)
    }

    pub async fn user_grant_role(&self, r: AuthUserGrantRoleRequest, ai: &AuthInfo) -> Result<AuthUserGrantRoleResponse, ServerError> {
        auth_call!(self, ai, auth_user_grant_role, r, UserGrantRole)
    }

    pub async fn user_revoke_role(&self, r: AuthUserRevokeRoleRequest, ai: &AuthInfo) -> Result<AuthUserRevokeRoleResponse, ServerError> {
        auth_call!(self, ai, auth_user_revoke_role, r, UserRevokeRole)
    }

    pub async fn role_add(&self, r: AuthRoleAddRequest, ai: &AuthInfo) -> Result<AuthRoleAddResponse, ServerError> {
        auth_call!(self, ai, auth_role_add, r, RoleAdd)
    }

    pub async fn role_get(&self, r: AuthRoleGetRequest, ai: &AuthInfo) -> Result<AuthRoleGetResponse, ServerError> {
        auth_call!(self, ai, auth_role_get, r, RoleGet)
    }

    pub async fn role_list(&self, r: AuthRoleListRequest, ai: &AuthInfo) -> Result<AuthRoleListResponse, ServerError> {
        auth_call!(self, ai, auth_role_list, r, RoleList)
    }

    pub async fn role_delete(&self, r: AuthRoleDeleteRequest, ai: &AuthInfo) -> Result<AuthRoleDeleteResponse, ServerError> {
        auth_call!(self, ai, auth_role_delete, r, RoleDelete)
    }

    pub async fn role_grant_permission(
        &self,
        r: AuthRoleGrantPermissionRequest,
        ai: &AuthInfo,
    ) -> Result<AuthRoleGrantPermissionResponse, ServerError> {
        auth_call!(self, ai, auth_role_grant_permission, r, RoleGrantPermission)
    }

    pub async fn role_revoke_permission(
        &self,
        r: AuthRoleRevokePermissionRequest,
        ai: &AuthInfo,
    ) -> Result<AuthRoleRevokePermissionResponse, ServerError> {
        auth_call!(self, ai, auth_role_revoke_permission, r, RoleRevokePermission)
    }
}


fn auth_unexpected(r: AuthResult) -> ServerError {
    ServerError::Internal(format!("applier answered an auth request with an unexpected result: {r:?}"))
}
