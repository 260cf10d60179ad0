//! Pure placement: which node each unassigned task goes to, and whether a
//! task that names its node (a global service's) may run there.
//!
//! A pipeline of filters decides which nodes can take a task; each filter
//! can say why it refused, which is how a user learns
//! `no suitable node (scheduling constraints not satisfied on 3 nodes)`.
//! Among the nodes left, spread: fewest tasks of this service, then fewest
//! tasks overall, then node ID (so the plan is deterministic). A task that
//! names its node meets the same pipeline over that node alone (swarmkit's
//! `taskFitNode`): admitted, it is assigned there; refused, it stays PENDING
//! with the reason and is looked at again on the next change.

use std::collections::{BTreeMap, BTreeSet};

use common::constraint::all_match;
use common::mesh::{Protocol, PublishMode};
use common::node::{Availability, Node};
use common::task::{Task, TaskState};
use common::{NodeId, ServiceId, TaskId};

/// What the scheduler sees of one node.
#[derive(Clone, Debug)]
pub struct NodeView<'a> {
    pub node: &'a Node,
    pub ready: bool,
    /// Host-mode ports taken by active tasks on the node.
    pub host_ports: BTreeSet<(u16, Protocol)>,
}

impl<'a> NodeView<'a> {
    pub fn new(node: &'a Node, ready: bool) -> Self {
        NodeView { node, ready, host_ports: BTreeSet::new() }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub assign: Vec<(TaskId, NodeId)>,
    /// Tasks that fit nowhere, with the explanation shown in their error.
    pub unplaceable: Vec<(TaskId, String)>,
}

/// One step of the filter pipeline.
trait Filter {
    /// Words for "this filter refused N nodes", e.g. "scheduling constraints
    /// not satisfied on".
    fn explain(&self) -> &'static str;
    fn admits(&self, view: &NodeView, task: &Task) -> bool;
}

struct ReadyFilter;
impl Filter for ReadyFilter {
    fn explain(&self) -> &'static str {
        "node not ready on"
    }
    fn admits(&self, view: &NodeView, _: &Task) -> bool {
        view.ready
    }
}

struct AvailabilityFilter;
impl Filter for AvailabilityFilter {
    fn explain(&self) -> &'static str {
        "node not available for new tasks on"
    }
    fn admits(&self, view: &NodeView, _: &Task) -> bool {
        view.node.availability == Availability::Active
    }
}

struct ConstraintFilter;
impl Filter for ConstraintFilter {
    fn explain(&self) -> &'static str {
        "scheduling constraints not satisfied on"
    }
    fn admits(&self, view: &NodeView, task: &Task) -> bool {
        all_match(&task.spec.constraints, view.node)
    }
}

/// Host-mode publishes bind the node's port: one task per port per node.
struct HostPortFilter;
impl Filter for HostPortFilter {
    fn explain(&self) -> &'static str {
        "host-mode port already in use on"
    }
    fn admits(&self, view: &NodeView, task: &Task) -> bool {
        host_ports(task).all(|p| !view.host_ports.contains(&p))
    }
}

/// The (port, protocol) pairs a task binds on its node.
pub fn host_ports(task: &Task) -> impl Iterator<Item = (u16, Protocol)> + '_ {
    task.spec.ports.iter().filter(|p| p.mode == PublishMode::Host).filter_map(|p| p.published.map(|n| (n, p.protocol)))
}

const PIPELINE: &[&dyn Filter] = &[&ReadyFilter, &AvailabilityFilter, &ConstraintFilter, &HostPortFilter];

fn plural(n: usize) -> &'static str {
    if n == 1 {
        "node"
    } else {
        "nodes"
    }
}

/// Runs the pipeline over every node; returns the admitted nodes or the
/// explanation of why none was.
fn eligible<'a>(nodes: &[NodeView<'a>], task: &Task) -> Result<Vec<&'a Node>, String> {
    let mut refused = vec![0usize; PIPELINE.len()];
    let mut ok = Vec::new();
    'nodes: for v in nodes {
        for (i, f) in PIPELINE.iter().enumerate() {
            if !f.admits(v, task) {
                refused[i] += 1;
                continue 'nodes;
            }
        }
        ok.push(v.node);
    }
    if !ok.is_empty() {
        return Ok(ok);
    }
    if nodes.is_empty() {
        return Err("no suitable node (no nodes in the cluster)".into());
    }
    let reasons: Vec<String> = PIPELINE
        .iter()
        .zip(&refused)
        .filter(|(_, n)| **n > 0)
        .map(|(f, n)| format!("{} {} {}", f.explain(), n, plural(*n)))
        .collect();
    Err(format!("no suitable node ({})", reasons.join("; ")))
}

