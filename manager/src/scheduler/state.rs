//! The scheduler's indexed state: the load of every node, kept as tasks
//! are placed, and the ranked candidates of a service's tasks, so that
//! [`plan`](super::plan::plan) places a task in O(log n) instead of running
//! every filter over every node.
//!
//! - [`SchedState`]: per node, the active tasks in all and per service, the
//!   host-mode ports they bind and what they reserve; built once from the
//!   nodes and the active tasks, then changed one task or node at a time.
//! - [`Candidates`]: for one task template of one service, every node's
//!   rank `(failing, tasks of the service, tasks in all, node id)`, or none
//!   when a filter refuses it, in a min-tree whose leaves are ordered by the
//!   template's spread groups (a [`SpreadTree`]), so each group is a range.
//!   Choosing a node walks the groups down (the one with the fewest tasks
//!   of the service among those with a candidate, per level) and takes the
//!   range's minimum; a placement changes one leaf.
//! - [`IndexCache`]: what depends only on the nodes and part of a template
//!   (which nodes the load-free filters admit, per constraint list; the
//!   spread tree, per preference list), shared by the services of a plan.
//!
//! The filters themselves are [`PIPELINE`]'s, asked through [`NodeFacts`]:
//! one definition of what admits a task, for this index and for
//! [`plan_scan`](super::plan::plan_scan).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::rc::Rc;

use common::constraint::Constraint;
use common::mesh::Protocol;
use common::node::Node;
use common::sched::{NodeDescription, Resources, Spread};
use common::task::Task;
use common::{NodeId, ServiceId};

use super::plan::{
    admits_load_free, explain, host_ports, load_filters, refused_by, Filter, NodeFacts, NodeView, PIPELINE,
};

/// One node and the load on it.
#[derive(Clone, Debug)]
pub struct NodeState {
    pub node: Node,
    pub ready: bool,
    pub description: Option<NodeDescription>,
    /// Active tasks on the node, of every service.
    pub total: usize,
    /// Host-mode ports bound by the node's active tasks, with how many
    /// tasks bind each (more than one only in a state that went wrong).
    pub host_ports: BTreeMap<(u16, Protocol), usize>,
    /// What the node's active tasks reserve together.
    pub reserved: Resources,
}

/// The nodes, sorted by ID (a node's index ranks it last in a tie), and the
/// load of the active tasks on them. Only tasks on their node count: a
/// task waiting to be admitted holds nothing.
///
/// It owns what it holds of the nodes, so the scheduler keeps it from one
/// round to the next and changes it as the store does (`super::kept`).
#[derive(Clone, Debug, Default)]
pub struct SchedState {
    nodes: Vec<NodeState>,
    index: HashMap<NodeId, usize>,
    /// Active tasks per service, per node index (no zero entries).
    per_service: HashMap<ServiceId, HashMap<usize, usize>>,
    /// Bumped by every change, so what was derived from the state can tell
    /// whether it still holds.
    version: u64,
}

