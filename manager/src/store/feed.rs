//! The store's change feed: what each apply changed, in keys, so that the
//! leader's loops (dispatcher, scheduler, orchestrator) redo only what a
//! change touches instead of rereading every task.
//!
//! Every apply that changed something pushes one [`Delta`] with the next
//! sequence number. The feed keeps the latest deltas in a ring bounded by
//! the items they name ([`Feed::CAPACITY`]). A consumer keeps a [`Cursor`]
//! (which feed, and the last sequence number it has seen) and asks
//! [`Feed::since`] for what came after it; the answer is `None` when it
//! cannot be told: no cursor yet (the consumer's start, or its becoming
//! leader), a cursor of another feed (the store was rebuilt from a
//! snapshot: each store starts a feed of its own) or one that fell off the
//! ring. `None` means: recompute everything from the store.
//!
//! The feed is never serialised and takes no part in the store's equality;
//! a clone of a store starts a feed of its own.

use std::collections::{BTreeSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};

use common::task::{Task, TaskState};
use common::{NodeId, ServiceId, TaskId};

use super::Command;

/// A task as it was before a change touched it: enough to tell what it
/// counted for (its node, whether it was active there) without the task.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskWas {
    pub service: ServiceId,
    pub node: Option<NodeId>,
    pub state: TaskState,
    pub desired: TaskState,
}

impl TaskWas {
    pub fn of(t: &Task) -> Self {
        TaskWas {
            service: t.service_id.clone(),
            node: t.node_id.clone(),
            state: t.status.state,
            desired: t.desired_state,
        }
    }

    /// [`Task::assigned_node`] of the task as it was.
    pub fn assigned_node(&self) -> Option<&NodeId> {
        self.node.as_ref().filter(|_| self.state >= TaskState::Assigned)
    }

    /// [`Task::is_active`] of the task as it was.
    pub fn is_active(&self) -> bool {
        self.desired == TaskState::Running && !self.state.is_terminal()
    }
}

/// One write of a task: inserted, changed or removed.
#[derive(Clone, Debug, PartialEq)]
pub struct TaskTouch {
    pub id: TaskId,
    /// The task before this write; `None`: it did not exist.
    pub before: Option<TaskWas>,
    /// The task this write removed, if it removed it (a consumer that
    /// counted it takes it back from this).
    pub removed: Option<Box<Task>>,
}

impl TaskTouch {
    /// The service of the task, before or as removed.
    pub fn service(&self) -> Option<&ServiceId> {
        self.before.as_ref().map(|b| &b.service).or(self.removed.as_ref().map(|t| &t.service_id))
    }
}

/// What one apply may have changed. Tasks are named with every write; the
/// other objects by id or by a flag, as the command names them (a command
/// that failed may still be listed: a consumer then recomputes for nothing).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Delta {
    pub tasks: Vec<TaskTouch>,
    /// Services created, changed or removed.
    pub services: BTreeSet<ServiceId>,
    /// Nodes added, changed (availability, labels, role, description) or removed.
    pub nodes: BTreeSet<NodeId>,
    /// Networks (or the node blocks of one) changed.
    pub networks: bool,
    /// Secrets or configs changed.
    pub files: bool,
    /// The cluster object changed (tokens, gossip keys, revoked nodes).
    pub cluster: bool,
    /// The list of nodes without a session changed.
    pub no_session: bool,
}

impl Delta {
    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
            && self.services.is_empty()
            && self.nodes.is_empty()
            && !self.networks
            && !self.files
            && !self.cluster
            && !self.no_session
    }

    /// How many items the delta names (what the ring is bounded by).
    fn items(&self) -> usize {
        1 + self.tasks.len() + self.services.len() + self.nodes.len()
    }
}

/// Where a consumer is in a feed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cursor {
    feed: u64,
    seq: u64,
}

/// Each feed gets its own number, so a cursor never reads another's deltas.
static NEXT_FEED: AtomicU64 = AtomicU64::new(1);

