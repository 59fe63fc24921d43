//! The auth store: users, roles, the enabled flag and the auth revision, in the backend tables
//! `auth`, `auth_users`, `auth_roles` and mirrored in memory.
//!
//! Invariant: the memory view and the tables change together in one `apply_*` call, under the
//! applier's write transaction; every change but enabling bumps the auth revision, as etcd's.
//! A failed rule check changes nothing.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};

use etcd_proto::authpb::{Permission, Role, User, UserAddOptions};
use parking_lot::RwLock;
use prost::Message;
use redb::{ReadableDatabase, ReadableTable, TableDefinition};

use crate::perms::{Access, RangePerms};
use crate::token::TokenProvider;
use crate::AuthError;

pub const ROOT_USER: &str = "root";
pub const ROOT_ROLE: &str = "root";

/// `auth`: "authEnabled" -> [1] / [0], "authRevision" -> u64 big-endian.
pub const AUTH: TableDefinition<&str, &[u8]> = TableDefinition::new("auth");
/// `auth_users`: user name -> authpb.User.
pub const AUTH_USERS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("auth_users");
/// `auth_roles`: role name -> authpb.Role.
pub const AUTH_ROLES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("auth_roles");

const ENABLED_KEY: &str = "authEnabled";
const REVISION_KEY: &str = "authRevision";

/// Who sent a request: the token's user and the auth revision the request was checked at
/// (0 with no token: etcd's "user name is empty").
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AuthInfo {
    pub username: String,
    pub revision: u64,
}

#[derive(Default)]
struct State {
    enabled: bool,
    revision: u64,
    users: BTreeMap<String, User>,
    roles: BTreeMap<String, Role>,
    perms: HashMap<String, RangePerms>,
}

impl State {
    fn refresh_perms(&mut self) {
        let roles = &self.roles;
        self.perms = self
            .users
            .iter()
            .map(|(name, u)| {
                let perms = u.roles.iter().filter_map(|r| roles.get(r)).flat_map(|r| r.key_permission.iter());
                (name.clone(), RangePerms::merge(perms))
            })
            .collect();
    }
}

pub struct AuthStore {
    /// The one check every request makes when auth is off.
    enabled: AtomicBool,
    state: RwLock<State>,
    tokens: TokenProvider,
}

fn storage(e: impl std::fmt::Display) -> AuthError {
    AuthError::Storage(e.to_string())
}

fn read_state(db: &redb::Database) -> Result<State, AuthError> {
    let mut st = State { revision: 1, ..Default::default() };
    let rtx = db.begin_read().map_err(storage)?;
    match rtx.open_table(AUTH) {
        Ok(t) => {
            if let Some(v) = t.get(ENABLED_KEY).map_err(storage)? {
                st.enabled = v.value() == [1];
            }
            if let Some(v) = t.get(REVISION_KEY).map_err(storage)? {
                let b: [u8; 8] = v.value().try_into().map_err(|_| storage("bad auth revision record"))?;
                // etcd starts the revision at 1
                st.revision = u64::from_be_bytes(b).max(1);
            }
        }
        Err(redb::TableError::TableDoesNotExist(_)) => {}
        Err(e) => return Err(storage(e)),
    }
    match rtx.open_table(AUTH_USERS) {
        Ok(t) => {
            for row in t.iter().map_err(storage)? {
                let (k, v) = row.map_err(storage)?;
                let u = User::decode(v.value()).map_err(storage)?;
                st.users.insert(String::from_utf8_lossy(k.value()).into_owned(), u);
            }
        }
        Err(redb::TableError::TableDoesNotExist(_)) => {}
        Err(e) => return Err(storage(e)),
    }
    match rtx.open_table(AUTH_ROLES) {
        Ok(t) => {
            for row in t.iter().map_err(storage)? {
                let (k, v) = row.map_err(storage)?;
                let r = Role::decode(v.value()).map_err(storage)?;
                st.roles.insert(String::from_utf8_lossy(k.value()).into_owned(), r);
            }
        }
        Err(redb::TableError::TableDoesNotExist(_)) => {}
        Err(e) => return Err(storage(e)),
    }
    st.refresh_perms();
    Ok(st)
}

