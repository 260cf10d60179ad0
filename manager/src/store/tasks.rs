//! The store's task table, with its indexes by service and by node.
//!
//! [`Tasks`] reads like the `BTreeMap<TaskId, Task>` it wraps (it derefs to
//! it), but every change goes through its methods, so the indexes cannot fall
//! out of step with the tasks: [`Tasks::insert`], [`Tasks::remove`],
//! [`Tasks::get_mut`] (a guard that re-indexes the task when it is dropped)
//! and [`Tasks::update_all`]. Only the map is serialised; the indexes are
//! rebuilt when a store is decoded, so snapshots keep their format.
//!
//! Every write is also noted as a [`TaskTouch`] (the task as it was, and
//! the task itself when removed), which the store hands to its change feed
//! ([`super::feed`]) after each apply.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::Hash;
use std::ops::{Deref, DerefMut};

use common::task::Task;
use common::{NodeId, ServiceId, TaskId};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::feed::{TaskTouch, TaskWas};

/// Task ids by a key; a key with no tasks has no entry.
type Index<K> = HashMap<K, BTreeSet<TaskId>>;

#[derive(Clone, Default)]
pub struct Tasks {
    map: BTreeMap<TaskId, Task>,
    by_service: Index<ServiceId>,
    by_node: Index<NodeId>,
    /// Writes since the last [`Tasks::take_touched`].
    touched: Vec<TaskTouch>,
}

impl Deref for Tasks {
    type Target = BTreeMap<TaskId, Task>;
    fn deref(&self) -> &Self::Target {
        &self.map
    }
}

impl PartialEq for Tasks {
    fn eq(&self, other: &Self) -> bool {
        self.map == other.map
    }
}

impl std::fmt::Debug for Tasks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.map.fmt(f)
    }
}

impl Serialize for Tasks {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.map.serialize(s)
    }
}

impl<'de> Deserialize<'de> for Tasks {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        BTreeMap::deserialize(d).map(Tasks::from_map)
    }
}

impl FromIterator<Task> for Tasks {
    fn from_iter<I: IntoIterator<Item = Task>>(iter: I) -> Self {
        let mut tasks = Tasks::default();
        for t in iter {
            tasks.insert(t);
        }
        tasks
    }
}

fn index_add<K: Hash + Eq>(index: &mut Index<K>, key: K, id: &TaskId) {
    index.entry(key).or_default().insert(id.clone());
}

fn index_remove<K: Hash + Eq>(index: &mut Index<K>, key: &K, id: &TaskId) {
    if let Some(ids) = index.get_mut(key) {
        ids.remove(id);
        if ids.is_empty() {
            index.remove(key);
        }
    }
}

impl Tasks {
    fn from_map(map: BTreeMap<TaskId, Task>) -> Tasks {
        let mut tasks = Tasks { map, ..Default::default() };
        for (id, t) in &tasks.map {
            index_add(&mut tasks.by_service, t.service_id.clone(), id);
            if let Some(n) = &t.node_id {
                index_add(&mut tasks.by_node, n.clone(), id);
            }
        }
        tasks
    }

    /// Adds or replaces the task with `t.id`; returns the one replaced.
    pub fn insert(&mut self, t: Task) -> Option<Task> {
        let old = self.unlink(&t.id);
        self.touched.push(TaskTouch { id: t.id.clone(), before: old.as_ref().map(TaskWas::of), removed: None });
        index_add(&mut self.by_service, t.service_id.clone(), &t.id);
        if let Some(n) = &t.node_id {
            index_add(&mut self.by_node, n.clone(), &t.id);
        }
        self.map.insert(t.id.clone(), t);
        old
    }

    pub fn remove(&mut self, id: &TaskId) -> Option<Task> {
        let t = self.unlink(id)?;
        self.touched.push(TaskTouch {
            id: id.clone(),
            before: Some(TaskWas::of(&t)),
            removed: Some(Box::new(t.clone())),
        });
        Some(t)
    }

    /// The writes noted since the last call, oldest first.
    pub fn take_touched(&mut self) -> Vec<TaskTouch> {
        std::mem::take(&mut self.touched)
    }

    /// Removes the task and its index entries, noting nothing.
    fn unlink(&mut self, id: &TaskId) -> Option<Task> {
        let t = self.map.remove(id)?;
        index_remove(&mut self.by_service, &t.service_id, id);
        if let Some(n) = &t.node_id {
            index_remove(&mut self.by_node, n, id);
        }
        Some(t)
    }

    /// The task to change in place; its index entries follow its service
    /// and node when the guard is dropped. The id must not change.
    pub fn get_mut(&mut self, id: &TaskId) -> Option<TaskMut<'_>> {
        let task = self.map.get_mut(id)?;
        let was = TaskWas::of(task);
        Some(TaskMut {
            task,
            by_service: &mut self.by_service,
            by_node: &mut self.by_node,
            touched: &mut self.touched,
            was: Some(was),
        })
    }

    /// Calls `f` on every task, re-indexing each one after it. For tests
    /// that play a worker's part; the store's own commands change only the
    /// tasks they name.
    pub fn update_all(&mut self, mut f: impl FnMut(&mut Task)) {
        let ids: Vec<TaskId> = self.map.keys().cloned().collect();
        for id in ids {
            if let Some(mut t) = self.get_mut(&id) {
                f(&mut t);
            }
        }
    }

    /// The tasks of one service, in id order.
    pub fn of_service<'a>(&'a self, service: &ServiceId) -> impl Iterator<Item = &'a Task> + 'a {
        self.lookup(self.by_service.get(service))
    }

    /// The tasks assigned to one node, in id order.
    pub fn on_node<'a>(&'a self, node: &NodeId) -> impl Iterator<Item = &'a Task> + 'a {
        self.lookup(self.by_node.get(node))
    }

    fn lookup<'a>(&'a self, ids: Option<&'a BTreeSet<TaskId>>) -> impl Iterator<Item = &'a Task> + 'a {
        ids.into_iter().flatten().filter_map(|id| self.map.get(id))
    }

    /// Whether both indexes say exactly what a scan of every task says.
    #[cfg(test)]
    pub(crate) fn indexes_match_a_scan(&self) -> bool {
        let scanned = Tasks::from_map(self.map.clone());
        scanned.by_service == self.by_service && scanned.by_node == self.by_node
    }
}

/// A task borrowed for change from [`Tasks::get_mut`].
pub struct TaskMut<'a> {
    task: &'a mut Task,
    by_service: &'a mut Index<ServiceId>,
    by_node: &'a mut Index<NodeId>,
    touched: &'a mut Vec<TaskTouch>,
    /// The task when it was borrowed (taken when the guard is dropped).
    was: Option<TaskWas>,
}

impl Deref for TaskMut<'_> {
    type Target = Task;
    fn deref(&self) -> &Task {
        self.task
    }
}

impl DerefMut for TaskMut<'_> {
    fn deref_mut(&mut self) -> &mut Task {
        self.task
    }
}

impl Drop for TaskMut<'_> {
    fn drop(&mut self) {
        let Some(was) = self.was.take() else { return };
        let id = &self.task.id;
        if self.task.service_id != was.service {
            index_remove(self.by_service, &was.service, id);
            index_add(self.by_service, self.task.service_id.clone(), id);
        }
        if self.task.node_id != was.node {
            if let Some(old) = &was.node {
                index_remove(self.by_node, old, id);
            }
            if let Some(new) = &self.task.node_id {
                index_add(self.by_node, new.clone(), id);
            }
        }
        self.touched.push(TaskTouch { id: id.clone(), before: Some(was), removed: None });
    }
}
