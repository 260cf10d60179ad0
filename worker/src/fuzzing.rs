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

use crate::mesh::proxy::proxy_v2_header;
use crate::net::dns::{self, Answer, Zone};
use crate::net::resolver::host_resolvers;
use crate::net::tunnel;
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
    match frame {
        Frame::Hello(hello) => hello_checks(hello),
        Frame::Redirect { leader: Some(addr) } => proxy_header(*addr),
        Frame::Assignments { managers, .. } => managers.iter().for_each(|m| proxy_header(m.addr)),
        _ => {}
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

/// The PROXY protocol header the mesh proxy writes for a connection from
/// an address a peer sent: always the fixed length of its family.
fn proxy_header(addr: SocketAddr) {
    let server: SocketAddr = ([10, 0, 0, 2], 8080).into();
    let h = proxy_v2_header(addr, server);
    assert!(h.len() == 16 + 12 || h.len() == 16 + 36, "PROXY v2 header length");
    assert_eq!(usize::from(u16::from_be_bytes([h[14], h[15]])), h.len() - 16, "PROXY v2 address length");
}

fn hello_checks(hello: &Hello) {
    if let Hello::Join { advertise_addr, .. } = hello {
        proxy_header(*advertise_addr);
    }
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
///   (JSON of the ring) and the ring used to open a datagram;
/// - `3`: the rest is an encrypted overlay datagram (opened under the
///   tunnel's context) and the VXLAN packet the tunnel would let in.
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
            let again =
                datagram::seal(&GOSSIP_KEY, GOSSIP_CLUSTER, &opened.sender, opened.to, opened.counter, &opened.payload);
            assert_eq!(
                datagram::open(&ring, GOSSIP_CLUSTER, &again, GOSSIP_NOW).as_ref(),
                Ok(&opened),
                "datagram round trip"
            );
            let mut guard = ReplayGuard::new(me, GOSSIP_NOW - 1_000);
            if guard.check(&opened, GOSSIP_NOW).is_ok() {
                assert_eq!(guard.check(&opened, GOSSIP_NOW), Err(Dropped::Replayed), "a replay is refused");
            }
            let text = String::from_utf8_lossy(&opened.payload);
            let facts: BTreeMap<String, String> =
                text.lines().filter_map(|l| l.split_once('=')).map(|(k, v)| (k.to_string(), v.to_string())).collect();
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
        3 => {
            // An encrypted overlay's datagram, and the packet inside it.
            let _ = datagram::open(&ring, &tunnel::context(GOSSIP_CLUSTER), rest, GOSSIP_NOW);
            if tunnel::admits(rest, me.ip()) {
                assert_eq!(tunnel::destination(rest), Some(me.ip()), "an admitted packet is for this node");
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
        reverse: BTreeMap::from([
            (a("10.0.128.1"), vec!["web.app".to_string()]),
            (a("10.0.0.2"), vec!["web.app".to_string()]),
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

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use common::wire::{LogRequest, PeerInfo, PROTOCOL_VERSION};
    use hickory_proto::op::{Edns, Query};
    use hickory_proto::rr::{Name, RecordType};

    use super::*;
    use crate::node::tls::{cert_from_pem, new_ca};

    fn fuzz_dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fuzz")
    }

    fn corpus_dir(target: &str) -> PathBuf {
        fuzz_dir().join("corpus").join(target)
    }

    /// Every committed input of every target: the seeds (`corpus/*/`) and
    /// the crash inputs (`regressions/`, a folder per target or files).
    fn all_inputs() -> Vec<(PathBuf, Vec<u8>)> {
        fn walk(dir: &Path, out: &mut Vec<(PathBuf, Vec<u8>)>) {
            let Ok(entries) = std::fs::read_dir(dir) else { return };
            for entry in entries {
                let path = entry.expect("a corpus entry").path();
                if path.is_dir() {
                    walk(&path, out);
                } else {
                    let bytes = std::fs::read(&path).expect("a corpus file");
                    out.push((path, bytes));
                }
            }
        }
        let mut out = Vec::new();
        walk(&fuzz_dir().join("corpus"), &mut out);
        walk(&fuzz_dir().join("regressions"), &mut out);
        out.sort();
        out
    }

    /// Runs `f` on every committed input of every target (an entry must not
    /// panic on another target's inputs either); `target`'s seeds must exist.
    fn replay(target: &str, f: fn(&[u8])) {
        let own = corpus_dir(target);
        let inputs = all_inputs();
        assert!(inputs.iter().any(|(p, _)| p.starts_with(&own)), "{} is empty", own.display());
        for (path, bytes) in &inputs {
            if let Err(e) = std::panic::catch_unwind(|| f(bytes)) {
                let msg =
                    e.downcast_ref::<String>().cloned().or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()));
                panic!("the {target} entry panicked on {}: {}", path.display(), msg.unwrap_or_default());
            }
        }
    }

    #[test]
    fn the_wire_gossip_and_dns_corpora_replay_without_a_panic() {
        replay("wire", wire);
        replay("gossip", gossip);
        replay("dns", dns);
    }

    fn write_seeds(target: &str, inputs: &[Vec<u8>]) {
        let dir = corpus_dir(target);
        std::fs::create_dir_all(&dir).unwrap();
        for input in inputs {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            input.hash(&mut h);
            std::fs::write(dir.join(format!("seed-{:016x}", h.finish())), input).unwrap();
        }
    }

    /// Regenerates the wire, gossip and dns seeds: `cargo test --release
    /// -p worker write_worker_seeds -- --ignored`.
    #[test]
    #[ignore]
    fn write_worker_seeds() {
        let (ca_pem, _) = new_ca("fuzz").unwrap();
        let ca_der = cert_from_pem(&ca_pem).unwrap();
        let fp = Fingerprint::of(&ca_der);
        let token = JoinToken { ca: fp, secret: "0123456789abcdefghijklmno".into() };
        let addr: SocketAddr = "10.0.0.2:4242".parse().unwrap();
        let frames = [
            Frame::Hello(Hello::Join {
                token: token.to_string(),
                hostname: "node1".into(),
                advertise_addr: addr,
                protocol: PROTOCOL_VERSION,
                csr: vec![0x30, 0x82, 0x01],
            }),
            Frame::Hello(Hello::Raft { from: NodeId::from("fuzz-node"), raft_id: 2 }),
            Frame::Hello(Hello::Session { node_id: NodeId::from("fuzz-node") }),
            Frame::Hello(Hello::Logs(LogRequest { tasks: vec![], follow: true, tail: Some(10), service: None })),
            Frame::Welcome,
            Frame::Redirect { leader: Some(addr) },
            Frame::Refused { reason: "invalid join token".into() },
            Frame::Raft(vec![8, 3, 16, 1, 24, 2]),
            Frame::Heartbeat,
            Frame::Status(vec![]),
            Frame::Assignments {
                full: true,
                tasks: vec![],
                removed: vec![],
                managers: vec![PeerInfo { node_id: NodeId::from("m1"), raft_id: 1, addr }],
            },
            Frame::GossipKeys(GossipKeyRing::first()),
            Frame::Revoked([NodeId::from("gone")].into()),
            Frame::LogEnd { error: None },
        ];
        let mut inputs: Vec<Vec<u8>> = frames.iter().map(|f| wire::encode(f).unwrap()).collect();
        inputs.push(frames.iter().take(3).flat_map(|f| wire::encode(f).unwrap()).collect());
        inputs.push(token.to_string().into_bytes());
        inputs.push(fp.to_string().into_bytes());
        inputs.push(ca_der.to_vec());
        write_seeds("wire", &inputs);

        let sealed = datagram::seal(&GOSSIP_KEY, GOSSIP_CLUSTER, "fuzz-node", addr, GOSSIP_NOW * 1000, b"chitchat");
        let mut plain = vec![9u8];
        plain.extend_from_slice(b"fuzz-node");
        let to = addr.to_string();
        plain.push(to.len() as u8);
        plain.extend_from_slice(to.as_bytes());
        plain.extend_from_slice(&(GOSSIP_NOW * 1000).to_be_bytes());
        plain.extend_from_slice(b"role=manager\nhostname=n1\ncluster_addr=10.0.0.2:4242\nshoal.member=1\n");
        let ring = serde_json::to_vec(&GossipKeyRing::first().rotate(GossipKey::generate(2), GOSSIP_NOW)).unwrap();
        write_seeds(
            "gossip",
            &[[&[0u8][..], &sealed].concat(), [&[1u8][..], &plain].concat(), [&[2u8][..], &ring].concat()],
        );

        let ask = |name: &str, kind: RecordType, edns: bool| {
            let mut m = Message::query();
            m.metadata.id = 0x1234;
            m.metadata.recursion_desired = true;
            m.add_query(Query::query(Name::from_ascii(name).unwrap(), kind));
            if edns {
                m.set_edns(Edns::new());
            }
            m.to_vec().unwrap()
        };
        write_seeds(
            "dns",
            &[
                ask("web.", RecordType::A, false),
                ask("tasks.web.", RecordType::A, true),
                ask("big.", RecordType::A, false),
                ask("web.", RecordType::AAAA, false),
                ask("example.com.", RecordType::A, false),
                b"# resolv.conf\nnameserver 10.0.0.1\nnameserver ::1\nsearch local\n".to_vec(),
            ],
        );
    }
}