fn has_root_role(u: &User) -> bool {
    u.roles.iter().any(|r| r == ROOT_ROLE)
}

impl AuthStore {
    /// Loads the auth state stored in the backend (auth off, revision 1 on a new data dir).
    pub fn load(db: &redb::Database, tokens: TokenProvider) -> Result<AuthStore, AuthError> {
        let st = read_state(db)?;
        Ok(AuthStore { enabled: AtomicBool::new(st.enabled), state: RwLock::new(st), tokens })
    }

    /// Replaces the state with the one stored in `db` (after a snapshot replaced the backend).
    pub fn reload(&self, db: &redb::Database) -> Result<(), AuthError> {
        let st = read_state(db)?;
        let mut cur = self.state.write();
        if !st.enabled {
            self.clear_simple_tokens();
        }
        self.enabled.store(st.enabled, Ordering::Release);
        *cur = st;
        Ok(())
    }

    pub fn is_enabled(&self) -> bool {
        self.enabled.load(Ordering::Acquire)
    }

    pub fn revision(&self) -> u64 {
        self.state.read().revision
    }

    /// Whether tokens are etcd's simple tokens (made by applying the login, so a member may
    /// have to catch up to the login's index before it knows one).
    pub fn uses_simple_tokens(&self) -> bool {
        matches!(self.tokens, TokenProvider::Simple(_))
    }

    /// Who a token stands for (None: unknown, expired or not validly signed). A simple token
    /// is checked at the current auth revision, a JWT at the revision it was issued at.
    pub fn token_info(&self, token: &str) -> Option<AuthInfo> {
        match &self.tokens {
            TokenProvider::Simple(t) => t.user_of(token).map(|username| AuthInfo { username, revision: self.revision() }),
            TokenProvider::Jwt(t) => t.info(token),
            TokenProvider::Nop => None,
        }
    }

    /// After a login applied at auth revision `revision`: the token to answer with when this
    /// member signs it (JWT), None when applying the login made it (simple).
    pub fn sign_token(&self, name: &str, revision: u64) -> Result<Option<String>, AuthError> {
        match &self.tokens {
            TokenProvider::Simple(_) => Ok(None),
            TokenProvider::Jwt(t) => t.assign(name, revision).map(Some),
            TokenProvider::Nop => Err(AuthError::AuthFailed),
        }
    }

    fn clear_simple_tokens(&self) {
        if let TokenProvider::Simple(t) = &self.tokens {
            t.clear();
        }
    }

    fn invalidate_simple_tokens(&self, name: &str) {
        if let TokenProvider::Simple(t) = &self.tokens {
            t.invalidate_user(name);
        }
    }

    // ---- checks (replicated state only) ----

    /// Root-only operations (auth management, maintenance etcd restricts).
    pub fn is_admin_permitted(&self, ai: &AuthInfo) -> Result<(), AuthError> {
        if !self.is_enabled() {
            return Ok(());
        }
        if ai.username.is_empty() {
            return Err(AuthError::UserEmpty);
        }
        let st = self.state.read();
        match st.users.get(&ai.username) {
            None => Err(AuthError::UserNotFound),
            Some(u) if has_root_role(u) => Ok(()),
            Some(_) => Err(AuthError::PermissionDenied),
        }
    }

    fn is_op_permitted(&self, ai: &AuthInfo, key: &[u8], range_end: &[u8], access: Access) -> Result<(), AuthError> {
        if !self.is_enabled() {
            return Ok(());
        }
        if ai.revision == 0 {
            return Err(AuthError::UserEmpty);
        }
        let st = self.state.read();
        if ai.revision < st.revision {
            return Err(AuthError::AuthOldRevision);
        }
        let Some(user) = st.users.get(&ai.username) else {
            return Err(AuthError::PermissionDenied);
        };
        if has_root_role(user) {
            return Ok(());
        }
        match st.perms.get(&ai.username) {
            Some(p) if p.allows(access, key, range_end) => Ok(()),
            _ => Err(AuthError::PermissionDenied),
        }
    }

