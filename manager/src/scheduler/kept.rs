//! What the scheduler keeps from one round to the next, changed as the
//! store changes rather than rebuilt from every task each round: the
//! indexed load of every node ([`SchedState`]) and the tasks waiting to be
//! placed, in the order the plan takes them.
//!
//! [`Kept::follow`] reads the store's change feed ([`crate::store::feed`])
//! from its cursor. For each task the feed names it takes back what the
//! task counted for before the first change (from what the feed says it
//! was: its node, whether it was active there; its template from the store
//! or from the removed task) and counts what it counts for now; then it
//! updates the nodes that changed or whose readiness did. When the feed
//! cannot say (start, a store rebuilt from a snapshot, a cursor that fell
//! off the ring, a new term as leader) it builds all of it from the store.

use std::collections::{BTreeSet, HashMap};

use common::task::Task;
use common::time::Millis;
use common::{NodeId, ServiceId, TaskId};

use super::plan::{plan_in, waiting, NodeView, Plan, RecentFailures};
use super::state::SchedState;
use crate::store::feed::{Cursor, TaskWas};
use crate::store::Store;

/// Where a waiting task stands in the plan's order.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Key {
    /// Names its node: oldest first.
    Preassigned(Millis, TaskId),
    /// The others by service, slot and age (ties: by id).
    Pending(ServiceId, u64, Millis, TaskId),
}

fn key_of(t: &Task) -> Key {
    match t.node_id {
        Some(_) => Key::Preassigned(t.created_at, t.id.clone()),
        None => Key::Pending(t.service_id.clone(), t.slot, t.created_at, t.id.clone()),
    }
}

#[derive(Debug, Default)]
struct Waiting {
    order: BTreeSet<Key>,
    keys: HashMap<TaskId, Key>,
}

impl Waiting {
    fn set(&mut self, id: &TaskId, now: Option<&Task>) {
        if let Some(k) = self.keys.remove(id) {
            self.order.remove(&k);
        }
        if let Some(t) = now.filter(|t| waiting(t)) {
            let k = key_of(t);
            self.order.insert(k.clone());
            self.keys.insert(t.id.clone(), k);
        }
    }
}

#[derive(Debug, Default)]
pub struct Kept {
    cursor: Option<Cursor>,
    state: SchedState,
    /// The live set the nodes' readiness was taken from.
    live: BTreeSet<NodeId>,
    waiting: Waiting,
}

fn view<'a>(store: &'a Store, n: &'a common::node::Node, live: &BTreeSet<NodeId>) -> NodeView<'a> {
    NodeView::new(n, live.contains(&n.id)).described(store.descriptions.get(&n.id))
}

/// Whether a task, as it was, counted on a node of the state: its index.
fn counted_at(state: &SchedState, was: &TaskWas) -> Option<usize> {
    was.is_active().then(|| was.assigned_node().and_then(|n| state.index_of(n))).flatten()
}

impl Kept {
    /// Forget everything: the next [`Kept::follow`] builds it all again.
    pub fn reset(&mut self) {
        self.cursor = None;
    }

