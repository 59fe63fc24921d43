//! Token providers (etcd's `--auth-token`): `simple`, `jwt,...` or empty (no tokens).
//!
//! etcd's simple tokens: "<16 random letters>.<raft index>", the prefix chosen by the member
//! that authenticates (before proposing), the index appended by every member when it applies
//! the Authenticate entry. Each member keeps token -> user in memory only.
//!
//! Expiry is member-local timing (a token unused for the TTL is dropped), never applied state:
//! which tokens exist is decided by the log, how long they live by this member's clock.
//!
//! JWT tokens (jwt.rs) are signed by the member answering the login and carry their user and
//! auth revision, so they need no per-member state.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rand::Rng;

use crate::jwt::{JwtTokens, TokenConfigError};

/// How this member issues and checks tokens.
#[derive(Debug)]
pub enum TokenProvider {
    Simple(SimpleTokens),
    Jwt(Box<JwtTokens>),
    /// `--auth-token ""` (etcd's nop provider): logins fail, no token is ever valid.
    Nop,
}

impl TokenProvider {
    /// Simple tokens living `ttl` after their last use.
    pub fn simple(ttl: Duration) -> TokenProvider {
        TokenProvider::Simple(SimpleTokens::new(ttl))
    }

    /// etcd's NewTokenProvider: `type[,key=value]...`. Options are split on ',' then '=';
    /// a pair that is not exactly `key=value`, a repeated key or an unknown type is refused
    /// (invalid auth options). `simple` ignores its options; `jwt` reads its key files now.
    pub fn from_options(opts: &str, simple_ttl: Duration) -> Result<TokenProvider, TokenConfigError> {
        let mut parts = opts.split(',');
        let kind = parts.next().unwrap_or("");
        let mut map = HashMap::new();
        for part in parts {
            let pair: Vec<&str> = part.split('=').collect();
            let [k, v] = pair[..] else {
                return Err(TokenConfigError::InvalidOpts(format!("invalid token option {opts:?}")));
            };
            if map.insert(k.to_string(), v.to_string()).is_some() {
                return Err(TokenConfigError::InvalidOpts(format!("duplicated token option {k:?} in {opts:?}")));
            }
        }
        match kind {
            "simple" => {
                tracing::warn!("simple token is not cryptographically signed");
                Ok(TokenProvider::simple(simple_ttl))
            }
            "jwt" => Ok(TokenProvider::Jwt(Box::new(JwtTokens::from_options(&map)?))),
            "" => Ok(TokenProvider::Nop),
            other => Err(TokenConfigError::InvalidOpts(format!("unknown token type {other:?}"))),
        }
    }
}

const LETTERS: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
const PREFIX_LEN: usize = 16;

/// A fresh token prefix (etcd: 16 letters from a cryptographic random source).
pub fn gen_token_prefix() -> String {
    let mut rng = rand::thread_rng();
    (0..PREFIX_LEN).map(|_| LETTERS[rng.gen_range(0..LETTERS.len())] as char).collect()
}

/// The raft index a simple token names, or None when it is not shaped as one.
pub fn token_index(token: &str) -> Option<u64> {
    let mut parts = token.split('.');
    let (_, index, rest) = (parts.next()?, parts.next()?, parts.next());
    if rest.is_some() {
        return None;
    }
    index.parse().ok()
}

#[derive(Debug)]
struct Entry {
    user: String,
    deadline: Instant,
}

#[derive(Debug)]
pub struct SimpleTokens {
    ttl: Duration,
    tokens: Mutex<HashMap<String, Entry>>,
}

impl SimpleTokens {
    pub fn new(ttl: Duration) -> SimpleTokens {
        SimpleTokens { ttl, tokens: Mutex::new(HashMap::new()) }
    }

    /// Records a token applied for `user` (and drops expired ones, so the map stays bounded by
    /// the tokens used within one TTL).
    pub fn assign(&self, token: String, user: &str) {
        let now = Instant::now();
        let mut t = self.tokens.lock();
        t.retain(|_, e| e.deadline > now);
        t.insert(token, Entry { user: user.to_string(), deadline: now + self.ttl });
    }

    /// The user a live token belongs to; using a token extends its life by the TTL.
    pub fn user_of(&self, token: &str) -> Option<String> {
        let now = Instant::now();
        let mut t = self.tokens.lock();
        match t.get_mut(token) {
            Some(e) if e.deadline > now => {
                e.deadline = now + self.ttl;
                Some(e.user.clone())
            }
            Some(_) => {
                t.remove(token);
                None
            }
            None => None,
        }
    }

    /// Drops every token of `user` (deleted, or its password changed).
    pub fn invalidate_user(&self, user: &str) {
        self.tokens.lock().retain(|_, e| e.user != user);
    }

    /// Drops every token (auth disabled).
    pub fn clear(&self) {
        self.tokens.lock().clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_are_sixteen_letters_and_differ() {
        let a = gen_token_prefix();
        assert_eq!(a.len(), 16);
        assert!(a.bytes().all(|b| b.is_ascii_alphabetic()));
        assert_ne!(a, gen_token_prefix());
    }

    #[test]
    fn token_index_parses_only_prefix_dot_number() {
        assert_eq!(token_index("abc.42"), Some(42));
        assert_eq!(token_index("abc"), None);
        assert_eq!(token_index("abc.x"), None);
        assert_eq!(token_index("a.1.2"), None);
    }

    #[test]
    fn tokens_map_to_users_until_invalidated() {
        let t = SimpleTokens::new(Duration::from_secs(300));
        t.assign("p.1".into(), "alice");
        t.assign("q.2".into(), "bob");
        assert_eq!(t.user_of("p.1").as_deref(), Some("alice"));
        t.invalidate_user("alice");
        assert_eq!(t.user_of("p.1"), None);
        assert_eq!(t.user_of("q.2").as_deref(), Some("bob"));
        t.clear();
        assert_eq!(t.user_of("q.2"), None);
    }

    #[test]
    fn token_options_are_split_as_etcd_splits_them() {
        let ttl = Duration::from_secs(1);
        assert!(matches!(TokenProvider::from_options("simple", ttl), Ok(TokenProvider::Simple(_))));
        assert!(matches!(TokenProvider::from_options("simple,a=b", ttl), Ok(TokenProvider::Simple(_))));
        assert!(matches!(TokenProvider::from_options("", ttl), Ok(TokenProvider::Nop)));
        for bad in ["bogus", "simplex", "simple,foo", "simple,a=b=c", "simple,a=1,a=2", "simple,", "jwt,foo", "jwt"] {
            match TokenProvider::from_options(bad, ttl) {
                Err(TokenConfigError::InvalidOpts(_)) => {}
                other => panic!("{bad:?}: {other:?}"),
            }
        }
        match TokenProvider::from_options("jwt,sign-method=RS256", ttl) {
            Err(TokenConfigError::MissingKey) => {}
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_zero_ttl_token_is_already_expired() {
        let t = SimpleTokens::new(Duration::ZERO);
        t.assign("p.1".into(), "alice");
        assert_eq!(t.user_of("p.1"), None);
    }
}
