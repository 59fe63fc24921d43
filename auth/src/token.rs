//! etcd's simple tokens: "<16 random letters>.<raft index>", the prefix chosen by the member
//! that authenticates (before proposing), the index appended by every member when it applies
//! the Authenticate entry. Each member keeps token -> user in memory only.
//!
//! Expiry is member-local timing (a token unused for the TTL is dropped), never applied state:
//! which tokens exist is decided by the log, how long they live by this member's clock.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rand::Rng;

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

struct Entry {
    user: String,
    deadline: Instant,
}

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
    fn a_zero_ttl_token_is_already_expired() {
        let t = SimpleTokens::new(Duration::ZERO);
        t.assign("p.1".into(), "alice");
        assert_eq!(t.user_of("p.1"), None);
    }
}
