//! Scheduler: places unassigned tasks on nodes and admits (or refuses, with
//! the reason) tasks that name their node. The placement is the pure
//! [`plan::plan`]; this is the thin loop around it, which also keeps the
//! [`plan::RecentFailures`] it derives from the store's tasks.

pub mod plan;
pub mod state;

use common::time::Millis;

use crate::control::{Decide, LoopCtx};
use crate::store::{Assignment, Command, Store, Unplaceable};
use plan::{NodeView, RecentFailures, FAILURE_WINDOW_MS, MAX_FAILURES};

#[derive(Default)]
pub struct Scheduler {
    failures: RecentFailures,
}

impl Decide for Scheduler {
    fn name(&self) -> &'static str {
        "scheduler"
    }
    fn decide(&mut self, store: &Store, ctx: &LoopCtx, now: Millis) -> (Vec<Command>, Option<Millis>) {
        let views: Vec<NodeView> = store
            .nodes
            .values()
            .map(|n| NodeView::new(n, ctx.live.contains(&n.id)).described(store.descriptions.get(&n.id)))
            .collect();
        for (service, node) in self.failures.observe(&store.tasks, now) {
            tracing::warn!(
                %service, %node, failures = MAX_FAILURES, window_s = FAILURE_WINDOW_MS / 1000,
                "tasks of the service keep failing on the node: placing them on other nodes while any fits"
            );
        }
        let p = plan::plan(&views, &store.tasks, &self.failures);
        let mut cmds = Vec::new();
        if !p.assign.is_empty() {
            cmds.push(Command::AssignTasks(
                p.assign.into_iter().map(|(task, node)| Assignment { task, node, at: now }).collect(),
            ));
        }
        if !p.unplaceable.is_empty() {
            cmds.push(Command::MarkUnplaceable(
                p.unplaceable.into_iter().map(|(task, reason)| Unplaceable { task, reason, at: now }).collect(),
            ));
        }
        (cmds, None)
    }
}
