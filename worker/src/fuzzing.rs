//! Entry points for the fuzz targets in `tests/fuzz` and their corpus
//! replay test; not an API. Each runs the code a node runs on bytes from
//! the network or its disk; a panic in here is the bug being looked for.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::str::FromStr;

use bytes::BytesMut;
use common::gossip_key::{GossipKey, GossipKeyRing};
use common::node::Role;
use common::wire::{self, Frame, Hello};
use common::NodeId;
use hickory_proto::op::Message;

use crate::net::dns::{self, Answer, Zone};
use crate::net::resolver::host_resolvers;
use crate::node::membership::datagram::{self, Dropped, ReplayGuard};
use crate::node::membership::{diff, live_set_from, LiveSet, MemberFacts};
use crate::node::net::authorize;
use crate::node::seal::SealKey;
use crate::node::tls::{peer_identity, Fingerprint, JoinToken, PeerIdentity};

/// The cluster port: `data` as a TCP stream of frames (taken off as the
/// codec takes them) and as one frame's body; each frame that decodes must
/// encode to bytes that decode to the same bytes again, and a hello is
/// authorised against a worker's and a manager's certificate. Then the
/// text and DER the handshake reads: a join token, a CA fingerprint, a
/// peer certificate.
pub fn wire(data: &[u8]) {
    let mut stream = BytesMut::from(data);
    while let Ok(Some(frame)) = wire::decode(&mut stream) {
        frame_round_trip(&frame);
    }
    let mut one = BytesMut::with_capacity(data.len() + 4);
    one.extend_from_slice(&(data.len() as u32).to_be_bytes());
    one.extend_from_slice(data);
    if let Ok(Some(frame)) = wire::decode(&mut one) {
        frame_round_trip(&frame);
    }
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(token) = JoinToken::from_str(text) {
            assert_eq!(JoinToken::from_str(&token.to_string()).ok(), Some(token.clone()), "token round trip");
        }
        if let Ok(fp) = Fingerprint::from_str(text) {
            assert_eq!(Fingerprint::from_str(&fp.to_string()), Ok(fp), "fingerprint round trip");
        }
    }
    let _ = peer_identity(data);
}

fn frame_round_trip(frame: &Frame) {
    if let Frame::Hello(hello) = frame {
        hello_checks(hello);
    }
    // A frame that decoded from at most MAX_FRAME bytes encodes again
    // (rmp-serde writes what it read, field names included).
    let Ok(bytes) = wire::encode(frame) else { return };
    let mut buf = BytesMut::from(&bytes[..]);
    let back = wire::decode(&mut buf).expect("an encoded frame decodes").expect("whole");
    assert!(buf.is_empty());
    // Compared as bytes: a frame may hold a float (NaN is not equal to itself).
    assert_eq!(wire::encode(&back).expect("re-encodes"), bytes, "frame round trip");
}

fn hello_checks(hello: &Hello) {
    let _ = authorize(hello, None);
    for role in [Role::Worker, Role::Manager] {
        let peer = PeerIdentity { node_id: NodeId::from("fuzz-node"), role };
        let _ = authorize(hello, Some(&peer));
    }
}

/// The gossip key ring and cluster id the gossip target opens with.
pub const GOSSIP_KEY: GossipKey = GossipKey { id: 1, key: [9; 32] };
pub const GOSSIP_CLUSTER: &str = "fuzz-cluster";
/// The receiver's address and clock (ms) in the gossip target.
const GOSSIP_NOW: u64 = 1_800_000_000_000;

fn gossip_ring() -> GossipKeyRing {
    GossipKeyRing { previous: None, current: Some(GOSSIP_KEY), switch_at: 0 }
}

