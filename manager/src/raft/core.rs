//! RaftCore: the raft node, the store it builds and this node's proposals,
//! driven by plain method calls. No actor, no timers, no sockets: the caller
//! ticks it, steps peers' messages into it, hands it proposals, and runs
//! [`RaftCore::handle_ready`], giving it the time (`now`) wherever retries and
//! deadlines depend on it and a sink for outgoing messages. [`super::RaftLog`]
//! is the actor around it; the tests in `sim.rs` drive several cores over a
//! simulated network.
//!
//! A full disk (see [`DiskFull`]): when a write of the ready loop fails for
//! lack of space, the core drops its in-memory raft state and rebuilds the
//! raft node from the files, exactly as a restart after a crash at that
//! point would (the storage cut any partial write back, so the files are a
//! state raft-rs is built to restart from). Nothing that was not durable
//! was acknowledged: the votes and append responses of that ready are
//! "persisted messages", sent only after the writes succeed. While the disk
//! is full the core is frozen: no ticks (so it does not campaign), peers'
//! messages are dropped (a follower does not acknowledge entries it cannot
//! store; the leader keeps retrying), proposals are refused, and reads of
//! the store go on. A leader that cannot persist its own entries thereby
//! stops being one: it is rebuilt as a follower, never counts itself for
//! entries it did not store, and the others elect a leader after their
//! election timeout. Every [`DISK_RETRY`] the core probes for space and,
//! once there is some, thaws (a lone voter campaigns at once).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::api::Event;
use parking_lot::RwLock;
use protobuf::Message as _;
use raft::eraftpb::{ConfChange, ConfChangeType, ConfChangeV2, Entry, EntryType, Message, MessageType};
use raft::{Config, RawNode, SnapshotStatus, StateRole};

use super::storage::keys::DataKey;
use super::storage::{DiskStorage, Failure};
use super::{
    ProposeError, RaftError, RaftStatus, SharedStore, CAUGHT_UP_WITHIN, ELECTION_TICKS, HEARTBEAT_TICKS, LEADER_WAIT,
    REPROPOSE_AFTER,
};
use crate::store::{decode_command, ProposalId, Store, Unreadable};

/// The raft configuration of every manager (`applied`: where the state
/// machine restarts from, so raft does not hand those entries over again).
pub fn config(raft_id: u64, applied: u64) -> Config {
    Config {
        id: raft_id,
        election_tick: ELECTION_TICKS,
        heartbeat_tick: HEARTBEAT_TICKS,
        applied,
        max_size_per_msg: 1024 * 1024,
        max_inflight_msgs: 256,
        check_quorum: true,
        pre_vote: true,
        ..Default::default()
    }
}

pub struct CoreOptions {
    pub raft_id: u64,
    /// Make this node the only voter of a new cluster.
    pub bootstrap: bool,
    /// Entries between snapshots (at least 10).
    pub compact_every: u64,
    /// Makes this process's proposal ids unique across restarts.
    pub boot: u64,
    /// At most this many bytes of raft files (`--storage-quota`); compaction
    /// starts at [`COMPACT_AT_QUOTA_PERCENT`] of it.
    pub quota: Option<u64>,
    /// Decrypts and encrypts the raft files.
    pub key: DataKey,
}

/// How often a core whose disk is full probes for space again.
pub const DISK_RETRY: Duration = Duration::from_secs(1);
/// With a quota, the log is compacted once the files take this share of
/// it (and the log itself at least [`COMPACT_LOG_QUOTA_PERCENT`]), well
/// before writes are refused.
pub const COMPACT_AT_QUOTA_PERCENT: u64 = 75;
pub const COMPACT_LOG_QUOTA_PERCENT: u64 = 12;

/// The raft files could not be written for lack of space: writes are
/// refused until [`RaftCore::tick`] finds space again.
struct DiskFull {
    /// The storage error, for logs and the alarm.
    reason: String,
    retry_at: Instant,
    /// The raft node could not be rebuilt from the files yet (opening them
    /// needed space for a repair): it is the one that failed, not to be
    /// touched, and says nothing about leadership.
    stale_node: bool,
}

#[derive(Clone, Debug)]
pub enum Proposal {
    /// An encoded [`crate::store::Command`].
    Command(Vec<u8>),
    AddVoter(u64),
    AddLearner(u64),
    RemoveVoter(u64),
}

/// This node's number for one of its proposals (the counter of its
/// [`ProposalId`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ProposalNo(pub u64);

/// A proposal of this node that has not been applied yet.
struct Pending {
    what: Proposal,
    /// When it was last handed to raft; `None` while waiting for a leader.
    proposed: Option<Instant>,
    /// Refused with [`ProposeError::NoLeader`] if still without a leader then.
    leader_deadline: Instant,
}

/// What happened since the last [`RaftCore::handle_ready`], for the caller to
/// pass on.
#[derive(Debug, Default)]
pub struct ReadyOutput {
    /// This node's proposals that are finished: applied (with the store's
    /// verdict) or refused.
    pub resolved: Vec<(ProposalNo, Result<(), ProposeError>)>,
    /// What the applied commands changed, rendered against the store right
    /// after each one. `time` is left 0 for the caller to stamp.
    pub events: Vec<Event>,
}

