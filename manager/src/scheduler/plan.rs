//! Pure placement: which node each unassigned task goes to, and whether a
//! task that names its node (a global service's) may run there.
//!
//! A pipeline of filters decides which nodes can take a task; each filter
//! can say why it refused, which is how a user learns
//! `no suitable node (scheduling constraints not satisfied on 3 nodes)`.
//! Among the nodes left, the task's placement preferences pick a group
//! ([`spread`]: Swarm's tree of spread groups), and within it the rank
//! decides: first away from nodes where this service's tasks keep failing
//! ([`RecentFailures`]), then fewest tasks of this service, then fewest
//! tasks overall, then node ID (so the plan is deterministic). A task that
//! names its node meets the same pipeline over that node alone (swarmkit's
//! `taskFitNode`): admitted, it is assigned there; refused, it stays PENDING
//! with the reason and is looked at again on the next change.
//!
//! [`plan`] computes this from an index ([`super::state`]); [`plan_scan`]
//! computes the same the plain way and is what the index is tested against.

use std::collections::{BTreeMap, BTreeSet};

use common::constraint::all_match_described;
use common::mesh::{Protocol, PublishMode};
use common::node::{Availability, Node};
use common::sched::{NodeDescription, Resources, Spread};
use common::spec::TaskTemplate;
use common::task::{Task, TaskState};
use common::time::Millis;
use common::{NodeId, ServiceId, TaskId};

use super::state::{Candidates, IndexCache, SchedState};

/// What the scheduler sees of one node.
#[derive(Clone, Debug)]
pub struct NodeView<'a> {
    pub node: &'a Node,
    pub ready: bool,
    /// What the node reported about itself; `None` before it has.
    pub description: Option<&'a NodeDescription>,
    /// Host-mode ports taken by active tasks on the node.
    pub host_ports: BTreeSet<(u16, Protocol)>,
    /// What the active tasks on the node reserve together.
    pub reserved: Resources,
    /// Active tasks on the node, per service.
    pub service_tasks: BTreeMap<ServiceId, usize>,
}

impl<'a> NodeView<'a> {
    pub fn new(node: &'a Node, ready: bool) -> Self {
        NodeView {
            node,
            ready,
            description: None,
            host_ports: BTreeSet::new(),
            reserved: Resources::default(),
            service_tasks: BTreeMap::new(),
        }
    }

    pub fn described(mut self, description: Option<&'a NodeDescription>) -> Self {
        self.description = description;
        self
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub assign: Vec<(TaskId, NodeId)>,
    /// Tasks that fit nowhere, with the explanation shown in their error.
    pub unplaceable: Vec<(TaskId, String)>,
}

/// What the filters read of one node and its load: a [`NodeView`], or a
/// node of the indexed [`SchedState`](super::state::SchedState).
pub(crate) trait NodeFacts {
    fn node(&self) -> &Node;
    fn ready(&self) -> bool;
    fn description(&self) -> Option<&NodeDescription>;
    /// What the node's active tasks reserve together.
    fn reserved(&self) -> &Resources;
    fn port_in_use(&self, port: &(u16, Protocol)) -> bool;
    /// Active tasks of `service` on the node.
    fn service_tasks(&self, service: &ServiceId) -> usize;
}

impl NodeFacts for NodeView<'_> {
    fn node(&self) -> &Node {
        self.node
    }
    fn ready(&self) -> bool {
        self.ready
    }
    fn description(&self) -> Option<&NodeDescription> {
        self.description
    }
    fn reserved(&self) -> &Resources {
        &self.reserved
    }
    fn port_in_use(&self, port: &(u16, Protocol)) -> bool {
        self.host_ports.contains(port)
    }
    fn service_tasks(&self, service: &ServiceId) -> usize {
        self.service_tasks.get(service).copied().unwrap_or(0)
    }
}

/// One step of the filter pipeline.
pub(crate) trait Filter {
    /// Why this filter refused `n` nodes, e.g. "scheduling constraints not
    /// satisfied on 3 nodes" (Swarm's words).
    fn explain(&self, n: usize) -> String;
    fn admits(&self, view: &dyn NodeFacts, task: &Task) -> bool;
    /// The answer depends only on the node and the task's constraints,
    /// never on the load or the rest of the task: the indexed plan asks once
    /// per node and constraint list.
    fn load_free(&self) -> bool;
    /// Whether the filter can refuse `task` anywhere at all (a task that
    /// reserves nothing meets no resource filter): the indexed plan asks
    /// only those that can.
    fn can_refuse(&self, _task: &Task) -> bool {
        true
    }
}

/// `WORDS N node(s)`.
fn on(words: &str, n: usize) -> String {
    format!("{words} {n} {}", plural(n))
}

struct ReadyFilter;
impl Filter for ReadyFilter {
    fn explain(&self, n: usize) -> String {
        on("node not ready on", n)
    }
    fn admits(&self, view: &dyn NodeFacts, _: &Task) -> bool {
        view.ready()
    }
    fn load_free(&self) -> bool {
        true
    }
}

struct AvailabilityFilter;
impl Filter for AvailabilityFilter {
    fn explain(&self, n: usize) -> String {
        on("node not available for new tasks on", n)
    }
    fn admits(&self, view: &dyn NodeFacts, _: &Task) -> bool {
        view.node().availability == Availability::Active
    }
    fn load_free(&self) -> bool {
        true
    }
}

/// The task's reservations fit beside what the node's tasks reserve. A
/// task that reserves nothing fits anywhere; one that reserves something
/// fits nowhere the capacity is unknown.
struct ResourceFilter;
impl Filter for ResourceFilter {
    fn explain(&self, n: usize) -> String {
        on("insufficient resources on", n)
    }
    fn admits(&self, view: &dyn NodeFacts, task: &Task) -> bool {
        let need = &task.spec.scheduling.reservations;
        need.is_empty() || view.description().is_some_and(|d| view.reserved().fits(need, &d.resources))
    }
    fn load_free(&self) -> bool {
        false
    }
    fn can_refuse(&self, task: &Task) -> bool {
        !task.spec.scheduling.reservations.is_empty()
    }
}

struct ConstraintFilter;
impl Filter for ConstraintFilter {
    fn explain(&self, n: usize) -> String {
        on("scheduling constraints not satisfied on", n)
    }
    fn admits(&self, view: &dyn NodeFacts, task: &Task) -> bool {
        all_match_described(&task.spec.constraints, view.node(), view.description())
    }
    fn load_free(&self) -> bool {
        true
    }
}

/// Host-mode publishes bind the node's port: one task per port per node.
struct HostPortFilter;
impl Filter for HostPortFilter {
    fn explain(&self, n: usize) -> String {
        on("host-mode port already in use on", n)
    }
    fn admits(&self, view: &dyn NodeFacts, task: &Task) -> bool {
        host_ports(task).all(|p| !view.port_in_use(&p))
    }
    fn load_free(&self) -> bool {
        false
    }
    fn can_refuse(&self, task: &Task) -> bool {
        host_ports(task).next().is_some()
    }
}

