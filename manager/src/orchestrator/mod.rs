//! Orchestrator: turns services into tasks (per slot, replicated mode),
//! replaces finished tasks as the restart policy allows, prunes history.
//! The decisions live in [`replicated`]; this is the thin loop around them.

pub mod global;
pub mod replicated;
pub mod restart;
pub mod update;

use common::time::Millis;
use common::TaskId;

use crate::control::{Decide, LoopCtx};
use crate::store::{Command, Store};
use replicated::NodeHealth;

/// How long a node may be missing from gossip before its tasks are
/// replaced elsewhere — counted from when the node joined and from when
/// this manager became the leader, so that a fresh leader, whose gossip
/// has not yet heard everyone, does not call live nodes dead.
pub const DOWN_GRACE_MS: Millis = 2_000;

#[derive(Default)]
pub struct Orchestrator {
    pub params: replicated::Params,
}

/// Nodes to treat as down, and when the next one may become so.
pub fn health(store: &Store, ctx: &LoopCtx, now: Millis) -> (NodeHealth, Option<Millis>) {
    let mut h = NodeHealth::default();
    let mut wake: Option<Millis> = None;
    for n in store.nodes.values().filter(|n| !ctx.live.contains(&n.id)) {
        let from = ctx.leader_since.max(n.created_at).saturating_add(DOWN_GRACE_MS);
        if now >= from {
            h.down.insert(n.id.clone());
        } else {
            wake = Some(wake.map_or(from, |w: Millis| w.min(from)));
        }
    }
    (h, wake)
}

impl Decide for Orchestrator {
    fn name(&self) -> &'static str {
        "orchestrator"
    }
    fn decide(&mut self, store: &Store, ctx: &LoopCtx, now: Millis) -> (Vec<Command>, Option<Millis>) {
        let (health, grace_wake) = health(store, ctx, now);
        let d = replicated::reconcile(store, &health, now, &self.params, &mut TaskId::random);
        let wake = match (d.wake_at, grace_wake) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        (d.commands, wake)
    }
}
