//! The cluster's gossip keys: every gossip datagram is sealed with one (see
//! `worker::node::membership::datagram`). The ring lives in the replicated
//! store, reaches a node in its join answer and then over its session with
//! the leader, and is kept sealed in the node's data directory.
//!
//! Rotation without downtime: [`GossipKeyRing::rotate`] adds a new key that
//! every node accepts as soon as it has the ring, but nodes go on sealing
//! with the previous key until [`GossipKeyRing::switch_at`] — time for the
//! ring to reach every node ([`SWITCH_DELAY`]). The previous key is still
//! accepted for [`RETIRE_DELAY`] after that (datagrams in flight, clocks a
//! little apart), then no longer: a node that was not given the new ring
//! (one removed with `node rm`, which rotates) can no longer gossip. Each
//! node reads the ring with its own clock, so rotation tolerates clocks
//! that differ by less than those delays.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::time::Millis;

/// How long after a rotation nodes start sealing with the new key.
pub const SWITCH_DELAY: Millis = 4_000;
/// How long after the switch the previous key is still accepted.
pub const RETIRE_DELAY: Millis = 4_000;

pub const KEY_LEN: usize = 32;

#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GossipKey {
    /// Sent in clear in every datagram, to pick the key that opens it.
    pub id: u32,
    #[serde(with = "serde_bytes")]
    pub key: [u8; KEY_LEN],
}

impl fmt::Debug for GossipKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "GossipKey({}, <redacted>)", self.id)
    }
}

impl GossipKey {
    pub fn generate(id: u32) -> GossipKey {
        use rand::RngCore;
        let mut key = [0u8; KEY_LEN];
        rand::rngs::OsRng.fill_bytes(&mut key);
        GossipKey { id, key }
    }
}

/// At most two keys: `previous` (being retired) and `current`. An empty
/// ring (a cluster made before gossip was sealed, until its first
/// rotation) seals and opens nothing: such a node does not gossip.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GossipKeyRing {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<GossipKey>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current: Option<GossipKey>,
    /// From this time nodes seal with `current`; `previous` is accepted
    /// until [`RETIRE_DELAY`] later.
    #[serde(default)]
    pub switch_at: Millis,
}

impl GossipKeyRing {
    /// A new cluster's ring: one key, in use at once.
    pub fn first() -> GossipKeyRing {
        GossipKeyRing { previous: None, current: Some(GossipKey::generate(1)), switch_at: 0 }
    }

    pub fn is_empty(&self) -> bool {
        self.current.is_none()
    }

    /// The key to seal with at `now`.
    pub fn sealing_key(&self, now: Millis) -> Option<&GossipKey> {
        match &self.previous {
            Some(p) if now < self.switch_at => Some(p),
            _ => self.current.as_ref(),
        }
    }

    /// The key with this id, if datagrams sealed with it are accepted at `now`.
    pub fn opening_key(&self, id: u32, now: Millis) -> Option<&GossipKey> {
        if let Some(c) = self.current.as_ref().filter(|c| c.id == id) {
            return Some(c);
        }
        self.previous.as_ref().filter(|p| p.id == id && now < self.switch_at.saturating_add(RETIRE_DELAY))
    }

    /// The ring with `key` (whose id must be new) added as the current key:
    /// the key in use at `now` becomes the previous one (a key added by an
    /// earlier rotation that nobody seals with yet is dropped).
    pub fn rotate(&self, key: GossipKey, now: Millis) -> GossipKeyRing {
        GossipKeyRing {
            previous: self.sealing_key(now).cloned(),
            current: Some(key),
            switch_at: now.saturating_add(SWITCH_DELAY),
        }
    }

    /// An id no key of this ring has.
    pub fn next_id(&self) -> u32 {
        let ids = self.previous.iter().chain(&self.current).map(|k| k.id);
        ids.max().unwrap_or(0).wrapping_add(1).max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotation_switches_after_the_delay_and_retires_the_old_key_later() {
        let ring = GossipKeyRing::first();
        let k1 = ring.current.clone().unwrap();
        assert_eq!(ring.sealing_key(0), Some(&k1));
        assert_eq!(ring.opening_key(k1.id, u64::MAX), Some(&k1), "a lone key never retires");

        let t = 1_000_000;
        let k2 = GossipKey::generate(ring.next_id());
        assert_eq!(k2.id, 2);
        let ring = ring.rotate(k2.clone(), t);
        // Before the switch: seal with the old key, accept both.
        assert_eq!(ring.sealing_key(t), Some(&k1));
        assert_eq!(ring.opening_key(2, t), Some(&k2));
        assert_eq!(ring.opening_key(1, t), Some(&k1));
        // After the switch: seal with the new one, still accept the old.
        let switch = t + SWITCH_DELAY;
        assert_eq!(ring.sealing_key(switch), Some(&k2));
        assert_eq!(ring.opening_key(1, switch + RETIRE_DELAY - 1), Some(&k1));
        // Retired.
        assert_eq!(ring.opening_key(1, switch + RETIRE_DELAY), None);
        assert_eq!(ring.opening_key(7, t), None, "unknown id");

        // Rotating again before the switch keeps the key in use, drops k2.
        let k3 = GossipKey::generate(ring.next_id());
        let again = ring.rotate(k3.clone(), t + 1);
        assert_eq!(again.previous, Some(k1));
        assert_eq!(again.current, Some(k3));
    }

    #[test]
    fn keys_stay_out_of_debug() {
        let ring = GossipKeyRing::first();
        let hex: String = ring.current.as_ref().unwrap().key[..4].iter().map(|b| format!("{b:02x}")).collect();
        let shown = format!("{ring:?}");
        assert!(!shown.contains(&hex) && shown.contains("redacted"), "{shown}");
    }
}
