//! The shape shared by the leader's control loops (Orchestrator, Scheduler):
//! a thin actor that, whenever the store or the live node set changes or a
//! timer it asked for fires, asks a pure [`Decide`] core for commands and
//! proposes them as one batch. One proposal is in flight at a time, so the
//! core always decides on a store that already holds its last decision.
//!
//! Changes reach the actor through a [`WakeUp`], which the dispatcher uses
//! too: wake-ups coalesce, so the mailbox never fills with them, and none
//! is lost.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use common::time::{now_ms, Millis};
use common::NodeId;
use tokio::sync::watch;

use crate::raft::{Propose, RaftLog, RaftStatus, SharedStore};
use crate::store::{Command, Store};
use worker::node::metrics::{metrics, ActorMetrics};

pub type LiveNodes = watch::Receiver<BTreeSet<NodeId>>;
/// The nodes whose disk alarm is raised, with the reason, from gossip.
pub type DiskAlarms = watch::Receiver<std::collections::BTreeMap<NodeId, String>>;

/// Wakes an actor when something it watches changed, with at most one
/// wake-up queued at a time and none ever lost: a change while one is
/// queued is seen by that one, as the actor calls [`WakeUp::take`] before
/// it looks. Its mailbox being full of other messages does not matter (the
/// wake-up is queued past the mailbox's capacity, which it cannot grow by
/// more than one); only the actor being gone ends the task that wakes it.
#[derive(Clone, Default)]
pub struct WakeUp(Arc<AtomicBool>);

/// What a wake-up task does about one change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WakeStep {
    /// Queue a wake-up.
    Send,
    /// One is queued and not yet taken: it will see this change too.
    Coalesce,
    /// The actor is gone: end the task.
    Stop,
}

impl WakeStep {
    pub fn decide(actor_alive: bool, already_queued: bool) -> WakeStep {
        match (actor_alive, already_queued) {
            (false, _) => WakeStep::Stop,
            (true, true) => WakeStep::Coalesce,
            (true, false) => WakeStep::Send,
        }
    }
}

impl WakeUp {
    /// Something changed: wakes `addr` with `msg()` unless a wake-up is
    /// queued already. False once the actor is gone.
    pub fn wake<A, M>(&self, addr: &Addr<A>, msg: impl FnOnce() -> M, depth: &ActorMetrics) -> bool
    where
        A: Actor<Context = Context<A>> + Handler<M>,
        M: Message + Send + 'static,
        M::Result: Send,
    {
        let alive = addr.connected();
        let queued = alive && self.0.swap(true, Ordering::AcqRel);
        match WakeStep::decide(alive, queued) {
            WakeStep::Stop => false,
            WakeStep::Coalesce => true,
            WakeStep::Send => {
                depth.enqueued();
                addr.do_send(msg());
                true
            }
        }
    }

    /// The actor handles the wake-up: call before looking at what changed,
    /// so that a change from now on queues a new one.
    pub fn take(&self) {
        self.0.store(false, Ordering::Release);
    }
}

/// What a control loop knows besides the store.
pub struct LoopCtx<'a> {
    /// The live nodes as this manager sees them ([`crate::liveness`]:
    /// gossip and, on the leader, a session with it).
    pub live: &'a BTreeSet<NodeId>,
    /// When this manager became the leader (gossip needs a moment after
    /// that before "not alive" means "down").
    pub leader_since: Millis,
}

