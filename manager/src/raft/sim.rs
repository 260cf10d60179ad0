//! Several [`RaftCore`]s in one process, each on a real [`DiskStorage`] in a
//! temporary directory, over a simulated network: a queue of messages
//! delivered in rounds, links that can be cut one way or both ways (messages
//! on a cut link are lost), nodes that crash and restart from their data dir,
//! and a virtual clock that moves one [`TICK`] at a time. raft-rs randomises
//! election timeouts, so scenarios tick until a condition holds, with an upper
//! bound, rather than for a fixed count.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::time::Instant;

use common::spec::{ServiceSpec, TaskTemplate};
use common::ServiceId;
use raft::eraftpb::{Message, MessageType, Snapshot};
use raft::{GetEntriesContext, Storage};
use tempfile::TempDir;

use super::core::{proposal_context, CoreOptions, Proposal, ProposalNo, RaftCore};
use super::storage::keys::DataKey;
use super::storage::DiskStorage;
use super::{ProposeError, RaftStatus, ELECTION_TICKS, LEADER_WAIT, REPROPOSE_AFTER, TICK};
use crate::store::{encode_command, Command, Service, Store};

/// Raft's randomised election timeout is below this many ticks.
const ELECTION_MAX: u64 = 2 * ELECTION_TICKS as u64;
const LEADER_WAIT_TICKS: u64 = (LEADER_WAIT.as_millis() / TICK.as_millis()) as u64;

struct SimNode {
    /// `None` while crashed.
    core: Option<RaftCore>,
    dir: TempDir,
    boot: u64,
}

struct Sim {
    nodes: BTreeMap<u64, SimNode>,
    compact_every: u64,
    queue: VecDeque<Message>,
    /// Cut links, (from, to).
    cut: HashSet<(u64, u64)>,
    now: Instant,
    ticks: u64,
    /// Finished proposals, by (proposer, number).
    results: HashMap<(u64, ProposalNo), Result<(), ProposeError>>,
    /// Who received a snapshot from the leader.
    snapshots_to: Vec<u64>,
    /// Lose this many snapshot messages.
    drop_snapshots: usize,
}

fn service(name: &str) -> Command {
    let spec = ServiceSpec::new(name, 1, TaskTemplate::new("img"));
    Command::CreateService(Service::new(ServiceId::from(name), spec, 0))
}

fn sorted(mut ids: Vec<u64>) -> Vec<u64> {
    ids.sort_unstable();
    ids
}

fn names(store: &Store) -> Vec<String> {
    store.services.values().map(|s| s.spec.name.clone()).collect()
}

impl Sim {
    fn empty(compact_every: u64) -> Sim {
        Sim {
            nodes: BTreeMap::new(),
            compact_every,
            queue: VecDeque::new(),
            cut: HashSet::new(),
            now: Instant::now(),
            ticks: 0,
            results: HashMap::new(),
            snapshots_to: Vec::new(),
            drop_snapshots: 0,
        }
    }

    /// `n` voters (ids 1..=n) that share a first snapshot naming them all,
    /// as if the cluster had been formed already; none is leader yet.
    fn voters(n: u64) -> Sim {
        let mut sim = Sim::empty(1000);
        let ids: Vec<u64> = (1..=n).collect();
        for &id in &ids {
            let dir = tempfile::tempdir().unwrap();
            let mut storage = DiskStorage::open(dir.path(), DataKey::for_tests()).unwrap();
            let mut snap = Snapshot { data: Store::default().to_snapshot().into(), ..Default::default() };
            snap.mut_metadata().index = 1;
            snap.mut_metadata().term = 1;
            snap.mut_metadata().mut_conf_state().voters = ids.clone();
            storage.apply_snapshot(snap).unwrap();
            drop(storage);
            sim.add(id, dir, false);
        }
        sim
    }

    /// A new cluster as `shoal init` makes it: node 1 bootstraps alone.
    fn bootstrap(compact_every: u64) -> Sim {
        let mut sim = Sim::empty(compact_every);
        sim.add(1, tempfile::tempdir().unwrap(), true);
        sim
    }