pub struct RaftCore {
    node: RawNode<DiskStorage>,
    raft_id: u64,
    store: SharedStore,
    pending: HashMap<ProposalNo, Pending>,
    boot: u64,
    next_proposal: u64,
    /// The leader last seen, and since when there has been none.
    last_leader: u64,
    leaderless_since: Option<Instant>,
    applied: u64,
    snapshot_index: u64,
    compact_every: u64,
    /// Gathered for the next [`ReadyOutput`].
    resolved: Vec<(ProposalNo, Result<(), ProposeError>)>,
    events: Vec<Event>,
    /// Entries skipped as ignorable and unreadable (see [`crate::store`]).
    skipped: u64,
    /// Set by a fatal error; the core then does nothing more.
    stopped: Option<String>,
    /// A fatal error met outside the ready loop (while probing for space),
    /// returned by the next [`RaftCore::handle_ready`].
    fatal: Option<RaftError>,
    /// The raft files' directory, and its parent (the data directory) that
    /// the refusal names.
    dir: PathBuf,
    quota: Option<u64>,
    disk_full: Option<DiskFull>,
    /// Compactions since start.
    compactions: u64,
    key: DataKey,
}

/// The membership rules raft-rs asserts (with a panic) when it restores a
/// `ConfState`: no ID twice in a list, no learner that is also a voter
/// (incoming or outgoing), next learners only among the outgoing voters,
/// and auto-leave only in a joint config.
pub(super) fn check_conf_state(cs: &raft::eraftpb::ConfState) -> Result<(), String> {
    let set = |name: &str, ids: &[u64]| -> Result<HashSet<u64>, String> {
        let set: HashSet<u64> = ids.iter().copied().collect();
        if set.len() != ids.len() {
            return Err(format!("membership lists a {name} twice"));
        }
        Ok(set)
    };
    let voters = set("voter", &cs.voters)?;
    let learners = set("learner", &cs.learners)?;
    let outgoing = set("outgoing voter", &cs.voters_outgoing)?;
    let next = set("next learner", &cs.learners_next)?;
    if let Some(id) = learners.iter().find(|id| voters.contains(id) || outgoing.contains(id)) {
        return Err(format!("membership names {id} both voter and learner"));
    }
    if let Some(id) = next.iter().find(|id| voters.contains(id) || !outgoing.contains(id)) {
        return Err(format!("membership names {id} a next learner that is not an outgoing voter only"));
    }
    if outgoing.is_empty() && cs.auto_leave {
        return Err("membership auto-leaves a joint config it is not in".into());
    }
    Ok(())
}

fn logger() -> slog::Logger {
    use slog::Drain;
    slog::Logger::root(slog_stdlog::StdLog.fuse(), slog::o!())
}

pub(crate) fn proposal_context(id: ProposalId) -> Vec<u8> {
    let mut v = Vec::with_capacity(24);
    for part in [id.0, id.1, id.2] {
        v.extend_from_slice(&part.to_be_bytes());
    }
    v
}

pub(crate) fn parse_context(ctx: &[u8]) -> Option<ProposalId> {
    if ctx.len() != 24 {
        return None;
    }
    let part = |i: usize| ctx[i * 8..(i + 1) * 8].try_into().ok().map(u64::from_be_bytes);
    Some((part(0)?, part(1)?, part(2)?))
}

/// A membership change is never ignorable: skipping it would leave this
/// node with other voters than the rest.
fn unreadable_conf_change(index: u64, err: protobuf::ProtobufError) -> RaftError {
    let source = Unreadable { ignorable: false, reason: format!("conf change: {err}") };
    RaftError::UnreadableEntry { index, source }
}

impl RaftCore {
    /// Opens the log in `dir` (bootstrapping a new cluster if asked and the
    /// log is empty) and restores the store from its snapshot.
    pub fn open(dir: &Path, opts: CoreOptions, now: Instant) -> Result<RaftCore, RaftError> {
        let mut storage = DiskStorage::open(dir, opts.key.clone())
            .map_err(|source| RaftError::Open { dir: dir.to_path_buf(), source })?;
        storage.set_quota(opts.quota);
        if opts.bootstrap && storage.initial_state_is_empty() {
            // A new cluster starts from a snapshot at index 1 that names
            // this node the only voter (as raft-rs's examples do): a manager
            // that joins later gets the membership from that snapshot, since
            // no log entry holds it.
            let mut snap =
                raft::eraftpb::Snapshot { data: Store::default().to_snapshot().into(), ..Default::default() };
            let meta = snap.mut_metadata();
            meta.index = 1;
            meta.term = 1;
            meta.mut_conf_state().voters = vec![opts.raft_id];
            storage.apply_snapshot(snap)?;
        }
        // The state machine restarts from the last snapshot; raft hands over
        // the committed entries after it again.
        let (store, snapshot_index) = match storage.snapshot_data() {
            Some((index, _term, data)) => {
                (Store::from_snapshot(&data).map_err(|reason| RaftError::CorruptSnapshot { index, reason })?, index)
            }
            None => (Store::default(), 0),
        };
        // raft-rs panics on a membership it cannot restore; from the disk
        // that is damage, refused here.
        let conf_state = raft::Storage::initial_state(&storage)?.conf_state;
        check_conf_state(&conf_state).map_err(|reason| RaftError::CorruptSnapshot { index: snapshot_index, reason })?;
        let config = config(opts.raft_id, snapshot_index);
        config.validate()?;
        let mut node = RawNode::new(&config, storage, &logger())?;
        // A lone voter (a new cluster, or a one-manager cluster restarting)
        // need not wait an election timeout.
        let voters: Vec<u64> = node.raft.prs().conf().voters().ids().iter().collect();
        if voters == [opts.raft_id] {
            let _ = node.campaign();
        }
        Ok(RaftCore {
            node,
            raft_id: opts.raft_id,
            store: Arc::new(RwLock::new(store)),
            pending: HashMap::new(),
            boot: opts.boot,
            next_proposal: 1,
            last_leader: 0,
            leaderless_since: Some(now),
            applied: snapshot_index,
            snapshot_index,
            compact_every: opts.compact_every.max(10),
            resolved: Vec::new(),
            events: Vec::new(),
            skipped: 0,
            stopped: None,
            fatal: None,
            dir: dir.to_path_buf(),
            quota: opts.quota,
            disk_full: None,
            compactions: 0,
            key: opts.key,
        })
    }

