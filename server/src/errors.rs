//! Server errors and the one table that maps every error a client can see to etcd's gRPC
//! status code and message. Clients match on these strings; write each one only here.

use etcd_auth::AuthError;
use etcd_lease::LeaseError;
use etcd_mvcc::MvccError;
use etcd_raft::RaftError;
use tonic::{Code, Status};

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum ServerError {
    #[error("etcdserver: key is not provided")]
    EmptyKey,
    #[error("etcdserver: key not found")]
    KeyNotFound,
    #[error("etcdserver: value is provided")]
    ValueProvided,
    #[error("etcdserver: lease is provided")]
    LeaseProvided,
    #[error("etcdserver: too many operations in txn request")]
    TooManyOps,
    #[error("etcdserver: duplicate key given in txn request")]
    DuplicateKey,
    #[error("mvcc: required revision has been compacted")]
    Compacted,
    #[error("mvcc: required revision is a future revision")]
    FutureRev,
    #[error("etcdserver: mvcc: database space exceeded")]
    NoSpace,
    #[error("etcdserver: requested lease not found")]
    LeaseNotFound,
    #[error("etcdserver: lease already exists")]
    LeaseExist,
    #[error("etcdserver: too large lease TTL")]
    LeaseTTLTooLarge,
    #[error("etcdserver: request is too large")]
    RequestTooLarge,
    #[error("etcdserver: too many requests")]
    TooManyRequests,
    #[error("etcdserver: no leader")]
    NoLeader,
    #[error("etcdserver: not leader")]
    NotLeader,
    #[error("etcdserver: leader changed")]
    LeaderChanged,
    #[error("etcdserver: server stopped")]
    Stopped,
    #[error("etcdserver: request timed out")]
    Timeout,
    #[error("etcdserver: request timed out, possibly due to previous leader failure")]
    TimeoutDueToLeaderFail,
    /// A proposal that found no leader to take it before the request timeout: etcd's raft node
    /// holds it until its context expires, and the gRPC layer answers the bare context error.
    #[error("context deadline exceeded")]
    ContextDeadlineExceeded,
    /// raft refused the proposal (no leader any more, or a leader transfer under way); as etcd
    /// answers raft's ErrProposalDropped.
    #[error("raft proposal dropped")]
    ProposalDropped,
    #[error("etcdserver: request timed out, waiting for the applied index took too long")]
    TimeoutWaitAppliedIndex,
    #[error("etcdserver: member not found")]
    MemberNotFound,
    #[error("etcdserver: member ID already exist")]
    MemberExists,
    #[error("etcdserver: Peer URLs already exists")]
    PeerUrlExists,
    #[error("etcdserver: given member URLs are invalid")]
    MemberBadUrls,
    #[error("etcdserver: can only promote a learner member")]
    MemberNotLearner,
    #[error("etcdserver: can only promote a learner member which is in sync with leader")]
    LearnerNotReady,
    #[error("etcdserver: too many learner members in cluster")]
    TooManyLearners,
    #[error("etcdserver: re-configuration failed due to not enough started members")]
    NotEnoughStartedMembers,
    #[error("etcdserver: bad leader transferee")]
    BadLeaderTransferee,
    #[error("etcdserver: request timed out, leader transfer took too long")]
    TimeoutLeaderTransfer,
    #[error("etcdserver: unhealthy cluster")]
    Unhealthy,
    #[error("etcdserver: rpc not supported for learner")]
    NotSupportedForLearner,
    #[error("etcdserver: corrupt cluster")]
    Corrupt,
    #[error("etcdserver: root user does not exist")]
    RootUserNotExist,
    #[error("etcdserver: root user does not have root role")]
    RootRoleNotExist,
    #[error("etcdserver: user name already exists")]
    UserAlreadyExist,
    #[error("etcdserver: user name is empty")]
    UserEmpty,
    #[error("etcdserver: user name not found")]
    UserNotFound,
    #[error("etcdserver: role name already exists")]
    RoleAlreadyExist,
    #[error("etcdserver: role name not found")]
    RoleNotFound,
    #[error("etcdserver: role name is empty")]
    RoleEmpty,
    #[error("etcdserver: authentication failed, invalid user ID or password")]
    AuthFailed,
    #[error("etcdserver: permission denied")]
    PermissionDenied,
    #[error("etcdserver: role is not granted to the user")]
    RoleNotGranted,
    #[error("etcdserver: permission is not granted to the role")]
    PermissionNotGranted,
    #[error("etcdserver: permission not given")]
    PermissionNotGiven,
    #[error("etcdserver: authentication is not enabled")]
    AuthNotEnabled,
    #[error("etcdserver: invalid auth token")]
    InvalidAuthToken,
    #[error("etcdserver: invalid auth management")]
    InvalidAuthMgmt,
    #[error("etcdserver: revision of auth store is old")]
    AuthOldRevision,
    /// An auth error etcd answers unmapped (code Unknown, its `auth: ...` text): a no-password
    /// user's login, a login on a verify-only JWT member, and the maintenance RPCs' root check.
    #[error("{0}")]
    AuthUnmapped(String),
    /// A sort order or target outside the enum (etcd 3.7's check, applied to RangeStream).
    #[error("etcdserver: invalid sort option")]
    InvalidSortOption,
    /// RangeStream answers in key order only (etcd 3.7).
    #[error("RangeStream does not support custom sort orders")]
    RangeStreamSortOrder,
    /// RangeStream does not filter by mod/create revision (etcd 3.7).
    #[error("RangeStream does not support revision filters")]
    RangeStreamRevisionFilters,
    #[error("etcdserver: cluster version not found during downgrade")]
    ClusterVersionUnavailable,
    #[error("etcdserver: wrong downgrade target version format")]
    WrongDowngradeVersionFormat,
    #[error("etcdserver: invalid downgrade target version")]
    InvalidDowngradeTargetVersion,
    #[error("etcdserver: cluster has a downgrade job in progress")]
    DowngradeInProcess,
    #[error("etcdserver: no inflight downgrade job")]
    NoInflightDowngrade,
    /// etcd's ErrUnknownMethod (a Downgrade action it does not know), unmapped: code Unknown.
    #[error("etcdserver: unknown method")]
    UnknownMethod,
    /// A feature etcd-rs has not built yet; the message names it.
    #[error("{0}")]
    Unimplemented(String),
    /// A storage or internal failure; the message says what failed.
    #[error("{0}")]
    Internal(String),
    /// The cluster moved to a version this binary must not serve (etcd's mustDetectDowngrade):
    /// the applier stops the member. Never answered to a client.
    #[error(transparent)]
    IncompatibleVersion(#[from] crate::cluster_version::DowngradeRefusal),
}

impl From<MvccError> for ServerError {
    fn from(e: MvccError) -> Self {
        match e {
            MvccError::Compacted => ServerError::Compacted,
            MvccError::FutureRev => ServerError::FutureRev,
            MvccError::KeyNotFound => ServerError::KeyNotFound,
            MvccError::LeaseNotFound => ServerError::LeaseNotFound,
            other => ServerError::Internal(other.to_string()),
        }
    }
}

impl From<LeaseError> for ServerError {
    fn from(e: LeaseError) -> Self {
        match e {
            LeaseError::NotFound => ServerError::LeaseNotFound,
            LeaseError::Exists => ServerError::LeaseExist,
            LeaseError::TtlTooLarge => ServerError::LeaseTTLTooLarge,
            LeaseError::NotPrimary => ServerError::NotLeader,
            other => ServerError::Internal(other.to_string()),
        }
    }
}

impl From<AuthError> for ServerError {
    fn from(e: AuthError) -> Self {
        match e {
            AuthError::RootUserNotExist => ServerError::RootUserNotExist,
            AuthError::RootRoleNotExist => ServerError::RootRoleNotExist,
            AuthError::UserAlreadyExist => ServerError::UserAlreadyExist,
            AuthError::UserEmpty => ServerError::UserEmpty,
            AuthError::UserNotFound => ServerError::UserNotFound,
            AuthError::RoleAlreadyExist => ServerError::RoleAlreadyExist,
            AuthError::RoleNotFound => ServerError::RoleNotFound,
            AuthError::RoleEmpty => ServerError::RoleEmpty,
            AuthError::AuthFailed => ServerError::AuthFailed,
            AuthError::PermissionDenied => ServerError::PermissionDenied,
            AuthError::RoleNotGranted => ServerError::RoleNotGranted,
            AuthError::PermissionNotGranted => ServerError::PermissionNotGranted,
            AuthError::PermissionNotGiven => ServerError::PermissionNotGiven,
            AuthError::AuthNotEnabled => ServerError::AuthNotEnabled,
            AuthError::AuthOldRevision => ServerError::AuthOldRevision,
            AuthError::InvalidAuthToken => ServerError::InvalidAuthToken,
            AuthError::InvalidAuthMgmt => ServerError::InvalidAuthMgmt,
            e @ (AuthError::NoPasswordUser | AuthError::VerifyOnly) => ServerError::AuthUnmapped(e.to_string()),
            e @ (AuthError::Storage(_) | AuthError::Hash(_) | AuthError::Sign(_)) => ServerError::Internal(e.to_string()),
        }
    }
}

impl From<RaftError> for ServerError {
    fn from(e: RaftError) -> Self {
        match e {
            RaftError::NoLeader => ServerError::NoLeader,
            RaftError::Stopped => ServerError::Stopped,
            RaftError::ProposalDropped => ServerError::ProposalDropped,
            RaftError::TooManyRequests => ServerError::TooManyRequests,
            other => ServerError::Internal(other.to_string()),
        }
    }
}

impl ServerError {
    /// The error a peer's answer to a forwarded request stands for, matched by etcd's text (a
    /// lessor that is not the leader's, etcd's "not a primary lessor", is "not leader").
    pub fn from_peer_text(text: &str) -> ServerError {
        if text == crate::peer_host::NOT_PRIMARY {
            return ServerError::NotLeader;
        }
        let known = [
            ServerError::LeaseNotFound,
            ServerError::NotLeader,
            ServerError::TimeoutWaitAppliedIndex,
            ServerError::MemberNotFound,
            ServerError::MemberNotLearner,
            ServerError::LearnerNotReady,
            ServerError::NotEnoughStartedMembers,
            ServerError::NoLeader,
            ServerError::Timeout,
            ServerError::TimeoutDueToLeaderFail,
            ServerError::Stopped,
        ];
        known
            .into_iter()
            .find(|e| e.to_string() == text)
            .unwrap_or_else(|| ServerError::Internal(text.to_string()))
    }
}

impl ServerError {
    /// The error as Go's gRPC prints a status ("rpc error: code = X desc = msg"): etcd puts
    /// this text in a refused watch's cancel reason.
    pub fn grpc_error_string(self) -> String {
        let s = Status::from(self);
        format!("rpc error: code = {:?} desc = {}", s.code(), s.message())
    }
}

impl From<ServerError> for Status {
    fn from(e: ServerError) -> Status {
        use ServerError::*;
        let code = match &e {
            EmptyKey | KeyNotFound | ValueProvided | LeaseProvided | TooManyOps | DuplicateKey
            | RequestTooLarge | MemberBadUrls | InvalidSortOption | WrongDowngradeVersionFormat
            | InvalidDowngradeTargetVersion => Code::InvalidArgument,
            DowngradeInProcess | NoInflightDowngrade => Code::FailedPrecondition,
            ClusterVersionUnavailable => Code::Unavailable,
            UnknownMethod => Code::Unknown,
            MemberExists | PeerUrlExists | MemberNotLearner | LearnerNotReady | TooManyLearners
            | NotEnoughStartedMembers | BadLeaderTransferee => Code::FailedPrecondition,
            TimeoutLeaderTransfer | Unhealthy | NotSupportedForLearner => Code::Unavailable,
            Compacted | FutureRev | LeaseTTLTooLarge => Code::OutOfRange,
            NoSpace | TooManyRequests => Code::ResourceExhausted,
            LeaseNotFound | MemberNotFound => Code::NotFound,
            NotLeader | LeaseExist => Code::FailedPrecondition,
            NoLeader | LeaderChanged | Stopped | Timeout | TimeoutDueToLeaderFail | TimeoutWaitAppliedIndex => {
                Code::Unavailable
            }
            ContextDeadlineExceeded | ProposalDropped => Code::Unknown,
            Corrupt => Code::DataLoss,
            RootUserNotExist | RootRoleNotExist | UserAlreadyExist | UserNotFound | RoleAlreadyExist
            | RoleNotFound | RoleNotGranted | PermissionNotGranted | AuthNotEnabled => Code::FailedPrecondition,
            UserEmpty | RoleEmpty | AuthFailed | PermissionNotGiven | InvalidAuthMgmt | AuthOldRevision => {
                Code::InvalidArgument
            }
            PermissionDenied => Code::PermissionDenied,
            InvalidAuthToken => Code::Unauthenticated,
            AuthUnmapped(_) => Code::Unknown,
            Unimplemented(_) | RangeStreamSortOrder | RangeStreamRevisionFilters => Code::Unimplemented,
            Internal(_) | IncompatibleVersion(_) => Code::Unknown,
        };
        let msg = match &e {
            // etcd's gRPC layer prefixes mvcc errors with "etcdserver: ".
            Compacted | FutureRev => format!("etcdserver: {e}"),
            _ => e.to_string(),
        };
        Status::new(code, msg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_codes_and_messages_match_etcd() {
        let s: Status = ServerError::Compacted.into();
        assert_eq!(s.code(), Code::OutOfRange);
        assert_eq!(s.message(), "etcdserver: mvcc: required revision has been compacted");
        let s: Status = ServerError::LeaseNotFound.into();
        assert_eq!(s.code(), Code::NotFound);
        assert_eq!(s.message(), "etcdserver: requested lease not found");
        let s: Status = ServerError::LeaseExist.into();
        assert_eq!((s.code(), s.message()), (Code::FailedPrecondition, "etcdserver: lease already exists"));
        let s: Status = ServerError::LeaseTTLTooLarge.into();
        assert_eq!((s.code(), s.message()), (Code::OutOfRange, "etcdserver: too large lease TTL"));
        let s: Status = ServerError::NoLeader.into();
        assert_eq!((s.code(), s.message()), (Code::Unavailable, "etcdserver: no leader"));
        let s: Status = ServerError::from(AuthError::UserEmpty).into();
        assert_eq!((s.code(), s.message()), (Code::InvalidArgument, "etcdserver: user name is empty"));
        let s: Status = ServerError::from(AuthError::PermissionDenied).into();
        assert_eq!((s.code(), s.message()), (Code::PermissionDenied, "etcdserver: permission denied"));
        let s: Status = ServerError::from(AuthError::InvalidAuthToken).into();
        assert_eq!((s.code(), s.message()), (Code::Unauthenticated, "etcdserver: invalid auth token"));
        let s: Status = ServerError::from(AuthError::UserNotFound).into();
        assert_eq!((s.code(), s.message()), (Code::FailedPrecondition, "etcdserver: user name not found"));
        let s: Status = ServerError::from(AuthError::NoPasswordUser).into();
        assert_eq!(
            (s.code(), s.message()),
            (Code::Unknown, "auth: authentication failed, password was given for no password user")
        );
        assert_eq!(
            ServerError::UserEmpty.grpc_error_string(),
            "rpc error: code = InvalidArgument desc = etcdserver: user name is empty"
        );
        assert_eq!(
            ServerError::PermissionDenied.grpc_error_string(),
            "rpc error: code = PermissionDenied desc = etcdserver: permission denied"
        );
        let s: Status = ServerError::TimeoutDueToLeaderFail.into();
        assert_eq!(
            (s.code(), s.message()),
            (Code::Unavailable, "etcdserver: request timed out, possibly due to previous leader failure")
        );
        // measured on etcd 3.4.23 and 3.5.1: a put to a member that finds no leader for the
        // whole request timeout
        let s: Status = ServerError::ContextDeadlineExceeded.into();
        assert_eq!((s.code(), s.message()), (Code::Unknown, "context deadline exceeded"));
        let s: Status = ServerError::EmptyKey.into();
        assert_eq!((s.code(), s.message()), (Code::InvalidArgument, "etcdserver: key is not provided"));
    }
}
