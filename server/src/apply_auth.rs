//! The auth layer of apply (etcd's authApplierV3): before a logged request runs, its header's
//! user and auth revision are checked against the replicated auth state; auth requests are
//! applied to the auth store in the batch's write transaction.
//!
//! Everything here reads only the entry and replicated state (users, roles, lease keys), so
//! every member accepts or refuses a request alike. With auth disabled the only cost is one
//! atomic load.

use etcd_auth::{AuthInfo, AuthStore};
use etcd_lease::Lessor;
use etcd_proto::etcdserverpb::{
    request_op, AuthDisableResponse, AuthEnableResponse, AuthRoleAddResponse, AuthRoleDeleteResponse,
    AuthRoleGetResponse, AuthRoleGrantPermissionResponse, AuthRoleListResponse, AuthRoleRevokePermissionResponse,
    AuthStatusResponse, AuthUserAddResponse, AuthUserChangePasswordResponse, AuthUserDeleteResponse,
    AuthUserGetResponse, AuthUserGrantRoleResponse, AuthUserListResponse, AuthUserRevokeRoleResponse,
    AuthenticateResponse, InternalRaftRequest, RequestOp, TxnRequest,
};

use crate::errors::ServerError;

/// What applying an auth request produced.
#[derive(Debug)]
pub enum AuthResult {
    Enable(AuthEnableResponse),
    Disable(AuthDisableResponse),
    Status(AuthStatusResponse),
    Authenticate(AuthenticateResponse),
    UserAdd(AuthUserAddResponse),
    UserDelete(AuthUserDeleteResponse),
    UserChangePassword(AuthUserChangePasswordResponse),
    UserGrantRole(AuthUserGrantRoleResponse),
    UserRevokeRole(AuthUserRevokeRoleResponse),
    UserGet(AuthUserGetResponse),
    UserList(AuthUserListResponse),
    RoleAdd(AuthRoleAddResponse),
    RoleDelete(AuthRoleDeleteResponse),
    RoleGet(AuthRoleGetResponse),
    RoleList(AuthRoleListResponse),
    RoleGrantPermission(AuthRoleGrantPermissionResponse),
    RoleRevokePermission(AuthRoleRevokePermissionResponse),
}

/// The sender as the entry names it.
pub(crate) fn header_auth(req: &InternalRaftRequest) -> AuthInfo {
    req.header
        .as_ref()
        .map(|h| AuthInfo { username: h.username.clone(), revision: h.auth_revision })
        .unwrap_or_default()
}

/// etcd's needAdminPermission (3.5: AuthStatus too).
fn needs_admin(r: &InternalRaftRequest) -> bool {
    r.auth_enable.is_some()
        || r.auth_disable.is_some()
        || r.auth_status.is_some()
        || r.auth_user_add.is_some()
        || r.auth_user_delete.is_some()
        || r.auth_user_change_password.is_some()
        || r.auth_user_grant_role.is_some()
        || r.auth_user_revoke_role.is_some()
        || r.auth_role_add.is_some()
        || r.auth_role_grant_permission.is_some()
        || r.auth_role_revoke_permission.is_some()
        || r.auth_role_delete.is_some()
        || r.auth_user_list.is_some()
        || r.auth_role_list.is_some()
}

/// Refuses a request its sender may not make. Compaction and lease grants need no permission
/// (as etcd 3.4 and 3.5).
pub(crate) fn authorize(auth: &AuthStore, lessor: &Lessor, ai: &AuthInfo, req: &InternalRaftRequest) -> Result<(), ServerError> {
    if !auth.is_enabled() {
        return Ok(());
    }
    if needs_admin(req) {
        auth.is_admin_permitted(ai)?;
    }
    if let Some(r) = &req.auth_user_get {
        // a user may read itself
        if let Err(e) = auth.is_admin_permitted(ai) {
            if r.name != ai.username {
                return Err(e.into());
            }
        }
    }
    if let Some(r) = &req.auth_role_get {
        // a user may read the roles it holds
        if let Err(e) = auth.is_admin_permitted(ai) {
            if !auth.has_role(&ai.username, &r.role) {
                return Err(e.into());
            }
        }
    }
    if let Some(r) = &req.range {
        auth.is_range_permitted(ai, &r.key, &r.range_end)?;
    }
    if let Some(r) = &req.put {
        auth.is_put_permitted(ai, &r.key)?;
        // a lease already holding keys the user cannot write cannot take more
        lease_keys_writable(auth, lessor, ai, r.lease)?;
        if r.prev_kv {
            auth.is_range_permitted(ai, &r.key, &[])?;
        }
    }
    if let Some(r) = &req.delete_range {
        auth.is_delete_range_permitted(ai, &r.key, &r.range_end)?;
        if r.prev_kv {
            auth.is_range_permitted(ai, &r.key, &r.range_end)?;
        }
    }
    if let Some(r) = &req.txn {
        txn_permitted(auth, ai, r)?;
    }
    if let Some(r) = &req.lease_revoke {
        lease_keys_writable(auth, lessor, ai, r.id)?;
    }
    Ok(())
}

fn lease_keys_writable(auth: &AuthStore, lessor: &Lessor, ai: &AuthInfo, lease: i64) -> Result<(), ServerError> {
    if lease == 0 {
        return Ok(());
    }
    // an unknown lease holds no keys (the request fails later with its own error)
    for key in lessor.keys(lease).unwrap_or_default() {
        auth.is_put_permitted(ai, &key)?;
    }
    Ok(())
}

