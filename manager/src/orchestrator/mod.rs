//! Orchestrator: turns services into tasks (per slot, replicated mode),
//! replaces finished tasks as the restart policy allows, prunes history.
//! The decisions live in [`replicated`]; this is the thin loop around them.

pub mod replicated;

use std::collections::BTreeSet;

use common::time::Millis;
use common::{NodeId, TaskId};

use crate::control::Decide;
use crate::store::{Command, Store};

#[derive(Default)]
pub struct Orchestrator {
    pub params: replicated::Params,
}

impl Decide for Orchestrator {
    fn name(&self) -> &'static str {
        "orchestrator"
    }
    fn decide(&mut self, store: &Store, _live: &BTreeSet<NodeId>, now: Millis) -> (Vec<Command>, Option<Millis>) {
        let d = replicated::reconcile(store, now, &self.params, &mut TaskId::random);
        (d.commands, d.wake_at)
    }
}
