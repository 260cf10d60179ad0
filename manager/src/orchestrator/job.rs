//! Pure reconciliation of jobs (`--mode replicated-job` and `global-job`):
//! tasks that run to completion, as swarmkit's `orchestrator/jobs` runs
//! them.
//!
//! - A run of a job is an *iteration*: every update of a job (`service
//!   update --force` included) bumps the service's `job_iteration` and runs
//!   it again from the start; tasks of older iterations are stopped and
//!   only count as history.
//! - A task that exits 0 is COMPLETE and is never replaced. One that fails
//!   is replaced in its slot (or on its node) as the restart policy allows,
//!   `any` meaning `on-failure` (a completed job is never rerun by the
//!   policy). One the policy gave up on leaves its slot failed: the job
//!   then never completes, as in Swarm, but it no longer holds one of the
//!   `max_concurrent` places, so the other slots still run.
//! - A replicated job runs at most `max_concurrent` tasks at once until
//!   `total_completions` slots are complete; a global job runs one task on
//!   every active node that meets the constraints, nodes that join later
//!   included.
//! - A task on a lost node is replaced at once (replicated) or stopped
//!   (global). Jobs have no rolling updates.

use std::collections::BTreeMap;

use common::constraint::all_match_described;
use common::node::Availability;
use common::spec::{RestartCondition, RestartPolicy, ServiceMode};
use common::task::{Task, TaskState};

use super::global::GLOBAL_SLOT;
use super::restart::{self, Restart};
use super::task::{self, evict, lost, prune, Batch, Pass};
use crate::store::Service;

/// Where one slot (or node) of the current iteration stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Unit {
    /// A task is meant to run there (or waits for its restart delay).
    Running,
    Complete,
    /// The restart policy gave up: the unit stays failed.
    GaveUp,
    /// Nothing there (never run, or stopped by shoal: drained, lost).
    Empty,
}

/// A job's restart policy: `any` acts as `on-failure`.
fn job_policy(svc: &Service) -> RestartPolicy {
    let mut p = svc.spec.task.restart;
    if p.condition == RestartCondition::Any {
        p.condition = RestartCondition::OnFailure;
    }
    p
}

/// One slot or node: stops what is lost (and, with `replace_lost`, starts
/// its successor now), restarts what failed as the policy allows, and says
/// where the unit stands. `list` is its current-iteration tasks, oldest
/// first; `successor(pass, attempt)` makes its next task.
fn settle(
    pass: &mut Pass,
    svc: &Service,
    list: &[&Task],
    b: &mut Batch,
    successor: &mut dyn FnMut(&mut Pass, u64) -> Task,
    replace_lost: bool,
) -> Unit {
    let mut running = false;
    let mut evicted: Option<u64> = None;
    for t in list.iter().filter(|t| t.is_active()) {
        match lost(pass.store, pass.health, t) {
            Some(why) => {
                evict(b, t, why, pass.now);
                evicted = Some(t.attempt);
            }
            None => running = true,
        }
    }
    if running {
        return Unit::Running;
    }
    match (evicted, replace_lost) {
        (Some(attempt), true) => {
            b.create.push(successor(pass, attempt));
            return Unit::Running;
        }
        (Some(_), false) => return Unit::Empty,
        (None, _) => {}
    }
    let Some(latest) = list.last() else { return Unit::Empty };
    match latest.status.state {
        TaskState::Complete => Unit::Complete,
        s if latest.desired_state == TaskState::Running && s.is_terminal() => {
            match restart::decide(&job_policy(svc), latest, list, pass.now) {
                Restart::Now => {
                    b.shutdown.push(latest.id.clone());
                    b.create.push(successor(pass, latest.attempt + 1));
                    Unit::Running
                }
                Restart::At(at) => {
                    b.wake(at);
                    Unit::Running
                }
                Restart::Never => {
                    b.shutdown.push(latest.id.clone());
                    Unit::GaveUp
                }
            }
        }
        TaskState::Failed | TaskState::Rejected => Unit::GaveUp,
        // Stopped by shoal (a drained or lost node), or never started.
        _ => Unit::Empty,
    }
}

