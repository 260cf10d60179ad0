//! [`SealedTransport`]: chitchat over UDP with every datagram sealed (the
//! format and checks are in `datagram`).
//!
//! chitchat 0.13 keeps its envelope codec private, so the bytes are had
//! through its own public [`UdpSocket`] on loopback: to send, chitchat's
//! socket (the "inner" one, on 127.0.0.1 or ::1, port chosen by the
//! system) encodes the envelope to a loopback socket of ours (the send tap),
//! whose bytes are then sealed and sent from the real socket; to receive, a
//! datagram that opens is handed to the inner socket from a loopback socket
//! kept per peer (a receive tap), so the envelope chitchat decodes comes
//! with the tap's address and is given back with the peer's. The inner
//! socket takes only what comes from our taps: anything else reaching it
//! on loopback is dropped as unsealed.
//!
//! Dropped datagrams are counted in `shoal_gossip_dropped_total{reason}`.
//! A node without a gossip key (a cluster made before gossip was sealed,
//! until `shoal gossip-key rotate`) sends nothing and takes nothing.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use async_trait::async_trait;
use chitchat::transport::{RecvOutcome, SendOutcome, Socket, Transport, UdpSocket};
use chitchat::ChitchatEnvelope;
use common::gossip_key::GossipKeyRing;
use common::time::now_ms;
use parking_lot::RwLock;
use tokio::net::UdpSocket as TokioUdp;
use tracing::{debug, warn};

use super::datagram::{self, Counter, Dropped, ReplayGuard};
use crate::node::metrics::{metrics, CounterFamily};

/// UDP's largest payload.
const MAX_DATAGRAM: usize = 65_507;
/// Receive taps kept (one per peer heard from); past this one is closed.
const MAX_TAPS: usize = 1024;

/// The gossip key ring a node seals and opens with, shared between its
/// gossip transport and what keeps it current (the session with the leader).
#[derive(Clone, Default)]
pub struct GossipKeys(Arc<RwLock<GossipKeyRing>>);

impl GossipKeys {
    pub fn new(ring: GossipKeyRing) -> GossipKeys {
        GossipKeys(Arc::new(RwLock::new(ring)))
    }

    pub fn get(&self) -> GossipKeyRing {
        self.0.read().clone()
    }

    /// Replaces the ring; says whether it changed.
    pub fn set(&self, ring: GossipKeyRing) -> bool {
        let mut now = self.0.write();
        if *now == ring {
            return false;
        }
        *now = ring;
        true
    }
}

/// The family every node's drops are counted in.
pub fn dropped_counter() -> CounterFamily {
    metrics().counter_family(
        "shoal_gossip_dropped",
        "Gossip datagrams dropped, by reason (unsealed, unknown_key, forged, malformed, replayed)",
        "reason",
    )
}

pub struct SealedTransport {
    pub keys: GossipKeys,
    pub cluster_id: String,
    /// This node's id, named in every datagram it seals.
    pub node_id: String,
    pub dropped: CounterFamily,
}

#[async_trait]
impl Transport for SealedTransport {
    async fn open(&self, listen_addr: SocketAddr) -> anyhow::Result<Box<dyn Socket>> {
        let outer = TokioUdp::bind(listen_addr)
            .await
            .with_context(|| format!("failed to bind to {listen_addr}/UDP for gossip"))?;
        let me = outer.local_addr().context("failed to get UDP socket address")?;
        let loopback = match listen_addr.ip() {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
        };
        let inner = UdpSocket::open(SocketAddr::new(loopback, 0)).await?;
        let inner_addr = inner.local_addr()?;
        let send_tap = TokioUdp::bind(SocketAddr::new(loopback, 0)).await.context("cannot bind the gossip send tap")?;
        let send_tap_addr = send_tap.local_addr()?;
        Ok(Box::new(SealedSocket {
            keys: self.keys.clone(),
            cluster_id: self.cluster_id.clone(),
            node_id: self.node_id.clone(),
            dropped: self.dropped.clone(),
            outer,
            me,
            loopback,
            inner,
            inner_addr,
            send_tap,
            send_tap_addr,
            taps: HashMap::new(),
            tap_peers: HashMap::new(),
            counter: Counter::default(),
            guard: ReplayGuard::new(me, now_ms()),
            buf: vec![0u8; MAX_DATAGRAM + 1],
        }))
    }
}

struct SealedSocket {
    keys: GossipKeys,
    cluster_id: String,
    node_id: String,
    dropped: CounterFamily,
    /// The real socket, on the gossip address.
    outer: TokioUdp,
    me: SocketAddr,
    loopback: IpAddr,
    /// chitchat's own socket: the envelope codec.
    inner: UdpSocket,
    inner_addr: SocketAddr,
    send_tap: TokioUdp,
    send_tap_addr: SocketAddr,
    /// Peer address → the loopback socket its opened datagrams come from.
    taps: HashMap<SocketAddr, Arc<TokioUdp>>,
    /// A receive tap's address → its peer.
    tap_peers: HashMap<SocketAddr, SocketAddr>,
    counter: Counter,
    guard: ReplayGuard,
    buf: Vec<u8>,
}

enum Got {
    Outer(io::Result<(usize, SocketAddr)>),
    Inner(anyhow::Result<RecvOutcome>),
}

fn is_transient(err: &io::Error) -> bool {
    matches!(err.kind(), io::ErrorKind::ConnectionRefused | io::ErrorKind::ConnectionReset | io::ErrorKind::OutOfMemory)
}