impl SchedState {
    /// The state of `views` (their own loads included) with the active
    /// tasks of `tasks` on them; tasks on nodes not in `views` are left out.
    pub fn new<'t>(views: &[NodeView<'_>], tasks: impl IntoIterator<Item = &'t Task>) -> Self {
        let mut sorted: Vec<&NodeView<'_>> = views.iter().collect();
        sorted.sort_by(|a, b| a.node.id.cmp(&b.node.id));
        sorted.dedup_by(|b, a| a.node.id == b.node.id);
        let mut state = SchedState::default();
        for (i, v) in sorted.into_iter().enumerate() {
            state.nodes.push(NodeState {
                node: v.node.clone(),
                ready: v.ready,
                description: v.description.cloned(),
                total: 0,
                host_ports: v.host_ports.iter().map(|p| (*p, 1)).collect(),
                reserved: v.reserved.clone(),
            });
            state.index.insert(v.node.id.clone(), i);
            for (service, n) in v.service_tasks.iter().filter(|(_, n)| **n > 0) {
                *state.per_service.entry(service.clone()).or_default().entry(i).or_default() += n;
            }
        }
        for t in tasks {
            state.add_task(t);
        }
        state
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    pub fn index_of(&self, id: &NodeId) -> Option<usize> {
        self.index.get(id).copied()
    }

    pub fn node(&self, i: usize) -> &NodeState {
        &self.nodes[i]
    }

    pub fn version(&self) -> u64 {
        self.version
    }

    /// Active tasks of `service` on node `i`.
    pub fn service_tasks(&self, service: &ServiceId, i: usize) -> usize {
        self.per_service.get(service).and_then(|m| m.get(&i)).copied().unwrap_or(0)
    }

    /// Active tasks of `service` on each node, by node index.
    pub fn dense_service_tasks(&self, service: &ServiceId) -> Vec<usize> {
        let mut counts = vec![0; self.nodes.len()];
        for (i, n) in self.per_service.get(service).into_iter().flatten() {
            counts[*i] = *n;
        }
        counts
    }

    /// What the filters see of node `i`, with `service_tasks` tasks of the
    /// service they are asked about.
    pub fn facts(&self, i: usize, service_tasks: usize) -> Facts<'_> {
        Facts { node: &self.nodes[i], service_tasks }
    }

    /// Counts `t` on its node if it is active and on a node of the state.
    pub fn add_task(&mut self, t: &Task) -> bool {
        match self.on_node(t) {
            Some(i) => {
                self.place(t, i);
                true
            }
            None => false,
        }
    }

    /// Takes back what [`SchedState::add_task`] counted for `t` (as it was
    /// then: an active task on its node).
    pub fn remove_task(&mut self, t: &Task) -> bool {
        let Some(i) = self.on_node(t) else { return false };
        self.unplace(t, i);
        true
    }

    /// Takes back what [`SchedState::place`] counted for `t` on node `i`.
    pub fn unplace(&mut self, t: &Task, i: usize) {
        let n = &mut self.nodes[i];
        n.total = n.total.saturating_sub(1);
        for p in host_ports(t) {
            if let Some(k) = n.host_ports.get_mut(&p) {
                *k -= 1;
                if *k == 0 {
                    n.host_ports.remove(&p);
                }
            }
        }
        release(&mut n.reserved, &t.spec.scheduling.reservations);
        if let Some(m) = self.per_service.get_mut(&t.service_id) {
            if let Some(k) = m.get_mut(&i) {
                *k -= 1;
                if *k == 0 {
                    m.remove(&i);
                }
            }
            if m.is_empty() {
                self.per_service.remove(&t.service_id);
            }
        }
        self.version += 1;
    }

    fn on_node(&self, t: &Task) -> Option<usize> {
        t.is_active().then(|| t.assigned_node().and_then(|n| self.index_of(n))).flatten()
    }

    /// Counts `t` on node `i`: a placement the plan makes.
    pub fn place(&mut self, t: &Task, i: usize) {
        let n = &mut self.nodes[i];
        n.total += 1;
        for p in host_ports(t) {
            *n.host_ports.entry(p).or_default() += 1;
        }
        if !t.spec.scheduling.reservations.is_empty() {
            n.reserved.add(&t.spec.scheduling.reservations);
        }
        let per_node = match self.per_service.get_mut(&t.service_id) {
            Some(m) => m,
            None => self.per_service.entry(t.service_id.clone()).or_default(),
        };
        *per_node.entry(i).or_default() += 1;
        self.version += 1;
    }

    /// A node joined or changed (readiness, availability, labels,
    /// description); the load on it stays.
    pub fn upsert_node(&mut self, view: NodeView<'_>) {
        if let Some(i) = self.index_of(&view.node.id) {
            let n = &mut self.nodes[i];
            if n.node != *view.node {
                n.node = view.node.clone();
            }
            n.ready = view.ready;
            if n.description.as_ref() != view.description {
                n.description = view.description.cloned();
            }
        } else {
            let at = self.nodes.partition_point(|n| n.node.id < view.node.id);
            self.nodes.insert(
                at,
                NodeState {
                    node: view.node.clone(),
                    ready: view.ready,
                    description: view.description.cloned(),
                    total: 0,
                    host_ports: view.host_ports.iter().map(|p| (*p, 1)).collect(),
                    reserved: view.reserved.clone(),
                },
            );
            self.reindex(|i| Some(if i >= at { i + 1 } else { i }));
            for (service, n) in view.service_tasks.iter().filter(|(_, n)| **n > 0) {
                *self.per_service.entry(service.clone()).or_default().entry(at).or_default() += n;
            }
        }
        self.version += 1;
    }

    /// A node left the cluster, and the load on it with it.
    pub fn remove_node(&mut self, id: &NodeId) -> bool {
        let Some(at) = self.index_of(id) else { return false };
        self.nodes.remove(at);
        self.reindex(|i| match i.cmp(&at) {
            std::cmp::Ordering::Less => Some(i),
            std::cmp::Ordering::Equal => None,
            std::cmp::Ordering::Greater => Some(i - 1),
        });
        self.version += 1;
        true
    }

    /// What the state holds, comparable: per node its id, readiness, tasks,
    /// host ports, reservations and tasks per service.
    #[cfg(test)]
    pub(crate) fn summary(&self) -> Summary {
        let mut services: Vec<&ServiceId> = self.per_service.keys().collect();
        services.sort();
        (0..self.len())
            .map(|i| {
                let n = self.node(i);
                let mut reserved = n.reserved.clone();
                reserved.generic.retain(|_, k| *k > 0);
                (
                    n.node.id.clone(),
                    n.ready,
                    n.total,
                    n.host_ports.iter().map(|(p, k)| (*p, *k)).collect(),
                    reserved,
                    services
                        .iter()
                        .map(|sv| ((*sv).clone(), self.service_tasks(sv, i)))
                        .filter(|(_, k)| *k > 0)
                        .collect(),
                )
            })
            .collect()
    }

    /// After nodes moved in `nodes`: node `i` is now `moved(i)` (or gone).
    fn reindex(&mut self, moved: impl Fn(usize) -> Option<usize>) {
        self.index = self.nodes.iter().enumerate().map(|(i, n)| (n.node.id.clone(), i)).collect();
        for per_node in self.per_service.values_mut() {
            *per_node = per_node.drain().filter_map(|(i, n)| moved(i).map(|j| (j, n))).collect();
        }
        self.per_service.retain(|_, m| !m.is_empty());
    }
}