/// This iteration's tasks by unit, oldest first; whatever is left of older
/// iterations (or outside the units) is stopped.
fn current<'a, K: Ord>(
    svc: &Service,
    tasks: &[&'a Task],
    b: &mut Batch,
    key: impl Fn(&Task) -> Option<K>,
) -> BTreeMap<K, Vec<&'a Task>> {
    let mut units: BTreeMap<K, Vec<&'a Task>> = BTreeMap::new();
    for t in tasks {
        match key(t) {
            Some(k) if t.job_iteration == Some(svc.job_iteration) => units.entry(k).or_default().push(t),
            _ if t.desired_state == TaskState::Running => b.stop(t),
            _ => {}
        }
    }
    for list in units.values_mut() {
        list.sort_by_key(|t| (t.created_at, t.id.clone()));
    }
    units
}

/// Bounds each slot's (or node's) history, over all iterations.
fn prune_all<K: Ord>(pass: &Pass, tasks: &[&Task], b: &mut Batch, key: impl Fn(&Task) -> K) {
    let mut all: BTreeMap<K, Vec<&Task>> = BTreeMap::new();
    for t in tasks {
        all.entry(key(t)).or_default().push(t);
    }
    for list in all.values_mut() {
        list.sort_by_key(|t| (t.created_at, t.id.clone()));
        prune(b, list, pass.params.history_limit);
    }
}

pub fn reconcile_replicated(pass: &mut Pass, svc: &Service, tasks: &[&Task], b: &mut Batch) {
    let ServiceMode::ReplicatedJob { total_completions, max_concurrent } = svc.spec.mode else { return };
    let slots = current(svc, tasks, b, |t| (1..=total_completions).contains(&t.slot).then_some(t.slot));
    let mut units: BTreeMap<u64, Unit> = BTreeMap::new();
    for (slot, list) in &slots {
        let slot = *slot;
        let mut successor = |p: &mut Pass, attempt: u64| task::new_task(svc, slot, None, attempt, p.now, (p.new_id)());
        units.insert(slot, settle(pass, svc, list, b, &mut successor, true));
    }
    let count = |u: Unit| units.values().filter(|x| **x == u).count() as u64;
    let running = count(Unit::Running);
    let room = max_concurrent.saturating_sub(running);
    let left = total_completions.saturating_sub(count(Unit::Complete) + count(Unit::GaveUp) + running);
    let free = (1..=total_completions).filter(|s| units.get(s).is_none_or(|u| *u == Unit::Empty));
    for slot in free.take(room.min(left) as usize) {
        b.create.push(task::new_task(svc, slot, None, 0, pass.now, (pass.new_id)()));
    }
    prune_all(pass, tasks, b, |t| t.slot);
}

pub fn reconcile_global(pass: &mut Pass, svc: &Service, tasks: &[&Task], b: &mut Batch) {
    let mut by_node = current(svc, tasks, b, |t| t.node_id.clone());
    for node in pass.store.nodes.values() {
        let list = by_node.remove(&node.id).unwrap_or_default();
        if node.availability == Availability::Drain {
            for t in list.iter().filter(|t| t.is_active()) {
                b.stop(t);
            }
            continue;
        }
        let store = pass.store;
        let wanted = node.availability == Availability::Active
            && !pass.health.down.contains(&node.id)
            && all_match_described(&svc.spec.task.constraints, node, store.descriptions.get(&node.id));
        let node_id = node.id.clone();
        let mut successor =
            |p: &mut Pass, attempt: u64| task::new_task(svc, GLOBAL_SLOT, Some(&node_id), attempt, p.now, (p.new_id)());
        if settle(pass, svc, &list, b, &mut successor, false) == Unit::Empty && wanted {
            b.create.push(successor(pass, 0));
        }
    }
    // Tasks on nodes no longer in the store.
    for list in by_node.values() {
        for t in list.iter().filter(|t| t.is_active()) {
            if let Some(why) = lost(pass.store, pass.health, t) {
                evict(b, t, why, pass.now);
            }
        }
    }
    prune_all(pass, tasks, b, |t| t.node_id.clone());
}
