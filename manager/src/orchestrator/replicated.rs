//! Pure reconciliation of replicated services: desired replicas → tasks per
//! slot. A finished task is never restarted: the slot gets a new task as the
//! restart policy allows ([`super::restart`]). A task on a drained, removed
//! or down node is replaced at once, without the restart delay. A changed
//! template rolls over the slots ([`super::update`]). History per slot is
//! bounded.

use std::collections::BTreeMap;

use common::task::{Task, TaskState};
use common::time::Millis;
use common::{NodeId, TaskId};

use super::task::{self, evict, keep_newest, lost, prune, restart_after, roll, Batch, Pass, Unit};
use crate::store::Service;

fn new_task(svc: &Service, slot: u64, attempt: u64, now: Millis, id: TaskId) -> Task {
    task::new_task(svc, slot, None, attempt, now, id)
}

pub fn reconcile_service(pass: &mut Pass, svc: &Service, tasks: &[&Task], b: &mut Batch) {
    let Pass { store, health, now, params, ref mut new_id } = *pass;
    let replicas = svc.spec.mode.replicas() as usize;
    let mut slots: BTreeMap<u64, Vec<&Task>> = BTreeMap::new();
    for t in tasks {
        slots.entry(t.slot).or_default().push(t);
    }
    for list in slots.values_mut() {
        list.sort_by_key(|t| (t.created_at, t.id.clone()));
    }

    // Scale down: remove whole slots, first those with nothing running, then
    // from the nodes running most tasks of this service.
    if slots.len() > replicas {
        let mut load: BTreeMap<NodeId, usize> = BTreeMap::new();
        for t in tasks.iter().filter(|t| t.is_active()) {
            if let Some(n) = &t.node_id {
                *load.entry(n.clone()).or_default() += 1;
            }
        }
        let running_on = |list: &[&Task]| -> Option<NodeId> {
            list.iter().rev().find(|t| t.is_active()).and_then(|t| t.node_id.clone())
        };
        for _ in 0..slots.len() - replicas {
            let victim = slots
                .iter()
                .max_by_key(|(slot, list)| match running_on(list) {
                    None => (1usize, usize::MAX, **slot),
                    Some(n) => (0, load.get(&n).copied().unwrap_or(0), **slot),
                })
                .map(|(s, _)| *s)
                .expect("more slots than replicas means at least one slot");
            let list = slots.remove(&victim).unwrap_or_default();
            if let Some(n) = running_on(&list) {
                if let Some(c) = load.get_mut(&n) {
                    *c = c.saturating_sub(1);
                }
            }
            b.delete.extend(list.iter().map(|t| t.id.clone()));
        }
    }

    // Scale up: fill the lowest free slot numbers.
    let mut slot = 1u64;
    let mut added = 0;
    while slots.len() + added < replicas {
        if !slots.contains_key(&slot) {
            b.create.push(new_task(svc, slot, 0, now, new_id()));
            added += 1;
        }
        slot += 1;
    }

    let order = svc.rollout_config().order;
    let mut keys: Vec<u64> = Vec::new();
    let mut units: Vec<Unit> = Vec::new();
    for (slot, list) in &slots {
        let mut active: Vec<&Task> = Vec::new();
        let mut evicted = false;
        for t in list.iter().filter(|t| t.is_active()) {
            match lost(store, health, t) {
                Some(why) => {
                    evict(b, t, why, now);
                    evicted = true;
                }
                None => active.push(t),
            }
        }
        let active = keep_newest(b, active, order);
        if active.is_empty() {
            let latest = list.last().expect("a slot has at least one task");
            if evicted {
                // Lost with its node: replaced now, no restart delay.
                b.create.push(new_task(svc, *slot, latest.attempt, now, new_id()));
            } else if latest.desired_state == TaskState::Running && latest.status.state.is_terminal() {
                restart_after(b, svc, latest, list, now, |attempt| new_task(svc, *slot, attempt, now, new_id()));
            }
        }
        prune(b, list, params.history_limit);
        keys.push(*slot);
        units.push(Unit { active, all: list.clone() });
    }
    roll(b, svc, &keys, &units, now, |slot| new_task(svc, *slot, 0, now, new_id()));
}