/// [`SchedState::summary`].
#[cfg(test)]
pub(crate) type Summary = Vec<(NodeId, bool, usize, Vec<((u16, Protocol), usize)>, Resources, Vec<(ServiceId, usize)>)>;

/// `reserved -= freed`, never below zero.
fn release(reserved: &mut Resources, freed: &Resources) {
    reserved.nano_cpus = reserved.nano_cpus.saturating_sub(freed.nano_cpus);
    reserved.memory_bytes = reserved.memory_bytes.saturating_sub(freed.memory_bytes);
    for (kind, n) in &freed.generic {
        if let Some(have) = reserved.generic.get_mut(kind) {
            *have = have.saturating_sub(*n);
            if *have == 0 {
                reserved.generic.remove(kind);
            }
        }
    }
}

/// A node of a [`SchedState`] as the filters see it, for the tasks of one
/// service: `service_tasks` answers for that service whatever it is asked.
pub struct Facts<'s> {
    node: &'s NodeState,
    service_tasks: usize,
}

impl NodeFacts for Facts<'_> {
    fn node(&self) -> &Node {
        &self.node.node
    }
    fn ready(&self) -> bool {
        self.node.ready
    }
    fn description(&self) -> Option<&NodeDescription> {
        self.node.description.as_ref()
    }
    fn reserved(&self) -> &Resources {
        &self.node.reserved
    }
    fn port_in_use(&self, port: &(u16, Protocol)) -> bool {
        self.node.host_ports.contains_key(port)
    }
    fn service_tasks(&self, _: &ServiceId) -> usize {
        self.service_tasks
    }
}

/// A leaf of a [`MinTree`] that no task may take.
const NONE: u128 = u128::MAX;

/// A candidate's rank, smallest first: nodes where the service keeps
/// failing last, then fewest tasks of the service, fewest tasks in all, and
/// the node's index (its ID's rank). The index is the low 32 bits.
fn rank(failing: bool, service_tasks: usize, total: usize, i: usize) -> u128 {
    let field = |n: usize| n.min(u32::MAX as usize) as u128;
    ((failing as u128) << 96) | (field(service_tasks) << 64) | (field(total) << 32) | field(i)
}

fn node_of(rank: u128) -> usize {
    (rank & u32::MAX as u128) as usize
}

/// Minimum over ranges of leaves, with one leaf changed at a time.
#[derive(Clone, Debug)]
struct MinTree {
    size: usize,
    heap: Vec<u128>,
}

impl MinTree {
    fn new(leaves: &[u128]) -> Self {
        let size = leaves.len().next_power_of_two();
        let mut heap = vec![NONE; 2 * size];
        heap[size..size + leaves.len()].copy_from_slice(leaves);
        for k in (1..size).rev() {
            heap[k] = heap[2 * k].min(heap[2 * k + 1]);
        }
        MinTree { size, heap }
    }

    fn set(&mut self, at: usize, value: u128) {
        let mut k = at + self.size;
        self.heap[k] = value;
        while k > 1 {
            k /= 2;
            self.heap[k] = self.heap[2 * k].min(self.heap[2 * k + 1]);
        }
    }

