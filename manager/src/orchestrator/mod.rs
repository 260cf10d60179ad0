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

use std::collections::{BTreeMap, BTreeSet};

use common::spec::ServiceMode;
use common::task::Task;
use common::time::Millis;
use common::{NodeId, ServiceId, TaskId};

use crate::control::{Decide, LoopCtx};
use crate::store::feed::Cursor;
use crate::store::{Command, Service, Store};
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

/// The orchestrator's loop core. It reconciles only the services that a
/// change can concern, read from the store's change feed
/// ([`crate::store::feed`]): a service written, one whose tasks were,
/// every service with tasks on a node that changed or went down or came
/// back (and every global one), and those whose timer (a restart delay, an
/// update's delay or monitor) is due. When the feed cannot say (start, a
/// new term as leader, a store rebuilt from a snapshot, a failed proposal)
/// it reconciles them all.
#[derive(Default)]
pub struct Orchestrator {
    pub params: Params,
    cursor: Option<Cursor>,
    /// When each service asked to be looked at again.
    wake: BTreeMap<ServiceId, Millis>,
    /// The nodes down at the last look.
    down: BTreeSet<NodeId>,
    /// The term as leader the cursor belongs to.
    leader_since: Option<Millis>,
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
    let (d, _) = reconcile_some(store, store.services.values(), health, now, params, new_id);
    d
}

/// [`reconcile`] for some services only; also says when each of them
/// asked to be looked at again.
pub fn reconcile_some<'s>(
    store: &'s Store,
    services: impl IntoIterator<Item = &'s Service>,
    health: &NodeHealth,
    now: Millis,
    params: &Params,
    new_id: &mut dyn FnMut() -> TaskId,
) -> (Decision, Vec<(ServiceId, Option<Millis>)>) {
    let mut b = Batch::default();
    let mut wakes = Vec::new();
    let mut pass = Pass { store, health, now, params, new_id };
    for svc in services {
        // From the store's index by service, in id order.
        let tasks: Vec<&Task> = store.tasks_of(&svc.id).collect();
        let before = b.wake_at.take();
        match svc.spec.mode {
            ServiceMode::Replicated { .. } => replicated::reconcile_service(&mut pass, svc, &tasks, &mut b),
            ServiceMode::Global => global::reconcile_service(&mut pass, svc, &tasks, &mut b),
            ServiceMode::ReplicatedJob { .. } => job::reconcile_replicated(&mut pass, svc, &tasks, &mut b),
            ServiceMode::GlobalJob => job::reconcile_global(&mut pass, svc, &tasks, &mut b),
        }
        wakes.push((svc.id.clone(), b.wake_at));
        b.wake_at = match (before, b.wake_at) {
            (Some(a), Some(w)) => Some(a.min(w)),
            (a, w) => a.or(w),
        };
    }
    (b.into_decision(), wakes)
}

impl Orchestrator {
    /// The services a change since the last look can concern; `None`: all.
    fn dirty(&mut self, store: &Store, health: &NodeHealth, now: Millis) -> Option<BTreeSet<ServiceId>> {
        let deltas = store.feed.since(self.cursor);
        self.cursor = Some(store.feed.cursor());
        let deltas = deltas?;
        let mut dirty = BTreeSet::new();
        let mut nodes: BTreeSet<&NodeId> = self.down.symmetric_difference(&health.down).collect();
        for d in deltas {
            dirty.extend(d.services.iter().cloned());
            nodes.extend(d.nodes.iter());
            for touch in &d.tasks {
                dirty.extend(touch.service().cloned());
                if let Some(t) = store.tasks.get(&touch.id) {
                    dirty.insert(t.service_id.clone());
                }
            }
        }
        if !nodes.is_empty() {
            for svc in store.services.values().filter(|s| s.spec.mode.is_global()) {
                dirty.insert(svc.id.clone());
            }
            for n in nodes {
                dirty.extend(store.tasks_on(n).map(|t| t.service_id.clone()));
            }
        }
        dirty.extend(self.wake.iter().filter(|(_, at)| **at <= now).map(|(s, _)| s.clone()));
        Some(dirty)
    }
}

impl Decide for Orchestrator {
    fn name(&self) -> &'static str {
        "orchestrator"
    }
    fn decide(&mut self, store: &Store, ctx: &LoopCtx, now: Millis) -> (Vec<Command>, Option<Millis>) {
        self.decide_with(store, ctx, now, &mut TaskId::random)
    }

    fn failed(&mut self) {
        // Whether the proposal applied is unknown: look at everything.
        self.cursor = None;
    }
}

impl Orchestrator {
    /// [`Decide::decide`], with new task ids from `new_id`.
    pub fn decide_with(
        &mut self,
        store: &Store,
        ctx: &LoopCtx,
        now: Millis,
        new_id: &mut dyn FnMut() -> TaskId,
    ) -> (Vec<Command>, Option<Millis>) {
        if self.leader_since != Some(ctx.leader_since) {
            self.leader_since = Some(ctx.leader_since);
            self.cursor = None;
        }
        let (health, grace_wake) = health(store, ctx, now);
        let dirty = self.dirty(store, &health, now);
        self.down = health.down.clone();
        let (d, wakes) = match &dirty {
            None => {
                self.wake.clear();
                reconcile_some(store, store.services.values(), &health, now, &self.params, new_id)
            }
            Some(ids) => {
                let services = ids.iter().filter_map(|id| store.services.get(id));
                reconcile_some(store, services, &health, now, &self.params, new_id)
            }
        };
        for id in dirty.iter().flatten() {
            self.wake.remove(id);
        }
        for (id, at) in wakes {
            match at {
                Some(at) => drop(self.wake.insert(id, at)),
                None => drop(self.wake.remove(&id)),
            }
        }
        let wake = self.wake.values().copied().chain(grace_wake).min();
        (d.commands, wake)
    }
}