    /// Why writes are refused, while the disk is full.
    pub fn disk_alarm(&self) -> Option<&str> {
        self.disk_full.as_ref().map(|d| d.reason.as_str())
    }

    /// Bytes of raft files, and compactions since start.
    pub fn storage_figures(&self) -> (u64, u64) {
        (self.node.store().disk_bytes(), self.compactions)
    }

    fn no_space(&self) -> ProposeError {
        ProposeError::NoSpace { dir: self.shown_dir() }
    }

    /// The data directory (the raft files are in its `raft/`), as refusals name it.
    fn shown_dir(&self) -> String {
        self.dir.parent().unwrap_or(&self.dir).display().to_string()
    }

    pub fn store(&self) -> &SharedStore {
        &self.store
    }

    /// The index the store has applied up to.
    pub fn applied(&self) -> u64 {
        self.applied
    }

    /// How many entries were skipped as ignorable and unreadable.
    pub fn skipped_entries(&self) -> u64 {
        self.skipped
    }

    /// Advances raft's clock by one tick and retries or refuses pending
    /// proposals as of `now`. True when raft has something to do.
    pub fn tick(&mut self, now: Instant) -> bool {
        if self.stopped.is_some() {
            return false;
        }
        if self.disk_full.is_some() {
            self.retry_space(now);
            return false;
        }
        let ready = self.node.tick();
        self.retry_pending(now);
        ready
    }

    /// A raft message from a peer.
    pub fn step(&mut self, m: Message) -> raft::Result<()> {
        // With a full disk, dropped: the sender retries.
        if self.stopped.is_some() || self.disk_full.is_some() {
            return Ok(());
        }
        self.node.step(m)
    }

    /// Hand leadership to another voter (a follower forwards it to the leader).
    pub fn transfer_leader(&mut self, to: u64) {
        if self.disk_full.is_some() {
            return;
        }
        self.node.transfer_leader(to);
    }

    /// Takes a proposal: proposes it now if a leader is known, else parks it
    /// until one is (or [`LEADER_WAIT`] passes). Its result comes in a later
    /// [`ReadyOutput::resolved`]. Refused at once if this node has been
    /// without a leader for [`LEADER_WAIT`] already.
    pub fn propose(&mut self, what: Proposal, now: Instant) -> Result<ProposalNo, ProposeError> {
        if self.stopped.is_some() {
            return Err(ProposeError::Stopped);
        }
        if self.disk_full.is_some() {
            return Err(self.no_space());
        }
        let leaderless_too_long = self.leaderless_since.is_some_and(|t| now.duration_since(t) >= LEADER_WAIT);
        if leaderless_too_long {
            // Refuse at once rather than make every write wait to fail.
            return Err(ProposeError::NoLeader);
        }
        let n = ProposalNo(self.next_proposal);
        self.next_proposal += 1;
        self.pending.insert(n, Pending { what, proposed: None, leader_deadline: now + LEADER_WAIT });
        if self.node.raft.leader_id != 0 {
            self.propose_now(n, now);
        }
        Ok(n)
    }

    /// Runs raft's ready loop if raft has work, in the order raft-rs
    /// requires (see crate-notes), and returns what finished since the last
    /// call. `send` carries one message to its peer and says false when it
    /// had to drop it; it is called as soon as each message may leave (a
    /// leader's appends before its own fsync, votes and acknowledgements after).
    /// An error is fatal (storage failed, or an entry cannot be applied):
    /// the core stops there, applies nothing more, and says so again on
    /// every later call; the node must stop.
    pub fn handle_ready(
        &mut self,
        now: Instant,
        send: &mut dyn FnMut(Message) -> bool,
    ) -> Result<ReadyOutput, RaftError> {
        if let Some(e) = self.fatal.take() {
            self.stopped = Some(e.to_string());
            return Err(e);
        }
        if let Some(reason) = &self.stopped {
            return Err(RaftError::Stopped(reason.clone()));
        }
        if self.disk_full.is_none() && self.node.has_ready() {
            if let Err(e) = self.on_ready(now, send) {
                let e = match e.failure() {
                    Failure::Space => self.disk_full(e, now).err(),
                    _ => Some(e),
                };
                if let Some(e) = e {
                    self.stopped = Some(e.to_string());
                    return Err(e);
                }
            }
        }
        Ok(ReadyOutput { resolved: std::mem::take(&mut self.resolved), events: std::mem::take(&mut self.events) })
    }