/// Every compare needs read access, every op its own access, nested txns included.
pub(crate) fn txn_permitted(auth: &AuthStore, ai: &AuthInfo, t: &TxnRequest) -> Result<(), ServerError> {
    for c in &t.compare {
        auth.is_range_permitted(ai, &c.key, &c.range_end)?;
    }
    ops_permitted(auth, ai, &t.success)?;
    ops_permitted(auth, ai, &t.failure)
}

fn ops_permitted(auth: &AuthStore, ai: &AuthInfo, ops: &[RequestOp]) -> Result<(), ServerError> {
    for op in ops {
        match &op.request {
            Some(request_op::Request::RequestRange(r)) => auth.is_range_permitted(ai, &r.key, &r.range_end)?,
            Some(request_op::Request::RequestPut(r)) => {
                auth.is_put_permitted(ai, &r.key)?;
                if r.prev_kv {
                    auth.is_range_permitted(ai, &r.key, &[])?;
                }
            }
            Some(request_op::Request::RequestDeleteRange(r)) => {
                if r.prev_kv {
                    auth.is_range_permitted(ai, &r.key, &r.range_end)?;
                }
                auth.is_delete_range_permitted(ai, &r.key, &r.range_end)?;
            }
            Some(request_op::Request::RequestTxn(t)) => txn_permitted(auth, ai, t)?,
            None => {}
        }
    }
    Ok(())
}

/// Applies an auth request, or None when `req` is not one. `index` is the entry's raft index
/// (a simple token's suffix).
pub(crate) fn apply(
    auth: &AuthStore,
    wtx: &redb::WriteTransaction,
    req: &InternalRaftRequest,
    index: u64,
) -> Option<Result<AuthResult, ServerError>> {
    let r = apply_inner(auth, wtx, req, index)?;
    Some(r.map_err(ServerError::from))
}

fn apply_inner(
    auth: &AuthStore,
    wtx: &redb::WriteTransaction,
    req: &InternalRaftRequest,
    index: u64,
) -> Option<Result<AuthResult, etcd_auth::AuthError>> {
    use AuthResult as R;
    let out = if req.auth_enable.is_some() {
        auth.apply_enable(wtx).map(|_| R::Enable(Default::default()))
    } else if req.auth_disable.is_some() {
        auth.apply_disable(wtx).map(|_| R::Disable(Default::default()))
    } else if req.auth_status.is_some() {
        Ok(R::Status(AuthStatusResponse { header: None, enabled: auth.is_enabled(), auth_revision: auth.revision() }))
    } else if let Some(r) = &req.authenticate {
        auth.apply_authenticate(&r.name, &r.simple_token, index)
            .map(|token| R::Authenticate(AuthenticateResponse { header: None, token }))
    } else if let Some(r) = &req.auth_user_add {
        auth.apply_user_add(wtx, &r.name, r.hashed_password.as_bytes(), r.options)
            .map(|_| R::UserAdd(Default::default()))
    } else if let Some(r) = &req.auth_user_delete {
        auth.apply_user_delete(wtx, &r.name).map(|_| R::UserDelete(Default::default()))
    } else if let Some(r) = &req.auth_user_change_password {
        auth.apply_user_change_password(wtx, &r.name, r.hashed_password.as_bytes())
            .map(|_| R::UserChangePassword(Default::default()))
    } else if let Some(r) = &req.auth_user_grant_role {
        auth.apply_user_grant_role(wtx, &r.user, &r.role).map(|_| R::UserGrantRole(Default::default()))
    } else if let Some(r) = &req.auth_user_revoke_role {
        auth.apply_user_revoke_role(wtx, &r.name, &r.role).map(|_| R::UserRevokeRole(Default::default()))
    } else if let Some(r) = &req.auth_user_get {
        auth.user_get(&r.name).map(|roles| R::UserGet(AuthUserGetResponse { header: None, roles }))
    } else if req.auth_user_list.is_some() {
        Ok(R::UserList(AuthUserListResponse { header: None, users: auth.user_list() }))
    } else if let Some(r) = &req.auth_role_add {
        auth.apply_role_add(wtx, &r.name).map(|_| R::RoleAdd(Default::default()))
    } else if let Some(r) = &req.auth_role_delete {
        auth.apply_role_delete(wtx, &r.role).map(|_| R::RoleDelete(Default::default()))
    } else if let Some(r) = &req.auth_role_get {
        auth.role_get(&r.role).map(|perm| R::RoleGet(AuthRoleGetResponse { header: None, perm }))
    } else if req.auth_role_list.is_some() {
        Ok(R::RoleList(AuthRoleListResponse { header: None, roles: auth.role_list() }))
    } else if let Some(r) = &req.auth_role_grant_permission {
        auth.apply_role_grant_permission(wtx, &r.name, r.perm.clone())
            .map(|_| R::RoleGrantPermission(Default::default()))
    } else if let Some(r) = &req.auth_role_revoke_permission {
        auth.apply_role_revoke_permission(wtx, &r.role, &r.key, &r.range_end)
            .map(|_| R::RoleRevokePermission(Default::default()))
    } else {
        return None;
    };
    Some(out)
}
