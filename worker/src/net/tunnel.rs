//! Encrypted overlay networks (`network create --opt encrypted`): the
//! VXLAN traffic of such networks goes between nodes only sealed.
//!
//! Swarm encrypts with IPsec (ESP through the kernel's xfrm). The kernels
//! shoal is built on here have xfrm but neither ESP nor AH
//! (`CONFIG_INET_ESP` is not set), nor WireGuard; they have TUN. So the
//! sealing is done in user space, with what gossip already uses:
//!
//! - An encrypted network's VXLAN device uses its own UDP port,
//!   [`VXLAN_PORT`] (4790), not 4789. A policy rule sends every packet to
//!   that port into the TUN device [`DEVICE`] (`ip rule ipproto udp dport
//!   4790 lookup 4790`, table 4790: `default dev shoal-crypt`), so the
//!   kernel's VXLAN packets reach this process instead of the wire.
//! - Each such packet (an IP packet to a peer's underlay address, port
//!   4790) is sealed whole as a gossip datagram is
//!   ([`datagram::seal`]: XChaCha20-Poly1305 with the cluster's current
//!   gossip key, a random 192-bit nonce, the sender's id, the address it is
//!   sent to and a strictly increasing counter) under its own associated
//!   data (`overlay/` and the cluster id, so a gossip datagram is never
//!   taken for an overlay one), and sent to the peer's [`TUNNEL_PORT`]
//!   (4788/udp).
//! - The receiver opens it with its ring, refuses replays
//!   ([`ReplayGuard`]), checks that the packet is what a peer's VXLAN
//!   device sends this node ([`admits`]: UDP to this node's own underlay
//!   address, port 4790) and writes it into [`DEVICE`]; the kernel then
//!   hands it to the VXLAN device as if it had come off the wire. Packets
//!   arriving in the clear for port 4790 on any other interface are dropped
//!   (the `shoal_crypt` nftables table).
//! - Packets from [`DEVICE`] carry a mark ([`MARK`]) that routes their
//!   reverse path back into it (`src_valid_mark`), so strict reverse-path
//!   filtering keeps them.
//!
//! The key is the cluster's gossip key ring: it reaches every node over
//! mutual TLS, is rotated when a node is removed (so a removed node can no
//! longer read or send overlay traffic), and both keys of a ring are
//! accepted during a rotation. One node per network namespace (the
//! device, the rule and the port are the namespace's).

use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;

use common::time::now_ms;
use common::NodeId;
use nix::libc;
use tokio::io::unix::AsyncFd;
use tokio::net::UdpSocket;
use tokio::process::Command;
use tokio::task::JoinHandle;

use super::NetError;
use crate::node::membership::datagram::{self, Counter, ReplayGuard};
use crate::node::membership::GossipKeys;
use crate::node::metrics::{metrics, CounterFamily};

/// The TUN device the encrypted networks' VXLAN packets are routed into.
pub const DEVICE: &str = "shoal-crypt";
/// The VXLAN port of encrypted networks (reached only through [`DEVICE`]).
pub const VXLAN_PORT: u16 = 4790;
/// Where nodes send each other sealed VXLAN packets.
pub const TUNNEL_PORT: u16 = 4788;
/// The routing table (and rule priority) that sends them to [`DEVICE`].
pub const TABLE: u32 = 4790;
/// Marks packets that came out of [`DEVICE`] (the mesh uses 0x20000).
pub const MARK: u32 = 0x0010_0000;
/// The nftables table that drops clear VXLAN for encrypted networks.
pub const NFT_TABLE: &str = "shoal_crypt";
/// What the tunnel adds to a VXLAN packet, at most (outer IPv4 + UDP, the
/// seal's header, nonce and tag, the sender id, the address, the counter):
/// an encrypted network's MTU is [`super::docker::MTU`] less this.
pub const OVERHEAD: u32 = 20 + 8 + 8 + 24 + 16 + 1 + 25 + 1 + 21 + 8;
/// The largest packet read from or written to the device.
const MAX_PACKET: usize = 65_535;

/// The context sealed into every overlay datagram's associated data.
pub fn context(cluster_id: &str) -> String {
    format!("overlay/{cluster_id}")
}

