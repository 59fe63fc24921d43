//! etcd v3 authentication and authorization.
//!
//! - [`AuthStore`]: the replicated auth state (enabled flag, auth revision, users, roles) kept
//!   in three tables of the member's redb backend and mirrored in memory with each user's
//!   merged key permissions. It changes only through its `apply_*` methods, which the server's
//!   applier calls with the batch's write transaction while applying committed raft entries.
//! - Permission checks (`is_range_permitted`, `is_put_permitted`, `is_admin_permitted`, ...)
//!   read only replicated state plus the caller's [`AuthInfo`] (user and the auth revision it
//!   was checked at), so every member decides a logged request alike.
//! - Passwords are bcrypt hashes made *before* proposing ([`hash_password`]): apply never
//!   depends on randomness. Simple tokens ([`SimpleTokens`]) are member-local; JWT tokens
//!   ([`JwtTokens`]) are signed outside apply and verified by any member with the key.
//!
//! What apply may depend on: the entry (including the header's username and auth revision)
//! and the state built by earlier entries. Never the clock, randomness or local flags.

mod jwt;
mod keys;
mod perms;
mod store;
mod token;

pub use jwt::{parse_go_duration, JwtTokens, SignMethod, TokenConfigError};
pub use perms::{Access, RangePerms};
pub use store::{AuthInfo, AuthStore, AUTH, AUTH_ROLES, AUTH_USERS, ROOT_ROLE, ROOT_USER};
pub use token::{gen_token_prefix, token_index, SimpleTokens, TokenProvider};

/// Errors of the auth store; the messages are etcd's (`auth: ...`), the server maps them to
/// etcd's gRPC statuses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("auth: root user does not exist")]
    RootUserNotExist,
    #[error("auth: root user does not have root role")]
    RootRoleNotExist,
    #[error("auth: user already exists")]
    UserAlreadyExist,
    #[error("auth: user name is empty")]
    UserEmpty,
    #[error("auth: user not found")]
    UserNotFound,
    #[error("auth: role already exists")]
    RoleAlreadyExist,
    #[error("auth: role not found")]
    RoleNotFound,
    #[error("auth: role name is empty")]
    RoleEmpty,
    #[error("auth: authentication failed, invalid user ID or password")]
    AuthFailed,
    #[error("auth: authentication failed, password was given for no password user")]
    NoPasswordUser,
    #[error("auth: permission denied")]
    PermissionDenied,
    #[error("auth: role is not granted to the user")]
    RoleNotGranted,
    #[error("auth: permission is not granted to the role")]
    PermissionNotGranted,
    #[error("auth: permission not given")]
    PermissionNotGiven,
    #[error("auth: authentication is not enabled")]
    AuthNotEnabled,
    #[error("auth: revision in header is old")]
    AuthOldRevision,
    #[error("auth: invalid auth token")]
    InvalidAuthToken,
    #[error("auth: invalid auth management")]
    InvalidAuthMgmt,
    /// A login on a member given only the JWT public key.
    #[error("auth: token signing attempted with verify-only key")]
    VerifyOnly,
    /// Signing a token failed; the message says how.
    #[error("auth: cannot sign the token: {0}")]
    Sign(String),
    /// The backend failed; the message says what.
    #[error("auth store: {0}")]
    Storage(String),
    /// bcrypt refused to hash (e.g. a cost out of range).
    #[error("auth: cannot hash the password: {0}")]
    Hash(String),
}

/// bcrypt's cost bounds; etcd falls back to the default outside them.
pub const BCRYPT_MIN_COST: u32 = 4;
pub const BCRYPT_MAX_COST: u32 = 31;
pub const BCRYPT_DEFAULT_COST: u32 = 10;

/// Hashes a password with bcrypt at `cost` (etcd's `--bcrypt-cost`). Slow by design: call it
/// off the async executor, and before proposing.
pub fn hash_password(password: &str, cost: u32) -> Result<Vec<u8>, AuthError> {
    let cost = if (BCRYPT_MIN_COST..=BCRYPT_MAX_COST).contains(&cost) { cost } else { BCRYPT_DEFAULT_COST };
    bcrypt::hash(password, cost).map(String::into_bytes).map_err(|e| AuthError::Hash(e.to_string()))
}

/// Whether `password` matches a stored bcrypt hash (a malformed hash matches nothing).
pub fn verify_password(hash: &[u8], password: &str) -> bool {
    match std::str::from_utf8(hash) {
        Ok(h) => bcrypt::verify(password, h).unwrap_or(false),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_hash_verifies_only_the_same_password() {
        let h = hash_password("secret", BCRYPT_MIN_COST).unwrap();
        assert!(h.starts_with(b"$2"));
        assert!(verify_password(&h, "secret"));
        assert!(!verify_password(&h, "Secret"));
        assert!(!verify_password(b"not a hash", "secret"));
    }
}