    /// Read access to `key` (empty `range_end`) or [key, range_end).
    pub fn is_range_permitted(&self, ai: &AuthInfo, key: &[u8], range_end: &[u8]) -> Result<(), AuthError> {
        self.is_op_permitted(ai, key, range_end, Access::Read)
    }

    pub fn is_put_permitted(&self, ai: &AuthInfo, key: &[u8]) -> Result<(), AuthError> {
        self.is_op_permitted(ai, key, &[], Access::Write)
    }

    pub fn is_delete_range_permitted(&self, ai: &AuthInfo, key: &[u8], range_end: &[u8]) -> Result<(), AuthError> {
        self.is_op_permitted(ai, key, range_end, Access::Write)
    }

    pub fn has_role(&self, user: &str, role: &str) -> bool {
        self.state.read().users.get(user).is_some_and(|u| u.roles.iter().any(|r| r == role))
    }

    /// For a login: the user's password hash and the auth revision it was read at. Verify the
    /// password outside (bcrypt is slow), then propose the Authenticate request.
    pub fn login_hash(&self, name: &str) -> Result<(Vec<u8>, u64), AuthError> {
        if !self.is_enabled() {
            return Err(AuthError::AuthNotEnabled);
        }
        let st = self.state.read();
        let user = st.users.get(name).ok_or(AuthError::AuthFailed)?;
        if user.options.as_ref().is_some_and(|o| o.no_password) {
            return Err(AuthError::NoPasswordUser);
        }
        Ok((user.password.clone(), st.revision))
    }

    // ---- reads answered in apply (through raft, as etcd) ----

    pub fn user_get(&self, name: &str) -> Result<Vec<String>, AuthError> {
        self.state.read().users.get(name).map(|u| u.roles.clone()).ok_or(AuthError::UserNotFound)
    }

    pub fn user_list(&self) -> Vec<String> {
        self.state.read().users.keys().cloned().collect()
    }

    pub fn role_get(&self, name: &str) -> Result<Vec<Permission>, AuthError> {
        self.state.read().roles.get(name).map(|r| r.key_permission.clone()).ok_or(AuthError::RoleNotFound)
    }

    pub fn role_list(&self) -> Vec<String> {
        self.state.read().roles.keys().cloned().collect()
    }

    // ---- changes (applier only) ----

    fn put_meta(wtx: &redb::WriteTransaction, key: &str, value: &[u8]) -> Result<(), AuthError> {
        wtx.open_table(AUTH).map_err(storage)?.insert(key, value).map_err(storage)?;
        Ok(())
    }

    fn put_user(wtx: &redb::WriteTransaction, name: &str, u: &User) -> Result<(), AuthError> {
        let mut t = wtx.open_table(AUTH_USERS).map_err(storage)?;
        t.insert(name.as_bytes(), u.encode_to_vec().as_slice()).map_err(storage)?;
        Ok(())
    }

    fn put_role(wtx: &redb::WriteTransaction, name: &str, r: &Role) -> Result<(), AuthError> {
        let mut t = wtx.open_table(AUTH_ROLES).map_err(storage)?;
        t.insert(name.as_bytes(), r.encode_to_vec().as_slice()).map_err(storage)?;
        Ok(())
    }

    /// Bumps the revision (in the table and in `st`) and recomputes merged permissions.
    fn commit_revision(wtx: &redb::WriteTransaction, st: &mut State) -> Result<(), AuthError> {
        let next = st.revision + 1;
        Self::put_meta(wtx, REVISION_KEY, &next.to_be_bytes())?;
        st.revision = next;
        st.refresh_perms();
        Ok(())
    }

    /// Enables auth; needs the root user holding the root role. Enabling does not bump the
    /// revision (as etcd). Already enabled: nothing to do.
    pub fn apply_enable(&self, wtx: &redb::WriteTransaction) -> Result<(), AuthError> {
        let mut st = self.state.write();
        if st.enabled {
            return Ok(());
        }
        let root = st.users.get(ROOT_USER).ok_or(AuthError::RootUserNotExist)?;
        if !has_root_role(root) {
            return Err(AuthError::RootRoleNotExist);
        }
        Self::put_meta(wtx, ENABLED_KEY, &[1])?;
        st.enabled = true;
        self.enabled.store(true, Ordering::Release);
        tracing::info!("enabled authentication");
        Ok(())
    }