#[derive(Debug)]
pub struct Feed {
    id: u64,
    /// The sequence number of the last delta pushed (0: none yet).
    seq: u64,
    ring: VecDeque<(u64, Delta)>,
    items: usize,
    capacity: usize,
}

impl Default for Feed {
    fn default() -> Self {
        Feed::with_capacity(Feed::CAPACITY)
    }
}

impl Clone for Feed {
    /// A feed of its own: the clone's changes are not the original's.
    fn clone(&self) -> Self {
        Feed::with_capacity(self.capacity)
    }
}

impl PartialEq for Feed {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Feed {
    /// Items the ring holds at most: a consumer that is further behind
    /// recomputes everything (a few dozen MB at most).
    pub const CAPACITY: usize = 200_000;

    pub fn with_capacity(capacity: usize) -> Self {
        Feed { id: NEXT_FEED.fetch_add(1, Ordering::Relaxed), seq: 0, ring: VecDeque::new(), items: 0, capacity }
    }

    /// Records one apply's changes (nothing for an empty delta).
    pub fn push(&mut self, delta: Delta) {
        if delta.is_empty() {
            return;
        }
        self.seq += 1;
        self.items += delta.items();
        self.ring.push_back((self.seq, delta));
        while self.items > self.capacity {
            match self.ring.pop_front() {
                Some((_, d)) => self.items -= d.items(),
                None => break,
            }
        }
    }

    /// Where the feed is now: what a consumer keeps once it has seen it all.
    pub fn cursor(&self) -> Cursor {
        Cursor { feed: self.id, seq: self.seq }
    }

    /// The deltas after `cursor`, oldest first; `None` when they cannot be
    /// told (see the module doc): then recompute everything.
    pub fn since(&self, cursor: Option<Cursor>) -> Option<impl Iterator<Item = &Delta> + '_> {
        let c = cursor?;
        if c.feed != self.id || c.seq > self.seq {
            return None;
        }
        let first = self.ring.front().map_or(self.seq + 1, |(s, _)| *s);
        if c.seq + 1 < first {
            return None;
        }
        let skip = (c.seq + 1 - first) as usize;
        Some(self.ring.iter().skip(skip).map(|(_, d)| d))
    }
}

