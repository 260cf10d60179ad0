//! Pure reconciliation of global services: one task per eligible node
//! (ready as far as the orchestrator knows, not drained, constraints met).
//! A paused node keeps its task but gets no new one; a drained, down or
//! removed node loses its task, which is not replaced elsewhere.
//!
//! A new task names its node but starts NEW: the scheduler admits it there
//! through the same filters as any task (host ports included), or leaves it
//! PENDING with the reason.

use std::collections::BTreeMap;

use common::constraint::all_match_described;
use common::node::Availability;
use common::task::{Task, TaskState};
use common::time::Millis;
use common::{NodeId, TaskId};

use super::task::{self, evict, keep_newest, lost, prune, restart_after, roll, Batch, Pass, Unit};
use crate::store::Service;

/// Global tasks have no slot; their name is `service.node-id`.
pub const GLOBAL_SLOT: u64 = 0;

fn new_task(svc: &Service, node: &NodeId, attempt: u64, now: Millis, id: TaskId) -> Task {
    task::new_task(svc, GLOBAL_SLOT, Some(node), attempt, now, id)
}

pub fn reconcile_service(pass: &mut Pass, svc: &Service, tasks: &[&Task], b: &mut Batch) {
    let Pass { store, health, now, params, ref mut new_id } = *pass;
    let mut by_node: BTreeMap<&NodeId, Vec<&Task>> = BTreeMap::new();
    for t in tasks {
        if let Some(n) = &t.node_id {
            by_node.entry(n).or_default().push(t);
        }
    }
    for list in by_node.values_mut() {
        list.sort_by_key(|t| (t.created_at, t.id.clone()));
    }
    let order = svc.rollout_config().order;
    let mut keys: Vec<NodeId> = Vec::new();
    let mut units: Vec<Unit> = Vec::new();

    for node in store.nodes.values() {
        let list = by_node.remove(&node.id).unwrap_or_default();
        let eligible = !health.down.contains(&node.id)
            && node.availability != Availability::Drain
            && all_match_described(&svc.spec.task.constraints, node, store.descriptions.get(&node.id));
        let mut active: Vec<&Task> = Vec::new();
        for t in list.iter().filter(|t| t.is_active()) {
            match lost(store, health, t) {
                Some(why) => evict(b, t, why, now),
                None if !eligible => b.stop(t),
                None => active.push(t),
            }
        }
        let active = keep_newest(b, active, order);
        if eligible && active.is_empty() {
            match list.last() {
                // It ended by itself while meant to run: the restart policy decides.
                Some(latest) if latest.desired_state == TaskState::Running && latest.status.state.is_terminal() => {
                    restart_after(b, svc, latest, &list, now, |attempt| {
                        new_task(svc, &node.id, attempt, now, new_id())
                    });
                }
                // The policy gave up on this node.
                Some(latest)
                    if latest.desired_state > TaskState::Running
                        && matches!(
                            latest.status.state,
                            TaskState::Complete | TaskState::Failed | TaskState::Rejected
                        ) => {}
                // Nothing here yet, or only tasks we stopped (drain, node loss).
                _ if node.availability == Availability::Active => {
                    b.create.push(new_task(svc, &node.id, 0, now, new_id()));
                }
                _ => {}
            }
        }
        prune(b, &list, params.history_limit);
        if eligible {
            keys.push(node.id.clone());
            units.push(Unit { active, all: list });
        }
    }
    // Tasks on nodes no longer in the store.
    for list in by_node.values() {
        for t in list.iter().filter(|t| t.is_active()) {
            if let Some(why) = lost(store, health, t) {
                evict(b, t, why, now);
            }
        }
    }

    roll(b, svc, &keys, &units, now, |node| new_task(svc, node, 0, now, new_id()));
}
