//! Revoked user tokens, as cluster data: every node holds the set and gossips it to its
//! peers (on link-up and after every change, passed on by each node it changes, so it
//! floods over any topology in a round trip per hop), stores it in its data directory, and
//! refuses the tokens it names (see [`crate::tokens`]).
//!
//! A token is revoked by its `jti`, or all the tokens of a `sub` issued up to a moment (a
//! token of that user issued later, with a later `iat`, is accepted again). The set is a
//! state-based CRDT: [`Revocations::merge`] keeps, per id and per user, the latest moment,
//! so nodes that have seen the same revocations hold the same set whatever the order.
//!
//! Owns the set and its rules; no IO and no clock (the time of a revocation is given).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::tokens::UserToken;

/// The most entries of each kind a set holds: past it, a new revocation is refused (and a
/// peer's larger set is merged up to it).
pub const MAX_ENTRIES: usize = 100_000;
/// The longest `jti` or `sub` revoked.
pub const MAX_KEY: usize = 256;

/// What to revoke.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Revoke {
    /// The token with this `jti`.
    Jti(String),
    /// Every token of this `sub` issued until now.
    Sub(String),
}

/// Why a revocation was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RevokeError {
    /// An empty or too long id.
    #[error("the {0} to revoke must have 1 to {MAX_KEY} characters")]
    BadKey(&'static str),
    /// The set is full.
    #[error("the cluster holds {MAX_ENTRIES} revocations of this kind already")]
    Full,
}

/// The revoked tokens: by `jti`, and by `sub` with the moment (seconds since the Unix
/// epoch) up to which that user's tokens are refused.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revocations {
    jti: BTreeMap<String, u64>,
    sub: BTreeMap<String, u64>,
}

impl Revocations {
    /// Records `what` at `now`; true if the set changed.
    pub fn revoke(&mut self, what: &Revoke, now: u64) -> Result<bool, RevokeError> {
        let (map, key, kind) = match what {
            Revoke::Jti(j) => (&mut self.jti, j, "jti"),
            Revoke::Sub(s) => (&mut self.sub, s, "sub"),
        };
        if key.is_empty() || key.chars().count() > MAX_KEY {
            return Err(RevokeError::BadKey(kind));
        }
        if !map.contains_key(key) && map.len() >= MAX_ENTRIES {
            return Err(RevokeError::Full);
        }
        let at = map.entry(key.clone()).or_insert(0);
        let changed = now > *at;
        *at = (*at).max(now);
        Ok(changed)
    }

    /// Takes in a peer's set; true if this one changed. Entries with ids no revocation
    /// could have made are ignored (the set comes from the network).
    pub fn merge(&mut self, other: &Revocations) -> bool {
        let mut changed = false;
        for (mine, theirs) in [(&mut self.jti, &other.jti), (&mut self.sub, &other.sub)] {
            for (key, &at) in theirs {
                if key.is_empty() || key.chars().count() > MAX_KEY {
                    continue;
                }
                let room = mine.len() < MAX_ENTRIES;
                match mine.get_mut(key) {
                    Some(held) if *held >= at => {}
                    Some(held) => {
                        *held = at;
                        changed = true;
                    }
                    None if room => {
                        mine.insert(key.clone(), at);
                        changed = true;
                    }
                    None => {}
                }
            }
        }
        changed
    }

    /// Whether `token` is revoked: its `jti` is, or its user's tokens issued when it was
    /// (a token without `iat` counts as issued before any revocation of its user).
    pub fn revokes(&self, token: &UserToken) -> bool {
        token.jti.as_ref().is_some_and(|j| self.jti.contains_key(j))
            || self
                .sub
                .get(&token.sub)
                .is_some_and(|&at| token.iat.is_none_or(|iat| iat <= at))
    }

    /// Number of revocations held.
    pub fn len(&self) -> usize {
        self.jti.len() + self.sub.len()
    }

    /// Whether none is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokens::Rights;

    fn token(sub: &str, jti: &str, iat: Option<u64>) -> UserToken {
        UserToken {
            sub: sub.into(),
            exp: 10_000,
            iat,
            jti: Some(jti.into()),
            docs: Default::default(),
            owner: false,
            rights: Rights::Read,
            create: false,
        }
    }

    #[test]
    fn a_jti_or_a_users_earlier_tokens_are_revoked() {
        let mut r = Revocations::default();
        assert!(r.revoke(&Revoke::Jti("t1".into()), 100).expect("valid"));
        assert!(r.revokes(&token("alice", "t1", Some(50))));
        assert!(!r.revokes(&token("alice", "t2", Some(50))));
        assert!(r.revoke(&Revoke::Sub("bob".into()), 100).expect("valid"));
        assert!(r.revokes(&token("bob", "t3", Some(100))), "issued then");
        assert!(r.revokes(&token("bob", "t3", None)), "no iat");
        assert!(!r.revokes(&token("bob", "t4", Some(101))), "issued later");
        assert!(
            !r.revoke(&Revoke::Sub("bob".into()), 90).expect("valid"),
            "older"
        );
        assert_eq!(
            r.revoke(&Revoke::Jti(String::new()), 1),
            Err(RevokeError::BadKey("jti"))
        );
        assert_eq!(
            r.revoke(&Revoke::Sub("x".repeat(MAX_KEY + 1)), 1),
            Err(RevokeError::BadKey("sub"))
        );
    }

    #[test]
    fn merging_is_a_join_whatever_the_order() {
        let mut a = Revocations::default();
        let mut b = Revocations::default();
        a.revoke(&Revoke::Jti("t1".into()), 10).expect("valid");
        a.revoke(&Revoke::Sub("alice".into()), 10).expect("valid");
        b.revoke(&Revoke::Sub("alice".into()), 20).expect("valid");
        b.revoke(&Revoke::Jti("t2".into()), 5).expect("valid");
        let mut ab = a.clone();
        assert!(ab.merge(&b));
        let mut ba = b.clone();
        assert!(ba.merge(&a));
        assert_eq!(ab, ba);
        assert!(!ab.merge(&a) && !ab.merge(&b), "idempotent");
        assert!(
            ab.revokes(&token("alice", "t9", Some(15))),
            "the later moment counts"
        );
        // A peer's entries no revocation could make are ignored.
        let mut bad = Revocations::default();
        bad.jti.insert(String::new(), 1);
        assert!(!ab.merge(&bad));
    }
}