    /// Disables auth and drops every token. Already disabled: nothing to do.
    pub fn apply_disable(&self, wtx: &redb::WriteTransaction) -> Result<(), AuthError> {
        let mut st = self.state.write();
        if !st.enabled {
            return Ok(());
        }
        Self::put_meta(wtx, ENABLED_KEY, &[0])?;
        Self::commit_revision(wtx, &mut st)?;
        st.enabled = false;
        self.enabled.store(false, Ordering::Release);
        self.clear_simple_tokens();
        tracing::info!("disabled authentication");
        Ok(())
    }

    /// With simple tokens, records and returns the token `<prefix>.<index>` for `name`; other
    /// providers record nothing and return "" (the answering member signs a JWT after apply).
    /// Index: the Authenticate entry's raft
    /// index, the same on every member).
    pub fn apply_authenticate(&self, name: &str, prefix: &str, index: u64) -> Result<String, AuthError> {
        if !self.is_enabled() {
            return Err(AuthError::AuthNotEnabled);
        }
        let st = self.state.read();
        let user = st.users.get(name).ok_or(AuthError::AuthFailed)?;
        if user.options.as_ref().is_some_and(|o| o.no_password) {
            return Err(AuthError::AuthFailed);
        }
        let TokenProvider::Simple(tokens) = &self.tokens else { return Ok(String::new()) };
        let token = format!("{prefix}.{index}");
        tokens.assign(token.clone(), name);
        Ok(token)
    }

    /// Adds a user with an already hashed password (empty with `no_password`).
    pub fn apply_user_add(
        &self,
        wtx: &redb::WriteTransaction,
        name: &str,
        hashed_password: &[u8],
        options: Option<UserAddOptions>,
    ) -> Result<(), AuthError> {
        if name.is_empty() {
            return Err(AuthError::UserEmpty);
        }
        let mut st = self.state.write();
        if st.users.contains_key(name) {
            return Err(AuthError::UserAlreadyExist);
        }
        let options = options.unwrap_or_default();
        let password = if options.no_password { Vec::new() } else { hashed_password.to_vec() };
        let user = User { name: name.as_bytes().to_vec(), password, roles: Vec::new(), options: Some(options) };
        Self::put_user(wtx, name, &user)?;
        st.users.insert(name.to_string(), user);
        Self::commit_revision(wtx, &mut st)
    }

    pub fn apply_user_delete(&self, wtx: &redb::WriteTransaction, name: &str) -> Result<(), AuthError> {
        let mut st = self.state.write();
        if st.enabled && name == ROOT_USER {
            return Err(AuthError::InvalidAuthMgmt);
        }
        if !st.users.contains_key(name) {
            return Err(AuthError::UserNotFound);
        }
        wtx.open_table(AUTH_USERS).map_err(storage)?.remove(name.as_bytes()).map_err(storage)?;
        st.users.remove(name);
        Self::commit_revision(wtx, &mut st)?;
        self.invalidate_simple_tokens(name);
        Ok(())
    }

    pub fn apply_user_change_password(&self, wtx: &redb::WriteTransaction, name: &str, hashed: &[u8]) -> Result<(), AuthError> {
        let mut st = self.state.write();
        let mut user = st.users.get(name).cloned().ok_or(AuthError::UserNotFound)?;
        user.password = hashed.to_vec();
        Self::put_user(wtx, name, &user)?;
        st.users.insert(name.to_string(), user);
        Self::commit_revision(wtx, &mut st)?;
        self.invalidate_simple_tokens(name);
        Ok(())
    }

    /// Grants a role (the root role needs no role record). Granting a held role changes
    /// nothing, as etcd.
    pub fn apply_user_grant_role(&self, wtx: &redb::WriteTransaction, name: &str, role: &str) -> Result<(), AuthError> {
        let mut st = self.state.write();
        let mut user = st.users.get(name).cloned().ok_or(AuthError::UserNotFound)?;
        if role != ROOT_ROLE && !st.roles.contains_key(role) {
            return Err(AuthError::RoleNotFound);
        }
        let at = user.roles.partition_point(|r| r.as_str() < role);
        if user.roles.get(at).is_some_and(|r| r == role) {
            return Ok(());
        }
        user.roles.insert(at, role.to_string());
        Self::put_user(wtx, name, &user)?;
        st.users.insert(name.to_string(), user);
        Self::commit_revision(wtx, &mut st)
    }

