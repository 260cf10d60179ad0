//! Manager roles: `node promote` / `node demote` and the loop that keeps
//! raft's voters equal to the store's managers.
//!
//! As in Swarm, a role change is two steps. The API checks the request
//! ([`check_promote`], [`check_demote`]) and commits the node's new role to
//! the store; the leader's [`RoleManager`] then changes raft's membership to
//! match ([`plan_membership`]), one change at a time, each confirmed from
//! the applied configuration before the next (raft-rs drops a second change
//! proposed while one is pending; the loop simply proposes it again). The
//! node itself learns its new role from the managers list its session
//! carries and restarts its process in the new role (containers keep
//! running).

use std::collections::BTreeSet;
use std::time::Duration;

use common::node::{Node, Role};
use common::NodeId;

use crate::raft::{AddLearner, AddVoter, RaftStatus, RemoveVoter, TransferLeader};
use crate::store::Store;
use crate::Manager;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RoleError {
    #[error("node {0} not found")]
    NoSuchNode(String),
    #[error("node {0} is already a manager")]
    AlreadyManager(String),
    #[error("node {0} is already a worker")]
    AlreadyWorker(String),
    #[error("node {0} is down: a manager that cannot be reached would weaken the quorum; bring it back first")]
    Down(String),
    #[error("node {0} is the last manager: promote another node before demoting it")]
    LastManager(String),
    #[error(
        "demoting {hostname} would lose quorum: {reachable} of the {after} remaining managers are reachable, \
         {needed} are needed; bring managers back first"
    )]
    WouldLoseQuorum { hostname: String, reachable: usize, after: usize, needed: usize },
}

/// Raft ids of the voters that gossip says are alive.
fn reachable(store: &Store, voters: &[u64], live: &BTreeSet<NodeId>) -> BTreeSet<u64> {
    store.nodes.values().filter(|n| voters.contains(&n.raft_id) && live.contains(&n.id)).map(|n| n.raft_id).collect()
}

/// Raft ids of the nodes the store calls managers.
fn manager_raft_ids(store: &Store) -> BTreeSet<u64> {
    store.nodes.values().filter(|n| n.role == Role::Manager).map(|n| n.raft_id).collect()
}

pub fn check_promote(store: &Store, live: &BTreeSet<NodeId>, key: &str) -> Result<Node, RoleError> {
    let node = store.find_node(key).ok_or_else(|| RoleError::NoSuchNode(key.to_string()))?;
    if node.role == Role::Manager {
        return Err(RoleError::AlreadyManager(node.hostname.clone()));
    }
    if !live.contains(&node.id) {
        return Err(RoleError::Down(node.hostname.clone()));
    }
    Ok(node.clone())
}

/// Refuses to demote the last manager, or one whose removal leaves fewer
/// reachable voters than a majority of those that remain.
pub fn check_demote(store: &Store, voters: &[u64], live: &BTreeSet<NodeId>, key: &str) -> Result<Node, RoleError> {
    let node = store.find_node(key).ok_or_else(|| RoleError::NoSuchNode(key.to_string()))?;
    if node.role == Role::Worker {
        return Err(RoleError::AlreadyWorker(node.hostname.clone()));
    }
    let mut managers = manager_raft_ids(store);
    managers.extend(voters);
    let remaining: BTreeSet<u64> = managers.iter().copied().filter(|id| *id != node.raft_id).collect();
    if remaining.is_empty() {
        return Err(RoleError::LastManager(node.hostname.clone()));
    }
    let remaining_v: Vec<u64> = remaining.iter().copied().collect();
    let up = reachable(store, &remaining_v, live).len();
    let needed = remaining.len() / 2 + 1;
    if up < needed {
        return Err(RoleError::WouldLoseQuorum {
            hostname: node.hostname.clone(),
            reachable: up,
            after: remaining.len(),
            needed,
        });
    }
    Ok(node.clone())
}

/// One membership step toward "members = the store's managers".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MembershipStep {
    /// A new manager first receives the log without voting.
    AddLearner(u64),
    /// A learner that has caught up becomes a voter.
    Promote(u64),
    Remove(u64),
    /// The leader itself is to go: hand leadership to this voter first.
    TransferTo(u64),
}

impl MembershipStep {
    /// Whether the applied configuration shows the step done.
    pub fn done(&self, s: &RaftStatus) -> bool {
        match *self {
            MembershipStep::AddLearner(id) => s.learners.contains(&id) || s.voters.contains(&id),
            MembershipStep::Promote(id) => s.voters.contains(&id),
            MembershipStep::Remove(id) => !s.voters.contains(&id) && !s.learners.contains(&id),
            MembershipStep::TransferTo(_) => !s.is_leader,
        }
    }
}

