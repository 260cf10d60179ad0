use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::Instant;

use common::gossip_key::GossipKeyRing;
use common::node::Role;
use common::NodeId;
use worker::node::membership::{self, fact, GossipKeys, MembershipConfig};
use worker::node::tls::Tls;

use super::*;
use crate::control::ControlLoop;
use crate::raft::{Propose, RaftHandles, RaftLog, RaftOptions};
use crate::store::ClusterInfo;

fn ctx_decide(core: &mut FirstGossipKey, store: &Store, now: Millis) -> (Vec<Command>, Option<Millis>) {
    let live = BTreeSet::new();
    core.decide(store, &LoopCtx { live: &live, leader_since: 0 }, now)
}

/// A store as a shoal from before sealed gossip left it: no ring.
fn old_store() -> Store {
    let mut s = Store::default();
    let info = ClusterInfo { id: "c".into(), ..Default::default() };
    s.apply(Command::InitCluster(Box::new(info))).unwrap();
    assert!(s.cluster.gossip_keys.is_empty());
    s
}

#[test]
fn an_empty_ring_gets_one_key_and_a_failed_proposal_is_retried_later_each_time() {
    let mut core = FirstGossipKey::with_keys(|| [9; KEY_LEN]);
    // Not initialised yet: InitCluster brings the ring.
    assert_eq!(ctx_decide(&mut core, &Store::default(), 0), (vec![], None));

    // From a snapshot of an old cluster, as a restarted leader reads it.
    let old = Store::from_snapshot(&old_store().to_snapshot()).unwrap();
    let t = 1_000_000;
    let first = vec![Command::RotateGossipKey { key: [9; KEY_LEN], at: t }];
    assert_eq!(ctx_decide(&mut core, &old, t), (first, None));
    // Still empty: the proposal failed. Not again at once, but after 0.5 s,
    // then 1 s, …
    assert_eq!(ctx_decide(&mut core, &old, t + 1), (vec![], Some(t + 500)));
    assert_eq!(ctx_decide(&mut core, &old, t + 500).0.len(), 1);
    assert_eq!(ctx_decide(&mut core, &old, t + 501), (vec![], Some(t + 1_500)));
    assert_eq!(ctx_decide(&mut core, &old, t + 1_500).0.len(), 1);
    assert_eq!(ctx_decide(&mut core, &old, t + 1_501), (vec![], Some(t + 3_500)));

    // Applied: the ring holds the key, in use at once; nothing more to do.
    let mut s = old.clone();
    s.apply(Command::RotateGossipKey { key: [9; KEY_LEN], at: t + 3_500 }).unwrap();
    assert_eq!(s.cluster.gossip_keys.sealing_key(t + 3_500).map(|k| k.key), Some([9; KEY_LEN]));
    assert_eq!(ctx_decide(&mut core, &s, t + 3_501), (vec![], None));
    // A ring emptied again later (however that happened) gets a key at once.
    assert_eq!(ctx_decide(&mut core, &old, t + 3_502).0.len(), 1);
}

/// A node of the test cluster on a free loopback UDP port.
fn gossip_config(id: &str, cluster_id: &str, seeds: &[SocketAddr]) -> MembershipConfig {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind loopback");
    MembershipConfig {
        node_id: NodeId::from(id),
        cluster_id: cluster_id.into(),
        gossip_addr: socket.local_addr().expect("local addr"),
        seeds: seeds.to_vec(),
        generation: 1,
        facts: BTreeMap::from([(fact::ROLE.to_string(), "worker".to_string())]),
    }
}

/// The leader's path end to end in one process: a raft log holding an old
/// cluster (no ring), the loop that [`crate::Manager::start`] runs, and two
/// nodes that start with no key (as nodes restarted from old data dirs do):
/// they do not gossip until they are handed the ring the leader wrote, as
/// their sessions hand it, and then they meet.
#[actix::test]
async fn the_leader_gives_an_old_cluster_a_key_and_its_nodes_then_gossip() {
    let dir = tempfile::tempdir().unwrap();
    let ca = crate::ca::ClusterCa::generate("c").unwrap();
    let me = NodeId::random();
    let tls = Tls::new(&ca.issue(&me, Role::Manager, worker::node::tls::DEFAULT_CERT_EXPIRY).unwrap()).unwrap();
    let opts = RaftOptions {
        raft_id: 1,
        bootstrap: true,
        compact_every: 1_000,
        events: crate::events::EventHub::new(),
        quota: None,
        key: crate::raft::storage::keys::DataKey::for_tests(),
    };
    let transport = crate::raft::transport::Transport::new(me, 1, &[], tls);
    let RaftHandles { addr, store, status, applied } = RaftLog::start(dir.path(), opts, transport).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut leader = status.clone();
    tokio::time::timeout_at(deadline.into(), leader.wait_for(|s| s.is_leader)).await.unwrap().unwrap();
    let info = ClusterInfo { id: "c".into(), ..Default::default() };
    addr.send(Propose(Command::InitCluster(Box::new(info)))).await.unwrap().unwrap();
    assert!(store.read().cluster.gossip_keys.is_empty());

    let (a_keys, b_keys) = (GossipKeys::new(GossipKeyRing::default()), GossipKeys::new(GossipKeyRing::default()));
    let a_config = gossip_config("a", "c", &[]);
    let a_addr = a_config.gossip_addr;
    let (_a, mut a_live) = membership::start(a_config, a_keys.clone()).await.unwrap();
    let (_b, _b_live) = membership::start(gossip_config("b", "c", &[a_addr]), b_keys.clone()).await.unwrap();

    let (_live_tx, live) = tokio::sync::watch::channel(BTreeSet::new());
    ControlLoop::start(FirstGossipKey::default(), addr.clone(), store.clone(), status, applied.clone(), live);
    let mut applied = applied;
    let ring = loop {
        let ring = store.read().cluster.gossip_keys.clone();
        if !ring.is_empty() {
            break ring;
        }
        tokio::time::timeout_at(deadline.into(), applied.changed()).await.expect("no gossip key proposed").unwrap();
    };
    assert_eq!(ring.current.as_ref().map(|k| k.id), Some(1));
    // Without a key, a has heard from nobody.
    assert_eq!(a_live.borrow().nodes.keys().map(NodeId::as_str).collect::<Vec<_>>(), ["a"]);

    a_keys.set(ring.clone());
    b_keys.set(ring);
    let met = a_live.wait_for(|l| l.nodes.keys().map(NodeId::as_str).eq(["a", "b"]));
    tokio::time::timeout_at(deadline.into(), met).await.expect("a and b did not meet").unwrap();
}