/// A pure decision: commands to propose, and when to look again.
pub trait Decide: Unpin + 'static {
    fn name(&self) -> &'static str;
    fn decide(&mut self, store: &Store, ctx: &LoopCtx, now: Millis) -> (Vec<Command>, Option<Millis>);
    /// The last proposal failed or its fate is unknown: a core that decides
    /// from what changed since its last decision looks at everything next.
    fn failed(&mut self) {}
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
    wake: WakeUp,
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
        let wake = WakeUp::default();
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
            wake: wake.clone(),
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
                if !wake.wake(&a, || Woken, &depth) {
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

/// A [`Kick`] from the wake-up task (see [`WakeUp`]).
#[derive(Message)]
#[rtype(result = "()")]
struct Woken;

impl<D: Decide> Handler<Woken> for ControlLoop<D> {
    type Result = ();
    fn handle(&mut self, _: Woken, ctx: &mut Context<Self>) {
        self.wake.take();
        <Self as Handler<Kick>>::handle(self, Kick, ctx);
    }
}

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
                if !ok {
                    this.core.failed();
                }
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

#[cfg(test)]
mod tests {
    use super::*;
    use worker::node::metrics::Metrics;

    #[test]
    fn a_wake_up_is_sent_coalesced_or_ends_with_the_actor() {
        use WakeStep::*;
        assert_eq!(WakeStep::decide(true, false), Send);
        assert_eq!(WakeStep::decide(true, true), Coalesce, "a full mailbox or a queued one: never a reason to stop");
        assert_eq!(WakeStep::decide(false, false), Stop);
        assert_eq!(WakeStep::decide(false, true), Stop);
    }

    /// Counts its wake-ups; its mailbox holds one message.
    struct Probe {
        wake: WakeUp,
        woken: u32,
    }

    impl Actor for Probe {
        type Context = Context<Self>;
    }

    #[derive(Message)]
    #[rtype(result = "()")]
    struct Other;

    #[derive(Message)]
    #[rtype(result = "()")]
    struct Changed;

    #[derive(Message)]
    #[rtype(result = "u32")]
    struct Count;

    #[derive(Message)]
    #[rtype(result = "()")]
    struct Stop;

    impl Handler<Other> for Probe {
        type Result = ();
        fn handle(&mut self, _: Other, _: &mut Context<Self>) {}
    }

    impl Handler<Changed> for Probe {
        type Result = ();
        fn handle(&mut self, _: Changed, _: &mut Context<Self>) {
            self.wake.take();
            self.woken += 1;
        }
    }

    impl Handler<Count> for Probe {
        type Result = u32;
        fn handle(&mut self, _: Count, _: &mut Context<Self>) -> u32 {
            self.woken
        }
    }

    impl Handler<Stop> for Probe {
        type Result = ();
        fn handle(&mut self, _: Stop, ctx: &mut Context<Self>) {
            ctx.stop();
        }
    }

    #[actix::test]
    async fn a_full_mailbox_does_not_lose_or_end_the_wake_ups() {
        let wake = WakeUp::default();
        let depth = Metrics::new().actor("probe");
        let addr = Probe::create(|ctx| {
            ctx.set_mailbox_capacity(1);
            Probe { wake: wake.clone(), woken: 0 }
        });
        // The actor has not run yet: its mailbox is full. A try_send then
        // goes through but parks the sender; the next one is refused, which
        // is what used to end a wake-up task for good.
        for _ in 0..3 {
            addr.do_send(Other);
        }
        let _ = addr.try_send(Other);
        assert!(matches!(addr.try_send(Other), Err(SendError::Full(_))));
        // Three changes: one wake-up queued, two coalesced into it.
        for _ in 0..3 {
            assert!(wake.wake(&addr, || Changed, &depth), "a full mailbox does not end the task");
        }
        assert_eq!(depth.mailbox_depth(), 1);
        assert_eq!(addr.send(Count).await.unwrap(), 1);
        // Taken: the next change wakes it again.
        assert!(wake.wake(&addr, || Changed, &depth));
        assert_eq!(addr.send(Count).await.unwrap(), 2);
        // Gone: the task ends.
        addr.send(Stop).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while addr.connected() {
            assert!(Instant::now() < deadline, "the actor did not stop");
            actix::clock::sleep(Duration::from_millis(5)).await;
        }
        assert!(!wake.wake(&addr, || Changed, &depth));
    }
}