/// `--replicas-max-per-node`: at most that many active tasks of the
/// service on one node.
struct MaxReplicasFilter;
impl Filter for MaxReplicasFilter {
    fn explain(&self, _: usize) -> String {
        // Swarm's words, without a count.
        "max replicas per node limit exceed".into()
    }
    fn admits(&self, view: &dyn NodeFacts, task: &Task) -> bool {
        let max = task.spec.scheduling.max_replicas_per_node;
        max == 0 || (view.service_tasks(&task.service_id) as u64) < max
    }
    fn load_free(&self) -> bool {
        false
    }
    fn can_refuse(&self, task: &Task) -> bool {
        task.spec.scheduling.max_replicas_per_node != 0
    }
}

/// The (port, protocol) pairs a task binds on its node.
pub fn host_ports(task: &Task) -> impl Iterator<Item = (u16, Protocol)> + '_ {
    task.spec.ports.iter().filter(|p| p.mode == PublishMode::Host).filter_map(|p| p.published.map(|n| (n, p.protocol)))
}

pub(crate) const PIPELINE: &[&dyn Filter] =
    &[&ReadyFilter, &AvailabilityFilter, &ResourceFilter, &ConstraintFilter, &HostPortFilter, &MaxReplicasFilter];

fn plural(n: usize) -> &'static str {
    if n == 1 {
        "node"
    } else {
        "nodes"
    }
}

/// Runs the pipeline over every node; returns the admitted nodes or the
/// explanation of why none was.
fn eligible<'v, 'a>(nodes: &'v [NodeView<'a>], task: &Task) -> Result<Vec<&'v NodeView<'a>>, String> {
    let mut refused = vec![0usize; PIPELINE.len()];
    let mut ok = Vec::new();
    'nodes: for v in nodes {
        for (i, f) in PIPELINE.iter().enumerate() {
            if !f.admits(v, task) {
                refused[i] += 1;
                continue 'nodes;
            }
        }
        ok.push(v);
    }
    if !ok.is_empty() {
        return Ok(ok);
    }
    Err(explain(nodes.len(), &refused))
}

/// The index in [`PIPELINE`] of the first filter that refuses `task` on
/// `view`, if one does.
pub(crate) fn refused_by(view: &dyn NodeFacts, task: &Task) -> Option<usize> {
    PIPELINE.iter().position(|f| !f.admits(view, task))
}

/// Whether every filter that does not read the load admits `task` on `view`.
pub(crate) fn admits_load_free(view: &dyn NodeFacts, task: &Task) -> bool {
    PIPELINE.iter().filter(|f| f.load_free()).all(|f| f.admits(view, task))
}

/// The filters that read the load and can refuse `task`.
pub(crate) fn load_filters(task: &Task) -> Vec<&'static dyn Filter> {
    PIPELINE.iter().copied().filter(|f| !f.load_free() && f.can_refuse(task)).collect()
}

/// Why a task fits none of `nodes` nodes, `refused[i]` of which the `i`th
/// filter of [`PIPELINE`] refused.
pub(crate) fn explain(nodes: usize, refused: &[usize]) -> String {
    if nodes == 0 {
        return "no suitable node (no nodes in the cluster)".into();
    }
    let reasons: Vec<String> =
        PIPELINE.iter().zip(refused).filter(|(_, n)| **n > 0).map(|(f, n)| f.explain(*n)).collect();
    format!("no suitable node ({})", reasons.join("; "))
}

/// Swarm's tree of spread groups, walked for one task of `service`: at
/// each preference in turn, the nodes are grouped by the preference's value
/// (nodes without it form a group of their own), and the task goes down
/// into the group whose nodes hold the fewest tasks of the service (ties:
/// the lesser value). Only groups with a node in `candidates` (the nodes
/// that admit the task) are chosen from; the tasks counted are those on all
/// of `nodes`, so that a group does not look empty because its nodes are
/// full. Returns the candidates of the group reached.
pub fn spread<'v, 'a>(
    nodes: &[NodeView<'a>],
    mut candidates: Vec<&'v NodeView<'a>>,
    prefs: &[Spread],
    service: &ServiceId,
) -> Vec<&'v NodeView<'a>> {
    let count = |v: &NodeView| v.service_tasks.get(service).copied().unwrap_or(0);
    let mut within: Vec<&NodeView> = nodes.iter().collect();
    for pref in prefs {
        let value = |v: &NodeView<'a>| pref.value_of(&v.node.labels, v.description).to_string();
        let mut groups: BTreeMap<String, usize> = BTreeMap::new();
        for v in &within {
            *groups.entry(value(v)).or_default() += count(v);
        }
        let offered: BTreeSet<String> = candidates.iter().map(|v| value(v)).collect();
        let Some((chosen, _)) =
            groups.into_iter().filter(|(g, _)| offered.contains(g)).min_by(|a, b| (a.1, &a.0).cmp(&(b.1, &b.0)))
        else {
            break;
        };
        candidates.retain(|v| value(v) == chosen);
        within.retain(|v| value(v) == chosen);
    }
    candidates
}

/// Meant to run and not yet on a node: placed anywhere (no `node_id`), or
/// admitted on the one node it names (a global task).
pub(crate) fn waiting(t: &Task) -> bool {
    t.desired_state == TaskState::Running && matches!(t.status.state, TaskState::New | TaskState::Pending)
}

/// The load so far, kept up to date as the plan places tasks: in each node's
/// view the host ports bound, the resources reserved and the tasks per
/// service; besides, active tasks per node and per (service, node). Only
/// tasks on their node count: a task waiting to be admitted holds nothing.
struct Load<'a> {
    nodes: Vec<NodeView<'a>>,
    total: BTreeMap<&'a NodeId, usize>,
    per_service: BTreeMap<(&'a ServiceId, &'a NodeId), usize>,
}

impl<'a> Load<'a> {
    fn new(nodes: &[NodeView<'a>], tasks: &'a BTreeMap<TaskId, Task>) -> Self {
        let mut load = Load { nodes: nodes.to_vec(), total: BTreeMap::new(), per_service: BTreeMap::new() };
        for t in tasks.values().filter(|t| t.is_active()) {
            if let Some(n) = t.assigned_node() {
                load.add(t, n);
            }
        }
        load
    }

    fn add(&mut self, t: &'a Task, node: &'a NodeId) {
        *self.total.entry(node).or_default() += 1;
        *self.per_service.entry((&t.service_id, node)).or_default() += 1;
        if let Some(v) = self.nodes.iter_mut().find(|v| &v.node.id == node) {
            v.host_ports.extend(host_ports(t));
            v.reserved.add(&t.spec.scheduling.reservations);
            *v.service_tasks.entry(t.service_id.clone()).or_default() += 1;
        }
    }
}

/// Failures of one service on one node within [`FAILURE_WINDOW_MS`] from
/// which the scheduler places that service's tasks on other nodes when any
/// fits (swarmkit's `maxFailures`).
pub const MAX_FAILURES: usize = 5;

/// How long a task's failure counts against its node (swarmkit's
/// `monitorFailures`, 5 minutes).
pub const FAILURE_WINDOW_MS: Millis = 5 * 60 * 1000;

/// The tasks that failed lately, per service version and node: what makes
/// the scheduler prefer other nodes for a service whose tasks keep failing
/// on one (a full disk, an image missing from that engine), as swarmkit's
/// `NodeInfo.recentFailures` does. A failure is a task that ended FAILED or
/// REJECTED on its node; tasks shut down on purpose, completed or orphaned
/// with their node do not count. A version is the task template, so an
/// updated service starts with a clean slate.
///
/// Derived from the store's tasks by [`RecentFailures::observe`] and kept
/// by the scheduler, never serialised: each task counts once, when it is
/// first seen failed, at the time of its status, so the old failed tasks a
/// new leader finds in the history count as they did, and a failure still
/// counts after its task was pruned from the history.
#[derive(Debug, Default)]
pub struct RecentFailures {
    /// Failed tasks already counted, with the time of their failure.
    seen: BTreeMap<TaskId, Millis>,
    by_service: BTreeMap<ServiceId, Vec<VersionFailures>>,
}

#[derive(Debug)]
struct VersionFailures {
    template: TaskTemplate,
    /// When each failure happened, per node.
    per_node: BTreeMap<NodeId, Vec<Millis>>,
}

impl RecentFailures {
    /// Counts the tasks of `tasks` that failed within the window and were
    /// not counted yet, and forgets failures older than the window. Returns
    /// the (service, node) pairs that reached [`MAX_FAILURES`] with this call.
    pub fn observe(&mut self, tasks: &BTreeMap<TaskId, Task>, now: Millis) -> Vec<(ServiceId, NodeId)> {
        self.observe_some(tasks.values(), now)
    }