    pub fn status(&self) -> RaftStatus {
        let r = &self.node.raft;
        let stale = self.disk_full.as_ref().is_some_and(|d| d.stale_node);
        let is_leader = r.state == StateRole::Leader && !stale;
        let learners = r.prs().conf().to_conf_state().learners;
        RaftStatus {
            raft_id: self.raft_id,
            leader_id: if stale { 0 } else { r.leader_id },
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
            disk_alarm: self.disk_alarm().map(str::to_owned),
        }
    }

    /// Sets the storage quota (a test's way to fill the disk).
    #[cfg(test)]
    pub(crate) fn set_quota(&mut self, quota: Option<u64>) {
        self.quota = quota;
        self.node.mut_store().set_quota(quota);
    }

    /// The raft node, for tests that look at the log itself.
    #[cfg(test)]
    pub(crate) fn raw(&self) -> &RawNode<DiskStorage> {
        &self.node
    }

    fn on_ready(&mut self, now: Instant, send: &mut dyn FnMut(Message) -> bool) -> Result<(), RaftError> {
        let mut unreachable = Vec::new();
        let mut snapshots = Vec::new();
        let mut send_all = |msgs: Vec<Message>| {
            for m in msgs {
                let to = m.to;
                let is_snapshot = m.get_msg_type() == MessageType::MsgSnapshot;
                let sent = send(m);
                if !sent {
                    unreachable.push(to);
                }
                if is_snapshot {
                    snapshots.push((to, sent));
                }
            }
        };
        let mut ready = self.node.ready();
        if !ready.messages().is_empty() {
            send_all(ready.take_messages());
        }
        if !ready.snapshot().is_empty() {
            let snap = ready.snapshot().clone();
            let index = snap.get_metadata().index;
            let store =
                Store::from_snapshot(&snap.data).map_err(|reason| RaftError::CorruptSnapshot { index, reason })?;
            self.node.mut_store().apply_snapshot(snap.clone())?;
            *self.store.write() = store;
            self.applied = snap.get_metadata().index;
            self.snapshot_index = self.applied;
        }
        self.apply_entries(ready.take_committed_entries())?;
        if !ready.entries().is_empty() {
            self.node.mut_store().append(ready.entries())?;
        }
        if let Some(hs) = ready.hs() {
            self.node.mut_store().set_hardstate(hs.clone())?;
        }
        if !ready.persisted_messages().is_empty() {
            send_all(ready.take_persisted_messages());
        }
        let mut light = self.node.advance(ready);
        if let Some(commit) = light.commit_index() {
            self.node.mut_store().set_commit(commit)?;
        }
        send_all(light.take_messages());
        self.apply_entries(light.take_committed_entries())?;
        self.node.advance_apply();
        // Only now: nothing may touch the node between ready() and advance().
        for to in unreachable {
            self.node.report_unreachable(to);
        }
        // raft-rs stops replicating to a peer it sent a snapshot to until
        // told how the sending went; without this, one lost snapshot stalls
        // that peer until the leader changes. "Finished" once handed to the
        // transport: the leader then probes after it, and if the snapshot
        // was lost after all, the peer's rejection leads to a new one.
        for (to, sent) in snapshots {
            let status = if sent { SnapshotStatus::Finish } else { SnapshotStatus::Failure };
            self.node.report_snapshot(to, status);
        }
        self.maybe_compact()?;
        self.retry_pending(now);
        Ok(())
    }

    /// A write failed for lack of space: raises the alarm and rebuilds the
    /// raft node from the files (see the module doc). Pending proposals are
    /// answered at once: those that cannot have reached any log are refused
    /// ([`ProposeError::NoSpace`]); the others may still commit (through
    /// the other managers, or here once the entries already on disk do) and
    /// say so ([`ProposeError::NoSpaceInFlight`]). An error is fatal.
    fn disk_full(&mut self, err: RaftError, now: Instant) -> Result<(), RaftError> {
        let reason = err.to_string();
        tracing::error!(
            error = %reason,
            dir = %self.dir.display(),
            "no space for the raft log: writes are refused until space is freed (retrying every {DISK_RETRY:?})"
        );
        let stale_node = match self.rebuild() {
            Ok(()) => false,
            Err(e) if e.failure() == Failure::Space => true,
            Err(e) => return Err(e),
        };
        self.disk_full = Some(DiskFull { reason, retry_at: now + DISK_RETRY, stale_node });
        let lone = !stale_node && self.voters() == [self.raft_id];
        let on_disk: HashSet<u64> = if stale_node {
            HashSet::new()
        } else {
            self.node
                .store()
                .stored_entries()
                .iter()
                .filter_map(|e| parse_context(&e.context))
                .filter(|(origin, boot, _)| *origin == self.raft_id && *boot == self.boot)
                .map(|(_, _, n)| n)
                .collect()
        };
        let mut pending: Vec<(ProposalNo, Pending)> = self.pending.drain().collect();
        pending.sort_unstable_by_key(|(n, _)| *n);
        let dir = self.shown_dir();
        for (n, p) in pending {
            let lost = p.proposed.is_none() || (lone && !on_disk.contains(&n.0));
            let e = if lost { self.no_space() } else { ProposeError::NoSpaceInFlight { dir: dir.clone() } };
            self.resolved.push((n, Err(e)));
        }
        Ok(())
    }

