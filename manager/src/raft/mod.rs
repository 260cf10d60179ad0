//! RaftLog: the replicated log (raft-rs) and the store it builds.
//!
//! The actor runs on its own arbiter (thread): fsync stalls it, not the rest
//! of the node. Everything touching the `RawNode` happens in [`RaftLog::on_ready`],
//! in the order raft-rs requires (see crate-notes). Proposals carry a
//! context of (raft id, counter) so the node that proposed learns the apply
//! result; followers' proposals are forwarded to the leader by raft-rs.

pub mod storage;
pub mod transport;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use parking_lot::RwLock;
use protobuf::Message as _;
use raft::eraftpb::{ConfChange, ConfChangeType, ConfChangeV2, ConfState, Entry, EntryType, Message as RaftMessage};
use raft::{Config, RawNode, StateRole};
use tokio::sync::{oneshot, watch};

use crate::store::{decode_command, encode_command, Command, Store, StoreError};
use storage::DiskStorage;
use transport::Transport;
use worker::metrics::{metrics, ActorMetrics};

/// How long a proposer waits for its entry to be applied.
pub const PROPOSE_TIMEOUT: Duration = Duration::from_secs(10);
pub const TICK: Duration = Duration::from_millis(100);
/// A write that arrives while there is no leader (an election) waits this
/// long for one before it is refused.
pub const LEADER_WAIT: Duration = Duration::from_secs(3);

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum ProposeError {
    #[error("{0}")]
    Rejected(#[from] StoreError),
    #[error("no leader: the managers have no quorum right now, try again")]
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
}

pub type SharedStore = Arc<RwLock<Store>>;

type Waiter = oneshot::Sender<Result<(), ProposeError>>;

enum Parked {
    Command(Vec<u8>),
    AddVoter(u64),
}

pub struct RaftLog {
    node: RawNode<DiskStorage>,
    raft_id: u64,
    store: SharedStore,
    transport: Transport,
    status_tx: watch::Sender<RaftStatus>,
    applied_tx: watch::Sender<u64>,
    pending: HashMap<u64, Waiter>,
    /// Proposals parked until a leader is known: (deadline, id, entry).
    parked: Vec<(Instant, u64, Parked)>,
    next_proposal: u64,
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

fn proposal_context(raft_id: u64, n: u64) -> Vec<u8> {
    let mut v = raft_id.to_be_bytes().to_vec();
    v.extend_from_slice(&n.to_be_bytes());
    v
}

fn parse_context(ctx: &[u8]) -> Option<(u64, u64)> {
    if ctx.len() != 16 {
        return None;
    }
    let a = u64::from_be_bytes(ctx[..8].try_into().ok()?);
    let b = u64::from_be_bytes(ctx[8..].try_into().ok()?);
    Some((a, b))
}

impl RaftLog {
    /// Opens the log in `dir` and starts the actor on its own arbiter.
    pub fn start(dir: &Path, opts: RaftOptions, transport: Transport) -> Result<RaftHandles, String> {
        let mut storage = DiskStorage::open(dir).map_err(|e| format!("cannot open raft log in {}: {e}", dir.display()))?;
        if opts.bootstrap && storage.initial_state_is_empty() {
            let mut cs = ConfState::default();
            cs.voters = vec![opts.raft_id];
            storage.set_conf_state(cs).map_err(|e| e.to_string())?;
        }
        // The state machine restarts from the last snapshot; raft hands over
        // the committed entries after it again.
        let (store, snapshot_index) = match storage.snapshot_data() {
            Some((index, _term, data)) => (Store::from_snapshot(&data).map_err(|e| format!("corrupt snapshot: {e}"))?, index),
            None => (Store::default(), 0),
        };
        let config = Config {
            id: opts.raft_id,
            election_tick: 10,
            heartbeat_tick: 2,
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
                    parked: Vec::new(),
                    next_proposal: 1,
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
            let result = match e.get_entry_type() {
                // An empty normal entry is the new leader's no-op.
                EntryType::EntryNormal if e.data.is_empty() => Ok(()),
                EntryType::EntryNormal => match decode_command(&e.data) {
                    Ok(cmd) => {
                        let mut changes = Vec::new();
                        let r = self.store.write().apply_recording(cmd, &mut changes).map_err(ProposeError::from);
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
            if let Some((origin, n)) = parse_context(&e.context) {
                if origin == self.raft_id {
                    if let Some(w) = self.pending.remove(&n) {
                        let _ = w.send(result.clone());
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
        if self.applied < self.snapshot_index + self.compact_every {
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
        self.unpark();
        self.publish();
        Ok(())
    }

    fn publish(&mut self) {
        let r = &self.node.raft;
        let is_leader = r.state == StateRole::Leader;
        let status = RaftStatus {
            raft_id: self.raft_id,
            leader_id: r.leader_id,
            term: r.term,
            commit: r.raft_log.committed,
            applied: self.applied,
            is_leader,
            voters: r.prs().conf().voters().ids().iter().collect(),
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
            this.unpark();
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
        self.submit(Parked::Command(encode_command(&msg.0)), ctx)
    }
}

/// Add a manager as a voter; resolves once the change is applied here.
#[derive(Message)]
#[rtype(result = "Result<(), ProposeError>")]
pub struct AddVoter(pub u64);

impl Handler<AddVoter> for RaftLog {
    type Result = ResponseFuture<Result<(), ProposeError>>;
    fn handle(&mut self, msg: AddVoter, ctx: &mut Context<Self>) -> Self::Result {
        self.submit(Parked::AddVoter(msg.0), ctx)
    }
}

impl RaftLog {
    /// Proposes now if a leader is known, else parks the proposal until one
    /// is (or [`LEADER_WAIT`] passes). The future resolves on apply.
    fn submit(&mut self, what: Parked, ctx: &mut Context<Self>) -> ResponseFuture<Result<(), ProposeError>> {
        let started = Instant::now();
        let n = self.next_proposal;
        self.next_proposal += 1;
        let (tx, rx) = oneshot::channel();
        self.pending.insert(n, tx);
        if self.node.raft.leader_id == 0 {
            self.parked.push((started + LEADER_WAIT, n, what));
        } else {
            self.propose_now(n, what);
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

    fn propose_now(&mut self, n: u64, what: Parked) {
        let ctx = proposal_context(self.raft_id, n);
        let result = match what {
            Parked::Command(data) => self.node.propose(ctx, data),
            Parked::AddVoter(id) => {
                let mut cc = ConfChange::default();
                cc.set_change_type(ConfChangeType::AddNode);
                cc.node_id = id;
                self.node.propose_conf_change(ctx, cc)
            }
        };
        if result.is_err() {
            if let Some(w) = self.pending.remove(&n) {
                let _ = w.send(Err(ProposeError::NoLeader));
            }
        }
    }

    /// Proposes what was parked once a leader is known; refuses what waited too long.
    fn unpark(&mut self) {
        if self.parked.is_empty() {
            return;
        }
        let now = Instant::now();
        let leader = self.node.raft.leader_id != 0;
        for (deadline, n, what) in std::mem::take(&mut self.parked) {
            if leader {
                self.propose_now(n, what);
            } else if now >= deadline {
                if let Some(w) = self.pending.remove(&n) {
                    let _ = w.send(Err(ProposeError::NoLeader));
                }
            } else {
                self.parked.push((deadline, n, what));
            }
        }
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
        assert_eq!(parse_context(&proposal_context(7, 9)), Some((7, 9)));
        assert_eq!(parse_context(b"short"), None);
    }
}
