//! The actor, several nodes in one process. Gossip runs over chitchat's
//! in-memory `ChannelTransport` (no sockets, and links can be cut), except in
//! the one test that is about the production path over real UDP.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::Addr;
use chitchat::transport::ChannelTransport;
use common::NodeId;
use tokio::sync::watch;

use super::actor::AbortGossip;
use super::*;
use crate::node::metrics::{metrics, Metrics};
use common::gossip_key::{GossipKey, GossipKeyRing};

/// UDP's largest payload, the limit chitchat's `UdpTransport` has.
const UDP_MTU: usize = 65_507;

fn addr(last: u8, port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, last], port))
}

/// A gossip address on the in-memory network.
fn mem_addr(last: u8) -> SocketAddr {
    addr(last, 4242)
}

/// One in-memory network; the nodes of a test share it.
fn network() -> ChannelTransport {
    ChannelTransport::with_mtu(UDP_MTU)
}

async fn start_on(net: &ChannelTransport, config: MembershipConfig) -> (Addr<Membership>, watch::Receiver<LiveSet>) {
    start_with_transport(config, Arc::new(net.clone())).await.expect("gossip starts on the in-memory network")
}

fn config(id: &str, gossip_addr: SocketAddr, seeds: &[SocketAddr], generation: u64, role: &str) -> MembershipConfig {
    MembershipConfig {
        node_id: NodeId::from(id),
        cluster_id: "test-cluster".into(),
        gossip_addr,
        seeds: seeds.to_vec(),
        generation,
        facts: BTreeMap::from([
            (fact::ROLE.to_string(), role.to_string()),
            (fact::HOSTNAME.to_string(), format!("host-{id}")),
        ]),
    }
}

/// Waits until `pred` holds for the live set, failing after `within`.
/// Returns how long it took.
async fn wait_until(
    what: &str,
    rx: &mut watch::Receiver<LiveSet>,
    within: Duration,
    mut pred: impl FnMut(&LiveSet) -> bool,
) -> Duration {
    let t0 = Instant::now();
    let outcome = tokio::time::timeout(within, async { rx.wait_for(|live| pred(live)).await.map(|_| ()) }).await;
    match outcome {
        Ok(Ok(())) => t0.elapsed(),
        Ok(Err(_)) => panic!("{what}: live set channel closed"),
        Err(_) => panic!("{what}: not within {within:?}; last: {:?}", *rx.borrow()),
    }
}

fn ids(live: &LiveSet) -> Vec<&str> {
    live.nodes.keys().map(NodeId::as_str).collect()
}