    pub fn apply_user_revoke_role(&self, wtx: &redb::WriteTransaction, name: &str, role: &str) -> Result<(), AuthError> {
        let mut st = self.state.write();
        if st.enabled && name == ROOT_USER && role == ROOT_ROLE {
            return Err(AuthError::InvalidAuthMgmt);
        }
        let mut user = st.users.get(name).cloned().ok_or(AuthError::UserNotFound)?;
        let before = user.roles.len();
        user.roles.retain(|r| r != role);
        if user.roles.len() == before {
            return Err(AuthError::RoleNotGranted);
        }
        Self::put_user(wtx, name, &user)?;
        st.users.insert(name.to_string(), user);
        Self::commit_revision(wtx, &mut st)
    }

    pub fn apply_role_add(&self, wtx: &redb::WriteTransaction, name: &str) -> Result<(), AuthError> {
        if name.is_empty() {
            return Err(AuthError::RoleEmpty);
        }
        let mut st = self.state.write();
        if st.roles.contains_key(name) {
            return Err(AuthError::RoleAlreadyExist);
        }
        let role = Role { name: name.as_bytes().to_vec(), key_permission: Vec::new() };
        Self::put_role(wtx, name, &role)?;
        st.roles.insert(name.to_string(), role);
        Self::commit_revision(wtx, &mut st)
    }

    /// Deletes a role and takes it from every user holding it.
    pub fn apply_role_delete(&self, wtx: &redb::WriteTransaction, name: &str) -> Result<(), AuthError> {
        let mut st = self.state.write();
        if st.enabled && name == ROOT_ROLE {
            return Err(AuthError::InvalidAuthMgmt);
        }
        if !st.roles.contains_key(name) {
            return Err(AuthError::RoleNotFound);
        }
        wtx.open_table(AUTH_ROLES).map_err(storage)?.remove(name.as_bytes()).map_err(storage)?;
        st.roles.remove(name);
        let holders: Vec<String> =
            st.users.iter().filter(|(_, u)| u.roles.iter().any(|r| r == name)).map(|(n, _)| n.clone()).collect();
        for n in holders {
            if let Some(u) = st.users.get_mut(&n) {
                u.roles.retain(|r| r != name);
                let u = u.clone();
                Self::put_user(wtx, &n, &u)?;
            }
        }
        Self::commit_revision(wtx, &mut st)
    }

    /// Grants a permission: the same key and range end updates its type, anything else is
    /// added and the list kept sorted by key (etcd looks only at the first permission whose
    /// key is >= the new one's).
    pub fn apply_role_grant_permission(&self, wtx: &redb::WriteTransaction, name: &str, perm: Option<Permission>) -> Result<(), AuthError> {
        let mut st = self.state.write();
        let mut role = st.roles.get(name).cloned().ok_or(AuthError::RoleNotFound)?;
        let perm = perm.ok_or(AuthError::PermissionNotGiven)?;
        let at = role.key_permission.partition_point(|p| p.key < perm.key);
        match role.key_permission.get_mut(at) {
            Some(p) if p.key == perm.key && p.range_end == perm.range_end => p.perm_type = perm.perm_type,
            _ => {
                role.key_permission.push(perm);
                role.key_permission.sort_by(|a, b| a.key.cmp(&b.key));
            }
        }
        Self::put_role(wtx, name, &role)?;
        st.roles.insert(name.to_string(), role);
        Self::commit_revision(wtx, &mut st)
    }