impl SealedSocket {
    /// The chitchat bytes of a datagram from `from`, if it is to be taken.
    fn accept(&mut self, n: usize, from: SocketAddr) -> Option<Vec<u8>> {
        let bytes = &self.buf[..n];
        let now = now_ms();
        let ring = self.keys.0.read();
        // An empty ring (none given yet) opens nothing.
        let result = datagram::open(&ring, &self.cluster_id, bytes, now)
            .and_then(|opened| self.guard.check(&opened, now).map(|()| opened.payload));
        drop(ring);
        match result {
            Ok(payload) => Some(payload),
            Err(reason) => {
                debug!(%from, len = n, reason = reason.label(), "gossip datagram dropped");
                self.dropped.inc(reason.label());
                None
            }
        }
    }

    async fn tap_for(&mut self, peer: SocketAddr) -> anyhow::Result<Arc<TokioUdp>> {
        if let Some(tap) = self.taps.get(&peer) {
            return Ok(tap.clone());
        }
        if self.taps.len() >= MAX_TAPS {
            if let Some(old) = self.taps.keys().next().copied() {
                self.taps.remove(&old);
                self.tap_peers.retain(|_, p| *p != old);
            }
        }
        let tap = Arc::new(
            TokioUdp::bind(SocketAddr::new(self.loopback, 0)).await.context("cannot bind a gossip receive tap")?,
        );
        self.tap_peers.insert(tap.local_addr()?, peer);
        self.taps.insert(peer, tap.clone());
        Ok(tap)
    }

    /// chitchat's encoding of `envelope`, through the send tap.
    async fn encode(&mut self, envelope: ChitchatEnvelope) -> anyhow::Result<Option<Vec<u8>>> {
        // Leftovers of a send cut short would go to the wrong peer.
        while self.send_tap.try_recv_from(&mut self.buf).is_ok() {}
        self.inner.send(self.send_tap_addr, envelope).await?;
        let wait = tokio::time::timeout(Duration::from_secs(1), async {
            loop {
                let (n, from) = self.send_tap.recv_from(&mut self.buf).await?;
                if from == self.inner_addr {
                    return Ok::<_, io::Error>(n);
                }
            }
        });
        match wait.await {
            Ok(Ok(n)) => Ok(Some(self.buf[..n].to_vec())),
            Ok(Err(e)) => Err(e).context("gossip send tap failed"),
            Err(_) => {
                warn!("chitchat's encoding did not come back over loopback within 1 s; datagram not sent");
                Ok(None)
            }
        }
    }
}

#[async_trait]
impl Socket for SealedSocket {
    fn local_addr(&self) -> anyhow::Result<SocketAddr> {
        Ok(self.me)
    }

    async fn send(&mut self, to: SocketAddr, envelope: ChitchatEnvelope) -> anyhow::Result<SendOutcome> {
        let Some(plain) = self.encode(envelope).await? else {
            return Ok(SendOutcome { num_bytes_sent: 0 });
        };
        let now = now_ms();
        let sealed = {
            let ring = self.keys.0.read();
            match ring.sealing_key(now) {
                Some(key) => datagram::seal(key, &self.cluster_id, &self.node_id, to, self.counter.next(now), &plain),
                None => {
                    debug!(%to, "no gossip key yet; datagram not sent");
                    return Ok(SendOutcome { num_bytes_sent: 0 });
                }
            }
        };
        if sealed.len() > MAX_DATAGRAM {
            warn!(len = sealed.len(), %to, "sealed gossip datagram too large for UDP; not sent");
            return Ok(SendOutcome { num_bytes_sent: 0 });
        }
        let num_bytes_sent =
            self.outer.send_to(&sealed, to).await.context("failed to send chitchat message to peer")?;
        Ok(SendOutcome { num_bytes_sent })
    }

    /// Cancel-safe: every await is on a socket's readiness, and a datagram
    /// handed to the inner socket waits there for the next call.
    async fn recv(&mut self) -> anyhow::Result<RecvOutcome> {
        loop {
            let got = tokio::select! {
                biased;
                r = self.inner.recv() => Got::Inner(r),
                r = self.outer.recv_from(&mut self.buf[..]) => Got::Outer(r),
            };
            match got {
                Got::Inner(r) => {
                    let out = r?;
                    match self.tap_peers.get(&out.from_addr) {
                        Some(peer) => {
                            return Ok(RecvOutcome {
                                from_addr: *peer,
                                envelope: out.envelope,
                                num_bytes_received: out.num_bytes_received,
                            })
                        }
                        None => {
                            debug!(from = %out.from_addr, "gossip on the loopback codec socket, not from a tap; dropped");
                            self.dropped.inc(Dropped::Unsealed.label());
                        }
                    }
                }
                Got::Outer(Ok((n, from))) => {
                    if n > MAX_DATAGRAM {
                        self.dropped.inc(Dropped::Malformed.label());
                        continue;
                    }
                    if let Some(plain) = self.accept(n, from) {
                        let tap = self.tap_for(from).await?;
                        tap.send_to(&plain, self.inner_addr).await.context("gossip receive tap failed")?;
                    }
                }
                Got::Outer(Err(e)) if is_transient(&e) => warn!(error = %e, "transient UDP recv error"),
                Got::Outer(Err(e)) => return Err(e).context("fatal UDP recv error"),
            }
        }
    }
}