fn restarts_of_membership() -> f64 {
    metrics()
        .render()
        .lines()
        .find_map(|l| l.strip_prefix(r#"shoal_actor_restarts_total{actor="membership"} "#))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

#[actix::test]
async fn three_nodes_converge_detect_a_stop_and_see_a_restart() {
    let net = network();
    let (a_addr, b_addr, c_addr) = (mem_addr(21), mem_addr(22), mem_addr(23));
    let t0 = Instant::now();
    let (_a, mut a_rx) = start_on(&net, config("a", a_addr, &[], 1, "manager")).await;
    let (_b, mut b_rx) = start_on(&net, config("b", b_addr, &[a_addr], 1, "worker")).await;
    let (c, mut c_rx) = start_on(&net, config("c", c_addr, &[a_addr], 1, "worker")).await;

    // Self is in the set from the start, before any gossip.
    assert_eq!(ids(&c_rx.borrow()), vec!["c"]);

    let all = |live: &LiveSet| ids(live) == ["a", "b", "c"];
    let within = Duration::from_secs(3);
    wait_until("a sees 3", &mut a_rx, within, all).await;
    wait_until("b sees 3", &mut b_rx, within, all).await;
    wait_until("c sees 3", &mut c_rx, within, all).await;
    eprintln!("converged: all three see 3 live after {:?}", t0.elapsed());

    // Facts travel.
    {
        let live = b_rx.borrow();
        let c_seen = live.get(&"c".into()).unwrap();
        assert_eq!(c_seen.get(fact::ROLE), Some("worker"));
        assert_eq!(c_seen.get(fact::HOSTNAME), Some("host-c"));
        assert_eq!(c_seen.gossip_addr, c_addr);
        assert_eq!(c_seen.generation, 1);
        assert_eq!(c_seen.facts.len(), 2, "reserved keys leak: {:?}", c_seen.facts);
        assert_eq!(live.get(&"a".into()).unwrap().get(fact::ROLE), Some("manager"));
    }

    // Stop c: the others see it gone; c's channel closes.
    let t_stop = Instant::now();
    c.send(Shutdown).await.unwrap();
    let gone = |live: &LiveSet| ids(live) == ["a", "b"];
    let within = Duration::from_secs(4);
    wait_until("a sees c gone", &mut a_rx, within, gone).await;
    wait_until("b sees c gone", &mut b_rx, within, gone).await;
    eprintln!("failure detected: c gone on a and b after {:?}", t_stop.elapsed());
    assert!(c_rx.changed().await.is_err(), "c's live set should close on shutdown");

    // c comes back on the same address with a higher generation.
    let t_restart = Instant::now();
    let (_c, mut c_rx) = start_on(&net, config("c", c_addr, &[a_addr], 2, "worker")).await;
    let back = |live: &LiveSet| ids(live) == ["a", "b", "c"] && live.get(&"c".into()).unwrap().generation == 2;
    let within = Duration::from_secs(3);
    wait_until("a sees c back", &mut a_rx, within, back).await;
    wait_until("b sees c back", &mut b_rx, within, back).await;
    wait_until("c sees all", &mut c_rx, within, back).await;
    eprintln!("rejoin: c (generation 2) seen by all after {:?}", t_restart.elapsed());
}

#[actix::test]
async fn late_seeds_facts_updates_and_cluster_isolation() {
    let net = network();
    let (a_addr, d_addr, e_addr) = (mem_addr(24), mem_addr(25), mem_addr(26));
    let (_a, mut a_rx) = start_on(&net, config("a", a_addr, &[], 1, "manager")).await;

    // e belongs to another cluster and is seeded at a: it must never join.
    let mut e_config = config("e", e_addr, &[a_addr], 1, "worker");
    e_config.cluster_id = "other-cluster".into();
    let (_e, e_rx) = start_on(&net, e_config).await;

    // d starts knowing nobody and learns a's address later.
    let (d, mut d_rx) = start_on(&net, config("d", d_addr, &[], 1, "worker")).await;
    let t0 = Instant::now();
    d.send(SetSeeds(vec![a_addr])).await.unwrap();
    let both = |live: &LiveSet| ids(live) == ["a", "d"];
    let within = Duration::from_secs(3);
    wait_until("a sees d", &mut a_rx, within, both).await;
    wait_until("d sees a", &mut d_rx, within, both).await;
    eprintln!("late seed: d joined a after {:?}", t0.elapsed());
    assert!(!a_rx.borrow().contains(&"e".into()));
    assert_eq!(ids(&e_rx.borrow()), vec!["e"]);

    // Facts change at runtime; missing keys are deleted.
    let t1 = Instant::now();
    let facts =
        BTreeMap::from([(fact::ROLE.to_string(), "worker".to_string()), (fact::READY.to_string(), "true".to_string())]);
    d.send(SetFacts(facts.clone())).await.unwrap().unwrap();
    wait_until("a sees d's new facts", &mut a_rx, within, |live| {
        live.get(&"d".into()).is_some_and(|m| m.facts == facts)
    })
    .await;
    eprintln!("fact update seen after {:?}", t1.elapsed());
    assert_eq!(d_rx.borrow().get(&"d".into()).unwrap().facts, facts);

    let reserved = BTreeMap::from([("shoal.member".to_string(), "x".to_string())]);
    let err = d.send(SetFacts(reserved)).await.unwrap().unwrap_err();
    assert!(matches!(err, MembershipError::ReservedKey(_)));

    // A late subscriber gets the current set.
    let sub = d.send(Subscribe).await.unwrap();
    assert_eq!(ids(&sub.borrow()), vec!["a", "d"]);
}

#[actix::test]
async fn dead_gossip_task_is_restarted_with_a_new_generation() {
    let net = network();
    let (a_addr, b_addr) = (mem_addr(27), mem_addr(28));
    let (_a, mut a_rx) = start_on(&net, config("a", a_addr, &[], 1, "manager")).await;
    let (b, mut b_rx) = start_on(&net, config("b", b_addr, &[a_addr], 1, "worker")).await;
    let both = |live: &LiveSet| ids(live) == ["a", "b"];
    let within = Duration::from_secs(3);
    wait_until("a sees b", &mut a_rx, within, both).await;
    wait_until("b sees a", &mut b_rx, within, both).await;
    let restarts_before = restarts_of_membership();

    let t0 = Instant::now();
    b.send(AbortGossip).await.unwrap();
    let restarted =
        |live: &LiveSet| live.get(&"b".into()).is_some_and(|m| m.generation > 1) && live.contains(&"a".into());
    let within = Duration::from_secs(4);
    wait_until("b restarted gossip", &mut b_rx, within, restarted).await;
    wait_until("a sees b's new generation", &mut a_rx, within, restarted).await;
    eprintln!("gossip restart: b back with a new generation after {:?}", t0.elapsed());
    assert!(restarts_of_membership() > restarts_before);
    // b never reported a down: a stayed in its set throughout the restart.
    assert!(b_rx.borrow().contains(&"a".into()));
}

#[actix::test]
async fn a_node_cut_off_goes_down_and_comes_back_when_its_links_heal() {
    let net = network();
    let (a_addr, b_addr, c_addr) = (mem_addr(31), mem_addr(32), mem_addr(33));
    let (_a, mut a_rx) = start_on(&net, config("a", a_addr, &[], 1, "manager")).await;
    let (_b, mut b_rx) = start_on(&net, config("b", b_addr, &[a_addr], 1, "worker")).await;
    let (_c, mut c_rx) = start_on(&net, config("c", c_addr, &[a_addr], 1, "worker")).await;
    let all = |live: &LiveSet| ids(live) == ["a", "b", "c"];
    let within = Duration::from_secs(3);
    wait_until("a sees 3", &mut a_rx, within, all).await;
    wait_until("b sees 3", &mut b_rx, within, all).await;
    wait_until("c sees 3", &mut c_rx, within, all).await;

    // One link cut: a and b still hear of each other through c.
    net.remove_link(a_addr, b_addr).await;
    let t_one = Instant::now();
    // Longer than failure detection takes (the stop above is seen in about a second).
    while t_one.elapsed() < Duration::from_secs(3) {
        assert!(all(&a_rx.borrow()), "a lost someone with one link cut: {:?}", ids(&a_rx.borrow()));
        assert!(all(&b_rx.borrow()), "b lost someone with one link cut: {:?}", ids(&b_rx.borrow()));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    net.add_link(a_addr, b_addr).await;

    // c cut off from both: each side reports the other down, while the
    // processes all keep running.
    let t_cut = Instant::now();
    net.remove_link(c_addr, a_addr).await;
    net.remove_link(c_addr, b_addr).await;
    let without_c = |live: &LiveSet| ids(live) == ["a", "b"];
    let within = Duration::from_secs(5);
    wait_until("a sees c down", &mut a_rx, within, without_c).await;
    wait_until("b sees c down", &mut b_rx, within, without_c).await;
    wait_until("c sees only itself", &mut c_rx, within, |live| ids(live) == ["c"]).await;
    eprintln!("partition: c reported down on both sides after {:?}", t_cut.elapsed());

    // The links heal: everyone is back, c with the generation it had.
    let t_heal = Instant::now();
    net.add_link(c_addr, a_addr).await;
    net.add_link(c_addr, b_addr).await;
    let healed = |live: &LiveSet| all(live) && live.get(&"c".into()).is_some_and(|m| m.generation == 1);
    wait_until("a sees c again", &mut a_rx, within, healed).await;
    wait_until("b sees c again", &mut b_rx, within, healed).await;
    wait_until("c sees all again", &mut c_rx, within, healed).await;
    eprintln!("heal: c seen by all again after {:?}", t_heal.elapsed());
}

/// The production path: `start` over real UDP on loopback.
#[actix::test]
async fn over_udp_nodes_meet_and_a_taken_port_is_a_retryable_start_error() {
    /// A free UDP port on 127.0.0.`last`.
    fn free_addr(last: u8) -> SocketAddr {
        let socket = std::net::UdpSocket::bind(addr(last, 0)).expect("bind loopback");
        socket.local_addr().expect("local addr")
    }

    let (a_addr, b_addr) = (free_addr(29), free_addr(30));
    let keys = GossipKeys::new(GossipKeyRing::first());
    let (_a, mut a_rx) = start(config("a", a_addr, &[], 1, "manager"), keys.clone()).await.unwrap();
    let (_b, mut b_rx) = start(config("b", b_addr, &[a_addr], 1, "worker"), keys.clone()).await.unwrap();
    let both = |live: &LiveSet| ids(live) == ["a", "b"];
    let within = Duration::from_secs(3);
    wait_until("a sees b over udp", &mut a_rx, within, both).await;
    wait_until("b sees a over udp", &mut b_rx, within, both).await;
    assert_eq!(b_rx.borrow().get(&"a".into()).map(|m| m.gossip_addr), Some(a_addr));

    let err = match start(config("x", a_addr, &[], 1, "worker"), keys).await {
        Ok(_) => panic!("a second node started on {a_addr}/udp, which a holds"),
        Err(err) => err,
    };
    assert!(err.is_retryable());
    assert!(
        err.to_string().starts_with(&format!("gossip failed to start on {a_addr}: failed to bind to {a_addr}/UDP")),
        "{err}"
    );
}

/// A free UDP address on 127.0.0.`last`.
fn free_udp(last: u8) -> SocketAddr {
    let socket = std::net::UdpSocket::bind(addr(last, 0)).expect("bind loopback");
    socket.local_addr().expect("local addr")
}

fn sealed(ring: &GossipKeyRing, id: &str, dropped: &crate::node::metrics::CounterFamily) -> SealedTransport {
    SealedTransport {
        keys: GossipKeys::new(ring.clone()),
        cluster_id: "test-cluster".into(),
        node_id: id.into(),
        dropped: dropped.clone(),
    }
}

/// An impostor gossiping as `b` (a higher generation, its own address):
/// with the cluster's key it takes over `b` in `a`'s view (so the test can
/// fail); with another key under the same id, `a` sees nothing of it and
/// counts its datagrams as forged.
#[actix::test]
async fn a_forged_member_claim_changes_nothing() {
    use chitchat::transport::Transport;
    let ring = GossipKeyRing::first();
    let wrong = GossipKeyRing { current: Some(GossipKey::generate(ring.current.as_ref().unwrap().id)), ..ring.clone() };
    for (key, takes_over) in [(&ring, true), (&wrong, false)] {
        let registry = Metrics::new();
        let dropped = registry.counter_family("dropped", "test", "reason");
        let (a_addr, b_addr, x_addr) = (free_udp(33), free_udp(34), free_udp(35));
        let a = start_with_transport(config("a", a_addr, &[], 1, "manager"), Arc::new(sealed(&ring, "a", &dropped)));
        let (_a, mut a_rx) = a.await.unwrap();
        let b =
            start_with_transport(config("b", b_addr, &[a_addr], 1, "worker"), Arc::new(sealed(&ring, "b", &dropped)));
        let (_b, _b_rx) = b.await.unwrap();
        let within = Duration::from_secs(3);
        wait_until("a sees b", &mut a_rx, within, |l| ids(l) == ["a", "b"]).await;

        let forger = sealed(key, "b", &dropped);
        let (_x, _x_rx) =
            start_with_transport(config("b", x_addr, &[a_addr], 1 << 60, "manager"), Arc::new(forger)).await.unwrap();
        let b_in_a = |l: &LiveSet| l.get(&"b".into()).map(|m| m.gossip_addr);
        if takes_over {
            wait_until("the impostor takes over b", &mut a_rx, within, |l| b_in_a(l) == Some(x_addr)).await;
            assert_eq!(dropped.get("forged"), 0);
        } else {
            let deadline = Instant::now() + within;
            while dropped.get("forged") < 5 {
                assert!(Instant::now() < deadline, "the forged datagrams were not seen");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            assert_eq!(b_in_a(&a_rx.borrow()), Some(b_addr), "b is still b");
            assert_eq!(ids(&a_rx.borrow()), ["a", "b"]);
            // The impostor's socket is ours: it opened.
            assert!(sealed(key, "b", &dropped).open(free_udp(36)).await.is_ok());
        }
    }
}

/// The transport itself over real UDP: a datagram is taken once, a second
/// copy is dropped as replayed; one sealed with another key, one in clear
/// and one for another address are dropped and counted.
#[actix::test]
async fn the_sealed_transport_takes_a_datagram_once() {
    use chitchat::transport::{Socket, Transport, UdpSocket};
    use chitchat::{ChitchatEnvelope, ChitchatMessage, ProtocolVersion};
    let registry = Metrics::new();
    let dropped = registry.counter_family("dropped", "test", "reason");
    let ring = GossipKeyRing::first();
    let key = ring.current.clone().unwrap();
    let mut a = sealed(&ring, "a", &dropped).open(free_udp(37)).await.unwrap();
    let mut b = sealed(&ring, "b", &dropped).open(free_udp(38)).await.unwrap();
    let b_addr = b.local_addr().unwrap();
    let envelope = || ChitchatEnvelope { version: ProtocolVersion::V1, message: ChitchatMessage::BadCluster };

    // The real path.
    a.send(b_addr, envelope()).await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(2), b.recv()).await.unwrap().unwrap();
    assert_eq!((got.from_addr, got.envelope), (a.local_addr().unwrap(), envelope()));

    // chitchat's bytes of the envelope, to seal by hand.
    let mut codec = UdpSocket::open(addr(1, 0)).await.unwrap();
    let raw = tokio::net::UdpSocket::bind(addr(39, 0)).await.unwrap();
    codec.send(raw.local_addr().unwrap(), envelope()).await.unwrap();
    let mut buf = vec![0u8; 65_536];
    let n = raw.recv(&mut buf).await.unwrap();
    let plain = buf[..n].to_vec();

    let now = common::time::now_ms();
    let once = super::datagram::seal(&key, "test-cluster", "x", b_addr, now * 1000, &plain);
    let forged =
        super::datagram::seal(&GossipKey::generate(key.id), "test-cluster", "x", b_addr, now * 1000 + 1, &plain);
    let elsewhere = super::datagram::seal(&key, "test-cluster", "x", addr(9, 9), now * 1000 + 2, &plain);
    for d in [&once, &once, &forged, &plain, &elsewhere] {
        raw.send_to(d, b_addr).await.unwrap();
    }
    let got = tokio::time::timeout(Duration::from_secs(2), b.recv()).await.unwrap().unwrap();
    assert_eq!((got.from_addr, got.envelope), (raw.local_addr().unwrap(), envelope()));
    assert!(tokio::time::timeout(Duration::from_millis(300), b.recv()).await.is_err(), "nothing else is taken");
    let counts = ["replayed", "forged", "unsealed"].map(|r| dropped.get(r));
    assert_eq!(counts, [2, 1, 1], "replayed (the copy, and the one for another address), forged, unsealed");
}
