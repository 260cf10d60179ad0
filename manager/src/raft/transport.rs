//! Raft messages between managers over the cluster port: one outgoing
//! stream per peer (a `Hello::Raft` connection), addresses from the store.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use common::wire::{Frame, Hello, PeerInfo};
use common::NodeId;
use parking_lot::RwLock;
use tokio::sync::mpsc;
use worker::node::net;
use worker::node::tls::Tls;

use crate::store::Store;

/// Frames queued per peer before new ones are dropped (raft resends).
const QUEUE: usize = 4096;

pub struct Transport {
    node_id: NodeId,
    raft_id: u64,
    /// Peers learned outside the store (at join, before catching up).
    seeds: Arc<RwLock<HashMap<u64, SocketAddr>>>,
    peers: HashMap<u64, mpsc::Sender<Frame>>,
    tls: Tls,
}

impl Transport {
    pub fn new(node_id: NodeId, raft_id: u64, seeds: &[PeerInfo], tls: Tls) -> Self {
        let seeds = seeds.iter().map(|p| (p.raft_id, p.addr)).collect();
        Transport { node_id, raft_id, seeds: Arc::new(RwLock::new(seeds)), peers: HashMap::new(), tls }
    }

    /// Queues a message for `to`; false when it had to be dropped.
    pub fn send(&mut self, to: u64, bytes: Vec<u8>, store: &Arc<RwLock<Store>>) -> bool {
        let tx = self.peers.entry(to).or_insert_with(|| {
            let (tx, rx) = mpsc::channel(QUEUE);
            let store = store.clone();
            let seeds = self.seeds.clone();
            let lookup = move || {
                let from_store = store.read().addr_of_raft_id(to);
                from_store.or_else(|| seeds.read().get(&to).copied())
            };
            net::spawn_sender(
                self.tls.clone(),
                lookup,
                Hello::Raft { from: self.node_id.clone(), raft_id: self.raft_id },
                rx,
            );
            tx
        });
        tx.try_send(Frame::Raft(bytes)).is_ok()
    }
}

/// Reads raft frames from an accepted `Hello::Raft` connection into the log.
pub async fn serve_peer(mut conn: net::Conn, raft: actix::Addr<super::RaftLog>) -> Result<(), net::NetError> {
    net::send(&mut conn, Frame::Welcome).await?;
    loop {
        match net::recv(&mut conn).await? {
            Frame::Raft(bytes) => raft.do_send(super::Step(bytes)),
            Frame::Heartbeat => {}
            other => {
                return Err(net::NetError::Unexpected(format!("{other:?}").chars().take(60).collect()));
            }
        }
    }
}