/// Notes in `delta` the objects other than tasks that `cmd` may write
/// (the tasks note their own writes). One arm per command, so that a new
/// one has to say.
pub(super) fn note_keys(cmd: &Command, delta: &mut Delta) {
    match cmd {
        Command::InitCluster(_) | Command::RotateJoinToken { .. } | Command::RotateGossipKey { .. } => {
            delta.cluster = true
        }
        Command::AddNode(n) => {
            delta.nodes.insert(n.id.clone());
        }
        Command::SetNodeAvailability { id, .. }
        | Command::UpdateNodeLabels { id, .. }
        | Command::SetNodeRole { id, .. }
        | Command::SetNodeDescription { id, .. } => {
            delta.nodes.insert(id.clone());
        }
        Command::RemoveNode(id) => {
            delta.nodes.insert(id.clone());
            delta.cluster = true;
            delta.networks = true;
        }
        Command::CreateService(svc) => {
            delta.services.insert(svc.id.clone());
            delta.networks = true;
        }
        Command::UpdateService { id, .. } | Command::RollbackService { id, .. } | Command::RemoveService(id) => {
            delta.services.insert(id.clone());
            delta.networks = true;
        }
        Command::RebalanceService { id, .. } | Command::SetUpdateStatus { id, .. } => {
            delta.services.insert(id.clone());
        }
        // Node blocks of networks may be given out.
        Command::AssignTasks(_) => delta.networks = true,
        Command::CreateTasks(_)
        | Command::MarkUnplaceable(_)
        | Command::SetDesiredState { .. }
        | Command::UpdateTaskStatus(_)
        | Command::DeleteTasks(_) => {}
        Command::Batch(cmds) => cmds.iter().for_each(|c| note_keys(c, delta)),
        Command::SetNoSession(_) => delta.no_session = true,
        Command::CreateSecret(_)
        | Command::UpdateSecret(_)
        | Command::RemoveSecret(_)
        | Command::CreateConfig(_)
        | Command::UpdateConfig(_)
        | Command::RemoveConfig(_) => delta.files = true,
        Command::CreateNetwork { .. } | Command::RemoveNetwork(_) => delta.networks = true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delta(service: &str) -> Delta {
        Delta { services: [ServiceId::from(service)].into(), ..Default::default() }
    }

    fn seen(feed: &Feed, c: Option<Cursor>) -> Option<Vec<String>> {
        feed.since(c).map(|ds| ds.flat_map(|d| d.services.iter().map(|s| s.to_string())).collect())
    }

    #[test]
    fn a_consumer_reads_what_came_after_its_cursor() {
        let mut feed = Feed::default();
        assert_eq!(seen(&feed, None), None, "no cursor: recompute");
        let start = feed.cursor();
        assert_eq!(seen(&feed, Some(start)), Some(vec![]));
        feed.push(delta("a"));
        feed.push(Delta::default());
        feed.push(delta("b"));
        assert_eq!(seen(&feed, Some(start)), Some(vec!["a".into(), "b".into()]), "the empty delta is not kept");
        let mid = feed.cursor();
        feed.push(delta("c"));
        assert_eq!(seen(&feed, Some(mid)), Some(vec!["c".into()]));
        assert_eq!(seen(&feed, Some(feed.cursor())), Some(vec![]));
    }

    #[test]
    fn a_cursor_that_fell_off_the_ring_or_is_of_another_feed_recomputes() {
        let mut feed = Feed::with_capacity(4);
        let start = feed.cursor();
        feed.push(delta("a"));
        let after_a = feed.cursor();
        feed.push(delta("b"));
        assert_eq!(seen(&feed, Some(start)), Some(vec!["a".into(), "b".into()]));
        // Each delta of one service counts two items: the third pushes the first out.
        feed.push(delta("c"));
        assert_eq!(seen(&feed, Some(start)), None, "fell off");
        assert_eq!(seen(&feed, Some(after_a)), Some(vec!["b".into(), "c".into()]));
        // A delta larger than the ring: nobody behind it can be told.
        let c = feed.cursor();
        feed.push(Delta { services: ["x", "y", "z", "w"].map(ServiceId::from).into(), ..Default::default() });
        assert_eq!(seen(&feed, Some(c)), None);
        assert_eq!(seen(&feed, Some(feed.cursor())), Some(vec![]));

        let other = Feed::default();
        assert_eq!(seen(&other, Some(feed.cursor())), None, "another feed (a store rebuilt from a snapshot)");
        assert_eq!(seen(&feed.clone(), Some(feed.cursor())), None, "a clone starts its own");
    }

    #[test]
    fn what_a_task_was_answers_as_the_task_did() {
        let spec = common::spec::ServiceSpec::new("s", 1, common::spec::TaskTemplate::new("img"));
        let mut t = Task {
            id: "t".into(),
            service_id: "s".into(),
            service_name: "s".into(),
            slot: 1,
            node_id: Some("n".into()),
            spec: spec.task,
            desired_state: TaskState::Running,
            status: common::task::TaskStatus::new(TaskState::New, 0, ""),
            created_at: 0,
            attempt: 0,
            addresses: vec![],
            job_iteration: None,
        };
        for state in [TaskState::New, TaskState::Assigned, TaskState::Running, TaskState::Failed] {
            for desired in [TaskState::Running, TaskState::Shutdown] {
                t.status.state = state;
                t.desired_state = desired;
                let was = TaskWas::of(&t);
                assert_eq!(was.assigned_node(), t.assigned_node());
                assert_eq!(was.is_active(), t.is_active());
            }
        }
    }
}