    /// Revokes every permission of the role on exactly [key, range_end).
    pub fn apply_role_revoke_permission(&self, wtx: &redb::WriteTransaction, name: &str, key: &[u8], range_end: &[u8]) -> Result<(), AuthError> {
        let mut st = self.state.write();
        let mut role = st.roles.get(name).cloned().ok_or(AuthError::RoleNotFound)?;
        let before = role.key_permission.len();
        role.key_permission.retain(|p| !(p.key == key && p.range_end == range_end));
        if role.key_permission.len() == before {
            return Err(AuthError::PermissionNotGranted);
        }
        Self::put_role(wtx, name, &role)?;
        st.roles.insert(name.to_string(), role);
        Self::commit_revision(wtx, &mut st)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use etcd_proto::authpb::permission::Type as PermType;

    struct Fixture {
        _dir: tempfile::TempDir,
        db: redb::Database,
        store: AuthStore,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let db = redb::Database::create(dir.path().join("db")).unwrap();
        let store = AuthStore::load(&db, TokenProvider::simple(Duration::from_secs(300))).unwrap();
        Fixture { _dir: dir, db, store }
    }

    impl Fixture {
        /// Runs `f` in one write transaction and commits it (as one apply batch).
        fn apply<T>(&self, f: impl FnOnce(&AuthStore, &redb::WriteTransaction) -> T) -> T {
            let wtx = self.db.begin_write().unwrap();
            let out = f(&self.store, &wtx);
            wtx.commit().unwrap();
            out
        }
    }

    fn perm(t: PermType, key: &str, end: &str) -> Option<Permission> {
        Some(Permission { perm_type: t as i32, key: key.into(), range_end: end.into() })
    }

    fn with_root(f: &Fixture) {
        f.apply(|s, w| {
            s.apply_user_add(w, "root", b"h", None).unwrap();
            s.apply_user_grant_role(w, "root", "root").unwrap();
        });
    }

    #[test]
    fn enable_needs_root_user_with_root_role() {
        let f = fixture();
        assert_eq!(f.apply(|s, w| s.apply_enable(w)), Err(AuthError::RootUserNotExist));
        f.apply(|s, w| s.apply_user_add(w, "root", b"h", None)).unwrap();
        assert_eq!(f.apply(|s, w| s.apply_enable(w)), Err(AuthError::RootRoleNotExist));
        assert!(!f.store.is_enabled());
        f.apply(|s, w| s.apply_user_grant_role(w, "root", "root")).unwrap();
        let rev = f.store.revision();
        f.apply(|s, w| s.apply_enable(w)).unwrap();
        assert!(f.store.is_enabled());
        assert_eq!(f.store.revision(), rev, "enabling does not bump the revision");
    }

    #[test]
    fn root_cannot_lose_root_role_or_be_deleted_while_enabled() {
        let f = fixture();
        with_root(&f);
        f.apply(|s, w| s.apply_role_add(w, "root")).unwrap();
        f.apply(|s, w| s.apply_enable(w)).unwrap();
        assert_eq!(f.apply(|s, w| s.apply_user_delete(w, "root")), Err(AuthError::InvalidAuthMgmt));
        assert_eq!(f.apply(|s, w| s.apply_user_revoke_role(w, "root", "root")), Err(AuthError::InvalidAuthMgmt));
        assert_eq!(f.apply(|s, w| s.apply_role_delete(w, "root")), Err(AuthError::InvalidAuthMgmt));
        f.apply(|s, w| s.apply_disable(w)).unwrap();
        f.apply(|s, w| s.apply_user_revoke_role(w, "root", "root")).unwrap();
        f.apply(|s, w| s.apply_user_delete(w, "root")).unwrap();
    }

    #[test]
    fn not_found_exists_and_empty_name_errors() {
        let f = fixture();
        assert_eq!(f.apply(|s, w| s.apply_user_add(w, "", b"h", None)), Err(AuthError::UserEmpty));
        assert_eq!(f.apply(|s, w| s.apply_role_add(w, "")), Err(AuthError::RoleEmpty));
        f.apply(|s, w| s.apply_user_add(w, "u", b"h", None)).unwrap();
        assert_eq!(f.apply(|s, w| s.apply_user_add(w, "u", b"h", None)), Err(AuthError::UserAlreadyExist));
        f.apply(|s, w| s.apply_role_add(w, "r")).unwrap();
        assert_eq!(f.apply(|s, w| s.apply_role_add(w, "r")), Err(AuthError::RoleAlreadyExist));
        assert_eq!(f.apply(|s, w| s.apply_user_grant_role(w, "x", "r")), Err(AuthError::UserNotFound));
        assert_eq!(f.apply(|s, w| s.apply_user_grant_role(w, "u", "x")), Err(AuthError::RoleNotFound));
        assert_eq!(f.apply(|s, w| s.apply_user_revoke_role(w, "u", "r")), Err(AuthError::RoleNotGranted));
        assert_eq!(f.apply(|s, w| s.apply_user_delete(w, "x")), Err(AuthError::UserNotFound));
        assert_eq!(f.apply(|s, w| s.apply_role_delete(w, "x")), Err(AuthError::RoleNotFound));
        assert_eq!(f.apply(|s, w| s.apply_role_revoke_permission(w, "r", b"a", b"")), Err(AuthError::PermissionNotGranted));
        assert_eq!(
            f.apply(|s, w| s.apply_role_grant_permission(w, "x", perm(PermType::Read, "a", ""))),
            Err(AuthError::RoleNotFound)
        );
        assert_eq!(f.store.user_get("x"), Err(AuthError::UserNotFound));
        assert_eq!(f.store.role_get("x"), Err(AuthError::RoleNotFound));
    }

    #[test]
    fn every_change_bumps_the_revision_and_failures_do_not() {
        let f = fixture();
        assert_eq!(f.store.revision(), 1);
        f.apply(|s, w| s.apply_user_add(w, "u", b"h", None)).unwrap();
        f.apply(|s, w| s.apply_role_add(w, "r")).unwrap();
        f.apply(|s, w| s.apply_user_grant_role(w, "u", "r")).unwrap();
        assert_eq!(f.store.revision(), 4);
        f.apply(|s, w| s.apply_user_grant_role(w, "u", "r")).unwrap(); // already held
        let _ = f.apply(|s, w| s.apply_role_add(w, "r"));
        assert_eq!(f.store.revision(), 4);
    }

    #[test]
    fn grant_merges_and_updates_and_revoke_needs_exact_range() {
        let f = fixture();
        with_root(&f);
        f.apply(|s, w| {
            s.apply_role_add(w, "r").unwrap();
            s.apply_user_add(w, "u", b"h", None).unwrap();
            s.apply_user_grant_role(w, "u", "r").unwrap();
            s.apply_role_grant_permission(w, "r", perm(PermType::Read, "b", "c")).unwrap();
            s.apply_role_grant_permission(w, "r", perm(PermType::Read, "a", "b")).unwrap();
            // same key and range: the type is updated, not a second entry
            s.apply_role_grant_permission(w, "r", perm(PermType::Readwrite, "b", "c")).unwrap();
            s.apply_enable(w).unwrap();
        });
        let perms = f.store.role_get("r").unwrap();
        assert_eq!(perms.iter().map(|p| p.key.clone()).collect::<Vec<_>>(), vec![b"a".to_vec(), b"b".to_vec()]);
        assert_eq!(perms[1].perm_type, PermType::Readwrite as i32);
        let ai = AuthInfo { username: "u".into(), revision: f.store.revision() };
        assert_eq!(f.store.is_range_permitted(&ai, b"a", b"c"), Ok(()));
        assert_eq!(f.store.is_put_permitted(&ai, b"b"), Ok(()));
        assert_eq!(f.store.is_put_permitted(&ai, b"a"), Err(AuthError::PermissionDenied));
        assert_eq!(f.apply(|s, w| s.apply_role_revoke_permission(w, "r", b"a", b"bb")), Err(AuthError::PermissionNotGranted));
        f.apply(|s, w| s.apply_role_revoke_permission(w, "r", b"a", b"b")).unwrap();
        let ai = AuthInfo { username: "u".into(), revision: f.store.revision() };
        assert_eq!(f.store.is_range_permitted(&ai, b"a", b"c"), Err(AuthError::PermissionDenied));
        assert_eq!(f.store.is_range_permitted(&ai, b"b", b""), Ok(()));
    }

    #[test]
    fn checks_follow_etcd_order_empty_user_old_revision_root() {
        let f = fixture();
        let anyone = AuthInfo::default();
        assert_eq!(f.store.is_put_permitted(&anyone, b"k"), Ok(()), "auth off: everything is allowed");
        with_root(&f);
        f.apply(|s, w| {
            s.apply_user_add(w, "u", b"h", None).unwrap();
            s.apply_enable(w).unwrap();
        });
        assert_eq!(f.store.is_put_permitted(&anyone, b"k"), Err(AuthError::UserEmpty));
        assert_eq!(f.store.is_admin_permitted(&anyone), Err(AuthError::UserEmpty));
        let rev = f.store.revision();
        let root = AuthInfo { username: "root".into(), revision: rev };
        let u = AuthInfo { username: "u".into(), revision: rev };
        assert_eq!(f.store.is_put_permitted(&root, b"k"), Ok(()));
        assert_eq!(f.store.is_admin_permitted(&root), Ok(()));
        assert_eq!(f.store.is_put_permitted(&u, b"k"), Err(AuthError::PermissionDenied));
        assert_eq!(f.store.is_admin_permitted(&u), Err(AuthError::PermissionDenied));
        let ghost = AuthInfo { username: "ghost".into(), revision: rev };
        assert_eq!(f.store.is_admin_permitted(&ghost), Err(AuthError::UserNotFound));
        assert_eq!(f.store.is_put_permitted(&ghost, b"k"), Err(AuthError::PermissionDenied));
        f.apply(|s, w| s.apply_role_add(w, "r")).unwrap();
        assert_eq!(f.store.is_put_permitted(&root, b"k"), Err(AuthError::AuthOldRevision));
    }

    #[test]
    fn role_delete_takes_the_role_from_users() {
        let f = fixture();
        f.apply(|s, w| {
            s.apply_role_add(w, "r").unwrap();
            s.apply_user_add(w, "u", b"h", None).unwrap();
            s.apply_user_grant_role(w, "u", "r").unwrap();
            s.apply_role_delete(w, "r").unwrap();
        });
        assert_eq!(f.store.user_get("u"), Ok(vec![]));
        let again = AuthStore::load(&f.db, TokenProvider::simple(Duration::from_secs(1))).unwrap();
        assert_eq!(again.user_get("u"), Ok(vec![]));
    }

    #[test]
    fn state_survives_reload_and_tokens_follow_users() {
        let f = fixture();
        with_root(&f);
        f.apply(|s, w| {
            s.apply_user_add(w, "nopw", b"", Some(UserAddOptions { no_password: true })).unwrap();
            s.apply_enable(w).unwrap();
        });
        assert_eq!(f.store.login_hash("nopw"), Err(AuthError::NoPasswordUser));
        assert_eq!(f.store.login_hash("ghost"), Err(AuthError::AuthFailed));
        assert_eq!(f.store.apply_authenticate("nopw", "p", 7), Err(AuthError::AuthFailed));
        let tok = f.store.apply_authenticate("root", "abc", 9).unwrap();
        assert_eq!(tok, "abc.9");
        assert_eq!(f.store.token_info(&tok).map(|ai| ai.username).as_deref(), Some("root"));
        f.apply(|s, w| s.apply_user_change_password(w, "root", b"h2")).unwrap();
        assert_eq!(f.store.token_info(&tok), None, "a password change invalidates the user's tokens");

        let again = AuthStore::load(&f.db, TokenProvider::simple(Duration::from_secs(1))).unwrap();
        assert!(again.is_enabled());
        assert_eq!(again.revision(), f.store.revision());
        assert_eq!(again.user_list(), vec!["nopw".to_string(), "root".to_string()]);
        assert_eq!(again.login_hash("root").map(|(h, _)| h), Ok(b"h2".to_vec()));

        let tok = f.store.apply_authenticate("root", "xyz", 10).unwrap();
        f.apply(|s, w| s.apply_disable(w)).unwrap();
        assert_eq!(f.store.token_info(&tok), None, "disabling drops every token");
        assert_eq!(f.store.login_hash("root"), Err(AuthError::AuthNotEnabled));
    }
}