    /// A manager that is about to join: empty log, no membership.
    fn add_empty(&mut self, id: u64) {
        self.add(id, tempfile::tempdir().unwrap(), false);
    }

    fn add(&mut self, id: u64, dir: TempDir, bootstrap: bool) {
        let boot = id * 1000;
        let opts = CoreOptions {
            raft_id: id,
            bootstrap,
            compact_every: self.compact_every,
            boot,
            quota: None,
            key: DataKey::for_tests(),
        };
        let core = RaftCore::open(dir.path(), opts, self.now).unwrap();
        self.nodes.insert(id, SimNode { core: Some(core), dir, boot });
    }

    fn crash(&mut self, id: u64) {
        self.nodes.get_mut(&id).unwrap().core = None;
    }

    /// Starts a crashed node again from its data dir, as a new process.
    fn restart(&mut self, id: u64) {
        let n = self.nodes.get_mut(&id).unwrap();
        assert!(n.core.is_none(), "{id} is running");
        n.boot += 1;
        let opts = CoreOptions {
            raft_id: id,
            bootstrap: false,
            compact_every: self.compact_every,
            boot: n.boot,
            quota: None,
            key: DataKey::for_tests(),
        };
        n.core = Some(RaftCore::open(n.dir.path(), opts, self.now).unwrap());
    }

    fn core(&self, id: u64) -> &RaftCore {
        self.nodes[&id].core.as_ref().unwrap_or_else(|| panic!("{id} is down"))
    }

    fn core_mut(&mut self, id: u64) -> &mut RaftCore {
        self.nodes.get_mut(&id).unwrap().core.as_mut().unwrap_or_else(|| panic!("{id} is down"))
    }

    fn up(&self) -> Vec<u64> {
        self.nodes.iter().filter(|(_, n)| n.core.is_some()).map(|(id, _)| *id).collect()
    }

    fn cut_one_way(&mut self, from: u64, to: u64) {
        self.cut.insert((from, to));
    }

    /// Cuts every link between `a` and `b`, both ways.
    fn partition(&mut self, a: &[u64], b: &[u64]) {
        for &x in a {
            for &y in b {
                self.cut.insert((x, y));
                self.cut.insert((y, x));
            }
        }
    }

    fn isolate(&mut self, id: u64) {
        let others: Vec<u64> = self.nodes.keys().copied().filter(|&o| o != id).collect();
        self.partition(&[id], &others);
    }

    fn heal(&mut self) {
        self.cut.clear();
    }

    /// Runs every running node's ready loop; their messages join the queue.
    fn ready_all(&mut self) {
        for (&id, n) in self.nodes.iter_mut() {
            let Some(core) = n.core.as_mut() else { continue };
            let queue = &mut self.queue;
            let out = core
                .handle_ready(self.now, &mut |m| {
                    queue.push_back(m);
                    true
                })
                .unwrap();
            for (no, r) in out.resolved {
                let prev = self.results.insert((id, no), r);
                assert!(prev.is_none(), "proposal {no:?} of {id} resolved twice");
            }
        }
    }

    /// Delivers what is queued now; messages on cut links or to nodes that
    /// are down are lost.
    fn deliver_all(&mut self) {
        for m in std::mem::take(&mut self.queue) {
            if self.cut.contains(&(m.from, m.to)) {
                continue;
            }
            let Some(core) = self.nodes.get_mut(&m.to).and_then(|n| n.core.as_mut()) else { continue };
            if m.get_msg_type() == MessageType::MsgSnapshot {
                if self.drop_snapshots > 0 {
                    self.drop_snapshots -= 1;
                    continue;
                }
                self.snapshots_to.push(m.to);
            }
            // Refusals (a message from a removed peer, say) are raft's business.
            let _ = core.step(m);
        }
    }

    /// Ready loops and deliveries until no message is in flight.
    fn settle(&mut self) {
        for _ in 0..1000 {
            self.ready_all();
            if self.queue.is_empty() {
                return;
            }
            self.deliver_all();
        }
        panic!("the network did not settle");
    }

    /// One tick of the virtual clock on every running node, then settles.
    fn tick(&mut self) {
        self.now += TICK;
        self.ticks += 1;
        let now = self.now;
        for n in self.nodes.values_mut() {
            if let Some(core) = n.core.as_mut() {
                core.tick(now);
            }
        }
        self.settle();
    }