/// The next step, if any, for the leader whose raft state is `st`.
/// Additions first (they raise fault tolerance); a learner is promoted only
/// when it has caught up and is alive; the leader never removes itself, it
/// hands over leadership instead.
pub fn plan_membership(store: &Store, st: &RaftStatus, live: &BTreeSet<NodeId>) -> Option<MembershipStep> {
    let managers = manager_raft_ids(store);
    let member = |id: &u64| st.voters.contains(id) || st.learners.contains(id);
    if let Some(add) = managers.iter().find(|id| !member(id)) {
        return Some(MembershipStep::AddLearner(*add));
    }
    let up = reachable(store, &st.learners, live);
    if let Some(p) =
        st.learners.iter().filter(|id| managers.contains(id) && st.caught_up.contains(id) && up.contains(id)).min()
    {
        return Some(MembershipStep::Promote(*p));
    }
    // A member the store does not call a manager: demoted, or removed.
    if let Some(l) = st.learners.iter().filter(|id| !managers.contains(id)).min() {
        return Some(MembershipStep::Remove(*l));
    }
    let goes = st.voters.iter().copied().filter(|id| !managers.contains(id)).min()?;
    if st.voters.len() <= 1 {
        return None;
    }
    if goes != st.raft_id {
        return Some(MembershipStep::Remove(goes));
    }
    let up = reachable(store, &st.voters, live);
    st.voters
        .iter()
        .copied()
        .filter(|id| *id != st.raft_id && managers.contains(id) && up.contains(id))
        .min()
        .map(MembershipStep::TransferTo)
}

/// The leader's membership loop (runs on every manager, acts on the leader).
pub struct RoleManager;

impl RoleManager {
    pub fn start(m: Manager, live: crate::control::LiveNodes) {
        actix::spawn(async move {
            let mut applied = m.applied.clone();
            let mut status = m.status.clone();
            let mut live_rx = live.clone();
            loop {
                let step = {
                    let st = status.borrow_and_update().clone();
                    let live_now = live_rx.borrow_and_update().clone();
                    if st.is_leader {
                        plan_membership(&m.store.read(), &st, &live_now)
                    } else {
                        None
                    }
                };
                if let Some(step) = step {
                    Self::execute(&m, step).await;
                    continue;
                }
                tokio::select! {
                    r = applied.changed() => if r.is_err() { return },
                    r = status.changed() => if r.is_err() { return },
                    r = live_rx.changed() => if r.is_err() { return },
                }
            }
        });
    }

