//! What the dispatcher sends each session after a store change, computed
//! from the store's change feed ([`crate::store::feed`]) rather than from
//! every node's whole set: only the nodes a changed task was or is on are
//! looked at, and only their changed tasks; the mesh table only when a
//! change can reach it (a service, a node, a network, or a task of a
//! service that publishes ingress ports or joins a network).
//!
//! [`Tracker::take`] reads the feed from its cursor; when the feed cannot
//! say (start, a store rebuilt from a snapshot, a cursor that fell off the
//! ring) everything is dirty and every session gets a diff against its
//! whole set. What a session was sent is kept as task ids only
//! ([`Sent`]): the feed says which tasks changed, so the contents need
//! not be compared.

use std::collections::{BTreeSet, HashMap, HashSet};

use common::mesh::PublishMode;
use common::task::{Task, TaskState};
use common::{NodeId, TaskId};

use crate::store::feed::Cursor;
use crate::store::{Service, Store};

/// A node's assignment set, from the store's index by node. An ORPHANED
/// task was given up with its node: the node no longer holds it, so on its
/// return it stops and removes the container. A task that names the node
/// but was not admitted there yet (a global task the scheduler holds
/// PENDING) is not the node's either.
pub fn belongs(t: &Task, node: &NodeId) -> bool {
    t.status.state != TaskState::Orphaned && t.assigned_node() == Some(node)
}

pub fn assignment_set<'a>(store: &'a Store, node: &'a NodeId) -> impl Iterator<Item = &'a Task> + 'a {
    store.tasks_on(node).filter(move |t| belongs(t, node))
}

/// Whether the mesh table reads the tasks of `svc`.
pub fn in_mesh(svc: &Service) -> bool {
    !svc.spec.task.networks.is_empty()
        || svc.spec.task.ports.iter().any(|p| p.mode == PublishMode::Ingress && p.published.is_some())
}

/// What changed since the last [`Tracker::take`].
#[derive(Debug, Default)]
pub struct Dirty {
    /// Everything: the feed could not say.
    pub all: bool,
    /// The changed tasks per node they were or are on.
    pub nodes: HashMap<NodeId, BTreeSet<TaskId>>,
    pub mesh: bool,
    /// Secrets or configs changed.
    pub files: bool,
}

/// Reads the store's change feed from where it last stopped.
#[derive(Debug, Default)]
pub struct Tracker {
    cursor: Option<Cursor>,
}

impl Tracker {
    /// Forget the cursor: the next [`Tracker::take`] says everything changed.
    pub fn reset(&mut self) {
        self.cursor = None;
    }

    pub fn take(&mut self, store: &Store) -> Dirty {
        let deltas = store.feed.since(self.cursor);
        self.cursor = Some(store.feed.cursor());
        let Some(deltas) = deltas else {
            return Dirty { all: true, mesh: true, files: true, ..Default::default() };
        };
        let mut d = Dirty::default();
        let mesh_service = |s: Option<&common::ServiceId>| s.and_then(|s| store.services.get(s)).is_some_and(in_mesh);
        for delta in deltas {
            d.mesh |= !delta.services.is_empty() || !delta.nodes.is_empty() || delta.networks;
            d.files |= delta.files;
            for touch in &delta.tasks {
                let now = store.tasks.get(&touch.id);
                let nodes = [
                    touch.before.as_ref().and_then(|b| b.node.as_ref()),
                    touch.removed.as_ref().and_then(|t| t.node_id.as_ref()),
                    now.and_then(|t| t.node_id.as_ref()),
                ];
                for n in nodes.into_iter().flatten() {
                    d.nodes.entry(n.clone()).or_default().insert(touch.id.clone());
                }
                if !d.mesh {
                    d.mesh = mesh_service(touch.service()) || mesh_service(now.map(|t| &t.service_id));
                }
            }
        }
        d
    }
}

/// What one session was sent of its node's set: the task ids.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Sent(pub Option<HashSet<TaskId>>);

/// What to send a session.
#[derive(Debug, PartialEq)]
pub enum Update {
    /// The first frame of a session: the whole set.
    Full(Vec<Task>),
    Diff {
        upserts: Vec<Task>,
        removed: Vec<TaskId>,
    },
}

impl Update {
    pub fn is_empty(&self) -> bool {
        matches!(self, Update::Diff { upserts, removed } if upserts.is_empty() && removed.is_empty())
    }
}

impl Sent {
    /// Brings what `node`'s session was sent up to date with the store:
    /// the frame to send (an empty diff when nothing changed for it), and
    /// whether the secrets and configs it needs may have changed.
    pub fn update(&mut self, store: &Store, node: &NodeId, dirty: &Dirty) -> (Update, bool) {
        let Some(sent) = &mut self.0 else {
            let tasks: Vec<Task> = assignment_set(store, node).cloned().collect();
            self.0 = Some(tasks.iter().map(|t| t.id.clone()).collect());
            return (Update::Full(tasks), true);
        };
        if dirty.all {
            let upserts: Vec<Task> = assignment_set(store, node).cloned().collect();
            let now: HashSet<TaskId> = upserts.iter().map(|t| t.id.clone()).collect();
            let mut removed: Vec<TaskId> = sent.difference(&now).cloned().collect();
            removed.sort();
            *sent = now;
            return (Update::Diff { upserts, removed }, true);
        }
        let Some(ids) = dirty.nodes.get(node) else {
            return (Update::Diff { upserts: vec![], removed: vec![] }, dirty.files);
        };
        let (mut upserts, mut removed, mut files) = (Vec::new(), Vec::new(), dirty.files);
        for id in ids {
            match store.tasks.get(id).filter(|t| belongs(t, node)) {
                Some(t) => {
                    files |= uses_files(t);
                    sent.insert(id.clone());
                    upserts.push(t.clone());
                }
                None => {
                    if sent.remove(id) {
                        removed.push(id.clone());
                        // What it used may no longer be needed.
                        files = true;
                    }
                }
            }
        }
        (Update::Diff { upserts, removed }, files)
    }
}

fn uses_files(t: &Task) -> bool {
    !t.spec.secrets.is_empty() || !t.spec.configs.is_empty()
}

/// The node's set as a map, for comparing.
#[cfg(test)]
pub fn set_of(store: &Store, node: &NodeId) -> std::collections::BTreeMap<TaskId, Task> {
    assignment_set(store, node).map(|t| (t.id.clone(), t.clone())).collect()
}

#[cfg(test)]
mod tests;