    fn ticks(&mut self, n: u64) {
        for _ in 0..n {
            self.tick();
        }
    }

    /// Ticks until `cond` holds; how many ticks that took. Panics after `max`.
    fn tick_until(&mut self, max: u64, what: &str, cond: impl Fn(&Sim) -> bool) -> u64 {
        for t in 0..=max {
            if cond(self) {
                return t;
            }
            self.tick();
        }
        panic!("not within {max} ticks: {what}");
    }

    fn status(&self, id: u64) -> RaftStatus {
        self.core(id).status()
    }

    fn store(&self, id: u64) -> Store {
        self.core(id).store().read().clone()
    }

    /// The member of `group` that leads it, if it thinks so and every other
    /// member follows it.
    fn leader_of(&self, group: &[u64]) -> Option<u64> {
        let leader = self.status(group[0]).leader_id;
        let agreed = group.contains(&leader)
            && self.status(leader).is_leader
            && group.iter().all(|&id| self.status(id).leader_id == leader);
        agreed.then_some(leader)
    }

    fn leaders_among(&self, group: &[u64]) -> Vec<u64> {
        group.iter().copied().filter(|&id| self.status(id).is_leader).collect()
    }

    fn elect(&mut self, group: &[u64]) -> u64 {
        self.tick_until(10 * ELECTION_MAX, "a leader elected", |s| s.leader_of(group).is_some());
        self.leader_of(group).unwrap()
    }

    fn propose(&mut self, on: u64, what: Proposal) -> Result<ProposalNo, ProposeError> {
        let now = self.now;
        self.core_mut(on).propose(what, now)
    }

    fn propose_cmd(&mut self, on: u64, cmd: Command) -> ProposalNo {
        self.propose(on, Proposal::Command(encode_command(&cmd))).expect("proposal taken")
    }

    fn result(&self, on: u64, n: ProposalNo) -> Option<Result<(), ProposeError>> {
        self.results.get(&(on, n)).cloned()
    }

    /// Proposes on `on` and ticks until the proposal is finished.
    fn commit(&mut self, on: u64, what: Proposal) -> Result<(), ProposeError> {
        let n = self.propose(on, what)?;
        self.settle();
        self.tick_until(LEADER_WAIT_TICKS + 10, "the proposal finished", |s| s.result(on, n).is_some());
        self.result(on, n).unwrap()
    }

    /// How many entries in `id`'s stored log carry the context of `proposer`'s
    /// proposal `n`.
    fn copies_in_log(&self, id: u64, proposer: u64, n: ProposalNo) -> usize {
        let ctx = proposal_context((proposer, self.nodes[&proposer].boot, n.0));
        let storage = self.core(id).raw().store();
        let (first, last) = (storage.first_index().unwrap(), storage.last_index().unwrap());
        let entries = storage.entries(first, last + 1, None, GetEntriesContext::empty(false)).unwrap();
        entries.iter().filter(|e| e.context == ctx).count()
    }

    /// Every running node's store, applied index and log end are the same.
    fn converged(&self) -> bool {
        let up = self.up();
        let first = (self.store(up[0]), self.status(up[0]).applied, self.core(up[0]).raw().raft.raft_log.last_index());
        up.iter().all(|&id| {
            (self.store(id), self.status(id).applied, self.core(id).raw().raft.raft_log.last_index()) == first
        })
    }
}

#[test]
fn a_follower_proposal_is_applied_on_every_node() {
    let mut sim = Sim::voters(3);
    let leader = sim.elect(&[1, 2, 3]);
    let follower = [1, 2, 3].into_iter().find(|&id| id != leader).unwrap();

    assert_eq!(sim.commit(follower, Proposal::Command(encode_command(&service("web")))), Ok(()));
    sim.tick_until(5, "all applied", Sim::converged);
    for id in [1, 2, 3] {
        assert_eq!(names(&sim.store(id)), ["web"], "store of {id}");
    }
    // The store's verdict reaches the proposer, wherever it is.
    assert!(matches!(
        sim.commit(follower, Proposal::Command(encode_command(&service("web")))),
        Err(ProposeError::Rejected(crate::store::StoreError::NameInUse(..)))
    ));
}