    fn all(&self) -> u128 {
        self.heap[1]
    }

    /// The minimum of leaves `start..end`.
    fn min(&self, start: usize, end: usize) -> u128 {
        let (mut l, mut r) = (start + self.size, end + self.size);
        let mut m = NONE;
        while l < r {
            if l & 1 == 1 {
                m = m.min(self.heap[l]);
                l += 1;
            }
            if r & 1 == 1 {
                r -= 1;
                m = m.min(self.heap[r]);
            }
            l /= 2;
            r /= 2;
        }
        m
    }
}

/// Swarm's tree of spread groups for one list of preferences, over every
/// node: at each level the nodes of a group split by the level's value
/// (nodes without it in a group of their own, the empty value). The nodes
/// are laid out so that every group is a range of positions, and a group's
/// children are consecutive, in the order of their values.
#[derive(Debug)]
pub struct SpreadTree {
    depth: usize,
    /// Node index → position.
    position: Vec<usize>,
    /// Group 0 is the root (every node).
    groups: Vec<Group>,
    /// The groups of node `i`, one per level: `path[i * depth + level]`.
    path: Vec<usize>,
}

#[derive(Debug)]
struct Group {
    start: usize,
    end: usize,
    parent: usize,
    /// Among its siblings, in the order of their values.
    order: usize,
}

impl SpreadTree {
    fn new(state: &SchedState, prefs: &[Spread]) -> Self {
        let n = state.len();
        let depth = prefs.len();
        let values: Vec<Vec<&str>> = state
            .nodes
            .iter()
            .map(|s| prefs.iter().map(|p| p.value_of(&s.node.labels, s.description.as_ref())).collect())
            .collect();
        let mut layout: Vec<usize> = (0..n).collect();
        layout.sort_by(|&a, &b| values[a].cmp(&values[b]).then(a.cmp(&b)));
        let mut position = vec![0; n];
        for (at, &i) in layout.iter().enumerate() {
            position[i] = at;
        }
        let mut groups = vec![Group { start: 0, end: n, parent: 0, order: 0 }];
        let mut path = vec![0; n * depth];
        let mut level_groups = vec![0];
        for level in 0..depth {
            let mut next = Vec::new();
            for &parent in &level_groups {
                let (start, end) = (groups[parent].start, groups[parent].end);
                let mut at = start;
                let mut order = 0;
                while at < end {
                    let value = values[layout[at]][level];
                    let mut stop = at + 1;
                    while stop < end && values[layout[stop]][level] == value {
                        stop += 1;
                    }
                    let g = groups.len();
                    groups.push(Group { start: at, end: stop, parent, order });
                    for &i in &layout[at..stop] {
                        path[i * depth + level] = g;
                    }
                    next.push(g);
                    order += 1;
                    at = stop;
                }
            }
            level_groups = next;
        }
        SpreadTree { depth, position, groups, path }
    }

    fn groups_of(&self, i: usize) -> &[usize] {
        &self.path[i * self.depth..(i + 1) * self.depth]
    }
}

/// The tasks of one service per spread group, and each group's children
/// ordered by (tasks of the service, value).
#[derive(Debug)]
struct GroupLoad {
    tree: Rc<SpreadTree>,
    tasks: Vec<usize>,
    children: Vec<BTreeSet<(usize, usize, usize)>>,
}

impl GroupLoad {
    fn new(tree: Rc<SpreadTree>, counts: &[usize]) -> Self {
        let mut tasks = vec![0; tree.groups.len()];
        for (i, n) in counts.iter().enumerate().filter(|(_, n)| **n > 0) {
            for &g in tree.groups_of(i) {
                tasks[g] += n;
            }
        }
        let mut children = vec![BTreeSet::new(); tree.groups.len()];
        for (g, group) in tree.groups.iter().enumerate().skip(1) {
            children[group.parent].insert((tasks[g], group.order, g));
        }
        GroupLoad { tree, tasks, children }
    }

    /// One more task of the service on node `i`.
    fn placed(&mut self, i: usize) {
        for &g in self.tree.groups_of(i) {
            let group = &self.tree.groups[g];
            self.children[group.parent].remove(&(self.tasks[g], group.order, g));
            self.tasks[g] += 1;
            self.children[group.parent].insert((self.tasks[g], group.order, g));
        }
    }

