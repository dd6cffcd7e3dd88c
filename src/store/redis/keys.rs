//! Redis key layout: `{key_prefix}{{identity}}:{rule}:{seed}`.
//!
//! The hash tag is the identity, so every rule's counter for one caller lands
//! in one cluster slot: a batch whose rules count the same identity (the usual
//! case) is one atomic script call even on a cluster. The rule name keeps keys
//! readable; the seed (a hash of rule name, strategy and key spec) keeps a
//! strategy change from reading another strategy's state.

use std::fmt::Write as _;
use std::hash::Hasher as _;

use siphasher::sip128::{Hasher128, SipHasher13};

use redis::cluster_routing::Slot;

use crate::store::CounterKey;

/// Identities longer than this, or holding a brace (which would end the hash
/// tag early), are replaced by a digest so keys stay short and well formed.
const MAX_RAW_IDENTITY: usize = 128;

/// Fixed keys: every instance sharing the Redis must derive the same names.
const DIGEST_KEYS: (u64, u64) = (0x7261_7465_7468_726f, 0x7474_6c65_2d6b_6579);

pub fn counter_key(prefix: &str, key: &CounterKey<'_>) -> String {
    let mut out = String::with_capacity(prefix.len() + key.identity.len() + key.rule.len() + 24);
    out.push_str(prefix);
    out.push('{');
    push_identity(&mut out, key.identity);
    out.push_str("}:");
    out.push_str(key.rule);
    let _ = write!(out, ":{:016x}", key.rule_seed);
    out
}

fn push_identity(out: &mut String, identity: &str) {
    let plain = identity.len() <= MAX_RAW_IDENTITY
        && !identity.is_empty()
        && !identity.contains(['{', '}']);
    if plain {
        out.push_str(identity);
    } else {
        let mut hasher = SipHasher13::new_with_keys(DIGEST_KEYS.0, DIGEST_KEYS.1);
        hasher.write(identity.as_bytes());
        let digest = hasher.finish128();
        let _ = write!(out, "#{:016x}{:016x}", digest.h1, digest.h2);
    }
}

/// The cluster slot of a key, as Redis computes it (CRC16 of the hash tag).
pub fn slot(key: &str) -> Slot {
    Slot::for_key(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key<'a>(rule: &'a str, identity: &'a str) -> CounterKey<'a> {
        CounterKey {
            rule,
            rule_seed: 0xabc,
            identity,
        }
    }

    #[test]
    fn keys_are_readable_and_tagged_by_identity() {
        assert_eq!(
            counter_key("rt:", &key("api", "ip:192.0.2.1")),
            "rt:{ip:192.0.2.1}:api:0000000000000abc"
        );
        let a = counter_key("rt:", &key("api", "ip:192.0.2.1"));
        let b = counter_key("rt:", &key("login", "ip:192.0.2.1"));
        assert_eq!(slot(&a), slot(&b), "one caller's counters share a slot");
    }

    #[test]
    fn braces_and_long_identities_become_digests() {
        let braced = counter_key("rt:", &key("api", "header:x}{y"));
        assert!(braced.starts_with("rt:{#") && braced.matches('{').count() == 1);
        let long = "k".repeat(1000);
        let k = counter_key("rt:", &key("api", &long));
        assert!(k.len() < 100);
        assert_ne!(k, counter_key("rt:", &key("api", &"k".repeat(999))));
    }

    #[test]
    fn tags_decide_slots() {
        assert_eq!(slot("{user1000}.following"), slot("{user1000}.followers"));
        assert_eq!(slot("rt:{a}:x"), slot("other:{a}:y"));
    }
}
