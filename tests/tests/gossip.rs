//! Sealed gossip (issue 16) against real `shoal daemon` processes: a
//! forged claim changes nothing, a replayed datagram is dropped, a removed
//! node can no longer gossip, and a key rotation keeps the cluster whole.
//! Each drop is counted in `shoal_gossip_dropped_total{reason}`.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::gossip_key::GossipKeyRing;
use tests::{require_docker, wait_for, Cluster, ClusterSpec, CLUSTER_PORT};
use worker::node::membership::{fact, start_with_transport, GossipKeys, MembershipConfig, SealedTransport};
use worker::node::metrics::Metrics;

const READY: Duration = Duration::from_secs(60);
const IMPOSTOR_GENERATION: u64 = 7_777_777_777_777_777;

fn metrics(c: &Cluster, i: usize) -> Result<String, String> {
    let mut s = TcpStream::connect(c.api_addr(i)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(10))).map_err(|e| e.to_string())?;
    s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").map_err(|e| e.to_string())?;
    let mut out = String::new();
    s.read_to_string(&mut out).map_err(|e| e.to_string())?;
    Ok(out)
}

/// One series of node i's `/metrics` (0 when absent).
fn series(c: &Cluster, i: usize, name: &str) -> u64 {
    let text = metrics(c, i).unwrap_or_else(|e| panic!("node{i} /metrics: {e}"));
    text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse::<f64>().ok()).map_or(0, |v| v as u64)
}

fn dropped(c: &Cluster, i: usize, reason: &str) -> u64 {
    series(c, i, &format!("shoal_gossip_dropped_total{{reason=\"{reason}\"}}"))
}

fn live_members(c: &Cluster, i: usize) -> u64 {
    series(c, i, "shoal_gossip_live_members")
}

fn gossip_addr(c: &Cluster, i: usize) -> SocketAddr {
    SocketAddr::from((c.addr(i), 4242))
}

