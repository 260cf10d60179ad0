//! What both modes do to tasks (swarmkit keeps the same in
//! `manager/orchestrator/task.go`): make one, stop one, take one off a lost
//! node, bound the history, keep the newest of several, restart after the
//! policy's delay, roll over a changed template. [`super::replicated`] and
//! [`super::global`] use these and never each other.

use std::collections::BTreeSet;

use common::node::Availability;
use common::spec::UpdateOrder;
use common::task::{Task, TaskState, TaskStatus, TaskStatusUpdate};
use common::time::Millis;
use common::{NodeId, TaskId};

use super::restart::{self, Restart};
use super::update::{self, StatusChange};
use super::Decision;
use crate::store::{Command, Service, Store};

pub use super::update::Unit;

pub struct Params {
    /// Tasks kept per slot, the running one included (Swarm's default 5).
    pub history_limit: usize,
}

impl Default for Params {
    fn default() -> Self {
        Params { history_limit: 5 }
    }
}

/// What the orchestrator knows about nodes beyond the store.
#[derive(Debug, Default, Clone)]
pub struct NodeHealth {
    /// Nodes considered down (gossip lost them, past the grace period).
    pub down: BTreeSet<NodeId>,
}

/// What one reconcile pass reads, and where its new task ids come from:
/// the same for every service.
pub struct Pass<'a> {
    pub store: &'a Store,
    pub health: &'a NodeHealth,
    pub now: Millis,
    pub params: &'a Params,
    pub new_id: &'a mut dyn FnMut() -> TaskId,
}

/// A new task, NEW: a replicated one (`node` None) waits for the scheduler
/// to place it; a global one carries the node it is meant for and waits for
/// the scheduler to admit it there.
pub fn new_task(svc: &Service, slot: u64, node: Option<&NodeId>, attempt: u64, now: Millis, id: TaskId) -> Task {
    Task {
        id,
        service_id: svc.id.clone(),
        service_name: svc.spec.name.clone(),
        slot,
        node_id: node.cloned(),
        spec: svc.spec.task.clone(),
        desired_state: TaskState::Running,
        status: TaskStatus::new(TaskState::New, now, "created"),
        created_at: now,
        attempt,
        addresses: vec![],
        job_iteration: svc.spec.mode.is_job().then_some(svc.job_iteration),
    }
}

/// Meant for a node but not yet admitted there by the scheduler: nothing
/// of it runs anywhere.
fn never_admitted(t: &Task) -> bool {
    t.node_id.is_some() && t.assigned_node().is_none()
}

/// Collects the commands of one reconcile pass.
#[derive(Default)]
pub struct Batch {
    pub create: Vec<Task>,
    pub delete: Vec<TaskId>,
    pub shutdown: Vec<TaskId>,
    pub orphaned: Vec<TaskStatusUpdate>,
    pub other: Vec<Command>,
    pub wake_at: Option<Millis>,
}

impl Batch {
    pub fn wake(&mut self, at: Millis) {
        self.wake_at = Some(self.wake_at.map_or(at, |w| w.min(at)));
    }

    /// Stops a task. One its node never got (a global task the scheduler
    /// has not admitted) has nothing to stop and would stay PENDING for
    /// ever: it is deleted, as swarmkit's task reaper deletes tasks that
    /// were never assigned.
    pub fn stop(&mut self, t: &Task) {
        if never_admitted(t) {
            self.delete.push(t.id.clone());
        } else {
            self.shutdown.push(t.id.clone());
        }
    }

    pub fn into_decision(self) -> Decision {
        let mut commands = self.other;
        if !self.delete.is_empty() {
            commands.push(Command::DeleteTasks(self.delete));
        }
        if !self.orphaned.is_empty() {
            commands.push(Command::UpdateTaskStatus(self.orphaned));
        }
        if !self.shutdown.is_empty() {
            commands.push(Command::SetDesiredState { tasks: self.shutdown, state: TaskState::Shutdown });
        }
        if !self.create.is_empty() {
            commands.push(Command::CreateTasks(self.create));
        }
        Decision { commands, wake_at: self.wake_at }
    }

