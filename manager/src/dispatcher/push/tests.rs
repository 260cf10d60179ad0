use std::collections::BTreeMap;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::*;
use crate::testing::changes;

/// What a node holds: its first full set with every diff applied since.
fn apply(held: &mut BTreeMap<TaskId, Task>, update: Update) {
    match update {
        Update::Full(tasks) => *held = tasks.into_iter().map(|t| (t.id.clone(), t)).collect(),
        Update::Diff { upserts, removed } => {
            for id in removed {
                held.remove(&id);
            }
            for t in upserts {
                held.insert(t.id.clone(), t);
            }
        }
    }
}

#[test]
fn the_diffs_a_session_gets_applied_to_its_first_set_are_the_set_from_scratch() {
    let (mut diffs, mut steps) = (0, 0);
    for seed in 0..300 {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut store = Store::default();
        let mut tracker = Tracker::default();
        // Sessions come and go; each node's copy of its set.
        let mut sessions: BTreeMap<NodeId, (Sent, BTreeMap<TaskId, Task>)> = BTreeMap::new();
        // A small ring, so that some cursors fall off it.
        if rng.gen_bool(0.3) {
            store.feed = crate::store::feed::Feed::with_capacity(rng.gen_range(5..60));
        }
        for step in 0..200 {
            for _ in 0..rng.gen_range(1..4) {
                let cmd = changes::command(&mut rng, &store, step);
                let _ = store.apply(cmd);
            }
            if rng.gen_bool(0.02) {
                // Rebuilt from a snapshot: a feed of its own.
                store = Store::from_snapshot(&store.to_snapshot()).unwrap();
            }
            // A node opens a session, or one ends.
            if let Some(n) = store.nodes.keys().nth(rng.gen_range(0..store.nodes.len().max(1))) {
                if rng.gen_bool(0.3) {
                    sessions.entry(n.clone()).or_default();
                }
            }
            if rng.gen_bool(0.05) {
                if let Some(n) = sessions.keys().next().cloned() {
                    sessions.remove(&n);
                }
            }
            sessions.retain(|n, _| store.nodes.contains_key(n));
            let dirty = tracker.take(&store);
            for (node, (sent, held)) in sessions.iter_mut() {
                let (update, _) = sent.update(&store, node, &dirty);
                if !update.is_empty() {
                    diffs += 1;
                }
                apply(held, update);
                assert_eq!(*held, set_of(&store, node), "seed {seed}, step {step}, node {node}");
                steps += 1;
            }
        }
    }
    assert!(diffs > 5_000 && steps > 20_000, "{diffs} diffs in {steps} steps");
}

#[test]
fn only_the_nodes_of_changed_tasks_are_dirty_and_the_mesh_only_for_its_services() {
    use crate::store::Command;
    use common::spec::{ServiceSpec, TaskTemplate};
    use common::task::TaskStatus;

    let mut store = Store::default();
    for n in ["a", "b"] {
        store.apply(Command::AddNode(crate::testing::node(n))).unwrap();
    }
    let plain = Service::new("plain".into(), ServiceSpec::new("plain", 1, TaskTemplate::new("img")), 0);
    let mut published = TaskTemplate::new("img");
    published.ports = vec!["published=8080,target=80".parse().unwrap()];
    let web = Service::new("web".into(), ServiceSpec::new("web", 1, published), 0);
    store.apply(Command::CreateService(plain.clone())).unwrap();
    store.apply(Command::CreateService(web.clone())).unwrap();
    let mut tracker = Tracker::default();
    assert!(tracker.take(&store).all, "the first look is at everything");
    assert!(!tracker.take(&store).mesh, "nothing changed since");

    let mut t = crate::testing::task_on("p1", "plain", 1, "a", 0);
    t.status = TaskStatus::new(TaskState::Assigned, 0, "");
    store.apply(Command::CreateTasks(vec![t])).unwrap();
    let d = tracker.take(&store);
    assert!(!d.all && !d.mesh);
    assert_eq!(d.nodes.keys().collect::<Vec<_>>(), [&NodeId::from("a")]);

    let mut t = crate::testing::task_on("w1", "web", 1, "b", 0);
    t.status = TaskStatus::new(TaskState::Assigned, 0, "");
    store.apply(Command::CreateTasks(vec![t])).unwrap();
    let d = tracker.take(&store);
    assert!(d.mesh, "a task of a published service");
    assert_eq!(d.nodes.keys().collect::<Vec<_>>(), [&NodeId::from("b")]);
}
