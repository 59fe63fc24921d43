//! Auth service: read the sender from the request's token, call `EtcdServer`, answer.
//! Every rule (root only, self-reads, etcd's errors) is decided where the request applies.

use std::sync::Arc;

use etcd_proto::etcdserverpb::auth_server::Auth;
use etcd_proto::etcdserverpb::{
    AuthDisableRequest, AuthDisableResponse, AuthEnableRequest, AuthEnableResponse, AuthRoleAddRequest,
    AuthRoleAddResponse, AuthRoleDeleteRequest, AuthRoleDeleteResponse, AuthRoleGetRequest, AuthRoleGetResponse,
    AuthRoleGrantPermissionRequest, AuthRoleGrantPermissionResponse, AuthRoleListRequest, AuthRoleListResponse,
    AuthRoleRevokePermissionRequest, AuthRoleRevokePermissionResponse, AuthStatusRequest, AuthStatusResponse,
    AuthUserAddRequest, AuthUserAddResponse, AuthUserChangePasswordRequest, AuthUserChangePasswordResponse,
    AuthUserDeleteRequest, AuthUserDeleteResponse, AuthUserGetRequest, AuthUserGetResponse, AuthUserGrantRoleRequest,
    AuthUserGrantRoleResponse, AuthUserListRequest, AuthUserListResponse, AuthUserRevokeRoleRequest,
    AuthUserRevokeRoleResponse, AuthenticateRequest, AuthenticateResponse,
};
use tonic::{Request, Response, Status};

use crate::etcd_server::EtcdServer;

pub struct AuthService {
    pub server: Arc<EtcdServer>,
}

#[tonic::async_trait]
impl Auth for AuthService {
    async fn authenticate(
        &self,
        request: Request<AuthenticateRequest>,
    ) -> Result<Response<AuthenticateResponse>, Status> {
        self.server.refuse_if_learner()?;
        Ok(Response::new(self.server.authenticate(request.into_inner()).await?))
    }

    async fn auth_enable(&self, request: Request<AuthEnableRequest>) -> Result<Response<AuthEnableResponse>, Status> {
        self.server.refuse_if_learner()?;
        let auth = self.server.auth_info(request.metadata(), request.extensions()).await?;
        Ok(Response::new(
            self.server.auth_enable(request.into_inner(), &auth).await?,
        ))
    }

    async fn auth_disable(
        &self,
        request: Request<AuthDisableRequest>,
    ) -> Result<Response<AuthDisableResponse>, Status> {
        self.server.refuse_if_learner()?;
        let auth = self.server.auth_info(request.metadata(), request.extensions()).await?;
        Ok(Response::new(
            self.server.auth_disable(request.into_inner(), &auth).await?,
        ))
    }

    async fn auth_status(&self, request: Request<AuthStatusRequest>) -> Result<Response<AuthStatusResponse>, Status> {
        self.server.refuse_if_learner()?;
        let auth = self.server.auth_info(request.metadata(), request.extensions()).await?;
        Ok(Response::new(
            self.server.auth_status(request.into_inner(), &auth).await?,
        ))
    }

    async fn user_add(&self, request: Request<AuthUserAddRequest>) -> Result<Response<AuthUserAddResponse>, Status> {
        self.server.refuse_if_learner()?;
        let auth = self.server.auth_info(request.metadata(), request.extensions()).await?;
        Ok(Response::new(self.server.user_add(request.into_inner(), &auth).await?))
    }

    async fn user_get(&self, request: Request<AuthUserGetRequest>) -> Result<Response<AuthUserGetResponse>, Status> {
        self.server.refuse_if_learner()?;
        let auth = self.server.auth_info(request.metadata(), request.extensions()).await?;
        Ok(Response::new(self.server.user_get(request.into_inner(), &auth).await?))
    }

    async fn user_list(&self, request: Request<AuthUserListRequest>) -> Result<Response<AuthUserListResponse>, Status> {
        self.server.refuse_if_learner()?;
        let auth = self.server.auth_info(request.metadata(), request.extensions()).await?;
        Ok(Response::new(self.server.user_list(request.into_inner(), &auth).await?))
    }

