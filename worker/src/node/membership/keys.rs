//! Every gossip key, in one place: the callers' facts ([`fact`]) and the keys
//! membership reserves for itself (`shoal.…`), which never reach callers.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use super::{MemberFacts, MembershipError};

/// Well-known fact keys, so every module spells them the same way.
pub mod fact {
    /// `manager` or `worker`.
    pub const ROLE: &str = "role";
    pub const HOSTNAME: &str = "hostname";
    /// The TCP cluster address (`ip:port`).
    pub const CLUSTER_ADDR: &str = "cluster_addr";
    /// `true` once the node can take tasks.
    pub const READY: &str = "ready";
    /// Set (to the reason) while a manager's disk alarm is raised: its raft
    /// files cannot be written, so it refuses writes.
    pub const DISK_ALARM: &str = "disk_alarm";
}

/// Keys starting with this are the module's own and never reach callers.
pub(super) const RESERVED_PREFIX: &str = "shoal.";
/// Set on every node; a node is live only once this key has reached us, so a
/// member never shows up before its facts do. The value is the schema version.
pub(super) const MEMBER_KEY: &str = "shoal.member";
pub(super) const MEMBER_SCHEMA: &str = "1";

pub(super) fn is_reserved(key: &str) -> bool {
    key.starts_with(RESERVED_PREFIX)
}

/// The caller-visible facts among a node's gossip keys.
pub(super) fn member_facts<'a>(
    key_values: impl Iterator<Item = (&'a str, &'a str)>,
    gossip_addr: SocketAddr,
    generation: u64,
) -> MemberFacts {
    MemberFacts {
        facts: key_values
            .filter(|(key, _)| !is_reserved(key))
            .map(|(key, value)| (key.to_string(), value.to_string()))
            .collect(),
        gossip_addr,
        generation,
    }
}

/// Facts a caller may publish: none of them under a reserved key.
pub(super) fn check_facts(facts: &BTreeMap<String, String>) -> Result<(), MembershipError> {
    match facts.keys().find(|key| is_reserved(key)) {
        Some(key) => Err(MembershipError::ReservedKey(key.clone())),
        None => Ok(()),
    }
}

/// What this node publishes when gossip starts: its facts and the member key.
pub(super) fn initial_key_values(facts: &BTreeMap<String, String>) -> Vec<(String, String)> {
    let mut key_values: Vec<(String, String)> = facts.iter().map(|(key, value)| (key.clone(), value.clone())).collect();
    key_values.push((MEMBER_KEY.to_string(), MEMBER_SCHEMA.to_string()));
    key_values
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserved_keys_are_not_facts() {
        let m = member_facts(
            [("role", "worker"), (MEMBER_KEY, MEMBER_SCHEMA), ("shoal.x", "y")].into_iter(),
            SocketAddr::from(([127, 0, 0, 1], 1)),
            5,
        );
        assert_eq!(m.facts.len(), 1);
        assert_eq!(m.get(fact::ROLE), Some("worker"));
        assert_eq!(m.generation, 5);
        assert!(check_facts(&m.facts).is_ok());
        let bad = BTreeMap::from([("shoal.member".to_string(), "2".to_string())]);
        let err = check_facts(&bad).unwrap_err();
        assert!(!err.is_retryable());
        assert_eq!(
            err.to_string(),
            "fact key \"shoal.member\" is reserved (keys starting with \"shoal.\" belong to membership)"
        );
    }

    #[test]
    fn gossip_starts_with_the_facts_and_the_member_key() {
        let facts = BTreeMap::from([(fact::ROLE.to_string(), "worker".to_string())]);
        assert_eq!(
            initial_key_values(&facts),
            vec![("role".to_string(), "worker".to_string()), ("shoal.member".to_string(), "1".to_string())]
        );
    }
}
