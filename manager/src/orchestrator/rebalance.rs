//! `service update --rebalance`, pure: the fewest tasks to move so that a
//! replicated service's running tasks spread evenly (counts differing by at
//! most one) over the nodes that may take them (moby #24103: Swarm never
//! moves a running task back onto a node that returns from drain or
//! joins). The moves are carried out as a rolling update with the
//! service's update settings ([`super::update`]): each chosen task is
//! replaced in its slot and the scheduler places the replacement, so the
//! service never has fewer tasks up than the update's parallelism allows.

use std::collections::{BTreeMap, BTreeSet};

use common::constraint::all_match_described;
use common::node::Availability;
use common::task::Task;
use common::{NodeId, TaskId};

use crate::store::{Service, Store};

/// The tasks to replace, newest first on each node that holds more than its
/// share. Nodes that may take tasks: `live`, active, meeting the service's
/// constraints. Tasks on other nodes (paused ones keep theirs) stay.
pub fn moves(store: &Store, live: &BTreeSet<NodeId>, svc: &Service) -> Vec<TaskId> {
    let eligible: Vec<&NodeId> = store
        .nodes
        .values()
        .filter(|n| {
            live.contains(&n.id)
                && n.availability == Availability::Active
                && all_match_described(&svc.spec.task.constraints, n, store.descriptions.get(&n.id))
        })
        .map(|n| &n.id)
        .collect();
    if eligible.is_empty() {
        return vec![];
    }
    let mut by_node: BTreeMap<&NodeId, Vec<&Task>> = eligible.iter().map(|n| (*n, vec![])).collect();
    for t in store.tasks_of(&svc.id).filter(|t| t.is_active()) {
        if let Some(list) = t.assigned_node().and_then(|n| by_node.get_mut(n)) {
            list.push(t);
        }
    }
    let total: usize = by_node.values().map(Vec::len).sum();
    let (base, extra) = (total / eligible.len(), total % eligible.len());
    // The fullest nodes keep the `extra` places of base+1: fewest moves.
    let mut nodes: Vec<(&NodeId, Vec<&Task>)> = by_node.into_iter().collect();
    nodes.sort_by(|a, b| b.1.len().cmp(&a.1.len()).then(a.0.cmp(b.0)));
    let mut out = Vec::new();
    for (i, (_, mut list)) in nodes.into_iter().enumerate() {
        let share = base + usize::from(i < extra);
        list.sort_by(|a, b| (b.created_at, &b.id).cmp(&(a.created_at, &a.id)));
        out.extend(list.iter().take(list.len().saturating_sub(share)).map(|t| t.id.clone()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Command;
    use crate::testing::task_on;
    use common::spec::{ServiceSpec, TaskTemplate};

    fn store(nodes: &[&str], tasks: &[(&str, &str)]) -> Store {
        let mut s = Store::default();
        let svc = Service::new("svc".into(), ServiceSpec::new("web", tasks.len() as u64, TaskTemplate::new("i")), 0);
        s.apply(Command::CreateService(svc)).unwrap();
        for n in nodes {
            s.apply(Command::AddNode(crate::testing::node(n))).unwrap();
        }
        for (i, (id, node)) in tasks.iter().enumerate() {
            s.tasks.insert(task_on(id, "svc", i as u64 + 1, node, i as u64));
        }
        s
    }

    fn plan(s: &Store, live: &[&str]) -> Vec<String> {
        let live: BTreeSet<NodeId> = live.iter().map(|n| NodeId::from(*n)).collect();
        let mut m: Vec<String> =
            moves(s, &live, &s.services[&common::ServiceId::from("svc")]).iter().map(|t| t.to_string()).collect();
        m.sort();
        m
    }

    #[test]
    fn the_fewest_newest_tasks_move_off_the_fullest_nodes() {
        // 6 tasks on n1, n2 after n3 was drained and made active again.
        let s =
            store(&["n1", "n2", "n3"], &[("a", "n1"), ("b", "n1"), ("c", "n1"), ("d", "n2"), ("e", "n2"), ("f", "n2")]);
        assert_eq!(plan(&s, &["n1", "n2", "n3"]), ["c", "f"]);
        // Balanced already: nothing moves.
        assert_eq!(plan(&s, &["n1", "n2"]), Vec::<String>::new());
        // 7 over 3: one node keeps 3, the others 2.
        let s = store(
            &["n1", "n2", "n3"],
            &[("a", "n1"), ("b", "n1"), ("c", "n1"), ("d", "n1"), ("e", "n1"), ("f", "n2"), ("g", "n2")],
        );
        assert_eq!(plan(&s, &["n1", "n2", "n3"]), ["d", "e"]);
    }

    #[test]
    fn nodes_that_cannot_take_tasks_are_left_out() {
        let mut s = store(&["n1", "n2", "n3"], &[("a", "n1"), ("b", "n1"), ("c", "n1"), ("d", "n1")]);
        // n3 down (not live), n2 paused: nowhere to move to.
        s.apply(Command::SetNodeAvailability { id: "n2".into(), availability: Availability::Pause, at: 1 }).unwrap();
        assert_eq!(plan(&s, &["n1", "n2"]), Vec::<String>::new());
        // n3 back: half of n1's tasks go.
        assert_eq!(plan(&s, &["n1", "n2", "n3"]), ["c", "d"]);
    }
}