#[test]
fn a_partitioned_leader_steps_down_and_the_majority_goes_on() {
    let mut sim = Sim::voters(3);
    let old = sim.elect(&[1, 2, 3]);
    assert_eq!(sim.commit(old, Proposal::Command(encode_command(&service("before")))), Ok(()));
    sim.tick_until(5, "all applied", Sim::converged);
    let old_term = sim.status(old).term;
    let majority: Vec<u64> = [1, 2, 3].into_iter().filter(|&id| id != old).collect();

    sim.isolate(old);
    // Taken by the old leader, which cannot reach anyone to commit it.
    let lost = sim.propose_cmd(old, service("lost"));
    let stepped_down = sim.tick_until(ELECTION_MAX + 2, "the old leader steps down", |s| !s.status(old).is_leader);
    eprintln!("partitioned leader stepped down after {stepped_down} ticks");

    let new = sim.elect(&majority);
    assert!(sim.status(new).term > old_term);
    assert_eq!(sim.commit(new, Proposal::Command(encode_command(&service("kept")))), Ok(()));
    assert!(majority.iter().all(|&id| names(&sim.store(id)) == ["before", "kept"]));

    // The minority's proposal is refused once it has waited LEADER_WAIT for
    // a leader, never acknowledged; the old leader stays a follower meanwhile.
    for _ in 0..LEADER_WAIT_TICKS {
        sim.tick();
        assert!(sim.leaders_among(&[old]).is_empty(), "the minority elected itself at tick {}", sim.ticks);
        assert_ne!(sim.result(old, lost), Some(Ok(())));
    }
    // It was handed to raft, so the proposer is told it may or may not apply.
    assert_eq!(sim.result(old, lost), Some(Err(ProposeError::Unconfirmed)));
    assert_eq!(names(&sim.store(old)), ["before"]);
    assert!(sim.copies_in_log(old, old, lost) == 1, "the old leader still holds the uncommitted entry");
    // Leaderless that long, it refuses new writes at once.
    assert_eq!(sim.propose(old, Proposal::Command(encode_command(&service("late")))), Err(ProposeError::NoLeader));

    sim.heal();
    sim.tick_until(4 * ELECTION_MAX, "all converge", |s| s.leader_of(&[1, 2, 3]) == Some(new) && s.converged());
    assert!(sim.status(old).term >= sim.status(new).term);
    for id in [1, 2, 3] {
        assert_eq!(names(&sim.store(id)), ["before", "kept"], "store of {id}");
        assert_eq!(sim.copies_in_log(id, old, lost), 0, "the minority's entry is gone from {id}");
    }
    assert_eq!(sim.result(old, lost), Some(Err(ProposeError::Unconfirmed)));
}

#[test]
fn a_leader_that_cannot_hear_its_followers_steps_down() {
    let mut sim = Sim::voters(3);
    let old = sim.elect(&[1, 2, 3]);
    let others: Vec<u64> = [1, 2, 3].into_iter().filter(|&id| id != old).collect();
    // Its heartbeats still arrive, which keeps the followers from electing
    // anyone until it gives up.
    for &o in &others {
        sim.cut_one_way(o, old);
    }
    let stepped_down = sim.tick_until(ELECTION_MAX + 2, "the old leader steps down", |s| !s.status(old).is_leader);
    let new = sim.elect(&others);
    eprintln!("deaf leader stepped down after {stepped_down} ticks, then {} ticks in all for a new one", sim.ticks);
    assert_eq!(sim.commit(new, Proposal::Command(encode_command(&service("web")))), Ok(()));
    assert!(sim.leaders_among(&[old]).is_empty());
}

