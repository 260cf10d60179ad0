//! RaftLog: the replicated log (raft-rs) and the store it builds.
//!
//! `core::RaftCore` owns the raft node, the store and this node's pending
//! proposals, and does no I/O beyond its own disk log; [`RaftLog`] is the
//! actor around it (ticks, peers' messages, proposers' waiters, status and
//! events). The actor runs on its own arbiter (thread): fsync stalls it, not
//! the rest of the node. Proposals carry a context of (raft id, boot nonce,
//! counter) so the node that proposed learns the apply result; followers'
//! proposals are forwarded to the leader by raft-rs. `sim.rs` tests several
//! cores over a simulated network with partitions.

mod core;
#[doc(hidden)]
pub mod fuzzing;
pub mod recover;
#[cfg(test)]
mod sim;
pub mod storage;
pub mod transport;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use parking_lot::RwLock;
use protobuf::Message as _;
use raft::eraftpb::Message as RaftMessage;
use tokio::sync::{oneshot, watch};

pub(crate) use self::core::parse_context;
use self::core::{CoreOptions, Proposal, ProposalNo, RaftCore};
use crate::store::{encode_command, Command, Store, StoreError, Unreadable};
use storage::StorageError;
use transport::Transport;
use worker::node::metrics::{metrics, ActorMetrics};

/// How long a proposer waits for its entry to be applied.
pub const PROPOSE_TIMEOUT: Duration = Duration::from_secs(10);
/// Raft's clock. Heartbeats go every [`HEARTBEAT_TICKS`], a follower that
/// hears nothing for [`ELECTION_TICKS`] (randomised up to twice that)
/// starts an election: 0.6–1.2 s, so a new leader is in place well within
/// 2 s of the old one dying.
pub const TICK: Duration = Duration::from_millis(50);
pub const HEARTBEAT_TICKS: usize = 2;
pub const ELECTION_TICKS: usize = 12;
/// A write that arrives while there is no leader (an election) waits this
/// long for one before it is refused; once a manager has been without a
/// leader that long, writes are refused at once.
pub const LEADER_WAIT: Duration = Duration::from_secs(3);
/// A proposal not applied after this long is sent again (the leader it went
/// to may have dropped it); the store applies each proposal id once.
pub const REPROPOSE_AFTER: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum ProposeError {
    #[error("{0}")]
    Rejected(#[from] StoreError),
    #[error(
        "no quorum: this manager cannot reach a majority of the managers, so the cluster \
         cannot commit changes; running tasks are unaffected. Bring managers back \
         (or see `shoal daemon --force-new-cluster` to recover from a lost majority)"
    )]
    NoLeader,
    #[error(
        "no quorum: this manager lost the majority of the managers before the change was confirmed; \
         it may still be applied once they reconnect, so check before retrying"
    )]
    Unconfirmed,
    #[error("timed out waiting for the change to commit: it may or may not have been applied")]
    Timeout,
    #[error("the raft log is shutting down")]
    Stopped,
    #[error("storage failure: {0}")]
    Storage(String),
    /// The raft files could not be written for lack of space (or past
    /// `--storage-quota`); `dir` is the data directory.
    #[error("no space left on the manager's disk ({dir}): writes are refused until space is freed")]
    NoSpace { dir: String },
    /// The disk filled while this change was in flight: it reached a log
    /// (this one or another manager's) and may still be applied.
    #[error(
        "no space left on the manager's disk ({dir}): writes are refused until space is freed; this change \
         had reached the raft log and may still be applied (once space is back, or by the other managers): \
         check before retrying"
    )]
    NoSpaceInFlight { dir: String },
}