/// Where a packet read from [`DEVICE`] goes: its IPv4 or IPv6 destination.
pub fn destination(packet: &[u8]) -> Option<IpAddr> {
    match packet.first()? >> 4 {
        4 => {
            let b: [u8; 4] = packet.get(16..20)?.try_into().ok()?;
            Some(IpAddr::from(b))
        }
        6 => {
            let b: [u8; 16] = packet.get(24..40)?.try_into().ok()?;
            Some(IpAddr::from(b))
        }
        _ => None,
    }
}

/// Whether an opened packet may be written into [`DEVICE`] on node `me`:
/// a UDP packet (IPv4 or IPv6, no extension headers) to `me`, port
/// [`VXLAN_PORT`], whole. Nothing else gets into the node's stack this way.
pub fn admits(packet: &[u8], me: IpAddr) -> bool {
    let Some(version) = packet.first().map(|b| b >> 4) else { return false };
    let (proto, dst, l4) = match version {
        4 => {
            let ihl = usize::from(packet[0] & 0x0f) * 4;
            let Some(dst) = packet.get(16..20).and_then(|b| <[u8; 4]>::try_from(b).ok()) else { return false };
            (packet.get(9).copied(), IpAddr::from(dst), ihl.max(20))
        }
        6 => {
            let Some(dst) = packet.get(24..40).and_then(|b| <[u8; 16]>::try_from(b).ok()) else { return false };
            (packet.get(6).copied(), IpAddr::from(dst), 40)
        }
        _ => return false,
    };
    // The length the header claims is the length there is (IPv4's total
    // length, IPv6's payload length plus its header), with a UDP header.
    let claimed = match version {
        4 => packet.get(2..4).map(|b| usize::from(u16::from_be_bytes([b[0], b[1]]))),
        _ => packet.get(4..6).map(|b| usize::from(u16::from_be_bytes([b[0], b[1]])) + 40),
    };
    if claimed != Some(packet.len()) || packet.len() < l4 + 8 {
        return false;
    }
    let dport = packet.get(l4 + 2..l4 + 4).map(|p| u16::from_be_bytes([p[0], p[1]]));
    proto == Some(17) && dst == me && dport == Some(VXLAN_PORT)
}

/// The nftables script of the guard table (made anew each time).
pub fn guard_script() -> String {
    format!(
        "table inet {NFT_TABLE}\ndelete table inet {NFT_TABLE}\n\
         table inet {NFT_TABLE} {{\n\
         \tchain pre {{\n\t\ttype filter hook prerouting priority mangle; policy accept;\n\
         \t\tiifname \"{DEVICE}\" meta mark set meta mark | {MARK:#x}\n\t}}\n\
         \tchain in {{\n\t\ttype filter hook input priority filter; policy accept;\n\
         \t\tudp dport {VXLAN_PORT} iifname != \"{DEVICE}\" counter drop\n\t}}\n}}\n"
    )
}

/// What a node needs to run the tunnel.
#[derive(Clone)]
pub struct TunnelConfig {
    pub node: NodeId,
    pub cluster_id: String,
    /// This node's underlay (advertise) address.
    pub underlay: IpAddr,
    pub keys: GossipKeys,
}

/// A running tunnel: the device, the rules, the two copying tasks.
pub struct Tunnel {
    tasks: Vec<JoinHandle<()>>,
}

struct Counters {
    packets: CounterFamily,
    dropped: CounterFamily,
}

fn counters() -> Counters {
    Counters {
        packets: metrics().counter_family(
            "shoal_overlay_sealed_packets",
            "Encrypted-overlay packets sealed and sent (out) or opened and delivered (in)",
            "direction",
        ),
        dropped: metrics().counter_family(
            "shoal_overlay_dropped",
            "Encrypted-overlay packets dropped, by reason (unsealed, unknown_key, forged, malformed, replayed, \
             not_vxlan, no_key, send)",
            "reason",
        ),
    }
}

async fn sh(program: &str, args: &[&str]) -> Result<(bool, String), NetError> {
    let out = Command::new(program)
        .args(args)
        .output()
        .await
        .map_err(|e| NetError::Link(format!("cannot run {program}: {e}")))?;
    Ok((out.status.success(), String::from_utf8_lossy(&out.stderr).trim().to_string()))
}

async fn must(program: &str, args: &[&str]) -> Result<(), NetError> {
    match sh(program, args).await? {
        (true, _) => Ok(()),
        (false, err) => Err(NetError::Link(format!("{program} {}: {err}", args.join(" ")))),
    }
}