    /// [`RecentFailures::observe`] over some tasks only: those that changed
    /// (a failure counts when its task is first seen failed).
    pub fn observe_some<'t>(
        &mut self,
        tasks: impl IntoIterator<Item = &'t Task>,
        now: Millis,
    ) -> Vec<(ServiceId, NodeId)> {
        let recent = |at: Millis| now.saturating_sub(at) < FAILURE_WINDOW_MS;
        self.seen.retain(|_, at| recent(*at));
        for versions in self.by_service.values_mut() {
            for v in versions.iter_mut() {
                v.per_node.retain(|_, times| {
                    times.retain(|at| recent(*at));
                    !times.is_empty()
                });
            }
            versions.retain(|v| !v.per_node.is_empty());
        }
        self.by_service.retain(|_, versions| !versions.is_empty());

        let mut reached = Vec::new();
        for t in tasks.into_iter().filter(|t| matches!(t.status.state, TaskState::Failed | TaskState::Rejected)) {
            let Some(node) = t.assigned_node() else { continue };
            // A clock ahead of ours would make the failure count for longer.
            let at = t.status.timestamp.min(now);
            if !recent(at) || self.seen.contains_key(&t.id) {
                continue;
            }
            self.seen.insert(t.id.clone(), at);
            let versions = self.by_service.entry(t.service_id.clone()).or_default();
            let i = match versions.iter().position(|v| v.template == t.spec) {
                Some(i) => i,
                None => {
                    versions.push(VersionFailures { template: t.spec.clone(), per_node: BTreeMap::new() });
                    versions.len() - 1
                }
            };
            let times = versions[i].per_node.entry(node.clone()).or_default();
            times.push(at);
            if times.len() == MAX_FAILURES {
                reached.push((t.service_id.clone(), node.clone()));
            }
        }
        reached
    }

    /// The nodes that reached [`MAX_FAILURES`] for `t`'s service version.
    pub(crate) fn failing_for(&self, t: &Task) -> BTreeSet<&NodeId> {
        self.by_service
            .get(&t.service_id)
            .and_then(|versions| versions.iter().find(|v| v.template == t.spec))
            .map(|v| v.per_node.iter().filter(|(_, times)| times.len() >= MAX_FAILURES).map(|(n, _)| n).collect())
            .unwrap_or_default()
    }
}

/// The waiting tasks of `tasks` in the order the plan takes them: those
/// that name their node first, oldest first, as in swarmkit (they have no
/// other node to go to); then the others by service and slot, so that a
/// service's tasks come together.
fn waiting_in_order(tasks: &BTreeMap<TaskId, Task>) -> (Vec<&Task>, Vec<&Task>) {
    let (mut preassigned, mut pending): (Vec<&Task>, Vec<&Task>) =
        tasks.values().filter(|t| waiting(t)).partition(|t| t.node_id.is_some());
    preassigned.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
    pending.sort_by(|a, b| (&a.service_id, a.slot, a.created_at).cmp(&(&b.service_id, b.slot, b.created_at)));
    (preassigned, pending)
}

/// Places the waiting tasks of `tasks` on `nodes`, avoiding (not refusing)
/// the nodes `failures` marks for a task's service.
///
/// The load is indexed once ([`SchedState`]) and kept as tasks are placed;
/// a service's tasks are placed from [`Candidates`], one per task template
/// of the service, which keep the nodes that admit it ranked, so a
/// placement costs O(log n) rather than a pass over every node. The result
/// is the one [`plan_scan`] computes.
pub fn plan<'a>(nodes: &[NodeView<'a>], tasks: &'a BTreeMap<TaskId, Task>, failures: &RecentFailures) -> Plan {
    plan_at_most(nodes, tasks, failures, usize::MAX)
}

/// [`plan`]'s first `limit` decisions (assignments and refusals): a plan
/// that fits in one proposal. Once they are committed, the next plan goes
/// on from there as this one would have.
pub fn plan_at_most<'a>(
    nodes: &[NodeView<'a>],
    tasks: &'a BTreeMap<TaskId, Task>,
    failures: &RecentFailures,
    limit: usize,
) -> Plan {
    let (preassigned, pending) = waiting_in_order(tasks);
    if preassigned.is_empty() && pending.is_empty() {
        // Most changes (status reports) leave nothing to place: no index.
        return Plan::default();
    }
    let mut state = SchedState::new(nodes, tasks.values());
    plan_in(&mut state, preassigned, pending, failures, limit)
}

