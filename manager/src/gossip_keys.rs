//! The leader gives a cluster without gossip keys its first one. A cluster
//! made by a shoal from before sealed gossip has an empty ring in its store
//! (and its snapshots), and with no key no node gossips; so once it is the
//! leader, a manager that finds the ring empty proposes a key itself, as
//! `shoal gossip-key rotate` would. Nodes get the ring over their sessions
//! (which do not need gossip), so gossip starts a moment later everywhere.
//!
//! [`FirstGossipKey`] is a [`ControlLoop`](crate::control::ControlLoop)
//! core: it proposes one key, and if the ring is still empty afterwards
//! (the proposal failed) it waits longer each time before the next.

use std::time::Duration;

use common::backoff::Backoff;
use common::gossip_key::{GossipKey, KEY_LEN};
use common::time::Millis;

use crate::control::{Decide, LoopCtx};
use crate::store::{Command, Store};

/// Between proposals while the ring stays empty.
pub const RETRY: Backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));

pub struct FirstGossipKey {
    /// Makes a key (random; fixed in tests).
    fresh: fn() -> [u8; KEY_LEN],
    /// Proposals made since the ring was last seen non-empty, and when the
    /// last one was made.
    tried: u32,
    last: Option<Millis>,
}

impl Default for FirstGossipKey {
    fn default() -> Self {
        FirstGossipKey::with_keys(|| GossipKey::generate(0).key)
    }
}

impl FirstGossipKey {
    pub fn with_keys(fresh: fn() -> [u8; KEY_LEN]) -> Self {
        FirstGossipKey { fresh, tried: 0, last: None }
    }
}

impl Decide for FirstGossipKey {
    fn name(&self) -> &'static str {
        "gossip_keys"
    }

    fn decide(&mut self, store: &Store, _: &LoopCtx, now: Millis) -> (Vec<Command>, Option<Millis>) {
        // A store not yet initialised gets its ring with `InitCluster`.
        if store.cluster.id.is_empty() || !store.cluster.gossip_keys.is_empty() {
            (self.tried, self.last) = (0, None);
            return (vec![], None);
        }
        if let Some(last) = self.last {
            let wait = RETRY.delay(self.tried.saturating_sub(1)).as_millis() as Millis;
            let due = last.saturating_add(wait);
            if now < due {
                return (vec![], Some(due));
            }
        }
        tracing::info!("the cluster has no gossip key (made by an older shoal?): proposing the first one");
        self.tried = self.tried.saturating_add(1);
        self.last = Some(now);
        (vec![Command::RotateGossipKey { key: (self.fresh)(), at: now }], None)
    }
}

#[cfg(test)]
mod tests;
