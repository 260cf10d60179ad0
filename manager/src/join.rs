//! Admitting a node: the token decides its role; the cluster CA signs the
//! node's certificate from its CSR; the node is committed to the store (and,
//! for a manager, added as a raft voter) before it is told its identity.

use std::net::SocketAddr;

use actix::Addr;
use common::node::{Node, Role};
use common::time::now_ms;
use common::wire::{Frame, JoinAccepted, PROTOCOL_VERSION};
use common::NodeId;
use rand::Rng;
use worker::node::net::{self, Conn};
use worker::node::tls::Fingerprint;

use crate::raft::{Propose, RaftLog, SharedStore};
use crate::store::{Command, Store};

/// Which role a token grants, if any.
pub fn role_for_token(store: &Store, token: &str) -> Option<Role> {
    let c = &store.cluster;
    if c.id.is_empty() {
        return None;
    }
    if constant_time_eq(token.as_bytes(), c.worker_token.as_bytes()) {
        Some(Role::Worker)
    } else if constant_time_eq(token.as_bytes(), c.manager_token.as_bytes()) {
        Some(Role::Manager)
    } else {
        None
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A token like Swarm's: `SHTKN-1-<CA fingerprint>-<role secret>`.
pub fn new_token(ca: Fingerprint) -> String {
    crate::ca::new_token(ca).to_string()
}

pub fn new_raft_id() -> u64 {
    rand::thread_rng().gen_range(1..u64::MAX)
}

#[allow(clippy::too_many_arguments)] // the fields of Hello::Join and the manager's handles
pub async fn handle_join(
    mut conn: Conn,
    peer: SocketAddr,
    token: String,
    hostname: String,
    advertise_addr: SocketAddr,
    protocol: u32,
    csr: Vec<u8>,
    store: SharedStore,
    raft: Addr<RaftLog>,
) -> Result<(), net::NetError> {
    let refuse = |reason: String| Frame::Refused { reason };
    if protocol != PROTOCOL_VERSION {
        let why = format!("protocol version {protocol} is not supported (this manager speaks {PROTOCOL_VERSION})");
        tracing::warn!(%peer, %hostname, "join refused: {why}");
        return net::send(&mut conn, refuse(why)).await;
    }
    let (role, cluster_id, ca, gossip_keys, lifetime) = {
        let s = store.read();
        let c = &s.cluster;
        (role_for_token(&s, &token), c.id.clone(), c.ca.clone(), c.gossip_keys.clone(), c.cert_expiry())
    };
    let Some(role) = role else {
        tracing::warn!(%peer, %hostname, "join refused: invalid join token");
        return net::send(&mut conn, refuse("invalid join token".into())).await;
    };
    let id = NodeId::random();
    let certificate = match ca.sign(&csr, &id, role, lifetime) {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(%peer, %hostname, error = %e, "join refused: cannot issue a certificate");
            return net::send(&mut conn, refuse(format!("cannot issue a certificate: {e}"))).await;
        }
    };
    let now = now_ms();
    let node = Node {
        id,
        raft_id: new_raft_id(),
        hostname: hostname.clone(),
        role,
        availability: Default::default(),
        labels: Default::default(),
        addr: advertise_addr,
        created_at: now,
        updated_at: now,
    };
    let proposed = raft.send(Propose(Command::AddNode(node.clone()))).await;
    if let Err(e) = flatten(proposed) {
        tracing::warn!(%peer, %hostname, error = %e, "join failed");
        return net::send(&mut conn, refuse(format!("cannot admit the node: {e}"))).await;
    }
    // A manager's raft membership follows from its role in the store: the
    // leader's RoleManager adds it as a learner, then a voter once it has
    // caught up (so that a joining manager never stalls commits).
    tracing::info!(node = %node.id, %hostname, %role, addr = %advertise_addr, "node joined");
    let accepted = JoinAccepted {
        node_id: node.id,
        raft_id: node.raft_id,
        role,
        cluster_id,
        managers: store.read().manager_peers(),
        certificate,
        ca_certificate: ca.cert_pem,
        gossip_keys,
    };
    net::send(&mut conn, Frame::JoinAccepted(accepted)).await
}

pub fn flatten<E: std::fmt::Display>(r: Result<Result<(), crate::raft::ProposeError>, E>) -> Result<(), String> {
    match r {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(e) => Err(format!("raft log unreachable: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use worker::node::tls::JoinToken;

    #[test]
    fn tokens_decide_roles() {
        let mut s = Store::default();
        assert_eq!(role_for_token(&s, ""), None, "uninitialised cluster admits nobody");
        let ca = crate::ca::ClusterCa::generate("c").unwrap();
        let fp = ca.fingerprint().unwrap();
        s.cluster.id = "c".into();
        s.cluster.worker_token = new_token(fp);
        s.cluster.manager_token = new_token(fp);
        assert_ne!(s.cluster.worker_token, s.cluster.manager_token);
        assert!(s.cluster.worker_token.starts_with(&format!("SHTKN-1-{fp}-")));
        assert_eq!(s.cluster.worker_token.parse::<JoinToken>().unwrap().ca, fp);
        assert_eq!(role_for_token(&s, &s.cluster.worker_token.clone()), Some(Role::Worker));
        assert_eq!(role_for_token(&s, &s.cluster.manager_token.clone()), Some(Role::Manager));
        assert_eq!(role_for_token(&s, &format!("SHTKN-1-{fp}-wrong")), None);
    }

    #[test]
    fn a_rotated_token_admits_no_one() {
        let mut s = Store::default();
        let fp = crate::ca::ClusterCa::generate("c").unwrap().fingerprint().unwrap();
        s.cluster.id = "c".into();
        s.cluster.worker_token = new_token(fp);
        s.cluster.manager_token = new_token(fp);
        let (old, manager) = (s.cluster.worker_token.clone(), s.cluster.manager_token.clone());
        let new = new_token(fp);
        s.apply(Command::RotateJoinToken { role: Role::Worker, token: new.clone() }).unwrap();
        assert_eq!(role_for_token(&s, &old), None);
        assert_eq!(role_for_token(&s, &new), Some(Role::Worker));
        assert_eq!(role_for_token(&s, &manager), Some(Role::Manager), "the other role's token still works");
    }
}
