//! The shape shared by the leader's control loops (Orchestrator, Scheduler):
//! a thin actor that, whenever the store or the live node set changes or a
//! timer it asked for fires, asks a pure [`Decide`] core for commands and
//! proposes them as one batch. One proposal is in flight at a time, so the
//! core always decides on a store that already holds its last decision.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use actix::prelude::*;
use common::time::{now_ms, Millis};
use common::NodeId;
use tokio::sync::watch;

use crate::raft::{Propose, RaftLog, RaftStatus, SharedStore};
use crate::store::{Command, Store};
use worker::metrics::{metrics, ActorMetrics};

pub type LiveNodes = watch::Receiver<BTreeSet<NodeId>>;

/// What a control loop knows besides the store.
pub struct LoopCtx<'a> {
    /// Nodes alive through gossip, as this manager sees them.
    pub live: &'a BTreeSet<NodeId>,
    /// When this manager became the leader (gossip needs a moment after
    /// that before "not alive" means "down").
    pub leader_since: Millis,
}

/// A pure decision: commands to propose, and when to look again.
pub trait Decide: Unpin + 'static {
    fn name(&self) -> &'static str;
    fn decide(&mut self, store: &Store, ctx: &LoopCtx, now: Millis) -> (Vec<Command>, Option<Millis>);
}

pub struct ControlLoop<D: Decide> {
    core: D,
    raft: Addr<RaftLog>,
    store: SharedStore,
    status: watch::Receiver<RaftStatus>,
    live: LiveNodes,
    in_flight: bool,
    dirty: bool,
    timer: Option<SpawnHandle>,
    /// Since when this manager has been the leader, as this loop saw it.
    leader_since: Option<Millis>,
    metrics: ActorMetrics,
}

impl<D: Decide> ControlLoop<D> {
    pub fn start(
        core: D,
        raft: Addr<RaftLog>,
        store: SharedStore,
        status: watch::Receiver<RaftStatus>,
        applied: watch::Receiver<u64>,
        live: LiveNodes,
    ) -> Addr<Self> {
        let core_name = core.name();
        let metrics = metrics().actor(core_name);
        let addr = ControlLoop {
            core,
            raft,
            store,
            status: status.clone(),
            live: live.clone(),
            in_flight: false,
            dirty: false,
            timer: None,
            leader_since: None,
            metrics: metrics.clone(),
        }
        .start();
        // Wake on every change of the store, the live set or leadership.
        let a = addr.clone();
        let depth = metrics;
        let (mut applied, mut live, mut status) = (applied, live, status);
        actix::spawn(async move {
            loop {
                tokio::select! {
                    r = applied.changed() => if r.is_err() { return },
                    r = live.changed() => if r.is_err() { return },
                    r = status.changed() => if r.is_err() { return },
                }
                depth.enqueued();
                if a.try_send(Kick).is_err() {
                    return;
                }
            }
        });
        addr
    }
}

impl<D: Decide> Actor for ControlLoop<D> {
    type Context = Context<Self>;
    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.notify(Kick);
    }
}

#[derive(Message)]
#[rtype(result = "()")]
pub struct Kick;

impl<D: Decide> Handler<Kick> for ControlLoop<D> {
    type Result = ();
    fn handle(&mut self, _: Kick, ctx: &mut Context<Self>) {
        let started = Instant::now();
        if !self.status.borrow().is_leader {
            self.leader_since = None;
            self.metrics.handled(started, true);
            return;
        }
        let leader_since = *self.leader_since.get_or_insert_with(now_ms);
        if self.in_flight {
            self.dirty = true;
            self.metrics.handled(started, true);
            return;
        }
        let now = now_ms();
        let (commands, wake) = {
            let store = self.store.read();
            let live = self.live.borrow();
            self.core.decide(&store, &LoopCtx { live: &live, leader_since }, now)
        };
        if let Some(at) = wake {
            if let Some(h) = self.timer.take() {
                ctx.cancel_future(h);
            }
            let delay = Duration::from_millis(at.saturating_sub(now).max(1));
            self.timer = Some(ctx.run_later(delay, |this, ctx| {
                this.timer = None;
                ctx.notify(Kick);
            }));
        }
        if commands.is_empty() {
            self.metrics.handled(started, true);
            return;
        }
        self.in_flight = true;
        self.dirty = false;
        let name = self.core.name();
        let count = commands.len();
        self.raft
            .send(Propose(Command::Batch(commands)))
            .into_actor(self)
            .map(move |result, this, ctx| {
                this.in_flight = false;
                let ok = matches!(result, Ok(Ok(())));
                match result {
                    Ok(Ok(())) => tracing::debug!(actor = name, commands = count, "proposal applied"),
                    Ok(Err(e)) => tracing::warn!(actor = name, error = %e, "proposal failed"),
                    Err(e) => tracing::error!(actor = name, error = %e, "raft log unreachable"),
                }
                this.metrics.handled(started, ok);
                if ok || this.dirty {
                    ctx.notify(Kick);
                } else {
                    // Back off a little before trying again.
                    ctx.run_later(Duration::from_millis(200), |_, ctx| ctx.notify(Kick));
                }
            })
            .spawn(ctx);
    }
}