/// Opens (creating) the TUN device `name`, non-blocking, without the
/// packet-information header.
fn open_tun(name: &str) -> Result<OwnedFd, NetError> {
    #[repr(C)]
    struct IfReq {
        name: [u8; 16],
        flags: libc::c_short,
        _pad: [u8; 22],
    }
    let err = |what: &str, e: std::io::Error| NetError::Link(format!("tun {name}: {what}: {e}"));
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .map_err(|e| err("cannot open /dev/net/tun", e))?;
    let mut req = IfReq { name: [0; 16], flags: (libc::IFF_TUN | libc::IFF_NO_PI) as libc::c_short, _pad: [0; 22] };
    let bytes = name.as_bytes();
    if bytes.len() >= req.name.len() {
        return Err(NetError::Link(format!("tun {name}: name too long")));
    }
    req.name[..bytes.len()].copy_from_slice(bytes);
    // SAFETY: TUNSETIFF reads and writes one `struct ifreq`, which `IfReq`
    // lays out (16-byte name, flags, padding to 40 bytes); the fd is open.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF as _, &mut req as *mut IfReq) };
    if rc < 0 {
        return Err(err("TUNSETIFF", std::io::Error::last_os_error()));
    }
    let fd = OwnedFd::from(file);
    // SAFETY: fcntl on an fd we own.
    let flags = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) };
    if flags < 0 || unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(err("O_NONBLOCK", std::io::Error::last_os_error()));
    }
    Ok(fd)
}

/// Removes what an earlier tunnel left in this namespace (the rules and
/// the table; the device goes with its process).
pub async fn clean() {
    for family in ["-4", "-6"] {
        // One rule per priority each; deleting stops when none is left.
        for prio in [TABLE, TABLE - 1] {
            let p = prio.to_string();
            for _ in 0..8 {
                if !sh("ip", &[family, "rule", "del", "priority", &p]).await.map(|r| r.0).unwrap_or(false) {
                    break;
                }
            }
        }
        let t = TABLE.to_string();
        let _ = sh("ip", &[family, "route", "flush", "table", &t]).await;
    }
    let _ = crate::mesh::nft::run(&format!("table inet {NFT_TABLE}\ndelete table inet {NFT_TABLE}\n")).await;
}

impl Tunnel {
    /// Makes the device, the rules and the guard table, and starts copying.
    pub async fn start(cfg: TunnelConfig) -> Result<Tunnel, NetError> {
        clean().await;
        let socket = UdpSocket::bind(SocketAddr::new(cfg.underlay, TUNNEL_PORT))
            .await
            .map_err(|e| NetError::Link(format!("cannot listen on {}:{TUNNEL_PORT}/udp: {e}", cfg.underlay)))?;
        let fd = open_tun(DEVICE)?;
        let family = if cfg.underlay.is_ipv4() { "-4" } else { "-6" };
        let (table, mark_prio, port) = (TABLE.to_string(), (TABLE - 1).to_string(), VXLAN_PORT.to_string());
        let mark = format!("{MARK:#x}/{MARK:#x}");
        must("ip", &["link", "set", DEVICE, "mtu", "1500", "up"]).await?;
        if cfg.underlay.is_ipv4() {
            std::fs::write(format!("/proc/sys/net/ipv4/conf/{DEVICE}/src_valid_mark"), "1")
                .map_err(|e| NetError::Link(format!("{DEVICE}: cannot set src_valid_mark: {e}")))?;
        }
        must("ip", &[family, "route", "replace", "default", "dev", DEVICE, "table", &table]).await?;
        must("ip", &[family, "rule", "add", "fwmark", &mark, "lookup", &table, "priority", &mark_prio]).await?;
        must("ip", &[family, "rule", "add", "ipproto", "udp", "dport", &port, "lookup", &table, "priority", &table])
            .await?;
        crate::mesh::nft::run(&guard_script()).await.map_err(|e| NetError::Link(format!("nft {NFT_TABLE}: {e}")))?;

        // SAFETY: `register` wants the fd to stay open and unregistered
        // elsewhere while the `AsyncFd` lives: it owns the only `OwnedFd`.
        let tun = unsafe { AsyncFd::register(fd) }.map_err(|e| NetError::Link(format!("tun {DEVICE}: {e}")))?;
        let tun = Arc::new(tun);
        let socket = Arc::new(socket);
        let context = context(&cfg.cluster_id);
        let out = tokio::spawn(seal_loop(tun.clone(), socket.clone(), cfg.clone(), context.clone()));
        let inn = tokio::spawn(open_loop(tun, socket, cfg, context));
        tracing::info!(device = DEVICE, port = TUNNEL_PORT, "overlay: encrypted tunnel up");
        Ok(Tunnel { tasks: vec![out, inn] })
    }

