//! A stand-in for gossip, for liveness only, where many nodes share one
//! process (`shoal sim`): real chitchat among thousands of members does not
//! fit on a small machine (measured: at 100 in-process members on 2 cores
//! the failure detector marks members down all the time). A node on the
//! [`Board`] is live from when it joins the board until its guard drops.
//!
//! Only what liveness needs is kept: managers see the board's whole live
//! set (every change, as gossip would show it); a worker sees itself alone,
//! as nothing on a worker reads the others. No facts travel over it beyond
//! those a node starts with (no disk alarms, no seeds).

use std::sync::Arc;

use common::NodeId;
use parking_lot::Mutex;
use tokio::sync::watch;

use super::{LiveSet, MemberFacts};

/// The live nodes of one process, shared by its nodes.
#[derive(Clone)]
pub struct Board {
    live: watch::Sender<LiveSet>,
    /// Workers' own live sets (each holds the worker alone); kept here so
    /// that their receivers stay open.
    own: Arc<Mutex<Vec<watch::Sender<LiveSet>>>>,
}

impl Default for Board {
    fn default() -> Self {
        Board { live: watch::channel(LiveSet::default()).0, own: Arc::default() }
    }
}

/// A node's place on the board: it leaves when this drops.
pub struct OnBoard {
    live: watch::Sender<LiveSet>,
    node_id: NodeId,
}

impl Drop for OnBoard {
    fn drop(&mut self) {
        let id = &self.node_id;
        self.live.send_if_modified(|s| s.nodes.remove(id).is_some());
    }
}

impl Board {
    pub fn new() -> Self {
        Board::default()
    }

    /// Puts the node on the board; returns the live set it should see.
    pub fn join(&self, node_id: NodeId, member: MemberFacts, manager: bool) -> (OnBoard, watch::Receiver<LiveSet>) {
        let mut alone = LiveSet::default();
        alone.nodes.insert(node_id.clone(), member.clone());
        let id = node_id.clone();
        self.live.send_modify(|s| {
            s.nodes.insert(id, member);
        });
        let rx = match manager {
            true => self.live.subscribe(),
            false => {
                let (tx, rx) = watch::channel(alone);
                self.own.lock().push(tx);
                rx
            }
        };
        (OnBoard { live: self.live.clone(), node_id }, rx)
    }

    /// How many nodes are on the board.
    pub fn len(&self) -> usize {
        self.live.borrow().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(port: u16) -> MemberFacts {
        MemberFacts { facts: Default::default(), gossip_addr: ([127, 0, 0, 1], port).into(), generation: 1 }
    }

    #[test]
    fn managers_see_every_node_on_the_board_and_a_node_leaves_with_its_guard() {
        let board = Board::new();
        let (m, managers_view) = board.join(NodeId::from("m"), member(1), true);
        let (w, workers_view) = board.join(NodeId::from("w"), member(2), false);
        assert_eq!(managers_view.borrow().nodes.keys().map(|k| k.as_str()).collect::<Vec<_>>(), ["m", "w"]);
        assert_eq!(workers_view.borrow().nodes.keys().map(|k| k.as_str()).collect::<Vec<_>>(), ["w"]);
        drop(w);
        assert_eq!(managers_view.borrow().nodes.keys().map(|k| k.as_str()).collect::<Vec<_>>(), ["m"]);
        assert_eq!(board.len(), 1);
        drop(m);
        assert!(board.is_empty());
        assert!(workers_view.has_changed().is_ok(), "a worker's view stays open");
    }
}