fn cluster_id(c: &Cluster) -> String {
    let state = std::fs::read_to_string(c.data_dir(1).join("node.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&state).unwrap();
    v["cluster_id"].as_str().unwrap().to_string()
}

/// A node that gossips as node 1 (the leader) from another address, with a
/// newer generation and the leader's facts, sealed with a key of the right
/// id but the wrong bytes. Runs until the returned sender is dropped.
fn impostor(c: &Cluster, seeds: Vec<SocketAddr>) -> std::sync::mpsc::Sender<()> {
    let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
    let leader = c.node_id(1);
    let config = MembershipConfig {
        node_id: leader.as_str().into(),
        cluster_id: cluster_id(c),
        gossip_addr: SocketAddr::from(([127, 0, c.subnet(), 200], 4242)),
        seeds,
        generation: IMPOSTOR_GENERATION,
        facts: BTreeMap::from([
            (fact::ROLE.to_string(), "manager".to_string()),
            (fact::HOSTNAME.to_string(), c.hostname(1)),
            (fact::CLUSTER_ADDR.to_string(), "127.0.0.1:1".to_string()),
        ]),
    };
    let transport = SealedTransport {
        // GossipKeyRing::first() has key id 1, as the cluster's first key.
        keys: GossipKeys::new(GossipKeyRing::first()),
        cluster_id: config.cluster_id.clone(),
        node_id: leader,
        dropped: Metrics::new().counter_family("impostor_dropped", "test", "reason"),
    };
    std::thread::spawn(move || {
        actix::System::new().block_on(async move {
            let started = start_with_transport(config, Arc::new(transport)).await;
            let _running = started.expect("the impostor's gossip starts");
            let _ = tokio::task::spawn_blocking(move || stop_rx.recv()).await;
        })
    });
    stop_tx
}

#[test]
fn a_forged_claim_to_be_the_leader_changes_nothing() {
    if !require_docker() {
        return;
    }
    let c = Cluster::start(ClusterSpec::new(1, 2));
    c.wait_nodes_ready(&[1, 2, 3], READY);
    wait_for(READY, "every node to see 3 members", || (1..=3).all(|i| live_members(&c, i) == 3).then_some(()));
    let before: Vec<u64> = (1..=3).map(|i| dropped(&c, i, "forged")).collect();

    let stop = impostor(&c, (1..=3).map(|i| gossip_addr(&c, i)).collect());
    wait_for(Duration::from_secs(20), "every node to drop the impostor's datagrams as forged", || {
        let now: Vec<u64> = (1..=3).map(|i| dropped(&c, i, "forged")).collect();
        if now.iter().zip(&before).all(|(n, b)| *n >= b + 3) {
            Ok(())
        } else {
            Err(format!("forged: before {before:?}, now {now:?}"))
        }
    });
    // Gossip still shows the three real nodes, node 1 leads, all Ready.
    for i in 1..=3 {
        assert_eq!(live_members(&c, i), 3, "node{i}'s live set");
    }
    assert_eq!(c.leader_seen_from(1), Ok(1), "node1 still leads");
    let st = c.node_statuses().expect("node ls");
    assert!(st.values().all(|s| s == "ready") && st.len() == 3, "{st:?}");
    // Had a datagram got through, the impostor's generation would have
    // replaced node1's (`member changed` in the log, see the membership
    // unit test `a_forged_member_claim_changes_nothing`).
    for i in 1..=3 {
        let log = std::fs::read_to_string(c.log_path(i)).unwrap();
        assert!(!log.contains(&IMPOSTOR_GENERATION.to_string()), "node{i} took the impostor's state");
    }
    drop(stop);
}

#[test]
fn a_replayed_datagram_is_dropped() {
    if !require_docker() {
        return;
    }
    let mut c = Cluster::start(ClusterSpec::new(1, 2));
    c.wait_nodes_ready(&[1, 2, 3], READY);
    wait_for(READY, "every node to see 3 members", || (1..=3).all(|i| live_members(&c, i) == 3).then_some(()));

    // With node3 stopped, its gossip address is ours: the others still send
    // to it now and then (chitchat tries dead nodes); keep one datagram.
    c.stop_node(3);
    let socket = UdpSocket::bind(gossip_addr(&c, 3)).expect("bind node3's gossip address");
    socket.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut buf = vec![0u8; 65_536];
    let (n, from) = socket.recv_from(&mut buf).expect("a datagram for node3 within 30 s");
    let captured = buf[..n].to_vec();
    let captured_at = Instant::now();
    assert!(captured.starts_with(b"SHG1"), "gossip on the wire is sealed");
    drop(socket);

    // Node3 again, started after the datagram was sent.
    std::thread::sleep(Duration::from_millis(1500).saturating_sub(captured_at.elapsed()));
    c.restart_node(3);
    c.wait_nodes_ready(&[1, 2, 3], READY);
    wait_for(READY, "node3 to see 3 members", || (live_members(&c, 3) == 3).then_some(()));

    let sender = UdpSocket::bind(SocketAddr::from(([127, 0, c.subnet(), 201], 0))).unwrap();
    // To its own destination, and to the node that did not send it.
    let other = if from == gossip_addr(&c, 1) { 2 } else { 1 };
    for i in [3, other] {
        let before = dropped(&c, i, "replayed");
        sender.send_to(&captured, gossip_addr(&c, i)).unwrap();
        wait_for(Duration::from_secs(10), &format!("node{i} to drop the replay"), || {
            let now = dropped(&c, i, "replayed");
            if now > before {
                Ok(())
            } else {
                Err(format!("replayed stays at {now}"))
            }
        });
    }
    assert_eq!(live_members(&c, 3), 3);
}

#[test]
fn a_removed_node_can_no_longer_gossip_and_a_rotation_keeps_the_rest_whole() {
    if !require_docker() {
        return;
    }
    let c = Cluster::start(ClusterSpec::new(1, 3));
    c.wait_nodes_ready(&[1, 2, 3, 4], READY);
    wait_for(READY, "every node to see 4 members", || (1..=4).all(|i| live_members(&c, i) == 4).then_some(()));

    // A rotation with nobody removed: everyone moves to the new key.
    let out = c.shoal_ok(&["gossip-key", "rotate"]);
    assert!(out.starts_with("Successfully rotated the gossip key (key 2)."), "{out}");
    let retired = Duration::from_secs(10);
    std::thread::sleep(retired);
    for i in 1..=4 {
        assert_eq!(live_members(&c, i), 4, "node{i} after a rotation");
        assert_eq!(dropped(&c, i, "unknown_key"), 0, "node{i} dropped nothing for its key");
    }

    // Before its removal node4's certificate passes every node's handshake:
    // a worker answers its session hello only that it is no manager.
    let identity = worker::node::tls::NodeIdentity::load(&c.data_dir(4).join("tls")).unwrap().unwrap();
    let tls = worker::node::tls::Tls::new(&identity).unwrap();
    let node4: common::NodeId = c.node_id(4).as_str().into();
    let hello_from_node4 = |i: usize| -> String {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let addr = SocketAddr::from((c.addr(i), CLUSTER_PORT));
        let hello = common::wire::Hello::Session { node_id: node4.clone() };
        match rt.block_on(worker::node::net::dial(&tls, addr, hello)) {
            Ok((_, frame)) => format!("answered {frame:?}"),
            Err(e) => e.to_string(),
        }
    };
    assert!(hello_from_node4(2).contains("this node is not a manager"), "{}", hello_from_node4(2));

    // node rm rotates too, and the removed node is not given the new key.
    c.shoal_ok(&["node", "rm", "--force", &c.hostname(4)]);
    // Its certificate is refused everywhere: by the manager and by workers.
    for i in 1..=3 {
        wait_for(Duration::from_secs(10), &format!("node{i} to refuse node4's certificate"), || {
            let answer = hello_from_node4(i);
            answer.contains("was removed from the cluster: its certificate is revoked").then_some(()).ok_or(answer)
        });
    }
    wait_for(Duration::from_secs(30), "node4's gossip to be refused", || {
        let (members, refused) = (live_members(&c, 4), dropped(&c, 1, "unknown_key"));
        if members == 1 && refused > 0 && (1..=3).all(|i| live_members(&c, i) == 3) {
            Ok(())
        } else {
            Err(format!("node4 sees {members} members; node1 refused {refused} of its datagrams"))
        }
    });
    c.wait_nodes_ready(&[1, 2, 3], READY);
}