/// Why the raft log cannot open or cannot go on. Past the open, every one
/// is fatal: the node stops rather than acknowledge or apply anything more.
#[derive(Debug, thiserror::Error)]
pub enum RaftError {
    #[error("cannot open the raft log in {}: {source}", dir.display())]
    Open {
        dir: PathBuf,
        #[source]
        source: StorageError,
    },
    #[error("{0}")]
    Storage(#[from] StorageError),
    #[error("corrupt snapshot at index {index}: {reason}")]
    CorruptSnapshot { index: u64, reason: String },
    /// An entry this version cannot read and must not skip (see the rules in
    /// [`crate::store`]): applying past it would leave this manager's store
    /// different from the others'.
    #[error(
        "log entry {index} cannot be read by this version of shoal ({source}); stopped applying \
         the log rather than diverge from the other managers: upgrade this manager"
    )]
    UnreadableEntry {
        index: u64,
        #[source]
        source: Unreadable,
    },
    #[error("raft: {0}")]
    Raft(#[from] raft::Error),
    /// Every call after a fatal error says so again.
    #[error("the raft log stopped: {0}")]
    Stopped(String),
    #[error("cannot start the raft thread: {0}")]
    Thread(&'static str),
    #[error("{} holds no cluster state to recover", .0.display())]
    NothingToRecover(PathBuf),
    #[error("this node is not a manager of the cluster in its own log")]
    NotAManager,
}

impl RaftError {
    /// What the error means for the node (see [`storage::Failure`]).
    pub fn failure(&self) -> storage::Failure {
        match self {
            RaftError::Open { source, .. } | RaftError::Storage(source) => source.failure(),
            RaftError::CorruptSnapshot { .. } => storage::Failure::Corrupt,
            _ => storage::Failure::Other,
        }
    }
}

impl ProposeError {
    pub fn is_retryable(&self) -> bool {
        matches!(self, ProposeError::NoLeader | ProposeError::Timeout | ProposeError::Unconfirmed)
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RaftStatus {
    pub raft_id: u64,
    pub leader_id: u64,
    pub term: u64,
    pub commit: u64,
    pub applied: u64,
    pub is_leader: bool,
    pub voters: Vec<u64>,
    /// Non-voting members: managers still catching up before they vote.
    pub learners: Vec<u64>,
    /// On the leader: learners whose log is close enough to the leader's
    /// to be made voters without stalling commits.
    pub caught_up: Vec<u64>,
    /// Set while this manager's disk is full: why its raft files cannot be
    /// written. Writes are refused meanwhile; reads go on.
    pub disk_alarm: Option<String>,
}

/// A learner this close to the commit index may become a voter.
pub const CAUGHT_UP_WITHIN: u64 = 100;

pub type SharedStore = Arc<RwLock<Store>>;

type Waiter = oneshot::Sender<Result<(), ProposeError>>;

/// The actor around a `RaftCore`: it ticks it, feeds it peers' messages and
/// proposals, sends what it says to send, and passes on what it reports.
pub struct RaftLog {
    core: RaftCore,
    /// The core's store; the transport finds peers' addresses in it.
    store: SharedStore,
    transport: Transport,
    status_tx: watch::Sender<RaftStatus>,
    applied_tx: watch::Sender<u64>,
    waiters: HashMap<ProposalNo, Waiter>,
    ready_queued: bool,
    events: Arc<crate::events::EventHub>,
    metrics: ActorMetrics,
}

pub struct RaftHandles {
    pub addr: Addr<RaftLog>,
    pub store: SharedStore,
    pub status: watch::Receiver<RaftStatus>,
    /// The applied index; changes whenever the store does.
    pub applied: watch::Receiver<u64>,
}

pub struct RaftOptions {
    pub raft_id: u64,
    /// Make this node the only voter of a new cluster.
    pub bootstrap: bool,
    /// Entries between snapshots.
    pub compact_every: u64,
    /// Where applied changes are announced.
    pub events: Arc<crate::events::EventHub>,
    /// At most this many bytes of raft files (see [`storage::default_quota`]).
    pub quota: Option<u64>,
    /// The key of the raft files ([`storage::keys::open_data_key`]).
    pub key: storage::keys::DataKey,
}

/// Exit status of a manager stopped by a failed fsync (EX_IOERR).
pub const EXIT_FSYNC_FAILED: i32 = 74;
/// Exit status of a manager stopped by corrupt raft files (EX_DATAERR).
pub const EXIT_CORRUPT: i32 = 65;
/// Exit status of any other fatal raft failure (EX_SOFTWARE).
pub const EXIT_RAFT_FAILED: i32 = 70;

/// What the node logs, and its exit status, when `e` stops it.
pub fn exit_reason(e: &RaftError) -> (&'static str, i32) {
    match (e, e.failure()) {
        (RaftError::UnreadableEntry { .. }, _) => ("cannot apply the raft log; stopping the node", EXIT_RAFT_FAILED),
        (_, storage::Failure::Fsync) => (
            "fsync of the raft log failed: the page cache can no longer be trusted; stopping the node",
            EXIT_FSYNC_FAILED,
        ),
        (_, storage::Failure::Corrupt) => ("the raft log is corrupt; stopping the node", EXIT_CORRUPT),
        _ => ("raft storage failed; stopping the node", EXIT_RAFT_FAILED),
    }
}

impl RaftLog {
    /// Opens the log in `dir` and starts the actor on its own arbiter.
    pub fn start(dir: &Path, opts: RaftOptions, transport: Transport) -> Result<RaftHandles, RaftError> {
        let core_opts = CoreOptions {
            raft_id: opts.raft_id,
            bootstrap: opts.bootstrap,
            compact_every: opts.compact_every,
            boot: rand::random(),
            quota: opts.quota,
            key: opts.key,
        };
        let core = RaftCore::open(dir, core_opts, Instant::now())?;
        let store = core.store().clone();
        let (status_tx, status) = watch::channel(RaftStatus { raft_id: opts.raft_id, ..Default::default() });
        let (applied_tx, applied) = watch::channel(core.applied());
        let shared = store.clone();
        let events = opts.events.clone();
        let arbiter = Arbiter::new();
        let (tx, rx) = std::sync::mpsc::channel();
        let started = arbiter.spawn(async move {
            let addr = RaftLog {
                core,
                store: shared,
                transport,
                status_tx,
                applied_tx,
                waiters: HashMap::new(),
                ready_queued: false,
                events,
                metrics: metrics().actor("raft"),
            }
            .start();
            let _ = tx.send(addr);
        });
        if !started {
            return Err(RaftError::Thread("the arbiter is not running"));
        }
        let addr = rx.recv().map_err(|_| RaftError::Thread("the arbiter died"))?;
        // The arbiter lives as long as the process.
        std::mem::forget(arbiter);
        Ok(RaftHandles { addr, store, status, applied })
    }

    fn queue_ready(&mut self, ctx: &mut Context<Self>) {
        if !self.ready_queued {
            self.ready_queued = true;
            ctx.notify(RunReady);
        }
    }

    fn publish(&mut self) {
        let status = self.core.status();
        let applied = self.core.applied();
        let m = metrics();
        m.gauge("shoal_raft_term", "current raft term").set(status.term as i64);
        m.gauge("shoal_raft_commit_index", "raft commit index").set(status.commit as i64);
        m.gauge("shoal_raft_applied_index", "raft applied index").set(status.applied as i64);
        m.gauge("shoal_raft_leader", "1 if this manager is the raft leader").set(status.is_leader as i64);
        m.gauge("shoal_raft_leader_id", "raft id of the current leader (0: none)").set(status.leader_id as i64);
        m.gauge("shoal_raft_voters", "voting managers in this manager's raft configuration")
            .set(status.voters.len() as i64);
        m.gauge("shoal_raft_skipped_entries", "log entries skipped as ignorable and unreadable by this version")
            .set(self.core.skipped_entries() as i64);
        let (bytes, compactions) = self.core.storage_figures();
        m.gauge("shoal_raft_storage_bytes", "bytes of raft files (log, hard state, snapshot)").set(bytes as i64);
        m.gauge("shoal_raft_compactions", "log compactions (snapshots taken) since start").set(compactions as i64);
        m.gauge("shoal_disk_alarm", "1 while this manager's disk (or storage quota) is full and writes are refused")
            .set(status.disk_alarm.is_some() as i64);
        self.status_tx.send_if_modified(|s| {
            if *s != status {
                *s = status;
                true
            } else {
                false
            }
        });
        self.applied_tx.send_if_modified(|a| {
            if *a != applied {
                *a = applied;
                true
            } else {
                false
            }
        });
    }

    fn run_ready(&mut self) {
        let started = Instant::now();
        let (transport, store) = (&mut self.transport, &self.store);
        let mut send = |m: RaftMessage| match m.write_to_bytes() {
            Ok(bytes) => transport.send(m.to, bytes, store),
            Err(e) => {
                tracing::error!(error = %e, "cannot encode raft message");
                true
            }
        };
        let out = match self.core.handle_ready(started, &mut send) {
            Ok(out) => out,
            Err(e) => {
                // Without durable storage this node must not go on
                // acknowledging; past an entry it cannot apply, its store
                // would differ from the other managers'.
                let (what, code) = exit_reason(&e);
                tracing::error!(error = %e, exit_status = code, "{what}");
                std::process::exit(code);
            }
        };
        if !out.events.is_empty() {
            let now = common::time::now_ms();
            self.events.publish(out.events.into_iter().map(|mut e| {
                e.time = now;
                e
            }));
        }
        for (n, result) in out.resolved {
            if let Some(w) = self.waiters.remove(&n) {
                let _ = w.send(result);
            }
        }
        self.publish();
        self.metrics.handled(started, true);
    }
}

impl Actor for RaftLog {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(100_000);
        ctx.run_interval(TICK, |this, ctx| {
            // Proposals refused here come out of the next ready, queued below.
            this.core.tick(Instant::now());
            // Keep the figures fresh even when nothing changes.
            this.publish();
            this.queue_ready(ctx);
        });
        self.publish();
        self.queue_ready(ctx);
    }
}

#[derive(Message)]
#[rtype(result = "()")]
struct RunReady;

impl Handler<RunReady> for RaftLog {
    type Result = ();
    fn handle(&mut self, _: RunReady, _: &mut Context<Self>) {
        self.ready_queued = false;
        self.run_ready();
    }
}

/// Propose a command; resolves once it is applied here (or fails).
#[derive(Message)]
#[rtype(result = "Result<(), ProposeError>")]
pub struct Propose(pub Command);

impl Handler<Propose> for RaftLog {
    type Result = ResponseFuture<Result<(), ProposeError>>;
    fn handle(&mut self, msg: Propose, ctx: &mut Context<Self>) -> Self::Result {
        self.submit(Proposal::Command(encode_command(&msg.0)), ctx)
    }
}

/// Add a manager as a voter; resolves once the change is applied here.
#[derive(Message)]
#[rtype(result = "Result<(), ProposeError>")]
pub struct AddVoter(pub u64);

impl Handler<AddVoter> for RaftLog {
    type Result = ResponseFuture<Result<(), ProposeError>>;
    fn handle(&mut self, msg: AddVoter, ctx: &mut Context<Self>) -> Self::Result {
        self.submit(Proposal::AddVoter(msg.0), ctx)
    }
}

/// Add a manager as a learner (it receives the log but does not vote yet);
/// resolves once the change is applied here.
#[derive(Message)]
#[rtype(result = "Result<(), ProposeError>")]
pub struct AddLearner(pub u64);

impl Handler<AddLearner> for RaftLog {
    type Result = ResponseFuture<Result<(), ProposeError>>;
    fn handle(&mut self, msg: AddLearner, ctx: &mut Context<Self>) -> Self::Result {
        self.submit(Proposal::AddLearner(msg.0), ctx)
    }
}

/// Remove a manager from the voters; resolves once the change is applied here.
#[derive(Message)]
#[rtype(result = "Result<(), ProposeError>")]
pub struct RemoveVoter(pub u64);

impl Handler<RemoveVoter> for RaftLog {
    type Result = ResponseFuture<Result<(), ProposeError>>;
    fn handle(&mut self, msg: RemoveVoter, ctx: &mut Context<Self>) -> Self::Result {
        self.submit(Proposal::RemoveVoter(msg.0), ctx)
    }
}

impl RaftLog {
    /// Hands the proposal to the core; the future resolves when the core
    /// reports it applied or refused (or after [`PROPOSE_TIMEOUT`]).
    fn submit(&mut self, what: Proposal, ctx: &mut Context<Self>) -> ResponseFuture<Result<(), ProposeError>> {
        let started = Instant::now();
        let (tx, rx) = oneshot::channel();
        match self.core.propose(what, started) {
            Ok(n) => {
                self.waiters.insert(n, tx);
            }
            Err(e) => {
                let _ = tx.send(Err(e));
            }
        }
        self.metrics.handled(started, true);
        self.queue_ready(ctx);
        Box::pin(async move {
            match tokio::time::timeout(PROPOSE_TIMEOUT, rx).await {
                Ok(Ok(r)) => r,
                Ok(Err(_)) => Err(ProposeError::Stopped),
                Err(_) => Err(ProposeError::Timeout),
            }
        })
    }
}

/// Hand leadership to another voter (forwarded to the leader by a follower).
#[derive(Message)]
#[rtype(result = "()")]
pub struct TransferLeader(pub u64);

impl Handler<TransferLeader> for RaftLog {
    type Result = ();
    fn handle(&mut self, msg: TransferLeader, ctx: &mut Context<Self>) {
        self.core.transfer_leader(msg.0);
        self.queue_ready(ctx);
    }
}

/// A raft message from a peer (protobuf bytes).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Step(pub Vec<u8>);

impl Handler<Step> for RaftLog {
    type Result = ();
    fn handle(&mut self, msg: Step, ctx: &mut Context<Self>) {
        let started = Instant::now();
        let mut m = RaftMessage::default();
        let ok = match m.merge_from_bytes(&msg.0) {
            Ok(()) => self.core.step(m).is_ok(),
            Err(e) => {
                tracing::warn!(error = %e, "dropping an unreadable raft message");
                false
            }
        };
        self.metrics.handled(started, ok);
        self.queue_ready(ctx);
    }
}