#[test]
fn a_proposal_lost_with_its_leader_is_applied_once() {
    let mut sim = Sim::voters(3);
    let old = sim.elect(&[1, 2, 3]);
    let others: Vec<u64> = [1, 2, 3].into_iter().filter(|&id| id != old).collect();
    let proposer = others[0];

    // The follower's proposal reaches the leader, which replicates it; the
    // leader is cut off before it hears back, so nobody knows it committed.
    let n = sim.propose_cmd(proposer, service("once"));
    let mut rounds = 0;
    loop {
        sim.ready_all();
        if others.iter().all(|&id| sim.copies_in_log(id, proposer, n) == 1) {
            break;
        }
        sim.deliver_all();
        rounds += 1;
        assert!(rounds < 10, "the entry never reached the followers");
    }
    sim.isolate(old);
    sim.deliver_all();
    assert_eq!(sim.status(old).commit, sim.status(proposer).commit, "the leader did not commit it");
    assert_eq!(sim.result(proposer, n), None);

    // A new leader commits the entry from the old term; the proposer saw
    // the leader change and sent its proposal again: a second copy commits.
    let new = sim.elect(&others);
    sim.tick_until(ELECTION_MAX, "the second copy committed", |s| {
        others.iter().all(|&id| s.copies_in_log(id, proposer, n) == 2 && s.status(id).applied == s.status(new).commit)
    });
    assert_eq!(sim.result(proposer, n), Some(Ok(())), "the proposer is told it worked");
    for &id in &others {
        assert_eq!(names(&sim.store(id)), ["once"], "applied once on {id}");
    }

    sim.heal();
    sim.tick_until(4 * ELECTION_MAX, "all converge", |s| s.leader_of(&[1, 2, 3]) == Some(new) && s.converged());
    assert_eq!(names(&sim.store(old)), ["once"]);
}

#[test]
fn five_nodes_commit_with_two_down_but_not_three() {
    let mut sim = Sim::voters(5);
    let all = [1, 2, 3, 4, 5];
    let first = sim.elect(&all);
    // The leader and one follower crash.
    let second = all.into_iter().find(|&id| id != first).unwrap();
    sim.crash(first);
    sim.crash(second);
    let three = sim.up();
    let leader = sim.elect(&three);
    assert_eq!(sim.commit(three[0], Proposal::Command(encode_command(&service("three")))), Ok(()));
    sim.tick_until(5, "the three applied", Sim::converged);
    assert!(three.iter().all(|&id| names(&sim.store(id)) == ["three"]));

    // A third one goes (the leader): two of five cannot commit.
    sim.crash(leader);
    let two = sim.up();
    let commit_before: Vec<u64> = two.iter().map(|&id| sim.status(id).commit).collect();
    let n = sim.propose_cmd(two[0], service("two"));
    sim.ticks(LEADER_WAIT_TICKS + 1);
    assert_eq!(sim.result(two[0], n), Some(Err(ProposeError::Unconfirmed)));
    assert!(sim.leaders_among(&two).is_empty());
    assert_eq!(two.iter().map(|&id| sim.status(id).commit).collect::<Vec<_>>(), commit_before);
    assert!(two.iter().all(|&id| names(&sim.store(id)) == ["three"]));

    // All back, restarted from their data dirs: one history.
    for id in [first, second, leader] {
        sim.restart(id);
    }
    sim.elect(&all);
    sim.tick_until(4 * ELECTION_MAX, "all converge", Sim::converged);
    assert!(all.iter().all(|&id| names(&sim.store(id)) == ["three"]));
    assert_eq!(sim.commit(first, Proposal::Command(encode_command(&service("five")))), Ok(()));
}

