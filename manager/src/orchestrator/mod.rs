//! Orchestrator: turns services into tasks (per slot in replicated mode,
//! per node in global mode), replaces finished tasks as the restart policy
//! allows, prunes history. It decides which tasks exist; where a task runs
//! is the scheduler's decision alone, even for a global task that names its
//! node (the scheduler admits it there or explains why not).
//!
//! Layout: this module is the thin loop and the per-mode dispatch
//! ([`reconcile`]); [`replicated`], [`global`] and [`job`] (both job modes)
//! reconcile one service of their mode; both use the shared task helpers in [`task`], never each
//! other; [`restart`] and [`update`] are the restart policy and the rolling
//! update planner.

pub mod global;
pub mod job;
pub mod rebalance;
pub mod replicated;
pub mod restart;
pub mod task;
pub mod update;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;

use common::spec::ServiceMode;
use common::task::Task;
use common::time::Millis;
use common::{ServiceId, TaskId};

use crate::control::{Decide, LoopCtx};
use crate::store::{Command, Store};
use task::{Batch, NodeHealth, Params, Pass};

/// How long a node may be missing from the live set (gossip, and a session
/// with the leader: [`crate::liveness`]) before its tasks are
/// replaced elsewhere — counted from when the node joined and from when
/// this manager became the leader, so that a fresh leader, whose gossip
/// has not yet heard everyone, does not call live nodes dead.
pub const DOWN_GRACE_MS: Millis = 2_000;

#[derive(Debug, Default, PartialEq)]
pub struct Decision {
    pub commands: Vec<Command>,
    /// When to look again (a restart delay, an update delay or monitor).
    pub wake_at: Option<Millis>,
}

#[derive(Default)]
pub struct Orchestrator {
    pub params: Params,
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

/// The commands that move every service toward its spec.
pub fn reconcile(
    store: &Store,
    health: &NodeHealth,
    now: Millis,
    params: &Params,
    new_id: &mut dyn FnMut() -> TaskId,
) -> Decision {
    let mut b = Batch::default();
    // One pass over the tasks, not one per service.
    let mut by_service: BTreeMap<&ServiceId, Vec<&Task>> = BTreeMap::new();
    for t in store.tasks.values() {
        by_service.entry(&t.service_id).or_default().push(t);
    }
    let mut pass = Pass { store, health, now, params, new_id };
    for svc in store.services.values() {
        let tasks = by_service.remove(&svc.id).unwrap_or_default();
        match svc.spec.mode {
            ServiceMode::Replicated { .. } => replicated::reconcile_service(&mut pass, svc, &tasks, &mut b),
            ServiceMode::Global => global::reconcile_service(&mut pass, svc, &tasks, &mut b),
            ServiceMode::ReplicatedJob { .. } => job::reconcile_replicated(&mut pass, svc, &tasks, &mut b),
            ServiceMode::GlobalJob => job::reconcile_global(&mut pass, svc, &tasks, &mut b),
        }
    }
    b.into_decision()
}

impl Decide for Orchestrator {
    fn name(&self) -> &'static str {
        "orchestrator"
    }
    fn decide(&mut self, store: &Store, ctx: &LoopCtx, now: Millis) -> (Vec<Command>, Option<Millis>) {
        let (health, grace_wake) = health(store, ctx, now);
        let d = reconcile(store, &health, now, &self.params, &mut TaskId::random);
        let wake = match (d.wake_at, grace_wake) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        (d.commands, wake)
    }
}