    /// Replaces the raft node with one opened from the files, as a restart
    /// would; the store keeps what it applied (entries raft hands over
    /// again are skipped).
    fn rebuild(&mut self) -> Result<(), RaftError> {
        let mut storage = DiskStorage::open(&self.dir, self.key.clone())?;
        storage.set_quota(self.quota);
        // The snapshot and the durable commit index bound what raft may
        // be told was applied.
        let applied = self.applied.min(storage.hard_state().commit);
        self.node = RawNode::new(&config(self.raft_id, applied), storage, &logger())?;
        let snapshot_index = raft::Storage::first_index(self.node.store()).unwrap_or(1) - 1;
        self.snapshot_index = self.snapshot_index.max(snapshot_index);
        Ok(())
    }

    fn voters(&self) -> Vec<u64> {
        self.node.raft.prs().conf().voters().ids().iter().collect()
    }

    /// While the disk is full, every [`DISK_RETRY`]: rebuilds the node if
    /// that failed before, compacts if the quota is what is full, probes
    /// for space, and thaws once there is some.
    fn retry_space(&mut self, now: Instant) {
        let Some(full) = &mut self.disk_full else { return };
        if now < full.retry_at {
            return;
        }
        full.retry_at = now + DISK_RETRY;
        let stale = full.stale_node;
        match self.find_space(stale) {
            Ok(()) => {
                tracing::info!(dir = %self.dir.display(), "space for the raft log is back: writes resume");
                self.disk_full = None;
                // Writes wait for a leader from now on, not from before.
                self.leaderless_since = Some(now);
                if self.voters() == [self.raft_id] {
                    let _ = self.node.campaign();
                }
            }
            Err(e) if e.failure() == Failure::Space => {
                tracing::debug!(error = %e, "still no space for the raft log");
            }
            Err(e) => self.fatal = Some(e),
        }
    }

    fn find_space(&mut self, stale: bool) -> Result<(), RaftError> {
        if stale {
            self.rebuild()?;
            if let Some(full) = &mut self.disk_full {
                full.stale_node = false;
            }
        }
        self.maybe_compact()?;
        Ok(self.node.store().probe_space()?)
    }