    /// Brings the state up to `store` and `live`. Returns the tasks the
    /// feed named that are in the store, or `None` when it reread them all.
    pub fn follow<'s>(&mut self, store: &'s Store, live: &BTreeSet<NodeId>) -> Option<Vec<&'s Task>> {
        let deltas = store.feed.since(self.cursor);
        self.cursor = Some(store.feed.cursor());
        let Some(deltas) = deltas else {
            self.rebuild(store, live);
            return None;
        };
        // Per task: how it was before the first change, and the task as
        // last removed (for its template when it is gone).
        let mut tasks: HashMap<&TaskId, (Option<&TaskWas>, Option<&Task>)> = HashMap::new();
        let mut nodes: BTreeSet<&NodeId> = BTreeSet::new();
        let mut order: Vec<&TaskId> = Vec::new();
        for d in deltas {
            nodes.extend(d.nodes.iter());
            for touch in &d.tasks {
                let e = tasks.entry(&touch.id).or_insert_with(|| {
                    order.push(&touch.id);
                    (touch.before.as_ref(), None)
                });
                if let Some(t) = &touch.removed {
                    e.1 = Some(t);
                }
            }
        }
        let mut touched = Vec::new();
        for id in order {
            let (before, removed) = tasks[id];
            let now = store.tasks.get(id);
            if let Some(i) = before.and_then(|b| counted_at(&self.state, b)) {
                // The template never changes: the task now, or as removed.
                if let Some(t) = now.or(removed) {
                    self.state.unplace(t, i);
                }
            }
            if let Some(t) = now {
                self.state.add_task(t);
                touched.push(t);
            }
            self.waiting.set(id, now);
        }
        // Nodes changed in the store, or whose readiness did.
        if self.live != *live {
            nodes.extend(self.live.symmetric_difference(live));
        }
        for id in nodes {
            match store.nodes.get(id) {
                Some(n) => {
                    let new = self.state.index_of(id).is_none();
                    self.state.upsert_node(view(store, n, live));
                    if new {
                        for t in store.tasks_on(id) {
                            self.state.add_task(t);
                        }
                    }
                }
                None => drop(self.state.remove_node(id)),
            }
        }
        if self.live != *live {
            self.live = live.clone();
        }
        Some(touched)
    }

    fn rebuild(&mut self, store: &Store, live: &BTreeSet<NodeId>) {
        let views: Vec<NodeView> = store.nodes.values().map(|n| view(store, n, live)).collect();
        self.state = SchedState::new(&views, store.tasks.values());
        self.live = live.clone();
        self.waiting = Waiting::default();
        for t in store.tasks.values().filter(|t| waiting(t)) {
            self.waiting.set(&t.id, Some(t));
        }
    }

    /// Plans the waiting tasks (those that name their node first, then the
    /// others, as [`plan::plan`] orders them) on the kept state, which it
    /// leaves as it was.
    pub fn plan(&mut self, store: &Store, failures: &RecentFailures, limit: usize) -> Plan {
        let mut rest = self.waiting.order.iter().peekable();
        let mut pre = Vec::new();
        while let Some(Key::Preassigned(_, id)) = rest.peek() {
            pre.extend(store.tasks.get(id));
            rest.next();
        }
        let pending = rest.filter_map(|k| match k {
            Key::Pending(_, _, _, id) => store.tasks.get(id),
            Key::Preassigned(..) => None,
        });
        plan_in(&mut self.state, pre, pending, failures, limit)
    }

    pub fn is_waiting(&self) -> bool {
        !self.waiting.order.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::plan::plan;
    use crate::testing::changes;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    #[test]
    fn the_kept_state_is_a_fresh_builds_after_any_changes_and_plans_the_same() {
        let (mut checked, mut placed) = (0, 0);
        for seed in 0..300 {
            let mut rng = StdRng::seed_from_u64(seed);
            let mut store = Store::default();
            if rng.gen_bool(0.3) {
                store.feed = crate::store::feed::Feed::with_capacity(rng.gen_range(5..60));
            }
            let mut kept = Kept::default();
            let mut live = BTreeSet::new();
            for step in 0..150 {
                for _ in 0..rng.gen_range(1..4) {
                    let cmd = changes::command(&mut rng, &store, step);
                    let _ = store.apply(cmd);
                }
                if rng.gen_bool(0.02) {
                    store = Store::from_snapshot(&store.to_snapshot()).unwrap();
                }
                if rng.gen_bool(0.2) {
                    live = store.nodes.keys().filter(|_| rng.gen_bool(0.8)).cloned().collect();
                }
                kept.follow(&store, &live);

                let views: Vec<NodeView> = store.nodes.values().map(|n| view(&store, n, &live)).collect();
                let fresh = SchedState::new(&views, store.tasks.values());
                assert_eq!(kept.state.summary(), fresh.summary(), "seed {seed}, step {step}");
                // The same waiting tasks in the same order, so the same plan.
                let f = RecentFailures::default();
                let from_kept = kept.plan(&store, &f, usize::MAX);
                assert_eq!(from_kept, plan(&views, &store.tasks, &f), "seed {seed}, step {step}");
                assert_eq!(kept.state.summary(), fresh.summary(), "the plan leaves the state as it was");
                checked += 1;
                placed += from_kept.assign.len();
            }
        }
        assert!(checked > 40_000 && placed > 20_000, "{checked} states, {placed} placements");
    }
}