    /// The positions of the group a task goes down to: at each level the
    /// child with the fewest tasks of the service (ties: the lesser value)
    /// among those with a candidate.
    fn walk(&self, candidates: &MinTree) -> (usize, usize) {
        let groups = &self.tree.groups;
        let mut g = 0;
        for _ in 0..self.tree.depth {
            let offered = self.children[g]
                .iter()
                .map(|(_, _, c)| *c)
                .find(|c| candidates.min(groups[*c].start, groups[*c].end) != NONE);
            match offered {
                Some(c) => g = c,
                None => break,
            }
        }
        (groups[g].start, groups[g].end)
    }
}

/// What depends on the nodes and part of a template only, shared by the
/// [`Candidates`] of one plan (the nodes must not change meanwhile).
#[derive(Default)]
pub struct IndexCache<'t> {
    /// Per constraint list: which nodes the load-free filters admit.
    admitted: Vec<(&'t [Constraint], Rc<Vec<bool>>)>,
    trees: Vec<(&'t [Spread], Rc<SpreadTree>)>,
}

impl<'t> IndexCache<'t> {
    /// The load-free filters read no more of a task than its constraints.
    fn admitted(&mut self, state: &SchedState, task: &'t Task) -> Rc<Vec<bool>> {
        let key = task.spec.constraints.as_slice();
        if let Some((_, a)) = self.admitted.iter().find(|(c, _)| *c == key) {
            return a.clone();
        }
        let a: Rc<Vec<bool>> = Rc::new((0..state.len()).map(|i| admits_load_free(&state.facts(i, 0), task)).collect());
        self.admitted.push((key, a.clone()));
        a
    }

    fn tree(&mut self, state: &SchedState, prefs: &'t [Spread]) -> Rc<SpreadTree> {
        if let Some((_, t)) = self.trees.iter().find(|(p, _)| *p == prefs) {
            return t.clone();
        }
        let t = Rc::new(SpreadTree::new(state, prefs));
        self.trees.push((prefs, t.clone()));
        t
    }
}

/// The nodes ranked for the tasks of one service that share a template.
pub struct Candidates<'t> {
    /// The first of those tasks: what the filters are asked about.
    task: &'t Task,
    admitted: Rc<Vec<bool>>,
    /// The filters that read the load and can refuse the task.
    load_filters: Vec<&'static dyn Filter>,
    /// Nodes where this template keeps failing, sorted.
    failing: Vec<usize>,
    /// Ranks by position (node index without preferences).
    ranks: MinTree,
    groups: Option<GroupLoad>,
    /// The last explanation, with the state version it holds for.
    explained: Option<(u64, String)>,
}

impl<'t> Candidates<'t> {
    /// `counts`: the service's tasks per node index; `failing`: node
    /// indexes [`RecentFailures`](super::plan::RecentFailures) marks.
    pub fn new(
        state: &SchedState,
        counts: &[usize],
        task: &'t Task,
        failing: &[usize],
        cache: &mut IndexCache<'t>,
    ) -> Self {
        let prefs = task.spec.scheduling.preferences.as_slice();
        let groups = (!prefs.is_empty()).then(|| GroupLoad::new(cache.tree(state, prefs), counts));
        let mut failing = failing.to_vec();
        failing.sort_unstable();
        let mut c = Candidates {
            task,
            admitted: cache.admitted(state, task),
            load_filters: load_filters(task),
            failing,
            ranks: MinTree::new(&[]),
            groups,
            explained: None,
        };
        let mut leaves = vec![NONE; state.len()];
        for (i, n) in counts.iter().enumerate() {
            leaves[c.position(i)] = c.rank_of(state, *n, i);
        }
        c.ranks = MinTree::new(&leaves);
        c
    }

    /// Whether `t` is a task these candidates rank for.
    pub fn serves(&self, t: &Task) -> bool {
        t.service_id == self.task.service_id && (std::ptr::eq(&t.spec, &self.task.spec) || t.spec == self.task.spec)
    }

    fn position(&self, i: usize) -> usize {
        self.groups.as_ref().map_or(i, |g| g.tree.position[i])
    }

    fn rank_of(&self, state: &SchedState, service_tasks: usize, i: usize) -> u128 {
        if !self.admitted[i] {
            return NONE;
        }
        if !self.load_filters.is_empty() {
            let facts = state.facts(i, service_tasks);
            if !self.load_filters.iter().all(|f| f.admits(&facts, self.task)) {
                return NONE;
            }
        }
        rank(self.failing.binary_search(&i).is_ok(), service_tasks, state.node(i).total, i)
    }

    /// The node the next task goes to, if one admits it.
    pub fn best(&self) -> Option<usize> {
        if self.ranks.all() == NONE {
            return None;
        }
        let best = match &self.groups {
            None => self.ranks.all(),
            Some(g) => {
                let (start, end) = g.walk(&self.ranks);
                self.ranks.min(start, end)
            }
        };
        Some(node_of(best))
    }