    /// Applies committed entries in order. An entry this version cannot
    /// read is skipped only if it is marked ignorable; otherwise applying
    /// stops before it, with the error (the rules are in [`crate::store`]).
    fn apply_entries(&mut self, entries: Vec<Entry>) -> Result<(), RaftError> {
        for e in entries {
            if e.index <= self.applied {
                // Handed over again after a rebuild from the files.
                continue;
            }
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
                        if !changes.is_empty() {
                            // Rendered now: later entries may change what the
                            // store says about these objects.
                            let store = self.store.read();
                            self.events.extend(changes.iter().filter_map(|c| crate::events::event_of(c, &store, 0)));
                        }
                        r.map_err(ProposeError::from)
                    }
                    Err(err) if err.ignorable => {
                        // A command from a newer version that older ones may skip.
                        self.skipped += 1;
                        tracing::warn!(index = e.index, error = %err, "skipping an ignorable log entry this version cannot read");
                        Ok(())
                    }
                    Err(source) => {
                        tracing::error!(index = e.index, error = %source, "a log entry this version cannot read; applying stops");
                        return Err(RaftError::UnreadableEntry { index: e.index, source });
                    }
                },
                EntryType::EntryConfChange => {
                    let mut cc = ConfChange::default();
                    cc.merge_from_bytes(&e.data).map_err(|err| unreadable_conf_change(e.index, err))?;
                    self.apply_conf_change(&cc)?;
                    Ok(())
                }
                EntryType::EntryConfChangeV2 => {
                    let mut cc = ConfChangeV2::default();
                    cc.merge_from_bytes(&e.data).map_err(|err| unreadable_conf_change(e.index, err))?;
                    self.apply_conf_change(&cc)?;
                    Ok(())
                }
            };
            self.applied = e.index;
            if let Some((origin, boot, n)) = id {
                if origin == self.raft_id && boot == self.boot && self.pending.remove(&ProposalNo(n)).is_some() {
                    self.resolved.push((ProposalNo(n), result));
                }
            }
        }
        Ok(())
    }

    /// A change raft refuses is only logged; a storage failure is fatal.
    fn apply_conf_change(&mut self, cc: &impl raft_proto::ConfChangeI) -> Result<(), RaftError> {
        match self.node.apply_conf_change(cc) {
            Ok(cs) => self.node.mut_store().set_conf_state(cs)?,
            Err(e) => tracing::warn!(error = %e, "conf change not applied"),
        }
        Ok(())
    }

    /// Compacts every `compact_every` entries, when a peer needs a newer
    /// snapshot, or when the files near the quota. Only a lack of space
    /// is returned (it raises the disk alarm); other failures are logged.
    fn maybe_compact(&mut self) -> Result<(), RaftError> {
        // A peer needs a snapshot newer than the stored one (e.g. a manager
        // added since): take one now.
        let wanted = self.node.store().take_snapshot_wanted() && self.applied > self.snapshot_index;
        let storage = self.node.store();
        let near_quota = self.quota.is_some_and(|q| {
            storage.disk_bytes() >= q / 100 * COMPACT_AT_QUOTA_PERCENT
                && storage.log_bytes() >= q / 100 * COMPACT_LOG_QUOTA_PERCENT
        });
        // Applied is also committed on disk, except right after a rebuild.
        let index = self.applied.min(storage.hard_state().commit);
        if index <= self.snapshot_index
            || (!wanted && !near_quota && self.applied < self.snapshot_index + self.compact_every)
        {
            return Ok(());
        }
        let data = self.store.read().to_snapshot();
        let cs = self.node.raft.prs().conf().to_conf_state();
        match self.node.mut_store().compact(index, data, cs) {
            Ok(()) => {
                tracing::debug!(index, near_quota, "log compacted by snapshot");
                self.snapshot_index = index;
                self.compactions += 1;
                Ok(())
            }
            Err(e) if e.failure() == Failure::Space => Err(e.into()),
            Err(e) => {
                tracing::error!(error = %e, "compaction failed");
                Ok(())
            }
        }
    }

    /// Hands pending proposal `n` to raft (again).
    fn propose_now(&mut self, n: ProposalNo, now: Instant) {
        let id = (self.raft_id, self.boot, n.0);
        let Some(p) = self.pending.get_mut(&n) else { return };
        p.proposed = Some(now);
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
            // flight): `retry_pending` sends it again.
            tracing::debug!(proposal = n.0, error = %e, "proposal not accepted by raft; will retry");
        }
    }

    /// Runs on every tick and after each ready: proposes what waited for a
    /// leader, re-sends what a lost leader may have dropped, refuses what
    /// waited too long for a leader.
    fn retry_pending(&mut self, now: Instant) {
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
                        refuse.push((*n, p.proposed.is_some()));
                    }
                }
                None => again.push(*n),
                Some(at) if leader_changed || now.duration_since(at) >= REPROPOSE_AFTER => again.push(*n),
                Some(_) => {}
            }
        }
        refuse.sort_unstable();
        for (n, sent) in refuse {
            if self.pending.remove(&n).is_some() {
                // Once handed to raft it may have committed elsewhere.
                let e = if sent { ProposeError::Unconfirmed } else { ProposeError::NoLeader };
                self.resolved.push((n, Err(e)));
            }
        }
        again.sort_unstable();
        for n in again {
            self.propose_now(n, now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::TICK;
    use crate::store::tests::{entries_v0, SNAPSHOT_V0};
    use crate::store::{encode_command, Command, IGNORABLE};
    use common::spec::{ServiceSpec, TaskTemplate};
    use raft::eraftpb::{HardState, Snapshot};

    #[test]
    fn a_membership_raft_cannot_restore_is_refused_not_a_panic() {
        use raft::eraftpb::ConfState;
        let cs = |voters: Vec<u64>, learners: Vec<u64>| ConfState { voters, learners, ..Default::default() };
        assert_eq!(check_conf_state(&cs(vec![1], vec![])), Ok(()));
        assert_eq!(check_conf_state(&cs(vec![1, 2], vec![3])), Ok(()));
        assert!(check_conf_state(&cs(vec![2, 1], vec![1])).is_err());
        assert!(check_conf_state(&cs(vec![1, 1], vec![])).is_err());
        // The fuzzer's input (tests/fuzz/regressions/storage): a snapshot
        // file whose membership names node 1 both voter and learner.
        let input =
            include_bytes!("../../../tests/fuzz/regressions/storage/crash-7a4a3f4d0518f498ec8f1c57915361bfbb081c8b");
        let dir = tempfile::tempdir().unwrap();
        let key = DataKey::from_bytes(crate::raft::fuzzing::FUZZ_KEY);
        crate::raft::storage::fuzzing::write_files(dir.path(), input, &key).unwrap();
        let err = crate::raft::fuzzing::raft_dir(dir.path()).unwrap_err();
        assert!(err.contains("both voter and learner"), "{err}");
    }

    fn lone_core(dir: &Path, bootstrap: bool) -> Result<RaftCore, RaftError> {
        RaftCore::open(
            dir,
            CoreOptions { raft_id: 1, bootstrap, compact_every: 1000, boot: 7, quota: None, key: DataKey::for_tests() },
            Instant::now(),
        )
    }

    type Resolved = Vec<(ProposalNo, Result<(), ProposeError>)>;

    /// Ticks a lone voter's ready loop until `done` holds; what it resolved.
    fn run_until(core: &mut RaftCore, done: impl Fn(&RaftCore) -> bool) -> Result<Resolved, RaftError> {
        let mut now = Instant::now();
        let mut resolved = Vec::new();
        for _ in 0..200 {
            resolved.extend(core.handle_ready(now, &mut |_| true)?.resolved);
            if done(core) {
                return Ok(resolved);
            }
            now += TICK;
            core.tick(now);
        }
        panic!("not reached within 200 rounds");
    }

    fn create(name: &str) -> Proposal {
        let spec = ServiceSpec::new(name, 1, TaskTemplate::new("img"));
        Proposal::Command(encode_command(&Command::CreateService(crate::store::Service::new(name.into(), spec, 0))))
    }

    /// Proposes and runs until it is resolved.
    fn commit(core: &mut RaftCore, what: Proposal) -> Result<Result<(), ProposeError>, RaftError> {
        let n = core.propose(what, Instant::now()).unwrap();
        let pending = |c: &RaftCore| !c.pending.contains_key(&n);
        let resolved = run_until(core, pending)?;
        Ok(resolved.into_iter().find(|(m, _)| *m == n).map(|(_, r)| r).unwrap())
    }

    /// A command from a newer version, as it would encode it.
    const FUTURE: &[u8] = b"\x81\xa9NotAThing\xc0";

    #[test]
    fn an_ignorable_unknown_entry_is_skipped_and_any_other_stops_applying() {
        let dir = tempfile::tempdir().unwrap();
        let mut core = lone_core(dir.path(), true).unwrap();
        run_until(&mut core, |c| c.status().is_leader).unwrap();
        assert_eq!(commit(&mut core, create("a")).unwrap(), Ok(()));

        let ignorable = [&[0xc1, IGNORABLE][..], FUTURE].concat();
        assert_eq!(commit(&mut core, Proposal::Command(ignorable)).unwrap(), Ok(()));
        assert_eq!(core.skipped_entries(), 1);
        assert_eq!(commit(&mut core, create("b")).unwrap(), Ok(()));

        let before = core.store().read().clone();
        let applied = core.applied();
        let err = commit(&mut core, Proposal::Command(FUTURE.to_vec())).unwrap_err();
        let index = applied + 1;
        assert!(matches!(err, RaftError::UnreadableEntry { index: i, .. } if i == index), "{err:?}");
        // What the daemon logs before it exits (the list of known commands
        // serde adds in between is left out here).
        let said = err.to_string();
        let start = format!("log entry {index} cannot be read by this version of shoal (unknown variant `NotAThing`");
        assert!(said.starts_with(&start), "{said}");
        let end = "); stopped applying the log rather than diverge from the other managers: upgrade this manager";
        assert!(said.ends_with(end), "{said}");
        // Nothing more is applied or taken, and a restart stops at the same entry.
        assert_eq!(core.applied(), applied);
        assert!(matches!(core.handle_ready(Instant::now(), &mut |_| true), Err(RaftError::Stopped(_))));
        assert_eq!(core.propose(create("c"), Instant::now()).unwrap_err(), ProposeError::Stopped);
        assert_eq!(*core.store().read(), before);
        drop(core);
        let mut again = lone_core(dir.path(), false).unwrap();
        let err = run_until(&mut again, |_| false).unwrap_err();
        assert!(matches!(err, RaftError::UnreadableEntry { index: i, .. } if i == index), "{err:?}");
        assert_eq!(again.store().read().services, before.services);
    }

    #[test]
    fn a_log_and_a_snapshot_written_before_the_envelope_still_load() {
        let bootstrap = |data: &[u8]| {
            let mut snap = Snapshot { data: data.to_vec().into(), ..Default::default() };
            snap.mut_metadata().index = 1;
            snap.mut_metadata().term = 1;
            snap.mut_metadata().mut_conf_state().voters = vec![1];
            snap
        };
        // The log: today's bytes as entries 2.., all committed.
        let dir = tempfile::tempdir().unwrap();
        let mut storage = DiskStorage::open(dir.path(), DataKey::for_tests()).unwrap();
        storage.apply_snapshot(bootstrap(&Store::default().to_snapshot())).unwrap();
        let entries: Vec<Entry> = entries_v0()
            .into_iter()
            .zip(2..)
            .map(|(data, index)| Entry { index, term: 1, data: data.into(), ..Default::default() })
            .collect();
        let last = entries.last().unwrap().index;
        storage.append(&entries).unwrap();
        storage.set_hardstate(HardState { term: 1, vote: 1, commit: last, ..Default::default() }).unwrap();
        drop(storage);
        let mut core = lone_core(dir.path(), false).unwrap();
        run_until(&mut core, |c| c.applied() >= last).unwrap();
        // Today's removal also revokes the node (which SNAPSHOT_V0, written
        // before revocation, does not record); the rest is the same.
        let mut replayed = core.store().read().clone();
        assert_eq!(replayed.cluster.revoked.iter().map(|n| n.as_str()).collect::<Vec<_>>(), ["w2"]);
        replayed.cluster.revoked.clear();
        assert_eq!(replayed.to_snapshot(), SNAPSHOT_V0);
        assert_eq!(core.skipped_entries(), 0);

        // The snapshot.
        let dir = tempfile::tempdir().unwrap();
        let mut storage = DiskStorage::open(dir.path(), DataKey::for_tests()).unwrap();
        storage.apply_snapshot(bootstrap(SNAPSHOT_V0)).unwrap();
        drop(storage);
        let core = lone_core(dir.path(), false).unwrap();
        let store = core.store().read();
        assert_eq!(store.to_snapshot(), SNAPSHOT_V0);
        assert!(store.tasks.indexes_match_a_scan());
        assert_eq!(store.tasks_on(&"w1".into()).count(), 1);
    }

    #[test]
    fn a_full_disk_refuses_writes_keeps_reads_and_resumes_by_itself() {
        let dir = tempfile::tempdir().unwrap();
        let mut core = lone_core(dir.path(), true).unwrap();
        run_until(&mut core, |c| c.status().is_leader).unwrap();
        assert_eq!(commit(&mut core, create("a")).unwrap(), Ok(()));

        // Everything in the snapshot, so a compaction cannot free the room
        // writes resume at (whatever a log record's size).
        let (index, cs) = (core.applied, core.node.raft.prs().conf().to_conf_state());
        let data = core.store.read().to_snapshot();
        core.node.mut_store().compact(index, data, cs).unwrap();
        core.snapshot_index = index;
        // The next append does not fit: that write is refused, nothing stops.
        let full = core.storage_figures().0 + 10;
        core.set_quota(Some(full));
        let shown = dir.path().parent().unwrap().display().to_string();
        let refused = Err(ProposeError::NoSpace { dir: shown.clone() });
        assert_eq!(commit(&mut core, create("b")).unwrap(), refused);
        let alarm = core.status().disk_alarm.expect("the alarm is raised");
        assert!(alarm.contains("storage quota"), "{alarm}");
        assert!(!core.status().is_leader, "a leader that cannot write is one no more");
        assert_eq!(core.propose(create("c"), Instant::now()).map(|_| ()), refused);
        assert_eq!(
            ProposeError::NoSpace { dir: shown.clone() }.to_string(),
            format!("no space left on the manager's disk ({shown}): writes are refused until space is freed")
        );
        let names = |c: &RaftCore| c.store().read().services.values().map(|s| s.spec.name.clone()).collect::<Vec<_>>();
        assert_eq!(names(&core), ["a"], "reads go on");
        // Still full a few retries later.
        let mut now = Instant::now();
        for _ in 0..100 {
            now += TICK;
            core.tick(now);
            assert!(core.handle_ready(now, &mut |_| true).unwrap().resolved.is_empty());
        }
        assert!(core.status().disk_alarm.is_some());

        // Space again: within a retry the alarm clears and writes resume.
        core.set_quota(None);
        run_until(&mut core, |c| c.status().disk_alarm.is_none() && c.status().is_leader).unwrap();
        assert_eq!(commit(&mut core, create("d")).unwrap(), Ok(()));
        let mut after = names(&core);
        after.sort();
        assert_eq!(after, ["a", "d"]);
        drop(core);
        let mut again = lone_core(dir.path(), false).unwrap();
        run_until(&mut again, |c| c.applied() > 1 && c.status().is_leader).unwrap();
        let mut restored = names(&again);
        restored.sort();
        assert_eq!(restored, ["a", "d"], "every acknowledged write, and nothing refused");
    }

    #[test]
    fn what_stops_the_node_says_why_in_its_exit_status() {
        use crate::raft::storage::StorageError;
        use crate::raft::{exit_reason, EXIT_CORRUPT, EXIT_FSYNC_FAILED, EXIT_RAFT_FAILED};
        let io = |op, errno| StorageError::Durability {
            op,
            path: "/d/raft/log".into(),
            source: std::io::Error::from_raw_os_error(errno),
        };
        let fsync = RaftError::Storage(io("fsync", 5));
        assert_eq!(
            exit_reason(&fsync),
            (
                "fsync of the raft log failed: the page cache can no longer be trusted; stopping the node",
                EXIT_FSYNC_FAILED
            )
        );
        let corrupt = RaftError::Storage(StorageError::Corrupt("log record at byte 9 fails its checksum".into()));
        assert_eq!(exit_reason(&corrupt), ("the raft log is corrupt; stopping the node", EXIT_CORRUPT));
        assert_eq!(exit_reason(&RaftError::Storage(io("rename", 5))).1, EXIT_RAFT_FAILED);
        let unreadable =
            RaftError::UnreadableEntry { index: 3, source: Unreadable { ignorable: false, reason: "x".into() } };
        assert_eq!(exit_reason(&unreadable), ("cannot apply the raft log; stopping the node", EXIT_RAFT_FAILED));
    }

    #[test]
    fn contexts_round_trip() {
        assert_eq!(parse_context(&proposal_context((7, 8, 9))), Some((7, 8, 9)));
        assert_eq!(parse_context(b"short"), None);
    }
}