#[test]
fn learners_catch_up_by_snapshot_then_count_as_voters() {
    let mut sim = Sim::bootstrap(10);
    sim.settle();
    assert!(sim.status(1).is_leader, "a lone voter elects itself at once");
    for i in 0..25 {
        sim.propose_cmd(1, service(&format!("s{i}")));
        sim.settle();
    }
    assert_eq!(sim.store(1).services.len(), 25);
    let first_index = sim.core(1).raw().store().first_index().unwrap();
    assert!(first_index > 10, "the log was compacted (first index {first_index})");

    for id in [2, 3] {
        sim.add_empty(id);
        assert_eq!(sim.commit(1, Proposal::AddLearner(id)), Ok(()));
    }
    sim.tick_until(10 * ELECTION_MAX, "the learners caught up", |s| {
        s.converged() && sorted(s.status(1).caught_up) == [2, 3]
    });
    let st = sim.status(1);
    assert_eq!((sorted(st.voters), sorted(st.learners)), (vec![1], vec![2, 3]));
    let mut got = sim.snapshots_to.clone();
    got.sort_unstable();
    got.dedup();
    assert_eq!(got, [2, 3], "both learners were sent a snapshot");

    for id in [2, 3] {
        assert_eq!(sim.commit(1, Proposal::AddVoter(id)), Ok(()));
    }
    sim.tick_until(ELECTION_MAX, "all know the voters", |s| {
        [1, 2, 3].iter().all(|&id| sorted(s.status(id).voters) == [1, 2, 3] && s.status(id).learners.is_empty())
    });

    // Without node 1, the two new voters are a majority of three.
    sim.isolate(1);
    let leader = sim.elect(&[2, 3]);
    assert_eq!(sim.commit(leader, Proposal::Command(encode_command(&service("by-the-new-voters")))), Ok(()));
    assert_eq!(sim.store(2).services.len(), 26);
    assert_eq!(sim.store(2), sim.store(3));
}

#[test]
fn a_proposal_waits_for_a_leader_then_is_refused() {
    // A fresh 3-node cluster has no leader until an election timeout.
    let mut sim = Sim::voters(3);
    sim.isolate(1);
    let n = sim.propose_cmd(1, service("web"));
    sim.ticks(LEADER_WAIT_TICKS - 1);
    assert_eq!(sim.result(1, n), None, "still waiting");
    sim.tick();
    assert_eq!(sim.result(1, n), Some(Err(ProposeError::NoLeader)));

    // Parked proposals go out once there is a leader.
    let mut sim = Sim::voters(3);
    let n = sim.propose_cmd(1, service("web"));
    sim.elect(&[1, 2, 3]);
    sim.tick_until(ELECTION_MAX, "applied", |s| s.result(1, n).is_some());
    assert_eq!(sim.result(1, n), Some(Ok(())));
}

#[test]
fn a_dropped_proposal_is_sent_again_after_a_while() {
    let mut sim = Sim::voters(3);
    let leader = sim.elect(&[1, 2, 3]);
    let follower = [1, 2, 3].into_iter().find(|&id| id != leader).unwrap();
    // The forwarded proposal is lost; the leader stays the same.
    sim.cut_one_way(follower, leader);
    let n = sim.propose_cmd(follower, service("web"));
    sim.settle();
    sim.heal();
    let reproposed = REPROPOSE_AFTER.as_millis() / TICK.as_millis();
    let took = sim.tick_until(reproposed as u64 + 5, "applied", |s| s.result(follower, n).is_some());
    assert!(took as u128 >= reproposed - 1, "re-sent after {took} ticks");
    assert_eq!(sim.result(follower, n), Some(Ok(())));
    assert_eq!(sim.leader_of(&[1, 2, 3]), Some(leader));
    assert_eq!(sim.copies_in_log(leader, follower, n), 1);
}

#[test]
fn a_lost_snapshot_is_sent_again() {
    let mut sim = Sim::bootstrap(10);
    sim.settle();
    for i in 0..25 {
        sim.propose_cmd(1, service(&format!("s{i}")));
        sim.settle();
    }
    sim.add_empty(2);
    sim.drop_snapshots = 1;
    assert_eq!(sim.commit(1, Proposal::AddLearner(2)), Ok(()));
    sim.tick_until(2 * ELECTION_MAX, "the learner caught up", Sim::converged);
    assert_eq!(sim.drop_snapshots, 0, "a snapshot was lost");
    assert_eq!(sim.snapshots_to, [2], "and a second one arrived");
    assert_eq!(sim.store(2).services.len(), 25);
}