/// [`plan_at_most`] from a state of the nodes and their load kept by the
/// caller, and the waiting tasks in the plan's order (those that name
/// their node, then the others by service: see `waiting_in_order`). The
/// state is left as it was: what the plan places is counted once the store
/// says so.
pub fn plan_in<'t>(
    state: &mut SchedState,
    preassigned: impl IntoIterator<Item = &'t Task>,
    pending: impl IntoIterator<Item = &'t Task>,
    failures: &RecentFailures,
    limit: usize,
) -> Plan {
    let mut placed: Vec<(&'t Task, usize)> = Vec::new();
    let out = place(state, preassigned, pending, failures, limit, &mut placed);
    for (t, i) in placed.into_iter().rev() {
        state.unplace(t, i);
    }
    out
}

fn place<'t>(
    state: &mut SchedState,
    preassigned: impl IntoIterator<Item = &'t Task>,
    pending: impl IntoIterator<Item = &'t Task>,
    failures: &RecentFailures,
    limit: usize,
    placed: &mut Vec<(&'t Task, usize)>,
) -> Plan {
    let mut out = Plan::default();
    for t in preassigned {
        if out.len() >= limit {
            return out;
        }
        let Some(node) = t.node_id.as_ref() else { continue };
        // A node gone from the store: the orchestrator takes the task away.
        let Some(i) = state.index_of(node) else { continue };
        // The same pipeline, over the one node (swarmkit's `taskFitNode`).
        match refused_by(&state.facts(i, state.service_tasks(&t.service_id, i)), t) {
            None => {
                state.place(t, i);
                placed.push((t, i));
                out.assign.push((t.id.clone(), node.clone()));
            }
            Some(f) => {
                let mut refused = vec![0; PIPELINE.len()];
                refused[f] = 1;
                out.refuse(t, explain(1, &refused));
            }
        }
    }
    let mut cache = IndexCache::default();
    // The service being placed: its tasks per node, and one set of
    // candidates per template among its waiting tasks (two during a
    // rolling update); each placement updates them all.
    let mut service: Option<&ServiceId> = None;
    let mut counts: Vec<usize> = Vec::new();
    let mut live: Vec<Candidates> = Vec::new();
    for t in pending {
        if out.len() >= limit {
            return out;
        }
        if service != Some(&t.service_id) {
            service = Some(&t.service_id);
            counts = state.dense_service_tasks(&t.service_id);
            live.clear();
        }
        let c = match live.iter().position(|c| c.serves(t)) {
            Some(c) => c,
            None => {
                let failing: Vec<usize> =
                    failures.failing_for(t).into_iter().filter_map(|n| state.index_of(n)).collect();
                live.push(Candidates::new(state, &counts, t, &failing, &mut cache));
                live.len() - 1
            }
        };
        match live[c].best() {
            Some(i) => {
                state.place(t, i);
                placed.push((t, i));
                counts[i] += 1;
                for c in &mut live {
                    c.placed(state, &counts, i);
                }
                out.assign.push((t.id.clone(), state.node(i).node.id.clone()));
            }
            None => {
                let reason = live[c].explain(state, &counts);
                out.refuse(t, reason);
            }
        }
    }
    out
}

/// The placement [`plan`] computes, found the simple way: every filter over
/// every node for every task. The reference the indexed plan is tested
/// against, and the baseline of `examples/bench_plan.rs`.
#[doc(hidden)]
pub fn plan_scan<'a>(nodes: &[NodeView<'a>], tasks: &'a BTreeMap<TaskId, Task>, failures: &RecentFailures) -> Plan {
    let mut load = Load::new(nodes, tasks);
    let (preassigned, pending) = waiting_in_order(tasks);

    let mut out = Plan::default();
    for t in preassigned {
        let Some(node) = t.node_id.as_ref() else { continue };
        // A node gone from the store: the orchestrator takes the task away.
        let Some(view) = load.nodes.iter().find(|v| &v.node.id == node) else { continue };
        // The same pipeline, over the one node (swarmkit's `taskFitNode`).
        let admitted = eligible(std::slice::from_ref(view), t).map(|_| ());
        match admitted {
            Ok(()) => {
                load.add(t, node);
                out.assign.push((t.id.clone(), node.clone()));
            }
            Err(reason) => out.refuse(t, reason),
        }
    }
    for t in pending {
        let best = match eligible(&load.nodes, t) {
            Ok(candidates) => {
                let group = spread(&load.nodes, candidates, &t.spec.scheduling.preferences, &t.service_id);
                // A ranking, not a filter: a failing node still takes the
                // task when no other node fits (a one-node cluster).
                let failing = failures.failing_for(t);
                group
                    .into_iter()
                    .map(|v| v.node)
                    .min_by_key(|n| {
                        (
                            failing.contains(&n.id),
                            load.per_service.get(&(&t.service_id, &n.id)).copied().unwrap_or(0),
                            load.total.get(&n.id).copied().unwrap_or(0),
                            &n.id,
                        )
                    })
                    .expect("eligible and spread return at least one node")
            }
            Err(reason) => {
                out.refuse(t, reason);
                continue;
            }
        };
        load.add(t, &best.id);
        out.assign.push((t.id.clone(), best.id.clone()));
    }
    out
}

impl Plan {
    /// How many decisions the plan holds.
    pub fn len(&self) -> usize {
        self.assign.len() + self.unplaceable.len()
    }

    pub fn is_empty(&self) -> bool {
        self.assign.is_empty() && self.unplaceable.is_empty()
    }