    /// Stops copying and removes the rules and table (the device goes
    /// when its last descriptor closes).
    pub async fn stop(self) {
        for t in &self.tasks {
            t.abort();
        }
        for t in self.tasks {
            let _ = t.await;
        }
        clean().await;
        tracing::info!("overlay: encrypted tunnel down");
    }
}

/// From the device to the peers, sealed.
async fn seal_loop(tun: Arc<AsyncFd<OwnedFd>>, socket: Arc<UdpSocket>, cfg: TunnelConfig, context: String) {
    let c = counters();
    let mut counter = Counter::default();
    let mut buf = vec![0u8; MAX_PACKET];
    let sender = cfg.node.to_string();
    loop {
        let n = match tun.readable().await {
            Ok(mut guard) => match guard.try_io(|fd| read_fd(fd.get_ref(), &mut buf)) {
                Ok(Ok(n)) => n,
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "overlay: reading {DEVICE} failed");
                    return;
                }
                Err(_would_block) => continue,
            },
            Err(e) => {
                tracing::warn!(error = %e, "overlay: {DEVICE} not readable");
                return;
            }
        };
        let packet = &buf[..n];
        // Only VXLAN packets to a peer are routed here; IPv6 router
        // solicitations and the like are not for anyone.
        let Some(dst) = destination(packet).filter(|d| d.is_ipv4() == cfg.underlay.is_ipv4()) else {
            c.dropped.inc("not_vxlan");
            continue;
        };
        let now = now_ms();
        let ring = cfg.keys.get();
        let Some(key) = ring.sealing_key(now) else {
            c.dropped.inc("no_key");
            continue;
        };
        let to = SocketAddr::new(dst, TUNNEL_PORT);
        let sealed = datagram::seal(key, &context, &sender, to, counter.next(now), packet);
        match socket.send_to(&sealed, to).await {
            Ok(_) => c.packets.inc("out"),
            Err(_) => c.dropped.inc("send"),
        }
    }
}

/// From the peers into the device, opened and checked.
async fn open_loop(tun: Arc<AsyncFd<OwnedFd>>, socket: Arc<UdpSocket>, cfg: TunnelConfig, context: String) {
    let c = counters();
    let me = SocketAddr::new(cfg.underlay, TUNNEL_PORT);
    let mut guard = ReplayGuard::new(me, now_ms());
    let mut buf = vec![0u8; MAX_PACKET + 512];
    loop {
        let n = match socket.recv_from(&mut buf).await {
            Ok((n, _from)) => n,
            Err(e) => {
                tracing::debug!(error = %e, "overlay: receive failed");
                continue;
            }
        };
        let now = now_ms();
        let opened = match datagram::open(&cfg.keys.get(), &context, &buf[..n], now) {
            Ok(o) => o,
            Err(why) => {
                c.dropped.inc(why.label());
                continue;
            }
        };
        if let Err(why) = guard.check(&opened, now) {
            c.dropped.inc(why.label());
            continue;
        }
        if !admits(&opened.payload, cfg.underlay) {
            c.dropped.inc("not_vxlan");
            continue;
        }
        loop {
            match tun.writable().await {
                Ok(mut g) => match g.try_io(|fd| write_fd(fd.get_ref(), &opened.payload)) {
                    Ok(Ok(_)) => {
                        c.packets.inc("in");
                        break;
                    }
                    Ok(Err(e)) => {
                        tracing::debug!(error = %e, "overlay: writing {DEVICE} failed");
                        break;
                    }
                    Err(_would_block) => continue,
                },
                Err(e) => {
                    tracing::warn!(error = %e, "overlay: {DEVICE} not writable");
                    return;
                }
            }
        }
    }
}

