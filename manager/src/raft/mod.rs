//! RaftLog: the replicated log (raft-rs) and the store it builds.
//!
//! The actor runs on its own arbiter (thread): fsync stalls it, not the rest
//! of the node. Everything touching the `RawNode` happens in [`RaftLog::on_ready`],
//! in the order raft-rs requires (see crate-notes). Proposals carry a
//! context of (raft id, counter) so the node that proposed learns the apply
//! result; followers' proposals are forwarded to the leader by raft-rs.

pub mod recover;
pub mod storage;
pub mod transport;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use parking_lot::RwLock;
use protobuf::Message as _;
use raft::eraftpb::{ConfChange, ConfChangeType, ConfChangeV2, Entry, EntryType, Message as RaftMessage};
use raft::{Config, RawNode, StateRole};
use tokio::sync::{oneshot, watch};

use crate::store::{decode_command, encode_command, Command, ProposalId, Store, StoreError};
use storage::DiskStorage;
use transport::Transport;
use worker::metrics::{metrics, ActorMetrics};

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
    #[error("timed out waiting for the change to commit: it may or may not have been applied")]
    Timeout,
    #[error("the raft log is shutting down")]
    Stopped,
    #[error("storage failure: {0}")]
    Storage(String),
}

impl ProposeError {
    pub fn is_retryable(&self) -> bool {
        matches!(self, ProposeError::NoLeader | ProposeError::Timeout)
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
}

/// A learner this close to the commit index may become a voter.
pub const CAUGHT_UP_WITHIN: u64 = 100;

pub type SharedStore = Arc<RwLock<Store>>;

type Waiter = oneshot::Sender<Result<(), ProposeError>>;

#[derive(Clone)]
enum Proposal {
    Command(Vec<u8>),
    AddVoter(u64),
    AddLearner(u64),
    RemoveVoter(u64),
}

/// A proposal of this node that has not been applied yet.
struct Pending {
    waiter: Waiter,
    what: Proposal,
    /// When it was last handed to raft; `None` while waiting for a leader.
    proposed: Option<Instant>,
    /// Refused with [`ProposeError::NoLeader`] if still unproposed then.
    leader_deadline: Instant,
}

pub struct RaftLog {
    node: RawNode<DiskStorage>,
    raft_id: u64,
    store: SharedStore,
    transport: Transport,
    status_tx: watch::Sender<RaftStatus>,
    applied_tx: watch::Sender<u64>,
    pending: HashMap<u64, Pending>,
    /// Makes this process's proposal ids unique across restarts.
    boot: u64,
    next_proposal: u64,
    /// The leader last seen, and since when there has been none.
    last_leader: u64,
    leaderless_since: Option<Instant>,
    ready_queued: bool,
    applied: u64,
    snapshot_index: u64,
    compact_every: u64,
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
}

fn logger() -> slog::Logger {
    use slog::Drain;
    slog::Logger::root(slog_stdlog::StdLog.fuse(), slog::o!())
}

fn proposal_context(id: ProposalId) -> Vec<u8> {
    let mut v = Vec::with_capacity(24);
    for part in [id.0, id.1, id.2] {
        v.extend_from_slice(&part.to_be_bytes());
    }
    v
}

fn parse_context(ctx: &[u8]) -> Option<ProposalId> {
    if ctx.len() != 24 {
        return None;
    }
    let part = |i: usize| ctx[i * 8..(i + 1) * 8].try_into().ok().map(u64::from_be_bytes);
    Some((part(0)?, part(1)?, part(2)?))
}

impl RaftLog {
    /// Opens the log in `dir` and starts the actor on its own arbiter.
    pub fn start(dir: &Path, opts: RaftOptions, transport: Transport) -> Result<RaftHandles, String> {
        let mut storage = DiskStorage::open(dir).map_err(|e| format!("cannot open raft log in {}: {e}", dir.display()))?;
        if opts.bootstrap && storage.initial_state_is_empty() {
            // A new cluster starts from a snapshot at index 1 that names
            // this node the only voter (as raft-rs's examples do): a manager
            // that joins later gets the membership from that snapshot, since
            // no log entry holds it.
            let mut snap = raft::eraftpb::Snapshot { data: Store::default().to_snapshot().into(), ..Default::default() };
            let meta = snap.mut_metadata();
            meta.index = 1;
            meta.term = 1;
            meta.mut_conf_state().voters = vec![opts.raft_id];
            storage.apply_snapshot(snap).map_err(|e| e.to_string())?;
        }
        // The state machine restarts from the last snapshot; raft hands over
        // the committed entries after it again.
        let (store, snapshot_index) = match storage.snapshot_data() {
            Some((index, _term, data)) => (Store::from_snapshot(&data).map_err(|e| format!("corrupt snapshot: {e}"))?, index),
            None => (Store::default(), 0),
        };
        let config = Config {
            id: opts.raft_id,
            election_tick: ELECTION_TICKS,
            heartbeat_tick: HEARTBEAT_TICKS,
            applied: snapshot_index,
            max_size_per_msg: 1024 * 1024,
            max_inflight_msgs: 256,
            check_quorum: true,
            pre_vote: true,
            ..Default::default()
        };
        config.validate().map_err(|e| e.to_string())?;
        let store = Arc::new(RwLock::new(store));
        let (status_tx, status) = watch::channel(RaftStatus { raft_id: opts.raft_id, ..Default::default() });
        let (applied_tx, applied) = watch::channel(snapshot_index);
        let shared = store.clone();
        let compact_every = opts.compact_every.max(10);
        let raft_id = opts.raft_id;
        let events = opts.events.clone();
        let arbiter = Arbiter::new();
        let (tx, rx) = std::sync::mpsc::channel();
        let started = arbiter.spawn(async move {
            let result = RawNode::new(&config, storage, &logger()).map(|mut node| {
                // A lone voter (a new cluster, or a one-manager cluster
                // restarting) need not wait an election timeout.
                let voters: Vec<u64> = node.raft.prs().conf().voters().ids().iter().collect();
                if voters == [raft_id] {
                    let _ = node.campaign();
                }
                RaftLog {
                    node,
                    raft_id,
                    store: shared,
                    transport,
                    status_tx,
                    applied_tx,
                    pending: HashMap::new(),
                    boot: rand::random(),
                    next_proposal: 1,
                    last_leader: 0,
                    leaderless_since: Some(Instant::now()),
                    ready_queued: false,
                    applied: snapshot_index,
                    snapshot_index,
                    compact_every,
                    events,
                    metrics: metrics().actor("raft"),
                }
                .start()
            });
            let _ = tx.send(result.map_err(|e| e.to_string()));
        });
        if !started {
            return Err("cannot start the raft arbiter".into());
        }
        let addr = rx.recv().map_err(|_| "the raft arbiter died".to_string())??;
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

    fn send_messages(&mut self, msgs: Vec<RaftMessage>) {
        for m in msgs {
            let to = m.to;
            match m.write_to_bytes() {
                Ok(bytes) => {
                    if !self.transport.send(to, bytes, &self.store) {
                        self.node.report_unreachable(to);
                    }
                }
                Err(e) => tracing::error!(error = %e, "cannot encode raft message"),
            }
        }
    }

    fn apply_entries(&mut self, entries: Vec<Entry>) -> Result<(), ProposeError> {
        for e in entries {
            let id = parse_context(&e.context);
            let result = match e.get_entry_type() {
                // An empty normal entry is the new leader's no-op.
                EntryType::EntryNormal if e.data.is_empty() => Ok(()),
                EntryType::EntryNormal => match decode_command(&e.data) {
                    Ok(cmd) => {
                        let mut changes = Vec::new();
                        let applied = self.store.write().apply_once(id, cmd, &mut changes);
                        let Some(r) = applied else {
                            // A re-sent copy of a proposal that already applied.
                            self.applied = e.index;
                            continue;
                        };
                        let r = r.map_err(ProposeError::from);
                        if !changes.is_empty() {
                            let store = self.store.read();
                            let now = common::time::now_ms();
                            self.events.publish(changes.iter().filter_map(|c| crate::events::event_of(c, &store, now)));
                        }
                        r
                    }
                    Err(err) => {
                        // A command from a newer version: skip it, loudly.
                        tracing::warn!(index = e.index, error = %err, "skipping a log entry this version cannot read");
                        Ok(())
                    }
                },
                EntryType::EntryConfChange => {
                    let mut cc = ConfChange::default();
                    match cc.merge_from_bytes(&e.data) {
                        Ok(()) => self.apply_conf_change(&cc),
                        Err(err) => {
                            tracing::error!(index = e.index, error = %err, "unreadable conf change");
                            Ok(())
                        }
                    }
                }
                EntryType::EntryConfChangeV2 => {
                    let mut cc = ConfChangeV2::default();
                    match cc.merge_from_bytes(&e.data) {
                        Ok(()) => self.apply_conf_change(&cc),
                        Err(err) => {
                            tracing::error!(index = e.index, error = %err, "unreadable conf change");
                            Ok(())
                        }
                    }
                }
            };
            self.applied = e.index;
            if let Some((origin, boot, n)) = id {
                if origin == self.raft_id && boot == self.boot {
                    if let Some(p) = self.pending.remove(&n) {
                        let _ = p.waiter.send(result.clone());
                    }
                }
            }
            if let Err(ProposeError::Storage(s)) = result {
                return Err(ProposeError::Storage(s));
            }
        }
        Ok(())
    }

    fn apply_conf_change(&mut self, cc: &impl raft_proto::ConfChangeI) -> Result<(), ProposeError> {
        match self.node.apply_conf_change(cc) {
            Ok(cs) => self
                .node
                .mut_store()
                .set_conf_state(cs)
                .map_err(|e| ProposeError::Storage(e.to_string())),
            Err(e) => {
                tracing::warn!(error = %e, "conf change not applied");
                Ok(())
            }
        }
    }

    fn maybe_compact(&mut self) {
        // A peer needs a snapshot newer than the stored one (e.g. a manager
        // added since): take one now.
        let wanted = self.node.store().take_snapshot_wanted() && self.applied > self.snapshot_index;
        if !wanted && self.applied < self.snapshot_index + self.compact_every {
            return;
        }
        let data = self.store.read().to_snapshot();
        let cs = self.node.raft.prs().conf().to_conf_state();
        match self.node.mut_store().compact(self.applied, data, cs) {
            Ok(()) => {
                tracing::debug!(index = self.applied, "log compacted by snapshot");
                self.snapshot_index = self.applied;
            }
            Err(e) => tracing::error!(error = %e, "compaction failed"),
        }
    }

    fn on_ready(&mut self) -> Result<(), ProposeError> {
        if !self.node.has_ready() {
            return Ok(());
        }
        let storage_err = |e: storage::StorageError| ProposeError::Storage(e.to_string());
        let mut ready = self.node.ready();
        if !ready.messages().is_empty() {
            self.send_messages(ready.take_messages());
        }
        if !ready.snapshot().is_empty() {
            let snap = ready.snapshot().clone();
            let store = Store::from_snapshot(&snap.data).map_err(ProposeError::Storage)?;
            self.node.mut_store().apply_snapshot(snap.clone()).map_err(storage_err)?;
            *self.store.write() = store;
            self.applied = snap.get_metadata().index;
            self.snapshot_index = self.applied;
        }
        self.apply_entries(ready.take_committed_entries())?;
        if !ready.entries().is_empty() {
            self.node.mut_store().append(ready.entries()).map_err(storage_err)?;
        }
        if let Some(hs) = ready.hs() {
            self.node.mut_store().set_hardstate(hs.clone()).map_err(storage_err)?;
        }
        if !ready.persisted_messages().is_empty() {
            self.send_messages(ready.take_persisted_messages());
        }
        let mut light = self.node.advance(ready);
        if let Some(commit) = light.commit_index() {
            self.node.mut_store().set_commit(commit).map_err(storage_err)?;
        }
        self.send_messages(light.take_messages());
        self.apply_entries(light.take_committed_entries())?;
        self.node.advance_apply();
        self.maybe_compact();
        self.retry_pending();
        self.publish();
        Ok(())
    }

    fn publish(&mut self) {
        let r = &self.node.raft;
        let is_leader = r.state == StateRole::Leader;
        let learners = r.prs().conf().to_conf_state().learners;
        let status = RaftStatus {
            raft_id: self.raft_id,
            leader_id: r.leader_id,
            term: r.term,
            commit: r.raft_log.committed,
            applied: self.applied,
            is_leader,
            voters: r.prs().conf().voters().ids().iter().collect(),
            learners: learners.clone(),
            caught_up: if is_leader {
                let committed = r.raft_log.committed;
                r.prs()
                    .iter()
                    .filter(|(id, p)| {
                        // matched > 0: it has answered (a fresh learner's is 0).
                        learners.contains(id) && p.matched > 0 && p.matched + CAUGHT_UP_WITHIN >= committed
                    })
                    .map(|(id, _)| *id)
                    .collect()
            } else {
                Vec::new()
            },
        };
        let m = metrics();
        m.gauge("shoal_raft_term", "current raft term").set(status.term as i64);
        m.gauge("shoal_raft_commit_index", "raft commit index").set(status.commit as i64);
        m.gauge("shoal_raft_applied_index", "raft applied index").set(status.applied as i64);
        m.gauge("shoal_raft_leader", "1 if this manager is the raft leader").set(is_leader as i64);
        m.gauge("shoal_raft_leader_id", "raft id of the current leader (0: none)").set(status.leader_id as i64);
        self.status_tx.send_if_modified(|s| {
            if *s != status {
                *s = status;
                true
            } else {
                false
            }
        });
        self.applied_tx.send_if_modified(|a| {
            if *a != self.applied {
                *a = self.applied;
                true
            } else {
                false
            }
        });
    }

    fn run_ready(&mut self) {
        let started = Instant::now();
        let result = self.on_ready();
        if let Err(e) = &result {
            // Without durable storage this node must not go on acknowledging.
            tracing::error!(error = %e, "raft storage failed; stopping the node");
            std::process::exit(70);
        }
        self.metrics.handled(started, result.is_ok());
    }
}

impl Actor for RaftLog {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(100_000);
        ctx.run_interval(TICK, |this, ctx| {
            if this.node.tick() {
                this.queue_ready(ctx);
            }
            this.retry_pending();
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
    /// Proposes now if a leader is known, else parks the proposal until one
    /// is (or [`LEADER_WAIT`] passes). The future resolves on apply.
    fn submit(&mut self, what: Proposal, ctx: &mut Context<Self>) -> ResponseFuture<Result<(), ProposeError>> {
        let started = Instant::now();
        let (tx, rx) = oneshot::channel();
        let leaderless_too_long = self.leaderless_since.is_some_and(|t| started.duration_since(t) >= LEADER_WAIT);
        if leaderless_too_long {
            // Refuse at once rather than make every write wait to fail.
            let _ = tx.send(Err(ProposeError::NoLeader));
        } else {
            let n = self.next_proposal;
            self.next_proposal += 1;
            let pending = Pending { waiter: tx, what, proposed: None, leader_deadline: started + LEADER_WAIT };
            self.pending.insert(n, pending);
            if self.node.raft.leader_id != 0 {
                self.propose_now(n);
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

    /// Hands pending proposal `n` to raft (again).
    fn propose_now(&mut self, n: u64) {
        let id = (self.raft_id, self.boot, n);
        let Some(p) = self.pending.get_mut(&n) else { return };
        p.proposed = Some(Instant::now());
        let ctx = proposal_context(id);
        let conf_change = |kind: ConfChangeType, node_id: u64| {
            let mut cc = ConfChange::default();
            cc.set_change_type(kind);
            cc.node_id = node_id;
            cc
        };
        let result = match p.what.clone() {
            Proposal::Command(data) => self.node.propose(ctx, data),
            Proposal::AddVoter(id) => self.node.propose_conf_change(ctx, conf_change(ConfChangeType::AddNode, id)),
            Proposal::AddLearner(id) => {
                self.node.propose_conf_change(ctx, conf_change(ConfChangeType::AddLearnerNode, id))
            }
            Proposal::RemoveVoter(id) => {
                self.node.propose_conf_change(ctx, conf_change(ConfChangeType::RemoveNode, id))
            }
        };
        if let Err(e) = result {
            // Dropped (no leader after all, or a conf change already in
            // flight): the retry in `retry_pending` sends it again.
            tracing::debug!(proposal = n, error = %e, "proposal not accepted by raft; will retry");
        }
    }

    /// Runs on every tick and after each ready: proposes what waited for a
    /// leader, re-sends what a lost leader may have dropped, refuses what
    /// waited too long for a leader.
    fn retry_pending(&mut self) {
        let now = Instant::now();
        let leader = self.node.raft.leader_id;
        if leader == 0 {
            self.leaderless_since.get_or_insert(now);
        } else {
            self.leaderless_since = None;
        }
        let leader_changed = leader != self.last_leader;
        self.last_leader = leader;
        if self.pending.is_empty() {
            return;
        }
        let mut refuse = Vec::new();
        let mut again = Vec::new();
        for (n, p) in &self.pending {
            match p.proposed {
                _ if leader == 0 => {
                    if now >= p.leader_deadline {
                        refuse.push(*n);
                    }
                }
                None => again.push(*n),
                Some(at) if leader_changed || now.duration_since(at) >= REPROPOSE_AFTER => again.push(*n),
                Some(_) => {}
            }
        }
        for n in refuse {
            if let Some(p) = self.pending.remove(&n) {
                let _ = p.waiter.send(Err(ProposeError::NoLeader));
            }
        }
        again.sort_unstable();
        for n in again {
            self.propose_now(n);
        }
    }
}

/// Hand leadership to another voter (forwarded to the leader by a follower).
#[derive(Message)]
#[rtype(result = "()")]
pub struct TransferLeader(pub u64);

impl Handler<TransferLeader> for RaftLog {
    type Result = ();
    fn handle(&mut self, msg: TransferLeader, ctx: &mut Context<Self>) {
        self.node.transfer_leader(msg.0);
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
            Ok(()) => self.node.step(m).is_ok(),
            Err(e) => {
                tracing::warn!(error = %e, "dropping an unreadable raft message");
                false
            }
        };
        self.metrics.handled(started, ok);
        self.queue_ready(ctx);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contexts_round_trip() {
        assert_eq!(parse_context(&proposal_context((7, 8, 9))), Some((7, 8, 9)));
        assert_eq!(parse_context(b"short"), None);
    }
}