    pub fn status_change(&mut self, svc: &Service, change: StatusChange, now: Millis) {
        self.other.push(match change {
            StatusChange::Set(status) => Command::SetUpdateStatus { id: svc.id.clone(), status },
            StatusChange::Rollback { reason } => Command::RollbackService { id: svc.id.clone(), at: now, reason },
        });
    }
}

/// Why an active task can no longer stay where it is, if it cannot.
pub fn lost(store: &Store, health: &NodeHealth, t: &Task) -> Option<Lost> {
    let node = t.node_id.as_ref()?;
    match store.nodes.get(node) {
        None => Some(Lost::Down("node removed")),
        Some(_) if health.down.contains(node) => Some(Lost::Down("node down")),
        Some(n) if n.availability == Availability::Drain => Some(Lost::Drained),
        Some(_) => None,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lost {
    /// The node is gone: the task is ORPHANED; its node stops it if it returns.
    Down(&'static str),
    /// The node is drained: its worker stops the task.
    Drained,
}

/// Takes an active task off its lost node.
pub fn evict(b: &mut Batch, t: &Task, why: Lost, now: Millis) {
    b.stop(t);
    if let (Lost::Down(reason), false) = (why, never_admitted(t)) {
        let mut st = TaskStatus::new(TaskState::Orphaned, now, reason);
        st.err = Some(reason.to_string());
        b.orphaned.push(TaskStatusUpdate { task_id: t.id.clone(), status: st });
    }
}

/// Drops the oldest finished tasks beyond the history limit.
pub fn prune(b: &mut Batch, list: &[&Task], limit: usize) {
    let finished: Vec<&&Task> =
        list.iter().filter(|t| t.desired_state > TaskState::Running && t.status.state.is_terminal()).collect();
    let excess = list.len().saturating_sub(limit);
    b.delete.extend(finished.iter().take(excess).map(|t| t.id.clone()));
}

/// Several meant-to-run tasks in one unit (slot or node): the newest stays;
/// the older ones go once it runs (start-first) or at once (stop-first).
pub fn keep_newest<'a>(b: &mut Batch, active: Vec<&'a Task>, order: UpdateOrder) -> Vec<&'a Task> {
    match active.split_last() {
        Some((newest, older)) if !older.is_empty() => {
            if newest.status.state == TaskState::Running || order == UpdateOrder::StopFirst {
                for t in older {
                    b.stop(t);
                }
                vec![*newest]
            } else {
                active
            }
        }
        _ => active,
    }
}

/// A unit's newest task ended while meant to run: the restart policy says
/// when `successor(attempt)` replaces it.
pub fn restart_after(
    b: &mut Batch,
    svc: &Service,
    latest: &Task,
    history: &[&Task],
    now: Millis,
    successor: impl FnOnce(u64) -> Task,
) {
    match restart::decide(&svc.spec.task.restart, latest, history, now) {
        Restart::Now => {
            b.shutdown.push(latest.id.clone());
            b.create.push(successor(latest.attempt + 1));
        }
        Restart::At(at) => b.wake(at),
        Restart::Never => b.shutdown.push(latest.id.clone()),
    }
}

/// Runs the rolling-update planner over the units and carries out its step;
/// `fresh(key)` makes a unit's task on the current template.
pub fn roll<K>(
    b: &mut Batch,
    svc: &Service,
    keys: &[K],
    units: &[Unit],
    now: Millis,
    mut fresh: impl FnMut(&K) -> Task,
) {
    let rollout = update::plan(svc, units, now);
    if let Some(at) = rollout.wake_at {
        b.wake(at);
    }
    for i in rollout.start {
        let old = units[i].active.last().expect("an outdated unit has an active task");
        if svc.rollout_config().order == UpdateOrder::StopFirst {
            b.stop(old);
        }
        b.create.push(fresh(&keys[i]));
    }
    if let Some(change) = rollout.status {
        b.status_change(svc, change, now);
    }
}