#[test]
fn a_batch_that_fails_midway_is_refused_whole_on_every_node() {
    let mut sim = Sim::voters(3);
    let leader = sim.elect(&[1, 2, 3]);
    let follower = [1, 2, 3].into_iter().find(|&id| id != leader).unwrap();
    assert_eq!(sim.commit(leader, Proposal::Command(encode_command(&service("web")))), Ok(()));
    sim.tick_until(5, "all applied", Sim::converged);
    let before = sim.store(leader);

    // The third command takes a name already in use.
    let batch = Command::Batch(vec![service("db"), service("cache"), service("web"), service("never")]);
    let taken = crate::store::StoreError::NameInUse("web".into(), "web".into());
    assert_eq!(sim.commit(follower, Proposal::Command(encode_command(&batch))), Err(ProposeError::Rejected(taken)));
    sim.tick_until(5, "all applied", Sim::converged);
    for id in [1, 2, 3] {
        let s = sim.store(id);
        assert_eq!(names(&s), ["web"], "on {id}");
        assert_eq!((&s.services, &s.tasks, &s.nodes), (&before.services, &before.tasks, &before.nodes), "on {id}");
    }
}

/// Fills `id`'s disk (a quota it is already at); `None` frees it.
fn fill_disk(sim: &mut Sim, id: u64, full: bool) {
    let core = sim.core_mut(id);
    let quota = full.then(|| core.storage_figures().0);
    core.set_quota(quota);
}

const DISK_RETRY_TICKS: u64 = (super::core::DISK_RETRY.as_millis() / TICK.as_millis()) as u64;

#[test]
fn a_follower_whose_disk_is_full_does_not_acknowledge_and_catches_up_after() {
    let mut sim = Sim::voters(3);
    let leader = sim.elect(&[1, 2, 3]);
    let full = [1, 2, 3].into_iter().find(|&id| id != leader).unwrap();
    fill_disk(&mut sim, full, true);

    // Committed by the other two; the full one stores and acknowledges nothing.
    assert_eq!(sim.commit(leader, Proposal::Command(encode_command(&service("a")))), Ok(()));
    assert!(sim.status(full).disk_alarm.is_some());
    let n = ProposalNo(1);
    assert_eq!(sim.copies_in_log(leader, leader, n), 1);
    assert_eq!(sim.copies_in_log(full, leader, n), 0, "no entry it could not store");
    assert!(names(&sim.store(full)).is_empty());
    assert!(matches!(
        sim.propose(full, Proposal::Command(encode_command(&service("b")))),
        Err(ProposeError::NoSpace { .. })
    ));
    sim.ticks(2 * ELECTION_MAX);
    assert_eq!(sim.leader_of(&[1, 2, 3].into_iter().filter(|&id| id != full).collect::<Vec<_>>()), Some(leader));

    fill_disk(&mut sim, full, false);
    sim.tick_until(DISK_RETRY_TICKS + 5 * ELECTION_MAX, "the full follower caught up", |s| {
        s.status(full).disk_alarm.is_none() && s.converged()
    });
    assert_eq!(names(&sim.store(full)), ["a"]);
    assert_eq!(sim.commit(full, Proposal::Command(encode_command(&service("b")))), Ok(()));
}

#[test]
fn a_leader_whose_disk_is_full_steps_down_and_the_others_go_on() {
    let mut sim = Sim::voters(3);
    let old = sim.elect(&[1, 2, 3]);
    let others: Vec<u64> = [1, 2, 3].into_iter().filter(|&id| id != old).collect();
    fill_disk(&mut sim, old, true);

    // Its entry went out before its own append failed: the others may
    // commit it, and its proposer is told so.
    let n = sim.propose_cmd(old, service("in-flight"));
    sim.settle();
    assert!(sim.status(old).disk_alarm.is_some());
    assert!(!sim.status(old).is_leader);
    assert!(matches!(sim.result(old, n), Some(Err(ProposeError::NoSpaceInFlight { .. }))));

    let new = sim.elect(&others);
    assert_ne!(new, old);
    assert_eq!(sim.commit(new, Proposal::Command(encode_command(&service("after")))), Ok(()));

    fill_disk(&mut sim, old, false);
    sim.tick_until(DISK_RETRY_TICKS + 5 * ELECTION_MAX, "the old leader caught up", |s| {
        s.status(old).disk_alarm.is_none() && s.converged()
    });
    // Applied, once.
    let mut all = names(&sim.store(old));
    all.sort();
    assert_eq!(all, ["after", "in-flight"]);
    assert_eq!(sim.leader_of(&[1, 2, 3]), Some(new));
}
