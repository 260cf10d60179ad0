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
    admits_load_free, admits_under_load, explain, host_ports, refused_by, NodeFacts, NodeView, PIPELINE,
};

/// One node and the load on it.
#[derive(Clone, Debug)]
pub struct NodeState<'a> {
    pub node: &'a Node,
    pub ready: bool,
    pub description: Option<&'a NodeDescription>,
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
#[derive(Clone, Debug, Default)]
pub struct SchedState<'a> {
    nodes: Vec<NodeState<'a>>,
    index: HashMap<&'a NodeId, usize>,
    /// Active tasks per service, per node index (no zero entries).
    per_service: HashMap<ServiceId, HashMap<usize, usize>>,
    /// Bumped by every change, so what was derived from the state can tell
    /// whether it still holds.
    version: u64,
}

impl<'a> SchedState<'a> {
    /// The state of `views` (their own loads included) with the active
    /// tasks of `tasks` on them; tasks on nodes not in `views` are left out.
    pub fn new<'t>(views: &[NodeView<'a>], tasks: impl IntoIterator<Item = &'t Task>) -> Self {
        let mut sorted: Vec<&NodeView<'a>> = views.iter().collect();
        sorted.sort_by(|a, b| a.node.id.cmp(&b.node.id));
        sorted.dedup_by(|b, a| a.node.id == b.node.id);
        let mut state = SchedState::default();
        for (i, v) in sorted.into_iter().enumerate() {
            state.nodes.push(NodeState {
                node: v.node,
                ready: v.ready,
                description: v.description,
                total: 0,
                host_ports: v.host_ports.iter().map(|p| (*p, 1)).collect(),
                reserved: v.reserved.clone(),
            });
            state.index.insert(&v.node.id, i);
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

    pub fn node(&self, i: usize) -> &NodeState<'a> {
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
    pub fn facts(&self, i: usize, service_tasks: usize) -> Facts<'_, 'a> {
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
        true
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
    pub fn upsert_node(&mut self, view: NodeView<'a>) {
        if let Some(i) = self.index_of(&view.node.id) {
            let n = &mut self.nodes[i];
            n.node = view.node;
            n.ready = view.ready;
            n.description = view.description;
        } else {
            let at = self.nodes.partition_point(|n| n.node.id < view.node.id);
            self.nodes.insert(
                at,
                NodeState {
                    node: view.node,
                    ready: view.ready,
                    description: view.description,
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

    /// After nodes moved in `nodes`: node `i` is now `moved(i)` (or gone).
    fn reindex(&mut self, moved: impl Fn(usize) -> Option<usize>) {
        self.index = self.nodes.iter().enumerate().map(|(i, n)| (&n.node.id, i)).collect();
        for per_node in self.per_service.values_mut() {
            *per_node = per_node.drain().filter_map(|(i, n)| moved(i).map(|j| (j, n))).collect();
        }
        self.per_service.retain(|_, m| !m.is_empty());
    }
}

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
pub struct Facts<'s, 'a> {
    node: &'s NodeState<'a>,
    service_tasks: usize,
}

impl NodeFacts for Facts<'_, '_> {
    fn node(&self) -> &Node {
        self.node.node
    }
    fn ready(&self) -> bool {
        self.node.ready
    }
    fn description(&self) -> Option<&NodeDescription> {
        self.node.description
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
            .map(|s| prefs.iter().map(|p| p.value_of(&s.node.labels, s.description)).collect())
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
        if !self.admitted[i] || !admits_under_load(&state.facts(i, service_tasks), self.task) {
            return NONE;
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