    /// A task of the service was placed on node `i` (`state` and `counts`
    /// count it already).
    pub fn placed(&mut self, state: &SchedState, counts: &[usize], i: usize) {
        let r = self.rank_of(state, counts[i], i);
        self.ranks.set(self.position(i), r);
        if let Some(g) = &mut self.groups {
            g.placed(i);
        }
    }

    /// Why no node admits the task, as the pipeline says it.
    pub fn explain(&mut self, state: &SchedState, counts: &[usize]) -> String {
        if let Some((version, why)) = &self.explained {
            if *version == state.version() {
                return why.clone();
            }
        }
        let mut refused = vec![0; PIPELINE.len()];
        for (i, n) in counts.iter().enumerate() {
            if let Some(f) = refused_by(&state.facts(i, *n), self.task) {
                refused[f] += 1;
            }
        }
        let why = explain(state.len(), &refused);
        self.explained = Some((state.version(), why.clone()));
        why
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::plan::{plan, plan_scan, Plan, RecentFailures};
    use common::node::{Availability, Role};
    use common::spec::{ServiceSpec, TaskTemplate};
    use common::task::{TaskState, TaskStatus};
    use common::TaskId;
    use rand::rngs::StdRng;
    use rand::seq::SliceRandom;
    use rand::{Rng, SeedableRng};

    /// A random cluster: nodes, their views, tasks, failures.
    struct Cluster {
        nodes: Vec<Node>,
        ready: Vec<bool>,
        descriptions: Vec<Option<NodeDescription>>,
        tasks: BTreeMap<TaskId, Task>,
    }

    impl Cluster {
        fn views(&self) -> Vec<NodeView<'_>> {
            self.nodes
                .iter()
                .zip(&self.ready)
                .zip(&self.descriptions)
                .map(|((n, r), d)| NodeView::new(n, *r).described(d.as_ref()))
                .collect()
        }
    }

