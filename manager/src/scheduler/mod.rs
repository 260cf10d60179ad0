//! Scheduler: places unassigned tasks on nodes and admits (or refuses, with
//! the reason) tasks that name their node. The placement is the pure
//! [`plan::plan`], which places from the indexed load of [`state`]
//! (O(log n) a task, where [`plan::plan_scan`], kept as its reference,
//! runs every filter over every node); this is the thin loop around it,
//! which also keeps the [`plan::RecentFailures`] it derives from the
//! store's tasks. The index and the waiting tasks are kept across rounds
//! and changed from the store's change feed ([`kept`]), so a round costs
//! what changed, not every task.

pub mod kept;
pub mod plan;
pub mod state;

use common::time::Millis;

use crate::control::{Decide, LoopCtx};
use crate::store::{Assignment, Command, Store, Unplaceable};
use plan::{RecentFailures, FAILURE_WINDOW_MS, MAX_FAILURES};

/// At most this many assignments and refusals in one proposal (about
/// 100 bytes each in the log): a million new tasks are placed in a hundred
/// batches rather than in one entry larger than a cluster frame.
pub const MAX_DECISIONS_PER_PROPOSAL: usize = 10_000;

#[derive(Default)]
pub struct Scheduler {
    failures: RecentFailures,
    /// The nodes' load and the waiting tasks, kept across rounds.
    kept: kept::Kept,
    /// The term as leader the kept state was built in.
    leader_since: Option<Millis>,
}

impl Decide for Scheduler {
    fn name(&self) -> &'static str {
        "scheduler"
    }
    fn decide(&mut self, store: &Store, ctx: &LoopCtx, now: Millis) -> (Vec<Command>, Option<Millis>) {
        if self.leader_since != Some(ctx.leader_since) {
            // A new term: build everything from the store.
            self.leader_since = Some(ctx.leader_since);
            self.kept.reset();
        }
        let reached = match self.kept.follow(store, ctx.live) {
            Some(changed) => self.failures.observe_some(changed, now),
            None => self.failures.observe(&store.tasks, now),
        };
        for (service, node) in reached {
            tracing::warn!(
                %service, %node, failures = MAX_FAILURES, window_s = FAILURE_WINDOW_MS / 1000,
                "tasks of the service keep failing on the node: placing them on other nodes while any fits"
            );
        }
        if !self.kept.is_waiting() {
            // Most changes (status reports) leave nothing to place.
            return (vec![], None);
        }
        let p = self.kept.plan(store, &self.failures, MAX_DECISIONS_PER_PROPOSAL);
        if p.len() >= MAX_DECISIONS_PER_PROPOSAL {
            // The loop plans again once this batch is committed.
            tracing::debug!(decisions = p.len(), "placing in batches: more tasks wait");
        }
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

    fn failed(&mut self) {
        // What the store holds is unknown: start again from it.
        self.kept.reset();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::encode_command;
    use common::{NodeId, TaskId};

    #[test]
    fn a_full_batch_of_placements_fits_well_within_a_frame() {
        let batch = (0..MAX_DECISIONS_PER_PROPOSAL)
            .map(|_| Assignment { task: TaskId::random(), node: NodeId::random(), at: u64::MAX })
            .collect();
        let bytes = encode_command(&Command::Batch(vec![Command::AssignTasks(batch)])).len();
        assert!(bytes < 2 << 20, "{bytes} bytes");
        assert!(bytes < common::wire::MAX_FRAME / 8);
    }
}