    async fn user_delete(
        &self,
        request: Request<AuthUserDeleteRequest>,
    ) -> Result<Response<AuthUserDeleteResponse>, Status> {
        self.server.refuse_if_learner()?;
        let auth = self.server.auth_info(request.metadata(), request.extensions()).await?;
        Ok(Response::new(
            self.server.user_delete(request.into_inner(), &auth).await?,
        ))
    }

    async fn user_change_password(
        &self,
        request: Request<AuthUserChangePasswordRequest>,
    ) -> Result<Response<AuthUserChangePasswordResponse>, Status> {
        self.server.refuse_if_learner()?;
        let auth = self.server.auth_info(request.metadata(), request.extensions()).await?;
        Ok(Response::new(
            self.server.user_change_password(request.into_inner(), &auth).await?,
        ))
    }

    async fn user_grant_role(
        &self,
        request: Request<AuthUserGrantRoleRequest>,
    ) -> Result<Response<AuthUserGrantRoleResponse>, Status> {
        self.server.refuse_if_learner()?;
        let auth = self.server.auth_info(request.metadata(), request.extensions()).await?;
        Ok(Response::new(
            self.server.user_grant_role(request.into_inner(), &auth).await?,
        ))
    }

    async fn user_revoke_role(
        &self,
        request: Request<AuthUserRevokeRoleRequest>,
    ) -> Result<Response<AuthUserRevokeRoleResponse>, Status> {
        self.server.refuse_if_learner()?;
        let auth = self.server.auth_info(request.metadata(), request.extensions()).await?;
        Ok(Response::new(
            self.server.user_revoke_role(request.into_inner(), &auth).await?,
        ))
    }

    async fn role_add(&self, request: Request<AuthRoleAddRequest>) -> Result<Response<AuthRoleAddResponse>, Status> {
        self.server.refuse_if_learner()?;
        let auth = self.server.auth_info(request.metadata(), request.extensions()).await?;
        Ok(Response::new(self.server.role_add(request.into_inner(), &auth).await?))
    }

    async fn role_get(&self, request: Request<AuthRoleGetRequest>) -> Result<Response<AuthRoleGetResponse>, Status> {
        self.server.refuse_if_learner()?;
        let auth = self.server.auth_info(request.metadata(), request.extensions()).await?;
        Ok(Response::new(self.server.role_get(request.into_inner(), &auth).await?))
    }

    async fn role_list(&self, request: Request<AuthRoleListRequest>) -> Result<Response<AuthRoleListResponse>, Status> {
        self.server.refuse_if_learner()?;
        let auth = self.server.auth_info(request.metadata(), request.extensions()).await?;
        Ok(Response::new(self.server.role_list(request.into_inner(), &auth).await?))
    }

    async fn role_delete(
        &self,
        request: Request<AuthRoleDeleteRequest>,
    ) -> Result<Response<AuthRoleDeleteResponse>, Status> {
        self.server.refuse_if_learner()?;
        let auth = self.server.auth_info(request.metadata(), request.extensions()).await?;
        Ok(Response::new(
            self.server.role_delete(request.into_inner(), &auth).await?,
        ))
    }

    async fn role_grant_permission(
        &self,
        request: Request<AuthRoleGrantPermissionRequest>,
    ) -> Result<Response<AuthRoleGrantPermissionResponse>, Status> {
        self.server.refuse_if_learner()?;
        let auth = self.server.auth_info(request.metadata(), request.extensions()).await?;
        Ok(Response::new(
            self.server.role_grant_permission(request.into_inner(), &auth).await?,
        ))
    }

    async fn role_revoke_permission(
        &self,
        request: Request<AuthRoleRevokePermissionRequest>,
    ) -> Result<Response<AuthRoleRevokePermissionResponse>, Status> {
        self.server.refuse_if_learner()?;
        let auth = self.server.auth_info(request.metadata(), request.extensions()).await?;
        Ok(Response::new(
            self.server.role_revoke_permission(request.into_inner(), &auth).await?,
        ))
    }
}