    fn pick<'x, T>(rng: &mut StdRng, xs: &'x [T]) -> &'x T {
        xs.choose(rng).expect("not empty")
    }

    /// `n` nodes, their IDs in another order than their hostnames.
    fn random_nodes(rng: &mut StdRng, n: usize) -> Vec<Node> {
        let mut ids: Vec<usize> = (0..n).collect();
        ids.shuffle(rng);
        ids.into_iter().enumerate().map(|(i, id)| random_node(rng, i, id)).collect()
    }

    fn random_node(rng: &mut StdRng, i: usize, id: usize) -> Node {
        let mut labels = BTreeMap::new();
        if rng.gen_bool(0.8) {
            labels.insert("zone".to_string(), pick(rng, &["a", "b", "c"]).to_string());
        }
        if rng.gen_bool(0.6) {
            labels.insert("rack".to_string(), pick(rng, &["r1", "r2"]).to_string());
        }
        Node {
            id: format!("id-{id:04}").as_str().into(),
            raft_id: 1,
            hostname: format!("n{i}"),
            role: if rng.gen_bool(0.3) { Role::Manager } else { Role::Worker },
            availability: *pick(
                rng,
                &[
                    Availability::Active,
                    Availability::Active,
                    Availability::Active,
                    Availability::Pause,
                    Availability::Drain,
                ],
            ),
            labels,
            addr: "127.0.0.1:4242".parse().unwrap(),
            created_at: 0,
            updated_at: 0,
        }
    }

    fn random_description(rng: &mut StdRng) -> Option<NodeDescription> {
        rng.gen_bool(0.75).then(|| {
            let mut d = NodeDescription {
                resources: Resources {
                    nano_cpus: rng.gen_range(0..8) * 500_000_000,
                    memory_bytes: rng.gen_range(0..4) << 30,
                    ..Default::default()
                },
                os: "linux".into(),
                arch: pick(rng, &["x86_64", "aarch64"]).to_string(),
                ..Default::default()
            };
            if rng.gen_bool(0.3) {
                d.resources.generic.insert("gpu".into(), rng.gen_range(1..3));
            }
            if rng.gen_bool(0.5) {
                d.engine_labels.insert("storage".into(), pick(rng, &["ssd", "hdd"]).to_string());
            }
            d
        })
    }

    fn random_template(rng: &mut StdRng) -> TaskTemplate {
        const CONSTRAINTS: &[&str] = &[
            "node.role==manager",
            "node.role!=manager",
            "node.labels.zone==a",
            "node.labels.zone!=b",
            "engine.labels.storage==ssd",
            "node.platform.arch==x86_64",
            "node.hostname!=n1",
        ];
        const PREFS: &[&[&str]] = &[
            &[],
            &[],
            &["node.labels.zone"],
            &["node.labels.zone", "node.labels.rack"],
            &["node.labels.rack"],
            &["engine.labels.storage"],
        ];
        let image: &&str = pick(rng, &["img:1", "img:2"]);
        let mut t = TaskTemplate::new(image);
        for c in CONSTRAINTS {
            if rng.gen_bool(0.12) {
                t.constraints.push(Constraint::parse(c).unwrap());
            }
        }
        t.scheduling.preferences = pick(rng, PREFS).iter().map(|p| Spread(p.to_string())).collect();
        if rng.gen_bool(0.3) {
            t.scheduling.reservations.nano_cpus = rng.gen_range(1..4) * 500_000_000;
        }
        if rng.gen_bool(0.15) {
            t.scheduling.reservations.memory_bytes = 1 << 29;
        }
        if rng.gen_bool(0.1) {
            t.scheduling.reservations.generic.insert("gpu".into(), 1);
        }
        if rng.gen_bool(0.25) {
            let port = pick(rng, &["9000", "9001"]);
            let proto = pick(rng, &["tcp", "udp"]);
            t.ports = vec![format!("published={port},target=80,mode=host,protocol={proto}").parse().unwrap()];
        }
        if rng.gen_bool(0.25) {
            t.scheduling.max_replicas_per_node = rng.gen_range(1..4);
        }
        t
    }

    fn task(service: &str, slot: u64, template: &TaskTemplate, node: Option<&NodeId>, state: TaskState) -> Task {
        let spec = ServiceSpec::new(service, 1, template.clone());
        Task {
            id: format!("{service}-{slot}-{}", node.map_or("", |n| n.as_str())).as_str().into(),
            service_id: service.into(),
            service_name: service.into(),
            slot,
            node_id: node.cloned(),
            spec: spec.task,
            desired_state: TaskState::Running,
            status: TaskStatus::new(state, 0, ""),
            created_at: slot,
            attempt: 0,
            addresses: vec![],
            job_iteration: None,
        }
    }

    fn random_cluster(rng: &mut StdRng) -> (Cluster, RecentFailures) {
        let n = rng.gen_range(0..25);
        let nodes = random_nodes(rng, n);
        let ready = (0..n).map(|_| rng.gen_bool(0.85)).collect();
        let descriptions = (0..n).map(|_| random_description(rng)).collect();
        let mut tasks = Vec::new();
        let mut failures = RecentFailures::default();
        let services = rng.gen_range(1..7);
        for s in 0..services {
            let service = format!("svc{s}");
            // Two templates: a rolling update under way.
            let templates = [random_template(rng), random_template(rng)];
            let mut slot = 0;
            for _ in 0..rng.gen_range(0..30) {
                slot += 1;
                let versions = rng.gen_range(1..3);
                let template = pick(rng, &templates[..versions]);
                let on = (!nodes.is_empty()).then(|| pick(rng, &nodes).id.clone());
                let t = match rng.gen_range(0..10) {
                    // Running already (perhaps where it would not fit now).
                    0..=2 if on.is_some() => task(&service, slot, template, on.as_ref(), TaskState::Running),
                    // Naming its node, as a global task does.
                    3 if on.is_some() => {
                        let mut t = task(&service, slot, template, on.as_ref(), TaskState::New);
                        t.created_at = rng.gen_range(0..5);
                        t
                    }
                    // On a node that has left.
                    4 => task(&service, slot, template, Some(&"id-gone".into()), TaskState::Running),
                    // Pending for a reason given before.
                    5 => {
                        let mut t = task(&service, slot, template, None, TaskState::Pending);
                        t.status.err = Some("no suitable node (scheduling constraints not satisfied on 1 node)".into());
                        t
                    }
                    _ => task(&service, slot, template, None, TaskState::New),
                };
                tasks.push(t);
            }
            // Failures of a template on a node, some over the threshold.
            if !nodes.is_empty() && rng.gen_bool(0.4) {
                let on = pick(rng, &nodes).id.clone();
                let template = &templates[rng.gen_range(0..2)];
                for k in 0..rng.gen_range(3..8) {
                    let mut t = task(&service, 1000 + k, template, Some(&on), TaskState::Failed);
                    t.desired_state = TaskState::Shutdown;
                    t.status.timestamp = 1_000;
                    tasks.push(t);
                }
            }
        }
        let tasks: BTreeMap<TaskId, Task> = tasks.into_iter().map(|t| (t.id.clone(), t)).collect();
        failures.observe(&tasks, 2_000);
        (Cluster { nodes, ready, descriptions, tasks }, failures)
    }

    #[test]
    fn the_indexed_plan_is_the_scans_on_random_clusters() {
        let mut placed = 0;
        let mut refused = 0;
        for seed in 0..3_000 {
            let mut rng = StdRng::seed_from_u64(seed);
            let (cluster, failures) = random_cluster(&mut rng);
            let views = cluster.views();
            let scan = plan_scan(&views, &cluster.tasks, &failures);
            let indexed = plan(&views, &cluster.tasks, &failures);
            assert_eq!(indexed, scan, "seed {seed}");
            placed += scan.assign.len();
            refused += scan.unplaceable.len();
        }
        // The clusters exercise both outcomes.
        assert!(placed > 10_000 && refused > 1_000, "placed {placed}, refused {refused}");
    }

    #[test]
    fn the_indexed_plan_is_the_scans_on_larger_clusters() {
        for seed in 0..20 {
            let mut rng = StdRng::seed_from_u64(1_000_000 + seed);
            let nodes = random_nodes(&mut rng, 200);
            let descriptions: Vec<_> = (0..200).map(|_| random_description(&mut rng)).collect();
            let views: Vec<NodeView> = nodes
                .iter()
                .zip(&descriptions)
                .map(|(n, d)| NodeView::new(n, rng.gen_bool(0.95)).described(d.as_ref()))
                .collect();
            let mut list = Vec::new();
            for s in 0..8 {
                let template = random_template(&mut rng);
                for slot in 1..=rng.gen_range(50..400) {
                    list.push(task(&format!("svc{s}"), slot, &template, None, TaskState::New));
                }
            }
            let tasks: BTreeMap<TaskId, Task> = list.into_iter().map(|t| (t.id.clone(), t)).collect();
            let f = RecentFailures::default();
            assert_eq!(plan(&views, &tasks, &f), plan_scan(&views, &tasks, &f), "seed {seed}");
        }
    }

    fn snapshot(s: &SchedState) -> Summary {
        s.summary()
    }

    #[test]
    fn task_and_node_changes_leave_the_state_a_fresh_build_would_have() {
        for seed in 0..300 {
            let mut rng = StdRng::seed_from_u64(seed);
            let (cluster, _) = random_cluster(&mut rng);
            let views = cluster.views();
            let mut list: Vec<&Task> = cluster.tasks.values().collect();
            list.shuffle(&mut rng);
            let keep = rng.gen_range(0..=list.len());
            let (kept, gone) = list.split_at(keep);

            // Tasks removed one by one.
            let mut state = SchedState::new(&views, cluster.tasks.values());
            for t in gone {
                state.remove_task(t);
            }
            assert_eq!(snapshot(&state), snapshot(&SchedState::new(&views, kept.iter().copied())), "seed {seed}");

            // Nodes removed, then back with the same load, in another order.
            let mut state = SchedState::new(&views, kept.iter().copied());
            let mut leaving: Vec<&NodeView> = views.iter().filter(|_| rng.gen_bool(0.3)).collect();
            for v in &leaving {
                state.remove_node(&v.node.id);
            }
            let rest: Vec<NodeView> =
                views.iter().filter(|v| !leaving.iter().any(|l| l.node.id == v.node.id)).cloned().collect();
            assert_eq!(snapshot(&state), snapshot(&SchedState::new(&rest, kept.iter().copied())), "seed {seed}");
            leaving.shuffle(&mut rng);
            for v in &leaving {
                state.upsert_node((*v).clone());
            }
            for t in kept
                .iter()
                .filter(|t| t.assigned_node().is_some_and(|n| leaving.iter().any(|l| &l.node.id == n)) && t.is_active())
            {
                state.add_task(t);
            }
            assert_eq!(snapshot(&state), snapshot(&SchedState::new(&views, kept.iter().copied())), "seed {seed}");

            // A node going down.
            if let Some(v) = views.first() {
                let mut down = v.clone();
                down.ready = false;
                state.upsert_node(down);
                let i = state.index_of(&v.node.id).unwrap();
                assert!(!state.node(i).ready);
            }
        }
    }

    #[test]
    fn a_plan_with_no_nodes_or_no_tasks_is_empty() {
        let tasks = BTreeMap::new();
        assert_eq!(plan(&[], &tasks, &RecentFailures::default()), Plan::default());
    }
}