    /// Records why `t` cannot go anywhere (or not on its node). Proposes
    /// only what changes: a task already pending for the same reason needs
    /// no new entry in the log.
    fn refuse(&mut self, t: &Task, reason: String) {
        let unchanged = t.status.state == TaskState::Pending && t.status.err.as_deref() == Some(reason.as_str());
        if !unchanged {
            self.unplaceable.push((t.id.clone(), reason));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use common::constraint::Constraint;
    use common::node::Role;
    use common::spec::{ServiceSpec, TaskTemplate};
    use common::task::TaskStatus;

    fn node(name: &str, role: Role) -> Node {
        Node {
            id: format!("id-{name}").as_str().into(),
            raft_id: 1,
            hostname: name.into(),
            role,
            availability: Availability::Active,
            labels: Default::default(),
            addr: "127.0.0.1:4242".parse().unwrap(),
            created_at: 0,
            updated_at: 0,
        }
    }

    fn task(svc: &str, slot: u64, node: Option<&str>, constraints: &[&str]) -> Task {
        let spec = ServiceSpec::new(
            svc,
            1,
            TaskTemplate {
                constraints: constraints.iter().map(|c| Constraint::parse(c).unwrap()).collect(),
                ..TaskTemplate::new("img")
            },
        );
        Task {
            id: format!("{svc}-{slot}").as_str().into(),
            service_id: svc.into(),
            service_name: svc.into(),
            slot,
            node_id: node.map(|n| format!("id-{n}").as_str().into()),
            spec: spec.task,
            desired_state: TaskState::Running,
            status: TaskStatus::new(if node.is_some() { TaskState::Running } else { TaskState::New }, 0, ""),
            created_at: slot,
            attempt: 0,
            addresses: vec![],
            job_iteration: None,
        }
    }

    fn tasks(list: Vec<Task>) -> BTreeMap<TaskId, Task> {
        list.into_iter().map(|t| (t.id.clone(), t)).collect()
    }

    fn hosts(plan: &Plan) -> Vec<String> {
        plan.assign.iter().map(|(_, n)| n.as_str().trim_start_matches("id-").to_string()).collect()
    }

    #[test]
    fn six_tasks_spread_two_per_node() {
        let ns = [node("n1", Role::Manager), node("n2", Role::Worker), node("n3", Role::Worker)];
        let views: Vec<_> = ns.iter().map(|n| NodeView::new(n, true)).collect();
        let ts = tasks((1..=6).map(|s| task("web", s, None, &[])).collect());
        let p = plan(&views, &ts, &RecentFailures::default());
        assert_eq!(hosts(&p), ["n1", "n2", "n3", "n1", "n2", "n3"]);
        assert!(p.unplaceable.is_empty());
    }

    #[test]
    fn spread_prefers_fewest_of_the_service_then_fewest_overall() {
        let ns = [node("n1", Role::Manager), node("n2", Role::Worker), node("n3", Role::Worker)];
        let views: Vec<_> = ns.iter().map(|n| NodeView::new(n, true)).collect();
        // n1 and n2 run one "web" each; n3 runs two of "db".
        let ts = tasks(vec![
            task("web", 1, Some("n1"), &[]),
            task("web", 2, Some("n2"), &[]),
            task("db", 1, Some("n3"), &[]),
            task("db", 2, Some("n3"), &[]),
            task("web", 3, None, &[]),
            task("web", 4, None, &[]),
        ]);
        let p = plan(&views, &ts, &RecentFailures::default());
        // Slot 3 goes to n3 (no web there); slot 4 to n1 (1 web, 1 total) not n3.
        assert_eq!(hosts(&p), ["n3", "n1"]);
    }

    #[test]
    fn constraints_filter_and_explain() {
        let ns = [node("n1", Role::Manager), node("n2", Role::Worker), node("n3", Role::Worker)];
        let views: Vec<_> = ns.iter().map(|n| NodeView::new(n, true)).collect();
        let ts = tasks(vec![
            task("a", 1, None, &["node.role==manager"]),
            task("a", 2, None, &["node.role==manager"]),
            task("b", 1, None, &["node.labels.zone==mars"]),
        ]);
        let p = plan(&views, &ts, &RecentFailures::default());
        assert_eq!(hosts(&p), ["n1", "n1"]);
        assert_eq!(
            p.unplaceable,
            vec![("b-1".into(), "no suitable node (scheduling constraints not satisfied on 3 nodes)".to_string())]
        );
    }

    #[test]
    fn down_and_paused_nodes_are_skipped_and_explained() {
        let mut paused = node("n2", Role::Worker);
        paused.availability = Availability::Pause;
        let ns = [node("n1", Role::Manager), paused, node("n3", Role::Worker)];
        let views = vec![NodeView::new(&ns[0], false), NodeView::new(&ns[1], true), NodeView::new(&ns[2], true)];
        let ts = tasks(vec![task("a", 1, None, &[]), task("b", 1, None, &["node.hostname==n1"])]);
        let p = plan(&views, &ts, &RecentFailures::default());
        assert_eq!(hosts(&p), ["n3"]);
        assert_eq!(
            p.unplaceable[0].1,
            "no suitable node (node not ready on 1 node; node not available for new tasks on 1 node; scheduling constraints not satisfied on 1 node)"
        );
    }

    #[test]
    fn a_pending_task_with_the_same_reason_is_not_proposed_again_and_is_placed_when_a_node_fits() {
        let ns = [node("n1", Role::Worker)];
        let views: Vec<_> = ns.iter().map(|n| NodeView::new(n, true)).collect();
        let mut t = task("a", 1, None, &["node.role==manager"]);
        t.status.state = TaskState::Pending;
        t.status.err = Some("no suitable node (scheduling constraints not satisfied on 1 node)".into());
        let ts = tasks(vec![t]);
        assert_eq!(plan(&views, &ts, &RecentFailures::default()), Plan::default());
        let m = [node("n1", Role::Manager)];
        let views: Vec<_> = m.iter().map(|n| NodeView::new(n, true)).collect();
        assert_eq!(hosts(&plan(&views, &ts, &RecentFailures::default())), ["n1"]);
    }

    #[test]
    fn host_mode_ports_keep_tasks_on_different_nodes() {
        let ns = [node("n1", Role::Manager), node("n2", Role::Worker)];
        let views: Vec<_> = ns.iter().map(|n| NodeView::new(n, true)).collect();
        let mut list: Vec<Task> = (1..=3).map(|s| task("h", s, None, &[])).collect();
        for t in &mut list {
            t.spec.ports = vec!["published=9000,target=80,mode=host".parse().unwrap()];
        }
        let p = plan(&views, &tasks(list), &RecentFailures::default());
        assert_eq!(hosts(&p), ["n1", "n2"]);
        assert_eq!(p.unplaceable[0].1, "no suitable node (host-mode port already in use on 2 nodes)");
    }

    /// A global task on `node`, as the orchestrator makes it: NEW, naming
    /// its node, publishing `port` in host mode if given.
    fn global(svc: &str, node: &str, port: Option<u16>, created_at: u64) -> Task {
        let mut t = task(svc, 0, Some(node), &[]);
        t.id = format!("{svc}-{node}").as_str().into();
        t.status = TaskStatus::new(TaskState::New, created_at, "created");
        t.created_at = created_at;
        if let Some(p) = port {
            t.spec.ports = vec![format!("published={p},target=80,mode=host").parse().unwrap()];
        }
        t
    }

    fn running(mut t: Task) -> Task {
        t.status = TaskStatus::new(TaskState::Running, 0, "");
        t
    }

    #[test]
    fn a_task_that_names_its_node_is_admitted_there_and_nowhere_else() {
        let ns = [node("n1", Role::Manager), node("n2", Role::Worker)];
        let views: Vec<_> = ns.iter().map(|n| NodeView::new(n, true)).collect();
        // Spreading would pick n1 (empty); the task names n2, which runs a
        // task already.
        let ts = tasks(vec![task("busy", 1, Some("n2"), &[]), global("mon", "n2", Some(9000), 5)]);
        let p = plan(&views, &ts, &RecentFailures::default());
        assert_eq!(p.assign, vec![("mon-n2".into(), "id-n2".into())]);
        assert!(p.unplaceable.is_empty());
    }

    #[test]
    fn a_task_that_names_its_node_passes_the_filters_there_and_is_refused_with_the_reason() {
        let mut paused = node("n2", Role::Worker);
        paused.availability = Availability::Pause;
        let ns = [node("n1", Role::Manager), paused, node("n3", Role::Worker), node("n4", Role::Worker)];
        let ready = [true, true, false, true];
        let views: Vec<_> = ns.iter().zip(ready).map(|(n, r)| NodeView::new(n, r)).collect();
        let mut on_n4 = global("db", "n4", None, 1);
        on_n4.spec.constraints = vec![Constraint::parse("node.role==manager").unwrap()];
        let ts = tasks(vec![
            // n1's port 9000 is taken by a running task of another service.
            running(global("edge", "n1", Some(9000), 0)),
            global("mon", "n1", Some(9000), 5),
            global("mon", "n2", Some(9000), 5),
            global("mon", "n3", Some(9000), 5),
            on_n4,
        ]);
        let p = plan(&views, &ts, &RecentFailures::default());
        assert_eq!(p.assign, vec![], "each refused on its node, none moved to another");
        let mut why = p.unplaceable.clone();
        why.sort();
        assert_eq!(
            why,
            vec![
                ("db-n4".into(), "no suitable node (scheduling constraints not satisfied on 1 node)".to_string()),
                ("mon-n1".into(), "no suitable node (host-mode port already in use on 1 node)".to_string()),
                ("mon-n2".into(), "no suitable node (node not available for new tasks on 1 node)".to_string()),
                ("mon-n3".into(), "no suitable node (node not ready on 1 node)".to_string()),
            ]
        );
    }

    #[test]
    fn a_refused_task_keeps_its_reason_unproposed_and_is_admitted_once_the_port_is_free() {
        let ns = [node("n1", Role::Manager)];
        let views: Vec<_> = ns.iter().map(|n| NodeView::new(n, true)).collect();
        let mut waiting = global("mon", "n1", Some(9000), 5);
        waiting.status.state = TaskState::Pending;
        waiting.status.err = Some("no suitable node (host-mode port already in use on 1 node)".into());
        let ts = tasks(vec![running(global("edge", "n1", Some(9000), 0)), waiting.clone()]);
        assert_eq!(plan(&views, &ts, &RecentFailures::default()), Plan::default(), "same reason: nothing new to say");
        // The other service goes: its own port does not hold the task back.
        let ts = tasks(vec![waiting]);
        assert_eq!(plan(&views, &ts, &RecentFailures::default()).assign, vec![("mon-n1".into(), "id-n1".into())]);
    }

    #[test]
    fn tasks_waiting_on_their_node_hold_no_port_and_the_oldest_wins_a_port() {
        let ns = [node("n1", Role::Manager), node("n2", Role::Worker)];
        let views: Vec<_> = ns.iter().map(|n| NodeView::new(n, true)).collect();
        // Two global services on one port, both new on n1, and a replica of a
        // third service on the same port: the older global task gets n1, the
        // newer is refused, the replica goes to n2.
        let mut replica = task("web", 1, None, &[]);
        replica.spec.ports = vec!["published=9000,target=80,mode=host".parse().unwrap()];
        let ts = tasks(vec![global("b", "n1", Some(9000), 7), global("a", "n1", Some(9000), 3), replica]);
        let p = plan(&views, &ts, &RecentFailures::default());
        assert_eq!(p.assign, vec![("a-n1".into(), "id-n1".into()), ("web-1".into(), "id-n2".into())]);
        assert_eq!(
            p.unplaceable,
            vec![("b-n1".into(), "no suitable node (host-mode port already in use on 1 node)".to_string())]
        );
    }

    #[test]
    fn a_task_naming_a_removed_node_is_left_to_the_orchestrator() {
        let ns = [node("n1", Role::Manager)];
        let views: Vec<_> = ns.iter().map(|n| NodeView::new(n, true)).collect();
        assert_eq!(
            plan(&views, &tasks(vec![global("mon", "gone", None, 0)]), &RecentFailures::default()),
            Plan::default()
        );
    }

    /// The `n`th finished task of `svc` on `node`, ended `state` at `at`.
    fn ended(svc: &str, n: u64, node: &str, state: TaskState, at: Millis) -> Task {
        let mut t = task(svc, 1, Some(node), &[]);
        t.id = format!("{svc}-{node}-{n}").as_str().into();
        t.desired_state = TaskState::Shutdown;
        t.status = TaskStatus::new(state, at, "");
        t
    }

    /// Web's slots 2 and 3 run on n1 and n3, slot 1 waits: spreading alone
    /// puts it on n2, where `history` happened.
    fn web_waiting_with(history: Vec<Task>) -> BTreeMap<TaskId, Task> {
        let mut list =
            vec![task("web", 1, None, &[]), task("web", 2, Some("n1"), &[]), task("web", 3, Some("n3"), &[])];
        list.extend(history);
        tasks(list)
    }

    fn failures_on(node: &str, svc: &str, n: u64, state: TaskState, at: Millis) -> Vec<Task> {
        (0..n).map(|i| ended(svc, i, node, state, at + i)).collect()
    }

    #[test]
    fn a_node_where_the_service_keeps_failing_is_avoided_once_over_the_threshold() {
        let ns = [node("n1", Role::Manager), node("n2", Role::Worker), node("n3", Role::Worker)];
        let views: Vec<_> = ns.iter().map(|n| NodeView::new(n, true)).collect();
        let now = 10_000;
        let below = MAX_FAILURES as u64 - 1;
        let mut f = RecentFailures::default();
        let ts = web_waiting_with(failures_on("n2", "web", below, TaskState::Rejected, 1_000));
        assert_eq!(f.observe(&ts, now), vec![]);
        // Seen again on the next change: each failure counts once.
        assert_eq!(f.observe(&ts, now + 1), vec![]);
        assert_eq!(hosts(&plan(&views, &ts, &f)), ["n2"], "below the threshold: spread as usual");

        // One more failure (FAILED counts like REJECTED) reaches it.
        let mut history = failures_on("n2", "web", below, TaskState::Rejected, 1_000);
        history.push(ended("web", 99, "n2", TaskState::Failed, 2_000));
        let ts = web_waiting_with(history);
        assert_eq!(f.observe(&ts, now + 2), vec![("web".into(), "id-n2".into())]);
        assert_eq!(hosts(&plan(&views, &ts, &f)), ["n1"], "the failing node last; then spread (n1 by id)");
        assert_eq!(f.observe(&ts, now + 3), vec![], "reached once");
    }

    #[test]
    fn tasks_shut_down_completed_or_orphaned_are_not_failures() {
        let ns = [node("n1", Role::Manager), node("n2", Role::Worker), node("n3", Role::Worker)];
        let views: Vec<_> = ns.iter().map(|n| NodeView::new(n, true)).collect();
        let mut history = Vec::new();
        for (i, state) in [TaskState::Shutdown, TaskState::Complete, TaskState::Orphaned].into_iter().enumerate() {
            history.extend(failures_on("n2", &format!("web{i}"), MAX_FAILURES as u64, state, 1_000));
        }
        for t in &mut history {
            t.service_id = "web".into();
        }
        let ts = web_waiting_with(history);
        let mut f = RecentFailures::default();
        f.observe(&ts, 2_000);
        assert_eq!(hosts(&plan(&views, &ts, &f)), ["n2"]);
    }

    #[test]
    fn a_failing_node_is_used_when_it_is_the_only_fit() {
        // One node: the service restarts there however often it fails.
        let ns = [node("n1", Role::Manager)];
        let views: Vec<_> = ns.iter().map(|n| NodeView::new(n, true)).collect();
        let mut list = failures_on("n1", "web", MAX_FAILURES as u64 + 3, TaskState::Failed, 1_000);
        list.push(task("web", 1, None, &[]));
        let ts = tasks(list);
        let mut f = RecentFailures::default();
        f.observe(&ts, 2_000);
        let p = plan(&views, &ts, &f);
        assert_eq!(hosts(&p), ["n1"]);
        assert!(p.unplaceable.is_empty());
        // The others do not fit: n2 is paused, n3 fails the constraint.
        let mut paused = node("n2", Role::Worker);
        paused.availability = Availability::Pause;
        let ns = [node("n1", Role::Manager), paused, node("n3", Role::Worker)];
        let views: Vec<_> = ns.iter().map(|n| NodeView::new(n, true)).collect();
        let mut list = failures_on("n1", "web", MAX_FAILURES as u64, TaskState::Rejected, 1_000);
        list.push(task("web", 1, None, &["node.role==manager"]));
        for t in &mut list {
            t.spec.constraints = vec![Constraint::parse("node.role==manager").unwrap()];
        }
        let ts = tasks(list);
        let mut f = RecentFailures::default();
        f.observe(&ts, 2_000);
        assert_eq!(hosts(&plan(&views, &ts, &f)), ["n1"]);
    }

    #[test]
    fn failures_are_forgotten_after_the_window() {
        let ns = [node("n1", Role::Manager), node("n2", Role::Worker), node("n3", Role::Worker)];
        let views: Vec<_> = ns.iter().map(|n| NodeView::new(n, true)).collect();
        // All at 1_000 so that they age together.
        let history: Vec<Task> =
            (0..MAX_FAILURES as u64).map(|i| ended("web", i, "n2", TaskState::Failed, 1_000)).collect();
        let ts = web_waiting_with(history);
        let mut f = RecentFailures::default();
        f.observe(&ts, 1_000);
        assert_eq!(hosts(&plan(&views, &ts, &f)), ["n1"]);
        f.observe(&ts, 1_000 + FAILURE_WINDOW_MS - 1);
        assert_eq!(hosts(&plan(&views, &ts, &f)), ["n1"], "still within the window");
        f.observe(&ts, 1_000 + FAILURE_WINDOW_MS);
        assert_eq!(hosts(&plan(&views, &ts, &f)), ["n2"], "forgotten, though still in the history");
        // A new leader's scheduler finds the old failures in the history and
        // does not count them either.
        let mut fresh = RecentFailures::default();
        fresh.observe(&ts, 1_000 + FAILURE_WINDOW_MS);
        assert_eq!(hosts(&plan(&views, &ts, &fresh)), ["n2"]);
    }

    #[test]
    fn a_failure_still_counts_after_its_task_left_the_history() {
        let ns = [node("n1", Role::Manager), node("n2", Role::Worker), node("n3", Role::Worker)];
        let views: Vec<_> = ns.iter().map(|n| NodeView::new(n, true)).collect();
        let mut f = RecentFailures::default();
        for i in 0..MAX_FAILURES as u64 {
            // The history keeps one failed task at a time.
            f.observe(&web_waiting_with(vec![ended("web", i, "n2", TaskState::Failed, 1_000 + i)]), 2_000);
        }
        assert_eq!(hosts(&plan(&views, &web_waiting_with(vec![]), &f)), ["n1"]);
    }

    #[test]
    fn failures_count_per_service_and_version() {
        let ns = [node("n1", Role::Manager), node("n2", Role::Worker), node("n3", Role::Worker)];
        let views: Vec<_> = ns.iter().map(|n| NodeView::new(n, true)).collect();
        // Another service failed on n2 as often as can be: web is not affected.
        let ts = web_waiting_with(failures_on("n2", "db", 2 * MAX_FAILURES as u64, TaskState::Failed, 1_000));
        let mut f = RecentFailures::default();
        assert_eq!(f.observe(&ts, 2_000), vec![("db".into(), "id-n2".into())]);
        assert_eq!(hosts(&plan(&views, &ts, &f)), ["n2"]);

        // Web's old template failed on n2; its updated one is placed as usual.
        let mut old = failures_on("n2", "web", MAX_FAILURES as u64, TaskState::Rejected, 1_000);
        for t in &mut old {
            t.spec.image = "img:broken".into();
        }
        let ts = web_waiting_with(old);
        let mut f = RecentFailures::default();
        f.observe(&ts, 2_000);
        assert_eq!(hosts(&plan(&views, &ts, &f)), ["n2"]);
    }

    fn described(cpus: u64) -> NodeDescription {
        NodeDescription {
            resources: Resources { nano_cpus: cpus * 500_000_000, memory_bytes: 1 << 30, ..Default::default() },
            os: "linux".into(),
            arch: "x86_64".into(),
            ..Default::default()
        }
    }

    /// `t` reserving `half_cpus` halves of a CPU.
    fn reserving(mut t: Task, half_cpus: u64) -> Task {
        t.spec.scheduling.reservations.nano_cpus = half_cpus * 500_000_000;
        t
    }

    #[test]
    fn reservations_stay_within_each_nodes_capacity_and_a_task_that_fits_nowhere_says_so() {
        let ns = [node("n1", Role::Manager), node("n2", Role::Worker), node("n3", Role::Worker)];
        let two_cpus = described(4);
        let views: Vec<_> = ns.iter().map(|n| NodeView::new(n, true).described(Some(&two_cpus))).collect();
        // 4 replicas reserving 1.5 CPU on three nodes of 2 CPUs.
        let ts = tasks((1..=4).map(|s| reserving(task("web", s, None, &[]), 3)).collect());
        let p = plan(&views, &ts, &RecentFailures::default());
        assert_eq!(hosts(&p), ["n1", "n2", "n3"]);
        assert_eq!(
            p.unplaceable,
            vec![("web-4".into(), "no suitable node (insufficient resources on 3 nodes)".to_string())]
        );
        // What runs already counts: n1 runs a task of another service
        // reserving 1 CPU, so 1.5 more only fits on n2 and n3; a task that
        // reserves nothing goes anywhere, however full.
        let ts = tasks(vec![
            reserving(task("db", 1, Some("n1"), &[]), 2),
            reserving(task("web", 1, None, &[]), 3),
            reserving(task("web", 2, None, &[]), 3),
            reserving(task("web", 3, None, &[]), 1),
            task("free", 1, None, &[]),
        ]);
        let p = plan(&views, &ts, &RecentFailures::default());
        // In order: free (to empty n2 by id), web.1 (not n1: 1 + 1.5 > 2; n3,
        // emptier than n2), web.2 (n2, the last with 1.5 left), web.3 (0.5:
        // n1, the only one without a web task, fits it).
        assert_eq!(hosts(&p), ["n2", "n3", "n2", "n1"]);
        assert!(p.unplaceable.is_empty());
    }

    #[test]
    fn a_node_that_has_not_reported_takes_no_reservation() {
        let ns = [node("n1", Role::Manager), node("n2", Role::Worker)];
        let big = described(8);
        let views = vec![NodeView::new(&ns[0], true), NodeView::new(&ns[1], true).described(Some(&big))];
        let mut gpu = task("gpu", 1, None, &[]);
        gpu.spec.scheduling.reservations.generic.insert("gpu".into(), 1);
        let ts = tasks(vec![reserving(task("web", 1, None, &[]), 1), task("web", 2, None, &[]), gpu]);
        let p = plan(&views, &ts, &RecentFailures::default());
        assert_eq!(p.assign, vec![("web-1".into(), "id-n2".into()), ("web-2".into(), "id-n1".into())]);
        assert_eq!(
            p.unplaceable,
            vec![("gpu-1".into(), "no suitable node (insufficient resources on 2 nodes)".into())]
        );
    }

    #[test]
    fn a_global_task_meets_the_resource_filter_on_its_node() {
        let ns = [node("n1", Role::Manager)];
        let two_cpus = described(4);
        let views = vec![NodeView::new(&ns[0], true).described(Some(&two_cpus))];
        let ts = tasks(vec![reserving(task("db", 1, Some("n1"), &[]), 3), reserving(global("mon", "n1", None, 5), 2)]);
        let p = plan(&views, &ts, &RecentFailures::default());
        assert_eq!(
            p.unplaceable,
            vec![("mon-n1".into(), "no suitable node (insufficient resources on 1 node)".into())]
        );
    }

    #[test]
    fn max_replicas_per_node_caps_each_node_and_explains_in_swarms_words() {
        let ns = [node("n1", Role::Manager), node("n2", Role::Worker)];
        let views: Vec<_> = ns.iter().map(|n| NodeView::new(n, true)).collect();
        let capped = |slot: u64, node: Option<&str>| {
            let mut t = task("web", slot, node, &[]);
            t.spec.scheduling.max_replicas_per_node = 2;
            t
        };
        let ts = tasks(vec![
            capped(1, Some("n1")),
            capped(2, Some("n1")),
            capped(3, None),
            capped(4, None),
            capped(5, None),
        ]);
        let p = plan(&views, &ts, &RecentFailures::default());
        assert_eq!(hosts(&p), ["n2", "n2"]);
        assert_eq!(
            p.unplaceable,
            vec![("web-5".into(), "no suitable node (max replicas per node limit exceed)".into())]
        );
        // Other services' tasks do not count toward the cap.
        let ts = tasks(vec![task("db", 1, Some("n2"), &[]), task("db", 2, Some("n2"), &[]), capped(1, None)]);
        let p = plan(&views, &ts, &RecentFailures::default());
        assert_eq!(hosts(&p), ["n1"]);
    }

    fn zoned(name: &str, labels: &[(&str, &str)]) -> Node {
        let mut n = node(name, Role::Worker);
        n.labels = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        n
    }

    fn spreading(svc: &str, slot: u64, prefs: &[&str]) -> Task {
        let mut t = task(svc, slot, None, &[]);
        t.spec.scheduling.preferences = prefs.iter().map(|p| Spread(p.to_string())).collect();
        t
    }

    #[test]
    fn spread_evens_out_the_values_and_nodes_without_the_label_form_their_own_group() {
        // Zone a has two nodes, b one, n4 has no zone.
        let ns = [
            zoned("n1", &[("zone", "a")]),
            zoned("n2", &[("zone", "a")]),
            zoned("n3", &[("zone", "b")]),
            zoned("n4", &[]),
        ];
        let views: Vec<_> = ns.iter().map(|n| NodeView::new(n, true)).collect();
        let ts = tasks((1..=8).map(|s| spreading("web", s, &["node.labels.zone"])).collect());
        let p = plan(&views, &ts, &RecentFailures::default());
        // Groups "", a, b in turn (ties: the lesser value), then within a
        // group the least loaded node.
        assert_eq!(hosts(&p), ["n4", "n1", "n3", "n4", "n2", "n3", "n4", "n1"]);
        // Without the preference the nodes share equally.
        let ts = tasks((1..=8).map(|s| task("web", s, None, &[])).collect());
        assert_eq!(
            hosts(&plan(&views, &ts, &RecentFailures::default())),
            ["n1", "n2", "n3", "n4", "n1", "n2", "n3", "n4"]
        );
    }

    #[test]
    fn spread_preferences_nest_in_order() {
        // dc first, then rack within the dc.
        let ns = [
            zoned("n1", &[("dc", "east"), ("rack", "r1")]),
            zoned("n2", &[("dc", "east"), ("rack", "r2")]),
            zoned("n3", &[("dc", "east"), ("rack", "r2")]),
            zoned("n4", &[("dc", "west"), ("rack", "r1")]),
        ];
        let views: Vec<_> = ns.iter().map(|n| NodeView::new(n, true)).collect();
        let ts = tasks((1..=6).map(|s| spreading("web", s, &["node.labels.dc", "node.labels.rack"])).collect());
        let p = plan(&views, &ts, &RecentFailures::default());
        // east/west alternate; within east, r1 and r2 alternate; within r2, n2 and n3.
        assert_eq!(hosts(&p), ["n1", "n4", "n2", "n4", "n1", "n4"]);
    }

    #[test]
    fn spread_counts_the_tasks_on_nodes_that_cannot_take_more() {
        let mut full = zoned("n1", &[("zone", "a")]);
        full.availability = Availability::Pause;
        let ns = [full, zoned("n2", &[("zone", "a")]), zoned("n3", &[("zone", "b")])];
        let views: Vec<_> = ns.iter().map(|n| NodeView::new(n, true)).collect();
        let mut on_n1 = task("web", 1, Some("n1"), &[]);
        on_n1.spec.scheduling.preferences = vec![Spread("node.labels.zone".into())];
        let ts =
            tasks(vec![on_n1, spreading("web", 2, &["node.labels.zone"]), spreading("web", 3, &["node.labels.zone"])]);
        let p = plan(&views, &ts, &RecentFailures::default());
        // Zone a holds one task already (on paused n1): b first, then a's n2.
        assert_eq!(hosts(&p), ["n3", "n2"]);
    }

    #[test]
    fn platform_and_engine_label_constraints_use_the_description() {
        let ns = [node("n1", Role::Manager), node("n2", Role::Worker)];
        let mut arm = described(2);
        arm.arch = "aarch64".into();
        arm.engine_labels.insert("storage".into(), "ssd".into());
        let x86 = described(2);
        let views =
            vec![NodeView::new(&ns[0], true).described(Some(&x86)), NodeView::new(&ns[1], true).described(Some(&arm))];
        let ts = tasks(vec![
            task("a", 1, None, &["node.platform.arch==aarch64"]),
            task("b", 1, None, &["engine.labels.storage==ssd", "node.platform.os==linux"]),
            task("c", 1, None, &["node.platform.os==windows"]),
        ]);
        let p = plan(&views, &ts, &RecentFailures::default());
        assert_eq!(hosts(&p), ["n2", "n2"]);
        assert_eq!(p.unplaceable[0].1, "no suitable node (scheduling constraints not satisfied on 2 nodes)");
    }

    #[test]
    fn a_plan_cut_short_goes_on_where_it_stopped_once_committed() {
        let ns = [node("n1", Role::Manager), node("n2", Role::Worker), node("n3", Role::Worker)];
        let views: Vec<_> = ns.iter().map(|n| NodeView::new(n, true)).collect();
        let mut list: Vec<Task> = (1..=5).map(|s| task("web", s, None, &[])).collect();
        list.push(task("db", 1, None, &["node.labels.zone==mars"]));
        list.push(task("db", 2, None, &[]));
        let mut ts = tasks(list);
        let whole = plan(&views, &ts, &RecentFailures::default());
        let first = plan_at_most(&views, &ts, &RecentFailures::default(), 4);
        assert_eq!(first.len(), 4);
        // db sorts first: its refusal and its placement, then two of web.
        assert_eq!(first.unplaceable, whole.unplaceable);
        assert_eq!(first.assign[..], whole.assign[..3]);
        for (id, node) in &first.assign {
            let t = ts.get_mut(id).unwrap();
            t.node_id = Some(node.clone());
            t.status = TaskStatus::new(TaskState::Assigned, 1, "assigned");
        }
        let rest = plan_at_most(&views, &ts, &RecentFailures::default(), 4);
        assert_eq!(rest.assign[..], whole.assign[3..]);
        // The refused task is proposed again: it is still NEW in this test.
        assert_eq!(rest.unplaceable, whole.unplaceable);
    }

    #[test]
    fn no_nodes_at_all() {
        let ts = tasks(vec![task("a", 1, None, &[])]);
        let p = plan(&[], &ts, &RecentFailures::default());
        assert_eq!(p.unplaceable[0].1, "no suitable node (no nodes in the cluster)");
    }
}