/// Meant to run and not yet on a node: placed anywhere (no `node_id`), or
/// admitted on the one node it names (a global task).
fn waiting(t: &Task) -> bool {
    t.desired_state == TaskState::Running && matches!(t.status.state, TaskState::New | TaskState::Pending)
}

/// The load so far, kept up to date as the plan places tasks: host ports
/// bound per node, active tasks per node and per (service, node). Only
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
        }
    }
}

pub fn plan<'a>(nodes: &[NodeView<'a>], tasks: &'a BTreeMap<TaskId, Task>) -> Plan {
    let mut load = Load::new(nodes, tasks);
    let (mut preassigned, mut pending): (Vec<&Task>, Vec<&Task>) =
        tasks.values().filter(|t| waiting(t)).partition(|t| t.node_id.is_some());
    // Tasks that name their node go first, oldest first, as in swarmkit:
    // they have no other node to go to.
    preassigned.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
    pending.sort_by(|a, b| (&a.service_id, a.slot, a.created_at).cmp(&(&b.service_id, b.slot, b.created_at)));

    let mut out = Plan::default();
    for t in preassigned {
        let Some(node) = t.node_id.as_ref() else { continue };
        // A node gone from the store: the orchestrator takes the task away.
        let Some(view) = load.nodes.iter().find(|v| &v.node.id == node) else { continue };
        // The same pipeline, over the one node (swarmkit's `taskFitNode`).
        match eligible(std::slice::from_ref(view), t) {
            Ok(_) => {
                load.add(t, node);
                out.assign.push((t.id.clone(), node.clone()));
            }
            Err(reason) => out.refuse(t, reason),
        }
    }
    for t in pending {
        match eligible(&load.nodes, t) {
            Ok(candidates) => {
                let best = candidates
                    .into_iter()
                    .min_by_key(|n| {
                        (
                            load.per_service.get(&(&t.service_id, &n.id)).copied().unwrap_or(0),
                            load.total.get(&n.id).copied().unwrap_or(0),
                            &n.id,
                        )
                    })
                    .expect("eligible returns at least one node");
                load.add(t, &best.id);
                out.assign.push((t.id.clone(), best.id.clone()));
            }
            Err(reason) => out.refuse(t, reason),
        }
    }
    out
}

impl Plan {
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
        let p = plan(&views, &ts);
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
        let p = plan(&views, &ts);
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
        let p = plan(&views, &ts);
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
        let p = plan(&views, &ts);
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
        assert_eq!(plan(&views, &ts), Plan::default());
        let m = [node("n1", Role::Manager)];
        let views: Vec<_> = m.iter().map(|n| NodeView::new(n, true)).collect();
        assert_eq!(hosts(&plan(&views, &ts)), ["n1"]);
    }

    #[test]
    fn host_mode_ports_keep_tasks_on_different_nodes() {
        let ns = [node("n1", Role::Manager), node("n2", Role::Worker)];
        let views: Vec<_> = ns.iter().map(|n| NodeView::new(n, true)).collect();
        let mut list: Vec<Task> = (1..=3).map(|s| task("h", s, None, &[])).collect();
        for t in &mut list {
            t.spec.ports = vec!["published=9000,target=80,mode=host".parse().unwrap()];
        }
        let p = plan(&views, &tasks(list));
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
        let p = plan(&views, &ts);
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
        let p = plan(&views, &ts);
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
        assert_eq!(plan(&views, &ts), Plan::default(), "same reason: nothing new to say");
        // The other service goes: its own port does not hold the task back.
        let ts = tasks(vec![waiting]);
        assert_eq!(plan(&views, &ts).assign, vec![("mon-n1".into(), "id-n1".into())]);
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
        let p = plan(&views, &ts);
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
        assert_eq!(plan(&views, &tasks(vec![global("mon", "gone", None, 0)])), Plan::default());
    }

    #[test]
    fn no_nodes_at_all() {
        let ts = tasks(vec![task("a", 1, None, &[])]);
        let p = plan(&[], &ts);
        assert_eq!(p.unplaceable[0].1, "no suitable node (no nodes in the cluster)");
    }
}