fn read_fd(fd: &OwnedFd, buf: &mut [u8]) -> std::io::Result<usize> {
    // SAFETY: reads into a buffer we own, of its length, from an fd we own.
    let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

fn write_fd(fd: &OwnedFd, packet: &[u8]) -> std::io::Result<usize> {
    // SAFETY: writes from a slice we hold, of its length, to an fd we own.
    let n = unsafe { libc::write(fd.as_raw_fd(), packet.as_ptr().cast(), packet.len()) };
    if n < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

#[cfg(test)]
mod tests {
    use common::gossip_key::GossipKeyRing;

    use super::*;

    /// An IPv4 UDP packet from `src` to `dst`:`dport`.
    fn udp4(src: [u8; 4], dst: [u8; 4], dport: u16, payload: &[u8]) -> Vec<u8> {
        let mut p = vec![0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 17, 0, 0];
        p.extend_from_slice(&src);
        p.extend_from_slice(&dst);
        p.extend_from_slice(&[0x9c, 0x40]);
        p.extend_from_slice(&dport.to_be_bytes());
        p.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
        p.extend_from_slice(&[0, 0]);
        p.extend_from_slice(payload);
        let len = p.len() as u16;
        p[2..4].copy_from_slice(&len.to_be_bytes());
        p
    }

    #[test]
    fn only_vxlan_packets_to_this_node_get_in() {
        let me: IpAddr = "10.231.0.11".parse().unwrap();
        let ok = udp4([10, 231, 0, 12], [10, 231, 0, 11], VXLAN_PORT, b"frame");
        assert!(admits(&ok, me));
        assert_eq!(destination(&ok), Some(me));
        assert!(!admits(&udp4([10, 231, 0, 12], [10, 231, 0, 13], VXLAN_PORT, b"x"), me), "another node");
        assert!(!admits(&udp4([10, 231, 0, 12], [127, 0, 0, 1], VXLAN_PORT, b"x"), me), "loopback");
        assert!(!admits(&udp4([10, 231, 0, 12], [10, 231, 0, 11], 4243, b"x"), me), "another port");
        let mut tcp = ok.clone();
        tcp[9] = 6;
        assert!(!admits(&tcp, me), "not UDP");
        for cut in 0..28 {
            assert!(!admits(&ok[..cut], me), "cut at {cut}");
        }
        assert!(!admits(&[0x60; 39], "::1".parse().unwrap()));
        assert_eq!(destination(&[0x10, 1, 2]), None);
    }

    #[test]
    fn a_sealed_packet_opens_only_under_the_overlay_context_and_never_shows_its_bytes() {
        let ring = GossipKeyRing::first();
        let key = ring.sealing_key(0).unwrap();
        let packet = udp4([10, 231, 0, 12], [10, 231, 0, 11], VXLAN_PORT, b"GET /secret-marker HTTP/1.1");
        let to: SocketAddr = "10.231.0.11:4788".parse().unwrap();
        let sealed = datagram::seal(key, &context("c1"), "node-a", to, 7, &packet);
        assert!(!sealed.windows(13).any(|w| w == b"secret-marker"), "sealed bytes show the payload");
        let now = 1;
        let opened = datagram::open(&ring, &context("c1"), &sealed, now).expect("opens");
        assert_eq!(opened.payload, packet);
        assert_eq!(opened.to, to);
        // Not as gossip, not for another cluster.
        assert!(datagram::open(&ring, "c1", &sealed, now).is_err());
        assert!(datagram::open(&ring, &context("c2"), &sealed, now).is_err());
    }

    #[test]
    fn the_overhead_leaves_room_for_a_full_vxlan_packet() {
        let ring = GossipKeyRing::first();
        let key = ring.sealing_key(0).unwrap();
        let inner_mtu = super::super::docker::MTU - OVERHEAD;
        // A full frame of the encrypted network, in VXLAN (50 bytes), sealed.
        let packet = vec![0x45u8; inner_mtu as usize + 50];
        let to: SocketAddr = "255.255.255.255:4788".parse().unwrap();
        let id = "x".repeat(25);
        let sealed = datagram::seal(key, &context("c"), &id, to, u64::MAX, &packet);
        assert!(sealed.len() + 28 <= 1500, "{} bytes on a 1500-byte underlay", sealed.len() + 28);
        assert!(guard_script().contains(&format!("udp dport {VXLAN_PORT} iifname != \"{DEVICE}\" counter drop")));
    }
}
