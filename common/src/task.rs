//! Tasks and their forward-only state machine, as in Swarm: a task moves
//! NEW → PENDING → ASSIGNED → ACCEPTED → PREPARING → READY → STARTING →
//! RUNNING and ends in one of COMPLETE, SHUTDOWN, FAILED, REJECTED, ORPHANED.
//! A finished task is never restarted; the orchestrator makes a new one in
//! the same slot.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::container::Health;
use crate::ids::{NodeId, ServiceId, TaskId};
use crate::mesh::HostPort;
use crate::network::TaskAddress;
use crate::spec::TaskTemplate;
use crate::time::Millis;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskState {
    New,
    Pending,
    Assigned,
    Accepted,
    Preparing,
    Ready,
    Starting,
    Running,
    Complete,
    Shutdown,
    Failed,
    Rejected,
    Orphaned,
}

impl TaskState {
    pub const ALL: [TaskState; 13] = [
        TaskState::New,
        TaskState::Pending,
        TaskState::Assigned,
        TaskState::Accepted,
        TaskState::Preparing,
        TaskState::Ready,
        TaskState::Starting,
        TaskState::Running,
        TaskState::Complete,
        TaskState::Shutdown,
        TaskState::Failed,
        TaskState::Rejected,
        TaskState::Orphaned,
    ];

    pub fn is_terminal(self) -> bool {
        self > TaskState::Running
    }

    /// Forward only: a state may move to any later one, and never out of a
    /// terminal state.
    pub fn can_advance_to(self, next: TaskState) -> bool {
        !self.is_terminal() && next > self
    }

    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::New => "new",
            TaskState::Pending => "pending",
            TaskState::Assigned => "assigned",
            TaskState::Accepted => "accepted",
            TaskState::Preparing => "preparing",
            TaskState::Ready => "ready",
            TaskState::Starting => "starting",
            TaskState::Running => "running",
            TaskState::Complete => "complete",
            TaskState::Shutdown => "shutdown",
            TaskState::Failed => "failed",
            TaskState::Rejected => "rejected",
            TaskState::Orphaned => "orphaned",
        }
    }

    /// "Running", "Preparing" — as `service ps` capitalises it.
    pub fn title(self) -> String {
        let s = self.as_str();
        let mut c = s.chars();
        match c.next() {
            Some(f) => f.to_ascii_uppercase().to_string() + c.as_str(),
            None => String::new(),
        }
    }
}

impl fmt::Display for TaskState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskStatus {
    pub state: TaskState,
    /// When the task entered `state`.
    pub timestamp: Millis,
    #[serde(default)]
    pub message: String,
    /// Why the task failed or cannot be placed.
    #[serde(default)]
    pub err: Option<String>,
    #[serde(default)]
    pub exit_code: Option<i64>,
    #[serde(default)]
    pub container_id: Option<String>,
    /// Where the task's target ports are reachable on its node.
    #[serde(default)]
    pub ports: Vec<HostPort>,
    /// Docker's verdict on a container with a health check (`None`: it has
    /// none). A task with a check turns RUNNING only once healthy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<Health>,
    /// The container's own address, when it has exactly one network: the
    /// routing mesh of its node sends ingress connections straight there
    /// (not through the host port), so the task sees the client's address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_addr: Option<std::net::IpAddr>,
}

impl TaskStatus {
    pub fn new(state: TaskState, timestamp: Millis, message: &str) -> Self {
        TaskStatus {
            state,
            timestamp,
            message: message.to_string(),
            err: None,
            exit_code: None,
            container_id: None,
            ports: vec![],
            health: None,
            container_addr: None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Task {
    pub id: TaskId,
    pub service_id: ServiceId,
    /// Copied from the service so that a worker can name containers without
    /// the service record.
    pub service_name: String,
    pub slot: u64,
    pub node_id: Option<NodeId>,
    /// The template this task runs: a copy, so later updates to the service
    /// do not change a running task.
    pub spec: TaskTemplate,
    pub desired_state: TaskState,
    pub status: TaskStatus,
    pub created_at: Millis,
    /// How many tasks of this slot failed or ended before this one since the
    /// slot was (re)filled; counts restart attempts.
    #[serde(default)]
    pub attempt: u64,
    /// The task's address on each of its networks, given when it is
    /// assigned to a node.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<TaskAddress>,
    /// A job's task: the run of the job it belongs to (the service's
    /// `job_iteration` when the task was made). `None` for a service's task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_iteration: Option<u64>,
}

impl Task {
    /// `name.slot` as in `service ps`; `name.node-id` for a global
    /// service's task (slot 0).
    pub fn name(&self) -> String {
        match (&self.node_id, self.slot) {
            (Some(node), 0) => format!("{}.{}", self.service_name, node),
            _ => format!("{}.{}", self.service_name, self.slot),
        }
    }

    /// The node the task was given to: set once the scheduler placed it (or,
    /// for a task that names its node, admitted it there), i.e. from
    /// ASSIGNED on. Before that a global task's `node_id` is only the node it
    /// is meant for: nothing of it runs there yet.
    pub fn assigned_node(&self) -> Option<&NodeId> {
        self.node_id.as_ref().filter(|_| self.status.state >= TaskState::Assigned)
    }

    /// Counts toward the service's replicas: meant to run and not finished.
    pub fn is_active(&self) -> bool {
        self.desired_state == TaskState::Running && !self.status.state.is_terminal()
    }

    /// The desired state as Swarm shows it: a job's task is meant to
    /// complete (shoal keeps it `Running` inside, which is what the node
    /// acts on: run it until it exits).
    pub fn shown_desired_state(&self) -> TaskState {
        match self.desired_state {
            TaskState::Running if self.job_iteration.is_some() => TaskState::Complete,
            s => s,
        }
    }
}

/// A worker's report on one task.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskStatusUpdate {
    pub task_id: TaskId,
    pub status: TaskStatus,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_only_move_forward() {
        use TaskState::*;
        assert!(New.can_advance_to(Pending));
        assert!(Assigned.can_advance_to(Running));
        assert!(Running.can_advance_to(Failed));
        assert!(Preparing.can_advance_to(Rejected));
        assert!(!Running.can_advance_to(Starting));
        assert!(!Running.can_advance_to(Running));
        for terminal in [Complete, Shutdown, Failed, Rejected, Orphaned] {
            assert!(terminal.is_terminal());
            for next in TaskState::ALL {
                assert!(!terminal.can_advance_to(next), "{terminal} -> {next}");
            }
        }
        assert!(!Running.is_terminal());
    }

    #[test]
    fn titles() {
        assert_eq!(TaskState::Running.title(), "Running");
        assert_eq!(TaskState::New.title(), "New");
    }
}
