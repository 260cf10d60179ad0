//! Which nodes count as live: what `node ls` calls Ready, what the
//! orchestrator and the scheduler treat as up, and what the events stream
//! reports as `node up` / `node down`.
//!
//! Gossip alone is not enough: gossip is relayed, so a worker cut off from
//! every manager while it still reaches another worker stays alive in
//! gossip, though it no longer hears the leader and nobody replaces its
//! tasks. So on the leader a node the store knows is live only if gossip
//! sees it **and** it holds a session with the leader's dispatcher, as
//! [`session_deadline`] says: heard from within [`SESSION_TIMEOUT_MS`] (the
//! timeout both ends of a session already use; a node answers every
//! heartbeat), with a grace of [`SESSION_GRACE_MS`] after this manager
//! became the leader and after the node joined, so that a new leader does
//! not call every node down before they reconnect.
//!
//! Followers hold no sessions. They learn the leader's verdict from the
//! store: the leader writes the nodes gossip shows alive but that hold no
//! session with it ([`crate::store::Command::SetNoSession`]), and a follower
//! counts those down. So every manager's `node ls` agrees with the leader's
//! once that entry is applied (and a follower cut from the leader, whose
//! store does not move, goes by its gossip and the last verdict it has).
//!
//! Layout: [`decide`] is the pure rule; [`start`] is the task that applies
//! it whenever gossip, the store, leadership or a session changes, or a
//! grace runs out, publishes the result and, on the leader, writes the
//! sessionless nodes to the store.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use actix::Addr;
use common::time::{now_ms, Millis};
use common::NodeId;
use tokio::sync::watch;

use crate::control::LiveNodes;
use crate::dispatcher::Heard;
use crate::raft::{Propose, RaftLog, RaftStatus, SharedStore};
use crate::store::{Command, Store};

/// A node silent on its session this long counts down (the agent's
/// `SESSION_TIMEOUT`, the leader's read timeout on a session).
pub const SESSION_TIMEOUT_MS: Millis = worker::agent::SESSION_TIMEOUT.as_millis() as Millis;
/// How long a node has to open its session after this manager became the
/// leader (or after the node joined). A node of a leader that vanished
/// notices after its session timeout (15 s) and then dials the other
/// managers; this leaves room for that and a slow dial.
pub const SESSION_GRACE_MS: Millis = SESSION_TIMEOUT_MS + 5_000;
/// Looked at again at least this often (a closed session's deadline).
const RECHECK: Duration = Duration::from_millis(500);
/// Between two writes of the same sessionless set that did not apply.
const RETRY_WRITE: Duration = Duration::from_secs(1);

/// What this manager knows of sessions.
pub enum View<'a> {
    /// The leader since `since`, with when it last heard from each node.
    Leader { since: Millis, heard: &'a HashMap<NodeId, Millis> },
    /// A follower: the store's [`Store::no_session`] is the leader's word.
    Follower,
}

/// The rule's verdict.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Liveness {
    pub live: BTreeSet<NodeId>,
    /// On the leader: nodes gossip sees that count down for want of a
    /// session (what it writes to the store for the followers).
    pub no_session: BTreeSet<NodeId>,
    /// When a grace or a session deadline runs out next, on the leader.
    pub next_change: Option<Millis>,
}

/// Until when a node that gossip sees counts as live on the leader: heard
/// from on its session within [`SESSION_TIMEOUT_MS`], or within
/// [`SESSION_GRACE_MS`] of the leader taking over or of the node joining.
pub fn session_deadline(leader_since: Millis, created_at: Millis, heard: Option<Millis>) -> Millis {
    let grace = leader_since.max(created_at).saturating_add(SESSION_GRACE_MS);
    heard.map_or(grace, |h| grace.max(h.saturating_add(SESSION_TIMEOUT_MS)))
}