    async fn execute(m: &Manager, step: MembershipStep) {
        let _one_at_a_time = m.conf_lock.lock().await;
        tracing::info!(?step, "changing raft membership");
        let flat = |r: Result<Result<(), crate::raft::ProposeError>, actix::MailboxError>| match r {
            Ok(r) => r.map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        let sent = match step {
            MembershipStep::AddLearner(id) => flat(m.raft.send(AddLearner(id)).await),
            MembershipStep::Promote(id) => flat(m.raft.send(AddVoter(id)).await),
            MembershipStep::Remove(id) => flat(m.raft.send(RemoveVoter(id)).await),
            MembershipStep::TransferTo(id) => m.raft.send(TransferLeader(id)).await.map_err(|e| e.to_string()),
        };
        if let Err(e) = sent {
            tracing::warn!(?step, error = %e, "membership change failed; will retry");
        }
        // Confirmed from the applied configuration (or leadership moving)
        // before anything else; a dropped change is simply planned again.
        let mut status = m.status.clone();
        let confirmed = tokio::time::timeout(Duration::from_secs(3), status.wait_for(|s| step.done(s))).await;
        if !matches!(confirmed, Ok(Ok(_))) {
            tracing::warn!(?step, "membership change not confirmed yet; will retry");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use common::node::Availability;

    fn node(n: u64, role: Role) -> Node {
        Node {
            id: NodeId::from(format!("node{n:021}")),
            raft_id: n,
            hostname: format!("h{n}"),
            role,
            availability: Availability::Active,
            labels: Default::default(),
            addr: format!("127.0.0.{n}:4000").parse().unwrap(),
            created_at: 0,
            updated_at: 0,
        }
    }

    fn store(nodes: &[(u64, Role)]) -> Store {
        let mut s = Store::default();
        for (n, r) in nodes {
            let nd = node(*n, *r);
            s.nodes.insert(nd.id.clone(), nd);
        }
        s
    }

    fn live(ids: &[u64]) -> BTreeSet<NodeId> {
        ids.iter().map(|n| NodeId::from(format!("node{n:021}"))).collect()
    }

    use Role::{Manager as M, Worker as W};

    #[test]
    fn promote_needs_a_live_worker() {
        let s = store(&[(1, M), (2, W), (3, W)]);
        assert_eq!(check_promote(&s, &live(&[1, 2]), "h2").unwrap().raft_id, 2);
        assert_eq!(check_promote(&s, &live(&[1, 2]), "h1"), Err(RoleError::AlreadyManager("h1".into())));
        assert_eq!(check_promote(&s, &live(&[1, 2]), "h3"), Err(RoleError::Down("h3".into())));
        assert_eq!(check_promote(&s, &live(&[1]), "nope"), Err(RoleError::NoSuchNode("nope".into())));
    }

    #[test]
    fn demote_keeps_a_quorum_and_a_manager() {
        let one = store(&[(1, M), (2, W)]);
        assert_eq!(check_demote(&one, &[1], &live(&[1, 2]), "h1"), Err(RoleError::LastManager("h1".into())));
        assert_eq!(check_demote(&one, &[1], &live(&[1, 2]), "h2"), Err(RoleError::AlreadyWorker("h2".into())));

        let three = store(&[(1, M), (2, M), (3, M)]);
        let all = live(&[1, 2, 3]);
        assert!(check_demote(&three, &[1, 2, 3], &all, "h3").is_ok());
        // 3 down: demoting 2 leaves {1, 3} with one reachable, two needed.
        let err = check_demote(&three, &[1, 2, 3], &live(&[1, 2]), "h2").unwrap_err();
        assert_eq!(err, RoleError::WouldLoseQuorum { hostname: "h2".into(), reachable: 1, after: 2, needed: 2 });
        assert!(err.to_string().contains("would lose quorum"), "{err}");
        // Demoting the unreachable one itself is what restores health.
        assert!(check_demote(&three, &[1, 2, 3], &live(&[1, 2]), "h3").is_ok());
    }

    fn raft(leader: u64, voters: &[u64], learners: &[u64], caught_up: &[u64]) -> RaftStatus {
        RaftStatus {
            raft_id: leader,
            leader_id: leader,
            is_leader: true,
            voters: voters.to_vec(),
            learners: learners.to_vec(),
            caught_up: caught_up.to_vec(),
            ..Default::default()
        }
    }

    #[test]
    fn membership_follows_roles_one_step_at_a_time() {
        use MembershipStep::*;
        let all = live(&[1, 2, 3]);
        // Promoted in the store: a learner first, a voter once caught up and alive.
        let s = store(&[(1, M), (2, M), (3, W)]);
        assert_eq!(plan_membership(&s, &raft(1, &[1], &[], &[]), &all), Some(AddLearner(2)));
        assert_eq!(plan_membership(&s, &raft(1, &[1], &[2], &[]), &all), None);
        assert_eq!(plan_membership(&s, &raft(1, &[1], &[2], &[2]), &live(&[1])), None);
        assert_eq!(plan_membership(&s, &raft(1, &[1], &[2], &[2]), &all), Some(Promote(2)));
        assert_eq!(plan_membership(&s, &raft(1, &[1, 2], &[], &[]), &all), None);
        // Demoted: removed; additions come first.
        let s = store(&[(1, M), (2, W), (3, M)]);
        assert_eq!(plan_membership(&s, &raft(1, &[1, 2], &[], &[]), &all), Some(AddLearner(3)));
        assert_eq!(plan_membership(&s, &raft(1, &[1, 2, 3], &[], &[]), &all), Some(Remove(2)));
        assert_eq!(plan_membership(&s, &raft(1, &[1, 3], &[2], &[]), &all), Some(Remove(2)));
        // The leader demoted: it hands over to a live manager first.
        let s = store(&[(1, W), (2, M), (3, M)]);
        assert_eq!(plan_membership(&s, &raft(1, &[1, 2, 3], &[], &[]), &live(&[1, 3])), Some(TransferTo(3)));
        assert_eq!(plan_membership(&s, &raft(2, &[1, 2, 3], &[], &[]), &all), Some(Remove(1)));
        // A removed node's voter goes too; the last voter never does.
        let s = store(&[(1, M)]);
        assert_eq!(plan_membership(&s, &raft(1, &[1, 9], &[], &[]), &all), Some(Remove(9)));
        let s = store(&[(1, W)]);
        assert_eq!(plan_membership(&s, &raft(1, &[1], &[], &[]), &all), None);
    }

    #[test]
    fn steps_are_confirmed_from_the_applied_configuration() {
        use MembershipStep::*;
        assert!(AddLearner(2).done(&raft(1, &[1], &[2], &[])));
        assert!(!Promote(2).done(&raft(1, &[1], &[2], &[])));
        assert!(Promote(2).done(&raft(1, &[1, 2], &[], &[])));
        assert!(!Remove(2).done(&raft(1, &[1], &[2], &[])));
        assert!(Remove(2).done(&raft(1, &[1], &[], &[])));
        assert!(!TransferTo(2).done(&raft(1, &[1, 2], &[], &[])));
    }
}
