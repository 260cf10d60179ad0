//! RaftCore: the raft node, the store it builds and this node's proposals,
//! driven by plain method calls. No actor, no timers, no sockets: the caller
//! ticks it, steps peers' messages into it, hands it proposals, and runs
//! [`RaftCore::handle_ready`], giving it the time (`now`) wherever retries and
//! deadlines depend on it and a sink for outgoing messages. [`super::RaftLog`]
//! is the actor around it; the tests in `sim.rs` drive several cores over a
//! simulated network.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use common::api::Event;
use parking_lot::RwLock;
use protobuf::Message as _;
use raft::eraftpb::{ConfChange, ConfChangeType, ConfChangeV2, Entry, EntryType, Message, MessageType};
use raft::{Config, RawNode, SnapshotStatus, StateRole};

use super::storage::DiskStorage;
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
        let mut storage =
            DiskStorage::open(dir).map_err(|source| RaftError::Open { dir: dir.to_path_buf(), source })?;
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
        })
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
        let ready = self.node.tick();
        self.retry_pending(now);
        ready
    }

    /// A raft message from a peer.
    pub fn step(&mut self, m: Message) -> raft::Result<()> {
        if self.stopped.is_some() {
            return Ok(());
        }
        self.node.step(m)
    }

    /// Hand leadership to another voter (a follower forwards it to the leader).
    pub fn transfer_leader(&mut self, to: u64) {
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
        if let Some(reason) = &self.stopped {
            return Err(RaftError::Stopped(reason.clone()));
        }
        if self.node.has_ready() {
            if let Err(e) = self.on_ready(now, send) {
                self.stopped = Some(e.to_string());
                return Err(e);
            }
        }
        Ok(ReadyOutput { resolved: std::mem::take(&mut self.resolved), events: std::mem::take(&mut self.events) })
    }

    pub fn status(&self) -> RaftStatus {
        let r = &self.node.raft;
        let is_leader = r.state == StateRole::Leader;
        let learners = r.prs().conf().to_conf_state().learners;
        RaftStatus {
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
        }
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
        self.maybe_compact();
        self.retry_pending(now);
        Ok(())
    }

    /// Applies committed entries in order. An entry this version cannot
    /// read is skipped only if it is marked ignorable; otherwise applying
    /// stops before it, with the error (the rules are in [`crate::store`]).
    fn apply_entries(&mut self, entries: Vec<Entry>) -> Result<(), RaftError> {
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

    fn lone_core(dir: &Path, bootstrap: bool) -> Result<RaftCore, RaftError> {
        RaftCore::open(dir, CoreOptions { raft_id: 1, bootstrap, compact_every: 1000, boot: 7 }, Instant::now())
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
        let mut storage = DiskStorage::open(dir.path()).unwrap();
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
        assert_eq!(core.store().read().to_snapshot(), SNAPSHOT_V0);
        assert_eq!(core.skipped_entries(), 0);

        // The snapshot.
        let dir = tempfile::tempdir().unwrap();
        let mut storage = DiskStorage::open(dir.path()).unwrap();
        storage.apply_snapshot(bootstrap(SNAPSHOT_V0)).unwrap();
        drop(storage);
        let core = lone_core(dir.path(), false).unwrap();
        let store = core.store().read();
        assert_eq!(store.to_snapshot(), SNAPSHOT_V0);
        assert!(store.tasks.indexes_match_a_scan());
        assert_eq!(store.tasks_on(&"w1".into()).count(), 1);
    }

    #[test]
    fn contexts_round_trip() {
        assert_eq!(parse_context(&proposal_context((7, 8, 9))), Some((7, 8, 9)));
        assert_eq!(parse_context(b"short"), None);
    }
}