/// Pure: the live nodes among those `gossip` sees. Nodes the store does not
/// know (not joined yet, or removed) hold no session and go by gossip.
pub fn decide(gossip: &BTreeSet<NodeId>, store: &Store, view: &View, now: Millis) -> Liveness {
    let mut out = Liveness::default();
    for id in gossip {
        let Some(node) = store.nodes.get(id) else {
            out.live.insert(id.clone());
            continue;
        };
        match view {
            View::Follower => {
                if !store.no_session.contains(id) {
                    out.live.insert(id.clone());
                }
            }
            View::Leader { since, heard } => {
                let until = session_deadline(*since, node.created_at, heard.get(id).copied());
                if now < until {
                    out.live.insert(id.clone());
                    out.next_change = Some(out.next_change.map_or(until, |t| t.min(until)));
                } else {
                    out.no_session.insert(id.clone());
                }
            }
        }
    }
    out
}

/// Starts the task that keeps the returned watch on [`decide`]'s `live`
/// (see the module docs); `gossip` is who gossip sees alive.
pub fn start(
    gossip: LiveNodes,
    store: SharedStore,
    status: watch::Receiver<RaftStatus>,
    applied: watch::Receiver<u64>,
    heard: Heard,
    raft: Addr<RaftLog>,
) -> LiveNodes {
    let initial = gossip.borrow().clone();
    let (tx, live) = watch::channel(initial);
    let (mut gossip, mut status, mut applied) = (gossip, status, applied);
    actix::spawn(async move {
        let mut leader_since: Option<Millis> = None;
        let mut writing: Option<tokio::task::JoinHandle<()>> = None;
        let mut last_write: Option<(BTreeSet<NodeId>, Instant)> = None;
        loop {
            let now = now_ms();
            let is_leader = status.borrow_and_update().is_leader;
            leader_since = if is_leader { Some(leader_since.unwrap_or(now)) } else { None };
            let heard_now = heard.snapshot();
            let view = match leader_since {
                Some(since) => View::Leader { since, heard: &heard_now },
                None => View::Follower,
            };
            let verdict = {
                let store = store.read();
                let verdict = decide(&gossip.borrow_and_update(), &store, &view, now);
                applied.borrow_and_update();
                if is_leader && verdict.no_session != store.no_session {
                    let idle = writing.as_ref().is_none_or(|w| w.is_finished());
                    let retry = last_write
                        .as_ref()
                        .is_none_or(|(set, at)| *set != verdict.no_session || at.elapsed() >= RETRY_WRITE);
                    if idle && retry {
                        let (set, raft) = (verdict.no_session.clone(), raft.clone());
                        last_write = Some((set.clone(), Instant::now()));
                        writing = Some(actix::spawn(async move {
                            let nodes = set.len();
                            match raft.send(Propose(Command::SetNoSession(set))).await {
                                Ok(Ok(())) => tracing::debug!(nodes, "wrote the sessionless nodes"),
                                Ok(Err(e)) => tracing::debug!(nodes, error = %e, "cannot write the sessionless nodes"),
                                Err(_) => {}
                            }
                        }));
                    }
                }
                verdict
            };
            for id in verdict.no_session.iter().filter(|id| tx.borrow().contains(*id)) {
                tracing::warn!(node = %id, "node alive in gossip but without a session with the leader: down");
            }
            tx.send_if_modified(|old| std::mem::replace(old, verdict.live.clone()) != verdict.live);
            let wait = verdict
                .next_change
                .map(|at| Duration::from_millis(at.saturating_sub(now).max(1)))
                .unwrap_or(RECHECK)
                .min(RECHECK);
            tokio::select! {
                r = gossip.changed() => if r.is_err() { return },
                r = status.changed() => if r.is_err() { return },
                r = applied.changed() => if r.is_err() { return },
                _ = heard.session_opened() => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
    });
    live
}

#[cfg(test)]
mod tests {
    use super::*;
    use common::node::{Node, Role};

    const T0: Millis = 1_000_000;

    fn node(id: &str, created_at: Millis) -> Node {
        Node {
            id: id.into(),
            raft_id: 1,
            hostname: id.into(),
            role: Role::Worker,
            availability: Default::default(),
            labels: Default::default(),
            addr: "127.0.0.1:4242".parse().unwrap(),
            created_at,
            updated_at: created_at,
        }
    }

    fn store(ids: &[&str]) -> Store {
        let mut s = Store::default();
        for id in ids {
            s.nodes.insert(NodeId::from(*id), node(id, T0 - 60_000));
        }
        s
    }

    fn ids(list: &[&str]) -> BTreeSet<NodeId> {
        list.iter().map(|s| NodeId::from(*s)).collect()
    }

    fn leader(since: Millis, heard: &[(&str, Millis)], gossip: &[&str], s: &Store, now: Millis) -> Liveness {
        let heard: HashMap<NodeId, Millis> = heard.iter().map(|(n, t)| (NodeId::from(*n), *t)).collect();
        decide(&ids(gossip), s, &View::Leader { since, heard: &heard }, now)
    }

    #[test]
    fn on_the_leader_a_node_needs_gossip_and_a_session() {
        let s = store(&["a", "b", "c"]);
        let since = T0 - 60_000;
        // a heard a second ago; b last heard a session timeout and a
        // second ago (its session went silent: cut from the managers,
        // gossip relayed); c not in gossip.
        let b_heard = T0 - SESSION_TIMEOUT_MS - 1_000;
        let v = leader(since, &[("a", T0 - 1_000), ("b", b_heard), ("c", T0)], &["a", "b"], &s, T0);
        assert_eq!(v.live, ids(&["a"]));
        assert_eq!(v.no_session, ids(&["b"]), "c is down by gossip, not for want of a session");
        assert_eq!(v.next_change, Some(T0 - 1_000 + SESSION_TIMEOUT_MS), "when a's heartbeat runs out");
    }

    #[test]
    fn a_closed_session_counts_down_after_the_session_timeout() {
        let s = store(&["a"]);
        let last = T0 - 60_000 + 30_000;
        let at = |now| leader(T0 - 60_000, &[("a", last)], &["a"], &s, now).live;
        assert_eq!(at(last + SESSION_TIMEOUT_MS - 1), ids(&["a"]), "a reconnect within the timeout is no outage");
        assert_eq!(at(last + SESSION_TIMEOUT_MS), ids(&[]));
    }

    #[test]
    fn a_new_leader_gives_every_node_a_grace_to_open_its_session() {
        let s = store(&["a", "b"]);
        // Heard by nobody yet (or only by the previous term of this
        // manager, long ago): live until the grace ends.
        let v = leader(T0, &[("b", T0 - 50_000)], &["a", "b"], &s, T0 + SESSION_GRACE_MS - 1);
        assert_eq!(v.live, ids(&["a", "b"]));
        assert_eq!(v.next_change, Some(T0 + SESSION_GRACE_MS));
        let v = leader(T0, &[("b", T0 + 9_000)], &["a", "b"], &s, T0 + SESSION_GRACE_MS);
        assert_eq!(v.live, ids(&["b"]), "b opened its session in time");
        assert_eq!(v.no_session, ids(&["a"]));
    }

    #[test]
    fn a_node_that_just_joined_has_the_grace_too() {
        let mut s = store(&["old"]);
        s.nodes.insert("new".into(), node("new", T0));
        let v = leader(T0 - 60_000, &[("old", T0)], &["old", "new"], &s, T0 + 1_000);
        assert_eq!(v.live, ids(&["old", "new"]));
        assert_eq!(session_deadline(T0 - 60_000, T0, None), T0 + SESSION_GRACE_MS);
    }

    #[test]
    fn nodes_the_store_does_not_know_go_by_gossip() {
        let s = store(&["a"]);
        let v = leader(T0 - 60_000, &[], &["a", "joining"], &s, T0);
        assert_eq!(v.live, ids(&["joining"]));
        assert_eq!(v.no_session, ids(&["a"]));
    }

    #[test]
    fn a_follower_takes_the_leaders_word_from_the_store() {
        let mut s = store(&["a", "b", "c"]);
        s.apply(Command::SetNoSession(ids(&["b"]))).unwrap();
        let v = decide(&ids(&["a", "b"]), &s, &View::Follower, T0);
        assert_eq!(v.live, ids(&["a"]), "b: the leader has no session with it; c: gossip does not see it");
        assert_eq!(v.no_session, ids(&[]), "a follower writes nothing");
        assert_eq!(v.next_change, None);
    }
}