/// Gossip, by the first byte of `data`:
/// - `0`: the rest is a datagram off the UDP socket, opened with the ring
///   (forged bytes must be refused, not panic);
/// - `1`: the rest is the plaintext of a datagram, sealed here with the
///   ring's key (a fuzzer cannot forge a seal) and then opened, checked
///   against the replay guard, and its payload read as gossip key-values
///   (`key=value` lines) into the live set and its diff;
/// - `2`: the rest is the contents of `DATA_DIR/gossip.keys` once opened
///   (JSON of the ring) and the ring used to open a datagram.
pub fn gossip(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else { return };
    let ring = gossip_ring();
    let me: SocketAddr = ([10, 0, 0, 2], 4242).into();
    match mode {
        0 => {
            let _ = datagram::open(&ring, GOSSIP_CLUSTER, rest, GOSSIP_NOW);
        }
        1 => {
            let mut aad = datagram::MAGIC.to_vec();
            aad.extend_from_slice(&GOSSIP_KEY.id.to_be_bytes());
            aad.extend_from_slice(GOSSIP_CLUSTER.as_bytes());
            let mut d = datagram::MAGIC.to_vec();
            d.extend_from_slice(&GOSSIP_KEY.id.to_be_bytes());
            d.extend_from_slice(&SealKey::from_bytes(GOSSIP_KEY.key).seal(&aad, rest));
            let opened = match datagram::open(&ring, GOSSIP_CLUSTER, &d, GOSSIP_NOW) {
                Ok(o) => o,
                Err(e) => {
                    assert_eq!(e, Dropped::Malformed, "a sealed datagram opens");
                    return;
                }
            };
            // What was opened seals and opens again to the same.
            let again = datagram::seal(&GOSSIP_KEY, GOSSIP_CLUSTER, &opened.sender, opened.to, opened.counter, &opened.payload);
            assert_eq!(datagram::open(&ring, GOSSIP_CLUSTER, &again, GOSSIP_NOW).as_ref(), Ok(&opened), "datagram round trip");
            let mut guard = ReplayGuard::new(me, GOSSIP_NOW - 1_000);
            if guard.check(&opened, GOSSIP_NOW).is_ok() {
                assert_eq!(guard.check(&opened, GOSSIP_NOW), Err(Dropped::Replayed), "a replay is refused");
            }
            let text = String::from_utf8_lossy(&opened.payload);
            let facts: BTreeMap<String, String> = text
                .lines()
                .filter_map(|l| l.split_once('='))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            let member = MemberFacts { facts, gossip_addr: opened.to, generation: opened.counter };
            let live = live_set_from([(NodeId::from(opened.sender.as_str()), member)]);
            let _ = diff(&LiveSet::default(), &live);
            let _ = diff(&live, &LiveSet::default());
        }
        2 => {
            if let Ok(read) = serde_json::from_slice::<GossipKeyRing>(rest) {
                let _ = read.sealing_key(GOSSIP_NOW);
                let _ = read.rotate(GossipKey { id: read.next_id(), key: [1; 32] }, GOSSIP_NOW);
                let d = datagram::seal(&GOSSIP_KEY, GOSSIP_CLUSTER, "n", me, 1, b"x");
                let _ = datagram::open(&read, GOSSIP_CLUSTER, &d, GOSSIP_NOW);
            }
        }
        _ => {}
    }
}

/// The names the DNS target's resolver answers for.
fn dns_zone() -> Zone {
    let a = |s: &str| s.parse::<Ipv4Addr>().expect("an address");
    Zone {
        names: BTreeMap::from([
            ("web".to_string(), vec![a("10.0.128.1")]),
            ("tasks.web".to_string(), vec![a("10.0.0.2"), a("10.0.0.3")]),
            ("big".to_string(), (1..=200).map(|i| Ipv4Addr::new(10, 0, 1, i)).collect()),
        ]),
    }
}

/// A task's DNS query (a UDP datagram or a TCP message to a gateway's
/// port 53), answered as the resolver answers it; and `data` as the
/// host's `/etc/resolv.conf`. An answer must read back as a DNS message.
pub fn dns(data: &[u8]) {
    if let Ok(query) = Message::from_vec(data) {
        let zone = dns_zone();
        match dns::answer(&[&zone], &query) {
            Answer::Reply(reply) => {
                if let Some(bytes) = dns::encode(&reply, &query) {
                    Message::from_vec(&bytes).expect("an answer reads back");
                }
                let _ = reply.to_vec();
            }
            Answer::Forward => {
                if let Ok(bytes) = dns::server_failure(&query).to_vec() {
                    Message::from_vec(&bytes).expect("SERVFAIL reads back");
                }
            }
        }
    }
    let _ = host_resolvers(&String::from_utf8_lossy(data));
}
